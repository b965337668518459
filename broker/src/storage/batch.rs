//! Kafka RecordBatch v2 headers: reading the fixed fields, checking the CRC-32C and assigning the
//! base offset. The records themselves are checked by `records` and stored as sent.
//!
//! Layout (big-endian): baseOffset i64 @0, batchLength i32 @8, partitionLeaderEpoch i32 @12,
//! magic i8 @16, crc u32 @17, attributes i16 @21, lastOffsetDelta i32 @23, baseTimestamp i64 @27,
//! maxTimestamp i64 @35, producerId i64 @43, producerEpoch i16 @51, baseSequence i32 @53,
//! recordCount i32 @57, records @61. The CRC covers attributes to the end of the batch.

use thiserror::Error;

/// Bytes before the records.
pub const HEADER_LEN: usize = 61;
/// Bytes of baseOffset + batchLength: what precedes the length-counted part.
pub const LOG_OVERHEAD: usize = 12;
const CRC_START: usize = 21;
/// The smallest record v2: length, attributes, timestamp delta, offset delta, key length, value
/// length and header count, one byte each.
const MIN_RECORD_LEN: usize = 7;
/// The most records a compressed batch may claim (librdkafka sends at most 10,000 by default).
const MAX_COMPRESSED_RECORDS: usize = 1 << 20;

/// Why a batch was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("empty record set")]
    Empty,
    #[error("batch shorter than its {HEADER_LEN}-byte header")]
    Truncated,
    #[error("batch length {0} does not match the bytes sent")]
    BadLength(i64),
    #[error("magic {0} is not RecordBatch v2")]
    BadMagic(i8),
    #[error("CRC-32C mismatch: header says {expected:#010x}, data gives {actual:#010x}")]
    BadCrc { expected: u32, actual: u32 },
    #[error("record count {count} does not match last offset delta {delta}")]
    BadCount { count: i32, delta: i32 },
    #[error("{count} records cannot fit in a {bytes}-byte batch")]
    Implausible { count: i32, bytes: usize },
    #[error("compression codec {0} is none of Kafka's (0 none to 4 zstd)")]
    UnknownCodec(i16),
    #[error("clients may not write control batches")]
    Control,
    #[error("transactional batches are refused: this broker does not support transactions")]
    Transactional,
    #[error("records do not decode: {0}")]
    BadRecords(String),
}

impl BatchError {
    /// A batch that is sound but that no client may send (Kafka's INVALID_RECORD), rather than
    /// one damaged on the way (CORRUPT_MESSAGE).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::Control | Self::Transactional)
    }
}

/// The fixed fields of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Whole batch size in bytes, including the 12-byte log overhead.
    pub size: usize,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Reads the header at the start of `buf` without checking the CRC.
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated);
        }
        let length = i32_at(buf, 8) as i64;
        if length < (HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(BatchError::BadLength(length));
        }
        let magic = buf[16] as i8;
        if magic != 2 {
            return Err(BatchError::BadMagic(magic));
        }
        Ok(Self {
            base_offset: i64_at(buf, 0),
            size: length as usize + LOG_OVERHEAD,
            attributes: i16_at(buf, 21),
            last_offset_delta: i32_at(buf, 23),
            base_timestamp: i64_at(buf, 27),
            max_timestamp: i64_at(buf, 35),
            producer_id: i64_at(buf, 43),
            producer_epoch: i16_at(buf, 51),
            base_sequence: i32_at(buf, 53),
            record_count: i32_at(buf, 57),
        })
    }

    /// Reads and checks the batch at the start of `buf`, which must hold all of it: length, magic,
    /// CRC, and at most as many records as its offset span (compaction leaves gaps).
    pub fn validate(buf: &[u8]) -> Result<Self, BatchError> {
        let header = Self::parse(buf)?;
        if buf.len() < header.size {
            return Err(BatchError::BadLength(
                header.size as i64 - LOG_OVERHEAD as i64,
            ));
        }
        let expected = u32::from_be_bytes(buf[17..21].try_into().expect("4 bytes"));
        let actual = crc32c::crc32c(&buf[CRC_START..header.size]);
        if expected != actual {
            return Err(BatchError::BadCrc { expected, actual });
        }
        if header.record_count < 0
            || header.last_offset_delta < 0
            || header.record_count as i64 > header.last_offset_delta as i64 + 1
        {
            return Err(BatchError::BadCount {
                count: header.record_count,
                delta: header.last_offset_delta,
            });
        }
        Ok(header)
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// Compression codec id from the attributes: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> i16 {
        self.attributes & 0x7
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }
}

/// Writes the base offset the broker assigned and its leader epoch (always 0: one broker, one
/// leader). Both lie outside the CRC, so the batch stays valid.
pub fn set_base_offset(buf: &mut [u8], base_offset: i64) {
    buf[0..8].copy_from_slice(&base_offset.to_be_bytes());
    buf[12..16].copy_from_slice(&0i32.to_be_bytes());
}

/// Splits a produce request's record set into its batches, validating each. A producer's batch
/// has no gaps (one record per offset), a codec consumers can read, records that decode
/// (`records`; compressed ones are checked apart, as that takes longer), and is neither a
/// control batch nor part of a transaction (consumers would skip or hold back its records).
pub fn split_batches(
    mut buf: &[u8],
) -> Result<Vec<(BatchHeader, std::ops::Range<usize>)>, BatchError> {
    if buf.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut batches = Vec::new();
    let mut start = 0;
    while !buf.is_empty() {
        let header = BatchHeader::validate(buf)?;
        if header.compression() > 4 {
            return Err(BatchError::UnknownCodec(header.compression()));
        }
        if header.is_control() {
            return Err(BatchError::Control);
        }
        if header.is_transactional() {
            return Err(BatchError::Transactional);
        }
        if header.record_count as i64 != header.last_offset_delta as i64 + 1
            || header.record_count < 1
        {
            return Err(BatchError::BadCount {
                count: header.record_count,
                delta: header.last_offset_delta,
            });
        }
        // A batch's count moves offsets forward; it must be one the bytes can hold, or a few
        // bytes could make a partition's offsets leap by billions.
        let most = if header.compression() == 0 {
            (header.size - HEADER_LEN) / MIN_RECORD_LEN
        } else {
            MAX_COMPRESSED_RECORDS
        };
        if header.record_count as usize > most {
            return Err(BatchError::Implausible {
                count: header.record_count,
                bytes: header.size,
            });
        }
        if header.compression() == 0 {
            // Compressed batches are checked by `records::check_compressed`, off the runtime.
            super::records::check_records(buf, &header)?;
        }
        batches.push((header, start..start + header.size));
        start += header.size;
        buf = &buf[header.size..];
    }
    Ok(batches)
}

fn i16_at(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(buf[at..at + 2].try_into().expect("2 bytes"))
}

fn i32_at(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn i64_at(buf: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Builds valid batches for tests and benchmarks.
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// An uncompressed batch of `count` records whose values, filler bytes, add up to
    /// `payload_len`.
    pub fn batch(count: i32, payload_len: usize, timestamp: i64) -> Vec<u8> {
        let mut buf = header(count, timestamp);
        let each = payload_len / count.max(1) as usize;
        for i in 0..count {
            let len = match i == count - 1 {
                true => payload_len - each * (count as usize - 1),
                false => each,
            };
            let mut record = vec![0u8, 0];
            put_varint(&mut record, i64::from(i));
            put_varint(&mut record, -1);
            put_varint(&mut record, len as i64);
            record.extend((0..len).map(|j| (j * 31 % 251) as u8));
            record.push(0);
            put_varint(&mut buf, record.len() as i64);
            buf.extend_from_slice(&record);
        }
        seal(&mut buf);
        buf
    }

    /// A batch header for `count` records, without them.
    pub fn header(count: i32, timestamp: i64) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN];
        buf[16] = 2;
        buf[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        buf[27..35].copy_from_slice(&timestamp.to_be_bytes());
        buf[35..43].copy_from_slice(&timestamp.to_be_bytes());
        buf[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        buf[51..53].copy_from_slice(&(-1i16).to_be_bytes());
        buf[53..57].copy_from_slice(&(-1i32).to_be_bytes());
        buf[57..61].copy_from_slice(&count.to_be_bytes());
        seal(&mut buf);
        buf
    }

    /// A zigzag varint, as records are written.
    fn put_varint(out: &mut Vec<u8>, value: i64) {
        let mut raw = ((value << 1) ^ (value >> 63)) as u64;
        while raw >= 0x80 {
            out.push(raw as u8 | 0x80);
            raw >>= 7;
        }
        out.push(raw as u8);
    }

    /// A batch of one record with `key` and `value`, encoded by kafka-protocol as a client
    /// would (decodable, unlike `batch`'s filler).
    pub fn one_record(key: Option<&[u8]>, value: &[u8]) -> Vec<u8> {
        one_record_compressed(key, value, kafka_protocol::records::Compression::None)
    }

    /// As `one_record`, its records compressed with `compression`.
    pub fn one_record_compressed(
        key: Option<&[u8]>,
        value: &[u8],
        compression: kafka_protocol::records::Compression,
    ) -> Vec<u8> {
        encode_one(key, Some(value), compression)
    }

    /// A batch of one tombstone (a null value) for `key`, as compaction deletes a key.
    pub fn tombstone(key: &[u8]) -> Vec<u8> {
        encode_one(Some(key), None, kafka_protocol::records::Compression::None)
    }

    /// A batch of one record per line, without keys, compressed with `compression`.
    pub fn lines(lines: &[&[u8]], compression: kafka_protocol::records::Compression) -> Vec<u8> {
        let records: Vec<_> = lines
            .iter()
            .enumerate()
            .map(|(i, line)| record(i as i64, None, Some(line)))
            .collect();
        encode(&records, compression)
    }

    fn encode_one(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        compression: kafka_protocol::records::Compression,
    ) -> Vec<u8> {
        encode(&[record(0, key, value)], compression)
    }

    fn encode(
        records: &[kafka_protocol::records::Record],
        compression: kafka_protocol::records::Compression,
    ) -> Vec<u8> {
        use kafka_protocol::records::{RecordBatchEncoder, RecordEncodeOptions};
        let mut buf = bytes::BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, records, &options).expect("records encode");
        buf.to_vec()
    }

    fn record(
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> kafka_protocol::records::Record {
        use kafka_protocol::records::{Record, TimestampType};
        Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            // The encoder starts a new batch where offset and sequence stop moving together.
            sequence: offset as i32 - 1,
            timestamp: 1_700_000_000_000,
            key: key.map(bytes::Bytes::copy_from_slice),
            value: value.map(bytes::Bytes::copy_from_slice),
            headers: Default::default(),
            delete_horizon: false,
        }
    }

    /// Fixes the length and CRC after a test changed the batch.
    pub fn seal(buf: &mut [u8]) {
        let length = (buf.len() - LOG_OVERHEAD) as i32;
        buf[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&buf[CRC_START..]);
        buf[17..21].copy_from_slice(&crc.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::testing::batch;
    use super::*;

    #[test]
    fn valid_batch_parses() {
        let b = batch(5, 100, 1_700_000_000_000);
        let h = BatchHeader::validate(&b).unwrap();
        assert_eq!(h.size, b.len());
        assert_eq!(h.record_count, 5);
        assert_eq!(h.max_timestamp, 1_700_000_000_000);
    }

    #[test]
    fn base_offset_is_outside_the_crc() {
        let mut b = batch(1, 10, 0);
        set_base_offset(&mut b, 12345);
        assert_eq!(BatchHeader::validate(&b).unwrap().base_offset, 12345);
    }

    #[test]
    fn flipped_bit_fails_crc() {
        let mut b = batch(1, 10, 0);
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(matches!(
            BatchHeader::validate(&b),
            Err(BatchError::BadCrc { .. })
        ));
    }

    #[test]
    fn truncation_and_bad_magic_are_errors() {
        let b = batch(1, 10, 0);
        assert_eq!(BatchHeader::validate(&b[..20]), Err(BatchError::Truncated));
        assert!(matches!(
            BatchHeader::validate(&b[..b.len() - 1]),
            Err(BatchError::BadLength(_))
        ));
        let mut v1 = b.clone();
        v1[16] = 1;
        assert_eq!(BatchHeader::validate(&v1), Err(BatchError::BadMagic(1)));
    }

    #[test]
    fn counts_the_bytes_cannot_hold_are_refused() {
        let mut b = super::testing::header(1000, 0);
        b.extend_from_slice(&[0; 10]);
        super::testing::seal(&mut b);
        assert!(matches!(
            split_batches(&b),
            Err(BatchError::Implausible { count: 1000, .. })
        ));
        // The largest offset delta a header can carry must not overflow anything.
        b[23..27].copy_from_slice(&i32::MAX.to_be_bytes());
        super::testing::seal(&mut b);
        assert!(split_batches(&b).is_err());
    }

    #[test]
    fn batches_no_client_may_send_are_refused() {
        let with_attributes = |attributes: i16| {
            let mut b = batch(1, 10, 0);
            b[21..23].copy_from_slice(&attributes.to_be_bytes());
            super::testing::seal(&mut b);
            b
        };
        assert_eq!(
            split_batches(&with_attributes(7)),
            Err(BatchError::UnknownCodec(7))
        );
        assert_eq!(
            split_batches(&with_attributes(0x20)),
            Err(BatchError::Control)
        );
        assert_eq!(
            split_batches(&with_attributes(0x10)),
            Err(BatchError::Transactional)
        );
        // A codec consumers read, over records that are not in it.
        let zstd = with_attributes(4);
        let split = split_batches(&zstd).unwrap();
        assert!(matches!(
            super::super::records::check_compressed(&zstd, &split),
            Err(BatchError::BadRecords(_))
        ));
    }

    #[test]
    fn split_finds_every_batch() {
        let mut set = batch(2, 100, 0);
        set.extend(batch(3, 100, 0));
        let parts = split_batches(&set).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].0.record_count, 3);
        assert_eq!(parts[1].1.end, set.len());
    }
}
