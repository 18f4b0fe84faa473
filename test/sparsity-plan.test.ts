/**
 * Issue 22: `dejavu plan` with the threshold sites on the Llama fixture (SwiGLU): the plan chooses input / gate
 * thresholds per layer and site, honours the budget on held-out text (recomputed here by the runtime), counts the
 * weights it reads (plan.verified.weightBytesShare), reports the per-site frontier; its thresholds are sealed in the
 * bundle (an edited threshold fails verify-bundle, exit 2) and generate runs them.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { collectSchema, generateSchema, planSchema, trainSchema } from '../src/config/schemas.js';
import { runCollect } from '../src/stages/collect.js';
import { runTrain } from '../src/stages/train.js';
import { runPlan } from '../src/stages/plan.js';
import { runGenerate } from '../src/stages/generate.js';
import { loadModel } from '../src/model/model.js';
import { loadPredictors } from '../src/predictors/hooks.js';
import { exportBundle, verifyBundle } from '../src/bundle/bundle.js';
import { loadTokenizer } from '../src/tokenizer.js';
import { packSequences, readDocuments } from '../src/activations/data.js';
import { decodeNll } from '../src/runtime/generate.js';
import { decodeModes, planInputMajor, planProblems, readPlanFile } from '../src/runtime/plan.js';
import { cli, tmpDir } from './helpers.js';

const TMP = tmpDir('dejavu-sparsity-plan-');
process.env.DEJAVU_CACHE_DIR = path.join(TMP, 'cache');
const ROOT = path.join(import.meta.dirname, '..');
const MODEL = path.join(ROOT, 'checkpoints', 'llama-fixture');
const HELD = path.join(ROOT, 'data', 'heldout.jsonl'), CAL = path.join(ROOT, 'data', 'calibration.jsonl');
const quiet = { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) };
const D = { acts: path.join(TMP, 'acts'), pred: path.join(TMP, 'pred'), plan: path.join(TMP, 'plan'), bundle: path.join(TMP, 'bundle') };
const PLAN = { seqLen: 64, searchTokens: 512, verifyTokens: 1024, calibrationTokens: 2048, calibrationData: CAL, siteSparsities: [0.3, 0.5], maxPplIncrease: 0.03, minSpeedPerPpl: 0,
  neverSlower: false, objective: 'bytes' as const }; // the search's own choice, saving weight bytes read: machine-independent (a loaded machine's timing made options 'no faster than dense', so none were measured)

beforeAll(async () => {
  await ensureBackend('wasm');
  await runCollect(collectSchema.parse({ model: MODEL, data: HELD, out: D.acts, seqLen: 64, maxTokens: 1024, dtype: 'float32', workers: 1 }), quiet);
  await runTrain(trainSchema.parse({ activations: D.acts, out: D.pred, workers: 1, heads: { enabled: false }, mlp: { predictors: ['dense'] } }), quiet);
  await runPlan(planSchema.parse({ model: MODEL, predictors: D.pred, activations: D.acts, data: HELD, out: D.plan, ...PLAN }), quiet);
}, 900_000);
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

describe('plan with threshold sites (Llama fixture)', () => {
  it('chooses thresholds, honours the budget on held-out text (recomputed by the runtime), and counts the weights it reads', async () => {
    const f = readPlanFile(D.plan), p = f.plan;
    const withInputs = p.layers.filter((l) => l.inputs && Object.keys(l.inputs).length), cats = p.layers.filter((l) => l.mlp.mode === 'gate-threshold');
    expect(withInputs.length + cats.length, JSON.stringify(p.layers)).toBeGreaterThan(0);
    expect(p.verified.pplIncrease).toBeLessThanOrEqual(PLAN.maxPplIncrease);
    expect(p.verified.weightBytesShare!).toBeLessThan(1);
    expect(p.verified.stepWeightBytesShare!).toBeGreaterThan(p.verified.weightBytesShare!); // the LM head is read densely
    // the runtime again, on the verification sequences (after the search's), on the plan's own layout
    const model = loadModel(MODEL, { decode: { inputMajor: planInputMajor(p, { gated: true }) } }), dense = loadModel(MODEL, { decode: true });
    const preds = loadPredictors(D.pred);
    try {
      const seqs: number[][] = [];
      for await (const q of packSequences(readDocuments(HELD), { seqLen: 64, cfg: model.config, tokenizer: loadTokenizer(MODEL), maxTokens: 512 + 1024, source: HELD })) seqs.push(q);
      const verify = seqs.slice(Math.ceil(512 / 64));
      const built = decodeModes(model.config, preds, p);
      try {
        const r = decodeNll(model, verify, built.modes), d = decodeNll(dense, verify);
        expect(r.count).toBe(p.verified.tokens);
        expect(Math.exp(r.nll / r.count) / Math.exp(d.nll / d.count) - 1).toBeCloseTo(p.verified.pplIncrease, 6);
        expect(r.weights.weightsRead / r.weights.weightsTotal).toBeCloseTo(p.verified.weightBytesShare!, 9);
      } finally { built.dispose(); }
      expect(planProblems(p, model.config, () => false)).toEqual([]);
    } finally { model.dispose(); dense.dispose(); preds.dispose(); }
    // the frontier: every layer's sites at both sparsities, the chosen ones marked, in plan.json and report.md
    const sites = f.sites!;
    // (an option the cost model finds no faster than dense is not measured)
    for (const site of ['attn', 'o', 'mlp', 'down', 'gate'] as const) expect(sites.filter((s) => s.site === site).length, site).toBeLessThanOrEqual(4 * 2);
    expect(sites.filter((s) => s.site === 'down').length).toBeGreaterThan(0);
    for (const l of withInputs) for (const [k, v] of Object.entries(l.inputs!)) expect(sites.find((s) => s.layer === l.layer && s.site === k && s.chosen)?.threshold).toBe(v.threshold);
    const md = fs.readFileSync(path.join(D.plan, 'report.md'), 'utf8');
    expect(md).toMatch(/## Threshold sites: sparsity vs perplexity/);
    expect(md).toMatch(/\| \d \| down input \| \\\|x\\\| \|.* (\*\*)?[+-][\d.]+%/);
  });

  it('export-bundle seals the thresholds: the bundle verifies, an edited threshold fails verify-bundle (exit 2); generate runs the plan', async () => {
    exportBundle({ model: MODEL, predictors: D.pred, plan: D.plan, out: D.bundle, neuronMajor: false, overwrite: false, config: {} });
    expect(verifyBundle(D.bundle, MODEL).problems).toEqual([]);
    const g = await runGenerate(generateSchema.parse({ model: MODEL, bundle: D.bundle, prompt: ['The ship'], maxTokens: 8 }), quiet);
    const j = g.json as { plan: boolean; weightShare: number; tokens: number[][] };
    expect(j.plan).toBe(true);
    expect(j.weightShare).toBeLessThan(1);
    expect(j.tokens[0]!.length).toBe(8);
    const mf = path.join(D.bundle, 'manifest.json'), m = JSON.parse(fs.readFileSync(mf, 'utf8'));
    const l = m.plan.layers.find((x: { inputs?: Record<string, { threshold: number }>; mlp: { mode: string; threshold?: number } }) => x.inputs || x.mlp.mode === 'gate-threshold');
    if (l.inputs) { const k = Object.keys(l.inputs)[0]!; l.inputs[k].threshold *= 0.5; } else l.mlp.threshold *= 0.5;
    fs.writeFileSync(mf, JSON.stringify(m, null, 2));
    const { problems } = verifyBundle(D.bundle, MODEL);
    expect(problems.join('\n')).toMatch(/manifest/i);
    const r = await cli('verify-bundle', '--bundle', D.bundle);
    expect(r.code, r.out + r.err).toBe(2);
    expect(r.out).toMatch(/FAILED verification/);
  });
});
