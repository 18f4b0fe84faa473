/**
 * The forward pass's host SIMD kernels against references written here: attention (attentionHost: four-query tiles
 * plus single queries) against float64, with causal masks, left padding, cached positions with holes, T not a
 * multiple of 4, queries that see no key, several head widths; a collection batch's activation bits and statistics
 * (activationBits, SIMD and JS) against a per-value loop, with zeros, negatives, -0, NaN, Inf and lengths not a multiple of 8.
 */
import { describe, expect, it } from 'vitest';
import { activationBits, attentionHost } from '../src/model/kernels/wasm/kernels.js';

function reference(q: Float32Array, k: Float32Array, v: Float32Array, B: number, H: number, T: number, S: number, hd: number, km: number[][], P: number, scale: number): Float64Array {
  const out = new Float64Array(B * H * T * hd);
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let t = 0; t < T; t++) {
    const vis: number[] = [];
    for (let s = 0; s <= P + t; s++) if (km[b]![s]) vis.push(s);
    if (!vis.length) continue;
    const qo = ((b * H + h) * T + t) * hd;
    const sc = vis.map((s) => { let d = 0; const ko = ((b * H + h) * S + s) * hd; for (let i = 0; i < hd; i++) d += q[qo + i]! * k[ko + i]!; return d * scale; });
    const mx = Math.max(...sc);
    const e = sc.map((x) => Math.exp(x - mx));
    const z = e.reduce((a, x) => a + x, 0);
    vis.forEach((s, j) => { const vo = ((b * H + h) * S + s) * hd; for (let i = 0; i < hd; i++) out[qo + i]! += (e[j]! / z) * v[vo + i]!; });
  }
  return out;
}

describe('attentionHost', () => {
  let seed = 12345;
  const rnd = () => { seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0; return seed / 4294967296; };
  // [B, H, T, P (cached), hd, left padding of row 0]
  const cases: [number, number, number, number, number, number][] = [
    [2, 3, 13, 0, 32, 3], [1, 2, 4, 0, 8, 0], [3, 2, 7, 5, 16, 2], [2, 4, 64, 0, 32, 0], [1, 1, 1, 3, 8, 0], [2, 2, 9, 0, 64, 9], [1, 2, 6, 4, 16, 5]];
  it.each(cases)('B %i, H %i, T %i, P %i, hd %i, padding %i: equals the float64 reference', (B, H, T, P, hd, pad) => {
    const S = P + T;
    const q = Float32Array.from({ length: B * H * T * hd }, () => rnd() * 4 - 2);
    const k = Float32Array.from({ length: B * H * S * hd }, () => rnd() * 4 - 2);
    const v = Float32Array.from({ length: B * H * S * hd }, () => rnd() * 2 - 1);
    // row 0: the first `pad` new positions are padding (its first queries see only the cache, or nothing); other rows:
    // holes in the cache
    const km = Array.from({ length: B }, (_, b) => Array.from({ length: S }, (_, s) => (b === 0 ? (s < P || s >= P + pad ? 1 : 0) : s < P && rnd() < 0.3 ? 0 : 1)));
    const scale = 1 / Math.sqrt(hd);
    const got = attentionHost(q, k, v, B, H, T, S, hd, km, P, scale);
    expect(got).not.toBeNull();
    const want = reference(q, k, v, B, H, T, S, hd, km, P, scale);
    let err = 0, scaleRef = 0;
    for (let i = 0; i < want.length; i++) { err = Math.max(err, Math.abs(got![i]! - want[i]!)); scaleRef = Math.max(scaleRef, Math.abs(want[i]!)); }
    expect(scaleRef).toBeGreaterThan(0.05);
    expect(err).toBeLessThan(2e-6);
    // a query that sees no key gets a zero context
    if (pad && !P) for (let i = 0; i < hd; i++) expect(got![i]).toBe(0);
  });
});

describe('activationBits', () => {
  let seed = 777;
  const rnd = () => { seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0; return seed / 4294967296; };
  const cases: [string, number, (i: number) => number][] = [
    ['relu-like', 4096, () => (rnd() < 0.6 ? 0 : rnd() * 3)],
    ['signed, length % 8 = 5', 1029, () => rnd() * 4 - 2],
    ['-0, +0 and tiny values', 64, (i) => [0, -0, 1e-30, -1e-30][i % 4]!],
    ['one NaN', 100, (i) => (i === 37 ? NaN : rnd())],
    ['one Infinity in the tail', 13, (i) => (i === 12 ? Infinity : rnd())],
    ['all negative', 16, () => -rnd() - 0.1],
  ];
  it.each(cases.flatMap(([name, n, gen]) => [true, false].map((simd) => [`${name}, ${simd ? 'SIMD' : 'JS'}`, n, gen, simd] as const)))('%s: bits, count, |act| sum and max as a per-value loop', (_name, n, gen, simd) => {
    const act = Float32Array.from({ length: n }, (_, i) => gen(i));
    const bits = new Uint8Array(Math.ceil(n / 8));
    const got = activationBits(act, bits, { simd });
    const want = new Uint8Array(bits.length);
    let active = 0, absSum = 0, maxAbs = 0, nan = false;
    for (let i = 0; i < n; i++) {
      const a = act[i]!;
      if (a > 0) { want[i >> 3]! |= 1 << (i & 7); active++; }
      absSum += Math.abs(a);
      if (a !== a) nan = true; else maxAbs = Math.max(maxAbs, Math.abs(a));
    }
    expect(Array.from(bits)).toEqual(Array.from(want));
    expect(got!.active).toBe(active);
    if (nan) { expect(got!.absSum).toBeNaN(); expect(got!.maxAbs).toBeNaN(); return; }
    expect(got!.maxAbs).toBe(maxAbs);
    if (Number.isFinite(absSum)) expect(Math.abs(got!.absSum - absSum)).toBeLessThanOrEqual(1e-12 * absSum);
    else expect(got!.absSum).toBe(absSum);
  });
});
