/**
 * plan: from a perplexity budget to the fastest per-layer runtime plan.
 *
 * 1. Options per layer. MLP: dense; lossless (ReLU: exactly dense, only the nonzero rows of the second projection
 *    read); predicted with the layer's predictor under a threshold calibrated on held-out activations to each of
 *    `recalls`. Heads (where a head predictor exists): every head, or the top share by the predictor's score.
 * 2. Cost of each option: the decode runtime's own kernels timed at this model's shapes (src/runtime/costs.ts,
 *    cached per shape) at the option's density, the predictor's own call included.
 * 3. Quality of each option: perplexity with only that layer changed (masked forward pass) on the search text.
 * 4. Search: start from the cheapest lossless plan; repeatedly take the move with the most milliseconds saved per
 *    unit of perplexity (TEAL-like greedy), while the summed single-layer increases stay within `safety` x budget.
 * 5. Verification: the runtime itself decodes held-out text the search did not see, token by token, dense and with
 *    the plan; while the measured increase exceeds the budget, the last move is undone and the plan re-verified.
 */
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type { TopLevelSpec } from 'vega-lite';
import { readSync } from '../util/tfx.js';
import type { StageResult } from './types.js';
import { VERSION } from '../version.js';
import type { PlanConfig } from '../config/schemas.js';
import { iterateLayer, readManifest } from '../activations/dataset.js';
import { isPretokenized, packSequences, readDocuments } from '../activations/data.js';
import { fingerprintCheckpoint, sameFingerprint } from '../checkpoint/checkpoint.js';
import { loadModel, type Model } from '../model/model.js';
import type { SparsityHooks } from '../model/forward.js';
import { loadTokenizer } from '../tokenizer.js';
import { thresholdForRecall, type SelectionRule } from '../predictors/metrics.js';
import { labelsFor } from '../predictors/labels.js';
import { loadPredictors, ruleMask, siteScores, type LoadedSite } from '../predictors/hooks.js';
import { hasLowRankWeights } from '../predictors/store.js';
import { mlpInput, readMlpSite } from '../predictors/mlp-site.js';
import { predictorsContentHash } from '../predictors/content-hash.js';
import { batchNll, ppl } from '../eval/perplexity.js';
import { specToSvg } from '../eval/plots.js';
import { decodeNll } from '../runtime/generate.js';
import { decodeModes, PLAN_FORMAT_VERSION, sitePicker, type LayerPlan, type PlanFile, type RuntimePlan } from '../runtime/plan.js';
import { alternatingStepMs, headSavingMs, kernelCosts, mlpMs, type CostModel } from '../runtime/costs.js';
import { denseModes } from '../runtime/decoder.js';
import { createArena } from '../model/kernels/wasm/kernels.js';
import { beginOutput, writeOutput } from '../util/outdir.js';
import { UserError } from '../util/errors.js';
import { writeFileAtomic, writeJsonAtomic } from '../util/fsx.js';
import type { StageDeps } from '../util/progress.js';

type MlpOption = { mode: 'dense' | 'lossless' } | { mode: 'predicted'; rule: SelectionRule; recall: number };
type HeadOption = { mode: 'dense' } | { mode: 'predicted'; rule: SelectionRule };
interface Option<T> { what: T; label: string; density: number; ms: number; dppl: number }
interface LayerOptions { mlp: Option<MlpOption>[]; heads: Option<HeadOption>[] }

const pct = (x: number, d = 2) => `${(100 * x).toFixed(d)}%`;
/** the least perplexity increase a lossy option is charged (0.01%): below what the search text can resolve */
const NOISE_FLOOR = 1e-4;

/** Per-recall thresholds and their densities for one MLP site, from held-out activations (at most `rows` rows). */
function calibrateMlp(dir: string, m: ReturnType<typeof readManifest>, layer: number, site: LoadedSite, model: string, recalls: number[], rows: number): { trueDensity: number; options: { recall: number; value: number; density: number }[] } {
  const F = m.dims.ffn, d = m.dims.hidden;
  const ms = readMlpSite(model, m.model.config, layer);
  const pos: number[] = [], sample: number[] = [];
  let seen = 0, positives = 0;
  for (const b of iterateLayer(dir, m, layer, ['x_attn', 'x_mlp', ...(site.entry.label.kind === 'active' ? ['mlp_active'] : ['mlp_act'])])) {
    const n = Math.min(b.rows, rows - seen);
    if (n <= 0) break;
    const h = mlpInput(ms, b.xMlp, b.rows);
    const x = site.entry.input === 'h_mlp' ? h : site.entry.input === 'x_mlp' ? b.xMlp : b.xAttn;
    const s = readSync(() => siteScores(site, tf.tensor2d(x.subarray(0, n * d), [n, d])));
    const y = labelsFor('mlp', site.entry.label, F, b);
    for (let i = 0; i < n * F; i++) { if (y[i]) { pos.push(s[i]!); positives++; } if (i % 4 === 0) sample.push(s[i]!); }
    seen += n;
  }
  if (!seen) throw new UserError(`${dir}: layer ${layer} has no rows`, 'collect held-out activations with `dejavu collect-activations`');
  const sorted = Float32Array.from(sample).sort();
  const densityAt = (v: number) => { let lo = 0, hi = sorted.length; while (lo < hi) { const mid = (lo + hi) >> 1; if (sorted[mid]! < v) lo = mid + 1; else hi = mid; } return (sorted.length - lo) / sorted.length; };
  const P = Float32Array.from(pos);
  return { trueDensity: positives / (seen * F), options: recalls.map((r) => { const value = thresholdForRecall(P, r); return { recall: r, value, density: densityAt(value) }; }) };
}

/** hooks changing one layer only: its MLP (or heads) masked by a site's rule */
function oneLayerHooks(layer: number, site: LoadedSite, kind: 'mlp' | 'heads', rule: SelectionRule): SparsityHooks {
  const flat = (x: tf.Tensor) => tf.reshape(x, [-1, x.shape[x.shape.length - 1]!]) as tf.Tensor2D;
  const mask = (x: tf.Tensor) => { const [B, T] = x.shape as [number, number]; const z = siteScores(site, flat(x)); return { mask: tf.reshape(ruleMask(z, rule), [B, T, z.shape[1]]) }; };
  if (kind === 'mlp') return { mlp: (i, c) => (i !== layer ? null : mask(site.entry.input === 'h_mlp' ? c.hMlp : site.entry.input === 'x_mlp' ? c.xMlp : c.xAttn)) };
  return { heads: (i, c) => (i !== layer ? null : mask(site.sourceLayerOffset === -1 ? c.xAttnPrev : c.xAttn)) };
}

function nllOf(model: Model, seqs: number[][], batch: number, hooks?: SparsityHooks): number {
  let nll = 0, count = 0;
  for (let i = 0; i < seqs.length; i += batch) { const r = batchNll(model, seqs.slice(i, i + batch), hooks); nll += r.nll; count += r.count; }
  return ppl({ nll, count });
}

interface Move { layer: number; site: 'mlp' | 'heads'; to: number }

function frontierSpec(points: { step: number; speedup: number; pplIncrease: number; move: string }[], budget: number, verified: { speedup: number; pplIncrease: number }): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: 'Plan search: estimated speedup vs perplexity increase',
    width: 520, height: 320,
    config: { font: 'sans-serif', axis: { labelFontSize: 11, titleFontSize: 12, grid: true, gridColor: '#e6e6e6' }, view: { stroke: null } },
    layer: [
      { data: { values: points }, mark: { type: 'line', point: true, color: '#1f77b4' }, encoding: {
        x: { field: 'pplIncrease', type: 'quantitative', title: 'perplexity increase (estimated: sum of single-layer increases)', axis: { format: '.2%' } },
        y: { field: 'speedup', type: 'quantitative', title: 'decode speedup vs dense (cost model)', scale: { zero: false }, axis: { format: '.2f' } },
        tooltip: [{ field: 'move', type: 'nominal' }] } },
      { data: { values: [{ x: budget }] }, mark: { type: 'rule', color: '#d62728', strokeDash: [6, 4] }, encoding: { x: { field: 'x', type: 'quantitative' } } },
      { data: { values: [{ ...verified, label: 'verified by the runtime' }] }, mark: { type: 'point', shape: 'diamond', size: 120, filled: true, color: '#2ca02c' },
        encoding: { x: { field: 'pplIncrease', type: 'quantitative' }, y: { field: 'speedup', type: 'quantitative' } } },
    ],
  } as TopLevelSpec;
}

export async function runPlan(cfg: PlanConfig, deps: StageDeps): Promise<StageResult> {
  const t0 = Date.now();
  const preds = loadPredictors(cfg.predictors);
  const model = loadModel(cfg.model, { decode: true });
  const c = model.config;
  try {
    if (!sameFingerprint(fingerprintCheckpoint(cfg.model), preds.manifest.model.fingerprint))
      throw new UserError(`predictors in ${cfg.predictors} were trained for another checkpoint than ${cfg.model}`, 'pass the checkpoint the predictors were trained on');
    const m = readManifest(cfg.activations);
    if (!sameFingerprint(m.model.fingerprint, preds.manifest.model.fingerprint))
      throw new UserError(`activations in ${cfg.activations} come from another checkpoint than the predictors`, 'pass held-out activations of the same checkpoint');
    // held-out text: the search's part and the verification's part, disjoint
    const dataFile = cfg.data ?? m.data.file;
    const tokenizer = (await isPretokenized(dataFile)) ? null : loadTokenizer(cfg.model);
    const seqs: number[][] = [];
    for await (const s of packSequences(readDocuments(dataFile), { seqLen: cfg.seqLen, cfg: c, tokenizer, maxTokens: cfg.searchTokens + cfg.verifyTokens, source: dataFile })) seqs.push(s);
    const nSearch = Math.min(Math.ceil(cfg.searchTokens / cfg.seqLen), Math.floor(seqs.length / 2));
    const search = seqs.slice(0, nSearch), verify = seqs.slice(nSearch);
    if (!search.length || !verify.length) throw new UserError(`${dataFile} holds ${seqs.length} sequences of ${cfg.seqLen} tokens: the plan needs at least 2 (one to search, one to verify)`, 'pass more held-out text (--data) or a smaller --set seqLen');

    // cost model
    const costs: CostModel = kernelCosts(model, Math.max(1, Math.round(cfg.seqLen / 2)));
    const sc = costs.shape;
    deps.log(`plan: cost model ${costs.cached ? 'from the cache' : 'measured'} (${costs.file}): dense step ${sc.stepMs.toFixed(3)} ms, MLP up ${sc.upMs.toFixed(3)} + down ${sc.downMs.toFixed(3)} ms per layer`);
    const arena = createArena();
    const probe = Float32Array.from({ length: c.hidden }, (_, i) => Math.sin(i * 0.37));
    const predMs = (site: LoadedSite, W: number, rule: SelectionRule) =>
      costs.predictorMs(`d${c.hidden}|r${site.host!.r}|out${W}|${site.host!.hidden}|${site.hostUp ? 'swiglu' : 'linear'}|${rule.kind}`, ((p) => () => p(probe))(sitePicker(site, rule, W, arena)));

    // options per layer, with their costs and single-layer perplexity on the search text
    const bar = deps.progress('plan: options', c.layers);
    const densePpl = nllOf(model, search, cfg.batchSize);
    const options: LayerOptions[] = [];
    for (let i = 0; i < c.layers; i++) {
      const ms = preds.mlp.get(i), hs = preds.heads.get(i);
      const mlp: Option<MlpOption>[] = [{ what: { mode: 'dense' }, label: 'dense', density: 1, ms: mlpMs(sc, 'dense', 1), dppl: 0 }];
      let trueDensity = NaN;
      if (ms && hasLowRankWeights(ms.entry.family)) {
        const cal = calibrateMlp(cfg.activations, m, i, ms, cfg.model, cfg.recalls, cfg.calibrationRows);
        trueDensity = cal.trueDensity;
        for (const o of cal.options) {
          if (!Number.isFinite(o.value)) continue;
          const rule: SelectionRule = { kind: 'threshold', value: o.value };
          const p = nllOf(model, search, cfg.batchSize, oneLayerHooks(i, ms, 'mlp', rule));
          mlp.push({ what: { mode: 'predicted', rule, recall: o.recall }, label: `predicted r${ms.entry.rank} @ recall ${o.recall}`, density: o.density, ms: mlpMs(sc, 'predicted', o.density, predMs(ms, c.ffn, rule)), dppl: p / densePpl - 1 });
        }
      }
      if (c.activation === 'relu') {
        if (!Number.isFinite(trueDensity)) trueDensity = activeDensity(cfg.activations, m, i, cfg.calibrationRows);
        mlp.push({ what: { mode: 'lossless' }, label: 'lossless', density: trueDensity, ms: mlpMs(sc, 'lossless', trueDensity), dppl: 0 });
      }
      const heads: Option<HeadOption>[] = [{ what: { mode: 'dense' }, label: 'all heads', density: 1, ms: 0, dppl: 0 }];
      if (hs?.host) {
        for (const f of cfg.headFractions) {
          const k = Math.max(1, Math.round(f * c.heads));
          if (k >= c.heads || heads.some((h) => h.what.mode === 'predicted' && h.what.rule.kind === 'topk' && h.what.rule.k === k)) continue;
          const rule: SelectionRule = { kind: 'topk', k };
          const p = nllOf(model, search, cfg.batchSize, oneLayerHooks(i, hs, 'heads', rule));
          heads.push({ what: { mode: 'predicted', rule }, label: `top ${k}/${c.heads} heads`, density: k / c.heads, ms: predMs(hs, c.heads, rule) - headSavingMs(sc, k, c.heads), dppl: p / densePpl - 1 });
        }
      }
      options.push({ mlp, heads });
      bar.update(i + 1);
    }
    bar.stop();
    costs.save();
    arena?.dispose();

    // greedy search from the cheapest lossless plan
    const denseMlpMs = mlpMs(sc, 'dense', 1);
    const fixedMs = sc.stepMs - c.layers * denseMlpMs; // everything but the MLPs (attention at every head, norms, LM head)
    const choice = options.map((o) => ({ mlp: o.mlp.reduce((b, x, j) => (x.dppl <= 0 && x.what.mode !== 'predicted' && x.ms < o.mlp[b]!.ms ? j : b), 0), heads: 0 }));
    const stepOf = () => fixedMs + choice.reduce((s, ch, i) => s + options[i]!.mlp[ch.mlp]!.ms + options[i]!.heads[ch.heads]!.ms, 0);
    // what an option is charged against the budget: its single-layer increase, and for a lossy option at least
    // NOISE_FLOOR (a predicted layer that happened to lower perplexity on the search text is not free)
    const charge = (o: Option<MlpOption | HeadOption>) => (o.what.mode === 'predicted' ? Math.max(NOISE_FLOOR, o.dppl) : 0);
    const spent = () => choice.reduce((s, ch, i) => s + charge(options[i]!.mlp[ch.mlp]!) + charge(options[i]!.heads[ch.heads]!), 0);
    const frontier: PlanFile['frontier'] = [{ step: 0, move: 'lossless start', speedup: sc.stepMs / stepOf(), pplIncrease: 0 }];
    const moves: Move[] = [];
    const history: { layer: number; site: 'mlp' | 'heads'; from: number }[] = [];
    for (;;) {
      let best: (Move & { score: number }) | null = null;
      for (let i = 0; i < c.layers; i++) for (const site of ['mlp', 'heads'] as const) {
        const cur = options[i]![site][choice[i]![site]]!;
        options[i]![site].forEach((o, j) => {
          const saved = cur.ms - o.ms, extra = charge(o) - charge(cur);
          if (saved <= 0 || spent() + extra > cfg.safety * cfg.maxPplIncrease) return;
          const score = saved / Math.max(extra, 1e-6);
          if (!best || score > best.score) best = { layer: i, site, to: j, score };
        });
      }
      if (!best) break;
      const b = best as Move & { score: number };
      history.push({ layer: b.layer, site: b.site, from: choice[b.layer]![b.site] });
      choice[b.layer]![b.site] = b.to;
      moves.push(b);
      frontier.push({ step: frontier.length, move: `layer ${b.layer} ${b.site}: ${options[b.layer]![b.site][b.to]!.label}`, speedup: sc.stepMs / stepOf(), pplIncrease: spent() });
    }

    // verification by the runtime on text the search did not see; undo moves while over budget
    const toPlan = (): RuntimePlan['layers'] => choice.map((ch, i) => {
      const mo = options[i]!.mlp[ch.mlp]!, ho = options[i]!.heads[ch.heads]!;
      const l: LayerPlan = {
        layer: i, mlp: mo.what.mode === 'predicted' ? { mode: 'predicted', rule: mo.what.rule, recall: mo.what.recall } : { mode: mo.what.mode },
        heads: ho.what.mode === 'predicted' ? { mode: 'predicted', rule: ho.what.rule } : { mode: 'dense' },
        expected: { mlpDensity: mo.density, headDensity: ho.density, mlpMs: Math.max(0, mo.ms), headDeltaMs: ho.ms, pplIncrease: Math.max(0, mo.dppl) + Math.max(0, ho.dppl) },
      };
      return l;
    });
    const dv = decodeNll(model, verify);
    const verifyTokens = dv.count;
    const denseVerifyPpl = ppl(dv);
    const asPlan = (ls: RuntimePlan['layers']): RuntimePlan => ({ formatVersion: PLAN_FORMAT_VERSION, maxPplIncrease: cfg.maxPplIncrease, layers: ls, estimate: { stepMs: 1, denseStepMs: 1, speedup: 1, pplIncrease: 0 }, verified: { tokens: 1, densePerplexity: 1, perplexity: 1, pplIncrease: 0, stepMs: 1, denseStepMs: 1, speedup: 1 } });
    let layers = toPlan(), measuredPpl: number;
    for (;;) {
      const built = decodeModes(c, preds, asPlan(layers));
      try { measuredPpl = ppl(decodeNll(model, verify, built.modes)); } finally { built.dispose(); }
      const inc = measuredPpl / denseVerifyPpl - 1;
      deps.log(`plan: verified ${history.length} move(s) on ${verifyTokens} held-out tokens: perplexity ${measuredPpl.toFixed(4)} vs dense ${denseVerifyPpl.toFixed(4)} (${inc >= 0 ? '+' : ''}${pct(inc, 3)})`);
      if (inc <= cfg.maxPplIncrease || !history.length) break;
      const u = history.pop()!;
      choice[u.layer]![u.site] = u.from;
      frontier.push({ step: frontier.length, move: `undo layer ${u.layer} ${u.site} (verified over budget)`, speedup: sc.stepMs / stepOf(), pplIncrease: spent() });
      layers = toPlan();
    }
    let inc = measuredPpl / denseVerifyPpl - 1;
    if (inc > cfg.maxPplIncrease) throw new Error(`plan: even the lossless plan measures +${pct(inc, 3)} (lossless modes must equal dense)`);
    // speed, by the runtime itself: dense and the plan decoding the same held-out text, alternating
    const built = decodeModes(c, preds, asPlan(layers));
    const ctx = Math.min(Math.round(cfg.seqLen / 2), Math.max(1, verify[0]!.length - 33));
    let denseMs: number, planMs: number;
    const steps = Math.min(32, verify[0]!.length - ctx);
    try {
      [denseMs, planMs] = alternatingStepMs(model, [denseModes(c.layers), built.modes], verify[0]!, ctx, steps) as [number, number];
      if (planMs >= denseMs) [denseMs, planMs] = alternatingStepMs(model, [denseModes(c.layers), built.modes], verify[0]!, ctx, steps, 7) as [number, number]; // once more, longer
    } finally { built.dispose(); }
    let fallback = '';
    if (cfg.neverSlower && planMs >= denseMs) {
      // never slower than dense: the plan that computes everything is dense itself
      fallback = `the verified plan (${layers.map((l) => l.mlp.mode).join(', ')}; +${pct(inc, 3)}) decoded at ${(denseMs / planMs).toFixed(3)}x dense, not faster: the plan is dense`;
      deps.log(`plan: ${fallback}`);
      for (const ch of choice) { ch.mlp = 0; ch.heads = 0; }
      layers = toPlan();
      planMs = denseMs;
      measuredPpl = denseVerifyPpl;
      inc = 0;
      frontier.push({ step: frontier.length, move: 'fall back to dense (the verified plan was not faster)', speedup: 1, pplIncrease: 0 });
    }
    const plan: RuntimePlan = {
      formatVersion: PLAN_FORMAT_VERSION, maxPplIncrease: cfg.maxPplIncrease, layers,
      estimate: { stepMs: stepOf(), denseStepMs: sc.stepMs, speedup: sc.stepMs / stepOf(), pplIncrease: spent() },
      verified: { tokens: verifyTokens, densePerplexity: denseVerifyPpl, perplexity: measuredPpl, pplIncrease: inc, stepMs: planMs, denseStepMs: denseMs, speedup: denseMs / planMs },
    };
    const file: PlanFile = { kind: 'dejavu-plan', formatVersion: PLAN_FORMAT_VERSION, toolVersion: VERSION, predictorsSha256: predictorsContentHash(cfg.predictors), plan, frontier };
    const text = planReport(plan, options, choice, frontier, cfg, densePpl, (Date.now() - t0) / 1000) + (fallback ? `\n\nNote: ${fallback}.` : '');
    const svg = await specToSvg(frontierSpec(frontier, cfg.maxPplIncrease, plan.verified));
    const w = beginOutput(cfg.out, 'plan', { mayReplace: (s) => { if (s.state === 'ours' && !cfg.overwrite) throw new UserError(`plan folder ${cfg.out} exists and is not empty`, 'choose another --out or pass --overwrite'); } });
    await writeOutput(w, cfg.out, (tmp) => { writeJsonAtomic(path.join(tmp, 'plan.json'), file); writeFileAtomic(path.join(tmp, 'report.md'), text + '\n'); writeFileAtomic(path.join(tmp, 'frontier.svg'), svg); });
    return { text, json: file };
  } finally {
    preds.dispose();
    model.dispose();
  }
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
    `Verified by the runtime on ${v.tokens} held-out tokens the search did not see: perplexity ${v.perplexity.toFixed(4)} vs dense ${v.densePerplexity.toFixed(4)} (**${v.pplIncrease >= 0 ? '+' : ''}${pct(v.pplIncrease, 3)}**), decode ${v.stepMs.toFixed(3)} vs ${v.denseStepMs.toFixed(3)} ms/token (**${v.speedup.toFixed(2)}x**).`,
    `Cost model: ${plan.estimate.stepMs.toFixed(3)} vs ${plan.estimate.denseStepMs.toFixed(3)} ms/token (${plan.estimate.speedup.toFixed(2)}x); summed single-layer perplexity increases +${pct(plan.estimate.pplIncrease, 3)} (search text, dense ${searchDensePpl.toFixed(4)}). ${seconds.toFixed(0)} s.`, '',
    '| layer | MLP mode | rule | MLP density | heads | est. MLP ms | est. head ms change | perplexity alone | share of budget |', '|---:|---|---|---:|---|---:|---:|---:|---:|',
  ];
  plan.layers.forEach((l, i) => {
    const mo = options[i]!.mlp[choice[i]!.mlp]!, ho = options[i]!.heads[choice[i]!.heads]!;
    const rule = l.mlp.mode === 'predicted' ? `threshold ${l.mlp.rule.kind === 'threshold' ? l.mlp.rule.value.toFixed(3) : ''} (recall ${l.mlp.recall})` : '-';
    lines.push(`| ${l.layer} | ${l.mlp.mode} | ${rule} | ${pct(mo.density, 1)} | ${ho.label} | ${mo.ms.toFixed(4)} | ${ho.ms.toFixed(4)} | +${pct(l.expected.pplIncrease, 3)} | ${pct(l.expected.pplIncrease / Math.max(1e-12, cfg.maxPplIncrease), 0)} |`);
  });
  lines.push('', '## Options measured (cost model ms per layer, perplexity with only that layer changed)', '', '| layer | option | density | ms | perplexity alone |', '|---:|---|---:|---:|---:|');
  options.forEach((o, i) => { for (const x of [...o.mlp, ...o.heads.slice(1)]) lines.push(`| ${i} | ${x.label} | ${pct(x.density, 1)} | ${x.ms.toFixed(4)} | ${x.dppl >= 0 ? '+' : ''}${pct(x.dppl, 3)} |`); });
  lines.push('', '## Search path (frontier.svg)', '', '| step | move | est. speedup | est. perplexity increase |', '|---:|---|---:|---:|');
  for (const f of frontier) lines.push(`| ${f.step} | ${f.move} | ${f.speedup.toFixed(3)}x | +${pct(f.pplIncrease, 3)} |`);
  return lines.join('\n');
}

