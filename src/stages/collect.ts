/**
 * collect-activations: dense forward passes over packed calibration text; per layer, one Arrow row per token.
 * Streaming (one shard per layer in flight), resumable (progress.json names the complete shards), atomic renames.
 *
 * Writing is pipelined: a batch's shard bytes are serialized and hashed (sha256) on writer threads (one thread per
 * layer group: a file's hash is sequential) and appended to the temp files through libuv's threads, while this
 * thread goes on to the next batches; a batch waits only for the previous batch's writing (so at most one batch is
 * being written: bounded memory), and everything a batch's writing changes (statistics, the shard's end, progress.json)
 * happens in the serial order. Why: on the GPU box at OPT-1.3B widths, 24 layers x 19 MB of shard bytes a batch,
 * serializing, hashing and writing them cost this one thread 0.75 s a batch (sha256 0.46 s of it) against a 0.28 s
 * forward, and the GPU waited (1,063 tokens/s, 0.19 of the matmul rate); with writer threads this thread hands such
 * a batch over in 1-3 ms (measured on the 2-core machine, where the serial path keeps it busy 1.1-1.2 s).
 * DEJAVU_COLLECT_WRITERS=N sets the writer threads; 0 does it all on this thread, each batch written before the next
 * is taken (the serial path; the output is byte-identical: test/collect-writers.test.ts). A shard's end (the fsync
 * of its files, their renames, progress.json) runs while the next batch is captured and encoded; that batch's
 * appends wait for it, so the bytes reach the disk in the serial order.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type { z } from 'zod';
import type { StageResult } from './types.js';
import { VERSION } from '../version.js';
import type { CollectConfig } from '../config/schemas.js';
import { fingerprintCheckpoint, sameFingerprint, type Fingerprint } from '../checkpoint/checkpoint.js';
import { isPretokenized, packSequences, readDocuments } from '../activations/data.js';
import { ACTIVATIONS_FORMAT_VERSION, REBUILD_HINT, runShardJob, ShardFile, type LayerCols, type LayerSchemaSpec, type ShardBytes, type ShardJob } from '../activations/format.js';
import { activationsManifestSchema, activationsSummarySchema, collectProgressSchema, layerDir, readManifest, readSummary, shardKey, shardName, type ActivationsManifest } from '../activations/dataset.js';
import { issueLines } from '../util/json-artifact.js';
import { loadHostWeights, loadModel, type Model } from '../model/model.js';
import { normalizeConfig } from '../model/config.js';
import { openCheckpoint } from '../checkpoint/checkpoint.js';
import { captureBatch, readBuffers, type BatchCapture, type CaptureSpec, type LayerCapture, type LayerHost } from '../activations/capture.js';
import { releaseStaging } from '../activations/gpu-pack.js';
import { defaultWorkers, WorkerPool } from '../util/pool.js';
import { defaultModelWorkers, getBackend, hostWorkersBeside } from '../backend.js';
import { stageWorkerScript } from './worker-script.js';
import { loadTokenizer } from '../tokenizer.js';
import { fsUserError, UserError } from '../util/errors.js';
import { checkOutput, lockOutput, MARKER, removeOwned, sweepAtomicTemps, writeMarker } from '../util/outdir.js';
import { sha256, sha256File, writeJsonAtomic } from '../util/fsx.js';
import type { StageDeps } from '../util/progress.js';

export interface LayerStats { tokens: number; active: number; headNormSum: number[]; headNormSq: number[]; actAbsSum: number }
/** one batch's contribution to a layer's statistics (a shard records them, so that a merge adds them in the same order) */
export interface BatchStats { active: number; absSum: number; headNormSum: number[]; headNormSq: number[] }
export interface BatchRecord { firstSeq: number; rows: number; layers: BatchStats[] }
/** per complete shard: its files' sha256, and the token count and layer stats after it (so a resume can roll back);
 * with --shard also its batches' statistics */
interface ShardRecord { sha256: Record<string, string>; tokens: number; stats: Record<string, LayerStats>; batches?: BatchRecord[] }
interface Progress { shardsDone: number; tokens: number; seconds: number; shards: ShardRecord[] }
/** what a --shard collection adds to its manifest: which shard, the run's sequence count, its batches' statistics */
export interface ShardInfo { index: number; count: number; runSequences: number; batches: BatchRecord[] }

/** the config as recorded in the manifest: the worker count and the shard change nothing in the dataset */
function withoutWorkers(cfg: CollectConfig): Omit<CollectConfig, 'workers' | 'shard'> {
  const { workers: _w, shard: _s, ...rest } = cfg;
  return rest;
}

/** What makes two collections the same (resume) or different (refuse without --overwrite); the shards of one run share it. */
function identity(cfg: CollectConfig, m: { fingerprint: unknown; tokenizerHash: string | null; dataHash: string }) {
  const { overwrite: _o, backend: _b, out: _out, workers: _w, shard: _s, ...rest } = cfg;
  return JSON.stringify({ ...rest, ...m });
}

/** dataset shard s of a run cut into `count` process shards belongs to shard s % count (round robin: no count of the
 * data needed up front); the k-th dataset shard of process shard `index` is index + k * count */
const globalShard = (sh: { index: number; count: number } | undefined, k: number) => sh ? sh.index + k * sh.count : k;

/** collect's shard writer threads: DEJAVU_COLLECT_WRITERS (0: on the collecting thread, serially), else one per layer
 * up to the cores but one (at least one) */
function shardWriters(layers: number): number {
  const v = process.env.DEJAVU_COLLECT_WRITERS ?? '';
  if (v !== '' && !/^\d+$/.test(v)) throw new UserError(`DEJAVU_COLLECT_WRITERS=${v} is not a thread count`, 'set it to a whole number (0: write on the collecting thread), or unset it');
  return Math.min(layers, v !== '' ? Number(v) : Math.max(1, defaultWorkers() - 1));
}

/** the buffers a layer's capture lives in that can move to a writer thread whole (a view of a larger buffer is copied) */
function movable(lc: LayerCapture): ArrayBuffer[] {
  if (lc.packed) return [lc.packed.buffer as ArrayBuffer];
  const views = [lc.xAttn, lc.xMlp, lc.bits, lc.headNorm, ...(lc.mlpAct ? [lc.mlpAct] : [])];
  return [...new Set(views.filter((v) => v.buffer instanceof ArrayBuffer && v.byteOffset === 0 && v.byteLength === v.buffer.byteLength).map((v) => v.buffer as ArrayBuffer))];
}

export const newStats = (heads: number): LayerStats => ({ tokens: 0, active: 0, headNormSum: new Array(heads).fill(0), headNormSq: new Array(heads).fill(0), actAbsSum: 0 });
/** add one batch to a layer's running statistics (the one order of additions: collect and merge give the same doubles) */
export function addBatch(st: LayerStats, rows: number, b: BatchStats): void {
  st.tokens += rows; st.active += b.active; st.actAbsSum += b.absSum;
  for (let h = 0; h < st.headNormSum.length; h++) { st.headNormSum[h]! += b.headNormSum[h]!; st.headNormSq[h]! += b.headNormSq[h]!; }
}

/** what a collection is made from: the checkpoint, its tokenizer (none for pre-tokenized data), the data file and the config */
async function collectInputs(cfg: CollectConfig) {
  const fingerprint = fingerprintCheckpoint(cfg.model);
  const tokenizer = (await isPretokenized(cfg.data)) ? null : loadTokenizer(cfg.model);
  const dataHash = sha256File(cfg.data);
  return { fingerprint, tokenizer, dataHash, id: identity(cfg, { fingerprint, tokenizerHash: tokenizer?.hash ?? null, dataHash }) };
}

/** the dataset in `out` against this collection: the same identity and the same --shard (`same`: a resume), complete or not */
function compareExisting(out: string, cfg: CollectConfig, id: string, fingerprint: Fingerprint) {
  let old: ActivationsManifest | null = null;
  try { old = readManifest(out, false); } catch { old = null; }
  const oldShard = (old as { shard?: ShardInfo } | null)?.shard;
  const sameShard = (oldShard ? `${oldShard.index}/${oldShard.count}` : '') === (cfg.shard ? `${cfg.shard.index}/${cfg.shard.count}` : '');
  const same = Boolean(old && (old.config as { identity?: string }).identity === id && sameFingerprint(old.model.fingerprint, fingerprint) && sameShard);
  return { old, oldShard, sameShard, same, current: same && old!.status === 'complete' };
}

/** collect-activations' rule: its output is current when `out` holds a complete dataset of ours with the same identity (collectInputs) and --shard */
export async function collectCurrent(cfg: CollectConfig): Promise<boolean> {
  if (checkOutput(cfg.out, 'activations').state !== 'ours' || !fs.existsSync(path.join(cfg.out, 'manifest.json'))) return false;
  const { id, fingerprint } = await collectInputs(cfg);
  return compareExisting(cfg.out, cfg, id, fingerprint).current;
}

export async function runCollect(cfg: CollectConfig, deps: StageDeps): Promise<StageResult> {
  const t0 = Date.now();
  const { fingerprint, tokenizer, dataHash, id } = await collectInputs(cfg);
  // one worker per core (each with its own tfjs, host weights shared), or in-process when there is one batch at most
  const expectBatches = cfg.maxTokens ? Math.ceil(Math.ceil(cfg.maxTokens / cfg.seqLen) / cfg.batchSize) : Infinity;
  const nWorkers = Math.min(cfg.workers || defaultModelWorkers(defaultWorkers()), expectBatches);
  let pool: WorkerPool | null = null, hostPool: WorkerPool | null = null, writerPools: WorkerPool[] = [];
  let model: Model | null = null;
  let layerHost: LayerHost | undefined;
  if (nWorkers > 1) {
    const host = loadHostWeights(cfg.model, { shared: true });
    pool = new WorkerPool(stageWorkerScript(), nWorkers, { backend: getBackend() ?? 'wasm', model: { dir: cfg.model, host } }, 'collect worker');
  } else {
    model = loadModel(cfg.model);
    // beside a GPU: each layer's host work (float16, bits, statistics) on the other cores, its reads moved there
    const nHost = Math.min(hostWorkersBeside(defaultWorkers()), cfg.layers === 'all' ? model.config.layers : cfg.layers.length);
    if (nHost > 0) {
      const hp = hostPool = new WorkerPool(stageWorkerScript(), nHost, { backend: 'cpu', model: null, hostOnly: true }, 'collect host worker');
      layerHost = (r, h) => hp.run<LayerCapture | null>(`layer ${r.layer} of the batch of sequences ${h.firstSeq}..${h.firstSeq + h.nSeq - 1}`, { kind: 'capture-layer', r, h },
        { transfer: readBuffers(r) });
    }
  }
  try {
    const c = normalizeConfig(openCheckpoint(cfg.model).rawConfig, `${cfg.model}/config.json`);
    const layers = cfg.layers === 'all' ? Array.from({ length: c.layers }, (_, i) => i) : [...new Set(cfg.layers)].sort((a, b) => a - b);
    for (const l of layers) if (l >= c.layers) throw new UserError(`layer ${l} does not exist: the model has ${c.layers} layers (0..${c.layers - 1})`, 'fix --layers');
    const mlpAct = cfg.recordMlpAct === 'auto' ? c.activation !== 'relu' : cfg.recordMlpAct;
    const seqsPerShard = Math.max(cfg.batchSize, Math.floor(cfg.rowsPerShard / cfg.seqLen / cfg.batchSize) * cfg.batchSize);
    const fields = ['seq', 'pos', 'x_attn', 'x_mlp', 'mlp_active', ...(mlpAct ? ['mlp_act'] : []), 'head_norm'];
    const nWriters = expectBatches > 1 ? shardWriters(layers.length) : 0; // one batch: nothing to overlap
    // one pool of one thread each: a layer's jobs run in order on its own thread (its encoder's state lives there)
    writerPools = Array.from({ length: nWriters }, (_, i) => new WorkerPool(stageWorkerScript(), 1, { backend: 'cpu', model: null, hostOnly: true }, `collect shard writer ${i + 1} of ${nWriters}`));

    // --- output folder: new, resume, or refuse (src/util/outdir.ts: marker, lock, only our own folders)
    const out = cfg.out;
    const lock = lockOutput(out, 'activations'); // refuses a folder holding anything collect did not write, links included
    let aside: string | null = null; // the dataset --overwrite replaces, kept until the new one is complete
    let createdHere = false, startedEmpty = false;
    try {
      const before = lock.before;
      let progress: Progress = { shardsDone: 0, tokens: 0, seconds: 0, shards: [] };
      if (before.state === 'ours' && fs.existsSync(path.join(out, 'manifest.json'))) {
        const { old, oldShard, sameShard, same, current } = compareExisting(out, cfg, id, fingerprint);
        if (current) {
          deps.log(`collect-activations: ${out} is complete and current; nothing to do`);
          return summarize(out, old!);
        }
        if (same) {
          progress = verifiedProgress(out, layers, deps.log, (k) => globalShard(cfg.shard, k));
          deps.log(`collect-activations: resuming ${out} after ${progress.shardsDone} complete shard(s) (${progress.tokens} tokens)`);
        } else if (!cfg.overwrite) {
          if (old && !sameShard) throw new UserError(`output folder ${out} holds ${oldShard ? `shard ${oldShard.index}/${oldShard.count}` : 'an unsharded collection'}, not ${cfg.shard ? `shard ${cfg.shard.index}/${cfg.shard.count}` : 'an unsharded one'}`, 'give each shard its own --out, or pass --overwrite to replace it');
          throw new UserError(`output folder ${out} holds activations from a different model, data or config`, 'choose another --out, or pass --overwrite to replace it');
        } else {
          aside = path.join(path.dirname(path.resolve(out)), `.${path.basename(path.resolve(out))}.dejavu-old-${process.pid}`);
          if (before.legacy) writeMarker(out, 'activations'); // a leftover of a kill -9 must be recognizable as ours to be swept
          fs.renameSync(out, aside);
        }
      } else if (before.state === 'ours' && !cfg.overwrite && fs.readdirSync(out).some((f) => f !== MARKER)) {
        throw new UserError(`output folder ${out} holds an unfinished activations dataset without manifest.json`, 'pass --overwrite to replace it, or choose another --out');
      }
      createdHere = !fs.existsSync(out);
      startedEmpty = createdHere || before.state === 'empty' || !!aside || progress.shardsDone === 0;
      fs.mkdirSync(out, { recursive: true });
      writeMarker(out, 'activations', sha256(id));
      sweepAtomicTemps(out);
      const kept = new Set(Array.from({ length: progress.shardsDone }, (_, k) => globalShard(cfg.shard, k)));
      for (const l of layers) {
        const ld = layerDir(out, l);
        fs.mkdirSync(ld, { recursive: true });
        // drop shards past the last complete one, and temp files of a killed run: regular files of our names only
        for (const e of fs.readdirSync(ld, { withFileTypes: true })) {
          const m = /^(?:shard-(\d{5,})\.arrow|\.shard-\d{5,}\.arrow\.tmp)$/.exec(e.name);
          if (e.isFile() && m && (m[1] === undefined || !kept.has(Number(m[1])))) fs.rmSync(path.join(ld, e.name));
        }
      }
      const resumedFromShard = progress.shardsDone;
      const manifest: ActivationsManifest = {
        formatVersion: ACTIVATIONS_FORMAT_VERSION, kind: 'dejavu-activations', toolVersion: VERSION, status: 'in-progress',
        config: { ...withoutWorkers(cfg), identity: id, resolved: { mlpAct, seqsPerShard } },
        model: { dir: cfg.model, fingerprint, config: c }, tokenizerHash: tokenizer?.hash ?? null,
        data: { file: cfg.data, sha256: dataHash }, seqLen: cfg.seqLen, seqsPerShard, layers,
        dims: { hidden: c.hidden, ffn: c.ffn, heads: c.heads, headDim: c.headDim }, dtype: cfg.dtype, fields,
        tokens: 0, sequences: 0, shards: 0, ...(cfg.shard ? { shard: { ...cfg.shard } } : {}),
      };
      writeChecked(path.join(out, 'manifest.json'), activationsManifestSchema, manifest);

      const schemas = new Map(layers.map((l): [number, LayerSchemaSpec] => [l, { layer: l, hidden: c.hidden, ffn: c.ffn, heads: c.heads, dtype: cfg.dtype, mlpAct }]));
      const stats = new Map(layers.map((l) => [l, (progress.shards.at(-1)?.stats[l] && structuredClone(progress.shards.at(-1)!.stats[l]!)) ?? newStats(c.heads)]));
      const total = cfg.maxTokens ?? NaN;
      const bar = deps.progress('collect', Number.isFinite(total) ? total : 0, 'tok');
      let seqIndex = 0;
      let shardIndex = 0;
      let files: Map<number, ShardFile> | null = null;
      let tokens = progress.tokens;
      const startTokens = tokens;
      // sequences of dataset shards this process does not write: complete ones (resume), other processes' (--shard)
      const skip = (seq: number) => {
        const ds = Math.floor(seq / seqsPerShard);
        return cfg.shard ? ds % cfg.shard.count !== cfg.shard.index || Math.floor(ds / cfg.shard.count) < progress.shardsDone : ds < progress.shardsDone;
      };
      let shardBatches: BatchRecord[] = []; // --shard: the statistics of the batches of the shard being written
      let batch: number[][] = [], batchFirst = 0;
      await pool?.ready(); // worker start-up (backend, model) is not collection time
      await hostPool?.ready();
      await Promise.all(writerPools.map((p) => p.ready()));
      const tRun = Date.now();
      let forwardMs = 0, captureMs = 0, writeMs = 0, writeWaitMs = 0, captureWaitMs = 0;

      // a layer's shard bytes are made on its writer thread (or here, serially) and appended here, in order
      const slot = new Map(layers.map((l, i) => [l, i]));
      const encode = (l: number, job: ShardJob, transfer: ArrayBuffer[] = []): Promise<ShardBytes> => nWriters
        ? writerPools[slot.get(l)! % nWriters]!.run<ShardBytes>(`layer ${l}'s ${job.kind === 'shard-end' ? 'shard end' : `batch of sequences from ${job.firstSeq}`}`, job, { transfer })
        : Promise.resolve().then(() => runShardJob(job));
      // shards whose temp files exist (not yet renamed): removed if the run fails
      const open = new Set<Map<number, ShardFile>>();
      const openShard = () => {
        const m = new Map(layers.map((l) => [l, new ShardFile(path.join(layerDir(out, l), `.${shardName(globalShard(cfg.shard, shardIndex))}.tmp`))]));
        open.add(m);
        return m;
      };
      // a shard's end: its footers are appended as part of its last batch's writing; its fsync, rename and
      // progress.json follow on `finishing` while the next batch is captured and encoded, whose appends wait for it (so
      // every byte reaches the disk in the serial order: a disk-full error leaves the same complete shards)
      let finishing: Promise<void> = Promise.resolve();
      const endShard = async () => {
        if (!files) return;
        const fin = files, g = globalShard(cfg.shard, shardIndex);
        // the statistics after this shard, taken now (the next shard's batches change them meanwhile)
        const after = { tokens, stats: structuredClone(Object.fromEntries(stats)), ...(cfg.shard ? { batches: shardBatches } : {}) };
        files = null;
        shardIndex++;
        shardBatches = [];
        // in the layers' order (the manifest's keys), as the serial writer did
        const sums = await Promise.all([...fin].map(async ([l, f]) => {
          const e = await encode(l, { kind: 'shard-end', file: f.file });
          await f.append(e.bytes);
          return [shardKey(l, g), e.sha256!] as const;
        }));
        finishing = finishing.then(async () => {
          await Promise.all([...fin.values()].map((f) => f.close()));
          for (const [l, f] of fin) fs.renameSync(f.file, path.join(layerDir(out, l), shardName(g)));
          open.delete(fin);
          const rec: ShardRecord = { sha256: Object.fromEntries(sums), ...after };
          progress = { shardsDone: progress.shardsDone + 1, tokens: after.tokens, seconds: progress.seconds, shards: [...progress.shards, rec] };
          writeChecked(path.join(out, 'progress.json'), collectProgressSchema, progress);
        });
        finishing.catch(() => undefined); // observed by the next batch's appends, the drain or the abort below
      };
      // batches are fixed sets of sequences (sequence i -> batch floor(i / batchSize)); with a pool they run in
      // parallel, one tfjs per worker, and are written here strictly in order
      const spec: CaptureSpec = { layers, seqLen: cfg.seqLen, dtype: cfg.dtype, mlpAct };
      // the previous batch's writing (its shard bytes, and the shard's end when it ended one); awaited before the next
      // batch changes anything, so the order of every change is the serial one
      let writing: Promise<void> = Promise.resolve();
      const writeBatch = async (b: BatchCapture) => {
        const w = performance.now();
        await writing;
        const s = performance.now();
        writeWaitMs += s - w;
        forwardMs += b.forwardMs; captureMs += b.captureMs;
        const rows = b.rows, nSeq = rows / cfg.seqLen, first = !files;
        const shard = files ??= openShard();
        if (cfg.shard) shardBatches.push({ firstSeq: b.firstSeq, rows,
          layers: b.layers.map((lc) => ({ active: lc.active, absSum: lc.absSum, headNormSum: [...lc.headNormSum], headNormSq: [...lc.headNormSq] })) });
        const ended = finishing;
        const appended = b.layers.map((lc) => {
          addBatch(stats.get(lc.layer)!, rows, { active: lc.active, absSum: lc.absSum, headNormSum: lc.headNormSum, headNormSq: lc.headNormSq });
          const f = shard.get(lc.layer)!;
          const cols: LayerCols = { rows, xAttn: lc.xAttn, xMlp: lc.xMlp, mlpActiveBits: lc.bits, headNorm: lc.headNorm, ...(lc.mlpAct ? { mlpAct: lc.mlpAct } : {}) };
          return encode(lc.layer, { kind: 'shard-batch', file: f.file, first, schema: schemas.get(lc.layer)!, firstSeq: b.firstSeq, seqLen: cfg.seqLen, cols }, movable(lc))
            .then(async (e) => { await ended; await f.append(e.bytes); });
        });
        tokens += rows;
        bar.update(tokens, { shard: shardIndex });
        const ends = (b.firstSeq + nSeq) % seqsPerShard === 0;
        writing = Promise.all(appended).then(() => ends ? endShard() : undefined);
        writing.catch(() => undefined); // observed by the next batch, the drain or the abort below
        if (!nWriters) { await writing; await finishing; } // the serial path: this batch is on disk before the next is taken
        writeMs += performance.now() - s;
      };
      const inflight: Promise<BatchCapture>[] = [];
      // in-process: two batches in flight, so the backend runs the next batch's forward (queued when it starts) while
      // this thread reads back and converts the previous one's captures (a GPU's queue; on wasm the same, serially)
      const maxInflight = pool ? pool.size + 1 : 2;
      const runBatch = async (seqs: number[][], firstSeq: number) => {
        const p = pool ? pool.run<BatchCapture>(`the batch of sequences ${firstSeq}..${firstSeq + seqs.length - 1}`, { kind: 'collect', seqs, firstSeq, spec })
          : captureBatch(model!, seqs, firstSeq, spec, layerHost);
        p.catch(() => undefined); // awaited in order below; a failure surfaces there
        inflight.push(p);
        while (inflight.length >= maxInflight) await writeBatch(await oldest());
      };
      const oldest = async () => { const w = performance.now(), b = await inflight.shift()!; captureWaitMs += performance.now() - w; return b; };
      const drain = async () => { while (inflight.length) await writeBatch(await oldest()); await writing; };

      const tfBefore = tf.memory().numTensors;
      try {
        shardIndex = progress.shardsDone;
        for await (const s of packSequences(readDocuments(cfg.data), { seqLen: cfg.seqLen, cfg: c, tokenizer, maxTokens: cfg.maxTokens, source: cfg.data })) {
          const idx = seqIndex++;
          if (skip(idx)) continue;
          if (!batch.length) batchFirst = idx;
          batch.push(s);
          if (batch.length === cfg.batchSize) { await runBatch(batch, batchFirst); batch = []; }
        }
        const collected = progress.shardsDone && (globalShard(cfg.shard, progress.shardsDone - 1) + 1) * seqsPerShard;
        if (collected > 0 && seqIndex < collected)
          throw new UserError(`the data now yields fewer sequences (${seqIndex}) than were already collected (${collected})`, 'use --overwrite');
        if (batch.length) await runBatch(batch, batchFirst);
        await drain();
        await endShard();
        await finishing;
      } catch (e) {
        await writing.catch(() => undefined); // the writes in flight end (or fail) before their files are removed
        await finishing.catch(() => undefined);
        for (const m of open) for (const f of m.values()) await f.abort();
        startedEmpty = progress.shardsDone === 0; // with complete shards the run stays resumable
        throw e;
      } finally {
        bar.stop();
      }
      if (tf.memory().numTensors !== tfBefore) throw new Error(`tensor leak in collect: ${tf.memory().numTensors - tfBefore} tensors`);
      const runSeconds = (Date.now() - tRun) / 1000;
      const shardSha256 = Object.assign({}, ...progress.shards.map((r) => r.sha256)) as Record<string, string>;
      const done: ActivationsManifest = cfg.shard // a shard: its own tokens and files, and what the merge needs
        ? { ...manifest, status: 'complete', tokens, sequences: tokens / cfg.seqLen, shards: shardIndex, shardSha256,
          shard: { ...cfg.shard, runSequences: seqIndex, batches: progress.shards.flatMap((r) => r.batches ?? []) } satisfies ShardInfo } as ActivationsManifest
        : { ...manifest, status: 'complete', tokens: seqIndex * cfg.seqLen, sequences: seqIndex, shards: shardIndex, shardSha256 };
      const newTokens = tokens - startTokens;
      const summary = {
        tokens: done.tokens, sequences: done.sequences, shards: done.shards,
        seconds: (Date.now() - t0) / 1000,
        tokensPerSecond: newTokens > 0 ? newTokens / runSeconds : null,
        workers: pool ? pool.size : 1,
        /** forward and capture: summed over workers (thread time) */
        /** this thread: writeMs its part of the writing, its waits for the oldest batch's capture and for the previous batch's writing */
        timing: { forwardMs: Math.round(forwardMs), captureMs: Math.round(captureMs), writeMs: Math.round(writeMs), captureWaitMs: Math.round(captureWaitMs), writeWaitMs: Math.round(writeWaitMs) },
        resumedFromShard,
        layers: layerSummaries(layers, stats, c.ffn, !!cfg.shard),
      };
      writeChecked(path.join(out, 'summary.json'), activationsSummarySchema, summary);
      writeChecked(path.join(out, 'manifest.json'), activationsManifestSchema, done);
      fs.rmSync(path.join(out, 'progress.json'), { force: true });
      if (aside) { fs.rmSync(aside, { recursive: true, force: true }); aside = null; }
      return summarize(out, done);
    } catch (e) {
      // nothing half-written: a run that completed no shard leaves the folder as it found it (later failures stay
      // resumable); a dataset that --overwrite was replacing comes back
      // (only what collect writes is removed: a file put there meanwhile stays, and then so does the set-aside dataset)
      if (aside) {
        if (removeOwned(out, 'activations')) { fs.rmdirSync(out); fs.renameSync(aside, out); }
        else deps.log(`warning: ${out} now holds files collect did not write, so the dataset it was replacing stays in ${aside}`);
      }
      else if (startedEmpty && fs.existsSync(out) && removeOwned(out, 'activations') && createdHere) fs.rmdirSync(out);
      throw fsUserError(e, 'writing activations to', out);
    } finally {
      lock.release();
    }
  } finally {
    model?.dispose();
    releaseStaging(); // the GPU reads' staging buffers (host memory the size of a batch's packed layers, twice)
    await pool?.close();
    await hostPool?.close();
    await Promise.all(writerPools.map((p) => p.close()));
  }
}

/** summary.json's per-layer statistics */
export function layerSummaries(layers: number[], stats: Map<number, LayerStats>, ffn: number, emptyOk = false) {
  return layers.map((l) => {
    const st = stats.get(l)!;
    // a shard may get no dataset shard (fewer of them than shards): its statistics are zeros, not NaN
    if (emptyOk && !st.tokens) return { layer: l, mlpDensity: 0, mlpMeanAbsAct: 0, headNormMean: st.headNormSum.map(() => 0), headNormStd: st.headNormSq.map(() => 0) };
    return {
      layer: l,
      mlpDensity: st.active / (st.tokens * ffn),
      mlpMeanAbsAct: st.actAbsSum / (st.tokens * ffn),
      headNormMean: st.headNormSum.map((s) => s / st.tokens),
      headNormStd: st.headNormSq.map((s, h) => Math.sqrt(Math.max(0, s / st.tokens - (st.headNormSum[h]! / st.tokens) ** 2))),
    };
  });
}

/** Write one of the dataset's JSON files after checking it as its readers will (a file that fails is a bug: exit 1). */
export function writeChecked(file: string, schema: z.ZodType, value: unknown): void {
  const back: unknown = JSON.parse(JSON.stringify(value)); // what a reader gets (NaN and Infinity become null)
  const r = schema.safeParse(back);
  if (!r.success) throw new Error(`collect-activations produced an invalid ${path.basename(file)} (${file}): ${issueLines(r.error, back, 5).join('; ')}`);
  writeJsonAtomic(file, value);
}

/** progress.json of a resumable run, checked against the shards on disk: resume from the first missing or altered one. */
function verifiedProgress(out: string, layers: number[], log: (m: string) => void, g: (k: number) => number): Progress {
  const fresh: Progress = { shardsDone: 0, tokens: 0, seconds: 0, shards: [] };
  const pf = path.join(out, 'progress.json');
  if (!fs.existsSync(pf)) return fresh;
  let p: Progress;
  try {
    const raw: unknown = JSON.parse(fs.readFileSync(pf, 'utf8'));
    const r = collectProgressSchema.safeParse(raw);
    if (!r.success) throw new Error(`unexpected contents (written by another dejavu version?): ${issueLines(r.error, raw, 5).join('; ')}`);
    p = raw as Progress;
  } catch (e) {
    log(`collect-activations: ${pf} is unreadable (${(e as Error).message}); restarting the collection from shard 0`);
    return fresh;
  }
  for (let s = 0; s < p.shardsDone; s++) for (const l of layers) {
    const file = path.join(layerDir(out, l), shardName(g(s)));
    const problem = !fs.existsSync(file) ? 'is missing' : sha256File(file) !== p.shards[s]!.sha256[shardKey(l, g(s))] ? 'fails its sha256 check' : null;
    if (problem) {
      log(`collect-activations: ${file} ${problem}; rebuilding from shard ${g(s)}`);
      const shards = p.shards.slice(0, s);
      return { shardsDone: s, tokens: shards.at(-1)?.tokens ?? 0, seconds: p.seconds, shards };
    }
  }
  return p;
}

export function summarize(out: string, m: ActivationsManifest): StageResult {
  const summary = readSummary(out);
  if (!summary) throw new UserError(`activations dataset ${out} has no summary.json`, REBUILD_HINT);
  const lines = [`activations: ${out}`, `tokens ${m.tokens} in ${m.sequences} sequences of ${m.seqLen}, ${m.shards} shard(s) per layer` +
    (summary.tokensPerSecond ? `, ${summary.tokensPerSecond.toFixed(0)} tokens/s` : ''), '', '| layer | MLP density |', '|---:|---:|'];
  for (const l of summary.layers) lines.push(`| ${l.layer} | ${l.mlpDensity.toFixed(4)} |`);
  return { text: lines.join('\n'), json: { out, manifest: m, summary } };
}
