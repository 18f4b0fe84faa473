/**
 * One layer's MLP mode, chosen by cost: every candidate is calibrated to the target recall on the validation rows,
 * its estimated MLP cost per token is predictor FLOPs + predicted density × dense MLP FLOPs, and the cheapest wins.
 * Candidates:
 *   - dense: compute every neuron (cost 1);
 *   - exact (ReLU only): the first projection itself, then only the rows of the second for neurons > 0 (lossless);
 *   - closed-form at each rank: the whitened low-rank fit of the first projection(s) on h, the MLP's own input;
 *   - trained predictors handed in by the caller (Deja Vu's predictor), scored the same way.
 * Each predicted candidate is tried under both rules (per-layer threshold, per-token top-k) unless one is fixed.
 */
import type { TrainConfig } from '../config/schemas.js';
import { iterateLayer, type ActivationsManifest } from '../activations/dataset.js';
import { UserError } from '../util/errors.js';
import { MomentAccumulator, type LinearFit } from './closed-form.js';
import { RankHistogram, ThresholdCounter, thresholdForRecall, type Metrics, type SelectionRule } from './metrics.js';
import { mlpInput, type MlpSite } from './mlp-site.js';
import { disposePredictor, toHost, type HostPredictor, type PredictorWeights } from './predictor.js';
import type { LabelRule } from './labels.js';
import type { Candidate, PredictorKind } from './store.js';
import { CHUNK_ROWS, concat, inlineMlpExec, pickRows, shared, sharedF32, splitRows, valEveryOf, type ExactPart, type FitPart, type MlpExec, type MlpInput, type MomentsPart, type ScorePart } from './mlp-jobs.js';
export type { MlpInput };

export type { PredictorKind };

/** one candidate as train-layer weighs it: its predictors.json record (src/predictors/store.ts) before it is chosen, NaN where not measured */
export type MlpCandidate = Omit<Candidate, 'chosen' | 'recallAtTrueDensity'> & { recallAtTrueDensity: number };

export interface MlpChoice {
  predictor: PredictorKind;
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

/** A trained predictor offered as a candidate (Deja Vu's predictor). */
export interface TrainedCandidate { predictor: 'dejavu'; rank: number; input: MlpInput; weights: PredictorWeights }

/** Ranks: values ≤ 1 are fractions of the width d, larger ones absolute; clamped to [1, d], unique, ascending. */
export function resolveRanks(ranks: number[], d: number): number[] {
  return [...new Set(ranks.map((r) => Math.max(1, Math.min(d, r <= 1 ? Math.round(r * d) : Math.round(r)))))].sort((a, b) => a - b);
}

export function mlpDenseFlops(site: { d: number; F: number; gated: boolean }): number {
  return 2 * site.d * site.F * (site.gated ? 3 : 2);
}

/**
 * Per-token FLOPs of a mode's predictor: none (dense), the first projection itself (exact: 2 d F), or the low-rank
 * predictor(s) (SwiGLU closed form: gate and up). Its estimated MLP cost, as a share of the dense MLP, is this plus
 * the predicted density times the dense MLP (exact: the density times the second projection only).
 */
export function predictorFlopsOf(predictor: PredictorKind, rank: number, score: 'linear' | 'swiglu', site: { d: number; F: number }): number {
  if (predictor === 'dense') return 0;
  if (predictor === 'exact') return 2 * site.d * site.F;
  return 2 * rank * (site.d + site.F) * (score === 'swiglu' ? 2 : 1);
}

export function mlpCostShare(predictor: PredictorKind, rank: number, score: 'linear' | 'swiglu', density: number, site: { d: number; F: number; gated: boolean }): number {
  const dense = mlpDenseFlops(site);
  if (predictor === 'dense') return 1;
  // exact: the first projection (a gated ReLU's gate) for every neuron, the others for the active ones
  if (predictor === 'exact') { const pf = predictorFlopsOf(predictor, rank, score, site); return (pf + density * (dense - pf)) / dense; }
  return (predictorFlopsOf(predictor, rank, score, site) + density * dense) / dense;
}

function fitHost(f: LinearFit, d: number, F: number): HostPredictor {
  return { fc1Weight: f.fc1, fc1Bias: new Float32Array(f.r), fc2Weight: f.fc2, fc2Bias: f.fc2Bias, d, r: f.r, out: F, hiddenActivation: 'none' };
}

const sharedHost = (h: HostPredictor): HostPredictor => ({ ...h, fc1Weight: shared(h.fc1Weight), fc1Bias: shared(h.fc1Bias), fc2Weight: shared(h.fc2Weight), fc2Bias: shared(h.fc2Bias) });

/**
 * Calibrate a score matrix [n, F] to the target recall under one rule; metrics on the same rows. `hist`: the scores'
 * rank histogram (weighted when `w` is given), shared by both rules; `pos`, `posW`: the positives' scores and weights
 * in row order.
 */
function calibrate(scores: Float32Array, hist: RankHistogram, pos: Float32Array, posW: Float32Array, y: Uint8Array, w: Float32Array | null, F: number, rule: 'topk' | 'threshold', target: number, weighting: 'count' | 'magnitude'): { rule: SelectionRule; m: Metrics; magnitudeRecall: number; recallAtTrueDensity: number } {
  const kTrue = Math.max(1, Math.round(hist.trueDensity() * F));
  const recallAtTrueDensity = hist.recallCurve()[kTrue]!;
  if (rule === 'topk') {
    const k = Math.max(1, weighting === 'magnitude' && w ? hist.kForWeightedRecall(target) : hist.kForRecall(target));
    return { rule: { kind: 'topk', k }, m: hist.metricsAtK(k), magnitudeRecall: w ? hist.weightedRecallAtK(k) : NaN, recallAtTrueDensity };
  }
  const value = thresholdForRecall(pos, target, weighting === 'magnitude' && w ? posW : undefined);
  const c = new ThresholdCounter(value);
  c.add(scores, y, w ?? undefined);
  return { rule: { kind: 'threshold', value }, m: c.metrics(), magnitudeRecall: w ? c.weightedRecall() : NaN, recallAtTrueDensity };
}

/** The shift a sequential moment accumulator picks: the mean of h over the layer's first batch with training rows. */
function firstShift(dir: string, m: ActivationsManifest, site: MlpSite, valEvery: number): Float32Array {
  for (const b of iterateLayer(dir, m, site.layer, ['x_mlp'])) {
    const { tr } = splitRows(b.seq, b.rows, valEvery);
    if (!tr.length) continue;
    const h = mlpInput(site, b.xMlp, b.rows);
    return MomentAccumulator.shiftOf(tr.length === b.rows ? h : pickRows(h, tr, site.d), tr.length, site.d);
  }
  throw new UserError(`layer ${site.layer}: no training rows (every sequence is in the validation split)`, 'lower validationFraction or collect more tokens');
}

/**
 * Fit and calibrate one layer's MLP candidates. The data-parallel work runs as jobs on `exec` (a worker pool, or
 * in-process): one job per shard (moments of h over the training rows, and the validation rows), then fixed chunks
 * of validation rows (exact scores; each candidate's scores and rank histogram), and the closed-form fits (the
 * decompositions) as one job. Parts are combined in job order, so the result is the same for any worker count. The
 * calibration runs here.
 *
 * `chunkRows`: validation rows per scoring job (tests use small chunks). `fineTune`, when given, continues
 * training the chosen closed form (linear score) from its start; the result is recalibrated under the same rule
 * and kept, as one more candidate, when it costs less.
 */
export async function fitMlpSite(dir: string, m: ActivationsManifest, cfg: TrainConfig, site: MlpSite, label: LabelRule, trained: TrainedCandidate[], onRows: (n: number) => void,
  exec: MlpExec = inlineMlpExec, fineTune?: (start: HostPredictor) => PredictorWeights, chunkRows = CHUNK_ROWS): Promise<MlpChoice> {
  const { d, F, layer } = site;
  const mc = cfg.mlp;
  const modelDir = cfg.model ?? m.model.dir;
  const valEvery = valEveryOf(cfg.validationFraction);
  const swiglu = site.activation === 'swiglu';
  const predictors = new Set(mc.predictors);
  const rawInputs = [...new Set(trained.map((t) => t.input).filter((i) => i !== 'h_mlp'))] as MlpInput[];
  const labelFields = label.kind === 'active' ? ['mlp_active'] : ['mlp_act'];
  const fields = [...new Set(['x_mlp', ...rawInputs, ...labelFields])];
  const what = `the MLP predictor of layer ${layer}`;
  const settle = <T>(ps: Promise<T>[]) => { for (const p of ps) p.catch(() => undefined); return ps; }; // awaited in order; a failure surfaces there

  // one pass over the shards (a job each): moments of h over training rows, validation rows kept (capped, in order)
  const shift = firstShift(dir, m, site, valEvery);
  const shardJobs = settle(Array.from({ length: m.shards }, (_, shard) => exec.run<MomentsPart>(`${what} (moments of shard ${shard})`,
    { kind: 'mlp-moments', dir, modelDir, layer, shard, label, valEvery, shift, fields, rawInputs })));
  const acc = new MomentAccumulator(d, shift);
  const hs: Float32Array[] = [], ys: Uint8Array[] = [], raws = new Map<MlpInput, Float32Array[]>(rawInputs.map((i) => [i, []]));
  let nVal = 0;
  for (const p of shardJobs) {
    const part = await p;
    acc.addPartial(part);
    const room = Math.min(part.valN, mc.maxCalibrationRows - nVal);
    if (room > 0) {
      hs.push(part.h.subarray(0, room * d)); ys.push(part.y.subarray(0, room * F));
      for (const i of rawInputs) raws.get(i)!.push(part.raw[i]!.subarray(0, room * d));
      nVal += room;
    }
    onRows(part.rows);
  }
  const hv = shared(concat(hs, (n) => new Float32Array(n))), yv = shared(concat(ys, (n) => new Uint8Array(n)));
  const chunks: [number, number][] = [];
  for (let s = 0; s < nVal; s += chunkRows) chunks.push([s, Math.min(nVal, s + chunkRows)]);
  // the closed-form fits (the decompositions: the longest piece) as the first job, then the exact pre-activations of
  // the validation rows (the exact candidate, and each active neuron's magnitude weight) beside it
  const ranks = resolveRanks(mc.ranks, d);
  const [fitJob] = predictors.has('closed-form') ? settle([exec.run<FitPart>(`${what} (closed-form fits)`, { kind: 'mlp-fit', dir, modelDir, layer, mom: acc.finish(), ranks, normalize: mc.normalize })]) : [];
  const zUp = sharedF32(nVal * F), weights = sharedF32(nVal * F);
  const exactJobs = settle(chunks.map(([start, end]) => exec.run<ExactPart>(`${what} (exact scores of rows ${start}..${end - 1})`, { kind: 'mlp-exact', dir, modelDir, layer, h: hv, start, end, z: zUp, weights })));

  const denseFlops = mlpDenseFlops(site);
  const rules: ('topk' | 'threshold')[] = mc.rule === 'auto' ? ['threshold', 'topk'] : [mc.rule];
  type Made = Pick<MlpChoice, 'host' | 'hostUp' | 'input' | 'score'>;
  const cands: (MlpCandidate & { make: () => Made; metrics: Metrics })[] = [];
  let trueDensity = 0;
  for (let i = 0; i < yv.length; i++) trueDensity += yv[i]!;
  trueDensity /= Math.max(1, yv.length);

  // every predicted candidate: its host weights, the rows it reads, how to score (then calibrated under each rule)
  interface Scored { predictor: PredictorKind; rank: number; score: 'linear' | 'swiglu'; host: HostPredictor; hostUp?: HostPredictor; x: Float32Array; make: () => Made; only?: ('topk' | 'threshold')[]; fineTuned?: boolean }
  const scored: Scored[] = [];
  if (fitJob) {
    const { ups, gates } = await fitJob;
    ups.forEach((uf, i) => {
      const gf = gates?.[i];
      const hostA = fitHost(gf ?? uf, d, F), hostB = gf ? fitHost(uf, d, F) : undefined;
      scored.push({ predictor: 'closed-form', rank: uf.r, score: swiglu ? 'swiglu' : 'linear', host: hostA, ...(hostB ? { hostUp: hostB } : {}), x: hv,
        make: () => ({ host: hostA, ...(hostB ? { hostUp: hostB } : {}), input: 'h_mlp', score: swiglu ? 'swiglu' : 'linear' }) });
    });
  }
  for (const t of trained) {
    const host = toHost(t.weights);
    scored.push({ predictor: 'dejavu', rank: t.rank, score: 'linear', host, x: t.input === 'h_mlp' ? hv : shared(concat(raws.get(t.input)!, (n) => new Float32Array(n))), make: () => ({ host, input: t.input, score: 'linear' }) });
  }

  for (const p of exactJobs) await p;

  if (predictors.has('dense')) {
    const metrics = { recall: 1, precision: trueDensity, f1: (2 * trueDensity) / (1 + trueDensity), predictedDensity: 1, trueDensity };
    cands.push({ predictor: 'dense', rank: 0, rule: null, recall: 1, magnitudeRecall: 1, predictedDensity: 1, recallAtTrueDensity: NaN, flopShare: 0, costShare: 1, make: () => ({ input: 'none', score: 'linear' }), metrics });
  }
  if (predictors.has('exact') && site.activation === 'relu') {
    // lossless: z > 0 (fatrelu: z > its threshold) is exactly the active set; the first projection is the "predictor" (2 d F FLOPs)
    const c = new ThresholdCounter(site.actThreshold);
    c.add(zUp, yv, weights);
    const met = c.metrics();
    cands.push({ predictor: 'exact', rank: d, rule: { kind: 'threshold', value: site.actThreshold }, recall: met.recall, magnitudeRecall: c.weightedRecall(), predictedDensity: met.predictedDensity, recallAtTrueDensity: NaN,
      flopShare: predictorFlopsOf('exact', d, 'linear', site) / denseFlops, costShare: mlpCostShare('exact', d, 'linear', met.predictedDensity, site),
      make: () => ({ input: 'h_mlp', score: 'linear' }), metrics: met });
  }

  // score the candidates chunk by chunk on `exec` (the next candidate's jobs queued before this one is calibrated)
  const launch = (s: Scored) => {
    const host = sharedHost(s.host), hostUp = s.hostUp ? sharedHost(s.hostUp) : undefined;
    const scores = sharedF32(nVal * F);
    return { scores, jobs: settle(chunks.map(([start, end]) => exec.run<ScorePart>(`${what} (${s.predictor} r ${s.rank} scores of rows ${start}..${end - 1})`,
      { kind: 'mlp-score', x: s.x, y: yv, w: weights, start, end, host, ...(hostUp ? { hostUp, gateAct: { act: site.act, actThreshold: site.actThreshold } } : {}), scores }))) };
  };
  const calibrateScored = async (s: Scored, { scores, jobs }: ReturnType<typeof launch>) => {
    const hist = new RankHistogram(F, true);
    const parts: ScorePart[] = [];
    for (const p of jobs) { const r = await p; hist.merge(r); parts.push(r); }
    const pos = concat(parts.map((r) => r.pos), (n) => new Float32Array(n)), posW = concat(parts.map((r) => r.posW), (n) => new Float32Array(n));
    const n0 = cands.length;
    for (const rule of s.only ?? rules) {
      const c = calibrate(scores, hist, pos, posW, yv, weights, F, rule, mc.targetRecall, mc.recallWeighting);
      cands.push({ predictor: s.predictor, rank: s.rank, rule: c.rule, recall: c.m.recall, magnitudeRecall: c.magnitudeRecall, predictedDensity: c.m.predictedDensity,
          recallAtTrueDensity: c.recallAtTrueDensity,
        flopShare: predictorFlopsOf(s.predictor, s.rank, s.score, site) / denseFlops, costShare: mlpCostShare(s.predictor, s.rank, s.score, c.m.predictedDensity, site), make: s.make, metrics: c.m });
    }
    if (s.fineTuned) for (const c of cands.slice(n0)) c.fineTuned = true;
  };
  let next = scored.length ? launch(scored[0]!) : null;
  for (let i = 0; i < scored.length; i++) {
    const cur = next!;
    if (i + 1 < scored.length) next = launch(scored[i + 1]!);
    await calibrateScored(scored[i]!, cur);
  }
  if (!cands.length) throw new Error(`layer ${layer}: no MLP candidate (predictors ${[...predictors].join(', ')})`);
  const cheapest = () => cands.reduce((b, c) => (c.costShare < b.costShare - 1e-12 ? c : b), cands[0]!);
  let best = cheapest();
  if (fineTune && best.predictor === 'closed-form' && !swiglu) {
    // start from the normalized scores times 1.7 (a z-score as a logistic logit), a monotone change the rule absorbs
    const h0 = best.make().host!;
    const tuned = fineTune({ ...h0, fc2Weight: h0.fc2Weight.map((v) => v * 1.7), fc2Bias: h0.fc2Bias.map((v) => v * 1.7) });
    let host: HostPredictor;
    try { host = toHost(tuned); } finally { disposePredictor(tuned); }
    const s: Scored = { predictor: 'closed-form', rank: best.rank, score: 'linear', host, x: hv, make: () => ({ host, input: 'h_mlp', score: 'linear' }), only: [best.rule!.kind as 'topk' | 'threshold'], fineTuned: true };
    await calibrateScored(s, launch(s));
    best = cheapest();
  }
  return {
    predictor: best.predictor, rank: best.rank, rule: best.rule, ...best.make(), ...(best.fineTuned ? { fineTuned: true } : {}),
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
export function candidateTable(layer: number, cs: Candidate[]): string[] {
  const lines = [`layer ${layer}: MLP candidates (validation rows; cost = predictor + predicted density x dense MLP, as a share of the dense MLP)`, '',
    '| mode | rank | rule | recall | predicted density | recall at true density | cost | chosen |', '|---|---:|---|---:|---:|---:|---:|---|'];
  for (const c of cs) lines.push(`| ${c.predictor}${c.fineTuned ? ' + fine-tune' : ''} | ${c.rank} | ${ruleText(c.rule)} | ${c.recall.toFixed(4)} | ${pct(c.predictedDensity)} | ${c.recallAtTrueDensity !== null && Number.isFinite(c.recallAtTrueDensity) ? c.recallAtTrueDensity.toFixed(3) : '-'} | ${pct(c.costShare)} | ${c.chosen ? '**yes**' : ''} |`);
  return lines;
}
