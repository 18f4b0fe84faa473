/**
 * Issue 22, the runtime's input-sparse modes: input-threshold sites (TEAL, WINA) at q/k/v, o, the MLP's first
 * projections and down, and the gate threshold (CATS), against a float64 masked reference written here.
 */
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { loadModel, type Model } from '../src/model/model.js';
import { rowMatrix } from '../src/model/kernels/rows.js';
import { createArena } from '../src/model/kernels/wasm/kernels.js';
import { DecodeSession, denseModes, inputMajorNames, keepInputs, type DecodeModes, type LayerInputs } from '../src/runtime/decoder.js';
import { forward, disposeOutput } from '../src/model/forward.js';
import { siteMasks } from '../src/runtime/plan.js';
import { siteNorms } from '../src/runtime/calibrate.js';
import type { HFConfig, NaiveWeights } from './reference/naive-forward.js';
import { makeRandomCheckpoint } from './reference/random-checkpoint.js';
import { tmpDir } from './helpers.js';

const IDS = [1, 7, 3, 12, 40, 5, 9, 33, 2, 18];

/** seeded uniform [-1, 1) */
function rng(seed: number): () => number { let s = seed >>> 0 || 1; return () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return (s / 2 ** 32) * 2 - 1; }; }

/** thresholds of the float64 reference, per layer: |x_i| (· norm_i) < t is zeroed; gate: |silu(g)| < t zeroed */
interface RefSites { attn?: number; o?: number; mlp?: number; down?: number; gate?: number; wina?: boolean }

/** float64 Llama decode (token by token, full causal attention), inputs masked by the thresholds; logits per position */
function refDecode(cfg: HFConfig, w: NaiveWeights, ids: number[], sites: RefSites[]): Float64Array[] {
  const d = cfg.hidden_size as number, H = cfg.num_attention_heads as number, KV = cfg.num_key_value_heads as number, hd = cfg.head_dim as number, F = cfg.intermediate_size as number;
  const V = cfg.vocab_size as number, eps = cfg.rms_norm_eps as number, theta = cfg.rope_parameters.rope_theta as number, L = cfg.num_hidden_layers as number;
  const W = (n: string) => w.get(n)!.data;
  const lin = (M: Float64Array, x: Float64Array, out: number) => {
    const n = x.length, y = new Float64Array(out);
    for (let o = 0; o < out; o++) { let s = 0; for (let i = 0; i < n; i++) s += M[o * n + i]! * x[i]!; y[o] = s; }
    return y;
  };
  const rms = (x: Float64Array, g: Float64Array) => { let q = 0; for (const v of x) q += v * v; const r = 1 / Math.sqrt(q / x.length + eps); return x.map((v, i) => v * r * g[i]!); };
  /** column norms of [out, in] matrices over all of them */
  const colNorms = (ms: Float64Array[], n: number) => {
    const out = new Float64Array(n);
    for (const M of ms) for (let r = 0; r < M.length / n; r++) for (let i = 0; i < n; i++) out[i]! += M[r * n + i]! ** 2;
    return out.map(Math.sqrt);
  };
  const mask = (x: Float64Array, t: number | undefined, norms: Float64Array | null) => (t === undefined ? x : x.map((v, i) => (Math.abs(v) * (norms ? norms[i]! : 1) >= t ? v : 0)));
  const rope = (x: Float64Array, heads: number, p: number) => {
    const half = hd / 2;
    for (let h = 0; h < heads; h++) for (let i = 0; i < half; i++) {
      const a = p * Math.pow(theta, -(2 * i) / hd), c = Math.cos(a), s = Math.sin(a), o = h * hd, x1 = x[o + i]!, x2 = x[o + i + half]!;
      x[o + i] = x1 * c - x2 * s; x[o + i + half] = x2 * c + x1 * s;
    }
  };
  const K: Float64Array[][] = Array.from({ length: L }, () => []), Vc: Float64Array[][] = Array.from({ length: L }, () => []);
  const out: Float64Array[] = [];
  ids.forEach((id, p) => {
    let x = Float64Array.from(W('model.embed_tokens.weight').subarray(id * d, (id + 1) * d));
    for (let l = 0; l < L; l++) {
      const P = `model.layers.${l}.`, s = sites[l] ?? {};
      const wq = W(P + 'self_attn.q_proj.weight'), wk = W(P + 'self_attn.k_proj.weight'), wv = W(P + 'self_attn.v_proj.weight'), wo = W(P + 'self_attn.o_proj.weight');
      const h = mask(rms(x, W(P + 'input_layernorm.weight')), s.attn, s.wina ? colNorms([wq, wk, wv], d) : null);
      const q = lin(wq, h, H * hd), k = lin(wk, h, KV * hd), v = lin(wv, h, KV * hd);
      rope(q, H, p); rope(k, KV, p);
      K[l]!.push(k); Vc[l]!.push(v);
      const ctx = new Float64Array(H * hd);
      for (let hh = 0; hh < H; hh++) {
        const kv = Math.floor(hh / (H / KV)), sc = K[l]!.map((kk) => { let z = 0; for (let j = 0; j < hd; j++) z += q[hh * hd + j]! * kk[kv * hd + j]!; return z / Math.sqrt(hd); });
        const mx = Math.max(...sc), e = sc.map((z) => Math.exp(z - mx)), sum = e.reduce((a, b) => a + b, 0);
        e.forEach((ej, t) => { for (let j = 0; j < hd; j++) ctx[hh * hd + j]! += (ej / sum) * Vc[l]![t]![kv * hd + j]!; });
      }
      const a = lin(wo, mask(ctx, s.o, s.wina ? colNorms([wo], H * hd) : null), d);
      x = x.map((xv, i) => xv + a[i]!);
      const wg = W(P + 'mlp.gate_proj.weight'), wu = W(P + 'mlp.up_proj.weight'), wd = W(P + 'mlp.down_proj.weight');
      const h2 = mask(rms(x, W(P + 'post_attention_layernorm.weight')), s.mlp, s.wina ? colNorms([wu, wg], d) : null);
      const g = lin(wg, h2, F).map((z) => z / (1 + Math.exp(-z))), u = lin(wu, h2, F);
      const act = g.map((gv, j) => (s.gate !== undefined && Math.abs(gv) < s.gate ? 0 : gv * u[j]!));
      const y = lin(wd, mask(act, s.down, s.wina ? colNorms([wd], F) : null), d);
      x = x.map((xv, i) => xv + y[i]!);
    }
    out.push(lin(W('lm_head.weight'), rms(x, W('model.norm.weight')), V));
  });
  return out;
}

function decodeAll(model: Model, modes: DecodeModes, ids = IDS): Float32Array[] {
  const s = new DecodeSession(model, modes, 1);
  try { return ids.map((id) => s.step([id]).slice()); } finally { s.dispose(); }
}
const relErr = (a: ArrayLike<number>, b: ArrayLike<number>) => { let n = 0, q = 0; for (let i = 0; i < a.length; i++) { n += (a[i]! - b[i]!) ** 2; q += b[i]! ** 2; } return Math.sqrt(n / q); };

/** every site of every layer input-sparse, thresholds from `inputs` */
function siteModes(layers: number, inputs: LayerInputs, gate?: number): DecodeModes {
  const m = denseModes(layers);
  return { ...m, mlp: m.mlp.map(() => (gate === undefined ? { mode: 'dense' as const } : { mode: 'gate-threshold' as const, t: gate })), inputs: m.mlp.map(() => inputs) };
}

let dir = '', cfg: HFConfig, weights: NaiveWeights;
beforeAll(async () => {
  await ensureBackend('wasm');
  dir = path.join(tmpDir(), 'llama');
  ({ config: cfg, weights } = makeRandomCheckpoint(dir, { family: 'llama', layers: 2, hidden: 32, ffn: 96, heads: 4, kvHeads: 2, vocab: 64, seed: 22 }));
}, 60_000);

describe('input-sparse kernels', () => {
  it('axpy over the kept rows of an input-major matrix equals the masked dense matvec (wasm-simd and js)', () => {
    const n = 48, o = 40, r = rng(3);
    const Wt = Float32Array.from({ length: n * o }, r); // [in, out]: one row per input
    const x = Float32Array.from({ length: n }, r);
    const t = 0.45;
    const ids = new Int32Array(n), coef = new Float32Array(n);
    const k = keepInputs(x, n, t, null, ids, coef);
    expect(k).toBeGreaterThan(5); expect(k).toBeLessThan(n - 5);
    const ref = new Float64Array(o);
    for (let i = 0; i < n; i++) if (Math.abs(x[i]!) >= t) for (let j = 0; j < o; j++) ref[j]! += x[i]! * Wt[i * o + j]!;
    const arena = createArena();
    try {
      for (const M of [rowMatrix(Wt, n, o, arena), rowMatrix(Wt, n, o, null)]) {
        const y = new Float32Array(o);
        M.axpy(coef.subarray(0, k), y, ids.subarray(0, k));
        for (let j = 0; j < o; j++) expect(Math.abs(y[j]! - ref[j]!)).toBeLessThan(1e-5);
        // and it is not the dense product
        const dense = new Float32Array(o); M.axpy(x, dense);
        expect(relErr(dense, y)).toBeGreaterThan(1e-2);
      }
    } finally { arena?.dispose(); }
  });

  it('WINA scores by the column norm: keepInputs keeps |x_i| * norm_i >= t, ids mapped', () => {
    const x = Float32Array.from([0.5, -0.2, 0, 0.9, -0.05]), norms = Float32Array.from([1, 4, 9, 0.1, 30, 2, 2, 2]);
    const ids = new Int32Array(5), coef = new Float32Array(5);
    expect(Array.from(ids.subarray(0, keepInputs(x, 5, 0.6, null, ids, coef)))).toEqual([3]);
    expect(Array.from(ids.subarray(0, keepInputs(x, 5, 0.6, norms, ids, coef)))).toEqual([1, 4]); // 0.8, 1.5 (0.5, 0.09 out; the zero never)
    const map = Int32Array.from([3, 4, 5, 6, 7]);
    const k = keepInputs(x, 5, 0.6, norms, ids, coef, map); // norms of rows 3..7: 0.05, 0.8, 0, 1.8, 0.1
    expect(Array.from(ids.subarray(0, k))).toEqual([4, 6]);
    expect(Array.from(coef.subarray(0, k))).toEqual([x[1], x[3]]);
  });
});

describe('input-sparse decode', () => {
  it('threshold 0 at every site (and gate threshold 0) equals dense bit for bit; input-major dense equals row-major dense to float rounding', () => {
    const all = inputMajorNames(siteModes(2, { attn: { t: 0 }, mlp: { t: 0 } }), true);
    expect([...all].sort()).toEqual(['layers.0.gate', 'layers.0.up', 'layers.0.wk', 'layers.0.wq', 'layers.0.wv', 'layers.1.gate', 'layers.1.up', 'layers.1.wk', 'layers.1.wq', 'layers.1.wv']);
    const im = loadModel(dir, { decode: { inputMajor: all } }), rm = loadModel(dir, { decode: true });
    try {
      expect(im.decode!.kernel).toMatch(/^(native|wasm-simd)$/);
      const dense = decodeAll(im, denseModes(2));
      const zero = decodeAll(im, siteModes(2, { attn: { t: 0 }, o: { t: 0 }, mlp: { t: 0 }, down: { t: 0, wina: true } }));
      const cats0 = decodeAll(im, siteModes(2, { attn: { t: 0 } }, 0));
      dense.forEach((l, p) => { expect(Buffer.from(zero[p]!.buffer).equals(Buffer.from(l.buffer)), `s = 0, position ${p}`).toBe(true); expect(Buffer.from(cats0[p]!.buffer).equals(Buffer.from(l.buffer)), `gate threshold 0, position ${p}`).toBe(true); });
      const rowMajor = decodeAll(rm, denseModes(2));
      dense.forEach((l, p) => expect(relErr(l, rowMajor[p]!)).toBeLessThan(1e-5));
      // a threshold that drops inputs changes the logits (the test above can fail)
      const some = decodeAll(im, siteModes(2, { attn: { t: 0.5 } }));
      expect(relErr(some[3]!, dense[3]!)).toBeGreaterThan(1e-3);
    } finally { im.dispose(); rm.dispose(); }
  });

  it('every site thresholded (|x| and WINA), CATS, and the counts of weights read, against the float64 masked reference', () => {
    const all = inputMajorNames(siteModes(2, { attn: { t: 1 }, mlp: { t: 1 } }), true);
    const model = loadModel(dir, { decode: { inputMajor: all } });
    try {
      const cases: { inputs: LayerInputs; gate?: number; ref: RefSites }[] = [
        { inputs: { attn: { t: 0.6 }, o: { t: 0.15 }, mlp: { t: 0.5 }, down: { t: 0.05 } }, ref: { attn: 0.6, o: 0.15, mlp: 0.5, down: 0.05 } },
        { inputs: { attn: { t: 2, wina: true }, o: { t: 0.3, wina: true }, mlp: { t: 2, wina: true }, down: { t: 0.1, wina: true } }, ref: { attn: 2, o: 0.3, mlp: 2, down: 0.1, wina: true } },
        { inputs: { down: { t: 0.04 } }, gate: 0.1, ref: { down: 0.04, gate: 0.1 } },
      ];
      for (const k of cases) {
        const modes = siteModes(2, k.inputs, k.gate);
        const s = new DecodeSession(model, modes, 1);
        let got: Float32Array[];
        try { got = IDS.map((id) => s.step([id]).slice()); } finally { s.dispose(); }
        const ref = refDecode(cfg, weights, IDS, [k.ref, k.ref]);
        const dense = refDecode(cfg, weights, IDS, [{}, {}]);
        got.forEach((l, p) => expect(relErr(l, ref[p]!)).toBeLessThan(2e-5));
        expect(relErr(ref[IDS.length - 1]!, dense[IDS.length - 1]!)).toBeGreaterThan(1e-3); // the masks matter
        const share = s.weights.weightsRead / s.weights.weightsTotal;
        expect(share).toBeGreaterThan(0.05); expect(share).toBeLessThan(0.95);
      }
    } finally { model.dispose(); }
  });

  it('input sites on matrices stored output-major compute the same (masked inputs) and read every row', () => {
    const rm = loadModel(dir, { decode: true }), im = loadModel(dir, { decode: { inputMajor: inputMajorNames(siteModes(2, { attn: { t: 1 }, mlp: { t: 1 } }), true) } });
    try {
      const modes = siteModes(2, { attn: { t: 0.6 }, mlp: { t: 0.5 } });
      const a = decodeAll(rm, modes), b = decodeAll(im, modes), dense = decodeAll(rm, denseModes(2));
      a.forEach((l, p) => expect(relErr(l, b[p]!)).toBeLessThan(1e-5));
      expect(relErr(a[5]!, dense[5]!)).toBeGreaterThan(1e-3);
      const s = new DecodeSession(rm, modes, 1);
      try { s.step([3]); expect(s.weights.weightsRead).toBe(s.weights.weightsTotal); } finally { s.dispose(); }
    } finally { rm.dispose(); im.dispose(); }
  });

  it('the forward pass with siteMasks (the plan\'s batched measurements) computes what the runtime decodes, every site, |x| and WINA, CATS', () => {
    const model = loadModel(dir, { decode: { inputMajor: inputMajorNames(siteModes(2, { attn: { t: 1 }, mlp: { t: 1 } }), true) } });
    try {
      const norms = siteNorms(model), c = model.config;
      const cases: { inputs: LayerInputs; gate?: number }[] = [
        { inputs: { attn: { t: 0.6 }, o: { t: 0.15 }, mlp: { t: 0.5 }, down: { t: 0.05 } } },
        { inputs: { attn: { t: 2, wina: true }, o: { t: 0.3, wina: true }, mlp: { t: 2, wina: true }, down: { t: 0.1, wina: true } } },
        { inputs: { down: { t: 0.04 } }, gate: 0.1 },
      ];
      const logitsOf = (sites?: ReturnType<typeof siteMasks>) => {
        const o = forward(model, [IDS], { capture: { logits: true }, ...(sites ? { sparsity: { sites } } : {}) });
        try { return o.logits!.dataSync() as Float32Array; } finally { disposeOutput(o); }
      };
      const dense = logitsOf(), V = c.vocabSize;
      // no site chosen: the hook changes nothing (bit for bit)
      expect(Buffer.from(logitsOf(siteMasks(c, [undefined, {}], norms)).buffer).equals(Buffer.from(dense.buffer))).toBe(true);
      for (const k of cases) {
        const got = logitsOf(siteMasks(c, [0, 1].map(() => ({ inputs: k.inputs, gate: k.gate })), norms));
        const want = decodeAll(model, siteModes(2, k.inputs, k.gate));
        want.forEach((l, p) => expect(relErr(got.subarray(p * V, (p + 1) * V), l), `${JSON.stringify(k)} position ${p}`).toBeLessThan(1e-4));
        expect(relErr(got.subarray((IDS.length - 1) * V), dense.subarray((IDS.length - 1) * V))).toBeGreaterThan(1e-3); // the masks matter
      }
      expect(() => logitsOf(siteMasks(c, [{ inputs: { o: { t: 0.3, wina: true } } }], []))).toThrow(/no column norms/);
    } finally { model.dispose(); }
  });
});
