/**
 * npm run bench:train [-- ACTIVATIONS] [--layers 1,2] [--workers 1,2] [--repeat N] [--set heads.enabled=true ...] —
 * predictor training on the OPT fixture's calibration activations (configs/default.yaml's train keys, `--set` keys on
 * top), each run in its own process, the counts alternating N times (the table shows each count's median run): wall time
 * and samples/s, where a sample is one activation row read by a job (the MLP fit reads each row once; the head
 * predictor reads its training rows once per epoch; the same rows for every worker count), over the wall time of the
 * training phase, worker start-up included. Also the last layer's MLP fit and head predictor times.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { ensureBackend } from '../backend.js';
import { trainSchema } from '../config/schemas.js';
import { runTrain } from '../stages/train.js';
import { table, writeBenchResult } from './common.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1]! : dflt; };
const acts = args[0] && !args[0].startsWith('--') ? args[0] : 'runs/default/activations-calibration';
if (!fs.existsSync(path.join(acts, 'manifest.json'))) { console.error(`no activations at ${acts}: run \`npx dejavu pipeline --config configs/default.yaml\` first (or pass a folder)`); process.exit(2); }
const layers = opt('layers', 'all');
const repeat = Number(opt('repeat', '1'));
// --set a.b=value (repeatable, YAML values) on top of the default config's train section
const sets: Record<string, unknown> = {};
args.forEach((a, i) => {
  if (a !== '--set') return;
  const [k, ...v] = args[i + 1]!.split('=');
  let o = sets as Record<string, unknown>;
  const keys = k!.split('.');
  for (const key of keys.slice(0, -1)) o = (o[key] ??= {}) as Record<string, unknown>;
  o[keys.at(-1)!] = YAML.parse(v.join('='));
});
const merge = (a: unknown, b: unknown): unknown => (b && typeof b === 'object' && !Array.isArray(b) && a && typeof a === 'object' ? Object.fromEntries([...new Set([...Object.keys(a), ...Object.keys(b)])].map((k) => [k, merge((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])])) : b === undefined ? a : b);
await ensureBackend('auto');
const def = YAML.parse(fs.readFileSync('configs/default.yaml', 'utf8'));
const load0 = os.loadavg().map((x) => x.toFixed(1)).join(' ');
const counts = opt('workers', '1,2').split(',').map(Number);
interface Run { wall: number; sps: number; used: number; mlp: number; heads: number }

/** One training run in this process (the --child side): its numbers as JSON on stdout. */
async function runOnce(w: number): Promise<Run> {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-train-'));
  try {
    const cfg = trainSchema.parse(merge({ ...def.train, activations: acts, out, overwrite: true, workers: w, ...(layers === 'all' ? {} : { layers: layers.split(',').map(Number) }) }, sets));
    const t = Date.now();
    const res = await runTrain(cfg, { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) });
    const wall = (Date.now() - t) / 1000;
    const p = res.json as { training: { samplesPerSecond: number; workers: number } };
    // each part's own duration: the clock of its last log entry (a layer's log clock starts with its fit / training)
    const jobs = { mlp: 0, heads: 0 };
    for (const line of fs.readFileSync(path.join(out, 'train-log.jsonl'), 'utf8').trim().split('\n')) {
      const e = JSON.parse(line) as { site: 'mlp' | 'heads'; t: number };
      jobs[e.site] = Math.max(jobs[e.site], e.t);
    }
    return { wall, sps: p.training.samplesPerSecond, used: p.training.workers, ...jobs };
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
}
if (args.includes('--child')) {
  console.log(JSON.stringify(await runOnce(Number(opt('child-workers', '1')))));
  process.exit(0);
}
// every run in its own process, as the CLI runs (a fresh JIT and tfjs for each worker count, whichever runs first)
const runs = new Map<number, Run[]>(counts.map((w) => [w, []]));
const passOn = args.filter((a, i) => a !== '--workers' && args[i - 1] !== '--workers' && a !== '--repeat' && args[i - 1] !== '--repeat');
for (let rep = 0; rep < repeat; rep++) for (const w of counts) {
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), ...passOn, '--child', '--child-workers', String(w)], { encoding: 'utf8', maxBuffer: 1 << 24, stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status !== 0) { console.error(`run with ${w} worker(s) failed (exit ${r.status})`); process.exit(1); }
  runs.get(w)!.push(JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Run);
}
const median = (w: number) => { const r = [...runs.get(w)!].sort((a, b) => a.sps - b.sps); return r[Math.floor((r.length - 1) / 2)]!; };
const base = median(counts[0]!).sps;
const rows = counts.map((w) => {
  const r = median(w);
  return [w, r.used, r.wall.toFixed(1), r.sps.toFixed(0), (r.sps / base).toFixed(2) + 'x', runs.get(w)!.map((x) => x.sps.toFixed(0)).join(' / '), r.mlp.toFixed(1), r.heads ? r.heads.toFixed(1) : '-'];
});
console.log(`bench:train on ${acts}, layers ${layers}${Object.keys(sets).length ? `, --set ${JSON.stringify(sets)}` : ''}, ${repeat} run(s) per count, ${os.availableParallelism()} cores, load average ${load0} before, ${os.loadavg().map((x) => x.toFixed(1)).join(' ')} after\n`);
const header = ['--workers', 'workers used', 'wall s', 'samples/s (rows read / wall), median', 'vs first count', 'every run', 'MLP fit s (last layer)', 'head predictor s (last layer)'];
console.log(table(header, rows));
// the default run's result is train.json; other activations, layers or --set keys get their own file
const variant = [acts === 'runs/default/activations-calibration' ? '' : path.basename(path.resolve(acts)), layers === 'all' ? '' : `layers-${layers}`, Object.keys(sets).length ? 'set-' + JSON.stringify(sets) : '']
  .filter(Boolean).join('-').toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
const file = writeBenchResult({ name: variant ? `train-${variant}` : 'train', title: `Predictor training throughput: ${acts}${layers === 'all' ? '' : `, layers ${layers}`}${Object.keys(sets).length ? `, --set ${JSON.stringify(sets)}` : ''}`,
  command: `npm run bench:train -- ${args.join(' ')}`.trim().replace(/ --$/, ''),
  tables: [{ caption: `train-predictors, each run in its own process, ${repeat} run(s) per worker count (the median shown)`, header, rows }],
  notes: ['a sample is one activation row read by a job (the MLP fit reads each row once; the head predictor reads its training rows once per epoch); samples/s = rows read / the training phase\'s wall time, worker start-up included',
    `load average before the runs ${load0}, after ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`] });
console.log(`\nwrote ${file}`);
