/**
 * A fixed pool of worker_threads running one script; jobs are queued and dealt to the first free worker. Callers
 * keep results deterministic by indexing them (the pool only decides *where* a job runs, never what it computes).
 *
 * Protocol: the pool posts {id, job}; the worker answers {id, type: 'progress', value} any number of times, then
 * {id, type: 'done', result} or {id, type: 'error', user, message, hint, stack}. A worker that dies (exit, crash,
 * out of memory) fails its job and every later one with an error naming the worker and the job.
 */
import * as os from 'node:os';
import { Worker } from 'node:worker_threads';
import { UserError } from './errors.js';

/** The cores this process may use: the default worker count, and the most any pool starts. */
export function defaultWorkers(): number {
  return Math.max(1, os.availableParallelism?.() ?? os.cpus().length);
}

/**
 * Worker threads for a request (0 = one per core) and a job count: never more than the cores (each worker is a
 * thread with its own tfjs and heap: a thousand of them exhaust memory) nor more than the jobs. WorkerPool applies
 * the core cap itself, whatever its caller asks.
 */
export function workerCount(requested: number, jobs = Infinity): number {
  return Math.max(1, Math.min(requested || defaultWorkers(), defaultWorkers(), jobs));
}

interface Pending { id: number; label: string; job: unknown; transfer: ArrayBuffer[]; onProgress: ((v: unknown) => void) | undefined; resolve: (r: unknown) => void; reject: (e: Error) => void }
interface Slot { index: number; worker: Worker; threadId: number; busy: Pending | null; dead: boolean; done: number }

export interface WorkerMessage { id: number; type: 'ready' | 'progress' | 'done' | 'error'; value?: unknown; result?: unknown; user?: boolean; message?: string; hint?: string; stack?: string }

/** the parent's Node flags minus those that only make sense for a main script (-e/--eval/-p/--print, --input-type)
 * and the per-isolate V8 limits a Worker refuses (ERR_WORKER_INVALID_EXEC_ARGV: `node --max-old-space-size=N` would
 * fail every pool; a worker's heap is its own) */
function workerExecArgv(): string[] {
  const out: string[] = [];
  const a = process.execArgv;
  for (let i = 0; i < a.length; i++) {
    if (['-e', '--eval', '-p', '--print'].includes(a[i]!)) { i++; continue; }
    if (/^(--input-type|--eval=|--print=|--(max-old-space-size|max-semi-space-size|stack-size)(=|$))/.test(a[i]!)) continue;
    out.push(a[i]!);
  }
  return out;
}

export class WorkerPool {
  private slots: Slot[] = [];
  private queue: Pending[] = [];
  private nextId = 0;
  private failure: Error | null = null;
  private closing = false;
  private readyCount = 0;
  private readyWaiters: (() => void)[] = [];

  /** the workers started: the size asked for, capped at the cores (workerCount) */
  readonly size: number;

  constructor(script: string, size: number, workerData: unknown, private readonly what = 'worker') {
    this.size = workerCount(size);
    for (let i = 0; i < this.size; i++) {
      const worker = new Worker(script, { workerData: { ...(workerData as object), workerIndex: i }, execArgv: workerExecArgv() });
      const slot: Slot = { index: i, worker, threadId: worker.threadId, busy: null, dead: false, done: 0 };
      worker.on('message', (m: WorkerMessage) => this.onMessage(slot, m));
      worker.on('error', (e) => this.onDeath(slot, `crashed: ${e.message}`));
      worker.on('exit', (code) => { if (!this.closing || slot.busy) this.onDeath(slot, `exited unexpectedly (exit code ${code})`); });
      this.slots.push(slot);
    }
  }

  private name(slot: Slot) { return `${this.what} ${slot.index + 1} of ${this.size} (thread ${slot.threadId})`; }

  /** Queue one job; resolves with the worker's result. `transfer`: buffers moved (not copied) to the worker. */
  run<R>(label: string, job: unknown, opts: { transfer?: ArrayBuffer[]; onProgress?: (v: unknown) => void } = {}): Promise<R> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<R>((resolve, reject) => {
      this.queue.push({ id: this.nextId++, label, job, transfer: opts.transfer ?? [], onProgress: opts.onProgress, resolve: resolve as (r: unknown) => void, reject });
      this.pump();
    });
  }

  private pump() {
    for (const slot of this.slots) {
      if (slot.dead || slot.busy || !this.queue.length) continue;
      const p = this.queue.shift()!;
      slot.busy = p;
      slot.worker.postMessage({ id: p.id, job: p.job }, p.transfer);
    }
  }

  /** Resolves when every worker has finished its start-up (backend, model); rejects if one dies first. */
  ready(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.readyCount >= this.size) return Promise.resolve();
    return new Promise<void>((resolve) => this.readyWaiters.push(resolve)).then(() => { if (this.failure) throw this.failure; });
  }

  private onMessage(slot: Slot, m: WorkerMessage) {
    if (m.type === 'ready') {
      if (++this.readyCount >= this.size) for (const w of this.readyWaiters.splice(0)) w();
      return;
    }
    const p = slot.busy;
    if (!p || p.id !== m.id) return;
    if (m.type === 'progress') { p.onProgress?.(m.value); return; }
    slot.busy = null;
    slot.done++;
    if (m.type === 'done') p.resolve(m.result);
    else {
      const e = m.user ? new UserError(m.message!, m.hint) : Object.assign(new Error(`${this.name(slot)}, ${p.label}: ${m.message}`), { stack: m.stack });
      p.reject(e);
    }
    this.pump();
  }

  private onDeath(slot: Slot, how: string) {
    if (slot.dead) return;
    slot.dead = true;
    const e = new Error(`${this.name(slot)} ${how}${slot.busy ? ` while running ${slot.busy.label}` : ''}`);
    this.failure ??= e;
    for (const w of this.readyWaiters.splice(0)) w();
    const victims = [...(slot.busy ? [slot.busy] : []), ...this.queue.splice(0)];
    slot.busy = null;
    for (const v of victims) v.reject(this.failure);
  }

  /** How many jobs each worker has finished (which worker ran what is up to the pool: never part of a result). */
  jobsPerWorker(): number[] { return this.slots.map((s) => s.done); }

  /** Terminate every worker (after the jobs the caller awaited). */
  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}

/**
 * Worker side: answer jobs with `handle` (sync or async), one at a time. `progress(v)` reports to the job's caller.
 * Test hook: DEJAVU_TEST_KILL_WORKER="I:N" exits worker I (0-based) just before its N-th job (1-based); "*:N" exits the
 * worker that receives the pool's N-th job, whichever it is (deterministic however the jobs are scheduled).
 */
export function serveJobs(port: import('node:worker_threads').MessagePort, workerIndex: number,
  handle: (job: never, progress: (v: unknown) => void) => unknown | Promise<unknown>, isUser: (e: unknown) => boolean, init: () => Promise<void> = async () => undefined): void {
  let n = 0;
  const kill = /^(\d+|\*):(\d+)$/.exec(process.env.DEJAVU_TEST_KILL_WORKER ?? '');
  // start-up first (its failure is reported with the first job); then 'ready'
  const started = init().then(() => port.postMessage({ id: -1, type: 'ready' }));
  started.catch(() => port.postMessage({ id: -1, type: 'ready' }));
  let chain: Promise<void> = started.catch(() => undefined);
  port.on('message', (msg: { id: number; job: unknown }) => {
    chain = chain.then(async () => {
      n++;
      if (kill && (kill[1] === '*' ? msg.id === Number(kill[2]) - 1 : Number(kill[1]) === workerIndex && Number(kill[2]) === n)) process.exit(70);
      try {
        await started;
        const result = await handle(msg.job as never, (value) => port.postMessage({ id: msg.id, type: 'progress', value }));
        const transfer = collectTransferables(result);
        port.postMessage({ id: msg.id, type: 'done', result }, transfer);
      } catch (e) {
        port.postMessage({ id: msg.id, type: 'error', user: isUser(e), message: (e as Error).message, hint: (e as { hint?: string }).hint, stack: (e as Error).stack });
      }
    });
  });
}

/** ArrayBuffers of typed arrays inside a result (not shared ones): moved to the caller instead of copied. */
function collectTransferables(v: unknown, out: ArrayBuffer[] = [], seen = new Set<unknown>()): ArrayBuffer[] {
  if (!v || typeof v !== 'object' || seen.has(v)) return out;
  seen.add(v);
  if (ArrayBuffer.isView(v)) {
    const b = v.buffer;
    if (b instanceof ArrayBuffer && !out.includes(b) && v.byteLength === b.byteLength) out.push(b);
    return out;
  }
  for (const x of Array.isArray(v) ? v : Object.values(v)) collectTransferables(x, out, seen);
  return out;
}
