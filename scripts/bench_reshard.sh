#!/usr/bin/env bash
# Resharding benchmark (docs/PERFORMANCE.md, section "Resharding"): a
# Llama-3-8B-like bf16 checkpoint, 8 safetensors ranks (tp8) to 2 (tp2), with
# `shardplan reshard`, and side by side with MindSpore 2.10's
# `transform_checkpoints` on a case both can run.
#
#   1. cargo build --release;
#   2. case `full`: scripts/make_llama3_ckpt.py gen writes the tp8 source
#      (291 tensors of ../shared/data/llama3_8b_params.json, 16.06 GB) and the
#      MindSpore JSON strategies tp8.json / tp2.json under $DATA/full;
#      one unmeasured run of shardplan warms the page cache and its output is
#      checked byte for byte against the value rule (make_llama3_ckpt.py
#      verify); then $REPS measured runs of all ranks, $REPS of --rank 0,
#      $REPS of two processes at once (RANK=0 and RANK=1, WORLD_SIZE=2), and
#      $REPS of `cat` of the source files into one fsynced file (the IO
#      ceiling of the machine: the same bytes, no resharding);
#   3. case `half` (every dimension / 2, 4.02 GB, because MindSpore needs about
#      3x the checkpoint in memory and cannot run the full one on 23 GiB):
#      $REPS runs of shardplan, $REPS of benches/peers/mindspore_transform.py,
#      both outputs checked equal (make_llama3_ckpt.py compare) and checked
#      against the value rule;
#   4. a summary table (target/bench_reshard/summary.txt).
#
# Every measured run: the previous output is deleted (which also drops its
# pages from the page cache), the source files are read once with cat (a warm
# page cache; the share of source pages cached just before the run is
# recorded with fincore), then the command runs under /usr/bin/time -v (wall
# time, peak RSS, blocks read from / written to disk). MindSpore does not
# fsync its output, shardplan does; the time of a `sync` right after each
# MindSpore run is recorded too.
#
# Data goes to $DATA (default /work/bench-data; never inside the repository)
# and is deleted at the end unless KEEP=1. Needs about 33 GB free for `full`
# (source + output; it is deleted before `half` runs), else `full` is scaled
# down to the first 8 layers (FULL_GEN="--layers 8"), which the summary says.
#
# Environment:
#   DATA=/work/bench-data   where the checkpoints go
#   REPS=3                  measured repetitions per case
#   PYTHON=python3          interpreter with numpy (generation and checks)
#   MS_PYTHON=...           interpreter with mindspore==2.10.0, numpy<2 and
#                           safetensors<0.8 (benches/peers/README.md); the
#                           MindSpore part is skipped when it cannot import it
#   FULL_GEN, HALF_GEN      generator options of the two cases
#   WAIT_FOR=FILE:LINE      wait (polling) until FILE contains LINE before
#                           the measurements, e.g. until other jobs are done
#   KEEP=1                  keep the generated data and outputs
#   ONLY="full half"        cases to run
#   SUMMARY_ONLY=1          only print the summary of the last run's results
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

DATA=${DATA:-/work/bench-data}
REPS=${REPS:-3}
PYTHON=${PYTHON:-python3}
MS_PYTHON=${MS_PYTHON:-/work/venv-ms/bin/python}
FULL_GEN=${FULL_GEN-}
HALF_GEN=${HALF_GEN:---shrink 2}
KEEP=${KEEP:-0}
ONLY=${ONLY:-full half}
LOGS=$REPO/target/bench_reshard
BIN=$REPO/target/release/shardplan
GEN=$REPO/scripts/make_llama3_ckpt.py
MS_PEER=$REPO/benches/peers/mindspore_transform.py

mkdir -p "$DATA" "$LOGS"
DATA=$(cd "$DATA" && pwd)
case "$DATA/" in
    "$REPO"/*) echo "DATA=$DATA is inside the repository; put it elsewhere" >&2; exit 1 ;;
esac
RESULTS=$LOGS/results.tsv

# The summary table of $RESULTS.
summary() {
echo
echo "== Summary (decimal GB; medians over the runs, range in brackets)"
"$PYTHON" - "$RESULTS" "$LOGS/cases.txt" <<'EOF' | tee "$LOGS/summary.txt"
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
cases = {}
for l in open(sys.argv[2]):
    f = l.split()
    cases[f[0]] = dict(kv.split("=", 1) for kv in f[1:])
groups = {}
for r in rows:
    groups.setdefault((r[0], r[1]), []).append(r)
def med(xs):
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}-{max(xs):.2f}]"
print(f"{'case':6} {'tool':16} {'wall s':>20} {'own s':>6} {'written GB':>10} {'GB/s written':>20} {'GB/s source':>20} "
      f"{'peak RSS MB':>24} {'RSS target MB':>13} {'cached':>6} {'disk read GB':>12} {'sync s':>6} {'load':>5}")
for (case, tool), rs in groups.items():
    wall = [float(r[3]) for r in rs]
    wr = [float(r[9]) for r in rs]
    src = [float(r[10]) for r in rs]
    rss = [float(r[6]) * 1024 / 1e6 for r in rs]
    target = (int(cases[case]["largest_dst_slice"]) + (256 << 20)) / 1e6
    gbw = [w / t / 1e9 for w, t in zip(wr, wall)]
    # Source bytes a tool needs: all of them, or half for one of two ranks.
    gbs = [s / 2 / t / 1e9 if tool.endswith("rank0") else s / t / 1e9 for s, t in zip(src, wall)]
    inner = statistics.median(float(r[4]) for r in rs)
    print(f"{case:6} {tool:16} {med(wall):>20} {inner:>6.2f} {statistics.median(wr) / 1e9:>10.2f} {med(gbw):>20} {med(gbs):>20} "
          f"{med(rss):>24} {target:>13.0f} {min(float(r[11]) for r in rs):>6.2f} "
          f"{statistics.median(float(r[7]) * 512 / 1e9 for r in rs):>12.2f} "
          f"{statistics.median(float(r[5]) for r in rs):>6.2f} {max(float(r[12]) for r in rs):>5.2f}")
print()
for case, c in cases.items():
    print(f"case {case}: generator options {c['gen'].replace('_', ' ')}; largest destination slice {int(c['largest_dst_slice']):,} bytes; "
          f"RSS target = that + 256 MiB")
print("own s = the tool's own timing (shardplan: writing, after planning, the slower process for 2proc; MindSpore: the "
      "transform_checkpoints call, without the import); "
      "GB/s written = output bytes / wall time of the process; GB/s source = source bytes the run needs "
      "(all of them, half for --rank 0) / wall time; 'cached' = lowest share of source pages in the page "
      "cache just before a run; 'disk read' = blocks read from disk during the run (/usr/bin/time -v); "
      "'sync s' = a sync right after the run (MindSpore does not fsync, shardplan does); "
      "'load' = highest 1-minute load average just before a run (it includes the previous runs).")
EOF
}

if [ "${SUMMARY_ONLY:-0}" = 1 ]; then
    summary
    exit 0
fi

: > "$RESULTS"
: > "$LOGS/cases.txt"
rm -f "$LOGS"/*.log "$LOGS"/*.time "$LOGS"/summary.txt "$LOGS"/*.verify.txt "$LOGS"/machine.txt

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine: $(nproc) cores; $(lscpu 2>/dev/null | grep 'Model name' | sed 's/  */ /g' || echo 'unknown CPU')"
    echo "memory: $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
    echo "disk: $(df -h "$DATA" | awk 'NR == 2 {print $1 ", " $4 " free"}'), $(findmnt -no FSTYPE --target "$DATA" 2>/dev/null || echo '?')"
    echo "toolchain: $(rustc --version)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src/ modified)')"
    echo "python: $($PYTHON --version 2>&1), numpy $($PYTHON -c 'import numpy; print(numpy.__version__)')"
    echo "mindspore python: $($MS_PYTHON -c 'import mindspore, numpy, safetensors; print(f"mindspore {mindspore.__version__}, numpy {numpy.__version__}, safetensors {safetensors.__version__}")' 2>/dev/null || echo 'not available')"
} | tee "$LOGS/machine.txt"

cargo build --release 2>&1 | tail -1

if [ -n "${WAIT_FOR:-}" ]; then
    f=${WAIT_FOR%%:*}; line=${WAIT_FOR#*:}
    echo "waiting until $f contains the line $line"
    until grep -qx "$line" "$f" 2>/dev/null; do sleep 30; done
    echo "found at $(date -u +%H:%M:%SZ); load average: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$LOGS/machine.txt"
fi

# Generates case $1 with generator options $2 unless already there.
generate() {
    local dir=$DATA/$1 opts=$2
    if [ -f "$dir/.complete" ] && [ "$(cat "$dir/.complete")" = "$opts" ]; then
        echo "$dir: already generated ($opts)"
        return
    fi
    rm -rf "$dir"
    # shellcheck disable=SC2086
    "$PYTHON" "$GEN" gen --out "$dir" --tp 8 --dst-tp 2 $opts | tail -3
    echo "$opts" > "$dir/.complete"
}

warm() { cat "$1"/src/rank_*/*.safetensors > /dev/null; }

# Share of the source bytes in the page cache.
cached() {
    fincore --bytes --raw --noheadings -o RES,SIZE "$1"/src/rank_*/*.safetensors \
        | awk '{r += ($1 < $2 ? $1 : $2); s += $2} END {printf "%.3f", r / s}'
}

tsize() { find "$1" -name '*.safetensors' -printf '%s\n' 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }

# The largest destination tensor slice of tp2.json, in bytes (bf16).
largest_dst_slice() {
    "$PYTHON" - "$1/tp2.json" <<'EOF'
import json, math, sys
s = json.load(open(sys.argv[1]))
best = 0
for p in s["parallel_layout_item"].values():
    n = math.prod(p["tensor_shape"]) * 2
    for k in p["tensor_map"]:
        if k >= 0:
            n //= p["dev_matrix"][len(p["dev_matrix"]) - 1 - k]
    best = max(best, n)
print(best)
EOF
}

# measure CASE LABEL REP OUTDIR -- command...: one measured run.
measure() {
    local case=$1 label=$2 rep=$3 out=$4
    shift 5
    local dir=$DATA/$case log=$LOGS/$case.$label.$rep
    rm -rf "$out"
    sync
    warm "$dir"
    local c
    c=$(cached "$dir")
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    /usr/bin/time -v -o "$log.time" "$@" > "$log.log" 2>&1 || {
        echo "FAILED: $* (see $log.log)" >&2
        tail -5 "$log.log" >&2
        return 1
    }
    local sync_s=0
    if [ "$label" = mindspore ]; then
        local t0 t1
        t0=$(date +%s.%N); sync; t1=$(date +%s.%N)
        sync_s=$(echo "$t1 - $t0" | bc)
    fi
    local wall rss fin fout inner
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, a, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + a[i]; print s}' "$log.time")
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log.time")
    fin=$(awk -F': ' '/File system inputs/ {print $2}' "$log.time")
    fout=$(awk -F': ' '/File system outputs/ {print $2}' "$log.time")
    if [ "$label" = mindspore ]; then
        inner=$(grep -o 'seconds=[0-9.]*' "$log.log" | head -1 | cut -d= -f2 || true)
    else
        inner=$(grep -o 'written in [0-9.]* s' "$log.log" | awk '{print $3}' | sort -g | tail -1 || true)
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$case" "$label" "$rep" "$wall" "${inner:-nan}" \
        "$sync_s" "$rss" "$fin" "$fout" "$(tsize "$out")" "$(tsize "$dir/src")" "$c" "$load" >> "$RESULTS"
    printf '%s %s #%s: %.2f s wall, peak RSS %d KiB, %s of the source cached before, %s disk blocks read, load %s before\n' \
        "$case" "$label" "$rep" "$wall" "$rss" "$c" "$fin" "$load"
}


have_ms=0
if "$MS_PYTHON" -c 'import mindspore' 2>/dev/null; then have_ms=1; fi

for case in $ONLY; do
    dir=$DATA/$case
    if [ "$case" = full ]; then
        opts=$FULL_GEN
        # Source + output + 1 GB, counting what is already there.
        have=$(du -sb "$dir" 2>/dev/null | cut -f1 || echo 0)
        free=$(df -B1 --output=avail "$DATA" | tail -1)
        if [ -z "$opts" ] && [ $(( free + ${have:-0} )) -lt 33000000000 ]; then
            opts="--layers 8"
            echo "NOTE: not enough disk for the 16 GB case ($(( (free + have) / 1000000000 )) GB); scaled down: $opts"
        fi
    else
        opts=$HALF_GEN
    fi
    echo
    echo "== case $case (generator options: ${opts:-none})"
    generate "$case" "$opts"
    g=${opts:-none}
    echo "$case gen=${g// /_} largest_dst_slice=$(largest_dst_slice "$dir")" >> "$LOGS/cases.txt"
    SP=("$BIN" reshard --src "$dir/src" --src-strategy "$dir/tp8.json" --dst-strategy "$dir/tp2.json"
        --out "$dir/out_sp" --format safetensors)

    if [ "$case" = full ]; then
        echo "-- warm-up run (unmeasured) and correctness check"
        "${SP[@]}" 2>&1 | tail -1
        # shellcheck disable=SC2086
        "$PYTHON" "$GEN" verify --dir "$dir/out_sp" --tp 2 $opts | tail -1 | tee "$LOGS/$case.verify.txt"
        for rep in $(seq 1 "$REPS"); do
            measure "$case" shardplan "$rep" "$dir/out_sp" -- "${SP[@]}"
        done
        for rep in $(seq 1 "$REPS"); do
            measure "$case" shardplan-rank0 "$rep" "$dir/out_sp" -- "${SP[@]}" --rank 0
        done
        # Both ranks at once, one process each (the launcher variables that
        # `reshard` reads), to use the second core.
        for rep in $(seq 1 "$REPS"); do
            measure "$case" shardplan-2proc "$rep" "$dir/out_sp" -- sh -c \
                'RANK=0 WORLD_SIZE=2 "$@" & a=$!; RANK=1 WORLD_SIZE=2 "$@" & b=$!; wait $a && wait $b' sh "${SP[@]}"
        done
        # The IO ceiling of the machine: the same bytes copied by cat into one
        # file, fsynced (no resharding at all).
        for rep in $(seq 1 "$REPS"); do
            measure "$case" cat+fsync "$rep" "$dir/out_cat" -- sh -c \
                'mkdir -p "$1/rank_0" && cat "$2"/rank_*/*.safetensors > "$1/rank_0/cat.safetensors" && sync "$1/rank_0/cat.safetensors"' \
                sh "$dir/out_cat" "$dir/src"
        done
        rm -rf "$dir/out_cat"
        # shellcheck disable=SC2086
        "$PYTHON" "$GEN" verify --dir "$dir/out_sp" --tp 2 --rank 0 $opts | tail -1 | tee -a "$LOGS/$case.verify.txt"
    else
        "${SP[@]}" > /dev/null 2>&1   # warm-up
        for rep in $(seq 1 "$REPS"); do
            measure "$case" shardplan "$rep" "$dir/out_sp" -- "${SP[@]}"
        done
        # shellcheck disable=SC2086
        "$PYTHON" "$GEN" verify --dir "$dir/out_sp" --tp 2 $opts | tail -1 | tee "$LOGS/$case.verify.txt"
        if [ "$have_ms" = 1 ]; then
            for rep in $(seq 1 "$REPS"); do
                measure "$case" mindspore "$rep" "$dir/out_ms" -- "$MS_PYTHON" "$MS_PEER" \
                    --src "$dir/src" --src-strategy "$dir/tp8.json" --dst-strategy "$dir/tp2.json" --out "$dir/out_ms"
            done
            # shellcheck disable=SC2086
            "$PYTHON" "$GEN" verify --dir "$dir/out_ms" --tp 2 $opts | tail -1 | tee -a "$LOGS/$case.verify.txt"
            "$PYTHON" "$GEN" compare "$dir/out_sp" "$dir/out_ms" | tail -1 | tee -a "$LOGS/$case.verify.txt"
        else
            echo "MindSpore not importable with $MS_PYTHON: skipped (see benches/peers/README.md)"
        fi
    fi
    if [ "$KEEP" != 1 ]; then rm -rf "$dir"; fi
done

summary
