"""Shared by the scripts that make or train Hugging Face checkpoints (scripts/*.py): tiny random checkpoints
(make-unseen-families.py, make-popular-configs.py, make-hf-variants.py) and the trained fixtures
(train-fixture-models.py, check-unseen.py, check-unseen-swiglu.py)."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import traceback

import torch
import torch.nn.functional as F
from transformers import OPTConfig

T0 = time.time()
# the trained fixtures' window: BOS-prefixed documents, concatenated, cut into rows of this many tokens
SEQ_LEN = 256


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def init_weights(model, seed: int):
    """Draw every parameter like the shared references: matrices N(0, 0.1^2), biases N(0, 0.05^2), norm weights
    1 + N(0, 0.1^2), from a generator with a fixed seed, in named_parameters() order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                v = torch.randn(p.shape, generator=g) * 0.05
            elif p.dim() == 1 and ("norm" in name or "ln" in name):
                v = 1.0 + torch.randn(p.shape, generator=g) * 0.1
            else:
                v = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(v.to(p.dtype))


def hf_reference(model, input_ids, hooks) -> dict:
    """Run the model (hidden states out, no cache), then remove `hooks`: input_ids, logits and hidden_states.{i} (float32)."""
    try:
        out = model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    t = {"input_ids": input_ids.clone(), "logits": out.logits.float()}
    for i, h in enumerate(out.hidden_states):
        t[f"hidden_states.{i}"] = h.float()
    return t


def write_json(path: str, obj, **kw) -> None:
    """json.dump(obj, **kw) to path, then a newline."""
    with open(path, "w") as f:
        json.dump(obj, f, **kw)
        f.write("\n")


# ------------------------------------------------------------------------------------------ the trained fixtures


def read_jsonl(path: str) -> list[str]:
    """The non-empty "text" of every non-blank line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                t = json.loads(line)["text"]
                if t:
                    out.append(t)
    return out


def pack(tok, texts: list[str], bos_id: int) -> torch.Tensor:
    """BOS-prefixed documents, concatenated (int64, 1-D)."""
    encs = tok.encode_batch(texts, add_special_tokens=False)
    ids: list[int] = []
    for e in encs:
        ids.append(bos_id)
        ids.extend(e.ids)
    return torch.tensor(ids, dtype=torch.int64)


def windows_of(stream: torch.Tensor) -> torch.Tensor:
    """Rows of SEQ_LEN tokens (the remainder dropped): [n, SEQ_LEN]."""
    n = stream.numel() // SEQ_LEN
    return stream[: n * SEQ_LEN].view(n, SEQ_LEN)


def opt_config(vocab: int, d: int, layers: int, ffn: int, heads: int) -> OPTConfig:
    """The trained OPT fixtures' architecture: ReLU, pre-LN, biases, tied embeddings, no dropout."""
    return OPTConfig(
        vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, ffn_dim=ffn, num_attention_heads=heads,
        max_position_embeddings=512, do_layer_norm_before=True, word_embed_proj_dim=d, activation_function="relu",
        enable_bias=True, dropout=0.0, attention_dropout=0.0, layerdrop=0.0, init_std=0.02,
        pad_token_id=1, bos_token_id=2, eos_token_id=2, tie_word_embeddings=True,
    )


def add_training_args(ap: argparse.ArgumentParser) -> None:
    """The trained fixtures' optimiser flags and defaults."""
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)


def cosine_lr(step: int, lr: float, warmup: int, total: int, min_lr: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay from lr to min_lr at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * frac))


def train_step(model, opt, x: torch.Tensor, lr: float, vocab: int, device_type: str) -> torch.Tensor:
    """One AdamW step at lr on next-token cross-entropy (bf16 autocast, grad-norm clip 1.0); returns the loss."""
    for gr in opt.param_groups:
        gr["lr"] = lr
    with torch.autocast(device_type, dtype=torch.bfloat16):
        logits = model(input_ids=x, use_cache=False).logits
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), x[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


# ------------------------------------------------------------------------------------------ tiny random variants


def variant_args(doc: str, default_out: str):
    """--out and --only (a comma list of variant names) parsed; torch threads set, versions printed, --out made."""
    import transformers

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--only", default=None, help="comma list of variant names")
    a = ap.parse_args()
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    os.makedirs(a.out, exist_ok=True)
    return a, set(a.only.split(",")) if a.only else None


def make_variants(variants, name_of, make, out: str, only) -> tuple[int, list[str]]:
    """make(v, out) for every variant (those named in `only`, when given); one that fails prints its traceback and
    the rest go on. Returns (the bytes made, the names that failed)."""
    total, failed = 0, []
    for v in variants:
        if only and name_of(v) not in only:
            continue
        try:
            total += make(v, out)
        except Exception:  # noqa: BLE001 - keep going, report at the end
            traceback.print_exc()
            failed.append(name_of(v))
    return total, failed
