/**
 * Predictors folder: predictors.json (sealed, util/seal) + layer-LL.safetensors + train-log.jsonl.
 * Tensor names (nn.Linear convention, weight [out, in]):
 *   mlp.fc1.weight [r, d], mlp.fc1.bias [r], mlp.fc2.weight [F, r], mlp.fc2.bias [F]
 *   heads.fc1.weight [rh, d], heads.fc1.bias [rh], heads.fc2.weight [H, rh], heads.fc2.bias [H]
 *   mlp.up.fc1.weight ... (SwiGLU closed form: the up projection's predictor; mlp.* is then the gate's)
 * logits = fc2(act(fc1(x))), act = identity or relu (`hiddenActivation` in predictors.json); the dense / exact predictors have no tensors.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { fingerprintSchema } from '../checkpoint/checkpoint.js';
import { modelConfigSchema } from '../model/config.js';
import { parseArtifact, readJson, writeArtifact, type Known } from '../util/json-artifact.js';
import { checkSeal } from '../util/seal.js';
import { openSafetensors, readTensorF32, writeSafetensors, type TensorToWrite } from '../checkpoint/safetensors.js';
import { UserError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fsx.js';
import type { HostPredictor } from './predictor.js';

/** 2: MLP entries carry family / score / costShare / candidates; closed-form inputs are h_mlp. 3: `family` is
 * `predictor` and `hidden` is `hiddenActivation` (one name per concept: family and hidden are the model's); format 2
 * files are read with the old names mapped (renamedOldKeys) */
export const PREDICTORS_FORMAT_VERSION = 3;

/** The predictors whose weights are a low-rank pair of tensors (dense and exact carry none). */
export function hasLowRankWeights(predictor: PredictorKind): boolean {
  return predictor === 'closed-form' || predictor === 'dejavu';
}

function entry(r: PredictorResult): PredictorEntry {
  return {
    predictor: r.predictor, score: r.score, rank: r.rank, hiddenActivation: r.host?.hiddenActivation ?? 'none', input: r.input, label: r.label, rule: r.rule, validation: r.validation, flopShare: r.flopShare,
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
export function writePredictors(out: string, manifest: PredictorsManifest, results: TrainedLayer[]): void {
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
/** a threshold calibrated on no positives is +Infinity, which JSON writes as null (read back as Infinity) */
const selectionRuleSchema = z.union([z.looseObject({ kind: z.literal('topk'), k: nat }), z.looseObject({ kind: z.literal('threshold'), value: z.number().nullable().transform((v) => v ?? Infinity) })]);
const labelRuleSchema = z.union([z.looseObject({ kind: z.literal('active') }), z.looseObject({ kind: z.enum(['topFraction', 'threshold']), value: z.number().positive() })]);
/** how a site's neurons are scored: dense (no predictor: the dense mode), exact (the first projection itself: the lossless mode), closed-form or dejavu (low-rank: the predicted mode) */
export const predictorKindSchema = z.enum(['dense', 'exact', 'closed-form', 'dejavu']);
export type PredictorKind = z.output<typeof predictorKindSchema>;
/** one MLP candidate train-predictors weighed (its validation figures); NaN figures are written as null */
export const candidateSchema = z.looseObject({
  predictor: predictorKindSchema, rank: nat, rule: selectionRuleSchema.nullable(), recall: rate, magnitudeRecall: rate, predictedDensity: rate,
  /** recall of the score's top-k at k = the true (label) density (null: not measured) */
  recallAtTrueDensity: rate.nullable(),
  flopShare: z.number().nonnegative(), costShare: z.number().nonnegative(), fineTuned: z.boolean().optional(), chosen: z.boolean(),
});
export type Candidate = Known<z.output<typeof candidateSchema>>;
/** one site's entry; optional fields may be added by newer writers (objects are loose) */
export const predictorEntrySchema = z.looseObject({
  predictor: predictorKindSchema,
  /** linear: logits = fc2(act(fc1(x))); swiglu: |silu(gate) * up| from two low-rank predictors (mlp.*, mlp.up.*) */
  score: z.enum(['linear', 'swiglu']),
  rank: nat,
  /** act between fc1 and fc2 */
  hiddenActivation: z.enum(['none', 'relu']),
  /** h_mlp (the MLP block's normalized input), x_attn (this layer's input), x_mlp, or x_attn[layer-1] (lookahead) */
  input: z.string(),
  label: labelRuleSchema,
  /** null for the dense mode */
  rule: selectionRuleSchema.nullable(),
  validation: z.looseObject({ recall: rate, precision: rate, f1: rate, predictedDensity: rate, trueDensity: rate, magnitudeRecall: rate.optional() }),
  /** predictor FLOPs / dense layer FLOPs (heads) or / dense MLP FLOPs (MLP), per token */
  flopShare: z.number().nonnegative(),
  /** MLP: estimated MLP cost / dense MLP cost (predictor + predicted density x MLP) */
  costShare: z.number().nonnegative().optional(),
  epochs: nat,
  /** MLP: every candidate mode tried for this layer, with its calibrated rule and estimated cost */
  candidates: z.array(candidateSchema).optional(),
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
  /** jobsPerWorker: jobs each worker thread finished; mainThreadJobs: MLP-fit jobs this thread ran while they started (both absent in-process) */
  training: z.looseObject({ seconds: z.number().nonnegative(), workers: nat, samplesPerSecond: z.number().nonnegative(), jobsPerWorker: z.array(nat).optional(), mainThreadJobs: nat.optional() }),
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
/** one site's predictor as predictors.json records it */
export type PredictorEntry = Known<z.output<typeof predictorEntrySchema>>;
/** one site's trained predictor (src/predictors/train-layer.ts): its entry, with its weights */
export type PredictorResult = Omit<PredictorEntry, 'hiddenActivation'> & {
  /** low-rank weights (none for the dense and exact predictors; SwiGLU closed form: the gate's) */
  host?: HostPredictor;
  /** SwiGLU closed form: the up projection's low-rank predictor */
  hostUp?: HostPredictor;
};
/** what writePredictors keeps of a trained layer (train-layer.ts's LayerResult) */
export interface TrainedLayer { layer: number; seconds: number; log: Record<string, unknown>[]; mlp?: PredictorResult; heads?: PredictorResult }
/** predictors.json as written (less its seal, added when it is written) and read back */
export type PredictorsManifest = Omit<Known<z.output<typeof predictorsManifestSchema>>, 'sealSha256'> & { sealSha256?: string };

const RETRAIN = 're-run train-predictors';

/**
 * The `layers` of an artifact written before the rename (predictors.json format 2, report.json before it): an entry's
 * `family` is its `predictor`, `hidden` its `hiddenActivation` (no other key of that name occurs under `layers`; the
 * model's family and width live outside it). Applied after the seal is checked; a key already under its new name stays.
 */
export function renamedOldKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(renamedOldKeys);
  if (!v || typeof v !== 'object') return v;
  const o = v as Record<string, unknown>, names: Record<string, string> = { family: 'predictor', hidden: 'hiddenActivation' };
  return Object.fromEntries(Object.entries(o).map(([k, x]) => [names[k] && !(names[k] in o) ? names[k] : k, renamedOldKeys(x)]));
}

/** As the schemas' output has them: a threshold rule written as null (+Infinity: calibrated on no positives) is Infinity again (in place). */
export function infiniteThresholds(v: unknown): void {
  if (!v || typeof v !== 'object') return;
  const o = v as Record<string, unknown>;
  if (o.kind === 'threshold' && o.value === null) o.value = Infinity;
  for (const x of Object.values(o)) infiniteThresholds(x);
}

export function readPredictorsManifest(dir: string): PredictorsManifest {
  const f = path.join(dir, 'predictors.json');
  if (!fs.existsSync(f)) throw new UserError(`${dir} is not a predictors folder (no predictors.json)`, 'pass a folder written by `dejavu train-predictors`');
  let raw = readJson(f, RETRAIN) as Record<string, unknown> | null;
  if (raw?.kind !== 'dejavu-predictors' || (raw.formatVersion !== PREDICTORS_FORMAT_VERSION && raw.formatVersion !== 2))
    throw new UserError(`${f}: not a predictors manifest of format ${PREDICTORS_FORMAT_VERSION} (or 2)`, RETRAIN);
  checkSeal(raw, f, RETRAIN); // the seal covers the file as written
  if (raw.formatVersion === 2) raw = { ...raw, formatVersion: PREDICTORS_FORMAT_VERSION, layers: renamedOldKeys(raw.layers) };
  const pm = parseArtifact(predictorsManifestSchema, raw, f, 'predictors manifest', RETRAIN);
  infiniteThresholds(pm.layers);
  return pm;
}

export function loadHostPredictor(dir: string, file: string, prefix: 'mlp' | 'mlp.up' | 'heads', hiddenActivation: 'none' | 'relu'): HostPredictor {
  const st = openSafetensors(path.join(dir, file));
  const w1 = st.tensors.get(`${prefix}.fc1.weight`), w2 = st.tensors.get(`${prefix}.fc2.weight`);
  if (!w1 || !w2) throw new UserError(`${file} lacks the ${prefix} predictor tensors`);
  const [r, d] = w1.shape as [number, number];
  const out = w2.shape[0]!;
  return { fc1Weight: readTensorF32(st, `${prefix}.fc1.weight`), fc1Bias: readTensorF32(st, `${prefix}.fc1.bias`), fc2Weight: readTensorF32(st, `${prefix}.fc2.weight`), fc2Bias: readTensorF32(st, `${prefix}.fc2.bias`), d, r, out, hiddenActivation };
}
