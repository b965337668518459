#!/usr/bin/env bash
# End-to-end agent benchmark (`sluice bench agent`): a 500 MiB file of the Loghub samples' lines
# (cycled) through `sluice-agent`'s file input into a `sluice broker`, three runs. Same-run
# baselines: kcat -P producing the same file, one message a line, lz4, acks=all, idempotent; and
# kcat -P producing the agent's own records (keys and JSON events, read back from the topic) with
# the agent's batching, which is what librdkafka alone costs for the bytes the agent sends.
# Reports MB/s of file per core of CPU (user + system) and peak RSS (VmHWM) of each.
# Usage: benches/agent.sh   (run from the repository root; builds --release first)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
sluice=$PWD/target/release/sluice
work=$(mktemp -d "$PWD/bench-tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat ../shared/data/loghub/*_2k.log > "$work/lines.txt"
cd "$work"
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
for run in 1 2 3; do
  echo "## run $run"
  "$sluice" bench agent --lines lines.txt --megabytes 500 --json 2>/dev/null
done
