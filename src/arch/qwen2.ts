/**
 * Qwen 2 / 2.5 (Qwen2ForCausalLM): Llama with biases on q, k and v (not o); sliding windows only with
 * use_sliding_window, on the layers from max_window_layers on (or as layer_types says).
 */
import { windowOf, windowsOf } from './common.js';
import { llamaLike, llamaWeights } from './llama.js';
import type { Arch } from './types.js';

export const qwen2: Arch = {
  id: 'qwen2', modelTypes: ['qwen2'], architectures: ['Qwen2ForCausalLM'], basePrefix: 'model.', handles: ['sliding_window', 'use_sliding_window'],
  normalize(raw, p) {
    const w = raw.use_sliding_window === true ? windowOf(raw, p) : null;
    const from = typeof raw.max_window_layers === 'number' ? raw.max_window_layers : 0;
    const c = llamaLike(raw, p, 'qwen2', { windows: ({ layers }) => windowsOf(raw.use_sliding_window === true ? raw : { ...raw, layer_types: undefined }, p, layers, w, (i) => i >= from), bosDflt: null, eosDflt: null });
    return { ...c, attnBias: true };
  },
  weights: (c) => llamaWeights(c, { oBias: false }),
};
