/** Mistral (MistralForCausalLM): Llama with a sliding window on every layer (`sliding_window`; layer_types when given). */
import { windowOf, windowsOf } from './common.js';
import { llamaLike, llamaWeights } from './llama.js';
import type { Arch } from './types.js';

export const mistral: Arch = {
  id: 'mistral', modelTypes: ['mistral'], architectures: ['MistralForCausalLM'], basePrefix: 'model.', handles: ['sliding_window'],
  normalize(raw, p) {
    const w = windowOf(raw, p);
    return llamaLike(raw, p, 'mistral', { windows: ({ layers }) => windowsOf(raw, p, layers, w, () => true) });
  },
  weights: (c) => llamaWeights(c),
};
