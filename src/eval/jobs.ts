/**
 * Perplexity work items of evaluate-recall as plain data, so they run the same in-process or in a worker thread:
 * a batch of sequences and a serializable description of the sparsity hooks to run it with.
 */
import type * as tf from '@tensorflow/tfjs-core';
import type { SparsityHooks } from '../model/forward.js';
import type { Model } from '../model/model.js';
import { predictorHooks, type LoadedPredictors } from '../predictors/hooks.js';
import { batchNll } from './perplexity.js';

export type HookSpec =
  | { kind: 'dense' }
  /** each token's truly largest activations / head norms, k per layer (null: that site dense) */
  | { kind: 'oracle'; mlpK: number[] | null; headK: number[] | null }
  /** the predictors at their calibrated rules (mask mode); selection counts are returned */
  | { kind: 'predicted'; mlp: boolean; heads: boolean }
  /** the MLP predictors under a per-token top-k at these per-layer k (dense layers stay dense); heads dense */
  | { kind: 'scaled'; ks: number[] };

export interface Selection { mlp: number[]; heads: number[]; mlpT: number[]; headsT: number[] }
export interface NllResult { nll: number; count: number; sel?: Selection }

/** sel: the selection counts, complete once `pending` (scalar tensors of selected counts, added into sel by read()) is read */
export function hooksFor(spec: HookSpec, preds: LoadedPredictors, layers: number): { h?: SparsityHooks; sel?: Selection; read?: () => Promise<void> } {
  if (spec.kind === 'dense') return {};
  if (spec.kind === 'oracle') {
    const { mlpK, headK } = spec;
    return { h: { ...(mlpK ? { mlp: (i: number) => ({ oracleTopK: mlpK[i]! }) } : {}), ...(headK ? { heads: (i: number) => ({ oracleTopK: headK[i]! }) } : {}) } };
  }
  if (spec.kind === 'predicted') {
    const sel: Selection = { mlp: new Array(layers).fill(0), heads: new Array(layers).fill(0), mlpT: new Array(layers).fill(0), headsT: new Array(layers).fill(0) };
    const pending: [number[], number, tf.Tensor][] = [];
    const h = predictorHooks(preds, { mlp: spec.mlp, heads: spec.heads, onSelect: (site, layer, s, t) => {
      if (typeof s === 'number') sel[site][layer]! += s; else pending.push([sel[site], layer, s]);
      sel[site === 'mlp' ? 'mlpT' : 'headsT'][layer]! += t;
    } });
    // in the order selected (the same additions as a synchronous read made)
    const read = async () => { try { for (const [to, l, s] of pending) to[l]! += (await s.data())[0]!; } finally { for (const [, , s] of pending) s.dispose(); pending.length = 0; } };
    return { h, sel, read };
  }
  const ks = spec.ks;
  const scaled = { ...preds, mlp: new Map([...preds.mlp].map(([i, s]) => [i, s.entry.predictor === 'dense' ? s : { ...s, entry: { ...s.entry, rule: { kind: 'topk' as const, k: ks[i]! } } }])) };
  return { h: predictorHooks(scaled, { mlp: true, heads: false }) };
}

/** Summed next-token NLL of one batch under one hook spec (and what the predictors selected, for 'predicted'). */
export async function nllJob(model: Model, preds: LoadedPredictors, seqs: number[][], spec: HookSpec): Promise<NllResult> {
  const { h, sel, read } = hooksFor(spec, preds, model.config.layers);
  let r: Awaited<ReturnType<typeof batchNll>>;
  try { r = await batchNll(model, seqs, h); } finally { await read?.(); }
  return { nll: r.nll, count: r.count, ...(sel ? { sel } : {}) };
}
