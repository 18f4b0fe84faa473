/**
 * train-predictors: per layer, an MLP-neuron predictor and an attention-head predictor, calibrated to a target
 * recall on a validation split carved (by sequence) from the training activations. Layers are spread over
 * worker_threads (one tfjs each; tfjs-wasm runs single-threaded under Node).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { StageResult } from './types.js';
import { VERSION } from '../version.js';
import { trainSchema, type TrainConfig } from '../config/schemas.js';
import { readManifest, verifyDataset } from '../activations/dataset.js';
import { beginOutput, checkOutput, writeOutput } from '../util/outdir.js';
import { PREDICTORS_FORMAT_VERSION, predictorsManifestSchema, writePredictors, readPredictorsManifest, type PredictorsManifest } from '../predictors/store.js';
import { writeArtifact } from '../util/json-artifact.js';
import { trainLayer, type LayerResult } from '../predictors/train-layer.js';
import { runMlpJob, valEveryOf, type MlpExec, type MlpJob } from '../predictors/mlp-jobs.js';
import { candidateTable, ruleText } from '../predictors/fit-mlp.js';
import { isUserError, UserError } from '../util/errors.js';
import { workerCount, WorkerPool } from '../util/pool.js';
import { stageWorkerScript } from './worker-script.js';
import { fingerprintCheckpoint, sameFingerprint } from '../checkpoint/checkpoint.js';
import { sha256, sha256File } from '../util/fsx.js';
import type { StageDeps } from '../util/progress.js';
import { getBackend, onHostBackend } from '../backend.js';
import { assertFinitePredictor, checkMetrics } from '../predictors/finite.js';

/**
 * Every layer's head predictor is a job (it trains); every layer's MLP fit runs here, its data-parallel pieces (a
 * shard's moments, a chunk of validation rows' scores: src/predictors/mlp-jobs.ts) dealt to the same worker threads
 * (one tfjs each), or everything in-process with one worker. Jobs are cut the same way for any worker count and
 * their results combined in a fixed order, so the predictors do not depend on the worker count.
 */
async function trainInWorkers(dir: string, cfg: TrainConfig, layers: number[], pool: WorkerPool | null, onSamples: (n: number) => void): Promise<{ results: LayerResult[]; mainJobs: number }> {
  const m = readManifest(dir);
  const heads = cfg.heads.enabled ? layers : [], mlp = cfg.mlp.enabled ? layers : [];
  let headParts: LayerResult[], mlpParts: LayerResult[], mainJobs = [0];
  if (!pool) {
    headParts = [];
    for (const layer of heads) { headParts.push(await trainLayer(dir, m, cfg, layer, onSamples, { heads: true })); await new Promise((r) => setImmediate(r)); }
    mlpParts = [];
    for (const layer of mlp) mlpParts.push(await trainLayer(dir, m, cfg, layer, onSamples, { mlp: true }));
  } else {
    // head jobs first (they train longest); the MLP fits queue their pieces behind them, two layers at a time
    const hs = heads.map((layer) => pool.run<LayerResult>(`the head predictor of layer ${layer}`, { kind: 'train', dir, cfg, layer, site: 'heads' }, { onProgress: (v) => onSamples(v as number) }));
    for (const p of hs) p.catch(() => undefined);
    const exec = helpedExec(pool);
    mainJobs = exec.done;
    const ms: Promise<LayerResult>[] = [];
    for (const [i, layer] of mlp.entries()) {
      // at most two layers' fits in flight (each holds its validation rows and scores); a failure stops the later ones
      const after = i >= 2 ? ms[i - 2]!.then(() => undefined) : Promise.resolve();
      const p = after.then(() => trainLayer(dir, m, cfg, layer, onSamples, { mlp: true }, exec));
      p.catch(() => undefined);
      ms.push(p);
    }
    headParts = []; mlpParts = [];
    for (const p of hs) headParts.push(await p);
    for (const p of ms) mlpParts.push(await p);
  }
  const results = layers.map((layer) => {
    const mr = mlpParts[mlp.indexOf(layer)], hr = headParts[heads.indexOf(layer)];
    const mine = [mr, hr].filter((r): r is LayerResult => !!r);
    const seconds = mine.reduce((s, r) => s + r.seconds, 0), samples = mine.reduce((s, r) => s + (r.samples ?? 0), 0);
    const log = [...(mr?.log ?? []), ...(hr?.log ?? [])];
    return { layer, ...(mr?.mlp ? { mlp: mr.mlp } : {}), ...(hr?.heads ? { heads: hr.heads } : {}), log, seconds, samples, samplesPerSecond: samples / Math.max(1e-3, seconds) } as LayerResult;
  });
  return { results, mainJobs: mainJobs[0]! };
}

/**
 * The MLP fit's jobs on the pool. While the workers are still starting (loading their modules and backend: 0.2-0.8 s
 * for two on two cores), one job per worker is queued there and this thread runs the others itself (the same
 * functions on the same backend give the same results); once they are up, every job goes to the pool's queue, so the
 * workers stay busy while this thread decomposes and calibrates. `done[0]` counts this thread's jobs.
 */
function helpedExec(pool: WorkerPool): MlpExec & { done: number[] } {
  let ready = false;
  pool.ready().then(() => { ready = true; }, () => { ready = true; });
  const queue: { label: string; job: MlpJob; resolve: (r: unknown) => void; reject: (e: unknown) => void }[] = [];
  let inflight = 0, helping = false;
  const done = [0];
  const pump = () => {
    while (queue.length && (ready || inflight < pool.size)) {
      const t = queue.shift()!;
      inflight++;
      pool.run(t.label, t.job).then(t.resolve, t.reject).finally(() => { inflight--; pump(); });
    }
    if (!ready && queue.length && !helping) {
      helping = true;
      setImmediate(() => {
        helping = false;
        const t = ready ? undefined : queue.shift();
        if (t) { try { t.resolve(runMlpJob(t.job)); done[0]!++; } catch (e) { t.reject(e); } }
        pump();
      });
    }
  };
  return { done, run: <R>(label: string, job: MlpJob) => new Promise<R>((resolve, reject) => { queue.push({ label, job, resolve: resolve as (r: unknown) => void, reject }); pump(); }) };
}

export async function runTrain(cfg: TrainConfig, deps: StageDeps): Promise<StageResult> {
  return onHostBackend(deps.log, 'train-predictors', () => train(cfg, deps));
}

/** what predictors are made from: the activations' manifest and the config (less where they go, the backend and the worker count; the shard kept: each shard folder is its own output) */
function trainIdentity(cfg: TrainConfig, manifestHash: string): string {
  return JSON.stringify({ activations: manifestHash, cfg: { ...cfg, out: undefined, overwrite: undefined, backend: undefined, workers: undefined } });
}
/** the predictors in `out` when they read back with this identity, else null (none, unfinished or other) and what is there */
function existing(out: string, identity: string): { current: PredictorsManifest | null; old: PredictorsManifest | null } {
  let old: PredictorsManifest | null = null;
  try { old = readPredictorsManifest(out); } catch { old = null; }
  return { current: old?.identity === identity ? old : null, old };
}

/** train-predictors' rule: its output is current when `out` holds predictors of ours that read back with the same identity (trainIdentity) */
export function trainCurrent(cfg: TrainConfig): boolean {
  if (checkOutput(cfg.out, 'predictors').state !== 'ours' || !fs.existsSync(path.join(cfg.activations, 'manifest.json'))) return false;
  return existing(cfg.out, trainIdentity(cfg, sha256File(path.join(cfg.activations, 'manifest.json')))).current !== null;
}

async function train(cfg: TrainConfig, deps: StageDeps): Promise<StageResult> {
  const t0 = Date.now();
  const m = readManifest(cfg.activations);
  const manifestHash = sha256File(path.join(cfg.activations, 'manifest.json'));
  const allLayers = cfg.layers === 'all' ? m.layers : [...new Set(cfg.layers)].sort((a, b) => a - b);
  // --shard i/n: the layers at positions i, i+n, ...
  const layers = cfg.shard ? allLayers.filter((_, k) => k % cfg.shard!.count === cfg.shard!.index) : allLayers;
  if (!layers.length) throw new UserError(`shard ${cfg.shard!.index}/${cfg.shard!.count} gets no layer: there are only ${allLayers.length} layer(s) to train`, `use at most ${allLayers.length} shard(s) for train-predictors`);
  for (const l of allLayers) if (!m.layers.includes(l)) throw new UserError(`layer ${l} is not in the activations dataset (collected layers: ${m.layers.join(', ')})`, 'fix --layers');
  const identity = trainIdentity(cfg, manifestHash);
  let current: PredictorsManifest | null = null;
  const w = beginOutput(cfg.out, 'predictors', {
    identity: sha256(identity),
    mayReplace: (before) => {
      if (before.state !== 'ours') return;
      const { old, current: cur } = existing(cfg.out, identity);
      if (cur) { current = cur; return; }
      if (!cfg.overwrite) throw new UserError(old ? `output folder ${cfg.out} holds predictors trained on other activations or with another config` : `output folder ${cfg.out} holds unfinished predictors`, 'choose another --out, or pass --overwrite');
    },
  });
  if (current) {
    w.abort();
    deps.log(`train-predictors: ${cfg.out} is complete and current; nothing to do`);
    return summarize(cfg.out, current);
  }
  // worker start-up (backend) overlaps the dataset checks; the MLP fit has pieces for every worker
  const nWorkers = workerCount(cfg.workers);
  const poolSize = cfg.mlp.enabled ? nWorkers : cfg.heads.enabled ? workerCount(cfg.workers, layers.length) : 0;
  const pool = poolSize > 1 ? new WorkerPool(stageWorkerScript(), poolSize, { backend: getBackend() ?? 'wasm', model: null }, 'train worker') : null;
  try {
    verifyDataset(cfg.activations, m, layers);
    // the MLP predictors are fitted to the checkpoint's own first projection and norm
    const modelDir = cfg.model ?? m.model.dir;
    if (cfg.mlp.enabled) {
      let fp;
      try { fp = fingerprintCheckpoint(modelDir); } catch (e) {
        throw isUserError(e) ? new UserError(`${e.message} (the checkpoint of ${cfg.activations})`, 'pass --model with the checkpoint the activations were collected from') : e;
      }
      if (!sameFingerprint(fp, m.model.fingerprint)) throw new UserError(`checkpoint ${modelDir} is not the one the activations in ${cfg.activations} were collected from`, 'pass --model with that checkpoint');
    }
    const valEvery = valEveryOf(cfg.validationFraction);
    if (m.sequences < valEvery)
      throw new UserError(`${cfg.activations} holds ${m.sequences} sequence(s), but with validationFraction ${cfg.validationFraction} only every ${valEvery}th sequence is held out for validation: there is none to calibrate the predictors on`,
        `collect at least ${valEvery} sequences (--max-tokens ${valEvery * m.seqLen} at --seq-len ${m.seqLen}), or raise train.validationFraction (at most 0.49)`);
    cfg = { ...cfg, model: modelDir };
  } catch (e) { w.abort(); await pool?.close(); throw e; }
  const trainRows = Math.round(m.tokens * (1 - cfg.validationFraction));
  // progress in rows read: the MLP fit reads each row once (plus the epochs of a Deja Vu candidate), heads train for epochs
  const trainRowsCapped = Math.min(trainRows, cfg.maxSamples ?? Infinity);
  const perLayer = (cfg.mlp.enabled ? m.tokens + (cfg.mlp.predictors.includes('dejavu') ? trainRowsCapped * cfg.optim.epochs : 0) : 0) + (cfg.heads.enabled ? trainRowsCapped * cfg.optim.epochs : 0);
  const bar = deps.progress('train', perLayer * layers.length, 'samples');
  let done = 0;
  deps.log(`train-predictors: ${layers.length} layer(s) on up to ${nWorkers} worker(s), ${m.tokens} tokens (${Math.round(cfg.validationFraction * 100)}% of sequences held for validation)`);
  let results: LayerResult[], mainJobs = 0;
  const usedWorkers = pool ? pool.size : 1;
  let jobsPerWorker: number[] | undefined;
  const tTrain = Date.now();
  try {
    ({ results, mainJobs } = await trainInWorkers(cfg.activations, cfg, layers, pool, (n) => { done += n; bar.update(Math.min(done, perLayer * layers.length)); }));
  } catch (e) {
    w.abort();
    throw e;
  } finally {
    bar.stop();
    jobsPerWorker = pool?.jobsPerWorker();
    await pool?.close();
  }
  const tWall = Date.now();
  // a diverged run (NaN/Inf weights) is an error, never a folder of predictors with perfect-looking metrics
  for (const r of results) for (const site of ['mlp', 'heads'] as const) {
    const res = r[site];
    if (!res) continue;
    for (const [h, prefix] of [[res.host, site], [res.hostUp, 'mlp.up']] as const)
      if (h) assertFinitePredictor(h, `training diverged: layer ${r.layer} ${site === 'mlp' ? 'MLP' : 'head'} predictor`, prefix, divergedHint(cfg));
    checkMetrics(res.validation, `layer ${r.layer} ${site === 'mlp' ? 'MLP' : 'head'} predictor (validation)`);
  }
  const seconds = (Date.now() - t0) / 1000;
  const manifest: PredictorsManifest = {
    formatVersion: PREDICTORS_FORMAT_VERSION, kind: 'dejavu-predictors', toolVersion: VERSION, identity,
    config: cfg, activations: { dir: cfg.activations, manifestSha256: manifestHash, tokens: m.tokens }, model: { fingerprint: m.model.fingerprint, config: m.model.config },
    // samples: rows read (MLP fit: each training row once, plus calibration; heads: rows x epochs), over wall time
    training: { seconds, workers: usedWorkers, samplesPerSecond: results.reduce((s, r) => s + (r.samples ?? 0), 0) / Math.max(1e-3, (tWall - tTrain) / 1000),
        ...(jobsPerWorker ? { jobsPerWorker, mainThreadJobs: mainJobs } : {}) },
    layers: [],
  };
  await writeOutput(w, cfg.out, (tmp) => {
    writePredictors(tmp, manifest, results);
    // a shard records the whole layer list and its layer files' sha256, which dejavu merge checks
    if (cfg.shard) writeArtifact(predictorsManifestSchema, { ...manifest, shard: { ...cfg.shard, layers: allLayers,
      sha256: Object.fromEntries(manifest.layers.map((l) => [l.file, sha256File(path.join(tmp, l.file))])) } }, path.join(tmp, 'predictors.json'), 'predictors manifest', { seal: true });
  });
  return summarize(cfg.out, readPredictorsManifest(cfg.out));
}

/**
 * What most likely made training diverge, named by its key: a weight decay that scales the weights by
 * 1 - lr x weightDecay <= 0 each step (decoupled, AdamW) can only blow up or flip them, when it is the factor further
 * above its default (optim.weightDecay=1e8); otherwise the learning rate (optim.lr=1e6).
 */
export function divergedHint(cfg: TrainConfig): string {
  const { lr, weightDecay } = cfg.optim, { lr: DEFAULT_LR, weightDecay: DEFAULT_WEIGHT_DECAY } = trainSchema.shape.optim.parse({});
  if (lr * weightDecay >= 1 && weightDecay / DEFAULT_WEIGHT_DECAY > lr / DEFAULT_LR)
    return `lower optim.weightDecay (now ${weightDecay}): each step scales the weights by 1 - optim.lr x optim.weightDecay = ${+(1 - lr * weightDecay).toPrecision(4)}; e.g. --set optim.weightDecay=${DEFAULT_WEIGHT_DECAY} (the default), then train again`;
  return `lower optim.lr (now ${lr}), e.g. --set optim.lr=${Math.min(DEFAULT_LR, lr / 10)}; then train again`;
}

function pct(x: number) { return (100 * x).toFixed(1) + '%'; }

export function summarize(out: string, p: PredictorsManifest): StageResult {
  const lines = [`predictors: ${out} (${p.layers.length} layers, ${p.training.seconds.toFixed(0)} s, ${p.training.samplesPerSecond.toFixed(0)} samples/s)`, '',
    '| layer | MLP mode | rank | MLP rule | MLP recall | MLP precision | predicted density | true density | ratio | est. MLP cost | head rule | head recall |',
    '|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|'];
  for (const l of p.layers) {
    const mm = l.mlp, h = l.heads;
    if (mm) checkMetrics(mm.validation, `layer ${l.layer} MLP predictor (validation)`);
    if (h) checkMetrics(h.validation, `layer ${l.layer} head predictor (validation)`);
    lines.push(`| ${l.layer} | ${mm ? mm.predictor : '-'} | ${mm ? mm.rank : '-'} | ${ruleText(mm?.rule)} | ${mm ? mm.validation.recall.toFixed(4) : '-'} | ${mm ? mm.validation.precision.toFixed(3) : '-'} | ${mm ? pct(mm.validation.predictedDensity) : '-'} | ${mm ? pct(mm.validation.trueDensity) : '-'} | ${mm ? (mm.validation.predictedDensity / Math.max(1e-9, mm.validation.trueDensity)).toFixed(2) + 'x' : '-'} | ${mm?.costShare !== undefined ? pct(mm.costShare) : '-'} | ${ruleText(h?.rule)} | ${h ? h.validation.recall.toFixed(3) : '-'} |`);
  }
  for (const l of p.layers) if (l.mlp?.candidates?.length) lines.push('', ...candidateTable(l.layer, l.mlp.candidates));
  return { text: lines.join('\n'), json: p };
}
