"""PyTorch DCP and Hugging Face checkpoints through the package.

The cases of ``../shared/conformance/torch`` load whole through
``load_distributed_checkpoint``; ``reshard`` writes DCP folders that
``torch.distributed.checkpoint.load`` reads with its default reader, and
Hugging Face folders that ``safetensors`` and the index rules accept.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes  # noqa: F401  (registers bfloat16 for safetensors.numpy)
import numpy as np
import pytest
from safetensors.numpy import load_file

import shardplan as sp

from conftest import REPO, SHARED, is_ci

TORCH_CASES = SHARED / "conformance" / "torch"
if not TORCH_CASES.is_dir() and not is_ci():
    # The copies of the five cases kept in the repository.
    TORCH_CASES = REPO / "crates" / "shardplan" / "tests" / "it" / "fixtures" / "torch"
CASES = ["fsdp4_uneven", "tp2_dp2", "safetensors_format_tp4", "hf_writer_fsdp2", "hf_sharded_llama"]

if not TORCH_CASES.is_dir():  # pragma: no cover - depends on the machine
    if is_ci():
        raise RuntimeError(f"{TORCH_CASES} is missing under CI")
    pytest.skip(f"{TORCH_CASES} is absent: torch conformance not run", allow_module_level=True)


def source(case: str) -> Path:
    root = TORCH_CASES / case
    return root / "checkpoint" if (root / "checkpoint").is_dir() else root / "model"


def full(case: str) -> dict:
    return load_file(str(TORCH_CASES / case / "full.safetensors"))


def as_bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def rows_over(ranks: int, tensors: dict) -> sp.Strategy:
    """Dimension 0 of each tensor over ``ranks`` ranks (torch.chunk); scalars replicated."""
    mesh = sp.DeviceMesh([ranks], ["r"])
    layouts = {}
    for name, a in tensors.items():
        placements = ["Shard(0)"] if a.ndim else ["Replicate()"]
        layouts[name] = (sp.Layout.from_placements(mesh, list(a.shape), placements), sp_dtype(a))
    return sp.Strategy(f"rows{ranks}", mesh, layouts)


def sp_dtype(a: np.ndarray) -> str:
    import ml_dtypes

    if a.dtype == ml_dtypes.bfloat16:
        return "bf16"
    return {"float32": "f32", "float16": "f16", "int32": "i32", "int64": "i64"}[a.dtype.name]


@pytest.mark.parametrize("case", CASES)
def test_each_case_loads_whole(case):
    got = sp.load_distributed_checkpoint(source(case), None, None, 0)
    want = full(case)
    assert sorted(got) == sorted(want)
    for name, a in want.items():
        assert got[name].shape == a.shape, name
        assert as_bytes(got[name]) == as_bytes(a), name


@pytest.mark.parametrize("case", CASES)
def test_hugging_face_output_follows_the_index_rules(case, tmp_path):
    want = full(case)
    out = tmp_path / "hf"
    done = sp.reshard(source(case), out, format="hf", max_shard_size="1KB")
    assert len(done) == 1 and not done[0]["resumed"]
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    got = {}
    for s in shards:
        got.update(load_file(str(out / s)))
    assert {k: as_bytes(v) for k, v in got.items()} == {k: as_bytes(v) for k, v in want.items()}
    if len(shards) > 1:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"].values()) == set(shards)
        assert sorted(index["weight_map"]) == sorted(want)
        assert index["metadata"]["total_size"] == sum(a.nbytes for a in want.values())
        n = len(shards)
        assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    else:
        assert shards == ["model.safetensors"]


torch = __import__("torch") if is_ci() else pytest.importorskip("torch")


@pytest.mark.parametrize("ranks", [1, 3])
@pytest.mark.parametrize("case", CASES)
def test_torch_reads_our_dcp_folders(case, ranks, tmp_path):
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file as load_torch

    want = load_torch(str(TORCH_CASES / case / "full.safetensors"))
    out = tmp_path / "dcp"
    sp.reshard(source(case), out, format="dcp", dst_strategy=rows_over(ranks, full(case)))
    state = {k: torch.zeros_like(v) for k, v in want.items()}
    dcp.load(state, checkpoint_id=str(out), no_dist=True)
    for name, t in want.items():
        assert torch.equal(state[name], t), name


def test_dcp_saved_by_torch_with_every_dtype_reads_and_writes_back(tmp_path):
    """dcp.save of every dtype shardplan knows (uint16/32/64 go through
    torch.save's _rebuild_tensor_v3), read by shardplan and written again as
    DCP, which torch loads back equal."""
    import torch.distributed.checkpoint as dcp

    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
              torch.int16, torch.int8, torch.uint64, torch.uint32, torch.uint16, torch.uint8, torch.bool]
    state = {f"t{i}": (torch.arange(12) % 2 == 1 if d == torch.bool else torch.arange(12).to(d)).reshape(3, 4)
             for i, d in enumerate(dtypes)}
    dcp.save(state, checkpoint_id=str(tmp_path / "src"), no_dist=True)
    got = sp.load_distributed_checkpoint(tmp_path / "src")
    for name, t in state.items():
        assert got[name].tobytes() == t.contiguous().view(torch.uint8).numpy().tobytes(), name
    sp.reshard(tmp_path / "src", tmp_path / "again", format="dcp")
    back = {k: torch.zeros_like(v) for k, v in state.items()}
    dcp.load(back, checkpoint_id=str(tmp_path / "again"), no_dist=True)
    for name, t in state.items():
        assert torch.equal(back[name], t), name
