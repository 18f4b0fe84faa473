/**
 * A plan priced for the GPU decode runtime (plan.runtime gpu, src/runtime/costs.ts gpuKernelCosts) on whatever WebGPU
 * adapter this machine has (CI: Mesa lavapipe; skipped, with the reason, when there is none):
 *  - the plan records the runtime it was priced for (gpu; cpu for a CPU plan), its cost model's entries keyed by the
 *    adapter, every GPU table less than the whole step (shapeProblems), a second run from the cache;
 *  - metamorphic: the same plan inputs priced on a GPU where every sparse mode is slower than dense (the measured GPU
 *    costs transformed: selected rows, lossless rows and predictors above the dense MLP, no head saving) choose every
 *    layer dense; priced where they are cheap (the measured costs divided) the same budget predicts;
 *  - generate notes (stderr) a plan run on another runtime than it was priced for, and says nothing for a match.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { collectSchema, planSchema, trainSchema } from '../src/config/schemas.js';
import { runCollect } from '../src/stages/collect.js';
import { runTrain } from '../src/stages/train.js';
import { runPlan } from '../src/stages/plan.js';
import { exportBundle } from '../src/bundle/bundle.js';
import { shapeProblems, type ShapeCosts } from '../src/runtime/costs.js';
import type { PlanFile } from '../src/runtime/plan.js';
import { closeGpu, getGpu } from '../src/runtime/gpu/device.js';
import { gpuDenseModes, gpuPlanModes, gpuSession, type GpuModes } from '../src/runtime/gpu/session.js';
import { loadModel } from '../src/model/model.js';
import { loadPredictors } from '../src/predictors/hooks.js';
import { cli, FIXTURES, tmpDir } from './helpers.js';

let why = '';
const gpu = await getGpu().catch((e: unknown) => { why = (e as Error).message; return null; });
if (!gpu) console.warn(`test/plan-gpu: skipped: ${why}`);

const TMP = tmpDir('dejavu-plan-gpu-');
process.env.DEJAVU_CACHE_DIR = path.join(TMP, 'cache');
const logs: string[] = [];
const quiet = { log: (s: string) => { logs.push(s); }, progress: () => ({ update: () => undefined, stop: () => undefined }) };
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const HELDOUT = path.join(import.meta.dirname, '..', 'data', 'heldout.jsonl');
const ACTS = path.join(TMP, 'acts'), CF = path.join(TMP, 'cf');
const SMALL = { seqLen: 32, searchTokens: 64, verifyTokens: 128, calibrationRows: 1024, batchSize: 4, sites: false, gpuTimingSteps: 24 } as const;
const planCfg = (name: string, extra: Record<string, unknown>) => planSchema.parse({ model: MODEL, predictors: CF, activations: ACTS, out: path.join(TMP, name), ...SMALL, ...extra });
const cacheOf = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, 'kernel-costs.json'), 'utf8')) as { shapes: Record<string, ShapeCosts>; predictors: Record<string, number> };

beforeAll(async () => {
  if (!gpu) return;
  await ensureBackend('wasm');
  await runCollect(collectSchema.parse({ model: MODEL, data: HELDOUT, out: ACTS, seqLen: 64, maxTokens: 2048, dtype: 'float32', rowsPerShard: 1024 }), quiet);
  await runTrain(trainSchema.parse({ activations: ACTS, out: CF, workers: 1, heads: { enabled: true }, mlp: { predictors: ['closed-form'], ranks: [0.5], rule: 'threshold' } }), quiet);
}, 300_000);
afterAll(async () => { await closeGpu(); fs.rmSync(TMP, { recursive: true, force: true }); });

/** the GPU entries of the measured cache, transformed by `f`, as the only cache in `dir` */
function seed(dir: string, f: (s: ShapeCosts) => void, pred: (ms: number) => number): void {
  const j = cacheOf(process.env.DEJAVU_CACHE_DIR!);
  j.shapes = Object.fromEntries(Object.entries(j.shapes).filter(([k]) => k.startsWith('gpu|')));
  j.predictors = Object.fromEntries(Object.entries(j.predictors).filter(([k]) => k.startsWith('gpu|')).map(([k, v]) => [k, pred(v)]));
  expect(Object.keys(j.shapes)).toHaveLength(1);
  expect(Object.keys(j.predictors).length).toBeGreaterThan(0);
  for (const s of Object.values(j.shapes)) f(s);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'kernel-costs.json'), JSON.stringify(j));
}

async function planWith(name: string, extra: Record<string, unknown>, cache?: string): Promise<{ file: PlanFile; log: string[] }> {
  const saved = process.env.DEJAVU_CACHE_DIR!, from = logs.length;
  if (cache) process.env.DEJAVU_CACHE_DIR = cache;
  try { return { file: (await runPlan(planCfg(name, extra), quiet)).json as PlanFile, log: logs.slice(from) }; } finally { process.env.DEJAVU_CACHE_DIR = saved; }
}

describe.skipIf(!gpu)('a plan priced for the GPU decode runtime', () => {
  it('every op a GPU step runs says what it computes (what the cost model times by name), in every mode', async () => {
    const model = loadModel(MODEL, { decode: true }), preds = loadPredictors(CF);
    try {
      const L = model.config.layers, F = model.config.ffn, dense = gpuDenseModes(L);
      const names = async (modes: GpuModes, o: { unfused?: boolean; losslessOneRows?: number; splitMlp?: boolean } = {}) => {
        const s = await gpuSession(model, modes, { capacity: 16, ...o });
        try { return s.opNames(0); } finally { s.dispose(); }
      };
      const plain = ['qkv', 'attn', 'o', 'up', 'down', 'reduce'], one = ['qkv', 'attn', 'o', 'updown', 'reduce']; // (one: up, act, down's rows in one dispatch)
      expect(await names(dense)).toEqual(plain);
      expect(await names(dense, { unfused: true })).toEqual(['qkv', 'qkv', 'attn', 'o', 'up', 'up', 'down', 'reduce']); // a norm dispatch counts with its matvec
      const lossless: GpuModes = { ...dense, mlp: dense.mlp.map(() => ({ mode: 'lossless' })) };
      expect(await names(lossless)).toEqual(one);
      expect(await names(lossless, { losslessOneRows: 0 })).toEqual(plain);
      const sel = { mlp: dense.mlp.map(() => ({ mode: 'select' as const, sets: [Int32Array.from([1, 5, 9])] })), heads: dense.heads.map(() => ({ mode: 'select' as const, sets: [Int32Array.from([0, 2])] })) };
      expect(await names(sel)).toEqual(one);
      expect(await names(sel, { splitMlp: true })).toEqual(plain);
      const pred = await names(gpuPlanModes(model.config, preds, null)); // the trained rules: predicted MLPs and heads
      expect(pred.filter((n) => n === 'pred').length).toBeGreaterThanOrEqual(2);
      expect(pred.filter((n) => n !== 'pred')).toEqual(one);
      const at = { t: 0.5 };
      expect(await names({ ...dense, inputs: Array.from({ length: L }, () => ({ attn: at, o: at, mlp: at })) })).toEqual(['site.attn', 'attn', 'site.o', 'site.o', 'site.mlp', 'site.mlp', 'site.down', 'reduce']); // (fc1's site, then its chunks' sum)
      expect(await names({ ...dense, inputs: Array.from({ length: L }, () => ({ down: at })) })).toEqual(['qkv', 'attn', 'o', 'up', 'site.down', 'reduce']);
      expect(F).toBeGreaterThan(9);
    } finally { preds.dispose(); model.dispose(); }
  }, 120_000);

  it('records runtime gpu (a CPU plan: cpu); its costs are the GPU\'s, keyed by the adapter, parts less than the whole step; a second run reads them from the cache', async () => {
    const g = await planWith('gpu', { runtime: 'gpu', maxPplIncrease: 0.01 });
    expect(g.file.plan.runtime).toBe('gpu');
    expect(g.log.join('\n')).toMatch(/cost model measured .*priced for the GPU decode runtime's WGSL kernels/);
    const c = await planWith('cpu', { maxPplIncrease: 0.01 });
    expect(c.file.plan.runtime).toBe('cpu');
    expect(c.log.join('\n')).toMatch(/priced for the CPU runtime's kernels/);
    const j = cacheOf(process.env.DEJAVU_CACHE_DIR!);
    const keys = Object.keys(j.shapes), gk = keys.filter((k) => k.startsWith('gpu|'));
    expect(keys).toHaveLength(2);
    expect(gk).toHaveLength(1);
    expect(gk[0]).toContain(gpu!.info.description);
    const gs = j.shapes[gk[0]!]!, cs = j.shapes[keys.find((k) => !k.startsWith('gpu|'))!]!;
    expect(shapeProblems(gs, 2, 4)).toEqual([]);
    expect(gs.stepMs).not.toBe(cs.stepMs); // measured there, not copied
    expect(gs.heads.map(([n]) => n)).toEqual([1, 2, 3]);
    // a head predictor was priced on the GPU (the trained heads)
    expect(Object.keys(j.predictors).some((k) => k.startsWith('gpu|') && k.includes('|out4|'))).toBe(true);
    const again = await planWith('gpu-2', { runtime: 'gpu', maxPplIncrease: 0.01 });
    expect(again.log.join('\n')).toMatch(/cost model from the cache/);
    expect(again.file.plan.runtime).toBe('gpu');
  }, 600_000);

  it('metamorphic: where every sparse mode is slower on the GPU the plan is dense; where they are cheap the same budget predicts', async () => {
    await planWith('gpu-measure', { runtime: 'gpu', maxPplIncrease: 0.5 }); // (the measured GPU costs in the cache)
    const slow = path.join(TMP, 'cache-slow'), cheap = path.join(TMP, 'cache-cheap');
    // slower than dense: selected rows at 1.5x the dense MLP, the lossless second projection at 1.5x down, no head saving
    seed(slow, (s) => {
      const m = s.upMs + s.downMs;
      s.select = s.select.map(([p]) => [p, 1.5 * m]); s.skip = s.skip.map(([p]) => [p, 1.5 * s.downMs]); s.heads = s.heads.map(([n]) => [n, 0]);
    }, (ms) => ms);
    seed(cheap, (s) => { s.select = s.select.map(([p, ms]) => [p, ms / 5]); s.heads = s.heads.map(([n, ms]) => [n, Math.max(ms, s.stepMs / 20)]); }, (ms) => ms / 5);
    // neverSlower off: the search's choice itself, not the verification's fallback
    const a = await planWith('gpu-slow', { runtime: 'gpu', maxPplIncrease: 0.5, neverSlower: false }, slow);
    expect(a.log.join('\n')).toMatch(/cost model from the cache/);
    expect(a.file.plan.layers.map((l) => [l.mlp.mode, l.heads.mode, l.inputs ?? null])).toEqual([['dense', 'dense', null], ['dense', 'dense', null]]);
    expect(a.file.plan.estimate.speedup).toBeCloseTo(1, 9);
    const b = await planWith('gpu-cheap', { runtime: 'gpu', maxPplIncrease: 0.5, neverSlower: false }, cheap);
    expect(b.file.plan.layers.some((l) => l.mlp.mode === 'predicted' || l.heads.mode === 'predicted')).toBe(true);
    expect(b.file.plan.estimate.speedup).toBeGreaterThan(1);
    expect(b.file.plan.runtime).toBe('gpu');
  }, 600_000);

  it('input-threshold sites priced on the GPU: each site\'s dense and input-sparse dispatches in the cache; the plan within its budget', async () => {
    const r = await planWith('gpu-sites', { runtime: 'gpu', maxPplIncrease: 0.05, sites: true, siteSparsities: [0.5], calibrationTokens: 1024, neverSlower: false });
    expect(r.file.plan.runtime).toBe('gpu');
    const j = JSON.parse(fs.readFileSync(path.join(process.env.DEJAVU_CACHE_DIR!, 'kernel-costs.json'), 'utf8')) as { sites?: Record<string, Record<string, { denseMs: number; sparse: [number, number][] }>> };
    const gk = Object.keys(j.sites ?? {}).filter((k) => k.startsWith('gpu|'));
    expect(gk).toHaveLength(1);
    const sites = j.sites![gk[0]!]!;
    expect(Object.keys(sites).sort()).toEqual(['attn', 'down', 'mlp', 'o']);
    for (const [name, t] of Object.entries(sites)) {
      expect(t.denseMs, name).toBeGreaterThan(0);
      expect(t.sparse.map(([p]) => p), name).toEqual([0, 1]);
      for (const [, ms] of t.sparse) expect(Number.isFinite(ms) && ms > 0, name).toBe(true);
    }
    expect(r.file.plan.verified.pplIncrease).toBeLessThanOrEqual(0.05);
  }, 600_000);

  it('generate notes on stderr a plan priced for another runtime than it runs on, and nothing for a match', async () => {
    const bundle = (plan: string) => {
      const out = path.join(TMP, `bundle-${plan}`);
      exportBundle({ model: MODEL, predictors: CF, plan: path.join(TMP, plan), out, neuronMajor: true, overwrite: false, config: {} });
      return out;
    };
    const run = (b: string, runtime: string) => cli('generate', '--model', MODEL, '--bundle', b, '--prompt', 'The ship', '--max-tokens', '4', '--runtime', runtime, '--backend', 'wasm');
    const note = (priced: string, on: string) => `note: the bundle's plan was priced for the ${priced} runtime's kernels and runs here on the ${on} runtime`;
    const bg = bundle('gpu'), bc = bundle('cpu');
    for (const [b, runtime, priced] of [[bg, 'gpu', 'gpu'], [bg, 'cpu', 'gpu'], [bc, 'gpu', 'cpu'], [bc, 'cpu', 'cpu']] as const) {
      const r = await run(b, runtime);
      expect(r.code, r.err).toBe(0);
      if (priced === runtime) expect(r.err, `${priced} on ${runtime}`).not.toContain('was priced for');
      else expect(r.err, `${priced} on ${runtime}`).toContain(note(priced, runtime));
    }
  }, 600_000);
});
