/**
 * Canonical JSON (object keys sorted at every level, no whitespace) for content hashes that do not depend on key
 * order or formatting, and a path-by-path diff of two JSON values for "what changed" messages.
 */
import { sha256 } from './fsx.js';

export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map((x) => canonicalJson(x === undefined ? null : x)).join(',')}]`;
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o).filter((k) => o[k] !== undefined).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(',')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}

export function sha256Json(v: unknown): string { return sha256(canonicalJson(v)); }

/** Leaf paths where `now` differs from `was` (dotted, array indices as numbers), with both values as JSON. */
export function jsonDiff(now: unknown, was: unknown, at = ''): { path: string; now: string; was: string }[] {
  const isObj = (x: unknown) => x !== null && typeof x === 'object';
  if (isObj(now) && isObj(was) && Array.isArray(now) === Array.isArray(was)) {
    const a = now as Record<string, unknown>, b = was as Record<string, unknown>;
    const keys = [...new Set([...Object.keys(b), ...Object.keys(a)])];
    return keys.flatMap((k) => jsonDiff(a[k], b[k], at ? `${at}.${k}` : k));
  }
  const show = (x: unknown) => (x === undefined ? 'absent' : canonicalJson(x));
  return canonicalJson(now ?? null) === canonicalJson(was ?? null) && (now === undefined) === (was === undefined) ? [] : [{ path: at || '(top level)', now: show(now), was: show(was) }];
}
