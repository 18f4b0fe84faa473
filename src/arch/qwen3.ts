/** Qwen 3 (Qwen3ForCausalLM): Llama with an RMSNorm of each head's q and k (q_norm, k_norm over head_dim) before RoPE. */
import { windowOf, windowsOf } from './common.js';
import { llamaLike, llamaWeights } from './llama.js';
import type { Arch } from './types.js';

export const qwen3: Arch = {
  id: 'qwen3', modelTypes: ['qwen3'], architectures: ['Qwen3ForCausalLM'], basePrefix: 'model.', handles: ['sliding_window', 'use_sliding_window'],
  normalize(raw, p) {
    const w = raw.use_sliding_window === true ? windowOf(raw, p) : null;
    const from = typeof raw.max_window_layers === 'number' ? raw.max_window_layers : 0;
    const c = llamaLike(raw, p, 'qwen3', { windows: ({ layers }) => windowsOf(raw.use_sliding_window === true ? raw : { ...raw, layer_types: undefined }, p, layers, w, (i) => i >= from), bosDflt: null, eosDflt: null });
    return { ...c, qkNorm: true };
  },
  weights: (c) => llamaWeights(c),
};
