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
import { ensureBackend, withoutDawnNotes } from '../src/backend.js';
import { collectSchema } from '../src/config/schemas.js';
import { runCollect } from '../src/stages/collect.js';
import { iterateLayer, readManifest } from '../src/activations/dataset.js';
import { loadModel } from '../src/model/model.js';
import { disposeOutput, forward } from '../src/model/forward.js';
import { captureBatch, captureLayer, type LayerCapture, type LayerHostSpec } from '../src/activations/capture.js';
import { nativeReadback, packLayer, packLayout, readPacked, type PackSpec } from '../src/activations/gpu-pack.js';
import { activationBits } from '../src/model/kernels/wasm/kernels.js';
import { NATIVE_ADDON } from '../src/model/kernels/native/native.js';
import { f32BitsToF16Array } from '../src/util/half.js';
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

describe('Dawn\'s limit notes on stderr', () => {
  const note = (k: string) => `Warning: max${k}BuffersPerPipelineLayout artificially reduced from 1000000 to 16 to fit dynamic offset allocation limit.`;
  it('are dropped, every other line kept in order', () => {
    expect(withoutDawnNotes([note('DynamicUniform'), 'Error: device lost', note('DynamicStorage'), 'Warning: something else'].join('\n'))).toBe('Error: device lost\nWarning: something else');
    expect(withoutDawnNotes('Warning: maxDynamicUniformBuffersPerPipelineLayout artificially reduced from 8 to 4 because of something')).toMatch(/because of something/);
  });
  it.skipIf(skip !== null || !line.includes('(software)'))('auto beside a software adapter: picks wasm without loading Dawn in the process, and prints no note', () => {
    const r = spawnSync('node', ['--input-type=module', '-e', `import { selectBackend } from ${JSON.stringify(path.join(REPO, 'dist', 'backend.js'))};
      console.log((await selectBackend('auto')).name, typeof GPUBufferUsage)`], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim(), 'wasm, and no Dawn globals in the process').toBe('wasm undefined');
    expect(r.stderr).not.toMatch(/artificially reduced/);
  });
});

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

describe.skipIf(skip !== null)('webgpu: captures packed on the GPU (float16 halves, active bits 32 per int32)', () => {
  // float32 values where rounding to float16 is delicate: ties (to even), the subnormal halves, 65504 and what rounds
  // to it or overflows, infinities, NaN, float32 subnormals, signed zeros; then values of every scale
  const EDGE = [0, -0, 1, -1, 1 + 2 ** -11, 1 + 3 * 2 ** -11, -(1 + 2 ** -11), 1 - 2 ** -12, 2 ** -14, 2 ** -24, 2 ** -25, 3 * 2 ** -25, 2 ** -26, 5 * 2 ** -26,
    6.1e-5, 5.9e-8, 1e-40, -1e-40, 0.1, -3.14159, 2048.5, 65504, -65504, 65519.99, 65520, 1e5, Infinity, -Infinity];
  let seed = 11;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x80000000);
  const values = (n: number, edge: boolean) => Float32Array.from({ length: n },
    (_, i) => edge && i < EDGE.length ? EDGE[i]! : (rnd() - 0.5) * 2 ** Math.floor(rnd() * 40 - 28) * (rnd() < 0.2 ? 0 : 1));
  const halves = (p: Int32Array, word: number, n: number) => new Uint16Array(p.buffer, p.byteOffset + 4 * word, n);

  const specs: PackSpec[] = [{ rows: 3, hidden: 15, ffn: 37, heads: 2, f16: true, mlpAct: true, reluGated: false },
    { rows: 4, hidden: 8, ffn: 64, heads: 3, f16: false, mlpAct: false, reluGated: true }];
  for (const s of specs) {
    it(`every section equals the host's conversion of the same float32 (rows ${s.rows}, d ${s.hidden}, ffn ${s.ffn}, ${s.f16 ? 'float16' : 'float32'}${s.reluGated ? ', gated ReLU' : ''})`, async () => {
      await ensureBackend('webgpu');
      const L = packLayout(s);
      const xa = values(L.n, true), xm = values(L.n, false), act = values(L.nf, true), hn = values(s.rows * s.heads, false).map(Math.abs);
      act[40] = NaN; // a NaN is no active neuron
      const t = { xa: tf.tensor(xa, [s.rows, s.hidden]), xm: tf.tensor(xm, [s.rows, s.hidden]), act: tf.tensor(act, [1, s.rows, s.ffn]), hn: tf.tensor(hn, [s.rows, s.heads]) };
      const before = tf.memory().numTensors;
      const pt = packLayer(t, s);
      const p = (await pt.data()) as Int32Array;
      pt.dispose();
      expect(tf.memory().numTensors, 'no tensor leaked').toBe(before);
      Object.values(t).forEach((x) => x.dispose());
      expect(p.length).toBeGreaterThanOrEqual(L.total);
      const u32 = (a: Float32Array) => new Uint32Array(a.buffer);
      if (s.f16) {
        expect([...halves(p, L.xa, L.n)], 'x_attn halves').toEqual([...f32BitsToF16Array(u32(xa))]);
        expect([...halves(p, L.xm, L.n)], 'x_mlp halves').toEqual([...f32BitsToF16Array(u32(xm))]);
        expect(halves(p, L.xa, L.n + 1)[L.n], 'an odd count\'s last high half').toBe(0);
      } else {
        expect([...new Uint32Array(p.buffer, p.byteOffset + 4 * L.xa, L.n)]).toEqual([...u32(xa)]);
        expect([...new Uint32Array(p.buffer, p.byteOffset + 4 * L.xm, L.n)]).toEqual([...u32(xm)]);
      }
      if (s.mlpAct) expect([...halves(p, L.act, L.nf)], 'mlp_act halves').toEqual([...f32BitsToF16Array(u32(act))]);
      const bits = new Uint8Array(Math.ceil(L.nf / 8));
      activationBits(s.reluGated ? act.map(Math.abs) : act, bits, { simd: false });
      expect([...new Uint8Array(p.buffer, p.byteOffset + 4 * L.bits, bits.length)], 'active bits, LSB first').toEqual([...bits]);
      expect(new Uint8Array(p.buffer, p.byteOffset + 4 * L.bits, 4 * (L.hn - L.bits)).slice(bits.length).every((b) => b === 0), 'padding bits').toBe(true);
      expect([...new Float32Array(p.buffer, p.byteOffset + 4 * L.hn, hn.length)]).toEqual([...hn]);
      const rowAbs = new Float32Array(p.buffer, p.byteOffset + 4 * L.rowAbs, s.rows);
      for (let q = 0; q < s.rows; q++) {
        let want = 0;
        for (let i = 0; i < s.ffn; i++) want += Math.abs(act[q * s.ffn + i]!);
        if (!Number.isFinite(want)) expect(rowAbs[q], `row ${q}`).toBe(want); else expect(Math.abs(rowAbs[q]! - want) / want, `row ${q}`).toBeLessThan(1e-5);
      }
    });
  }

  it('readPacked (one mapping a batch, copied out natively or in JavaScript) gives each tensor\'s data(), also split over staging buffers', async () => {
    await ensureBackend('webgpu');
    // where a C compiler built the decode kernels, the readback addon must be there too
    if (fs.existsSync(NATIVE_ADDON)) expect(nativeReadback().why, 'the native readback addon is built (npm run build:native)').toBe('');
    const sizes = [5, 1024, 3, 70_001, 8];
    for (const [js, maxBytes, threads] of [[false, undefined, 4], [true, undefined, 1], [false, 4 * 70_010, 3], [true, 4 * 1030, 1]] as const) {
      const ts = sizes.map((n, k) => tf.tidy(() => tf.add(tf.mul(tf.range(0, n, 1, 'int32'), tf.scalar(7 + k, 'int32')), tf.scalar(-3 * k, 'int32'))));
      const got = await readPacked(ts, threads, js, maxBytes);
      const want = await Promise.all(ts.map(async (t) => (await t.data()) as Int32Array));
      got.forEach((g, k) => {
        expect(g.byteOffset === 0 && g.byteLength === g.buffer.byteLength, 'a buffer of its own').toBe(true);
        expect(Array.from(g), `tensor ${k}, js ${js}, maxBytes ${maxBytes}`).toEqual(Array.from(want[k]!));
      });
      ts.forEach((t) => t.dispose());
    }
    // two batches at once (collect keeps two in flight): each its own staging buffers
    const a = [tf.fill([4096], 1, 'int32'), tf.fill([4096], 2, 'int32')], b = [tf.fill([4096], 3, 'int32'), tf.fill([4096], 4, 'int32')];
    const [ra, rb] = await Promise.all([readPacked(a, 2), readPacked(b, 2)]);
    expect([ra[0]![9], ra[1]![4095], rb[0]![0], rb[1]![17]]).toEqual([1, 2, 3, 4]);
    [...a, ...b].forEach((t) => t.dispose());
  });

  it('a value only the per-value checks can judge sends the layer back to the float32 reads', async () => {
    await ensureBackend('webgpu');
    const s: PackSpec = { rows: 2, hidden: 4, ffn: 8, heads: 1, f16: true, mlpAct: false, reluGated: false };
    const h: LayerHostSpec = { dtype: 'float16', mlpAct: false, hidden: 4, ffn: 8, heads: 1, reluGated: false, rows: 2, firstSeq: 0, nSeq: 1 };
    const packed = async (xa0: number, act0: number) => {
      const xa = Float32Array.from({ length: 8 }, (_, i) => (i ? i / 8 : xa0)), act = Float32Array.from({ length: 16 }, (_, i) => (i ? i - 8 : act0));
      const t = { xa: tf.tensor(xa), xm: tf.tensor(xa), act: tf.tensor(act), hn: tf.tensor([1, 2]) };
      const pt = packLayer(t, s);
      try { return captureLayer({ layer: 0, packed: (await pt.data()) as Int32Array }, h); } finally { pt.dispose(); Object.values(t).forEach((x) => x.dispose()); }
    };
    const ok = await packed(0.5, 0);
    expect(ok?.active, 'the positive activations of rows 0 and 1').toBe(7);
    expect(ok?.absSum, '|-7..7| summed').toBe(56);
    for (const [xa0, act0, why] of [[65504, 0, '65504'], [65519, 0, 'rounds to 65504'], [70000, 0, 'overflows float16'], [NaN, 0, 'NaN'], [0.5, Infinity, 'an infinite activation'], [0.5, NaN, 'a NaN activation']] as const)
      expect(await packed(xa0, act0), why).toBeNull();
  });

  it('collect\'s batches on the OPT fixture: packed on the GPU equal the host\'s conversion of the float32 reads, byte for byte', async () => {
    await ensureBackend('webgpu');
    const model = loadModel(path.join(REPO, 'checkpoints', 'opt-fixture'));
    try {
      const seqs = [Array.from({ length: 32 }, (_, i) => 4 + ((i * 7919) % 4000)), Array.from({ length: 32 }, (_, i) => 4 + ((i * 104729) % 4000))];
      for (const [dtype, mlpAct] of [['float16', false], ['float32', true]] as const) {
        const spec = { layers: [0, model.config.layers - 1], seqLen: 32, dtype, mlpAct };
        const before = tf.memory().numTensors;
        const [a, b] = [await captureBatch(model, seqs, 0, { ...spec, pack: true }), await captureBatch(model, seqs, 0, { ...spec, pack: false })];
        expect(tf.memory().numTensors, 'no tensor leaked').toBe(before);
        for (const [i, x] of a.layers.entries()) {
          const y: LayerCapture = b.layers[i]!;
          expect(x.packed, 'the packed path ran').toBeDefined();
          const keys: ('xAttn' | 'xMlp' | 'bits' | 'headNorm' | 'mlpAct')[] = ['xAttn', 'xMlp', 'bits', 'headNorm', ...(mlpAct ? ['mlpAct' as const] : [])];
          for (const k of keys)
            expect(Buffer.from(x[k]!.buffer, x[k]!.byteOffset, x[k]!.byteLength).equals(Buffer.from(y[k]!.buffer, y[k]!.byteOffset, y[k]!.byteLength)), `${dtype} layer ${x.layer} ${k}`).toBe(true);
          expect(x.active).toBe(y.active);
          expect(x.headNormSum).toEqual(y.headNormSum);
          expect(Math.abs(x.absSum - y.absSum) / y.absSum, 'sum |mlp_act| (float32 row sums on the GPU)').toBeLessThan(1e-5);
        }
      }
    } finally { model.dispose(); }
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
