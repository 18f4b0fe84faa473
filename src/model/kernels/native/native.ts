/**
 * The native row kernels (rows.c, a Node-API addon built at install into build/native/rows.node by
 * scripts/build-native.mjs): loaded once per process, or the reason they are not there. They run the WebAssembly
 * kernels' calls (the same function indices and byte-offset arguments) over a model arena's memory.
 */
import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';

export interface NativeRowsModule {
  /** ROW_FNS[fn] over the arena's memory (byte offsets), split over `threads` threads */
  run(memory: ArrayBuffer, fn: number, W: number, S: number, rows: number, k: number, x: number, xs: number, d: number, n: number, out: number, threads: number): void;
  /** wide: the AVX-512 row kernels run (the AVX2 kernels' bits; rows.c) */
  info(): { simd: 'avx2' | 'none'; wide: boolean; maxThreads: number };
  /** the AVX-512 row kernels on (where the CPU has AVX-512F) or off; returns whether they run */
  setWide(on: boolean): boolean;
  /** q8_0 blocks of src (float32 values or float16 bits) into q and s, the bits of quantizeQ8; false where a value is not finite */
  q8(src: Float32Array | Uint16Array, q: Int8Array, s: Float32Array): boolean;
  /** out[0, n) = silu(g) (* a): float32 e^x within 2 ulps (rows.c); out may be g or a */
  silu(g: Float32Array, a: Float32Array | null, out: Float32Array, n: number): void;
  /** transparent huge pages for the memory's untouched 2 MiB pages (Linux); whether the OS took the advice */
  advise(memory: ArrayBuffer): boolean;
}

/** build/native/rows.node of this package (from src/ under vitest or from dist/: both four folders below the root) */
export const NATIVE_ADDON = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', 'build', 'native', 'rows.node');

let loaded: { mod: NativeRowsModule | null; why: string } | undefined;

/**
 * The addon, or null and why (not built: no C compiler at install; a CPU without AVX2 / FMA / F16C, where its portable
 * loops would be slower than the WebAssembly kernels; DEJAVU_NATIVE=0).
 */
export function nativeRows(): { mod: NativeRowsModule | null; why: string } {
  if (loaded) return loaded;
  if (process.env.DEJAVU_NATIVE === '0') return (loaded = { mod: null, why: 'DEJAVU_NATIVE=0 turns them off' });
  if (!fs.existsSync(NATIVE_ADDON)) return (loaded = { mod: null, why: `${NATIVE_ADDON} was not built (no C compiler when the package was installed; \`npm run build:native\` builds it)` });
  try {
    const mod = createRequire(import.meta.url)(NATIVE_ADDON) as NativeRowsModule;
    const info = mod.info();
    if (info.simd !== 'avx2') return (loaded = { mod: null, why: 'this CPU has no AVX2 / FMA / F16C (the native kernels\' portable loops would be slower than WebAssembly SIMD)' });
    // DEJAVU_NATIVE_WIDE=0: the AVX2 row kernels on an AVX-512 CPU (the same bits; for comparing their speed)
    if (process.env.DEJAVU_NATIVE_WIDE === '0') mod.setWide(false);
    return (loaded = { mod, why: '' });
  } catch (e) {
    return (loaded = { mod: null, why: `${NATIVE_ADDON} did not load: ${(e as Error).message}` });
  }
}

let codeId: string | undefined;
/** the built addon's identity (sha256 of build/native/rows.node, 12 hex digits): cached kernel costs are keyed by it */
export function nativeCodeId(): string {
  if (codeId === undefined) { try { codeId = createHash('sha256').update(fs.readFileSync(NATIVE_ADDON)).digest('hex').slice(0, 12); } catch { codeId = 'none'; } }
  return codeId;
}
