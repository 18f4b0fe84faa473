/**
 * Predictors as forward-pass hooks: per layer, the MLP predictor reads h_mlp (the MLP block's own normalized input;
 * or x_attn / x_mlp for Deja Vu's predictor) and picks neurons (the exact mode scores with the first projection itself,
 * the dense mode picks nothing and computes every neuron); the
 * head predictor reads the previous layer's x_attn (lookahead) or its own and picks heads. The same hooks serve
 * evaluation as [B, T, *] 0/1 masks; the decode runtime picks with the same rules on the host (src/runtime/plan.ts).
 */
import * as tf from '@tensorflow/tfjs-core';
import { topkMask, type SparsityHooks } from '../model/forward.js';
import type { SelectionRule } from './metrics.js';
import { disposePredictor, fromHost, predictLogits, swigluScore, type GateAct, type HostPredictor, type PredictorWeights } from './predictor.js';

/** the gate activation of a recorded model config */
export const gateActOf = (c: { act?: unknown; actThreshold?: unknown }): GateAct => ({ act: (c.act ?? 'silu') as GateAct['act'], actThreshold: Number(c.actThreshold ?? 0) });
import { assertFinitePredictor } from './finite.js';
import { hasLowRankWeights, loadHostPredictor, readPredictorsManifest, type PredictorEntry, type PredictorsManifest } from './store.js';

/** A layer's loaded predictor: low-rank weights (SwiGLU: gate's, and `up`), none for the dense and exact modes. */
export interface LoadedSite {
  entry: PredictorEntry; weights?: PredictorWeights; up?: PredictorWeights; sourceLayerOffset: number;
  /** the same weights on the host (nn.Linear layout), for the decode runtime */
  host?: HostPredictor; hostUp?: HostPredictor;
  /** gated sites: the model's activation of the gate (scores |act(ĝ) · û|) */
  gateAct?: GateAct;
}

/** The first projection [d, F] (+ bias), which the exact mode scores with. */
export interface ExactProjection { w: tf.Tensor2D; b?: tf.Tensor1D | undefined }

/** Scores [N, W] of a site for inputs x [N, d] (the input its entry names). */
export function siteScores(site: LoadedSite, x: tf.Tensor2D, exact?: ExactProjection): tf.Tensor2D {
  if (site.entry.predictor === 'exact') {
    if (!exact) throw new Error('the exact MLP mode needs the layer\'s first projection');
    return tf.tidy(() => { const z = tf.matMul(x, exact.w); return (exact.b ? tf.add(z, exact.b) : z) as tf.Tensor2D; });
  }
  if (!site.weights) throw new Error(`no predictor weights for a ${site.entry.predictor} site`);
  return site.up ? swigluScore(site.weights, site.up, x, site.gateAct) : predictLogits(site.weights, x);
}

export function disposeSite(s: LoadedSite): void { if (s.weights) disposePredictor(s.weights); if (s.up) disposePredictor(s.up); }
export interface LoadedPredictors { manifest: PredictorsManifest; mlp: Map<number, LoadedSite>; heads: Map<number, LoadedSite>; dispose(): void }

export function loadPredictors(dir: string): LoadedPredictors {
  const manifest = readPredictorsManifest(dir);
  const mlp = new Map<number, LoadedSite>(), heads = new Map<number, LoadedSite>();
  const host = (l: PredictorsManifest['layers'][number], site: 'mlp' | 'mlp.up' | 'heads') => {
    const h = loadHostPredictor(dir, l.file, site, l[site === 'heads' ? 'heads' : 'mlp']!.hiddenActivation);
    assertFinitePredictor(h, `layer ${l.layer} ${site === 'mlp' ? 'MLP' : 'head'} predictor in ${dir}`, site);
    return h;
  };
  for (const l of manifest.layers) {
    if (l.mlp) {
      const lowRank = hasLowRankWeights(l.mlp.predictor);
      const h = lowRank ? host(l, 'mlp') : undefined, hu = lowRank && l.mlp.score === 'swiglu' ? host(l, 'mlp.up') : undefined;
      mlp.set(l.layer, { entry: l.mlp, sourceLayerOffset: 0, ...(h ? { weights: fromHost(h), host: h } : {}),
        ...(hu ? { up: fromHost(hu), hostUp: hu, gateAct: gateActOf(manifest.model.config) } : {}) });
    }
    if (l.heads) { const h = host(l, 'heads'); heads.set(l.layer, { entry: l.heads, weights: fromHost(h), host: h, sourceLayerOffset: l.heads.input.includes('layer-1') ? -1 : 0 }); }
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

export interface HookOptions {
  mlp: boolean;
  heads: boolean;
  /** record what was selected per layer (density), for reports; `selected` may be a scalar tensor the receiver
   * owns (read asynchronously after the forward pass: no synchronous read inside it, which a GPU cannot do) */
  onSelect?: (site: 'mlp' | 'heads', layer: number, selected: number | tf.Tensor, total: number) => void;
}

export function predictorHooks(p: LoadedPredictors, opts: HookOptions): SparsityHooks {
  const flat = (x: tf.Tensor) => tf.reshape(x, [-1, x.shape[x.shape.length - 1]!]) as tf.Tensor2D;
  const select = (site: LoadedSite, x: tf.Tensor, layer: number, kind: 'mlp' | 'heads', exact?: ExactProjection): { mask: tf.Tensor } => {
    const [B, T] = x.shape as [number, number];
    const rule = site.entry.rule!;
    const logits = siteScores(site, flat(x), exact); // [B*T, W]
    const W = logits.shape[1];
    const mask = tf.reshape(ruleMask(logits, rule), [B, T, W]);
    if (opts.onSelect) opts.onSelect(kind, layer, tf.keep(tf.sum(mask)), B * T * W);
    return { mask };
  };
  const hooks: SparsityHooks = {};
  if (opts.mlp) hooks.mlp = (layer, ctx) => {
    const s = p.mlp.get(layer);
    if (!s) return null;
    if (s.entry.predictor === 'dense') {
      // every neuron is computed: count it so that reported densities cover the dense layers too
      const n = ctx.hMlp.size / ctx.hMlp.shape[ctx.hMlp.rank - 1]!, F = ctx.up.shape[1];
      opts.onSelect?.('mlp', layer, n * F, n * F);
      return null;
    }
    const x = s.entry.input === 'h_mlp' ? ctx.hMlp : s.entry.input === 'x_mlp' ? ctx.xMlp : ctx.xAttn;
    return select(s, x, layer, 'mlp', { w: ctx.up, b: ctx.upBias });
  };
  if (opts.heads) hooks.heads = (layer, ctx) => {
    const s = p.heads.get(layer);
    if (!s) return null;
    return select(s, s.sourceLayerOffset === -1 ? ctx.xAttnPrev : ctx.xAttn, layer, 'heads');
  };
  return hooks;
}
