/**
 * Issue #11 "Never lose a user's data" (output-folder discipline + collect side): numbered cases 1, 5, 7, 8, 9, 12.
 * Real CLI runs (in-process `cli()`; a spawned `bin/dejavu.js` where the process exit code itself matters).
 * Disk full is injected with DEJAVU_FAULT_ENOSPC_AFTER=<bytes> (the writers throw a real ENOSPC-coded error after that
 * many bytes) and, where `mount` works (root in CI), also produced for real on a tiny tmpfs.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { layerDir, readManifest } from '../src/activations/dataset.js';

/** byte-for-byte equal files */
const sameFile = (a: string, b: string) => fs.readFileSync(a).equals(fs.readFileSync(b));
import { cli, FIXTURES, tmpDir } from './helpers.js';

const REPO = path.join(import.meta.dirname, '..');
const BIN = path.join(REPO, 'bin', 'dejavu.js');
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const TMP = tmpDir('dejavu-safety-');
const DATA = path.join(TMP, 'd.jsonl');
const ACTS = path.join(TMP, 'acts');
const PRED = path.join(TMP, 'pred');
const mounts: string[] = [];

function sampleText(n: number): string {
  const words = 'the whale ship sea captain ahab ishmael white harpoon ocean deep storm sail mast crew voyage night'.split(' ');
  let s = 12345;
  const rnd = () => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s / 0x7fffffff; };
  return Array.from({ length: n }, (_, d) => JSON.stringify({ text: Array.from({ length: 40 + (d % 7) * 5 }, () => words[Math.floor(rnd() * words.length)]).join(' ') + '.' })).join('\n') + '\n';
}
const collectArgs = (out: string, data = DATA) => ['collect-activations', '--model', MODEL, '--data', data, '--out', out, '--seq-len', '16', '--max-tokens', '256', '--batch-size', '4', '--set', 'rowsPerShard=64', '--backend', 'wasm', '--quiet'];
const trainArgs = (acts: string, out: string) => ['train-predictors', '--activations', acts, '--out', out, '--workers', '1', '--set', 'mlp.rank=8', '--set', 'heads.rank=4', '--set', 'optim.epochs=1', '--backend', 'wasm', '--quiet'];
/** every file below dir (relative paths), sorted */
function tree(dir: string): string[] {
  return fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => path.relative(dir, path.join(e.parentPath, e.name))).sort();
}
function snapshot(dir: string): Record<string, string> {
  return Object.fromEntries(tree(dir).map((f) => [f, fs.readFileSync(path.join(dir, f)).toString('base64')]));
}
function noStack(r: { err: string }) { expect(r.err).not.toContain('    at '); }
function tryMount(dir: string, opts: string): boolean {
  fs.mkdirSync(dir, { recursive: true });
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', opts, 'tmpfs', dir]);
  if (r.status === 0) mounts.push(dir);
  return r.status === 0;
}
const canMount = (() => { const d = path.join(TMP, 'probe-mount'); const ok = tryMount(d, 'size=64k'); if (ok) { spawnSync('umount', [d]); mounts.pop(); } return ok; })();

beforeAll(async () => {
  fs.writeFileSync(DATA, sampleText(60));
  const c = await cli(...collectArgs(ACTS));
  expect(c.code, c.err).toBe(0);
  const t = await cli(...trainArgs(ACTS, PRED));
  expect(t.code, t.err).toBe(0);
}, 120_000);
afterEach(() => { delete process.env.DEJAVU_FAULT_ENOSPC_AFTER; });
afterAll(() => {
  for (const m of mounts.reverse()) spawnSync('umount', [m]);
  fs.rmSync(TMP, { recursive: true, force: true });
});

describe('#11 case 1: dejavu deletes or replaces only folders it made', () => {
  it('pipeline refuses a workdir holding foreign files, before any work, and leaves them intact', async () => {
    const w = path.join(TMP, 'w');
    fs.mkdirSync(path.join(w, 'bundle'), { recursive: true });
    fs.writeFileSync(path.join(w, 'bundle', 'thesis.docx'), 'x');
    const cfg = path.join(TMP, 'pipe.yaml');
    fs.writeFileSync(cfg, `model: ${MODEL}\ndata: { calibration: ${DATA}, heldout: ${DATA} }\ncollect: { seqLen: 16, maxTokens: 64 }\n`);
    const r = await cli('pipeline', '--config', cfg, '--workdir', w, '--backend', 'wasm', '--quiet');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/error: .*bundle.* was not made by dejavu .*thesis\.docx/);
    expect(r.err).toMatch(/hint: /);
    noStack(r);
    expect(tree(w)).toEqual(['bundle/thesis.docx']);
    expect(fs.readFileSync(path.join(w, 'bundle', 'thesis.docx'), 'utf8')).toBe('x');
  });

  it('collect --overwrite refuses a folder with a foreign manifest.json and touches nothing', async () => {
    const d = path.join(TMP, 'webapp');
    fs.mkdirSync(path.join(d, 'layer-00'), { recursive: true });
    fs.writeFileSync(path.join(d, 'manifest.json'), '{"name": "my-web-app", "start_url": "/"}');
    fs.writeFileSync(path.join(d, 'layer-00', 'notes.txt'), 'mine');
    const before = snapshot(d);
    const r = await cli(...collectArgs(d), '--overwrite');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/was not made by dejavu/);
    noStack(r);
    expect(snapshot(d)).toEqual(before);
  });

  it('collect --overwrite keeps the old dataset when the new run fails', async () => {
    const out = path.join(TMP, 'acts-keep');
    fs.cpSync(ACTS, out, { recursive: true });
    const before = snapshot(out);
    const r = await cli(...collectArgs(out).map((a) => (a === '16' ? '4096' : a)), '--overwrite'); // too few tokens for one sequence
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/too few tokens/);
    expect(snapshot(out)).toEqual(before);
    expect(fs.readdirSync(TMP).filter((f) => f.includes('acts-keep'))).toEqual(['acts-keep']); // no temp or aside folder left
  });

  it('a dataset of the previous version (no marker) is recognized by its files; with a foreign file it is refused', async () => {
    const old = path.join(TMP, 'acts-legacy');
    fs.cpSync(ACTS, old, { recursive: true });
    fs.rmSync(path.join(old, '.dejavu-output.json'));
    const same = await cli(...collectArgs(old).filter((a) => a !== '--quiet'));
    expect(same.code, same.err).toBe(0);
    expect(same.err).toMatch(/is complete and current; nothing to do/);
    fs.writeFileSync(path.join(old, 'layer-00', 'my-notes.txt'), 'mine');
    const r = await cli(...collectArgs(old).map((a) => (a === '256' ? '128' : a)), '--overwrite');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/acts-legacy was not made by dejavu \(it holds layer-00\/my-notes\.txt\)/);
    expect(fs.readFileSync(path.join(old, 'layer-00', 'my-notes.txt'), 'utf8')).toBe('mine');
    expect(readManifest(old).tokens).toBe(256);
  });

  it('export-bundle --overwrite and evaluate-recall refuse a folder they did not make', async () => {
    const d = path.join(TMP, 'docs');
    fs.mkdirSync(d);
    fs.writeFileSync(path.join(d, 'thesis.docx'), 'x');
    fs.writeFileSync(path.join(d, 'report.md'), '# my own report');
    const before = snapshot(d);
    const e = await cli('export-bundle', '--model', MODEL, '--predictors', PRED, '--out', d, '--overwrite', '--quiet');
    expect(e.code).toBe(2);
    expect(e.err).toMatch(/error: output folder .*docs was not made by dejavu/);
    noStack(e);
    const v = await cli('evaluate-recall', '--activations', ACTS, '--predictors', PRED, '--out', d, '--backend', 'wasm', '--quiet');
    expect(v.code).toBe(2);
    expect(v.err).toMatch(/error: output folder .*docs was not made by dejavu/);
    expect(snapshot(d)).toEqual(before);
    // a folder dejavu made is replaced, also one made by the previous version (no marker: recognized by its files)
    const b = path.join(TMP, 'bundle');
    expect((await cli('export-bundle', '--model', MODEL, '--predictors', PRED, '--out', b, '--quiet')).code).toBe(0);
    fs.rmSync(path.join(b, '.dejavu-output.json'));
    const again = await cli('export-bundle', '--model', MODEL, '--predictors', PRED, '--out', b, '--overwrite', '--quiet');
    expect(again.code, again.err).toBe(0);
    expect(fs.existsSync(path.join(b, '.dejavu-output.json'))).toBe(true);
  });
});

describe('#11 case 5: disk full', () => {
  it('collect (spawned, injected ENOSPC): exit 2 with what/where/hint, no temp files; the same command then resumes', () => {
    const out = path.join(TMP, 'full-collect');
    const r = spawnSync('node', [BIN, ...collectArgs(out)], { encoding: 'utf8', env: { ...process.env, DEJAVU_FAULT_ENOSPC_AFTER: '110000' } });
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/error: no space left on device while writing .*full-collect/);
    expect(r.stderr).toMatch(/hint: free disk space/);
    expect(r.stderr).not.toContain('    at ');
    expect(tree(out).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    expect(readManifest(out, false).status).toBe('in-progress'); // complete shards are kept for the resume
    const again = spawnSync('node', [BIN, ...collectArgs(out)], { encoding: 'utf8' });
    expect(again.status, again.stderr).toBe(0);
    for (const l of [0, 1]) for (const f of fs.readdirSync(layerDir(ACTS, l))) expect(sameFile(path.join(layerDir(out, l), f), path.join(layerDir(ACTS, l), f))).toBe(true);
  });

  it.skipIf(!canMount)('collect on a really full tmpfs (64 KiB): exit 2, nothing half-written (skipped only when mount is impossible)', () => {
    const mnt = path.join(TMP, 'tiny-fs');
    expect(tryMount(mnt, 'size=64k')).toBe(true);
    const r = spawnSync('node', [BIN, ...collectArgs(path.join(mnt, 'acts'))], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/error: no space left on device/);
    expect(r.stderr).not.toContain('    at ');
    expect(tree(mnt).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('an fs error escaping as an unhandled rejection exits 2 (ENOSPC) or 1 (a bug), never with Node\'s own code', () => {
    const run = (err: string) => spawnSync('node', ['--input-type=module', '-e',
      `const { installProcessHandlers } = await import(${JSON.stringify(path.join(REPO, 'dist', 'cli', 'main.js'))}); await import('@tensorflow/tfjs-backend-wasm');
       installProcessHandlers(); process.on('uncaughtException', (e) => { throw e; }); Promise.reject(${err});`], { encoding: 'utf8', cwd: REPO });
    const full = run(`Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', path: '/data/out/x.arrow' })`);
    expect(full.status, full.stderr).toBe(2);
    expect(full.stderr).toMatch(/^error: no space left on device while accessing \/data\/out\/x\.arrow \(ENOSPC\)\nhint: free disk space/);
    const bug = run(`new TypeError('boom')`);
    expect(bug.status).toBe(1);
    expect(bug.stderr).toMatch(/internal error \(please report\): TypeError: boom\n\s+at /);
  });

  it('train: exit 2, no partial output; a rerun succeeds', async () => {
    const out = path.join(TMP, 'full-pred');
    process.env.DEJAVU_FAULT_ENOSPC_AFTER = '3000';
    const r = await cli(...trainArgs(ACTS, out));
    delete process.env.DEJAVU_FAULT_ENOSPC_AFTER;
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/error: no space left on device while writing .*full-pred/);
    noStack(r);
    expect(fs.readdirSync(TMP).filter((f) => f.includes('full-pred'))).toEqual([]);
    const again = await cli(...trainArgs(ACTS, out));
    expect(again.code, again.err).toBe(0);
  });
});

describe('#11 case 7: resume verifies what progress.json claims', () => {
  async function interrupted(name: string): Promise<string> {
    const out = path.join(TMP, name);
    process.env.DEJAVU_FAULT_ENOSPC_AFTER = '110000';
    const r = await cli(...collectArgs(out));
    delete process.env.DEJAVU_FAULT_ENOSPC_AFTER;
    expect(r.code).toBe(2);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'progress.json'), 'utf8')).shardsDone).toBeGreaterThanOrEqual(2);
    return out;
  }
  const sameAsFull = (out: string) => {
    expect(readManifest(out).shards).toBe(readManifest(ACTS).shards);
    for (const l of [0, 1]) for (const f of fs.readdirSync(layerDir(ACTS, l))) expect(sameFile(path.join(layerDir(out, l), f), path.join(layerDir(ACTS, l), f)), f).toBe(true);
  };

  it('a deleted shard is rebuilt from the first bad one (resumedFromShard says so)', async () => {
    const out = await interrupted('resume-deleted');
    fs.rmSync(path.join(layerDir(out, 1), 'shard-00001.arrow'));
    fs.writeFileSync(path.join(out, '.progress.json.4000000.1700000000000.tmp'), '{"shardsD'); // a kill -9 during a write
    const r = await cli(...collectArgs(out).filter((a) => a !== '--quiet'), '--json');
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/shard-00001\.arrow is missing.*rebuilding from shard 1/);
    expect(JSON.parse(r.out).summary.resumedFromShard).toBe(1);
    expect(tree(out).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    sameAsFull(out);
  });

  it('a corrupt progress.json restarts the collection (also with --overwrite), no stack', async () => {
    const out = await interrupted('resume-corrupt');
    fs.writeFileSync(path.join(out, 'progress.json'), '{"shardsDone": 2, "tok');
    const r = await cli(...collectArgs(out).filter((a) => a !== '--quiet'), '--overwrite');
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/progress\.json .*unreadable/);
    sameAsFull(out);
  });
});

describe('#11 case 8: activation shards are integrity-checked on read', () => {
  const broken = (name: string, edit: (dir: string) => void) => { const d = path.join(TMP, name); fs.cpSync(ACTS, d, { recursive: true }); edit(d); return d; };
  const shard = (d: string) => path.join(layerDir(d, 0), 'shard-00001.arrow');

  it('a truncated shard: exit 2 naming the file, with the hint to rebuild it', async () => {
    const d = broken('acts-trunc', (d) => { const b = fs.readFileSync(shard(d)); fs.writeFileSync(shard(d), b.subarray(0, b.length >> 1)); });
    const r = await cli(...trainArgs(d, path.join(TMP, 'p-trunc')));
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/error: activation shard .*layer-00\/shard-00001\.arrow .*(truncated|checksum)/);
    expect(r.err).toMatch(/hint: re-run collect-activations to rebuild it/);
    noStack(r);
    expect(fs.existsSync(path.join(TMP, 'p-trunc'))).toBe(false);
  });

  it('a truncated shard of a dataset without checksums (written before #11): exit 2, not a TypeError', async () => {
    const d = broken('acts-trunc-legacy', (d) => {
      const f = path.join(d, 'manifest.json'); const m = JSON.parse(fs.readFileSync(f, 'utf8')); delete m.shardSha256; fs.writeFileSync(f, JSON.stringify(m));
      const b = fs.readFileSync(shard(d)); fs.writeFileSync(shard(d), b.subarray(0, b.length - 100));
    });
    const r = await cli(...trainArgs(d, path.join(TMP, 'p-trunc2')));
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/error: activation shard .*shard-00001\.arrow is truncated/);
    noStack(r);
  });

  it('a flipped byte in a shard: exit 2 (checksum mismatch)', async () => {
    const d = broken('acts-flip', (d) => { const b = fs.readFileSync(shard(d)); b[b.length >> 1] ^= 0x40; fs.writeFileSync(shard(d), b); });
    const r = await cli(...trainArgs(d, path.join(TMP, 'p-flip')));
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/error: activation shard .*shard-00001\.arrow .*sha256/);
  });

  it('an edited dims in the manifest: exit 2 (manifest disagrees with the shards\' Arrow schema)', async () => {
    const d = broken('acts-dims', (d) => {
      const f = path.join(d, 'manifest.json'); const m = JSON.parse(fs.readFileSync(f, 'utf8')); m.dims.ffn = 128; fs.writeFileSync(f, JSON.stringify(m));
    });
    const r = await cli(...trainArgs(d, path.join(TMP, 'p-dims')));
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/error: activation shard .*shard-00000\.arrow .*mlp_active has 256 .*manifest says 128/);
    noStack(r);
  });
});

describe('#11 case 9: path mistakes are user errors (exit 2, no stack)', () => {
  it('--out that is a file (train, evaluate, export), --data that is a directory', async () => {
    const f = path.join(TMP, 'a-file'); fs.writeFileSync(f, 'keep');
    for (const args of [trainArgs(ACTS, f), ['evaluate-recall', '--activations', ACTS, '--predictors', PRED, '--out', f, '--quiet'], ['export-bundle', '--model', MODEL, '--predictors', PRED, '--out', f, '--quiet']]) {
      const r = await cli(...args);
      expect(r.code, `${args[0]}: ${r.err}`).toBe(2);
      expect(r.err).toMatch(/error: output folder .*a-file is a file/);
      noStack(r);
    }
    expect(fs.readFileSync(f, 'utf8')).toBe('keep');
    const r = await cli(...collectArgs(path.join(TMP, 'o-dir'), TMP));
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/error: data file .* is a directory/);
    noStack(r);
  });

  it.skipIf(!canMount)('a read-only --out is reported as read-only (train, evaluate, export, collect) (skipped only when mount is impossible)', async () => {
    const ro = path.join(TMP, 'ro');
    expect(tryMount(ro, 'ro,size=64k')).toBe(true);
    for (const args of [trainArgs(ACTS, path.join(ro, 'p')), ['evaluate-recall', '--activations', ACTS, '--predictors', PRED, '--out', path.join(ro, 'r'), '--quiet'],
      ['export-bundle', '--model', MODEL, '--predictors', PRED, '--out', path.join(ro, 'b'), '--quiet'], collectArgs(path.join(ro, 'a'))]) {
      const r = await cli(...args);
      expect(r.code, `${args[0]}: ${r.err}`).toBe(2);
      expect(r.err).toMatch(/read-only file system/);
      expect(r.err).toMatch(/hint: choose a writable --out/);
      noStack(r);
    }
  });
});

describe('#11 case 12: smaller ones', () => {
  it('two collects into one --out: the second fails fast, naming the lock holder', async () => {
    const out = path.join(TMP, 'race');
    const [a, b] = await Promise.all([cli(...collectArgs(out)), cli(...collectArgs(out))]);
    expect([a.code, b.code].sort()).toEqual([0, 2]);
    expect((a.code ? a : b).err).toMatch(/error: .*race is being written by another dejavu process \(pid \d+\)/);
    expect(readManifest(out).status).toBe('complete');
  });

  it('--layers with an empty entry is refused', async () => {
    for (const l of ['1,,2', '', '0,']) {
      const r = await cli(...collectArgs(path.join(TMP, 'lay')), '--layers', l);
      expect(r.code, l).toBe(2);
      expect(r.err).toMatch(/--layers/);
    }
    expect(fs.existsSync(path.join(TMP, 'lay'))).toBe(false);
  });

  it('stale temp folders of an export (bundle.tmp-PID, by name and contents) are swept', async () => {
    const b = path.join(TMP, 'bundle-sweep');
    const stale = `${b}.tmp-4000000`;
    fs.mkdirSync(stale); fs.writeFileSync(path.join(stale, 'predictors.safetensors'), 'half');
    const keep = `${b}.tmp-4000001`;
    fs.mkdirSync(keep); fs.writeFileSync(path.join(keep, 'thesis.docx'), 'x');
    const r = await cli('export-bundle', '--model', MODEL, '--predictors', PRED, '--out', b, '--quiet');
    expect(r.code, r.err).toBe(0);
    expect(fs.existsSync(stale)).toBe(false);
    expect(fs.existsSync(path.join(keep, 'thesis.docx'))).toBe(true); // not ours: left alone
  });

  it('a UTF-8 BOM is stripped; invalid UTF-8 is refused naming the byte offset', async () => {
    const bom = path.join(TMP, 'bom.jsonl');
    fs.writeFileSync(bom, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), fs.readFileSync(DATA)]));
    const out = path.join(TMP, 'acts-bom');
    const r = await cli(...collectArgs(out, bom));
    expect(r.code, r.err).toBe(0);
    for (const l of [0, 1]) for (const f of fs.readdirSync(layerDir(ACTS, l))) expect(sameFile(path.join(layerDir(out, l), f), path.join(layerDir(ACTS, l), f))).toBe(true);
    const bad = path.join(TMP, 'bad.jsonl');
    const text = Buffer.from('{"text": "the whale"}\n{"text": "the sea');
    fs.writeFileSync(bad, Buffer.concat([text, Buffer.from([0xff, 0xfe]), Buffer.from('"}\n')]));
    const b = await cli(...collectArgs(path.join(TMP, 'acts-bad'), bad));
    expect(b.code).toBe(2);
    expect(b.err).toMatch(new RegExp(`error: .*bad\\.jsonl is not valid UTF-8: invalid byte 0xff at byte offset ${text.length}`));
    noStack(b);
  });
});
