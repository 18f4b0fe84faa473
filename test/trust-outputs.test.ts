/**
 * Issue #20 "Trust, round two": the output-folder / data-loss items of the reliability sweep of 2026-12-01
 * (items 1, 2, 3, 11, 17, 24). Real CLI runs: in-process `cli()`, a spawned `bin/dejavu.js` where the process itself
 * matters (another user, the file-system root). Tiny sizes, like test/safety.test.ts.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { layerDir, readManifest } from '../src/activations/dataset.js';
import { fsUserError, isUserError } from '../src/util/errors.js';
import { cli, FIXTURES, tmpDir } from './helpers.js';

const REPO = path.join(import.meta.dirname, '..');
const BIN = path.join(REPO, 'bin', 'dejavu.js');
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const CAL = path.join(REPO, 'data', 'calibration.jsonl'), HELD = path.join(REPO, 'data', 'heldout.jsonl');
const TMP = tmpDir('dejavu-trust-');
const W = path.join(TMP, 'w');
const collectArgs = (out: string) => ['collect-activations', '--model', MODEL, '--data', CAL, '--out', out, '--seq-len', '16', '--max-tokens', '256', '--batch-size', '4', '--set', 'rowsPerShard=64', '--workers', '1', '--backend', 'wasm', '--quiet'];
const pipeline = (...extra: string[]) => cli('pipeline', '--config', path.join(TMP, 'pipe.yaml'), '--workdir', W, '--backend', 'wasm', ...extra);

/** every file below dir (relative paths, links not followed) with its bytes */
function snapshot(dir: string): Record<string, string> {
  return Object.fromEntries((fs.readdirSync(dir, { recursive: true, withFileTypes: true }) as fs.Dirent[]).filter((e) => e.isFile())
    .map((e) => path.join(e.parentPath, e.name)).sort().map((f) => [path.relative(dir, f), fs.readFileSync(f).toString('base64')]));
}
function noStack(r: { err: string }) { expect(r.err).not.toContain('    at '); }

/** an interrupted, resumable collection (disk full after a few shards; a new value restarts the fault's byte count) */
let faults = 0;
async function interrupted(name: string): Promise<string> {
  const out = path.join(TMP, name);
  process.env.DEJAVU_FAULT_ENOSPC_AFTER = String(110000 + faults++);
  try { expect((await cli(...collectArgs(out))).code).toBe(2); } finally { delete process.env.DEJAVU_FAULT_ENOSPC_AFTER; }
  expect(JSON.parse(fs.readFileSync(path.join(out, 'progress.json'), 'utf8')).shardsDone).toBeGreaterThanOrEqual(2);
  return out;
}

beforeAll(async () => {
  fs.chmodSync(TMP, 0o755); // item 17 runs a writer as another user
  fs.writeFileSync(path.join(TMP, 'pipe.yaml'), [`model: ${MODEL}`, `data: { calibration: ${CAL}, heldout: ${HELD} }`,
    'collect: { seqLen: 16, maxTokens: 256, batchSize: 4, workers: 1 }', 'heldoutCollect: { maxTokens: 256 }',
    'train: { workers: 1, mlp: { rank: 8 }, heads: { rank: 4 }, optim: { epochs: 1 } }',
    'evaluate: { seqLen: 16, maxTokens: 64, workers: 1, densitySweep: [] }', 'plan: { seqLen: 16, searchTokens: 64, verifyTokens: 64, calibrationRows: 256 }'].join('\n') + '\n');
  const r = await pipeline('--quiet');
  expect(r.code, r.err).toBe(0);
}, 120_000);
afterAll(() => { fs.rmSync(TMP, { recursive: true, force: true }); });

describe('#20: nothing dejavu did not write is deleted or replaced', () => {
  it('#20 item 1: collect refuses a symlinked layer-NN folder (resume and --overwrite), exit 2 naming it, and deletes nothing in its target', async () => {
    const out = await interrupted('acts-link');
    const disk2 = path.join(TMP, 'disk2');
    fs.mkdirSync(path.join(disk2, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(disk2, 'notes.txt'), 'notes');
    fs.writeFileSync(path.join(disk2, 'sub', 'keep.txt'), 'keep');
    for (const f of fs.readdirSync(layerDir(out, 1))) fs.renameSync(path.join(layerDir(out, 1), f), path.join(disk2, f));
    fs.rmdirSync(layerDir(out, 1));
    fs.symlinkSync(disk2, layerDir(out, 1)); // "moved to another disk"
    const before = snapshot(disk2), beforeOut = snapshot(out);
    for (const extra of [[], ['--overwrite']]) {
      const r = await cli(...collectArgs(out), ...extra);
      expect(r.code, r.err).toBe(2);
      expect(r.err).toContain(`error: output folder ${out} holds a symbolic link: layer-01 -> ${disk2}`);
      expect(r.err).toMatch(/hint: .*choose another --out/);
      noStack(r);
      expect(snapshot(disk2)).toEqual(before);
      expect(snapshot(out)).toEqual(beforeOut);
    }
    // a marker-only folder whose layer-00 points at the user's documents, with --overwrite
    const docs = path.join(TMP, 'docs'), crafted = path.join(TMP, 'crafted');
    fs.mkdirSync(docs); fs.writeFileSync(path.join(docs, 'thesis.docx'), 'x');
    fs.mkdirSync(crafted); fs.writeFileSync(path.join(crafted, '.dejavu-output.json'), '{"tool": "dejavu", "kind": "activations"}');
    fs.symlinkSync(docs, layerDir(crafted, 0));
    const r = await cli(...collectArgs(crafted), '--overwrite');
    expect(r.code).toBe(2);
    expect(r.err).toContain('holds a symbolic link: layer-00 ->');
    expect(fs.readFileSync(path.join(docs, 'thesis.docx'), 'utf8')).toBe('x');
  });

  it('#20 item 2: a user file in a resumed dataset\'s layer-NN/ is refused by name and kept; moved out, the same command resumes', async () => {
    const out = await interrupted('acts-readme');
    const readme = path.join(layerDir(out, 1), 'README.txt');
    fs.writeFileSync(readme, 'where these shards came from');
    const before = snapshot(out);
    const r = await cli(...collectArgs(out));
    expect(r.code, r.err).toBe(2);
    expect(r.err).toContain(`error: output folder ${out} holds files dejavu did not write: layer-01/README.txt`);
    expect(r.err).toContain('hint: move layer-01/README.txt out of the folder, or choose another --out');
    noStack(r);
    expect(snapshot(out)).toEqual(before);
    fs.rmSync(readme);
    const again = await cli(...collectArgs(out).filter((a) => a !== '--quiet'));
    expect(again.code, again.err).toBe(0);
    expect(again.err).toMatch(/resuming .* after [2-9] complete shard/);
    expect(readManifest(out).status).toBe('complete');
  });

  it('#20 item 3: evaluate, export and the pipeline refuse their own folders holding a user\'s file, before any work; without it the pipeline re-runs', async () => {
    const rep = path.join(TMP, 'rep');
    fs.cpSync(path.join(W, 'report'), rep, { recursive: true });
    fs.writeFileSync(path.join(rep, 'NOTES.md'), 'my conclusions');
    const e = await cli('evaluate-recall', '--activations', path.join(W, 'activations-heldout'), '--predictors', path.join(W, 'predictors'), '--model', MODEL, '--out', rep,
      '--max-tokens', '64', '--set', 'seqLen=16', '--set', 'densitySweep=[]', '--workers', '1', '--backend', 'wasm', '--quiet');
    expect(e.code, e.err).toBe(2);
    expect(e.err).toContain(`error: output folder ${rep} holds files dejavu did not write: NOTES.md`);
    expect(e.err).toContain('hint: move NOTES.md out of the folder');
    noStack(e);
    expect(fs.readFileSync(path.join(rep, 'NOTES.md'), 'utf8')).toBe('my conclusions');
    const b = path.join(TMP, 'bun');
    fs.cpSync(path.join(W, 'bundle'), b, { recursive: true });
    fs.writeFileSync(path.join(b, 'NOTES.md'), 'mine');
    const x = await cli('export-bundle', '--model', MODEL, '--predictors', path.join(W, 'predictors'), '--out', b, '--overwrite', '--quiet');
    expect(x.code, x.err).toBe(2);
    expect(x.err).toContain('holds files dejavu did not write: NOTES.md');

    // the pipeline passes --overwrite to every stage: a changed setting used to replace W/report and W/plan whole
    const change = ['--set', 'evaluate.maxTokens=32', '--set', 'plan.maxPplIncrease=0.02'];
    const before = snapshot(W);
    for (const [stage, file] of [['report', 'NOTES.md'], ['plan', 'my-comments.md']] as const) {
      const f = path.join(W, stage, file);
      fs.writeFileSync(f, 'mine');
      const r = await pipeline(...change);
      expect(r.code, r.err).toBe(2);
      expect(r.err).toContain(`error: output folder ${path.join(W, stage)} holds files dejavu did not write: ${file}`);
      expect(r.err).not.toMatch(/== /); // no stage ran
      noStack(r);
      fs.rmSync(f);
      expect(snapshot(W)).toEqual(before);
    }
    const ok = await pipeline(...change);
    expect(ok.code, ok.err).toBe(0);
    expect(ok.err).toMatch(/== evaluate-recall: [\d.]+ s/);
    expect(ok.err).toMatch(/== plan: [\d.]+ s/);
    expect(JSON.parse(fs.readFileSync(path.join(W, 'plan', 'plan.json'), 'utf8')).plan.maxPplIncrease).toBe(0.02);
  }, 60_000);
});

describe('#20: file-system mistakes are user errors, and nothing is created for a refused --out', () => {
  it('#20 item 11: ENAMETOOLONG and ELOOP (and ENXIO, ETXTBSY, EBUSY, …) are exit 2 with a hint; no parent folder is created first', async () => {
    const parent = path.join(TMP, 'newparent');
    const long = await cli('export-bundle', '--model', MODEL, '--predictors', path.join(W, 'predictors'), '--out', path.join(parent, 'x'.repeat(300)), '--quiet');
    expect(long.code, long.err).toBe(2);
    expect(long.err).toMatch(/error: output folder .*: the name x{16}… is too long \(300 bytes\)/);
    expect(long.err).toMatch(/hint: choose a shorter --out/);
    noStack(long);
    expect(fs.existsSync(parent)).toBe(false);
    fs.symlinkSync(path.join(TMP, 'loopB'), path.join(TMP, 'loopA'));
    fs.symlinkSync(path.join(TMP, 'loopA'), path.join(TMP, 'loopB'));
    const loop = await cli('train-predictors', '--activations', path.join(W, 'activations-calibration'), '--workers', '1', '--out', path.join(TMP, 'loopA', 'pred'), '--quiet');
    expect(loop.code, loop.err).toBe(2);
    expect(loop.err).toMatch(/error: too many levels of symbolic links .*loopA\/pred \(ELOOP\)/);
    expect(loop.err).toMatch(/hint: fix or remove the looping link/);
    noStack(loop);
    for (const code of ['ENAMETOOLONG', 'ELOOP', 'ENXIO', 'ENODEV', 'ETXTBSY', 'EBUSY', 'EFBIG', 'ENFILE', 'EMLINK']) {
      const u = fsUserError(Object.assign(new Error(`${code}: x`), { code }), 'opening', '/some/file');
      expect(isUserError(u), code).toBe(true);
      expect((u as Error).message).toMatch(new RegExp(`while opening /some/file \\(${code}\\)$`));
      expect((u as { hint?: string }).hint, code).toBeTruthy();
    }
  });

  it('#20 item 24: --out / is refused at once (exit 2), and no lock file is created in /', () => {
    const lock = '/..dejavu-lock';
    const had = fs.existsSync(lock);
    const r = spawnSync('node', [BIN, 'export-bundle', '--model', MODEL, '--predictors', path.join(W, 'predictors'), '--out', '/', '--quiet'], { encoding: 'utf8', timeout: 30_000 });
    try {
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toContain('error: output folder / is the file-system root, not a folder dejavu can own');
      expect(r.stderr).toMatch(/hint: choose a new or empty folder for --out/);
      if (!had) expect(fs.existsSync(lock)).toBe(false);
    } finally {
      // a run of the code before the fix leaves its lock when killed: remove it only if that run wrote it
      try { if (!had && JSON.parse(fs.readFileSync(lock, 'utf8')).pid === r.pid) fs.rmSync(lock); } catch { /* none */ }
    }
  });
});

const canSetpriv = spawnSync('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', '--', 'true']).status === 0;
describe('#20: a read-only previous output', () => {
  it.skipIf(!canSetpriv)('#20 item 17: replacing it succeeds (exit 0, the leftover named in a warning), the lock is released, and later writers are not blocked (skipped only when setpriv cannot run as nobody)', () => {
    const ro = path.join(TMP, 'ro'), out = path.join(ro, 'b');
    fs.mkdirSync(ro);
    fs.chownSync(ro, 65534, 65534); // nobody's folder
    const asNobody = (...args: string[]) => spawnSync('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', '--', 'node', BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
    const exp = ['export-bundle', '--model', MODEL, '--predictors', path.join(W, 'predictors'), '--out', out, '--quiet'];
    const first = asNobody(...exp);
    expect(first.status, first.stderr).toBe(0);
    for (const f of [...fs.readdirSync(out).map((f) => path.join(out, f)), out]) fs.chmodSync(f, 0o555 & fs.statSync(f).mode); // chmod -R a-w
    const oldManifest = fs.readFileSync(path.join(out, 'manifest.json'), 'utf8');
    const second = asNobody(...exp, '--overwrite');
    expect(second.status, second.stderr).toBe(0);
    const leftover = fs.readdirSync(ro).filter((f) => f.startsWith('.b.dejavu-old-'));
    expect(leftover).toHaveLength(1);
    expect(second.stderr).toContain(`warning: could not remove the old output ${path.join(ro, leftover[0]!)} (permission denied, EACCES)`);
    expect(fs.readFileSync(path.join(out, 'manifest.json'), 'utf8')).not.toBe(oldManifest); // the new bundle is in place
    expect(fs.existsSync(path.join(ro, '.b.dejavu-lock'))).toBe(false);
    const third = asNobody(...exp, '--overwrite');
    expect(third.status, third.stderr).toBe(0);
    expect(third.stderr).toContain(`warning: could not remove the old output ${path.join(ro, leftover[0]!)}`);
    expect(fs.readdirSync(ro).sort()).toEqual([leftover[0], 'b']);
    fs.chmodSync(path.join(ro, leftover[0]!), 0o755); // made writable again, the next writer sweeps it
    const fourth = asNobody(...exp, '--overwrite');
    expect(fourth.status, fourth.stderr).toBe(0);
    expect(fourth.stderr).not.toContain('warning');
    expect(fs.readdirSync(ro)).toEqual(['b']);
  });
});
