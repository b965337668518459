//! Micro-benchmarks of the broker's hot paths: batch validation (CRC-32C and header checks on
//! every produce), the check of a batch's records (decompressed and walked, on every produce),
//! the sparse index lookup (every fetch), and the append path through io_uring and through plain
//! I/O, with and without the fdatasync that acks=all waits for.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafka_protocol::records::Compression;
use sluice_broker::storage::batch::{split_batches, testing, testing::batch, BatchHeader};
use sluice_broker::storage::io::Io;
use sluice_broker::storage::partition::{LogSettings, Partition};
use sluice_broker::storage::records::check_compressed;
use sluice_broker::storage::segment::Segment;
use sluice_broker::IoBackendKind;

fn validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_validation");
    for size in [16 << 10, 1 << 20] {
        let b = batch(100, size, 1_700_000_000_000);
        group.throughput(Throughput::Bytes(b.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &b, |bench, b| {
            bench.iter(|| BatchHeader::validate(std::hint::black_box(b)).unwrap())
        });
    }
    group.finish();
}

/// The Loghub samples' lines (as `benches/agent.sh` and the lz4 end-to-end runs use), as one
/// batch of about 1 MiB before compression.
fn loghub_batch(compression: Compression) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/loghub");
    let mut text = Vec::new();
    for name in [
        "HDFS_2k.log",
        "Apache_2k.log",
        "Android_2k.log",
        "Hadoop_2k.log",
    ] {
        text.extend(std::fs::read(dir.join(name)).unwrap_or_default());
    }
    let lines: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .scan(0usize, |size, line| {
            *size += line.len();
            (*size <= 1 << 20).then_some(line)
        })
        .collect();
    assert!(
        !lines.is_empty(),
        "the Loghub samples in ../shared/data/loghub"
    );
    testing::lines(&lines, compression)
}

fn record_check(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_check_1mib_loghub");
    let raw: u64 = 1 << 20;
    group.throughput(Throughput::Bytes(raw));
    let plain = loghub_batch(Compression::None);
    group.bench_function("none", |bench| {
        bench.iter(|| split_batches(std::hint::black_box(&plain)).unwrap())
    });
    for (name, codec) in [("lz4", Compression::Lz4), ("zstd", Compression::Zstd)] {
        let compressed = loghub_batch(codec);
        let split = split_batches(&compressed).unwrap();
        group.bench_function(name, |bench| {
            bench.iter(|| check_compressed(std::hint::black_box(&compressed), &split).unwrap())
        });
    }
    group.finish();
}

fn index_lookup(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut segment = Segment::create(dir.path(), 0, 1).unwrap();
    let mut position = 0u64;
    for i in 0..100_000i64 {
        let header = BatchHeader {
            base_offset: i * 10,
            size: 4096,
            attributes: 0,
            last_offset_delta: 9,
            base_timestamp: i,
            max_timestamp: i,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            record_count: 10,
        };
        segment.note_batch(&header, position).unwrap();
        position += 4096;
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    c.bench_function("index_lookup/100k_entries", |b| {
        b.iter(|| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            segment.position_for_offset((x % 1_000_000) as i64)
        })
    });
}

fn append(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let record_set = batch(64, 64 << 10, 1_700_000_000_000);
    let batches = split_batches(&record_set).unwrap();
    let settings = LogSettings {
        segment_bytes: 1 << 30,
        segment_ms: u64::MAX,
        index_interval_bytes: 4096,
    };
    let mut group = c.benchmark_group("append_64KiB");
    group.throughput(Throughput::Bytes(record_set.len() as u64));
    for (name, kind, direct) in [
        ("io_uring", IoBackendKind::IoUring, false),
        ("io_uring+direct", IoBackendKind::IoUring, true),
        ("plain", IoBackendKind::Plain, false),
        ("plain+direct", IoBackendKind::Plain, true),
    ] {
        let io = runtime.block_on(async { Io::start(kind, direct).unwrap() });
        for durable in [false, true] {
            let dir = tempfile::tempdir_in(".").unwrap();
            let partition =
                Arc::new(Partition::open(dir.path(), io.clone(), settings, false).unwrap());
            let id = format!("{name}{}", if durable { "+fdatasync" } else { "" });
            group.bench_function(id, |b| {
                b.to_async(&runtime).iter(|| {
                    let (partition, io) = (partition.clone(), io.clone());
                    let (batches, record_set) = (&batches, &record_set);
                    async move {
                        let (_, file) = partition.append(batches, record_set).await.unwrap();
                        if durable {
                            io.sync_all(&[file]).await.unwrap();
                        }
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, validation, record_check, index_lookup, append);
criterion_main!(benches);
