/**
 * node dist/bench/decode-gpu.js — batch-1 decode on the GPU runtime (src/runtime/gpu), in one run:
 * (a) the ceiling: a copy kernel's bandwidth (read + write) and the matvec / axpy kernels alone at the stack's widths;
 * (b) OPT-6.7B widths with random float16 weights filled on the GPU (d 4096, ffn 16384, 32 heads of 128,
 *     BENCH_LAYERS layers, default 8, vocab 2048): dense, lossless (ReLU: only the nonzero rows of fc2), and fixed
 *     random selections (10% MLP / 50% heads, 8 sets per layer cycled, as bench:decode), each timed greedy on the GPU
 *     (argmax on the GPU, the tokens read back once) and through step() (the logits read back every token);
 * (c) the OPT fixture (checkpoints/opt-fixture): dense, lossless, fixed picks.
 * The variants alternate (BENCH_ROUNDS rounds, default 2; every round's figure is reported). Results go to
 * docs/results/decode-gpu.json (BENCH_RESULTS_DIR elsewhere) through writeBenchResult.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { ensureBackend } from '../backend.js';
import type { ModelConfig } from '../model/config.js';
import { loadModel } from '../model/model.js';
import { DecodeSession, denseModes, INPUT_SITES, type LayerInputs } from '../runtime/decoder.js';
import { closeGpu, getGpu, type Gpu } from '../runtime/gpu/device.js';
import { attentionWgsl, axpySiteWgsl, axpyWgsl, copyWgsl, matvecWgsl, normWgsl, reduceWgsl } from '../runtime/gpu/kernels.js';
import { GpuDecodeSession, gpuDenseModes, gpuPlanModes, gpuSession, type GpuModes, type GpuSessionOptions } from '../runtime/gpu/session.js';
import { loadBundlePredictors } from '../bundle/bundle.js';
import { gpuEmpty, randomGpuWeights } from '../runtime/gpu/weights.js';
import { opt13bConfig, seededSets, table, writeBenchResult, type BenchTable } from './common.js';

const LAYERS = Number(process.env.BENCH_LAYERS ?? 8);
const STEPS = Number(process.env.BENCH_STEPS ?? 64);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const FIX_ROUNDS = Number(process.env.BENCH_FIXTURE_ROUNDS ?? 5);
const PROMPT = [2, 5, 9, 13, 17, 21, 25, 29];
const log = (s: string) => console.error(s);
const median = (xs: number[]) => { const v = [...xs].sort((a, b) => a - b); return v.length % 2 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2; };
const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

/** ms per call of `n` dispatches of one kernel in one submission (after a warm-up submission) */
async function kernelMs(gpu: Gpu, code: string, buffers: GPUBuffer[], x: number, y = 1, n = 20): Promise<number> {
  const dev = gpu.device;
  const p = dev.createComputePipeline({ layout: 'auto', compute: { module: dev.createShaderModule({ code }), entryPoint: 'main' } });
  const g = dev.createBindGroup({ layout: p.getBindGroupLayout(0), entries: buffers.map((buffer, i) => ({ binding: i, resource: { buffer } })).filter((e) => e.binding in bindingsOf(code)) });
  const go = async (k: number) => {
    const enc = dev.createCommandEncoder(), pass = enc.beginComputePass();
    pass.setPipeline(p); pass.setBindGroup(0, g);
    for (let i = 0; i < k; i++) pass.dispatchWorkgroups(x, y);
    pass.end(); dev.queue.submit([enc.finish()]);
    await dev.queue.onSubmittedWorkDone();
  };
  await go(2);
  const xs: number[] = [];
  for (let r = 0; r < 3; r++) {
    const t0 = performance.now(); await go(1); const one = performance.now() - t0;
    const t = performance.now(); await go(n + 1);
    xs.push((performance.now() - t - one) / n); // less one submission's fixed cost
  }
  return xs.sort((a, b) => a - b)[1]!;
}
/** the binding numbers a shader declares */
function bindingsOf(code: string): Record<number, true> {
  const o: Record<number, true> = {};
  for (const m of code.matchAll(/@binding\((\d+)\)/g)) o[Number(m[1])] = true;
  return o;
}

const tables: BenchTable[] = [];
const notes: string[] = [];
const b = await ensureBackend('wasm');
const gpu = await getGpu();
notes.push(`adapter: ${gpu.info.vendor} ${gpu.info.architecture} ${gpu.info.description}`.trim() + `; shader-f16 ${gpu.features.f16 ? 'exposed' : 'not exposed'} (not used: float16 is packed in u32); tfjs backend (fixture load) ${b.name}`);
log(notes[0]!);

// (a) the ceiling and the kernels alone
const d = Number(process.env.BENCH_HIDDEN ?? 4096), F = Number(process.env.BENCH_FFN ?? 16384);
let copyGBs = 0;
{
  const MB = Number(process.env.BENCH_COPY_MIB ?? 512); // MiB copied
  const src = gpuEmpty(gpu, MB * 2 ** 20, 'copy.src'), dst = gpuEmpty(gpu, MB * 2 ** 20, 'copy.dst');
  const copyMs = await kernelMs(gpu, copyWgsl(), [src, dst], 8192);
  src.destroy(); dst.destroy();
  const W = gpuEmpty(gpu, F * d * 2, 'W'), x = gpuEmpty(gpu, 4 * F, 'x'), y = gpuEmpty(gpu, 4 * F, 'y'), part = gpuEmpty(gpu, 4 * 128 * d, 'part');
  const base = { bias: false, gated: false, gateBias: false, act: null, actThreshold: 0, resid: false, zero: false };
  const mvMs = await kernelMs(gpu, matvecWgsl({ ...base, cols: d, rows: F }), [W, x, y], F / 8);
  const axMs = await kernelMs(gpu, axpyWgsl({ cols: d, rows: F, chunks: 128, gather: false }), [W, x, part], Math.ceil(d / 8 / 256), 128);
  const g = gpuEmpty(gpu, 4 * d, 'g');
  const mvnMs = await kernelMs(gpu, matvecWgsl({ ...base, cols: d, rows: F, norm: { kind: 'layernorm', eps: 1e-5, hasB: false, out: false } }), [W, x, y, x, x, x, x, x, g], F / 8);
  const nMs = await kernelMs(gpu, normWgsl(d, 'layernorm', 1e-5, false), [x, y, g], 1);
  const rMs = await kernelMs(gpu, reduceWgsl(d, 128, false), [y, part], d / 32);
  // the input-sparse axpy of up (input-major [d, F]) at threshold 0 over a zero input: every row skipped, what is left is its fixed cost
  const thr = gpuEmpty(gpu, 16, 'thr');
  const sMs = await kernelMs(gpu, axpySiteWgsl({ cols: F, rows: d, chunks: 24, input: { kind: 'norm', norm: 'layernorm', eps: 1e-5, hasB: false }, skip: { slot: 0, wina: false }, count: null }),
    [W, x, part, x, x, g, x, x, x, thr], F / 8 / 256, 24);
  const hd = 128, cap = 80, qkv = gpuEmpty(gpu, 4 * 3 * d, 'qkv'), sel = gpuEmpty(gpu, 4 * (1 + 3 * (d / hd)), 'sel'), Kc = gpuEmpty(gpu, 4 * d * cap, 'K'), Vc = gpuEmpty(gpu, 4 * d * cap, 'V');
  gpu.device.queue.writeBuffer(sel, 0, Uint32Array.from({ length: 1 + 3 * (d / hd) }, (_, i) => (i === 0 ? 3 * (d / hd) : i - 1)));
  const params = gpuEmpty(gpu, 16, 'params');
  gpu.device.queue.writeBuffer(params, 0, Uint32Array.from([cap - 8, 0, 0, 0]));
  const aMs = await kernelMs(gpu, attentionWgsl({ heads: d / hd, kvHeads: d / hd, hd, cap, ropeDim: 0, scale: 0.1 }), [qkv, sel, Kc, Vc, y, params], d / hd);
  const one = gpuEmpty(gpu, 16, 'one');
  const eMs = await kernelMs(gpu, '@group(0) @binding(0) var<storage, read_write> o: array<u32>;\n@compute @workgroup_size(64) fn main() { o[0] = o[0] + 1u; }', [one], 1);
  for (const buf of [W, x, y, part, g, thr, qkv, sel, Kc, Vc, params, one]) buf.destroy();
  copyGBs = (2 * MB * 2 ** 20) / (copyMs * 1e6);
  const wBytes = F * d * 2;
  tables.push({ caption: 'Kernels alone (one submission of 20 dispatches each)', header: ['kernel', 'ms', 'GB/s'], rows: [
    [`copy ${MB} MiB (read + write)`, copyMs.toFixed(3), copyGBs.toFixed(0)],
    [`matvec [${F}, ${d}] float16 (weights read)`, mvMs.toFixed(3), (wBytes / (mvMs * 1e6)).toFixed(0)],
    [`axpy [${F}, ${d}] float16, 128 chunks (weights read)`, axMs.toFixed(3), (wBytes / (axMs * 1e6)).toFixed(0)],
    [`matvec [${F}, ${d}] with the LayerNorm fused in (each workgroup normalizes x)`, mvnMs.toFixed(3), (wBytes / (mvnMs * 1e6)).toFixed(0)],
    [`LayerNorm of ${d} (one workgroup)`, nMs.toFixed(4), '-'], [`sum of 128 chunks of ${d} into the residual`, rMs.toFixed(4), '-'],
    [`input-sparse axpy [${d}, ${F}], LayerNorm fused, every input skipped (its fixed cost)`, sMs.toFixed(4), '-'],
    [`attention, ${d / 128} heads of 128 over ${cap - 7} positions`, aMs.toFixed(4), '-'],
    ['a dispatch writing one word (the per-dispatch cost with a barrier)', eMs.toFixed(4), '-'],
  ] });
  notes.push(`copy bandwidth ${copyGBs.toFixed(0)} GB/s (the ceiling)`);
  log(table(tables[0]!.header, tables[0]!.rows));
}

/** fixed random sets per layer (8, cycled), as bench:decode's randomPicks */
function randomSets(c: ModelConfig, mlpFrac: number, headFrac: number): GpuModes {
  const sets = seededSets(); // a few fixed sets per layer, cycled: the cost of reading rows, not of a predictor
  return {
    mlp: Array.from({ length: c.layers }, () => (mlpFrac < 1 ? { mode: 'select' as const, sets: sets(c.ffn, Math.round(mlpFrac * c.ffn)) } : { mode: 'dense' as const })),
    heads: Array.from({ length: c.layers }, () => (headFrac < 1 ? { mode: 'select' as const, sets: sets(c.heads, Math.round(headFrac * c.heads)) } : { mode: 'dense' as const })),
  };
}

interface Variant { name: string; s: GpuDecodeSession; bytes: () => number; greedy: number[]; step: number[]; host: number[] }

/** every input site of every layer at threshold `t0` (abs scores), for calibrate() */
function allSites(layers: number, t0: number, oDense = false): (LayerInputs | undefined)[] {
  return Array.from({ length: layers }, () => ({ attn: { t: t0 }, ...(oDense ? {} : { o: { t: t0 } }), mlp: { t: t0 }, down: { t: t0 } }));
}

/**
 * Each site's threshold bisected (geometrically, per layer and site) until it keeps `density` of its inputs over a
 * few greedy tokens: TEAL's calibration, done on the GPU's own counts (random weights have no calibration text).
 * Returns the kept share per site (attn, o, mlp, down) over all layers at the end.
 */
async function calibrate(s: GpuDecodeSession, c: ModelConfig, density: number, iters = 24, k = 4): Promise<{ kept: number[]; set: (s: GpuDecodeSession, oDense?: boolean) => void }> {
  const L = c.layers, widths = [c.hidden, c.heads * c.headDim, c.hidden, c.ffn];
  const lo = Array.from({ length: 4 * L }, () => 1e-6), hi = Array.from({ length: 4 * L }, () => 64);
  let kept = new Array<number>(4 * L).fill(0), t: number[] = [];
  const set = (z: GpuDecodeSession, oDense = false) => t.forEach((v, j) => { if (!(oDense && INPUT_SITES[j % 4] === 'o')) z.setThreshold(Math.floor(j / 4), INPUT_SITES[j % 4]!, v); });
  for (let it = 0; it <= iters; it++) {
    t = lo.map((l, j) => Math.sqrt(l * hi[j]!));
    set(s);
    const before = s.siteRows.map((r) => [...r]);
    await s.greedy(7, k);
    s.rewind(k);
    kept = s.siteRows.flatMap((r, i) => r.map((x, j) => (x - before[i]![j]!) / (k * widths[j]!)));
    if (it < iters) kept.forEach((f, j) => { if (f > density) lo[j] = t[j]!; else hi[j] = t[j]!; });
  }
  // (the same weights and tokens in another session: the same inputs, so the same thresholds keep the same share)
  return { kept: [0, 1, 2, 3].map((j) => kept.filter((_, q) => q % 4 === j).reduce((a, b) => a + b, 0) / L), set };
}

/** prime each session with the prompt, then ROUNDS alternating rounds of greedy and step() timing */
async function measure(vs: Variant[], steps: number, rounds = ROUNDS): Promise<void> {
  for (const v of vs) for (const id of PROMPT) await v.s.step([id]);
  for (let r = 0; r < rounds; r++)
    for (const v of vs) {
      // the median of 3 greedy runs (one run is ~0.1 s: a pause of the host would halve it)
      const runs: number[] = [];
      let t = 0;
      for (let k = 0; k < 3; k++) {
        t = performance.now();
        await v.s.greedy(7, steps);
        runs.push(steps / ((performance.now() - t) / 1000));
        v.s.rewind(steps);
      }
      v.greedy.push(median(runs));
      v.host.push(v.s.lastHostMs / steps);
      const k = Math.max(4, steps / 4);
      t = performance.now();
      for (let i = 0; i < k; i++) await v.s.step([7 + i]);
      v.step.push(k / ((performance.now() - t) / 1000));
      v.s.rewind(k);
      log(`${v.name}: round ${r + 1}: greedy ${v.greedy[r]!.toFixed(0)} tok/s, step() ${v.step[r]!.toFixed(0)} tok/s`);
    }
}

function rowsOf(vs: Variant[], denseName: string): (string | number)[][] {
  const dense = vs.find((v) => v.name === denseName)!;
  return vs.map((v) => {
    const c = v.s.counts;
    return [v.name, `${(100 * c.mlpSelected / c.mlpTotal).toFixed(1)}% / ${(100 * c.headsSelected / c.headsTotal).toFixed(0)}%`, (v.bytes() / 2 ** 20).toFixed(1),
      v.greedy.map((x) => x.toFixed(0)).join(', '), v.greedy.map((x) => ((x * v.bytes()) / 1e9).toFixed(0)).join(', '),
      v.greedy.map((x) => ((x * v.bytes()) / 1e9 / copyGBs * 100).toFixed(0) + '%').join(', '),
      v.greedy.map((x, i) => (x / dense.greedy[i]!).toFixed(2) + 'x').join(', '), median(v.greedy.map((x, i) => x / dense.greedy[i]!)).toFixed(2) + 'x',
      v.step.map((x) => x.toFixed(0)).join(', '), v.step.map((x, i) => (x / dense.step[i]!).toFixed(2) + 'x').join(', '), v.host.map((x) => x.toFixed(3)).join(', ')];
  });
}
const HEADER = ['variant', 'density MLP / heads', 'weights read / token (MiB)', 'greedy tok/s (per round)', 'weight GB/s', 'of copy bandwidth', 'speedup vs dense (per round)', 'median speedup', 'step() tok/s (logits read back)', 'step() speedup', 'host encode + submit ms / token (greedy)'];

// (b) OPT-6.7B widths
{
  const c: ModelConfig = opt13bConfig({ hidden: d, ffn: F, heads: d / 128, kvHeads: d / 128, headDim: 128, layers: LAYERS, vocabSize: 2048, attnScale: 1 / Math.sqrt(128),
    attnBias: false, mlpBias: false });
  const t0 = performance.now();
  const w = await randomGpuWeights(gpu, c, 7);
  log(`random weights: ${(w.bytes / 2 ** 30).toFixed(2)} GiB in ${(performance.now() - t0).toFixed(0)} ms`);
  const cap = PROMPT.length + STEPS + 8;
  const H = c.heads, hd = c.headDim, layerBytes = (qf: number, mf: number) => 2 * ((qf * H + 2 * H) * hd * d + qf * H * hd * d + 2 * mf * F * d);
  const head = 2 * c.vocabSize * d;
  const mk = (name: string, modes: GpuModes, bytes: (s: GpuDecodeSession) => number, o: GpuSessionOptions = {}): Variant => {
    const s = new GpuDecodeSession(gpu, w, modes, { capacity: cap, ...o });
    return { name, s, bytes: () => bytes(s), greedy: [], step: [], host: [] };
  };
  const lossless: GpuModes = { mlp: gpuDenseModes(LAYERS).mlp.map(() => ({ mode: 'lossless' as const })), heads: gpuDenseModes(LAYERS).heads };
  const sparseIn = mk('input-sparse 50% (q/k/v, o, fc1, fc2 inputs)', { ...gpuDenseModes(LAYERS), inputs: allSites(LAYERS, 0.1) }, () => LAYERS * layerBytes(1, 1) + head);
  const cal = await calibrate(sparseIn.s, c, 0.5), inDensity = cal.kept;
  sparseIn.bytes = () => LAYERS * 2 * d * (inDensity[0]! * (3 * H * hd) + inDensity[1]! * d + (inDensity[2]! + inDensity[3]!) * F) + head;
  const sparseAs = (name: string, o: GpuSessionOptions, oDense = false): Variant => {
    const v = mk(name, { ...gpuDenseModes(LAYERS), inputs: allSites(LAYERS, 0.1, oDense) }, oDense ? () => sparseIn.bytes() + LAYERS * 2 * d * (1 - inDensity[1]!) * d : () => sparseIn.bytes(), o);
    cal.set(v.s, oDense);
    return v;
  };
  notes.push(`input-sparse at the 6.7B widths: thresholds bisected on the GPU's counts per layer and site to 50%; kept q/k/v ${pct(inDensity[0]!)}, o ${pct(inDensity[1]!)}, fc1 ${pct(inDensity[2]!)}, fc2 ${pct(inDensity[3]!)} of the inputs`);
  log(notes[notes.length - 1]!);
  const vs = [
    mk('dense', gpuDenseModes(LAYERS), () => LAYERS * layerBytes(1, 1) + head),
    mk('dense, norms not fused (a norm dispatch before qkv, fc1, the head)', gpuDenseModes(LAYERS), () => LAYERS * layerBytes(1, 1) + head, { unfused: true }),
    mk('lossless (ReLU, nonzero rows of fc2)', lossless, (s) => { const a = s.counts.mlpSelected / s.counts.mlpTotal; return LAYERS * (layerBytes(1, 0.5) + 2 * a * F * d) + head; }),
    // (the runtime runs lossless in one dispatch up to LOSSLESS_ONE_ROWS rows of ffn: here it is two, this is the one)
    mk('lossless in one dispatch (up, act and the nonzero rows of fc2: 128 workgroups)', lossless, (s) => { const a = s.counts.mlpSelected / s.counts.mlpTotal; return LAYERS * (layerBytes(1, 0.5) + 2 * a * F * d) + head; },
      { losslessOneRows: Infinity }),
    mk('predicted 10% MLP / 50% heads (fixed random sets)', randomSets(c, 0.1, 0.5), () => LAYERS * layerBytes(0.5, 0.1) + head),
    mk('predicted 10% MLP / 50% heads, norms not fused', randomSets(c, 0.1, 0.5), () => LAYERS * layerBytes(0.5, 0.1) + head, { unfused: true }),
    mk('predicted 10% MLP only', randomSets(c, 0.1, 1), () => LAYERS * layerBytes(1, 0.1) + head),
    mk('predicted 10% MLP / 50% heads, up and down as two dispatches (the last session\'s)', randomSets(c, 0.1, 0.5), () => LAYERS * layerBytes(0.5, 0.1) + head, { splitMlp: true }),
    mk('predicted 10% MLP / 50% heads, the one-dispatch MLP in 128 chunks', randomSets(c, 0.1, 0.5), () => LAYERS * layerBytes(0.5, 0.1) + head, { mlpChunks: 128 }),
    mk('predicted 10% MLP / 50% heads, the one-dispatch MLP in 256 chunks', randomSets(c, 0.1, 0.5), () => LAYERS * layerBytes(0.5, 0.1) + head, { mlpChunks: 256 }),
    mk('predicted 10% MLP only, up and down as two dispatches', randomSets(c, 0.1, 1), () => LAYERS * layerBytes(1, 0.1) + head, { splitMlp: true }),
    sparseIn,
    // o's site at 50% is slower than dense o on the H200 (its 192 chunks' sum and the site's fixed cost outweigh 16 MB):
    // a plan priced on the GPU keeps o dense (its site priced by both ends), as this variant does
    sparseAs('input-sparse 50% at q/k/v, fc1, fc2 inputs, o dense (as a GPU-priced plan keeps it)', {}, true),
  ];
  { // the 16-row fused matvecs compute what the norm dispatch and the 8-row matvec do (10% / 50% and dense, 3 steps)
    let worst = 0;
    for (const modes of [gpuDenseModes(LAYERS), randomSets(c, 0.1, 0.5)]) {
      const p = new GpuDecodeSession(gpu, w, modes, { capacity: 8 }), q = new GpuDecodeSession(gpu, w, modes, { capacity: 8, fusePairRows: 0 });
      for (const id of [3, 4, 5]) {
        const a = await p.step([id]), z = await q.step([id]);
        let m = 0, e = 0;
        for (let j = 0; j < a.length; j++) { m = Math.max(m, Math.abs(z[j]!)); e = Math.max(e, Math.abs(a[j]! - z[j]!)); }
        worst = Math.max(worst, e / m);
      }
      p.dispose(); q.dispose();
    }
    notes.push(`16-row fused matvecs vs a norm dispatch and 8-row matvecs at the 6.7B widths (dense, 10% / 50%, 3 steps): max |diff| / max |logit| = ${worst.toExponential(2)}`);
    log(notes[notes.length - 1]!);
  }
  { // the one-dispatch MLP over selected neurons computes what up and down as two dispatches do (10% / 50%, 3 steps): in the
    // two's chunks (one per 64 of the ffn's rows, at most 128) the same bits; in its own (a chunk per 8 neurons) the same sums split otherwise
    const modes = randomSets(c, 0.1, 0.5), twoChunks = Math.min(128, Math.ceil(F / 64));
    const two = new GpuDecodeSession(gpu, w, modes, { capacity: 8, splitMlp: true });
    const same = new GpuDecodeSession(gpu, w, modes, { capacity: 8, mlpChunks: twoChunks }), own = new GpuDecodeSession(gpu, w, modes, { capacity: 8 });
    let diffBits = 0, worst = 0;
    for (const id of [3, 4, 5]) {
      const z = await two.step([id]), a = await same.step([id]), b = await own.step([id]);
      let m = 0, e = 0;
      for (let j = 0; j < z.length; j++) { if (Math.fround(a[j]!) !== Math.fround(z[j]!)) diffBits++; m = Math.max(m, Math.abs(z[j]!)); e = Math.max(e, Math.abs(b[j]! - z[j]!)); }
      worst = Math.max(worst, e / m);
    }
    two.dispose(); same.dispose(); own.dispose();
    notes.push(`the one-dispatch MLP vs up and down as two dispatches at the 6.7B widths (10% / 50%, 3 steps): in the two's ${twoChunks} chunks ${diffBits} of ${3 * c.vocabSize} logits differ; in its own chunks max |diff| / max |logit| = ${worst.toExponential(2)}`);
    log(notes[notes.length - 1]!);
  }
  try {
    await measure(vs, STEPS);
    tables.push({ caption: `OPT-6.7B widths, random float16 weights (${LAYERS} layers, d ${d}, ffn ${F}, ${d / 128} heads of 128, vocab 2048), batch 1, ${STEPS} greedy tokens after an ${PROMPT.length}-token prompt`, header: HEADER, rows: rowsOf(vs, 'dense') });
    log(table(HEADER, tables[tables.length - 1]!.rows));
    // where layer 0's time goes (after the rounds: timing ops leaves the sessions' vectors meaningless)
    const parts: (string | number)[][] = [];
    for (const v of vs.filter((x) => x.name === 'dense' || x.name.startsWith('predicted 10% MLP / 50% heads (') || x.name.startsWith('input-sparse'))) {
      const names = [...new Set(v.s.opNames(0))].filter((n) => n !== undefined);
      const each: string[] = [];
      for (const n of names) each.push(`${n} ${(1000 * await v.s.timeOps(0, [n])).toFixed(1)}`);
      parts.push([v.name, (1000 * await v.s.timeOps(0, null)).toFixed(1), each.join(', ')]);
    }
    tables.push({ caption: 'Layer 0\'s ops timed alone (GpuDecodeSession.timeOps: many runs in one pass, median of 5; an op whose weights fit in the L2 cache, as o\'s 32 MiB, reads them from there)', header: ['variant', 'whole layer µs', 'per op µs (o / site.o: with its chunk sum)'], rows: parts });
    log(table(tables[tables.length - 1]!.header, parts));
  } finally { for (const v of vs) v.s.dispose(); w.dispose(); }
}

// (c) the OPT fixture
const fixture = process.env.BENCH_MODEL ?? 'checkpoints/opt-fixture';
if (fs.existsSync(`${fixture}/config.json`)) {
  const model = loadModel(fixture, { decode: true });
  const c = model.config;
  { // the GPU computes what the CPU runtime computes, on this device too
    const cpu = new DecodeSession(model, denseModes(c.layers), 1), g = await gpuSession(model, gpuDenseModes(c.layers), { capacity: 16 });
    let worst = 0;
    for (const id of PROMPT) {
      const a = cpu.step([id]), z = await g.step([id]);
      let m = 0, e = 0;
      for (let j = 0; j < a.length; j++) { m = Math.max(m, Math.abs(a[j]!)); e = Math.max(e, Math.abs(a[j]! - z[j]!)); }
      worst = Math.max(worst, e / m);
    }
    cpu.dispose(); g.dispose();
    notes.push(`fixture check on this device: GPU dense logits vs the CPU runtime's over ${PROMPT.length} steps: max |diff| / max |logit| = ${worst.toExponential(2)}`);
    log(notes[notes.length - 1]!);
  }
  const lossless: GpuModes = { mlp: gpuDenseModes(c.layers).mlp.map(() => ({ mode: 'lossless' as const })), heads: gpuDenseModes(c.layers).heads };
  const cap = PROMPT.length + STEPS + 8;
  const bytes = (s: GpuDecodeSession) => () => {
    const k = s.counts;
    return 2 * c.layers * (4 * c.hidden * c.hidden * (0.5 + 0.5 * k.headsSelected / k.headsTotal) + 2 * c.hidden * c.ffn * k.mlpSelected / k.mlpTotal) + 2 * c.vocabSize * c.hidden;
  };
  const mk = async (name: string, modes: GpuModes, o: GpuSessionOptions = {}): Promise<Variant> => {
    const s = await gpuSession(model, modes, { ...o, capacity: cap });
    return { name, s, bytes: bytes(s), greedy: [], step: [], host: [] };
  };
  const vs = [await mk('dense', gpuDenseModes(c.layers)), await mk('lossless (one dispatch: up, act, the nonzero rows of fc2)', lossless),
    await mk('lossless, up (compacting) and fc2 as two dispatches (the last session\'s)', lossless, { losslessOneRows: 0 }), await mk('fixed picks 10% MLP / 50% heads', randomSets(c, 0.1, 0.5))];
  // the fixture's bundle (BENCH_BUNDLE, default runs/default/bundle): its plan on the GPU, predictors included
  const bundleDir = process.env.BENCH_BUNDLE ?? 'runs/default/bundle';
  if (fs.existsSync(`${bundleDir}/manifest.json`)) {
    const preds = loadBundlePredictors(bundleDir, fixture);
    try {
      const plan = preds.bundle.plan ?? null;
      vs.push(await mk(`bundle ${plan ? 'plan' : 'rules'} (${bundleDir}${plan ? `, priced for ${plan.runtime ?? 'cpu'}` : ''})`, gpuPlanModes(c, preds, plan)));
    } finally { preds.dispose(); }
  }
  try {
    await measure(vs, STEPS, FIX_ROUNDS);
    tables.push({ caption: `OPT fixture (${fixture}: ${c.layers} layers, d ${c.hidden}, ffn ${c.ffn}, ${c.heads} heads, vocab ${c.vocabSize}), batch 1`, header: HEADER, rows: rowsOf(vs, 'dense') });
    log(table(HEADER, tables[tables.length - 1]!.rows));
  } finally { for (const v of vs) v.s.dispose(); model.dispose(); }
}

notes.push(`greedy: every token one submission (the argmax on the GPU feeds the next embedding), the tokens read back once at the end; step(): one submission and one readback of the logits per token`);
notes.push(`every figure is one round; rounds alternate the variants; load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`);
const file = writeBenchResult({ name: 'decode-gpu', title: 'Decode on the GPU runtime (WebGPU / WGSL), batch 1', command: 'node dist/bench/decode-gpu.js', tables, notes });
console.log(tables.map((t) => `${t.caption}\n\n${table(t.header, t.rows)}`).join('\n\n') + '\n\n' + notes.join('\n') + `\n\nwritten: ${file}`);
await closeGpu();
