/**
 * What a layer's MLP block sees and computes, on the host, for fitting and scoring predictors: its norm (applied to
 * the residual x_mlp gives h, the MLP's own input), its first projection(s) and the norms of the down projection's
 * columns (a neuron's weight in the magnitude-weighted recall). Read straight from the checkpoint, one layer at a
 * time, in nn.Linear layout ([out, in]).
 */
import * as tf from '@tensorflow/tfjs-core';
import { openCheckpoint, type Checkpoint } from '../checkpoint/checkpoint.js';
import type { Act, ModelConfig } from '../model/config.js';
import { readLayerTensors } from '../model/model.js';
import { normRows } from '../model/host-norm.js';
import { actScalar, gatedScoreHost } from '../arch/traits.js';
import { transpose2d } from '../util/transpose.js';
import { readSync } from '../util/tfx.js';

export interface MlpSite {
  layer: number;
  d: number;
  F: number;
  activation: ModelConfig['activation'];
  /** the activation function (and fatrelu's threshold); gated: down(act(gate) * up) */
  act: Act; actThreshold: number; gated: boolean;
  /** x_mlp -> h: null for post-LN models, whose x_mlp is already normalized */
  norm: { kind: ModelConfig['norm']; eps: number; g: Float32Array; b?: Float32Array } | null;
  /** [F, d] the projection whose sign decides the activation: the ungated MLP's first one, a gated ReLU's gate, a gated smooth MLP's up */
  up: Float32Array;
  upBias?: Float32Array;
  /** [F, d] the gated smooth MLP's gate (scores |act(gate) · up|) */
  gate?: Float32Array;
  gateBias?: Float32Array;
  /** ‖W_down[:, i]‖ per neuron [F] */
  downColNorm: Float32Array;
}

export function readMlpSite(ck: Checkpoint | string, c: ModelConfig, layer: number): MlpSite {
  const cp = typeof ck === 'string' ? openCheckpoint(ck) : ck;
  const t = readLayerTensors(cp, c, layer); // [in, out]
  const d = c.hidden, F = c.ffn;
  const rows = (n: string) => (t[n] ? transpose2d(t[n]!.data, d, F) : undefined); // [d, F] -> [F, d]
  const down = t.down!.data; // [F, d]
  const downColNorm = new Float32Array(F);
  for (let i = 0; i < F; i++) { let s = 0; for (let o = 0; o < d; o++) s += down[i * d + o]! ** 2; downColNorm[i] = Math.sqrt(s); }
  // a gated ReLU (ReluLLaMA, ProSparse) is active where its gate is: the gate is its first projection
  const reluGated = c.gated && c.activation === 'relu';
  const n = c.sharedNorm ? 'ln1' : 'ln2';
  const site: MlpSite = {
    layer, d, F, activation: c.activation, act: c.act, actThreshold: c.actThreshold, gated: c.gated,
    norm: c.preNorm ? { kind: c.norm, eps: c.normEps, g: t[`${n}.g`]!.data, ...(t[`${n}.b`] ? { b: t[`${n}.b`]!.data } : {}) } : null,
    up: rows(reluGated ? 'gate' : 'up')!, downColNorm,
  };
  const ub = t[reluGated ? 'gateBias' : 'upBias']?.data, g = c.gated && !reluGated ? rows('gate') : undefined, gb = c.gated && !reluGated ? t.gateBias?.data : undefined;
  if (ub) site.upBias = ub;
  if (g) site.gate = g;
  if (gb) site.gateBias = gb;
  return site;
}

/** h = the MLP block's input for residual rows x [n, d] (the forward pass's norm, in float64 on the host). */
export function mlpInput(site: MlpSite, x: Float32Array, n: number): Float32Array {
  if (!site.norm) return x;
  const { kind, eps, g, b } = site.norm;
  return normRows(kind, eps, g, b, x, n, site.d);
}

/** Exact pre-activations z = h W1ᵀ + b1 (or the gate's), [n, F], for labels, magnitudes and the exact bound. */
export function exactPreActivations(site: MlpSite, h: Float32Array, n: number, which: 'up' | 'gate' = 'up'): Float32Array {
  const W = which === 'up' ? site.up : site.gate!, bias = which === 'up' ? site.upBias : site.gateBias;
  const { d, F } = site;
  return readSync(() => {
    const z = tf.matMul(tf.tensor2d(h, [n, d]), tf.transpose(tf.tensor2d(W, [F, d]))); // [n, F]
    return bias ? tf.add(z, tf.tensor1d(bias)) : z;
  });
}

/**
 * The exact scores of rows h [n, d]: `z` the first projection's pre-activations (ReLU: the exact mode's scores),
 * `exact` the neuron's true output magnitude (ReLU: z; SwiGLU: |silu(gate)·up|), and `weights` each neuron's
 * |activation| × ‖W_down[:, i]‖ (the magnitude-weighted recall). Fitting and evaluation share this.
 */
export function exactScores(site: MlpSite, h: Float32Array, n: number): { z: Float32Array; exact: Float32Array; weights: Float32Array } {
  const z = exactPreActivations(site, h, n, 'up');
  let exact = z;
  if (site.activation === 'swiglu') {
    exact = new Float32Array(z.length);
    gatedScoreHost(actScalar(site), exactPreActivations(site, h, n, 'gate'), z, exact);
  } else if (site.activation === 'gelu') {
    const f = actScalar(site);
    exact = z.map((v) => Math.abs(f(v)));
  }
  // plain loops: Float32Array.from with a map function runs ~20x slower (measured: 125 ms vs 6 ms per 1M values)
  const weights = new Float32Array(exact.length), cn = site.downColNorm, F = site.F;
  for (let k = 0; k < exact.length; k += F) for (let i = 0; i < F; i++) weights[k + i] = Math.max(exact[k + i]!, 0) * cn[i]!;
  return { z, exact, weights };
}
