import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ModelConfig } from '../model/config.js';
import { base } from '../arch/common.js';
import * as tf from '@tensorflow/tfjs-core';
import { benchResultSchema, type StoredBenchResult } from './results-doc.js';
import { median } from '../util/stats.js';

/** Median wall time (ms) of fn over n runs after w warm-ups. */
export function timeIt(fn: () => void, n = 5, w = 1): number {
  for (let i = 0; i < w; i++) fn();
  const ts: number[] = [];
  for (let i = 0; i < n; i++) { const t = performance.now(); fn(); ts.push(performance.now() - t); }
  return median(ts);
}

/**
 * The backend's own matmul rate (GFLOP/s) on an [m, k] x [k, n] product, read back, the product disposed each time
 * (a leaked product measured 12-13% slower on tfjs-wasm: every call then touches fresh memory).
 */
export function matmulRate(m: number, k: number, n: number): number {
  const a = tf.randomNormal([m, k]), b = tf.randomNormal([k, n]);
  try {
    const ms = timeIt(() => { const c = tf.matMul(a, b); c.dataSync(); c.dispose(); }, 9, 2);
    return (2 * m * k * n) / (ms * 1e6);
  } finally { a.dispose(); b.dispose(); }
}

/**
 * matmulRate for every backend (a GPU reads asynchronously): `runs` products queued back to back, then one scalar of
 * the last read back (the device's queue runs them in order), median of 5; the products are disposed as made.
 */
export async function matmulRateAsync(m: number, k: number, n: number, runs = 8): Promise<number> {
  const a = tf.randomNormal([m, k]), b = tf.randomNormal([k, n]);
  const once = async () => {
    let last: tf.Tensor | null = null;
    for (let r = 0; r < runs; r++) { last?.dispose(); last = tf.matMul(a, b); }
    const s = tf.sum(last!); last!.dispose(); await s.data(); s.dispose();
  };
  try {
    await once();
    const ts: number[] = [];
    for (let i = 0; i < 5; i++) { const t = performance.now(); await once(); ts.push(performance.now() - t); }
    return (2 * m * k * n * runs) / (ts.sort((x, y) => x - y)[2]! * 1e6);
  } finally { a.dispose(); b.dispose(); }
}

export function table(header: string[], rows: (string | number)[][]): string {
  return [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

/** OPT-1.3B's widths (24 layers, d 2048, ffn 8192, 32 heads, vocab 50272), as a normalized config. */
export function opt13bConfig(over: Partial<ModelConfig> = {}): ModelConfig {
  const layers = over.layers ?? 24;
  return { ...base(), family: 'opt', vocabSize: 50272, hidden: 2048, layers, heads: 32, kvHeads: 32, headDim: 64, ffn: 8192, maxPositions: 2048, norm: 'layernorm', normEps: 1e-5,
    activation: 'relu', act: 'relu', gated: false, positions: 'learned', positionOffset: 2, ropeTheta: 0, attnScale: 1 / Math.sqrt(over.headDim ?? 64), windows: new Array(layers).fill(null),
    tiedLmHead: true, attnBias: true, mlpBias: true, bosTokenId: 2, eosTokenId: 2, padTokenId: 1, ...over };
}

/**
 * One benchmark's result, as `npm run docs` reads it (scripts/gen-docs.mjs renders docs/results.md from every
 * docs/results/*.json): a title, the command that reproduces it, one or more tables, notes, and the machine it ran on.
 * Every bench writes its result through writeBenchResult; nothing else writes docs/results/.
 */
export type BenchTable = StoredBenchResult['tables'][number];
export type BenchResult = Omit<StoredBenchResult, 'measuredAt' | 'machine'>;

/** the machine a figure comes from: cores, CPU model, load average before the run, node version */
export function machine(): { cores: number; cpu: string; loadavg: number[]; node: string; platform: string } {
  const cpus = os.cpus();
  return { cores: cpus.length, cpu: cpus[0]?.model ?? 'unknown', loadavg: os.loadavg().map((x) => Math.round(x * 100) / 100), node: process.version, platform: `${os.platform()} ${os.arch()}` };
}

/**
 * Write docs/results/<name>.json (temp sibling + rename) — or to BENCH_RESULTS_DIR when set, e.g. on the GPU box —
 * and return its path. `measuredAt` and `machine` are filled in here.
 */
export function writeBenchResult(r: BenchResult): string {
  const dir = process.env.BENCH_RESULTS_DIR ?? path.join('docs', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${r.name}.json`);
  const tmp = `${file}.${process.pid}.tmp`;
  // checked against the schema docs/results.md's generator reads it with (a NaN or Infinity cell, a bad name: refused here)
  const stored = benchResultSchema.parse({ ...r, measuredAt: new Date().toISOString(), machine: machine() });
  fs.writeFileSync(tmp, JSON.stringify(stored, null, 2) + '\n');
  fs.renameSync(tmp, file);
  return file;
}

/**
 * Fixed random index sets for benchmarks (the cost of reading rows, not of a predictor): each call of the returned
 * function gives 8 sorted sets of k of 0..n-1, from one seeded generator shared by all calls (same sets every run).
 */
export function seededSets(seed = 12345): (n: number, k: number) => Int32Array[] {
  let s = seed;
  const rand = () => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s / 0x7fffffff; };
  const choose = (n: number, k: number) => {
    const a = Int32Array.from({ length: n }, (_, i) => i);
    for (let i = 0; i < k; i++) { const j = i + Math.floor(rand() * (n - i)); [a[i], a[j]] = [a[j]!, a[i]!]; }
    return a.slice(0, k).sort();
  };
  return (n, k) => Array.from({ length: 8 }, () => choose(n, k));
}
