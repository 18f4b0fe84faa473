/*
 * collect's GPU reads copied out of Dawn's mapped staging buffer on native threads (a Node-API addon, built at install
 * by scripts/build-native.mjs beside rows.node; without it the copy runs in JavaScript on the collecting thread).
 *
 * Why native: on the GPU box (H200, NVIDIA 580 Vulkan) the copy out of the mapped staging buffers bounded collect at
 * OPT-1.3B widths: tfjs-webgpu's getMappedRange().slice(0) ran at 1.1-1.2 GB/s on the collecting thread, 1.66 s of
 * every 8,192-token batch (1.84 GB). The mapping reads at 5.1 GB/s into a touched buffer: what is slow is the first
 * touch of the fresh destination (a page fault and zeroing every 4 KiB; a heap-to-fresh slice is as slow), and a
 * mapped ArrayBuffer cannot move to a worker thread (unmap detaches it). Here the copy runs beside the event loop on
 * up to 16 POSIX threads into destinations advised to huge pages: a batch's 24 layers in 219 ms on 8 threads
 * (8.2 GB/s) against 1.45-1.52 s for the same copy in JavaScript (docs/gpu.md, fourth session).
 *
 * copy(src: ArrayBuffer, offsets: number[], dsts: ArrayBuffer[], threads): Promise<void> -- dsts[i] gets the bytes of
 * src from offsets[i] (its whole length); the caller keeps src mapped and the dsts untouched until it settles.
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__linux__) && defined(__x86_64__) && defined(__GLIBC__)
/* the oldest versions of these symbols: the addon then loads on a glibc older than the one it was built on */
__asm__(".symver pthread_create,pthread_create@GLIBC_2.2.5");
__asm__(".symver pthread_join,pthread_join@GLIBC_2.2.5");
#endif

enum { MAX_THREADS = 16, MAX_PARTS = 4096 };
typedef struct { const uint8_t *src; uint8_t *dst; size_t n; } Part;
typedef struct {
  napi_async_work work; napi_deferred deferred; napi_ref refs[MAX_PARTS + 1]; int nrefs;
  Part parts[MAX_PARTS]; int nparts; int threads; size_t total;
} Job;
typedef struct { Job *job; size_t from, to; } Slice;

/* copy the bytes [from, to) of the parts laid end to end */
static void *copy_slice(void *arg) {
  const Slice *s = (const Slice *)arg;
  size_t at = 0;
  for (int i = 0; i < s->job->nparts && at < s->to; i++) {
    const Part *p = &s->job->parts[i];
    const size_t b = s->from > at ? s->from - at : 0, e = s->to - at < p->n ? s->to - at : p->n;
    if (b < e) memcpy(p->dst + b, p->src + b, e - b);
    at += p->n;
  }
  return NULL;
}

static void execute(napi_env env, void *data) {
  (void)env;
  Job *j = (Job *)data;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  /* the dsts are fresh allocations: their first touch faults every 4 KiB page in (on 2 cores here a fresh dst took the
   * copy from 3.7 to 0.95 GB/s); transparent huge pages for their untouched 2 MiB pages, where THP is "madvise" */
  for (int i = 0; i < j->nparts; i++) {
    const uintptr_t H = (uintptr_t)2 << 20, b = ((uintptr_t)j->parts[i].dst + H - 1) & ~(H - 1), e = ((uintptr_t)j->parts[i].dst + j->parts[i].n) & ~(H - 1);
    if (e > b) madvise((void *)b, e - b, MADV_HUGEPAGE);
  }
#endif
  pthread_t th[MAX_THREADS];
  Slice sl[MAX_THREADS];
  const int T = j->threads;
  /* slices of whole 64 KiB blocks, so no two threads share a cache line */
  const size_t blk = 65536, blocks = (j->total + blk - 1) / blk;
  int made[MAX_THREADS] = { 0 };
  for (int t = 0; t < T; t++) {
    sl[t].job = j;
    sl[t].from = blocks * t / T * blk; sl[t].to = blocks * (t + 1) / T * blk;
    if (sl[t].from > j->total) sl[t].from = j->total;
    if (sl[t].to > j->total) sl[t].to = j->total;
  }
  /* the last slice on this (libuv) thread; a thread that cannot start copies its slice here too */
  for (int t = 0; t < T - 1; t++) made[t] = pthread_create(&th[t], NULL, copy_slice, &sl[t]) == 0;
  copy_slice(&sl[T - 1]);
  for (int t = 0; t < T - 1; t++) { if (made[t]) pthread_join(th[t], NULL); else copy_slice(&sl[t]); }
}

static void complete(napi_env env, napi_status status, void *data) {
  Job *j = (Job *)data;
  napi_value u;
  napi_get_undefined(env, &u);
  if (status == napi_ok) napi_resolve_deferred(env, j->deferred, u);
  else { napi_value m, e; napi_create_string_utf8(env, "native readback: the copy was cancelled", NAPI_AUTO_LENGTH, &m); napi_create_error(env, NULL, m, &e); napi_reject_deferred(env, j->deferred, e); }
  for (int i = 0; i < j->nrefs; i++) napi_delete_reference(env, j->refs[i]);
  napi_delete_async_work(env, j->work);
  free(j);
}

static napi_value fail(napi_env env, Job *j, const char *msg) {
  if (j) { for (int i = 0; i < j->nrefs; i++) napi_delete_reference(env, j->refs[i]); free(j); }
  napi_throw_error(env, NULL, msg);
  return NULL;
}

static napi_value js_copy(napi_env env, napi_callback_info info) {
  size_t argc = 4; napi_value argv[4];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 4) return fail(env, NULL, "native readback: copy(src, offsets, dsts, threads)");
  Job *j = (Job *)calloc(1, sizeof(Job));
  if (!j) return fail(env, NULL, "native readback: out of memory");
  void *src; size_t srcLen; uint32_t n, m; int32_t T;
  if (napi_get_arraybuffer_info(env, argv[0], &src, &srcLen) != napi_ok) return fail(env, j, "native readback: src is not an ArrayBuffer");
  if (napi_get_array_length(env, argv[1], &n) != napi_ok || napi_get_array_length(env, argv[2], &m) != napi_ok || n != m || n > MAX_PARTS)
    return fail(env, j, "native readback: offsets and dsts must be arrays of the same length (at most 4096)");
  if (napi_get_value_int32(env, argv[3], &T) != napi_ok || T < 1) return fail(env, j, "native readback: threads must be a positive integer");
  j->threads = T > MAX_THREADS ? MAX_THREADS : T;
  napi_create_reference(env, argv[0], 1, &j->refs[j->nrefs++]);
  for (uint32_t i = 0; i < n; i++) {
    napi_value o, d; int64_t off; void *dst; size_t len;
    if (napi_get_element(env, argv[1], i, &o) != napi_ok || napi_get_value_int64(env, o, &off) != napi_ok) return fail(env, j, "native readback: an offset is not a number");
    if (napi_get_element(env, argv[2], i, &d) != napi_ok || napi_get_arraybuffer_info(env, d, &dst, &len) != napi_ok) return fail(env, j, "native readback: a dst is not an ArrayBuffer");
    /* bounds: an out-of-range offset is a bug in the caller, never a wild read */
    if (off < 0 || (uint64_t)off + len > srcLen) return fail(env, j, "native readback: a part lies outside src");
    napi_create_reference(env, d, 1, &j->refs[j->nrefs++]);
    j->parts[j->nparts++] = (Part){ (const uint8_t *)src + off, (uint8_t *)dst, len };
    j->total += len;
  }
  napi_value promise, name;
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_string_utf8(env, "dejavu readback", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, execute, complete, j, &j->work) != napi_ok || napi_queue_async_work(env, j->work) != napi_ok)
    return fail(env, j, "native readback: could not queue the copy");
  return promise;
}

NAPI_MODULE_INIT() {
  napi_value f;
  napi_create_function(env, "copy", NAPI_AUTO_LENGTH, js_copy, NULL, &f);
  napi_set_named_property(env, exports, "copy", f);
  return exports;
}
