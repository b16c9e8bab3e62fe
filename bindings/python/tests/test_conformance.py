"""Every MindSpore conformance case (curated and random) through
``load_distributed_checkpoint`` for every destination rank, compared bit
for bit with MindSpore's ``expected_safetensors/`` read by the
``safetensors`` package (a reader independent of shardplan's)."""

from __future__ import annotations

import warnings

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
from safetensors.numpy import load_file

import shardplan as sp
from shardplan.testing import expected_slice
from conftest import FIXTURE_CASES, case_dirs, read_case, shared_dir


def expected_rank(d: Path, k: int) -> Dict[str, np.ndarray]:
    """Every tensor of ``expected_safetensors/rank_k`` (several files in
    MindSpore's by-stage mode)."""
    out: Dict[str, np.ndarray] = {}
    for f in sorted((d / "expected_safetensors" / f"rank_{k}").glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def strategy_arg(d: Path, case: dict, side: str):
    f = case["files"][f"{side}_strategy_file"]
    return None if f is None else str(d / f)


def kind(case: dict) -> str:
    err = case.get("expected_error") or {}
    if err.get("kind") == "mindspore_internal_failure":
        return "internal_failure"
    if err:
        return "refusal"
    if "suspect" in case.get("tags", []):
        return "suspect"
    return "equal"


def value_rule(case: dict, name: str) -> np.ndarray:
    """The full tensor of parameter ``name``: ``dtype(arange(n) + 1000*k)``."""
    names = list(case["params"])
    p = case["params"][name]
    k = names.index(name)
    n = int(np.prod(p["full_shape"], dtype=np.int64))
    dtype = sp.numpy_dtype({"float32": "f32", "float16": "f16", "bfloat16": "bf16", "int32": "i32"}[p["dtype"]])
    return (np.arange(n, dtype=np.float64) + 1000 * k).astype(dtype).reshape(p["full_shape"])


def run_case(d: Path) -> Tuple[str, str]:
    """Loads every destination rank of case ``d``; returns its kind and
    the outcome (``equal``, ``differs: ...``, ``refused: ...``,
    ``follows_layout``)."""
    case = read_case(d)
    src, dst = strategy_arg(d, case, "src"), strategy_arg(d, case, "dst")
    ckpt = d / "src_safetensors"
    if not ckpt.is_dir():
        return kind(case), "refused: no checkpoints"
    ranks = case["dst_device_num"] if dst is not None else 1
    loaded = {}
    try:
        for k in range(ranks):
            with warnings.catch_warnings():
                # MindSpore's copy-through rules, announced for every case.
                warnings.simplefilter("ignore", sp.ShardplanWarning)
                loaded[k] = sp.load_distributed_checkpoint(ckpt, src, dst, rank=k)
    except sp.Error as e:
        assert e.code, f"{d.name}: an error without a code: {e!r}"
        return kind(case), f"refused: {e.code}"
    if not (d / "expected_safetensors").is_dir():
        return kind(case), follows_layout(case, d, dst, loaded)
    for k, ours in loaded.items():
        theirs = expected_rank(d, k)
        if sorted(ours) != sorted(theirs):
            return kind(case), f"differs: rank {k} holds {sorted(ours)}, MindSpore {sorted(theirs)}"
        for name, want in theirs.items():
            got = ours[name]
            if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
                if kind(case) == "suspect":
                    return kind(case), follows_layout(case, d, dst, loaded)
                return kind(case), f"differs: rank {k} `{name}`"
    return kind(case), "equal"


def follows_layout(case: dict, d: Path, dst, loaded) -> str:
    """Whether every laid-out tensor of every rank is the value rule's
    slice under the destination strategy."""
    if dst is None:
        strategy = None
    else:
        tensors = {n: (p["full_shape"], p["dtype"]) for n, p in case["params"].items()}
        files = [str(d / f) for f in [case["files"]["dst_strategy_file"]]]
        strategy = sp.read_strategy(files, tensors=tensors)
    checked = 0
    for k, held in loaded.items():
        for name, got in held.items():
            full = value_rule(case, name)
            if strategy is None or not in_source(case, name):
                # MindSpore's rule: a parameter without a source layout is
                # copied through whole.
                want = full
            elif name in strategy:
                want = expected_slice(strategy, name, k, full)
            else:
                continue
            if want is None or got.shape != want.shape or got.tobytes() != want.tobytes():
                return f"differs: rank {k} `{name}` is not its slice"
            checked += 1
    return "follows_layout" if checked else "differs: nothing was checked"


def in_source(case: dict, name: str) -> bool:
    layouts = case.get("src_layouts")
    return layouts is None or any(name in stage for stage in layouts)


ACCEPTED = {
    "equal": ("equal",),
    "refusal": ("refused",),
    "internal_failure": ("refused", "follows_layout"),
    "suspect": ("differs", "follows_layout"),
}


def all_cases():
    dirs = []
    for sub in ("conformance/mindspore", "conformance/mindspore_random"):
        root = shared_dir(sub)
        if root is not None:
            dirs += case_dirs(root)
    return dirs or case_dirs(FIXTURE_CASES)


def test_every_case_loads_as_mindspore_wrote_it():
    dirs = all_cases()
    failures, reported = [], []
    for d in dirs:
        k, outcome = run_case(d)
        if not outcome.startswith(ACCEPTED[k]):
            failures.append(f"{d.name} ({k}): {outcome}")
        elif k != "equal":
            reported.append(f"{d.name} ({k}): {outcome}")
    print("reported separately:\n  " + "\n  ".join(reported))
    assert not failures, f"{len(failures)} of {len(dirs)} cases failed:\n" + "\n".join(failures)
    assert len(dirs) >= 9


def test_a_file_list_is_rank_ordered():
    d = FIXTURE_CASES / "tp4_row_to_tp2_row"
    case = read_case(d)
    files = [str(next((d / "src_safetensors" / f"rank_{r}").glob("*.safetensors"))) for r in range(4)]
    src, dst = strategy_arg(d, case, "src"), strategy_arg(d, case, "dst")
    for k in range(2):
        from_list = sp.load_distributed_checkpoint(files, src, dst, rank=k)
        from_dir = sp.load_distributed_checkpoint(d / "src_safetensors", src, dst, rank=k)
        assert {n: a.tobytes() for n, a in from_list.items()} == {n: a.tobytes() for n, a in from_dir.items()}
        assert {n: a.tobytes() for n, a in from_list.items()} == {
            n: a.tobytes() for n, a in expected_rank(d, k).items()
        }


def test_no_predict_strategy_gives_whole_tensors():
    d = FIXTURE_CASES / "tp4_row_to_tp2_row"
    case = read_case(d)
    whole = sp.load_distributed_checkpoint(d / "src", strategy_arg(d, case, "src"), None)
    for name, p in case["params"].items():
        assert whole[name].shape == tuple(p["full_shape"])
        assert np.array_equal(whole[name], value_rule(case, name))


def test_strategies_by_name_or_by_mindspores_alias():
    d = FIXTURE_CASES / "tp4_row_to_tp2_row"
    case = read_case(d)
    src, dst = strategy_arg(d, case, "src"), strategy_arg(d, case, "dst")
    by_position = sp.load_distributed_checkpoint(d / "src", src, dst, 1)
    by_name = sp.load_distributed_checkpoint(d / "src", src_strategy=src, dst_strategy=dst, rank=1)
    by_alias = sp.load_distributed_checkpoint(d / "src", train_strategy=src, predict_strategy=dst, rank=1)
    mixed = sp.load_distributed_checkpoint(d / "src", src, predict_strategy=dst, rank=1)
    for got in (by_name, by_alias, mixed):
        assert {n: a.tobytes() for n, a in got.items()} == {n: a.tobytes() for n, a in by_position.items()}
    for kw in ({"src_strategy": src, "train_strategy": src}, {"dst_strategy": dst, "predict_strategy": dst}):
        with pytest.raises(sp.UsageError) as e:
            sp.load_distributed_checkpoint(d / "src", **kw)
        assert e.value.code == "shardplan::python::usage"
    with pytest.raises(sp.UsageError):
        sp.load_distributed_checkpoint(d / "src", src, train_strategy=src)


def test_a_rank_outside_the_destination_is_refused():
    d = FIXTURE_CASES / "tp4_row_to_tp2_row"
    case = read_case(d)
    with pytest.raises(sp.ReshardError) as e:
        sp.load_distributed_checkpoint(d / "src", strategy_arg(d, case, "src"), strategy_arg(d, case, "dst"), rank=2)
    assert e.value.code == "shardplan::reshard::no_such_rank"
    assert "0 to 1" in e.value.help
