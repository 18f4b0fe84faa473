/**
 * dejavu estimate: what a pipeline on this model costs here, before it runs: disk for the activations, host (and GPU)
 * memory, and time per stage at this machine's measured rate, per backend available.
 *  - disk: the activation format's bytes per token and layer (activations/format.ts: x_attn and x_mlp at the stored
 *    dtype, the 1-bit active mask, float16 activation magnitudes for non-ReLU models, float32 head norms, seq + pos),
 *    for the calibration and the held-out tokens; exact up to Arrow's few bytes of framing per batch.
 *  - tokens: from --data, its size over bytes per token measured by tokenizing its first 256 KiB (without a tokenizer:
 *    4 bytes per token, said so); caps (collect.maxTokens...) apply; without --data, 1M calibration tokens.
 *  - time: each stage's matmul FLOPs (from the model's sizes and the settings) over a rate measured here: one
 *    [m, d] x [d, ffn] matmul on each available backend, one thread, times the workers and the 0.8 of that the
 *    measurement log (docs/measurement-log.md) measured end to end for collect (0.79-0.82); the other stages times their overhead over their FLOPs in
 *    the measured fixture run (MEASURED_OVERHEAD). Rough; the stages print their own ETA once they run.
 *  - memory: the weights widened to float32 (workers share them), plus the largest stage working set.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tf, BACKEND_NAMES, selectBackend, getBackend, type BackendName } from '../backend.js';
import { openCheckpoint } from '../checkpoint/checkpoint.js';
import { denseLayerFlopsPerToken, normalizeConfig, type ModelConfig } from '../model/config.js';
import { isJsonlName } from '../activations/data.js';
import { loadTokenizer } from '../tokenizer.js';
import { HELDOUT_SHARE } from '../activations/split.js';
import type { EstimateConfig } from '../config/schemas.js';
import { defaultWorkers } from '../util/pool.js';
import { readInputText } from '../util/input.js';
import type { StageDeps } from '../util/progress.js';
import type { StageResult } from './types.js';

/** bytes of one token's row in one layer's activation shards */
export function activationBytesPerTokenLayer(mc: ModelConfig, dtype: 'float16' | 'float32', mlpAct: boolean): number {
  return 8 + 2 * mc.hidden * (dtype === 'float16' ? 2 : 4) + Math.ceil(mc.ffn / 8) + (mlpAct ? 2 * mc.ffn : 0) + 4 * mc.heads;
}

/** forward FLOPs per token: every layer's matmuls, and (`logits`: perplexity runs; collect computes none) the LM head */
export function forwardFlopsPerToken(mc: ModelConfig, logits = true): number {
  const f = denseLayerFlopsPerToken(mc);
  return mc.layers * (f.attn + f.mlp) + (logits ? 2 * mc.hidden * mc.vocabSize : 0);
}

/**
 * Each stage's wall time over its FLOPs at the collect's effective rate, as measured on the fixture's default run
 * (docs/measurement-log.md, "Results": collect 17-18 s + 9-10 s, train 14-15 s, evaluate 58-59 s, plan 29 s on 2 workers; these FLOPs
 * give 0.88 + 0.42 TFLOP for collect, i.e. ~50 GFLOP/s, and 0.37 / 0.35 / 0.83 TFLOP for train / evaluate / plan):
 * the sparse passes, the recall pass and the plan's kernel timings cost more than their matmuls.
 */
export const MEASURED_OVERHEAD: Record<string, number> = { 'collect (calibration)': 1, 'collect (held-out)': 1, 'train-predictors': 2, 'evaluate-recall': 8, plan: 1.75 };

export interface Tokens { calibration: number; heldout: number; how: string }
export interface CostEstimate {
  /** where the parameter count came from (the tensors, or config.json alone) */
  sizesFrom?: string;
  model: { layers: number; hidden: number; ffn: number; params: number; weightBytes: number };
  tokens: Tokens;
  disk: { calibration: number; heldout: number };
  memory: { weightsFloat32: number; peak: number };
  /** GFLOP per stage */
  gflop: Record<string, number>;
}

/** The costs that follow from the model's sizes, the settings and the token counts (no rate yet). */
export function estimateCosts(mc: ModelConfig, weights: { params: number; bytes: number }, cfg: EstimateConfig, tokens: Tokens): CostEstimate {
  const mlpAct = cfg.collect.recordMlpAct === 'auto' ? mc.activation !== 'relu' : cfg.collect.recordMlpAct;
  const nLayers = cfg.collect.layers === 'all' ? mc.layers : cfg.collect.layers.length;
  const perTok = activationBytesPerTokenLayer(mc, cfg.collect.dtype, mlpAct) * nLayers;
  const fwd = forwardFlopsPerToken(mc) / 1e9, fwdCollect = forwardFlopsPerToken(mc, false) / 1e9;
  const { d, ffn } = { d: mc.hidden, ffn: mc.ffn };
  const ranks = cfg.train.mlp.predictors.includes('closed-form') ? cfg.train.mlp.ranks.length : 0;
  // train: per layer, the covariance of its input and the first projection on each row, an eigendecomposition per fit
  const train = (tokens.calibration * nLayers * (2 * d * d + 2 * d * ffn) + nLayers * (ranks + 1) * 10 * d ** 3) / 1e9;
  const evalTok = Math.min(cfg.evaluate.maxTokens, tokens.heldout);
  const planOptions = cfg.plan.recalls.length + 1 + (cfg.train.heads.enabled ? cfg.plan.headFractions.length : 0); // + the trained rule
  const f32 = weights.params * 4;
  const act = cfg.collect.batchSize * cfg.collect.seqLen * (4 * d + 4 * ffn) * 4;
  const trainSet = cfg.train.mlp.maxCalibrationRows * (d + ffn) * 4 + 8 * d * d;
  return {
    model: { layers: mc.layers, hidden: d, ffn, params: weights.params, weightBytes: weights.bytes },
    tokens,
    disk: { calibration: perTok * tokens.calibration, heldout: perTok * tokens.heldout },
    memory: { weightsFloat32: f32, peak: f32 + Math.max(act, trainSet) },
    gflop: {
      'collect (calibration)': fwdCollect * tokens.calibration * nLayers / mc.layers,
      'collect (held-out)': fwdCollect * tokens.heldout * nLayers / mc.layers,
      'train-predictors': train,
      // dense, oracle and predicted perplexity, and one predicted run per point of the density sweep
      'evaluate-recall': fwd * evalTok * (3 + cfg.evaluate.densitySweep.length),
      // the search: dense plus one single-layer run per layer and option; the verification: dense and the plan
      plan: cfg.plan.enabled ? fwd * (Math.min(cfg.plan.searchTokens, tokens.heldout) * (1 + mc.layers * planOptions) + 2 * Math.min(cfg.plan.verifyTokens, tokens.heldout)) : 0,
    },
  };
}

/** the most elements of the probe's second matrix: a block of the MLP's columns stands for all of them (the rate per FLOP is the same) */
export const PROBE_MAX_ELEMENTS = 2 ** 21;

/**
 * The probe matmul [m, d] x [d, cols] at the model's MLP shape: d the width, cols the MLP's columns up to
 * PROBE_MAX_ELEMENTS / d (a 7B model's 11008 columns would make one product of the slow backends take seconds and the
 * estimate minutes), m rows for ~0.2 GFLOP per product (16 to 256).
 */
export function probeShape(mc: Pick<ModelConfig, 'hidden' | 'ffn'>): { m: number; d: number; cols: number } {
  const cols = Math.max(1, Math.min(mc.ffn, Math.floor(PROBE_MAX_ELEMENTS / mc.hidden)));
  return { m: Math.max(16, Math.min(256, Math.round(2e8 / (2 * mc.hidden * cols)))), d: mc.hidden, cols };
}

/** A backend's matmul rate (GFLOP/s) at the model's MLP shape (probeShape); median of 5 samples of >= 20 ms, after a warm-up. */
export async function measureMatmul(mc: ModelConfig): Promise<number> {
  const { m, d, cols } = probeShape(mc);
  const a = tf.randomNormal([m, d]), b = tf.randomNormal([d, cols]);
  const once = async () => { const c = tf.matMul(a, b); await c.data(); c.dispose(); }; // read asynchronously: every backend, GPUs too
  try {
    await once();
    const rates: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t = performance.now();
      let n = 0;
      do { await once(); n++; } while (performance.now() - t < 20);
      rates.push((2 * m * d * cols * n) / ((performance.now() - t) * 1e6));
    }
    return rates.sort((x, y) => x - y)[2]!;
  } finally { a.dispose(); b.dispose(); }
}

/** Calibration and held-out tokens the pipeline would collect from `data` (capped as the settings cap them). */
export function estimateTokens(model: string, cfg: { data?: EstimateConfig['data']; collect: { maxTokens?: number | undefined }; heldoutCollect: { maxTokens?: number | undefined } }): Tokens {
  const capC = (n: number) => Math.min(n, cfg.collect.maxTokens ?? Infinity);
  const capH = (n: number) => Math.min(n, cfg.heldoutCollect.maxTokens ?? cfg.collect.maxTokens ?? Infinity);
  if (cfg.data === undefined) return { calibration: capC(1e6), heldout: capH(1e5), how: 'no --data: 1M calibration and 100k held-out tokens assumed' };
  const files = typeof cfg.data === 'string' ? [cfg.data] : [cfg.data.calibration, cfg.data.heldout];
  let perByte = 0.25, how = '4 bytes per token assumed (no tokenizer.json)';
  try {
    const tok = loadTokenizer(model);
    const fd = fs.openSync(files[0]!, 'r');
    const buf = Buffer.alloc(256 << 10);
    const n = fs.readSync(fd, buf, 0, buf.length, 0);
    fs.closeSync(fd);
    let text = buf.subarray(0, n).toString('utf8');
    if (isJsonlName(files[0]!)) text = text.split('\n').slice(0, -1).map((l) => { try { return String((JSON.parse(l) as { text?: unknown }).text ?? ''); } catch { return ''; } }).join('\n');
    const ids = tok.encode(text).length;
    if (ids > 0 && text.length) { perByte = ids / Buffer.byteLength(text); how = `${(1 / perByte).toFixed(2)} bytes per token, measured on the first ${Math.round(n / 1024)} KiB of ${path.basename(files[0]!)}`; }
  } catch { /* no tokenizer: the assumption stands */ }
  const size = (f: string) => { try { return fs.statSync(f).size; } catch { return 0; } };
  const [c, h] = files.length === 1 ? [size(files[0]!) * (1 - HELDOUT_SHARE), size(files[0]!) * HELDOUT_SHARE] : [size(files[0]!), size(files[1]!)];
  return { calibration: Math.round(capC(c * perByte)), heldout: Math.round(capH(h * perByte)), how };
}

const bytes = (n: number) => n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 2 ** 10).toFixed(1)} KiB`;
const secs = (s: number) => s >= 86400 ? `${(s / 86400).toFixed(1)} days` : s >= 3600 ? `${(s / 3600).toFixed(1)} h` : s >= 60 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(1)} s`;

export interface Rate { backend: BackendName; matmulGflops: number; effectiveGflops: number }

/** Rates of the backends that initialize here (the current one is restored). */
export async function measureRates(mc: ModelConfig, workers: number, only?: BackendName): Promise<Rate[]> {
  const before = getBackend(), out: Rate[] = [];
  for (const b of only ? [only] : BACKEND_NAMES) {
    if (getBackend() !== b) try { await selectBackend(b); } catch { continue; }
    const r = await measureMatmul(mc);
    out.push({ backend: b, matmulGflops: r, effectiveGflops: 0.8 * workers * r });
  }
  if (before && getBackend() !== before) await selectBackend(before);
  return out;
}

export function estimateText(e: CostEstimate, rates: Rate[], workers: number, brief = false): string {
  const t = e.tokens;
  const lines = [
    `estimate: ${e.model.layers} layers, d ${e.model.hidden}, ffn ${e.model.ffn}, ${(e.model.params / 1e6).toFixed(1)}M parameters (${bytes(e.model.weightBytes)} on disk${e.sizesFrom?.startsWith('config.json') ? `; ${e.sizesFrom}` : ''})`,
    `  tokens: ${t.calibration.toLocaleString('en-US')} calibration, ${t.heldout.toLocaleString('en-US')} held-out (${t.how})`,
    `  disk (activations): ${bytes(e.disk.calibration)} calibration + ${bytes(e.disk.heldout)} held-out`,
    `  host memory: ${bytes(e.memory.weightsFloat32)} weights as float32 (shared by the workers), about ${bytes(e.memory.peak)} at the peak`,
  ];
  for (const r of rates) {
    const per = Object.entries(e.gflop).map(([k, g]) => [k, (g * (MEASURED_OVERHEAD[k] ?? 1)) / r.effectiveGflops] as const);
    const total = per.reduce((a, [, s]) => a + s, 0);
    lines.push(`  time on ${r.backend} (one-thread matmul ${r.matmulGflops.toFixed(1)} GFLOP/s measured at this model's MLP shape, x ${workers} worker(s) x 0.8): ${secs(total)} in all`
      + (brief ? '' : `\n    ${per.map(([k, s]) => `${k} ${secs(s)}`).join(', ')}`));
    if (r.backend === 'tensorflow') lines.push(`  GPU memory (tensorflow backend on a GPU): about ${bytes(e.memory.weightsFloat32)} for the weights`);
  }
  if (!brief) lines.push(`  (rough: each stage's matmul FLOPs at the measured rate, train x${MEASURED_OVERHEAD['train-predictors']}, evaluate x${MEASURED_OVERHEAD['evaluate-recall']}, plan x${MEASURED_OVERHEAD.plan}: their overhead over the FLOPs in the fixture's default run, docs/measurement-log.md)`);
  return lines.join('\n');
}

/** Parameters from the sizes alone (matmuls, embeddings, LM head; norms and biases are a rounding error). */
export function paramsFromConfig(mc: ModelConfig): number {
  const { hidden: d, heads: H, kvHeads: KV, headDim: hd, ffn, vocabSize: V } = mc;
  const e = mc.embedProjDim ?? d;
  const layer = 2 * d * H * hd + 2 * d * KV * hd + d * ffn * (mc.activation === 'swiglu' ? 3 : 2);
  return mc.layers * layer + V * e + (mc.tiedLmHead ? 0 : V * d) + (mc.positions === 'learned' ? (mc.maxPositions + mc.positionOffset) * d : 0) + (e !== d ? 2 * d * e : 0);
}

/**
 * The model's sizes and weights: from the checkpoint, or, for a folder holding only config.json (the estimate for a
 * model not downloaded yet), from config.json (bytes at its torch_dtype).
 */
function modelSizes(dir: string): { mc: ModelConfig; params: number; bytes: number; from: string } {
  const cfgFile = path.join(dir, 'config.json');
  const weights = ['model.safetensors', 'model.safetensors.index.json'].some((f) => fs.existsSync(path.join(dir, f)));
  if (!weights && fs.existsSync(cfgFile)) {
    const raw = JSON.parse(readInputText(cfgFile, { what: 'config', hint: 'pass --model a checkpoint folder (config.json, model.safetensors)', maxBytes: 2 ** 26 })) as Record<string, unknown>;
    const mc = normalizeConfig(raw, cfgFile);
    const dt = String(raw.torch_dtype ?? raw.dtype ?? 'float16');
    const params = paramsFromConfig(mc);
    return { mc, params, bytes: params * (dt === 'float32' ? 4 : 2), from: `config.json only (no weights in ${dir}): parameters from the sizes, ${dt}` };
  }
  const ck = openCheckpoint(dir);
  let params = 0, bytes = 0;
  for (const { info } of ck.tensors.values()) { params += info.shape.reduce((a, b) => a * b, 1); bytes += info.end - info.begin; }
  return { mc: normalizeConfig(ck.rawConfig, cfgFile), params, bytes, from: 'the checkpoint\'s tensors' };
}

/** The estimate for a pipeline config; `only`: measure that backend alone (the pipeline's own). */
export async function estimatePipeline(cfg: EstimateConfig, only?: BackendName): Promise<{ estimate: CostEstimate; rates: Rate[]; workers: number }> {
  const { mc, params, bytes: wbytes, from } = modelSizes(cfg.model);
  const workers = cfg.collect.workers || defaultWorkers();
  const estimate = { ...estimateCosts(mc, { params, bytes: wbytes }, cfg, estimateTokens(cfg.model, cfg)), sizesFrom: from };
  return { estimate, rates: await measureRates(mc, Math.min(workers, defaultWorkers()), only), workers: Math.min(workers, defaultWorkers()) };
}

export async function runEstimate(cfg: EstimateConfig, _deps: StageDeps): Promise<StageResult> {
  const r = await estimatePipeline(cfg, cfg.backend === 'auto' ? undefined : cfg.backend);
  return { text: estimateText(r.estimate, r.rates, r.workers), json: r };
}
