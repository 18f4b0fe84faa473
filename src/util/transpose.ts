/** [rows, cols] -> [cols, rows], in 64x64 tiles (a plain loop over rows misses the cache on every write at d 2048). */
export function transpose2d<T extends Float32Array | Uint16Array>(src: T, rows: number, cols: number): T {
  const out = new (src.constructor as new (n: number) => T)(src.length);
  const B = 64;
  for (let r0 = 0; r0 < rows; r0 += B)
    for (let c0 = 0; c0 < cols; c0 += B)
      for (let r = r0; r < Math.min(rows, r0 + B); r++)
        for (let c = c0; c < Math.min(cols, c0 + B); c++) out[c * rows + r] = src[r * cols + c]!;
  return out;
}
