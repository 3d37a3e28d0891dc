#!/usr/bin/env bash
# What stain normalisation costs per patch at scale: heatmap on the dense pyramid
# (scripts/make-slides.sh's dense.tif, 8,880 x 11,868, real tissue) with --stain-norm
# none, macenko and reinhard, in alternating rounds; time per patch from each run's
# summary.json (timings.total_s / patches, the per-slide estimate included), median of
# the rounds, and each method's cost relative to none measured in the same rounds.
# usage: scripts/bench-stain.sh [ROUNDS=3] [MODEL...]   (default models: pcam kather8)
#   SLIDE=target/slides/pcam-gigapixel.tif (22,000 PCam patches): the at-scale figure;
#   NORMS="none macenko" leaves Reinhard out.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shift || true
models=("${@:-pcam}")
[[ $# -eq 0 ]] && models=(pcam kather8)
bin=${HISTOMAP:-target/release/histomap}
slide=${SLIDE:-target/slides/dense.tif}
name=$(basename "$slide" .tif)
[[ -f $slide ]] || scripts/make-slides.sh target/slides "$name"
read -ra norms <<<"${NORMS:-none macenko reinhard}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for model in "${models[@]}"; do
  for ((r = 0; r < rounds; r++)); do
    for norm in "${norms[@]}"; do
      "$bin" heatmap "$slide" --model "models/$model" --stain-norm "$norm" -q \
        -o "$work/$model-$norm-$r" 2>/dev/null
      python3 - "$work/$model-$norm-$r/$name/summary.json" "$model" "$norm" <<'PY' >>"$work/times"
import json, sys
s = json.load(open(sys.argv[1]))
print(sys.argv[2], sys.argv[3], s["timings"]["total_s"] / s["patches"]["classified"] * 1e3,
      s["patches"]["classified"], s["model"]["precision"])
PY
    done
  done
done
python3 - "$work/times" <<'PY'
import collections, statistics, sys
t = collections.defaultdict(list)
info = {}
for line in open(sys.argv[1]):
    model, norm, ms, n, prec = line.split()
    t[model, norm].append(float(ms))
    info[model] = (n, prec)
for model in dict.fromkeys(m for m, _ in t):
    base = statistics.median(t[model, "none"])
    n, prec = info[model]
    print(f"{model} ({prec}, {n} patches): none {base:.3f} ms/patch", end="")
    for norm in ("macenko", "reinhard"):
        if not t[model, norm]:
            continue
        med = statistics.median(t[model, norm])
        print(f"; {norm} {med:.3f} ms/patch ({100 * (med / base - 1):+.1f}%)", end="")
    print(f"  [rounds: {', '.join(f'{x:.3f}' for x in t[model, 'none'])} | "
          f"{', '.join(f'{x:.3f}' for x in t[model, 'macenko'])}]")
PY
