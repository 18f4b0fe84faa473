// The q8_0 matvec's inner loop two ways, one thread, a 5632 x 2048 int8 matrix: int8 x int16 (i32x4.dot_i16x8_s, as
// kernels.wat ships it) and relaxed SIMD's int8 x 7-bit dot-add (i32x4.relaxed_dot_i8x16_i7x16_add_s). Only the
// instruction mix is compared (scales fixed, random values), to see what relaxed SIMD could buy (docs/decode-runtime.md).
//   node --experimental-wasm-relaxed-simd scripts/relaxed-simd-probe.mjs
import wabtInit from 'wabt';
// one row loop, two inner bodies (32 values a step: the block's int32 sums $s, then scaled into $acc); xStep: input bytes a step
const kernel = (name, inner, xStep) => `
  (func (export "${name}") (param $W i32) (param $rows i32) (param $d i32) (param $x i32) (param $out i32)
    (local $r i32) (local $j i32) (local $wp i32) (local $xp i32) (local $w v128) (local $s v128) (local $acc v128)
    (block $done (loop $rl
      (br_if $done (i32.ge_u (local.get $r) (local.get $rows)))
      (local.set $wp (i32.add (local.get $W) (i32.mul (local.get $r) (local.get $d))))
      (local.set $xp (local.get $x)) (local.set $acc (v128.const i32x4 0 0 0 0)) (local.set $j (i32.const 0))
      (block $eb (loop $bl
        (br_if $eb (i32.ge_u (local.get $j) (local.get $d)))
        ${inner}
        (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul (f32x4.convert_i32x4_s (local.get $s)) (f32x4.splat (f32.const 1.5)))))
        (local.set $j (i32.add (local.get $j) (i32.const 32)))
        (local.set $xp (i32.add (local.get $xp) (i32.const ${xStep})))
        (br $bl)))
      (f32.store (i32.add (local.get $out) (i32.shl (local.get $r) (i32.const 2))) (f32x4.extract_lane 0 (local.get $acc)))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $rl))))`;
// as shipped: x as int16, w's int8 widened to int16
const I16 = `(local.set $w (v128.load (i32.add (local.get $wp) (local.get $j))))
        (local.set $s (i32x4.add (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $w)) (v128.load (local.get $xp)))
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $w)) (v128.load offset=16 (local.get $xp)))))
        (local.set $w (v128.load offset=16 (i32.add (local.get $wp) (local.get $j))))
        (local.set $s (i32x4.add (local.get $s) (i32x4.add (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $w)) (v128.load offset=32 (local.get $xp)))
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $w)) (v128.load offset=48 (local.get $xp))))))`;
// relaxed: x as 7-bit unsigned bytes, one dot-add per 16 values
const RX = `(local.set $s (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load (i32.add (local.get $wp) (local.get $j))) (v128.load (local.get $xp)) (v128.const i32x4 0 0 0 0)))
        (local.set $s (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=16 (i32.add (local.get $wp) (local.get $j))) (v128.load offset=16 (local.get $xp)) (local.get $s)))`;
const WAT = `(module (memory (export "memory") 1 65536) ${kernel('q8_i16', I16, 64)} ${kernel('q8_rx', RX, 32)})`;
const wabt = await wabtInit();
const bin = Buffer.from(wabt.parseWat('probe.wat', WAT, { simd: true, relaxed_simd: true }).toBinary({}).buffer);
const { instance } = await WebAssembly.instantiate(bin, {});
const e = instance.exports, rows = 5632, d = 2048;
e.memory.grow(Math.ceil((rows * d + 4 * d + rows * 4 + (1 << 20)) / 65536));
const u8 = new Uint8Array(e.memory.buffer), W = 1024, X = W + rows * d, O = X + 4 * d;
for (let i = 0; i < rows * d; i++) u8[W + i] = (Math.random() * 255) | 0;
for (let i = 0; i < 4 * d; i++) u8[X + i] = (Math.random() * 127) | 0;
for (const f of ['q8_i16', 'q8_rx', 'q8_i16', 'q8_rx']) {
  e[f](W, rows, d, X, O);
  const t0 = performance.now(), n = 30;
  for (let i = 0; i < n; i++) e[f](W, rows, d, X, O);
  const ms = (performance.now() - t0) / n;
  console.log(f, ms.toFixed(2), 'ms', (rows * d / ms / 1e6).toFixed(2), 'G values/s');
}
