#!/usr/bin/env python3
"""Writes a fuzz corpus of damaged slides, the same bytes for the same seed.

usage: make-fuzz-corpus.py SEED PER_SOURCE OUT_DIR SOURCE...

Each SOURCE file gets PER_SOURCE mutants, named <stem>-<nnn>-<kind>.<ext>, cycling
through the kinds that fit its format:

  TIFF (SVS, NDPI, tiled or strip TIFF): bytes flipped in the header, in an IFD, in
  tile or strip data; a JPEG tile cut short with an end-of-image marker (what a bad
  sector or an interrupted copy leaves); truncation; absurd tag values (sizes, tile
  sizes, samples, compression, offset and byte counts); tile or strip offsets past the
  end of the file; absurd byte counts.
  PNG and JPEG: bytes flipped in the header or the data, truncation, absurd
  dimensions, absurd chunk or segment lengths.

Only the Python standard library; the TIFF structure is parsed here so mutations land
where they are meant to.
"""
import os
import random
import struct
import sys

TIFF_KINDS = ["header", "ifd", "tile-data", "tile-eoi", "truncate", "tag", "offset-eof", "bytecount"]
IMAGE_KINDS = ["header", "data", "truncate", "dimensions", "length"]
TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}
TYPE_FMT = {3: "H", 4: "I", 16: "Q"}
ABSURD = [0, 1, 2, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 65521]


class Tiff:
    """The IFDs of a classic little- or big-endian TIFF: entries as
    (entry_offset, tag, type, count, value_or_offset)."""

    def __init__(self, data):
        self.e = "<" if data[:2] == b"II" else ">"
        self.data = data
        self.ifds = []
        off = self.u32(4)
        seen = set()
        while off and off + 2 <= len(data) and off not in seen:
            seen.add(off)
            n = self.u16(off)
            entries = []
            for i in range(n):
                at = off + 2 + 12 * i
                tag, typ, count = struct.unpack_from(self.e + "HHI", data, at)
                entries.append((at, tag, typ, count, self.u32(at + 8)))
            self.ifds.append((off, n, entries))
            off = self.u32(off + 2 + 12 * n)

    def u16(self, at):
        return struct.unpack_from(self.e + "H", self.data, at)[0]

    def u32(self, at):
        return struct.unpack_from(self.e + "I", self.data, at)[0]

    def array(self, entry):
        """Where an entry's values are, and their format (SHORT or LONG only)."""
        at, _tag, typ, count, value = entry
        fmt = TYPE_FMT.get(typ)
        if fmt is None or fmt == "Q":
            return None
        where = at + 8 if TYPE_SIZE[typ] * count <= 4 else value
        return where, fmt, count

    def chunks(self):
        """(offset, byte count) of every tile and strip of every IFD."""
        out = []
        for _, _, entries in self.ifds:
            by_tag = {e[1]: e for e in entries}
            for offs_tag, counts_tag in ((324, 325), (273, 279)):
                if offs_tag in by_tag and counts_tag in by_tag:
                    a, b = self.array(by_tag[offs_tag]), self.array(by_tag[counts_tag])
                    if not a or not b:
                        continue
                    for i in range(min(a[2], b[2])):
                        o = struct.unpack_from(self.e + a[1], self.data, a[0] + i * struct.calcsize(a[1]))[0]
                        c = struct.unpack_from(self.e + b[1], self.data, b[0] + i * struct.calcsize(b[1]))[0]
                        if c and o + c <= len(self.data):
                            out.append((o, c))
        return out


def flip(data, rng, lo, hi, n):
    for _ in range(n):
        at = rng.randrange(lo, max(lo + 1, hi))
        if at < len(data):
            data[at] ^= 1 << rng.randrange(8) if rng.random() < 0.5 else rng.randrange(1, 256)


def put(data, e, fmt, at, value):
    size = struct.calcsize(fmt)
    if at + size <= len(data):
        struct.pack_into(e + fmt, data, at, value & ((1 << (8 * size)) - 1))


def mutate_tiff(data, kind, rng):
    t = Tiff(bytes(data))
    entries = [e for _, _, es in t.ifds for e in es]
    chunks = t.chunks()
    if kind == "header":
        flip(data, rng, 0, 8, rng.randint(1, 2))
    elif kind == "ifd":
        off, n, _ = rng.choice(t.ifds)
        flip(data, rng, off, off + 2 + 12 * n + 4, rng.randint(1, 4))
    elif kind == "tile-data":
        for _ in range(rng.randint(1, 5)):
            o, c = rng.choice(chunks)
            flip(data, rng, o, o + c, rng.randint(1, 16))
    elif kind == "tile-eoi":
        for _ in range(rng.randint(1, 4)):
            o, c = rng.choice(chunks)
            at = o + rng.randrange(max(1, c // 8), max(2, c - 2))
            data[at : at + 2] = b"\xff\xd9"
    elif kind == "truncate":
        del data[rng.randrange(8, len(data)) :]
    elif kind == "tag":
        wanted = {256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 322, 323, 324, 325, 347}
        picks = [e for e in entries if e[1] in wanted] or entries
        for at, _tag, typ, _count, _value in rng.sample(picks, min(len(picks), rng.randint(1, 2))):
            if rng.random() < 0.25:
                put(data, t.e, "I", at + 4, rng.choice(ABSURD))  # the count
            elif typ == 3:
                put(data, t.e, "H", at + 8, rng.choice(ABSURD))
            else:
                put(data, t.e, "I", at + 8, rng.choice(ABSURD))
    elif kind in ("offset-eof", "bytecount"):
        tag = {"offset-eof": (324, 273), "bytecount": (325, 279)}[kind]
        picks = [e for e in entries if e[1] in tag and t.array(e)]
        for e in rng.sample(picks, min(len(picks), rng.randint(1, 2))):
            where, fmt, count = t.array(e)
            size = struct.calcsize(fmt)
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(count)
                if kind == "offset-eof":
                    value = len(data) + rng.choice([0, 1, 4096, 1 << 20]) if fmt == "I" else 0xFFFF
                else:
                    value = rng.choice([0, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, len(data)])
                put(data, t.e, fmt, where + i * size, value)
    return data


def jpeg_segments(data):
    """(offset, marker) of each JPEG marker segment before the scan data."""
    out, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        out.append((at, marker))
        if marker == 0xDA:
            break
        at += 2 + struct.unpack_from(">H", data, at + 2)[0]
    return out


def png_chunks(data):
    out, at = [], 8
    while at + 8 <= len(data):
        length = struct.unpack_from(">I", data, at)[0]
        out.append((at, data[at + 4 : at + 8]))
        at += 12 + length
    return out


def mutate_image(data, kind, rng, png):
    if kind == "header":
        flip(data, rng, 0, 40, rng.randint(1, 3))
    elif kind == "data":
        flip(data, rng, 40, len(data), rng.randint(1, 32))
    elif kind == "truncate":
        del data[rng.randrange(8, len(data)) :]
    elif kind == "dimensions":
        v = rng.choice([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 40000])
        if png:
            put(data, ">", "I", 16 + 4 * rng.randrange(2), v)
        else:
            sof = [at for at, m in jpeg_segments(data) if m in (0xC0, 0xC1, 0xC2)]
            if sof:
                put(data, ">", "H", sof[0] + 5 + 2 * rng.randrange(2), v)
    elif kind == "length":
        if png:
            at, _ = rng.choice(png_chunks(data))
            put(data, ">", "I", at, rng.choice([0, 0xFFFFFFF0, 0x7FFFFFFF, 1 << 20]))
        else:
            at, _ = rng.choice(jpeg_segments(data))
            put(data, ">", "H", at + 2, rng.choice([0, 1, 2, 0xFFFF]))
    return data


def main():
    seed, per_source, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    os.makedirs(out, exist_ok=True)
    for s, src in enumerate(sys.argv[4:]):
        original = open(src, "rb").read()
        stem, ext = os.path.splitext(os.path.basename(src))
        tiff = original[:4] in (b"II*\0", b"MM\0*")
        kinds = TIFF_KINDS if tiff else IMAGE_KINDS
        for i in range(per_source):
            kind = kinds[i % len(kinds)]
            rng = random.Random(seed * 1_000_003 + s * 10_007 + i)
            data = bytearray(original)
            if tiff:
                mutate_tiff(data, kind, rng)
            else:
                mutate_image(data, kind, rng, png=original[:4] == b"\x89PNG")
            with open(os.path.join(out, f"{stem}-{i:03d}-{kind}{ext}"), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
