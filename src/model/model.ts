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
import { normalizeConfig, type ModelConfig } from './config.js';
import { buildDecodeWeights, type DecodeWeights } from './decode-weights.js';
import { transpose2d } from '../util/transpose.js';
import { canonicalKey, expectedWeights, isIgnorable, type WeightSpec } from './weight-map.js';

export interface Norm { g: tf.Tensor1D; b?: tf.Tensor1D }

/** One decoder layer. Shapes: d = hidden, H = heads, KV = kv heads, hd = head dim, F = ffn. */
export interface LayerWeights {
  ln1: Norm;
  wq: tf.Tensor2D; // [d, H*hd]
  wk: tf.Tensor2D; // [d, KV*hd]
  wv: tf.Tensor2D; // [d, KV*hd]
  wo: tf.Tensor2D; // [H*hd, d]
  bq?: tf.Tensor1D; bk?: tf.Tensor1D; bv?: tf.Tensor1D; bo?: tf.Tensor1D;
  ln2: Norm;
  up: tf.Tensor2D; // [d, F]  OPT fc1, Llama up_proj
  upBias?: tf.Tensor1D;
  gate?: tf.Tensor2D; // [d, F] Llama gate_proj
  gateBias?: tf.Tensor1D;
  down: tf.Tensor2D; // [F, d]  OPT fc2, Llama down_proj
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
  embed: tf.Tensor2D; // [V, Dp]
  pos?: tf.Tensor2D; // [P + offset, d]
  projIn?: tf.Tensor2D; // [Dp, d]
  projOut?: tf.Tensor2D; // [d, Dp]
  finalNorm?: Norm;
  lmHead: tf.Tensor2D; // [Dp, V]
  /** borrow layer i's weights; call release() when done (no-op when resident) */
  layer(i: number): { w: LayerWeights; release(): void };
  /** total bytes of float32 weights */
  bytes: number;
  /** the decode runtime's row copies (loadModel's `decode` option) */
  decode?: DecodeWeights;
  /** the forward pass's attention kernel, chosen at load: the SIMD kernels on tfjs-wasm, tfjs ops elsewhere */
  attention: 'host-simd' | 'tfjs';
  dispose(): void;
}

export interface LoadOptions {
  /** bytes of weights that may live on the backend at once; default 2.5 GiB (tfjs-wasm's heap is <= 4 GiB) */
  residentBudgetBytes?: number;
  residency?: 'auto' | 'resident' | 'streamed';
  /** also build the decode runtime's row copies (src/model/decode-weights.ts): needed by src/runtime/decoder.ts */
  decode?: boolean;
  /** host weights already read (loadHostWeights), e.g. SharedArrayBuffer-backed ones shared by worker threads */
  host?: HostWeights;
}

/** Every weight of a checkpoint on the host, laid out as the model uses them (float32, [in, out]). */
export interface HostWeights { dir: string; tensors: Record<string, HostTensor> }

/** Match the checkpoint's keys against the family table: every problem listed in one error. */
function checkKeys(ck: Checkpoint, cfg: ModelConfig, specs: WeightSpec[]): Map<string, string> {
  const expected = new Set(specs.map((s) => s.key));
  const canon = new Map<string, string>(); // canonical key -> file key
  const problems: string[] = [];
  for (const k of ck.tensors.keys()) {
    const c = canonicalKey(cfg.family, k);
    if (expected.has(c)) canon.set(c, k);
    else if (!isIgnorable(c, expected)) problems.push(`unexpected weight "${k}" ${JSON.stringify(ck.tensors.get(k)!.info.shape)}`);
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

function readHost(ck: Checkpoint, fileKey: string, spec: WeightSpec): HostTensor {
  const data = ck.read(fileKey);
  if (!spec.transpose) return { shape: spec.shape, data };
  const [rows, cols] = spec.shape as [number, number];
  return { shape: [cols, rows], data: transpose2d(data, rows, cols) };
}

/** A float16 tensor's bits, laid out like readHost (transposed to [in, out] where the spec says so). */
function readHostF16(ck: Checkpoint, fileKey: string, spec: WeightSpec): HostTensor {
  const { file, info } = ck.tensors.get(fileKey)!;
  const data = new Uint16Array((info.end - info.begin) / 2);
  const fd = fs.openSync(file.path, 'r');
  try {
    const bytes = new Uint8Array(data.buffer);
    for (let o = 0; o < bytes.length;) { const n = fs.readSync(fd, bytes, o, Math.min(bytes.length - o, 1 << 30), info.begin + o); if (n <= 0) throw new Error(`short read of ${fileKey} in ${file.path}`); o += n; }
  } finally { fs.closeSync(fd); }
  if (!spec.transpose) return { shape: spec.shape, data };
  const [rows, cols] = spec.shape as [number, number];
  return { shape: [cols, rows], data: transpose2d(data, rows, cols) };
}

/** Backend tensors of layer i (uploaded per call when streamed). */
function toLayer(h: HostLayer, i: number): LayerWeights {
  const t2 = (n: string) => tf.tensor2d(f32of(h[`layers.${i}.${n}`]!), h[`layers.${i}.${n}`]!.shape as [number, number]);
  const t1 = (n: string) => (h[`layers.${i}.${n}`] ? tf.tensor1d(f32of(h[`layers.${i}.${n}`]!)) : undefined);
  const w: LayerWeights = {
    ln1: { g: t1('ln1.g')! }, ln2: { g: t1('ln2.g')! },
    wq: t2('wq'), wk: t2('wk'), wv: t2('wv'), wo: t2('wo'), up: t2('up'), down: t2('down'),
  };
  const opt: [keyof LayerWeights, string][] = [['bq', 'bq'], ['bk', 'bk'], ['bv', 'bv'], ['bo', 'bo'], ['upBias', 'upBias'], ['downBias', 'downBias'], ['gateBias', 'gateBias']];
  for (const [k, n] of opt) { const t = t1(n); if (t) (w as unknown as Record<string, tf.Tensor>)[k] = t; }
  const b1n = t1('ln1.b'); if (b1n) w.ln1.b = b1n;
  const b2n = t1('ln2.b'); if (b2n) w.ln2.b = b2n;
  if (h[`layers.${i}.gate`]) w.gate = t2('gate');
  return w;
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
  for (const s of specs) {
    const t = half ? readHostF16(ck, canon.get(s.key)!, s) : readHost(ck, canon.get(s.key)!, s);
    if (opts.shared) {
      const a = t.data instanceof Uint16Array ? new Uint16Array(new SharedArrayBuffer(t.data.byteLength)) : new Float32Array(new SharedArrayBuffer(t.data.byteLength));
      a.set(t.data);
      t.data = a;
    }
    tensors[s.name] = t;
  }
  return { dir, tensors };
}

export function loadModel(dir: string, opts: LoadOptions = {}): Model {
  const { ck, cfg, specs, canon } = openChecked(dir);
  const bytes = specs.reduce((a, s) => a + s.shape.reduce((x, y) => x * y, 1) * 4, 0);
  const budget = opts.residentBudgetBytes ?? 2.5 * 2 ** 30;
  const residency = opts.residency && opts.residency !== 'auto' ? opts.residency : bytes > budget ? 'streamed' : 'resident';

  let host: HostLayer = {};
  if (opts.host) host = opts.host.tensors;
  else for (const s of specs) host[s.name] = readHost(ck, canon.get(s.key)!, s);
  const g = (n: string) => host[n];
  const embedH = g('embed')!;
  const embedF = f32of(embedH);
  const embed = tf.tensor2d(embedF, embedH.shape as [number, number]);
  const lmHead = cfg.tiedLmHead
    ? tf.tensor2d(transpose2d(embedF, embedH.shape[0]!, embedH.shape[1]!), [embedH.shape[1]!, embedH.shape[0]!])
    : tf.tensor2d(f32of(g('lmHead')!), g('lmHead')!.shape as [number, number]);
  const model: Model = {
    config: cfg,
    dir,
    residency,
    embed,
    lmHead,
    bytes,
    attention: tf.getBackend() === 'wasm' ? 'host-simd' : 'tfjs',
    layer: () => { throw new Error('unreachable'); },
    dispose: () => undefined,
  };
  if (g('pos')) model.pos = tf.tensor2d(f32of(g('pos')!), g('pos')!.shape as [number, number]);
  if (g('projIn')) model.projIn = tf.tensor2d(f32of(g('projIn')!), g('projIn')!.shape as [number, number]);
  if (g('projOut')) model.projOut = tf.tensor2d(f32of(g('projOut')!), g('projOut')!.shape as [number, number]);
  if (g('finalNorm.g')) {
    model.finalNorm = { g: tf.tensor1d(f32of(g('finalNorm.g')!)) };
    if (g('finalNorm.b')) model.finalNorm.b = tf.tensor1d(f32of(g('finalNorm.b')!));
  }
  const globals = [model.embed, model.lmHead, model.pos, model.projIn, model.projOut, model.finalNorm?.g, model.finalNorm?.b];
  // the decode runtime's rows: made once per model (also when streamed), in one arena that dispose frees
  if (opts.decode) model.decode = buildDecodeWeights(cfg, (n) => { const t = host[n]; return t && { shape: t.shape, data: f32of(t) }; });
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
