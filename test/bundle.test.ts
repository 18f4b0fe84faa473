/**
 * export-bundle / verify-bundle (issue 7): a bundle exported from tiny predictors verifies; every tamper case is
 * reported (and `dejavu verify-bundle` exits 2); the committed JSON Schema matches the zod schema; the bundle's
 * float16 predictors drive the forward pass like the predictors folder they came from.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { collectSchema, evaluateSchema, exportSchema, trainSchema } from '../src/config/schemas.js';
import { runCollect } from '../src/stages/collect.js';
import { runTrain } from '../src/stages/train.js';
import { runExport } from '../src/stages/export.js';
import { runEvaluate, type EvalReport } from '../src/stages/evaluate.js';
import { loadBundlePredictors, verifyBundle } from '../src/bundle/bundle.js';
import { BUNDLE_FORMAT_VERSION, bundleJsonSchema, bundleManifestSchema, manifestChecksum, type BundleManifest } from '../src/bundle/schema.js';
import { openCheckpoint } from '../src/checkpoint/checkpoint.js';
import { openSafetensors, readTensorF32, writeSafetensors, type TensorToWrite } from '../src/checkpoint/safetensors.js';
import { loadPredictors, predictorHooks, type LoadedPredictors } from '../src/predictors/hooks.js';
import type { PredictorsManifest } from '../src/predictors/store.js';
import { loadModel } from '../src/model/model.js';
import { disposeOutput, forward, type ForwardOutput, type SparsityHooks } from '../src/model/forward.js';
import { DecodeSession } from '../src/runtime/decoder.js';
import { decodeModes } from '../src/runtime/plan.js';
import { f16ToF32Array, f32ToF16Array } from '../src/util/half.js';
import { sha256File } from '../src/util/fsx.js';
import { predictorsContentHash } from '../src/predictors/content-hash.js';
import { isUserError } from '../src/util/errors.js';
import { sealed } from '../src/util/seal.js';
import { cli, FIXTURES, loadReference, relFrob, tmpDir } from './helpers.js';

const quiet = { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) };
const REPO = path.join(import.meta.dirname, '..');
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const TMP = tmpDir('dejavu-bundle-');
const ACTS = path.join(TMP, 'acts'), PRED = path.join(TMP, 'pred'), BUNDLE = path.join(TMP, 'bundle');
let manifest: BundleManifest;

beforeAll(async () => {
  await ensureBackend('wasm');
  await runCollect(collectSchema.parse({ model: MODEL, data: path.join(REPO, 'data', 'calibration.jsonl'), out: ACTS, seqLen: 64, maxTokens: 1536, dtype: 'float32' }), quiet);
  await runTrain(trainSchema.parse({ activations: ACTS, out: PRED, workers: 1, seed: 3, mlp: { predictors: ['dejavu'], rule: 'topk', rank: 16, targetRecall: 0.9 }, heads: { rank: 8, targetRecall: 0.6 }, optim: { epochs: 1, batchSize: 128 } }), quiet);
  manifest = (await runExport(exportSchema.parse({ model: MODEL, predictors: PRED, out: BUNDLE }), quiet)).json as BundleManifest;
});
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));


let copies = 0;
function copyBundle(): string {
  const dir = path.join(TMP, `tampered-${copies++}`);
  fs.cpSync(BUNDLE, dir, { recursive: true });
  return dir;
}
const readM = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
/** a hand edit: the manifest's own checksum is left as it was */
const editM = (dir: string, m: unknown) => fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(m, null, 2));
/** an edit by a tool that also re-seals the manifest checksum: only the deeper checks can catch it */
const writeM = (dir: string, m: Record<string, unknown>) => editM(dir, { ...m, manifestSha256: manifestChecksum(m) });

/** the tamper case is caught by verifyBundle (with a message matching re) and by the CLI with exit code 2 */
async function expectRejected(dir: string, re: RegExp, model?: string): Promise<string[]> {
  const { problems } = verifyBundle(dir, model);
  expect(problems.length, 'problems').toBeGreaterThan(0);
  expect(problems.join('\n')).toMatch(re);
  const r = await cli('verify-bundle', '--bundle', dir, ...(model ? ['--model', model] : []), '--json');
  expect(r.code, r.out + r.err).toBe(2);
  const j = JSON.parse(r.out);
  expect(j.ok).toBe(false);
  expect(j.problems).toEqual(problems);
  const t = await cli('verify-bundle', '--bundle', dir, ...(model ? ['--model', model] : []));
  expect(t.code).toBe(2);
  expect(t.out).toMatch(/FAILED verification/);
  expect(() => loadBundlePredictors(dir, model)).toThrow(/failed verification/);
  return problems;
}

describe('export-bundle + verify-bundle', () => {
  it('the exported bundle verifies, also against its checkpoint', async () => {
    expect(fs.readdirSync(BUNDLE).sort()).toEqual(['.dejavu-output.json', '.inputs.json', 'manifest.json', 'neuron-major.safetensors', 'predictors.safetensors']); // .inputs.json: what it was made from (src/stages/current.ts)
    expect(bundleManifestSchema.safeParse(readM(BUNDLE)).success).toBe(true);
    expect(verifyBundle(BUNDLE).problems).toEqual([]);
    expect(verifyBundle(BUNDLE, MODEL).problems).toEqual([]);
    for (const args of [[], ['--model', MODEL]]) {
      const r = await cli('verify-bundle', '--bundle', BUNDLE, ...args);
      expect(r.code, r.err).toBe(0);
      expect(r.out).toMatch(/OK: 2 files verified/);
    }
    for (const [f, v] of Object.entries(manifest.files)) {
      expect(v.sha256).toBe(sha256File(path.join(BUNDLE, f)));
      expect(v.bytes).toBe(fs.statSync(path.join(BUNDLE, f)).size);
    }
  });

  it('manifest and tensors describe the predictors folder (float16) and the checkpoint (neuron-major)', () => {
    const pm = JSON.parse(fs.readFileSync(path.join(PRED, 'predictors.json'), 'utf8')) as PredictorsManifest;
    const c = pm.model.config;
    expect(manifest.model.dims).toEqual({ layers: c.layers, hidden: c.hidden, ffn: c.ffn, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim });
    expect(manifest.model.fingerprint).toEqual(pm.model.fingerprint);
    expect(manifest.layers.map((l) => l.layer)).toEqual(pm.layers.map((l) => l.layer));
    const bst = openSafetensors(path.join(BUNDLE, 'predictors.safetensors'));
    const f16 = (a: Float32Array) => f16ToF32Array(f32ToF16Array(a));
    for (const l of pm.layers) {
      const bl = manifest.layers.find((x) => x.layer === l.layer)!;
      const pst = openSafetensors(path.join(PRED, l.file));
      for (const site of ['mlp', 'heads'] as const) {
        const e = l[site]!, b = bl[site]!;
        expect(b.rule).toEqual(e.rule);
        expect(b.label).toEqual(e.label);
        expect(b.input).toBe(e.input);
        expect(b.expected).toEqual({ recall: e.validation.recall, precision: e.validation.precision, predictedDensity: e.validation.predictedDensity, trueDensity: e.validation.trueDensity, source: 'validation' });
        expect(b.tensors).not.toBeNull();
        for (const [key, suffix] of [['fc1Weight', 'fc1.weight'], ['fc1Bias', 'fc1.bias'], ['fc2Weight', 'fc2.weight'], ['fc2Bias', 'fc2.bias']] as const) {
          const ref = b.tensors![key];
          expect(ref.name).toBe(`layers.${l.layer}.${site}.${suffix}`);
          expect(bst.tensors.get(ref.name)!.dtype).toBe('F16');
          expect(bst.tensors.get(ref.name)!.shape).toEqual(pst.tensors.get(`${site}.${suffix}`)!.shape);
          expect(Array.from(readTensorF32(bst, ref.name))).toEqual(Array.from(f16(readTensorF32(pst, `${site}.${suffix}`))));
        }
      }
      // neuron-major: row j = neuron j's fc1 row; fc2 transposed
      const ck = openCheckpoint(MODEL);
      const nst = openSafetensors(path.join(BUNDLE, 'neuron-major.safetensors'));
      const nm = bl.neuronMajor!;
      expect(nm.up.shape).toEqual([c.ffn, c.hidden]);
      expect(Array.from(readTensorF32(nst, nm.up.name))).toEqual(Array.from(ck.read(`model.decoder.layers.${l.layer}.fc1.weight`)));
      const fc2 = ck.read(`model.decoder.layers.${l.layer}.fc2.weight`); // [d, F]
      const down = readTensorF32(nst, nm.down.name); // [F, d]
      for (let j = 0; j < c.ffn; j += 17) for (let i = 0; i < c.hidden; i++) expect(down[j * c.hidden + i]).toBe(fc2[i * c.ffn + j]);
      expect(Array.from(readTensorF32(nst, nm.upBias!.name))).toEqual(Array.from(ck.read(`model.decoder.layers.${l.layer}.fc1.bias`)));
      expect(nm.gate).toBeNull();
    }
  });

  it('export refuses a non-empty output folder without --overwrite (made from other inputs; the same ones: nothing to do), and another checkpoint', async () => {
    const logs: string[] = [];
    await runExport(exportSchema.parse({ model: MODEL, predictors: PRED, out: BUNDLE }), { ...quiet, log: (m: string) => logs.push(m) });
    expect(logs).toEqual([`export-bundle: ${BUNDLE} is complete, current and verifies; nothing to do`]);
    const e1 = await runExport(exportSchema.parse({ model: MODEL, predictors: PRED, out: BUNDLE, neuronMajor: false }), quiet).then(() => null, (e: unknown) => e);
    expect(isUserError(e1)).toBe(true);
    expect((e1 as Error).message).toMatch(/exists and is not empty/);
    const e2 = await runExport(exportSchema.parse({ model: path.join(FIXTURES, 'llama-tiny-ref'), predictors: PRED, out: path.join(TMP, 'b-other') }), quiet).then(() => null, (e: unknown) => e);
    expect(isUserError(e2)).toBe(true);
    expect((e2 as Error).message).toMatch(/another checkpoint/);
    expect(fs.existsSync(path.join(TMP, 'b-other'))).toBe(false);
  });
});

describe('export-bundle with an evaluate-recall report', () => {
  it('takes expected metrics and perplexities from the report; refuses a report on other predictors', async () => {
    const rep = path.join(TMP, 'report');
    // the calibration activations stand in for held-out ones here: only the numbers' plumbing is under test
    const r = (await runEvaluate(evaluateSchema.parse({ activations: ACTS, predictors: PRED, out: rep, model: MODEL, seqLen: 32, maxTokens: 64, batchSize: 2 }), quiet)).json as EvalReport;
    const out = path.join(TMP, 'bundle-rep');
    const m = (await runExport(exportSchema.parse({ model: MODEL, predictors: PRED, report: rep, out }), quiet)).json as BundleManifest;
    expect(verifyBundle(out, MODEL).problems).toEqual([]);
    expect(m.perplexity).toEqual(r.perplexity!.runs);
    for (const l of m.layers) for (const site of ['mlp', 'heads'] as const) {
      const mm = r.layers.find((x) => x.layer === l.layer)![site]!.metrics;
      expect(l[site]!.expected).toEqual({ recall: mm.recall, precision: mm.precision, predictedDensity: mm.predictedDensity, trueDensity: mm.trueDensity, source: 'evaluate-recall' });
    }
    // the report records the content hash of what it evaluated: an identical copy of the folder is accepted ...
    expect(r.predictorsSha256).toBe(predictorsContentHash(PRED));
    const samePred = path.join(TMP, 'pred-copy');
    fs.cpSync(PRED, samePred, { recursive: true });
    await runExport(exportSchema.parse({ model: MODEL, predictors: samePred, report: rep, out: path.join(TMP, 'bundle-rep2') }), quiet);
    // ... one changed weight is not
    const f = path.join(samePred, 'layer-01.safetensors');
    const buf = fs.readFileSync(f);
    buf[buf.length - 2]! ^= 0x01;
    fs.writeFileSync(f, buf);
    const e = await runExport(exportSchema.parse({ model: MODEL, predictors: samePred, report: rep, out: path.join(TMP, 'bundle-rep3') }), quiet).then(() => null, (x: unknown) => x);
    expect(isUserError(e)).toBe(true);
    expect((e as Error).message).toMatch(/evaluated other predictors/);
  });

  it('issue #11 case 4: a report made before retraining into the same folder is refused (exit 2), not copied into the bundle', async () => {
    const pred = path.join(TMP, 'pred-retrain'), rep = path.join(TMP, 'report-retrain');
    const train = (seed: number) => cli('train-predictors', '--activations', ACTS, '--out', pred, '--workers', '1', '--set', `seed=${seed}`, '--set', 'mlp.rank=8', '--set', 'mlp.predictors=[dejavu]', '--set', 'mlp.rule=topk', '--set', 'heads.rank=4', '--set', 'optim.epochs=1', '--overwrite', '--backend', 'wasm', '--quiet');
    expect((await train(1)).code).toBe(0);
    expect((await cli('evaluate-recall', '--activations', ACTS, '--predictors', pred, '--out', rep, '--backend', 'wasm', '--quiet')).code).toBe(0);
    expect((await cli('export-bundle', '--model', MODEL, '--predictors', pred, '--report', rep, '--out', path.join(TMP, 'b-retrain-1'), '--quiet')).code).toBe(0);
    expect((await train(2)).code).toBe(0); // retrained into the same folder: same path, other weights
    const x = await cli('export-bundle', '--model', MODEL, '--predictors', pred, '--report', rep, '--out', path.join(TMP, 'b-retrain-2'), '--quiet');
    expect(x.code, x.err).toBe(2);
    expect(x.err).toMatch(/error: the report in .*report-retrain evaluated other predictors than .*pred-retrain holds now \(content sha256 [0-9a-f]{12}… vs [0-9a-f]{12}…; evaluated: /);
    expect(x.err).toMatch(/hint: re-run evaluate-recall on these predictors, or export without --report/);
    expect(fs.existsSync(path.join(TMP, 'b-retrain-2'))).toBe(false);
  });

  it('issue #11 case 9: a corrupt or old report.json is a user error naming the file and field (exit 2)', async () => {
    const rep = path.join(TMP, 'report');
    const good = JSON.parse(fs.readFileSync(path.join(rep, 'report.json'), 'utf8'));
    const cases: [string, string, RegExp][] = [
      ['truncated', JSON.stringify(good).slice(0, 100), /report\.json is not valid JSON/],
      // re-sealed as a tool would (util/seal): the schema must catch these
      ['layers not a list', JSON.stringify(sealed({ ...good, layers: 5 })), /report\.json is not a valid evaluate-recall report \(1 problem\):\n  - layers: /],
      ['recall above 1', JSON.stringify(sealed({ ...good, layers: [{ ...good.layers[0], mlp: { ...good.layers[0].mlp, metrics: { ...good.layers[0].mlp.metrics, recall: 1.5 } } }] })), /layers\.0\.mlp\.metrics\.recall: /],
      ['no content hash (old report)', JSON.stringify({ ...good, predictorsSha256: undefined }), /was written by an older dejavu: it does not record which predictors it evaluated/],
    ];
    for (const [what, text, re] of cases) {
      const dir = path.join(TMP, `bad-report-${what.replace(/\W+/g, '-')}`);
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'report.json'), text);
      const x = await cli('export-bundle', '--model', MODEL, '--predictors', PRED, '--report', dir, '--out', path.join(TMP, 'b-bad'), '--quiet');
      expect(x.code, `${what}: ${x.err}`).toBe(2);
      expect(x.err, what).toMatch(re);
      expect(x.err, what).toContain(path.join(dir, 'report.json'));
      expect(x.err, what).toMatch(/hint: /);
      expect(x.err, what).not.toMatch(/\n\s+at /);
    }
  });
});

describe('generate with a bundle', () => {
  it('prints the dense tokens/s beside the sparse one (same prompts and steps), in the text and in --json', async () => {
    const g = await cli('generate', '--model', MODEL, '--bundle', BUNDLE, '--prompt', 'Call me', '--max-tokens', '6', '--backend', 'wasm', '--json');
    expect(g.code, g.err).toBe(0);
    const j = JSON.parse(g.out);
    expect(j.decodeTokensPerSecond).toBeGreaterThan(0);
    expect(j.denseTokensPerSecond).toBeGreaterThan(0);
    expect(g.err).toMatch(/generate: sparse \(bundle rules\), float32 weights, (native|wasm-simd) kernels on 1 thread\(s\), 5 decode steps, [\d.]+ tokens\/s \(dense, the same prompts and steps, measured after it: [\d.]+ tokens\/s; [\d.]+x\)/);
    const d = await cli('generate', '--model', MODEL, '--prompt', 'Call me', '--max-tokens', '6', '--backend', 'wasm', '--json');
    expect(JSON.parse(d.out).denseTokensPerSecond).toBeNull(); // dense alone: nothing to compare
  });
});

describe('the manifest is checksummed (issue #11 case 3)', () => {
  const cases: [string, (m: Record<string, any>) => void, RegExp][] = [
    ['MLP top-k lowered', (m) => { m.layers[0].mlp.rule.k -= 3; }, /layers\.0\.mlp\.rule\.k is \d+, was \d+ at export/],
    ['head rule made a threshold', (m) => { m.layers[1].heads.rule = { kind: 'threshold', value: -1 }; }, /layers\.1\.heads\.rule\.(kind|value|k) /],
    ['tensor names of two layers swapped', (m) => { const a = m.layers[0].mlp.tensors.fc1Weight.name; m.layers[0].mlp.tensors.fc1Weight.name = m.layers[1].mlp.tensors.fc1Weight.name; m.layers[1].mlp.tensors.fc1Weight.name = a; }, /layers\.0\.mlp\.tensors\.fc1Weight\.name is "layers\.1\.mlp\.fc1\.weight", was "layers\.0\.mlp\.fc1\.weight" at export/],
    ['claimed recall raised', (m) => { m.layers[0].mlp.expected.recall = 1; }, /layers\.0\.mlp\.expected\.recall is 1, was/],
    ['predictor input changed', (m) => { m.layers[1].heads.input = 'x_mlp'; }, /layers\.1\.heads\.input is "x_mlp", was "x_attn(\[layer-1\])?" at export/],
  ];
  for (const [what, edit, re] of cases) {
    it(`${what}: verify-bundle exit 2 naming the field; generate refuses the bundle`, async () => {
      const dir = copyBundle();
      const m = readM(dir);
      edit(m);
      editM(dir, m);
      const problems = await expectRejected(dir, re);
      expect(problems[0]).toMatch(/^manifest\.json was modified after export \(its content no longer matches manifestSha256\)/);
      const g = await cli('generate', '--model', MODEL, '--bundle', dir, '--prompt', 'Call me', '--max-tokens', '3', '--backend', 'wasm');
      expect(g.code).toBe(2);
      expect(g.err).toMatch(/failed verification/);
      expect(g.err).toMatch(re);
    });
  }
  it('the manifest records its format and checksum; a re-sealed manifest that contradicts the files is still caught', async () => {
    const m = readM(BUNDLE);
    expect(m.formatVersion).toBe(BUNDLE_FORMAT_VERSION);
    expect(BUNDLE_FORMAT_VERSION).toBe(4);
    expect(m.manifestSha256).toMatch(/^[0-9a-f]{64}$/);
    const { manifestSha256, ...rest } = m;
    expect(manifestChecksum(rest)).toBe(manifestSha256);
    // key order and whitespace do not matter, values do
    expect(manifestChecksum(Object.fromEntries(Object.entries(rest).reverse()))).toBe(manifestSha256);
    expect(manifestChecksum({ ...rest, createdAt: '2000-01-01T00:00:00.000Z' })).not.toBe(manifestSha256);
    const dir = copyBundle();
    m.layers[0].mlp.rule.k -= 3;
    writeM(dir, m);
    await expectRejected(dir, /layers\.0\.mlp\.rule\.k is \d+, was \d+ at export \(the copy sealed in predictors\.safetensors\)/);
  });
});

describe('#25: a format-3 bundle (test/fixtures/bundle-format3: entries keyed `family`, written by the previous dejavu)', () => {
  const OLD = path.join(FIXTURES, 'bundle-format3');
  it('verifies against its checkpoint and loads with each entry renamed `predictor`; an edit is still caught by its seal; a mix of the two spellings is refused', async () => {
    const raw = readM(OLD);
    expect(raw.formatVersion).toBe(3);
    const v = verifyBundle(OLD, MODEL);
    expect(v.problems).toEqual([]);
    for (const [i, l] of v.manifest!.layers.entries()) for (const site of ['mlp', 'heads'] as const) {
      expect(l[site]!.predictor).toBe(raw.layers[i][site].family);
      expect(Object.keys(l[site]!)).not.toContain('family');
    }
    expect(v.manifest!.layers.map((l) => [l.mlp!.predictor, l.heads!.predictor])).toEqual([['exact', 'dejavu'], ['exact', 'dejavu']]);
    const r = await cli('verify-bundle', '--bundle', OLD, '--model', MODEL);
    expect(r.code, r.err).toBe(0);
    const loaded = loadBundlePredictors(OLD, MODEL);
    try {
      expect([...loaded.mlp.values()].map((s) => s.entry.predictor)).toEqual(['exact', 'exact']);
      expect([...loaded.heads.values()].map((s) => s.entry.predictor)).toEqual(['dejavu', 'dejavu']);
    } finally { loaded.dispose(); }
    // a hand edit of an old bundle: caught by its own checksum; re-sealed: caught by the copy sealed at export
    const dir = path.join(TMP, 'format3-edited');
    fs.cpSync(OLD, dir, { recursive: true });
    const m = readM(dir);
    m.layers[1].heads.rule.k -= 1;
    writeM(dir, m);
    await expectRejected(dir, /layers\.1\.heads\.rule\.k is \d+, was \d+ at export/);
    // format 3 spelled the new way, or format 4 spelled the old way: refused by name, never guessed
    const mixed: [string, (m: Record<string, any>) => void, RegExp][] = [
      ['format 3 keyed predictor', (m) => { for (const l of m.layers) { l.mlp.predictor = l.mlp.family; delete l.mlp.family; } }, /layers\.0\.mlp.*(family|predictor)/],
      ['format 4 keyed family', (m) => { m.formatVersion = 4; }, /layers\.0\.mlp.*(family|predictor)/],
    ];
    for (const [what, edit, re] of mixed) {
      const d = path.join(TMP, `format3-${what.replaceAll(' ', '-')}`);
      fs.cpSync(OLD, d, { recursive: true });
      const mm = readM(d); edit(mm); writeM(d, mm);
      const problems = await expectRejected(d, re);
      expect(problems.every((p) => p.startsWith('manifest.json')), what).toBe(true);
    }
  });
});

describe('pipeline rerun after a manifest edit (issue #11 case 3)', () => {
  it('re-exports the edited bundle instead of keeping it as current', async () => {
    const w = path.join(TMP, 'pipe');
    const cfg = path.join(TMP, 'pipe.yaml');
    fs.writeFileSync(cfg, [`model: ${MODEL}`, `workdir: ${w}`, 'backend: wasm', `data: { calibration: ${path.join(REPO, 'data', 'calibration.jsonl')}, heldout: ${path.join(REPO, 'data', 'heldout.jsonl')} }`,
      'collect: { seqLen: 32, maxTokens: 512, dtype: float32 }', 'train: { workers: 1, mlp: { rank: 8, predictors: [dejavu], rule: topk }, heads: { rank: 4 }, optim: { epochs: 1 } }',
      'evaluate: { seqLen: 32, maxTokens: 64, densitySweep: [] }'].join('\n'));
    const first = await cli('pipeline', '--config', cfg, '--quiet');
    expect(first.code, first.err).toBe(0);
    const mf = path.join(w, 'bundle', 'manifest.json');
    const m = readM(path.join(w, 'bundle'));
    const k = m.layers[0].mlp.rule.k;
    m.layers[0].mlp.rule.k = k - 1;
    editM(path.join(w, 'bundle'), m);
    const again = await cli('pipeline', '--config', cfg);
    expect(again.code, again.err).toBe(0);
    expect(again.err).toMatch(/== export-bundle: [\d.]+ s/); // ran, not "skipped"
    expect(JSON.parse(fs.readFileSync(mf, 'utf8')).layers[0].mlp.rule.k).toBe(k);
    expect(verifyBundle(path.join(w, 'bundle'), MODEL).problems).toEqual([]);
  });
});

describe('tampered bundles are rejected (verify-bundle exit code 2)', () => {
  it('a flipped byte in predictors.safetensors', async () => {
    const dir = copyBundle();
    const f = path.join(dir, 'predictors.safetensors');
    const buf = fs.readFileSync(f);
    buf[buf.length - 3]! ^= 0x10;
    fs.writeFileSync(f, buf);
    await expectRejected(dir, /predictors\.safetensors checksum mismatch/);
  });

  it('a truncated file', async () => {
    const dir = copyBundle();
    const f = path.join(dir, 'neuron-major.safetensors');
    fs.truncateSync(f, fs.statSync(f).size - 100);
    await expectRejected(dir, /neuron-major\.safetensors is \d+ bytes, the manifest says \d+/);
  });

  it('a missing file', async () => {
    const dir = copyBundle();
    fs.rmSync(path.join(dir, 'predictors.safetensors'));
    await expectRejected(dir, /predictors\.safetensors is missing/);
  });

  it('a missing or unparsable manifest', async () => {
    const dir = copyBundle();
    fs.writeFileSync(path.join(dir, 'manifest.json'), '{"formatVersion": 1,');
    await expectRejected(dir, /manifest\.json is not valid JSON/);
    fs.rmSync(path.join(dir, 'manifest.json'));
    await expectRejected(dir, /manifest\.json does not exist/);
  });

  it('manifest schema violations: formatVersion 1 (old bundle), an unknown key, a bad rule, a bad checksum string', async () => {
    const cases: [string, (m: Record<string, any>) => void, RegExp][] = [
      ['formatVersion 1 (an old bundle)', (m) => { m.formatVersion = 1; }, /manifest\.json formatVersion: bundle format 1 is not supported .*re-export/],
      ['unknown top-level key', (m) => { m.extra = true; }, /extra/],
      ['unknown predictor key', (m) => { m.layers[0].mlp.note = 'x'; }, /layers\.0\.mlp/],
      ['rule k not an integer', (m) => { m.layers[0].mlp.rule.k = 2.5; }, /layers\.0\.mlp\.rule\.k/],
      ['rule kind unknown', (m) => { m.layers[1].heads.rule = { kind: 'random', k: 2 }; }, /layers\.1\.heads\.rule/],
      ['sha256 not hex', (m) => { m.files['predictors.safetensors'].sha256 = 'abc'; }, /files\.predictors\.safetensors\.sha256/],
      ['expected recall > 1', (m) => { m.layers[0].mlp.expected.recall = 1.5; }, /layers\.0\.mlp\.expected\.recall/],
    ];
    for (const [what, edit, re] of cases) {
      const dir = copyBundle();
      const m = readM(dir);
      edit(m);
      writeM(dir, m);
      const problems = await expectRejected(dir, re);
      expect(problems.every((p) => p.startsWith('manifest.json')), what).toBe(true);
    }
  });

  it('manifest edits that pass the schema but contradict the files or the model', async () => {
    const d1 = copyBundle();
    const m1 = readM(d1);
    m1.layers[0].mlp.tensors.fc1Weight.shape = [17, 64];
    writeM(d1, m1);
    await expectRejected(d1, /tensor layers\.0\.mlp\.fc1\.weight has shape \[16,64\], manifest says \[17,64\]/);
    const d2 = copyBundle();
    const m2 = readM(d2);
    m2.layers[1].mlp.rule = { kind: 'topk', k: m2.model.dims.ffn + 1 };
    writeM(d2, m2);
    await expectRejected(d2, /MLP top-k 257 exceeds ffn 256/);
    const d3 = copyBundle();
    const m3 = readM(d3);
    m3.layers[1].layer = 5;
    writeM(d3, m3);
    await expectRejected(d3, /layer 5 is beyond the model's 2 layers/);
    const d4 = copyBundle();
    const m4 = readM(d4);
    m4.files['../evil'] = { sha256: '0'.repeat(64), bytes: 0 };
    writeM(d4, m4);
    await expectRejected(d4, /must be a plain name/);
  });

  it('a missing tensor (file rewritten, checksums fixed: only the tensor check can catch it)', async () => {
    const dir = copyBundle();
    const f = path.join(dir, 'predictors.safetensors');
    const st = openSafetensors(f);
    const drop = 'layers.1.heads.fc2.bias';
    expect(st.tensors.has(drop)).toBe(true);
    const keep: Record<string, TensorToWrite> = {};
    for (const [name, t] of st.tensors) if (name !== drop) keep[name] = { dtype: 'F16', shape: t.shape, data: f32ToF16Array(readTensorF32(st, name)) };
    writeSafetensors(f, keep, st.metadata); // a careful rewrite: metadata (with the sealed manifest) kept
    const m = readM(dir);
    m.files['predictors.safetensors'] = { sha256: sha256File(f), bytes: fs.statSync(f).size };
    writeM(dir, m);
    const problems = await expectRejected(dir, /predictors\.safetensors: tensor layers\.1\.heads\.fc2\.bias is missing/);
    expect(problems).toEqual([`predictors.safetensors: tensor ${drop} is missing`]);
  });

  it('predictor shapes that agree with the file but not with the model (file, manifest and checksums rewritten)', async () => {
    const dir = copyBundle();
    const f = path.join(dir, 'predictors.safetensors');
    const st = openSafetensors(f);
    const F = manifest.model.dims.ffn, r = manifest.layers[0]!.mlp!.rank;
    const t: Record<string, TensorToWrite> = {};
    for (const [name, info] of st.tensors) {
      let data = readTensorF32(st, name), shape = info.shape;
      if (name === 'layers.0.mlp.fc2.weight') { data = data.slice(0, (F - 8) * r); shape = [F - 8, r]; }
      if (name === 'layers.0.mlp.fc2.bias') { data = data.slice(0, F - 8); shape = [F - 8]; }
      t[name] = { dtype: 'F16', shape, data: f32ToF16Array(data) };
    }
    writeSafetensors(f, t, st.metadata);
    const m = readM(dir);
    m.layers[0].mlp.tensors.fc2Weight.shape = [F - 8, r];
    m.layers[0].mlp.tensors.fc2Bias.shape = [F - 8];
    m.files['predictors.safetensors'] = { sha256: sha256File(f), bytes: fs.statSync(f).size };
    writeM(dir, m);
    await expectRejected(dir, /layer 0 mlp\.tensors\.fc2Weight.*\[248,16\].*\[256,16\]/);
  });

  it('a head top-k beyond the model\'s heads, and a layer listed twice', async () => {
    const d1 = copyBundle();
    const m1 = readM(d1);
    m1.layers[0].heads.rule = { kind: 'topk', k: m1.model.dims.heads + 1 };
    writeM(d1, m1);
    await expectRejected(d1, /layer 0: head top-k 5 exceeds heads 4/);
    const d2 = copyBundle();
    const m2 = readM(d2);
    m2.layers[1].layer = 0;
    writeM(d2, m2);
    await expectRejected(d2, /layer 0 is listed more than once/);
  });

  it('verified against another checkpoint', async () => {
    await expectRejected(BUNDLE, /made for another checkpoint/, path.join(FIXTURES, 'llama-tiny-ref'));
    // same config, one weight changed: the weights hash tells them apart
    const other = path.join(TMP, 'other-model');
    fs.cpSync(MODEL, other, { recursive: true });
    fs.chmodSync(other, 0o755);
    const w = path.join(other, 'model.safetensors');
    fs.chmodSync(w, 0o644);
    const buf = fs.readFileSync(w);
    buf[buf.length - 1]! ^= 1;
    fs.writeFileSync(w, buf);
    await expectRejected(BUNDLE, /made for another checkpoint/, other);
    const r = await cli('verify-bundle', '--bundle', BUNDLE, '--model', path.join(TMP, 'no-such-model'));
    expect(r.code).toBe(2);
  });
});

describe('docs/bundle.schema.json', () => {
  const file = path.join(REPO, 'docs', 'bundle.schema.json');
  it('exists (README and docs/bundle.md link it) and deep-equals bundleJsonSchema() (regenerate: npm run build && npm run schema:bundle)', () => {
    expect(fs.existsSync(file), `${file} is missing`).toBe(true);
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual(JSON.parse(JSON.stringify(bundleJsonSchema())));
  });
});

describe('loadBundlePredictors drives the forward pass like the predictors folder', () => {
  /** hooks that also record every mask they return */
  function recording(p: LoadedPredictors) {
    const masks: Record<string, Float32Array> = {};
    const h = predictorHooks(p, { mlp: true, heads: true });
    const hooks: SparsityHooks = {
      mlp: (l, ctx) => { const s = h.mlp!(l, ctx); if (s && 'mask' in s) masks[`mlp.${l}`] = s.mask.dataSync() as Float32Array; return s; },
      heads: (l, ctx) => { const s = h.heads!(l, ctx); if (s && 'mask' in s) masks[`heads.${l}`] = s.mask.dataSync() as Float32Array; return s; },
    };
    return { hooks, masks };
  }
  function run(p: LoadedPredictors, ids: number[][]) {
    const model = loadModel(MODEL);
    const { hooks, masks } = recording(p);
    const out = forward(model, ids, { sparsity: hooks });
    const logits = out.logits!.dataSync() as Float32Array;
    disposeOutput(out);
    model.dispose();
    return { logits, masks };
  }

  it('mask mode: the same selections (up to float16 rounding) and logits; exactly equal to an f16-rounded folder', () => {
    const ids = loadReference(MODEL).ids;
    const before = tf.memory().numTensors;
    const folder = loadPredictors(PRED), bundle = loadBundlePredictors(BUNDLE, MODEL);
    const a = run(folder, ids), b = run(bundle, ids);
    folder.dispose(); bundle.dispose();
    const keys = Object.keys(a.masks).sort();
    expect(keys).toEqual(['heads.0', 'heads.1', 'mlp.0', 'mlp.1']);
    expect(Object.keys(b.masks).sort()).toEqual(keys);
    for (const k of keys) {
      const x = a.masks[k]!, y = b.masks[k]!;
      let same = 0, sel = 0;
      for (let i = 0; i < x.length; i++) { if (x[i] === y[i]) same++; sel += y[i]!; }
      expect(same / x.length, `${k} mask agreement`).toBeGreaterThan(0.99);
      const [site, layer] = k.split('.') as ['mlp' | 'heads', string];
      const rule = manifest.layers[Number(layer)]![site]!.rule as { kind: string; k: number };
      expect(rule.kind).toBe('topk');
      expect(sel, `${k}: top-${rule.k} per token`).toBe(rule.k * ids.length * ids[0]!.length);
    }
    // a real selection somewhere (otherwise the comparison says nothing)
    expect(manifest.layers.some((l) => (l.mlp!.rule as { k: number }).k < manifest.model.dims.ffn)).toBe(true);
    expect(relFrob(b.logits, a.logits)).toBeLessThan(5e-3);

    // a predictors folder holding the float16-rounded weights behaves exactly like the bundle
    const rounded = path.join(TMP, 'pred-f16');
    fs.cpSync(PRED, rounded, { recursive: true });
    for (const f of fs.readdirSync(rounded).filter((x) => x.endsWith('.safetensors'))) {
      const st = openSafetensors(path.join(rounded, f));
      const t: Record<string, TensorToWrite> = {};
      for (const [name, info] of st.tensors) t[name] = { dtype: 'F32', shape: info.shape, data: f16ToF32Array(f32ToF16Array(readTensorF32(st, name))) };
      writeSafetensors(path.join(rounded, f), t, { format: 'pt' });
    }
    const r = loadPredictors(rounded);
    const c = run(r, ids);
    r.dispose();
    for (const k of keys) expect(Array.from(c.masks[k]!), k).toEqual(Array.from(b.masks[k]!));
    expect(Array.from(c.logits)).toEqual(Array.from(b.logits));
    expect(tf.memory().numTensors).toBe(before);
  });

  it('decode picks (decodeModes of the bundle) select the same ids as the mask hooks for the same one-token inputs; a session with them == the masked forward', () => {
    const bundle = loadBundlePredictors(BUNDLE);
    const model = loadModel(MODEL, { decode: true });
    const built = decodeModes(model.config, bundle, null);
    const outs: ForwardOutput[] = [];
    try {
      const ids = loadReference(MODEL).ids.map((r) => [r[5]!]); // [B, 1]
      const B = ids.length;
      const { mlp: mlpModes, heads: headModes } = built.modes;
      expect([...mlpModes, ...headModes].every((m) => m.mode === 'select')).toBe(true);
      const rowsOf = (t: tf.Tensor, b: number) => { const W = t.shape[t.rank - 1]!; return (t.dataSync() as Float32Array).slice(b * W, (b + 1) * W); };
      const idsOfMask = (m: tf.Tensor, b: number) => { const r = rowsOf(m, b); return Array.from(r.keys()).filter((j) => r[j]); };
      const seen: Record<string, { mask: number[][]; pick: number[][] }> = {};
      const h = predictorHooks(bundle, { mlp: true, heads: true });
      // the mask hooks, and the decode picks on the very inputs the hooks got (each one-token row as a host vector)
      const hooks: SparsityHooks = {
        mlp: (l, ctx) => {
          const s = h.mlp!(l, ctx) as { mask: tf.Tensor };
          const m = mlpModes[l]!;
          if (m.mode !== 'select') throw new Error(`layer ${l}: MLP mode ${m.mode}`);
          seen[`mlp.${l}`] = { mask: Array.from({ length: B }, (_, b) => idsOfMask(s.mask, b)),
            pick: Array.from({ length: B }, (_, b) => Array.from(m.pick({ h: rowsOf(ctx.hMlp, b), xMlp: rowsOf(ctx.xMlp, b), xAttn: rowsOf(ctx.xAttn, b) }))) };
          return s;
        },
        heads: (l, ctx) => {
          const s = h.heads!(l, ctx) as { mask: tf.Tensor };
          const m = headModes[l]!;
          if (m.mode !== 'select') throw new Error(`layer ${l}: head mode ${m.mode}`);
          seen[`heads.${l}`] = { mask: Array.from({ length: B }, (_, b) => idsOfMask(s.mask, b)),
            pick: Array.from({ length: B }, (_, b) => Array.from(m.pick({ xAttn: rowsOf(ctx.xAttn, b), xAttnPrev: rowsOf(ctx.xAttnPrev, b) }))) };
          return s;
        },
      };
      outs.push(forward(model, ids, { sparsity: hooks }));
      outs.push(forward(model, ids));
      expect(Object.keys(seen).sort()).toEqual(['heads.0', 'heads.1', 'mlp.0', 'mlp.1']);
      for (const [k, v] of Object.entries(seen)) {
        expect(v.pick, k).toEqual(v.mask);
        const rule = bundle.bundle.layers[Number(k.split('.')[1])]![k.startsWith('mlp') ? 'mlp' : 'heads']!.rule as { k: number };
        for (const row of v.pick) expect(row.length).toBe(rule.k);
      }
      // the rows select different ids somewhere (a pick that ignored its input would fail above)
      expect(Object.values(seen).some((v) => v.mask.some((r) => JSON.stringify(r) !== JSON.stringify(v.mask[0])))).toBe(true);
      // the decode session with the same picks, one step at position 0 for all rows == the masked forward
      const masked = outs[0]!.logits!.dataSync() as Float32Array;
      const s = new DecodeSession(model, built.modes, B);
      const lg = s.step(ids.map((r) => r[0]!));
      expect(relFrob(lg, masked)).toBeLessThan(1e-5);
      expect(relFrob(masked, outs[1]!.logits!.dataSync())).toBeGreaterThan(1e-4); // and the selection matters
      expect(s.counts.mlpSelected).toBeLessThan(s.counts.mlpTotal);
    } finally {
      for (const o of outs) disposeOutput(o);
      built.dispose();
      model.dispose();
      bundle.dispose();
    }
  });
});
