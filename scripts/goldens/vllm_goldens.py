#!/usr/bin/env python3
"""Generate vLLM per-rank golden parameter files for shardplan (issue 26).

What it does
------------
For each case it writes a tiny Hugging Face checkpoint folder (``source/``:
``config.json`` + ``model.safetensors``) whose f32 weights follow a VALUE RULE,
then lets vLLM's own code build the model for every tensor-parallel rank and
load that checkpoint, and saves what each rank's model holds:

    crates/shardplan/tests/it/fixtures/engines/vllm/<case>/source/{config.json,model.safetensors}
    crates/shardplan/tests/it/fixtures/engines/vllm/<case>/rank_<r>.safetensors
    crates/shardplan/tests/it/fixtures/engines/vllm/<case>/meta.json

VALUE RULE: the source tensors are numbered k = 1, 2, ... in sorted name order
(the numbering is written to ``meta.json`` as ``source_tensor_ids``); element at
flat (row-major) index i of tensor k has the f32 value ``k * 10000 + i``.
Every tensor has < 10000 elements and every value is < 2**24, so each value is
exact in f32 and names its source tensor and position; 0.0 never occurs in a
source, so a 0.0 in a rank file is padding vLLM added.

How vLLM is driven (no GPU): one process per rank (torch.multiprocessing.spawn),
torch.distributed with the gloo backend on 127.0.0.1; vLLM's distributed state
is set up with ``init_distributed_environment`` + ``ensure_model_parallel_initialized``
(the same calls vLLM's workers make), the VllmConfig comes from vLLM's
``EngineArgs.create_engine_config``, the model is built by vLLM's
``DefaultModelLoader.create_model`` and filled by ``DefaultModelLoader.load_weights``
(vLLM's safetensors iterator + the model class's ``load_weights`` + the layers'
``weight_loader``s: QKVParallelLinear, MergedColumnParallelLinear,
VocabParallelEmbedding/ParallelLMHead, FusedMoE). Then vLLM's
``process_weights_after_loading`` runs; the saved file is ``model.state_dict()``
after it, restricted to ``model.named_parameters()`` (state_dict buffers that are
not parameters, e.g. the attention's kv-cache scales ``attn._k_scale`` = 1.0, are
listed in meta.json but not saved); meta.json records whether that
post-processing changed any byte. Where it raises (the MoE cases: the PyPI wheel
has no CPU kernels, so FusedMoE's CPU ``prepack_moe_weight`` step is missing),
the saved bytes are the state right after ``load_weights`` and meta.json's
``saved_stage``/``post_processing_error`` say so.
Regenerating with the same versions reproduces the committed files bit for bit
(checked: sha256 identical).
vLLM's own loader code decides every byte in the rank files.

How to run / regenerate
-----------------------
    python3 -m venv /work/venv-vllm
    /work/venv-vllm/bin/pip install vllm          # committed files: see VERSIONS below
    VLLM_TARGET_DEVICE=cpu /work/venv-vllm/bin/python scripts/goldens/vllm_goldens.py [case ...]
    python3 scripts/goldens/describe.py           # decode the rule, print the facts

Run from the repository root. With no argument all cases are regenerated.

VERSIONS that made the committed files: vllm 0.33.0, torch 2.14.0+cu130
(the CUDA wheel from PyPI, run on CPU), transformers 5.20.2, safetensors 0.8.0,
Python 3.11.7. Each meta.json records the versions that wrote it.
"""
import json
import os
import socket
import sys
import tempfile

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "crates/shardplan/tests/it/fixtures/engines/vllm")
STRIDE = 10000  # value = k * STRIDE + i

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "vocab_size": 100,
    "tie_word_embeddings": False,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}

QWEN3_MOE_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "hidden_size": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "intermediate_size": 64,
    "moe_intermediate_size": 32,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "norm_topk_prob": True,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "output_router_logits": False,
    "router_aux_loss_coef": 0.001,
    "num_hidden_layers": 2,
    "vocab_size": 100,
    "tie_word_embeddings": False,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "attention_bias": False,
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}

QWEN2_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 64,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "vocab_size": 100,
    "tie_word_embeddings": True,
    "max_position_embeddings": 128,
    "max_window_layers": 2,
    "use_sliding_window": False,
    "sliding_window": None,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}

QWEN3_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 64,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "vocab_size": 100,
    "tie_word_embeddings": False,
    "max_position_embeddings": 128,
    "max_window_layers": 2,
    "use_sliding_window": False,
    "sliding_window": None,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "attention_bias": False,
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}

MIXTRAL_CONFIG = {
    "architectures": ["MixtralForCausalLM"],
    "model_type": "mixtral",
    "hidden_size": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "intermediate_size": 32,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "output_router_logits": False,
    "router_aux_loss_coef": 0.001,
    "num_hidden_layers": 2,
    "vocab_size": 100,
    "tie_word_embeddings": False,
    "max_position_embeddings": 128,
    "sliding_window": None,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}

CASES = {
    "llama_gqa_tp2": dict(config=LLAMA_CONFIG, tp=2, ep=False),
    "llama_gqa_tp4": dict(config=LLAMA_CONFIG, tp=4, ep=False),
    "qwen3_moe_tp2": dict(config=QWEN3_MOE_CONFIG, tp=2, ep=False),
    "qwen3_moe_tp2_ep": dict(config=QWEN3_MOE_CONFIG, tp=2, ep=True),
    "qwen2_tp2": dict(config=QWEN2_CONFIG, tp=2, ep=False),
    "qwen3_tp4": dict(config=QWEN3_CONFIG, tp=4, ep=False),
    "mixtral_tp2": dict(config=MIXTRAL_CONFIG, tp=2, ep=False),
    "mixtral_tp2_ep": dict(config=MIXTRAL_CONFIG, tp=2, ep=True),
}


def hf_shapes(cfg):
    """Names and shapes of the Hugging Face checkpoint tensors."""
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    nq, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or h // nq
    mt = cfg["model_type"]
    s = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg["tie_word_embeddings"]:
        # Tied checkpoints (qwen2 case) carry no lm_head.weight, as HF saves them.
        s["lm_head.weight"] = (v, h)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        s[p + "input_layernorm.weight"] = (h,)
        s[p + "post_attention_layernorm.weight"] = (h,)
        s[p + "self_attn.q_proj.weight"] = (nq * d, h)
        s[p + "self_attn.k_proj.weight"] = (nkv * d, h)
        s[p + "self_attn.v_proj.weight"] = (nkv * d, h)
        s[p + "self_attn.o_proj.weight"] = (h, nq * d)
        if mt == "qwen2":
            s[p + "self_attn.q_proj.bias"] = (nq * d,)
            s[p + "self_attn.k_proj.bias"] = (nkv * d,)
            s[p + "self_attn.v_proj.bias"] = (nkv * d,)
        if mt == "qwen3":
            s[p + "self_attn.q_norm.weight"] = (d,)
            s[p + "self_attn.k_norm.weight"] = (d,)
        if mt == "mixtral":
            e, mi = cfg["num_local_experts"], cfg["intermediate_size"]
            s[p + "block_sparse_moe.gate.weight"] = (e, h)
            for x in range(e):
                s[p + f"block_sparse_moe.experts.{x}.w1.weight"] = (mi, h)
                s[p + f"block_sparse_moe.experts.{x}.w2.weight"] = (h, mi)
                s[p + f"block_sparse_moe.experts.{x}.w3.weight"] = (mi, h)
        elif mt == "qwen3_moe":
            s[p + "self_attn.q_norm.weight"] = (d,)
            s[p + "self_attn.k_norm.weight"] = (d,)
            e, mi = cfg["num_experts"], cfg["moe_intermediate_size"]
            s[p + "mlp.gate.weight"] = (e, h)
            for x in range(e):
                s[p + f"mlp.experts.{x}.gate_proj.weight"] = (mi, h)
                s[p + f"mlp.experts.{x}.up_proj.weight"] = (mi, h)
                s[p + f"mlp.experts.{x}.down_proj.weight"] = (h, mi)
        else:
            i = cfg["intermediate_size"]
            s[p + "mlp.gate_proj.weight"] = (i, h)
            s[p + "mlp.up_proj.weight"] = (i, h)
            s[p + "mlp.down_proj.weight"] = (h, i)
    return s


def make_source(cfg, folder):
    os.makedirs(folder, exist_ok=True)
    shapes = hf_shapes(cfg)
    ids, tensors = {}, {}
    for k, name in enumerate(sorted(shapes), start=1):
        shape = shapes[name]
        n = 1
        for x in shape:
            n *= x
        assert n < STRIDE and k * STRIDE + n < 2**24
        ids[name] = k
        tensors[name] = (torch.arange(n, dtype=torch.float64) + k * STRIDE).to(torch.float32).reshape(shape)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return ids


def _worker(rank, world, port, src, tp, ep, tmpdir):
    import vllm
    from vllm.engine.arg_utils import EngineArgs
    from vllm.config import set_current_vllm_config
    from vllm.distributed.parallel_state import (
        ensure_model_parallel_initialized,
        init_distributed_environment,
    )
    from vllm.model_executor.model_loader import get_model_loader
    from vllm.model_executor.model_loader.utils import process_weights_after_loading
    from vllm.utils.torch_utils import set_default_torch_dtype

    args = EngineArgs(
        model=src,
        tensor_parallel_size=tp,
        enable_expert_parallel=ep,
        dtype="float32",
        skip_tokenizer_init=True,
        load_format="safetensors",
        enforce_eager=True,
        max_model_len=128,
        seed=0,
    )
    vllm_config = args.create_engine_config()
    with set_current_vllm_config(vllm_config):
        init_distributed_environment(
            world_size=world,
            rank=rank,
            distributed_init_method=f"tcp://127.0.0.1:{port}",
            local_rank=rank,
            backend="gloo",
        )
        ensure_model_parallel_initialized(tp, 1)
        model_config = vllm_config.model_config
        loader = get_model_loader(vllm_config.load_config)
        with set_default_torch_dtype(model_config.dtype), torch.device("cpu"):
            model = loader.create_model(vllm_config=vllm_config, model_config=model_config)
        loader.load_weights(model, model_config)
        loaded = snapshot(model)
        post_error = None
        try:
            process_weights_after_loading(model, model_config, torch.device("cpu"))
            final = snapshot(model)
        except Exception as e:  # noqa: BLE001
            post_error = f"{type(e).__name__}: {e}"
            final = loaded
        changed = None if post_error else sorted(
            k for k in set(loaded) | set(final)
            if k not in loaded or k not in final
            or loaded[k].shape != final[k].shape or loaded[k].dtype != final[k].dtype
            or not torch.equal(loaded[k], final[k])
        )
        params = {k for k, _ in model.named_parameters()}
        buffers = {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
                "values": v.flatten()[:4].tolist()}
            for k, v in sorted(final.items()) if k not in params
        }
        final = {k: v for k, v in final.items() if k in params}
        save_file(final, os.path.join(tmpdir, f"rank_{rank}.safetensors"), metadata={"format": "pt"})
        info = {
            "vllm": vllm.__version__,
            "torch": torch.__version__,
            "post_processing_changed": changed,
            "post_processing_error": post_error,
            "buffers": buffers,
            "model_class": type(model).__module__ + "." + type(model).__name__,
        }
        with open(os.path.join(tmpdir, f"rank_{rank}.json"), "w") as f:
            json.dump(info, f)


def snapshot(model):
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(name):
    import importlib.metadata as md

    case = CASES[name]
    cdir = os.path.join(OUT, name)
    src = os.path.join(cdir, "source")
    ids = make_source(case["config"], src)
    tp = case["tp"]
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.spawn(
            _worker, args=(tp, free_port(), src, tp, case["ep"], tmp), nprocs=tp, join=True
        )
        ranks, infos = {}, []
        for r in range(tp):
            with open(os.path.join(tmp, f"rank_{r}.json")) as f:
                infos.append(json.load(f))
            t = load_file(os.path.join(tmp, f"rank_{r}.safetensors"))
            save_file(t, os.path.join(cdir, f"rank_{r}.safetensors"), metadata={"format": "pt"})
            ranks[str(r)] = {
                k: str(v.dtype).replace("torch.", "") + str(list(v.shape)).replace(" ", "")
                for k, v in sorted(t.items())
            }
    meta = {
        "case": name,
        "tp": tp,
        "ep": tp if case["ep"] else 1,
        "enable_expert_parallel": case["ep"],
        "vllm": infos[0]["vllm"],
        "torch": infos[0]["torch"],
        "transformers": md.version("transformers"),
        "safetensors": md.version("safetensors"),
        "model_class": infos[0]["model_class"],
        "value_rule": f"source tensor k (see source_tensor_ids), flat index i -> float32(k * {STRIDE} + i); 0.0 never occurs in a source",
        "saved": "model.named_parameters() (as in model.state_dict()) after DefaultModelLoader.load_weights and process_weights_after_loading",
        "state_dict_buffers_not_saved": infos[0]["buffers"],
        "saved_stage": {
            str(r): "after load_weights; process_weights_after_loading raised (see post_processing_error), so these are the loader's bytes before any kernel-specific repacking"
            if i["post_processing_error"] else
            "after load_weights and process_weights_after_loading (post_processing_changed lists parameters it altered)"
            for r, i in enumerate(infos)
        },
        "post_processing_changed": {str(r): i["post_processing_changed"] for r, i in enumerate(infos)},
        "post_processing_error": {str(r): i["post_processing_error"] for r, i in enumerate(infos)},
        "source_tensor_ids": ids,
        "ranks": ranks,
    }
    with open(os.path.join(cdir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{name}: wrote {tp} ranks to {cdir}")


if __name__ == "__main__":
    names = sys.argv[1:] or list(CASES)
    for n in names:
        run_case(n)
