#!/usr/bin/env bash
# candle (histomap) vs PyTorch on the CPU, same architecture, input, batch and thread
# count, measured in one run: inference and training-step images/s and their ratios.
# PyTorch runs from the WSInfer peer's venv (made by ../shared/peers/run_wsinfer.sh or
# scripts/compare-wsinfer.sh); it is never a dependency of histomap.
# usage: scripts/bench-vs-pytorch.sh [ITERS]
set -euo pipefail
cd "$(dirname "$0")/.."
iters=${1:-5}
venv=${WSINFER_VENV:-${TMPDIR:-/tmp}/histomap-peers/wsinfer-venv}
[[ -x $venv/bin/python ]] || { echo "no PyTorch venv at $venv: run scripts/compare-wsinfer.sh once" >&2; exit 2; }
threads=$(nproc)
cargo bench --bench models --no-run -q 2>/dev/null
bench=$(ls -t target/release/deps/models-* | grep -v '\.d$' | head -1)
for spec in "smallcnn 96 32" "smallcnn 150 32" "resnet18 150 32"; do
  set -- $spec
  ours=$(RAYON_NUM_THREADS=$threads "$bench" "$1" "$2" "$3" "$iters")
  theirs=$("$venv/bin/python" scripts/bench_pytorch.py "$1" "$2" "$3" "$iters" "$threads")
  echo "$ours"; echo "$theirs"
  awk -v a="$ours" -v b="$theirs" 'BEGIN {
    split(a, x, /infer_img_s=| train_img_s=/); split(b, y, /infer_img_s=| train_img_s=/)
    printf "  ratio pytorch/candle: inference %.2fx (target <= 1.5x), training %.2fx (target <= 2x)\n", y[2]/x[2], y[3]/x[3] }'
done
