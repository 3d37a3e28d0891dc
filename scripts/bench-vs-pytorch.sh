#!/usr/bin/env bash
# candle (histomap) vs PyTorch on the CPU, same architecture, input, batch and thread
# count, measured in one run: inference images/s in every precision histomap has
# (f32, and int8 on the kernel path this CPU runs) against PyTorch's f32, and
# training-step images/s. Rounds alternate the two tools; medians are reported.
# PyTorch runs from the WSInfer peer's venv (made by ../shared/peers/run_wsinfer.sh or
# scripts/compare-wsinfer.sh); it is never a dependency of histomap.
# usage: [BENCH_SPECS="ARCH SIZE BATCH,..."] scripts/bench-vs-pytorch.sh [ITERS [ROUNDS]]
set -euo pipefail
cd "$(dirname "$0")/.."
iters=${1:-5}
rounds=${2:-3}
venv=${WSINFER_VENV:-${TMPDIR:-/tmp}/histomap-peers/wsinfer-venv}
[[ -x $venv/bin/python ]] || { echo "no PyTorch venv at $venv: run scripts/compare-wsinfer.sh once" >&2; exit 2; }
threads=$(nproc)
cargo bench --bench models --no-run -q 2>/dev/null
bench=$(ls -t target/release/deps/models-* | grep -v '\.d$' | head -1)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
specs=("smallcnn 96 64" "smallcnn 150 32" "resnet18 150 32" "mobilenetv2 96 64" "efficientnet-lite0 96 64")
# BENCH_SPECS="mobilenetv2 96 64,smallcnn 96 64" measures only those.
[[ -n ${BENCH_SPECS:-} ]] && IFS=, read -ra specs <<<"$BENCH_SPECS"
for round in $(seq 1 "$rounds"); do
  for spec in "${specs[@]}"; do
    set -- $spec
    echo "ours   $spec $(RAYON_NUM_THREADS=$threads "$bench" "$1" "$2" "$3" "$iters")" >>"$log"
    echo "theirs $spec $("$venv/bin/python" scripts/bench_pytorch.py "$1" "$2" "$3" "$iters" "$threads")" >>"$log"
  done
done
python3 - "$log" "$threads" "$rounds" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    who, arch, size, batch = line.split()[:4]
    for k, v in re.findall(r"(\w+_img_s)=([\d.]+)", line):
        runs.setdefault((arch, size, batch), {}).setdefault((who, k), []).append(float(v))
print(f"images/s, median of {sys.argv[3]} rounds, {sys.argv[2]} threads")
for (arch, size, batch), r in runs.items():
    m = {k: statistics.median(v) for k, v in r.items()}
    torch = m[("theirs", "infer_img_s")]
    print(f"{arch} {size} px batch {batch}: PyTorch f32 {torch:.0f}")
    for (who, k), v in sorted(m.items()):
        if who == "ours" and k != "train_img_s":
            name = "f32" if k == "infer_img_s" else k[:-len("_img_s")]
            print(f"  histomap {name:10} {v:7.0f}  = {v / torch:.2f}x PyTorch")
    print(f"  training step: histomap {m[('ours', 'train_img_s')]:.0f}, PyTorch "
          f"{m[('theirs', 'train_img_s')]:.0f} = {m[('ours', 'train_img_s')] / m[('theirs', 'train_img_s')]:.2f}x")
PY
