/**
 * evaluate-recall's report.json as read back (export-bundle, pipeline): sealed (util/seal), one zod schema, every
 * problem named by file and field; evaluate-recall writes it through the same schema. Objects are loose (unknown keys kept) so newer fields do not break older readers; the numbers a
 * bundle copies are checked (rates in [0, 1], perplexities positive and finite).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { UserError } from '../util/errors.js';
import { parseArtifact, readJson, type Known } from '../util/json-artifact.js';
import { candidateSchema, infiniteThresholds, predictorKindSchema, renamedOldKeys } from '../predictors/store.js';
import { checkSeal } from '../util/seal.js';

const rate = z.number().min(0).max(1);
/** a figure that is NaN when nothing was measured (JSON writes it as null) */
const figure = z.number().nullable();
export const metricsSchema = z.looseObject({ recall: rate, precision: rate, f1: rate, predictedDensity: rate, trueDensity: rate });
const siteSchema = z.looseObject({
  rule: z.unknown(), metrics: metricsSchema,
  sweep: z.array(z.looseObject({ fraction: rate, k: z.number(), recall: rate, precision: rate, predictedDensity: rate })),
  /** MLP: recall weighted by |activation| x ||down column|| */
  magnitudeRecall: figure.optional(),
  /** MLP: the density the exact predictor (the first projection itself) needs for the same recall under the same kind of rule */
  exactBound: z.looseObject({ rule: z.string(), predictedDensity: rate }).optional(),
  /** MLP: the exact predictor's top-k sweep (recall vs density) */
  exactSweep: z.array(z.looseObject({ fraction: rate, k: z.number(), recall: rate })).optional(),
  /** MLP: estimated MLP cost / dense MLP cost at the held-out density */
  costShare: figure.optional(),
  /** MLP: the predictor evaluated (dense / exact / closed-form / dejavu) and its rank */
  predictor: predictorKindSchema.optional(),
  rank: z.number().int().nonnegative().optional(),
});

export const evalReportSchema = z.looseObject({
  kind: z.literal('dejavu-evaluation'),
  toolVersion: z.string(),
  /** the resolved evaluate config (less the worker count); these keys are read back */
  config: z.looseObject({ predictors: z.string(), activations: z.string(), data: z.string().optional() }),
  /** content hash of the predictors folder that was evaluated (src/predictors/content-hash.ts); export-bundle compares it */
  predictorsSha256: z.string().regex(/^[0-9a-f]{64}$/),
  heldoutTokens: z.number().int().nonnegative(),
  layers: z.array(z.looseObject({
    layer: z.number().int().nonnegative(), mlp: siteSchema.optional(), heads: siteSchema.optional(),
    /** the MLP candidates train-predictors weighed for this layer (validation rows), copied from predictors.json */
    mlpCandidates: z.array(candidateSchema).optional(),
  })),
  /** means over the layers with that site (NaN, written as null, when there is none) */
  averages: z.looseObject({ mlpRecall: figure, mlpPredictedDensity: figure, mlpTrueDensity: figure, mlpSparsity: figure, headRecall: figure, headDensity: figure }),
  perplexity: z.looseObject({
    tokens: z.number(), runs: z.record(z.string(), z.number().positive()), deltas: z.record(z.string(), z.number()),
    density: z.record(z.string(), z.looseObject({ mlp: z.array(z.number()), heads: z.array(z.number()) })),
    /** predicted-MLP perplexity at scaled per-layer k (top-k rules), and the same density for the oracle */
    densityCurve: z.array(z.looseObject({ targetDensity: z.number(), meanDensity: rate, predicted: z.number().positive(), oracle: z.number().positive(), k: z.array(z.number()) })),
  }).optional(),
  /** the file's seal (util/seal): sha256 of its canonical JSON less this field; an edited report is refused */
  sealSha256: z.string().regex(/^[0-9a-f]{64}$/),
});
/** report.json as written (sealed) and read back */
export type EvalReport = Known<z.output<typeof evalReportSchema>>;
export type LayerReport = EvalReport['layers'][number];
export type SiteReport = NonNullable<LayerReport['mlp']>;

const HINT = 'pass the --out folder of `dejavu evaluate-recall`, or re-run evaluate-recall to write it again';

/** Read DIR/report.json: its seal checked (an edited report is refused), then its schema; a UserError naming the file otherwise. */
export function readEvalReport(dir: string): EvalReport {
  const f = path.join(dir, 'report.json');
  if (!fs.existsSync(f)) throw new UserError(`no report.json in ${dir}`, HINT);
  const raw = readJson(f, HINT);
  const o = raw as Record<string, unknown> | null;
  if (o && typeof o === 'object' && o.kind === 'dejavu-evaluation' && o.predictorsSha256 === undefined)
    throw new UserError(`${f} was written by an older dejavu: it does not record which predictors it evaluated (predictorsSha256)`, 're-run evaluate-recall on the predictors you export');
  checkSeal(raw, f, 're-run evaluate-recall to write the report again');
  const layers = o && typeof o === 'object' ? renamedOldKeys(o.layers) : undefined; // a report written before `family` became `predictor`
  const r = parseArtifact(evalReportSchema, o && typeof o === 'object' ? { ...o, layers } : raw, f, 'evaluate-recall report', HINT);
  infiniteThresholds(r.layers);
  return r;
}
