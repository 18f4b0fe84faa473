/**
 * Train and calibrate one layer's predictors, streaming its activation shards (one shard in memory at a time).
 * Runs in-process or inside a worker thread (one tfjs per worker).
 */
import * as tf from '@tensorflow/tfjs-core';
import { readSync } from '../util/tfx.js';
import { mulberry32 } from '../util/random.js';
import type { TrainConfig } from '../config/schemas.js';
import { iterateLayer, readSummary, type ActivationsManifest } from '../activations/dataset.js';
import type { DecodedBatch } from '../activations/format.js';
import { UserError } from '../util/errors.js';
import { RankHistogram, ThresholdCounter, thresholdForRecall, type Metrics, type SelectionRule } from './metrics.js';
import { disposeAdam, disposePredictor, fromHost, initPredictor, newAdam, predictLogits, predictorFlops, toHost, trainStep, type HostPredictor, type PredictorWeights } from './predictor.js';

import { labelsFor, type LabelRule } from './labels.js';
import { fitMlpSite, resolveRanks, type MlpChoice, type TrainedCandidate } from './fit-mlp.js';
import { mlpInput, readMlpSite } from './mlp-site.js';
import { inlineMlpExec, valEveryOf, type MlpExec } from './mlp-jobs.js';
import type { PredictorResult, TrainedLayer } from './store.js';
export { labelsFor, type LabelRule };

export type { PredictorResult };
export interface LayerResult extends TrainedLayer { samplesPerSecond: number; samples?: number }

type Site = 'mlp' | 'heads';

interface SiteSpec {
  site: Site;
  width: number;
  inputLayer: number;
  inputField: 'x_attn' | 'x_mlp' | 'h_mlp';
  /** h_mlp: x_mlp -> the MLP block's normalized input */
  toInput?: (x: Float32Array, n: number) => Float32Array;
  label: LabelRule;
  rank: number;
  hiddenActivation: 'none' | 'relu';
  targetRecall: number;
  rule: 'topk' | 'threshold';
  /** reference k for early stopping: recall at this k is the validation score */
  kRef: number;
  positiveRate: number;
}

interface Rows { x: Float32Array; y: Uint8Array; n: number }

/** Stream (input, labels) rows of one shard, split into train/validation by sequence. */
function* shardRows(dir: string, m: ActivationsManifest, spec: SiteSpec, labelLayer: number, shard: number, valEvery: number): Generator<{ train: Rows; val: Rows }> {
  const labelFields = spec.site === 'heads' ? ['head_norm'] : spec.label.kind === 'active' ? ['mlp_active'] : ['mlp_act'];
  const sameLayer = spec.inputLayer === labelLayer;
  const field = spec.inputField === 'x_attn' ? 'x_attn' : 'x_mlp';
  const lab = iterateLayer(dir, m, labelLayer, sameLayer ? [field, ...labelFields] : labelFields, (i) => i === shard);
  const inp = sameLayer ? null : iterateLayer(dir, m, spec.inputLayer, [field], (i) => i === shard);
  const d = m.dims.hidden, W = spec.width;
  for (const lb of lab) {
    const xb = inp ? inp.next().value as DecodedBatch : lb;
    const x = spec.inputField === 'x_attn' ? xb.xAttn : spec.toInput ? spec.toInput(xb.xMlp, xb.rows) : xb.xMlp;
    const y = labelsFor(spec.site, spec.label, spec.width, lb);
    const split = (val: boolean): Rows => {
      const keep: number[] = [];
      for (let r = 0; r < lb.rows; r++) if ((lb.seq[r]! % valEvery === valEvery - 1) === val) keep.push(r);
      const xs = new Float32Array(keep.length * d), ys = new Uint8Array(keep.length * W);
      keep.forEach((r, i) => { xs.set(x.subarray(r * d, (r + 1) * d), i * d); ys.set(y.subarray(r * W, (r + 1) * W), i * W); });
      return { x: xs, y: ys, n: keep.length };
    };
    yield { train: split(false), val: split(true) };
  }
}

function shuffle<T>(a: T[], rnd: () => number): T[] {
  for (let i = a.length - 1; i > 0; i--) { const j = Math.floor(rnd() * (i + 1)); [a[i], a[j]] = [a[j]!, a[i]!]; }
  return a;
}

function concatRows(parts: Rows[], d: number, W: number): Rows {
  const n = parts.reduce((s, p) => s + p.n, 0);
  const x = new Float32Array(n * d), y = new Uint8Array(n * W);
  let o = 0;
  for (const p of parts) { x.set(p.x, o * d); y.set(p.y, o * W); o += p.n; }
  return { x, y, n };
}

/** Validation pass: rank histogram (and positives' logits for threshold rules). */
function validate(p: PredictorWeights, dir: string, m: ActivationsManifest, spec: SiteSpec, labelLayer: number, valEvery: number, wantPositives: boolean) {
  const hist = new RankHistogram(spec.width);
  const pos: number[] = [];
  const d = m.dims.hidden;
  for (let s = 0; s < m.shards; s++) {
    for (const { val } of shardRows(dir, m, spec, labelLayer, s, valEvery)) {
      if (!val.n) continue;
      const logits = readSync(() => predictLogits(p, tf.tensor2d(val.x, [val.n, d])));
      hist.add(logits, val.y, val.n);
      if (wantPositives) for (let i = 0; i < logits.length; i++) if (val.y[i]) pos.push(logits[i]!);
    }
  }
  return { hist, positives: Float32Array.from(pos) };
}

function thresholdMetrics(p: PredictorWeights, dir: string, m: ActivationsManifest, spec: SiteSpec, labelLayer: number, valEvery: number, value: number): Metrics {
  const c = new ThresholdCounter(value);
  for (let s = 0; s < m.shards; s++)
    for (const { val } of shardRows(dir, m, spec, labelLayer, s, valEvery)) {
      if (!val.n) continue;
      c.add(readSync(() => predictLogits(p, tf.tensor2d(val.x, [val.n, m.dims.hidden]))), val.y);
    }
  return c.metrics();
}

/** A fine-tune instead of a fresh start: initial weights, epochs and learning rate (the rest from cfg.optim). */
interface FineTune { init: HostPredictor; epochs: number; lr: number }

function trainSite(dir: string, m: ActivationsManifest, cfg: TrainConfig, spec: SiteSpec, labelLayer: number, rank: number, seed: number,
  log: (e: Record<string, unknown>) => void, tick: (n: number) => void, ft?: FineTune): { p: PredictorWeights; epochs: number; samples: number } {
  const d = m.dims.hidden;
  const valEvery = valEveryOf(cfg.validationFraction);
  let p = ft ? fromHost(ft.init) : initPredictor(d, rank, spec.width, spec.hiddenActivation, seed);
  const adam = newAdam(p);
  const rnd = mulberry32(seed);
  const negWeight = spec.positiveRate / Math.max(1e-6, 1 - spec.positiveRate);
  const lr = ft?.lr ?? cfg.optim.lr, maxEpochs = ft?.epochs ?? cfg.optim.epochs;
  let best: HostPredictor | null = null, bestScore = -1, since = 0, epochs = 0, samples = 0;
  if (ft) { best = ft.init; bestScore = validate(p, dir, m, spec, labelLayer, valEvery, false).hist.recallCurve()[Math.min(spec.width, spec.kRef)]!; } // never worse than the start
  try {
    for (let epoch = 0; epoch < maxEpochs; epoch++) {
      let seen = 0, lossSum = 0, lossN = 0, steps = 0;
      for (const s of shuffle(Array.from({ length: m.shards }, (_, i) => i), rnd)) {
        if (cfg.maxSamples && seen >= cfg.maxSamples) break;
        const rows = concatRows([...shardRows(dir, m, spec, labelLayer, s, valEvery)].map((r) => r.train), d, spec.width);
        const order = shuffle(Array.from({ length: rows.n }, (_, i) => i), rnd);
        const B = cfg.optim.batchSize;
        for (let i = 0; i + B <= order.length || (i < order.length && i === 0); i += B) {
          const idx = order.slice(i, i + B);
          const xb = new Float32Array(idx.length * d), yb = new Float32Array(idx.length * spec.width);
          let positives = 0;
          idx.forEach((r, j) => { xb.set(rows.x.subarray(r * d, (r + 1) * d), j * d); for (let k = 0; k < spec.width; k++) positives += yb[j * spec.width + k] = rows.y[r * spec.width + k]!; });
          const xt = tf.tensor2d(xb, [idx.length, d]), yt = tf.tensor2d(yb, [idx.length, spec.width]);
          const wantLoss = steps % 10 === 0; // the loss is only logged: compute it on every 10th step
          try {
            const l = trainStep(p, adam, xt, yt, { lr, weightDecay: ft ? 0 : cfg.optim.weightDecay, negWeight, wantLoss, positives });
            if (wantLoss) { lossSum += l; lossN++; }
          } finally { xt.dispose(); yt.dispose(); }
          steps++; seen += idx.length; tick(idx.length);
          if (cfg.maxSamples && seen >= cfg.maxSamples) break;
        }
      }
      samples += seen;
      epochs++;
      const { hist } = validate(p, dir, m, spec, labelLayer, valEvery, false);
      const score = hist.recallCurve()[Math.min(spec.width, spec.kRef)]!;
      log({ site: spec.site, rank, epoch, ...(ft ? { fineTune: true } : {}), loss: lossSum / Math.max(1, lossN), valRecallAtKRef: score, kRef: spec.kRef, samples: seen });
      if (score > bestScore + 1e-5) { bestScore = score; best = toHost(p); since = 0; } else if (++since >= cfg.optim.patience) break;
    }
  } finally {
    disposeAdam(adam);
  }
  disposePredictor(p);
  p = fromHost(best!);
  return { p, epochs, samples };
}

function calibrate(p: PredictorWeights, dir: string, m: ActivationsManifest, spec: SiteSpec, labelLayer: number, valEvery: number): { rule: SelectionRule; validation: Metrics } {
  const { hist, positives } = validate(p, dir, m, spec, labelLayer, valEvery, spec.rule === 'threshold');
  if (spec.rule === 'topk') {
    const k = Math.max(1, hist.kForRecall(spec.targetRecall));
    return { rule: { kind: 'topk', k }, validation: hist.metricsAtK(k) };
  }
  const value = thresholdForRecall(positives, spec.targetRecall);
  return { rule: { kind: 'threshold', value }, validation: thresholdMetrics(p, dir, m, spec, labelLayer, valEvery, value) };
}

export function resolveLabel(cfg: TrainConfig, activation: string): LabelRule {
  const k = cfg.mlp.label.kind === 'auto' ? (activation === 'relu' ? 'active' : 'topFraction') : cfg.mlp.label.kind;
  if (k === 'active') return { kind: 'active' };
  return { kind: k, value: cfg.mlp.label.value };
}

/**
 * `sites`: which of the layer's predictors to make (train-predictors runs a layer's MLP and heads separately);
 * `exec`: where the MLP fit's data-parallel jobs run (a worker pool, or in this thread).
 */
export async function trainLayer(dir: string, m: ActivationsManifest, cfg: TrainConfig, layer: number, onProgress: (samples: number) => void = () => undefined,
  sites: { mlp?: boolean; heads?: boolean } = { mlp: true, heads: true }, exec: MlpExec = inlineMlpExec): Promise<LayerResult> {
  const t0 = Date.now();
  const log: Record<string, unknown>[] = [];
  const push = (e: Record<string, unknown>) => log.push({ layer, ...e, t: (Date.now() - t0) / 1000 });
  const mc = m.model.config;
  const valEvery = valEveryOf(cfg.validationFraction);
  const dense = 2 * (mc.hidden * mc.heads * mc.headDim * 2 + mc.hidden * mc.kvHeads * mc.headDim * 2) + 2 * mc.hidden * mc.ffn * (mc.gated ? 3 : 2);
  const res: LayerResult = { layer, log, samplesPerSecond: 0, seconds: 0 };
  let samples = 0;
  const tick = (n: number) => { samples += n; onProgress(n); };
  const summary = readSummary(dir);

  if (cfg.mlp.enabled && sites.mlp) {
    const label = resolveLabel(cfg, mc.activation);
    const site = readMlpSite(cfg.model ?? m.model.dir, mc, layer);
    const trained: TrainedCandidate[] = [];
    let epochs = 0;
    // a trained MLP predictor (Deja Vu's predictor, or the closed form's fine-tune): early stopping on recall at 1.3x the
    // label density, negatives weighted by that density
    const rate = label.kind === 'active' ? summary?.layers.find((x) => x.layer === layer)?.mlpDensity ?? 0.1 : label.kind === 'topFraction' ? label.value : 0.1;
    const mlpSpec = (inputField: SiteSpec['inputField'], rank: number, hiddenActivation: SiteSpec['hiddenActivation']): SiteSpec => ({
      site: 'mlp', width: mc.ffn, inputLayer: layer, inputField, label, rank, hiddenActivation, targetRecall: cfg.mlp.targetRecall, rule: 'topk',
      kRef: Math.max(1, Math.ceil(1.3 * rate * mc.ffn)), positiveRate: rate,
      ...(inputField === 'h_mlp' ? { toInput: (x: Float32Array, n: number) => mlpInput(site, x, n) } : {}),
    });
    if (cfg.mlp.predictors.includes('dejavu')) {
      // Deja Vu's predictor: a trained low-rank predictor, offered as one more candidate
      const rank = resolveRanks([cfg.mlp.rank], mc.hidden)[0]!;
      const tr = trainSite(dir, m, cfg, mlpSpec(cfg.mlp.input, rank, cfg.mlp.hiddenActivation), layer, rank, cfg.seed * 1000 + layer * 2, push, tick);
      epochs = tr.epochs;
      trained.push({ predictor: 'dejavu', rank, input: cfg.mlp.input, weights: tr.p });
    }
    let choice: MlpChoice;
    try {
      // fine-tune of the chosen closed form: Deja Vu's weighted BCE from the closed-form start, on h (mlp.fineTune)
      const fineTune = cfg.mlp.fineTune.epochs > 0 ? (host: HostPredictor) => trainSite(dir, m, cfg, mlpSpec('h_mlp', host.r, 'none'), layer, host.r,
        cfg.seed * 1000 + layer * 2, push, tick, { init: host, epochs: cfg.mlp.fineTune.epochs, lr: cfg.mlp.fineTune.lr }) : undefined;
      choice = await fitMlpSite(dir, m, cfg, site, label, trained, tick, exec, fineTune && ((h: HostPredictor) => { const r = fineTune(h); epochs = r.epochs; return r.p; }));
    } finally {
      for (const t of trained) disposePredictor(t.weights);
    }
    res.mlp = {
      ...(choice.host ? { host: choice.host } : {}), ...(choice.hostUp ? { hostUp: choice.hostUp } : {}),
      predictor: choice.predictor, score: choice.score, input: choice.input, label, rule: choice.rule, validation: choice.validation,
      flopShare: choice.flopShare, costShare: choice.costShare, rank: choice.rank, epochs: choice.predictor === 'dejavu' || choice.fineTuned ? epochs : 0, candidates: choice.candidates,
    };
    for (const c of choice.candidates) push({ site: 'mlp', candidate: c });
    push({ site: 'mlp', chosen: { predictor: choice.predictor, rank: choice.rank, rule: choice.rule }, validation: res.mlp.validation });
  }
  if (cfg.heads.enabled && sites.heads) {
    const H = mc.heads;
    const inputLayer = cfg.heads.input === 'prev' && layer > 0 ? layer - 1 : layer;
    if (!m.layers.includes(inputLayer)) throw new UserError(`the head predictor of layer ${layer} reads layer ${inputLayer}'s x_attn (lookahead), which was not collected`, 'collect all layers, or set heads.input=same');
    const kTrue = Math.ceil(cfg.heads.topFraction * H - 1e-9);
    const spec: SiteSpec = {
      site: 'heads', width: H, inputLayer, inputField: 'x_attn', label: { kind: 'topFraction', value: cfg.heads.topFraction }, rank: cfg.heads.rank,
      hiddenActivation: 'none', targetRecall: cfg.heads.targetRecall, rule: cfg.heads.rule, kRef: kTrue, positiveRate: kTrue / H,
    };
    const tr = trainSite(dir, m, cfg, spec, layer, cfg.heads.rank, cfg.seed * 1000 + layer * 2 + 1, push, tick);
    const cal = calibrate(tr.p, dir, m, spec, layer, valEvery);
    res.heads = {
      host: toHost(tr.p), predictor: 'dejavu', score: 'linear', input: inputLayer === layer ? 'x_attn' : `x_attn[layer-1]`, label: spec.label, rule: cal.rule, validation: cal.validation,
      flopShare: predictorFlops(mc.hidden, cfg.heads.rank, H) / dense, rank: cfg.heads.rank, epochs: tr.epochs,
    };
    disposePredictor(tr.p);
    push({ site: 'heads', calibrated: res.heads.rule, validation: res.heads.validation });
  }
  res.seconds = (Date.now() - t0) / 1000;
  res.samplesPerSecond = samples / Math.max(1e-3, res.seconds);
  res.samples = samples;
  return res;
}
