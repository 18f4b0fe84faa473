/**
 * loadModel: a Hugging Face checkpoint folder -> typed weight records on the tfjs backend.
 * nn.Linear weights are transposed once here to [in, out] so the forward pass only multiplies untransposed operands.
 * A model larger than `residentBudgetBytes` keeps its layer weights on the host (Float32Arrays) and the forward pass
 * uploads one layer at a time ("streamed" residency).
 */
import * as fs from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { f16ToF32Array } from '../util/half.js';
import { openCheckpoint, type Checkpoint } from '../checkpoint/checkpoint.js';
import { UserError } from '../util/errors.js';
import { getGpuAdapter, residentBudgetBytes, type BackendName } from '../backend.js';
import { normalizeConfig, type ModelConfig } from './config.js';
import { buildDecodeWeights, type DecodeOptions, type DecodeWeights } from './decode-weights.js';
import { transpose2d } from '../util/transpose.js';
import { canonicalKey, expectedWeights, isIgnorable, type WeightSpec } from './weight-map.js';

export interface Norm { g: tf.Tensor1D; b?: tf.Tensor1D }

/** One decoder layer. Shapes: d = hidden, H = heads, KV = kv heads, hd = head dim, F = ffn. */
export interface LayerWeights {
  ln1: Norm;
  /** Qwen 3: RMSNorm of each head's q / k [hd] */
  qNorm?: Norm; kNorm?: Norm;
  /** Gemma 2: norms of the attention output and of the MLP output (sandwich) */
  lnAttnOut?: Norm; lnMlpOut?: Norm;
  wq: tf.Tensor2D; // [d, H*hd]
  wk: tf.Tensor2D; // [d, KV*hd]
  wv: tf.Tensor2D; // [d, KV*hd]
  wo: tf.Tensor2D; // [H*hd, d]
  bq?: tf.Tensor1D; bk?: tf.Tensor1D; bv?: tf.Tensor1D; bo?: tf.Tensor1D;
  /** the MLP's norm (absent where the MLP reads ln1's output: Falcon's shared norm) */
  ln2?: Norm;
  up: tf.Tensor2D; // [d, F]  the ungated MLP's first projection, or the gated one's up projection
  upBias?: tf.Tensor1D;
  gate?: tf.Tensor2D; // [d, F] the gated MLP's gate projection
  gateBias?: tf.Tensor1D;
  down: tf.Tensor2D; // [F, d]
  downBias?: tf.Tensor1D;
}

/** data: float32, or float16 bits (Uint16Array; a float16 checkpoint kept at half size, widened when uploaded) */
export interface HostTensor { shape: number[]; data: Float32Array | Uint16Array }
const f32of = (t: HostTensor): Float32Array => (t.data instanceof Uint16Array ? f16ToF32Array(t.data) : t.data);
type HostLayer = Record<string, HostTensor>;

export interface Model {
  config: ModelConfig;
  dir: string;
  residency: 'resident' | 'streamed';
  /** [V, Dp] (vocabulary-split models: see embedRows; reading this throws) */
  embed: tf.Tensor2D;
  pos?: tf.Tensor2D; // [P + offset, d]
  /** BLOOM: LayerNorm right after the embedding */
  embedNorm?: Norm;
  projIn?: tf.Tensor2D; // [Dp, d]
  projOut?: tf.Tensor2D; // [d, Dp]
  finalNorm?: Norm;
  /** [Dp, V] (vocabulary-split models: see headLogits; reading this throws) */
  lmHead: tf.Tensor2D;
  /** the embedding and LM head cut along the vocabulary, where one would not fit a device buffer binding */
  vocabSplit?: { rows: number[]; embedHost: HostTensor; lmHead: tf.Tensor2D[] };
  /** borrow layer i's weights; call release() when done (no-op when resident) */
  layer(i: number): { w: LayerWeights; release(): void };
  /** total bytes of float32 weights */
  bytes: number;
  /** the decode runtime's row copies (loadModel's `decode` option) */
  decode?: DecodeWeights;
  /** the forward pass's attention kernel, chosen at load: the SIMD kernels on tfjs-wasm, tfjs ops elsewhere */
  attention: 'host-simd' | 'tfjs';
  /** loaded for the decode runtime only (LoadOptions.forward false): no backend tensors, forward() cannot run */
  decodeOnly?: boolean;
  dispose(): void;
}

export interface LoadOptions {
  /** bytes of weights that may live on the backend at once; default from the backend (residentBudgetBytes: wasm
   * 2.5 GiB, its heap is <= 4 GiB; a GPU 60% of its memory) */
  residentBudgetBytes?: number;
  residency?: 'auto' | 'resident' | 'streamed';
  /** also build the decode runtime's row copies (src/model/decode-weights.ts): needed by src/runtime/decoder.ts */
  decode?: boolean | DecodeOptions;
  /** host weights already read (loadHostWeights), e.g. SharedArrayBuffer-backed ones shared by worker threads */
  host?: HostWeights;
  /** the largest tensor the backend binds (default: the WebGPU adapter's maxStorageBufferBindingSize; none elsewhere) */
  maxBindingBytes?: number;
  /**
   * false: load for the decode runtime only (needs `decode`): no backend tensors; the checkpoint's matrices are read one
   * at a time straight into the decode rows (the [out, in] rows as stored, only the input-major ones transposed), so the
   * process holds about the rows' own size. forward() cannot run on such a model (Model.decodeOnly): a prompt is
   * prefilled by decode steps (DecodeSession.prefill). Default true.
   */
  forward?: boolean;
}

/** Every weight of a checkpoint on the host, laid out as the model uses them (float32, [in, out]). */
export interface HostWeights { dir: string; tensors: Record<string, HostTensor> }

/** Match the checkpoint's keys against the family table: every problem listed in one error. */
function checkKeys(ck: Checkpoint, cfg: ModelConfig, specs: WeightSpec[]): Map<string, string> {
  const expected = new Set(specs.map((s) => s.key));
  const canon = new Map<string, string>(); // canonical key -> file key
  const problems: string[] = [];
  for (const k of ck.tensors.keys()) {
    const c = canonicalKey(cfg, k, expected);
    if (expected.has(c)) canon.set(c, k);
    else if (!isIgnorable(cfg, c, expected)) problems.push(`unexpected weight "${k}" ${JSON.stringify(ck.tensors.get(k)!.info.shape)}`);
  }
  for (const s of specs) {
    const fk = canon.get(s.key);
    if (!fk) { problems.push(`missing weight "${s.key}" (expected shape ${JSON.stringify(s.shape)})`); continue; }
    const shape = ck.tensors.get(fk)!.info.shape;
    if (JSON.stringify(shape) !== JSON.stringify(s.shape))
      problems.push(`weight "${fk}" has shape ${JSON.stringify(shape)}, expected ${JSON.stringify(s.shape)} from config.json`);
  }
  if (problems.length)
    throw new UserError(`checkpoint ${ck.dir} does not match its ${cfg.family} config.json:\n  - ${problems.slice(0, 40).join('\n  - ')}${problems.length > 40 ? `\n  - ... ${problems.length - 40} more` : ''}`,
      'the weights and config.json disagree: use the config.json saved with these weights');
  return canon;
}

/** The raw bits of a tensor: float32 (any dtype widened), or float16 kept as its bits. */
function readRaw(ck: Checkpoint, fileKey: string, half: boolean): Float32Array | Uint16Array {
  if (!half) return ck.read(fileKey);
  const { file, info } = ck.tensors.get(fileKey)!;
  const data = new Uint16Array((info.end - info.begin) / 2);
  const fd = fs.openSync(file.path, 'r');
  try {
    const bytes = new Uint8Array(data.buffer);
    for (let o = 0; o < bytes.length;) { const n = fs.readSync(fd, bytes, o, Math.min(bytes.length - o, 1 << 30), info.begin + o); if (n <= 0) throw new Error(`short read of ${fileKey} in ${file.path}`); o += n; }
  } finally { fs.closeSync(fd); }
  return data;
}

/** indices `rows` along the output axis of an HF tensor (Linear [out, in]: rows; Conv1D [in, out]: columns; 1-D) */
function gatherOut<T extends Float32Array | Uint16Array>(src: T, shape: number[], transpose: boolean, rows: number[]): { data: T; shape: number[] } {
  const out = new (src.constructor as new (n: number) => T)(rows.length * (shape.length === 2 ? (transpose ? shape[1]! : shape[0]!) : 1));
  if (shape.length === 1) { rows.forEach((r, j) => { out[j] = src[r]!; }); return { data: out, shape: [rows.length] }; }
  const [a, b] = shape as [number, number];
  if (transpose) { rows.forEach((r, j) => out.set(src.subarray(r * b, (r + 1) * b), j * b)); return { data: out, shape: [rows.length, b] }; }
  for (let i = 0; i < a; i++) for (let j = 0; j < rows.length; j++) out[i * rows.length + j] = src[i * b + rows[j]!]!;
  return { data: out, shape: [a, rows.length] };
}

/**
 * One HF tensor -> our host tensors, laid out as the model uses them: [in, out] (transposed where the spec says),
 * fused tensors split into their parts, Gemma's 1 + w folded in (float32).
 */
function readSpec(ck: Checkpoint, fileKey: string, spec: WeightSpec, half: boolean, keepRows = false, lazy = false): [string, HostTensor & { rows?: Float32Array | Uint16Array }][] {
  let data = readRaw(ck, fileKey, half);
  if (spec.plusOne) { const f = f32of({ shape: spec.shape, data }); data = f.map((w) => 1 + w); }
  // keepRows: a transposed matrix also keeps the checkpoint's own [out, in] rows, which the decode runtime reads as they
  // are (loadModel drops them once its rows are built): transposing them back was half of a TinyLlama-width load.
  // lazy (a decode-only load): the [in, out] layout is made only if something reads `data` (the input-major rows)
  const lay = (d: Float32Array | Uint16Array, shape: number[]): HostTensor & { rows?: Float32Array | Uint16Array } => {
    if (!spec.transpose || shape.length !== 2) return { shape, data: d };
    const [rows, cols] = shape as [number, number];
    if (lazy) { let t: Float32Array | Uint16Array | undefined; return { shape: [cols, rows], get data() { return (t ??= transpose2d(d, rows, cols)); }, rows: d }; }
    return { shape: [cols, rows], data: transpose2d(d, rows, cols), ...(keepRows ? { rows: d } : {}) };
  };
  if (!spec.parts) return [[spec.name!, lay(data, spec.shape)]];
  return spec.parts.map((pt) => { const g = gatherOut(data, spec.shape, spec.transpose, pt.rows); return [pt.name, lay(g.data, g.shape)]; });
}

/**
 * Layer i's tensors (float32, our layout: [in, out], fused tensors split), by name without the `layers.i.` prefix:
 * for the host-side readers (predictor sites, bundles) that need one layer, not the model.
 */
export function readLayerTensors(ck: Checkpoint, c: ModelConfig, i: number): Record<string, { shape: number[]; data: Float32Array }> {
  const pre = `layers.${i}.`;
  const specs = expectedWeights(c).filter((s) => (s.name ?? s.parts![0]!.name).startsWith(pre));
  const expected = new Set(specs.map((s) => s.key));
  const fileKey = new Map([...ck.tensors.keys()].map((k) => [canonicalKey(c, k, expected), k]));
  const out: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const s of specs) {
    const fk = fileKey.get(s.key);
    if (!fk) throw new UserError(`checkpoint ${ck.dir} has no weight "${s.key}"`, 'the weights and config.json disagree: use the config.json saved with these weights');
    for (const [n, t] of readSpec(ck, fk, s, false)) out[n.slice(pre.length)] = { shape: t.shape, data: t.data as Float32Array };
  }
  return out;
}

/** Backend tensors of layer i (uploaded per call when streamed): every host tensor named layers.i.* */
function toLayer(h: HostLayer, i: number): LayerWeights {
  const pre = `layers.${i}.`;
  const w: Record<string, unknown> = {};
  for (const [k, t] of Object.entries(h)) {
    if (!k.startsWith(pre)) continue;
    const n = k.slice(pre.length), f = f32of(t);
    const m = /^(.+)\.([gb])$/.exec(n);
    if (m) ((w[m[1]!] ??= {}) as Record<string, tf.Tensor>)[m[2]!] = tf.tensor1d(f);
    else w[n] = t.shape.length === 2 ? tf.tensor2d(f, t.shape as [number, number]) : tf.tensor1d(f);
  }
  return w as unknown as LayerWeights;
}

export function disposeLayer(w: LayerWeights): void {
  for (const v of Object.values(w)) {
    if (v instanceof tf.Tensor) v.dispose();
    else if (v && typeof v === 'object') for (const t of Object.values(v as Norm)) (t as tf.Tensor | undefined)?.dispose();
  }
}

/** A checkpoint with its normalized config, the weights it must hold, and their keys in it (checked). */
function openChecked(dir: string) {
  const ck = openCheckpoint(dir);
  const cfg = normalizeConfig(ck.rawConfig, `${dir}/config.json`);
  const specs = expectedWeights(cfg);
  return { ck, cfg, specs, canon: checkKeys(ck, cfg, specs) };
}

/**
 * Read every weight to the host once. `shared`: in SharedArrayBuffers, so worker threads given this object (by
 * postMessage / workerData) see the same memory instead of a copy each.
 */
export function loadHostWeights(dir: string, opts: { shared?: boolean } = {}): HostWeights {
  const { ck, specs, canon } = openChecked(dir);
  const tensors: HostLayer = {};
  // a float16 checkpoint stays float16 on the host (half the memory; widening to float32 is exact)
  const half = specs.every((s) => ck.tensors.get(canon.get(s.key)!)!.info.dtype === 'F16');
  for (const s of specs)
    for (const [name, t] of readSpec(ck, canon.get(s.key)!, s, half)) {
      if (opts.shared) {
        const a = t.data instanceof Uint16Array ? new Uint16Array(new SharedArrayBuffer(t.data.byteLength)) : new Float32Array(new SharedArrayBuffer(t.data.byteLength));
        a.set(t.data);
        t.data = a;
      }
      tensors[name] = t;
    }
  return { dir, tensors };
}

/** the forward pass's attention kernel per backend, chosen at load: the SIMD kernels on tfjs-wasm, tfjs ops elsewhere */
const ATTENTION_KERNEL: Record<BackendName, Model['attention']> = { wasm: 'host-simd', webgpu: 'tfjs', tensorflow: 'tfjs', cpu: 'tfjs' };

/** vocabulary block boundaries [0, .., V] such that a block's [Dp, rows] float32 fits `maxBytes` */
function vocabBlocks(V: number, Dp: number, maxBytes: number): number[] {
  const per = Math.max(1, Math.floor(maxBytes / (Dp * 4)));
  const out: number[] = [];
  for (let r = 0; r < V; r += per) out.push(r);
  return [...out, V];
}
/** columns c0..c1 of a row-major [rows, cols] matrix */
function columns(a: Float32Array, rows: number, cols: number, c0: number, c1: number): Float32Array {
  const w = c1 - c0, out = new Float32Array(rows * w);
  for (let r = 0; r < rows; r++) out.set(a.subarray(r * cols + c0, r * cols + c1), r * w);
  return out;
}

/** The token embeddings of ids [B, T] (int32): [B, T, Dp]; a vocabulary-split model's are gathered on the host. */
export function embedRows(model: Model, ids: tf.Tensor): tf.Tensor {
  const s = model.vocabSplit;
  if (!s) return tf.gather(model.embed, ids);
  const Dp = s.embedHost.shape[1]!, idv = ids.dataSync(), e = s.embedHost.data as Float32Array; // ids were made on the host: no device read
  const out = new Float32Array(idv.length * Dp);
  for (let i = 0; i < idv.length; i++) out.set(e.subarray(idv[i]! * Dp, (idv[i]! + 1) * Dp), i * Dp);
  return tf.tensor(out, [...ids.shape, Dp]);
}

/** The LM head on h [.., Dp]: logits [.., V]; a vocabulary-split model's blocks are concatenated. */
export function headLogits(model: Model, h: tf.Tensor, linear: (x: tf.Tensor, w: tf.Tensor2D) => tf.Tensor): tf.Tensor {
  const s = model.vocabSplit;
  return s ? tf.concat(s.lmHead.map((w) => linear(h, w)), -1) : linear(h, model.lmHead);
}

export function loadModel(dir: string, opts: LoadOptions = {}): Model {
  const { ck, cfg, specs, canon } = openChecked(dir);
  const bytes = specs.reduce((a, s) => a + s.shape.reduce((x, y) => x * y, 1) * 4, 0);
  const budget = opts.residentBudgetBytes ?? residentBudgetBytes();
  const residency = opts.residency && opts.residency !== 'auto' ? opts.residency : bytes > budget ? 'streamed' : 'resident';

  // the decode rows of a half-precision checkpoint: its own 16-bit format (dtype 'auto'); a float16 checkpoint is then
  // read as its float16 bits (widening them for the forward pass is exact), not widened and narrowed again
  const dtypes = new Set(specs.map((s) => ck.tensors.get(canon.get(s.key)!)!.info.dtype));
  const ckHalf = dtypes.size === 1 && dtypes.has('F16') ? 'float16' : dtypes.size === 1 && dtypes.has('BF16') ? 'bfloat16' : null;
  const decodeOpts = opts.decode ? (opts.decode === true ? {} : opts.decode) : null;
  // (any row dtype: float32, bfloat16 and q8_0 rows are made from the same exact widening, in the arena or natively)
  const readHalf = ckHalf === 'float16' && decodeOpts !== null;
  if (opts.forward === false) {
    if (!decodeOpts) throw new Error('loadModel: forward: false loads for the decode runtime only and needs the decode option');
    return loadDecodeOnly(ck, cfg, specs, canon, decodeOpts, ckHalf, readHalf, dir, bytes);
  }
  let host: HostLayer = {};
  if (opts.host) host = opts.host.tensors;
  else for (const s of specs) for (const [name, t] of readSpec(ck, canon.get(s.key)!, s, readHalf, decodeOpts !== null)) host[name] = t;
  const g = (n: string) => host[n];
  const embedH = g('embed')!;
  const embedF = f32of(embedH);
  const [V, Dp] = embedH.shape as [number, number];
  // one float32 tensor per device buffer binding at most (WebGPU: maxStorageBufferBindingSize, 2 GiB on an H200):
  // a larger vocabulary's embedding stays on the host (rows gathered there) and its LM head is cut into column blocks
  const maxBinding = opts.maxBindingBytes ?? getGpuAdapter()?.maxStorageBufferBindingSize ?? Infinity;
  const split = V * Dp * 4 > maxBinding ? vocabBlocks(V, Dp, maxBinding) : null;
  const headF = cfg.tiedLmHead ? transpose2d(embedF, V, Dp) : f32of(g('lmHead')!);
  const embed = split ? null : tf.tensor2d(embedF, [V, Dp]);
  const lmHead = split ? null : tf.tensor2d(headF, [Dp, V]);
  const model: Model = {
    config: cfg,
    dir,
    residency,
    get embed(): tf.Tensor2D { if (!embed) throw new Error('vocabulary-split model: use embedRows'); return embed; },
    get lmHead(): tf.Tensor2D { if (!lmHead) throw new Error('vocabulary-split model: use headLogits'); return lmHead; },
    bytes,
    attention: ATTENTION_KERNEL[(tf.getBackend() as BackendName | undefined) ?? 'cpu'] ?? 'tfjs',
    layer: () => { throw new Error('unreachable'); },
    dispose: () => undefined,
  };
  if (g('pos')) model.pos = tf.tensor2d(f32of(g('pos')!), g('pos')!.shape as [number, number]);
  if (g('projIn')) model.projIn = tf.tensor2d(f32of(g('projIn')!), g('projIn')!.shape as [number, number]);
  if (g('projOut')) model.projOut = tf.tensor2d(f32of(g('projOut')!), g('projOut')!.shape as [number, number]);
  const norm = (n: string): Norm | undefined => g(`${n}.g`) && { g: tf.tensor1d(f32of(g(`${n}.g`)!)), ...(g(`${n}.b`) ? { b: tf.tensor1d(f32of(g(`${n}.b`)!)) } : {}) };
  const fn = norm('finalNorm'), en = norm('embedNorm');
  if (fn) model.finalNorm = fn;
  if (en) model.embedNorm = en;
  if (split) model.vocabSplit = { rows: split, embedHost: { shape: [V, Dp], data: embedF },
    lmHead: split.slice(0, -1).map((r0, j) => tf.tensor2d(columns(headF, Dp, V, r0, split[j + 1]!), [Dp, split[j + 1]! - r0])) };
  const globals = [embed, lmHead, ...(model.vocabSplit?.lmHead ?? []), model.pos, model.projIn, model.projOut, fn?.g, fn?.b, en?.g, en?.b];
  // the decode runtime's rows: made once per model (also when streamed), in one arena that dispose frees
  if (decodeOpts) {
    try { model.decode = buildDecodeWeights(cfg, (n) => host[n], decodeOpts, ckHalf); } finally { for (const t of Object.values(host) as (HostTensor & { rows?: unknown })[]) delete t.rows; }
  }
  const decode = model.decode;
  if (residency === 'resident') {
    const layers = Array.from({ length: cfg.layers }, (_, i) => toLayer(host, i));
    model.layer = (i) => ({ w: layers[i]!, release: () => undefined });
    model.dispose = () => { for (const t of globals) t?.dispose(); for (const l of layers) disposeLayer(l); decode?.dispose(); };
  } else {
    model.layer = (i) => { const w = toLayer(host, i); return { w, release: () => disposeLayer(w) }; };
    model.dispose = () => { for (const t of globals) t?.dispose(); decode?.dispose(); };
  }
  return model;
}

/**
 * LoadOptions.forward false: the decode rows only. Each checkpoint tensor is read when the rows ask for it (a fused one
 * once for its parts) and dropped once its rows are built, so the peak is the rows plus one tensor, and no backend
 * tensor or [in, out] copy of an output-major matrix is made.
 */
function loadDecodeOnly(ck: Checkpoint, cfg: ModelConfig, specs: WeightSpec[], canon: Map<string, string>, decodeOpts: DecodeOptions, ckHalf: 'float16' | 'bfloat16' | null,
  readHalf: boolean, dir: string, bytes: number): Model {
  const bySpec = new Map<string, WeightSpec>();
  for (const s of specs) for (const n of s.parts ? s.parts.map((p) => p.name) : [s.name!]) bySpec.set(n, s);
  const held = new Map<string, HostTensor & { rows?: Float32Array | Uint16Array }>();
  const get = (n: string) => {
    const t = held.get(n);
    if (t) return t;
    const s = bySpec.get(n);
    if (!s) return undefined;
    for (const [name, x] of readSpec(ck, canon.get(s.key)!, s, readHalf, true, true)) held.set(name, x);
    return held.get(n);
  };
  const decode = buildDecodeWeights(cfg, get, decodeOpts, ckHalf, (n) => held.delete(n));
  held.clear();
  const none = (what: string): never => { throw new Error(`${dir}: loaded for the decode runtime only (loadModel forward: false): it has no ${what}`); };
  return {
    config: cfg, dir, residency: 'resident', bytes, decode, decodeOnly: true, attention: 'host-simd',
    get embed(): tf.Tensor2D { return none('embedding tensor'); },
    get lmHead(): tf.Tensor2D { return none('LM head tensor'); },
    layer: () => none('layer tensors (forward() needs a model loaded with forward: true)'),
    dispose: () => decode.dispose(),
  };
}
