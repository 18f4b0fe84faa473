/**
 * The one forward pass. Dense collection, evaluation, oracle/predicted sparsity (masks) and the runtime's prefill
 * are all this function with different options: what to capture, and which MLP neurons / attention heads count.
 * One token at a time with real skipping is the decode runtime's job (src/runtime/decoder.ts).
 *
 * Shapes: B batch, T new tokens, P cached tokens, S = P + T keys, d hidden, H heads, KV kv heads, hd head dim,
 * F ffn, V vocab.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from './config.js';
import { embedRows, headLogits, type LayerWeights, type Model } from './model.js';
import { attend, attendHostSimd, attendTfjs, layerBias, linear, norm, prepare, repeatKV, rope, ropeTables, splitHeads, topkMask, type AttendKernel, type Prepared } from './ops.js';
import { mlpActTf, softcapTf } from '../arch/traits.js';

export { topkMask } from './ops.js';

export type CaptureKind = 'xAttn' | 'xMlp' | 'mlpAct' | 'attnContext' | 'headNorm';

export interface CaptureOptions {
  xAttn?: boolean; // residual entering layer i (x_attn)       [B, T, d]
  xMlp?: boolean; // residual entering the MLP block (x_mlp)      [B, T, d]
  mlpAct?: boolean; // input of the down projection                   [B, T, F]
  attnContext?: boolean; // input of the attention output projection [B, T, H*hd]
  headNorm?: boolean; // L2 norm of each head's context vector        [B, T, H]
  finalHidden?: boolean; // HF hidden_states[L]                       [B, T, Dp]
  logits?: boolean; // default true                                   [B, T, V]
  /** restrict per-layer captures to these layers (default all) */
  layers?: number[];
}

/**
 * Which MLP neurons count for layer i: mask [B, T, F] of 0/1 (unselected activations are multiplied by 0 before the
 * down projection), or oracleTopK: each token's k largest |activation| (needs the dense activation: oracle only).
 */
export type MlpSelection = { mask: tf.Tensor } | { oracleTopK: number };
/** Which heads count: mask [B, T, H] (0/1), or oracleTopK: each token's k heads with the largest context norm. */
export type HeadSelection = { mask: tf.Tensor } | { oracleTopK: number };

export interface SparsityHooks {
  /**
   * xAttn: residual entering the layer; xMlp: residual entering the MLP block; hMlp: the MLP block's own
   * (normalized) input (all [B, T, d]); up/upBias: the projection whose sign decides the activation [d, F] (the
   * ungated MLP's first projection; a gated MLP's gate)
   */
  mlp?: (layer: number, ctx: { xAttn: tf.Tensor; xMlp: tf.Tensor; hMlp: tf.Tensor; up: tf.Tensor2D; upBias?: tf.Tensor1D | undefined }) => MlpSelection | null | undefined;
  /** xAttn: this layer's input; xAttnPrev: previous layer's input (layer 0: its own) */
  heads?: (layer: number, ctx: { xAttn: tf.Tensor; xAttnPrev: tf.Tensor }) => HeadSelection | null | undefined;
  /**
   * issue 22, threshold sites: the 0/1 mask (x's shape) of the entries a site keeps, as the decode runtime's input
   * thresholds and gate threshold skip them. attn: q/k/v's shared input; o: the output projection's input; mlp: the MLP's
   * first projections' input; down: the down projection's input (after the MLP's own selection); gate: the raw gate
   * [B, T, F] (the mask multiplies the activation: CATS). null: every entry.
   */
  sites?: (layer: number, site: ThresholdSite, x: tf.Tensor) => tf.Tensor | null | undefined;
}
export type ThresholdSite = 'attn' | 'o' | 'mlp' | 'down' | 'gate';
/** one layer's site masks (SparsityHooks.sites) */
type SiteMask = (site: ThresholdSite, x: tf.Tensor) => tf.Tensor | null | undefined;
/** x with the entries outside the site's mask zeroed (x itself without a hook or mask) */
const masked = (site: SiteMask | null, s: ThresholdSite, x: tf.Tensor) => { const m = site?.(s, x); return m ? tf.mul(x, m) : x; };

export interface KVCache {
  /** per layer [B, KV, P, hd] */
  k: (tf.Tensor | null)[];
  v: (tf.Tensor | null)[];
  /** key mask of the cached positions, per row */
  keyMask: number[][];
}

export interface ForwardOptions {
  /** 1 = real token, 0 = padding; same shape as ids (rows may then be left- or right-padded). Default: ragged rows are right-padded. */
  attentionMask?: number[][];
  capture?: CaptureOptions;
  sparsity?: SparsityHooks;
  /** prefill cache; updated in place (old tensors disposed) */
  cache?: KVCache;
}

export interface ForwardOutput {
  logits?: tf.Tensor; // [B, T, V]
  finalHidden?: tf.Tensor;
  /** per kind, per layer (undefined for layers not captured) */
  captured: Partial<Record<CaptureKind, (tf.Tensor | undefined)[]>>;
  /** the attention mask used, [B][T] */
  mask: number[][];
}

export function newCache(model: Model): KVCache {
  return { k: new Array(model.config.layers).fill(null), v: new Array(model.config.layers).fill(null), keyMask: [] };
}

export function disposeCache(c: KVCache): void {
  for (const t of [...c.k, ...c.v]) t?.dispose();
  c.k.fill(null); c.v.fill(null); c.keyMask = [];
}

export function disposeOutput(o: ForwardOutput): void {
  o.logits?.dispose();
  o.finalHidden?.dispose();
  for (const list of Object.values(o.captured)) for (const t of list ?? []) t?.dispose();
}

/** the attention kernel of a model: chosen once per backend, when it was loaded (Model.attention; webgpu: tfjs ops) */
const ATTEND: Record<Model['attention'], AttendKernel> = { 'host-simd': attendHostSimd, tfjs: attendTfjs };

function mlpBlock(c: ModelConfig, w: LayerWeights, h: tf.Tensor, sel: MlpSelection | null | undefined, site: SiteMask | null): { out: tf.Tensor; act: tf.Tensor } {
  const g = w.gate ? linear(h, w.gate, w.gateBias) : null;
  let act = mlpActTf(c, linear(h, w.up, w.upBias), g); // [B, T, F]
  const gm = g && site?.('gate', g); // CATS: the neurons the gate keeps
  if (gm) act = tf.mul(act, gm);
  if (sel && 'mask' in sel) act = tf.mul(act, sel.mask);
  else if (sel && sel.oracleTopK < act.shape[2]!) act = tf.mul(act, topkMask(tf.abs(act), sel.oracleTopK));
  return { out: linear(masked(site, 'down', act), w.down, w.downBias), act };
}

/** Qwen 3: RMSNorm of each head's vectors [B, N, T, hd] */
const headNorm = (c: ModelConfig, x: tf.Tensor, n: LayerWeights['qNorm']) => (n ? norm(c, x, n) : x);

function attentionBlock(c: ModelConfig, w: LayerWeights, h: tf.Tensor, prep: Prepared, rot: [tf.Tensor, tf.Tensor] | null,
  cache: KVCache | undefined, i: number, sel: HeadSelection | null | undefined, attendK: AttendKernel, site: SiteMask | null): { out: tf.Tensor; ctx: tf.Tensor } {
  const { B, T } = prep;
  const H = c.heads, KV = c.kvHeads, hd = c.headDim;
  let k = headNorm(c, splitHeads(linear(h, w.wk, w.bk), KV, hd), w.kNorm); // [B, KV, T, hd]
  let v = splitHeads(linear(h, w.wv, w.bv), KV, hd);
  if (rot) k = rope(k, rot[0], rot[1]);
  if (cache) {
    const pk = cache.k[i], pv = cache.v[i];
    if (pk && pv) { k = tf.concat([pk, k], 2); v = tf.concat([pv, v], 2); }
    cache.k[i] = tf.keep(k); cache.v[i] = tf.keep(v);
    pk?.dispose(); pv?.dispose();
  }
  let q = headNorm(c, splitHeads(linear(h, w.wq, w.bq), H, hd), w.qNorm); // [B, H, T, hd]
  if (rot) q = rope(q, rot[0], rot[1]);
  // windows that cut keys, ALiBi and softcapping: tfjs ops with the layer's bias; else the model's kernel
  const win = c.windows[i];
  const plain = (!win || win >= prep.P + prep.T) && c.positions !== 'alibi' && !c.attnSoftcap;
  const kr = repeatKV(k, H), vr = repeatKV(v, H);
  const o = plain ? attendK(q, kr, vr, prep, c.attnScale) : attend(q, kr, vr, layerBias(c, prep, i), c.attnScale, c.attnSoftcap); // [B, H, T, hd]
  let ctx4 = tf.transpose(o, [0, 2, 1, 3]); // [B, T, H, hd]
  if (sel && 'mask' in sel) ctx4 = tf.mul(ctx4, tf.expandDims(sel.mask, 3));
  else if (sel && sel.oracleTopK < H) ctx4 = tf.mul(ctx4, tf.expandDims(topkMask(tf.sqrt(tf.sum(tf.square(ctx4), -1)), sel.oracleTopK), 3));
  const ctx = tf.reshape(ctx4, [B, T, H * hd]);
  return { out: linear(masked(site, 'o', ctx), w.wo, w.bo), ctx };
}

/**
 * Run the model on a batch. `ids` rows may be ragged (right-padded internally) or, with `attentionMask`, padded
 * by the caller on either side. Returns tensors the caller owns (see disposeOutput).
 */
export function forward(model: Model, ids: number[][], opts: ForwardOptions = {}): ForwardOutput {
  const c = model.config;
  const cap = opts.capture ?? {};
  const wantLayer = (i: number) => !cap.layers || cap.layers.includes(i);
  const captured: ForwardOutput['captured'] = {};
  const keepCap = (kind: CaptureKind, i: number, t: tf.Tensor | undefined) => {
    if (!cap[kind] || !wantLayer(i) || !t) return;
    // xAttn is the loop's residual, disposed by the loop later: a copy; the others are made inside the layer's tidy
    (captured[kind] ??= new Array(c.layers).fill(undefined))[i] = tf.keep(kind === 'xAttn' ? tf.clone(t) : t);
  };
  const attendK = ATTEND[model.attention];
  const prep = prepare(model, ids, opts);
  try {
    let x: tf.Tensor = tf.tidy(() => {
      let e: tf.Tensor = embedRows(model, prep.idsT); // [B, T, Dp]
      if (c.embedScale !== null) e = tf.mul(e, c.embedScale);
      if (model.projIn) e = linear(e, model.projIn); // [B, T, d]
      if (model.pos) e = tf.add(e, tf.gather(model.pos, tf.tensor2d(prep.positions.map((p) => p + c.positionOffset), [prep.B, prep.T], 'int32')));
      if (model.embedNorm) e = norm(c, e, model.embedNorm);
      return e;
    });
    const rot = c.positions === 'rope' && c.ropeDim > 0 ? ropeTables(c, prep.positions, prep.B, prep.T) : null;
    let xPrev: tf.Tensor | null = null;
    try {
      for (let i = 0; i < c.layers; i++) {
        const { w, release } = model.layer(i);
        try {
          const next: tf.Tensor = tf.tidy(() => {
            keepCap('xAttn', i, x);
            const hsel = opts.sparsity?.heads?.(i, { xAttn: x, xAttnPrev: xPrev ?? x });
            const h1 = c.preNorm ? norm(c, x, w.ln1) : x;
            const sh = opts.sparsity?.sites, site: SiteMask | null = sh ? (s, v) => sh(i, s, v) : null;
            const att = attentionBlock(c, w, masked(site, 'attn', h1), prep, rot, opts.cache, i, hsel, attendK, site);
            keepCap('attnContext', i, att.ctx);
            if (cap.headNorm && wantLayer(i)) keepCap('headNorm', i, tf.sqrt(tf.sum(tf.square(tf.reshape(att.ctx, [prep.B, prep.T, c.heads, c.headDim])), -1)));
            const attOut = w.lnAttnOut ? norm(c, att.out, w.lnAttnOut) : att.out;
            // sequential: the MLP reads the residual after attention; parallel: the layer's input (ln2, or ln1's output)
            let xm = c.block === 'parallel' ? x : tf.add(x, attOut);
            if (!c.preNorm) xm = norm(c, xm, w.ln1);
            keepCap('xMlp', i, xm);
            const h2 = c.sharedNorm ? h1 : c.preNorm ? norm(c, xm, w.ln2!) : xm;
            const first = w.gate ? { up: w.gate, upBias: w.gateBias } : { up: w.up, upBias: w.upBias };
            const msel = opts.sparsity?.mlp?.(i, { xAttn: x, xMlp: xm, hMlp: h2, ...first });
            const mlp = mlpBlock(c, w, masked(site, 'mlp', h2), msel, site);
            keepCap('mlpAct', i, mlp.act);
            const mlpOut = w.lnMlpOut ? norm(c, mlp.out, w.lnMlpOut) : mlp.out;
            let out = c.block === 'parallel' ? tf.add(tf.add(x, attOut), mlpOut) : tf.add(xm, mlpOut);
            if (!c.preNorm) out = norm(c, out, w.ln2!);
            return out;
          });
          xPrev?.dispose();
          xPrev = x;
          x = next;
        } finally {
          release();
        }
      }
      xPrev?.dispose();
      xPrev = null;
      const result = tf.tidy(() => {
        let h = model.finalNorm ? norm(c, x, model.finalNorm) : x;
        if (model.projOut) h = linear(h, model.projOut); // [B, T, Dp]
        const logits = cap.logits === false ? undefined : softcapTf(headLogits(model, h, linear), c.finalSoftcap); // [B, T, V]
        return { logits, finalHidden: cap.finalHidden ? h : undefined };
      });
      x.dispose();
      const out: ForwardOutput = { captured, mask: prep.mask };
      if (result.logits) out.logits = result.logits;
      if (result.finalHidden) out.finalHidden = result.finalHidden;
      if (opts.cache) opts.cache.keyMask = prep.keyMask;
      return out;
    } finally {
      xPrev?.dispose();
      if (!x.isDisposed) x.dispose(); // error path: the residual of the failing layer
      rot?.[0].dispose(); rot?.[1].dispose();
    }
  } catch (e) {
    for (const list of Object.values(captured)) for (const t of list ?? []) t?.dispose();
    throw e;
  } finally {
    prep.idsT.dispose();
    prep.bias.dispose();
    for (const t of prep.extra.values()) t.dispose();
  }
}
