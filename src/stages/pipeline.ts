/**
 * pipeline: collect (calibration) -> collect (held-out) -> train -> evaluate -> plan -> export, in one workdir.
 * Every stage skips itself when its output is complete and current (same inputs and config, and, for evaluate, plan
 * and export, the output file is the one the stage wrote: its seal is the one recorded); a stale or edited output is
 * replaced, and the log says why. Prints the verdict (src/stages/verdict.ts); --verbose adds the per-layer tables.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import type { StageResult } from './types.js';
import { collectSchema, evaluateSchema, exportSchema, planSchema, trainSchema, type PipelineConfig } from '../config/schemas.js';
import { verifyBundle } from '../bundle/bundle.js';
import { sha256File } from '../util/fsx.js';
import { isUserError, UserError, withFsErrors } from '../util/errors.js';
import { checkOutput, writeMarker } from '../util/outdir.js';
import { readSealedArtifact, writeArtifact } from '../util/json-artifact.js';
import { canonicalJson } from '../util/canonical-json.js';
import { readEvalReport } from '../eval/report.js';
import { predictorsContentHash } from '../predictors/content-hash.js';
import { withApproximateTotal, type StageDeps } from '../util/progress.js';
import { runCollect } from './collect.js';
import { runTrain } from './train.js';
import { runEvaluate, reportTable, type EvalReport } from './evaluate.js';
import { runExport } from './export.js';
import { runPlan } from './plan.js';
import { readPlanFile, type PlanFile } from '../runtime/plan.js';
import { defaultWorkdir, resolveData } from './workdir.js';
import { getBackend } from '../backend.js';
import { estimatePipeline, estimateText } from './estimate.js';
import { headline, verdictText } from './verdict.js';
import { readManifest } from '../activations/dataset.js';

import { runScaleOut } from './scale-out.js';

/** a stage's record (report/.inputs.json, plan/.inputs.json, .bundle-inputs.json): what its output was made from, and that output's seal */
const stageRecordSchema = z.looseObject({ kind: z.literal('dejavu-stage-record'), inputs: z.unknown(), output: z.string().regex(/^[0-9a-f]{64}$/), sealSha256: z.string() });
interface StageRecord { name: string; file: string; record: string; inputs: unknown }
type ReadOutput<T> = () => { value: T; seal: string };

/**
 * A stage's output is current when its record (sealed) reads back, holds the same inputs (hashes and resolved
 * config), and the output reads back (its own seal checked) with the seal the record holds. Returns the output, or
 * null after logging why not (nothing is said when there is no record: a first run).
 */
function currentOutput<T>(s: StageRecord, read: ReadOutput<T>, deps: StageDeps): T | null {
  if (!fs.existsSync(s.record)) return null;
  let why: string;
  try {
    const rec = readSealedArtifact(stageRecordSchema, s.record, 'stage record', `delete ${s.record}: the pipeline re-runs ${s.name}`);
    if (canonicalJson(rec.inputs) !== canonicalJson(s.inputs)) why = 'its inputs or settings changed';
    else {
      const o = read();
      if (o.seal === rec.output) return o.value;
      why = `${s.file} is not the one ${s.name} wrote here (its seal differs from the one recorded in ${s.record})`;
    }
  } catch (e) {
    if (!isUserError(e)) throw e;
    why = e.message.split('\n')[0]!;
  }
  deps.log(`\n== ${s.name}: the existing output is not current (${why}); re-running`);
  return null;
}

/** After a stage ran: read its output back (seal and schema) and record it with its inputs. */
function recordStage<T>(s: StageRecord, read: ReadOutput<T>): T {
  const o = read();
  writeArtifact(stageRecordSchema, { kind: 'dejavu-stage-record', inputs: s.inputs, output: o.seal }, s.record, 'stage record', { seal: true });
  return o.value;
}

/** inode, size and times of a file (null: absent): a stage that rewrote it did work */
function stamp(file: string): string | null {
  try { const s = fs.statSync(file); return `${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`; } catch { return null; }
}

export async function runPipeline(cfg: PipelineConfig, deps: StageDeps, opts: { verbose?: boolean } = {}): Promise<StageResult> {
  if (cfg.scaleOut) return runScaleOut(cfg, deps); // --scheduler / --step (issue 26): src/stages/scale-out.ts
  const t0 = Date.now();
  const w = cfg.workdir ?? defaultWorkdir(cfg.model);
  const dirs = { cal: path.join(w, 'activations-calibration'), held: path.join(w, 'activations-heldout'), pred: path.join(w, 'predictors'), report: path.join(w, 'report'), plan: path.join(w, 'plan'), bundle: path.join(w, 'bundle') };
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
  /** run a stage; `output`: the file it rewrites when it does work (collect and train skip themselves when current) */
  const step = async <T>(name: string, f: () => Promise<T>, output?: string): Promise<T> => {
    const s = Date.now(), before = output ? stamp(output) : null;
    deps.log(`\n== ${name}`);
    const r = await f();
    if (output && before !== null && stamp(output) === before) { deps.log(`== ${name}: current; nothing to do`); return r; }
    timings[name] = (Date.now() - s) / 1000;
    deps.log(`== ${name}: ${timings[name]!.toFixed(1)} s`);
    return r;
  };
  // collect streams its text and knows no total: the estimate's token count stands in for it (shown as ~N)
  await step('collect (calibration)', () => runCollect(collectSchema.parse({ ...cfg.collect, model: cfg.model, data: data.calibration, out: dirs.cal, backend: cfg.backend, overwrite: true }), withApproximateTotal(deps, () => est.estimate.tokens.calibration)), path.join(dirs.cal, 'manifest.json'));
  await step('collect (held-out)', () => runCollect(collectSchema.parse({ ...cfg.collect, ...(cfg.heldoutCollect.maxTokens ? { maxTokens: cfg.heldoutCollect.maxTokens } : {}), model: cfg.model, data: data.heldout, out: dirs.held, backend: cfg.backend, overwrite: true }), withApproximateTotal(deps, () => est.estimate.tokens.heldout)), path.join(dirs.held, 'manifest.json'));
  await step('train-predictors', () => runTrain(trainSchema.parse({ ...cfg.train, activations: dirs.cal, out: dirs.pred, backend: cfg.backend, overwrite: true }), deps), path.join(dirs.pred, 'predictors.json'));
  const evalCfg = evaluateSchema.parse({ ...cfg.evaluate, activations: dirs.held, predictors: dirs.pred, out: dirs.report, model: cfg.model, data: data.heldout, backend: cfg.backend });
  // evaluation is current when its inputs (predictors, held-out activations, config) are unchanged and report.json is the one it wrote
  const evalIn = { p: predictorsContentHash(dirs.pred), a: sha256File(path.join(dirs.held, 'manifest.json')), c: { ...evalCfg, workers: undefined } }; // the worker count changes nothing
  const readReport = () => { const r = readEvalReport(dirs.report) as unknown as EvalReport; return { value: r, seal: r.sealSha256! }; };
  const evalRec = { name: 'evaluate-recall', file: path.join(dirs.report, 'report.json'), record: path.join(dirs.report, '.inputs.json'), inputs: evalIn };
  let report = currentOutput(evalRec, readReport, deps);
  if (report) deps.log('\n== evaluate-recall: report is complete and current; skipped');
  else {
    await step('evaluate-recall', () => runEvaluate(evalCfg, deps));
    report = recordStage(evalRec, readReport);
  }
  let plan: PlanFile | null = null;
  if (cfg.plan.enabled) {
    const { enabled: _, ...planRest } = cfg.plan;
    const planCfg = planSchema.parse({ ...planRest, model: cfg.model, predictors: dirs.pred, activations: dirs.held, data: data.heldout, out: dirs.plan, backend: cfg.backend, overwrite: true });
    const readPlan = () => { const pf = readPlanFile(dirs.plan); return { value: pf, seal: pf.sealSha256 }; };
    const planRec = { name: 'plan', file: path.join(dirs.plan, 'plan.json'), record: path.join(dirs.plan, '.inputs.json'),
      inputs: { p: predictorsContentHash(dirs.pred), a: sha256File(path.join(dirs.held, 'manifest.json')), c: planCfg } };
    plan = currentOutput(planRec, readPlan, deps);
    if (plan) deps.log('\n== plan: plan is complete and current; skipped');
    else {
      const r = await step('plan', () => runPlan(planCfg, deps));
      deps.log(r.text.split('\n').slice(0, 4).join('\n'));
      plan = recordStage(planRec, readPlan);
    }
  }
  const expCfg = exportSchema.parse({ ...cfg.export, model: cfg.model, predictors: dirs.pred, report: dirs.report, ...(plan ? { plan: dirs.plan } : {}), out: dirs.bundle, overwrite: true });
  const readBundle = () => {
    const v = verifyBundle(dirs.bundle, cfg.model);
    if (v.problems.length || !v.manifest) throw new UserError(`the bundle in ${dirs.bundle} does not verify (${v.problems[0]})`);
    return { value: v.manifest, seal: v.manifest.manifestSha256 };
  };
  const expRec = { name: 'export-bundle', file: path.join(dirs.bundle, 'manifest.json'), record: path.join(w, '.bundle-inputs.json'),
    inputs: { p: predictorsContentHash(dirs.pred), r: report.sealSha256, pl: plan?.sealSha256 ?? null, c: expCfg } };
  if (currentOutput(expRec, readBundle, deps)) deps.log('\n== export-bundle: bundle is complete, current and verifies; skipped');
  else { await step('export-bundle', () => runExport(expCfg, deps)); recordStage(expRec, readBundle); }
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
