#!/usr/bin/env bash
# Wall time of histomap vs WSInfer (the closest Python tool) on the same slide with
# the same weights, measured in one run, CPU only, no network; histomap in each
# precision (f32, int8).
#
# usage: scripts/compare-wsinfer.sh [MODEL SLIDE] [REPEAT]
#   with no MODEL and SLIDE, the two at-scale comparisons (slides from
#   scripts/make-slides.sh): resnet18_150 on target/slides/dense.tif (the real Aperio
#   region 4 × 4) and smallcnn96 on target/slides/pcam-gigapixel.tif (100,000 × 80,000)
#   MODEL   smallcnn96 | resnet18_150 (seeded weights from the peer's script), or a
#           histomap model folder such as models/pcam-mobilenetv2 (exported to WSInfer
#           with its weights by scripts/export-wsinfer.py)
#   REPEAT  rounds, each running every tool once; medians are reported (default 3)
#   PRECISIONS (environment) histomap's precisions to run (default "f32 auto" for a
#           shipped model, whose card's int8 check `auto` follows; "f32 int8" for the
#           seeded ones, which have no check)
# Uses ../shared/peers/{wsinfer_model.py,run_wsinfer.sh}; the peer's venv (≈3.5 GB,
# made on first use by run_wsinfer.sh) lives in ${WSINFER_VENV:-$TMPDIR/histomap-peers/wsinfer-venv}.
# histomap's line splits its stream time per patch into classifying and waiting for
# reads (summary.json's timings.classify_s and stream_s), and gives the readers' CPU
# time per patch (timings.read_s), so the next bottleneck shows. HISTOMAP_READER
# (environment) passes through: =openslide reads through OpenSlide alone.
# Both tools get their defaults otherwise: WSInfer batch 32 with min(nproc, 8)
# DataLoader workers; histomap the pipeline's batch and all cores.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -le 1 ]]; then
  scripts/make-slides.sh target/slides dense pcam-gigapixel >/dev/null
  "$0" resnet18_150 target/slides/dense.tif "${1:-3}"
  exec "$0" smallcnn96 target/slides/pcam-gigapixel.tif "${1:-3}"
fi
model=$1
if [[ -f $model/card.json ]]; then
  src=$(realpath "$model")
  model=$(basename "$src")
fi
slide=$(realpath "$2")
repeat=${3:-3}
default_precisions="f32 int8"
[[ -n ${src:-} ]] && default_precisions="f32 auto"
precisions=${PRECISIONS:-$default_precisions}
peers=$(realpath ../shared/peers)
work=${TMPDIR:-/tmp}/histomap-peers
venv=${WSINFER_VENV:-$work/wsinfer-venv}
export WSINFER_VENV=$venv
mkdir -p "$work"

[[ -x target/release/histomap ]] || scripts/setup.sh
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q -r "$peers/wsinfer-requirements.txt"
fi
if [[ -n ${src:-} ]]; then
  "$venv/bin/python" scripts/export-wsinfer.py "$src" "$work/models/$model" >/dev/null
elif [[ ! -f $work/models/$model/config.json ]]; then
  "$venv/bin/python" "$peers/wsinfer_model.py" --out "$work/models" --models "$model" >/dev/null
fi

# histomap's model folder and pipeline, from the same weights and WSInfer's config.json.
ours=$work/histomap-$model
mkdir -p "$ours/model" "$work/slides-$model"
ln -sf "$slide" "$work/slides-$model/$(basename "$slide")"
cp "$work/models/$model/model.safetensors" "$ours/model/"
python3 - "$work/models/$model/config.json" "$ours" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1])); out = sys.argv[2]
norm = next(t["arguments"] for t in cfg["transform"] if t["name"] == "Normalize")
palette = ["#3cb44b", "#e6194b", "#4363d8", "#f58231", "#911eb4", "#9a6324", "#ffe119", "#a9a9a9"]
classes = [{"name": n, "color": palette[i % 8]} for i, n in enumerate(cfg["class_names"])]
card = {"format": "histomap-model/1", "architecture": cfg["architecture"], "input_size": cfg["patch_size_pixels"],
        "mpp": cfg["spacing_um_px"], "classes": classes, "normalization": {"mean": norm["mean"], "std": norm["std"]},
        "trained": False, "provenance": "seeded random weights from shared/peers/wsinfer_model.py (speed comparison only)",
        "metrics": {}, "histomap_version": "compare"}
json.dump(card, open(f"{out}/model/card.json", "w"), indent=1)
with open(f"{out}/pipeline.toml", "w") as f:
    f.write(f'name = "compare-{cfg["architecture"]}"\n[patch]\nsize = {cfg["patch_size_pixels"]}\n'
            f'stride = {cfg["patch_size_pixels"]}\nmpp = {cfg["spacing_um_px"]}\n[model]\npath = "model"\nbatch_size = 32\n'
            f'[normalization]\nmean = {norm["mean"]}\nstd = {norm["std"]}\n')
    for c in classes:
        f.write(f'[[classes]]\nname = "{c["name"]}"\ncolor = "{c["color"]}"\n')
PY
# A shipped model keeps its own card (provenance, colours).
[[ -n ${src:-} ]] && cp "$src/card.json" "$ours/model/card.json"

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ws_wall=(); ws_patches=0
declare -A hm_wall hm_rss hm_patches hm_classify hm_wait hm_read
for i in $(seq 1 "$repeat"); do
  line=$(bash "$peers/run_wsinfer.sh" "$work/slides-$model" "$work/wsinfer-out-$model" "$work/models/$model" 2>/dev/null | tail -n 1)
  ws_wall+=("$(grep -o 'wall_s=[0-9.]*' <<<"$line" | cut -d= -f2)")
  ws_patches=$(grep -o 'patches=[0-9]*' <<<"$line" | cut -d= -f2)
  for p in $precisions; do
    /usr/bin/time -v -o "$work/time-$model.txt" target/release/histomap heatmap "$slide" --quiet --force \
      --precision "$p" --pipeline "$ours/pipeline.toml" --out "$work/histomap-out-$model" 2>/dev/null
    hm_wall[$p]+="$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$work/time-$model.txt") "
    hm_rss[$p]+="$(awk -F': ' '/Maximum resident/ {print int($2/1024)}' "$work/time-$model.txt") "
    read -r patches classify_ms wait_ms read_ms < <(python3 -c "import json,sys
s = json.load(open(sys.argv[1])); n = s['patches']['classified']; t = s['timings']
print(n, 1e3 * t['classify_s'] / n, 1e3 * (t['stream_s'] - t['classify_s']) / n, 1e3 * t['read_s'] / n)" \
      "$work/histomap-out-$model/$(basename "${slide%.*}")/summary.json")
    hm_patches[$p]=$patches
    hm_classify[$p]+="$classify_ms "
    hm_wait[$p]+="$wait_ms "
    hm_read[$p]+="$read_ms "
  done
done
ws=$(printf '%s\n' "${ws_wall[@]}" | median)
echo "model=$model slide=$(basename "$slide") runs=$repeat nproc=$(nproc)"
echo "wsinfer:  patches=$ws_patches wall_s=$ws (runs: ${ws_wall[*]})"
for p in $precisions; do
  hm=$(tr ' ' '\n' <<<"${hm_wall[$p]}" | grep . | median)
  rss=$(tr ' ' '\n' <<<"${hm_rss[$p]}" | grep . | median)
  echo "histomap --precision $p: patches=${hm_patches[$p]} wall_s=$hm peak_rss_mib=$rss (runs: ${hm_wall[$p]% })"
  # Where a patch's time goes: the classifier busy, the classifier waiting for reads
  # (the readers' share beyond what overlaps with classifying), and the readers' own
  # CPU time (reading, decoding, resizing, normalising; summed over reader threads).
  cls=$(tr ' ' '\n' <<<"${hm_classify[$p]}" | grep . | median)
  wait=$(tr ' ' '\n' <<<"${hm_wait[$p]}" | grep . | median)
  rd=$(tr ' ' '\n' <<<"${hm_read[$p]}" | grep . | median)
  echo "  per patch: classify_ms=$cls waiting_for_reads_ms=$wait read_cpu_ms=$rd"
  awk -v w="$ws" -v h="$hm" -v pw="$ws_patches" -v ph="${hm_patches[$p]}" -v p="$p" 'BEGIN {
    printf "  %s: wall-time ratio wsinfer/histomap = %.1fx; per patch = %.1fx (goal: 5x)\n", p, w/h, (w/pw)/(h/ph) }'
done
