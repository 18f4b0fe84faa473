#!/usr/bin/env python3
"""The config.json of popular Hugging Face checkpoints, as they stand on the hub (old-style keys: rope_scaling,
top-level rope_theta, rotary_pct, n_head, ...), shrunk to tiny random-weight folders: every key that changes the
math is kept as the checkpoint has it; only sizes shrink (hidden, ffn, layers, vocab; head counts keep their ratio
where they can; a sliding window shrinks to 8 so that it matters at 24 tokens).

For each: <out>/<name>/config.json (the hub-style dict, shrunk), model.safetensors (float16; each family's own tensor
names, written by save_pretrained) and reference.safetensors (input_ids [2, 24] and the logits transformers computes
after loading that very config.json, in float32 from the stored float16 weights; eager attention). A config transformers itself cannot load is reported and
skipped. dejavu must either match the logits (1e-4) or refuse the config naming the key (exit 2): never load it and
compute something else (test/popular-configs.test.ts).

Requires: torch, transformers (5.x), safetensors. Usage: python3 scripts/make-popular-configs.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import traceback

import torch
from safetensors.torch import save_file

import transformers
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_fixture_common import init_weights, write_json  # noqa: E402

SEQ = 24
V = 128
L2 = dict(num_hidden_layers=2, vocab_size=V)


def llama(**kw):
    base = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=32, intermediate_size=64,
                num_attention_heads=4, num_key_value_heads=4, hidden_act="silu", rms_norm_eps=1e-5, rope_theta=10000.0,
                rope_scaling=None, max_position_embeddings=4096, tie_word_embeddings=False, attention_bias=False,
                pretraining_tp=1, bos_token_id=1, eos_token_id=2, **L2)
    base.update(kw)
    return base


def with_type(mt, arch, **kw):
    return dict(model_type=mt, architectures=[arch], bos_token_id=1, eos_token_id=2, **L2, **kw)


L3_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}
CONFIGS = {
    "llama-2-7b": llama(),
    "llama-2-7b-chat-tp2": llama(pretraining_tp=2),
    "meta-llama-3-8b": llama(num_key_value_heads=1, rope_theta=500000.0, max_position_embeddings=8192),
    "llama-3.1-8b": llama(num_key_value_heads=2, rope_theta=500000.0, rope_scaling=L3_SCALING, max_position_embeddings=131072, head_dim=16, mlp_bias=False),
    "llama-3.2-1b": llama(num_key_value_heads=2, rope_theta=500000.0, tie_word_embeddings=True, head_dim=16,
                          rope_scaling={**L3_SCALING, "factor": 32.0}, max_position_embeddings=131072),
    "tinyllama-1.1b": llama(num_key_value_heads=1, max_position_embeddings=2048),
    "smollm2-135m": llama(hidden_size=24, num_attention_heads=3, num_key_value_heads=1, rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=8192),
    "codellama-7b": llama(rope_theta=1000000.0, max_position_embeddings=16384),
    "vicuna-7b-linear": llama(rope_scaling={"type": "linear", "factor": 4.0}),
    "longchat-dynamic": llama(rope_scaling={"type": "dynamic", "factor": 2.0}, max_position_embeddings=16),
    "yarn-llama-2": llama(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}, max_position_embeddings=64),
    "relu-llama-7b": llama(hidden_act="relu"),
    "llama-swish": llama(hidden_act="swish"),
    "mistral-7b-v0.1": with_type("mistral", "MistralForCausalLM", hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=1,
                                 hidden_act="silu", rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=8, max_position_embeddings=32768, tie_word_embeddings=False),
    "mistral-7b-instruct-v0.2": with_type("mistral", "MistralForCausalLM", hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=1,
                                          hidden_act="silu", rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=None, max_position_embeddings=32768),
    "qwen2-0.5b": with_type("qwen2", "Qwen2ForCausalLM", hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                            hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0, sliding_window=131072, max_window_layers=24,
                            use_sliding_window=False, tie_word_embeddings=True, max_position_embeddings=131072),
    "qwen2.5-7b": with_type("qwen2", "Qwen2ForCausalLM", hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                            hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0, sliding_window=131072, max_window_layers=28,
                            use_sliding_window=False, tie_word_embeddings=False, max_position_embeddings=131072, rope_scaling=None),
    "qwen3-0.6b": with_type("qwen3", "Qwen3ForCausalLM", hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=32, hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0, attention_bias=False, sliding_window=None,
                            max_window_layers=28, use_sliding_window=False, tie_word_embeddings=True, max_position_embeddings=40960, rope_scaling=None),
    "gemma-2b": with_type("gemma", "GemmaForCausalLM", hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=1,
                          head_dim=16, hidden_act="gelu", hidden_activation=None, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=8192),
    "gemma-7b": with_type("gemma", "GemmaForCausalLM", hidden_size=24, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4,
                          head_dim=32, hidden_act="gelu", hidden_activation=None, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=8192),
    "gemma-1.1-2b": with_type("gemma", "GemmaForCausalLM", hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=1,
                              head_dim=16, hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, max_position_embeddings=8192),
    "gemma-2-2b": with_type("gemma2", "Gemma2ForCausalLM", hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=16, hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
                            query_pre_attn_scalar=16, sliding_window=8, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                            cache_implementation="hybrid", max_position_embeddings=8192),
    "gemma-2-27b": with_type("gemma2", "Gemma2ForCausalLM", hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=32, hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
                             query_pre_attn_scalar=16, sliding_window=8, attn_logit_softcapping=50.0, final_logit_softcapping=30.0, max_position_embeddings=8192),
    "phi-3-mini-4k": with_type("phi3", "Phi3ForCausalLM", pad_token_id=0, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4,
                               hidden_act="silu", rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None, sliding_window=8,
                               original_max_position_embeddings=4096, max_position_embeddings=4096, tie_word_embeddings=False),
    "phi-3-mini-128k": with_type("phi3", "Phi3ForCausalLM", pad_token_id=0, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4,
                                 hidden_act="silu", rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=8,
                                 rope_scaling={"type": "longrope", "long_factor": [1.0 + i / 4 for i in range(4)], "short_factor": [1.0] * 4},
                                 original_max_position_embeddings=4096, max_position_embeddings=131072),
    "gpt2": with_type("gpt2", "GPT2LMHeadModel", n_embd=32, n_head=4, n_layer=2, n_positions=64, n_inner=None, activation_function="gelu_new",
                      layer_norm_epsilon=1e-5, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False),
    "pythia-70m": with_type("gpt_neox", "GPTNeoXForCausalLM", hidden_size=32, intermediate_size=128, num_attention_heads=4, rotary_pct=0.25,
                            rotary_emb_base=10000, use_parallel_residual=True, hidden_act="gelu", layer_norm_eps=1e-5, tie_word_embeddings=False,
                            max_position_embeddings=2048),
    "gpt-neox-20b": with_type("gpt_neox", "GPTNeoXForCausalLM", hidden_size=32, intermediate_size=128, num_attention_heads=4, rotary_pct=0.25,
                              rotary_emb_base=10000, use_parallel_residual=True, hidden_act="gelu_fast", layer_norm_eps=1e-5, max_position_embeddings=2048),
    "bloom-560m": with_type("bloom", "BloomForCausalLM", hidden_size=32, n_head=4, n_layer=2, apply_residual_connection_post_layernorm=False,
                            layer_norm_epsilon=1e-5, slow_but_exact=False, pretraining_tp=1),
    "falcon-7b": with_type("falcon", "FalconForCausalLM", hidden_size=32, num_attention_heads=4, multi_query=True, parallel_attn=True,
                           new_decoder_architecture=False, alibi=False, bias=False, layer_norm_epsilon=1e-5),
    "falcon-40b": with_type("falcon", "FalconForCausalLM", hidden_size=32, num_attention_heads=4, num_kv_heads=2, new_decoder_architecture=True,
                            parallel_attn=True, alibi=False, bias=False, layer_norm_epsilon=1e-5),
    "falcon-rw-1b": with_type("falcon", "FalconForCausalLM", hidden_size=32, num_attention_heads=4, multi_query=False, parallel_attn=False,
                              new_decoder_architecture=False, alibi=True, bias=True, layer_norm_epsilon=1e-5),
    "opt-125m": with_type("opt", "OPTForCausalLM", hidden_size=32, ffn_dim=128, num_attention_heads=4, word_embed_proj_dim=32,
                          do_layer_norm_before=True, activation_function="relu", max_position_embeddings=64, enable_bias=True),
    "opt-350m": with_type("opt", "OPTForCausalLM", hidden_size=32, ffn_dim=128, num_attention_heads=4, word_embed_proj_dim=16,
                          do_layer_norm_before=False, activation_function="relu", max_position_embeddings=64),
    "mixtral-8x7b": with_type("mixtral", "MixtralForCausalLM", hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=1,
                              num_local_experts=4, num_experts_per_tok=2, rope_theta=1000000.0, sliding_window=None),
    "olmo2-1b": with_type("olmo2", "Olmo2ForCausalLM", hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4,
                          rope_theta=500000.0),
}


def make(name, hub, out_root, seed):
    out = os.path.join(out_root, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    kw = {k: v for k, v in hub.items() if k not in ("model_type", "architectures")}
    cfg = AutoConfig.for_model(hub["model_type"], **kw)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    init_weights(model, seed)
    model.to(torch.float16).eval().save_pretrained(out)  # stored half size; the reference is computed in float32 from it
    write_json(os.path.join(out, "config.json"), {**hub, "torch_dtype": "float16"}, indent=2, sort_keys=True)  # the hub-style config as the checkpoint has it
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(out, extra)):
            os.remove(os.path.join(out, extra))
    m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(seed + 1000)
    ids = torch.randint(4, V, (2, SEQ), generator=g, dtype=torch.int64)
    with torch.no_grad():
        logits = m(input_ids=ids, use_cache=False).logits.float()
    save_file({"input_ids": ids, "logits": logits.contiguous()}, os.path.join(out, "reference.safetensors"))
    write_json(os.path.join(out, "reference.json"), {"checkpoint": name, "model_type": hub["model_type"], "seq": SEQ, "seed": seed, "keys": ["input_ids", "logits"],
                   "note": "logits of transformers after from_pretrained of this folder's hub-style config.json (float32, eager)",
                   "transformers_version": transformers.__version__}, indent=1)
    print(f"{name}: {sum(os.path.getsize(os.path.join(out, x)) for x in os.listdir(out))} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="test/fixtures/popular-configs")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    os.makedirs(a.out, exist_ok=True)
    failed = []
    for i, (name, hub) in enumerate(CONFIGS.items()):
        try:
            make(name, hub, a.out, 500 + i)
        except Exception:  # noqa: BLE001 - transformers itself cannot load it: report, keep going
            traceback.print_exc()
            failed.append(name)
            shutil.rmtree(os.path.join(a.out, name), ignore_errors=True)
    print(f"{len(CONFIGS) - len(failed)} made; transformers could not make: {failed or 'none'}")


if __name__ == "__main__":
    main()
