#!/usr/bin/env bash
# End-to-end broker benchmark, with its baselines measured in the same run:
#   1. the disk's own durable write bandwidth (dd, 4 GiB: what a flat-out run writes;
#      conv=fdatasync), three times;
#   2. durable produce (acks=all) of 1 KiB incompressible records, flat out, per I/O backend;
#   3. the same at half the rate reached in 2, three times, for acknowledgement latency
#      (linger.ms=1: the producer waits at most 1 ms to fill a batch), after the disk's own
#      write-to-durable latency at that rate (benches/sync_latency.py, with and without
#      O_DIRECT); with io_uring, three
#      more runs at that rate with direct writes (direct_io = true);
#   4. lz4 batches of real log lines (Loghub), for broker CPU per 100 MB/s of raw text.
# Usage: benches/e2e.sh [SECONDS]   (run from the repository root; builds --release first)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
cargo build --release -q
sluice=target/release/sluice
work=$(mktemp -d ./bench-tmp.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
dd_runs=()
for _ in 1 2 3; do
  mbps=$(dd if=/dev/zero of="$work/dd.bin" bs=1M count=4096 conv=fdatasync 2>&1 | tail -1 | sed -E 's/.*, ([0-9.]+) (MB|GB)\/s/\1 \2/' | awk '{ print ($2 == "GB") ? $1 * 1000 : $1 }')
  dd_runs+=("$mbps")
  rm -f "$work/dd.bin"
done
dd_median=$(printf '%s\n' "${dd_runs[@]}" | sort -n | sed -n 2p)
echo "dd 4 GiB conv=fdatasync: ${dd_runs[*]} MB/s (median $dd_median)"

cat ../shared/data/loghub/*_2k.log > "$work/lines.txt"

run() { # label, then bench flags
  local label=$1; shift
  local json
  local dir="$work/broker-$RANDOM"
  json=$("$sluice" bench produce --data-dir "$dir" --seconds "$secs" --json "$@")
  # A flat-out run writes gigabytes: gone before the next one, so the disk cannot fill.
  rm -rf "$dir"
  echo "$label: $json"
  LAST_MB=$(echo "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["mb_per_s"])')
}

for backend in io_uring plain; do
  run "acks=all 1KiB random, $backend, max rate" --io-backend "$backend" --record-size 1024 --acks all
  half=$(python3 -c "print(round($LAST_MB / 2, 1))")
  for mode in direct buffered; do
    echo "disk alone, group-committed $mode appends at $half MB/s: $(python3 benches/sync_latency.py "$half" "$secs" "$work/sync.bin" "$mode")"
  done
  for attempt in 1 2 3; do
    run "acks=all 1KiB random, $backend, half rate ($half MB/s), run $attempt" --io-backend "$backend" \
      --record-size 1024 --acks all --rate-mb "$half" --linger-ms 1
  done
  if [ "$backend" = io_uring ]; then
    for attempt in 1 2 3; do
      run "acks=all 1KiB random, io_uring with direct writes, $half MB/s, run $attempt" \
        --io-backend io_uring --direct-io true --record-size 1024 --acks all --rate-mb "$half" --linger-ms 1
    done
  fi
done
run "acks=all lz4 Loghub lines, io_uring, max rate" --io-backend io_uring --lines "$work/lines.txt" --compression lz4 --acks all
run "acks=all lz4 Loghub lines, io_uring, 100 MB/s" --io-backend io_uring --lines "$work/lines.txt" --compression lz4 --acks all --rate-mb 100
