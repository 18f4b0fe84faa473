/**
 * Selection rules and their metrics. A rule is what the runtime uses: top-k per token on the predictor's logits,
 * or a threshold on the logits. Recall/precision/density are micro-averaged over tokens.
 *
 * RankHistogram: for each token, the rank (0-based, by descending logit) of every true positive. recall(k) is then
 * a prefix sum, so it is monotone in k by construction, and the smallest k reaching a target recall is exact.
 */
export type SelectionRule = { kind: 'topk'; k: number } | { kind: 'threshold'; value: number };

export class RankHistogram {
  readonly hist: Float64Array; // hist[r] = number of true positives at rank r
  /** with weights: whist[r] = summed weight of the true positives at rank r (magnitude-weighted recall) */
  readonly whist: Float64Array | null;
  tokens = 0;
  positives = 0;
  weight = 0;
  constructor(readonly width: number, weighted = false) { this.hist = new Float64Array(width); this.whist = weighted ? new Float64Array(width) : null; }

  /**
   * logits [n, width], labels 0/1 [n, width]. A positive's rank is the number of logits in its row strictly
   * greater than its own (found by binary search in the natively sorted row), so ties share the better rank.
   */
  add(logits: Float32Array, labels: Uint8Array, n: number, weights?: Float32Array): void {
    const W = this.width;
    const sorted = new Float32Array(W);
    for (let t = 0; t < n; t++) {
      const base = t * W;
      sorted.set(logits.subarray(base, base + W));
      sorted.sort(); // ascending, native
      for (let j = 0; j < W; j++) {
        if (!labels[base + j]) continue;
        const v = logits[base + j]!;
        // first index with sorted[i] > v
        let lo = 0, hi = W;
        while (lo < hi) { const mid = (lo + hi) >> 1; if (sorted[mid]! > v) hi = mid; else lo = mid + 1; }
        this.hist[W - lo]!++;
        this.positives++;
        if (this.whist && weights) { this.whist[W - lo]! += weights[base + j]!; this.weight += weights[base + j]!; }
      }
      this.tokens++;
    }
  }

  /** Add another histogram's counts (the same width; a data-parallel part, merged in a fixed order). */
  merge(o: Pick<RankHistogram, 'hist' | 'whist' | 'tokens' | 'positives' | 'weight'>): void {
    for (let r = 0; r < this.width; r++) this.hist[r]! += o.hist[r]!;
    if (this.whist && o.whist) for (let r = 0; r < this.width; r++) this.whist[r]! += o.whist[r]!;
    this.tokens += o.tokens; this.positives += o.positives; this.weight += o.weight;
  }

  /** recall of top-k, for k = 0..width */
  recallCurve(): Float64Array {
    const c = new Float64Array(this.width + 1);
    for (let k = 1; k <= this.width; k++) c[k] = c[k - 1]! + this.hist[k - 1]!;
    for (let k = 0; k <= this.width; k++) c[k] = this.positives ? c[k]! / this.positives : 1;
    return c;
  }

  /** smallest k with recall >= target */
  kForRecall(target: number): number {
    const c = this.recallCurve();
    for (let k = 0; k <= this.width; k++) if (c[k]! >= target - 1e-12) return k;
    return this.width;
  }

  /** weighted recall of top-k, for k = 0..width */
  weightedRecallCurve(): Float64Array {
    const c = new Float64Array(this.width + 1);
    if (!this.whist) return c.fill(NaN);
    for (let k = 1; k <= this.width; k++) c[k] = c[k - 1]! + this.whist[k - 1]!;
    for (let k = 0; k <= this.width; k++) c[k] = this.weight ? c[k]! / this.weight : 1;
    return c;
  }

  weightedRecallAtK(k: number): number { return this.weightedRecallCurve()[k]!; }

  /** smallest k with weighted recall >= target */
  kForWeightedRecall(target: number): number {
    const c = this.weightedRecallCurve();
    for (let k = 0; k <= this.width; k++) if (c[k]! >= target - 1e-12) return k;
    return this.width;
  }

  trueDensity(): number { return this.tokens ? this.positives / (this.tokens * this.width) : 0; }

  metricsAtK(k: number): Metrics {
    const selected = k * this.tokens;
    // positives whose score ties the k-th one share the better rank, so a tie across the boundary can count one more
    // positive than top-k really keeps (seen: 1 in 900k); capped at what is selected, so precision stays <= 1
    const tp = Math.min(this.recallCurve()[k]! * this.positives, selected);
    return finish(tp, selected, this.positives, this.tokens * this.width);
  }
}

export interface Metrics { recall: number; precision: number; f1: number; predictedDensity: number; trueDensity: number }

function finish(tp: number, selected: number, positives: number, total: number): Metrics {
  const recall = positives ? tp / positives : 1;
  const precision = selected ? tp / selected : 1;
  return { recall, precision, f1: recall + precision ? (2 * recall * precision) / (recall + precision) : 0, predictedDensity: total ? selected / total : 0,
      trueDensity: total ? positives / total : 0 };
}

/**
 * Threshold calibration: the largest threshold whose recall reaches the target (positives' logits quantile). With
 * `weights` (one per positive), the recall counted is the weighted one.
 */
export function thresholdForRecall(positiveLogits: Float32Array, target: number, weights?: Float32Array): number {
  if (positiveLogits.length === 0) return Infinity;
  if (weights) {
    const order = Array.from(positiveLogits.keys()).sort((a, b) => positiveLogits[b]! - positiveLogits[a]!);
    let total = 0;
    for (const w of weights) total += w;
    let acc = 0;
    for (const i of order) { acc += weights[i]!; if (acc >= target * total - 1e-9 * total) return positiveLogits[i]!; }
    return positiveLogits[order[order.length - 1]!]!;
  }
  // keep ceil(target * P) positives: threshold = the value at index P - ceil(target*P) in ascending order
  const keep = Math.ceil(target * positiveLogits.length - 1e-9);
  return kthSmallest(positiveLogits, Math.max(0, positiveLogits.length - keep));
}

/**
 * The value at index k of `a` sorted ascending (as Float32Array.prototype.sort orders it: -0 before +0, NaN last),
 * by selection in O(n) instead of a sort (a sort of 650k positives' logits took 175 ms).
 */
export function kthSmallest(a: Float32Array, k: number): number {
  const n = a.length;
  let nan = 0;
  for (let i = 0; i < n; i++) if (a[i] !== a[i]) nan++;
  if (nan) return Float32Array.from(a).sort()[k]!;
  const s = Float32Array.from(a);
  let lo = 0, hi = n - 1;
  while (lo < hi) {
    // median of three as pivot, Hoare partition
    const mid = (lo + hi) >> 1;
    const x = s[lo]!, y = s[mid]!, z = s[hi]!;
    const pivot = x < y ? (y < z ? y : x < z ? z : x) : (x < z ? x : y < z ? z : y);
    let i = lo, j = hi;
    while (i <= j) {
      while (s[i]! < pivot) i++;
      while (s[j]! > pivot) j--;
      if (i <= j) { const t = s[i]!; s[i] = s[j]!; s[j] = t; i++; j--; }
    }
    if (k <= j) hi = j; else if (k >= i) lo = i; else break;
  }
  const v = s[k]!;
  if (v !== 0) return v;
  // zero: the sort puts every -0 before every +0
  let below = 0, negZero = 0;
  for (let i = 0; i < n; i++) { const x = a[i]!; if (x < 0) below++; else if (x === 0 && Object.is(x, -0)) negZero++; }
  return k < below + negZero ? -0 : 0;
}

/** Counts for a threshold rule over a chunk. */
export class ThresholdCounter {
  tp = 0; selected = 0; positives = 0; total = 0; wtp = 0; wpos = 0;
  constructor(readonly value: number) {}
  add(logits: Float32Array, labels: Uint8Array, weights?: Float32Array): void {
    for (let i = 0; i < logits.length; i++) {
      const sel = logits[i]! >= this.value;
      if (sel) this.selected++;
      if (labels[i]) {
        this.positives++;
        if (sel) this.tp++;
        if (weights) { this.wpos += weights[i]!; if (sel) this.wtp += weights[i]!; }
      }
    }
    this.total += logits.length;
  }
  weightedRecall(): number { return this.wpos ? this.wtp / this.wpos : this.positives ? NaN : 1; }
  metrics(): Metrics { return finish(this.tp, this.selected, this.positives, this.total); }
}

/**
 * Labels for the top `k` entries per row of `values` [n, W] (ties broken by index: lower index first).
 * The k-th largest value comes from a native sort of the row; entries above it are labelled, then entries equal to
 * it in index order until k are labelled.
 */
export function topKLabels(values: Float32Array, n: number, W: number, k: number, abs = false): Uint8Array {
  const out = new Uint8Array(n * W);
  if (k <= 0) return out;
  const key = new Float32Array(W), scratch = new Float32Array(W);
  for (let t = 0; t < n; t++) {
    const b = t * W;
    for (let i = 0; i < W; i++) key[i] = abs ? Math.abs(values[b + i]!) : values[b + i]!;
    for (const j of topKRow(key, k, scratch)) out[b + j] = 1;
  }
  return out;
}

/**
 * Indices (ascending) of the k largest entries of `row`, ties at the k-th value broken by index (lower first).
 * The k-th value comes from a native sort of a copy (`scratch`, length >= row.length).
 */
export function topKRow(row: Float32Array, k: number, scratch: Float32Array = new Float32Array(row.length)): Int32Array {
  const W = row.length;
  const kk = Math.max(0, Math.min(k, W));
  const ids = new Int32Array(kk);
  if (kk === 0) return ids;
  const sorted = scratch.subarray(0, W);
  sorted.set(row); sorted.sort();
  const thr = sorted[W - kk]!;
  let ties = kk;
  for (let j = 0; j < W; j++) if (row[j]! > thr) ties--;
  let n = 0;
  for (let j = 0; j < W; j++) { const v = row[j]!; if (v > thr || (v === thr && ties-- > 0)) ids[n++] = j; }
  return ids;
}
