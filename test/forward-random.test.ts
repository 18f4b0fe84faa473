/**
 * The tfjs forward pass against the float64 naive reference on random tiny Hugging Face checkpoints, plus
 * metamorphic checks (batching, padding, residency, sparsity masks, KV cache), the decode runtime (DecodeSession:
 * host row kernels, one token at a time) against the forward pass, and tensor-leak checks.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { loadModel, type Model } from '../src/model/model.js';
import {
  disposeCache, disposeOutput, forward, newCache, type CaptureKind, type ForwardOutput, type SparsityHooks,
} from '../src/model/forward.js';
import { DecodeSession, denseModes, sessionFromPrefill, type DecodeModes, type HeadContext, type MlpContext } from '../src/runtime/decoder.js';
import { generate } from '../src/runtime/generate.js';
import { liveArenaBytes } from '../src/model/kernels/wasm/kernels.js';
import { tmpDir } from './helpers.js';
import { naiveForward, relFrobenius, type HFConfig, type NaiveTensor, type NaiveWeights } from './reference/naive-forward.js';
import { makeRandomCheckpoint, type RandomCkptOptions } from './reference/random-checkpoint.js';

const TOL = 1e-4;
const KINDS: Exclude<CaptureKind, 'headNorm'>[] = ['xAttn', 'xMlp', 'mlpAct', 'attnContext'];
const CAPTURE_ALL = { xAttn: true, xMlp: true, mlpAct: true, attnContext: true } as const;

const ROOT = tmpDir('dejavu-forward-random-');
beforeAll(async () => { await ensureBackend('wasm'); });
afterAll(() => fs.rmSync(ROOT, { recursive: true, force: true }));

interface Case { name: string; opts: RandomCkptOptions }
const CASES: Case[] = [
  { name: 'opt-preln', opts: { family: 'opt', seed: 11 } },
  { name: 'opt-postln-proj', opts: { family: 'opt', preLN: false, wordEmbedProjDim: 16, seed: 12 } },
  { name: 'opt-untied', opts: { family: 'opt', tied: false, seed: 13 } },
  { name: 'opt-nobias-f16', opts: { family: 'opt', attentionBias: false, dtype: 'F16', seed: 14 } },
  { name: 'opt-postln-proj-untied-bf16-sharded', opts: { family: 'opt', preLN: false, wordEmbedProjDim: 48, tied: false, dtype: 'BF16', shardCount: 3, seed: 15 } },
  { name: 'llama-gqa-tied', opts: { family: 'llama', heads: 4, kvHeads: 2, tied: true, seed: 21 } },
  { name: 'llama-bias-headdim', opts: { family: 'llama', heads: 4, kvHeads: 2, headDim: 12, attentionBias: true, mlpBias: true, ropeTheta: 500000, seed: 22 } },
  { name: 'llama-f16', opts: { family: 'llama', dtype: 'F16', seed: 23 } },
  { name: 'llama-bf16-sharded-mqa', opts: { family: 'llama', heads: 4, kvHeads: 1, dtype: 'BF16', shardCount: 4, layers: 3, seed: 24 } },
];

interface Built { dir: string; config: HFConfig; weights: NaiveWeights }
const built = new Map<string, Built>();
function build(c: Case): Built {
  let b = built.get(c.name);
  if (!b) {
    const dir = path.join(ROOT, c.name);
    b = { dir, ...makeRandomCheckpoint(dir, c.opts) };
    built.set(c.name, b);
  }
  return b;
}

/** seeded token ids in [lo, V) */
function tokens(n: number, V: number, seed: number, lo = 3): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return lo + (s % (V - lo)); });
}

function data(t: tf.Tensor | undefined, what: string): Float32Array {
  if (!t) throw new Error(`${what}: tensor missing`);
  return t.dataSync() as Float32Array;
}

/** last-dim width of a captured / output tensor */
function width(t: tf.Tensor): number { return t.shape[t.shape.length - 1]!; }

/** rows [b, t0 .. t0+n) of a [B, T, X] tensor as a copy */
function rows(t: tf.Tensor, b: number, t0: number, n: number): Float32Array {
  const [, T] = t.shape as [number, number];
  const X = width(t);
  return (t.dataSync() as Float32Array).slice((b * T + t0) * X, (b * T + t0 + n) * X);
}

/** every output kind of `a` row (b, offset) vs `ref` row (rb, 0) over n tokens: max relative Frobenius error */
function compareOutputs(a: ForwardOutput, b: number, t0: number, ref: ForwardOutput, rb: number, n: number, L: number): Record<string, number> {
  const errs: Record<string, number> = {};
  errs.logits = relFrobenius(rows(a.logits!, b, t0, n), rows(ref.logits!, rb, 0, n));
  for (const k of KINDS) for (let i = 0; i < L; i++) {
    const x = a.captured[k]?.[i], y = ref.captured[k]?.[i];
    if (!x || !y) throw new Error(`${k}[${i}] missing`);
    errs[`${k}.${i}`] = relFrobenius(rows(x, b, t0, n), rows(y, rb, 0, n));
  }
  return errs;
}

function worst(errs: Record<string, number>): [string, number] {
  return Object.entries(errs).reduce((m, e) => (e[1] > m[1] ? e : m), ['none', 0] as [string, number]);
}

/**
 * Reference for "the last layer's MLP activations masked": from the naive xMlp h and mlpAct of the last layer,
 * compute h + down(act * mask) (+ bias), then the rest of the model (post-LN norm, final norm, project_out, lm_head).
 */
function naiveTailLogits(config: HFConfig, w: NaiveWeights, h: NaiveTensor, act: NaiveTensor, keep: (t: number, f: number) => boolean): Float64Array {
  const L = config.num_hidden_layers as number;
  const opt = config.model_type === 'opt';
  const [T, d] = h.shape as [number, number];
  const F = act.shape[1]!;
  const get = (n: string) => { const t = w.get(n); if (!t) throw new Error(`no ${n}`); return t; };
  const lin = (x: Float64Array, rowsN: number, W: NaiveTensor, bias?: NaiveTensor) => {
    const [o, i] = W.shape as [number, number];
    const y = new Float64Array(rowsN * o);
    for (let r = 0; r < rowsN; r++) for (let j = 0; j < o; j++) {
      let s = bias ? bias.data[j]! : 0;
      for (let k = 0; k < i; k++) s += x[r * i + k]! * W.data[j * i + k]!;
      y[r * o + j] = s;
    }
    return y;
  };
  const normRows = (x: Float64Array, g: NaiveTensor, b: NaiveTensor | undefined, eps: number, rms: boolean) => {
    const y = new Float64Array(x.length);
    for (let r = 0; r < T; r++) {
      let mean = 0;
      if (!rms) { for (let i = 0; i < d; i++) mean += x[r * d + i]!; mean /= d; }
      let v = 0;
      for (let i = 0; i < d; i++) v += (x[r * d + i]! - mean) ** 2;
      v /= d;
      for (let i = 0; i < d; i++) y[r * d + i] = ((x[r * d + i]! - mean) / Math.sqrt(v + eps)) * g.data[i]! + (b ? b.data[i]! : 0);
    }
    return y;
  };
  const a = new Float64Array(act.data);
  for (let t = 0; t < T; t++) for (let f = 0; f < F; f++) if (!keep(t, f)) a[t * F + f] = 0;
  const lp = opt ? `model.decoder.layers.${L - 1}.` : `model.layers.${L - 1}.`;
  const down = opt ? get(lp + 'fc2.weight') : get(lp + 'mlp.down_proj.weight');
  const downB = w.get(opt ? lp + 'fc2.bias' : lp + 'mlp.down_proj.bias');
  const m = lin(a, T, down, downB);
  let x = new Float64Array(T * d);
  for (let i = 0; i < x.length; i++) x[i] = h.data[i]! + m[i]!;
  let width = d;
  if (opt) {
    const pre = config.do_layer_norm_before !== false;
    if (!pre) x = normRows(x, get(lp + 'final_layer_norm.weight'), w.get(lp + 'final_layer_norm.bias'), 1e-5, false);
    else x = normRows(x, get('model.decoder.final_layer_norm.weight'), w.get('model.decoder.final_layer_norm.bias'), 1e-5, false);
    if (w.has('model.decoder.project_out.weight')) {
      const po = get('model.decoder.project_out.weight');
      x = lin(x, T, po);
      width = po.shape[0]!;
    }
  } else {
    x = normRows(x, get('model.norm.weight'), undefined, config.rms_norm_eps as number, true);
  }
  const head = config.tie_word_embeddings ? get(opt ? 'model.decoder.embed_tokens.weight' : 'model.embed_tokens.weight') : get('lm_head.weight');
  expect(head.shape[1]).toBe(width);
  return lin(x, T, head);
}

/** [rows] token ids, fed to a DecodeSession one position at a time -> logits [rows, T, V] (row-major, like forward's) */
function decodeAll(s: DecodeSession, ids: number[][], V: number): Float32Array {
  const B = ids.length, T = ids[0]!.length;
  const out = new Float32Array(B * T * V);
  for (let t = 0; t < T; t++) {
    const lg = s.step(ids.map((r) => r[t]!));
    for (let b = 0; b < B; b++) out.set(lg.subarray(b * V, (b + 1) * V), (b * T + t) * V);
  }
  return out;
}

/** decode modes that select fixed ids per layer (and per row: `row()` names the row being stepped) */
function fixedModes(L: number, mlp: (l: number) => Int32Array, heads: (l: number) => Int32Array): DecodeModes {
  return {
    mlp: Array.from({ length: L }, (_, l) => ({ mode: 'select' as const, pick: () => mlp(l) })),
    heads: Array.from({ length: L }, (_, l) => ({ mode: 'select' as const, pick: () => heads(l) })),
  };
}

/** 0/1 mask [B, T, n] holding sel[b] on every token of row b */
function maskOfRows(sel: Int32Array[], T: number, n: number): tf.Tensor3D {
  const B = sel.length;
  const m = new Float32Array(B * T * n);
  sel.forEach((ix, b) => { for (let t = 0; t < T; t++) for (const j of ix) m[(b * T + t) * n + j] = 1; });
  return tf.tensor3d(m, [B, T, n]);
}

const range = (n: number) => Int32Array.from({ length: n }, (_, i) => i);

// ---------------------------------------------------------------------------------------------------- parity

describe('tfjs forward vs naive float64 reference on random checkpoints', () => {
  for (const c of CASES) {
    it(`${c.name}: logits, xAttn, xMlp, mlpAct, attnContext per sequence < ${TOL}`, () => {
      const { dir, config, weights } = build(c);
      const model = loadModel(dir);
      try {
        const V = config.vocab_size as number;
        const L = config.num_hidden_layers as number;
        // two rows of the same length (no padding) and one shorter (ragged, right-padded internally)
        const ids = [tokens(10, V, 1), tokens(10, V, 2), tokens(6, V, 3)];
        const out = forward(model, ids, { capture: CAPTURE_ALL });
        try {
          expect(out.logits!.shape).toEqual([3, 10, V]);
          expect(out.mask[2]).toEqual([1, 1, 1, 1, 1, 1, 0, 0, 0, 0]);
          for (let b = 0; b < ids.length; b++) {
            const n = ids[b]!.length;
            const ref = naiveForward(config, weights, ids[b]!);
            const pairs: [string, tf.Tensor, NaiveTensor][] = [['logits', out.logits!, ref.logits]];
            for (let i = 0; i < L; i++) {
              pairs.push([`xAttn.${i}`, out.captured.xAttn![i]!, ref.xAttn[i]!]);
              pairs.push([`xMlp.${i}`, out.captured.xMlp![i]!, ref.xMlp[i]!]);
              pairs.push([`mlpAct.${i}`, out.captured.mlpAct![i]!, ref.mlpAct[i]!]);
              pairs.push([`attnContext.${i}`, out.captured.attnContext![i]!, ref.attnContext[i]!]);
            }
            for (const [what, t, r] of pairs) {
              expect(width(t), `${what} width`).toBe(r.shape[1]);
              const e = relFrobenius(rows(t, b, 0, n), r.data);
              expect(e, `${c.name} seq ${b} ${what}`).toBeLessThan(TOL);
            }
          }
        } finally {
          disposeOutput(out);
        }
      } finally {
        model.dispose();
      }
    });
  }

  it('the comparison is sensitive: a perturbed weight breaks parity', () => {
    const { dir, config, weights } = build(CASES[0]!);
    const w2: NaiveWeights = new Map(weights);
    const k = 'model.decoder.layers.1.fc2.weight';
    const t = weights.get(k)!;
    const d = new Float64Array(t.data);
    d[5] = d[5]! + 0.5;
    w2.set(k, { shape: t.shape, data: d });
    const model = loadModel(dir);
    const ids = tokens(8, config.vocab_size as number, 9);
    const out = forward(model, [ids]);
    const e = relFrobenius(data(out.logits, 'logits'), naiveForward(config, w2, ids).logits.data);
    disposeOutput(out);
    model.dispose();
    expect(e).toBeGreaterThan(TOL);
  });
});

// ---------------------------------------------------------------------------------------------------- metamorphic

const META = CASES.filter((c) => ['opt-preln', 'opt-postln-proj', 'llama-gqa-tied', 'llama-bias-headdim'].includes(c.name));

describe('metamorphic properties', () => {
  for (const c of META) {
    describe(c.name, () => {
      let model: Model;
      let V: number, L: number, F: number, H: number;
      beforeAll(() => {
        const b = build(c);
        model = loadModel(b.dir, { decode: true }); // + the decode runtime's row copies (DecodeSession)
        V = model.config.vocabSize; L = model.config.layers; F = model.config.ffn; H = model.config.heads;
      });
      afterAll(() => model?.dispose());

      it('batched ragged rows == each row alone, on the real tokens', () => {
        const ids = [tokens(9, V, 31), tokens(4, V, 32), tokens(6, V, 33), tokens(1, V, 34)];
        const batch = forward(model, ids, { capture: CAPTURE_ALL });
        try {
          for (let b = 0; b < ids.length; b++) {
            const one = forward(model, [ids[b]!], { capture: CAPTURE_ALL });
            const [k, e] = worst(compareOutputs(batch, b, 0, one, 0, ids[b]!.length, L));
            disposeOutput(one);
            expect(e, `row ${b} ${k}`).toBeLessThan(1e-5);
          }
        } finally { disposeOutput(batch); }
      });

      it('left padding with attentionMask == unpadded, on the real tokens', () => {
        const a = tokens(7, V, 41), b = tokens(10, V, 42);
        const pad = model.config.padTokenId ?? 0;
        const ids = [[pad, pad, pad, ...a], b];
        const attentionMask = [[0, 0, 0, ...a.map(() => 1)], b.map(() => 1)];
        const padded = forward(model, ids, { attentionMask, capture: CAPTURE_ALL });
        const ua = forward(model, [a], { capture: CAPTURE_ALL });
        const ub = forward(model, [b], { capture: CAPTURE_ALL });
        try {
          expect(padded.mask).toEqual(attentionMask);
          const [ka, ea] = worst(compareOutputs(padded, 0, 3, ua, 0, a.length, L));
          expect(ea, `left-padded row ${ka}`).toBeLessThan(1e-5);
          const [kb, eb] = worst(compareOutputs(padded, 1, 0, ub, 0, b.length, L));
          expect(eb, `full row ${kb}`).toBeLessThan(1e-5);
          // and without the mask the pads are attended to: the logits change
          const nomask = forward(model, ids);
          const e = relFrobenius(rows(nomask.logits!, 0, 3, a.length), rows(ua.logits!, 0, 0, a.length));
          disposeOutput(nomask);
          expect(e).toBeGreaterThan(1e-3);
        } finally { disposeOutput(padded); disposeOutput(ua); disposeOutput(ub); }
      });

      it('padding in the middle with attentionMask == unpadded (also vs the naive reference)', () => {
        const { config, weights } = build(c);
        const a = tokens(8, V, 45);
        const ids = [[...a.slice(0, 3), 0, 0, ...a.slice(3)]];
        const m = [1, 1, 1, 0, 0, 1, 1, 1, 1, 1];
        const out = forward(model, ids, { attentionMask: [m] });
        const ref = naiveForward(config, weights, ids[0]!, m);
        const u = forward(model, [a]);
        try {
          const lp = out.logits!.dataSync();
          const lu = u.logits!.dataSync();
          let k = 0;
          for (let t = 0; t < m.length; t++) {
            if (!m[t]) continue;
            expect(relFrobenius(lp, ref.logits.data, t * V, t * V, V), `token ${t} vs naive`).toBeLessThan(TOL);
            expect(relFrobenius(lp, lu, t * V, k * V, V), `token ${t} vs unpadded`).toBeLessThan(1e-5);
            k++;
          }
        } finally { disposeOutput(out); disposeOutput(u); }
      });

      it('streamed residency == resident, exactly', () => {
        const ids = [tokens(8, V, 51), tokens(5, V, 52)];
        const streamed = loadModel(build(c).dir, { residency: 'streamed' });
        expect(streamed.residency).toBe('streamed');
        expect(model.residency).toBe('resident');
        const a = forward(model, ids, { capture: CAPTURE_ALL });
        const before = tf.memory().numTensors;
        const b = forward(streamed, ids, { capture: CAPTURE_ALL });
        try {
          expect(Array.from(data(b.logits, 'logits'))).toEqual(Array.from(data(a.logits, 'logits')));
          for (const k of KINDS) for (let i = 0; i < L; i++)
            expect(Array.from(data(b.captured[k]![i], k)), `${k}.${i}`).toEqual(Array.from(data(a.captured[k]![i], k)));
        } finally { disposeOutput(a); disposeOutput(b); }
        // streamed layers are uploaded per call and released: nothing is left behind
        expect(tf.memory().numTensors).toBe(before - (1 + KINDS.length * L));
        streamed.dispose();
      });

      it('all-ones sparsity masks == dense, exactly; a DecodeSession selecting every neuron and head == dense modes == the forward pass', () => {
        const ids = [tokens(8, V, 61), tokens(8, V, 62)];
        const T = ids[0]!.length;
        const dense = forward(model, ids, { capture: CAPTURE_ALL });
        const ones: SparsityHooks = {
          mlp: (_i, { xMlp }) => ({ mask: tf.ones([xMlp.shape[0]!, xMlp.shape[1]!, F]) }),
          heads: (_i, { xAttn }) => ({ mask: tf.ones([xAttn.shape[0]!, xAttn.shape[1]!, H]) }),
        };
        const calls = { mlp: 0, heads: 0 };
        const counted: SparsityHooks = {
          mlp: (i, ctx) => { calls.mlp++; return ones.mlp!(i, ctx); },
          heads: (i, ctx) => { calls.heads++; return ones.heads!(i, ctx); },
        };
        const masked = forward(model, ids, { capture: CAPTURE_ALL, sparsity: counted });
        try {
          expect(calls).toEqual({ mlp: L, heads: L });
          expect(Array.from(data(masked.logits, 'masked'))).toEqual(Array.from(data(dense.logits, 'dense')));
          for (const k of KINDS) for (let i = 0; i < L; i++)
            expect(Array.from(data(masked.captured[k]![i], k)), `${k}.${i}`).toEqual(Array.from(data(dense.captured[k]![i], k)));

          // the decode runtime, one token at a time on the host: select-all picks == dense modes == forward
          const d = model.config.hidden;
          const picks = { mlp: 0, heads: 0 };
          const all: DecodeModes = {
            mlp: Array.from({ length: L }, () => ({ mode: 'select' as const, pick: (x: MlpContext) => {
              picks.mlp++;
              expect([x.h.length, x.xMlp.length, x.xAttn.length]).toEqual([d, d, d]);
              return range(F);
            } })),
            heads: Array.from({ length: L }, () => ({ mode: 'select' as const, pick: (x: HeadContext) => {
              picks.heads++;
              expect([x.xAttn.length, x.xAttnPrev.length]).toEqual([d, d]);
              return range(H);
            } })),
          };
          const sAll = new DecodeSession(model, all, ids.length), sDense = new DecodeSession(model, denseModes(L), ids.length);
          const la = decodeAll(sAll, ids, V), ld = decodeAll(sDense, ids, V);
          const fl = data(dense.logits, 'dense');
          expect(picks).toEqual({ mlp: L * T * ids.length, heads: L * T * ids.length });
          expect(relFrobenius(la, ld), 'select-all vs dense modes').toBeLessThan(1e-5);
          for (let b = 0; b < ids.length; b++) for (let t = 0; t < T; t++)
            expect(relFrobenius(ld, fl, (b * T + t) * V, (b * T + t) * V, V), `dense modes vs forward, row ${b} token ${t}`).toBeLessThan(1e-5);
          const n = L * T * ids.length;
          expect(sAll.counts).toEqual({ mlpSelected: n * F, mlpTotal: n * F, headsSelected: n * H, headsTotal: n * H });
          expect(sDense.counts).toEqual(sAll.counts);
        } finally { disposeOutput(dense); disposeOutput(masked); }
      });

      it('forward with masks (batched, full sequences) == DecodeSession with the same fixed picks, token by token (different selection per row, an empty head set)', () => {
        const ids = [tokens(7, V, 71), tokens(7, V, 72)];
        const B = ids.length, T = 7;
        // per layer, per row: a pseudo-random subset of neurons / heads
        const pick = (n: number, keepEvery: number, l: number, b: number) =>
          Int32Array.from([...Array(n).keys()].filter((j) => (j * 7 + l * 3 + b * 5) % keepEvery === 0));
        const mlpSel = Array.from({ length: L }, (_, l) => Array.from({ length: B }, (_, b) => pick(F, 3, l, b)));
        const headSel = Array.from({ length: L }, (_, l) => Array.from({ length: B }, (_, b) =>
          l === 0 && b === 1 ? new Int32Array(0) : pick(H, 2, l, b)));
        for (const l of mlpSel) for (const s of l) { expect(s.length).toBeGreaterThan(0); expect(s.length).toBeLessThan(F); }
        expect(mlpSel[0]![0]).not.toEqual(mlpSel[0]![1]); // the rows really differ
        const viaMask = forward(model, ids, { sparsity: {
          mlp: (i) => ({ mask: maskOfRows(mlpSel[i]!, T, F) }),
          heads: (i) => ({ mask: maskOfRows(headSel[i]!, T, H) }),
        } });
        const dense = forward(model, ids);
        try {
          const lm = data(viaMask.logits, 'mask');
          // one session per row
          const perRow = new Float32Array(B * T * V);
          for (let b = 0; b < B; b++) {
            const s = new DecodeSession(model, fixedModes(L, (l) => mlpSel[l]![b]!, (l) => headSel[l]![b]!), 1);
            perRow.set(decodeAll(s, [ids[b]!], V), b * T * V);
            const hs = headSel.reduce((a, l) => a + l[b]!.length, 0), ms = mlpSel.reduce((a, l) => a + l[b]!.length, 0);
            expect(s.counts).toEqual({ mlpSelected: T * ms, mlpTotal: T * L * F, headsSelected: T * hs, headsTotal: T * L * H });
          }
          // one session of B rows: the row being stepped is counted at layer 0's head pick (the first pick of a row's step)
          let row = -1;
          const multi: DecodeModes = {
            mlp: Array.from({ length: L }, (_, l) => ({ mode: 'select' as const, pick: () => mlpSel[l]![row]! })),
            heads: Array.from({ length: L }, (_, l) => ({ mode: 'select' as const, pick: () => { if (l === 0) row = (row + 1) % B; return headSel[l]![row]!; } })),
          };
          const batched = decodeAll(new DecodeSession(model, multi, B), ids, V);
          for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) {
            const o = (b * T + t) * V;
            expect(relFrobenius(perRow, lm, o, o, V), `one-row session vs masks, row ${b} token ${t}`).toBeLessThan(1e-5);
            expect(relFrobenius(batched, lm, o, o, V), `${B}-row session vs masks, row ${b} token ${t}`).toBeLessThan(1e-5);
          }
          // the selection matters: sparse != dense
          expect(relFrobenius(lm, data(dense.logits, 'dense'))).toBeGreaterThan(1e-3);
          expect(relFrobenius(perRow, data(dense.logits, 'dense'))).toBeGreaterThan(1e-3);
        } finally { disposeOutput(viaMask); disposeOutput(dense); }
      });

      it('a fixed MLP mask on the last layer == the naive reference with those activations zeroed', () => {
        const { config, weights } = build(c);
        const ids = tokens(9, V, 81);
        const T = ids.length;
        const keep = (t: number, f: number) => (f * 5 + t * 3) % 4 !== 0;
        const m = new Float32Array(T * F);
        for (let t = 0; t < T; t++) for (let f = 0; f < F; f++) m[t * F + f] = keep(t, f) ? 1 : 0;
        const hooks: SparsityHooks = { mlp: (i) => (i === L - 1 ? { mask: tf.tensor3d(m, [1, T, F]) } : null) };
        const sparse = forward(model, [ids], { capture: { mlpAct: true }, sparsity: hooks });
        const dense = forward(model, [ids], { capture: { mlpAct: true } });
        try {
          const ref = naiveForward(config, weights, ids);
          const want = naiveTailLogits(config, weights, ref.xMlp[L - 1]!, ref.mlpAct[L - 1]!, keep);
          const got = data(sparse.logits, 'sparse');
          expect(relFrobenius(got, want)).toBeLessThan(TOL);
          // the naive tail is right: without masking it reproduces the full naive logits
          expect(relFrobenius(naiveTailLogits(config, weights, ref.xMlp[L - 1]!, ref.mlpAct[L - 1]!, () => true), ref.logits.data)).toBeLessThan(1e-12);
          // and the masking matters
          expect(relFrobenius(got, data(dense.logits, 'dense'))).toBeGreaterThan(1e-4);
          // captured activations: exact zeros where masked, the dense values elsewhere
          const sa = data(sparse.captured.mlpAct![L - 1], 'sparse act'), da = data(dense.captured.mlpAct![L - 1], 'dense act');
          let zeroed = 0;
          for (let i = 0; i < sa.length; i++) {
            if (m[i]) expect(sa[i]).toBe(da[i]);
            else { expect(Math.abs(sa[i]!)).toBe(0); if (da[i] !== 0) zeroed++; }
          }
          expect(zeroed).toBeGreaterThan(0);
          // layers before the masked one are untouched
          for (let i = 0; i < L - 1; i++) expect(Array.from(data(sparse.captured.mlpAct![i], 'a'))).toEqual(Array.from(data(dense.captured.mlpAct![i], 'b')));
        } finally { disposeOutput(sparse); disposeOutput(dense); }
      });

      it('a head mask zeroes exactly those heads of the captured attention context', () => {
        const ids = [tokens(6, V, 85)];
        const hd = model.config.headDim;
        const keepHead = (t: number, h: number) => (t + h) % 3 !== 0;
        const m = new Float32Array(6 * H);
        for (let t = 0; t < 6; t++) for (let h = 0; h < H; h++) m[t * H + h] = keepHead(t, h) ? 1 : 0;
        const sparse = forward(model, ids, { capture: { attnContext: true, layers: [0] }, sparsity: { heads: (i) => (i === 0 ? { mask: tf.tensor3d(m, [1, 6, H]) } : null) } });
        const dense = forward(model, ids, { capture: { attnContext: true, layers: [0] } });
        try {
          expect(sparse.captured.attnContext![1]).toBeUndefined();
          const s = data(sparse.captured.attnContext![0], 's'), d = data(dense.captured.attnContext![0], 'd');
          for (let t = 0; t < 6; t++) for (let h = 0; h < H; h++) for (let j = 0; j < hd; j++) {
            const i = t * H * hd + h * hd + j;
            if (keepHead(t, h)) expect(s[i], `t${t} h${h}`).toBe(d[i]);
            else expect(Math.abs(s[i]!), `t${t} h${h}`).toBe(0);
          }
          expect(relFrobenius(data(sparse.logits, 's'), data(dense.logits, 'd'))).toBeGreaterThan(1e-4);
        } finally { disposeOutput(sparse); disposeOutput(dense); }
      });

      it('KV cache: token-by-token decoding == one full forward', () => {
        const ids = tokens(10, V, 91);
        const full = forward(model, [ids]);
        const fl = data(full.logits, 'full');
        const cache = newCache(model);
        try {
          for (let t = 0; t < ids.length; t++) {
            const step = forward(model, [[ids[t]!]], { cache });
            expect(step.logits!.shape).toEqual([1, 1, V]);
            const e = relFrobenius(data(step.logits, 'step'), fl, 0, t * V, V);
            disposeOutput(step);
            expect(e, `token ${t}`).toBeLessThan(TOL);
          }
          expect(cache.keyMask).toEqual([ids.map(() => 1)]);
          expect(cache.k[0]!.shape[2]).toBe(ids.length);
        } finally { disposeOutput(full); disposeCache(cache); }
      });

      it('KV cache: batched left-padded prefill, then decoding == each row in full', () => {
        const a = tokens(4, V, 101), b = tokens(6, V, 102);
        const contA = tokens(3, V, 103), contB = tokens(3, V, 104);
        const cache = newCache(model);
        const steps: ForwardOutput[] = [];
        try {
          steps.push(forward(model, [[0, 0, ...a], b], { cache, attentionMask: [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]] }));
          for (let s = 0; s < 3; s++) steps.push(forward(model, [[contA[s]!], [contB[s]!]], { cache }));
          expect(cache.keyMask).toEqual([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1]]);
          for (const [row, seq, pads] of [[0, [...a, ...contA], 2], [1, [...b, ...contB], 0]] as [number, number[], number][]) {
            const full = forward(model, [seq]);
            const fl = data(full.logits, 'full');
            const prompt = row === 0 ? a.length : b.length;
            for (let t = 0; t < prompt; t++)
              expect(relFrobenius(rows(steps[0]!.logits!, row, pads + t, 1), fl, 0, t * V, V), `row ${row} prompt ${t}`).toBeLessThan(TOL);
            for (let s = 0; s < 3; s++)
              expect(relFrobenius(rows(steps[s + 1]!.logits!, row, 0, 1), fl, 0, (prompt + s) * V, V), `row ${row} step ${s}`).toBeLessThan(TOL);
            disposeOutput(full);
          }
        } finally { for (const o of steps) disposeOutput(o); disposeCache(cache); }
      });

      it('KV cache with sparsity: masked prefill (forward, cache) + sessionFromPrefill + steps with the same picks == the full masked forward', () => {
        const ids = tokens(6, V, 111);
        const P = 3;
        const sel = Int32Array.from([...Array(F).keys()].filter((j) => j % 3 !== 1));
        const heads = Int32Array.from([...Array(H).keys()].filter((h) => h !== 1));
        const hooks: SparsityHooks = {
          mlp: (_i, { xMlp }) => ({ mask: maskOfRows([sel], xMlp.shape[1]!, F) }),
          heads: (_i, { xAttn }) => ({ mask: maskOfRows([heads], xAttn.shape[1]!, H) }),
        };
        const full = forward(model, [ids], { sparsity: hooks });
        const fl = data(full.logits, 'full');
        const dense = forward(model, [ids]);
        const cache = newCache(model);
        try {
          const pre = forward(model, [ids.slice(0, P)], { cache, sparsity: hooks });
          expect(relFrobenius(data(pre.logits, 'pre'), fl, 0, 0, P * V)).toBeLessThan(TOL);
          disposeOutput(pre);
          const s = sessionFromPrefill(model, fixedModes(L, () => sel, () => heads), cache);
          expect(s.position(0)).toBe(P);
          for (let t = P; t < ids.length; t++) {
            const lg = s.step([ids[t]!]);
            expect(relFrobenius(lg, fl, 0, t * V, V), `token ${t}`).toBeLessThan(TOL);
            // and the selection matters at this token
            expect(relFrobenius(lg, data(dense.logits, 'dense'), 0, t * V, V), `token ${t} vs dense`).toBeGreaterThan(1e-4);
          }
          expect(s.counts.mlpSelected).toBe((ids.length - P) * L * sel.length);
          expect(s.counts.headsSelected).toBe((ids.length - P) * L * heads.length);
        } finally { disposeOutput(full); disposeOutput(dense); disposeCache(cache); }
      });

      it('KV cache: batched left-padded prefill (forward) + sessionFromPrefill, then dense steps == each row in full', () => {
        const a = tokens(4, V, 121), b = tokens(6, V, 122);
        const contA = tokens(3, V, 123), contB = tokens(3, V, 124);
        const cache = newCache(model);
        const stepLogits: Float32Array[] = [];
        try {
          disposeOutput(forward(model, [[0, 0, ...a], b], { cache, attentionMask: [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]] }));
          const s = sessionFromPrefill(model, denseModes(L), cache);
          expect([s.position(0), s.position(1)]).toEqual([a.length, b.length]);
          for (let t = 0; t < 3; t++) stepLogits.push(s.step([contA[t]!, contB[t]!]));
          for (const [row, seq, prompt] of [[0, [...a, ...contA], a.length], [1, [...b, ...contB], b.length]] as [number, number[], number][]) {
            const full = forward(model, [seq]);
            const fl = data(full.logits, 'full');
            for (let t = 0; t < 3; t++)
              expect(relFrobenius(stepLogits[t]!, fl, row * V, (prompt + t) * V, V), `row ${row} step ${t}`).toBeLessThan(TOL);
            disposeOutput(full);
          }
          // the two rows are really different continuations (a row mix-up would fail above)
          expect(relFrobenius(stepLogits[0]!, stepLogits[0]!, 0, V, V)).toBeGreaterThan(1e-3);
        } finally { disposeCache(cache); }
      });

      if (c.opts.family === 'opt') {
        it('ReLU: lossless MLP steps == dense steps bit for bit, computing fewer rows of the second projection', () => {
          const ids = [tokens(9, V, 131), tokens(9, V, 132)];
          const lossless: DecodeModes = { mlp: Array.from({ length: L }, () => ({ mode: 'lossless' as const })), heads: denseModes(L).heads };
          const sl = new DecodeSession(model, lossless, ids.length), sd = new DecodeSession(model, denseModes(L), ids.length);
          const ll = decodeAll(sl, ids, V), ld = decodeAll(sd, ids, V);
          expect(Array.from(ll)).toEqual(Array.from(ld));
          expect(sl.counts.mlpTotal).toBe(sd.counts.mlpTotal);
          expect(sl.counts.mlpSelected).toBeLessThan(sl.counts.mlpTotal);
          expect(sl.counts.mlpSelected).toBeGreaterThan(0);
          expect(sd.counts.mlpSelected).toBe(sd.counts.mlpTotal);
        });
      }
    });
  }
});

// ---------------------------------------------------------------------------------------------------- leaks

describe('no tensor leaks', () => {
  for (const c of [CASES[1]!, CASES[6]!]) {
    describe(c.name, () => {
      let model: Model;
      let V: number, F: number, H: number;
      beforeAll(() => {
        model = loadModel(build(c).dir, { decode: true });
        V = model.config.vocabSize; F = model.config.ffn; H = model.config.heads;
      });
      afterAll(() => model?.dispose());

      const leakFree = (what: string, fn: () => void) => {
        const before = tf.memory().numTensors;
        fn();
        expect(tf.memory().numTensors, what).toBe(before);
      };

      it('loadModel + dispose (resident and streamed, with and without decode rows; their arena is freed too)', () => {
        for (const residency of ['resident', 'streamed'] as const) for (const decode of [false, true]) {
          const arena = liveArenaBytes();
          leakFree(`${residency}${decode ? ' + decode' : ''}`, () => {
            const m = loadModel(build(c).dir, { residency, decode });
            expect(tf.memory().numTensors).toBeGreaterThan(0);
            expect(m.decode === undefined).toBe(!decode);
            m.dispose();
          });
          expect(liveArenaBytes(), 'arena bytes after dispose').toBe(arena);
        }
      });

      it('dense forward with every capture, finalHidden and headNorm, after disposeOutput', () => {
        leakFree('dense', () => {
          const out = forward(model, [tokens(8, V, 1), tokens(3, V, 2)], { capture: { ...CAPTURE_ALL, headNorm: true, finalHidden: true } });
          expect(out.captured.headNorm![0]!.shape).toEqual([2, 8, H]);
          expect(out.finalHidden).toBeDefined();
          disposeOutput(out);
        });
        leakFree('no logits', () => { const out = forward(model, [tokens(5, V, 3)], { capture: { logits: false, mlpAct: true, layers: [1] } }); expect(out.logits).toBeUndefined(); disposeOutput(out); });
      });

      it('streamed model forward', () => {
        const m = loadModel(build(c).dir, { residency: 'streamed' });
        leakFree('streamed', () => disposeOutput(forward(m, [tokens(6, V, 4)], { capture: CAPTURE_ALL })));
        m.dispose();
      });

      it('sparsity: mask, oracleTopK', () => {
        const ids = [tokens(6, V, 5), tokens(6, V, 6)];
        leakFree('mask', () => disposeOutput(forward(model, ids, { capture: CAPTURE_ALL, sparsity: {
          mlp: () => ({ mask: tf.ones([2, 6, F]) }), heads: () => ({ mask: tf.ones([2, 6, H]) }),
        } })));
        leakFree('oracleTopK', () => disposeOutput(forward(model, ids, { capture: { mlpAct: true }, sparsity: { mlp: () => ({ oracleTopK: 4 }) } })));
      });

      it('KV cache decoding, after disposeCache', () => {
        leakFree('cache', () => {
          const cache = newCache(model);
          disposeOutput(forward(model, [tokens(4, V, 7)], { cache, capture: { mlpAct: true } }));
          for (let t = 0; t < 4; t++) disposeOutput(forward(model, [[3 + t]], { cache }));
          expect(tf.memory().numTensors).toBeGreaterThan(0);
          disposeCache(cache);
        });
      });

      it('generate (prefill through forward + decode session), dense and with picks; also when a pick throws', () => {
        const L = model.config.layers;
        const prompts = [tokens(5, V, 10), tokens(3, V, 11)];
        leakFree('generate dense', () => {
          const r = generate(model, prompts, { maxNewTokens: 4, stopAtEos: false });
          expect(r.tokens.map((t) => t.length)).toEqual([4, 4]);
          expect(r.decodeSteps).toBe(3);
        });
        leakFree('generate with picks', () => {
          const r = generate(model, prompts, { maxNewTokens: 4, stopAtEos: false, modes: fixedModes(L, () => Int32Array.from([0, 2, 5]), () => Int32Array.from([1])) });
          expect(r.counts).toEqual({ mlpSelected: 3 * 2 * L * 3, mlpTotal: 3 * 2 * L * F, headsSelected: 3 * 2 * L, headsTotal: 3 * 2 * L * H });
        });
        leakFree('throwing pick', () => expect(() => generate(model, prompts, { maxNewTokens: 4, modes: fixedModes(L, () => { throw new Error('pick failed'); }, () => range(H)) })).toThrow(/pick failed/));
      });

      it('failures: a bad token id, a throwing hook, a mis-shaped mask', () => {
        leakFree('bad token', () => expect(() => forward(model, [[1, V + 5]])).toThrow(/outside the vocabulary/));
        leakFree('bad mask shape', () => expect(() => forward(model, [[3, 4], [5]], { attentionMask: [[1, 1], [1]] })).toThrow(/attentionMask/));
        leakFree('throwing hook', () => expect(() => forward(model, [tokens(5, V, 8)], { capture: CAPTURE_ALL, sparsity: {
          mlp: (i) => { if (i === 1) throw new Error('hook failed'); return null; },
        } })).toThrow(/hook failed/));
        leakFree('mis-shaped mask', () => expect(() => forward(model, [tokens(5, V, 9)], { sparsity: {
          mlp: () => ({ mask: tf.ones([1, 5, F + 1]) }),
        } })).toThrow());
      });
    });
  }
});
