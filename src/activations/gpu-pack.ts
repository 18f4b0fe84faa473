/**
 * collect's captures packed on the GPU before they are read back (under Node, tfjs-webgpu's reads are what bounds
 * collection: 2.3 GB of float32 per batch at OPT-1.3B widths). One int32 tensor per layer holds, in this order:
 * x_attn and x_mlp as float16 bits (two per int32, the lower index in the low half; float32 bits with --dtype
 * float32), mlp_act as float16 bits (when recorded), the MLP active bits (32 per int32, LSB first: the Arrow bitmap's
 * order), the head norms as float32 bits, and each row's sum of |mlp_act| (float32 bits). The float16 rounding is
 * the host's (util/half.ts f16OfBits, in integer arithmetic) and "active" is decided on the value's bits as the
 * host's `act > 0` (gated ReLU: `|act| > 0`), so the dataset's bytes are those the host would write from the same
 * float32 captures; about a fifth of the bytes cross to the host (OPT-1.3B widths: 9.3 of 49 KB per token and layer).
 */
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { UserError } from '../util/errors.js';

export interface PackSpec { rows: number; hidden: number; ffn: number; heads: number; f16: boolean; mlpAct: boolean; reluGated: boolean }

/** where each part starts in the packed int32 array (word offsets), and its element count */
export function packLayout(s: PackSpec) {
  const n = s.rows * s.hidden, nf = s.rows * s.ffn;
  const xw = s.f16 ? Math.ceil(n / 2) : n;
  const xa = 0, xm = xw, act = 2 * xw, bits = act + (s.mlpAct ? Math.ceil(nf / 2) : 0), hn = bits + Math.ceil(nf / 32), rowAbs = hn + s.rows * s.heads;
  return { n, nf, xa, xm, act, bits, hn, rowAbs, total: rowAbs + s.rows };
}

/** WGSL of util/half.ts f16OfBits (round to nearest even, overflow to inf, subnormals, NaN as sign|0x7e00) */
const HALF_WGSL = `
fn dvHalf(x: u32) -> u32 {
  let sign = (x >> 16u) & 0x8000u;
  let ex = (x >> 23u) & 0xffu;
  var mant = x & 0x7fffffu;
  if (ex == 0xffu) { return sign | 0x7c00u | select(0u, 0x200u, mant != 0u); }
  let e = i32(ex) - 112;
  if (e >= 31) { return sign | 0x7c00u; }
  if (e <= 0) {
    if (e < -10) { return sign; }
    mant = mant | 0x800000u;
    let shift = u32(14 - e);
    var h = mant >> shift;
    let rem = mant & ((1u << shift) - 1u);
    let mid = 1u << (shift - 1u);
    if (rem > mid || (rem == mid && (h & 1u) == 1u)) { h = h + 1u; }
    return sign | h;
  }
  var h = (u32(e) << 10u) | (mant >> 13u);
  let rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) == 1u)) { h = h + 1u; }
  return sign | h;
}`;

/** one section's word j: two float16 halves of V (n values), or V's float32 bits */
function section(v: string, n: number, f16: boolean): string {
  return f16 ? `let i = 2u * j; v = dvHalf(bitcast<u32>(${v}[i])); if (i + 1u < ${n}u) { v = v | (dvHalf(bitcast<u32>(${v}[i + 1u])) << 16u); }`
    : `v = bitcast<u32>(${v}[j]);`;
}

function packProgram(s: PackSpec) {
  const L = packLayout(s);
  // active: positive and not NaN (gated ReLU: nonzero and not NaN), on the bits (no float compare, no flush of subnormals)
  const active = s.reluGated ? '(a & 0x7fffffffu) != 0u && (a & 0x7fffffffu) <= 0x7f800000u' : '(a & 0x80000000u) == 0u && a != 0u && a <= 0x7f800000u';
  return {
    variableNames: ['X', 'Y', 'M', 'N', 'S'],
    outputShape: [L.total],
    workgroupSize: [64, 1, 1] as [number, number, number],
    dispatchLayout: { x: [0] },
    dispatch: [Math.ceil(L.total / 64), 1, 1] as [number, number, number],
    size: true,
    shaderKey: `dejavu_pack_${[s.rows, s.hidden, s.ffn, s.heads, +s.f16, +s.mlpAct, +s.reluGated].join('_')}`,
    getUserCode: () => `${HALF_WGSL}
fn main(index: i32) {
  if (index >= uniforms.size) { return; }
  let w = u32(index);
  var v = 0u;
  if (w < ${L.xm}u) { let j = w; ${section('X', L.n, s.f16)} }
  else if (w < ${L.act}u) { let j = w - ${L.xm}u; ${section('Y', L.n, s.f16)} }
  else if (w < ${L.bits}u) { let j = w - ${L.act}u; ${section('M', L.nf, true)} }
  else if (w < ${L.hn}u) {
    let base = (w - ${L.bits}u) * 32u;
    for (var k = 0u; k < 32u; k = k + 1u) {
      if (base + k < ${L.nf}u) { let a = bitcast<u32>(M[base + k]); if (${active}) { v = v | (1u << k); } }
    }
  }
  else if (w < ${L.rowAbs}u) { v = bitcast<u32>(N[w - ${L.hn}u]); }
  else { v = bitcast<u32>(S[w - ${L.rowAbs}u]); }
  result[index] = bitcast<i32>(v);
}`,
  };
}

interface WebGpuBackendLike { runWebGPUProgram(program: object, inputs: tf.TensorInfo[], dtype: 'int32'): tf.TensorInfo }

/** Whether the current backend packs captures on the device (webgpu: its reads are the bottleneck). */
export function packsOnDevice(): boolean {
  return tf.getBackend() === 'webgpu';
}

/** One layer's captures packed into one int32 tensor (packLayout); queued on the device, not read. */
export function packLayer(t: { xa: tf.Tensor; xm: tf.Tensor; act: tf.Tensor; hn: tf.Tensor }, s: PackSpec): tf.Tensor {
  return tf.tidy(() => {
    const rowAbs = tf.sum(tf.abs(tf.reshape(t.act, [s.rows, s.ffn])), 1);
    const info = (tf.backend() as unknown as WebGpuBackendLike).runWebGPUProgram(packProgram(s), [t.xa, t.xm, t.act, t.hn, rowAbs], 'int32');
    return tf.engine().makeTensorFromTensorInfo(info);
  });
}

// ------------------------------------------------------------------------------------------------ the batch's reads
// tfjs-webgpu's data() copies each tensor into a staging buffer of its own, maps it and copies the mapping out with
// getMappedRange().slice(0) on the calling thread: on the GPU box (H200) 1.1 GB/s, 1.66 s of every 8,192-token batch
// at OPT-1.3B widths (1.84 GB packed), the collecting thread's largest cost (the first touch of each fresh 76 MB
// destination, measured: docs/gpu.md). readPacked copies a batch's packed layers into reused staging buffers (one
// submit, one mapAsync per staging buffer) and copies the mapping out on native threads (native/readback.c: 0.22 s a
// batch on the box) when the addon is built, else with one typed-array copy a layer on this thread (1.5 s).

/** the parts of tfjs-webgpu 4.22's WebGPUBackend that readPacked uses (pinned: package.json) */
interface GpuBackendInternals {
  device: { limits: { maxBufferSize: number }; createBuffer(d: { size: number; usage: number }): GpuBufferLike };
  tensorMap: { get(id: object): { values: unknown; resource: unknown } | undefined };
  commandEncoder: { copyBufferToBuffer(src: GpuBufferLike, so: number, dst: GpuBufferLike, d: number, n: number): void } | null;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
}
interface GpuBufferLike { size: number; mapAsync(mode: number): Promise<void>; getMappedRange(): ArrayBuffer; unmap(): void; destroy(): void }
export interface ReadbackModule { copy(src: ArrayBuffer, offsets: number[], dsts: ArrayBuffer[], threads: number): Promise<void> }

/** build/native/readback.node (from src/ under vitest or from dist/: both two folders below the root) */
export const READBACK_ADDON = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'native', 'readback.node');
let readback: { mod: ReadbackModule | null; why: string } | undefined;
/** the native copy, or null and why (not built; DEJAVU_NATIVE=0) */
export function nativeReadback(): { mod: ReadbackModule | null; why: string } {
  if (readback) return readback;
  if (process.env.DEJAVU_NATIVE === '0') return (readback = { mod: null, why: 'DEJAVU_NATIVE=0' });
  if (!fs.existsSync(READBACK_ADDON)) return (readback = { mod: null, why: `${READBACK_ADDON} was not built` });
  try { return (readback = { mod: createRequire(import.meta.url)(READBACK_ADDON) as ReadbackModule, why: '' }); }
  catch (e) { return (readback = { mod: null, why: `${READBACK_ADDON} did not load: ${(e as Error).message}` }); }
}

/** how collect reads its packed captures: DEJAVU_GPU_READS=tfjs (tfjs's data(), one tensor at a time), else
 * `mapped` (readPacked; `mapped-js`: its copy in JavaScript even where the native addon is built) */
export function gpuReads(): 'tfjs' | 'mapped' | 'mapped-js' {
  const v = process.env.DEJAVU_GPU_READS ?? '';
  if (v === '' || v === 'mapped') return 'mapped';
  if (v === 'tfjs' || v === 'mapped-js') return v;
  throw new UserError(`DEJAVU_GPU_READS=${v} is not a read path`, 'set it to mapped (the default), mapped-js or tfjs, or unset it');
}

/** the native copy's threads: half the cores (collect's host workers and writer threads have the rest), 2..16 */
export const readbackThreads = () => Math.max(2, Math.min(16, Math.floor(os.availableParallelism() / 2)));

const MAP_READ = 0x0001, COPY_DST = 0x0008; // GPUBufferUsage
const free = new Map<number, GpuBufferLike[]>(); // staging buffers by size, reused (creating one pins host memory)
const takeStaging = (be: GpuBackendInternals, size: number) => free.get(size)?.pop() ?? be.device.createBuffer({ size, usage: MAP_READ | COPY_DST });
const giveStaging = (b: GpuBufferLike) => { const l = free.get(b.size) ?? []; l.push(b); free.set(b.size, l); };
/** the staging buffers kept for reuse are destroyed (the backend is being replaced, or a test wants them gone) */
export function releaseStaging(): void { for (const l of free.values()) for (const b of l) b.destroy(); free.clear(); }

/**
 * The packed int32 tensors' values, each in an ArrayBuffer of its own (movable to a worker thread); the tensors stay
 * the caller's. Queued behind everything already on the device; `threads`: the native copy's threads; `js`: copy in
 * JavaScript even where the addon is built; `maxBytes`: a staging buffer's largest size (default the device's limit).
 */
export async function readPacked(ts: tf.Tensor[], threads: number, js = false, maxBytes?: number): Promise<Int32Array[]> {
  const be = tf.backend() as unknown as GpuBackendInternals;
  const bufs = ts.map((t) => {
    const d = be.tensorMap.get(t.dataId);
    if (t.dtype !== 'int32' || !d || d.values != null || !d.resource || typeof (d.resource as { size?: unknown }).size !== 'number') return null;
    return d.resource as GpuBufferLike;
  });
  if (bufs.some((b) => !b)) return Promise.all(ts.map(async (t) => (await t.data()) as Int32Array)); // on the host already
  // groups of whole tensors up to the device's largest buffer, one staging buffer each
  const max = maxBytes ?? be.device.limits.maxBufferSize, groups: { first: number; end: number; bytes: number }[] = [];
  ts.forEach((t, i) => {
    const n = 4 * t.size, g = groups.at(-1);
    if (g && g.bytes + n <= max) { g.end = i + 1; g.bytes += n; } else groups.push({ first: i, end: i + 1, bytes: n });
  });
  const staging = groups.map((g) => takeStaging(be, g.bytes));
  be.ensureCommandEncoderReady();
  be.endComputePassEncoder();
  groups.forEach((g, k) => {
    let off = 0;
    for (let i = g.first; i < g.end; i++) { const n = 4 * ts[i]!.size; be.commandEncoder!.copyBufferToBuffer(bufs[i]!, 0, staging[k]!, off, n); off += n; }
  });
  be.submitQueue();
  const mod = js ? null : nativeReadback().mod;
  const out = ts.map((t) => new Int32Array(t.size));
  try {
    await Promise.all(groups.map(async (g, k) => {
      const s = staging[k]!;
      await s.mapAsync(1 /* GPUMapMode.READ */);
      try {
        const mapped = s.getMappedRange();
        const offsets: number[] = [];
        let off = 0;
        for (let i = g.first; i < g.end; i++) { offsets.push(off); off += 4 * ts[i]!.size; }
        if (mod) await mod.copy(mapped, offsets, out.slice(g.first, g.end).map((a) => a.buffer as ArrayBuffer), threads);
        else for (let i = g.first; i < g.end; i++) out[i]!.set(new Int32Array(mapped, offsets[i - g.first]!, ts[i]!.size));
      } finally { s.unmap(); }
    }));
  } finally { staging.forEach(giveStaging); }
  return out;
}
