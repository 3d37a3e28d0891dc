#!/usr/bin/env python3
"""A few real PCam patches in PatchCamelyon's own HDF5 layout, for histomap's tests.

Writes OUT/camelyonpatch_level_2_split_{train,valid}_{x,y}.h5 as PCam ships them
(x: N x 96 x 96 x 3 uint8 in dataset `x`; y: N x 1 x 1 x 1 uint8 in dataset `y`),
with the pixels of the first N patches of each class of ../shared/data/pcam/labels.csv
(decoded from their JPEGs by Pillow). The train array is chunked and gzip-compressed,
the valid array contiguous, so both storage layouts are read. Also:
- OUT/camelyonpatch_level_2_split_train_meta.csv, PCam's meta columns; its `wsi`
  names are INVENTED (slide_a, slide_b: two patches of each class per slide), since
  the shared patches carry no slide ids: they only test that groups are read;
- OUT/train_0.png: patch 0 of the train array, losslessly, to check pixels against.

h5py runs in its own venv; it is never a dependency of histomap.
usage: python scripts/make-pcam-h5.py OUT [TRAIN_PER_CLASS=4] [VALID_PER_CLASS=2]
"""

import csv
import sys
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

PCAM = Path(__file__).resolve().parent.parent.parent / "shared/data/pcam"


def pick(rows, split, per_class):
    chosen = []
    for label in ("0", "1"):
        chosen += [r for r in rows if r["split"] == split and r["label"] == label][:per_class]
    return chosen


def write(out, split, rows, chunked):
    x = np.stack([np.asarray(Image.open(PCAM / r["path"]).convert("RGB")) for r in rows])
    y = np.array([int(r["label"]) for r in rows], dtype=np.uint8).reshape(-1, 1, 1, 1)
    stem = out / f"camelyonpatch_level_2_split_{split}"
    with h5py.File(f"{stem}_x.h5", "w") as f:
        if chunked:
            f.create_dataset("x", data=x, chunks=(2, 96, 96, 3), compression="gzip")
        else:
            f.create_dataset("x", data=x)
    with h5py.File(f"{stem}_y.h5", "w") as f:
        f.create_dataset("y", data=y)
    return x


def main():
    out = Path(sys.argv[1])
    train_n = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    valid_n = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    out.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader(open(PCAM / "labels.csv")))
    train = pick(rows, "train", train_n)
    x = write(out, "train", train, chunked=True)
    write(out, "valid", pick(rows, "valid", valid_n), chunked=False)
    Image.fromarray(x[0]).save(out / "train_0.png")
    with open(out / "camelyonpatch_level_2_split_train_meta.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi"])
        for i, r in enumerate(train):
            slide = "slide_a" if i % train_n < train_n // 2 else "slide_b"
            tumour = r["label"] == "1"
            w.writerow([i, 0, 0, tumour, tumour, slide])
    for r in train:
        print("train", r["path"], r["label"])


if __name__ == "__main__":
    main()
