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
import { UserError } from '../util/errors.js';
import { writeAllAsync } from '../util/fsx.js';

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
 * One shard's Arrow IPC file bytes, produced batch by batch on the calling thread, and their sha256: the CPU part of
 * writing a shard (serializing and hashing), so that it can run on a writer thread while the file writes stay with
 * the collection (ShardFile). The sink takes the writer's chunks as it emits them, synchronously.
 */
export class ShardEncoder {
  private chunks: Uint8Array[] = [];
  private hash = createHash('sha256');
  private writer = new A.RecordBatchFileWriter();
  constructor() {
    const take = (c: Uint8Array) => { this.hash.update(c); this.chunks.push(c); };
    this.writer.reset(new (class extends A.AsyncByteQueue { override write(v: Uint8Array) { take(v); } })());
  }
  /** the bytes this batch adds to the file (the first batch's begin with the file's magic and schema) */
  encode(b: A.RecordBatch): Uint8Array { this.writer.write(b); return this.take(); }
  /** the file's last bytes (its footer) and the whole file's sha256 */
  end(): { bytes: Uint8Array; sha256: string } { this.writer.close(); return { bytes: this.take(), sha256: this.hash.digest('hex') }; }
  private take(): Uint8Array {
    // one buffer of its own (it moves to the collection's thread whole): the chunks are views of the batch's arrays
    const out = new Uint8Array(this.chunks.reduce((a, c) => a + c.byteLength, 0));
    let o = 0;
    for (const c of this.chunks) { out.set(c, o); o += c.byteLength; }
    this.chunks = [];
    return out;
  }
}

/** A layer's columns of one collection batch (seq and pos follow from firstSeq and seqLen). */
export type LayerCols = Omit<LayerRows, 'seq' | 'pos'>;
/** A writer thread's job: one batch of a shard file (`first`: the shard's first, which starts it), or its end. */
export type ShardJob =
  | { kind: 'shard-batch'; file: string; first: boolean; schema: LayerSchemaSpec; firstSeq: number; seqLen: number; cols: LayerCols }
  | { kind: 'shard-end'; file: string };
export interface ShardBytes { bytes: Uint8Array; sha256?: string }

/** the shards being encoded on this thread, by their temp file's path */
const encoders = new Map<string, ShardEncoder>();

/** Run one ShardJob on this thread (a writer thread, or the collection's own when it writes serially). */
export function runShardJob(job: ShardJob): ShardBytes {
  if (job.kind === 'shard-end') {
    const e = encoders.get(job.file);
    if (!e) throw new Error(`no shard being encoded for ${job.file}`);
    encoders.delete(job.file);
    return e.end();
  }
  if (job.first) encoders.set(job.file, new ShardEncoder());
  const e = encoders.get(job.file);
  if (!e) throw new Error(`no shard being encoded for ${job.file}`);
  const { rows } = job.cols, seq = new Int32Array(rows), pos = new Int32Array(rows);
  for (let i = 0; i < rows; i++) { seq[i] = job.firstSeq + Math.floor(i / job.seqLen); pos[i] = i % job.seqLen; }
  return { bytes: e.encode(makeBatch(layerSchema(job.schema), { ...job.cols, seq, pos })) };
}
/** forget a shard this thread was encoding (its file was aborted) */
export const dropShard = (file: string) => encoders.delete(file);

/** the early flushes of every ShardFile, one at a time (one of libuv's threads at most: the appends keep the others) */
let flushes: Promise<void> = Promise.resolve();
/** bytes appended to a file after which its data is flushed (fdatasync) without waiting for close(); the test hook
 * DEJAVU_COLLECT_FLUSH_BYTES sets it (0: never early) */
const flushBytes = () => { const v = process.env.DEJAVU_COLLECT_FLUSH_BYTES; return v !== undefined && /^\d+$/.test(v) ? Number(v) : 16 << 20; };

/**
 * A shard file being written: its temp sibling (the caller renames it when complete), the bytes appended in order
 * through libuv's threads (writeAllAsync: the calling thread stays free). A write error (ENOSPC...) rejects that
 * append and every later one and close(); abort() waits for the writes in flight before it closes and removes the file.
 *
 * Every 16 MiB appended, the file's data is flushed (fdatasync) in the background, one file at a time across the
 * process, so that the disk writes while the next batches are made and close()'s fsync finds little left. Why: at
 * batch 32 x 256 on the GPU box every batch is a whole shard of 1.84 GB, whose fsync at close took ~2 s at the disk's
 * 894 MB/s with the disk idle while the batch was appended (docs/gpu.md). It changes nothing in the files or in when
 * a shard counts as complete (close() still fsyncs before the caller renames); a flush's error rejects close().
 */
export class ShardFile {
  private fd: number;
  private pending: Promise<void> = Promise.resolve();
  private flushed: Promise<void> = Promise.resolve();
  private unflushed = 0;
  private readonly flushAt = flushBytes();
  constructor(readonly file: string) { this.fd = fs.openSync(file, 'w'); }
  append(bytes: Uint8Array): Promise<void> {
    const p = this.pending.then(() => writeAllAsync(this.fd, bytes));
    this.pending = p;
    p.catch(() => undefined); // observed by the caller, a later append or close()
    this.unflushed += bytes.byteLength;
    if (this.flushAt > 0 && this.unflushed >= this.flushAt) {
      this.unflushed = 0;
      const fd = this.fd, before = this.flushed;
      const f = Promise.all([p, flushes, before]).then(() => new Promise<void>((res, rej) => fs.fdatasync(fd, (e) => e ? rej(e) : res())));
      f.catch(() => undefined); // observed by close() (or dropped by abort())
      this.flushed = f;
      flushes = f.catch(() => undefined);
    }
    return p;
  }
  async close(): Promise<void> {
    await this.pending;
    await this.flushed;
    await new Promise<void>((res, rej) => fs.fsync(this.fd, (e) => e ? rej(e) : res()));
    fs.closeSync(this.fd);
    this.fd = -1;
  }
  async abort(): Promise<void> {
    await this.pending.catch(() => undefined); // never close an fd a write or flush in flight still uses
    await this.flushed.catch(() => undefined);
    if (this.fd >= 0) { try { fs.closeSync(this.fd); } catch { /* ignore */ } this.fd = -1; }
    fs.rmSync(this.file, { force: true });
    dropShard(this.file);
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
