/**
 * Guards that keep a broken predictor from being reported as good (issue #11): non-finite weights or logits are a
 * user error (the predictor diverged or the file was damaged: retrain, e.g. with a lower optim.lr); metrics outside
 * [0, 1] or NaN are a bug (internal error), never a table.
 */
import { UserError } from '../util/errors.js';
import type { HostPredictor } from './predictor.js';

export const DIVERGED_HINT = 'retrain the predictors with a lower optim.lr (e.g. --set optim.lr=1e-3, the default); a diverged run gives NaN/Inf weights';

/** How many entries are NaN or +-Infinity, and the index of the first. */
export function nonFinite(a: ArrayLike<number>): { count: number; first: number } {
  let count = 0, first = -1;
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) { if (first < 0) first = i; count++; }
  return { count, first };
}

/** Throw a UserError "<what> has non-finite weights (...)" when any weight of `h` is NaN/Inf. prefix: tensor name prefix ("mlp", "layers.3.heads"). */
export function assertFinitePredictor(h: Pick<HostPredictor, 'fc1Weight' | 'fc1Bias' | 'fc2Weight' | 'fc2Bias'>, what: string, prefix: string, hint: string = DIVERGED_HINT): void {
  const parts: [string, Float32Array][] = [['fc1.weight', h.fc1Weight], ['fc1.bias', h.fc1Bias], ['fc2.weight', h.fc2Weight], ['fc2.bias', h.fc2Bias]];
  let count = 0, total = 0, firstIn = '';
  for (const [name, a] of parts) {
    const r = nonFinite(a);
    total += a.length;
    if (r.count && !firstIn) firstIn = `${prefix}.${name}`;
    count += r.count;
  }
  if (count) throw new UserError(`${what} has non-finite weights (${count} of ${total} values are NaN or infinite, first in ${firstIn})`, hint);
}

/** Throw a UserError when predictor logits hold NaN/Inf (finite weights can still overflow). */
export function assertFiniteLogits(logits: ArrayLike<number>, what: string, hint: string = DIVERGED_HINT): void {
  const r = nonFinite(logits);
  if (r.count) throw new UserError(`${what}: ${r.count} of ${logits.length} predictor logits are NaN or infinite (first: ${logits[r.first]})`, hint);
}

export interface RateMetrics { recall: number; precision: number; f1?: number; predictedDensity: number; trueDensity: number }

/** Recall, precision, F1 and densities are rates: anything outside [0, 1] or NaN is a bug in the metric code. */
export function checkMetrics(m: RateMetrics, where: string): void {
  const bad = (['recall', 'precision', 'f1', 'predictedDensity', 'trueDensity'] as const)
    .filter((k) => m[k] !== undefined && !(m[k]! >= 0 && m[k]! <= 1))
    .map((k) => `${k} ${m[k]}`);
  if (bad.length) throw new Error(`${where}: impossible metrics (${bad.join(', ')}: rates must lie in [0, 1]); refusing to report them`);
}
