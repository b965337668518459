#!/usr/bin/env bash
# Runs every test, after `tests/setup.sh` has installed whatever the build and the tests need and
# the machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup.sh
cargo nextest run --workspace --no-fail-fast "$@"
