//! Broker-side compression for topics whose `compression.type` asks for it. An uncompressed
//! batch's records section is compressed whole (the inner format is the same compressed or not),
//! so the records are never decoded: only the codec bits, the length and the CRC change.
//!
//! And the other way, for the broker's own reads of records (a timestamp lookup, compaction):
//! `decode_records` decompresses with a bound, as a stored batch is whatever a producer sent,
//! and a few kilobytes of zstd can announce gigabytes.

use std::io::{Read, Write};

use bytes::Bytes;
use kafka_protocol::compression::{Decompressor, Snappy};
use kafka_protocol::records::{Compression, RecordBatchDecoder, RecordSet};

use super::batch::{BatchHeader, HEADER_LEN};
use crate::config::CompressionType;

const CODEC_LZ4: i16 = 3;
const CODEC_ZSTD: i16 = 4;

/// Returns the batch compressed as the topic asks, or `None` when it stays as sent (already
/// compressed, a control batch, a topic that keeps what producers send, or no gain).
pub fn compress_batch(
    batch: &[u8],
    header: &BatchHeader,
    topic: CompressionType,
) -> Option<Vec<u8>> {
    if header.compression() != 0 || header.is_control() {
        return None;
    }
    let records = &batch[HEADER_LEN..header.size];
    let (codec, compressed) = match topic {
        CompressionType::Producer | CompressionType::None => return None,
        CompressionType::Zstd => (CODEC_ZSTD, zstd::bulk::compress(records, 3).ok()?),
        CompressionType::Lz4 => (CODEC_LZ4, lz4_frame(records)?),
    };
    if compressed.len() >= records.len() {
        return None;
    }
    let mut out = Vec::with_capacity(HEADER_LEN + compressed.len());
    out.extend_from_slice(&batch[..HEADER_LEN]);
    out.extend_from_slice(&compressed);
    let attributes = (header.attributes & !0x7) | codec;
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    let length = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Some(out)
}

/// The most a stored batch's records may decompress to when the broker reads them: far above
/// what any real batch holds (a 1 MiB batch of log lines is some 10 MB raw).
pub const MAX_DECODED_BYTES: u64 = 64 << 20;

/// Decodes one stored batch's records, refusing one whose records decompress to more than
/// `MAX_DECODED_BYTES`.
pub fn decode_records(batch: &mut Bytes) -> anyhow::Result<RecordSet> {
    RecordBatchDecoder::decode_with_custom_compression(batch, Some(decompress_bounded))
}

fn decompress_bounded(records: &mut Bytes, compression: Compression) -> anyhow::Result<Bytes> {
    let compressed = std::mem::take(records);
    if compression == Compression::None {
        return Ok(compressed);
    }
    let mut out = Vec::new();
    decompress_into(&compressed, compression, &mut out)?;
    Ok(Bytes::from(out))
}

/// Decompresses `records` into `out` (cleared first, its room kept), refusing more than
/// `MAX_DECODED_BYTES`.
pub fn decompress_into(
    records: &[u8],
    compression: Compression,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    out.clear();
    let reader: Box<dyn Read + '_> = match compression {
        Compression::None => {
            out.extend_from_slice(records);
            return Ok(());
        }
        // Snappy cannot expand more than some 32 times: the bound is checked after.
        Compression::Snappy => {
            let decoded = Snappy::decompress(&mut Bytes::copy_from_slice(records), |b| {
                Ok(std::mem::take(b))
            })?;
            out.extend_from_slice(&decoded);
            return within_bound(out.len());
        }
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(records)),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(records)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(records)?),
    };
    reader.take(MAX_DECODED_BYTES + 1).read_to_end(out)?;
    within_bound(out.len())
}

/// A stored batch whose records decompress to more than `MAX_DECODED_BYTES`.
#[derive(Debug, thiserror::Error)]
#[error("a stored batch's records decompress to more than {MAX_DECODED_BYTES} bytes")]
pub struct DecodedTooLarge;

fn within_bound(len: usize) -> anyhow::Result<()> {
    if len as u64 > MAX_DECODED_BYTES {
        return Err(DecodedTooLarge.into());
    }
    Ok(())
}

/// LZ4 frame format (what Kafka clients read since KIP-57), without a content checksum.
fn lz4_frame(data: &[u8]) -> Option<Vec<u8>> {
    let info = lz4_flex::frame::FrameInfo::new()
        .block_size(lz4_flex::frame::BlockSize::Max64KB)
        .block_checksums(false)
        .content_checksum(false);
    let mut encoder =
        lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::with_capacity(data.len() / 2));
    encoder.write_all(data).ok()?;
    encoder.finish().ok()
}

#[cfg(test)]
mod tests {
    use super::super::batch::testing::{batch, one_record_compressed};
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    fn real_batch() -> Vec<u8> {
        encoded(Compression::None)
    }

    fn encoded(compression: Compression) -> Vec<u8> {
        let records: Vec<Record> = (0..50)
            .map(|i| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                // The encoder starts a new batch whenever offset - sequence changes.
                sequence: i as i32 - 1,
                timestamp: 1_700_000_000_000 + i,
                key: Some(bytes::Bytes::from(format!("key-{i}"))),
                value: Some(bytes::Bytes::from(format!(
                    "2024-01-01 INFO web-1 GET /index.html 200 line number {i}"
                ))),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
        buf.to_vec()
    }

    /// What clients send with each codec reads back whole through the bounded decoder.
    #[test]
    fn every_codec_decodes_within_the_bound() {
        let plain = decode_records(&mut Bytes::from(real_batch())).unwrap();
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let decoded = decode_records(&mut Bytes::from(encoded(codec))).unwrap();
            assert_eq!(decoded.compression, codec);
            assert_eq!(decoded.records, plain.records, "{codec:?}");
        }
    }

    /// A batch whose records decompress past the bound (here 100 MB of zeros in a few
    /// kilobytes of zstd or gzip) is refused, not decompressed whole.
    #[test]
    fn a_decompression_bomb_is_refused() {
        let zeros = vec![0u8; 100 << 20];
        for compression in [Compression::Zstd, Compression::Gzip] {
            let bomb = one_record_compressed(None, &zeros, compression);
            assert!(
                bomb.len() < 1 << 20,
                "{compression:?}: {} bytes",
                bomb.len()
            );
            let refused = decode_records(&mut Bytes::from(bomb)).unwrap_err();
            assert!(
                refused.to_string().contains("decompress to more than"),
                "{refused:#}"
            );
        }
    }

    #[test]
    fn compressed_batches_decode_to_the_same_records() {
        let original = real_batch();
        let header = BatchHeader::validate(&original).unwrap();
        let plain = RecordBatchDecoder::decode(&mut bytes::Bytes::from(original.clone())).unwrap();
        for (kind, codec) in [
            (CompressionType::Zstd, Compression::Zstd),
            (CompressionType::Lz4, Compression::Lz4),
        ] {
            let packed = compress_batch(&original, &header, kind).expect("compresses");
            assert!(packed.len() < original.len());
            let packed_header = BatchHeader::validate(&packed).expect("valid CRC and length");
            assert_eq!(packed_header.record_count, 50);
            let decoded = RecordBatchDecoder::decode(&mut bytes::Bytes::from(packed)).unwrap();
            assert_eq!(decoded.compression, codec);
            assert_eq!(decoded.records.len(), plain.records.len());
            for (a, b) in decoded.records.iter().zip(&plain.records) {
                assert_eq!(
                    (a.offset, &a.key, &a.value, a.timestamp),
                    (b.offset, &b.key, &b.value, b.timestamp)
                );
            }
        }
    }

    #[test]
    fn producer_setting_and_compressed_batches_stay_as_sent() {
        let original = real_batch();
        let header = BatchHeader::validate(&original).unwrap();
        assert!(compress_batch(&original, &header, CompressionType::Producer).is_none());
        let packed = compress_batch(&original, &header, CompressionType::Zstd).unwrap();
        let packed_header = BatchHeader::validate(&packed).unwrap();
        assert!(compress_batch(&packed, &packed_header, CompressionType::Lz4).is_none());
    }

    #[test]
    fn incompressible_batch_stays() {
        let b = batch(1, 0, 0);
        let header = BatchHeader::validate(&b).unwrap();
        assert!(compress_batch(&b, &header, CompressionType::Zstd).is_none());
    }
}
