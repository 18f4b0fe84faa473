/**
 * safetensors reading and writing, validated like the reference implementation (huggingface/safetensors):
 * header length within bounds and inside the file, header is a JSON object, every dtype known, every shape a list
 * of non-negative integers, byte span == numel x dtype size, offsets inside the data buffer, no overlaps and no
 * holes, and the data buffer ends exactly at the end of the file.
 *
 * Tensors are read by offset with positioned reads (never the whole file in one buffer) and upcast to float32.
 */
import * as fs from 'node:fs';
import { UserError } from '../util/errors.js';
import { bf16ToF32Array, f16ToF32Array, f32ToBf16Array, f32ToF16Array } from '../util/half.js';
import { tempPathFor, writeAll } from '../util/fsx.js';
import { openInput } from '../util/input.js';

export const DTYPE_SIZE = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
} as const;
export type StDtype = keyof typeof DTYPE_SIZE;

/** Largest header we accept (the reference implementation uses 100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

export interface TensorInfo {
  name: string;
  dtype: StDtype;
  shape: number[];
  /** absolute byte offsets in the file */
  begin: number;
  end: number;
}

export interface SafetensorsFile {
  path: string;
  fileSize: number;
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
}

function fail(file: string, what: string, hint?: string): never {
  throw new UserError(`invalid safetensors file ${file}: ${what}`, hint ?? 'the file is corrupt or truncated; re-download or re-export it');
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Parse and validate the header of a safetensors file. Reads only the header bytes. */
export function openSafetensors(file: string): SafetensorsFile {
  const fd = openInput(file, { what: 'weight file', hint: 'check the path; the checkpoint download may be incomplete' });
  try {
    const fileSize = fs.fstatSync(fd).size;
    if (fileSize < 8) fail(file, `file is ${fileSize} bytes, shorter than the 8-byte header length`);
    const lenBuf = Buffer.alloc(8);
    fs.readSync(fd, lenBuf, 0, 8, 0);
    const headerLen = lenBuf.readBigUInt64LE(0);
    if (headerLen > BigInt(MAX_HEADER_BYTES)) fail(file, `header length ${headerLen} exceeds the limit of ${MAX_HEADER_BYTES} bytes`);
    const n = Number(headerLen);
    if (8 + n > fileSize) fail(file, `header length ${n} runs past the end of the file (${fileSize} bytes)`);
    const hbuf = Buffer.alloc(n);
    fs.readSync(fd, hbuf, 0, n, 8);
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(hbuf));
    } catch (e) {
      fail(file, `header is not valid UTF-8 JSON (${(e as Error).message})`);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) fail(file, 'header is not a JSON object');
    const dataStart = 8 + n;
    const dataLen = fileSize - dataStart;
    const tensors = new Map<string, TensorInfo>();
    let metadata: Record<string, string> = {};
    for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (typeof raw !== 'object' || raw === null || Array.isArray(raw) || Object.values(raw).some((v) => typeof v !== 'string'))
          fail(file, '__metadata__ must be an object of strings');
        metadata = raw as Record<string, string>;
        continue;
      }
      const r = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (typeof r !== 'object' || r === null) fail(file, `tensor "${name}": entry is not an object`);
      if (typeof r.dtype !== 'string' || !(r.dtype in DTYPE_SIZE))
        fail(file, `tensor "${name}": unknown dtype ${JSON.stringify(r.dtype)}`, `supported dtypes: ${Object.keys(DTYPE_SIZE).join(', ')}`);
      if (!Array.isArray(r.shape) || !r.shape.every((d) => Number.isSafeInteger(d) && d >= 0))
        fail(file, `tensor "${name}": shape ${JSON.stringify(r.shape)} is not a list of non-negative integers`);
      const off = r.data_offsets;
      if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[0] > off[1])
        fail(file, `tensor "${name}": data_offsets ${JSON.stringify(off)} must be [begin, end] with 0 <= begin <= end`);
      const dtype = r.dtype as StDtype;
      const shape = r.shape as number[];
      const span = (off[1] as number) - (off[0] as number);
      const want = numel(shape) * DTYPE_SIZE[dtype];
      if (span !== want)
        fail(file, `tensor "${name}": byte span ${span} != numel ${numel(shape)} x ${DTYPE_SIZE[dtype]} bytes (${dtype}) = ${want}`);
      if ((off[1] as number) > dataLen)
        fail(file, `tensor "${name}": data_offsets end ${off[1]} is past the data buffer (${dataLen} bytes)`);
      tensors.set(name, { name, dtype, shape, begin: dataStart + (off[0] as number), end: dataStart + (off[1] as number) });
    }
    // no overlaps, no holes, buffer fully covered (as the reference implementation requires)
    const sorted = [...tensors.values()].sort((a, b) => a.begin - b.begin || a.end - b.end);
    let cursor = dataStart;
    for (const t of sorted) {
      if (t.begin < cursor) fail(file, `tensor "${t.name}" overlaps the previous tensor (begins at ${t.begin - dataStart}, previous ends at ${cursor - dataStart})`);
      if (t.begin > cursor) fail(file, `hole in the data buffer before tensor "${t.name}" (bytes ${cursor - dataStart}..${t.begin - dataStart} unused)`);
      cursor = t.end;
    }
    if (cursor !== fileSize) fail(file, `data buffer is ${dataLen} bytes but the tensors cover ${cursor - dataStart} (trailing bytes or truncated file)`);
    return { path: file, fileSize, tensors, metadata };
  } finally {
    fs.closeSync(fd);
  }
}

function readBytes(file: string, begin: number, end: number): Buffer {
  const buf = Buffer.allocUnsafe(end - begin);
  const fd = fs.openSync(file, 'r');
  try {
    let got = 0;
    while (got < buf.length) {
      const n = fs.readSync(fd, buf, got, buf.length - got, begin + got);
      if (n === 0) throw new UserError(`unexpected end of ${file} while reading bytes ${begin}..${end}`, 'the file is truncated');
      got += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return buf;
}

/** Read one tensor and convert it to float32 (F32/F16/BF16/F64/integers). */
export function readTensorF32(st: SafetensorsFile, name: string): Float32Array {
  const t = st.tensors.get(name);
  if (!t) throw new UserError(`tensor "${name}" not found in ${st.path}`, `available: ${[...st.tensors.keys()].slice(0, 20).join(', ')}`);
  const buf = readBytes(st.path, t.begin, t.end);
  const n = numel(t.shape);
  // copy into an aligned buffer (Buffer slices may be unaligned)
  const ab = new ArrayBuffer(buf.length);
  new Uint8Array(ab).set(buf);
  switch (t.dtype) {
    case 'F32': return new Float32Array(ab);
    case 'F16': return f16ToF32Array(new Uint16Array(ab));
    case 'BF16': return bf16ToF32Array(new Uint16Array(ab));
    case 'F64': return Float32Array.from(new Float64Array(ab));
    case 'I64': { const a = new BigInt64Array(ab); const o = new Float32Array(n); for (let i = 0; i < n; i++) o[i] = Number(a[i]); return o; }
    case 'I32': return Float32Array.from(new Int32Array(ab));
    case 'I16': return Float32Array.from(new Int16Array(ab));
    case 'I8': return Float32Array.from(new Int8Array(ab));
    case 'U8': case 'BOOL': return Float32Array.from(new Uint8Array(ab));
  }
}

/** Read an integer tensor (I64/I32/...) as plain numbers (exact up to 2^53; float dtypes are rounded). */
export function readTensorInt(st: SafetensorsFile, name: string): number[] {
  const t = st.tensors.get(name);
  if (t && (t.dtype === 'I64' || t.dtype === 'I32')) {
    // not through float32: ids and counts above 2^24 must survive
    const buf = readBytes(st.path, t.begin, t.end);
    const ab = new ArrayBuffer(buf.length);
    new Uint8Array(ab).set(buf);
    return t.dtype === 'I64' ? Array.from(new BigInt64Array(ab), (v) => Number(v)) : Array.from(new Int32Array(ab));
  }
  return Array.from(readTensorF32(st, name), (v) => Math.round(v));
}

export interface TensorToWrite {
  dtype: 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'U8';
  shape: number[];
  data: Float32Array | Int32Array | BigInt64Array | Uint8Array | Uint16Array | number[];
}

function encode(t: TensorToWrite, name: string): Uint8Array {
  const n = numel(t.shape);
  if (t.data.length !== n) throw new Error(`writeSafetensors: tensor "${name}" has ${t.data.length} values for shape [${t.shape}]`);
  let arr: ArrayBufferView;
  switch (t.dtype) {
    case 'F32': arr = t.data instanceof Float32Array ? t.data : Float32Array.from(t.data as ArrayLike<number>); break;
    case 'F16': arr = t.data instanceof Uint16Array ? t.data : f32ToF16Array(t.data as ArrayLike<number>); break;
    case 'BF16': arr = t.data instanceof Uint16Array ? t.data : f32ToBf16Array(t.data as ArrayLike<number>); break;
    case 'I32': arr = t.data instanceof Int32Array ? t.data : Int32Array.from(t.data as ArrayLike<number>); break;
    case 'I64': arr = t.data instanceof BigInt64Array ? t.data : BigInt64Array.from(Array.from(t.data as ArrayLike<number>, (v) => BigInt(Math.round(v)))); break;
    case 'U8': arr = t.data instanceof Uint8Array ? t.data : Uint8Array.from(t.data as ArrayLike<number>); break;
  }
  return new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);
}

/**
 * Write tensors to `file` atomically (temp name + rename). Tensors are laid out in the given order.
 * The header is padded with spaces to a multiple of 8 bytes, as the reference implementation does.
 */
export function writeSafetensors(file: string, tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): void {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  const blobs: Uint8Array[] = [];
  let off = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const b = encode(t, name);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + b.byteLength] };
    blobs.push(b);
    off += b.byteLength;
  }
  let hjson = JSON.stringify(header);
  hjson += ' '.repeat((8 - (Buffer.byteLength(hjson) % 8)) % 8);
  const hbytes = Buffer.from(hjson, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hbytes.length));
  const tmp = tempPathFor(file);
  try {
    const fd = fs.openSync(tmp, 'w');
    try {
      writeAll(fd, len);
      writeAll(fd, hbytes);
      for (const b of blobs) writeAll(fd, b);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}
