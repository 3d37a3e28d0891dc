#!/usr/bin/env bash
# Peak resident memory of `histomap heatmap` (GNU time's maximum RSS) with each shipped
# pipeline and model, on the real Aperio slide and on the generated 100,000×80,000
# pyramid: memory should not grow with the slide. Also at --batch-size 8, the lever
# that trades speed for memory (see MICRO_BATCH_PIXELS in src/model/mod.rs).
#
# usage: scripts/measure-memory.sh   (builds release; makes the slides if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
scripts/make-slides.sh >/dev/null
bin=target/release/histomap
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%-22s %-8s %-12s %10s %8s\n' slide pipeline batch peak_MiB wall_s
for slide in ../shared/data/slides/cmu_small_region.svs target/slides/gigapixel.tif; do
  for pipeline in kather8 pcam; do
    for batch in default 8; do
      args=()
      [[ $batch == default ]] || args=(--batch-size "$batch")
      rm -rf "$tmp/out"
      /usr/bin/time -f '%M %e' -o "$tmp/time" \
        "$bin" heatmap -q -p "pipelines/$pipeline.toml" -o "$tmp/out" "${args[@]}" "$slide" 2>/dev/null
      read -r kib wall <"$tmp/time"
      printf '%-22s %-8s %-12s %10d %8s\n' "$(basename "$slide")" "$pipeline" "$batch" $((kib / 1024)) "$wall"
    done
  done
done
