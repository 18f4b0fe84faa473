// the GPU box's read path, step by step: tfjs data() against readPacked (mapped, native / JS copy), and the copy out
// of a mapped staging buffer against a plain heap copy (docs/gpu.md, fourth session). After `npm run build` and
// `npm run build:native`, with a WebGPU adapter: node scripts/probe-gpu-reads.mjs [layers] [MB a layer] (24 76 on the box)
import * as tf from '@tensorflow/tfjs-core';
import { ensureBackend } from '../dist/backend.js';
import { readPacked, nativeReadback } from '../dist/activations/gpu-pack.js';
const L = Number(process.argv[2] ?? 24), MB = Number(process.argv[3] ?? 76);
await ensureBackend('webgpu');
const be = tf.backend();
const n = (MB << 20) / 4;
console.log('maxBufferSize', be.device.limits.maxBufferSize, 'native', nativeReadback().why || 'yes');
const fence = async (ts) => { const v = tf.tidy(() => tf.addN(ts.map((t) => tf.sum(tf.slice(t, [0], [16]))))); await v.data(); v.dispose(); };
const make = async (r) => { const ts = Array.from({ length: L }, (_, i) => tf.fill([n], r * 100 + i, 'int32')); await fence(ts); return ts; };
const gbs = (ms) => `${(L * MB / 1024 / (ms / 1000)).toFixed(2)} GB/s`;
const time = async (name, f) => { const t = performance.now(); const r = await f(); const ms = performance.now() - t; console.log(`${name}: ${ms.toFixed(0)} ms, ${gbs(ms)}`); return r; };
for (let r = 0; r < 2; r++) {
  let ts = await make(1 + r);
  await time(`tfjs data() x${L} at once, round ${r}`, () => Promise.all(ts.map((t) => t.data())));
  ts.forEach((t) => t.dispose());
  ts = await make(3 + r);
  const a = await time(`readPacked native (8 threads), round ${r}`, () => readPacked(ts, 8));
  if (a[L - 1][7] !== (3 + r) * 100 + L - 1) throw new Error('wrong value');
  ts.forEach((t) => t.dispose());
  ts = await make(5 + r);
  for (const th of [2, 4, 16]) await time(`readPacked native (${th} threads), round ${r}`, () => readPacked(ts, th));
  await time(`readPacked js, round ${r}`, () => readPacked(ts, 1, true));
  ts.forEach((t) => t.dispose());
}
// the mapped memory itself: one staging buffer mapped, copied out several ways
const size = 4 * n;
const src = tf.fill([n], 9, 'int32'); await fence([src]);
const d = be.tensorMap.get(src.dataId).resource;
const st = be.device.createBuffer({ size, usage: 0x0001 | 0x0008 });
be.ensureCommandEncoderReady(); be.endComputePassEncoder(); be.commandEncoder.copyBufferToBuffer(d, 0, st, 0, size); be.submitQueue();
let t = performance.now(); await st.mapAsync(1); console.log(`mapAsync of ${MB} MB: ${(performance.now() - t).toFixed(0)} ms`);
const m = st.getMappedRange();
const one = (name, f) => { const t0 = performance.now(); f(); const ms = performance.now() - t0; console.log(`${name}: ${ms.toFixed(1)} ms, ${(MB / 1024 / (ms / 1000)).toFixed(2)} GB/s`); };
one('mapped .slice(0) (fresh)', () => m.slice(0));
one('mapped .slice(0) again', () => m.slice(0));
const dst = new Int32Array(n); dst.fill(1);
one('mapped -> touched heap .set', () => dst.set(new Int32Array(m)));
one('mapped read (sum, stride 16)', () => { const v = new Int32Array(m); let s = 0; for (let i = 0; i < v.length; i += 16) s += v[i]; return s; });
const heap = new Int32Array(n).fill(3);
one('heap -> touched heap .set', () => dst.set(heap));
one('heap .slice(0) (fresh)', () => heap.buffer.slice(0));
const nat = nativeReadback().mod;
if (nat) for (const th of [1, 2, 4, 8, 16]) {
  const out = new ArrayBuffer(size);
  t = performance.now(); await nat.copy(m, [0], [out], th); const ms = performance.now() - t;
  const out2 = new ArrayBuffer(size); new Uint8Array(out2).fill(1);
  const t2 = performance.now(); await nat.copy(m, [0], [out2], th); const ms2 = performance.now() - t2;
  const t3 = performance.now(); await nat.copy(heap.buffer, [0], [out2], th); const ms3 = performance.now() - t3;
  console.log(`native copy ${th} threads: mapped->fresh ${(MB / 1024 / (ms / 1000)).toFixed(2)} GB/s, mapped->touched ${(MB / 1024 / (ms2 / 1000)).toFixed(2)} GB/s, heap->touched ${(MB / 1024 / (ms3 / 1000)).toFixed(2)} GB/s`);
}
st.unmap(); st.destroy();
