#!/usr/bin/env bash
# Cuts EMPTY (bare glass) training tiles for kather8 from the real Aperio slide
# ../shared/data/slides/cmu_small_region.svs: 150 px cells at level 0 (0.499 µm/px,
# Kather's 0.495) whose every band is bright (mean > 200) and flat (std < 15), but not a
# constant fill (red std ≥ 1). In the 228 shared Kather tiles all 31 EMPTY tiles come
# from one patient, so a fold holding that patient out would never see the class;
# these tiles go to the training side of every fold (`histomap train --extra-train`).
# usage: scripts/make-glass-tiles.sh [OUT=target/extra/kather-glass] [MAX=32]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/extra/kather-glass}
max=${2:-32}
slide=../shared/data/slides/cmu_small_region.svs
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
vips copy "$slide[level=0]" "$tmp/rgba.v"
vips extract_band "$tmp/rgba.v" "$tmp/slide.v" 0 --n 3 # OpenSlide gives RGBA
w=$(vipsheader -f width "$tmp/slide.v")
h=$(vipsheader -f height "$tmp/slide.v")
: > "$tmp/cells"
for ((y = 0; y + 150 <= h; y += 150)); do
  for ((x = 0; x + 150 <= w; x += 150)); do
    vips crop "$tmp/slide.v" "$tmp/cell.v" $x $y 150 150
    vips stats "$tmp/cell.v" "$tmp/stats.csv"
    # Rows 3-5: bands R, G, B; tab-separated columns 5 and 6: mean and deviation.
    sed -n '3,5p' "$tmp/stats.csv" | awk -F'\t' -v x=$x -v y=$y '
      { ok = ok && $5 > 200 && $6 < 15; if (NR == 1) red_sd = $6 }
      BEGIN { ok = 1 }
      END { if (ok && red_sd >= 1) print x, y }' >> "$tmp/cells"
  done
done
found=$(wc -l < "$tmp/cells")
[[ $found -gt 0 ]] || { echo "no glass cells found in $slide" >&2; exit 1; }
rm -rf "$out" && mkdir -p "$out/08_EMPTY"
# Evenly spaced picks, so the tiles come from all over the slide's background.
awk -v n="$found" -v max="$max" 'BEGIN { step = n > max ? n / max : 1 }
  { if (NR - 1 >= next_pick) { print; next_pick += step } }' "$tmp/cells" |
while read -r x y; do
  vips crop "$tmp/slide.v" "$out/08_EMPTY/cmu-glass_x${x}_y${y}.tif" $x $y 150 150
done
echo "$(ls "$out/08_EMPTY" | wc -l) glass tiles (of $found glass cells) in $out/08_EMPTY"
