/**
 * Llama (LlamaForCausalLM): RMSNorm, gated MLP (SwiGLU; ReluLLaMA's relu, ProSparse's fatrelu), RoPE with the
 * linear / dynamic / yarn / llama3 scalings, grouped KV. Also the base of the Llama-like families (Mistral, Qwen 2
 * and 3, Phi-3, Gemma 1 and 2): `llamaLike` reads what they share, `llamaWeights` is their tensor table.
 */
import { actOf, base, concatParts, idOrNull, mlpKind, ropeOf, table, type Problems, type Raw, type TableRow } from './common.js';
import type { Arch, ModelConfig, WeightSpec } from './types.js';

export interface LlamaLikeOptions {
  /** config keys naming the MLP activation, first present wins, and the default */
  actKeys?: string[]; actDflt?: string;
  /** the family's HF code applies partial_rotary_factor */
  partialRotary?: boolean;
  /** per layer sliding window (default: none; a sliding_window key is then refused by the family) */
  windows?: (c: { layers: number }) => (number | null)[];
  tiedDflt?: boolean; bosDflt?: number | null; eosDflt?: number | null;
}

export function llamaLike(raw: Raw, p: Problems, family: string, o: LlamaLikeOptions = {}): ModelConfig {
  const hidden = p.num(raw, 'hidden_size', { int: true, min: 1 });
  const heads = p.num(raw, 'num_attention_heads', { int: true, min: 1 });
  const kvHeads = p.num(raw, 'num_key_value_heads', { int: true, min: 1, dflt: heads });
  const layers = p.num(raw, 'num_hidden_layers', { int: true, min: 1 });
  const headDim = p.num(raw, 'head_dim', { int: true, min: 1, dflt: Math.floor(hidden / heads) });
  const maxPositions = p.num(raw, 'max_position_embeddings', { int: true, min: 1, dflt: 2048 });
  const actKey = (o.actKeys ?? ['hidden_act']).find((k) => raw[k] !== undefined && raw[k] !== null) ?? (o.actKeys ?? ['hidden_act'])[0]!;
  const act = actOf(p, actKey, raw[actKey] ?? o.actDflt ?? 'silu');
  const actThreshold = act === 'fatrelu' ? p.num(raw, 'hidden_act_param', { dflt: 0 }) : 0;
  if (heads % kvHeads !== 0) p.push(`num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`);
  const rope = ropeOf(raw, p, headDim, maxPositions, { partial: o.partialRotary ?? false });
  if (raw.use_bidirectional_attention === true) p.push('use_bidirectional_attention: true is not supported (causal attention only)');
  return {
    ...base(), family, vocabSize: p.num(raw, 'vocab_size', { int: true, min: 1 }), hidden, layers, heads, kvHeads, headDim,
    ffn: p.num(raw, 'intermediate_size', { int: true, min: 1 }), maxPositions, normEps: p.num(raw, 'rms_norm_eps', { min: 0, dflt: 1e-6 }),
    act, actThreshold, gated: true, activation: mlpKind(act, true), ropeTheta: rope.theta, ropeDim: rope.dim, ropeScaling: rope.scaling,
    attnScale: 1 / Math.sqrt(headDim), windows: o.windows ? o.windows({ layers }) : new Array(layers).fill(null),
    tiedLmHead: (raw.tie_word_embeddings ?? o.tiedDflt ?? false) === true, attnBias: raw.attention_bias === true, mlpBias: raw.mlp_bias === true,
    bosTokenId: idOrNull(raw.bos_token_id !== undefined ? raw.bos_token_id : o.bosDflt ?? 1), eosTokenId: idOrNull(raw.eos_token_id !== undefined ? raw.eos_token_id : o.eosDflt ?? 2),
    padTokenId: idOrNull(raw.pad_token_id),
  };
}

export interface LlamaWeightOptions {
  /** Phi-3: q, k, v in one qkv_proj; gate and up in one gate_up_proj */
  fused?: boolean;
  /** Gemma: every RMSNorm weight is used as 1 + w */
  plusOne?: boolean;
  /** o_proj has a bias (default: attention_bias; Qwen 2 biases q, k, v only) */
  oBias?: boolean;
}

const q = (c: ModelConfig) => c.heads * c.headDim, kv = (c: ModelConfig) => c.kvHeads * c.headDim;

export function llamaWeights(c: ModelConfig, o: LlamaWeightOptions = {}): WeightSpec[] {
  const n: Partial<WeightSpec> = o.plusOne ? { plusOne: true } : {};
  const d = (x: ModelConfig) => [x.hidden];
  const global: TableRow[] = [
    ['model.embed_tokens.weight', 'embed', (x) => [x.vocabSize, x.hidden], false],
    ['model.norm.weight', 'finalNorm.g', d, false, undefined, n],
    ['lm_head.weight', 'lmHead', (x) => [x.vocabSize, x.hidden], true, (x) => !x.tiedLmHead],
  ];
  const attn: TableRow[] = o.fused
    ? [['self_attn.qkv_proj.weight', 'qkv', (x) => [q(x) + 2 * kv(x), x.hidden], true, undefined, { parts: concatParts([['wq', q(c)], ['wk', kv(c)], ['wv', kv(c)]]) }],
      ['self_attn.qkv_proj.bias', 'qkvBias', (x) => [q(x) + 2 * kv(x)], false, (x) => x.attnBias, { parts: concatParts([['bq', q(c)], ['bk', kv(c)], ['bv', kv(c)]]) }]]
    : [['self_attn.q_proj.weight', 'wq', (x) => [q(x), x.hidden], true],
      ['self_attn.q_proj.bias', 'bq', (x) => [q(x)], false, (x) => x.attnBias],
      ['self_attn.k_proj.weight', 'wk', (x) => [kv(x), x.hidden], true],
      ['self_attn.k_proj.bias', 'bk', (x) => [kv(x)], false, (x) => x.attnBias],
      ['self_attn.v_proj.weight', 'wv', (x) => [kv(x), x.hidden], true],
      ['self_attn.v_proj.bias', 'bv', (x) => [kv(x)], false, (x) => x.attnBias]];
  const mlp: TableRow[] = o.fused
    ? [['mlp.gate_up_proj.weight', 'gateUp', (x) => [2 * x.ffn, x.hidden], true, undefined, { parts: concatParts([['gate', c.ffn], ['up', c.ffn]]) }]]
    : [['mlp.gate_proj.weight', 'gate', (x) => [x.ffn, x.hidden], true],
      ['mlp.gate_proj.bias', 'gateBias', (x) => [x.ffn], false, (x) => x.mlpBias],
      ['mlp.up_proj.weight', 'up', (x) => [x.ffn, x.hidden], true],
      ['mlp.up_proj.bias', 'upBias', (x) => [x.ffn], false, (x) => x.mlpBias]];
  const layer: TableRow[] = [
    ['input_layernorm.weight', 'ln1.g', d, false, undefined, n],
    ...attn,
    ['self_attn.q_norm.weight', 'qNorm.g', (x) => [x.headDim], false, (x) => x.qkNorm, n],
    ['self_attn.k_norm.weight', 'kNorm.g', (x) => [x.headDim], false, (x) => x.qkNorm, n],
    ['self_attn.o_proj.weight', 'wo', (x) => [x.hidden, q(x)], true],
    ['self_attn.o_proj.bias', 'bo', d, false, (x) => o.oBias ?? x.attnBias],
    // Gemma 2's sandwich: post_attention_layernorm normalizes the attention output, pre_feedforward the MLP input
    ...(c.sandwichNorm
      ? [['post_attention_layernorm.weight', 'lnAttnOut.g', d, false, undefined, n], ['pre_feedforward_layernorm.weight', 'ln2.g', d, false, undefined, n],
        ['post_feedforward_layernorm.weight', 'lnMlpOut.g', d, false, undefined, n]] as TableRow[]
      : [['post_attention_layernorm.weight', 'ln2.g', d, false, undefined, n]] as TableRow[]),
    ...mlp,
    ['mlp.down_proj.weight', 'down', (x) => [x.hidden, x.ffn], true],
    ['mlp.down_proj.bias', 'downBias', d, false, (x) => x.mlpBias],
  ];
  return table(c, global, 'model.layers.', layer);
}

export const llama: Arch = {
  id: 'llama', modelTypes: ['llama'], architectures: ['LlamaForCausalLM'], basePrefix: 'model.',
  normalize(raw, p) {
    return llamaLike(raw, p, 'llama');
  },
  weights: (c) => llamaWeights(c),
};
