/**
 * One collection batch: the dense forward pass over a fixed set of sequences and everything derived from it per
 * layer (float16 conversion, active-neuron bits, finiteness checks, the batch's partial statistics). The same
 * function runs in-process or in a worker thread, so a batch's bytes do not depend on where (or beside what) it ran.
 */
import { forward, disposeOutput } from '../model/forward.js';
import type { Model } from '../model/model.js';
import { UserError } from '../util/errors.js';
import { f32ToF16Array } from '../util/half.js';

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

export function captureBatch(model: Model, seqs: number[][], firstSeq: number, spec: CaptureSpec): BatchCapture {
  const c = model.config;
  let s = performance.now();
  const o = forward(model, seqs, { capture: { xAttn: true, xMlp: true, mlpAct: true, headNorm: true, logits: false, layers: spec.layers } });
  try {
    const forwardMs = performance.now() - s;
    s = performance.now();
    const rows = seqs.length * spec.seqLen;
    const layers: LayerCapture[] = [];
    for (const l of spec.layers) {
      const xa = o.captured.xAttn![l]!.dataSync() as Float32Array;
      const xm = o.captured.xMlp![l]!.dataSync() as Float32Array;
      const act = o.captured.mlpAct![l]!.dataSync() as Float32Array;
      const hn = o.captured.headNorm![l]!.dataSync() as Float32Array;
      for (const [name, arr] of [['x_attn', xa], ['x_mlp', xm], ['mlp_act', act], ['head_norm', hn]] as const) {
        for (let i = 0; i < arr.length; i++) {
          const v = arr[i]!;
          if (!Number.isFinite(v)) throw new UserError(`non-finite ${name} value (${v}) at layer ${l}, sequence ${firstSeq + Math.floor(i / (arr.length / seqs.length))}`, 'the checkpoint produces NaN/Inf on this data: check the weights and dtype');
          if (spec.dtype === 'float16' && name !== 'head_norm' && Math.abs(v) > 65504) throw new UserError(`${name} value ${v} at layer ${l} overflows float16`, 'use --dtype float32');
        }
      }
      const bits = new Uint8Array(Math.ceil((rows * c.ffn) / 8));
      let active = 0, absSum = 0;
      for (let i = 0; i < act.length; i++) { const a = act[i]!; if (a > 0) { bits[i >> 3]! |= 1 << (i & 7); active++; } absSum += Math.abs(a); }
      const headNormSum = new Array(c.heads).fill(0), headNormSq = new Array(c.heads).fill(0);
      for (let r = 0; r < rows; r++) for (let h = 0; h < c.heads; h++) { const v = hn[r * c.heads + h]!; headNormSum[h] += v; headNormSq[h] += v * v; }
      layers.push({
        layer: l,
        xAttn: spec.dtype === 'float16' ? f32ToF16Array(xa) : xa.slice(),
        xMlp: spec.dtype === 'float16' ? f32ToF16Array(xm) : xm.slice(),
        bits, headNorm: hn.slice(), active, absSum, headNormSum, headNormSq,
        ...(spec.mlpAct ? { mlpAct: f32ToF16Array(act) } : {}),
      });
    }
    return { firstSeq, rows, layers, forwardMs, captureMs: performance.now() - s };
  } finally {
    disposeOutput(o);
  }
}
