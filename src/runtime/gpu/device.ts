/**
 * The WebGPU device of the GPU decode runtime: Dawn through the `webgpu` package (an optional dependency, imported
 * only when a GPU session is asked for), one device per process with the adapter's own limits (the defaults cap a
 * storage binding at 128 MiB: one [16384, 4096] float16 matrix). Readback only through mapAsync.
 */
/// <reference types="@webgpu/types" />
import { UserError } from '../../util/errors.js';

export interface Gpu {
  device: GPUDevice;
  /** adapter vendor / architecture / description, for the benchmark's notes */
  info: { vendor: string; architecture: string; description: string };
  features: { f16: boolean; subgroups: boolean };
  limits: { maxStorageBufferBindingSize: number; maxBufferSize: number; maxComputeWorkgroupStorageSize: number };
  /** the first uncaptured device error (validation, out of memory), thrown by the next readback */
  error: string | null;
}

let pending: Promise<Gpu> | undefined;
/** dawn.node lives as long as the object create() returned is referenced: collected, it crashes the process */
let instance: GPU | null = null;

/** The process's GPU (made once). A UserError when the `webgpu` package or a GPU adapter is missing. */
export function getGpu(): Promise<Gpu> {
  return (pending ??= open().catch((e: unknown) => { pending = undefined; throw e; }));
}

async function open(): Promise<Gpu> {
  const name = 'webgpu'; // a variable: the package is optional, typecheck and bundlers must not require it
  let mod: { create(o: string[]): GPU; globals: object };
  try { mod = (await import(name)) as typeof mod; } catch (e) {
    throw new UserError(`the GPU decode runtime needs the \`webgpu\` package (Dawn for Node), which did not load: ${(e as Error).message.split('\n')[0]}`,
      'install it (`npm i webgpu`), or decode on the CPU (the default runtime)');
  }
  Object.assign(globalThis, mod.globals); // GPUBufferUsage, GPUMapMode, ... as in a browser
  instance = mod.create([]);
  const adapter = await instance.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) throw new UserError('the GPU decode runtime found no WebGPU adapter (no Vulkan / Metal / D3D12 device)', 'install a GPU driver (or Mesa lavapipe for a CPU Vulkan device), or decode on the CPU (the default runtime)');
  const L = adapter.limits;
  const want = ['maxStorageBufferBindingSize', 'maxBufferSize', 'maxStorageBuffersPerShaderStage', 'maxComputeWorkgroupStorageSize', 'maxComputeInvocationsPerWorkgroup', 'maxComputeWorkgroupSizeX'] as const;
  const requiredLimits: Record<string, number> = {};
  for (const k of want) requiredLimits[k] = L[k];
  const device = await adapter.requestDevice({ requiredLimits });
  const info = (adapter as unknown as { info?: { vendor?: string; architecture?: string; description?: string } }).info ?? {};
  const gpu: Gpu = {
    device, error: null,
    info: { vendor: info.vendor ?? '', architecture: info.architecture ?? '', description: info.description ?? '' },
    features: { f16: adapter.features.has('shader-f16'), subgroups: adapter.features.has('subgroups') },
    limits: { maxStorageBufferBindingSize: L.maxStorageBufferBindingSize, maxBufferSize: L.maxBufferSize, maxComputeWorkgroupStorageSize: L.maxComputeWorkgroupStorageSize },
  };
  device.addEventListener('uncapturederror', (ev) => { gpu.error ??= (ev as GPUUncapturedErrorEvent).error.message; });
  return gpu;
}

/** Destroy the process's device and release Dawn (a process holding it does not exit); getGpu makes a new one. */
export async function closeGpu(): Promise<void> {
  const p = pending;
  pending = undefined;
  if (p) { try { (await p).device.destroy(); } catch { /* it never opened */ } }
  instance = null;
}

/** throw the device's first error (after a readback: errors surface asynchronously) */
export function checkGpu(gpu: Gpu, what: string): void {
  if (gpu.error) throw new Error(`GPU decode (${what}): the device reported an error: ${gpu.error}`);
}
