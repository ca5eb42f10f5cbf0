/* minicnn's C engine: the one translation unit.
 *
 * It instantiates the SIMD microkernels (tmpl_microkernel.h) once per instruction set and
 * dtype, picks the best set this CPU supports at load time (a runtime CPUID check, so one
 * binary runs everywhere: no -march=native), and instantiates the drivers (tmpl_driver.h)
 * for float32 and float64. OpenMP is used when the build enabled it (-fopenmp); without it
 * everything runs on one thread and the source is unchanged.
 */
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__GLIBC__) || defined(__linux__)
#include <malloc.h>
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#endif

#include "minicnn_kernels.h"

#ifndef MC_BUILD_FLAGS
#define MC_BUILD_FLAGS "unknown"
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MC_X86 1
#else
#define MC_X86 0
#endif

/* The optimizer updates round every operation separately, like the NumPy ufuncs they mirror:
 * no a*b+c contraction into FMA there (-ffp-contract=fast stays on for the kernels). Other
 * compilers may contract: the results then differ from NumPy's by a rounding. */
#if defined(__GNUC__) && !defined(__clang__)
#define MK_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define MK_NO_CONTRACT
#endif

/* Debug builds (MINICNN_EXTRA_CFLAGS=-DMC_DEBUG) check that every workspace region a step
 * takes lies inside its plan and the caller's workspace, and abort with the failed condition.
 * Not assert(): Python's own flags define NDEBUG. */
#ifdef MC_DEBUG
#include <stdio.h>
#include <stdlib.h>
#define MC_ASSERT(cond)                                                                       \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "minicnn C engine: %s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                                   \
            abort();                                                                          \
        }                                                                                     \
    } while (0)
#else
#define MC_ASSERT(cond) ((void)0)
#endif

/* Tallest tile of any microkernel instance (rows kept in registers). */
#define MK_MRMAX 12
/* Below this many multiply-adds (or element visits) a call runs on one thread: waking the
 * others costs more than it saves (microseconds; a time slice when another process holds a
 * core). */
#define MC_PARALLEL_MIN_WORK ((int64_t)1 << 17)
/* Most threads (and so per-thread workspace regions) a call uses. */
#define MC_MAX_PARTS 64
/* Most cells of a max-pool window that a convolution's passes take over (the fused
 * convolution + max pool, csrc/tmpl_conv_pool.h): 4x4. */
#define MC_POOL_FUSE_CELLS 16
/* How a max-pool window kernel (mk_pool_window) starts its running maximum: from its first
 * cell, from a padding cell (-inf, index -1), or from what an earlier call for the same window
 * left in the output (windows of more than MC_POOL_WINDOW_CELLS cells). */
enum { MK_POOL_FROM_FIRST, MK_POOL_FROM_PADDING, MK_POOL_CONTINUE };
#define MC_POOL_WINDOW_CELLS 16
/* The fused forward runs the convolution on chunks of images whose output is about this many
 * bytes, so the pool reads it while it is still in the caches (docs/performance.md). */
#define MC_FUSE_CHUNK_BYTES ((int64_t)1 << 20)
/* A forward that keeps no padded input (inference) pads a group of images whose frames are
 * about this many bytes into the workspace, convolves them while they are still in the caches,
 * and reuses the frames for the next group: a stride-2 layer's 32 -> 64 forward took 16-20%
 * less time per image than padding the whole batch first (docs/performance.md, "Inference
 * without the padded copy"). */
#define MC_FORWARD_GROUP_BYTES ((int64_t)1 << 20)
/* Winograd pays off once the channels its GEMMs reduce over are this many (measured:
 * docs/performance.md); the passes decide separately. */
#define MC_WINO_MIN_CHANNELS 16
/* ... and its kernel gradient once C_in or the filters are this many as well: with 32 and 32 the
 * direct kernel gradient was 7-29% faster (28x28, 32 -> 32 at batch 128: 4.9 vs 6.4 ms), with 64
 * on either side Winograd 8-29% (docs/performance.md, "the kernel gradient's threshold"). */
#define MC_WINO_DK_WIDE_CHANNELS 64
/* Winograd F(2x2, 5x5) spends 36 GEMM cells per 2x2 outputs against the direct 100 multiply-adds,
 * but its transforms cost more than F(2x2, 3x3)'s, so it needs wider GEMMs (measured with
 * benchmarks/bench_conv_algorithms.py; the table is in docs/performance.md, "Winograd for 5x5"):
 * forward when C_in and F reach MC_WINO5_FWD_CHANNELS (Winograd / direct time at 14x14, batch
 * 128: 24 -> 24 1.0-1.3, 32 -> 32 0.78-0.96, 48 -> 48 0.6-0.8), the kernel gradient when both
 * reach MC_WINO5_DK_CHANNELS (32 -> 32 0.85-0.99, 48 -> 48 0.69-0.80), the input gradient when
 * F reaches MC_WINO5_DX_CHANNELS (16: 1.16-1.21, 24: 0.87-1.04, 32: 0.62-0.75). */
#define MC_WINO5_FWD_CHANNELS 32
#define MC_WINO5_DK_CHANNELS 48
#define MC_WINO5_DX_CHANNELS 32
enum { MC_PASS_FORWARD, MC_PASS_DKERNEL, MC_PASS_DX };

/* ---- microkernel instances: every instruction set x dtype ----
 * tmpl_microkernel.h derives an instance's parameters (vector width, tile heights, target
 * attributes) from MK_ISA and MK_BITS (csrc/mk_instance.h) and undefines them all at its end.
 * AVX-512 has 32 vector registers: tiles 6x4, 8x3, 12x2, 12x1 vectors (<= 28 accumulators).
 * AVX2 and the baseline have 16: tiles 6x2 and 12x1 (<= 12 accumulators). */
#define MK_BASELINE 0
#define MK_AVX2 1
#define MK_AVX512 2

#define MK_ISA MK_BASELINE
#define MK_BITS 32
#include "tmpl_microkernel.h"
#define MK_ISA MK_BASELINE
#define MK_BITS 64
#include "tmpl_microkernel.h"
#if MC_X86
#define MK_ISA MK_AVX2
#define MK_BITS 32
#include "tmpl_microkernel.h"
#define MK_ISA MK_AVX2
#define MK_BITS 64
#include "tmpl_microkernel.h"
#define MK_ISA MK_AVX512
#define MK_BITS 32
#include "tmpl_microkernel.h"
#define MK_ISA MK_AVX512
#define MK_BITS 64
#include "tmpl_microkernel.h"
#endif

/* ---- the tables: what each SIMD level runs ---- */
#define MC_TABLE_TYPE(real, sfx)                                                              \
    typedef struct {                                                                          \
        int vlen, nvmax;                                                                      \
        int mr[5], mr_half[5];                                                                \
        void (*igemm[5])(ptrdiff_t, const real *const *, const ptrdiff_t *, const real *,     \
                         real *const *, int, int, const real *, int);                         \
        void (*igemm_half[5])(ptrdiff_t, const real *const *, const ptrdiff_t *, const real *,\
                              real *const *, int, int, const real *, int);                    \
        /* the same with a[t] = a[0] + t (mk_igemm_body's UNIT): whole tiles only */          \
        void (*igemm_unit[5])(ptrdiff_t, const real *const *, const ptrdiff_t *, const real *,\
                              real *const *, int, int, const real *, int);                    \
        void (*igemm_unit_half[5])(ptrdiff_t, const real *const *, const ptrdiff_t *,         \
                                   const real *, real *const *, int, int, const real *, int); \
        void (*wgrad[5])(const real *, ptrdiff_t, ptrdiff_t, int, int, const ptrdiff_t *,     \
                         const real *, ptrdiff_t, ptrdiff_t, real *, ptrdiff_t, int);          \
        void (*wgrad_half[5])(const real *, ptrdiff_t, ptrdiff_t, int, int,                   \
                              const ptrdiff_t *, const real *, ptrdiff_t, ptrdiff_t, real *,  \
                              ptrdiff_t, int);                                                \
        void (*wino_in)(const real *const *, int, real *, ptrdiff_t);                         \
        void (*wino_out)(const real *, ptrdiff_t, int, const real *, int, real *const *);     \
        void (*wino_dy)(const real *const *, int, int, real *, ptrdiff_t);                    \
        void (*wino5_in)(const real *const *, int, real *, ptrdiff_t);                        \
        void (*wino5_out)(const real *, ptrdiff_t, int, const real *, int, real *const *);    \
        void (*wino5_dy)(const real *const *, int, int, real *, ptrdiff_t);                   \
        void (*wino_sandwich)(const real *, int, const real *, int, real *, ptrdiff_t, int);  \
        void (*relu_mask)(real *, const real *, const real *, int);                           \
        void (*pool_window)(real *, int32_t *, const real *const *, const int32_t *, int, int, \
                            int);                                                             \
        void (*pool_expand)(real *const *, const int32_t *, int, const int32_t *, const real *,\
                            const real *, int);                                               \
        void (*adam)(real *, const real *, real *, real *, int64_t, const real *);            \
        void (*sgd)(real *, const real *, real *, int64_t, real, real, int);                  \
    } mc_isa_##sfx;
MC_TABLE_TYPE(float, f32)
MC_TABLE_TYPE(double, f64)

#define MC_TABLE2(vlen, s)                                                                    \
    {vlen, 2, {0, 12, 6, 0, 0}, {0, 6, 3, 0, 0},                                              \
     {0, mk_igemm_1_##s, mk_igemm_2_##s, 0, 0}, {0, mk_igemm_h1_##s, mk_igemm_h2_##s, 0, 0},   \
     {0, mk_igemm_unit_1_##s, mk_igemm_unit_2_##s, 0, 0},                                     \
     {0, mk_igemm_unit_h1_##s, mk_igemm_unit_h2_##s, 0, 0},                                   \
     {0, mk_wgrad_1_##s, mk_wgrad_2_##s, 0, 0}, {0, mk_wgrad_h1_##s, mk_wgrad_h2_##s, 0, 0},   \
     mk_wino_in_##s, mk_wino_out_##s, mk_wino_dy_##s, mk_wino5_in_##s, mk_wino5_out_##s,      \
     mk_wino5_dy_##s, mk_wino_sandwich_##s, mk_relu_mask_##s, mk_pool_window_##s,                \
     mk_pool_expand_##s, mk_adam_##s, mk_sgd_##s}
#define MC_TABLE4(vlen, s)                                                                    \
    {vlen, 4, {0, 12, 12, 8, 6}, {0, 6, 6, 4, 3},                                             \
     {0, mk_igemm_1_##s, mk_igemm_2_##s, mk_igemm_3_##s, mk_igemm_4_##s},                      \
     {0, mk_igemm_h1_##s, mk_igemm_h2_##s, mk_igemm_h3_##s, mk_igemm_h4_##s},                  \
     {0, mk_igemm_unit_1_##s, mk_igemm_unit_2_##s, mk_igemm_unit_3_##s, mk_igemm_unit_4_##s},  \
     {0, mk_igemm_unit_h1_##s, mk_igemm_unit_h2_##s, mk_igemm_unit_h3_##s,                    \
      mk_igemm_unit_h4_##s},                                                                  \
     {0, mk_wgrad_1_##s, mk_wgrad_2_##s, mk_wgrad_3_##s, mk_wgrad_4_##s},                      \
     {0, mk_wgrad_h1_##s, mk_wgrad_h2_##s, mk_wgrad_h3_##s, mk_wgrad_h4_##s},                  \
     mk_wino_in_##s, mk_wino_out_##s, mk_wino_dy_##s, mk_wino5_in_##s, mk_wino5_out_##s,      \
     mk_wino5_dy_##s, mk_wino_sandwich_##s, mk_relu_mask_##s, mk_pool_window_##s,                \
     mk_pool_expand_##s, mk_adam_##s, mk_sgd_##s}

#if MC_X86
static const mc_isa_f32 mc_isa_tables_f32[3] = {
    MC_TABLE2(4, base_f32), MC_TABLE2(8, avx2_f32), MC_TABLE4(16, avx512_f32)};
static const mc_isa_f64 mc_isa_tables_f64[3] = {
    MC_TABLE2(2, base_f64), MC_TABLE2(4, avx2_f64), MC_TABLE4(8, avx512_f64)};
#else
static const mc_isa_f32 mc_isa_tables_f32[3] = {
    MC_TABLE2(4, base_f32), MC_TABLE2(4, base_f32), MC_TABLE2(4, base_f32)};
static const mc_isa_f64 mc_isa_tables_f64[3] = {
    MC_TABLE2(2, base_f64), MC_TABLE2(2, base_f64), MC_TABLE2(2, base_f64)};
#endif

/* ---- SIMD level and threads: the only state, set from Python before kernels run ---- */

static int mc_best = -1;
static int mc_level = MC_SIMD_BASELINE;
static int mc_threads_requested = 0;
static int mc_threads_beyond_cpus = 0;   /* tests only: see mc_allow_threads_beyond_cpus */
static int mc_threads_load_cap = 0;      /* 0 = none; see mc_set_load_cap */
static int mc_algorithm = MC_ALGO_AUTO;

static int mc_detect(void)
{
#if MC_X86
    __builtin_cpu_init();   /* also checks that the OS saves the AVX / AVX-512 registers */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
        return MC_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return MC_SIMD_AVX2;
#endif
    return MC_SIMD_BASELINE;
}

static void mc_init(void)
{
    if (mc_best < 0) {
        mc_best = mc_detect();
        mc_level = mc_best;
    }
}

#ifdef __GNUC__
/* Detect the CPU when the library is loaded, so no entry point can run before it (a driver
 * that read mc_level first once ran everything on the SSE2 baseline). The explicit
 * mc_init() calls in the entry points stay for compilers without constructors. */
__attribute__((constructor)) static void mc_on_load(void) { mc_init(); }
#endif

const char *mc_build_flags(void) { return MC_BUILD_FLAGS; }

int mc_have_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int mc_simd_best(void)
{
    mc_init();
    return mc_best;
}

int mc_simd_level(void)
{
    mc_init();
    return mc_level;
}

int mc_set_simd_level(int level)
{
    mc_init();
    if (level < MC_SIMD_BASELINE) level = MC_SIMD_BASELINE;
    mc_level = level > mc_best ? mc_best : level;
    return mc_level;
}

const char *mc_simd_name(int level)
{
    switch (level) {
    case MC_SIMD_AVX512: return "avx512";
    case MC_SIMD_AVX2: return "avx2";
    default: return MC_X86 ? "sse2" : "baseline";
    }
}

/* The threads a call is laid out for: the request (set_num_threads, else OMP_NUM_THREADS or
 * all cores), capped at the processors this process may run on (omp_get_num_procs honours the
 * affinity mask) and at MC_MAX_PARTS. More threads than processors only wait for each other,
 * and every thread costs a per-thread workspace region: OMP_NUM_THREADS=100000 once asked
 * for 7.6 GB and crashed inside libgomp. The convolutions' kernel gradients sum one partial
 * gradient per laid-out thread, so this number, not the load, decides their bits. */
static int mc_threads_now(void)
{
#ifdef _OPENMP
    int threads = mc_threads_requested > 0 ? mc_threads_requested : omp_get_max_threads();
    const int procs = omp_get_num_procs();
    if (!mc_threads_beyond_cpus && procs >= 1 && threads > procs) threads = procs;
    if (threads > MC_MAX_PARTS) threads = MC_MAX_PARTS;
    return threads < 1 ? 1 : threads;
#else
    return 1;
#endif
}

/* The threads that run: mc_threads_now() capped by the CPUs other processes leave free
 * (mc_set_load_cap). A team smaller than the layout only changes which thread computes which
 * part, never a result. */
static int mc_team_now(void)
{
    const int threads = mc_threads_now();
    if (!mc_threads_beyond_cpus && mc_threads_load_cap > 0 && threads > mc_threads_load_cap)
        return mc_threads_load_cap;
    return threads;
}

int mc_max_threads(void) { return mc_team_now(); }

int mc_set_algorithm(int algorithm)
{
    if (algorithm == MC_ALGO_AUTO || algorithm == MC_ALGO_DIRECT || algorithm == MC_ALGO_WINOGRAD)
        mc_algorithm = algorithm;
    return mc_algorithm;
}

int mc_get_algorithm(void) { return mc_algorithm; }

void mc_set_num_threads(int threads) { mc_threads_requested = threads > 0 ? threads : 0; }

void mc_allow_threads_beyond_cpus(int allow) { mc_threads_beyond_cpus = allow != 0; }

void mc_set_load_cap(int threads) { mc_threads_load_cap = threads > 0 ? threads : 0; }

int mc_keep_freed_memory(int64_t trim_bytes)
{
#if defined(__GLIBC__) && defined(M_TRIM_THRESHOLD) && defined(M_MMAP_THRESHOLD)
    /* glibc returns freed memory at the top of the heap to the OS once more than twice the
     * last large block is free, and serves blocks over its threshold with fresh mmaps: a
     * training step that frees and reallocates the same activation arrays every batch then
     * page-faults through all of them again (docs/performance.md, "Memory"). Fixing both
     * thresholds keeps freed blocks for reuse. */
    if (trim_bytes < 0 || trim_bytes > INT_MAX) return 0;
    return mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) && mallopt(M_TRIM_THRESHOLD, (int)trim_bytes);
#else
    (void)trim_bytes;
    return 0;
#endif
}

/* ---- argument checks shared by both dtypes ---- */

/* Every dimension, stride and pad is at most 2^24 and every buffer at most 2^40 elements:
 * far above any real network, and small enough that no index arithmetic can overflow. */
#define MC_DIM_MAX (1 << 24)
#define MC_LEN_MAX ((int64_t)1 << 40)

typedef struct {
    int64_t x, kernel, xpad, y;
} mc_conv_sizes;

static int mc_product(int64_t *out, int64_t a, int64_t b, int64_t c, int64_t d)
{
    int64_t p = a;
    const int64_t f[3] = {b, c, d};
    for (int i = 0; i < 3; i++) {
        if (f[i] != 0 && p > MC_LEN_MAX / f[i]) return 0;
        p *= f[i];
    }
    *out = p;
    return p <= MC_LEN_MAX;
}

static int mc_dims_ok(const int *dims, int count, int lowest)
{
    for (int i = 0; i < count; i++)
        if (dims[i] < lowest || dims[i] > MC_DIM_MAX) return 0;
    return 1;
}

static int mc_check_conv(const mc_conv_geom *g, mc_conv_sizes *s)
{
    if (!g) return MC_ERR_NULL;
    const int positive[] = {g->n, g->h, g->w, g->c, g->kh, g->kw, g->f, g->stride_h, g->stride_w};
    const int pads[] = {g->pad_top, g->pad_bottom, g->pad_left, g->pad_right};
    if (!mc_dims_ok(positive, 9, 1) || !mc_dims_ok(pads, 4, 0)) return MC_ERR_GEOMETRY;
    const int64_t hp = (int64_t)g->h + g->pad_top + g->pad_bottom;
    const int64_t wp = (int64_t)g->w + g->pad_left + g->pad_right;
    if (hp < g->kh || wp < g->kw) return MC_ERR_GEOMETRY;
    const int64_t oh = (hp - g->kh) / g->stride_h + 1, ow = (wp - g->kw) / g->stride_w + 1;
    if (!mc_product(&s->x, g->n, g->h, g->w, g->c) || !mc_product(&s->kernel, g->kh, g->kw, g->c, g->f) ||
        !mc_product(&s->xpad, g->n, hp, wp, g->c) || !mc_product(&s->y, g->n, oh, ow, g->f))
        return MC_ERR_GEOMETRY;
    /* the transposed convolution's frame (dy with margins) is at most (oh + kh) x (ow + kw) */
    int64_t frame;
    if (!mc_product(&frame, g->n, oh + g->kh + 1, ow + g->kw + 1, (int64_t)g->f + 64))
        return MC_ERR_GEOMETRY;
    return MC_OK;
}

static int mc_check_pool(const mc_pool_geom *g, int64_t *oh, int64_t *ow)
{
    if (!g) return MC_ERR_NULL;
    const int positive[] = {g->n, g->h, g->w, g->c, g->pool_h, g->pool_w, g->stride_h, g->stride_w};
    const int pads[] = {g->pad_top, g->pad_bottom, g->pad_left, g->pad_right};
    if (!mc_dims_ok(positive, 8, 1) || !mc_dims_ok(pads, 4, 0)) return MC_ERR_GEOMETRY;
    const int64_t hp = (int64_t)g->h + g->pad_top + g->pad_bottom;
    const int64_t wp = (int64_t)g->w + g->pad_left + g->pad_right;
    if (hp < g->pool_h || wp < g->pool_w) return MC_ERR_GEOMETRY;
    *oh = (hp - g->pool_h) / g->stride_h + 1;
    *ow = (wp - g->pool_w) / g->stride_w + 1;
    int64_t in, out;
    /* argmax stores an index inside one image as int32 */
    if ((int64_t)g->h * g->w * g->c > INT32_MAX) return MC_ERR_GEOMETRY;
    if (!mc_product(&in, g->n, g->h, g->w, g->c) || !mc_product(&out, g->n, *oh, *ow, g->c))
        return MC_ERR_GEOMETRY;
    return MC_OK;
}

/* A max pool that a convolution's passes take over (after mc_check_conv passed): its input is
 * the convolution's output, and its windows neither overlap nor reach padding and have at most
 * MC_POOL_FUSE_CELLS cells, so every output cell belongs to one window at most. */
static int mc_check_conv_pool(const mc_conv_geom *g, const mc_pool_geom *pg, int64_t *ph, int64_t *pw)
{
    const int err = mc_check_pool(pg, ph, pw);
    if (err) return err;
    const int64_t oh = ((int64_t)g->h + g->pad_top + g->pad_bottom - g->kh) / g->stride_h + 1;
    const int64_t ow = ((int64_t)g->w + g->pad_left + g->pad_right - g->kw) / g->stride_w + 1;
    if (pg->n != g->n || pg->h != oh || pg->w != ow || pg->c != g->f || pg->pad_top ||
        pg->pad_bottom || pg->pad_left || pg->pad_right || pg->stride_h < pg->pool_h ||
        pg->stride_w < pg->pool_w || pg->pool_h * pg->pool_w > MC_POOL_FUSE_CELLS)
        return MC_ERR_GEOMETRY;
    return MC_OK;
}

static int mc_check_dense(int n, int k, int f, int64_t *x, int64_t *kernel, int64_t *y)
{
    const int positive[] = {n, k, f};
    if (!mc_dims_ok(positive, 3, 1)) return MC_ERR_GEOMETRY;
    if (!mc_product(x, n, k, 1, 1) || !mc_product(kernel, k, f, 1, 1) || !mc_product(y, n, f, 1, 1))
        return MC_ERR_GEOMETRY;
    /* padded copies: (n or k) x (f rounded up) and k x (n rounded up) */
    int64_t scratch;
    if (!mc_product(&scratch, (int64_t)n + k, (int64_t)f + 64, 2, 1) ||
        !mc_product(&scratch, k, (int64_t)n + 64, 1, 1))
        return MC_ERR_GEOMETRY;
    return MC_OK;
}

/* ---- the drivers, once per dtype ---- */
/* Dropout's random bits for element i of a call keyed by `key`: SplitMix64's output function
 * of key + (i + 1) * the golden-ratio increment (Steele, Lea & Flood 2014), the same in
 * minicnn/kernels/numpy_engine.py. One of MC_DROPOUT_ONE (2^24) levels: its top 24 bits. */
#define MC_DROPOUT_ONE ((int64_t)1 << 24)
static inline uint64_t mc_dropout_bits(uint64_t key, uint64_t i)
{
    uint64_t z = key + (i + 1) * UINT64_C(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

#define DR float
#define DSFX f32
#include "tmpl_driver.h"
#undef DR
#undef DSFX
#define DR double
#define DSFX f64
#include "tmpl_driver.h"
#undef DR
#undef DSFX

/* ---- workspace sizes: the plan each call lays out ---- */

static int64_t mc_elements(int64_t bytes, int elem_size) { return (bytes + elem_size - 1) / elem_size; }

int64_t mc_conv2d_forward_workspace(const mc_conv_geom *g, int elem_size, int keep_xpad)
{
    mc_conv_sizes s;
    if (mc_check_conv(g, &s) || (elem_size != 4 && elem_size != 8)) return -1;
    const int threads = mc_threads_now();
    keep_xpad = keep_xpad != 0;
    return mc_elements(elem_size == 4 ? conv_forward_bytes_f32(g, keep_xpad, threads)
                                      : conv_forward_bytes_f64(g, keep_xpad, threads),
                       elem_size);
}

int64_t mc_conv2d_backward_workspace(const mc_conv_geom *g, int elem_size, int need_dx, int relu)
{
    mc_conv_sizes s;
    if (mc_check_conv(g, &s) || (elem_size != 4 && elem_size != 8)) return -1;
    const int threads = mc_threads_now();
    need_dx = need_dx != 0;
    relu = relu != 0;
    return mc_elements(elem_size == 4 ? conv_backward_bytes_f32(g, need_dx, relu, threads)
                                      : conv_backward_bytes_f64(g, need_dx, relu, threads),
                       elem_size);
}

int64_t mc_conv2d_forward_maxpool_workspace(const mc_conv_geom *g, const mc_pool_geom *pg, int elem_size,
                                            int keep_xpad)
{
    mc_conv_sizes s;
    int64_t ph, pw;
    if (mc_check_conv(g, &s) || mc_check_conv_pool(g, pg, &ph, &pw) || (elem_size != 4 && elem_size != 8))
        return -1;
    const int threads = mc_threads_now();
    keep_xpad = keep_xpad != 0;
    return mc_elements(elem_size == 4 ? conv_pool_forward_bytes_f32(g, keep_xpad, threads)
                                      : conv_pool_forward_bytes_f64(g, keep_xpad, threads),
                       elem_size);
}

int64_t mc_dense_forward_workspace(int n, int k, int f, int elem_size)
{
    int64_t sx, sk, sy;
    if (mc_check_dense(n, k, f, &sx, &sk, &sy) || (elem_size != 4 && elem_size != 8)) return -1;
    return mc_elements(elem_size == 4 ? dense_forward_bytes_f32(n, k, f) : dense_forward_bytes_f64(n, k, f),
                       elem_size);
}

int64_t mc_dense_backward_workspace(int n, int k, int f, int elem_size)
{
    int64_t sx, sk, sy;
    if (mc_check_dense(n, k, f, &sx, &sk, &sy) || (elem_size != 4 && elem_size != 8)) return -1;
    return mc_elements(elem_size == 4 ? dense_backward_bytes_f32(n, k, f) : dense_backward_bytes_f64(n, k, f),
                       elem_size);
}
