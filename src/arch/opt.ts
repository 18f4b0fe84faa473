/** OPT (OPTForCausalLM): LayerNorm (pre- or post-LN), ReLU MLP (fc1, fc2), learned positions offset by 2, project_in/out. */
import { actOf, base, idOrNull, mlpKind, table, type TableRow } from './common.js';
import type { Arch } from './types.js';

const d = (c: { hidden: number }) => [c.hidden];
const global: TableRow[] = [
  ['model.decoder.embed_tokens.weight', 'embed', (c) => [c.vocabSize, c.embedProjDim ?? c.hidden], false],
  ['model.decoder.embed_positions.weight', 'pos', (c) => [c.maxPositions + c.positionOffset, c.hidden], false],
  ['model.decoder.project_in.weight', 'projIn', (c) => [c.hidden, c.embedProjDim!], true, (c) => c.embedProjDim !== null],
  ['model.decoder.project_out.weight', 'projOut', (c) => [c.embedProjDim!, c.hidden], true, (c) => c.embedProjDim !== null],
  ['model.decoder.final_layer_norm.weight', 'finalNorm.g', d, false, (c) => c.finalNorm],
  ['model.decoder.final_layer_norm.bias', 'finalNorm.b', d, false, (c) => c.finalNorm],
  ['lm_head.weight', 'lmHead', (c) => [c.vocabSize, c.embedProjDim ?? c.hidden], true, (c) => !c.tiedLmHead],
];
const layer: TableRow[] = [
  ['self_attn_layer_norm.weight', 'ln1.g', d, false],
  ['self_attn_layer_norm.bias', 'ln1.b', d, false],
  ...(['q', 'k', 'v'] as const).flatMap((x): TableRow[] => [
    [`self_attn.${x}_proj.weight`, `w${x}`, (c) => [c.hidden, c.hidden], true],
    [`self_attn.${x}_proj.bias`, `b${x}`, d, false, (c) => c.attnBias]]),
  ['self_attn.out_proj.weight', 'wo', (c) => [c.hidden, c.hidden], true],
  ['self_attn.out_proj.bias', 'bo', d, false, (c) => c.attnBias],
  ['final_layer_norm.weight', 'ln2.g', d, false],
  ['final_layer_norm.bias', 'ln2.b', d, false],
  ['fc1.weight', 'up', (c) => [c.ffn, c.hidden], true],
  ['fc1.bias', 'upBias', (c) => [c.ffn], false, (c) => c.mlpBias],
  ['fc2.weight', 'down', (c) => [c.hidden, c.ffn], true],
  ['fc2.bias', 'downBias', d, false, (c) => c.mlpBias],
];

export const opt: Arch = {
  id: 'opt', modelTypes: ['opt'], architectures: ['OPTForCausalLM'], basePrefix: 'model.',
  normalize(raw, p) {
    const hidden = p.num(raw, 'hidden_size', { int: true, min: 1 });
    const heads = p.num(raw, 'num_attention_heads', { int: true, min: 1 });
    const proj = p.num(raw, 'word_embed_proj_dim', { int: true, min: 1, dflt: hidden });
    const act = actOf(p, 'activation_function', raw.activation_function ?? 'relu');
    if (raw.layer_norm_elementwise_affine === false) p.push('layer_norm_elementwise_affine: false is not supported');
    if (hidden % heads !== 0) p.push(`hidden_size ${hidden} is not divisible by num_attention_heads ${heads}`);
    const preNorm = raw.do_layer_norm_before !== false;
    const layers = p.num(raw, 'num_hidden_layers', { int: true, min: 1 });
    return {
      ...base(), family: 'opt', vocabSize: p.num(raw, 'vocab_size', { int: true, min: 1 }), hidden, layers, heads, kvHeads: heads, headDim: hidden / heads,
      ffn: p.num(raw, 'ffn_dim', { int: true, min: 1 }), maxPositions: p.num(raw, 'max_position_embeddings', { int: true, min: 1 }),
      norm: 'layernorm', normEps: 1e-5, preNorm, finalNorm: preNorm && raw._remove_final_layer_norm !== true,
      act, gated: false, activation: mlpKind(act, false), positions: 'learned', positionOffset: 2, ropeTheta: 0,
      attnScale: 1 / Math.sqrt(hidden / heads), windows: new Array(layers).fill(null),
      embedProjDim: proj !== hidden ? proj : null, tiedLmHead: raw.tie_word_embeddings !== false, attnBias: raw.enable_bias !== false, mlpBias: raw.enable_bias !== false,
      bosTokenId: idOrNull(raw.bos_token_id ?? 2), eosTokenId: idOrNull(raw.eos_token_id ?? 2), padTokenId: idOrNull(raw.pad_token_id ?? 1),
    };
  },
  weights: (c) => table(c, global, 'model.decoder.layers.', layer),
};
