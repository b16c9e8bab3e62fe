"""Plans from Python: the summary equals the CLI's on every bundled spec;
pieces, the numpy table, explanations and JSON round trips agree."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import shardplan as sp
from conftest import SPECS

BUNDLED = sorted(p for p in SPECS.glob("*.yaml"))


def ends(spec: sp.Spec):
    src, dst = spec.transfer
    return spec.strategy(src), spec.strategy(dst)


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_summary_equals_the_cli_json_summary(path):
    spec = sp.load(path)
    src, dst = ends(spec)
    ours = sp.plan(src, dst)
    cli = subprocess.run(
        [sys.executable, "-m", "shardplan._cli", "plan", str(path), "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(cli.stdout)
    assert ours.summary == doc["summary"]
    assert ours.summary["total_bytes"] == ours.summary["lower_bound_bytes"]
    # The JSON the package writes is the CLI's, byte for byte.
    assert json.loads(ours.to_json()) == doc


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_numpy_table_matches_the_pieces(path):
    spec = sp.load(path)
    src, dst = ends(spec)
    p = sp.plan(src, dst)
    table = p.to_numpy()
    pieces = p.pieces()
    assert len(table) == len(pieces) == p.summary["pieces"] == len(p)
    assert int(table["bytes"].sum()) == p.summary["total_bytes"] + p.summary["local_bytes"]
    assert int(table["bytes"][~table["local"]].sum()) == p.summary["total_bytes"]
    for row, piece in zip(table[:200], pieces[:200]):
        n = int(row["ndim"])
        assert p.tensors[row["tensor"]] == piece.tensor
        assert (int(row["src_rank"]), int(row["dst_rank"])) == (piece.src_rank, piece.dst_rank)
        assert list(row["offset"][:n]) == piece.offset
        assert list(row["extent"][:n]) == piece.extent
        assert list(row["src_offset"][:n]) == piece.src_offset
        assert list(row["dst_offset"][:n]) == piece.dst_offset
        assert all(row["extent"][n:] == 1) and all(row["offset"][n:] == 0)
        # Bytes are the box's volume times the element size.
        size = sp.numpy_dtype(src.dtype(piece.tensor)).itemsize
        assert int(row["bytes"]) == int(np.prod(piece.extent, dtype=np.int64)) * size


def test_pieces_filter_and_cover_each_destination_once():
    spec = sp.load(SPECS / "llama3-8b-dp2tp4-to-tp2.yaml")
    src, dst = ends(spec)
    p = sp.plan(src, dst)
    name = p.tensors[0]
    for rank in range(dst.mesh.size):
        mine = p.pieces(tensor=name, dst_rank=rank)
        assert all(x.dst_rank == rank and x.tensor == name for x in mine)
        region = dst.region(name, rank)
        volume = sum(int(np.prod(x.extent)) for x in mine)
        assert volume == (0 if region is None else int(np.prod(region[1])))
    assert all(x.src_rank == 3 for x in p.pieces(src_rank=3))


def test_json_round_trip_and_a_tampered_plan(tmp_path):
    spec = sp.load(SPECS / "dtensor-notation.yaml")
    src, dst = ends(spec)
    p = sp.plan(src, dst)
    out = tmp_path / "plan.json"
    p.to_json(out)
    back = sp.Plan.from_json(out, src, dst)
    assert back.summary == p.summary and back.to_json() == p.to_json()
    back.verify()
    doc = json.loads(out.read_text())
    tensor = next(t for t in doc["tensors"] if t["pieces"])
    # A source rank outside the mesh: the verifier names tensor and rank.
    tensor["pieces"][0]["src_rank"] = 99
    out.write_text(json.dumps(doc))
    with pytest.raises(sp.PlanDefect) as e:
        sp.Plan.from_json(out, src, dst)
    assert e.value.code == "shardplan::verify::piece"
    assert e.value.tensor == tensor["name"]
    assert e.value.rank == tensor["pieces"][0]["dst_rank"]
    # Bytes that disagree with the extent: the reader names the file.
    tensor["pieces"][0]["src_rank"] = 0
    tensor["pieces"][0]["bytes"] += 1
    out.write_text(json.dumps(doc))
    with pytest.raises(sp.PlanFileError) as e:
        sp.Plan.from_json(out, src, dst)
    assert e.value.code == "shardplan::formats::plan_json::piece_bytes"
    assert e.value.file == str(out)


def test_plan_is_the_extensions_and_writes_through_the_rust_writer(tmp_path):
    from shardplan import _shardplan

    assert sp.Plan is _shardplan.Plan
    src, dst = ends(sp.load(SPECS / "dtensor-notation.yaml"))
    p = sp.plan(src, dst)
    out = tmp_path / "plan.json"
    assert p.to_json(str(out)) == out.read_text()
    # No temporary file is left beside it.
    assert sorted(x.name for x in tmp_path.iterdir()) == ["plan.json"]
    with pytest.raises(sp.FileError) as e:
        p.to_json(tmp_path / "no" / "such" / "plan.json")
    assert e.value.code == "shardplan::python::write"
    assert e.value.file == str(tmp_path / "no" / "such" / "plan.json")
    with pytest.raises(sp.FileError) as e:
        sp.Plan.from_json(tmp_path / "missing.json", src, dst)
    assert e.value.code == "shardplan::python::read"
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(sp.PlanFileError) as e:
        sp.Plan.from_json(bad, src, dst)
    assert e.value.code == "shardplan::formats::plan_json" and "byte 7" in str(e.value)
    table = p.to_numpy()
    assert table.flags.writeable and len(table) == len(p)
    first = p.pieces()[0]
    assert (int(table["src_rank"][0]), list(table["extent"][0][: len(first.extent)])) == (
        first.src_rank,
        first.extent,
    )


def test_explain_and_report():
    spec = sp.load(SPECS / "llama3-8b-dp2tp4-to-tp2.yaml")
    src, dst = ends(spec)
    p = sp.plan(src, dst, replicas="min_files")
    assert p.replicas == "min_files"
    name = p.tensors[0]
    text = p.explain(name)
    assert text.startswith(f"tensor {name}")
    assert "rank 0 receives" in text
    assert "lower bound" in p.report()


def test_balance_meets_the_send_bound():
    spec = sp.load(SPECS / "llama3-8b-dp2tp4-to-tp2.yaml")
    src, dst = ends(spec)
    s = sp.plan(src, dst, replicas="balance").summary
    assert s["max_send_bytes"] == s["max_send_lower_bound_bytes"]


def test_derive_gives_a_strategy_to_plan_to():
    spec = sp.load(SPECS / "llama3-8b-dp2tp4-to-tp2.yaml")
    train = spec.strategy(spec.transfer[0])
    infer = sp.derive(train, devices=2, tp=2, pp=1)
    assert infer.name == "infer" and infer.mesh.size == 2
    assert "tp" in infer.derivation
    onto = sp.derive(train, target=sp.DeviceMesh(shape=[2], axes=["tp"]), name="on_mesh")
    assert [onto.layout(t) == infer.layout(t) for t in infer.tensors] == [True] * len(infer)
    sp.plan(train, infer).verify()
