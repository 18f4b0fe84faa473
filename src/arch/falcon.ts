/**
 * Falcon (FalconForCausalLM), both decoder layouts. Old (7B): one input_layernorm, multi-query (q heads, then one
 * k and one v in query_key_value) or q, k, v interleaved per head, parallel attention + MLP on that one norm (or
 * sequential with post_attention_layernorm). New (40B / 180B, new_decoder_architecture): ln_attn and ln_mlp (or one
 * input_layernorm with num_ln_in_parallel_attn 1), kv groups [q x H/KV, k, v] in query_key_value. RoPE, gelu.
 */
import { actOf, base, concatParts, idOrNull, interleavedParts, mlpKind, ropeOf, table, type TableRow } from './common.js';
import type { Arch, ModelConfig, WeightPart } from './types.js';

const d = (c: { hidden: number }) => [c.hidden];
const global: TableRow[] = [
  ['transformer.word_embeddings.weight', 'embed', (c) => [c.vocabSize, c.hidden], false],
  ['transformer.ln_f.weight', 'finalNorm.g', d, false], ['transformer.ln_f.bias', 'finalNorm.b', d, false],
  ['lm_head.weight', 'lmHead', (c) => [c.vocabSize, c.hidden], true, (c) => !c.tiedLmHead],
];

/** how the fused QKV tensor's output axis is laid out */
function qkvParts(c: ModelConfig, newArch: boolean, prefix: 'w' | 'b'): WeightPart[] {
  const n = (x: string) => prefix + x;
  if (newArch) return interleavedParts(c.kvHeads, c.headDim, [...new Array(c.heads / c.kvHeads).fill(n('q')), n('k'), n('v')]);
  if (c.kvHeads === 1) return concatParts([[n('q'), c.heads * c.headDim], [n('k'), c.headDim], [n('v'), c.headDim]]);
  return interleavedParts(c.heads, c.headDim, [n('q'), n('k'), n('v')]);
}

const layer = (c: ModelConfig, newArch: boolean, twoNorms: boolean): TableRow[] => {
  const qkv = (x: ModelConfig) => (x.heads + 2 * x.kvHeads) * x.headDim;
  const norms: TableRow[] = twoNorms
    ? [['ln_attn.weight', 'ln1.g', d, false], ['ln_attn.bias', 'ln1.b', d, false], ['ln_mlp.weight', 'ln2.g', d, false], ['ln_mlp.bias', 'ln2.b', d, false]]
    : [['input_layernorm.weight', 'ln1.g', d, false], ['input_layernorm.bias', 'ln1.b', d, false],
      ...(c.block === 'sequential' ? [['post_attention_layernorm.weight', 'ln2.g', d, false], ['post_attention_layernorm.bias', 'ln2.b', d, false]] as TableRow[] : [])];
  return [
    ...norms,
    ['self_attention.query_key_value.weight', 'qkv', (x) => [qkv(x), x.hidden], true, undefined, { parts: qkvParts(c, newArch, 'w') }],
    ['self_attention.query_key_value.bias', 'qkvBias', (x) => [qkv(x)], false, (x) => x.attnBias, { parts: qkvParts(c, newArch, 'b') }],
    ['self_attention.dense.weight', 'wo', (x) => [x.hidden, x.hidden], true], ['self_attention.dense.bias', 'bo', d, false, (x) => x.attnBias],
    ['mlp.dense_h_to_4h.weight', 'up', (x) => [x.ffn, x.hidden], true], ['mlp.dense_h_to_4h.bias', 'upBias', (x) => [x.ffn], false, (x) => x.mlpBias],
    ['mlp.dense_4h_to_h.weight', 'down', (x) => [x.hidden, x.ffn], true], ['mlp.dense_4h_to_h.bias', 'downBias', d, false, (x) => x.mlpBias],
  ];
};

export const falcon: Arch = {
  id: 'falcon', modelTypes: ['falcon', 'RefinedWeb', 'RefinedWebModel'], architectures: ['FalconForCausalLM', 'RWForCausalLM'], basePrefix: 'transformer.', handles: ['parallel_attn', 'alibi'],
  ignorable: [/\.rotary_emb\.inv_freq$/],
  normalize(raw, p) {
    const hidden = p.numOf(raw, ['hidden_size', 'n_embed'], { int: true, min: 1 });
    const heads = p.numOf(raw, ['num_attention_heads', 'n_head'], { int: true, min: 1 });
    const layers = p.numOf(raw, ['num_hidden_layers', 'n_layer'], { int: true, min: 1 });
    if (hidden % heads !== 0) p.push(`hidden_size ${hidden} is not divisible by num_attention_heads ${heads}`);
    const headDim = hidden / heads;
    const newArch = raw.new_decoder_architecture === true;
    const kvHeads = newArch || raw.multi_query === false ? p.numOf(raw, ['num_kv_heads', 'n_head_kv'], { int: true, min: 1, dflt: heads }) : 1;
    if (heads % kvHeads !== 0) p.push(`num_attention_heads ${heads} is not a multiple of num_kv_heads ${kvHeads}`);
    if (!newArch && raw.multi_query === false && kvHeads !== heads) p.push(`num_kv_heads ${kvHeads}: the old layout without multi_query has one kv head per head`);
    p.only(raw, 'alibi', [false], "Falcon's ALiBi variant is not implemented (supported: rotary positions)");
    const maxPositions = p.num(raw, 'max_position_embeddings', { int: true, min: 1, dflt: 2048 });
    const act = actOf(p, 'activation', raw.activation ?? 'gelu');
    const rope = ropeOf(raw, p, headDim, maxPositions, { partial: false });
    const nLn = (raw.num_ln_in_parallel_attn ?? (newArch ? 2 : null)) as number | null;
    const parallel = newArch || raw.parallel_attn !== false;
    return {
      ...base(), family: 'falcon', vocabSize: p.num(raw, 'vocab_size', { int: true, min: 1 }), hidden, layers, heads, kvHeads, headDim,
      ffn: p.num(raw, 'ffn_hidden_size', { int: true, min: 1, dflt: 4 * hidden }), maxPositions, norm: 'layernorm', normEps: p.num(raw, 'layer_norm_epsilon', { min: 0, dflt: 1e-5 }),
      act, gated: false, activation: mlpKind(act, false), ropeTheta: rope.theta, ropeDim: rope.dim, ropeScaling: rope.scaling,
      block: parallel ? 'parallel' : 'sequential', sharedNorm: parallel && !(newArch && nLn === 2), attnScale: 1 / Math.sqrt(headDim), windows: new Array(layers).fill(null),
      tiedLmHead: raw.tie_word_embeddings !== false, attnBias: raw.bias === true, mlpBias: raw.bias === true,
      bosTokenId: idOrNull(raw.bos_token_id ?? 11), eosTokenId: idOrNull(raw.eos_token_id ?? 11), padTokenId: idOrNull(raw.pad_token_id),
      layout: { newArch, twoNorms: newArch && nLn === 2 },
    };
  },
  weights: (c) => table(c, global, 'transformer.h.', layer(c, c.layout?.newArch === true, c.layout?.twoNorms === true)),
};
