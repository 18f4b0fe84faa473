/**
 * Issue #25 "your own checkpoint": `dejavu pipeline --model DIR --data FILE` works on its own. One file is split
 * (the last 10% of its documents held out, recorded in WORKDIR/split.json), the workdir defaults to
 * runs/<model folder name>, and sizes the schema fixes (sequence lengths, the head rank) are capped by the model
 * (opt-tiny-ref has 128 positions: the schema's 256 would fail). End to end on opt-tiny-ref at tiny sizes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import YAML from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { splitData } from '../src/activations/split.js';
import { defaultWorkdir } from '../src/stages/workdir.js';
import { isUserError } from '../src/util/errors.js';
import { cli, FIXTURES, tmpDir } from './helpers.js';

const TMP = tmpDir('dejavu-own-');
process.env.DEJAVU_CACHE_DIR = path.join(TMP, 'cache');
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const REPO = path.join(import.meta.dirname, '..');
const lines = (f: string) => fs.readFileSync(f, 'utf8').split('\n').filter((l) => l.trim());
// 20 documents of the repo's calibration text, a copy (the repo's data is never touched)
const DATA = path.join(TMP, 'mine.jsonl');
fs.writeFileSync(DATA, lines(path.join(REPO, 'data', 'calibration.jsonl')).slice(0, 20).join('\n') + '\n');
const TINY = ['--set', 'collect.maxTokens=2048', '--set', 'collect.workers=1', '--set', 'heldoutCollect.maxTokens=256',
  '--set', 'train.workers=1', '--set', 'train.heads.enabled=false', '--set', 'train.mlp.predictors=[closed-form]', '--set', 'train.mlp.ranks=[0.5]', '--set', 'train.mlp.rule=threshold',
  '--set', 'evaluate.maxTokens=128', '--set', 'evaluate.densitySweep=[]', '--set', 'evaluate.workers=1',
  '--set', 'plan.searchTokens=128', '--set', 'plan.verifyTokens=128', '--set', 'plan.calibrationRows=256', '--set', 'plan.recalls=[0.9]'];

describe('dejavu pipeline --model DIR --data FILE', () => {
  it('runs end to end: one file split 18/2 documents (recorded), sequence lengths fitted to the model, and a rerun finds everything current', async () => {
    const W = path.join(TMP, 'w');
    const r = await cli('pipeline', '--model', MODEL, '--data', DATA, '--workdir', W, '--backend', 'wasm', '--quiet', ...TINY);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain(`data: ${DATA} split into 18 calibration and 2 held-out document(s): the last 10% of the documents`);
    const rec = JSON.parse(fs.readFileSync(path.join(W, 'split.json'), 'utf8'));
    expect(rec).toMatchObject({ kind: 'dejavu-data-split', source: path.resolve(DATA), calibration: { documents: 18 }, heldout: { documents: 2 } });
    const src = lines(DATA).map((l) => JSON.parse(l).text);
    expect(lines(rec.calibration.file).map((l) => JSON.parse(l).text)).toEqual(src.slice(0, 18));
    expect(lines(rec.heldout.file).map((l) => JSON.parse(l).text)).toEqual(src.slice(18));
    // the held-out collect and the calibration one read the two parts, at the model's 128 positions (not 256)
    for (const [d, part] of [['activations-calibration', 'calibration'], ['activations-heldout', 'heldout']] as const) {
      const m = JSON.parse(fs.readFileSync(path.join(W, d, 'manifest.json'), 'utf8'));
      expect(JSON.stringify(m)).toContain(rec[part].sha256);
      expect(m.seqLen).toBe(128);
    }
    expect(fs.existsSync(path.join(W, 'bundle', 'manifest.json'))).toBe(true);
    const again = await cli('pipeline', '--model', MODEL, '--data', DATA, '--workdir', W, '--backend', 'wasm', ...TINY);
    expect(again.code, again.err).toBe(0);
    expect(again.err).toMatch(/estimate: 2 layers, d 64, ffn 256.*\n.*tokens: .*\n.*disk \(activations\).*\n.*host memory.*\n.*time on wasm/); // the estimate, before the stages
    expect(again.out).toMatch(/everything was current/);
    // stdout: the verdict first (model, plan: X× decode at +Y% perplexity, bundle), each perplexity with its text and
    // tokens, a link to the glossary; no per-layer table unless --verbose (issue #25)
    const out = again.out.trimEnd().split('\n');
    expect(out.length).toBeLessThanOrEqual(30);
    expect(out[0]).toBe(`dejavu pipeline: ${MODEL} (opt, 2 layers, d 64, ffn 256)`);
    expect(out[1]).toMatch(new RegExp(`^verdict: decode \\d+\\.\\d\\dx dense at [+-]\\d+\\.\\d{3}% perplexity \\(budget \\+1\\.0%\\); bundle: ${path.join(W, 'bundle').replace(/[/\\]/g, '.')} \\(verified\\)$`));
    expect(again.out).toMatch(/verified by the decode runtime on \d+ held-out tokens the search did not see: perplexity [\d.]+ dense -> [\d.]+ planned/);
    expect(again.out).toMatch(/predictors alone \(evaluate-recall, first 128 tokens of .*heldout.*\): perplexity [\d.]+ dense/);
    expect(again.out).toContain('docs/glossary.md');
    expect(again.out).not.toContain('| layer |');
    const verbose = await cli('pipeline', '--model', MODEL, '--data', DATA, '--workdir', W, '--backend', 'wasm', '--quiet', '--verbose', ...TINY);
    expect(verbose.code, verbose.err).toBe(0);
    expect(verbose.out.startsWith(again.out.split('\n').slice(0, 2).join('\n'))).toBe(true);
    expect(verbose.out).toContain('| layer | MLP mode | MLP recall |'); // report.md's table
    expect(verbose.out).not.toContain('head recall'); // heads off: no head columns
    expect(verbose.out).toMatch(/perplexity on the first 128 tokens of \S*heldout\S* \(oracle: /); // each perplexity with its text
    expect(verbose.out).toContain(fs.readFileSync(path.join(W, 'plan', 'report.md'), 'utf8').trimEnd()); // plan/report.md
  }, 90_000);

  it('the workdir defaults to runs/<model folder name>, and the head rank to the model width when it is below 128', async () => {
    expect(defaultWorkdir(MODEL)).toBe(path.join('runs', 'opt-tiny-ref'));
    const r = await cli('pipeline', '--model', MODEL, '--data', DATA, '--print-config');
    expect(r.code, r.err).toBe(0);
    const cfg = YAML.parse(r.out);
    expect(cfg.workdir).toBe(path.join('runs', 'opt-tiny-ref'));
    expect([cfg.collect.seqLen, cfg.evaluate.seqLen, cfg.plan.seqLen, cfg.train.heads.rank]).toEqual([128, 128, 128, 64]);
    // what the user sets wins over the fitted default
    const set = YAML.parse((await cli('pipeline', '--model', MODEL, '--data', DATA, '--set', 'collect.seqLen=32', '--workdir', 'x', '--print-config')).out);
    expect([set.collect.seqLen, set.workdir]).toEqual([32, 'x']);
    // --data with --heldout: the two parts, no split
    const two = YAML.parse((await cli('pipeline', '--model', MODEL, '--data', DATA, '--heldout', 'h.jsonl', '--print-config')).out);
    expect(two.data).toEqual({ calibration: DATA, heldout: 'h.jsonl' });
  });

  it('without --data: one error naming --data (exit 2)', async () => {
    const r = await cli('pipeline', '--model', MODEL, '--print-config');
    expect(r.code).toBe(2);
    expect(r.err).toContain('data: a data file is required (--data FILE, optionally --heldout FILE); received nothing');
  });
});

describe('splitData', () => {
  it('a plain-text file is cut at the first blank line after 90% of its characters; the parts join to the whole', async () => {
    const f = path.join(TMP, 'book.txt'), d = path.join(TMP, 'sp-txt');
    fs.mkdirSync(d);
    const paras = Array.from({ length: 30 }, (_, i) => `Paragraph ${i} has some words in it.`);
    fs.writeFileSync(f, paras.join('\n\n'));
    const s = await splitData(f, d);
    const cal = fs.readFileSync(s.calibration.file, 'utf8'), held = fs.readFileSync(s.heldout.file, 'utf8');
    expect(cal + held).toBe(paras.join('\n\n'));
    expect(held.startsWith('Paragraph ')).toBe(true);
    expect(cal.length / (cal.length + held.length)).toBeGreaterThanOrEqual(0.9);
    expect(cal.length / (cal.length + held.length)).toBeLessThan(0.95);
    expect((await splitData(f, d)).reused).toBe(true);
  });

  it('a JSONL file of one document is refused with a hint to pass --heldout', async () => {
    const f = path.join(TMP, 'one.jsonl'), d = path.join(TMP, 'sp-one');
    fs.mkdirSync(d);
    fs.writeFileSync(f, JSON.stringify({ text: 'only one' }) + '\n');
    const e = await splitData(f, d).catch((x: unknown) => x);
    expect(isUserError(e)).toBe(true);
    expect((e as Error).message).toContain('holds 1 document: a split into calibration and held-out text needs at least 2');
    expect(fs.readdirSync(d)).toEqual([]);
  });
});
