/**
 * Closed-form MLP-neuron predictors: the best rank-r approximation of the MLP's first projection in the norm of the
 * data it really sees, with no training.
 *
 * h is the MLP block's normalized input ([N, d]), W the first projection ([F, d], nn.Linear layout), b its bias.
 * With mean μ and covariance Σ = E[(h-μ)(h-μ)ᵀ] = L Lᵀ, the affine rank-r predictor that minimizes
 * E‖(W h + b) - (A h + c)‖² is A = U_r U_rᵀ W, c = b + (I - U_r U_rᵀ) W μ, where W L = U S Vᵀ. So
 *   logits = fc2(fc1(h)) with fc1 = U_rᵀ W [r, d] (no bias), fc2 = U_r [F, r], fc2.bias = c.
 * The residual of neuron i has variance σ_i² = Σ_{j>r} U_ij² S_j²; dividing neuron i's logit by σ_i (folded into
 * fc2 and its bias, free at run time) turns it into a z-score of "this neuron is active", so one threshold or one
 * top-k treats well- and badly-fitted neurons alike (per-neuron thresholds t·σ_i on the raw logit).
 *
 * Linear algebra: the d×d symmetric eigendecompositions (Σ and (W L)ᵀ(W L)) go through symmetricEig (ml-matrix's
 * algorithm on flat arrays, bit-identical and 2.2x faster: src/util/symmetric-eig.ts); the [F, d] × [d, d]
 * products through tfjs matmuls (ml-matrix's JS mmul would dominate at d 2048 / F 8192). Moments are accumulated
 * per chunk as float32 matmuls on shifted rows and summed in float64.
 */
import * as tf from '@tensorflow/tfjs-core';
import { readSync } from '../util/tfx.js';
import { symmetricEig } from '../util/symmetric-eig.js';

export interface Moments { n: number; d: number; mean: Float64Array; cov: Float64Array /* [d, d], population */ }

/** A shard's (or chunk's) partial moments about a shared shift: row count, Σ (x - shift), Σ (x - shift)(x - shift)ᵀ. */
export interface MomentPartial { n: number; sum: Float64Array; prod: Float64Array }

/**
 * Streaming mean and covariance of rows [n, d]. Rows are shifted by the first chunk's mean before the products
 * (or by a given shift: data-parallel accumulation, where every part uses the same shift and the parts are summed
 * in a fixed order with addPartial).
 */
export class MomentAccumulator {
  private n = 0;
  private shift: Float32Array | null;
  private readonly sum: Float64Array;
  private readonly prod: Float64Array;
  constructor(readonly d: number, shift?: Float32Array) { this.sum = new Float64Array(d); this.prod = new Float64Array(d * d); this.shift = shift ?? null; }

  /** The shift the first add() of rows x [n, d] picks: their mean (summed in float64, rounded to float32). */
  static shiftOf(x: Float32Array, n: number, d: number): Float32Array {
    const s = new Float64Array(d);
    for (let r = 0; r < n; r++) for (let j = 0; j < d; j++) s[j]! += x[r * d + j]!;
    return Float32Array.from(s, (v) => v / n);
  }

  add(x: Float32Array, n: number): void {
    if (n === 0) return;
    const d = this.d;
    this.shift ??= MomentAccumulator.shiftOf(x, n, d);
    const shift = this.shift;
    const xs = new Float32Array(n * d);
    for (let r = 0; r < n; r++) for (let j = 0; j < d; j++) { const v = x[r * d + j]! - shift[j]!; xs[r * d + j] = v; this.sum[j]! += v; }
    const p = readSync(() => { const t = tf.tensor2d(xs, [n, d]); return tf.matMul(tf.transpose(t), t); }); // [d, d]
    for (let i = 0; i < p.length; i++) this.prod[i]! += p[i]!;
    this.n += n;
  }

  /** What this accumulator has summed (about its shift). */
  partial(): MomentPartial { return { n: this.n, sum: this.sum, prod: this.prod }; }

  /** Add another accumulator's partial sums (made with the same shift). */
  addPartial(p: MomentPartial): void {
    if (p.n === 0) return;
    for (let j = 0; j < this.d; j++) this.sum[j]! += p.sum[j]!;
    for (let i = 0; i < this.prod.length; i++) this.prod[i]! += p.prod[i]!;
    this.n += p.n;
  }

  finish(): Moments {
    const { d, n } = this;
    if (!n || !this.shift) throw new Error('MomentAccumulator: no rows');
    const ms = Float64Array.from(this.sum, (v) => v / n); // mean of shifted rows
    const cov = new Float64Array(d * d);
    for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) cov[i * d + j] = this.prod[i * d + j]! / n - ms[i]! * ms[j]!;
    return { n, d, mean: Float64Array.from(ms, (v, j) => v + this.shift![j]!), cov };
  }
}

/** One rank's predictor, as nn.Linear tensors. */
export interface LinearFit {
  r: number;
  fc1: Float32Array; // [r, d]
  fc2: Float32Array; // [F, r]
  fc2Bias: Float32Array; // [F]
  /** per-neuron residual standard deviation of the fit (data norm) */
  residualStd: Float32Array; // [F]
}

/** Symmetric eigendecomposition, eigenvalues descending; returns [values, vectors as columns of a d×d row-major array]. */
function eigh(a: Float64Array, d: number): [Float64Array, Float64Array] {
  const m = new Float64Array(d * d);
  for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) m[i * d + j] = 0.5 * (a[i * d + j]! + a[j * d + i]!);
  const { values: vals, vectorsT } = symmetricEig(m, d);
  const order = Array.from({ length: d }, (_, i) => i).sort((x, y) => vals[y]! - vals[x]!);
  const outV = new Float64Array(d * d);
  for (let c = 0; c < d; c++) { const src = order[c]! * d; for (let i = 0; i < d; i++) outV[i * d + c] = vectorsT[src + i]!; }
  return [Float64Array.from(order, (i) => vals[i]!), outV];
}

/**
 * Closed-form fits of W [F, d] (+ bias b [F]) for every rank in `ranks` (each ≤ d), from one decomposition.
 * Ranks above the numerical rank of W L are clamped (the fit is then exact in the data's span).
 */
export function closedFormFits(W: Float32Array, b: Float32Array | null, F: number, mom: Moments, ranks: number[]): LinearFit[] {
  const d = mom.d;
  // Σ = Q Λ Qᵀ, L = Q Λ^½ (robust where Σ is singular: LayerNorm outputs lie in a hyperplane)
  const [lam, Q] = eigh(mom.cov, d);
  const L = new Float32Array(d * d);
  for (let i = 0; i < d; i++) for (let c = 0; c < d; c++) L[i * d + c] = Q[i * d + c]! * Math.sqrt(Math.max(lam[c]!, 0));
  const Wt = tf.tensor2d(W, [F, d]);
  try {
    const WL = readSync(() => tf.matMul(Wt, tf.tensor2d(L, [d, d]))); // [F, d]
    const M = readSync(() => { const t = tf.tensor2d(WL, [F, d]); return tf.matMul(tf.transpose(t), t); }); // [d, d] = (WL)ᵀ WL
    const [s2, V] = eigh(Float64Array.from(M), d);
    const smax = Math.sqrt(Math.max(s2[0]!, 0));
    let p = 0;
    while (p < d && Math.sqrt(Math.max(s2[p]!, 0)) > smax * 1e-6) p++;
    // U = W L V S⁻¹ [F, p]
    const VS = new Float32Array(d * p);
    for (let i = 0; i < d; i++) for (let c = 0; c < p; c++) VS[i * p + c] = V[i * d + c]! / Math.sqrt(s2[c]!);
    const U = readSync(() => tf.matMul(tf.tensor2d(WL, [F, d]), tf.tensor2d(VS, [d, p]))); // [F, p]
    const UtW = readSync(() => tf.matMul(tf.transpose(tf.tensor2d(U, [F, p])), Wt)); // [p, d]
    // c = W μ, q = Uᵀ c
    const mu = Float32Array.from(mom.mean);
    const c = readSync(() => tf.reshape(tf.matMul(Wt, tf.tensor2d(mu, [d, 1])), [F]));
    const q = new Float64Array(p);
    for (let i = 0; i < F; i++) for (let j = 0; j < p; j++) q[j]! += U[i * p + j]! * c[i]!;
    // tail[i][r] = Σ_{j ≥ r} U_ij² s_j²: residual variance of neuron i at rank r
    return ranks.map((want) => {
      const r = Math.max(1, Math.min(want, p));
      const fc1 = UtW.slice(0, r * d);
      const fc2 = new Float32Array(F * r), bias = new Float32Array(F), std = new Float32Array(F);
      for (let i = 0; i < F; i++) {
        let proj = 0, tail = 0;
        for (let j = 0; j < p; j++) {
          const u = U[i * p + j]!;
          if (j < r) { fc2[i * r + j] = u; proj += u * q[j]!; } else tail += u * u * s2[j]!;
        }
        bias[i] = (b ? b[i]! : 0) + c[i]! - proj;
        std[i] = Math.sqrt(Math.max(tail, 0));
      }
      return { r, fc1, fc2, fc2Bias: bias, residualStd: std };
    });
  } finally {
    Wt.dispose();
  }
}

/**
 * Scale each neuron's logit by 1/σ_i (fc2 row and bias), σ_i floored at `floor` × the RMS of all σ (an exact fit
 * would otherwise divide by zero; the sign, and so the threshold-0 rule, is kept).
 */
export function normalizeByResidual(fit: LinearFit, F: number, floor = 1e-3): LinearFit {
  let ms = 0;
  for (const s of fit.residualStd) ms += s * s;
  const lo = Math.max(Math.sqrt(ms / F) * floor, 1e-12);
  const fc2 = new Float32Array(fit.fc2.length), bias = new Float32Array(F);
  for (let i = 0; i < F; i++) {
    const inv = 1 / Math.max(fit.residualStd[i]!, lo);
    for (let j = 0; j < fit.r; j++) fc2[i * fit.r + j] = fit.fc2[i * fit.r + j]! * inv;
    bias[i] = fit.fc2Bias[i]! * inv;
  }
  return { ...fit, fc2, fc2Bias: bias };
}
