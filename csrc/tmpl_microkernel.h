/* Register-blocked microkernels, written once with GCC vector extensions and compiled once per
 * (instruction set, dtype) by csrc/kernels.c. No include guard: this file is a template.
 *
 * Before including, define:
 *   MK_REAL    float or double
 *   MK_VBYTES  bytes per vector register: 64 (AVX-512), 32 (AVX2), 16 (baseline SSE2 / NEON)
 *   MK_SFX     a suffix token naming this instance, e.g. avx512_f32
 *   MK_ATTR    function attributes selecting the instruction set (may be empty)
 *   MK_MR1 .. MK_MR4   tile heights for 1..4 vectors of width (MK_MR3/MK_MR4 only if MK_NVMAX 4)
 *   MK_NVMAX   2 or 4: the widest tile in vectors
 *   MK_INT     the signed integer type as wide as MK_REAL (int32_t or int64_t), for masks
 * and MK_MRMAX (csrc/kernels.c), the largest tile height of any instance.
 *
 * Both kernels keep an MR x NV tile of the result in registers for the whole reduction and
 * perform, per reduction step, NV vector loads, MR scalar broadcasts and MR * NV fused
 * multiply-adds. MR and NV are compile-time constants in every instance, so the loops unroll
 * completely and the accumulators never touch memory; MR * NV + NV + 1 registers stay within
 * the register file (32 vector registers with AVX-512, 16 otherwise).
 *
 *   igemm  ("indirect GEMM"): c[t][0:cols] = bias + sum_k a[t][aoff[k]] * b[k][0:cols]
 *          for t < mr. Each output row t reads its own input pointer a[t] shifted by the same
 *          offset aoff[k]: with a[t] at an output pixel's receptive field and aoff[k] the
 *          offset of kernel tap k, this is the convolution without an im2col buffer.
 *   wgrad  dst[t][0:NV*VLEN] += sum over pixels (p, q) of x[p*xrs + q*xcs + off[t]] * dy[p, q]
 *          for t < mr: a block of rows of the kernel gradient, reduced over one image.
 */
#define MK_CAT2(a, b) a##_##b
#define MK_CAT(a, b) MK_CAT2(a, b)
#define MK_NAME(base) MK_CAT(base, MK_SFX)
#define MK_V MK_NAME(mk_vec)
#define MK_MASK MK_NAME(mk_mask)
#define MK_VLEN ((int)(MK_VBYTES / sizeof(MK_REAL)))

typedef MK_REAL MK_V __attribute__((vector_size(MK_VBYTES)));
typedef MK_INT MK_MASK __attribute__((vector_size(MK_VBYTES)));

static inline __attribute__((always_inline)) MK_ATTR MK_V MK_NAME(mk_load)(const MK_REAL *p)
{
    MK_V v;
    memcpy(&v, p, sizeof v);   /* compiles to one unaligned vector load */
    return v;
}

static inline __attribute__((always_inline)) MK_ATTR void MK_NAME(mk_store)(MK_REAL *p, MK_V v)
{
    memcpy(p, &v, sizeof v);
}

/* max(v, 0) that lets NaN through, like np.maximum(v, 0): only v < 0 is cleared. */
static inline __attribute__((always_inline)) MK_ATTR MK_V MK_NAME(mk_relu)(MK_V v)
{
    const MK_V zero = {0};
    MK_MASK negative = v < zero;
    return (MK_V)((MK_MASK)v & ~negative);
}

static inline __attribute__((always_inline)) MK_ATTR void MK_NAME(mk_igemm_body)(
    const int MR, const int NV, ptrdiff_t K, const MK_REAL *const *a, const ptrdiff_t *aoff,
    const MK_REAL *b, MK_REAL *const *c, int mr, int last_cols, const MK_REAL *bias, int relu)
{
    MK_V acc[MK_MRMAX][4];
    const MK_REAL *ap[MK_MRMAX];
#pragma GCC unroll 16
    for (int t = 0; t < MR; t++) ap[t] = a[t];
#pragma GCC unroll 16
    for (int t = 0; t < MR; t++) {
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            MK_V zero = {0};
            acc[t][v] = bias ? MK_NAME(mk_load)(bias + v * MK_VLEN) : zero;
        }
    }
    for (ptrdiff_t k = 0; k < K; k++) {
        const ptrdiff_t o = aoff[k];
        const MK_REAL *bk = b + k * (NV * MK_VLEN);
        MK_V bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) bv[v] = MK_NAME(mk_load)(bk + v * MK_VLEN);
#pragma GCC unroll 16
        for (int t = 0; t < MR; t++) {
            const MK_REAL s = ap[t][o];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[t][v] += bv[v] * s;
        }
    }
#pragma GCC unroll 16
    for (int t = 0; t < MR; t++) {
        if (t >= mr) break;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            MK_V r = relu ? MK_NAME(mk_relu)(acc[t][v]) : acc[t][v];
            if (v < NV - 1 || last_cols == MK_VLEN) {
                MK_NAME(mk_store)(c[t] + v * MK_VLEN, r);
            } else {
                MK_REAL tmp[MK_VLEN];
                MK_NAME(mk_store)(tmp, r);
                memcpy(c[t] + v * MK_VLEN, tmp, (size_t)last_cols * sizeof(MK_REAL));
            }
        }
    }
}

static inline __attribute__((always_inline)) MK_ATTR void MK_NAME(mk_wgrad_body)(
    const int MR, const int NV, const MK_REAL *x, ptrdiff_t xrs, ptrdiff_t xcs, int oh, int ow,
    const ptrdiff_t *off, const MK_REAL *dy, ptrdiff_t dyrs, ptrdiff_t dycs, MK_REAL *dst,
    ptrdiff_t ld, int mr)
{
    MK_V acc[MK_MRMAX][4];
    ptrdiff_t o[MK_MRMAX];
#pragma GCC unroll 16
    for (int t = 0; t < MR; t++) o[t] = off[t];
#pragma GCC unroll 16
    for (int t = 0; t < MR; t++) {
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            MK_V zero = {0};
            acc[t][v] = zero;
        }
    }
    for (int p = 0; p < oh; p++) {
        const MK_REAL *xr = x + p * xrs;
        const MK_REAL *dr = dy + p * dyrs;
        for (int q = 0; q < ow; q++) {
            const MK_REAL *xa = xr + q * xcs;
            const MK_REAL *da = dr + q * dycs;
            MK_V bv[4];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) bv[v] = MK_NAME(mk_load)(da + v * MK_VLEN);
#pragma GCC unroll 16
            for (int t = 0; t < MR; t++) {
                const MK_REAL s = xa[o[t]];
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) acc[t][v] += bv[v] * s;
            }
        }
    }
#pragma GCC unroll 16
    for (int t = 0; t < MR; t++) {
        if (t >= mr) break;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            MK_REAL *d = dst + t * ld + v * MK_VLEN;
            MK_NAME(mk_store)(d, MK_NAME(mk_load)(d) + acc[t][v]);
        }
    }
}

/* The instances: one per vector count, each with its own tile height. */
#define MK_INSTANCE(NV, MR)                                                                   \
    static MK_ATTR void MK_NAME(mk_igemm_##NV)(ptrdiff_t K, const MK_REAL *const *a,           \
        const ptrdiff_t *aoff, const MK_REAL *b, MK_REAL *const *c, int mr, int last_cols,    \
        const MK_REAL *bias, int relu)                                                        \
    {                                                                                         \
        MK_NAME(mk_igemm_body)(MR, NV, K, a, aoff, b, c, mr, last_cols, bias, relu);          \
    }                                                                                         \
    static MK_ATTR void MK_NAME(mk_wgrad_##NV)(const MK_REAL *x, ptrdiff_t xrs, ptrdiff_t xcs, \
        int oh, int ow, const ptrdiff_t *off, const MK_REAL *dy, ptrdiff_t dyrs,              \
        ptrdiff_t dycs, MK_REAL *dst, ptrdiff_t ld, int mr)                                   \
    {                                                                                         \
        MK_NAME(mk_wgrad_body)(MR, NV, x, xrs, xcs, oh, ow, off, dy, dyrs, dycs, dst, ld, mr); \
    }

MK_INSTANCE(1, MK_MR1)
MK_INSTANCE(2, MK_MR2)
#if MK_NVMAX == 4
MK_INSTANCE(3, MK_MR3)
MK_INSTANCE(4, MK_MR4)
#endif

#undef MK_INSTANCE
#undef MK_VLEN
#undef MK_MASK
#undef MK_V
#undef MK_NAME
#undef MK_CAT
#undef MK_CAT2
