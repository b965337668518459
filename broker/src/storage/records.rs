//! The records inside a produced batch, checked as Kafka's broker checks them before it writes:
//! decompressed (within `MAX_DECODED_BYTES`) and walked field by field, each record's length,
//! key, value and headers within it, offset deltas 0, 1, 2, … and nothing left over. A batch whose
//! CRC holds but whose records do not decode would otherwise be stored, and every consumer of the
//! partition would stop at it for good. The walk copies nothing; the batch stays as sent.

use kafka_protocol::records::Compression;

use super::batch::{BatchError, BatchHeader, HEADER_LEN};
use super::compress::decompress_into;

/// Checks the records of every compressed batch of a produce request's record set, split by
/// `split_batches`.
pub fn check_compressed(
    records: &[u8],
    batches: &[(BatchHeader, std::ops::Range<usize>)],
) -> Result<(), BatchError> {
    for (header, range) in batches {
        if header.compression() != 0 {
            check_records(&records[range.clone()], header)?;
        }
    }
    Ok(())
}

/// Checks the records of `batch` (its header read and its CRC checked already).
pub fn check_records(batch: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    let records = &batch[HEADER_LEN..header.size];
    let compression = match header.compression() {
        0 => return walk(records, header.record_count),
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        codec => return Err(BatchError::UnknownCodec(codec)),
    };
    // A buffer of a few kept between batches: a fresh one for each cost a page fault per 4 KiB.
    let mut decoded = BUFFERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .unwrap_or_default();
    let result = decompress_into(records, compression, &mut decoded)
        .map_err(|e| {
            BatchError::BadRecords(format!("{compression:?} data does not decompress: {e}"))
        })
        .and_then(|()| walk(&decoded, header.record_count));
    let mut buffers = BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    // Room for a typical batch is kept; a rare large one's is given back.
    if decoded.capacity() <= KEPT_ROOM && buffers.len() < KEPT_BUFFERS {
        buffers.push(decoded);
    }
    result
}

/// Room kept for decompressed records between batches, in at most `KEPT_BUFFERS` buffers.
const KEPT_ROOM: usize = 16 << 20;
const KEPT_BUFFERS: usize = 4;

static BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// Walks `count` records that must fill `data` exactly.
fn walk(mut data: &[u8], count: i32) -> Result<(), BatchError> {
    for index in 0..count {
        walk_one(&mut data, index)
            .map_err(|why| BatchError::BadRecords(format!("record {index} of {count}: {why}")))?;
    }
    if !data.is_empty() {
        return Err(BatchError::BadRecords(format!(
            "{} bytes after the last of {count} records",
            data.len()
        )));
    }
    Ok(())
}

/// One record: length, attributes, timestamp delta, offset delta, key, value, headers.
fn walk_one(data: &mut &[u8], index: i32) -> Result<(), &'static str> {
    let len = varint(data)?;
    let len = usize::try_from(len).map_err(|_| "negative length")?;
    if len > data.len() {
        return Err("longer than what is left of the batch");
    }
    let (mut record, rest) = data.split_at(len);
    *data = rest;
    take(&mut record, 1)?;
    varlong(&mut record)?;
    if varint(&mut record)? != index {
        return Err("offset delta out of sequence");
    }
    bytes(&mut record, true)?;
    bytes(&mut record, true)?;
    let headers = varint(&mut record)?;
    if headers < 0 {
        return Err("negative header count");
    }
    for _ in 0..headers {
        bytes(&mut record, false)?;
        bytes(&mut record, true)?;
    }
    if !record.is_empty() {
        return Err("bytes left over inside it");
    }
    Ok(())
}

/// A length-prefixed field (-1 is null where `nullable`).
fn bytes(data: &mut &[u8], nullable: bool) -> Result<(), &'static str> {
    match varint(data)? {
        -1 if nullable => Ok(()),
        len => {
            let len = usize::try_from(len).map_err(|_| "negative field length")?;
            take(data, len)
        }
    }
}

fn take(data: &mut &[u8], len: usize) -> Result<(), &'static str> {
    if len > data.len() {
        return Err("a field runs past the record's end");
    }
    *data = &data[len..];
    Ok(())
}

/// A zigzag varint of at most 5 bytes.
fn varint(data: &mut &[u8]) -> Result<i32, &'static str> {
    let raw = unsigned(data, 5)?;
    let raw = u32::try_from(raw).map_err(|_| "a varint past 32 bits")?;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

/// A zigzag varlong of at most 10 bytes.
fn varlong(data: &mut &[u8]) -> Result<i64, &'static str> {
    let raw = unsigned(data, 10)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

fn unsigned(data: &mut &[u8], most: usize) -> Result<u64, &'static str> {
    let mut value = 0u64;
    for (i, &byte) in data.iter().take(most).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *data = &data[i + 1..];
            return Ok(value);
        }
    }
    Err("a varint runs past the end, or is too long")
}

#[cfg(test)]
mod tests {
    use super::super::batch::testing::{batch, header, one_record, one_record_compressed, seal};
    use super::*;

    fn check(batch: &[u8]) -> Result<(), BatchError> {
        check_records(batch, &BatchHeader::validate(batch).unwrap())
    }

    #[test]
    fn what_clients_send_is_taken() {
        check(&one_record(Some(b"key"), b"value")).unwrap();
        check(&one_record(None, b"")).unwrap();
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let sent = one_record_compressed(Some(b"k"), &b"log line ".repeat(100), codec);
            check(&sent).unwrap_or_else(|e| panic!("{codec:?}: {e}"));
        }
        check(&batch(10, 1000, 0)).unwrap();
    }

    #[test]
    fn records_that_do_not_decode_are_refused() {
        // Filler where the records should be, its CRC right.
        let mut garbage = batch(3, 300, 0);
        for byte in &mut garbage[HEADER_LEN..] {
            *byte = 0xff;
        }
        seal(&mut garbage);
        assert!(matches!(check(&garbage), Err(BatchError::BadRecords(_))));
        // One byte too many after the records.
        let mut long = one_record(Some(b"k"), b"v");
        long.push(0);
        seal(&mut long);
        let error = check(&long).unwrap_err().to_string();
        assert!(
            error.contains("1 bytes after the last of 1 records"),
            "{error}"
        );
        // Compressed data that is not: the codec bits say gzip, the bytes are plain records.
        let mut not_gzip = one_record(Some(b"k"), b"value");
        not_gzip[22] |= 1;
        seal(&mut not_gzip);
        let error = check(&not_gzip).unwrap_err().to_string();
        assert!(error.contains("does not decompress"), "{error}");
        // Offsets out of sequence: a second record claiming delta 0 again.
        let mut two = header(2, 0);
        let record = [6u8 * 2, 0, 0, 0, 1, 0, 0];
        two.extend_from_slice(&record);
        two.extend_from_slice(&record);
        seal(&mut two);
        let error = check(&two).unwrap_err().to_string();
        assert!(error.contains("offset delta out of sequence"), "{error}");
    }
}
