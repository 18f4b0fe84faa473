/**
 * WGSL compute shaders of the GPU decode runtime, as source generators: each shape / flag set is one pipeline
 * (cached by its source in the session). Conventions:
 *   - weights: float16 packed two per u32 (unpack2x16float: core WGSL, so no `shader-f16` needed), rows of `cols`
 *     values read as vec4<u32> units of 8; cols % 8 == 0; float32 accumulation;
 *   - a selection `sel`: u32 [count, id0, id1, ...]; with a group size G the rows are id * G + (0..G) (a head's hd
 *     rows of q / k / v); `sub` groups at its end are not counted (the K / V groups appended to the heads' list);
 *   - vectors are float32; `params` is the step's (cache slot n, learned position row, step index), a storage buffer the
 *     host writes and greedy's argmax advances; RoPE's cos / sin a table of a row per position (`cs[n * ropeDim ..]`).
 */

export type GpuAct = 'relu' | 'fatrelu' | 'silu' | 'gelu' | 'gelu_tanh';

const PARAMS = 'struct Params { n: u32, pos: u32, step: u32, pad: u32 }';

/** f32 activation functions (as src/arch/traits.ts actScalar) */
function actFn(act: GpuAct | null, threshold: number): string {
  const body = {
    relu: 'return select(0.0, v, v > 0.0);',
    fatrelu: `return select(0.0, v, v > ${f32(threshold)});`,
    silu: 'return v / (1.0 + exp(-v));',
    // Abramowitz-Stegun 7.1.26 (|error| <= 1.5e-7)
    gelu: 'let z = abs(v) * 0.70710678118654752; let t = 1.0 / (1.0 + 0.3275911 * z); let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-z * z); return 0.5 * v * (1.0 + sign(v) * y);',
    gelu_tanh: 'let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0); return 0.5 * v * (1.0 + tanh(u));',
  };
  return act ? `fn act(v: f32) -> f32 { ${body[act]} }` : '';
}

/** a JS number as a WGSL f32 literal */
export function f32(x: number): string {
  const s = Math.fround(x).toPrecision(9);
  return /[.eE]/.test(s) ? s : `${s}.0`;
}

const DOT8 = `fn dot8(w: vec4<u32>, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
  return dot(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)), xa) + dot(vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)), xb);
}`;

export interface MatvecSpec {
  /** values per weight row (% 8 == 0) */
  cols: number;
  /** rows when not gathered */
  rows: number;
  /** out[i] = W[sel[1 + i / G] * G + i % G] · x, for i < (sel[0] - sub) * G */
  rowGather?: { G: number; sub: number } | undefined;
  /** x is compact over the selected column groups: unit u of x is column unit sel[1 + u / GU] * GU + u % GU (GU = G / 8) */
  colGather?: { G: number; sub: number } | undefined;
  bias: boolean;
  /** gated MLP: a second matrix (the gate) over the same rows; out = act(gate · x + gb) * (W · x + b) */
  gated: boolean;
  gateBias: boolean;
  act: GpuAct | null;
  actThreshold: number;
  /** out[row] += result (the residual stream, in place) instead of out[i] = result */
  resid: boolean;
  /** workgroup 0 zeroes zc[0] (the next compaction's counter) */
  zero: boolean;
  /**
   * the norm fused in: every workgroup normalizes x (one pass: normFast) into workgroup memory, then reads it
   * from there (g at binding 8, b at 9); `out`: workgroup 0 also writes it to binding 10
   */
  norm?: { kind: 'layernorm' | 'rmsnorm'; eps: number; hasB: boolean; out: boolean } | undefined;
  /**
   * the kept results' ids appended to zc (count zc[0], zeroed by an earlier dispatch), values to coef (11), their
   * count added to stats[0] (12): `true` keeps the nonzero ones (lossless), `{ ge }` those >= ge (a predictor's
   * threshold rule on its scores)
   */
  compact?: boolean | { ge: number } | undefined;
  /** float32 weights (vec4<f32> units of 4: the predictors) instead of float16 pairs */
  f32?: boolean | undefined;
  /**
   * two rows per 32 lanes, 16 rows a workgroup (matvecPairWgsl: x read once for both; with the norm fused in, half the
   * workgroups normalizing x): float16, no gate, no compaction, no gathered columns
   */
  pair?: boolean | undefined;
}

/** workgroup bytes a matvec with its norm fused in needs (the session fuses it only where the adapter has them) */
export function matvecNormBytes(cols: number, gated: boolean): number { return 4 * cols + 1024 * (gated ? 2 : 1) + 2048 + 256 + 64; }

/**
 * m and inv of `src` in one pass (sum and sum of squares together: 2 barriers where two tree sums take 18; every
 * workgroup of a matvec with its norm fused in pays this before reading its rows; normWgsl computes the same): each thread's vec4s
 * held in xs, 32 partial sums, then every thread sums those (variance E[x²] - m², in float32)
 */
function normFast(d: number, kind: 'layernorm' | 'rmsnorm', eps: number, src: string): string {
  const D4 = d / 4, NV = Math.ceil(D4 / 256);
  return `var xs: array<vec4<f32>, ${NV}>;
  var sq = vec2<f32>(0.0);
  for (var k = 0u; k < ${NV}u; k++) { let j = lid + 256u * k; if (j < ${D4}u) { xs[k] = ${src}[j]; sq += vec2<f32>(dot(xs[k], vec4<f32>(1.0)), dot(xs[k], xs[k])); } }
  ${meanInv(d, kind, eps)}`;
}

/** WGSL: the workgroup's exclusive prefix sum (a 256-slot `scan` array and `excl`), pickWgsl's */
const EXCL = `var<workgroup> scan: array<u32, 256>;
/** exclusive prefix sum of v over the workgroup (and the total) */
fn excl(v: u32, lid: u32) -> vec2<u32> {
  scan[lid] = v;
  workgroupBarrier();
  for (var o = 1u; o < 256u; o <<= 1u) {
    let t = select(0u, scan[select(0u, lid - o, lid >= o)], lid >= o);
    workgroupBarrier();
    scan[lid] += t;
    workgroupBarrier();
  }
  let r = vec2<u32>(scan[lid] - v, scan[255]);
  workgroupBarrier();
  return r;
}`;

/**
 * The two-level workgroup sum of each thread's (sum, sum of squares) `sq` over d values (256 -> 32 partial sums in
 * red2v / red32 (FAST_SHARED), then every thread sums the 32: 2 barriers), and the norm's m and inv from it
 */
function meanInv(d: number, kind: 'layernorm' | 'rmsnorm', eps: number): string {
  return `red2v[lid] = sq;
  workgroupBarrier();
  if (lid < 32u) { var t = vec2<f32>(0.0); for (var k = 0u; k < 8u; k++) { t += red2v[lid * 8u + k]; } red32[lid] = t; }
  workgroupBarrier();
  var tot = vec2<f32>(0.0);
  for (var k = 0u; k < 32u; k++) { tot += red32[k]; }
  ${kind === 'layernorm' ? `let m = tot.x / ${d}.0;` : 'let m = 0.0;'}
  let inv = inverseSqrt(max(tot.y / ${d}.0 - m * m, 0.0) + ${f32(eps)});`;
}
const FAST_SHARED = 'var<workgroup> red2v: array<vec2<f32>, 256>;\nvar<workgroup> red32: array<vec2<f32>, 32>;';

/**
 * WGSL: norm(x) into the workgroup's xw (every workgroup of a kernel with the norm fused in; g at binding 8 as ng, b
 * at 9 as nb, loaded with x: one round trip less before the rows; `out`: workgroup 0 also writes it to nout)
 */
function normInto(cols: number, nm: NonNullable<MatvecSpec['norm']>): string {
  const D4 = cols / 4, NV = Math.ceil(D4 / 256);
  return `var gs: array<vec4<f32>, ${NV}>;
  ${nm.hasB ? `var bs: array<vec4<f32>, ${NV}>;` : ''}
  for (var k = 0u; k < ${NV}u; k++) { let j = lid + 256u * k; if (j < ${D4}u) { gs[k] = ng[j];${nm.hasB ? ' bs[k] = nb[j];' : ''} } }
  ${normFast(cols, nm.kind, nm.eps, 'x')}
  for (var k = 0u; k < ${NV}u; k++) { let j = lid + 256u * k; if (j < ${D4}u) { let v = (xs[k] - m) * inv * gs[k]${nm.hasB ? ' + bs[k]' : ''}; xw[j] = v;${nm.out ? ' if (wid.x == 0u) { nout[j] = v; }' : ''} } }
  workgroupBarrier();`;
}


/**
 * y = W x over selected rows / columns: a workgroup of 256 threads handles 8 rows, 32 lanes per row, each lane
 * reading vec4<u32> (8 float16) units strided by 32 (4 in flight), then a shared-memory sum per row.
 */
export function matvecWgsl(s: MatvecSpec): string {
  if (s.pair) return matvecPairWgsl(s);
  const E = s.f32 ? 4 : 8, U = s.cols / E, nm = s.norm;
  if (s.f32 && (s.gated || s.colGather)) throw new Error('matvecWgsl: float32 weights with a gate or gathered columns');
  const b: string[] = [`@group(0) @binding(0) var<storage, read> W: array<vec4<${s.f32 ? 'f32' : 'u32'}>>;`, '@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;',
    '@group(0) @binding(2) var<storage, read_write> outv: array<f32>;'];
  if (s.rowGather || s.colGather) b.push('@group(0) @binding(3) var<storage, read> sel: array<u32>;');
  if (s.bias) b.push('@group(0) @binding(4) var<storage, read> bias: array<f32>;');
  if (s.gated) b.push('@group(0) @binding(5) var<storage, read> W2: array<vec4<u32>>;');
  if (s.gated && s.gateBias) b.push('@group(0) @binding(6) var<storage, read> bias2: array<f32>;');
  if (s.zero && s.compact) throw new Error('matvecWgsl: zero and compact');
  if (s.zero) b.push('@group(0) @binding(7) var<storage, read_write> zc: array<u32>;');
  if (s.compact) b.push('@group(0) @binding(7) var<storage, read_write> zc: array<atomic<u32>>;', '@group(0) @binding(11) var<storage, read_write> coef: array<f32>;',
    '@group(0) @binding(12) var<storage, read_write> stats: array<atomic<u32>>;');
  if (nm) {
    if (s.colGather) throw new Error('matvecWgsl: a fused norm with gathered columns');
    b.push('@group(0) @binding(8) var<storage, read> ng: array<vec4<f32>>;');
    if (nm.hasB) b.push('@group(0) @binding(9) var<storage, read> nb: array<vec4<f32>>;');
    if (nm.out) b.push('@group(0) @binding(10) var<storage, read_write> nout: array<vec4<f32>>;');
  }
  const rg = s.rowGather, cg = s.colGather;
  const count = rg ? `(sel[0] - ${rg.sub}u) * ${rg.G}u` : `${s.rows}u`;
  const row = rg ? `sel[1u + i / ${rg.G}u] * ${rg.G}u + i % ${rg.G}u` : 'i';
  const GU = cg ? cg.G / 8 : 0;
  const units = cg ? `(sel[0] - ${cg.sub}u) * ${GU}u` : `${U}u`;
  const col = (u: string) => (cg ? `(sel[1u + (${u}) / ${GU}u] * ${GU}u + (${u}) % ${GU}u)` : u);
  const X = nm ? 'xw' : 'x';
  const load = (k: number) => s.f32 ? `{ let u = u0 + ${k * 32}u; acc += dot(W[base + u], ${X}[u]); }`
    : `{ let u = u0 + ${k * 32}u; let c = ${col('u')}; let xa = ${X}[2u * u]; let xb = ${X}[2u * u + 1u]; acc += dot8(W[base + c], xa, xb);${s.gated ? ' acc2 += dot8(W2[base + c], xa, xb);' : ''} }`;
  const v1 = `s1${s.bias ? ' + bias[row]' : ''}`;
  const res = s.gated ? `act(s2${s.gateBias ? ' + bias2[row]' : ''}) * (${v1})` : s.act ? `act(${v1})` : v1;
  const D4 = s.cols / 4;
  const normIn = nm ? normInto(s.cols, nm) : '';
  // with the norm fused in, each lane's first 4 weight units are loaded before the norm (their latency hidden behind
  // it) and summed first, in the order the loop sums them
  const T = s.f32 ? 'f32' : 'u32';
  const pre = nm ? [0, 1, 2, 3].map((k) => `var pw${k} = vec4<${T}>();${s.gated ? ` var pg${k} = vec4<${T}>();` : ''}`).join(' ') : '';
  const preLoad = nm ? [0, 1, 2, 3].map((k) => `if (lane + ${32 * k}u < units) { pw${k} = W[base + lane + ${32 * k}u];${s.gated ? ` pg${k} = W2[base + lane + ${32 * k}u];` : ''} }`).join('\n      ') : '';
  const preUse = (k: number) => s.f32 ? `if (lane + ${32 * k}u < units) { acc += dot(pw${k}, xw[lane + ${32 * k}u]); }`
    : `if (lane + ${32 * k}u < units) { let u = lane + ${32 * k}u; let xa = xw[2u * u]; let xb = xw[2u * u + 1u]; acc += dot8(pw${k}, xa, xb);${s.gated ? ` acc2 += dot8(pg${k}, xa, xb);` : ''} }`;
  const write = s.resid ? `outv[row] = outv[row] + ${res};` : `outv[i] = ${res};`;
  const kept = typeof s.compact === 'object' ? `v >= ${f32(s.compact.ge)}` : 'v != 0.0';
  const tail = s.compact ? `var v = 0.0;
  if (lane == 0u && i < count) {
    var s1 = 0.0;
    var s2 = 0.0;
    for (var k = 0u; k < 32u; k++) { s1 += red[lid + k];${s.gated ? ' s2 += red2[lid + k];' : ''} }
    v = ${res};
    outv[i] = v;
    nzf[r] = select(0u, 1u, ${kept});
  }
  workgroupBarrier();
  if (lid == 0u) {
    var t = 0u;
    for (var k = 0u; k < 8u; k++) { let f = nzf[k]; nzf[k] = t; t += f; }
    if (t > 0u) { nzb = atomicAdd(&zc[0], t); atomicAdd(&stats[0], t); }
  }
  workgroupBarrier();
  if (lane == 0u && i < count && ${kept}) { let slot = nzb + nzf[r]; atomicStore(&zc[1u + slot], row); coef[slot] = v; }` : `if (lane == 0u && i < count) {
    var s1 = 0.0;
    var s2 = 0.0;
    for (var k = 0u; k < 32u; k++) { s1 += red[lid + k];${s.gated ? ' s2 += red2[lid + k];' : ''} }
    ${write}
  }`;
  return `${b.join('\n')}
${DOT8}
${actFn(s.act, s.actThreshold)}
var<workgroup> red: array<f32, 256>;
${s.gated ? 'var<workgroup> red2: array<f32, 256>;' : ''}
${nm ? `var<workgroup> xw: array<vec4<f32>, ${D4}>;\n${FAST_SHARED}` : ''}
${s.compact ? 'var<workgroup> nzf: array<u32, 8>;\nvar<workgroup> nzb: u32;' : ''}
var<workgroup> wcount: u32;
var<workgroup> wunits: u32;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  if (lid == 0u) { wcount = ${count}; wunits = ${units};${s.zero ? ' if (wid.x == 0u) { zc[0] = 0u; }' : ''} }
  let count = workgroupUniformLoad(&wcount);
  let units = wunits;
  if (wid.x * 8u >= count) { return; }
  let r = lid / 32u;
  let lane = lid % 32u;
  let i = wid.x * 8u + r;
  var acc = 0.0;
  var acc2 = 0.0;
  var row = 0u;
  var base = 0u;
  ${pre}
  if (i < count) {
    row = ${row};
    base = row * ${U}u;
    ${preLoad}
  }
  ${normIn}
  if (i < count) {
    var u0 = lane;
    ${nm ? `${[0, 1, 2, 3].map(preUse).join(' ')} u0 += 128u;` : ''}
    for (; u0 + 96u < units; u0 += 128u) { ${[0, 1, 2, 3].map(load).join(' ')} }
    for (; u0 < units; u0 += 32u) { ${load(0)} }
  }
  red[lid] = acc;
  ${s.gated ? 'red2[lid] = acc2;' : ''}
  workgroupBarrier();
  ${tail}
}`;
}

/**
 * matvecWgsl with two rows per 32 lanes (rows i and i + 8 of a workgroup's 16): each lane's x units loaded once for
 * both rows, 8 weight units in flight; with the norm fused in, every workgroup normalizes x (as matvecWgsl) for 16
 * rows, half the workgroups' reads of x, g, b (a fused norm's cost in a matvec of many rows: each workgroup reads 48
 * KiB from L2 at d 4096). A second row past the count reads the first's (its result is not written).
 */
function matvecPairWgsl(s: MatvecSpec): string {
  if (s.f32 || s.gated || s.compact || s.colGather) throw new Error('matvecWgsl: pair rows with float32 weights, a gate, compaction or gathered columns');
  const U = s.cols / 8, nm = s.norm, rg = s.rowGather;
  const b: string[] = ['@group(0) @binding(0) var<storage, read> W: array<vec4<u32>>;', '@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;',
    '@group(0) @binding(2) var<storage, read_write> outv: array<f32>;'];
  if (rg) b.push('@group(0) @binding(3) var<storage, read> sel: array<u32>;');
  if (s.bias) b.push('@group(0) @binding(4) var<storage, read> bias: array<f32>;');
  if (s.zero) b.push('@group(0) @binding(7) var<storage, read_write> zc: array<u32>;');
  if (nm) {
    b.push('@group(0) @binding(8) var<storage, read> ng: array<vec4<f32>>;');
    if (nm.hasB) b.push('@group(0) @binding(9) var<storage, read> nb: array<vec4<f32>>;');
    if (nm.out) b.push('@group(0) @binding(10) var<storage, read_write> nout: array<vec4<f32>>;');
  }
  const count = rg ? `(sel[0] - ${rg.sub}u) * ${rg.G}u` : `${s.rows}u`;
  const rowOf = (i: string) => (rg ? `sel[1u + ${i} / ${rg.G}u] * ${rg.G}u + ${i} % ${rg.G}u` : i);
  const X = nm ? 'xw' : 'x';
  const both = (u: string, w0: string, w1: string) => `{ let u = ${u}; let xa = ${X}[2u * u]; let xb = ${X}[2u * u + 1u]; acc0 += dot8(${w0}, xa, xb); acc1 += dot8(${w1}, xa, xb); }`;
  const load = (k: number) => both(`u0 + ${k * 32}u`, 'W[base0 + u]', 'W[base1 + u]');
  const D4 = s.cols / 4;
  const normIn = nm ? normInto(s.cols, nm) : '';
  // with the norm fused in, each lane's first 4 weight units of both rows loaded before the norm, summed first
  const pre = nm ? [0, 1, 2, 3].map((k) => `var p0${k} = vec4<u32>(); var p1${k} = vec4<u32>();
  if (lane + ${32 * k}u < ${U}u) { p0${k} = W[base0 + lane + ${32 * k}u]; p1${k} = W[base1 + lane + ${32 * k}u]; }`).join('\n  ') : '';
  const preUse = nm ? [0, 1, 2, 3].map((k) => `if (lane + ${32 * k}u < ${U}u) ${both(`lane + ${32 * k}u`, `p0${k}`, `p1${k}`)}`).join('\n    ') + '\n    u0 += 128u;' : '';
  const res = (row: string) => `${s.act ? 'act(' : '('}t${s.bias ? ` + bias[${row}]` : ''})`;
  const write = (i: string, row: string) => (s.resid ? `outv[${row}] = outv[${row}] + ${res(row)};` : `outv[${i}] = ${res(row)};`);
  return `${b.join('\n')}
${DOT8}
${actFn(s.act, s.actThreshold)}
var<workgroup> red: array<f32, 512>;
${nm ? `var<workgroup> xw: array<vec4<f32>, ${D4}>;\n${FAST_SHARED}` : ''}
var<workgroup> wcount: u32;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  if (lid == 0u) { wcount = ${count};${s.zero ? ' if (wid.x == 0u) { zc[0] = 0u; }' : ''} }
  let count = workgroupUniformLoad(&wcount);
  if (wid.x * 16u >= count) { return; }
  let r = lid / 32u;
  let lane = lid % 32u;
  let i0 = wid.x * 16u + r;
  let i1 = i0 + 8u;
  var acc0 = 0.0;
  var acc1 = 0.0;
  var row0 = 0u;
  var row1 = 0u;
  if (i0 < count) { row0 = ${rowOf('i0')}; }
  if (i1 < count) { row1 = ${rowOf('i1')}; } else { row1 = row0; }
  let base0 = row0 * ${U}u;
  let base1 = row1 * ${U}u;
  ${pre}
  ${normIn}
  if (i0 < count) {
    var u0 = lane;
    ${preUse}
    for (; u0 + 96u < ${U}u; u0 += 128u) { ${[0, 1, 2, 3].map(load).join(' ')} }
    for (; u0 < ${U}u; u0 += 32u) { ${load(0)} }
  }
  red[lid] = acc0;
  red[256u + lid] = acc1;
  workgroupBarrier();
  if (lane == 0u && i0 < count) {
    var t = 0.0;
    for (var k = 0u; k < 32u; k++) { t += red[lid + k]; }
    ${write('i0', 'row0')}
  }
  if (lane == 0u && i1 < count) {
    var t = 0.0;
    for (var k = 0u; k < 32u; k++) { t += red[256u + lid + k]; }
    ${write('i1', 'row1')}
  }
}`;
}

export interface MlpSelSpec {
  /** the model's width (% 8 == 0) */
  cols: number;
  /** the most neurons a selection holds (the ffn's width) */
  rows: number;
  /** workgroups, each a chunk of the selection */
  chunks: number;
  bias: boolean;
  gated: boolean;
  gateBias: boolean;
  act: GpuAct | null;
  actThreshold: number;
  /** the norm fused in (as MatvecSpec.norm, without `out`); absent: x is already normed */
  norm?: { kind: 'layernorm' | 'rmsnorm'; eps: number; hasB: boolean } | undefined;
  /** every neuron (0 .. rows - 1, no selection): a dense MLP's chunks */
  every?: boolean | undefined;
  /** lossless: the down rows of zero activations are not read; the nonzero ones counted into stats[0] (binding 12) */
  skipZero?: boolean | undefined;
}

/**
 * The MLP over selected neurons in one dispatch: part[c] = Σ_{i in chunk c} act(up_i · x (+ b)) down_i (gated:
 * act(gate_i · x + gb) (up_i · x + b)), the selection sel [count, ids...] split into `chunks` chunks of consecutive
 * ids, a workgroup each. Where the up matvec and the split-K axpy were two dispatches (with a barrier between them,
 * and each a kernel of ~1-2 µs of rows at 10% of the 6.7B widths' ffn behind its ramp-up and tail), a workgroup
 * computes its chunk's activations (8 rows at a time, 32 lanes a row: matvecWgsl's order, so the same values) into
 * workgroup memory, then reads those neurons' down rows (a thread per 8 columns, rows in order as axpyWgsl: the same
 * partial sums as the two dispatches with the same chunks); reduceWgsl sums the chunks into the residual.
 * `every` with `skipZero` is the lossless MLP in one dispatch: every neuron's activation, then only the nonzero
 * ones' down rows, listed in order (a 256-bit mask as axpySiteWgsl's), so each chunk's sum is the dense axpy's over the
 * same chunk with its zero terms left out: the same bits as dense.
 * Bindings: W 0 (up), x 1, part 2, sel 3, bias 4, W2 5 (gate), bias2 6, ng 8, nb 9, stats 12, Wd 13 (down).
 */
export function mlpSelWgsl(s: MlpSelSpec): string {
  const U = s.cols / 8, nm = s.norm, C = s.chunks, PER = Math.ceil(s.rows / C), NU = Math.ceil(U / 256);
  if (s.skipZero && (PER > 256 || !s.every)) throw new Error(`mlpSelWgsl: skipZero needs every neuron and at most 256 a chunk (${s.rows} in ${C})`);
  const b: string[] = ['@group(0) @binding(0) var<storage, read> W: array<vec4<u32>>;', '@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;',
    '@group(0) @binding(2) var<storage, read_write> part: array<vec4<f32>>;', '@group(0) @binding(13) var<storage, read> Wd: array<vec4<u32>>;'];
  if (!s.every) b.push('@group(0) @binding(3) var<storage, read> sel: array<u32>;');
  if (s.skipZero) b.push('@group(0) @binding(12) var<storage, read_write> stats: array<atomic<u32>>;');
  const id = (i: string) => (s.every ? `(${i})` : `sel[1u + ${i}]`);
  if (s.bias) b.push('@group(0) @binding(4) var<storage, read> bias: array<f32>;');
  if (s.gated) b.push('@group(0) @binding(5) var<storage, read> W2: array<vec4<u32>>;');
  if (s.gated && s.gateBias) b.push('@group(0) @binding(6) var<storage, read> bias2: array<f32>;');
  if (nm) { b.push('@group(0) @binding(8) var<storage, read> ng: array<vec4<f32>>;'); if (nm.hasB) b.push('@group(0) @binding(9) var<storage, read> nb: array<vec4<f32>>;'); }
  const X = nm ? 'xw' : 'x';
  const load = (k: number) => `{ let u = u0 + ${k * 32}u; let xa = ${X}[2u * u]; let xb = ${X}[2u * u + 1u]; acc += dot8(W[base + u], xa, xb);${s.gated ? ' acc2 += dot8(W2[base + u], xa, xb);' : ''} }`;
  // with the norm fused in, each lane's first 4 units of its first row loaded before the norm, summed first (matvecWgsl's order)
  const pre = nm ? [0, 1, 2, 3].map((k) => `var pw${k} = vec4<u32>();${s.gated ? ` var pg${k} = vec4<u32>();` : ''}`).join(' ') : '';
  const preLoad = nm ? `if (lo + r < hi) { let b0 = ${id('lo + r')} * ${U}u; ${[0, 1, 2, 3].map((k) => `if (lane + ${32 * k}u < ${U}u) { pw${k} = W[b0 + lane + ${32 * k}u];${s.gated ? ` pg${k} = W2[b0 + lane + ${32 * k}u];` : ''} }`).join(' ')} }` : '';
  const preUse = nm ? `if (rb == lo) { ${[0, 1, 2, 3].map((k) => `if (lane + ${32 * k}u < ${U}u) { let u = lane + ${32 * k}u; let xa = xw[2u * u]; let xb = xw[2u * u + 1u]; acc += dot8(pw${k}, xa, xb);${s.gated ? ` acc2 += dot8(pg${k}, xa, xb);` : ''} }`).join(' ')} u0 += 128u; }` : '';
  const v1 = `s1${s.bias ? ' + bias[row]' : ''}`;
  const res = s.gated ? `act(s2${s.gateBias ? ' + bias2[row]' : ''}) * (${v1})` : s.act ? `act(${v1})` : v1;
  // the down rows: per row its ids' units for this thread's NU column units, 4 rows' loads in flight
  const units = Array.from({ length: NU }, (_, j) => j);
  // rows k0 .. k0 + m - 1: every load first (m * NU in flight), then the sums in row order
  const downRows = (k0: string, m: number) => {
    const rows = Array.from({ length: m }, (_, q) => q);
    const inb = (j: number) => (256 * (j + 1) <= U ? '' : `if (lid + ${256 * j}u < ${U}u) `);
    return `${rows.map((q) => `let d${q} = kid[${k0} + ${q}u] * ${U}u;${units.map((j) => ` var w${q}_${j} = vec4<u32>(); ${inb(j)}{ w${q}_${j} = Wd[d${q} + lid + ${256 * j}u]; }`).join('')}`).join('\n    ')}
    ${rows.map((q) => `{ let ai = av[${k0} + ${q}u];${units.map((j) => ` s0[${j}] += ai * vec4<f32>(unpack2x16float(w${q}_${j}.x), unpack2x16float(w${q}_${j}.y)); s1[${j}] += ai * vec4<f32>(unpack2x16float(w${q}_${j}.z), unpack2x16float(w${q}_${j}.w));`).join('')} }`).join('\n    ')}`;
  };
  return `${b.join('\n')}
${DOT8}
${actFn(s.act, s.actThreshold)}
var<workgroup> red: array<f32, 256>;
${s.gated ? 'var<workgroup> red2: array<f32, 256>;' : ''}
${nm ? `var<workgroup> xw: array<vec4<f32>, ${s.cols / 4}>;\n${FAST_SHARED}` : ''}
var<workgroup> av: array<f32, ${PER}>;
var<workgroup> kid: array<u32, ${PER}>;
var<workgroup> wcount: u32;
${s.skipZero ? 'var<workgroup> bits: array<atomic<u32>, 8>;\nvar<workgroup> nkw: u32;' : ''}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  if (lid == 0u) { wcount = ${s.every ? `${s.rows}u` : 'sel[0]'}; }${s.skipZero ? '\n  if (lid < 8u) { atomicStore(&bits[lid], 0u); }' : ''}
  let count = workgroupUniformLoad(&wcount);
  let per = (count + ${C - 1}u) / ${C}u;
  let lo = min(count, wid.x * per);
  let hi = min(count, lo + per);
  let r = lid / 32u;
  let lane = lid % 32u;
  ${pre}
  ${preLoad}
  ${nm ? normInto(s.cols, { ...nm, out: false }) : ''}
  for (var rb = lo; rb < hi; rb += 8u) {
    let i = rb + r;
    var acc = 0.0;
    var acc2 = 0.0;
    var row = 0u;
    if (i < hi) {
      row = ${id('i')};
      let base = row * ${U}u;
      var u0 = lane;
      ${preUse}
      for (; u0 + 96u < ${U}u; u0 += 128u) { ${[0, 1, 2, 3].map(load).join(' ')} }
      for (; u0 < ${U}u; u0 += 32u) { ${load(0)} }
    }
    red[lid] = acc;
    ${s.gated ? 'red2[lid] = acc2;' : ''}
    workgroupBarrier();
    if (lane == 0u && i < hi) {
      var s1 = 0.0;
      var s2 = 0.0;
      for (var k = 0u; k < 32u; k++) { s1 += red[lid + k];${s.gated ? ' s2 += red2[lid + k];' : ''} }
      av[i - lo] = ${res};
      kid[i - lo] = row;
    }
    workgroupBarrier();
  }
  var s0: array<vec4<f32>, ${NU}>;
  var s1: array<vec4<f32>, ${NU}>;
  ${s.skipZero ? `// the nonzero activations listed in order (kid / av rewritten in place: a thread per neuron of the chunk)
  let own = lid < hi - lo;
  var ka = 0.0;
  var kr = 0u;
  if (own) { ka = av[lid]; kr = kid[lid]; if (ka != 0.0) { atomicOr(&bits[lid / 32u], 1u << (lid % 32u)); } }
  workgroupBarrier();
  var below = 0u;
  var nz = 0u;
  for (var q = 0u; q < 8u; q++) { let cb = countOneBits(atomicLoad(&bits[q])); below += select(0u, cb, q < lid / 32u); nz += cb; }
  if (own && ka != 0.0) { let at = below + countOneBits(atomicLoad(&bits[lid / 32u]) & ((1u << (lid % 32u)) - 1u)); kid[at] = kr; av[at] = ka; }
  if (lid == 0u) { nkw = nz; if (nz > 0u) { atomicAdd(&stats[0], nz); } }
  let nk = workgroupUniformLoad(&nkw);` : 'let nk = hi - lo;'}
  var k = 0u;
  for (; k + 3u < nk; k += 4u) {
    ${downRows('k', 4)}
  }
  for (; k < nk; k += 1u) {
    ${downRows('k', 1)}
  }
  ${units.map((j) => `if (lid + ${256 * j}u < ${U}u) { let u = lid + ${256 * j}u; part[(wid.x * ${U}u + u) * 2u] = s0[${j}]; part[(wid.x * ${U}u + u) * 2u + 1u] = s1[${j}]; }`).join('\n  ')}
}`;
}

export interface AxpySpec { cols: number; rows: number; chunks: number; gather: boolean }

/**
 * Split-K row axpy: part[c] = Σ_{i in chunk c} a[i] W[row(i)] (row(i) = sel[1 + i] when gathered, else i; rows
 * counted by sel[0] or `rows`), a thread per 8 columns; reduceWgsl sums the chunks into the residual.
 */
export function axpyWgsl(s: AxpySpec): string {
  const U = s.cols / 8;
  const acc = (k: number) => `{ let i = i0 + ${k}u; let w = W[${s.gather ? `sel[1u + i]` : 'i'} * ${U}u + u]; let ai = a[i];
      s0 += ai * vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)); s1 += ai * vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)); }`;
  return `@group(0) @binding(0) var<storage, read> W: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> part: array<vec4<f32>>;
${s.gather ? '@group(0) @binding(3) var<storage, read> sel: array<u32>;' : ''}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let u = gid.x;
  let c = gid.y;
  if (u >= ${U}u) { return; }
  let count = ${s.gather ? 'sel[0]' : `${s.rows}u`};
  let per = (count + ${s.chunks - 1}u) / ${s.chunks}u;
  let lo = c * per;
  let hi = min(count, lo + per);
  var s0 = vec4<f32>(0.0);
  var s1 = vec4<f32>(0.0);
  var i0 = lo;
  for (; i0 + 3u < hi; i0 += 4u) { ${[0, 1, 2, 3].map(acc).join(' ')} }
  for (; i0 < hi; i0 += 1u) { ${acc(0)} }
  part[(c * ${U}u + u) * 2u] = s0;
  part[(c * ${U}u + u) * 2u + 1u] = s1;
}`;
}

export interface AxpySiteSpec {
  /** outputs (values per weight row, % 8 == 0) */
  cols: number;
  /** input rows (the site's width; gathered: the most the selection holds) */
  rows: number;
  chunks: number;
  /**
   * where input i's value comes from: `x` a[i]; `gather` a[i] of the selected row sel[1 + i] (sel[0] of them);
   * `norm` the norm of a (g at 5, b at 6), every workgroup computing it; `parts` act(bias[i] + Σ_c pin[c, i]) over
   * the `chunks` partial sums an earlier axpy left (pin at 8, bias at 5)
   */
  input: { kind: 'x' | 'gather' } | { kind: 'norm'; norm: 'layernorm' | 'rmsnorm'; eps: number; hasB: boolean } | { kind: 'parts'; chunks: number; bias: boolean; act: GpuAct; actThreshold: number };
  /** TEAL / WINA: the rows whose value is 0 or whose |value| (· nrm[row], binding 4) is below thr[slot] (binding 9) are not read */
  skip: { slot: number; wina: boolean } | null;
  /** stats[count] (binding 7) += the rows read */
  count: number | null;
  /** kept rows read in flight per thread (4 or 8; default 8) */
  unroll?: 4 | 8 | undefined;
}

/** the most input rows one chunk of axpySiteWgsl holds (a thread per row) */
export const SITE_PER = 256;

/**
 * The input-sparse axpy (the input-threshold sites of src/runtime/decoder.ts, on input-major matrices):
 * part[c] = Σ_{kept i in chunk c} v_i W[row(i)]. Each workgroup (256 threads of 8 output columns each, the chunk
 * wid.y) first computes its chunk's input values (a thread per input row), keeps those at or above the threshold
 * and lists them in order, so the weight rows it skips are never read and the sum runs in the CPU runtime's order;
 * reduceWgsl or the attention kernel (AttnSpec.parts) sums the chunks. The list is made from a 256-bit mask (each
 * kept thread sets its bit with an atomicOr, then counts the bits below its own: 2 barriers, where the
 * Hillis-Steele prefix sum took 18, ~4 µs of a site's fixed cost on the H200 when every workgroup does it before
 * its first row); `unroll` (default 8) rows are read in flight per thread (4: the workgroups too few to hide the
 * memory's latency at 50% kept, ~48k threads a site).
 */
export function axpySiteWgsl(s: AxpySiteSpec): string {
  const U = s.cols / 8, inp = s.input, n = s.rows;
  if (Math.ceil(n / s.chunks) > SITE_PER) throw new Error(`axpySiteWgsl: ${n} rows in ${s.chunks} chunks: more than ${SITE_PER} per chunk`);
  const b = ['@group(0) @binding(0) var<storage, read> W: array<vec4<u32>>;', '@group(0) @binding(2) var<storage, read_write> part: array<vec4<f32>>;'];
  if (inp.kind !== 'parts') b.push('@group(0) @binding(1) var<storage, read> a: array<f32>;');
  if (inp.kind === 'gather') b.push('@group(0) @binding(3) var<storage, read> sel: array<u32>;');
  if (s.skip?.wina) b.push('@group(0) @binding(4) var<storage, read> nrm: array<f32>;');
  if (inp.kind === 'norm') { b.push('@group(0) @binding(5) var<storage, read> ng: array<f32>;'); if (inp.hasB) b.push('@group(0) @binding(6) var<storage, read> nb: array<f32>;'); }
  if (inp.kind === 'parts') { b.push('@group(0) @binding(8) var<storage, read> pin: array<f32>;'); if (inp.bias) b.push('@group(0) @binding(5) var<storage, read> pb: array<f32>;'); }
  if (s.count !== null) b.push('@group(0) @binding(7) var<storage, read_write> stats: array<atomic<u32>>;');
  if (s.skip) b.push('@group(0) @binding(9) var<storage, read> thr: array<f32>;');
  const NV = Math.ceil(n / 256);
  // the norm's m and inv in one pass, as normFast (scalar loads)
  const norm = inp.kind === 'norm' ? `var sq = vec2<f32>(0.0);
  for (var k = 0u; k < ${NV}u; k++) { let j = lid + 256u * k; if (j < ${n}u) { let t = a[j]; sq += vec2<f32>(t, t * t); } }
  ${meanInv(n, inp.norm, inp.eps)}` : '';
  const value = inp.kind === 'norm' ? `v = (a[i] - m) * inv * ng[i]${inp.hasB ? ' + nb[i]' : ''};`
    : inp.kind === 'parts' ? `v = ${inp.bias ? 'pb[i]' : '0.0'}; for (var c2 = 0u; c2 < ${inp.chunks}u; c2++) { v += pin[c2 * ${n}u + i]; } v = act(v);`
      : 'v = a[i];';
  const row = inp.kind === 'gather' ? 'sel[1u + i]' : 'i';
  const keep = s.skip ? `v != 0.0 && abs(v)${s.skip.wina ? ' * nrm[id]' : ''} >= thr[${s.skip.slot}u]` : 'true';
  const R = s.unroll ?? 8;
  // the loads first, then the sums in row order (the CPU runtime's order)
  const step = (k0: number, m: number) => `${Array.from({ length: m }, (_, k) => `let w${k} = W[kid[k + ${k0 + k}u] * ${U}u + u];`).join(' ')}
      ${Array.from({ length: m }, (_, k) => `{ let ai = av[k + ${k0 + k}u]; s0 += ai * vec4<f32>(unpack2x16float(w${k}.x), unpack2x16float(w${k}.y)); s1 += ai * vec4<f32>(unpack2x16float(w${k}.z), unpack2x16float(w${k}.w)); }`).join('\n      ')}`;
  return `${b.join('\n')}
${inp.kind === 'parts' ? actFn(inp.act, inp.actThreshold) : ''}
var<workgroup> kid: array<u32, ${SITE_PER}>;
var<workgroup> av: array<f32, ${SITE_PER}>;
var<workgroup> bits: array<atomic<u32>, 8>;
var<workgroup> wcount: u32;
${inp.kind === 'norm' ? FAST_SHARED : ''}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  if (lid == 0u) { wcount = ${inp.kind === 'gather' ? 'sel[0]' : `${n}u`}; }
  if (lid < 8u) { atomicStore(&bits[lid], 0u); }
  let count = workgroupUniformLoad(&wcount);
  let u = wid.x * 256u + lid;
  let c = wid.y;
  let per = (count + ${s.chunks - 1}u) / ${s.chunks}u;
  let lo = min(count, c * per);
  let hi = min(count, lo + per);
  ${norm}
  var v = 0.0;
  var id = 0u;
  var kp = false;
  if (lo + lid < hi) { let i = lo + lid; ${value} id = ${row}; kp = ${keep}; }
  // the kept inputs listed in order: a bit per thread, then each kept thread counts the bits below its own
  if (kp) { atomicOr(&bits[lid / 32u], 1u << (lid % 32u)); }
  workgroupBarrier();
  var below = 0u;
  var nk = 0u;
  for (var q = 0u; q < 8u; q++) { let cb = countOneBits(atomicLoad(&bits[q])); below += select(0u, cb, q < lid / 32u); nk += cb; }
  if (kp) { let at = below + countOneBits(atomicLoad(&bits[lid / 32u]) & ((1u << (lid % 32u)) - 1u)); kid[at] = id; av[at] = v; }
  workgroupBarrier();
  ${s.count !== null ? `if (wid.x == 0u && lid == 0u && nk > 0u) { atomicAdd(&stats[${s.count}u], nk); }` : ''}
  if (u >= ${U}u) { return; }
  var s0 = vec4<f32>(0.0);
  var s1 = vec4<f32>(0.0);
  var k = 0u;
  for (; k + ${R - 1}u < nk; k += ${R}u) {
      ${step(0, R)}
  }
  for (; k < nk; k += 1u) { ${step(0, 1)} }
  part[(c * ${U}u + u) * 2u] = s0;
  part[(c * ${U}u + u) * 2u + 1u] = s1;
}`;
}

/** in [rows, cols] float16 (packed pairs) -> out [cols, rows] (rows % 2 == 0): a thread per output pair, grid-stride */
export function transposeWgsl(rows: number, cols: number): string {
  return `@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
fn at(r: u32, c: u32) -> f32 { return unpack2x16float(src[(r * ${cols}u + c) / 2u])[c % 2u]; }
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  for (var t = gid.x; t < ${(rows * cols) / 2}u; t += nw.x * 256u) {
    let c = t / ${rows / 2}u;
    let r = 2u * (t % ${rows / 2}u);
    dst[t] = pack2x16float(vec2<f32>(at(r, c), at(r + 1u, c)));
  }
}`;
}

/** out[i] = ‖W[i]‖ (float16 rows of `cols`): a workgroup per row (WINA's column norms, of the input-major copy) */
export function rowNormWgsl(rows: number, cols: number): string {
  return `@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read_write> outv: array<f32>;
var<workgroup> red: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let r = wid.x + wid.y * 65535u;
  if (r >= ${rows}u) { return; }
  var q = 0.0;
  for (var j = lid; j < ${cols / 2}u; j += 256u) { let p = unpack2x16float(W[r * ${cols / 2}u + j]); q += dot(p, p); }
  red[lid] = q;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) { if (lid < s) { red[lid] += red[lid + s]; } workgroupBarrier(); }
  if (lid == 0u) { outv[r] = sqrt(red[0]); }
}`;
}

/**
 * x[j] += (bias[j]) + Σ_c part[c, j]: a workgroup per 8 vec4 columns, 32 threads per column each summing every
 * 32nd chunk (adjacent threads: adjacent columns), then a shared-memory sum of the 32
 */
export function reduceWgsl(d: number, chunks: number, bias: boolean, zero = false): string {
  const D4 = d / 4;
  return `@group(0) @binding(0) var<storage, read_write> xv: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> part: array<vec4<f32>>;
${bias ? '@group(0) @binding(2) var<storage, read> bias: array<vec4<f32>>;' : ''}
${zero ? '@group(0) @binding(3) var<storage, read_write> zc: array<u32>;' : ''}
var<workgroup> acc: array<vec4<f32>, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let cg = lid / 8u;
  let c4 = wid.x * 8u + lid % 8u;${zero ? '\n  if (wid.x == 0u && lid == 0u) { zc[0] = 0u; }' : ''}
  var s = vec4<f32>(0.0);
  if (c4 < ${D4}u) { for (var c = cg; c < ${chunks}u; c += 32u) { s += part[c * ${D4}u + c4]; } }
  acc[lid] = s;
  workgroupBarrier();
  if (cg == 0u && c4 < ${D4}u) {
    var t = ${bias ? 'bias[c4]' : 'vec4<f32>(0.0)'};
    for (var k = 0u; k < 32u; k++) { t += acc[lid + 8u * k]; }
    xv[c4] = xv[c4] + t;
  }
}`;
}

/**
 * out[j] = act(bias[j] + Σ_c part[c, j]) (n outputs): the input of the site after an input-sparse axpy whose chunks
 * it sums (fc2's site after fc1's: computed once here, where each of the next site's workgroups summed its inputs'
 * chunks itself), laid out as reduceWgsl (a workgroup per 8 vec4 columns, 32 threads per column each summing every
 * 32nd chunk, then a shared-memory sum of the 32)
 */
export function sumPartsWgsl(n: number, chunks: number, bias: boolean, act: GpuAct | null, actThreshold: number): string {
  const D4 = n / 4;
  return `@group(0) @binding(0) var<storage, read_write> outv: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> part: array<vec4<f32>>;
${bias ? '@group(0) @binding(2) var<storage, read> bias: array<vec4<f32>>;' : ''}
${actFn(act, actThreshold)}
var<workgroup> acc: array<vec4<f32>, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let cg = lid / 8u;
  let c4 = wid.x * 8u + lid % 8u;
  var s = vec4<f32>(0.0);
  if (c4 < ${D4}u) { for (var c = cg; c < ${chunks}u; c += 32u) { s += part[c * ${D4}u + c4]; } }
  acc[lid] = s;
  workgroupBarrier();
  if (cg == 0u && c4 < ${D4}u) {
    var t = ${bias ? 'bias[c4]' : 'vec4<f32>(0.0)'};
    for (var k = 0u; k < 32u; k++) { t += acc[lid + 8u * k]; }
    ${act ? 'outv[c4] = vec4<f32>(act(t.x), act(t.y), act(t.z), act(t.w));' : 'outv[c4] = t;'}
  }
}`;
}

/**
 * dst = norm(src) · g (+ b): one workgroup, each thread holding its vec4s of src in registers (one read), two
 * shared-memory sums (LayerNorm: mean, then variance; RMSNorm: mean square)
 */
export function normWgsl(d: number, kind: 'layernorm' | 'rmsnorm', eps: number, hasB: boolean): string {
  const D4 = d / 4, NV = Math.ceil(D4 / 256);
  return `@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> g: array<vec4<f32>>;
${hasB ? '@group(0) @binding(3) var<storage, read> b: array<vec4<f32>>;' : ''}
${FAST_SHARED}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
  ${normFast(d, kind, eps, 'src')}
  for (var k = 0u; k < ${NV}u; k++) { let j = lid + 256u * k; if (j < ${D4}u) { dst[j] = (xs[k] - m) * inv * g[j]${hasB ? ' + b[j]' : ''}; } }
}`;
}

function half(buf: string, idx: string): string {
  return `unpack2x16float(${buf}[(${idx}) / 2u])[(${idx}) % 2u]`;
}

/** x = E[tok] (· scale) (+ P[params.pos]): the token's embedding row (float16 packed) and its learned position */
export function embedWgsl(d: number, scale: number | null, pos: boolean): string {
  return `${PARAMS}
@group(0) @binding(0) var<storage, read> E: array<u32>;
@group(0) @binding(1) var<storage, read> tok: array<u32>;
@group(0) @binding(2) var<storage, read_write> xv: array<f32>;
@group(0) @binding(3) var<storage, read> params: Params;
${pos ? '@group(0) @binding(4) var<storage, read> P: array<u32>;' : ''}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let j = gid.x;
  if (j >= ${d}u) { return; }
  var v = ${half('E', `tok[0] * ${d}u + j`)}${scale !== null ? ` * ${f32(scale)}` : ''};
  ${pos ? `v += ${half('P', `params.pos * ${d}u + j`)};` : ''}
  xv[j] = v;
}`;
}

export interface AttnSpec {
  heads: number; kvHeads: number; hd: number; cap: number; ropeDim: number; scale: number;
  /**
   * q / k / v as the input-sparse q|k|v axpy left them: `chunks` partial sums of every head's q, k, v (the
   * uncompacted layout [H q | KV k | KV v] hd), summed here (+ the bias at binding 8); else (undefined) the
   * matvec's compact vector
   */
  parts?: { chunks: number; bias: boolean } | undefined;
}

/**
 * Attention of the selected heads, after the q / k / v matvec (compact: the selected heads' q, then every kv
 * head's k, then v) or axpy (`parts`): a workgroup per selected head stages its q, its kv head's new k and v (and,
 * for workgroup k < KV, kv head k's) in workgroup memory, ropes q and the new k (rotate_half over the first
 * ropeDim; this position's cos / sin from the host), takes softmax(q K^T · scale) over the cached positions and
 * the new one (scores in shared memory), and the V-weighted sum (8 threads per vec4 of hd, then a shared sum).
 * Workgroup k < KV also writes kv head k's new K and V to cache slot n (nobody reads slot n from the cache in this
 * dispatch: each workgroup uses its own copy), so the dispatch is max(selected, KV) workgroups.
 */
export function attentionWgsl(s: AttnSpec): string {
  const hd = s.hd, HD4 = hd / 4, KV = s.kvHeads, H = s.heads, G = H / KV, h2 = s.ropeDim / 2, TG = Math.max(1, Math.floor(256 / HD4));
  // the scores: LP lanes per position (the largest of 8, 4, 2, 1 dividing HD4; on the H200 at 73 positions 2 lanes, one
  // pass, ran the 10% / 50% token 1.2% slower than 8 lanes, 3 passes), JL vec4s each
  const LP = [8, 4, 2, 1].find((l) => HD4 % l === 0)!, JL = HD4 / LP;
  const P = s.parts, NQ = (H + 2 * KV) * hd;
  // stage o: 0 q, 1 k (kvh), 2 v (kvh), 3 k (w), 4 v (w) -> the offset of that vector in the input
  const off = P
    ? 'select(select(select(select((H0 + KV0 + w) * HD, (H0 + w) * HD, o == 3u), (H0 + KV0 + kvh) * HD, o == 2u), (H0 + kvh) * HD, o == 1u), sel[1u + w] * HD, o == 0u)'
    : 'select(select(select(select((nsel + KV0 + w) * HD, (nsel + w) * HD, o == 3u), (nsel + KV0 + kvh) * HD, o == 2u), (nsel + kvh) * HD, o == 1u), w * HD, o == 0u)';
  const val = P ? `var v = ${P.bias ? 'qb[g]' : '0.0'}; for (var c = 0u; c < ${P.chunks}u; c++) { v += qkv[c * ${NQ}u + g]; }` : 'let v = qkv[g];';
  const rot = h2 > 0
    ? `fn rot(o: u32, j: u32) -> f32 {
  if (j >= ${2 * h2}u) { return hv[o + j]; }
  let cb = params.n * ${2 * h2}u;
  if (j < ${h2}u) { return hv[o + j] * cs[cb + j] - hv[o + j + ${h2}u] * cs[cb + ${h2}u + j]; }
  let i = j - ${h2}u;
  return hv[o + j] * cs[cb + i] + hv[o + i] * cs[cb + ${h2}u + i];
}`
    : 'fn rot(o: u32, j: u32) -> f32 { return hv[o + j]; }';
  return `${PARAMS}
const HD = ${hd}u;
const H0 = ${H}u;
const KV0 = ${KV}u;
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> sel: array<u32>;
@group(0) @binding(2) var<storage, read_write> K: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> V: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> ctx: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> params: Params;
${h2 > 0 ? '@group(0) @binding(6) var<storage, read> cs: array<f32>;' : ''}
${P?.bias ? '@group(0) @binding(8) var<storage, read> qb: array<f32>;' : ''}
var<workgroup> hv: array<f32, ${5 * hd}>;
var<workgroup> qs: array<vec4<f32>, ${HD4}>;
var<workgroup> kc: array<vec4<f32>, ${HD4}>;
var<workgroup> vc: array<vec4<f32>, ${HD4}>;
var<workgroup> ps: array<f32, ${s.cap}>;
var<workgroup> red: array<f32, 256>;
var<workgroup> red32: array<f32, 32>;
var<workgroup> acc: array<vec4<f32>, 256>;
var<workgroup> wn: u32;
${rot}
fn rot4(o: u32, j4: u32) -> vec4<f32> { return vec4<f32>(rot(o, 4u * j4), rot(o, 4u * j4 + 1u), rot(o, 4u * j4 + 2u), rot(o, 4u * j4 + 3u)); }
/** position t's V (slot n, written in this dispatch by another workgroup: this workgroup's own copy) */
fn vat(kvh: u32, n: u32, t: u32, j4: u32) -> vec4<f32> { if (t == n) { return vc[j4]; } return V[(kvh * ${s.cap}u + t) * ${HD4}u + j4]; }
fn raw4(o: u32, j4: u32) -> vec4<f32> { return vec4<f32>(hv[o + 4u * j4], hv[o + 4u * j4 + 1u], hv[o + 4u * j4 + 2u], hv[o + 4u * j4 + 3u]); }
fn wred(v: f32, lid: u32, isMax: bool) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  if (lid < 32u) { var t = red[8u * lid]; for (var k = 1u; k < 8u; k++) { let o = red[8u * lid + k]; t = select(t + o, max(t, o), isMax); } red32[lid] = t; }
  workgroupBarrier();
  var t = red32[0];
  for (var k = 1u; k < 32u; k++) { let o = red32[k]; t = select(t + o, max(t, o), isMax); }
  workgroupBarrier();
  return t;
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  if (lid == 0u) { wn = sel[0] - ${2 * KV}u; }
  let nsel = workgroupUniformLoad(&wn);
  let w = wid.x;
  let n = params.n;
  let mine = w < nsel;
  let kvh = select(0u, sel[1u + w] / ${G}u, mine);
  for (var t = lid; t < ${5 * hd}u; t += 256u) {
    let o = t / HD;
    if ((o < 3u && mine) || (o >= 3u && w < KV0)) { let g = ${off} + t % HD; ${val} hv[t] = v; }
  }
  workgroupBarrier();
  if (w < KV0) {
    for (var j = lid; j < ${HD4}u; j += 256u) {
      K[(w * ${s.cap}u + n) * ${HD4}u + j] = rot4(3u * HD, j);
      V[(w * ${s.cap}u + n) * ${HD4}u + j] = raw4(4u * HD, j);
    }
  }
  if (!mine) { return; }
  for (var j = lid; j < ${HD4}u; j += 256u) {
    qs[j] = rot4(0u, j);
    kc[j] = rot4(HD, j);
    vc[j] = raw4(2u * HD, j);
  }
  workgroupBarrier();
  let npos = n + 1u;
  var m = -3.0e38;
  // ${LP} lanes per position (each ${JL} vec4 of it, adjacent lanes adjacent vec4s), ${256 / LP} positions a pass
  let pl = lid / ${LP}u;
  let ln = lid % ${LP}u;
  for (var t0 = 0u; t0 < npos; t0 += ${256 / LP}u) {
    let t = t0 + pl;
    var d = 0.0;
    if (t == n) { for (var k = 0u; k < ${JL}u; k++) { let j = ln + ${LP}u * k; d += dot(qs[j], kc[j]); } }
    else if (t < npos) { let kb = (kvh * ${s.cap}u + t) * ${HD4}u; for (var k = 0u; k < ${JL}u; k++) { let j = ln + ${LP}u * k; d += dot(qs[j], K[kb + j]); } }
    red[lid] = d;
    workgroupBarrier();
    if (lid < ${256 / LP}u && t0 + lid < npos) {
      var e = 0.0;
      for (var k = 0u; k < ${LP}u; k++) { e += red[lid * ${LP}u + k]; }
      e *= ${f32(s.scale)};
      ps[t0 + lid] = e;
      m = max(m, e);
    }
    workgroupBarrier();
  }
  m = wred(m, lid, true);
  var l = 0.0;
  for (var t = lid; t < npos; t += 256u) { let p = exp(ps[t] - m); ps[t] = p; l += p; }
  l = wred(l, lid, false);
  let tg = lid / ${HD4}u;
  let j4 = lid % ${HD4}u;
  var a = vec4<f32>(0.0);
  if (tg < ${TG}u) {
    // 4 positions' V in flight
    var t = tg;
    for (; t + ${3 * TG}u < npos; t += ${4 * TG}u) {
      let v0 = vat(kvh, n, t, j4); let v1 = vat(kvh, n, t + ${TG}u, j4); let v2 = vat(kvh, n, t + ${2 * TG}u, j4); let v3 = vat(kvh, n, t + ${3 * TG}u, j4);
      a += ps[t] * v0; a += ps[t + ${TG}u] * v1; a += ps[t + ${2 * TG}u] * v2; a += ps[t + ${3 * TG}u] * v3;
    }
    for (; t < npos; t += ${TG}u) { a += ps[t] * vat(kvh, n, t, j4); }
  }
  acc[lid] = a;
  workgroupBarrier();
  if (lid < ${HD4}u) {
    var o = vec4<f32>(0.0);
    for (var k = 0u; k < ${TG}u; k++) { o += acc[k * ${HD4}u + lid]; }
    ctx[w * ${HD4}u + lid] = o / l;
  }
}`;
}

/**
 * Lossless mode: the nonzero activations a[0..n) compacted into sel (count, ids) and coef (their values), any
 * order; stats[0] += how many (the session's counts). sel[0] was zeroed by the preceding matvec.
 */
export function compactWgsl(n: number): string {
  return `@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> sel: array<atomic<u32>>;
@group(0) @binding(2) var<storage, read_write> coef: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<atomic<u32>>;
var<workgroup> lc: atomic<u32>;
var<workgroup> base: u32;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  if (lid == 0u) { atomicStore(&lc, 0u); }
  workgroupBarrier();
  let i = gid.x;
  var v = 0.0;
  if (i < ${n}u) { v = a[i]; }
  let nz = v != 0.0;
  var slot = 0u;
  if (nz) { slot = atomicAdd(&lc, 1u); }
  workgroupBarrier();
  if (lid == 0u) { let k = atomicLoad(&lc); base = atomicAdd(&sel[0], k); atomicAdd(&stats[0], k); }
  let b = workgroupUniformLoad(&base);
  if (nz) { atomicStore(&sel[1u + b + slot], i); coef[b + slot] = v; }
}`;
}

/**
 * A predictor's rule on its W scores, as src/runtime/plan.ts applies it (topKRow: the k largest, ties to the lower
 * index; threshold: scores >= value), in one workgroup: sel = [n + tail, the ids ascending, then W .. W + tail - 1
 * (the kv heads' k / v groups after a head selection)], stats[0] += n. Top-k finds the k-th largest score by a
 * radix select over order-preserving keys (4 rounds of 8 bits), then every thread scans a block of scores.
 */
export function pickWgsl(W: number, rule: { kind: 'topk'; k: number } | { kind: 'threshold'; value: number }, tail: number): string {
  const PER = Math.ceil(W / 256), K = rule.kind === 'topk' ? Math.min(rule.k, W) : 0;
  return `@group(0) @binding(0) var<storage, read> sc: array<f32>;
@group(0) @binding(1) var<storage, read_write> sel: array<u32>;
@group(0) @binding(2) var<storage, read_write> stats: array<atomic<u32>>;
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> pick: vec2<u32>;
fn key(v: f32) -> u32 { let b = bitcast<u32>(v); return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u); }
${EXCL}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
  let lo = lid * ${PER}u;
  let hi = min(${W}u, lo + ${PER}u);
  ${rule.kind === 'topk' ? `// the k-th largest key, 8 bits a round from the top; kk: how many of the keys equal to it to take
  var prefix = 0u;
  var mask = 0u;
  var kk = ${K}u;
  for (var round = 0u; round < 4u; round++) {
    let sh = 24u - 8u * round;
    atomicStore(&hist[lid], 0u);
    workgroupBarrier();
    for (var j = lo; j < hi; j++) { let k = key(sc[j]); if ((k & mask) == prefix) { atomicAdd(&hist[(k >> sh) & 255u], 1u); } }
    workgroupBarrier();
    if (lid == 0u) {
      var cum = 0u;
      for (var b = 255i; b >= 0i; b--) { let h = atomicLoad(&hist[u32(b)]); if (cum + h >= kk) { pick = vec2<u32>(u32(b), kk - cum); break; } cum += h; }
    }
    workgroupBarrier();
    let pk = pick;
    workgroupBarrier();
    prefix |= pk.x << sh;
    mask |= 255u << sh;
    kk = pk.y;
  }
  var gt = 0u;
  var eq = 0u;
  for (var j = lo; j < hi; j++) { let k = key(sc[j]); gt += select(0u, 1u, k > prefix); eq += select(0u, 1u, k == prefix); }
  let eb = excl(eq, lid).x;
  let take = min(eq, select(0u, kk - eb, kk > eb));
  let pos = excl(gt + take, lid);
  var o = pos.x;
  var e = eb;
  for (var j = lo; j < hi; j++) {
    let k = key(sc[j]);
    var keep = k > prefix;
    if (k == prefix) { keep = e < kk; e++; }
    if (keep) { sel[1u + o] = j; o++; }
  }` : `var cnt = 0u;
  for (var j = lo; j < hi; j++) { cnt += select(0u, 1u, sc[j] >= ${f32(rule.value)}); }
  let pos = excl(cnt, lid);
  var o = pos.x;
  for (var j = lo; j < hi; j++) { if (sc[j] >= ${f32(rule.value)}) { sel[1u + o] = j; o++; } }`}
  let n = pos.y;
  for (var t = lid; t < ${tail}u; t += 256u) { sel[1u + n + t] = ${W}u + t; }
  if (lid == 0u) { sel[0] = n + ${tail}u; atomicAdd(&stats[0], n); }
}`;
}

/**
 * greedy: tok[0] = hist[params.step] = argmax of the logits (the lowest index among equal maxima); bad[0] = 1
 * when a logit is not finite (the session refuses the tokens: broken weights); then params advances to the next token
 * (n, pos, step + 1: no host write between greedy tokens)
 */
export function argmaxWgsl(n: number): string {
  return `${PARAMS}
@group(0) @binding(0) var<storage, read> lg: array<f32>;
@group(0) @binding(1) var<storage, read_write> tok: array<u32>;
@group(0) @binding(2) var<storage, read_write> hist: array<u32>;
@group(0) @binding(3) var<storage, read_write> params: Params;
@group(0) @binding(4) var<storage, read_write> bad: array<atomic<u32>>;
var<workgroup> bv: array<f32, 256>;
var<workgroup> bi: array<u32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
  var v = -3.4e38;
  var k = 0xffffffffu;
  var nf = false;
  for (var j = lid; j < ${n}u; j += 256u) {
    let x = lg[j];
    if ((bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u) { nf = true; } else if (x > v || (k == 0xffffffffu && x == v)) { v = x; k = j; }
  }
  if (nf) { atomicMax(&bad[0], 1u); }
  bv[lid] = v; bi[lid] = k;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid < s) { let ov = bv[lid + s]; let oi = bi[lid + s]; if (ov > bv[lid] || (ov == bv[lid] && oi < bi[lid])) { bv[lid] = ov; bi[lid] = oi; } }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let t = select(bi[0], 0u, bi[0] == 0xffffffffu); tok[0] = t; hist[params.step] = t;
    // the next token's cache slot, position row and step: greedy writes params once, then each token advances them here
    params = Params(params.n + 1u, params.pos + 1u, params.step + 1u, 0u);
  }
}`;
}

/** random float16 weights in [-scale, scale) (a hash of the index and seed), packed two per u32, grid-stride */
export function fillWgsl(): string {
  return `struct F { n: u32, seed: u32, scale: f32, pad: u32 }
@group(0) @binding(0) var<storage, read_write> o: array<u32>;
@group(0) @binding(1) var<uniform> f: F;
fn hash(x: u32) -> u32 { var h = x * 747796405u + 2891336453u; h = ((h >> ((h >> 28u) + 4u)) ^ h) * 277803737u; return (h >> 22u) ^ h; }
fn uni(i: u32) -> f32 { return f32(hash(i ^ hash(f.seed)) >> 8u) / 16777216.0 * 2.0 - 1.0; }
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  for (var i = gid.x; i < f.n; i += nw.x * 256u) { o[i] = pack2x16float(vec2<f32>(uni(2u * i), uni(2u * i + 1u)) * f.scale); }
}`;
}

/** the bandwidth ceiling: dst = src, vec4<u32> per thread, grid-stride */
export function copyWgsl(): string {
  return `@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let n = arrayLength(&src);
  for (var i = gid.x; i < n; i += nw.x * 256u) { dst[i] = src[i]; }
}`;
}
