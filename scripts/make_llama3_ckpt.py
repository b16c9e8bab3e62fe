#!/usr/bin/env python3
"""Synthetic tensor-parallel Llama checkpoints for the resharding benchmark.

Subcommands:

  gen      write a source checkpoint directory (rank_<r>/checkpoint_<r>.safetensors,
           MindSpore style: header metadata {"format": "ms"}, header padded to
           8 bytes) holding rank r's slice of every tensor under a Megatron
           tensor-parallel layout, plus MindSpore JSON strategy files for the
           source and the destination tensor parallelism:

             q/k/v/gate/up/embed_tokens/lm_head  split on dim 0  tensor_map [0, -1]
             o_proj/down_proj                    split on dim 1  tensor_map [-1, 0]
             norms                               replicated      tensor_map [-1]

           (dev_matrix [tp], tensor_shape the full shape).

  verify   check a resharded directory (rank_<k>/*.safetensors) against the
           value rule below, for a destination of --tp ranks: every tensor's
           name, dtype, shape and every byte.

  verify-hf  check a Hugging Face folder of whole tensors (any sharding)
           against the value rule.

  compare  compare two checkpoint directories (safetensors) tensor by tensor:
           same ranks, names, dtypes, shapes and bytes (file names and the
           order of tensors inside a file may differ).

Values (bf16, any deterministic bytes are fine for a copy benchmark): the
element at flat index i of the full tensor number k (in the order of the
parameter list) has the bit pattern P[(i + 7919 k) mod 65521], where P is a
fixed table of 65521 finite, normal bf16 numbers of both signs (a hash of the
position; no NaN, Inf or subnormal, so no tool can canonicalize them). Consecutive elements differ and
a row differs from its neighbours, so a misplaced block is caught.

Generation streams large buffers (8 MiB writes of a pre-tiled pattern for
contiguous slices, one gather per block of rows for column slices); 16 GB
takes a few minutes, bounded by numpy and the disk.

Model: ../shared/data/llama3_8b_params.json (291 bf16 tensors, 16,060,522,496
bytes) or any list of the same form. --layers N keeps the first N layers
(plus embed_tokens, model.norm and lm_head); --shrink D divides every
dimension by D (each must stay divisible by both tensor parallelisms).

Examples:

  python3 scripts/make_llama3_ckpt.py gen --out /work/bench-data/full --tp 8 --dst-tp 2
  python3 scripts/make_llama3_ckpt.py verify --dir /work/bench-data/full/out_shardplan --tp 2
  python3 scripts/make_llama3_ckpt.py compare DIR_A DIR_B
"""

import argparse
import json
import mmap
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

L = 65521  # period of the value pattern (a prime)
CHUNK = 4 << 20  # elements per write / compare (8 MiB of bf16)

DIM0 = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "embed_tokens", "lm_head")
DIM1 = ("o_proj", "down_proj")


def table():
    # A multiplicative hash of the position (high bits), so the pattern has no
    # period shorter than L; 2^15 distinct values.
    i = np.arange(L, dtype=np.uint64)
    h = (i * np.uint64(2654435761)) >> np.uint64(15)
    sign = (h >> np.uint64(14)) & np.uint64(1)
    exp = np.uint64(64) + ((h >> np.uint64(7)) & np.uint64(0x7F))  # 64..191: finite, normal
    mant = h & np.uint64(0x7F)
    p = ((sign << np.uint64(15)) | (exp << np.uint64(7)) | mant).astype(np.uint16)
    # Tiled so that any window of CHUNK elements starting below L is one slice.
    return np.tile(p, (CHUNK + L) // L + 1)


TILED = None


def tiled():
    global TILED
    if TILED is None:
        TILED = table()
    return TILED


def load_params(path, layers, shrink):
    d = json.loads(Path(path).read_text())
    out = []
    for p in d["params"]:
        name = p["name"]
        parts = name.split(".")
        if layers is not None and len(parts) > 2 and parts[1] == "layers" and int(parts[2]) >= layers:
            continue
        if p["dtype"] != "bfloat16":
            sys.exit(f"{name}: dtype {p['dtype']}, this generator writes bf16 only")
        shape = []
        for s in p["shape"]:
            if s % shrink:
                sys.exit(f"{name}: dimension {s} is not divisible by --shrink {shrink}")
            shape.append(s // shrink)
        out.append((name, shape))
    return out


def split_dim(name, shape):
    """The dimension split over tp, or None (replicated)."""
    kind = name.split(".")[-2]
    if kind in DIM0:
        return 0
    if kind in DIM1:
        return 1
    if len(shape) == 1:
        return None
    sys.exit(f"{name}: no tensor-parallel rule for this tensor")


def tensor_map(dim, ndim):
    # MindSpore counts device-matrix axes from the right; dev_matrix [tp] has axis 0.
    return [0 if d == dim else -1 for d in range(ndim)]


def local_box(shape, dim, tp, r):
    """(offsets, extents) of rank r's slice."""
    off = [0] * len(shape)
    ext = list(shape)
    if dim is not None:
        if shape[dim] % tp:
            sys.exit(f"dimension {shape[dim]} is not divisible by tp {tp}")
        ext[dim] = shape[dim] // tp
        off[dim] = r * ext[dim]
    return off, ext


def box_chunks(k, shape, off, ext):
    """The bf16 bit patterns (uint16 arrays, C order) of a box of tensor k, in pieces."""
    t = tiled()
    base = 7919 * k
    if len(shape) == 1 or (ext[1:] == shape[1:]):
        # A contiguous flat range of the full tensor.
        row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        start = off[0] * row
        n = ext[0] * row
        pos = 0
        while pos < n:
            m = min(CHUNK, n - pos)
            s = (start + pos + base) % L
            yield t[s:s + m]
            pos += m
        return
    assert len(shape) == 2, shape
    rows, cols = ext
    step = max(1, CHUNK // cols)
    ar = np.arange(cols, dtype=np.int64)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        i = np.arange(off[0] + r0, off[0] + r1, dtype=np.int64)
        starts = (i * shape[1] + off[1] + base) % L
        yield t[starts[:, None] + ar[None, :]]


def st_header(entries):
    """safetensors header bytes (length + JSON padded to 8) for (name, shape) bf16 tensors."""
    header = {"__metadata__": {"format": "ms"}}
    pos = 0
    for name, ext in entries:
        n = int(np.prod(ext)) * 2
        header[name] = {"dtype": "BF16", "shape": ext, "data_offsets": [pos, pos + n]}
        pos += n
    js = json.dumps(header, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    return struct.pack("<Q", len(js)) + js, pos


def strategy(params, tp):
    layouts = {}
    for name, shape in params:
        dim = split_dim(name, shape)
        layouts[name] = {
            "dev_matrix": [tp],
            "tensor_map": tensor_map(dim, len(shape)),
            "tensor_shape": shape,
            "field": 0,
            "opt_weight_shard_step": 0,
            "opt_weight_shard_size": 0,
        }
    return {
        "current_stage": 0,
        "parallel_strategy_item": {"Default/op-0": {"stage": 0, "parallel_strategy": [[1]]}},
        "parallel_layout_item": layouts,
    }


def gen(args):
    params = load_params(args.params, args.layers, args.shrink)
    out = Path(args.out)
    src = out / "src"
    src.mkdir(parents=True, exist_ok=True)
    total = 0
    t0 = time.time()
    for r in range(args.tp):
        entries, boxes = [], []
        for k, (name, shape) in enumerate(params):
            off, ext = local_box(shape, split_dim(name, shape), args.tp, r)
            entries.append((name, ext))
            boxes.append((k, shape, off, ext))
        head, nbytes = st_header(entries)
        d = src / f"rank_{r}"
        d.mkdir(exist_ok=True)
        path = d / f"checkpoint_{r}.safetensors"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb", buffering=0) as f:
            f.write(head)
            for k, shape, off, ext in boxes:
                for c in box_chunks(k, shape, off, ext):
                    f.write(memoryview(np.ascontiguousarray(c)).cast("B"))
        os.replace(tmp, path)
        total += len(head) + nbytes
        print(f"{path}: {len(head) + nbytes:,} bytes ({time.time() - t0:.1f} s)", flush=True)
    for tp in sorted({args.tp, args.dst_tp}):
        p = out / f"tp{tp}.json"
        p.write_text(json.dumps(strategy(params, tp), indent=1))
        print(f"{p}")
    full = sum(int(np.prod(s)) * 2 for _, s in params)
    print(f"{len(params)} tensors, {full:,} bytes of full tensors, {total:,} bytes written in "
          f"{time.time() - t0:.1f} s")


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return 8 + n, h


def rank_files(d):
    out = {}
    for rd in sorted(Path(d).glob("rank_*")):
        files = sorted(rd.glob("*.safetensors"))
        if len(files) != 1:
            sys.exit(f"{rd}: expected one .safetensors file, found {len(files)}")
        out[int(rd.name.split("_")[1])] = files[0]
    return out


def verify(args):
    params = load_params(args.params, args.layers, args.shrink)
    files = rank_files(args.dir)
    ranks = range(args.tp) if args.rank is None else [args.rank]
    missing = [r for r in ranks if r not in files]
    if missing:
        sys.exit(f"{args.dir}: no rank folder for ranks {missing}")
    t0 = time.time()
    checked = 0
    for r in ranks:
        base, h = read_header(files[r])
        want = {name for name, _ in params}
        if set(h) != want:
            sys.exit(f"{files[r]}: tensors differ: extra {sorted(set(h) - want)[:5]}, "
                     f"missing {sorted(want - set(h))[:5]}")
        with open(files[r], "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            for k, (name, shape) in enumerate(params):
                off, ext = local_box(shape, split_dim(name, shape), args.tp, r)
                e = h[name]
                if e["dtype"] != "BF16" or e["shape"] != ext:
                    sys.exit(f"{files[r]}: `{name}` is {e['dtype']} {e['shape']}, want BF16 {ext}")
                pos = base + e["data_offsets"][0]
                for c in box_chunks(k, shape, off, ext):
                    b = memoryview(np.ascontiguousarray(c)).cast("B")
                    if mm[pos:pos + len(b)] != b:
                        sys.exit(f"{files[r]}: `{name}` differs near byte {pos - base - e['data_offsets'][0]}")
                    pos += len(b)
                checked += pos - base - e["data_offsets"][0]
            mm.close()
        print(f"{files[r]}: {len(params)} tensors OK", flush=True)
    print(f"verified {checked:,} bytes in {time.time() - t0:.1f} s: every tensor as the value rule says")


def verify_hf(args):
    """A Hugging Face folder of whole tensors (any sharding) against the
    value rule."""
    params = load_params(args.params, args.layers, args.shrink)
    where = {}
    for path in sorted(Path(args.dir).glob("*.safetensors")):
        base, h = read_header(path)
        for name, e in h.items():
            if name in where:
                sys.exit(f"{path}: `{name}` is also in {where[name][0]}")
            where[name] = (path, base, e)
    want = {name for name, _ in params}
    if set(where) != want:
        sys.exit(f"{args.dir}: tensors differ: extra {sorted(set(where) - want)[:5]}, "
                 f"missing {sorted(want - set(where))[:5]}")
    t0, checked, maps = time.time(), 0, {}
    for k, (name, shape) in enumerate(params):
        path, base, e = where[name]
        if e["dtype"] != "BF16" or e["shape"] != list(shape):
            sys.exit(f"{path}: `{name}` is {e['dtype']} {e['shape']}, want BF16 {list(shape)}")
        if path not in maps:
            f = open(path, "rb")
            maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mm, pos = maps[path], base + e["data_offsets"][0]
        for c in box_chunks(k, shape, [0] * len(shape), list(shape)):
            b = memoryview(np.ascontiguousarray(c)).cast("B")
            if mm[pos:pos + len(b)] != b:
                sys.exit(f"{path}: `{name}` differs near byte {pos - base - e['data_offsets'][0]}")
            pos += len(b)
        checked += pos - base - e["data_offsets"][0]
    print(f"verified {checked:,} bytes of {len(params)} whole tensors in {len(maps)} files "
          f"in {time.time() - t0:.1f} s: every tensor as the value rule says")


def compare(args):
    a, b = rank_files(args.a), rank_files(args.b)
    if set(a) != set(b):
        sys.exit(f"rank folders differ: {sorted(a)} vs {sorted(b)}")
    total = 0
    for r in sorted(a):
        ba, ha = read_header(a[r])
        bb, hb = read_header(b[r])
        if set(ha) != set(hb):
            sys.exit(f"rank {r}: tensor names differ: only in A {sorted(set(ha) - set(hb))[:5]}, "
                     f"only in B {sorted(set(hb) - set(ha))[:5]}")
        with open(a[r], "rb") as fa, open(b[r], "rb") as fb:
            ma = mmap.mmap(fa.fileno(), 0, access=mmap.ACCESS_READ)
            mb = mmap.mmap(fb.fileno(), 0, access=mmap.ACCESS_READ)
            for name in sorted(ha):
                ea, eb = ha[name], hb[name]
                if ea["dtype"] != eb["dtype"] or ea["shape"] != eb["shape"]:
                    sys.exit(f"rank {r}: `{name}`: {ea['dtype']} {ea['shape']} vs {eb['dtype']} {eb['shape']}")
                sa, ea_ = (ba + x for x in ea["data_offsets"])
                sb, eb_ = (bb + x for x in eb["data_offsets"])
                if ea_ - sa != eb_ - sb:
                    sys.exit(f"rank {r}: `{name}`: {ea_ - sa} vs {eb_ - sb} bytes")
                step = 64 << 20
                for o in range(0, ea_ - sa, step):
                    n = min(step, ea_ - sa - o)
                    if ma[sa + o:sa + o + n] != mb[sb + o:sb + o + n]:
                        sys.exit(f"rank {r}: `{name}`: bytes differ in [{o}, {o + n})")
                total += ea_ - sa
            ma.close()
            mb.close()
        print(f"rank {r}: {len(ha)} tensors equal ({a[r].name} vs {b[r].name})", flush=True)
    print(f"EQUAL: {len(a)} ranks, {total:,} tensor bytes compared")


def main():
    default_params = Path(__file__).resolve().parent.parent.parent / "shared/data/llama3_8b_params.json"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("gen", "verify", "verify-hf"):
        p = sub.add_parser(name)
        p.add_argument("--params", default=str(default_params))
        p.add_argument("--layers", type=int, default=None, help="keep the first N layers")
        p.add_argument("--shrink", type=int, default=1, help="divide every dimension by D")
    g = sub.choices["gen"]
    g.add_argument("--out", required=True)
    g.add_argument("--tp", type=int, default=8)
    g.add_argument("--dst-tp", type=int, default=2)
    v = sub.choices["verify"]
    v.add_argument("--dir", required=True)
    v.add_argument("--tp", type=int, required=True, help="tensor parallelism of the checked directory")
    v.add_argument("--rank", type=int, default=None, help="check only this rank")
    sub.choices["verify-hf"].add_argument("--dir", required=True)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args()
    {"gen": gen, "verify": verify, "verify-hf": verify_hf, "compare": compare}[args.cmd](args)


if __name__ == "__main__":
    main()
