#!/usr/bin/env bash
# Records what the `shardplan` binary prints for a fixed set of invocations,
# so a refactor can show that output and exit codes did not change:
#
#   scripts/cli_transcript.sh OLD_BINARY /tmp/before
#   scripts/cli_transcript.sh NEW_BINARY /tmp/after
#   diff -r /tmp/before /tmp/after
#
# Each invocation N leaves N.cmd, N.out, N.err and N.rc in the output folder;
# files it writes are listed with their checksums in N.files. Durations and
# rates in the text are masked (they differ run to run). Run from anywhere;
# the invocations run in a scratch folder at a fixed path, with copies of the
# specs and test fixtures, so paths in messages are the same across runs.
set -euo pipefail
bin="$(realpath "$1")"
out="$(realpath -m "$2")"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${TMPDIR:-/tmp}/shardplan-transcript"
rm -rf "$work" "$out"
mkdir -p "$work/fx" "$work/bin" "$out"
# Under one name, since usage messages print the program's name.
cp "$bin" "$work/bin/shardplan"
bin="$work/bin/shardplan"
cp -r "$root/specs" "$work/specs"
# The fixtures: wherever the test data lives in this checkout.
fixtures="$(dirname "$(find "$root/crates" -type d -path '*tests/it/fixtures/mindspore' | head -1)")"
cp -r "$fixtures/mindspore/tp4_row_to_tp2_row" "$fixtures/mindspore/pp2_to_pp1_tp2" \
    "$fixtures/torch/tp2_dp2" "$fixtures/torch/hf_sharded_llama" "$work/fx/"
cd "$work"

n=0
run() {
    n=$((n + 1))
    local id
    id=$(printf '%03d' "$n")
    printf '%s\n' "$*" >"$out/$id.cmd"
    rm -rf "$work/o"
    mkdir -p "$work/o"
    set +e
    NO_COLOR=1 "$bin" "$@" >"$out/$id.out" 2>"$out/$id.err" </dev/null
    echo $? >"$out/$id.rc"
    set -e
    sed -i -E 's/[0-9]+(\.[0-9]+)? ?(ns|µs|us|ms|s|GB\/s|MB\/s|GiB\/s|MiB\/s)\b/<T>/g' "$out/$id.out" "$out/$id.err"
    (cd "$work/o" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum) >"$out/$id.files"
}

run --version
run --help
for sub in check show plan verify explain simulate derive reshard schema import export merge-stages; do
    run "$sub" --help
done
run schema
for s in specs/*.yaml; do
    run check "$s"
    run plan "$s"
done
run check specs/invalid/*.yaml
run check --format json specs/invalid/*.yaml
for s in specs/invalid/*.yaml; do run check "$s"; done
run plan specs/llama3-8b-dp2tp4-to-tp2.yaml --format json -o o/plan.json
run plan specs/llama3-8b-dp2tp4-to-tp2.yaml --min-files
run plan specs/mindspore-notation.yaml --tensor '*' --format json
run plan specs/mindspore-notation.yaml --from nope
plan_json="$work/plan.json"
NO_COLOR=1 "$bin" plan specs/mindspore-notation.yaml --format json -o "$plan_json" >/dev/null 2>&1 || true
run verify specs/mindspore-notation.yaml "$plan_json"
run verify specs/llama3-8b-dp2tp4-to-tp2.yaml "$plan_json"
run verify specs/mindspore-notation.yaml specs/tiny-model.yaml
run explain specs/llama3-8b-dp2tp4-to-tp2.yaml --tensor model.layers.0.self_attn.q_proj.weight
run explain specs/mindspore-notation.yaml --tensor nope
run show specs/llama3-8b-dp2tp4-to-tp2.yaml --strategy train --tensor model.layers.0.self_attn.q_proj.weight
run show specs/tiny-model.yaml --strategy infer --tensor '*'
run show fx/tp2_dp2/checkpoint --tensor '*'
run show fx/tp2_dp2/checkpoint --tensor model.embed_tokens.weight
run simulate specs/mindspore-notation.yaml
run simulate specs/tiny-model.yaml --model
run simulate specs/llama70b-pp4tp8-to-pp2tp4.yaml
run derive specs/tiny-model.yaml --from train --devices 2 --tp 2 --pp 1
run derive specs/tiny-model.yaml --from train --devices 4 --tp 2 --pp 2 --explain
run derive specs/tiny-model.yaml --from train --target nope
run derive specs/tiny-model.yaml --from train --devices 2 --tp 2 --pp 1 -o o/derived.yaml
c=fx/tp4_row_to_tp2_row
for fmt in ckpt safetensors hf dcp; do
    run reshard --src "$c/src" --src-strategy "$c/src_strategy/strategy.json" \
        --dst-strategy "$c/dst_strategy/strategy.json" --out o/r --format "$fmt"
done
run reshard --src "$c/src_safetensors" --src-strategy "$c/src_strategy/strategy.json" \
    --dst-strategy "$c/dst_strategy/strategy.json" --out o/r --format safetensors --rank 1
run reshard --src fx/tp2_dp2/checkpoint --out o/r --format hf
run reshard --src fx/hf_sharded_llama/model --out o/r --format dcp
run reshard --src fx/tp2_dp2/checkpoint --out o/r --format ckpt
run reshard --src fx/nope --out o/r
run reshard --src "$c/src" --out "$c/src"
run import "$c/src_strategy/strategy.json" -o o/spec.yaml
run import fx/pp2_to_pp1_tp2/src_strategy/strategy_stage0.json fx/pp2_to_pp1_tp2/src_strategy/strategy_stage1.json -o o/spec.yaml
run export specs/mindspore-notation.yaml --strategy train --format mindspore-json
run export specs/mindspore-notation.yaml --strategy train --format mindspore-pb
run export specs/llama3-8b-dp2tp4-to-tp2.yaml --strategy nope --format mindspore-json
run merge-stages fx/pp2_to_pp1_tp2/src_strategy -o o/merged.json
mkdir -p fx/stages
cp fx/pp2_to_pp1_tp2/src_strategy/strategy_stage*.json fx/stages/
run merge-stages fx/stages -o o/merged.json
run plan "$c/src_strategy/strategy.json"
run plan specs/nope.yaml
run nope
echo "$n invocations recorded in $out"
