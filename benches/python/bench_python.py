"""Benchmarks of the Python package (docs/PERFORMANCE.md, "Python"), each
next to its peer measured in the same run:

  load     load_distributed_checkpoint of tp2 rank 0 from a tp8 safetensors
           checkpoint (scripts/make_llama3_ckpt.py) against
           `shardplan reshard --rank 0` of the same rank and against numpy +
           safetensors by hand (load the 8 files, concatenate, slice);
  plan     sp.plan on the Llama-2-70B-like spec against the Rust planner and
           verifier inside the same call (the binding's overhead);
  numpy    Plan.to_numpy of a plan of about 400k pieces.

Run by scripts/bench_python.sh; prints one tab-separated line per
measurement: name, median seconds, min, max, and a note.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import shardplan as sp
from shardplan import _shardplan


def timed(fn, reps):
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def line(name, times, note=""):
    print(f"{name}\t{statistics.median(times):.4f}\t{min(times):.4f}\t{max(times):.4f}\t{note}", flush=True)


def warm(src: Path):
    for f in sorted(src.rglob("*.safetensors")):
        with open(f, "rb") as h:
            while h.read(64 << 20):
                pass


def by_hand(src: Path, tp: int, dst_tp: int, rank: int, strategy: dict):
    """What a user writes without shardplan: every file loaded whole,
    each tensor concatenated along its split dimension, rank's block cut."""
    from safetensors.numpy import load_file

    parts = [load_file(str(src / f"rank_{r}" / f"checkpoint_{r}.safetensors")) for r in range(tp)]
    out = {}
    for name in parts[0]:
        tm = strategy["parallel_layout_item"][name]["tensor_map"]
        dims = [d for d, m in enumerate(tm) if m != -1]
        if not dims:
            out[name] = parts[0][name].copy()
            continue
        d = dims[0]
        full = np.concatenate([p[name] for p in parts], axis=d)
        n = full.shape[d] // dst_tp
        out[name] = np.ascontiguousarray(np.take(full, range(rank * n, (rank + 1) * n), axis=d))
    return out


def bench_load(data: Path, cli: str, reps: int):
    src = data / "src"
    tp8, tp2 = str(data / "tp8.json"), str(data / "tp2.json")
    strategy = json.loads(Path(tp8).read_text())
    warm(src)
    got = sp.load_distributed_checkpoint(src, tp8, tp2, rank=0)
    nbytes = sum(a.nbytes for a in got.values())
    hand = by_hand(src, 8, 2, 0, strategy)
    assert sorted(hand) == sorted(got)
    assert all(hand[n].tobytes() == got[n].tobytes() for n in got), "by-hand and shardplan disagree"
    del hand, got
    gb = nbytes / 1e9
    t = timed(lambda: sp.load_distributed_checkpoint(src, tp8, tp2, rank=0), reps)
    line("load_distributed_checkpoint", t, f"{gb:.2f} GB, {gb / statistics.median(t):.2f} GB/s")
    out = data / "out"

    def reshard():
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(
            [cli, "reshard", "--src", str(src), "--src-strategy", tp8, "--dst-strategy", tp2, "--out", str(out), "--rank", "0"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    t = timed(reshard, reps)
    shutil.rmtree(out, ignore_errors=True)
    line("shardplan reshard --rank 0", t, f"{gb:.2f} GB, {gb / statistics.median(t):.2f} GB/s")
    t = timed(lambda: by_hand(src, 8, 2, 0, strategy), reps)
    line("numpy+safetensors by hand", t, f"{gb:.2f} GB, {gb / statistics.median(t):.2f} GB/s")


def bench_plan(spec_path: Path, reps: int):
    spec = sp.load(spec_path)
    src, dst = (spec.strategy(n) for n in spec.transfer)
    whole, inner, pieces = [], [], 0
    for _ in range(reps):
        t0 = time.perf_counter()
        plan, rust = _shardplan._timed_plan(src, dst, "balance")  # needs -F bench
        whole.append(time.perf_counter() - t0)
        inner.append(rust)
        pieces = len(plan)
        # Freed outside the timing, as the Rust timing never frees a plan.
        del plan
    over = statistics.median(whole) / statistics.median(inner) - 1
    line("sp.plan (70B)", whole, f"{pieces} pieces; overhead over the Rust call {100 * over:.2f} %")
    line("Rust plan+verify inside the call (70B)", inner)


def many_pieces(tensors: int = 1600, ranks: int = 16):
    """A plan of tensors * ranks^2 pieces: rows over 16 ranks to columns
    over 16 ranks."""
    m = sp.DeviceMesh(shape=[ranks], axes=["tp"])
    rows = {f"t{i}": (sp.Layout.from_placements(m, [ranks * 4, ranks * 4], ["Shard(0)"]), "bf16") for i in range(tensors)}
    cols = {f"t{i}": (sp.Layout.from_placements(m, [ranks * 4, ranks * 4], ["Shard(1)"]), "bf16") for i in range(tensors)}
    return sp.plan(sp.Strategy("rows", m, rows), sp.Strategy("cols", m, cols))


def bench_numpy(reps: int):
    plan = many_pieces()
    t = timed(plan.to_numpy, reps)
    line("Plan.to_numpy", t, f"{len(plan)} pieces")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, help="folder of make_llama3_ckpt.py gen (src/, tp8.json, tp2.json)")
    p.add_argument("--cli", default="shardplan")
    p.add_argument("--spec", type=Path, default=Path("specs/llama70b-pp4tp8-to-pp2tp4.yaml"))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--only", default="load,plan,numpy")
    a = p.parse_args()
    only = a.only.split(",")
    if "numpy" in only:
        bench_numpy(a.reps)
    if "plan" in only:
        bench_plan(a.spec, a.reps)
    if "load" in only:
        bench_load(a.data, a.cli, a.reps)


if __name__ == "__main__":
    sys.exit(main())
