/**
 * The stages' worker thread: one tfjs (wasm: single-threaded under Node) per worker, serving jobs from a
 * WorkerPool (src/util/pool.ts): a collection batch, a layer's head predictor, a piece of a layer's MLP fit, an evaluation
 * recall pass or perplexity batch. The model (host weights shared with the parent when it sends them), manifests
 * and predictors are loaded once per worker.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ensureBackend, type BackendPreference } from '../backend.js';
import { readManifest, type ActivationsManifest } from '../activations/dataset.js';
import { captureBatch, type CaptureSpec } from '../activations/capture.js';
import type { TrainConfig } from '../config/schemas.js';
import { loadModel, type HostWeights, type Model } from '../model/model.js';
import { loadPredictors, type LoadedPredictors } from '../predictors/hooks.js';
import { trainLayer } from '../predictors/train-layer.js';
import { runMlpJob, type MlpJob } from '../predictors/mlp-jobs.js';
import { nllJob } from '../eval/jobs.js';
import { isUserError } from '../util/errors.js';
import { serveJobs } from '../util/pool.js';
import { recallJob, type EvalJob } from './evaluate.js';

interface Init { backend: BackendPreference; workerIndex: number; model?: { dir: string; host?: HostWeights } | null }
type Job =
  | { kind: 'collect'; seqs: number[][]; firstSeq: number; spec: CaptureSpec }
  | { kind: 'train'; dir: string; cfg: TrainConfig; layer: number; site: 'mlp' | 'heads' }
  | MlpJob
  | EvalJob;

const init = workerData as Init;
let model: Model | null = null;
const manifests = new Map<string, ActivationsManifest>();
const predictors = new Map<string, LoadedPredictors>();

function theModel(): Model {
  if (!init.model) throw new Error('this worker was started without a model');
  model ??= loadModel(init.model.dir, init.model.host ? { host: init.model.host } : {});
  return model;
}
const manifest = (dir: string) => { if (!manifests.has(dir)) manifests.set(dir, readManifest(dir)); return manifests.get(dir)!; };
const preds = (dir: string) => { if (!predictors.has(dir)) predictors.set(dir, loadPredictors(dir)); return predictors.get(dir)!; };

serveJobs(parentPort!, init.workerIndex, async (job: Job, progress) => {
  switch (job.kind) {
    case 'collect': return captureBatch(theModel(), job.seqs, job.firstSeq, job.spec);
    case 'train': {
      let pending = 0;
      return trainLayer(job.dir, manifest(job.dir), job.cfg, job.layer, (n) => { pending += n; if (pending >= 2048) { progress(pending); pending = 0; } }, { [job.site]: true });
    }
    case 'mlp-moments': case 'mlp-exact': case 'mlp-score': return runMlpJob(job);
    case 'recall': return recallJob(job, manifest(job.activations), preds(job.predictors));
    case 'nll': return nllJob(theModel(), preds(job.predictors), job.seqs, job.hooks);
  }
}, isUserError, async () => {
  await ensureBackend(init.backend === 'tensorflow' ? 'tensorflow' : init.backend === 'cpu' ? 'cpu' : 'wasm');
  if (init.model) theModel();
});
