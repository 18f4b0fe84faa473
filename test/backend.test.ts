/** Backend selection with fake probes: order, fallbacks, reasons, and errors for explicit preferences. */
import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { defaultModelWorkers, ensureBackend, getBackend, hostWorkersBeside, residentBudgetBytes, selectBackend, type BackendProbe, type GpuAdapter } from '../src/backend.js';
import { UserError } from '../src/util/errors.js';

const H200: GpuAdapter = { description: 'nvidia nvidia-h200 (NVIDIA: 580.159.04)', software: false, maxStorageBufferBindingSize: 2147483644, maxBufferSize: 2 ** 40, shaderF16: false };
const LAVAPIPE: GpuAdapter = { ...H200, description: 'mesa llvmpipe (llvmpipe: Mesa 25.0.7)', software: true };

/** a probe where `tfPkg` is the importable tensorflow package (or null), `gpu` the WebGPU adapter (or why there is
 * none), and `ok` lists backends that initialize */
function fakeProbe(tfPkg: string | null, ok: ('tensorflow' | 'webgpu' | 'wasm' | 'cpu')[], gpu: GpuAdapter | string = 'no WebGPU adapter'): BackendProbe & { calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    async tensorflow() { calls.push('import tensorflow'); return tfPkg; },
    async webgpu() { calls.push('probe webgpu'); return gpu; },
    async init(name) { calls.push(`init ${name}`); return ok.includes(name); },
  };
}

async function rejection(p: Promise<unknown>): Promise<UserError> {
  let err: unknown;
  try { await p; } catch (e) { err = e; }
  expect(err, 'should reject').toBeInstanceOf(UserError);
  return err as UserError;
}

describe('selectBackend: auto', () => {
  it('picks tensorflow when a tfjs-node package is importable and initializes; never touches wasm/cpu', async () => {
    const p = fakeProbe('@tensorflow/tfjs-node-gpu', ['tensorflow', 'wasm', 'cpu']);
    expect(await selectBackend('auto', p)).toEqual({ name: 'tensorflow', reason: 'auto: @tensorflow/tfjs-node-gpu is installed' });
    expect(p.calls).toEqual(['import tensorflow', 'init tensorflow']);
  });

  it('falls back to wasm when tensorflow is not importable', async () => {
    const p = fakeProbe(null, ['wasm', 'cpu']);
    expect(await selectBackend('auto', p)).toEqual({ name: 'wasm', reason: 'auto: tensorflow, webgpu unavailable' });
    expect(p.calls).toEqual(['import tensorflow', 'probe webgpu', 'init wasm']);
  });

  it('falls back to wasm when tensorflow imports but does not initialize', async () => {
    const p = fakeProbe('@tensorflow/tfjs-node', ['wasm']);
    const c = await selectBackend('auto', p);
    expect(c.name).toBe('wasm');
    expect(c.reason).toBe('auto: tensorflow, webgpu unavailable');
    expect(p.calls).toEqual(['import tensorflow', 'init tensorflow', 'probe webgpu', 'init wasm']);
  });

  it('falls back to cpu when neither tensorflow nor wasm works', async () => {
    const p = fakeProbe(null, ['cpu']);
    expect(await selectBackend('auto', p)).toEqual({ name: 'cpu', reason: 'auto: tensorflow, webgpu, wasm unavailable' });
    expect(p.calls).toEqual(['import tensorflow', 'probe webgpu', 'init wasm', 'init cpu']);
  });

  it('nothing works: a UserError listing every attempt', async () => {
    const e = await rejection(selectBackend('auto', fakeProbe(null, [])));
    expect(e.message).toMatch(/^backend "auto" is not available/);
    expect(e.message).toContain('tensorflow: neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is importable');
    expect(e.message).toContain('webgpu: no WebGPU adapter');
    expect(e.message).toContain('wasm: failed to initialize');
    expect(e.message).toContain('cpu: failed to initialize');
  });

  it('picks webgpu on a hardware adapter, after tensorflow, and names the adapter', async () => {
    const p = fakeProbe(null, ['webgpu', 'wasm'], H200);
    expect(await selectBackend('auto', p)).toEqual({ name: 'webgpu', reason: 'auto: adapter nvidia nvidia-h200 (NVIDIA: 580.159.04)' });
    expect(p.calls).toEqual(['import tensorflow', 'probe webgpu', 'init webgpu']);
    const t = fakeProbe('@tensorflow/tfjs-node-gpu', ['tensorflow', 'webgpu'], H200);
    expect((await selectBackend('auto', t)).name).toBe('tensorflow');
  });

  it('never picks a software adapter (lavapipe): wasm, saying why', async () => {
    const p = fakeProbe(null, ['webgpu', 'wasm'], LAVAPIPE);
    expect(await selectBackend('auto', p)).toEqual({ name: 'wasm', reason: 'auto: tensorflow, webgpu unavailable' });
    expect(p.calls).toEqual(['import tensorflow', 'probe webgpu', 'init wasm']);
    const e = await rejection(selectBackend('auto', fakeProbe(null, [], LAVAPIPE)));
    expect(e.message).toContain('webgpu: only a software adapter, mesa llvmpipe (llvmpipe: Mesa 25.0.7), slower than wasm (--backend webgpu uses it)');
  });

  it('the default preference is auto', async () => {
    const p = fakeProbe(null, ['wasm']);
    expect((await selectBackend(undefined, p)).name).toBe('wasm');
  });
});

describe('selectBackend: explicit preference', () => {
  it('wasm / cpu requested and available: reason "requested", tensorflow never probed', async () => {
    for (const name of ['wasm', 'cpu'] as const) {
      const p = fakeProbe('@tensorflow/tfjs-node', ['tensorflow', 'wasm', 'cpu']);
      expect(await selectBackend(name, p)).toEqual({ name, reason: 'requested' });
      expect(p.calls).toEqual([`init ${name}`]);
    }
  });

  it('tensorflow requested and available: reason names the package', async () => {
    const p = fakeProbe('@tensorflow/tfjs-node', ['tensorflow']);
    expect(await selectBackend('tensorflow', p)).toEqual({ name: 'tensorflow', reason: 'requested (@tensorflow/tfjs-node)' });
  });

  it('an explicit preference that fails is a UserError, with no fallback', async () => {
    const p = fakeProbe(null, ['cpu']);
    const e = await rejection(selectBackend('wasm', p));
    expect(e.message).toBe('backend "wasm" is not available (wasm: failed to initialize)');
    expect(e.hint).toBe('use --backend auto');
    expect(p.calls).toEqual(['init wasm']);
    const e2 = await rejection(selectBackend('cpu', fakeProbe(null, ['wasm'])));
    expect(e2.message).toBe('backend "cpu" is not available (cpu: failed to initialize)');
  });

  it('tensorflow requested but not installed: the hint says what to install', async () => {
    const p = fakeProbe(null, ['wasm', 'cpu']);
    const e = await rejection(selectBackend('tensorflow', p));
    expect(e.message).toContain('backend "tensorflow" is not available');
    expect(e.message).toContain('neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is importable');
    expect(e.hint).toMatch(/install @tensorflow\/tfjs-node-gpu or @tensorflow\/tfjs-node/);
    expect(e.hint).toMatch(/--backend wasm/);
    expect(p.calls).toEqual(['import tensorflow']);
  });

  it('tensorflow requested, importable, but failing to initialize: the message says so (not "not importable")', async () => {
    const e = await rejection(selectBackend('tensorflow', fakeProbe('@tensorflow/tfjs-node', [])));
    expect(e.message).toContain('@tensorflow/tfjs-node');
    expect(e.message).toMatch(/failed to initialize/);
    expect(e.message).not.toMatch(/not importable|is importable/);
  });

  it('a probe that throws is not swallowed into a wrong choice', async () => {
    const p: BackendProbe = { tensorflow: async () => null, webgpu: async () => 'none', init: async () => { throw new Error('boom'); } };
    await expect(selectBackend('wasm', p)).rejects.toThrow('boom');
  });
});

describe('selectBackend: webgpu requested', () => {
  it('uses a software adapter when asked, saying so', async () => {
    const p = fakeProbe('@tensorflow/tfjs-node', ['tensorflow', 'webgpu', 'wasm'], LAVAPIPE);
    expect(await selectBackend('webgpu', p)).toEqual({ name: 'webgpu', reason: 'requested: adapter mesa llvmpipe (llvmpipe: Mesa 25.0.7) (software)' });
    expect(p.calls).toEqual(['probe webgpu', 'init webgpu']);
  });

  it('no adapter, or a missing package: a UserError naming it, the hint says what to install', async () => {
    const e = await rejection(selectBackend('webgpu', fakeProbe(null, ['wasm'])));
    expect(e.message).toBe('backend "webgpu" is not available (webgpu: no WebGPU adapter)');
    expect(e.hint).toMatch(/npm install webgpu @tensorflow\/tfjs-backend-webgpu.*Vulkan driver.*--backend wasm/);
    const e2 = await rejection(selectBackend('webgpu', fakeProbe(null, ['wasm'], 'the optional package "webgpu" (Dawn for Node) is not installed')));
    expect(e2.message).toContain('webgpu: the optional package "webgpu" (Dawn for Node) is not installed');
    const e3 = await rejection(selectBackend('webgpu', fakeProbe(null, [], H200)));
    expect(e3.message).toBe('backend "webgpu" is not available (webgpu: adapter nvidia nvidia-h200 (NVIDIA: 580.159.04) failed to initialize)');
  });
});

describe('the real probe', () => {
  it('cpu and wasm initialize and become the tfjs backend; ensureBackend is idempotent', async () => {
    expect(await selectBackend('cpu')).toEqual({ name: 'cpu', reason: 'requested' });
    expect(tf.getBackend()).toBe('cpu');
    const w = await ensureBackend('wasm');
    expect(w).toEqual({ name: 'wasm', reason: 'requested' });
    expect(tf.getBackend()).toBe('wasm');
    expect(getBackend()).toBe('wasm');
    // the CPU backends: a worker per core, no host workers beside them, wasm's resident budget
    expect(defaultModelWorkers(4)).toBe(4);
    expect(hostWorkersBeside(4)).toBe(0);
    expect(residentBudgetBytes()).toBe(2.5 * 2 ** 30);
    // auto after an explicit choice keeps it (same object, no re-probing)
    expect(await ensureBackend('auto')).toBe(w);
    expect(await ensureBackend('wasm')).toBe(w);
    // a different explicit preference switches
    const c = await ensureBackend('cpu');
    expect(c.name).toBe('cpu');
    expect(tf.getBackend()).toBe('cpu');
    expect(getBackend()).toBe('cpu');
  });
});
