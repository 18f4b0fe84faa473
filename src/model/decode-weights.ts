/**
 * The decode runtime's copy of a model's weights: every matrix as rows (src/model/kernels/rows.ts), laid out so that
 * a decode step only multiplies rows it keeps:
 *   q, k, v  [H*hd | KV*hd, d]   matvec (HF q_proj/k_proj/v_proj layout)
 *   o        [H*hd, d]           axpy with the heads' context (only the selected heads' rows)
 *   up, gate [F, d]              matvec (only the selected neurons' rows)
 *   down     [F, d]              axpy with the activations (only the selected / nonzero rows)
 *   lmHead   [V, Dp]             matvec (tied: the embedding rows themselves)
 * Built once per model (loadModel's `decode` option); its arena is freed with the model.
 * A matvec matrix (q, k, v, up, gate, lmHead) named in `inputMajor` is stored input-major instead ([in, out] rows:
 * one row per input), so that an input-sparse step reads only the rows of its nonzero inputs (RowMatrix.axpy with
 * those rows); `DecodeWeights.inputMajor` says which ones are.
 */
import type { ModelConfig } from './config.js';
import { rowMatrix, type RowKernel, type RowMatrix } from './kernels/rows.js';
import { createArena } from './kernels/wasm/kernels.js';
import { transpose2d } from '../util/transpose.js';

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
   * how the rows are stored (issue 27, being implemented): 'auto' = the checkpoint's own half precision for float16 /
   * bfloat16 checkpoints, else float32; 'q8_0' = 8-bit blocks with per-block scales
   */
  dtype?: 'auto' | 'float32' | 'float16' | 'bfloat16' | 'q8_0';
  /** worker threads sharing the kernels' memory (issue 27, being implemented); 'auto' = chosen by measurement */
  threads?: number | 'auto';
  /** weight names ('layers.3.wq', 'layers.3.up', ...) of matvec matrices to store input-major (for input-sparse modes) */
  inputMajor?: ReadonlySet<string>;
}

export interface DecodeWeights {
  /** the weight names stored input-major (DecodeOptions.inputMajor), whose RowMatrix is read with axpy */
  inputMajor: ReadonlySet<string>;
  /** the kernel every matrix got (mixed when the arena filled up part way) */
  kernel: RowKernel | 'mixed';
  layers: DecodeLayer[];
  embed: Float32Array; // [V, Dp]
  pos?: Float32Array | undefined; // [P + offset, d]
  projIn?: RowMatrix | undefined; // [Dp, d] (axpy)
  projOut?: RowMatrix | undefined; // [d, Dp] (axpy)
  finalNorm?: HostNorm | undefined;
  embedNorm?: HostNorm | undefined;
  lmHead: RowMatrix; // [V, Dp]
  dispose(): void;
}

/**
 * get(name) returns the model's float32 host tensor by our weight name ('embed', 'layers.3.wq', ...) as loadModel
 * lays them out ([in, out]), or undefined when the model has none.
 */
export function buildDecodeWeights(c: ModelConfig, get: (name: string) => { shape: number[]; data: Float32Array } | undefined, opts: DecodeOptions = {}): DecodeWeights {
  const inputMajor = new Set(opts.inputMajor ?? []);
  // one WebAssembly memory holds at most ~3.5 GiB: a larger model gets another arena when one is full
  const arenas = [createArena()];
  const kinds = new Set<RowKernel>();
  const need = (n: string) => { const t = get(n); if (!t) throw new Error(`decode weights: no ${n}`); return t; };
  const mat = (data: Float32Array, n: number, d: number) => {
    let m = rowMatrix(data, n, d, arenas[arenas.length - 1]!);
    if (m.kernel === 'js' && d % 8 === 0 && arenas[0] && data.byteLength < 3 * 2 ** 30) {
      const fresh = createArena();
      if (fresh) { arenas.push(fresh); m = rowMatrix(data, n, d, fresh); }
    }
    kinds.add(m.kernel);
    return m;
  };
  /** an [in, out] matrix as `out` rows of length `in` */
  const outRows = (n: string) => { if (inputMajor.has(n)) return inRows(n); const t = need(n); const [i, o] = t.shape as [number, number]; return mat(transpose2d(t.data, i, o), o, i); };
  /** an [in, out] matrix as `in` rows of length `out` (for axpy) */
  function inRows(n: string) { const t = need(n); const [i, o] = t.shape as [number, number]; return mat(t.data, i, o); }
  const vec = (n: string) => get(n)?.data;
  const norm = (p: string): HostNorm => ({ g: need(`${p}.g`).data, b: vec(`${p}.b`) });
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
  return {
    kernel, inputMajor, layers, embed: embed.data, pos: vec('pos'),
    projIn: get('projIn') ? inRows('projIn') : undefined,
    projOut: get('projOut') ? inRows('projOut') : undefined,
    finalNorm: maybeNorm('finalNorm'), embedNorm: maybeNorm('embedNorm'),
    lmHead,
    dispose: () => { for (const a of arenas) a?.dispose(); },
  };
}
