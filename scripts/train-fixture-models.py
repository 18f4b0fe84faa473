#!/usr/bin/env python3
"""Train the two small fixture models of dejavu-ts from scratch (runs on a GPU box).

  checkpoints/opt-fixture/    OPTForCausalLM, ReLU, pre-LN, 6 layers, d 256, ffn 1024, 8 heads, tied embeddings
  checkpoints/llama-fixture/  LlamaForCausalLM, SwiGLU, 4 layers, d 192, ffn 512, 6 heads / 2 KV heads, untied head

Each model gets its own byte-level BPE tokenizer (vocab 4096) trained on data/train.jsonl.
Training: every document is prefixed with the model's BOS id, all documents are concatenated
and cut into non-overlapping windows of 256 tokens, which are shuffled (seeded) every epoch.
AdamW, linear warm-up then cosine decay, weight decay 0.1 on matrices, bf16 autocast, no
dropout, no sparsity regulariser of any kind.

After training the weights are saved in float16 (save_pretrained, safetensors), reloaded from
the saved folder in float32 with eager attention, and evaluated on data/heldout.jsonl (same
packing): perplexity and per-layer MLP activation statistics.  Results go into the folder's
README.md (model card), training-log.json and ppl-slice.json.

Number of steps: --steps-opt / --steps-llama fix them.  If they are not given, the script times
steps 10..60 (inside the fixed warm-up, so the learning-rate schedule up to there does not depend
on the total) and picks the largest multiple of 100 that fits the --budget-* seconds, capped at
--max-steps.  The model card records the number used; passing it back with --steps-* repeats
the run (up to GPU non-determinism).

Requires: torch, transformers (5.x), tokenizers, safetensors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import transformers
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_fixture_common import SEQ_LEN, T0, add_training_args, cosine_lr, train_step, log, opt_config, pack, read_jsonl, windows_of, write_json  # noqa: E402

VOCAB = 4096


# --------------------------------------------------------------------------- data


def train_tokenizer(texts: list[str], specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    for i, s in enumerate(specials):
        got = tok.token_to_id(s)
        if got != i:
            log(f"WARNING: special token {s} has id {got}, expected {i}")
    if tok.get_vocab_size() != VOCAB:
        log(f"WARNING: tokenizer vocab size {tok.get_vocab_size()} != {VOCAB}")
    return tok


# ------------------------------------------------------------------------- models


def make_config(kind: str):
    if kind == "opt":
        return opt_config(VOCAB, 256, 6, 1024, 8)
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        initializer_range=0.02,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )


def mlp_modules(model, kind: str):
    """(up-projection-like module whose output is the pre-activation, down projection) per layer."""
    if kind == "opt":
        return [(l.fc1, l.fc2) for l in model.model.decoder.layers]
    return [(None, l.mlp.down_proj) for l in model.model.layers]


# --------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model, kind: str, wins: torch.Tensor, batch: int = 32, full_stats: bool = True, autocast: bool = False):
    """Mean NLL (float64) over all next-token predictions of all windows, plus MLP statistics.

    OPT: density = fraction of fc1 outputs > 0 (= ReLU input > 0) over all tokens.
    Both: |a| with a = input of the down projection (OPT relu(fc1 x), Llama silu(gate x)*up x):
    mean, quantiles (nearest rank) and the fraction of neurons needed to reach 90% of the
    per-token L1 mass, averaged over tokens.
    """
    dev = next(model.parameters()).device
    mods = mlp_modules(model, kind)
    L = len(mods)
    pos = torch.zeros(L, dtype=torch.float64, device=dev)
    cnt = torch.zeros(L, dtype=torch.float64, device=dev)
    l1frac = torch.zeros(L, dtype=torch.float64, device=dev)
    abs_sum = torch.zeros(L, dtype=torch.float64, device=dev)
    ntok = torch.zeros(L, dtype=torch.float64, device=dev)
    dead = [None] * L
    absvals: list[list[torch.Tensor]] = [[] for _ in range(L)]
    hooks = []

    def fc1_hook(i):
        def h(_m, _inp, out):
            o = out.float()
            pos[i] += (o > 0).sum()
            cnt[i] += o.numel()
            act = (o > 0).reshape(-1, o.shape[-1]).any(0)
            dead[i] = act if dead[i] is None else (dead[i] | act)

        return h

    def down_hook(i):
        def h(_m, args):
            a = args[0].float().reshape(-1, args[0].shape[-1]).abs()
            abs_sum[i] += a.sum()
            ntok[i] += a.shape[0]
            if full_stats:
                s = torch.sort(a, dim=-1, descending=True).values
                c = torch.cumsum(s, dim=-1)
                tot = c[:, -1:]
                k = (c < 0.9 * tot).sum(-1) + 1
                l1frac[i] += (k.double() / a.shape[-1]).sum()
                if kind == "llama":
                    absvals[i].append(a.flatten())

        return h

    for i, (up, down) in enumerate(mods):
        if up is not None:
            hooks.append(up.register_forward_hook(fc1_hook(i)))
        hooks.append(down.register_forward_pre_hook(down_hook(i)))
    was_training = model.training
    model.eval()
    nll_sum = torch.zeros((), dtype=torch.float64, device=dev)
    n_pred = 0
    try:
        for s in range(0, wins.shape[0], batch):
            x = wins[s : s + batch].to(dev)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                logits = model(input_ids=x, use_cache=False).logits
            logits = logits.float()
            lp = torch.log_softmax(logits[:, :-1], dim=-1)
            nll = -lp.gather(-1, x[:, 1:, None]).squeeze(-1)
            nll_sum += nll.double().sum()
            n_pred += nll.numel()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    nll_mean = (nll_sum / n_pred).item()
    res = {"nll_mean": nll_mean, "ppl": math.exp(nll_mean), "windows": int(wins.shape[0]), "predictions": n_pred}
    if kind == "opt":
        res["density_per_layer"] = (pos / cnt).tolist()
        res["dead_fraction_per_layer"] = [1.0 - d.float().mean().item() for d in dead]
    res["abs_mean_per_layer"] = (abs_sum / (ntok * (mods[0][1].in_features))).tolist()
    if full_stats:
        res["l1_90_fraction_per_layer"] = (l1frac / ntok).tolist()
        if kind == "llama":
            qs = []
            for i in range(L):
                v = torch.sort(torch.cat(absvals[i])).values
                n = v.numel()
                qs.append({f"q{int(p * 100)}": v[min(n - 1, int(math.ceil(p * n)) - 1)].item() for p in (0.5, 0.9, 0.99)})
            res["abs_quantiles_per_layer"] = qs
    return res


# ----------------------------------------------------------------------- training


def train(kind, model, train_wins, held_wins, args, steps_arg, budget_s, max_steps, deadline):
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(args.seed + (0 if kind == "opt" else 1000))
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=True,
    )
    warmup = args.warmup
    probe_a, probe_b = 10, 60
    total = steps_arg
    if total is None:
        assert warmup > probe_b, "auto step count needs warm-up longer than the timing probe"
    min_lr = args.lr * args.min_lr_ratio

    def lr_at(step):
        return cosine_lr(step, args.lr, warmup, total, min_lr)

    nwin = train_wins.shape[0]
    perm = torch.randperm(nwin, generator=g).to(dev)
    cursor = 0
    epoch = 0
    bs = args.batch
    V = model.config.vocab_size
    logs = []
    evals = []
    loss_acc = torch.zeros((), device=dev)
    acc_n = 0
    step = 0
    stopped_early = False
    model.train()
    torch.cuda.synchronize()
    t_start = time.time()
    t_probe = None
    sec_per_step = None
    while True:
        if total is not None and step >= total:
            break
        if time.time() > deadline:
            stopped_early = True
            log(f"{kind}: wall-clock deadline reached at step {step}, stopping early")
            break
        if cursor + bs > nwin:
            perm = torch.randperm(nwin, generator=g).to(dev)
            cursor = 0
            epoch += 1
        idx = perm[cursor : cursor + bs]
        cursor += bs
        x = train_wins[idx]
        lr = lr_at(step)
        loss = train_step(model, opt, x, lr, V, "cuda")
        loss_acc += loss.detach()
        acc_n += 1
        step += 1
        if step == probe_a:
            torch.cuda.synchronize()
            t_probe = time.time()
        if step == probe_b:
            torch.cuda.synchronize()
            sec_per_step = (time.time() - t_probe) / (probe_b - probe_a)
            if total is None:
                left = min(budget_s - (time.time() - t_start), deadline - time.time() - 10.0)
                # leave ~8% for logging/evaluation pauses
                total = int(0.92 * left / sec_per_step) + probe_b
                total = max(warmup + 100, min(max_steps, (total // 100) * 100))
            log(f"{kind}: {sec_per_step * 1000:.1f} ms/step ({bs * SEQ_LEN / sec_per_step / 1e6:.2f} M tok/s); total steps = {total}")
        if step % args.log_every == 0 or (total is not None and step == total):
            l = (loss_acc / acc_n).item()
            logs.append({"step": step, "loss": round(l, 5), "lr": lr, "epoch": epoch, "elapsed_s": round(time.time() - t_start, 2)})
            loss_acc.zero_()
            acc_n = 0
            if step % (args.log_every * 5) == 0:
                log(f"{kind}: step {step}/{total} loss {l:.4f} lr {lr:.2e} epoch {epoch}")
        if step % args.eval_every == 0 or (total is not None and step == total):
            ev = evaluate(model, kind, held_wins, batch=64, full_stats=False, autocast=True)
            e = {"step": step, "heldout_nll_bf16": round(ev["nll_mean"], 5)}
            if kind == "opt":
                e["fc1_density_per_layer"] = [round(v, 4) for v in ev["density_per_layer"]]
            evals.append(e)
            log(f"{kind}: eval step {step}: heldout nll {ev['nll_mean']:.4f}" + (f" density {[round(v, 3) for v in ev['density_per_layer']]}" if kind == "opt" else ""))
    torch.cuda.synchronize()
    wall = time.time() - t_start
    return {
        "steps": step,
        "planned_steps": total,
        "stopped_early": stopped_early,
        "epochs_started": epoch + 1,
        "sec_per_step": sec_per_step,
        "wall_s": wall,
        "tokens_seen": step * bs * SEQ_LEN,
        "loss_log": logs,
        "eval_log": evals,
    }


# ------------------------------------------------------------------------- saving


def save_fp16(model, tok: Tokenizer, out_dir: str):
    os.makedirs(out_dir, exist_ok=True)
    model = model.to(torch.float16)
    try:
        model.config.dtype = torch.float16
    except Exception:  # noqa: BLE001
        pass
    model.save_pretrained(out_dir)
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("dtype") != "float16":
        cfg["dtype"] = "float16"
        write_json(cfg_path, cfg, indent=2, sort_keys=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    files = sorted(os.listdir(out_dir))
    log(f"saved {out_dir}: " + ", ".join(f"{f} ({os.path.getsize(os.path.join(out_dir, f))} B)" for f in files))


def model_card(kind, name, cfg, tr, ev, slice_ev, args, ntrain_tokens, nheld_tokens, n_params, tok_secs):
    arch = (
        "OPTForCausalLM: ReLU MLP, pre-LayerNorm (do_layer_norm_before=true), 6 layers, hidden 256, ffn 1024, "
        "8 heads (head dim 32), learned positions (512 + 2 offset rows), word_embed_proj_dim 256, biases everywhere, "
        "LM head tied to the token embeddings, dropout 0"
        if kind == "opt"
        else "LlamaForCausalLM: SwiGLU MLP, RMSNorm (eps 1e-6), 4 layers, hidden 192, intermediate 512, 6 query heads / "
        "2 key-value heads (GQA, head dim 32), RoPE theta 10000, no biases, untied LM head"
    )
    specials = "`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3; BOS = EOS = `</s>` (2), PAD = 1 (like real OPT)" if kind == "opt" else "`<unk>`=0, `<s>`=1, `</s>`=2; BOS = 1, EOS = 2, no PAD"
    lines = []
    A = lines.append
    A(f"# {name}\n")
    A("A small model trained from scratch for the tests and demos of dejavu-ts. It is a fixture, not a useful language model.\n")
    A("## Architecture\n")
    A(f"{arch}. Vocabulary 4096. {n_params / 1e6:.2f} M parameters (unique). Saved with `save_pretrained` in float16 "
      "(`model.safetensors`), plus `config.json`, `generation_config.json` and `tokenizer.json`.\n")
    A("## Tokenizer\n")
    A(f"Byte-level BPE trained with the `tokenizers` library on `data/train.jsonl` (vocab 4096, min frequency 2, ByteLevel "
      f"pre-tokenizer with add_prefix_space=false, ByteLevel decoder, no normalizer, no post-processor). Special tokens: {specials}. "
      f"Training the tokenizer took {tok_secs:.1f} s.\n")
    A("## Data\n")
    A("`data/train.jsonl` (regenerated by `node scripts/prepare-data.mjs`; see `data/README.md` for sources and the split). "
      "Every document is prefixed with the BOS id, documents are concatenated and cut into non-overlapping windows of 256 tokens "
      f"({ntrain_tokens} training tokens, {ntrain_tokens // SEQ_LEN} windows). Evaluation uses `data/heldout.jsonl` packed the same way "
      f"({nheld_tokens} tokens, {ev['windows']} windows of 256; each window contributes 255 next-token predictions).\n")
    A("## Training\n")
    A(f"- steps: {tr['steps']}" + (" (stopped early at the wall-clock deadline; cosine schedule planned for " + str(tr['planned_steps']) + ")" if tr["stopped_early"] else ""))
    A(f"- batch: {args.batch} windows x 256 tokens = {args.batch * SEQ_LEN} tokens/step; tokens seen: {tr['tokens_seen']} (~{tr['tokens_seen'] / max(1, ntrain_tokens):.1f} epochs)")
    A(f"- optimiser: AdamW (betas 0.9/0.95, eps 1e-8), peak lr {args.lr}, linear warm-up {args.warmup} steps, cosine decay to {args.lr * args.min_lr_ratio:g}, "
      f"weight decay {args.weight_decay} on matrices and embeddings (not on biases / norm weights), grad-norm clip 1.0")
    A("- bf16 autocast, float32 master weights, dropout 0. **No sparsity regulariser** or other auxiliary loss: plain next-token cross-entropy.")
    A(f"- seed {args.seed}; data order from a seeded torch.Generator (one permutation of the windows per epoch)")
    A(f"- wall time: {tr['wall_s']:.1f} s on one NVIDIA H200 ({(tr['sec_per_step'] or 0) * 1000:.1f} ms/step); "
      f"torch {torch.__version__}, transformers {transformers.__version__}")
    A(f"- loss curve: `training-log.json` (mean training loss every {args.log_every} steps, held-out NLL in bf16 every {args.eval_every} steps)\n")
    if tr["eval_log"]:
        A("Held-out NLL during training (bf16 autocast, training weights)" + (" and fc1 density per layer" if kind == "opt" else "") + ":\n")
        A("| step | train loss | held-out NLL |" + (" fc1 density per layer |" if kind == "opt" else ""))
        A("| --- | --- | --- |" + (" --- |" if kind == "opt" else ""))
        tl = {e["step"]: e["loss"] for e in tr["loss_log"]}
        for e in tr["eval_log"]:
            row = f"| {e['step']} | {tl.get(e['step'], float('nan')):.4f} | {e['heldout_nll_bf16']:.4f} |"
            if kind == "opt":
                row += " " + ", ".join(f"{v:.3f}" for v in e["fc1_density_per_layer"]) + " |"
            A(row)
        A("")
    A("## Held-out evaluation\n")
    A("Computed from the **saved float16 weights, reloaded in float32** (eager attention, eval mode), on all windows of `data/heldout.jsonl`.\n")
    A(f"- mean NLL: {ev['nll_mean']:.4f} nats/token, **perplexity {ev['ppl']:.2f}**")
    A(f"- first 8 windows (`ppl-slice.json`): NLL {slice_ev['nll_mean']:.5f}, perplexity {slice_ev['ppl']:.3f}\n")
    if kind == "opt":
        A("Per-layer MLP density: fraction of fc1 outputs > 0 (ReLU input > 0) over all held-out tokens; dead = never > 0 on held-out; "
          "L1-90 = fraction of neurons needed to hold 90% of each token's L1 mass of relu(fc1 x), averaged over tokens.\n")
        A("| layer | density (fc1 > 0) | dead neurons | L1-90 fraction | mean relu(fc1 x) |")
        A("| --- | --- | --- | --- | --- |")
        for i, d in enumerate(ev["density_per_layer"]):
            A(f"| {i} | {d:.4f} | {ev['dead_fraction_per_layer'][i]:.4f} | {ev['l1_90_fraction_per_layer'][i]:.4f} | {ev['abs_mean_per_layer'][i]:.4f} |")
        A("")
        A(f"Mean density over layers: {sum(ev['density_per_layer']) / len(ev['density_per_layer']):.4f}.\n")
    else:
        A("Per-layer statistics of |a|, a = silu(gate_proj x) * up_proj x (the input of down_proj), over all held-out tokens and neurons "
          "(quantiles by nearest rank); L1-90 = fraction of neurons needed to hold 90% of each token's L1 mass, averaged over tokens.\n")
        A("| layer | mean abs | q50 | q90 | q99 | L1-90 fraction |")
        A("| --- | --- | --- | --- | --- | --- |")
        for i, m in enumerate(ev["abs_mean_per_layer"]):
            q = ev["abs_quantiles_per_layer"][i]
            A(f"| {i} | {m:.5f} | {q['q50']:.5f} | {q['q90']:.5f} | {q['q99']:.5f} | {ev['l1_90_fraction_per_layer'][i]:.4f} |")
        A("")
    A("## Reproduce\n")
    A("```")
    A("node scripts/prepare-data.mjs")
    A(shlex.join(["python3"] + sys.argv))
    A("```\n")
    steps_flag = "--steps-opt" if kind == "opt" else "--steps-llama"
    if steps_flag in sys.argv:
        A("The command above is the exact one that produced this folder (GPU kernels are not bitwise deterministic, so a "
          "rerun gives weights that differ in the last bits).\n")
    else:
        A(f"The command above is the exact one that produced this folder. To repeat this model's run with the same step count "
          f"without the time-based choice, add `{steps_flag} {tr['planned_steps']}` (GPU kernels are not bitwise deterministic, so "
          "weights will differ in the last bits).\n")
    return "\n".join(lines)


def run_model(kind, args, train_texts, held_texts, deadline):
    name = "opt-fixture" if kind == "opt" else "llama-fixture"
    specials = ["<s>", "<pad>", "</s>", "<unk>"] if kind == "opt" else ["<unk>", "<s>", "</s>"]
    bos = 2 if kind == "opt" else 1
    torch.manual_seed(args.seed + (0 if kind == "opt" else 1000))
    t = time.time()
    tok = train_tokenizer(train_texts, specials)
    tok_secs = time.time() - t
    log(f"{name}: tokenizer trained in {tok_secs:.1f} s")
    train_stream = pack(tok, train_texts, bos)
    held_stream = pack(tok, held_texts, bos)
    train_wins = windows_of(train_stream).cuda()
    held_wins = windows_of(held_stream)
    log(f"{name}: {train_stream.numel()} train tokens ({train_wins.shape[0]} windows), {held_stream.numel()} held-out tokens ({held_wins.shape[0]} windows)")

    cfg = make_config(kind)
    torch.manual_seed(args.seed + (0 if kind == "opt" else 1000))
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").cuda().float()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{name}: {n_params} parameters; attn {model.config._attn_implementation}")
    steps_arg = args.steps_opt if kind == "opt" else args.steps_llama
    budget = args.budget_opt if kind == "opt" else args.budget_llama
    tr = train(kind, model, train_wins, held_wins, args, steps_arg, budget, args.max_steps, deadline)
    log(f"{name}: trained {tr['steps']} steps in {tr['wall_s']:.1f} s, {tr['tokens_seen']} tokens")

    out_dir = os.path.join(args.out, name)
    save_fp16(model, tok, out_dir)
    del model
    torch.cuda.empty_cache()

    # Evaluate the saved fp16 weights upcast to float32, full fp32 matmuls (no TF32).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    m = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager").cuda().eval()
    assert next(m.parameters()).dtype == torch.float32
    ev = evaluate(m, kind, held_wins, batch=32, full_stats=True)
    sl = evaluate(m, kind, held_wins[:8], batch=8, full_stats=False)
    log(f"{name}: held-out ppl {ev['ppl']:.3f} (nll {ev['nll_mean']:.4f}); slice ppl {sl['ppl']:.3f}")
    if kind == "opt":
        log(f"{name}: fc1 density per layer {[round(v, 4) for v in ev['density_per_layer']]}")
    else:
        log(f"{name}: |a| mean {[round(v, 5) for v in ev['abs_mean_per_layer']]} quantiles {ev['abs_quantiles_per_layer']}")
    log(f"{name}: L1-90 fraction per layer {[round(v, 4) for v in ev['l1_90_fraction_per_layer']]}")

    slice_obj = {
        "description": (
            f"First 8 non-overlapping 256-token windows of data/heldout.jsonl packed for {name} (every document prefixed with "
            f"BOS id {bos}, documents concatenated, tokenizer.json of this folder). nll_mean = mean next-token NLL over the 8x255 "
            "predictions (accumulated in float64) computed by PyTorch in float32 (eager attention) from model.safetensors upcast to "
            "float32; ppl = exp(nll_mean)."
            + (" mlp_density_per_layer = fraction of fc1 outputs > 0 over the same 8x256 tokens." if kind == "opt" else "")
        ),
        "seq_len": SEQ_LEN,
        "ids": held_wins[:8].tolist(),
        "nll_mean": sl["nll_mean"],
        "ppl": sl["ppl"],
        "mlp_density_per_layer": sl["density_per_layer"] if kind == "opt" else None,
    }
    write_json(os.path.join(out_dir, "ppl-slice.json"), slice_obj)
    tlog = {
        "model": name,
        "command": shlex.join(["python3"] + sys.argv),
        "seq_len": SEQ_LEN,
        "batch": args.batch,
        "lr": args.lr,
        "warmup": args.warmup,
        "min_lr_ratio": args.min_lr_ratio,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
        "train_tokens": int(train_stream.numel()),
        "heldout_tokens": int(held_stream.numel()),
        **{k: v for k, v in tr.items() if k not in ("loss_log", "eval_log")},
        "tokenizer_train_s": tok_secs,
        "heldout_eval_fp32_from_fp16": ev,
        "loss_log": tr["loss_log"],
        "eval_log": tr["eval_log"],
    }
    write_json(os.path.join(out_dir, "training-log.json"), tlog, indent=1)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(model_card(kind, name, cfg, tr, ev, sl, args, int(train_stream.numel()), int(held_stream.numel()), n_params, tok_secs))
    del m
    torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = False
    return ev


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data")
    ap.add_argument("--out", default="checkpoints")
    ap.add_argument("--models", default="opt,llama", help="comma list of opt,llama")
    ap.add_argument("--steps-opt", type=int, default=None)
    ap.add_argument("--steps-llama", type=int, default=None)
    ap.add_argument("--budget-opt", type=float, default=200.0, help="seconds of training for OPT when --steps-opt is not given")
    ap.add_argument("--budget-llama", type=float, default=120.0, help="seconds of training for Llama when --steps-llama is not given")
    ap.add_argument("--max-steps", type=int, default=3000, help="cap of the time-based step choice (6000 over-fitted: see the model cards)")
    ap.add_argument("--deadline", type=float, default=470.0, help="seconds after start at which any training loop stops (safety net)")
    add_training_args(ap)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=500)
    args = ap.parse_args()

    assert torch.cuda.is_available(), "needs a GPU"
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name(0)}")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    train_texts = read_jsonl(os.path.join(args.data, "train.jsonl"))
    held_texts = read_jsonl(os.path.join(args.data, "heldout.jsonl"))
    log(f"{len(train_texts)} train docs, {len(held_texts)} held-out docs")
    deadline = T0 + args.deadline
    results = {}
    for kind in [k.strip() for k in args.models.split(",") if k.strip()]:
        assert kind in ("opt", "llama"), kind
        results[kind] = run_model(kind, args, train_texts, held_texts, deadline)
    log("done: " + json.dumps({k: {"ppl": v["ppl"]} for k, v in results.items()}))


if __name__ == "__main__":
    main()
