#!/usr/bin/env python3
"""Make tiny randomly initialised Hugging Face checkpoints that exercise loader/forward variants.

Output: <out>/<variant>/ with the save_pretrained files, reference.safetensors and reference.json
(default out: test/fixtures/hf-variants).

  opt-postln-proj-f16     OPT, post-LN (do_layer_norm_before=false, so no final layer norm),
                          word_embed_proj_dim 24 != hidden 48 (project_in / project_out), tied LM head,
                          saved float16; plus a left-padded batch with attention_mask
  opt-untied-bf16         OPT, pre-LN, untied LM head (lm_head.weight saved), saved bfloat16
  llama-gqa-tied-sharded  Llama, 4 heads / 2 KV heads, tied LM head, rope_theta 500000, float32,
                          saved in several shards (model.safetensors.index.json)
  llama-f16-bias          Llama, attention_bias + mlp_bias, head_dim 16 != hidden 48 / 4 heads = 12,
                          untied LM head, saved float16

Weights are drawn like the shared reference fixtures (test/fixtures/opt-tiny-ref, llama-tiny-ref):
matrices (and embeddings) N(0, 0.1^2), biases N(0, 0.05^2), norm weights 1 + N(0, 0.1^2), from a
torch.Generator with a fixed seed per variant, walking named_parameters() in order.  References
are computed on CPU in float32 from the SAVED weights (the folder reloaded with dtype=float32,
eager attention), so the rounding to float16 / bfloat16 is part of the reference.

Reference keys (see reference.json): input_ids [2,16] int64, logits, hidden_states.{0..L}
(output_hidden_states: 0 = embeddings output, L = after the final norm (and OPT's project_out)),
mlp_act.{i} (input of fc2 / down_proj), attn_context.{i} (input of out_proj / o_proj, heads
concatenated).  opt-postln-proj-f16 also has input_ids_padded, attention_mask, logits_padded.

Requires: torch, transformers (5.x), safetensors.  Usage:
  python3 scripts/make-hf-variants.py [--out test/fixtures/hf-variants]
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_fixture_common import hf_reference, make_variants, variant_args, write_json  # noqa: E402

SEQ = 16
NOTE = (
    "hidden_states.0 = embeddings output; hidden_states.L = after final norm (HF convention; for OPT with "
    "word_embed_proj_dim != hidden_size also after project_out, and OPT post-LN has no final norm); "
    "mlp_act.i = input of the MLP down projection (OPT: relu(fc1 x); Llama: silu(gate x)*up x); "
    "attn_context.i = input of the attention output projection, heads concatenated. Computed on CPU in float32 "
    "from the saved weights (reloaded with dtype=float32, eager attention)."
)


def opt_cfg(**kw):
    base = dict(
        vocab_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        activation_function="relu",
        enable_bias=True,
        dropout=0.0,
        attention_dropout=0.0,
        layerdrop=0.0,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
    )
    base.update(kw)
    return OPTConfig(**base)


def llama_cfg(**kw):
    base = dict(
        vocab_size=256,
        num_hidden_layers=2,
        hidden_act="silu",
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    base.update(kw)
    return LlamaConfig(**base)


VARIANTS = [
    {
        "name": "opt-postln-proj-f16",
        "seed": 101,
        "dtype": torch.float16,
        "config": lambda: opt_cfg(
            hidden_size=48,
            word_embed_proj_dim=24,
            ffn_dim=96,
            do_layer_norm_before=False,
            tie_word_embeddings=True,
        ),
        "features": [
            "OPT post-LN (do_layer_norm_before=false): layer norms after the residual adds, no final layer norm",
            "word_embed_proj_dim 24 != hidden_size 48: project_in (24->48) after the token embedding, project_out (48->24) before the LM head",
            "tie_word_embeddings=true (no lm_head.weight in the file)",
            "saved as float16",
            "left-padded batch: input_ids_padded / attention_mask / logits_padded (row 1 has 5 pad tokens in front; HF OPT "
            "positions come from cumsum(attention_mask), so logits_padded[1, 5:] == logits[1, :11])",
        ],
        "padded": True,
    },
    {
        "name": "opt-untied-bf16",
        "seed": 202,
        "dtype": torch.bfloat16,
        "config": lambda: opt_cfg(
            hidden_size=32,
            word_embed_proj_dim=32,
            ffn_dim=128,
            do_layer_norm_before=True,
            tie_word_embeddings=False,
        ),
        "features": [
            "OPT pre-LN with final layer norm",
            "tie_word_embeddings=false: lm_head.weight stored separately",
            "saved as bfloat16",
        ],
    },
    {
        "name": "llama-gqa-tied-sharded",
        "seed": 303,
        "dtype": torch.float32,
        "shard": 40_000,
        "config": lambda: llama_cfg(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
            tie_word_embeddings=True,
        ),
        "features": [
            "GQA: 4 query heads, 2 key-value heads (head_dim 8)",
            "tie_word_embeddings=true (no lm_head.weight in the files)",
            "rope_theta 500000 (config.rope_parameters)",
            "float32, saved with max_shard_size=40000 bytes: model.safetensors.index.json + several shards",
        ],
    },
    {
        "name": "llama-f16-bias",
        "seed": 404,
        "dtype": torch.float16,
        "config": lambda: llama_cfg(
            hidden_size=48,
            intermediate_size=96,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=16,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False,
        ),
        "features": [
            "attention_bias=true (q/k/v/o biases) and mlp_bias=true (gate/up/down biases)",
            "head_dim 16 set explicitly, != hidden_size/num_attention_heads = 12 (q_proj 48->64, o_proj 64->48)",
            "untied LM head",
            "saved as float16",
        ],
    },
]


def init_weights(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                v = torch.randn(p.shape, generator=g) * 0.05
            elif p.dim() == 1 and "norm" in name:
                v = 1.0 + torch.randn(p.shape, generator=g) * 0.1
            else:
                v = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(v.to(p.dtype))


def layers_of(model):
    if model.config.model_type == "opt":
        return [(l.self_attn.out_proj, l.fc2) for l in model.model.decoder.layers]
    return [(l.self_attn.o_proj, l.mlp.down_proj) for l in model.model.layers]


@torch.no_grad()
def reference(model, input_ids):
    ctx, act, hooks = {}, {}, []
    for i, (o, d) in enumerate(layers_of(model)):
        hooks.append(o.register_forward_pre_hook(lambda _m, a, i=i: ctx.__setitem__(i, a[0].detach().clone())))
        hooks.append(d.register_forward_pre_hook(lambda _m, a, i=i: act.__setitem__(i, a[0].detach().clone())))
    t = hf_reference(model, input_ids, hooks)
    for i in sorted(ctx):
        t[f"attn_context.{i}"] = ctx[i].float().reshape(input_ids.shape[0], input_ids.shape[1], -1)
        t[f"mlp_act.{i}"] = act[i].float().reshape(input_ids.shape[0], input_ids.shape[1], -1)
    return t


def make_variant(v, out_root: str):
    name = v["name"]
    out = os.path.join(out_root, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    cfg = v["config"]()
    torch.manual_seed(v["seed"])
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    init_weights(model, v["seed"])
    model = model.to(v["dtype"]).eval()
    kw = {}
    if "shard" in v:
        kw["max_shard_size"] = v["shard"]
    try:
        model.save_pretrained(out, **kw)
    except (TypeError, ValueError) as e:
        if "max_shard_size" not in kw:
            raise
        print(f"  {name}: save_pretrained(max_shard_size={kw['max_shard_size']!r}) failed ({e}); retrying with '40KB'")
        model.save_pretrained(out, max_shard_size="40KB")
    if "shard" in v and not os.path.exists(os.path.join(out, "model.safetensors.index.json")):
        print(f"  WARNING {name}: no model.safetensors.index.json was written")
    # make sure the config states the stored dtype
    cfg_path = os.path.join(out, "config.json")
    with open(cfg_path) as f:
        cj = json.load(f)
    want = str(v["dtype"]).replace("torch.", "")
    if cj.get("dtype") != want:
        print(f"  {name}: config dtype {cj.get('dtype')!r} -> {want!r}")
        cj["dtype"] = want
        write_json(cfg_path, cj, indent=2, sort_keys=True)
    del model

    m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    assert next(m.parameters()).dtype == torch.float32
    g = torch.Generator().manual_seed(v["seed"] + 1)
    input_ids = torch.randint(4, cfg.vocab_size, (2, SEQ), generator=g, dtype=torch.int64)
    t = reference(m, input_ids)
    if v.get("padded"):
        npad = 5
        pad = cfg.pad_token_id
        padded = input_ids.clone()
        padded[1] = torch.cat([torch.full((npad,), pad, dtype=torch.int64), input_ids[1, : SEQ - npad]])
        mask = torch.ones(2, SEQ, dtype=torch.int64)
        mask[1, :npad] = 0
        with torch.no_grad():
            lp = m(input_ids=padded, attention_mask=mask, use_cache=False).logits.float()
        diff = (lp[1, npad:] - t["logits"][1, : SEQ - npad]).abs().max().item()
        diff0 = (lp[0] - t["logits"][0]).abs().max().item()
        print(f"  {name}: padded row max |diff| vs unpadded = {diff:.3e}, row 0 = {diff0:.3e}")
        assert diff < 1e-4 and diff0 < 1e-4, "left padding changed the logits of the real tokens"
        t["input_ids_padded"] = padded
        t["attention_mask"] = mask
        t["logits_padded"] = lp
    t = {k: x.contiguous() for k, x in t.items()}
    save_file(t, os.path.join(out, "reference.safetensors"))
    ref = {
        "model_dtype": str(next(m.parameters()).dtype),
        "saved_dtype": want,
        "keys": sorted(t.keys()),
        "note": NOTE,
        "variant": name,
        "features": v["features"],
        "seed": v["seed"],
        "init": "matrices N(0, 0.1^2), biases N(0, 0.05^2), norm weights 1 + N(0, 0.1^2)",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
    }
    if v.get("padded"):
        ref["padding"] = {
            "pad_token_id": cfg.pad_token_id,
            "left_pad_rows": [1],
            "num_pad": 5,
            "note": "attention_mask is 0 on the pad tokens; logits_padded computed with that mask; only real-token positions are meaningful",
        }
    write_json(os.path.join(out, "reference.json"), ref, indent=1)
    files = sorted(os.listdir(out))
    total = sum(os.path.getsize(os.path.join(out, f)) for f in files)
    print(f"{name}: {total} bytes: " + ", ".join(f"{f} ({os.path.getsize(os.path.join(out, f))})" for f in files))
    return total


def main():
    args, only = variant_args(__doc__, "test/fixtures/hf-variants")
    total, failed = make_variants(VARIANTS, lambda v: v["name"], make_variant, args.out, only)
    print(f"total {total} bytes")
    if failed:
        print(f"FAILED: {failed}")
        sys.exit(1)


if __name__ == "__main__":
    main()
