/**
 * The pieces of one layer's MLP fit (fit-mlp.ts), as jobs that run in a worker thread or in-process with the same
 * code: a shard's moments and validation rows, the closed-form fits (the decompositions), a chunk of validation
 * rows' exact scores, a chunk of a candidate predictor's scores and rank histogram. The work is cut the same way for
 * any worker count (one job per shard, fixed chunks of CHUNK_ROWS rows) and the caller combines the parts in job
 * order, so the fit does not depend on how many workers ran the jobs, or which.
 */
import * as tf from '@tensorflow/tfjs-core';
import { iterateLayer, readManifest, type ActivationsManifest } from '../activations/dataset.js';
import { readSync } from '../util/tfx.js';
import { closedFormFits, MomentAccumulator, normalizeByResidual, type LinearFit, type MomentPartial, type Moments } from './closed-form.js';
import { labelsFor, type LabelRule } from './labels.js';
import { RankHistogram } from './metrics.js';
import { exactScores, mlpInput, readMlpSite, type MlpSite } from './mlp-site.js';
import { disposePredictor, fromHost, predictLogits, swigluScore, type GateAct, type HostPredictor } from './predictor.js';

/** validation rows per scoring job (fixed: the chunking, and so every sum, is the same for any worker count) */
export const CHUNK_ROWS = 1024;

export type MlpInput = 'h_mlp' | 'x_attn' | 'x_mlp';

/** One shard of a layer: the moments of h over its training rows (about `shift`), and its validation rows. */
export interface MomentsJob { kind: 'mlp-moments'; dir: string; modelDir: string; layer: number; shard: number; label: LabelRule; valEvery: number; shift: Float32Array; fields: string[]; rawInputs: MlpInput[] }
export interface MomentsPart extends MomentPartial { rows: number; valN: number; h: Float32Array; y: Uint8Array; raw: Partial<Record<MlpInput, Float32Array>> }

/**
 * Rows [start, end) of the validation inputs h (shared): the first projection's pre-activations and magnitude
 * weights, written into rows [start, end) of the shared `z` and `weights` ([n, F]).
 */
export interface ExactJob { kind: 'mlp-exact'; dir: string; modelDir: string; layer: number; h: Float32Array; start: number; end: number; z: Float32Array; weights: Float32Array }
export type ExactPart = Record<string, never>;

/**
 * Rows [start, end) scored by a candidate predictor (x, y, w shared): the scores, written into rows [start, end) of
 * the shared `scores` [n, F], and their rank histogram.
 */
export interface ScoreJob { kind: 'mlp-score'; x: Float32Array; y: Uint8Array; w: Float32Array | null; start: number; end: number; host: HostPredictor; hostUp?: HostPredictor; gateAct?: GateAct; scores: Float32Array }
/** `pos`, `posW`: the positives' scores and magnitude weights, in row order (the threshold rule's calibration) */
export interface ScorePart { hist: Float64Array; whist: Float64Array | null; tokens: number; positives: number; weight: number; pos: Float32Array; posW: Float32Array }

/**
 * The closed-form fits of a layer at every rank (two d x d eigendecompositions, one after the other: ~0.15 s at d 256,
 * ~70 s at d 2048 with three ranks, bench:fit), as a job so that two layers' fits run on two workers. SwiGLU: the
 * gate's fits too.
 */
export interface FitJob { kind: 'mlp-fit'; dir: string; modelDir: string; layer: number; mom: Moments; ranks: number[]; normalize: boolean }
export interface FitPart { ups: LinearFit[]; gates: LinearFit[] | null }

export type MlpJob = MomentsJob | FitJob | ExactJob | ScoreJob;

/** Where the jobs run: `run` resolves with the job's result (runMlpJob's), whatever thread ran it. */
export interface MlpExec { run<R>(label: string, job: MlpJob): Promise<R> }

/** In this thread, one job at a time (each after a turn of the event loop). */
export const inlineMlpExec: MlpExec = {
  run: async <R>(_label: string, job: MlpJob) => { await new Promise((r) => setImmediate(r)); return runMlpJob(job) as R; },
};

// a thread reads a layer's MLP site (checkpoint weights) once, for the layer it last worked on
let siteCache: { key: string; site: MlpSite } | null = null;
const manifests = new Map<string, ActivationsManifest>();
function manifestOf(dir: string): ActivationsManifest {
  if (!manifests.has(dir)) manifests.set(dir, readManifest(dir));
  return manifests.get(dir)!;
}
function siteOf(dir: string, modelDir: string, layer: number): MlpSite {
  const key = JSON.stringify([dir, modelDir, layer]);
  if (siteCache?.key !== key) siteCache = { key, site: readMlpSite(modelDir, manifestOf(dir).model.config, layer) };
  return siteCache.site;
}

/** Rows `rows` of a row-major [*, w] array. */
export function pickRows(src: Float32Array, rows: number[], w: number): Float32Array {
  const o = new Float32Array(rows.length * w);
  rows.forEach((r, i) => o.set(src.subarray(r * w, (r + 1) * w), i * w));
  return o;
}

/** Zeros in shared memory: workers write their rows of a result into it. */
export function sharedF32(n: number): Float32Array { return new Float32Array(new SharedArrayBuffer(Math.max(1, n) * 4)).subarray(0, n); }

/** A copy of `a` in shared memory (passed to workers without a copy). */
export function shared<T extends Float32Array | Uint8Array>(a: T): T {
  const C = a.constructor as { new (b: SharedArrayBuffer): T; BYTES_PER_ELEMENT: number };
  const o = new C(new SharedArrayBuffer(Math.max(1, a.length) * C.BYTES_PER_ELEMENT)).subarray(0, a.length) as T;
  o.set(a);
  return o;
}

/** The training rows of a batch (sequence not in the validation split). */
/** Every valEvery-th sequence (seq % valEvery === valEvery - 1) is a validation sequence. */
export const valEveryOf = (validationFraction: number): number => Math.max(2, Math.round(1 / validationFraction));

export function splitRows(seq: Int32Array, rows: number, valEvery: number): { tr: number[]; va: number[] } {
  const tr: number[] = [], va: number[] = [];
  for (let r = 0; r < rows; r++) (seq[r]! % valEvery === valEvery - 1 ? va : tr).push(r);
  return { tr, va };
}

function moments(j: MomentsJob): MomentsPart {
  const m = manifestOf(j.dir);
  const site = siteOf(j.dir, j.modelDir, j.layer);
  const { d, F } = site;
  const acc = new MomentAccumulator(d, j.shift);
  const hs: Float32Array[] = [], ys: Uint8Array[] = [], raws = new Map<MlpInput, Float32Array[]>(j.rawInputs.map((i) => [i, []]));
  let rows = 0, valN = 0;
  for (const b of iterateLayer(j.dir, m, j.layer, j.fields, (i) => i === j.shard)) {
    const h = mlpInput(site, b.xMlp, b.rows);
    const y = labelsFor('mlp', j.label, F, b);
    const { tr, va } = splitRows(b.seq, b.rows, j.valEvery);
    acc.add(tr.length === b.rows ? h : pickRows(h, tr, d), tr.length);
    if (va.length) {
      hs.push(pickRows(h, va, d));
      for (const i of j.rawInputs) raws.get(i)!.push(pickRows(i === 'x_attn' ? b.xAttn : b.xMlp, va, d));
      const yy = new Uint8Array(va.length * F);
      va.forEach((r, k) => yy.set(y.subarray(r * F, (r + 1) * F), k * F));
      ys.push(yy);
      valN += va.length;
    }
    rows += b.rows;
  }
  const raw = Object.fromEntries([...raws].map(([k, v]) => [k, concat(v, (n) => new Float32Array(n))]));
  return { ...acc.partial(), rows, valN, h: concat(hs, (n) => new Float32Array(n)), y: concat(ys, (n) => new Uint8Array(n)), raw };
}

export function concat<T extends Float32Array | Uint8Array>(parts: T[], make: (n: number) => T): T {
  const o = make(parts.reduce((s, p) => s + p.length, 0));
  let k = 0;
  for (const p of parts) { o.set(p, k); k += p.length; }
  return o;
}

function fits(j: FitJob): FitPart {
  const site = siteOf(j.dir, j.modelDir, j.layer);
  const swiglu = site.activation === 'swiglu';
  const norm = (f: LinearFit) => (j.normalize && !swiglu ? normalizeByResidual(f, site.F) : f);
  return { ups: closedFormFits(site.up, site.upBias ?? null, site.F, j.mom, j.ranks).map(norm),
    gates: swiglu ? closedFormFits(site.gate!, site.gateBias ?? null, site.F, j.mom, j.ranks) : null };
}

function exact(j: ExactJob): ExactPart {
  const site = siteOf(j.dir, j.modelDir, j.layer);
  const { z, weights } = exactScores(site, j.h.subarray(j.start * site.d, j.end * site.d), j.end - j.start);
  j.z.set(z, j.start * site.F);
  j.weights.set(weights, j.start * site.F);
  return {};
}

function score(j: ScoreJob): ScorePart {
  const { d, out: F } = j.host;
  const n = j.end - j.start;
  const pa = fromHost(j.host), pb = j.hostUp ? fromHost(j.hostUp) : undefined;
  try {
    const scores = readSync(() => { const t = tf.tensor2d(j.x.subarray(j.start * d, j.end * d), [n, d]); return pb ? swigluScore(pa, pb, t, j.gateAct) : predictLogits(pa, t); });
    const y = j.y.subarray(j.start * F, j.end * F), w = j.w ? j.w.subarray(j.start * F, j.end * F) : undefined;
    const hist = new RankHistogram(F, j.w !== null);
    hist.add(scores, y, n, w);
    let np = 0;
    for (let i = 0; i < y.length; i++) np += y[i]!;
    const pos = new Float32Array(np), posW = new Float32Array(w ? np : 0);
    for (let i = 0, k = 0; i < y.length; i++) if (y[i]) { pos[k] = scores[i]!; if (w) posW[k] = w[i]!; k++; }
    j.scores.set(scores, j.start * F);
    return { hist: hist.hist, whist: hist.whist, tokens: hist.tokens, positives: hist.positives, weight: hist.weight, pos, posW };
  } finally {
    disposePredictor(pa);
    if (pb) disposePredictor(pb);
  }
}

export function runMlpJob(job: MlpJob): MomentsPart | FitPart | ExactPart | ScorePart {
  switch (job.kind) {
    case 'mlp-moments': return moments(job);
    case 'mlp-fit': return fits(job);
    case 'mlp-exact': return exact(job);
    case 'mlp-score': return score(job);
  }
}
