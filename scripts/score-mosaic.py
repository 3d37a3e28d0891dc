#!/usr/bin/env python3
"""Accuracy of a heatmap of scripts/make-slides.sh's kather5000 mosaic (or a restained
copy of it), cell by cell against the class of the Kather tile laid there.

The mosaic is the top-left 5000 px of 34 x 34 real Kather 2016 tiles of 150 px, tile i (row-major) being
sorted(tiles)[(i * 37) % len(tiles)] as make-slides.sh lays them. Map it with the
patch size as stride (150 px at 0.495 um/px: one patch per tile) and give this the
predictions.csv (--min-tissue 0 scores every tile, glass-like EMPTY ones too). Standard library only.

usage: python3 scripts/score-mosaic.py PREDICTIONS.csv [DATA]   (DATA: ../shared/data)
"""

import csv
import pathlib
import sys


def main():
    pred = sys.argv[1]
    data = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data") / "kather2016"
    # make-slides.sh sorts the paths with LC_ALL=C: byte order, as Python's sort of str.
    tiles = sorted(str(p) for p in data.rglob("*.tif"))
    side, across = 150, 34
    right = total = 0
    for r in csv.DictReader(open(pred)):
        if r["status"] != "ok":
            continue
        x, y = int(r["x"]), int(r["y"])
        if x % side or y % side or x // side >= across or y // side >= across:
            continue
        i = (y // side) * across + x // side
        label = pathlib.Path(tiles[(i * 37) % len(tiles)]).parent.name.split("_", 1)[1]
        total += 1
        right += r["class"] == label
    print(f"{right}/{total} = {right / max(total, 1):.4f}")


if __name__ == "__main__":
    main()
