#!/usr/bin/env bash
# The extraction bars:
# 1. the kather5000 mosaic's class regions as a QuPath GeoJSON (scripts/mosaic.py), cut
#    by `extract` at stride 50 (tiles straddle regions) with --min-overlap 0.6 and
#    --keep-glass (Kather's EMPTY class is glass): the share of tiles carrying the class
#    under their centre, the classes present, and a 1-epoch `train` on the manifest;
# 2. speed: `extract --labels` of every tissue tile of the dense pyramid, in tiles/s,
#    median of 3 runs, against histomap's patch readers on the same slide and pipeline
#    (`cargo bench --bench stream`, "stream, classifier off").
# usage: scripts/extract-bar.sh [OUT=target/extract-bar]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/extract-bar}
bin=${HISTOMAP:-target/release/histomap}
data=${HISTOMAP_DATA:-../shared/data}
[[ -f target/slides/kather5000.tif && -f target/slides/dense.tif ]] || scripts/make-slides.sh
mkdir -p "$out"
python3 scripts/mosaic.py geojson "$out/kather5000.geojson" "$data"
"$bin" extract target/slides/kather5000.tif --annotations "$out/kather5000.geojson" \
  -p pipelines/kather8.toml --stride 50 --min-overlap 0.6 --keep-glass --force -q -o "$out/mosaic"
python3 scripts/mosaic.py check "$out/mosaic/manifest.csv" "$data"
# Training on all of them takes minutes an epoch: 40 of each class show that it runs.
"$bin" extract target/slides/kather5000.tif --annotations "$out/kather5000.geojson" \
  -p pipelines/kather8.toml --stride 50 --min-overlap 0.6 --keep-glass --max-per-class 40 \
  --force -q -o "$out/mosaic40" >/dev/null
"$bin" train --data "$out/mosaic40/manifest.csv" -p pipelines/kather8.toml --no-val --epochs 1 \
  --batch-size 32 --force -q -o "$out/model" 2>/dev/null | head -1

echo "slide,label" >"$out/labels.csv"
echo "dense,TUMOR" >>"$out/labels.csv"
for r in 1 2 3; do
  s=$(date +%s.%N)
  "$bin" extract target/slides/dense.tif --labels "$out/labels.csv" -p pipelines/kather8.toml \
    --force -q -o "$out/dense" >/dev/null 2>&1
  e=$(date +%s.%N)
  python3 -c "print(f'{$(($(wc -l <"$out/dense/manifest.csv") - 1)) / ($e - $s):.1f}')"
done | sort -n | sed -n 2p | xargs -I{} echo "extract: {} tiles/s (median of 3; \
$(($(wc -l <"$out/dense/manifest.csv") - 1)) tiles of dense.tif, kather8 pipeline, PNG written)"
cargo bench -q --bench stream -- target/slides/dense.tif pipelines/kather8.toml models/kather8 2>/dev/null |
  grep -i "classifier off\|raw" || true
