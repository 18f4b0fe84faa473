/**
 * A runtime plan: per layer, the MLP mode (dense | lossless | predicted with a rule | gate-threshold), the head mode
 * (dense | predicted with a rule) and the input-threshold sites (attn, o, mlp, down; docs/sparsity.md), as `dejavu
 * plan` chose them under a perplexity budget, with what it expected and measured.
 * Stored in plan.json and in the bundle manifest (checksummed); the decode runtime follows it (decodeModes).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import * as tf from '@tensorflow/tfjs-core';
import { UserError } from '../util/errors.js';
import { readSealedArtifact } from '../util/json-artifact.js';
import type { ModelConfig } from '../model/config.js';
import { actScalar, actTf, gatedScoreHost } from '../arch/traits.js';
import type { SparsityHooks } from '../model/forward.js';
import { SILU } from '../predictors/predictor.js';
import type { LoadedPredictors, LoadedSite } from '../predictors/hooks.js';
import type { HostPredictor } from '../predictors/predictor.js';
import { topKRow, type SelectionRule } from '../predictors/metrics.js';
import { rowMatrix, type RowMatrix } from '../model/kernels/rows.js';
import { createArena, type WasmArena } from '../model/kernels/wasm/kernels.js';
import { transpose2d } from '../util/transpose.js';
import { sitePointSchema } from './sites-report.js';
import { inputMajorNames, type DecodeModes, type HeadStep, type InputSite, type LayerInputs, type MlpStep } from './decoder.js';

export const PLAN_FORMAT_VERSION = 1;

const rule = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('topk'), k: z.number().int().positive() }),
  z.strictObject({ kind: z.literal('threshold'), value: z.number() }),
]);
const share = z.number().min(0).max(1);
const ms = z.number().nonnegative();

/** a threshold calibrated on the calibration text: `sparsity` = the share of the site's calibration scores below it */
const threshold = z.number().nonnegative().refine(Number.isFinite, 'expected a finite threshold');
/** an input-threshold site (TEAL; score wina: |x_i| · ‖W[:, i]‖, WINA): inputs scoring below `threshold` are not read */
export const inputSiteSchema = z.strictObject({ mode: z.literal('input-threshold'), score: z.enum(['abs', 'wina']), threshold, sparsity: share });
export type InputSitePlan = z.infer<typeof inputSiteSchema>;

export const layerPlanSchema = z.strictObject({
  layer: z.number().int().nonnegative(),
  mlp: z.discriminatedUnion('mode', [
    z.strictObject({ mode: z.literal('dense') }),
    /** ReLU: the first projection for every neuron, then only the rows of the second with a nonzero activation */
    z.strictObject({ mode: z.literal('lossless') }),
    /** the layer's predictor picks the neurons by `rule`, calibrated to `recall` on held-out activations */
    z.strictObject({ mode: z.literal('predicted'), rule, recall: share }),
    /** CATS (gated MLPs): the gate for every neuron, up and down rows only where |act(gate)| >= threshold */
    z.strictObject({ mode: z.literal('gate-threshold'), threshold, sparsity: share }),
  ]),
  /**
   * input-threshold sites (absent or {}: every input read): attn = q/k/v's shared input, o = the output projection's,
   * mlp = the MLP's first projections' (gate/up or fc1), down = the down projection's
   */
  inputs: z.strictObject({ attn: inputSiteSchema.optional(), o: inputSiteSchema.optional(), mlp: inputSiteSchema.optional(), down: inputSiteSchema.optional() }).optional(),
  heads: z.discriminatedUnion('mode', [
    z.strictObject({ mode: z.literal('dense') }),
    z.strictObject({ mode: z.literal('predicted'), rule }),
  ]),
  /**
   * what the search expected of this layer: MLP / head density; the MLP's decode ms (cost model, predictor included);
   * the change of the attention's ms from keeping fewer heads (negative: saved); perplexity increase with only this
   * layer changed (search text)
   */
  expected: z.strictObject({ mlpDensity: share, headDensity: share, mlpMs: ms, headDeltaMs: z.number(), pplIncrease: z.number() }),
});
export type LayerPlan = z.infer<typeof layerPlanSchema>;

export const runtimePlanSchema = z.strictObject({
  formatVersion: z.literal(PLAN_FORMAT_VERSION),
  /** the decode runtime whose kernel costs priced the plan (absent: cpu, plans made before plans said so) */
  runtime: z.enum(['cpu', 'gpu']).optional(),
  maxPplIncrease: z.number().nonnegative(),
  layers: z.array(layerPlanSchema),
  /** the cost model's step time (ms per token, batch 1) of this plan and of the dense model */
  estimate: z.strictObject({ stepMs: ms, denseStepMs: ms, speedup: z.number().positive(), pplIncrease: z.number() }),
  /** measured by the runtime itself on held-out text the search did not see */
  verified: z.strictObject({ tokens: z.number().int().positive(), densePerplexity: z.number().positive(), perplexity: z.number().positive(), pplIncrease: z.number(), stepMs: ms,
      denseStepMs: ms, speedup: z.number().positive(),
      /** decoder-layer weights read per decoded token over the dense count (embeddings and LM head excluded), counted by the runtime */
      weightBytesShare: share.optional(),
      /** the same for the whole step: the LM head (and projections around it) included */
      stepWeightBytesShare: share.optional(),
      /**
       * the same plan decoded with 8-bit weights (q8_0 rows: int8 with a scale per 32; plan's eightBit option): its
       * perplexity on the same text (increase over the dense model in the plan's own weight format) and its step time
       * against that dense model, timed in alternating rounds
       */
      eightBit: z.strictObject({ perplexity: z.number().positive(), pplIncrease: z.number(), stepMs: ms, denseStepMs: ms, speedup: z.number().positive() }).optional() }),
});
export type RuntimePlan = z.infer<typeof runtimePlanSchema>;

/** Problems of a plan against a model (and its predictors' sites), each with its dotted path. */
export function planProblems(plan: RuntimePlan, c: Pick<ModelConfig, 'layers' | 'ffn' | 'heads' | 'activation' | 'gated'>, hasPredictor: (site: 'mlp' | 'heads', layer: number) => boolean): string[] {
  const p: string[] = [];
  if (plan.layers.length !== c.layers) p.push(`plan.layers: ${plan.layers.length} entries for a model of ${c.layers} layers`);
  plan.layers.forEach((l, i) => {
    const at = `plan.layers.${i}`;
    if (l.layer !== i) p.push(`${at}.layer: ${l.layer}, expected ${i}`);
    if (l.mlp.mode === 'lossless' && c.activation !== 'relu') p.push(`${at}.mlp: the lossless mode needs a ReLU MLP (this model's is ${c.activation})`);
    const gated = c.gated;
    if (l.mlp.mode === 'gate-threshold' && !gated) p.push(`${at}.mlp: the gate-threshold mode needs a gated MLP (this model's is ${c.activation})`);
    if (l.inputs?.mlp && gated && l.mlp.mode !== 'dense') p.push(`${at}.inputs.mlp: an input threshold on a gated MLP's first projections computes every neuron; it runs with the dense MLP mode only (this layer's is ${l.mlp.mode})`);
    if (l.mlp.mode === 'predicted') {
      if (!hasPredictor('mlp', i)) p.push(`${at}.mlp: predicted, but layer ${i} has no MLP predictor weights`);
      if (l.mlp.rule.kind === 'topk' && l.mlp.rule.k > c.ffn) p.push(`${at}.mlp.rule.k: ${l.mlp.rule.k} > ${c.ffn} neurons`);
    }
    if (l.heads.mode === 'predicted') {
      if (!hasPredictor('heads', i)) p.push(`${at}.heads: predicted, but layer ${i} has no head predictor`);
      if (l.heads.rule.kind === 'topk' && l.heads.rule.k > c.heads) p.push(`${at}.heads.rule.k: ${l.heads.rule.k} > ${c.heads} heads`);
    }
  });
  return p;
}

/**
 * A predictor on the host: scores [out] of one input vector through the row kernels. fc2 is kept as its r rows of
 * length `out` and applied by axpy: as [out, r] rows (r = 64 at d 256) the per-row overhead made the predictor cost
 * more than the MLP's whole first projection (plan stage's cost model).
 */
class HostScorer {
  private readonly fc1: RowMatrix; private readonly fc2t: RowMatrix;
  private readonly u: Float32Array;
  constructor(private readonly p: HostPredictor, arena: WasmArena | null) {
    this.fc1 = rowMatrix(p.fc1Weight, p.r, p.d, arena);
    this.fc2t = rowMatrix(transpose2d(p.fc2Weight, p.out, p.r), p.r, p.out, arena);
    this.u = new Float32Array(p.r);
  }
  score(x: Float32Array, out: Float32Array): void {
    this.fc1.matvec(x, this.u, undefined, this.p.fc1Bias);
    if (this.p.hiddenActivation === 'relu') for (let i = 0; i < this.u.length; i++) if (this.u[i]! < 0) this.u[i] = 0;
    out.set(this.p.fc2Bias);
    this.fc2t.axpy(this.u, out);
  }
}

/** ids (ascending) that `rule` keeps of one row of scores */
function applyRule(s: Float32Array, rule: SelectionRule, scratch: Float32Array, ids: Int32Array): Int32Array {
  if (rule.kind === 'topk') return topKRow(s, rule.k, scratch);
  let n = 0;
  for (let j = 0; j < s.length; j++) if (s[j]! >= rule.value) ids[n++] = j;
  return ids.slice(0, n);
}

/** a site's pick function: its input vector -> the ids its rule keeps */
export function sitePicker(site: LoadedSite, rule: SelectionRule, W: number, arena: WasmArena | null): (x: Float32Array) => Int32Array {
  if (!site.host) throw new Error(`a ${site.entry.predictor} site has no predictor weights to pick with`);
  const main = new HostScorer(site.host, arena);
  const up = site.hostUp ? new HostScorer(site.hostUp, arena) : null;
  const s = new Float32Array(W), su = new Float32Array(W), scratch = new Float32Array(W), ids = new Int32Array(W), act = actScalar(site.gateAct ?? SILU);
  return (x) => {
    main.score(x, s);
    if (up) { up.score(x, su); gatedScoreHost(act, s, su, s); } // gated: |act(gate) * up|
    return applyRule(s, rule, scratch, ids);
  };
}

export interface BuiltModes { modes: DecodeModes; dispose(): void }

/** a plan's input sites as the runtime's (thresholds; WINA scores) */
export function planInputs(plan: Pick<RuntimePlan, 'layers'>): (LayerInputs | undefined)[] {
  const site = (x: InputSitePlan | undefined) => (x ? { t: x.threshold, wina: x.score === 'wina' } : undefined);
  return plan.layers.map((l) => (l.inputs ? { attn: site(l.inputs.attn), o: site(l.inputs.o), mlp: site(l.inputs.mlp), down: site(l.inputs.down) } : undefined));
}

/**
 * The forward pass's masks (SparsityHooks.sites) of per-layer input thresholds and gate thresholds (CATS: on
 * |act(gate)|), keeping what the decode runtime keeps: |x_i| (wina: |x_i| · norms[layer][site][i]) >= t. The plan
 * measures its options' perplexities with them, batched.
 */
export function siteMasks(c: Pick<ModelConfig, 'act' | 'actThreshold'>, layers: ({ inputs?: LayerInputs | undefined; gate?: number | undefined } | undefined)[],
    norms: Partial<Record<InputSite, Float32Array>>[]): NonNullable<SparsityHooks['sites']> {
  const keep = (score: tf.Tensor, t: number) => tf.cast(tf.greaterEqual(score, t), 'float32');
  return (i, site, x) => {
    const l = layers[i];
    if (site === 'gate') return l?.gate === undefined ? null : keep(tf.abs(actTf(c, x)), l.gate);
    const s = l?.inputs?.[site];
    if (!s) return null;
    const nm = s.wina ? norms[i]?.[site] : undefined;
    if (s.wina && !nm) throw new Error(`siteMasks: layer ${i} ${site} is scored by WINA but has no column norms`);
    return keep(nm ? tf.mul(tf.abs(x), tf.tensor1d(nm)) : tf.abs(x), s.t);
  };
}

/** the weight names a plan needs stored input-major: loadModel(dir, { decode: { inputMajor: planInputMajor(plan, config) } }) runs it */
export function planInputMajor(plan: Pick<RuntimePlan, 'layers'> | null | undefined, c: Pick<ModelConfig, 'gated'>): Set<string> {
  return plan ? inputMajorNames({ inputs: planInputs(plan) }, c.gated) : new Set();
}

/**
 * Per-layer decode modes from predictors and, when given, a plan. Without a plan each layer follows its trained
 * entry: dense -> dense, exact -> lossless, low-rank -> its rule; heads with a predictor -> its rule.
 */
export function decodeModes(c: ModelConfig, preds: LoadedPredictors | null, plan: Pick<RuntimePlan, 'layers'> | null, use: { mlp: boolean; heads: boolean } = { mlp: true, heads: true }): BuiltModes {
  let arena: WasmArena | null | undefined; // made on the first predictor that needs it
  const picker = (site: LoadedSite, rule: SelectionRule, W: number) => sitePicker(site, rule, W, arena === undefined ? (arena = createArena()) : arena);
  const select = (site: LoadedSite, rule: SelectionRule): MlpStep => {
    const pick = picker(site, rule, c.ffn), input = site.entry.input;
    return { mode: 'select', pick: (x) => pick(input === 'h_mlp' ? x.h : input === 'x_mlp' ? x.xMlp : x.xAttn) };
  };
  const mlp: MlpStep[] = [], heads: HeadStep[] = [];
  for (let i = 0; i < c.layers; i++) {
    const ms = preds?.mlp.get(i), hs = preds?.heads.get(i);
    const lp = plan?.layers[i];
    if (!use.mlp || (!lp && !ms)) mlp.push({ mode: 'dense' });
    else if (lp?.mlp.mode === 'predicted') {
      if (!ms) throw new Error(`plan: layer ${i} MLP is predicted but there is no predictor`);
      mlp.push(select(ms, lp.mlp.rule));
    } else if (lp?.mlp.mode === 'gate-threshold') mlp.push({ mode: 'gate-threshold', t: lp.mlp.threshold });
    else if (lp) mlp.push({ mode: lp.mlp.mode });
    else if (ms!.entry.predictor === 'dense') mlp.push({ mode: 'dense' });
    else if (ms!.entry.predictor === 'exact') mlp.push({ mode: 'lossless' });
    else mlp.push(select(ms!, ms!.entry.rule!));
    const headRule = lp ? (lp.heads.mode === 'predicted' ? lp.heads.rule : null) : hs?.entry.rule ?? null;
    if (!use.heads || !hs || !headRule) heads.push({ mode: 'dense' });
    else {
      const pick = picker(hs, headRule, c.heads), prev = hs.sourceLayerOffset === -1;
      heads.push({ mode: 'select', pick: (x) => pick(prev ? x.xAttnPrev : x.xAttn) });
    }
  }
  const inputs = plan ? planInputs(plan) : undefined;
  return { modes: { mlp, heads, ...(inputs?.some(Boolean) ? { inputs } : {}) }, dispose: () => { arena?.dispose(); } };
}

/** plan.json (the plan stage's output): the plan, the predictors it was made for, and what the search explored. */
export const planFileSchema = z.looseObject({
  kind: z.literal('dejavu-plan'),
  formatVersion: z.literal(PLAN_FORMAT_VERSION),
  toolVersion: z.string(),
  /** content hash of the predictors folder the plan was made for (export-bundle refuses other predictors) */
  predictorsSha256: z.string().regex(/^[0-9a-f]{64}$/),
  plan: runtimePlanSchema,
  /** the search's path: each accepted move with the plan's estimated speedup and perplexity increase */
  frontier: z.array(z.looseObject({ step: z.number().int().nonnegative(), move: z.string(), speedup: z.number().positive(), pplIncrease: z.number() })),
  /** the threshold sites' sparsity-vs-perplexity frontier per layer and site, and what the plan chose (absent: no sites searched) */
  sites: z.array(sitePointSchema).optional(),
  /** the file's seal (util/seal): sha256 of its canonical JSON less this field; an edited plan is refused */
  sealSha256: z.string().regex(/^[0-9a-f]{64}$/),
});
export type PlanFile = z.infer<typeof planFileSchema>;

const REPLAN = 're-run `dejavu plan` to write the plan again';

/** Read DIR/plan.json: its seal checked (an edited plan is refused), then its schema. */
export function readPlanFile(dir: string): PlanFile {
  const f = path.join(dir, 'plan.json');
  if (!fs.existsSync(f)) throw new UserError(`${dir} is not a plan folder (no plan.json)`, 'pass a folder written by `dejavu plan`');
  return readSealedArtifact(planFileSchema, f, 'plan', REPLAN);
}
