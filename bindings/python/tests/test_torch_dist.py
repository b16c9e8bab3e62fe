"""shardplan.torch over torch.distributed: gloo on CPU, one process per
rank on localhost. Each scenario runs in spawned processes under a time
limit, so a hang fails the test instead of stalling the run."""

from __future__ import annotations

import faulthandler
import os
import sys
import time
import traceback

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import is_ci

torch = __import__("torch") if is_ci() else pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import shardplan as sp  # noqa: E402
import shardplan.torch as spt  # noqa: E402

TIMEOUT = 120


def full_tensor(k: int, shape, dtype) -> "torch.Tensor":
    """Tensor ``k``: arange + 1000 k, in its dtype."""
    n = 1
    for s in shape:
        n *= s
    return (torch.arange(n, dtype=torch.float64) + 1000 * k).to(dtype).reshape(shape)


def strategy(name, mesh_shape, axes, tensors, placements):
    mesh = sp.DeviceMesh(mesh_shape, axes)
    return sp.Strategy(
        name,
        mesh,
        {t: (sp.Layout.from_placements(mesh, list(shape), placements[t]), dt) for t, (shape, dt) in tensors.items()},
    )


TENSORS = {"a": ([10, 6], "bf16"), "b": ([7, 5], "f32"), "c": ([6], "f16")}
DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32, "f16": torch.float16}


def slices(strat, rank):
    """What mesh rank ``rank`` of ``strat`` holds of the full tensors."""
    out = {}
    for k, (t, (shape, dt)) in enumerate(TENSORS.items()):
        box = strat.region(t, rank)
        if box is None:
            continue
        whole = full_tensor(k, shape, DTYPES[dt])
        out[t] = whole[tuple(slice(o, o + e) for o, e in zip(*box))].clone()
    return out


def check(out, strat, rank):
    want = slices(strat, rank)
    assert sorted(out) == sorted(want), (rank, sorted(out))
    for t in want:
        assert torch.equal(out[t], want[t]), (rank, t)


def scenario_disjoint(rank, world, buffer):
    """FSDP-n on the first two thirds of the processes to TP-n/2 on the
    rest (FSDP-4 to TP-2 on 6 processes, FSDP-8 to TP-4 on 12)."""
    n = world * 2 // 3
    src = strategy("fsdp", [n], ["dp"], TENSORS, {t: ["Shard(0)"] for t in TENSORS})
    dst = strategy("tp", [n // 2], ["tp"], TENSORS, {"a": ["Shard(1)"], "b": ["Shard(0)"], "c": ["Replicate()"]})
    plan = sp.plan(src, dst)
    local = slices(src, rank) if rank < n else {}
    out = spt.redistribute(local, plan, src_ranks=range(n), dst_ranks=range(n, world), max_buffer_bytes=buffer)
    if rank >= n:
        check(out, dst, rank - n)
    else:
        assert out == {}


def scenario_uneven(rank, world, buffer):
    """3 ranks to 2 overlapping ones, uneven rows, replicated sources."""
    src = strategy("three", [3], ["r"], TENSORS, {"a": ["Shard(0)"], "b": ["Shard(1)"], "c": ["Replicate()"]})
    dst = strategy("two", [2], ["r"], TENSORS, {"a": ["Shard(1)"], "b": ["Shard(0)"], "c": ["Shard(0)"]})
    plan = sp.plan(src, dst)
    out = spt.redistribute(slices(src, rank), plan, src_ranks=[0, 1, 2], dst_ranks=[1, 2], max_buffer_bytes=buffer)
    if rank in (1, 2):
        check(out, dst, rank - 1)


def scenario_mismatch(rank, world, buffer):
    """Rank 1 passes a wrong source tensor: every process raises."""
    src = strategy("three", [3], ["r"], TENSORS, {t: ["Shard(0)"] for t in TENSORS})
    dst = strategy("one", [1], ["r"], TENSORS, {t: ["Replicate()"] for t in TENSORS})
    plan = sp.plan(src, dst)
    local = slices(src, rank)
    if rank == 1:
        local["b"] = torch.zeros(3, 3)
    with pytest.raises(sp.UsageError) as e:
        spt.redistribute(local, plan, src_ranks=[0, 1, 2], dst_ranks=[0], max_buffer_bytes=buffer)
    assert "source rank 1: tensor `b`" in str(e.value)


def scenario_dtensor(rank, world, buffer):
    """Shard(0) to Shard(1) on the same mesh, against DTensor.redistribute;
    then across meshes (4 ranks to the 2 of another mesh), which
    DTensor.redistribute refuses."""
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("dp",))
    whole = full_tensor(0, [10, 7], torch.float32)
    dt = distribute_tensor(whole, mesh, [Shard(0)])
    assert spt.layout_of(dt).to_placements() == ["Shard(0)"]
    ours = spt.redistribute_dtensors({"w": dt}, mesh, {"*": [Shard(1)]}, max_buffer_bytes=buffer)
    theirs = dt.redistribute(mesh, [Shard(1)])
    assert torch.equal(ours["w"].to_local(), theirs.to_local())
    other = DeviceMesh("cpu", [0, 1], mesh_dim_names=("tp",))
    moved = spt.redistribute_dtensors({"w": dt}, other, {"*": [Shard(0)]}, max_buffer_bytes=buffer)
    if rank < 2:
        assert torch.equal(moved["w"].to_local(), whole[rank * 5 : rank * 5 + 5])
        assert torch.equal(moved["w"].full_tensor(), whole)
    else:
        assert moved == {}


SCENARIOS = {
    "disjoint": scenario_disjoint,
    "uneven": scenario_uneven,
    "mismatch": scenario_mismatch,
    "dtensor": scenario_dtensor,
}


def _worker(rank, name, world, store, buffer, in_place_bytes):
    faulthandler.enable()  # a process that aborts says where
    # Every process must make the same choice of what goes in place.
    spt.IN_PLACE_BYTES = in_place_bytes
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        SCENARIOS[name](rank, world, buffer)
        # No process tears gloo down while another still talks to it: doing
        # so aborted a process now and then ("terminate called without an
        # active exception", a process that had finished its part early).
        dist.barrier()
    except BaseException:
        # The first process to fail is the one to read; the others only
        # see their peer's connection close.
        traceback.print_exc()
        sys.stderr.write(f"(process {rank} of scenario {name} failed above)\n")
        raise
    finally:
        dist.destroy_process_group()


def run(name, world, tmp_path, buffer=256 << 20, in_place_bytes=spt.IN_PLACE_BYTES):
    """Scenario ``name`` on ``world`` processes; ``in_place_bytes`` 1 sends
    every chunk that is one run of bytes in its destination alone, received
    in place, as only large chunks are by default."""
    store = tmp_path / f"store-{name}-{buffer}-{in_place_bytes}"
    ctx = mp.start_processes(_worker, args=(name, world, str(store), buffer, in_place_bytes), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.time() + TIMEOUT
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"scenario {name} did not finish in {TIMEOUT} s (a hang)")


@pytest.mark.parametrize("buffer, in_place", [(256 << 20, 1), (2, spt.IN_PLACE_BYTES)])
def test_fsdp4_to_tp2_on_other_processes(tmp_path, buffer, in_place):
    run("disjoint", 6, tmp_path, buffer, in_place)


def test_fsdp8_to_tp4_on_other_processes(tmp_path):
    run("disjoint", 12, tmp_path)


@pytest.mark.parametrize("buffer, in_place", [(256 << 20, spt.IN_PLACE_BYTES), (6, 1), (256 << 20, 1)])
def test_uneven_three_to_two_overlapping(tmp_path, buffer, in_place):
    run("uneven", 3, tmp_path, buffer, in_place)


@pytest.mark.parametrize("buffer, in_place", [(256 << 20, spt.IN_PLACE_BYTES), (4, 1)])
def test_dtensors_within_and_across_meshes(tmp_path, buffer, in_place):
    run("dtensor", 4, tmp_path, buffer, in_place)


def test_a_wrong_local_tensor_raises_everywhere(tmp_path):
    run("mismatch", 3, tmp_path)


def scenario_replay(rank, world, buffer):
    """A Transfer built once and run every step, the second time into the
    inference weights of the first; then a wrong destination tensor raises
    everywhere."""
    src = strategy("fsdp4", [4], ["dp"], TENSORS, {t: ["Shard(0)"] for t in TENSORS})
    dst = strategy("tp2", [2], ["tp"], TENSORS, {"a": ["Shard(1)"], "b": ["Shard(0)"], "c": ["Replicate()"]})
    transfer = spt.Transfer(sp.plan(src, dst), src_ranks=range(4), dst_ranks=[4, 5], max_buffer_bytes=buffer)
    start = slices(src, rank) if rank < 4 else {}
    weights = transfer(start)
    for step in (1, 2):
        local = {t: x + step for t, x in start.items()}
        again = transfer(local, out=weights)
        if rank >= 4:
            assert all(again[t] is weights[t] for t in weights)
            want = slices(dst, rank - 4)
            for t in want:
                assert torch.equal(again[t], want[t] + step), (rank, t, step)
    bad = {t: x.t() if t == "a" else x for t, x in weights.items()} if rank == 5 else weights
    with pytest.raises(sp.UsageError) as e:
        transfer(local, out=bad)
    assert "destination rank 1: tensor `a`" in str(e.value)


SCENARIOS["replay"] = scenario_replay


@pytest.mark.parametrize("buffer, in_place", [(256 << 20, 1), (5, spt.IN_PLACE_BYTES)])
def test_a_transfer_replays_into_the_weights_it_made(tmp_path, buffer, in_place):
    run("replay", 6, tmp_path, buffer, in_place)


def scenario_strided(rank, world, buffer):
    """FSDP2 over tensor parallelism, `[_StridedShard(0, sf=2), Shard(0)]`
    on a 2 x 2 mesh, even and uneven: its layout is what torch puts on each
    rank; it moves across meshes, and into it, as torch would distribute
    it."""
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.placement_types import _StridedShard

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    flat = init_device_mesh("cpu", (world,), mesh_dim_names=("all",))
    other = DeviceMesh("cpu", [0, 1], mesh_dim_names=("tp",))
    strided = [_StridedShard(0, split_factor=2), Shard(0)]
    for k, shape in enumerate(([8, 6], [10, 6])):
        whole = full_tensor(k, shape, torch.bfloat16)
        # Local splits only: torch scatters an uneven _StridedShard nowhere.
        dt = distribute_tensor(whole, mesh, strided, src_data_rank=None)
        offset, extent = spt.layout_of(dt).region(rank)
        assert torch.equal(dt.to_local(), whole[tuple(slice(o, o + e) for o, e in zip(offset, extent))]), (rank, shape)
        same = spt.redistribute_dtensors({"w": dt}, mesh, {"w": [Replicate(), Shard(1)]}, max_buffer_bytes=buffer)
        assert torch.equal(same["w"].to_local(), dt.redistribute(mesh, [Replicate(), Shard(1)]).to_local())
        moved = spt.redistribute_dtensors({"w": dt}, other, {"*": [Shard(1)]}, max_buffer_bytes=buffer)
        if rank < 2:
            assert torch.equal(moved["w"].full_tensor(), whole)
        back = spt.redistribute_dtensors(
            {"w": distribute_tensor(whole, flat, [Shard(1)])}, mesh, {"*": strided}, max_buffer_bytes=buffer
        )
        assert back["w"].placements == tuple(strided)
        assert torch.equal(back["w"].to_local(), dt.to_local()), (rank, shape)
        assert torch.equal(back["w"].full_tensor(), whole)
    lone = distribute_tensor(full_tensor(0, [8], torch.float32), flat, [Shard(0)])
    with pytest.raises(sp.UsageError) as e:
        spt.redistribute_dtensors({"v": lone}, mesh, {"*": [_StridedShard(0, split_factor=2), Replicate()]})
    assert "tensor `v`: mesh rank 0 holds rows [0, 1, 4, 5]" in str(e.value)


SCENARIOS["strided"] = scenario_strided


@pytest.mark.parametrize("buffer", [256 << 20, 7])
def test_strided_shards_of_fsdp2_over_tp(tmp_path, buffer):
    run("strided", 4, tmp_path, buffer)


def test_strided_boxes_follow_torchs_example():
    """The example of `_StridedShard`'s docs: ranks (0, 1) and (1, 0) hold
    rows 4-5 and 2-3."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    boxes = spt._strided_boxes([8, 8], [2, 2], [_StridedShard(0, split_factor=2), Shard(0)])
    assert boxes == {0: ([0, 0], [2, 8]), 1: ([4, 0], [2, 8]), 2: ([2, 0], [2, 8]), 3: ([6, 0], [2, 8])}


def test_schedule_bounds_every_round():
    src = strategy("fsdp4", [4], ["dp"], TENSORS, {t: ["Shard(0)"] for t in TENSORS})
    dst = strategy("tp2", [2], ["tp"], TENSORS, {"a": ["Shard(1)"], "b": ["Shard(0)"], "c": ["Replicate()"]})
    plan = sp.plan(src, dst)
    for budget in [2, 7, 64, 1 << 20]:
        local, rounds = spt.schedule(plan, [0, 1, 2, 3], [4, 5], budget)
        assert not local
        moved = 0
        for chunks in rounds:
            for proc in range(6):
                for side in (0, 1):
                    mine = [c[6] for *ends, c in chunks if ends[side] == proc]
                    # Within the buffer, or one element larger than it, alone.
                    assert sum(mine) <= budget or (len(mine) == 1 and mine[0] <= 4), (budget, mine)
            moved += sum(c[6] for _, _, c in chunks)
        # Every piece's bytes cross the network: the processes are disjoint.
        assert moved == int(plan.to_numpy()["bytes"].sum())


def test_chunks_in_one_run_of_their_destination_go_in_place(monkeypatch):
    src = strategy("cols4", [4], ["dp"], TENSORS, {"a": ["Shard(1)"], "b": ["Shard(0)"], "c": ["Shard(0)"]})
    dst = strategy("rows2", [2], ["tp"], TENSORS, {"a": ["Shard(0)"], "b": ["Shard(0)"], "c": ["Replicate()"]})
    plan = sp.plan(src, dst)
    _, rounds = spt.schedule(plan, [0, 1, 2, 3], [4, 5], 1 << 20)
    # These chunks are all below the default size: every one is packed.
    assert not any(c[7] for chunks in rounds for *_, c in chunks)
    monkeypatch.setattr(spt, "IN_PLACE_BYTES", 1)
    _, rounds = spt.schedule(plan, [0, 1, 2, 3], [4, 5], 1 << 20)
    flags = []
    for chunks in rounds:
        for _, _, (t, _s, d, _so, do, e, _b, direct) in chunks:
            offset, shape = dst.region(plan.tensors[t], d)
            view = torch.empty(list(shape))[tuple(slice(o, o + n) for o, n in zip(do, e))]
            assert direct == view.is_contiguous(), (plan.tensors[t], do, e)
            flags.append(direct)
    # Columns of `a` are scattered in its destination rows; rows of `b` are not.
    assert any(flags) and not all(flags)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=0, max_size=4).flatmap(
    lambda shape: st.tuples(st.just(shape), st.tuples(*[st.integers(0, n - 1) for n in shape]))
    .flatmap(lambda so: st.tuples(st.just(so[0]), st.just(so[1]),
                                  st.tuples(*[st.integers(1, n - o) for n, o in zip(*so)])))))
def test_one_run_agrees_with_torch(case):
    shape, offset, extent = case
    view = torch.empty(shape)[tuple(slice(o, o + e) for o, e in zip(offset, extent))]
    assert spt._one_run(extent, shape) == view.is_contiguous()


def replicated_plan():
    """dp 2 x tp 2 (rows over tp, copies over dp) on processes 0..3 to 2
    other processes holding columns; the meshes' device ids are the
    processes, so the planner knows nothing stays local."""
    src_mesh = sp.DeviceMesh([2, 2], ["dp", "tp"], device_ids=[0, 1, 2, 3])
    dst_mesh = sp.DeviceMesh([2], ["tp"], device_ids=[4, 5])
    tensors = {"w": ([16, 8], "bf16"), "v": ([12, 4], "f32")}
    src = sp.Strategy("train", src_mesh, {
        t: (sp.Layout.from_placements(src_mesh, s, ["Replicate()", "Shard(0)"]), d) for t, (s, d) in tensors.items()})
    dst = sp.Strategy("serve", dst_mesh, {
        t: (sp.Layout.from_placements(dst_mesh, s, ["Shard(1)"]), d) for t, (s, d) in tensors.items()})
    return src, dst


def test_replicas_share_the_sending_at_the_bound():
    src, dst = replicated_plan()
    balanced = sp.plan(src, dst, replicas="balance")
    lowest = sp.plan(src, dst, replicas="min_files")
    def largest_sender(plan):
        _, rounds = spt.schedule(plan, [0, 1, 2, 3], [4, 5], 1 << 20)
        sent = {p: 0 for p in range(4)}
        for chunks in rounds:
            for s, _d, c in chunks:
                sent[s] += c[6]
        return max(sent.values())

    # Balanced: the largest sender sends the plan's lower bound, half of
    # what the lowest-rank replica sends alone.
    assert largest_sender(balanced) == balanced.summary["max_send_lower_bound_bytes"]
    assert largest_sender(lowest) == 2 * largest_sender(balanced)


def scenario_replicated(rank, world, buffer):
    src, dst = replicated_plan()
    plan = sp.plan(src, dst, replicas="balance")
    tensors = {"w": ([16, 8], torch.bfloat16), "v": ([12, 4], torch.float32)}
    whole = {t: full_tensor(k, s, d) for k, (t, (s, d)) in enumerate(tensors.items())}

    def held(strat, r):
        out = {}
        for t in strat.tensors:
            box = strat.region(t, r)
            if box is not None:
                out[t] = whole[t][tuple(slice(o, o + e) for o, e in zip(*box))].clone()
        return out

    local = held(src, rank) if rank < 4 else {}
    out = spt.redistribute(local, plan, [0, 1, 2, 3], [4, 5], max_buffer_bytes=buffer)
    if rank >= 4:
        want = held(dst, rank - 4)
        assert all(torch.equal(out[t], want[t]) for t in want)


SCENARIOS["replicated"] = scenario_replicated


def test_replicated_sources_on_six_processes(tmp_path):
    run("replicated", 6, tmp_path)


def test_the_trainer_to_inference_example_of_the_docs_runs(tmp_path):
    """docs/python.md's example, run as the script it is."""
    import re
    import subprocess
    import sys

    from conftest import REPO

    text = (REPO / "docs" / "python.md").read_text()
    section = text.split("## Live redistribution over torch.distributed", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "trainer_to_inference.py"
    script.write_text(block)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trainer -> inference: done" in done.stdout


def test_modelled_time_meets_its_bound_with_one_round_and_exceeds_it_with_many():
    src = strategy("fsdp4", [4], ["dp"], TENSORS, {t: ["Shard(0)"] for t in TENSORS})
    dst = strategy("tp2", [2], ["tp"], TENSORS, {"a": ["Shard(1)"], "b": ["Shard(0)"], "c": ["Replicate()"]})
    plan = sp.plan(src, dst)
    one = spt.modelled_time(plan, [0, 1, 2, 3], [4, 5], gpus_per_node=8)
    assert one["rounds"] == 1 and one["seconds"] == pytest.approx(one["lower_bound_seconds"])
    # The busiest link: destination rank 0's NVLink in, which receives its
    # whole slices (a: 10 x 3 bf16, b: 4 x 5 f32, c: 6 f16), 152 bytes.
    rows = plan.to_numpy()
    busiest = max(int(rows["bytes"][rows[side] == r].sum()) for side in ("src_rank", "dst_rank") for r in range(4))
    assert busiest == 152
    assert one["lower_bound_seconds"] == pytest.approx(152 / 400e9)
    many = spt.modelled_time(plan, [0, 1, 2, 3], [4, 5], gpus_per_node=8, max_buffer_bytes=8)
    assert many["rounds"] > 1 and many["seconds"] >= many["lower_bound_seconds"]
    # Two nodes of 4: every byte crosses the NICs, slower than NVLink.
    cross = spt.modelled_time(plan, [0, 1, 2, 3], [4, 5], gpus_per_node=4)
    assert cross["lower_bound_seconds"] > one["lower_bound_seconds"]


def pipelined():
    """Two pipeline stages of tp 2 (layer 0 on processes 0 and 1, layer 1 on
    2 and 3, MindSpore's layouts) to one stage of tp 2 on processes 4 and 5."""
    l0 = sp.Layout.from_mindspore([8, 4], [2], [0, -1], stage=0, stage_count=2)
    l1 = sp.Layout.from_mindspore([8, 4], [2], [0, -1], stage=1, stage_count=2)
    src = sp.Strategy("pp2tp2", None, {"l0": (l0, "f32"), "l1": (l1, "f32")})
    mesh = sp.DeviceMesh([2], ["tp"], device_ids=[4, 5])
    dst = sp.Strategy("tp2", mesh, {t: (sp.Layout.from_placements(mesh, [8, 4], ["Shard(1)"]), "f32") for t in ("l0", "l1")})
    return src, dst


def scenario_pipelined(rank, world, buffer):
    src, dst = pipelined()
    plan = sp.plan(src, dst)
    whole = {t: full_tensor(k, [8, 4], torch.float32) for k, t in enumerate(("l0", "l1"))}

    def held(strat, r):
        return {t: whole[t][tuple(slice(o, o + e) for o, e in zip(*box))].clone()
                for t in strat.tensors if (box := strat.region(t, r)) is not None}

    local = held(src, rank) if rank < 4 else {}
    # Each stage's processes hold only their layer.
    assert sorted(local) == ([] if rank >= 4 else ["l0"] if rank < 2 else ["l1"])
    out = spt.redistribute(local, plan, [0, 1, 2, 3], [4, 5], max_buffer_bytes=buffer)
    if rank >= 4:
        want = held(dst, rank - 4)
        assert sorted(out) == sorted(want) and all(torch.equal(out[t], want[t]) for t in want)


SCENARIOS["pipelined"] = scenario_pipelined


def test_pipelined_stages_into_one(tmp_path):
    run("pipelined", 6, tmp_path, 16)
