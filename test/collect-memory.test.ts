import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FIXTURES, tmpDir } from './helpers.js';

const REPO = path.join(import.meta.dirname, '..');

/** peak RSS (KiB) of a child process that runs one collection of `tokens` tokens */
function peakRss(tokens: number, out: string): number {
  const script = `
    import { ensureBackend } from ${JSON.stringify(path.join(REPO, 'dist', 'backend.js'))};
    import { collectSchema } from ${JSON.stringify(path.join(REPO, 'dist', 'config', 'schemas.js'))};
    import { runCollect } from ${JSON.stringify(path.join(REPO, 'dist', 'stages', 'collect.js'))};
    await ensureBackend('wasm');
    const quiet = { log: () => {}, progress: () => ({ update: () => {}, stop: () => {} }) };
    await runCollect(collectSchema.parse({ model: ${JSON.stringify(path.join(FIXTURES, 'opt-tiny-ref'))}, data: ${JSON.stringify(path.join(REPO, 'data', 'calibration.jsonl'))},
      out: ${JSON.stringify(out)}, seqLen: 128, batchSize: 4, maxTokens: ${tokens}, rowsPerShard: 1024 }), quiet);
    console.log(JSON.stringify({ maxRSS: process.resourceUsage().maxRSS }));`;
  const r = spawnSync('node', ['--input-type=module', '-e', script], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').pop()!).maxRSS;
}

describe('collect-activations memory', () => {
  it('peak RSS does not grow with the number of tokens (doubling tokens moves it by < 10%)', () => {
    const tmp = tmpDir();
    const a = peakRss(12_288, path.join(tmp, 'a'));
    const b = peakRss(24_576, path.join(tmp, 'b'));
    const shards = (d: string) => fs.readdirSync(path.join(d, 'layer-00')).length;
    expect(shards(path.join(tmp, 'b'))).toBe(2 * shards(path.join(tmp, 'a'))); // twice the data really was written
    expect(Math.abs(b - a) / a, `peak RSS ${a} KiB -> ${b} KiB`).toBeLessThan(0.1);
  });
});
