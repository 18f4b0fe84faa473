/**
 * npm run bench:decode — batch-1 decode tokens/s of the runtime (src/runtime/decoder.ts), dense vs sparse, on the
 * same machine in one run, alternating the variants (BENCH_ROUNDS, default 5) and reporting each one's median:
 * (a) the OPT fixture with its bundle (the bundle's plan, or its trained rules), next to the dense decode and the
 *     previous runtime (the tfjs forward pass, one token at a time);
 * (b) OPT-1.3B widths with random weights (a random checkpoint written to a temp folder, BENCH_LAYERS layers):
 *     dense, lossless (ReLU: only nonzero rows of fc2), and a fixed random selection of 10% MLP / 50% heads,
 *     next to the bound implied by the bytes of weights read.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ensureBackend } from '../backend.js';
import { loadBundlePredictors } from '../bundle/bundle.js';
import type { ModelConfig } from '../model/config.js';
import { forward, newCache, disposeCache, disposeOutput } from '../model/forward.js';
import { loadModel, type Model } from '../model/model.js';
import { DecodeSession, denseModes, type DecodeModes } from '../runtime/decoder.js';
import { decodeModes } from '../runtime/plan.js';
import { opt13bConfig, table } from './common.js';
import { writeRandomOpt } from './opt-checkpoint.js';

const b = await ensureBackend((process.env.DEJAVU_BACKEND as 'wasm' | undefined) ?? 'auto');
const STEPS = Number(process.env.BENCH_STEPS ?? 128);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const PROMPT = [2, 5, 9, 13, 17, 21, 25, 29];

/** decode tokens/s at batch 1 after a short prompt, through the runtime */
function decodeRate(model: Model, modes: DecodeModes, steps = STEPS): number {
  const s = new DecodeSession(model, modes, 1);
  try {
    for (const id of PROMPT) s.step([id]);
    const t = performance.now();
    for (let i = 0; i < steps; i++) s.step([7 + (i % 50)]);
    return steps / ((performance.now() - t) / 1000);
  } finally { s.dispose(); }
}

/** the previous runtime: the tfjs forward pass with its KV cache, one token per call */
function forwardRate(model: Model, steps = STEPS): number {
  const cache = newCache(model);
  try {
    disposeOutput(forward(model, [PROMPT], { cache }));
    const t = performance.now();
    for (let i = 0; i < steps; i++) { const o = forward(model, [[7 + (i % 50)]], { cache }); o.logits!.dataSync(); disposeOutput(o); }
    return steps / ((performance.now() - t) / 1000);
  } finally { disposeCache(cache); }
}

const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
/** run the variants in turn ROUNDS times (alternating: drift hits all alike), median rate of each */
function alternate(fns: (() => number)[]): number[] {
  const runs: number[][] = fns.map(() => []);
  for (let r = 0; r < ROUNDS; r++) fns.forEach((f, i) => runs[i]!.push(f()));
  return runs.map(median);
}

/** bytes of weights read per decoded token (float32) */
function bytesPerToken(c: ModelConfig, mlpFrac: number, headFrac: number) {
  const d = c.hidden, qo = 2 * d * c.heads * c.headDim, kv = 2 * d * c.kvHeads * c.headDim, mlp = d * c.ffn * (c.activation === 'swiglu' ? 3 : 2);
  const head = d * c.vocabSize;
  return { dense: 4 * (c.layers * (qo + kv + mlp) + head), sparse: 4 * (c.layers * (headFrac * qo + kv + mlpFrac * mlp) + head) };
}

function randomPicks(c: ModelConfig, mlpFrac: number, headFrac: number): DecodeModes {
  let s = 12345;
  const rand = () => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s / 0x7fffffff; };
  const choose = (n: number, k: number) => {
    const a = Int32Array.from({ length: n }, (_, i) => i);
    for (let i = 0; i < k; i++) { const j = i + Math.floor(rand() * (n - i)); [a[i], a[j]] = [a[j]!, a[i]!]; }
    return a.slice(0, k).sort();
  };
  // a few fixed sets per layer, cycled: the cost of reading rows, not of a predictor
  const sets = (n: number, k: number) => Array.from({ length: 8 }, () => choose(n, k));
  return {
    mlp: Array.from({ length: c.layers }, () => { const ss = sets(c.ffn, Math.round(mlpFrac * c.ffn)); let i = 0; return { mode: 'select' as const, pick: () => ss[i++ % ss.length]! }; }),
    heads: Array.from({ length: c.layers }, () => { const ss = sets(c.heads, Math.round(headFrac * c.heads)); let i = 0; return { mode: 'select' as const, pick: () => ss[i++ % ss.length]! }; }),
  };
}

const rows: (string | number)[][] = [];
const notes: string[] = [];
const bundle = process.env.BENCH_BUNDLE ?? 'runs/default/bundle';
const fixture = process.env.BENCH_MODEL ?? 'checkpoints/opt-fixture';
if (fs.existsSync(`${bundle}/manifest.json`)) {
  const model = loadModel(fixture, { decode: true });
  const preds = loadBundlePredictors(bundle, fixture);
  const plan = preds.bundle.plan ?? null;
  const built = decodeModes(model.config, preds, plan);
  const dense = denseModes(model.config.layers);
  const counter = new DecodeSession(model, built.modes, 1);
  for (let i = 0; i < 64; i++) counter.step([7 + (i % 50)]);
  counter.dispose();
  const mf = counter.counts.mlpSelected / counter.counts.mlpTotal, hf = counter.counts.headsSelected / counter.counts.headsTotal;
  const [tfjs, d, sp] = alternate([() => forwardRate(model), () => decodeRate(model, dense), () => decodeRate(model, built.modes)]);
  const by = bytesPerToken(model.config, mf, hf);
  const label = `OPT fixture (${model.config.layers} layers, d ${model.config.hidden}, ffn ${model.config.ffn}) + bundle ${plan ? 'plan' : 'rules'}`;
  rows.push([label, `${(100 * mf).toFixed(1)}% / ${(100 * hf).toFixed(0)}%`, d.toFixed(0), sp.toFixed(0), (sp / d).toFixed(2) + 'x', (by.dense / by.sparse).toFixed(2) + 'x', tfjs.toFixed(0)]);
  if (plan) notes.push(`plan: ${plan.layers.map((l) => `L${l.layer} ${l.mlp.mode}${l.heads.mode === 'predicted' ? '+heads' : ''}`).join(', ')}; verified by the plan stage at ${plan.verified.pplIncrease >= 0 ? '+' : ''}${(100 * plan.verified.pplIncrease).toFixed(2)}% perplexity, ${plan.verified.speedup.toFixed(2)}x`);
  built.dispose(); preds.dispose(); model.dispose();
} else console.error(`(a) skipped: no bundle at ${bundle}; run \`npx dejavu pipeline --config configs/default.yaml\` first`);

const layers = Number(process.env.BENCH_LAYERS ?? 4);
const big: ModelConfig = opt13bConfig({ vocabSize: 2048, layers, attnBias: false, mlpBias: false });
{
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dejavu-bench-decode-'));
  try {
    writeRandomOpt(dir, big);
    const model = loadModel(dir, { decode: true });
    const dense = denseModes(big.layers), lossless: DecodeModes = { mlp: dense.mlp.map(() => ({ mode: 'lossless' as const })), heads: dense.heads };
    const picks = randomPicks(big, 0.1, 0.5);
    const counter = new DecodeSession(model, lossless, 1);
    for (let i = 0; i < 16; i++) counter.step([7 + i]);
    counter.dispose();
    const active = counter.counts.mlpSelected / counter.counts.mlpTotal;
    const [tfjs, d, ll, sp] = alternate([() => forwardRate(model, 12), () => decodeRate(model, dense, 16), () => decodeRate(model, lossless, 16), () => decodeRate(model, picks, 16)]);
    const name = `OPT-1.3B widths, random weights (${layers} layers, d 2048, ffn 8192, 32 heads)`;
    const b1 = bytesPerToken(big, 1, 1), bl = bytesPerToken(big, 0.5 * (1 + active), 1), bs = bytesPerToken(big, 0.1, 0.5);
    rows.push([`${name}: lossless`, `${(100 * active).toFixed(0)}% active / 100%`, d.toFixed(1), ll.toFixed(1), (ll / d).toFixed(2) + 'x', (b1.dense / bl.sparse).toFixed(2) + 'x', tfjs.toFixed(1)]);
    rows.push([`${name}: predicted (fixed random sets)`, '10% / 50%', d.toFixed(1), sp.toFixed(1), (sp / d).toFixed(2) + 'x', (bs.dense / bs.sparse).toFixed(2) + 'x', tfjs.toFixed(1)]);
    notes.push(`decode kernels: ${model.decode!.kernel}`);
    model.dispose();
  } finally { fs.rmSync(dir, { recursive: true, force: true }); }
}
console.log(`bench:decode, backend ${b.name}, batch 1, ${STEPS} decode steps per run (OPT-1.3B widths: 16), median of ${ROUNDS} alternating runs, load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}\n`);
console.log(table(['model', 'density MLP / heads', 'dense tok/s', 'sparse tok/s', 'speedup', 'bound (weight bytes read)', 'previous runtime (tfjs forward, dense) tok/s'], rows));
if (notes.length) console.log('\n' + notes.join('\n'));
