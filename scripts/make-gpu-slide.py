#!/usr/bin/env python3
"""Writes a tiled pyramidal BigTIFF like scripts/make-slides.sh's gigapixel.tif, with
numpy, tifffile and Pillow alone, for machines that have no vips (the GPU machine).

White glass, 100,000 x 80,000 by default, with two islands of real tissue 6000 px
apart: the CMU Aperio region and a Kather mosaic, as JPEG files that `scripts/gpu-check.sh
--pack` makes with vips (the GPU machine has no OpenSlide to read the SVS itself) and
`--run` unpacks into $GPU_CHECK_WORK/data (default /tmp/gpu-check/data), where this script
looks by default. 0.499 um/px, 512 px tiles, one
IFD per level, each level half the one before (floor, as vips) until a level fits in one
tile, reduced levels marked NewSubfileType=1: OpenSlide 3.4.1 opens it as generic-tiff.

Why not JPEG tiles as gigapixel.tif has: writing JPEG through tifffile needs
imagecodecs, which the GPU machine lacks. Tiles are deflate (zlib, standard library),
compressed here and handed to tifffile already encoded: the one white tile is compressed
once and reused, so the 100,000 x 80,000 slide takes seconds, and memory holds only
the islands (about 100 MB at level 0), never a whole level.

The MPP is recorded as gigapixel.tif and dense.tif record it: XResolution/YResolution
in pixels per centimetre (ResolutionUnit 3), which histomap reads from OpenSlide's
tiff.* properties for generic TIFFs (openslide.mpp-x stays unset in 3.4.1).

usage: scripts/make-gpu-slide.py OUT.tif [--width W] [--height H]
                                 [--cmu CMU.jpg] [--kather KATHER.jpg] [--tile 512]
Prints one line per island ("island NAME X Y W H", level-0 pixels) for checks.
"""

import argparse
import os
import sys
import time
import zlib

import numpy as np
import tifffile
from PIL import Image

MPP = 0.499  # as make-slides.sh: 2004 px/mm
FULL = (100_000, 80_000)
# Where make-slides.sh puts the islands' sheet in the 100,000 x 80,000 slide.
FULL_ORIGIN = (61_000, 47_000)
# The Kather mosaic's offset from the CMU region's origin in that sheet.
KATHER_X = 8_220


def fail(msg):
    sys.exit(f"make-gpu-slide: {msg}")


def load_rgb(path):
    if not os.path.isfile(path):
        fail(f"{path}: missing (scripts/gpu-check.sh --pack makes it, --run unpacks it)")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def level_sizes(w, h, tile):
    """Level sizes as vips's pyramid makes them: halve (floor) until one tile holds it."""
    sizes = [(w, h)]
    while sizes[-1][0] > tile or sizes[-1][1] > tile:
        w, h = sizes[-1]
        sizes.append((max(1, w // 2), max(1, h // 2)))
    return sizes


def shrink(a):
    """One pyramid step: the mean of each 2 x 2 block (a has even sides)."""
    s = a[0::2, 0::2].astype(np.uint16)
    s += a[1::2, 0::2]
    s += a[0::2, 1::2]
    s += a[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=FULL[0])
    ap.add_argument("--height", type=int, default=FULL[1])
    unpacked = os.path.join(os.environ.get("GPU_CHECK_WORK", "/tmp/gpu-check"), "data")
    ap.add_argument("--cmu", default=os.path.join(unpacked, "cmu.jpg"))
    ap.add_argument("--kather", default=os.path.join(unpacked, "kather.jpg"))
    ap.add_argument("--tile", type=int, default=512, choices=(256, 512))
    a = ap.parse_args()
    t0 = time.time()
    W, H, T = a.width, a.height, a.tile
    if W <= 0 or H <= 0:
        fail(f"{W} x {H}: width and height must be positive")

    cmu, kather = load_rgb(a.cmu), load_rgb(a.kather)
    sheet_w = KATHER_X + kather.shape[1]
    sheet_h = max(cmu.shape[0], kather.shape[0])
    if W < sheet_w or H < sheet_h:
        fail(f"{W} x {H}: the islands need at least {sheet_w} x {sheet_h}")
    # Where gigapixel.tif has them, scaled; centred where they would not fit.
    ox = round(FULL_ORIGIN[0] * W / FULL[0])
    oy = round(FULL_ORIGIN[1] * H / FULL[1])
    if ox + sheet_w > W:
        ox = (W - sheet_w) // 2
    if oy + sheet_h > H:
        oy = (H - sheet_h) // 2

    sizes = level_sizes(W, H, T)
    # The sheet is padded with white to a grid of 2^levels pixels, so that each level's
    # sheet is exactly the 2 x 2 mean of the one before at exactly half the origin:
    # the same pixels as shrinking the whole slide, without ever holding it.
    step = 1 << (len(sizes) - 1)
    px, py = ox - ox % step, oy - oy % step
    pw = -(-(ox + sheet_w - px) // step) * step
    ph = -(-(oy + sheet_h - py) // step) * step
    sheet = np.full((ph, pw, 3), 255, np.uint8)
    sheet[oy - py : oy - py + cmu.shape[0], ox - px : ox - px + cmu.shape[1]] = cmu
    kx = ox - px + KATHER_X
    sheet[oy - py : oy - py + kather.shape[0], kx : kx + kather.shape[1]] = kather
    islands = [
        ("cmu", ox, oy, cmu.shape[1], cmu.shape[0]),
        ("kather", ox + KATHER_X, oy, kather.shape[1], kather.shape[0]),
    ]
    del cmu, kather

    white = zlib.compress(b"\xff" * (T * T * 3), 9)

    def tiles(level, sheet):
        w, h = sizes[level]
        sx, sy = px >> level, py >> level
        sh, sw = sheet.shape[:2]
        for ty in range(0, h, T):
            for tx in range(0, w, T):
                x0, y0 = max(tx, sx), max(ty, sy)
                x1, y1 = min(tx + T, sx + sw), min(ty + T, sy + sh)
                if x0 >= x1 or y0 >= y1:
                    yield white
                    continue
                # Edge tiles are whole tiles too (TIFF pads them); the padding is white.
                tile = np.full((T, T, 3), 255, np.uint8)
                tile[y0 - ty : y1 - ty, x0 - tx : x1 - tx] = sheet[
                    y0 - sy : y1 - sy, x0 - sx : x1 - sx
                ]
                yield zlib.compress(tile.tobytes(), 6)

    res = 10_000 / MPP  # pixels per centimetre
    tmp = a.out + ".part"
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for level, (w, h) in enumerate(sizes):
            if level:
                sheet = shrink(sheet)
            tw.write(
                tiles(level, sheet),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(T, T),
                photometric="rgb",
                planarconfig="contig",
                compression="zlib",
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=1 if level else 0,
                metadata=None,
            )
    os.replace(tmp, a.out)
    for name, x, y, w, h in islands:
        print(f"island {name} {x} {y} {w} {h}")
    print(
        f"wrote {a.out}: {W} x {H}, {len(sizes)} levels, {T} px deflate tiles, "
        f"{MPP} um/px, {os.path.getsize(a.out) / 2**20:.1f} MiB in {time.time() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
