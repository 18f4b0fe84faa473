/**
 * Issue #20 "Trust, round two": wrong results reported as good (docs/reliability-2026-12-01 sweep items 4-8, 10, 22-24).
 * One tiny pipeline (opt-tiny-ref, 32-token sequences, closed-form predictors, no head predictors) is made once; each
 * test damages a copy of one of its artifacts (or the live workdir, which the pipeline then repairs) the way the sweep
 * did, and checks that dejavu refuses or re-makes it instead of trusting it.
 * The kernel-cost cache goes to a temp folder ($DEJAVU_CACHE_DIR), never to ~/.cache.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { evaluateSchema, planSchema } from '../src/config/schemas.js';
import { runPlan } from '../src/stages/plan.js';
import { runEvaluate } from '../src/stages/evaluate.js';
import { readPlanFile, planFileSchema, type PlanFile } from '../src/runtime/plan.js';
import { readEvalReport } from '../src/eval/report.js';
import { predictorsContentHash } from '../src/predictors/content-hash.js';
import { manifestChecksum, sealedPart, SEALED_MANIFEST_KEY } from '../src/bundle/schema.js';
import { openSafetensors, writeSafetensors, type TensorToWrite } from '../src/checkpoint/safetensors.js';
import { canonicalJson } from '../src/util/canonical-json.js';
import { sha256File } from '../src/util/fsx.js';
import { sealed } from '../src/util/seal.js';
import { writeArtifact } from '../src/util/json-artifact.js';
import { isUserError } from '../src/util/errors.js';
import { cli, FIXTURES, tmpDir } from './helpers.js';
import { pipelineSchema } from '../src/config/schemas.js';
import { resolveConfig } from '../src/config/load.js';
import { modelDefaults } from '../src/stages/model-defaults.js';
import { resolveData } from '../src/stages/workdir.js';
import { stageConfigs } from '../src/stages/pipeline.js';
import { collectCurrent } from '../src/stages/collect.js';
import { trainCurrent } from '../src/stages/train.js';
import { evaluateCurrent } from '../src/stages/evaluate.js';
import { planCurrent } from '../src/stages/plan.js';
import { exportCurrent, runExport } from '../src/stages/export.js';

const TMP = tmpDir('dejavu-trust-');
process.env.DEJAVU_CACHE_DIR = path.join(TMP, 'cache'); // read at each call (src/runtime/costs.ts)
const REPO = path.join(import.meta.dirname, '..');
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const HELD = path.join(TMP, 'heldout.jsonl'); // a copy: the repo's data is never touched
const W = path.join(TMP, 'w');
const CFG = path.join(TMP, 'pipe.yaml');
const dirs = { held: path.join(W, 'activations-heldout'), pred: path.join(W, 'predictors'), report: path.join(W, 'report'), plan: path.join(W, 'plan'), bundle: path.join(W, 'bundle') };
const PLAN_SETS = ['--set', 'seqLen=32', '--set', 'searchTokens=64', '--set', 'verifyTokens=128', '--set', 'calibrationRows=512', '--set', 'recalls=[0.9]'];
const quiet = { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) };

const json = (f: string) => JSON.parse(fs.readFileSync(f, 'utf8'));
const write = (f: string, v: unknown) => fs.writeFileSync(f, JSON.stringify(v, null, 2));
let copies = 0;
const copy = (from: string) => { const d = path.join(TMP, `copy-${copies++}`); fs.cpSync(from, d, { recursive: true }); return d; };
const pipeline = () => cli('pipeline', '--config', CFG);
/** a copy of the pipeline's predictors with other content (predictors.json changed and re-sealed, as a retrain would) */
function otherPredictors(dir = copy(dirs.pred)): string {
  const f = path.join(dir, 'predictors.json');
  write(f, sealed({ ...json(f), toolVersion: 'another run' }));
  return dir;
}
/** the sweep's edit of a plan: every layer after the first "predicted" under a threshold no score reaches */
function editPlan(f: string): void {
  const p = json(f);
  for (const l of p.plan.layers.slice(1)) l.mlp = { mode: 'predicted', rule: { kind: 'threshold', value: 1e9 }, recall: 0.99 };
  write(f, p);
}

beforeAll(async () => {
  await ensureBackend('wasm');
  fs.copyFileSync(path.join(REPO, 'data', 'heldout.jsonl'), HELD);
  fs.writeFileSync(CFG, [`model: ${MODEL}`, `workdir: ${W}`, 'backend: wasm', `data: { calibration: ${path.join(REPO, 'data', 'calibration.jsonl')}, heldout: ${HELD} }`,
    'collect: { seqLen: 32, maxTokens: 512, dtype: float32, workers: 1 }',
    'train: { workers: 1, heads: { enabled: false }, mlp: { predictors: [closed-form], ranks: [0.5], rule: threshold } }',
    'evaluate: { seqLen: 32, maxTokens: 64, densitySweep: [], workers: 1 }',
    'plan: { seqLen: 32, searchTokens: 64, verifyTokens: 128, calibrationRows: 512, recalls: [0.9] }'].join('\n'));
  const r = await pipeline();
  expect(r.code, r.err).toBe(0);
}, 120_000);
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

describe('issue #20: artifacts a later stage trusts are sealed and checked', () => {
  it('#20 item 22: a pipeline with every stage current says "everything was current" and lists no stage', async () => {
    const r = await pipeline();
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/pipeline: \d+ s \(everything was current\)/);
    expect(r.err).not.toMatch(/== (collect|train-predictors|evaluate-recall|plan|export-bundle).*: [\d.]+ s/);
    expect(r.err).toMatch(/== collect \(calibration\): current; nothing to do/);
  });

  it('#20 item 4: an edited plan.json is refused by export-bundle (exit 2), also for other predictors with its predictorsSha256 copied; the pipeline re-makes it and never exports it', async () => {
    const p1 = copy(dirs.plan);
    editPlan(path.join(p1, 'plan.json'));
    const x = await cli('export-bundle', '--model', MODEL, '--predictors', dirs.pred, '--report', dirs.report, '--plan', p1, '--out', path.join(TMP, 'b-edit'));
    expect(x.code, x.err).toBe(2);
    expect(x.err).toContain(`error: ${path.join(p1, 'plan.json')} was changed after dejavu wrote it (its seal does not match)`);
    expect(x.err).toMatch(/hint: re-run `dejavu plan`/);
    expect(fs.existsSync(path.join(TMP, 'b-edit'))).toBe(false);
    // a plan made for other predictors, its predictorsSha256 replaced by theirs: the seal covers that field
    const other = otherPredictors();
    const p2 = copy(dirs.plan);
    const pf = json(path.join(p2, 'plan.json'));
    write(path.join(p2, 'plan.json'), { ...pf, predictorsSha256: predictorsContentHash(other) });
    const y = await cli('export-bundle', '--model', MODEL, '--predictors', other, '--plan', p2, '--out', path.join(TMP, 'b-other'));
    expect(y.code, y.err).toBe(2);
    expect(y.err).toContain(`${path.join(p2, 'plan.json')} was changed after dejavu wrote it (its seal does not match)`);
    // re-sealed by a tool: still refused, by the predictors' actual content hash
    write(path.join(p2, 'plan.json'), sealed({ ...pf, predictorsSha256: predictorsContentHash(dirs.pred) }));
    const z = await cli('export-bundle', '--model', MODEL, '--predictors', other, '--plan', p2, '--out', path.join(TMP, 'b-other'));
    expect(z.code, z.err).toBe(2);
    expect(z.err).toMatch(/was made for other predictors than/);

    // the same edit in the workdir: the pipeline re-runs plan (saying why) and exports the plan it made
    editPlan(path.join(dirs.plan, 'plan.json'));
    const r = await pipeline();
    expect(r.code, r.err).toBe(0);
    expect(r.err).toContain(`== plan: the existing output is not current (${path.join(dirs.plan, 'plan.json')} was changed after dejavu wrote it (its seal does not match)); re-running`);
    expect(r.err).toMatch(/== plan: [\d.]+ s/);
    const m = json(path.join(dirs.bundle, 'manifest.json'));
    expect(JSON.stringify(m.plan)).not.toContain('1000000000');
    expect(m.plan).toEqual(readPlanFile(dirs.plan).plan);
  });

  it('#20 item 5: an edited report.json is refused by export-bundle (exit 2); the pipeline re-runs evaluate and exports the measured numbers', async () => {
    const edit = (f: string) => { const o = json(f); for (const k of Object.keys(o.perplexity.runs)) o.perplexity.runs[k] = o.perplexity.runs.dense; write(f, o); };
    const r1 = copy(dirs.report);
    edit(path.join(r1, 'report.json'));
    const x = await cli('export-bundle', '--model', MODEL, '--predictors', dirs.pred, '--report', r1, '--out', path.join(TMP, 'b-report'));
    expect(x.code, x.err).toBe(2);
    expect(x.err).toContain(`error: ${path.join(r1, 'report.json')} was changed after dejavu wrote it (its seal does not match)`);
    expect(x.err).toMatch(/hint: re-run evaluate-recall/);

    const measured = readEvalReport(dirs.report).perplexity!.runs;
    expect(new Set(Object.values(measured)).size).toBeGreaterThan(1); // the edit really changes numbers
    edit(path.join(dirs.report, 'report.json'));
    const r = await pipeline();
    expect(r.code, r.err).toBe(0);
    expect(r.err).toContain(`== evaluate-recall: the existing output is not current (${path.join(dirs.report, 'report.json')} was changed after dejavu wrote it (its seal does not match)); re-running`);
    expect(r.err).toMatch(/== evaluate-recall: [\d.]+ s/);
    expect(json(path.join(dirs.bundle, 'manifest.json')).perplexity).toEqual(measured);
  });

  it('#20 items 4-5: the stage records are sealed: an edited record re-runs its stage, saying why', async () => {
    const rec = path.join(dirs.bundle, '.inputs.json');
    const o = json(rec);
    o.inputs.c.neuronMajor = !o.inputs.c.neuronMajor;
    write(rec, o);
    const r = await pipeline();
    expect(r.code, r.err).toBe(0);
    expect(r.err).toContain(`== export-bundle: the existing output is not current (${rec} was changed after dejavu wrote it (its seal does not match)); re-running`);
    expect(r.err).toMatch(/== export-bundle: [\d.]+ s/);
    expect(json(rec).sealSha256).toMatch(/^[0-9a-f]{64}$/);
  });

  it('#20 item 6: plan and evaluate-recall refuse predictors that change while they run (exit 2), writing nothing', async () => {
    for (const stage of ['plan', 'evaluate-recall'] as const) {
      const pred = copy(dirs.pred), out = path.join(TMP, `race-${stage}`);
      let retrained = false;
      // the first progress bar starts after the predictors were loaded: "retrain" them into the same folder then
      const deps = { ...quiet, progress: () => { if (!retrained) { otherPredictors(pred); retrained = true; } return quiet.progress(); } };
      const run = stage === 'plan'
        ? runPlan(planSchema.parse({ model: MODEL, predictors: pred, activations: dirs.held, out, seqLen: 32, searchTokens: 64, verifyTokens: 128, calibrationRows: 512, recalls: [0.9] }), deps)
        : runEvaluate(evaluateSchema.parse({ model: MODEL, predictors: pred, activations: dirs.held, out, seqLen: 32, maxTokens: 64, densitySweep: [], workers: 1 }), deps);
      const err = await run.then(() => null, (e: unknown) => e);
      expect(retrained).toBe(true);
      expect(isUserError(err), `${stage}: ${String(err)}`).toBe(true);
      expect((err as Error).message).toMatch(new RegExp(`^predictors in ${pred} changed while ${stage} ran \\(content sha256 [0-9a-f]{12}… when loaded, [0-9a-f]{12}… now\\)`));
      expect(fs.existsSync(out), out).toBe(false);
    }
  });

  it('#20 item 7: evaluate-recall and plan refuse a held-out text that is not the one the activations were collected from (exit 2, naming both files)', async () => {
    const acts = copy(dirs.held), other = path.join(TMP, 'other-text.jsonl');
    fs.copyFileSync(path.join(REPO, 'data', 'calibration.jsonl'), other);
    const mf = path.join(acts, 'manifest.json');
    write(mf, { ...json(mf), data: { ...json(mf).data, file: other } }); // the manifest names another file (its sha256 kept)
    const e = await cli('evaluate-recall', '--model', MODEL, '--activations', acts, '--predictors', dirs.pred, '--out', path.join(TMP, 'r7'), '--max-tokens', '64', '--set', 'seqLen=32', '--set', 'densitySweep=[]', '--workers', '1');
    const p = await cli('plan', '--model', MODEL, '--activations', acts, '--predictors', dirs.pred, '--out', path.join(TMP, 'p7'), ...PLAN_SETS);
    // the same with --data naming the collected file after it changed
    const changed = copy(dirs.held);
    fs.writeFileSync(HELD + '.orig', fs.readFileSync(HELD));
    try {
      fs.copyFileSync(other, HELD);
      const d = await cli('plan', '--model', MODEL, '--activations', changed, '--predictors', dirs.pred, '--data', HELD, '--out', path.join(TMP, 'p7d'), ...PLAN_SETS);
      expect(d.code, d.err).toBe(2);
      expect(d.err).toContain(`${HELD} is not the text the activations in ${changed} were collected from`);
    } finally { fs.renameSync(HELD + '.orig', HELD); }
    for (const [r, out] of [[e, 'r7'], [p, 'p7']] as const) {
      expect(r.code, r.err).toBe(2);
      expect(r.err).toMatch(new RegExp(`error: ${other} is not the text the activations in ${acts} were collected from \\(its sha256 [0-9a-f]{12}… differs from the [0-9a-f]{12}… recorded in ${mf}\\)`));
      expect(r.err).toMatch(/hint: restore .*, or collect the held-out activations again/);
      expect(fs.existsSync(path.join(TMP, out))).toBe(false);
    }
  });

  it('#20 item 8: an inconsistent kernel-cost cache is measured over (with a note), and a plan failing its own schema is never written', async () => {
    const cache = path.join(TMP, 'cache-8');
    fs.mkdirSync(cache);
    const c = json(path.join(TMP, 'cache', 'kernel-costs.json'));
    for (const v of Object.values(c.shapes) as { upMs: number; downMs: number }[]) { v.upMs = 1e300; v.downMs = 1e300; }
    write(path.join(cache, 'kernel-costs.json'), c);
    const saved = process.env.DEJAVU_CACHE_DIR;
    process.env.DEJAVU_CACHE_DIR = cache;
    try {
      const p = await cli('plan', '--model', MODEL, '--activations', dirs.held, '--predictors', dirs.pred, '--out', path.join(TMP, 'p8b'), ...PLAN_SETS);
      expect(p.code, p.err).toBe(0);
      expect(p.err).toMatch(/plan: the cached kernel costs of this model in .*kernel-costs\.json do not fit together \(\d+ layers x \(up 1e\+300 \+ down 1e\+300\) ms is not less than the whole step/);
      const pf = readPlanFile(path.join(TMP, 'p8b'));
      expect(pf.plan.estimate.stepMs).toBeGreaterThan(0);
      expect(pf.plan.estimate.speedup).toBeGreaterThan(0);
      expect(Object.values(json(path.join(cache, 'kernel-costs.json')).shapes).every((v) => (v as { upMs: number }).upMs < 1)).toBe(true); // measured over
      const x = await cli('export-bundle', '--model', MODEL, '--predictors', dirs.pred, '--plan', path.join(TMP, 'p8b'), '--out', path.join(TMP, 'b8'));
      expect(x.code, x.err).toBe(0);
    } finally { process.env.DEJAVU_CACHE_DIR = saved; }
    // the writer's own check: a plan with a negative cost estimate is an internal error (not a UserError) and not written
    const good = readPlanFile(dirs.plan);
    const bad = { ...good, plan: { ...good.plan, estimate: { ...good.plan.estimate, stepMs: -1.1e301 } } } satisfies PlanFile;
    const f = path.join(TMP, 'never.json');
    let err: unknown = null;
    try { writeArtifact(planFileSchema, sealed(bad), f, 'plan'); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(Error);
    expect(isUserError(err)).toBe(false);
    expect((err as Error).message).toMatch(/the plan about to be written to .*never\.json fails its own schema \(1 problem; not written\):\n {2}- plan\.estimate\.stepMs: /);
    expect(fs.existsSync(f)).toBe(false);
  });

  it('#20 item 10: a kernel-cost cache with an empty or one-point table is measured over (exit 0, with a note), not a crash', async () => {
    for (const [name, edit] of [['empty-skip', (v: Record<string, unknown>) => { v.skip = []; }], ['one-select', (v: Record<string, [number, number][]>) => { v.select = v.select!.slice(0, 1); }]] as const) {
      const cache = path.join(TMP, `cache-10-${name}`);
      fs.mkdirSync(cache);
      const c = json(path.join(TMP, 'cache', 'kernel-costs.json'));
      for (const v of Object.values(c.shapes)) (edit as (v: unknown) => void)(v);
      write(path.join(cache, 'kernel-costs.json'), c);
      const saved = process.env.DEJAVU_CACHE_DIR;
      process.env.DEJAVU_CACHE_DIR = cache;
      try {
        const p = await cli('plan', '--model', MODEL, '--activations', dirs.held, '--predictors', dirs.pred, '--out', path.join(TMP, `p10-${name}`), ...PLAN_SETS);
        expect(p.code, `${name}: ${p.err}`).toBe(0);
        expect(p.err, name).toMatch(/plan: the kernel-cost cache .*kernel-costs\.json is not valid \(shapes\..*\.(skip|select): Too small.*\); measuring the costs again/);
        expect(p.err, name).toMatch(/cost model measured/);
      } finally { process.env.DEJAVU_CACHE_DIR = saved; }
    }
  });

  it('#20 item 23: a re-sealed manifest claiming formatVersion 2 but carrying a plan is refused by verify-bundle and generate (exit 2)', async () => {
    const b = copy(dirs.bundle);
    const m = json(path.join(b, 'manifest.json'));
    expect(m.plan).toBeTruthy();
    m.formatVersion = 2;
    for (const l of m.layers) for (const site of ['mlp', 'heads']) if (l[site]) { l[site].family = l[site].predictor; delete l[site].predictor; } // format 2's spelling
    // re-seal everything as a tool would: the sealed copy in predictors.safetensors, the files table, manifestSha256
    const pf = path.join(b, m.predictorsFile), st = openSafetensors(pf), buf = fs.readFileSync(pf);
    const tensors: Record<string, TensorToWrite> = {};
    for (const [name, t] of st.tensors) tensors[name] = { dtype: t.dtype as 'F16', shape: t.shape, data: new Uint16Array(buf.buffer.slice(buf.byteOffset + t.begin, buf.byteOffset + t.end)) };
    writeSafetensors(pf, tensors, { ...st.metadata, [SEALED_MANIFEST_KEY]: canonicalJson(sealedPart(m)) });
    m.files[m.predictorsFile] = { sha256: sha256File(pf), bytes: fs.statSync(pf).size };
    m.manifestSha256 = manifestChecksum(m);
    write(path.join(b, 'manifest.json'), m);
    const v = await cli('verify-bundle', '--bundle', b, '--model', MODEL);
    expect(v.code, v.out + v.err).toBe(2);
    expect(v.out).toMatch(/manifest\.json formatVersion: 2, but the manifest carries a plan \(format 2 has no plan/);
    const g = await cli('generate', '--model', MODEL, '--bundle', b, '--prompt', 'The President said', '--max-tokens', '2');
    expect(g.code, g.err).toBe(2);
    expect(g.err).toMatch(/formatVersion: 2, but the manifest carries a plan/);
  });

  it('#20 item 24: a folder named manifest.json is reported as a folder, with its path (exit 2)', async () => {
    const b = copy(dirs.bundle);
    const mf = path.join(b, 'manifest.json');
    fs.rmSync(mf);
    fs.mkdirSync(mf);
    const v = await cli('verify-bundle', '--bundle', b);
    expect(v.code).toBe(2);
    expect(v.out).toContain(`${mf} is a folder, not a file`);
    const g = await cli('generate', '--model', MODEL, '--bundle', b, '--prompt', 'The', '--max-tokens', '1');
    expect(g.code).toBe(2);
    expect(g.err).toContain(`${mf} is a folder, not a file`);
  });
});

describe('issue #25: one "is this output current" rule per stage (src/stages/current.ts), used by the stage and by the pipeline', () => {
  /** each stage's config as the pipeline makes it from CFG */
  const stageCfgs = async (cfg = CFG) => {
    const pc = resolveConfig(pipelineSchema, 'pipeline', { configFile: cfg, defaults: (o) => modelDefaults('pipeline', o) });
    return stageConfigs(pc, W, (await resolveData(pc.data, W)).data);
  };
  /** run f with `file` changed (bytes appended, or `edit`), then restore its bytes */
  const changed = async <T>(file: string, f: () => T | Promise<T>, edit = (b: Buffer) => Buffer.concat([b, Buffer.from('\n')])): Promise<T> => {
    const orig = fs.readFileSync(file);
    fs.writeFileSync(file, edit(orig));
    try { return await f(); } finally { fs.writeFileSync(file, orig); }
  };
  const SETTINGS = 'its inputs or settings changed';

  it('each rule: the pipeline\'s outputs are current; another setting or other content of an input makes that stage not current; a current stage run by itself does nothing', async () => {
    const c = await stageCfgs();
    const all = async () => [await collectCurrent(c.calibration), await collectCurrent(c.heldout), trainCurrent(c.train),
      evaluateCurrent(c.evaluate).current, planCurrent(c.plan!).current, exportCurrent(c.export).current];
    expect(await all()).toEqual([true, true, true, true, true, true]);
    // another setting: that stage only
    expect(await collectCurrent({ ...c.calibration, maxTokens: 256 })).toBe(false);
    expect(await collectCurrent({ ...c.heldout, seqLen: 16 })).toBe(false);
    expect(trainCurrent({ ...c.train, seed: c.train.seed + 1 })).toBe(false);
    expect(evaluateCurrent({ ...c.evaluate, maxTokens: 32 })).toEqual({ current: false, why: SETTINGS });
    expect(planCurrent({ ...c.plan!, maxPplIncrease: 0.05 })).toEqual({ current: false, why: SETTINGS });
    expect(exportCurrent({ ...c.export, neuronMajor: !c.export.neuronMajor })).toEqual({ current: false, why: SETTINGS });
    // what changes nothing in the output is not an input: the worker count, --overwrite
    expect(evaluateCurrent({ ...c.evaluate, workers: 2 }).current).toBe(true);
    expect(planCurrent({ ...c.plan!, overwrite: false }).current).toBe(true);
    expect(exportCurrent({ ...c.export, overwrite: false }).current).toBe(true);
    // other content at the same path: the held-out text (collect), the calibration activations (train), the predictors (evaluate, plan, export)
    expect(await changed(c.heldout.data, () => collectCurrent(c.heldout))).toBe(false);
    expect(await changed(path.join(W, 'activations-calibration', 'manifest.json'), () => trainCurrent(c.train))).toBe(false);
    const reseal = (b: Buffer) => Buffer.from(JSON.stringify(sealed({ ...JSON.parse(b.toString('utf8')), toolVersion: 'another run' })));
    expect(await changed(path.join(dirs.pred, 'predictors.json'), () => [evaluateCurrent(c.evaluate), planCurrent(c.plan!), exportCurrent(c.export)], reseal))
      .toEqual([{ current: false, why: SETTINGS }, { current: false, why: SETTINGS }, { current: false, why: SETTINGS }]);
    expect(await all()).toEqual([true, true, true, true, true, true]); // restored: current again
    // the stages themselves, without --overwrite (with it they make their output again): current, so nothing is done (their outputs are not rewritten)
    const logs: string[] = [];
    const deps = { log: (m: string) => logs.push(m), progress: quiet.progress };
    const before = ['report/report.json', 'plan/plan.json', 'bundle/manifest.json'].map((f) => fs.statSync(path.join(W, f)).mtimeMs);
    await runEvaluate(c.evaluate, deps);
    await runPlan({ ...c.plan!, overwrite: false }, deps);
    await runExport({ ...c.export, overwrite: false }, deps);
    expect(logs).toEqual([`evaluate-recall: ${dirs.report} is complete and current; nothing to do`, `plan: ${dirs.plan} is complete and current; nothing to do`,
      `export-bundle: ${dirs.bundle} is complete, current and verifies; nothing to do`]);
    expect(['report/report.json', 'plan/plan.json', 'bundle/manifest.json'].map((f) => fs.statSync(path.join(W, f)).mtimeMs)).toEqual(before);
  });

  it('the plan\'s verification shows its progress: each decode pass and the timing with its total (reached), and a final line', async () => {
    const c = await stageCfgs();
    const bars: { label: string; total: number; value: number; stopped: boolean }[] = [];
    const deps = { log: () => undefined, progress: (label: string, total: number) => {
      const b = { label, total, value: 0, stopped: false };
      bars.push(b);
      return { update: (v: number) => { b.value = v; }, stop: () => { b.stopped = true; } };
    } };
    const out = path.join(TMP, 'p-progress');
    await runPlan({ ...c.plan!, out }, deps);
    const v = readPlanFile(out).plan.verified;
    const verification = bars.filter((b) => b.label.startsWith('plan: verification'));
    expect(verification[0]).toEqual({ label: 'plan: verification, dense', total: v.tokens, value: v.tokens, stopped: true });
    expect(verification.length).toBeGreaterThanOrEqual(2);
    for (const b of verification.slice(1)) expect(b).toEqual({ label: expect.stringMatching(/^plan: verification, the plan \(\d+ move\(s\)\)$/), total: v.tokens, value: v.tokens, stopped: true });
    const timing = bars.filter((b) => b.label.startsWith('plan: timing'));
    if (v.speedup !== 1 || timing.length) { // a dense plan is not timed
      expect(timing.length).toBeGreaterThanOrEqual(1);
      for (const b of timing) { expect(b.total).toBeGreaterThan(0); expect(b.value).toBe(b.total); expect(b.stopped).toBe(true); }
    }
  });

  it('the pipeline runs exactly the stages that are not current: a changed evaluate setting re-runs evaluate-recall and export-bundle; other held-out text re-runs everything after the calibration stages', async () => {
    const ran = (err: string, s: string) => new RegExp(`== ${s.replace(/[()]/g, '\\$&')}: [\\d.]+ s`).test(err);
    const skipped = (err: string, s: string) => err.includes(`== ${s}: current; nothing to do`);
    const STAGES = ['collect (calibration)', 'collect (held-out)', 'train-predictors', 'evaluate-recall', 'plan', 'export-bundle'];
    const cfg2 = path.join(TMP, 'pipe-eval96.yaml');
    fs.writeFileSync(cfg2, fs.readFileSync(CFG, 'utf8').replace('evaluate: { seqLen: 32, maxTokens: 64,', 'evaluate: { seqLen: 32, maxTokens: 96,'));
    expect(fs.readFileSync(cfg2, 'utf8')).toContain('maxTokens: 96');
    const a = await cli('pipeline', '--config', cfg2);
    expect(a.code, a.err).toBe(0);
    expect(STAGES.map((s) => ran(a.err, s) ? 'ran' : skipped(a.err, s) ? 'skipped' : '?')).toEqual(['skipped', 'skipped', 'skipped', 'ran', 'skipped', 'ran']);
    expect(readEvalReport(dirs.report).config).toMatchObject({ maxTokens: 96 });
    // other held-out text (a document added): its collection and every stage that reads it
    fs.appendFileSync(HELD, fs.readFileSync(HELD, 'utf8').split('\n')[0] + '\n');
    const b = await cli('pipeline', '--config', cfg2);
    expect(b.code, b.err).toBe(0);
    expect(STAGES.map((s) => ran(b.err, s) ? 'ran' : skipped(b.err, s) ? 'skipped' : '?')).toEqual(['skipped', 'ran', 'skipped', 'ran', 'ran', 'ran']);
    const c = await cli('pipeline', '--config', cfg2);
    expect(c.out).toMatch(/everything was current/);
  });
});
