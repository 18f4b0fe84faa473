/**
 * Low-rank sparsity predictors (Deja Vu): logits = act(x W1 + b1) W2 + b2, x [N, d] -> [N, out].
 * Weights are held as [in, out] tensors for tfjs's fast path and stored in safetensors as nn.Linear ([out, in]).
 * Training uses hand-written gradients whose matmuls never take a transposed operand (tfjs-wasm's transposed
 * matmul runs ~10x slower): transposes are explicit, then plain matMul.
 */
import * as tf from '@tensorflow/tfjs-core';
import { actTf } from '../arch/traits.js';
import type { Act } from '../arch/types.js';
import { readSync } from '../util/tfx.js';

export interface PredictorWeights {
  w1: tf.Tensor2D; // [d, r]
  b1: tf.Tensor1D; // [r]
  w2: tf.Tensor2D; // [r, out]
  b2: tf.Tensor1D; // [out]
  hiddenActivation: 'none' | 'relu';
}

/** Deterministic init (uniform Kaiming-like, as nn.Linear), from a seeded PRNG. */
export function initPredictor(d: number, r: number, out: number, hiddenActivation: 'none' | 'relu', seed: number): PredictorWeights {
  let s = (seed * 2654435761) >>> 0 || 1;
  const rnd = () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s / 4294967296; };
  const u = (n: number, bound: number) => Float32Array.from({ length: n }, () => (rnd() * 2 - 1) * bound);
  return {
    w1: tf.tensor2d(u(d * r, 1 / Math.sqrt(d)), [d, r]),
    b1: tf.tensor1d(u(r, 1 / Math.sqrt(d))),
    w2: tf.tensor2d(u(r * out, 1 / Math.sqrt(r)), [r, out]),
    b2: tf.tensor1d(u(out, 1 / Math.sqrt(r))),
    hiddenActivation,
  };
}

export function predictLogits(p: PredictorWeights, x: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => {
    let h = tf.add(tf.matMul(x, p.w1), p.b1) as tf.Tensor2D;
    if (p.hiddenActivation === 'relu') h = tf.relu(h);
    return tf.add(tf.matMul(h, p.w2), p.b2) as tf.Tensor2D;
  });
}

export function predictorFlops(d: number, r: number, out: number): number {
  return 2 * (d * r + r * out);
}

export function disposePredictor(p: PredictorWeights): void {
  p.w1.dispose(); p.b1.dispose(); p.w2.dispose(); p.b2.dispose();
}

export interface AdamState { m: tf.Tensor[]; v: tf.Tensor[]; t: number }

export function newAdam(p: PredictorWeights): AdamState {
  const ps = [p.w1, p.b1, p.w2, p.b2];
  return { m: ps.map((t) => tf.zerosLike(t)), v: ps.map((t) => tf.zerosLike(t)), t: 0 };
}

export function disposeAdam(a: AdamState): void { for (const t of [...a.m, ...a.v]) t.dispose(); }

/**
 * One AdamW step on weighted BCE: loss = sum(w * bce(z, y)) / sum(w), with w = 1 for positives, negWeight for
 * negatives (Deja Vu down-weights negatives to the positive rate). Returns the loss. Updates p and state in place.
 */
export function trainStep(p: PredictorWeights, st: AdamState, x: tf.Tensor2D, y: tf.Tensor2D,
  opt: { lr: number; weightDecay: number; negWeight: number; wantLoss?: boolean; positives?: number }): number {
  const [nw1, nb1, nw2, nb2, m, v, loss] = tf.tidy(() => {
    const pre = tf.add(tf.matMul(x, p.w1), p.b1); // [N, r]
    const h = p.hiddenActivation === 'relu' ? tf.relu(pre) : pre;
    const z = tf.add(tf.matMul(h, p.w2), p.b2); // [N, out]
    const w = tf.add(tf.mul(y, 1 - opt.negWeight), opt.negWeight); // [N, out]
    // sum of weights: from the host-side positive count when given (saves a reduction)
    const total = y.shape[0] * y.shape[1];
    const wsum: number | tf.Tensor = opt.positives !== undefined ? opt.positives + (total - opt.positives) * opt.negWeight : tf.sum(w);
    let lossT: tf.Tensor | null = null;
    if (opt.wantLoss !== false) {
      // bce(z, y) = max(z, 0) - z*y + log(1 + exp(-|z|))
      const bce = tf.add(tf.sub(tf.relu(z), tf.mul(z, y)), tf.log1p(tf.exp(tf.neg(tf.abs(z)))));
      lossT = tf.div(tf.sum(tf.mul(w, bce)), wsum);
    }
    const dz = tf.div(tf.mul(w, tf.sub(tf.sigmoid(z), y)), wsum); // [N, out]
    const dW2 = tf.matMul(tf.transpose(h), dz); // [r, out]
    const db2 = tf.sum(dz, 0);
    let dh = tf.matMul(dz, tf.transpose(p.w2)); // [N, r]
    if (p.hiddenActivation === 'relu') dh = tf.mul(dh, tf.step(pre));
    const dW1 = tf.matMul(tf.transpose(x), dh); // [d, r]
    const db1 = tf.sum(dh, 0);
    const grads = [dW1, db1, dW2, db2];
    const params = [p.w1, p.b1, p.w2, p.b2];
    const t = st.t + 1;
    const b1 = 0.9, b2 = 0.999, eps = 1e-8;
    const ms = grads.map((g, i) => tf.add(tf.mul(st.m[i]!, b1), tf.mul(g, 1 - b1)));
    const vs = grads.map((g, i) => tf.add(tf.mul(st.v[i]!, b2), tf.mul(tf.square(g), 1 - b2)));
    const lrT = opt.lr * Math.sqrt(1 - b2 ** t) / (1 - b1 ** t);
    const news = params.map((q, i) => {
      const decayed = i % 2 === 0 && opt.weightDecay > 0 ? tf.mul(q, 1 - opt.lr * opt.weightDecay) : q;
      return tf.sub(decayed, tf.mul(tf.div(ms[i]!, tf.add(tf.sqrt(vs[i]!), eps)), lrT));
    });
    return [...news, ms, vs, lossT ?? tf.scalar(NaN)] as const;
  }) as unknown as [tf.Tensor2D, tf.Tensor1D, tf.Tensor2D, tf.Tensor1D, tf.Tensor[], tf.Tensor[], tf.Tensor];
  disposePredictor(p);
  p.w1 = nw1; p.b1 = nb1; p.w2 = nw2; p.b2 = nb2;
  for (const t of [...st.m, ...st.v]) t.dispose();
  st.m = m; st.v = v; st.t++;
  const l = opt.wantLoss === false ? NaN : loss.dataSync()[0]!;
  loss.dispose();
  return l;
}

/** Host copy of a predictor, as nn.Linear tensors ([out, in]). */
export interface HostPredictor { fc1Weight: Float32Array; fc1Bias: Float32Array; fc2Weight: Float32Array; fc2Bias: Float32Array; d: number; r: number; out: number; hiddenActivation: 'none' | 'relu' }

export function toHost(p: PredictorWeights): HostPredictor {
  const [d, r] = p.w1.shape;
  const out = p.w2.shape[1];
  return {
    fc1Weight: readSync(() => tf.transpose(p.w1)),
    fc1Bias: Float32Array.from(p.b1.dataSync()),
    fc2Weight: readSync(() => tf.transpose(p.w2)),
    fc2Bias: Float32Array.from(p.b2.dataSync()),
    d, r, out, hiddenActivation: p.hiddenActivation,
  };
}

export function fromHost(h: HostPredictor): PredictorWeights {
  return tf.tidy(() => ({
    w1: tf.transpose(tf.tensor2d(h.fc1Weight, [h.r, h.d])) as tf.Tensor2D,
    b1: tf.tensor1d(h.fc1Bias),
    w2: tf.transpose(tf.tensor2d(h.fc2Weight, [h.out, h.r])) as tf.Tensor2D,
    b2: tf.tensor1d(h.fc2Bias),
    hiddenActivation: h.hiddenActivation,
  }));
}

/** The activation a gated MLP applies to its gate (the model's; silu when a caller has none to give). */
export interface GateAct { act: Act; actThreshold: number }
export const SILU: GateAct = { act: 'silu', actThreshold: 0 };

/**
 * A gated MLP's neuron score from two low-rank predictors, of gate and up: |act(ĝ) · û| (the magnitude the
 * neuron would pass to the down projection).
 */
export function swigluScore(gate: PredictorWeights, up: PredictorWeights, x: tf.Tensor2D, act: GateAct = SILU): tf.Tensor2D {
  return tf.tidy(() => {
    const g = predictLogits(gate, x), u = predictLogits(up, x);
    return tf.abs(tf.mul(actTf(act, g), u)) as tf.Tensor2D;
  });
}
