/**
 * Issue 15 (worker threads): collect, train and evaluate give the same bytes with 1 and 2 workers; a killed worker
 * fails its stage with an error naming it and leaves nothing half-written; a collection a dead worker stopped
 * resumes to the same dataset.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { FIXTURES, cli, files, tmpDir } from './helpers.js';

const REPO = path.join(import.meta.dirname, '..');
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const DATA = path.join(REPO, 'data', 'calibration.jsonl'), HELD_DATA = path.join(REPO, 'data', 'heldout.jsonl');
const TMP = tmpDir('dejavu-parallel-');
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));
beforeAll(async () => { await ensureBackend('wasm'); });

const json = (f: string) => JSON.parse(fs.readFileSync(f, 'utf8'));

/** every file byte-identical, except `loose` files, which are compared as JSON after `strip` (null: by the caller) */
function expectSameFolder(a: string, b: string, loose: Record<string, ((v: any) => unknown) | null> = {}) {
  expect(files(b)).toEqual(files(a));
  for (const f of files(a)) {
    if (loose[f] === null) continue;
    if (loose[f]) expect(loose[f]!(json(path.join(b, f))), f).toEqual(loose[f]!(json(path.join(a, f))));
    else expect(fs.readFileSync(path.join(b, f)).equals(fs.readFileSync(path.join(a, f))), `${f} differs`).toBe(true);
  }
}

const collectArgs = (out: string, workers: number, extra: string[] = []) => ['collect-activations', '--model', MODEL, '--data', DATA, '--out', out,
  '--seq-len', '32', '--batch-size', '2', '--max-tokens', String(32 * 24), '--set', 'rowsPerShard=128', '--workers', String(workers), '--backend', 'wasm', '--quiet', ...extra];
const noTiming = (s: Record<string, unknown>) => { const { seconds: _s, tokensPerSecond: _t, timing: _x, workers: _w, resumedFromShard: _r, ...rest } = s; return rest; };

async function withKilledWorker<T>(spec: string, f: () => Promise<T>): Promise<T> {
  process.env.DEJAVU_TEST_KILL_WORKER = spec;
  try { return await f(); } finally { delete process.env.DEJAVU_TEST_KILL_WORKER; }
}

describe('collect-activations on worker threads', () => {
  const one = path.join(TMP, 'c-one'), out = path.join(TMP, 'c');
  it('2 workers write the same shards, manifest and statistics as 1 (same output path)', async () => {
    expect((await cli(...collectArgs(out, 1))).code).toBe(0);
    fs.renameSync(out, one);
    const r = await cli(...collectArgs(out, 2), '--json');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out).summary.workers).toBe(2);
    expect(json(path.join(out, 'manifest.json')).shards).toBe(6);
    expectSameFolder(one, out, { 'summary.json': noTiming });
  });

  it('a killed worker fails the stage naming it; complete shards stay; the re-run resumes to the same dataset', async () => {
    const dir = path.join(TMP, 'c-killed');
    const r = await withKilledWorker('1:3', () => cli(...collectArgs(dir, 2)));
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/collect worker 2 of 2 \(thread \d+\) exited unexpectedly \(exit code 70\) while running the batch of sequences \d+\.\.\d+/);
    // nothing half-written: only complete shards (named in progress.json), no temp files
    const left = files(dir);
    expect(left.filter((f) => f.includes('.tmp'))).toEqual([]);
    const progress = json(path.join(dir, 'progress.json'));
    expect(left.filter((f) => f.endsWith('.arrow')).length).toBe(progress.shardsDone * 2);
    expect(json(path.join(dir, 'manifest.json')).status).toBe('in-progress');
    const again = await cli(...collectArgs(dir, 2), '--json');
    expect(again.code).toBe(0);
    expect(JSON.parse(again.out).summary.resumedFromShard).toBe(progress.shardsDone);
    // same dataset as the uninterrupted run (apart from its own path in the manifest)
    for (const f of files(one).filter((x) => x.endsWith('.arrow'))) expect(fs.readFileSync(path.join(dir, f)).equals(fs.readFileSync(path.join(one, f))), f).toBe(true);
    const strip = (m: any) => ({ ...m, config: { ...m.config, out: null } });
    expect(strip(json(path.join(dir, 'manifest.json')))).toEqual(strip(json(path.join(one, 'manifest.json'))));
  });
});

describe('train-predictors and evaluate-recall on worker threads', () => {
  const acts = path.join(TMP, 't-acts'), held = path.join(TMP, 't-held'), pred = path.join(TMP, 'pred');
  const trainArgs = (o: string, workers: number) => ['train-predictors', '--activations', acts, '--out', o, '--workers', String(workers), '--set', 'heads.rank=8',
    '--set', 'optim.epochs=2', '--set', 'optim.batchSize=128', '--backend', 'wasm', '--quiet'];
  const evalArgs = (o: string, workers: number) => ['evaluate-recall', '--activations', held, '--predictors', pred, '--model', MODEL, '--data', HELD_DATA, '--out', o,
    '--max-tokens', '256', '--set', 'seqLen=32', '--set', 'batchSize=2', '--set', 'densitySweep=[0.2,0.4]', '--workers', String(workers), '--backend', 'wasm', '--quiet'];
  beforeAll(async () => {
    for (const [o, d, n] of [[acts, DATA, 2048], [held, HELD_DATA, 512]] as const)
      expect((await cli('collect-activations', '--model', MODEL, '--data', d, '--out', o, '--seq-len', '64', '--max-tokens', String(n), '--dtype', 'float32', '--workers', '1', '--backend', 'wasm', '--quiet')).code).toBe(0);
  });

  it('train: 2 workers (head jobs, and the MLP fits cut into shard and chunk jobs) == 1 worker, byte for byte', async () => {
    const o2 = path.join(TMP, 'pred-2');
    expect((await cli(...trainArgs(pred, 1))).code).toBe(0);
    expect((await cli(...trainArgs(o2, 2))).code).toBe(0);
    const timing = (m: any) => ({ ...m, identity: null, sealSha256: null, config: { ...m.config, workers: null, out: null }, training: null,
      layers: m.layers.map((l: any) => ({ ...l, seconds: null })) });
    expectSameFolder(pred, o2, { 'predictors.json': timing, 'train-log.jsonl': null });
    expect(json(path.join(o2, 'predictors.json')).training.workers).toBe(2);
    expect(json(path.join(o2, 'predictors.json')).training.jobsPerWorker.every((n: number) => n > 0)).toBe(true);
    // the log, without its clock
    const log = (d: string) => fs.readFileSync(path.join(d, 'train-log.jsonl'), 'utf8').trim().split('\n').map((l) => ({ ...JSON.parse(l), t: null }));
    expect(log(o2)).toEqual(log(pred));
  });

  it('evaluate: 2 workers write the same report as 1', async () => {
    const r1 = path.join(TMP, 'rep-1'), r2 = path.join(TMP, 'rep-2');
    expect((await cli(...evalArgs(r1, 1))).code).toBe(0);
    expect((await cli(...evalArgs(r2, 2))).code).toBe(0);
    const outPath = (r: any) => ({ ...r, config: { ...r.config, out: null }, sealSha256: null }); // the seal covers the path
    const md = (d: string) => fs.readFileSync(path.join(d, 'report.md'), 'utf8').replace(d, 'OUT');
    expect(outPath(json(path.join(r2, 'report.json')))).toEqual(outPath(json(path.join(r1, 'report.json'))));
    expect(md(r2)).toBe(md(r1));
    const rep = json(path.join(r1, 'report.json'));
    expect(Object.keys(rep.perplexity.runs)).toHaveLength(7);
    expect(rep.perplexity.densityCurve).toHaveLength(2);
    expect(rep.config.workers).toBeUndefined();
  });

  it('a killed worker fails train and evaluate naming it, and writes no output folder', async () => {
    const o = path.join(TMP, 'pred-killed');
    const t = await withKilledWorker('0:2', () => cli(...trainArgs(o, 2)));
    expect(t.code).toBe(1);
    expect(t.err).toMatch(/train worker 1 of 2 \(thread \d+\) exited unexpectedly \(exit code 70\) while running the (MLP|head) predictor of layer \d/);
    expect(fs.existsSync(o)).toBe(false);
    const r = path.join(TMP, 'rep-killed');
    const e = await withKilledWorker('1:4', () => cli(...evalArgs(r, 2)));
    expect(e.code).toBe(1);
    expect(e.err).toMatch(/evaluate worker 2 of 2 \(thread \d+\) exited unexpectedly \(exit code 70\) while running (the (MLP|head) recall pass of layer \d|perplexity run)/);
    expect(fs.existsSync(r)).toBe(false);
    expect(fs.readdirSync(TMP).filter((f) => f.includes('dejavu-tmp') || f.includes('dejavu-lock'))).toEqual([]);
  });
});
