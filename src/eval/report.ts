/**
 * evaluate-recall's report.json as read back (export-bundle, pipeline): sealed (util/seal), one zod schema, every
 * problem named by file and field; evaluate-recall writes it through the same schema. Objects are loose (unknown keys kept) so newer fields do not break older readers; the numbers a
 * bundle copies are checked (rates in [0, 1], perplexities positive and finite).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { UserError } from '../util/errors.js';
import { parseArtifact, readJson } from '../util/json-artifact.js';
import { checkSeal } from '../util/seal.js';

const rate = z.number().min(0).max(1);
export const metricsSchema = z.looseObject({ recall: rate, precision: rate, f1: rate, predictedDensity: rate, trueDensity: rate });
const site = z.looseObject({
  rule: z.unknown(), metrics: metricsSchema, sweep: z.array(z.looseObject({ k: z.number(), recall: rate, precision: rate, predictedDensity: rate })),
  /** MLP sites: the exact predictor's bound under the same rule, and its top-k sweep */
  exactBound: z.looseObject({ predictedDensity: rate }).optional(),
  exactSweep: z.array(z.looseObject({ fraction: rate, k: z.number(), recall: rate })).optional(),
});

export const evalReportSchema = z.looseObject({
  kind: z.literal('dejavu-evaluation'),
  toolVersion: z.string(),
  config: z.looseObject({ predictors: z.string() }),
  /** content hash of the predictors folder that was evaluated (src/predictors/content-hash.ts) */
  predictorsSha256: z.string().regex(/^[0-9a-f]{64}$/),
  heldoutTokens: z.number().int().nonnegative(),
  layers: z.array(z.looseObject({ layer: z.number().int().nonnegative(), mlp: site.optional(), heads: site.optional() })),
  averages: z.record(z.string(), z.number().nullable()),
  perplexity: z.looseObject({ tokens: z.number(), runs: z.record(z.string(), z.number().positive()) }).optional(),
  /** the file's seal (util/seal): sha256 of its canonical JSON less this field; an edited report is refused */
  sealSha256: z.string().regex(/^[0-9a-f]{64}$/),
});
export type ReportFile = z.infer<typeof evalReportSchema>;

const HINT = 'pass the --out folder of `dejavu evaluate-recall`, or re-run evaluate-recall to write it again';

/** Read DIR/report.json: its seal checked (an edited report is refused), then its schema; a UserError naming the file otherwise. */
export function readEvalReport(dir: string): ReportFile {
  const f = path.join(dir, 'report.json');
  if (!fs.existsSync(f)) throw new UserError(`no report.json in ${dir}`, HINT);
  const raw = readJson(f, HINT);
  const o = raw as Record<string, unknown> | null;
  if (o && typeof o === 'object' && o.kind === 'dejavu-evaluation' && o.predictorsSha256 === undefined)
    throw new UserError(`${f} was written by an older dejavu: it does not record which predictors it evaluated (predictorsSha256)`, 're-run evaluate-recall on the predictors you export');
  checkSeal(raw, f, 're-run evaluate-recall to write the report again');
  return parseArtifact(evalReportSchema, raw, f, 'evaluate-recall report', HINT);
}
