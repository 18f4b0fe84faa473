import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { collectSchema, trainSchema } from '../src/config/schemas.js';
import { runCollect } from '../src/stages/collect.js';
import { runTrain } from '../src/stages/train.js';
import { loadModel } from '../src/model/model.js';
import type { SparsityHooks } from '../src/model/forward.js';
import { loadPredictors, predictorHooks } from '../src/predictors/hooks.js';
import { exportBundle, loadBundlePredictors } from '../src/bundle/bundle.js';
import { batchNll, ppl } from '../src/eval/perplexity.js';
import { decodeNll, generate } from '../src/runtime/generate.js';
import type { DecodeModes } from '../src/runtime/decoder.js';
import { decodeModes } from '../src/runtime/plan.js';
import { runCli } from '../src/cli/program.js';
import { FIXTURES, selectedCount, tmpDir } from './helpers.js';
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

/** decode modes that select the same ids at every step: `mlp` / `heads` per layer */
function fixedModes(layers: number, mlp: (l: number) => Int32Array, heads: (l: number) => Int32Array): DecodeModes {
  return {
    mlp: Array.from({ length: layers }, (_, l) => ({ mode: 'select' as const, pick: () => mlp(l) })),
    heads: Array.from({ length: layers }, (_, l) => ({ mode: 'select' as const, pick: () => heads(l) })),
  };
}
const range = (n: number) => Int32Array.from({ length: n }, (_, i) => i);
/** the same fixed selection as [1, 1, n] masks for the forward pass (broadcast over batch and tokens) */
function fixedHooks(n: { ffn: number; heads: number }, mlp: (l: number) => Int32Array, heads: (l: number) => Int32Array): SparsityHooks {
  const mask = (ids: Int32Array, w: number) => { const m = new Float32Array(w); for (const j of ids) m[j] = 1; return tf.tensor3d(m, [1, 1, w]); };
  return { mlp: (l) => ({ mask: mask(mlp(l), n.ffn) }), heads: (l) => ({ mask: mask(heads(l), n.heads) }) };
}
const rel = (a: number, b: number) => Math.abs(a / b - 1);

describe('sparse runtime', () => {
  it('a DecodeSession selecting every neuron and head == dense modes == batchNll of the forward pass; generate leaks no tensors', async () => {
    const model = loadModel(MODEL, { decode: true });
    const c = model.config;
    const all = fixedModes(c.layers, () => range(c.ffn), () => range(c.heads));
    const before = tf.memory().numTensors;
    const dense = generate(model, [[2, 10, 20, 30]], { maxNewTokens: 12 });
    const sparse = generate(model, [[2, 10, 20, 30]], { maxNewTokens: 12, modes: all });
    expect(tf.memory().numTensors).toBe(before); // generate (prefill + decode) leaves nothing behind
    expect(sparse.tokens).toEqual(dense.tokens);
    expect(sparse.counts).toEqual(dense.counts);
    expect(dense.counts.mlpTotal).toBe(dense.decodeSteps * c.layers * c.ffn);
    const seq = [[2, 5, 9, 40, 41, 77, 3]];
    const d = decodeNll(model, seq);
    const s2 = decodeNll(model, seq, all);
    expect(d.count).toBe(6);
    expect(s2.count).toBe(6);
    expect(rel(s2.nll, d.nll)).toBeLessThan(1e-5);
    expect(s2.counts).toEqual(d.counts);
    expect(d.counts).toEqual({ mlpSelected: 6 * c.layers * c.ffn, mlpTotal: 6 * c.layers * c.ffn, headsSelected: 6 * c.layers * c.heads, headsTotal: 6 * c.layers * c.heads });
    // and the decode path equals the full forward pass
    const full = await batchNll(model, seq);
    expect(full.count).toBe(d.count);
    expect(rel(d.nll, full.nll)).toBeLessThan(1e-5);
    expect(tf.memory().numTensors).toBe(before);
    model.dispose();
  });

  it('a fixed neuron / head set computed by selecting rows == the forward pass with the other activations masked', async () => {
    const model = loadModel(MODEL, { decode: true });
    const c = model.config;
    const keep = range(c.ffn).filter((i) => i % 3 === 0);
    const heads = Int32Array.from([0, 2]);
    const seqs = [[2, 5, 9, 40, 41], [2, 300, 7, 11, 12]];
    const a = decodeNll(model, seqs, fixedModes(c.layers, () => keep, () => heads));
    const b = await batchNll(model, seqs, fixedHooks(c, () => keep, () => heads));
    expect(a.count).toBe(b.count);
    expect(rel(a.nll, b.nll)).toBeLessThan(1e-5);
    expect(a.counts.mlpSelected / a.counts.mlpTotal).toBeCloseTo(keep.length / c.ffn, 12);
    expect(a.counts.headsSelected / a.counts.headsTotal).toBeCloseTo(2 / c.heads, 12);
    const dense = decodeNll(model, seqs);
    expect(rel(a.nll, dense.nll)).toBeGreaterThan(1e-3); // the selection really changed something
    model.dispose();
  });

  it('host decode kernels (RoPE, GQA, SwiGLU, biases): select-all == dense == forward; fixed picks == forward masks', async () => {
    const dir = tmpDir();
    makeRandomCheckpoint(dir, { family: 'llama', layers: 2, hidden: 32, heads: 4, kvHeads: 2, headDim: 12, ffn: 48, attentionBias: true, mlpBias: true, seed: 3 });
    for (const d of [dir, path.join(FIXTURES, 'llama-tiny-ref')]) {
      const model = loadModel(d, { decode: true });
      const c = model.config;
      const seq = [[1, 5, 9, 30, 41, 17, 3, 22]];
      const dense = decodeNll(model, seq);
      expect(rel(decodeNll(model, seq, fixedModes(c.layers, () => range(c.ffn), () => range(c.heads))).nll, dense.nll), d).toBeLessThan(1e-5);
      expect(rel(dense.nll, (await batchNll(model, seq)).nll), d).toBeLessThan(1e-5);
      const keep = range(c.ffn).filter((i) => i % 2 === 1), hs = Int32Array.from([1, 2]);
      const a = decodeNll(model, seq, fixedModes(c.layers, () => keep, () => hs));
      const b = await batchNll(model, seq, fixedHooks(c, () => keep, () => hs));
      expect(rel(a.nll, b.nll), d).toBeLessThan(1e-5);
      expect(rel(a.nll, dense.nll), d).toBeGreaterThan(1e-4);
      model.dispose();
    }
  });

  it("the runtime's own sparse perplexity (bundle decode modes, token by token) matches evaluate's predicted-sparsity perplexity (mask) within 0.5%", async () => {
    const model = loadModel(MODEL, { decode: true });
    const preds = loadPredictors(path.join(work, 'pred'));
    const bundle = loadBundlePredictors(path.join(work, 'bundle'), MODEL);
    const seqs = [[2, 11, 23, 35, 47, 59, 71, 83, 95, 107, 119, 131, 143, 155, 167, 179], [2, 300, 301, 302, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]];
    let selected = 0, total = 0;
    const evalPpl = ppl(await batchNll(model, seqs, predictorHooks(preds, { mlp: true, heads: true, onSelect: (_s, _l, a, b) => { selected += selectedCount(a); total += b; } })));
    expect(selected / total).toBeLessThan(0.999); // predictors really skip work
    const built = decodeModes(model.config, bundle, null);
    try {
      expect(built.modes.mlp.some((m) => m.mode !== 'dense') || built.modes.heads.some((m) => m.mode !== 'dense')).toBe(true);
      const r = decodeNll(model, seqs, built.modes);
      const runtimePpl = ppl(r);
      const densePpl = ppl(await batchNll(model, seqs));
      expect(Math.abs(runtimePpl / evalPpl - 1)).toBeLessThan(0.005);
      expect(Math.abs(evalPpl / densePpl - 1)).toBeGreaterThan(1e-6);
      // the runtime skips work too: fewer neurons / heads computed than the dense model's
      expect(r.counts.mlpSelected + r.counts.headsSelected).toBeLessThan(r.counts.mlpTotal + r.counts.headsTotal);
    } finally { built.dispose(); }
    preds.dispose(); bundle.dispose(); model.dispose();
  });

  it('dejavu generate writes text dense and with a bundle; a bundle for another model exits 2', async () => {
    const out: string[] = [], err: string[] = [];
    const io = { stdout: { write: (s: string) => out.push(s) }, stderr: { write: (s: string) => err.push(s) } } as never;
    const enc = (p: string) => ['generate', '--model', MODEL, '--prompt', p, '--max-tokens', '8', '--json', '--backend', 'wasm'];
    expect(await runCli(enc('Call me'), io), err.join('')).toBe(0);
    const dense = JSON.parse(out.join(''));
    out.length = 0;
    expect(await runCli([...enc('Call me'), '--bundle', path.join(work, 'bundle')], io), err.join('')).toBe(0);
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
