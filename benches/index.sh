#!/usr/bin/env bash
# End-to-end indexer benchmark (`sluice bench index`), with raw Tantivy on the same documents as
# the same-run baseline:
#   1. three runs of 3 M events: indexer docs/s against raw Tantivy, and freshness at half the
#      indexer's rate (probes every 100 ms, send to searchable, 30 s);
#   2. one run of 5 M events for search latency (term, phrase, 1 s time range; 50 runs each).
# Events are the Loghub samples' lines, cycled, shipped as agent-style JSON events.
# Usage: benches/index.sh   (run from the repository root; builds --release first)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
sluice=$PWD/target/release/sluice
work=$(mktemp -d ./bench-tmp.XXXXXX)
trap 'rm -rf "$work"' EXIT
cat ../shared/data/loghub/*_2k.log > "$work/lines.txt"
cd "$work"
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
for run in 1 2 3; do
  echo "## 3 M events, run $run"
  "$sluice" bench index --lines lines.txt --documents 3000000 --queries 10 2>/dev/null
done
echo "## 5 M events"
"$sluice" bench index --lines lines.txt --documents 5000000 --freshness-seconds 10 --queries 50 2>/dev/null
