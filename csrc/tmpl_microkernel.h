/* Register-blocked microkernels, written once with GCC vector extensions and compiled once per
 * (instruction set, dtype) by csrc/kernels.c. No include guard: this file is a template.
 *
 * Before including, define MK_ISA (MK_BASELINE, MK_AVX2 or MK_AVX512) and MK_BITS (32 or 64):
 * csrc/mk_instance.h derives the instance's parameters from them, and the end of this file
 * undefines all of them. MK_MRMAX (csrc/kernels.c) is the largest tile height of any instance.
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
#include "mk_instance.h"

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

/* The first n < MK_VLEN lanes of v to p, as pieces of 8, 4, 2 and 1 whose sizes the compiler
 * knows: one memcpy of n lanes was a call into libc per row, 13% of LeNet's first layer (six
 * filters, so every row's store is partial). */
static inline __attribute__((always_inline)) MK_ATTR void MK_NAME(mk_store_part)(MK_REAL *p, MK_V v, int n)
{
    MK_REAL tmp[MK_VLEN];
    int at = 0;
    MK_NAME(mk_store)(tmp, v);
    if (MK_VLEN > 8 && (n & 8)) { memcpy(p + at, tmp + at, 8 * sizeof(MK_REAL)); at += 8; }
    if (MK_VLEN > 4 && (n & 4)) { memcpy(p + at, tmp + at, 4 * sizeof(MK_REAL)); at += 4; }
    if (MK_VLEN > 2 && (n & 2)) { memcpy(p + at, tmp + at, 2 * sizeof(MK_REAL)); at += 2; }
    if (n & 1) memcpy(p + at, tmp + at, sizeof(MK_REAL));
}

/* max(v, 0) that lets NaN through, like np.maximum(v, 0): only v < 0 is cleared. */
static inline __attribute__((always_inline)) MK_ATTR MK_V MK_NAME(mk_relu)(MK_V v)
{
    const MK_V zero = {0};
    MK_MASK negative = v < zero;
    return (MK_V)((MK_MASK)v & ~negative);
}

/* UNIT = 1: the tile's rows are consecutive elements of one buffer, a[t] = a[0] + t (a
 * convolution with one input channel and stride 1, its pixels in one output row). Each row is
 * then a constant displacement from one pointer, instead of one of MR pointers that do not fit
 * the general-purpose registers and are reloaded at every tap: 2.5x faster for LeNet's first
 * layer (docs/performance.md). The same products summed in the same order: the same bits. */
static inline __attribute__((always_inline)) MK_ATTR void MK_NAME(mk_igemm_body)(
    const int MR, const int NV, const int UNIT, ptrdiff_t K, const MK_REAL *const *a,
    const ptrdiff_t *aoff, const MK_REAL *b, MK_REAL *const *c, int mr, int last_cols,
    const MK_REAL *bias, int relu)
{
    MK_V acc[MK_MRMAX][4];
    const MK_REAL *ap[MK_MRMAX];
#pragma GCC unroll 16
    for (int t = 0; t < MR; t++) ap[t] = UNIT ? a[0] + t : a[t];
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
            if (v < NV - 1 || last_cols == MK_VLEN)
                MK_NAME(mk_store)(c[t] + v * MK_VLEN, r);
            else
                MK_NAME(mk_store_part)(c[t] + v * MK_VLEN, r, last_cols);
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

/* ---- Winograd F(2x2, 3x3) transforms, vectorised over channels ----
 * One 4x4 input tile d gives V = B^T d B, one 2x2 output tile comes from M by A^T M A, one 2x2
 * gradient tile dY gives Z = A dY A^T; B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] and
 * A^T = [1 1 1 0; 0 1 -1 -1]. Only additions: the same code serves vectors and scalars. */
#define MK_WINO_IN(d, v)                                                                     \
    do {                                                                                     \
        for (int j_ = 0; j_ < 4; j_++) {                                                     \
            const __typeof__(d[0]) r0 = d[j_], r1 = d[4 + j_], r2 = d[8 + j_], r3 = d[12 + j_]; \
            d[j_] = r0 - r2; d[4 + j_] = r1 + r2; d[8 + j_] = r2 - r1; d[12 + j_] = r1 - r3;  \
        }                                                                                    \
        for (int i_ = 0; i_ < 4; i_++) {                                                     \
            const __typeof__(d[0]) t0 = d[4 * i_], t1 = d[4 * i_ + 1], t2 = d[4 * i_ + 2],   \
                                   t3 = d[4 * i_ + 3];                                       \
            v[4 * i_] = t0 - t2; v[4 * i_ + 1] = t1 + t2;                                    \
            v[4 * i_ + 2] = t2 - t1; v[4 * i_ + 3] = t1 - t3;                                \
        }                                                                                    \
    } while (0)

#define MK_WINO_OUT(m, y)                                                                    \
    do {                                                                                     \
        __typeof__(m[0]) s_[8];                                                              \
        for (int j_ = 0; j_ < 4; j_++) {                                                     \
            s_[j_] = m[j_] + m[4 + j_] + m[8 + j_];                                          \
            s_[4 + j_] = m[4 + j_] - m[8 + j_] - m[12 + j_];                                 \
        }                                                                                    \
        for (int i_ = 0; i_ < 2; i_++) {                                                     \
            y[2 * i_] = s_[4 * i_] + s_[4 * i_ + 1] + s_[4 * i_ + 2];                        \
            y[2 * i_ + 1] = s_[4 * i_ + 1] - s_[4 * i_ + 2] - s_[4 * i_ + 3];                \
        }                                                                                    \
    } while (0)

#define MK_WINO_DY(g, z)                                                                     \
    do {                                                                                     \
        __typeof__(g[0]) r_[8];                                                              \
        for (int j_ = 0; j_ < 2; j_++) {                                                     \
            r_[j_] = g[j_]; r_[2 + j_] = g[j_] + g[2 + j_];                                  \
            r_[4 + j_] = g[j_] - g[2 + j_]; r_[6 + j_] = -g[2 + j_];                         \
        }                                                                                    \
        for (int i_ = 0; i_ < 4; i_++) {                                                     \
            z[4 * i_] = r_[2 * i_]; z[4 * i_ + 1] = r_[2 * i_] + r_[2 * i_ + 1];             \
            z[4 * i_ + 2] = r_[2 * i_] - r_[2 * i_ + 1]; z[4 * i_ + 3] = -r_[2 * i_ + 1];    \
        }                                                                                    \
    } while (0)

/* V[xi * vs + c] for the tile whose 16 cells start at d[0..15] (C channels each). */
static MK_ATTR void MK_NAME(mk_wino_in)(const MK_REAL *const *d, int C, MK_REAL *v, ptrdiff_t vs)
{
    int c = 0;
    for (; c + MK_VLEN <= C; c += MK_VLEN) {
        MK_V a[16], r[16];
        for (int k = 0; k < 16; k++) a[k] = MK_NAME(mk_load)(d[k] + c);
        MK_WINO_IN(a, r);
        for (int k = 0; k < 16; k++) MK_NAME(mk_store)(v + k * vs + c, r[k]);
    }
    for (; c < C; c++) {
        MK_REAL a[16], r[16];
        for (int k = 0; k < 16; k++) a[k] = d[k][c];
        MK_WINO_IN(a, r);
        for (int k = 0; k < 16; k++) v[k * vs + c] = r[k];
    }
}

/* The output transforms' epilogue, shared by F(2x2, 3x3) and F(2x2, 5x5): the 2x2 outputs r
 * of filters f.. (a vector of them, or one) get the bias and the fused ReLU and go to the
 * outputs that exist (y[k] != NULL). */
static inline __attribute__((always_inline)) MK_ATTR void MK_NAME(mk_wino_emit)(
    const MK_V *r, const MK_REAL *bias, int relu, MK_REAL *const *y, int f)
{
    const MK_V b = bias ? MK_NAME(mk_load)(bias + f) : (MK_V){0};
    for (int k = 0; k < 4; k++) {
        if (!y[k]) continue;
        MK_V o = r[k] + b;
        MK_NAME(mk_store)(y[k] + f, relu ? MK_NAME(mk_relu)(o) : o);
    }
}

static inline __attribute__((always_inline)) MK_ATTR void MK_NAME(mk_wino_emit_one)(
    const MK_REAL *r, const MK_REAL *bias, int relu, MK_REAL *const *y, int f)
{
    for (int k = 0; k < 4; k++) {
        if (!y[k]) continue;
        const MK_REAL o = r[k] + (bias ? bias[f] : 0);
        y[k][f] = relu && o < 0 ? 0 : o;
    }
}

/* y[r][0:F] = act(bias + (A^T M A)[r]) for the 2x2 outputs r that exist (y[r] != NULL). */
static MK_ATTR void MK_NAME(mk_wino_out)(const MK_REAL *m, ptrdiff_t ms, int F, const MK_REAL *bias,
                                         int relu, MK_REAL *const *y)
{
    int f = 0;
    for (; f + MK_VLEN <= F; f += MK_VLEN) {
        MK_V a[16], r[4];
        for (int k = 0; k < 16; k++) a[k] = MK_NAME(mk_load)(m + k * ms + f);
        MK_WINO_OUT(a, r);
        MK_NAME(mk_wino_emit)(r, bias, relu, y, f);
    }
    for (; f < F; f++) {
        MK_REAL a[16], r[4];
        for (int k = 0; k < 16; k++) a[k] = m[k * ms + f];
        MK_WINO_OUT(a, r);
        MK_NAME(mk_wino_emit_one)(r, bias, relu, y, f);
    }
}

/* Z[xi * zs + f] = (A dY A^T)[xi] for f < F and 0 for F <= f < Fv; missing dY cells are 0. */
static MK_ATTR void MK_NAME(mk_wino_dy)(const MK_REAL *const *g, int F, int Fv, MK_REAL *z, ptrdiff_t zs)
{
    int f = 0;
    for (; f + MK_VLEN <= F; f += MK_VLEN) {
        MK_V a[4], r[16];
        for (int k = 0; k < 4; k++) a[k] = g[k] ? MK_NAME(mk_load)(g[k] + f) : (MK_V){0};
        MK_WINO_DY(a, r);
        for (int k = 0; k < 16; k++) MK_NAME(mk_store)(z + k * zs + f, r[k]);
    }
    for (; f < Fv; f++) {
        MK_REAL a[4], r[16];
        for (int k = 0; k < 4; k++) a[k] = g[k] && f < F ? g[k][f] : 0;
        MK_WINO_DY(a, r);
        for (int k = 0; k < 16; k++) z[k * zs + f] = r[k];
    }
}

/* ---- Winograd F(2x2, 5x5) transforms, vectorised over channels ----
 * The same three steps with 6x6 tiles (interpolation points 0, 1, -1, 1/2, -1/2, infinity;
 * scripts/winograd_matrices.py derives the matrices and checks them exactly):
 *   B^T = [1 0 -5 0 4 0; 0 1 1 -4 -4 0; 0 1 -1 -4 4 0; 0 1 2 -1 -2 0; 0 1 -2 -1 2 0;
 *          0 1 0 -5 0 4],   A^T = [1 1 1 1 1 0; 0 1 -1 1/2 -1/2 1].
 * MK_WINO5_BT applies B^T to the six values x[i0 + k*st] in place; MK_WINO5_AT gives the two
 * values of A^T x, MK_WINO5_A the six of A g for two values. T is the element type. */
#define MK_WINO5_BT(T, x, i0, st)                                                           \
    do {                                                                                     \
        const T d0_ = x[i0], d1_ = x[(i0) + (st)], d2_ = x[(i0) + 2 * (st)],                 \
                d3_ = x[(i0) + 3 * (st)], d4_ = x[(i0) + 4 * (st)], d5_ = x[(i0) + 5 * (st)]; \
        const T p_ = d1_ - (MK_REAL)4 * d3_, q_ = d2_ - (MK_REAL)4 * d4_;                    \
        const T u_ = d1_ - d3_, w_ = (MK_REAL)2 * (d2_ - d4_);                               \
        x[i0] = d0_ - (MK_REAL)5 * d2_ + (MK_REAL)4 * d4_;                                   \
        x[(i0) + (st)] = p_ + q_;                                                            \
        x[(i0) + 2 * (st)] = p_ - q_;                                                        \
        x[(i0) + 3 * (st)] = u_ + w_;                                                        \
        x[(i0) + 4 * (st)] = u_ - w_;                                                        \
        x[(i0) + 5 * (st)] = d1_ - (MK_REAL)5 * d3_ + (MK_REAL)4 * d5_;                      \
    } while (0)

#define MK_WINO5_AT(T, x, i0, st, y0, y1)                                                   \
    do {                                                                                     \
        const T a1_ = x[(i0) + (st)], a2_ = x[(i0) + 2 * (st)], a3_ = x[(i0) + 3 * (st)],    \
                a4_ = x[(i0) + 4 * (st)];                                                    \
        y0 = x[i0] + (a1_ + a2_) + (a3_ + a4_);                                              \
        y1 = (a1_ - a2_) + (MK_REAL)0.5 * (a3_ - a4_) + x[(i0) + 5 * (st)];                  \
    } while (0)

#define MK_WINO5_A(T, g0, g1, z, i0, st)                                                    \
    do {                                                                                     \
        const T h_ = (MK_REAL)0.5 * (g1);                                                    \
        z[i0] = g0; z[(i0) + (st)] = (g0) + (g1); z[(i0) + 2 * (st)] = (g0) - (g1);          \
        z[(i0) + 3 * (st)] = (g0) + h_; z[(i0) + 4 * (st)] = (g0) - h_;                      \
        z[(i0) + 5 * (st)] = g1;                                                             \
    } while (0)

/* V[xi * vs + c] = (B^T d B)[xi] for the tile whose 36 cells start at d[0..35]. */
static MK_ATTR void MK_NAME(mk_wino5_in)(const MK_REAL *const *d, int C, MK_REAL *v, ptrdiff_t vs)
{
    int c = 0;
    for (; c + MK_VLEN <= C; c += MK_VLEN) {
        MK_V a[36];
        for (int k = 0; k < 36; k++) a[k] = MK_NAME(mk_load)(d[k] + c);
        for (int j = 0; j < 6; j++) MK_WINO5_BT(MK_V, a, j, 6);       /* columns: B^T d */
        for (int i = 0; i < 6; i++) MK_WINO5_BT(MK_V, a, 6 * i, 1);   /* rows: (B^T d) B */
        for (int k = 0; k < 36; k++) MK_NAME(mk_store)(v + k * vs + c, a[k]);
    }
    for (; c < C; c++) {
        MK_REAL a[36];
        for (int k = 0; k < 36; k++) a[k] = d[k][c];
        for (int j = 0; j < 6; j++) MK_WINO5_BT(MK_REAL, a, j, 6);
        for (int i = 0; i < 6; i++) MK_WINO5_BT(MK_REAL, a, 6 * i, 1);
        for (int k = 0; k < 36; k++) v[k * vs + c] = a[k];
    }
}

/* y[r][0:F] = act(bias + (A^T M A)[r]) for the 2x2 outputs r that exist (y[r] != NULL). */
static MK_ATTR void MK_NAME(mk_wino5_out)(const MK_REAL *m, ptrdiff_t ms, int F, const MK_REAL *bias,
                                          int relu, MK_REAL *const *y)
{
    int f = 0;
    for (; f + MK_VLEN <= F; f += MK_VLEN) {
        MK_V a[36], s[12], r[4];
        for (int k = 0; k < 36; k++) a[k] = MK_NAME(mk_load)(m + k * ms + f);
        for (int j = 0; j < 6; j++) MK_WINO5_AT(MK_V, a, j, 6, s[j], s[6 + j]);
        for (int i = 0; i < 2; i++) MK_WINO5_AT(MK_V, s, 6 * i, 1, r[2 * i], r[2 * i + 1]);
        MK_NAME(mk_wino_emit)(r, bias, relu, y, f);
    }
    for (; f < F; f++) {
        MK_REAL a[36], s[12], r[4];
        for (int k = 0; k < 36; k++) a[k] = m[k * ms + f];
        for (int j = 0; j < 6; j++) MK_WINO5_AT(MK_REAL, a, j, 6, s[j], s[6 + j]);
        for (int i = 0; i < 2; i++) MK_WINO5_AT(MK_REAL, s, 6 * i, 1, r[2 * i], r[2 * i + 1]);
        MK_NAME(mk_wino_emit_one)(r, bias, relu, y, f);
    }
}

/* Z[xi * zs + f] = (A dY A^T)[xi] for f < F and 0 for F <= f < Fv; missing dY cells are 0. */
static MK_ATTR void MK_NAME(mk_wino5_dy)(const MK_REAL *const *g, int F, int Fv, MK_REAL *z, ptrdiff_t zs)
{
    int f = 0;
    for (; f + MK_VLEN <= F; f += MK_VLEN) {
        MK_V a[4], t[12], r[36];
        for (int k = 0; k < 4; k++) a[k] = g[k] ? MK_NAME(mk_load)(g[k] + f) : (MK_V){0};
        for (int j = 0; j < 2; j++) MK_WINO5_A(MK_V, a[j], a[2 + j], t, j, 2);     /* A dY */
        for (int i = 0; i < 6; i++) MK_WINO5_A(MK_V, t[2 * i], t[2 * i + 1], r, 6 * i, 1);
        for (int k = 0; k < 36; k++) MK_NAME(mk_store)(z + k * zs + f, r[k]);
    }
    for (; f < Fv; f++) {
        MK_REAL a[4], t[12], r[36];
        for (int k = 0; k < 4; k++) a[k] = g[k] && f < F ? g[k][f] : 0;
        for (int j = 0; j < 2; j++) MK_WINO5_A(MK_REAL, a[j], a[2 + j], t, j, 2);
        for (int i = 0; i < 6; i++) MK_WINO5_A(MK_REAL, t[2 * i], t[2 * i + 1], r, 6 * i, 1);
        for (int k = 0; k < 36; k++) z[k * zs + f] = r[k];
    }
}

/* out[a * r + b][0:width] = sum_{i,j < p} L[a][i] L[b][j] in[i * p + j][0:width] for a, b < r,
 * entries `stride` apart, width a multiple of the vector: the Winograd kernel transform
 * G g G^T (L = G, alpha x k) and its adjoint G^T dU G (L = G^T), p, r <= 6. The sums run over
 * i, then j, in order. */
static MK_ATTR void MK_NAME(mk_wino_sandwich)(const MK_REAL *in, int p, const MK_REAL *L, int r,
                                              MK_REAL *out, ptrdiff_t stride, int width)
{
    for (int v = 0; v < width; v += MK_VLEN) {
        MK_V x[36], t[36];
        for (int e = 0; e < p * p; e++) x[e] = MK_NAME(mk_load)(in + e * stride + v);
        for (int a = 0; a < r; a++)
            for (int j = 0; j < p; j++) {
                MK_V acc = x[j] * L[a * p];
                for (int i = 1; i < p; i++) acc += x[i * p + j] * L[a * p + i];
                t[a * p + j] = acc;
            }
        for (int a = 0; a < r; a++)
            for (int b = 0; b < r; b++) {
                MK_V acc = t[a * p] * L[b * p];
                for (int j = 1; j < p; j++) acc += t[a * p + j] * L[b * p + j];
                MK_NAME(mk_store)(out + (a * r + b) * stride + v, acc);
            }
    }
}

/* out = dy * (y > 0), branch-free: the ReLU's gradient exactly as the layers compute it
 * (dy * mask), so a NaN in dy propagates the same way. */
static MK_ATTR void MK_NAME(mk_relu_mask)(MK_REAL *out, const MK_REAL *dy, const MK_REAL *y, int n)
{
    const MK_V zero = {0}, one = zero + 1;
    int i = 0;
    for (; i + MK_VLEN <= n; i += MK_VLEN) {
        const MK_MASK positive = MK_NAME(mk_load)(y + i) > zero;
        MK_NAME(mk_store)(out + i, MK_NAME(mk_load)(dy + i) * (MK_V)((MK_MASK)one & positive));
    }
    for (; i < n; i++) out[i] = dy[i] * (MK_REAL)(y[i] > 0);
}

/* One window of max pooling over C channels, its ncells cells inside the input (cells[k], whose
 * channel c has the index base[k] + c), the running maximum kept in registers across them:
 * where a cell beats it (strictly greater keeps the first maximum; a NaN beats any number and
 * then stays), take its value and index; one store of each at the end. `start`: from the first
 * cell (MK_POOL_FROM_FIRST), from a padding cell (-inf, index -1: MK_POOL_FROM_PADDING), or
 * from the value and index already in best and arg (MK_POOL_CONTINUE). The same comparisons
 * in the same order as cell by cell, so the same bits; with the maximum in memory between
 * cells, 2x2 windows over 32 channels took twice as long. */
static MK_ATTR void MK_NAME(mk_pool_window)(MK_REAL *best, int32_t *arg, const MK_REAL *const *cells,
                                            const int32_t *base, int ncells, int start, int C)
{
    typedef int32_t idx_vec __attribute__((vector_size(MK_VLEN * 4)));
    const int from = start == MK_POOL_FROM_FIRST ? 1 : 0;
    idx_vec lane;
    for (int k = 0; k < MK_VLEN; k++) lane[k] = k;
    int c = 0;
    for (; c + MK_VLEN <= C; c += MK_VLEN) {
        MK_V b;
        idx_vec a;
        if (start == MK_POOL_FROM_FIRST) {
            b = MK_NAME(mk_load)(cells[0] + c);
            a = lane + (base[0] + c);
        } else if (start == MK_POOL_FROM_PADDING) {
            b = (MK_V){0} - (MK_REAL)INFINITY;
            a = (idx_vec){0} - 1;
        } else {
            b = MK_NAME(mk_load)(best + c);
            memcpy(&a, arg + c, sizeof a);
        }
        for (int k = from; k < ncells; k++) {
            const MK_V v = MK_NAME(mk_load)(cells[k] + c);
            const MK_MASK better = (v > b) | ((v != v) & (b == b));
            b = (MK_V)(((MK_MASK)v & better) | ((MK_MASK)b & ~better));
            const idx_vec take = __builtin_convertvector(better, idx_vec);
            a = ((lane + (base[k] + c)) & take) | (a & ~take);
        }
        MK_NAME(mk_store)(best + c, b);
        memcpy(arg + c, &a, sizeof a);
    }
    for (; c < C; c++) {   /* without branches: on real data they are unpredictable */
        MK_REAL b = start == MK_POOL_FROM_FIRST ? cells[0][c]
                  : start == MK_POOL_FROM_PADDING ? -(MK_REAL)INFINITY : best[c];
        int32_t a = start == MK_POOL_FROM_FIRST ? base[0] + c : start == MK_POOL_FROM_PADDING ? -1 : arg[c];
        for (int k = from; k < ncells; k++) {
            const MK_REAL v = cells[k][c];
            const int better = (v > b) | ((v != v) & (b == b));
            b = better ? v : b;
            a = better ? base[k] + c : a;
        }
        best[c] = b;
        arg[c] = a;
    }
}

/* The gradient a max pool hands back, written out densely for one window: cell k of the
 * window (out[k], C channels, argmax value base[k] + c for channel c) gets v = (0 + dy) * m
 * where the window's winner is that cell and +0 elsewhere; m = (mask > 0) with a mask (the
 * pooled values of a fused ReLU: the winner's own y), 1 without. (0 + dy) and dy * m are the
 * pool's backward (dx = 0, dx[winner] += dy) and the ReLU's mask (dy * (y > 0)) to the bit.
 * Every cell is written whole, so no memset and no scatter through the indexes. */
static MK_ATTR void MK_NAME(mk_pool_expand)(MK_REAL *const *out, const int32_t *base, int cells,
                                            const int32_t *argmax, const MK_REAL *dy,
                                            const MK_REAL *mask, int C)
{
    typedef int32_t idx_vec __attribute__((vector_size(MK_VLEN * 4)));
    const MK_V zero = {0}, one = zero + 1;
    idx_vec lane;
    for (int k = 0; k < MK_VLEN; k++) lane[k] = k;
    int c = 0;
    for (; c + MK_VLEN <= C; c += MK_VLEN) {
        idx_vec a;
        memcpy(&a, argmax + c, sizeof a);
        a -= lane + c;   /* the winner's cell base, in every lane */
        MK_V v = zero + MK_NAME(mk_load)(dy + c);
        if (mask) v = v * (MK_V)((MK_MASK)one & (MK_NAME(mk_load)(mask + c) > zero));
        for (int k = 0; k < cells; k++) {
            const MK_MASK won = __builtin_convertvector(a == (idx_vec){0} + base[k], MK_MASK);
            MK_NAME(mk_store)(out[k] + c, (MK_V)((MK_MASK)v & won));
        }
    }
    for (; c < C; c++) {
        MK_REAL v = (MK_REAL)0 + dy[c];
        if (mask) v = v * (MK_REAL)(mask[c] > 0);
        for (int k = 0; k < cells; k++) out[k][c] = argmax[c] - c == base[k] ? v : (MK_REAL)0;
    }
}

/* The optimizer updates, in place on n elements. Every operation rounds on its own, in the
 * order of the NumPy optimizer's ufuncs (MK_NO_CONTRACT: no fused multiply-adds), so the C
 * engine's parameters equal the NumPy engine's bit for bit. MK_VSQRT is the instruction set's
 * correctly rounded vector square root (kernels.c), or lane by lane where it has none.
 *
 * Adam (Keras): c = {beta_1, 1 - beta_1, beta_2, 1 - beta_2, epsilon, lr_t}, already rounded
 *   m = m*b1 + g*(1-b1);  v = v*b2 + (g*g)*(1-b2);  p = p - (m / (sqrt(v) + eps)) * lr_t */
static MK_ATTR MK_NO_CONTRACT void MK_NAME(mk_adam)(MK_REAL *p, const MK_REAL *g, MK_REAL *m,
                                                   MK_REAL *v, int64_t n, const MK_REAL *c)
{
    const MK_V zero = {0};
    const MK_V b1 = zero + c[0], ob1 = zero + c[1], b2 = zero + c[2], ob2 = zero + c[3];
    const MK_V eps = zero + c[4], lr = zero + c[5];
    int64_t i = 0;
    for (; i + MK_VLEN <= n; i += MK_VLEN) {
        const MK_V gi = MK_NAME(mk_load)(g + i);
        const MK_V mi = MK_NAME(mk_load)(m + i) * b1 + gi * ob1;
        const MK_V vi = MK_NAME(mk_load)(v + i) * b2 + (gi * gi) * ob2;
        MK_NAME(mk_store)(m + i, mi);
        MK_NAME(mk_store)(v + i, vi);
        MK_V root;
#ifdef MK_VSQRT
        root = MK_VSQRT(vi);
#else
        for (int k = 0; k < MK_VLEN; k++) root[k] = MK_SQRT(vi[k]);
#endif
        MK_NAME(mk_store)(p + i, MK_NAME(mk_load)(p + i) - (mi / (root + eps)) * lr);
    }
    for (; i < n; i++) {
        const MK_REAL gi = g[i];
        const MK_REAL mi = m[i] * c[0] + gi * c[1];
        const MK_REAL vi = v[i] * c[2] + (gi * gi) * c[3];
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] - (mi / (MK_SQRT(vi) + c[4])) * c[5];
    }
}

/* SGD (Keras): s = g*lr; without velocity p = p - s; with it vel = vel*mom - s, then
 * p = p + vel, or for Nesterov p = (p - s) + vel*mom. */
static MK_ATTR MK_NO_CONTRACT void MK_NAME(mk_sgd)(MK_REAL *p, const MK_REAL *g, MK_REAL *vel,
                                                  int64_t n, MK_REAL lr, MK_REAL mom, int nesterov)
{
    const MK_V zero = {0};
    const MK_V lrv = zero + lr, momv = zero + mom;
    int64_t i = 0;
    for (; i + MK_VLEN <= n; i += MK_VLEN) {
        const MK_V s = MK_NAME(mk_load)(g + i) * lrv;
        MK_V pi = MK_NAME(mk_load)(p + i);
        if (!vel) {
            pi = pi - s;
        } else {
            const MK_V vi = MK_NAME(mk_load)(vel + i) * momv - s;
            MK_NAME(mk_store)(vel + i, vi);
            pi = nesterov ? (pi - s) + vi * momv : pi + vi;
        }
        MK_NAME(mk_store)(p + i, pi);
    }
    for (; i < n; i++) {
        const MK_REAL s = g[i] * lr;
        if (!vel) {
            p[i] = p[i] - s;
        } else {
            const MK_REAL vi = vel[i] * mom - s;
            vel[i] = vi;
            p[i] = nesterov ? (p[i] - s) + vi * mom : p[i] + vi;
        }
    }
}

#undef MK_WINO_IN
#undef MK_WINO_OUT
#undef MK_WINO_DY
#undef MK_WINO5_BT
#undef MK_WINO5_AT
#undef MK_WINO5_A

/* The instances: one per vector count, each with its own tile height, plus one of half the
 * height for the last rows of a matrix (32 rows in tiles of 6 would otherwise compute 36). */
#define MK_INSTANCE(TAG, NV, MR)                                                              \
    static MK_ATTR void MK_NAME(mk_igemm_##TAG)(ptrdiff_t K, const MK_REAL *const *a,          \
        const ptrdiff_t *aoff, const MK_REAL *b, MK_REAL *const *c, int mr, int last_cols,    \
        const MK_REAL *bias, int relu)                                                        \
    {                                                                                         \
        MK_NAME(mk_igemm_body)(MR, NV, 0, K, a, aoff, b, c, mr, last_cols, bias, relu);       \
    }                                                                                         \
    static MK_ATTR void MK_NAME(mk_igemm_unit_##TAG)(ptrdiff_t K, const MK_REAL *const *a,     \
        const ptrdiff_t *aoff, const MK_REAL *b, MK_REAL *const *c, int mr, int last_cols,    \
        const MK_REAL *bias, int relu)                                                        \
    {                                                                                         \
        MK_NAME(mk_igemm_body)(MR, NV, 1, K, a, aoff, b, c, mr, last_cols, bias, relu);       \
    }                                                                                         \
    static MK_ATTR void MK_NAME(mk_wgrad_##TAG)(const MK_REAL *x, ptrdiff_t xrs, ptrdiff_t xcs, \
        int oh, int ow, const ptrdiff_t *off, const MK_REAL *dy, ptrdiff_t dyrs,              \
        ptrdiff_t dycs, MK_REAL *dst, ptrdiff_t ld, int mr)                                   \
    {                                                                                         \
        MK_NAME(mk_wgrad_body)(MR, NV, x, xrs, xcs, oh, ow, off, dy, dyrs, dycs, dst, ld, mr); \
    }

MK_INSTANCE(1, 1, MK_MR1)
MK_INSTANCE(h1, 1, MK_MR1 / 2)
MK_INSTANCE(2, 2, MK_MR2)
MK_INSTANCE(h2, 2, MK_MR2 / 2)
#if MK_NVMAX == 4
MK_INSTANCE(3, 3, MK_MR3)
MK_INSTANCE(h3, 3, MK_MR3 / 2)
MK_INSTANCE(4, 4, MK_MR4)
MK_INSTANCE(h4, 4, MK_MR4 / 2)
#endif

#undef MK_INSTANCE
#undef MK_VLEN
#undef MK_MASK
#undef MK_V
#undef MK_NAME
#undef MK_CAT
#undef MK_CAT2
#undef MK_SFX
#undef MK_ISA_NAME
#undef MK_DT
#undef MK_REAL
#undef MK_INT
#undef MK_SQRT
#undef MK_VSQRT
#undef MK_VBYTES
#undef MK_NVMAX
#undef MK_MR1
#undef MK_MR2
#undef MK_MR3
#undef MK_MR4
#undef MK_ATTR
#undef MK_ISA
#undef MK_BITS
