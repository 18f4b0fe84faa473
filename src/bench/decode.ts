/**
 * npm run bench:decode — batch-1 decode tokens/s, dense vs sparse, on the same backend in one run:
 * (a) the OPT fixture with its bundle (predictors pick neurons and heads), (b) OPT-1.3B widths with random
 * weights and random masks (10% MLP, 50% heads), next to the bound implied by the bytes of weights read.
 */
import * as fs from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { ensureBackend } from '../backend.js';
import { loadBundlePredictors } from '../bundle/bundle.js';
import type { ModelConfig } from '../model/config.js';
import { forward, newCache, disposeCache, disposeOutput, type SparsityHooks } from '../model/forward.js';
import { loadModel, type LayerWeights, type Model } from '../model/model.js';
import { predictorHooks } from '../predictors/hooks.js';
import { opt13bConfig, table, timeIt } from './common.js';
import { sparseAttention, sparseMlp, type Rows } from '../model/kernels/host-kernels.js';
import { createArena, toWasmRows } from '../model/kernels/wasm/kernels.js';
import { loadTokenizer } from '../tokenizer.js';
import { packSequences, readDocuments } from '../activations/data.js';
import { batchNll, ppl } from '../eval/perplexity.js';
import { decodePerplexityNll } from '../runtime/generate.js';

const b = await ensureBackend((process.env.DEJAVU_BACKEND as 'wasm' | undefined) ?? 'auto');
const STEPS = Number(process.env.BENCH_STEPS ?? 24);

/** decode tokens/s at batch 1 after a short prompt */
function decodeRate(model: Model, hooks: SparsityHooks | undefined, steps = STEPS): number {
  const cache = newCache(model);
  try {
    disposeOutput(forward(model, [[1, 5, 9, 13, 17, 21, 25, 29]], { cache }));
    for (let i = 0; i < 3; i++) disposeOutput(forward(model, [[3 + i]], { cache, ...(hooks ? { sparsity: hooks } : {}) }));
    const t = performance.now();
    for (let i = 0; i < steps; i++) { const o = forward(model, [[7 + (i % 50)]], { cache, ...(hooks ? { sparsity: hooks } : {}) }); o.logits!.dataSync(); disposeOutput(o); }
    return steps / ((performance.now() - t) / 1000);
  } finally { disposeCache(cache); }
}

/** alternate dense and sparse runs (ROUNDS each) and keep each one's best rate: less sensitive to machine noise */
function bestOf(dense: () => number, sparse: () => number): [number, number] {
  let d = 0, s = 0;
  for (let r = 0; r < Number(process.env.BENCH_ROUNDS ?? 3); r++) { d = Math.max(d, dense()); s = Math.max(s, sparse()); }
  return [d, s];
}

function randomModel(c: ModelConfig): Model {
  const arena = process.env.BENCH_NO_SIMD ? null : createArena();
  const r = (shape: number[], std: number) => tf.mul(tf.randomNormal(shape, 0, 1, 'float32', 7), std) as tf.Tensor2D;
  const layers: LayerWeights[] = Array.from({ length: c.layers }, () => {
    const w1 = r([c.hidden, c.ffn], 1 / Math.sqrt(c.hidden));
    const wq = r([c.hidden, c.hidden], 0.02), wo = r([c.hidden, c.hidden], 0.02), w2 = r([c.ffn, c.hidden], 1 / Math.sqrt(c.ffn));
    const w1nm = tf.transpose(w1) as tf.Tensor2D;
    const rowsOf = (t: tf.Tensor) => { const a = t.dataSync() as Rows; a.wasm = toWasmRows(a, a.length / c.hidden, c.hidden, arena); return a; };
    const host = {
      mlp: { up: rowsOf(w1nm), down: rowsOf(w2), activation: 'relu' as const },
      attn: { q: rowsOf(tf.transpose(wq)), o: rowsOf(wo), heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim },
    };
    return {
      host, wq, wo, w2,
      ln1: { g: tf.ones([c.hidden]) as tf.Tensor1D, b: tf.zeros([c.hidden]) as tf.Tensor1D }, ln2: { g: tf.ones([c.hidden]) as tf.Tensor1D, b: tf.zeros([c.hidden]) as tf.Tensor1D },
      wk: r([c.hidden, c.hidden], 0.02), wv: r([c.hidden, c.hidden], 0.02),
      w1, w1nm,
    };
  });
  const embed = r([c.vocabSize, c.hidden], 0.02);
  return {
    config: c, dir: '(random)', residency: 'resident', embed, pos: r([c.maxPositions + 2, c.hidden], 0.02), finalNorm: { g: tf.ones([c.hidden]) as tf.Tensor1D, b: tf.zeros([c.hidden]) as tf.Tensor1D },
    lmHead: tf.transpose(embed) as tf.Tensor2D, bytes: 0, layer: (i) => ({ w: layers[i]!, release: () => undefined }), dispose: () => arena?.dispose(),
  };
}

function randomHooks(c: ModelConfig, mlpFrac: number, headFrac: number): SparsityHooks {
  let s = 12345;
  const rand = () => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s / 0x7fffffff; };
  const choose = (n: number, k: number) => { const a = Int32Array.from({ length: n }, (_, i) => i); for (let i = 0; i < k; i++) { const j = i + Math.floor(rand() * (n - i)); [a[i], a[j]] = [a[j]!, a[i]!]; } return a.slice(0, k).sort(); };
  return {
    mlp: () => ({ indices: [choose(c.ffn, Math.round(mlpFrac * c.ffn))] }),
    heads: () => ({ indices: [choose(c.heads, Math.round(headFrac * c.heads))] }),
  };
}

/** bytes of weights read per decoded token (float32), dense vs sparse */
function bytesPerToken(c: ModelConfig, mlpFrac: number, headFrac: number) {
  const d = c.hidden, qo = 2 * d * c.heads * c.headDim, kv = 2 * d * c.kvHeads * c.headDim, mlp = d * c.ffn * (c.activation === 'swiglu' ? 3 : 2);
  const head = d * c.vocabSize;
  return { dense: 4 * (c.layers * (qo + kv + mlp) + head), sparse: 4 * (c.layers * (headFrac * qo + kv + mlpFrac * mlp) + head) };
}

const rows: (string | number)[][] = [];
let pplLine = '';
const bundle = process.env.BENCH_BUNDLE ?? 'runs/default/bundle';
const fixture = process.env.BENCH_MODEL ?? 'checkpoints/opt-fixture';
if (fs.existsSync(`${bundle}/manifest.json`)) {
  const model = loadModel(fixture, { neuronMajor: true });
  const preds = loadBundlePredictors(bundle, fixture);
  const sel = { mlp: 0, mlpT: 0, heads: 0, headsT: 0 };
  const hooks = predictorHooks(preds, { mode: 'indices', mlp: true, heads: true, onSelect: (site, _l, s2, t) => { if (site === 'mlp') { sel.mlp += s2; sel.mlpT += t; } else { sel.heads += s2; sel.headsT += t; } } });
  const [dense, sparse] = bestOf(() => decodeRate(model, undefined), () => decodeRate(model, hooks));
  const mf = sel.mlp / sel.mlpT, hf = sel.heads / sel.headsT;
  const by = bytesPerToken(model.config, mf, hf);
  const predBytes = 4 * preds.bundle.layers.reduce((s2, l) => s2 + [l.mlp, l.heads].reduce((a, p) => a + (p ? p.rank * (model.config.hidden + (p === l.mlp ? model.config.ffn : model.config.heads)) : 0), 0), 0);
  rows.push([`OPT fixture + bundle (${model.config.layers} layers, d ${model.config.hidden}, ffn ${model.config.ffn})`, `${(100 * mf).toFixed(1)}% / ${(100 * hf).toFixed(0)}%`, dense.toFixed(1), sparse.toFixed(1), (sparse / dense).toFixed(2) + 'x', (by.dense / (by.sparse + predBytes)).toFixed(2) + 'x']);
  // the runtime's own sparse perplexity (token by token, skipping) vs evaluate-recall's predicted-sparsity
  // perplexity (full sequences, masking) on the same held-out sequences and the same predictors
  const tok = loadTokenizer(fixture);
  const seqs: number[][] = [];
  for await (const sq of packSequences(readDocuments('data/heldout.jsonl'), { seqLen: 128, cfg: model.config, tokenizer: tok, maxTokens: 128 * Number(process.env.BENCH_PPL_SEQS ?? 6), source: 'data/heldout.jsonl' })) seqs.push(sq);
  const evalP = ppl(batchNll(model, seqs, predictorHooks(preds, { mode: 'mask', mlp: true, heads: true })));
  const t0 = performance.now();
  const rtP = ppl(decodePerplexityNll(model, seqs, predictorHooks(preds, { mode: 'indices', mlp: true, heads: true })));
  const denseP = ppl(batchNll(model, seqs));
  pplLine = `runtime sparse perplexity (token-by-token decode, skipping) ${rtP.toFixed(4)} vs evaluate-style predicted-sparsity perplexity (masking) ${evalP.toFixed(4)} on ${seqs.length * 128} held-out tokens: ${(100 * (rtP / evalP - 1)).toFixed(3)}% (dense ${denseP.toFixed(4)}; ${((performance.now() - t0) / 1000).toFixed(0)} s)`;
  preds.dispose(); model.dispose();
} else console.error(`(a) skipped: no bundle at ${bundle}; run \`npx dejavu pipeline --config configs/default.yaml\` first`);

const layers = Number(process.env.BENCH_LAYERS ?? 4);
const big: ModelConfig = opt13bConfig({ vocabSize: 2048, layers, attnBias: false, mlpBias: false });
{
  const model = randomModel(big);
  const [dense, sparse] = bestOf(() => decodeRate(model, undefined), () => decodeRate(model, randomHooks(big, 0.1, 0.5)));
  const by = bytesPerToken(big, 0.1, 0.5);
  rows.push([`OPT-1.3B widths, random weights (${layers} layers, d 2048, ffn 8192, 32 heads)`, '10% / 50%', dense.toFixed(1), sparse.toFixed(1), (sparse / dense).toFixed(2) + 'x', (by.dense / by.sparse).toFixed(2) + 'x']);
  // profile of one layer's MLP at batch 1: where the time goes
  const w = model.layer(0).w;
  const x = tf.randomNormal([1, big.hidden]);
  const idx = tf.tensor1d(Int32Array.from({ length: 819 }, (_, i) => i * 10), 'int32');
  const idxHost = Int32Array.from({ length: 819 }, (_, i) => i * 10);
  const headsHost = Int32Array.from({ length: 16 }, (_, i) => i * 2);
  const xHost = x.dataSync() as Float32Array;
  const kvHost = new Float32Array(big.kvHeads * 16 * big.headDim).map(() => Math.random());
  const prof = [
    ['dense MLP: x @ W1 [d, F] (matvec)', timeIt(() => { tf.matMul(x, w.w1).dataSync(); }, 9, 2)],
    ['dense MLP: a @ W2 [F, d] (matvec)', timeIt(() => { tf.tidy(() => tf.matMul(tf.randomNormal([1, big.ffn]), w.w2).dataSync()); }, 9, 2)],
    ['sparse: gather 10% rows of W1 (neuron-major) [k, d]', timeIt(() => { tf.gather(w.w1nm!, idx, 0).dataSync(); }, 9, 2)],
    ['sparse: gather 10% rows of W2 [k, d]', timeIt(() => { tf.gather(w.w2, idx, 0).dataSync(); }, 9, 2)],
    ['sparse: gather 10% columns of W1 [d, k] (non-neuron-major)', timeIt(() => { tf.gather(w.w1, idx, 1).dataSync(); }, 9, 2)],
    ['sparse: [k, d] @ [d, 1] matvec after tf.gather', timeIt(() => { tf.tidy(() => tf.matMul(tf.gather(w.w1nm!, idx, 0), tf.reshape(x, [big.hidden, 1])).dataSync()); }, 9, 2)],
    ['sparse MLP, host kernel (10% neurons, up + ReLU + down; used by the runtime)', timeIt(() => { sparseMlp(w.host!.mlp, idxHost, xHost); }, 9, 2)],
    ['sparse attention Q/O, host kernel (50% heads, context of 16 tokens)', timeIt(() => { sparseAttention(w.host!.attn, headsHost, xHost, kvHost, kvHost, 16, new Array(16).fill(1), null, big.hidden); }, 9, 2)],
    ['dense attention projections (4 matvecs [d, d])', timeIt(() => { tf.tidy(() => { for (const m of [w.wq, w.wk, w.wv, w.wo]) tf.matMul(x, m).dataSync(); }); }, 9, 2)],
    ['K and V projections (always dense, exact cache)', timeIt(() => { tf.tidy(() => { for (const m of [w.wk, w.wv]) tf.matMul(x, m).dataSync(); }); }, 9, 2)],
  ];
  console.log(`bench:decode, backend ${b.name}, batch 1, ${STEPS} decode steps per run, best of ${process.env.BENCH_ROUNDS ?? 3} alternating runs\n`);
  console.log(table(['model', 'density MLP / heads', 'dense tok/s', 'sparse tok/s', 'speedup', 'bound (weight bytes read)'], rows));
  if (pplLine) console.log('\n' + pplLine);
  console.log('\nprofile (one layer, OPT-1.3B widths, median ms):\n');
  console.log(table(['op', 'ms'], prof.map(([k, v]) => [k as string, (v as number).toFixed(3)])));
}
