import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { collectSchema, trainSchema } from '../src/config/schemas.js';
import { runCollect } from '../src/stages/collect.js';
import { runTrain } from '../src/stages/train.js';
import { loadModel } from '../src/model/model.js';
import { forward, disposeOutput, type SparsityHooks } from '../src/model/forward.js';
import { loadPredictors, predictorHooks } from '../src/predictors/hooks.js';
import { exportBundle, loadBundlePredictors } from '../src/bundle/bundle.js';
import { batchNll, ppl } from '../src/eval/perplexity.js';
import { decodePerplexityNll, generate } from '../src/runtime/generate.js';
import { runCli } from '../src/cli/program.js';
import { FIXTURES, relFrob, tmpDir } from './helpers.js';
import { makeRandomCheckpoint } from './reference/random-checkpoint.js';

const quiet = { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) };
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
let work = '';

beforeAll(async () => {
  await ensureBackend('wasm');
  work = tmpDir();
  const data = path.join(work, 'd.jsonl');
  const words = 'the whale ship sea captain ahab ishmael white harpoon ocean deep storm sail mast crew voyage night'.split(' ');
  let s = 7;
  const rnd = () => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s / 0x7fffffff; };
  fs.writeFileSync(data, Array.from({ length: 60 }, () => JSON.stringify({ text: Array.from({ length: 60 }, () => words[Math.floor(rnd() * words.length)]).join(' ') })).join('\n'));
  await runCollect(collectSchema.parse({ model: MODEL, data, out: path.join(work, 'acts'), seqLen: 32, maxTokens: 4096 }), quiet);
  await runTrain(trainSchema.parse({ activations: path.join(work, 'acts'), out: path.join(work, 'pred'), workers: 1, mlp: { rank: 16, targetRecall: 0.9 }, heads: { rank: 8, targetRecall: 0.9 }, optim: { epochs: 2, batchSize: 256 } }), quiet);
  exportBundle({ model: MODEL, predictors: path.join(work, 'pred'), out: path.join(work, 'bundle'), neuronMajor: true, overwrite: false, config: {} });
}, 300_000);

describe('sparse runtime', () => {
  it('indices mode with every neuron and head selected equals dense (neuron-major decode path)', () => {
    const model = loadModel(MODEL, { neuronMajor: true });
    const c = model.config;
    const all: SparsityHooks = { mlp: () => ({ indices: [Int32Array.from({ length: c.ffn }, (_, i) => i)] }), heads: () => ({ indices: [Int32Array.from({ length: c.heads }, (_, i) => i)] }) };
    const before = tf.memory().numTensors;
    const dense = generate(model, [[2, 10, 20, 30]], { maxNewTokens: 12 });
    const sparse = generate(model, [[2, 10, 20, 30]], { maxNewTokens: 12, sparsity: all });
    expect(sparse.tokens).toEqual(dense.tokens);
    const d = decodePerplexityNll(model, [[2, 5, 9, 40, 41, 77, 3]]);
    const s2 = decodePerplexityNll(model, [[2, 5, 9, 40, 41, 77, 3]], all);
    expect(Math.abs(d.nll - s2.nll) / d.nll).toBeLessThan(1e-5);
    // and the cached decode path equals the full forward pass
    const full = batchNll(model, [[2, 5, 9, 40, 41, 77, 3]]);
    expect(Math.abs(full.nll - d.nll) / full.nll).toBeLessThan(1e-5);
    expect(tf.memory().numTensors).toBe(before);
    model.dispose();
  });

  it('a fixed neuron set computed by gathering equals dense with the other activations zeroed', () => {
    const model = loadModel(MODEL, { neuronMajor: true });
    const c = model.config;
    const keep = Int32Array.from({ length: c.ffn }, (_, i) => i).filter((i) => i % 3 === 0);
    const heads = Int32Array.from([0, 2]);
    const maskM = tf.tensor3d(Float32Array.from({ length: c.ffn }, (_, i) => (i % 3 === 0 ? 1 : 0)), [1, 1, c.ffn]);
    const maskH = tf.tensor3d([1, 0, 1, 0], [1, 1, c.heads]);
    const a = decodePerplexityNll(model, [[2, 5, 9, 40, 41]], { mlp: () => ({ indices: [keep] }), heads: () => ({ indices: [heads] }) });
    const b = decodePerplexityNll(model, [[2, 5, 9, 40, 41]], { mlp: () => ({ mask: maskM }), heads: () => ({ mask: maskH }) });
    expect(Math.abs(a.nll - b.nll) / b.nll).toBeLessThan(1e-5);
    const dense = decodePerplexityNll(model, [[2, 5, 9, 40, 41]]);
    expect(Math.abs(a.nll - dense.nll) / dense.nll).toBeGreaterThan(1e-3); // the mask really changed something
    maskM.dispose(); maskH.dispose(); model.dispose();
  });

  it('host decode kernels (RoPE, GQA, SwiGLU, biases): indices == mask mode == dense when all selected', () => {
    const dir = tmpDir();
    makeRandomCheckpoint(dir, { family: 'llama', layers: 2, hidden: 32, heads: 4, kvHeads: 2, headDim: 12, ffn: 48, attentionBias: true, mlpBias: true, seed: 3 });
    for (const d of [dir, path.join(FIXTURES, 'llama-tiny-ref')]) {
      const model = loadModel(d, { neuronMajor: true });
      const c = model.config;
      const seq = [1, 5, 9, 30, 41, 17, 3, 22];
      const all: SparsityHooks = { mlp: () => ({ indices: [Int32Array.from({ length: c.ffn }, (_, i) => i)] }), heads: () => ({ indices: [Int32Array.from({ length: c.heads }, (_, i) => i)] }) };
      const dense = decodePerplexityNll(model, [seq]);
      expect(Math.abs(decodePerplexityNll(model, [seq], all).nll / dense.nll - 1)).toBeLessThan(1e-5);
      const keep = Int32Array.from({ length: c.ffn }, (_, i) => i).filter((i) => i % 2 === 1);
      const maskM = tf.tensor3d(Float32Array.from({ length: c.ffn }, (_, i) => i % 2), [1, 1, c.ffn]);
      const maskH = tf.tensor3d(Float32Array.from({ length: c.heads }, (_, h) => (h === 1 || h === 2 ? 1 : 0)), [1, 1, c.heads]);
      const a = decodePerplexityNll(model, [seq], { mlp: () => ({ indices: [keep] }), heads: () => ({ indices: [Int32Array.from([1, 2])] }) });
      const b = decodePerplexityNll(model, [seq], { mlp: () => ({ mask: maskM }), heads: () => ({ mask: maskH }) });
      expect(Math.abs(a.nll / b.nll - 1)).toBeLessThan(1e-5);
      expect(Math.abs(a.nll / dense.nll - 1)).toBeGreaterThan(1e-4);
      maskM.dispose(); maskH.dispose(); model.dispose();
    }
  });

  it("the runtime's own sparse perplexity (skip, token by token) matches evaluate's predicted-sparsity perplexity (mask) within 0.5%", () => {
    const model = loadModel(MODEL, { neuronMajor: true });
    const preds = loadPredictors(path.join(work, 'pred'));
    const bundle = loadBundlePredictors(path.join(work, 'bundle'), MODEL);
    const seqs = [[2, 11, 23, 35, 47, 59, 71, 83, 95, 107, 119, 131, 143, 155, 167, 179], [2, 300, 301, 302, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]];
    let selected = 0, total = 0;
    const evalPpl = ppl(batchNll(model, seqs, predictorHooks(preds, { mode: 'mask', mlp: true, heads: true, onSelect: (_s, _l, a, b) => { selected += a; total += b; } })));
    expect(selected / total).toBeLessThan(0.999); // predictors really skip work
    const runtimePpl = ppl(decodePerplexityNll(model, seqs, predictorHooks(bundle, { mode: 'indices', mlp: true, heads: true })));
    const densePpl = ppl(batchNll(model, seqs));
    expect(Math.abs(runtimePpl / evalPpl - 1)).toBeLessThan(0.005);
    expect(Math.abs(evalPpl / densePpl - 1)).toBeGreaterThan(1e-6);
    preds.dispose(); bundle.dispose(); model.dispose();
  });

  it('dejavu generate writes text dense and with a bundle; a bundle for another model exits 2', async () => {
    const out: string[] = [], err: string[] = [];
    const io = { stdout: { write: (s: string) => out.push(s) }, stderr: { write: (s: string) => err.push(s) } } as never;
    const enc = (p: string) => ['generate', '--model', MODEL, '--prompt', p, '--max-tokens', '8', '--json', '--backend', 'wasm'];
    expect(await runCli(enc('Call me'), io)).toBe(0);
    const dense = JSON.parse(out.join(''));
    out.length = 0;
    expect(await runCli([...enc('Call me'), '--bundle', path.join(work, 'bundle')], io)).toBe(0);
    const sparse = JSON.parse(out.join(''));
    expect(dense.mode).toBe('dense');
    expect(sparse.mode).toBe('sparse');
    expect(sparse.tokens[0].length).toBe(8);
    expect(sparse.mlpDensity).toBeLessThan(1);
    err.length = 0;
    expect(await runCli(['generate', '--model', path.join(FIXTURES, 'llama-tiny-ref'), '--bundle', path.join(work, 'bundle'), '--prompt', 'x', '--backend', 'wasm'], io)).toBe(2);
    expect(err.join('')).toMatch(/tokenizer|another checkpoint/);
  });
});
void relFrob; void disposeOutput; void forward;
