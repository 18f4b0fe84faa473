/**
 * One collection batch: the dense forward pass over a fixed set of sequences and everything derived from it per
 * layer (float16 conversion, active-neuron bits, finiteness checks, the batch's partial statistics). The same
 * function runs in-process or in a worker thread, so a batch's bytes do not depend on where (or beside what) it ran.
 */
import { forward, disposeOutput } from '../model/forward.js';
import type { Model } from '../model/model.js';
import { UserError } from '../util/errors.js';
import { f32ToF16Array } from '../util/half.js';
import { activationBits } from '../model/kernels/wasm/kernels.js';

export interface CaptureSpec { layers: number[]; seqLen: number; dtype: 'float16' | 'float32'; mlpAct: boolean }

export interface LayerCapture {
  layer: number;
  xAttn: Float32Array | Uint16Array;
  xMlp: Float32Array | Uint16Array;
  bits: Uint8Array;
  headNorm: Float32Array;
  mlpAct?: Uint16Array;
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

export function captureBatch(model: Model, seqs: number[][], firstSeq: number, spec: CaptureSpec): BatchCapture {
  const c = model.config;
  let s = performance.now();
  const o = forward(model, seqs, { capture: { xAttn: true, xMlp: true, mlpAct: true, headNorm: true, logits: false, layers: spec.layers } });
  try {
    const forwardMs = performance.now() - s;
    s = performance.now();
    const rows = seqs.length * spec.seqLen;
    const layers: LayerCapture[] = [];
    const f16 = spec.dtype === 'float16';
    for (const l of spec.layers) {
      const xa = o.captured.xAttn![l]!.dataSync() as Float32Array;
      const xm = o.captured.xMlp![l]!.dataSync() as Float32Array;
      const act = o.captured.mlpAct![l]!.dataSync() as Float32Array;
      const hn = o.captured.headNorm![l]!.dataSync() as Float32Array;
      // one fast pass per array: non-finite values (and float16 overflow) are seen by the largest |v|'s bits, the
      // activations' bits and statistics in one loop; any problem reruns the per-value checks for their message
      const bits = new Uint8Array(Math.ceil((rows * c.ffn) / 8));
      // active = nonzero: a gated ReLU's relu(gate) * up is negative where up is (its |act| marks the same zeros)
      const { active, absSum, maxAbs: actMax } = activationBits(c.gated && c.activation === 'relu' ? act.map(Math.abs) : act, bits);
      const headNormSum = new Array(c.heads).fill(0), headNormSq = new Array(c.heads).fill(0);
      for (let r = 0; r < rows; r++) for (let h = 0; h < c.heads; h++) { const v = hn[r * c.heads + h]!; headNormSum[h] += v; headNormSq[h] += v * v; }
      const limit = f16 ? F16_MAX_BITS : INF_BITS - 1;
      // NaN anywhere in act makes absSum NaN; +-Inf makes it Inf
      if (maxAbsBits(xa) > limit || maxAbsBits(xm) > limit || !Number.isFinite(absSum) || (f16 && actMax > 65504) || maxAbsBits(hn) >= INF_BITS)
        checkValues([['x_attn', xa], ['x_mlp', xm], ['mlp_act', act], ['head_norm', hn]], l, firstSeq, seqs.length, spec.dtype);
      layers.push({
        layer: l,
        xAttn: f16 ? f32ToF16Array(xa) : xa.slice(),
        xMlp: f16 ? f32ToF16Array(xm) : xm.slice(),
        bits, headNorm: hn.slice(), active, absSum, headNormSum, headNormSq,
        ...(spec.mlpAct ? { mlpAct: f32ToF16Array(act) } : {}),
      });
    }
    return { firstSeq, rows, layers, forwardMs, captureMs: performance.now() - s };
  } finally {
    disposeOutput(o);
  }
}
