/** npm run bench:train — predictor training throughput and wall time on the OPT fixture (all layers, 2 cores). */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import YAML from 'yaml';
import { ensureBackend } from '../backend.js';
import { trainSchema } from '../config/schemas.js';
import { runTrain } from '../stages/train.js';

const acts = process.argv[2] ?? 'runs/default/activations-calibration';
if (!fs.existsSync(path.join(acts, 'manifest.json'))) { console.error(`no activations at ${acts}: run \`npx dejavu pipeline --config configs/default.yaml\` first (or pass a folder)`); process.exit(2); }
await ensureBackend('auto');
const def = YAML.parse(fs.readFileSync('configs/default.yaml', 'utf8'));
const out = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-train-'));
const cfg = trainSchema.parse({ ...def.train, activations: acts, out, overwrite: true });
const t = Date.now();
const res = await runTrain(cfg, { log: (m) => console.error(m), progress: () => ({ update: () => undefined, stop: () => undefined }) });
console.log(res.text);
const p = res.json as { training: { samplesPerSecond: number; workers: number } };
console.log(`\nbench:train: ${((Date.now() - t) / 1000).toFixed(0)} s wall for all layers, ${p.training.samplesPerSecond.toFixed(0)} samples/s summed over ${p.training.workers} worker(s)`);
fs.rmSync(out, { recursive: true, force: true });
