/**
 * What the family files share: reading config.json values (every problem collected, reported at once), the RoPE
 * parameters of every HF dialect, refusing math-changing keys by name, and the tensor-role helpers (per-layer
 * tables, fused-tensor splits).
 */
import type { Act, ModelConfig, RopeScaling, WeightPart, WeightSpec } from './types.js';

import { Problems, type Raw } from './problems.js';

export { Problems, type Raw };

export function idOrNull(v: unknown): number | null {
  if (Array.isArray(v)) v = v[0];
  return typeof v === 'number' && Number.isInteger(v) ? v : null;
}

/** HF activation names (ACT2FN) -> ours; swish is silu. */
const ACTS: Record<string, Act> = { relu: 'relu', fatrelu: 'fatrelu', silu: 'silu', swish: 'silu', gelu: 'gelu', gelu_new: 'gelu_tanh', gelu_pytorch_tanh: 'gelu_tanh', gelu_fast: 'gelu_tanh' };
export function actOf(p: Problems, key: string, v: unknown): Act {
  const a = typeof v === 'string' ? ACTS[v] : undefined;
  if (!a) { p.push(`${key}: activation ${JSON.stringify(v)} is not supported (supported: ${Object.keys(ACTS).join(', ')})`); return 'relu'; }
  return a;
}

/** the sparsity stages' MLP kind of an activation (see ModelConfig.activation) */
export function mlpKind(act: Act, gated: boolean): ModelConfig['activation'] {
  return act === 'relu' || act === 'fatrelu' ? 'relu' : gated ? 'swiglu' : 'gelu';
}

/** Mixture-of-experts keys: a dense MLP per layer is all the house computes. */
const MOE_KEYS = ['num_experts', 'num_local_experts', 'n_routed_experts', 'moe_intermediate_size', 'num_experts_per_tok'];
export function refuseMoe(raw: Raw, p: Problems): void {
  for (const k of MOE_KEYS) if (raw[k] !== undefined && raw[k] !== null && raw[k] !== 0) p.push(`${k}: mixture-of-experts MLPs are not supported (only dense MLPs)`);
}

export const ROPE_TYPES = ['default', 'linear', 'dynamic', 'yarn', 'llama3'] as const;

/**
 * RoPE of a config: theta, rotated dims, scaling. transformers >= 5 writes `rope_parameters` (with rope_theta and
 * partial_rotary_factor inside), older configs `rope_scaling` + top-level `rope_theta` / `partial_rotary_factor`.
 * `partial`: whether the family's HF code applies a partial rotary factor (else a factor != 1 is refused);
 * `legacy`: the family's own older names (GPT-NeoX rotary_pct / rotary_emb_base).
 */
export function ropeOf(raw: Raw, p: Problems, headDim: number, maxPositions: number, o: { partial: boolean; thetaDflt?: number; legacyTheta?: string; legacyPartial?: string }):
  { theta: number; dim: number; scaling: RopeScaling | null } {
  const rpKey = raw.rope_parameters !== undefined && raw.rope_parameters !== null ? 'rope_parameters' : 'rope_scaling';
  const rp = (raw[rpKey] ?? null) as Raw | null;
  if (rp !== null && (typeof rp !== 'object' || Array.isArray(rp))) { p.push(`${rpKey}: expected an object, got ${JSON.stringify(rp)}`); return { theta: NaN, dim: headDim, scaling: null }; }
  const type = (rp?.rope_type ?? rp?.type ?? 'default') as string;
  const theta = (rp?.rope_theta ?? raw.rope_theta ?? (o.legacyTheta ? raw[o.legacyTheta] : undefined) ?? o.thetaDflt ?? 10000) as number;
  if (typeof theta !== 'number' || !(theta > 0)) p.push(`rope_theta: expected a positive number, got ${JSON.stringify(theta)}`);
  const prf = (rp?.partial_rotary_factor ?? raw.partial_rotary_factor ?? (o.legacyPartial ? raw[o.legacyPartial] : undefined) ?? 1) as number;
  if (typeof prf !== 'number' || !(prf > 0 && prf <= 1)) p.push(`partial_rotary_factor: expected a number in (0, 1], got ${JSON.stringify(prf)}`);
  else if (prf !== 1 && !o.partial) p.push(`partial_rotary_factor: ${prf} is not supported for this family (its Hugging Face code rotates every dim)`);
  const dim = Math.floor(headDim * (typeof prf === 'number' ? prf : 1));
  if (dim % 2 !== 0) p.push(`rotary dims ${dim} (head_dim ${headDim} x partial_rotary_factor ${prf}) must be even`);
  if (!(ROPE_TYPES as readonly string[]).includes(type)) {
    p.push(`${rpKey}.rope_type ${JSON.stringify(type)} is not supported (supported: ${ROPE_TYPES.join(', ')})`);
    return { theta, dim, scaling: null };
  }
  if (type === 'default') return { theta, dim, scaling: null };
  const num = (k: string, dflt?: number) => {
    const v = rp![k] ?? dflt;
    if (typeof v !== 'number' || !Number.isFinite(v)) { p.push(`${rpKey}.${k}: expected a number for rope_type ${type}, got ${JSON.stringify(v)}`); return NaN; }
    return v;
  };
  const factor = num('factor');
  if (!(factor >= 1) && type !== 'linear') p.push(`${rpKey}.factor: expected >= 1, got ${factor}`);
  const s: RopeScaling = { type: type as RopeScaling['type'], factor, attentionFactor: 1 };
  if (type === 'llama3') {
    s.lowFreqFactor = num('low_freq_factor'); s.highFreqFactor = num('high_freq_factor'); s.originalMax = num('original_max_position_embeddings');
  } else if (type === 'yarn') {
    const orig = (rp!.original_max_position_embeddings ?? raw.original_max_position_embeddings ?? maxPositions) as number;
    s.originalMax = orig;
    // transformers: with an explicit original context the factor becomes max_position_embeddings / that context
    // (for the frequencies and the default attention factor alike)
    const f = rp!.original_max_position_embeddings !== undefined ? maxPositions / orig : factor;
    s.factor = f;
    const mscale = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
    const af = rp!.attention_factor as number | undefined, ms = rp!.mscale as number | undefined, msa = rp!.mscale_all_dim as number | undefined;
    s.attentionFactor = typeof af === 'number' ? af : ms && msa ? mscale(f, ms) / mscale(f, msa) : mscale(f);
    s.betaFast = (rp!.beta_fast as number | undefined) ?? 32; s.betaSlow = (rp!.beta_slow as number | undefined) ?? 1;
    s.truncate = rp!.truncate !== false;
  } else if (type === 'dynamic') {
    s.originalMax = maxPositions;
  }
  return { theta, dim, scaling: s };
}

/**
 * Per-layer sliding windows from `layer_types` (transformers >= 4.53: 'sliding_attention' | 'full_attention') or,
 * without it, `dflt(i)` (the family's own rule).
 */
export function windowsOf(raw: Raw, p: Problems, layers: number, window: number | null, dflt: (i: number) => boolean): (number | null)[] {
  const lt = raw.layer_types;
  if (Array.isArray(lt)) {
    if (lt.length !== layers) p.push(`layer_types: ${lt.length} entries for ${layers} layers`);
    const bad = lt.find((t) => t !== 'sliding_attention' && t !== 'full_attention');
    if (bad !== undefined) p.push(`layer_types: ${JSON.stringify(bad)} is not supported (supported: sliding_attention, full_attention)`);
    if (lt.includes('sliding_attention') && window === null) p.push('layer_types: sliding_attention layers need sliding_window');
    return Array.from({ length: layers }, (_, i) => (lt[i] === 'sliding_attention' ? window : null));
  }
  return Array.from({ length: layers }, (_, i) => (window !== null && dflt(i) ? window : null));
}

/** a window from config.json: null / absent = none */
export function windowOf(raw: Raw, p: Problems, key = 'sliding_window'): number | null {
  const v = raw[key];
  if (v === undefined || v === null) return null;
  return p.num(raw, key, { int: true, min: 1 });
}

type Row = [hf: string, ours: string, shape: (c: ModelConfig) => number[], transpose: boolean, when?: (c: ModelConfig) => boolean, extra?: Partial<WeightSpec>];
export type { Row as TableRow };

/** A family's table -> specs: `global` rows as they are, `layer` rows once per layer under `layerPrefix + i + '.'`. */
export function table(c: ModelConfig, global: Row[], layerPrefix: string, layer: Row[]): WeightSpec[] {
  const out: WeightSpec[] = [];
  const add = (key: string, name: string, r: Row) => {
    if (r[4] && !r[4](c)) return;
    const extra = r[5] ?? {};
    const parts = extra.parts?.map((pt) => ({ ...pt, name: name.replace(/[^.]+$/, '') + pt.name }));
    out.push({ key, shape: r[2](c), transpose: r[3], ...extra, ...(parts ? { parts } : { name }) });
  };
  for (const r of global) add(r[0], r[1], r);
  for (let i = 0; i < c.layers; i++) for (const r of layer) add(`${layerPrefix}${i}.${r[0]}`, `layers.${i}.${r[1]}`, r);
  return out;
}

const range = (from: number, n: number) => Array.from({ length: n }, (_, j) => from + j);

/** parts taken one after another: [q | k | v] (Phi-3 qkv_proj, GPT-2 c_attn, Falcon multi-query) */
export function concatParts(sizes: [name: string, n: number][]): WeightPart[] {
  let o = 0;
  return sizes.map(([name, n]) => { const rows = range(o, n); o += n; return { name, rows }; });
}

/**
 * Interleaved fused QKV: the output axis is `groups` groups, each holding `perGroup` blocks of hd; block j of a
 * group belongs to part `owner(j)`. GPT-NeoX / BLOOM / Falcon (no MQA): groups = heads, [q, k, v] per head;
 * Falcon's new layout: groups = kv heads, [q x H/KV, k, v].
 */
export function interleavedParts(groups: number, hd: number, blocks: string[]): WeightPart[] {
  const names = [...new Set(blocks)];
  const rows = new Map(names.map((n) => [n, [] as number[]]));
  const per = blocks.length * hd;
  for (let g = 0; g < groups; g++) blocks.forEach((n, j) => rows.get(n)!.push(...range(g * per + j * hd, hd)));
  return names.map((name) => ({ name, rows: rows.get(name)! }));
}

/** The config defaults every family starts from (Llama-like; family files override). */
export function base(): Omit<ModelConfig, 'family' | 'vocabSize' | 'hidden' | 'layers' | 'heads' | 'kvHeads' | 'headDim' | 'ffn' | 'maxPositions'> {
  return {
    norm: 'rmsnorm', normEps: 1e-6, preNorm: true, finalNorm: true, activation: 'swiglu', act: 'silu', actThreshold: 0, gated: true,
    positions: 'rope', positionOffset: 0, ropeTheta: 10000, ropeDim: 0, ropeScaling: null, block: 'sequential', sharedNorm: false, sandwichNorm: false,
    qkNorm: false, attnScale: NaN, attnSoftcap: null, finalSoftcap: null, windows: [], embedScale: null, embedNorm: false, embedProjDim: null,
    tiedLmHead: false, attnBias: false, mlpBias: false, bosTokenId: null, eosTokenId: null, padTokenId: null,
  };
}
