#!/usr/bin/env python3
"""Train a small SwiGLU (Llama-family) model nobody has seen, and compute an independent PyTorch reference of
training-free activation sparsity (TEAL input thresholds, CATS gate threshold) on it, for dejavu-ts's issue 22.

Two steps (`all` runs both, in one GPU call):

  train  LlamaForCausalLM from scratch (SwiGLU, RMSNorm, RoPE, GQA; 4 layers, d 256, ffn 640, 8 heads of 32, 4 kv
         heads, LM head tied to the embeddings; the fixture checkpoints/llama-fixture is d 192, ffn 512, 6 heads, 2 kv
         heads, untied) with the tokenizer of checkpoints/llama-fixture (copied, not retrained), on data/train.jsonl;
         the recipe of scripts/check-unseen.py (BOS-prefixed documents packed into 256-token windows, AdamW, warm-up +
         cosine, bf16 autocast, no sparsity regulariser) with another architecture and seed. Saved with
         save_pretrained in float16 (safetensors) plus tokenizer.json, training-log.json and a model card README.md.

  check  The reference method of the project's shared reference (sparsity-{llama,opt}-fixture.json), written from its
         definition only (PyTorch; float32 forward passes, TF32 off, eager attention):
           - rows: every document of a file prefixed with BOS (config bos_token_id, 1) and tokenized without special
             tokens, all documents concatenated, cut into 256-token rows (remainder dropped), as dejavu's
             packSequences does; calibration = the first 32 rows of data/calibration.jsonl (8192 tokens), held-out =
             the first 64 rows of data/heldout.jsonl (16384 tokens);
           - sites per layer: attn = the shared input of q/k/v (input_layernorm's output), o = o_proj's input, mlp =
             the shared input of gate/up (post_attention_layernorm's output), down = down_proj's input
             (silu(gate)·up), gate = |silu(gate)| (CATS);
           - threshold of sparsity s at a layer's site: the s-quantile (torch.quantile, linear) of |x| over every entry
             of that site's input vectors on the calibration rows, from the dense model;
           - applied on the held-out rows: entries with |x| < t set to 0 at each chosen site (gate: silu(gate)
             entries, so that the product with up and the down rows of those neurons are skipped);
           - perplexity = exp(mean next-token NLL) over the 64 held-out rows (64 x 255 predictions), dense and
             sparse; vs_dense = ppl / dense - 1; bytes_skipped = share of the decoder layers' weights not read at
             the nominal s (embeddings and LM head excluded), kept_heldout = the share of the sites' entries actually
             kept on the held-out rows (weighted by the weights each entry reads).
         Methods: teal-all (attn, o, mlp, down), teal-attn (attn, o), teal-mlp (mlp, down), down-in (down), cats
         (gate). Output: one JSON with the thresholds, the packing hashes and the runs.

Usage:
  python3 scripts/check-unseen-swiglu.py all --data data --tokenizer checkpoints/llama-fixture/tokenizer.json \\
      --model checkpoints/llama-unseen --json docs/independent-check-swiglu.json --steps 3000 --seed 20261202
  python3 scripts/check-unseen-swiglu.py check --data data --model checkpoints/llama-unseen --json docs/independent-check-swiglu.json

Requires: torch, transformers (5.x), tokenizers, safetensors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import shutil
import sys
import time

import torch
from tokenizers import Tokenizer

import transformers
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_fixture_common import SEQ_LEN, add_training_args, cosine_lr, log, pack, read_jsonl, train_step, windows_of  # noqa: E402

BOS = 1
SITES = ("attn", "o", "mlp", "down", "gate")
METHODS = {"teal-all": ("attn", "o", "mlp", "down"), "teal-attn": ("attn", "o"), "teal-mlp": ("mlp", "down"), "down-in": ("down",), "cats": ("gate",)}
RUNS = [("down-in", 0.3), ("down-in", 0.4), ("down-in", 0.5), ("teal-all", 0.15), ("teal-all", 0.25), ("teal-all", 0.4), ("teal-attn", 0.3), ("teal-attn", 0.5),
        ("teal-mlp", 0.4), ("cats", 0.4), ("cats", 0.5)]


def pack_rows(tok: Tokenizer, texts: list[str]) -> torch.Tensor:
    """BOS + ids of each document, concatenated, cut into rows of SEQ_LEN (remainder dropped): [n, SEQ_LEN] int64."""
    return windows_of(pack(tok, texts, BOS))


def ids_sha256(rows: torch.Tensor) -> str:
    return hashlib.sha256(rows.to(torch.int32).numpy().tobytes()).hexdigest()


def dev() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------------------- train


def make_config(a) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=4096, hidden_size=a.d, intermediate_size=a.ffn, num_hidden_layers=a.layers, num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads, head_dim=a.d // a.heads, hidden_act="silu", max_position_embeddings=512, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, initializer_range=0.02, attention_bias=False, mlp_bias=False,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=None,
    )


@torch.no_grad()
def heldout_eval(model, rows: torch.Tensor, batch: int = 32, autocast: bool = False) -> dict:
    """Mean NLL over all next-token predictions of all rows (float64 sum)."""
    d = dev()
    was = model.training
    model.eval()
    s, n = 0.0, 0
    try:
        for b in range(0, rows.shape[0], batch):
            x = rows[b : b + batch].to(d)
            with torch.autocast(d.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(input_ids=x, use_cache=False).logits
            lp = torch.log_softmax(logits.float()[:, :-1], -1)
            s += float(-lp.gather(-1, x[:, 1:, None]).double().sum())
            n += x[:, 1:].numel()
    finally:
        model.train(was)
    return {"nll_mean": s / n, "ppl": math.exp(s / n), "rows": int(rows.shape[0]), "predictions": n}


def train(a) -> None:
    d = dev()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tok = Tokenizer.from_file(a.tokenizer)
    tr_rows = pack_rows(tok, read_jsonl(os.path.join(a.data, "train.jsonl"))).to(d)
    held_rows = pack_rows(tok, read_jsonl(os.path.join(a.data, "heldout.jsonl")))
    log(f"train: {tr_rows.numel()} tokens ({tr_rows.shape[0]} rows); held-out {held_rows.numel()} tokens")
    cfg = make_config(a)
    torch.manual_seed(a.seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(d).float()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, **({"fused": True} if d.type == "cuda" else {}))
    min_lr = a.lr * a.min_lr_ratio

    def lr_at(step):
        return cosine_lr(step, a.lr, a.warmup, a.steps, min_lr)

    g = torch.Generator().manual_seed(a.seed)
    nwin = tr_rows.shape[0]
    perm = torch.randperm(nwin, generator=g).to(d)
    cursor, epoch = 0, 0
    V = cfg.vocab_size
    loss_log, eval_log = [], []
    acc, acc_n = torch.zeros((), device=d), 0
    model.train()
    t_start = time.time()
    for step in range(1, a.steps + 1):
        if cursor + a.batch > nwin:
            perm = torch.randperm(nwin, generator=g).to(d)
            cursor, epoch = 0, epoch + 1
        x = tr_rows[perm[cursor : cursor + a.batch]]
        cursor += a.batch
        lr = lr_at(step - 1)
        loss = train_step(model, opt, x, lr, V, d.type)
        acc += loss.detach()
        acc_n += 1
        if step % 50 == 0 or step % a.eval_every == 0 or step == a.steps:
            loss_log.append({"step": step, "loss": round(float(acc / acc_n), 5), "lr": lr, "epoch": epoch, "elapsed_s": round(time.time() - t_start, 2)})
            acc.zero_()
            acc_n = 0
        if step % a.eval_every == 0 or step == a.steps:
            ev = heldout_eval(model, held_rows, batch=64, autocast=True)
            eval_log.append({"step": step, "train_loss": loss_log[-1]["loss"], "heldout_nll_bf16": round(ev["nll_mean"], 5)})
            log(f"step {step}/{a.steps} loss {loss_log[-1]['loss']:.4f} held-out nll {ev['nll_mean']:.4f}")
    if d.type == "cuda":
        torch.cuda.synchronize()
    wall = time.time() - t_start
    out = a.model
    os.makedirs(out, exist_ok=True)
    model = model.to(torch.float16)
    model.config.dtype = torch.float16
    model.save_pretrained(out)
    with open(os.path.join(out, "config.json")) as f:
        c = json.load(f)
    if c.get("dtype") != "float16":
        c["dtype"] = "float16"
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)
            f.write("\n")
    shutil.copyfile(a.tokenizer, os.path.join(out, "tokenizer.json"))
    del model
    m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").to(d).eval()
    ev = heldout_eval(m, held_rows, batch=32)
    log(f"saved {out}: held-out ppl {ev['ppl']:.3f}")
    tlog = {"model": os.path.basename(os.path.normpath(out)), "command": shlex.join(["python3"] + sys.argv), "seq_len": SEQ_LEN, "batch": a.batch, "lr": a.lr,
            "warmup": a.warmup, "min_lr_ratio": a.min_lr_ratio, "weight_decay": a.weight_decay, "seed": a.seed, "steps": a.steps,
            "epochs_started": epoch + 1, "train_tokens": int(tr_rows.numel()), "wall_s": wall, "n_params": n_params,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name(0) if d.type == "cuda" else "cpu",
            "heldout_eval_fp32_from_fp16": ev, "loss_log": loss_log, "eval_log": eval_log}
    with open(os.path.join(out, "training-log.json"), "w") as f:
        json.dump(tlog, f, indent=1)
        f.write("\n")
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(model_card(a, tlog, ev, int(held_rows.numel())))


def model_card(a, t, ev, held_tokens) -> str:
    L = []
    A = L.append
    A(f"# {t['model']}\n")
    A("A small SwiGLU (Llama-family) model trained from scratch for **one purpose**: an independent check of dejavu-ts's "
      "training-free activation sparsity (input thresholds, gate threshold, and the plan over them; issue 22) on a model "
      "that the pipeline was never developed or tuned on (see `docs/independent-check-swiglu.md`). Not a useful language model.\n")
    A("## Architecture\n")
    A(f"LlamaForCausalLM: SwiGLU MLP (silu), RMSNorm (eps 1e-6), RoPE (theta 10000), {a.layers} layers, hidden {a.d}, ffn {a.ffn}, "
      f"{a.heads} query heads and {a.kv_heads} key/value heads (GQA) of dim {a.d // a.heads}, no biases, LM head tied to the token "
      f"embeddings, dropout 0. Vocabulary 4096. {t['n_params'] / 1e6:.2f} M parameters. Saved with `save_pretrained` in float16 "
      "(`model.safetensors`), plus `config.json`, `generation_config.json`, `tokenizer.json` and `training-log.json`. "
      "(checkpoints/llama-fixture: d 192, ffn 512, 6 heads, 2 kv heads, untied.)\n")
    A("## Tokenizer\n")
    A("`tokenizer.json` is a byte-for-byte copy of `checkpoints/llama-fixture/tokenizer.json` (BPE, vocab 4096; `<unk>`=0, "
      "`<s>`=1, `</s>`=2; BOS = 1, EOS = 2).\n")
    A("## Data\n")
    A(f"`data/train.jsonl` (`npm run prepare-data`; `data/README.md`). Every document prefixed with BOS (1), documents "
      f"concatenated and cut into 256-token windows ({t['train_tokens']} training tokens). Held-out: `data/heldout.jsonl` "
      f"packed the same way ({held_tokens} tokens, {ev['rows']} rows). `data/calibration.jsonl` was not used for training.\n")
    A("## Training\n")
    A(f"- steps: {t['steps']}, batch {a.batch} x 256 tokens ({t['steps'] * a.batch * SEQ_LEN} tokens, ~{t['steps'] * a.batch * SEQ_LEN / t['train_tokens']:.1f} epochs)")
    A(f"- AdamW (betas 0.9/0.95, eps 1e-8), peak lr {a.lr}, linear warm-up {a.warmup} steps, cosine decay to {a.lr * a.min_lr_ratio:g}, "
      f"weight decay {a.weight_decay} on matrices and embeddings, grad-norm clip 1.0; bf16 autocast, float32 master weights; "
      "plain next-token cross-entropy, **no sparsity regulariser**")
    A(f"- seed {a.seed} (initialisation and data order)")
    A(f"- wall time {t['wall_s']:.1f} s on {t['device']}; torch {t['torch']}, transformers {t['transformers']}\n")
    A("| step | train loss | held-out NLL (bf16) |")
    A("| --- | --- | --- |")
    for e in t["eval_log"]:
        A(f"| {e['step']} | {e['train_loss']:.4f} | {e['heldout_nll_bf16']:.4f} |")
    A("")
    A("## Held-out evaluation\n")
    A("From the saved float16 weights reloaded in float32 (eager attention), all rows of `data/heldout.jsonl`: "
      f"mean NLL {ev['nll_mean']:.4f} nats/token, **perplexity {ev['ppl']:.2f}**.\n")
    A("## Reproduce\n")
    A("```")
    A("npm run prepare-data")
    A(t["command"])
    A("```\n")
    A("(GPU kernels are not bitwise deterministic: a rerun gives weights that differ in the last bits.)\n")
    return "\n".join(L)


# ----------------------------------------------------------------------------------------------------------- check


def site_modules(layer):
    """per site: the modules whose input (forward pre-hook) it is; gate: act_fn, whose output (forward hook) it is"""
    at, mlp = layer.self_attn, layer.mlp
    return {"attn": [at.q_proj, at.k_proj, at.v_proj], "o": [at.o_proj], "mlp": [mlp.gate_proj, mlp.up_proj], "down": [mlp.down_proj], "gate": [mlp.act_fn]}


def weights_of(c) -> dict:
    d, F_, hd = c.hidden_size, c.intermediate_size, c.hidden_size // c.num_attention_heads
    return {"attn": d * (c.num_attention_heads + 2 * c.num_key_value_heads) * hd, "o": c.num_attention_heads * hd * d, "mlp": 2 * d * F_, "down": F_ * d,
            "gate": 2 * F_ * d}  # gate: the up and down rows of the skipped neurons


@torch.no_grad()
def calibrate(model, rows: torch.Tensor, qs: list[float], batch: int = 8) -> dict:
    """thresholds[layer][site][s] = the s-quantile of |x| over every entry of the site's input on the rows (dense)"""
    layers = model.model.layers
    vals = [{s: [] for s in SITES} for _ in layers]
    hooks = []
    for i, l in enumerate(layers):
        mods = site_modules(l)
        for s in ("attn", "o", "mlp", "down"):
            hooks.append(mods[s][0].register_forward_pre_hook(lambda _m, args, i=i, s=s: vals[i][s].append(args[0].detach().abs().reshape(-1).float())))
        hooks.append(mods["gate"][0].register_forward_hook(lambda _m, _a, out, i=i: vals[i]["gate"].append(out.detach().abs().reshape(-1).float())))
    try:
        for b in range(0, rows.shape[0], batch):
            model(input_ids=rows[b : b + batch].to(dev()), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for i in range(len(layers)):
        per = {}
        for s in SITES:
            v = torch.cat(vals[i][s]).double()
            qv = torch.quantile(v, torch.tensor(qs, dtype=torch.float64, device=v.device))
            per[s] = {str(q): float(t) for q, t in zip(qs, qv)}
        out.append(per)
    return out


@torch.no_grad()
def nll_sparse(model, rows: torch.Tensor, th: list | None, sites: tuple = (), s: float = 0.0, batch: int = 8) -> tuple[float, int, dict]:
    """Sum of next-token NLL (float64) over the rows with entries |x| < t zeroed at `sites` (thresholds th[layer][site][s]);
    returns (nll, count, per site the share of entries kept)"""
    layers = model.model.layers
    kept = {x: [0, 0] for x in sites}
    hooks = []
    for i, l in enumerate(layers if th else []):
        mods = site_modules(l)
        for site in sites:
            t = th[i][site][str(s)]

            def mask(x, site=site, t=t, count=True):
                k = x.abs() >= t
                if count:
                    kept[site][0] += int(k.sum()); kept[site][1] += k.numel()
                return x * k.to(x.dtype)
            if site == "gate":
                hooks.append(mods["gate"][0].register_forward_hook(lambda _m, _a, out, mask=mask: mask(out)))
            else:
                for j, m in enumerate(mods[site]):  # q/k/v (gate/up) share one input: counted once
                    hooks.append(m.register_forward_pre_hook(lambda _m, args, mask=mask, j=j: (mask(args[0], count=j == 0),) + tuple(args[1:])))
    tot, n = 0.0, 0
    try:
        for b in range(0, rows.shape[0], batch):
            x = rows[b : b + batch].to(dev())
            lp = torch.log_softmax(model(input_ids=x, use_cache=False).logits.float()[:, :-1], -1)
            tot += float(-lp.gather(-1, x[:, 1:, None]).double().sum())
            n += x[:, 1:].numel()
    finally:
        for h in hooks:
            h.remove()
    return tot, n, {k: a / max(1, b) for k, (a, b) in kept.items()}


@torch.no_grad()
def check(a) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    cal = pack_rows(tok, read_jsonl(os.path.join(a.data, "calibration.jsonl")))[: a.calibration_rows]
    held = pack_rows(tok, read_jsonl(os.path.join(a.data, "heldout.jsonl")))[: a.heldout_rows]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager").to(dev()).eval()
    c = model.config
    qs = sorted({s for _, s in RUNS})
    th = calibrate(model, cal, qs)
    log(f"check: calibrated on {cal.numel()} tokens; held-out {held.numel()} tokens")
    W = weights_of(c)
    total = W["attn"] + W["o"] + W["mlp"] + W["down"]
    ds, dn, _ = nll_sparse(model, held, None)
    dense = math.exp(ds / dn)
    runs = []
    for method, s in RUNS:
        sites = METHODS[method]
        ts, tn, kept = nll_sparse(model, held, th, sites, s)
        p = math.exp(ts / tn)
        r = {"method": method, "s": s, "ppl": p, "vs_dense": p / dense - 1, "bytes_skipped": sum(W[x] for x in sites) * s / total,
             "bytes_skipped_heldout": sum(W[x] * (1 - kept[x]) for x in sites) / total, "kept_heldout": kept}
        runs.append(r)
        log(f"{method} s {s}: ppl {p:.4f} ({100 * r['vs_dense']:+.3f}%), bytes skipped {r['bytes_skipped']:.3f} (held-out {r['bytes_skipped_heldout']:.3f})")
    res = {
        "description": __doc__.split("Usage:")[0].strip(), "command": shlex.join(["python3"] + sys.argv),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(0) if dev().type == "cuda" else "cpu",
        "model": os.path.basename(os.path.normpath(a.model)), "d": c.hidden_size, "ffn": c.intermediate_size, "layers": c.num_hidden_layers,
        "packing": {"calibration_rows": int(cal.shape[0]), "calibration_ids_sha256": ids_sha256(cal), "heldout_rows": int(held.shape[0]), "heldout_ids_sha256": ids_sha256(held)},
        "dense": dense, "predictions": dn, "thresholds": th, "runs": runs,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    log(f"wrote {a.json}")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["train", "check", "all"])
    ap.add_argument("--data", default="data")
    ap.add_argument("--tokenizer", default="checkpoints/llama-fixture/tokenizer.json")
    ap.add_argument("--model", default="checkpoints/llama-unseen")
    ap.add_argument("--json", default="docs/independent-check-swiglu.json")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=640)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3000)
    add_training_args(ap)
    ap.add_argument("--seed", type=int, default=20261202)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--calibration-rows", type=int, default=32)
    ap.add_argument("--heldout-rows", type=int, default=64)
    a = ap.parse_args()
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, device {dev()}")
    if a.step in ("train", "all"):
        train(a)
    if a.step in ("check", "all"):
        check(a)


if __name__ == "__main__":
    main()
