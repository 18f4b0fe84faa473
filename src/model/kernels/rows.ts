/**
 * Row kernels of the decode runtime: a weight matrix stored as rows (one neuron / output channel each, contiguous),
 * read row by row so that a sparse step reads only the rows it selects. Three implementations behind one interface,
 * chosen once per matrix when a model's decode weights are built:
 * - native: the same calls over the same arena run by the native kernels (src/model/kernels/native: AVX2, FMA, F16C,
 *   their own thread pool) where they were built and the CPU has them;
 * - wasm-simd: f32x4 kernels (src/model/kernels/wasm) over a copy of the rows in the model's WebAssembly arena, stored
 *   as float32, float16, bfloat16 or q8_0 (`dtype`; widened to float32 inside the kernels, float32 sums), on the
 *   arena's thread pool when it has one;
 * - js: plain Float32Array loops (no SIMD, d % 8 != 0, or the arena is full; always float32).
 * Hand-written because tfjs-wasm's GatherV2 moves ~17M floats/s and each tfjs op costs ~40 µs of dispatch at
 * batch 1 (bench:decode's profile): gathering 10% of an OPT-1.3B MLP's rows through tfjs costs more than the whole
 * dense matvec, and a d 256 decode step spent 95% of its time in dispatch.
 */
import { toWasmRows, wasmGatherAxpyAll, wasmGatherMatVec, type RowDtype, type WasmArena, type WasmRows } from './wasm/kernels.js';
import { f16ToF32Array } from '../../util/half.js';

export type { RowDtype } from './wasm/kernels.js';

export type RowKernel = 'native' | 'wasm-simd' | 'js';

export interface RowMatrix {
  /** rows, row length */
  readonly n: number;
  readonly d: number;
  readonly kernel: RowKernel;
  /** how the rows are stored */
  readonly dtype: RowDtype;
  /** out[i] = W[rows[i]] · x (+ bias[rows[i]]); rows omitted = every row in order */
  matvec(x: Float32Array, out: Float32Array, rows?: Int32Array, bias?: Float32Array): void;
  /**
   * out += Σ_i a[i] W[rows[i]], row after row in order; rows omitted = every row. (Rows with a[i] == 0 add exactly 0:
   * leaving them out with `nonzeros` gives the same sum bit for bit, the lossless mode.)
   */
  axpy(a: Float32Array, out: Float32Array, rows?: Int32Array): void;
}

/** the i with a[i] != 0 among the first n (ascending) into ids, their a[i] into coef; returns how many */
export function nonzeros(a: Float32Array, n: number, ids: Int32Array, coef: Float32Array): number {
  let m = 0;
  for (let i = 0; i < n; i++) if (a[i] !== 0) { ids[m] = i; coef[m++] = a[i]!; }
  return m;
}

class JsRows implements RowMatrix {
  readonly kernel = 'js' as const;
  readonly dtype = 'float32' as const;
  constructor(private readonly W: Float32Array, readonly n: number, readonly d: number) {}
  matvec(x: Float32Array, out: Float32Array, rows?: Int32Array, bias?: Float32Array): void {
    const { W, d } = this;
    const d4 = d - (d % 4);
    const k = rows ? rows.length : this.n;
    for (let i = 0; i < k; i++) {
      const r = rows ? rows[i]! : i;
      const o = r * d;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0, j = 0;
      for (; j < d4; j += 4) { s0 += W[o + j]! * x[j]!; s1 += W[o + j + 1]! * x[j + 1]!; s2 += W[o + j + 2]! * x[j + 2]!; s3 += W[o + j + 3]! * x[j + 3]!; }
      for (; j < d; j++) s0 += W[o + j]! * x[j]!;
      out[i] = s0 + s1 + s2 + s3 + (bias ? bias[r]! : 0);
    }
  }
  axpy(a: Float32Array, out: Float32Array, rows?: Int32Array): void {
    const { W, d } = this;
    const k = rows ? rows.length : this.n;
    for (let i = 0; i < k; i++) {
      const ai = a[i]!;
      const o = (rows ? rows[i]! : i) * d;
      for (let j = 0; j < d; j++) out[j]! += ai * W[o + j]!;
    }
  }
}

class SimdRows implements RowMatrix {
  readonly kernel: 'native' | 'wasm-simd';
  readonly dtype: RowDtype;
  constructor(readonly W: WasmRows, readonly n: number, readonly d: number) { this.dtype = W.dtype; this.kernel = W.arena.native ? 'native' : 'wasm-simd'; }
  matvec(x: Float32Array, out: Float32Array, rows?: Int32Array, bias?: Float32Array): void {
    const k = rows ? rows.length : this.n;
    wasmGatherMatVec(this.W, rows ?? null, x.length === this.d ? x : x.subarray(0, this.d), out.length === k ? out : out.subarray(0, k));
    if (bias) {
      if (rows) for (let i = 0; i < k; i++) out[i]! += bias[rows[i]!]!;
      else for (let i = 0; i < k; i++) out[i]! += bias[i]!;
    }
  }
  axpy(a: Float32Array, out: Float32Array, rows?: Int32Array): void {
    const k = rows ? rows.length : this.n;
    wasmGatherAxpyAll(this.W, rows ?? null, a.length === k ? a : a.subarray(0, k), out.length === this.d ? out : out.subarray(0, this.d));
  }
}

/**
 * rows [n, d] (row-major; float32 values or float16 bits) as a RowMatrix: SIMD in `arena` as `dtype` when it fits
 * (and d % 8 == 0; see toWasmRows for the rows a dtype cannot hold), else JS loops over float32
 */
export function rowMatrix(data: Float32Array | Uint16Array, n: number, d: number, arena: WasmArena | null, dtype: RowDtype = 'float32'): RowMatrix {
  if (data.length !== n * d) throw new Error(`rowMatrix: ${data.length} values for [${n}, ${d}]`);
  const w = toWasmRows(data, n, d, arena, dtype);
  return w ? new SimdRows(w, n, d) : new JsRows(data instanceof Uint16Array ? f16ToF32Array(data) : data, n, d);
}
