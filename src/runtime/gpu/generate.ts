/**
 * Greedy generation on the GPU runtime, for one prompt: the prompt prefilled by the forward pass (tfjs, as
 * src/runtime/generate.ts does), its cache copied to the GPU, then every new token chosen on the GPU (argmax) and
 * fed to the next step without a readback; the tokens come back once. The same tokens as generate() at
 * temperature 0 (test/gpu-decode.test.ts); sampling (temperature > 0) stays on the CPU runtime.
 */
import * as tf from '@tensorflow/tfjs-core';
import { forward, newCache, disposeCache, disposeOutput } from '../../model/forward.js';
import type { Model } from '../../model/model.js';
import { UserError } from '../../util/errors.js';
import { readSync } from '../../util/tfx.js';
import { eosIds, positionsLeft, type GenerateResult, type StopReason } from '../generate.js';
import { gpuDenseModes, gpuSession, type GpuModes, type GpuSessionOptions } from './session.js';

export interface GpuGenerateOptions { maxNewTokens: number; modes?: GpuModes | undefined; stopAtEos?: boolean; session?: GpuSessionOptions }

// (no 'weights': the GPU session does not count the weights it reads)
export async function generateGpu(model: Model, prompt: number[], o: GpuGenerateOptions): Promise<Omit<GenerateResult, 'weights'>> {
  const T = prompt.length, V = model.config.vocabSize;
  const room = positionsLeft(model, T);
  if (room < 1) throw new UserError(`generate: the prompt has ${T} tokens; the model has ${model.config.maxPositions} positions (max_position_embeddings)`, 'shorten the prompt');
  const maxNew = Math.min(o.maxNewTokens, room);
  let stopReason: StopReason = o.maxNewTokens > room ? 'max-positions' : 'max-tokens';
  const session = await gpuSession(model, o.modes ?? gpuDenseModes(model.config.layers), { capacity: T + maxNew + 1, ...o.session });
  try {
    let t = performance.now();
    const cache = newCache(model);
    let first: number;
    try {
      const pre = forward(model, [prompt], { cache });
      const last = readSync(() => tf.slice(pre.logits!, [0, T - 1, 0], [1, 1, V]));
      disposeOutput(pre);
      if (!last.every(Number.isFinite)) throw new UserError('generate (prompt): the model produced non-finite logits', 'the weights hold NaN/Inf: check the checkpoint');
      first = 0;
      for (let i = 1; i < V; i++) if (last[i]! > last[first]!) first = i;
      session.loadCache(cache);
    } finally { disposeCache(cache); }
    const prefillMs = performance.now() - t;
    t = performance.now();
    const tokens = [first, ...(maxNew > 1 ? await session.greedy(first, maxNew - 1) : [])];
    const decodeMs = performance.now() - t;
    const eos = new Set(eosIds(model));
    const end = o.stopAtEos === false ? -1 : tokens.findIndex((id) => eos.has(id));
    if (end >= 0) { tokens.length = end + 1; stopReason = 'eos'; }
    return { tokens: [tokens], prefillMs, decodeMs, decodeSteps: maxNew - 1, stopReason, maxPositions: model.config.maxPositions, counts: session.counts };
  } finally { session.dispose(); }
}
