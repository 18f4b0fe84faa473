/**
 * JSON artifacts read back (activations manifest.json / summary.json / progress.json, predictors.json): each has a
 * zod schema; a damaged one is one exit-2 error naming the file and every bad field by its dotted path.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collectProgressSchema, readManifest, readSummary } from '../src/activations/dataset.js';
import { readPredictorsManifest } from '../src/predictors/store.js';
import { issueLines } from '../src/util/json-artifact.js';
import { sealed } from '../src/util/seal.js';
import { cli, FIXTURES, tmpDir } from './helpers.js';

const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const TMP = tmpDir('dejavu-artifacts-');
const ACTS = path.join(TMP, 'acts');
const PRED = path.join(TMP, 'pred');
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

beforeAll(async () => {
  const words = 'the whale ship sea captain ahab ishmael white harpoon ocean deep storm sail mast crew voyage night'.split(' ');
  const lines = Array.from({ length: 40 }, (_, i) => JSON.stringify({ text: Array.from({ length: 30 }, (_, j) => words[(i * 7 + j * 3) % words.length]).join(' ') }));
  fs.writeFileSync(path.join(TMP, 'd.jsonl'), lines.join('\n') + '\n');
  const c = await cli('collect-activations', '--model', MODEL, '--data', path.join(TMP, 'd.jsonl'), '--out', ACTS, '--seq-len', '16', '--max-tokens', '256', '--batch-size', '4', '--set', 'rowsPerShard=64', '--backend', 'wasm', '--quiet');
  expect(c.code, c.err).toBe(0);
  const t = await cli('train-predictors', '--activations', ACTS, '--out', PRED, '--workers', '1', '--layers', '0,1', '--backend', 'wasm', '--quiet');
  expect(t.code, t.err).toBe(0);
});

/** a copy of folder `src` with `file` (JSON) edited by `edit` */
function damaged(src: string, name: string, file: string, edit: (o: Record<string, any>) => void): string {
  const d = path.join(TMP, name);
  fs.cpSync(src, d, { recursive: true });
  const f = path.join(d, file);
  const o = JSON.parse(fs.readFileSync(f, 'utf8'));
  edit(o);
  // predictors.json is sealed (util/seal): re-sealed as a tool would, so that these cases test the schema
  fs.writeFileSync(f, JSON.stringify(file === 'predictors.json' ? sealed(o) : o, null, 2));
  return d;
}

describe('artifacts written by the stages read back through their schemas', () => {
  it('the manifest, summary and predictors.json of real runs are valid', () => {
    expect(readManifest(ACTS).status).toBe('complete');
    expect(readSummary(ACTS)!.layers.length).toBe(readManifest(ACTS).layers.length);
    const pm = readPredictorsManifest(PRED);
    expect(pm.layers.map((l) => l.layer)).toEqual([0, 1]);
    expect(pm.layers[0]!.mlp!.candidates!.some((c) => c.chosen)).toBe(true);
  });

  it('a damaged activations manifest: exit 2 listing every bad field by dotted path', async () => {
    const d = damaged(ACTS, 'acts-bad', 'manifest.json', (o) => { o.dims.ffn = -1; o.model.config.activation = 'tanh'; o.layers = 'all'; delete o.seqLen; });
    const r = await cli('train-predictors', '--activations', d, '--out', path.join(TMP, 'p-bad'), '--backend', 'wasm', '--quiet');
    expect(r.code).toBe(2);
    expect(r.err).toContain(`${path.join(d, 'manifest.json')} is not a valid activations manifest (4 problems)`);
    for (const p of ['dims.ffn: ', 'model.config.activation: ', 'layers: ', 'seqLen: missing']) expect(r.err).toContain(`  - ${p}`);
    expect(r.err).toMatch(/found -1/);
    expect(r.err).toMatch(/hint: re-run collect-activations/);
    expect(r.err).not.toMatch(/at .*\.ts:\d+/); // no stack
  });

  it('a damaged summary.json: exit 2 naming the bad field', async () => {
    const d = damaged(ACTS, 'acts-bad-summary', 'summary.json', (o) => { o.layers[1].mlpDensity = 'high'; });
    expect(() => readSummary(d)).toThrow(/summary\.json is not a valid activations summary \(1 problem\):\n {2}- layers\.1\.mlpDensity: .*found "high"/);
    const r = await cli('train-predictors', '--activations', d, '--out', path.join(TMP, 'p-bad-summary'), '--workers', '1', '--layers', '1', '--set', 'mlp.predictors=[dejavu]', '--set', 'mlp.rank=8', '--set', 'heads.enabled=false', '--set', 'optim.epochs=1', '--backend', 'wasm', '--quiet');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/layers\.1\.mlpDensity/);
  });

  it('a damaged predictors.json: exit 2 listing every bad field by dotted path (evaluate and export)', async () => {
    const d = damaged(PRED, 'pred-bad', 'predictors.json', (o) => { o.layers[0].mlp.rule = { kind: 'topk', k: -3 }; o.layers[1].heads.validation.recall = 2; o.model.fingerprint.config = 'nope'; });
    const e = await cli('evaluate-recall', '--activations', ACTS, '--predictors', d, '--out', path.join(TMP, 'r-bad'), '--backend', 'wasm', '--quiet');
    expect(e.code).toBe(2);
    expect(e.err).toContain(`${path.join(d, 'predictors.json')} is not a valid predictors manifest (3 problems)`);
    for (const p of ['layers.0.mlp.rule', 'layers.1.heads.validation.recall: ', 'model.fingerprint.config: ']) expect(e.err).toContain(`  - ${p}`);
    const x = await cli('export-bundle', '--model', MODEL, '--predictors', d, '--out', path.join(TMP, 'b-bad'));
    expect(x.code).toBe(2);
    expect(x.err).toContain('layers.1.heads.validation.recall');
  });

  it('predictors.json keeps fields it does not know (newer writers) and accepts an infinite threshold written as null', () => {
    const d = damaged(PRED, 'pred-extra', 'predictors.json', (o) => { o.layers[0].mlp.futureField = { a: 1 }; o.layers[0].mlp.candidates[0].extra = 3; o.layers[1].heads.rule = { kind: 'threshold', value: null }; });
    const pm = readPredictorsManifest(d);
    expect((pm.layers[0]!.mlp as Record<string, unknown>).futureField).toEqual({ a: 1 });
    expect(pm.layers[1]!.heads!.rule).toEqual({ kind: 'threshold', value: Infinity }); // as the schema's type says: null is +Infinity, never 0 in a comparison
  });

  it('#25: predictors.json of format 2 (a fixture written by the previous dejavu, keys `family` / `hidden`) reads with the keys mapped; evaluate-recall uses it; a file with neither name is refused (exit 2)', async () => {
    const OLD = path.join(FIXTURES, 'predictors-format2');
    const raw = JSON.parse(fs.readFileSync(path.join(OLD, 'predictors.json'), 'utf8'));
    expect(raw.formatVersion).toBe(2);
    const pm = readPredictorsManifest(OLD);
    for (const [i, l] of pm.layers.entries()) for (const site of ['mlp', 'heads'] as const) {
      const was = raw.layers[i][site];
      expect(l[site]!.predictor).toBe(was.family);
      expect(l[site]!.hiddenActivation).toBe(was.hidden);
      expect(Object.keys(l[site]!)).not.toContain('family');
      expect(l[site]!.candidates?.map((c) => c.predictor)).toEqual(was.candidates?.map((c: { family: string }) => c.family));
    }
    expect(pm.layers.map((l) => [l.mlp!.predictor, l.heads!.predictor])).toEqual([['exact', 'dejavu'], ['exact', 'dejavu']]);
    // evaluate-recall on it (the same model as ACTS): the report names each layer's predictor
    const pred = path.join(TMP, 'pred-format2');
    fs.cpSync(OLD, pred, { recursive: true });
    const rep = path.join(TMP, 'r-format2');
    const e = await cli('evaluate-recall', '--activations', ACTS, '--predictors', pred, '--out', rep, '--backend', 'wasm', '--quiet');
    expect(e.code, e.err).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(rep, 'report.json'), 'utf8')).layers.map((l: { mlp: { predictor: string } }) => l.mlp.predictor)).toEqual(['exact', 'exact']);
    // never misread: an entry with neither name is refused by name, with the hint to retrain
    const d = damaged(OLD, 'pred-format2-bad', 'predictors.json', (o) => { delete o.layers[0].mlp.family; });
    const x = await cli('evaluate-recall', '--activations', ACTS, '--predictors', d, '--out', path.join(TMP, 'r-format2-bad'), '--backend', 'wasm', '--quiet');
    expect(x.code).toBe(2);
    expect(x.err).toContain(`${path.join(d, 'predictors.json')} is not a valid predictors manifest (1 problem)`);
    expect(x.err).toContain('  - layers.0.mlp.predictor: missing');
    expect(x.err).toMatch(/hint: re-run train-predictors/);
    // and format 3 files must use the new names: the old one there is not read as the new one
    const y = damaged(PRED, 'pred-3-oldkeys', 'predictors.json', (o) => { o.layers[0].mlp.family = o.layers[0].mlp.predictor; delete o.layers[0].mlp.predictor; });
    expect(() => readPredictorsManifest(y)).toThrow(/layers\.0\.mlp\.predictor: missing/);
  });

  it('progress.json: the schema names what is wrong (collect logs it and restarts from shard 0)', () => {
    const raw = { shardsDone: 2, tokens: 64, seconds: 1, shards: [{ sha256: { 'layer-00/shard-00000.arrow': 'x' }, tokens: 32, stats: {} }] };
    const r = collectProgressSchema.safeParse(raw);
    expect(r.success).toBe(false);
    const lines = issueLines(r.error!, raw);
    expect(lines).toEqual(expect.arrayContaining([expect.stringMatching(/^shards\.0\.sha256\.layer-00\/shard-00000\.arrow: .*found "x"$/), expect.stringMatching(/^shards: shards must list one record per complete shard/)]));
  });
});
