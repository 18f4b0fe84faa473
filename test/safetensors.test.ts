/**
 * safetensors: round trips per dtype, every header validation failure on hand-crafted bytes, and the IEEE half /
 * bfloat16 conversions against independent float64 computations.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MAX_HEADER_BYTES, openSafetensors, readTensorF32, readTensorInt, writeSafetensors } from '../src/checkpoint/safetensors.js';
import { UserError } from '../src/util/errors.js';
import { bf16ToF32Array, f16ToF32Array, f32ToBf16Array, f32ToF16, f32ToF16Array } from '../src/util/half.js';
import { tmpDir } from './helpers.js';

const TMP = tmpDir('dejavu-safetensors-');
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));
let counter = 0;
const fresh = (name = 'x.safetensors') => path.join(TMP, `${counter++}-${name}`);

/** 8-byte little-endian header length + header + data, written to a fresh file */
function craft(header: string | object, data: number | Uint8Array = 0, lenOverride?: bigint): string {
  const h = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lenOverride ?? BigInt(h.length));
  const body = typeof data === 'number' ? Buffer.alloc(data, 7) : Buffer.from(data);
  const file = fresh();
  fs.writeFileSync(file, Buffer.concat([len, h, body]));
  return file;
}
function craftRaw(bytes: Uint8Array): string {
  const file = fresh();
  fs.writeFileSync(file, bytes);
  return file;
}

/** opening `file` fails with a UserError whose message names the file and matches every pattern */
function expectInvalid(file: string, ...patterns: (RegExp | string)[]): UserError {
  let err: unknown;
  try { openSafetensors(file); } catch (e) { err = e; }
  expect(err, 'should throw').toBeInstanceOf(UserError);
  const msg = (err as UserError).message;
  expect(msg).toContain(file);
  for (const p of patterns) {
    if (typeof p === 'string') expect(msg).toContain(p);
    else expect(msg).toMatch(p);
  }
  return err as UserError;
}

const t = (dtype: string, shape: unknown, data_offsets: unknown) => ({ dtype, shape, data_offsets });

describe('round trip', () => {
  it('F32, F16, BF16, I64, I32, U8 with metadata; header padded to 8 bytes; laid out in order', () => {
    const file = fresh('rt.safetensors');
    const f32 = Float32Array.from([0, -0, 1.5, -2.25, 3.4028234663852886e38, 1e-45, Math.fround(Math.PI)]);
    const halfExact = [0, 1, -2, 0.5, 65504, -65504, 2 ** -24, 2 ** -14, 1 + 2 ** -10, 1023 / 1024 * 2 ** -14];
    const bfExact = [0, 1, -2, 0.5, 2 ** 100, -(2 ** -100), 1 + 2 ** -7, 3.3895313892515355e38];
    const i64 = [0, -1, 2 ** 40, -(2 ** 40) + 3, 9007199254740991, -9007199254740991];
    const i32 = [0, 1, -1, 16777217, 2147483647, -2147483648];
    writeSafetensors(file, {
      a32: { dtype: 'F32', shape: [7], data: f32 },
      h: { dtype: 'F16', shape: [2, 5], data: Float32Array.from(halfExact) },
      hRaw: { dtype: 'F16', shape: [3], data: Uint16Array.from([0x3c00, 0x8001, 0x7bff]) },
      b: { dtype: 'BF16', shape: [8, 1], data: Float32Array.from(bfExact) },
      l: { dtype: 'I64', shape: [3, 2], data: i64 },
      i: { dtype: 'I32', shape: [6], data: Int32Array.from(i32) },
      u: { dtype: 'U8', shape: [2, 2], data: Uint8Array.from([0, 1, 128, 255]) },
      empty: { dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
    }, { format: 'pt', note: 'hi' });
    const buf = fs.readFileSync(file);
    const hlen = Number(buf.readBigUInt64LE(0));
    expect(hlen % 8).toBe(0);
    const st = openSafetensors(file);
    expect(st.metadata).toEqual({ format: 'pt', note: 'hi' });
    expect(st.fileSize).toBe(buf.length);
    expect([...st.tensors.keys()]).toEqual(['a32', 'h', 'hRaw', 'b', 'l', 'i', 'u', 'empty']);
    expect(st.tensors.get('a32')!.begin).toBe(8 + hlen);
    expect(st.tensors.get('h')).toMatchObject({ dtype: 'F16', shape: [2, 5], begin: 8 + hlen + 28, end: 8 + hlen + 48 });
    expect(st.tensors.get('l')!.end - st.tensors.get('l')!.begin).toBe(48);
    expect(Array.from(readTensorF32(st, 'a32'))).toEqual(Array.from(f32));
    expect(Object.is(readTensorF32(st, 'a32')[1], -0)).toBe(true);
    expect(Array.from(readTensorF32(st, 'h'))).toEqual(halfExact);
    expect(Array.from(readTensorF32(st, 'hRaw'))).toEqual([1, -(2 ** -24), 65504]);
    expect(Array.from(readTensorF32(st, 'b'))).toEqual(bfExact);
    expect(readTensorInt(st, 'l')).toEqual(i64);
    expect(readTensorInt(st, 'i')).toEqual(i32);
    expect(readTensorInt(st, 'u')).toEqual([0, 1, 128, 255]);
    expect(readTensorF32(st, 'empty').length).toBe(0);
    // the raw bytes are the little-endian encodings
    const off = st.tensors.get('i')!.begin;
    expect(buf.readInt32LE(off + 12)).toBe(16777217);
    expect(buf.readBigInt64LE(st.tensors.get('l')!.begin + 16)).toBe(2n ** 40n);
    expect(buf.readUInt16LE(st.tensors.get('hRaw')!.begin + 2)).toBe(0x8001);
    expect(() => readTensorF32(st, 'nope')).toThrow(UserError);
  });

  it('F16 / BF16 writes round to nearest even', () => {
    const file = fresh();
    writeSafetensors(file, {
      h: { dtype: 'F16', shape: [3], data: [1 + 2 ** -11, 1 + 3 * 2 ** -11, 70000] },
      b: { dtype: 'BF16', shape: [2], data: [1 + 2 ** -8, 1 + 3 * 2 ** -8] },
    });
    const st = openSafetensors(file);
    expect(Array.from(readTensorF32(st, 'h'))).toEqual([1, 1 + 2 ** -9, Infinity]);
    expect(Array.from(readTensorF32(st, 'b'))).toEqual([1, 1 + 2 ** -6]);
  });

  it('a writer-produced file is accepted byte for byte by a hand-written equivalent', () => {
    // the same content crafted by hand (no padding) opens and reads identically
    const data = new Uint8Array(new Float32Array([1, 2, 3]).buffer);
    const file = craft({ __metadata__: { a: 'b' }, x: t('F32', [3], [0, 12]) }, data);
    const st = openSafetensors(file);
    expect(Array.from(readTensorF32(st, 'x'))).toEqual([1, 2, 3]);
    expect(st.metadata).toEqual({ a: 'b' });
  });
});

describe('validation failures are UserErrors naming the file (and tensor)', () => {
  it('missing file', () => {
    const f = path.join(TMP, 'does-not-exist.safetensors');
    expect(() => openSafetensors(f)).toThrow(UserError);
    expect(() => openSafetensors(f)).toThrow(f);
  });

  it('file shorter than 8 bytes', () => {
    expectInvalid(craftRaw(new Uint8Array(0)), /0 bytes, shorter than the 8-byte/);
    expectInvalid(craftRaw(new Uint8Array([2, 0, 0, 0, 0])), /5 bytes, shorter than the 8-byte/);
  });

  it('header length past the end of the file', () => {
    expectInvalid(craft('{}', 0, 3n), /header length 3 runs past the end of the file \(10 bytes\)/);
    expectInvalid(craft('{"a":1}', 16, 1000n), /header length 1000 runs past the end/);
  });

  it('header length over the limit (without reading or allocating it)', () => {
    expectInvalid(craft('{}', 0, BigInt(MAX_HEADER_BYTES) + 1n), /exceeds the limit of 100000000 bytes/);
    expectInvalid(craft('{}', 0, 2n ** 64n - 1n), /header length 18446744073709551615 exceeds the limit/);
  });

  it('header is not valid JSON / not UTF-8', () => {
    expectInvalid(craft('{"a": {', 0), /not valid UTF-8 JSON/);
    expectInvalid(craft('', 0), /not valid UTF-8 JSON/);
    const len = Buffer.alloc(8); len.writeBigUInt64LE(4n);
    expectInvalid(craftRaw(Buffer.concat([len, Buffer.from([0x22, 0xff, 0xfe, 0x22])])), /not valid UTF-8 JSON/);
  });

  it('header is not a JSON object', () => {
    for (const h of ['[1, 2]', '42', 'null', '"str"', 'true']) expectInvalid(craft(h, 0), /header is not a JSON object/);
  });

  it('__metadata__ must be an object of strings', () => {
    expectInvalid(craft({ __metadata__: { a: 1 } }, 0), /__metadata__/);
    expectInvalid(craft({ __metadata__: ['a'] }, 0), /__metadata__/);
  });

  it('a tensor entry that is not an object', () => {
    expectInvalid(craft({ w: 5 }, 0), '"w"', /not an object/);
    expectInvalid(craft({ w: null }, 0), '"w"', /not an object/);
  });

  it('unknown dtype', () => {
    expectInvalid(craft({ w: t('F8', [1], [0, 1]) }, 1), 'tensor "w"', /unknown dtype "F8"/);
    expectInvalid(craft({ w: t('f32', [1], [0, 4]) }, 4), 'tensor "w"', /unknown dtype "f32"/);
    expectInvalid(craft({ w: { shape: [1], data_offsets: [0, 4] } }, 4), 'tensor "w"', /unknown dtype/);
  });

  it('bad shape', () => {
    for (const shape of [[-1], [1.5], '3', null, [2, 'a'], [2 ** 60]])
      expectInvalid(craft({ w: t('F32', shape, [0, 4]) }, 4), 'tensor "w"', /shape .* is not a list of non-negative integers/);
    expectInvalid(craft({ w: { dtype: 'F32', data_offsets: [0, 4] } }, 4), 'tensor "w"', /shape/);
  });

  it('bad data_offsets', () => {
    for (const off of [[4, 0], [0], [0, 4, 8], [-4, 0], [0, 4.5], 'x', null])
      expectInvalid(craft({ w: t('F32', [1], off) }, 4), 'tensor "w"', /data_offsets/);
  });

  it('byte span != numel x dtype size', () => {
    expectInvalid(craft({ w: t('F32', [2], [0, 4]) }, 4), 'tensor "w"', /byte span 4 != numel 2 x 4 bytes \(F32\) = 8/);
    expectInvalid(craft({ w: t('BF16', [3, 2], [0, 16]) }, 16), 'tensor "w"', /byte span 16 != numel 6 x 2 bytes \(BF16\) = 12/);
    expectInvalid(craft({ w: t('I64', [0], [0, 8]) }, 8), 'tensor "w"', /byte span 8 != numel 0/);
  });

  it('offsets past the data buffer', () => {
    expectInvalid(craft({ w: t('F32', [2], [0, 8]) }, 6), 'tensor "w"', /data_offsets end 8 is past the data buffer \(6 bytes\)/);
    expectInvalid(craft({ a: t('F32', [1], [0, 4]), b: t('F32', [1], [4, 8]) }, 4), 'tensor "b"', /past the data buffer/);
  });

  it('overlapping tensors', () => {
    expectInvalid(craft({ a: t('F32', [2], [0, 8]), b: t('F32', [2], [4, 12]) }, 12), 'tensor "b"', /overlaps the previous tensor/);
    // the same span twice
    expectInvalid(craft({ a: t('F32', [1], [0, 4]), b: t('U8', [4], [0, 4]) }, 4), /overlaps/);
  });

  it('a hole in the data buffer', () => {
    expectInvalid(craft({ a: t('F32', [1], [0, 4]), b: t('F32', [1], [8, 12]) }, 12), /hole in the data buffer before tensor "b" \(bytes 4\.\.8 unused\)/);
    expectInvalid(craft({ b: t('F32', [1], [4, 8]) }, 8), /hole .* before tensor "b" \(bytes 0\.\.4/);
  });

  it('trailing bytes, and a truncated file', () => {
    expectInvalid(craft({ a: t('F32', [1], [0, 4]) }, 6), /data buffer is 6 bytes but the tensors cover 4 \(trailing bytes or truncated file\)/);
    expectInvalid(craft({}, 3), /data buffer is 3 bytes but the tensors cover 0/);
    // a valid file cut short
    const good = fresh();
    writeSafetensors(good, { a: { dtype: 'F32', shape: [4], data: [1, 2, 3, 4] }, b: { dtype: 'F32', shape: [2], data: [5, 6] } });
    const bytes = fs.readFileSync(good);
    expect(() => openSafetensors(good)).not.toThrow();
    expectInvalid(craftRaw(bytes.subarray(0, bytes.length - 1)), 'tensor "b"', /past the data buffer/);
    expectInvalid(craftRaw(bytes.subarray(0, 20)), /runs past the end of the file/);
  });

  it('an empty header with no data is a valid (empty) file', () => {
    const st = openSafetensors(craft({}, 0));
    expect(st.tensors.size).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------------------- half

/** independent decode of IEEE binary16 bits in float64 */
function halfValue(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 31, m = h & 1023;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (e === 0 ? m / 1024 * 2 ** -14 : (1 + m / 1024) * 2 ** (e - 15));
}

/** independent float64 rounding of a (float32-exact) value to the nearest binary16 value, ties to even */
function roundToHalf(v: number): number {
  if (Number.isNaN(v)) return NaN;
  if (!Number.isFinite(v)) return v;
  const a = Math.abs(v);
  if (a === 0) return v;
  const e = Math.max(-14, Math.floor(Math.log2(a)));
  const ulp = 2 ** (e - 10);
  const q = a / ulp; // exact: a power-of-two scaling
  let r = Math.floor(q);
  const frac = q - r;
  if (frac > 0.5 || (frac === 0.5 && r % 2 === 1)) r++;
  const out = r * ulp;
  return Math.sign(v) * (out >= 65536 ? Infinity : out);
}

/** independent float64 rounding to bfloat16 (8 significant bits), ties to even */
function roundToBf16(v: number): number {
  if (!Number.isFinite(v) || v === 0) return v;
  const a = Math.abs(v);
  const e = Math.max(-126, Math.floor(Math.log2(a)));
  const ulp = 2 ** (e - 7);
  const q = a / ulp;
  let r = Math.floor(q);
  const frac = q - r;
  if (frac > 0.5 || (frac === 0.5 && r % 2 === 1)) r++;
  const out = r * ulp;
  return Math.sign(v) * (out >= 2 ** 128 ? Infinity : out);
}

function seededF32(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  const u = new Uint32Array(out.buffer);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; u[i] = s; }
  return out;
}

describe('IEEE half and bfloat16 conversions', () => {
  it('f16 -> f32 decodes every one of the 65536 bit patterns like the float64 formula', () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const dec = f16ToF32Array(all);
    for (let h = 0; h < 65536; h++) {
      const want = halfValue(h);
      if (Number.isNaN(want)) expect(Number.isNaN(dec[h]!), `0x${h.toString(16)}`).toBe(true);
      else if (!Object.is(dec[h], want)) expect(dec[h], `0x${h.toString(16)}`).toBe(want);
    }
  });

  it('f32 -> f16 -> f32 is the identity on every non-NaN half value, and keeps the bits', () => {
    let checked = 0;
    for (let h = 0; h < 65536; h++) {
      const v = halfValue(h);
      if (Number.isNaN(v)) continue;
      const back = f32ToF16(v);
      if (back !== h) expect(`0x${back.toString(16)}`, `value ${v}`).toBe(`0x${h.toString(16)}`);
      checked++;
    }
    expect(checked).toBe(65536 - 2 * 1023);
  });

  it('edge cases: zeros, subnormals, max, overflow, NaN, Inf', () => {
    const cases: [number, number][] = [
      [0, 0x0000], [-0, 0x8000], [1, 0x3c00], [-2, 0xc000],
      [2 ** -24, 0x0001], [-(2 ** -24), 0x8001], [1023 * 2 ** -24, 0x03ff], [2 ** -14, 0x0400],
      [65504, 0x7bff], [-65504, 0xfbff], [65519, 0x7bff], [65520, 0x7c00], [1e6, 0x7c00], [-1e6, 0xfc00],
      [Infinity, 0x7c00], [-Infinity, 0xfc00], [3.4028234663852886e38, 0x7c00],
      [2 ** -25, 0x0000], [-(2 ** -25), 0x8000], [Math.fround(2 ** -25 * 1.0000001), 0x0001], [2 ** -26, 0x0000], [1e-45, 0x0000],
      [3 * 2 ** -25, 0x0002], [5 * 2 ** -25, 0x0002], [7 * 2 ** -25, 0x0004],
      [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [1 + 2 ** -11 + 2 ** -20, 0x3c01],
      [2047 * 2 ** -25, 0x0400], // the largest subnormal's upper tie rounds to the smallest normal
      [2 ** -14 - 2 ** -25, 0x0400],
    ];
    for (const [v, bits] of cases) {
      const got = f32ToF16(v);
      expect(`0x${got.toString(16).padStart(4, '0')}`, `f32ToF16(${v})`).toBe(`0x${bits.toString(16).padStart(4, '0')}`);
      // and the independent rounding agrees on the value
      const ref = roundToHalf(Math.fround(v));
      expect(Object.is(halfValue(bits), ref), `roundToHalf(${v}) = ${ref}`).toBe(true);
    }
    for (const nan of [NaN, -NaN]) {
      const h = f32ToF16(nan);
      expect((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0).toBe(true);
      expect(Number.isNaN(f16ToF32Array(Uint16Array.of(h))[0]!)).toBe(true);
    }
  });

  it('f32ToF16Array (one loop over the bits, a branch-free path for normal halves) equals f32ToF16 value by value', () => {
    // every 4099th bit pattern, plus every pattern within 4096 of the fast path's bounds (2^-14, 65520) and of Inf
    const u: number[] = [];
    for (let x = 0; x < 2 ** 32; x += 4099) u.push(x);
    for (const b of [0x38800000, 0x477ff000, 0x477fe000, 0x7f800000]) for (let k = -4096; k <= 4096; k++) u.push((b + k) >>> 0, ((b + k) | 0x80000000) >>> 0);
    const bits = Uint32Array.from(u), f = new Float32Array(bits.buffer);
    const got = f32ToF16Array(f);
    let bad = 0, first = '';
    for (let i = 0; i < f.length; i++) {
      const want = f32ToF16(f[i]!);
      if (got[i] !== want) { bad++; first ||= `0x${bits[i]!.toString(16)}: 0x${got[i]!.toString(16)} vs 0x${want.toString(16)}`; }
    }
    expect(bad, first).toBe(0);
    expect(f.length).toBeGreaterThan(1_000_000);
  });

  it('f32 -> f16 matches the float64 round-to-nearest-even on 200k random float32 bit patterns', () => {
    const xs = seededF32(200_000, 99);
    // plus values concentrated in the half range and exact ties
    const extra = Float32Array.from({ length: 20_000 }, (_, i) => Math.fround((i % 2 ? -1 : 1) * (2 ** ((i % 45) - 26)) * (1 + ((i * 7919) % 2048) / 2048)));
    const enc = f32ToF16Array(xs), enc2 = f32ToF16Array(extra);
    for (const [src, e] of [[xs, enc], [extra, enc2]] as const) {
      let bad = 0, first = '';
      for (let i = 0; i < src.length; i++) {
        const want = roundToHalf(src[i]!);
        const got = halfValue(e[i]!);
        const ok = Number.isNaN(want) ? Number.isNaN(got) : Object.is(got, want);
        if (!ok) { bad++; if (!first) first = `${src[i]} -> ${got}, want ${want}`; }
      }
      expect(bad, first).toBe(0);
    }
  });

  it('bfloat16: decode, round to nearest even, NaN stays NaN, overflow to Inf', () => {
    for (let h = 0; h < 65536; h++) {
      const v = bf16ToF32Array(Uint16Array.of(h))[0]!;
      if (Number.isNaN(v)) continue;
      const back = f32ToBf16Array([v])[0]!;
      if (back !== h) expect(back, `0x${h.toString(16)}`).toBe(h);
    }
    const xs = seededF32(100_000, 7);
    const got = bf16ToF32Array(f32ToBf16Array(xs));
    for (let i = 0; i < xs.length; i++) {
      const want = roundToBf16(xs[i]!);
      if (Number.isNaN(xs[i]!)) expect(Number.isNaN(got[i]!)).toBe(true);
      else if (!Object.is(got[i], want)) expect(got[i], `${xs[i]}`).toBe(want);
    }
    const b = (v: number) => bf16ToF32Array(f32ToBf16Array([v]))[0]!;
    expect(b(1 + 2 ** -8)).toBe(1);
    expect(b(1 + 3 * 2 ** -8)).toBe(1 + 2 ** -6);
    expect(b(3.4028234663852886e38)).toBe(Infinity);
    expect(Object.is(b(-0), -0)).toBe(true);
    // a NaN whose payload lives only in the low 16 bits must not become Inf
    const nan = new Float32Array(new Uint32Array([0x7f800001]).buffer)[0]!;
    expect(Number.isNaN(b(nan))).toBe(true);
  });
});
