/**
 * npm run bench:decode — batch-1 decode tokens/s of the runtime (src/runtime/decoder.ts), dense vs sparse, with
 * llama.cpp beside every row it can run (docs/llama-cpp.md), on the same machine in one run, alternating the variants
 * (BENCH_ROUNDS, default 3) and reporting each one's median:
 * (a) the OPT fixture with its bundle (the bundle's plan, or its trained rules), next to the dense decode and the
 *     previous runtime (the tfjs forward pass, one token at a time); BENCH_BUNDLE and BENCH_MODEL name another
 *     bundle and its checkpoint (a plan with input-threshold sites runs on its input-major layout, dense on the
 *     checkpoint's own);
 * (b) OPT-1.3B widths with random weights (BENCH_LAYERS layers): dense, lossless (ReLU: only nonzero rows of fc2),
 *     and a fixed random selection of 10% MLP / 50% heads, next to the bound implied by the bytes of weights read;
 *     llama.cpp has no OPT architecture, so these rows have no llama.cpp figure;
 * (c) Llama: the trained fixture checkpoints/llama-fixture and a random Llama at TinyLlama-1.1B widths
 *     (BENCH_LLAMA_LAYERS of its 22 layers, float16 safetensors): dejavu dense and 10% MLP / 50% heads (fixed random
 *     picks) at each weight format and thread count, each run beside llama.cpp on the same weights (a GGUF written
 *     by src/bench/gguf.ts: F32 for float32, F16 for float16, Q8_0 for q8_0), through its C API with a persistent
 *     thread pool and through node-llama-cpp; every run loads its model afresh, so load times are medians too.
 * Knobs: BENCH_ROUNDS, BENCH_STEPS (decode steps per run; OPT-1.3B widths: 16), BENCH_ROWS (a comma list of
 * opt-fixture, opt-1.3b, llama-fixture, tinyllama; default all), BENCH_DTYPES (float32,auto,q8_0), BENCH_THREADS
 * (1,2,auto), BENCH_LLAMA (capi,node; 'none' = no llama.cpp), BENCH_LLAMA_POLL (the C API thread pool's busy-wait level,
 * 0-100, default llama.cpp's 50), BENCH_LAYERS (OPT, 4), BENCH_LLAMA_LAYERS (8).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ensureBackend } from '../backend.js';
import { loadBundlePredictors } from '../bundle/bundle.js';
import { normalizeConfig, type ModelConfig } from '../model/config.js';
import type { DecodeOptions } from '../model/decode-weights.js';
import { forward, newCache, disposeCache, disposeOutput } from '../model/forward.js';
import { loadModel, type Model } from '../model/model.js';
import { DecodeSession, denseModes, warmDecode, type DecodeModes } from '../runtime/decoder.js';
import { decodeModes, planInputMajor } from '../runtime/plan.js';
import { opt13bConfig, seededSets, table, writeBenchResult, type BenchTable } from './common.js';
import { writeLlamaGguf, type GgmlType } from './gguf.js';
import { tinyLlamaConfig, writeRandomLlama } from './llama-checkpoint.js';
import { llamaUnavailable, runLlama, type Via } from './llamacpp.js';
import { writeRandomOpt } from './opt-checkpoint.js';
import { median } from '../util/stats.js';

const b = await ensureBackend((process.env.DEJAVU_BACKEND as 'wasm' | undefined) ?? 'auto');
const STEPS = Number(process.env.BENCH_STEPS ?? 128);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const list = (k: string, dflt: string) => (process.env[k] ?? dflt).split(',').map((s) => s.trim()).filter(Boolean);
const ROWS = new Set(list('BENCH_ROWS', 'opt-fixture,opt-1.3b,llama-fixture,tinyllama'));
const DTYPES = list('BENCH_DTYPES', 'float32,auto,q8_0') as NonNullable<DecodeOptions['dtype']>[];
const THREADS = list('BENCH_THREADS', '1,2,auto').map((t) => t === 'auto' ? 'auto' as const : Number(t));
const KERNELS = list('BENCH_KERNELS', 'auto') as NonNullable<DecodeOptions['kernels']>[];
const VIAS = list('BENCH_LLAMA', 'capi,node').filter((v) => v !== 'none') as Via[];
const PROMPT = [2, 5, 9, 13, 17, 21, 25, 29];
/** llama.cpp's thread-pool polling level (C API), default llama.cpp's own (50) */
const POLL = process.env.BENCH_LLAMA_POLL !== undefined ? Number(process.env.BENCH_LLAMA_POLL) : undefined;
const bad = (k: string, got: string[], ok: string[]) => { const x = got.filter((g) => !ok.includes(g)); if (x.length) { console.error(`error: ${k}: unknown ${x.join(', ')} (known: ${ok.join(', ')})`); process.exit(2); } };
bad('BENCH_ROWS', [...ROWS], ['opt-fixture', 'opt-1.3b', 'llama-fixture', 'tinyllama']);
bad('BENCH_DTYPES', DTYPES, ['float32', 'float16', 'bfloat16', 'auto', 'q8_0']);
bad('BENCH_LLAMA', VIAS, ['capi', 'node']);
bad('BENCH_KERNELS', KERNELS, ['auto', 'native', 'wasm']);
for (const [k, v] of [['BENCH_STEPS', STEPS], ['BENCH_ROUNDS', ROUNDS], ...THREADS.filter((t) => t !== 'auto').map((t) => ['BENCH_THREADS', t])] as [string, number][])
  if (!Number.isInteger(v) || v <= 0) { console.error(`error: ${k} needs positive integers (got ${process.env[k]})`); process.exit(2); }

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

/** run the variants in turn ROUNDS times (alternating: drift hits all alike), median of each; progress on stderr */
function alternate<T extends number[]>(fns: (() => T)[], labels: string[] = []): T[] {
  const runs: T[][] = fns.map(() => []);
  for (let r = 0; r < ROUNDS; r++)
    fns.forEach((f, i) => { const x = f(); runs[i]!.push(x); if (labels[i]) console.error(`  round ${r + 1}/${ROUNDS} ${labels[i]}: ${x.map((v) => v.toFixed(2)).join(' / ')}`); });
  return runs.map((rs) => rs[0]!.map((_, j) => median(rs.map((x) => x[j]!))) as T);
}

/** bytes of weights read per decoded token, at `per` bytes a weight */
function bytesPerToken(c: ModelConfig, mlpFrac: number, headFrac: number, per = 4) {
  const d = c.hidden, qo = 2 * d * c.heads * c.headDim, kv = 2 * d * c.kvHeads * c.headDim, mlp = d * c.ffn * (c.activation === 'swiglu' ? 3 : 2);
  const head = d * c.vocabSize;
  return { dense: per * (c.layers * (qo + kv + mlp) + head), sparse: per * (c.layers * (headFrac * qo + kv + mlpFrac * mlp) + head) };
}

function randomPicks(c: ModelConfig, mlpFrac: number, headFrac: number): DecodeModes {
  const sets = seededSets(); // a few fixed sets per layer, cycled: the cost of reading rows, not of a predictor
  return {
    mlp: Array.from({ length: c.layers }, () => { const ss = sets(c.ffn, Math.round(mlpFrac * c.ffn)); let i = 0; return { mode: 'select' as const, pick: () => ss[i++ % ss.length]! }; }),
    heads: Array.from({ length: c.layers }, () => { const ss = sets(c.heads, Math.round(headFrac * c.heads)); let i = 0; return { mode: 'select' as const, pick: () => ss[i++ % ss.length]! }; }),
  };
}

const load = os.loadavg().map((x) => x.toFixed(1)).join(' ');
const busy = os.loadavg()[0]! > os.cpus().length - 0.5
  ? `MACHINE BUSY: 1-minute load average ${os.loadavg()[0]!.toFixed(1)} on ${os.cpus().length} cores before the run: other work shares the cores, so these figures (multi-threaded ones most: llama.cpp's pool busy-waits) are not comparable; rerun on a quiet machine`
  : null;
if (busy) console.error(busy);
const tables: BenchTable[] = [];
const notes: string[] = [];
const optRows: (string | number)[][] = [];
const noLlama = 'n/a (llama.cpp has no OPT architecture)';
/** the OPT rows run the runtime's defaults: the checkpoint's own precision, threads chosen by the runtime */
const OPT_DECODE: DecodeOptions = { dtype: 'auto', threads: 'auto' };
const bundle = process.env.BENCH_BUNDLE ?? 'runs/default/bundle';
const fixture = process.env.BENCH_MODEL ?? 'checkpoints/opt-fixture';
if (ROWS.has('opt-fixture') && fs.existsSync(`${bundle}/manifest.json`)) {
  const model = loadModel(fixture, { decode: OPT_DECODE });
  const preds = loadBundlePredictors(bundle, fixture);
  const plan = preds.bundle.plan ?? null;
  // a plan's input-threshold sites read their matrices input-major (docs/sparsity.md): the plan runs on that layout, dense on the checkpoint's own
  const im = planInputMajor(plan, model.config), planModel = im.size ? loadModel(fixture, { decode: { ...OPT_DECODE, inputMajor: im } }) : model;
  const built = decodeModes(model.config, preds, plan);
  const dense = denseModes(model.config.layers);
  const counter = new DecodeSession(planModel, built.modes, 1);
  for (let i = 0; i < 64; i++) counter.step([7 + (i % 50)]);
  counter.dispose();
  const mf = counter.counts.mlpSelected / counter.counts.mlpTotal, hf = counter.counts.headsSelected / counter.counts.headsTotal;
  const [[tfjs], [d], [sp]] = alternate([() => [forwardRate(model)], () => [decodeRate(model, dense)], () => [decodeRate(planModel, built.modes)]]);
  // input sites: the bound from the runtime's own count of the decoder layers' weights read (the LM head read densely)
  const full = bytesPerToken(model.config, 1, 1), lmHead = 4 * model.config.hidden * model.config.vocabSize, read = counter.weights.weightsRead / counter.weights.weightsTotal;
  const by = im.size ? { dense: full.dense, sparse: lmHead + read * (full.dense - lmHead) } : bytesPerToken(model.config, mf, hf);
  const label = `${fixture === 'checkpoints/opt-fixture' ? 'OPT fixture' : path.basename(fixture)} (${model.config.layers} layers, d ${model.config.hidden}, ffn ${model.config.ffn}) + bundle ${plan ? 'plan' : 'rules'}`;
  optRows.push([label, `${(100 * mf).toFixed(1)}% / ${(100 * hf).toFixed(0)}%`, d!.toFixed(0), sp!.toFixed(0), (sp! / d!).toFixed(2) + 'x', (by.dense / by.sparse).toFixed(2) + 'x', tfjs!.toFixed(0), noLlama]);
  if (plan) notes.push(`plan: ${plan.layers.map((l) => `L${l.layer} ${l.mlp.mode}${l.heads.mode === 'predicted' ? '+heads' : ''}${l.inputs && Object.keys(l.inputs).length ? `+inputs ${Object.keys(l.inputs).join('/')}` : ''}`).join(', ')}; verified by the plan stage at ${plan.verified.pplIncrease >= 0 ? '+' : ''}${(100 * plan.verified.pplIncrease).toFixed(2)}% perplexity, ${plan.verified.speedup.toFixed(2)}x` +
    (im.size ? `; decoder-layer weights read ${(100 * read).toFixed(1)}% of dense (counted by the runtime here)` : ''));
  built.dispose(); preds.dispose(); if (planModel !== model) planModel.dispose(); model.dispose();
} else if (ROWS.has('opt-fixture')) console.error(`(a) skipped: no bundle at ${bundle}; run \`npx dejavu pipeline --config configs/default.yaml\` first`);

const layers = Number(process.env.BENCH_LAYERS ?? 4);
if (ROWS.has('opt-1.3b')) {
  const big: ModelConfig = opt13bConfig({ vocabSize: 2048, layers, attnBias: false, mlpBias: false });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dejavu-bench-decode-'));
  try {
    writeRandomOpt(dir, big);
    const model = loadModel(dir, { decode: OPT_DECODE });
    const dense = denseModes(big.layers), lossless: DecodeModes = { mlp: dense.mlp.map(() => ({ mode: 'lossless' as const })), heads: dense.heads };
    const picks = randomPicks(big, 0.1, 0.5);
    const counter = new DecodeSession(model, lossless, 1);
    for (let i = 0; i < 16; i++) counter.step([7 + i]);
    counter.dispose();
    const active = counter.counts.mlpSelected / counter.counts.mlpTotal;
    const [[tfjs], [d], [ll], [sp]] = alternate([() => [forwardRate(model, 12)], () => [decodeRate(model, dense, 16)], () => [decodeRate(model, lossless, 16)], () => [decodeRate(model, picks, 16)]]);
    const name = `OPT-1.3B widths, random weights (${layers} layers, d 2048, ffn 8192, 32 heads)`;
    const b1 = bytesPerToken(big, 1, 1), bl = bytesPerToken(big, 0.5 * (1 + active), 1), bs = bytesPerToken(big, 0.1, 0.5);
    optRows.push([`${name}: lossless`, `${(100 * active).toFixed(0)}% active / 100%`, d!.toFixed(1), ll!.toFixed(1), (ll! / d!).toFixed(2) + 'x', (b1.dense / bl.sparse).toFixed(2) + 'x', tfjs!.toFixed(1), noLlama]);
    optRows.push([`${name}: predicted (fixed random sets)`, '10% / 50%', d!.toFixed(1), sp!.toFixed(1), (sp! / d!).toFixed(2) + 'x', (bs.dense / bs.sparse).toFixed(2) + 'x', tfjs!.toFixed(1), noLlama]);
    notes.push(`decode kernels: ${model.decode!.kernel}`);
    model.dispose();
  } finally { fs.rmSync(dir, { recursive: true, force: true }); }
}
if (optRows.length) tables.push({ caption: `OPT: batch 1, decode weights dtype auto / threads auto, ${STEPS} decode steps per run (OPT-1.3B widths: 16), median of ${ROUNDS} alternating runs`,
  header: ['model', 'density MLP / heads', 'dense tok/s', 'sparse tok/s', 'speedup', 'bound (weight bytes read)', 'previous runtime (tfjs forward, dense) tok/s', 'llama.cpp'], rows: optRows });

/** the ggml type llama.cpp runs for a dejavu weight format ('auto' on a float16 checkpoint is float16) */
const ggmlOf = (dtype: string, ckptHalf: boolean): GgmlType => dtype === 'q8_0' ? 'Q8_0' : dtype === 'float32' || (dtype === 'auto' && !ckptHalf) ? 'F32' : 'F16';
const perWeight: Record<GgmlType, number> = { F32: 4, F16: 2, Q8_0: 34 / 32 };
/** the format and threads a loaded model's decode weights report (the runtime of issue 27), or null where it reports none */
function ran(model: Model): string | null {
  const w = model.decode as unknown as { dtype?: string; threads?: number; kernel?: string };
  return w.dtype === undefined ? null : `${w.dtype}, ${w.kernel ? `${w.kernel} kernels, ` : ''}${w.threads ?? 1} thread${w.threads === 1 ? '' : 's'}`;
}

/**
 * The Llama rows of one checkpoint: for every (dtype, threads), dejavu dense and 10% / 50% (one fresh load per run)
 * and llama.cpp on the matching GGUF at the same threads ('auto' -> every core), alternating.
 */
function llamaTable(tag: string, title: string, dir: string, c: ModelConfig, ckptHalf: boolean, gdir: string): void {
  const why = VIAS.length ? llamaUnavailable() : 'not run (BENCH_LLAMA=none)';
  if (why && VIAS.length) notes.push(`${tag}: llama.cpp not run: ${why}`);
  const vias = why ? [] : VIAS;
  const ggufs = new Map<GgmlType, string>();
  const gguf = (t: GgmlType) => {
    if (!ggufs.has(t)) {
      const f = path.join(gdir, `${path.basename(dir)}-${t}.gguf`), t0 = Date.now();
      writeLlamaGguf(dir, f, t);
      ggufs.set(t, f);
      notes.push(`${tag}: ${t} GGUF written in ${((Date.now() - t0) / 1000).toFixed(1)} s (${(fs.statSync(f).size / 1e9).toFixed(2)} GB)`);
    }
    return ggufs.get(t)!;
  };
  const configs = DTYPES.flatMap((dtype) => THREADS.flatMap((threads) => KERNELS.map((kernels) => ({ dtype, threads, kernels }))));
  const picks = randomPicks(c, 0.1, 0.5), dense = denseModes(c.layers);
  const llamaThreads = (t: number | 'auto') => t === 'auto' ? os.cpus().length : t;
  const key = (via: Via, g: GgmlType, th: number) => `${via}:${g}:${th}`;
  const fns: (() => number[])[] = [], slots: string[] = [], ranAs: (string | null)[] = [];
  for (const [i, o] of configs.entries()) {
    slots.push(`dejavu:${i}`);
    fns.push(() => {
      const t0 = performance.now();
      const model = loadModel(dir, { forward: false, decode: o }); // the decode rows only, as generate loads them
      warmDecode(model); // and warms them (counted in the load time)
      const loadS = (performance.now() - t0) / 1000;
      try { ranAs[i] = ran(model); return [decodeRate(model, dense), decodeRate(model, picks), loadS]; } finally { model.dispose(); }
    });
    // each llama.cpp variant once a round, right after the first dejavu config that maps to it
    for (const via of vias) {
      const g = ggmlOf(o.dtype, ckptHalf), th = llamaThreads(o.threads), k = key(via, g, th);
      if (slots.includes(k)) continue;
      const file = gguf(g);
      slots.push(k);
      fns.push(() => { const r = runLlama(via, file, { threads: th, steps: STEPS, prompt: PROMPT, poll: POLL }); return [r.tokensPerSecond, r.loadMs / 1000]; });
    }
  }
  console.error(`${tag}: ${fns.length} variants, ${ROUNDS} rounds (dejavu: dense / sparse tok/s / load s; llama.cpp: tok/s / load s)`);
  const res = new Map(alternate(fns, slots.map((k) => k.startsWith('dejavu:') ? `dejavu ${configs[Number(k.slice(7))]!.dtype}/${configs[Number(k.slice(7))]!.threads}/${configs[Number(k.slice(7))]!.kernels}` : k)).map((r, j) => [slots[j]!, r]));
  const rows = configs.map((o, i) => {
    const [d, sp, loadS] = res.get(`dejavu:${i}`)! as [number, number, number], g = ggmlOf(o.dtype, ckptHalf), th = llamaThreads(o.threads);
    const cap = res.get(key('capi', g, th)), nd = res.get(key('node', g, th));
    const by = bytesPerToken(c, 0.1, 0.5, perWeight[g]);
    const gbs = (x: number, bytes: number) => { const r = x * bytes / 1e9; return `${x.toFixed(1)} (${r.toFixed(r < 10 ? 1 : 0)} GB/s)`; };
    const vs = (x: number) => cap ? `${(x / cap[0]!).toFixed(2)}x` : '';
    return [ranAs[i] ? `${o.dtype} (ran ${ranAs[i]})` : o.dtype, String(o.threads), gbs(d, by.dense), gbs(sp, by.sparse), `${(sp / d).toFixed(2)}x (bound ${(by.dense / by.sparse).toFixed(2)}x)`,
      `${g}, ${th}`, cap ? gbs(cap[0]!, by.dense) : why ?? 'not run', nd ? nd[0]!.toFixed(1) : why ?? 'not run', vs(d) || '-', vs(sp) || '-', loadS.toFixed(2),
      [cap, nd].map((x) => x ? x[1]!.toFixed(2) : '-').join(' / ')];
  });
  if (ranAs.some((r) => r === null)) notes.push(`${tag}: this build's decode weights do not report their format and threads: the dejavu rows show the DecodeOptions asked for`);
  tables.push({ caption: `${title}: batch 1, ${STEPS} decode steps after an 8-token prompt, median of ${ROUNDS} alternating runs (each a fresh load)`,
    header: ['dejavu weights', 'threads', 'dejavu dense tok/s', 'dejavu 10% MLP / 50% heads tok/s', 'sparse / dense', 'llama.cpp weights, threads',
      'llama.cpp C API (persistent pool) tok/s', 'llama.cpp via node-llama-cpp tok/s', 'dense / llama.cpp C API', 'sparse / llama.cpp C API', 'dejavu load s', 'llama.cpp load s (C API / node)'], rows });
  // the issue's bar: dejavu 10% / 50% at every core against llama.cpp's dense F16 and Q8_0 at every core
  const all = os.cpus().length, f16 = res.get(key('capi', 'F16', all)), q8 = res.get(key('capi', 'Q8_0', all));
  for (const [i, o] of configs.entries()) {
    if ((o.threads !== 'auto' && o.threads !== all) || !(f16 || q8)) continue;
    const [d, sp] = res.get(`dejavu:${i}`)!;
    const vs = [f16 && `${(sp! / f16[0]!).toFixed(2)}x llama.cpp F16 (${f16[0]!.toFixed(1)})`, q8 && `${(sp! / q8[0]!).toFixed(2)}x llama.cpp Q8_0 (${q8[0]!.toFixed(1)})`].filter(Boolean);
    const dv = f16 ? ` (${(d! / f16[0]!).toFixed(2)}x llama.cpp F16)` : '';
    notes.push(`${tag}: dejavu ${o.dtype}/${o.threads}/${o.kernels} kernels: dense ${d!.toFixed(1)}${dv}, 10%/50% ${sp!.toFixed(1)} tok/s = ${vs.join(', ')} dense at ${all} threads (C API)`);
  }
}

const gdir = fs.mkdtempSync(path.join(os.tmpdir(), 'dejavu-bench-gguf-'));
try {
  if (ROWS.has('llama-fixture')) llamaTable('Llama fixture', 'Llama fixture (checkpoints/llama-fixture: 4 layers, d 192, ffn 512, 6 / 2 heads, vocab 4096, float16)', 'checkpoints/llama-fixture',
    normalizeConfig(JSON.parse(fs.readFileSync('checkpoints/llama-fixture/config.json', 'utf8')), 'checkpoints/llama-fixture/config.json'), true, gdir);
  if (ROWS.has('tinyllama')) {
    const n = Number(process.env.BENCH_LLAMA_LAYERS ?? 8);
    const dir = path.join(gdir, 'tinyllama');
    const t0 = Date.now();
    writeRandomLlama(dir, n);
    notes.push(`TinyLlama widths: random float16 checkpoint written in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    llamaTable('TinyLlama widths', `Random Llama at TinyLlama-1.1B widths (${n} of 22 layers, d 2048, ffn 5632, 32 / 4 heads, vocab 32000, float16)`, dir, tinyLlamaConfig(n), true, gdir);
  }
} finally { fs.rmSync(gdir, { recursive: true, force: true }); }

const knobs = Object.entries(process.env).filter(([k]) => /^(BENCH_(?!RESULTS_DIR)\w+|DEJAVU_BACKEND)$/.test(k)).map(([k, v]) => `${k}=${v}`).sort();
const command = `npm run build && ${knobs.length ? knobs.join(' ') + ' ' : ''}npm run bench:decode`;
const file = writeBenchResult({ name: 'decode', title: 'Decode tokens/s: dejavu dense and sparse, llama.cpp beside it', command, tables, notes: [...(busy ? [busy] : []), `backend ${b.name}; load average before the run ${load}, after ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`, ...notes] });
console.log(`bench:decode, backend ${b.name}, batch 1, median of ${ROUNDS} alternating runs, load average ${load} (before) / ${os.loadavg().map((x) => x.toFixed(1)).join(' ')} (after)\n`);
for (const t of tables) console.log(`${t.caption}\n\n${table(t.header, t.rows)}\n`);
if (notes.length) console.log(notes.join('\n'));
if (busy) console.log(`\n${busy}`);
console.log(`\nwritten: ${file}`);
