import * as tf from '@tensorflow/tfjs-core';

/**
 * Run synchronous tensor work and read its result to the host, disposing everything.
 * Never `return t.dataSync()` from inside tf.tidy: tidy walks its return value looking for tensors, and walking a
 * large typed array element by element costs ~20x the matmul that produced it (measured: 223 ms vs 6 ms).
 */
/** readSync's asynchronous twin: the one read that works on every backend (tfjs-webgpu cannot read synchronously under Node). */
export async function readAsync(fn: () => tf.Tensor): Promise<Float32Array> {
  const t = tf.tidy(fn);
  try {
    return (await t.data()) as Float32Array;
  } finally {
    t.dispose();
  }
}

export function readSync(fn: () => tf.Tensor): Float32Array {
  const t = tf.tidy(fn);
  try {
    return t.dataSync() as Float32Array;
  } finally {
    t.dispose();
  }
}
