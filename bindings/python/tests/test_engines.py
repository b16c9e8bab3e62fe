"""Engine destinations: `reshard(..., engine="vllm")` writes vLLM's own
per-rank parameters, and `load_distributed_checkpoint(..., engine="vllm")`
reads one rank of them, equal to the golden files vLLM itself saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import shardplan as sp
from conftest import REPO

GOLDEN = REPO / "crates" / "shardplan" / "tests" / "it" / "fixtures" / "engines" / "vllm"

# case: (tp, ep)
CASES = {
    "llama_gqa_tp2": (2, False),
    "llama_gqa_tp4": (4, False),
    "qwen3_moe_tp2": (2, False),
    "qwen3_moe_tp2_ep": (2, True),
}


def golden(case: str, rank: int) -> dict:
    return load_file(str(GOLDEN / case / f"rank_{rank}.safetensors"))


def assert_same(actual: dict, expected: dict):
    assert list(actual) == list(expected) or sorted(actual) == sorted(expected)
    for name, want in expected.items():
        got = actual[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name


@pytest.mark.parametrize("case", sorted(CASES))
def test_reshard_writes_the_golden_ranks(case, tmp_path):
    tp, ep = CASES[case]
    out = tmp_path / "out"
    written = sp.reshard(GOLDEN / case / "source", out, engine="vllm", tp=tp, ep=ep)
    assert [w["rank"] for w in written] == list(range(tp))
    for w in written:
        r = w["rank"]
        path = out / f"rank_{r}" / "model.safetensors"
        assert Path(w["path"]) == path
        assert [Path(f) for f in w["files"]] == [path]
        assert w["bytes"] == path.stat().st_size
        assert w["resumed"] is False
        assert_same(load_file(str(path)), golden(case, r))


def test_reshard_one_rank_with_an_explicit_config(tmp_path):
    src = GOLDEN / "llama_gqa_tp2" / "source"
    written = sp.reshard(src, tmp_path, engine="vllm", tp=2, rank=1, config=src / "config.json")
    assert [w["rank"] for w in written] == [1]
    assert not (tmp_path / "rank_0").exists()
    assert_same(load_file(str(tmp_path / "rank_1" / "model.safetensors")), golden("llama_gqa_tp2", 1))


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_reads_the_golden_ranks(case):
    tp, ep = CASES[case]
    for r in range(tp):
        arrays = sp.load_distributed_checkpoint(GOLDEN / case / "source", rank=r, engine="vllm", tp=tp, ep=ep)
        assert_same(arrays, golden(case, r))


def test_the_cli_writes_the_same_files(tmp_path):
    src = GOLDEN / "qwen3_moe_tp2_ep" / "source"
    assert sp._shardplan.run_cli(
        ["shardplan", "reshard", "--src", str(src), "--engine", "vllm", "--tp", "2", "--ep", "--out", str(tmp_path / "cli")]
    ) == 0
    sp.reshard(src, tmp_path / "py", engine="vllm", tp=2, ep=True)
    for r in range(2):
        rel = Path(f"rank_{r}") / "model.safetensors"
        assert (tmp_path / "cli" / rel).read_bytes() == (tmp_path / "py" / rel).read_bytes()


def _usage(excinfo):
    assert excinfo.value.code == "shardplan::python::usage"


def test_engine_refuses_a_dst_strategy_or_a_format(tmp_path):
    src = GOLDEN / "llama_gqa_tp2" / "source"
    strategy = sp.Strategy("one", sp.DeviceMesh([1], ["x"]), {})
    with pytest.raises(sp.UsageError) as e:
        sp.reshard(src, tmp_path, engine="vllm", tp=2, dst_strategy=strategy)
    _usage(e)
    with pytest.raises(sp.UsageError) as e:
        sp.reshard(src, tmp_path, engine="vllm", tp=2, format="safetensors")
    _usage(e)
    with pytest.raises(sp.UsageError) as e:
        sp.load_distributed_checkpoint(src, dst_strategy=strategy, rank=0, engine="vllm", tp=2)
    _usage(e)
    assert not any(tmp_path.iterdir())


def test_unknown_engine_and_engine_arguments_without_engine_are_refused(tmp_path):
    src = GOLDEN / "llama_gqa_tp2" / "source"
    with pytest.raises(sp.UsageError) as e:
        sp.reshard(src, tmp_path, engine="sglang", tp=2)
    _usage(e)
    with pytest.raises(sp.UsageError) as e:
        sp.reshard(src, tmp_path, tp=2)
    _usage(e)
    with pytest.raises(sp.UsageError) as e:
        sp.load_distributed_checkpoint(src, rank=0, ep=True)
    _usage(e)


def test_a_degree_the_model_does_not_split_into_is_a_reshard_error(tmp_path):
    src = GOLDEN / "llama_gqa_tp2" / "source"
    with pytest.raises(sp.ReshardError) as e:
        sp.reshard(src, tmp_path, engine="vllm", tp=3)
    assert e.value.code == "shardplan::engine::degree"


def test_a_missing_config_is_a_file_error(tmp_path):
    src = GOLDEN / "llama_gqa_tp2" / "source"
    with pytest.raises(sp.FileError) as e:
        sp.load_distributed_checkpoint(src, rank=0, engine="vllm", tp=2, config=tmp_path / "none.json")
    assert e.value.code == "shardplan::engine::io"
    assert e.value.file == str(tmp_path / "none.json")
