/**
 * The decode runtime's copy of a model's weights: every matrix as rows (src/model/kernels/rows.ts), laid out so that
 * a decode step only multiplies rows it keeps:
 *   q, k, v  [H*hd | KV*hd, d]   matvec (HF q_proj/k_proj/v_proj layout)
 *   o        [H*hd, d]           axpy with the heads' context (only the selected heads' rows)
 *   up, gate [F, d]              matvec (only the selected neurons' rows)
 *   down     [F, d]              axpy with the activations (only the selected / nonzero rows)
 *   lmHead   [V, Dp]             matvec (tied: the embedding rows themselves)
 * Built once per model (loadModel's `decode` option); its arena is freed with the model. The rows are stored as
 * DecodeOptions.dtype says (src/model/kernels/wasm/kernels.ts: toWasmRows; docs/decode-runtime.md) and the kernels
 * run on DecodeOptions.threads threads (a pool sharing the arena's memory: src/model/kernels/wasm/pool.ts).
 * A matvec matrix (q, k, v, up, gate, lmHead) named in `inputMajor` is stored input-major instead ([in, out] rows:
 * one row per input), so that an input-sparse step reads only the rows of its nonzero inputs (RowMatrix.axpy with
 * those rows); `DecodeWeights.inputMajor` says which ones are.
 */
import * as os from 'node:os';
import type { ModelConfig } from './config.js';
import { rowMatrix, type RowDtype, type RowKernel, type RowMatrix } from './kernels/rows.js';
import { createArena, type WasmArena } from './kernels/wasm/kernels.js';
import { startPool } from './kernels/wasm/pool.js';
import { nativeRows, type NativeRowsModule } from './kernels/native/native.js';
import { actKernel, type ActKernel } from './kernels/act.js';
import { transpose2d } from '../util/transpose.js';
import { f16ToF32Array } from '../util/half.js';
import { UserError } from '../util/errors.js';
import { median } from '../util/stats.js';

export interface HostNorm { g: Float32Array; b?: Float32Array | undefined }

export interface DecodeLayer {
  /** ln2 absent where the MLP reads ln1's output (shared norm) */
  ln1: HostNorm; ln2?: HostNorm | undefined;
  /** Qwen 3 per-head q / k norms; Gemma 2 norms of the attention and MLP outputs */
  qNorm?: HostNorm | undefined; kNorm?: HostNorm | undefined; lnAttnOut?: HostNorm | undefined; lnMlpOut?: HostNorm | undefined;
  q: RowMatrix; k: RowMatrix; v: RowMatrix; o: RowMatrix;
  qBias?: Float32Array | undefined; kBias?: Float32Array | undefined; vBias?: Float32Array | undefined; oBias?: Float32Array | undefined;
  up: RowMatrix; gate?: RowMatrix | undefined; down: RowMatrix;
  upBias?: Float32Array | undefined; gateBias?: Float32Array | undefined; downBias?: Float32Array | undefined;
}

export interface DecodeOptions {
  /**
   * how the rows are stored (default 'auto'): 'auto' = the checkpoint's own half precision for float16 / bfloat16
   * checkpoints (exact: the same logits as float32 rows of those weights), else float32; 'q8_0' = int8 values with a
   * float32 scale per 32 (rows whose length is not a multiple of 32: float16)
   */
  dtype?: 'auto' | RowDtype;
  /**
   * threads running the row kernels, this one included (default 'auto': measured at load, one thread for models of
   * less than 16 MB of rows or where more are not faster)
   */
  threads?: number | 'auto';
  /** weight names ('layers.3.wq', 'layers.3.up', ...) of matvec matrices to store input-major (for input-sparse modes) */
  inputMajor?: ReadonlySet<string>;
  /**
   * which row kernels run the rows (default 'auto'): 'native' (src/model/kernels/native: AVX2 / FMA / F16C and their
   * own threads; refused with the reason where they were not built or the CPU lacks them), 'wasm' (WebAssembly SIMD),
   * 'auto' = native where available, else wasm
   */
  kernels?: 'auto' | 'native' | 'wasm';
}

export interface DecodeWeights {
  /** how the matrices' rows are stored (the dtype asked for; a matrix it cannot hold stays float32: RowMatrix.dtype) */
  dtype: RowDtype;
  /** threads the row kernels run on (1: this one only) */
  threads: number;
  /** the weight names stored input-major (DecodeOptions.inputMajor), whose RowMatrix is read with axpy */
  inputMajor: ReadonlySet<string>;
  /** the kernel every matrix got (mixed when the arena filled up part way) */
  kernel: RowKernel | 'mixed';
  layers: DecodeLayer[];
  embed: Float32Array | Uint16Array; // [V, Dp] (float16 bits as the checkpoint stores them: a row is widened when looked up)
  pos?: Float32Array | undefined; // [P + offset, d]
  projIn?: RowMatrix | undefined; // [Dp, d] (axpy)
  projOut?: RowMatrix | undefined; // [d, Dp] (axpy)
  finalNorm?: HostNorm | undefined;
  embedNorm?: HostNorm | undefined;
  lmHead: RowMatrix; // [V, Dp]
  /** the MLP activation over vectors (native SiLU with the native kernels, else the scalar activation) */
  act: ActKernel;
  dispose(): void;
}

export const ROW_DTYPES: readonly RowDtype[] = ['float32', 'float16', 'bfloat16', 'q8_0'];

/** DecodeOptions.dtype for a checkpoint stored in `half` (its matrices' 16-bit format, or null) -> the rows' dtype */
export function rowDtypeFor(dtype: DecodeOptions['dtype'], half: 'float16' | 'bfloat16' | null): RowDtype {
  if (dtype === undefined || dtype === 'auto') return half ?? 'float32';
  if (!ROW_DTYPES.includes(dtype)) throw new UserError(`decode dtype ${JSON.stringify(dtype)} is not understood`, `use one of auto, ${ROW_DTYPES.join(', ')}`);
  return dtype;
}

export const ROW_KERNELS = ['auto', 'native', 'wasm'] as const;

/** DecodeOptions.kernels -> the native kernels to use, or null for WebAssembly */
function nativeOf(k: DecodeOptions['kernels']): NativeRowsModule | null {
  if (k !== undefined && !ROW_KERNELS.includes(k)) throw new UserError(`decode kernels ${JSON.stringify(k)} is not understood`, `use one of ${ROW_KERNELS.join(', ')}`);
  if (k === 'wasm') return null;
  const { mod, why } = nativeRows();
  if (!mod && k === 'native') throw new UserError(`the native decode kernels are not available: ${why}`, 'use kernels auto or wasm (WebAssembly SIMD), or build them: npm run build:native (needs a C compiler)');
  return mod;
}

function threadsOf(t: DecodeOptions['threads']): number | 'auto' {
  if (t === undefined || t === 'auto') return 'auto';
  if (!Number.isInteger(t) || t < 1 || t > 256) throw new UserError(`decode threads ${JSON.stringify(t)} is not a whole number from 1 to 256 or "auto"`, 'use threads: "auto" to pick by measurement');
  return t;
}

/** bytes of rows below which 'auto' keeps one thread (the fixtures: a thread hand-off costs more than their matvecs) */
const AUTO_MIN_BYTES = 16 * 2 ** 20;

/**
 * threads: 'auto': the largest matrix's matvec (medians of a few) on one thread against `max` threads; the pool is
 * kept when it is at least 10% faster.
 */
function autoThreads(arenas: WasmArena[], m: RowMatrix, max: number): number {
  const set = (t: number) => { for (const a of arenas) { if (a.native) a.native.threads = t; else if (t > 1) startPool(a, t); else a.pool?.dispose(); } };
  const x = Float32Array.from({ length: m.d }, (_, i) => Math.sin(i)), out = new Float32Array(m.n);
  const time = () => {
    m.matvec(x, out);
    const xs: number[] = [];
    for (let r = 0; r < 5; r++) { const t = performance.now(); for (let i = 0; i < 3; i++) m.matvec(x, out); xs.push(performance.now() - t); }
    return median(xs);
  };
  const one = time();
  set(max);
  if (time() < 0.9 * one) return max;
  set(1);
  return 1;
}

/** a host tensor: float32 values, or float16 bits (a float16 checkpoint read at half size) */
export interface DecodeSource {
  shape: number[]; data: Float32Array | Uint16Array;
  /** the same matrix as [out, in] rows (the checkpoint's layout), when the loader kept them */
  rows?: Float32Array | Uint16Array | undefined;
}

/**
 * get(name) returns the model's host tensor by our weight name ('embed', 'layers.3.wq', ...) as loadModel lays them
 * out ([in, out]), or undefined when the model has none. `half`: the checkpoint's 16-bit format ('auto' keeps it).
 * release(name), when given, is told once a matrix's rows are built (a decode-only load drops the tensor).
 */
export function buildDecodeWeights(c: ModelConfig, get: (name: string) => DecodeSource | undefined, opts: DecodeOptions = {}, half: 'float16' | 'bfloat16' | null = null,
  release?: (name: string) => void): DecodeWeights {
  const inputMajor = new Set(opts.inputMajor ?? []);
  const dtype = rowDtypeFor(opts.dtype, half), threads = threadsOf(opts.threads), native = nativeOf(opts.kernels);
  const maxThreads = threads === 'auto' ? Math.min(8, os.availableParallelism()) : threads;
  // one WebAssembly memory holds at most ~3.5 GiB: a larger model gets another arena when one is full; shared memory
  // when the WebAssembly kernels may run on more than one thread (the native kernels bring their own threads)
  const arena = () => {
    if (native) { const a = createArena(); if (a) a.native = { mod: native, threads: 1 }; return a; }
    return maxThreads > 1 ? createArena(true, true) ?? createArena() : createArena();
  };
  const arenas = [arena()];
  const kinds = new Set<RowKernel>();
  const need = (n: string) => { const t = get(n); if (!t) throw new Error(`decode weights: no ${n}`); return t; };
  const f32 = (t: DecodeSource) => (t.data instanceof Uint16Array ? f16ToF32Array(t.data) : t.data);
  let rowBytes = 0, largest: RowMatrix | null = null;
  const mat = (data: Float32Array | Uint16Array, n: number, d: number) => {
    let m = rowMatrix(data, n, d, arenas[arenas.length - 1]!, dtype);
    if (m.kernel === 'js' && d % 8 === 0 && arenas[0] && n * d * 4 < 3 * 2 ** 30) {
      const fresh = arena();
      if (fresh) { arenas.push(fresh); m = rowMatrix(data, n, d, fresh, dtype); }
    }
    kinds.add(m.kernel);
    rowBytes += n * d * (dtype === 'float32' ? 4 : dtype === 'q8_0' ? 1.125 : 2);
    if (m.kernel !== 'js' && (!largest || n * d > largest.n * largest.d)) largest = m;
    return m;
  };
  /** an [in, out] matrix as `out` rows of length `in` */
  const outRows = (n: string) => {
    if (inputMajor.has(n)) return inRows(n);
    const t = need(n); const [i, o] = t.shape as [number, number];
    const m = mat(t.rows ?? transpose2d(t.data, i, o), o, i);
    release?.(n);
    return m;
  };
  /** an [in, out] matrix as `in` rows of length `out` (for axpy) */
  function inRows(n: string) { const t = need(n); const [i, o] = t.shape as [number, number]; const m = mat(t.data, i, o); release?.(n); return m; }
  const vec = (n: string) => { const t = get(n); return t && f32(t); };
  const norm = (p: string): HostNorm => ({ g: f32(need(`${p}.g`)), b: vec(`${p}.b`) });
  const maybeNorm = (p: string): HostNorm | undefined => (get(`${p}.g`) ? norm(p) : undefined);
  const layers: DecodeLayer[] = Array.from({ length: c.layers }, (_, i) => {
    const L = (n: string) => `layers.${i}.${n}`;
    return {
      ln1: norm(L('ln1')), ln2: maybeNorm(L('ln2')),
      qNorm: maybeNorm(L('qNorm')), kNorm: maybeNorm(L('kNorm')), lnAttnOut: maybeNorm(L('lnAttnOut')), lnMlpOut: maybeNorm(L('lnMlpOut')),
      q: outRows(L('wq')), k: outRows(L('wk')), v: outRows(L('wv')), o: inRows(L('wo')),
      qBias: vec(L('bq')), kBias: vec(L('bk')), vBias: vec(L('bv')), oBias: vec(L('bo')),
      up: outRows(L('up')), gate: get(L('gate')) ? outRows(L('gate')) : undefined, down: inRows(L('down')),
      upBias: vec(L('upBias')), gateBias: vec(L('gateBias')), downBias: vec(L('downBias')),
    };
  });
  const embed = need('embed');
  const [V, Dp] = embed.shape as [number, number];
  const lmHead = c.tiedLmHead ? mat(embed.data, V, Dp) : outRows('lmHead');
  const kernel = kinds.size === 1 ? [...kinds][0]! : 'mixed';
  const live = arenas.filter((a): a is WasmArena => a !== null);
  let used = 1;
  const big: RowMatrix | null = largest;
  if (big && maxThreads > 1 && live.every((a) => a.shared || a.native)) {
    if (threads !== 'auto') { for (const a of live) if (a.native) a.native.threads = maxThreads; else startPool(a, maxThreads); used = maxThreads; }
    else if (rowBytes >= AUTO_MIN_BYTES) used = autoThreads(live, big, maxThreads);
  }
  return {
    dtype, threads: used,
    kernel, inputMajor, layers, embed: embed.data, pos: vec('pos'),
    projIn: get('projIn') ? inRows('projIn') : undefined,
    projOut: get('projOut') ? inRows('projOut') : undefined,
    finalNorm: maybeNorm('finalNorm'), embedNorm: maybeNorm('embedNorm'),
    lmHead, act: actKernel(c, kernel === 'native' ? native : null),
    dispose: () => { for (const a of arenas) a?.dispose(); },
  };
}
