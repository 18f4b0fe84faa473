/**
 * Gemma (GemmaForCausalLM): Llama with GeGLU (gelu tanh), RMSNorm weights used as 1 + w, embeddings scaled by
 * sqrt(d) (in float32, as HF rounds it), tied LM head by default.
 */
import { llamaLike, llamaWeights } from './llama.js';
import type { Arch, ModelConfig } from './types.js';
import type { Problems, Raw } from './common.js';

export function gemmaLike(raw: Raw, p: Problems, family: string): ModelConfig {
  const c = llamaLike(raw, p, family, { actKeys: ['hidden_activation', 'hidden_act'], actDflt: 'gelu_pytorch_tanh', tiedDflt: true, bosDflt: 2, eosDflt: 1 });
  return { ...c, embedScale: Math.fround(Math.sqrt(c.hidden)) };
}

export const gemma: Arch = {
  id: 'gemma', modelTypes: ['gemma'], architectures: ['GemmaForCausalLM'], basePrefix: 'model.',
  normalize(raw, p) { return gemmaLike(raw, p, 'gemma'); },
  weights: (c) => llamaWeights(c, { plusOne: true }),
};
