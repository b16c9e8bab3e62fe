#!/usr/bin/env bash
# Python package benchmarks (docs/PERFORMANCE.md, "Python"):
# benches/python/bench_python.py in the test venv, on
#   - a Llama-3-8B-like tp8 bf16 safetensors checkpoint written by
#     scripts/make_llama3_ckpt.py gen (first $LAYERS layers plus the
#     embeddings, the norm and lm_head, so that numpy by hand, which holds
#     every file and the concatenated tensors at once, fits in memory),
#   - specs/llama70b-pp4tp8-to-pp2tp4.yaml,
#   - a generated plan of 409,600 pieces.
# Data goes to $DATA (default /work/bench-data/python, never inside the
# repository) and is deleted afterwards unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/work/bench-data/python}
LAYERS=${LAYERS:-8}
REPS=${REPS:-5}
KEEP=${KEEP:-0}
venv="${SHARDPLAN_VENV:-.venv}"

cargo build --release -p shardplan-cli
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet -r bindings/python/requirements-test.txt
# -F bench: the benchmark's hook `_shardplan._timed_plan`, left out of the
# default wheel.
VIRTUAL_ENV="$(cd "$venv" && pwd)" "$venv/bin/maturin" develop --release --quiet -F bench \
    --manifest-path bindings/python/Cargo.toml
if [ ! -f "$DATA/tp2.json" ]; then
    mkdir -p "$DATA"
    "$venv/bin/python" scripts/make_llama3_ckpt.py gen --out "$DATA" --tp 8 --dst-tp 2 \
        --layers "$LAYERS" | tail -1
fi
echo "# $(date -u +%F) $(nproc) cores; median, min, max seconds over $REPS runs"
"$venv/bin/python" benches/python/bench_python.py --data "$DATA" \
    --cli target/release/shardplan --reps "$REPS"
[ "$KEEP" = 1 ] || rm -rf "$DATA"
