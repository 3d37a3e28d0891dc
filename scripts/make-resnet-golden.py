#!/usr/bin/env python3
"""Seeded torchvision ResNets and their PyTorch logits, for histomap's parity tests.

Writes OUT/<name>/model.safetensors (torchvision's state_dict names, 8 classes,
BatchNorm affine parameters and running statistics randomised so a name mix-up or a
train-mode BatchNorm shows; each residual branch's last BatchNorm scaled down so the
logits stay of order 1) and OUT/<name>/io.safetensors (x: fixed 150x150 inputs,
y: the eval-mode logits).

Full width (the default): <name> = <arch>_150, 4 inputs; tests/golden.rs reads them with
    HISTOMAP_PEER_MODELS=OUT cargo test --release --test golden -- --ignored
--width W: the same network with W stem channels instead of 64 (stages W, 2W, 4W, 8W),
built from torchvision's own blocks, _make_layer and forward, so every parameter name
and every operation is torchvision's; <name> = <arch>_w<W>, 2 inputs. Small enough to
ship: fixtures/resnet18_w8 and fixtures/resnet50_w8 come from
    python scripts/make-resnet-golden.py fixtures --width 8 resnet18 resnet50

PyTorch runs in its own venv (e.g. the WSInfer peer's); it is never a dependency of
histomap. usage: python scripts/make-resnet-golden.py OUT [--width W] [resnet50 ...]
"""

import argparse
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

DEPTHS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class NarrowResNet(ResNet):
    """torchvision's ResNet with `width` stem channels: ResNet.__init__ hard-codes 64."""

    def __init__(self, block, layers, width, num_classes):
        torch.nn.Module.__init__(self)
        self._norm_layer = torch.nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = torch.nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.relu = torch.nn.ReLU(inplace=True)
        self.maxpool = torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = torch.nn.AdaptiveAvgPool2d((1, 1))
        self.fc = torch.nn.Linear(8 * width * block.expansion, num_classes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("archs", nargs="*", help=f"any of {sorted(DEPTHS)} (default resnet50)")
    ap.add_argument("--width", type=int, default=64)
    args = ap.parse_intermixed_args()
    if unknown := set(args.archs) - set(DEPTHS):
        ap.error(f"unknown architecture {sorted(unknown)}; choose from {sorted(DEPTHS)}")
    for arch in args.archs or ["resnet50"]:
        torch.manual_seed(0)
        if args.width == 64:
            model, name, n = getattr(torchvision.models, arch)(num_classes=8), f"{arch}_150", 4
        else:
            block, layers = DEPTHS[arch]
            model = NarrowResNet(block, layers, args.width, num_classes=8)
            name, n = f"{arch}_w{args.width}", 2
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
            if isinstance(m, (BasicBlock, Bottleneck)):
                last.weight.data.uniform_(0.05, 0.2)
        # A narrow net's features are smaller; a larger head brings its logits to order
        # 1 as at full width, so that 1e-4 is as strict a bound.
        model.fc.weight.data *= 64 / args.width
        model.eval()
        x = torch.randn(n, 3, 150, 150, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            y = model(x)
        d = args.out / name
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(d / "model.safetensors"))
        save_file({"x": x.contiguous(), "y": y.contiguous()}, str(d / "io.safetensors"))
        print(f"{d}: {sum(v.numel() for v in state.values())} values, |y| max "
              f"{y.abs().max():.3f}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
