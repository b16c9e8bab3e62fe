#!/usr/bin/env python3
"""Hand-written NumPy reshard of f32[8192, 8192]: the peer of benches/executor.rs.

The source is eight row shards, separate arrays of 1024 x 8192. A reshard is
what one would write by hand: np.concatenate the shards into the full tensor,
then cut it into the destination shards with slicing, each made a contiguous
copy (np.ascontiguousarray). Cases, as in benches/executor.rs:

  cols8    mesh [8], columns split over 8      (8 shards of 8192 x 1024)
  mesh2x4  mesh [2, 4], rows over 2, cols over 4 (8 shards of 4096 x 2048)
  cols4    mesh [4], columns split over 4      (4 shards of 8192 x 2048)

Throughput counts the 256 MiB of the tensor once (the bytes every
destination shard receives), in decimal GB/s, as the Rust benchmark does,
although concatenate + split copies every byte twice. The outputs are
allocated afresh in every repetition, as this code would do in use; with
--prealloc the same two copies go into buffers allocated once
(np.concatenate(out=...) and np.copyto), which leaves out page faults.

Output: one line per case,
  RESULT peer=numpy case=cols8 gbps=... median_s=... min_s=... reps=...
(peer=numpy-prealloc with --prealloc). Usage:
  python3 benches/peers/numpy_reshard.py [--reps N] [--prealloc] [--label NAME] [CASE...]
"""

import argparse
import statistics
import sys
import time

import numpy as np

N = 8192
SRC_SHARDS = 8
NBYTES = N * N * 4


def dst_slices(case):
    """(row slice, column slice) of every destination shard, rank order."""
    if case == "cols8":
        w = N // 8
        return [(slice(None), slice(c * w, (c + 1) * w)) for c in range(8)]
    if case == "mesh2x4":
        h, w = N // 2, N // 4
        return [
            (slice(a * h, (a + 1) * h), slice(b * w, (b + 1) * w))
            for a in range(2)
            for b in range(4)
        ]
    if case == "cols4":
        w = N // 4
        return [(slice(None), slice(c * w, (c + 1) * w)) for c in range(4)]
    raise ValueError(f"unknown case {case}")


CASES = ["cols8", "mesh2x4", "cols4"]


def source_shards():
    """Eight row shards; element (i, j) holds the value i * N + j (as f32
    bits of the u32, like the Rust benchmark, so the check is exact)."""
    h = N // SRC_SHARDS
    shards = []
    for s in range(SRC_SHARDS):
        idx = np.arange(s * h * N, (s + 1) * h * N, dtype=np.uint32).reshape(h, N)
        shards.append(idx.view(np.float32))
    return shards


def reshard(shards, slices):
    """concatenate + split, fresh arrays."""
    full = np.concatenate(shards, axis=0)
    return [np.ascontiguousarray(full[r, c]) for r, c in slices]


def reshard_into(shards, slices, full, outs):
    """The same two copies into preallocated buffers."""
    np.concatenate(shards, axis=0, out=full)
    for (r, c), o in zip(slices, outs):
        np.copyto(o, full[r, c])
    return outs


def check(outs, slices):
    for (r, c), o in zip(slices, outs):
        rows = np.arange(N, dtype=np.uint32)[r]
        cols = np.arange(N, dtype=np.uint32)[c]
        want = rows[:, None] * np.uint32(N) + cols[None, :]
        assert o.flags["C_CONTIGUOUS"], "destination shards are contiguous"
        assert np.array_equal(o.view(np.uint32), want), "wrong reshard"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions per case")
    ap.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    ap.add_argument("--prealloc", action="store_true", help="write into buffers allocated once")
    ap.add_argument("--label", help="peer name printed in the RESULT lines")
    ap.add_argument("cases", nargs="*", default=CASES)
    args = ap.parse_args()

    shards = source_shards()
    peer = args.label or ("numpy-prealloc" if args.prealloc else "numpy")
    print(f"# {peer}: numpy {np.__version__}, python {sys.version.split()[0]}")
    for case in args.cases:
        slices = dst_slices(case)
        if args.prealloc:
            full = np.empty((N, N), dtype=np.float32)
            outs = [np.empty_like(full[r, c], order="C") for r, c in slices]
            full.fill(0)
            for o in outs:
                o.fill(0)

            def run():
                return reshard_into(shards, slices, full, outs)
        else:

            def run():
                return reshard(shards, slices)

        check(run(), slices)
        for _ in range(args.warmup):
            run()
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            outs_ = run()
            t1 = time.perf_counter()
            times.append(t1 - t0)
            del outs_
        med = statistics.median(times)
        print(
            f"RESULT peer={peer} case={case} gbps={NBYTES / med / 1e9:.3f} "
            f"median_s={med:.5f} min_s={min(times):.5f} reps={args.reps}",
            flush=True,
        )


if __name__ == "__main__":
    main()
