#!/usr/bin/env python3
"""A histomap model folder as a WSInfer model folder, with the same weights: for running
histomap's shipped models in WSInfer (scripts/compare-wsinfer.sh MODEL_DIR SLIDE).

Writes OUT/torchscript_model.pt (torchvision's architecture with the folder's weights,
torch.jit.script), OUT/config.json (WSInfer's model config: classes, patch size, MPP,
the card's normalisation) and OUT/model.safetensors (a copy). Checks that the scripted
model loads the weights strictly and gives the eager model's logits.

torchvision names are histomap's for resnet18/34/50 and mobilenetv2 (and the peer's
SmallCnn for smallcnn), so the state dict loads as it is. PyTorch runs in the WSInfer
peer's venv; it is never a dependency of histomap.

usage: python scripts/export-wsinfer.py MODEL_DIR OUT
"""

import json
import shutil
import sys
import warnings
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1].parent / "shared" / "peers"))
from wsinfer_model import SmallCnn  # noqa: E402

BUILD = {
    "smallcnn": lambda k: SmallCnn(num_classes=k),
    "resnet18": lambda k: torchvision.models.resnet18(num_classes=k),
    "resnet34": lambda k: torchvision.models.resnet34(num_classes=k),
    "resnet50": lambda k: torchvision.models.resnet50(num_classes=k),
    "mobilenetv2": lambda k: torchvision.models.mobilenet_v2(num_classes=k),
}


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    card = json.loads((src / "card.json").read_text())
    arch, classes = card["architecture"], [c["name"] for c in card["classes"]]
    model = BUILD[arch](len(classes))
    state = load_file(str(src / "model.safetensors"))
    # histomap writes no num_batches_tracked; torchvision's buffers have it.
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    assert not missing and not unexpected, f"missing {missing}, unexpected {unexpected}"
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated but still works
        torch.jit.script(model).save(str(out / "torchscript_model.pt"))
    scripted = torch.jit.load(str(out / "torchscript_model.pt"), map_location="cpu").eval()
    x = torch.randn(2, 3, card["input_size"], card["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = (model(x) - scripted(x)).abs().max().item()
    assert diff < 1e-5, f"TorchScript differs from eager by {diff}"
    norm = card["normalization"]
    config = {
        "spec_version": "1.0",
        "architecture": arch,
        "num_classes": len(classes),
        "class_names": classes,
        "patch_size_pixels": card["input_size"],
        "spacing_um_px": card["mpp"],
        "transform": [
            {"name": "Resize", "arguments": {"size": card["input_size"]}},
            {"name": "ToTensor"},
            {"name": "Normalize", "arguments": {"mean": norm["mean"], "std": norm["std"]}},
        ],
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copy(src / "model.safetensors", out / "model.safetensors")
    print(f"{src} ({arch}, {len(classes)} classes) -> {out}")


if __name__ == "__main__":
    main()
