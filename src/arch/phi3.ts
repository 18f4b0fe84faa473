/**
 * Phi-3 (Phi3ForCausalLM): Llama with q, k, v fused in qkv_proj and gate, up in gate_up_proj (split at load),
 * partial rotary, a sliding window when set. LongRoPE (Phi-3 128k) is refused by the shared RoPE reader.
 */
import { windowOf, windowsOf } from './common.js';
import { llamaLike, llamaWeights } from './llama.js';
import type { Arch } from './types.js';

export const phi3: Arch = {
  id: 'phi3', modelTypes: ['phi3'], architectures: ['Phi3ForCausalLM'], basePrefix: 'model.', handles: ['sliding_window', 'partial_rotary_factor'],
  normalize(raw, p) {
    const w = windowOf(raw, p);
    const c = llamaLike(raw, p, 'phi3', { partialRotary: true, windows: ({ layers }) => windowsOf(raw, p, layers, w, () => true) });
    return { ...c, attnBias: false, mlpBias: false };
  },
  weights: (c) => llamaWeights(c, { fused: true }),
};
