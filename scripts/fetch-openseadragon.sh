#!/usr/bin/env bash
# Refreshes, or checks, the copy of OpenSeadragon that `histomap view` compiles in
# (src/view/assets/openseadragon/: the minified script, its licence and the buttons
# the viewer shows). The copy is committed, so neither building nor running histomap
# needs a network; this script is how it got there and how to check that it is the
# pinned npm package, byte for byte. OpenSeadragon is BSD-3-Clause (LICENSE.txt there).
# Needs curl, tar and sha256sum, and network access.
# usage: scripts/fetch-openseadragon.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
version=6.1.1
tarball=openseadragon-$version.tgz
url=https://registry.npmjs.org/openseadragon/-/$tarball
tarball_sha256=b4ab2942f33b90e0448e4d20fc5ed14cee049f1f3ae49d70afd4b05e9a2f92d0
dest=src/view/assets/openseadragon
buttons=(zoomin zoomout home fullpage)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -fsSL -o "$tmp/$tarball" "$url"
got=$(sha256sum "$tmp/$tarball" | cut -d' ' -f1)
[[ $got == "$tarball_sha256" ]] || { echo "fetch-openseadragon: $url has sha256 $got, $tarball_sha256 pinned" >&2; exit 1; }
tar -xzf "$tmp/$tarball" -C "$tmp"
files=(openseadragon.min.js LICENSE.txt)
for b in "${buttons[@]}"; do for s in rest grouphover hover pressed; do files+=("images/${b}_$s.png"); done; done
src_of() { [[ $1 == LICENSE.txt ]] && echo "$tmp/package/LICENSE.txt" || echo "$tmp/package/build/openseadragon/$1"; }
if [[ ${1:-} == --check ]]; then
  for f in "${files[@]}"; do
    cmp -s "$(src_of "$f")" "$dest/$f" || { echo "fetch-openseadragon: $dest/$f differs from openseadragon $version" >&2; exit 1; }
  done
  echo "fetch-openseadragon: $dest is openseadragon $version (${#files[@]} files)"
else
  rm -rf "$dest" && mkdir -p "$dest/images"
  for f in "${files[@]}"; do cp "$(src_of "$f")" "$dest/$f"; done
  echo "fetch-openseadragon: openseadragon $version → $dest (${#files[@]} files)"
fi
