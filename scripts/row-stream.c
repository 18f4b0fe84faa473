/*
 * A standalone float16 matvec stream (not part of the package): the read rate of row-kernel variants over a 553 MB
 * matrix set (24 x 5632 x 2048 halves, more than the L3), on T threads, best and median of 7. It is where the native
 * kernels' AVX-512 layout (eight rows at a time, one prefetch per cache line) and the arena's 4 KiB alignment come
 * from (docs/decode-runtime.md, Kernels).
 *   gcc -O3 -pthread scripts/row-stream.c -o /tmp/row-stream && SYNC=1 /tmp/row-stream VARIANT [PREFETCH_BYTES] [THREADS]
 * VARIANT: 0 the AVX2 one-row kernel (a prefetch every 32 bytes), 1/2/3 AVX-512 one row (prefetch hint T0/T1/T2),
 * 4 a plain read, 5 AVX-512 two rows, 6 AVX2 two rows, 7 AVX-512 four rows, 8 AVX2 one row (a prefetch a line),
 * 9 AVX2 four rows, 10 AVX-512 eight rows (the kernel's layout), 11 four rows (T1), 12 sixteen rows.
 * SYNC=1: the threads meet after every matrix (as a decode step's calls do); OFF=N: rows N bytes off a 4 KiB page;
 * NOHUGE=1: no transparent huge pages.
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#define N 5632
#define D 2048
#define M 24   /* matrices: 24*23 MB = 553 MB */
static uint16_t *W; static float X[D]; static float OUT[N*M];
static int variant, dist = 512;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
__attribute__((target("avx2,fma,f16c"))) static float hs(__m256 v){__m128 s=_mm_add_ps(_mm256_castps256_ps128(v),_mm256_extractf128_ps(v,1));s=_mm_add_ps(s,_mm_movehl_ps(s,s));s=_mm_add_ss(s,_mm_movehdup_ps(s));return _mm_cvtss_f32(s);}
__attribute__((target("avx2,fma,f16c"))) static void v0(const uint16_t*w,float*o,int r0,int r1){
  for(int i=r0;i<r1;i++){const uint16_t*p=w+(int64_t)i*D; if(i+1<r1)_mm_prefetch((const char*)(p+D),_MM_HINT_T0);
    __m256 a=_mm256_setzero_ps(),b=a; for(int j=0;j<D;j+=16){ if(dist)_mm_prefetch((const char*)(p+j)+dist,_MM_HINT_T0);
      a=_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p+j))),_mm256_loadu_ps(X+j),a);
      b=_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p+j+8))),_mm256_loadu_ps(X+j+8),b);}
    o[i]=hs(_mm256_add_ps(a,b));}}
/* avx512: one cache line (32 halves) per step, one prefetch per line, hint by variant */
#define V512(NAME,HINT) __attribute__((target("avx512f,avx512bw,fma,f16c"))) static void NAME(const uint16_t*w,float*o,int r0,int r1){ \
  for(int i=r0;i<r1;i++){const uint16_t*p=w+(int64_t)i*D; \
    __m512 a=_mm512_setzero_ps(),b=a; for(int j=0;j<D;j+=32){ if(dist)_mm_prefetch((const char*)(p+j)+dist,HINT); \
      a=_mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p+j))),_mm512_loadu_ps(X+j),a); \
      b=_mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p+j+16))),_mm512_loadu_ps(X+j+16),b);} \
    o[i]=_mm512_reduce_add_ps(_mm512_add_ps(a,b));}}
V512(v1,_MM_HINT_T0)
V512(v2,_MM_HINT_T1)
V512(v3,_MM_HINT_T2)
/* pure read */
__attribute__((target("avx512f"))) static void vr(const uint16_t*w,float*o,int r0,int r1){
  __m512i a=_mm512_setzero_si512(); const __m512i*p=(const __m512i*)(w+(int64_t)r0*D),*e=(const __m512i*)(w+(int64_t)r1*D);
  for(;p<e;p+=2){a=_mm512_xor_si512(a,_mm512_load_si512(p)); a=_mm512_xor_si512(a,_mm512_load_si512(p+1));}
  o[r0]=(float)_mm512_reduce_add_epi32(a);}
/* 2 rows interleaved avx512 */
__attribute__((target("avx512f,avx512bw,fma,f16c"))) static void v4(const uint16_t*w,float*o,int r0,int r1){
  int i=r0; for(;i+2<=r1;i+=2){const uint16_t*p=w+(int64_t)i*D,*q=p+D;
    __m512 a=_mm512_setzero_ps(),b=a; for(int j=0;j<D;j+=32){ if(dist){_mm_prefetch((const char*)(p+j)+dist,_MM_HINT_T0);_mm_prefetch((const char*)(q+j)+dist,_MM_HINT_T0);}
      __m512 x=_mm512_loadu_ps(X+j),y=_mm512_loadu_ps(X+j+16);
      a=_mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p+j))),x,a); a=_mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p+j+16))),y,a);
      b=_mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(q+j))),x,b); b=_mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(q+j+16))),y,b);}
    o[i]=_mm512_reduce_add_ps(a); o[i+1]=_mm512_reduce_add_ps(b);}}
__attribute__((target("avx2,fma,f16c"))) static void v6(const uint16_t*w,float*o,int r0,int r1){
  int i=r0; for(;i+2<=r1;i+=2){const uint16_t*p=w+(int64_t)i*D,*q=p+D;
    __m256 a=_mm256_setzero_ps(),b=a,c=a,e=a; for(int j=0;j<D;j+=32){ if(dist){_mm_prefetch((const char*)(p+j)+dist,_MM_HINT_T0);_mm_prefetch((const char*)(q+j)+dist,_MM_HINT_T0);}
      for(int u=0;u<32;u+=16){__m256 x=_mm256_loadu_ps(X+j+u),y=_mm256_loadu_ps(X+j+u+8);
      a=_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p+j+u))),x,a); b=_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p+j+u+8))),y,b);
      c=_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(q+j+u))),x,c); e=_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(q+j+u+8))),y,e);}}
    o[i]=hs(_mm256_add_ps(a,b)); o[i+1]=hs(_mm256_add_ps(c,e));}}
__attribute__((target("avx2,fma,f16c"))) static void v8(const uint16_t*w,float*o,int r0,int r1){
  for(int i=r0;i<r1;i++){const uint16_t*p=w+(int64_t)i*D;
    __m256 a=_mm256_setzero_ps(),b=a; for(int j=0;j<D;j+=32){ if(dist)_mm_prefetch((const char*)(p+j)+dist,_MM_HINT_T0);
      for(int u=0;u<32;u+=16){
      a=_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p+j+u))),_mm256_loadu_ps(X+j+u),a);
      b=_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p+j+u+8))),_mm256_loadu_ps(X+j+u+8),b);}}
    o[i]=hs(_mm256_add_ps(a,b));}}
__attribute__((target("avx512f,avx512bw,fma,f16c"))) static void v7(const uint16_t*w,float*o,int r0,int r1){
  int i=r0; for(;i+4<=r1;i+=4){const uint16_t*p[4]; for(int r=0;r<4;r++)p[r]=w+(int64_t)(i+r)*D;
    __m512 a[4]={_mm512_setzero_ps(),_mm512_setzero_ps(),_mm512_setzero_ps(),_mm512_setzero_ps()}; for(int j=0;j<D;j+=32){ 
      __m512 x=_mm512_loadu_ps(X+j),y=_mm512_loadu_ps(X+j+16);
      for(int r=0;r<4;r++){ if(dist)_mm_prefetch((const char*)(p[r]+j)+dist,_MM_HINT_T0);
      a[r]=_mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p[r]+j))),x,a[r]); a[r]=_mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p[r]+j+16))),y,a[r]);}}
    for(int r=0;r<4;r++)o[i+r]=_mm512_reduce_add_ps(a[r]);}}
static int HR=4;
__attribute__((target("avx2,fma,f16c"))) static void v9(const uint16_t*w,float*o,int r0,int r1){
  int i=r0; for(;i+4<=r1;i+=4){const uint16_t*p[4]; for(int r=0;r<4;r++)p[r]=w+(int64_t)(i+r)*D;
    __m256 a[4],b[4]; for(int r=0;r<4;r++){a[r]=_mm256_setzero_ps();b[r]=a[r];}
    for(int j=0;j<D;j+=32){ for(int r=0;r<4;r++) if(dist)_mm_prefetch((const char*)(p[r]+j)+dist,_MM_HINT_T0);
      for(int u=0;u<32;u+=16){__m256 x=_mm256_loadu_ps(X+j+u),y=_mm256_loadu_ps(X+j+u+8);
      for(int r=0;r<4;r++){a[r]=_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p[r]+j+u))),x,a[r]); b[r]=_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p[r]+j+u+8))),y,b[r]);}}}
    for(int r=0;r<4;r++)o[i+r]=hs(_mm256_add_ps(a[r],b[r]));}}
__attribute__((target("avx512f,avx512bw,fma,f16c"))) static void v10(const uint16_t*w,float*o,int r0,int r1){
  int i=r0; for(;i+8<=r1;i+=8){const uint16_t*p[8]; for(int r=0;r<8;r++)p[r]=w+(int64_t)(i+r)*D;
    __m512 a[8]; for(int r=0;r<8;r++)a[r]=_mm512_setzero_ps(); for(int j=0;j<D;j+=32){ 
      __m512 x=_mm512_loadu_ps(X+j),y=_mm512_loadu_ps(X+j+16);
      for(int r=0;r<8;r++){ if(dist)_mm_prefetch((const char*)(p[r]+j)+dist,_MM_HINT_T0);
      a[r]=_mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p[r]+j))),x,a[r]); a[r]=_mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p[r]+j+16))),y,a[r]);}}
    for(int r=0;r<8;r++)o[i+r]=_mm512_reduce_add_ps(a[r]);}}
__attribute__((target("avx512f,avx512bw,fma,f16c"))) static void v11(const uint16_t*w,float*o,int r0,int r1){
  int i=r0; for(;i+4<=r1;i+=4){const uint16_t*p[4]; for(int r=0;r<4;r++)p[r]=w+(int64_t)(i+r)*D;
    __m512 a[4]={_mm512_setzero_ps(),_mm512_setzero_ps(),_mm512_setzero_ps(),_mm512_setzero_ps()}; for(int j=0;j<D;j+=32){ 
      __m512 x=_mm512_loadu_ps(X+j),y=_mm512_loadu_ps(X+j+16);
      for(int r=0;r<4;r++){ if(dist)_mm_prefetch((const char*)(p[r]+j)+dist,_MM_HINT_T1);
      a[r]=_mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p[r]+j))),x,a[r]); a[r]=_mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p[r]+j+16))),y,a[r]);}}
    for(int r=0;r<4;r++)o[i+r]=_mm512_reduce_add_ps(a[r]);}}
__attribute__((target("avx512f,avx512bw,fma,f16c"))) static void v12(const uint16_t*w,float*o,int r0,int r1){
  int i=r0; for(;i+16<=r1;i+=16){const uint16_t*p[16]; for(int r=0;r<16;r++)p[r]=w+(int64_t)(i+r)*D;
    __m512 a[16]; for(int r=0;r<16;r++)a[r]=_mm512_setzero_ps(); for(int j=0;j<D;j+=32){ 
      __m512 x=_mm512_loadu_ps(X+j),y=_mm512_loadu_ps(X+j+16);
      for(int r=0;r<16;r++){ if(dist)_mm_prefetch((const char*)(p[r]+j)+dist,_MM_HINT_T0);
      a[r]=_mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p[r]+j))),x,a[r]); a[r]=_mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p[r]+j+16))),y,a[r]);}}
    for(int r=0;r<16;r++)o[i+r]=_mm512_reduce_add_ps(a[r]);}}
typedef void(*K)(const uint16_t*,float*,int,int);
static K ks[]={v0,v1,v2,v3,vr,v4,v6,v7,v8,v9,v10,v11,v12};
static int T=2; static pthread_barrier_t bar,bar2; static int iters=7;
static void* th(void*arg){int id=(int)(intptr_t)arg; for(int it=0;it<iters;it++){pthread_barrier_wait(&bar); for(int m=0;m<M;m++){int h=N/T; ks[variant](W+(int64_t)m*N*D,OUT+m*N,id*h,(id+1)*h); if(getenv("SYNC"))pthread_barrier_wait(&bar2);} pthread_barrier_wait(&bar);} return 0;}
int main(int c,char**v){variant=atoi(v[1]); if(c>2)dist=atoi(v[2]); if(c>3)T=atoi(v[3]);
  size_t bytes=(size_t)M*N*D*2; W=aligned_alloc(1<<21,bytes+4096); if(getenv("OFF"))W=(uint16_t*)((char*)W+atoi(getenv("OFF"))); if(!getenv("NOHUGE"))madvise(W,bytes,MADV_HUGEPAGE);
  for(size_t i=0;i<(size_t)M*N*D;i++)W[i]=0x3c00^(i&0xff); for(int j=0;j<D;j++)X[j]=1.0f/(j+1);
  pthread_barrier_init(&bar,0,T+1);pthread_barrier_init(&bar2,0,T); pthread_t t[8]; for(int i=0;i<T;i++)pthread_create(&t[i],0,th,(void*)(intptr_t)i);
  double best=1e9,ts[16]; for(int it=0;it<iters;it++){pthread_barrier_wait(&bar);double t0=now();pthread_barrier_wait(&bar);double dt=now()-t0; ts[it]=dt; if(dt<best)best=dt;}
  for(int a=0;a<iters;a++)for(int b=a+1;b<iters;b++)if(ts[b]<ts[a]){double q=ts[a];ts[a]=ts[b];ts[b]=q;}
  printf("variant %d dist %d T %d: best %.1f median %.1f GB/s\n",variant,dist,T,bytes/best/1e9,bytes/ts[iters/2]/1e9); return 0;}
