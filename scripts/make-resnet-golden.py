#!/usr/bin/env python3
"""Seeded torchvision ResNets and their PyTorch logits, for histomap's parity tests.

Writes OUT/<arch>_150/model.safetensors (torchvision's state_dict names, 8 classes,
BatchNorm affine parameters and running statistics randomised so a name mix-up or a
train-mode BatchNorm shows; each residual branch's last BatchNorm scaled down so the
logits stay of order 1) and OUT/<arch>_150/io.safetensors (x: 4 fixed 150x150
inputs, y: the eval-mode logits). tests/golden.rs reads them with
HISTOMAP_PEER_MODELS=OUT cargo test --release --test golden -- --ignored

PyTorch runs in its own venv (e.g. the WSInfer peer's); it is never a dependency of
histomap. usage: python scripts/make-resnet-golden.py OUT [resnet50 ...]
"""

import sys
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file


def main() -> None:
    out = Path(sys.argv[1])
    archs = sys.argv[2:] or ["resnet50"]
    for arch in archs:
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(num_classes=8)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        # Small last-BatchNorm scales per residual branch keep 16 stacked bottlenecks
        # from growing the logits to ~1e3, where f32 rounding alone exceeds 1e-4.
        for m in model.modules():
            last = getattr(m, "bn3", None) or getattr(m, "bn2", None)
            if isinstance(m, (torchvision.models.resnet.BasicBlock, torchvision.models.resnet.Bottleneck)):
                last.weight.data.uniform_(0.05, 0.2)
        model.eval()
        x = torch.randn(4, 3, 150, 150, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            y = model(x)
        d = out / f"{arch}_150"
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(d / "model.safetensors"))
        save_file({"x": x.contiguous(), "y": y.contiguous()}, str(d / "io.safetensors"))
        print(f"{d}: {sum(v.numel() for v in state.values())} values, torch {torch.__version__}")


if __name__ == "__main__":
    main()
