#!/usr/bin/env bash
# The README's second command and what CI runs: install what is missing and build
# both binaries (the CPU one, and the `cuda` feature's against Debian's CUDA toolkit,
# so a change that breaks the CUDA path is red; CI has no GPU), check formatting, run
# the Slurm test on a single-node cluster started here (needs root), then every cargo
# test in the release profile (the only profile we build, so candle is compiled once
# per feature set).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test --cuda
cargo fmt --all -- --check
scripts/slurm-test.sh
# The Slurm run's report is rendered in Chromium by tests/batch.rs; tests/cuda.rs runs
# the CUDA build without a GPU.
HISTOMAP_SLURM_OUT=$(pwd)/target/slurm-test/run2 \
  HISTOMAP_CUDA_BIN=$(pwd)/target/cuda/release/histomap \
  cargo test --release --locked
