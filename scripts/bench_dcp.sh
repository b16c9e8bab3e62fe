#!/usr/bin/env bash
# DCP -> Hugging Face benchmark (docs/PERFORMANCE.md, section "PyTorch DCP
# to Hugging Face"): the Llama-3-8B-like bf16 model (291 tensors of
# ../shared/data/llama3_8b_params.json, 16.06 GB) as a PyTorch DCP folder
# laid out FSDP-8, converted to a Hugging Face folder (5 GB shards) by
#   shardplan reshard --src DCP --out OUT --format hf
# and, in the same run, by PyTorch's own tools
# (benches/peers/torch_dcp_to_hf.py: dcp_to_torch_save, torch.load,
# huggingface_hub.save_torch_state_dict).
#
#   1. cargo build --release; huggingface_hub into the test venv;
#   2. scripts/make_llama3_ckpt.py gen --tp 1 writes the model as one rank of
#      whole tensors, benches/peers/make_dcp_fsdp8.py reshards it with
#      shardplan into the DCP folder (torch.distributed.checkpoint.load reads
#      such folders: crates/shardplan/tests/it/dcp_write.rs), and the
#      one-rank source is deleted;
#   3. $REPS runs of each tool; before each, the previous output is deleted,
#      `sync`, and the DCP files are read once with cat (warm page cache);
#      each run under /usr/bin/time -v (wall, peak RSS); PyTorch does not
#      fsync its output, shardplan does: the time of a `sync` right after
#      each PyTorch run is recorded too;
#   4. the last output of each is checked against the value rule
#      (make_llama3_ckpt.py verify-hf): the same tensors, bytes and shapes.
#
# Needs about 50 GB free (DCP + one output + PyTorch's intermediate .pt).
# Environment: DATA (default /work/bench-data/dcp, never inside the
# repository), REPS=2, PYTHON (default .venv/bin/python, with torch),
# GEN (generator options, e.g. "--layers 8" to scale down), KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/work/bench-data/dcp}
REPS=${REPS:-2}
PYTHON=${PYTHON:-.venv/bin/python}
GEN=${GEN-}
KEEP=${KEEP:-0}
LOGS=target/bench_dcp
mkdir -p "$LOGS" "$DATA"
RESULTS=$LOGS/results.tsv
: > "$RESULTS"

cargo build --release -q -p shardplan-cli
"$PYTHON" -m pip install -q --disable-pip-version-check huggingface_hub
if [ ! -f "$DATA/dcp/.metadata" ]; then
    rm -rf "$DATA/gen" "$DATA/dcp"
    # shellcheck disable=SC2086
    "$PYTHON" scripts/make_llama3_ckpt.py gen --out "$DATA/gen" --tp 1 --dst-tp 1 $GEN
    "$PYTHON" benches/peers/make_dcp_fsdp8.py "$DATA/gen/src" "$DATA/dcp"
    rm -rf "$DATA/gen/src"
fi
bytes=$(find "$DATA/dcp" -name '*.distcp' -printf '%s\n' | awk '{s += $1} END {printf "%.0f", s}')

measure() { # LABEL REP OUT -- command...
    local label=$1 rep=$2 out=$3
    shift 4
    local log=$LOGS/$label.$rep
    rm -rf "$out"
    sync
    cat "$DATA"/dcp/*.distcp > /dev/null
    /usr/bin/time -v -o "$log.time" "$@" > "$log.log" 2>&1 || {
        echo "FAILED: $* (see $log.log)" >&2
        tail -5 "$log.log" >&2
        return 1
    }
    local t0 t1 sync_s=0
    if [ "$label" = pytorch ]; then
        t0=$(date +%s.%N); sync; t1=$(date +%s.%N)
        sync_s=$(echo "$t1 - $t0" | bc)
    fi
    local wall rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, a, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + a[i]; print s}' "$log.time")
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log.time")
    printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$rep" "$wall" "$sync_s" "$rss" >> "$RESULTS"
    printf '%s #%s: %.2f s wall (+ %.2f s sync), %.2f GB/s, peak RSS %d KiB\n' "$label" "$rep" "$wall" "$sync_s" \
        "$(echo "$bytes / $wall / 1000000000" | bc -l)" "$rss"
}

for rep in $(seq 1 "$REPS"); do
    measure shardplan "$rep" "$DATA/out" -- target/release/shardplan reshard --src "$DATA/dcp" --out "$DATA/out" --format hf
done
# shellcheck disable=SC2086
"$PYTHON" scripts/make_llama3_ckpt.py verify-hf --dir "$DATA/out" $GEN | tail -1
rm -rf "$DATA/out"
for rep in $(seq 1 "$REPS"); do
    measure pytorch "$rep" "$DATA/torch" -- "$PYTHON" benches/peers/torch_dcp_to_hf.py "$DATA/dcp" "$DATA/torch"
done
# shellcheck disable=SC2086
"$PYTHON" scripts/make_llama3_ckpt.py verify-hf --dir "$DATA/torch" $GEN | tail -1
rm -rf "$DATA/torch"
echo "DCP bytes: $bytes"
awk -v b="$bytes" -F'\t' '{w[$1] += $3; s[$1] += $4; r[$1] = (r[$1] > $5 ? r[$1] : $5); n[$1]++}
    END {for (k in w) printf "%s: mean %.2f s (%.2f GB/s), sync after %.2f s, peak RSS %.0f MiB\n",
         k, w[k] / n[k], b / (w[k] / n[k]) / 1e9, s[k] / n[k], r[k] / 1024}' "$RESULTS" | tee "$LOGS/summary.txt"
[ "$KEEP" = 1 ] || rm -rf "$DATA"
