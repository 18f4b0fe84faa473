/**
 * Hugging Face config.json dialects -> one normalized ModelConfig. Every family is mapped here, at the boundary;
 * the forward pass only ever sees ModelConfig.
 */
import { z } from 'zod';
import { UserError } from '../util/errors.js';

export type Family = 'opt' | 'llama';

export interface ModelConfig {
  family: Family;
  vocabSize: number;
  /** hidden size d */
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ffn: number;
  maxPositions: number;
  norm: 'layernorm' | 'rmsnorm';
  normEps: number;
  /** pre-LN (x + f(norm(x))) or post-LN (norm(x + f(x))) */
  preNorm: boolean;
  finalNorm: boolean;
  activation: 'relu' | 'swiglu';
  positions: 'learned' | 'rope';
  /** OPT's learned positions are offset by 2 */
  positionOffset: number;
  ropeTheta: number;
  /** OPT word_embed_proj_dim when != hidden (project_in / project_out exist), else null */
  embedProjDim: number | null;
  tiedLmHead: boolean;
  attnBias: boolean;
  mlpBias: boolean;
  bosTokenId: number | null;
  eosTokenId: number | null;
  padTokenId: number | null;
}

const count = z.number().int().positive();
const tokenId = z.number().int().nonnegative().nullable();
/** A normalized ModelConfig as recorded in artifacts (activations manifest, predictors.json), checked when read back. */
export const modelConfigSchema = z.looseObject({
  family: z.enum(['opt', 'llama']), vocabSize: count, hidden: count, layers: count, heads: count, kvHeads: count, headDim: count, ffn: count,
  maxPositions: count, norm: z.enum(['layernorm', 'rmsnorm']), normEps: z.number().positive(), preNorm: z.boolean(), finalNorm: z.boolean(),
  activation: z.enum(['relu', 'swiglu']), positions: z.enum(['learned', 'rope']), positionOffset: z.number().int().nonnegative(), ropeTheta: z.number().nonnegative(),
  embedProjDim: count.nullable(), tiedLmHead: z.boolean(), attnBias: z.boolean(), mlpBias: z.boolean(), bosTokenId: tokenId, eosTokenId: tokenId, padTokenId: tokenId,
});
true satisfies (z.output<typeof modelConfigSchema> extends ModelConfig ? true : false);

type Raw = Record<string, unknown>;

class Problems {
  list: string[] = [];
  num(raw: Raw, key: string, opts: { int?: boolean; min?: number; dflt?: number } = {}): number {
    const v = raw[key] ?? opts.dflt;
    if (typeof v !== 'number' || !Number.isFinite(v) || (opts.int && !Number.isInteger(v)) || (opts.min !== undefined && v < opts.min)) {
      this.list.push(`${key}: expected ${opts.int ? 'an integer' : 'a number'}${opts.min !== undefined ? ` >= ${opts.min}` : ''}, got ${JSON.stringify(v)}`);
      return NaN;
    }
    return v;
  }
}

function idOrNull(v: unknown): number | null {
  if (Array.isArray(v)) v = v[0];
  return typeof v === 'number' && Number.isInteger(v) ? v : null;
}

export function normalizeConfig(raw: Raw, where: string): ModelConfig {
  const mt = raw.model_type;
  const p = new Problems();
  let cfg: ModelConfig;
  if (mt === 'opt') {
    const hidden = p.num(raw, 'hidden_size', { int: true, min: 1 });
    const heads = p.num(raw, 'num_attention_heads', { int: true, min: 1 });
    const proj = p.num(raw, 'word_embed_proj_dim', { int: true, min: 1, dflt: hidden });
    const act = raw.activation_function ?? 'relu';
    if (act !== 'relu') p.list.push(`activation_function: only "relu" is supported for OPT, got ${JSON.stringify(act)}`);
    if (raw.layer_norm_elementwise_affine === false) p.list.push('layer_norm_elementwise_affine: false is not supported');
    if (hidden % heads !== 0) p.list.push(`hidden_size ${hidden} is not divisible by num_attention_heads ${heads}`);
    const preNorm = raw.do_layer_norm_before !== false;
    cfg = {
      family: 'opt',
      vocabSize: p.num(raw, 'vocab_size', { int: true, min: 1 }),
      hidden,
      layers: p.num(raw, 'num_hidden_layers', { int: true, min: 1 }),
      heads,
      kvHeads: heads,
      headDim: hidden / heads,
      ffn: p.num(raw, 'ffn_dim', { int: true, min: 1 }),
      maxPositions: p.num(raw, 'max_position_embeddings', { int: true, min: 1 }),
      norm: 'layernorm',
      normEps: 1e-5,
      preNorm,
      finalNorm: preNorm && raw._remove_final_layer_norm !== true,
      activation: 'relu',
      positions: 'learned',
      positionOffset: 2,
      ropeTheta: 0,
      embedProjDim: proj !== hidden ? proj : null,
      tiedLmHead: raw.tie_word_embeddings !== false,
      attnBias: raw.enable_bias !== false,
      mlpBias: raw.enable_bias !== false,
      bosTokenId: idOrNull(raw.bos_token_id ?? 2),
      eosTokenId: idOrNull(raw.eos_token_id ?? 2),
      padTokenId: idOrNull(raw.pad_token_id ?? 1),
    };
  } else if (mt === 'llama') {
    const hidden = p.num(raw, 'hidden_size', { int: true, min: 1 });
    const heads = p.num(raw, 'num_attention_heads', { int: true, min: 1 });
    const kvHeads = p.num(raw, 'num_key_value_heads', { int: true, min: 1, dflt: heads });
    const act = raw.hidden_act ?? 'silu';
    if (act !== 'silu') p.list.push(`hidden_act: only "silu" (SwiGLU) is supported for Llama, got ${JSON.stringify(act)}`);
    if (heads % kvHeads !== 0) p.list.push(`num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`);
    const rp = (raw.rope_parameters ?? raw.rope_scaling ?? null) as Raw | null;
    const ropeType = rp?.rope_type ?? rp?.type ?? 'default';
    if (ropeType !== 'default') p.list.push(`rope type ${JSON.stringify(ropeType)}: only the default RoPE is supported`);
    const theta = (rp?.rope_theta as number | undefined) ?? (raw.rope_theta as number | undefined) ?? 10000;
    if (typeof theta !== 'number' || !(theta > 0)) p.list.push(`rope_theta: expected a positive number, got ${JSON.stringify(theta)}`);
    if (raw.pretraining_tp !== undefined && raw.pretraining_tp !== 1) p.list.push(`pretraining_tp: only 1 is supported, got ${JSON.stringify(raw.pretraining_tp)}`);
    cfg = {
      family: 'llama',
      vocabSize: p.num(raw, 'vocab_size', { int: true, min: 1 }),
      hidden,
      layers: p.num(raw, 'num_hidden_layers', { int: true, min: 1 }),
      heads,
      kvHeads,
      headDim: p.num(raw, 'head_dim', { int: true, min: 1, dflt: hidden / heads }),
      ffn: p.num(raw, 'intermediate_size', { int: true, min: 1 }),
      maxPositions: p.num(raw, 'max_position_embeddings', { int: true, min: 1, dflt: 2048 }),
      norm: 'rmsnorm',
      normEps: p.num(raw, 'rms_norm_eps', { min: 0, dflt: 1e-6 }),
      preNorm: true,
      finalNorm: true,
      activation: 'swiglu',
      positions: 'rope',
      positionOffset: 0,
      ropeTheta: theta,
      embedProjDim: null,
      tiedLmHead: raw.tie_word_embeddings === true,
      attnBias: raw.attention_bias === true,
      mlpBias: raw.mlp_bias === true,
      bosTokenId: idOrNull(raw.bos_token_id ?? 1),
      eosTokenId: idOrNull(raw.eos_token_id ?? 2),
      padTokenId: idOrNull(raw.pad_token_id),
    };
  } else {
    throw new UserError(`unsupported model_type ${JSON.stringify(mt)} in ${where}`, 'supported model families: opt (OPTForCausalLM), llama (LlamaForCausalLM)');
  }
  if (p.list.length) throw new UserError(`unsupported or invalid config in ${where}:\n  - ${p.list.join('\n  - ')}`, 'fix config.json or use a supported checkpoint');
  if (cfg.headDim % 2 !== 0 && cfg.positions === 'rope') throw new UserError(`head_dim ${cfg.headDim} must be even for RoPE (${where})`);
  return cfg;
}

/** Forward FLOPs per token (matmuls only, 2 per multiply-add), excluding attention over the context. */
export function denseLayerFlopsPerToken(c: ModelConfig): { attn: number; mlp: number } {
  const qo = 2 * c.hidden * c.heads * c.headDim * 2;
  const kv = 2 * c.hidden * c.kvHeads * c.headDim * 2;
  const mlp = 2 * c.hidden * c.ffn * (c.activation === 'swiglu' ? 3 : 2);
  return { attn: qo + kv, mlp };
}
