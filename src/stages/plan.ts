/**
 * plan: from a perplexity budget to the fastest per-layer runtime plan.
 *
 * 1. Options per layer. MLP: dense; lossless (ReLU: exactly dense, only the nonzero rows of the second projection
 *    read); predicted with the layer's predictor under a threshold calibrated on held-out activations to each of
 *    `recalls`. Heads (where a head predictor exists): every head, or the top share by the predictor's score.
 * 2. Cost of each option: the decode runtime's own kernels timed at this model's shapes (src/runtime/costs.ts,
 *    cached per shape) at the option's density, the predictor's own call included; `runtime` says whose kernels:
 *    the CPU's (wasm rows) or the GPU decode runtime's (WGSL, on this machine's WebGPU adapter; then only what that
 *    runtime runs is offered, and the verification's timing runs there too).
 * 3. Quality of each option: with only that layer (and site) changed, the batched forward pass's mean KL divergence
 *    from the dense model's next-token distributions on the search text, as exp(KL) - 1 (the perplexity increase it
 *    implies when the model's distribution is the text's). A difference of perplexities on a few thousand tokens is
 *    too noisy for the small changes one site makes (it is often negative); the KL divergence is positive and its
 *    noise shrinks with the change.
 * 4. Search: start from the cheapest lossless plan; repeatedly take the move with the most milliseconds saved per
 *    unit of estimated increase (TEAL-like greedy); after each move the whole plan's perplexity on the search text is
 *    measured (batched forward pass; single-layer increases do not add up), and a move that takes it over `safety` x
 *    budget is undone and not tried again.
 * 5. Verification: the runtime itself decodes held-out text the search did not see, token by token, dense and with
 *    the plan; while the measured increase exceeds the budget, the last move is undone and the plan re-verified.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { readAsync } from '../util/tfx.js';
import type { StageResult } from './types.js';
import { VERSION } from '../version.js';
import type { PlanConfig } from '../config/schemas.js';
import { iterateLayer, readManifest } from '../activations/dataset.js';
import { fingerprintCheckpoint, sameFingerprint } from '../checkpoint/checkpoint.js';
import { loadModel, type Model } from '../model/model.js';
import { disposeOutput, forward, type SparsityHooks } from '../model/forward.js';
import { thresholdForRecall, type SelectionRule } from '../predictors/metrics.js';
import { labelsFor } from '../predictors/labels.js';
import { loadPredictors, ruleMask, siteScores, type LoadedPredictors, type LoadedSite } from '../predictors/hooks.js';
import { hasLowRankWeights } from '../predictors/store.js';
import { ruleText } from '../predictors/fit-mlp.js';
import { mlpInput, readMlpSite } from '../predictors/mlp-site.js';
import { checkPredictorsUnchanged, predictorsContentHash } from '../predictors/content-hash.js';
import { heldoutSequences } from '../eval/heldout.js';
import { ppl } from '../eval/perplexity.js';
import { frontierSpec, specToSvg } from '../eval/plots.js';
import { decodeNll } from '../runtime/generate.js';
import { decodeModes, PLAN_FORMAT_VERSION, planFileSchema, planInputMajor, readPlanFile, siteMasks, sitePicker, type InputSitePlan, type LayerPlan, type PlanFile, type RuntimePlan } from '../runtime/plan.js';
import { alternatingStepMs, gpuAlternatingStepMs, gpuKernelCosts, headSavingMs, kernelCosts, mlpMs, siteMs, type CostModel, type SiteCosts } from '../runtime/costs.js';
import { gpuDenseModes, gpuPlanModes } from '../runtime/gpu/session.js';
import { denseModes, inputMajorNames, type WeightCounts, type LayerInputs } from '../runtime/decoder.js';
import { calibrateSites, thresholdAt, type SiteCalibration } from '../runtime/calibrate.js';
import { sitesTable, type SitePoint } from '../runtime/sites-report.js';
import { isPretokenized, packSequences, readDocuments } from '../activations/data.js';
import { loadTokenizer } from '../tokenizer.js';
import { createArena } from '../model/kernels/wasm/kernels.js';
import { beginOutput, writeOutput } from '../util/outdir.js';
import { UserError } from '../util/errors.js';
import { sha256, sha256File, writeFileAtomic } from '../util/fsx.js';
import { recordedCurrent, writeRecord, type Currency, type StageRecord } from './current.js';
import { z } from 'zod';
import { writeArtifact } from '../util/json-artifact.js';
import { sealed } from '../util/seal.js';
import type { StageDeps } from '../util/progress.js';

type MlpOption = { mode: 'dense' | 'lossless' } | { mode: 'predicted'; rule: SelectionRule; recall: number } | { mode: 'gate-threshold'; threshold: number; sparsity: number }
  | { mode: 'down-threshold'; site: InputSitePlan };
type HeadOption = { mode: 'dense' } | { mode: 'predicted'; rule: SelectionRule };
type InputOption = { mode: 'dense' } | InputSitePlan;
interface Option<T> { what: T; label: string; density: number; ms: number; dppl: number }
/**
 * per layer, each site's options: mlp (ms of the whole MLP), heads and the input sites attn / o / mlpIn (ms: the
 * change from dense, negative = saved); the down input's threshold is an MLP option (it changes what the MLP reads)
 */
interface LayerOptions { mlp: Option<MlpOption>[]; heads: Option<HeadOption>[]; attn: Option<InputOption>[]; o: Option<InputOption>[]; mlpIn: Option<InputOption>[] }
type Site = 'mlp' | 'heads' | 'attn' | 'o' | 'mlpIn';
const SITES: readonly Site[] = ['mlp', 'heads', 'attn', 'o', 'mlpIn'];
const noSites = (): Pick<LayerOptions, 'attn' | 'o' | 'mlpIn'> => ({ attn: [denseInput()], o: [denseInput()], mlpIn: [denseInput()] });
const denseInput = (): Option<InputOption> => ({ what: { mode: 'dense' }, label: 'every input', density: 1, ms: 0, dppl: 0 });

const pct = (x: number, d = 2) => `${(100 * x).toFixed(d)}%`;
/** the single options' KL divergences are measured on the first this many predicted tokens of the search text (their noise is
 * small; the whole plan's perplexity, after each move, on all of it) */
const SINGLE_TOKENS = 2048;
/** the least perplexity increase a lossy option is charged (0.01%): below what the search text can resolve */
const NOISE_FLOOR = 1e-4;

/** Per-recall thresholds and their densities for one MLP site, from held-out activations (at most `rows` rows). */
async function calibrateMlp(dir: string, m: ReturnType<typeof readManifest>, layer: number, site: LoadedSite, model: string, recalls: number[],
    rows: number): Promise<{ trueDensity: number; options: { recall: number; value: number; density: number }[] }> {
  const F = m.dims.ffn, d = m.dims.hidden;
  const ms = readMlpSite(model, m.model.config, layer);
  const pos: number[] = [], sample: number[] = [];
  let seen = 0, positives = 0;
  for (const b of iterateLayer(dir, m, layer, ['x_attn', 'x_mlp', ...(site.entry.label.kind === 'active' ? ['mlp_active'] : ['mlp_act'])])) {
    const n = Math.min(b.rows, rows - seen);
    if (n <= 0) break;
    const h = mlpInput(ms, b.xMlp, b.rows);
    const x = site.entry.input === 'h_mlp' ? h : site.entry.input === 'x_mlp' ? b.xMlp : b.xAttn;
    const s = await readAsync(() => siteScores(site, tf.tensor2d(x.subarray(0, n * d), [n, d])));
    const y = labelsFor('mlp', site.entry.label, F, b);
    for (let i = 0; i < n * F; i++) { if (y[i]) { pos.push(s[i]!); positives++; } if (i % 4 === 0) sample.push(s[i]!); }
    seen += n;
  }
  if (!seen) throw new UserError(`${dir}: layer ${layer} has no rows`, 'collect held-out activations with `dejavu collect-activations`');
  const sorted = Float32Array.from(sample).sort();
  const densityAt = (v: number) => { // share of the sampled scores >= v (binary search in the sorted sample)
    let lo = 0, hi = sorted.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (sorted[mid]! < v) lo = mid + 1; else hi = mid; }
    return (sorted.length - lo) / sorted.length;
  };
  const P = Float32Array.from(pos);
  return { trueDensity: positives / (seen * F), options: recalls.map((r) => { const value = thresholdForRecall(P, r); return { recall: r, value, density: densityAt(value) }; }) };
}

/** one layer's options as the forward pass runs them (absent: dense; lossless is dense in the forward pass: exact) */
type LayerPick = Partial<{ mlp: MlpOption; heads: HeadOption; attn: InputOption; o: InputOption; mlpIn: InputOption }> | undefined;

/** hooks running per-layer options in the batched forward pass: predicted MLPs / heads masked by their rules, thresholds by siteMasks */
function optionHooks(x: Ctx, picks: LayerPick[]): SparsityHooks {
  const flat = (v: tf.Tensor) => tf.reshape(v, [-1, v.shape[v.shape.length - 1]!]) as tf.Tensor2D;
  const mask = (site: LoadedSite, rule: SelectionRule, v: tf.Tensor) => {
    const [B, T] = v.shape as [number, number], z = siteScores(site, flat(v));
    return { mask: tf.reshape(ruleMask(z, rule), [B, T, z.shape[1]]) };
  };
  const input = (o: InputOption | undefined) => (o && o.mode !== 'dense' ? { t: o.threshold, wina: o.score === 'wina' } : undefined);
  const sites = picks.map((p) => {
    const m = p?.mlp;
    const inputs: LayerInputs = { attn: input(p?.attn), o: input(p?.o), mlp: input(p?.mlpIn), down: m?.mode === 'down-threshold' ? input(m.site) : undefined };
    return { inputs, gate: m?.mode === 'gate-threshold' ? m.threshold : undefined };
  });
  return {
    mlp: (i, c) => {
      const m = picks[i]?.mlp, site = x.preds.mlp.get(i);
      if (m?.mode !== 'predicted') return null;
      if (!site) throw new Error(`plan: layer ${i} has a predicted MLP option but no predictor`);
      return mask(site, m.rule, site.entry.input === 'h_mlp' ? c.hMlp : site.entry.input === 'x_mlp' ? c.xMlp : c.xAttn);
    },
    heads: (i, c) => {
      const h = picks[i]?.heads, site = x.preds.heads.get(i);
      if (h?.mode !== 'predicted') return null;
      if (!site) throw new Error(`plan: layer ${i} has a head option but no predictor`);
      return mask(site, h.rule, site.sourceLayerOffset === -1 ? c.xAttnPrev : c.xAttn);
    },
    ...(sites.some((l) => l.gate !== undefined || Object.values(l.inputs).some(Boolean)) ? { sites: siteMasks(x.model.config, sites, x.sites?.cal.norms ?? []) } : {}),
  };
}

/** the search text and the dense model's next-token log-probabilities on it (per batch of sequences, kept until disposed) */
interface SearchText { seqs: number[][]; batch: number; logp: tf.Tensor[]; /** dense NLL per batch */ nll: number[]; densePpl: number; dispose(): void }

async function searchText(model: Model, seqs: number[][], batch: number): Promise<SearchText> {
  const logp: tf.Tensor[] = [], nlls: number[] = [];
  let nll = 0, count = 0;
  try {
    for (let i = 0; i < seqs.length; i += batch) {
      const b = seqs.slice(i, i + batch), out = forward(model, b, { capture: { logits: true } });
      try { logp.push(tf.keep(tf.tidy(() => tf.logSoftmax(out.logits!, -1)))); } finally { disposeOutput(out); }
      const r = await tokenNll(logp[logp.length - 1]!, b); nll += r.nll; count += r.count; nlls.push(r.nll);
    }
  } catch (e) { for (const t of logp) t.dispose(); throw e; }
  return { seqs, batch, logp, nll: nlls, densePpl: ppl({ nll, count }), dispose: () => { for (const t of logp) t.dispose(); } };
}

/** next-token NLL summed over a batch's predictions, from its log-probabilities [B, T, V] */
async function tokenNll(lp: tf.Tensor, seqs: number[][]): Promise<{ nll: number; count: number }> {
  const [B, T, V] = lp.shape as [number, number, number], idx: number[] = [];
  for (let b = 0; b < B; b++) for (let t = 0; t < T - 1; t++) idx.push((b * T + t) * V + seqs[b]![t + 1]!);
  return { nll: -(await readAsync(() => tf.sum(tf.gather(tf.reshape(lp, [-1]), tf.tensor1d(idx, 'int32')))))[0]!, count: idx.length };
}

/**
 * The search text under `hooks`: kl = exp(mean KL(dense || hooked)) - 1 over its next-token predictions (the estimate of
 * a single option: positive, low noise) and pplIncrease = its perplexity over dense - 1 (what the budget counts).
 */
async function measureOn(model: Model, text: SearchText, hooks: SparsityHooks, maxTokens = Infinity): Promise<{ kl: number; pplIncrease: number }> {
  let kl = 0, nll = 0, count = 0, dense = 0;
  for (let i = 0, k = 0; i < text.seqs.length && count < maxTokens; i += text.batch, k++) {
    const b = text.seqs.slice(i, i + text.batch), ref = text.logp[k]!, T = b[0]!.length;
    const out = forward(model, b, { capture: { logits: true }, sparsity: hooks });
    try {
      const lp = tf.keep(tf.tidy(() => tf.logSoftmax(out.logits!, -1)));
      try {
        // KL over the predicted positions (the last position predicts no token of the text)
        kl += (await readAsync(() => { const p = tf.slice(ref, [0, 0, 0], [-1, T - 1, -1]); return tf.sum(tf.mul(tf.exp(p), tf.sub(p, tf.slice(lp, [0, 0, 0], [-1, T - 1, -1])))); }))[0]!;
        const r = await tokenNll(lp, b); nll += r.nll; count += r.count; dense += text.nll[k]!;
      } finally { lp.dispose(); }
    } finally { disposeOutput(out); }
  }
  return { kl: Math.expm1(Math.max(0, kl / count)), pplIncrease: ppl({ nll, count }) / ppl({ nll: dense, count }) - 1 };
}

/** The plan stage's shared inputs. */
interface Ctx { cfg: PlanConfig; deps: StageDeps; model: Model; preds: LoadedPredictors; m: ReturnType<typeof readManifest>; costs: CostModel; dppl?: PlanDppl;
  /** the input sites (cfg.sites): the model with every site's matrices input-major, the calibrated histograms, the sites' kernel costs */
  sites?: { model: Model; cal: SiteCalibration; costs: SiteCosts } }
/** issue 26: a shard measures the single-layer perplexity increases of layers i, i+n, ... and records them by
 * "layer|option"; the merge replays them (everything else, costs included, it computes itself) */
type PlanDppl = { shard: { index: number; count: number }; record: Record<string, number> } | { replay: Record<string, number> };
/** plan.json of a plan shard (sealed) */
export const planShardSchema = z.looseObject({
  kind: z.literal('dejavu-plan-shard'), toolVersion: z.string(), run: z.string(), config: z.record(z.string(), z.unknown()),
  shard: z.looseObject({ index: z.number().int().min(0), count: z.number().int().positive() }), dppl: z.record(z.string(), z.number()), sealSha256: z.string(),
});

/** the held-out text as sequences (checked against the activations manifest): the search's part and, after it, the verification's part (disjoint) */
async function heldoutText(cfg: PlanConfig, model: Model, m: ReturnType<typeof readManifest>): Promise<{ search: number[][]; verify: number[][] }> {
  const seqs = await heldoutSequences({ activations: cfg.activations, manifest: m, data: cfg.data, model: cfg.model, config: model.config, seqLen: cfg.seqLen,
    maxTokens: cfg.searchTokens + cfg.verifyTokens, stage: 'plan' });
  const nSearch = Math.min(Math.ceil(cfg.searchTokens / cfg.seqLen), Math.floor(seqs.length / 2));
  const search = seqs.slice(0, nSearch), verify = seqs.slice(nSearch);
  if (!search.length || !verify.length)
    throw new UserError(`${cfg.data ?? m.data.file} holds ${seqs.length} sequences of ${cfg.seqLen} tokens: the plan needs at least 2 (one to search, one to verify)`,
      'pass more held-out text (--data) or a smaller --set seqLen');
  return { search, verify };
}

/** Every layer's options with their cost (cost model) and single-layer perplexity increase (search text). */
async function measureOptions(x: Ctx, text: SearchText): Promise<{ options: LayerOptions[]; densePpl: number }> {
  const { cfg, model, preds, m, costs } = x, c = model.config, sc = costs.shape;
  const arena = createArena();
  const probe = Float32Array.from({ length: c.hidden }, (_, i) => Math.sin(i * 0.37));
  const predMs = (site: LoadedSite, W: number, rule: SelectionRule) => {
    const pick = sitePicker(site, rule, W, arena);
    return costs.predictorMs(`d${c.hidden}|r${site.host!.r}|out${W}|${site.host!.hiddenActivation}|${site.hostUp ? 'swiglu' : 'linear'}|${rule.kind}`, { run: () => pick(probe), site, rule, kind: W === c.ffn ? 'mlp' : 'heads' });
  };
  // the GPU runtime runs no gated predictors (|act(gate) · up| scores) or gate-threshold mode: not offered when priced for it
  const gpu = cfg.runtime === 'gpu';
  const bar = x.deps.progress('plan: options', c.layers);
  const densePpl = text.densePpl;
  const dp = x.dppl;
  let layer = 0;
  /** the single-layer estimate of an option (layer `layer`): exp(KL) - 1 on the search text */
  const increase = async (pick: NonNullable<LayerPick>, label: string) => {
    const key = `${layer}|${label}`;
    if (dp && 'replay' in dp) {
      if (!(key in dp.replay)) throw new UserError(`the plan shards hold no single-layer perplexity for layer ${layer}, ${label}`, 'merge the shards of one plan run');
      return dp.replay[key]!;
    }
    const v = (await measureOn(model, text, optionHooks(x, Array.from({ length: c.layers }, (_, j) => (j === layer ? pick : undefined))), SINGLE_TOKENS)).kl;
    if (dp) dp.record[key] = v;
    return v;
  };
  const st = x.sites;
  const options: LayerOptions[] = [];
  try {
    for (let i = 0; i < c.layers; i++) {
      layer = i;
      if (dp && 'shard' in dp && i % dp.shard.count !== dp.shard.index) { options.push({ mlp: [], heads: [], attn: [], o: [], mlpIn: [] }); continue; } // another shard's layer
      const ms = preds.mlp.get(i), hs = preds.heads.get(i);
      const mlp: Option<MlpOption>[] = [{ what: { mode: 'dense' }, label: 'dense', density: 1, ms: mlpMs(sc, 'dense', 1), dppl: 0 }];
      let trueDensity = NaN;
      if (ms && hasLowRankWeights(ms.entry.predictor) && !(gpu && (ms.hostUp || c.gated))) {
        const cal = await calibrateMlp(cfg.activations, m, i, ms, cfg.model, cfg.recalls, cfg.calibrationRows);
        trueDensity = cal.trueDensity;
        for (const o of cal.options.filter((q) => Number.isFinite(q.value))) {
          const rule: SelectionRule = { kind: 'threshold', value: o.value }, what: MlpOption = { mode: 'predicted', rule, recall: o.recall };
          const label = `predicted r${ms.entry.rank} @ recall ${o.recall}`;
          mlp.push({ what, label, density: o.density, ms: mlpMs(sc, 'predicted', o.density, await predMs(ms, c.ffn, rule)), dppl: await increase({ mlp: what }, label) });
        }
        // the rule train-predictors calibrated (a per-token top-k or a threshold), at its validation recall and density
        const tr = ms.entry.rule;
        if (tr && (tr.kind === 'topk' ? tr.k > 0 && tr.k < c.ffn : Number.isFinite(tr.value))) {
          const v = ms.entry.validation, label = `predicted r${ms.entry.rank}, trained rule ${ruleText(tr)} (recall ${v.recall.toFixed(3)})`, what: MlpOption = { mode: 'predicted', rule: tr, recall: v.recall };
          mlp.push({ what, label, density: v.predictedDensity, ms: mlpMs(sc, 'predicted', v.predictedDensity, await predMs(ms, c.ffn, tr)), dppl: await increase({ mlp: what }, label) });
        }
      }
      if (c.activation === 'relu') {
        if (!Number.isFinite(trueDensity)) trueDensity = activeDensity(cfg.activations, m, i, cfg.calibrationRows);
        mlp.push({ what: { mode: 'lossless' }, label: 'lossless', density: trueDensity, ms: mlpMs(sc, 'lossless', trueDensity), dppl: 0 });
      }
      const heads: Option<HeadOption>[] = [{ what: { mode: 'dense' }, label: 'all heads', density: 1, ms: 0, dppl: 0 }];
      for (const k of hs?.host ? [...new Set(cfg.headFractions.map((f) => Math.max(1, Math.round(f * c.heads))))].filter((k) => k < c.heads) : []) {
        const rule: SelectionRule = { kind: 'topk', k }, what: HeadOption = { mode: 'predicted', rule };
        heads.push({ what, label: `top ${k}/${c.heads} heads`, density: k / c.heads, ms: (await predMs(hs!, c.heads, rule)) - headSavingMs(sc, k, c.heads), dppl: await increase({ heads: what }, `top ${k}/${c.heads} heads`) });
      }
      const sites = noSites();
      if (st) {
        const sc2 = st.costs, scores = cfg.siteScore === 'both' ? (['abs', 'wina'] as const) : [cfg.siteScore];
        for (const sp of cfg.siteSparsities) {
          const name = `${Math.round(100 * sp)}%`;
          // an option the cost model says is not faster than dense is never chosen (objective time): its perplexity is not measured
          const denseMlpMs = mlp[0]!.ms;
          const faster = (ms: number, than: number) => cfg.objective === 'bytes' || ms < than;
          const gt = c.gated ? thresholdAt(st.cal, i, 'gate', sp) : 0; // 0: the gate's own zeros (ReLU): the lossless mode
          if (gt > 0 && !gpu && faster(mlpMs(sc, 'predicted', 1 - sp), denseMlpMs)) { // CATS: up and down rows of the neurons kept (the select table: both projections at that density)
            const label = `gate threshold ${name}`, what: MlpOption = { mode: 'gate-threshold', threshold: gt, sparsity: sp };
            mlp.push({ what, label, density: 1 - sp, ms: mlpMs(sc, 'predicted', 1 - sp), dppl: await increase({ mlp: what }, label) });
          }
          for (const score of scores) {
            const wina = score === 'wina', tag = `${name}${wina ? ' (WINA)' : ''}`;
            const site = (s2: 'attn' | 'o' | 'mlp' | 'down'): InputSitePlan => ({ mode: 'input-threshold', score, threshold: thresholdAt(st.cal, i, s2, sp, wina), sparsity: sp });
            const down = site('down'), lDown = `down input ${tag}`;
            // the MLP's first projections in full, then the down rows of the inputs kept (a threshold of 0 is the lossless mode)
            const downMs = mlpMs(sc, 'dense', 1) - siteMs(sc2.down, 1) + siteMs(sc2.down, 1 - sp);
            const dw: MlpOption = { mode: 'down-threshold', site: down };
            if (down.threshold > 0 && faster(downMs, denseMlpMs)) mlp.push({ what: dw, label: lDown, density: 1 - sp, ms: downMs, dppl: await increase({ mlp: dw }, lDown) });
            for (const [key, s2, label] of [['attn', 'attn', 'q/k/v input'], ['o', 'o', 'o input'], ['mlpIn', 'mlp', 'MLP input']] as const) {
              const what = site(s2), l2 = `${label} ${tag}`;
              if (what.threshold > 0 && faster(siteMs(sc2[s2], 1 - sp), siteMs(sc2[s2], 1))) {
                const dppl = await increase({ [key]: what } as NonNullable<LayerPick>, l2);
                sites[key].push({ what, label: l2, density: 1 - sp, ms: siteMs(sc2[s2], 1 - sp) - siteMs(sc2[s2], 1), dppl });
              }
            }
          }
        }
      }
      options.push({ mlp, heads, ...sites });
      bar.update(i + 1);
    }
  } finally { bar.stop(); arena?.dispose(); }
  costs.save();
  return { options, densePpl };
}

/** A plan under construction: each layer's chosen option per site, with the cost model's view of it. */
class Choice {
  readonly at: Record<Site, number>[];
  readonly frontier: PlanFile['frontier'] = [];
  /** each accepted move, with the measured increase before it */
  private readonly history: { layer: number; site: Site; from: number; measured: number | null }[] = [];
  /** the whole plan's increase on the search text as measured after the last move (null: not measured; the summed charges stand for it) */
  private measured: number | null = null;
  private readonly fixedMs: number;
  /**
   * `gain`: the share of the dense step a move saves (time: the cost model's ms; bytes: the weights read per token);
   * `inputNeedsDense`: an MLP input threshold runs with the dense MLP mode only (gated MLPs; the GPU runtime), not lossless
   */
  constructor(private readonly options: LayerOptions[], readonly stepMs: number, private readonly inputNeedsDense: boolean,
      private readonly gain: (site: Site, from: Option<MlpOption | HeadOption | InputOption>, to: Option<MlpOption | HeadOption | InputOption>) => number = (_s, a, b) => (a.ms - b.ms) / stepMs) {
    // everything but the MLPs (attention at every head, norms, LM head) from the dense step
    this.fixedMs = stepMs - options.reduce((s, o) => s + o.mlp[0]!.ms, 0);
    // start: each layer's cheapest lossless option (dense or lossless)
    this.at = options.map((o) => ({ mlp: o.mlp.reduce((b, q, j) => (!lossy(q) && q.ms < o.mlp[b]!.ms ? j : b), 0), heads: 0, attn: 0, o: 0, mlpIn: 0 }));
    this.frontier.push({ step: 0, move: 'lossless start', speedup: this.speedup(), pplIncrease: 0 });
  }
  get moves(): number { return this.history.length; }
  option(i: number, site: Site): Option<MlpOption | HeadOption | InputOption> { return this.options[i]![site][this.at[i]![site]]!; }
  stepOf(): number { return this.fixedMs + this.at.reduce((s, _, i) => s + SITES.reduce((t, site) => t + this.option(i, site).ms, 0), 0); }
  speedup(): number { return this.stepMs / this.stepOf(); }
  /** the plan's estimated increase: measured on the search text, else the sum of its options' single-layer estimates */
  spent(): number { return this.measured ?? this.at.reduce((s, _, i) => s + SITES.reduce((t, site) => t + charge(this.option(i, site)), 0), 0); }
  /** every layer's chosen options (for the forward pass) */
  picks(): LayerPick[] {
    return this.at.map((_, i) => {
      const w = (s: Site) => this.option(i, s).what;
      return { mlp: w('mlp') as MlpOption, heads: w('heads') as HeadOption, attn: w('attn') as InputOption, o: w('o') as InputOption, mlpIn: w('mlpIn') as InputOption };
    });
  }

  /**
   * Whether layer i may hold option j at `site` with its other sites' choices: q/k/v or o thresholds only with every
   * head (q would be computed for every head; o's rows would be saved twice); an input threshold on the MLP's first
   * projections computes every neuron (input-major rows), so only with the MLP modes that do (dense, down threshold;
   * ungated on the CPU runtime: lossless too).
   */
  private fits(i: number, site: Site, j: number): boolean {
    const mode = (s: Site) => (s === site ? this.options[i]![s][j]! : this.option(i, s)).what.mode;
    if ((mode('attn') !== 'dense' || mode('o') !== 'dense') && mode('heads') !== 'dense') return false;
    const m = mode('mlp');
    return mode('mlpIn') === 'dense' || m === 'dense' || m === 'down-threshold' || (m === 'lossless' && !this.inputNeedsDense);
  }

  /**
   * greedy: the move with the most ms saved per unit of estimated increase; a lossy move must gain at least `minRate`
   * times the increase it is charged, as shares of the dense step (no +0.5% perplexity for 0.2% of speed). Without
   * `measure` the charges must fit `allowance`; with it, each move is measured as part of the whole plan (`measure`:
   * its perplexity increase on the search text) and undone when that exceeds `allowance`; then that site is not
   * moved to an option charged as much or more again.
   */
  async search(allowance: number, minRate: number, measure?: (picks: LayerPick[]) => Promise<number>): Promise<void> {
    const cap = new Map<string, number>(); // "layer|site" -> the least charge a measured move there went over budget with
    for (;;) {
      let best: { layer: number; site: Site; to: number; score: number } | null = null;
      for (let i = 0; i < this.options.length; i++) for (const site of SITES) {
        const cur = this.option(i, site), over = cap.get(`${i}|${site}`) ?? Infinity;
        this.options[i]![site].forEach((o, j) => {
          const saved = this.gain(site, cur, o), extra = charge(o) - charge(cur);
          // measured or not, a move whose own single-layer charge exceeds the allowance is never made (a zero budget makes no lossy move)
          if (saved <= 0 || charge(o) >= over || charge(o) > allowance || (!measure && this.spent() + extra > allowance) || (extra > 0 && saved < minRate * extra) || !this.fits(i, site, j)) return;
          const score = saved / Math.max(extra, 1e-6);
          if (!best || score > best.score) best = { layer: i, site, to: j, score };
        });
      }
      if (!best) return;
      const b = best as { layer: number; site: Site; to: number };
      const from = this.at[b.layer]![b.site];
      this.at[b.layer]![b.site] = b.to;
      if (measure) {
        // the whole plan's increase, at least its largest single charge (a negative measurement on the search text is noise)
        const m = Math.max(await measure(this.picks()), ...this.at.flatMap((_, i) => SITES.map((site) => charge(this.option(i, site)))));
        if (!(m <= allowance)) { this.at[b.layer]![b.site] = from; cap.set(`${b.layer}|${b.site}`, charge(this.options[b.layer]![b.site][b.to]!)); continue; }
        this.history.push({ layer: b.layer, site: b.site, from, measured: this.measured });
        this.measured = m;
      } else this.history.push({ layer: b.layer, site: b.site, from, measured: null });
      this.note(`layer ${b.layer} ${b.site}: ${this.option(b.layer, b.site).label}`);
    }
  }
  undo(): void {
    const u = this.history.pop()!;
    this.at[u.layer]![u.site] = u.from;
    this.measured = u.measured;
    this.note(`undo layer ${u.layer} ${u.site} (verified over budget)`);
  }
  dense(): void {
    for (const a of this.at) for (const s of SITES) a[s] = 0;
    this.history.length = 0;
    this.measured = null;
    this.note('fall back to dense (the verified plan was not faster)');
  }
  private note(move: string): void { this.frontier.push({ step: this.frontier.length, move, speedup: this.speedup(), pplIncrease: this.spent() }); }

  layers(): RuntimePlan['layers'] {
    return this.at.map((_, i) => {
      const mo = this.option(i, 'mlp') as Option<MlpOption>, ho = this.option(i, 'heads') as Option<HeadOption>;
      const w = mo.what, input = (s: 'attn' | 'o' | 'mlpIn') => { const x = this.option(i, s).what; return x.mode === 'dense' ? undefined : x; };
      const inputs = { attn: input('attn'), o: input('o'), mlp: input('mlpIn'), down: w.mode === 'down-threshold' ? w.site : undefined };
      const pplIncrease = SITES.reduce((t, s) => t + Math.max(0, this.option(i, s).dppl), 0);
      return {
        layer: i,
        mlp: w.mode === 'predicted' ? { mode: 'predicted', rule: w.rule, recall: w.recall } : w.mode === 'gate-threshold' ? { mode: 'gate-threshold', threshold: w.threshold, sparsity: w.sparsity }
          : { mode: w.mode === 'down-threshold' ? 'dense' : w.mode },
        heads: ho.what.mode === 'predicted' ? { mode: 'predicted', rule: ho.what.rule } : { mode: 'dense' },
        ...(Object.values(inputs).some(Boolean) ? { inputs: Object.fromEntries(Object.entries(inputs).filter(([, v]) => v)) } : {}),
        expected: { mlpDensity: mo.density, headDensity: ho.density, mlpMs: Math.max(0, mo.ms), headDeltaMs: ho.ms, pplIncrease },
      } satisfies LayerPlan;
    });
  }
}

/**
 * Weights an option reads per token (cfg.objective bytes): mlp = the whole MLP's; heads and input sites = the change
 * from dense (negative: saved). Predictors' own weights are left out.
 */
function weightsOf(c: Model['config'], site: Site, o: Option<MlpOption | HeadOption | InputOption>): number {
  const d = c.hidden, F = c.ffn, hd = c.headDim, first = (c.gated ? 2 : 1) * d * F, down = F * d, w = o.what, p = o.density;
  if (w.mode === 'dense') return site === 'mlp' ? first + down : 0;
  switch (site) {
    case 'mlp': return w.mode === 'lossless' ? (c.gated ? d * F * (1 + p) : first) + p * down : w.mode === 'predicted' ? p * (first + down)
      : w.mode === 'gate-threshold' ? d * F + p * (d * F + down) : first + p * down;
    case 'heads': return -(1 - p) * 2 * d * c.heads * hd;
    case 'attn': return -(1 - p) * d * (c.heads + 2 * c.kvHeads) * hd;
    case 'o': return -(1 - p) * c.heads * hd * d;
    case 'mlpIn': return -(1 - p) * first;
  }
}

/** an option that changes the model's function (predicted, fewer heads, any threshold): charged against the budget */
const lossy = (o: Option<MlpOption | HeadOption | InputOption>) => o.what.mode !== 'dense' && o.what.mode !== 'lossless';
/** what an option is charged against the budget: its single-layer increase, a lossy one at least NOISE_FLOOR */
function charge(o: Option<MlpOption | HeadOption | InputOption>): number { return lossy(o) ? Math.max(NOISE_FLOOR, o.dppl) : 0; }

/**
 * The runtime decodes the verification text with the plan (on a copy of the model that stores the plan's input sites
 * input-major); while over budget the last move is undone. Then dense (the model's own layout) and the plan decode the
 * same text in alternating rounds (cfg.runtime gpu: on the GPU decode runtime, as generate --runtime gpu times them:
 * gpuAlternatingStepMs); a plan not faster (twice) becomes dense (cfg.neverSlower). The weights read per token are counted by the (CPU) runtime.
 */
async function verifyPlan(x: Ctx, choice: Choice, verify: number[][]): Promise<{ verified: RuntimePlan['verified']; fallback: string }> {
  const { cfg, model, preds, deps } = x, c = model.config;
  // every decode pass and the timing show their total, an ETA after warm-up and a final line (minutes on a large model)
  const verifyTok = verify.reduce((a, s) => a + Math.max(0, s.length - 1), 0);
  const withBar = async <R>(label: string, total: number, unit: string, f: (add: (n: number) => void) => R | Promise<R>): Promise<R> => {
    const bar = deps.progress(`plan: ${label}`, total, unit);
    let n = 0;
    try { return await f((k) => bar.update(n += k)); } finally { bar.stop(); }
  };
  const dv = await withBar('verification, dense', verifyTok, 'tok', (add) => decodeNll(model, verify, undefined, () => add(1)));
  const densePpl = ppl(dv);
  // the plan's own layout: a model whose input sites' matrices are input-major (loaded once per distinct set)
  const copies = new Map<string, Model>();
  const modelFor = (layers: RuntimePlan['layers']) => {
    const names = planInputMajor({ layers }, c);
    if (!names.size) return model;
    const key = [...names].sort().join(',');
    let m = copies.get(key);
    if (!m) copies.set(key, (m = loadModel(cfg.model, { decode: { inputMajor: names } })));
    return m;
  };
  try {
    const runtime = async () => {
      const layers = choice.layers(), b = decodeModes(c, preds, { layers });
      try { return await withBar(`verification, the plan (${choice.moves} move(s))`, verifyTok, 'tok', (add) => decodeNll(modelFor(layers), verify, b.modes, () => add(1))); } finally { b.dispose(); }
    };
    let r = await runtime(), p = ppl(r);
    for (;;) {
      const inc = p / densePpl - 1;
      deps.log(`plan: verified ${choice.moves} move(s) on ${dv.count} held-out tokens: perplexity ${p.toFixed(4)} vs dense ${densePpl.toFixed(4)} (${inc >= 0 ? '+' : ''}${pct(inc, 3)})`);
      if (inc <= cfg.maxPplIncrease || !choice.moves) break;
      choice.undo();
      r = await runtime(); p = ppl(r);
    }
    if (p / densePpl - 1 > cfg.maxPplIncrease) throw new Error(`plan: even the lossless plan measures +${pct(p / densePpl - 1, 3)} (lossless modes must equal dense)`);
    // weights read per token: the decoder layers' (counted), and the whole step's (the LM head and projections around it read densely)
    const shares = (k: WeightCounts) => {
      const w = model.decode!, per = (n: number) => n / Math.max(1, dv.count);
      const rest = w.lmHead.n * w.lmHead.d + (w.projIn ? w.projIn.n * w.projIn.d : 0) + (w.projOut ? w.projOut.n * w.projOut.d : 0);
      return { weightBytesShare: Math.min(1, k.weightsRead / k.weightsTotal), stepWeightBytesShare: Math.min(1, (per(k.weightsRead) + rest) / (per(k.weightsTotal) + rest)) };
    };
    const layers = choice.layers();
    const text = verify[0]!, ctx = Math.min(Math.round(cfg.seqLen / 2), Math.max(1, text.length - 33)), steps = Math.min(32, text.length - ctx);
    if (layers.every((l) => l.mlp.mode === 'dense' && l.heads.mode === 'dense' && !l.inputs)) { // dense itself: nothing to time
      const v = { tokens: dv.count, densePerplexity: densePpl, perplexity: p, pplIncrease: p / densePpl - 1, stepMs: choice.stepMs, denseStepMs: choice.stepMs, speedup: 1, ...shares(dv.weights) };
      return { verified: { ...v, ...eightBit(x, layers, verify, densePpl, text, ctx, steps) }, fallback: '' };
    }
    const built = decodeModes(c, preds, { layers });
    const both = [model, modelFor(layers)];
    let denseMs: number, planMs: number;
    try {
      // the GPU: as generate --runtime gpu times them (a prompt of up to 8 tokens, then greedy runs of gpuTimingSteps (199) steps in ABBA
      // groups: 3, then 4), the CPU: 32-step rounds at half the sequence length (5, then 7)
      const gctx = Math.min(8, text.length - 1), gsteps = Math.max(1, Math.min(cfg.gpuTimingSteps, c.maxPositions - gctx - 1));
      const timed = (rounds: number) => withBar(`timing dense and the plan${cfg.runtime === 'gpu' ? ' on the GPU' : ''} (${rounds} rounds)`,
        cfg.runtime === 'gpu' ? 2 * (gctx + (1 + 2 * rounds) * gsteps) : 2 * (ctx + rounds * steps), 'steps',
        async (add) => (cfg.runtime === 'gpu' ? await gpuAlternatingStepMs(model, [gpuDenseModes(c.layers), gpuPlanModes(c, preds, { layers })], text, gctx, gsteps, rounds, add)
          : alternatingStepMs(both, [denseModes(c.layers), built.modes], text, ctx, steps, rounds, add)) as [number, number]);
      [denseMs, planMs] = await timed(cfg.runtime === 'gpu' ? 3 : 5);
      if (planMs >= denseMs) [denseMs, planMs] = await timed(cfg.runtime === 'gpu' ? 4 : 7); // once more, longer
    } finally { built.dispose(); }
    let fallback = '', read = shares(r.weights);
    if (cfg.neverSlower && planMs >= denseMs) {
      // never slower than dense: the plan that computes everything is dense itself
      fallback = `the verified plan (${layers.map((l) => l.mlp.mode + (l.inputs ? '+inputs' : '')).join(', ')}; +${pct(p / densePpl - 1, 3)}) decoded at ${(denseMs / planMs).toFixed(3)}x dense, not faster: the plan is dense`;
      deps.log(`plan: ${fallback}`);
      choice.dense();
      planMs = denseMs; p = densePpl; read = shares(dv.weights);
    }
    const verified = { tokens: dv.count, densePerplexity: densePpl, perplexity: p, pplIncrease: p / densePpl - 1, stepMs: planMs, denseStepMs: denseMs, speedup: denseMs / planMs, ...read,
      ...eightBit(x, choice.layers(), verify, densePpl, text, ctx, steps) };
    return { verified, fallback };
  } finally { for (const m of copies.values()) m.dispose(); }
}

/**
 * cfg.eightBit: the verified plan decoded again on 8-bit (q8_0) rows of the same weights: its perplexity on the
 * verification text against the dense model in the plan's own format (densePpl), and its step time against that dense
 * model in alternating rounds. Nothing when the model's rows are q8_0 already.
 */
function eightBit(x: Ctx, layers: RuntimePlan['layers'], verify: number[][], densePpl: number, text: number[], ctx: number, steps: number): { eightBit?: NonNullable<RuntimePlan['verified']['eightBit']> } {
  const { cfg, model, preds, deps } = x, c = model.config;
  if (!cfg.eightBit || model.decode!.dtype === 'q8_0') return {};
  const q8 = loadModel(cfg.model, { decode: { dtype: 'q8_0', inputMajor: planInputMajor({ layers }, c) } });
  const b = decodeModes(c, preds, { layers });
  try {
    const p8 = ppl(decodeNll(q8, verify, b.modes));
    const [denseMs, q8Ms] = alternatingStepMs([model, q8], [denseModes(c.layers), b.modes], text, ctx, steps) as [number, number];
    deps.log(`plan: the plan on 8-bit (q8_0) weights: perplexity ${p8.toFixed(4)} vs dense ${densePpl.toFixed(4)} (${p8 >= densePpl ? '+' : ''}${pct(p8 / densePpl - 1, 3)}), ${(denseMs / q8Ms).toFixed(2)}x dense`);
    return { eightBit: { perplexity: p8, pplIncrease: p8 / densePpl - 1, stepMs: q8Ms, denseStepMs: denseMs, speedup: denseMs / q8Ms } };
  } finally { b.dispose(); q8.dispose(); }
}

/** what a plan is made from: the predictors' content, the held-out activations' manifest, the config (less overwrite) */
function planRecord(cfg: PlanConfig): StageRecord {
  const { overwrite: _o, ...c } = cfg;
  return { name: 'plan', dir: cfg.out, file: 'plan.json', inputs: () => ({ p: predictorsContentHash(cfg.predictors), a: sha256File(path.join(cfg.activations, 'manifest.json')), c }) };
}
const readPlan = (out: string) => () => { const pf = readPlanFile(out); return { value: pf, seal: pf.sealSha256 }; };

/** plan's rule: its plan is current when made from the same inputs (planRecord) and it is the plan.json it wrote */
export function planCurrent(cfg: PlanConfig): Currency<PlanFile> {
  return recordedCurrent(planRecord(cfg), readPlan(cfg.out));
}

export async function runPlan(cfg: PlanConfig, deps: StageDeps, replay?: Record<string, number>): Promise<StageResult> {
  const t0 = Date.now();
  const rec = cfg.shard ? null : planRecord(cfg);
  if (rec && !cfg.overwrite) { // --overwrite: made again even when current
    const cur = recordedCurrent(rec, readPlan(cfg.out));
    if (cur.current) { deps.log(`plan: ${cfg.out} is complete and current; nothing to do`); return { text: fs.readFileSync(path.join(cfg.out, 'report.md'), 'utf8').trimEnd(), json: cur.value }; }
  }
  const predictorsSha256 = predictorsContentHash(cfg.predictors); // before loading: the plan is made for these weights (checked again before writing)
  const preds = loadPredictors(cfg.predictors);
  const model = loadModel(cfg.model, { decode: true });
  let sparse: Model | null = null; // the input sites' layout (cfg.sites), for the thresholds' calibration and kernel costs
  let onSearch: SearchText | null = null; // the search text and dense's log-probabilities on it
  let costs: CostModel | null = null;
  // the output folder is claimed first: a folder that is not ours is refused before any work
  let w: ReturnType<typeof beginOutput> | null = null;
  try {
    w = beginOutput(cfg.out, 'plan', { mayReplace: (s) => { if (s.state === 'ours' && !cfg.overwrite) throw new UserError(`plan folder ${cfg.out} exists and is not empty`, 'choose another --out or pass --overwrite'); } });
    if (!sameFingerprint(fingerprintCheckpoint(cfg.model), preds.manifest.model.fingerprint))
      throw new UserError(`predictors in ${cfg.predictors} were trained for another checkpoint than ${cfg.model}`, 'pass the checkpoint the predictors were trained on');
    const m = readManifest(cfg.activations);
    if (!sameFingerprint(m.model.fingerprint, preds.manifest.model.fingerprint))
      throw new UserError(`activations in ${cfg.activations} come from another checkpoint than the predictors`, 'pass held-out activations of the same checkpoint');
    const { search, verify } = await heldoutText(cfg, model, m);
    const everySite = { inputs: Array.from({ length: model.config.layers }, () => ({ attn: { t: 0 }, mlp: { t: 0 } })) };
    if (cfg.sites) sparse = loadModel(cfg.model, { decode: { inputMajor: inputMajorNames(everySite, model.config.gated) } });
    const cctx = Math.max(1, Math.round(cfg.seqLen / 2)), note = (s: string) => deps.log(`plan: ${s}`);
    costs = cfg.runtime === 'gpu' ? await gpuKernelCosts(model, cctx, { note, sites: Boolean(sparse) }).catch((e: unknown) => {
      // no adapter, no `webgpu` package, a model the GPU runtime does not run: said as the plan's
      if (!(e instanceof UserError)) throw e;
      throw new UserError(`plan (runtime gpu): ${e.message}`, `price the plan for the CPU runtime (runtime cpu, the default)${e.hint ? `; or ${e.hint}` : ''}`);
    }) : await kernelCosts(model, cctx, { note, ...(sparse ? { sparse } : {}) });
    const sc = costs.shape;
    deps.log(`plan: cost model ${costs.cached ? 'from the cache' : 'measured'} (${costs.file}; priced for the ${cfg.runtime === 'gpu' ? 'GPU decode runtime\'s WGSL kernels' : 'CPU runtime\'s kernels'}): dense step ${sc.stepMs.toFixed(3)} ms, MLP up ${sc.upMs.toFixed(3)} + down ${sc.downMs.toFixed(3)} ms per layer`);
    const x: Ctx = { cfg, deps, model, preds, m, costs, ...(cfg.shard ? { dppl: { shard: cfg.shard, record: {} } } : replay ? { dppl: { replay } } : {}) };
    if (sparse) {
      const cal = calibrateSites(sparse, await calibrationText(cfg, model, preds), { wina: cfg.siteScore !== 'abs' });
      deps.log(`plan: site thresholds calibrated on ${cal.tokens} tokens of ${cfg.calibrationData ?? 'the calibration text'}`);
      x.sites = { model: sparse, cal, costs: costs.sites! };
    }
    const st = onSearch = await searchText(model, search, cfg.batchSize);
    const { options, densePpl } = await measureOptions(x, st);
    costs.dispose(); // every option is priced (the GPU's copy of the weights is freed before the verification makes its own)
    sparse?.dispose(); sparse = null;
    if (x.dppl && 'shard' in x.dppl) { // a shard: its layers' single-layer perplexities only
      const { out: _o, shard: _s, overwrite: _w, backend: _b, ...run } = cfg;
      const file = sealed({ kind: 'dejavu-plan-shard', toolVersion: VERSION, run: sha256(JSON.stringify({ run, predictorsSha256 })), config: { ...cfg }, shard: cfg.shard!, dppl: x.dppl.record });
      checkPredictorsUnchanged(cfg.predictors, predictorsSha256, 'plan');
      const out = w;
      w = null;
      await writeOutput(out, cfg.out, (tmp) => writeArtifact(planShardSchema, file, path.join(tmp, 'plan.json'), 'plan shard'));
      return { text: `plan shard ${cfg.shard!.index}/${cfg.shard!.count}: ${Object.keys(x.dppl.record).length} single-layer perplexities in ${cfg.out}`, json: file };
    }
    const wc = model.config, w0 = model.decode!, stepWeights = wc.layers * weightsOf(wc, 'mlp', options.find((o) => o.mlp.length)?.mlp[0] ?? { what: { mode: 'dense' }, label: '', density: 1, ms: 0, dppl: 0 })
      + wc.layers * wc.hidden * (2 * wc.heads + 2 * wc.kvHeads) * wc.headDim + w0.lmHead.n * w0.lmHead.d;
    const choice = new Choice(options, sc.stepMs, wc.gated || cfg.runtime === 'gpu', cfg.objective === 'bytes' ? (site, a, b) => (weightsOf(wc, site, a) - weightsOf(wc, site, b)) / stepWeights : undefined);
    await choice.search(cfg.safety * cfg.maxPplIncrease, cfg.minSpeedPerPpl, async (picks) => (await measureOn(model, st, optionHooks(x, picks))).pplIncrease);
    const { verified, fallback } = await verifyPlan(x, choice, verify);
    const plan: RuntimePlan = {
      formatVersion: PLAN_FORMAT_VERSION, runtime: cfg.runtime, maxPplIncrease: cfg.maxPplIncrease, layers: choice.layers(),
      estimate: { stepMs: choice.stepOf(), denseStepMs: sc.stepMs, speedup: choice.speedup(), pplIncrease: choice.spent() }, verified,
    };
    const sites = sitePoints(options, choice.at);
    const file = sealed({ kind: 'dejavu-plan', formatVersion: PLAN_FORMAT_VERSION, toolVersion: VERSION, predictorsSha256, plan, frontier: choice.frontier, sites }) as PlanFile;
    const text = planReport(plan, options, choice.at, choice.frontier, cfg, densePpl, (Date.now() - t0) / 1000) + (sites.length ? `\n\n${sitesTable(sites).join('\n')}` : '') + (fallback ? `\n\nNote: ${fallback}.` : '');
    const svg = await specToSvg(frontierSpec(choice.frontier, cfg.maxPplIncrease, plan.verified, plan.estimate));
    checkPredictorsUnchanged(cfg.predictors, predictorsSha256, 'plan');
    const out = w;
    w = null;
    await writeOutput(out, cfg.out, (tmp) => {
      writeArtifact(planFileSchema, file, path.join(tmp, 'plan.json'), 'plan'); // a plan failing its own schema is a bug: never written
      writeFileAtomic(path.join(tmp, 'report.md'), text + '\n');
      writeFileAtomic(path.join(tmp, 'frontier.svg'), svg);
    });
    writeRecord(rec!, file.sealSha256);
    return { text, json: file };
  } finally {
    w?.abort();
    costs?.dispose();
    onSearch?.dispose();
    sparse?.dispose();
    preds.dispose();
    model.dispose();
  }
}

/** the calibration text for the site thresholds: cfg.calibrationData, else the text the predictors' calibration activations were collected from */
async function calibrationText(cfg: PlanConfig, model: Model, preds: LoadedPredictors): Promise<number[][]> {
  let file = cfg.calibrationData;
  if (!file) {
    const dir = preds.manifest.activations.dir;
    try { file = readManifest(dir).data.file; } catch (e) {
      if (!(e instanceof UserError)) throw e;
      throw new UserError(`plan: the site thresholds are calibrated on the predictors' calibration text, but its activations folder ${dir} cannot be read (${e.message})`,
        'pass the calibration text with --set calibrationData=FILE, or --set sites=false');
    }
  }
  const tokenizer = (await isPretokenized(file)) ? null : loadTokenizer(cfg.model);
  const seqs: number[][] = [];
  for await (const q of packSequences(readDocuments(file), { seqLen: cfg.seqLen, cfg: model.config, tokenizer, maxTokens: cfg.calibrationTokens, source: file })) seqs.push(q);
  return seqs;
}

/** the threshold sites' options as the report's frontier points (what the plan chose marked) */
function sitePoints(options: LayerOptions[], at: Record<Site, number>[]): SitePoint[] {
  const pts: SitePoint[] = [];
  options.forEach((o, layer) => {
    const mlpDense = o.mlp[0]?.ms ?? 0;
    o.mlp.forEach((q, j) => {
      const w = q.what, chosen = at[layer]!.mlp === j, deltaMs = q.ms - mlpDense;
      if (w.mode === 'gate-threshold') pts.push({ layer, site: 'gate', score: 'gate', sparsity: w.sparsity, threshold: w.threshold, pplIncrease: q.dppl, deltaMs, chosen });
      if (w.mode === 'down-threshold') pts.push({ layer, site: 'down', score: w.site.score, sparsity: w.site.sparsity, threshold: w.site.threshold, pplIncrease: q.dppl, deltaMs, chosen });
    });
    for (const [key, site] of [['attn', 'attn'], ['o', 'o'], ['mlpIn', 'mlp']] as const) {
      o[key].forEach((q, j) => { if (q.what.mode !== 'dense') pts.push({ layer, site, score: q.what.score, sparsity: q.what.sparsity, threshold: q.what.threshold, pplIncrease: q.dppl, deltaMs: q.ms, chosen: at[layer]![key] === j }); });
    }
  });
  return pts;
}

/** share of active neurons (ReLU) in a layer's held-out activations */
function activeDensity(dir: string, m: ReturnType<typeof readManifest>, layer: number, rows: number): number {
  let seen = 0, on = 0;
  for (const b of iterateLayer(dir, m, layer, ['mlp_active'])) {
    const n = Math.min(b.rows, rows - seen);
    if (n <= 0) break;
    for (let i = 0; i < n * m.dims.ffn; i++) on += b.mlpActive[i]!;
    seen += n;
  }
  return seen ? on / (seen * m.dims.ffn) : 1;
}

function planReport(plan: RuntimePlan, options: LayerOptions[], choice: { mlp: number; heads: number }[], frontier: PlanFile['frontier'], cfg: PlanConfig, searchDensePpl: number, seconds: number): string {
  const v = plan.verified;
  const lines = [
    `# Runtime plan (budget +${pct(cfg.maxPplIncrease)} perplexity)`, '',
    `Verified by the runtime on ${v.tokens} held-out tokens the search did not see: perplexity ${v.perplexity.toFixed(4)} vs dense ${v.densePerplexity.toFixed(4)} (**${v.pplIncrease >= 0 ? '+' : ''}${pct(v.pplIncrease, 3)}**), decode ${v.stepMs.toFixed(3)} vs ${v.denseStepMs.toFixed(3)} ms/token (**${v.speedup.toFixed(2)}x**)` +
      (v.weightBytesShare !== undefined ? `; decoder-layer weights read per token ${pct(v.weightBytesShare, 1)} of dense (whole step ${pct(v.stepWeightBytesShare!, 1)}).` : '.') +
      (v.eightBit ? ` With 8-bit (q8_0) weights (\`generate --dtype q8_0\`) the same plan measures perplexity ${v.eightBit.perplexity.toFixed(4)} (**${v.eightBit.pplIncrease >= 0 ? '+' : ''}${pct(v.eightBit.pplIncrease, 3)}** over dense) at **${v.eightBit.speedup.toFixed(2)}x** dense decode (${v.eightBit.stepMs.toFixed(3)} vs ${v.eightBit.denseStepMs.toFixed(3)} ms/token).` : ''),
    `Cost model: ${plan.estimate.stepMs.toFixed(3)} vs ${plan.estimate.denseStepMs.toFixed(3)} ms/token (${plan.estimate.speedup.toFixed(2)}x); the whole plan's perplexity increase on the search text +${pct(plan.estimate.pplIncrease, 3)} (dense ${searchDensePpl.toFixed(4)}; batched forward pass). ${seconds.toFixed(0)} s.`, '',
    '| layer | MLP mode | rule | MLP density | heads | est. MLP ms | est. head ms change | increase alone (KL) | share of budget |', '|---:|---|---|---:|---|---:|---:|---:|---:|',
  ];
  plan.layers.forEach((l, i) => {
    const mo = options[i]!.mlp[choice[i]!.mlp]!, ho = options[i]!.heads[choice[i]!.heads]!;
    const rule = l.mlp.mode === 'predicted' ? `${l.mlp.rule.kind === 'threshold' ? `threshold ${l.mlp.rule.value.toFixed(3)}` : `top-${l.mlp.rule.k}`} (recall ${Number(l.mlp.recall.toFixed(3))})` : '-';
    lines.push(`| ${l.layer} | ${l.mlp.mode} | ${rule} | ${pct(mo.density, 1)} | ${ho.label} | ${mo.ms.toFixed(4)} | ${ho.ms.toFixed(4)} | +${pct(l.expected.pplIncrease, 3)} | ${pct(l.expected.pplIncrease / Math.max(1e-12, cfg.maxPplIncrease), 0)} |`);
  });
  lines.push('', '## Options measured (cost model ms per layer; increase with only that layer changed: exp(KL) - 1 from dense on the search text)', '', '| layer | option | density | ms | increase alone |', '|---:|---|---:|---:|---:|');
  options.forEach((o, i) => { for (const x of [...o.mlp, ...o.heads.slice(1)]) lines.push(`| ${i} | ${x.label} | ${pct(x.density, 1)} | ${x.ms.toFixed(4)} | ${x.dppl >= 0 ? '+' : ''}${pct(x.dppl, 3)} |`); });
  lines.push('', '## Search path (frontier.svg)', '', '| step | move | est. speedup | est. perplexity increase |', '|---:|---|---:|---:|');
  for (const f of frontier) lines.push(`| ${f.step} | ${f.move} | ${f.speedup.toFixed(3)}x | +${pct(f.pplIncrease, 3)} |`);
  return lines.join('\n');
}

