#!/usr/bin/env python3
"""Tiny Hugging Face checkpoints of every supported family that the family tests were NOT written against.

The shared references (../shared/reference/families, copied to test/fixtures/families) fix one configuration per
family. These variants change what a loader could silently get wrong: other seeds and sizes, grouped / multi-query
KV heads, head_dim != hidden / heads, 3 layers (so per-layer patterns repeat), other rope scalings (yarn, dynamic,
llama3 with other factors), partial rotary, non-power-of-two ALiBi heads, Falcon's new decoder layout, sequential
GPT-NeoX, tied / untied heads, and float16 / bfloat16 storage.

Output: <out>/<variant>/ with the save_pretrained files, reference.safetensors and reference.json
(default out: test/fixtures/families-unseen). Weights are drawn like the shared references (matrices N(0, 0.1^2),
biases N(0, 0.05^2), norm weights 1 + N(0, 0.1^2)); references are computed on CPU in float32 from the SAVED
weights (the folder reloaded with dtype=float32, eager attention), so the rounding to float16 / bfloat16 is part of
the reference. Keys: input_ids [2, S], logits, hidden_states.{0..L} (HF convention), mlp_act.{i} (input of the MLP
down projection); the dynamic-rope variant also decode_logits (transformers' own one-token-at-a-time decode).

Requires: torch, transformers (5.x), safetensors. Usage:
  python3 scripts/make-unseen-families.py [--out test/fixtures/families-unseen] [--only a,b]
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

import transformers
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_fixture_common import hf_reference, init_weights, make_variants, variant_args, write_json  # noqa: E402

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
COMMON = dict(vocab_size=384, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def rope(kind="default", theta=10000.0, **kw):
    return {"rope_parameters": {"rope_type": kind, "rope_theta": theta, **kw}}


VARIANTS = [
    # name, seed, dtype, seq, model_type, config kwargs, features
    ("llama-yarn-gqa-f16", 11, F16, 48, "llama", dict(hidden_size=48, intermediate_size=112, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
        **rope("yarn", factor=4.0, original_max_position_embeddings=16)), "rope yarn factor 4 (original 16), GQA 4/2, float16"),
    ("llama-dynamic-bf16", 12, BF16, 40, "llama", dict(hidden_size=32, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=16, tie_word_embeddings=True,
        **rope("dynamic", factor=2.0)), "rope dynamic NTK factor 2 past 16 positions (S 40), tied head, bfloat16"),
    ("llama3-rope-3layer-bf16", 13, BF16, 56, "llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128, tie_word_embeddings=False,
        **rope("llama3", theta=500000.0, factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16)),
        "rope llama3 factor 4 (low 1, high 4, original 16), 3 layers, multi-query (1 KV head), bfloat16"),
    ("relu-llama-tied-bf16", 14, BF16, 32, "llama", dict(hidden_size=48, intermediate_size=160, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=3, hidden_act="relu", max_position_embeddings=64, tie_word_embeddings=True, **rope()),
        "hidden_act relu, GQA 6/3, 3 layers, tied head, bfloat16"),
    ("mistral-window5-gqa-bf16", 15, BF16, 40, "mistral", dict(hidden_size=64, intermediate_size=144, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, head_dim=8, sliding_window=5, max_position_embeddings=64, **rope()),
        "sliding_window 5, GQA 8/2, head_dim 8, bfloat16"),
    ("qwen2-tied-f16", 16, F16, 32, "qwen2", dict(hidden_size=48, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, **rope(theta=1000000.0)),
        "QKV bias, GQA 6/2, theta 1e6, tied head, 3 layers, float16"),
    ("qwen3-mqa-bf16", 17, BF16, 32, "qwen3", dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=24, max_position_embeddings=64, tie_word_embeddings=False, **rope()),
        "QK-norm, head_dim 24 != 48/4, multi-query, bfloat16"),
    ("phi3-partial-window-f16", 18, F16, 40, "phi3", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=6, max_position_embeddings=64, original_max_position_embeddings=64,
        **rope(partial_rotary_factor=0.5)), "fused qkv / gate_up, partial rotary 0.5, GQA 4/2, sliding_window 6, float16"),
    ("gemma-mqa-bf16", 19, BF16, 32, "gemma", dict(hidden_size=48, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=64, **rope()),
        "GeGLU tanh, 1+w RMSNorm, embedding scale, multi-query, head_dim 32, bfloat16"),
    ("gemma2-3layer-f16", 20, F16, 40, "gemma2", dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, sliding_window=6, query_pre_attn_scalar=24,
        attn_logit_softcapping=40.0, final_logit_softcapping=20.0, max_position_embeddings=64,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], **rope()),
        "softcapping 40/20, query_pre_attn_scalar 24, window 6 on layers 0 and 2, head_dim 24, float16"),
    ("gpt2-3layer-f16", 21, F16, 32, "gpt2", dict(n_embd=48, n_head=6, n_layer=3, n_inner=160, n_positions=64,
        activation_function="gelu_new", bos_token_id=1, eos_token_id=2),
        "Conv1D, gelu_new, n_inner 160 (not 4d), 6 heads, 3 layers, float16"),
    ("gpt_neox-sequential-bf16", 22, BF16, 32, "gpt_neox", dict(hidden_size=48, intermediate_size=144, num_hidden_layers=3,
        num_attention_heads=4, use_parallel_residual=False, max_position_embeddings=64, tie_word_embeddings=False,
        **rope(partial_rotary_factor=0.5)), "sequential residual (use_parallel_residual false), rotary 50%, 3 layers, bfloat16"),
    ("bloom-6heads-f16", 23, F16, 32, "bloom", dict(hidden_size=48, n_head=6, n_layer=3),
        "ALiBi with 6 heads (not a power of two: interleaved slopes), 3 layers, float16"),
    ("falcon-newdec-f16", 24, F16, 32, "falcon", dict(hidden_size=64, num_attention_heads=4, num_kv_heads=2,
        num_hidden_layers=2, new_decoder_architecture=True, parallel_attn=True, bias=False, alibi=False,
        max_position_embeddings=64, **rope()), "new_decoder_architecture (Falcon-40B layout: 2 KV groups, two input norms), float16"),
    ("falcon-sequential-bias-bf16", 25, BF16, 32, "falcon", dict(hidden_size=48, num_attention_heads=4, num_hidden_layers=2,
        new_decoder_architecture=False, multi_query=False, parallel_attn=False, bias=True, alibi=False,
        max_position_embeddings=64, **rope()), "sequential attention/MLP (parallel_attn false), biases, full KV heads, bfloat16"),
]

DOWN = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "fc2")


def decoder_layers(model):
    best = None
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == model.config.num_hidden_layers:
            best = mod
            break
    assert best is not None, "no decoder layer list found"
    return best


def down_of(layer):
    for p in DOWN:
        try:
            return layer.get_submodule(p)
        except AttributeError:
            continue
    raise AssertionError(f"no down projection among {DOWN}")


@torch.no_grad()
def reference(model, input_ids):
    act, hooks = {}, []
    for i, layer in enumerate(decoder_layers(model)):
        hooks.append(down_of(layer).register_forward_pre_hook(lambda _m, a, i=i: act.__setitem__(i, a[0].detach().clone())))
    t = hf_reference(model, input_ids, hooks)
    for i in sorted(act):
        t[f"mlp_act.{i}"] = act[i].float().reshape(input_ids.shape[0], input_ids.shape[1], -1)
    return t


@torch.no_grad()
def decode_logits(model, input_ids):
    from transformers import DynamicCache
    cache, steps = DynamicCache(config=model.config), []
    for i in range(input_ids.shape[1]):
        out = model(input_ids=input_ids[:, i : i + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        steps.append(out.logits.float())
    return torch.cat(steps, dim=1)


def make_variant(v, out_root):
    name, seed, dtype, seq, model_type, kw, features = v
    out = os.path.join(out_root, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    args = {**COMMON, **kw}
    cfg = AutoConfig.for_model(model_type, **args)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    init_weights(model, seed)
    model = model.to(dtype).eval()
    model.save_pretrained(out)
    cfg_path = os.path.join(out, "config.json")
    with open(cfg_path) as f:
        cj = json.load(f)
    want = str(dtype).replace("torch.", "")
    if cj.get("dtype") != want:
        cj["dtype"] = want
        write_json(cfg_path, cj, indent=2, sort_keys=True)
    del model
    m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(seed + 1000)
    input_ids = torch.randint(4, cfg.vocab_size, (2, seq), generator=g, dtype=torch.int64)
    t = reference(m, input_ids)
    if kw.get("rope_parameters", {}).get("rope_type") == "dynamic":
        # dynamic NTK rescales as the sequence grows, so transformers' own step-by-step decode differs from its full
        # forward: record that decode (one token at a time through its KV cache) for the decode runtime to match
        t["decode_logits"] = decode_logits(m, input_ids)
    t = {k: x.contiguous() for k, x in t.items()}
    save_file(t, os.path.join(out, "reference.safetensors"))
    ref = {"model_type": model_type, "variant": name, "saved_dtype": want, "seq": seq, "seed": seed, "features": features,
           "keys": sorted(t.keys()), "init": "matrices N(0, 0.1^2), biases N(0, 0.05^2), norm weights 1 + N(0, 0.1^2)",
           "note": "hidden_states.0 = embeddings output, hidden_states.L = after the final norm (HF); mlp_act.i = input of "
                   "the MLP down projection; computed on CPU in float32 from the saved weights, eager attention",
           "transformers_version": transformers.__version__, "torch_version": torch.__version__.split("+")[0]}
    write_json(os.path.join(out, "reference.json"), ref, indent=1)
    total = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"{name}: {total} bytes, logits {tuple(t['logits'].shape)}")
    return total


def main():
    a, only = variant_args(__doc__, "test/fixtures/families-unseen")
    total, failed = make_variants(VARIANTS, lambda v: v[0], make_variant, a.out, only)
    print(f"total {total} bytes; failed: {failed or 'none'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
