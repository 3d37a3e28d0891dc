#!/usr/bin/env python3
"""The class of every cell of scripts/make-slides.sh's kather5000 mosaic, for measuring
maps and extraction on it. Standard library only.

The mosaic is the top-left 5000 px of 34 x 34 real Kather 2016 tiles of 150 px at
0.495 um/px, tile i (row-major) being sorted(tiles)[(i * 37) % len(tiles)] as
make-slides.sh lays them (LC_ALL=C sort: byte order, as Python sorts str).

usage:
  python3 scripts/mosaic.py score PREDICTIONS.csv [DATA]
      accuracy of a heatmap of the mosaic (or a restained copy), mapped with the patch
      size as stride (one patch per tile; --min-tissue 0 scores every tile, the
      glass-like EMPTY ones too)
  python3 scripts/mosaic.py geojson OUT.geojson [DATA]
      the mosaic's class regions as a QuPath GeoJSON export: one square annotation per
      tile, classified by its class folder's name (TUMOR, STROMA, ...)
  python3 scripts/mosaic.py check MANIFEST.csv [DATA]
      the share of tiles of an `extract` manifest whose label is the class under their
      centre, and the classes present
DATA: ../shared/data
"""

import collections
import csv
import json
import pathlib
import sys

SIDE, ACROSS, SIZE = 150, 34, 5000


def layout(data):
    tiles = sorted(str(p) for p in (pathlib.Path(data) / "kather2016").rglob("*.tif"))
    return lambda i: pathlib.Path(tiles[(i * 37) % len(tiles)]).parent.name.split("_", 1)[1]


def class_at(label, x, y):
    col, row = int(x) // SIDE, int(y) // SIDE
    return label(row * ACROSS + col)


def score(pred, label):
    right = total = 0
    for r in csv.DictReader(open(pred)):
        x, y = int(r["x"]), int(r["y"])
        if r["status"] != "ok" or x % SIDE or y % SIDE:
            continue
        total += 1
        right += r["class"] == class_at(label, x, y)
    print(f"{right}/{total} = {right / max(total, 1):.4f}")


def geojson(out, label):
    features = []
    for row in range(-(-SIZE // SIDE)):
        for col in range(-(-SIZE // SIDE)):
            x0, y0 = col * SIDE, row * SIDE
            x1, y1 = min(x0 + SIDE, SIZE), min(y0 + SIDE, SIZE)
            ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
            features.append({
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation",
                               "classification": {"name": label(row * ACROSS + col)}},
            })
    json.dump({"type": "FeatureCollection", "features": features}, open(out, "w"))
    print(f"{out}: {len(features)} regions")


def check(manifest, label):
    right = total = 0
    classes = collections.Counter()
    for r in csv.DictReader(open(manifest)):
        cx = int(r["x"]) + int(r["w"]) / 2
        cy = int(r["y"]) + int(r["h"]) / 2
        total += 1
        classes[r["label"]] += 1
        right += r["label"] == class_at(label, cx, cy)
    print(f"{right}/{total} = {100 * right / max(total, 1):.2f}% of tiles carry the class "
          f"under their centre; {len(classes)} classes: {dict(sorted(classes.items()))}")


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("score", "geojson", "check"):
        sys.exit(__doc__)
    label = layout(sys.argv[3] if len(sys.argv) > 3 else "../shared/data")
    {"score": score, "geojson": geojson, "check": check}[sys.argv[1]](sys.argv[2], label)


if __name__ == "__main__":
    main()
