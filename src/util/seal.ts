/**
 * Seals of JSON artifacts a later stage trusts (plan.json, report.json, predictors.json, the pipeline's stage records,
 * the bundle manifest): the sha256 of the artifact's canonical JSON (util/canonical-json) less the seal field itself,
 * stored in that field of the same file and checked on every read, so a hand edit is caught instead of trusted.
 * The value is sealed as JSON reads it back (NaN and undefined as JSON writes them), so a seal survives the round trip.
 */
import { sha256Json } from './canonical-json.js';
import { UserError } from './errors.js';

/** the seal field of the stages' artifacts (the bundle manifest keeps its own name, manifestSha256) */
export const SEAL_KEY = 'sealSha256';

/** The seal of `v`: sha256 of its canonical JSON without the field `key`. */
export function sealOf(v: object, key = SEAL_KEY): string {
  const { [key]: _, ...rest } = JSON.parse(JSON.stringify(v)) as Record<string, unknown>;
  return sha256Json(rest);
}

/** `v` with its seal in the field `key` (replacing any seal it had). */
export function sealed<T extends object, K extends string = typeof SEAL_KEY>(v: T, key: K = SEAL_KEY as K): T & Record<K, string> {
  return { ...v, [key]: sealOf(v, key) } as T & Record<K, string>;
}

/**
 * Check the seal of an artifact as read from `file` (exit 2 when it does not match or is missing); `hint` says which
 * stage to re-run.
 */
export function checkSeal(raw: unknown, file: string, hint: string, key = SEAL_KEY): void {
  const o = raw !== null && typeof raw === 'object' && !Array.isArray(raw) ? (raw as Record<string, unknown>) : null;
  if (!o || typeof o[key] !== 'string') throw new UserError(`${file} carries no seal (${key}): it was not written by this dejavu (older versions did not seal it)`, hint);
  if (sealOf(o, key) !== o[key]) throw new UserError(`${file} was changed after dejavu wrote it (its seal does not match)`, hint);
}
