/** An activation dataset folder: manifest.json + summary.json + layer-LL/shard-SSSSS.arrow. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { UserError } from '../util/errors.js';
import { fingerprintSchema, type Fingerprint } from '../checkpoint/checkpoint.js';
import { modelConfigSchema, type ModelConfig } from '../model/config.js';
import { parseArtifact, readJson } from '../util/json-artifact.js';
import * as A from 'apache-arrow';
import { ACTIVATIONS_FORMAT_VERSION, decodeBatch, openShard, readShard, REBUILD_HINT, type DecodedBatch } from './format.js';
import { sha256 } from '../util/fsx.js';

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
  /** sha256 of every shard, keyed `layer-LL/shard-SSSSS.arrow` (absent in datasets of dejavu <= 0.1.0 before #11) */
  shardSha256?: Record<string, string>;
  tokens: number;
  sequences: number;
  shards: number;
}

export const layerDir = (root: string, layer: number) => path.join(root, `layer-${String(layer).padStart(2, '0')}`);
export const shardName = (i: number) => `shard-${String(i).padStart(5, '0')}.arrow`;
/** a shard's key in `shardSha256` */
export const shardKey = (layer: number, i: number) => `${path.basename(layerDir('', layer))}/${shardName(i)}`;

/** The manifest's fields and dims must be what the shard's Arrow schema says. */
export function checkShardSchema(file: string, schema: A.Schema, m: Pick<ActivationsManifest, 'fields' | 'dims' | 'dtype'>): void {
  const bad = (what: string) => new UserError(`activation shard ${file} does not match its manifest: ${what}`, `the manifest was edited or the shard replaced: ${REBUILD_HINT}`);
  const names = schema.fields.map((f) => f.name);
  if (names.join() !== ['seq', 'pos', ...m.fields.filter((f) => f !== 'seq' && f !== 'pos')].join()) throw bad(`columns ${names.join(', ')}, manifest says ${m.fields.join(', ')}`);
  const want: Record<string, [number, string]> = { x_attn: [m.dims.hidden, 'dims.hidden'], x_mlp: [m.dims.hidden, 'dims.hidden'], mlp_active: [m.dims.ffn, 'dims.ffn'], mlp_act: [m.dims.ffn, 'dims.ffn'], head_norm: [m.dims.heads, 'dims.heads'] };
  for (const f of schema.fields) {
    const w = want[f.name];
    if (!w) continue;
    const t = f.type as A.FixedSizeList;
    if (t.listSize !== w[0]) throw bad(`${f.name} has ${t.listSize} values per row, manifest says ${w[0]} (${w[1]})`);
    if (f.name.startsWith('x_')) {
      const half = (t.children[0]!.type as A.Float).precision === A.Precision.HALF;
      if (half !== (m.dtype === 'float16')) throw bad(`${f.name} is ${half ? 'float16' : 'float32'}, manifest says ${m.dtype}`);
    }
  }
}

/**
 * Verify a dataset before use: every shard of `layers` exists, has the sha256 the manifest records (datasets written
 * before checksums existed skip this), is a complete Arrow file, and its schema agrees with the manifest.
 */
export function verifyDataset(dir: string, m: ActivationsManifest, layers: number[]): void {
  for (const l of layers) for (let s = 0; s < m.shards; s++) {
    const file = path.join(layerDir(dir, l), shardName(s));
    let buf: Buffer;
    try { buf = fs.readFileSync(file); } catch (e) {
      throw new UserError((e as { code?: string }).code === 'ENOENT' ? `missing activation shard ${file}` : `cannot read activation shard ${file}: ${(e as Error).message}`, REBUILD_HINT);
    }
    const want = m.shardSha256?.[shardKey(l, s)];
    if (want !== undefined && sha256(buf) !== want) throw new UserError(`activation shard ${file} fails its sha256 check (the manifest records ${want.slice(0, 12)}…): it was modified or truncated`, REBUILD_HINT);
    checkShardSchema(file, openShard(file, buf).schema, m);
  }
}

const nat = z.number().int().nonnegative();
const pos = z.number().int().positive();
const hex64 = z.string().regex(/^[0-9a-f]{64}$/, 'expected a sha256 (64 hex digits)');
/** manifest.json of an activations dataset, as read back (kind and formatVersion are checked first, with their own messages). */
export const activationsManifestSchema = z.looseObject({
  formatVersion: z.literal(ACTIVATIONS_FORMAT_VERSION),
  kind: z.literal('dejavu-activations'),
  toolVersion: z.string(),
  status: z.enum(['in-progress', 'complete']),
  config: z.record(z.string(), z.unknown()),
  model: z.looseObject({ dir: z.string(), fingerprint: fingerprintSchema, config: modelConfigSchema }),
  tokenizerHash: hex64.nullable(),
  data: z.looseObject({ file: z.string(), sha256: hex64 }),
  seqLen: pos,
  seqsPerShard: pos,
  layers: z.array(nat).min(1),
  dims: z.looseObject({ hidden: pos, ffn: pos, heads: pos, headDim: pos }),
  dtype: z.enum(['float16', 'float32']),
  fields: z.array(z.string()).min(1),
  shardSha256: z.record(z.string(), hex64).optional(),
  tokens: nat,
  sequences: nat,
  shards: nat,
});
true satisfies (z.output<typeof activationsManifestSchema> extends ActivationsManifest ? true : false);

const rate = z.number().min(0).max(1);
/** summary.json of a complete dataset (collect writes it; train and collect read it back). */
export const activationsSummarySchema = z.looseObject({
  tokensPerSecond: z.number().nonnegative().nullable().optional(),
  layers: z.array(z.looseObject({ layer: nat, mlpDensity: rate })),
});
export type ActivationsSummary = z.output<typeof activationsSummarySchema>;

/** progress.json of an interrupted collection: the complete shards (their sha256 per layer) and running stats. */
export const collectProgressSchema = z.looseObject({
  shardsDone: nat,
  tokens: nat,
  seconds: z.number().nonnegative(),
  shards: z.array(z.looseObject({ sha256: z.record(z.string(), hex64), tokens: nat, stats: z.record(z.string(), z.looseObject({})) })),
}).refine((p) => p.shards.length === p.shardsDone, { message: 'shards must list one record per complete shard (shardsDone)', path: ['shards'] });

const NOT_DATASET = 'pass a folder written by `dejavu collect-activations`';

export function readManifest(dir: string, wantComplete = true): ActivationsManifest {
  const f = path.join(dir, 'manifest.json');
  if (!fs.existsSync(f)) throw new UserError(`${dir} is not an activations dataset (no manifest.json)`, NOT_DATASET);
  const raw = readJson(f, REBUILD_HINT) as Partial<ActivationsManifest> | null;
  if (raw?.kind !== 'dejavu-activations') throw new UserError(`${f} is not an activations manifest (kind ${JSON.stringify(raw?.kind)})`, NOT_DATASET);
  if (raw.formatVersion !== ACTIVATIONS_FORMAT_VERSION) throw new UserError(`${f} has formatVersion ${raw.formatVersion}; this dejavu reads ${ACTIVATIONS_FORMAT_VERSION}`, 're-run collect-activations');
  const m: ActivationsManifest = parseArtifact(activationsManifestSchema, raw, f, 'activations manifest', REBUILD_HINT);
  const shard = (raw as { shard?: { index: number; count: number } }).shard;
  if (wantComplete && shard) throw new UserError(`${dir} is shard ${shard.index}/${shard.count} of a sharded collection, not a whole dataset`, `join the ${shard.count} shards first: dejavu merge --kind activations --out DIR SHARD_DIR...`);
  if (wantComplete && m.status !== 'complete') throw new UserError(`activations dataset ${dir} is incomplete (collection was interrupted)`, 're-run the same collect-activations command to resume it');
  return m;
}

/** summary.json of a dataset (null when absent: datasets are usable without it). */
export function readSummary(dir: string): ActivationsSummary | null {
  const f = path.join(dir, 'summary.json');
  if (!fs.existsSync(f)) return null;
  return parseArtifact(activationsSummarySchema, readJson(f, REBUILD_HINT), f, 'activations summary', REBUILD_HINT);
}

/** Stream a layer's rows, batch by batch, across its shards (optionally only some shards). */
export function* iterateLayer(dir: string, m: ActivationsManifest, layer: number, fields?: string[], shardFilter?: (i: number) => boolean): Generator<DecodedBatch> {
  if (!m.layers.includes(layer)) throw new UserError(`layer ${layer} was not collected in ${dir} (layers: ${m.layers.join(', ')})`);
  for (let s = 0; s < m.shards; s++) {
    if (shardFilter && !shardFilter(s)) continue;
    const file = path.join(layerDir(dir, layer), shardName(s));
    if (!fs.existsSync(file)) throw new UserError(`missing activation shard ${file}`, REBUILD_HINT);
    let first = true;
    for (const b of readShard(file)) {
      if (first) { checkShardSchema(file, b.schema, m); first = false; }
      let d: DecodedBatch;
      try { d = decodeBatch(b, fields); } catch (e) { throw new UserError(`activation shard ${file} is corrupt: ${(e as Error).message}`, REBUILD_HINT); }
      yield d;
    }
  }
}
