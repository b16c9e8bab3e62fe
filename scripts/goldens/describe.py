#!/usr/bin/env python3
"""Decode the vLLM golden files and print, per case and rank, where every
element of every vLLM parameter came from.

Pure Python (no numpy/torch): `python3 scripts/goldens/describe.py [case ...]`
from the repository root. Reads
crates/shardplan/tests/it/fixtures/engines/vllm/<case>/{source/,rank_*.safetensors,meta.json}.

The sources follow the value rule of vllm_goldens.py: element at flat index i of
source tensor k (meta.json "source_tensor_ids") is float32(k * 10000 + i), and
0.0 never occurs in a source. So each golden element decodes to
(source tensor, source flat index), or to padding when it is 0.0.

Every parameter is viewed as rows over its last dimension (leading dims shown as
[e] for 3-D tensors). Runs of rows are printed as

    rows a..b <- SOURCE rows c..d cols x..y      (half-open ranges)
    rows a..b <- zero                            (padding)

and at the end a coverage check says which source elements were never placed on
any rank (expected for none) and how many times each source tensor is held
across ranks (replication). Exit status 1 if a value fails to decode.
"""
import array
import json
import os
import struct
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BASE = os.path.join(ROOT, "crates/shardplan/tests/it/fixtures/engines/vllm")
STRIDE = 10000
# Output for these cases is kept exactly as first committed.
OLD_CASES = {"llama_gqa_tp2", "llama_gqa_tp4", "qwen3_moe_tp2", "qwen3_moe_tp2_ep"}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        assert h["dtype"] == "F32", (path, name, h["dtype"])
        a, b = h["data_offsets"]
        vals = array.array("f")
        vals.frombytes(data[a:b])
        if sys.byteorder != "little":
            vals.byteswap()
        out[name] = (h["shape"], vals)
    return out


def short(name):
    return name


def decode_rows(shape, vals, id2name, src_shapes):
    """Yield (lead_index, row, kind, src_name, src_row, col0, col1)."""
    last = shape[-1] if shape else 1
    nrows = len(vals) // last if last else 0
    lead = shape[:-2] if len(shape) >= 2 else []
    rows_per_lead = shape[-2] if len(shape) >= 2 else 1
    for r in range(nrows):
        row = vals[r * last:(r + 1) * last]
        li = r // rows_per_lead
        rr = r % rows_per_lead
        if all(v == 0.0 for v in row):
            yield (li, rr, "zero", None, None, None, None)
            continue
        ks = {int(v) // STRIDE for v in row}
        idx = [int(v) % STRIDE for v in row]
        if len(ks) != 1 or any(v != int(v) for v in row) or idx != list(range(idx[0], idx[0] + last)):
            raise SystemExit(f"row {r}: does not decode to one contiguous source run: {list(row)[:8]}...")
        src = id2name[ks.pop()]
        sshape = src_shapes[src]
        slast = sshape[-1] if sshape else 1
        srow, c0 = divmod(idx[0], slast)
        if c0 + last > slast:
            raise SystemExit(f"row {r} of {src} crosses a source row")
        yield (li, rr, "src", src, srow, c0, c0 + last)


def segments_1d(vals, id2name):
    """1-D tensors (e.g. fused biases): split into runs of consecutive source
    elements. Yields (a, b, src_name_or_None, i0) for positions a..b; None = zero."""
    cur = None
    for p, v in enumerate(vals):
        if v == 0.0:
            key = (None, None)
        else:
            if v != int(v):
                raise SystemExit(f"element {p}: {v} does not decode")
            k, i = divmod(int(v), STRIDE)
            key = (id2name[k], i)
        if cur and cur[2] == key[0] and (key[0] is None or cur[3] + (p - cur[0]) == key[1]):
            cur[1] = p + 1
            continue
        if cur:
            yield tuple(cur)
        cur = [p, p + 1, key[0], key[1]]
    if cur:
        yield tuple(cur)


def runs(decoded):
    cur = None
    for li, rr, kind, src, srow, c0, c1 in decoded:
        if (cur and cur["li"] == li and cur["kind"] == kind and cur["rr1"] == rr
                and (kind == "zero" or (cur["src"] == src and cur["c"] == (c0, c1) and cur["s1"] == srow))):
            cur["rr1"] += 1
            if kind == "src":
                cur["s1"] += 1
            continue
        if cur:
            yield cur
        cur = {"li": li, "kind": kind, "rr0": rr, "rr1": rr + 1, "src": src,
               "s0": srow, "s1": (srow + 1) if srow is not None else None, "c": (c0, c1)}
    if cur:
        yield cur


def describe_case(case):
    cdir = os.path.join(BASE, case)
    meta = json.load(open(os.path.join(cdir, "meta.json")))
    src = read_safetensors(os.path.join(cdir, "source", "model.safetensors"))
    src_shapes = {k: v[0] for k, v in src.items()}
    id2name = {v: k for k, v in meta["source_tensor_ids"].items()}
    print(f"=== {case}: tp={meta['tp']} ep={meta['ep']} vllm {meta['vllm']} torch {meta['torch']} ({meta['model_class']})")
    held = {k: [0] * len(src[k][1]) for k in src}
    for r in range(meta["tp"]):
        print(f"--- rank {r}")
        t = read_safetensors(os.path.join(cdir, f"rank_{r}.safetensors"))
        for name in sorted(t):
            shape, vals = t[name]
            print(f"  {name} {shape}:")
            if len(shape) == 1:
                for a, b, sname, i0 in segments_1d(vals, id2name):
                    if sname is None:
                        print(f"    [{a}..{b}] <- zero")
                        continue
                    n = src_shapes[sname][0]
                    if (i0, i0 + b - a) == (0, n) and (a, b) == (0, len(vals)):
                        print(f"    all <- {sname}")
                    else:
                        print(f"    [{a}..{b}] <- {sname} [{i0}..{i0 + b - a}]")
                    for c in range(i0, i0 + b - a):
                        held[sname][c] += 1
                continue
            for run in runs(decode_rows(shape, vals, id2name, src_shapes)):
                lead = f"[{run['li']}] " if len(shape) >= 3 else ""
                rows = f"rows {run['rr0']}..{run['rr1']}" if len(shape) >= 2 else "all"
                if run["kind"] == "zero":
                    print(f"    {lead}{rows} <- zero")
                    continue
                sname, sshape = run["src"], src_shapes[run["src"]]
                c0, c1 = run["c"]
                full = (c0, c1) == (0, sshape[-1])
                if len(sshape) >= 2:
                    srows = f"rows {run['s0']}..{run['s1']}"
                    if (run["s0"], run["s1"]) == (0, sshape[0]):
                        srows = "all rows"
                    cols = "" if full else f" cols {c0}..{c1}"
                    print(f"    {lead}{rows} <- {sname} {srows}{cols}")
                    slast = sshape[-1]
                    for s in range(run["s0"], run["s1"]):
                        for c in range(c0, c1):
                            held[sname][s * slast + c] += 1
                else:
                    print(f"    {lead}{rows} <- {sname}" + ("" if full else f" [{c0}..{c1}]"))
                    for c in range(c0, c1):
                        held[sname][c] += 1
    extra = {k: v for k, v in meta["state_dict_buffers_not_saved"].items() if not k.rsplit(".", 1)[-1].startswith("_")}
    if extra and case not in OLD_CASES:
        print("--- rank 0 state_dict entries that are not parameters (not saved; kv-cache scales omitted)")
        for k, v in sorted(extra.items()):
            print(f"  {k} {v['shape']} first values {v['values']}")
    print("--- coverage over all ranks")
    bad = False
    for name in sorted(held):
        h = held[name]
        lo, hi = min(h), max(h)
        if lo == 0:
            bad = True
            print(f"  MISSING: {name}: {h.count(0)} of {len(h)} elements on no rank")
        else:
            print(f"  {name}: each element held {lo}" + (f"..{hi}" if hi != lo else "") + " time(s)")
    return not bad


def main():
    cases = sys.argv[1:] or sorted(d for d in os.listdir(BASE) if os.path.isdir(os.path.join(BASE, d)))
    ok = True
    for c in cases:
        ok = describe_case(c) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
