/**
 * The decode runtime: one token per row through the row kernels (src/model/kernels/rows.ts), the KV cache on the
 * host, and per-layer MLP / head modes fixed when the session is built (from a plan, a bundle's trained rules, or
 * a caller's selection) — no per-step checks of backend, shapes or arena space. The prompt is prefilled by the one
 * forward pass (batched, tfjs) and its cache copied in (loadCache).
 *
 * Why its own loop instead of the forward pass at T = 1: a tfjs-wasm op costs ~40 µs of dispatch, a d 256 decode
 * step is ~200 ops, so 95% of its 8 ms went to dispatch (bench:decode); here each weight matrix is one kernel call.
 * It computes the same function as src/model/forward.ts (tested against it: dense, masked and cached).
 *
 * Modes per layer:
 *   MLP   dense     every neuron (the baseline: zero activations are multiplied too)
 *         lossless  the first projection for every neuron (gated: the gate), then only the rows of the others
 *                   whose activation is nonzero (ReLU / fatrelu: exactly dense)
 *         select    only the neurons `pick` returns (a predictor's rule): their rows of the first and second
 *         gate-threshold  (CATS, gated MLPs) the gate for every neuron, then up and down rows only of the neurons with
 *                   |act(gate)| >= t
 *   heads dense | select (K and V are computed for every head, so the cache stays exact for later tokens)
 * Input thresholds per layer and site (TEAL; WINA scores |x_i| by its weights' column norm ‖W[:, i]‖): the inputs
 * with |x_i| (· ‖W[:, i]‖) < t are not read — of q/k/v (one shared input), o, the MLP's first projections (gate/up
 * or fc1) and down. A site's matrices are stored input-major (DecodeOptions.inputMajor) so that a skipped input is a
 * skipped contiguous row: RowMatrix.axpy over the kept inputs. A matrix stored input-major without a site is read by
 * axpy over every input (dense); a site on a matrix stored output-major computes the same (the masked input, every
 * row read: no gain; load with planInputMajor for it).
 */
import type { ModelConfig } from '../model/config.js';
import type { DecodeLayer, DecodeWeights, HostNorm } from '../model/decode-weights.js';
import type { RowMatrix } from '../model/kernels/rows.js';
import type { KVCache } from '../model/forward.js';
import type { Model } from '../model/model.js';
import { kvStore, type KvStore } from '../model/kernels/kv.js';
import { nonzeros } from '../model/kernels/rows.js';
import { normRows } from '../model/host-norm.js';
import { UserError } from '../util/errors.js';
import { f16ToF32Array } from '../util/half.js';
import { alibiSlopes, firstVisible, ropeAngles, ropeHost, ropeInvFreq, softcapHost } from '../arch/traits.js';

export interface MlpContext {
  /** the MLP's own (normalized) input */
  h: Float32Array;
  /** residual entering the MLP block */
  xMlp: Float32Array;
  /** residual entering the layer */
  xAttn: Float32Array;
}
export interface HeadContext { xAttn: Float32Array; /** previous layer's input (layer 0: its own) */ xAttnPrev: Float32Array }

export type MlpStep = { mode: 'dense' } | { mode: 'lossless' } | { mode: 'select'; pick: (ctx: MlpContext) => Int32Array } | { mode: 'gate-threshold'; t: number };
export type HeadStep = { mode: 'dense' } | { mode: 'select'; pick: (ctx: HeadContext) => Int32Array };
/** an input-threshold site: inputs whose score |x_i| (wina: |x_i| · ‖W[:, i]‖) is below t are not read */
export interface InputThreshold { t: number; wina?: boolean | undefined }
/** the input-threshold sites of one layer: q/k/v's shared input, o's, the MLP's first projections', down's */
export interface LayerInputs { attn?: InputThreshold | undefined; o?: InputThreshold | undefined; mlp?: InputThreshold | undefined; down?: InputThreshold | undefined }
export const INPUT_SITES = ['attn', 'o', 'mlp', 'down'] as const;
export type InputSite = (typeof INPUT_SITES)[number];
/** where thresholds apply: the four input sites and the gate (CATS: the raw gate, before its activation) */
export type SiteName = InputSite | 'gate';
/**
 * sees each site's input vector as computed (calibration); called in the MLP's full path (every neuron computed: dense,
 * lossless ungated, the input-major modes) and at every attention; `x` is reused after the call
 */
export type SiteObserver = (layer: number, site: SiteName, x: Float32Array, n: number) => void;
/** per layer */
export interface DecodeModes { mlp: MlpStep[]; heads: HeadStep[]; inputs?: (LayerInputs | undefined)[] | undefined; observe?: SiteObserver | undefined }

/** the weight names (DecodeOptions.inputMajor) a layer's input sites need stored input-major (o and down always are) */
export function inputMajorNames(modes: Pick<DecodeModes, 'inputs'>, gated: boolean): Set<string> {
  const names = new Set<string>();
  (modes.inputs ?? []).forEach((s, i) => {
    if (s?.attn) for (const n of ['wq', 'wk', 'wv']) names.add(`layers.${i}.${n}`);
    if (s?.mlp) for (const n of gated ? ['up', 'gate'] : ['up']) names.add(`layers.${i}.${n}`);
  });
  return names;
}

export function denseModes(layers: number): DecodeModes {
  return { mlp: Array.from({ length: layers }, () => ({ mode: 'dense' })), heads: Array.from({ length: layers }, () => ({ mode: 'dense' })) };
}

/** What a session computed: neurons / heads selected over neurons / heads of the layers, summed over steps and rows. */
export interface DecodeCounts { mlpSelected: number; mlpTotal: number; headsSelected: number; headsTotal: number }
export const zeroCounts = (): DecodeCounts => ({ mlpSelected: 0, mlpTotal: 0, headsSelected: 0, headsTotal: 0 });
/** weights of the decoder layers' matrices read, over all of them (embeddings and LM head excluded), summed over steps and rows */
export interface WeightCounts { weightsRead: number; weightsTotal: number }

/** the inputs kept by a threshold: x_i != 0 and |x_i| (· norms[id]) >= t; ids (through `map` when given) and values; returns how many */
export function keepInputs(x: Float32Array, n: number, t: number, norms: Float32Array | null, ids: Int32Array, coef: Float32Array, map?: Int32Array | null): number {
  let m = 0;
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    if (v === 0) continue;
    const id = map ? map[i]! : i;
    if ((v < 0 ? -v : v) * (norms ? norms[id]! : 1) >= t) { ids[m] = id; coef[m++] = v; }
  }
  return m;
}

/** per input row of input-major matrices: the norm of that row over all of them (WINA's ‖W[:, i]‖), read through the interface */
export function rowNorms(ms: RowMatrix[]): Float32Array {
  const n = ms[0]!.n, out = new Float64Array(n), one = new Float32Array([1]), id = new Int32Array(1);
  for (const M of ms) {
    if (M.n !== n) throw new Error(`rowNorms: ${M.n} rows, expected ${n}`);
    const row = new Float32Array(M.d);
    for (let i = 0; i < n; i++) { row.fill(0); id[0] = i; M.axpy(one, row, id); let q = 0; for (let j = 0; j < row.length; j++) q += row[j]! * row[j]!; out[i]! += q; }
  }
  return Float32Array.from(out, Math.sqrt);
}
/** column norms per decode weights and site ("3.attn"), computed once */
const normCache = new WeakMap<DecodeWeights, Map<string, Float32Array>>();

function normInto(c: ModelConfig, x: Float32Array, n: HostNorm, out: Float32Array): void {
  normRows(c.norm, c.normEps, n.g, n.b, x, 1, x.length, out);
}

/** One row's positions: which are attended (the prompt's padding is not), how many, how many real tokens. */
class RowState {
  valid = new Uint8Array(32); // [cap] 1 = attend
  n = 0; // positions held
  tokens = 0; // real tokens held (the next token's position)
  reserve(n: number): void { if (n > this.valid.length) { const v = new Uint8Array(Math.max(n, 2 * this.valid.length)); v.set(this.valid); this.valid = v; } }
}

/** Scratch vectors of one step, allocated once per session. */
interface Scratch {
  x: Float32Array; xPrev: Float32Array; h: Float32Array; xm: Float32Array; h2: Float32Array; y: Float32Array; kv: Float32Array; vv: Float32Array;
  q: Float32Array; ctx: Float32Array; a: Float32Array; e: Float32Array; cos: Float32Array; sin: Float32Array;
  ids: Int32Array; coef: Float32Array; // the lossless mode's nonzero rows
  ya: Float32Array; // the attention block's output
  g: Float32Array; // a gated MLP's gate projections (empty when ungated)
  ag: Float32Array; // act of the gate projections (keepGate)
  u: Float32Array; // the gated lossless mode's up projection of the nonzero rows
  qf: Float32Array; // every head's q (input-major q with heads selected)
  xi: Int32Array; xc: Float32Array; // an input site's kept inputs (ids, values)
  xm2: Float32Array; // the kept inputs as a masked vector (an input site on an output-major matrix)
  di: Int32Array; dc: Float32Array; // the down site's kept rows
}
/** per layer: which matrices are stored input-major */
interface LayerLayout { q: boolean; k: boolean; v: boolean; up: boolean; gate: boolean }

export class DecodeSession {
  readonly counts: DecodeCounts = zeroCounts();
  readonly weights: WeightCounts = { weightsRead: 0, weightsTotal: 0 };
  private readonly c: ModelConfig;
  private readonly w: DecodeWeights;
  private readonly rows: RowState[];
  /** K and V of every row and layer, and attention over them (SIMD or JS, chosen here once) */
  readonly kv: KvStore;
  private readonly s: Scratch;
  private invFreq: Float32Array | null;
  private readonly headRows: Int32Array[]; // per head: its hd rows of q / o
  private readonly allHeads: Int32Array;
  private readonly im: LayerLayout[];
  private inputs: (LayerInputs | undefined)[];
  /** per layer and site: WINA's column norms (null: the site scores |x_i|) */
  private readonly norms: Record<InputSite, Float32Array | null>[];

  constructor(model: Model, private modes: DecodeModes, batch: number) {
    if (!model.decode) throw new Error('DecodeSession needs a model loaded with { decode: true }');
    this.c = model.config; this.w = model.decode;
    const c = this.c, d = c.hidden, hd = c.headDim;
    if (modes.mlp.length !== c.layers || modes.heads.length !== c.layers) throw new Error(`decode modes for ${modes.mlp.length}/${modes.heads.length} layers, model has ${c.layers}`);
    if (modes.inputs && modes.inputs.length !== c.layers) throw new Error(`input sites for ${modes.inputs.length} layers, model has ${c.layers}`);
    this.inputs = modes.inputs ?? [];
    const im = (i: number, n: string) => this.w.inputMajor.has(`layers.${i}.${n}`);
    this.im = Array.from({ length: c.layers }, (_, i) => ({ q: im(i, 'wq'), k: im(i, 'wk'), v: im(i, 'wv'), up: im(i, 'up'), gate: im(i, 'gate') }));
    this.im.forEach((l, i) => { if (c.gated && l.up !== l.gate) throw new Error(`DecodeSession: layer ${i}: up and gate must both be input-major or neither`); });
    modes.mlp.forEach((m, i) => { if (m.mode === 'gate-threshold' && !c.gated) throw new Error(`DecodeSession: layer ${i}: the gate-threshold mode needs a gated MLP`); });
    let cache = normCache.get(this.w);
    if (!cache) normCache.set(this.w, (cache = new Map()));
    const norms = cache;
    this.norms = Array.from({ length: c.layers }, (_, i) => {
      const L = this.w.layers[i]!, s = this.inputs[i];
      const get = (site: InputSite, ms: () => RowMatrix[]) => {
        if (!s?.[site]?.wina) return null;
        const key = `${i}.${site}`;
        let v = norms.get(key);
        if (!v) norms.set(key, (v = rowNorms(ms())));
        return v;
      };
      return { attn: get('attn', () => [L.q, L.k, L.v]), o: get('o', () => [L.o]), mlp: get('mlp', () => (L.gate ? [L.up, L.gate] : [L.up])), down: get('down', () => [L.down]) };
    });
    this.rows = Array.from({ length: batch }, () => new RowState());
    this.kv = kvStore({ rows: batch, layers: c.layers, heads: c.heads, kvHeads: c.kvHeads, headDim: hd, scale: c.attnScale, softcap: c.attnSoftcap,
      alibi: c.positions === 'alibi' ? alibiSlopes(c.heads) : null }, this.w.kernel === 'js' ? 'js' : 'wasm-simd');
    const Dp = this.w.embed.length / c.vocabSize;
    const f = (n: number) => new Float32Array(n);
    this.s = { x: f(d), xPrev: f(d), h: f(d), xm: f(d), ya: f(d), h2: f(d), y: f(Math.max(d, Dp)), kv: f(c.kvHeads * hd), vv: f(c.kvHeads * hd), q: f(c.heads * hd), ctx: f(c.heads * hd), a: f(c.ffn),
        e: f(Dp), cos: f(c.ropeDim / 2), sin: f(c.ropeDim / 2), ids: new Int32Array(c.ffn), coef: f(c.ffn), g: f(c.gated ? c.ffn : 0), ag: f(c.gated ? c.ffn : 0), u: f(c.gated ? c.ffn : 0),
        qf: f(c.heads * hd), xi: new Int32Array(Math.max(d, c.heads * hd)), xc: f(Math.max(d, c.heads * hd)), xm2: f(d), di: new Int32Array(c.ffn), dc: f(c.ffn) };
    this.invFreq = c.positions === 'rope' && c.ropeDim > 0 ? ropeInvFreq(c) : null;
    this.headRows = Array.from({ length: c.heads }, (_, h) => Int32Array.from({ length: hd }, (_, j) => h * hd + j));
    this.allHeads = Int32Array.from({ length: c.heads }, (_, h) => h);
  }

  /** Copy a prefill's cache (forward(..., { cache })): [B, KV, P, hd] per layer and each row's key mask. */
  loadCache(cache: KVCache): void {
    const c = this.c, KV = c.kvHeads, hd = c.headDim, W = KV * hd;
    const B = this.rows.length;
    if (cache.keyMask.length !== B) throw new Error(`loadCache: cache has ${cache.keyMask.length} rows, session ${B}`);
    const P = cache.keyMask[0]?.length ?? 0;
    for (let b = 0; b < B; b++) { this.rows[b]!.reserve(P + 1); this.kv.reserve(b, P + 1); }
    const kp = new Float32Array(W), vp = new Float32Array(W);
    for (let i = 0; i < c.layers; i++) {
      const k = cache.k[i]!.dataSync() as Float32Array, v = cache.v[i]!.dataSync() as Float32Array;
      for (let b = 0; b < B; b++)
        for (let p = 0; p < P; p++) {
          for (let kv = 0; kv < KV; kv++) {
            const src = ((b * KV + kv) * P + p) * hd;
            kp.set(k.subarray(src, src + hd), kv * hd); vp.set(v.subarray(src, src + hd), kv * hd);
          }
          this.kv.write(b, i, p, kp, vp);
        }
    }
    for (let b = 0; b < B; b++) {
      const r = this.rows[b]!, m = cache.keyMask[b]!;
      for (let p = 0; p < P; p++) r.valid[p] = m[p] ? 1 : 0;
      r.n = P; r.tokens = m.reduce((a, x) => a + (x ? 1 : 0), 0);
    }
  }

  /** Free the KV cache (its WebAssembly memory); the session cannot step after this. */
  dispose(): void { this.kv.dispose(); }

  /** Forget the last n positions of every row (benchmarks: steps timed at a fixed context). */
  rewind(n: number): void {
    for (const r of this.rows) { if (n > r.n) throw new Error(`rewind ${n}: the row holds ${r.n} positions`); r.n -= n; r.tokens -= n; }
  }

  /** Positions the next token of row b would take (the model's limit applies to learned positions). */
  position(b: number): number { return this.rows[b]!.tokens; }

  /**
   * Prefill row b with a prompt token by token, every layer dense and no input site (what the forward pass's prefill
   * computes), not counted in `counts` / `weights`: the last token's logits into `logits` [V]. A model loaded for
   * decoding only (loadModel forward: false) prefills this way; rows are independent, so each prefills alone.
   */
  prefill(b: number, ids: readonly number[], logits: Float32Array): void {
    if (b < 0 || b >= this.rows.length || !Number.isInteger(b)) throw new Error(`prefill: row ${b} of ${this.rows.length}`);
    if (ids.length === 0) throw new Error('prefill: an empty prompt');
    const modes = this.modes, inputs = this.inputs, counts = { ...this.counts }, weights = { ...this.weights };
    this.modes = denseModes(this.c.layers); this.inputs = [];
    try { for (const id of ids) this.stepRow(b, id, logits); } finally {
      this.modes = modes; this.inputs = inputs; Object.assign(this.counts, counts); Object.assign(this.weights, weights);
    }
  }

  /** One token per row -> logits [rows * V]. */
  step(ids: number[]): Float32Array {
    const c = this.c, V = c.vocabSize;
    if (ids.length !== this.rows.length) throw new Error(`step: ${ids.length} tokens for ${this.rows.length} rows`);
    const out = new Float32Array(ids.length * V);
    for (let b = 0; b < ids.length; b++) this.stepRow(b, ids[b]!, out.subarray(b * V, (b + 1) * V));
    return out;
  }

  private stepRow(b: number, id: number, logits: Float32Array): void {
    const c = this.c, w = this.w, s = this.s, r = this.rows[b]!;
    const d = c.hidden, Dp = w.embed.length / c.vocabSize;
    if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) throw new UserError(`decode: token id ${id} is outside the vocabulary (0..${c.vocabSize - 1})`);
    const pos = r.tokens;
    if (c.positions === 'learned' && pos >= c.maxPositions) throw new UserError(`decode: position ${pos} exceeds the model's max_position_embeddings ${c.maxPositions}`);
    r.reserve(r.n + 1); this.kv.reserve(b, r.n + 1);
    // embedding [Dp] (x scale) (-> [d]) + learned position (-> norm)
    const er = w.embed.subarray(id * Dp, (id + 1) * Dp);
    if (er instanceof Uint16Array) f16ToF32Array(er, s.e); else s.e.set(er);
    if (c.embedScale !== null) for (let j = 0; j < Dp; j++) s.e[j] = s.e[j]! * c.embedScale;
    if (w.projIn) { s.x.fill(0); w.projIn.axpy(s.e, s.x); } else s.x.set(s.e);
    if (w.pos) { const o = (pos + c.positionOffset) * d; for (let j = 0; j < d; j++) s.x[j]! += w.pos[o + j]!; }
    if (w.embedNorm) normInto(c, s.x, w.embedNorm, s.x);
    if (this.invFreq) {
      if (c.ropeScaling?.type === 'dynamic') this.invFreq = ropeInvFreq(c, pos + 1); // NTK: the base grows with the sequence, as transformers does
      ropeAngles(c, this.invFreq, pos, s.cos, s.sin);
    }
    r.valid[r.n] = 1;
    s.xPrev.set(s.x);
    for (let i = 0; i < c.layers; i++) {
      const L = w.layers[i]!;
      // attention block
      if (c.preNorm) normInto(c, s.x, L.ln1, s.h); else s.h.set(s.x);
      this.modes.observe?.(i, 'attn', s.h, d);
      const ia = this.inputs[i]?.attn;
      const kin = ia ? keepInputs(s.h, d, ia.t, this.norms[i]!.attn, s.xi, s.xc) : -1; // q/k/v's kept inputs (-1: all)
      this.appendKV(L, i, b, r, kin);
      const hm = this.modes.heads[i]!;
      const heads = hm.mode === 'dense' ? this.allHeads : hm.pick({ xAttn: s.x, xAttnPrev: s.xPrev });
      this.counts.headsSelected += heads.length; this.counts.headsTotal += c.heads;
      this.attention(L, i, b, r, heads, s.ya, kin);
      if (L.lnAttnOut) normInto(c, s.ya, L.lnAttnOut, s.ya);
      const parallel = c.block === 'parallel';
      // sequential: the MLP reads the residual after attention; parallel: the layer's input (its own norm or ln1's)
      if (parallel) s.xm.set(s.x); else for (let j = 0; j < d; j++) s.xm[j] = s.x[j]! + s.ya[j]!;
      if (!c.preNorm) normInto(c, s.xm, L.ln1, s.xm);
      // MLP block
      if (c.sharedNorm) s.h2.set(s.h); else if (c.preNorm) normInto(c, s.xm, L.ln2!, s.h2); else s.h2.set(s.xm);
      this.mlp(L, i, this.modes.mlp[i]!, s.y);
      if (L.lnMlpOut) normInto(c, s.y, L.lnMlpOut, s.y);
      s.xPrev.set(s.x);
      if (parallel) for (let j = 0; j < d; j++) s.x[j] = s.x[j]! + s.ya[j]! + s.y[j]!;
      else for (let j = 0; j < d; j++) s.x[j] = s.xm[j]! + s.y[j]!;
      if (!c.preNorm) normInto(c, s.x, L.ln2!, s.x);
    }
    r.n++; r.tokens++;
    // final norm, projection, LM head (softcapped)
    let h = s.x;
    if (w.finalNorm) { normInto(c, s.x, w.finalNorm, s.h); h = s.h; }
    if (w.projOut) { s.e.fill(0); w.projOut.axpy(h, s.e); h = s.e; }
    w.lmHead.matvec(h, logits);
    softcapHost(logits, c.finalSoftcap);
  }

  /** Qwen 3: RMSNorm of each of n vectors of hd in place */
  private headNorm(x: Float32Array, n: number, nm: HostNorm | undefined): void {
    if (nm) { const hd = this.c.headDim; normRows(this.c.norm, this.c.normEps, nm.g, nm.b, x, n, hd, x); }
  }

  /**
   * out = W·x (+ bias) of a matvec matrix over every output: an input-major one by axpy over the `kin` kept inputs
   * in s.xi / s.xc (kin < 0: every input), else by matvec (of `rows` only, when given)
   */
  private proj(M: RowMatrix, inputMajor: boolean, x: Float32Array, kin: number, out: Float32Array, bias: Float32Array | undefined, rows?: Int32Array): void {
    const s = this.s;
    if (!inputMajor) {
      // an input site on a matrix stored output-major (loaded without planInputMajor): the kept inputs, every row read
      if (kin >= 0) { s.xm2.fill(0, 0, M.d); for (let j = 0; j < kin; j++) s.xm2[s.xi[j]!] = s.xc[j]!; x = s.xm2; }
      M.matvec(x, out, rows, bias);
      this.weights.weightsRead += (rows ? rows.length : M.n) * M.d; this.weights.weightsTotal += M.n * M.d;
      return;
    }
    if (bias) out.set(bias.subarray(0, M.d)); else out.fill(0, 0, M.d);
    if (kin < 0) M.axpy(x, out); else M.axpy(s.xc.subarray(0, kin), out, s.xi.subarray(0, kin));
    this.weights.weightsRead += (kin < 0 ? M.n : kin) * M.d; this.weights.weightsTotal += M.n * M.d;
  }

  /** K and V of every kv head for the new position (RoPE on K), written to the row's cache */
  private appendKV(L: DecodeLayer, i: number, b: number, r: RowState, kin: number): void {
    const c = this.c, s = this.s, im = this.im[i]!;
    this.proj(L.k, im.k, s.h, kin, s.kv, L.kBias);
    this.headNorm(s.kv, c.kvHeads, L.kNorm);
    if (this.invFreq) ropeHost(s.kv, c.kvHeads, c.headDim, c.ropeDim, s.cos, s.sin);
    this.proj(L.v, im.v, s.h, kin, s.vv, L.vBias);
    this.kv.write(b, i, r.n, s.kv, s.vv);
  }

  /** y [d] = the output projection of the selected heads' context (+ bias) */
  private attention(L: DecodeLayer, i: number, b: number, r: RowState, heads: Int32Array, y: Float32Array, kin: number): void {
    const c = this.c, s = this.s, n = heads.length, hd = c.headDim;
    const qRows = n === c.heads ? undefined : this.rowsOf(heads); // the Q (and O) rows of the selected heads
    if (this.im[i]!.q && qRows) { // input-major q: every head's q, then the selected heads'
      this.proj(L.q, true, s.h, kin, s.qf, L.qBias);
      heads.forEach((h, t) => s.q.set(s.qf.subarray(h * hd, (h + 1) * hd), t * hd));
    } else this.proj(L.q, this.im[i]!.q, s.h, kin, s.q, L.qBias, qRows);
    this.headNorm(s.q, n, L.qNorm);
    if (this.invFreq) ropeHost(s.q, n, c.headDim, c.ropeDim, s.cos, s.sin);
    this.kv.attend(b, i, r.n + 1, r.valid, heads, s.q, s.ctx, firstVisible(c, i, r.n));
    this.modes.observe?.(i, 'o', s.ctx, n * hd);
    if (L.oBias) y.set(L.oBias); else y.fill(0, 0, c.hidden);
    const io = this.inputs[i]?.o, W = L.o.n * L.o.d;
    this.weights.weightsTotal += W;
    if (io) { // the o input's kept entries (their o rows)
      const k = keepInputs(s.ctx, n * hd, io.t, this.norms[i]!.o, s.xi, s.xc, qRows ?? null);
      L.o.axpy(s.xc.subarray(0, k), y, s.xi.subarray(0, k));
      this.weights.weightsRead += k * L.o.d;
    } else {
      L.o.axpy(s.ctx, y, qRows);
      this.weights.weightsRead += (qRows ? qRows.length : L.o.n) * L.o.d;
    }
  }

  private rowsCache = new Map<string, Int32Array>();
  /** the q / o rows of a head set (cached by set: plans reuse few sets) */
  private rowsOf(heads: Int32Array): Int32Array {
    const key = heads.join(',');
    let rows = this.rowsCache.get(key);
    if (!rows) {
      rows = new Int32Array(heads.length * this.c.headDim);
      heads.forEach((h, t) => rows!.set(this.headRows[h]!, t * this.c.headDim));
      if (this.rowsCache.size > 4096) this.rowsCache.clear();
      this.rowsCache.set(key, rows);
    }
    return rows;
  }

  /** the MLP's activations of n neurons in place: act(a) or, gated (g given), act(g) * a */
  private mlpAct(a: Float32Array, n: number, g: Float32Array | null): void {
    if (g) this.w.act.actMul(g, a, n, a); else this.w.act.act(a, n, a);
  }

  /**
   * the neurons with act(gate) != 0 and |act(gate)| >= t: ids into s.ids, their act(gate) into s.coef (the same
   * activation kernel as the dense mode's, value by value: dense bit for bit)
   */
  private keepGate(t: number): number {
    const s = this.s, F = this.c.ffn, ag = s.ag;
    this.w.act.act(s.g, F, ag);
    let m = 0;
    for (let j = 0; j < F; j++) { const v = ag[j]!; if (v !== 0 && (v < 0 ? -v : v) >= t) { s.ids[m] = j; s.coef[m++] = v; } }
    return m;
  }

  /** y [d] = the MLP of s.h2 under the layer's mode and its input sites */
  private mlp(L: DecodeLayer, i: number, m: MlpStep, y: Float32Array): void {
    const c = this.c, s = this.s, F = c.ffn, a = s.a, d = c.hidden, im = this.im[i]!.up;
    const sites = this.inputs[i], dn = sites?.down;
    if (L.downBias) y.set(L.downBias); else y.fill(0, 0, c.hidden);
    const rowCount = (M: RowMatrix, rows: number) => { this.weights.weightsRead += rows * M.d; this.weights.weightsTotal += M.n * M.d; };
    // 1. the down input: k values `vals` of the rows `ids` (null: every row in order)
    let vals = a, ids: Int32Array | null = null, k = F;
    if (m.mode === 'select' && !im) {
      const idx = m.pick({ h: s.h2, xMlp: s.xm, xAttn: s.x });
      k = idx.length; ids = idx;
      if (k) {
        L.up.matvec(s.h2, a, idx, L.upBias);
        if (L.gate) L.gate.matvec(s.h2, s.g, idx, L.gateBias);
        this.mlpAct(a, k, L.gate ? s.g : null);
      }
      rowCount(L.up, k); if (L.gate) rowCount(L.gate, k);
    } else if ((m.mode === 'lossless' || m.mode === 'gate-threshold') && L.gate && !im) {
      // gated: the gate for every neuron, then up only where act(gate) != 0 (lossless: dense bit for bit) or
      // |act(gate)| >= t (CATS)
      L.gate.matvec(s.h2, s.g, undefined, L.gateBias);
      k = this.keepGate(m.mode === 'lossless' ? 0 : m.t); ids = s.ids;
      if (k) {
        L.up.matvec(s.h2, s.u, ids.subarray(0, k), L.upBias);
        for (let j = 0; j < k; j++) a[j] = s.coef[j]! * s.u[j]!;
      }
      rowCount(L.gate, F); rowCount(L.up, k);
    } else {
      // every neuron's first projections (input-major: from the MLP input's kept entries only)
      const mi = sites?.mlp, obs = this.modes.observe;
      obs?.(i, 'mlp', s.h2, d);
      const kin = mi ? keepInputs(s.h2, d, mi.t, this.norms[i]!.mlp, s.xi, s.xc) : -1;
      this.proj(L.up, im, s.h2, kin, a, L.upBias);
      if (L.gate) { this.proj(L.gate, im, s.h2, kin, s.g, L.gateBias); obs?.(i, 'gate', s.g, F); }
      if (m.mode === 'dense') { this.mlpAct(a, F, L.gate ? s.g : null); obs?.(i, 'down', a, F); }
      else if (m.mode === 'lossless') { this.mlpAct(a, F, L.gate ? s.g : null); k = nonzeros(a, F, s.ids, s.coef); vals = s.coef; ids = s.ids; }
      else if (m.mode === 'gate-threshold') {
        k = this.keepGate(m.t); vals = s.coef; ids = s.ids;
        for (let j = 0; j < k; j++) vals[j] = vals[j]! * a[ids[j]!]!;
      } else {
        const idx = m.pick({ h: s.h2, xMlp: s.xm, xAttn: s.x });
        k = idx.length; ids = idx; vals = s.coef;
        for (let j = 0; j < k; j++) { const n = idx[j]!; vals[j] = L.gate ? s.g[n]! : a[n]!; }
        if (L.gate) { for (let j = 0; j < k; j++) s.u[j] = a[idx[j]!]!; this.w.act.actMul(vals, s.u, k, vals); } else this.w.act.act(vals, k, vals);
      }
    }
    // 2. the down site: only the kept rows of that input
    if (dn) {
      const kk = ids ? keepInputs(vals, k, dn.t, this.norms[i]!.down, s.di, s.dc, ids) : keepInputs(vals, F, dn.t, this.norms[i]!.down, s.di, s.dc);
      vals = s.dc; ids = s.di; k = kk;
    }
    this.counts.mlpSelected += k; this.counts.mlpTotal += F;
    rowCount(L.down, k);
    if (!ids) L.down.axpy(vals, y);
    else if (k) L.down.axpy(vals.subarray(0, k), y, ids.subarray(0, k));
  }
}

/** tokens ids[b] of prompts that the forward pass prefilled into `cache` -> a session that continues them */
export function sessionFromPrefill(model: Model, modes: DecodeModes, cache: KVCache): DecodeSession {
  const s = new DecodeSession(model, modes, cache.keyMask.length);
  s.loadCache(cache);
  return s;
}

/**
 * JIT warm-up for a model loaded for decoding: dense steps of throwaway batch-1 sessions, a new one every 128 positions,
 * for about `budgetMs` (at most `maxSteps`). Measured on the Llama fixture (d 192, one native thread, 128 timed steps
 * after an 8-token prompt, a process's 8 loads in turn): without it the first two loads ran 1,600-2,400 tok/s and the
 * later ones 3,000-3,800, while llama.cpp, compiled ahead, is at speed from its first token. What it takes is new
 * sessions, not steps: 2,080 steps of one session rewound every 136 positions left the next load's first run at 2,212
 * tok/s; sessions of 128 positions for 150-200 ms (~500-700 steps) gave 3,100-3,660 from the first load on. A large
 * model, whose step is bound by its weights' bandwidth, stops after its first step that ends past the budget (TinyLlama
 * widths: ~5 steps, 0.2 s). Nothing is shared with later sessions but V8's compiled code. Returns the steps run.
 */
export function warmDecode(model: Model, budgetMs = 200, maxSteps = 1024): number {
  const c = model.config, span = Math.max(1, Math.min(128, c.maxPositions - 1));
  const t0 = performance.now();
  let n = 0;
  while (n < maxSteps && performance.now() - t0 < budgetMs) {
    const s = new DecodeSession(model, denseModes(c.layers), 1);
    try {
      for (let t = 0; t < span && n < maxSteps && performance.now() - t0 < budgetMs; t++, n++) s.step([(n * 7 + 3) % c.vocabSize]);
    } finally { s.dispose(); }
  }
  return n;
}
