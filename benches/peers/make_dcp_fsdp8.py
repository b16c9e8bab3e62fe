#!/usr/bin/env python3
"""The source of scripts/bench_dcp.sh: a one-rank checkpoint of whole
tensors (make_llama3_ckpt.py gen --tp 1) resharded by shardplan into a
PyTorch DCP folder laid out as FSDP-8 (every tensor's dimension 0 cut over
8 ranks by torch.chunk, DTensor's Shard(0)): `.metadata` and
`__<r>_0.distcp`, which torch.distributed.checkpoint.load reads.

usage: make_dcp_fsdp8.py SRC_DIR DCP_DIR
"""

import json
import struct
import sys
from pathlib import Path

import shardplan as sp

DTYPES = {"BF16": "bf16", "F16": "f16", "F32": "f32", "I64": "i64", "I32": "i32"}


def tensors(src):
    """Name, dtype and shape of every tensor of the one rank's safetensors file."""
    (path,) = Path(src).glob("rank_0/*.safetensors")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return [(name, DTYPES[e["dtype"]], e["shape"]) for name, e in header.items()]


def main():
    src, out = sys.argv[1], sys.argv[2]
    mesh = sp.DeviceMesh([8], ["dp"])
    layouts = {
        name: (sp.Layout.from_placements(mesh, shape, ["Shard(0)"] if shape else ["Replicate()"]), dtype)
        for name, dtype, shape in tensors(src)
    }
    done = sp.reshard(src, out, format="dcp", dst_strategy=sp.Strategy("fsdp8", mesh, layouts))
    print(f"{len(done)} ranks written to {out}: {sum(d['bytes'] for d in done):,} bytes")


if __name__ == "__main__":
    main()
