"""Loads a DCP folder that shardplan wrote with PyTorch's own reader and
checks it against what the Rust test expects.

Usage: python dcp_load_check.py DIR EXPECT.json

EXPECT.json: {"tensors": [{"name", "dtype", "shape", "k", "chunks":
[[offsets, sizes], ...]}], "storage": [{"fqn", "offsets", "index", "path",
"offset", "length"}]}. Tensor values follow the conformance rule: tensor k
is arange(numel) + 1000*k in its dtype, row-major.

Checks, in order: `FileSystemReader.read_metadata()` (plain `pickle.load`)
gives the expected Metadata; `dcp.load` without a process group fills
freshly allocated tensors with the expected values; `dcp_to_torch_save`
turns the folder into a file that `torch.load(weights_only=True)` reads back
equal. Prints one line per check; exits 1 with a message on a mismatch.
"""
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.metadata import MetadataIndex

DTYPES = {
    "f64": torch.float64, "f32": torch.float32, "f16": torch.float16,
    "bf16": torch.bfloat16, "i64": torch.int64, "i32": torch.int32,
    "i16": torch.int16, "i8": torch.int8, "u8": torch.uint8,
}


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def expected_value(t):
    shape = t["shape"]
    numel = 1
    for d in shape:
        numel *= d
    values = torch.arange(numel, dtype=torch.float64) + 1000 * t["k"]
    return values.to(DTYPES[t["dtype"]]).reshape(shape)


def check_metadata(folder, expect):
    md = dcp.FileSystemReader(folder).read_metadata()
    names = [t["name"] for t in expect["tensors"]]
    if sorted(md.state_dict_metadata) != sorted(names):
        fail(f"state_dict_metadata keys {sorted(md.state_dict_metadata)} != {sorted(names)}")
    for t in expect["tensors"]:
        m = md.state_dict_metadata[t["name"]]
        if m.size != torch.Size(t["shape"]) or type(m.size) is not torch.Size:
            fail(f"{t['name']}: size {m.size!r}")
        p = m.properties
        if (p.dtype, p.layout, p.requires_grad, p.memory_format, p.pin_memory) != (
            DTYPES[t["dtype"]], torch.strided, False, torch.contiguous_format, False
        ):
            fail(f"{t['name']}: properties {p}")
        chunks = [[list(c.offsets), list(c.sizes)] for c in m.chunks]
        if chunks != t["chunks"]:
            fail(f"{t['name']}: chunks {chunks} != {t['chunks']}")
        if md.planner_data.get(t["name"]) != (t["name"],):
            fail(f"{t['name']}: planner_data {md.planner_data.get(t['name'])!r}")
    if len(md.storage_data) != len(expect["storage"]):
        fail(f"{len(md.storage_data)} storage entries, expected {len(expect['storage'])}")
    for (index, info), s in zip(md.storage_data.items(), expect["storage"]):
        if index != MetadataIndex(s["fqn"], s["offsets"]) or index.index != s["index"]:
            fail(f"storage key {index} != {s}")
        got = (info.relative_path, info.offset, info.length, info.transform_descriptors)
        if got != (s["path"], s["offset"], s["length"], None):
            fail(f"storage of {index}: {got} != {s}")
    if md.version != "1.0.0":
        fail(f"version {md.version!r}")
    print(f"metadata: {len(md.state_dict_metadata)} tensors, {len(md.storage_data)} stored chunks")


def check_load(folder, expect):
    state = {t["name"]: torch.zeros(t["shape"], dtype=DTYPES[t["dtype"]]) for t in expect["tensors"]}
    with warnings.catch_warnings():
        # No process group: DCP warns that it loads single-process.
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=folder)
    for t in expect["tensors"]:
        if not torch.equal(state[t["name"]], expected_value(t)):
            fail(f"dcp.load: {t['name']} = {state[t['name']]}")
    print(f"dcp.load: {len(state)} tensors equal")


def check_torch_save(folder, expect):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "full.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp_to_torch_save(folder, out)
        full = torch.load(out, weights_only=True)
    for t in expect["tensors"]:
        got = full[t["name"]]
        if got.dtype != DTYPES[t["dtype"]] or not torch.equal(got, expected_value(t)):
            fail(f"dcp_to_torch_save: {t['name']} = {got}")
    print(f"dcp_to_torch_save: {len(full)} tensors equal")


def main():
    folder, expect_path = sys.argv[1], sys.argv[2]
    expect = json.loads(Path(expect_path).read_text())
    check_metadata(folder, expect)
    check_load(folder, expect)
    check_torch_save(folder, expect)
    print("ok")


if __name__ == "__main__":
    main()
