#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks and builds histomap in release mode.
#   system packages: OpenSlide 3.4.1 (libopenslide-dev), libclang (openslide-rs's
#   bindgen), vips (generates the test slides), GNU time (memory figures); for the
#   tests also Slurm and munge (scripts/slurm-test.sh) and Chromium (the report is
#   rendered in a real browser)
# usage: scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(libopenslide-dev libclang-dev pkg-config libvips-tools time)
[[ ${1:-} == --test ]] && pkgs+=(slurm-wlm munge chromium)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if (( ${#missing[@]} )); then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 2; }
cargo build --release --locked
echo "setup: built $(pwd)/target/release/histomap" >&2
