#!/usr/bin/env bash
# The README's second command and what CI runs: install what is missing, check
# formatting, run every test in the release profile (the only profile we build, so
# candle is compiled once).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo test --release --locked
