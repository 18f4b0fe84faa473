#!/usr/bin/env python3
"""Train a small OPT model nobody has seen, and check dejavu-ts's closed-form MLP predictors on it independently.

Two steps (`all` runs both, in one GPU call):

  train  OPTForCausalLM from scratch (ReLU, pre-LN, 4 layers, d 320, ffn 1280, 8 heads, tied embeddings) with the
         tokenizer of checkpoints/opt-fixture (copied, not retrained), on data/train.jsonl; the recipe of
         scripts/train-fixture-models.py (BOS-prefixed documents packed into 256-token windows, AdamW, warm-up +
         cosine, bf16 autocast, no sparsity regulariser) with another size and seed. Saved with save_pretrained in
         float16 (safetensors) plus tokenizer.json, training-log.json and a model card README.md.

  check  The independent reference of dejavu's closed-form predictor, written from the method's description only
         (PyTorch; forward passes in float32 with TF32 off and eager attention, the linear algebra in float64):
           - calibration rows: data/calibration.jsonl, every document prefixed with BOS (id 2) and tokenized without
             special tokens, all documents concatenated, cut into 256-token rows (remainder dropped), as dejavu's
             packSequences does; rows = tokens; a token belongs to the validation rows when its sequence index
             % 10 == 9 (at most 16384 validation tokens, the first ones), else to the training rows;
           - per layer, h = final_layer_norm(x_mlp) (fc1's input); μ, Σ (population) of h over the training rows;
             Σ = Q Λ Qᵀ, L = Q Λ^½; W L = U S Vᵀ (W = fc1.weight [F, d], b = fc1.bias); numerical rank p: S_j >
             1e-6 S_0; logits = U_r (U_rᵀ W) h + b + (I − U_r U_rᵀ) W μ; score_i = logit_i / max(σ_i, 1e-3 RMS(σ)),
             σ_i² = Σ_{r ≤ j < p} U_ij² S_j²;
           - threshold t: on the validation rows, the positives' (fc1(h) > 0) scores sorted ascending s, keep =
             ceil(0.99 P), t = s[P − keep]; a neuron is selected when score ≥ t;
           - held-out: data/heldout.jsonl, all of it, packed the same way: per layer true density (fc1 > 0),
             predicted density (selected), recall (selected ∩ active / active), precision;
           - perplexity on the first 24 held-out rows (6144 tokens): dense, and with fc1 outputs of unselected
             neurons set to 0 (scores computed on the fly from the sparse model's own h).
         Two variants: "fp32" (h from the float32 forward) and "fp16x" (x_mlp rounded to float16 before the norm, as
         dejavu stores its activations with collect.dtype float16; labels stay those of the float32 forward, as
         dejavu's mlp_active bits do). Ranks r = d/2 and d/4. Output: one JSON.

Usage:
  python3 scripts/check-unseen.py all --data data --tokenizer checkpoints/opt-fixture/tokenizer.json \\
      --model checkpoints/opt-unseen --json docs/independent-check.json --steps 3000 --seed 20261129
  python3 scripts/check-unseen.py check --data data --model checkpoints/opt-unseen --json docs/independent-check.json

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
import torch.nn.functional as F
from tokenizers import Tokenizer

import transformers
from transformers import AutoModelForCausalLM, OPTConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_fixture_common import SEQ_LEN, add_training_args, cosine_lr, train_step, log, opt_config, pack, read_jsonl, windows_of, write_json  # noqa: E402

BOS = 2


def pack_rows(tok: Tokenizer, texts: list[str]) -> torch.Tensor:
    """BOS + ids of each document, concatenated, cut into rows of SEQ_LEN (remainder dropped): [n, SEQ_LEN] int64."""
    return windows_of(pack(tok, texts, BOS))


def ids_sha256(rows: torch.Tensor) -> str:
    return hashlib.sha256(rows.to(torch.int32).numpy().tobytes()).hexdigest()


def dev() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------------------- train


def make_config(a) -> OPTConfig:
    return opt_config(4096, a.d, a.layers, a.ffn, a.heads)


@torch.no_grad()
def heldout_eval(model, rows: torch.Tensor, batch: int = 32, autocast: bool = False) -> dict:
    """Mean NLL over all next-token predictions of all rows (float64 sum) and fc1 density (> 0) per layer."""
    d = dev()
    layers = model.model.decoder.layers
    pos = [0] * len(layers)
    cnt = [0] * len(layers)
    hooks = []
    for i, l in enumerate(layers):
        def h(_m, _i, out, i=i):
            pos[i] += int((out.float() > 0).sum())
            cnt[i] += out.numel()
        hooks.append(l.fc1.register_forward_hook(h))
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
        for hk in hooks:
            hk.remove()
        model.train(was)
    return {"nll_mean": s / n, "ppl": math.exp(s / n), "rows": int(rows.shape[0]), "predictions": n, "density_per_layer": [p / c for p, c in zip(pos, cnt)]}


def train(a) -> None:
    d = dev()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tok = Tokenizer.from_file(a.tokenizer)
    train_texts = read_jsonl(os.path.join(a.data, "train.jsonl"))
    held_texts = read_jsonl(os.path.join(a.data, "heldout.jsonl"))
    tr_rows = pack_rows(tok, train_texts).to(d)
    held_rows = pack_rows(tok, held_texts)
    log(f"train: {len(train_texts)} docs, {tr_rows.numel()} tokens ({tr_rows.shape[0]} rows); held-out {held_rows.numel()} tokens")
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
            l = float(acc / acc_n)
            loss_log.append({"step": step, "loss": round(l, 5), "lr": lr, "epoch": epoch, "elapsed_s": round(time.time() - t_start, 2)})
            acc.zero_()
            acc_n = 0
        if step % a.eval_every == 0 or step == a.steps:
            ev = heldout_eval(model, held_rows, batch=64, autocast=True)
            eval_log.append({"step": step, "train_loss": loss_log[-1]["loss"], "heldout_nll_bf16": round(ev["nll_mean"], 5),
                             "fc1_density_per_layer": [round(v, 4) for v in ev["density_per_layer"]]})
            log(f"step {step}/{a.steps} loss {loss_log[-1]['loss']:.4f} held-out nll {ev['nll_mean']:.4f} density {eval_log[-1]['fc1_density_per_layer']}")
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
        write_json(os.path.join(out, "config.json"), c, indent=2, sort_keys=True)
    shutil.copyfile(a.tokenizer, os.path.join(out, "tokenizer.json"))
    del model
    m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").to(d).eval()
    ev = heldout_eval(m, held_rows, batch=32)
    log(f"saved {out}: held-out ppl {ev['ppl']:.3f}, density {[round(v, 4) for v in ev['density_per_layer']]}")
    tlog = {"model": "opt-unseen", "command": shlex.join(["python3"] + sys.argv), "seq_len": SEQ_LEN, "batch": a.batch, "lr": a.lr,
            "warmup": a.warmup, "min_lr_ratio": a.min_lr_ratio, "weight_decay": a.weight_decay, "seed": a.seed, "steps": a.steps,
            "epochs_started": epoch + 1, "train_tokens": int(tr_rows.numel()), "wall_s": wall, "n_params": n_params,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name(0) if d.type == "cuda" else "cpu",
            "heldout_eval_fp32_from_fp16": ev, "loss_log": loss_log, "eval_log": eval_log}
    write_json(os.path.join(out, "training-log.json"), tlog, indent=1)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(model_card(a, tlog, ev, int(held_rows.numel())))


def model_card(a, t, ev, held_tokens) -> str:
    L = []
    A = L.append
    A("# opt-unseen\n")
    A("A small OPT model trained from scratch for **one purpose**: an independent check of dejavu-ts's closed-form MLP "
      "predictors on a model that the pipeline was never developed or tuned on (see `docs/independent-check.md`). "
      "Not a useful language model.\n")
    A("## Architecture\n")
    A(f"OPTForCausalLM: ReLU MLP, pre-LayerNorm (do_layer_norm_before=true), {a.layers} layers, hidden {a.d}, ffn {a.ffn}, "
      f"{a.heads} heads (head dim {a.d // a.heads}), learned positions (512 + 2 offset rows), word_embed_proj_dim {a.d}, biases "
      f"everywhere, LM head tied to the token embeddings, dropout 0. Vocabulary 4096. {t['n_params'] / 1e6:.2f} M parameters. "
      "Saved with `save_pretrained` in float16 (`model.safetensors`), plus `config.json`, `generation_config.json`, "
      "`tokenizer.json` and `training-log.json`.\n")
    A("## Tokenizer\n")
    A("`tokenizer.json` is a byte-for-byte copy of `checkpoints/opt-fixture/tokenizer.json` (byte-level BPE, vocab 4096; "
      "`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3; BOS = EOS = 2, PAD = 1).\n")
    A("## Data\n")
    A(f"`data/train.jsonl` (`npm run prepare-data`; `data/README.md`). Every document prefixed with BOS (2), documents "
      f"concatenated and cut into 256-token windows ({t['train_tokens']} training tokens). Held-out: `data/heldout.jsonl` "
      f"packed the same way ({held_tokens} tokens, {ev['rows']} rows). `data/calibration.jsonl` was not used for training.\n")
    A("## Training\n")
    A(f"- steps: {t['steps']}, batch {a.batch} x 256 tokens ({t['steps'] * a.batch * SEQ_LEN} tokens, ~{t['steps'] * a.batch * SEQ_LEN / t['train_tokens']:.1f} epochs)")
    A(f"- AdamW (betas 0.9/0.95, eps 1e-8), peak lr {a.lr}, linear warm-up {a.warmup} steps, cosine decay to {a.lr * a.min_lr_ratio:g}, "
      f"weight decay {a.weight_decay} on matrices and embeddings, grad-norm clip 1.0; bf16 autocast, float32 master weights; "
      "plain next-token cross-entropy, **no sparsity regulariser**")
    A(f"- seed {a.seed} (initialisation and data order)")
    A(f"- wall time {t['wall_s']:.1f} s on {t['device']}; torch {t['torch']}, transformers {t['transformers']}\n")
    A("| step | train loss | held-out NLL (bf16) | fc1 density per layer |")
    A("| --- | --- | --- | --- |")
    for e in t["eval_log"]:
        A(f"| {e['step']} | {e['train_loss']:.4f} | {e['heldout_nll_bf16']:.4f} | {', '.join(f'{v:.3f}' for v in e['fc1_density_per_layer'])} |")
    A("")
    A("## Held-out evaluation\n")
    A("From the saved float16 weights reloaded in float32 (eager attention), all rows of `data/heldout.jsonl`:\n")
    A(f"- mean NLL {ev['nll_mean']:.4f} nats/token, **perplexity {ev['ppl']:.2f}**\n")
    A("| layer | density (fc1 > 0) |")
    A("| --- | --- |")
    for i, v in enumerate(ev["density_per_layer"]):
        A(f"| {i} | {v:.4f} |")
    A("")
    A(f"Mean density over layers: {sum(ev['density_per_layer']) / len(ev['density_per_layer']):.4f}.\n")
    A("## Reproduce\n")
    A("```")
    A("npm run prepare-data")
    A(t["command"])
    A("```\n")
    A("(GPU kernels are not bitwise deterministic: a rerun gives weights that differ in the last bits.)\n")
    return "\n".join(L)


# ----------------------------------------------------------------------------------------------------------- check


def closed_form(W: torch.Tensor, b: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor, r: int):
    """float64: score(h) = (A h + c) / σ with A = U_r U_rᵀ W, c = b + (I − U_r U_rᵀ) W μ. Returns (A, c, σ_floored, p)."""
    lam, Q = torch.linalg.eigh(0.5 * (cov + cov.T))
    Lc = Q * lam.clamp_min(0).sqrt()[None, :]
    U, S, _ = torch.linalg.svd(W @ Lc, full_matrices=False)
    p = int((S > S[0] * 1e-6).sum())
    U, S = U[:, :p], S[:p]
    Ur = U[:, :r]
    A = Ur @ (Ur.T @ W)
    Wmu = W @ mu
    c = b + Wmu - Ur @ (Ur.T @ Wmu)
    sig = ((U[:, r:] ** 2) * (S[r:] ** 2)[None, :]).sum(1).sqrt()
    lo = max(float(sig.pow(2).mean().sqrt()) * 1e-3, 1e-12)
    return A, c, sig.clamp_min(lo), p


def threshold_for_recall(pos_scores: torch.Tensor, target: float) -> float:
    s = torch.sort(pos_scores).values
    keep = math.ceil(target * s.numel() - 1e-9)
    return float(s[max(0, s.numel() - keep)])


class Capture:
    """Per layer: x_mlp (final_layer_norm's input) and z = fc1(h) of every token, on the device, float32."""

    def __init__(self, model):
        self.layers = model.model.decoder.layers
        self.x = [[] for _ in self.layers]
        self.z = [[] for _ in self.layers]
        self.hooks = []
        for i, l in enumerate(self.layers):
            self.hooks.append(l.final_layer_norm.register_forward_pre_hook(lambda _m, args, i=i: self.x[i].append(args[0].detach().reshape(-1, args[0].shape[-1]))))
            self.hooks.append(l.fc1.register_forward_hook(lambda _m, _a, out, i=i: self.z[i].append(out.detach().reshape(-1, out.shape[-1]))))

    def close(self):
        for h in self.hooks:
            h.remove()
        return [torch.cat(x) for x in self.x], [torch.cat(z) for z in self.z]


@torch.no_grad()
def run_capture(model, rows: torch.Tensor, batch: int = 32):
    cap = Capture(model)
    try:
        for b in range(0, rows.shape[0], batch):
            model(input_ids=rows[b : b + batch].to(dev()), use_cache=False)
    finally:
        xs, zs = cap.close()
    return xs, zs


def layer_norm64(ln, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.double(), (x.shape[-1],), ln.weight.double(), ln.bias.double(), ln.eps)


@torch.no_grad()
def nll_of(model, rows: torch.Tensor, batch: int = 4, sel=None) -> tuple[float, int, list]:
    """Sum of next-token NLL (float64) over the rows; with sel = per layer (A, c, σ, t), fc1 outputs of neurons whose
    score < t are zeroed. Returns (nll sum, count, per-layer selected fraction)."""
    layers = model.model.decoder.layers
    selc = [[0, 0] for _ in layers]
    hooks = []
    if sel is not None:
        for i, l in enumerate(layers):
            A, c, sig, t = sel[i]

            def h(_m, args, out, A=A, c=c, sig=sig, t=t, i=i):
                hh = args[0].double()
                score = (hh @ A.T + c) / sig
                keep = score >= t
                selc[i][0] += int(keep.sum())
                selc[i][1] += keep.numel()
                return out * keep.to(out.dtype)

            hooks.append(l.fc1.register_forward_hook(h))
    s, n = 0.0, 0
    try:
        for b in range(0, rows.shape[0], batch):
            x = rows[b : b + batch].to(dev())
            logits = model(input_ids=x, use_cache=False).logits.float()
            lp = torch.log_softmax(logits[:, :-1], -1)
            s += float(-lp.gather(-1, x[:, 1:, None]).double().sum())
            n += x[:, 1:].numel()
    finally:
        for hk in hooks:
            hk.remove()
    return s, n, [a / max(1, b) for a, b in selc]


@torch.no_grad()
def check(a) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    d = dev()
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    cal = pack_rows(tok, read_jsonl(os.path.join(a.data, "calibration.jsonl")))
    held = pack_rows(tok, read_jsonl(os.path.join(a.data, "heldout.jsonl")))
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager").to(d).eval()
    layers = model.model.decoder.layers
    D, Fw = model.config.hidden_size, model.config.ffn_dim
    ranks = [D // 2, D // 4]
    log(f"check: calibration {cal.shape[0]} rows, held-out {held.shape[0]} rows; d {D}, ffn {Fw}, ranks {ranks}")
    seq_of_row = torch.arange(cal.shape[0]).repeat_interleave(SEQ_LEN).to(d)
    is_val = seq_of_row % 10 == 9
    val_idx = torch.nonzero(is_val).squeeze(1)[: a.max_calibration_rows]
    tr_idx = torch.nonzero(~is_val).squeeze(1)
    cx, cz = run_capture(model, cal)
    hx, hz = run_capture(model, held)
    log("captured calibration and held-out activations")
    nppl = a.ppl_rows
    dense_s, dense_n, _ = nll_of(model, held[:nppl])
    dense_ppl = math.exp(dense_s / dense_n)
    res = {
        "description": __doc__.split("Usage:")[0].strip(),
        "command": shlex.join(["python3"] + sys.argv),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(0) if d.type == "cuda" else "cpu",
        "model": a.model, "d": D, "ffn": Fw, "layers": len(layers), "ranks": ranks, "target_recall": a.target_recall,
        "packing": {"calibration_rows": int(cal.shape[0]), "calibration_ids_sha256": ids_sha256(cal),
                    "heldout_rows": int(held.shape[0]), "heldout_ids_sha256": ids_sha256(held),
                    "train_tokens": int(tr_idx.numel()), "validation_tokens": int(val_idx.numel())},
        "perplexity": {"rows": nppl, "tokens": nppl * SEQ_LEN, "predictions": dense_n, "dense": dense_ppl},
        "variants": {},
    }
    for variant in ("fp32", "fp16x"):
        out = {}
        for r in ranks:
            per_layer, sel = [], []
            for i, l in enumerate(layers):
                W = l.fc1.weight.double()
                b = l.fc1.bias.double()
                if variant == "fp32":
                    hc = layers[i].final_layer_norm(cx[i]).double()  # = fc1's input in the forward
                    hh = layers[i].final_layer_norm(hx[i]).double()
                else:
                    hc = layer_norm64(l.final_layer_norm, cx[i].half().float()).float().double()
                    hh = layer_norm64(l.final_layer_norm, hx[i].half().float()).float().double()
                yc = cz[i] > 0
                yh = hz[i] > 0
                htr = hc[tr_idx]
                mu = htr.mean(0)
                cov = (htr - mu).T @ (htr - mu) / htr.shape[0]
                A, c, sig, p = closed_form(W, b, mu, cov, r)
                sv = ((hc[val_idx] @ A.T + c) / sig)
                t = threshold_for_recall(sv[yc[val_idx]], a.target_recall)
                vsel = sv >= t
                sh = (hh @ A.T + c) / sig
                hsel = sh >= t
                tp = int((hsel & yh).sum())
                P = int(yh.sum())
                per_layer.append({
                    "layer": i, "numerical_rank": p, "threshold": t,
                    "validation": {"true_density": float(yc[val_idx].float().mean()), "predicted_density": float(vsel.float().mean()),
                                   "recall": float((vsel & yc[val_idx]).sum()) / max(1, int(yc[val_idx].sum()))},
                    "heldout": {"true_density": float(yh.float().mean()), "predicted_density": float(hsel.float().mean()),
                                "recall": tp / max(1, P), "precision": tp / max(1, int(hsel.sum()))},
                })
                sel.append((A, c, sig, t))
            s, n, dens = nll_of(model, held[:nppl], sel=sel)
            pp = math.exp(s / n)
            out[str(r)] = {"rank": r, "layers": per_layer,
                           "perplexity": {"predicted_mlp": pp, "delta": pp / dense_ppl - 1, "selected_fraction_per_layer": dens}}
            log(f"{variant} r={r}: " + "; ".join(f"L{x['layer']} true {x['heldout']['true_density']:.4f} pred {x['heldout']['predicted_density']:.4f} "
                                                 f"rec {x['heldout']['recall']:.4f}" for x in per_layer) + f"; ppl {dense_ppl:.3f} -> {pp:.3f} ({100 * (pp / dense_ppl - 1):+.3f}%)")
        res["variants"][variant] = out
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    write_json(a.json, res, indent=1)
    log(f"wrote {a.json}")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["train", "check", "all"])
    ap.add_argument("--data", default="data")
    ap.add_argument("--tokenizer", default="checkpoints/opt-fixture/tokenizer.json")
    ap.add_argument("--model", default="checkpoints/opt-unseen")
    ap.add_argument("--json", default="docs/independent-check.json")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d", type=int, default=320)
    ap.add_argument("--ffn", type=int, default=1280)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3000)
    add_training_args(ap)
    ap.add_argument("--seed", type=int, default=20261129)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--target-recall", type=float, default=0.99)
    ap.add_argument("--max-calibration-rows", type=int, default=16384)
    ap.add_argument("--ppl-rows", type=int, default=24)
    a = ap.parse_args()
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, device {dev()}")
    if a.step in ("train", "all"):
        train(a)
    if a.step in ("check", "all"):
        check(a)


if __name__ == "__main__":
    main()
