/**
 * The GPU decode runtime (src/runtime/gpu) on whatever WebGPU adapter this machine has (CI: Mesa lavapipe, a CPU
 * Vulkan device): every kernel against a float64 reference on the host, then whole sessions against the CPU runtime
 * (DecodeSession) and the forward pass on the float16 fixtures (float16 weights: the GPU copy is exact).
 * Skipped, with the reason, only when no adapter (or no `webgpu` package) is there.
 */
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { loadModel, type Model } from '../src/model/model.js';
import { forward, newCache, disposeCache, disposeOutput } from '../src/model/forward.js';
import { DecodeSession, denseModes, sessionFromPrefill, type DecodeModes, type HeadStep, type LayerInputs, type MlpStep } from '../src/runtime/decoder.js';
import { generate } from '../src/runtime/generate.js';
import { runGenerate } from '../src/stages/generate.js';
import { generateSchema } from '../src/config/schemas.js';
import { decodeModes, type RuntimePlan } from '../src/runtime/plan.js';
import { topKRow } from '../src/predictors/metrics.js';
import type { HostPredictor } from '../src/predictors/predictor.js';
import type { LoadedPredictors, LoadedSite } from '../src/predictors/hooks.js';
import type { PredictorEntry } from '../src/predictors/store.js';
import { generateGpu } from '../src/runtime/gpu/generate.js';
import { closeGpu, getGpu, type Gpu } from '../src/runtime/gpu/device.js';
import * as K from '../src/runtime/gpu/kernels.js';
import { GpuDecodeSession, gpuDenseModes, gpuModesOf, gpuPlanModes, gpuSession, type GpuModes } from '../src/runtime/gpu/session.js';
import { gpuBuffer, gpuEmpty, gpuUnsupported, packF16 } from '../src/runtime/gpu/weights.js';
import { UserError } from '../src/util/errors.js';

const ROOT = path.join(import.meta.dirname, '..');
let gpu: Gpu | null = null;
let why = '';
try { gpu = await getGpu(); } catch (e) { why = (e as Error).message; }
if (!gpu) console.warn(`test/gpu-decode: skipped: ${why}`);
afterAll(() => closeGpu());

/** deterministic values in [-1, 1) that float16 holds exactly (so W on the GPU is W on the host) */
function vals(n: number, seed: number, q = 256): Float32Array {
  let s = seed >>> 0 || 1;
  return Float32Array.from({ length: n }, () => { s = (s * 1103515245 + 12345) >>> 0; return Math.floor(((s >>> 8) / 2 ** 24) * 2 * q - q) / q; });
}

type In = Float32Array | Uint32Array | number; // data, or the bytes of an output
/** run one dispatch of `code`; returns every binding's contents afterwards (float32 view) */
async function run(code: string, bind: Record<number, In>, x: number, y = 1): Promise<Record<number, Float32Array>> {
  const dev = gpu!.device;
  const bufs: Record<number, GPUBuffer> = {};
  for (const [k, v] of Object.entries(bind)) bufs[Number(k)] = typeof v === 'number' ? gpuEmpty(gpu!, v, `b${k}`) : gpuBuffer(gpu!, v, `b${k}`);
  // params: a storage buffer (greedy's argmax advances it), returned as out[PARAMS_OUT]
  const ub = /@binding\((\d+)\) var<storage(?:, read(?:_write)?)?> params/.exec(code);
  const uni = ub ? gpuEmpty(gpu!, 16, 'params') : null;
  const p = dev.createComputePipeline({ layout: 'auto', compute: { module: dev.createShaderModule({ code }), entryPoint: 'main' } });
  const entries = Object.entries(bufs).map(([k, b]) => ({ binding: Number(k), resource: { buffer: b } }));
  if (uni && ub) { entries.push({ binding: Number(ub[1]), resource: { buffer: uni } }); dev.queue.writeBuffer(uni, 0, params); bufs[PARAMS_OUT] = uni; }
  const enc = dev.createCommandEncoder(), pass = enc.beginComputePass();
  pass.setPipeline(p); pass.setBindGroup(0, dev.createBindGroup({ layout: p.getBindGroupLayout(0), entries })); pass.dispatchWorkgroups(x, y); pass.end();
  const st: Record<number, GPUBuffer> = {};
  for (const [k, b] of Object.entries(bufs)) {
    st[Number(k)] = dev.createBuffer({ size: b.size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    enc.copyBufferToBuffer(b, 0, st[Number(k)]!, 0, b.size);
  }
  dev.queue.submit([enc.finish()]);
  const out: Record<number, Float32Array> = {};
  for (const [k, s] of Object.entries(st)) { await s.mapAsync(GPUMapMode.READ); out[Number(k)] = new Float32Array(s.getMappedRange().slice(0)); s.unmap(); s.destroy(); }
  for (const b of Object.values(bufs)) b.destroy();
  uni?.destroy();
  expect(gpu!.error).toBeNull();
  return out;
}
let params = new Uint32Array(4);
const PARAMS_OUT = 99;
const u32 = (x: Float32Array) => new Uint32Array(x.buffer, x.byteOffset, x.length);
function close(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string): void {
  expect(a.length, what).toBeGreaterThanOrEqual(b.length);
  let worst = 0;
  for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / (1 + Math.abs(b[i]!)));
  expect(worst, what).toBeLessThan(tol);
}
const MV = { bias: false, gated: false, gateBias: false, act: null, actThreshold: 0, resid: false, zero: false } as const;

describe.skipIf(!gpu)('GPU kernels vs a float64 reference', () => {
  const n = 40, d = 48;
  const W = vals(n * d, 1), W2 = vals(n * d, 2), x = vals(d, 3), bias = vals(n, 4), bias2 = vals(n, 5);
  const dotRow = (M: Float32Array, r: number, v: ArrayLike<number>, cols = d) => { let s = 0; for (let j = 0; j < cols; j++) s += M[r * cols + j]! * v[j]!; return s; };

  it('matvec: every row; gathered rows in groups (count less `sub` groups), bias + ReLU; gated SiLU; zeroes the counter', async () => {
    let o = await run(K.matvecWgsl({ ...MV, cols: d, rows: n }), { 0: packF16(W), 1: x, 2: 4 * n }, Math.ceil(n / 8));
    close(o[2]!, Array.from({ length: n }, (_, r) => dotRow(W, r, x)), 1e-5, 'dense');
    // groups of 4 rows: groups 7, 2, 9 selected, the last (9) one of `sub` groups not counted
    const sel = Uint32Array.from([3, 7, 2, 9]);
    o = await run(K.matvecWgsl({ ...MV, cols: d, rows: n, rowGather: { G: 4, sub: 1 }, bias: true, act: 'relu' }), { 0: packF16(W), 1: x, 2: new Float32Array(12).fill(-7), 3: sel, 4: bias }, 2);
    const rows = [28, 29, 30, 31, 8, 9, 10, 11];
    close(o[2]!, rows.map((r) => Math.max(0, dotRow(W, r, x) + bias[r]!)), 1e-5, 'gathered');
    expect(Array.from(o[2]!.slice(8, 12))).toEqual([-7, -7, -7, -7]); // the `sub` group is not written
    const silu = (v: number) => v / (1 + Math.exp(-v));
    o = await run(K.matvecWgsl({ ...MV, cols: d, rows: n, gated: true, bias: true, gateBias: true, act: 'silu', zero: true }),
      { 0: packF16(W), 1: x, 2: 4 * n, 4: bias, 5: packF16(W2), 6: bias2, 7: Uint32Array.from([99, 5]) }, Math.ceil(n / 8));
    close(o[2]!, Array.from({ length: n }, (_, r) => silu(dotRow(W2, r, x) + bias2[r]!) * (dotRow(W, r, x) + bias[r]!)), 1e-5, 'gated');
    expect(Array.from(u32(o[7]!).slice(0, 2))).toEqual([0, 5]);
  });

  it('matvec over gathered column groups (the selected heads of o) adds into the residual in place', async () => {
    const hd = 8, H = 6, cols = H * hd, rows = 16;
    const Wo = vals(rows * cols, 6), heads = [4, 1], ctx = vals(heads.length * hd, 7), resid = vals(rows, 8);
    const o = await run(K.matvecWgsl({ ...MV, cols, rows, colGather: { G: hd, sub: 2 }, resid: true, bias: true }),
      { 0: packF16(Wo), 1: ctx, 2: resid, 3: Uint32Array.from([heads.length + 2, ...heads, 6, 7]), 4: bias }, rows / 8);
    const ref = Array.from({ length: rows }, (_, r) => resid[r]! + bias[r]! + heads.reduce((a, h, t) => a + dotRow(Wo.subarray(r * cols + h * hd), 0, ctx.subarray(t * hd), hd), 0));
    close(o[2]!, ref, 1e-5, 'o');
  });

  it('split-K axpy (every row; gathered rows with coefficients) and the chunk sum into the residual', async () => {
    const chunks = 3;
    const a = vals(n, 9), ref = (ids: number[], coef: ArrayLike<number>) => Array.from({ length: d }, (_, j) => ids.reduce((s, r, i) => s + coef[i]! * W[r * d + j]!, 0));
    let o = await run(K.axpyWgsl({ cols: d, rows: n, chunks, gather: false }), { 0: packF16(W), 1: a, 2: 4 * chunks * d }, 1, chunks);
    const sum = (p: Float32Array) => Array.from({ length: d }, (_, j) => p[j]! + p[d + j]! + p[2 * d + j]!);
    close(sum(o[2]!), ref(Array.from({ length: n }, (_, i) => i), a), 1e-5, 'dense');
    const ids = [33, 4, 17, 0, 39];
    o = await run(K.axpyWgsl({ cols: d, rows: n, chunks, gather: true }), { 0: packF16(W), 1: a, 2: 4 * chunks * d, 3: Uint32Array.from([ids.length, ...ids]) }, 1, chunks);
    const part = o[2]!;
    close(sum(part), ref(ids, a), 1e-5, 'gathered');
    const xr = vals(d, 10), b = vals(d, 11);
    o = await run(K.reduceWgsl(d, chunks, true), { 0: xr, 1: part, 2: b }, Math.ceil(d / 32));
    close(o[0]!, sum(part).map((s, j) => xr[j]! + b[j]! + s), 1e-6, 'reduce');
  });

  it('matvec with the norm fused in (LayerNorm + b, RMSNorm; workgroup 0 writes the normed x); lossless compaction in the matvec', async () => {
    const xs = vals(d, 30).map((v) => 3 * v + 0.7), g = vals(d, 31), nb = vals(d, 32);
    const mean = xs.reduce((a, t) => a + t, 0) / d, va = xs.reduce((a, t) => a + (t - mean) ** 2, 0) / d, ms = xs.reduce((a, t) => a + t * t, 0) / d;
    const ln = Array.from(xs, (t, j) => ((t - mean) / Math.sqrt(va + 1e-5)) * g[j]! + nb[j]!), rms = Array.from(xs, (t, j) => (t / Math.sqrt(ms + 1e-6)) * g[j]!);
    let o = await run(K.matvecWgsl({ ...MV, cols: d, rows: n, norm: { kind: 'layernorm', eps: 1e-5, hasB: true, out: true } }), { 0: packF16(W), 1: xs, 2: 4 * n, 8: g, 9: nb, 10: 4 * d }, Math.ceil(n / 8));
    close(o[2]!, Array.from({ length: n }, (_, r) => dotRow(W, r, ln)), 1e-5, 'layernorm fused');
    close(o[10]!, ln, 1e-5, 'normed x written');
    o = await run(K.matvecWgsl({ ...MV, cols: d, rows: n, bias: true, act: 'relu', norm: { kind: 'rmsnorm', eps: 1e-6, hasB: false, out: false } }), { 0: packF16(W), 1: xs, 2: 4 * n, 4: bias, 8: g }, Math.ceil(n / 8));
    const ref = Array.from({ length: n }, (_, r) => Math.max(0, dotRow(W, r, rms) + bias[r]!));
    close(o[2]!, ref, 1e-5, 'rmsnorm fused + relu');
    // the same with the nonzero activations compacted (ids after the count in zc, values in coef, the count added to stats)
    o = await run(K.matvecWgsl({ ...MV, cols: d, rows: n, bias: true, act: 'relu', compact: true, norm: { kind: 'rmsnorm', eps: 1e-6, hasB: false, out: false } }),
      { 0: packF16(W), 1: xs, 2: 4 * n, 4: bias, 7: new Uint32Array(n + 4), 8: g, 11: 4 * n, 12: Uint32Array.from([3, 0, 0, 0]) }, Math.ceil(n / 8));
    const nz = ref.flatMap((v, i) => (v !== 0 ? [i] : []));
    expect(nz.length).toBeGreaterThan(5); expect(nz.length).toBeLessThan(n - 5);
    const zc = u32(o[7]!), k = zc[0]!;
    expect(k).toBe(nz.length);
    expect(u32(o[12]!)[0]).toBe(3 + nz.length);
    const got = Array.from(zc.subarray(1, 1 + k)).map((id, i) => [id, o[11]![i]!] as const).sort((p, q) => p[0] - q[0]);
    expect(got.map((t) => t[0])).toEqual(nz);
    close(got.map((t) => t[1]), nz.map((i) => ref[i]!), 1e-5, 'compacted values');
  });

  it('matvec with the norm fused in over rows of more than 128 units (each lane\'s first 4 loaded before the norm): float16 gated, float32', async () => {
    const cols = 1056, rows = 20, xs = vals(cols, 33).map((v) => 2 * v - 0.4), g = vals(cols, 34), nb = vals(cols, 35);
    const A = vals(rows * cols, 36), B = vals(rows * cols, 37), ba = vals(rows, 38), bb = vals(rows, 39);
    const mean = xs.reduce((a, t) => a + t, 0) / cols, va = xs.reduce((a, t) => a + (t - mean) ** 2, 0) / cols;
    const ln = Array.from(xs, (t, j) => ((t - mean) / Math.sqrt(va + 1e-5)) * g[j]! + nb[j]!);
    const silu = (v: number) => v / (1 + Math.exp(-v));
    const nm = { kind: 'layernorm', eps: 1e-5, hasB: true, out: false } as const;
    let o = await run(K.matvecWgsl({ ...MV, cols, rows, gated: true, bias: true, gateBias: true, act: 'silu', norm: nm }),
      { 0: packF16(A), 1: xs, 2: 4 * rows, 4: ba, 5: packF16(B), 6: bb, 8: g, 9: nb }, Math.ceil(rows / 8));
    close(o[2]!, Array.from({ length: rows }, (_, r) => silu(dotRow(B, r, ln, cols) + bb[r]!) * (dotRow(A, r, ln, cols) + ba[r]!)), 1e-5, 'gated, 132 units a row');
    // float32 weights (a predictor's fc1 of h_mlp): 264 units of 4 a row
    o = await run(K.matvecWgsl({ ...MV, cols, rows, f32: true, bias: true, act: 'relu', norm: nm }), { 0: A, 1: xs, 2: 4 * rows, 4: ba, 8: g, 9: nb }, Math.ceil(rows / 8));
    close(o[2]!, Array.from({ length: rows }, (_, r) => Math.max(0, dotRow(A, r, ln, cols) + ba[r]!)), 1e-5, 'float32, 264 units a row');
    // two rows per 32 lanes (16 a workgroup): 20 rows = a full workgroup and one of 4 (its second rows past the count)
    o = await run(K.matvecWgsl({ ...MV, cols, rows, bias: true, act: 'relu', norm: nm, pair: true }), { 0: packF16(A), 1: xs, 2: 4 * rows, 4: ba, 8: g, 9: nb }, Math.ceil(rows / 16));
    close(o[2]!, Array.from({ length: rows }, (_, r) => Math.max(0, dotRow(A, r, ln, cols) + ba[r]!)), 1e-5, 'pair rows, norm fused');
    // gathered groups of 4 rows (ids 4, 0, 2; the last group not counted), added into the residual, unnormed x
    const sel = Uint32Array.from([4, 4, 0, 2, 1]), rs = vals(rows, 51), ids = [16, 17, 18, 19, 0, 1, 2, 3, 8, 9, 10, 11];
    o = await run(K.matvecWgsl({ ...MV, cols, rows, rowGather: { G: 4, sub: 1 }, resid: true, pair: true }), { 0: packF16(A), 1: xs, 2: rs, 3: sel }, 1);
    const want = Array.from(rs);
    for (const r of ids) want[r] = rs[r]! + dotRow(A, r, xs, cols);
    close(o[2]!, want, 1e-5, 'pair rows, gathered, into the residual');
    expect(() => K.matvecWgsl({ ...MV, cols, rows, gated: true, pair: true })).toThrow(/pair rows/);
  });

  it('the MLP over selected neurons in one dispatch (norm fused; gated; chunks of 1-9 rows, empty ones) == a float64 reference and == matvec + axpy bit for bit', async () => {
    const silu = (v: number) => v / (1 + Math.exp(-v));
    // widths: 6 units a row (fewer than the 32 lanes), 132 (past the 4 loaded before the norm), 264 (two down units a thread, the second partial)
    for (const [cols, F, gated] of [[48, 40, false], [1056, 60, true], [2112, 30, false]] as const) {
      const xs = vals(cols, 60 + cols).map((v) => 2 * v + 0.3), g = vals(cols, 61), nb = vals(cols, 62);
      const A = vals(F * cols, 63), B = vals(F * cols, 64), D = vals(F * cols, 65), ba = vals(F, 66), bb = vals(F, 67);
      const mean = xs.reduce((a, t) => a + t, 0) / cols, va = xs.reduce((a, t) => a + (t - mean) ** 2, 0) / cols;
      const ln = Array.from(xs, (t, j) => ((t - mean) / Math.sqrt(va + 1e-5)) * g[j]! + nb[j]!);
      const actOf = (r: number) => (gated ? silu(dotRow(B, r, ln, cols) + bb[r]!) * (dotRow(A, r, ln, cols) + ba[r]!) : Math.max(0, dotRow(A, r, ln, cols) + ba[r]!));
      const ids = Array.from({ length: F }, (_, i) => i).filter((i) => (i * 7) % 3 !== 1).reverse().slice(0, 19).sort((p, q) => p - q);
      const sel = Uint32Array.from([ids.length, ...ids]);
      const nm = { kind: 'layernorm', eps: 1e-5, hasB: true } as const;
      const spec = { cols, rows: F, bias: true, gated, gateBias: gated, act: gated ? 'silu' as const : 'relu' as const, actThreshold: 0, norm: nm };
      const bind = (chunks: number, down = true): Record<number, In> => {
        const r: Record<number, In> = { 0: packF16(A), 1: xs, 2: 4 * chunks * cols, 3: sel, 4: ba, 8: g, 9: nb };
        if (gated) { r[5] = packF16(B); r[6] = bb; }
        if (down) r[13] = packF16(D);
        return r;
      };
      // 19 neurons: in 3 chunks of 7 (one pass of 8 rows), 2 of 10 (two passes), 25 (19 of 1, 6 empty); the wider rows in 2
      for (const chunks of cols === 48 ? [3, 2, 25] : [2]) {
        const o = await run(K.mlpSelWgsl({ ...spec, chunks }), bind(chunks), chunks);
        const per = Math.ceil(ids.length / chunks);
        for (let c = 0; c < chunks; c++) {
          const mine = ids.slice(c * per, (c + 1) * per);
          const want = Array.from({ length: cols }, (_, j) => mine.reduce((t, r) => t + actOf(r) * D[r * cols + j]!, 0));
          close(o[2]!.subarray(c * cols, (c + 1) * cols), want, 1e-4, `${cols} cols, chunk ${c} of ${chunks}`);
        }
        // the up matvec (norm fused, gathered rows) then the split-K axpy over its outputs: the same bits
        const up = await run(K.matvecWgsl({ ...MV, ...spec, norm: { ...nm, out: false }, rowGather: { G: 1, sub: 0 } }), { ...bind(chunks, false), 2: 4 * F }, Math.ceil(ids.length / 8));
        const ax = await run(K.axpyWgsl({ cols, rows: F, chunks, gather: true }), { 0: packF16(D), 1: up[2]!, 2: 4 * chunks * cols, 3: sel }, Math.ceil(cols / 8 / 256), chunks);
        expect(Array.from(u32(o[2]!)), `${cols} cols, ${chunks} chunks: the two dispatches' bits`).toEqual(Array.from(u32(ax[2]!)));
      }
    }
    // lossless in one dispatch (every neuron, the zero activations' down rows not read, the nonzero ones counted) == the
    // dense up matvec and split-K axpy over every row, bit for bit; a fatReLU threshold makes more zeros
    const cols = 1056, F = 60, xs = vals(cols, 70).map((v) => 2 * v + 0.3), g = vals(cols, 71), nb = vals(cols, 72);
    const A = vals(F * cols, 73), D = vals(F * cols, 74), ba = vals(F, 75), nm = { kind: 'layernorm', eps: 1e-5, hasB: true } as const;
    for (const [act, th] of [['relu', 0], ['fatrelu', 0.5]] as const) {
      const spec = { cols, rows: F, chunks: 4, bias: true, gated: false, gateBias: false, act, actThreshold: th, norm: nm, every: true, skipZero: true };
      const o = await run(K.mlpSelWgsl(spec), { 0: packF16(A), 1: xs, 2: 4 * 4 * cols, 4: ba, 8: g, 9: nb, 12: Uint32Array.from([7, 0, 0, 0]), 13: packF16(D) }, 4);
      const upSpec = { ...MV, cols, rows: F, bias: true, act, actThreshold: th, norm: { ...nm, out: false } };
      const up = await run(K.matvecWgsl(upSpec), { 0: packF16(A), 1: xs, 2: 4 * F, 4: ba, 8: g, 9: nb }, Math.ceil(F / 8));
      const nz = Array.from(up[2]!).filter((v) => v !== 0).length;
      expect(nz, act).toBeGreaterThan(5); expect(nz, act).toBeLessThan(F - 5);
      expect(u32(o[12]!)[0], `${act}: the nonzero count added`).toBe(7 + nz);
      const ax = await run(K.axpyWgsl({ cols, rows: F, chunks: 4, gather: false }), { 0: packF16(D), 1: up[2]!, 2: 4 * 4 * cols }, Math.ceil(cols / 8 / 256), 4);
      expect(Array.from(u32(o[2]!)).map((b) => (b === 0x80000000 ? 0 : b)), `${act}: dense's bits`).toEqual(Array.from(u32(ax[2]!)).map((b) => (b === 0x80000000 ? 0 : b)));
    }
    expect(() => K.mlpSelWgsl({ cols: 48, rows: 40, chunks: 2, bias: false, gated: false, gateBias: false, act: 'relu', actThreshold: 0, skipZero: true })).toThrow(/skipZero/);
  });

  it('input-sparse axpy: kept rows only (abs / WINA scores, gathered rows, the norm fused in, the chunks of an earlier axpy + act), counted', async () => {
    const rows = 40, cols = 16, chunks = 3, M = vals(rows * cols, 40), nrm = vals(rows, 41).map((v) => 1 + Math.abs(v));
    const sum = (p: Float32Array, ch = chunks) => Array.from({ length: cols }, (_, j) => { let t = 0; for (let c = 0; c < ch; c++) t += p[c * cols + j]!; return t; });
    const ref = (v: ArrayLike<number>, ids: ArrayLike<number>, keep: (v: number, id: number) => boolean) => {
      const out = new Float64Array(cols);
      let kept = 0;
      for (let i = 0; i < v.length; i++) { if (v[i] === 0 || !keep(v[i]!, ids[i]!)) continue; kept++; for (let j = 0; j < cols; j++) out[j]! += v[i]! * M[ids[i]! * cols + j]!; }
      return { out: Array.from(out), kept };
    };
    const iota = Array.from({ length: rows }, (_, i) => i);
    const a = vals(rows, 42); a[5] = 0;
    const thr = Float32Array.from([0, 0.3, 0.45, 0]);
    const spec = { cols, rows, chunks, skip: { slot: 1, wina: false }, count: 2 } as const;
    // abs scores: |a_i| >= 0.3
    let o = await run(K.axpySiteWgsl({ ...spec, input: { kind: 'x' } }), { 0: packF16(M), 1: a, 2: 4 * chunks * cols, 7: Uint32Array.from([0, 0, 7, 0]), 9: thr }, 1, chunks);
    let r = ref(a, iota, (v) => Math.abs(v) >= 0.3);
    expect(r.kept).toBeGreaterThan(5); expect(r.kept).toBeLessThan(rows - 5);
    close(sum(o[2]!), r.out, 1e-5, 'abs');
    expect(u32(o[7]!)[2]).toBe(7 + r.kept);
    // gathered rows, WINA scores |a_i| * nrm[row] >= 0.45
    const ids = [33, 4, 17, 0, 39, 21, 8, 12], ag = vals(ids.length, 43);
    o = await run(K.axpySiteWgsl({ ...spec, rows: ids.length, input: { kind: 'gather' }, skip: { slot: 2, wina: true } }),
      { 0: packF16(M), 1: ag, 2: 4 * chunks * cols, 3: Uint32Array.from([ids.length, ...ids]), 4: nrm, 7: 16, 9: thr }, 1, chunks);
    r = ref(ag, ids, (v, id) => Math.abs(v) * nrm[id]! >= 0.45);
    expect(r.kept).toBeGreaterThan(1); expect(r.kept).toBeLessThan(ids.length);
    close(sum(o[2]!), r.out, 1e-5, 'gather wina');
    expect(u32(o[7]!)[2]).toBe(r.kept);
    // the LayerNorm of x fused in, then |xn_i| >= 0.3
    const xs = vals(rows, 44).map((v) => 2 * v + 0.4), g = vals(rows, 45), b = vals(rows, 46);
    const mean = xs.reduce((p, t) => p + t, 0) / rows, va = xs.reduce((p, t) => p + (t - mean) ** 2, 0) / rows;
    const xn = Array.from(xs, (t, j) => ((t - mean) / Math.sqrt(va + 1e-5)) * g[j]! + b[j]!);
    o = await run(K.axpySiteWgsl({ ...spec, input: { kind: 'norm', norm: 'layernorm', eps: 1e-5, hasB: true }, count: null }), { 0: packF16(M), 1: xs, 2: 4 * chunks * cols, 5: g, 6: b, 9: thr }, 1, chunks);
    r = ref(xn, iota, (v) => Math.abs(v) >= 0.3);
    close(sum(o[2]!), r.out, 1e-5, 'norm');
    // the input from 2 chunks of partial sums + bias, ReLU, every nonzero kept (no skip)
    const pin = vals(2 * rows, 47), pb = vals(rows, 48);
    const av = Array.from({ length: rows }, (_, i) => Math.max(0, pb[i]! + pin[i]! + pin[rows + i]!));
    o = await run(K.axpySiteWgsl({ ...spec, skip: null, count: 0, input: { kind: 'parts', chunks: 2, bias: true, act: 'relu', actThreshold: 0 } }),
      { 0: packF16(M), 2: 4 * chunks * cols, 5: pb, 7: 16, 8: pin }, 1, chunks);
    r = ref(av, iota, () => true);
    close(sum(o[2]!), r.out, 1e-5, 'parts');
    expect(u32(o[7]!)[0]).toBe(rows); // no skip: every row read
  });

  it('the sum of an input-sparse axpy\'s chunks (+ bias, act): fc2\'s input computed once', async () => {
    const n = 1032, chunks = 37, pin = vals(chunks * n, 61), pb = vals(n, 62); // 1032 / 4 = 258 columns: 33 workgroups, the last partial
    const pre = Array.from({ length: n }, (_, i) => { let t = pb[i]!; for (let c = 0; c < chunks; c++) t += pin[c * n + i]!; return t; });
    let o = await run(K.sumPartsWgsl(n, chunks, true, 'relu', 0), { 0: 4 * n, 1: pin, 2: pb }, Math.ceil(n / 32));
    close(o[0]!, pre.map((t) => Math.max(0, t)), 1e-5, 'sum relu');
    expect(o[0]!.some((t) => t === 0) && o[0]!.some((t) => t > 0)).toBe(true);
    o = await run(K.sumPartsWgsl(n, chunks, false, null, 0), { 0: 4 * n, 1: pin }, Math.ceil(n / 32));
    close(o[0]!, pre.map((t, i) => t - pb[i]!), 1e-5, 'sum, no bias, no act');
  });

  it('transpose of float16 rows; row norms', async () => {
    const rows = 6, cols = 10, M = vals(rows * cols, 50);
    const o = await run(K.transposeWgsl(rows, cols), { 0: packF16(M), 1: rows * cols * 2 }, 1);
    const T = new Uint16Array(u32(o[1]!).buffer, 0, rows * cols), src = new Uint16Array(packF16(M).buffer);
    expect(Array.from({ length: rows * cols }, (_, t) => T[t])).toEqual(Array.from({ length: rows * cols }, (_, t) => src[(t % rows) * cols + Math.floor(t / rows)]));
    const nr = await run(K.rowNormWgsl(rows, cols), { 0: packF16(M), 1: 4 * rows }, rows);
    close(nr[1]!, Array.from({ length: rows }, (_, r) => Math.hypot(...M.subarray(r * cols, (r + 1) * cols))), 1e-6, 'row norms');
  });

  it('LayerNorm and RMSNorm; the embedding row (scaled) plus its learned position', async () => {
    const v = vals(300, 12), g = vals(300, 13), b = vals(300, 14);
    const mean = v.reduce((s, t) => s + t, 0) / 300, va = v.reduce((s, t) => s + (t - mean) ** 2, 0) / 300, ms = v.reduce((s, t) => s + t * t, 0) / 300;
    let o = await run(K.normWgsl(300, 'layernorm', 1e-5, true), { 0: v, 1: 1200, 2: g, 3: b }, 1);
    close(o[1]!, Array.from(v, (t, j) => ((t - mean) / Math.sqrt(va + 1e-5)) * g[j]! + b[j]!), 1e-5, 'layernorm');
    o = await run(K.normWgsl(300, 'rmsnorm', 1e-6, false), { 0: v, 1: 1200, 2: g }, 1);
    close(o[1]!, Array.from(v, (t, j) => (t / Math.sqrt(ms + 1e-6)) * g[j]!), 1e-5, 'rmsnorm');
    const E = vals(5 * d, 15), P = vals(9 * d, 16);
    params = Uint32Array.from([0, 6, 0, 0]);
    o = await run(K.embedWgsl(d, 0.5, true), { 0: packF16(E), 1: Uint32Array.from([3, 0, 0, 0]), 2: 4 * d, 4: packF16(P) }, 1);
    close(o[2]!, Array.from({ length: d }, (_, j) => E[3 * d + j]! * 0.5 + P[6 * d + j]!), 1e-6, 'embed');
  });

  it('attention (GQA) of the selected heads: RoPE on q and the new k, the new K / V into the cache, softmax over it', async () => {
    // hd 8: 2 lanes a position, one pass; hd 128 over 71 positions: 8 lanes a position, 3 passes of 32, the V sum 4 positions at a time and a rest
    for (const sh of [{ H: 4, KV: 2, hd: 8, cap: 6, rd: 6, n: 3, heads: [3, 0] }, { H: 6, KV: 3, hd: 128, cap: 80, rd: 64, n: 70, heads: [5, 1, 2] }]) {
      const { H, KV, hd, cap, rd, n, heads } = sh, scale = 0.35, h2 = rd / 2, tag = `hd ${hd}, ${n + 1} positions`;
      const spec = { heads: H, kvHeads: KV, hd, cap, ropeDim: rd, scale };
      const sel = Uint32Array.from([heads.length + 2 * KV, ...heads, ...Array.from({ length: 2 * KV }, (_, k) => H + k)]);
      const qkv = vals((heads.length + 2 * KV) * hd, 17), Kc = vals(KV * cap * hd, 18), Vc = vals(KV * cap * hd, 19);
      const cs = Float32Array.from({ length: rd }, (_, j) => Math.cos(0.7 * j + 0.3 * (j >= h2 ? 1 : 0))); // cos [rd / 2], sin [rd / 2]
      // the kernel reads position n's row of a table [cap, rd] (the other rows hold other values: a wrong row fails)
      const table = vals(cap * rd, 24);
      table.set(cs, n * rd);
      params = Uint32Array.from([n, 0, 0, 0]);
      const o = await run(K.attentionWgsl(spec), { 0: qkv, 1: sel, 2: Kc, 3: Vc, 4: 4 * H * hd, 6: table }, Math.max(heads.length, KV));
      // partial rotary: dims 0..rd-1 rotated in pairs (j, j + rd / 2), the rest passed through
      const rope = (v: ArrayLike<number>) => {
        const r = Array.from(v);
        for (let j = 0; j < h2; j++) { r[j] = v[j]! * cs[j]! - v[j + h2]! * cs[h2 + j]!; r[j + h2] = v[j + h2]! * cs[j]! + v[j]! * cs[h2 + j]!; }
        return r;
      };
      const nh = heads.length;
      const q = heads.map((_, t) => rope(qkv.subarray(t * hd, t * hd + hd)));
      const K2 = Float32Array.from(Kc), V2 = Float32Array.from(Vc);
      for (let k = 0; k < KV; k++) {
        K2.set(rope(qkv.subarray((nh + k) * hd, (nh + 1 + k) * hd)), (k * cap + n) * hd);
        V2.set(qkv.subarray((nh + KV + k) * hd, (nh + 1 + KV + k) * hd), (k * cap + n) * hd);
      }
      close(o[2]!, K2, 1e-6, `K cache, ${tag}`); close(o[3]!, V2, 1e-6, `V cache, ${tag}`);
      const ref = heads.flatMap((h, t) => {
        const kv = Math.floor(h / (H / KV));
        const s = Array.from({ length: n + 1 }, (_, p) => scale * q[t]!.reduce((acc, qj, j) => acc + qj * K2[(kv * cap + p) * hd + j]!, 0));
        const m = Math.max(...s), e = s.map((z) => Math.exp(z - m)), l = e.reduce((x, y) => x + y, 0);
        return Array.from({ length: hd }, (_, j) => e.reduce((acc, p, pi) => acc + p * V2[(kv * cap + pi) * hd + j]!, 0) / l);
      });
      close(o[4]!, ref, 1e-5, `attention, ${tag}`);
      // the same from 2 chunks of partial sums over every head's q|k|v (+ bias): the uncompacted layout [H q | KV k | KV v]
      const full = new Float32Array((H + 2 * KV) * hd), qb = vals(full.length, 22);
      heads.forEach((h, t) => full.set(qkv.subarray(t * hd, (t + 1) * hd), h * hd));
      full.set(qkv.subarray(nh * hd), H * hd);
      const p1 = vals(full.length, 23), parts = new Float32Array(2 * full.length);
      for (let j = 0; j < full.length; j++) { parts[j] = p1[j]!; parts[full.length + j] = full[j]! - p1[j]! - qb[j]!; }
      const o2 = await run(K.attentionWgsl({ ...spec, parts: { chunks: 2, bias: true } }), { 0: parts, 1: sel, 2: Kc, 3: Vc, 4: 4 * H * hd, 6: table, 8: qb }, Math.max(heads.length, KV));
      close(o2[4]!, ref, 1e-5, `attention from parts, ${tag}`);
      close(o2[2]!, K2, 1e-5, `K cache from parts, ${tag}`);
    }
  });

  it('lossless compaction: the nonzero activations (ids, values, count, stats); argmax takes the first of equal maxima', async () => {
    const N = 600, act = vals(N, 20).map((v) => (v > 0.3 ? v : 0));
    const nz = Array.from(act.keys()).filter((i) => act[i] !== 0);
    const o = await run(K.compactWgsl(N), { 0: act, 1: new Uint32Array(N + 4), 2: 4 * N, 3: Uint32Array.from([5, 0, 0, 0]) }, Math.ceil(N / 256));
    const sel = u32(o[1]!), k = sel[0]!;
    expect(k).toBe(nz.length);
    expect(u32(o[3]!)[0]).toBe(5 + nz.length);
    const got = Array.from(sel.subarray(1, 1 + k)).map((id, i) => [id, o[2]![i]!] as const).sort((p, q) => p[0] - q[0]);
    expect(got).toEqual(nz.map((i) => [i, act[i]!]));
    const lg = vals(1000, 21); lg[700] = 5; lg[333] = 5;
    params = Uint32Array.from([7, 9, 2, 0]);
    let r = await run(K.argmaxWgsl(1000), { 0: lg, 1: 16, 2: 16, 4: 16 }, 1);
    expect(u32(r[1]!)[0]).toBe(333);
    expect(u32(r[2]!)[2]).toBe(333);
    expect(Array.from(u32(r[PARAMS_OUT]!))).toEqual([8, 10, 3, 0]); // the next greedy token's slot, position, step
    expect(u32(r[4]!)[0]).toBe(0);
    lg[900] = NaN;
    r = await run(K.argmaxWgsl(1000), { 0: lg, 1: 16, 2: 16, 4: 16 }, 1);
    expect(u32(r[1]!)[0]).toBe(333);
    expect(u32(r[4]!)[0]).toBe(1); // flagged: the session refuses the tokens
  });
});

/** a CPU session picking the same fixed sets, cycled per step like the GPU session's */
function cpuModes(m: GpuModes): DecodeModes {
  const cyc = (sets: Int32Array[]) => { let i = 0; return () => sets[i++ % sets.length]!; };
  return {
    mlp: m.mlp.map((x) => (x.mode === 'select' ? { mode: 'select' as const, pick: cyc(x.sets) } : x as MlpStep)),
    heads: m.heads.map((x) => (x.mode === 'select' ? { mode: 'select' as const, pick: cyc(x.sets) } : x as HeadStep)),
  };
}
function fixedSets(layers: number, n: number, k: number, sets: number, seed: number): Int32Array[][] {
  return Array.from({ length: layers }, (_, l) => Array.from({ length: sets }, (_, s) => {
    const v = vals(n, seed + 31 * l + s);
    return Int32Array.from(Array.from(v.keys()).sort((a, b) => v[a]! - v[b]!).slice(0, k)).sort();
  }));
}
const IDS = [2, 50, 7, 300, 11, 9, 1000, 42];
/** the largest |a - b| over max |b| of each step's logits */
async function compare(model: Model, gm: GpuModes, cm: DecodeModes, ids = IDS): Promise<{ worst: number; gpu: GpuDecodeSession; cpu: DecodeSession; logits: Float32Array[] }> {
  const cpu = new DecodeSession(model, cm, 1), g = await gpuSession(model, gm, { capacity: 32 });
  let worst = 0;
  const logits: Float32Array[] = [];
  for (const id of ids) {
    const a = cpu.step([id]), b = await g.step([id]);
    logits.push(b);
    let m = 0, e = 0;
    for (let j = 0; j < a.length; j++) { m = Math.max(m, Math.abs(a[j]!)); e = Math.max(e, Math.abs(a[j]! - b[j]!)); }
    worst = Math.max(worst, e / m);
  }
  return { worst, gpu: g, cpu, logits };
}
const maxRel = (xs: Float32Array[], ys: Float32Array[]) => Math.max(...xs.map((x, i) => {
  let m = 0, e = 0;
  for (let j = 0; j < x.length; j++) { m = Math.max(m, Math.abs(ys[i]![j]!)); e = Math.max(e, Math.abs(x[j]! - ys[i]![j]!)); }
  return e / m;
}));

describe.skipIf(!gpu)('GPU decode sessions vs the CPU runtime and the forward pass (float16 fixtures)', () => {
  let opt: Model, llama: Model;
  beforeAll(async () => {
    await ensureBackend('wasm');
    opt = loadModel(path.join(ROOT, 'checkpoints', 'opt-fixture'), { decode: true });
    llama = loadModel(path.join(ROOT, 'checkpoints', 'llama-fixture'), { decode: true });
  });
  afterAll(() => { opt?.dispose(); llama?.dispose(); });

  it('OPT: dense == the CPU runtime == the forward pass; greedy on the GPU == argmax of the logits; lossless == dense', async () => {
    const c = opt.config;
    const d = await compare(opt, gpuDenseModes(c.layers), denseModes(c.layers));
    expect(d.worst).toBeLessThan(1e-4);
    expect(d.gpu.counts).toEqual(d.cpu.counts);
    // the forward pass over the same tokens (batched, tfjs)
    const out = forward(opt, [IDS]);
    const full = out.logits!.dataSync() as Float32Array;
    disposeOutput(out);
    const V = c.vocabSize;
    expect(maxRel(d.logits, IDS.map((_, t) => full.subarray(t * V, (t + 1) * V)))).toBeLessThan(1e-4);
    // greedy: the GPU's argmax feeds the next step; the same tokens as stepping the CPU runtime on its argmax
    const toks = await d.gpu.greedy(5, 6);
    const ref: number[] = [];
    let next = 5;
    for (let k = 0; k < 6; k++) { const lg = d.cpu.step([next]); next = lg.indexOf(Math.max(...lg)); ref.push(next); }
    expect(toks).toEqual(ref);
    expect(d.gpu.position()).toBe(IDS.length + 6);
    d.gpu.dispose(); d.cpu.dispose();
    // lossless: only the nonzero rows of fc2, compacted on the GPU: the dense logits, fewer rows read
    const lossless: GpuModes = { mlp: gpuDenseModes(c.layers).mlp.map(() => ({ mode: 'lossless' as const })), heads: gpuDenseModes(c.layers).heads };
    const l = await compare(opt, lossless, { mlp: lossless.mlp.map(() => ({ mode: 'lossless' as const })), heads: denseModes(c.layers).heads });
    // (in one dispatch at this width: dense's chunks with the zero terms left out, so dense's bits)
    expect(l.gpu.opNames(0)).toContain('updown');
    l.logits.forEach((x, t) => expect(Array.from(u32(x)), `lossless step ${t}: dense's bits`).toEqual(Array.from(u32(d.logits[t]!))));
    expect(l.worst).toBeLessThan(1e-4);
    const gc = l.gpu.counts, cc = l.cpu.counts;
    expect(gc.mlpTotal).toBe(cc.mlpTotal);
    expect(gc.mlpSelected).toBeLessThan(0.8 * gc.mlpTotal); // really skipped rows
    expect(Math.abs(gc.mlpSelected - cc.mlpSelected)).toBeLessThanOrEqual(0.002 * cc.mlpSelected); // the same nonzeros, up to rounding at 0
    // the same with up compacting and down over the compacted rows (two dispatches): the same rows read
    const two = await gpuSession(opt, lossless, { capacity: 32, losslessOneRows: 0 });
    expect(two.opNames(0)).not.toContain('updown');
    const lt = [];
    for (const id of IDS) lt.push(await two.step([id]));
    expect(maxRel(lt, d.logits)).toBeLessThan(1e-4);
    expect(two.counts).toEqual(gc);
    two.dispose();
    l.gpu.dispose(); l.cpu.dispose();
  });

  it('OPT and Llama (GQA, RoPE, SwiGLU, RMSNorm): the same fixed neuron / head sets on the GPU == on the CPU runtime, != dense; the MLP in one dispatch == two', async () => {
    for (const model of [opt, llama]) {
      const c = model.config;
      const gm: GpuModes = { mlp: fixedSets(c.layers, c.ffn, Math.round(c.ffn / 5), 3, 1).map((sets) => ({ mode: 'select' as const, sets })),
        heads: fixedSets(c.layers, c.heads, Math.ceil(c.heads / 2), 2, 7).map((sets) => ({ mode: 'select' as const, sets })) };
      const s = await compare(model, gm, cpuModes(gm));
      expect(s.worst, c.family).toBeLessThan(1e-4);
      expect(s.gpu.counts, c.family).toEqual(s.cpu.counts);
      expect(s.gpu.counts.mlpSelected / s.gpu.counts.mlpTotal).toBeCloseTo(Math.round(c.ffn / 5) / c.ffn, 9);
      s.gpu.dispose(); s.cpu.dispose();
      // the MLP in one dispatch (the default) == up and down as two, bit for bit with the two's chunks
      const split = await gpuSession(model, gm, { capacity: 16, splitMlp: true }), one = await gpuSession(model, gm, { capacity: 16, mlpChunks: Math.min(128, Math.ceil(c.ffn / 64)) });
      for (const id of IDS.slice(0, 3)) expect(Array.from(u32(await one.step([id]))), `${c.family}: one dispatch == two`).toEqual(Array.from(u32(await split.step([id]))));
      split.dispose(); one.dispose();
      if (model === llama) {
        const d = await compare(model, gpuDenseModes(c.layers), denseModes(c.layers));
        expect(d.worst, 'llama dense').toBeLessThan(1e-4);
        expect(maxRel(s.logits, d.logits)).toBeGreaterThan(1e-3); // the selection changed something
        d.gpu.dispose(); d.cpu.dispose();
      }
    }
  }, 400_000); // lavapipe under a full parallel suite: minutes

  it('input-threshold sites (abs and WINA scores) on the GPU == the CPU runtime with the same thresholds; norms unfused == fused', async () => {
    // thresholds: each layer's and site's median |x| over a dense CPU run (about half the inputs skipped)
    const medians = (model: Model) => {
      const seen = new Map<string, number[]>();
      const cpu = new DecodeSession(model, { ...denseModes(model.config.layers), observe: (i, site, x, n) => {
        const k = `${i}.${site}`; if (!seen.has(k)) seen.set(k, []); for (let j = 0; j < n; j++) seen.get(k)!.push(Math.abs(x[j]!));
      } }, 1);
      for (const id of IDS) cpu.step([id]);
      cpu.dispose();
      return (i: number, site: string) => { const v = seen.get(`${i}.${site}`)!.filter((x) => x > 0).sort((a, b) => a - b); const k = Math.floor(v.length / 2); return (v[k]! + v[k + 1]!) / 2; }; // between two values: none sits on the threshold
    };
    for (const model of [opt, llama]) {
      const c = model.config, med = medians(model);
      // OPT: every site (layer 1's down input by WINA, its threshold the median |x| times ~ a row norm); Llama (gated): no MLP input site
      const inputs: (LayerInputs | undefined)[] = Array.from({ length: c.layers }, (_, i) => (i === 0 ? undefined : {
        attn: { t: med(i, 'attn') }, o: { t: med(i, 'o') }, ...(c.gated ? {} : { mlp: { t: med(i, 'mlp') } }),
        down: i === 1 ? { t: med(i, 'down') * 0.8, wina: true } : { t: med(i, 'down') } }));
      const gm: GpuModes = { ...gpuDenseModes(c.layers), inputs };
      const cm: DecodeModes = { ...denseModes(c.layers), inputs };
      const ids = IDS.slice(0, 5);
      const r = await compare(model, gm, cm, ids);
      expect(r.worst, c.family).toBeLessThan(1e-4);
      expect(r.gpu.counts, c.family).toEqual(r.cpu.counts);
      const share = r.gpu.counts.mlpSelected / r.gpu.counts.mlpTotal;
      expect(share, c.family).toBeLessThan(0.85); // the down rows really skipped
      for (let i = 1; i < c.layers; i++) for (const [k, wd] of [[0, c.hidden], [1, c.heads * c.headDim]] as const) {
        const f = r.gpu.siteRows[i]![k]! / (ids.length * wd);
        expect(f, `${c.family} layer ${i} site ${k}`).toBeGreaterThan(0.2); expect(f).toBeLessThan(0.8);
      }
      r.gpu.dispose(); r.cpu.dispose();
      const d = await compare(model, gpuDenseModes(c.layers), denseModes(c.layers), ids);
      expect(maxRel(r.logits, d.logits), c.family).toBeGreaterThan(1e-3); // the thresholds changed something
      d.gpu.dispose(); d.cpu.dispose();
    }
    // the norms as their own dispatches compute the same as fused
    const c = opt.config, gm = { ...gpuDenseModes(c.layers), mlp: gpuDenseModes(c.layers).mlp.map(() => ({ mode: 'lossless' as const })) };
    const a = await gpuSession(opt, gm, { capacity: 16 }), b = await gpuSession(opt, gm, { capacity: 16, unfused: true });
    const la = [await a.step([3]), await a.step([4])], lb = [await b.step([3]), await b.step([4])];
    expect(maxRel(la, lb)).toBeLessThan(1e-5);
    // and fused at 16 rows a workgroup (q|k|v and the head; lossless fc1 compacts: a norm dispatch)
    const p = await gpuSession(opt, gm, { capacity: 16, fuseRows: 0, fusePairRows: Infinity });
    expect(maxRel([await p.step([3]), await p.step([4])], lb)).toBeLessThan(1e-5);
    p.dispose();
    // lossless keeps the neurons whose pre-activation is > 0: fused and unfused norms round differently, so a neuron
    // within an ulp of 0 can flip (CI saw 2753 vs 2752 of 12288); more than a few flips is a real difference
    expect(a.counts.mlpTotal).toBe(b.counts.mlpTotal);
    expect(a.counts.headsSelected).toBe(b.counts.headsSelected);
    expect(Math.abs(a.counts.mlpSelected - b.counts.mlpSelected)).toBeLessThanOrEqual(0.002 * b.counts.mlpSelected);
    a.dispose(); b.dispose();
  }, 400_000); // lavapipe under a full parallel suite: minutes

  it('predictors on the GPU (threshold / top-k rules; h_mlp, x_mlp, x_attn and lookahead inputs): the picks and logits of the CPU runtime', async () => {
    const c = opt.config, d = c.hidden, F = c.ffn, H = c.heads;
    const host = (out: number, r: number, seed: number, hidden: 'none' | 'relu' = 'none'): HostPredictor => ({
      fc1Weight: vals(r * d, seed), fc1Bias: vals(r, seed + 1), fc2Weight: vals(out * r, seed + 2).map((v) => v / 4), fc2Bias: vals(out, seed + 3), d, r, out, hiddenActivation: hidden });
    const site = (h: HostPredictor, input: string, prev = false): LoadedSite => ({ entry: { predictor: 'closed-form', input } as PredictorEntry, host: h, sourceLayerOffset: prev ? -1 : 0 });
    const preds = { manifest: null as never, dispose: () => {}, mlp: new Map<number, LoadedSite>([[1, site(host(F, 16, 60), 'h_mlp')], [2, site(host(F, 8, 61, 'relu'), 'x_mlp')], [4, site(host(F, 16, 62), 'x_attn')]]),
      heads: new Map<number, LoadedSite>([[0, site(host(H, 8, 63), 'x_attn[layer-1]', true)], [3, site(host(H, 8, 64), 'x_attn[layer-1]', true)], [5, site(host(H, 8, 65), 'x_attn')]]) };
    const dense = { mode: 'dense' as const };
    const layer = (i: number, mlp: object, heads: object) => ({ layer: i, mlp, heads, expected: { mlpDensity: 1, headDensity: 1, mlpMs: 0, headDeltaMs: 0, pplIncrease: 0 } });
    const plan = { layers: [layer(0, { mode: 'lossless' }, { mode: 'predicted', rule: { kind: 'topk', k: 5 } }), layer(1, { mode: 'predicted', rule: { kind: 'threshold', value: 0.1 }, recall: 0.9 }, dense),
      layer(2, { mode: 'predicted', rule: { kind: 'topk', k: 300 }, recall: 0.9 }, dense), layer(3, dense, { mode: 'predicted', rule: { kind: 'threshold', value: 0 } }),
      layer(4, { mode: 'predicted', rule: { kind: 'threshold', value: -0.2 }, recall: 0.9 }, dense), layer(5, dense, { mode: 'predicted', rule: { kind: 'topk', k: 3 } })] } as unknown as RuntimePlan;
    const cpu = decodeModes(c, preds as unknown as LoadedPredictors, plan);
    const gm = gpuPlanModes(c, preds as unknown as LoadedPredictors, plan);
    expect(gm.mlp.map((m) => m.mode)).toEqual(['lossless', 'predicted', 'predicted', 'dense', 'predicted', 'dense']);
    expect(gm.heads.map((m) => (m.mode === 'predicted' ? m.prev : m.mode))).toEqual([true, 'dense', 'dense', true, 'dense', false]);
    const r = await compare(opt, gm, cpu.modes);
    expect(r.worst).toBeLessThan(1e-4);
    expect(r.gpu.counts).toEqual(r.cpu.counts); // the same number of neurons and heads picked, step by step summed
    const k = r.cpu.counts;
    expect(k.mlpSelected / k.mlpTotal).toBeLessThan(0.75); expect(k.headsSelected / k.headsTotal).toBeLessThan(0.9);
    r.gpu.dispose(); r.cpu.dispose(); cpu.dispose();
    const dn = await compare(opt, gpuDenseModes(c.layers), denseModes(c.layers));
    expect(maxRel(r.logits, dn.logits)).toBeGreaterThan(1e-3);
    dn.gpu.dispose(); dn.cpu.dispose();
  });

  it('the pick kernel: top-k (ties to the lower index) and threshold, ascending, with the kv groups after', async () => {
    const W = 700, sc = vals(W, 70); sc[10] = sc[20] = sc[30] = 0.5; sc[40] = -0; sc[41] = 0;
    const ref = topKRow(sc, 37);
    for (const [rule, want] of [[{ kind: 'topk', k: 37 }, Array.from(ref)], [{ kind: 'topk', k: W }, Array.from(sc.keys())], [{ kind: 'threshold', value: 0.5 }, Array.from(sc.keys()).filter((i) => sc[i]! >= 0.5)]] as const) {
      const o = await run(K.pickWgsl(W, rule, 2), { 0: sc, 1: 4 * (W + 8), 2: Uint32Array.from([4, 0, 0, 0]) }, 1);
      const sel = u32(o[1]!);
      expect(sel[0]).toBe(want.length + 2);
      expect(Array.from(sel.subarray(1, 1 + want.length + 2))).toEqual([...want, W, W + 1]);
      expect(u32(o[2]!)[0]).toBe(4 + want.length);
    }
    // ties at the k-th value: the lower indices
    const t = new Float32Array(W).fill(1); t[5] = 2;
    const o = await run(K.pickWgsl(W, { kind: 'topk', k: 3 }, 0), { 0: t, 1: 4 * (W + 8), 2: 16 }, 1);
    expect(Array.from(u32(o[1]!).subarray(0, 4))).toEqual([3, 0, 1, 5]);
  });

  it('generateGpu (prefill on tfjs, greedy on the GPU) == generate on the CPU runtime at temperature 0', async () => {
    for (const [model, prompt] of [[opt, [2, 100, 200, 300]], [llama, [1, 40, 41, 42, 43]]] as const) {
      const cpu = generate(model, [[...prompt]], { maxNewTokens: 10, stopAtEos: false });
      const g = await generateGpu(model, [...prompt], { maxNewTokens: 10, stopAtEos: false });
      expect(g.tokens, model.config.family).toEqual(cpu.tokens);
      expect(g.counts).toEqual(cpu.counts);
      expect(g.stopReason).toBe('max-tokens');
    }
    // versus (generate's dense comparison): a second session over the same weights and cache, timed in rounds
    // alternating with the modes' (after a warm-up of each): the modes' tokens and counts are the CPU runtime's in
    // those modes (one set a layer: nothing cycles), versus's tokens dense's
    const c = opt.config, prompt = [2, 100, 200, 300];
    const gm: GpuModes = { mlp: fixedSets(c.layers, c.ffn, Math.round(c.ffn / 5), 1, 1).map((sets) => ({ mode: 'select' as const, sets })),
      heads: fixedSets(c.layers, c.heads, Math.ceil(c.heads / 2), 1, 7).map((sets) => ({ mode: 'select' as const, sets })) };
    const sparse = generate(opt, [prompt], { maxNewTokens: 12, stopAtEos: false, modes: cpuModes(gm) }), dense = generate(opt, [prompt], { maxNewTokens: 12, stopAtEos: false });
    expect(sparse.tokens).not.toEqual(dense.tokens);
    const v = await generateGpu(opt, prompt, { maxNewTokens: 12, stopAtEos: false, modes: gm, versus: gpuDenseModes(c.layers) });
    expect(v.tokens).toEqual(sparse.tokens);
    expect(v.counts).toEqual(sparse.counts);
    expect([v.versusTokens]).toEqual(dense.tokens);
    expect(v.versusDecodeMs).toBeGreaterThan(0);
  }, 400_000); // lavapipe under a full parallel suite: minutes

  it('generate --runtime gpu: the CPU runtime\'s text at temperature 0; sampling refused with the reason', async () => {
    const quiet = { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) };
    const o = generateSchema.parse({ model: path.join(ROOT, 'checkpoints', 'opt-fixture'), prompt: ['The ship'], maxTokens: 4, runtime: 'gpu' });
    const g = await runGenerate(o, quiet), cpu = await runGenerate({ ...o, runtime: 'cpu' }, quiet);
    const J = (r: { json: unknown }) => r.json as { tokens: number[][]; runtime?: string };
    expect(J(g).tokens).toEqual(J(cpu).tokens);
    expect(g.text).toBe(cpu.text);
    expect(J(g).runtime).toBe('gpu');
    await expect(runGenerate({ ...o, temperature: 0.7 }, quiet)).rejects.toThrow(/temperature 0.7: the GPU runtime decodes greedily/);
  });

  it("continues a prefill's cache (loadCache) as the CPU runtime does", async () => {
    const model = llama, prompt = [1, 30, 31, 32, 33];
    const cache = newCache(model);
    const pre = forward(model, [prompt], { cache });
    disposeOutput(pre);
    const cpu = sessionFromPrefill(model, denseModes(model.config.layers), cache);
    const g = await gpuSession(model, gpuDenseModes(model.config.layers), { capacity: 16 });
    g.loadCache(cache);
    disposeCache(cache);
    expect(g.position()).toBe(prompt.length);
    const a = [cpu.step([40]), cpu.step([41])], b = [await g.step([40]), await g.step([41])];
    expect(maxRel(b, a)).toBeLessThan(1e-4);
    cpu.dispose(); g.dispose();
  });

  it('refuses what it does not run, by name', async () => {
    const c = llama.config;
    expect(gpuUnsupported(c)).toEqual([]);
    expect(gpuUnsupported({ ...c, qkNorm: true, positions: 'alibi', hidden: 100 })).toEqual(['per-head q / k norms (Qwen 3)', 'ALiBi positions', 'hidden_size 100 not a multiple of 8']);
    const lossless: GpuModes = { mlp: gpuDenseModes(c.layers).mlp.map(() => ({ mode: 'lossless' as const })), heads: gpuDenseModes(c.layers).heads };
    await expect(gpuSession(llama, lossless)).rejects.toThrow(/lossless mode needs an ungated ReLU MLP \(this model's is gated silu\)/);
    const picked: DecodeModes = { mlp: denseModes(c.layers).mlp.map((m, i) => (i === 2 ? { mode: 'select' as const, pick: () => new Int32Array([1]) } : m)), heads: denseModes(c.layers).heads };
    expect(() => gpuModesOf(picked)).toThrow(UserError);
    expect(() => gpuModesOf(picked)).toThrow(/predicted or gate-threshold modes yet \(layer 2 MLP\)/);
    expect(() => gpuModesOf({ ...denseModes(c.layers), mlp: denseModes(c.layers).mlp.map((m, i) => (i === 1 ? { mode: 'gate-threshold' as const, t: 0.1 } : m)) })).toThrow(/layer 1 MLP gate-threshold/);
    const gated: GpuModes = { ...gpuDenseModes(c.layers), inputs: [{ mlp: { t: 0.1 } }, ...Array.from({ length: c.layers - 1 }, () => undefined)] };
    await expect(gpuSession(llama, gated)).rejects.toThrow(/does not run layer 0's MLP input threshold on a gated MLP/);
    const oSel: GpuModes = { ...gpuDenseModes(opt.config.layers), heads: gpuDenseModes(opt.config.layers).heads.map((h, i) => (i === 0 ? { mode: 'select' as const, sets: [Int32Array.from([1, 2])] } : h)),
      inputs: [{ o: { t: 0.1 } }, ...Array.from({ length: opt.config.layers - 1 }, () => undefined)] };
    await expect(gpuSession(opt, oSel)).rejects.toThrow(/layer 0's o input threshold with selected heads/);
    const g = await gpuSession(opt, gpuDenseModes(opt.config.layers), { capacity: 2 });
    await expect(g.step([opt.config.vocabSize])).rejects.toThrow(/token id 4096 is outside the vocabulary/);
    await g.step([2]); await g.step([3]);
    await expect(g.step([4])).rejects.toThrow(/position 2 is past the session's KV cache \(2 positions\)/);
    g.dispose();
  });
});

it('the reason when skipped', () => { if (!gpu) expect(why).not.toBe(''); else expect(gpu.device).toBeDefined(); });
