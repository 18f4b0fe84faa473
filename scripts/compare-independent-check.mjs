#!/usr/bin/env node
// Compare dejavu's pipeline reports on checkpoints/opt-unseen with the independent PyTorch reference
// (docs/independent-check.json, written by scripts/check-unseen.py). Prints a markdown table and exits 1 when an
// agreement target is missed. Also checks that dejavu packs the calibration and held-out files into the same token
// rows as the reference (sha256 of the int32 ids).
//
// Usage (after `npm ci` and both pipeline runs, see docs/independent-check.md):
//   node scripts/compare-independent-check.mjs [--ref docs/independent-check.json] [--variant fp16x]
//        [--run 160=runs/opt-unseen] [--run 80=runs/opt-unseen-r4]
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadTokenizer, normalizeConfig } from '../dist/index.js';
import { packSequences, readDocuments } from '../dist/activations/data.js';

const args = process.argv.slice(2);
const opt = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : dflt; };
const refFile = opt('--ref', 'docs/independent-check.json');
const variant = opt('--variant', 'fp16x');
const runs = [];
for (let i = 0; i < args.length; i++) if (args[i] === '--run') { const [r, dir] = args[i + 1].split('='); runs.push([r, dir]); }
if (!runs.length) runs.push(['160', 'runs/opt-unseen'], ['80', 'runs/opt-unseen-r4']);

const TOL = { density: 0.01, recall: 0.002, pplDeltaPp: 0.1 };
const ref = JSON.parse(fs.readFileSync(refFile, 'utf8'));
let ok = true;

// packing: dejavu's own packSequences on the same files
const model = ref.model;
const cfg = normalizeConfig(JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8')), model);
const tok = loadTokenizer(model);
for (const [name, file] of [['calibration', 'data/calibration.jsonl'], ['heldout', 'data/heldout.jsonl']]) {
  const ids = [];
  for await (const s of packSequences(readDocuments(file), { seqLen: 256, cfg, tokenizer: tok, source: file })) ids.push(...s);
  const sha = createHash('sha256').update(Buffer.from(Int32Array.from(ids).buffer)).digest('hex');
  const same = sha === ref.packing[`${name}_ids_sha256`] && ids.length / 256 === ref.packing[`${name}_rows`];
  ok &&= same;
  console.log(`packing ${name}: dejavu ${ids.length / 256} rows sha256 ${sha.slice(0, 16)}…, reference ${ref.packing[`${name}_rows`]} rows ${ref.packing[`${name}_ids_sha256`].slice(0, 16)}… -> ${same ? 'identical' : 'DIFFERENT'}`);
}

const f4 = (x) => x.toFixed(4);
const sgn = (x, n = 4) => (x >= 0 ? '+' : '') + x.toFixed(n);
const lines = [];
lines.push(`reference variant: ${variant}; targets: |density diff| <= ${TOL.density}, |recall diff| <= ${TOL.recall}, |ppl delta diff| <= ${TOL.pplDeltaPp} pp`, '');
lines.push('| rank | layer | threshold ref / dejavu | true density ref / dejavu | predicted density ref / dejavu (diff) | recall ref / dejavu (diff) | ok |');
lines.push('|---:|---:|---|---|---|---|:-:|');
const ppl = [];
for (const [r, dir] of runs) {
  const rep = JSON.parse(fs.readFileSync(path.join(dir, 'report', 'report.json'), 'utf8'));
  const rr = ref.variants[variant][r];
  if (!rr) throw new Error(`reference has no rank ${r} (has ${Object.keys(ref.variants[variant])})`);
  const pred = JSON.parse(fs.readFileSync(path.join(dir, 'predictors', 'predictors.json'), 'utf8'));
  for (const L of rr.layers) {
    const m = rep.layers.find((l) => l.layer === L.layer).mlp;
    const pe = pred.layers.find((l) => l.layer === L.layer).mlp;
    if (pe.family !== 'closed-form' || pe.rank !== rr.rank) throw new Error(`${dir}: layer ${L.layer} is ${pe.family} rank ${pe.rank}, expected closed-form rank ${rr.rank}`);
    const dd = m.metrics.predictedDensity - L.heldout.predicted_density, dr = m.metrics.recall - L.heldout.recall, dt = m.metrics.trueDensity - L.heldout.true_density;
    const good = Math.abs(dd) <= TOL.density && Math.abs(dr) <= TOL.recall && Math.abs(dt) <= TOL.density;
    ok &&= good;
    lines.push(`| ${r} | ${L.layer} | ${L.threshold.toFixed(5)} / ${pe.rule.value.toFixed(5)} | ${f4(L.heldout.true_density)} / ${f4(m.metrics.trueDensity)} | ${f4(L.heldout.predicted_density)} / ${f4(m.metrics.predictedDensity)} (${sgn(dd, 6)}) | ${f4(L.heldout.recall)} / ${f4(m.metrics.recall)} (${sgn(dr, 6)}) | ${good ? 'yes' : 'NO'} |`);
  }
  const dj = rep.perplexity, refP = ref.perplexity;
  const refDelta = 100 * rr.perplexity.delta, djDelta = 100 * dj.deltas['predicted (MLP)'];
  const good = Math.abs(refDelta - djDelta) <= TOL.pplDeltaPp;
  ok &&= good;
  ppl.push(`| ${r} | ${refP.dense.toFixed(4)} / ${dj.runs.dense.toFixed(4)} | ${rr.perplexity.predicted_mlp.toFixed(4)} / ${dj.runs['predicted (MLP)'].toFixed(4)} | ${sgn(refDelta, 4)}% / ${sgn(djDelta, 4)}% (${sgn(djDelta - refDelta, 4)} pp) | ${good ? 'yes' : 'NO'} |`);
}
lines.push('', `perplexity on the first ${ref.perplexity.tokens} held-out tokens:`, '');
lines.push('| rank | dense ppl ref / dejavu | predicted-MLP ppl ref / dejavu | delta vs dense ref / dejavu (diff) | ok |', '|---:|---|---|---|:-:|', ...ppl);
console.log('\n' + lines.join('\n'));
console.log(`\n${ok ? 'ALL TARGETS MET' : 'SOME TARGETS MISSED'}`);
process.exit(ok ? 0 : 1);
