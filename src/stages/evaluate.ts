/**
 * evaluate-recall: on a held-out activations dataset, per layer, recall/precision/F1/density at the calibrated rule
 * the runtime uses (and a sweep over k); end to end, perplexity of the dense model vs oracle sparsity (each
 * token's truly largest activations / head norms at the predictors' density) vs predicted sparsity, through the
 * one forward pass.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { readSync } from '../util/tfx.js';
import type { StageResult } from './types.js';
import { VERSION } from '../version.js';
import type { EvaluateConfig } from '../config/schemas.js';
import { iterateLayer, readManifest, verifyDataset } from '../activations/dataset.js';
import { beginOutput, writeOutput } from '../util/outdir.js';
import { isPretokenized, packSequences, readDocuments } from '../activations/data.js';
import { fingerprintCheckpoint, sameFingerprint } from '../checkpoint/checkpoint.js';
import { loadModel } from '../model/model.js';
import type { SparsityHooks } from '../model/forward.js';
import { loadTokenizer } from '../tokenizer.js';
import { RankHistogram, ThresholdCounter, thresholdForRecall, type Metrics, type SelectionRule } from '../predictors/metrics.js';
import { labelsFor } from '../predictors/train-layer.js';
import { loadPredictors, predictorHooks, siteScores, type LoadedSite } from '../predictors/hooks.js';
import { exactPreActivations, mlpInput, readMlpSite, type MlpSite } from '../predictors/mlp-site.js';
import { candidateTable, mlpDenseFlops, ruleText, type MlpCandidate } from '../predictors/fit-mlp.js';
import { predictorsContentHash } from '../predictors/content-hash.js';
import { assertFiniteLogits, checkMetrics } from '../predictors/finite.js';
import { batchNll, ppl, type NllTotals } from '../eval/perplexity.js';
import { renderReportPlots } from '../eval/plots.js';
import { UserError } from '../util/errors.js';
import { writeFileAtomic, writeJsonAtomic } from '../util/fsx.js';
import type { StageDeps } from '../util/progress.js';

export interface SiteReport {
  rule: unknown; metrics: Metrics; sweep: { fraction: number; k: number; recall: number; precision: number; predictedDensity: number }[];
  /** MLP: recall weighted by |activation| x ||down column|| */
  magnitudeRecall?: number;
  /** MLP: the density the exact predictor (the first projection itself) needs for the same recall under the same kind of rule */
  exactBound?: { rule: string; predictedDensity: number };
  /** MLP: the exact predictor's top-k sweep (recall vs density) */
  exactSweep?: { fraction: number; k: number; recall: number }[];
  /** MLP: estimated MLP cost / dense MLP cost at the held-out density */
  costShare?: number;
  /** MLP: the mode evaluated (dense / exact / closed-form / dejavu) and its rank */
  family?: string;
  rank?: number;
}

export interface LayerReport {
  layer: number; mlp?: SiteReport; heads?: SiteReport;
  /** the MLP candidates train-predictors weighed for this layer (validation rows), copied from predictors.json */
  mlpCandidates?: (MlpCandidate & { chosen: boolean })[];
}
export interface EvalReport {
  kind: 'dejavu-evaluation'; toolVersion: string; config: EvaluateConfig;
  /** content hash of the predictors folder evaluated (predictors.json + safetensors); export-bundle compares it */
  predictorsSha256: string;
  heldoutTokens: number;
  layers: LayerReport[];
  averages: { mlpRecall: number; mlpPredictedDensity: number; mlpTrueDensity: number; mlpSparsity: number; headRecall: number; headDensity: number };
  perplexity?: { tokens: number; runs: Record<string, number>; deltas: Record<string, number>; density: Record<string, { mlp: number[]; heads: number[] }>;
    /** predicted-MLP perplexity at scaled per-layer k (top-k rules), and the same density for the oracle */
    densityCurve: { targetDensity: number; meanDensity: number; predicted: number; oracle: number; k: number[] }[] };
}

interface SiteCtx { mlpSite?: MlpSite | undefined; targetRecall: number }

/**
 * Held-out metrics of one site at its rule, a top-k sweep, and for MLP sites the exact predictor's bound under the
 * same rule (the density the first projection itself needs for the same recall) and the estimated MLP cost.
 */
function siteEval(dir: string, m: ReturnType<typeof readManifest>, layer: number, site: LoadedSite, kind: 'mlp' | 'heads', sweep: number[], ctx: SiteCtx): SiteReport {
  const e = site.entry;
  const W = kind === 'mlp' ? m.dims.ffn : m.dims.heads;
  const srcLayer = layer + site.sourceLayerOffset;
  const labelFields = kind === 'heads' ? ['head_norm'] : e.label.kind === 'active' ? ['mlp_active'] : ['mlp_act'];
  const inField = e.input === 'x_attn' || e.input.startsWith('x_attn[') ? 'x_attn' : 'x_mlp';
  const lab = iterateLayer(dir, m, layer, srcLayer === layer ? [inField, ...labelFields] : labelFields);
  const inp = srcLayer === layer ? null : iterateLayer(dir, m, srcLayer, ['x_attn']);
  const ms = ctx.mlpSite;
  const hist = new RankHistogram(W, Boolean(ms)), exactHist = ms ? new RankHistogram(W) : null;
  const rule = e.rule;
  const thr = rule?.kind === 'threshold' ? new ThresholdCounter(rule.value) : null;
  const exactPos: number[] = [], exactSample: number[] = [];
  const d = m.dims.hidden;
  for (const lb of lab) {
    const xb = inp ? inp.next().value! : lb;
    const raw = inField === 'x_mlp' ? xb.xMlp : xb.xAttn;
    const y = labelsFor(kind, e.label, W, lb);
    let scores: Float32Array, exact: Float32Array | null = null, weights: Float32Array | undefined;
    if (ms) {
      const h = mlpInput(ms, xb.xMlp, lb.rows);
      const z = exactPreActivations(ms, h, lb.rows, 'up');
      if (ms.activation === 'swiglu') {
        const g = exactPreActivations(ms, h, lb.rows, 'gate');
        exact = Float32Array.from(z, (u, i) => Math.abs((g[i]! / (1 + Math.exp(-g[i]!))) * u));
      } else exact = z;
      weights = Float32Array.from(exact, (v, i) => Math.max(v, 0) * ms.downColNorm[i % W]!); // |a_i| x ||W_down[:, i]||
      const x = e.input === 'h_mlp' ? h : raw;
      scores = e.family === 'exact' ? z : e.family === 'dense' ? new Float32Array(lb.rows * W).fill(1) : readSync(() => siteScores(site, tf.tensor2d(x, [lb.rows, d])));
      assertFiniteLogits(scores, `layer ${layer} MLP predictor`);
      exactHist!.add(exact, y, lb.rows);
      for (let i = 0; i < exact.length; i++) if (y[i]) exactPos.push(exact[i]!);
      for (let i = 0; i < exact.length; i += 8) exactSample.push(exact[i]!);
    } else {
      scores = readSync(() => siteScores(site, tf.tensor2d(raw, [lb.rows, d])));
      assertFiniteLogits(scores, `layer ${layer} ${kind === 'mlp' ? 'MLP' : 'head'} predictor`);
    }
    hist.add(scores, y, lb.rows, weights);
    thr?.add(scores, y, weights);
  }
  const metrics = rule === null ? { ...hist.metricsAtK(W), precision: hist.trueDensity() } : rule.kind === 'topk' ? hist.metricsAtK(rule.k) : thr!.metrics();
  const magnitudeRecall = rule === null ? 1 : rule.kind === 'topk' ? hist.weightedRecallAtK(rule.k) : thr!.weightedRecall();
  const ks = [...new Set(sweep.map((f) => Math.max(1, Math.min(W, Math.round(f * W)))))].sort((a, b) => a - b);
  const out: SiteReport = { ...(kind === 'mlp' ? { family: e.family, rank: e.rank } : {}), rule, metrics, sweep: ks.map((k) => { const mm = hist.metricsAtK(k); return { fraction: k / W, k, recall: mm.recall, precision: mm.precision, predictedDensity: mm.predictedDensity }; }) };
  if (ms && exactHist) {
    out.magnitudeRecall = magnitudeRecall;
    // the bound: the exact scores under the same kind of rule, calibrated to the same recall on these rows
    // (threshold: its density is counted on every 8th score)
    let boundDensity: number;
    if (rule?.kind === 'topk') boundDensity = exactHist.metricsAtK(Math.max(1, exactHist.kForRecall(ctx.targetRecall))).predictedDensity;
    else {
      const t = thresholdForRecall(Float32Array.from(exactPos), ctx.targetRecall);
      let above = 0;
      for (const v of exactSample) if (v >= t) above++;
      boundDensity = above / Math.max(1, exactSample.length);
    }
    out.exactBound = { rule: rule?.kind ?? 'threshold', predictedDensity: boundDensity };
    out.exactSweep = ks.map((k) => ({ fraction: k / W, k, recall: exactHist.metricsAtK(k).recall }));
    const denseFlops = mlpDenseFlops({ d, F: W, activation: ms.activation });
    out.costShare = e.family === 'dense' ? 1 : e.family === 'exact' ? (2 * d * W * (1 + metrics.predictedDensity)) / denseFlops
      : (2 * e.rank * (d + W) * (e.score === 'swiglu' ? 2 : 1) + metrics.predictedDensity * denseFlops) / denseFlops;
  }
  return out;
}

const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);

export async function runEvaluate(cfg: EvaluateConfig, deps: StageDeps): Promise<StageResult> {
  const w = beginOutput(cfg.out, 'report'); // a report folder of ours is replaced; anything else is refused
  let report: EvalReport;
  let text: string;
  // reportTable checks every metric first: nothing is written when one is impossible
  try { report = await evaluate(cfg, deps); text = reportTable(report, cfg.out); } catch (e) { w.abort(); throw e; }
  await writeOutput(w, cfg.out, (tmp) => writeReport(tmp, report, cfg.out));
  return { text, json: report };
}

async function evaluate(cfg: EvaluateConfig, deps: StageDeps): Promise<EvalReport> {
  const m = readManifest(cfg.activations);
  verifyDataset(cfg.activations, m, m.layers);
  const predictorsSha256 = predictorsContentHash(cfg.predictors); // before loading: the weights evaluated are these
  const preds = loadPredictors(cfg.predictors);
  try {
    if (!sameFingerprint(preds.manifest.model.fingerprint, m.model.fingerprint))
      throw new UserError(`predictors in ${cfg.predictors} were trained for another model than the held-out activations in ${cfg.activations}`, 'collect the held-out activations with the same checkpoint the predictors were trained on');
    if (m.data.sha256 && preds.manifest.activations.dir && fs.existsSync(path.join(preds.manifest.activations.dir, 'manifest.json'))) {
      const trainM = readManifest(preds.manifest.activations.dir, false);
      if (trainM.data.sha256 === m.data.sha256) deps.log(`warning: the held-out activations come from the same data file as the training activations (${m.data.file}); recall is not held-out`);
    }
    const layers: LayerReport[] = [];
    // the MLP's own input and the exact bound need the checkpoint: --model, else the one the activations came from
    const modelDir = cfg.model ?? m.model.dir;
    if (!sameFingerprint(fingerprintCheckpoint(modelDir), m.model.fingerprint))
      throw cfg.model ? new UserError(`--model ${cfg.model} is not the checkpoint the predictors were trained for`, 'pass the same checkpoint used for collect-activations')
        : new UserError(`checkpoint ${modelDir} is not the one the held-out activations were collected from`, 'pass --model with that checkpoint');
    const targetRecall = (preds.manifest.config as { mlp?: { targetRecall?: number } }).mlp?.targetRecall ?? 0.99;
    const bar = deps.progress('recall', preds.manifest.layers.length, 'layers');
    for (const l of preds.manifest.layers) {
      if (!m.layers.includes(l.layer)) throw new UserError(`layer ${l.layer} has predictors but is not in the held-out dataset`, 'collect all layers');
      const r: LayerReport = { layer: l.layer, ...(l.mlp?.candidates ? { mlpCandidates: l.mlp.candidates } : {}) };
      const ms = preds.mlp.get(l.layer), hs = preds.heads.get(l.layer);
      if (ms) r.mlp = siteEval(cfg.activations, m, l.layer, ms, 'mlp', cfg.sweep, { mlpSite: readMlpSite(modelDir, m.model.config, l.layer), targetRecall });
      if (hs) r.heads = siteEval(cfg.activations, m, l.layer, hs, 'heads', cfg.sweep, { targetRecall });
      layers.push(r);
      bar.update(layers.length);
    }
    bar.stop();
    const mlpL = layers.filter((l) => l.mlp), hL = layers.filter((l) => l.heads);
    const report: EvalReport = {
      kind: 'dejavu-evaluation', toolVersion: VERSION, config: cfg, predictorsSha256, heldoutTokens: m.tokens, layers,
      averages: {
        mlpRecall: mean(mlpL.map((l) => l.mlp!.metrics.recall)), mlpPredictedDensity: mean(mlpL.map((l) => l.mlp!.metrics.predictedDensity)),
        mlpTrueDensity: mean(mlpL.map((l) => l.mlp!.metrics.trueDensity)), mlpSparsity: 1 - mean(mlpL.map((l) => l.mlp!.metrics.predictedDensity)),
        headRecall: mean(hL.map((l) => l.heads!.metrics.recall)), headDensity: mean(hL.map((l) => l.heads!.metrics.predictedDensity)),
      },
    };

    if (cfg.model) {
      const fp = fingerprintCheckpoint(cfg.model);
      if (!sameFingerprint(fp, preds.manifest.model.fingerprint)) throw new UserError(`--model ${cfg.model} is not the checkpoint the predictors were trained for`, 'pass the same checkpoint used for collect-activations');
      const dataFile = cfg.data ?? m.data.file;
      const model = loadModel(cfg.model);
      try {
        const c = model.config;
        const tokenizer = (await isPretokenized(dataFile)) ? null : loadTokenizer(cfg.model);
        const seqs: number[][] = [];
        for await (const s of packSequences(readDocuments(dataFile), { seqLen: cfg.seqLen, cfg: c, tokenizer, maxTokens: cfg.maxTokens, source: dataFile })) seqs.push(s);
        // oracle at the predictors' density: per layer k = the predicted density x width
        const kOf = (site: LoadedSite | undefined, rep: SiteReport | undefined, W: number) => site ? Math.max(1, Math.round((rep?.metrics.predictedDensity ?? 1) * W)) : W;
        const oracle = (mlp: boolean, heads: boolean): SparsityHooks => ({
          ...(mlp ? { mlp: (i: number) => ({ oracleTopK: kOf(preds.mlp.get(i), layers.find((l) => l.layer === i)?.mlp, c.ffn) }) } : {}),
          ...(heads ? { heads: (i: number) => ({ oracleTopK: kOf(preds.heads.get(i), layers.find((l) => l.layer === i)?.heads, c.heads) }) } : {}),
        });
        const density: Record<string, { mlp: number[]; heads: number[] }> = {};
        const tracked = (name: string, mlp: boolean, heads: boolean) => {
          const sel = { mlp: new Array(c.layers).fill(0), heads: new Array(c.layers).fill(0), mlpT: new Array(c.layers).fill(0), headsT: new Array(c.layers).fill(0) };
          const h = predictorHooks(preds, { mode: 'mask', mlp, heads, onSelect: (site, layer, s, t) => { sel[site][layer] += s; sel[site === 'mlp' ? 'mlpT' : 'headsT'][layer] += t; } });
          return { h, done: () => { density[name] = { mlp: sel.mlp.map((s, i) => (sel.mlpT[i] ? s / sel.mlpT[i] : 1)), heads: sel.heads.map((s, i) => (sel.headsT[i] ? s / sel.headsT[i] : 1)) }; } };
        };
        const runs: [string, () => { h?: SparsityHooks; done?: () => void }][] = [
          ['dense', () => ({})],
          ['oracle (MLP)', () => ({ h: oracle(true, false) })],
          ['oracle (heads)', () => ({ h: oracle(false, true) })],
          ['oracle (MLP + heads)', () => ({ h: oracle(true, true) })],
          ['predicted (MLP)', () => tracked('predicted (MLP)', true, false)],
          ['predicted (heads)', () => tracked('predicted (heads)', false, true)],
          ['predicted (MLP + heads)', () => tracked('predicted (MLP + heads)', true, true)],
        ];
        const res: Record<string, number> = {};
        const pbar = deps.progress('perplexity', runs.length * seqs.length, 'seqs');
        let n = 0;
        for (const [name, make] of runs) {
          const { h, done } = make();
          const tot: NllTotals = { nll: 0, count: 0 };
          for (let i = 0; i < seqs.length; i += cfg.batchSize) {
            const r = batchNll(model, seqs.slice(i, i + cfg.batchSize), h);
            tot.nll += r.nll; tot.count += r.count;
            n += Math.min(cfg.batchSize, seqs.length - i); pbar.update(n);
          }
          done?.();
          res[name] = ppl(tot);
        }
        pbar.stop();
        // perplexity vs average MLP density: scale each layer's calibrated density proportionally
        const calib = c.layers ? Array.from({ length: c.layers }, (_, i) => layers.find((l) => l.layer === i)?.mlp?.metrics.predictedDensity ?? 1) : [];
        const meanCal = calib.reduce((a, b) => a + b, 0) / Math.max(1, calib.length);
        const densityCurve: NonNullable<EvalReport['perplexity']>['densityCurve'] = [];
        // every layer with a selection (not dense) gets a per-token top-k on its own scores at the scaled k
        for (const D of cfg.densitySweep) {
          const ks = calib.map((d) => Math.max(1, Math.min(c.ffn, Math.round(c.ffn * Math.min(1, (D * d) / meanCal)))));
          const scaled = { ...preds, mlp: new Map([...preds.mlp].map(([i, s]) => [i, s.entry.family === 'dense' ? s : { ...s, entry: { ...s.entry, rule: { kind: 'topk' as const, k: ks[i]! } } }])) };
          const ph = predictorHooks(scaled, { mode: 'mask', mlp: true, heads: false });
          const oh: SparsityHooks = { mlp: (i: number) => ({ oracleTopK: ks[i]! }) };
          const tp: NllTotals = { nll: 0, count: 0 }, to: NllTotals = { nll: 0, count: 0 };
          for (let i = 0; i < seqs.length; i += cfg.batchSize) {
            const b = seqs.slice(i, i + cfg.batchSize);
            const r1 = batchNll(model, b, ph), r2 = batchNll(model, b, oh);
            tp.nll += r1.nll; tp.count += r1.count; to.nll += r2.nll; to.count += r2.count;
          }
          densityCurve.push({ targetDensity: D, meanDensity: ks.reduce((a, k) => a + k / c.ffn, 0) / ks.length, predicted: ppl(tp), oracle: ppl(to), k: ks });
          deps.log(`density ${D}: predicted ${ppl(tp).toFixed(3)}, oracle ${ppl(to).toFixed(3)}`);
        }
        const deltas = Object.fromEntries(Object.entries(res).filter(([k]) => k !== 'dense').map(([k, v]) => [k, v / res.dense! - 1]));
        report.perplexity = { tokens: seqs.length * cfg.seqLen, runs: res, deltas, density, densityCurve };
      } finally {
        model.dispose();
      }
    }
    return report;
  } finally {
    preds.dispose();
  }
}

const pct = (x: number) => (100 * x).toFixed(1) + '%';

const num = (x: number | null | undefined, f: (v: number) => string) => (x !== null && x !== undefined && Number.isFinite(x) ? f(x) : '-');

export function reportTable(r: EvalReport, out: string): string {
  const lines = [`evaluation: ${out} (held-out tokens: ${r.heldoutTokens})`, '',
    '| layer | MLP mode | MLP recall | magnitude recall | precision | predicted density | exact bound | true density | est. MLP cost | head recall | head density |',
    '|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|'];
  for (const l of r.layers) {
    const m = l.mlp?.metrics, h = l.heads?.metrics;
    if (m) checkMetrics(m, `layer ${l.layer} MLP predictor (held-out)`);
    if (h) checkMetrics(h, `layer ${l.layer} head predictor (held-out)`);
    const fam = l.mlp ? `${l.mlp.family ?? ''}${l.mlp.rank ? ` r${l.mlp.rank}` : ''}${l.mlp.rule ? `, ${ruleText(l.mlp.rule as SelectionRule)}` : ''}` : '-';
    lines.push(`| ${l.layer} | ${fam} | ${num(m?.recall, (v) => v.toFixed(4))} | ${num(l.mlp?.magnitudeRecall, (v) => v.toFixed(4))} | ${num(m?.precision, (v) => v.toFixed(3))} | ${num(m?.predictedDensity, pct)} | ${num(l.mlp?.exactBound?.predictedDensity, pct)} | ${num(m?.trueDensity, pct)} | ${num(l.mlp?.costShare, pct)} | ${num(h?.recall, (v) => v.toFixed(3))} | ${num(h?.predictedDensity, pct)} |`);
  }
  const a = r.averages;
  const mean = (f: (l: LayerReport) => number | undefined) => { const v = r.layers.map(f).filter((x): x is number => x !== undefined && Number.isFinite(x)); return v.length ? v.reduce((s, x) => s + x, 0) / v.length : NaN; };
  lines.push(`| mean | | ${num(a.mlpRecall, (v) => v.toFixed(4))} | ${num(mean((l) => l.mlp?.magnitudeRecall), (v) => v.toFixed(4))} | | ${num(a.mlpPredictedDensity, pct)} | ${num(mean((l) => l.mlp?.exactBound?.predictedDensity), pct)} | ${num(a.mlpTrueDensity, pct)} | ${num(mean((l) => l.mlp?.costShare), pct)} | ${num(a.headRecall, (v) => v.toFixed(3))} | ${num(a.headDensity, pct)} |`);
  for (const l of r.layers) if (l.mlpCandidates?.length) lines.push('', ...candidateTable(l.layer, l.mlpCandidates));
  lines.push('', 'exact bound: the density the first projection itself needs for the same recall under the same kind of rule; est. MLP cost: predictor + predicted density x dense MLP FLOPs (exact: first projection + density x second), as a share of the dense MLP');
  if (r.perplexity) {
    lines.push('', `perplexity on ${r.perplexity.tokens} held-out tokens:`, '', '| run | perplexity | vs dense |', '|---|---:|---:|');
    for (const [k, v] of Object.entries(r.perplexity.runs)) lines.push(`| ${k} | ${v.toFixed(3)} | ${k === 'dense' ? '' : (r.perplexity.deltas[k]! >= 0 ? '+' : '') + (100 * r.perplexity.deltas[k]!).toFixed(2) + '%'} |`);
    const dc = r.perplexity.densityCurve ?? [];
    if (dc.length) {
      const dense = r.perplexity.runs.dense!;
      lines.push('', 'perplexity vs mean MLP density (per-layer k scaled from the calibrated ones; heads dense):', '', '| mean MLP density | MLP sparsity | predicted ppl | vs dense | oracle ppl | vs dense |', '|---:|---:|---:|---:|---:|---:|');
      for (const p of dc) lines.push(`| ${pct(p.meanDensity)} | ${pct(1 - p.meanDensity)} | ${p.predicted.toFixed(3)} | ${(100 * (p.predicted / dense - 1)).toFixed(2)}% | ${p.oracle.toFixed(3)} | ${(100 * (p.oracle / dense - 1)).toFixed(2)}% |`);
    }
  }
  return lines.join('\n');
}

async function writeReport(out: string, r: EvalReport, shownOut: string): Promise<void> {
  writeJsonAtomic(path.join(out, 'report.json'), r);
  writeFileAtomic(path.join(out, 'report.md'), `# dejavu evaluate-recall\n\n${reportTable(r, shownOut)}\n\n![recall vs density](recall-vs-density.svg)\n\n![densities](densities.svg)\n${r.perplexity?.densityCurve?.length ? '\n![perplexity vs density](perplexity-vs-density.svg)\n' : ''}`);
  for (const [file, svg] of Object.entries(await renderReportPlots(r))) writeFileAtomic(path.join(out, file), svg);
}
