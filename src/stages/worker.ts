/**
 * The stages' worker thread: one tfjs (the parent's backend; wasm: single-threaded under Node) per worker, serving jobs from a
 * WorkerPool (src/util/pool.ts): a collection batch, a layer's head predictor, a piece of a layer's MLP fit, an evaluation
 * recall pass or perplexity batch. The model (host weights shared with the parent when it sends them), manifests
 * and predictors are loaded once per worker.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ensureBackend, type BackendPreference } from '../backend.js';
import type { ActivationsManifest } from '../activations/dataset.js';
import type { CaptureSpec, LayerHostSpec, LayerReads } from '../activations/capture.js';
import type { ShardJob } from '../activations/format.js';
import type { TrainConfig } from '../config/schemas.js';
import type { HostWeights, Model } from '../model/model.js';
import type { LoadedPredictors } from '../predictors/hooks.js';
import type { MlpJob } from '../predictors/mlp-jobs.js';
import { isUserError } from '../util/errors.js';
import { serveJobs } from '../util/pool.js';
import type { EvalJob } from './evaluate.js';

// each job kind's modules are imported on its first job (or at start-up, for the model's): a worker of one stage
// does not load the others' (start-up measured 700-850 ms for two workers on two cores with every module loaded)
const mods = {
  dataset: () => import('../activations/dataset.js'),
  capture: () => import('../activations/capture.js'),
  format: () => import('../activations/format.js'),
  model: () => import('../model/model.js'),
  hooks: () => import('../predictors/hooks.js'),
  trainLayer: () => import('../predictors/train-layer.js'),
  mlpJobs: () => import('../predictors/mlp-jobs.js'),
  evalJobs: () => import('../eval/jobs.js'),
  evaluate: () => import('./evaluate.js'),
};

/** hostOnly: a worker that does host work only (no model, no tfjs work): the captures' beside a GPU, collect's shard writing */
interface Init { backend: BackendPreference; workerIndex: number; model?: { dir: string; host?: HostWeights } | null; hostOnly?: boolean }
type Job =
  | { kind: 'collect'; seqs: number[][]; firstSeq: number; spec: CaptureSpec }
  | { kind: 'capture-layer'; r: LayerReads; h: LayerHostSpec }
  | ShardJob
  | { kind: 'train'; dir: string; cfg: TrainConfig; layer: number; site: 'mlp' | 'heads' }
  | MlpJob
  | EvalJob;

const init = workerData as Init;
let model: Model | null = null;
const manifests = new Map<string, ActivationsManifest>();
const predictors = new Map<string, LoadedPredictors>();

async function theModel(): Promise<Model> {
  if (!init.model) throw new Error('this worker was started without a model');
  const { loadModel } = await mods.model();
  model ??= loadModel(init.model.dir, init.model.host ? { host: init.model.host } : {});
  return model;
}
const manifest = async (dir: string) => { if (!manifests.has(dir)) manifests.set(dir, (await mods.dataset()).readManifest(dir)); return manifests.get(dir)!; };
const preds = async (dir: string) => { if (!predictors.has(dir)) predictors.set(dir, (await mods.hooks()).loadPredictors(dir)); return predictors.get(dir)!; };

// DEJAVU_TEST_KILL_WORKER (src/util/pool.ts) kills a model worker: a host-only pool's jobs are not the ones it counts
if (init.hostOnly) delete process.env.DEJAVU_TEST_KILL_WORKER;
serveJobs(parentPort!, init.workerIndex, async (job: Job, progress) => {
  switch (job.kind) {
    case 'collect': return (await mods.capture()).captureBatch(await theModel(), job.seqs, job.firstSeq, job.spec);
    case 'capture-layer': return (await mods.capture()).captureLayer(job.r, job.h);
    case 'shard-batch': case 'shard-end': return (await mods.format()).runShardJob(job);
    case 'train': {
      let pending = 0;
      return (await mods.trainLayer()).trainLayer(job.dir, await manifest(job.dir), job.cfg, job.layer, (n) => { pending += n; if (pending >= 2048) { progress(pending); pending = 0; } },
          { [job.site]: true });
    }
    case 'mlp-moments': case 'mlp-fit': case 'mlp-exact': case 'mlp-score': return (await mods.mlpJobs()).runMlpJob(job);
    case 'recall': return (await mods.evaluate()).recallJob(job, await manifest(job.activations), await preds(job.predictors));
    case 'nll': return (await mods.evalJobs()).nllJob(await theModel(), await preds(job.predictors), job.seqs, job.hooks);
  }
}, isUserError, async () => {
  if (init.hostOnly) { await mods.capture(); return; }
  await ensureBackend(init.backend); // the parent's backend (a GPU: each worker its own device on the one GPU queue)
  // the first job's modules now: a collection's batches are timed from the first; a train pool (no model) fits MLPs
  if (init.model) { await theModel(); await mods.capture(); } else await mods.mlpJobs();
});
