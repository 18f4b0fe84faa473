/**
 * Issue 26: `collect-activations --shard i/n` and `dejavu merge --kind activations`. Three shards merged give the
 * unsharded dataset byte for byte; a missing, duplicated, foreign or altered shard is refused (exit 2) naming it; a
 * shard resumes like an unsharded collection.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { FIXTURES, cli, files, tmpDir } from './helpers.js';

const REPO = path.join(import.meta.dirname, '..');
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const DATA = path.join(REPO, 'data', 'calibration.jsonl');
const TMP = tmpDir('dejavu-shard-');
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));
beforeAll(async () => { await ensureBackend('wasm'); });

const json = (f: string) => JSON.parse(fs.readFileSync(f, 'utf8'));
const noTiming = (s: Record<string, unknown>) => { const { seconds: _s, tokensPerSecond: _t, timing: _x, workers: _w, resumedFromShard: _r, ...rest } = s; return rest; };

// 25 sequences of 32 tokens, 4 per dataset shard: 7 dataset shards (the last holds one sequence), dealt 3/2/2
const collectArgs = (out: string, extra: string[] = [], tokens = 800) => ['collect-activations', '--model', MODEL, '--data', DATA, '--out', out,
  '--seq-len', '32', '--batch-size', '2', '--max-tokens', String(tokens), '--set', 'rowsPerShard=128', '--workers', '1', '--backend', 'wasm', '--quiet', ...extra];
const merge = (out: string, ...inputs: string[]) => cli('merge', '--kind', 'activations', '--out', out, '--inputs', ...inputs, '--quiet');
const shardDir = (i: number) => path.join(TMP, `s${i}`);

describe('collect-activations --shard and merge --kind activations', () => {
  const ref = path.join(TMP, 'ref'), out = path.join(TMP, 'acts');
  beforeAll(async () => {
    expect((await cli(...collectArgs(out, ['--workers', '2']))).code).toBe(0);
    fs.renameSync(out, ref);
    for (const i of [0, 1, 2]) expect((await cli(...collectArgs(shardDir(i), ['--shard', `${i}/3`]))).code).toBe(0);
  });

  it('each shard holds its dataset shards (s mod 3) under their global names; 3 shards merged == 1 process, byte for byte', async () => {
    expect(files(shardDir(1)).filter((f) => f.startsWith('layer-00/'))).toEqual(['layer-00/shard-00001.arrow', 'layer-00/shard-00004.arrow']);
    expect(json(path.join(shardDir(2), 'manifest.json')).shard).toMatchObject({ index: 2, count: 3, runSequences: 25 });
    const r = await merge(out, shardDir(2), shardDir(0), shardDir(1)); // any order
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(files(out)).toEqual(files(ref));
    for (const f of files(ref)) if (f !== 'summary.json') expect(fs.readFileSync(path.join(out, f)).equals(fs.readFileSync(path.join(ref, f))), `${f} differs`).toBe(true);
    expect(noTiming(json(path.join(out, 'summary.json')))).toEqual(noTiming(json(path.join(ref, 'summary.json'))));
    // the merged dataset is what train reads; a shard folder is not
    const t = await cli('train-predictors', '--activations', shardDir(0), '--out', path.join(TMP, 'pred'), '--backend', 'wasm', '--quiet');
    expect(t.code).toBe(2);
    expect(t.err).toContain(`${shardDir(0)} is shard 0/3 of a sharded collection, not a whole dataset`);
    expect(t.err).toContain('dejavu merge --kind activations');
  });

  it('a missing, duplicated, foreign or altered shard is refused with exit 2 naming it; nothing is written', async () => {
    const o = path.join(TMP, 'bad');
    let r = await merge(o, shardDir(0), shardDir(2));
    expect(r.code).toBe(2);
    expect(r.err).toContain('error: shard 1/3 is missing (given: 0/3, 2/3)');
    r = await merge(o, shardDir(0), shardDir(1), shardDir(0));
    expect(r.code).toBe(2);
    expect(r.err).toContain(`error: shard 0/3 is given twice: ${shardDir(0)} and ${shardDir(0)}`);
    const foreign = path.join(TMP, 'foreign1');
    expect((await cli(...collectArgs(foreign, ['--shard', '1/3'], 832))).code).toBe(0); // another run: 26 sequences
    r = await merge(o, shardDir(0), foreign, shardDir(2));
    expect(r.code).toBe(2);
    expect(r.err).toContain(`error: foreign shard: ${foreign} (shard 1/3) is from a different run than ${shardDir(0)}`);
    r = await merge(o, shardDir(0), shardDir(1), ref);
    expect(r.code).toBe(2);
    expect(r.err).toContain(`error: ${ref} is not a shard: it was collected without --shard`);
    // an altered shard file: the copy fails its sha256 check and the merge leaves nothing
    const altered = path.join(TMP, 's1-altered');
    fs.cpSync(shardDir(1), altered, { recursive: true });
    const f = path.join(altered, 'layer-01', 'shard-00004.arrow');
    const b = fs.readFileSync(f); b[b.length >> 1] ^= 1; fs.writeFileSync(f, b);
    r = await merge(o, shardDir(0), altered, shardDir(2));
    expect(r.code).toBe(2);
    expect(r.err).toContain(`error: ${f} (shard 1/3) fails its sha256 check`);
    expect(fs.existsSync(o)).toBe(false);
    expect(fs.readdirSync(TMP).filter((n) => n.includes('dejavu-'))).toEqual([]);
  });

  it('a shard is idempotent and resumable; another shard\'s folder is refused', async () => {
    let r = await cli(...collectArgs(shardDir(1), ['--shard', '1/3']).filter((a) => a !== '--quiet'));
    expect(r.code).toBe(0);
    expect(r.err).toContain('is complete and current; nothing to do');
    r = await cli(...collectArgs(shardDir(1), ['--shard', '2/3']));
    expect(r.code).toBe(2);
    expect(r.err).toContain(`error: output folder ${shardDir(1)} holds shard 1/3, not shard 2/3`);
    // a worker dies mid-shard: the complete dataset shards stay, and the re-run resumes from there to the same files
    const dir = path.join(TMP, 's0-resumed');
    process.env.DEJAVU_TEST_KILL_WORKER = '*:4'; // the 4th batch, whichever worker runs it: the first dataset shard is complete by then
    try { r = await cli(...collectArgs(dir, ['--shard', '0/3', '--workers', '2'])); } finally { delete process.env.DEJAVU_TEST_KILL_WORKER; }
    expect(r.code).toBe(1);
    const progress = json(path.join(dir, 'progress.json'));
    expect(progress.shardsDone).toBeGreaterThan(0);
    expect(progress.shardsDone).toBeLessThan(3);
    const m = json(path.join(shardDir(0), 'manifest.json'));
    r = await cli(...collectArgs(dir, ['--shard', '0/3', '--json']));
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out).summary.resumedFromShard).toBe(progress.shardsDone);
    for (const f of files(shardDir(0))) if (f !== 'summary.json' && f !== 'manifest.json') expect(fs.readFileSync(path.join(dir, f)).equals(fs.readFileSync(path.join(shardDir(0), f))), f).toBe(true);
    const strip = (x: any) => ({ ...x, config: { ...x.config, out: null } });
    expect(strip(json(path.join(dir, 'manifest.json')))).toEqual(strip(m));
  });

  it('--shard refuses an index outside 0..n-1 and a malformed value (exit 2)', async () => {
    let r = await cli(...collectArgs(path.join(TMP, 'x'), ['--shard', '3/3']));
    expect(r.code).toBe(2);
    expect(r.err).toContain('shard index must be below the shard count');
    r = await cli(...collectArgs(path.join(TMP, 'x'), ['--shard', '1-3']));
    expect(r.code).toBe(2);
    expect(r.err).toContain('expected i/n');
    expect(fs.existsSync(path.join(TMP, 'x'))).toBe(false);
  });
});

describe('train-predictors --shard and merge --kind predictors', () => {
  const acts = path.join(TMP, 'acts'); // the merged dataset of the describe above
  const trainArgs = (o: string, extra: string[] = []) => ['train-predictors', '--activations', acts, '--out', o, '--set', 'heads.rank=8', '--set', 'optim.epochs=2',
    '--set', 'optim.batchSize=128', '--workers', '1', '--backend', 'wasm', '--quiet', ...extra];
  const pred = path.join(TMP, 'pred-merged'), ref = path.join(TMP, 'pred-ref');
  it('2 shards (layer 0, layer 1) merged == 1 process: layer files byte for byte, predictors.json and the log equal but for timing', async () => {
    expect((await cli(...trainArgs(pred))).code).toBe(0);
    fs.renameSync(pred, ref);
    for (const i of [0, 1]) expect((await cli(...trainArgs(path.join(TMP, `p${i}`), ['--shard', `${i}/2`]))).code).toBe(0);
    expect(files(path.join(TMP, 'p1')).filter((f) => f.endsWith('.safetensors'))).toEqual(['layer-01.safetensors']);
    const r = await cli('merge', '--kind', 'predictors', '--out', pred, '--inputs', path.join(TMP, 'p1'), path.join(TMP, 'p0'), '--quiet');
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(files(pred)).toEqual(files(ref));
    for (const f of files(ref).filter((x) => x.endsWith('.safetensors') || x === '.dejavu-output.json')) expect(fs.readFileSync(path.join(pred, f)).equals(fs.readFileSync(path.join(ref, f))), f).toBe(true);
    const timing = (m: any) => ({ ...m, sealSha256: null, training: null, layers: m.layers.map((l: any) => ({ ...l, seconds: null })) });
    expect(timing(json(path.join(pred, 'predictors.json')))).toEqual(timing(json(path.join(ref, 'predictors.json'))));
    const log = (d: string) => fs.readFileSync(path.join(d, 'train-log.jsonl'), 'utf8').trim().split('\n').map((l) => ({ ...JSON.parse(l), t: null }));
    expect(log(pred)).toEqual(log(ref));
    // the merged folder is current for the unsharded command: re-running it does nothing
    const again = await cli(...trainArgs(pred).filter((a) => a !== '--quiet'));
    expect(again.code).toBe(0);
    expect(again.err).toContain('is complete and current; nothing to do');
  });

  it('a missing or foreign predictors shard, or an altered layer file, is refused with exit 2 naming it', async () => {
    const o = path.join(TMP, 'pred-bad');
    let r = await cli('merge', '--kind', 'predictors', '--out', o, '--inputs', path.join(TMP, 'p0'), '--quiet');
    expect(r.code).toBe(2);
    expect(r.err).toContain('error: shard 1/2 is missing (given: 0/2)');
    const foreign = path.join(TMP, 'p1-seed');
    expect((await cli(...trainArgs(foreign, ['--shard', '1/2', '--set', 'seed=7']))).code).toBe(0);
    r = await cli('merge', '--kind', 'predictors', '--out', o, '--inputs', path.join(TMP, 'p0'), foreign, '--quiet');
    expect(r.code).toBe(2);
    expect(r.err).toContain(`error: foreign shard: ${foreign} (shard 1/2) is from a different run than ${path.join(TMP, 'p0')}`);
    const altered = path.join(TMP, 'p1-altered');
    fs.cpSync(path.join(TMP, 'p1'), altered, { recursive: true });
    const f = path.join(altered, 'layer-01.safetensors');
    const b = fs.readFileSync(f); b[b.length - 5] ^= 1; fs.writeFileSync(f, b);
    r = await cli('merge', '--kind', 'predictors', '--out', o, '--inputs', path.join(TMP, 'p0'), altered, '--quiet');
    expect(r.code).toBe(2);
    expect(r.err).toContain(`error: ${path.join(altered, 'layer-01.safetensors')} (shard 1/2) fails its sha256 check`);
    expect(fs.existsSync(o)).toBe(false);
  });
});

describe('evaluate-recall --shard and merge --kind report', () => {
  const evalArgs = (o: string, extra: string[] = [], tokens = 128) => ['evaluate-recall', '--activations', path.join(TMP, 'acts'), '--predictors', path.join(TMP, 'pred-merged'),
    '--model', MODEL, '--data', DATA, '--out', o, '--max-tokens', String(tokens), '--set', 'seqLen=32', '--set', 'batchSize=1', '--workers', '1', '--backend', 'wasm', '--quiet', ...extra];
  const rep = path.join(TMP, 'rep'), ref = path.join(TMP, 'rep-ref');
  it('3 shards (every recall pass, a third of the perplexity batches each) merged == 1 process: the report folder byte for byte', async () => {
    expect((await cli(...evalArgs(rep))).code).toBe(0);
    fs.renameSync(rep, ref);
    for (const i of [0, 1, 2]) expect((await cli(...evalArgs(path.join(TMP, `e${i}`), ['--shard', `${i}/3`]))).code).toBe(0);
    const results = Object.keys(json(path.join(TMP, 'e1', 'report.json')).results);
    expect(results.filter((k) => k.includes('recall pass')).length).toBeGreaterThan(0);
    expect(results.filter((k) => k.startsWith('perplexity run "dense"'))).toEqual(['perplexity run "dense", sequences 1..1']); // batches 1 of 0..3
    const r = await cli('merge', '--kind', 'report', '--out', rep, '--inputs', path.join(TMP, 'e2'), path.join(TMP, 'e0'), path.join(TMP, 'e1'), '--quiet');
    expect(r.code, r.err).toBe(0);
    expect(files(rep)).toEqual(files(ref));
    for (const f of files(ref)) expect(fs.readFileSync(path.join(rep, f)).equals(fs.readFileSync(path.join(ref, f))), `${f} differs`).toBe(true);
  });

  it('a missing or foreign report shard is refused with exit 2 naming it', async () => {
    const o = path.join(TMP, 'rep-bad');
    let r = await cli('merge', '--kind', 'report', '--out', o, '--inputs', path.join(TMP, 'e0'), path.join(TMP, 'e1'), '--quiet');
    expect(r.code).toBe(2);
    expect(r.err).toContain('error: shard 2/3 is missing (given: 0/3, 1/3)');
    const foreign = path.join(TMP, 'e2-more');
    expect((await cli(...evalArgs(foreign, ['--shard', '2/3'], 160))).code).toBe(0);
    r = await cli('merge', '--kind', 'report', '--out', o, '--inputs', path.join(TMP, 'e0'), path.join(TMP, 'e1'), foreign, '--quiet');
    expect(r.code).toBe(2);
    expect(r.err).toContain(`error: foreign shard: ${foreign} (shard 2/3) is from a different run than ${path.join(TMP, 'e0')}`);
    r = await cli('merge', '--kind', 'report', '--out', o, '--inputs', path.join(TMP, 'e0'), path.join(TMP, 'e1'), path.join(TMP, 'rep-ref'), '--quiet');
    expect(r.code).toBe(2);
    expect(r.err).toContain(`error: ${path.join(TMP, 'rep-ref')} is not a shard: it was evaluated without --shard`);
    expect(fs.existsSync(o)).toBe(false);
  });
});

describe('plan --shard and merge --kind plan', () => {
  const planArgs = (o: string, extra: string[] = []) => ['plan', '--model', MODEL, '--predictors', path.join(TMP, 'pred-merged'), '--activations', path.join(TMP, 'acts'),
    '--data', DATA, '--out', o, '--set', 'neverSlower=false', '--set', 'searchTokens=512', '--set', 'verifyTokens=512', '--backend', 'wasm', '--quiet', ...extra];
  it('2 shards (the single-layer perplexities of layer 0, of layer 1) merged == 1 process: the same plan, frontier and options', async () => {
    process.env.DEJAVU_CACHE_DIR = path.join(TMP, 'cache'); // one kernel-cost model for both
    const one = path.join(TMP, 'plan-one'), merged = path.join(TMP, 'plan-merged');
    try {
      expect((await cli(...planArgs(one))).code).toBe(0);
      for (const i of [0, 1]) expect((await cli(...planArgs(path.join(TMP, `pl${i}`), ['--shard', `${i}/2`]))).code).toBe(0);
      const d1 = json(path.join(TMP, 'pl1', 'plan.json')).dppl;
      expect(Object.keys(d1).length).toBeGreaterThan(0);
      expect(Object.keys(d1).every((k) => k.startsWith('1|'))).toBe(true);
      const r = await cli('merge', '--kind', 'plan', '--out', merged, '--inputs', path.join(TMP, 'pl1'), path.join(TMP, 'pl0'), '--quiet');
      expect(r.code, r.err).toBe(0);
      // equal but for the verification's measured decode times (and the seal covering them)
      const strip = (p: any) => ({ ...p, sealSha256: null, plan: { ...p.plan, verified: { ...p.plan.verified, stepMs: null, denseStepMs: null, speedup: null,
        ...(p.plan.verified.eightBit ? { eightBit: { ...p.plan.verified.eightBit, stepMs: null, denseStepMs: null, speedup: null } } : {}) } } });
      expect(strip(json(path.join(merged, 'plan.json')))).toEqual(strip(json(path.join(one, 'plan.json'))));
      const md = (d: string) => fs.readFileSync(path.join(d, 'report.md'), 'utf8').replace(/decode [\d.]+ vs [\d.]+ ms\/token \(\*\*[\d.]+x\*\*\)/, 'DECODE').replace(/at \*\*[\d.]+x\*\* dense decode \([\d.]+ vs [\d.]+ ms\/token\)/, 'AT DECODE').replace(/\. \d+ s\./, '. S.');
      expect(md(merged)).toBe(md(one));
      const missing = await cli('merge', '--kind', 'plan', '--out', path.join(TMP, 'plan-bad'), '--inputs', path.join(TMP, 'pl0'), '--quiet');
      expect(missing.code).toBe(2);
      expect(missing.err).toContain('error: shard 1/2 is missing (given: 0/2)');
    } finally { delete process.env.DEJAVU_CACHE_DIR; }
  });
});
