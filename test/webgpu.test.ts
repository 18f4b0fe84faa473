/**
 * The webgpu tier: every GPU code path on whatever WebGPU adapter this machine has (CI: Mesa's lavapipe, a CPU
 * Vulkan, `.ci/run` installs it). Forward parity with transformers on every family reference and with wasm on the
 * fixtures, collect's dataset equal to wasm's within float16 rounding, a collection resumed across backends, and a
 * vocabulary-split LM head. Skipped, saying why, only where no adapter exists. Inputs are the smallest that still
 * test something: lavapipe runs ~1-2 GFLOP/s.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { collectSchema } from '../src/config/schemas.js';
import { runCollect } from '../src/stages/collect.js';
import { iterateLayer, readManifest } from '../src/activations/dataset.js';
import { loadModel } from '../src/model/model.js';
import { disposeOutput, forward } from '../src/model/forward.js';
import { FIXTURES, loadReference, relFrob, tmpDir } from './helpers.js';

const REPO = path.join(import.meta.dirname, '..');
const BIN = path.join(REPO, 'bin', 'dejavu.js');
const quiet = { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) };
// whether this machine has an adapter: probed in a child, so this process's backend stays unset until a test picks it
const probe = spawnSync('node', ['--input-type=module', '-e', `import { selectBackend } from ${JSON.stringify(path.join(REPO, 'dist', 'backend.js'))};
  try { console.log((await selectBackend('webgpu')).reason); } catch (e) { console.log('SKIP ' + e.message); }`], { encoding: 'utf8', timeout: 60_000 });
const line = probe.stdout.trim().split('\n').at(-1) ?? `SKIP the probe failed: ${probe.stderr}`;
const skip = line.startsWith('SKIP') ? line.slice(5) : null;
if (skip) console.warn(`webgpu tier skipped: ${skip}`); else console.log(`webgpu tier on ${line}`);

// the device is destroyed before the process exits (Dawn aborts when the process exits under a live device's threads)
afterAll(() => { if (tf.findBackend('webgpu')) tf.removeBackend('webgpu'); });

const read = async (t: tf.Tensor | undefined) => (await t!.data()) as Float32Array;

describe.skipIf(skip !== null)('webgpu: forward parity with transformers (<= 1e-4 relative)', () => {
  const refs = ['opt-tiny-ref', 'llama-tiny-ref', ...fs.readdirSync(path.join(FIXTURES, 'families')).filter((f) => fs.existsSync(path.join(FIXTURES, 'families', f, 'reference.json'))).sort().map((f) => `families/${f}`)];
  it('finds the two tiny references and the 13 family references', () => { expect(refs.length).toBe(15); });
  for (const name of refs) {
    it(`${name}: logits, every hidden state and mlp_act`, async () => {
      const b = await ensureBackend('webgpu');
      expect(tf.getBackend()).toBe('webgpu');
      expect(b.reason).toMatch(/adapter/);
      const dir = path.join(FIXTURES, name), ref = loadReference(dir);
      const before = tf.memory().numTensors;
      const model = loadModel(dir);
      expect(model.attention).toBe('tfjs');
      const L = model.config.layers;
      const out = forward(model, ref.ids, { capture: { xAttn: true, mlpAct: true, finalHidden: true } });
      const errs: Record<string, number> = {};
      try {
        for (const [key, r] of ref.tensors) {
          let m: RegExpExecArray | null;
          const t = key === 'logits' ? out.logits : (m = /^hidden_states\.(\d+)$/.exec(key)) ? (Number(m[1]) === L ? out.finalHidden : out.captured.xAttn?.[Number(m[1])])
            : (m = /^mlp_act\.(\d+)$/.exec(key)) ? out.captured.mlpAct?.[Number(m[1])] : undefined;
          if (!t) continue; // input_ids, and captures the tiny references hold beyond these
          expect(t.shape, key).toEqual(r.shape);
          errs[key] = relFrob(await read(t), r.data);
        }
      } finally { disposeOutput(out); model.dispose(); }
      expect(Object.keys(errs), 'logits + every hidden state + every mlp_act').toEqual(expect.arrayContaining(['logits', `hidden_states.${L}`, `mlp_act.${L - 1}`]));
      for (const [k, e] of Object.entries(errs)) expect(e, `${name} ${k}: relative error ${e}`).toBeLessThan(1e-4);
      expect(tf.memory().numTensors, 'no tensor leaked').toBe(before);
    });
  }

  it('the OPT fixture: webgpu logits equal wasm\'s, also with the LM head split along the vocabulary (a binding limit)', async () => {
    const dir = path.join(REPO, 'checkpoints', 'opt-fixture');
    const ids = [[2, 3141, 232, 328, 16, 10, 1296, 9, 5, 812, 6, 1491, 4, 20, 2802, 21]];
    await ensureBackend('wasm');
    const mw = loadModel(dir);
    const ow = forward(mw, ids);
    const want = await read(ow.logits);
    disposeOutput(ow); mw.dispose();
    await ensureBackend('webgpu');
    for (const maxBindingBytes of [Infinity, 4 * 256 * 1500]) { // 4,096 x 256 float32 cut into 3 blocks
      const m = loadModel(dir, { maxBindingBytes });
      expect(m.vocabSplit?.lmHead.length).toBe(maxBindingBytes === Infinity ? undefined : 3);
      const o = forward(m, ids);
      const got = await read(o.logits);
      disposeOutput(o); m.dispose();
      expect(got.length).toBe(want.length);
      expect(relFrob(got, want), `maxBindingBytes ${maxBindingBytes}`).toBeLessThan(1e-4);
    }
  });
});

/** every field of two datasets equal within float16 rounding (residuals), active bits all but a few near-zero flips */
function expectSameDataset(a: string, b: string): void {
  const ma = readManifest(a), mb = readManifest(b);
  expect(mb.tokens).toBe(ma.tokens);
  expect(mb.shards).toBe(ma.shards);
  let bitsDiffer = 0, bits = 0;
  for (const l of ma.layers) {
    const ia = [...iterateLayer(a, ma, l)], ib = [...iterateLayer(b, mb, l)];
    expect(ib.length).toBe(ia.length);
    for (const [k, x] of ia.entries()) {
      const y = ib[k]!;
      expect([...y.seq]).toEqual([...x.seq]);
      for (const f of ['xAttn', 'xMlp', 'headNorm'] as const) {
        const u = x[f], v = y[f];
        expect(v.length).toBe(u.length);
        // float16 keeps 11 bits: two values 1e-5 apart round to at most one float16 step apart
        let worst = 0;
        for (let i = 0; i < u.length; i++) worst = Math.max(worst, Math.abs(u[i]! - v[i]!) / (Math.abs(u[i]!) * 2 ** -10 + 1e-3));
        expect(worst, `layer ${l} ${f}: differences beyond one float16 step`).toBeLessThanOrEqual(1.01);
      }
      for (let i = 0; i < x.mlpActive.length; i++) bitsDiffer += x.mlpActive[i] !== y.mlpActive[i] ? 1 : 0;
      bits += x.mlpActive.length;
    }
  }
  expect(bitsDiffer / bits, `${bitsDiffer} of ${bits} active bits differ`).toBeLessThan(1e-3);
}

describe.skipIf(skip !== null)('webgpu: collect-activations', () => {
  it('the dataset equals wasm\'s within float16 rounding (captures read asynchronously, host work on a worker beside the GPU)', async () => {
    const tmp = tmpDir();
    const base = { model: path.join(REPO, 'checkpoints', 'opt-fixture'), data: path.join(REPO, 'data', 'calibration.jsonl'), seqLen: 64, maxTokens: 256, batchSize: 2, rowsPerShard: 128 };
    await ensureBackend('wasm');
    await runCollect(collectSchema.parse({ ...base, out: path.join(tmp, 'wasm') }), quiet);
    await ensureBackend('webgpu');
    const r = (await runCollect(collectSchema.parse({ ...base, out: path.join(tmp, 'gpu') }), quiet)).json as { summary: { workers: number; layers: { mlpDensity: number }[] } };
    expect(r.summary.workers).toBe(1); // one process on the GPU
    expectSameDataset(path.join(tmp, 'wasm'), path.join(tmp, 'gpu'));
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('a collection killed on wasm resumes on webgpu and equals the uninterrupted wasm run', async () => {
    const tmp = tmpDir();
    const args = (out: string, backend: string) => [BIN, 'collect-activations', '--model', path.join(FIXTURES, 'opt-tiny-ref'), '--data', path.join(REPO, 'data', 'calibration.jsonl'),
      '--out', out, '--seq-len', '32', '--batch-size', '1', '--max-tokens', '1280', '--set', 'rowsPerShard=64', '--backend', backend, '--quiet'];
    const full = path.join(tmp, 'full'), killed = path.join(tmp, 'killed');
    const r = spawnSync('node', args(full, 'wasm'), { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    const child = spawn('node', args(killed, 'wasm'), { stdio: 'ignore' });
    const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
    const progress = path.join(killed, 'progress.json');
    let poll: NodeJS.Timeout | undefined;
    try {
      const outcome = await Promise.race([
        new Promise<'killed'>((res) => {
          poll = setInterval(() => {
            try { if (JSON.parse(fs.readFileSync(progress, 'utf8')).shardsDone >= 2) { clearInterval(poll); child.kill('SIGKILL'); res('killed'); } } catch { /* not there yet, or being renamed */ }
          }, 2);
        }),
        exited.then((code) => `exited by itself (code ${code}) before 2 shards were done`),
      ]);
      expect(outcome).toBe('killed');
      await exited;
    } finally {
      clearInterval(poll);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    expect(readManifest(killed, false).status).toBe('in-progress');
    const r2 = spawnSync('node', [...args(killed, 'webgpu').slice(0, -1), '--json'], { encoding: 'utf8', timeout: 110_000 });
    expect(r2.status, r2.stderr).toBe(0);
    expect(r2.stderr).toMatch(/backend: webgpu/);
    expect(JSON.parse(r2.stdout).summary.resumedFromShard).toBeGreaterThanOrEqual(2);
    expectSameDataset(full, killed);
    fs.rmSync(tmp, { recursive: true, force: true });
  });
});
