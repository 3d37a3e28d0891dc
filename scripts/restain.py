#!/usr/bin/env python3
"""Restain a slide by colour deconvolution, as another lab's H&E might look: for the
stain-normalisation bar (a restained copy must keep the classes of the original).

Reads IN at full resolution (any image vips reads; a whole-slide file through vips's
OpenSlide loader, level 0), converts every pixel to haematoxylin-eosin-DAB optical
densities with skimage's rgb2hed (Ruifrok & Johnston's matrix), multiplies H by --h
and E by --e, converts back with hed2rgb, and writes OUT as a tiled, pyramidal JPEG TIFF
(Q 90, 256 px tiles) with IN's microns per pixel (--mpp if IN records none). The same
restaining made fixtures/stain/restained.png (scripts/make-stain-golden.py).

Runs in the stain peer's venv (see make-stain-golden.py); needs numpy, scikit-image,
Pillow and the vips command. The whole image is held in memory: for slides up to a few
hundred megapixels.

usage: python scripts/restain.py IN OUT [--h 1.35] [--e 0.7] [--mpp MPP]
"""

import argparse
import pathlib
import subprocess
import tempfile

import numpy as np
from PIL import Image
from skimage.color import hed2rgb, rgb2hed

Image.MAX_IMAGE_PIXELS = None


def vips_mpp(path):
    out = subprocess.run(["vipsheader", "-f", "xres", str(path)], capture_output=True, text=True)
    xres = float(out.stdout.strip() or 0)  # pixels per mm
    return 1000.0 / xres if xres > 1.5 else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--h", type=float, default=1.35)
    ap.add_argument("--e", type=float, default=0.7)
    ap.add_argument("--mpp", type=float)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        # OpenSlide's loader gives RGBA: flatten that on white. (flatten takes the last
        # band of any image as alpha, so never on plain RGB.)
        bands = subprocess.run(["vipsheader", "-f", "bands", a.input], capture_output=True, text=True, check=True)
        op = ["flatten", a.input, str(tmp / "in.v"), "--background", "255"] if bands.stdout.strip() in ("2", "4") else ["copy", a.input, str(tmp / "in.v")]
        subprocess.run(["vips", *op], check=True)
        subprocess.run(["vips", "copy", str(tmp / "in.v"), str(tmp / "in.png")], check=True)
        mpp = a.mpp or vips_mpp(tmp / "in.v")
        if mpp is None:
            raise SystemExit(f"{a.input}: records no microns per pixel; give --mpp")
        rgb = np.asarray(Image.open(tmp / "in.png").convert("RGB"))
        out = np.empty_like(rgb)
        for y in range(0, rgb.shape[0], 512):  # in bands: rgb2hed works in float64
            hed = rgb2hed(rgb[y : y + 512])
            hed[..., 0] *= a.h
            hed[..., 1] *= a.e
            out[y : y + 512] = (np.clip(hed2rgb(hed), 0, 1) * 255 + 0.5).astype(np.uint8)
        Image.fromarray(out).save(tmp / "out.png")
        res = f"{1000.0 / mpp:.4f}"
        subprocess.run(["vips", "copy", str(tmp / "out.png"), str(tmp / "out.v"), "--xres", res, "--yres", res], check=True)
        subprocess.run(
            ["vips", "tiffsave", str(tmp / "out.v"), a.output, "--tile", "--pyramid", "--compression", "jpeg",
             "--Q", "90", "--tile-width", "256", "--tile-height", "256"],
            check=True,
        )
    print(f"{a.output}: H x{a.h}, E x{a.e}, {mpp:.4f} um/px")


if __name__ == "__main__":
    main()
