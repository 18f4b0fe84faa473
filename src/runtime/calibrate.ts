/**
 * Thresholds of the input-threshold sites (TEAL, WINA) and of the gate threshold (CATS), calibrated per layer and
 * site: the decode runtime runs the calibration text densely and each site's input vector is folded into a
 * streaming log-scale histogram of its scores (|x_i|; WINA: |x_i| · ‖W[:, i]‖; gate: |act(gate)|). A sparsity s is
 * the threshold below which a share s of the calibration scores lie. Memory is fixed (one histogram per layer,
 * site and score, never the activations themselves).
 */
import type { Model } from '../model/model.js';
import { actScalar } from '../arch/traits.js';
import { DecodeSession, denseModes, rowNorms, type InputSite, type SiteName } from './decoder.js';

const SHIFT = 17; // bins: the top 15 bits of a float32 (sign 0, 8 exponent, 6 mantissa bits: 64 bins per octave)
const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
const lowerEdge = (b: number) => { u32[0] = b << SHIFT; return f32[0]!; };

/** a streaming histogram of non-negative scores in float32 bins (64 per octave, linear within), exact zeros counted apart */
export class LogHistogram {
  zeros = 0;
  total = 0;
  readonly counts = new Float64Array(1 << (31 - SHIFT));
  add(v: number): void {
    if (!(v >= 0) || v === Infinity) throw new Error(`LogHistogram: score ${v} is not a finite non-negative number`);
    this.total++;
    f32[0] = v;
    const b = u32[0]! >>> SHIFT;
    if (b === 0) this.zeros++; // 0 (and float32 values below 2^-126 · 1.02)
    else this.counts[b]!++;
  }
  /** the score below which a share s in [0, 1) of the values lie (0: zeros alone reach s), interpolated within its bin */
  quantile(s: number): number {
    if (!(s >= 0 && s < 1)) throw new Error(`LogHistogram.quantile: ${s} is not in [0, 1)`);
    if (!this.total) throw new Error('LogHistogram.quantile: no values');
    const target = s * this.total;
    let cum = this.zeros;
    if (target <= cum) return 0;
    for (let b = 1; b < this.counts.length; b++) {
      const n = this.counts[b]!;
      if (n && cum + n >= target) { const lo = lowerEdge(b), hi = lowerEdge(b + 1); return lo + ((hi - lo) * (target - cum)) / n; }
      cum += n;
    }
    return lowerEdge(this.counts.length - 1);
  }
}

/** one layer's histograms: per site the |x| scores and, where the site's weights give column norms, WINA's */
export type LayerCalibration = Partial<Record<SiteName, { abs: LogHistogram; wina: LogHistogram | null }>>;
export interface SiteCalibration { layers: LayerCalibration[]; tokens: number; norms: Partial<Record<InputSite, Float32Array>>[] }

/** the column norms (WINA) of each input site's weights, where they are stored input-major (o and down always are) */
export function siteNorms(model: Model): Partial<Record<InputSite, Float32Array>>[] {
  const w = model.decode!, im = (i: number, n: string) => w.inputMajor.has(`layers.${i}.${n}`);
  return w.layers.map((L, i) => ({
    ...(im(i, 'wq') && im(i, 'wk') && im(i, 'wv') ? { attn: rowNorms([L.q, L.k, L.v]) } : {}),
    o: rowNorms([L.o]),
    ...(im(i, 'up') && (!L.gate || im(i, 'gate')) ? { mlp: rowNorms(L.gate ? [L.up, L.gate] : [L.up]) } : {}),
    down: rowNorms([L.down]),
  }));
}

/**
 * Histograms of every site's scores over `seqs` (each decoded from an empty cache, densely, by the runtime).
 * WINA histograms where the model stores the site's weights input-major.
 */
export function calibrateSites(model: Model, seqs: number[][], o: { wina?: boolean; progress?: (done: number) => void } = {}): SiteCalibration {
  const c = model.config, act = actScalar(c);
  const norms: Partial<Record<InputSite, Float32Array>>[] = o.wina === false ? model.decode!.layers.map(() => ({})) : siteNorms(model);
  const layers: LayerCalibration[] = Array.from({ length: c.layers }, (_, i) => {
    const l: LayerCalibration = {};
    for (const site of ['attn', 'o', 'mlp', 'down'] as const) l[site] = { abs: new LogHistogram(), wina: norms[i]![site] ? new LogHistogram() : null };
    if (c.gated) l.gate = { abs: new LogHistogram(), wina: null };
    return l;
  });
  const observe = (layer: number, site: SiteName, x: Float32Array, n: number) => {
    const h = layers[layer]![site]!, nm = site === 'gate' ? undefined : norms[layer]![site];
    for (let j = 0; j < n; j++) {
      const v = site === 'gate' ? Math.abs(act(x[j]!)) : Math.abs(x[j]!);
      h.abs.add(v);
      if (h.wina) h.wina.add(v * nm![j]!);
    }
  };
  let tokens = 0;
  seqs.forEach((seq, k) => {
    const s = new DecodeSession(model, { ...denseModes(c.layers), observe }, 1);
    try { for (const id of seq) s.step([id]); } finally { s.dispose(); }
    tokens += seq.length;
    o.progress?.(k + 1);
  });
  return { layers, tokens, norms };
}

/** the threshold of sparsity s at a layer's site (score: |x| or WINA) */
export function thresholdAt(cal: SiteCalibration, layer: number, site: SiteName, s: number, wina = false): number {
  const h = cal.layers[layer]?.[site];
  if (!h) throw new Error(`calibration: layer ${layer} has no ${site} site`);
  const hist = wina ? h.wina : h.abs;
  if (!hist) throw new Error(`calibration: layer ${layer} ${site} has no WINA scores (its weights are not stored input-major)`);
  return hist.quantile(s);
}
