/**
 * A WebAssembly (f32x4 SIMD) arena for the sparse decode kernels: weights are copied in once at load; per token,
 * gather_matvec / gather_axpy_all read only the selected rows. ~4x the throughput of the plain-JS loops, the same
 * order as tfjs-wasm's own matvec, so skipping rows turns into wall-clock savings. The batched forward pass uses the
 * same module, in a process-wide scratch arena, for attention (attentionHost) and a collection batch's activation
 * bits (activationBits).
 */
import { KERNELS_WASM_BASE64 } from './kernels-binary.js';

interface Memory { buffer: ArrayBuffer; grow(pages: number): number }
const WA = (globalThis as unknown as { WebAssembly: { Module: new (bytes: Uint8Array) => object; Instance: new (m: object, imports: object) => { exports: unknown } } }).WebAssembly;

export interface WasmExports {
  memory: Memory;
  gather_matvec(W: number, rows: number, k: number, x: number, d: number, out: number): void;
  gather_axpy_all(W: number, rows: number, k: number, a: number, d: number, out: number): void;
  gather8_matvec(W: number, rows: number, k: number, x: number, d: number, out: number): void;
  gather8_axpy(W: number, rows: number, k: number, a: number, d: number, out: number): void;
  attend_one(q: number, K: number, V: number, rows: number, n: number, hd: number, scale: number, p: number, out: number): void;
  attend_heads(q: number, K: number, V: number, rows: number, n: number, hd: number, scale: number, p: number, out: number, H: number, qs: number, ks: number, os: number): void;
  attend4_heads(q: number, K: number, V: number, rows: number, n0: number, n1: number, n2: number, n3: number, hd: number, scale: number, p: number, out: number,
    H: number, qs: number, ks: number, os: number): void;
  act_bits(act: number, n: number, bits: number, stats: number): number;
}

/** rows x d float32 matrix living in an arena */
export interface WasmRows { arena: WasmArena; off: number; rows: number; d: number }

const PAGE = 65536;
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
  /** `tracked`: counted by liveArenaBytes (model arenas; not the process-wide scratch arena) */
  constructor(ex: WasmExports, private readonly tracked = true) { this.ex = ex; this.count(); }

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

  alloc(bytes: number): number | null {
    const e = this.exports();
    const off = align(this.top, 64);
    const end = off + bytes;
    if (end > MAX_BYTES) return null;
    const have = e.memory.buffer.byteLength;
    if (end > have) {
      try { e.memory.grow(Math.ceil((end - have) / PAGE)); } catch { return null; }
      this.count();
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
    live -= this.counted;
    this.counted = 0;
    this.ex = null;
  }
}

/** A fresh arena, or null when WebAssembly SIMD is unavailable (callers fall back to the JS kernels). */
export function createArena(tracked = true): WasmArena | null {
  try {
    if (compiled === undefined) compiled = new WA.Module(Buffer.from(KERNELS_WASM_BASE64, 'base64'));
    if (!compiled) return null;
    return new WasmArena(new WA.Instance(compiled, {}).exports as unknown as WasmExports, tracked);
  } catch {
    compiled = null;
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

/** Copy a [rows, d] matrix into `arena`; null when there is no arena (no SIMD), d % 8 != 0, or the arena is full. */
export function toWasmRows(data: Float32Array, rows: number, d: number, arena: WasmArena | null): WasmRows | null {
  if (d % 8 !== 0 || !arena) return null;
  const off = arena.alloc(data.byteLength);
  if (off === null) return null;
  new Float32Array(arena.exports().memory.buffer, off, data.length).set(data);
  return { arena, off, rows, d };
}

/** idx null: every row of W, in order (the ids come from the arena's all-rows table, not copied) */
function run(kind: 'matvec' | 'axpy', W: WasmRows, idx: Int32Array | null, v: Float32Array, out: Float32Array, outInit: boolean): void {
  const k = idx ? idx.length : W.rows, d = W.d;
  const vLen = kind === 'matvec' ? d : k;
  const outLen = kind === 'matvec' ? k : d;
  const all = idx ? 0 : W.arena.allRows(W.rows);
  const base = W.arena.scratchFor(4 * (k + vLen + outLen) + 64);
  const ex = W.arena.exports();
  const rowsOff = idx ? base : all, vOff = align(base + 4 * k, 16), outOff = align(vOff + 4 * vLen, 16);
  const { f32, i32 } = W.arena.views();
  if (idx) i32.set(idx, rowsOff / 4);
  f32.set(v, vOff / 4);
  if (outInit) f32.set(out, outOff / 4); else f32.fill(0, outOff / 4, (outOff / 4) + outLen);
  // every row, or runs of consecutive rows (a head's block): the streaming kernels (one row at a time; sequential rows
  // prefetch well, and four neighbouring rows at once measured 3x slower); scattered rows (MLP neurons): the eight-row
  // kernels (eight row starts miss the cache together: 1.5-2x faster on scattered rows, bench:decode)
  const scattered = idx !== null && k >= 4 && !(idx[1] === idx[0]! + 1 && idx[2] === idx[1]! + 1 && idx[3] === idx[2]! + 1);
  if (kind === 'matvec') (scattered ? ex.gather8_matvec : ex.gather_matvec)(W.off, rowsOff, k, vOff, d, outOff);
  else (scattered ? ex.gather8_axpy : ex.gather_axpy_all)(W.off, rowsOff, k, vOff, d, outOff);
  out.set(W.arena.views().f32.subarray(outOff / 4, (outOff / 4) + outLen));
}

/** out[i] = dot(W[idx[i]], x) */
export function wasmGatherMatVec(W: WasmRows, idx: Int32Array | null, x: Float32Array, out: Float32Array): void { run('matvec', W, idx, x, out, false); }
/** out += sum_i a[i] W[idx[i]], row after row */
export function wasmGatherAxpyAll(W: WasmRows, idx: Int32Array | null, a: Float32Array, out: Float32Array): void { run('axpy', W, idx, a, out, true); }

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
