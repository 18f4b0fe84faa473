/**
 * The families' traits, written once: the MLP activation (tfjs and host), RoPE frequencies with every supported
 * scaling and partial rotary, ALiBi slopes, sliding-window visibility, softcapping. The forward pass
 * (src/model/forward.ts), the decode runtime (src/runtime/decoder.ts), the predictors and the bundle call these;
 * none of them branches on a family.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from './types.js';

const SQRT_2_PI = Math.sqrt(2 / Math.PI);

const horner = (cs: number[], x: number) => cs.reduce((a, c) => a * x + c, 0);
const ERF_A = [[1.857777061846031526730e-1, 3.161123743870565596947, 1.138641541510501556495e2, 3.774852376853020208137e2, 3.209377589138469472562e3],
  [1, 2.360129095234412093499e1, 2.440246379344441733056e2, 1.282616526077372275645e3, 2.844236833439170622273e3]];
const ERF_B = [[2.15311535474403846343e-8, 5.64188496988670089180e-1, 8.88314979438837594118, 6.61191906371416294775e1, 2.98635138197400131132e2, 8.81952221241769090411e2,
  1.71204761263407058314e3, 2.05107837782607146532e3, 1.23033935479799725272e3], [1, 1.57449261107098347253e1, 1.17693950891312499305e2, 5.37181101862009857509e2,
  1.62138957456669018874e3, 3.29079923573345962678e3, 4.36261909014324715820e3, 3.43936767414372163696e3, 1.23033935480374942043e3]];
const ERF_C = [[1.63153871373020978498e-2, 3.05326634961232344035e-1, 3.60344899949804439429e-1, 1.25781726111229246204e-1, 1.60837851487422766278e-2, 6.58749161529837803157e-4],
  [1, 2.56852019228982242072, 1.87295284992346725209, 5.27905102951428412248e-1, 6.05183413124413191178e-2, 2.33520497626869185443e-3]];

/** erf in float64 (W. J. Cody's rational approximations), for the host GELU */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 0.5) { const t = x * x; return (x * horner(ERF_A[0]!, t)) / horner(ERF_A[1]!, t); }
  let r: number;
  if (ax < 4) r = Math.exp(-ax * ax) * (horner(ERF_B[0]!, ax) / horner(ERF_B[1]!, ax));
  else { const z = 1 / (ax * ax); r = (Math.exp(-ax * ax) / ax) * (1 / Math.sqrt(Math.PI) - (z * horner(ERF_C[0]!, z)) / horner(ERF_C[1]!, z)); }
  return x < 0 ? r - 1 : 1 - r;
}

/** the activation as a scalar function (host) */
export function actScalar(c: Pick<ModelConfig, 'act' | 'actThreshold'>): (x: number) => number {
  switch (c.act) {
    case 'relu': return (x) => (x > 0 ? x : 0);
    case 'fatrelu': { const t = c.actThreshold; return (x) => (x > t ? x : 0); }
    case 'silu': return (x) => x / (1 + Math.exp(-x));
    case 'gelu': return (x) => 0.5 * x * (1 + erf(x / Math.SQRT2));
    case 'gelu_tanh': return (x) => 0.5 * x * (1 + Math.tanh(SQRT_2_PI * (x + 0.044715 * x * x * x)));
  }
}

/** the activation of a tensor (tfjs) */
export function actTf(c: Pick<ModelConfig, 'act' | 'actThreshold'>, x: tf.Tensor): tf.Tensor {
  switch (c.act) {
    case 'relu': return tf.relu(x);
    case 'fatrelu': return tf.where(tf.greater(x, c.actThreshold), x, tf.zerosLike(x));
    case 'silu': return tf.mul(x, tf.sigmoid(x));
    case 'gelu': return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2))));
    case 'gelu_tanh': return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.tanh(tf.mul(tf.add(x, tf.mul(tf.mul(tf.mul(x, x), x), 0.044715)), SQRT_2_PI))));
  }
}

/**
 * The MLP's activations from its first projection(s): act(up) or, gated, act(gate) * up (tfjs). `gate`, `up` are
 * the projections' outputs, each computed once.
 */
export function mlpActTf(c: ModelConfig, up: tf.Tensor, gate: tf.Tensor | null): tf.Tensor {
  return c.gated ? tf.mul(actTf(c, gate!), up) : actTf(c, up);
}

/** The neuron's magnitude score a predictor's gated labels use: |act(g) * u| (host), shared by the fit and the plan. */
export function gatedScoreHost(f: (x: number) => number, g: Float32Array, u: Float32Array, out: Float32Array, n = out.length): void {
  for (let j = 0; j < n; j++) out[j] = Math.abs(f(g[j]!) * u[j]!);
}

/**
 * RoPE inverse frequencies (float32, as transformers computes them) of the rotated dims, for a sequence whose
 * longest position is `seqLen - 1` (only dynamic NTK scaling depends on it).
 */
export function ropeInvFreq(c: Pick<ModelConfig, 'ropeTheta' | 'ropeDim' | 'ropeScaling'>, seqLen = 0): Float32Array {
  const dim = c.ropeDim, half = dim / 2, s = c.ropeScaling;
  let theta = c.ropeTheta;
  if (s?.type === 'dynamic' && seqLen > s.originalMax!) theta = theta * Math.pow((s.factor * seqLen) / s.originalMax! - (s.factor - 1), dim / (dim - 2));
  const inv = Float32Array.from({ length: half }, (_, i) => 1 / Math.pow(theta, Math.fround((2 * i) / dim)));
  if (!s || s.type === 'default' || s.type === 'dynamic') return inv;
  if (s.type === 'linear') return inv.map((f) => f / s.factor);
  if (s.type === 'llama3') {
    const lowW = s.originalMax! / s.lowFreqFactor!, highW = s.originalMax! / s.highFreqFactor!;
    return inv.map((f) => {
      const wl = (2 * Math.PI) / f;
      if (wl < highW) return f;
      if (wl > lowW) return f / s.factor;
      const sm = (s.originalMax! / wl - s.lowFreqFactor!) / (s.highFreqFactor! - s.lowFreqFactor!);
      return (1 - sm) * (f / s.factor) + sm * f;
    });
  }
  // yarn: interpolated frequencies below the correction range, extrapolated above, a linear ramp between
  const corr = (rot: number) => (dim * Math.log(s.originalMax! / (rot * 2 * Math.PI))) / (2 * Math.log(theta));
  let low = corr(s.betaFast!), high = corr(s.betaSlow!);
  if (s.truncate) { low = Math.floor(low); high = Math.ceil(high); }
  low = Math.max(low, 0); high = Math.min(high, dim - 1);
  if (low === high) high += 0.001;
  return inv.map((f, i) => {
    const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
    const extrap = 1 - ramp;
    return (f / s.factor) * (1 - extrap) + f * extrap;
  });
}

/** cos / sin [ropeDim / 2] at one position (the attention factor folded in), into `cos`, `sin` */
export function ropeAngles(c: Pick<ModelConfig, 'ropeScaling'>, inv: Float32Array, pos: number, cos: Float32Array, sin: Float32Array, o = 0): void {
  const af = c.ropeScaling?.attentionFactor ?? 1;
  for (let j = 0; j < inv.length; j++) { const f = Math.fround(pos * inv[j]!); cos[o + j] = Math.cos(f) * af; sin[o + j] = Math.sin(f) * af; }
}

/** RoPE (rotate_half over the first `dim` of each of the `n` heads of hd; the rest pass through) in place (host) */
export function ropeHost(x: Float32Array, n: number, hd: number, dim: number, cos: Float32Array, sin: Float32Array): void {
  const half = dim / 2;
  for (let h = 0; h < n; h++) {
    const o = h * hd;
    for (let j = 0; j < half; j++) {
      const a = x[o + j]!, b = x[o + j + half]!;
      x[o + j] = a * cos[j]! - b * sin[j]!;
      x[o + j + half] = b * cos[j]! + a * sin[j]!;
    }
  }
}

/** ALiBi slopes per head (BLOOM's build_alibi_tensor, float32) */
export function alibiSlopes(H: number): Float32Array {
  const p2 = 2 ** Math.floor(Math.log2(H));
  const b = Math.fround(2 ** -(2 ** -(Math.log2(p2) - 3)));
  const out = Array.from({ length: p2 }, (_, i) => Math.fround(b ** (i + 1)));
  if (p2 !== H) {
    const eb = Math.fround(2 ** -(2 ** -(Math.log2(2 * p2) - 3)));
    for (let i = 0; i < Math.min(p2, H - p2); i++) out.push(Math.fround(eb ** (2 * i + 1)));
  }
  return Float32Array.from(out);
}

/** the first key index a query at absolute index q sees in layer i (sliding windows: q - k < w) */
export function firstVisible(c: Pick<ModelConfig, 'windows'>, i: number, q: number): number {
  const w = c.windows[i];
  return w ? Math.max(0, q - w + 1) : 0;
}

/** tanh softcapping cap · tanh(x / cap) (tfjs) */
export function softcapTf(x: tf.Tensor, cap: number | null): tf.Tensor {
  return cap ? tf.mul(tf.tanh(tf.div(x, cap)), cap) : x;
}

/** host softcapping in place */
export function softcapHost(x: Float32Array, cap: number | null, n = x.length): void {
  if (cap) for (let j = 0; j < n; j++) x[j] = cap * Math.tanh(x[j]! / cap);
}

/** Forward FLOPs per token (matmuls only, 2 per multiply-add), excluding attention over the context. */
export function denseLayerFlopsPerToken(c: ModelConfig): { attn: number; mlp: number } {
  const qo = 2 * c.hidden * c.heads * c.headDim * 2;
  const kv = 2 * c.hidden * c.kvHeads * c.headDim * 2;
  const mlp = 2 * c.hidden * c.ffn * (c.gated ? 3 : 2);
  return { attn: qo + kv, mlp };
}
