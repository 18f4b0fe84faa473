/**
 * Per-layer MLP modes (issue 12) through the one forward pass, from a predictors folder and from a bundle: the exact
 * mode (ReLU: the first projection selects the neurons > 0) and the dense mode reproduce dense logits, also in the
 * decode runtime (exact -> lossless steps); a closed-form mode really selects fewer neurons and stays close;
 * evaluate reports the exact bound and the estimated cost.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { collectSchema, evaluateSchema, trainSchema } from '../src/config/schemas.js';
import { runCollect } from '../src/stages/collect.js';
import { runTrain } from '../src/stages/train.js';
import { runEvaluate, type EvalReport } from '../src/stages/evaluate.js';
import { loadModel } from '../src/model/model.js';
import { forward, disposeOutput, type SparsityHooks } from '../src/model/forward.js';
import { loadPredictors, predictorHooks } from '../src/predictors/hooks.js';
import { exportBundle, loadBundlePredictors } from '../src/bundle/bundle.js';
import { decodeNll } from '../src/runtime/generate.js';
import { DecodeSession, denseModes } from '../src/runtime/decoder.js';
import { decodeModes } from '../src/runtime/plan.js';
import { FIXTURES, selectedCount, tmpDir } from './helpers.js';

const quiet = { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) };
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const DATA = path.join(import.meta.dirname, '..', 'data', 'calibration.jsonl');
const TMP = tmpDir('dejavu-modes-');
const ACTS = path.join(TMP, 'acts');
const SEQS = [[2, 11, 40, 7, 90, 13, 250, 3, 66, 12], [2, 5, 9, 40, 41, 300, 17, 8, 1, 99]];

beforeAll(async () => {
  await ensureBackend('wasm');
  await runCollect(collectSchema.parse({ model: MODEL, data: DATA, out: ACTS, seqLen: 64, maxTokens: 3072, dtype: 'float32', rowsPerShard: 1024 }), quiet);
  for (const [name, families] of [['exact', ['exact']], ['dense', ['dense']], ['cf', ['closed-form']]] as const)
    await runTrain(trainSchema.parse({ activations: ACTS, out: path.join(TMP, name), workers: 1, heads: { enabled: false }, mlp: { predictors: families, ranks: [0.5], rule: 'threshold' } }), quiet);
}, 300_000);
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

function logits(hooks?: SparsityHooks): Float32Array {
  const model = loadModel(MODEL);
  try {
    const out = forward(model, SEQS, hooks ? { sparsity: hooks } : {});
    const v = out.logits!.dataSync() as Float32Array;
    disposeOutput(out);
    return Float32Array.from(v);
  } finally { model.dispose(); }
}

describe('MLP modes through the forward pass', () => {
  it('exact mode (mask) selects exactly the active neurons: logits equal dense bit for bit; dense mode computes (and counts) every neuron', () => {
    const dense = logits();
    for (const name of ['exact', 'dense']) {
      const p = loadPredictors(path.join(TMP, name));
      let sel = 0, tot = 0;
      try {
        const got = logits(predictorHooks(p, { mlp: true, heads: false, onSelect: (_s, _l, a, b) => { sel += selectedCount(a); tot += b; } }));
        expect(got).toEqual(dense);
        expect(tot).toBeGreaterThan(0);
        if (name === 'exact') expect(sel / tot).toBeLessThan(0.9); else expect(sel).toBe(tot); // dense: every neuron, counted
      } finally { p.dispose(); }
    }
  });

  it('exact mode from a bundle in the decode runtime (lossless steps) equals dense decoding bit for bit, computing fewer rows', () => {
    const b = path.join(TMP, 'bundle-exact');
    exportBundle({ model: MODEL, predictors: path.join(TMP, 'exact'), out: b, neuronMajor: true, overwrite: false, config: {} });
    const model = loadModel(MODEL, { decode: true });
    const bundle = loadBundlePredictors(b, MODEL);
    const built = decodeModes(model.config, bundle, null);
    try {
      expect(bundle.bundle.layers.every((l) => l.mlp?.predictor === 'exact' && l.mlp.tensors === null)).toBe(true);
      expect(built.modes.mlp.map((m) => m.mode)).toEqual(Array(model.config.layers).fill('lossless'));
      expect(built.modes.heads.map((m) => m.mode)).toEqual(Array(model.config.layers).fill('dense'));
      // logits of every step, dense vs lossless sessions over the same two rows
      const sd = new DecodeSession(model, denseModes(model.config.layers), SEQS.length);
      const sl = new DecodeSession(model, built.modes, SEQS.length);
      for (let t = 0; t < SEQS[0]!.length; t++) {
        const ids = SEQS.map((r) => r[t]!);
        expect(Array.from(sl.step(ids)), `token ${t}`).toEqual(Array.from(sd.step(ids)));
      }
      expect(sl.counts.mlpTotal).toBe(sd.counts.mlpTotal);
      expect(sl.counts.mlpSelected / sl.counts.mlpTotal).toBeLessThan(0.9); // only the active neurons' rows of the second projection
      expect(sd.counts.mlpSelected).toBe(sd.counts.mlpTotal);
      const dense = decodeNll(model, SEQS);
      const sparse = decodeNll(model, SEQS, built.modes);
      expect(sparse.nll).toBe(dense.nll);
      expect(sparse.count).toBe(dense.count);
      expect(sparse.counts.mlpSelected).toBeLessThan(sparse.counts.mlpTotal);
    } finally { built.dispose(); bundle.dispose(); model.dispose(); }
  });

  it('decode modes follow each layer\'s trained entry: dense -> dense, closed form -> select by its rule', () => {
    const model = loadModel(MODEL, { decode: true });
    try {
      const dp = loadPredictors(path.join(TMP, 'dense'));
      const dm = decodeModes(model.config, dp, null);
      try {
        expect(dm.modes.mlp.map((m) => m.mode)).toEqual(Array(model.config.layers).fill('dense'));
        const r = decodeNll(model, SEQS, dm.modes);
        expect(r.counts.mlpSelected).toBe(r.counts.mlpTotal);
        expect(r.nll).toBe(decodeNll(model, SEQS).nll);
      } finally { dm.dispose(); dp.dispose(); }
      const cp = loadPredictors(path.join(TMP, 'cf'));
      const cm = decodeModes(model.config, cp, null);
      try {
        expect(cm.modes.mlp.map((m) => m.mode)).toEqual(Array(model.config.layers).fill('select'));
        const r = decodeNll(model, SEQS, cm.modes);
        expect(r.counts.mlpSelected / r.counts.mlpTotal).toBeLessThan(0.95);
        const d = decodeNll(model, SEQS);
        expect(Math.abs(r.nll / d.nll - 1)).toBeLessThan(0.05);
        expect(r.nll).not.toBe(d.nll);
      } finally { cm.dispose(); cp.dispose(); }
    } finally { model.dispose(); }
  });

  it('closed-form mode really skips neurons and its logits stay close to dense', () => {
    const p = loadPredictors(path.join(TMP, 'cf'));
    let sel = 0, tot = 0;
    try {
      expect(p.manifest.layers.every((l) => l.mlp?.predictor === 'closed-form' && l.mlp.input === 'h_mlp')).toBe(true);
      const dense = logits();
      const got = logits(predictorHooks(p, { mlp: true, heads: false, onSelect: (_s, _l, a, b) => { sel += selectedCount(a); tot += b; } }));
      expect(sel / tot).toBeLessThan(0.95);
      let num = 0, den = 0;
      for (let i = 0; i < dense.length; i++) { num += (got[i]! - dense[i]!) ** 2; den += dense[i]! ** 2; }
      expect(Math.sqrt(num / den)).toBeLessThan(0.05);
      expect(Math.sqrt(num / den)).toBeGreaterThan(0); // it did skip active neurons somewhere
    } finally { p.dispose(); }
  });

  it('evaluate-recall: exact bound <= the predictor\'s density at its recall, cost = predictor share + density, exact mode at the true density', async () => {
    for (const name of ['cf', 'exact']) {
      const res = await runEvaluate(evaluateSchema.parse({ activations: ACTS, predictors: path.join(TMP, name), out: path.join(TMP, `rep-${name}`) }), quiet);
      const r = res.json as EvalReport;
      for (const l of r.layers) {
        const m = l.mlp!;
        expect(m.exactBound!.predictedDensity).toBeGreaterThan(0);
        if (name === 'exact') {
          expect(m.metrics.recall).toBeGreaterThan(0.999);
          expect(Math.abs(m.metrics.predictedDensity - m.metrics.trueDensity)).toBeLessThan(1e-3);
          expect(m.costShare).toBeCloseTo(0.5 * (1 + m.metrics.predictedDensity), 10); // first projection + density x second
        } else {
          expect(m.exactBound!.predictedDensity).toBeLessThanOrEqual(m.metrics.predictedDensity + 1e-9);
          const d = 64, F = 256, rank = m.rank!;
          expect(m.costShare).toBeCloseTo((2 * rank * (d + F)) / (4 * d * F) + m.metrics.predictedDensity, 10);
        }
        expect(m.magnitudeRecall!).toBeGreaterThanOrEqual(m.metrics.recall - 0.05);
      }
      expect(res.text).toContain('exact bound');
    }
  });
});
