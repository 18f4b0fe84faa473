/**
 * BLOOM (BloomForCausalLM): LayerNorm (also right after the embedding), ALiBi instead of positions, q, k, v
 * interleaved per head in query_key_value, gelu (tanh form), tied LM head.
 */
import { base, idOrNull, interleavedParts, table, type TableRow } from './common.js';
import type { Arch, ModelConfig } from './types.js';

const d = (c: { hidden: number }) => [c.hidden];
const global: TableRow[] = [
  ['transformer.word_embeddings.weight', 'embed', (c) => [c.vocabSize, c.hidden], false],
  ['transformer.word_embeddings_layernorm.weight', 'embedNorm.g', d, false], ['transformer.word_embeddings_layernorm.bias', 'embedNorm.b', d, false],
  ['transformer.ln_f.weight', 'finalNorm.g', d, false], ['transformer.ln_f.bias', 'finalNorm.b', d, false],
  ['lm_head.weight', 'lmHead', (c) => [c.vocabSize, c.hidden], true, (c) => !c.tiedLmHead],
];
const layer = (c: ModelConfig): TableRow[] => [
  ['input_layernorm.weight', 'ln1.g', d, false], ['input_layernorm.bias', 'ln1.b', d, false],
  ['self_attention.query_key_value.weight', 'qkv', (x) => [3 * x.hidden, x.hidden], true, undefined, { parts: interleavedParts(c.heads, c.headDim, ['wq', 'wk', 'wv']) }],
  ['self_attention.query_key_value.bias', 'qkvBias', (x) => [3 * x.hidden], false, undefined, { parts: interleavedParts(c.heads, c.headDim, ['bq', 'bk', 'bv']) }],
  ['self_attention.dense.weight', 'wo', (x) => [x.hidden, x.hidden], true], ['self_attention.dense.bias', 'bo', d, false],
  ['post_attention_layernorm.weight', 'ln2.g', d, false], ['post_attention_layernorm.bias', 'ln2.b', d, false],
  ['mlp.dense_h_to_4h.weight', 'up', (x) => [x.ffn, x.hidden], true], ['mlp.dense_h_to_4h.bias', 'upBias', (x) => [x.ffn], false],
  ['mlp.dense_4h_to_h.weight', 'down', (x) => [x.hidden, x.ffn], true], ['mlp.dense_4h_to_h.bias', 'downBias', d, false],
];

export const bloom: Arch = {
  id: 'bloom', modelTypes: ['bloom'], architectures: ['BloomForCausalLM'], basePrefix: 'transformer.',
  normalize(raw, p) {
    const hidden = p.numOf(raw, ['hidden_size', 'n_embed'], { int: true, min: 1 });
    const heads = p.numOf(raw, ['n_head', 'num_attention_heads'], { int: true, min: 1 });
    const layers = p.numOf(raw, ['n_layer', 'num_hidden_layers'], { int: true, min: 1 });
    if (hidden % heads !== 0) p.push(`hidden_size ${hidden} is not divisible by n_head ${heads}`);
    p.only(raw, 'apply_residual_connection_post_layernorm', [false], 'the residual taken after the norm is not implemented');
    const headDim = hidden / heads;
    return {
      ...base(), family: 'bloom', vocabSize: p.num(raw, 'vocab_size', { int: true, min: 1 }), hidden, layers, heads, kvHeads: heads, headDim, ffn: 4 * hidden,
      // ALiBi has no position limit; transformers' BLOOM sets none either
      maxPositions: typeof raw.seq_length === 'number' ? Math.max(raw.seq_length, 2048) : 2048,
      norm: 'layernorm', normEps: p.num(raw, 'layer_norm_epsilon', { min: 0, dflt: 1e-5 }), act: 'gelu_tanh', gated: false, activation: 'gelu',
      positions: 'alibi', ropeTheta: 0, attnScale: 1 / Math.sqrt(headDim), windows: new Array(layers).fill(null), embedNorm: true,
      tiedLmHead: raw.tie_word_embeddings !== false, attnBias: true, mlpBias: true,
      bosTokenId: idOrNull(raw.bos_token_id ?? 1), eosTokenId: idOrNull(raw.eos_token_id ?? 2), padTokenId: idOrNull(raw.pad_token_id ?? 3),
    };
  },
  weights: (c) => table(c, global, 'transformer.h.', layer(c)),
};
