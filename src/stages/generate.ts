import type { StageResult } from './types.js';
import { loadBundlePredictors } from '../bundle/bundle.js';
import { loadModel, type Model } from '../model/model.js';
import { decodeModes, planInputMajor, type BuiltModes } from '../runtime/plan.js';
import { generate, type StopReason } from '../runtime/generate.js';
import { warmDecode, zeroCounts, type DecodeCounts } from '../runtime/decoder.js';
import { generateGpu } from '../runtime/gpu/generate.js';
import { gpuDenseModes, gpuPlanModes } from '../runtime/gpu/session.js';
import type { RuntimePlan } from '../runtime/plan.js';
import type { LoadedPredictors } from '../predictors/hooks.js';
import { loadTokenizer } from '../tokenizer.js';
import { UserError } from '../util/errors.js';
import { fingerprintCheckpoint } from '../checkpoint/checkpoint.js';
import type { GenerateConfig } from '../config/schemas.js';
import type { StageDeps } from '../util/progress.js';

/** Flags validated by generateSchema (src/config/schemas.ts). */
export async function runGenerate(o: GenerateConfig, deps: StageDeps): Promise<StageResult> {
  fingerprintCheckpoint(o.model); // the checkpoint first, as collect checks it (a hub id, a .bin-only folder: the same message)
  const tok = loadTokenizer(o.model);
  const preds = o.bundle ? loadBundlePredictors(o.bundle, o.model) : null;
  // the bundle's plan when it has one, else each layer's trained rule; no bundle: every layer dense
  const plan = preds?.bundle.plan ?? null;
  let model: Model | null = null, built: BuiltModes | null = null;
  try {
    // the plan's input-threshold sites read their matrices input-major (one row per input); the CPU runtime loads the
    // decode rows only (the prompt prefilled by dense decode steps: seconds and about the rows' memory, where the
    // forward pass's tensors took a TinyLlama-width model 16-17 s and 5 GiB); the GPU runtime prefills by the forward pass
    model = loadModel(o.model, { forward: o.runtime === 'gpu', decode: { dtype: o.dtype, threads: o.threads, kernels: o.kernels, inputMajor: planInputMajor(plan, { gated: Boolean(preds?.bundle.model.architecture.gated) }) } });
    if (o.runtime !== 'gpu') warmDecode(model); // V8's compiled step code before the first token (decoder.ts)
    built = decodeModes(model.config, preds, plan);
    const bos = tok.bos !== undefined ? tok.bos : model.config.bosTokenId; // what transformers' tokenizer prepends
    const prompts = o.prompt.map((p) => [...(bos !== null ? [bos] : []), ...tok.encode(p)]);
    const P = model.config.maxPositions;
    prompts.forEach((p, i) => {
      if (p.length === 0) throw new UserError(`prompt ${i + 1} is empty and this tokenizer adds no BOS token: there is no token to start from`, 'give a prompt with some text');
      if (p.length >= P) throw new UserError(`prompt ${i + 1} has ${p.length} tokens; the model has ${P} positions (max_position_embeddings), so nothing can be generated after it`, 'shorten the prompt');
    });
    if (o.runtime === 'gpu') return await generateOnGpu(o, deps, model, prompts, preds, plan, tok.decode.bind(tok));
    const r = generate(model, prompts, { maxNewTokens: o.maxTokens, temperature: o.temperature, topK: o.topK, seed: o.seed, modes: built.modes });
    const sel = r.counts;
    const notes = [...pricedNote(plan, 'cpu'), ...(r.stopReason === 'max-positions'
      ? [`stopped after ${r.tokens[0]!.length} of ${o.maxTokens} tokens: the model has ${r.maxPositions} positions (max_position_embeddings) and the ${o.prompt.length > 1 ? 'longest prompt' : 'prompt'} uses ${Math.max(...prompts.map((p) => p.length))}; the text below is complete up to there`]
      : [])];
    const texts = r.tokens.map((t) => tok.decode(t, { skipSpecial: true }));
    const rate = (x: typeof r) => (x.decodeSteps * prompts.length) / Math.max(1e-3, x.decodeMs / 1000);
    const tps = rate(r);
    // with a bundle: the same prompts and steps dense (greedy), after the sparse run (so dense runs warm: no flattering of the sparse figure)
    let denseTps: number | null = null;
    if (preds && r.decodeSteps > 0) {
      const dense = decodeModes(model.config, null, null);
      try { denseTps = rate(generate(model, prompts, { maxNewTokens: r.decodeSteps + 1, temperature: 0, topK: 0, seed: 0, stopAtEos: false, modes: dense.modes })); } finally { dense.dispose(); }
    }
    const mlpDensity = sel.mlpSelected / Math.max(1, sel.mlpTotal), headDensity = sel.headsSelected / Math.max(1, sel.headsTotal);
    const weightShare = r.weights.weightsRead / Math.max(1, r.weights.weightsTotal);
    deps.log(`generate: ${preds ? (plan ? 'sparse (bundle plan)' : 'sparse (bundle rules)') : 'dense'}, ${model.decode!.dtype} weights, ${model.decode!.kernel} kernels on ${model.decode!.threads} thread(s), ${r.decodeSteps} decode steps, ${tps.toFixed(1)} tokens/s` +
      (denseTps !== null ? ` (dense, the same prompts and steps, measured after it: ${denseTps.toFixed(1)} tokens/s; ${(tps / denseTps).toFixed(2)}x)` : '') +
      (preds ? `, MLP density ${(mlpDensity * 100).toFixed(1)}%, heads ${(headDensity * 100).toFixed(1)}%, decoder-layer weights read ${(weightShare * 100).toFixed(1)}%` : ''));
    return {
      text: o.prompt.map((p, i) => `${p}${texts[i]}`).join('\n---\n'),
      notes,
      json: { mode: preds ? 'sparse' : 'dense', prompts: o.prompt, completions: texts, tokens: r.tokens, promptTokens: prompts.map((p) => p.length), stopReason: r.stopReason, decodeTokensPerSecond: tps, denseTokensPerSecond: denseTps, mlpDensity: preds ? mlpDensity : 1, headDensity: preds ? headDensity : 1,
        weightShare: preds ? weightShare : 1, plan: Boolean(plan) },
    };
  } finally {
    built?.dispose();
    preds?.dispose();
    model?.dispose();
  }
}

/** a note when the plan was priced for another runtime than the one running it (plans made before plans said so: cpu) */
function pricedNote(plan: RuntimePlan | null, runtime: 'cpu' | 'gpu'): string[] {
  const priced = plan?.runtime ?? 'cpu';
  return plan && priced !== runtime ? [`the bundle's plan was priced for the ${priced} runtime's kernels and runs here on the ${runtime} runtime: what it skips may not pay off here`] : [];
}

/**
 * --runtime gpu: each prompt greedily on the GPU decode runtime (src/runtime/gpu: prefill by the forward pass, then
 * the tokens chosen on the GPU), the bundle's plan run there (predictors included); with a bundle, the same prompts
 * and steps dense on the GPU, timed in alternating rounds with the plan's (generateGpu's `versus`).
 */
async function generateOnGpu(o: GenerateConfig, deps: StageDeps, model: Model, prompts: number[][], preds: LoadedPredictors | null, plan: RuntimePlan | null,
  decode: (t: number[], o: { skipSpecial: boolean }) => string): Promise<StageResult> {
  if (o.temperature > 0) throw new UserError(`generate --runtime gpu: temperature ${o.temperature}: the GPU runtime decodes greedily`, 'use --temperature 0, or --runtime cpu to sample');
  const modes = gpuPlanModes(model.config, preds, plan);
  const tokens: number[][] = [], counts = zeroCounts();
  let ms = 0, steps = 0, denseMs = 0, stop: StopReason = 'max-tokens';
  for (const p of prompts) {
    // with a bundle, dense over the same weights and cache, timed in rounds alternating with the plan's
    const r = await generateGpu(model, p, { maxNewTokens: o.maxTokens, modes, versus: preds ? gpuDenseModes(model.config.layers) : undefined });
    tokens.push(r.tokens[0]!); ms += r.decodeMs; steps += r.decodeSteps; denseMs += r.versusDecodeMs ?? 0;
    if (r.stopReason !== 'max-tokens') stop = r.stopReason;
    for (const k of Object.keys(counts) as (keyof DecodeCounts)[]) counts[k] += r.counts[k];
  }
  const tps = steps / Math.max(1e-3, ms / 1000), denseTps = preds && steps > 0 ? steps / Math.max(1e-3, denseMs / 1000) : null;
  const mlpDensity = counts.mlpSelected / Math.max(1, counts.mlpTotal), headDensity = counts.headsSelected / Math.max(1, counts.headsTotal);
  deps.log(`generate (GPU runtime): ${preds ? (plan ? 'sparse (bundle plan)' : 'sparse (bundle rules)') : 'dense'}, ${steps} decode steps, ${tps.toFixed(1)} tokens/s` +
    (denseTps !== null ? ` (dense on the GPU, the same prompts and steps, timed in rounds alternating with it: ${denseTps.toFixed(1)} tokens/s; ${(tps / denseTps).toFixed(2)}x)` : '') +
    (preds ? `, MLP density ${(mlpDensity * 100).toFixed(1)}%, heads ${(headDensity * 100).toFixed(1)}%` : ''));
  const texts = tokens.map((t) => decode(t, { skipSpecial: true }));
  const notes = [...pricedNote(plan, 'gpu'), ...(stop === 'max-positions' ? [`stopped early: the model has ${model.config.maxPositions} positions (max_position_embeddings); the text below is complete up to there`] : [])];
  return {
    text: o.prompt.map((p, i) => `${p}${texts[i]}`).join('\n---\n'),
    notes,
    json: { mode: preds ? 'sparse' : 'dense', runtime: 'gpu', prompts: o.prompt, completions: texts, tokens, promptTokens: prompts.map((p) => p.length), stopReason: stop, decodeTokensPerSecond: tps, denseTokensPerSecond: denseTps,
      mlpDensity: preds ? mlpDensity : 1, headDensity: preds ? headDensity : 1, plan: Boolean(plan), planRuntime: plan ? plan.runtime ?? 'cpu' : null },
  };
}
