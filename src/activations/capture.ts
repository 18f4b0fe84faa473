/**
 * One collection batch: the dense forward pass over a fixed set of sequences and everything derived from it per
 * layer (float16 conversion, active-neuron bits, finiteness checks, the batch's partial statistics). The same
 * function runs in-process or in a worker thread, so a batch's bytes do not depend on where (or beside what) it ran.
 */
import type * as tf from '@tensorflow/tfjs-core';
import { forward, disposeOutput } from '../model/forward.js';
import type { Model } from '../model/model.js';
import { UserError } from '../util/errors.js';
import { f32ToF16Array } from '../util/half.js';
import { activationBits } from '../model/kernels/wasm/kernels.js';
import { gpuReads, packLayer, packLayout, packsOnDevice, readbackThreads, readPacked, type PackSpec } from './gpu-pack.js';

/** pack: pack the captures on the device before reading them (gpu-pack.ts; default: on webgpu) */
export interface CaptureSpec { layers: number[]; seqLen: number; dtype: 'float16' | 'float32'; mlpAct: boolean; pack?: boolean }

export interface LayerCapture {
  layer: number;
  xAttn: Float32Array | Uint16Array;
  xMlp: Float32Array | Uint16Array;
  bits: Uint8Array;
  headNorm: Float32Array;
  mlpAct?: Uint16Array;
  /** packed on the device: the buffer the arrays above are views of (so that it moves between threads whole) */
  packed?: Int32Array;
  /** this batch's partial statistics (summed by the caller in batch order) */
  active: number;
  absSum: number;
  headNormSum: number[];
  headNormSq: number[];
}

export interface BatchCapture { firstSeq: number; rows: number; layers: LayerCapture[]; forwardMs: number; captureMs: number }

/** The original per-value checks, in their order: they throw the first problem (only run when the fast pass saw one). */
function checkValues(arrays: [string, Float32Array][], l: number, firstSeq: number, nSeq: number, dtype: CaptureSpec['dtype']): void {
  for (const [name, arr] of arrays) {
    for (let i = 0; i < arr.length; i++) {
      const v = arr[i]!;
      if (!Number.isFinite(v)) throw new UserError(`non-finite ${name} value (${v}) at layer ${l}, sequence ${firstSeq + Math.floor(i / (arr.length / nSeq))}`, 'the checkpoint produces NaN/Inf on this data: check the weights and dtype');
      if (dtype === 'float16' && name !== 'head_norm' && Math.abs(v) > 65504) throw new UserError(`${name} value ${v} at layer ${l} overflows float16`, 'use --dtype float32');
    }
  }
}

const F16_MAX_BITS = 0x477fe000; // |v| <= 65504 <=> (bits & 0x7fffffff) <= this (and finite)
const INF_BITS = 0x7f800000;

/** Largest |v| bit pattern of a float32 array (>= INF_BITS: some value is non-finite). */
function maxAbsBits(a: Float32Array): number {
  const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
  let mx = 0;
  for (let i = 0; i < u.length; i++) { const b = u[i]! & 0x7fffffff; if (b > mx) mx = b; }
  return mx;
}

/** One layer's captures as read back from the backend: float32 (the host converts them), or packed on the device */
export interface FloatReads { layer: number; xa: Float32Array; xm: Float32Array; act: Float32Array; hn: Float32Array }
export interface PackedReads { layer: number; packed: Int32Array }
export type LayerReads = FloatReads | PackedReads;
/** the buffers a layer's reads live in (moved, not copied, to a host worker) */
export const readBuffers = (r: LayerReads): ArrayBuffer[] => [...new Set('packed' in r ? [r.packed.buffer] : [r.xa.buffer, r.xm.buffer, r.act.buffer, r.hn.buffer])] as ArrayBuffer[];
export interface LayerHostSpec { dtype: CaptureSpec['dtype']; mlpAct: boolean; hidden: number; ffn: number; heads: number; reluGated: boolean; rows: number; firstSeq: number; nSeq: number }
/** where a layer's host work runs: a worker thread beside a GPU (collect's host pool); default this thread */
export type LayerHost = (r: LayerReads, h: LayerHostSpec) => Promise<LayerCapture | null>;

const packSpec = (h: LayerHostSpec): PackSpec => ({ rows: h.rows, hidden: h.hidden, ffn: h.ffn, heads: h.heads, f16: h.dtype === 'float16', mlpAct: h.mlpAct, reluGated: h.reluGated });

/**
 * A layer's host work (float16 conversion, active-neuron bits, finiteness checks, the batch's partial statistics);
 * null for packed reads that hold a value only the per-value checks can judge (a float16 at or above 65504 in
 * magnitude, inf or NaN; a non-finite float32): the caller then reads the float32 captures and runs those.
 */
export function captureLayer(r: LayerReads, h: LayerHostSpec): LayerCapture | null {
  return 'packed' in r ? capturePacked(r, h) : captureFloats(r, h);
}

/** largest |v| of float16 bits (>= 0x7bff: 65504, a value that rounded to it, overflow, inf or NaN) */
function maxAbsHalf(a: Uint16Array): number {
  let mx = 0;
  for (let i = 0; i < a.length; i++) { const b = a[i]! & 0x7fff; if (b > mx) mx = b; }
  return mx;
}

function popcount(a: Int32Array): number {
  let c = 0;
  for (let i = 0; i < a.length; i++) { let v = a[i]!; v -= (v >>> 1) & 0x55555555; v = (v & 0x33333333) + ((v >>> 2) & 0x33333333); c += (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24; }
  return c;
}

function capturePacked(r: PackedReads, h: LayerHostSpec): LayerCapture | null {
  const L = packLayout(packSpec(h)), p = r.packed, f16 = h.dtype === 'float16', { rows, heads } = h;
  const at = <T>(C: new (b: ArrayBuffer, o: number, n: number) => T, word: number, n: number) => new C(p.buffer as ArrayBuffer, p.byteOffset + 4 * word, n);
  const xAttn = f16 ? at(Uint16Array, L.xa, L.n) : at(Float32Array, L.xa, L.n), xMlp = f16 ? at(Uint16Array, L.xm, L.n) : at(Float32Array, L.xm, L.n);
  const mlpAct = h.mlpAct ? at(Uint16Array, L.act, L.nf) : undefined;
  const hn = at(Float32Array, L.hn, rows * heads), rowAbs = at(Float32Array, L.rowAbs, rows);
  let absSum = 0;
  for (let q = 0; q < rows; q++) absSum += rowAbs[q]!;
  // the same problems captureFloats sees, judged on what was packed; anything doubtful goes to its per-value checks
  if (f16 ? maxAbsHalf(xAttn as Uint16Array) >= 0x7bff || maxAbsHalf(xMlp as Uint16Array) >= 0x7bff || (mlpAct && maxAbsHalf(mlpAct) >= 0x7bff)
    : maxAbsBits(xAttn as Float32Array) >= INF_BITS || maxAbsBits(xMlp as Float32Array) >= INF_BITS) return null;
  if (!Number.isFinite(absSum) || maxAbsBits(hn) >= INF_BITS) return null;
  const headNormSum = new Array(heads).fill(0), headNormSq = new Array(heads).fill(0);
  for (let q = 0; q < rows; q++) for (let k = 0; k < heads; k++) { const v = hn[q * heads + k]!; headNormSum[k] += v; headNormSq[k] += v * v; }
  return {
    layer: r.layer, xAttn, xMlp, bits: at(Uint8Array, L.bits, Math.ceil(L.nf / 8)), headNorm: hn, packed: p,
    active: popcount(at(Int32Array, L.bits, L.hn - L.bits)), absSum, headNormSum, headNormSq, ...(mlpAct ? { mlpAct } : {}),
  };
}

function captureFloats(r: FloatReads, h: LayerHostSpec): LayerCapture {
  const { layer: l, xa, xm, act, hn } = r, { rows, heads } = h;
  const f16 = h.dtype === 'float16';
  // one fast pass per array: non-finite values (and float16 overflow) are seen by the largest |v|'s bits, the
  // activations' bits and statistics in one loop; any problem reruns the per-value checks for their message
  const bits = new Uint8Array(Math.ceil((rows * h.ffn) / 8));
  // active = nonzero: a gated ReLU's relu(gate) * up is negative where up is (its |act| marks the same zeros)
  const { active, absSum, maxAbs: actMax } = activationBits(h.reluGated ? act.map(Math.abs) : act, bits);
  const headNormSum = new Array(heads).fill(0), headNormSq = new Array(heads).fill(0);
  for (let q = 0; q < rows; q++) for (let k = 0; k < heads; k++) { const v = hn[q * heads + k]!; headNormSum[k] += v; headNormSq[k] += v * v; }
  const limit = f16 ? F16_MAX_BITS : INF_BITS - 1;
  // NaN anywhere in act makes absSum NaN; +-Inf makes it Inf
  if (maxAbsBits(xa) > limit || maxAbsBits(xm) > limit || !Number.isFinite(absSum) || (f16 && actMax > 65504) || maxAbsBits(hn) >= INF_BITS)
    checkValues([['x_attn', xa], ['x_mlp', xm], ['mlp_act', act], ['head_norm', hn]], l, h.firstSeq, h.nSeq, h.dtype);
  return {
    layer: l,
    // the reads are this call's own copies (data()): no slice needed
    xAttn: f16 ? f32ToF16Array(xa) : xa,
    xMlp: f16 ? f32ToF16Array(xm) : xm,
    bits, headNorm: hn, active, absSum, headNormSum, headNormSq,
    ...(h.mlpAct ? { mlpAct: f32ToF16Array(act) } : {}),
  };
}

/**
 * The batch's forward pass is queued on the backend when this is called (before its first await); its captures are
 * read back asynchronously (tfjs-webgpu cannot read synchronously under Node; on webgpu packed on the device first,
 * gpu-pack.ts, about a fifth of the bytes), each layer's host work starting when its reads arrive (on `host`, e.g.
 * worker threads beside a GPU). A caller that starts the next batch before awaiting this one has the device run that
 * batch's forward meanwhile. forwardMs: until the last capture is on the host (on a
 * GPU the forward runs behind the reads); captureMs: the host work after that.
 */
export async function captureBatch(model: Model, seqs: number[][], firstSeq: number, spec: CaptureSpec, host?: LayerHost): Promise<BatchCapture> {
  const c = model.config;
  const s = performance.now();
  const o = forward(model, seqs, { capture: { xAttn: true, xMlp: true, mlpAct: true, headNorm: true, logits: false, layers: spec.layers } });
  try {
    const rows = seqs.length * spec.seqLen;
    const h: LayerHostSpec = { dtype: spec.dtype, mlpAct: spec.mlpAct, hidden: c.hidden, ffn: c.ffn, heads: c.heads, reluGated: c.gated && c.activation === 'relu', rows, firstSeq, nSeq: seqs.length };
    const pack = spec.pack ?? packsOnDevice();
    let readMs = 0;
    const read = (t: tf.Tensor | undefined) => t!.data() as Promise<Float32Array>;
    const floats = async (l: number): Promise<FloatReads> => {
      const [xa, xm, act, hn] = await Promise.all([read(o.captured.xAttn![l]), read(o.captured.xMlp![l]), read(o.captured.mlpAct![l]), read(o.captured.headNorm![l])]);
      return { layer: l, xa: xa!, xm: xm!, act: act!, hn: hn! };
    };
    const reads = pack ? gpuReads() : 'tfjs';
    const packOf = (l: number) => packLayer({ xa: o.captured.xAttn![l]!, xm: o.captured.xMlp![l]!, act: o.captured.mlpAct![l]!, hn: o.captured.headNorm![l]! }, packSpec(h));
    const packedOne = async (l: number): Promise<PackedReads> => {
      const p = packOf(l);
      try { return { layer: l, packed: (await p.data()) as Int32Array }; } finally { p.dispose(); }
    };
    // on webgpu every layer's packing is queued (behind the forward), then read in one mapping (gpu-pack.ts readPacked)
    let all: Promise<Int32Array[]> | null = null;
    if (pack && reads !== 'tfjs') {
      const ps = spec.layers.map(packOf);
      all = readPacked(ps, readbackThreads(), reads === 'mapped-js').finally(() => { for (const p of ps) p.dispose(); });
      all.catch(() => undefined); // awaited below
    }
    const packed = async (l: number, i: number): Promise<PackedReads> => all ? { layer: l, packed: (await all)[i]! } : packedOne(l);
    const layers = await Promise.all(spec.layers.map(async (l, i) => {
      const r: LayerReads = pack ? await packed(l, i) : await floats(l);
      readMs = Math.max(readMs, performance.now() - s);
      return (await (host ? host(r, h) : captureLayer(r, h))) ?? captureFloats(await floats(l), h);
    }));
    return { firstSeq, rows, layers, forwardMs: readMs, captureMs: performance.now() - s - readMs };
  } finally {
    disposeOutput(o);
  }
}
