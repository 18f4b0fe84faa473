/**
 * JSON artifacts read back (activations manifest/summary/progress, predictors.json, report.json, plan.json): one zod
 * schema each, and one error listing every problem with its dotted path and the value found (exit 2), like the config
 * errors of src/config/load.ts. Readers use loose objects (unknown keys kept), so fields added by newer writers pass.
 * Writers go through writeArtifact: what is written is first checked against the same schema (and sealed where a
 * later stage trusts it, util/seal).
 */
import * as fs from 'node:fs';
import type { z } from 'zod';
import { UserError } from './errors.js';
import { writeJsonAtomic } from './fsx.js';
import { checkSeal, sealed } from './seal.js';

function at(root: unknown, p: readonly PropertyKey[]): unknown {
  let cur = root;
  for (const k of p) cur = cur && typeof cur === 'object' ? (cur as Record<PropertyKey, unknown>)[k] : undefined;
  return cur;
}

function shown(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? 'nothing' : s.length > 80 ? s.slice(0, 77) + '...' : s;
}

/**
 * An artifact's type from its reader's schema (`Known<z.output<typeof schema>>`): the loose objects' index signatures
 * (the unknown keys a newer writer may add, kept on read but never relied on) are left out, so that a value the writer
 * builds, and a misspelt field, are checked against the fields the schema names.
 */
export type Known<T> = T extends readonly (infer U)[] ? Known<U>[] : T extends object
  ? { [K in keyof T as string extends K ? (unknown extends T[K] ? never : K) : K]: Known<T[K]> } : T;

/** One line per problem: `a.b.0.c: message; found VALUE` (at most `max`, then a count of the rest). */
export function issueLines(error: z.ZodError, input: unknown, max = 20): string[] {
  const lines = error.issues.slice(0, max).map((i) => {
    const p = i.path.map(String).join('.') || '(top level)';
    const found = shown(at(input, i.path));
    return found === 'nothing' ? `${p}: missing (${i.message})` : `${p}: ${i.message}; found ${found}`;
  });
  if (error.issues.length > max) lines.push(`... ${error.issues.length - max} more`);
  return lines;
}

/**
 * Validate parsed JSON; a UserError naming the file and every bad field otherwise. Returns the input itself, not
 * zod's copy: artifact schemas have no defaults or transforms, and callers compare parts of artifacts by their JSON
 * (fingerprints, identities), which must keep the writer's key order.
 */
export function parseArtifact<S extends z.ZodType>(schema: S, raw: unknown, file: string, what: string, hint: string): z.output<S> {
  const r = schema.safeParse(raw);
  if (r.success) return raw as z.output<S>;
  const lines = issueLines(r.error, raw);
  throw new UserError(`${file} is not a valid ${what} (${r.error.issues.length} problem${r.error.issues.length > 1 ? 's' : ''}):\n  - ${lines.join('\n  - ')}`, hint);
}

/** Read a JSON file (a UserError when unreadable or not JSON). */
export function readJson(file: string, hint: string): unknown {
  let text: string;
  try { text = fs.readFileSync(file, 'utf8'); } catch (e) {
    throw new UserError((e as { code?: string }).code === 'EISDIR' ? `${file} is a folder, not a file` : `cannot read ${file}: ${(e as Error).message}`, hint);
  }
  try { return JSON.parse(text); } catch (e) { throw new UserError(`${file} is not valid JSON: ${(e as Error).message}`, hint); }
}

/** Read a sealed JSON artifact: readable JSON, its seal intact (util/seal), then its schema (each a UserError naming the file). */
export function readSealedArtifact<S extends z.ZodType>(schema: S, file: string, what: string, hint: string): z.output<S> {
  const raw = readJson(file, hint);
  checkSeal(raw, file, hint);
  return parseArtifact(schema, raw, file, what, hint);
}

/**
 * Write a JSON artifact (atomically), sealed when `seal` (util/seal). It is checked first, as it will read back,
 * against its reader's schema: an artifact its own reader would refuse is a bug (an internal error, exit 1), and
 * nothing is written.
 */
export function writeArtifact<S extends z.ZodType>(schema: S, value: object, file: string, what: string, opts: { seal?: boolean } = {}): void {
  const v = opts.seal ? sealed(value) : value;
  const back: unknown = JSON.parse(JSON.stringify(v));
  const r = schema.safeParse(back);
  if (!r.success) throw new Error(`the ${what} about to be written to ${file} fails its own schema (${r.error.issues.length} problem${r.error.issues.length > 1 ? 's' : ''}; not written):\n  - ${issueLines(r.error, back).join('\n  - ')}`);
  writeJsonAtomic(file, v);
}
