/**
 * Issue #11 case 2: a diverged predictor is never reported as good. Non-finite predictor weights or logits are a
 * user error (exit 2, hint: lower optim.lr) after training, in evaluate-recall, in export-bundle and in generate;
 * metrics that cannot be right (outside [0, 1], NaN) are an internal error (exit 1), never a table.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { collectSchema } from '../src/config/schemas.js';
import { runCollect } from '../src/stages/collect.js';
import { summarize } from '../src/stages/train.js';
import { reportTable, type EvalReport } from '../src/stages/evaluate.js';
import { checkMetrics } from '../src/predictors/finite.js';
import { openSafetensors, readTensorF32, writeSafetensors, type TensorToWrite } from '../src/checkpoint/safetensors.js';
import { manifestChecksum } from '../src/bundle/schema.js';
import type { PredictorsManifest } from '../src/predictors/store.js';
import { sha256File } from '../src/util/fsx.js';
import { f32ToF16Array } from '../src/util/half.js';
import { isUserError } from '../src/util/errors.js';
import { cli, FIXTURES, tmpDir } from './helpers.js';

const quiet = { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) };
const REPO = path.join(import.meta.dirname, '..');
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const TMP = tmpDir('dejavu-nonfinite-');
const ACTS = path.join(TMP, 'acts'), PRED = path.join(TMP, 'pred');
const small = ['--workers', '1', '--set', 'mlp.predictors=[dejavu]', '--set', 'mlp.rule=topk', '--set', 'mlp.rank=8', '--set', 'heads.rank=4', '--set', 'optim.epochs=1', '--backend', 'wasm', '--quiet'];

beforeAll(async () => {
  await ensureBackend('wasm');
  await runCollect(collectSchema.parse({ model: MODEL, data: path.join(REPO, 'data', 'calibration.jsonl'), out: ACTS, seqLen: 64, maxTokens: 1024, dtype: 'float32' }), quiet);
  const r = await cli('train-predictors', '--activations', ACTS, '--out', PRED, ...small);
  expect(r.code, r.err).toBe(0);
}, 120_000);
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

/** rewrite a safetensors file with one tensor's values replaced by NaN (metadata kept) */
function poison(file: string, tensor: string): void {
  const st = openSafetensors(file);
  const t: Record<string, TensorToWrite> = {};
  for (const [name, info] of st.tensors) {
    const data = readTensorF32(st, name);
    if (name === tensor) data[3] = NaN;
    t[name] = { dtype: info.dtype === 'F16' ? 'F16' : 'F32', shape: info.shape, data: info.dtype === 'F16' ? f32ToF16Array(data) : data };
  }
  writeSafetensors(file, t, st.metadata);
}

describe('diverged predictors (optim.lr=1e6)', () => {
  it('train-predictors exits 2 naming the layer and non-finite weights, hints at optim.lr, writes no predictors.json', async () => {
    const out = path.join(TMP, 'pred-diverged');
    const r = await cli('train-predictors', '--activations', ACTS, '--out', out, '--set', 'optim.lr=1e6', '--workers', '1', '--backend', 'wasm', '--quiet'); // default ranks and epochs
    expect(r.code, r.out + r.err).toBe(2);
    expect(r.err).toMatch(/error: training diverged: layer \d+ (MLP|head) predictor has non-finite weights \(\d+ of \d+ values are NaN or infinite/);
    expect(r.err).toMatch(/hint: .*lower optim\.lr \(now 1000000\)/);
    expect(r.out).not.toMatch(/recall/); // no table
    expect(fs.existsSync(path.join(out, 'predictors.json'))).toBe(false);
  });

  it('evaluate-recall and export-bundle refuse predictors with a NaN weight (exit 2)', async () => {
    const bad = path.join(TMP, 'pred-nan');
    fs.cpSync(PRED, bad, { recursive: true });
    poison(path.join(bad, 'layer-01.safetensors'), 'mlp.fc2.weight');
    const e = await cli('evaluate-recall', '--activations', ACTS, '--predictors', bad, '--out', path.join(TMP, 'rep-nan'), '--backend', 'wasm', '--quiet');
    expect(e.code, e.out + e.err).toBe(2);
    expect(e.err).toMatch(/layer 1 MLP predictor in .*pred-nan has non-finite weights \(1 of \d+ values are NaN or infinite, first in mlp\.fc2\.weight\)/);
    expect(e.err).toMatch(/hint: retrain .*lower optim\.lr/);
    expect(e.out).toBe('');
    const x = await cli('export-bundle', '--model', MODEL, '--predictors', bad, '--out', path.join(TMP, 'bundle-nan'), '--quiet');
    expect(x.code, x.err).toBe(2);
    expect(x.err).toMatch(/non-finite weights/);
    expect(fs.existsSync(path.join(TMP, 'bundle-nan'))).toBe(false);
  });

  it('generate refuses a bundle whose predictors hold NaN even with every checksum re-sealed (exit 2)', async () => {
    const b = path.join(TMP, 'bundle');
    expect((await cli('export-bundle', '--model', MODEL, '--predictors', PRED, '--out', b, '--quiet')).code).toBe(0);
    const f = path.join(b, 'predictors.safetensors');
    poison(f, 'layers.0.heads.fc1.weight');
    const m = JSON.parse(fs.readFileSync(path.join(b, 'manifest.json'), 'utf8'));
    m.files['predictors.safetensors'] = { sha256: sha256File(f), bytes: fs.statSync(f).size };
    m.manifestSha256 = manifestChecksum(m);
    fs.writeFileSync(path.join(b, 'manifest.json'), JSON.stringify(m));
    const g = await cli('generate', '--model', MODEL, '--bundle', b, '--prompt', 'Call me', '--max-tokens', '3', '--backend', 'wasm');
    expect(g.code, g.err).toBe(2);
    expect(g.err).toMatch(/layer 0 head predictor in .*bundle has non-finite weights/);
    expect(g.out).toBe('');
  });
});

describe('metrics that cannot be right are an internal error, never a table', () => {
  const ok = { recall: 0.9, precision: 0.4, f1: 0.55, predictedDensity: 0.2, trueDensity: 0.1 };
  it('checkMetrics accepts rates in [0, 1] and throws a non-user error otherwise', () => {
    expect(() => checkMetrics(ok, 'x')).not.toThrow();
    for (const bad of [{ ...ok, precision: 396 }, { ...ok, recall: NaN }, { ...ok, predictedDensity: -0.1 }, { ...ok, f1: Infinity }]) {
      let err: unknown = null;
      try { checkMetrics(bad, 'layer 3 MLP'); } catch (e) { err = e; }
      expect(err).toBeInstanceOf(Error);
      expect(isUserError(err)).toBe(false);
      expect((err as Error).message).toMatch(/^layer 3 MLP: impossible metrics \(/);
    }
  });
  it('the train and evaluate tables refuse them', () => {
    const pm = JSON.parse(fs.readFileSync(path.join(PRED, 'predictors.json'), 'utf8')) as PredictorsManifest;
    expect(() => summarize(PRED, pm)).not.toThrow();
    pm.layers[0]!.mlp!.validation.precision = 396;
    expect(() => summarize(PRED, pm)).toThrow(/layer 0 MLP predictor \(validation\): impossible metrics \(precision 396/);
    const rep = { layers: [{ layer: 0, mlp: { rule: {}, metrics: { ...ok, recall: NaN }, sweep: [] } }], averages: {}, heldoutTokens: 1 } as unknown as EvalReport;
    expect(() => reportTable(rep, 'x')).toThrow(/layer 0 MLP predictor \(held-out\): impossible metrics \(recall NaN/);
  });
});
