/**
 * node dist/bench/sparsity.js — batch-1 decode of the input-threshold sites (issue 22), dense vs sparse on the same
 * machine in one run, alternating the variants (BENCH_ROUNDS, default 5) and reporting each one's median:
 * (a) Llama-2-7B layer shapes with random weights (d 4096, ffn 11008, 32 heads, BENCH_LAYERS = 2 layers, vocab 2048),
 *     built in memory: dense (the model's own layout) vs an input threshold at sparsity 0.5 on every matrix's input
 *     (q/k/v, o, gate/up, down; thresholds calibrated on a few tokens), next to the bound implied by the bytes read;
 * (b) the Llama fixture with a bundle (BENCH_BUNDLE, default runs/llama-fixture/bundle): dense vs the bundle's plan.
 * Writes docs/results/sparsity.json (writeBenchResult).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { ensureBackend } from '../backend.js';
import { loadBundlePredictors } from '../bundle/bundle.js';
import type { ModelConfig } from '../model/config.js';
import { buildDecodeWeights } from '../model/decode-weights.js';
import { loadModel, type Model } from '../model/model.js';
import { DecodeSession, denseModes, inputMajorNames, type DecodeModes } from '../runtime/decoder.js';
import { calibrateSites, thresholdAt } from '../runtime/calibrate.js';
import { decodeModes, planInputMajor } from '../runtime/plan.js';
import { base } from '../arch/common.js';
import { table, writeBenchResult, type BenchTable } from './common.js';
import { median } from '../util/stats.js';

const b = await ensureBackend((process.env.DEJAVU_BACKEND as 'wasm' | undefined) ?? 'auto');
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const PROMPT = [2, 5, 9, 13, 17, 21, 25, 29];

/** decode tokens/s at batch 1 after a short prompt; the session's share of decoder-layer weights read */
function decodeRate(model: Model, modes: DecodeModes, steps: number): { rate: number; read: number } {
  const s = new DecodeSession(model, modes, 1);
  try {
    for (const id of PROMPT) s.step([id]);
    const t = performance.now();
    for (let i = 0; i < steps; i++) s.step([7 + (i % 50)]);
    return { rate: steps / ((performance.now() - t) / 1000), read: s.weights.weightsRead / s.weights.weightsTotal };
  } finally { s.dispose(); }
}
/** the variants in turn ROUNDS times (alternating: drift hits all alike), the median rate of each */
function alternate(fns: (() => { rate: number; read: number })[]): { rate: number; read: number }[] {
  const runs: { rate: number; read: number }[][] = fns.map(() => []);
  for (let r = 0; r < ROUNDS; r++) fns.forEach((f, i) => runs[i]!.push(f()));
  return runs.map((xs) => ({ rate: median(xs.map((x) => x.rate)), read: median(xs.map((x) => x.read)) }));
}

/** a random Llama of these widths, built straight into the decode runtime's weights (no checkpoint) */
function randomLlama(c: ModelConfig, inputMajor: Set<string>): Model {
  let s = 12345;
  const rnd = (n: number, scale: number) => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) { s = (Math.imul(s, 1103515245) + 12345) >>> 0; a[i] = ((s / 2 ** 32) * 2 - 1) * scale; }
    return a;
  };
  const d = c.hidden, F = c.ffn, Hd = c.heads * c.headDim, KVd = c.kvHeads * c.headDim;
  const shapes: Record<string, [number, number]> = { wq: [d, Hd], wk: [d, KVd], wv: [d, KVd], wo: [Hd, d], up: [d, F], gate: [d, F], down: [F, d] };
  const get = (name: string) => {
    if (name === 'embed' || name === 'lmHead') return { shape: name === 'embed' ? [c.vocabSize, d] : [d, c.vocabSize], data: rnd(c.vocabSize * d, 1) };
    if (name === 'finalNorm.g') return { shape: [d], data: new Float32Array(d).fill(1) };
    const m = /^layers\.\d+\.(.+)$/.exec(name)?.[1];
    if (m === 'ln1.g' || m === 'ln2.g') return { shape: [d], data: new Float32Array(d).fill(1) };
    const sh = m ? shapes[m] : undefined;
    return sh ? { shape: sh, data: rnd(sh[0] * sh[1], Math.sqrt(3 / sh[0])) } : undefined;
  };
  const decode = buildDecodeWeights(c, get, { inputMajor });
  return { config: c, decode, dispose: () => decode.dispose() } as unknown as Model;
}

const tables: BenchTable[] = [];
const notes: string[] = [];
const header = ['model', 'variant', 'decoder-layer weights read', 'dense tok/s', 'sparse tok/s', 'speedup', 'bound (weight bytes read, LM head included)'];

// (a) Llama-2-7B layer shapes
{
  const layers = Number(process.env.BENCH_LAYERS ?? 2);
  const c: ModelConfig = { ...base(), family: 'llama', vocabSize: 2048, hidden: 4096, layers, heads: 32, kvHeads: 32, headDim: 128, ffn: 11008, maxPositions: 4096, norm: 'rmsnorm', normEps: 1e-6,
    activation: 'swiglu', act: 'silu', gated: true, positions: 'rope', ropeDim: 128, ropeTheta: 10000, attnScale: 1 / Math.sqrt(128), windows: new Array(layers).fill(null), tiedLmHead: false,
    attnBias: false, mlpBias: false, bosTokenId: 1, eosTokenId: 2, padTokenId: null };
  const every = { inputs: Array.from({ length: layers }, () => ({ attn: { t: 0 }, o: { t: 0 }, mlp: { t: 0 }, down: { t: 0 } })) };
  const dense = randomLlama(c, new Set()), sparse = randomLlama(c, inputMajorNames(every, true));
  try {
    const cal = calibrateSites(sparse, [Array.from({ length: 12 }, (_, i) => 3 + i * 7)], { wina: false });
    const half: DecodeModes = { ...denseModes(layers), inputs: every.inputs.map((_, i) => ({ attn: { t: thresholdAt(cal, i, 'attn', 0.5) }, o: { t: thresholdAt(cal, i, 'o', 0.5) },
      mlp: { t: thresholdAt(cal, i, 'mlp', 0.5) }, down: { t: thresholdAt(cal, i, 'down', 0.5) } })) };
    const steps = Number(process.env.BENCH_STEPS ?? 16);
    const zero: DecodeModes = { ...denseModes(layers), inputs: every.inputs }; // threshold 0: every input, through the input-major kernels
    const [d, sp, z] = alternate([() => decodeRate(dense, denseModes(layers), steps), () => decodeRate(sparse, half, steps), () => decodeRate(sparse, zero, steps)]);
    const layerW = layers * (2 * c.hidden * c.heads * c.headDim + 2 * c.hidden * c.kvHeads * c.headDim + 3 * c.hidden * c.ffn), head = c.hidden * c.vocabSize;
    const name = `Llama-2-7B layer shapes, random weights (${layers} layers, d 4096, ffn 11008, 32 heads, vocab 2048)`;
    tables.push({ caption: '(a) input threshold at sparsity 0.5 on every matrix (q/k/v, o, gate/up, down)', header,
      rows: [[name, 'input threshold s 0.5 (|x|)', `${(100 * sp!.read).toFixed(1)}%`, d!.rate.toFixed(2), sp!.rate.toFixed(2), `${(sp!.rate / d!.rate).toFixed(2)}x`, `${((layerW + head) / (sp!.read * layerW + head)).toFixed(2)}x`],
        [name, 'input-major layout, threshold 0 (every input: the kernels alone)', `${(100 * z!.read).toFixed(1)}%`, d!.rate.toFixed(2), z!.rate.toFixed(2), `${(z!.rate / d!.rate).toFixed(2)}x`, '1.00x']] });
    notes.push(`decode kernels: ${dense.decode!.kernel} (dense layout) / ${sparse.decode!.kernel} (input-major); ${steps} decode steps per run`);
  } finally { dense.dispose(); sparse.dispose(); }
}

// (b) the Llama fixture with its bundle's plan
const bundle = process.env.BENCH_BUNDLE ?? 'runs/llama-fixture/bundle', fixture = process.env.BENCH_MODEL ?? 'checkpoints/llama-fixture';
if (fs.existsSync(`${bundle}/manifest.json`)) {
  const preds = loadBundlePredictors(bundle, fixture), plan = preds.bundle.plan ?? null;
  const model = loadModel(fixture, { decode: true });
  const planModel = loadModel(fixture, { decode: { inputMajor: planInputMajor(plan, model.config) } });
  const built = decodeModes(model.config, preds, plan);
  try {
    const steps = Number(process.env.BENCH_STEPS_FIXTURE ?? 128);
    const [d, sp] = alternate([() => decodeRate(model, denseModes(model.config.layers), steps), () => decodeRate(planModel, built.modes, steps)]);
    const c = model.config, w = model.decode!, head = w.lmHead.n * w.lmHead.d, layerW = c.layers * (2 * c.hidden * c.heads * c.headDim + 2 * c.hidden * c.kvHeads * c.headDim + 3 * c.hidden * c.ffn);
    tables.push({ caption: `(b) the Llama fixture (${c.layers} layers, d ${c.hidden}, ffn ${c.ffn}) with ${bundle}`, header,
      rows: [['Llama fixture', plan ? `bundle plan (verified +${(100 * plan.verified.pplIncrease).toFixed(2)}%)` : 'bundle rules', `${(100 * sp!.read).toFixed(1)}%`, d!.rate.toFixed(0), sp!.rate.toFixed(0),
        `${(sp!.rate / d!.rate).toFixed(2)}x`, `${((layerW + head) / (sp!.read * layerW + head)).toFixed(2)}x`]] });
    if (plan) notes.push(`plan: ${plan.layers.map((l) => `L${l.layer} ${l.mlp.mode}${l.inputs ? ` + ${Object.entries(l.inputs).map(([k, v]) => `${k} ${v.sparsity}`).join(' ')}` : ''}`).join('; ')}`);
  } finally { built.dispose(); preds.dispose(); model.dispose(); planModel.dispose(); }
} else notes.push(`(b) skipped: no bundle at ${bundle}; run \`node bin/dejavu.js pipeline --config configs/llama-fixture.yaml\` first`);

const file = writeBenchResult({ name: 'sparsity', title: 'Input-threshold sparsity (TEAL / CATS / WINA sites): batch-1 decode, dense vs sparse', command: 'npx tsc -p tsconfig.json && node dist/bench/sparsity.js', tables, notes });
console.log(`bench:sparsity, backend ${b.name}, batch 1, median of ${ROUNDS} alternating runs, load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}\n`);
for (const t of tables) console.log(`${t.caption}\n\n${table(t.header, t.rows)}\n`);
if (notes.length) console.log(notes.join('\n'));
console.log(`\nwrote ${file}`);
