#!/usr/bin/env bash
# Runs the planner benchmarks (crates/shardplan-core/benches/planner.rs) pinned to one core, so the
# numbers are single-core numbers, and prints the output. Extra arguments are
# passed to the benchmark binary (e.g. a filter: `scripts/bench_planner.sh train70b`).
#
# The benchmarks read ../shared/data/llama70b_params.json (or $SHARDPLAN_PARAMS)
# and are skipped with a message when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "machine: $(nproc) cores; $(lscpu 2>/dev/null | grep 'Model name' | sed 's/  */ /g' || echo 'unknown CPU')"
echo "toolchain: $(rustc --version)"

# Build first, unpinned, so that only the measurement runs on the one core.
cargo bench -p shardplan-core --bench planner --no-run

if command -v taskset >/dev/null 2>&1; then
    echo "pinned to core 0: taskset -c 0 cargo bench -p shardplan-core --bench planner"
    taskset -c 0 cargo bench -p shardplan-core --bench planner -- "$@"
else
    echo "taskset not available; running unpinned"
    cargo bench -p shardplan-core --bench planner -- "$@"
fi
