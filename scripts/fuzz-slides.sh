#!/usr/bin/env bash
# Fuzzes the slide readers with damaged copies of six slides: the real Aperio SVS and
# Hamamatsu NDPI, a generated tiled pyramidal TIFF and strip TIFF, a PNG and a JPEG.
#
#   scripts/fuzz-slides.sh                 the full corpus (seed 19, 56 mutants of each
#                                          source: 336), run by tests/faults.rs: every
#                                          mutant through `info`, then all of them in one
#                                          `heatmap` batch beside the six good slides;
#                                          prints the counts (minutes)
#   scripts/fuzz-slides.sh make [--ci] DIR writes DIR/good (the six sources) and
#                                          DIR/corpus (the mutants; --ci: the fixed set of
#                                          8 per source that CI runs: every kind of damage), and nothing else
#
# The corpus is the same bytes for the same seed (FUZZ_SEED, FUZZ_PER_SOURCE override).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
data=${HISTOMAP_DATA:-$here/../shared/data}

if [[ ${1:-} != make ]]; then
  cd "$here"
  exec cargo test --release --test faults -- --ignored --exact fuzz_corpus_full --nocapture
fi
shift
per_source=${FUZZ_PER_SOURCE:-56}
if [[ ${1:-} == --ci ]]; then per_source=8; shift; fi
out=${1:?usage: fuzz-slides.sh make [--ci] DIR}
command -v vips >/dev/null || { echo "fuzz-slides: needs vips (apt-get install libvips-tools)" >&2; exit 2; }

good=$out/good
if [[ ! -f $good/.complete ]]; then
  rm -rf "$good" && mkdir -p "$good"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  cp "$data/slides/cmu_small_region.svs" "$data/slides/stritt_dapi_fluorescence.ndpi" "$good/"
  # vips reads the SVS through OpenSlide as RGBA: flatten onto white first.
  vips flatten "$data/slides/cmu_small_region.svs" "$tmp/cmu.v" --background 255
  vips copy "$tmp/cmu.v" "$tmp/cmu_res.v" --xres 2004 --yres 2004
  # A small tiled pyramid (JPEG, 256 px tiles), which OpenSlide reads as generic-tiff.
  vips tiffsave "$tmp/cmu_res.v" "$good/pyramid.tif" --tile --pyramid --compression jpeg \
    --Q 85 --tile-width 256 --tile-height 256
  # A mosaic of real Kather tiles, as an uncompressed strip TIFF, a PNG and a JPEG.
  mapfile -t tiles < <(find "$data/kather2016" -name '*.tif' | LC_ALL=C sort | head -64)
  vips arrayjoin "${tiles[*]}" "$tmp/mosaic.v" --across 8
  vips tiffsave "$tmp/mosaic.v" "$good/strip.tif" --compression none --xres 2020.202 --yres 2020.202
  vips crop "$tmp/mosaic.v" "$good/mosaic.png" 0 0 600 600
  vips crop "$tmp/mosaic.v" "$good/mosaic_q90.jpg[Q=90]" 300 300 600 600
  touch "$good/.complete"
fi

rm -rf "$out/corpus"
python3 "$here/scripts/make-fuzz-corpus.py" "${FUZZ_SEED:-19}" "$per_source" "$out/corpus" \
  "$good/cmu_small_region.svs" "$good/stritt_dapi_fluorescence.ndpi" "$good/pyramid.tif" \
  "$good/strip.tif" "$good/mosaic.png" "$good/mosaic_q90.jpg"
echo "fuzz-slides: $(ls "$out/corpus" | wc -l) mutants in $out/corpus"
