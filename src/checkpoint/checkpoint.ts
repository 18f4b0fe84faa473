/**
 * A Hugging Face checkpoint folder: config.json + model.safetensors, or a sharded model.safetensors.index.json.
 * Opening validates every file's header; tensors are read lazily, by offset.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { UserError } from '../util/errors.js';
import { sha256File } from '../util/fsx.js';
import { openSafetensors, readTensorF32, type SafetensorsFile, type TensorInfo } from './safetensors.js';

export interface Checkpoint {
  dir: string;
  rawConfig: Record<string, unknown>;
  /** weight files, relative to dir */
  files: string[];
  tensors: Map<string, { file: SafetensorsFile; info: TensorInfo }>;
  read(key: string): Float32Array;
}

function readJson(file: string, what: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new UserError(`cannot read ${what} ${file}: ${(e as Error).message}`, 'pass a Hugging Face checkpoint folder (config.json + model.safetensors)');
  }
  try {
    const v = JSON.parse(text);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v;
  } catch (e) {
    throw new UserError(`${what} ${file} is not valid JSON: ${(e as Error).message}`);
  }
}

export function openCheckpoint(dir: string): Checkpoint {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory())
    throw new UserError(`model folder ${dir} does not exist`, 'pass --model with a Hugging Face checkpoint folder (config.json + model.safetensors)');
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
