/**
 * npm run bench:collect [-- --model DIR] [--tokens N|all] [--workers 1,2] [--batch-size B] [--seq-len T] [--backend NAME]
 * collect-activations throughput with 1 and N worker threads, each run in its own process (peak RSS is per run),
 * against the machine measured in the same run: forward GFLOP/s over (workers x one thread's matmul GFLOP/s at the
 * collection's shapes). Default: the OPT fixture on the calibration text. A checkpoint without a tokenizer (e.g.
 * one from `node dist/bench/opt-checkpoint.js DIR`, random OPT-1.3B widths) reads random token ids.
 * `--breakdown`: also, in this process (one thread, the fixture's batch shape), where one batch's time goes: the
 * forward pass alone, forward + captures (readback, float16, bits, statistics), the forward's dense matmuls alone at
 * their shapes, and the attention kernel alone, each against the same FLOPs at one thread's matmul rate. On webgpu
 * (gpuBreakdown) the GPU's parts, each waited for by reading one value computed last: the forward alone, + the
 * captures packed, + their reads (tfjs's data(), and collect's readPacked), + the host work (captureBatch); the dense matmuls at the model's shapes as the
 * model lays its weights ([in, out]) and transposed ([out, in]); one layer's shard encoding (Arrow + sha256).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureBackend, type BackendPreference } from '../backend.js';
import { collectSchema } from '../config/schemas.js';
import { runCollect } from '../stages/collect.js';
import { denseLayerFlopsPerToken, normalizeConfig } from '../model/config.js';
import { matmulRateAsync, table, timeIt, writeBenchResult, type BenchTable } from './common.js';
import { writeRandomIds } from './opt-checkpoint.js';
import * as tf from '@tensorflow/tfjs-core';
import { loadModel } from '../model/model.js';
import { forward, disposeOutput } from '../model/forward.js';
import { captureBatch } from '../activations/capture.js';
import { nativeReadback, packLayer, readbackThreads, readPacked } from '../activations/gpu-pack.js';
import { runShardJob } from '../activations/format.js';
import { median } from '../util/stats.js';
import { attentionHost } from '../model/kernels/wasm/kernels.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1]! : dflt; };
const modelDir = opt('model', args[0] && !args[0].startsWith('--') ? args[0] : 'checkpoints/opt-fixture');
const isFixture = fs.existsSync(path.join(modelDir, 'tokenizer.json'));
// the fixture: its whole calibration text (93,440 tokens), as the README's pipeline collects it
const tokensArg = opt('tokens', isFixture ? 'all' : '4096');
const tokens = tokensArg === 'all' ? undefined : Number(tokensArg);
const seqLen = Number(opt('seq-len', '256'));
const batchSize = Number(opt('batch-size', isFixture ? '8' : '2'));
const backend = opt('backend', process.env.DEJAVU_BACKEND ?? 'auto') as BackendPreference;
const workerCounts = opt('workers', backend === 'webgpu' ? '1' : '1,2').split(',').map(Number);
/** BENCH_NODE_ARGS: Node flags for the collecting child (e.g. `--cpu-prof --cpu-prof-dir=DIR`: NODE_OPTIONS refuses them) */
const childNodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);

interface ChildResult { summary: { tokens: number; tokensPerSecond: number; seconds: number; workers: number; timing: Record<string, number> };
    maxRssBytes: number; loadSeconds: number }

if (args.includes('--child')) {
  // one collection in this process; prints its summary and peak RSS as JSON
  const t0 = Date.now();
  await ensureBackend(backend);
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-collect-'));
  try {
    const cfg = collectSchema.parse({ model: modelDir, data: opt('data', ''), out, maxTokens: tokens, seqLen, batchSize, workers: Number(opt('child-workers', '1')) });
    const quiet = { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) };
    const res = (await runCollect(cfg, quiet)).json as { summary: ChildResult['summary'] };
    const s = res.summary;
    const r: ChildResult = { summary: s, maxRssBytes: process.resourceUsage().maxRSS * 1024, loadSeconds: (Date.now() - t0) / 1000 - s.tokens / s.tokensPerSecond };
    console.log(JSON.stringify(r));
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
} else {
  const b = await ensureBackend(backend);
  const c = normalizeConfig(JSON.parse(fs.readFileSync(path.join(modelDir, 'config.json'), 'utf8')), modelDir);
  let data = 'data/calibration.jsonl';
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-collect-data-'));
  if (!isFixture) {
    // random token ids (the checkpoint has no tokenizer): one document per sequence
    data = path.join(tmp, 'ids.jsonl');
    writeRandomIds(data, Math.ceil(tokens! / seqLen) + 1, seqLen, c.vocabSize);
  }
  const f = denseLayerFlopsPerToken(c);
  const avgCtx = (seqLen + 1) / 2;
  const attnCtxFlops = 2 * 2 * avgCtx * c.heads * c.headDim; // QK^T and PV per token per layer
  const flopsPerToken = c.layers * (f.attn + f.mlp + attnCtxFlops);
  // one thread's matmul rate at the collection's MLP shape, measured now, on this machine
  const mm = await matmulRateAsync(batchSize * seqLen, c.hidden, c.ffn);
  const self = fileURLToPath(import.meta.url);
  const rows: (string | number)[][] = [];
  let base = 0;
  const timings: string[] = [];
  for (const w of workerCounts) {
    const r = spawnSync(process.execPath, [...childNodeArgs, self, '--child', '--model', modelDir, '--data', data, '--tokens', tokensArg, '--seq-len', String(seqLen), '--batch-size', String(batchSize), '--child-workers', String(w), '--backend', b.name],
      { encoding: 'utf8', maxBuffer: 1 << 26, stdio: ['ignore', 'pipe', 'inherit'] });
    if (r.status !== 0) { console.error(`run with ${w} worker(s) failed (exit ${r.status})`); process.exit(1); }
    const res = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as ChildResult;
    const s = res.summary;
    base ||= s.tokensPerSecond;
    const gflops = (flopsPerToken * s.tokensPerSecond) / 1e9;
    timings.push(`${w} worker(s), ${s.tokens} tokens in ${(s.tokens / s.tokensPerSecond).toFixed(1)} s, timing in ms: ${JSON.stringify(s.timing)} (forward: until a batch's captures are read back, capture: ` +
      `the host work after, both summed over batches; write: the collecting thread's part of the writing; captureWait, writeWait: its waits for the oldest batch's capture and the previous batch's writing)`);
    console.log(timings.at(-1));
    rows.push([w, s.tokens, s.tokensPerSecond.toFixed(1), (s.tokensPerSecond / base).toFixed(2) + 'x', gflops.toFixed(2), (w * mm).toFixed(2), (gflops / (w * mm)).toFixed(2),
      (res.maxRssBytes / 2 ** 30).toFixed(2), res.loadSeconds.toFixed(0)]);
  }
  fs.rmSync(tmp, { recursive: true, force: true });
  console.log(`bench:collect on ${modelDir} (${c.layers} layers, d ${c.hidden}, ffn ${c.ffn}, vocab ${c.vocabSize}), backend ${b.name}, seq ${seqLen}, batch ${batchSize}, ${os.availableParallelism()} cores, load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}\n`);
  console.log(`forward FLOPs/token (matmuls): ${(flopsPerToken / 1e6).toFixed(1)} M; one thread's matmul rate [${batchSize * seqLen}, ${c.hidden}] x [${c.hidden}, ${c.ffn}]: ${mm.toFixed(2)} GFLOP/s\n`);
  const tables: BenchTable[] = [];
  if (args.includes('--breakdown')) tables.push(b.name === 'webgpu' ? await gpuBreakdown(c, flopsPerToken, mm) : breakdown(c, flopsPerToken, mm));
  const header = ['workers', 'tokens', 'tokens/s', 'vs 1 worker', 'forward GFLOP/s (end to end)', 'ceiling: workers x matmul GFLOP/s', 'ratio to ceiling', 'peak RSS GiB', 'start-up s (weights, workers)'];
  console.log(table(header, rows));
  tables.unshift({ caption: `collect-activations, each worker count in its own process (seq ${seqLen}, batch ${batchSize}, backend ${b.name}${b.name === 'webgpu' ? `: ${b.reason}` : ''})`, header, rows });
  // the fixture's result is collect.json; another checkpoint's is collect-<its folder name>.json; on webgpu
  // collect-webgpu-d<width>-l<layers>, with -b<batch> for batches of 16 sequences or more (a GPU's own shapes)
  const name = b.name === 'webgpu' ? `collect-webgpu-d${c.hidden}-l${c.layers}${batchSize >= 16 ? `-b${batchSize}` : ''}` : isFixture ? 'collect' : `collect-${path.basename(path.resolve(modelDir)).toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
  const file = writeBenchResult({ name, title: `Activation collection throughput: ${modelDir}`, command: `npm run bench:collect -- ${args.join(' ')}`.trim().replace(/ --$/, ''), tables, notes: [
    `${c.layers} layers, d ${c.hidden}, ffn ${c.ffn}, vocab ${c.vocabSize}; forward FLOPs per token (matmuls) ${(flopsPerToken / 1e6).toFixed(1)} M`,
    `one thread's matmul rate at [${batchSize * seqLen}, ${c.hidden}] x [${c.hidden}, ${c.ffn}], measured in the same run: ${mm.toFixed(2)} GFLOP/s (the ceiling column is workers x this)`,
    `shard writer threads: ${process.env.DEJAVU_COLLECT_WRITERS ?? 'default (one per layer, up to the cores but one)'}`, ...timings,
  ] });
  console.log(`\nwrote ${file}`);
}

/** One batch on one thread: forward alone, forward + captures, its dense matmuls alone, its attention kernel alone. */
function breakdown(c: ReturnType<typeof normalizeConfig>, flopsPerToken: number, mm: number): BenchTable {
  const model = loadModel(modelDir);
  const B = batchSize, T = seqLen, d = c.hidden;
  let s = 7;
  const seqs = Array.from({ length: B }, () => Array.from({ length: T }, () => 4 + ((s = (s * 1103515245 + 12345) & 0x7fffffff) % (c.vocabSize - 4))));
  const capture = { layerInput: true, mlpInput: true, mlpAct: true, headNorm: true, logits: false } as const;
  const fwd = timeIt(() => { const o = forward(model, seqs, { capture }); disposeOutput(o); }, 5, 1);
  const spec = { layers: Array.from({ length: c.layers }, (_, i) => i), seqLen: T, dtype: 'float16' as const, mlpAct: c.activation !== 'relu' };
  const cap = timeIt(() => { captureBatch(model, seqs, 0, spec); }, 5, 1);
  // the dense matmuls of one layer at their shapes ([B*T, in] x [in, out], weights laid out [in, out] as the model's)
  const shapes: [number, number][] = [[d, c.heads * c.headDim], [d, c.kvHeads * c.headDim], [d, c.kvHeads * c.headDim], [c.heads * c.headDim, d], [d, c.ffn], [c.ffn, d], ...(c.activation === 'swiglu' ? [[d, c.ffn] as [number, number]] : [])];
  let mmMs = 0;
  for (const [i, o] of shapes) {
    const a = tf.randomNormal([B * T, i]), w = tf.randomNormal([i, o]);
    mmMs += timeIt(() => { const o = tf.matMul(a, w); o.dataSync(); o.dispose(); }, 5, 1);
    a.dispose(); w.dispose();
  }
  mmMs *= c.layers;
  const H = c.heads, hd = c.headDim;
  const q = Float32Array.from({ length: B * H * T * hd }, () => Math.random() - 0.5), k = q.map((v) => v * 0.5), v = q.map((x) => -x);
  const keyMask = Array.from({ length: B }, () => new Array(T).fill(1));
  const att = c.layers * timeIt(() => { attentionHost(q, k, v, B, H, T, T, hd, keyMask, 0, 1 / Math.sqrt(hd)); }, 5, 1);
  model.dispose();
  const gf = (ms: number) => ((flopsPerToken * B * T) / (ms * 1e6)).toFixed(2);
  const ratio = (ms: number) => ((flopsPerToken * B * T) / (ms * 1e6) / mm).toFixed(2);
  const header = ['part', 'ms per batch', 'GFLOP/s (all forward FLOPs / this time)', 'ratio to one thread\'s matmul rate'];
  const rows = [
    ['forward alone (captures kept, not read back)', fwd.toFixed(0), gf(fwd), ratio(fwd)],
    ['forward + captures (readback, float16, bits, checks, statistics)', cap.toFixed(0), gf(cap), ratio(cap)],
    ['the dense matmuls alone (tf.matMul at the same shapes)', mmMs.toFixed(0), '-', '-'],
    ['the attention kernel alone (attentionHost, every layer)', att.toFixed(0), '-', '-'],
    ['forward minus matmuls minus attention (norms, adds, ReLU, copies, head norms)', (fwd - mmMs - att).toFixed(0), '-', '-'],
  ];
  const caption = `one batch (${B} x ${T} tokens) on one thread, median of 5`;
  console.log(`${caption}:\n`);
  console.log(table(header, rows));
  console.log('');
  return { caption, header, rows };
}

/** One batch on the GPU (webgpu reads asynchronously): each part waited for by reading one value computed after it. */
async function gpuBreakdown(c: ReturnType<typeof normalizeConfig>, flopsPerToken: number, mm: number): Promise<BenchTable> {
  const model = loadModel(modelDir);
  const B = batchSize, T = seqLen, d = c.hidden, rows = B * T, layers = Array.from({ length: c.layers }, (_, i) => i);
  let s = 7;
  const seqs = Array.from({ length: B }, () => Array.from({ length: T }, () => 4 + ((s = (s * 1103515245 + 12345) & 0x7fffffff) % (c.vocabSize - 4))));
  const capture = { xAttn: true, xMlp: true, mlpAct: true, headNorm: true, logits: false, layers } as const;
  /** the queue done: one value read of a tensor computed on the GPU after everything queued before */
  const fence = async (t: tf.Tensor) => { const v = tf.tidy(() => tf.sum(t)); await v.data(); v.dispose(); };
  const timeAsync = async (fn: () => Promise<void>, n = 3) => {
    await fn();
    const ts: number[] = [];
    for (let i = 0; i < n; i++) { const t = performance.now(); await fn(); ts.push(performance.now() - t); }
    return median(ts);
  };
  const spec = { rows, hidden: d, ffn: c.ffn, heads: c.heads, f16: true, mlpAct: c.activation !== 'relu', reluGated: c.gated && c.activation === 'relu' };
  const withForward = async (then: (o: ReturnType<typeof forward>) => Promise<void>) => {
    const o = forward(model, seqs, { capture });
    try { await then(o); } finally { disposeOutput(o); }
  };
  const packAll = (o: ReturnType<typeof forward>) => layers.map((l) =>
    packLayer({ xa: o.captured.xAttn![l]!, xm: o.captured.xMlp![l]!, act: o.captured.mlpAct![l]!, hn: o.captured.headNorm![l]! }, spec));
  const fwd = await timeAsync(() => withForward((o) => fence(o.captured.headNorm![c.layers - 1]!)));
  const packed = await timeAsync(() => withForward(async (o) => { const p = packAll(o); try { await fence(p.at(-1)!); } finally { for (const t of p) t.dispose(); } }));
  let bytes = 0;
  const read = await timeAsync(() => withForward(async (o) => {
    const p = packAll(o);
    try { bytes = (await Promise.all(p.map((t) => t.data()))).reduce((a, v) => a + v.byteLength, 0); } finally { for (const t of p) t.dispose(); }
  }));
  // collect's read path (readPacked: one mapping a batch, copied out on native threads where the addon is built)
  const nat = nativeReadback();
  const readMapped = await timeAsync(() => withForward(async (o) => {
    const p = packAll(o);
    try { await readPacked(p, readbackThreads()); } finally { for (const t of p) t.dispose(); }
  }));
  const cspec = { layers, seqLen: T, dtype: 'float16' as const, mlpAct: c.activation !== 'relu' };
  let one: Awaited<ReturnType<typeof captureBatch>> | null = null;
  const cap = await timeAsync(async () => { one = await captureBatch(model, seqs, 0, cspec); });
  // the dense matmuls of one layer at their shapes, [rows, in] x [in, out] as the model lays them out, and transposed
  const shapes: [number, number][] = [[d, c.heads * c.headDim], [d, c.kvHeads * c.headDim], [d, c.kvHeads * c.headDim], [c.heads * c.headDim, d], [d, c.ffn], [c.ffn, d], ...(c.activation === 'swiglu' ? [[d, c.ffn] as [number, number]] : [])];
  let mmMs = 0, mmTMs = 0;
  const mmRows: (string | number)[][] = [];
  for (const [i, o] of shapes) {
    const a = tf.randomNormal([rows, i]), w = tf.randomNormal([i, o]), wt = tf.randomNormal([o, i]);
    const reps = 8;
    const run = (tb: boolean) => timeAsync(async () => {
      let last: tf.Tensor | null = null;
      for (let r = 0; r < reps; r++) { last?.dispose(); last = tf.matMul(a, tb ? wt : w, false, tb); }
      await fence(last!); last!.dispose();
    });
    const t0 = (await run(false)) / reps, t1 = (await run(true)) / reps;
    mmMs += t0; mmTMs += t1;
    mmRows.push([`matmul [${rows}, ${i}] x [${i}, ${o}]`, t0.toFixed(2), ((2 * rows * i * o) / (t0 * 1e6)).toFixed(0), `transposed B: ${t1.toFixed(2)} ms, ${((2 * rows * i * o) / (t1 * 1e6)).toFixed(0)} GFLOP/s`]);
    a.dispose(); w.dispose(); wt.dispose();
  }
  mmMs *= c.layers; mmTMs *= c.layers;
  // one layer's shard bytes (Arrow + sha256), as a writer thread makes them
  const lc = one!.layers[0]!;
  const encMs = median(Array.from({ length: 5 }, (_, k) => {
    const t = performance.now();
    runShardJob({ kind: 'shard-batch', file: `probe-${k}`, first: true, schema: { layer: 0, hidden: d, ffn: c.ffn, heads: c.heads, dtype: 'float16', mlpAct: cspec.mlpAct }, firstSeq: 0, seqLen: T,
      cols: { rows, xAttn: lc.xAttn, xMlp: lc.xMlp, mlpActiveBits: lc.bits, headNorm: lc.headNorm, ...(lc.mlpAct ? { mlpAct: lc.mlpAct } : {}) } });
    return performance.now() - t;
  }));
  model.dispose();
  const gf = (ms: number) => ((flopsPerToken * rows) / (ms * 1e6)).toFixed(0);
  const ratio = (ms: number) => ((flopsPerToken * rows) / (ms * 1e6) / mm).toFixed(2);
  const header = ['part', 'ms per batch', 'GFLOP/s (all forward FLOPs / this time)', 'ratio to the matmul rate'];
  const out = [
    ['forward alone (captures kept on the GPU)', fwd.toFixed(0), gf(fwd), ratio(fwd)],
    ['forward + captures packed on the GPU', packed.toFixed(0), gf(packed), ratio(packed)],
    [`forward + packed + read back (${(bytes / 1e6).toFixed(0)} MB), tfjs's data() a tensor`, read.toFixed(0), gf(read), ratio(read)],
    [`forward + packed + read back by readPacked (one mapping, copied ${nat.mod ? 'on native threads' : `in JavaScript: ${nat.why}`})`, readMapped.toFixed(0), gf(readMapped), ratio(readMapped)],
    ['captureBatch (+ the host work, on this thread)', cap.toFixed(0), gf(cap), ratio(cap)],
    [`the dense matmuls alone, x ${c.layers} layers (weights [in, out] as the model's)`, mmMs.toFixed(0), '-', '-'],
    ['the same, weights transposed ([out, in], matMul transposeB)', mmTMs.toFixed(0), '-', '-'],
    ...mmRows,
    [`one layer's shard bytes (Arrow + sha256, ${(rows * (2 * d * 2 + c.ffn / 8 + 4 * c.heads) / 1e6).toFixed(0)} MB), this thread; x ${c.layers} layers`, `${encMs.toFixed(1)}; ${(encMs * c.layers).toFixed(0)}`, '-', '-'],
  ];
  const caption = `one batch (${B} x ${T} tokens) on the GPU, median of 3 after one warm-up`;
  console.log(`${caption}:\n`);
  console.log(table(header, out));
  console.log('');
  return { caption, header, rows: out };
}
