// Row-kernel throughput by dtype (matvec and axpy over a 5632 x 2048 matrix: a TinyLlama-width MLP projection), on N
// threads, on the WebAssembly or the native kernels: npx tsc -p tsconfig.json && node scripts/kernel-speed.mjs [THREADS] [wasm|native] [--dram]
// (--dram: float16 only, ten such matrices in turn, so that every read comes from DRAM instead of the cache)
import { rowMatrix } from '../dist/model/kernels/rows.js';
import { createArena } from '../dist/model/kernels/wasm/kernels.js';
import { startPool } from '../dist/model/kernels/wasm/pool.js';
import { nativeRows } from '../dist/model/kernels/native/native.js';
import * as os from 'node:os';
const n = 5632, d = 2048;
const w = Float32Array.from({ length: n * d }, (_, i) => Math.sin(i * 0.37) * 0.05);
const x = Float32Array.from({ length: d }, (_, i) => Math.cos(i));
const a = Float32Array.from({ length: n }, (_, i) => Math.cos(i * 1.3));
const threads = Number(process.argv[2] ?? 1), native = process.argv[3] === 'native';
if (native && !nativeRows().mod) throw new Error(nativeRows().why);
if (process.argv.includes('--dram')) {
  const ar = createArena(true, threads > 1 && !native);
  if (native) ar.native = { mod: nativeRows().mod, threads };
  const ms = Array.from({ length: 10 }, () => rowMatrix(w, n, d, ar, 'float16'));
  if (threads > 1 && !native) startPool(ar, threads);
  const out = new Float32Array(n), y = new Float32Array(d);
  const med = (f) => { for (const m of ms) f(m); const xs = []; for (let r = 0; r < 7; r++) { const t = performance.now(); for (const m of ms) f(m); xs.push(performance.now() - t); } return xs.sort((p, q) => p - q)[3]; };
  const bytes = 10 * n * d * 2;
  console.log(`float16 from DRAM, ${native ? 'native' : 'wasm'} kernels, ${threads} threads: matvec ${(bytes / med((m) => m.matvec(x, out)) / 1e6).toFixed(1)} GB/s, axpy ${(bytes / med((m) => m.axpy(a, y)) / 1e6).toFixed(1)} GB/s; load ${os.loadavg()}`);
  process.exit(0);
}
for (const dt of ['float32', 'float16', 'bfloat16', 'q8_0']) {
  const ar = createArena(true, threads > 1 && !native);
  if (native) ar.native = { mod: nativeRows().mod, threads };
  const m = rowMatrix(w, n, d, ar, dt);
  if (threads > 1 && !native) startPool(ar, threads);
  const out = new Float32Array(n), y = new Float32Array(d);
  const med = (f) => { f(); const xs = []; for (let r = 0; r < 9; r++) { const t = performance.now(); for (let i = 0; i < 5; i++) f(); xs.push((performance.now() - t) / 5); } return xs.sort((p, q) => p - q)[4]; };
  const mv = med(() => m.matvec(x, out)), ax = med(() => m.axpy(a, y));
  // every other row: the eight-row (scattered) kernels
  const half = Int32Array.from({ length: n / 2 }, (_, i) => 2 * i);
  const mv8 = med(() => m.matvec(x, out, half)), ax8 = med(() => m.axpy(a, y, half));
  const bytes = n * d * (dt === 'float32' ? 4 : dt === 'q8_0' ? 1.125 : 2);
  console.log(dt, 'mv', mv.toFixed(2), 'ms', (bytes / mv / 1e6).toFixed(1), 'GB/s', (n * d / mv / 1e6).toFixed(2), 'Gval/s | ax', ax.toFixed(2), 'ms', (n * d / ax / 1e6).toFixed(2), 'Gval/s | every other row: mv8', (n * d / 2 / mv8 / 1e6).toFixed(2), 'ax8', (n * d / 2 / ax8 / 1e6).toFixed(2), 'Gval/s');
  ar.dispose();
}
console.log(native ? 'native' : 'wasm', 'kernels,', threads, 'threads; load', os.loadavg());
