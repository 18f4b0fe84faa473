/**
 * collect-activations' pipelined shard writing (src/stages/collect.ts: shard bytes serialized and hashed on writer
 * threads, appended through libuv while the next batches are captured) against the serial path
 * (DEJAVU_COLLECT_WRITERS=0: each batch encoded and written on the collecting thread before the next is taken):
 * byte-identical shards and manifest; a disk-full error injected mid-run (DEJAVU_FAULT_ENOSPC_AFTER) exits 2 as on the
 * serial path, leaves no temp file and the same complete shards and progress.json, and the resume completes them;
 * the same with a background flush (fdatasync) after every append (ShardFile's early flushes).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { cli, tmpDir } from './helpers.js';

const REPO = path.join(import.meta.dirname, '..');
const MODEL = path.join(REPO, 'checkpoints', 'opt-fixture'); // 6 layers: 4 writer threads hold one or two each
const DATA = path.join(REPO, 'data', 'calibration.jsonl');
const TMP = tmpDir('dejavu-collect-writers-');
// 35 sequences of 32 in batches of 4, 8 sequences a shard: 5 shards, the last one partial (3 sequences in its last batch)
const args = (out: string, ...extra: string[]) => ['collect-activations', '--model', MODEL, '--data', DATA, '--out', out, '--seq-len', '32',
  '--max-tokens', '1120', '--batch-size', '4', '--set', 'rowsPerShard=256', '--backend', 'wasm', '--quiet', ...extra];

/** every file below dir but summary.json (its timings) and the output marker, with its bytes; manifest.json without its `out` */
function snapshot(dir: string): Record<string, string> {
  const files = (fs.readdirSync(dir, { recursive: true, withFileTypes: true }) as fs.Dirent[]).filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name))).filter((f) => f !== 'summary.json' && f !== '.dejavu-output.json').sort();
  return Object.fromEntries(files.map((f) => {
    const b = fs.readFileSync(path.join(dir, f));
    return [f, f === 'manifest.json' ? b.toString('utf8').replace(/"out": "[^"]*"/, '"out": ""') : b.toString('base64')];
  }));
}
async function collect(out: string, writers: string, ...extra: string[]) {
  process.env.DEJAVU_COLLECT_WRITERS = writers;
  try { return await cli(...args(out, ...extra)); } finally { delete process.env.DEJAVU_COLLECT_WRITERS; }
}

afterEach(() => { delete process.env.DEJAVU_FAULT_ENOSPC_AFTER; });
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

describe('collect: pipelined shard writing', () => {
  let serial: Record<string, string> = {};

  it('writes the same shards and manifest as the serial path: 1 or 4 writer threads, 1 or 2 model workers', async () => {
    const r = await collect(path.join(TMP, 'serial'), '0', '--workers', '1');
    expect(r.code, r.err).toBe(0);
    serial = snapshot(path.join(TMP, 'serial'));
    expect(Object.keys(serial).filter((f) => f.endsWith('.arrow'))).toHaveLength(6 * 5);
    for (const [w, workers] of [['1', '1'], ['4', '1'], ['4', '2']] as const) {
      const out = path.join(TMP, `w${w}-m${workers}`);
      const p = await collect(out, w, '--workers', workers);
      expect(p.code, p.err).toBe(0);
      expect(snapshot(out), `${w} writer(s), ${workers} model worker(s)`).toEqual(serial);
    }
  }, 120_000);

  it('with a background flush after every append (DEJAVU_COLLECT_FLUSH_BYTES=1): the same bytes; a disk-full error as before', async () => {
    process.env.DEJAVU_COLLECT_FLUSH_BYTES = '1';
    try {
      const out = path.join(TMP, 'flush');
      const p = await collect(out, '4', '--workers', '1');
      expect(p.code, p.err).toBe(0);
      expect(snapshot(out)).toEqual(serial);
      const bytes = Object.entries(serial).filter(([f]) => f.endsWith('.arrow')).reduce((a, [, b]) => a + Buffer.from(b, 'base64').length, 0);
      process.env.DEJAVU_FAULT_ENOSPC_AFTER = String(Math.floor(bytes / 2) + 7);
      const full = path.join(TMP, 'flush-full'), r = await collect(full, '4', '--workers', '1');
      delete process.env.DEJAVU_FAULT_ENOSPC_AFTER;
      expect(r.code, r.err).toBe(2);
      const left = snapshot(full);
      expect(Object.keys(left).filter((f) => f.endsWith('.tmp'))).toEqual([]);
      expect(JSON.parse(fs.readFileSync(path.join(full, 'progress.json'), 'utf8')).shardsDone).toBe(2);
      for (const f of Object.keys(left).filter((f) => f.endsWith('.arrow'))) expect(left[f], f).toBe(serial[f]);
    } finally { delete process.env.DEJAVU_COLLECT_FLUSH_BYTES; }
  }, 120_000);

  it('a disk-full error mid-run: exit 2 as on the serial path, no temp file, the same complete shards; the resume completes them', async () => {
    const bytes = Object.entries(serial).filter(([f]) => f.endsWith('.arrow')).reduce((a, [, b]) => a + Buffer.from(b, 'base64').length, 0);
    const limit = Math.floor(bytes / 2); // in the third of five shards
    const results = [];
    for (const [i, w] of ['0', '4'].entries()) {
      const out = path.join(TMP, `full-${w}`);
      process.env.DEJAVU_FAULT_ENOSPC_AFTER = String(limit + i); // a new value restarts the fault's byte count
      const r = await collect(out, w, '--workers', '1');
      delete process.env.DEJAVU_FAULT_ENOSPC_AFTER;
      expect(r.code, r.err).toBe(2);
      expect(r.err).toMatch(/^error: no space left on device while writing activations to .*full-\d \(ENOSPC\)/m);
      expect(r.err).not.toContain('    at ');
      const left = snapshot(out);
      expect(Object.keys(left).filter((f) => f.endsWith('.tmp'))).toEqual([]);
      const progress = JSON.parse(fs.readFileSync(path.join(out, 'progress.json'), 'utf8')) as { shardsDone: number };
      expect(progress.shardsDone).toBe(2);
      for (const f of Object.keys(left).filter((f) => f.endsWith('.arrow'))) expect(left[f], f).toBe(serial[f]);
      results.push({ ...left, 'manifest.json': '' });
    }
    expect(results[1]).toEqual(results[0]);
    const again = await collect(path.join(TMP, 'full-4'), '4', '--workers', '1');
    expect(again.code, again.err).toBe(0);
    expect(snapshot(path.join(TMP, 'full-4'))).toEqual(serial);
  }, 120_000);

  it('runs under `node --max-old-space-size=N` (a Worker refuses that flag: the pools start without it), to the same bytes', () => {
    const out = path.join(TMP, 'heap-flag');
    const r = spawnSync(process.execPath, ['--max-old-space-size=512', path.join(REPO, 'bin', 'dejavu.js'), ...args(out, '--workers', '2')], { encoding: 'utf8', timeout: 120_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(snapshot(out)).toEqual(serial);
  }, 120_000);

  it('refuses a DEJAVU_COLLECT_WRITERS that is not a thread count, before writing anything', async () => {
    const out = path.join(TMP, 'bad-writers');
    const r = await collect(out, 'many');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/error: DEJAVU_COLLECT_WRITERS=many is not a thread count\nhint: set it to a whole number/);
    expect(fs.existsSync(out)).toBe(false);
  });
});
