/**
 * The sparse runtime: KV-cached decoding through the one forward pass. With predictors (a bundle), each decoded
 * token's MLP neurons and attention heads are picked by the predictors and only those are computed (indices mode:
 * gathered weight rows). The prompt (prefill) runs dense. K and V are computed for every head at every step, so
 * the cache stays exact for heads that a later token selects.
 */
import * as tf from '@tensorflow/tfjs-core';
import { readSync } from '../util/tfx.js';
import { UserError } from '../util/errors.js';
import { mulberry32 } from '../util/random.js';
import { forward, newCache, disposeCache, disposeOutput, type SparsityHooks } from '../model/forward.js';
import type { Model } from '../model/model.js';

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 = greedy */
  temperature?: number;
  topK?: number;
  seed?: number;
  /** sparse hooks for decode steps (indices mode) */
  sparsity?: SparsityHooks | undefined;
  stopAtEos?: boolean;
}

/** Why generation ended: every row hit EOS, maxNewTokens were generated, or the model ran out of positions. */
export type StopReason = 'eos' | 'max-tokens' | 'max-positions';
export interface GenerateResult { tokens: number[][]; prefillMs: number; decodeMs: number; decodeSteps: number; stopReason: StopReason; maxPositions: number }

/** Longest prompt + new tokens must fit the model's positions (max_position_embeddings). */
export function positionsLeft(model: Model, promptLen: number): number { return model.config.maxPositions - promptLen; }

/** A row of logits with NaN or +-Infinity means broken weights (model or predictors): never pick a token from it. */
function assertFinite(logits: Float32Array, V: number, where: string): void {
  for (let i = 0; i < logits.length; i++) {
    if (!Number.isFinite(logits[i]!)) throw new UserError(`${where}: the model produced non-finite logits (${logits[i]} for prompt ${Math.floor(i / V) + 1}, vocabulary id ${i % V})`,
      'the weights hold NaN/Inf: check the checkpoint (and the bundle: dejavu verify-bundle); if predictors were trained with a large optim.lr, retrain with a lower one');
  }
}

function pick(logits: Float32Array, o: GenerateOptions, rand: () => number): number {
  const temp = o.temperature ?? 0;
  if (temp <= 0) { let b = 0; for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[b]!) b = i; return b; }
  let ids = Array.from({ length: logits.length }, (_, i) => i);
  if (o.topK && o.topK < ids.length) ids = ids.sort((a, b) => logits[b]! - logits[a]!).slice(0, o.topK);
  const mx = Math.max(...ids.map((i) => logits[i]!));
  const ps = ids.map((i) => Math.exp((logits[i]! - mx) / temp));
  let r = rand() * ps.reduce((a, b) => a + b, 0);
  for (let j = 0; j < ids.length; j++) { r -= ps[j]!; if (r <= 0) return ids[j]!; }
  return ids[ids.length - 1]!;
}

/** Generate for a batch of prompts (left-padded together). Returns only the new tokens per row. */
export function generate(model: Model, prompts: number[][], o: GenerateOptions): GenerateResult {
  const B = prompts.length;
  const T = Math.max(...prompts.map((p) => p.length));
  const padded = prompts.map((p) => [...new Array(T - p.length).fill(0), ...p]);
  const mask = prompts.map((p) => [...new Array(T - p.length).fill(0), ...new Array(p.length).fill(1)]);
  const rand = mulberry32(o.seed ?? 0);
  const cache = newCache(model);
  const out: number[][] = prompts.map(() => []);
  const done = new Array(B).fill(false);
  const eos = model.config.eosTokenId;
  const V = model.config.vocabSize;
  const room = positionsLeft(model, T);
  if (room < 1) throw new UserError(`generate: the prompt has ${T} tokens; the model has ${model.config.maxPositions} positions (max_position_embeddings)`, 'shorten the prompt');
  const maxNew = Math.min(o.maxNewTokens, room);
  let stopReason: StopReason = o.maxNewTokens > room ? 'max-positions' : 'max-tokens';
  try {
    let t = performance.now();
    const pre = forward(model, padded, { attentionMask: mask, cache });
    const last = readSync(() => tf.slice(pre.logits!, [0, T - 1, 0], [B, 1, V]));
    disposeOutput(pre);
    assertFinite(last, V, 'generate (prompt)');
    let next = Array.from({ length: B }, (_, b) => pick(last.subarray(b * V, (b + 1) * V), o, rand));
    const prefillMs = performance.now() - t;
    t = performance.now();
    let steps = 0;
    for (let s = 0; s < maxNew; s++) {
      next.forEach((id, b) => { if (!done[b]) out[b]!.push(id); if (o.stopAtEos !== false && id === eos) done[b] = true; });
      if (done.every(Boolean)) { stopReason = 'eos'; break; }
      if (s === maxNew - 1) break;
      const step = forward(model, next.map((id) => [id]), { cache, ...(o.sparsity ? { sparsity: o.sparsity } : {}) });
      const lg = step.logits!.dataSync() as Float32Array;
      disposeOutput(step);
      assertFinite(lg, V, `generate (step ${s + 1})`);
      next = Array.from({ length: B }, (_, b) => pick(lg.subarray(b * V, (b + 1) * V), o, rand));
      steps++;
    }
    return { tokens: out, prefillMs, decodeMs: performance.now() - t, decodeSteps: steps, stopReason, maxPositions: model.config.maxPositions };
  } finally {
    disposeCache(cache);
  }
}

/**
 * The runtime's own perplexity: feed each sequence token by token through the cached decode path (with the
 * sparse hooks, one token per row), and score the next token. Same selection rule as evaluate-recall's
 * predicted-sparsity run, computed by skipping instead of masking.
 */
export function decodePerplexityNll(model: Model, seqs: number[][], sparsity?: SparsityHooks): { nll: number; count: number } {
  let nll = 0, count = 0;
  const V = model.config.vocabSize;
  for (const seq of seqs) {
    const cache = newCache(model);
    try {
      for (let t = 0; t < seq.length - 1; t++) {
        const o = forward(model, [[seq[t]!]], { cache, ...(sparsity ? { sparsity } : {}) });
        const lg = readSync(() => tf.logSoftmax(tf.reshape(o.logits!, [V])));
        disposeOutput(o);
        nll -= lg[seq[t + 1]!]!;
        count++;
      }
    } finally {
      disposeCache(cache);
    }
  }
  return { nll, count };
}
