/**
 * One layer's MLP mode, chosen by cost: every candidate is calibrated to the target recall on the validation rows,
 * its estimated MLP cost per token is predictor FLOPs + predicted density × dense MLP FLOPs, and the cheapest wins.
 * Candidates:
 *   - dense: compute every neuron (cost 1);
 *   - exact (ReLU only): the first projection itself, then only the rows of the second for neurons > 0 (lossless);
 *   - closed-form at each rank: the whitened low-rank fit of the first projection(s) on h, the MLP's own input;
 *   - trained predictors handed in by the caller (Deja Vu's family), scored the same way.
 * Each predicted candidate is tried under both rules (per-layer threshold, per-token top-k) unless one is fixed.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { TrainConfig } from '../config/schemas.js';
import { iterateLayer, type ActivationsManifest } from '../activations/dataset.js';
import { readSync } from '../util/tfx.js';
import { closedFormFits, MomentAccumulator, normalizeByResidual, type LinearFit } from './closed-form.js';
import { RankHistogram, ThresholdCounter, thresholdForRecall, type Metrics, type SelectionRule } from './metrics.js';
import { exactScores, mlpInput, type MlpSite } from './mlp-site.js';
import { fromHost, predictLogits, swigluScore, disposePredictor, toHost, type HostPredictor, type PredictorWeights } from './predictor.js';
import { labelsFor, type LabelRule } from './labels.js';

export type MlpFamily = 'dense' | 'exact' | 'closed-form' | 'dejavu';
export type MlpInput = 'h_mlp' | 'x_attn' | 'x_mlp';

export interface MlpCandidate {
  family: MlpFamily;
  rank: number;
  rule: SelectionRule | null;
  recall: number;
  /** recall weighted by each active neuron's |activation| × ‖its down-projection column‖ */
  magnitudeRecall: number;
  predictedDensity: number;
  /** recall of the score's top-k at k = the true (label) density: comparable across families */
  recallAtTrueDensity: number;
  /** predictor FLOPs / dense MLP FLOPs, per token */
  flopShare: number;
  /** estimated MLP cost / dense MLP cost: flopShare + predicted density (exact: first projection + density × second) */
  costShare: number;
  /** closed form fine-tuned from its start (mlp.fineTune) */
  fineTuned?: boolean;
}

export interface MlpChoice {
  family: MlpFamily;
  rank: number;
  input: MlpInput | 'none';
  score: 'linear' | 'swiglu';
  rule: SelectionRule | null;
  validation: Metrics & { magnitudeRecall: number };
  flopShare: number;
  costShare: number;
  /** low-rank weights (SwiGLU: the gate's), and the up projection's for SwiGLU */
  host?: HostPredictor;
  hostUp?: HostPredictor;
  candidates: (MlpCandidate & { chosen: boolean })[];
  fineTuned?: boolean;
}

/** A trained predictor offered as a candidate (Deja Vu's family). */
export interface TrainedCandidate { family: 'dejavu'; rank: number; input: MlpInput; weights: PredictorWeights }

/** Ranks: values ≤ 1 are fractions of the width d, larger ones absolute; clamped to [1, d], unique, ascending. */
export function resolveRanks(ranks: number[], d: number): number[] {
  return [...new Set(ranks.map((r) => Math.max(1, Math.min(d, r <= 1 ? Math.round(r * d) : Math.round(r)))))].sort((a, b) => a - b);
}

export function mlpDenseFlops(site: { d: number; F: number; activation: string }): number {
  return 2 * site.d * site.F * (site.activation === 'swiglu' ? 3 : 2);
}

/**
 * Per-token FLOPs of a mode's predictor: none (dense), the first projection itself (exact: 2 d F), or the low-rank
 * predictor(s) (SwiGLU closed form: gate and up). Its estimated MLP cost, as a share of the dense MLP, is this plus
 * the predicted density times the dense MLP (exact: the density times the second projection only).
 */
export function predictorFlopsOf(family: MlpFamily, rank: number, score: 'linear' | 'swiglu', site: { d: number; F: number }): number {
  if (family === 'dense') return 0;
  if (family === 'exact') return 2 * site.d * site.F;
  return 2 * rank * (site.d + site.F) * (score === 'swiglu' ? 2 : 1);
}

export function mlpCostShare(family: MlpFamily, rank: number, score: 'linear' | 'swiglu', density: number, site: { d: number; F: number; activation: string }): number {
  const dense = mlpDenseFlops(site);
  if (family === 'dense') return 1;
  if (family === 'exact') return (predictorFlopsOf(family, rank, score, site) * (1 + density)) / dense;
  return (predictorFlopsOf(family, rank, score, site) + density * dense) / dense;
}

interface ValRows { h: Float32Array[]; raw: Map<MlpInput, Float32Array[]>; y: Uint8Array[]; n: number[] }

function cat<T extends Float32Array | Uint8Array>(parts: T[], make: (n: number) => T): T {
  const o = make(parts.reduce((s, p) => s + p.length, 0));
  let k = 0;
  for (const p of parts) { o.set(p, k); k += p.length; }
  return o;
}

function fitHost(f: LinearFit, d: number, F: number): HostPredictor {
  return { fc1Weight: f.fc1, fc1Bias: new Float32Array(f.r), fc2Weight: f.fc2, fc2Bias: f.fc2Bias, d, r: f.r, out: F, hidden: 'none' };
}

/** Calibrate a score matrix [n, F] to the target recall under one rule; metrics on the same rows. */
function calibrate(scores: Float32Array, y: Uint8Array, w: Float32Array | null, n: number, F: number, rule: 'topk' | 'threshold', target: number, weighting: 'count' | 'magnitude'): { rule: SelectionRule; m: Metrics; magnitudeRecall: number; recallAtTrueDensity: number } {
  const hist = new RankHistogram(F, w !== null);
  hist.add(scores, y, n, w ?? undefined);
  const kTrue = Math.max(1, Math.round(hist.trueDensity() * F));
  const recallAtTrueDensity = hist.recallCurve()[kTrue]!;
  if (rule === 'topk') {
    const k = Math.max(1, weighting === 'magnitude' && w ? hist.kForWeightedRecall(target) : hist.kForRecall(target));
    return { rule: { kind: 'topk', k }, m: hist.metricsAtK(k), magnitudeRecall: w ? hist.weightedRecallAtK(k) : NaN, recallAtTrueDensity };
  }
  const pos: number[] = [], pw: number[] = [];
  for (let i = 0; i < scores.length; i++) if (y[i]) { pos.push(scores[i]!); if (w) pw.push(w[i]!); }
  const value = thresholdForRecall(Float32Array.from(pos), target, weighting === 'magnitude' && w ? Float32Array.from(pw) : undefined);
  const c = new ThresholdCounter(value);
  c.add(scores, y, w ?? undefined);
  return { rule: { kind: 'threshold', value }, m: c.metrics(), magnitudeRecall: w ? c.weightedRecall() : NaN, recallAtTrueDensity };
}

/**
 * `fineTune`, when given, continues training the chosen closed form (linear score) from its start; the result is
 * recalibrated under the same rule and kept, as one more candidate, when it costs less.
 */
export function fitMlpSite(dir: string, m: ActivationsManifest, cfg: TrainConfig, site: MlpSite, label: LabelRule, trained: TrainedCandidate[], onRows: (n: number) => void,
  fineTune?: (start: HostPredictor) => PredictorWeights): MlpChoice {
  const { d, F, layer } = site;
  const mc = cfg.mlp;
  const valEvery = Math.max(2, Math.round(1 / cfg.validationFraction));
  const swiglu = site.activation === 'swiglu';
  const families = new Set(mc.families);
  const rawInputs = [...new Set(trained.map((t) => t.input).filter((i) => i !== 'h_mlp'))];
  const labelFields = label.kind === 'active' ? ['mlp_active'] : ['mlp_act'];
  const fields = [...new Set(['x_mlp', ...rawInputs, ...labelFields])];

  // one streaming pass: moments of h over training rows, validation rows kept (capped)
  const acc = new MomentAccumulator(d);
  const val: ValRows = { h: [], raw: new Map(rawInputs.map((i) => [i, []])), y: [], n: [] };
  let nVal = 0;
  for (const b of iterateLayer(dir, m, layer, fields)) {
    const h = mlpInput(site, b.xMlp, b.rows);
    const y = labelsFor('mlp', label, F, b);
    const tr: number[] = [], va: number[] = [];
    for (let r = 0; r < b.rows; r++) (b.seq[r]! % valEvery === valEvery - 1 ? va : tr).push(r);
    const pick = (src: Float32Array, rows: number[], w: number) => { const o = new Float32Array(rows.length * w); rows.forEach((r, i) => o.set(src.subarray(r * w, (r + 1) * w), i * w)); return o; };
    acc.add(tr.length === b.rows ? h : pick(h, tr, d), tr.length);
    const room = Math.min(va.length, mc.maxCalibrationRows - nVal);
    if (room > 0) {
      const rows = va.slice(0, room);
      val.h.push(pick(h, rows, d));
      for (const i of rawInputs) val.raw.get(i)!.push(pick(i === 'x_attn' ? b.xAttn : b.xMlp, rows, d));
      const yy = new Uint8Array(rows.length * F);
      rows.forEach((r, k) => yy.set(y.subarray(r * F, (r + 1) * F), k * F));
      val.y.push(yy); val.n.push(rows.length); nVal += rows.length;
    }
    onRows(b.rows);
  }
  const hv = cat(val.h, (n) => new Float32Array(n)), yv = cat(val.y, (n) => new Uint8Array(n));
  // exact pre-activations of the validation rows: the exact candidate, and each active neuron's magnitude weight
  const { z: zUp, weights } = exactScores(site, hv, nVal);

  const denseFlops = mlpDenseFlops(site);
  const rules: ('topk' | 'threshold')[] = mc.rule === 'auto' ? ['threshold', 'topk'] : [mc.rule];
  type Made = Pick<MlpChoice, 'host' | 'hostUp' | 'input' | 'score'>;
  const cands: (MlpCandidate & { make: () => Made; metrics: Metrics })[] = [];
  const trueDensity = yv.reduce((s, v) => s + v, 0) / Math.max(1, yv.length);
  const tryScores = (family: MlpFamily, rank: number, score: 'linear' | 'swiglu', scores: Float32Array, make: () => Made, only = rules) => {
    for (const rule of only) {
      const c = calibrate(scores, yv, weights, nVal, F, rule, mc.targetRecall, mc.recallWeighting);
      cands.push({ family, rank, rule: c.rule, recall: c.m.recall, magnitudeRecall: c.magnitudeRecall, predictedDensity: c.m.predictedDensity, recallAtTrueDensity: c.recallAtTrueDensity,
        flopShare: predictorFlopsOf(family, rank, score, site) / denseFlops, costShare: mlpCostShare(family, rank, score, c.m.predictedDensity, site), make, metrics: c.m });
    }
  };
  const scoreWith = (p: PredictorWeights, x: Float32Array, up?: PredictorWeights) => readSync(() => { const t = tf.tensor2d(x, [nVal, d]); return up ? swigluScore(p, up, t) : predictLogits(p, t); });

  if (families.has('dense')) {
    const metrics = { recall: 1, precision: trueDensity, f1: (2 * trueDensity) / (1 + trueDensity), predictedDensity: 1, trueDensity };
    cands.push({ family: 'dense', rank: 0, rule: null, recall: 1, magnitudeRecall: 1, predictedDensity: 1, recallAtTrueDensity: NaN, flopShare: 0, costShare: 1, make: () => ({ input: 'none', score: 'linear' }), metrics });
  }
  if (families.has('exact') && !swiglu) {
    // lossless: z > 0 is exactly the active set; the first projection is the "predictor" (2 d F FLOPs)
    const c = new ThresholdCounter(0);
    c.add(zUp, yv, weights);
    const met = c.metrics();
    cands.push({ family: 'exact', rank: d, rule: { kind: 'threshold', value: 0 }, recall: met.recall, magnitudeRecall: c.weightedRecall(), predictedDensity: met.predictedDensity, recallAtTrueDensity: NaN,
      flopShare: predictorFlopsOf('exact', d, 'linear', site) / denseFlops, costShare: mlpCostShare('exact', d, 'linear', met.predictedDensity, site),
      make: () => ({ input: 'h_mlp', score: 'linear' }), metrics: met });
  }
  if (families.has('closed-form')) {
    const ranks = resolveRanks(mc.ranks, d);
    const mom = acc.finish();
    const norm = (f: LinearFit) => (mc.normalize && !swiglu ? normalizeByResidual(f, F) : f);
    const ups = closedFormFits(site.up, site.upBias ?? null, F, mom, ranks).map(norm);
    const gates = swiglu ? closedFormFits(site.gate!, site.gateBias ?? null, F, mom, ranks) : null;
    ups.forEach((uf, i) => {
      const gf = gates?.[i];
      const hostA = fitHost(gf ?? uf, d, F), hostB = gf ? fitHost(uf, d, F) : undefined;
      const pa = fromHost(hostA), pb = hostB ? fromHost(hostB) : undefined;
      try {
        const scores = scoreWith(pa, hv, pb);
        tryScores('closed-form', uf.r, swiglu ? 'swiglu' : 'linear', scores, () => ({ host: hostA, ...(hostB ? { hostUp: hostB } : {}), input: 'h_mlp', score: swiglu ? 'swiglu' : 'linear' }));
      } finally { disposePredictor(pa); if (pb) disposePredictor(pb); }
    });
  }
  for (const t of trained) {
    const x = t.input === 'h_mlp' ? hv : cat(val.raw.get(t.input)!, (n) => new Float32Array(n));
    const host = toHost(t.weights);
    tryScores('dejavu', t.rank, 'linear', scoreWith(t.weights, x), () => ({ host, input: t.input, score: 'linear' }));
  }
  if (!cands.length) throw new Error(`layer ${layer}: no MLP candidate (families ${[...families].join(', ')})`);
  const cheapest = () => cands.reduce((b, c) => (c.costShare < b.costShare - 1e-12 ? c : b), cands[0]!);
  let best = cheapest();
  if (fineTune && best.family === 'closed-form' && !swiglu) {
    // start from the normalized scores times 1.7 (a z-score as a logistic logit), a monotone change the rule absorbs
    const h0 = best.make().host!;
    const tuned = fineTune({ ...h0, fc2Weight: h0.fc2Weight.map((v) => v * 1.7), fc2Bias: h0.fc2Bias.map((v) => v * 1.7) });
    try {
      const host = toHost(tuned);
      const n0 = cands.length;
      tryScores('closed-form', best.rank, 'linear', scoreWith(tuned, hv), () => ({ host, input: 'h_mlp', score: 'linear' }), [best.rule!.kind as 'topk' | 'threshold']);
      for (const c of cands.slice(n0)) c.fineTuned = true;
    } finally { disposePredictor(tuned); }
    best = cheapest();
  }
  return {
    family: best.family, rank: best.rank, rule: best.rule, ...best.make(), ...(best.fineTuned ? { fineTuned: true } : {}),
    validation: { ...best.metrics, magnitudeRecall: best.magnitudeRecall },
    flopShare: best.flopShare, costShare: best.costShare,
    candidates: cands.map((c) => { const { make: _m, metrics: _x, ...rest } = c; return { ...rest, chosen: c === best }; }),
  };
}


const pct = (x: number) => (100 * x).toFixed(1) + '%';
export function ruleText(r?: { kind: string; k?: number; value?: number } | null): string {
  return r ? (r.kind === 'topk' ? `top-${r.k}` : `>= ${r.value!.toFixed(3)}`) : '-';
}

/** Markdown lines: one layer's candidate table (train-predictors' summary and evaluate-recall's report.md). */
export function candidateTable(layer: number, cs: (MlpCandidate & { chosen: boolean })[]): string[] {
  const lines = [`layer ${layer}: MLP candidates (validation rows; cost = predictor + predicted density x dense MLP, as a share of the dense MLP)`, '',
    '| mode | rank | rule | recall | predicted density | recall at true density | cost | chosen |', '|---|---:|---|---:|---:|---:|---:|---|'];
  for (const c of cs) lines.push(`| ${c.family}${c.fineTuned ? ' + fine-tune' : ''} | ${c.rank} | ${ruleText(c.rule)} | ${c.recall.toFixed(4)} | ${pct(c.predictedDensity)} | ${Number.isFinite(c.recallAtTrueDensity) ? c.recallAtTrueDensity.toFixed(3) : '-'} | ${pct(c.costShare)} | ${c.chosen ? '**yes**' : ''} |`);
  return lines;
}
