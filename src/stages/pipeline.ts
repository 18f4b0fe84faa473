/**
 * pipeline: collect (calibration) -> collect (held-out) -> train -> evaluate -> plan -> export, in one workdir.
 * A stage whose output is complete and current is skipped, by the stage's own rule (src/stages/current.ts: same
 * inputs and config, and the output is the one the stage wrote); a stale or edited output is replaced, and the stage
 * says why. Prints the verdict (src/stages/verdict.ts); --verbose adds the per-layer tables.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { StageResult } from './types.js';
import { collectSchema, evaluateSchema, exportSchema, planSchema, trainSchema, type PipelineConfig } from '../config/schemas.js';
import { verifyBundle } from '../bundle/bundle.js';
import { withFsErrors } from '../util/errors.js';
import { checkOutput, writeMarker } from '../util/outdir.js';
import { readEvalReport } from '../eval/report.js';
import { withApproximateTotal, type StageDeps } from '../util/progress.js';
import { collectCurrent, runCollect } from './collect.js';
import { runTrain, trainCurrent } from './train.js';
import { evaluateCurrent, runEvaluate, reportTable } from './evaluate.js';
import { exportCurrent, runExport } from './export.js';
import { planCurrent, runPlan } from './plan.js';
import { readPlanFile, type PlanFile } from '../runtime/plan.js';
import type { Currency } from './current.js';
import { defaultWorkdir, resolveData } from './workdir.js';
import { getBackend } from '../backend.js';
import { estimatePipeline, estimateText } from './estimate.js';
import { headline, verdictText } from './verdict.js';
import { readManifest } from '../activations/dataset.js';

import { runScaleOut } from './scale-out.js';

/** the pipeline's folders in workdir `w` */
export function stageDirs(w: string) {
  return { cal: path.join(w, 'activations-calibration'), held: path.join(w, 'activations-heldout'), pred: path.join(w, 'predictors'), report: path.join(w, 'report'), plan: path.join(w, 'plan'), bundle: path.join(w, 'bundle') };
}

/** each stage's config inside the pipeline: its section, the workdir's folders and the data's two parts */
export function stageConfigs(cfg: PipelineConfig, w: string, data: { calibration: string; heldout: string }) {
  const dirs = stageDirs(w), { model, backend } = cfg;
  const { enabled: planEnabled, ...planRest } = cfg.plan;
  return {
    calibration: collectSchema.parse({ ...cfg.collect, model, data: data.calibration, out: dirs.cal, backend, overwrite: true }),
    heldout: collectSchema.parse({ ...cfg.collect, ...(cfg.heldoutCollect.maxTokens ? { maxTokens: cfg.heldoutCollect.maxTokens } : {}), model, data: data.heldout, out: dirs.held,
      backend, overwrite: true }),
    train: trainSchema.parse({ ...cfg.train, activations: dirs.cal, out: dirs.pred, backend, overwrite: true }),
    evaluate: evaluateSchema.parse({ ...cfg.evaluate, activations: dirs.held, predictors: dirs.pred, out: dirs.report, model, data: data.heldout, backend }),
    plan: planEnabled ? planSchema.parse({ ...planRest, model, predictors: dirs.pred, activations: dirs.held, data: data.heldout, out: dirs.plan, backend, overwrite: true }) : null,
    export: exportSchema.parse({ ...cfg.export, model, predictors: dirs.pred, report: dirs.report, ...(planEnabled ? { plan: dirs.plan } : {}), out: dirs.bundle, overwrite: true }),
  };
}

export async function runPipeline(cfg: PipelineConfig, deps: StageDeps, opts: { verbose?: boolean } = {}): Promise<StageResult> {
  if (cfg.scaleOut) return runScaleOut(cfg, deps); // --scheduler / --step (issue 26): src/stages/scale-out.ts
  const t0 = Date.now();
  const w = cfg.workdir ?? defaultWorkdir(cfg.model);
  const dirs = stageDirs(w);
  // refuse a workdir holding anything dejavu did not write, before any work (stages replace only their own outputs)
  const ws = checkOutput(w, 'workdir');
  const kinds = { cal: 'activations', held: 'activations', pred: 'predictors', report: 'report', plan: 'plan', bundle: 'bundle' } as const;
  for (const [k, kind] of Object.entries(kinds)) checkOutput(dirs[k as keyof typeof kinds], kind);
  if (ws.state !== 'ours' || ws.legacy) withFsErrors('writing', w, () => { fs.mkdirSync(w, { recursive: true }); writeMarker(w, 'workdir'); });
  // one data file: split (deterministic, recorded in the workdir) into calibration and held-out parts
  const { data, line: dataLine } = await resolveData(cfg.data, w);
  deps.log(dataLine);
  const timings: Record<string, number> = {};
  const est = await estimatePipeline(cfg, getBackend() ?? undefined);
  deps.log(estimateText(est.estimate, est.rates, est.workers, true));
  /** a stage: skipped when its own rule (src/stages/current.ts) says its output is current, else run (saying why, where there was an output) */
  const step = async (name: string, current: () => boolean | Currency<unknown> | Promise<boolean>, f: () => Promise<unknown>): Promise<void> => {
    const c = await current(), why = typeof c === 'boolean' ? null : c.current ? null : c.why;
    if (c === true || (typeof c !== 'boolean' && c.current)) { deps.log(`\n== ${name}: current; nothing to do`); return; }
    if (why) deps.log(`\n== ${name}: the existing output is not current (${why}); re-running`);
    const s = Date.now();
    deps.log(`\n== ${name}`);
    await f();
    timings[name] = (Date.now() - s) / 1000;
    deps.log(`== ${name}: ${timings[name]!.toFixed(1)} s`);
  };
  const sc = stageConfigs(cfg, w, data);
  // collect streams its text and knows no total: the estimate's token count stands in for it (shown as ~N)
  await step('collect (calibration)', () => collectCurrent(sc.calibration), () => runCollect(sc.calibration, withApproximateTotal(deps, () => est.estimate.tokens.calibration)));
  await step('collect (held-out)', () => collectCurrent(sc.heldout), () => runCollect(sc.heldout, withApproximateTotal(deps, () => est.estimate.tokens.heldout)));
  await step('train-predictors', () => trainCurrent(sc.train), () => runTrain(sc.train, deps));
  await step('evaluate-recall', () => evaluateCurrent(sc.evaluate), () => runEvaluate(sc.evaluate, deps));
  const report = readEvalReport(dirs.report);
  let plan: PlanFile | null = null;
  if (sc.plan) {
    const planCfg = sc.plan;
    await step('plan', () => planCurrent(planCfg), async () => { const r = await runPlan(planCfg, deps); deps.log(r.text.split('\n').slice(0, 4).join('\n')); });
    plan = readPlanFile(dirs.plan);
  }
  await step('export-bundle', () => exportCurrent(sc.export), () => runExport(sc.export, deps));
  const v = verifyBundle(dirs.bundle, cfg.model);
  const total = (Date.now() - t0) / 1000;
  const mc = readManifest(dirs.held).model.config;
  const h = headline({ model: cfg.model, config: mc, workdir: w, bundle: dirs.bundle, report, plan, heldoutText: data.heldout });
  const lines = verdictText(h, {
    bundleVerified: v.problems.length ? 'FAILED verification: ' + v.problems.join('; ') : 'verified', dataLine, reportDir: dirs.report, planDir: plan ? dirs.plan : null,
    timing: `pipeline: ${total.toFixed(0)} s (${Object.entries(timings).map(([k, s]) => `${k} ${s.toFixed(0)} s`).join(', ') || 'everything was current'})`,
  });
  // --verbose: the per-layer tables too (report.md and plan/report.md hold them either way)
  if (opts.verbose) lines.push('', reportTable(report, dirs.report), ...(plan ? ['', fs.readFileSync(path.join(dirs.plan, 'report.md'), 'utf8').trimEnd()] : []));
  const text = lines.join('\n');
  return { text, json: { headline: h, report, workdir: w, data, bundle: dirs.bundle, verified: v.problems.length === 0, seconds: total, timings }, code: v.problems.length ? 1 : 0 };
}
