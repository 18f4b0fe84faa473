/**
 * Config resolution for every command: schema defaults <- input-fitted defaults (the model's sizes) <- YAML file
 * (--config) <- explicit flags <- --set a.b=value.
 * One strict zod schema per command; all problems are reported in one error with dotted path, received value and hint.
 */
import YAML from 'yaml';
import { z } from 'zod';
import { UserError } from '../util/errors.js';
import { readInputText } from '../util/input.js';

export type Obj = Record<string, unknown>;

/** Largest --config file: a config is a few KiB; this refuses /dev/zero-like or mistaken inputs at once. */
export const MAX_CONFIG_BYTES = 2 ** 20;

export function readYamlFile(file: string): Obj {
  const text = readInputText(file, { what: 'config', hint: 'pass --config a YAML file (see configs/)', maxBytes: MAX_CONFIG_BYTES });
  let v: unknown;
  try { v = YAML.parse(text); } catch (e) { throw new UserError(`config ${file} is not valid YAML: ${(e as Error).message}`); }
  if (v === null || v === undefined) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw new UserError(`config ${file} must be a YAML mapping at the top level`);
  return v as Obj;
}

/** Keys that would walk into or replace an object's prototype: never config keys. */
const UNSAFE_KEYS = new Set(['__proto__', 'constructor', 'prototype']);
function refuseUnsafe(key: string, where: string): void {
  if (UNSAFE_KEYS.has(key)) throw new UserError(`${where}: "${key}" is not a config key`, 'config keys are documented in docs/configuration.md; __proto__, constructor and prototype are never keys');
}

/** set obj[a][b][c] = value for path "a.b.c", creating objects on the way (own properties only) */
export function setPath(obj: Obj, dotted: string, value: unknown): void {
  const parts = dotted.split('.');
  if (parts.some((p) => p === '')) throw new UserError(`--set: invalid key "${dotted}"`, 'use --set a.b=value');
  for (const p of parts) refuseUnsafe(p, `--set ${dotted}`);
  let cur: Obj = obj;
  for (const p of parts.slice(0, -1)) {
    const next = Object.hasOwn(cur, p) ? cur[p] : undefined;
    if (typeof next !== 'object' || next === null || Array.isArray(next)) cur[p] = {};
    cur = cur[p] as Obj;
  }
  cur[parts[parts.length - 1]!] = value;
}

/** "a.b=value": value parsed as YAML (so numbers, booleans and [lists] get their types) */
export function parseSet(s: string): [string, unknown] {
  const eq = s.indexOf('=');
  if (eq <= 0) throw new UserError(`--set "${s}" is not of the form key.path=value`, 'example: --set train.mlp.rank=256');
  const key = s.slice(0, eq).trim();
  const raw = s.slice(eq + 1);
  let value: unknown;
  try { value = raw === '' ? '' : YAML.parse(raw); } catch { value = raw; }
  return [key, value];
}

function deepMerge(a: Obj, b: Obj): Obj {
  const out: Obj = { ...a };
  for (const [k, v] of Object.entries(b)) {
    refuseUnsafe(k, 'config');
    const av = Object.hasOwn(out, k) ? out[k] : undefined;
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && av && typeof av === 'object' && !Array.isArray(av) ? deepMerge(av as Obj, v as Obj) : v;
  }
  return out;
}

function describeReceived(root: unknown, path: PropertyKey[]): string {
  let cur: unknown = root;
  for (const p of path) {
    if (cur && typeof cur === 'object' && Object.hasOwn(cur, p)) cur = (cur as Record<PropertyKey, unknown>)[p];
    else { cur = undefined; break; }
  }
  const s = JSON.stringify(cur);
  return s === undefined ? 'nothing' : s.length > 80 ? s.slice(0, 77) + '...' : s;
}

/** keys of earlier versions, by their new name (one name per concept: docs/glossary.md) */
const RENAMED: Record<string, string> = { families: 'predictors' };

/** How validateConfig names things: `label` maps a dotted key to what the user typed (e.g. a flag); `hint` replaces the config hint. */
export interface ValidateStyle { label?: (dotted: string) => string; title?: string; hint?: string }

/** Validate with one error listing every problem. */
export function validateConfig<S extends z.ZodType>(schema: S, input: Obj, what: string, style: ValidateStyle = {}): z.infer<S> {
  const r = schema.safeParse(input);
  if (r.success) return r.data;
  const lines = r.error.issues.flatMap((iss): string[] => {
    const dotted = iss.path.map(String).join('.');
    const p = dotted ? (style.label ? style.label(dotted) : dotted) : '(top level)';
    if (iss.code === 'unrecognized_keys') {
      const at = iss.path.length ? `${p}.` : '';
      return iss.keys.map((k) => `${at}${k}: unknown key; received ${describeReceived(input, [...iss.path, k])} (${RENAMED[k] ? `renamed to ${RENAMED[k]}: one name per concept, docs/glossary.md` : 'check the spelling against the documented keys'})`);
    }
    const received = describeReceived(input, iss.path);
    if (received === 'nothing' && iss.code === 'invalid_type') return [`${p}: required but missing (${iss.message})`];
    return [`${p}: ${iss.message}; received ${received}`];
  });
  throw new UserError(`invalid ${style.title ?? `${what} config`} (${lines.length} problem${lines.length > 1 ? 's' : ''}):\n  - ${lines.join('\n  - ')}`,
    style.hint ?? 'fix the YAML file or the --set/flag values; every key is documented in docs/configuration.md');
}

export interface ResolveInput {
  configFile?: string | undefined;
  /** flag values already mapped to dotted paths; undefined values are skipped */
  flags?: Record<string, unknown>;
  sets?: string[];
  /** turns the file's mapping into this command's (a stage command given a pipeline config takes its section) */
  adaptFile?: (raw: Obj) => Obj;
  /** a --set key may start with this (the pipeline's spelling of a stage's key, e.g. "plan." for plan): it is dropped */
  setPrefix?: string;
  /** defaults that fit what was given (e.g. the model's sizes), merged under everything the user set */
  defaults?: (obj: Obj) => Obj;
}

/** Merge the input layers (file <- flags <- --set) and any input-fitted defaults under them; not yet validated. */
export function mergeConfig(input: ResolveInput): Obj {
  let obj: Obj = input.configFile ? readYamlFile(input.configFile) : {};
  if (input.configFile && input.adaptFile) obj = input.adaptFile(obj);
  const over: Obj = {};
  for (const [k, v] of Object.entries(input.flags ?? {})) if (v !== undefined) setPath(over, k, v);
  obj = deepMerge(obj, over);
  for (const s of input.sets ?? []) {
    const [k0, v] = parseSet(s);
    const k = input.setPrefix && k0.startsWith(input.setPrefix) ? k0.slice(input.setPrefix.length) : k0;
    setPath(obj, k, v);
  }
  return input.defaults ? deepMerge(input.defaults(obj), obj) : obj;
}

export function resolveConfig<S extends z.ZodType>(schema: S, what: string, input: ResolveInput): z.infer<S> {
  return validateConfig(schema, mergeConfig(input), what);
}
