import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { collectSchema } from '../src/config/schemas.js';
import { runCollect } from '../src/stages/collect.js';
import { iterateLayer, readManifest, layerDir } from '../src/activations/dataset.js';
import { FIXTURES, loadReference, relFrob, tmpDir } from './helpers.js';
import { openSafetensors, readTensorF32, writeSafetensors } from '../src/checkpoint/safetensors.js';

const quiet = { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) };
const REPO = path.join(import.meta.dirname, '..');
const BIN = path.join(REPO, 'bin', 'dejavu.js');

beforeAll(async () => { await ensureBackend('wasm'); });

function writeJsonl(file: string, rows: object[]) { fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n'); }

/** a few KB of varied text for the tiny-ref tokenizer */
function sampleText(n: number): object[] {
  const words = 'the whale ship sea captain ahab ishmael white harpoon ocean deep storm sail mast crew voyage night'.split(' ');
  let s = 12345;
  const rnd = () => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s / 0x7fffffff; };
  return Array.from({ length: n }, (_, d) => ({ text: Array.from({ length: 40 + (d % 7) * 5 }, () => words[Math.floor(rnd() * words.length)]).join(' ') + '.' }));
}

describe('collect-activations', () => {
  for (const name of ['opt-tiny-ref', 'llama-tiny-ref']) {
    it(`${name}: x_attn, x_mlp, mlp_active, mlp_act and head_norm agree with the HF reference`, async () => {
      const dir = path.join(FIXTURES, name);
      const ref = loadReference(dir);
      const tmp = tmpDir();
      const data = path.join(tmp, 'ids.jsonl');
      writeJsonl(data, ref.ids.map((ids) => ({ ids })));
      const T = ref.ids[0]!.length;
      const cfg = collectSchema.parse({ model: dir, data, out: path.join(tmp, 'out'), seqLen: T, batchSize: 2, dtype: 'float32', recordMlpAct: true });
      await runCollect(cfg, quiet);
      const m = readManifest(cfg.out);
      expect(m.tokens).toBe(2 * T);
      const L = m.model.config.layers, H = m.dims.heads, hd = m.dims.headDim, F = m.dims.ffn, d = m.dims.hidden;
      for (let l = 0; l < L; l++) {
        const rows = [...iterateLayer(cfg.out, m, l)];
        const b = rows[0]!;
        expect(rows.length).toBe(1);
        expect(Array.from(b.seq)).toEqual([...Array(T).fill(0), ...Array(T).fill(1)]);
        expect(Array.from(b.pos.slice(0, 3))).toEqual([0, 1, 2]);
        expect(relFrob(b.xAttn, ref.tensors.get(`hidden_states.${l}`)!.data)).toBeLessThan(1e-4);
        const act = ref.tensors.get(`mlp_act.${l}`)!.data;
        expect(relFrob(b.mlpAct!, act)).toBeLessThan(1e-3); // float16 storage
        let mismatches = 0, checked = 0;
        for (let i = 0; i < act.length; i++) {
          if (Math.abs(act[i]!) < 1e-6) continue;
          checked++;
          if ((act[i]! > 0 ? 1 : 0) !== b.mlpActive[i]) mismatches++;
        }
        expect(checked).toBeGreaterThan(act.length / 2);
        expect(mismatches).toBe(0);
        const ctx = ref.tensors.get(`attn_context.${l}`)!.data;
        const norms = new Float32Array(2 * T * H);
        for (let r = 0; r < 2 * T; r++) for (let h = 0; h < H; h++) {
          let s = 0; for (let j = 0; j < hd; j++) s += ctx[r * H * hd + h * hd + j]! ** 2;
          norms[r * H + h] = Math.sqrt(s);
        }
        expect(relFrob(b.headNorm, norms)).toBeLessThan(1e-4);
        expect(b.xMlp.length).toBe(2 * T * d);
        expect(b.mlpActive.length).toBe(2 * T * F);
      }
    });
  }

  it('refuses a folder from another config, resumes nothing when complete, and errors clearly', async () => {
    const tmp = tmpDir();
    const data = path.join(tmp, 'd.jsonl');
    writeJsonl(data, sampleText(20));
    const model = path.join(FIXTURES, 'opt-tiny-ref');
    const out = path.join(tmp, 'out');
    await runCollect(collectSchema.parse({ model, data, out, seqLen: 16, maxTokens: 64 }), quiet);
    await expect(runCollect(collectSchema.parse({ model, data, out, seqLen: 32, maxTokens: 64 }), quiet)).rejects.toThrow(/different model, data or config/);
    const again = await runCollect(collectSchema.parse({ model, data, out, seqLen: 16, maxTokens: 64 }), quiet);
    expect(again.text).toMatch(/tokens 64/);
    await runCollect(collectSchema.parse({ model, data, out, seqLen: 32, maxTokens: 64, overwrite: true }), quiet);
    expect(readManifest(out).seqLen).toBe(32);
    const empty = path.join(tmp, 'empty.jsonl'); fs.writeFileSync(empty, '\n');
    await expect(runCollect(collectSchema.parse({ model, data: empty, out: path.join(tmp, 'o2') }), quiet)).rejects.toThrow(/holds no documents/);
    const short = path.join(tmp, 'short.jsonl'); writeJsonl(short, [{ text: 'the whale' }]);
    await expect(runCollect(collectSchema.parse({ model, data: short, out: path.join(tmp, 'o3'), seqLen: 64 }), quiet)).rejects.toThrow(/too few tokens for one sequence of 64/);
    await expect(runCollect(collectSchema.parse({ model, data, out: path.join(tmp, 'o4'), layers: [7] }), quiet)).rejects.toThrow(/layer 7 does not exist/);
    const badIds = path.join(tmp, 'bad.jsonl'); writeJsonl(badIds, [{ ids: [1, 2, 99999] }]);
    await expect(runCollect(collectSchema.parse({ model, data: badIds, out: path.join(tmp, 'o5'), seqLen: 2 }), quiet)).rejects.toThrow(/outside the model's vocabulary/);
    expect(fs.existsSync(path.join(tmp, 'o5', 'manifest.json'))).toBe(false);
    // unwritable output: a path below a regular file
    const file = path.join(tmp, 'plain-file'); fs.writeFileSync(file, 'x');
    await expect(runCollect(collectSchema.parse({ model, data, out: path.join(file, 'sub'), seqLen: 16, maxTokens: 64 }), quiet)).rejects.toThrow(/cannot create output folder .*plain-file/);
  });

  it('NaN in the activations is a clear error and leaves no dataset behind', async () => {
    const tmp = tmpDir();
    const bad = path.join(tmp, 'nan-model');
    fs.mkdirSync(bad);
    for (const f of ['config.json', 'tokenizer.json']) fs.copyFileSync(path.join(FIXTURES, 'opt-tiny-ref', f), path.join(bad, f));
    const st = openSafetensors(path.join(FIXTURES, 'opt-tiny-ref', 'model.safetensors'));
    const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
    for (const [k, t] of st.tensors) tensors[k] = { dtype: 'F32', shape: t.shape, data: readTensorF32(st, k) };
    tensors['model.decoder.layers.1.fc1.bias']!.data[5] = NaN;
    writeSafetensors(path.join(bad, 'model.safetensors'), tensors);
    const data = path.join(tmp, 'd.jsonl');
    writeJsonl(data, sampleText(10));
    const out = path.join(tmp, 'out');
    await expect(runCollect(collectSchema.parse({ model: bad, data, out, seqLen: 16, maxTokens: 64 }), quiet)).rejects.toThrow(/non-finite mlp_act value \(NaN\) at layer 1/);
    expect(fs.existsSync(out)).toBe(false);
  });

  it('after kill -9 the same command resumes and the dataset equals an uninterrupted run', async () => {
    const tmp = tmpDir();
    const data = path.join(tmp, 'd.jsonl');
    writeJsonl(data, sampleText(150));
    const model = path.join(FIXTURES, 'opt-tiny-ref');
    const args = (out: string) => [BIN, 'collect-activations', '--model', model, '--data', data, '--out', out, '--seq-len', '32', '--batch-size', '1', '--set', 'rowsPerShard=64', '--backend', 'wasm', '--quiet'];
    const full = path.join(tmp, 'full');
    const r = spawnSync('node', args(full), { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    const killed = path.join(tmp, 'killed');
    const child = spawn('node', args(killed), { stdio: 'ignore' });
    // listen for the exit before anything else, so an early exit cannot be missed (that wait used to hang)
    const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
    const progress = path.join(killed, 'progress.json');
    let timer: NodeJS.Timeout | undefined, poll: NodeJS.Timeout | undefined;
    try {
      const outcome = await Promise.race([
        new Promise<'killed'>((res) => {
          poll = setInterval(() => {
            try {
              if (fs.existsSync(progress) && JSON.parse(fs.readFileSync(progress, 'utf8')).shardsDone >= 3) { clearInterval(poll); child.kill('SIGKILL'); res('killed'); }
            } catch { /* being renamed */ }
          }, 2);
        }),
        exited.then((code) => `exited by itself (code ${code}) before 3 shards were done` as const),
        new Promise<'timeout'>((res) => { timer = setTimeout(() => res('timeout'), 60_000); }),
      ]);
      expect(outcome).toBe('killed');
      await Promise.race([exited, new Promise((_, rej) => setTimeout(() => rej(new Error('the killed child did not exit within 10 s')), 10_000))]);
    } finally {
      clearInterval(poll);
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    expect(readManifest(killed, false).status).toBe('in-progress'); // it really was interrupted
    const r2 = spawnSync('node', args(killed), { encoding: 'utf8', timeout: 60_000 });
    expect(r2.status, r2.stderr).toBe(0);
    const a = readManifest(full), b = readManifest(killed);
    expect(b.tokens).toBe(a.tokens);
    expect(b.shards).toBe(a.shards);
    for (const l of a.layers) {
      const fa = fs.readdirSync(layerDir(full, l)).sort(), fb = fs.readdirSync(layerDir(killed, l)).sort();
      expect(fb).toEqual(fa);
      for (const f of fa) expect(fs.readFileSync(path.join(layerDir(killed, l), f)).equals(fs.readFileSync(path.join(layerDir(full, l), f))), `${l}/${f}`).toBe(true);
    }
    const sa = JSON.parse(fs.readFileSync(path.join(full, 'summary.json'), 'utf8')), sb = JSON.parse(fs.readFileSync(path.join(killed, 'summary.json'), 'utf8'));
    expect(sb.layers.map((x: { mlpDensity: number }) => x.mlpDensity)).toEqual(sa.layers.map((x: { mlpDensity: number }) => x.mlpDensity));
    expect(sb.resumedFromShard).toBeGreaterThanOrEqual(3);
  });
});
