"""Every exception class, raised from a bad input, with its code, help and
where known the file, line and column or the tensor and rank."""

from __future__ import annotations

import shutil

import pytest

import shardplan as sp
from conftest import FIXTURE_CASES, SPECS, read_case

MESH = sp.DeviceMesh(shape=[2], axes=["tp"])


def strategy(name, mesh, shape=(4, 4), placements=("Shard(0)",), dtype="f32", tensor="w"):
    lay = sp.Layout.from_placements(mesh, list(shape), list(placements))
    return sp.Strategy(name, mesh, {tensor: (lay, dtype)})


def test_every_class_is_an_error():
    for cls in (
        sp.UsageError,
        sp.FileError,
        sp.SpecError,
        sp.LayoutError,
        sp.StrategyError,
        sp.DeriveError,
        sp.PlanError,
        sp.PlanDefect,
        sp.PlanFileError,
        sp.CheckpointError,
        sp.StrategyFileError,
        sp.ReshardError,
    ):
        assert issubclass(cls, sp.Error)
    assert issubclass(sp.UsageError, ValueError)
    assert issubclass(sp.FileError, OSError)


def test_usage_error():
    with pytest.raises(sp.UsageError) as e:
        sp.DeviceMesh(shape=[2], axes=["dp", "tp"])
    assert e.value.code == "shardplan::python::usage" and "one size per axis" in e.value.help
    with pytest.raises(sp.UsageError):
        sp.plan(strategy("a", MESH), strategy("b", MESH), replicas="nearest")
    with pytest.raises(sp.UsageError):
        strategy("a", MESH, dtype="complex64")


def test_file_error():
    with pytest.raises(sp.FileError) as e:
        sp.load("no/such/spec.yaml")
    assert e.value.file == "no/such/spec.yaml"
    assert e.value.code == "shardplan::spec::load::read"
    with pytest.raises(sp.FileError):
        sp.check(["no/such/spec.yaml"])


def test_spec_error_names_file_line_and_column():
    path = SPECS / "invalid" / "unknown_axis.yaml"
    with pytest.raises(sp.SpecError) as e:
        sp.load(path)
    err = e.value
    assert err.code == "shardplan::spec::unknown_axis"
    assert err.file == str(path) and err.line > 0 and err.column > 0
    assert err.help
    assert any(d.code == err.code and d.line == err.line for d in err.diagnostics)


def test_layout_error():
    with pytest.raises(sp.LayoutError) as e:
        sp.DeviceMesh(shape=[0], axes=["tp"])
    assert e.value.code == "shardplan::layout::zero_axis"


def test_strategy_error():
    other = sp.DeviceMesh(shape=[4], axes=["tp"])
    lay = sp.Layout.from_placements(other, [4, 4], ["Shard(0)"])
    with pytest.raises(sp.StrategyError) as e:
        sp.Strategy("s", MESH, {"w": (lay, "f32")})
    assert e.value.code.startswith("shardplan::strategy::")


def test_derive_error():
    with pytest.raises(sp.DeriveError) as e:
        sp.derive(strategy("train", MESH), devices=3, tp=2)
    assert e.value.code.startswith("shardplan::derive::")


def test_plan_error():
    with pytest.raises(sp.PlanError) as e:
        sp.plan(strategy("a", MESH), strategy("b", MESH, tensor="v"))
    assert e.value.code.startswith("shardplan::plan")


def test_plan_file_error_names_line_and_column(tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text('{"format": "shardplan-plan",\n  "version": oops}')
    with pytest.raises(sp.PlanFileError) as e:
        sp.Plan.from_json(bad, strategy("a", MESH), strategy("b", MESH))
    assert (e.value.file, e.value.line) == (str(bad), 2)
    assert e.value.column > 0


def test_plan_defect(tmp_path):
    a, b = strategy("a", MESH), strategy("b", MESH, placements=["Replicate()"])
    p = sp.plan(a, b)
    out = tmp_path / "p.json"
    p.to_json(out)
    # The plan read against strategies it does not move between.
    with pytest.raises(sp.PlanDefect) as e:
        sp.Plan.from_json(out, a, strategy("b", MESH, placements=["Shard(1)"]))
    assert e.value.code.startswith("shardplan::verify::")
    assert e.value.tensor == "w"


def case(name):
    d = FIXTURE_CASES / name
    c = read_case(d)
    return d, str(d / c["files"]["src_strategy_file"]), str(d / c["files"]["dst_strategy_file"])


def test_checkpoint_error_names_the_file(tmp_path):
    d, src, dst = case("tp4_row_to_tp2_row")
    broken = tmp_path / "src"
    shutil.copytree(d / "src", broken)
    victim = next((broken / "rank_1").iterdir())
    victim.write_bytes(victim.read_bytes()[:40])
    with pytest.raises(sp.CheckpointError) as e:
        sp.load_distributed_checkpoint(broken, src, dst, rank=0)
    assert e.value.file == str(victim)
    assert e.value.code == "shardplan::formats::checkpoint::ckpt_record"
    assert e.value.help


def test_strategy_file_error(tmp_path):
    d, src, _ = case("tp4_row_to_tp2_row")
    bad = tmp_path / "strategy.json"
    bad.write_text("{not json")
    with pytest.raises(sp.StrategyFileError) as e:
        sp.load_distributed_checkpoint(d / "src", src, str(bad), rank=0)
    assert e.value.file == str(bad)
    assert e.value.code == "shardplan::formats::mindspore_strategy::json"
    assert (e.value.line, e.value.column) == (1, 2)


@pytest.mark.parametrize(
    "text, code, line",
    [
        # A file that does not read: the file, and for JSON syntax the line.
        ("{not json", "shardplan::formats::import::read", 1),
        ('{"parallel_layout_item": {"w": {"dev_matrix": [2]}}}', "shardplan::formats::import::read", None),
        # A layout that does not fit its tensor: no file to name.
        (
            '{"parallel_layout_item": {"w": {"dev_matrix": [2], "tensor_map": [0, -1], "tensor_shape": [3, 4]}}}',
            "shardplan::formats::mindspore_strategy::layout",
            None,
        ),
    ],
)
def test_read_strategy_errors_by_code(tmp_path, text, code, line):
    bad = tmp_path / "strategy.json"
    bad.write_text(text)
    with pytest.raises(sp.StrategyFileError) as e:
        sp.read_strategy([bad])
    assert e.value.code == code and e.value.help
    assert e.value.file == (str(bad) if code.endswith("::read") else None)
    assert e.value.line == line


def test_reshard_error_for_device_counts_mindspore_refuses(tmp_path):
    d = FIXTURE_CASES / "tp4_row_to_tp2_row"
    c = read_case(d)
    three = sp.Strategy(
        "three",
        sp.DeviceMesh(shape=[3], axes=["tp"]),
        {
            n: (sp.Layout.replicated(sp.DeviceMesh(shape=[3], axes=["tp"]), p["full_shape"]), "f32")
            for n, p in c["params"].items()
        },
    )
    with pytest.raises(sp.ReshardError) as e:
        sp.load_distributed_checkpoint(d / "src", str(d / c["files"]["src_strategy_file"]), three)
    assert e.value.code == "shardplan::reshard::indivisible_ranks"
    # ... and accepted when asked for.
    got = sp.load_distributed_checkpoint(
        d / "src", str(d / c["files"]["src_strategy_file"]), three, rank=2, any_device_count=True
    )
    assert sorted(got) == sorted(c["params"])


def test_classes_are_the_extensions_and_take_keyword_attributes():
    import pickle

    from shardplan import _shardplan

    for name in ("Error", "UsageError", "FileError", "SpecError", "PlanDefect", "ReshardError"):
        assert getattr(sp, name) is getattr(_shardplan, name)
    e = sp.UsageError("bad", code="shardplan::python::usage", help="fix it", tensor="w", rank=3)
    assert (e.message, e.code, e.help, e.tensor, e.rank, e.file, e.diagnostics) == (
        "bad", "shardplan::python::usage", "fix it", "w", 3, None, [])
    assert str(e) == "[shardplan::python::usage] bad\n  help: fix it" and e.args == ("bad",)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is sp.UsageError and (back.code, back.rank) == (e.code, 3)
    assert str(sp.Error("plain")) == "plain"
    with pytest.raises(TypeError):
        sp.Error("m", "not keyword")
