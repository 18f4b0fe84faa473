/**
 * GPT-2 (GPT2LMHeadModel): LayerNorm, learned positions, Conv1D weights (already [in, out]: no transpose), q, k, v
 * concatenated in c_attn, gelu_new MLP, tied LM head.
 */
import { actOf, base, concatParts, idOrNull, mlpKind, table, type TableRow } from './common.js';
import type { Arch } from './types.js';

const d = (c: { hidden: number }) => [c.hidden];
const global: TableRow[] = [
  ['transformer.wte.weight', 'embed', (c) => [c.vocabSize, c.hidden], false],
  ['transformer.wpe.weight', 'pos', (c) => [c.maxPositions, c.hidden], false],
  ['transformer.ln_f.weight', 'finalNorm.g', d, false],
  ['transformer.ln_f.bias', 'finalNorm.b', d, false],
  ['lm_head.weight', 'lmHead', (c) => [c.vocabSize, c.hidden], true, (c) => !c.tiedLmHead],
];
const layer = (h: number): TableRow[] => [
  ['ln_1.weight', 'ln1.g', d, false], ['ln_1.bias', 'ln1.b', d, false],
  ['attn.c_attn.weight', 'qkv', (c) => [c.hidden, 3 * c.hidden], false, undefined, { parts: concatParts([['wq', h], ['wk', h], ['wv', h]]) }],
  ['attn.c_attn.bias', 'qkvBias', (c) => [3 * c.hidden], false, undefined, { parts: concatParts([['bq', h], ['bk', h], ['bv', h]]) }],
  ['attn.c_proj.weight', 'wo', (c) => [c.hidden, c.hidden], false], ['attn.c_proj.bias', 'bo', d, false],
  ['ln_2.weight', 'ln2.g', d, false], ['ln_2.bias', 'ln2.b', d, false],
  ['mlp.c_fc.weight', 'up', (c) => [c.hidden, c.ffn], false], ['mlp.c_fc.bias', 'upBias', (c) => [c.ffn], false],
  ['mlp.c_proj.weight', 'down', (c) => [c.ffn, c.hidden], false], ['mlp.c_proj.bias', 'downBias', d, false],
];

export const gpt2: Arch = {
  id: 'gpt2', modelTypes: ['gpt2'], architectures: ['GPT2LMHeadModel'], basePrefix: 'transformer.',
  ignorable: [/\.attn\.(masked_)?bias$/],
  normalize(raw, p) {
    const hidden = p.numOf(raw, ['n_embd', 'hidden_size'], { int: true, min: 1 });
    const heads = p.numOf(raw, ['n_head', 'num_attention_heads'], { int: true, min: 1 });
    const layers = p.numOf(raw, ['n_layer', 'num_hidden_layers'], { int: true, min: 1 });
    if (hidden % heads !== 0) p.push(`n_embd ${hidden} is not divisible by n_head ${heads}`);
    const act = actOf(p, 'activation_function', raw.activation_function ?? 'gelu_new');
    p.only(raw, 'scale_attn_by_inverse_layer_idx', [false], 'scores divided by the layer index are not implemented');
    p.only(raw, 'scale_attn_weights', [true], 'unscaled attention scores are not implemented');
    p.only(raw, 'add_cross_attention', [false], 'cross-attention needs an encoder');
    const headDim = hidden / heads;
    return {
      ...base(), family: 'gpt2', vocabSize: p.num(raw, 'vocab_size', { int: true, min: 1 }), hidden, layers, heads, kvHeads: heads, headDim,
      ffn: typeof raw.n_inner === 'number' ? p.num(raw, 'n_inner', { int: true, min: 1 }) : 4 * hidden,
      maxPositions: p.numOf(raw, ['n_positions', 'max_position_embeddings'], { int: true, min: 1 }),
      norm: 'layernorm', normEps: p.num(raw, 'layer_norm_epsilon', { min: 0, dflt: 1e-5 }),
      act, gated: false, activation: mlpKind(act, false), positions: 'learned', ropeTheta: 0, attnScale: 1 / Math.sqrt(headDim),
      windows: new Array(layers).fill(null), tiedLmHead: raw.tie_word_embeddings !== false, attnBias: true, mlpBias: true,
      bosTokenId: idOrNull(raw.bos_token_id ?? 50256), eosTokenId: idOrNull(raw.eos_token_id ?? 50256), padTokenId: idOrNull(raw.pad_token_id),
    };
  },
  weights: (c) => table(c, global, 'transformer.h.', layer(c.hidden)),
};
