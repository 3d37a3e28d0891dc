#!/usr/bin/env bash
# The README's first command: set up, then map the tissue of a real Aperio slide with
# the shipped kather8-mobilenetv2 model (fine-tuned from ImageNet; the pipeline's
# default, models/kather8, is faster and less accurate), then write the cohort report
# (out/demo/index.html, out/demo/cohort.csv).
# usage: scripts/demo.sh [SLIDE ...]   (default: ../shared/data/slides/cmu_small_region.svs)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
slides=("$@")
(( ${#slides[@]} )) || slides=(../shared/data/slides/cmu_small_region.svs)
target/release/histomap heatmap "${slides[@]}" --pipeline pipelines/kather8.toml \
  --model models/kather8-mobilenetv2 --out out/demo
target/release/histomap report out/demo
echo "demo: open out/demo/index.html in a browser (or out/demo/*/overlay.png); import out/demo/*/tiles.geojson into QuPath;" >&2
echo "      zoom in with the map over the tissue: target/release/histomap view out/demo" >&2
