/**
 * A WebAssembly (f32x4 SIMD) arena for the sparse decode kernels: weights are copied in once at load; per token,
 * gather_matvec / gather_axpy_all read only the selected rows. ~4x the throughput of the plain-JS loops, the same
 * order as tfjs-wasm's own matvec, so skipping rows turns into wall-clock savings. The batched forward pass uses the
 * same module, in a process-wide scratch arena, for attention (attentionHost) and a collection batch's activation
 * bits (activationBits).
 */
import { KERNELS_SHARED_WASM_BASE64, KERNELS_WASM_BASE64 } from './kernels-binary.js';
import { bf16ToF32Array, f16ToF32Array, f32ToBf16Array, f32ToF16Array } from '../../../util/half.js';
import type { NativeRowsModule } from '../native/native.js';

interface Memory { buffer: ArrayBuffer; grow(pages: number): number }
const WA = (globalThis as unknown as { WebAssembly: { Module: new (bytes: Uint8Array) => object; Instance: new (m: object, imports: object) => { exports: unknown };
  Memory: new (d: { initial: number; maximum: number; shared: boolean }) => Memory } }).WebAssembly;

export interface WasmExports {
  memory: Memory;
  gather_matvec(W: number, rows: number, k: number, x: number, d: number, out: number): void;
  gather_axpy_all(W: number, rows: number, k: number, a: number, d: number, n: number, out: number): void;
  gather8_matvec(W: number, rows: number, k: number, x: number, d: number, out: number): void;
  gather8_axpy(W: number, rows: number, k: number, a: number, d: number, n: number, out: number): void;
  attend_one(q: number, K: number, V: number, rows: number, n: number, hd: number, scale: number, p: number, out: number): void;
  attend_heads(q: number, K: number, V: number, rows: number, n: number, hd: number, scale: number, p: number, out: number, H: number, qs: number, ks: number, os: number): void;
  attend4_heads(q: number, K: number, V: number, rows: number, n0: number, n1: number, n2: number, n3: number, hd: number, scale: number, p: number, out: number,
    H: number, qs: number, ks: number, os: number): void;
  act_bits(act: number, n: number, bits: number, stats: number): number;
  q8_quant(x: number, d: number, q: number, s: number): void;
}

/** how a matrix's rows are stored: float32; float16 / bfloat16 bits; q8_0 (int8, a float32 scale per 32 values) */
export type RowDtype = 'float32' | 'float16' | 'bfloat16' | 'q8_0';
const PREFIX: Record<RowDtype, string> = { float32: 'f32', float16: 'f16', bfloat16: 'bf16', q8_0: 'q8' };
/** bytes a value */
const VALUE_BYTES: Record<RowDtype, number> = { float32: 4, float16: 2, bfloat16: 2, q8_0: 1 };
const DTYPES = Object.keys(PREFIX) as RowDtype[];
const KINDS = ['mv', 'mv8', 'ax', 'ax8'] as const;
/**
 * The row kernels' exports, by index (dtype * 4 + kind): the thread pool runs them by index. Every one takes
 * (W, S, rows, k, x, xs, d, n, out) (kernels.wat); q8_0 has one matvec.
 */
export const ROW_FNS: string[] = DTYPES.flatMap((t) => KINDS.map((k) => `${PREFIX[t]}_${t === 'q8_0' && k === 'mv8' ? 'mv' : k}`));

/** rows x d matrix living in an arena: values at `off`, rows `n` bytes apart; q8_0: scales at `soff` (n / 8 bytes a row) */
export interface WasmRows { arena: WasmArena; off: number; soff: number; rows: number; d: number; n: number; dtype: RowDtype }

/** A persistent pool of worker threads running the row kernels over an arena's shared memory (pool.ts). */
export interface RowPool {
  readonly threads: number;
  /** calls run on the pool so far */
  readonly calls: number;
  /** export ROW_FNS[fn] over each chunk's arguments (null: nothing), chunk 0 on this thread; returns when all are done */
  run(fn: number, chunks: (number[] | null)[]): void;
  dispose(): void;
}

const PAGE = 65536;
const HUGE = 2 << 20; // a transparent huge page
/** x rounded up to a multiple of a (plain arithmetic: byte offsets pass 2^31, where JS bit operations turn negative) */
export function align(x: number, a: number): number { return Math.ceil(x / a) * a; }
const MAX_BYTES = 3.5 * 2 ** 30;
let compiled: object | null | undefined;
let live = 0; // bytes of WebAssembly memory held by arenas not yet disposed

/**
 * One WebAssembly instance (its own linear memory) with a bump allocator. A model owns one arena for its weight
 * rows and frees it with dispose() (WebAssembly memory cannot shrink: dropping the instance is the only way to give
 * it back). Scratch space for the kernels lives at the end of the same arena.
 */
export class WasmArena {
  private ex: WasmExports | null;
  private top = 1024;
  private scratch = 0;
  private scratchBytes = 0;
  private counted = 0;
  /** worker threads sharing this arena's memory (shared arenas only; set by startPool, disposed with the arena) */
  pool: RowPool | null = null;
  /** the native kernels (src/model/kernels/native) run this arena's row calls instead, on `threads` threads */
  native: { mod: NativeRowsModule; threads: number } | null = null;
  /** `tracked`: counted by liveArenaBytes (model arenas; not the process-wide scratch arena); `shared`: the module and
   * shared memory that worker threads instantiate */
  constructor(ex: WasmExports, private readonly tracked = true, readonly shared: { module: object; memory: Memory } | null = null) { this.ex = ex; this.count(); }

  private count(): void {
    if (!this.tracked || !this.ex) return;
    const now = this.ex.memory.buffer.byteLength;
    live += now - this.counted;
    this.counted = now;
  }

  get disposed(): boolean { return this.ex === null; }
  /** bytes of WebAssembly memory this arena holds (0 once disposed) */
  get bytes(): number { return this.ex ? this.ex.memory.buffer.byteLength : 0; }

  exports(): WasmExports {
    if (!this.ex) throw new Error('wasm kernel arena used after its model was disposed');
    return this.ex;
  }

  /** `bytes` at a multiple of `al` (64; row matrices: 4096, see toWasmRows) */
  alloc(bytes: number, al = 64): number | null {
    const e = this.exports();
    const off = align(this.top, al);
    const end = off + bytes;
    if (end > MAX_BYTES) return null;
    const have = e.memory.buffer.byteLength;
    if (end > have) {
      // with the native kernels (advise: huge pages), grown to 2 MiB past the next 2 MiB boundary: every byte written
      // then lies in a 2 MiB page advised before its first touch (grown to `end` exactly, the partial 2 MiB page at
      // each grow's end was written before it was advised, in 4 KiB pages: ~310 of 1,030 MB of a TinyLlama-width
      // model's RSS; a 4 KiB page is a TLB miss per float16 row of 2,048 values)
      const to = this.native && align(end + HUGE, HUGE) <= MAX_BYTES ? align(end + HUGE, HUGE) : end;
      try { e.memory.grow(Math.ceil((to - have) / PAGE)); } catch { return null; }
      this.count();
      this.native?.mod.advise(e.memory.buffer); // the new pages are not written yet: huge pages where the OS has them
    }
    this.top = end;
    return off;
  }

  private viewBuf: ArrayBuffer | null = null;
  private f32v = new Float32Array(0);
  private i32v = new Int32Array(0);
  /** Float32 / Int32 views of the whole memory (made again after the memory grew) */
  views(): { f32: Float32Array; i32: Int32Array } {
    const b = this.exports().memory.buffer;
    if (b !== this.viewBuf) { this.viewBuf = b; this.f32v = new Float32Array(b); this.i32v = new Int32Array(b); }
    return { f32: this.f32v, i32: this.i32v };
  }

  private allOff = 0;
  private allN = 0;
  /** byte offset of the ids 0..n-1 (int32) in this arena, written once (dense calls pass it instead of copying ids) */
  allRows(n: number): number {
    if (n > this.allN) {
      const off = this.alloc(4 * n);
      if (off === null) throw new Error('wasm kernel arena is full');
      const { i32 } = this.views();
      for (let i = 0; i < n; i++) i32[(off / 4) + i] = i;
      this.allOff = off; this.allN = n;
    }
    return this.allOff;
  }

  scratchFor(bytes: number): number {
    if (bytes > this.scratchBytes) {
      const off = this.alloc(bytes);
      if (off === null) throw new Error('wasm kernel arena is full');
      this.scratch = off; this.scratchBytes = bytes;
    }
    return this.scratch;
  }

  dispose(): void {
    if (!this.ex) return;
    this.pool?.dispose();
    this.pool = null;
    live -= this.counted;
    this.counted = 0;
    this.ex = null;
  }
}

let compiledShared: object | null | undefined;
/**
 * A fresh arena, or null when WebAssembly SIMD is unavailable (callers fall back to the JS kernels). `shared`: its
 * memory is a shared WebAssembly.Memory (SharedArrayBuffer) that a thread pool can run kernels over (startPool);
 * null when shared memory is unavailable.
 */
export function createArena(tracked = true, shared = false): WasmArena | null {
  try {
    if (!shared) {
      if (compiled === undefined) compiled = new WA.Module(Buffer.from(KERNELS_WASM_BASE64, 'base64'));
      if (!compiled) return null;
      return new WasmArena(new WA.Instance(compiled, {}).exports as unknown as WasmExports, tracked);
    }
    if (compiledShared === undefined) compiledShared = new WA.Module(Buffer.from(KERNELS_SHARED_WASM_BASE64, 'base64'));
    if (!compiledShared) return null;
    const memory = new WA.Memory({ initial: 1, maximum: 65536, shared: true });
    return new WasmArena(new WA.Instance(compiledShared, { env: { memory } }).exports as unknown as WasmExports, tracked, { module: compiledShared, memory });
  } catch {
    if (shared) compiledShared = null; else compiled = null;
    return null;
  }
}

/** Total bytes held by arenas that are not disposed (for tests and benchmarks). */
export function liveArenaBytes(): number { return live; }

let shared: WasmArena | null | undefined;
/** The process-wide scratch arena of attentionHost (scratch only, reused: it never grows past the largest call). */
function sharedArena(): WasmArena | null {
  if (shared === undefined) shared = createArena(false);
  return shared;
}

/** float16 bits that are inf or NaN (the kernels' f16 widening is exact for finite values only) */
function nonFiniteF16(h: Uint16Array): boolean {
  // two halves a step (a float16 checkpoint's every matrix passes here at load: one half at a time was 14% of a load)
  const n2 = h.byteOffset % 4 === 0 ? h.length >> 1 : 0, w = new Uint32Array(h.buffer, h.byteOffset, n2);
  for (let i = 0; i < n2; i++) { const x = w[i]!; if ((x & 0x7c00) === 0x7c00 || (x & 0x7c000000) === 0x7c000000) return true; }
  for (let i = 2 * n2; i < h.length; i++) if ((h[i]! & 0x7c00) === 0x7c00) return true;
  return false;
}
/** a float32 value that float16 cannot hold finitely (|v| rounds to inf, or inf / NaN) */
function pastF16(a: Float32Array): boolean { for (let i = 0; i < a.length; i++) if (!(Math.abs(a[i]!) < 65520)) return true; return false; }
function nonFinite(a: Float32Array): boolean { for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) return true; return false; }

/**
 * q8_0 of rows [rows, d] (d % 32 == 0) into int8 values q and float32 scales s (one per 32 values): s = max|w| / 127,
 * q = round(w / s).
 */
export function quantizeQ8(w: Float32Array, q: Int8Array, s: Float32Array): void {
  for (let b = 0; b < s.length; b++) {
    const o = b * 32;
    let m = 0;
    for (let j = 0; j < 32; j++) m = Math.max(m, Math.abs(w[o + j]!));
    const sc = m / 127;
    s[b] = sc;
    const inv = sc > 0 ? 1 / Math.fround(sc) : 0;
    for (let j = 0; j < 32; j++) q[o + j] = Math.max(-127, Math.min(127, Math.round(w[o + j]! * inv)));
  }
}

/**
 * Copy a [rows, d] matrix into `arena` as `dtype` (data: float32 values, or float16 bits); null when there is no arena
 * (no SIMD), d % 8 != 0, or the arena is full. Rows that `dtype` cannot hold (inf / NaN, or past float16's range
 * for float16) stay float32; q8_0 with d % 32 != 0 is float16.
 */
export function toWasmRows(data: Float32Array | Uint16Array, rows: number, d: number, arena: WasmArena | null, dtype: RowDtype = 'float32'): WasmRows | null {
  if (d % 8 !== 0 || !arena) return null;
  const f16in = data instanceof Uint16Array;
  if (dtype === 'q8_0' && d % 32 !== 0) dtype = 'float16';
  if (dtype === 'float16' && (f16in ? nonFiniteF16(data) : pastF16(data))) dtype = 'float32';
  const f32 = () => (f16in ? f16ToF32Array(data) : data);
  let wide: Float32Array | null = null;
  // q8_0 with the native kernels: quantized natively (the same bits as quantizeQ8) straight from the source values
  const nq = dtype === 'q8_0' && typeof arena.native?.mod.q8 === 'function' ? arena.native.mod : null;
  if (dtype === 'q8_0' && !nq && nonFinite((wide = f32()))) dtype = 'float32';
  const len = rows * d;
  // a matrix starts on a 4 KiB page, so a row of 4 KiB (float16 at d 2048) is one page: the hardware prefetchers stop
  // at page boundaries, and a 553 MB float16 stream read by the native 8-row kernel (2 threads, this VM's Sapphire
  // Rapids, median of 7) ran 16.6-18.2 GB/s with its rows 2 KiB off a page against 19.9-22.5 aligned
  const PAGE_AL = len >= 1 << 16 ? 4096 : 64;
  if (nq) {
    const off = arena.alloc(len + len / 8, PAGE_AL);
    if (off === null) return null;
    const buf = arena.exports().memory.buffer;
    if (nq.q8(data, new Int8Array(buf, off, len), new Float32Array(buf, off + len, len / 32))) return { arena, off, soff: off + len, rows, d, n: d, dtype };
    dtype = 'float32'; // a value q8_0 cannot hold (inf / NaN): these rows stay float32 (the block stays allocated: a bump arena)
  }
  const n = d * VALUE_BYTES[dtype];
  const off = arena.alloc(len * VALUE_BYTES[dtype] + (dtype === 'q8_0' ? len / 8 : 0), PAGE_AL);
  if (off === null) return null;
  const buf = arena.exports().memory.buffer;
  let soff = 0;
  if (dtype === 'float32') { const dst = new Float32Array(buf, off, len); if (f16in) f16ToF32Array(data, dst); else dst.set(data); }
  else if (dtype === 'float16') { const dst = new Uint16Array(buf, off, len); if (f16in) dst.set(data); else f32ToF16Array(data, dst); }
  else if (dtype === 'bfloat16') f32ToBf16Array(f32(), new Uint16Array(buf, off, len));
  else { soff = off + len; quantizeQ8(wide ?? f32(), new Int8Array(buf, off, len), new Float32Array(buf, soff, len / 32)); }
  return { arena, off, soff, rows, d, n, dtype };
}

/** The values of rows [r0, r1) of W as float32 (tests, and the JS fallback of the rare overflow case). */
export function wasmRowsF32(W: WasmRows, r0 = 0, r1 = W.rows): Float32Array {
  const buf = W.arena.exports().memory.buffer, len = (r1 - r0) * W.d, o = W.off + r0 * W.n;
  if (W.dtype === 'float32') return new Float32Array(buf, o, len).slice();
  if (W.dtype === 'float16') return f16ToF32Array(new Uint16Array(buf, o, len));
  if (W.dtype === 'bfloat16') return bf16ToF32Array(new Uint16Array(buf, o, len));
  const q = new Int8Array(buf, o, len), s = new Float32Array(buf, W.soff + r0 * (W.n / 8), len / 32);
  return Float32Array.from(q, (v, i) => v * s[i >> 5]!);
}

/** matvec and axpy work (rows x values) below which a call stays on this thread */
const PAR_MIN = 1 << 15;
const F16_SCALE = 2 ** 112;

/** idx null: every row of W, in order (the ids come from the arena's all-rows table, not copied) */
function run(kind: 'mv' | 'ax', W: WasmRows, idx: Int32Array | null, v: Float32Array, out: Float32Array): void {
  const k = idx ? idx.length : W.rows, d = W.d, ar = W.arena;
  const vLen = kind === 'mv' ? d : k;
  const outLen = kind === 'mv' ? k : d;
  const q8mv = W.dtype === 'q8_0' && kind === 'mv';
  const all = idx ? 0 : ar.allRows(W.rows);
  const base = ar.scratchFor(4 * (k + vLen + outLen) + (q8mv ? 2 * d + d / 8 : 0) + 128);
  const ex = ar.exports();
  const rowsOff = idx ? base : all, vOff = align(base + 4 * k, 16), outOff = align(vOff + 4 * vLen, 16);
  const qOff = align(outOff + 4 * outLen, 16), qsOff = qOff + 2 * d;
  const { f32, i32 } = ar.views();
  if (idx) i32.set(idx, rowsOff / 4);
  // float16 rows (WebAssembly): the input times 2^112 (the kernels' widening is the weight times 2^-112); an input
  // reaching 2^15 in magnitude takes 2^(112 - t) and the result 2^t, so nothing overflows. The native kernels widen
  // exactly (F16C) and take the input as it is.
  const nat = ar.native;
  let post = 1;
  if (W.dtype === 'float16' && !nat) {
    let mx = 0;
    for (let i = 0; i < vLen; i++) { const a = Math.abs(v[i]!); if (a > mx && a !== Infinity) mx = a; }
    if (mx >= 32768) post = 2 ** (Math.ceil(Math.log2(mx)) - 14);
    const sc = F16_SCALE / post, o = vOff / 4;
    for (let i = 0; i < vLen; i++) f32[o + i] = v[i]! * sc;
  } else f32.set(v, vOff / 4);
  if (kind === 'ax') { if (post === 1) f32.set(out, outOff / 4); else f32.fill(0, outOff / 4, outOff / 4 + outLen); }
  if (q8mv) ex.q8_quant(vOff, d, qOff, qsOff);
  // every row, or runs of consecutive rows (a head's block): the streaming kernels (one row at a time; sequential rows
  // prefetch well, and four neighbouring rows at once measured 3x slower); scattered rows (MLP neurons): the eight-row
  // kernels (eight row starts miss the cache together: 1.5-2x faster on scattered rows, bench:decode)
  const scattered = idx !== null && k >= 4 && !(idx[1] === idx[0]! + 1 && idx[2] === idx[1]! + 1 && idx[3] === idx[2]! + 1);
  const fn = DTYPES.indexOf(W.dtype) * 4 + (kind === 'ax' ? 2 : 0) + (scattered ? 1 : 0);
  const args = [W.off, W.soff, rowsOff, k, q8mv ? qOff : vOff, qsOff, d, W.n, outOff];
  const pool = ar.pool;
  if (nat) nat.mod.run(ex.memory.buffer, fn, W.off, W.soff, rowsOff, k, q8mv ? qOff : vOff, qsOff, d, W.n, outOff, nat.threads);
  else if (!pool || k * d < PAR_MIN) (ex as unknown as Record<string, (...a: number[]) => void>)[ROW_FNS[fn]!]!(...args);
  else pool.run(fn, kind === 'mv' ? rowChunks(args, k, pool.threads) : columnChunks(args, d, pool.threads, VALUE_BYTES[W.dtype]));
  const res = ar.views().f32.subarray(outOff / 4, (outOff / 4) + outLen);
  if (post === 1) out.set(res);
  else if (kind === 'mv') for (let i = 0; i < outLen; i++) out[i] = res[i]! * post;
  else for (let i = 0; i < outLen; i++) out[i]! += res[i]! * post;
}

/**
 * A matvec split by rows: chunks of a multiple of 8 rows (each row then goes through the same kernel, in the same
 * eight-row group, as on one thread: the same bits).
 */
function rowChunks(args: number[], k: number, T: number): (number[] | null)[] {
  const step = align(Math.ceil(k / T), 8);
  return Array.from({ length: T }, (_, t) => {
    const r0 = t * step, r1 = Math.min(k, r0 + step);
    if (r0 >= r1) return null;
    const a = args.slice();
    a[2] = args[2]! + 4 * r0; a[3] = r1 - r0; a[8] = args[8]! + 4 * r0;
    return a;
  });
}

/** An axpy split by output columns, 32 at a time (every column's sum runs over the rows in order, as on one thread). */
function columnChunks(args: number[], d: number, T: number, bytes: number): (number[] | null)[] {
  const step = align(Math.ceil(d / T), 32);
  return Array.from({ length: T }, (_, t) => {
    const c0 = t * step, c1 = Math.min(d, c0 + step);
    if (c0 >= c1) return null;
    const a = args.slice();
    a[0] = args[0]! + c0 * bytes; a[1] = args[1]! + c0 / 8; a[6] = c1 - c0; a[8] = args[8]! + 4 * c0;
    return a;
  });
}

/** out[i] = dot(W[idx[i]], x) */
export function wasmGatherMatVec(W: WasmRows, idx: Int32Array | null, x: Float32Array, out: Float32Array): void { run('mv', W, idx, x, out); }
/** out += sum_i a[i] W[idx[i]], row after row */
export function wasmGatherAxpyAll(W: WasmRows, idx: Int32Array | null, a: Float32Array, out: Float32Array): void { run('ax', W, idx, a, out); }

/**
 * Causal attention for all heads of a batch through the SIMD kernels: per row and four consecutive queries, one
 * attend4_heads call (each key row loaded once for the four queries; scores, their softmax with exp in SIMD, and the
 * context), and per single query (the last T % 4, and queries that see no key yet) one attend_heads call.
 * q [B, H, T, hd], k/v [B, H, S, hd] (S = P + T, P cached positions), keyMask[b][s] (1 = attend).
 * Returns ctx [B, H, T, hd], or null when the SIMD arena is unavailable (callers use tfjs then).
 * tfjs-wasm's BatchMatMul with batch > 1 runs at ~1 GFLOP/s on these shapes; this path skips masked keys too. The
 * four-query tiles made it 1.7x faster than one query at a time (148 -> 87 ms for six layers of the fixture's batch,
 * B 8, H 8, T 256, hd 32, copies included).
 */
export function attentionHost(q: Float32Array, k: Float32Array, v: Float32Array, B: number, H: number, T: number, S: number, hd: number,
  keyMask: number[][], P: number, scale: number): Float32Array | null {
  const arena = hd % 8 === 0 ? sharedArena() : null;
  if (!arena) return null;
  const fq = B * H * T * hd, fk = B * H * S * hd;
  const bytes = 4 * (2 * fq + 2 * fk + S) + 16 * S + 512;
  let base: number;
  try { base = arena.scratchFor(bytes); } catch { return null; }
  const ex = arena.exports();
  const al = (x: number) => align(x, 16);
  const qOff = base, kOff = al(qOff + 4 * fq), vOff = al(kOff + 4 * fk), cOff = al(vOff + 4 * fk), rOff = al(cOff + 4 * fq), sOff = al(rOff + 4 * S);
  const buf = ex.memory.buffer;
  new Float32Array(buf, qOff, fq).set(q);
  new Float32Array(buf, kOff, fk).set(k);
  new Float32Array(buf, vOff, fk).set(v);
  const ctx = new Float32Array(buf, cOff, fq);
  ctx.fill(0);
  const rows = new Int32Array(buf, rOff, S);
  const hb = 4 * hd;
  for (let b = 0; b < B; b++) {
    const km = keyMask[b]!;
    const bh = b * H, kb = kOff + bh * S * hb, vb = vOff + bh * S * hb;
    const at = (t: number) => (bh * T + t) * hb;
    // every head of the query at t over its first n visible keys
    const one = (t: number, n: number) => { if (n) ex.attend_heads(qOff + at(t), kb, vb, rOff, n, hd, scale, sOff, cOff + at(t), H, T * hb, S * hb, T * hb); };
    // rows[0, n): the visible keys of the query at t (positions <= P + t with keyMask 1), grown one position per query
    let n = 0;
    for (let s = 0; s < P; s++) if (km[s]) rows[n++] = s;
    const counts = [0, 0, 0, 0];
    for (let t = 0; t + 4 <= T; t += 4) {
      for (let i = 0; i < 4; i++) { if (km[P + t + i]) rows[n++] = P + t + i; counts[i] = n; }
      if (counts[0]! > 0) ex.attend4_heads(qOff + at(t), kb, vb, rOff, counts[0]!, counts[1]!, counts[2]!, counts[3]!, hd, scale, sOff, cOff + at(t), H, T * hb, S * hb, T * hb);
      else for (let i = 0; i < 4; i++) one(t + i, counts[i]!);
    }
    for (let t = T - (T % 4); t < T; t++) { if (km[P + t]) rows[n++] = P + t; one(t, n); }
  }
  return Float32Array.from(new Float32Array(ex.memory.buffer, cOff, fq));
}

/**
 * A collection batch's MLP activations: bits[i >> 3] bit (i & 7) = act[i] > 0, the count of active values, the sum
 * of |act| and the largest |act| (NaN if any value is NaN; the sum is then NaN too). In SIMD (the per-value JS loop
 * took 40-57 ms of a fixture batch's 103 ms of captures; now 49 ms in all); in JS where the SIMD arena is
 * unavailable, or with `simd: false` (tests compare the two).
 */
export function activationBits(act: Float32Array, bits: Uint8Array, opts: { simd?: boolean } = {}): { active: number; absSum: number; maxAbs: number } {
  const n = act.length, whole = n & ~7;
  const arena = opts.simd === false ? null : sharedArena();
  let base: number | null = null;
  if (arena) try { base = arena.scratchFor(4 * whole + (whole >> 3) + 64); } catch { base = null; }
  const r = { active: 0, absSum: 0, maxAbs: 0 };
  let from = 0;
  if (arena && base !== null) {
    const ex = arena.exports();
    const statsOff = base, actOff = base + 16, bitsOff = actOff + 4 * whole;
    new Float32Array(ex.memory.buffer, actOff, whole).set(act.subarray(0, whole));
    r.active = ex.act_bits(actOff, whole, bitsOff, statsOff);
    bits.set(new Uint8Array(ex.memory.buffer, bitsOff, whole >> 3));
    r.absSum = new Float64Array(ex.memory.buffer, statsOff, 1)[0]!;
    r.maxAbs = new Float32Array(ex.memory.buffer, statsOff + 8, 1)[0]!;
    from = whole;
  }
  for (let i = from; i < n; i++) {
    const a = act[i]!;
    if (a > 0) { bits[i >> 3]! |= 1 << (i & 7); r.active++; }
    const aa = Math.abs(a);
    r.absSum += aa;
    if (aa > r.maxAbs || aa !== aa) r.maxAbs = aa; // NaN stays NaN
  }
  return r;
}
