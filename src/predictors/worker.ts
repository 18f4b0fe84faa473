/** Worker thread: one tfjs (wasm) per worker, trains the layers it is sent. */
import { parentPort } from 'node:worker_threads';
import { ensureBackend, type BackendName } from '../backend.js';
import { readManifest } from '../activations/dataset.js';
import type { TrainConfig } from '../config/schemas.js';
import { isUserError } from '../util/errors.js';
import { trainLayer } from './train-layer.js';

interface Job { dir: string; cfg: TrainConfig; layer: number; backend: BackendName }

parentPort!.on('message', async (job: Job | 'exit') => {
  if (job === 'exit') { process.exit(0); }
  try {
    await ensureBackend(job.backend);
    const m = readManifest(job.dir);
    let pending = 0;
    const res = trainLayer(job.dir, m, job.cfg, job.layer, (n) => {
      pending += n;
      if (pending >= 2048) { parentPort!.postMessage({ type: 'progress', samples: pending }); pending = 0; }
    });
    parentPort!.postMessage({ type: 'done', result: res });
  } catch (e) {
    parentPort!.postMessage({ type: 'error', user: isUserError(e), message: (e as Error).message, hint: (e as { hint?: string }).hint, stack: (e as Error).stack });
  }
});
