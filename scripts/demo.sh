#!/usr/bin/env bash
# The README's first command: set up, then map the tissue of a real Aperio slide.
#
# Until trained models ship (see CHANGELOG), the demo writes a model with RANDOM
# weights into out/demo-model: the run exercises every stage for real, but the class
# colours it paints mean nothing, and every output says so.
# usage: scripts/demo.sh [SLIDE ...]   (default: ../shared/data/slides/cmu_small_region.svs)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
slides=("$@")
(( ${#slides[@]} )) || slides=(../shared/data/slides/cmu_small_region.svs)
bin=target/release/histomap
model=models/kather8
if [[ ! -f $model/card.json ]]; then
  model=out/demo-model
  [[ -f $model/card.json ]] || $bin init-model --pipeline pipelines/kather8.toml --arch smallcnn --out "$model"
fi
$bin heatmap "${slides[@]}" --pipeline pipelines/kather8.toml --model "$model" --out out/demo
echo "demo: open out/demo/*/overlay.png; import out/demo/*/tiles.geojson into QuPath" >&2
