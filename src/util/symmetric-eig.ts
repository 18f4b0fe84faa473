/**
 * Eigendecomposition of a symmetric matrix: ml-matrix's algorithm (JAMA's Householder tridiagonalization `tred2` and
 * implicit QL `tql2`, eigenvectors stored transposed so the hot loops scan rows), operation for operation, on one
 * flat Float64Array instead of ml-matrix's Matrix (an array of rows behind get/set calls).
 *
 * Why hand-written: the closed-form fit runs two of these per layer, serially, on its critical path; ml-matrix took
 * 88-91 ms at d 256 and 646-683 ms at d 512, this takes 39-40 ms and 295-297 ms (scratch measurement, Node 20), and
 * at d 2048 (OPT-1.3B) the decompositions were most of a layer's 200 s fit. The results are bit-identical to
 * ml-matrix's (test/closed-form.test.ts compares every value and vector on random matrices), so no number changes.
 */

function hypot(a: number, b: number): number {
  let r = 0;
  if (Math.abs(a) > Math.abs(b)) { r = b / a; return Math.abs(a) * Math.sqrt(1 + r * r); }
  if (b !== 0) { r = a / b; return Math.abs(b) * Math.sqrt(1 + r * r); }
  return 0;
}

/**
 * Eigenvalues of the symmetric n x n row-major `a` in ascending order, and the eigenvectors as rows of `vectorsT`
 * (vectorsT[c * n + i] = component i of the eigenvector of values[c]). Every entry of `a` is read, as ml-matrix reads
 * it with assumeSymmetric: pass a symmetric matrix.
 */
export function symmetricEig(a: Float64Array, n: number): { values: Float64Array; vectorsT: Float64Array } {
  // V[r * n + c] is the stored entry (r, c), which holds the logical V(c, r), as in ml-matrix
  const V = new Float64Array(n * n);
  const d = new Float64Array(n), e = new Float64Array(n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) V[j * n + i] = a[i * n + j]!;
  tred2(n, e, d, V);
  tql2(n, e, d, V);
  return { values: d, vectorsT: V };
}

function tred2(n: number, e: Float64Array, d: Float64Array, V: Float64Array): void {
  let f: number, g: number, h: number, hh: number, scale: number;
  for (let j = 0; j < n; j++) d[j] = V[j * n + n - 1]!;
  for (let i = n - 1; i > 0; i--) {
    scale = 0;
    h = 0;
    for (let k = 0; k < i; k++) scale = scale + Math.abs(d[k]!);
    if (scale === 0) {
      e[i] = d[i - 1]!;
      for (let j = 0; j < i; j++) { d[j] = V[j * n + i - 1]!; V[j * n + i] = 0; V[i * n + j] = 0; }
    } else {
      for (let k = 0; k < i; k++) { d[k]! /= scale; h += d[k]! * d[k]!; }
      f = d[i - 1]!;
      g = Math.sqrt(h);
      if (f > 0) g = -g;
      e[i] = scale * g;
      h = h - f * g;
      d[i - 1] = f - g;
      for (let j = 0; j < i; j++) e[j] = 0;
      for (let j = 0; j < i; j++) {
        f = d[j]!;
        V[i * n + j] = f;
        const rj = j * n;
        g = e[j]! + V[rj + j]! * f;
        for (let k = j + 1; k <= i - 1; k++) { g += V[rj + k]! * d[k]!; e[k]! += V[rj + k]! * f; }
        e[j] = g;
      }
      f = 0;
      for (let j = 0; j < i; j++) { e[j]! /= h; f += e[j]! * d[j]!; }
      hh = f / (h + h);
      for (let j = 0; j < i; j++) e[j]! -= hh * d[j]!;
      for (let j = 0; j < i; j++) {
        f = d[j]!;
        g = e[j]!;
        const rj = j * n;
        for (let k = j; k <= i - 1; k++) V[rj + k] = V[rj + k]! - (f * e[k]! + g * d[k]!);
        d[j] = V[rj + i - 1]!;
        V[rj + i] = 0;
      }
    }
    d[i] = h;
  }
  for (let i = 0; i < n - 1; i++) {
    V[i * n + n - 1] = V[i * n + i]!;
    V[i * n + i] = 1;
    h = d[i + 1]!;
    if (h !== 0) {
      const r1 = (i + 1) * n;
      for (let k = 0; k <= i; k++) d[k] = V[r1 + k]! / h;
      for (let j = 0; j <= i; j++) {
        g = 0;
        const rj = j * n;
        for (let k = 0; k <= i; k++) g += V[r1 + k]! * V[rj + k]!;
        for (let k = 0; k <= i; k++) V[rj + k] = V[rj + k]! - g * d[k]!;
      }
    }
    for (let k = 0; k <= i; k++) V[(i + 1) * n + k] = 0;
  }
  for (let j = 0; j < n; j++) { d[j] = V[j * n + n - 1]!; V[j * n + n - 1] = 0; }
  V[(n - 1) * n + n - 1] = 1;
  e[0] = 0;
}

function tql2(n: number, e: Float64Array, d: Float64Array, V: Float64Array): void {
  let g: number, h: number, p: number, r: number, dl1: number, c: number, c2: number, c3: number, el1: number, s: number, s2: number;
  for (let i = 1; i < n; i++) e[i - 1] = e[i]!;
  e[n - 1] = 0;
  let f = 0, tst1 = 0;
  const eps = Number.EPSILON;
  for (let l = 0; l < n; l++) {
    tst1 = Math.max(tst1, Math.abs(d[l]!) + Math.abs(e[l]!));
    let m = l;
    while (m < n) { if (Math.abs(e[m]!) <= eps * tst1) break; m++; }
    if (m > l) {
      do {
        g = d[l]!;
        p = (d[l + 1]! - g) / (2 * e[l]!);
        r = hypot(p, 1);
        if (p < 0) r = -r;
        d[l] = e[l]! / (p + r);
        d[l + 1] = e[l]! * (p + r);
        dl1 = d[l + 1]!;
        h = g - d[l]!;
        for (let i = l + 2; i < n; i++) d[i]! -= h;
        f = f + h;
        p = d[m]!;
        c = 1; c2 = c; c3 = c;
        el1 = e[l + 1]!;
        s = 0; s2 = 0;
        for (let i = m - 1; i >= l; i--) {
          c3 = c2; c2 = c; s2 = s;
          g = c * e[i]!;
          h = c * p;
          r = hypot(p, e[i]!);
          e[i + 1] = s * r;
          s = e[i]! / r;
          c = p / r;
          p = c * d[i]! - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]!);
          const r0 = i * n, r1 = (i + 1) * n;
          for (let k = 0; k < n; k++) { h = V[r1 + k]!; V[r1 + k] = s * V[r0 + k]! + c * h; V[r0 + k] = c * V[r0 + k]! - s * h; }
        }
        p = (-s * s2 * c3 * el1 * e[l]!) / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (Math.abs(e[l]!) > eps * tst1);
    }
    d[l] = d[l]! + f;
    e[l] = 0;
  }
  for (let i = 0; i < n - 1; i++) {
    let k = i;
    p = d[i]!;
    for (let j = i + 1; j < n; j++) if (d[j]! < p) { k = j; p = d[j]!; }
    if (k !== i) {
      d[k] = d[i]!;
      d[i] = p;
      const ri = i * n, rk = k * n;
      for (let j = 0; j < n; j++) { p = V[ri + j]!; V[ri + j] = V[rk + j]!; V[rk + j] = p; }
    }
  }
}
