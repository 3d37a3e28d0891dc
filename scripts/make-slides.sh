#!/usr/bin/env bash
# Generates the slides that histomap's tests and benchmarks need but that cannot be
# shipped, from the real data in ../shared/data (vips streams, so memory stays small):
#
#   kather5000.tif  5000×5000 plain RGB strip TIFF, uncompressed, 0.495 µm/px: a mosaic
#                   of the real Kather 2016 tiles, laid out like the "larger images"
#                   that OpenSlide refuses.
#   gigapixel.tif   100,000×80,000 tiled pyramidal BigTIFF (JPEG, 512 px tiles, one
#                   IFD per level, which OpenSlide 3.4.1 reads as generic-tiff),
#                   0.499 µm/px, white glass with two islands of real tissue: the CMU
#                   Aperio region and a Kather mosaic.
#   dense.tif       8,880×11,868 tiled pyramidal TIFF (JPEG, 256 px tiles), 0.499 µm/px:
#                   the real Aperio region repeated 4 × 4, so that a slide of realistic
#                   tissue density holds thousands of patches (speed at scale).
#   pcam-gigapixel.tif  100,000×80,000 tiled pyramidal BigTIFF (JPEG, 512 px tiles),
#                   0.499 µm/px: a 28,000 px square of real PCam patches (a 30 × 30
#                   mosaic of the shared patches, scaled from 0.97 µm/px, repeated
#                   5 × 5) on white glass, ≈22,000 SmallCnn 96 px patches. Made only
#                   when named: the at-scale comparison needs it, the tests do not.
#
# usage: scripts/make-slides.sh [OUT_DIR [NAME...]]   (default: target/slides, and
#        kather5000 gigapixel dense); existing files are kept.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
data=${HISTOMAP_DATA:-$here/../shared/data}
out=${1:-$here/target/slides}
shift || true
names=" ${*:-kather5000 gigapixel dense} "
want() { [[ $names == *" $1 "* && ! -f $out/$1.tif ]]; }
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
command -v vips >/dev/null || { echo "make-slides: needs vips (apt-get install libvips-tools)" >&2; exit 2; }

# A square mosaic of the real Kather tiles, repeated in a fixed order.
kather_mosaic() { # SIDE_IN_TILES OUT
  local n=$(( $1 * $1 )) tiles=()
  mapfile -t all < <(find "$data/kather2016" -name '*.tif' | LC_ALL=C sort)
  for (( i = 0; i < n; i++ )); do tiles+=("${all[$(( (i * 37) % ${#all[@]} ))]}"); done
  vips arrayjoin "${tiles[*]}" "$2" --across "$1"
}

if want kather5000; then
  kather_mosaic 34 "$tmp/mosaic.v"                         # 5100×5100
  vips crop "$tmp/mosaic.v" "$tmp/k.v" 0 0 5000 5000
  # 0.495 µm/px = 2020.2 px/mm; no tiling, no compression: strips, as Kather's files.
  vips tiffsave "$tmp/k.v" "$out/.kather5000.tif" --compression none --xres 2020.202 --yres 2020.202
  mv "$out/.kather5000.tif" "$out/kather5000.tif"
  echo "wrote $out/kather5000.tif"
fi

if want gigapixel; then
  kather_mosaic 20 "$tmp/island.v"                         # 3000×3000
  # vips reads the SVS through OpenSlide as RGBA: flatten onto white first.
  vips flatten "$data/slides/cmu_small_region.svs" "$tmp/cmu.v" --background 255
  # Two islands 6000 px apart on white, then placed far from the origin.
  vips embed "$tmp/cmu.v" "$tmp/a.v" 0 0 11220 3000 --extend white
  vips insert "$tmp/a.v" "$tmp/island.v" "$tmp/sheet.v" 8220 0
  # 0.499 µm/px = 2004 px/mm, carried by the image header into the TIFF.
  vips copy "$tmp/sheet.v" "$tmp/sheet_res.v" --xres 2004 --yres 2004
  vips embed "$tmp/sheet_res.v" "$out/.gigapixel.tif[tile,pyramid,compression=jpeg,Q=85,bigtiff,tile-width=512,tile-height=512]" \
    61000 47000 100000 80000 --extend white
  mv "$out/.gigapixel.tif" "$out/gigapixel.tif"
  echo "wrote $out/gigapixel.tif"
fi

if want dense; then
  vips flatten "$data/slides/cmu_small_region.svs" "$tmp/cmu1.v" --background 255
  vips replicate "$tmp/cmu1.v" "$tmp/cmu16.v" 4 4
  vips copy "$tmp/cmu16.v" "$tmp/cmu16_res.v" --xres 2004 --yres 2004
  vips tiffsave "$tmp/cmu16_res.v" "$out/.dense.tif" --tile --pyramid --compression jpeg --Q 85 \
    --tile-width 256 --tile-height 256
  mv "$out/.dense.tif" "$out/dense.tif"
  echo "wrote $out/dense.tif"
fi

if want pcam-gigapixel; then
  mapfile -t patches < <(cd "$data/pcam" && find train -name '*.jpg' | LC_ALL=C sort | head -n 900)
  (cd "$data/pcam" && vips arrayjoin "${patches[*]}" "$tmp/pcam30.v" --across 30)   # 2880×2880
  vips resize "$tmp/pcam30.v" "$tmp/pcam30_05.v" 1.9439                     # 0.97 -> 0.499 µm/px
  vips replicate "$tmp/pcam30_05.v" "$tmp/pcam150.v" 5 5
  vips copy "$tmp/pcam150.v" "$tmp/pcam_res.v" --xres 2004 --yres 2004
  vips embed "$tmp/pcam_res.v" "$out/.pcam-gigapixel.tif[tile,pyramid,compression=jpeg,Q=85,bigtiff,tile-width=512,tile-height=512]" \
    36000 26000 100000 80000 --extend white
  mv "$out/.pcam-gigapixel.tif" "$out/pcam-gigapixel.tif"
  echo "wrote $out/pcam-gigapixel.tif"
fi
