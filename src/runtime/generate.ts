/**
 * The runtime: the prompt is prefilled densely by the one forward pass (batched; a model loaded for decoding only:
 * by dense decode steps, DecodeSession.prefill), then every new token goes
 * through the decode session (src/runtime/decoder.ts) with per-layer modes: dense, lossless, or neurons / heads
 * picked by the predictors (from a plan or the bundle's trained rules), computing only those rows. K and V are
 * computed for every head at every step, so the cache stays exact for heads that a later token selects.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { readSync } from '../util/tfx.js';
import { UserError } from '../util/errors.js';
import { mulberry32 } from '../util/random.js';
import { forward, newCache, disposeCache, disposeOutput } from '../model/forward.js';
import type { Model } from '../model/model.js';
import { DecodeSession, denseModes, sessionFromPrefill, zeroCounts, type DecodeCounts, type DecodeModes, type WeightCounts } from './decoder.js';

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 = greedy */
  temperature?: number;
  topK?: number;
  seed?: number;
  /** per-layer modes of the decode steps (default: every layer dense) */
  modes?: DecodeModes | undefined;
  stopAtEos?: boolean;
}

/** Why generation ended: every row hit EOS, maxNewTokens were generated, or the model ran out of positions. */
export type StopReason = 'eos' | 'max-tokens' | 'max-positions';
export interface GenerateResult {
  tokens: number[][]; prefillMs: number; decodeMs: number; decodeSteps: number; stopReason: StopReason; maxPositions: number; counts: DecodeCounts; weights: WeightCounts;
}

/** Longest prompt + new tokens must fit the model's positions (max_position_embeddings). */
export function positionsLeft(model: Model, promptLen: number): number { return model.config.maxPositions - promptLen; }

/**
 * The ids that end generation: config.json's eos_token_id and generation_config.json's (one id or a list, as
 * transformers' generate reads it). A generation_config.json that cannot be read adds nothing.
 */
export function eosIds(model: Model): number[] {
  const ids = new Set<number>();
  if (model.config.eosTokenId !== null) ids.add(model.config.eosTokenId);
  const f = path.join(model.dir, 'generation_config.json');
  let g: unknown = null;
  try { g = fs.existsSync(f) ? JSON.parse(fs.readFileSync(f, 'utf8')) : null; } catch { g = null; }
  const e = (g as { eos_token_id?: unknown } | null)?.eos_token_id;
  for (const x of Array.isArray(e) ? e : [e]) if (Number.isInteger(x) && (x as number) >= 0) ids.add(x as number);
  return [...ids];
}

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
  const rand = mulberry32(o.seed ?? 0);
  const out: number[][] = prompts.map(() => []);
  const done = new Array(B).fill(false);
  const eos = new Set(eosIds(model));
  const V = model.config.vocabSize;
  const room = positionsLeft(model, T);
  if (room < 1) throw new UserError(`generate: the prompt has ${T} tokens; the model has ${model.config.maxPositions} positions (max_position_embeddings)`, 'shorten the prompt');
  const maxNew = Math.min(o.maxNewTokens, room);
  let stopReason: StopReason = o.maxNewTokens > room ? 'max-positions' : 'max-tokens';
  let session: DecodeSession;
  let t = performance.now();
  let next: number[];
  const modes = o.modes ?? denseModes(model.config.layers);
  if (model.decodeOnly) { // prefilled by dense decode steps, each prompt without its padding
    session = new DecodeSession(model, modes, B);
    const last = new Float32Array(B * V);
    try { prompts.forEach((p, b) => session.prefill(b, p, last.subarray(b * V, (b + 1) * V))); } catch (e) { session.dispose(); throw e; }
    assertFinite(last, V, 'generate (prompt)');
    next = Array.from({ length: B }, (_, b) => pick(last.subarray(b * V, (b + 1) * V), o, rand));
  } else { // prefilled by the forward pass, the prompts left-padded together
    const padded = prompts.map((p) => [...new Array(T - p.length).fill(0), ...p]);
    const mask = prompts.map((p) => [...new Array(T - p.length).fill(0), ...new Array(p.length).fill(1)]);
    const cache = newCache(model);
    try {
      const pre = forward(model, padded, { attentionMask: mask, cache });
      const last = readSync(() => tf.slice(pre.logits!, [0, T - 1, 0], [B, 1, V]));
      disposeOutput(pre);
      assertFinite(last, V, 'generate (prompt)');
      next = Array.from({ length: B }, (_, b) => pick(last.subarray(b * V, (b + 1) * V), o, rand));
      session = sessionFromPrefill(model, modes, cache);
    } finally {
      disposeCache(cache);
    }
  }
  const prefillMs = performance.now() - t;
  t = performance.now();
  let steps = 0;
  try {
    for (let s = 0; s < maxNew; s++) {
      next.forEach((id, b) => { if (!done[b]) out[b]!.push(id); if (o.stopAtEos !== false && eos.has(id)) done[b] = true; });
      if (done.every(Boolean)) { stopReason = 'eos'; break; }
      if (s === maxNew - 1) break;
      const lg = session.step(next);
      assertFinite(lg, V, `generate (step ${s + 1})`);
      next = Array.from({ length: B }, (_, b) => pick(lg.subarray(b * V, (b + 1) * V), o, rand));
      steps++;
    }
  } finally { session.dispose(); }
  return { tokens: out, prefillMs, decodeMs: performance.now() - t, decodeSteps: steps, stopReason, maxPositions: model.config.maxPositions, counts: session.counts, weights: session.weights };
}

/**
 * The runtime's own perplexity: each sequence fed token by token through a decode session with the given modes
 * (default dense), scoring the next token. Same selection rules as evaluate-recall's predicted-sparsity run,
 * computed by skipping rows instead of masking. `onToken`: called after each scored token (progress).
 */
export function decodeNll(model: Model, seqs: number[][], modes?: DecodeModes, onToken?: () => void): { nll: number; count: number; counts: DecodeCounts; weights: WeightCounts } {
  let nll = 0, count = 0;
  const V = model.config.vocabSize;
  const counts: DecodeCounts = zeroCounts(), weights: WeightCounts = { weightsRead: 0, weightsTotal: 0 };
  for (const seq of seqs) {
    const s = new DecodeSession(model, modes ?? denseModes(model.config.layers), 1);
    try {
      for (let t = 0; t < seq.length - 1; t++) {
        const lg = s.step([seq[t]!]);
        assertFinite(lg, V, 'decode perplexity');
        let mx = -Infinity;
        for (let j = 0; j < V; j++) if (lg[j]! > mx) mx = lg[j]!;
        let sum = 0;
        for (let j = 0; j < V; j++) sum += Math.exp(lg[j]! - mx);
        nll -= lg[seq[t + 1]!]! - mx - Math.log(sum);
        count++;
        onToken?.();
      }
    } finally { s.dispose(); }
    for (const k of Object.keys(counts) as (keyof DecodeCounts)[]) counts[k] += s.counts[k];
    weights.weightsRead += s.weights.weightsRead; weights.weightsTotal += s.weights.weightsTotal;
  }
  return { nll, count, counts, weights };
}
