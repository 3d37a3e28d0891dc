#!/usr/bin/env bash
# Fetches OpenSlide 4 for histomap to link: Debian bookworm ships OpenSlide 3.4.1,
# which reads no DICOM. The PyPI package openslide-bin (LGPL-2.1; its bundled
# libraries' licences come with it) ships a self-contained libopenslide.so.1 for
# manylinux x86_64. This takes it from the pinned wheel, checks both by sha256, and
# lays out
#   vendor/openslide/lib/libopenslide.so.1   (and libopenslide.so, for the linker)
#   vendor/openslide/licenses/               (the wheel's licence files)
# build.rs links against it and writes its folder into the binaries' run path, so
# histomap runs with it and no LD_LIBRARY_PATH. The header openslide-sys binds is
# Debian's 3.4.1 (libopenslide-dev): OpenSlide 4 keeps that API. Without
# vendor/openslide, histomap builds against Debian's 3.4.1 (`info` says which).
# An up-to-date copy is left alone. Needs python3 and network access.
# usage: scripts/fetch-openslide.sh
set -euo pipefail
cd "$(dirname "$0")/.."
version=4.0.1.2
wheel=openslide_bin-$version-py3-none-manylinux_2_28_x86_64.whl
url=https://files.pythonhosted.org/packages/da/f0/f4d494e1df28594cff1ea0f3921665011ee3fc48a903653ce864cb27e180/$wheel
wheel_sha256=8ac4aa3a2277ed5e218ca0019db65bdd6e853f865eb4edd3da00e2f4acf0c923
lib_sha256=552b5b77901bc9c7e7cc6e02a0b4f2861ffa85572b036a063db4f19ed2f357df
out=vendor/openslide

[[ $(uname -m) == x86_64 ]] || { echo "fetch-openslide: openslide-bin's wheel is for x86_64; using Debian's OpenSlide" >&2; exit 0; }
sha256() { sha256sum "$1" | cut -d' ' -f1; }
if [[ -f $out/lib/libopenslide.so.1 && $(sha256 "$out/lib/libopenslide.so.1") == "$lib_sha256" ]]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$url" "$tmp/$wheel"
[[ $(sha256 "$tmp/$wheel") == "$wheel_sha256" ]] || { echo "fetch-openslide: $url has sha256 $(sha256 "$tmp/$wheel"), $wheel_sha256 pinned" >&2; exit 1; }
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$tmp/$wheel" "$tmp/x"
lib=$tmp/x/openslide_bin/libopenslide.so.1
[[ $(sha256 "$lib") == "$lib_sha256" ]] || { echo "fetch-openslide: libopenslide.so.1 has sha256 $(sha256 "$lib"), $lib_sha256 pinned" >&2; exit 1; }
rm -rf "$out" && mkdir -p "$out/lib"
cp "$lib" "$out/lib/" && ln -s libopenslide.so.1 "$out/lib/libopenslide.so"
cp -r "$tmp/x/openslide_bin-$version.dist-info/licenses" "$out/licenses"
echo "fetch-openslide: OpenSlide $version (openslide-bin) → $out" >&2
