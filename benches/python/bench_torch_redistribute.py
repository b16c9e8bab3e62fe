#!/usr/bin/env python3
"""shardplan.torch.redistribute on gloo, 8 processes on this machine, 1 GiB
of bf16 weights (16 tensors of 8192 x 4096), against PyTorch's own tools in
the same run (docs/PERFORMANCE.md, "Live redistribution"):

  same mesh   FSDP Shard(0) -> Shard(1) on all 8 processes:
              shardplan (plan made once, outside the timing, as a trainer
              replays it every step) against DTensor.redistribute; also a
              Transfer built once and replayed into the weights it made;
  cross mesh  Shard(0) on 8 processes -> Shard(1) on processes 4..7 (a
              4-way tensor-parallel inference engine): shardplan against
              dcp.save by the 8 then dcp.load by the 4, through tmpfs
              (/dev/shm), which is how DCP moves between meshes;
  gloo alone  each pair's bytes of both moves as one contiguous message:
              the transport's own cost, the floor for any tool on gloo.

Each timing is the slowest process's, after a barrier, median of REPS
after one warm-up run.
Every result is checked against the whole tensors.

Then the modelled time of the same two schedules on GPUs
(shardplan.torch.modelled_time) next to their lower bound; `model` as the
argument prints only that.

usage: bench_torch_redistribute.py [REPS | model]
"""

import os
import shutil
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 8
TENSORS = 16
SHAPE = (8192, 4096)


def whole(k):
    # Distinct values per tensor; the exact rule does not matter for timing.
    return (torch.arange(SHAPE[0] * SHAPE[1], dtype=torch.int32) % 65521 + k).to(torch.bfloat16).reshape(SHAPE)


def timed(fn):
    dist.barrier()
    t0 = time.perf_counter()
    out = fn()
    dist.barrier()
    dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(dt, op=dist.ReduceOp.MAX)
    return out, float(dt)


def repeat(fn, reps):
    """One warm-up run (first-touch allocation of every buffer), then
    ``reps`` timed runs: the times, the warm-up's first, and the last result."""
    times = []
    for _ in range(reps + 1):
        out = None  # one result held at a time
        out, t = timed(fn)
        times.append(t)
    return times, out


def worker(rank, store, reps, results):
    import shardplan as sp
    import shardplan.torch as spt
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    # One thread per process: 8 processes share the machine's cores.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("dp",))
    tp_ranks = list(range(4, 8))
    tp = DeviceMesh("cpu", tp_ranks, mesh_dim_names=("tp",))
    names = [f"w{k}" for k in range(TENSORS)]
    # Whole tensors are made one at a time (8 processes holding 1 GiB each
    # would crowd the machine's memory and slow every allocation).
    sd = {n: distribute_tensor(whole(k), mesh, [Shard(0)]) for k, n in enumerate(names)}
    local = {n: sd[n].to_local() for n in names}
    ms = {}

    def sp_mesh(m):
        return sp.DeviceMesh(list(m.shape), list(m.mesh_dim_names), device_ids=m.mesh.flatten().tolist())

    def strat(name, m, placement):
        spm = sp_mesh(m)
        return sp.Strategy(name, spm, {n: (sp.Layout.from_placements(spm, list(SHAPE), [placement]), "bf16")
                                       for n in names})

    src = strat("fsdp8", mesh, "Shard(0)")
    same = sp.plan(src, strat("cols8", mesh, "Shard(1)"))
    cross = sp.plan(src, strat("tp4", tp, "Shard(1)"))
    all_ranks = list(range(WORLD))

    def check(out, m_ranks, dim):
        if rank in m_ranks:
            i, n = m_ranks.index(rank), len(m_ranks)
            cols = SHAPE[1] // n
            for k, name in enumerate(names):
                assert torch.equal(out[name], whole(k)[:, i * cols:(i + 1) * cols]), name

    # Built once, as a trainer syncing every step does; replayed into the
    # destination weights of its first run.
    same_t, cross_t = spt.Transfer(same, all_ranks, all_ranks), spt.Transfer(cross, all_ranks, tp_ranks)
    same_w, cross_w = same_t(local), cross_t(local)
    for label, fn in [
        ("shardplan same mesh", lambda: spt.redistribute(local, same, all_ranks, all_ranks)),
        ("shardplan same mesh, replayed", lambda: same_t(local, out=same_w)),
        ("DTensor.redistribute", lambda: {n: sd[n].redistribute(mesh, [Shard(1)]).to_local() for n in names}),
        ("shardplan cross mesh", lambda: spt.redistribute(local, cross, all_ranks, tp_ranks)),
        ("shardplan cross mesh, replayed", lambda: cross_t(local, out=cross_w)),
    ]:
        ms[label], out = repeat(fn, reps)
        check(out, tp_ranks if "cross" in label else all_ranks, 1)

    def bare_gloo(dst_ranks):
        """The transport alone: each pair's bytes of the same move, as one
        contiguous, preallocated message, with no plan, packing or
        unpacking: what any tool on gloo pays at least."""
        pair = TENSORS * (SHAPE[0] // WORLD) * (SHAPE[1] // len(dst_ranks)) * 2
        sends = {d: torch.empty(pair, dtype=torch.uint8) for d in dst_ranks if d != rank}
        recvs = {s: torch.empty(pair, dtype=torch.uint8) for s in all_ranks if s != rank} if rank in dst_ranks else {}

        def move():
            ops = [dist.P2POp(dist.isend, b, d) for d, b in sends.items()]
            ops += [dist.P2POp(dist.irecv, b, s) for s, b in recvs.items()]
            for w in dist.batch_isend_irecv(ops):
                w.wait()

        return move

    for label, dst_ranks in [("gloo alone, same mesh", all_ranks), ("gloo alone, cross mesh", tp_ranks)]:
        ms[label], _ = repeat(bare_gloo(dst_ranks), reps)

    tmp = "/dev/shm/shardplan-bench-dcp"
    group = dist.new_group(tp_ranks)

    def via_dcp():
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        dcp.save(sd, checkpoint_id=tmp)
        out = {}
        if rank in tp_ranks:
            target = {n: DTensor.from_local(torch.empty(SHAPE[0], SHAPE[1] // 4, dtype=torch.bfloat16), tp,
                                            [Shard(1)], run_check=False, shape=torch.Size(SHAPE),
                                            stride=(SHAPE[1], 1)) for n in names}
            dcp.load(target, checkpoint_id=tmp, process_group=group)
            out = {n: target[n].to_local() for n in names}
        return out

    ms["dcp.save + dcp.load (tmpfs)"], out = repeat(via_dcp, reps)
    check(out, tp_ranks, 1)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        results.put({k: v for k, v in ms.items()})
    dist.destroy_process_group()


def model_table():
    """The two moves' schedules priced on GPUs: one node of 8, or two of 4
    (process p on node p // per_node), with whole and 16 MiB buffers."""
    import shardplan as sp
    import shardplan.torch as spt

    names = [f"w{k}" for k in range(TENSORS)]
    ranks = list(range(WORLD))
    tp_ranks = ranks[WORLD // 2:]

    def strat(name, ids, placement):
        spm = sp.DeviceMesh([len(ids)], ["x"], device_ids=ids)
        return sp.Strategy(name, spm, {n: (sp.Layout.from_placements(spm, list(SHAPE), [placement]), "bf16")
                                       for n in names})

    src = strat("fsdp8", ranks, "Shard(0)")
    moves = {"same mesh": (sp.plan(src, strat("cols8", ranks, "Shard(1)")), ranks),
             "across meshes": (sp.plan(src, strat("tp4", tp_ranks, "Shard(1)")), tp_ranks)}
    print("modelled on GPUs (400 GB/s NVLink per GPU, 4 x 400 Gb/s NICs per node):")
    print("  | move | GPUs per node | buffer | rounds | modelled | lower bound |")
    for move, per_node, buffer in [("same mesh", 8, 256 << 20), ("same mesh", 8, 16 << 20),
                                   ("same mesh", 4, 16 << 20), ("across meshes", 8, 16 << 20),
                                   ("across meshes", 4, 16 << 20)]:
        plan, dst = moves[move]
        m = spt.modelled_time(plan, ranks, dst, gpus_per_node=per_node, max_buffer_bytes=buffer)
        print(f"  | {move} | {per_node} | {buffer >> 20} MiB | {int(m['rounds'])} | "
              f"{m['seconds'] * 1e3:.3f} ms | {m['lower_bound_seconds'] * 1e3:.3f} ms |")


def main():
    if sys.argv[1:] == ["model"]:
        model_table()
        return
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    store = os.path.join(tempfile.mkdtemp(), "store")
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(worker, args=(store, reps, results), nprocs=WORLD, start_method="spawn")
    ms = results.get()
    gib = TENSORS * SHAPE[0] * SHAPE[1] * 2
    print(f"{WORLD} processes, gloo, {TENSORS} bf16 tensors of {SHAPE}, {gib / 2**30:.2f} GiB; median of {reps}")
    med = {label: statistics.median(times[1:]) for label, times in ms.items()}
    for label, times in ms.items():
        print(f"  {label:34s} {med[label]:7.3f} s  {gib / med[label] / 1e9:6.2f} GB/s  (warm-up {times[0]:.3f}; runs: "
              + ", ".join(f"{t:.3f}" for t in times[1:]) + ")")
    print(f"  same mesh: shardplan {med['DTensor.redistribute'] / med['shardplan same mesh']:.1f}x "
          "DTensor.redistribute")
    print(f"  cross mesh: shardplan {med['dcp.save + dcp.load (tmpfs)'] / med['shardplan cross mesh']:.1f}x "
          "dcp.save + dcp.load")
    print(f"  same mesh, replayed: shardplan {med['DTensor.redistribute'] / med['shardplan same mesh, replayed']:.1f}x "
          "DTensor.redistribute")
    print(f"  cross mesh, replayed: shardplan "
          f"{med['dcp.save + dcp.load (tmpfs)'] / med['shardplan cross mesh, replayed']:.1f}x dcp.save + dcp.load")
    for move in ("same", "cross"):
        for how in ("", ", replayed"):
            ratio = med[f"shardplan {move} mesh{how}"] / med[f"gloo alone, {move} mesh"]
            print(f"  {move} mesh{how}: shardplan takes {ratio:.2f}x the transport alone")
    model_table()


if __name__ == "__main__":
    main()
