/**
 * The decode runtime's KV cache and attention over it, one implementation chosen per session:
 * - wasm-simd: K and V live in a WebAssembly arena, position-major [cap, KV*hd] per (row, layer); one attend_one call
 *   per head: its scores over its kv head's rows (row id s*KV + g, row length hd), their softmax, its context;
 * - js: the same layout in Float32Arrays and plain loops (no SIMD, or hd % 8 != 0).
 * Hand-written because the attention loops in plain JS took a third of a d 256 decode step (cpu profile of
 * bench:decode), ~10x the SIMD kernels' time.
 */
import { align, createArena, type WasmArena } from './wasm/kernels.js';
import type { RowKernel } from './rows.js';

export interface KvStore {
  readonly kernel: RowKernel;
  /** make room for `cap` positions of row r (every layer) */
  reserve(r: number, cap: number): void;
  /** K and V ([KV*hd] each) of position `pos` of row r, layer i */
  write(r: number, i: number, pos: number, k: Float32Array, v: Float32Array): void;
  /**
   * ctx[t*hd..] for each selected head t: softmax(softcap(scale · q_t K_g^T) + alibi) V_g over positions
   * from <= s < S with valid[s], g the head's kv head. q [n*hd] (already rotated), ctx [n*hd].
   */
  attend(r: number, i: number, S: number, valid: Uint8Array, heads: Int32Array, q: Float32Array, ctx: Float32Array, from?: number): void;
  dispose(): void;
}

interface Dims {
  rows: number; layers: number; heads: number; kvHeads: number; headDim: number;
  /** multiplier of q·k (default 1/sqrt(hd)) */
  scale?: number;
  /** tanh softcapping of the scores (Gemma 2) and ALiBi slopes per head (BLOOM): the JS store only */
  softcap?: number | null; alibi?: Float32Array | null;
}

/** a row's new capacity: doubled from `have` (at least 32) until it holds `want` positions */
function grownCap(have: number, want: number): number {
  let c = Math.max(32, have);
  while (c < want) c *= 2;
  return c;
}

function softmaxInPlace(p: Float32Array, n: number, scale: number, softcap: number | null = null, slope = 0, keyPos: Int32Array | null = null): void {
  let mx = -Infinity;
  for (let i = 0; i < n; i++) {
    let x = p[i]! * scale;
    if (softcap) x = softcap * Math.tanh(x / softcap);
    if (keyPos) x += slope * keyPos[i]!;
    p[i] = x; if (x > mx) mx = x;
  }
  let sum = 0;
  for (let i = 0; i < n; i++) { const e = Math.exp(p[i]! - mx); p[i] = e; sum += e; }
  for (let i = 0; i < n; i++) p[i] = p[i]! / sum;
}

class JsKv implements KvStore {
  readonly kernel = 'js' as const;
  private k: Float32Array[][]; private v: Float32Array[][]; private cap: number[];
  private p = new Float32Array(64);
  private readonly W: number;
  constructor(private readonly dims: Dims) {
    this.W = dims.kvHeads * dims.headDim;
    this.cap = new Array(dims.rows).fill(0);
    this.k = Array.from({ length: dims.rows }, () => []);
    this.v = Array.from({ length: dims.rows }, () => []);
  }
  reserve(r: number, cap: number): void {
    if (cap <= this.cap[r]!) return;
    const c = grownCap(this.cap[r]!, cap);
    const grow = (a: Float32Array | undefined) => { const b = new Float32Array(c * this.W); if (a) b.set(a); return b; };
    this.k[r] = Array.from({ length: this.dims.layers }, (_, i) => grow(this.k[r]![i]));
    this.v[r] = Array.from({ length: this.dims.layers }, (_, i) => grow(this.v[r]![i]));
    this.cap[r] = c;
  }
  write(r: number, i: number, pos: number, k: Float32Array, v: Float32Array): void {
    this.k[r]![i]!.set(k, pos * this.W); this.v[r]![i]!.set(v, pos * this.W);
  }
  attend(r: number, i: number, S: number, valid: Uint8Array, heads: Int32Array, q: Float32Array, ctx: Float32Array, from = 0): void {
    const { headDim: hd, heads: H, kvHeads: KV } = this.dims, W = this.W, rep = H / KV, K = this.k[r]![i]!, V = this.v[r]![i]!;
    if (this.p.length < S) this.p = new Float32Array(2 * S);
    const p = this.p, pos = new Int32Array(S), alibi = this.dims.alibi ?? null;
    const keyPos = alibi ? new Int32Array(S) : null; // ALiBi: a key's position among the row's real tokens
    let n = 0, before = 0;
    for (let s = 0; s < from; s++) if (valid[s]) before++;
    for (let s = from; s < S; s++) if (valid[s]) { if (keyPos) keyPos[n] = before + n; pos[n++] = s; }
    for (let t = 0; t < heads.length; t++) {
      const qo = t * hd, g = Math.floor(heads[t]! / rep) * hd;
      for (let j = 0; j < n; j++) { const ko = pos[j]! * W + g; let dot = 0; for (let e = 0; e < hd; e++) dot += q[qo + e]! * K[ko + e]!; p[j] = dot; }
      softmaxInPlace(p, n, this.dims.scale ?? 1 / Math.sqrt(hd), this.dims.softcap ?? null, alibi ? alibi[heads[t]!]! : 0, keyPos);
      ctx.fill(0, qo, qo + hd);
      for (let j = 0; j < n; j++) { const w = p[j]!, vo = pos[j]! * W + g; for (let e = 0; e < hd; e++) ctx[qo + e]! += w * V[vo + e]!; }
    }
  }
  dispose(): void { this.k = []; this.v = []; }
}

class SimdKv implements KvStore {
  readonly kernel = 'wasm-simd' as const;
  private off: number[][]; // per row, per layer: byte offset of K; V follows at + cap*W*4
  private cap: number[];
  private scratch = 0; private scratchCap = 0; // rows [cap] int32, scores [cap] f32, q [H*hd], ctx [H*hd]
  private readonly W: number;
  constructor(private readonly arena: WasmArena, private readonly dims: Dims) {
    this.W = dims.kvHeads * dims.headDim;
    this.cap = new Array(dims.rows).fill(0);
    this.off = Array.from({ length: dims.rows }, () => []);
  }
  private alloc(bytes: number): number {
    const o = this.arena.alloc(bytes);
    if (o === null) throw new Error('the KV cache does not fit the WebAssembly arena (4 GiB)');
    return o;
  }
  reserve(r: number, cap: number): void {
    if (cap <= this.cap[r]!) return;
    const c = grownCap(this.cap[r]!, cap);
    const bytes = c * this.W * 4, old = this.cap[r]! * this.W * 4;
    for (let i = 0; i < this.dims.layers; i++) {
      const o = this.alloc(2 * bytes), mem = new Uint8Array(this.arena.exports().memory.buffer);
      if (old) { const p = this.off[r]![i]!; mem.copyWithin(o, p, p + old); mem.copyWithin(o + bytes, p + old, p + 2 * old); }
      this.off[r]![i] = o;
    }
    this.cap[r] = c;
    if (c > this.scratchCap) {
      const H = this.dims.heads * this.dims.headDim;
      this.scratch = this.alloc(8 * c + 8 * H + 64); this.scratchCap = c; // rows and scores [c] each, q and ctx [H] each
    }
  }
  write(r: number, i: number, pos: number, k: Float32Array, v: Float32Array): void {
    const buf = this.arena.exports().memory.buffer, o = this.off[r]![i]!, bytes = this.cap[r]! * this.W * 4;
    new Float32Array(buf, o + pos * this.W * 4, this.W).set(k);
    new Float32Array(buf, o + bytes + pos * this.W * 4, this.W).set(v);
  }
  attend(r: number, i: number, S: number, valid: Uint8Array, heads: Int32Array, q: Float32Array, ctx: Float32Array, from = 0): void {
    const { headDim: hd, heads: H, kvHeads: KV } = this.dims, rep = H / KV, scale = this.dims.scale ?? 1 / Math.sqrt(hd);
    const ex = this.arena.exports(), buf = ex.memory.buffer;
    const kOff = this.off[r]![i]!, vOff = kOff + this.cap[r]! * this.W * 4;
    const rowsOff = this.scratch, pOff = rowsOff + 4 * this.scratchCap, qOff = align(pOff + 4 * this.scratchCap, 16), cOff = qOff + 4 * H * hd;
    const rows = new Int32Array(buf, rowsOff, this.scratchCap);
    new Float32Array(buf, qOff, heads.length * hd).set(q.subarray(0, heads.length * hd));
    const c = new Float32Array(buf, cOff, heads.length * hd);
    c.fill(0);
    let n = 0, g = -1;
    for (let t = 0; t < heads.length; t++) {
      const kvh = Math.floor(heads[t]! / rep);
      if (kvh !== g) { n = 0; for (let s = from; s < S; s++) if (valid[s]) rows[n++] = s * KV + kvh; g = kvh; }
      ex.attend_one(qOff + 4 * t * hd, kOff, vOff, rowsOff, n, hd, scale, pOff, cOff + 4 * t * hd);
    }
    ctx.set(c);
  }
  dispose(): void { this.arena.dispose(); }
}

/** The KV store for a session: SIMD when an arena can be made and hd % 8 == 0 (and no softcap / ALiBi), else JS. */
export function kvStore(dims: Dims, prefer: RowKernel = 'wasm-simd'): KvStore {
  const arena = prefer === 'wasm-simd' && dims.headDim % 8 === 0 && !dims.softcap && !dims.alibi ? createArena(false) : null;
  return arena ? new SimdKv(arena, dims) : new JsKv(dims);
}
