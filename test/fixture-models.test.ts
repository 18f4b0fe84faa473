/**
 * The committed fixture models (checkpoints/opt-fixture, checkpoints/llama-fixture) against the PyTorch numbers in
 * their ppl-slice.json: held-out perplexity on the first 8 x 256 windows, OPT per-layer MLP density, and the
 * tokenizer + packing that produced the windows.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { loadModel } from '../src/model/model.js';
import { normalizeConfig } from '../src/model/config.js';
import { disposeOutput, forward } from '../src/model/forward.js';
import { loadTokenizer } from '../src/tokenizer.js';
import { batchNll, ppl, type NllTotals } from '../src/eval/perplexity.js';
import { packSequences, readDocuments } from '../src/activations/data.js';

const REPO = path.join(import.meta.dirname, '..');
const HELDOUT = path.join(REPO, 'data', 'heldout.jsonl');

interface Slice { seq_len: number; ids: number[][]; nll_mean: number; ppl: number; mlp_density_per_layer: number[] | null }
const slice = (name: string): Slice => JSON.parse(fs.readFileSync(path.join(REPO, 'checkpoints', name, 'ppl-slice.json'), 'utf8'));

beforeAll(async () => { await ensureBackend('wasm'); });

/**
 * Mean next-token NLL over the windows, 2 per forward pass. With `density`, the NLL is accumulated here (float64)
 * from one forward pass that also captures mlpAct (fraction > 0 per layer), and batchNll is cross-checked on the
 * first batch; without it, batchNll (src/eval/perplexity.ts) does the work.
 */
async function evaluate(dir: string, windows: number[][], density: boolean): Promise<{ nll: number; density: number[] }> {
  const before = tf.memory().numTensors;
  const model = loadModel(dir);
  const L = model.config.layers, V = model.config.vocabSize;
  const tot: NllTotals = { nll: 0, count: 0 };
  const active = new Array<number>(L).fill(0), total = new Array<number>(L).fill(0);
  try {
    for (let i = 0; i < windows.length; i += 2) {
      const batch = windows.slice(i, i + 2);
      if (!density) { const r = await batchNll(model, batch); tot.nll += r.nll; tot.count += r.count; continue; }
      const out = forward(model, batch, { capture: { logits: true, mlpAct: true } });
      let nll = 0, count = 0;
      try {
        const logp = tf.tidy(() => tf.logSoftmax(out.logits!, -1).dataSync() as Float32Array);
        const T = batch[0]!.length;
        for (let b = 0; b < batch.length; b++)
          for (let t = 0; t < T - 1; t++) { nll -= logp[(b * T + t) * V + batch[b]![t + 1]!]!; count++; }
        for (let l = 0; l < L; l++) {
          const a = out.captured.mlpAct![l]!.dataSync();
          let n = 0;
          for (let j = 0; j < a.length; j++) if (a[j]! > 0) n++;
          active[l]! += n; total[l]! += a.length;
        }
      } finally { disposeOutput(out); }
      if (i === 0) {
        const r = await batchNll(model, batch);
        expect(r.count).toBe(count);
        expect(Math.abs(r.nll / nll - 1), `batchNll ${r.nll} vs ${nll}`).toBeLessThan(1e-5);
      }
      tot.nll += nll; tot.count += count;
    }
  } finally { model.dispose(); }
  expect(tf.memory().numTensors, 'no tensor leaked').toBe(before);
  expect(tot.count).toBe(windows.length * (windows[0]!.length - 1));
  expect(ppl(tot)).toBeCloseTo(Math.exp(tot.nll / tot.count), 9);
  return { nll: tot.nll / tot.count, density: active.map((a, l) => a / total[l]!) };
}

describe('fixture models reproduce their PyTorch held-out numbers', () => {
  for (const name of ['opt-fixture', 'llama-fixture']) {
    const isOpt = name.startsWith('opt');
    it(`${name}: perplexity on the 8 x 256 windows of ppl-slice.json within 1%${isOpt ? '; per-layer MLP density within 0.005' : ''}`, async () => {
      const s = slice(name);
      expect(s.ids.length).toBe(8);
      for (const w of s.ids) expect(w.length).toBe(256);
      const r = await evaluate(path.join(REPO, 'checkpoints', name), s.ids, isOpt);
      const ppl = Math.exp(r.nll);
      expect(Math.abs(ppl / s.ppl - 1), `ppl ${ppl} vs PyTorch ${s.ppl}`).toBeLessThan(0.01);
      expect(Math.abs(r.nll - s.nll_mean), `nll ${r.nll} vs ${s.nll_mean}`).toBeLessThan(0.01);
      if (isOpt) {
        const want = s.mlp_density_per_layer!;
        expect(r.density.length).toBe(want.length);
        for (let l = 0; l < want.length; l++) expect(Math.abs(r.density[l]! - want[l]!), `layer ${l}: ${r.density[l]} vs ${want[l]}`).toBeLessThan(0.005);
        // contextual sparsity: most layers fire on well under a third of their neurons
        expect(r.density.filter((d) => d < 0.3).length).toBeGreaterThanOrEqual(4);
      }
    });

    it(`${name}: loadTokenizer + packSequences on data/heldout.jsonl reproduce the slice windows exactly`, async () => {
      const s = slice(name);
      const dir = path.join(REPO, 'checkpoints', name);
      const cfg = loadModelConfig(dir);
      const tokenizer = loadTokenizer(dir);
      const got: number[][] = [];
      for await (const w of packSequences(readDocuments(HELDOUT), { seqLen: s.seq_len, cfg, tokenizer, maxTokens: 2 * s.seq_len, source: HELDOUT })) got.push(w);
      expect(got.length).toBe(2);
      expect(got[0]).toEqual(s.ids[0]);
      expect(got[1]).toEqual(s.ids[1]);
      expect(got[0]![0]).toBe(isOpt ? 2 : 1); // BOS of the family
    });
  }
});

function loadModelConfig(dir: string) {
  return normalizeConfig(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')), `${dir}/config.json`);
}
