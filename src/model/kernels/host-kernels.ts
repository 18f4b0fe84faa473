/**
 * Sparse decode kernels on the host (plain Float32Array loops). tfjs-wasm's GatherV2 moves ~17M floats/s, so
 * gathering 10% of an OPT-1.3B MLP's rows costs more than the whole dense matvec; reading the selected rows in
 * place costs only what is selected. Used for one token per row (decode) when the model keeps host copies.
 *
 * Layouts (row = one neuron / one output channel, contiguous):
 *   up, gate: [F, d]  (HF fc1 / up_proj / gate_proj)     down: [F, d]  (fc2 / down_proj transposed)
 *   q: [H*hd, d]      (HF q_proj)                        o: [H*hd, d]  (out_proj / o_proj transposed)
 */

import { wasmGatherAxpy, wasmGatherMatVec, type WasmRows } from './wasm/kernels.js';

/** A row-major weight matrix on the host, optionally mirrored in the SIMD arena. */
export type Rows = Float32Array & { wasm?: WasmRows | null };

/** out[i] = dot(W[rows[i]], x) (+ bias[rows[i]]) */
export function gatherMatVec(W: Rows, rows: Int32Array, x: Float32Array, out: Float32Array, bias?: Float32Array): void {
  if (W.wasm) {
    wasmGatherMatVec(W.wasm, rows, x, out);
    if (bias) for (let i = 0; i < rows.length; i++) out[i]! += bias[rows[i]!]!;
    return;
  }
  const d = x.length;
  const d4 = d - (d % 4);
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i]!;
    const o = r * d;
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    let j = 0;
    for (; j < d4; j += 4) { s0 += W[o + j]! * x[j]!; s1 += W[o + j + 1]! * x[j + 1]!; s2 += W[o + j + 2]! * x[j + 2]!; s3 += W[o + j + 3]! * x[j + 3]!; }
    for (; j < d; j++) s0 += W[o + j]! * x[j]!;
    out[i] = s0 + s1 + s2 + s3 + (bias ? bias[r]! : 0);
  }
}

/** out += sum_i a[i] * W[rows[i]]; rows whose coefficient is exactly 0 (ReLU) are skipped */
export function gatherAxpy(W: Rows, rows: Int32Array, a: Float32Array, out: Float32Array): void {
  if (W.wasm) { wasmGatherAxpy(W.wasm, rows, a, out); return; }
  const d = out.length;
  for (let i = 0; i < rows.length; i++) {
    const ai = a[i]!;
    if (ai === 0) continue;
    const o = rows[i]! * d;
    for (let j = 0; j < d; j++) out[j]! += ai * W[o + j]!;
  }
}

export interface HostMlp { up: Rows; gate?: Rows; down: Rows; upBias?: Float32Array; gateBias?: Float32Array; downBias?: Float32Array; activation: 'relu' | 'swiglu' }

/** one token, activations of the selected neurons already known (the lossless ReLU mode): y [d] = down rows only */
export function sparseDown(m: HostMlp, idx: Int32Array, act: Float32Array, d: number): Float32Array {
  const y = m.downBias ? Float32Array.from(m.downBias) : new Float32Array(d);
  gatherAxpy(m.down, idx, act, y);
  return y;
}

/** one token: y [d] = down(act(x)) over the selected neurons only */
export function sparseMlp(m: HostMlp, idx: Int32Array, x: Float32Array): Float32Array {
  const k = idx.length;
  const a = new Float32Array(k);
  gatherMatVec(m.up, idx, x, a, m.upBias);
  if (m.activation === 'relu') { for (let i = 0; i < k; i++) if (a[i]! < 0) a[i] = 0; }
  else {
    const g = new Float32Array(k);
    gatherMatVec(m.gate!, idx, x, g, m.gateBias);
    for (let i = 0; i < k; i++) { const gi = g[i]!; a[i] = (gi / (1 + Math.exp(-gi))) * a[i]!; }
  }
  const y = m.downBias ? Float32Array.from(m.downBias) : new Float32Array(x.length);
  gatherAxpy(m.down, idx, a, y);
  return y;
}

export interface HostAttn { q: Rows; qBias?: Float32Array; o: Rows; oBias?: Float32Array; heads: number; kvHeads: number; headDim: number }

/**
 * one token, selected heads only: q_h = Wq_h x; softmax(q_h K_h^T / sqrt(hd)) V_h over the cached keys; y = sum_h Wo_h ctx_h.
 * k/v: the layer's cache for this row [KV, S, hd] (keys already rotated); keyMask [S]; rope(q, head) rotates q in place.
 */
export function sparseAttention(a: HostAttn, heads: Int32Array, x: Float32Array, k: Float32Array, v: Float32Array, S: number, keyMask: number[],
  rope: ((q: Float32Array) => void) | null, d: number): Float32Array {
  const hd = a.headDim, rep = a.heads / a.kvHeads, scale = 1 / Math.sqrt(hd);
  const y = a.oBias ? Float32Array.from(a.oBias) : new Float32Array(d);
  const rows = new Int32Array(hd);
  const q = new Float32Array(hd), ctx = new Float32Array(hd), p = new Float32Array(S);
  for (const h of heads) {
    for (let j = 0; j < hd; j++) rows[j] = h * hd + j;
    gatherMatVec(a.q, rows, x, q, a.qBias);
    rope?.(q);
    const kv = Math.floor(h / rep) * S * hd;
    let mx = -Infinity;
    for (let s = 0; s < S; s++) {
      if (!keyMask[s]) { p[s] = -Infinity; continue; }
      let dot = 0;
      for (let j = 0; j < hd; j++) dot += q[j]! * k[kv + s * hd + j]!;
      p[s] = dot * scale;
      if (p[s]! > mx) mx = p[s]!;
    }
    let sum = 0;
    for (let s = 0; s < S; s++) { const e = keyMask[s] ? Math.exp(p[s]! - mx) : 0; p[s] = e; sum += e; }
    ctx.fill(0);
    for (let s = 0; s < S; s++) { const w = p[s]! / sum; if (w === 0) continue; for (let j = 0; j < hd; j++) ctx[j]! += w * v[kv + s * hd + j]!; }
    gatherAxpy(a.o, rows, ctx, y);
  }
  return y;
}
