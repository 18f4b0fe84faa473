/**
 * Backend selection at run time: `tensorflow` (tfjs-node-gpu or tfjs-node, when importable) else `webgpu` (Dawn's
 * `webgpu` package + tfjs-backend-webgpu, on a hardware adapter: Vulkan, Metal, D3D12) else `wasm` else `cpu`.
 * tfjs-node(-gpu), webgpu and tfjs-backend-webgpu are optionalDependencies: tfjs-node needs a libtensorflow download
 * at install time, which fails on machines without that network access; npm then skips it and we fall back.
 * A software adapter (Mesa's lavapipe/llvmpipe, SwiftShader) is never picked by `auto` (slower than wasm), but
 * `--backend webgpu` uses it (CI tests every GPU code path on lavapipe).
 */
import { spawnSync } from 'node:child_process';
import * as os from 'node:os';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import { UserError } from './util/errors.js';

/** The one backend list, in `auto`'s order of preference (config schema, --backend flag and selection use it). */
export const BACKEND_NAMES = ['tensorflow', 'webgpu', 'wasm', 'cpu'] as const;
export type BackendName = (typeof BACKEND_NAMES)[number];
export type BackendPreference = 'auto' | BackendName;
export const BACKEND_PREFERENCES = ['auto', ...BACKEND_NAMES] as const satisfies readonly BackendPreference[];

/** The WebGPU adapter tfjs-backend-webgpu runs on (what every command prints, and what sizes the resident budget). */
export interface GpuAdapter {
  /** e.g. "nvidia nvidia-h200 (Vulkan)" */
  description: string;
  /** a CPU implementation (lavapipe, llvmpipe, SwiftShader): auto does not pick it */
  software: boolean;
  /** bytes one storage buffer binding may hold, and one buffer */
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  shaderF16: boolean;
}

export interface BackendProbe {
  /** try to make the tensorflow backend available; returns the package that provided it, or null */
  tensorflow(): Promise<string | null>;
  /** find a WebGPU adapter and register tfjs-backend-webgpu on it; returns the adapter, or why there is none */
  webgpu(): Promise<GpuAdapter | string>;
  /** whether a backend of that name initializes */
  init(name: BackendName): Promise<boolean>;
  /**
   * `auto` only, before webgpu(): why this machine's WebGPU adapter is not worth Dawn in this process (none, or
   * software only), or null to go on (a hardware adapter, or no answer)
   */
  prescreen?(): string | null;
}

export interface BackendChoice {
  name: BackendName;
  /** human-readable reason, printed by every command */
  reason: string;
}

/** Dawn's GPU instance and the adapter, found once per process (a second instance beside a live device aborts Dawn) */
let webgpuProbe: Promise<GpuAdapter | string> | null = null;
async function probeWebgpu(): Promise<GpuAdapter | string> {
  let dawn: typeof import('webgpu');
  try { dawn = await import('webgpu'); } catch { return 'the optional package "webgpu" (Dawn for Node) is not installed'; }
  Object.assign(globalThis, dawn.globals);
  const gpu = dawn.create([]);
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) return 'no WebGPU adapter (no Vulkan, Metal or D3D12 driver found)';
  // tfjs-backend-webgpu registers itself on import when navigator.gpu exists (Node 21+ has a navigator)
  const nav = (globalThis as { navigator?: object }).navigator;
  if (nav) Object.defineProperty(nav, 'gpu', { value: gpu, configurable: true });
  else Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
  try { await import('@tensorflow/tfjs-backend-webgpu'); } catch { return 'the optional package "@tensorflow/tfjs-backend-webgpu" is not installed'; }
  return { ...describeAdapter(adapter.info), maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize, maxBufferSize: adapter.limits.maxBufferSize,
    shaderF16: adapter.features.has('shader-f16') };
}

interface AdapterInfo { vendor: string; architecture: string; device: string; description: string; isFallbackAdapter?: boolean }
function describeAdapter(i: AdapterInfo): Pick<GpuAdapter, 'description' | 'software'> {
  const software = i.isFallbackAdapter === true || i.architecture === 'software' || /llvmpipe|lavapipe|swiftshader/i.test(`${i.device} ${i.description}`);
  return { description: [i.vendor, i.device || i.architecture, i.description && `(${i.description})`].filter(Boolean).join(' '), software };
}

/** Dawn's two notes on stderr while it sets up an adapter whose driver reports more dynamic buffers than it allows
 * (lavapipe, RADV): printed by its C++ (no toggle or callback turns them off), harmless */
const DAWN_LIMIT_NOTE = /^Warning: maxDynamic(?:Uniform|Storage)BuffersPerPipelineLayout artificially reduced from \d+ to \d+ to fit dynamic offset allocation limit\.$/;
/** stderr without Dawn's limit notes (every other line kept, in order) */
export function withoutDawnNotes(stderr: string): string {
  return stderr.split('\n').filter((l) => !DAWN_LIMIT_NOTE.test(l.trim())).join('\n');
}

/**
 * `auto`'s look at the adapter, in a child process: a machine with no adapter or only a software one (most CPU
 * machines with Mesa) then never loads Dawn here, and Dawn's limit notes from that look are dropped (any other
 * stderr line of the child is passed on). null: a hardware adapter, or the child gave no answer (webgpu() decides).
 */
function prescreenWebgpu(): string | null {
  const script = `let dawn; try { dawn = await import('webgpu'); } catch { console.log(JSON.stringify({ none: 'the optional package "webgpu" (Dawn for Node) is not installed' })); process.exit(0); }
    const a = await dawn.create([]).requestAdapter({ powerPreference: 'high-performance' });
    const i = a?.info;
    console.log(JSON.stringify(a ? { info: { vendor: i.vendor, architecture: i.architecture, device: i.device, description: i.description, isFallbackAdapter: i.isFallbackAdapter } } : { none: 'no WebGPU adapter (no Vulkan, Metal or D3D12 driver found)' }));
    process.exit(0);`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000, cwd: import.meta.dirname });
  const rest = withoutDawnNotes(r.stderr ?? '').trim();
  if (rest) process.stderr.write(rest + '\n');
  let got: { none?: string; info?: AdapterInfo };
  try { got = JSON.parse(r.stdout.trim().split('\n').at(-1) ?? ''); } catch { return null; }
  if (got.none) return got.none;
  if (!got.info) return null;
  const a = describeAdapter(got.info);
  return a.software ? `only a software adapter, ${a.description}, slower than wasm (--backend webgpu uses it)` : null;
}

const defaultProbe: BackendProbe = {
  async tensorflow() {
    for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
      try {
        await import(pkg);
        if (tf.findBackend('tensorflow')) return pkg;
      } catch {
        // not installed or its native library is missing: try the next one
      }
    }
    return null;
  },
  webgpu() { return (webgpuProbe ??= probeWebgpu()); },
  prescreen() { return webgpuProbe ? null : prescreenWebgpu(); },
  async init(name) {
    try {
      return (await tf.setBackend(name)) && tf.getBackend() === name;
    } catch {
      return false;
    }
  },
};

/**
 * Pick and initialize a backend. `auto` tries tensorflow, webgpu (hardware adapters only), wasm, cpu in that order;
 * an explicit preference that cannot initialize is a user error (exit 2) naming what is missing.
 */
export async function selectBackend(pref: BackendPreference = 'auto', probe: BackendProbe = defaultProbe): Promise<BackendChoice> {
  const tried: string[] = [];
  const order: readonly BackendName[] = pref === 'auto' ? BACKEND_NAMES : [pref];
  for (const name of order) {
    if (name === 'tensorflow') {
      const pkg = await probe.tensorflow();
      if (pkg && (await probe.init('tensorflow'))) return { name, reason: pref === 'auto' ? `auto: ${pkg} is installed` : `requested (${pkg})` };
      tried.push(pkg ? `tensorflow: ${pkg} is installed but failed to initialize` : 'tensorflow: neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is importable');
      continue;
    }
    if (name === 'webgpu') {
      const why = pref === 'auto' ? probe.prescreen?.() : null;
      if (why) { tried.push(`webgpu: ${why}`); continue; }
      const a = await probe.webgpu();
      if (typeof a === 'string') { tried.push(`webgpu: ${a}`); continue; }
      if (pref === 'auto' && a.software) { tried.push(`webgpu: only a software adapter, ${a.description}, slower than wasm (--backend webgpu uses it)`); continue; }
      if (await probe.init('webgpu')) { gpuAdapter = a; return { name, reason: `${pref === 'auto' ? 'auto' : 'requested'}: adapter ${a.description}${a.software ? ' (software)' : ''}` }; }
      tried.push(`webgpu: adapter ${a.description} failed to initialize`);
      continue;
    }
    if (await probe.init(name)) {
      const why = pref === 'auto' ? `auto: ${tried.map((t) => t.split(':')[0]).join(', ')} unavailable` : 'requested';
      return { name, reason: why };
    }
    tried.push(`${name}: failed to initialize`);
  }
  throw new UserError(`backend "${pref}" is not available (${tried.join('; ')})`, pref === 'tensorflow'
    ? 'install @tensorflow/tfjs-node-gpu or @tensorflow/tfjs-node (needs network access to the libtensorflow download), or use --backend wasm'
    : pref === 'webgpu' ? 'install the optional packages (`npm install webgpu @tensorflow/tfjs-backend-webgpu`) and a Vulkan driver (on Debian: mesa-vulkan-drivers, or the GPU vendor\'s), or use --backend wasm'
      : 'use --backend auto');
}

/**
 * Worker threads that stages using the model start by default on this backend: one per core on the CPU backends;
 * one on a GPU (in-process: one queue per device, batches pipelined on it while this thread does the host work).
 */
export function defaultModelWorkers(cores: number): number {
  return current?.name === 'webgpu' ? 1 : cores;
}

/** Worker threads for host work beside the device (a GPU's captures: float16, bits, statistics): the other cores. */
export function hostWorkersBeside(cores: number): number {
  return current?.name === 'webgpu' ? Math.max(1, cores - 1) : 0;
}

/**
 * The backend for work on host data that reads its results synchronously (the train stage's closed-form fits and
 * moments, evaluate's recall passes): the current one, or wasm beside a GPU (tfjs-webgpu reads only asynchronously).
 */
export function hostBackend(): BackendName {
  return !current || current.name === 'webgpu' ? 'wasm' : current.name;
}

/** Run a stage's work on hostBackend(), then give the process its backend back. */
export async function onHostBackend<R>(log: (m: string) => void, stage: string, fn: () => Promise<R>): Promise<R> {
  const before = current;
  if (!before || before.name === hostBackend()) return fn();
  log(`${stage}: on ${hostBackend()} (its host-data matmuls read synchronously; the ${before.name} backend reads asynchronously only)`);
  await ensureBackend(hostBackend());
  try { return await fn(); } finally { await selectBackend(before.name); current = before; }
}

let gpuAdapter: GpuAdapter | null = null;
/** The adapter of the webgpu backend, when this process selected it. */
export function getGpuAdapter(): GpuAdapter | null {
  return current?.name === 'webgpu' ? gpuAdapter : null;
}

const GiB = 2 ** 30;
/**
 * The GPU's memory in bytes, or null where it cannot be known: WebGPU reports no memory size, so
 * DEJAVU_GPU_MEMORY_GIB when set, else nvidia-smi's total on an NVIDIA adapter.
 */
function gpuMemoryBytes(a: GpuAdapter): number | null {
  const env = Number(process.env.DEJAVU_GPU_MEMORY_GIB);
  if (env > 0) return env * GiB;
  if (!/nvidia/i.test(a.description)) return null;
  const r = spawnSync('nvidia-smi', ['--query-gpu=memory.total', '--format=csv,noheader,nounits'], { encoding: 'utf8', timeout: 5000 });
  const mib = r.status === 0 ? Number(r.stdout.trim().split('\n')[0]) : NaN;
  return mib > 0 ? mib * 2 ** 20 : null;
}

/**
 * Bytes of float32 weights that may live on the backend at once (loadModel streams a larger model layer by layer):
 * tfjs-wasm's heap is <= 4 GiB, so 2.5 GiB; on webgpu 60% of the GPU's memory (the rest: activations, captures,
 * logits), a software adapter's host memory at most 2.5 GiB, 4 GiB where the GPU's memory is unknown.
 */
export function residentBudgetBytes(): number {
  const a = getGpuAdapter();
  if (!a) return 2.5 * GiB;
  if (a.software) return Math.min(2.5 * GiB, 0.4 * os.totalmem());
  const mem = gpuMemoryBytes(a);
  return mem ? 0.6 * mem : 4 * GiB;
}

let current: BackendChoice | null = null;
/** Initialize once per process (idempotent for the same preference). */
export async function ensureBackend(pref: BackendPreference = 'auto'): Promise<BackendChoice> {
  if (current && (pref === 'auto' || pref === current.name)) return current;
  current = await selectBackend(pref);
  return current;
}
export { tf };

/** The backend this process initialized, if any. */
export function getBackend(): BackendName | null {
  return current?.name ?? null;
}
