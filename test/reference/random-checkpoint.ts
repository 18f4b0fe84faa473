/**
 * Seeded random tiny OPT / Llama checkpoints in Hugging Face layout (config.json + safetensors, optionally sharded
 * with model.safetensors.index.json), returned alongside the float64 weights exactly as a loader will read them
 * (rounded through F16 / BF16 when that dtype is written).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeSafetensors } from '../../src/checkpoint/safetensors.js';
import { bf16ToF32Array, f16ToF32Array, f32ToBf16Array, f32ToF16Array } from '../../src/util/half.js';
import type { HFConfig, NaiveWeights } from './naive-forward.js';

export interface RandomCkptOptions {
  family: 'opt' | 'llama';
  layers?: number;
  hidden?: number;
  ffn?: number;
  heads?: number;
  /** llama only (default: heads) */
  kvHeads?: number;
  /** llama only (default: hidden / heads) */
  headDim?: number;
  vocab?: number;
  maxPos?: number;
  /** OPT only: do_layer_norm_before (default true) */
  preLN?: boolean;
  /** OPT only: word_embed_proj_dim (default hidden); != hidden adds project_in / project_out */
  wordEmbedProjDim?: number;
  /** tie_word_embeddings (default: OPT true, Llama false) */
  tied?: boolean;
  /** Llama: attention_bias (default false). OPT: enable_bias (all linear biases, default true). */
  attentionBias?: boolean;
  /** Llama only: mlp_bias (default false) */
  mlpBias?: boolean;
  /** Llama only (default 10000) */
  ropeTheta?: number;
  dtype?: 'F32' | 'F16' | 'BF16';
  shardCount?: number;
  seed?: number;
}

/** mulberry32 uniform [0, 1) */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Box-Muller standard normals from a uniform source */
function gaussian(u: () => number): () => number {
  let spare: number | undefined;
  return () => {
    if (spare !== undefined) { const s = spare; spare = undefined; return s; }
    let u1 = u();
    while (u1 <= 1e-300) u1 = u();
    const u2 = u();
    const r = Math.sqrt(-2 * Math.log(u1));
    spare = r * Math.sin(2 * Math.PI * u2);
    return r * Math.cos(2 * Math.PI * u2);
  };
}

interface Spec { name: string; shape: number[]; mean: number; std: number }

export function makeRandomCheckpoint(dir: string, opts: RandomCkptOptions): { config: HFConfig; weights: NaiveWeights } {
  const L = opts.layers ?? 2;
  const d = opts.hidden ?? 32;
  const H = opts.heads ?? 4;
  const V = opts.vocab ?? 64;
  const maxPos = opts.maxPos ?? 64;
  const dtype = opts.dtype ?? 'F32';
  const seed = opts.seed ?? 1234;
  const specs: Spec[] = [];
  const mat = (name: string, out: number, inn: number, gain = 0.7) => specs.push({ name, shape: [out, inn], mean: 0, std: gain / Math.sqrt(inn) });
  const vec = (name: string, n: number, mean: number, std: number) => specs.push({ name, shape: [n], mean, std });
  let config: HFConfig;

  if (opts.family === 'opt') {
    if (d % H !== 0) throw new Error('makeRandomCheckpoint: hidden not divisible by heads');
    const ffn = opts.ffn ?? 4 * d;
    const proj = opts.wordEmbedProjDim ?? d;
    const preLN = opts.preLN ?? true;
    const tied = opts.tied ?? true;
    const bias = opts.attentionBias ?? true;
    config = {
      _remove_final_layer_norm: false,
      activation_function: 'relu',
      architectures: ['OPTForCausalLM'],
      attention_dropout: 0.0,
      bos_token_id: 2,
      do_layer_norm_before: preLN,
      dropout: 0.0,
      dtype: dtype === 'F32' ? 'float32' : dtype === 'F16' ? 'float16' : 'bfloat16',
      enable_bias: bias,
      eos_token_id: 2,
      ffn_dim: ffn,
      hidden_size: d,
      init_std: 0.02,
      layer_norm_elementwise_affine: true,
      layerdrop: 0.0,
      max_position_embeddings: maxPos,
      model_type: 'opt',
      num_attention_heads: H,
      num_hidden_layers: L,
      pad_token_id: 1,
      tie_word_embeddings: tied,
      transformers_version: '5.17.0',
      use_cache: true,
      vocab_size: V,
      word_embed_proj_dim: proj,
    };
    const p = 'model.decoder.';
    specs.push({ name: p + 'embed_tokens.weight', shape: [V, proj], mean: 0, std: 0.5 });
    specs.push({ name: p + 'embed_positions.weight', shape: [maxPos + 2, d], mean: 0, std: 0.5 });
    if (proj !== d) {
      mat(p + 'project_in.weight', d, proj, 1);
      mat(p + 'project_out.weight', proj, d, 1);
    }
    if (preLN) { vec(p + 'final_layer_norm.weight', d, 1, 0.1); vec(p + 'final_layer_norm.bias', d, 0, 0.05); }
    for (let l = 0; l < L; l++) {
      const lp = `${p}layers.${l}.`;
      for (const n of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) {
        mat(`${lp}self_attn.${n}.weight`, d, d, n === 'q_proj' || n === 'k_proj' ? 1.5 : 0.7);
        if (bias) vec(`${lp}self_attn.${n}.bias`, d, 0, 0.05);
      }
      vec(lp + 'self_attn_layer_norm.weight', d, 1, 0.1); vec(lp + 'self_attn_layer_norm.bias', d, 0, 0.05);
      mat(lp + 'fc1.weight', ffn, d, 1); if (bias) vec(lp + 'fc1.bias', ffn, 0, 0.05);
      mat(lp + 'fc2.weight', d, ffn, 1); if (bias) vec(lp + 'fc2.bias', d, 0, 0.05);
      vec(lp + 'final_layer_norm.weight', d, 1, 0.1); vec(lp + 'final_layer_norm.bias', d, 0, 0.05);
    }
    if (!tied) mat('lm_head.weight', V, proj, 1);
  } else {
    const KV = opts.kvHeads ?? H;
    const hd = opts.headDim ?? d / H;
    if (!Number.isInteger(hd) || hd % 2 !== 0) throw new Error('makeRandomCheckpoint: head_dim must be an even integer');
    if (H % KV !== 0) throw new Error('makeRandomCheckpoint: heads not divisible by kvHeads');
    const ffn = opts.ffn ?? 3 * d;
    const tied = opts.tied ?? false;
    const ab = opts.attentionBias ?? false;
    const mb = opts.mlpBias ?? false;
    config = {
      architectures: ['LlamaForCausalLM'],
      attention_bias: ab,
      attention_dropout: 0.0,
      bos_token_id: 1,
      dtype: dtype === 'F32' ? 'float32' : dtype === 'F16' ? 'float16' : 'bfloat16',
      eos_token_id: 2,
      head_dim: hd,
      hidden_act: 'silu',
      hidden_size: d,
      initializer_range: 0.02,
      intermediate_size: ffn,
      max_position_embeddings: maxPos,
      mlp_bias: mb,
      model_type: 'llama',
      num_attention_heads: H,
      num_hidden_layers: L,
      num_key_value_heads: KV,
      pad_token_id: null,
      pretraining_tp: 1,
      rms_norm_eps: 1e-6,
      rope_parameters: { rope_theta: opts.ropeTheta ?? 10000, rope_type: 'default' },
      tie_word_embeddings: tied,
      transformers_version: '5.17.0',
      use_cache: true,
      vocab_size: V,
    };
    const p = 'model.';
    specs.push({ name: p + 'embed_tokens.weight', shape: [V, d], mean: 0, std: 0.5 });
    for (let l = 0; l < L; l++) {
      const lp = `${p}layers.${l}.`;
      vec(lp + 'input_layernorm.weight', d, 1, 0.1);
      mat(lp + 'self_attn.q_proj.weight', H * hd, d, 1.5); if (ab) vec(lp + 'self_attn.q_proj.bias', H * hd, 0, 0.05);
      mat(lp + 'self_attn.k_proj.weight', KV * hd, d, 1.5); if (ab) vec(lp + 'self_attn.k_proj.bias', KV * hd, 0, 0.05);
      mat(lp + 'self_attn.v_proj.weight', KV * hd, d); if (ab) vec(lp + 'self_attn.v_proj.bias', KV * hd, 0, 0.05);
      mat(lp + 'self_attn.o_proj.weight', d, H * hd); if (ab) vec(lp + 'self_attn.o_proj.bias', d, 0, 0.05);
      vec(lp + 'post_attention_layernorm.weight', d, 1, 0.1);
      mat(lp + 'mlp.gate_proj.weight', ffn, d, 1.5); if (mb) vec(lp + 'mlp.gate_proj.bias', ffn, 0, 0.05);
      mat(lp + 'mlp.up_proj.weight', ffn, d, 1); if (mb) vec(lp + 'mlp.up_proj.bias', ffn, 0, 0.05);
      mat(lp + 'mlp.down_proj.weight', d, ffn); if (mb) vec(lp + 'mlp.down_proj.bias', d, 0, 0.05);
    }
    vec(p + 'norm.weight', d, 1, 0.1);
    if (!tied) mat('lm_head.weight', V, d, 1);
  }

  // sample, round through the stored dtype
  const rnd = gaussian(mulberry32(seed));
  const weights: NaiveWeights = new Map();
  const toWrite: { name: string; shape: number[]; f32: Float32Array; bytes: number }[] = [];
  for (const s of specs) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    let f32: Float32Array = new Float32Array(n);
    for (let i = 0; i < n; i++) f32[i] = s.mean + s.std * rnd();
    if (dtype === 'F16') f32 = f16ToF32Array(f32ToF16Array(f32));
    else if (dtype === 'BF16') f32 = bf16ToF32Array(f32ToBf16Array(f32));
    weights.set(s.name, { shape: [...s.shape], data: Float64Array.from(f32) });
    toWrite.push({ name: s.name, shape: s.shape, f32, bytes: n * (dtype === 'F32' ? 4 : 2) });
  }

  // write
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 2) + '\n');
  const gen = opts.family === 'opt'
    ? { bos_token_id: 2, eos_token_id: 2, pad_token_id: 1, transformers_version: '5.17.0' }
    : { bos_token_id: 1, eos_token_id: 2, transformers_version: '5.17.0' };
  fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify(gen, null, 2) + '\n');
  const shards = Math.max(1, opts.shardCount ?? 1);
  const record = (group: typeof toWrite) =>
    Object.fromEntries(group.map((t) => [t.name, { dtype, shape: t.shape, data: t.f32 }] as const));
  if (shards === 1) {
    writeSafetensors(path.join(dir, 'model.safetensors'), record(toWrite), { format: 'pt' });
  } else {
    if (shards > toWrite.length) throw new Error(`makeRandomCheckpoint: ${shards} shards for ${toWrite.length} tensors`);
    // contiguous groups of about equal byte size, each non-empty
    const total = toWrite.reduce((a, t) => a + t.bytes, 0);
    const groups: (typeof toWrite)[] = Array.from({ length: shards }, () => []);
    let acc = 0, k = 0;
    toWrite.forEach((t, i) => {
      const left = toWrite.length - i; // tensors not yet placed, this one included
      if (groups[k]!.length > 0 && k < shards - 1 && (acc >= ((k + 1) * total) / shards || left <= shards - 1 - k)) k++;
      groups[k]!.push(t);
      acc += t.bytes;
    });
    const pad = (k: number) => String(k).padStart(5, '0');
    const weightMap: Record<string, string> = {};
    groups.forEach((group, k) => {
      const file = `model-${pad(k + 1)}-of-${pad(shards)}.safetensors`;
      writeSafetensors(path.join(dir, file), record(group), { format: 'pt' });
      for (const t of group) weightMap[t.name] = file;
    });
    const sorted = Object.fromEntries(Object.keys(weightMap).sort().map((k) => [k, weightMap[k]!]));
    const totalParams = toWrite.reduce((a, t) => a + t.f32.length, 0);
    const index = { metadata: { total_parameters: totalParams, total_size: total }, weight_map: sorted };
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index, null, 2) + '\n');
  }
  return { config, weights };
}
