/**
 * train-predictors (issue 5): label rules, the weighted-BCE step against a float64 reference, calibration
 * (rank histogram / thresholds) against brute force, determinism, refusals, and a real end-to-end run on a tiny
 * collected dataset.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { collectSchema, trainSchema, type TrainConfig } from '../src/config/schemas.js';
import { runCollect } from '../src/stages/collect.js';
import { runTrain } from '../src/stages/train.js';
import { iterateLayer, readManifest, type ActivationsManifest } from '../src/activations/dataset.js';
import { openSafetensors, readTensorF32 } from '../src/checkpoint/safetensors.js';
import { kthSmallest, RankHistogram, ThresholdCounter, thresholdForRecall, topKLabels } from '../src/predictors/metrics.js';
import { fitMlpSite, type MlpChoice } from '../src/predictors/fit-mlp.js';
import { inlineMlpExec, runMlpJob, type MlpExec, type MlpJob } from '../src/predictors/mlp-jobs.js';
import { readMlpSite } from '../src/predictors/mlp-site.js';
import { WorkerPool } from '../src/util/pool.js';
import { stageWorkerScript } from '../src/stages/worker-script.js';
import { disposeAdam, disposePredictor, initPredictor, newAdam, trainStep, type PredictorWeights } from '../src/predictors/predictor.js';
import { resolveLabel, trainLayer } from '../src/predictors/train-layer.js';
import { readPredictorsManifest, type PredictorsManifest } from '../src/predictors/store.js';
import { isUserError, UserError } from '../src/util/errors.js';
import { FIXTURES, tmpDir } from './helpers.js';

const quiet = { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) };
const REPO = path.join(import.meta.dirname, '..');
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const DATA = path.join(REPO, 'data', 'calibration.jsonl');
const TMP = tmpDir('dejavu-train-');
const ACTS = path.join(TMP, 'acts');

beforeAll(async () => {
  await ensureBackend('wasm');
  // 48 sequences x 64 tokens, float32 storage, MLP magnitudes recorded (for the topFraction / threshold labels)
  await runCollect(collectSchema.parse({ model: MODEL, data: DATA, out: ACTS, seqLen: 64, maxTokens: 3072, batchSize: 8, dtype: 'float32', recordMlpAct: true, rowsPerShard: 1024 }), quiet);
});
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

function trainCfg(out: string, over: Record<string, unknown> = {}): TrainConfig {
  const { mlp, heads, optim, ...rest } = over as { mlp?: object; heads?: object; optim?: object };
  return trainSchema.parse({
    activations: ACTS, out, workers: 1, seed: 7,
    mlp: { rank: 16, predictors: ['dejavu'], rule: 'topk', ...mlp }, heads: { rank: 8, ...heads }, optim: { epochs: 2, batchSize: 128, ...optim }, ...rest,
  });
}

async function userError(p: Promise<unknown>, re: RegExp): Promise<void> {
  const e = await p.then(() => null, (err: unknown) => err);
  expect(e, 'should have thrown').not.toBeNull();
  expect(isUserError(e), `expected a UserError, got ${String(e)}`).toBe(true);
  expect((e as Error).message).toMatch(re);
}

/** seeded uniform [0, 1) */
function rng(seed: number) {
  let a = seed >>> 0;
  return () => { a = (a + 0x6d2b79f5) >>> 0; let t = a; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
}

/** validation rows of a layer as train-layer splits them (by sequence: seq % valEvery == valEvery - 1) */
function validationRows(m: ActivationsManifest, layer: number, valEvery: number) {
  const d = m.dims.hidden, F = m.dims.ffn, H = m.dims.heads;
  const x: number[] = [], active: number[] = [], act: number[] = [], hn: number[] = [], xPrev: number[] = [];
  const prev = layer > 0 ? iterateLayer(ACTS, m, layer - 1) : null;
  for (const b of iterateLayer(ACTS, m, layer)) {
    const pb = prev ? prev.next().value! : b;
    for (let r = 0; r < b.rows; r++) {
      if (b.seq[r]! % valEvery !== valEvery - 1) continue;
      x.push(...b.xAttn.subarray(r * d, (r + 1) * d));
      xPrev.push(...pb.xAttn.subarray(r * d, (r + 1) * d));
      active.push(...b.mlpActive.subarray(r * F, (r + 1) * F));
      act.push(...b.mlpAct!.subarray(r * F, (r + 1) * F));
      hn.push(...b.headNorm.subarray(r * H, (r + 1) * H));
    }
  }
  return { n: x.length / d, x, xPrev, active, act, hn };
}

// ------------------------------------------------------------------------------------------------ labels

describe('labels', () => {
  it('topKLabels: hand-made rows, ties broken by index, |value| when abs', () => {
    const v = Float32Array.from([0.1, 0.9, -2, 0.9, 0.3, /* row 2 */ 5, 5, 5, 5, -6]);
    expect(Array.from(topKLabels(v, 2, 5, 2))).toEqual([0, 1, 0, 1, 0, 1, 1, 0, 0, 0]);
    expect(Array.from(topKLabels(v, 2, 5, 1, true))).toEqual([0, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
    expect(Array.from(topKLabels(v, 2, 5, 5))).toEqual(new Array(10).fill(1));
    expect(Array.from(topKLabels(v, 2, 5, 0))).toEqual(new Array(10).fill(0));
  });

  it('topKLabels equals a brute-force top-k on random rows (with ties)', () => {
    const r = rng(3);
    for (let trial = 0; trial < 20; trial++) {
      const n = 1 + Math.floor(r() * 6), W = 1 + Math.floor(r() * 30), k = Math.floor(r() * (W + 1)), abs = trial % 2 === 0;
      const v = Float32Array.from({ length: n * W }, () => Math.round((r() * 2 - 1) * 8) / 4); // coarse: many ties
      const got = topKLabels(v, n, W, k, abs);
      for (let t = 0; t < n; t++) {
        const key = (j: number) => (abs ? Math.abs(v[t * W + j]!) : v[t * W + j]!);
        for (let j = 0; j < W; j++) {
          // j is selected iff fewer than k entries beat it (larger key, or equal key with a smaller index)
          let beat = 0;
          for (let i = 0; i < W; i++) if (key(i) > key(j) || (key(i) === key(j) && i < j)) beat++;
          expect(got[t * W + j], `trial ${trial} row ${t} col ${j}`).toBe(beat < k ? 1 : 0);
        }
      }
    }
  });

  it('resolveLabel: auto = active for ReLU, topFraction otherwise; explicit kinds keep their value', () => {
    const base = { activations: 'a', out: 'o' };
    expect(resolveLabel(trainSchema.parse(base), 'relu')).toEqual({ kind: 'active' });
    expect(resolveLabel(trainSchema.parse(base), 'swiglu')).toEqual({ kind: 'topFraction', value: 0.1 });
    expect(resolveLabel(trainSchema.parse({ ...base, mlp: { label: { kind: 'auto', value: 0.2 } } }), 'swiglu')).toEqual({ kind: 'topFraction', value: 0.2 });
    expect(resolveLabel(trainSchema.parse({ ...base, mlp: { label: { kind: 'threshold', value: 0.5 } } }), 'relu')).toEqual({ kind: 'threshold', value: 0.5 });
    expect(resolveLabel(trainSchema.parse({ ...base, mlp: { label: { kind: 'topFraction', value: 0.25 } } }), 'relu')).toEqual({ kind: 'topFraction', value: 0.25 });
    expect(resolveLabel(trainSchema.parse({ ...base, mlp: { label: { kind: 'active' } } }), 'swiglu')).toEqual({ kind: 'active' });
  });

  it('each label rule trains against the labels it names (validation true density from the dataset)', async () => {
    const m = readManifest(ACTS);
    const layer = 1;
    const val = validationRows(m, layer, 10);
    const F = m.dims.ffn;
    expect(val.n).toBeGreaterThan(0);
    const run = async (label: object) => (await trainLayer(ACTS, m, trainCfg(path.join(TMP, 'unused'), { mlp: { rank: 4, label }, heads: { enabled: false }, optim: { epochs: 1 } }), layer)).mlp!;
    const activeDensity = val.active.reduce((a, b) => a + b, 0) / (val.n * F);
    expect(activeDensity).toBeGreaterThan(0);
    expect(activeDensity).toBeLessThan(1);
    const a = await run({ kind: 'active' });
    expect(a.label).toEqual({ kind: 'active' });
    expect(a.validation.trueDensity).toBeCloseTo(activeDensity, 12);

    const tf_ = await run({ kind: 'topFraction', value: 0.1 });
    expect(tf_.label).toEqual({ kind: 'topFraction', value: 0.1 });
    expect(tf_.validation.trueDensity).toBeCloseTo(Math.round(0.1 * F) / F, 12);

    const thr = 0.05;
    const thrDensity = val.act.filter((v) => Math.abs(v) > thr).length / (val.n * F);
    expect(thrDensity).not.toBeCloseTo(activeDensity, 3); // the threshold label really is another label
    const t = await run({ kind: 'threshold', value: thr });
    expect(t.label).toEqual({ kind: 'threshold', value: thr });
    expect(t.validation.trueDensity).toBeCloseTo(thrDensity, 12);
  });

  it('a magnitude label on a dataset without mlp_act is a UserError', async () => {
    const out = path.join(TMP, 'acts-noact');
    await runCollect(collectSchema.parse({ model: MODEL, data: DATA, out, seqLen: 32, maxTokens: 320 }), quiet); // ReLU: recordMlpAct auto = off
    const m = readManifest(out);
    expect(m.fields).not.toContain('mlp_act');
    const cfg = trainSchema.parse({ activations: out, out: path.join(TMP, 'p-noact'), workers: 1, mlp: { rank: 4, label: { kind: 'topFraction', value: 0.1 } }, heads: { enabled: false }, optim: { epochs: 1 } });
    await expect(trainLayer(out, m, cfg, 0)).rejects.toThrow(UserError);
    await expect(trainLayer(out, m, cfg, 0)).rejects.toThrow(/mlp_act/);
  });
});

// ---------------------------------------------------------------------------------------------- weighting

interface P64 { w1: Float64Array; b1: Float64Array; w2: Float64Array; b2: Float64Array }

/** float64 weighted BCE: loss and analytic gradients */
function refLoss(p: P64, x: number[], y: number[], N: number, d: number, r: number, W: number, relu: boolean, negWeight: number, wantGrad = true) {
  const pre = new Float64Array(N * r), h = new Float64Array(N * r), z = new Float64Array(N * W);
  for (let n = 0; n < N; n++) for (let j = 0; j < r; j++) {
    let s = p.b1[j]!; for (let i = 0; i < d; i++) s += x[n * d + i]! * p.w1[i * r + j]!;
    pre[n * r + j] = s; h[n * r + j] = relu ? Math.max(0, s) : s;
  }
  for (let n = 0; n < N; n++) for (let o = 0; o < W; o++) {
    let s = p.b2[o]!; for (let j = 0; j < r; j++) s += h[n * r + j]! * p.w2[j * W + o]!;
    z[n * W + o] = s;
  }
  let wsum = 0, loss = 0;
  const dz = new Float64Array(N * W);
  for (let i = 0; i < N * W; i++) {
    const w = y[i] ? 1 : negWeight, zi = z[i]!;
    wsum += w;
    loss += w * (Math.max(zi, 0) - zi * y[i]! + Math.log1p(Math.exp(-Math.abs(zi))));
    dz[i] = w * (1 / (1 + Math.exp(-zi)) - y[i]!);
  }
  loss /= wsum;
  if (!wantGrad) return { loss };
  for (let i = 0; i < dz.length; i++) dz[i]! /= wsum;
  const g = { w1: new Float64Array(d * r), b1: new Float64Array(r), w2: new Float64Array(r * W), b2: new Float64Array(W) };
  const dh = new Float64Array(N * r);
  for (let n = 0; n < N; n++) for (let o = 0; o < W; o++) {
    const v = dz[n * W + o]!;
    g.b2[o]! += v;
    for (let j = 0; j < r; j++) { g.w2[j * W + o]! += h[n * r + j]! * v; dh[n * r + j]! += p.w2[j * W + o]! * v; }
  }
  for (let n = 0; n < N; n++) for (let j = 0; j < r; j++) {
    const v = relu && pre[n * r + j]! <= 0 ? 0 : dh[n * r + j]!;
    g.b1[j]! += v;
    for (let i = 0; i < d; i++) g.w1[i * r + j]! += x[n * d + i]! * v;
  }
  return { loss, g };
}

const host64 = (p: PredictorWeights): P64 => ({ w1: Float64Array.from(p.w1.dataSync()), b1: Float64Array.from(p.b1.dataSync()), w2: Float64Array.from(p.w2.dataSync()),
    b2: Float64Array.from(p.b2.dataSync()) });
const KEYS = ['w1', 'b1', 'w2', 'b2'] as const;

describe('weighted BCE step (trainStep)', () => {
  const N = 6, d = 5, r = 3, W = 7;
  const r0 = rng(11);
  const x = Array.from({ length: N * d }, () => r0() * 2 - 1);
  const y: number[] = Array.from({ length: N * W }, (_, i) => (i % W === W - 1 ? 0 : r0() < 0.3 ? 1 : 0)); // last column: no positives

  it('the float64 reference gradient agrees with central finite differences', () => {
    const p = initPredictor(d, r, W, 'relu', 5);
    const p64 = host64(p);
    disposePredictor(p);
    const { g } = refLoss(p64, x, y, N, d, r, W, true, 0.3) as { g: P64 };
    const h = 1e-6;
    for (const k of KEYS) for (let i = 0; i < p64[k].length; i++) {
      const o = p64[k][i]!;
      p64[k][i] = o + h; const lp = refLoss(p64, x, y, N, d, r, W, true, 0.3, false).loss;
      p64[k][i] = o - h; const lm = refLoss(p64, x, y, N, d, r, W, true, 0.3, false).loss;
      p64[k][i] = o;
      expect(Math.abs((lp - lm) / (2 * h) - g[k][i]!), `${k}[${i}]`).toBeLessThan(1e-6);
    }
  });

  for (const [hidden, negWeight] of [['none', 0.25], ['relu', 0.4], ['relu', 1], ['none', 0]] as const) {
    it(`hidden ${hidden}, negWeight ${negWeight}: loss, gradient (Adam's first moment) and AdamW update match float64`, () => {
      const before = tf.memory().numTensors;
      const p = initPredictor(d, r, W, hidden, 9);
      const p64 = host64(p);
      const ref = refLoss(p64, x, y, N, d, r, W, hidden === 'relu', negWeight) as { loss: number; g: P64 };
      const st = newAdam(p);
      const xt = tf.tensor2d(x, [N, d]), yt = tf.tensor2d(y, [N, W]);
      const lr = 0.01, wd = 0.1;
      const loss = trainStep(p, st, xt, yt, { lr, weightDecay: wd, negWeight });
      expect(Math.abs(loss - ref.loss) / ref.loss, `loss ${loss} vs ${ref.loss}`).toBeLessThan(1e-5);
      // after one step from zero moments, m = (1 - beta1) * grad exactly
      st.m.forEach((m, i) => {
        const got = m.dataSync(), want = ref.g[KEYS[i]!];
        for (let j = 0; j < want.length; j++) expect(Math.abs(got[j]! / 0.1 - want[j]!), `${KEYS[i]}[${j}]`).toBeLessThan(1e-6 + 1e-4 * Math.abs(want[j]!));
      });
      if (negWeight === 0) expect(Math.abs(st.m[3]!.dataSync()[W - 1]!)).toBe(0); // a column without positives gets no gradient
      const lrT = lr * Math.sqrt(1 - 0.999) / (1 - 0.9);
      KEYS.forEach((k, i) => {
        const got = (p[k] as tf.Tensor).dataSync();
        for (let j = 0; j < got.length; j++) {
          const g = ref.g[k][j]!;
          const decayed = i % 2 === 0 ? p64[k][j]! * (1 - lr * wd) : p64[k][j]!;
          const want = decayed - lrT * (0.1 * g) / (Math.sqrt(0.001 * g * g) + 1e-8);
          expect(Math.abs(got[j]! - want), `${k}[${j}]`).toBeLessThan(2e-6);
        }
      });
      // the host-side positive count gives the same step
      const q = initPredictor(d, r, W, hidden, 9), sq = newAdam(q);
      const pos = y.reduce((a, b) => a + b, 0);
      const loss2 = trainStep(q, sq, xt, yt, { lr, weightDecay: wd, negWeight, positives: pos });
      expect(Math.abs(loss2 - loss)).toBeLessThan(1e-6 * Math.max(1, loss));
      for (const k of KEYS) {
        const a = (p[k] as tf.Tensor).dataSync(), b = (q[k] as tf.Tensor).dataSync();
        for (let j = 0; j < a.length; j++) expect(Math.abs(a[j]! - b[j]!)).toBeLessThan(1e-7);
      }
      disposePredictor(p); disposeAdam(st); disposePredictor(q); disposeAdam(sq); xt.dispose(); yt.dispose();
      expect(tf.memory().numTensors).toBe(before);
    });
  }

  it('negatives are weighted by negWeight: the loss is the weighted mean over positives and negatives', () => {
    const p = initPredictor(d, r, W, 'none', 2), st = newAdam(p);
    const z = tf.tidy(() => tf.add(tf.matMul(tf.add(tf.matMul(tf.tensor2d(x, [N, d]), p.w1), p.b1), p.w2), p.b2).dataSync());
    let posL = 0, negL = 0, P = 0;
    for (let i = 0; i < N * W; i++) {
      const zi = z[i]!, b = Math.max(zi, 0) - zi * y[i]! + Math.log1p(Math.exp(-Math.abs(zi)));
      if (y[i]) { posL += b; P++; } else negL += b;
    }
    const nw = 0.2;
    const xt = tf.tensor2d(x, [N, d]), yt = tf.tensor2d(y, [N, W]);
    const loss = trainStep(p, st, xt, yt, { lr: 1e-3, weightDecay: 0, negWeight: nw });
    expect(loss).toBeCloseTo((posL + nw * negL) / (P + nw * (N * W - P)), 5);
    expect(loss).not.toBeCloseTo((posL + negL) / (N * W), 3);
    disposePredictor(p); disposeAdam(st); xt.dispose(); yt.dispose();
  });
});

// -------------------------------------------------------------------------------------------- calibration

describe('calibration', () => {
  function randomCase(seed: number, n: number, W: number) {
    const r = rng(seed);
    const logits = Float32Array.from({ length: n * W }, () => r() * 10 - 5);
    // labels correlated with logits, so recall curves are not trivial
    const labels = Uint8Array.from(logits, (z) => (r() < 1 / (1 + Math.exp(-z - 1)) ? 1 : 0));
    return { logits, labels };
  }
  /** brute force: recall of per-token top-k */
  function bruteRecall(logits: Float32Array, labels: Uint8Array, n: number, W: number, k: number): number {
    let tp = 0, P = 0;
    for (let t = 0; t < n; t++) {
      const ids = Array.from({ length: W }, (_, j) => j).sort((a, b) => logits[t * W + b]! - logits[t * W + a]!).slice(0, k);
      for (const j of ids) tp += labels[t * W + j]!;
      for (let j = 0; j < W; j++) P += labels[t * W + j]!;
    }
    return P ? tp / P : 1;
  }

  it('RankHistogram: recall curve non-decreasing, equal to brute force; kForRecall is the smallest k reaching the target', () => {
    for (const [seed, n, W] of [[1, 40, 16], [2, 7, 33], [3, 100, 5]] as const) {
      const { logits, labels } = randomCase(seed, n, W);
      const h = new RankHistogram(W);
      h.add(logits.subarray(0, Math.floor(n / 2) * W), labels.subarray(0, Math.floor(n / 2) * W), Math.floor(n / 2)); // two chunks
      h.add(logits.subarray(Math.floor(n / 2) * W), labels.subarray(Math.floor(n / 2) * W), n - Math.floor(n / 2));
      const c = h.recallCurve();
      expect(c.length).toBe(W + 1);
      expect(c[0]).toBe(0);
      expect(c[W]).toBeCloseTo(1, 12);
      for (let k = 1; k <= W; k++) expect(c[k]!).toBeGreaterThanOrEqual(c[k - 1]!);
      const brute = Array.from({ length: W + 1 }, (_, k) => bruteRecall(logits, labels, n, W, k));
      for (let k = 0; k <= W; k++) expect(c[k]!, `k=${k}`).toBeCloseTo(brute[k]!, 12);
      for (const target of [0.1, 0.5, 0.9, 0.95, 0.99, 1, brute[3]!]) {
        const k = h.kForRecall(target);
        const want = brute.findIndex((rc) => rc >= target - 1e-12);
        expect(k, `target ${target}`).toBe(want);
        const mm = h.metricsAtK(k);
        expect(mm.recall).toBeGreaterThanOrEqual(target - 1e-12);
        expect(mm.predictedDensity).toBeCloseTo(k / W, 12);
      }
      expect(h.trueDensity()).toBeCloseTo(labels.reduce((a, b) => a + b, 0) / (n * W), 12);
    }
  });

  it('thresholdForRecall: recall >= target, and the largest such threshold', () => {
    for (const seed of [4, 5, 6]) {
      const { logits, labels } = randomCase(seed, 30, 20);
      const pos = Float32Array.from(logits.filter((_, i) => labels[i]));
      for (const target of [0.5, 0.8, 0.9, 0.95, 0.99, 1]) {
        const thr = thresholdForRecall(pos, target);
        const c = new ThresholdCounter(thr);
        c.add(logits, labels);
        const m = c.metrics();
        expect(m.recall, `target ${target}`).toBeGreaterThanOrEqual(target);
        // brute-force recall at thr agrees with the counter
        expect(m.recall).toBeCloseTo(pos.filter((z) => z >= thr).length / pos.length, 12);
        // any larger positive logit as threshold misses the target
        const larger = [...pos].filter((z) => z > thr).sort((a, b) => a - b)[0];
        if (larger !== undefined) expect(pos.filter((z) => z >= larger).length / pos.length).toBeLessThan(target);
      }
    }
    expect(thresholdForRecall(new Float32Array(0), 0.9)).toBe(Infinity);
  });
});

// ------------------------------------------------------------------------------------- data-parallel MLP fit

describe('the MLP fit, cut into jobs (issue 15)', () => {
  it('kthSmallest equals the sorted array at every index (ties, -0 and +0, NaN)', () => {
    const r = rng(3);
    for (const n of [1, 2, 7, 100, 1000]) {
      const a = Float32Array.from({ length: n }, () => [0, -0, 1, -1][Math.floor(r() * 4)]! * (r() < 0.5 ? 1 : Math.round(r() * 5)) + (r() < 0.3 ? r() : 0));
      const sorted = Float32Array.from(a).sort();
      for (let k = 0; k < n; k++) expect(Object.is(kthSmallest(a, k), sorted[k]), `n ${n} k ${k}`).toBe(true);
    }
    const withNaN = Float32Array.from([3, NaN, 1, 2]);
    expect(kthSmallest(withNaN, 2)).toBe(3);
    expect(kthSmallest(withNaN, 3)).toBeNaN();
  });

  it('a worker pool, or jobs finishing in reverse order, give the same fit as in-process (every byte), with the work on both workers', async () => {
    const m = readManifest(ACTS);
    expect(m.shards).toBeGreaterThan(2); // several moment jobs
    const layer = 1;
    const cfg = trainCfg(path.join(TMP, 'unused'), { mlp: { predictors: ['closed-form'], ranks: [4, 16], rule: 'auto' }, heads: { enabled: false } });
    const site = readMlpSite(MODEL, m.model.config, layer);
    const fit = (exec: MlpExec) => fitMlpSite(ACTS, m, cfg, site, { kind: 'active' }, [], () => undefined, exec, undefined, 48); // 256 validation rows: 6 chunks
    const bytes = (c: MlpChoice) => JSON.stringify(c, (_k, v: unknown) => (v instanceof Float32Array ? Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex') : v));
    const inline = await fit(inlineMlpExec);
    expect(inline.host).toBeDefined();
    expect(inline.candidates).toHaveLength(4); // two ranks x two rules
    // every job queued first, then run last-queued first
    const queue: [MlpJob, (r: unknown) => void][] = [];
    const reversed: MlpExec = {
      run: <R>(_l: string, job: MlpJob) => new Promise<R>((resolve) => {
        if (!queue.length) setTimeout(() => { for (const [j, res] of queue.splice(0).reverse()) res(runMlpJob(j)); }, 5);
        queue.push([job, resolve as (r: unknown) => void]);
      }),
    };
    expect(bytes(await fit(reversed))).toBe(bytes(inline));
    const pool = new WorkerPool(stageWorkerScript(), 2, { backend: 'wasm', model: null }, 'test worker');
    try {
      const jobs: string[] = [];
      const pooled = await fit({ run: (label, job) => { jobs.push(job.kind); return pool.run(label, job); } });
      expect(bytes(pooled)).toBe(bytes(inline));
      expect(jobs.filter((k) => k === 'mlp-moments')).toHaveLength(m.shards);
      expect(jobs.filter((k) => k === 'mlp-exact')).toHaveLength(6);
      expect(jobs.filter((k) => k === 'mlp-score')).toHaveLength(2 * 6); // two ranks x six chunks
      expect(pool.jobsPerWorker().every((n) => n > 0), `jobs per worker ${pool.jobsPerWorker().join(', ')}`).toBe(true);
    } finally { await pool.close(); }
  });
});

// --------------------------------------------------------------------------------------------- end to end

describe('train-predictors end to end', () => {
  const OUT = path.join(TMP, 'pred-a');
  let pm: PredictorsManifest;
  beforeAll(async () => {
    await runTrain(trainCfg(OUT), quiet);
    pm = readPredictorsManifest(OUT);
  });

  it('predictors.json: per-layer rule, recall >= target on validation, densities and FLOP share', () => {
    const m = readManifest(ACTS);
    const c = m.model.config;
    expect(pm.layers.map((l) => l.layer)).toEqual([0, 1]);
    expect(pm.activations.tokens).toBe(3072);
    expect(pm.model.fingerprint).toEqual(m.model.fingerprint);
    const dense = 2 * c.hidden * c.heads * c.headDim * 2 + 2 * c.hidden * c.kvHeads * c.headDim * 2 + 2 * c.hidden * c.ffn * 2; // q,o + k,v + fc1,fc2
    for (const l of pm.layers) {
      const mlp = l.mlp!, hd = l.heads!;
      expect(mlp.predictor).toBe('dejavu');
      expect(mlp.rule!.kind).toBe('topk');
      const k = (mlp.rule as { k: number }).k;
      expect(k).toBeGreaterThanOrEqual(1);
      expect(k).toBeLessThanOrEqual(c.ffn);
      expect(mlp.validation.recall).toBeGreaterThanOrEqual(0.99);
      expect(mlp.validation.predictedDensity).toBeCloseTo(k / c.ffn, 12);
      expect(mlp.validation.trueDensity).toBeGreaterThan(0);
      expect(mlp.validation.trueDensity).toBeLessThan(1);
      expect(mlp.validation.predictedDensity).toBeGreaterThanOrEqual(mlp.validation.trueDensity * mlp.validation.recall - 1e-12);
      expect(mlp.flopShare).toBeCloseTo((2 * (c.hidden * 16 + 16 * c.ffn)) / (2 * c.hidden * c.ffn * 2), 12); // of the dense MLP
      expect(mlp.costShare).toBeCloseTo(mlp.flopShare + mlp.validation.predictedDensity, 12);
      expect(mlp.rank).toBe(16);
      expect(mlp.label).toEqual({ kind: 'active' });
      expect(hd.rule!.kind).toBe('topk');
      expect(hd.validation.recall).toBeGreaterThanOrEqual(0.95);
      expect(hd.validation.trueDensity).toBeCloseTo(Math.ceil(0.3 * c.heads - 1e-9) / c.heads, 12);
      expect(hd.flopShare).toBeCloseTo((2 * (c.hidden * 8 + 8 * c.heads)) / dense, 12);
      expect(hd.input).toBe(l.layer === 0 ? 'x_attn' : 'x_attn[layer-1]');
      expect(hd.epochs).toBeGreaterThanOrEqual(1);
      expect(hd.epochs).toBeLessThanOrEqual(2);
    }
    const log = fs.readFileSync(path.join(OUT, 'train-log.jsonl'), 'utf8').trim().split('\n').map((s) => JSON.parse(s));
    expect(log.length).toBeGreaterThanOrEqual(4);
  });

  it('layer files hold exactly the documented tensors, and recompute the reported validation recall', () => {
    const m = readManifest(ACTS);
    const c = m.model.config;
    for (const l of pm.layers) {
      expect(l.file).toBe(`layer-0${l.layer}.safetensors`);
      const st = openSafetensors(path.join(OUT, l.file));
      const shapes = Object.fromEntries([...st.tensors].map(([k, t]) => [k, t.shape]));
      expect(shapes).toEqual({
        'mlp.fc1.weight': [16, c.hidden], 'mlp.fc1.bias': [16], 'mlp.fc2.weight': [c.ffn, 16], 'mlp.fc2.bias': [c.ffn],
        'heads.fc1.weight': [8, c.hidden], 'heads.fc1.bias': [8], 'heads.fc2.weight': [c.heads, 8], 'heads.fc2.bias': [c.heads],
      });
      // float64 recompute from the stored nn.Linear tensors: logits = fc2(fc1(x)) (hidden 'none')
      const val = validationRows(m, l.layer, 10);
      const recall = (prefix: 'mlp' | 'heads', xs: number[], labels: (t: number, j: number) => number, W: number, k: number) => {
        const w1 = readTensorF32(st, `${prefix}.fc1.weight`), b1 = readTensorF32(st, `${prefix}.fc1.bias`), w2 = readTensorF32(st, `${prefix}.fc2.weight`), b2 = readTensorF32(st, `${prefix}.fc2.bias`);
        const r = b1.length, d = c.hidden;
        let tp = 0, P = 0;
        for (let t = 0; t < val.n; t++) {
          const h = Array.from({ length: r }, (_, j) => { let s = b1[j]!; for (let i = 0; i < d; i++) s += w1[j * d + i]! * xs[t * d + i]!; return s; });
          const z = Array.from({ length: W }, (_, o) => { let s = b2[o]!; for (let j = 0; j < r; j++) s += w2[o * r + j]! * h[j]!; return s; });
          const top = new Set(Array.from({ length: W }, (_, j) => j).sort((a, b) => z[b]! - z[a]!).slice(0, k));
          for (let j = 0; j < W; j++) if (labels(t, j)) { P++; if (top.has(j)) tp++; }
        }
        return tp / P;
      };
      const mr = recall('mlp', val.x, (t, j) => val.active[t * c.ffn + j]!, c.ffn, (l.mlp!.rule as { k: number }).k);
      expect(Math.abs(mr - l.mlp!.validation.recall), `layer ${l.layer} MLP recall ${mr} vs ${l.mlp!.validation.recall}`).toBeLessThan(0.005);
      expect(mr).toBeGreaterThanOrEqual(0.985);
      const H = c.heads, kh = Math.ceil(0.3 * H - 1e-9);
      const headLab = topKLabels(Float32Array.from(val.hn), val.n, H, kh);
      const hr = recall('heads', l.layer === 0 ? val.x : val.xPrev, (t, j) => headLab[t * H + j]!, H, (l.heads!.rule as { k: number }).k);
      expect(Math.abs(hr - l.heads!.validation.recall), `layer ${l.layer} head recall`).toBeLessThan(0.01);
    }
  });

  it('the same seed gives byte-identical predictor files; another seed does not', async () => {
    const b = path.join(TMP, 'pred-b');
    await runTrain(trainCfg(b), quiet);
    for (const l of pm.layers) expect(fs.readFileSync(path.join(b, l.file)).equals(fs.readFileSync(path.join(OUT, l.file))), l.file).toBe(true);
    const strip = (p: PredictorsManifest) => ({ ...p, sealSha256: null, training: null, config: { ...(p.config as object), out: null }, layers: p.layers.map((l) => ({ ...l, seconds: 0 })) });
    expect(strip(readPredictorsManifest(b))).toEqual(strip(pm));
    const c2 = path.join(TMP, 'pred-c');
    await runTrain(trainCfg(c2, { seed: 8, layers: [0] }), quiet);
    expect(fs.readFileSync(path.join(c2, 'layer-00.safetensors')).equals(fs.readFileSync(path.join(OUT, 'layer-00.safetensors')))).toBe(false);
  });

  it('a second run with the same inputs is a no-op; other activations into the same folder are refused without --overwrite', async () => {
    const mtime = fs.statSync(path.join(OUT, 'predictors.json')).mtimeMs;
    const again = await runTrain(trainCfg(OUT), quiet);
    expect(fs.statSync(path.join(OUT, 'predictors.json')).mtimeMs).toBe(mtime);
    expect((again.json as PredictorsManifest).identity).toBe(pm.identity);
    const other = path.join(TMP, 'acts-other');
    await runCollect(collectSchema.parse({ model: MODEL, data: DATA, out: other, seqLen: 32, maxTokens: 640, dtype: 'float32' }), quiet);
    const into = path.join(TMP, 'pred-other');
    fs.cpSync(OUT, into, { recursive: true });
    await userError(runTrain(trainCfg(into, { activations: other }), quiet), /holds predictors trained on other activations/);
    expect(readPredictorsManifest(into).identity).toBe(pm.identity); // untouched
    await runTrain(trainCfg(into, { activations: other, overwrite: true, layers: [0], optim: { epochs: 1 } }), quiet);
    expect(readPredictorsManifest(into).activations.dir).toBe(other);
  });
});

describe('refuses what is not a complete activations dataset', () => {
  it('a folder without manifest.json', async () => {
    const empty = path.join(TMP, 'not-acts');
    fs.mkdirSync(empty, { recursive: true });
    fs.writeFileSync(path.join(empty, 'notes.txt'), 'hello');
    await userError(runTrain(trainCfg(path.join(TMP, 'p1'), { activations: empty }), quiet), /not an activations dataset/);
    expect(fs.existsSync(path.join(TMP, 'p1'))).toBe(false);
  });

  it('an incomplete (interrupted) dataset', async () => {
    const inc = path.join(TMP, 'acts-incomplete');
    fs.cpSync(ACTS, inc, { recursive: true });
    const mf = path.join(inc, 'manifest.json');
    fs.writeFileSync(mf, JSON.stringify({ ...JSON.parse(fs.readFileSync(mf, 'utf8')), status: 'in-progress' }));
    await userError(runTrain(trainCfg(path.join(TMP, 'p2'), { activations: inc }), quiet), /incomplete/);
  });

  it('a manifest of another kind, or a missing shard', async () => {
    const bad = path.join(TMP, 'acts-kind');
    fs.cpSync(ACTS, bad, { recursive: true });
    const mf = path.join(bad, 'manifest.json');
    fs.writeFileSync(mf, JSON.stringify({ ...JSON.parse(fs.readFileSync(mf, 'utf8')), kind: 'dejavu-predictors' }));
    await userError(runTrain(trainCfg(path.join(TMP, 'p3'), { activations: bad }), quiet), /not an activations manifest/);
    const miss = path.join(TMP, 'acts-missing-shard');
    fs.cpSync(ACTS, miss, { recursive: true });
    fs.rmSync(path.join(miss, 'layer-01', 'shard-00000.arrow'));
    await userError(runTrain(trainCfg(path.join(TMP, 'p4'), { activations: miss, layers: [1] }), quiet), /missing activation shard/);
  });

  it('a layer that was not collected', async () => {
    await userError(runTrain(trainCfg(path.join(TMP, 'p5'), { layers: [5] }), quiet), /layer 5 is not in the activations dataset/);
  });
});
