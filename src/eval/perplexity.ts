/** Perplexity through the one forward pass (dense, or with sparsity hooks). */
import * as tf from '@tensorflow/tfjs-core';
import { forward, disposeOutput, type SparsityHooks } from '../model/forward.js';
import type { Model } from '../model/model.js';
import { readAsync } from '../util/tfx.js';

export interface NllTotals { nll: number; count: number }

/** Sum of next-token NLL over full sequences (no padding); read back asynchronously (every backend, GPUs included). */
export async function batchNll(model: Model, seqs: number[][], sparsity?: SparsityHooks): Promise<NllTotals> {
  const out = forward(model, seqs, { capture: { logits: true }, ...(sparsity ? { sparsity } : {}) });
  try {
    const V = model.config.vocabSize;
    const B = seqs.length, T = seqs[0]!.length;
    const idx: number[] = [];
    for (let b = 0; b < B; b++) for (let t = 0; t < T - 1; t++) idx.push((b * T + t) * V + seqs[b]![t + 1]!);
    const nll = -(await readAsync(() => tf.sum(tf.gather(tf.reshape(tf.logSoftmax(out.logits!, -1), [-1]), tf.tensor1d(idx, 'int32')))))[0]!;
    return { nll, count: idx.length };
  } finally {
    disposeOutput(out);
  }
}

export function ppl(t: NllTotals): number { return Math.exp(t.nll / Math.max(1, t.count)); }
