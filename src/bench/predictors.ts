/**
 * npm run bench:predictors [-- CAL HELD [REFERENCE.json]] — the closed form without training, measured with the
 * protocol of the PyTorch reference (../shared/reference/predictability-opt-fixture.json): moments over every
 * calibration row, held-out = the first 16,384 held-out tokens, density = the smallest one that recalls 0.99 of the
 * active neurons there, per layer, for one threshold per layer and for one top-k per token. Raw logits (the
 * reference's "svd"), and divided by the residual std (our default). Prints the reference next to ours when given.
 */
import * as fs from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { ensureBackend } from '../backend.js';
import { iterateLayer, readManifest } from '../activations/dataset.js';
import { closedFormFits, MomentAccumulator, normalizeByResidual, type LinearFit } from '../predictors/closed-form.js';
import { mlpInput, readMlpSite } from '../predictors/mlp-site.js';
import { RankHistogram, ThresholdCounter, thresholdForRecall } from '../predictors/metrics.js';
import { readSync } from '../util/tfx.js';
import { table, writeBenchResult } from './common.js';

const [cal = 'runs/default/activations-calibration', held = 'runs/default/activations-heldout', refFile = '../shared/reference/predictability-opt-fixture.json'] = process.argv.slice(2);
await ensureBackend('auto');
const mc = readManifest(cal), mh = readManifest(held);
const c = mc.model.config, d = c.hidden, F = c.ffn;
const ranks = [32, 64, 128, 256].filter((r) => r <= d);
const ref = fs.existsSync(refFile) ? (JSON.parse(fs.readFileSync(refFile, 'utf8')) as { opt_density_at_recall_0_99?: unknown; ['opt_density_at_recall_0.99']?: { layers: Record<string, Record<string, [number, number]> & { true_density: number }> } })['opt_density_at_recall_0.99'] : undefined;
const scores = (f: LinearFit, h: Float32Array, n: number) => readSync(() => tf.add(tf.matMul(tf.matMul(tf.tensor2d(h, [n, d]), tf.transpose(tf.tensor2d(f.fc1, [f.r, d]))),
    tf.transpose(tf.tensor2d(f.fc2, [F, f.r]))), tf.tensor1d(f.fc2Bias)));
const header = ['layer', 'true', 'rank', 'threshold: ours raw', 'ours normalized', 'reference', 'top-k: ours raw', 'ours normalized', 'reference'];
const rows: string[][] = [];
const sums: Record<string, number[]> = {};
for (const layer of mc.layers) {
  const site = readMlpSite(mc.model.dir, c, layer);
  const acc = new MomentAccumulator(d);
  for (const b of iterateLayer(cal, mc, layer, ['x_mlp'])) acc.add(mlpInput(site, b.xMlp, b.rows), b.rows);
  const heldRows: { h: Float32Array; y: Uint8Array; n: number }[] = [];
  let nh = 0;
  for (const b of iterateLayer(held, mh, layer, ['x_mlp', 'mlp_active'])) {
    if (nh >= 16384) break;
    const n = Math.min(b.rows, 16384 - nh);
    heldRows.push({ h: mlpInput(site, b.xMlp.subarray(0, n * d), n), y: b.mlpActive.subarray(0, n * F), n });
    nh += n;
  }
  const fits = closedFormFits(site.up, site.upBias ?? null, F, acc.finish(), ranks);
  for (const f0 of fits) {
    const res: number[] = [];
    let trueD = 0;
    for (const f of [f0, normalizeByResidual(f0, F)]) {
      const pos: number[] = [];
      const hist = new RankHistogram(F);
      const all = heldRows.map((r) => ({ s: scores(f, r.h, r.n), ...r }));
      for (const r of all) { hist.add(r.s, r.y, r.n); for (let i = 0; i < r.s.length; i++) if (r.y[i]) pos.push(r.s[i]!); }
      const tc = new ThresholdCounter(thresholdForRecall(Float32Array.from(pos), 0.99));
      for (const r of all) tc.add(r.s, r.y);
      res.push(tc.metrics().predictedDensity, hist.kForRecall(0.99) / F);
      trueD = tc.metrics().trueDensity;
    }
    const rf = ref?.layers[String(layer)]?.[`svd${f0.r}`];
    rows.push([String(layer), trueD.toFixed(4), String(f0.r), res[0]!.toFixed(4), res[2]!.toFixed(4), rf ? rf[1].toFixed(4) : '-', res[1]!.toFixed(4), res[3]!.toFixed(4), rf ? rf[0].toFixed(4) : '-']);
    (sums[`r${f0.r}`] ??= []).push(res[0]!, res[2]!, trueD, rf ? rf[1] : NaN);
  }
  console.error(`layer ${layer} done`);
}
const title = `closed form on ${cal} (moments) / ${held} (first 16,384 tokens), density at recall 0.99${ref ? `; reference ${refFile}` : ''}`;
const header2 = ['rank', 'mean threshold density: raw', 'normalized', 'reference', 'true', 'normalized / true'];
const rows2 = Object.entries(sums).map(([k, v]) => {
  const m = (o: number) => { const xs = v.filter((_, i) => i % 4 === o); return xs.reduce((a, b) => a + b, 0) / xs.length; };
  return [k, m(0).toFixed(4), m(1).toFixed(4), Number.isFinite(m(3)) ? m(3).toFixed(4) : '-', m(2).toFixed(4), `${(m(1) / m(2)).toFixed(2)}x`];
});
console.log(`bench:predictors: ${title}\n`);
console.log(table(header, rows));
console.log('\n' + table(header2, rows2));
const file = writeBenchResult({ name: 'predictors', title: 'The closed form without training, under the PyTorch reference\'s protocol', command: `npm run bench:predictors${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
  tables: [{ caption: `per layer and rank: ${title}`, header, rows }, { caption: 'means over layers', header: header2, rows: rows2 }],
  notes: ['density = the smallest that recalls 0.99 of the active neurons on the held-out rows themselves; raw: the fit\'s logits (the reference\'s "svd"); normalized: divided by the residual std (the default)',
    ref ? `reference: ${refFile}` : `no reference file at ${refFile}: its columns are "-"`] });
console.log(`\nwrote ${file}`);
