/**
 * Hugging Face weight names -> our typed weight records, one table per model family. Every expected key has a
 * shape derived from the normalized config; unknown, missing or mis-shaped keys are errors naming the key and both
 * shapes. `transpose` marks nn.Linear weights ([out, in] in HF) that we lay out as [in, out] once at load, so the
 * forward pass never multiplies by a transposed operand (tfjs-wasm is ~15x slower then).
 */
import type { ModelConfig } from './config.js';

export interface WeightSpec {
  /** HF key */
  key: string;
  /** our name: 'embed', 'layers.3.wq', ... */
  name: string;
  /** expected HF shape */
  shape: number[];
  transpose: boolean;
}

type Entry = [hfSuffix: string, ours: string, shape: (c: ModelConfig) => number[], transpose: boolean, when?: (c: ModelConfig) => boolean];

const optGlobal: Entry[] = [
  ['model.decoder.embed_tokens.weight', 'embed', (c) => [c.vocabSize, c.embedProjDim ?? c.hidden], false],
  ['model.decoder.embed_positions.weight', 'pos', (c) => [c.maxPositions + c.positionOffset, c.hidden], false],
  ['model.decoder.project_in.weight', 'projIn', (c) => [c.hidden, c.embedProjDim!], true, (c) => c.embedProjDim !== null],
  ['model.decoder.project_out.weight', 'projOut', (c) => [c.embedProjDim!, c.hidden], true, (c) => c.embedProjDim !== null],
  ['model.decoder.final_layer_norm.weight', 'finalNorm.g', (c) => [c.hidden], false, (c) => c.finalNorm],
  ['model.decoder.final_layer_norm.bias', 'finalNorm.b', (c) => [c.hidden], false, (c) => c.finalNorm],
  ['lm_head.weight', 'lmHead', (c) => [c.vocabSize, c.embedProjDim ?? c.hidden], true, (c) => !c.tiedLmHead],
];
const optLayer: Entry[] = [
  ['self_attn_layer_norm.weight', 'ln1.g', (c) => [c.hidden], false],
  ['self_attn_layer_norm.bias', 'ln1.b', (c) => [c.hidden], false],
  ['self_attn.q_proj.weight', 'wq', (c) => [c.hidden, c.hidden], true],
  ['self_attn.q_proj.bias', 'bq', (c) => [c.hidden], false, (c) => c.attnBias],
  ['self_attn.k_proj.weight', 'wk', (c) => [c.hidden, c.hidden], true],
  ['self_attn.k_proj.bias', 'bk', (c) => [c.hidden], false, (c) => c.attnBias],
  ['self_attn.v_proj.weight', 'wv', (c) => [c.hidden, c.hidden], true],
  ['self_attn.v_proj.bias', 'bv', (c) => [c.hidden], false, (c) => c.attnBias],
  ['self_attn.out_proj.weight', 'wo', (c) => [c.hidden, c.hidden], true],
  ['self_attn.out_proj.bias', 'bo', (c) => [c.hidden], false, (c) => c.attnBias],
  ['final_layer_norm.weight', 'ln2.g', (c) => [c.hidden], false],
  ['final_layer_norm.bias', 'ln2.b', (c) => [c.hidden], false],
  ['fc1.weight', 'up', (c) => [c.ffn, c.hidden], true],
  ['fc1.bias', 'upBias', (c) => [c.ffn], false, (c) => c.mlpBias],
  ['fc2.weight', 'down', (c) => [c.hidden, c.ffn], true],
  ['fc2.bias', 'downBias', (c) => [c.hidden], false, (c) => c.mlpBias],
];

const llamaGlobal: Entry[] = [
  ['model.embed_tokens.weight', 'embed', (c) => [c.vocabSize, c.hidden], false],
  ['model.norm.weight', 'finalNorm.g', (c) => [c.hidden], false],
  ['lm_head.weight', 'lmHead', (c) => [c.vocabSize, c.hidden], true, (c) => !c.tiedLmHead],
];
const llamaLayer: Entry[] = [
  ['input_layernorm.weight', 'ln1.g', (c) => [c.hidden], false],
  ['self_attn.q_proj.weight', 'wq', (c) => [c.heads * c.headDim, c.hidden], true],
  ['self_attn.q_proj.bias', 'bq', (c) => [c.heads * c.headDim], false, (c) => c.attnBias],
  ['self_attn.k_proj.weight', 'wk', (c) => [c.kvHeads * c.headDim, c.hidden], true],
  ['self_attn.k_proj.bias', 'bk', (c) => [c.kvHeads * c.headDim], false, (c) => c.attnBias],
  ['self_attn.v_proj.weight', 'wv', (c) => [c.kvHeads * c.headDim, c.hidden], true],
  ['self_attn.v_proj.bias', 'bv', (c) => [c.kvHeads * c.headDim], false, (c) => c.attnBias],
  ['self_attn.o_proj.weight', 'wo', (c) => [c.hidden, c.heads * c.headDim], true],
  ['self_attn.o_proj.bias', 'bo', (c) => [c.hidden], false, (c) => c.attnBias],
  ['post_attention_layernorm.weight', 'ln2.g', (c) => [c.hidden], false],
  ['mlp.gate_proj.weight', 'gate', (c) => [c.ffn, c.hidden], true],
  ['mlp.gate_proj.bias', 'gateBias', (c) => [c.ffn], false, (c) => c.mlpBias],
  ['mlp.up_proj.weight', 'up', (c) => [c.ffn, c.hidden], true],
  ['mlp.up_proj.bias', 'upBias', (c) => [c.ffn], false, (c) => c.mlpBias],
  ['mlp.down_proj.weight', 'down', (c) => [c.hidden, c.ffn], true],
  ['mlp.down_proj.bias', 'downBias', (c) => [c.hidden], false, (c) => c.mlpBias],
];

const TABLES = {
  opt: { global: optGlobal, layer: optLayer, layerPrefix: 'model.decoder.layers.' },
  llama: { global: llamaGlobal, layer: llamaLayer, layerPrefix: 'model.layers.' },
} as const;

/** Keys that may appear in HF checkpoints and carry nothing we need. */
const IGNORABLE = [/\.rotary_emb\.inv_freq$/, /^lm_head\.weight$/];

export function expectedWeights(c: ModelConfig): WeightSpec[] {
  const t = TABLES[c.family];
  const out: WeightSpec[] = [];
  for (const [key, name, shape, transpose, when] of t.global) if (!when || when(c)) out.push({ key, name, shape: shape(c), transpose });
  for (let i = 0; i < c.layers; i++)
    for (const [suffix, name, shape, transpose, when] of t.layer)
      if (!when || when(c)) out.push({ key: `${t.layerPrefix}${i}.${suffix}`, name: `layers.${i}.${name}`, shape: shape(c), transpose });
  return out;
}

/** Checkpoints saved from the bare model (OPTModel / LlamaModel, or old OPT dumps) lack the `model.` prefix. */
export function canonicalKey(family: ModelConfig['family'], key: string): string {
  if (family === 'opt' && key.startsWith('decoder.')) return `model.${key}`;
  if (family === 'llama' && (key.startsWith('layers.') || key.startsWith('embed_tokens.') || key.startsWith('norm.'))) return `model.${key}`;
  return key;
}

export function isIgnorable(key: string, expected: Set<string>): boolean {
  return !expected.has(key) && IGNORABLE.some((r) => r.test(key));
}
