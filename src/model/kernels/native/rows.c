/*
 * Native row kernels of the decode runtime (a Node-API addon, built at install by scripts/build-native.mjs; the
 * WebAssembly kernels stay the fallback). The same kernels as src/model/kernels/wasm/kernels.wat, with the same
 * arguments (W, S, rows, k, x, xs, d, n, out: byte offsets into the model's arena), run over the arena's memory with
 * x86-64 AVX2 + FMA + F16C where the CPU has them, on a persistent pool of POSIX threads.
 *
 * Hand-written because WebAssembly SIMD in Node 20 is 128 bits wide with no half-precision conversion and no fused
 * multiply-add: its float16 rows cost 1.5 instructions per value (2.3-2.5 G values/s a core) and its q8_0 rows twice
 * llama.cpp's instructions per value, so the wasm runtime's dense decode stayed at 0.33-0.45x llama.cpp at the same
 * row format on this machine (docs/decode-runtime.md). F16C widens 8 halves in one instruction and FMA multiplies and
 * adds 8 floats in one, as llama.cpp's own CPU kernels do.
 *
 * Bits: every output row (matvec) and every output column (axpy) is computed on its own, in an order that does not
 * depend on the thread split or the grouping of rows, so any thread count gives the same bits; the float32, float16
 * and bfloat16 kernels share one summation order (a load that widens to 8 floats is all that differs), so half rows
 * give the float32 rows' bits for the same values; an axpy adds its rows one after another per column (a zero
 * coefficient adds exactly 0: leaving zero rows out gives the same sum, the lossless mode).
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#define SIMD __attribute__((target("avx2,fma,f16c")))
#endif

enum { F32 = 0, F16 = 1, BF16 = 2, Q8 = 3 };
enum { MV = 0, MV8 = 1, AX = 2, AX8 = 3 };
static const int VALUE_BYTES[4] = { 4, 2, 2, 1 };

typedef struct {
  uint8_t *base; int fn; int64_t W, S, rows, k, x, xs, d, n, out;
  /* a row-split axpy (ax_chunked): chunk g < nc is the rows at positions [cs[g], cs[g + 1]), summed into part + g * d */
  const int64_t *cs; float *part; int64_t nc;
} Call;

/* ---------------------------------------------------------------- portable kernels (no AVX2) */
static float widen(const uint8_t *p, int t, int64_t j) {
  if (t == F32) { float v; memcpy(&v, p + 4 * j, 4); return v; }
  uint16_t h; memcpy(&h, p + 2 * j, 2);
  uint32_t u;
  if (t == BF16) u = (uint32_t)h << 16;
  else {
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) { float v = (float)m * (1.0f / 16777216.0f); memcpy(&u, &v, 4); u |= s; }
    else if (e == 31) u = s | 0x7f800000 | (m << 13);
    else u = s | ((e + 112) << 23) | (m << 13);
  }
  float v; memcpy(&v, &u, 4); return v;
}

static void scalar_run(const Call *c, int t, int ax, int64_t i0, int64_t i1) {
  const int32_t *rows = (const int32_t *)(c->base + c->rows);
  if (!ax) {
    const float *x = (const float *)(c->base + c->x); float *out = (float *)(c->base + c->out);
    for (int64_t i = i0; i < i1; i++) {
      const uint8_t *w = c->base + c->W + (int64_t)rows[i] * c->n;
      float s = 0;
      if (t == Q8) {
        const int8_t *q = (const int8_t *)w; const int16_t *xq = (const int16_t *)x;
        const float *ws = (const float *)(c->base + c->S + (int64_t)rows[i] * (c->n / 8)), *xsc = (const float *)(c->base + c->xs);
        for (int64_t b = 0; b < c->d / 32; b++) { int32_t a = 0; for (int j = 0; j < 32; j++) a += q[32 * b + j] * xq[32 * b + j]; s += (float)a * (ws[b] * xsc[b]); }
      } else for (int64_t j = 0; j < c->d; j++) s += widen(w, t, j) * x[j];
      out[i] = s;
    }
  } else {
    const float *a = (const float *)(c->base + c->x); float *out = (float *)(c->base + c->out);
    for (int64_t r = 0; r < c->k; r++) {
      const uint8_t *w = c->base + c->W + (int64_t)rows[r] * c->n;
      if (t == Q8) {
        const float *ws = (const float *)(c->base + c->S + (int64_t)rows[r] * (c->n / 8));
        for (int64_t j = i0; j < i1; j++) out[j] += (a[r] * ws[j / 32]) * (float)((const int8_t *)w)[j];
      } else for (int64_t j = i0; j < i1; j++) out[j] += a[r] * widen(w, t, j);
    }
  }
}

#if defined(__x86_64__)
/* ---------------------------------------------------------------- AVX2 kernels */
/*
 * Software prefetch distance in bytes ahead of each row stream (matvec: PF, axpy: PFA). A decode step streams every
 * weight from DRAM once; one thread read 9.7 GB/s, two 17.5 GB/s without it (TinyLlama widths, float16, this 2-core
 * VM), 512 bytes ahead cut the step's kernel time from 48.6 to 42.3 ms at two threads (1024: 42-46, 2048: 46-48).
 */
#ifndef PF
#define PF 512
#endif
#ifndef PFA
#define PFA 512
#endif
#ifndef AXR
#define AXR 8
#endif
#ifndef NEXTROW
#define NEXTROW 0 /* 1: the in-order matvec prefetches the next row's start (see MV_BODY) */
#endif

enum { VB_F32 = 4, VB_F16 = 2, VB_BF16 = 2 };
/* 8 values at p (index j) widened to float32 */
SIMD static inline __m256 load8(const uint8_t *p, int t, int64_t j) {
  if (t == F32) return _mm256_loadu_ps((const float *)p + j);
  __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + j));
  if (t == F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

SIMD static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/*
 * out[i] = W[rows[i]] . x for i in [i0, i1), two accumulators a row (even and odd 8-value steps). FOUR (scattered
 * rows): four rows at a time (four row starts miss the cache together; x loaded once for the four); else one row at
 * a time: in order, one stream a thread read 13.3-16.4 GB/s against four streams' 9.9-15.5 (`kernel-speed.mjs 2 native
 * --dram`, pairs run alternately on an AMD EPYC VM). One software prefetch per 64-byte line (a float16 row: one line
 * a step of 32 values), not one per 16 values, and no prefetch of the next row's start (NEXTROW 0): on a Zen 2 EPYC
 * VM, 2 threads, scripts/row-stream.c's variant 8 against 0 read 26.6-31.6 against 22.5-25.9 GB/s (medians of 7, six
 * interleaved runs); bench:decode's TinyLlama row, alternating builds, dense / llama.cpp F16 per round 1.01-1.08x
 * (medians 1.05, 1.07) against 0.93-1.12x (0.98, 1.07). A row gets the same bits any way (the same two accumulators
 * in the same order).
 */
#define MV_BODY(T, NAME, FOUR)                                                                                      \
  SIMD static void NAME(const Call *c, int64_t i0, int64_t i1) {                                                 \
    const int32_t *rows = (const int32_t *)(c->base + c->rows);                                                  \
    const float *x = (const float *)(c->base + c->x);                                                            \
    float *out = (float *)(c->base + c->out);                                                                    \
    const uint8_t *W = c->base + c->W;                                                                           \
    const int64_t d = c->d, n = c->n, d16 = d & ~(int64_t)15;                                                    \
    int64_t i = i0;                                                                                              \
    for (; FOUR && i + 4 <= i1; i += 4) {                                                                        \
      const uint8_t *p0 = W + rows[i] * n, *p1 = W + rows[i + 1] * n, *p2 = W + rows[i + 2] * n, *p3 = W + rows[i + 3] * n; \
      if (i + 8 <= i1) for (int r = 4; r < 8; r++) _mm_prefetch((const char *)(W + rows[i + r] * n), _MM_HINT_T0);  \
      __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;            \
      int64_t j = 0;                                                                                             \
      for (; j < d16; j += 16) {                                                                                 \
        if (PF && !((j * VB_##T) & 63)) { const int64_t o = (j * VB_##T) + PF; _mm_prefetch((const char *)p0 + o, _MM_HINT_T0); _mm_prefetch((const char *)p1 + o, _MM_HINT_T0); \
                  _mm_prefetch((const char *)p2 + o, _MM_HINT_T0); _mm_prefetch((const char *)p3 + o, _MM_HINT_T0); } \
        __m256 xa = _mm256_loadu_ps(x + j), xb = _mm256_loadu_ps(x + j + 8);                                      \
        a0 = _mm256_fmadd_ps(load8(p0, T, j), xa, a0); b0 = _mm256_fmadd_ps(load8(p0, T, j + 8), xb, b0);          \
        a1 = _mm256_fmadd_ps(load8(p1, T, j), xa, a1); b1 = _mm256_fmadd_ps(load8(p1, T, j + 8), xb, b1);          \
        a2 = _mm256_fmadd_ps(load8(p2, T, j), xa, a2); b2 = _mm256_fmadd_ps(load8(p2, T, j + 8), xb, b2);          \
        a3 = _mm256_fmadd_ps(load8(p3, T, j), xa, a3); b3 = _mm256_fmadd_ps(load8(p3, T, j + 8), xb, b3);          \
      }                                                                                                          \
      if (j < d) {                                                                                               \
        __m256 xa = _mm256_loadu_ps(x + j);                                                                      \
        a0 = _mm256_fmadd_ps(load8(p0, T, j), xa, a0); a1 = _mm256_fmadd_ps(load8(p1, T, j), xa, a1);              \
        a2 = _mm256_fmadd_ps(load8(p2, T, j), xa, a2); a3 = _mm256_fmadd_ps(load8(p3, T, j), xa, a3);              \
      }                                                                                                          \
      out[i] = hsum8(_mm256_add_ps(a0, b0)); out[i + 1] = hsum8(_mm256_add_ps(a1, b1));                           \
      out[i + 2] = hsum8(_mm256_add_ps(a2, b2)); out[i + 3] = hsum8(_mm256_add_ps(a3, b3));                       \
    }                                                                                                            \
    for (; i < i1; i++) {                                                                                        \
      const uint8_t *p0 = W + rows[i] * n;                                                                       \
      __m256 a0 = _mm256_setzero_ps(), b0 = a0;                                                                  \
      int64_t j = 0;                                                                                             \
      if (!FOUR && NEXTROW && i + 1 < i1) _mm_prefetch((const char *)(W + rows[i + 1] * n), _MM_HINT_T0);        \
      if (VB_##T == 2) for (; j + 32 <= d16; j += 32) {                                                          \
        if (!FOUR && PF) _mm_prefetch((const char *)p0 + j * 2 + PF, _MM_HINT_T0);                               \
        a0 = _mm256_fmadd_ps(load8(p0, T, j), _mm256_loadu_ps(x + j), a0);                                       \
        b0 = _mm256_fmadd_ps(load8(p0, T, j + 8), _mm256_loadu_ps(x + j + 8), b0);                               \
        a0 = _mm256_fmadd_ps(load8(p0, T, j + 16), _mm256_loadu_ps(x + j + 16), a0);                             \
        b0 = _mm256_fmadd_ps(load8(p0, T, j + 24), _mm256_loadu_ps(x + j + 24), b0);                             \
      }                                                                                                          \
      for (; j < d16; j += 16) {                                                                                 \
        if (!FOUR && PF && !((j * VB_##T) & 63)) _mm_prefetch((const char *)p0 + j * VB_##T + PF, _MM_HINT_T0);  \
        a0 = _mm256_fmadd_ps(load8(p0, T, j), _mm256_loadu_ps(x + j), a0);                                       \
        b0 = _mm256_fmadd_ps(load8(p0, T, j + 8), _mm256_loadu_ps(x + j + 8), b0);                               \
      }                                                                                                          \
      if (j < d) a0 = _mm256_fmadd_ps(load8(p0, T, j), _mm256_loadu_ps(x + j), a0);                             \
      out[i] = hsum8(_mm256_add_ps(a0, b0));                                                                     \
    }                                                                                                            \
  }
MV_BODY(F32, mv_F32, 0)
MV_BODY(F16, mv_F16, 0)
MV_BODY(BF16, mv_BF16, 0)
MV_BODY(F32, mv4_F32, 1)
MV_BODY(F16, mv4_F16, 1)
MV_BODY(BF16, mv4_BF16, 1)

/*
 * out[j0, j1) += sum_r a[r] W[rows[r]][j]: 64 columns in registers while eight rows are added one after another
 * (the output loaded and stored once per eight rows; eight sequential streams).
 */
#define AX_BODY(T)                                                                                                  \
  SIMD static void ax_##T(const Call *c, int64_t j0, int64_t j1) {                                                 \
    const int32_t *rows = (const int32_t *)(c->base + c->rows);                                                  \
    const float *a = (const float *)(c->base + c->x);                                                            \
    float *out = (float *)(c->base + c->out);                                                                    \
    const uint8_t *W = c->base + c->W;                                                                           \
    const int64_t k = c->k, n = c->n;                                                                            \
    for (int64_t r0 = 0; r0 < k; r0 += AXR) {                                                                    \
      const int64_t r1 = r0 + AXR < k ? r0 + AXR : k;                                                            \
      const uint8_t *p[AXR], *pn[AXR]; __m256 cf[AXR];                                                           \
      for (int64_t r = r0; r < r1; r++) { p[r - r0] = W + rows[r] * n; cf[r - r0] = _mm256_set1_ps(a[r]); }       \
      /* the next group's rows: their first bytes are prefetched while this group's last PFA bytes are read */    \
      const int64_t m1 = (r1 + AXR < k ? r1 + AXR : k) - r1;                                                     \
      for (int64_t r = 0; r < m1; r++) pn[r] = W + rows[r1 + r] * n + j0 * VB_##T;                                \
      int64_t j = j0;                                                                                            \
      const int64_t jn = (j1 - j0) * VB_##T - PFA; /* bytes into the segment past which prefetches go to the next group */ \
      for (; j + 64 <= j1; j += 64) {                                                                            \
        if (PFA) {                                                                                               \
          const int64_t b = (j - j0) * VB_##T;                                                                   \
          if (b < jn) for (int64_t r = 0; r < r1 - r0; r++) { const char *q = (const char *)p[r] + j * VB_##T + PFA; \
            _mm_prefetch(q, _MM_HINT_T0); if (VB_##T > 1) _mm_prefetch(q + 64, _MM_HINT_T0); if (VB_##T > 2) { _mm_prefetch(q + 128, _MM_HINT_T0); _mm_prefetch(q + 192, _MM_HINT_T0); } } \
          else for (int64_t r = 0; r < m1; r++) { const char *q = (const char *)pn[r] + (b - jn);                \
            _mm_prefetch(q, _MM_HINT_T0); if (VB_##T > 1) _mm_prefetch(q + 64, _MM_HINT_T0); if (VB_##T > 2) { _mm_prefetch(q + 128, _MM_HINT_T0); _mm_prefetch(q + 192, _MM_HINT_T0); } } \
        }                                                                                                        \
        __m256 o[8];                                                                                             \
        for (int u = 0; u < 8; u++) o[u] = _mm256_loadu_ps(out + j + 8 * u);                                     \
        for (int64_t r = 0; r < r1 - r0; r++)                                                                    \
          for (int u = 0; u < 8; u++) o[u] = _mm256_fmadd_ps(cf[r], load8(p[r], T, j + 8 * u), o[u]);            \
        for (int u = 0; u < 8; u++) _mm256_storeu_ps(out + j + 8 * u, o[u]);                                     \
      }                                                                                                          \
      for (; j < j1; j += 8) {                                                                                   \
        __m256 o = _mm256_loadu_ps(out + j);                                                                     \
        for (int64_t r = 0; r < r1 - r0; r++) o = _mm256_fmadd_ps(cf[r], load8(p[r], T, j), o);                  \
        _mm256_storeu_ps(out + j, o);                                                                            \
      }                                                                                                          \
    }                                                                                                            \
  }
AX_BODY(F32)
AX_BODY(F16)
AX_BODY(BF16)

/* 32 int8 weights times 32 int16 inputs: 8 int32 partial sums (exact) */
SIMD static inline __m256i q8dot(const int8_t *w, const int16_t *x) {
  __m256i lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w));
  __m256i hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 16)));
  return _mm256_add_epi32(_mm256_madd_epi16(lo, _mm256_loadu_si256((const __m256i *)x)),
                          _mm256_madd_epi16(hi, _mm256_loadu_si256((const __m256i *)(x + 16))));
}

/* q8_0 matvec: per 32-value block the exact int32 dot with the int16 input, scaled by the row's and the input's scale */
SIMD static void mv_Q8(const Call *c, int64_t i0, int64_t i1) {
  const int32_t *rows = (const int32_t *)(c->base + c->rows);
  const int16_t *x = (const int16_t *)(c->base + c->x);
  const float *xs = (const float *)(c->base + c->xs);
  float *out = (float *)(c->base + c->out);
  const uint8_t *W = c->base + c->W, *S = c->base + c->S;
  const int64_t d = c->d, n = c->n, nb = d / 32;
  int64_t i = i0;
  for (; i + 4 <= i1; i += 4) {
    const int8_t *p[4]; const float *s[4];
    for (int r = 0; r < 4; r++) { p[r] = (const int8_t *)(W + rows[i + r] * n); s[r] = (const float *)(S + rows[i + r] * (n / 8)); }
    if (i + 8 <= i1) for (int r = 4; r < 8; r++) _mm_prefetch((const char *)(W + rows[i + r] * n), _MM_HINT_T0);
    __m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps() };
    for (int64_t b = 0; b < nb; b++) {
      const __m256i x0 = _mm256_loadu_si256((const __m256i *)(x + 32 * b)), x1 = _mm256_loadu_si256((const __m256i *)(x + 32 * b + 16));
      for (int r = 0; r < 4; r++) {
        if (PF) _mm_prefetch((const char *)p[r] + 32 * b + PF, _MM_HINT_T0);
        const __m256i lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p[r] + 32 * b)));
        const __m256i hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p[r] + 32 * b + 16)));
        const __m256i dot = _mm256_add_epi32(_mm256_madd_epi16(lo, x0), _mm256_madd_epi16(hi, x1));
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(s[r][b] * xs[b]), acc[r]);
      }
    }
    for (int r = 0; r < 4; r++) out[i + r] = hsum8(acc[r]);
  }
  for (; i < i1; i++) {
    const int8_t *p = (const int8_t *)(W + rows[i] * n); const float *s = (const float *)(S + rows[i] * (n / 8));
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q8dot(p + 32 * b, x + 32 * b)), _mm256_set1_ps(s[b] * xs[b]), acc);
    out[i] = hsum8(acc);
  }
}

/* q8_0 axpy over columns [j0, j1) (multiples of 32): per block the coefficient times the block's scale */
SIMD static void ax_Q8(const Call *c, int64_t j0, int64_t j1) {
  const int32_t *rows = (const int32_t *)(c->base + c->rows);
  const float *a = (const float *)(c->base + c->x);
  float *out = (float *)(c->base + c->out);
  const uint8_t *W = c->base + c->W, *S = c->base + c->S;
  const int64_t k = c->k, n = c->n;
  for (int64_t r0 = 0; r0 < k; r0 += 8) {
    const int64_t m = (r0 + 8 < k ? r0 + 8 : k) - r0;
    const int8_t *p[8]; const float *s[8];
    for (int64_t r = 0; r < m; r++) { p[r] = (const int8_t *)(W + rows[r0 + r] * n); s[r] = (const float *)(S + rows[r0 + r] * (n / 8)); }
    for (int64_t j = j0; j < j1; j += 32) {
      if (PFA) for (int64_t r = 0; r < m; r++) _mm_prefetch((const char *)p[r] + j + PFA, _MM_HINT_T0);
      __m256 o[4];
      for (int u = 0; u < 4; u++) o[u] = _mm256_loadu_ps(out + j + 8 * u);
      for (int64_t r = 0; r < m; r++) {
        const __m256 cf = _mm256_set1_ps(a[r0 + r] * s[r][j / 32]);
        const __m256i q = _mm256_loadu_si256((const __m256i *)(p[r] + j));
        const __m128i q0 = _mm256_castsi256_si128(q), q1 = _mm256_extracti128_si256(q, 1);
        o[0] = _mm256_fmadd_ps(cf, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0)), o[0]);
        o[1] = _mm256_fmadd_ps(cf, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q0, 8))), o[1]);
        o[2] = _mm256_fmadd_ps(cf, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1)), o[2]);
        o[3] = _mm256_fmadd_ps(cf, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q1, 8))), o[3]);
      }
      for (int u = 0; u < 4; u++) _mm256_storeu_ps(out + j + 8 * u, o[u]);
    }
  }
}

/* ---------------------------------------------------------------- AVX-512 kernels (the same bits) */
/*
 * Where the CPU has AVX-512F, the matvecs and axpys over float32 / float16 / bfloat16 rows run 16 lanes wide with the
 * AVX2 kernels' summation order, so they give the same bits: a matvec row's one 16-lane accumulator holds the AVX2
 * kernel's two 8-lane ones (lanes 0-7: the even 8-value steps, 8-15: the odd ones), its 8-value tail goes into the
 * low half, and it is reduced as the AVX2 kernel's pair is (hsum8 of their sum); an axpy column's FMAs run in the
 * same row order at any width. A matvec reads MVR rows at a time (in order or scattered) with one prefetch per cache
 * line of each: measured on this 2-core VM's Sapphire Rapids (a standalone 553 MB float16 stream, 2 threads, best of
 * 7, three interleaved runs): the AVX2 one-row kernel 12.6-17.0 GB/s, AVX-512 one row 16-20, 4 rows 19.6-23.4,
 * 8 rows 25.0-31.4, 16 rows 22-32; one prefetch per line 512 bytes ahead (256: 21.5-28, 1024: 21.8-27.4).
 */
#ifndef MVR
#define MVR 8
#endif
#ifndef PF5
#define PF5 512
#endif
#define SIMD512 __attribute__((target("avx512f,avx2,fma,f16c")))
SIMD512 static inline __m512 load16(const uint8_t *p, int t, int64_t j) {
  if (t == F32) return _mm512_loadu_ps((const float *)p + j);
  __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + j));
  if (t == F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
/* the AVX2 kernel's reduction of its pair (a, b) = (low, high) after the 8-value tail (lo += tail) */
SIMD512 static inline float hsum16(__m512 v, const uint8_t *p, int t, const float *x, int64_t j, int64_t d) {
  __m256 lo = _mm512_castps512_ps256(v), hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  if (j < d) lo = _mm256_fmadd_ps(load8(p, t, j), _mm256_loadu_ps(x + j), lo);
  return hsum8(_mm256_add_ps(lo, hi));
}
/* R rows at p[0..R) into o[0..R): 32 values a step (one cache line of halves), then a 16-value step, then the tail */
#define MV5_ROWS(T, R)                                                                                              \
  do {                                                                                                             \
    __m512 a[R];                                                                                                   \
    for (int r = 0; r < R; r++) a[r] = _mm512_setzero_ps();                                                        \
    int64_t j = 0;                                                                                                 \
    for (; j + 32 <= d; j += 32) {                                                                                 \
      const __m512 xa = _mm512_loadu_ps(x + j), xb = _mm512_loadu_ps(x + j + 16);                                  \
      for (int r = 0; r < R; r++) {                                                                                \
        if (PF5) for (int l = 0; l < VB_##T / 2; l++) _mm_prefetch((const char *)p[r] + j * VB_##T + 64 * l + PF5, _MM_HINT_T0); \
        a[r] = _mm512_fmadd_ps(load16(p[r], T, j), xa, a[r]);                                                      \
        a[r] = _mm512_fmadd_ps(load16(p[r], T, j + 16), xb, a[r]);                                                 \
      }                                                                                                            \
    }                                                                                                              \
    if (j + 16 <= d) {                                                                                             \
      const __m512 xa = _mm512_loadu_ps(x + j);                                                                    \
      for (int r = 0; r < R; r++) a[r] = _mm512_fmadd_ps(load16(p[r], T, j), xa, a[r]);                            \
      j += 16;                                                                                                     \
    }                                                                                                              \
    for (int r = 0; r < R; r++) o[r] = hsum16(a[r], p[r], T, x, j, d);                                             \
  } while (0)
#define MV5_BODY(T)                                                                                                 \
  SIMD512 static void mv5_##T(const Call *c, int64_t i0, int64_t i1) {                                           \
    const int32_t *rows = (const int32_t *)(c->base + c->rows);                                                  \
    const float *x = (const float *)(c->base + c->x);                                                            \
    const uint8_t *W = c->base + c->W;                                                                           \
    const int64_t d = c->d, n = c->n;                                                                            \
    int64_t i = i0;                                                                                              \
    for (; i + MVR <= i1; i += MVR) {                                                                            \
      const uint8_t *p[MVR]; float *o = (float *)(c->base + c->out) + i;                                         \
      for (int r = 0; r < MVR; r++) p[r] = W + rows[i + r] * n;                                                  \
      MV5_ROWS(T, MVR);                                                                                          \
    }                                                                                                            \
    for (; i < i1; i++) {                                                                                        \
      const uint8_t *p[1] = { W + rows[i] * n }; float *o = (float *)(c->base + c->out) + i;                     \
      MV5_ROWS(T, 1);                                                                                            \
    }                                                                                                            \
  }
MV5_BODY(F32)
MV5_BODY(F16)
MV5_BODY(BF16)

/* out[j0, j1) += sum_r a[r] W[rows[r]][j]: the AVX2 axpy's rows and prefetches, 128 columns in registers */
#define AX5_BODY(T)                                                                                                 \
  SIMD512 static void ax5_##T(const Call *c, int64_t j0, int64_t j1) {                                           \
    const int32_t *rows = (const int32_t *)(c->base + c->rows);                                                  \
    const float *a = (const float *)(c->base + c->x);                                                            \
    float *out = (float *)(c->base + c->out);                                                                    \
    const uint8_t *W = c->base + c->W;                                                                           \
    const int64_t k = c->k, n = c->n;                                                                            \
    for (int64_t r0 = 0; r0 < k; r0 += AXR) {                                                                    \
      const int64_t r1 = r0 + AXR < k ? r0 + AXR : k;                                                            \
      const uint8_t *p[AXR], *pn[AXR]; __m512 cf[AXR];                                                           \
      for (int64_t r = r0; r < r1; r++) { p[r - r0] = W + rows[r] * n; cf[r - r0] = _mm512_set1_ps(a[r]); }       \
      const int64_t m1 = (r1 + AXR < k ? r1 + AXR : k) - r1;                                                     \
      for (int64_t r = 0; r < m1; r++) pn[r] = W + rows[r1 + r] * n + j0 * VB_##T;                                \
      int64_t j = j0;                                                                                            \
      const int64_t jn = (j1 - j0) * VB_##T - PFA;                                                               \
      for (; j + 128 <= j1; j += 128) {                                                                          \
        if (PFA) {                                                                                               \
          const int64_t b = (j - j0) * VB_##T;                                                                   \
          if (b < jn) { for (int64_t r = 0; r < r1 - r0; r++) for (int l = 0; l < 2 * VB_##T; l++) _mm_prefetch((const char *)p[r] + j * VB_##T + PFA + 64 * l, _MM_HINT_T0); } \
          else for (int64_t r = 0; r < m1; r++) for (int l = 0; l < 2 * VB_##T; l++) _mm_prefetch((const char *)pn[r] + (b - jn) + 64 * l, _MM_HINT_T0); \
        }                                                                                                        \
        __m512 o[8];                                                                                             \
        for (int u = 0; u < 8; u++) o[u] = _mm512_loadu_ps(out + j + 16 * u);                                    \
        for (int64_t r = 0; r < r1 - r0; r++)                                                                    \
          for (int u = 0; u < 8; u++) o[u] = _mm512_fmadd_ps(cf[r], load16(p[r], T, j + 16 * u), o[u]);         \
        for (int u = 0; u < 8; u++) _mm512_storeu_ps(out + j + 16 * u, o[u]);                                    \
      }                                                                                                          \
      for (; j + 16 <= j1; j += 16) {                                                                            \
        __m512 o = _mm512_loadu_ps(out + j);                                                                     \
        for (int64_t r = 0; r < r1 - r0; r++) o = _mm512_fmadd_ps(cf[r], load16(p[r], T, j), o);                \
        _mm512_storeu_ps(out + j, o);                                                                            \
      }                                                                                                          \
      for (; j < j1; j += 8) {                                                                                   \
        __m256 o = _mm256_loadu_ps(out + j);                                                                     \
        for (int64_t r = 0; r < r1 - r0; r++) o = _mm256_fmadd_ps(_mm512_castps512_ps256(cf[r]), load8(p[r], T, j), o); \
        _mm256_storeu_ps(out + j, o);                                                                            \
      }                                                                                                          \
    }                                                                                                            \
  }
AX5_BODY(F32)
AX5_BODY(F16)
AX5_BODY(BF16)
typedef void (*Kernel)(const Call *, int64_t, int64_t);
/* rows in order (every row, runs): one row at a time; scattered rows (the MV8 calls): four rows at a time */
static const Kernel MVK[4] = { mv_F32, mv_F16, mv_BF16, mv_Q8 };
static const Kernel MV4K[4] = { mv4_F32, mv4_F16, mv4_BF16, mv_Q8 };
static const Kernel AXK[4] = { ax_F32, ax_F16, ax_BF16, ax_Q8 };
/* AVX-512 (q8_0 keeps its AVX2 kernels) */
static const Kernel MV5K[4] = { mv5_F32, mv5_F16, mv5_BF16, mv_Q8 };
static const Kernel AX5K[4] = { ax5_F32, ax5_F16, ax5_BF16, ax_Q8 };
#endif

static int simd = 0; /* the CPU has AVX2, FMA and F16C */
static int wide = 0; /* and AVX-512F: the 16-lane kernels (same bits); setWide(false) turns them off */

static void run_range(const Call *c, int64_t i0, int64_t i1) {
  const int t = c->fn >> 2, ax = (c->fn & 3) >= AX;
#if defined(__x86_64__)
  if (wide) { (ax ? AX5K : MV5K)[t](c, i0, i1); return; }
  if (simd) { (ax ? AXK : (c->fn & 3) == MV8 ? MV4K : MVK)[t](c, i0, i1); return; }
#endif
  scalar_run(c, t, ax, i0, i1);
}

/* chunks [g0, g1) of a chunked axpy: each chunk's rows in order, every column, into its own zeroed partial */
static void run_chunks(const Call *c, int64_t g0, int64_t g1) {
  for (int64_t g = g0; g < g1; g++) {
    Call s = *c;
    float *p = c->part + g * c->d;
    memset(p, 0, (size_t)c->d * sizeof(float));
    s.cs = NULL; s.rows = c->rows + 4 * c->cs[g]; s.x = c->x + 4 * c->cs[g]; s.k = c->cs[g + 1] - c->cs[g];
    s.out = (int64_t)((uintptr_t)p - (uintptr_t)c->base);
    run_range(&s, 0, c->d);
  }
}

static void run_part(const Call *c, int64_t i0, int64_t i1) {
  if (c->cs) run_chunks(c, i0, i1); else run_range(c, i0, i1);
}

/* ---------------------------------------------------------------- the thread pool */
/*
 * Workers spin on a generation counter (SPIN rounds of pause, ~50-100 us), then sleep on a condition variable: the
 * calls of a decode step follow each other within microseconds. One caller at a time (a second JS thread that finds
 * the pool busy runs its call alone).
 */
#define MAX_THREADS 64
#define SPIN 20000
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER, busy = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static atomic_int gen, done, sleepers;
static int started = 0;
static Call job;
static int64_t parts[MAX_THREADS + 1];
static int nparts;
/*
 * Dynamic split (matvecs, row-split axpys): the work is cut into units (rows in multiples of 8; whole chunks of a
 * row-split axpy) that the threads take in turn from a shared counter, so a thread slowed by the VM's other work takes
 * fewer: on this 2-core VM a static half each left the faster thread waiting (llama.cpp's matmuls take chunks the
 * same way). Which thread computes a unit does not change its bits.
 */
static int dyn, active;
static int64_t dunit, dlen;
static atomic_llong dnext;

static void run_dynamic(void) {
  for (;;) {
    const int64_t u = atomic_fetch_add_explicit(&dnext, 1, memory_order_relaxed), i0 = u * dunit;
    if (i0 >= dlen) break;
    run_part(&job, i0, i0 + dunit < dlen ? i0 + dunit : dlen);
  }
}

static void *worker(void *arg) {
  const int id = (int)(intptr_t)arg;
  int seen = 0;
  for (;;) {
    int g;
    for (int s = 0; (g = atomic_load_explicit(&gen, memory_order_acquire)) == seen && s < SPIN; s++) {
#if defined(__x86_64__)
      _mm_pause();
#endif
    }
    if (g == seen) {
      pthread_mutex_lock(&mu);
      atomic_fetch_add(&sleepers, 1);
      while ((g = atomic_load(&gen)) == seen) pthread_cond_wait(&wake, &mu);
      atomic_fetch_sub(&sleepers, 1);
      pthread_mutex_unlock(&mu);
    }
    seen = g;
    if (dyn) { if (id < active) run_dynamic(); }
    else if (id < nparts && parts[id] < parts[id + 1]) run_part(&job, parts[id], parts[id + 1]);
    atomic_fetch_add_explicit(&done, 1, memory_order_release);
  }
  return NULL;
}

static int ensure_threads(int want) {
  while (started < want - 1 && started < MAX_THREADS) {
    pthread_t th;
    if (pthread_create(&th, NULL, worker, (void *)(intptr_t)(started + 1)) != 0) break;
    pthread_detach(th);
    started++;
  }
  return started + 1;
}

/* split [0, len) into T parts of a multiple of `unit` */
static int split(int64_t len, int T, int64_t unit) {
  int64_t step = (len + T - 1) / T;
  step = (step + unit - 1) / unit * unit;
  int m = 0;
  for (int t = 0; t <= T; t++) parts[t] = t * step < len ? t * step : len;
  for (int t = 0; t < T; t++) if (parts[t] < parts[t + 1]) m = t + 1;
  return m;
}

#define PAR_MIN (1 << 15)
#ifndef DU
#define DU 8 /* dynamic units a thread */
#endif

static void run_call(const Call *c, int T) {
  const int ax = (c->fn & 3) >= AX;
  const int64_t len = c->cs ? c->nc : ax ? c->d : c->k; /* chunks, columns or rows */
  if (T > 1 && c->k * c->d >= PAR_MIN && pthread_mutex_trylock(&busy) == 0) {
    T = ensure_threads(T);
    job = *c;
    /* matvecs and row-split axpys: dynamic units, ~8 a thread (rows in multiples of 8); column-split axpys: static */
    dyn = c->cs || !ax; active = T;
    if (dyn) {
      dlen = len;
      dunit = c->cs ? 1 : ((dlen + DU * T - 1) / (DU * T) + 7) / 8 * 8;
      atomic_store_explicit(&dnext, 0, memory_order_relaxed);
    } else nparts = split(len, T, 64);
    const int waiters = started;
    atomic_store(&done, 0);
    pthread_mutex_lock(&mu);
    atomic_fetch_add_explicit(&gen, 1, memory_order_release);
    if (atomic_load(&sleepers)) pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&mu);
    if (dyn) run_dynamic(); else if (parts[0] < parts[1]) run_part(&job, parts[0], parts[1]);
    while (atomic_load_explicit(&done, memory_order_acquire) < waiters) {
#if defined(__x86_64__)
      _mm_pause();
#endif
    }
    pthread_mutex_unlock(&busy);
    return;
  }
  run_part(c, 0, len);
}

/*
 * An axpy over rows in ascending order (dense, lossless, sorted picks) is split by rows instead of columns: the rows
 * are cut into chunks by row id (AXC ids a chunk, so a row's chunk does not depend on which other rows are listed),
 * each chunk's rows are summed in order into a partial of its own (every column: whole rows are read, the
 * contiguous streams a matvec reads), and the partials are added to out in chunk order. The bits depend on the rows
 * and their chunks only: not on the thread count, and a row left out with a zero coefficient changes nothing (the
 * lossless mode). Measured (scripts/kernel-speed.mjs --dram, float16 TinyLlama-width down, 2 threads): a column
 * split reads half a row per thread and stream (2 KiB at d 2048): 11.4 GB/s against the matvec's 16-17.
 */
#ifndef AXC
#define AXC 256
#endif
static int ax_chunked(const Call *c0, int T) {
  const int32_t *rows = (const int32_t *)(c0->base + c0->rows);
  const int64_t k = c0->k, d = c0->d;
  /* scratch per JS thread (the main thread, each worker_threads thread), kept between calls; at most k chunks */
  static __thread int64_t *cs = NULL; static __thread float *part = NULL; static __thread int64_t cap_cs = 0, cap_part = 0;
  if (k + 1 > cap_cs) { int64_t *q = realloc(cs, (size_t)(k + 1) * sizeof(int64_t)); if (!q) return 0; cs = q; cap_cs = k + 1; }
  int64_t G = 0;
  for (int64_t i = 0; i < k; i++) if (i == 0 || rows[i] / AXC != rows[i - 1] / AXC) cs[G++] = i;
  cs[G] = k;
  if (G * d > cap_part) { float *q = NULL; if (posix_memalign((void **)&q, 64, (size_t)(G * d) * sizeof(float)) != 0) return 0; free(part); part = q; cap_part = G * d; }
  Call c = *c0;
  c.cs = cs; c.part = part; c.nc = G;
  run_call(&c, T);
  float *out = (float *)(c.base + c.out);
  for (int64_t g = 0; g < G; g++) { const float *p = part + g * d; for (int64_t j = 0; j < d; j++) out[j] += p[j]; }
  return 1;
}

/* ---------------------------------------------------------------- Node-API */
static napi_value throw_error(napi_env env, const char *msg) { napi_throw_error(env, NULL, msg); return NULL; }

/* run(memory: ArrayBuffer, fn, W, S, rows, k, x, xs, d, n, out, threads) */
static napi_value js_run(napi_env env, napi_callback_info info) {
  size_t argc = 12; napi_value argv[12];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 12) return throw_error(env, "native rows: run takes 12 arguments");
  void *data; size_t len;
  if (napi_get_arraybuffer_info(env, argv[0], &data, &len) != napi_ok) return throw_error(env, "native rows: the first argument is not an ArrayBuffer");
  int64_t v[11];
  for (int i = 0; i < 11; i++) if (napi_get_value_int64(env, argv[i + 1], &v[i]) != napi_ok) return throw_error(env, "native rows: an argument is not a number");
  Call c = { (uint8_t *)data, (int)v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], NULL, NULL, 0 };
  const int T = (int)v[10], t = c.fn >> 2, ax = (c.fn & 3) >= AX;
  /* bounds: an out-of-range offset is a bug in the caller, never a wild read */
  const int64_t L = (int64_t)len, vb = VALUE_BYTES[t];
  int ok = c.fn >= 0 && c.fn < 16 && c.k >= 0 && c.d >= 0 && c.d % 8 == 0 && (t != Q8 || c.d % 32 == 0) && T >= 1
    && c.rows >= 0 && c.rows + 4 * c.k <= L && c.out >= 0 && c.out + 4 * (ax ? c.d : c.k) <= L
    && c.x >= 0 && c.x + (ax ? 4 * c.k : (t == Q8 ? 2 * c.d : 4 * c.d)) <= L && c.n >= c.d * vb;
  if (ok && t == Q8 && !ax) ok = c.xs >= 0 && c.xs + c.d / 8 <= L;
  int ascending = 1;
  if (ok) {
    const int32_t *rows = (const int32_t *)((uint8_t *)data + c.rows);
    int32_t mx = -1;
    for (int64_t i = 0; i < c.k; i++) { if (rows[i] < 0) { ok = 0; break; } if (rows[i] <= mx) ascending = 0; if (rows[i] > mx) mx = rows[i]; }
    if (ok && mx >= 0) ok = c.W >= 0 && c.W + (int64_t)mx * c.n + c.d * vb <= L && (t != Q8 || (c.S >= 0 && c.S + (int64_t)mx * (c.n / 8) + c.d / 8 <= L));
  }
  if (!ok) return throw_error(env, "native rows: arguments out of the arena's bounds");
  if (!(ax && ascending && c.k > 0 && ax_chunked(&c, T))) run_call(&c, T);
  return NULL;
}

/*
 * advise(memory: ArrayBuffer): transparent huge pages for the arena's 2 MiB-aligned pages that are not touched yet
 * (Linux: MADV_HUGEPAGE, where THP is "madvise"). A decode step reads every weight once: with 4 KiB pages that is a
 * TLB miss every 4 KiB (a TinyLlama-width float16 row is exactly one page). Returns whether the kernel took it.
 */
static napi_value js_advise(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1], r;
  void *data; size_t len;
  int ok = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc == 1 && napi_get_arraybuffer_info(env, argv[0], &data, &len) == napi_ok) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t H = (uintptr_t)2 << 20, b = ((uintptr_t)data + H - 1) & ~(H - 1), e = ((uintptr_t)data + len) & ~(H - 1);
    ok = e > b && madvise((void *)b, e - b, MADV_HUGEPAGE) == 0;
#endif
  }
  napi_get_boolean(env, ok, &r);
  return r;
}

/* ---------------------------------------------------------------- SiLU */
/*
 * out[j] = silu(g[j]) (* a[j] when a is given), silu(x) = x / (1 + e^-x), e^x in float32: x = n ln2 + r (Cody-Waite
 * ln2 split), e^r by its degree-6 Taylor polynomial (|r| <= ln2 / 2: error below 2 float32 ulps), scaled by 2^n
 * through the exponent bits. Hand-written because the decode step's SiLU through Math.exp took a TinyLlama-width
 * step 1.5-2.3 ms (45,056 values) on this 2-core VM, 3-5% of the step. Each value goes through the same 8-lane
 * code (a tail is padded into a vector), so a value's result does not depend on n or on its place.
 */
#if defined(__x86_64__)
SIMD static inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
SIMD static inline __m256 silu8(__m256 g) {
  return _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
}
SIMD static void silu_avx(const float *g, const float *a, float *out, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 v = silu8(_mm256_loadu_ps(g + j));
    if (a) v = _mm256_mul_ps(v, _mm256_loadu_ps(a + j));
    _mm256_storeu_ps(out + j, v);
  }
  if (j < n) {
    float tg[8] = { 0 }, ta[8] = { 0 }, to[8];
    memcpy(tg, g + j, (size_t)(n - j) * 4);
    if (a) memcpy(ta, a + j, (size_t)(n - j) * 4);
    __m256 v = silu8(_mm256_loadu_ps(tg));
    if (a) v = _mm256_mul_ps(v, _mm256_loadu_ps(ta));
    _mm256_storeu_ps(to, v);
    memcpy(out + j, to, (size_t)(n - j) * 4);
  }
}
#endif

static int f32_arg(napi_env env, napi_value v, float **p, size_t *n) {
  napi_typedarray_type t; void *data; size_t len;
  if (napi_get_typedarray_info(env, v, &t, &len, &data, NULL, NULL) != napi_ok || t != napi_float32_array) return 0;
  *p = (float *)data; *n = len;
  return 1;
}

/* silu(g: Float32Array, a: Float32Array | null, out: Float32Array, n): out[0, n) = silu(g) (* a); out may be g or a */
static napi_value js_silu(napi_env env, napi_callback_info info) {
  size_t argc = 4; napi_value argv[4];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 4) return throw_error(env, "native rows: silu takes 4 arguments");
  float *g, *a = NULL, *out; size_t ng, na = 0, no; int64_t n;
  napi_valuetype at;
  napi_typeof(env, argv[1], &at);
  if (!f32_arg(env, argv[0], &g, &ng) || !f32_arg(env, argv[2], &out, &no) || (at != napi_null && !f32_arg(env, argv[1], &a, &na))
      || napi_get_value_int64(env, argv[3], &n) != napi_ok) return throw_error(env, "native rows: silu(g: Float32Array, a: Float32Array | null, out: Float32Array, n)");
  if (n < 0 || (size_t)n > ng || (size_t)n > no || (a && (size_t)n > na)) return throw_error(env, "native rows: silu: n past an array's end");
#if defined(__x86_64__)
  if (simd) { silu_avx(g, a, out, n); return NULL; }
#endif
  return throw_error(env, "native rows: silu needs AVX2 / FMA");
}

/* ---------------------------------------------------------------- q8_0 quantization at load */
/*
 * q8(src: Float32Array | Uint16Array (float16 bits), q: Int8Array, s: Float32Array): the q8_0 blocks of src, the same
 * bits as kernels.ts quantizeQ8 (s = max|w| / 127 in double, stored as float32; q = Math.round(w / fround(s)) in
 * double, ties toward +inf, clamped to +-127); false (nothing written past the first non-finite block) where a value
 * is inf or NaN. Hand-written because quantizing in JS took a TinyLlama-width load 15-20 s of its 21 s on this VM
 * (AVX2: the products and rounding in double lanes, as JS computes them).
 */
#if defined(__x86_64__)
/* one q8_0 block of 32 values (w: float32 or float16 bits), quantizeQ8's arithmetic; 0 where a value is not finite */
SIMD static int q8_block(const uint8_t *w, int t, int8_t *q, float *sc) {
  __m256 v[4];
  for (int u = 0; u < 4; u++) v[u] = t == F32 ? _mm256_loadu_ps((const float *)w + 8 * u) : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + 8 * u)));
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i expm = _mm256_set1_epi32(0x7f800000);
  __m256 m = _mm256_setzero_ps();
  for (int u = 0; u < 4; u++) {
    const __m256i e = _mm256_and_si256(_mm256_castps_si256(v[u]), expm);
    if (_mm256_movemask_epi8(_mm256_cmpeq_epi32(e, expm))) return 0;
    m = _mm256_max_ps(m, _mm256_and_ps(v[u], absm));
  }
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h)); h = _mm_max_ss(h, _mm_movehdup_ps(h));
  const double sd = (double)_mm_cvtss_f32(h) / 127;
  *sc = (float)sd;
  const __m256d inv = _mm256_set1_pd(sd > 0 ? 1.0 / (double)(float)sd : 0), half = _mm256_set1_pd(0.5), one = _mm256_set1_pd(1), hi = _mm256_set1_pd(127), lo = _mm256_set1_pd(-127);
  int32_t o[32];
  for (int u = 0; u < 4; u++)
    for (int k = 0; k < 2; k++) {
      const __m256d x = _mm256_mul_pd(_mm256_cvtps_pd(k ? _mm256_extractf128_ps(v[u], 1) : _mm256_castps256_ps128(v[u])), inv);
      const __m256d r = _mm256_floor_pd(x);
      __m256d y = _mm256_add_pd(r, _mm256_and_pd(_mm256_cmp_pd(_mm256_sub_pd(x, r), half, _CMP_GE_OQ), one));
      y = _mm256_max_pd(_mm256_min_pd(y, hi), lo);
      _mm_storeu_si128((__m128i *)(o + 8 * u + 4 * k), _mm256_cvtpd_epi32(y));
    }
  for (int j = 0; j < 32; j++) q[j] = (int8_t)o[j];
  return 1;
}
#endif

static napi_value js_q8(napi_env env, napi_callback_info info) {
  size_t argc = 3; napi_value argv[3], res;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3) return throw_error(env, "native rows: q8 takes 3 arguments");
  napi_typedarray_type ts, tq, tsc; void *ds, *dq, *dsc; size_t ns, nq, nsc;
  if (napi_get_typedarray_info(env, argv[0], &ts, &ns, &ds, NULL, NULL) != napi_ok || napi_get_typedarray_info(env, argv[1], &tq, &nq, &dq, NULL, NULL) != napi_ok
      || napi_get_typedarray_info(env, argv[2], &tsc, &nsc, &dsc, NULL, NULL) != napi_ok || (ts != napi_float32_array && ts != napi_uint16_array)
      || tq != napi_int8_array || tsc != napi_float32_array || ns % 32 != 0 || nq != ns || nsc != ns / 32)
    return throw_error(env, "native rows: q8(src: Float32Array | Uint16Array, q: Int8Array, s: Float32Array) with src.length = q.length = 32 s.length");
  const int t = ts == napi_float32_array ? F32 : F16;
#if defined(__x86_64__)
  if (simd) {
    int ok = 1;
    for (size_t b = 0; b < nsc && ok; b++) ok = q8_block((const uint8_t *)ds + 32 * b * (t == F32 ? 4 : 2), t, (int8_t *)dq + 32 * b, (float *)dsc + b);
    napi_get_boolean(env, ok, &res);
    return res;
  }
#endif
  (void)t;
  return throw_error(env, "native rows: q8 needs AVX2 / F16C");
}

/* info(): { simd: 'avx2' | 'none', wide: whether the AVX-512 row kernels run, maxThreads } */
static napi_value js_info(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value o, s, w, m;
  napi_create_object(env, &o);
  napi_create_string_utf8(env, simd ? "avx2" : "none", NAPI_AUTO_LENGTH, &s);
  napi_get_boolean(env, wide, &w);
  napi_create_int32(env, MAX_THREADS + 1, &m);
  napi_set_named_property(env, o, "simd", s);
  napi_set_named_property(env, o, "wide", w);
  napi_set_named_property(env, o, "maxThreads", m);
  return o;
}

/* setWide(on): the AVX-512 row kernels on (where the CPU has AVX-512F) or off (the AVX2 ones); returns whether they run */
static napi_value js_set_wide(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1], r;
  bool on = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 || napi_get_value_bool(env, argv[0], &on) != napi_ok)
    return throw_error(env, "native rows: setWide takes a boolean");
  wide = 0;
#if defined(__x86_64__)
  wide = on && simd && __builtin_cpu_supports("avx512f");
#endif
  napi_get_boolean(env, wide, &r);
  return r;
}

NAPI_MODULE_INIT() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  simd = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  wide = simd && __builtin_cpu_supports("avx512f");
#endif
  napi_value f;
  napi_create_function(env, "run", NAPI_AUTO_LENGTH, js_run, NULL, &f);
  napi_set_named_property(env, exports, "run", f);
  napi_create_function(env, "advise", NAPI_AUTO_LENGTH, js_advise, NULL, &f);
  napi_set_named_property(env, exports, "advise", f);
  napi_create_function(env, "q8", NAPI_AUTO_LENGTH, js_q8, NULL, &f);
  napi_set_named_property(env, exports, "q8", f);
  napi_create_function(env, "silu", NAPI_AUTO_LENGTH, js_silu, NULL, &f);
  napi_set_named_property(env, exports, "silu", f);
  napi_create_function(env, "info", NAPI_AUTO_LENGTH, js_info, NULL, &f);
  napi_set_named_property(env, exports, "info", f);
  napi_create_function(env, "setWide", NAPI_AUTO_LENGTH, js_set_wide, NULL, &f);
  napi_set_named_property(env, exports, "setWide", f);
  return exports;
}
