#!/usr/bin/env bash
# Peak resident memory of `histomap heatmap` (GNU time's maximum RSS) with each shipped
# pipeline and model, in each precision, on the real Aperio slide and on the generated
# 100,000×80,000 pyramids (pcam-gigapixel.tif, dense with PCam tissue, with the pcam
# pipeline only): memory should not grow with the slide. Also at --batch-size 8, the
# lever that trades speed for memory in f32 (see MICRO_BATCH_PIXELS in src/model/mod.rs).
#
# usage: scripts/measure-memory.sh   (builds release; makes the slides if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
scripts/make-slides.sh target/slides gigapixel pcam-gigapixel >/dev/null
bin=target/release/histomap
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%-22s %-8s %-9s %-8s %10s %8s\n' slide pipeline precision batch peak_MiB wall_s
run() { # SLIDE PIPELINE
  for precision in auto f32; do
    for batch in default 8; do
      args=(--precision "$precision")
      [[ $batch == default ]] || args+=(--batch-size "$batch")
      rm -rf "$tmp/out"
      /usr/bin/time -f '%M %e' -o "$tmp/time" \
        "$bin" heatmap -q -p "pipelines/$2.toml" -o "$tmp/out" "${args[@]}" "$1" 2>/dev/null
      read -r kib wall <"$tmp/time"
      printf '%-22s %-8s %-9s %-8s %10d %8s\n' "$(basename "$1")" "$2" "$precision" "$batch" $((kib / 1024)) "$wall"
    done
  done
}
for slide in ../shared/data/slides/cmu_small_region.svs target/slides/gigapixel.tif; do
  run "$slide" kather8
  run "$slide" pcam
done
run target/slides/pcam-gigapixel.tif pcam
