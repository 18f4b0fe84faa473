/**
 * npm run bench:train [-- ACTIVATIONS] [--layers 1,2] [--workers 1,2] — predictor training on the OPT fixture's
 * calibration activations (default config), once per worker count: wall time and samples/s, where a sample is one
 * activation row read by a job (the MLP closed-form fit reads each row once plus its calibration rows; the head
 * predictor reads its training rows once per epoch), over the wall time of the training phase. Also the MLP and
 * head jobs' own times, which say what bounds a single layer (its two jobs run in parallel).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import YAML from 'yaml';
import { ensureBackend } from '../backend.js';
import { trainSchema } from '../config/schemas.js';
import { runTrain } from '../stages/train.js';
import { table } from './common.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1]! : dflt; };
const acts = args[0] && !args[0].startsWith('--') ? args[0] : 'runs/default/activations-calibration';
if (!fs.existsSync(path.join(acts, 'manifest.json'))) { console.error(`no activations at ${acts}: run \`npx dejavu pipeline --config configs/default.yaml\` first (or pass a folder)`); process.exit(2); }
const layers = opt('layers', 'all');
await ensureBackend('auto');
const def = YAML.parse(fs.readFileSync('configs/default.yaml', 'utf8'));
const rows: (string | number)[][] = [];
let base = 0;
for (const w of opt('workers', '1,2').split(',').map(Number)) {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-train-'));
  const cfg = trainSchema.parse({ ...def.train, activations: acts, out, overwrite: true, workers: w, ...(layers === 'all' ? {} : { layers: layers.split(',').map(Number) }) });
  const t = Date.now();
  const res = await runTrain(cfg, { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) });
  const wall = (Date.now() - t) / 1000;
  const p = res.json as { training: { samplesPerSecond: number; workers: number } };
  // each job's own duration: the clock of its last log entry (a job's log clock starts at the job)
  const jobs = { mlp: 0, heads: 0 };
  for (const line of fs.readFileSync(path.join(out, 'train-log.jsonl'), 'utf8').trim().split('\n')) {
    const e = JSON.parse(line) as { site: 'mlp' | 'heads'; t: number };
    jobs[e.site] = Math.max(jobs[e.site], e.t);
  }
  base ||= p.training.samplesPerSecond;
  rows.push([w, p.training.workers, wall.toFixed(1), p.training.samplesPerSecond.toFixed(0), (p.training.samplesPerSecond / base).toFixed(2) + 'x', layers === 'all' ? '-' : jobs.mlp.toFixed(1), layers === 'all' ? '-' : jobs.heads.toFixed(1)]);
  fs.rmSync(out, { recursive: true, force: true });
}
console.log(`bench:train on ${acts}, layers ${layers}, ${os.availableParallelism()} cores, load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}\n`);
console.log(table(['--workers', 'workers used', 'wall s', 'samples/s (rows read / wall)', 'vs 1 worker', 'MLP job s (last layer)', 'head job s (last layer)'], rows));
