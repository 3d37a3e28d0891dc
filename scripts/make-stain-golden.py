#!/usr/bin/env python3
"""TIAToolbox's Macenko and Reinhard stain normalisation on real Kather tiles, for
histomap's golden tests (tests/stain.rs).

Writes into OUT (the fixtures: OUT=fixtures/stain):
  source.png, target.png  two real Kather 2016 tiles (150x150, losslessly from their TIFFs):
      the tile to normalise (tumour) and the reference (stroma), named in DATA below.
  restained.png  source.png restained by colour deconvolution (skimage's rgb2hed / hed2rgb:
      haematoxylin x1.35, eosin x0.7, DAB kept), as scripts/restain.py restains slides.
  macenko.png    MacenkoNormalizer fitted on target.png, applied to source.png.
  reinhard.png   ReinhardNormalizer fitted on target.png, applied to source.png.
  golden.json    the stain matrices (rows H, E; unit optical-density vectors) of both tiles,
      their 99th-percentile concentrations, the luminosity tissue-mask count, and Reinhard's
      LAB means and standard deviations of both tiles, as TIAToolbox computes them.

The peer runs in a venv of its own and is never a dependency of histomap:
  python3 -m venv /tmp/stainpeer
  /tmp/stainpeer/bin/pip install --no-deps tiatoolbox==1.6.0   # sha256 feed00c9...d9ca51
  /tmp/stainpeer/bin/pip install numpy==2.4.6 opencv-python-headless==5.1.0.95 \
      scikit-image==0.26.0 scikit-learn==1.9.1 pandas pyyaml requests "zarr<3" numcodecs \
      filelock shapely joblib pillow typing_extensions
TIAToolbox's package __init__ files import torch; only its stain modules are needed, so they
are imported below without running those __init__ files.

usage: /tmp/stainpeer/bin/python scripts/make-stain-golden.py OUT [DATA]
       (DATA: the shared Kather tiles, default ../shared/data/kather2016)
"""

import importlib.util
import json
import logging
import pathlib
import sys
import types

import numpy as np
from PIL import Image
from skimage.color import hed2rgb, rgb2hed

SOURCE = "01_TUMOR/10009_CRC-Prim-HE-03_009.tif_Row_301_Col_151.tif"
TARGET = "02_STROMA/1025B_CRC-Prim-HE-04.tif_Row_1051_Col_1501.tif"
H_FACTOR, E_FACTOR = 1.35, 0.7


def tiatoolbox_stain_modules():
    root = pathlib.Path(importlib.util.find_spec("tiatoolbox").origin).parent

    def package(name, path):
        m = types.ModuleType(name)
        m.__path__ = [str(path)]
        sys.modules[name] = m
        return m

    top = package("tiatoolbox", root)
    top.logger = logging.getLogger("tiatoolbox")
    top.DuplicateFilter = logging.Filter
    for sub in ["utils", "tools", "annotation"]:
        setattr(top, sub, package(f"tiatoolbox.{sub}", root / sub))
    from tiatoolbox.tools import stainnorm
    from tiatoolbox.utils import misc

    return stainnorm, misc


def restain(rgb, h, e):
    hed = rgb2hed(rgb)
    hed[..., 0] *= h
    hed[..., 1] *= e
    return (np.clip(hed2rgb(hed), 0, 1) * 255 + 0.5).astype(np.uint8)


def main():
    out = pathlib.Path(sys.argv[1])
    data = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/kather2016")
    out.mkdir(parents=True, exist_ok=True)
    stainnorm, misc = tiatoolbox_stain_modules()

    source = np.asarray(Image.open(data / SOURCE).convert("RGB"))
    target = np.asarray(Image.open(data / TARGET).convert("RGB"))
    Image.fromarray(source).save(out / "source.png")
    Image.fromarray(target).save(out / "target.png")
    Image.fromarray(restain(source, H_FACTOR, E_FACTOR)).save(out / "restained.png")

    golden = {"files": {"source": SOURCE, "target": TARGET}, "restain": [H_FACTOR, E_FACTOR]}
    for name, img in [("source", source), ("target", target)]:
        m = stainnorm.MacenkoNormalizer()
        m.fit(img.copy())
        mask = misc.get_luminosity_tissue_mask(img.copy(), threshold=0.8)
        r = stainnorm.ReinhardNormalizer()
        r.fit(img.copy())
        golden[name] = {
            "macenko_stain_matrix": m.stain_matrix_target.tolist(),
            "macenko_max_concentrations": np.ravel(m.maxC_target).tolist(),
            "luminosity_tissue_pixels": int(mask.sum()),
            "reinhard_means": np.ravel(r.target_means).tolist(),
            "reinhard_stds": np.ravel(r.target_stds).tolist(),
        }

    m = stainnorm.MacenkoNormalizer()
    m.fit(target.copy())
    Image.fromarray(m.transform(source.copy())).save(out / "macenko.png")
    r = stainnorm.ReinhardNormalizer()
    r.fit(target.copy())
    Image.fromarray(r.transform(source.copy())).save(out / "reinhard.png")
    (out / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")


if __name__ == "__main__":
    main()
