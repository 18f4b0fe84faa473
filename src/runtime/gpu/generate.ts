/**
 * Greedy generation on the GPU runtime, for one prompt: the prompt prefilled by the forward pass (tfjs, as
 * src/runtime/generate.ts does), its cache copied to the GPU, then every new token chosen on the GPU (argmax) and
 * fed to the next step without a readback; the tokens come back once. The same tokens as generate() at
 * temperature 0 (test/gpu-decode.test.ts); sampling (temperature > 0) stays on the CPU runtime.
 * With `versus` (generate's dense comparison) a second session of those modes over the same weights and cache
 * decodes the same steps, timed by alternatingGreedy (a full-length warm-up of each, then the modes' run, versus,
 * versus, the modes' run), so neither is favoured by running first or warm; each time is the mean of its two rounds.
 */
import * as tf from '@tensorflow/tfjs-core';
import { forward, newCache, disposeCache, disposeOutput } from '../../model/forward.js';
import type { Model } from '../../model/model.js';
import { UserError } from '../../util/errors.js';
import { readSync } from '../../util/tfx.js';
import { eosIds, positionsLeft, type GenerateResult, type StopReason } from '../generate.js';
import { getGpu } from './device.js';
import { GpuDecodeSession, gpuDenseModes, type GpuModes, type GpuSessionOptions } from './session.js';
import { gpuWeightsFromModel } from './weights.js';

/**
 * Sessions (each at the same position) decoding the same `steps` greedy tokens after `first`, timed in turn:
 * first a warm-up of each at the full length (the host's JIT and the GPU's clocks settled: a warm-up of 8 steps
 * left the first timed round ~5% slow on the H200, and in ABBA order that round is the first session's), then
 * `groups` groups in ABBA order (A B B A, A B B A, ...: a drift over time hits both alike); each session rewound after
 * every run. Returns each session's ms per run, in run order, and the tokens of its first timed run.
 * (generate --runtime gpu times its plan against dense with it, one group; the plan stage's GPU check too: what
 * `generate` runs is what the plan is judged by.)
 */
export async function alternatingGreedy(sessions: GpuDecodeSession[], first: number, steps: number, groups: number): Promise<{ ms: number[][]; tokens: number[][] }> {
  if (sessions.length !== 2) throw new Error(`alternatingGreedy: ${sessions.length} sessions (two: A and B)`);
  const ms: number[][] = [[], []], tokens: number[][] = [[], []];
  for (const s of sessions) { await s.greedy(first, steps); s.rewind(steps); }
  for (let g = 0; g < groups; g++)
    for (const k of [0, 1, 1, 0]) {
      const s = sessions[k]!, t = performance.now(), got = await s.greedy(first, steps);
      ms[k]!.push(performance.now() - t);
      if (!tokens[k]!.length) tokens[k] = got;
      s.rewind(steps);
    }
  return { ms, tokens };
}

export interface GpuGenerateOptions { maxNewTokens: number; modes?: GpuModes | undefined; stopAtEos?: boolean; session?: GpuSessionOptions; versus?: GpuModes | undefined }
/** versusDecodeMs, versusTokens: the `versus` session's (its tokens are not cut at an end-of-sequence token) */
export type GpuGenerateResult = Omit<GenerateResult, 'weights'> & { versusDecodeMs?: number; versusTokens?: number[] };

// (no 'weights': the GPU session does not count the weights it reads)
export async function generateGpu(model: Model, prompt: number[], o: GpuGenerateOptions): Promise<GpuGenerateResult> {
  const T = prompt.length, V = model.config.vocabSize;
  const room = positionsLeft(model, T);
  if (room < 1) throw new UserError(`generate: the prompt has ${T} tokens; the model has ${model.config.maxPositions} positions (max_position_embeddings)`, 'shorten the prompt');
  const maxNew = Math.min(o.maxNewTokens, room);
  let stopReason: StopReason = o.maxNewTokens > room ? 'max-positions' : 'max-tokens';
  const gpu = await getGpu(), w = gpuWeightsFromModel(gpu, model), sessions: GpuDecodeSession[] = [];
  try {
    for (const m of [o.modes ?? gpuDenseModes(model.config.layers), ...(o.versus ? [o.versus] : [])]) sessions.push(new GpuDecodeSession(gpu, w, m, { capacity: T + maxNew + 1, ...o.session }));
    const session = sessions[0]!;
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
      for (const s of sessions) s.loadCache(cache);
    } finally { disposeCache(cache); }
    const prefillMs = performance.now() - t, steps = maxNew - 1;
    const runs: number[][] = [[first], [first]], ms = [0, 0];
    // the counts of the modes' runs (each run the same steps: the mean of them is one run's)
    let counts = { ...session.counts };
    if (steps > 0) {
      const c0 = { ...session.counts };
      let runsOf0 = 1;
      if (o.versus) {
        const r = await alternatingGreedy(sessions, first, steps, 1);
        r.ms.forEach((x, k) => { ms[k] = x.reduce((a, b) => a + b, 0); runs[k]!.push(...r.tokens[k]!); });
        runsOf0 = 3; // its warm-up and two timed runs
      } else {
        t = performance.now();
        runs[0]!.push(...await session.greedy(first, steps));
        ms[0] = performance.now() - t;
        session.rewind(steps);
      }
      const z = session.counts, per = (a: number, b: number) => Math.round((a - b) / runsOf0);
      counts = { mlpSelected: per(z.mlpSelected, c0.mlpSelected), mlpTotal: per(z.mlpTotal, c0.mlpTotal),
        headsSelected: per(z.headsSelected, c0.headsSelected), headsTotal: per(z.headsTotal, c0.headsTotal) };
    }
    const tokens = runs[0]!, decodeMs = ms[0]! / (o.versus ? 2 : 1);
    const eos = new Set(eosIds(model));
    const end = o.stopAtEos === false ? -1 : tokens.findIndex((id) => eos.has(id));
    if (end >= 0) { tokens.length = end + 1; stopReason = 'eos'; }
    return { tokens: [tokens], prefillMs, decodeMs, decodeSteps: steps, stopReason, maxPositions: model.config.maxPositions, counts,
      ...(o.versus ? { versusDecodeMs: ms[1]! / 2, versusTokens: runs[1]! } : {}) };
  } finally { for (const s of sessions) s.dispose(); w.dispose(); }
}
