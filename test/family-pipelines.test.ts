/**
 * `pipeline` end to end (collect -> train -> evaluate -> plan -> bundle, verified) on the family references of
 * mistral, qwen2, gemma2 and gpt2 (tiny: 2 layers, d 64) and on a random relu-llama (2 layers, d 128, ffn 768, a
 * negative gate bias: ~10% of the neurons active, so that the lossless mode is clearly the fastest exact one), on
 * pre-tokenized random ids (the references have no tokenizer). ReLU families get the exact / lossless mode and 'active' labels; smooth ones (gated or GELU)
 * magnitude labels and no lossless mode. And the bundle decodes: generate's tokens under its plan.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeModes, ensureBackend, generate, loadBundlePredictors, loadModel, verifyBundle } from '../src/index.js';
import { writeSafetensors } from '../src/checkpoint/safetensors.js';
import { expectedWeights, normalizeConfig } from '../src/arch/registry.js';
import { mulberry32 } from '../src/util/random.js';
import { cli, FIXTURES, tmpDir } from './helpers.js';

const TMP = tmpDir('dejavu-family-pipelines-');
const FAMILIES = ['relu-llama', 'mistral', 'qwen2', 'gemma2', 'gpt2'];

function ids(file: string, docs: number, seed: number): string {
  let s = seed;
  const rnd = () => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s; };
  fs.writeFileSync(file, Array.from({ length: docs }, () => JSON.stringify({ ids: Array.from({ length: 64 }, () => 3 + (rnd() % 509)) })).join('\n') + '\n');
  return file;
}

/** a relu-llama with ~10% of its MLP neurons active (gate bias -1.3 against unit-variance pre-activations) */
function sparseReluLlama(dir: string): string {
  const raw = { ...JSON.parse(fs.readFileSync(path.join(FIXTURES, 'families', 'relu-llama-ref', 'config.json'), 'utf8')) as Record<string, unknown>,
    hidden_size: 128, intermediate_size: 768, head_dim: 32, mlp_bias: true };
  const c = normalizeConfig(raw, dir), rnd = mulberry32(3);
  const normal = () => Math.sqrt(-2 * Math.log(1 - rnd())) * Math.cos(2 * Math.PI * rnd());
  const tensors: Parameters<typeof writeSafetensors>[1] = {};
  for (const w of expectedWeights(c)) {
    const n = w.shape.reduce((a, b) => a * b, 1), name = w.name!.replace(/^layers\.\d+\./, '');
    const data = new Float32Array(n);
    if (name.endsWith('.g')) data.fill(1);
    else if (name === 'gateBias') data.fill(-1.3);
    else if (!/Bias$/.test(name)) { const sd = name === 'embed' ? 1 : 1 / Math.sqrt(w.shape[1]!); for (let i = 0; i < n; i++) data[i] = sd * normal(); }
    tensors[w.key] = { dtype: 'F32', shape: w.shape, data };
  }
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(raw));
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  return dir;
}

beforeAll(async () => { await ensureBackend('wasm'); process.env.DEJAVU_CACHE_DIR = path.join(TMP, 'cache'); });
afterAll(() => { delete process.env.DEJAVU_CACHE_DIR; fs.rmSync(TMP, { recursive: true, force: true }); });

describe('pipeline on the families', () => {
  const cal = ids(path.join(TMP, 'cal.jsonl'), 32, 1), held = ids(path.join(TMP, 'held.jsonl'), 16, 2);
  for (const f of FAMILIES) {
    it(`${f}: every stage, a verified bundle that generates`, async () => {
      const relu = f === 'relu-llama';
      const model = relu ? sparseReluLlama(path.join(TMP, 'relu-llama-sparse')) : path.join(FIXTURES, 'families', `${f}-ref`), w = path.join(TMP, f), cfg = path.join(TMP, `${f}.yaml`);
      fs.writeFileSync(cfg, [`model: ${model}`, `workdir: ${w}`, 'backend: wasm', `data: { calibration: ${cal}, heldout: ${held} }`,
        // relu-llama: its exact modes only (dense or lossless), so the plan's choice is the cost model's
        'collect: { seqLen: 32, dtype: float32, workers: 1 }', `train: { workers: 1, mlp: { ranks: [0.25]${relu ? ', predictors: [dense, exact]' : ''} } }`,
        'evaluate: { seqLen: 32, maxTokens: 256, densitySweep: [], workers: 1 }',
        'plan: { seqLen: 32, searchTokens: 256, verifyTokens: 256, calibrationRows: 1024, neverSlower: false }'].join('\n'));
      const r = await cli('pipeline', '--config', cfg, '--quiet');
      expect(r.code, r.err).toBe(0);
      const preds = JSON.parse(fs.readFileSync(path.join(w, 'predictors', 'predictors.json'), 'utf8')) as { layers: { mlp: { predictor: string; label: { kind: string } } }[] };
      for (const l of preds.layers) {
        expect(l.mlp.label.kind).toBe(relu ? 'active' : 'topFraction');
        if (!relu) expect(l.mlp.predictor).not.toBe('exact');
      }
      const plan = JSON.parse(fs.readFileSync(path.join(w, 'plan', 'plan.json'), 'utf8')) as { plan: { layers: { mlp: { mode: string } }[] } };
      const modes = plan.plan.layers.map((l) => l.mlp.mode);
      if (relu) {
        expect(modes).toEqual(['lossless', 'lossless']);
        // active = nonzero relu(gate) * up (negative where up is): the exact mode's recall 1 at the true density (~10%)
        type Metrics = { recall: number; predictedDensity: number; trueDensity: number };
        const rep = JSON.parse(fs.readFileSync(path.join(w, 'report', 'report.json'), 'utf8')) as { layers: { mlp: { metrics: Metrics } }[] };
        for (const { mlp: { metrics: mt } } of rep.layers) {
          expect(mt.recall).toBe(1);
          expect(mt.trueDensity).toBeGreaterThan(0.05);
          expect(mt.trueDensity).toBeLessThan(0.2);
          expect(mt.predictedDensity).toBeCloseTo(mt.trueDensity, 6);
        }
      }
      else expect(modes).not.toContain('lossless');
      expect(verifyBundle(path.join(w, 'bundle'), model).problems).toEqual([]);
      // the bundle's plan through the decode runtime: as many tokens as asked, from the vocabulary
      const m = loadModel(model, { decode: true });
      const p = loadBundlePredictors(path.join(w, 'bundle'), model);
      const built = decodeModes(m.config, p, p.bundle.plan ?? null);
      try {
        const g = generate(m, [[5, 6, 7, 8], [9, 10]], { maxNewTokens: 6, modes: built.modes, stopAtEos: false });
        expect(g.tokens.map((t) => t.length)).toEqual([6, 6]);
        for (const t of g.tokens.flat()) expect(t >= 0 && t < m.config.vocabSize).toBe(true);
        if (relu) expect(g.counts.mlpSelected).toBeLessThan(g.counts.mlpTotal); // lossless reads only the active rows
      } finally { built.dispose(); p.dispose(); m.dispose(); }
    }, 120_000);
  }
});
