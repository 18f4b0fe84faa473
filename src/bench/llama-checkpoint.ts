/**
 * A random-weight Llama checkpoint (Hugging Face layout: config.json + one float16 model.safetensors, written tensor
 * by tensor by src/bench/opt-checkpoint.ts's writer) at TinyLlama-1.1B's widths: d 2048, ffn 5632, 32 heads / 4 KV
 * heads (head dim 64), vocab 32000, untied LM head; 8 of its 22 layers by default (~0.48 B parameters, 0.96 GB).
 * No tokenizer.json: bench:decode feeds token ids, and src/bench/gguf.ts writes a synthetic vocabulary for llama.cpp.
 *   node dist/bench/llama-checkpoint.js DIR [LAYERS]
 */
import * as path from 'node:path';
import { normalizeConfig, type ModelConfig } from '../model/config.js';
import { writeRandomOpt } from './opt-checkpoint.js';

/** TinyLlama-1.1B's config.json (TinyLlama/TinyLlama-1.1B-Chat-v1.0), `layers` of its 22 layers, float16 */
export function tinyLlamaHf(layers = 8): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'], attention_bias: false, bos_token_id: 1, eos_token_id: 2, hidden_act: 'silu', hidden_size: 2048,
    intermediate_size: 5632, max_position_embeddings: 2048, mlp_bias: false, model_type: 'llama', num_attention_heads: 32, num_hidden_layers: layers,
    num_key_value_heads: 4, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: false, torch_dtype: 'float16', vocab_size: 32000,
  };
}

export function tinyLlamaConfig(layers = 8): ModelConfig { return normalizeConfig(tinyLlamaHf(layers), 'TinyLlama-1.1B widths'); }

/** Write the checkpoint; returns the bytes of model.safetensors. */
export function writeRandomLlama(dir: string, layers = 8, seed = 1): number {
  return writeRandomOpt(dir, tinyLlamaConfig(layers), seed, tinyLlamaHf(layers));
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  const [dir, layers = '8'] = process.argv.slice(2);
  const n = Number(layers);
  if (!dir || !Number.isInteger(n) || n <= 0) { console.error('usage: node dist/bench/llama-checkpoint.js DIR [LAYERS] (LAYERS: a positive integer, default 8)'); process.exit(2); }
  const t = Date.now();
  const bytes = writeRandomLlama(dir, n);
  console.log(`${dir}: random Llama at TinyLlama-1.1B widths, ${n} layers, ${(bytes / 1e9).toFixed(2)} GB fp16, ${((Date.now() - t) / 1000).toFixed(0)} s`);
}
