/**
 * Train and calibrate one layer's predictors, streaming its activation shards (one shard in memory at a time).
 * Runs in-process or inside a worker thread (one tfjs per worker).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { readSync } from '../util/tfx.js';
import { mulberry32 } from '../util/random.js';
import type { TrainConfig } from '../config/schemas.js';
import { iterateLayer, type ActivationsManifest } from '../activations/dataset.js';
import type { DecodedBatch } from '../activations/format.js';
import { UserError } from '../util/errors.js';
import { RankHistogram, ThresholdCounter, thresholdForRecall, topKLabels, type Metrics, type SelectionRule } from './metrics.js';
import { disposeAdam, disposePredictor, fromHost, initPredictor, newAdam, predictLogits, predictorFlops, toHost, trainStep, type HostPredictor, type PredictorWeights } from './predictor.js';

export type LabelRule = { kind: 'active' } | { kind: 'topFraction'; value: number } | { kind: 'threshold'; value: number };

export interface PredictorResult {
  host: HostPredictor;
  input: string;
  label: LabelRule;
  rule: SelectionRule;
  validation: Metrics;
  /** predictor FLOPs / dense layer FLOPs (per token) */
  flopShare: number;
  rank: number;
  epochs: number;
  /** auto rank: every candidate tried */
  candidates?: { rank: number; flopShare: number; predictedDensity: number; meets: boolean }[];
}

export interface LayerResult { layer: number; mlp?: PredictorResult; heads?: PredictorResult; log: Record<string, unknown>[]; samplesPerSecond: number; seconds: number }

type Site = 'mlp' | 'heads';

interface SiteSpec {
  site: Site;
  width: number;
  inputLayer: number;
  inputField: 'x_attn' | 'x_mlp';
  label: LabelRule;
  rank: number;
  hidden: 'none' | 'relu';
  targetRecall: number;
  rule: 'topk' | 'threshold';
  /** reference k for early stopping: recall at this k is the validation score */
  kRef: number;
  positiveRate: number;
}

/** 0/1 labels [rows, width] of a decoded batch under a site's label rule (training and evaluation share this). */
export function labelsFor(site: Site, l: LabelRule, W: number, b: DecodedBatch): Uint8Array {
  if (site === 'heads') return topKLabels(b.headNorm, b.rows, W, Math.ceil((l as { value: number }).value * W - 1e-9));
  if (l.kind === 'active') return b.mlpActive;
  if (!b.mlpAct) throw new UserError('the label rule needs MLP activation magnitudes (mlp_act), which this dataset did not record', 're-collect with --set recordMlpAct=true, or use label kind "active" for ReLU models');
  if (l.kind === 'threshold') { const o = new Uint8Array(b.mlpAct.length); for (let i = 0; i < o.length; i++) o[i] = Math.abs(b.mlpAct[i]!) > l.value ? 1 : 0; return o; }
  return topKLabels(b.mlpAct, b.rows, W, Math.max(1, Math.round(l.value * W)), true);
}

interface Rows { x: Float32Array; y: Uint8Array; n: number }

/** Stream (input, labels) rows of one shard, split into train/validation by sequence. */
function* shardRows(dir: string, m: ActivationsManifest, spec: SiteSpec, labelLayer: number, shard: number, valEvery: number): Generator<{ train: Rows; val: Rows }> {
  const labelFields = spec.site === 'heads' ? ['head_norm'] : spec.label.kind === 'active' ? ['mlp_active'] : ['mlp_act'];
  const sameLayer = spec.inputLayer === labelLayer;
  const lab = iterateLayer(dir, m, labelLayer, sameLayer ? [spec.inputField, ...labelFields] : labelFields, (i) => i === shard);
  const inp = sameLayer ? null : iterateLayer(dir, m, spec.inputLayer, [spec.inputField], (i) => i === shard);
  const d = m.dims.hidden, W = spec.width;
  for (const lb of lab) {
    const xb = inp ? inp.next().value as DecodedBatch : lb;
    const x = spec.inputField === 'x_attn' ? xb.xAttn : xb.xMlp;
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

function trainSite(dir: string, m: ActivationsManifest, cfg: TrainConfig, spec: SiteSpec, labelLayer: number, rank: number, seed: number,
  log: (e: Record<string, unknown>) => void, tick: (n: number) => void): { p: PredictorWeights; epochs: number; samples: number } {
  const d = m.dims.hidden;
  const valEvery = Math.max(2, Math.round(1 / cfg.validationFraction));
  let p = initPredictor(d, rank, spec.width, spec.hidden, seed);
  const adam = newAdam(p);
  const rnd = mulberry32(seed);
  const negWeight = spec.positiveRate / Math.max(1e-6, 1 - spec.positiveRate);
  let best: HostPredictor | null = null, bestScore = -1, since = 0, epochs = 0, samples = 0;
  try {
    for (let epoch = 0; epoch < cfg.optim.epochs; epoch++) {
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
            const l = trainStep(p, adam, xt, yt, { lr: cfg.optim.lr, weightDecay: cfg.optim.weightDecay, negWeight, wantLoss, positives });
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
      log({ site: spec.site, rank, epoch, loss: lossSum / Math.max(1, lossN), valRecallAtKRef: score, kRef: spec.kRef, samples: seen });
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

export function trainLayer(dir: string, m: ActivationsManifest, cfg: TrainConfig, layer: number, onProgress: (samples: number) => void = () => undefined): LayerResult {
  const t0 = Date.now();
  const log: Record<string, unknown>[] = [];
  const push = (e: Record<string, unknown>) => log.push({ layer, ...e, t: (Date.now() - t0) / 1000 });
  const mc = m.model.config;
  const valEvery = Math.max(2, Math.round(1 / cfg.validationFraction));
  const dense = 2 * (mc.hidden * mc.heads * mc.headDim * 2 + mc.hidden * mc.kvHeads * mc.headDim * 2) + 2 * mc.hidden * mc.ffn * (mc.activation === 'swiglu' ? 3 : 2);
  const res: LayerResult = { layer, log, samplesPerSecond: 0, seconds: 0 };
  let samples = 0;
  const tick = (n: number) => { samples += n; onProgress(n); };
  const summaryFile = path.join(dir, 'summary.json');
  const summary = fs.existsSync(summaryFile) ? (JSON.parse(fs.readFileSync(summaryFile, 'utf8')) as { layers: { layer: number; mlpDensity: number }[] }) : undefined;

  if (cfg.mlp.enabled) {
    const label = resolveLabel(cfg, mc.activation);
    const rate = label.kind === 'active' ? summary?.layers.find((x) => x.layer === layer)?.mlpDensity ?? 0.1 : label.kind === 'topFraction' ? label.value : 0.1;
    const spec: SiteSpec = {
      site: 'mlp', width: mc.ffn, inputLayer: layer, inputField: cfg.mlp.input, label, rank: cfg.mlp.rank, hidden: cfg.mlp.hiddenActivation,
      targetRecall: cfg.mlp.targetRecall, rule: cfg.mlp.rule, kRef: Math.max(1, Math.ceil(1.3 * rate * mc.ffn)), positiveRate: rate,
    };
    const ranks = cfg.mlp.autoRank.enabled ? [...cfg.mlp.autoRank.candidates].sort((a, b) => a - b) : [cfg.mlp.rank];
    const candidates: NonNullable<PredictorResult['candidates']> = [];
    let chosen: { p: PredictorWeights; rank: number; epochs: number; cal: ReturnType<typeof calibrate> } | null = null;
    for (const rank of ranks) {
      const share = predictorFlops(mc.hidden, rank, mc.ffn) / dense;
      if (cfg.mlp.autoRank.enabled && share > cfg.mlp.autoRank.flopBudget && candidates.length) break;
      const tr = trainSite(dir, m, cfg, spec, layer, rank, cfg.seed * 1000 + layer * 2, push, tick);
      const cal = calibrate(tr.p, dir, m, spec, layer, valEvery);
      const meets = cal.validation.predictedDensity <= 1.3 * cal.validation.trueDensity + 1e-12;
      candidates.push({ rank, flopShare: share, predictedDensity: cal.validation.predictedDensity, meets });
      const better = !chosen || (meets && !(chosen.cal.validation.predictedDensity <= 1.3 * chosen.cal.validation.trueDensity)) || (!meets && cal.validation.predictedDensity < chosen.cal.validation.predictedDensity);
      if (better) { if (chosen) disposePredictor(chosen.p); chosen = { p: tr.p, rank, epochs: tr.epochs, cal }; } else disposePredictor(tr.p);
      if (meets) break;
    }
    res.mlp = {
      host: toHost(chosen!.p), input: cfg.mlp.input, label, rule: chosen!.cal.rule, validation: chosen!.cal.validation,
      flopShare: predictorFlops(mc.hidden, chosen!.rank, mc.ffn) / dense, rank: chosen!.rank, epochs: chosen!.epochs,
      ...(cfg.mlp.autoRank.enabled ? { candidates } : {}),
    };
    disposePredictor(chosen!.p);
    push({ site: 'mlp', calibrated: res.mlp.rule, validation: res.mlp.validation });
  }
  if (cfg.heads.enabled) {
    const H = mc.heads;
    const inputLayer = cfg.heads.input === 'prev' && layer > 0 ? layer - 1 : layer;
    if (!m.layers.includes(inputLayer)) throw new UserError(`the head predictor of layer ${layer} reads layer ${inputLayer}'s x_attn (lookahead), which was not collected`, 'collect all layers, or set heads.input=same');
    const kTrue = Math.ceil(cfg.heads.topFraction * H - 1e-9);
    const spec: SiteSpec = {
      site: 'heads', width: H, inputLayer, inputField: 'x_attn', label: { kind: 'topFraction', value: cfg.heads.topFraction }, rank: cfg.heads.rank,
      hidden: 'none', targetRecall: cfg.heads.targetRecall, rule: cfg.heads.rule, kRef: kTrue, positiveRate: kTrue / H,
    };
    const tr = trainSite(dir, m, cfg, spec, layer, cfg.heads.rank, cfg.seed * 1000 + layer * 2 + 1, push, tick);
    const cal = calibrate(tr.p, dir, m, spec, layer, valEvery);
    res.heads = {
      host: toHost(tr.p), input: inputLayer === layer ? 'x_attn' : `x_attn[layer-1]`, label: spec.label, rule: cal.rule, validation: cal.validation,
      flopShare: predictorFlops(mc.hidden, cfg.heads.rank, H) / dense, rank: cfg.heads.rank, epochs: tr.epochs,
    };
    disposePredictor(tr.p);
    push({ site: 'heads', calibrated: res.heads.rule, validation: res.heads.validation });
  }
  res.seconds = (Date.now() - t0) / 1000;
  res.samplesPerSecond = samples / Math.max(1e-3, res.seconds);
  return res;
}
