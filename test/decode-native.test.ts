/**
 * The native row kernels (src/model/kernels/native: AVX2 / FMA / F16C, their own threads) against a float64
 * reference over the same stored values and against the WebAssembly kernels, for every row dtype, every row / runs /
 * scattered rows; any thread count gives the same bits; float16 and bfloat16 rows give the float32 rows' bits for the
 * same values; an axpy without its zero rows gives the same bits (the lossless mode); a call out of the arena's bounds
 * is an Error, not a crash; whole decode steps equal the WebAssembly runtime's within float32 rounding; `kernels:
 * 'native'` where they are unavailable is a UserError naming why. Skipped, with the reason, where they were not built.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { nativeRows } from '../src/model/kernels/native/native.js';
import { rowMatrix, type RowDtype } from '../src/model/kernels/rows.js';
import { createArena, quantizeQ8, toWasmRows, wasmRowsF32, type WasmArena, type WasmRows } from '../src/model/kernels/wasm/kernels.js';
import { loadModel } from '../src/model/model.js';
import { DecodeSession, denseModes, type DecodeModes } from '../src/runtime/decoder.js';
import { f32ToF16Array, f16ToF32Array } from '../src/util/half.js';
import { tmpDir } from './helpers.js';
import { makeRandomCheckpoint } from './reference/random-checkpoint.js';

const { mod, why } = nativeRows();
if (!mod) console.warn(`test/decode-native: skipped: ${why}`);
const run = mod ? describe : describe.skip;

let seed = 7;
const rnd = () => { seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0; return seed / 4294967296; };
const same = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
const nativeArena = (threads = 1): WasmArena => { const a = createArena()!; a.native = { mod: mod!, threads }; return a; };

const n = 300, d = 1056; // uneven thread chunks (rows 104 / 104 / 92; columns not a multiple of 64)
// every row (an axpy split by rows, in chunks by row id), a run, sorted scattered rows, and unsorted ones (an axpy split
// by columns)
const ROWS: (Int32Array | undefined)[] = [undefined, Int32Array.from({ length: 150 }, (_, i) => 20 + i), Int32Array.from({ length: 203 }, (_, i) => (i * 37 + 5) % n).sort(),
  Int32Array.from({ length: 120 }, (_, i) => (i * 53 + 11) % n)];

run.each(['float32', 'float16', 'bfloat16', 'q8_0'] as RowDtype[])('native %s rows', (dtype) => {
  const w = Float32Array.from({ length: n * d }, () => rnd() * 2 - 1);
  const x = Float32Array.from({ length: d }, () => rnd() * 4 - 2);

  it('matvec and axpy equal a float64 reference over the stored values, and the WebAssembly kernels within float32 rounding', () => {
    const na = nativeArena(), wa = createArena()!;
    try {
      const a = rowMatrix(w, n, d, na, dtype), b = rowMatrix(w, n, d, wa, dtype);
      expect(a.kernel).toBe('native');
      expect(b.kernel).toBe('wasm-simd');
      const stored = wasmRowsF32((a as unknown as { W: WasmRows }).W);
      // q8_0's matvec quantizes its input per 32 values (int16): the reference is the exact dot with the input
      const tol = dtype === 'q8_0' ? 2e-4 : 2e-5;
      for (const rows of ROWS) {
        const k = rows ? rows.length : n;
        const o1 = new Float32Array(k), o2 = new Float32Array(k);
        a.matvec(x, o1, rows); b.matvec(x, o2, rows);
        for (let i = 0; i < k; i++) {
          const r = rows ? rows[i]! : i;
          let ref = 0, mag = 0;
          for (let j = 0; j < d; j++) { ref += stored[r * d + j]! * x[j]!; mag += Math.abs(stored[r * d + j]! * x[j]!); }
          expect(Math.abs(o1[i]! - ref)).toBeLessThanOrEqual(tol * mag);
          expect(Math.abs(o1[i]! - o2[i]!)).toBeLessThanOrEqual(tol * mag);
        }
        const c = Float32Array.from({ length: k }, () => rnd() - 0.5);
        const y1 = Float32Array.from({ length: d }, (_, j) => j / d), y2 = y1.slice();
        a.axpy(c, y1, rows); b.axpy(c, y2, rows);
        for (let j = 0; j < d; j++) {
          let ref = j / d, mag = j / d;
          for (let i = 0; i < k; i++) { const r = rows ? rows[i]! : i; ref += c[i]! * stored[r * d + j]!; mag += Math.abs(c[i]! * stored[r * d + j]!); }
          expect(Math.abs(y1[j]! - ref)).toBeLessThanOrEqual(2e-6 * mag);
          expect(Math.abs(y1[j]! - y2[j]!)).toBeLessThanOrEqual(2e-6 * mag);
        }
      }
    } finally { na.dispose(); wa.dispose(); }
  });

  it('threads 2 and 3 give one thread\'s bits; an axpy without its zero rows gives the same bits', () => {
    const arenas = [1, 2, 3].map((t) => nativeArena(t));
    try {
      const ms = arenas.map((ar) => rowMatrix(w, n, d, ar, dtype));
      for (const rows of ROWS) {
        const k = rows ? rows.length : n;
        const outs = ms.map((m) => { const o = new Float32Array(k); m.matvec(x, o, rows); return o; });
        expect(same(outs[0]!, outs[1]!) && same(outs[0]!, outs[2]!)).toBe(true);
        const c = Float32Array.from({ length: k }, (_, i) => (i % 3 === 0 ? 0 : rnd() - 0.5));
        const ys = ms.map((m) => { const y = Float32Array.from({ length: d }, (_, j) => j / d); m.axpy(c, y, rows); return y; });
        expect(same(ys[0]!, ys[1]!) && same(ys[0]!, ys[2]!)).toBe(true);
        // lossless: the nonzero rows alone
        const keep = Array.from({ length: k }, (_, i) => i).filter((i) => c[i] !== 0);
        const ids = Int32Array.from(keep, (i) => (rows ? rows[i]! : i)), cs = Float32Array.from(keep, (i) => c[i]!);
        const z = Float32Array.from({ length: d }, (_, j) => j / d);
        ms[1]!.axpy(cs, z, ids);
        expect(same(z, ys[0]!)).toBe(true);
      }
    } finally { for (const a of arenas) a.dispose(); }
  });
});

// the AVX-512 kernels (rows.c; where the CPU has AVX-512F) against the AVX2 ones: the same bits, at widths whose
// tails are 0, 8, 16 and 24 values past a 32-value step, for every row set, in rows of 1 to 9 at a time
const wideMod = mod && mod.setWide(true) ? mod : null;
if (mod && !wideMod) console.warn('test/decode-native: AVX-512 kernels skipped: this CPU has no AVX-512F');
(wideMod ? describe : describe.skip)('native rows: AVX-512 kernels', () => {
  it.each(['float32', 'float16', 'bfloat16'] as RowDtype[])('%s: the AVX2 kernels\' bits, every tail and row set', (dtype) => {
    for (const dd of [1056, 1064, 1072, 1080]) {
      const nn = 37, w = Float32Array.from({ length: nn * dd }, () => rnd() * 2 - 1), x = Float32Array.from({ length: dd }, () => rnd() * 4 - 2);
      const sets: (Int32Array | undefined)[] = [undefined, Int32Array.from({ length: 9 }, (_, i) => 3 + i), Int32Array.from({ length: 17 }, (_, i) => (i * 11 + 2) % nn),
        Int32Array.from({ length: 20 }, (_, i) => (i * 7 + 1) % nn).sort()];
      const ar = nativeArena(2);
      try {
        const m = rowMatrix(w, nn, dd, ar, dtype);
        for (const rows of sets) {
          const k = rows ? rows.length : nn, c = Float32Array.from({ length: k }, () => rnd() - 0.5);
          const res = [true, false].map((on) => {
            expect(wideMod!.setWide(on)).toBe(on);
            const o = new Float32Array(k), y = Float32Array.from({ length: dd }, (_, j) => j / dd);
            m.matvec(x, o, rows); m.axpy(c, y, rows);
            return { o, y };
          });
          expect(same(res[0]!.o, res[1]!.o)).toBe(true);
          expect(same(res[0]!.y, res[1]!.y)).toBe(true);
          // and not trivially: the outputs are the float64 dot products within float32 rounding
          const stored = wasmRowsF32((m as unknown as { W: WasmRows }).W);
          for (let i = 0; i < k; i++) {
            const r = rows ? rows[i]! : i;
            let ref = 0, mag = 0;
            for (let j = 0; j < dd; j++) { ref += stored[r * dd + j]! * x[j]!; mag += Math.abs(stored[r * dd + j]! * x[j]!); }
            expect(Math.abs(res[0]!.o[i]! - ref)).toBeLessThanOrEqual(2e-5 * mag);
          }
        }
      } finally { wideMod!.setWide(true); ar.dispose(); }
    }
  });
});

run('native rows: formats and bounds', () => {
  // d 1056 / 1064 / 1072 / 1080: the float16 matvec's 32-value steps alone, then with an 8-value tail, a 16-value
  // step, both (the float32 kernel steps 16 values: the same sums in the same order)
  it.each([1056, 1064, 1072, 1080])('float16 and bfloat16 rows give the float32 rows\' bits for the same values (d %i)', (d) => {
    const h = f32ToF16Array(Float32Array.from({ length: n * d }, () => rnd() * 2 - 1));
    const w = f16ToF32Array(h); // the float16 values as float32
    const x = Float32Array.from({ length: d }, () => rnd() * 4 - 2);
    const ar = nativeArena(2);
    try {
      const a = rowMatrix(w, n, d, ar, 'float32'), b = rowMatrix(h, n, d, ar, 'float16');
      const o1 = new Float32Array(n), o2 = new Float32Array(n);
      a.matvec(x, o1); b.matvec(x, o2);
      expect(same(o1, o2)).toBe(true);
      const c = Float32Array.from({ length: n }, () => rnd() - 0.5), y1 = new Float32Array(d), y2 = new Float32Array(d);
      a.axpy(c, y1); b.axpy(c, y2);
      expect(same(y1, y2)).toBe(true);
      // bfloat16 values (the top 16 bits of float32)
      const bw = Float32Array.from(w, (v) => { const u = new Uint32Array(Float32Array.of(v).buffer)[0]! & 0xffff0000; return new Float32Array(Uint32Array.of(u).buffer)[0]!; });
      const e = rowMatrix(bw, n, d, ar, 'float32'), f = rowMatrix(bw, n, d, ar, 'bfloat16');
      e.matvec(x, o1); f.matvec(x, o2);
      expect(same(o1, o2)).toBe(true);
    } finally { ar.dispose(); }
  });

  it('a native arena grows 2 MiB past what it hands out (its bytes lie in huge pages advised before their first touch); a WebAssembly-only one grows to what it needs', () => {
    const na = nativeArena(), wa = createArena()!;
    try {
      for (const bytes of [3 << 20, 100, (5 << 20) + 17, 4096]) {
        const o = na.alloc(bytes, 4096)!, w = wa.alloc(bytes, 4096)!;
        // advise covers the buffer's whole 2 MiB pages: with >= 2 MiB beyond `end`, each written byte is in one
        expect(na.bytes - (o + bytes)).toBeGreaterThanOrEqual(2 << 20);
        expect(wa.bytes - (w + bytes)).toBeLessThan(65536);
      }
    } finally { na.dispose(); wa.dispose(); }
  });

  it('a call out of the arena\'s bounds throws instead of reading past it', () => {
    const ar = nativeArena();
    try {
      const m = rowMatrix(new Float32Array(64 * 32).fill(1), 64, 32, ar, 'float32');
      expect(() => m.matvec(new Float32Array(32), new Float32Array(1), Int32Array.of(1 << 24))).toThrow(/out of the arena's bounds/);
      expect(() => m.matvec(new Float32Array(32), new Float32Array(1), Int32Array.of(-1))).toThrow(/out of the arena's bounds/);
    } finally { ar.dispose(); }
  });
});

run('native decode steps', () => {
  let dir = '';
  beforeAll(async () => {
    await ensureBackend('wasm');
    dir = path.join(tmpDir(), 'llama');
    makeRandomCheckpoint(dir, { family: 'llama', layers: 2, hidden: 128, ffn: 512, heads: 4, kvHeads: 2, vocab: 512, dtype: 'F16', seed: 5 });
  });
  const sparse = (layers: number): DecodeModes => ({
    mlp: Array.from({ length: layers }, (_, l) => { const ids = Int32Array.from({ length: 96 }, (_, i) => (i * 5 + l) % 512).sort(); return { mode: 'select' as const, pick: () => ids }; }),
    heads: Array.from({ length: layers }, () => ({ mode: 'select' as const, pick: () => Int32Array.of(0, 3) })),
  });
  const steps = (kernels: 'native' | 'wasm', threads: number, dtype: RowDtype, modes: (l: number) => DecodeModes) => {
    const model = loadModel(dir, { decode: { kernels, threads, dtype } });
    try {
      expect(model.decode!.kernel).toBe(kernels === 'native' ? 'native' : 'wasm-simd');
      const s = new DecodeSession(model, modes(model.config.layers), 1);
      try { return [3, 70, 11, 400, 9, 28, 301].map((id) => s.step([id])); } finally { s.dispose(); }
    } finally { model.dispose(); }
  };
  it.each(['float16', 'q8_0'] as RowDtype[])('%s: the logits equal the WebAssembly runtime\'s within float32 rounding; threads 2 == 1 bit for bit', (dtype) => {
    for (const modes of [denseModes, sparse]) {
      const a = steps('native', 1, dtype, modes), b = steps('native', 2, dtype, modes), c = steps('wasm', 1, dtype, modes);
      a.forEach((l, t) => {
        expect(same(l, b[t]!)).toBe(true);
        // q8_0 quantizes each matvec's input to int16 per 32 values: a last-bit difference upstream can move one
        // input by a step (max|x| / 32767), so its bound is that step's size, not float32 rounding
        const top = Math.max(...Array.from(c[t]!, Math.abs)), tol = dtype === 'q8_0' ? 2e-4 : 1e-5;
        for (let i = 0; i < l.length; i++) expect(Math.abs(l[i]! - c[t]![i]!)).toBeLessThanOrEqual(tol * top);
      });
    }
  });

  it('threads auto keeps one thread for a model this small; a process on two native threads exits by itself, disposed or not', () => {
    const m = loadModel(dir, { decode: { threads: 'auto', kernels: 'native' } });
    expect(m.decode!.threads).toBe(1);
    m.dispose();
    const dist = path.join(import.meta.dirname, '..', 'dist');
    for (const dispose of [true, false]) {
      const code = `import { ensureBackend } from '${dist}/backend.js'; import { loadModel } from '${dist}/model/model.js'; import { DecodeSession, denseModes } from '${dist}/runtime/decoder.js';
        await ensureBackend('wasm'); const m = loadModel(${JSON.stringify(dir)}, { decode: { threads: 2, kernels: 'native' } });
        const s = new DecodeSession(m, denseModes(m.config.layers), 1); s.step([5]); s.dispose();
        console.log('ran', m.decode.kernel, m.decode.threads); ${dispose ? 'm.dispose();' : ''}`;
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: 60_000 });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain('ran native 2');
    }
  });

  it('kernels native where they are turned off: exit 2 naming why; an unknown kernels value: a UserError', () => {
    const cli = path.join(import.meta.dirname, '..', 'bin', 'dejavu.js');
    const r = spawnSync(process.execPath, [cli, 'generate', '--model', path.join(import.meta.dirname, '..', 'checkpoints', 'llama-fixture'), '--prompt', 'Call me', '--max-tokens', '2', '--kernels', 'native'], { encoding: 'utf8', env: { ...process.env, DEJAVU_NATIVE: '0' } });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/native decode kernels are not available: DEJAVU_NATIVE=0/);
    expect(() => loadModel(dir, { decode: { kernels: 'avx' as never } })).toThrow(/decode kernels "avx" is not understood/);
  });
});

run('native SiLU', () => {
  it('equals x / (1 + e^-x) in float64 within 4 float32 ulps; a value gets the same bits alone, in a tail or in a vector; times a: the same product', () => {
    const N = 40_003, g = new Float32Array(N), a = new Float32Array(N);
    for (let i = 0; i < N; i++) { g[i] = i % 7 === 0 ? (rnd() - 0.5) * 1e-3 : (rnd() - 0.5) * 60; a[i] = rnd() * 4 - 2; }
    g[0] = 0; g[1] = -0; g[2] = 87; g[3] = -87; g[4] = 120; g[5] = -120;
    const out = new Float32Array(N), prod = new Float32Array(N);
    mod!.silu(g, null, out, N);
    mod!.silu(g, a, prod, N);
    let worst = 0;
    for (let i = 0; i < N; i++) {
      const x = g[i]!, ref = x / (1 + Math.exp(-x));
      if (Math.abs(ref) > 1e-30) worst = Math.max(worst, Math.abs(out[i]! - ref) / Math.abs(ref));
      expect(Object.is(prod[i], Math.fround(out[i]! * a[i]!)), `silu(g) * a at ${i}`).toBe(true);
    }
    expect(worst, 'relative error (an ulp is 2^-24 to 2^-23 of the value)').toBeLessThan(4 * 2 ** -23);
    expect([out[0], out[2], out[4]]).toEqual([0, Math.fround(87 / (1 + Math.exp(-87))), 120]);
    expect(Math.abs(out[5]!)).toBeLessThan(1e-35);
    // tails: the values at 37..39 computed as a 3-value call equal the long call's
    for (const [o, k] of [[37, 3], [8, 8], [13, 1], [N - 5, 5]] as const) {
      const part = new Float32Array(k);
      mod!.silu(g.subarray(o, o + k), null, part, k);
      expect(same(part, out.subarray(o, o + k)), `values ${o}..${o + k}`).toBe(true);
    }
    expect(() => mod!.silu(g, null, new Float32Array(4), 8)).toThrow(/past an array/);
  });
});

run('native q8_0 quantization (load)', () => {
  it('gives quantizeQ8\'s bits from float32 values and from float16 bits (ties, zeros, tiny blocks); a non-finite value: false, and toWasmRows keeps such rows float32', () => {
    const N = 32 * 3000, w = new Float32Array(N);
    for (let i = 0; i < N; i++) w[i] = i % 101 === 0 ? 0 : (rnd() * 2 - 1) * (i % 320 < 32 ? 1e-6 : 3);
    for (let b = 0; b < 40; b++) { w[b * 32] = 1.27; w[b * 32 + 3] = (b % 2 ? 1 : -1) * 0.005; } // exact halves of a step: ties
    w.fill(0, 32 * 7, 32 * 8); // an all-zero block: scale 0
    for (const src of [w, f32ToF16Array(w)]) {
      const q1 = new Int8Array(N), s1 = new Float32Array(N / 32), q2 = new Int8Array(N), s2 = new Float32Array(N / 32);
      quantizeQ8(src instanceof Uint16Array ? f16ToF32Array(src) : src, q1, s1);
      expect(mod!.q8(src, q2, s2)).toBe(true);
      expect(Buffer.from(q1.buffer).equals(Buffer.from(q2.buffer)), `${src.constructor.name}: q`).toBe(true);
      expect(same(s1, s2), `${src.constructor.name}: scales`).toBe(true);
    }
    expect(q8Ties(w), 'the tie blocks reach .5 steps').toBeGreaterThan(0);
    const bad = w.slice(0, 32 * 64); bad[32 * 10 + 4] = Infinity;
    expect(mod!.q8(bad, new Int8Array(bad.length), new Float32Array(bad.length / 32))).toBe(false);
    expect(toWasmRows(bad, 64, 32, nativeArena(), 'q8_0')!.dtype).toBe('float32');
    const good = toWasmRows(w.subarray(0, 32 * 64), 64, 32, nativeArena(), 'q8_0')!;
    expect(good.dtype).toBe('q8_0');
  });
});

/** how many values of w sit exactly on half a quantization step of their block (the rounding's ties) */
function q8Ties(w: Float32Array): number {
  let n = 0;
  for (let b = 0; b < w.length / 32; b++) {
    let m = 0; for (let j = 0; j < 32; j++) m = Math.max(m, Math.abs(w[b * 32 + j]!));
    const inv = m > 0 ? 1 / Math.fround(m / 127) : 0;
    for (let j = 0; j < 32; j++) { const x = w[b * 32 + j]! * inv; if (Math.abs(x - Math.floor(x) - 0.5) < 1e-9) n++; }
  }
  return n;
}

