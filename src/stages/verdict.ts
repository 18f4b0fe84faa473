/**
 * The pipeline's verdict: its headline figures (what the run gives: the plan's verified speedup and perplexity, the
 * bundle, the predictors' held-out quality), each perplexity with the text and token count it was measured on, and
 * the short stdout built from them (the per-layer tables stay in report.md and plan/report.md; --verbose prints
 * them too). `npm run bench:pipeline` stores the same figures as docs/results/pipeline.json.
 */
import type { EvalReport } from './evaluate.js';
import type { PlanFile } from '../runtime/plan.js';
import type { ModelConfig } from '../model/config.js';
import { ruleText } from '../predictors/fit-mlp.js';

export const GLOSSARY = 'docs/glossary.md';

export interface Headline {
  model: string;
  /** e.g. "opt, 6 layers, d 256, ffn 1024" */
  shape: string;
  workdir: string;
  bundle: string;
  /** the evaluation's perplexities: held-out text, its first `tokens` tokens */
  evaluation: { text: string; tokens: number; heldoutTokens: number; dense?: number; predicted?: number; oracle?: number; meanRecall: number; meanDensity: number; trueDensity: number };
  plan: null | {
    budget: number; speedup: number; estimatedSpeedup: number; pplIncrease: number; tokens: number; densePerplexity: number; perplexity: number; denseStepMs: number; stepMs: number;
    /** per layer: its MLP mode in words (dense, lossless, predicted at threshold/top-k, recall r), its head mode and its input-threshold sites ('' for none) */
    layers: { layer: number; mlp: string; heads: string; inputs: string; mlpDensity: number }[];
  };
}

export function headline(a: { model: string; config: Pick<ModelConfig, 'family' | 'layers' | 'hidden' | 'ffn'>; workdir: string; bundle: string; report: EvalReport; plan: PlanFile | null; heldoutText: string }): Headline {
  const { report: r, plan: pf } = a;
  const runs = r.perplexity?.runs ?? {};
  const c = a.config;
  const p = pf?.plan;
  return {
    model: a.model, shape: `${c.family}, ${c.layers} layers, d ${c.hidden}, ffn ${c.ffn}`, workdir: a.workdir, bundle: a.bundle,
    evaluation: { text: a.heldoutText, tokens: r.perplexity?.tokens ?? 0, heldoutTokens: r.heldoutTokens, dense: runs.dense, predicted: runs['predicted (MLP)'], oracle: runs['oracle (MLP)'],
      meanRecall: r.averages.mlpRecall ?? NaN, meanDensity: r.averages.mlpPredictedDensity ?? NaN, trueDensity: r.averages.mlpTrueDensity ?? NaN },
    plan: p ? {
      budget: p.maxPplIncrease, speedup: p.verified.speedup, estimatedSpeedup: p.estimate.speedup, pplIncrease: p.verified.pplIncrease, tokens: p.verified.tokens,
      densePerplexity: p.verified.densePerplexity, perplexity: p.verified.perplexity, denseStepMs: p.verified.denseStepMs, stepMs: p.verified.stepMs,
      layers: p.layers.map((l) => ({
        layer: l.layer, mlpDensity: l.expected.mlpDensity,
        mlp: l.mlp.mode === 'predicted' ? `predicted (${ruleText(l.mlp.rule)}, recall ${l.mlp.recall})` : l.mlp.mode,
        heads: l.heads.mode === 'predicted' ? `predicted (${ruleText(l.heads.rule)})` : 'dense',
        inputs: (['attn', 'o', 'mlp', 'down'] as const).filter((s) => l.inputs?.[s]).join(', '),
      })),
    } : null,
  };
}

export const signedPct = (x: number, digits = 2) => `${x >= 0 ? '+' : ''}${(100 * x).toFixed(digits)}%`;
export const pct = (x: number, digits = 1) => `${(100 * x).toFixed(digits)}%`;
const count = (n: number) => n.toLocaleString('en-US');

/** "0 lossless; 1–5 predicted (>= 0.123, recall 0.9)": consecutive layers with the same mode as one range */
export function modeRanges(layers: { layer: number; mode: string }[]): string {
  const out: { a: number; b: number; mode: string }[] = [];
  for (const l of layers) {
    const last = out.at(-1);
    if (last && last.mode === l.mode && last.b === l.layer - 1) last.b = l.layer; else out.push({ a: l.layer, b: l.layer, mode: l.mode });
  }
  return out.map((g) => `${g.a === g.b ? `layer ${g.a}` : `layers ${g.a}–${g.b}`} ${g.mode}`).join('; ');
}

/** The pipeline's stdout: the verdict first, then what each figure was measured on; at most ~20 lines for any model. */
export function verdictText(h: Headline, extra: { bundleVerified: string; dataLine: string; timing: string; reportDir: string; planDir: string | null }): string[] {
  const e = h.evaluation, p = h.plan;
  const lines = [`dejavu pipeline: ${h.model} (${h.shape})`];
  if (p) {
    lines.push(`verdict: decode ${p.speedup.toFixed(2)}x dense at ${signedPct(p.pplIncrease, 3)} perplexity (budget +${pct(p.budget)}); bundle: ${h.bundle} (${extra.bundleVerified})`);
    const short = (m: string) => m.replace(/^predicted \((>=|top)[^,]*, recall ([\d.]+)\)$/, (_, k: string, r: string) => `predicted (${k === '>=' ? 'threshold' : 'top-k'} at recall ${r})`);
    lines.push(`  plan (MLP): ${modeRanges(p.layers.map((l) => ({ layer: l.layer, mode: short(l.mlp) })))}` +
      (p.layers.every((l) => l.heads === 'dense') ? '; heads dense' : `; heads: ${modeRanges(p.layers.map((l) => ({ layer: l.layer, mode: l.heads })))}`) +
      (p.layers.some((l) => l.inputs) ? `; input thresholds: ${modeRanges(p.layers.filter((l) => l.inputs).map((l) => ({ layer: l.layer, mode: l.inputs })))}` : ''));
    lines.push(`  verified by the decode runtime on ${count(p.tokens)} held-out tokens the search did not see: perplexity ${p.densePerplexity.toFixed(3)} dense -> ${p.perplexity.toFixed(3)} planned;`,
      `  ${p.denseStepMs.toFixed(3)} -> ${p.stepMs.toFixed(3)} ms per token (the cost model estimated ${p.estimatedSpeedup.toFixed(2)}x)`);
  } else lines.push(`verdict: no plan (plan.enabled: false), each layer follows its trained rule; bundle: ${h.bundle} (${extra.bundleVerified})`);
  if (e.dense !== undefined) {
    const vs = (x: number | undefined) => (x === undefined ? '-' : `${x.toFixed(3)} (${signedPct(x / e.dense! - 1)})`);
    lines.push(`predictors alone (evaluate-recall, first ${count(e.tokens)} tokens of ${e.text}): perplexity ${e.dense.toFixed(3)} dense, ${vs(e.predicted)} predicted MLP,`,
      `  ${vs(e.oracle)} oracle MLP at the same per-layer density`);
  }
  lines.push(`  held-out activations (${count(e.heldoutTokens)} tokens): mean MLP recall ${e.meanRecall.toFixed(3)}, mean density ${pct(e.meanDensity)} predicted vs ${pct(e.trueDensity)} truly active`);
  lines.push(`details: ${extra.reportDir}/report.md (per-layer tables, plots)${extra.planDir ? `, ${extra.planDir}/report.md (plan table, frontier.svg)` : ''}; --verbose prints them`,
    `terms (oracle, density, recall, lossless, predicted, verified): ${GLOSSARY}`, extra.dataLine, extra.timing);
  return lines;
}
