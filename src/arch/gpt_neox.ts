/**
 * GPT-NeoX / Pythia (GPTNeoXForCausalLM): LayerNorm, parallel residual (x + attn(ln1 x) + mlp(ln2 x); sequential
 * with use_parallel_residual false), q, k, v interleaved per head in query_key_value, partial rotary (rotary_pct).
 */
import { actOf, base, idOrNull, interleavedParts, mlpKind, ropeOf, table, type TableRow } from './common.js';
import type { Arch, ModelConfig } from './types.js';

const d = (c: { hidden: number }) => [c.hidden];
const global: TableRow[] = [
  ['gpt_neox.embed_in.weight', 'embed', (c) => [c.vocabSize, c.hidden], false],
  ['gpt_neox.final_layer_norm.weight', 'finalNorm.g', d, false],
  ['gpt_neox.final_layer_norm.bias', 'finalNorm.b', d, false],
  ['embed_out.weight', 'lmHead', (c) => [c.vocabSize, c.hidden], true, (c) => !c.tiedLmHead],
];
const layer = (c: ModelConfig): TableRow[] => [
  ['input_layernorm.weight', 'ln1.g', d, false], ['input_layernorm.bias', 'ln1.b', d, false],
  ['attention.query_key_value.weight', 'qkv', (x) => [3 * x.hidden, x.hidden], true, undefined, { parts: interleavedParts(c.heads, c.headDim, ['wq', 'wk', 'wv']) }],
  ['attention.query_key_value.bias', 'qkvBias', (x) => [3 * x.hidden], false, (x) => x.attnBias, { parts: interleavedParts(c.heads, c.headDim, ['bq', 'bk', 'bv']) }],
  ['attention.dense.weight', 'wo', (x) => [x.hidden, x.hidden], true], ['attention.dense.bias', 'bo', d, false, (x) => x.attnBias],
  ['post_attention_layernorm.weight', 'ln2.g', d, false], ['post_attention_layernorm.bias', 'ln2.b', d, false],
  ['mlp.dense_h_to_4h.weight', 'up', (x) => [x.ffn, x.hidden], true], ['mlp.dense_h_to_4h.bias', 'upBias', (x) => [x.ffn], false],
  ['mlp.dense_4h_to_h.weight', 'down', (x) => [x.hidden, x.ffn], true], ['mlp.dense_4h_to_h.bias', 'downBias', d, false],
];

export const gptNeox: Arch = {
  id: 'gpt_neox', modelTypes: ['gpt_neox'], architectures: ['GPTNeoXForCausalLM'], basePrefix: 'gpt_neox.', handles: ['use_parallel_residual', 'rotary_pct', 'partial_rotary_factor'],
  ignorable: [/\.attention\.(masked_)?bias$/, /\.attention\.rotary_emb\.inv_freq$/],
  normalize(raw, p) {
    const hidden = p.num(raw, 'hidden_size', { int: true, min: 1 });
    const heads = p.num(raw, 'num_attention_heads', { int: true, min: 1 });
    const layers = p.num(raw, 'num_hidden_layers', { int: true, min: 1 });
    if (hidden % heads !== 0) p.push(`hidden_size ${hidden} is not divisible by num_attention_heads ${heads}`);
    const headDim = hidden / heads;
    const maxPositions = p.num(raw, 'max_position_embeddings', { int: true, min: 1, dflt: 2048 });
    const act = actOf(p, 'hidden_act', raw.hidden_act ?? 'gelu');
    const rope = ropeOf(raw, p, headDim, maxPositions, { partial: true, legacyTheta: 'rotary_emb_base', legacyPartial: 'rotary_pct' });
    return {
      ...base(), family: 'gpt_neox', vocabSize: p.num(raw, 'vocab_size', { int: true, min: 1 }), hidden, layers, heads, kvHeads: heads, headDim,
      ffn: p.num(raw, 'intermediate_size', { int: true, min: 1 }), maxPositions, norm: 'layernorm', normEps: p.num(raw, 'layer_norm_eps', { min: 0, dflt: 1e-5 }),
      act, gated: false, activation: mlpKind(act, false), ropeTheta: rope.theta, ropeDim: rope.dim, ropeScaling: rope.scaling,
      block: raw.use_parallel_residual === false ? 'sequential' : 'parallel', attnScale: 1 / Math.sqrt(headDim), windows: new Array(layers).fill(null),
      tiedLmHead: raw.tie_word_embeddings === true, attnBias: raw.attention_bias !== false, mlpBias: true,
      bosTokenId: idOrNull(raw.bos_token_id ?? 0), eosTokenId: idOrNull(raw.eos_token_id ?? 2), padTokenId: idOrNull(raw.pad_token_id),
    };
  },
  weights: (c) => table(c, global, 'gpt_neox.layers.', layer(c)),
};
