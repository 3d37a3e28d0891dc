#!/usr/bin/env python3
"""A seeded torchvision MobileNetV2, a seeded EfficientNet-Lite0 and PyTorch's depthwise
convolution, for histomap's parity tests.

Writes
  OUT/mobilenetv2_w25/model.safetensors: torchvision.models.mobilenet_v2(width_mult=0.25,
      num_classes=8), torch.manual_seed(0) weights (convolutions Kaiming fan-in, so
      activations are of order 1 in every layer and ReLU6 clips), every BatchNorm's
      affine parameters and running statistics randomised so a name mix-up or a
      train-mode BatchNorm shows;
      the last BatchNorm of each residual branch scaled down and the classifier scaled
      up so the logits are of order 1; torchvision's state_dict names without
      num_batches_tracked.
  OUT/mobilenetv2_w25/io.safetensors: x: 2 fixed 96x96 inputs; y: the eval-mode logits;
      y_train: the logits in train mode (BatchNorm on the batch's statistics), dropout
      off (its p set to 0), from the same weights (the running statistics that forward
      updates are not saved).
  OUT/efficientnet_lite0_w25/{model,io}.safetensors: the same for EfficientNet-Lite0
      (EfficientNetLite0 below: the ImageNet checkpoint's names, BatchNorm eps 1e-3,
      padding k // 2) with the blocks' channels at width 0.25 (stem 32, head 1280),
      8 classes, seeded and scaled as above. With --checkpoint PTH (the package's
      efficientnet-lite0-57934424.pth), the module at width 1.0 first loads it
      strictly (its 1000-class head included), so the names and shapes it gives
      histomap are the checkpoint's.
  OUT/depthwise/io.safetensors: torch.nn.functional.conv2d(x, w, stride=s,
      padding=k//2, groups=C), no bias, N=2, forward and backward for five cases
      (C, k, s, H, W below): case{i}.x (N,C,H,W), case{i}.w (C,1,k,k), case{i}.gy (a
      random upstream gradient of y's shape), case{i}.y, case{i}.dx, case{i}.dw (the
      gradients of sum(y * gy)). x, w and gy are float32; y, dx and dw are computed in
      float64 from those very values and rounded to float32 once, so they are exact to
      float32 rounding.

PyTorch runs in its own venv (e.g. the WSInfer peer's); it is never a dependency of
histomap. usage: python scripts/make-mobilenet-golden.py OUT [--only NAME] [--checkpoint PTH]
       (the fixtures: OUT=fixtures; NAME: mobilenet, efficientnet, depthwise)
"""

import argparse
import copy
import importlib.util
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.mobilenetv2 import InvertedResidual

# C, k, s, H, W
DEPTHWISE_CASES = [
    (5, 3, 1, 9, 9),
    (5, 3, 2, 9, 10),
    (4, 5, 1, 8, 8),
    (4, 5, 2, 11, 11),
    (16, 3, 2, 12, 12),
]


def randomise(model) -> None:
    """Seeded fan-in convolutions and randomised BatchNorms. torchvision's fan-out init
    gives a depthwise 3x3 kernel std sqrt(2 / (9 C)): its outputs would be ~1e-2, below
    the BatchNorm biases. Fan-in keeps every layer's activations of order 1 in eval mode
    too; random BatchNorm affine parameters and running statistics make a name mix-up or
    a train-mode BatchNorm show."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)


def write(d: Path, model) -> None:
    """The model's weights and its eval- and train-mode logits on 2 fixed inputs."""
    model.eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    with torch.no_grad():
        y = model(x)
        y_train = copy.deepcopy(model).train()(x)
    d.mkdir(parents=True, exist_ok=True)
    save_file(state, str(d / "model.safetensors"))
    save_file({"x": x.contiguous(), "y": y.contiguous(), "y_train": y_train.contiguous()},
              str(d / "io.safetensors"))
    print(f"{d}: {len(state)} tensors, {sum(v.numel() for v in state.values())} values, "
          f"|y| max {y.abs().max():.3f}, |y_train| max {y_train.abs().max():.3f}, "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}")


def mobilenet(out: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=8)
    randomise(model)
    # Small last-BatchNorm scales on the residual branches keep the 10 residual
    # blocks from growing the activations; the blocks without a shortcut keep theirs,
    # as they carry the whole signal.
    for m in model.modules():
        if isinstance(m, InvertedResidual) and m.use_res_connect:
            m.conv[-1].weight.data.uniform_(0.05, 0.2)
    # torchvision initialises the classifier with std 0.01; a larger one brings the
    # logits to order 1, so that 1e-4 is a strict bound.
    model.classifier[1].weight.data *= 3
    model.classifier[0].p = 0.0  # dropout off, for y_train
    write(out / "mobilenetv2_w25", model)


# EfficientNet-Lite0's stages and the channel rounding, as the weights' converter
# (standard library only) computes the checkpoint's layout from them.
_spec = importlib.util.spec_from_file_location(
    "convert_imagenet", Path(__file__).with_name("convert-imagenet.py"))
convert_imagenet = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_imagenet)
LITE0_STAGES, make_divisible = convert_imagenet.LITE0_STAGES, convert_imagenet.make_divisible


class LiteBlock(torch.nn.Module):
    def __init__(self, c_in, c_out, k, s, t):
        super().__init__()
        hidden, nn = c_in * t, torch.nn
        self.expand = t != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, k, s, k // 2, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=1e-3)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=1e-3)
        self.residual = s == 1 and c_in == c_out

    def forward(self, x):
        relu6 = torch.nn.functional.relu6
        y = relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self._bn2(self._project_conv(relu6(self._bn1(self._depthwise_conv(y)))))
        return y + x if self.residual else y


class EfficientNetLite0(torch.nn.Module):
    def __init__(self, width=1.0, num_classes=1000):
        super().__init__()
        nn = torch.nn
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks, c_in = [], 32
        for t, k, s, c, n in LITE0_STAGES:
            c_out = make_divisible(c * width)
            for i in range(n):
                blocks.append(LiteBlock(c_in, c_out, k, s if i == 0 else 1, t))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(c_in, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        relu6 = torch.nn.functional.relu6
        x = relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        x = relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def efficientnet(out: Path, checkpoint) -> None:
    if checkpoint:
        sd = torch.load(checkpoint, map_location="cpu")
        EfficientNetLite0().load_state_dict(sd, strict=True)
        print(f"{checkpoint}: loads strictly into EfficientNetLite0 (width 1.0)")
    torch.manual_seed(0)
    model = EfficientNetLite0(width=0.25, num_classes=8)
    randomise(model)
    for m in model.modules():
        if isinstance(m, LiteBlock) and m.residual:
            m._bn2.weight.data.uniform_(0.05, 0.2)
    model._fc.weight.data *= 0.3
    write(out / "efficientnet_lite0_w25", model)


def depthwise(out: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i, (c, k, s, h, w) in enumerate(DEPTHWISE_CASES):
        x = torch.randn(2, c, h, w, generator=g)
        wt = torch.randn(c, 1, k, k, generator=g)
        ho, wo = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
        gy = torch.randn(2, c, ho, wo, generator=g)
        x64 = x.double().requires_grad_()
        w64 = wt.double().requires_grad_()
        y64 = torch.nn.functional.conv2d(x64, w64, stride=s, padding=k // 2, groups=c)
        assert y64.shape == gy.shape, (y64.shape, gy.shape)
        (y64 * gy.double()).sum().backward()
        for name, t in [("x", x), ("w", wt), ("gy", gy), ("y", y64.detach()),
                        ("dx", x64.grad), ("dw", w64.grad)]:
            tensors[f"case{i}.{name}"] = t.float().contiguous()
        print(f"depthwise case{i}: C={c} k={k} s={s} {h}x{w} -> {ho}x{wo}")
    d = out / "depthwise"
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "io.safetensors"))
    print(f"{d}: {len(tensors)} tensors, torch {torch.__version__}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--only", choices=["mobilenet", "efficientnet", "depthwise"])
    ap.add_argument("--checkpoint", help="EfficientNet-Lite0's ImageNet .pth, to check the names")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the same sums in the same order on every machine
    if args.only in (None, "mobilenet"):
        mobilenet(args.out)
    if args.only in (None, "efficientnet"):
        efficientnet(args.out, args.checkpoint)
    if args.only in (None, "depthwise"):
        depthwise(args.out)


if __name__ == "__main__":
    main()
