/**
 * The decode rows on every core (src/model/kernels/wasm/pool.ts): a matvec split by rows and an axpy split by output
 * columns give the same bits on 1, 2 and 3 threads, for every row dtype, every row, runs and scattered rows; whole
 * decode steps (dense and sparse modes) give the same logits bit for bit at threads 2 and 1; a process whose model
 * has a thread pool exits on its own, and dispose() ends the pool.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { rowMatrix, type RowDtype } from '../src/model/kernels/rows.js';
import { createArena } from '../src/model/kernels/wasm/kernels.js';
import { startPool } from '../src/model/kernels/wasm/pool.js';
import { loadModel } from '../src/model/model.js';
import { DecodeSession, denseModes, type DecodeModes } from '../src/runtime/decoder.js';
import { tmpDir } from './helpers.js';
import { makeRandomCheckpoint } from './reference/random-checkpoint.js';

let seed = 99;
const rnd = () => { seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0; return seed / 4294967296; };
const same = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

describe.each(['float32', 'float16', 'bfloat16', 'q8_0'] as RowDtype[])('%s rows on a thread pool', (dtype) => {
  it.each([2, 3])('threads %i: matvec and axpy equal one thread bit for bit', (threads) => {
    const n = 300, d = 1056; // 300 rows: chunks of 104 / 104 / 92 rows; 1056 columns: 33 blocks of 32 (uneven)
    const w = Float32Array.from({ length: n * d }, () => rnd() * 2 - 1);
    const one = createArena()!, many = createArena(true, true)!;
    try {
      const a = rowMatrix(w, n, d, one, dtype), b = rowMatrix(w, n, d, many, dtype);
      const pool = startPool(many, threads);
      expect(pool.threads).toBe(threads);
      const x = Float32Array.from({ length: d }, () => rnd() * 4 - 2);
      for (const rows of [undefined, Int32Array.from({ length: 150 }, (_, i) => 20 + i), Int32Array.from({ length: 203 }, (_, i) => (i * 37 + 5) % n).sort()]) {
        const k = rows ? rows.length : n;
        const o1 = new Float32Array(k), o2 = new Float32Array(k);
        a.matvec(x, o1, rows); b.matvec(x, o2, rows);
        expect(same(o1, o2)).toBe(true);
        const c = Float32Array.from({ length: k }, () => rnd() - 0.5);
        const y1 = Float32Array.from({ length: d }, (_, j) => j / d), y2 = y1.slice();
        a.axpy(c, y1, rows); b.axpy(c, y2, rows);
        expect(same(y1, y2)).toBe(true);
      }
      expect(pool.calls).toBe(6);
    } finally { one.dispose(); many.dispose(); }
  });
});

describe('decode steps on a thread pool', () => {
  let dir = '';
  beforeAll(async () => {
    await ensureBackend('wasm');
    dir = path.join(tmpDir(), 'llama');
    // matrices of 64k values and more (the pool's threshold is 32k): up / gate / down, LM head
    makeRandomCheckpoint(dir, { family: 'llama', layers: 2, hidden: 128, ffn: 512, heads: 4, kvHeads: 2, vocab: 512, dtype: 'F16', seed: 3 });
  });

  function run(threads: number, dtype: RowDtype, modes: (layers: number) => DecodeModes): { logits: Float32Array[]; threads: number; calls: number } {
    const model = loadModel(dir, { decode: { threads, dtype } });
    try {
      const s = new DecodeSession(model, modes(model.config.layers), 1);
      try {
        const logits = [3, 70, 11, 400, 9, 28, 301].map((id) => s.step([id]));
        return { logits, threads: model.decode!.threads, calls: 0 };
      } finally { s.dispose(); }
    } finally { model.dispose(); }
  }
  const sparse = (layers: number): DecodeModes => ({
    mlp: Array.from({ length: layers }, (_, l) => { const ids = Int32Array.from({ length: 96 }, (_, i) => (i * 5 + l) % 512).sort(); return { mode: 'select' as const, pick: () => ids }; }),
    heads: Array.from({ length: layers }, () => ({ mode: 'select' as const, pick: () => Int32Array.of(0, 3) })),
  });

  it.each(['float16', 'q8_0', 'float32'] as RowDtype[])('%s: threads 2 == threads 1 bit for bit (dense and sparse modes)', (dtype) => {
    for (const modes of [denseModes, sparse]) {
      const a = run(1, dtype, modes), b = run(2, dtype, modes);
      expect(a.threads).toBe(1);
      expect(b.threads).toBe(2);
      a.logits.forEach((l, t) => expect(same(l, b.logits[t]!)).toBe(true));
    }
  });

  it('threads auto keeps one thread for a model this small; threads 2 ends its workers on dispose, and a process exits without it', () => {
    const m = loadModel(dir, { decode: { threads: 'auto', kernels: 'wasm' } });
    expect(m.decode!.threads).toBe(1);
    m.dispose();
    const dist = path.join(import.meta.dirname, '..', 'dist');
    // one process disposes its model, the other never does: both must exit by themselves, after their step ran on the pool
    for (const dispose of [true, false]) {
      const code = `import { ensureBackend } from '${dist}/backend.js'; import { loadModel } from '${dist}/model/model.js'; import { DecodeSession, denseModes } from '${dist}/runtime/decoder.js';
        await ensureBackend('wasm'); const m = loadModel(${JSON.stringify(dir)}, { decode: { threads: 2, kernels: 'wasm' } });
        const s = new DecodeSession(m, denseModes(m.config.layers), 1); s.step([5]); s.dispose();
        const arena = m.decode.lmHead.W.arena; console.log('pool', m.decode.threads, arena.pool.calls > 0);
        ${dispose ? "m.dispose(); console.log('after', arena.pool === null);" : ''}`;
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: 60_000 });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain('pool 2 true');
      if (dispose) expect(r.stdout).toContain('after true');
    }
  });
});
