/**
 * npm run bench:fit [-- d ffn rows] — the closed-form fit at scale (default OPT-1.3B widths: d 2048, ffn 8192) on
 * random weights and random correlated rows: time of the streamed moments, of the decomposition + fit for three
 * ranks, and peak RSS. Random data is enough: the cost depends on the shapes only.
 */
import { ensureBackend } from '../backend.js';
import { closedFormFits, MomentAccumulator, normalizeByResidual } from '../predictors/closed-form.js';
import { mulberry32 } from '../util/random.js';
import { writeBenchResult } from './common.js';

const [d, F, rows] = [Number(process.argv[2] ?? 2048), Number(process.argv[3] ?? 8192), Number(process.argv[4] ?? 32768)];
const backend = await ensureBackend('auto');
const rnd = mulberry32(1);
const gauss = () => Math.sqrt(-2 * Math.log(Math.max(rnd(), 1e-12))) * Math.cos(2 * Math.PI * rnd());
let peak = process.memoryUsage().rss;
const sample = () => { peak = Math.max(peak, process.memoryUsage().rss); };
const W = Float32Array.from({ length: F * d }, () => gauss() / Math.sqrt(d));
const b = Float32Array.from({ length: F }, () => gauss() * 0.1);
// rows: a random low-dimensional mixing plus noise, so Σ is far from isotropic
const k = 64;
const mix = Float32Array.from({ length: k * d }, () => gauss());
const chunk = 4096;
const t0 = Date.now();
const acc = new MomentAccumulator(d);
for (let s = 0; s < rows; s += chunk) {
  const n = Math.min(chunk, rows - s);
  const x = new Float32Array(n * d);
  for (let r = 0; r < n; r++) {
    const z = Array.from({ length: k }, gauss);
    for (let j = 0; j < d; j++) { let v = 0.3 * gauss(); for (let q = 0; q < k; q++) v += z[q]! * mix[q * d + j]!; x[r * d + j] = v; }
  }
  acc.add(x, n);
  sample();
}
const tGen = Date.now();
const mom = acc.finish();
const t1 = Date.now();
const ranks = [d / 8, d / 4, d / 2];
const fits = closedFormFits(W, b, F, mom, ranks).map((f) => normalizeByResidual(f, F));
sample();
const t2 = Date.now();
const rowsT = [
  [`moments (${rows} rows generated and accumulated in ${chunk}-row chunks; includes generating the random rows)`, `${((tGen - t0) / 1000).toFixed(1)} s`],
  [`decomposition + fits for ranks ${fits.map((f) => f.r).join(', ')}`, `${((t2 - t1) / 1000).toFixed(1)} s`],
];
console.log(`bench:fit on ${backend.name}: d ${d}, ffn ${F}, ${rows} rows`);
for (const [what, s] of rowsT) console.log(`  ${what}: ${s}`);
console.log(`  peak RSS: ${(peak / 2 ** 30).toFixed(2)} GiB`);
const name = d === 2048 && F === 8192 && rows === 32768 ? 'fit' : `fit-d${d}-ffn${F}-rows${rows}`;
const file = writeBenchResult({ name, title: `The closed-form fit at d ${d}, ffn ${F} (random data)`, command: `npm run bench:fit${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
  tables: [{ caption: `closed-form fit on ${backend.name}, random weights and rows (the cost depends on the shapes only)`, header: ['part', 'time / size'], rows: [...rowsT, ['peak RSS', `${(peak / 2 ** 30).toFixed(2)} GiB`]] }],
  notes: ['default widths are OPT-1.3B\'s (d 2048, ffn 8192)'] });
console.log(`wrote ${file}`);
