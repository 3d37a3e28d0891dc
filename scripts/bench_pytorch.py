"""PyTorch side of scripts/bench-vs-pytorch.sh: the same measurement as
benches/models.rs (inference in eval mode; forward in train mode + backward), images/s.

usage: python bench_pytorch.py ARCH SIZE BATCH ITERS THREADS
SmallCnn is the peer's own definition (../shared/peers/wsinfer_model.py);
EfficientNet-Lite0 the parity fixtures' (scripts/make-mobilenet-golden.py), whose
names and shapes are the ImageNet checkpoint's.
"""
import importlib.util
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1].parent / "shared" / "peers"))
from wsinfer_model import SmallCnn  # noqa: E402

arch, size, batch, iters, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
if arch == "smallcnn":
    model = SmallCnn(num_classes=2)
elif arch == "efficientnet-lite0":
    spec = importlib.util.spec_from_file_location("golden", Path(__file__).with_name("make-mobilenet-golden.py"))
    golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(golden)
    model = golden.EfficientNetLite0(num_classes=2)
else:
    torchvision_name = {"mobilenetv2": "mobilenet_v2"}.get(arch, arch)
    model = getattr(torchvision.models, torchvision_name)(weights=None, num_classes=2)
x = torch.randn(batch, 3, size, size)
y = torch.zeros(batch, dtype=torch.long)


def timed(f):
    f()
    t = time.perf_counter()
    for _ in range(iters):
        f()
    return batch * iters / (time.perf_counter() - t)


model.eval()
with torch.inference_mode():
    infer = timed(lambda: model(x))
model.train()


def step():
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()


train = timed(step)
print(f"pytorch {arch} size={size} batch={batch} threads={threads} infer_img_s={infer:.1f} train_img_s={train:.1f}")
