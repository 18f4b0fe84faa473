/**
 * WGSL compute shaders of the GPU decode runtime, as source generators: each shape / flag set is one pipeline
 * (cached by its source in the session). Conventions:
 *   - weights: float16 packed two per u32 (unpack2x16float: core WGSL, so no `shader-f16` needed), rows of `cols`
 *     values read as vec4<u32> units of 8; cols % 8 == 0; float32 accumulation;
 *   - a selection `sel`: u32 [count, id0, id1, ...]; with a group size G the rows are id * G + (0..G) (a head's hd
 *     rows of q / k / v); `sub` groups at its end are not counted (the K / V groups appended to the heads' list);
 *   - vectors are float32; `params` is the step's uniform (cache slot n, learned position row, step index).
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
}

/**
 * y = W x over selected rows / columns: a workgroup of 256 threads handles 8 rows, 32 lanes per row, each lane
 * reading vec4<u32> (8 float16) units strided by 32 (4 in flight), then a shared-memory sum per row.
 */
export function matvecWgsl(s: MatvecSpec): string {
  const U = s.cols / 8;
  const b: string[] = ['@group(0) @binding(0) var<storage, read> W: array<vec4<u32>>;', '@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;',
    '@group(0) @binding(2) var<storage, read_write> outv: array<f32>;'];
  if (s.rowGather || s.colGather) b.push('@group(0) @binding(3) var<storage, read> sel: array<u32>;');
  if (s.bias) b.push('@group(0) @binding(4) var<storage, read> bias: array<f32>;');
  if (s.gated) b.push('@group(0) @binding(5) var<storage, read> W2: array<vec4<u32>>;');
  if (s.gated && s.gateBias) b.push('@group(0) @binding(6) var<storage, read> bias2: array<f32>;');
  if (s.zero) b.push('@group(0) @binding(7) var<storage, read_write> zc: array<u32>;');
  const rg = s.rowGather, cg = s.colGather;
  const count = rg ? `(sel[0] - ${rg.sub}u) * ${rg.G}u` : `${s.rows}u`;
  const row = rg ? `sel[1u + i / ${rg.G}u] * ${rg.G}u + i % ${rg.G}u` : 'i';
  const GU = cg ? cg.G / 8 : 0;
  const units = cg ? `(sel[0] - ${cg.sub}u) * ${GU}u` : `${U}u`;
  const col = (u: string) => (cg ? `(sel[1u + (${u}) / ${GU}u] * ${GU}u + (${u}) % ${GU}u)` : u);
  const load = (k: number) => `{ let u = u0 + ${k * 32}u; let c = ${col('u')}; let xa = x[2u * u]; let xb = x[2u * u + 1u]; acc += dot8(W[base + c], xa, xb);${s.gated ? ' acc2 += dot8(W2[base + c], xa, xb);' : ''} }`;
  const v1 = `s1${s.bias ? ' + bias[row]' : ''}`;
  const res = s.gated ? `act(s2${s.gateBias ? ' + bias2[row]' : ''}) * (${v1})` : s.act ? `act(${v1})` : v1;
  return `${b.join('\n')}
${DOT8}
${actFn(s.act, s.actThreshold)}
var<workgroup> red: array<f32, 256>;
${s.gated ? 'var<workgroup> red2: array<f32, 256>;' : ''}
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
  if (i < count) {
    row = ${row};
    let base = row * ${U}u;
    var u0 = lane;
    for (; u0 + 96u < units; u0 += 128u) { ${[0, 1, 2, 3].map(load).join(' ')} }
    for (; u0 < units; u0 += 32u) { ${load(0)} }
  }
  red[lid] = acc;
  ${s.gated ? 'red2[lid] = acc2;' : ''}
  workgroupBarrier();
  if (lane == 0u && i < count) {
    var s1 = 0.0;
    var s2 = 0.0;
    for (var k = 0u; k < 32u; k++) { s1 += red[lid + k];${s.gated ? ' s2 += red2[lid + k];' : ''} }
    ${s.resid ? `outv[row] = outv[row] + ${res};` : `outv[i] = ${res};`}
  }
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

/**
 * x[j] += (bias[j]) + Σ_c part[c, j]: a workgroup per 32 vec4 columns, 8 threads per column each summing every
 * 8th chunk, then a shared-memory sum of the 8
 */
export function reduceWgsl(d: number, chunks: number, bias: boolean): string {
  const D4 = d / 4;
  return `@group(0) @binding(0) var<storage, read_write> xv: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> part: array<vec4<f32>>;
${bias ? '@group(0) @binding(2) var<storage, read> bias: array<vec4<f32>>;' : ''}
var<workgroup> acc: array<vec4<f32>, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let cg = lid / 32u;
  let c4 = wid.x * 32u + lid % 32u;
  var s = vec4<f32>(0.0);
  if (c4 < ${D4}u) { for (var c = cg; c < ${chunks}u; c += 8u) { s += part[c * ${D4}u + c4]; } }
  acc[lid] = s;
  workgroupBarrier();
  if (cg == 0u && c4 < ${D4}u) {
    var t = ${bias ? 'bias[c4]' : 'vec4<f32>(0.0)'};
    for (var k = 0u; k < 8u; k++) { t += acc[lid + 32u * k]; }
    xv[c4] = xv[c4] + t;
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
var<workgroup> red: array<f32, 256>;
fn total(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) { if (lid < s) { red[lid] += red[lid + s]; } workgroupBarrier(); }
  let t = red[0];
  workgroupBarrier();
  return t;
}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
  var xs: array<vec4<f32>, ${NV}>;
  var s = 0.0;
  for (var k = 0u; k < ${NV}u; k++) { let j = lid + 256u * k; if (j < ${D4}u) { xs[k] = src[j]; s += dot(xs[k], vec4<f32>(1.0)); } }
  ${kind === 'layernorm' ? `let m = total(s, lid) / ${d}.0;` : 'let m = 0.0;'}
  var q = 0.0;
  for (var k = 0u; k < ${NV}u; k++) { let j = lid + 256u * k; if (j < ${D4}u) { let t = xs[k] - m; q += dot(t, t); } }
  let inv = inverseSqrt(total(q, lid) / ${d}.0 + ${f32(eps)});
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
@group(0) @binding(3) var<uniform> params: Params;
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

export interface AttnSpec { heads: number; kvHeads: number; hd: number; cap: number; ropeDim: number; scale: number }

/**
 * Attention of the selected heads, after the q / k / v matvec (compact: the selected heads' q, then every kv
 * head's k, then v): a workgroup per selected head ropes its q and its kv head's new k (rotate_half over the first
 * ropeDim; this position's cos / sin from the host), takes softmax(q K^T · scale) over the cached positions and
 * the new one (scores in shared memory), and the V-weighted sum (8 threads per vec4 of hd, then a shared sum).
 * Workgroup k < KV also writes kv head k's new K and V to cache slot n (nobody reads slot n from the cache in this
 * dispatch: each workgroup uses its own copy), so the dispatch is max(selected, KV) workgroups.
 */
export function attentionWgsl(s: AttnSpec): string {
  const hd = s.hd, HD4 = hd / 4, KV = s.kvHeads, G = s.heads / KV, h2 = s.ropeDim / 2, TG = Math.max(1, Math.floor(256 / HD4));
  const rot = h2 > 0
    ? `fn rot(o: u32, j: u32) -> f32 {
  if (j >= ${2 * h2}u) { return qkv[o + j]; }
  if (j < ${h2}u) { return qkv[o + j] * cs[j] - qkv[o + j + ${h2}u] * cs[${h2}u + j]; }
  let i = j - ${h2}u;
  return qkv[o + j] * cs[i] + qkv[o + i] * cs[${h2}u + i];
}`
    : 'fn rot(o: u32, j: u32) -> f32 { return qkv[o + j]; }';
  return `${PARAMS}
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> sel: array<u32>;
@group(0) @binding(2) var<storage, read_write> K: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> V: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> ctx: array<vec4<f32>>;
@group(0) @binding(5) var<uniform> params: Params;
${h2 > 0 ? '@group(0) @binding(6) var<storage, read> cs: array<f32>;' : ''}
var<workgroup> qs: array<vec4<f32>, ${HD4}>;
var<workgroup> kc: array<vec4<f32>, ${HD4}>;
var<workgroup> vc: array<vec4<f32>, ${HD4}>;
var<workgroup> ps: array<f32, ${s.cap}>;
var<workgroup> red: array<f32, 256>;
var<workgroup> acc: array<vec4<f32>, 256>;
var<workgroup> wn: u32;
${rot}
fn rot4(o: u32, j4: u32) -> vec4<f32> { return vec4<f32>(rot(o, 4u * j4), rot(o, 4u * j4 + 1u), rot(o, 4u * j4 + 2u), rot(o, 4u * j4 + 3u)); }
fn raw4(o: u32, j4: u32) -> vec4<f32> { return vec4<f32>(qkv[o + 4u * j4], qkv[o + 4u * j4 + 1u], qkv[o + 4u * j4 + 2u], qkv[o + 4u * j4 + 3u]); }
fn wred(v: f32, lid: u32, isMax: bool) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = select(red[lid] + red[lid + s], max(red[lid], red[lid + s]), isMax); }
    workgroupBarrier();
  }
  let t = red[0];
  workgroupBarrier();
  return t;
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  if (lid == 0u) { wn = sel[0] - ${2 * KV}u; }
  let nsel = workgroupUniformLoad(&wn);
  let w = wid.x;
  let n = params.n;
  if (w < ${KV}u) {
    for (var j = lid; j < ${HD4}u; j += 256u) {
      K[(w * ${s.cap}u + n) * ${HD4}u + j] = rot4((nsel + w) * ${hd}u, j);
      V[(w * ${s.cap}u + n) * ${HD4}u + j] = raw4((nsel + ${KV}u + w) * ${hd}u, j);
    }
  }
  if (w >= nsel) { return; }
  let kvh = sel[1u + w] / ${G}u;
  for (var j = lid; j < ${HD4}u; j += 256u) {
    qs[j] = rot4(w * ${hd}u, j);
    kc[j] = rot4((nsel + kvh) * ${hd}u, j);
    vc[j] = raw4((nsel + ${KV}u + kvh) * ${hd}u, j);
  }
  workgroupBarrier();
  let npos = n + 1u;
  var m = -3.0e38;
  for (var t = lid; t < npos; t += 256u) {
    var d = 0.0;
    if (t == n) { for (var j = 0u; j < ${HD4}u; j++) { d += dot(qs[j], kc[j]); } }
    else { let kb = (kvh * ${s.cap}u + t) * ${HD4}u; for (var j = 0u; j < ${HD4}u; j++) { d += dot(qs[j], K[kb + j]); } }
    d *= ${f32(s.scale)};
    ps[t] = d;
    m = max(m, d);
  }
  m = wred(m, lid, true);
  var l = 0.0;
  for (var t = lid; t < npos; t += 256u) { let p = exp(ps[t] - m); ps[t] = p; l += p; }
  l = wred(l, lid, false);
  let tg = lid / ${HD4}u;
  let j4 = lid % ${HD4}u;
  var a = vec4<f32>(0.0);
  if (tg < ${TG}u) {
    for (var t = tg; t < npos; t += ${TG}u) { if (t == n) { a += ps[t] * vc[j4]; } else { a += ps[t] * V[(kvh * ${s.cap}u + t) * ${HD4}u + j4]; } }
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
 * greedy: tok[0] = hist[params.step] = argmax of the logits (the lowest index among equal maxima); bad[0] = 1
 * when a logit is not finite (the session refuses the tokens: broken weights)
 */
export function argmaxWgsl(n: number): string {
  return `${PARAMS}
@group(0) @binding(0) var<storage, read> lg: array<f32>;
@group(0) @binding(1) var<storage, read_write> tok: array<u32>;
@group(0) @binding(2) var<storage, read_write> hist: array<u32>;
@group(0) @binding(3) var<uniform> params: Params;
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
  if (lid == 0u) { let t = select(bi[0], 0u, bi[0] == 0xffffffffu); tok[0] = t; hist[params.step] = t; }
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
