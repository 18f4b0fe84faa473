/**
 * The planner's cost model: the decode runtime's own kernels timed at this model's shapes on this machine, cached
 * per shape (and CPU) in the user's cache folder ($DEJAVU_CACHE_DIR, else $XDG_CACHE_HOME/dejavu-ts, else
 * ~/.cache/dejavu-ts), so a second plan of the same model costs nothing. Times are medians of repeated batches.
 *
 *   stepMs          a dense decode step (batch 1) at `context` cached tokens
 *   upMs, downMs    one layer's first projection (every row, matvec) / second projection (every row, axpy)
 *   skip            [density, ms] of the second projection when only nonzero rows are read (the lossless mode)
 *   select          [density, ms] of both projections over that share of rows (the predicted mode, less the predictor)
 *   heads           [heads kept, ms saved per layer] against every head (K and V are always computed)
 *   predictors      ms of one predictor call (scores + rule), by its shape
 *
 * Priced for a runtime (plan.runtime): cpu times the wasm row kernels above (`kernelCosts`); gpu times the GPU decode
 * runtime's WGSL kernels (src/runtime/gpu, `gpuKernelCosts`) on the process's WebGPU adapter: each table the same
 * quantity, as the dispatches a step runs for it (timed in layer 0, many runs in one pass: each dispatch's fixed
 * cost included), keyed by the adapter and the GPU kernels' code instead of the CPU.
 *
 * It is only a cache: a file that is not valid, or a shape whose costs do not fit together (tables of fewer than 2
 * points or with densities not increasing, values not finite and positive, parts not cheaper than the whole step),
 * is measured over, with a one-line note.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { VERSION } from '../version.js';
import { KERNELS_WASM_BASE64 } from '../model/kernels/wasm/kernels-binary.js';
import { nativeCodeId, nativeRows } from '../model/kernels/native/native.js';
import type { Model } from '../model/model.js';
import { writeArtifact } from '../util/json-artifact.js';
import { DecodeSession, denseModes, keepInputs, warmDecode, type DecodeModes, type InputSite, type LayerInputs } from './decoder.js';
import { nonzeros, type RowMatrix } from '../model/kernels/rows.js';
import type { LoadedSite } from '../predictors/hooks.js';
import type { SelectionRule } from '../predictors/metrics.js';
import { getGpu } from './gpu/device.js';
import * as gpuKernels from './gpu/kernels.js';
import { GpuDecodeSession, gpuDenseModes, type GpuHeadMode, type GpuMlpMode, type GpuModes, type GpuSessionOptions, type OpName } from './gpu/session.js';
import { gpuWeightsFromModel, type GpuWeights } from './gpu/weights.js';
import { alternatingGreedy } from './gpu/generate.js';
import { median } from '../util/stats.js';

export const COSTS_FORMAT_VERSION = 1;
/** [x, ms] points; interp needs at least 2 */
const pairs = z.array(z.tuple([z.number(), z.number().nonnegative()]));
const shapeCostsSchema = z.strictObject({ stepMs: z.number().positive(), upMs: z.number().positive(), downMs: z.number().positive(), skip: pairs.min(2), select: pairs.min(2), heads: pairs,
    context: z.number().int().positive(), measuredAt: z.string() });
const siteCostSchema = z.strictObject({ denseMs: z.number().positive(), sparse: pairs.min(2) });
const siteCostsSchema = z.strictObject({ attn: siteCostSchema, o: siteCostSchema, mlp: siteCostSchema, down: siteCostSchema });
const costsFileSchema = z.strictObject({ kind: z.literal('dejavu-kernel-costs'), formatVersion: z.literal(COSTS_FORMAT_VERSION), shapes: z.record(z.string(), shapeCostsSchema), predictors: z.record(z.string(), z.number().positive()),
  /** the input sites' kernels (issue 22), by the same key as `shapes` */
  sites: z.record(z.string(), siteCostsSchema).optional() });
export type ShapeCosts = z.infer<typeof shapeCostsSchema>;
type CostsFile = z.infer<typeof costsFileSchema>;

export function costCacheFile(): string {
  const dir = process.env.DEJAVU_CACHE_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'dejavu-ts');
  return path.join(dir, 'kernel-costs.json');
}

/** the cache, or an empty one when absent or unreadable (it is only a cache: a bad file is measured over, `note` says so) */
function readCache(file: string, note: (s: string) => void): CostsFile {
  const empty: CostsFile = { kind: 'dejavu-kernel-costs', formatVersion: COSTS_FORMAT_VERSION, shapes: {}, predictors: {} };
  let text: string;
  try { text = fs.readFileSync(file, 'utf8'); } catch { return empty; }
  let r;
  try { r = costsFileSchema.safeParse(JSON.parse(text)); } catch { note(`the kernel-cost cache ${file} is not valid JSON; measuring the costs again`); return empty; }
  if (r.success) return r.data;
  const i = r.error.issues[0]!;
  note(`the kernel-cost cache ${file} is not valid (${i.path.join('.') || '(top level)'}: ${i.message}); measuring the costs again`);
  return empty;
}

function writeCache(file: string, c: CostsFile): void {
  try { fs.mkdirSync(path.dirname(file), { recursive: true }); writeArtifact(costsFileSchema, c, file, 'kernel-cost cache'); } catch (e) {
    if (!(e as { code?: string }).code) throw e; // a cache failing its own schema is a bug; one that cannot be written is re-measured next time
  }
}

/**
 * Why one shape's costs cannot be right (empty: they fit): every value finite; the densities of `skip` and `select`
 * increasing in (0, 1] and the heads kept increasing in [1, heads); every part cheaper than the whole dense step
 * (the MLPs of all layers together, each sparse table entry, the heads' saving over all layers).
 */
export function shapeProblems(s: ShapeCosts, layers: number, heads: number): string[] {
  const p: string[] = [];
  const all = [s.stepMs, s.upMs, s.downMs, ...[s.skip, s.select, s.heads].flatMap((t) => t.flat())];
  if (!all.every(Number.isFinite)) return ['a cost is not a finite number'];
  if (layers * (s.upMs + s.downMs) >= s.stepMs) p.push(`${layers} layers x (up ${s.upMs} + down ${s.downMs}) ms is not less than the whole step (${s.stepMs} ms)`);
  for (const [name, t, lo, hi] of [['skip', s.skip, 0, 1], ['select', s.select, 0, 1], ['heads', s.heads, 1, heads - 1]] as const) {
    t.forEach(([x, ms], i) => {
      if (x < lo || x > hi || x <= 0 || (i > 0 && x <= t[i - 1]![0])) p.push(`${name}[${i}]: ${x} is not an increasing ${name === 'heads' ? `head count in [1, ${hi}]` : 'density in (0, 1]'}`);
      if ((name === 'heads' ? layers * ms : ms) >= s.stepMs) p.push(`${name}[${i}]: ${ms} ms${name === 'heads' ? ` saved in each of ${layers} layers` : ''} is not less than the whole step (${s.stepMs} ms)`);
      if (name !== 'heads' && ms <= 0) p.push(`${name}[${i}]: ${ms} ms is not positive`);
    });
  }
  return p;
}

/** the CPU, and the code being timed (a new dejavu or new kernels are measured again) */
let machineKey: string | undefined;
const machine = () => (machineKey ??= `${os.cpus()[0]?.model ?? 'cpu'}|${os.availableParallelism()}|dejavu ${VERSION}|kernels ${createHash('sha256').update(KERNELS_WASM_BASE64).digest('hex').slice(0, 12)}`);

/** median ms per call of fn, over `batches` batches of enough calls to last ~`ms` each */
export function timePerCall(fn: () => void, ms = 15, batches = 7): number {
  fn();
  let n = 1;
  for (let t = performance.now(); performance.now() - t < ms / 4; n++) fn();
  const per = Math.max(1, Math.round(n * 4));
  const xs: number[] = [];
  for (let b = 0; b < batches; b++) { const t = performance.now(); for (let i = 0; i < per; i++) fn(); xs.push((performance.now() - t) / per); }
  return median(xs);
}

/** linear interpolation in sorted [x, y] pairs (clamped to the ends, extrapolated linearly past the last) */
export function interp(pts: [number, number][], x: number): number {
  if (x <= pts[0]![0]) return pts[0]![1] * (pts[0]![0] > 0 ? x / pts[0]![0] : 1);
  for (let i = 1; i < pts.length; i++) {
    const [x0, y0] = pts[i - 1]!, [x1, y1] = pts[i]!;
    if (x <= x1) return y0 + ((y1 - y0) * (x - x0)) / (x1 - x0);
  }
  const [x0, y0] = pts[pts.length - 2]!, [x1, y1] = pts[pts.length - 1]!;
  return y1 + ((y1 - y0) * (x - x1)) / (x1 - x0);
}

function spread(n: number, k: number, seed: number): Int32Array {
  // k distinct ids in [0, n), ascending, from a fixed stream
  let s = seed >>> 0 || 1;
  const a = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = 0; i < k; i++) { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; const j = i + (s % (n - i)); [a[i], a[j]] = [a[j]!, a[i]!]; }
  return a.slice(0, k).sort();
}

function measureShape(model: Model, context: number): ShapeCosts {
  warmDecode(model); // priced as generate runs it: V8's step code compiled (decoder.ts)
  const c = model.config, L0 = model.decode!.layers[0]!, F = c.ffn, d = c.hidden;
  const h = Float32Array.from({ length: d }, (_, i) => Math.sin(i + 1));
  const a = new Float32Array(F), y = new Float32Array(d);
  const upMs = timePerCall(() => L0.up.matvec(h, a));
  const act = Float32Array.from({ length: F }, (_, i) => Math.cos(i));
  const downMs = timePerCall(() => L0.down.axpy(act, y));
  const densities = [0.05, 0.1, 0.2, 0.35, 0.5, 0.75];
  const ids = new Int32Array(F), coef = new Float32Array(F);
  const skip: [number, number][] = densities.map((p) => { // the lossless mode's second projection, as the decoder runs it
    const sparse = new Float32Array(F);
    for (const j of spread(F, Math.round(p * F), 7)) sparse[j] = act[j]!;
    return [p, timePerCall(() => { const k = nonzeros(sparse, F, ids, coef); L0.down.axpy(coef.subarray(0, k), y, ids.subarray(0, k)); })];
  });
  const select: [number, number][] = densities.map((p) => {
    const idx = spread(F, Math.max(1, Math.round(p * F)), 11);
    return [p, timePerCall(() => { L0.up.matvec(h, a, idx); L0.down.axpy(a, y, idx); })];
  });
  // whole decode steps at `context` cached tokens: dense, and with n heads kept in every layer
  const stepAt = (modes: DecodeModes) => {
    const s = new DecodeSession(model, modes, 1);
    try {
      for (let t = 0; t < context; t++) s.step([(t * 7 + 3) % c.vocabSize]);
      let i = 0;
      return timePerCall(() => { s.step([(i++ * 5 + 1) % c.vocabSize]); s.rewind(1); }, 20, 5);
    } finally { s.dispose(); } // its KV arena (WebAssembly memory) now, not at some later GC
  };
  const dense = denseModes(c.layers);
  const stepMs = stepAt(dense);
  const heads: [number, number][] = [];
  for (const n of [...new Set([Math.ceil(c.heads / 4), Math.ceil(c.heads / 2), Math.ceil((3 * c.heads) / 4)])].filter((n) => n < c.heads)) {
    const set = spread(c.heads, n, 5);
    const t = stepAt({ mlp: dense.mlp, heads: dense.heads.map(() => ({ mode: 'select' as const, pick: () => set })) });
    heads.push([n, Math.max(0, (stepMs - t) / c.layers)]);
  }
  return { stepMs, upMs, downMs, skip, select, heads, context, measuredAt: new Date().toISOString() };
}

/** a predictor to price: `run` scores the probe on the host (cpu); the GPU runtime runs `site`'s predictor with `rule` (gpu) */
export interface PredictorProbe { run: () => void; site: LoadedSite; rule: SelectionRule; kind: 'mlp' | 'heads' }

export interface CostModel {
  /** the decode runtime whose kernels were timed */
  runtime: 'cpu' | 'gpu';
  shape: ShapeCosts;
  /** the input sites' kernel costs (when kernelCosts was given the input-major copy) */
  sites?: SiteCosts;
  /** true when read from the cache */
  cached: boolean;
  file: string;
  /** ms of one predictor call of this shape (measured with the probe when not cached) */
  predictorMs(key: string, probe: PredictorProbe): Promise<number>;
  save(): void;
  /** free what measuring holds (the GPU weights) */
  dispose(): void;
}

/**
 * The cost model for this model's shapes, from the cache or measured now. Cached costs that do not fit together
 * (shapeProblems; a predictor call not cheaper than the whole step) are measured again, and `note` says why.
 */
export async function kernelCosts(model: Model, context: number, o: { file?: string; note?: (s: string) => void; sparse?: Model } = {}): Promise<CostModel> {
  if (!model.decode) throw new Error('kernelCosts needs a model loaded with { decode: true }');
  const c = model.config, sparse = o.sparse;
  // the native kernels' costs are keyed by the built addon too (a rebuilt rows.c measures again)
  const kern = model.decode.kernel === 'native' ? `native ${nativeCodeId()}${nativeRows().mod?.info().wide ? ' wide' : ''}` : model.decode.kernel;
  const key = [machine(), kern, model.decode.dtype, `threads${model.decode.threads}`, ...shapeKey(c, context)].join('|');
  return cachedCosts('cpu', key, `${machine()}|${kern}`, c, o, async () => measureShape(model, context), sparse ? async () => siteCosts(model, sparse) : null,
    async (p) => timePerCall(p.run), () => undefined);
}

const shapeKey = (c: Model['config'], context: number) => [`L${c.layers}`, `d${c.hidden}`, `F${c.ffn}`, `H${c.heads}`, `KV${c.kvHeads}`, `hd${c.headDim}`, c.activation, `V${c.vocabSize}`, c.norm, `ctx${context}`];

/**
 * The cost model behind the cache file: the shape's costs (and the sites', when `sites` measures them) from the cache
 * when they fit together (shapeProblems; each cost less than the whole step), else measured (a machine too noisy for
 * the parts to be cheaper than the whole is measured once more, then it is a bug); predictor calls under `pkey`.
 */
async function cachedCosts(runtime: 'cpu' | 'gpu', key: string, pkey: string, c: Model['config'], o: { file?: string; note?: (s: string) => void }, measure: () => Promise<ShapeCosts>,
    sites: (() => Promise<SiteCosts>) | null, predictor: (p: PredictorProbe) => Promise<number>, dispose: () => void): Promise<CostModel> {
  const file = o.file ?? costCacheFile(), note = o.note ?? (() => undefined);
  const cache = readCache(file, note);
  let shape: ShapeCosts | undefined = cache.shapes[key];
  const bad = shape ? shapeProblems(shape, c.layers, c.heads) : [];
  if (bad.length) { note(`the cached ${runtime === 'gpu' ? 'GPU ' : ''}kernel costs of this model in ${file} do not fit together (${bad[0]}${bad.length > 1 ? `; ${bad.length - 1} more` : ''}); measuring them again`); shape = undefined; }
  const cached = Boolean(shape);
  let dirty = false;
  if (!shape) {
    shape = await measure();
    for (let again = 0, p = shapeProblems(shape, c.layers, c.heads); p.length; p = shapeProblems(shape, c.layers, c.heads)) {
      if (again++) throw new Error(`the ${runtime === 'gpu' ? 'GPU ' : ''}kernel costs measured for the plan's cost model do not fit together: ${p.join('; ')}`);
      shape = await measure();
    }
    cache.shapes[key] = shape; dirty = true;
  }
  const stepMs = shape.stepMs;
  let st: SiteCosts | undefined;
  if (sites) {
    st = cache.sites?.[key];
    const siteBad = st ? Object.values(st).some((t) => t.denseMs >= stepMs || t.sparse.some(([, ms]) => ms >= stepMs)) : false;
    if (siteBad) note(`the cached input-site kernel costs in ${file} are not less than the whole step (${stepMs} ms); measuring them again`);
    if (!st || siteBad) { st = await sites(); (cache.sites ??= {})[key] = st; dirty = true; }
  }
  return {
    runtime, shape, cached, file, ...(st ? { sites: st } : {}),
    async predictorMs(k0, probe) {
      const k = `${pkey}|${k0}`, was = cache.predictors[k];
      if (was !== undefined && was >= stepMs) note(`the cached cost of a predictor call (${was} ms) is not less than the whole step (${stepMs} ms); measuring it again`);
      if (was === undefined || was >= stepMs) { cache.predictors[k] = await predictor(probe); dirty = true; }
      return cache.predictors[k]!;
    },
    save() { if (dirty) writeCache(file, cache); dirty = false; },
    dispose,
  };
}

/** ms of one layer's MLP in a mode (dense: both projections; lossless at its true density; predicted at its density + predictor) */
export function mlpMs(s: ShapeCosts, mode: 'dense' | 'lossless' | 'predicted', density: number, predictorMs = 0): number {
  if (mode === 'dense') return s.upMs + s.downMs;
  if (mode === 'lossless') return s.upMs + interp(s.skip, density);
  return predictorMs + interp(s.select, density);
}

/** ms saved per layer by keeping n of H heads: linear between the measured points and (H, 0), extended linearly below */
export function headSavingMs(s: ShapeCosts, n: number, H: number): number {
  if (n >= H) return 0;
  const pts = [...s.heads, [H, 0] as [number, number]].sort((a, b) => a[0] - b[0]);
  if (pts.length < 2) return 0;
  let i = pts.findIndex(([x]) => x >= n);
  if (i <= 0) i = 1;
  const [x0, y0] = pts[i - 1]!, [x1, y1] = pts[i]!;
  return Math.max(0, y0 + ((y1 - y0) * (n - x0)) / (x1 - x0));
}

/**
 * Decode ms per token of each set of modes, measured by the runtime itself: one session per set primed with
 * `context` tokens of `text`, then `rounds` rounds in which every set decodes the next `steps` tokens in turn and
 * rewinds (alternating, so machine drift hits all alike); the median round of each. `model`: one for all, or one per set
 * (a plan with input sites runs on its input-major copy, dense on the model's own layout). `onSteps(n)`: n decode
 * steps done (progress: sets x (context + rounds x steps) in all), called outside the timed loops.
 */
export function alternatingStepMs(model: Model | Model[], sets: DecodeModes[], text: number[], context: number, steps = 32, rounds = 5, onSteps?: (n: number) => void): number[] {
  if (text.length < context + steps) throw new Error(`alternatingStepMs: ${text.length} tokens < context ${context} + ${steps} steps`);
  const sessions = sets.map((m, i) => {
    const s = new DecodeSession(Array.isArray(model) ? model[i]! : model, m, 1);
    for (let t = 0; t < context; t++) s.step([text[t]!]);
    onSteps?.(context);
    return s;
  });
  try {
    const runs: number[][] = sets.map(() => []);
    for (let r = 0; r < rounds; r++)
      sessions.forEach((s, i) => {
        const t = performance.now();
        for (let k = 0; k < steps; k++) s.step([text[context + k]!]);
        runs[i]!.push((performance.now() - t) / steps);
        onSteps?.(steps);
        s.rewind(steps);
      });
    return runs.map(median);
  } finally { for (const s of sessions) s.dispose(); }
}

/** [density, ms] of one site's matrices in layer 0: every input read (the dense layout) and only a share of them (input-major rows) */
export type SiteCost = z.infer<typeof siteCostSchema>;
/** the input sites' kernel costs (issue 22): q/k/v together, o, the MLP's first projections together, down */
export type SiteCosts = z.infer<typeof siteCostsSchema>;

/**
 * The input-threshold sites' kernels timed at this model's shapes: the dense model's own products (matvec / axpy over
 * every input) and, on a model whose site matrices are stored input-major, the threshold scan plus axpy over a share
 * of the inputs, at densities 0.1 .. 0.9 (kernelCosts caches them with the model's other costs).
 */
export function siteCosts(dense: Model, sparse: Model): SiteCosts {
  const D = dense.decode!.layers[0]!, S = sparse.decode!.layers[0]!, c = dense.config;
  const im = sparse.decode!.inputMajor;
  if (!im.has('layers.0.wq') || !im.has('layers.0.up')) throw new Error('siteCosts: the sparse model must store layer 0\'s q/k/v and up/gate input-major');
  const densities = [0.1, 0.3, 0.5, 0.7, 0.9];
  const vec = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i + 1));
  const site = (n: number, outs: RowMatrix[], denseCall: (x: Float32Array) => void): SiteCost => {
    const x = vec(n), ids = new Int32Array(n), coef = new Float32Array(n);
    const bufs = outs.map((M) => new Float32Array(M.d));
    const denseMs = timePerCall(() => denseCall(x));
    const sparseTab = densities.map((p): [number, number] => {
      const keep = new Set(spread(n, Math.max(1, Math.round(p * n)), 13)), xs = Float32Array.from(x, (v, i) => (keep.has(i) ? 1 + Math.abs(v) : 1e-3 * v));
      return [p, timePerCall(() => {
        const k = keepInputs(xs, n, 0.5, null, ids, coef);
        outs.forEach((M, j) => { bufs[j]!.fill(0); M.axpy(coef.subarray(0, k), bufs[j]!, ids.subarray(0, k)); });
      })];
    });
    return { denseMs, sparse: sparseTab };
  };
  const d = c.hidden, F = c.ffn, Hd = c.heads * c.headDim;
  const q = new Float32Array(Hd), kv = new Float32Array(c.kvHeads * c.headDim), y = new Float32Array(d), a = new Float32Array(F);
  return {
    attn: site(d, [S.q, S.k, S.v], (x) => { D.q.matvec(x, q); D.k.matvec(x, kv); D.v.matvec(x, kv); }),
    o: site(Hd, [S.o], (x) => { y.fill(0); D.o.axpy(x, y); }),
    mlp: site(d, S.gate ? [S.up, S.gate] : [S.up], (x) => { D.up.matvec(x, a); D.gate?.matvec(x, a); }),
    down: site(F, [S.down], (x) => { y.fill(0); D.down.axpy(x, y); }),
  };
}

/** ms of a site at input density p (interpolated; dense at p >= 1) */
export function siteMs(s: SiteCost, p: number): number { return p >= 1 ? s.denseMs : Math.min(s.denseMs, interp(s.sparse, p)); }

/** the GPU kernels' code (every WGSL generator and the session that assembles a step): new kernels are measured again */
let gpuCodeKey: string | undefined;
const gpuCode = () => (gpuCodeKey ??= createHash('sha256').update([...Object.values(gpuKernels).filter((f) => typeof f === 'function').map(String), GpuDecodeSession.toString()].join('\n')).digest('hex').slice(0, 12));

/** a threshold no input reaches: the site reads no rows (its fixed cost) */
const NONE_KEPT = 3e38;

/**
 * The cost model priced on the GPU decode runtime (plan.runtime gpu): the same tables as kernelCosts, each timed as
 * the dispatches the GPU runtime runs for it (GpuDecodeSession.timeOps, layer 0 of the model's own weights on the
 * GPU, at `context` positions): up = the first projection (its norm fused), down = the split-K axpy and its chunk
 * sum; select / skip: the selected (lossless: the nonzero) rows of both / of down (lossless: + what compacting the
 * nonzero activations adds to up); heads: q|k|v, attention and o at every head less at n heads; the whole step: greedy
 * decoding; a predictor: its dispatches (fc1, fc2, the rule). Input sites (`sites`): each site's dense dispatches
 * against its input-sparse ones reading every input and none (linear between: the kernel reads only the kept inputs' rows).
 */
export async function gpuKernelCosts(model: Model, context: number, o: { file?: string; note?: (s: string) => void; sites?: boolean } = {}): Promise<CostModel> {
  const gpu = await getGpu(), c = model.config;
  const key = ['gpu', gpu.info.vendor, gpu.info.architecture, gpu.info.description, `dejavu ${VERSION}`, `kernels ${gpuCode()}`, ...shapeKey(c, context)].join('|');
  const held: { w: GpuWeights | null } = { w: null }; // uploaded on first use, kept for the predictors' calls until dispose
  const weights = () => (held.w ??= gpuWeightsFromModel(gpu, model));
  const free = () => { held.w?.dispose(); held.w = null; };
  const cap = context + 40;
  /** a session over the shared weights, its position at `context` (greedy steps: the vectors hold a real step's values) */
  const session = async <R>(modes: Partial<GpuModes>, f: (s: GpuDecodeSession) => Promise<R>, opts: GpuSessionOptions = {}): Promise<R> => {
    const s = new GpuDecodeSession(gpu, weights(), { ...gpuDenseModes(c.layers), ...modes }, { ...opts, capacity: cap });
    try { await s.greedy(1 % c.vocabSize, context); return await f(s); } finally { s.dispose(); }
  };
  const layer0 = <T>(dense: T, x: T): T[] => Array.from({ length: c.layers }, (_, i) => (i ? dense : x));
  try {
    return await cachedCosts('gpu', key, `gpu|${gpu.info.description}|${gpuCode()}`, c, o, () => measureGpuShape(c, context, session, layer0), o.sites ? () => gpuSiteCosts(c, session, layer0) : null,
      (p) => {
        if (p.site.hostUp || !p.site.host) throw new Error('gpuKernelCosts: the GPU decode runtime runs only ungated predictors with host weights');
        return session(p.kind === 'mlp'
        ? { mlp: layer0<GpuMlpMode>({ mode: 'dense' }, { mode: 'predicted', input: p.site.entry.input === 'h_mlp' || p.site.entry.input === 'x_mlp' ? p.site.entry.input : 'x_attn', p: p.site.host, rule: p.rule }) }
        : { heads: layer0<GpuHeadMode>({ mode: 'dense' }, { mode: 'predicted', prev: false, p: p.site.host, rule: p.rule }) }, (s) => s.timeOps(0, ['pred']));
      }, free);
  } catch (e) { free(); throw e; }
}

type GpuSessionRun = <R>(modes: Partial<GpuModes>, f: (s: GpuDecodeSession) => Promise<R>, opts?: GpuSessionOptions) => Promise<R>;
type Layer0 = <T>(dense: T, x: T) => T[];

async function measureGpuShape(c: Model['config'], context: number, session: GpuSessionRun, layer0: Layer0): Promise<ShapeCosts> {
  const F = c.ffn, H = c.heads, attn: OpName[] = ['qkv', 'attn', 'o'], down: OpName[] = ['down', 'reduce'];
  const { stepMs, upMs, downMs, headsMs } = await session({}, async (s) => {
    const xs: number[] = [];
    for (let r = 0; r < 5; r++) { const t = performance.now(); await s.greedy(2 % c.vocabSize, 16); xs.push((performance.now() - t) / 16); s.rewind(16); }
    return { stepMs: median(xs), upMs: await s.timeOps(0, ['up']), downMs: await s.timeOps(0, down), headsMs: await s.timeOps(0, attn) };
  });
  const densities = [0.05, 0.1, 0.2, 0.35, 0.5, 0.75];
  const ns = [...new Set([Math.ceil(H / 4), Math.ceil(H / 2), Math.ceil((3 * H) / 4)])].filter((n) => n < H);
  const sets = densities.map((p) => spread(F, Math.max(1, Math.round(p * F)), 11)), hsets = ns.map((n) => spread(H, n, 5));
  // down over p·F gathered rows (the split-K axpy and its chunk sum: what lossless reads of down)
  const gathered = await session({ mlp: layer0<GpuMlpMode>({ mode: 'dense' }, { mode: 'select', sets }) }, async (s) => {
    const out: [number, number][] = [];
    for (const [k, p] of densities.entries()) out.push([p, await s.timeOps(0, down, { mlp: k })]);
    return out;
  }, { splitMlp: true });
  // lossless (ReLU models): what it costs beyond up and the nonzero rows of down, at layer 0's own density p0 (the session
  // lossless in layer 0 only): compacting in up's dispatch, or, where the runtime runs it in one dispatch, that
  // dispatch and its chunk sum less up and down's rows at p0 (negative where the one dispatch saves)
  const compactMs = c.activation === 'relu' && !c.gated ? await session({ mlp: layer0<GpuMlpMode>({ mode: 'dense' }, { mode: 'lossless' }) }, async (s) => {
    if (!s.opNames(0).includes('updown')) return Math.max(0, (await s.timeOps(0, ['up'])) - upMs);
    const k = s.counts, L = c.layers, p0 = Math.min(1, Math.max(0, (L * k.mlpSelected - (L - 1) * k.mlpTotal) / k.mlpTotal));
    return (await s.timeOps(0, ['updown', 'reduce'])) - upMs - interp(gathered, p0);
  }) : 0;
  return session({ mlp: layer0<GpuMlpMode>({ mode: 'dense' }, { mode: 'select', sets }), ...(hsets.length ? { heads: layer0<GpuHeadMode>({ mode: 'dense' }, { mode: 'select', sets: hsets }) } : {}) }, async (s) => {
    const select: [number, number][] = [], heads: [number, number][] = [];
    for (const [k, p] of densities.entries()) select.push([p, await s.timeOps(0, ['up', 'updown', ...down], { mlp: k })]);
    for (const [k, n] of ns.entries()) heads.push([n, Math.max(0, headsMs - await s.timeOps(0, attn, { heads: k }))]);
    const skip = gathered.map(([p, ms]): [number, number] => [p, Math.max(1e-6, compactMs + ms)]);
    return { stepMs, upMs, downMs, skip, select, heads, context, measuredAt: new Date().toISOString() };
  });
}

/** the input sites on the GPU: [0, every input skipped] and [1, every input read] of each site's dispatches, against its dense ones */
async function gpuSiteCosts(c: Model['config'], session: GpuSessionRun, layer0: Layer0): Promise<SiteCosts> {
  const dense = await session({}, async (s) => ({ attn: await s.timeOps(0, ['qkv', 'attn']), o: await s.timeOps(0, ['o']), up: await s.timeOps(0, ['up']), down: await s.timeOps(0, ['down', 'reduce']) }));
  const at = (t: number) => ({ t });
  const ends = async (s: GpuDecodeSession, site: InputSite, names: OpName[], a?: Float32Array): Promise<[number, number][]> => {
    const pts: [number, number][] = [];
    for (const [p, t] of [[0, NONE_KEPT], [1, 0]] as const) { s.setThreshold(0, site, t); pts.push([p, await s.timeOps(0, names, a ? { a } : {})]); }
    return pts;
  };
  // q/k/v, o and the MLP input in one layer (the MLP input site's down sums up's chunks: charged to that site); down alone, over activations none of which is 0
  const [attn, o, mlp] = await session({ inputs: layer0<LayerInputs | undefined>(undefined, { attn: at(0), o: at(0), mlp: at(0) }) }, async (s) => [await ends(s, 'attn', ['site.attn', 'attn']), await ends(s, 'o', ['site.o']),
    (await ends(s, 'mlp', ['site.mlp', 'site.down', 'reduce'])).map(([p, ms]): [number, number] => [p, Math.max(1e-6, ms - dense.down)])]);
  const ones = new Float32Array(c.ffn).fill(1);
  const dn = await session({ inputs: layer0<LayerInputs | undefined>(undefined, { down: at(0) }) }, (s) => ends(s, 'down', ['site.down', 'reduce'], ones));
  return { attn: { denseMs: dense.attn, sparse: attn! }, o: { denseMs: dense.o, sparse: o! }, mlp: { denseMs: dense.up, sparse: mlp! }, down: { denseMs: dense.down, sparse: dn } };
}

/** the greedy run generate --runtime gpu is checked by (--max-tokens 200: 199 greedy steps after the prompt) */
export const GPU_CHECK_STEPS = 199;

/**
 * alternatingStepMs on the GPU decode runtime, timed as `generate --runtime gpu` times a plan against dense
 * (alternatingGreedy: the same code): one session per set of modes (over one copy of the weights), primed with the
 * `context` tokens of `text` (a prompt), then a full-length warm-up of each and `groups` groups of greedy runs of
 * `steps` tokens in ABBA order (one submission a token, one readback a run); the median run of each, ms per token.
 */
export async function gpuAlternatingStepMs(model: Model, sets: GpuModes[], text: number[], context: number, steps = GPU_CHECK_STEPS, groups = 3, onSteps?: (n: number) => void): Promise<number[]> {
  if (text.length < context + 1) throw new Error(`gpuAlternatingStepMs: ${text.length} tokens < context ${context} + 1`);
  if (sets.length !== 2) throw new Error(`gpuAlternatingStepMs: ${sets.length} sets of modes (two)`);
  const gpu = await getGpu(), w = gpuWeightsFromModel(gpu, model), sessions: GpuDecodeSession[] = [];
  try {
    for (const m of sets) {
      const s = new GpuDecodeSession(gpu, w, m, { capacity: context + steps + 1 });
      sessions.push(s);
      for (let t = 0; t < context; t++) await s.step([text[t]!]);
      onSteps?.(context);
    }
    const r = await alternatingGreedy(sessions, text[context]!, steps, groups);
    onSteps?.(2 * (1 + 2 * groups) * steps);
    return r.ms.map((x) => median(x) / steps);
  } finally { for (const s of sessions) s.dispose(); w.dispose(); }
}
