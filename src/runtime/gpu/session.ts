/**
 * The decode runtime on the GPU (raw WebGPU, WGSL compute shaders in ./kernels.ts): the same function as
 * src/runtime/decoder.ts's DecodeSession, batch 1, with the weights (./weights.ts), the KV cache and every vector
 * resident on the GPU. One command submission per token: every layer's kernels in one compute pass, then one
 * readback (the logits: `step`), or none per token (`greedy`: the argmax on the GPU feeds the next token's
 * embedding; the tokens come back once at the end).
 *
 * Per layer (dense OPT: 6 dispatches; each norm is fused into the matvec that reads it, every workgroup
 * normalizing x into workgroup memory):
 *   matvec norm(x) -> q|k|v (the selected heads' q rows, every kv head's k, v) -> attention (a workgroup per
 *   selected head: RoPE, the new K / V into the cache) -> matvec o over the selected heads' columns (+ residual)
 *   -> matvec norm(x) -> up (| gate) + activation over the selected rows [lossless: the nonzero activations
 *   compacted in the same dispatch] -> split-K axpy of down's selected rows -> sum of the chunks (+ bias, + residual)
 * Modes per layer, fixed at construction:
 *   MLP   dense | lossless (ReLU: up for every neuron, then only the nonzero rows of down, compacted on the GPU)
 *         | select (fixed neuron sets, cycled per step like src/bench/decode.ts's random picks: a CPU
 *         `pick: () => sets[i++ % n]` picks the same) | predicted (a predictor's scores and rule on the GPU: fc1,
 *         fc2, then top-k or threshold; a threshold on h_mlp / x_mlp is kept by fc2 itself)
 *   heads dense | select (fixed head sets) | predicted (from the layer's input, or the previous layer's: scored at
 *         that layer's start); K and V are computed for every kv head, so the cache stays exact
 *   input-threshold sites (attn, o, mlp, down: TEAL / WINA, as src/runtime/decoder.ts): the site's matrix read
 *         input-major (a transposed copy made once, ./weights.ts gpuDerived), only the rows of the kept inputs
 *         (axpySiteWgsl: each workgroup scores its chunk of inputs, the norm fused in where the site reads one);
 *         the q|k|v chunks summed by the attention kernel, up's by one dispatch before down's axpy; thresholds in a buffer (setThreshold)
 */
import type { KVCache } from '../../model/forward.js';
import type { ModelConfig } from '../../model/config.js';
import type { Model } from '../../model/model.js';
import { UserError } from '../../util/errors.js';
import { ropeAngles, ropeInvFreq } from '../../arch/traits.js';
import { INPUT_SITES, type DecodeCounts, type DecodeModes, type InputSite, type InputThreshold, type LayerInputs } from '../decoder.js';
import { checkGpu, getGpu, type Gpu } from './device.js';
import type { HostPredictor } from '../../predictors/predictor.js';
import type { LoadedPredictors, LoadedSite } from '../../predictors/hooks.js';
import { planInputs, type RuntimePlan } from '../plan.js';
import type { SelectionRule } from '../../predictors/metrics.js';
import { argmaxWgsl, attentionWgsl, axpySiteWgsl, pickWgsl, axpyWgsl, embedWgsl, matvecNormBytes, matvecWgsl, mlpSelWgsl, normWgsl, reduceWgsl, SITE_PER, sumPartsWgsl, type AxpySiteSpec, type GpuAct, type MatvecSpec } from './kernels.js';
import { gpuBuffer, gpuDerived, gpuEmpty, gpuWeightsFromModel, type GpuWeights } from './weights.js';
import { median } from '../../util/stats.js';

/** a predictor run on the GPU: its weights (float32, as the CPU runtime's), its rule, and its input */
export interface GpuPredicted { p: HostPredictor; rule: SelectionRule }
export type GpuMlpMode = { mode: 'dense' } | { mode: 'lossless' } | { mode: 'select'; sets: Int32Array[] } | ({ mode: 'predicted'; input: 'h_mlp' | 'x_mlp' | 'x_attn' } & GpuPredicted);
/** predicted heads: from the layer's input, or (prev) the previous layer's (Deja Vu's lookahead; layer 0: its own) */
export type GpuHeadMode = { mode: 'dense' } | { mode: 'select'; sets: Int32Array[] } | ({ mode: 'predicted'; prev: boolean } & GpuPredicted);
/** per layer; `inputs`: the input-threshold sites (src/runtime/decoder.ts: the same thresholds and scores) */
export interface GpuModes { mlp: GpuMlpMode[]; heads: GpuHeadMode[]; inputs?: (LayerInputs | undefined)[] | undefined }

/**
 * Threads an input-sparse axpy is spread over, and its most chunks (siteChunks; the partial sums' buffers hold that
 * many). On the H200 at the 6.7B widths, 50% kept: ~49k threads (at most 128 chunks) 1.21-1.22x dense, ~98k 1.38x;
 * see docs/gpu-decode.md for the cap of 256
 */
export const SITE_THREADS = 98304;
export const SITE_MAX_CHUNKS = 256;
/**
 * chunks of an input-sparse axpy over `rows` inputs into `cols` outputs: ~`threads` threads, at most SITE_PER rows a
 * chunk, at most `most` chunks, and at least 16 rows a chunk (a small model's site is not cut into chunks of a few
 * rows, each paying the workgroup's fixed cost and a partial sum: at d 256 ~98k threads made 256 chunks of 4 rows)
 */
function siteChunks(rows: number, cols: number, threads = SITE_THREADS, most = SITE_MAX_CHUNKS): number {
  return Math.max(1, Math.ceil(rows / SITE_PER), Math.min(most, Math.floor(rows / 16), Math.ceil(threads / (cols / 8))));
}

export function gpuDenseModes(layers: number): GpuModes {
  return { mlp: Array.from({ length: layers }, () => ({ mode: 'dense' })), heads: Array.from({ length: layers }, () => ({ mode: 'dense' })) };
}

/**
 * The CPU runtime's modes as GPU modes: dense, lossless and the input-threshold sites carry over; a `select` layer
 * (a predictor's picks, run on the host) and the gate-threshold mode do not — the GPU runtime has no predictors or
 * gate kernel yet (UserError naming the layers).
 */
export function gpuModesOf(modes: DecodeModes): GpuModes {
  const bad = [...modes.mlp.map((m, i) => (m.mode === 'select' ? `layer ${i} MLP` : m.mode === 'gate-threshold' ? `layer ${i} MLP gate-threshold` : '')),
    ...modes.heads.map((m, i) => (m.mode === 'select' ? `layer ${i} heads` : ''))].filter(Boolean);
  if (bad.length) throw new UserError(`the GPU decode runtime cannot run predicted or gate-threshold modes yet (${bad.slice(0, 4).join(', ')}${bad.length > 4 ? `, ... ${bad.length - 4} more` : ''}): its predictors run on the CPU only`,
    'decode with the CPU runtime, or use a plan of dense / lossless layers and input-threshold sites on the GPU');
  return { mlp: modes.mlp.map((m) => ({ mode: m.mode === 'lossless' ? 'lossless' : 'dense' })), heads: modes.heads.map(() => ({ mode: 'dense' })), ...(modes.inputs ? { inputs: modes.inputs } : {}) };
}

/**
 * A bundle's modes on the GPU, as decodeModes (src/runtime/plan.ts) builds them for the CPU runtime: the plan's per
 * layer, else each layer's trained rule; predicted layers run their predictors on the GPU (the same float32 weights
 * and rules). UserError for what the GPU runtime does not run (gate-threshold, gated predictors).
 */
export function gpuPlanModes(c: ModelConfig, preds: LoadedPredictors | null, plan: Pick<RuntimePlan, 'layers'> | null): GpuModes {
  const predicted = (site: LoadedSite, rule: SelectionRule, i: number): GpuPredicted => {
    if (site.hostUp) throw new UserError(`the GPU decode runtime does not run layer ${i}'s gated predictor (scores |act(gate) · up|)`, 'decode this bundle with the CPU runtime');
    if (!site.host) throw new Error(`a ${site.entry.predictor} site has no predictor weights to pick with`);
    return { p: site.host, rule };
  };
  const mlp: GpuMlpMode[] = [], heads: GpuHeadMode[] = [];
  for (let i = 0; i < c.layers; i++) {
    const ms = preds?.mlp.get(i), hs = preds?.heads.get(i), lp = plan?.layers[i];
    if (lp?.mlp.mode === 'gate-threshold') throw new UserError(`the GPU decode runtime does not run layer ${i}'s gate-threshold MLP mode yet`, 'decode this bundle with the CPU runtime');
    // (as the CPU's pick: an input other than h_mlp / x_mlp reads x_attn)
    const sel = (site: LoadedSite, rule: SelectionRule): GpuMlpMode => ({ mode: 'predicted', input: site.entry.input === 'h_mlp' || site.entry.input === 'x_mlp' ? site.entry.input : 'x_attn', ...predicted(site, rule, i) });
    if (!lp && !ms) mlp.push({ mode: 'dense' });
    else if (lp?.mlp.mode === 'predicted') {
      if (!ms) throw new Error(`plan: layer ${i} MLP is predicted but there is no predictor`);
      mlp.push(sel(ms, lp.mlp.rule));
    } else if (lp) mlp.push({ mode: lp.mlp.mode as 'dense' | 'lossless' });
    else if (ms!.entry.predictor === 'dense') mlp.push({ mode: 'dense' });
    else if (ms!.entry.predictor === 'exact') mlp.push({ mode: 'lossless' });
    else mlp.push(sel(ms!, ms!.entry.rule!));
    const headRule = lp ? (lp.heads.mode === 'predicted' ? lp.heads.rule : null) : hs?.entry.rule ?? null;
    heads.push(!hs || !headRule ? { mode: 'dense' } : { mode: 'predicted', prev: hs.sourceLayerOffset === -1, ...predicted(hs, headRule, i) });
  }
  const inputs = plan ? planInputs(plan) : undefined;
  return { mlp, heads, ...(inputs?.some(Boolean) ? { inputs } : {}) };
}

/**
 * The norm is fused into matvecs of at most this many rows (every workgroup pays the norm before its rows: in a
 * matvec of 2048 workgroups that costs more than the norm's own dispatch). On the H200 at d 4096: dense 795-805
 * tok/s with it, 727-797 never fused, 586-769 always fused; 10% MLP / 50% heads 1567-1574, 1438-1444, 982-1545.
 */
export const FUSE_ROWS = 8192;
/**
 * above FUSE_ROWS, the norm is fused into matvecs of at most this many rows with two rows per 32 lanes (16 a
 * workgroup: half the workgroups normalizing x; matvecPairWgsl): q|k|v (10240 rows at 50% heads, 12288 dense) and fc1
 * (16384). On the H200 at the 6.7B widths dense ran 839-851 tok/s with q|k|v's alone, 885-897 with fc1's too, 811-821
 * with neither (a norm dispatch before each); 10% / 50% 1697-1735 with q|k|v's, 1617-1656 without
 */
export const FUSE_PAIR_ROWS = 16384;

/**
 * what an op computes, for timing parts of a block (timeOps: the plan's cost model): pred = a predictor's dispatches;
 * site.* = an input-threshold site's axpy (o's with its chunk sum); updown = up and down of selected neurons in one
 * dispatch (mlpSelWgsl); reduce = the MLP's chunk sum (+ bias, residual)
 */
export type OpName = 'pred' | 'qkv' | 'attn' | 'o' | 'up' | 'down' | 'updown' | 'reduce' | 'site.attn' | 'site.o' | 'site.mlp' | 'site.down';
interface Op { p: GPUComputePipeline; g: GPUBindGroup; x: number; y: number; name?: OpName }
/** the ops, each tagged `name` */
const tag = (name: OpName, ops: Op[]): Op[] => { for (const o of ops) o.name = name; return ops; };
/** compiled pipelines by device and source: sessions of one shape share them (a compile is slow on software Vulkan) */
const pipelines = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();
type Entry = [number, GPUBuffer | GPUBufferBinding];

export interface GpuSessionOptions {
  /** positions the KV cache holds (default: the model's max positions, at most 2048) */
  capacity?: number;
  /** a norm dispatch before each matvec that reads a norm, instead of the norm fused into the matvec (benchmarks, tests) */
  unfused?: boolean;
  /** fuse the norm only into matvecs of at most this many rows (default FUSE_ROWS) */
  fuseRows?: number;
  /** above fuseRows, fuse it into matvecs of at most this many rows at 16 rows a workgroup (default FUSE_PAIR_ROWS; 0: never) */
  fusePairRows?: number;
  /** the input-sparse axpys: threads each is spread over (default SITE_THREADS), their most chunks (default and at most SITE_MAX_CHUNKS) (benchmarks) */
  siteThreads?: number;
  siteMaxChunks?: number;
  /** chunks of a down axpy over fixed neuron sets (default: as dense, one per 64 of the ffn's rows, at most 128) (benchmarks) */
  downChunks?: number;
  /**
   * selected neurons (select and predicted MLPs) as an up matvec and a down axpy, two dispatches, instead of one
   * (mlpSelWgsl, where the norm can be fused in) (benchmarks, tests)
   */
  splitMlp?: boolean;
  /** chunks of the one-dispatch MLP over selected neurons (default: a chunk per 8 of a fixed set's neurons, at most MLP_CHUNKS) (benchmarks, tests) */
  mlpChunks?: number;
  /** the lossless MLP in one dispatch (mlpSelWgsl every + skipZero) for an ffn of at most this many rows (default LOSSLESS_ONE_ROWS; 0: never) */
  losslessOneRows?: number;
  /** greedy tokens per command submission (default SUBMIT_TOKENS) */
  submitTokens?: number;
}

/**
 * greedy tokens encoded into one command submission: a submission costs the host ~40 µs (Dawn, lavapipe) and the GPU a
 * gap between command buffers; the params advance on the GPU, so tokens need no host write between them
 */
export const SUBMIT_TOKENS = 4;

/**
 * the most chunks (workgroups) of the one-dispatch MLP over selected neurons (mlpSelWgsl): a chunk per 8 of a fixed
 * set's neurons (one pass of its 8 rows of 32 lanes), up to this; a predictor's picks (their count known on the GPU
 * only) this many
 */
export const MLP_CHUNKS = 256;

/**
 * the lossless MLP in one dispatch (every neuron's activation, then the nonzero ones' down rows, a workgroup per
 * chunk of dense's down axpy: the same bits as dense) up to this ffn width: where a step is bound by the host's
 * encoding (small models), one dispatch a layer less is what makes it faster than dense; above it up's rows in
 * 128 workgroups are too few to read at the matvec's rate
 */
export const LOSSLESS_ONE_ROWS = 4096;

export class GpuDecodeSession {
  readonly counts: DecodeCounts = { mlpSelected: 0, mlpTotal: 0, headsSelected: 0, headsTotal: 0 };
  private readonly c: ModelConfig;
  private readonly dev: GPUDevice;
  private readonly cap: number;
  private n = 0; // positions held (= the next token's position: batch 1, no padding)
  private t = 0; // steps taken (the index of the cycled selection sets)
  private hostMlp = 0; // mlpSelected of the layers whose count the host knows
  private hostHeads = 0; // headsSelected likewise
  private readonly bufs: GPUBuffer[] = [];
  private readonly b: Record<'x' | 'hn' | 'qkv' | 'ctx' | 'a' | 'coef' | 'part' | 'logits' | 'tok' | 'hist' | 'cs' | 'stats' | 'thr' | 'sc' | 'pu1' | 'params' | 'staging', GPUBuffer>;
  /** per layer the input sites' thresholds (attn, o, mlp, down), on the GPU in b.thr (setThreshold changes them) */
  private readonly thr: Float32Array;
  private readonly sites: (LayerInputs | undefined)[];
  /** input rows the sites read, per layer and site (attn, o, mlp, down), summed over steps (as of the last readback) */
  readonly siteRows: number[][];
  /** the partial sums of the input-sparse q|k|v and MLP-input axpys (made when a layer has those sites) */
  private pq: GPUBuffer | null = null;
  private pu: GPUBuffer | null = null;
  private readonly K: GPUBuffer[] = [];
  private readonly V: GPUBuffer[] = [];
  /** per layer: the attention block's ops for each head set, the MLP block's ops for each neuron set */
  private readonly headOps: Op[][][] = [];
  private readonly mlpOps: Op[][][] = [];
  private readonly headCount: number[][] = [];
  private readonly mlpCount: number[][] = [];
  private readonly pre: Op[];
  private readonly post: Op[];
  private readonly argmax: Op;
  private invFreq: Float32Array | null;
  private readonly cs: Float32Array;
  /** the layers whose MLP rows read the GPU counts (lossless, predicted, a down input site) */
  private readonly lossless: number[];
  /** the layers whose heads a predictor picks on the GPU (their counts read back) */
  private readonly countedHeads: number[] = [];
  private busy = false;
  /** ms the last greedy call spent encoding and submitting on the host (its GPU work overlaps this) */
  lastHostMs = 0;
  private disposed = false;
  private readonly submitTokens: number;

  constructor(private readonly gpu: Gpu, private readonly w: GpuWeights, modes: GpuModes, o: GpuSessionOptions = {}, private readonly ownsWeights = false) {
    const c = (this.c = w.config), dev = (this.dev = gpu.device);
    const d = c.hidden, H = c.heads, KV = c.kvHeads, hd = c.headDim, F = c.ffn, V = c.vocabSize, L = c.layers;
    if (modes.mlp.length !== L || modes.heads.length !== L) throw new Error(`GPU decode modes for ${modes.mlp.length}/${modes.heads.length} layers, model has ${L}`);
    this.cap = o.capacity ?? Math.min(c.maxPositions, 2048);
    this.submitTokens = Math.max(1, Math.floor(o.submitTokens ?? SUBMIT_TOKENS));
    // the attention kernel keeps a head's scores over the cache in workgroup memory
    const shared = 4 * this.cap + 256 * 20 + 68 * hd / 4 + 16;
    if (shared > gpu.limits.maxComputeWorkgroupStorageSize) throw new UserError(`GPU decode: a KV cache of ${this.cap} positions needs ${shared} bytes of workgroup memory; this adapter has ${gpu.limits.maxComputeWorkgroupStorageSize}`, 'make the session with a smaller capacity');
    if (modes.inputs && modes.inputs.length !== L) throw new Error(`GPU decode: input sites for ${modes.inputs.length} layers, model has ${L}`);
    this.sites = modes.inputs ?? [];
    const sites = (i: number) => this.sites[i];
    modes.inputs?.forEach((si, i) => {
      const no = (what: string) => { throw new UserError(`the GPU decode runtime does not run layer ${i}'s ${what}`, 'decode this plan with the CPU runtime'); };
      if (si?.mlp && c.gated) no('MLP input threshold on a gated MLP');
      if (si?.mlp && modes.mlp[i]!.mode !== 'dense') no(`MLP input threshold with the ${modes.mlp[i]!.mode} MLP mode (the MLP input site runs with the dense mode)`);
      if (si?.o && modes.heads[i]!.mode !== 'dense') no('o input threshold with selected heads');
    });
    this.lossless = modes.mlp.flatMap((m, i) => (m.mode === 'lossless' || m.mode === 'predicted' || sites(i)?.down ? [i] : []));
    modes.mlp.forEach((m, i) => { if (m.mode === 'predicted' && c.gated) throw new UserError(`the GPU decode runtime does not run layer ${i}'s predicted gated MLP (its scores need the gate's and up's predictors)`, 'decode this bundle with the CPU runtime'); });
    if (modes.mlp.some((m) => m.mode === 'lossless') && (c.gated || (c.act !== 'relu' && c.act !== 'fatrelu'))) throw new UserError(`the GPU decode runtime's lossless mode needs an ungated ReLU MLP (this model's is ${c.gated ? 'gated ' : ''}${c.act})`, 'use dense or select modes for this model');
    const chunks = Math.min(128, Math.max(1, Math.ceil(F / 64)));
    const siteMost = Math.min(SITE_MAX_CHUNKS, o.siteMaxChunks ?? SITE_MAX_CHUNKS), selChunks = Math.min(128, Math.max(1, o.downChunks ?? chunks));
    const mk = (bytes: number, label: string, usage = 0) => { const b = gpuEmpty(gpu, bytes, label, usage); this.bufs.push(b); return b; };
    // (part: the down axpy's chunks, or an o / down site's: at most 128)
    this.b = {
      x: mk(4 * d, 'x'), hn: mk(4 * d, 'normed'), qkv: mk(4 * (H + 2 * KV) * hd, 'qkv'), ctx: mk(4 * H * hd, 'ctx'), a: mk(4 * F, 'a'), coef: mk(4 * F, 'coef'),
      part: mk(4 * Math.max(128, siteMost, MLP_CHUNKS) * d, 'part'), logits: mk(4 * V, 'logits'), tok: mk(16, 'tok'), hist: mk(4 * this.cap, 'hist'),
      // RoPE's cos / sin, a row per position (written for the positions a step or greedy call decodes)
      cs: mk(4 * Math.max(4, c.ropeDim) * (c.positions === 'rope' && c.ropeDim > 0 ? this.cap : 1), 'cos/sin'),
      // per layer: the MLP rows' count (lossless, predicted, down site), the attn / o / mlp sites' rows; the greedy non-finite flag; per layer the predicted heads' count
      stats: mk(256 * (2 * L + 1), 'stats'),
      sc: mk(4 * Math.max(F, H), 'scores'), pu1: mk(4 * Math.max(8, ...[...modes.mlp, ...modes.heads].map((m) => (m.mode === 'predicted' ? m.p.r : 0))), 'pred.hidden'),
      thr: mk(256 * L, 'thresholds'), // per layer (256 bytes apart: a binding's offset): the attn / o / mlp / down sites' thresholds
      // (storage: greedy's argmax advances it on the GPU)
      params: mk(16, 'params'),
      staging: dev.createBuffer({ label: 'staging', size: 4 * Math.max(V, this.cap) + 256 * (2 * L + 1), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }),
    };
    this.bufs.push(this.b.staging);
    for (let i = 0; i < L; i++) { this.K.push(mk(4 * KV * this.cap * hd, `K${i}`)); this.V.push(mk(4 * KV * this.cap * hd, `V${i}`)); }
    this.invFreq = c.positions === 'rope' && c.ropeDim > 0 ? ropeInvFreq(c) : null;
    this.cs = new Float32Array(Math.max(4, c.ropeDim) * this.cap);
    this.thr = new Float32Array(64 * L);
    this.siteRows = Array.from({ length: L }, () => [0, 0, 0, 0]);
    const s = this.b;
    const act: GpuAct = c.act;
    const opt = (k: number, b: GPUBuffer | undefined): Entry[] => (b ? [[k, b]] : []);
    const mv = (spec: Partial<MatvecSpec> & Pick<MatvecSpec, 'cols' | 'rows'>) => matvecWgsl({ bias: false, gated: false, gateBias: false, act: null, actThreshold: c.actThreshold, resid: false, zero: false, ...spec });
    const norm = (src: GPUBuffer, dst: GPUBuffer, g: GPUBuffer, bb: GPUBuffer | undefined): Op => this.op(normWgsl(d, c.norm, c.normEps, Boolean(bb)), [[0, src], [1, dst], [2, g], ...opt(3, bb)], 1);
    // a matvec of norm(x): the norm fused in (every workgroup normalizes x into workgroup memory: one dispatch less)
    // where the adapter has the workgroup memory, else a norm dispatch into s.hn first
    const fits = matvecNormBytes(d, c.gated) <= gpu.limits.maxComputeWorkgroupStorageSize, fuseRows = o.unfused ? 0 : o.fuseRows ?? FUSE_ROWS;
    const pairRows = o.unfused ? 0 : o.fusePairRows ?? FUSE_PAIR_ROWS;
    const normed = (spec: Partial<MatvecSpec> & Pick<MatvecSpec, 'cols' | 'rows'>, entries: Entry[], x: number, g: GPUBuffer, bb: GPUBuffer | undefined): Op[] => {
      const nm = { kind: c.norm, eps: c.normEps, hasB: Boolean(bb), out: false };
      if (fits && spec.rows <= fuseRows) return [this.op(mv({ ...spec, norm: nm }), [...entries, [1, s.x], [8, g], ...opt(9, bb)], x)];
      // two rows per 32 lanes (16 a workgroup): half the workgroups normalizing x
      const pairs = matvecNormBytes(d, true) <= gpu.limits.maxComputeWorkgroupStorageSize && !spec.f32 && !spec.gated && !spec.compact && !spec.colGather;
      if (pairs && spec.rows <= pairRows) return [this.op(mv({ ...spec, norm: nm, pair: true }), [...entries, [1, s.x], [8, g], ...opt(9, bb)], Math.ceil(spec.rows / 16))];
      return [norm(s.x, s.hn, g, bb), this.op(mv(spec), [...entries, [1, s.hn]], x)];
    };
    const attn = { heads: H, kvHeads: KV, hd, cap: this.cap, ropeDim: this.invFreq ? c.ropeDim : 0, scale: c.attnScale };
    const seq = (n: number) => Array.from({ length: n }, (_, i) => i);
    const check = (set: Int32Array, n: number, what: string) => { for (let j = 0; j < set.length; j++) if (!(set[j]! >= 0 && set[j]! < n) || (j && set[j]! === set[j - 1])) throw new Error(`GPU decode: ${what} set holds ${set[j]} (ids must be distinct, in 0..${n - 1})`); };

    this.pre = [this.op(embedWgsl(d, c.embedScale, Boolean(w.pos)), [[0, w.embed], [1, s.tok], [2, s.x], ...opt(3, w.pos && s.params), ...opt(4, w.pos)], Math.ceil(d / 256))];
    // a predictor's scores on the GPU: fc1 (float32, + bias, ReLU when it has one) of x, or of norm(x) (its ln2:
    // input h_mlp); fc2 (+ bias) into s.sc, then its rule (pickWgsl) into `sel`; or (an MLP threshold rule, `zeroed`:
    // sel's count zeroed by an earlier dispatch of the step) fc2 keeping the scores >= the threshold itself
    const scorer = (i: number, p: HostPredictor, rule: SelectionRule, ln: [GPUBuffer, GPUBuffer | undefined] | null, sel: GPUBuffer, stats: GPUBufferBinding, tail: number, zeroed: boolean): Op[] => {
      if (p.d !== d || p.r % 4) throw new UserError(`the GPU decode runtime: layer ${i}'s predictor has rank ${p.r} over ${p.d} inputs (it needs a rank divisible by 4 over the model's ${d})`, 'decode this bundle with the CPU runtime');
      const up = (x: Float32Array) => { const buf = gpuBuffer(gpu, x, `pred.${i}`); this.bufs.push(buf); return buf; };
      const [w1, b1, w2, b2] = [up(p.fc1Weight), up(p.fc1Bias), up(p.fc2Weight), up(p.fc2Bias)];
      const spec1 = { cols: d, rows: p.r, f32: true, bias: true, act: p.hiddenActivation === 'relu' ? ('relu' as const) : null };
      const fc1 = ln ? normed(spec1, [[0, w1], [2, s.pu1], [4, b1]], Math.ceil(p.r / 8), ln[0], ln[1]) : [this.op(mv(spec1), [[0, w1], [1, s.x], [2, s.pu1], [4, b1]], Math.ceil(p.r / 8))];
      const spec2 = { cols: p.r, rows: p.out, f32: true, bias: true };
      if (zeroed && rule.kind === 'threshold') return tag('pred', [...fc1, this.op(mv({ ...spec2, compact: { ge: rule.value } }), [[0, w2], [1, s.pu1], [2, s.sc], [4, b2], [7, sel], [11, s.coef], [12, stats]], Math.ceil(p.out / 8))]);
      return tag('pred', [...fc1, this.op(mv(spec2), [[0, w2], [1, s.pu1], [2, s.sc], [4, b2]], Math.ceil(p.out / 8)), this.op(pickWgsl(p.out, rule, tail), [[0, s.sc], [1, sel], [2, stats]], 1)]);
    };
    const statsOf = (k: number): GPUBufferBinding => ({ buffer: s.stats, offset: 256 * k, size: 16 });
    // heads predicted from the previous layer's input: their selection is made at that layer's start (layer 0: its own)
    const headSel = modes.heads.map((m, i) => (m.mode === 'predicted' ? mk(4 * (H + 2 * KV + 4), `sel.heads.${i}`) : null));
    this.pre = [this.op(embedWgsl(d, c.embedScale, Boolean(w.pos)), [[0, w.embed], [1, s.tok], [2, s.x], ...opt(3, w.pos && s.params), ...opt(4, w.pos)], Math.ceil(d / 256))];
    for (let i = 0; i < L; i++) {
      const Lw = w.layers[i]!, hm = modes.heads[i]!, mm = modes.mlp[i]!;
      const si = sites(i);
      const start: Op[] = [];
      for (const j of [i, i + 1]) {
        const m = modes.heads[j];
        if (m?.mode === 'predicted' && (j === i ? !m.prev || i === 0 : m.prev)) start.push(...scorer(j, m.p, m.rule, null, headSel[j]!, statsOf(L + 1 + j), 2 * KV, false));
      }
      // lossless with a down site: the down axpy skips the zero activations itself (threshold 0: the same rows)
      const viaSkip = mm.mode === 'lossless' && Boolean(si?.down);
      // the lossless MLP in one dispatch (no selection buffer: each chunk lists its nonzero activations itself)
      const oneLossless = mm.mode === 'lossless' && !viaSkip && !si?.mlp && !o.unfused && F <= (o.losslessOneRows ?? LOSSLESS_ONE_ROWS) && Math.ceil(F / chunks) <= 256
        && matvecNormBytes(d, false) + 8 * Math.ceil(F / chunks) + 64 <= gpu.limits.maxComputeWorkgroupStorageSize;
      // the MLP's selection made on the GPU this step (lossless: the nonzero activations; predicted: the predictor's
      // picks), its count zeroed by the attention block's last dispatch
      const msel = (mm.mode === 'lossless' && !viaSkip && !oneLossless) || mm.mode === 'predicted' ? mk(4 * (F + 4), `sel.mlp.${i}`) : undefined;
      // (a selection the layer's start makes, from x_attn, writes its count itself)
      const zsel = mm.mode === 'predicted' && mm.input === 'x_attn' ? undefined : msel;
      const NQ = (H + 2 * KV) * hd;
      // an input-sparse axpy: its threshold thr[64 i + k] (k: the site's index in INPUT_SITES), the rows it reads counted in the
      // layer's stats[k] (the down site's: the MLP's count)
      const site = (spec: Omit<AxpySiteSpec, 'skip' | 'count' | 'chunks'>, k: number, th: InputThreshold | null, count: boolean, entries: Entry[]): { op: Op; chunks: number } => {
        const chunks = siteChunks(spec.rows, spec.cols, o.siteThreads, siteMost);
        if (th) this.thr[64 * i + k] = th.t;
        const skip = th ? { slot: k, wina: Boolean(th.wina) } : null;
        const norm = (['qkvT.norm', 'oT.norm', 'upT.norm', 'down.norm'] as const)[k]!;
        return { chunks, op: this.op(axpySiteWgsl({ ...spec, chunks, skip, count: count ? (k + 1) % 4 : null }), [...entries,
          ...(skip?.wina ? [[4, gpuDerived(gpu, w, i, norm)] as Entry] : []), ...(skip ? [[9, { buffer: s.thr, offset: 256 * i, size: 16 }] as Entry] : []),
          ...(count ? [[7, statsOf(i)] as Entry] : [])], Math.ceil(spec.cols / 8 / 256), chunks) };
      };
      const qs = si?.attn ? site({ cols: NQ, rows: d, input: { kind: 'norm', norm: c.norm, eps: c.normEps, hasB: Boolean(Lw.ln1b) } }, 0, si.attn, true,
        [[0, gpuDerived(gpu, w, i, 'qkvT')], [1, s.x], [2, (this.pq ??= mk(4 * siteMost * NQ, 'parts.qkv'))], [5, Lw.ln1g], ...opt(6, Lw.ln1b)]) : null;
      const os = si?.o ? site({ cols: d, rows: H * hd, input: { kind: 'x' } }, 1, si.o, true, [[0, gpuDerived(gpu, w, i, 'oT')], [1, s.ctx], [2, s.part]]) : null;
      // attention block: one op list per head set (dense: all; select: the fixed sets; predicted: the selection this step's scorer made)
      const hsets: { sel: GPUBuffer; n: number; host: number }[] = hm.mode === 'predicted' ? [{ sel: headSel[i]!, n: H, host: 0 }]
        : (hm.mode === 'dense' ? [Int32Array.from(seq(H))] : hm.sets).map((set) => {
          check(set, H, `layer ${i} head`);
          if (!set.length) throw new Error(`GPU decode: layer ${i}: an empty head set`);
          return { sel: this.buf(Uint32Array.from([set.length + 2 * KV, ...set, ...seq(2 * KV).map((k) => H + k)]), `sel.heads.${i}`), n: set.length, host: set.length };
        });
      if (!hsets.length) throw new Error(`GPU decode: layer ${i} heads: no sets`);
      this.headCount.push(hsets.map((x) => x.host));
      if (hm.mode === 'predicted') this.countedHeads.push(i);
      this.headOps.push(hsets.map(({ sel, n }) => {
        const rows = (n + 2 * KV) * hd;
        const attnOp = (src: GPUBuffer, parts: { chunks: number; bias: boolean } | undefined) => tag('attn', [this.op(attentionWgsl({ ...attn, parts }),
          [[0, src], [1, sel], [2, this.K[i]!], [3, this.V[i]!], [4, s.ctx], [5, s.params], ...opt(6, attn.ropeDim ? s.cs : undefined),
            ...opt(8, parts?.bias ? Lw.qkvBias : undefined)], Math.max(n, KV))]);
        return [...start,
          // q|k|v: the rows of the selected heads' q and every k, v (matvec); or, at a q/k/v input site, every row of the kept inputs (axpy)
          ...(qs ? [...tag('site.attn', [qs.op]), ...attnOp(this.pq!, { chunks: qs.chunks, bias: Boolean(Lw.qkvBias) })]
            : [...tag('qkv', normed({ cols: d, rows, rowGather: { G: hd, sub: 0 }, bias: Boolean(Lw.qkvBias) }, [[0, Lw.qkv], [2, s.qkv], [3, sel], ...opt(4, Lw.qkvBias)], Math.ceil(rows / 8), Lw.ln1g, Lw.ln1b)),
              ...attnOp(s.qkv, undefined)]),
          // o (+ the residual): the selected heads' columns, or the kept inputs' rows (+ the chunks' sum); workgroup 0 zeroes the MLP selection's count
          ...(os ? tag('site.o', [os.op, this.op(reduceWgsl(d, os.chunks, Boolean(Lw.oBias), Boolean(zsel)), [[0, s.x], [1, s.part], ...opt(2, Lw.oBias), ...opt(3, zsel)], Math.ceil(d / 32))])
            : tag('o', [this.op(mv({ cols: H * hd, rows: d, colGather: { G: hd, sub: 2 * KV }, bias: Boolean(Lw.oBias), resid: true, zero: Boolean(zsel) }),
              [[0, Lw.o], [1, s.ctx], [2, s.x], [3, sel], ...opt(4, Lw.oBias), ...opt(7, zsel)], Math.ceil(d / 8))])),
        ];
      }));
      // MLP block: one op list per neuron set
      const gated = Boolean(Lw.gate);
      const upEntries = (sel: GPUBuffer | null, out: GPUBuffer): Entry[] => [[0, Lw.up], [2, out], ...opt(3, sel ?? undefined), ...opt(4, Lw.upBias),
        ...opt(5, Lw.gate), ...opt(6, Lw.gateBias)];
      const upSpec = { cols: d, bias: Boolean(Lw.upBias), gated, gateBias: Boolean(Lw.gateBias), act };
      const up = (spec: Partial<MatvecSpec> & Pick<MatvecSpec, 'rows'>, entries: Entry[], x: number) => tag('up', normed({ ...upSpec, ...spec }, entries, x, Lw.ln2g, Lw.ln2b));
      const reduce = (ch: number) => tag('reduce', [this.op(reduceWgsl(d, ch, Boolean(Lw.downBias)), [[0, s.x], [1, s.part], ...opt(2, Lw.downBias)], Math.ceil(d / 32))])[0]!;
      const axpyX = Math.ceil(d / 8 / 256);
      const down = (spec: Parameters<typeof axpyWgsl>[0], entries: Entry[]) => tag('down', [this.op(axpyWgsl(spec), entries, axpyX, spec.chunks)])[0]!;
      const dn = si?.down ?? (viaSkip ? { t: 0 } : null);
      // the selected neurons: fixed sets, or the predictor's picks (scored now, or at the layer's start from x_attn)
      let nsets: { sel: GPUBuffer; n: number }[] | null = null;
      const pre: Op[] = [];
      if (mm.mode === 'select') {
        if (!mm.sets.length) throw new Error(`GPU decode: layer ${i} MLP: no sets`);
        nsets = mm.sets.map((set) => ({ sel: this.selBuf(set, F, `layer ${i} neuron`, `sel.mlp.${i}`), n: set.length }));
      } else if (mm.mode === 'predicted') {
        nsets = [{ sel: msel!, n: F }];
        const ops = scorer(i, mm.p, mm.rule, mm.input === 'h_mlp' ? [Lw.ln2g, Lw.ln2b] : null, msel!, statsOf(i), 0, mm.input !== 'x_attn');
        if (mm.input === 'x_attn') for (const hl of this.headOps[i]!) hl.unshift(...ops); else pre.push(...ops);
      }
      const upOf = (set: { sel: GPUBuffer; n: number } | null) => (set ? up({ rows: set.n, rowGather: { G: 1, sub: 0 } }, upEntries(set.sel, s.a), Math.ceil(set.n / 8))
        : up({ rows: F }, upEntries(null, s.a), Math.ceil(F / 8)));
      this.mlpCount.push(mm.mode === 'select' && !dn ? mm.sets.map((x) => x.length) : mm.mode === 'dense' && !dn ? [F] : [0]);
      if (si?.mlp) {
        // the MLP input site: up over the kept inputs' rows (axpy, every neuron), then down summing its chunks (+ bias, act) over the rows its own site keeps
        const us = site({ cols: F, rows: d, input: { kind: 'norm', norm: c.norm, eps: c.normEps, hasB: Boolean(Lw.ln2b) } }, 2, si.mlp, true,
          [[0, gpuDerived(gpu, w, i, 'upT')], [1, s.x], [2, (this.pu ??= mk(4 * siteMost * F, 'parts.up'))], [5, Lw.ln2g], ...opt(6, Lw.ln2b)]);
        // fc1's chunks summed once (+ bias, act) into s.a (each of fc2's workgroups summed its inputs' 48 chunks itself: fc2's
        // site 29 µs against dense down's 45 at 50% kept on the H200), then fc2's site reads a
        const sum = this.op(sumPartsWgsl(F, us.chunks, Boolean(Lw.upBias), act, c.actThreshold), [[0, s.a], [1, this.pu!], ...opt(2, Lw.upBias)], Math.ceil(F / 32));
        const ds = site({ cols: d, rows: F, input: { kind: 'x' } }, 3, si.down ?? null, Boolean(si.down), [[0, Lw.down], [1, s.a], [2, s.part]]);
        this.mlpOps.push([[...tag('site.mlp', [us.op, sum]), ...tag('site.down', [ds.op]), reduce(ds.chunks)]]);
      } else if (dn) {
        // the down input site: up as its mode says, then down over the rows of the activations it keeps (counted on the GPU)
        this.mlpOps.push((nsets ?? [null]).map((set) => {
          const ds = site({ cols: d, rows: set ? set.n : F, input: { kind: set ? 'gather' : 'x' } }, 3, dn, true, [[0, Lw.down], [1, s.a], [2, s.part], ...opt(3, set?.sel)]);
          return [...pre, ...upOf(set), ...tag('site.down', [ds.op]), reduce(ds.chunks)];
        }));
      } else if (nsets) {
        this.mlpOps.push(nsets.map((set) => {
          // up and down in one dispatch, the norm fused in: a workgroup per chunk of the selected neurons
          const ch = Math.min(MLP_CHUNKS, Math.max(1, Math.floor(o.mlpChunks ?? (mm.mode === 'select' ? Math.ceil(set.n / 8) : MLP_CHUNKS))));
          if (!o.splitMlp && !o.unfused && matvecNormBytes(d, gated) + 8 * Math.ceil(set.n / ch) <= gpu.limits.maxComputeWorkgroupStorageSize) {
            const nm = { kind: c.norm, eps: c.normEps, hasB: Boolean(Lw.ln2b) };
            const op = this.op(mlpSelWgsl({ cols: d, rows: set.n, chunks: ch, bias: Boolean(Lw.upBias), gated, gateBias: Boolean(Lw.gateBias), act, actThreshold: c.actThreshold, norm: nm }),
              [[0, Lw.up], [1, s.x], [2, s.part], [3, set.sel], ...opt(4, Lw.upBias), ...opt(5, Lw.gate), ...opt(6, Lw.gateBias), [8, Lw.ln2g], ...opt(9, Lw.ln2b), [13, Lw.down]], ch);
            return [...pre, ...tag('updown', [op]), reduce(ch)];
          }
          const dch = mm.mode === 'select' ? selChunks : chunks;
          return [...pre, ...upOf(set), down({ cols: d, rows: F, chunks: dch, gather: true }, [[0, Lw.down], [1, s.a], [2, s.part], [3, set.sel]]), reduce(dch)];
        }));
      } else if (oneLossless) {
        const op = this.op(mlpSelWgsl({ cols: d, rows: F, chunks, bias: Boolean(Lw.upBias), gated: false, gateBias: false, act, actThreshold: c.actThreshold,
          norm: { kind: c.norm, eps: c.normEps, hasB: Boolean(Lw.ln2b) }, every: true, skipZero: true }),
        [[0, Lw.up], [1, s.x], [2, s.part], ...opt(4, Lw.upBias), [8, Lw.ln2g], ...opt(9, Lw.ln2b), [12, statsOf(i)], [13, Lw.down]], chunks);
        this.mlpOps.push([[...tag('updown', [op]), reduce(chunks)]]);
      } else if (mm.mode === 'lossless') {
        // up for every neuron, its nonzero activations compacted in the same dispatch (ids into msel, values into coef)
        this.mlpOps.push([[...up({ rows: F, compact: true }, [...upEntries(null, s.a), [7, msel!], [11, s.coef], [12, statsOf(i)]], Math.ceil(F / 8)),
          down({ cols: d, rows: F, chunks, gather: true }, [[0, Lw.down], [1, s.coef], [2, s.part], [3, msel!]]), reduce(chunks)]]);
      } else {
        this.mlpOps.push([[...upOf(null), down({ cols: d, rows: F, chunks, gather: false }, [[0, Lw.down], [1, s.a], [2, s.part]]), reduce(chunks)]]);
      }
    }
    this.post = w.finalG ? normed({ cols: d, rows: V }, [[0, w.lmHead], [2, s.logits]], Math.ceil(V / 8), w.finalG, w.finalB)
      : [this.op(mv({ cols: d, rows: V }), [[0, w.lmHead], [1, s.x], [2, s.logits]], Math.ceil(V / 8))];
    dev.queue.writeBuffer(s.thr, 0, this.thr);
    this.argmax = this.op(argmaxWgsl(V), [[0, s.logits], [1, s.tok], [2, s.hist], [3, s.params], [4, { buffer: s.stats, offset: 256 * L, size: 16 }]], 1);
  }

  private buf(data: Uint32Array, label: string): GPUBuffer { const b = gpuBuffer(this.gpu, data, label); this.bufs.push(b); return b; }

  /** a neuron set (distinct ids in 0..n-1, not empty) as a selection buffer [count, ids...] */
  private selBuf(set: Int32Array, n: number, what: string, label: string): GPUBuffer {
    for (let j = 0; j < set.length; j++) if (!(set[j]! >= 0 && set[j]! < n) || (j && set[j]! === set[j - 1])) throw new Error(`GPU decode: ${what} set holds ${set[j]} (ids must be distinct, in 0..${n - 1})`);
    if (!set.length) throw new Error(`GPU decode: ${what}: an empty set`);
    return this.buf(Uint32Array.from([set.length, ...set]), label);
  }

  /** a dispatch of `code` (pipelines cached by source) over `entries` (a buffer, or a {buffer, offset, size} range) */
  private op(code: string, entries: [number, GPUBuffer | GPUBufferBinding][], x: number, y = 1): Op {
    let m = pipelines.get(this.dev);
    if (!m) pipelines.set(this.dev, (m = new Map()));
    let p = m.get(code);
    if (!p) {
      p = this.dev.createComputePipeline({ layout: 'auto', compute: { module: this.dev.createShaderModule({ code }), entryPoint: 'main' } });
      m.set(code, p);
    }
    const g = this.dev.createBindGroup({ layout: p.getBindGroupLayout(0), entries: entries.map(([binding, r]) => ({ binding, resource: 'buffer' in r ? r : { buffer: r } })) });
    return { p, g, x, y };
  }

  /** Change layer i's threshold of an input site it has (calibration: the next steps use it). */
  setThreshold(i: number, site: InputSite, t: number): void {
    const k = INPUT_SITES.indexOf(site);
    if (!this.sites[i]?.[site] && !(site === 'down' && this.lossless.includes(i))) throw new Error(`GPU decode: layer ${i} has no ${site} input site`);
    this.thr[64 * i + k] = t;
    this.dev.queue.writeBuffer(this.b.thr, 256 * i + 4 * k, this.thr, 64 * i + k, 1);
  }

  /** what layer i's ops compute, in order (its head set `set.heads`, its neuron set `set.mlp`): what timeOps can time */
  opNames(i: number, set: { heads?: number; mlp?: number } = {}): (OpName | undefined)[] {
    return [...this.headOps[i]![set.heads ?? 0]!, ...this.mlpOps[i]![set.mlp ?? 0]!].map((o) => o.name);
  }

  /**
   * ms per run of layer i's ops named `names` (all: null) of its attention block for head set `set.heads` and its MLP
   * block for neuron set `set.mlp`, at the session's position (`set.a`: the MLP activations written first, for ops
   * that read them): `reps` runs in one compute pass per submission (as a step runs them: each dispatch's fixed cost
   * and barrier included; the host's encoding where it takes longer), enough to last ~`ms`, the median of `batches`
   * submissions. The values they leave are
   * meaningless (the plan's cost model times with it; a session that decodes afterwards must be made again).
   */
  async timeOps(i: number, names: readonly OpName[] | null, set: { heads?: number; mlp?: number; a?: Float32Array } = {}, ms = 4, batches = 5): Promise<number> {
    const hs = this.headOps[i]?.[set.heads ?? 0], mset = this.mlpOps[i]?.[set.mlp ?? 0];
    if (!hs || !mset) throw new Error(`GPU decode: timeOps: layer ${i} has no head set ${set.heads ?? 0} / neuron set ${set.mlp ?? 0}`);
    const ops = [...hs, ...mset].filter((o) => !names || names.includes(o.name!));
    if (!ops.length) throw new Error(`GPU decode: timeOps: layer ${i} has no ${names!.join(' / ')} ops`);
    if (this.busy || this.disposed) throw new Error('GPU decode: timeOps while a step is in flight, or after dispose');
    this.busy = true;
    try {
      const c = this.c;
      this.dev.queue.writeBuffer(this.b.params, 0, Uint32Array.from([this.n, this.n + c.positionOffset, 0, 0]));
      if (set.a) this.dev.queue.writeBuffer(this.b.a, 0, set.a);
      // the device's time, or the host's to encode them where that is longer (a step whose encoding outlasts its GPU
      // work, as small models' do, pays each dispatch's encoding: greedy overlaps the two)
      const batch = async (reps: number) => {
        const t0 = performance.now(), enc = this.dev.createCommandEncoder(), pass = enc.beginComputePass();
        for (let r = 0; r < reps; r++) for (const o of ops) { pass.setPipeline(o.p); pass.setBindGroup(0, o.g); pass.dispatchWorkgroups(o.x, o.y); }
        pass.end();
        const cmd = enc.finish(), t1 = performance.now();
        this.dev.queue.submit([cmd]);
        await this.dev.queue.onSubmittedWorkDone();
        return Math.max(t1 - t0, performance.now() - t1);
      };
      let reps = 1;
      for (let t = await batch(1); t < ms && reps < 1 << 16; t = await batch(reps)) reps *= Math.min(16, Math.max(2, Math.ceil(ms / Math.max(t, 1e-3))));
      const xs: number[] = [];
      for (let k = 0; k < batches; k++) xs.push((await batch(reps)) / reps);
      checkGpu(this.gpu, 'timeOps');
      return median(xs);
    } finally { this.busy = false; }
  }

  /** Positions the next token takes. */
  position(b = 0): number { if (b !== 0) throw new Error('GPU decode: batch 1'); return this.n; }

  /** Forget the last n positions (benchmarks: steps at a fixed context). */
  rewind(n: number): void { if (n > this.n) throw new Error(`rewind ${n}: the session holds ${this.n} positions`); this.n -= n; }

  /** Copy a prefill's cache (forward(..., { cache })): one row, [1, KV, P, hd] per layer, every position attended. */
  loadCache(cache: KVCache): void {
    const c = this.c, KV = c.kvHeads, hd = c.headDim;
    if (cache.keyMask.length !== 1) throw new Error(`GPU decode: loadCache of ${cache.keyMask.length} rows; the GPU session decodes one`);
    const P = cache.keyMask[0]!.length;
    if (cache.keyMask[0]!.some((m) => !m)) throw new Error('GPU decode: loadCache with padded positions (one row is never padded)');
    if (P >= this.cap) throw new UserError(`GPU decode: the prompt has ${P} tokens; the session's KV cache holds ${this.cap} positions`, 'shorten the prompt');
    for (let i = 0; i < c.layers; i++) {
      const k = cache.k[i]!.dataSync() as Float32Array, v = cache.v[i]!.dataSync() as Float32Array;
      for (let h = 0; h < KV; h++) {
        this.dev.queue.writeBuffer(this.K[i]!, 4 * h * this.cap * hd, k, h * P * hd, P * hd);
        this.dev.queue.writeBuffer(this.V[i]!, 4 * h * this.cap * hd, v, h * P * hd, P * hd);
      }
    }
    this.n = P;
  }

  /**
   * write the params (slot, position, step index) of the next `count` tokens' first and the cos / sin rows of their
   * positions (greedy's argmax advances the params on the GPU: one write per call, not per token)
   */
  private writeParams(count: number, histStep: number): void {
    const c = this.c, n = this.n, last = n + count - 1;
    if (last >= this.cap) throw new UserError(`GPU decode: position ${last} is past the session's KV cache (${this.cap} positions)`, 'decode fewer tokens, or make the session with a larger capacity');
    if (c.positions === 'learned' && last >= c.maxPositions) throw new UserError(`decode: position ${last} exceeds the model's max_position_embeddings ${c.maxPositions}`);
    this.dev.queue.writeBuffer(this.b.params, 0, Uint32Array.from([n, n + c.positionOffset, histStep, 0]));
    if (this.invFreq) {
      const R = c.ropeDim, h = R / 2;
      for (let p = n; p <= last; p++) {
        if (c.ropeScaling?.type === 'dynamic') this.invFreq = ropeInvFreq(c, p + 1);
        ropeAngles(c, this.invFreq, p, this.cs.subarray(p * R, p * R + h), this.cs.subarray(p * R + h, p * R + R));
      }
      this.dev.queue.writeBuffer(this.b.cs, 4 * n * R, this.cs, n * R, count * R);
    }
  }

  /** encode the next token's pass (its params written by writeParams, or advanced by the previous token's argmax) */
  private encode(enc: GPUCommandEncoder, histStep: number | null): void {
    const c = this.c;
    const pass = enc.beginComputePass();
    const run = (ops: Op[]) => { for (const o of ops) { pass.setPipeline(o.p); pass.setBindGroup(0, o.g); pass.dispatchWorkgroups(o.x, o.y); } };
    run(this.pre);
    const t = this.t;
    for (let i = 0; i < c.layers; i++) {
      const hs = t % this.headOps[i]!.length, ms = t % this.mlpOps[i]!.length;
      run(this.headOps[i]![hs]!);
      run(this.mlpOps[i]![ms]!);
      this.hostHeads += this.headCount[i]![hs]!; this.counts.headsTotal += c.heads;
      this.hostMlp += this.mlpCount[i]![ms]!; this.counts.mlpTotal += c.ffn;
    }
    run(this.post);
    if (histStep !== null) run([this.argmax]);
    pass.end();
    this.n++; this.t++;
  }

  /** copy `bytes` of `src` and the lossless counts to the staging buffer, submit, and read both back */
  private async readback(enc: GPUCommandEncoder, src: GPUBuffer, bytes: number, what: string): Promise<ArrayBuffer> {
    const L = this.c.layers, s = this.b.staging, off = 4 * Math.max(this.c.vocabSize, this.cap);
    enc.copyBufferToBuffer(src, 0, s, 0, bytes);
    enc.copyBufferToBuffer(this.b.stats, 0, s, off, 256 * (2 * L + 1));
    this.dev.queue.submit([enc.finish()]);
    await s.mapAsync(GPUMapMode.READ);
    try {
      const out = s.getMappedRange(0, bytes).slice(0);
      const st = new Uint32Array(s.getMappedRange(off, 256 * (2 * L + 1)));
      this.counts.mlpSelected = this.hostMlp + this.lossless.reduce((a, i) => a + st[64 * i]!, 0);
      this.counts.headsSelected = this.hostHeads + this.countedHeads.reduce((a, i) => a + st[64 * (L + 1 + i)]!, 0);
      this.siteRows.forEach((r, i) => { for (let k = 0; k < 4; k++) r[k] = st[64 * i + (k + 1) % 4]!; });
      checkGpu(this.gpu, what);
      if (st[64 * L]) throw new UserError(`${what} (GPU): the model produced non-finite logits`, 'the weights hold NaN/Inf: check the checkpoint');
      return out;
    } finally { s.unmap(); }
  }

  private enter(ids: number[]): void {
    if (this.disposed) throw new Error('GPU decode: the session was disposed');
    if (this.busy) throw new Error('GPU decode: a step is already in flight (await it first)');
    if (ids.length !== 1) throw new Error(`GPU decode: ${ids.length} tokens; the GPU session decodes one row`);
    const id = ids[0]!;
    if (!Number.isInteger(id) || id < 0 || id >= this.c.vocabSize) throw new UserError(`decode: token id ${id} is outside the vocabulary (0..${this.c.vocabSize - 1})`);
    this.dev.queue.writeBuffer(this.b.tok, 0, Uint32Array.from([id, 0, 0, 0]));
  }

  /** One token -> its logits [V] (one submission, one readback). */
  async step(ids: number[]): Promise<Float32Array> {
    this.enter(ids);
    this.busy = true;
    try {
      const enc = this.dev.createCommandEncoder();
      this.writeParams(1, 0);
      this.encode(enc, null);
      return new Float32Array(await this.readback(enc, this.b.logits, 4 * this.c.vocabSize, 'step'));
    } finally { this.busy = false; }
  }

  /**
   * Greedy decoding on the GPU: `first` then `n` steps, each step's argmax feeding the next and advancing the params
   * (no readback and no host write between tokens: a submission per `submitTokens` tokens, the tokens read back once
   * at the end). Returns the n tokens the steps chose.
   */
  async greedy(first: number, n: number): Promise<number[]> {
    this.enter([first]);
    if (n < 1 || n > this.cap) throw new Error(`GPU decode: greedy of ${n} tokens (1..${this.cap})`);
    this.busy = true;
    try {
      const t0 = performance.now();
      this.writeParams(n, 0);
      let enc = this.dev.createCommandEncoder();
      for (let k = 0; k < n; k++) {
        this.encode(enc, k);
        if (k < n - 1 && (k + 1) % this.submitTokens === 0) { this.dev.queue.submit([enc.finish()]); enc = this.dev.createCommandEncoder(); }
      }
      this.lastHostMs = performance.now() - t0;
      return Array.from(new Uint32Array(await this.readback(enc, this.b.hist, 4 * n, 'greedy')));
    } finally { this.busy = false; }
  }

  /** Free the session's buffers (and the weights when the session uploaded them). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const b of [...this.bufs, ...this.K, ...this.V]) b.destroy();
    if (this.ownsWeights) this.w.dispose();
  }
}

/**
 * The factory the stages hook: a GPU session for a loaded model, its weights uploaded (float16) and owned by the
 * session. UserError when `webgpu` or an adapter is missing, or the model has what the GPU runtime does not run.
 */
export async function gpuSession(model: Model, modes: GpuModes = gpuDenseModes(model.config.layers), o: GpuSessionOptions = {}): Promise<GpuDecodeSession> {
  const gpu = await getGpu();
  const w = gpuWeightsFromModel(gpu, model);
  try { return new GpuDecodeSession(gpu, w, modes, o, true); } catch (e) { w.dispose(); throw e; }
}
