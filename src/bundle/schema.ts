/**
 * The bundle manifest schema (zod). docs/bundle.schema.json is generated from it (z.toJSONSchema) and a test
 * keeps the committed file in sync.
 */
import { z } from 'zod';
import { sealOf } from '../util/seal.js';
import { runtimePlanSchema } from '../runtime/plan.js';

/**
 * 2: MLP modes (dense / exact / closed-form / dejavu), h_mlp input, SwiGLU scores from gate + up predictors; the
 * manifest is checksummed (manifestSha256) and a copy of it (less `files`) is sealed in predictors.safetensors'
 * metadata. Format 1 bundles are refused with a hint to re-export.
 * 3: an optional runtime plan (`dejavu plan`: per-layer modes under a perplexity budget). Format 2 bundles (no plan)
 * are still read; a format 2 manifest carrying a plan is refused (verify-bundle).
 * 4: a predictor entry names its kind `predictor` (was `family`, the word predictors.json and the reports use since
 * its format 3). Formats 2 and 3 are still read: checked against their own schema and seal as written, then renamed
 * in memory (legacyToCurrent).
 */
export const BUNDLE_FORMAT_VERSION = 4;
export const READABLE_BUNDLE_FORMATS: readonly number[] = [2, 3, 4];
/** predictors.safetensors metadata key holding the sealed manifest copy (canonical JSON, without files/manifestSha256) */
export const SEALED_MANIFEST_KEY = 'dejavu.manifest';

const rule = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('topk'), k: z.number().int().positive() }),
  z.strictObject({ kind: z.literal('threshold'), value: z.number() }),
]);
const sha = z.string().regex(/^[0-9a-f]{64}$/);
const tensorRef = z.strictObject({ name: z.string().min(1), shape: z.array(z.number().int().nonnegative()) });

const lowRankTensors = z.strictObject({ fc1Weight: tensorRef, fc1Bias: tensorRef, fc2Weight: tensorRef, fc2Bias: tensorRef });
const PREDICTOR_KINDS = ['dense', 'exact', 'closed-form', 'dejavu'] as const;
const predictorFields = {
  /** linear: logits = fc2(act(fc1(x))); swiglu: |silu(gate) * up| from `tensors` (gate) and `upTensors` */
  score: z.enum(['linear', 'swiglu']),
  rank: z.number().int().nonnegative(),
  hiddenActivation: z.enum(['none', 'relu']),
  /** h_mlp: the MLP block's own normalized input; x_attn: this layer's input; x_mlp: the residual entering the MLP block; x_attn[layer-1]: the previous layer's input (lookahead) */
  input: z.enum(['h_mlp', 'x_attn', 'x_mlp', 'x_attn[layer-1]', 'none']),
  label: z.union([z.strictObject({ kind: z.literal('active') }), z.strictObject({ kind: z.enum(['topFraction', 'threshold']), value: z.number() })]),
  /** null: dense */
  rule: rule.nullable(),
  /** null for the dense and exact modes */
  tensors: lowRankTensors.nullable(),
  upTensors: lowRankTensors.nullable(),
  expected: z.strictObject({ recall: z.number().min(0).max(1), precision: z.number().min(0).max(1), predictedDensity: z.number().min(0).max(1), trueDensity: z.number().min(0).max(1), source: z.enum(['validation', 'evaluate-recall']) }),
  flopShare: z.number().nonnegative(),
};
/** dense: every neuron (no predictor); exact: the first projection itself scores (ReLU, lossless); closed-form / dejavu: low-rank */
const predictor = z.strictObject({ predictor: z.enum(PREDICTOR_KINDS), ...predictorFields });
/** formats 2 and 3: the same entry keyed `family` */
const legacyPredictor = z.strictObject({ family: z.enum(PREDICTOR_KINDS), ...predictorFields });

const manifestOf = <F extends z.ZodType, P extends z.ZodType>(formatVersion: F, entry: P) => z.strictObject({
  formatVersion,
  kind: z.literal('dejavu-bundle'),
  toolVersion: z.string(),
  createdAt: z.string(),
  config: z.record(z.string(), z.unknown()),
  model: z.strictObject({
    fingerprint: z.strictObject({ config: sha, weights: z.record(z.string(), sha) }),
    family: z.string().min(1),
    architecture: z.record(z.string(), z.unknown()),
    dims: z.strictObject({ layers: z.number().int().positive(), hidden: z.number().int().positive(), ffn: z.number().int().positive(), heads: z.number().int().positive(),
        kvHeads: z.number().int().positive(), headDim: z.number().int().positive() }),
  }),
  predictorsFile: z.string(),
  neuronMajorFile: z.string().nullable(),
  layers: z.array(z.strictObject({
    layer: z.number().int().nonnegative(),
    mlp: entry.nullable(),
    heads: entry.nullable(),
    /** neuron-major MLP weights: row j holds neuron j's weights (fc1/up/gate rows; fc2/down transposed) */
    neuronMajor: z.strictObject({ up: tensorRef, gate: tensorRef.nullable(), down: tensorRef, upBias: tensorRef.nullable(), gateBias: tensorRef.nullable() }).nullable(),
  })),
  files: z.record(z.string(), z.strictObject({ sha256: sha, bytes: z.number().int().nonnegative() })),
  perplexity: z.record(z.string(), z.number()).nullable(),
  /** the runtime plan generate follows (null: each layer follows its trained rule); absent in format 2 */
  plan: runtimePlanSchema.nullable().optional(),
  /** sha256 of the canonical JSON (keys sorted, no whitespace) of this manifest without manifestSha256 */
  manifestSha256: sha,
});
export const bundleManifestSchema = manifestOf(z.literal(BUNDLE_FORMAT_VERSION), predictor);
export const legacyBundleManifestSchema = manifestOf(z.union([z.literal(2), z.literal(3)]), legacyPredictor);

/** A manifest in memory: the current entries; formatVersion says what was on disk (2 and 3 are renamed when read). */
export type BundleManifest = Omit<z.infer<typeof bundleManifestSchema>, 'formatVersion'> & { formatVersion: 2 | 3 | typeof BUNDLE_FORMAT_VERSION };

/** A format 2 / 3 manifest with its entries renamed `family` → `predictor` (nothing else differs). */
export function legacyToCurrent(m: z.infer<typeof legacyBundleManifestSchema>): BundleManifest {
  const rename = (p: z.infer<typeof legacyPredictor> | null) => { if (!p) return null; const { family, ...rest } = p; return { predictor: family, ...rest }; };
  return { ...m, layers: m.layers.map((l) => ({ ...l, mlp: rename(l.mlp), heads: rename(l.heads) })) };
}

/** The manifest checksum (its seal, util/seal): sha256 of the canonical JSON of the manifest less its manifestSha256 field. */
export function manifestChecksum(m: Record<string, unknown>): string {
  return sealOf(m, 'manifestSha256');
}

/** What the sealed copy holds: the manifest less `files` (it cannot hold its own file's checksum) and manifestSha256. */
export function sealedPart(m: Record<string, unknown>): Record<string, unknown> {
  const { manifestSha256: _a, files: _b, ...rest } = m;
  return rest;
}

export function bundleJsonSchema(): unknown {
  return { $id: 'https://dejavu-ts/bundle.schema.json', title: 'dejavu-ts bundle manifest', ...(z.toJSONSchema(bundleManifestSchema) as object) };
}
