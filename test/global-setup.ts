/**
 * vitest globalSetup: build dist/ (and the native decode kernels) once from the current src/ before any test runs. Some tests run dist/ (spawned
 * CLI, kill -9, memory, unhandled rejections); building it here means they never run stale code. dist/ is removed
 * first so a file deleted or moved in src/ cannot survive in dist/.
 *
 * The plan stage caches its kernel-cost model in $DEJAVU_CACHE_DIR (else ~/.cache/dejavu-ts): every test (and every
 * CLI it spawns) gets a fresh temp folder instead, removed at the end, so tests never write to the user's cache.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export default function setup(): () => void {
  const cache = fs.mkdtempSync(path.join(os.tmpdir(), 'dejavu-test-cache-'));
  process.env.DEJAVU_CACHE_DIR = cache; // inherited by the test workers and the processes they spawn
  const repo = path.join(import.meta.dirname, '..');
  fs.rmSync(path.join(repo, 'dist'), { recursive: true, force: true });
  const tsc = path.join(repo, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: repo, encoding: 'utf8', timeout: 300_000 });
  if (r.status !== 0) throw new Error(`building dist/ failed (tsc exit ${r.status}):\n${r.stdout}${r.stderr}`);
  // the native decode kernels and collect's readback copy, each rebuilt when its source is newer (never fatal: without
  // a compiler test/decode-native skips and says why)
  const nat = spawnSync(process.execPath, [path.join(repo, 'scripts', 'build-native.mjs')], { cwd: repo, encoding: 'utf8', timeout: 120_000 });
  if (nat.stderr) process.stderr.write(nat.stderr);
  return () => fs.rmSync(cache, { recursive: true, force: true });
}
