#!/usr/bin/env bash
# The README's second command and what CI runs: install what is missing, check
# formatting, run the Slurm test on a single-node cluster started here (needs root),
# then every cargo test in the release profile (the only profile we build, so candle
# is compiled once).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
cargo fmt --all -- --check
scripts/slurm-test.sh
# The Slurm run's report is rendered in Chromium by tests/batch.rs.
HISTOMAP_SLURM_OUT=$(pwd)/target/slurm-test/run2 cargo test --release --locked
