/**
 * Predictors folder: predictors.json (sealed, util/seal) + layer-LL.safetensors + train-log.jsonl.
 * Tensor names (nn.Linear convention, weight [out, in]):
 *   mlp.fc1.weight [r, d], mlp.fc1.bias [r], mlp.fc2.weight [F, r], mlp.fc2.bias [F]
 *   heads.fc1.weight [rh, d], heads.fc1.bias [rh], heads.fc2.weight [H, rh], heads.fc2.bias [H]
 *   mlp.up.fc1.weight ... (SwiGLU closed form: the up projection's predictor; mlp.* is then the gate's)
 * logits = fc2(act(fc1(x))), act = identity or relu (see predictors.json); dense / exact MLP modes have no tensors.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { fingerprintSchema, type Fingerprint } from '../checkpoint/checkpoint.js';
import { modelConfigSchema, type ModelConfig } from '../model/config.js';
import { parseArtifact, readJson, writeArtifact } from '../util/json-artifact.js';
import { checkSeal } from '../util/seal.js';
import { openSafetensors, readTensorF32, writeSafetensors, type TensorToWrite } from '../checkpoint/safetensors.js';
import { UserError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fsx.js';
import type { Metrics, SelectionRule } from './metrics.js';
import type { HostPredictor } from './predictor.js';
import type { LabelRule, LayerResult } from './train-layer.js';
import type { MlpCandidate } from './fit-mlp.js';

/** 2: MLP entries carry family / score / costShare / candidates; closed-form inputs are h_mlp */
export const PREDICTORS_FORMAT_VERSION = 2;

/** The families whose predictor is a low-rank pair of tensors (dense and exact carry none). */
export function hasLowRankWeights(family: PredictorEntry['family']): boolean {
  return family === 'closed-form' || family === 'dejavu';
}

export interface PredictorEntry {
  /** MLP mode: dense (no predictor), exact (the first projection itself; ReLU), closed-form or dejavu (low-rank) */
  family: 'dense' | 'exact' | 'closed-form' | 'dejavu';
  /** linear: logits = fc2(act(fc1(x))); swiglu: |silu(gate) * up| from two low-rank predictors (mlp.*, mlp.up.*) */
  score: 'linear' | 'swiglu';
  rank: number;
  hidden: 'none' | 'relu';
  /** h_mlp (the MLP block's normalized input), x_attn (this layer's input), x_mlp, or x_attn[layer-1] (lookahead) */
  input: string;
  label: LabelRule;
  /** null for the dense mode */
  rule: SelectionRule | null;
  validation: Metrics & { magnitudeRecall?: number };
  flopShare: number;
  costShare?: number;
  epochs: number;
  candidates?: (MlpCandidate & { chosen: boolean })[];
}

export interface PredictorsManifest {
  formatVersion: number;
  kind: 'dejavu-predictors';
  toolVersion: string;
  identity: string;
  config: unknown;
  activations: { dir: string; manifestSha256: string; tokens: number };
  model: { fingerprint: Fingerprint; config: ModelConfig };
  /** jobsPerWorker: jobs each worker thread finished; mainThreadJobs: MLP-fit jobs this thread ran while they started (both absent in-process) */
  training: { seconds: number; workers: number; samplesPerSecond: number; jobsPerWorker?: number[]; mainThreadJobs?: number };
  layers: { layer: number; file: string; seconds: number; mlp?: PredictorEntry; heads?: PredictorEntry }[];
}

function entry(r: NonNullable<LayerResult['mlp']>): PredictorEntry {
  return {
    family: r.family, score: r.score, rank: r.rank, hidden: r.host?.hidden ?? 'none', input: r.input, label: r.label, rule: r.rule, validation: r.validation, flopShare: r.flopShare,
    ...(r.costShare !== undefined ? { costShare: r.costShare } : {}), epochs: r.epochs, ...(r.candidates ? { candidates: r.candidates } : {}),
  };
}

function tensors(prefix: string, h: HostPredictor): Record<string, TensorToWrite> {
  return {
    [`${prefix}.fc1.weight`]: { dtype: 'F32', shape: [h.r, h.d], data: h.fc1Weight },
    [`${prefix}.fc1.bias`]: { dtype: 'F32', shape: [h.r], data: h.fc1Bias },
    [`${prefix}.fc2.weight`]: { dtype: 'F32', shape: [h.out, h.r], data: h.fc2Weight },
    [`${prefix}.fc2.bias`]: { dtype: 'F32', shape: [h.out], data: h.fc2Bias },
  };
}

/** Write every layer file, the log, then predictors.json last (its presence marks the folder complete). */
export function writePredictors(out: string, manifest: PredictorsManifest, results: LayerResult[]): void {
  fs.mkdirSync(out, { recursive: true });
  fs.rmSync(path.join(out, 'predictors.json'), { force: true });
  for (const r of results) {
    const file = `layer-${String(r.layer).padStart(2, '0')}.safetensors`;
    const t: Record<string, TensorToWrite> = {
      ...(r.mlp?.host ? tensors('mlp', r.mlp.host) : {}), ...(r.mlp?.hostUp ? tensors('mlp.up', r.mlp.hostUp) : {}), ...(r.heads?.host ? tensors('heads', r.heads.host) : {}),
    };
    writeSafetensors(path.join(out, file), t, { format: 'pt', layer: String(r.layer) });
    manifest.layers.push({ layer: r.layer, file, seconds: r.seconds, ...(r.mlp ? { mlp: entry(r.mlp) } : {}), ...(r.heads ? { heads: entry(r.heads) } : {}) });
  }
  writeFileAtomic(path.join(out, 'train-log.jsonl'), results.flatMap((r) => r.log).map((e) => JSON.stringify(e)).join('\n') + '\n');
  writeArtifact(predictorsManifestSchema, manifest, path.join(out, 'predictors.json'), 'predictors manifest', { seal: true });
}

const nat = z.number().int().nonnegative();
const rate = z.number().min(0).max(1);
/** a threshold calibrated on no positives is +Infinity, which JSON writes as null */
const selectionRuleSchema = z.union([z.looseObject({ kind: z.literal('topk'), k: nat }), z.looseObject({ kind: z.literal('threshold'), value: z.number().nullable() })]);
const labelRuleSchema = z.union([z.looseObject({ kind: z.literal('active') }), z.looseObject({ kind: z.enum(['topFraction', 'threshold']), value: z.number().positive() })]);
/** one site's entry; optional fields may be added by newer writers (objects are loose), candidates are checked lightly */
export const predictorEntrySchema = z.looseObject({
  family: z.enum(['dense', 'exact', 'closed-form', 'dejavu']),
  score: z.enum(['linear', 'swiglu']),
  rank: nat,
  hidden: z.enum(['none', 'relu']),
  input: z.string(),
  label: labelRuleSchema,
  rule: selectionRuleSchema.nullable(),
  validation: z.looseObject({ recall: rate, precision: rate, f1: rate, predictedDensity: rate, trueDensity: rate, magnitudeRecall: rate.optional() }),
  flopShare: z.number().nonnegative(),
  costShare: z.number().nonnegative().optional(),
  epochs: nat,
  candidates: z.array(z.looseObject({ family: z.string(), chosen: z.boolean() })).optional(),
});
/** predictors.json as read back (kind and formatVersion are checked first, with their own message) */
export const predictorsManifestSchema = z.looseObject({
  formatVersion: z.literal(PREDICTORS_FORMAT_VERSION),
  kind: z.literal('dejavu-predictors'),
  toolVersion: z.string(),
  identity: z.string(),
  config: z.unknown(),
  activations: z.looseObject({ dir: z.string(), manifestSha256: z.string().regex(/^[0-9a-f]{64}$/, 'expected a sha256 (64 hex digits)'), tokens: nat }),
  model: z.looseObject({ fingerprint: fingerprintSchema, config: modelConfigSchema }),
  training: z.looseObject({ seconds: z.number().nonnegative(), workers: nat, samplesPerSecond: z.number().nonnegative() }),
  layers: z.array(z.looseObject({
    layer: nat,
    file: z.string().regex(/^[^/\\]+\.safetensors$/, 'expected a file name in the predictors folder'),
    seconds: z.number().nonnegative(),
    mlp: predictorEntrySchema.optional(),
    heads: predictorEntrySchema.optional(),
  })),
  /** the file's seal (util/seal): sha256 of its canonical JSON less this field; an edited predictors.json is refused */
  sealSha256: z.string().regex(/^[0-9a-f]{64}$/),
});

const RETRAIN = 're-run train-predictors';

export function readPredictorsManifest(dir: string): PredictorsManifest {
  const f = path.join(dir, 'predictors.json');
  if (!fs.existsSync(f)) throw new UserError(`${dir} is not a predictors folder (no predictors.json)`, 'pass a folder written by `dejavu train-predictors`');
  const raw = readJson(f, RETRAIN) as Partial<PredictorsManifest> | null;
  if (raw?.kind !== 'dejavu-predictors' || raw.formatVersion !== PREDICTORS_FORMAT_VERSION)
    throw new UserError(`${f}: not a predictors manifest of format ${PREDICTORS_FORMAT_VERSION}`, RETRAIN);
  checkSeal(raw, f, RETRAIN);
  return parseArtifact(predictorsManifestSchema, raw, f, 'predictors manifest', RETRAIN) as unknown as PredictorsManifest;
}

export function loadHostPredictor(dir: string, file: string, prefix: 'mlp' | 'mlp.up' | 'heads', hidden: 'none' | 'relu'): HostPredictor {
  const st = openSafetensors(path.join(dir, file));
  const w1 = st.tensors.get(`${prefix}.fc1.weight`), w2 = st.tensors.get(`${prefix}.fc2.weight`);
  if (!w1 || !w2) throw new UserError(`${file} lacks the ${prefix} predictor tensors`);
  const [r, d] = w1.shape as [number, number];
  const out = w2.shape[0]!;
  return { fc1Weight: readTensorF32(st, `${prefix}.fc1.weight`), fc1Bias: readTensorF32(st, `${prefix}.fc1.bias`), fc2Weight: readTensorF32(st, `${prefix}.fc2.weight`), fc2Bias: readTensorF32(st, `${prefix}.fc2.bias`), d, r, out, hidden };
}
