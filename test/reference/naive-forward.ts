/**
 * Independent float64 reference of the Hugging Face transformers (5.x) forward pass of OPTForCausalLM and
 * LlamaForCausalLM, for one sequence, written from the math with plain loops over Float64Array (no tfjs, nothing
 * from src/). Tests use it to check the tfjs forward pass on random tiny configs.
 *
 * HF semantics followed (see the notes at naiveForward for the captured tensors):
 *
 * OPT (weights under `model.decoder.`):
 *  - x0 = project_in(embed_tokens[id]) + embed_positions[pos + 2], pos = cumsum(mask) * mask - 1 (so pads get
 *    pos -1 -> row 1 of the table); project_in exists iff word_embed_proj_dim != hidden_size (no bias).
 *  - pre-LN (do_layer_norm_before = true):  h = x + out_proj(attn(self_attn_layer_norm(x)));
 *                                           y = h + fc2(act(fc1(final_layer_norm(h))))
 *    post-LN (do_layer_norm_before = false): h = self_attn_layer_norm(x + out_proj(attn(x)));
 *                                            y = final_layer_norm(h + fc2(act(fc1(h))))
 *  - q is scaled by head_dim^-0.5 after q_proj (bias included) and before the dot product.
 *  - the decoder-level final_layer_norm exists only when do_layer_norm_before && !_remove_final_layer_norm;
 *    it is followed by project_out (hidden -> word_embed_proj_dim, no bias) when the dims differ.
 *  - lm_head: embed_tokens.weight when tie_word_embeddings (default true), else lm_head.weight. No bias.
 *  - LayerNorm: biased variance, eps 1e-5, affine (weight and bias) unless layer_norm_elementwise_affine = false.
 *
 * Llama (weights under `model.`):
 *  - x0 = embed_tokens[id]
 *  - h = x + o_proj(attn(input_layernorm(x))); y = h + down(silu(gate(n)) * up(n)), n = post_attention_layernorm(h)
 *  - RMSNorm: x / sqrt(mean(x^2) + rms_norm_eps) * weight
 *  - RoPE (rotate_half convention, first half of head_dim paired with the second half) on q and k with
 *    inv_freq[i] = theta^(-2i/head_dim), theta = rope_parameters.rope_theta ?? rope_theta ?? 10000; only the
 *    'default' rope type is supported. Position ids: cumsum(mask) - 1, pads get 1 (as HF generate() computes them).
 *  - attention scores scaled by head_dim^-0.5; GQA: query head h uses kv head floor(h / (heads / kv_heads)).
 *  - attention_bias -> q/k/v/o biases, mlp_bias -> gate/up/down biases.
 *  - final norm model.norm, then lm_head (embed_tokens.weight when tie_word_embeddings (default false for
 *    LlamaConfig), else lm_head.weight).
 *
 * Masking: causal, plus keys with mask 0 are never attended to. A query row with no attendable key (a pad at
 * the left edge) attends uniformly to all keys, as HF's eager path effectively does (all scores = finfo.min);
 * the outputs at padded positions are not meaningful and should not be compared.
 */

export type HFConfig = Record<string, any>;
export interface NaiveTensor { shape: number[]; data: Float64Array }
export type NaiveWeights = Map<string, NaiveTensor>;
export interface NaiveOutput {
  /** [T, vocab] */
  logits: NaiveTensor;
  /**
   * HF output_hidden_states convention, L + 1 entries: [0] = embeddings output (OPT: project_in(embed) + positions;
   * Llama: embed_tokens), [i] = output of layer i-1 for i = 1..L-1, [L] = the final output of the decoder stack,
   * i.e. OPT: project_out(final_layer_norm(out of layer L-1)) (each only where it exists; with post-LN there is no
   * final norm, and with project_out the width is word_embed_proj_dim, not hidden_size); Llama: norm(out of layer L-1).
   * The raw output of the last layer is not in this list (it is xAttn-like data that HF does not return).
   */
  hiddenStates: NaiveTensor[];
  /** residual stream entering layer i, [T, hidden] */
  xAttn: NaiveTensor[];
  /** residual stream entering the MLP block of layer i (after the attention residual add, and for post-LN OPT
   * after self_attn_layer_norm, i.e. what the MLP block receives as its residual), [T, hidden] */
  xMlp: NaiveTensor[];
  /** input of the down projection (OPT fc2: act(fc1(...)); Llama down_proj: silu(gate) * up), [T, ffn] */
  mlpAct: NaiveTensor[];
  /** input of the attention output projection, heads concatenated, [T, heads * head_dim] */
  attnContext: NaiveTensor[];
}

// ---------------------------------------------------------------------------------------------------- helpers

function get(w: NaiveWeights, name: string): NaiveTensor {
  const t = w.get(name);
  if (!t) throw new Error(`naiveForward: missing weight ${name}`);
  return t;
}
function opt(w: NaiveWeights, name: string): NaiveTensor | undefined {
  return w.get(name);
}

function tensor(shape: number[], data?: Float64Array): NaiveTensor {
  return { shape, data: data ?? new Float64Array(shape.reduce((a, b) => a * b, 1)) };
}

/** y[T, out] = x[T, in] W^T + b, W: [out, in] (nn.Linear layout) */
function linear(x: NaiveTensor, W: NaiveTensor, b?: NaiveTensor): NaiveTensor {
  const [T, din] = x.shape as [number, number];
  const [dout, win] = W.shape as [number, number];
  if (win !== din) throw new Error(`naiveForward: linear in-dim ${din} vs weight [${W.shape}]`);
  if (b && (b.shape.length !== 1 || b.shape[0] !== dout)) throw new Error(`naiveForward: bias [${b.shape}] for out-dim ${dout}`);
  const y = tensor([T, dout]);
  const xd = x.data, wd = W.data, yd = y.data;
  for (let t = 0; t < T; t++) {
    const xo = t * din;
    for (let o = 0; o < dout; o++) {
      const wo = o * din;
      let s = b ? b.data[o]! : 0;
      for (let i = 0; i < din; i++) s += xd[xo + i]! * wd[wo + i]!;
      yd[t * dout + o] = s;
    }
  }
  return y;
}

function add(a: NaiveTensor, b: NaiveTensor): NaiveTensor {
  if (a.data.length !== b.data.length) throw new Error('naiveForward: add shape mismatch');
  const y = tensor([...a.shape]);
  for (let i = 0; i < a.data.length; i++) y.data[i] = a.data[i]! + b.data[i]!;
  return y;
}

function layerNorm(x: NaiveTensor, weight: NaiveTensor | undefined, bias: NaiveTensor | undefined, eps: number): NaiveTensor {
  const [T, d] = x.shape as [number, number];
  const y = tensor([T, d]);
  for (let t = 0; t < T; t++) {
    let mean = 0;
    for (let i = 0; i < d; i++) mean += x.data[t * d + i]!;
    mean /= d;
    let v = 0;
    for (let i = 0; i < d; i++) { const c = x.data[t * d + i]! - mean; v += c * c; }
    v /= d;
    const r = 1 / Math.sqrt(v + eps);
    for (let i = 0; i < d; i++) {
      let z = (x.data[t * d + i]! - mean) * r;
      if (weight) z *= weight.data[i]!;
      if (bias) z += bias.data[i]!;
      y.data[t * d + i] = z;
    }
  }
  return y;
}

function rmsNorm(x: NaiveTensor, weight: NaiveTensor, eps: number): NaiveTensor {
  const [T, d] = x.shape as [number, number];
  const y = tensor([T, d]);
  for (let t = 0; t < T; t++) {
    let ms = 0;
    for (let i = 0; i < d; i++) ms += x.data[t * d + i]! ** 2;
    ms /= d;
    const r = 1 / Math.sqrt(ms + eps);
    for (let i = 0; i < d; i++) y.data[t * d + i] = x.data[t * d + i]! * r * weight.data[i]!;
  }
  return y;
}

function activation(name: string): (v: number) => number {
  switch (name) {
    case 'relu': return (v) => (v > 0 ? v : 0);
    case 'silu': case 'swish': return (v) => v / (1 + Math.exp(-v));
    case 'gelu': return (v) => 0.5 * v * (1 + erf(v / Math.SQRT2));
    case 'gelu_new': case 'gelu_pytorch_tanh':
      return (v) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
    default: throw new Error(`naiveForward: unsupported activation ${name}`);
  }
}

/** erf, Abramowitz-Stegun 7.1.26 is too coarse for a reference: use a series / continued fraction. */
function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 3) {
    // Taylor series: erf(x) = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
    let term = ax, sum = ax;
    for (let n = 1; n < 100; n++) {
      term *= -ax * ax / n;
      const c = term / (2 * n + 1);
      sum += c;
      if (Math.abs(c) < 1e-17 * Math.abs(sum)) break;
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // continued fraction for erfc
  let f = 0;
  for (let n = 60; n >= 1; n--) f = (n / 2) / (ax + f);
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / (ax + f);
  return Math.sign(x) * (1 - erfc);
}

function mapInPlace(x: NaiveTensor, f: (v: number) => number): NaiveTensor {
  for (let i = 0; i < x.data.length; i++) x.data[i] = f(x.data[i]!);
  return x;
}

/** Position ids as cumsum(mask) * mask - 1 (pads: -1). */
function cumsumPositions(mask: number[]): number[] {
  let c = 0;
  return mask.map((m) => { c += m ? 1 : 0; return m ? c - 1 : -1; });
}

/**
 * Multi-head attention for one sequence. q: [T, H*hd], k/v: [T, KV*hd] (q already scaled). Returns the context
 * [T, H*hd] (heads concatenated).
 */
function attention(q: NaiveTensor, k: NaiveTensor, v: NaiveTensor, H: number, KV: number, hd: number, mask: number[], scale: number): NaiveTensor {
  const T = q.shape[0]!;
  if (H % KV !== 0) throw new Error(`naiveForward: ${H} heads not divisible by ${KV} kv heads`);
  const group = H / KV;
  const ctx = tensor([T, H * hd]);
  const scores = new Float64Array(T);
  const allowed = new Uint8Array(T);
  for (let h = 0; h < H; h++) {
    const kvh = Math.floor(h / group);
    for (let i = 0; i < T; i++) {
      let any = false;
      for (let j = 0; j < T; j++) { allowed[j] = j <= i && mask[j] ? 1 : 0; if (allowed[j]) any = true; }
      if (!any) allowed.fill(1); // fully masked row: uniform over all keys (HF eager with finfo.min everywhere)
      let max = -Infinity;
      for (let j = 0; j < T; j++) {
        if (!allowed[j]) continue;
        let s = 0;
        if (any) for (let e = 0; e < hd; e++) s += q.data[i * H * hd + h * hd + e]! * k.data[j * KV * hd + kvh * hd + e]!;
        s *= scale;
        scores[j] = s;
        if (s > max) max = s;
      }
      let z = 0;
      for (let j = 0; j < T; j++) { if (allowed[j]) { scores[j] = Math.exp(scores[j]! - max); z += scores[j]!; } }
      for (let j = 0; j < T; j++) {
        if (!allowed[j]) continue;
        const p = scores[j]! / z;
        for (let e = 0; e < hd; e++) ctx.data[i * H * hd + h * hd + e] += p * v.data[j * KV * hd + kvh * hd + e]!;
      }
    }
  }
  return ctx;
}

function clone(x: NaiveTensor): NaiveTensor {
  return { shape: [...x.shape], data: new Float64Array(x.data) };
}

function lmHead(config: HFConfig, w: NaiveWeights, x: NaiveTensor, embedName: string, tiedDefault: boolean): NaiveTensor {
  // HF ties lm_head to the input embeddings when tie_word_embeddings (OPTConfig default true, LlamaConfig default
  // false); lm_head has no bias.
  const tied = config.tie_word_embeddings ?? tiedDefault;
  return linear(x, get(w, tied ? embedName : 'lm_head.weight'));
}

// ---------------------------------------------------------------------------------------------------- OPT

function optForward(c: HFConfig, w: NaiveWeights, ids: number[], mask: number[]): NaiveOutput {
  const p = 'model.decoder.';
  const d = c.hidden_size as number;
  const proj = (c.word_embed_proj_dim ?? d) as number;
  const H = c.num_attention_heads as number;
  const L = c.num_hidden_layers as number;
  if (d % H !== 0) throw new Error('naiveForward: hidden_size not divisible by num_attention_heads');
  const hd = d / H;
  const preLN = c.do_layer_norm_before ?? true;
  const act = activation(c.activation_function ?? 'relu');
  const eps = 1e-5;
  const T = ids.length;
  const ln = (x: NaiveTensor, name: string) => layerNorm(x, opt(w, name + '.weight'), opt(w, name + '.bias'), eps);
  const lin = (x: NaiveTensor, name: string) => linear(x, get(w, name + '.weight'), opt(w, name + '.bias'));

  // embeddings
  const E = get(w, p + 'embed_tokens.weight');
  if (E.shape[1] !== proj) throw new Error(`naiveForward: embed_tokens [${E.shape}] vs word_embed_proj_dim ${proj}`);
  let emb = tensor([T, proj]);
  for (let t = 0; t < T; t++) {
    const id = ids[t]!;
    if (!(id >= 0 && id < E.shape[0]!)) throw new Error(`naiveForward: token id ${id} out of range`);
    emb.data.set(E.data.subarray(id * proj, (id + 1) * proj), t * proj);
  }
  if (proj !== d) emb = linear(emb, get(w, p + 'project_in.weight'));
  const P = get(w, p + 'embed_positions.weight');
  const pos = cumsumPositions(mask);
  let x = tensor([T, d]);
  for (let t = 0; t < T; t++) {
    const row = pos[t]! + 2;
    if (row >= P.shape[0]!) throw new Error(`naiveForward: position ${pos[t]} beyond max_position_embeddings`);
    for (let i = 0; i < d; i++) x.data[t * d + i] = emb.data[t * d + i]! + P.data[row * d + i]!;
  }

  const out: NaiveOutput = { logits: tensor([0]), hiddenStates: [], xAttn: [], xMlp: [], mlpAct: [], attnContext: [] };
  for (let l = 0; l < L; l++) {
    const lp = `${p}layers.${l}.`;
    out.hiddenStates.push(clone(x));
    out.xAttn.push(clone(x));
    // attention block
    const a = preLN ? ln(x, lp + 'self_attn_layer_norm') : x;
    const q = mapInPlace(lin(a, lp + 'self_attn.q_proj'), (v) => v * hd ** -0.5);
    const k = lin(a, lp + 'self_attn.k_proj');
    const v = lin(a, lp + 'self_attn.v_proj');
    const ctx = attention(q, k, v, H, H, hd, mask, 1);
    out.attnContext.push(ctx);
    let h = add(x, lin(ctx, lp + 'self_attn.out_proj'));
    if (!preLN) h = ln(h, lp + 'self_attn_layer_norm');
    out.xMlp.push(clone(h));
    // MLP block
    const m = preLN ? ln(h, lp + 'final_layer_norm') : h;
    const f = mapInPlace(lin(m, lp + 'fc1'), act);
    out.mlpAct.push(f);
    x = add(h, lin(f, lp + 'fc2'));
    if (!preLN) x = ln(x, lp + 'final_layer_norm');
  }
  if (preLN && !c._remove_final_layer_norm) x = ln(x, p + 'final_layer_norm');
  if (proj !== d) x = linear(x, get(w, p + 'project_out.weight'));
  out.hiddenStates.push(clone(x));
  out.logits = lmHead(c, w, x, p + 'embed_tokens.weight', true);
  return out;
}

// ---------------------------------------------------------------------------------------------------- Llama

function llamaForward(c: HFConfig, w: NaiveWeights, ids: number[], mask: number[]): NaiveOutput {
  const p = 'model.';
  const d = c.hidden_size as number;
  const H = c.num_attention_heads as number;
  const KV = (c.num_key_value_heads ?? H) as number;
  const hd = (c.head_dim ?? d / H) as number;
  const L = c.num_hidden_layers as number;
  const eps = (c.rms_norm_eps ?? 1e-6) as number;
  const ropeType = c.rope_parameters?.rope_type ?? c.rope_scaling?.rope_type ?? c.rope_scaling?.type ?? 'default';
  if (ropeType !== 'default') throw new Error(`naiveForward: rope type ${ropeType} not supported`);
  if (c.partial_rotary_factor !== undefined && c.partial_rotary_factor !== 1) throw new Error('naiveForward: partial_rotary_factor not supported');
  const theta = (c.rope_parameters?.rope_theta ?? c.rope_theta ?? 10000) as number;
  const act = activation(c.hidden_act ?? 'silu');
  const T = ids.length;
  const lin = (x: NaiveTensor, name: string) => linear(x, get(w, name + '.weight'), opt(w, name + '.bias'));

  // positions: cumsum(mask) - 1, pads -> 1 (HF generate())
  const pos = cumsumPositions(mask).map((q) => (q < 0 ? 1 : q));
  const half = hd / 2;
  if (hd % 2 !== 0) throw new Error('naiveForward: odd head_dim');
  const cos = new Float64Array(T * half), sin = new Float64Array(T * half);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < half; i++) {
      const invFreq = 1 / theta ** ((2 * i) / hd);
      const ang = pos[t]! * invFreq;
      cos[t * half + i] = Math.cos(ang);
      sin[t * half + i] = Math.sin(ang);
    }
  }
  /** rotate_half RoPE in place on x: [T, nh*hd] */
  const rope = (x: NaiveTensor, nh: number) => {
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < nh; h++) {
        const o = t * nh * hd + h * hd;
        for (let i = 0; i < half; i++) {
          const a = x.data[o + i]!, b = x.data[o + i + half]!;
          const cs = cos[t * half + i]!, sn = sin[t * half + i]!;
          x.data[o + i] = a * cs - b * sn;
          x.data[o + i + half] = b * cs + a * sn;
        }
      }
    }
    return x;
  };

  const E = get(w, p + 'embed_tokens.weight');
  let x = tensor([T, d]);
  for (let t = 0; t < T; t++) {
    const id = ids[t]!;
    if (!(id >= 0 && id < E.shape[0]!)) throw new Error(`naiveForward: token id ${id} out of range`);
    x.data.set(E.data.subarray(id * d, (id + 1) * d), t * d);
  }

  const out: NaiveOutput = { logits: tensor([0]), hiddenStates: [], xAttn: [], xMlp: [], mlpAct: [], attnContext: [] };
  for (let l = 0; l < L; l++) {
    const lp = `${p}layers.${l}.`;
    out.hiddenStates.push(clone(x));
    out.xAttn.push(clone(x));
    const a = rmsNorm(x, get(w, lp + 'input_layernorm.weight'), eps);
    const q = rope(lin(a, lp + 'self_attn.q_proj'), H);
    const k = rope(lin(a, lp + 'self_attn.k_proj'), KV);
    const v = lin(a, lp + 'self_attn.v_proj');
    const ctx = attention(q, k, v, H, KV, hd, mask, hd ** -0.5);
    out.attnContext.push(ctx);
    const h = add(x, lin(ctx, lp + 'self_attn.o_proj'));
    out.xMlp.push(clone(h));
    const n = rmsNorm(h, get(w, lp + 'post_attention_layernorm.weight'), eps);
    const g = mapInPlace(lin(n, lp + 'mlp.gate_proj'), act);
    const u = lin(n, lp + 'mlp.up_proj');
    for (let i = 0; i < g.data.length; i++) g.data[i] = g.data[i]! * u.data[i]!;
    out.mlpAct.push(g);
    x = add(h, lin(g, lp + 'mlp.down_proj'));
  }
  x = rmsNorm(x, get(w, p + 'norm.weight'), eps);
  out.hiddenStates.push(clone(x));
  out.logits = lmHead(c, w, x, p + 'embed_tokens.weight', false);
  return out;
}

/**
 * One sequence through OPTForCausalLM / LlamaForCausalLM in float64. `mask` optional: 1 = real token,
 * 0 = padding (any position); padded positions are neither attended to nor used for position ids. Outputs at
 * padded positions are not meaningful.
 */
export function naiveForward(config: HFConfig, w: NaiveWeights, ids: number[], mask?: number[]): NaiveOutput {
  const m = mask ?? ids.map(() => 1);
  if (m.length !== ids.length) throw new Error(`naiveForward: mask length ${m.length} != ${ids.length} ids`);
  switch (config.model_type) {
    case 'opt': return optForward(config, w, ids, m);
    case 'llama': return llamaForward(config, w, ids, m);
    default: throw new Error(`naiveForward: unsupported model_type ${config.model_type}`);
  }
}

/** Load float weights into NaiveWeights from an already-read map of name -> (shape, Float32Array). */
export function toNaiveWeights(entries: Iterable<[string, { shape: number[]; data: ArrayLike<number> }]>): NaiveWeights {
  const w: NaiveWeights = new Map();
  for (const [name, t] of entries) w.set(name, { shape: [...t.shape], data: Float64Array.from(t.data) });
  return w;
}

/** Relative Frobenius error ||a - b|| / ||b|| over `n` values starting at the given offsets (defaults: all). */
export function relFrobenius(a: ArrayLike<number>, b: ArrayLike<number>, aOff = 0, bOff = 0, n = Math.min(a.length - aOff, b.length - bOff)): number {
  let num = 0, den = 0;
  for (let i = 0; i < n; i++) {
    const x = a[aOff + i]!, y = b[bOff + i]!;
    num += (x - y) ** 2;
    den += y * y;
  }
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
}
