/**
 * The activation dataset's Arrow format (see docs/activations.md). Per layer, Arrow IPC files
 * `layer-LL/shard-SSSSS.arrow`, one row per token, standard Arrow types only:
 *   seq int32, pos int32, x_attn FixedSizeList<Float16|Float32>[d], x_mlp (same), mlp_active FixedSizeList<Bool>[F],
 *   mlp_act FixedSizeList<Float16>[F] (optional), head_norm FixedSizeList<Float32>[H].
 */
import * as fs from 'node:fs';
import * as A from 'apache-arrow';
import { f16ToF32Array } from '../util/half.js';
import { createHash } from 'node:crypto';
import { Writable } from 'node:stream';
import { UserError } from '../util/errors.js';
import { writeAll } from '../util/fsx.js';

export const ACTIVATIONS_FORMAT_VERSION = 1;

export interface LayerSchemaSpec { layer: number; hidden: number; ffn: number; heads: number; dtype: 'float16' | 'float32'; mlpAct: boolean }

function fsl(n: number, t: A.DataType): A.FixedSizeList { return new A.FixedSizeList(n, new A.Field('item', t, false)); }

export function layerSchema(s: LayerSchemaSpec): A.Schema {
  const h = s.dtype === 'float16' ? new A.Float16() : new A.Float32();
  const fields = [
    new A.Field('seq', new A.Int32(), false),
    new A.Field('pos', new A.Int32(), false),
    new A.Field('x_attn', fsl(s.hidden, h), false),
    new A.Field('x_mlp', fsl(s.hidden, h), false),
    new A.Field('mlp_active', fsl(s.ffn, new A.Bool()), false),
    ...(s.mlpAct ? [new A.Field('mlp_act', fsl(s.ffn, new A.Float16()), false)] : []),
    new A.Field('head_norm', fsl(s.heads, new A.Float32()), false),
  ];
  return new A.Schema(fields, new Map([
    ['formatVersion', String(ACTIVATIONS_FORMAT_VERSION)], ['layer', String(s.layer)], ['hidden', String(s.hidden)],
    ['ffn', String(s.ffn)], ['heads', String(s.heads)], ['dtype', s.dtype],
  ]));
}

export interface LayerRows {
  rows: number;
  seq: Int32Array;
  pos: Int32Array;
  xAttn: Float32Array | Uint16Array; // [rows*d], Uint16Array = float16 bits
  xMlp: Float32Array | Uint16Array;
  mlpActiveBits: Uint8Array; // [ceil(rows*F/8)] LSB-first bitmap
  mlpAct?: Uint16Array; // float16 bits [rows*F]
  headNorm: Float32Array; // [rows*H]
}

export function makeBatch(schema: A.Schema, r: LayerRows): A.RecordBatch {
  const children = schema.fields.map((f) => {
    const name = f.name;
    if (name === 'seq' || name === 'pos') return A.makeData({ type: new A.Int32(), length: r.rows, nullCount: 0, data: name === 'seq' ? r.seq : r.pos });
    const t = f.type as A.FixedSizeList;
    const ct = t.children[0]!.type;
    const values = name === 'x_attn' ? r.xAttn : name === 'x_mlp' ? r.xMlp : name === 'mlp_active' ? r.mlpActiveBits : name === 'mlp_act' ? r.mlpAct! : r.headNorm;
    const child = A.makeData({ type: ct, length: r.rows * t.listSize, nullCount: 0, data: values as never });
    return A.makeData({ type: t, length: r.rows, nullCount: 0, child });
  });
  return new A.RecordBatch(schema, A.makeData({ type: new A.Struct(schema.fields), length: r.rows, nullCount: 0, children }));
}

/**
 * Streams record batches to `file` (the caller renames it when complete). Bytes go through `writeAll` with a
 * synchronous fd; a write error (ENOSPC...) is kept and rethrown by the next write() or by close(), never left as an
 * unhandled stream error (which the wasm backend's process handlers turned into a Node crash with exit code 7).
 */
export class ShardWriter {
  private writer = new A.RecordBatchFileWriter();
  private fd: number;
  private done: Promise<void>;
  private error: unknown = null;
  private hash = createHash('sha256');
  rows = 0;
  /** sha256 of the file, set by close() */
  sha256 = '';
  constructor(readonly file: string) {
    this.fd = fs.openSync(file, 'w');
    const fd = this.fd;
    const sink = new Writable({
      write: (chunk: Buffer, _enc, cb) => {
        try { writeAll(fd, chunk); this.hash.update(chunk); cb(); } catch (e) { this.error ??= e; cb(e as Error); }
      },
    });
    this.done = new Promise<void>((res, rej) => { sink.on('finish', () => res()); sink.on('error', (e) => { this.error ??= e; rej(e); }); });
    this.done.catch(() => undefined); // observed through `error` / close()
    this.writer.toNodeStream().pipe(sink);
  }
  write(b: A.RecordBatch): void {
    if (this.error) throw this.error;
    this.writer.write(b); this.rows += b.numRows;
  }
  async close(): Promise<void> {
    if (this.error) throw this.error;
    this.writer.close();
    await this.done;
    if (this.error) throw this.error;
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    this.fd = -1;
    this.sha256 = this.hash.digest('hex');
  }
  async abort(): Promise<void> {
    try { this.writer.close(); await Promise.race([this.done, new Promise((r) => setTimeout(r, 100))]); } catch { /* ignore */ }
    if (this.fd >= 0) { try { fs.closeSync(this.fd); } catch { /* ignore */ } this.fd = -1; }
    fs.rmSync(this.file, { force: true });
  }
}

/** One record batch of a layer shard, decoded to float32 (hidden states) and raw bitmaps. */
export interface DecodedBatch {
  rows: number;
  seq: Int32Array;
  pos: Int32Array;
  xAttn: Float32Array; // [rows, d]
  xMlp: Float32Array;
  /** mlp_active as 0/1 bytes [rows, F] */
  mlpActive: Uint8Array;
  mlpAct?: Float32Array; // [rows, F]
  headNorm: Float32Array; // [rows, H]
}

function listValues(batch: A.RecordBatch, name: string): { values: ArrayLike<number> & { subarray(a: number, b: number): ArrayLike<number> }; size: number; offset: number; type: A.DataType } | null {
  const col = batch.getChild(name);
  if (!col) return null;
  const data = col.data[0]!;
  const t = data.type as A.FixedSizeList;
  const child = data.children[0]!;
  return { values: child.values as never, size: t.listSize, offset: data.offset + child.offset / t.listSize, type: child.type };
}

function floats(batch: A.RecordBatch, name: string, want: Set<string>): Float32Array | undefined {
  if (!want.has(name)) return undefined;
  const v = listValues(batch, name);
  if (!v) return undefined;
  const n = batch.numRows * v.size;
  const start = v.offset * v.size;
  const sub = v.values.subarray(start, start + n);
  if (A.DataType.isFloat(v.type) && (v.type as A.Float).precision === A.Precision.HALF) return f16ToF32Array(sub as Uint16Array);
  return Float32Array.from(sub as Float32Array);
}

export function decodeBatch(batch: A.RecordBatch, fields: string[] = ['x_attn', 'x_mlp', 'mlp_active', 'mlp_act', 'head_norm']): DecodedBatch {
  const want = new Set(fields);
  const rows = batch.numRows;
  const seqCol = batch.getChild('seq')!.data[0]!;
  const posCol = batch.getChild('pos')!.data[0]!;
  const out: DecodedBatch = {
    rows,
    seq: (seqCol.values as Int32Array).subarray(seqCol.offset, seqCol.offset + rows),
    pos: (posCol.values as Int32Array).subarray(posCol.offset, posCol.offset + rows),
    xAttn: floats(batch, 'x_attn', want) ?? new Float32Array(0),
    xMlp: floats(batch, 'x_mlp', want) ?? new Float32Array(0),
    mlpActive: new Uint8Array(0),
    headNorm: floats(batch, 'head_norm', want) ?? new Float32Array(0),
  };
  const act = floats(batch, 'mlp_act', want);
  if (act) out.mlpAct = act;
  if (want.has('mlp_active')) {
    const v = listValues(batch, 'mlp_active')!;
    const bits = v.values as unknown as Uint8Array;
    const n = rows * v.size;
    const base = v.offset * v.size;
    const m = new Uint8Array(n);
    for (let i = 0; i < n; i++) { const j = base + i; m[i] = (bits[j >> 3]! >> (j & 7)) & 1; }
    out.mlpActive = m;
  }
  return out;
}

export const REBUILD_HINT = 're-run collect-activations to rebuild it';
const MAGIC = Buffer.from('ARROW1');

/** Open a shard's bytes as an Arrow IPC file; truncation and garbage are UserErrors naming the file. */
export function openShard(file: string, buf: Buffer): A.RecordBatchReader {
  if (buf.length < 2 * MAGIC.length || !buf.subarray(0, 6).equals(MAGIC) || !buf.subarray(buf.length - 6).equals(MAGIC))
    throw new UserError(`activation shard ${file} is truncated or not an Arrow IPC file (${buf.length} bytes, no Arrow file footer)`, REBUILD_HINT);
  try { return A.RecordBatchReader.from(buf).open(); } catch (e) { throw new UserError(`activation shard ${file} is not a valid Arrow IPC file: ${(e as Error).message}`, REBUILD_HINT); }
}

/** Iterate the record batches of one shard file (one shard in memory at a time, bounded by rowsPerShard). */
export function* readShard(file: string): Generator<A.RecordBatch> {
  let buf: Buffer;
  try { buf = fs.readFileSync(file); } catch (e) { throw new UserError(`cannot read activation shard ${file}: ${(e as Error).message}`, REBUILD_HINT); }
  const reader = openShard(file, buf);
  const fv = reader.schema?.metadata.get('formatVersion');
  const it = reader[Symbol.iterator]();
  for (;;) {
    let r: IteratorResult<A.RecordBatch>;
    try { r = it.next(); } catch (e) { throw new UserError(`activation shard ${file} is corrupt: ${(e as Error).message}`, REBUILD_HINT); }
    if (r.done) break;
    const b = r.value;
    if (b.schema.metadata.get('formatVersion') !== String(ACTIVATIONS_FORMAT_VERSION))
      throw new UserError(`activation shard ${file} has formatVersion ${fv ?? b.schema.metadata.get('formatVersion')}, expected ${ACTIVATIONS_FORMAT_VERSION}`, 're-run collect-activations with this version of dejavu');
    yield b;
  }
}
