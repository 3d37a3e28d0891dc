#!/usr/bin/env bash
# Makes DICOM WSI series from the real slides in ../shared/data/slides, with
# wsidicomizer (pinned with every dependency in scripts/dicom-requirements.txt, in its
# own virtual environment target/dicom-venv), for the DICOM tests:
#   OUT/cmu_small_region/              the Aperio SVS, its JPEG tiles kept as they are
#   OUT/cmu_small_region_transcoded/   the same, every tile decoded and re-encoded
#                                      (JPEG, quality 90)
#   OUT/stritt_dapi_fluorescence/      the Hamamatsu NDPI (re-tiled: NDPI's strips
#                                      are not tiles)
# Each folder holds one series, its files named by UID, as archives name them. A
# finished folder is left alone; a failed one is removed. Needs python3 with venv and
# libturbojpeg (scripts/setup.sh --test installs both), and network for the first run.
# usage: scripts/make-dicom.sh [OUT=target/slides/dicom]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/slides/dicom}
data=../shared/data/slides
venv=target/dicom-venv
if [[ ! -x $venv/bin/wsidicomizer ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps \
    -r scripts/dicom-requirements.txt
fi
mkdir -p "$out"
convert() { # NAME SOURCE [wsidicomizer options...]
  local name=$1 src=$2; shift 2
  [[ -d $out/$name ]] && return 0
  if ! "$venv/bin/wsidicomizer" -i "$src" -o "$out/$name.partial" -w 2 "$@" >/dev/null; then
    rm -rf "$out/$name.partial"
    echo "make-dicom: wsidicomizer failed on $src" >&2
    exit 1
  fi
  mv "$out/$name.partial" "$out/$name"
  echo "make-dicom: $out/$name ($(ls "$out/$name" | wc -l) files)" >&2
}
convert cmu_small_region "$data/cmu_small_region.svs"
convert cmu_small_region_transcoded "$data/cmu_small_region.svs" \
  --force-transcoding --format jpeg --quality 90
convert stritt_dapi_fluorescence "$data/stritt_dapi_fluorescence.ndpi"
