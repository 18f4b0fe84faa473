/**
 * The decode runtime on the GPU (raw WebGPU, WGSL compute shaders in ./kernels.ts): the same function as
 * src/runtime/decoder.ts's DecodeSession, batch 1, with the weights (./weights.ts), the KV cache and every vector
 * resident on the GPU. One command submission per token: every layer's kernels in one compute pass, then one
 * readback (the logits: `step`), or none per token (`greedy`: the argmax on the GPU feeds the next token's
 * embedding; the tokens come back once at the end).
 *
 * Per layer (dense OPT: 8 dispatches):
 *   norm ln1 -> matvec q|k|v (the selected heads' q rows, every kv head's k, v) -> attention (a workgroup per
 *   selected head: RoPE, the new K / V into the cache) -> matvec o over the selected heads' columns (+ residual)
 *   -> norm ln2 -> matvec up (| gate) + activation over the selected rows -> [lossless: compaction of the nonzero
 *   activations] -> split-K axpy of down's selected rows -> sum of the chunks (+ bias, + residual)
 * Modes per layer, fixed at construction (the selection of a step is a set uploaded once; `sets` cycle per step
 * like src/bench/decode.ts's random picks, a CPU `pick: () => sets[i++ % n]` picks the same):
 *   MLP   dense | lossless (ReLU: up for every neuron, then only the nonzero rows of down, compacted on the GPU)
 *         | select (fixed neuron sets)
 *   heads dense | select (fixed head sets; K and V are computed for every kv head, so the cache stays exact)
 * Not here (yet): the predictors on the GPU, so a plan's predicted modes run on the CPU runtime only.
 */
import type { KVCache } from '../../model/forward.js';
import type { ModelConfig } from '../../model/config.js';
import type { Model } from '../../model/model.js';
import { UserError } from '../../util/errors.js';
import { ropeAngles, ropeInvFreq } from '../../arch/traits.js';
import type { DecodeCounts, DecodeModes } from '../decoder.js';
import { checkGpu, getGpu, type Gpu } from './device.js';
import { argmaxWgsl, attentionWgsl, axpyWgsl, compactWgsl, embedWgsl, matvecWgsl, normWgsl, reduceWgsl, type GpuAct, type MatvecSpec } from './kernels.js';
import { gpuBuffer, gpuEmpty, gpuWeightsFromModel, type GpuWeights } from './weights.js';

export type GpuMlpMode = { mode: 'dense' } | { mode: 'lossless' } | { mode: 'select'; sets: Int32Array[] };
export type GpuHeadMode = { mode: 'dense' } | { mode: 'select'; sets: Int32Array[] };
export interface GpuModes { mlp: GpuMlpMode[]; heads: GpuHeadMode[] }

export function gpuDenseModes(layers: number): GpuModes {
  return { mlp: Array.from({ length: layers }, () => ({ mode: 'dense' })), heads: Array.from({ length: layers }, () => ({ mode: 'dense' })) };
}

/**
 * The CPU runtime's modes as GPU modes: dense and lossless carry over; a `select` layer (a predictor's picks, run
 * on the host) does not — the GPU runtime has no predictors yet (UserError naming the layers).
 */
export function gpuModesOf(modes: DecodeModes): GpuModes {
  const bad = [...modes.mlp.map((m, i) => (m.mode === 'select' ? `layer ${i} MLP` : '')), ...modes.heads.map((m, i) => (m.mode === 'select' ? `layer ${i} heads` : ''))].filter(Boolean);
  if (bad.length) throw new UserError(`the GPU decode runtime cannot run predicted modes yet (${bad.slice(0, 4).join(', ')}${bad.length > 4 ? `, ... ${bad.length - 4} more` : ''}): its predictors run on the CPU only`,
    'decode with the CPU runtime, or use a plan of dense / lossless layers on the GPU');
  return { mlp: modes.mlp.map((m) => ({ mode: m.mode === 'lossless' ? 'lossless' : 'dense' })), heads: modes.heads.map(() => ({ mode: 'dense' })) };
}

interface Op { p: GPUComputePipeline; g: GPUBindGroup; x: number; y: number }
/** compiled pipelines by device and source: sessions of one shape share them (a compile is slow on software Vulkan) */
const pipelines = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();
type Entry = [number, GPUBuffer];

export interface GpuSessionOptions {
  /** positions the KV cache holds (default: the model's max positions, at most 2048) */
  capacity?: number;
}

export class GpuDecodeSession {
  readonly counts: DecodeCounts = { mlpSelected: 0, mlpTotal: 0, headsSelected: 0, headsTotal: 0 };
  private readonly c: ModelConfig;
  private readonly dev: GPUDevice;
  private readonly cap: number;
  private n = 0; // positions held (= the next token's position: batch 1, no padding)
  private t = 0; // steps taken (the index of the cycled selection sets)
  private hostMlp = 0; // mlpSelected of the non-lossless layers
  private readonly bufs: GPUBuffer[] = [];
  private readonly b: Record<'x' | 'hn' | 'qkv' | 'ctx' | 'a' | 'coef' | 'part' | 'logits' | 'tok' | 'hist' | 'cs' | 'stats' | 'params' | 'staging', GPUBuffer>;
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
  private readonly lossless: number[];
  private busy = false;
  /** ms the last greedy call spent encoding and submitting on the host (its GPU work overlaps this) */
  lastHostMs = 0;
  private disposed = false;

  constructor(private readonly gpu: Gpu, private readonly w: GpuWeights, modes: GpuModes, o: GpuSessionOptions = {}, private readonly ownsWeights = false) {
    const c = (this.c = w.config), dev = (this.dev = gpu.device);
    const d = c.hidden, H = c.heads, KV = c.kvHeads, hd = c.headDim, F = c.ffn, V = c.vocabSize, L = c.layers;
    if (modes.mlp.length !== L || modes.heads.length !== L) throw new Error(`GPU decode modes for ${modes.mlp.length}/${modes.heads.length} layers, model has ${L}`);
    this.cap = o.capacity ?? Math.min(c.maxPositions, 2048);
    // the attention kernel keeps a head's scores over the cache in workgroup memory
    const shared = 4 * this.cap + 256 * 20 + 48 * hd / 4 + 16;
    if (shared > gpu.limits.maxComputeWorkgroupStorageSize) throw new UserError(`GPU decode: a KV cache of ${this.cap} positions needs ${shared} bytes of workgroup memory; this adapter has ${gpu.limits.maxComputeWorkgroupStorageSize}`, 'make the session with a smaller capacity');
    this.lossless = modes.mlp.flatMap((m, i) => (m.mode === 'lossless' ? [i] : []));
    if (this.lossless.length && (c.gated || (c.act !== 'relu' && c.act !== 'fatrelu'))) throw new UserError(`the GPU decode runtime's lossless mode needs an ungated ReLU MLP (this model's is ${c.gated ? 'gated ' : ''}${c.act})`, 'use dense or select modes for this model');
    const chunks = Math.min(128, Math.max(1, Math.ceil(F / 64)));
    const mk = (bytes: number, label: string, usage = 0) => { const b = gpuEmpty(gpu, bytes, label, usage); this.bufs.push(b); return b; };
    this.b = {
      x: mk(4 * d, 'x'), hn: mk(4 * d, 'normed'), qkv: mk(4 * (H + 2 * KV) * hd, 'qkv'), ctx: mk(4 * H * hd, 'ctx'), a: mk(4 * F, 'a'), coef: mk(4 * F, 'coef'),
      part: mk(4 * chunks * d, 'part'), logits: mk(4 * V, 'logits'), tok: mk(16, 'tok'), hist: mk(4 * this.cap, 'hist'), cs: mk(4 * Math.max(4, c.ropeDim), 'cos/sin'),
      stats: mk(256 * (L + 1), 'stats'), // per layer: the lossless count; then the greedy non-finite flag
      params: dev.createBuffer({ label: 'params', size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST }),
      staging: dev.createBuffer({ label: 'staging', size: 4 * Math.max(V, this.cap) + 256 * (L + 1), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }),
    };
    this.bufs.push(this.b.params, this.b.staging);
    for (let i = 0; i < L; i++) { this.K.push(mk(4 * KV * this.cap * hd, `K${i}`)); this.V.push(mk(4 * KV * this.cap * hd, `V${i}`)); }
    this.invFreq = c.positions === 'rope' && c.ropeDim > 0 ? ropeInvFreq(c) : null;
    this.cs = new Float32Array(Math.max(4, c.ropeDim));
    const s = this.b;
    const act: GpuAct = c.act;
    const opt = (k: number, b: GPUBuffer | undefined): Entry[] => (b ? [[k, b]] : []);
    const mv = (spec: Partial<MatvecSpec> & Pick<MatvecSpec, 'cols' | 'rows'>) => matvecWgsl({ bias: false, gated: false, gateBias: false, act: null, actThreshold: c.actThreshold, resid: false, zero: false, ...spec });
    const norm = (src: GPUBuffer, dst: GPUBuffer, g: GPUBuffer, bb: GPUBuffer | undefined): Op => this.op(normWgsl(d, c.norm, c.normEps, Boolean(bb)), [[0, src], [1, dst], [2, g], ...opt(3, bb)], 1);
    const attn = { heads: H, kvHeads: KV, hd, cap: this.cap, ropeDim: this.invFreq ? c.ropeDim : 0, scale: c.attnScale };
    const seq = (n: number) => Array.from({ length: n }, (_, i) => i);
    const check = (set: Int32Array, n: number, what: string) => { for (let j = 0; j < set.length; j++) if (!(set[j]! >= 0 && set[j]! < n) || (j && set[j]! === set[j - 1])) throw new Error(`GPU decode: ${what} set holds ${set[j]} (ids must be distinct, in 0..${n - 1})`); };

    this.pre = [this.op(embedWgsl(d, c.embedScale, Boolean(w.pos)), [[0, w.embed], [1, s.tok], [2, s.x], ...opt(3, w.pos && s.params), ...opt(4, w.pos)], Math.ceil(d / 256))];
    for (let i = 0; i < L; i++) {
      const Lw = w.layers[i]!, hm = modes.heads[i]!, mm = modes.mlp[i]!;
      // attention block: one op list per head set
      const hsets = hm.mode === 'dense' ? [Int32Array.from(seq(H))] : hm.sets;
      if (!hsets.length) throw new Error(`GPU decode: layer ${i} heads: no sets`);
      this.headCount.push(hsets.map((x) => x.length));
      this.headOps.push(hsets.map((set) => {
        check(set, H, `layer ${i} head`);
        if (!set.length) throw new Error(`GPU decode: layer ${i}: an empty head set`);
        const sel = this.buf(Uint32Array.from([set.length + 2 * KV, ...set, ...seq(2 * KV).map((k) => H + k)]), `sel.heads.${i}`);
        const rows = (set.length + 2 * KV) * hd;
        return [
          norm(s.x, s.hn, Lw.ln1g, Lw.ln1b),
          this.op(mv({ cols: d, rows, rowGather: { G: hd, sub: 0 }, bias: Boolean(Lw.qkvBias) }), [[0, Lw.qkv], [1, s.hn], [2, s.qkv], [3, sel], ...opt(4, Lw.qkvBias)], Math.ceil(rows / 8)),
          this.op(attentionWgsl(attn), [[0, s.qkv], [1, sel], [2, this.K[i]!], [3, this.V[i]!], [4, s.ctx], [5, s.params], ...opt(6, attn.ropeDim ? s.cs : undefined)], Math.max(set.length, KV)),
          this.op(mv({ cols: H * hd, rows: d, colGather: { G: hd, sub: 2 * KV }, bias: Boolean(Lw.oBias), resid: true }),
            [[0, Lw.o], [1, s.ctx], [2, s.x], [3, sel], ...opt(4, Lw.oBias)], Math.ceil(d / 8)),
        ];
      }));
      // MLP block: one op list per neuron set
      const n2 = norm(s.x, s.hn, Lw.ln2g, Lw.ln2b);
      const gated = Boolean(Lw.gate);
      const upEntries = (sel: GPUBuffer | null, out: GPUBuffer): Entry[] => [[0, Lw.up], [1, s.hn], [2, out], ...opt(3, sel ?? undefined), ...opt(4, Lw.upBias),
        ...opt(5, Lw.gate), ...opt(6, Lw.gateBias)];
      const upSpec = { cols: d, bias: Boolean(Lw.upBias), gated, gateBias: Boolean(Lw.gateBias), act };
      const reduce = this.op(reduceWgsl(d, chunks, Boolean(Lw.downBias)), [[0, s.x], [1, s.part], ...opt(2, Lw.downBias)], Math.ceil(d / 128));
      const axpyX = Math.ceil(d / 8 / 256);
      if (mm.mode === 'select') {
        if (!mm.sets.length) throw new Error(`GPU decode: layer ${i} MLP: no sets`);
        this.mlpCount.push(mm.sets.map((x) => x.length));
        this.mlpOps.push(mm.sets.map((set) => {
          check(set, F, `layer ${i} neuron`);
          if (!set.length) throw new Error(`GPU decode: layer ${i}: an empty neuron set`);
          const sel = this.buf(Uint32Array.from([set.length, ...set]), `sel.mlp.${i}`);
          return [n2, this.op(mv({ ...upSpec, rows: set.length, rowGather: { G: 1, sub: 0 } }), upEntries(sel, s.a), Math.ceil(set.length / 8)),
            this.op(axpyWgsl({ cols: d, rows: F, chunks, gather: true }), [[0, Lw.down], [1, s.a], [2, s.part], [3, sel]], axpyX, chunks), reduce];
        }));
      } else if (mm.mode === 'lossless') {
        this.mlpCount.push([0]);
        const sel = mk(4 * (F + 4), `sel.lossless.${i}`);
        const stats = { buffer: s.stats, offset: 256 * i, size: 16 };
        this.mlpOps.push([[n2, this.op(mv({ ...upSpec, rows: F, zero: true }), [...upEntries(null, s.a), [7, sel]], Math.ceil(F / 8)),
          this.op(compactWgsl(F), [[0, s.a], [1, sel], [2, s.coef], [3, stats]], Math.ceil(F / 256)),
          this.op(axpyWgsl({ cols: d, rows: F, chunks, gather: true }), [[0, Lw.down], [1, s.coef], [2, s.part], [3, sel]], axpyX, chunks), reduce]]);
      } else {
        this.mlpCount.push([F]);
        this.mlpOps.push([[n2, this.op(mv({ ...upSpec, rows: F }), upEntries(null, s.a), Math.ceil(F / 8)),
          this.op(axpyWgsl({ cols: d, rows: F, chunks, gather: false }), [[0, Lw.down], [1, s.a], [2, s.part]], axpyX, chunks), reduce]]);
      }
    }
    const fin = w.finalG ? [norm(s.x, s.hn, w.finalG, w.finalB)] : [];
    this.post = [...fin, this.op(mv({ cols: d, rows: V }), [[0, w.lmHead], [1, w.finalG ? s.hn : s.x], [2, s.logits]], Math.ceil(V / 8))];
    this.argmax = this.op(argmaxWgsl(V), [[0, s.logits], [1, s.tok], [2, s.hist], [3, s.params], [4, { buffer: s.stats, offset: 256 * L, size: 16 }]], 1);
  }

  private buf(data: Uint32Array, label: string): GPUBuffer { const b = gpuBuffer(this.gpu, data, label); this.bufs.push(b); return b; }

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

  /** write the step's uniforms (slot, position, step index, cos / sin) and encode its pass */
  private encode(enc: GPUCommandEncoder, histStep: number | null): void {
    const c = this.c, n = this.n;
    if (n >= this.cap) throw new UserError(`GPU decode: position ${n} is past the session's KV cache (${this.cap} positions)`, 'decode fewer tokens, or make the session with a larger capacity');
    if (c.positions === 'learned' && n >= c.maxPositions) throw new UserError(`decode: position ${n} exceeds the model's max_position_embeddings ${c.maxPositions}`);
    this.dev.queue.writeBuffer(this.b.params, 0, Uint32Array.from([n, n + c.positionOffset, histStep ?? 0, 0]));
    if (this.invFreq) {
      if (c.ropeScaling?.type === 'dynamic') this.invFreq = ropeInvFreq(c, n + 1);
      const h = c.ropeDim / 2;
      ropeAngles(c, this.invFreq, n, this.cs.subarray(0, h), this.cs.subarray(h, 2 * h));
      this.dev.queue.writeBuffer(this.b.cs, 0, this.cs);
    }
    const pass = enc.beginComputePass();
    const run = (ops: Op[]) => { for (const o of ops) { pass.setPipeline(o.p); pass.setBindGroup(0, o.g); pass.dispatchWorkgroups(o.x, o.y); } };
    run(this.pre);
    const t = this.t;
    for (let i = 0; i < c.layers; i++) {
      const hs = t % this.headOps[i]!.length, ms = t % this.mlpOps[i]!.length;
      run(this.headOps[i]![hs]!);
      run(this.mlpOps[i]![ms]!);
      this.counts.headsSelected += this.headCount[i]![hs]!; this.counts.headsTotal += c.heads;
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
    enc.copyBufferToBuffer(this.b.stats, 0, s, off, 256 * (L + 1));
    this.dev.queue.submit([enc.finish()]);
    await s.mapAsync(GPUMapMode.READ);
    try {
      const out = s.getMappedRange(0, bytes).slice(0);
      const st = new Uint32Array(s.getMappedRange(off, 256 * (L + 1)));
      this.counts.mlpSelected = this.hostMlp + this.lossless.reduce((a, i) => a + st[64 * i]!, 0);
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
      this.encode(enc, null);
      return new Float32Array(await this.readback(enc, this.b.logits, 4 * this.c.vocabSize, 'step'));
    } finally { this.busy = false; }
  }

  /**
   * Greedy decoding on the GPU: `first` then `n` steps, each step's argmax feeding the next (no readback between
   * tokens: a submission each, the tokens read back once at the end). Returns the n tokens the steps chose.
   */
  async greedy(first: number, n: number): Promise<number[]> {
    this.enter([first]);
    if (n < 1 || n > this.cap) throw new Error(`GPU decode: greedy of ${n} tokens (1..${this.cap})`);
    this.busy = true;
    try {
      let enc!: GPUCommandEncoder;
      const t0 = performance.now();
      for (let k = 0; k < n; k++) {
        enc = this.dev.createCommandEncoder();
        this.encode(enc, k);
        if (k < n - 1) this.dev.queue.submit([enc.finish()]);
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
