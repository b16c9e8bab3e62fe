#!/usr/bin/env python3
"""JAX jax.device_put between NamedShardings: the peer of benches/executor.rs.

f32[8192, 8192] on 8 virtual CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8, set here before jax is
imported). Source: Mesh over the 8 devices, axis 'x', NamedSharding
P('x', None) (rows split over 8). Destinations, as in benches/executor.rs:

  cols8    the same mesh, P(None, 'x')
  mesh2x4  Mesh of the 8 devices reshaped (2, 4), axes ('a', 'b'), P('a', 'b')
  cols4    Mesh of devices 0..3, axis 'x', P(None, 'x')

Every repetition starts from a fresh source array: jax.device_put of a NumPy
array to the source sharding, block_until_ready, untimed. Then
jax.device_put(src, dst_sharding).block_until_ready() is timed. The first
repetitions (--warmup) are untimed: they compile whatever the transfer needs.
The result of the first one is checked element by element.

Throughput counts the 256 MiB of the tensor once, in decimal GB/s, as the
Rust benchmark does.

Output: one line per case,
  RESULT peer=jax case=cols8 gbps=... median_s=... min_s=... reps=...
Usage:
  python3 benches/peers/jax_device_put.py [--reps N] [--label NAME] [CASE...]
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

N = 8192
NBYTES = N * N * 4
CASES = ["cols8", "mesh2x4", "cols4"]


def shardings():
    devices = jax.devices()
    assert len(devices) >= 8, f"need 8 CPU devices, have {len(devices)}: is XLA_FLAGS honoured?"
    mesh8 = Mesh(np.array(devices[:8]), ("x",))
    src = NamedSharding(mesh8, P("x", None))
    dst = {
        "cols8": NamedSharding(mesh8, P(None, "x")),
        "mesh2x4": NamedSharding(Mesh(np.array(devices[:8]).reshape(2, 4), ("a", "b")), P("a", "b")),
        "cols4": NamedSharding(Mesh(np.array(devices[:4]), ("x",)), P(None, "x")),
    }
    return src, dst


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions per case")
    ap.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    ap.add_argument("--label", default="jax", help="peer name printed in the RESULT lines")
    ap.add_argument("cases", nargs="*", default=CASES)
    args = ap.parse_args()

    import jaxlib

    print(
        f"# jax {jax.__version__}, jaxlib {jaxlib.__version__}, numpy {np.__version__}, "
        f"python {sys.version.split()[0]}, {len(jax.devices())} {jax.devices()[0].platform} devices"
    )
    # Element (i, j) holds i * N + j as the bits of a u32, as in the Rust benchmark.
    host = np.arange(N * N, dtype=np.uint32).reshape(N, N).view(np.float32)
    src_sharding, dst_shardings = shardings()

    for case in args.cases:
        dst_sharding = dst_shardings[case]
        times = []
        for rep in range(args.warmup + args.reps):
            src = jax.device_put(host, src_sharding)
            src.block_until_ready()
            t0 = time.perf_counter()
            out = jax.device_put(src, dst_sharding)
            out.block_until_ready()
            t1 = time.perf_counter()
            if rep == 0:
                assert out.sharding == dst_sharding
                for shard in out.addressable_shards:
                    got = np.asarray(shard.data)
                    assert got.shape == host[shard.index].shape
                    assert np.array_equal(got.view(np.uint32), host[shard.index].view(np.uint32))
            if rep >= args.warmup:
                times.append(t1 - t0)
            del src, out
        med = statistics.median(times)
        print(
            f"RESULT peer={args.label} case={case} gbps={NBYTES / med / 1e9:.3f} "
            f"median_s={med:.5f} min_s={min(times):.5f} reps={args.reps}",
            flush=True,
        )


if __name__ == "__main__":
    main()
