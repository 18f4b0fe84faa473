/**
 * Every core for the decode rows: a persistent pool of worker threads, each with its own instance of the kernels over
 * the arena's one shared WebAssembly memory (SharedArrayBuffer). A call writes each worker's kernel index and nine
 * arguments into a control block in that memory, bumps a generation counter (Atomics.notify), runs its own chunk, and
 * waits for the done counter; workers spin briefly on the counter, then sleep in Atomics.wait. No thread starts per
 * token, no message passing per call. Chunks are whole rows (matvec) or whole output columns (axpy), so a result is
 * the same bits on any number of threads (kernels.ts: rowChunks, columnChunks).
 *
 * Control block (int32): [0] generation, [1] workers done, [2] quit, [3] a worker's kernel threw, [4] workers ready;
 * from 8: 16 slots a worker: kernel index (-1: nothing this time), then its arguments.
 */
import { Worker } from 'node:worker_threads';
import { ROW_FNS, type RowPool, type WasmArena } from './kernels.js';

const SPIN = 200_000; // Atomics.load rounds (~0.1-0.3 ms) before sleeping: the calls of a step follow each other closely
const TIMEOUT_MS = 30_000;

// a classic worker script (eval: no file to find, from src/ under vitest or dist/ from the CLI)
const WORKER = `
const { workerData } = require('node:worker_threads');
const { module, memory, ctl, index, count, names, spin } = workerData;
const ex = new WebAssembly.Instance(module, { env: { memory } }).exports;
const fns = names.map((n) => ex[n]);
const c = new Int32Array(memory.buffer, ctl, 8 + 16 * count);
Atomics.add(c, 4, 1); Atomics.notify(c, 4);
let seen = 0;
for (;;) {
  let g = Atomics.load(c, 0);
  for (let s = 0; g === seen && s < spin; s++) g = Atomics.load(c, 0);
  while (g === seen) { Atomics.wait(c, 0, seen); g = Atomics.load(c, 0); }
  seen = g;
  if (Atomics.load(c, 2)) break;
  const o = 8 + 16 * index, f = c[o];
  if (f >= 0) try { fns[f](c[o + 1], c[o + 2], c[o + 3], c[o + 4], c[o + 5], c[o + 6], c[o + 7], c[o + 8], c[o + 9]); } catch { Atomics.store(c, 3, 1); }
  if (Atomics.add(c, 1, 1) + 1 === count) Atomics.notify(c, 1);
}
`;

class Pool implements RowPool {
  private readonly c: Int32Array;
  private readonly workers: Worker[];
  private readonly fns: ((...a: number[]) => void)[];
  private closed = false;
  calls = 0;
  constructor(private readonly arena: WasmArena, readonly threads: number) {
    const sh = arena.shared!, count = threads - 1;
    const ctl = arena.alloc(4 * (8 + 16 * count));
    if (ctl === null) throw new Error('wasm kernel arena is full');
    this.c = new Int32Array(sh.memory.buffer, ctl, 8 + 16 * count);
    this.c.fill(0);
    const ex = arena.exports() as unknown as Record<string, (...a: number[]) => void>;
    this.fns = ROW_FNS.map((n) => ex[n]!);
    this.workers = Array.from({ length: count }, (_, index) => {
      // execArgv []: the parent's flags (-e, --input-type=module) would make this script something else
      const w = new Worker(WORKER, { eval: true, execArgv: [], workerData: { module: sh.module, memory: sh.memory, ctl, index, count, names: ROW_FNS, spin: SPIN } });
      w.unref(); // never keeps a process alive; dispose() ends them
      w.on('error', () => undefined); // a dead worker shows as a timeout in run()
      return w;
    });
    const t0 = Date.now();
    for (let r; (r = Atomics.load(this.c, 4)) < count;) {
      if (Date.now() - t0 > TIMEOUT_MS) { this.dispose(); throw new Error(`decode thread pool: ${r} of ${count} worker threads started within ${TIMEOUT_MS / 1000} s`); }
      Atomics.wait(this.c, 4, r, 100);
    }
  }

  run(fn: number, chunks: (number[] | null)[]): void {
    if (this.closed) throw new Error('decode thread pool used after its model was disposed');
    const c = this.c, count = this.threads - 1;
    this.calls++;
    for (let w = 0; w < count; w++) {
      const a = chunks[w + 1], o = 8 + 16 * w;
      c[o] = a ? fn : -1;
      if (a) for (let j = 0; j < 9; j++) c[o + 1 + j] = a[j]!;
    }
    Atomics.store(c, 1, 0);
    Atomics.add(c, 0, 1);
    Atomics.notify(c, 0);
    if (chunks[0]) this.fns[fn]!(...chunks[0]);
    for (let s = 0, v; (v = Atomics.load(c, 1)) !== count; s++)
      if (s > SPIN && Atomics.wait(c, 1, v, TIMEOUT_MS) === 'timed-out') throw new Error(`decode thread pool: a worker thread did not finish a kernel within ${TIMEOUT_MS / 1000} s`);
    if (c[3]) { c[3] = 0; throw new Error(`decode thread pool: kernel ${ROW_FNS[fn]} failed in a worker thread`); }
  }

  dispose(): void {
    if (this.closed) return;
    this.closed = true;
    Atomics.store(this.c, 2, 1);
    Atomics.add(this.c, 0, 1);
    Atomics.notify(this.c, 0);
    for (const w of this.workers) void w.terminate();
    if (this.arena.pool === this) this.arena.pool = null;
  }
}

/** Start `threads` - 1 worker threads over a shared arena (this thread is the last one); the arena runs its row kernels on them. */
export function startPool(arena: WasmArena, threads: number): RowPool {
  if (!arena.shared) throw new Error('startPool: the arena has no shared memory');
  arena.pool?.dispose();
  const p = new Pool(arena, threads);
  arena.pool = p;
  return p;
}
