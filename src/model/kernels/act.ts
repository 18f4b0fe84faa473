/**
 * The decode runtime's activation over vectors, chosen once when a model's decode weights are built: the native SiLU
 * (src/model/kernels/native/rows.c: float32 e^x, 8 lanes; 0.11 ms against Math.exp's 1.5-2.3 ms for a
 * TinyLlama-width step's 45,056 values) where the native kernels run the rows and the activation is SiLU, else the
 * scalar activation of src/arch/traits.ts in a loop. Every use in one decode session goes through the same kernel,
 * value by value, so the modes that skip neurons keep the dense mode's bits (lossless = dense).
 */
import type { ModelConfig } from '../config.js';
import { actScalar } from '../../arch/traits.js';
import type { NativeRowsModule } from './native/native.js';

export interface ActKernel {
  readonly kind: 'native-silu' | 'js';
  /** out[0, n) = act(x[0, n)); out may be x */
  act(x: Float32Array, n: number, out: Float32Array): void;
  /** out[0, n) = act(g[0, n)) * a[0, n) (the gated MLP's activations); out may be g or a */
  actMul(g: Float32Array, a: Float32Array, n: number, out: Float32Array): void;
}

export function actKernel(c: Pick<ModelConfig, 'act' | 'actThreshold'>, native: NativeRowsModule | null): ActKernel {
  if (native && c.act === 'silu' && typeof native.silu === 'function') {
    return {
      kind: 'native-silu',
      act: (x, n, out) => native.silu(x, null, out, n),
      actMul: (g, a, n, out) => native.silu(g, a, out, n),
    };
  }
  const f = actScalar(c);
  return {
    kind: 'js',
    act: (x, n, out) => { for (let j = 0; j < n; j++) out[j] = f(x[j]!); },
    actMul: (g, a, n, out) => { for (let j = 0; j < n; j++) out[j] = f(g[j]!) * a[j]!; },
  };
}
