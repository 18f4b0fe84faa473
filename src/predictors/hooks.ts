/**
 * Predictors as forward-pass hooks: per layer, the MLP predictor reads h_mlp (the MLP block's own normalized input;
 * or x_attn / x_mlp for Deja Vu's family) and picks neurons (the exact mode scores with the first projection itself,
 * the dense mode picks nothing and computes every neuron); the
 * head predictor reads the previous layer's x_attn (lookahead) or its own and picks heads. The same hooks serve
 * evaluation (mask mode: [B, T, *] 0/1 masks) and the runtime (indices mode: only the picked rows are computed).
 */
import * as tf from '@tensorflow/tfjs-core';
import { topkMask, type HeadSelection, type MlpSelection, type SparsityHooks } from '../model/forward.js';
import { topKRow, type SelectionRule } from './metrics.js';
import { disposePredictor, fromHost, predictLogits, swigluScore, type PredictorWeights } from './predictor.js';
import { assertFinitePredictor } from './finite.js';
import { hasLowRankWeights, loadHostPredictor, readPredictorsManifest, type PredictorEntry, type PredictorsManifest } from './store.js';

/** A layer's loaded predictor: low-rank weights (SwiGLU: gate's, and `up`), none for the dense and exact modes. */
export interface LoadedSite { entry: PredictorEntry; weights?: PredictorWeights; up?: PredictorWeights; sourceLayerOffset: number }

/** The first projection [d, F] (+ bias), which the exact mode scores with. */
export interface ExactProjection { w: tf.Tensor2D; b?: tf.Tensor1D | undefined }

/** Scores [N, W] of a site for inputs x [N, d] (the input its entry names). */
export function siteScores(site: LoadedSite, x: tf.Tensor2D, exact?: ExactProjection): tf.Tensor2D {
  if (site.entry.family === 'exact') {
    if (!exact) throw new Error('the exact MLP mode needs the layer\'s first projection');
    return tf.tidy(() => { const z = tf.matMul(x, exact.w); return (exact.b ? tf.add(z, exact.b) : z) as tf.Tensor2D; });
  }
  if (!site.weights) throw new Error(`no predictor weights for a ${site.entry.family} site`);
  return site.up ? swigluScore(site.weights, site.up, x) : predictLogits(site.weights, x);
}

export function disposeSite(s: LoadedSite): void { if (s.weights) disposePredictor(s.weights); if (s.up) disposePredictor(s.up); }
export interface LoadedPredictors { manifest: PredictorsManifest; mlp: Map<number, LoadedSite>; heads: Map<number, LoadedSite>; dispose(): void }

export function loadPredictors(dir: string): LoadedPredictors {
  const manifest = readPredictorsManifest(dir);
  const mlp = new Map<number, LoadedSite>(), heads = new Map<number, LoadedSite>();
  const host = (l: PredictorsManifest['layers'][number], site: 'mlp' | 'mlp.up' | 'heads') => {
    const h = loadHostPredictor(dir, l.file, site, l[site === 'heads' ? 'heads' : 'mlp']!.hidden);
    assertFinitePredictor(h, `layer ${l.layer} ${site === 'mlp' ? 'MLP' : 'head'} predictor in ${dir}`, site);
    return h;
  };
  for (const l of manifest.layers) {
    if (l.mlp) {
      const lowRank = hasLowRankWeights(l.mlp.family);
      mlp.set(l.layer, {
        entry: l.mlp, sourceLayerOffset: 0,
        ...(lowRank ? { weights: fromHost(host(l, 'mlp')) } : {}),
        ...(lowRank && l.mlp.score === 'swiglu' ? { up: fromHost(host(l, 'mlp.up')) } : {}),
      });
    }
    if (l.heads) heads.set(l.layer, { entry: l.heads, weights: fromHost(host(l, 'heads')), sourceLayerOffset: l.heads.input.includes('layer-1') ? -1 : 0 });
  }
  return { manifest, mlp, heads, dispose: () => { for (const s of [...mlp.values(), ...heads.values()]) disposeSite(s); } };
}

/** logits [N, W] -> 0/1 mask [N, W] by the rule */
export function ruleMask(logits: tf.Tensor2D, rule: SelectionRule): tf.Tensor2D {
  return tf.tidy(() => {
    const W = logits.shape[1];
    if (rule.kind === 'threshold') return tf.cast(tf.greaterEqual(logits, rule.value), 'float32') as tf.Tensor2D;
    if (rule.k >= W) return tf.onesLike(logits);
    return topkMask(logits, rule.k) as tf.Tensor2D;
  });
}

/** per row: the selected ids, sorted ascending (runtime: one token per row) */
export function ruleIndices(logits: Float32Array, rows: number, W: number, rule: SelectionRule): Int32Array[] {
  const out: Int32Array[] = [];
  const scratch = new Float32Array(W);
  for (let r = 0; r < rows; r++) {
    const row = logits.subarray(r * W, (r + 1) * W);
    if (rule.kind === 'topk') { out.push(topKRow(row, rule.k, scratch)); continue; }
    const ids: number[] = [];
    for (let j = 0; j < W; j++) if (row[j]! >= rule.value) ids.push(j);
    out.push(Int32Array.from(ids));
  }
  return out;
}

export interface HookOptions {
  mode: 'mask' | 'indices';
  mlp: boolean;
  heads: boolean;
  /** record what was selected per layer (density), for reports */
  onSelect?: (site: 'mlp' | 'heads', layer: number, selected: number, total: number) => void;
}

export function predictorHooks(p: LoadedPredictors, opts: HookOptions): SparsityHooks {
  const flat = (x: tf.Tensor) => tf.reshape(x, [-1, x.shape[x.shape.length - 1]!]) as tf.Tensor2D;
  const select = (site: LoadedSite, x: tf.Tensor, layer: number, kind: 'mlp' | 'heads', exact?: ExactProjection): MlpSelection & HeadSelection => {
    const [B, T] = x.shape as [number, number];
    const rule = site.entry.rule!;
    const logits = siteScores(site, flat(x), exact); // [B*T, W]
    const W = logits.shape[1];
    if (opts.mode === 'indices') {
      if (T !== 1) throw new Error('indices mode selects per row: one token per row (decode) only');
      const z = logits.dataSync() as Float32Array;
      const idx = ruleIndices(z, B, W, rule);
      logits.dispose();
      opts.onSelect?.(kind, layer, idx.reduce((s, a) => s + a.length, 0), B * W);
      // lossless ReLU mode: the scores are the pre-activations, so the selected neurons' activations are known
      if (site.entry.family === 'exact') return { indices: idx, act: idx.map((ids, b) => Float32Array.from(ids, (j) => Math.max(0, z[b * W + j]!))) } as never;
      return { indices: idx } as never;
    }
    const mask = tf.reshape(ruleMask(logits, rule), [B, T, W]);
    if (opts.onSelect) opts.onSelect(kind, layer, tf.sum(mask).dataSync()[0]!, B * T * W);
    return { mask } as never;
  };
  const hooks: SparsityHooks = {};
  if (opts.mlp) hooks.mlp = (layer, ctx) => {
    const s = p.mlp.get(layer);
    if (!s) return null;
    if (s.entry.family === 'dense') {
      // every neuron is computed: count it so that reported densities cover the dense layers too
      const n = ctx.hMlp.size / ctx.hMlp.shape[ctx.hMlp.rank - 1]!, F = ctx.w1.shape[1];
      opts.onSelect?.('mlp', layer, n * F, n * F);
      return null;
    }
    const x = s.entry.input === 'h_mlp' ? ctx.hMlp : s.entry.input === 'x_mlp' ? ctx.xMlp : ctx.xAttn;
    return select(s, x, layer, 'mlp', { w: ctx.w1, b: ctx.b1 });
  };
  if (opts.heads) hooks.heads = (layer, ctx) => {
    const s = p.heads.get(layer);
    if (!s) return null;
    return select(s, s.sourceLayerOffset === -1 ? ctx.xAttnPrev : ctx.xAttn, layer, 'heads');
  };
  return hooks;
}
