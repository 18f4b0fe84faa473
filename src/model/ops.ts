/**
 * The forward pass's pure tensor functions (shapes in the comments): norms, linear layers, RoPE, attention, the
 * batch preparation (positions, padding bias). src/model/forward.ts composes them into the one loop over layers.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from './config.js';
import type { Model, Norm } from './model.js';
import { UserError } from '../util/errors.js';
import { attentionHost } from './kernels/wasm/kernels.js';
import { alibiSlopes, firstVisible, ropeAngles, ropeInvFreq, softcapTf } from '../arch/traits.js';

export function norm(c: ModelConfig, x: tf.Tensor, n: Norm): tf.Tensor {
  if (c.norm === 'rmsnorm') {
    const ms = tf.mean(tf.square(x), -1, true);
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(ms, c.normEps))), n.g);
  }
  const { mean, variance } = tf.moments(x, -1, true);
  const y = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, c.normEps)));
  return n.b ? tf.add(tf.mul(y, n.g), n.b) : tf.mul(y, n.g);
}

/** x [B, T, in] @ w [in, out] (+ b) as one 2-D matmul (tfjs-wasm's fast path). */
export function linear(x: tf.Tensor, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor {
  const shape = x.shape;
  const inDim = shape[shape.length - 1]!;
  const y = tf.matMul(tf.reshape(x, [-1, inDim]), w);
  const yb = b ? tf.add(y, b) : y;
  return tf.reshape(yb, [...shape.slice(0, -1), w.shape[1]]);
}

/**
 * RoPE (rotate_half convention) with per-row positions: x [B, N, T, hd], cos/sin [B, 1, T, rd] over the first rd
 * dims of each head (partial rotary: the other hd - rd pass through).
 */
export function rope(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor {
  const hd = x.shape[3]!, rd = cos.shape[3]!;
  const [xr, xp] = rd === hd ? [x, null] : tf.split(x, [rd, hd - rd], 3);
  const [x1, x2] = tf.split(xr!, [rd / 2, rd / 2], 3);
  const rot = tf.concat([tf.neg(x2!), x1!], 3);
  const y = tf.add(tf.mul(xr!, cos), tf.mul(rot, sin));
  return xp ? tf.concat([y, xp], 3) : y;
}

/** cos / sin tables [B, 1, T, rd] of the batch's positions (scaled RoPE, attention factor folded in) */
export function ropeTables(c: ModelConfig, positions: Int32Array, B: number, T: number): [tf.Tensor, tf.Tensor] {
  const rd = c.ropeDim, half = rd / 2;
  const cos = new Float32Array(B * T * rd);
  const sin = new Float32Array(B * T * rd);
  let mx = 0;
  for (const p of positions) if (p > mx) mx = p;
  const invFreq = ropeInvFreq(c, mx + 1);
  const ch = new Float32Array(half), sh = new Float32Array(half);
  for (let bt = 0; bt < B * T; bt++) {
    ropeAngles(c, invFreq, positions[bt]!, ch, sh);
    cos.set(ch, bt * rd); cos.set(ch, bt * rd + half);
    sin.set(sh, bt * rd); sin.set(sh, bt * rd + half);
  }
  return [tf.tensor4d(cos, [B, 1, T, rd]), tf.tensor4d(sin, [B, 1, T, rd])];
}

/** [B, T, N*hd] -> [B, N, T, hd] */
export function splitHeads(x: tf.Tensor, n: number, hd: number): tf.Tensor {
  const [B, T] = x.shape as [number, number];
  return tf.transpose(tf.reshape(x, [B, T, n, hd]), [0, 2, 1, 3]);
}

/**
 * softmax(softcap(q k^T * scale) + bias) v; q [B, H, T, hd], k/v [B, H, S, hd], bias [B, 1 | H, T, S] -> [B, H, T, hd]
 */
export function attend(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, bias: tf.Tensor, scale: number, softcap: number | null = null): tf.Tensor {
  const kT = tf.transpose(k, [0, 1, 3, 2]); // explicit transpose: tfjs-wasm's transposed matmul is slow
  const scores = tf.add(softcapTf(tf.mul(tf.matMul(q, kT), scale), softcap), bias);
  return tf.matMul(tf.softmax(scores, -1), v);
}

/** repeat each of KV heads H/KV times along axis 1 */
export function repeatKV(x: tf.Tensor, H: number): tf.Tensor {
  const KV = x.shape[1]!;
  if (KV === H) return x;
  const idx = tf.tensor1d(Array.from({ length: H }, (_, h) => Math.floor(h / (H / KV))), 'int32');
  return tf.gather(x, idx, 1);
}

export interface Prepared {
  B: number; T: number; P: number;
  idsT: tf.Tensor; // [B, T] int32
  mask: number[][];
  positions: Int32Array; // [B*T]
  bias: tf.Tensor; // [B, 1, T, S]
  keyMask: number[][]; // [B][S]
  /** per-layer biases other than `bias` (sliding windows, ALiBi), made on first use; disposed with the batch */
  extra: Map<string, tf.Tensor>;
}

/**
 * The attention bias of layer i: the causal / padding mask, restricted to the layer's sliding window, plus ALiBi
 * (slope_h x the key's position among the row's real tokens, as BLOOM counts it). [B, 1 | H, T, S]
 */
export function layerBias(c: ModelConfig, prep: Prepared, i: number): tf.Tensor {
  const w = c.windows[i] ?? null, alibi = c.positions === 'alibi';
  if (!w && !alibi) return prep.bias;
  const key = `${w ?? 0}`;
  let t = prep.extra.get(key);
  if (t) return t;
  const { B, T, P } = prep, S = P + T, H = alibi ? c.heads : 1;
  const slopes = alibi ? alibiSlopes(c.heads) : null;
  const out = new Float32Array(B * H * T * S);
  for (let b = 0; b < B; b++) {
    const km = prep.keyMask[b]!;
    const kp = new Float32Array(S);
    for (let s = 0, n = 0; s < S; s++) if (km[s]) kp[s] = n++;
    for (let t = 0; t < T; t++) {
      const lo = firstVisible(c, i, P + t);
      for (let s = 0; s < S; s++) {
        const ok = s <= P + t && s >= lo && km[s];
        for (let h = 0; h < H; h++) out[((b * H + h) * T + t) * S + s] = ok ? (slopes ? slopes[h]! * kp[s]! : 0) : -1e9;
      }
    }
  }
  t = tf.keep(tf.tensor4d(out, [B, H, T, S])); // outlives the layer's tidy: disposed with the batch
  prep.extra.set(key, t);
  return t;
}

export function prepare(model: Model, ids: number[][], opts: { attentionMask?: number[][] | undefined; cache?: { keyMask: number[][] } | undefined }): Prepared {
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
  return { B, T, P, idsT: tf.tensor2d(flat, [B, T], 'int32'), mask, positions, bias: tf.tensor4d(bias, [B, 1, T, S]), keyMask, extra: new Map() };
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

/** softmax(q k^T * scale + bias) v for all heads: [B, H, T, hd] -> [B, H, T, hd] */
export type AttendKernel = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, prep: Prepared, scale: number) => tf.Tensor;

/** tfjs ops (any backend) */
export const attendTfjs: AttendKernel = (q, k, v, prep, scale) => attend(q, k, v, prep.bias, scale);

/**
 * The SIMD kernels (exact same math): tfjs-wasm's batched matmul runs ~1 GFLOP/s on [B*H] small products. Single
 * tokens and calls the arena cannot hold fall back to tfjs.
 */
export const attendHostSimd: AttendKernel = (q, k, v, prep, scale) => {
  const [B, H, T, hd] = q.shape as [number, number, number, number];
  const ctx = T > 1 ? attentionHost(q.dataSync() as Float32Array, k.dataSync() as Float32Array, v.dataSync() as Float32Array, B, H, T, k.shape[2]!, hd, prep.keyMask, prep.P, scale) : null;
  return ctx ? tf.tensor4d(ctx, [B, H, T, hd]) : attend(q, k, v, prep.bias, scale);
};
