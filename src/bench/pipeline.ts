/**
 * npm run bench:pipeline [-- WORKDIR] — the main job's headline as a benchmark result (docs/results/pipeline.json,
 * rendered into docs/results.md and the README's results box by `npm run docs`): run
 * `npx dejavu pipeline --config configs/default.yaml` first; this reads what it wrote (report/report.json and
 * plan/plan.json, both sealed and checked) as the pipeline's verdict figures (src/stages/verdict.ts). The run's wall
 * time is not kept in the workdir: `--seconds S` records the time you saw, `--load L` the 1-minute load average
 * during the run (the one recorded otherwise is this reader's).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readManifest } from '../activations/dataset.js';
import { readEvalReport } from '../eval/report.js';
import { readPlanFile } from '../runtime/plan.js';
import { headline, pct, signedPct } from '../stages/verdict.js';
import { HEADLINE } from './results-doc.js';
import { writeBenchResult, type BenchTable } from './common.js';

const args = process.argv.slice(2);
const w = args[0] && !args[0].startsWith('--') ? args[0] : 'runs/default';
if (!fs.existsSync(path.join(w, 'plan', 'plan.json'))) { console.error(`no plan in ${w}: run \`npx dejavu pipeline --config configs/default.yaml\` first (or pass its workdir)`); process.exit(2); }
const report = readEvalReport(path.join(w, 'report'));
const plan = readPlanFile(path.join(w, 'plan'));
const m = readManifest(path.join(w, 'activations-heldout'));
const model = m.model.dir;
const h = headline({ model, config: m.model.config, workdir: w, bundle: path.join(w, 'bundle'), report, plan, heldoutText: m.data.file });
const p = h.plan!, e = h.evaluation;
const f3 = (x: number | undefined) => (x === undefined ? '-' : x.toFixed(3));
const count = (n: number) => n.toLocaleString('en-US');
const tables: BenchTable[] = [
  { caption: HEADLINE, header: ['figure', 'value'], rows: [
    ['model', `${m.model.config.layers} layers, d ${m.model.config.hidden}`],
    ['workdir', w],
    ['budget', `+${pct(p.budget, 0)}`],
    ['decode speedup (verified)', `${p.speedup.toFixed(2)}x`],
    ['perplexity increase (verified)', signedPct(p.pplIncrease, 3)],
    ['verification tokens', count(p.tokens)],
    ['decode speedup (cost model estimate)', `${p.estimatedSpeedup.toFixed(2)}x`],
    ['predicted MLP perplexity increase', e.predicted !== undefined && e.dense !== undefined ? signedPct(e.predicted / e.dense - 1) : '-'],
    ['mean MLP density (predicted)', pct(e.meanDensity)],
  ] },
  { caption: 'perplexities, each on its own text (dense and sparse on the same tokens)', header: ['text', 'tokens', 'run', 'dense', 'sparse', 'vs dense'], rows: [
    [`plan verification: held-out tokens after the search's (${m.data.file})`, count(p.tokens), 'the plan, decode runtime', f3(p.densePerplexity), f3(p.perplexity), signedPct(p.pplIncrease, 3)],
    ...(['predicted (MLP)', 'oracle (MLP)'] as const).filter((k) => report.perplexity?.runs[k] !== undefined).map((k) =>
      [`evaluation: first tokens of ${m.data.file}`, count(e.tokens), k, f3(e.dense), f3(report.perplexity!.runs[k]), signedPct(report.perplexity!.runs[k]! / e.dense! - 1)]),
  ] },
  { caption: 'decode (batch 1, the plan\'s verification: median of alternating rounds)', header: ['', 'ms per token', 'tokens/s'], rows: [
    ['dense', p.denseStepMs.toFixed(3), (1000 / p.denseStepMs).toFixed(0)], ['plan', p.stepMs.toFixed(3), (1000 / p.stepMs).toFixed(0)],
  ] },
  { caption: 'per layer: the plan and the predictors\' held-out figures', header: ['layer', 'plan: MLP mode', 'plan: MLP density (search)', 'predictor: recall', 'predictor: predicted density', 'exact bound', 'true density'],
    rows: p.layers.map((l) => {
      const r = report.layers.find((x) => x.layer === l.layer)?.mlp;
      return [l.layer, l.mlp, pct(l.mlpDensity), r ? r.metrics.recall.toFixed(3) : '-', r ? pct(r.metrics.predictedDensity) : '-', r?.exactBound ? pct(r.exactBound.predictedDensity) : '-', r ? pct(r.metrics.trueDensity) : '-'];
    }) },
];
const notes = [
  'speed figures depend on the machine and its load (recorded above); the plan itself follows the kernel timings measured on the machine it ran on',
  'exact bound: the density the first projection itself needs for the same recall under the same rule; terms: glossary.md',
];
const secI = args.indexOf('--seconds');
if (secI >= 0) notes.unshift(`the pipeline took ${Number(args[secI + 1])} s of wall time (given with --seconds)`);
const loadI = args.indexOf('--load'), runLoadavg = loadI >= 0 ? Number(args[loadI + 1]) : undefined;
if (runLoadavg !== undefined && !(runLoadavg >= 0)) { console.error(`--load ${args[loadI + 1]}: give the 1-minute load average seen during the run, a number >= 0`); process.exit(2); }
const file = writeBenchResult({ name: 'pipeline', title: 'The main job: `dejavu pipeline` on the embedded OPT fixture', command: 'npx dejavu pipeline --config configs/default.yaml && npm run bench:pipeline', tables, notes,
  ...(runLoadavg !== undefined ? { runLoadavg } : {}) });
console.log(`wrote ${file}`);
