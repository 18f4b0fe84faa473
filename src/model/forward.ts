/**
 * The one forward pass. Dense collection, evaluation, oracle/predicted sparsity and the sparse runtime are all this
 * function with different options: what to capture, and which MLP neurons / attention heads to compute.
 *
 * Shapes: B batch, T new tokens, P cached tokens, S = P + T keys, d hidden, H heads, KV kv heads, hd head dim,
 * F ffn, V vocab.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from './config.js';
import type { LayerWeights, Model, Norm } from './model.js';
import { UserError } from '../util/errors.js';
import { sparseAttention, sparseDown, sparseMlp } from './kernels/host-kernels.js';
import { attentionHost } from './kernels/wasm/kernels.js';

export type CaptureKind = 'layerInput' | 'mlpInput' | 'mlpAct' | 'attnContext' | 'headNorm';

export interface CaptureOptions {
  layerInput?: boolean; // residual entering layer i (x_attn)       [B, T, d]
  mlpInput?: boolean; // residual entering the MLP block (x_mlp)      [B, T, d]
  mlpAct?: boolean; // input of the down projection                   [B, T, F]
  attnContext?: boolean; // input of the attention output projection [B, T, H*hd]
  headNorm?: boolean; // L2 norm of each head's context vector        [B, T, H]
  finalHidden?: boolean; // HF hidden_states[L]                       [B, T, Dp]
  logits?: boolean; // default true                                   [B, T, V]
  /** restrict per-layer captures to these layers (default all) */
  layers?: number[];
}

/**
 * Which MLP neurons to compute for layer i.
 * - mask: [B, T, F] of 0/1; unselected activations contribute nothing (multiplied by 0 before the down projection).
 * - indices: per batch row, the neuron ids to compute for every token of that row; only those rows/columns of the
 *   weights are gathered and multiplied (the runtime's real skip). With `act` (one token per row: the selected
 *   neurons' activations, known when the first projection itself selected them) only the down rows are read.
 * - oracleTopK: keep each token's k largest |activation| (needs the dense activation: oracle evaluation only).
 */
export type MlpSelection = { mask: tf.Tensor } | { indices: Int32Array[]; act?: Float32Array[] } | { oracleTopK: number };
/**
 * Which heads to compute: mask [B, T, H] (0/1), or per batch row the head ids (K/V are always computed for all
 * heads), or oracleTopK: each token's k heads with the largest context norm (oracle evaluation only).
 */
export type HeadSelection = { mask: tf.Tensor } | { indices: Int32Array[] } | { oracleTopK: number };

export interface SparsityHooks {
  /**
   * xAttn: residual entering the layer; xMlp: residual entering the MLP block; hMlp: the MLP block's own
   * (normalized) input (all [B, T, d]); w1/b1: the first projection [d, F] (OPT fc1, Llama up_proj)
   */
  mlp?: (layer: number, ctx: { xAttn: tf.Tensor; xMlp: tf.Tensor; hMlp: tf.Tensor; w1: tf.Tensor2D; b1?: tf.Tensor1D | undefined }) => MlpSelection | null | undefined;
  /** xAttn: this layer's input; xAttnPrev: previous layer's input (layer 0: its own) */
  heads?: (layer: number, ctx: { xAttn: tf.Tensor; xAttnPrev: tf.Tensor }) => HeadSelection | null | undefined;
}

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
  /** decoding cache; updated in place (old tensors disposed) */
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

function norm(c: ModelConfig, x: tf.Tensor, n: Norm): tf.Tensor {
  if (c.norm === 'rmsnorm') {
    const ms = tf.mean(tf.square(x), -1, true);
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(ms, c.normEps))), n.g);
  }
  const { mean, variance } = tf.moments(x, -1, true);
  const y = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, c.normEps)));
  return n.b ? tf.add(tf.mul(y, n.g), n.b) : tf.mul(y, n.g);
}

/** x [B, T, in] @ w [in, out] (+ b) as one 2-D matmul (tfjs-wasm's fast path). */
function linear(x: tf.Tensor, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor {
  const shape = x.shape;
  const inDim = shape[shape.length - 1]!;
  const y = tf.matMul(tf.reshape(x, [-1, inDim]), w);
  const yb = b ? tf.add(y, b) : y;
  return tf.reshape(yb, [...shape.slice(0, -1), w.shape[1]]);
}

/** RoPE (rotate_half convention) with per-row positions: x [B, N, T, hd], cos/sin [B, 1, T, hd]. */
function rope(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor {
  const hd = x.shape[3]!;
  const [x1, x2] = tf.split(x, [hd / 2, hd / 2], 3);
  const rot = tf.concat([tf.neg(x2!), x1!], 3);
  return tf.add(tf.mul(x, cos), tf.mul(rot, sin));
}

/** RoPE inverse frequencies 1 / theta^(2i/hd), i < hd/2 (float32, as HF computes them) */
function ropeInvFreq(c: ModelConfig): Float32Array {
  const half = c.headDim / 2;
  return Float32Array.from({ length: half }, (_, i) => 1 / Math.pow(c.ropeTheta, (2 * i) / c.headDim));
}

function ropeTables(c: ModelConfig, positions: Int32Array, B: number, T: number): [tf.Tensor, tf.Tensor] {
  const hd = c.headDim;
  const half = hd / 2;
  const cos = new Float32Array(B * T * hd);
  const sin = new Float32Array(B * T * hd);
  const invFreq = ropeInvFreq(c);
  for (let bt = 0; bt < B * T; bt++) {
    const p = positions[bt]!;
    for (let i = 0; i < half; i++) {
      const f = Math.fround(p * invFreq[i]!);
      const cv = Math.cos(f), sv = Math.sin(f);
      cos[bt * hd + i] = cv; cos[bt * hd + i + half] = cv;
      sin[bt * hd + i] = sv; sin[bt * hd + i + half] = sv;
    }
  }
  return [tf.tensor4d(cos, [B, 1, T, hd]), tf.tensor4d(sin, [B, 1, T, hd])];
}

/** [B, T, N*hd] -> [B, N, T, hd] */
function splitHeads(x: tf.Tensor, n: number, hd: number): tf.Tensor {
  const [B, T] = x.shape as [number, number];
  return tf.transpose(tf.reshape(x, [B, T, n, hd]), [0, 2, 1, 3]);
}

/** softmax(q k^T * scale + bias) v; q [B, H, T, hd], k/v [B, H, S, hd], bias [B, 1, T, S] -> [B, H, T, hd] */
function attend(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, bias: tf.Tensor, scale: number): tf.Tensor {
  const kT = tf.transpose(k, [0, 1, 3, 2]); // explicit transpose: tfjs-wasm's transposed matmul is slow
  const scores = tf.add(tf.mul(tf.matMul(q, kT), scale), bias);
  return tf.matMul(tf.softmax(scores, -1), v);
}

/** repeat each of KV heads H/KV times along axis 1 */
function repeatKV(x: tf.Tensor, H: number): tf.Tensor {
  const KV = x.shape[1]!;
  if (KV === H) return x;
  const idx = tf.tensor1d(Array.from({ length: H }, (_, h) => Math.floor(h / (H / KV))), 'int32');
  return tf.gather(x, idx, 1);
}

interface Prepared {
  B: number; T: number; P: number;
  idsT: tf.Tensor; // [B, T] int32
  mask: number[][];
  positions: Int32Array; // [B*T]
  bias: tf.Tensor; // [B, 1, T, S]
  keyMask: number[][]; // [B][S]
}

function prepare(model: Model, ids: number[][], opts: ForwardOptions): Prepared {
  const c = model.config;
  const B = ids.length;
  if (B === 0) throw new UserError('forward: empty batch');
  let mask = opts.attentionMask;
  const T = Math.max(...ids.map((r) => r.length));
  if (T === 0) throw new UserError('forward: every sequence is empty');
  if (mask) {
    if (mask.length !== B || mask.some((m, b) => m.length !== ids[b]!.length || ids[b]!.length !== T))
      throw new UserError('forward: attentionMask must have the same shape as ids, with rows of equal length');
  } else mask = ids.map((r) => Array.from({ length: T }, (_, t) => (t < r.length ? 1 : 0)));
  const cache = opts.cache;
  const past = cache?.keyMask ?? [];
  const P = past.length ? past[0]!.length : 0;
  if (cache && P && past.length !== B) throw new UserError(`forward: cache holds ${past.length} rows, batch has ${B}`);
  const flat = new Int32Array(B * T);
  const positions = new Int32Array(B * T);
  const keyMask: number[][] = [];
  for (let b = 0; b < B; b++) {
    let n = past[b]?.reduce((a, v) => a + v, 0) ?? 0;
    for (let t = 0; t < T; t++) {
      const id = ids[b]![t] ?? 0;
      if (mask[b]![t]) {
        if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) throw new UserError(`forward: token id ${id} at [${b}, ${t}] is outside the vocabulary (0..${c.vocabSize - 1})`);
        flat[b * T + t] = id;
        positions[b * T + t] = n++;
      } else {
        flat[b * T + t] = 0;
        positions[b * T + t] = Math.max(0, n - 1);
      }
    }
    keyMask.push([...(past[b] ?? []), ...mask[b]!]);
  }
  const maxPos = Math.max(...positions);
  if (c.positions === 'learned' && maxPos >= c.maxPositions)
    throw new UserError(`forward: position ${maxPos} exceeds the model's max_position_embeddings ${c.maxPositions}`, 'use a shorter --seq-len');
  const S = P + T;
  const bias = new Float32Array(B * T * S);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++)
      for (let s = 0; s < S; s++) bias[(b * T + t) * S + s] = s <= P + t && keyMask[b]![s] ? 0 : -1e9;
  return { B, T, P, idsT: tf.tensor2d(flat, [B, T], 'int32'), mask, positions, bias: tf.tensor4d(bias, [B, 1, T, S]), keyMask };
}

/**
 * 0/1 mask of each row's k largest entries along the last axis: x >= the row's k-th largest value (ties at the
 * threshold are kept; for ReLU activations a tie at 0 adds only neurons that contribute nothing). Avoids a one-hot
 * [.., k, W] tensor, which is k times larger than the mask.
 */
export function topkMask(x: tf.Tensor, k: number): tf.Tensor {
  const W = x.shape[x.shape.length - 1]!;
  if (k >= W) return tf.onesLike(x);
  const kth = tf.slice(tf.topk(x, k).values, new Array(x.rank).fill(0).map((_, i) => (i === x.rank - 1 ? k - 1 : 0)), x.shape.map((d, i) => (i === x.rank - 1 ? 1 : d)));
  return tf.cast(tf.greaterEqual(x, kth), 'float32');
}

function mlpBlock(c: ModelConfig, w: LayerWeights, h: tf.Tensor, sel: MlpSelection | null | undefined): { out: tf.Tensor; act?: tf.Tensor } {
  const actOf = (x: tf.Tensor, w1: tf.Tensor2D, b1?: tf.Tensor1D, wg?: tf.Tensor2D, bg?: tf.Tensor1D) =>
    c.activation === 'relu' ? tf.relu(linear(x, w1, b1)) : tf.mul(tf.mul(linear(x, wg!, bg), tf.sigmoid(linear(x, wg!, bg))), linear(x, w1, b1));
  if (sel && 'indices' in sel) {
    // real skip: only the selected neurons' weights are gathered and multiplied, per batch row
    const d = c.hidden;
    const rows = sel.indices.map((idx, b) => {
      const hb = tf.slice(h, [b, 0, 0], [1, -1, -1]); // [1, T, d]
      const T = hb.shape[1]!;
      if (idx.length === 0) { const z = tf.zeros([1, T, d]); return w.b2 ? tf.add(z, w.b2) : z; }
      if (w.host && T === 1 && sel.act) return tf.tensor3d(sparseDown(w.host.mlp, idx, sel.act[b]!, d), [1, 1, d]); // activations known: down rows only
      if (w.host && T === 1) return tf.tensor3d(sparseMlp(w.host.mlp, idx, (sel.indices.length === 1 ? h : hb).dataSync() as Float32Array), [1, 1, d]); // host kernel: reads only the selected rows
      const ix = tf.tensor1d(idx, 'int32');
      let a: tf.Tensor;
      if (w.w1nm && T === 1) {
        // decode fast path: contiguous rows of the neuron-major copy, [k, d] @ [d, 1] (no transposed operand)
        const hT = tf.reshape(hb, [d, 1]);
        const lin = (wnm: tf.Tensor2D, bias?: tf.Tensor1D) => { const y = tf.reshape(tf.matMul(tf.gather(wnm, ix, 0), hT), [1, 1, idx.length]); return bias ? tf.add(y, tf.gather(bias, ix)) : y; };
        const up = lin(w.w1nm, w.b1);
        a = c.activation === 'relu' ? tf.relu(up) : tf.mul(tf.mul(lin(w.wgnm!, w.bg), tf.sigmoid(lin(w.wgnm!, w.bg))), up);
      } else {
        a = actOf(hb, tf.gather(w.w1, ix, 1) as tf.Tensor2D, w.b1 && (tf.gather(w.b1, ix) as tf.Tensor1D),
          w.wg && (tf.gather(w.wg, ix, 1) as tf.Tensor2D), w.bg && (tf.gather(w.bg, ix) as tf.Tensor1D));
      }
      return linear(a, tf.gather(w.w2, ix, 0) as tf.Tensor2D, w.b2);
    });
    return { out: rows.length === 1 ? rows[0]! : tf.concat(rows, 0) };
  }
  let act = actOf(h, w.w1, w.b1, w.wg, w.bg); // [B, T, F]
  if (sel && 'mask' in sel) act = tf.mul(act, sel.mask);
  else if (sel && 'oracleTopK' in sel) {
    const k = sel.oracleTopK;
    const F = act.shape[2]!;
    if (k < F) {
      act = tf.mul(act, topkMask(tf.abs(act), k)); // [B, T, F]
    }
  }
  return { out: linear(act, w.w2, w.b2), act };
}

function attentionBlock(c: ModelConfig, w: LayerWeights, h: tf.Tensor, prep: Prepared, rot: [tf.Tensor, tf.Tensor] | null,
  cache: KVCache | undefined, i: number, sel: HeadSelection | null | undefined): { out: tf.Tensor; ctx?: tf.Tensor } {
  const { B, T } = prep;
  const H = c.heads, KV = c.kvHeads, hd = c.headDim;
  const scale = 1 / Math.sqrt(hd);
  let k = splitHeads(linear(h, w.wk, w.bk), KV, hd); // [B, KV, T, hd]
  const vNew = splitHeads(linear(h, w.wv, w.bv), KV, hd);
  if (rot) k = rope(k, rot[0], rot[1]);
  let v = vNew;
  if (cache) {
    const pk = cache.k[i], pv = cache.v[i];
    if (pk && pv) { k = tf.concat([pk, k], 2); v = tf.concat([pv, v], 2); }
    cache.k[i] = tf.keep(k); cache.v[i] = tf.keep(v);
    pk?.dispose(); pv?.dispose();
  }
  if (sel && 'indices' in sel && w.host && T === 1) {
    // host kernel: only the selected heads' Q rows, scores, context and output-projection rows are read
    const S = k.shape[2]!;
    const invFreq = rot ? ropeInvFreq(c) : null;
    const rows = sel.indices.map((idx, b) => {
      const row = (t: tf.Tensor) => (B === 1 ? t : tf.slice(t, [b, ...new Array(t.rank - 1).fill(0)], [1, ...t.shape.slice(1)])).dataSync() as Float32Array;
      const x = row(h), kb = row(k), vb = row(v);
      const pos = prep.positions[b * T]!;
      const ropeQ = invFreq ? (q: Float32Array) => {
        const half = hd / 2;
        for (let j = 0; j < half; j++) {
          const f = Math.fround(pos * invFreq[j]!);
          const cs = Math.cos(f), sn = Math.sin(f), a = q[j]!, bb = q[j + half]!;
          q[j] = a * cs - bb * sn; q[j + half] = bb * cs + a * sn;
        }
      } : null;
      return tf.tensor3d(sparseAttention(w.host!.attn, idx, x, kb, vb, S, prep.keyMask[b]!, ropeQ, c.hidden), [1, 1, c.hidden]);
    });
    return { out: rows.length === 1 ? rows[0]! : tf.concat(rows, 0) };
  }
  if (sel && 'indices' in sel) {
    // real skip: only the selected heads' Q, scores, context and output-projection rows are computed
    const wq3 = tf.reshape(w.wq, [c.hidden, H, hd]);
    const wo3 = tf.reshape(w.wo, [H, hd, c.hidden]);
    const bq2 = w.bq && tf.reshape(w.bq, [H, hd]);
    const rows = sel.indices.map((idx, b) => {
      const n = idx.length;
      const hb = tf.slice(h, [b, 0, 0], [1, -1, -1]);
      if (n === 0) { const z = tf.zeros([1, T, c.hidden]); return w.bo ? tf.add(z, w.bo) : z; }
      const ix = tf.tensor1d(idx, 'int32');
      const wq = tf.reshape(tf.gather(wq3, ix, 1), [c.hidden, n * hd]) as tf.Tensor2D;
      const bq = bq2 && (tf.reshape(tf.gather(bq2, ix, 0), [n * hd]) as tf.Tensor1D);
      let q = splitHeads(linear(hb, wq, bq), n, hd); // [1, n, T, hd]
      if (rot) q = rope(q, tf.slice(rot[0], [b, 0, 0, 0], [1, -1, -1, -1]), tf.slice(rot[1], [b, 0, 0, 0], [1, -1, -1, -1]));
      const kvIx = tf.tensor1d(Array.from(idx, (hh) => Math.floor(hh / (H / KV))), 'int32');
      const kb = tf.gather(tf.slice(k, [b, 0, 0, 0], [1, -1, -1, -1]), kvIx, 1);
      const vb = tf.gather(tf.slice(v, [b, 0, 0, 0], [1, -1, -1, -1]), kvIx, 1);
      const ctx = attend(q, kb, vb, tf.slice(prep.bias, [b, 0, 0, 0], [1, -1, -1, -1]), scale); // [1, n, T, hd]
      const flat = tf.reshape(tf.transpose(ctx, [0, 2, 1, 3]), [1, T, n * hd]);
      const wo = tf.reshape(tf.gather(wo3, ix, 0), [n * hd, c.hidden]) as tf.Tensor2D;
      return linear(flat, wo, w.bo);
    });
    return { out: rows.length === 1 ? rows[0]! : tf.concat(rows, 0) };
  }
  let q = splitHeads(linear(h, w.wq, w.bq), H, hd); // [B, H, T, hd]
  if (rot) q = rope(q, rot[0], rot[1]);
  const kr = repeatKV(k, H), vr = repeatKV(v, H);
  let o: tf.Tensor | null = null;
  if (tf.getBackend() === 'wasm' && T > 1) {
    // tfjs-wasm's batched matmul is slow on [B*H] small products: use the SIMD kernels (exact same math)
    const S = kr.shape[2]!;
    const ctx = attentionHost(q.dataSync() as Float32Array, kr.dataSync() as Float32Array, vr.dataSync() as Float32Array, B, H, T, S, hd, prep.keyMask, prep.P, scale);
    if (ctx) o = tf.tensor4d(ctx, [B, H, T, hd]);
  }
  o ??= attend(q, kr, vr, prep.bias, scale); // [B, H, T, hd]
  let ctx4 = tf.transpose(o, [0, 2, 1, 3]); // [B, T, H, hd]
  if (sel && 'mask' in sel) ctx4 = tf.mul(ctx4, tf.expandDims(sel.mask, 3));
  else if (sel && 'oracleTopK' in sel && sel.oracleTopK < H) {
    const norms = tf.sqrt(tf.sum(tf.square(ctx4), -1)); // [B, T, H]
    ctx4 = tf.mul(ctx4, tf.expandDims(topkMask(norms, sel.oracleTopK), 3));
  }
  const ctx = tf.reshape(ctx4, [B, T, H * hd]);
  return { out: linear(ctx, w.wo, w.bo), ctx };
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
    (captured[kind] ??= new Array(c.layers).fill(undefined))[i] = tf.keep(tf.clone(t));
  };
  const prep = prepare(model, ids, opts);
  try {
    let x: tf.Tensor = tf.tidy(() => {
      let e: tf.Tensor = tf.gather(model.embed, prep.idsT); // [B, T, Dp]
      if (model.projIn) e = linear(e, model.projIn); // [B, T, d]
      if (model.pos) e = tf.add(e, tf.gather(model.pos, tf.tensor2d(prep.positions.map((p) => p + c.positionOffset), [prep.B, prep.T], 'int32')));
      return e;
    });
    const rot = c.positions === 'rope' ? ropeTables(c, prep.positions, prep.B, prep.T) : null;
    let xPrev: tf.Tensor | null = null;
    try {
      for (let i = 0; i < c.layers; i++) {
        const { w, release } = model.layer(i);
        try {
          const next: tf.Tensor = tf.tidy(() => {
            keepCap('layerInput', i, x);
            const hsel = opts.sparsity?.heads?.(i, { xAttn: x, xAttnPrev: xPrev ?? x });
            const h1 = c.preNorm ? norm(c, x, w.ln1) : x;
            const att = attentionBlock(c, w, h1, prep, rot, opts.cache, i, hsel);
            keepCap('attnContext', i, att.ctx);
            if (cap.headNorm && wantLayer(i) && att.ctx)
              keepCap('headNorm', i, tf.sqrt(tf.sum(tf.square(tf.reshape(att.ctx, [prep.B, prep.T, c.heads, c.headDim])), -1)));
            let xm = tf.add(x, att.out);
            if (!c.preNorm) xm = norm(c, xm, w.ln1);
            keepCap('mlpInput', i, xm);
            const h2 = c.preNorm ? norm(c, xm, w.ln2) : xm;
            const msel = opts.sparsity?.mlp?.(i, { xAttn: x, xMlp: xm, hMlp: h2, w1: w.w1, b1: w.b1 });
            const mlp = mlpBlock(c, w, h2, msel);
            keepCap('mlpAct', i, mlp.act);
            let out = tf.add(xm, mlp.out);
            if (!c.preNorm) out = norm(c, out, w.ln2);
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
        const logits = cap.logits === false ? undefined : linear(h, model.lmHead); // [B, T, V]
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
  }
}
