/** The forward pass's LayerNorm / RMSNorm on the host, in float64 per row, for the decode runtime and the predictors. */

/**
 * out [n, d] = norm of the rows of x [n, d]: (x - mean) / sqrt(var + eps) * g + b (layernorm), x / sqrt(mean(x²) + eps)
 * * g (rmsnorm). `out` may be `x` (each row's statistics are taken before it is written).
 */
export function normRows(kind: 'layernorm' | 'rmsnorm', eps: number, g: Float32Array, b: Float32Array | undefined, x: Float32Array, n: number, d: number,
  out: Float32Array = new Float32Array(n * d)): Float32Array {
  for (let r = 0; r < n; r++) {
    const o = r * d;
    let mean = 0;
    if (kind === 'layernorm') { for (let j = 0; j < d; j++) mean += x[o + j]!; mean /= d; }
    let v = 0;
    for (let j = 0; j < d; j++) { const t = x[o + j]! - mean; v += t * t; }
    const inv = 1 / Math.sqrt(v / d + eps);
    for (let j = 0; j < d; j++) out[o + j] = (x[o + j]! - mean) * inv * g[j]! + (b ? b[j]! : 0);
  }
  return out;
}
