#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks and builds histomap in release mode.
#   system packages: OpenSlide 3.4.1 (libopenslide-dev), libclang (openslide-rs's
#   bindgen), vips (generates the test slides), GNU time (memory figures)
# usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(libopenslide-dev libclang-dev pkg-config libvips-tools time)
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
