/**
 * The decode rows at half size and 8 bits (src/model/kernels/wasm: toWasmRows and the f16 / bf16 / q8 kernels):
 * every kernel (matvec and axpy; every row, a run of consecutive rows, scattered rows) against a float64 reference
 * over the same rounded weights written here; float16 subnormals, zeros and -0; an input past float16's scaling
 * range; rows a dtype cannot hold; and whole decode steps: a float16 checkpoint's logits with float16 rows equal its
 * float32 rows' (the widening is exact and the sums run in the same order), a float32 checkpoint's float16 rows
 * stay within the float16 rounding of its weights, q8_0 within its quantization.
 */
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { rowMatrix, type RowDtype } from '../src/model/kernels/rows.js';
import { createArena, quantizeQ8 } from '../src/model/kernels/wasm/kernels.js';
import { loadModel } from '../src/model/model.js';
import { DecodeSession, denseModes, warmDecode } from '../src/runtime/decoder.js';
import { bf16ToF32Array, f16ToF32Array, f32ToBf16Array, f32ToF16Array } from '../src/util/half.js';
import { UserError } from '../src/util/errors.js';
import { tmpDir } from './helpers.js';
import { makeRandomCheckpoint } from './reference/random-checkpoint.js';

let seed = 4242;
const rnd = () => { seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0; return seed / 4294967296; };

/** random weights with float16 subnormals (|w| < 2^-14), zeros and -0 mixed in */
function weights(n: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => (i % 97 === 3 ? 0 : i % 89 === 5 ? -0 : i % 13 === 7 ? (rnd() - 0.5) * 1e-4 : (rnd() * 2 - 1) * 0.8));
}

/** the values a dtype stores for w, as float64 (q8_0: quantized here by the tested quantizer, then checked) */
function rounded(w: Float32Array, dtype: RowDtype): Float64Array {
  if (dtype === 'float16') return Float64Array.from(f16ToF32Array(f32ToF16Array(w)));
  if (dtype === 'bfloat16') return Float64Array.from(bf16ToF32Array(f32ToBf16Array(w)));
  if (dtype === 'float32') return Float64Array.from(w);
  const q = new Int8Array(w.length), s = new Float32Array(w.length / 32);
  quantizeQ8(w, q, s);
  return Float64Array.from(q, (v, i) => v * s[i >> 5]!);
}

describe('quantizeQ8', () => {
  it('keeps every value within half a step of its block scale, the block maximum at +-127', () => {
    const w = weights(32 * 40);
    const q = new Int8Array(w.length), s = new Float32Array(40);
    quantizeQ8(w, q, s);
    for (let b = 0; b < 40; b++) {
      let m = 0, mq = 0;
      for (let j = 0; j < 32; j++) {
        const i = b * 32 + j;
        expect(Math.abs(w[i]! - q[i]! * s[b]!)).toBeLessThanOrEqual(s[b]! * 0.5 + 1e-9);
        m = Math.max(m, Math.abs(w[i]!)); mq = Math.max(mq, Math.abs(q[i]!));
      }
      expect(s[b]).toBeCloseTo(m / 127, 9);
      expect(mq).toBe(127);
    }
  });
});

describe.each(['float16', 'bfloat16', 'q8_0', 'float32'] as RowDtype[])('%s rows', (dtype) => {
  const cases: [number, number][] = [[67, 96], [41, 256], [20, 2048]];
  it.each(cases)('n %i, d %i: matvec and axpy (all rows, a run, scattered rows) equal the float64 reference', (n, d) => {
    const arena = createArena()!;
    try {
      const w = weights(n * d), ref = rounded(w, dtype);
      const m = rowMatrix(w, n, d, arena, dtype);
      expect(m.kernel).toBe('wasm-simd');
      expect(m.dtype).toBe(d % 32 !== 0 && dtype === 'q8_0' ? 'float16' : dtype);
      const r = m.dtype === dtype ? ref : rounded(w, m.dtype);
      const x = Float32Array.from({ length: d }, () => rnd() * 4 - 2);
      const sets: (Int32Array | undefined)[] = [undefined, Int32Array.from({ length: 12 }, (_, i) => 3 + i),
        Int32Array.from({ length: Math.min(n, 19) }, (_, i) => (i * 7 + 2) % n)];
      for (const rows of sets) {
        const k = rows ? rows.length : n;
        // matvec: per row, error within float32 summation of |w||x| (q8_0: plus its int16 input, half a step of each
        // 32-block's max |x| / 32767)
        const out = new Float32Array(k);
        m.matvec(x, out, rows);
        for (let i = 0; i < k; i++) {
          const o = (rows ? rows[i]! : i) * d;
          let want = 0, mag = 0, qerr = 0;
          for (let j = 0; j < d; j++) { want += r[o + j]! * x[j]!; mag += Math.abs(r[o + j]! * x[j]!); }
          if (m.dtype === 'q8_0') for (let b = 0; b < d; b += 32) {
            let mx = 0, sw = 0;
            for (let j = b; j < b + 32; j++) { mx = Math.max(mx, Math.abs(x[j]!)); sw += Math.abs(r[o + j]!); }
            qerr += (sw * mx * 0.5) / 32767;
          }
          expect(Math.abs(out[i]! - want)).toBeLessThanOrEqual(mag * 2e-6 + qerr * 1.01 + 1e-30);
        }
        // axpy into a nonzero output: the float32 sum row after row
        const a = Float32Array.from({ length: k }, () => rnd() * 2 - 1);
        const y0 = Float32Array.from({ length: d }, () => rnd() - 0.5), y = y0.slice();
        m.axpy(a, y, rows);
        for (let j = 0; j < d; j++) {
          let want = y0[j]!, mag = Math.abs(y0[j]!);
          for (let i = 0; i < k; i++) { const o = (rows ? rows[i]! : i) * d; want += a[i]! * r[o + j]!; mag += Math.abs(a[i]! * r[o + j]!); }
          expect(Math.abs(y[j]! - want)).toBeLessThanOrEqual(mag * 2e-6 + 1e-30);
        }
      }
    } finally { arena.dispose(); }
  });
});

describe('float16 rows: edge cases', () => {
  it('an input of 2^15 and more is scaled down, not overflowed (matvec and axpy)', () => {
    const arena = createArena()!;
    try {
      const n = 16, d = 64, w = weights(n * d), r = rounded(w, 'float16');
      const m = rowMatrix(w, n, d, arena, 'float16');
      const x = Float32Array.from({ length: d }, (_, j) => (j === 5 ? 3e5 : rnd() * 4 - 2));
      const out = new Float32Array(n);
      m.matvec(x, out);
      for (let i = 0; i < n; i++) {
        let want = 0, mag = 0;
        for (let j = 0; j < d; j++) { want += r[i * d + j]! * x[j]!; mag += Math.abs(r[i * d + j]! * x[j]!); }
        expect(Number.isFinite(out[i]!)).toBe(true);
        expect(Math.abs(out[i]! - want)).toBeLessThanOrEqual(mag * 2e-6);
      }
      const a = Float32Array.from({ length: n }, (_, i) => (i === 2 ? -1e6 : rnd()));
      const y = new Float32Array(d).fill(1);
      m.axpy(a, y);
      for (let j = 0; j < d; j++) {
        let want = 1, mag = 1;
        for (let i = 0; i < n; i++) { want += a[i]! * r[i * d + j]!; mag += Math.abs(a[i]! * r[i * d + j]!); }
        expect(Math.abs(y[j]! - want)).toBeLessThanOrEqual(mag * 2e-6);
      }
    } finally { arena.dispose(); }
  });

  it('rows with values float16 cannot hold (past 65504, inf, NaN) stay float32; q8_0 rows of 48 values are float16', () => {
    const arena = createArena()!;
    try {
      const w = weights(8 * 64);
      w[17] = 70000;
      expect(rowMatrix(w, 8, 64, arena, 'float16').dtype).toBe('float32');
      w[17] = NaN;
      expect(rowMatrix(w, 8, 64, arena, 'q8_0').dtype).toBe('float32');
      expect(rowMatrix(weights(8 * 48), 8, 48, arena, 'q8_0').dtype).toBe('float16');
    } finally { arena.dispose(); }
  });
});

describe('decode steps', () => {
  let work = '';
  beforeAll(async () => { await ensureBackend('wasm'); work = tmpDir(); });

  /** the logits of 6 greedy-free steps (fixed token ids) of a model loaded with `decode` */
  function logits(dir: string, decode: object): { all: Float32Array[]; dtype: string } {
    const model = loadModel(dir, { decode });
    try {
      const s = new DecodeSession(model, denseModes(model.config.layers), 1);
      try { return { all: [5, 9, 2, 33, 17, 4].map((id) => s.step([id])), dtype: model.decode!.dtype }; } finally { s.dispose(); }
    } finally { model.dispose(); }
  }

  it('a float16 checkpoint: dtype auto keeps float16 rows, with the float32 rows\' logits bit for bit; bfloat16 alike', () => {
    for (const [dt, rows] of [['F16', 'float16'], ['BF16', 'bfloat16']] as const) {
      const dir = path.join(work, dt);
      makeRandomCheckpoint(dir, { family: 'llama', layers: 2, hidden: 64, ffn: 128, heads: 4, kvHeads: 2, vocab: 96, dtype: dt, seed: 7 });
      const half = logits(dir, {}), full = logits(dir, { dtype: 'float32' });
      expect(half.dtype).toBe(rows);
      expect(full.dtype).toBe('float32');
      half.all.forEach((l, t) => expect(Buffer.from(l.buffer).equals(Buffer.from(full.all[t]!.buffer))).toBe(true));
    }
  });

  it('a float32 checkpoint: float16 rows within the float16 rounding of its weights, q8_0 within its quantization', () => {
    const dir = path.join(work, 'F32');
    makeRandomCheckpoint(dir, { family: 'llama', layers: 2, hidden: 64, ffn: 128, heads: 4, kvHeads: 2, vocab: 96, dtype: 'F32', seed: 8 });
    const full = logits(dir, {});
    expect(full.dtype).toBe('float32');
    const err = (o: Float32Array[]) => Math.max(...o.map((l, t) => {
      let e = 0, s = 0;
      l.forEach((v, i) => { e += (v - full.all[t]![i]!) ** 2; s += full.all[t]![i]! ** 2; });
      return Math.sqrt(e / s);
    }));
    const h = logits(dir, { dtype: 'float16' }), q = logits(dir, { dtype: 'q8_0' }), b = logits(dir, { dtype: 'bfloat16' });
    expect([h.dtype, q.dtype, b.dtype]).toEqual(['float16', 'q8_0', 'bfloat16']);
    // relative rounding of a weight: float16 <= 2^-11, bfloat16 <= 2^-8; logits move by about that, never by more than a
    // few times it. q8_0: up to 1/254 of a block's largest |w| (~3x a typical |w|: ~1% of a weight); its kernels are
    // checked exactly above, here only its order of magnitude
    const eh = err(h.all), eb = err(b.all), eq = err(q.all);
    expect(eh).toBeGreaterThan(0);
    expect(eh).toBeLessThan(4 * 2 ** -11);
    expect(eb).toBeLessThan(4 * 2 ** -8);
    expect(eq).toBeLessThan(0.05);
    expect(eh).toBeLessThan(eb);
    expect(eh).toBeLessThan(eq);
  });

  it('warmDecode runs throwaway sessions only: the logits after it are those of a model never warmed, bit for bit', () => {
    const dir = path.join(work, 'warm');
    makeRandomCheckpoint(dir, { family: 'llama', layers: 2, hidden: 64, ffn: 128, heads: 4, kvHeads: 2, vocab: 96, dtype: 'F16', seed: 9 });
    const cold = logits(dir, {});
    const model = loadModel(dir, { decode: {} });
    try {
      const s = new DecodeSession(model, denseModes(model.config.layers), 1); // a session open across the warm-up
      try {
        const first = s.step([5]);
        expect(warmDecode(model, 1e9, 300)).toBe(300); // the step cap (a new session every 128 positions)
        expect(warmDecode(model, 0)).toBe(0); // no budget, no steps
        const rest = [9, 2, 33, 17, 4].map((id) => s.step([id]));
        [first, ...rest].forEach((l, t) => expect(Buffer.from(l.buffer).equals(Buffer.from(cold.all[t]!.buffer))).toBe(true));
      } finally { s.dispose(); }
      const after = new DecodeSession(model, denseModes(model.config.layers), 1);
      try { [5, 9, 2, 33, 17, 4].forEach((id, t) => expect(Buffer.from(after.step([id]).buffer).equals(Buffer.from(cold.all[t]!.buffer))).toBe(true)); } finally { after.dispose(); }
    } finally { model.dispose(); }
  });

  it('a dtype or thread count that is not understood is refused by name', () => {
    const dir = path.join(work, 'F32');
    expect(() => loadModel(dir, { decode: { dtype: 'int4' as 'q8_0' } })).toThrow(UserError);
    expect(() => loadModel(dir, { decode: { dtype: 'int4' as 'q8_0' } })).toThrow(/decode dtype "int4"/);
    expect(() => loadModel(dir, { decode: { threads: 0 } })).toThrow(/decode threads 0/);
  });
});
