/**
 * The architecture registry: every supported family, found by config.json's model_type (or architectures[]),
 * normalized once at the boundary. Nothing outside src/arch/ names a family (test/families.test.ts enforces it).
 */
import { UserError } from '../util/errors.js';
import { Problems, refuseMoe, type Raw } from './common.js';
import { bloom } from './bloom.js';
import { falcon } from './falcon.js';
import { gemma } from './gemma.js';
import { gemma2 } from './gemma2.js';
import { gpt2 } from './gpt2.js';
import { gptNeox } from './gpt_neox.js';
import { llama } from './llama.js';
import { mistral } from './mistral.js';
import { opt } from './opt.js';
import { phi3 } from './phi3.js';
import { qwen2 } from './qwen2.js';
import { qwen3 } from './qwen3.js';
import type { Arch, ModelConfig, WeightSpec } from './types.js';

export const ARCHS: readonly Arch[] = [opt, llama, mistral, qwen2, qwen3, phi3, gemma, gemma2, gpt2, gptNeox, bloom, falcon];

/** mixture-of-experts families: refused by name (a dense MLP per layer is what the house sparsifies) */
const MOE_TYPES = ['mixtral', 'qwen2_moe', 'qwen3_moe', 'deepseek', 'deepseek_v2', 'deepseek_v3', 'dbrx', 'olmoe', 'phimoe', 'jamba', 'granitemoe', 'jetmoe', 'arctic', 'grok-1'];

const supported = () => ARCHS.map((a) => `${a.modelTypes[0]} (${a.architectures[0]})`).join(', ');

export function archOf(raw: Raw, where: string): Arch {
  const mt = raw.model_type;
  const byType = ARCHS.find((a) => typeof mt === 'string' && a.modelTypes.includes(mt));
  if (byType) return byType;
  if (typeof mt === 'string' && MOE_TYPES.includes(mt))
    throw new UserError(`model_type ${JSON.stringify(mt)} in ${where} is a mixture-of-experts model: not supported (only dense MLPs are sparsified)`, `supported model families: ${supported()}`);
  const archs = Array.isArray(raw.architectures) ? raw.architectures : [];
  const byClass = mt === undefined ? ARCHS.find((a) => archs.some((x) => a.architectures.includes(x as string))) : undefined;
  if (byClass) return byClass;
  throw new UserError(`unsupported model_type ${JSON.stringify(mt)}${archs.length ? ` (architectures ${JSON.stringify(archs)})` : ''} in ${where}`, `supported model families: ${supported()}`);
}

export function archById(id: string): Arch {
  const a = ARCHS.find((x) => x.id === id);
  if (!a) throw new Error(`no architecture ${JSON.stringify(id)} in the registry`);
  return a;
}

/**
 * config.json keys, of any family, that change what a model computes, with the values under which they change
 * nothing. A family that does not implement one (Arch.handles) refuses it by name when it has another value, so no
 * such key is ever ignored.
 */
const MATH_KEYS: Record<string, unknown[]> = {
  sliding_window: [null], use_sliding_window: [false], partial_rotary_factor: [1], rotary_pct: [1], attn_logit_softcapping: [null], final_logit_softcapping: [null],
  query_pre_attn_scalar: [], use_qk_norm: [false], qk_layernorm: [false], use_parallel_residual: [false], parallel_attn: [false], alibi: [false],
  embedding_multiplier: [1], logits_scaling: [1], residual_multiplier: [1], attention_multiplier: [], scale_emb: [1], scale_depth: [], dim_model_base: [],
  clip_qkv: [null], rope_interleave: [false], rotary_interleaved: [false], attention_window_size: [null], cross_attention_hidden_size: [null], is_encoder_decoder: [false],
};

export function normalizeConfig(raw: Raw, where: string): ModelConfig {
  const arch = archOf(raw, where);
  const p = new Problems();
  refuseMoe(raw, p);
  for (const [k, neutral] of Object.entries(MATH_KEYS))
    if (!(arch.handles ?? []).includes(k) && raw[k] !== undefined && raw[k] !== null && !neutral.includes(raw[k]))
      p.push(`${k}: ${JSON.stringify(raw[k])} changes what the model computes and is not implemented for ${arch.id}`);
  const cfg = arch.normalize(raw, p);
  if (cfg.positions === 'rope' && !p.list.length && (cfg.ropeDim === 0 || cfg.ropeDim > cfg.headDim)) cfg.ropeDim = cfg.headDim;
  if (p.list.length)
    throw new UserError(`unsupported or invalid config in ${where}:\n  - ${p.list.join('\n  - ')}`,
      'these settings change what the model computes and are not implemented for this family: use a checkpoint without them (docs/families.md lists what each family supports); never edit them out of config.json, the weights were trained with them');
  if (cfg.positions === 'rope' && cfg.ropeDim % 2 !== 0) throw new UserError(`head_dim ${cfg.headDim} must be even for RoPE (${where})`);
  return cfg;
}

export function expectedWeights(c: ModelConfig): WeightSpec[] { return archById(c.family).weights(c); }

/** Checkpoints saved from the bare model (LlamaModel, GPT2Model, old OPT dumps, ...) lack the family's base prefix. */
export function canonicalKey(c: ModelConfig, key: string, expected: Set<string>): string {
  const pre = archById(c.family).basePrefix;
  return !expected.has(key) && expected.has(pre + key) ? pre + key : key;
}

/** Keys that may appear in HF checkpoints and carry nothing we need. */
const IGNORABLE = [/\.rotary_emb\.inv_freq$/, /^lm_head\.weight$/];
export function isIgnorable(c: ModelConfig, key: string, expected: Set<string>): boolean {
  return !expected.has(key) && [...IGNORABLE, ...(archById(c.family).ignorable ?? [])].some((r) => r.test(key));
}

/**
 * A ModelConfig recorded by an earlier release (before the registry: OPT and Llama only, without the trait fields)
 * -> today's fields with the values those two families had; anything else passes through unchanged (the schema
 * then checks it).
 */
export function upgradeRecordedConfig(v: unknown): unknown {
  if (!v || typeof v !== 'object' || 'act' in v) return v;
  const c = v as Record<string, unknown>;
  const old = c.family === opt.id ? { act: 'relu', gated: false } : c.family === llama.id ? { act: 'silu', gated: true } : null;
  if (!old) return v;
  const hd = c.headDim as number, L = c.layers as number;
  return { ...c, ...old, actThreshold: 0, ropeDim: c.positions === 'rope' ? hd : 0, ropeScaling: null, block: 'sequential', sharedNorm: false, sandwichNorm: false,
    qkNorm: false, attnScale: 1 / Math.sqrt(hd), attnSoftcap: null, finalSoftcap: null, windows: Array.isArray(c.windows) ? c.windows : new Array(L).fill(null),
    embedScale: null, embedNorm: false };
}
