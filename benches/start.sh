#!/usr/bin/env bash
# Broker start time: a data dir of many small batches (`sluice bench produce`, 30 s at 100 MB/s
# with linger 0), then the time from exec to a Metadata answer (kcat -L) after a clean stop and
# after kill -9, three of each, the page cache dropped before every start (needs root).
# Usage: benches/start.sh [SLUICE_BINARY]   (run from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ]; then
    sluice=$1
else
    cargo build --release -q
    sluice=$PWD/target/release/sluice
fi
work=$(mktemp -d "$PWD/bench-tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$sluice" bench produce --data-dir "$work/d" --seconds 30 --rate-mb 100 --linger-ms 0 --acks 1 \
    --json >/dev/null 2>&1
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(du -sh "$work/d" | cut -f1) data dir, $(nproc) cores"
kafka=127.0.0.1:$((20000 + RANDOM % 20000))
http=127.0.0.1:$((40000 + RANDOM % 20000))
start() {
    RUST_LOG=warn "$sluice" broker --data-dir "$work/d" --listen "$kafka" --http "$http" \
        2>>"$work/broker.log" &
    pid=$!
    until kcat -L -b "$kafka" -m 2 -t __consumer_offsets >/dev/null 2>&1; do sleep 0.01; done
}
timed_start() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
    local began
    began=$(date +%s.%N)
    start
    echo "$1: $(echo "$(date +%s.%N) - $began" | bc) s"
}
for run in 1 2 3; do
    timed_start "after a clean stop"
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    timed_start "after kill -9"
    kill -TERM "$pid"
    wait "$pid"
done
