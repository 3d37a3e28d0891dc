#!/usr/bin/env bash
# Takes histomap's CUDA build (`scripts/setup.sh --cuda`) to the project's GPU machine and
# measures it there (issue #23). That machine (an H200 with 16 cores; see
# /work/.library/device/) reaches no network, has no Debian packages (no OpenSlide, no
# vips), runs commands as root and takes along at most 64 MiB of working tree: tracked
# files + untracked files + the ignored paths named in `carry`. Hence three modes:
#
#   --pack     (here) writes gpu-pack/ (git-ignored; carry it): the CUDA binary stripped,
#              the shared libraries it needs, the real SVS, a PCam subset and the two
#              tissue islands scripts/make-gpu-slide.py builds the gigapixel pyramid from;
#              prints each part's size and fails if the working tree would not fit.
#   --dry-run  (here, on a CPU machine) --pack, then unpacks into a temp dir and checks,
#              with the unpacked binary and libraries alone, everything short of the GPU;
#              ends with a rehearsal of --run on the CPU. OK/FAIL per check.
#   --run      (GPU machine, from the repo root, gpu-pack carried) unpacks and measures:
#              CUDA vs CPU parity, inference images/s, the 100,000 x 80,000 pyramid end
#              to end with 4/8/16 reader threads, ResNet-18 training (2 epochs: the
#              first also compiles kernels). Writes gpu-check.{json,md,log} under $OUT
#              (else /tmp/gpu-check/results). Meant to take 4-6 minutes on an H200: no
#              step starts after RUN_BUDGET_S and every command ends by RUN_HARD_S.
#
# usage: scripts/gpu-check.sh --pack | --dry-run | --run
#   device tool: run(command="bash scripts/gpu-check.sh --run", carry=["gpu-pack"],
#   timeout_s=600)
# environment:
#   HISTOMAP_CUDA_BIN  the CUDA build (default target/cuda/release/histomap)
#   HISTOMAP_DATA      the shared data (default ../shared/data)
#   PCAM_TRAIN, PCAM_VALID  PCam tiles packed (default 3000 and 1000, half per class)
#   GPU_VENV           --dry-run's Python (default /tmp/gpu-venv, made when missing)
#   RUN_BUDGET_S       --run skips what would start after this many seconds (default 450)
#   RUN_HARD_S         --run kills any command still running at this second (default 570)
#   PYTHON             --run's Python with numpy, tifffile, Pillow (default python3)
#   GPU_CHECK_WORK     --run's scratch folder (default /tmp/gpu-check, emptied first)
#
# cuBLAS and cuRAND: the binary links libcublas.so.11 (95 MB, and through it
# libcublasLt.so.11, 575 MB) and libcurand.so.10 (101 MB), far beyond 64 MiB even
# compressed, so they are not packed. The GPU machine has CUDA 13 (nvcc 13, PyTorch's
# nvidia-* wheels): libcurand.so.10 there is the same soname and symbol version, and
# --run rewrites the binary's "libcublas.so.11" (its NEEDED entry and the symbol version
# it requires; a same-length string and its ELF hash) to the cuBLAS major found there.
# The five cuBLAS functions histomap calls (cublasCreate_v2, cublasDestroy_v2,
# cublasSetStream_v2, cublasGemmStridedBatchedEx, cublasDgemmStridedBatched) have kept
# their signatures from 11 to 13. libcudart.so.11.0 is packed (0.65 MiB); libcuda.so.1
# is the driver's own.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
pack=$root/gpu-pack
data=${HISTOMAP_DATA:-$root/../shared/data}
bin_src=${HISTOMAP_CUDA_BIN:-$root/target/cuda/release/histomap}
pcam_train=${PCAM_TRAIN:-3000}
pcam_valid=${PCAM_VALID:-1000}
venv=${GPU_VENV:-/tmp/gpu-venv}
limit_mib=64 margin_mib=2
# glibc's own libraries come from the host; so do the driver's and the CUDA 13 ones.
skip_libs='^(linux-vdso\.so|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|ld-linux|libcuda\.so\.1$)'
host_libs='^(libcublas\.so|libcublasLt\.so|libcurand\.so)'

die() { echo "gpu-check: $*" >&2; exit 1; }
cleanup=()
trap 'rm -rf "${cleanup[@]}"' EXIT
mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
size_of() { stat -c %s "$1"; }

# The Python helpers, standard library only (python3 there is PyTorch's 3.12; here any).
write_helpers() {
  cat >"$1" <<'PY'
import csv, json, os, shutil, struct, subprocess, sys


def pcam_subset(src, dst, n_train, n_valid):
    """First tiles of each split and label, no two with the same bytes (PCam has 975
    duplicates): n/2 per class, paths and labels.csv as in the shared data."""
    want = {"train": int(n_train) // 2, "valid": int(n_valid) // 2}
    rows, seen, got = [], set(), {}
    with open(os.path.join(src, "labels.csv"), newline="") as f:
        r = csv.DictReader(f)
        header = r.fieldnames
        for row in r:
            key = (row["split"], row["label"])
            if row["split"] not in want or got.get(key, 0) >= want[row["split"]]:
                continue
            if row["sha256"] in seen:
                continue
            seen.add(row["sha256"])
            got[key] = got.get(key, 0) + 1
            rows.append(row)
    for row in rows:
        out = os.path.join(dst, row["path"])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copyfile(os.path.join(src, row["path"]), out)
    with open(os.path.join(dst, "labels.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    print(" ".join(f"{s}/{l}={n}" for (s, l), n in sorted(got.items())))


def manifest(src, dst, split, n):
    """The first n rows of one split of labels.csv, half per label, paths made absolute."""
    base = os.path.dirname(os.path.abspath(src))
    with open(src, newline="") as f:
        r = csv.DictReader(f)
        header, per, rows = r.fieldnames, {}, []
        for row in r:
            if row["split"] == split and per.get(row["label"], 0) < int(n) // 2:
                per[row["label"]] = per.get(row["label"], 0) + 1
                row["path"] = os.path.join(base, row["path"])
                rows.append(row)
    with open(dst, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)


def tree_size(root):
    """Bytes of what the device tool sends: tracked files, then untracked unignored."""
    def total(args):
        out = subprocess.run(["git", "-C", root, "ls-files", "-z"] + args,
                             capture_output=True, check=True).stdout
        n = 0
        for p in filter(None, out.split(b"\0")):
            try:
                n += os.lstat(os.path.join(root, p.decode())).st_size
            except FileNotFoundError:
                pass
        return n
    print(total(["--cached"]), total(["--others", "--exclude-standard"]))


def elf_hash(name):
    h = 0
    for c in name:
        h = ((h << 4) + c) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xFFFFFFFF
    return h


def patch_cublas(src, dst, major):
    """Rewrites the soname libcublas.so.11 the binary needs (NEEDED entry, verneed file
    and version name share .dynstr) to libcublas.so.MAJOR, and the version's ELF hash."""
    old, new = b"libcublas.so.11", b"libcublas.so.%d" % int(major)
    if len(old) != len(new):
        sys.exit(f"gpu-check: cuBLAS major {major}: the name must keep its length")
    d = bytearray(open(src, "rb").read())
    if d[:4] != b"\x7fELF" or d[4] != 2 or d[5] != 1:
        sys.exit(f"gpu-check: {src}: not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", d, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", d, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", d, shoff + i * shentsize) for i in range(shnum)]
    def cstr(off):
        return bytes(d[off:d.index(0, off)])
    names = {cstr(secs[shstrndx][4] + s[0]): s for s in secs}
    if b".dynstr" not in names or b".gnu.version_r" not in names:
        sys.exit(f"gpu-check: {src}: no .dynstr or .gnu.version_r section")
    ds = names[b".dynstr"]
    start, end = ds[4], ds[4] + ds[5]
    hits, i = 0, start
    while True:
        i = d.find(old + b"\0", i, end)
        if i < 0:
            break
        if i == start or d[i - 1] == 0:
            d[i:i + len(old)] = new
            hits += 1
        i += len(old)
    vr = names[b".gnu.version_r"]
    off, fixed = vr[4], 0
    for _ in range(vr[7]):
        _, cnt, _, aux, nxt = struct.unpack_from("<HHIII", d, off)
        a = off + aux
        for _ in range(cnt):
            _, flags, other, name, anext = struct.unpack_from("<IHHII", d, a)
            if cstr(start + name) == new:
                struct.pack_into("<I", d, a, elf_hash(new))
                fixed += 1
            a += anext
        off += nxt
    if d.find(old + b"\0", start, end) >= 0 or (hits == 0 and d.find(new + b"\0", start, end) < 0):
        sys.exit(f"gpu-check: {src}: could not rewrite {old.decode()}")
    with open(dst, "wb") as f:
        f.write(d)
    os.chmod(dst, 0o755)
    print(f"{old.decode()} -> {new.decode()}: {hits} string(s), {fixed} version hash(es)")


def get(path, *keys):
    """Values at dotted keys of a JSON file, space-separated."""
    j = json.load(open(path))
    out = []
    for k in keys:
        v = j
        for part in k.split("."):
            v = v[int(part)] if isinstance(v, list) else v[part]
        out.append(f"{v:.4f}" if isinstance(v, float) else str(v))
    print(" ".join(out))


def compare(a, b, tol, out_json):
    """Parity of two predictions.csv (evaluate's: by path; heatmap's: by x,y): the
    largest |dp| over every class probability, and how many argmaxes differ."""
    def load(p):
        with open(p, newline="") as f:
            r = csv.DictReader(f)
            cols = [c for c in r.fieldnames if c.startswith("prob_")]
            key = ["path"] if "path" in r.fieldnames else ["x", "y"]
            return {tuple(row[k] for k in key): [float(row[c]) for c in cols]
                    for row in r if row.get("status", "ok") == "ok"}
    pa, pb = load(a), load(b)
    if set(pa) != set(pb):
        json.dump({"n": len(pa), "n_other": len(pb), "error": "different rows", "pass": False}, open(out_json, "w"))
        print(f"FAIL: {len(pa)} vs {len(pb)} rows, or different ones")
        return
    dmax, flips, tie = 0.0, 0, 0.0
    for k, p in pa.items():
        q = pb[k]
        dmax = max(dmax, max(abs(x - y) for x, y in zip(p, q)))
        if p.index(max(p)) != q.index(max(q)):
            flips += 1
            s = sorted(p, reverse=True)
            tie = max(tie, s[0] - s[1])
    ok = len(pa) > 0 and dmax <= float(tol) and flips == 0
    json.dump({"n": len(pa), "max_dp": dmax, "argmax_diff": flips,
               "largest_margin_flipped": tie, "pass": ok}, open(out_json, "w"))
    print(f"{'PASS' if ok else 'FAIL'}: {len(pa)} predictions, max |dp| {dmax:.2e} (<= {float(tol):g}), "
          f"argmax differs on {flips}" + (f" (largest margin among them {tie:.2e})" if flips else ""))


def islands(pred, islands_txt):
    """Every classified patch of a heatmap on the generated slide lies on an island, and
    each island has some."""
    isl = {}
    for line in open(islands_txt):
        f = line.split()
        if f and f[0] == "island":
            isl[f[1]] = tuple(map(int, f[2:6]))
    hits, off = {n: 0 for n in isl}, 0
    for row in csv.DictReader(open(pred, newline="")):
        x, y, w, h = (int(row[k]) for k in "xywh")
        on = [n for n, (ix, iy, iw, ih) in isl.items()
              if x < ix + iw and ix < x + w and y < iy + ih and iy < y + h]
        for n in on:
            hits[n] += 1
        off += not on
    ok = bool(isl) and off == 0 and all(hits.values())
    print(("ok " if ok else "bad ") + " ".join(f"{n}={c}" for n, c in hits.items()) + f" elsewhere={off}")
    sys.exit(0 if ok else 1)


def train_rate(history, tiles, batch):
    """Per epoch: seconds and training images/s (the full batches one epoch runs)."""
    used = (int(tiles) // max(int(batch), 2)) * int(batch)
    for row in csv.DictReader(open(history, newline="")):
        s = float(row["seconds"])
        print(json.dumps({"epoch": int(row["epoch"]), "seconds": s, "images": used,
                          "img_s": used / s if s else None, "train_loss": float(row["train_loss"])}))


def record(path, step, *pairs):
    """Appends one result to a JSON-lines file: key=value pairs (numbers kept as
    numbers), or a JSON object after '@'."""
    rec = {"step": step}
    for p in pairs:
        if p.startswith("@"):
            rec.update(json.loads(p[1:]))
            continue
        k, v = p.split("=", 1)
        try:
            rec[k] = int(v)
        except ValueError:
            try:
                rec[k] = float(v)
            except ValueError:
                rec[k] = v
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def report(results, out_dir):
    recs = [json.loads(l) for l in open(results) if l.strip()]
    by = {}
    for r in recs:
        by.setdefault(r["step"], []).append(r)
    json.dump(by, open(os.path.join(out_dir, "gpu-check.json"), "w"), indent=1)
    md = ["# histomap gpu-check", ""]
    for r in by.get("env", []):
        md += [f"- {k}: {v}" for k, v in r.items() if k != "step"]
    def table(title, step, cols, note=""):
        rows = by.get(step, [])
        if not rows:
            return
        md.extend(["", f"## {title}", ""] + ([note, ""] if note else []))
        md.append("| " + " | ".join(cols) + " |")
        md.append("|" + "---|" * len(cols))
        for r in rows:
            cells = []
            for c in cols:
                v = r.get(c, "")
                cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
            md.append("| " + " | ".join(cells) + " |")
    table("CUDA vs CPU (f32) parity", "parity",
          ["model", "input", "n", "max_dp", "argmax_diff", "pass"],
          "max |dp| over every class probability; PASS: <= 1e-3 and no argmax differs.")
    table("Inference", "infer",
          ["model", "batch", "stride", "patches", "classify_s", "img_s", "wall_s", "wall_img_s"],
          "heatmap on the real SVS at a small stride; img_s = patches / stream.classify_s "
          "(host-to-GPU copy, forward, softmax, copy back), wall_img_s = patches / stream.wall_s.")
    table("Generated pyramid", "make-slide", ["width", "height", "seconds", "mib"])
    table("Gigapixel heatmap end to end", "slide",
          ["run", "threads", "batch", "stride", "patches", "open_s", "mask_s", "stream_s",
           "classify_s", "waiting_s", "gpu_busy", "write_s", "total_s"],
          "waiting_s = stream wall - classify: the classifier waiting for readers; "
          "gpu_busy = classify_s / stream wall.")
    table("Training (ResNet-18, PCam 96 px, no validation)", "train",
          ["epoch", "images", "seconds", "img_s", "train_loss"])
    fails = by.get("fail", [])
    md += ["", "## Failures", ""] + ([f"- {f['what']}" for f in fails] or ["none"])
    open(os.path.join(out_dir, "gpu-check.md"), "w").write("\n".join(md) + "\n")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"pcam-subset": pcam_subset, "manifest": manifest, "tree-size": tree_size,
     "patch-cublas": patch_cublas, "get": get, "compare": compare, "islands": islands,
     "train-rate": train_rate, "record": record, "report": report}[cmd](*args)
PY
}

# ---------------------------------------------------------------- --pack
do_pack() {
  local t0=$SECONDS
  [[ -x $bin_src ]] || die "no CUDA build at $bin_src: make one with scripts/setup.sh --cuda"
  ldd "$bin_src" | grep -q 'libcuda\.so\.1' ||
    die "$bin_src does not link libcuda.so.1: not a --features cuda build"
  for tool in strip ldd xz tar vips git python3; do
    command -v "$tool" >/dev/null || die "--pack needs $tool"
  done
  [[ -f $data/slides/cmu_small_region.svs && -f $data/pcam/labels.csv ]] ||
    die "no shared data at $data (set HISTOMAP_DATA)"
  # The pack is carried, so it must be ignored; unignored it would travel twice.
  git check-ignore -q gpu-pack || die "gpu-pack/ is not git-ignored: add /gpu-pack to .gitignore"
  local stage
  stage=$(mktemp -d)
  cleanup+=("$stage")
  rm -rf "$pack"
  mkdir -p "$pack" "$stage/lib" "$stage/data/pcam"
  write_helpers "$stage/helpers.py"

  # The binary: stripped (174 MB -> 61 MiB, mostly candle's PTX text, which xz packs well).
  strip --strip-all -o "$stage/histomap" "$bin_src"
  xz -T2 -9 -c "$stage/histomap" >"$pack/histomap.xz"

  # Its libraries, by soname, as ldd finds them here.
  local name path n_libs=0 hosted=()
  while read -r name path; do
    [[ $name =~ $skip_libs ]] && continue
    if [[ $name =~ $host_libs ]]; then hosted+=("$name"); continue; fi
    [[ $path == /* ]] || die "ldd: $name not found for $bin_src"
    cp -L "$path" "$stage/lib/$name"
    n_libs=$((n_libs + 1))
  done < <(ldd "$stage/histomap" | awk '$2 == "=>" { print $1, $3 }') # the loader and vdso have no "=>"
  tar -C "$stage/lib" -cf - . | xz -T2 -9 >"$pack/libs.tar.xz"

  # Data: the real SVS, the islands for make-gpu-slide.py (flattened onto white as
  # make-slides.sh does; JPEG Q85 as gigapixel.tif's tiles) and a PCam subset.
  cp "$data/slides/cmu_small_region.svs" "$stage/data/"
  vips flatten "$data/slides/cmu_small_region.svs" "$stage/cmu.v" --background 255
  vips jpegsave "$stage/cmu.v" "$stage/data/cmu.jpg" --Q 85
  local all tiles=() i
  mapfile -t all < <(find "$data/kather2016" -name '*.tif' | LC_ALL=C sort)
  for ((i = 0; i < 400; i++)); do tiles+=("${all[$(((i * 37) % ${#all[@]}))]}"); done
  vips arrayjoin "${tiles[*]}" "$stage/kather.v" --across 20 # 3000 x 3000, as make-slides.sh
  vips jpegsave "$stage/kather.v" "$stage/data/kather.jpg" --Q 85
  local counts
  counts=$(python3 "$stage/helpers.py" pcam-subset "$data/pcam" "$stage/data/pcam" "$pcam_train" "$pcam_valid")
  tar -C "$stage/data" -cf - . | xz -T2 -6 >"$pack/data.tar.xz"

  {
    echo "histomap gpu-pack, made $(date -u +%FT%TZ) by scripts/gpu-check.sh --pack"
    echo "binary: $bin_src sha256 $(sha256sum "$bin_src" | cut -c1-16) ($("$bin_src" --version))"
    echo "libraries packed: $n_libs; from the GPU machine's CUDA: ${hosted[*]} libcuda.so.1"
    echo "pcam: $counts (deduplicated by sha256)"
  } >"$pack/MANIFEST"

  local sizes tracked untracked total=0 part b
  sizes=$(python3 "$stage/helpers.py" tree-size "$root")
  read -r tracked untracked <<<"$sizes"
  echo "gpu-pack/ (made in $((SECONDS - t0)) s):"
  for part in histomap.xz libs.tar.xz data.tar.xz MANIFEST; do
    b=$(size_of "$pack/$part")
    total=$((total + b))
    printf '  %-13s %12d B  %s\n' "$part" "$b" "$(mib "$b")"
  done
  printf '  %-13s %12d B  %s   (raw: binary %s, %d libraries %s)\n' "pack total" "$total" "$(mib $total)" \
    "$(mib "$(size_of "$stage/histomap")")" "$n_libs" "$(mib "$(du -sb "$stage/lib" | cut -f1)")"
  echo "  contents: pcam $counts; cmu_small_region.svs, cmu.jpg, kather.jpg"
  printf '  %-13s %12d B  %s\n' "tracked" "$tracked" "$(mib "$tracked")"
  printf '  %-13s %12d B  %s\n' "untracked" "$untracked" "$(mib "$untracked")"
  local all_b=$((total + tracked + untracked)) cap=$(((limit_mib - margin_mib) * 1048576))
  printf '  %-13s %12d B  %s of %d MiB (limit less a %d MiB margin: %s)\n' "travels" "$all_b" \
    "$(mib $all_b)" "$limit_mib" "$margin_mib" "$(mib $cap)"
  if ((all_b > cap)); then
    echo "gpu-check: FAIL: $(mib $all_b) would travel, over $(mib $cap); pack fewer tiles (PCAM_TRAIN, PCAM_VALID)" >&2
    return 1
  fi
}

# ---------------------------------------------------------------- unpacking
# Unpacks gpu-pack into $1: bin/histomap, lib/, data/, helpers.py.
unpack() {
  local w=$1
  [[ -f $pack/histomap.xz ]] || die "no $pack/histomap.xz: run scripts/gpu-check.sh --pack here and carry gpu-pack"
  mkdir -p "$w/bin" "$w/lib" "$w/data"
  write_helpers "$w/helpers.py"
  if command -v xz >/dev/null; then
    xz -dc "$pack/histomap.xz" >"$w/bin/histomap"
    xz -dc "$pack/libs.tar.xz" | tar -C "$w/lib" -xf -
    xz -dc "$pack/data.tar.xz" | tar -C "$w/data" -xf -
  else # Python's lzma, where no xz is installed
    python3 - "$pack" "$w" <<'PY'
import lzma, shutil, sys, tarfile
p, w = sys.argv[1:]
with lzma.open(f"{p}/histomap.xz") as s, open(f"{w}/bin/histomap", "wb") as d:
    shutil.copyfileobj(s, d)
for part, dest in (("libs", "lib"), ("data", "data")):
    with tarfile.open(f"{p}/{part}.tar.xz") as t:
        t.extractall(f"{w}/{dest}")
PY
  fi
  chmod +x "$w/bin/histomap"
}

# The directory of the newest libcublas.so.N (N >= 12) and libcurand.so.10 there:
# PyTorch's nvidia-* wheels, a CUDA toolkit, or the loader's cache. Makes $1/hostcuda
# with links to them and prints the cuBLAS major; nothing when none is found.
host_cuda() {
  local w=$1 py=$2 dirs=() d blas="" rand="" major
  mapfile -t dirs < <("$py" -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null || true)
  for d in "${dirs[@]}"; do [[ -d $d/nvidia ]] && dirs+=("$d"/nvidia/*/lib); done
  dirs+=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-*/lib64 /usr/lib/x86_64-linux-gnu)
  for d in "${dirs[@]}"; do
    [[ -d $d ]] || continue
    for f in "$d"/libcublas.so.1[2-9]; do
      [[ -e $f && -e $d/libcublasLt.so.${f##*.so.} ]] || continue
      [[ -z $blas || ${f##*.so.} -gt ${blas##*.so.} ]] && blas=$f
    done
    [[ -z $rand && -e $d/libcurand.so.10 ]] && rand=$d/libcurand.so.10
  done
  [[ -n $blas && -n $rand ]] || return 0
  major=${blas##*.so.}
  mkdir -p "$w/hostcuda"
  ln -sf "$blas" "$w/hostcuda/libcublas.so.$major"
  ln -sf "$(dirname "$blas")/libcublasLt.so.$major" "$w/hostcuda/libcublasLt.so.$major"
  ln -sf "$rand" "$w/hostcuda/libcurand.so.10"
  echo "$major"
}

# ---------------------------------------------------------------- --run
do_run() {
  # Steps start until `budget` seconds; every command is killed by `hard` seconds, so the
  # whole stays inside the device tool's 600 s per command.
  local rehearsal=${GPU_CHECK_REHEARSAL:-} w res budget=${RUN_BUDGET_S:-450} hard=${RUN_HARD_S:-570} t0=$SECONDS
  w=${GPU_CHECK_WORK:-/tmp/gpu-check}
  res=${OUT:-$w/results}
  rm -rf "$w"
  mkdir -p "$w" "$res"
  # Everything printed also goes to $OUT, which comes back even if the command is killed.
  exec 3>&1 4>&2 > >(tee -a "$res/gpu-check.log") 2>&1
  local tee_pid=$!
  echo "gpu-check --run${rehearsal:+ (rehearsal on the CPU)}: $(date -u +%FT%TZ), $(nproc) cores"
  local py=${PYTHON:-python3}
  unpack "$w"
  local H=$w/helpers.py R=$res/results.jsonl fails=0
  : >"$R"
  fail() { echo "FAIL: $*"; python3 "$H" record "$R" fail "what=$*"; fails=$((fails + 1)); }
  left() { (((SECONDS - t0) < budget)) || { echo "SKIP $1: past the ${budget} s budget"; fail "skipped $1 (time)"; return 1; }; }
  cap() { # SECONDS: at most that, and no later than `hard`
    local rem=$((hard - (SECONDS - t0)))
    echo $(($1 < rem ? $1 : (rem > 1 ? rem : 1)))
  }

  # Settings: the GPU run, or (rehearsal, from --dry-run) the same steps on the CPU, small.
  local dev=cuda threads_list="4 8 16" big_w=100000 big_h=80000 eval_n=1000 train_arch=resnet18 train_n=0
  local -A stride=([pcam]=4 [resnet18_150]=8 [resnet50_150]=12)
  local svs_stride_resnet="" sweep_stride=16 epochs=2
  if [[ -n $rehearsal ]]; then
    dev=cpu threads_list="1 2" big_w=20000 big_h=16000 eval_n=16 train_n=64 epochs=1
    stride=([pcam]=96 [resnet18_150]=600 [resnet50_150]=600)
    svs_stride_resnet=600 sweep_stride=96
    dev=${GPU_CHECK_DEVICE:-cpu} # cuda: rehearse a GPU that does not run
  else
    command -v nvidia-smi >/dev/null || die "no nvidia-smi: not the GPU machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader ||
      die "nvidia-smi found no GPU"
    python3 "$H" record "$R" env "gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
  fi
  # PTX (built for compute_80) is compiled by the driver on first use: keep that cache.
  export CUDA_CACHE_PATH=$w/nv-cache CUDA_CACHE_MAXSIZE=4294967296 CUDA_MODULE_LOADING=LAZY

  local major libpath
  major=$(host_cuda "$w" "$py")
  [[ -n $major ]] || die "no libcublas.so.12+ with libcurand.so.10 found (PyTorch's nvidia wheels, /usr/local/cuda)"
  python3 "$H" patch-cublas "$w/bin/histomap" "$w/bin/histomap" "$major"
  libpath=$w/lib:$w/hostcuda${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  hm() { LD_LIBRARY_PATH=$libpath "$w/bin/histomap" "$@"; }
  hmt() { # SECONDS ARGS...: histomap with a time limit, so no step eats the others' time
    local s=$1
    shift
    timeout "$(cap "$s")" env LD_LIBRARY_PATH="$libpath" "$w/bin/histomap" "$@"
  }
  finish() {
    python3 "$H" report "$R" "$res"
    rm -f "$R"
    echo "== $((SECONDS - t0)) s; $fails failure(s); summary in $res/gpu-check.md"
    exec 1>&3 2>&4 # lets tee finish the log before we exit
    wait "$tee_pid" 2>/dev/null || true
    exit $((fails > 0))
  }
  hm --version >/dev/null 2>"$w/start.err" || die "the unpacked binary does not start: $(head -n 2 "$w/start.err" | tr '\n' ' ')"
  echo "histomap: $(hm --version); cuBLAS $major from $(readlink "$w/hostcuda/libcublas.so.$major")"
  python3 "$H" record "$R" env "histomap=$(hm --version)" "cublas=$(readlink "$w/hostcuda/libcublas.so.$major")" "cores=$(nproc)"

  local D=$w/data svs=$w/data/cmu_small_region.svs models=$w/models
  mkdir -p "$models"
  python3 "$H" manifest "$D/pcam/labels.csv" "$w/valid.csv" valid "$eval_n"
  # Full-width ResNets at 150 px, 2 classes: random weights (init-model), which is all
  # parity and speed need; the golden ResNet fixtures are 8 channels wide, which the
  # CLI does not load.
  cat >"$w/pipe150.toml" <<'TOML'
name = "gpu-check-150"
[patch]
size = 150
stride = 150
mpp = 0.495
[model]
path = "models/resnet18_150"
batch_size = 64
[normalization]
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
[[classes]]
name = "normal"
color = "#3cb44b"
[[classes]]
name = "tumor"
color = "#e6194b"
TOML
  for arch in resnet18 resnet50; do
    hm init-model --pipeline "$w/pipe150.toml" --arch "$arch" --out "$models/${arch}_150" 2>"$w/init.log" ||
      die "init-model $arch: $(tail -n 1 "$w/init.log")"
  done
  cp -r "$root/fixtures/smallcnn96" "$models/smallcnn96"
  cp -r "$root/models/pcam" "$models/pcam"

  # 1. Parity: each model on the packed PCam valid tiles (evaluate) and on the real SVS
  #    (heatmap), on the GPU and on the CPU in f32.
  echo "== parity: --device $dev vs --device cpu --precision f32 (max |dp| <= 1e-3, same argmax)"
  local m kind side d out line extra a b
  for m in smallcnn96 pcam resnet18_150 resnet50_150; do
    left "parity $m" || break
    extra=()
    [[ $m == resnet* && -n $svs_stride_resnet ]] && extra=(--stride "$svs_stride_resnet")
    for side in gpu cpu; do
      d=$dev
      [[ $side == cpu ]] && d=cpu
      out=$w/parity/$m-$side
      mkdir -p "$out"
      hmt 240 evaluate --model "$models/$m" --data "$w/valid.csv" --device "$d" --precision f32 \
        --out "$out/eval" --quiet >"$out/eval.log" 2>&1 || true
      hmt 240 heatmap "$svs" --model "$models/$m" "${extra[@]}" --device "$d" --precision f32 \
        --out "$out/svs" --quiet --force >"$out/svs.log" 2>&1 || true
    done
    for kind in eval svs; do
      a=$w/parity/$m-gpu/$kind b=$w/parity/$m-cpu/$kind
      [[ $kind == svs ]] && a=$a/cmu_small_region b=$b/cmu_small_region
      if [[ ! -f $a/predictions.csv || ! -f $b/predictions.csv ]]; then
        side=gpu
        [[ -f $a/predictions.csv ]] && side=cpu
        fail "parity $m $kind, $side side: $(grep . "$w/parity/$m-$side/$kind.log" | tail -n 2 | tr '\n' ' ')"
        if [[ $m == smallcnn96 && ! -f $a/predictions.csv ]]; then
          echo "--device $dev does not run: nothing more to measure"
          finish
        fi
        continue
      fi
      line=$(python3 "$H" compare "$a/predictions.csv" "$b/predictions.csv" 1e-3 "$w/cmp.json")
      python3 "$H" record "$R" parity "model=$m" "input=$([[ $kind == eval ]] && echo pcam-valid || echo svs)" "@$(cat "$w/cmp.json")"
      printf '  %-13s %-4s %s\n' "$m" "$kind" "$line"
      [[ $line == PASS* ]] || fail "parity $m $kind"
    done
  done

  # 2. Inference images/s: heatmap on the real SVS at a small stride (many overlapping
  #    patches); stream.classify_s is the classifier's own time per batch, which is
  #    what `evaluate` cannot report.
  echo "== inference images/s on --device $dev (heatmap on the real SVS, small stride)"
  local b s o
  mkdir -p "$w/infer"
  for m in pcam resnet18_150 resnet50_150; do
    for b in 64 256; do
      left "inference $m $b" || break 2
      s=${stride[$m]} o=$w/infer/$m-$b
      if hmt 180 heatmap "$svs" \
        --model "$models/$m" --device "$dev" --precision f32 --batch-size "$b" --stride "$s" \
        --out "$o" --quiet --force >"$o.log" 2>&1; then
        read -r np cs ws < <(python3 "$H" get "$o/cmu_small_region/summary.json" stream.patches stream.classify_s stream.wall_s)
        python3 "$H" record "$R" infer "model=$m" "batch=$b" "stride=$s" "patches=$np" "classify_s=$cs" \
          "img_s=$(awk -v n="$np" -v t="$cs" 'BEGIN { printf "%.1f", n / t }')" "wall_s=$ws" \
          "wall_img_s=$(awk -v n="$np" -v t="$ws" 'BEGIN { printf "%.1f", n / t }')"
        printf '  %-13s batch %3d stride %3d: %6d patches, classify %7.2f s = %8.1f img/s (wall %6.2f s = %8.1f img/s)\n' \
          "$m" "$b" "$s" "$np" "$cs" "$(awk -v n="$np" -v t="$cs" 'BEGIN { print n / t }')" "$ws" \
          "$(awk -v n="$np" -v t="$ws" 'BEGIN { print n / t }')"
      else
        fail "inference $m batch $b: $(tail -n 2 "$o.log" | tr '\n' ' ')"
      fi
    done
  done

  # 3. The 100,000 x 80,000 pyramid, made here (it cannot travel), then heatmap end to
  #    end: once as shipped (pcam pipeline, its stride and batch, all cores), then at a
  #    small stride and batch 256 with 4, 8, 16 reader threads: does reading feed the GPU?
  echo "== gigapixel pyramid ${big_w} x ${big_h}: make, then heatmap --device $dev"
  local big=$w/slides/gigapixel.tif t
  mkdir -p "$w/slides"
  if ! left "make-gpu-slide"; then
    :
  elif t=$SECONDS && timeout "$(cap 120)" "$py" "$root/scripts/make-gpu-slide.py" "$big" \
    --width "$big_w" --height "$big_h" --cmu "$D/cmu.jpg" --kather "$D/kather.jpg" | tee "$w/islands.txt"; then
    python3 "$H" record "$R" make-slide "width=$big_w" "height=$big_h" "seconds=$((SECONDS - t))" \
      "mib=$(awk -v b="$(size_of "$big")" 'BEGIN { printf "%.1f", b / 1048576 }')"
    hm info "$big" | sed 's/^/  /'
    local run th bs st
    for run in shipped $threads_list; do
      left "gigapixel heatmap $run" || break
      if [[ $run == shipped ]]; then th=$(nproc) bs=64 st=96; else th=$run bs=256 st=$sweep_stride; fi
      o=$w/big-$run
      if hmt 240 heatmap "$big" \
        --pipeline "$root/pipelines/pcam.toml" --model "$models/pcam" --device "$dev" --threads "$th" \
        --batch-size "$bs" --stride "$st" --out "$o" --quiet --force >"$o.log" 2>&1; then
        read -r np os ms ss cs ws wr ts < <(python3 "$H" get "$o/gigapixel/summary.json" patches.classified \
          timings.open_s timings.mask_s timings.stream_s stream.classify_s stream.wall_s timings.write_s timings.total_s)
        local wait busy
        wait=$(awk -v a="$ws" -v b="$cs" 'BEGIN { printf "%.3f", a - b }')
        busy=$(awk -v a="$ws" -v b="$cs" 'BEGIN { printf "%.3f", (a > 0 ? b / a : 0) }')
        python3 "$H" record "$R" slide "run=$([[ $run == shipped ]] && echo shipped || echo sweep)" \
          "threads=$th" "batch=$bs" "stride=$st" "patches=$np" "open_s=$os" "mask_s=$ms" "stream_s=$ss" \
          "classify_s=$cs" "waiting_s=$wait" "gpu_busy=$busy" "write_s=$wr" "total_s=$ts"
        printf '  %-7s threads %2d batch %3d stride %2d: %6d patches; open %.2f s, mask %.2f s, stream %.2f s (classify %.2f s, waiting for readers %.2f s, busy %.0f%%), write %.2f s, total %.2f s\n' \
          "$run" "$th" "$bs" "$st" "$np" "$os" "$ms" "$ss" "$cs" "$wait" "$(awk -v b="$busy" 'BEGIN { print 100 * b }')" "$wr" "$ts"
        python3 "$H" islands "$o/gigapixel/predictions.csv" "$w/islands.txt" >/dev/null ||
          fail "gigapixel heatmap $run: patches off the islands"
      else
        fail "gigapixel heatmap $run: $(tail -n 2 "$o.log" | tr '\n' ' ')"
      fi
    done
  else
    fail "make-gpu-slide.py ${big_w} x ${big_h}"
  fi

  # 4. Training: ResNet-18 on the packed PCam tiles, every tile training (--no-val), so
  #    that an epoch's seconds in training.csv are training alone; epoch 2 is the steady
  #    one (epoch 1 also compiles kernels).
  echo "== train --arch $train_arch --device $dev on the packed PCam tiles"
  local data_csv=$D/pcam/labels.csv n_tiles
  if [[ $train_n -gt 0 ]]; then
    python3 "$H" manifest "$D/pcam/labels.csv" "$w/train-small.csv" train "$train_n"
    data_csv=$w/train-small.csv
  fi
  n_tiles=$(($(wc -l <"$data_csv") - 1))
  if ! left "train"; then
    :
  elif hmt 300 train \
    --data "$data_csv" --pipeline "$root/pipelines/pcam.toml" --arch "$train_arch" --device "$dev" \
    --epochs "$epochs" --batch-size 64 --no-val --seed 0 --out "$w/train" --force --quiet >"$w/train.log" 2>&1; then
    while read -r line; do
      python3 "$H" record "$R" train "@$line"
      echo "  $line"
    done < <(python3 "$H" train-rate "$w/train/training.csv" "$n_tiles" 64)
  else
    fail "train: $(tail -n 2 "$w/train.log" | tr '\n' ' ')"
  fi

  finish
}

# ---------------------------------------------------------------- --dry-run
do_dry_run() {
  local w fails=0
  w=$(mktemp -d /tmp/gpu-dry.XXXXXX)
  cleanup+=("$w")
  # NAME FUNCTION: OK or FAIL, and the note the function leaves in $w/note. The function
  # runs as a background job so that set -e holds in it (a condition would lift it).
  check() {
    local name=$1 log=$w/check.log
    shift
    : >"$w/note"
    "$@" >"$log" 2>&1 &
    if wait $!; then
      echo "OK   $name$(sed -n '1s/^/: /p' "$w/note")"
    else
      echo "FAIL $name"
      tail -n 5 "$log" | sed 's/^/     /'
      fails=$((fails + 1))
    fi
  }
  note() { echo "$*" >"$w/note"; }

  # The GPU machine's Python packages, close to its versions (KINDS.md: Python 3.12,
  # numpy 2.5, tifffile, Pillow; and PyTorch's CUDA 13 wheels, which hold the cuBLAS and
  # cuRAND that --run links): python3 -m venv /tmp/gpu-venv && /tmp/gpu-venv/bin/pip
  # install numpy tifffile pillow nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
  if [[ ! -x $venv/bin/python ]]; then
    local py3=python3
    command -v python3.12 >/dev/null && python3.12 -c '' 2>/dev/null && py3=python3.12
    "$py3" -m venv "$venv"
    "$venv/bin/pip" install -q "numpy>=2.4" "tifffile>=2025.1" "pillow>=11" \
      nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
  fi
  "$venv/bin/python" -c 'import numpy, tifffile, PIL; print("python", __import__("sys").version.split()[0], "numpy", numpy.__version__, "tifffile", tifffile.__version__, "pillow", PIL.__version__)'

  echo "== --pack"
  if do_pack; then echo "OK   pack within $((limit_mib - margin_mib)) MiB"; else echo "FAIL pack"; exit 1; fi

  echo "== unpacked into $w, LD_LIBRARY_PATH=$w/lib"
  unpack "$w"
  local H=$w/helpers.py
  hm() { LD_LIBRARY_PATH=$w/lib "$w/bin/histomap" "$@"; }

  # Every library but glibc's, the driver's and cuBLAS/cuRAND must come from the pack.
  libs_from_pack() {
    local bad
    bad=$(LD_LIBRARY_PATH=$w/lib ldd "$w/bin/histomap" | awk -v w="$w/lib/" '$2 == "=>" && index($3, w) != 1 { print $1 }' |
      grep -Ev "$skip_libs" | grep -Ev "$host_libs" || true)
    [[ -z $bad ]] || { echo "not from the pack: $bad"; return 1; }
  }
  check "libraries resolve from the pack (but glibc, libcuda, cuBLAS, cuRAND)" libs_from_pack
  version() { note "$(hm --version)"; }
  check "histomap --version" version

  auto_on_cpu() {
    hm heatmap "$w/data/cmu_small_region.svs" --pipeline "$root/pipelines/pcam.toml" --device auto \
      --out "$w/auto" --quiet --force 2>"$w/auto.err"
    grep -q "running on the CPU" "$w/auto.err" || { echo "no CPU fallback notice"; cat "$w/auto.err"; return 1; }
    note "$(python3 "$H" get "$w/auto/cmu_small_region/summary.json" patches.classified model.precision) (patches, precision); stderr: $(head -n 1 "$w/auto.err")"
  }
  check "heatmap --device auto on the real SVS runs on the CPU" auto_on_cpu

  cuda_fails() {
    if hm heatmap "$w/data/cmu_small_region.svs" --pipeline "$root/pipelines/pcam.toml" --device cuda \
      --out "$w/cuda" --quiet --force 2>"$w/cuda.err"; then
      echo "exit 0 without a GPU"; return 1
    fi
    local n
    n=$(grep -c . "$w/cuda.err" || true)
    note "$(head -n 1 "$w/cuda.err")"
    [[ $n -eq 1 ]] || { echo "$n lines:"; cat "$w/cuda.err"; return 1; }
  }
  check "heatmap --device cuda fails with one line" cuda_fails

  small_slide() {
    "$venv/bin/python" "$root/scripts/make-gpu-slide.py" "$w/small.tif" --width 20000 --height 16000 \
      --cmu "$w/data/cmu.jpg" --kather "$w/data/kather.jpg" >"$w/islands.txt"
    hm info --json "$w/small.tif" >"$w/info.json"
    python3 - "$w/info.json" >"$w/info.txt" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
s = j[0] if isinstance(j, list) else j
fmt, size, mpp = s["format"], s["size"], s["mpp"]
ok = fmt == "generic-tiff" and (size["w"], size["h"]) == (20000, 16000) and abs(mpp - 0.499) < 1e-3
print(f"{fmt} {size['w']} x {size['h']} mpp {mpp:.4f} levels {len(s['levels'])}")
sys.exit(0 if ok else 1)
PY
    note "$(cat "$w/info.txt"); $(tail -n 1 "$w/islands.txt" | sed 's/.* levels, //')"
  }
  check "make-gpu-slide.py 20000 x 16000: OpenSlide opens it as generic-tiff, 0.499 um/px" small_slide

  small_islands() {
    hm heatmap "$w/small.tif" --pipeline "$root/pipelines/pcam.toml" --device cpu --out "$w/small-hm" \
      --quiet --force
    python3 "$H" islands "$w/small-hm/small/predictions.csv" "$w/islands.txt" >"$w/isl.txt" || { cat "$w/isl.txt"; return 1; }
    note "$(cat "$w/isl.txt") (patches per island)"
  }
  check "heatmap on the generated slide finds both islands, nothing else" small_islands

  tiny_train() {
    python3 "$H" manifest "$w/data/pcam/labels.csv" "$w/tiny.csv" train 32
    hm train --data "$w/tiny.csv" --pipeline "$root/pipelines/pcam.toml" --arch smallcnn --device cpu \
      --epochs 1 --batch-size 16 --no-val --out "$w/tiny-model" --quiet
    [[ $(wc -l <"$w/tiny-model/training.csv") -eq 2 ]]
    note "training.csv: $(tail -n 1 "$w/tiny-model/training.csv")"
  }
  check "train --epochs 1 on 32 tiles" tiny_train

  # --run links the host's cuBLAS 13 in place of the 11 the binary was built with:
  # patch a copy and load it against the venv's nvidia wheels (BIND_NOW: every cuBLAS
  # and cuRAND symbol must resolve before main).
  cublas_swap() {
    local major
    major=$(host_cuda "$w" "$venv/bin/python")
    [[ -n $major ]] || { echo "no cuBLAS 12+ in $venv: $venv/bin/pip install nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35"; return 1; }
    python3 "$H" patch-cublas "$w/bin/histomap" "$w/patched" "$major"
    LD_LIBRARY_PATH=$w/lib:$w/hostcuda ldd "$w/patched" | grep -E 'cublas|curand'
    LD_LIBRARY_PATH=$w/lib:$w/hostcuda "$w/patched" --version
    LD_LIBRARY_PATH=$w/lib:$w/hostcuda "$w/patched" heatmap "$w/data/cmu_small_region.svs" \
      --pipeline "$root/pipelines/pcam.toml" --device cpu --out "$w/patched-hm" --quiet --force
    note "libcublas.so.11 -> .so.$major, loads $(readlink "$w/hostcuda/libcublas.so.$major" | sed 's|.*/site-packages/||') and runs"
  }
  check "binary patched for the host's cuBLAS loads and runs" cublas_swap

  # The whole of --run, on the CPU and small: every command line and parser it uses.
  rehearse() {
    GPU_CHECK_REHEARSAL=1 GPU_CHECK_WORK=$w/run OUT=$w/run-out PYTHON=$venv/bin/python RUN_BUDGET_S=100000 \
      bash "$root/scripts/gpu-check.sh" --run
    [[ -s $w/run-out/gpu-check.json && -s $w/run-out/gpu-check.md ]]
    note "$(tail -n 1 "$w/run-out/gpu-check.log")"
  }
  check "rehearsal of --run on the CPU" rehearse
  [[ -d $w/run-out ]] && { echo "   (rehearsal's summary: $(grep -c . "$w/run-out/gpu-check.md") lines of gpu-check.md)"; }

  if ((fails)); then echo "dry-run: $fails FAIL"; exit 1; fi
  echo "dry-run: all OK"
}

case ${1:-} in
  --pack) do_pack ;;
  --dry-run) do_dry_run ;;
  --run) do_run ;;
  *) echo "usage: scripts/gpu-check.sh --pack | --dry-run | --run" >&2; exit 2 ;;
esac
