/**
 * Gemma 2 (Gemma2ForCausalLM): Gemma with sandwich norms (the attention and MLP outputs normalized before each
 * residual add), tanh softcapping of attention scores and final logits, query_pre_attn_scalar, and sliding windows
 * on alternating layers (layer_types; without it every even layer, as transformers did).
 */
import { windowOf, windowsOf } from './common.js';
import { gemmaLike } from './gemma.js';
import { llamaWeights } from './llama.js';
import type { Arch } from './types.js';

export const gemma2: Arch = {
  id: 'gemma2', modelTypes: ['gemma2'], architectures: ['Gemma2ForCausalLM'], basePrefix: 'model.', handles: ['sliding_window', 'attn_logit_softcapping', 'final_logit_softcapping', 'query_pre_attn_scalar'],
  normalize(raw, p) {
    const c = gemmaLike(raw, p, 'gemma2');
    const w = windowOf(raw, p);
    // absent keys take Gemma2Config's defaults (softcaps 50 / 30, query_pre_attn_scalar 256); null = no softcapping
    const cap = (k: string, dflt: number) => (raw[k] === null ? null : p.num(raw, k, { min: 0, dflt }));
    const qs = p.num(raw, 'query_pre_attn_scalar', { min: 0, dflt: 256 });
    return { ...c, sandwichNorm: true, attnSoftcap: cap('attn_logit_softcapping', 50), finalSoftcap: cap('final_logit_softcapping', 30), attnScale: 1 / Math.sqrt(qs),
      windows: windowsOf(raw, p, c.layers, w, (i) => i % 2 === 0) };
  },
  weights: (c) => llamaWeights(c, { plusOne: true }),
};
