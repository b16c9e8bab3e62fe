#!/usr/bin/env bash
# Executor benchmarks and their peers, measured side by side in one run:
#
#   1. crates/shardplan-core/benches/executor.rs (divan), single-thread parts pinned to core 0:
#      memcpy::one_thread, memcpy::per_buffer, execute::sequential,
#      execute::sequential_alloc and the
#      hand-written copies of the cols8 pattern (pattern::*);
#   2. the same binary unpinned (both cores): execute::parallel,
#      memcpy::two_threads;
#   3. benches/peers/numpy_reshard.py pinned to core 0 (NumPy copies on one
#      thread), fresh outputs and --prealloc;
#   4. benches/peers/jax_device_put.py unpinned (XLA's own thread pool, its
#      normal setting) and pinned to core 0 (label jax-1core);
#
# then a summary table per case, parsed from the outputs (kept in
# target/bench_executor/). Needs numpy and jax: see benches/peers/README.md.
# Set PYTHON to choose the interpreter; REPS for the peers' repetitions.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
REPS=${REPS:-10}
OUT=target/bench_executor
mkdir -p "$OUT"

if command -v taskset >/dev/null 2>&1; then
    PIN=(taskset -c 0)
else
    echo "taskset not available; the single-core runs are unpinned"
    PIN=()
fi

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine: $(nproc) cores; $(lscpu 2>/dev/null | grep 'Model name' | sed 's/  */ /g' || echo 'unknown CPU')"
    echo "memory: $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')"
    echo "toolchain: $(rustc --version)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src/ modified)')"
    echo "src/execute.rs: last changed in $(git log -1 --format=%h -- src/execute.rs 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src/execute.rs 2>/dev/null || echo ' (modified)')"
    echo "python: $($PYTHON --version 2>&1)"
} | tee "$OUT/machine.txt"

if ! "$PYTHON" -c 'import numpy, jax' 2>/dev/null; then
    echo "numpy and jax are needed for the peers (see benches/peers/README.md):" >&2
    echo "  pip install numpy==2.4.6 jax==0.10.2" >&2
    exit 1
fi

# Build first, unpinned, so that only the measurements run on the one core,
# and run that one binary for both parts (others may edit src/ meanwhile).
BIN=$(cargo bench -p shardplan-core --bench executor --no-run --message-format=json \
    | "$PYTHON" -c 'import json, sys
exes = [m["executable"] for m in map(json.loads, sys.stdin)
        if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "executor"
        and m.get("executable")]
print(exes[-1])')
echo "benchmark binary: $BIN"

echo
echo "== shardplan, single thread (pinned to core 0)"
"${PIN[@]}" "$BIN" --bench 'memcpy::one_thread|memcpy::per_buffer|execute::sequential|pattern' \
    | tee "$OUT/divan_single.txt"

echo
echo "== shardplan, parallel (unpinned, $(nproc) cores)"
"$BIN" --bench 'execute::parallel|memcpy::two_threads' | tee "$OUT/divan_parallel.txt"

echo
echo "== NumPy (pinned to core 0)"
"${PIN[@]}" "$PYTHON" benches/peers/numpy_reshard.py --reps "$REPS" | tee "$OUT/peers.txt"
"${PIN[@]}" "$PYTHON" benches/peers/numpy_reshard.py --reps "$REPS" --prealloc | tee -a "$OUT/peers.txt"

echo
echo "== JAX (unpinned, then pinned to core 0)"
"$PYTHON" benches/peers/jax_device_put.py --reps "$REPS" | tee -a "$OUT/peers.txt"
"${PIN[@]}" "$PYTHON" benches/peers/jax_device_put.py --reps "$REPS" --label jax-1core | tee -a "$OUT/peers.txt"

echo
echo "== Summary (decimal GB/s; 268,435,456 bytes per reshard)"
"$PYTHON" - "$OUT" <<'EOF'
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])
scale = {"B/s": 1e-9, "KB/s": 1e-6, "MB/s": 1e-3, "GB/s": 1.0, "TB/s": 1e3}
# (group, bench) -> {"fastest": GB/s, "median": GB/s}
divan = {}
for name in ("divan_single.txt", "divan_parallel.txt"):
    group, bench = None, None
    for line in (out / name).read_text().splitlines():
        m = re.search(r"[├╰]─ (\w+)\s", line)
        if m:
            if m.group(1) in ("sequential", "sequential_alloc", "parallel", "memcpy", "pattern"):
                group = m.group(1)
            else:
                bench = m.group(1)
            continue
        rates = re.findall(r"([0-9.]+) ([KMGT]?B/s)", line)
        if len(rates) == 4 and bench:
            # Columns: fastest, slowest, median, mean.
            v = [float(x) * scale[u] for x, u in rates]
            divan[(group, bench)] = {"fastest": v[0], "median": v[2]}
peers = {}
for line in (out / "peers.txt").read_text().splitlines():
    if line.startswith("RESULT "):
        kv = dict(f.split("=", 1) for f in line.split()[1:])
        peers[(kv["peer"], kv["case"])] = {
            "median": float(kv["gbps"]),
            "fastest": 268435456 / float(kv["min_s"]) / 1e9,
        }

nan = {"fastest": float("nan"), "median": float("nan")}
for stat in ("median", "fastest"):
    def get(d, k):
        return d.get(k, nan)[stat]

    mem = get(divan, ("memcpy", "one_thread"))
    print(f"-- {stat}: memcpy one thread {mem:.2f}, per buffer "
          f"{get(divan, ('memcpy', 'per_buffer')):.2f}, two threads "
          f"{get(divan, ('memcpy', 'two_threads')):.2f}; cols8 by hand, destination order "
          f"{get(divan, ('pattern', 'cols8_dst_order')):.2f}, source order "
          f"{get(divan, ('pattern', 'cols8_src_order')):.2f}")
    head = ("case", "memcpy", "seq", "seq/memcpy", "seq+alloc", "par", "numpy", "np-prealloc",
            "jax", "jax-1core", "seq/jax", "par/jax", "seq/jax-1core", "seq+alloc/jax")
    print(" ".join(f"{h:>13}" for h in head))
    for case in ("cols8", "mesh2x4", "cols4"):
        seq = get(divan, ("sequential", case))
        par = get(divan, ("parallel", case))
        jax = get(peers, ("jax", case))
        jax1 = get(peers, ("jax-1core", case))
        alloc = get(divan, ("sequential_alloc", case))
        row = [case, f"{mem:.2f}", f"{seq:.2f}", f"{100 * seq / mem:.0f}%", f"{alloc:.2f}",
               f"{par:.2f}",
               f"{get(peers, ('numpy', case)):.2f}", f"{get(peers, ('numpy-prealloc', case)):.2f}",
               f"{jax:.2f}", f"{jax1:.2f}", f"{seq / jax:.1f}x", f"{par / jax:.1f}x",
               f"{seq / jax1:.1f}x", f"{alloc / jax:.1f}x"]
        print(" ".join(f"{c:>13}" for c in row))
EOF
