/** An activation dataset folder: manifest.json + summary.json + layer-LL/shard-SSSSS.arrow. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import type { Fingerprint } from '../checkpoint/checkpoint.js';
import type { ModelConfig } from '../model/config.js';
import { ACTIVATIONS_FORMAT_VERSION, decodeBatch, readShard, type DecodedBatch } from './format.js';

export interface ActivationsManifest {
  formatVersion: number;
  kind: 'dejavu-activations';
  toolVersion: string;
  status: 'in-progress' | 'complete';
  config: Record<string, unknown>;
  model: { dir: string; fingerprint: Fingerprint; config: ModelConfig };
  tokenizerHash: string | null;
  data: { file: string; sha256: string };
  seqLen: number;
  seqsPerShard: number;
  layers: number[];
  dims: { hidden: number; ffn: number; heads: number; headDim: number };
  dtype: 'float16' | 'float32';
  fields: string[];
  tokens: number;
  sequences: number;
  shards: number;
}

export const layerDir = (root: string, layer: number) => path.join(root, `layer-${String(layer).padStart(2, '0')}`);
export const shardName = (i: number) => `shard-${String(i).padStart(5, '0')}.arrow`;

export function readManifest(dir: string, wantComplete = true): ActivationsManifest {
  const f = path.join(dir, 'manifest.json');
  if (!fs.existsSync(f)) throw new UserError(`${dir} is not an activations dataset (no manifest.json)`, 'pass a folder written by `dejavu collect-activations`');
  let m: ActivationsManifest;
  try { m = JSON.parse(fs.readFileSync(f, 'utf8')); } catch (e) { throw new UserError(`${f} is not valid JSON: ${(e as Error).message}`); }
  if (m.kind !== 'dejavu-activations') throw new UserError(`${f} is not an activations manifest (kind ${JSON.stringify(m.kind)})`);
  if (m.formatVersion !== ACTIVATIONS_FORMAT_VERSION) throw new UserError(`${f} has formatVersion ${m.formatVersion}; this dejavu reads ${ACTIVATIONS_FORMAT_VERSION}`, 're-run collect-activations');
  if (wantComplete && m.status !== 'complete') throw new UserError(`activations dataset ${dir} is incomplete (collection was interrupted)`, 're-run the same collect-activations command to resume it');
  return m;
}

/** Stream a layer's rows, batch by batch, across its shards (optionally only some shards). */
export function* iterateLayer(dir: string, m: ActivationsManifest, layer: number, fields?: string[], shardFilter?: (i: number) => boolean): Generator<DecodedBatch> {
  if (!m.layers.includes(layer)) throw new UserError(`layer ${layer} was not collected in ${dir} (layers: ${m.layers.join(', ')})`);
  for (let s = 0; s < m.shards; s++) {
    if (shardFilter && !shardFilter(s)) continue;
    const file = path.join(layerDir(dir, layer), shardName(s));
    if (!fs.existsSync(file)) throw new UserError(`missing activation shard ${file}`, 'the dataset is incomplete: re-run collect-activations');
    for (const b of readShard(file)) yield decodeBatch(b, fields);
  }
}
