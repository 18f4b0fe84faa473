/**
 * evaluate-recall (issue 6): selection metrics on hand-made cases, and end to end on a tiny model: held-out
 * metrics against a float64 recompute, an all-selecting rule whose predicted/oracle perplexity is the dense one
 * exactly, refusal of predictors from another model, and the written report (JSON, Markdown, SVG).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { collectSchema, evaluateSchema, trainSchema, type EvaluateConfig } from '../src/config/schemas.js';
import { runCollect } from '../src/stages/collect.js';
import { runTrain } from '../src/stages/train.js';
import { runEvaluate, type EvalReport } from '../src/stages/evaluate.js';
import { iterateLayer, readManifest } from '../src/activations/dataset.js';
import { openSafetensors, readTensorF32 } from '../src/checkpoint/safetensors.js';
import { RankHistogram, ThresholdCounter, topKLabels } from '../src/predictors/metrics.js';
import type { PredictorsManifest } from '../src/predictors/store.js';
import { isUserError } from '../src/util/errors.js';
import { sealed } from '../src/util/seal.js';
import { FIXTURES, tmpDir } from './helpers.js';
import { sweepRange } from '../src/eval/plots.js';

const quiet = { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) };
const REPO = path.join(import.meta.dirname, '..');
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const TMP = tmpDir('dejavu-evaluate-');
const TRAIN_ACTS = path.join(TMP, 'acts-train'), HELD = path.join(TMP, 'acts-held'), PRED = path.join(TMP, 'pred');

afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------- metrics

describe('metrics on hand-made cases', () => {
  // token 0: logits ranks idx0 > idx2 > idx1 > idx3, positives {0, 2}; token 1: ranks 1 > 2 > 3 > 0, positive {3}
  const logits = Float32Array.from([0.9, 0.1, 0.5, -1, /**/ 0, 3, 2, 1]);
  const labels = Uint8Array.from([1, 0, 1, 0, /**/ 0, 0, 0, 1]);

  it('RankHistogram: recall, precision, F1, densities at each k', () => {
    const h = new RankHistogram(4);
    h.add(logits, labels, 2);
    expect(Array.from(h.recallCurve())).toEqual([0, 1 / 3, 2 / 3, 1, 1]);
    const m2 = h.metricsAtK(2);
    expect(m2.recall).toBeCloseTo(2 / 3, 12);
    expect(m2.precision).toBeCloseTo(0.5, 12); // 2 true positives among 2 x 2 selected
    expect(m2.f1).toBeCloseTo(4 / 7, 12);
    expect(m2.predictedDensity).toBe(0.5);
    expect(m2.trueDensity).toBe(3 / 8);
    const m4 = h.metricsAtK(4);
    expect(m4).toEqual({ recall: 1, precision: 3 / 8, f1: (2 * 3 / 8) / (1 + 3 / 8), predictedDensity: 1, trueDensity: 3 / 8 });
    expect(h.metricsAtK(0).predictedDensity).toBe(0);
    expect(h.kForRecall(0.5)).toBe(2);
    expect(h.kForRecall(1)).toBe(3);
  });

  it('recall is 1 when every token\'s predicted set contains its true set', () => {
    const h = new RankHistogram(4);
    h.add(logits.subarray(0, 4), labels.subarray(0, 4), 1);
    expect(h.metricsAtK(2).recall).toBe(1);
    expect(h.metricsAtK(2).precision).toBe(1);
    expect(h.metricsAtK(3).recall).toBe(1);
    expect(h.metricsAtK(3).precision).toBeCloseTo(2 / 3, 12);
    expect(h.metricsAtK(1).recall).toBe(0.5);
  });

  it('recall and predicted density are monotone in k on random data', () => {
    let s = 99;
    const r = () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 4294967296; };
    const W = 24, n = 50;
    const lg = Float32Array.from({ length: n * W }, () => r() * 4 - 2);
    const lb = Uint8Array.from(lg, (z) => (r() < 1 / (1 + Math.exp(-2 * z)) ? 1 : 0));
    const h = new RankHistogram(W);
    h.add(lg, lb, n);
    let prev = h.metricsAtK(0);
    for (let k = 1; k <= W; k++) {
      const m = h.metricsAtK(k);
      expect(m.recall).toBeGreaterThanOrEqual(prev.recall);
      expect(m.predictedDensity).toBeGreaterThan(prev.predictedDensity);
      prev = m;
    }
    expect(prev.recall).toBe(1);
  });

  it('a token\'s ranks do not depend on the tokens before it in the chunk (tied logits)', () => {
    const W = 4;
    // token A has distinct logits (it would permute any internal order); token B is all ties, its positive at index 0
    const A = { lg: Float32Array.from([1, 2, 3, 4]), lb: Uint8Array.from([0, 0, 0, 1]) };
    const B = { lg: Float32Array.from([0, 0, 0, 0]), lb: Uint8Array.from([1, 0, 0, 0]) };
    const h1 = new RankHistogram(W), h2 = new RankHistogram(W);
    h1.add(Float32Array.from([...A.lg, ...B.lg]), Uint8Array.from([...A.lb, ...B.lb]), 2); // one chunk: A then B
    h2.add(Float32Array.from([...B.lg, ...A.lg]), Uint8Array.from([...B.lb, ...A.lb]), 2); // B then A
    expect(Array.from(h1.hist)).toEqual(Array.from(h2.hist));
    // top-1 (ties by index, as ruleIndices / topKLabels break them) selects the positive of both tokens
    expect(Array.from(topKLabels(Float32Array.from([...A.lg, ...B.lg]), 2, W, 1))).toEqual([0, 0, 0, 1, 1, 0, 0, 0]);
    expect(h1.metricsAtK(1).recall).toBe(1);
  });

  it('ThresholdCounter: selects logits >= value', () => {
    const c = new ThresholdCounter(0.5);
    c.add(Float32Array.from([2, -1, 0.5]), Uint8Array.from([1, 1, 0]));
    c.add(Float32Array.from([0.5]), Uint8Array.from([1]));
    const m = c.metrics();
    expect([c.tp, c.selected, c.positives, c.total]).toEqual([2, 3, 3, 4]);
    expect(m.recall).toBeCloseTo(2 / 3, 12);
    expect(m.precision).toBeCloseTo(2 / 3, 12);
    expect(m.f1).toBeCloseTo(2 / 3, 12);
    expect(m.predictedDensity).toBe(0.75);
    expect(m.trueDensity).toBe(0.75);
    const none = new ThresholdCounter(10);
    none.add(Float32Array.from([1, 2]), Uint8Array.from([0, 0]));
    expect(none.metrics()).toMatchObject({ recall: 1, precision: 1, predictedDensity: 0, trueDensity: 0 });
  });
});

// ------------------------------------------------------------------------------------------- end to end

async function userError(p: Promise<unknown>, re: RegExp): Promise<void> {
  const e = await p.then(() => null, (err: unknown) => err);
  expect(e, 'should have thrown').not.toBeNull();
  expect(isUserError(e), `expected a UserError, got ${String(e)}`).toBe(true);
  expect((e as Error).message).toMatch(re);
}

const evalCfg = (predictors: string, out: string, over: Partial<EvaluateConfig> = {}) =>
  evaluateSchema.parse({ activations: HELD, predictors, out: path.join(TMP, out), model: MODEL, seqLen: 64, maxTokens: 512, batchSize: 4, ...over });

/** a copy of the predictors folder with every rule selecting everything */
function selectAll(from: string, to: string, kind: 'topk' | 'threshold'): string {
  fs.cpSync(from, to, { recursive: true });
  const f = path.join(to, 'predictors.json');
  const pm = JSON.parse(fs.readFileSync(f, 'utf8')) as PredictorsManifest;
  const c = pm.model.config;
  for (const l of pm.layers) {
    l.mlp!.rule = kind === 'topk' ? { kind: 'topk', k: c.ffn } : { kind: 'threshold', value: -1e30 };
    l.heads!.rule = kind === 'topk' ? { kind: 'topk', k: c.heads } : { kind: 'threshold', value: -1e30 };
  }
  fs.writeFileSync(f, JSON.stringify(sealed(pm))); // re-sealed (util/seal): an unsealed edit is refused
  return to;
}

describe('evaluate-recall end to end', () => {
  let report: EvalReport;
  beforeAll(async () => {
    await ensureBackend('wasm');
    await runCollect(collectSchema.parse({ model: MODEL, data: path.join(REPO, 'data', 'calibration.jsonl'), out: TRAIN_ACTS, seqLen: 64, maxTokens: 2048, dtype: 'float32' }), quiet);
    await runCollect(collectSchema.parse({ model: MODEL, data: path.join(REPO, 'data', 'heldout.jsonl'), out: HELD, seqLen: 64, maxTokens: 1024, dtype: 'float32' }), quiet);
    await runTrain(trainSchema.parse({ activations: TRAIN_ACTS, out: PRED, workers: 1, seed: 1, mlp: { predictors: ['dejavu'], rule: 'topk', rank: 16, targetRecall: 0.9 }, heads: { rank: 8, targetRecall: 0.6 }, optim: { epochs: 2, batchSize: 128 } }), quiet);
    report = (await runEvaluate(evalCfg(PRED, 'rep'), quiet)).json as EvalReport;
  });

  it('held-out metrics at the calibrated rule agree with a float64 recompute', () => {
    const m = readManifest(HELD);
    const pm = JSON.parse(fs.readFileSync(path.join(PRED, 'predictors.json'), 'utf8')) as PredictorsManifest;
    const d = m.dims.hidden, F = m.dims.ffn;
    expect(report.heldoutTokens).toBe(1024);
    expect(report.layers.map((l) => l.layer)).toEqual([0, 1]);
    for (const l of pm.layers) {
      const st = openSafetensors(path.join(PRED, l.file));
      const w1 = readTensorF32(st, 'mlp.fc1.weight'), b1 = readTensorF32(st, 'mlp.fc1.bias'), w2 = readTensorF32(st, 'mlp.fc2.weight'), b2 = readTensorF32(st, 'mlp.fc2.bias');
      const r = b1.length, k = (l.mlp!.rule as { k: number }).k;
      expect(k).toBeLessThan(F); // a real selection
      let tp = 0, P = 0, tokens = 0;
      for (const b of iterateLayer(HELD, m, l.layer, ['x_attn', 'mlp_active'])) {
        for (let t = 0; t < b.rows; t++) {
          const h = Array.from({ length: r }, (_, j) => { let s = b1[j]!; for (let i = 0; i < d; i++) s += w1[j * d + i]! * b.xAttn[t * d + i]!; return s; });
          const z = Array.from({ length: F }, (_, o) => { let s = b2[o]!; for (let j = 0; j < r; j++) s += w2[o * r + j]! * h[j]!; return s; });
          const top = new Set(Array.from({ length: F }, (_, j) => j).sort((a, c) => z[c]! - z[a]! || a - c).slice(0, k));
          for (let j = 0; j < F; j++) if (b.mlpActive[t * F + j]) { P++; if (top.has(j)) tp++; }
          tokens++;
        }
      }
      const got = report.layers.find((x) => x.layer === l.layer)!.mlp!;
      expect(got.rule).toEqual(l.mlp!.rule);
      expect(Math.abs(got.metrics.recall - tp / P), `layer ${l.layer}: ${got.metrics.recall} vs ${tp / P}`).toBeLessThan(0.003);
      expect(got.metrics.trueDensity).toBeCloseTo(P / (tokens * F), 12);
      expect(got.metrics.predictedDensity).toBeCloseTo(k / F, 12);
      expect(got.metrics.precision).toBeCloseTo((got.metrics.recall * P) / (tokens * k), 9);
      // the sweep: increasing k, non-decreasing recall, ending with everything selected
      const ks = got.sweep.map((s) => s.k);
      for (let i = 1; i < ks.length; i++) { expect(ks[i]!).toBeGreaterThan(ks[i - 1]!); expect(got.sweep[i]!.recall).toBeGreaterThanOrEqual(got.sweep[i - 1]!.recall); }
      expect(got.sweep.at(-1)).toMatchObject({ k: F, recall: 1, predictedDensity: 1 });
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(report.averages.mlpRecall).toBeCloseTo(mean(report.layers.map((l) => l.mlp!.metrics.recall)), 12);
    expect(report.averages.mlpSparsity).toBeCloseTo(1 - mean(report.layers.map((l) => l.mlp!.metrics.predictedDensity)), 12);
  });

  it('predicted runs select exactly the calibrated k per token; sparse runs really differ from dense', () => {
    const p = report.perplexity!;
    expect(p.tokens).toBe(512);
    expect(Object.keys(p.runs)).toEqual(['dense', 'oracle (MLP)', 'oracle (heads)', 'oracle (MLP + heads)', 'predicted (MLP)', 'predicted (heads)', 'predicted (MLP + heads)']);
    const pm = JSON.parse(fs.readFileSync(path.join(PRED, 'predictors.json'), 'utf8')) as PredictorsManifest;
    const c = pm.model.config;
    for (const l of pm.layers) {
      expect(p.density['predicted (MLP)']!.mlp[l.layer]).toBeCloseTo((l.mlp!.rule as { k: number }).k / c.ffn, 12);
      expect(p.density['predicted (MLP + heads)']!.heads[l.layer]).toBeCloseTo((l.heads!.rule as { k: number }).k / c.heads, 12);
    }
    expect(p.runs['predicted (MLP)']).not.toBe(p.runs.dense);
    // (the MLP oracle may equal dense: ReLU zeros contribute nothing, and k can exceed a token's active count)
    const headsAll = pm.layers.every((l) => (l.heads!.rule as { k: number }).k === c.heads);
    if (headsAll) { expect(p.runs['predicted (heads)']).toBe(p.runs.dense); expect(p.runs['oracle (heads)']).toBe(p.runs.dense); }
    else { expect(p.runs['predicted (heads)']).not.toBe(p.runs.dense); expect(p.runs['oracle (heads)']).not.toBe(p.runs.dense); }
    for (const [k, v] of Object.entries(p.deltas)) expect(v).toBeCloseTo(p.runs[k]! / p.runs.dense! - 1, 12);
    expect(Number.isFinite(p.runs.dense) && p.runs.dense! > 1).toBe(true);
  });

  for (const kind of ['topk', 'threshold'] as const) {
    it(`rules that select everything (${kind}): predicted and oracle perplexity equal dense exactly`, async () => {
      const all = selectAll(PRED, path.join(TMP, `pred-all-${kind}`), kind);
      const r = (await runEvaluate(evalCfg(all, `rep-all-${kind}`), quiet)).json as EvalReport;
      const p = r.perplexity!;
      const dense = p.runs.dense!;
      expect(dense).toBe(report.perplexity!.runs.dense); // same data, same model
      for (const [name, v] of Object.entries(p.runs)) expect(v, name).toBe(dense);
      for (const l of r.layers) {
        expect(l.mlp!.metrics.recall).toBe(1);
        expect(l.mlp!.metrics.predictedDensity).toBe(1);
        expect(l.heads!.metrics.recall).toBe(1);
      }
      for (const run of Object.values(p.density)) { for (const v of run.mlp) expect(v).toBe(1); }
    });
  }

  it('refuses predictors trained for another model (held-out activations or --model)', async () => {
    const other = path.join(TMP, 'other-model');
    fs.cpSync(MODEL, other, { recursive: true });
    fs.chmodSync(other, 0o755);
    const cfgFile = path.join(other, 'config.json');
    fs.chmodSync(cfgFile, 0o644);
    fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, 'utf8')), dropout: 0.0 }, null, 2)); // same weights, another checkpoint identity
    const otherHeld = path.join(TMP, 'acts-held-other');
    await runCollect(collectSchema.parse({ model: other, data: path.join(REPO, 'data', 'heldout.jsonl'), out: otherHeld, seqLen: 64, maxTokens: 256, dtype: 'float32' }), quiet);
    await userError(runEvaluate(evalCfg(PRED, 'rep-x1', { activations: otherHeld, model: undefined }), quiet), /trained for another model/);
    await userError(runEvaluate(evalCfg(PRED, 'rep-x2', { model: other }), quiet), /is not the checkpoint the predictors were trained for/);
    const held0 = path.join(TMP, 'acts-held-layer0');
    await runCollect(collectSchema.parse({ model: MODEL, data: path.join(REPO, 'data', 'heldout.jsonl'), out: held0, seqLen: 64, maxTokens: 128, dtype: 'float32', layers: [0] }), quiet);
    await userError(runEvaluate(evalCfg(PRED, 'rep-x3', { activations: held0, model: undefined }), quiet), /layer 1 has predictors but is not in the held-out dataset/);
    expect(fs.existsSync(path.join(TMP, 'rep-x1', 'report.json'))).toBe(false);
    expect(fs.existsSync(path.join(TMP, 'rep-x2', 'report.json'))).toBe(false);
  });

  it('writes report.json, report.md and SVG plots: per layer the predictor\'s sweep and the exact bound, axis titles, legends', () => {
    const dir = path.join(TMP, 'rep');
    const json = JSON.parse(fs.readFileSync(path.join(dir, 'report.json'), 'utf8'));
    expect(json).toEqual(JSON.parse(JSON.stringify(report)));
    expect(json.kind).toBe('dejavu-evaluation');
    const md = fs.readFileSync(path.join(dir, 'report.md'), 'utf8');
    expect(md).toContain('![recall vs density](recall-vs-density.svg)');
    expect(md).toContain('![densities](densities.svg)');
    for (const l of report.layers) expect(md).toMatch(new RegExp(`\\| ${l.layer} \\| dejavu r16, top-\\d+ \\| ${l.mlp!.metrics.recall.toFixed(4)} \\|`));
    expect(md).toContain(`| dense | ${report.perplexity!.runs.dense!.toFixed(3)} |`);
    /** the line series of a vega SVG: aria label (fields of the first point) and the number of points */
    const series = (svg: string) => [...svg.matchAll(/<g class="mark-line role-mark[^"]*"[^>]*><path aria-label="([^"]*)"[^>]* d="([^"]*)"/g)]
      .map((m) => ({ label: m[1]!, points: m[2]!.split(/[ML]/).filter((p) => p.trim()).length }));
    const svg = fs.readFileSync(path.join(dir, 'recall-vs-density.svg'), 'utf8');
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    for (const t of ['density', 'recall', 'predictor', 'exact (bound)', 'calibrated rule']) expect(svg).toContain(`>${t}</text>`);
    // one panel per layer (issue #25: readable for 6 to 80 layers), each with the predictor's sweep and the exact
    // predictor's, up to the density where every predictor recalls 99.9% (test/plots.test.ts checks the layout)
    const rs = series(svg), xmax = sweepRange(report.layers);
    expect(rs.length).toBe(2 * report.layers.length);
    report.layers.forEach((l, i) => {
      expect(svg).toContain(`>layer ${l.layer}</text>`);
      expect([rs[2 * i]!.label, rs[2 * i + 1]!.label].map((x) => x.split('; ').at(-1))).toEqual(['series: predictor', 'series: exact (bound)']);
      expect(rs[2 * i]!.points).toBe(l.mlp!.sweep.filter((s) => s.predictedDensity <= xmax).length);
      expect(rs[2 * i + 1]!.points).toBe(l.mlp!.exactSweep!.filter((s) => s.fraction <= xmax).length);
    });
    const dens = fs.readFileSync(path.join(dir, 'densities.svg'), 'utf8');
    const ds = series(dens);
    expect(ds.length).toBe(1); // predicted: a line; true density: bars; the exact bound: ticks over them
    expect(ds[0]!.points).toBe(report.layers.length);
    expect([...dens.matchAll(/<path aria-label="layer: \d+; MLP density \(share of neurons\): [\d.]+%; density: (true|exact \(bound\))"/g)].length).toBe(2 * report.layers.length);
    for (const t of ['layer', 'MLP density (share of neurons)', 'true', 'predicted', 'exact (bound)']) expect(dens).toContain(`>${t}</text>`);
    const dc = report.perplexity!.densityCurve;
    expect(dc.length).toBeGreaterThan(0);
    expect(md).toContain('![perplexity vs density](perplexity-vs-density.svg)');
    const ppl = fs.readFileSync(path.join(dir, 'perplexity-vs-density.svg'), 'utf8');
    const ps = series(ppl);
    expect(ps.map((x) => x.points)).toEqual([dc.length, dc.length, 2]); // predicted, oracle, and the dense line across
    expect(ps.map((x) => x.label.split('; ').at(-1))).toEqual(['run: predicted MLP sparsity', 'run: oracle MLP sparsity', 'run: dense']);
    for (const t of ['mean MLP density (fraction of neurons computed)', 'perplexity', 'run', 'dense', 'oracle MLP sparsity', 'predicted MLP sparsity']) expect(ppl).toContain(`>${t}</text>`);
  });

});
