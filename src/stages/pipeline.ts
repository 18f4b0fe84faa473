/**
 * pipeline: collect (calibration) -> collect (held-out) -> train -> evaluate -> plan -> export, in one workdir.
 * Every stage skips itself when its output is complete and current (same inputs and config); a stale output is
 * replaced. Prints the final per-layer table and the perplexities.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { StageResult } from './types.js';
import { collectSchema, evaluateSchema, exportSchema, planSchema, trainSchema, type PipelineConfig } from '../config/schemas.js';
import { verifyBundle } from '../bundle/bundle.js';
import { sha256File } from '../util/fsx.js';
import { isUserError, withFsErrors } from '../util/errors.js';
import { checkOutput, outputIsCurrent, recordOutputInputs, writeMarker } from '../util/outdir.js';
import { readEvalReport } from '../eval/report.js';
import { predictorsContentHash } from '../predictors/content-hash.js';
import type { StageDeps } from '../util/progress.js';
import { runCollect } from './collect.js';
import { runTrain } from './train.js';
import { runEvaluate, reportTable, type EvalReport } from './evaluate.js';
import { runExport } from './export.js';
import { runPlan } from './plan.js';
import { readPlanFile, type PlanFile } from '../runtime/plan.js';

export async function runPipeline(cfg: PipelineConfig, deps: StageDeps): Promise<StageResult> {
  const t0 = Date.now();
  const w = cfg.workdir;
  const dirs = { cal: path.join(w, 'activations-calibration'), held: path.join(w, 'activations-heldout'), pred: path.join(w, 'predictors'), report: path.join(w, 'report'), plan: path.join(w, 'plan'), bundle: path.join(w, 'bundle') };
  // refuse a workdir holding anything dejavu did not write, before any work (stages replace only their own outputs)
  const ws = checkOutput(w, 'workdir');
  const kinds = { cal: 'activations', held: 'activations', pred: 'predictors', report: 'report', plan: 'plan', bundle: 'bundle' } as const;
  for (const [k, kind] of Object.entries(kinds)) checkOutput(dirs[k as keyof typeof kinds], kind);
  if (ws.state !== 'ours' || ws.legacy) withFsErrors('writing', w, () => { fs.mkdirSync(w, { recursive: true }); writeMarker(w, 'workdir'); });
  const timings: Record<string, number> = {};
  const step = async <T>(name: string, f: () => Promise<T>): Promise<T> => {
    const s = Date.now();
    deps.log(`\n== ${name}`);
    const r = await f();
    timings[name] = (Date.now() - s) / 1000;
    deps.log(`== ${name}: ${timings[name]!.toFixed(1)} s`);
    return r;
  };
  await step('collect (calibration)', () => runCollect(collectSchema.parse({ ...cfg.collect, model: cfg.model, data: cfg.data.calibration, out: dirs.cal, backend: cfg.backend, overwrite: true }), deps));
  await step('collect (held-out)', () => runCollect(collectSchema.parse({ ...cfg.collect, ...(cfg.heldoutCollect.maxTokens ? { maxTokens: cfg.heldoutCollect.maxTokens } : {}), model: cfg.model, data: cfg.data.heldout, out: dirs.held, backend: cfg.backend, overwrite: true }), deps));
  await step('train-predictors', () => runTrain(trainSchema.parse({ ...cfg.train, activations: dirs.cal, out: dirs.pred, backend: cfg.backend, overwrite: true }), deps));
  const evalCfg = evaluateSchema.parse({ ...cfg.evaluate, activations: dirs.held, predictors: dirs.pred, out: dirs.report, model: cfg.model, data: cfg.data.heldout, backend: cfg.backend });
  // evaluation is current when its inputs (predictors, held-out activations, config) are unchanged
  const evalId = JSON.stringify({ p: predictorsContentHash(dirs.pred), a: sha256File(path.join(dirs.held, 'manifest.json')), c: { ...evalCfg, workers: undefined } }); // the worker count changes nothing
  const idFile = path.join(dirs.report, '.inputs.json');
  let report: EvalReport | null = null;
  if (outputIsCurrent(idFile, evalId, () => fs.existsSync(path.join(dirs.report, 'report.json')))) {
    // a report that does not read back (corrupt, or from an older dejavu) is re-made, never used
    try { report = readEvalReport(dirs.report) as unknown as EvalReport; } catch (e) { if (!isUserError(e)) throw e; deps.log(`\n== evaluate-recall: the existing report is unusable (${e.message.split('\n')[0]}); re-running`); }
    if (report) deps.log('\n== evaluate-recall: report is complete and current; skipped');
  }
  if (!report) {
    report = (await step('evaluate-recall', () => runEvaluate(evalCfg, deps))).json as EvalReport;
    recordOutputInputs(idFile, evalId);
  }
  let plan: PlanFile | null = null;
  if (cfg.plan.enabled) {
    const { enabled: _, ...planRest } = cfg.plan;
    const planCfg = planSchema.parse({ ...planRest, model: cfg.model, predictors: dirs.pred, activations: dirs.held, data: cfg.data.heldout, out: dirs.plan, backend: cfg.backend, overwrite: true });
    const planId = JSON.stringify({ p: predictorsContentHash(dirs.pred), a: sha256File(path.join(dirs.held, 'manifest.json')), c: planCfg });
    const planIdFile = path.join(dirs.plan, '.inputs.json');
    if (outputIsCurrent(planIdFile, planId, () => fs.existsSync(path.join(dirs.plan, 'plan.json')))) {
      try { plan = readPlanFile(dirs.plan); deps.log('\n== plan: plan is complete and current; skipped'); } catch (e) { if (!isUserError(e)) throw e; deps.log(`\n== plan: the existing plan is unusable (${e.message.split('\n')[0]}); re-running`); }
    }
    if (!plan) {
      const r = await step('plan', () => runPlan(planCfg, deps));
      deps.log(r.text.split('\n').slice(0, 4).join('\n'));
      plan = r.json as PlanFile;
      recordOutputInputs(planIdFile, planId);
    }
  }
  const expCfg = exportSchema.parse({ ...cfg.export, model: cfg.model, predictors: dirs.pred, report: dirs.report, ...(plan ? { plan: dirs.plan } : {}), out: dirs.bundle, overwrite: true });
  const expId = JSON.stringify({ p: predictorsContentHash(dirs.pred), r: sha256File(path.join(dirs.report, 'report.json')), pl: plan ? sha256File(path.join(dirs.plan, 'plan.json')) : null, c: expCfg });
  const expIdFile = path.join(w, '.bundle-inputs.json');
  if (outputIsCurrent(expIdFile, expId, () => verifyBundle(dirs.bundle, cfg.model).problems.length === 0)) deps.log('\n== export-bundle: bundle is complete, current and verifies; skipped');
  else { await step('export-bundle', () => runExport(expCfg, deps)); recordOutputInputs(expIdFile, expId); }
  const v = verifyBundle(dirs.bundle, cfg.model);
  const total = (Date.now() - t0) / 1000;
  const pv = plan?.plan.verified;
  const planLine = pv ? `plan: ${dirs.plan}/report.md — verified ${pv.pplIncrease >= 0 ? '+' : ''}${(100 * pv.pplIncrease).toFixed(3)}% perplexity (budget +${(100 * plan!.plan.maxPplIncrease).toFixed(1)}%), decode ${pv.speedup.toFixed(2)}x dense (${plan!.plan.layers.map((l) => l.mlp.mode).join(', ')})` : 'plan: off (train-only rules in the bundle)';
  const text = [reportTable(report, dirs.report), '', planLine, `bundle: ${dirs.bundle} (${v.problems.length ? 'FAILED verification: ' + v.problems.join('; ') : 'verified'})`,
    `pipeline: ${total.toFixed(0)} s (${Object.entries(timings).map(([k, s]) => `${k} ${s.toFixed(0)} s`).join(', ') || 'everything was current'})`].join('\n');
  return { text, json: { report, bundle: dirs.bundle, verified: v.problems.length === 0, seconds: total, timings }, code: v.problems.length ? 1 : 0 };
}
