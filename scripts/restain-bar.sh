#!/usr/bin/env bash
# The stain-normalisation bar: restain a real slide and the kather5000 mosaic by colour
# deconvolution (scripts/restain.py, haematoxylin x1.35, eosin x0.7), map the restained
# copy and an unrestained copy written the same way (factors 1, so both went through
# the same JPEG pyramid) with --stain-norm none, macenko and reinhard, and report the
# share of patch classes the restained copy keeps, and on the mosaic the accuracy
# against the tiles' labels (scripts/mosaic.py score).
# Python with numpy, scikit-image and Pillow: PY (default: the stain peer's venv of
# scripts/make-stain-golden.py, /tmp/stainpeer/bin/python).
# usage: scripts/restain-bar.sh [MODEL=models/kather8] [OUT=target/restain]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/kather8}
out=${2:-target/restain}
py=${PY:-/tmp/stainpeer/bin/python}
bin=${HISTOMAP:-target/release/histomap}
data=${HISTOMAP_DATA:-../shared/data}
[[ -f target/slides/kather5000.tif ]] || scripts/make-slides.sh target/slides kather5000
mkdir -p "$out"
declare -A src=([svs]=$data/slides/cmu_small_region.svs [mosaic]=target/slides/kather5000.tif)
declare -A args=([svs]="--stride 38" [mosaic]="--min-tissue 0")
for s in svs mosaic; do
  [[ -f $out/$s-same.tif ]] || "$py" scripts/restain.py "${src[$s]}" "$out/$s-same.tif" --h 1 --e 1
  [[ -f $out/$s-restained.tif ]] || "$py" scripts/restain.py "${src[$s]}" "$out/$s-restained.tif"
  for copy in same restained; do
    for norm in none macenko reinhard; do
      # shellcheck disable=SC2086
      "$bin" heatmap "$out/$s-$copy.tif" --model "$model" --stain-norm "$norm" ${args[$s]} \
        -q --force -o "$out/maps/$s-$norm" 2>/dev/null
    done
  done
done
for s in svs mosaic; do
  for norm in none macenko reinhard; do
    a=$out/maps/$s-$norm/$s-same/predictions.csv b=$out/maps/$s-$norm/$s-restained/predictions.csv
    kept=$(python3 - "$a" "$b" <<'PY'
import csv, sys
def load(p):
    return {(r["x"], r["y"]): r["class"] for r in csv.DictReader(open(p)) if r["status"] == "ok"}
a, b = load(sys.argv[1]), load(sys.argv[2])
common = a.keys() & b.keys()
same = sum(a[k] == b[k] for k in common)
print(f"{same}/{len(common)} = {100 * same / len(common):.1f}%")
PY
)
    line="$s $norm: restained keeps $kept of classes"
    if [[ $s == mosaic ]]; then
      line+="; accuracy original $(python3 scripts/mosaic.py score "$a" "$data"), restained $(python3 scripts/mosaic.py score "$b" "$data")"
    fi
    echo "$line"
  done
done | tee "$out/restain.txt"
