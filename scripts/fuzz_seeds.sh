#!/usr/bin/env bash
# Rebuilds the fuzz seed corpora in fuzz/seeds/ from the bundled specs, the
# MindSpore fixtures and freshly made plans. Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=fuzz/seeds
rm -rf "$seeds"
mkdir -p "$seeds"/{spec_parse,strategy_file,checkpoint_index,plan_json,plan_execute,hf_index,dcp_pickle,torch_zip}
for f in specs/*.yaml specs/invalid/*.yaml; do
    # Large generated specs add nothing the small ones lack.
    [ "$(wc -c < "$f")" -lt 20000 ] && cp "$f" "$seeds/spec_parse/$(basename "$f")"
done
i=0
for f in crates/shardplan/tests/it/fixtures/mindspore/*/*_strategy/*; do
    cp "$f" "$seeds/strategy_file/$i-$(basename "$f")"; i=$((i + 1))
done
i=0
for f in crates/shardplan/tests/it/fixtures/mindspore/*/src/rank_0/*.ckpt; do
    { printf '\x00'; cat "$f"; } > "$seeds/checkpoint_index/ckpt-$i"; i=$((i + 1))
done
for f in crates/shardplan/tests/it/fixtures/mindspore/*/src_safetensors/rank_0/*.safetensors; do
    { printf '\x01'; cat "$f"; } > "$seeds/checkpoint_index/st-$i"; i=$((i + 1))
done
cargo build -q --release
for f in specs/mindspore-notation.yaml specs/uneven-vocab.yaml specs/jax-notation.yaml; do
    target/release/shardplan plan "$f" --format json > "$seeds/plan_json/$(basename "$f" .yaml).json"
done
printf '\x01\x02\x01\x00\x02\x03\x04\x05\x06\x07\x08\x09' > "$seeds/plan_execute/small"
# hf_index: an index (first byte even) and a DCP_SHARDING_INFO (odd).
printf '\x00{"metadata": {"total_size": 96}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}' > "$seeds/hf_index/index"
printf '\x01{"w": {"saved_offsets": [10, 0]}, "n": {"saved_offsets": []}}' > "$seeds/hf_index/sharding_info"
echo "seeds: $(find "$seeds" -type f | wc -l) files"
# dcp_pickle: the .metadata pickles of the DCP fixtures; torch_zip: the
# first torch.save archive of each of their .distcp files.
for f in crates/shardplan/tests/it/fixtures/torch/*/checkpoint/.metadata; do
    cp "$f" "$seeds/dcp_pickle/$(basename "$(dirname "$(dirname "$f")")")"
done
for f in crates/shardplan/tests/it/fixtures/torch/*/checkpoint/__0_0.distcp; do
    case="$(basename "$(dirname "$(dirname "$f")")")"
    python3 - "$f" "$seeds/torch_zip/$case" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
if not data.startswith(b"PK"):
    sys.exit(0)  # safetensors items: no archive
# The first archive ends after its end-of-central-directory record.
end = data.index(b"PK\x05\x06") + 22
open(sys.argv[2], "wb").write(data[:end])
PY
done
