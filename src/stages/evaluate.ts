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
import { fingerprintCheckpoint, sameFingerprint } from '../checkpoint/checkpoint.js';
import { loadModel, type Model } from '../model/model.js';
import { normalizeConfig, type ModelConfig } from '../model/config.js';
import { openCheckpoint } from '../checkpoint/checkpoint.js';
import { nllJob, type HookSpec, type NllResult } from '../eval/jobs.js';
import { defaultWorkers, WorkerPool } from '../util/pool.js';
import { defaultModelWorkers, getBackend, hostBackend, hostWorkersBeside } from '../backend.js';
import { stageWorkerScript } from './worker-script.js';
import { RankHistogram, ThresholdCounter, thresholdForRecall, type SelectionRule } from '../predictors/metrics.js';
import { labelsFor } from '../predictors/train-layer.js';
import { loadPredictors, siteScores, type LoadedPredictors, type LoadedSite } from '../predictors/hooks.js';
import { exactScores, mlpInput, readMlpSite, type MlpSite } from '../predictors/mlp-site.js';
import { candidateTable, mlpCostShare, ruleText } from '../predictors/fit-mlp.js';
import { checkPredictorsUnchanged, predictorsContentHash } from '../predictors/content-hash.js';
import { checkHeldoutText, heldoutSequences } from '../eval/heldout.js';
import { evalReportSchema, readEvalReport, type EvalReport, type LayerReport, type SiteReport } from '../eval/report.js';
import { recordedCurrent, writeRecord, type Currency, type StageRecord } from './current.js';
import { assertFiniteLogits, checkMetrics } from '../predictors/finite.js';
import { ppl, type NllTotals } from '../eval/perplexity.js';
import { renderReportPlots } from '../eval/plots.js';
import { UserError } from '../util/errors.js';
import { sha256File, writeFileAtomic } from '../util/fsx.js';
import { writeArtifact } from '../util/json-artifact.js';
import { sealed } from '../util/seal.js';
import { sha256 } from '../util/fsx.js';
import { z } from 'zod';
import type { StageDeps } from '../util/progress.js';

export type { EvalReport, LayerReport, SiteReport };

/** the report as evaluated, before runEvaluate seals it */
type Unsealed = Omit<EvalReport, 'sealSha256'>;

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
    let scores: Float32Array, weights: Float32Array | undefined;
    if (ms) {
      const h = mlpInput(ms, xb.xMlp, lb.rows);
      const { z, exact, weights: w } = exactScores(ms, h, lb.rows);
      weights = w;
      const x = e.input === 'h_mlp' ? h : raw;
      scores = e.predictor === 'exact' ? z : e.predictor === 'dense' ? new Float32Array(lb.rows * W).fill(1) : readSync(() => siteScores(site, tf.tensor2d(x, [lb.rows, d])));
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
  const out: SiteReport = { ...(kind === 'mlp' ? { predictor: e.predictor, rank: e.rank } : {}), rule, metrics, sweep: ks.map((k) => { const mm = hist.metricsAtK(k); return { fraction: k / W, k, recall: mm.recall, precision: mm.precision, predictedDensity: mm.predictedDensity }; }) };
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
    out.costShare = mlpCostShare(e.predictor, e.rank, e.score, metrics.predictedDensity, ms);
  }
  return out;
}

const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);

/** One site's held-out pass (a unit of work for the pool: the same in-process or in a worker thread). */
export interface RecallJob { activations: string; predictors: string; modelDir: string; sweep: number[]; targetRecall: number; layer: number; site: 'mlp' | 'heads' }
export function recallJob(j: RecallJob, m: ReturnType<typeof readManifest>, preds: LoadedPredictors): SiteReport {
  if (j.site === 'mlp') return siteEval(j.activations, m, j.layer, preds.mlp.get(j.layer)!, 'mlp', j.sweep, { mlpSite: readMlpSite(j.modelDir, m.model.config, j.layer), targetRecall: j.targetRecall });
  return siteEval(j.activations, m, j.layer, preds.heads.get(j.layer)!, 'heads', j.sweep, { targetRecall: j.targetRecall });
}

/** Evaluation work: a site's recall pass or a perplexity batch; dealt to worker threads, results kept by index. */
export type EvalJob = ({ kind: 'recall' } & RecallJob) | { kind: 'nll'; predictors: string; seqs: number[][]; hooks: HookSpec };

/**
 * Issue 26: a shard (--shard i/n) runs every recall pass (the late perplexity runs need them all) and the perplexity
 * batches j with j mod n = i (in the fixed order the jobs are made), and records each job's result by its label; the
 * merge replays every job from those results, so it writes the report the unsharded run writes.
 */
export type EvalMode = { shard: { index: number; count: number }; results: Map<string, unknown> } | { replay: Map<string, unknown> };
/** report.json of an evaluate-recall shard: its jobs' results (sealed) */
export const evalShardSchema = z.looseObject({
  kind: z.literal('dejavu-evaluation-shard'), toolVersion: z.string(), run: z.string(), config: z.record(z.string(), z.unknown()),
  shard: z.looseObject({ index: z.number().int().min(0), count: z.number().int().positive() }), results: z.record(z.string(), z.unknown()), sealSha256: z.string(),
});

/** what a report is made from: the predictors' content, the held-out activations' manifest, the config (less the worker count) */
function evaluateRecord(cfg: EvaluateConfig): StageRecord {
  return { name: 'evaluate-recall', dir: cfg.out, file: 'report.json', inputs: () => ({ p: predictorsContentHash(cfg.predictors), a: sha256File(path.join(cfg.activations, 'manifest.json')), c: reportConfig(cfg) }) };
}
const readReport = (out: string) => () => { const r = readEvalReport(out); return { value: r, seal: r.sealSha256 }; };

/** evaluate-recall's rule: its report is current when made from the same inputs (evaluateRecord) and it is the report.json it wrote */
export function evaluateCurrent(cfg: EvaluateConfig): Currency<EvalReport> {
  return recordedCurrent(evaluateRecord(cfg), readReport(cfg.out));
}

export async function runEvaluate(cfg: EvaluateConfig, deps: StageDeps, replay?: Map<string, unknown>): Promise<StageResult> {
  const rec = cfg.shard ? null : evaluateRecord(cfg);
  if (rec) {
    const cur = recordedCurrent(rec, readReport(cfg.out));
    if (cur.current) { deps.log(`evaluate-recall: ${cfg.out} is complete and current; nothing to do`); return { text: reportTable(cur.value, cfg.out), json: cur.value }; }
  }
  const w = beginOutput(cfg.out, 'report'); // a report folder of ours is replaced; anything else is refused
  if (cfg.shard) {
    const results = new Map<string, unknown>();
    let shard: object;
    try {
      const r = await evaluate(cfg, deps, { shard: cfg.shard, results });
      const { out: _o, shard: _s, ...run } = reportConfig(cfg);
      shard = sealed({ kind: 'dejavu-evaluation-shard', toolVersion: VERSION, run: sha256(JSON.stringify({ run, p: r.predictorsSha256, t: r.heldoutTokens })),
        config: reportConfig(cfg), shard: cfg.shard, results: Object.fromEntries(results) });
    } catch (e) { w.abort(); throw e; }
    await writeOutput(w, cfg.out, (tmp) => writeArtifact(evalShardSchema, shard, path.join(tmp, 'report.json'), 'evaluate-recall shard'));
    return { text: `evaluate-recall shard ${cfg.shard.index}/${cfg.shard.count}: ${results.size} job result(s) in ${cfg.out}`, json: { out: cfg.out, shard: cfg.shard, jobs: results.size } };
  }
  let report: EvalReport;
  let text: string;
  // reportTable checks every metric first: nothing is written when one is impossible
  try {
    report = sealed(await evaluate(cfg, deps, replay ? { replay } : undefined));
    text = reportTable(report, cfg.out);
    checkPredictorsUnchanged(cfg.predictors, report.predictorsSha256, 'evaluate-recall');
  } catch (e) { w.abort(); throw e; }
  await writeOutput(w, cfg.out, (tmp) => writeReport(tmp, report, cfg.out));
  writeRecord(rec!, report.sealSha256);
  return { text, json: report };
}

/** the config as recorded in the report: the worker count changes nothing in it */
function reportConfig(cfg: EvaluateConfig): EvaluateConfig {
  const { workers: _w, ...rest } = cfg;
  return rest as EvaluateConfig;
}

async function evaluate(cfg: EvaluateConfig, deps: StageDeps, mode?: EvalMode): Promise<Unsealed> {
  const m = readManifest(cfg.activations);
  verifyDataset(cfg.activations, m, m.layers);
  if (cfg.model) checkHeldoutText(cfg.activations, m, cfg.data, 'evaluate-recall'); // before any work (checked again as it is read)
  const predictorsSha256 = predictorsContentHash(cfg.predictors); // before loading: the weights evaluated are these (checked again before writing)
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
    if (cfg.model && !sameFingerprint(fingerprintCheckpoint(cfg.model), preds.manifest.model.fingerprint))
      throw new UserError(`--model ${cfg.model} is not the checkpoint the predictors were trained for`, 'pass the same checkpoint used for collect-activations');
    for (const l of preds.manifest.layers)
      if (!m.layers.includes(l.layer)) throw new UserError(`layer ${l.layer} has predictors but is not in the held-out dataset`, 'collect all layers');
    // the work (each site's recall pass, each perplexity batch of each run) is dealt to worker threads, one tfjs
    // each; results are combined here in a fixed order, so the report does not depend on the worker count
    const siteJobs = preds.manifest.layers.flatMap((l) => [...(preds.mlp.has(l.layer) ? ['mlp' as const] : []), ...(preds.heads.has(l.layer) ? ['heads' as const] : [])].map((site) => ({ layer: l.layer, site })));
    const nBatches = cfg.model ? Math.ceil(Math.ceil(cfg.maxTokens / cfg.seqLen) / cfg.batchSize) : 0;
    const nWorkers = Math.max(1, Math.min(cfg.workers || defaultModelWorkers(defaultWorkers()), siteJobs.length + 11 * nBatches));
    const pool = nWorkers > 1 && !(mode && 'replay' in mode) ? new WorkerPool(stageWorkerScript(), nWorkers, { backend: getBackend() ?? 'wasm', model: cfg.model ? { dir: cfg.model } : null }, 'evaluate worker') : null;
    // beside a GPU (perplexity in this process, on its queue) the recall passes run on host workers (hostBackend)
    const nHost = pool || (mode && 'replay' in mode) ? 0 : Math.min(hostWorkersBeside(defaultWorkers()), siteJobs.length);
    const hostPool = nHost > 0 ? new WorkerPool(stageWorkerScript(), nHost, { backend: hostBackend(), model: null }, 'evaluate host worker') : null;
    let localModel: Model | null = null;
    let nllNo = 0;
    const exec = <R>(label: string, job: EvalJob): Promise<R> => {
      if (mode && 'replay' in mode) {
        if (!mode.replay.has(label)) return Promise.reject(new UserError(`the evaluate-recall shards hold no result for ${label}`, 'merge the shards of one run, made by this dejavu version'));
        return Promise.resolve(mode.replay.get(label) as R);
      }
      if (mode && job.kind === 'nll' && nllNo++ % mode.shard.count !== mode.shard.index) { // another shard's batch: empty here
        const zeros = () => new Array<number>(m.model.config.layers).fill(0);
        return Promise.resolve({ nll: 0, count: 0, sel: { mlp: zeros(), heads: zeros(), mlpT: zeros(), headsT: zeros() } } as R);
      }
      const p = pool ? pool.run<R>(label, job) : hostPool && job.kind === 'recall' ? hostPool.run<R>(label, job) : Promise.resolve().then(() => {
        if (job.kind === 'recall') return recallJob(job, m, preds) as R;
        localModel ??= loadModel(cfg.model!);
        return nllJob(localModel, preds, job.seqs, job.hooks) as R;
      });
      p.catch(() => undefined); // awaited in a fixed order below; a failure surfaces there
      if (mode) p.then((r) => mode.results.set(label, r), () => undefined);
      return p;
    };
    try {
    const bar = deps.progress('recall', siteJobs.length, 'sites');
    let sitesDone = 0;
    const siteResults = siteJobs.map((j) => exec<SiteReport>(`the ${j.site === 'mlp' ? 'MLP' : 'head'} recall pass of layer ${j.layer}`,
      { kind: 'recall', activations: cfg.activations, predictors: cfg.predictors, modelDir, sweep: cfg.sweep, targetRecall, layer: j.layer, site: j.site }).then((r) => { bar.update(++sitesDone); return r; }));
    // perplexity runs that do not need the recall results are queued behind the recall passes at once
    const seqs: number[][] = [];
    let c: ModelConfig | null = null;
    const perplexityRun = (name: string, hooks: HookSpec) => {
      const parts: Promise<NllResult>[] = [];
      for (let i = 0; i < seqs.length; i += cfg.batchSize)
        parts.push(exec<NllResult>(`perplexity run "${name}", sequences ${i}..${Math.min(seqs.length, i + cfg.batchSize) - 1}`, { kind: 'nll', predictors: cfg.predictors, seqs: seqs.slice(i, i + cfg.batchSize), hooks }));
      return parts;
    };
    const early: [string, HookSpec][] = [
      ['dense', { kind: 'dense' }],
      ['predicted (MLP)', { kind: 'predicted', mlp: true, heads: false }],
      ['predicted (heads)', { kind: 'predicted', mlp: false, heads: true }],
      ['predicted (MLP + heads)', { kind: 'predicted', mlp: true, heads: true }],
    ];
    const pending = new Map<string, Promise<NllResult>[]>();
    if (cfg.model) {
      c = normalizeConfig(openCheckpoint(cfg.model).rawConfig, `${cfg.model}/config.json`);
      seqs.push(...await heldoutSequences({ activations: cfg.activations, manifest: m, data: cfg.data, model: cfg.model, config: c, seqLen: cfg.seqLen, maxTokens: cfg.maxTokens, stage: 'evaluate-recall' }));
      for (const [name, spec] of early) pending.set(name, perplexityRun(name, spec));
    }
    for (const r of await Promise.all(siteResults.map((p) => p.catch((e: Error) => ({ error: e }))))) if ('error' in r) throw r.error;
    bar.stop();
    let k = 0;
    for (const l of preds.manifest.layers) {
      const r: LayerReport = { layer: l.layer, ...(l.mlp?.candidates ? { mlpCandidates: l.mlp.candidates } : {}) };
      if (preds.mlp.has(l.layer)) r.mlp = await siteResults[k++]!;
      if (preds.heads.has(l.layer)) r.heads = await siteResults[k++]!;
      layers.push(r);
    }
    const mlpL = layers.filter((l) => l.mlp), hL = layers.filter((l) => l.heads);
    const report: Unsealed = {
      kind: 'dejavu-evaluation', toolVersion: VERSION, config: reportConfig(cfg), predictorsSha256, heldoutTokens: m.tokens, layers,
      averages: {
        mlpRecall: mean(mlpL.map((l) => l.mlp!.metrics.recall)), mlpPredictedDensity: mean(mlpL.map((l) => l.mlp!.metrics.predictedDensity)),
        mlpTrueDensity: mean(mlpL.map((l) => l.mlp!.metrics.trueDensity)), mlpSparsity: 1 - mean(mlpL.map((l) => l.mlp!.metrics.predictedDensity)),
        headRecall: mean(hL.map((l) => l.heads!.metrics.recall)), headDensity: mean(hL.map((l) => l.heads!.metrics.predictedDensity)),
      },
    };

    if (cfg.model && c) {
      // oracle at the predictors' density: per layer k = the predicted density x width
      const kOf = (site: LoadedSite | undefined, rep: SiteReport | undefined, W: number) => site ? Math.max(1, Math.round((rep?.metrics.predictedDensity ?? 1) * W)) : W;
      const mlpK = Array.from({ length: c.layers }, (_, i) => kOf(preds.mlp.get(i), layers.find((l) => l.layer === i)?.mlp, c!.ffn));
      const headK = Array.from({ length: c.layers }, (_, i) => kOf(preds.heads.get(i), layers.find((l) => l.layer === i)?.heads, c!.heads));
      const late: [string, HookSpec][] = [
        ['oracle (MLP)', { kind: 'oracle', mlpK, headK: null }],
        ['oracle (heads)', { kind: 'oracle', mlpK: null, headK }],
        ['oracle (MLP + heads)', { kind: 'oracle', mlpK, headK }],
      ];
      for (const [name, spec] of late) pending.set(name, perplexityRun(name, spec));
      // perplexity vs average MLP density: scale each layer's calibrated density proportionally
      const calib = c.layers ? Array.from({ length: c.layers }, (_, i) => layers.find((l) => l.layer === i)?.mlp?.metrics.predictedDensity ?? 1) : [];
      const meanCal = calib.reduce((a, b) => a + b, 0) / Math.max(1, calib.length);
      // every layer with a selection (not dense) gets a per-token top-k on its own scores at the scaled k
      const curve = cfg.densitySweep.map((D) => {
        const ks = calib.map((d) => Math.max(1, Math.min(c!.ffn, Math.round(c!.ffn * Math.min(1, (D * d) / meanCal)))));
        return { D, ks, predicted: perplexityRun(`predicted at density ${D}`, { kind: 'scaled', ks }), oracle: perplexityRun(`oracle at density ${D}`, { kind: 'oracle', mlpK: ks, headK: null }) };
      });
      const total = (parts: Promise<NllResult>[]) => Promise.all(parts).then((rs) => {
        const tot: NllTotals = { nll: 0, count: 0 };
        for (const r of rs) { tot.nll += r.nll; tot.count += r.count; } // in batch order
        return { tot, rs };
      });
      const order = ['dense', 'oracle (MLP)', 'oracle (heads)', 'oracle (MLP + heads)', 'predicted (MLP)', 'predicted (heads)', 'predicted (MLP + heads)'];
      const pbar = deps.progress('perplexity', (order.length + 2 * curve.length) * seqs.length, 'seqs');
      let n = 0;
      for (const parts of [...pending.values(), ...curve.flatMap((p) => [p.predicted, p.oracle])])
        parts.forEach((p, i) => p.then(() => pbar.update(n += Math.min(cfg.batchSize, seqs.length - i * cfg.batchSize)), () => undefined));
      const res: Record<string, number> = {};
      const density: Record<string, { mlp: number[]; heads: number[] }> = {};
      for (const name of order) {
        const { tot, rs } = await total(pending.get(name)!);
        res[name] = ppl(tot);
        if (name.startsWith('predicted')) {
          const sel = { mlp: new Array(c.layers).fill(0), heads: new Array(c.layers).fill(0), mlpT: new Array(c.layers).fill(0), headsT: new Array(c.layers).fill(0) };
          for (const r of rs) for (const key of ['mlp', 'heads', 'mlpT', 'headsT'] as const) r.sel![key].forEach((v, i) => { sel[key][i] += v; });
          density[name] = { mlp: sel.mlp.map((s, i) => (sel.mlpT[i] ? s / sel.mlpT[i] : 1)), heads: sel.heads.map((s, i) => (sel.headsT[i] ? s / sel.headsT[i] : 1)) };
        }
      }
      const densityCurve: NonNullable<EvalReport['perplexity']>['densityCurve'] = [];
      for (const p of curve) {
        const tp = (await total(p.predicted)).tot, to = (await total(p.oracle)).tot;
        densityCurve.push({ targetDensity: p.D, meanDensity: p.ks.reduce((a, k) => a + k / c!.ffn, 0) / p.ks.length, predicted: ppl(tp), oracle: ppl(to), k: p.ks });
        deps.log(`density ${p.D}: predicted ${ppl(tp).toFixed(3)}, oracle ${ppl(to).toFixed(3)}`);
      }
      pbar.stop();
      const deltas = Object.fromEntries(Object.entries(res).filter(([k]) => k !== 'dense').map(([k, v]) => [k, v / res.dense! - 1]));
      report.perplexity = { tokens: seqs.length * cfg.seqLen, runs: res, deltas, density, densityCurve };
    }
    return report;
    } finally {
      (localModel as Model | null)?.dispose();
      await pool?.close();
      await hostPool?.close();
    }
  } finally {
    preds.dispose();
  }
}

const pct = (x: number) => (100 * x).toFixed(1) + '%';

const num = (x: number | null | undefined, f: (v: number) => string) => (x !== null && x !== undefined && Number.isFinite(x) ? f(x) : '-');

export function reportTable(r: EvalReport, out: string): string {
  const heads = r.layers.some((l) => l.heads); // head columns only where head predictors exist
  const lines = [`evaluation: ${out} (held-out activations: ${r.heldoutTokens} tokens; terms: docs/glossary.md)`, '',
    `| layer | MLP mode | MLP recall | magnitude recall | precision | predicted density | exact bound | true density | est. MLP cost |${heads ? ' head recall | head density |' : ''}`,
    `|---:|---|---:|---:|---:|---:|---:|---:|---:|${heads ? '---:|---:|' : ''}`];
  for (const l of r.layers) {
    const m = l.mlp?.metrics, h = l.heads?.metrics;
    if (m) checkMetrics(m, `layer ${l.layer} MLP predictor (held-out)`);
    if (h) checkMetrics(h, `layer ${l.layer} head predictor (held-out)`);
    // the mode's one name (the plan's and the runtime's): the exact candidate is the lossless mode
    const fam = l.mlp ? `${l.mlp.predictor === 'exact' ? 'lossless (exact)' : l.mlp.predictor ?? ''}${l.mlp.rank && l.mlp.predictor !== 'exact' ? ` r${l.mlp.rank}` : ''}${l.mlp.rule ? `, ${ruleText(l.mlp.rule as SelectionRule)}` : ''}` : '-';
    lines.push(`| ${l.layer} | ${fam} | ${num(m?.recall, (v) => v.toFixed(4))} | ${num(l.mlp?.magnitudeRecall, (v) => v.toFixed(4))} | ${num(m?.precision, (v) => v.toFixed(3))} | ${num(m?.predictedDensity, pct)} | ${num(l.mlp?.exactBound?.predictedDensity, pct)} | ${num(m?.trueDensity, pct)} | ${num(l.mlp?.costShare, pct)} |${heads ? ` ${num(h?.recall, (v) => v.toFixed(3))} | ${num(h?.predictedDensity, pct)} |` : ''}`);
  }
  const a = r.averages;
  const mean = (f: (l: LayerReport) => number | null | undefined) => {
    const v = r.layers.map(f).filter((x): x is number => typeof x === 'number' && Number.isFinite(x));
    return v.length ? v.reduce((s, x) => s + x, 0) / v.length : NaN;
  };
  lines.push(`| mean | | ${num(a.mlpRecall, (v) => v.toFixed(4))} | ${num(mean((l) => l.mlp?.magnitudeRecall), (v) => v.toFixed(4))} | | ${num(a.mlpPredictedDensity, pct)} | ${num(mean((l) => l.mlp?.exactBound?.predictedDensity), pct)} | ${num(a.mlpTrueDensity, pct)} | ${num(mean((l) => l.mlp?.costShare), pct)} |${heads ? ` ${num(a.headRecall, (v) => v.toFixed(3))} | ${num(a.headDensity, pct)} |` : ''}`);
  for (const l of r.layers) if (l.mlpCandidates?.length) lines.push('', ...candidateTable(l.layer, l.mlpCandidates));
  lines.push('', 'exact bound: the density the first projection itself needs for the same recall under the same kind of rule; est. MLP cost: predictor + predicted density x dense MLP FLOPs (exact: first projection + density x second), as a share of the dense MLP');
  if (r.perplexity) {
    const text = r.config.data ?? `the held-out text of ${r.config.activations}`;
    lines.push('', `perplexity on the first ${r.perplexity.tokens} tokens of ${text} (oracle: each token's true top-k neurons at the predictor's per-layer density):`, '', '| run | perplexity | vs dense |', '|---|---:|---:|');
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
  writeArtifact(evalReportSchema, r, path.join(out, 'report.json'), 'evaluate-recall report'); // sealed by runEvaluate
  writeFileAtomic(path.join(out, 'report.md'), `# dejavu evaluate-recall\n\n${reportTable(r, shownOut)}\n\n![recall vs density](recall-vs-density.svg)\n\n![densities](densities.svg)\n${r.perplexity?.densityCurve?.length ? '\n![perplexity vs density](perplexity-vs-density.svg)\n' : ''}`);
  for (const [file, svg] of Object.entries(await renderReportPlots(r))) writeFileAtomic(path.join(out, file), svg);
}
