//! Micro-benchmark of the agent's hot path on a busy file input: escaping each line's text into
//! its event's JSON (every byte of every line goes through it), on the Loghub samples' lines.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_agent::event::json;

fn loghub_lines() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/loghub");
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).expect("../shared/data/loghub beside the repository") {
        let path = entry.expect("a Loghub entry").path();
        if path.to_string_lossy().ends_with("_2k.log") {
            let text = std::fs::read(&path).expect("a Loghub sample");
            lines.extend(text.split(|&b| b == b'\n').map(<[u8]>::to_vec));
        }
    }
    lines
}

fn escaping(c: &mut Criterion) {
    let lines = loghub_lines();
    let bytes: usize = lines.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("event_json");
    group.throughput(Throughput::Bytes(bytes as u64));
    let mut out = Vec::with_capacity(64 << 10);
    group.bench_function("push_str_loghub_lines", |b| {
        b.iter(|| {
            let mut valid = true;
            for line in &lines {
                out.clear();
                valid &= json::push_str(&mut out, line);
            }
            valid
        })
    });
    group.finish();
}

criterion_group!(benches, escaping);
criterion_main!(benches);
