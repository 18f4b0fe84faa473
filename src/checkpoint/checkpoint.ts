/**
 * A Hugging Face checkpoint folder: config.json + model.safetensors, or a sharded model.safetensors.index.json.
 * Opening validates every file's header; tensors are read lazily, by offset.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { UserError } from '../util/errors.js';
import { sha256File } from '../util/fsx.js';
import { inputError, readInputText } from '../util/input.js';
import { openSafetensors, readTensorF32, type SafetensorsFile, type TensorInfo } from './safetensors.js';

export interface Checkpoint {
  dir: string;
  rawConfig: Record<string, unknown>;
  /** weight files, relative to dir */
  files: string[];
  tensors: Map<string, { file: SafetensorsFile; info: TensorInfo }>;
  read(key: string): Float32Array;
}

const CHECKPOINT_HINT = 'pass --model with a Hugging Face checkpoint folder (config.json + model.safetensors)';
/** config.json and the shard index are small; a larger file is not one (the largest real indexes are a few MiB) */
const MAX_JSON_BYTES = 64 * 2 ** 20;

function readJson(file: string, what: string): Record<string, unknown> {
  if (!fs.existsSync(file)) throw new UserError(`cannot read ${what} ${file}: it does not exist`, CHECKPOINT_HINT);
  const text = readInputText(file, { what, hint: CHECKPOINT_HINT, maxBytes: MAX_JSON_BYTES });
  try {
    const v = JSON.parse(text);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v;
  } catch (e) {
    throw new UserError(`${what} ${file} is not valid JSON: ${(e as Error).message}`);
  }
}

/** Config keys that give the layer count, across Hugging Face families. */
const LAYER_KEYS = ['num_hidden_layers', 'n_layer', 'num_layers', 'n_layers'];

/**
 * A layer count in config.json above what the weights hold is refused before anything is sized by it (a million
 * layers would exhaust the heap). The layers are the distinct indices after the most common numbered prefix of the
 * tensor names ("model.layers.3.mlp..." -> "model.layers", 3), whatever the family calls them.
 */
function checkLayerCount(file: string, rawConfig: Record<string, unknown>, names: Iterable<string>): void {
  const byPrefix = new Map<string, Set<number>>();
  for (const name of names) {
    const m = /^(.*?)\.(\d+)\./.exec(name);
    if (!m) continue;
    const s = byPrefix.get(m[1]!) ?? new Set<number>();
    byPrefix.set(m[1]!, s.add(Number(m[2])));
  }
  let prefix = '', indices = new Set<number>();
  for (const [p, s] of byPrefix) if (s.size > indices.size) [prefix, indices] = [p, s];
  for (const k of LAYER_KEYS) {
    const v = rawConfig[k];
    if (typeof v !== 'number' || v <= indices.size) continue;
    const held = indices.size ? `${indices.size} layer${indices.size > 1 ? 's' : ''} (${prefix}.${Math.min(...indices)} to ${prefix}.${Math.max(...indices)})` : 'no layers (no numbered tensor names)';
    throw new UserError(`${file}: ${k} is ${v}, but the checkpoint's tensors hold ${held}`, 'restore config.json from the checkpoint: its sizes must match the weights');
  }
}

export function openCheckpoint(dir: string): Checkpoint {
  let st: fs.Stats;
  try { st = fs.statSync(dir); } catch (e) { throw inputError(e, dir, { what: 'model folder', hint: CHECKPOINT_HINT }); }
  if (!st.isDirectory())
    throw new UserError(`model folder ${dir} is ${st.isFile() ? 'a file' : 'not a folder'}`, `pass --model with the checkpoint folder${st.isFile() ? ` (the one holding ${path.basename(dir)}: ${path.dirname(dir)})` : ''}, not a file in it`);
  const rawConfig = readJson(path.join(dir, 'config.json'), 'config');
  const single = path.join(dir, 'model.safetensors');
  const index = path.join(dir, 'model.safetensors.index.json');
  let files: string[];
  let weightMap: Record<string, string> | null = null;
  if (fs.existsSync(single)) files = ['model.safetensors'];
  else if (fs.existsSync(index)) {
    const idx = readJson(index, 'index');
    const wm = idx.weight_map;
    if (typeof wm !== 'object' || wm === null || Object.values(wm).some((v) => typeof v !== 'string'))
      throw new UserError(`${index}: "weight_map" must be an object mapping tensor names to file names`);
    weightMap = wm as Record<string, string>;
    files = [...new Set(Object.values(weightMap))].sort();
    for (const f of files)
      if (f.includes('/') || f.includes('\\') || f.startsWith('.')) throw new UserError(`${index}: shard name ${JSON.stringify(f)} must be a plain file name`);
  } else {
    const bins = fs.readdirSync(dir).filter((f) => f.endsWith('.bin'));
    throw new UserError(
      `no model.safetensors or model.safetensors.index.json in ${dir}`,
      bins.length ? 'PyTorch .bin checkpoints are not supported: re-save with model.save_pretrained(dir, safe_serialization=True)' : 'pass a Hugging Face checkpoint folder',
    );
  }
  // every shard present before any is read: a missing shard is reported as such, not as an index mismatch
  for (const f of files)
    if (!fs.existsSync(path.join(dir, f))) throw new UserError(`shard ${f} listed in ${index} is missing`, 'the checkpoint download is incomplete');
  const tensors = new Map<string, { file: SafetensorsFile; info: TensorInfo }>();
  for (const f of files) {
    const full = path.join(dir, f);
    const st = openSafetensors(full);
    for (const [name, info] of st.tensors) {
      if (tensors.has(name)) throw new UserError(`tensor "${name}" appears in two weight files (${path.basename(tensors.get(name)!.file.path)} and ${f})`);
      if (weightMap && weightMap[name] !== f) throw new UserError(`tensor "${name}" is in ${f} but the index maps it to ${weightMap[name] ?? 'nothing'}`);
      tensors.set(name, { file: st, info });
    }
  }
  if (weightMap) for (const k of Object.keys(weightMap)) if (!tensors.has(k)) throw new UserError(`tensor "${k}" is listed in the index but missing from ${weightMap[k]}`);
  checkLayerCount(path.join(dir, 'config.json'), rawConfig, tensors.keys());
  return {
    dir,
    rawConfig,
    files,
    tensors,
    read(key: string) {
      const t = tensors.get(key);
      if (!t) throw new UserError(`tensor "${key}" not found in ${dir}`);
      return readTensorF32(t.file, key);
    },
  };
}

/** Identity of a checkpoint: sha256 of config.json and of each weight file. */
export interface Fingerprint {
  config: string;
  weights: Record<string, string>;
}
const sha = z.string().regex(/^[0-9a-f]{64}$/, 'expected a sha256 (64 hex digits)');
/** A Fingerprint as recorded in artifacts, checked when read back. */
export const fingerprintSchema = z.looseObject({ config: sha, weights: z.record(z.string(), sha) });

const fpCache = new Map<string, { mtimeMs: number; size: number; hash: string }>();
function cachedHash(file: string): string {
  const st = fs.statSync(file);
  const c = fpCache.get(file);
  if (c && c.mtimeMs === st.mtimeMs && c.size === st.size) return c.hash;
  const hash = sha256File(file);
  fpCache.set(file, { mtimeMs: st.mtimeMs, size: st.size, hash });
  return hash;
}

export function fingerprintCheckpoint(dir: string): Fingerprint {
  const ck = openCheckpoint(dir);
  const weights: Record<string, string> = {};
  for (const f of ck.files) weights[f] = cachedHash(path.join(dir, f));
  return { config: cachedHash(path.join(dir, 'config.json')), weights };
}

export function sameFingerprint(a: Fingerprint, b: Fingerprint): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
