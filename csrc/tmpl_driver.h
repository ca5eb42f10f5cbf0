/* The convolution and pooling drivers, written once for both dtypes and compiled twice by
 * csrc/kernels.c. No include guard: this file is a template.
 *
 * Before including, define DR (float or double) and DSFX (f32 or f64); csrc/kernels.c has
 * already defined the microkernel table type DN(mc_isa) and the tables DN(mc_isa_tables).
 *
 * Every function below trusts its arguments: the public entry points at the bottom check
 * the geometry and every buffer length first.
 *
 * Algorithm (docs/architecture.md has the measurements that chose it):
 *   forward   copy x once into a zero-padded buffer (kept for backward), then for every tile of
 *             MR output pixels x NB filters run the igemm microkernel straight on the padded
 *             image: no im2col buffer, the kernel taps are a table of offsets.
 *   dkernel   per thread, a private gradient; every image adds MR rows x NB filters at a time
 *             with the wgrad microkernel (the reduction over the image's pixels stays in
 *             registers); then the private gradients are summed in a fixed order.
 *   dx        the transposed convolution of dy, again with igemm: dy is copied once into a
 *             zero-margined buffer and, for strides > 1, the output pixels are split by their
 *             phase (row mod stride_h, column mod stride_w) so that each phase is a dense
 *             convolution with its own subset of kernel taps: no zeros are ever multiplied.
 *   3x3, stride 1, enough channels: all three passes use Winograd F(2x2, 3x3) instead (below),
 *             2.25x fewer multiplications on the same microkernels.
 */
#define DCAT2(a, b) a##_##b
#define DCAT(a, b) DCAT2(a, b)
#define DN(base) DCAT(base, DSFX)

/* A bump allocator over the caller's workspace: 64-byte aligned regions. */
typedef struct {
    char *next;
    char *end;
} DN(mc_arena);

static void *DN(arena_take)(DN(mc_arena) *arena, int64_t bytes)
{
    uintptr_t p = ((uintptr_t)arena->next + 63u) & ~(uintptr_t)63u;
    if (bytes < 0 || (char *)p > arena->end || (int64_t)(arena->end - (char *)p) < bytes) return NULL;
    arena->next = (char *)p + bytes;
    return (void *)p;
}

/* Copy one image into its zero-padded frame. */
static void DN(pad_image)(const DR *x, int h, int w, int c, int top, int bottom, int left,
                          int right, DR *xp)
{
    const int wp = w + left + right;
    const size_t row = (size_t)wp * c;
    memset(xp, 0, (size_t)top * row * sizeof(DR));
    for (int r = 0; r < h; r++) {
        DR *dst = xp + (size_t)(top + r) * row;
        memset(dst, 0, (size_t)left * c * sizeof(DR));
        memcpy(dst + (size_t)left * c, x + (size_t)r * w * c, (size_t)w * c * sizeof(DR));
        memset(dst + (size_t)(left + w) * c, 0, (size_t)right * c * sizeof(DR));
    }
    memset(xp + (size_t)(top + h) * row, 0, (size_t)bottom * row * sizeof(DR));
}

/* Column blocks: block b covers columns [b*nb, min(cols, (b+1)*nb)), stored as rows x width
 * with width a whole number of vectors (zeros past cols), at offset b*nb*rows. */
static int DN(block_vectors)(int cols, int b, int nb, int vlen)
{
    int width = cols - b * nb;
    if (width > nb) width = nb;
    return (width + vlen - 1) / vlen;
}

/* Threads worth waking for `work` multiply-adds (or element visits): a parallel region costs
 * microseconds when the other core is free and a scheduler time slice when it is not. */
static int DN(threads_for)(int64_t work, int threads)
{
    return work < MC_PARALLEL_MIN_WORK ? 1 : threads;
}

/* Run igemm over `tiles` of output rows. pixel_ptrs fills the a and c pointers of a tile. */
typedef struct {
    /* forward: pixel -> (n, p, q); dx: pixel -> (n, hh, ww) inside one phase */
    int64_t count;                 /* pixels */
    int rows, cols;                /* output pixels per image are rows x cols */
    const DR *a_base;              /* input buffer */
    ptrdiff_t a_img, a_row, a_col; /* strides in the input buffer per image, row, column */
    DR *c_base;                    /* output buffer */
    ptrdiff_t c_img, c_row, c_col; /* strides in the output per image, row, column */
} DN(mc_tiling);

static void DN(run_igemm)(const DN(mc_isa) *isa, const DN(mc_tiling) *tl, ptrdiff_t K,
                          const ptrdiff_t *aoff, const DR *packed, const DR *packed_bias,
                          int out_cols, int relu, int threads)
{
    const int vlen = isa->vlen, nb = isa->nvmax * vlen;
    const int blocks = (out_cols + nb - 1) / nb;
    const int64_t per_img = (int64_t)tl->rows * tl->cols;
    if (tl->count <= 0) return;
    for (int b = 0; b < blocks; b++) {
        const int nv = DN(block_vectors)(out_cols, b, nb, vlen);
        const int mr_max = isa->mr[nv];
        /* valid columns in the block's last vector: a whole vector except in the last block */
        const int rest = out_cols - b * nb - (nv - 1) * vlen;
        const int last_cols = rest < vlen ? rest : vlen;
        const DR *bpack = packed + (ptrdiff_t)b * nb * K;
        const DR *bbias = packed_bias ? packed_bias + (ptrdiff_t)b * nb : NULL;
        const int64_t tiles = (tl->count + mr_max - 1) / mr_max;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && tiles > 1)
#endif
        for (int64_t tile = 0; tile < tiles; tile++) {
            const DR *a[MK_MRMAX];
            DR *c[MK_MRMAX];
            const int64_t first = tile * mr_max;
            const int mr = (int)(tl->count - first < mr_max ? tl->count - first : mr_max);
            int64_t n = first / per_img, r = first % per_img;
            int row = (int)(r / tl->cols), col = (int)(r % tl->cols);
            for (int t = 0; t < mr_max; t++) {
                a[t] = tl->a_base + n * tl->a_img + row * tl->a_row + col * tl->a_col;
                c[t] = tl->c_base + n * tl->c_img + row * tl->c_row + col * tl->c_col + b * nb;
                /* rows past the end repeat the last pixel: computed, never stored */
                if (t + 1 < mr && ++col == tl->cols) {
                    col = 0;
                    if (++row == tl->rows) { row = 0; n++; }
                }
            }
            (mr <= isa->mr_half[nv] ? isa->igemm_half[nv] : isa->igemm[nv])(K, a, aoff, bpack, c, mr,
                                                                           last_cols, bbias, relu);
        }
        (void)threads;
    }
}

/* ---- convolution geometry shared by forward, backward and the workspace queries ---- */

typedef struct {
    int64_t hp, wp, oh, ow, K;
    /* transposed-convolution (dx) frame: dy with margins, per-phase sizes */
    int64_t mt, mb, ml, mrt, hd, wd;
} DN(mc_conv_dims);

static int64_t DN(round_up)(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

/* Largest vector length of any instruction set for this dtype: workspace sizes use it so
 * that they do not depend on the SIMD level picked at run time. */
#define DN_VLEN_MAX ((int)(64 / sizeof(DR)))

static void DN(conv_dims)(const mc_conv_geom *g, DN(mc_conv_dims) *d)
{
    d->hp = (int64_t)g->h + g->pad_top + g->pad_bottom;
    d->wp = (int64_t)g->w + g->pad_left + g->pad_right;
    d->oh = (d->hp - g->kh) / g->stride_h + 1;
    d->ow = (d->wp - g->kw) / g->stride_w + 1;
    d->K = (int64_t)g->kh * g->kw * g->c;
    /* dx[h] gathers dy[(h + top - i) / stride] for the taps i with (h + top - i) % stride == 0;
     * the margins make every such row index land inside the dy frame (zeros outside dy). */
    d->mt = d->mb = d->ml = d->mrt = 0;
    for (int h = 0; h < g->h && h < g->stride_h * 2 + g->kh; h++) {
        const int hp = h + g->pad_top, ph = hp % g->stride_h;
        const int taps = ph < g->kh ? (g->kh - 1 - ph) / g->stride_h + 1 : 0;
        if (taps > 0 && taps - 1 - hp / g->stride_h > d->mt) d->mt = taps - 1 - hp / g->stride_h;
    }
    if ((g->h - 1 + g->pad_top) / g->stride_h - (d->oh - 1) > 0)
        d->mb = (g->h - 1 + g->pad_top) / g->stride_h - (d->oh - 1);
    for (int w = 0; w < g->w && w < g->stride_w * 2 + g->kw; w++) {
        const int wp = w + g->pad_left, pw = wp % g->stride_w;
        const int taps = pw < g->kw ? (g->kw - 1 - pw) / g->stride_w + 1 : 0;
        if (taps > 0 && taps - 1 - wp / g->stride_w > d->ml) d->ml = taps - 1 - wp / g->stride_w;
    }
    if ((g->w - 1 + g->pad_left) / g->stride_w - (d->ow - 1) > 0)
        d->mrt = (g->w - 1 + g->pad_left) / g->stride_w - (d->ow - 1);
    d->hd = d->mt + d->oh + d->mb;
    d->wd = d->ml + d->ow + d->mrt;
}

/* ---- Winograd F(2x2, 3x3): 16 multiplications per 2x2 outputs instead of 36 ----
 *
 * For stride-1 3x3 convolutions with at most 2 rows/columns of padding per side. Tiles of 2x2
 * outputs are processed in blocks: every tile's 4x4 input patch is transformed (V = B^T d B,
 * 16 values per channel), then for each of the 16 transformed positions xi one small GEMM
 * M[xi] = V[xi] (tiles x C) @ U[xi] (C x F) runs on the igemm microkernel (U = G g G^T, the
 * transformed kernel), and A^T M A gives the outputs. The kernel gradient is the adjoint:
 * dU[xi] = V[xi]^T @ Z[xi] with Z = A dY A^T, reduced over tiles by the wgrad microkernel,
 * then dkernel = G^T dU G. The input gradient is the forward algorithm run on the zero-framed
 * dy with the kernel flipped and its channel axes swapped.
 *
 * Numerics: the transforms use only 0, +-1 and +-1/2, so the result differs from the direct
 * sum by a few roundings (float32: ~1e-7 of the output's scale; tests allow 1e-5).
 */
#define DN_WINO_TILES 36     /* tiles per block, forward and dx (V and M stay in L2) */
#define DN_WINO_TILES_W 64   /* tiles per block for the kernel gradient */

static const DR DN(wino_g)[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};

static int DN(wino_eligible)(const mc_conv_geom *g)
{
    return g->kh == 3 && g->kw == 3 && g->stride_h == 1 && g->stride_w == 1 && g->pad_top <= 2 &&
           g->pad_bottom <= 2 && g->pad_left <= 2 && g->pad_right <= 2;
}

/* Whether one pass (MC_PASS_*) runs Winograd. Automatically when the channel counts that
 * feed its GEMMs reach MC_WINO_MIN_CHANNELS: below that the 16 GEMMs per tile block are too
 * thin to beat the direct kernels (docs/architecture.md has the measurements). */
static int DN(use_wino)(const mc_conv_geom *g, int pass)
{
    if (!DN(wino_eligible)(g) || mc_algorithm == MC_ALGO_DIRECT) return 0;
    if (mc_algorithm == MC_ALGO_WINOGRAD) return 1;
    switch (pass) {
    case MC_PASS_FORWARD: return g->c >= MC_WINO_MIN_CHANNELS;      /* reduces over C */
    case MC_PASS_DKERNEL: return g->c >= MC_WINO_MIN_CHANNELS && g->f >= MC_WINO_MIN_CHANNELS;
    default: return g->f >= MC_WINO_MIN_CHANNELS;                   /* dx reduces over F */
    }
}

/* A batch of images read by pixel: (n, r, s) at base + n*img + r*row + s*col; cells outside
 * [0, h) x [0, w) read as zeros. */
typedef struct {
    const DR *base;
    ptrdiff_t img, row, col;
    int h, w, channels;
} DN(mc_view);

/* U[xi] = (G g G^T)[xi] for every (ci, co), stored per xi as igemm's packed column blocks
 * (cin rows of whole vectors each), xi apart by u_stride. g(i, j, ci, co) is
 * g0[i*si + j*sj + ci*sci + co*sco]: the kernel as it is, or flipped with channels swapped. */
static void DN(wino_pack)(const DN(mc_isa) *isa, const DR *g0, ptrdiff_t si, ptrdiff_t sj,
                          ptrdiff_t sci, ptrdiff_t sco, int cin, int cout, DR *U, int64_t u_stride,
                          int threads)
{
    const int vlen = isa->vlen, nb = isa->nvmax * vlen;
    const int coutv = (int)DN(round_up)(cout, vlen);
    const DR (*G)[3] = DN(wino_g);
    (void)threads;   /* read by the OpenMP pragma only */
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && cin > 8)
#endif
    for (int ci = 0; ci < cin; ci++) {
        /* 64 output channels at a time, channel-innermost so that the loops vectorise */
        for (int co0 = 0; co0 < coutv; co0 += 64) {
            const int width = coutv - co0 < 64 ? coutv - co0 : 64;
            DR gl[9][64], t[4][3][64], u[16][64];
            for (int ij = 0; ij < 9; ij++)
                for (int k = 0; k < width; k++)
                    gl[ij][k] = co0 + k < cout ? g0[(ij / 3) * si + (ij % 3) * sj + ci * sci + (co0 + k) * sco] : (DR)0;
            for (int a = 0; a < 4; a++)
                for (int jj = 0; jj < 3; jj++)
                    for (int k = 0; k < width; k++)
                        t[a][jj][k] = G[a][0] * gl[jj][k] + G[a][1] * gl[3 + jj][k] + G[a][2] * gl[6 + jj][k];
            for (int a = 0; a < 4; a++)
                for (int b = 0; b < 4; b++)
                    for (int k = 0; k < width; k++)
                        u[4 * a + b][k] = t[a][0][k] * G[b][0] + t[a][1][k] * G[b][1] + t[a][2][k] * G[b][2];
            ptrdiff_t at[64];
            for (int k = 0; k < width; k++) {
                const int co = co0 + k, blk = co / nb, bw = DN(block_vectors)(cout, blk, nb, vlen) * vlen;
                at[k] = (ptrdiff_t)blk * nb * cin + (ptrdiff_t)ci * bw + co % nb;
            }
            for (int xi = 0; xi < 16; xi++)
                for (int k = 0; k < width; k++) U[xi * u_stride + at[k]] = u[xi][k];
        }
    }
}

/* The 16 cell pointers of tile (img, ti, tj), zeros outside the image. */
static void DN(wino_cells)(const DN(mc_view) *in, int64_t img, int ti, int tj, const DR *zeros,
                           const DR **d)
{
    for (int r = 0; r < 4; r++) {
        const int row = 2 * ti + r;
        for (int s = 0; s < 4; s++) {
            const int col = 2 * tj + s;
            d[4 * r + s] = row < in->h && col < in->w
                               ? in->base + img * in->img + row * in->row + col * in->col
                               : zeros;
        }
    }
}

/* out[n, p, q, :] = act(bias + sum_{i,j,c} in[n, p+i, q+j, c] * g[i, j, c, :]) for p < oh,
 * q < ow, out contiguous (n, oh, ow, cout). vbuf/mbuf: per-thread blocks. */
static void DN(wino_conv)(const DN(mc_isa) *isa, const DN(mc_view) *in, int n, int oh, int ow,
                          DR *out, int cout, const DR *U, int64_t u_stride, const DR *bias,
                          int relu, const ptrdiff_t *ident, const DR *zeros, DR *const *vbuf,
                          DR *const *mbuf, int parts)
{
    const int vlen = isa->vlen, nb = isa->nvmax * vlen, cin = in->channels;
    const int th = (oh + 1) / 2, tw = (ow + 1) / 2;
    const int64_t per_img = (int64_t)th * tw, tiles = n * per_img;
    const int64_t blocks = (tiles + DN_WINO_TILES - 1) / DN_WINO_TILES;
    const int fv = (int)DN(round_up)(cout, vlen);
    if (parts > blocks) parts = (int)blocks;
#ifdef _OPENMP
#pragma omp parallel num_threads(parts) if (parts > 1)
#endif
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num();
#else
        const int tid = 0;
#endif
        DR *V = vbuf[tid], *M = mbuf[tid];
        const ptrdiff_t vs = (ptrdiff_t)DN_WINO_TILES * cin, ms = (ptrdiff_t)DN_WINO_TILES * fv;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t blk = 0; blk < blocks; blk++) {
            const int64_t t0 = blk * DN_WINO_TILES;
            const int count = (int)(tiles - t0 < DN_WINO_TILES ? tiles - t0 : DN_WINO_TILES);
            for (int t = 0; t < count; t++) {
                const int64_t tile = t0 + t, img = tile / per_img, r = tile % per_img;
                const DR *d[16];
                DN(wino_cells)(in, img, (int)(r / tw), (int)(r % tw), zeros, d);
                isa->wino_in(d, cin, V + (ptrdiff_t)t * cin, vs);
            }
            for (int xi = 0; xi < 16; xi++) {
                for (int b = 0; b * nb < cout; b++) {
                    const int nv = DN(block_vectors)(cout, b, nb, vlen), mr_max = isa->mr[nv];
                    const DR *ub = U + xi * u_stride + (ptrdiff_t)b * nb * cin;
                    for (int m0 = 0; m0 < count; m0 += mr_max) {
                        const DR *a[MK_MRMAX];
                        DR *c[MK_MRMAX];
                        const int mr = count - m0 < mr_max ? count - m0 : mr_max;
                        for (int t = 0; t < mr_max; t++) {
                            const int row = m0 + (t < mr ? t : mr - 1);
                            a[t] = V + xi * vs + (ptrdiff_t)row * cin;
                            c[t] = M + xi * ms + (ptrdiff_t)row * fv + b * nb;
                        }
                        /* M rows are fv wide: whole vectors can be stored */
                        (mr <= isa->mr_half[nv] ? isa->igemm_half[nv] : isa->igemm[nv])(
                            cin, a, ident, ub, c, mr, vlen, NULL, 0);
                    }
                }
            }
            for (int t = 0; t < count; t++) {
                const int64_t tile = t0 + t, img = tile / per_img, r = tile % per_img;
                const int ti = (int)(r / tw), tj = (int)(r % tw);
                DR *y[4];
                for (int k = 0; k < 4; k++) {
                    const int p = 2 * ti + k / 2, q = 2 * tj + k % 2;
                    y[k] = p < oh && q < ow ? out + ((img * oh + p) * ow + q) * cout : NULL;
                }
                isa->wino_out(M + (ptrdiff_t)t * fv, ms, cout, bias, relu, y);
            }
        }
    }
}

/* acc[tid] (16 x C x fpad, then fpad for the bias) += the transformed kernel gradient of the
 * blocks this thread takes, over every image: dU[xi] += V[xi]^T Z[xi]. */
static void DN(wino_wgrad)(const DN(mc_isa) *isa, const DN(mc_view) *in, const DN(mc_view) *dy,
                           int n, int F, int64_t fpad, const DR *zeros, DR *const *acc,
                           DR *const *vbuf, DR *const *zbuf, int with_bias, int parts)
{
    const int vlen = isa->vlen, nb = isa->nvmax * vlen, C = in->channels;
    const int oh = dy->h, ow = dy->w, th = (oh + 1) / 2, tw = (ow + 1) / 2;
    const int64_t per_img = (int64_t)th * tw, tiles = n * per_img;
    const int64_t blocks = (tiles + DN_WINO_TILES_W - 1) / DN_WINO_TILES_W;
    const int fv = (int)DN(round_up)(F, vlen);
    /* zeroed here rather than by their threads: a team smaller than asked for (a thread
     * limit) still sums only zeros from the accumulators it never touched */
    for (int t = 0; t < parts; t++) memset(acc[t], 0, (size_t)(16 * C * fpad + fpad) * sizeof(DR));
#ifdef _OPENMP
#pragma omp parallel num_threads(parts) if (parts > 1)
#endif
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num();
#else
        const int tid = 0;
#endif
        DR *V = vbuf[tid], *Z = zbuf[tid], *dU = acc[tid], *db = acc[tid] + 16 * C * fpad;
        const ptrdiff_t vs = (ptrdiff_t)DN_WINO_TILES_W * C, zs = (ptrdiff_t)DN_WINO_TILES_W * fv;
        ptrdiff_t offs[MK_MRMAX];
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t blk = 0; blk < blocks; blk++) {
            const int64_t t0 = blk * DN_WINO_TILES_W;
            const int count = (int)(tiles - t0 < DN_WINO_TILES_W ? tiles - t0 : DN_WINO_TILES_W);
            for (int t = 0; t < count; t++) {
                const int64_t tile = t0 + t, img = tile / per_img, r = tile % per_img;
                const int ti = (int)(r / tw), tj = (int)(r % tw);
                const DR *d[16], *gcell[4];
                DN(wino_cells)(in, img, ti, tj, zeros, d);
                isa->wino_in(d, C, V + (ptrdiff_t)t * C, vs);
                for (int k = 0; k < 4; k++) {
                    const int p = 2 * ti + k / 2, q = 2 * tj + k % 2;
                    gcell[k] = p < oh && q < ow ? dy->base + img * dy->img + p * dy->row + q * dy->col : NULL;
                }
                isa->wino_dy(gcell, F, fv, Z + (ptrdiff_t)t * fv, zs);
            }
            if (with_bias) {
                /* Z[5] = (A dY A^T)[1][1] is the sum of the tile's four gradient cells */
                for (int t = 0; t < count; t++) {
                    const DR *z5 = Z + 5 * zs + (ptrdiff_t)t * fv;
                    for (int f = 0; f < F; f++) db[f] += z5[f];
                }
            }
            for (int xi = 0; xi < 16; xi++) {
                for (int b = 0; b * nb < F; b++) {
                    const int nv = DN(block_vectors)(F, b, nb, vlen), mr_max = isa->mr[nv];
                    for (int m0 = 0; m0 < C; m0 += mr_max) {
                        const int mr = C - m0 < mr_max ? C - m0 : mr_max;
                        for (int t = 0; t < mr_max; t++) offs[t] = m0 + (t < mr ? t : mr - 1);
                        (mr <= isa->mr_half[nv] ? isa->wgrad_half[nv] : isa->wgrad[nv])(
                            V + xi * vs, 0, C, 1, count, offs, Z + xi * zs + b * nb, 0, fv,
                            dU + (xi * C + m0) * fpad + b * nb, (ptrdiff_t)fpad, mr);
                    }
                }
            }
        }
    }
}

/* dkernel[i, j, c, f] = (G^T dU[:, :, c, f] G)[i, j], dU summed over the threads' parts. */
static void DN(wino_unpack_dw)(DR *const *acc, int parts, int C, int F, int64_t fpad, DR *dkernel,
                               int threads)
{
    const DR (*G)[3] = DN(wino_g);
    (void)threads;   /* read by the OpenMP pragma only */
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && C > 8)
#endif
    for (int c = 0; c < C; c++) {
        for (int f0 = 0; f0 < F; f0 += 64) {
            const int width = F - f0 < 64 ? F - f0 : 64;
            DR u[16][64], t[3][4][64];
            for (int xi = 0; xi < 16; xi++) {
                const DR *first = acc[0] + (xi * C + c) * fpad + f0;
                for (int k = 0; k < width; k++) u[xi][k] = first[k];
                for (int p = 1; p < parts; p++) {
                    const DR *more = acc[p] + (xi * C + c) * fpad + f0;
                    for (int k = 0; k < width; k++) u[xi][k] += more[k];
                }
            }
            for (int i = 0; i < 3; i++)
                for (int b = 0; b < 4; b++)
                    for (int k = 0; k < width; k++)
                        t[i][b][k] = G[0][i] * u[b][k] + G[1][i] * u[4 + b][k] + G[2][i] * u[8 + b][k] +
                                     G[3][i] * u[12 + b][k];
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 3; j++) {
                    DR *dst = dkernel + ((i * 3 + j) * C + c) * F + f0;
                    for (int k = 0; k < width; k++)
                        dst[k] = t[i][0][k] * G[0][j] + t[i][1][k] * G[1][j] + t[i][2][k] * G[2][j] +
                                 t[i][3][k] * G[3][j];
                }
        }
    }
}

/* ---- the workspace plan ----
 *
 * One call's scratch memory, laid out once from the geometry, the algorithm of every pass and
 * the thread count: the fixed regions, then exactly `threads` per-thread regions, each as large
 * as the largest per-thread use of any step. Every step takes its per-thread pointers from the
 * plan, never from another step's leftovers, and the workspace queries size the very same plan,
 * so no thread can find its region missing whichever branches a call takes. Offsets are bytes
 * from the workspace's first 64-byte boundary; the total includes the 64 bytes of that rounding.
 */

typedef struct {
    int threads;                       /* per-thread regions laid out, and the threads used */
    int wino_fwd, wino_dw, wino_dx;    /* the algorithm of each pass */
    int need_frame;                    /* dy copied into a whole-batch frame (backward) */
    int staged;                        /* direct dkernel masks / pads dy one image at a time */
    /* fixed regions (offsets; meaningful only when the step that uses them runs) */
    int64_t packed, packed_bias, aoff; /* direct forward: kernel blocks, bias, tap offsets */
    int64_t wpacked, toff;             /* direct dx: kernel blocks per phase, tap offsets */
    int64_t frame;                     /* dy with zero margins, rows of fpad */
    int64_t U, ident, zeros;           /* Winograd: transformed kernel, identity taps, zeros */
    /* thread t's region starts at first_thread + t * per_thread; inside it, per step: */
    int64_t first_thread, per_thread;
    int64_t fwd_v, fwd_m;              /* Winograd forward: transformed tiles and products */
    int64_t dw_acc, dw_stage;          /* direct dkernel: accumulator (+ bias), staged dy image */
    int64_t wdw_acc, wdw_v, wdw_z;     /* Winograd dkernel: accumulator (+ bias), tiles */
    int64_t wdx_v, wdx_m;              /* Winograd dx: transformed tiles and products */
    int64_t bytes;                     /* the whole workspace */
} DN(mc_conv_plan);

/* The offset of a new region of `bytes` at the cursor, 64-byte aligned; moves the cursor. */
static int64_t DN(place)(int64_t *cursor, int64_t bytes)
{
    const int64_t at = DN(round_up)(*cursor, 64);
    *cursor = at + bytes;
    return at;
}

static int64_t DN(zeros_len)(const mc_conv_geom *g)
{
    return DN(round_up)(g->c > g->f ? g->c : g->f, DN_VLEN_MAX);
}

/* Threads for a convolution: the work decides whether a second one is worth waking. */
static int DN(conv_threads)(const mc_conv_geom *g, const DN(mc_conv_dims) *d, int threads)
{
    threads = DN(threads_for)((int64_t)g->n * d->oh * d->ow * d->K * g->f, threads);
    return threads < 1 ? 1 : threads > MC_MAX_PARTS ? MC_MAX_PARTS : threads;
}

static void DN(plan_threads)(DN(mc_conv_plan) *p, int64_t fixed_end, int64_t per_thread)
{
    p->per_thread = DN(round_up)(per_thread, 64);
    p->first_thread = DN(round_up)(fixed_end, 64);
    p->bytes = p->first_thread + (int64_t)p->threads * p->per_thread + 64;
}

static void DN(forward_plan)(const mc_conv_geom *g, int threads, DN(mc_conv_plan) *p)
{
    const int64_t E = (int64_t)sizeof(DR), P = (int64_t)sizeof(ptrdiff_t);
    DN(mc_conv_dims) d;
    DN(conv_dims)(g, &d);
    const int64_t fpad = DN(round_up)(g->f, DN_VLEN_MAX);
    int64_t at = 0, sub = 0;
    memset(p, 0, sizeof *p);
    p->threads = DN(conv_threads)(g, &d, threads);
    p->wino_fwd = DN(use_wino)(g, MC_PASS_FORWARD);
    p->packed_bias = DN(place)(&at, fpad * E);
    if (p->wino_fwd) {
        p->U = DN(place)(&at, 16 * g->c * fpad * E);
        p->ident = DN(place)(&at, g->c * P);
        p->zeros = DN(place)(&at, DN(zeros_len)(g) * E);
        p->fwd_v = DN(place)(&sub, 16 * DN_WINO_TILES * g->c * E);
        p->fwd_m = DN(place)(&sub, 16 * DN_WINO_TILES * fpad * E);
    } else {
        p->packed = DN(place)(&at, d.K * fpad * E);
        p->aoff = DN(place)(&at, d.K * P);
    }
    DN(plan_threads)(p, at, sub);
}

static void DN(backward_plan)(const mc_conv_geom *g, int need_dx, int relu, int threads,
                              DN(mc_conv_plan) *p)
{
    const DN(mc_isa) *isa = &DN(mc_isa_tables)[mc_level];
    const int64_t E = (int64_t)sizeof(DR), P = (int64_t)sizeof(ptrdiff_t);
    DN(mc_conv_dims) d;
    DN(conv_dims)(g, &d);
    const int64_t fpad = DN(round_up)(g->f, DN_VLEN_MAX), cpad = DN(round_up)(g->c, DN_VLEN_MAX);
    const int64_t taps = (int64_t)g->kh * g->kw * g->f;
    const int ragged = relu || g->f % isa->vlen != 0;   /* dy must be masked or padded */
    int64_t at = 0;
    memset(p, 0, sizeof *p);
    p->threads = DN(conv_threads)(g, &d, threads);
    p->wino_dw = DN(use_wino)(g, MC_PASS_DKERNEL);
    /* Winograd dx reads the frame as dy zero-padded by exactly 2 - pad on each side */
    p->wino_dx = need_dx && DN(use_wino)(g, MC_PASS_DX) && d.mt == 2 - g->pad_top &&
                 d.ml == 2 - g->pad_left;
    /* dy goes into a whole-batch frame for dx (zero margins) and for the Winograd kernel
     * gradient when it must be masked or padded; the direct one stages one image at a time */
    p->need_frame = need_dx || (ragged && p->wino_dw);
    p->staged = !p->need_frame && ragged;
    if (p->need_frame)
        p->frame = DN(place)(&at, (int64_t)g->n * (need_dx ? d.hd * d.wd : d.oh * d.ow) * fpad * E);
    if (need_dx && !p->wino_dx) {
        p->wpacked = DN(place)(&at, taps * cpad * E);
        p->toff = DN(place)(&at, taps * P);
    }
    if (p->wino_dw || p->wino_dx) p->zeros = DN(place)(&at, DN(zeros_len)(g) * E);
    if (p->wino_dx) {
        p->U = DN(place)(&at, 16 * g->f * cpad * E);
        p->ident = DN(place)(&at, g->f * P);
    }
    /* the kernel gradient's and the input gradient's per-thread uses share each region: the
     * accumulators are summed before dx starts */
    int64_t dw = 0, dx = 0;
    if (p->wino_dw) {
        p->wdw_acc = DN(place)(&dw, (16 * g->c * fpad + fpad) * E);
        p->wdw_v = DN(place)(&dw, 16 * DN_WINO_TILES_W * g->c * E);
        p->wdw_z = DN(place)(&dw, 16 * DN_WINO_TILES_W * fpad * E);
    } else {
        p->dw_acc = DN(place)(&dw, (d.K * fpad + fpad) * E);
        if (p->staged) p->dw_stage = DN(place)(&dw, d.oh * d.ow * fpad * E);
    }
    if (p->wino_dx) {
        p->wdx_v = DN(place)(&dx, 16 * DN_WINO_TILES * g->f * E);
        p->wdx_m = DN(place)(&dx, 16 * DN_WINO_TILES * cpad * E);
    }
    DN(plan_threads)(p, at, dw > dx ? dw : dx);
}

/* A plan bound to the caller's workspace. */
typedef struct {
    char *base;                  /* the first 64-byte boundary of the workspace */
    int64_t bytes;               /* usable bytes from base */
    const DN(mc_conv_plan) *plan;
} DN(mc_work);

static DN(mc_work) DN(bind)(const DN(mc_conv_plan) *plan, DR *work, int64_t work_len)
{
    char *start = (char *)work;
    char *base = (char *)(((uintptr_t)start + 63u) & ~(uintptr_t)63u);
    DN(mc_work) w = {base, work_len * (int64_t)sizeof(DR) - (int64_t)(base - start), plan};
    MC_ASSERT(w.bytes >= plan->bytes - 64);
    return w;
}

/* A fixed region: `bytes` at offset `at`, inside the workspace. */
static void *DN(region)(const DN(mc_work) *w, int64_t at, int64_t bytes)
{
    MC_ASSERT(at >= 0 && bytes >= 0 && at + bytes <= w->bytes && at + bytes <= w->plan->first_thread);
    return w->base + at;
}

/* Thread t's part of a per-thread region: `bytes` at offset `at` inside thread t's region. */
static void *DN(thread_region)(const DN(mc_work) *w, int t, int64_t at, int64_t bytes)
{
    const DN(mc_conv_plan) *p = w->plan;
    MC_ASSERT(t >= 0 && t < p->threads && at >= 0 && bytes >= 0 && at + bytes <= p->per_thread);
    const int64_t start = p->first_thread + (int64_t)t * p->per_thread + at;
    MC_ASSERT(start + bytes <= w->bytes);
    return w->base + start;
}

/* ptrs[t] = thread t's part at `at` for every thread of the plan. */
static void DN(thread_parts)(const DN(mc_work) *w, int64_t at, int64_t bytes, DR **ptrs)
{
    for (int t = 0; t < w->plan->threads; t++) ptrs[t] = DN(thread_region)(w, t, at, bytes);
}

/* ---- forward ---- */

static int DN(conv_forward)(const mc_conv_geom *g, const DR *x, const DR *kernel,
                             const DR *bias, int relu, DR *xpad, DR *y, const DN(mc_work) *w)
{
    const DN(mc_isa) *isa = &DN(mc_isa_tables)[mc_level];
    const DN(mc_conv_plan) *plan = w->plan;
    const int64_t E = (int64_t)sizeof(DR), P = (int64_t)sizeof(ptrdiff_t);
    DN(mc_conv_dims) d;
    DN(conv_dims)(g, &d);
    const int vlen = isa->vlen, nb = isa->nvmax * vlen, F = g->f, C = g->c;
    const int64_t K = d.K;
    const int64_t fpad = DN(round_up)(F, DN_VLEN_MAX);
    const int threads = plan->threads;
    DR *packed_bias = DN(region)(w, plan->packed_bias, fpad * E);
    const size_t img_in = (size_t)g->h * g->w * C, img_pad = (size_t)(d.hp * d.wp * C);
    (void)threads;   /* read by the OpenMP pragma only, in builds without OpenMP */

#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && g->n > 1)
#endif
    for (int n = 0; n < g->n; n++)
        DN(pad_image)(x + n * img_in, g->h, g->w, C, g->pad_top, g->pad_bottom, g->pad_left,
                      g->pad_right, xpad + n * img_pad);

    /* bias as whole vectors, zeros past F */
    for (int64_t j = 0; j < fpad; j++) packed_bias[j] = bias && j < F ? bias[j] : (DR)0;

    if (plan->wino_fwd) {
        DR *U = DN(region)(w, plan->U, 16 * C * fpad * E);
        ptrdiff_t *ident = DN(region)(w, plan->ident, C * P);
        const int64_t zlen = DN(zeros_len)(g);
        DR *zeros = DN(region)(w, plan->zeros, zlen * E);
        DR *vbuf[MC_MAX_PARTS], *mbuf[MC_MAX_PARTS];
        DN(thread_parts)(w, plan->fwd_v, 16 * DN_WINO_TILES * C * E, vbuf);
        DN(thread_parts)(w, plan->fwd_m, 16 * DN_WINO_TILES * fpad * E, mbuf);
        memset(zeros, 0, (size_t)zlen * sizeof(DR));
        for (int c = 0; c < C; c++) ident[c] = c;
        DN(wino_pack)(isa, kernel, (ptrdiff_t)3 * C * F, (ptrdiff_t)C * F, F, 1, C, F, U, C * fpad, threads);
        const DN(mc_view) in = {xpad, (ptrdiff_t)img_pad, (ptrdiff_t)d.wp * C, C, (int)d.hp, (int)d.wp, C};
        DN(wino_conv)(isa, &in, g->n, (int)d.oh, (int)d.ow, y, F, U, C * fpad,
                      bias ? packed_bias : NULL, relu, ident, zeros, vbuf, mbuf, threads);
        return MC_OK;
    }

    /* direct: kernel (K, F) -> column blocks of whole vectors; tap k reads offset aoff[k] */
    DR *packed = DN(region)(w, plan->packed, K * fpad * E);
    ptrdiff_t *aoff = DN(region)(w, plan->aoff, K * P);
    for (int b = 0; b * nb < F; b++) {
        const int width = DN(block_vectors)(F, b, nb, vlen) * vlen;
        DR *dst = packed + (ptrdiff_t)b * nb * K;
        for (int64_t k = 0; k < K; k++)
            for (int j = 0; j < width; j++)
                dst[k * width + j] = b * nb + j < F ? kernel[k * F + b * nb + j] : (DR)0;
    }
    for (int i = 0, k = 0; i < g->kh; i++)
        for (int j = 0; j < g->kw; j++)
            for (int c = 0; c < C; c++, k++) aoff[k] = ((ptrdiff_t)i * d.wp + j) * C + c;

    DN(mc_tiling) tl = {
        .count = (int64_t)g->n * d.oh * d.ow, .rows = (int)d.oh, .cols = (int)d.ow,
        .a_base = xpad, .a_img = (ptrdiff_t)img_pad,
        .a_row = (ptrdiff_t)g->stride_h * d.wp * C, .a_col = (ptrdiff_t)g->stride_w * C,
        .c_base = y, .c_img = (ptrdiff_t)(d.oh * d.ow * F), .c_row = (ptrdiff_t)d.ow * F,
        .c_col = F,
    };
    DN(run_igemm)(isa, &tl, K, aoff, packed, bias ? packed_bias : NULL, F, relu, threads);
    return MC_OK;
}

/* ---- backward: frame dy, kernel gradient (Winograd or direct), input gradient (Winograd or
 * direct), each step on the plan's regions ---- */

typedef struct {
    const mc_conv_geom *g;
    const DN(mc_isa) *isa;
    const DN(mc_work) *w;
    DN(mc_conv_dims) d;
    int64_t fpad, cpad, fv;        /* fv: the frame's row length, F in whole vectors */
    int64_t mt, ml, hd, wd;        /* the frame: margins and size (dy's size without dx) */
    size_t img_dy, img_pad;
    const DR *dy, *relu_y, *xpad;
    DR *frame, *zeros;
    /* dy as the kernel gradient reads it: the frame's interior, or dy itself */
    const DR *src;
    ptrdiff_t src_img, src_row, src_col;
} DN(mc_backward);

/* dy (masked by the fused ReLU) into the zero-margined, whole-vector rows of the frame. */
static void DN(frame_dy)(DN(mc_backward) *b)
{
    const mc_conv_geom *g = b->g;
    const int F = g->f, threads = b->w->plan->threads;
    const size_t frame_img = (size_t)(b->hd * b->wd * b->fv);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && g->n > 1)
#endif
    for (int n = 0; n < g->n; n++) {
        DR *fr = b->frame + n * frame_img;
        memset(fr, 0, frame_img * sizeof(DR));
        for (int64_t p = 0; p < b->d.oh; p++) {
            for (int64_t q = 0; q < b->d.ow; q++) {
                const size_t at = n * b->img_dy + (size_t)((p * b->d.ow + q) * F);
                DR *o = fr + ((p + b->mt) * b->wd + q + b->ml) * b->fv;
                if (b->relu_y)
                    b->isa->relu_mask(o, b->dy + at, b->relu_y + at, F);
                else
                    memcpy(o, b->dy + at, (size_t)F * sizeof(DR));
            }
        }
    }
    b->src = b->frame + (b->mt * b->wd + b->ml) * b->fv;
    b->src_img = (ptrdiff_t)frame_img;
    b->src_row = (ptrdiff_t)(b->wd * b->fv);
    b->src_col = (ptrdiff_t)b->fv;
}

/* dkernel (and dbias) by Winograd: each thread that gets a block of tiles accumulates its own
 * transformed gradient, summed in thread order so that the result does not depend on
 * scheduling. */
static void DN(dkernel_winograd)(const DN(mc_backward) *b, DR *dkernel, DR *dbias)
{
    const mc_conv_geom *g = b->g;
    const DN(mc_conv_plan) *plan = b->w->plan;
    const int64_t E = (int64_t)sizeof(DR), fpad = b->fpad;
    const int C = g->c, F = g->f;
    DR *acc[MC_MAX_PARTS], *vbuf[MC_MAX_PARTS], *zbuf[MC_MAX_PARTS];
    DN(thread_parts)(b->w, plan->wdw_acc, (16 * C * fpad + fpad) * E, acc);
    DN(thread_parts)(b->w, plan->wdw_v, 16 * DN_WINO_TILES_W * C * E, vbuf);
    DN(thread_parts)(b->w, plan->wdw_z, 16 * DN_WINO_TILES_W * fpad * E, zbuf);
    const DN(mc_view) in = {b->xpad, (ptrdiff_t)b->img_pad, (ptrdiff_t)b->d.wp * C, C,
                            (int)b->d.hp, (int)b->d.wp, C};
    const DN(mc_view) dyv = {b->src, b->src_img, b->src_row, b->src_col, (int)b->d.oh, (int)b->d.ow, F};
    /* as many accumulators as threads that get a block of tiles: each one is zeroed by its
     * thread and all of them are summed below */
    const int64_t tile_blocks = ((int64_t)g->n * ((b->d.oh + 1) / 2) * ((b->d.ow + 1) / 2) +
                                 DN_WINO_TILES_W - 1) / DN_WINO_TILES_W;
    const int used = plan->threads < tile_blocks ? plan->threads : (int)tile_blocks;
    DN(wino_wgrad)(b->isa, &in, &dyv, g->n, F, fpad, b->zeros, acc, vbuf, zbuf, dbias != NULL, used);
    DN(wino_unpack_dw)(acc, used, C, F, fpad, dkernel, plan->threads);
    if (dbias)
        for (int f = 0; f < F; f++) {
            DR s = acc[0][16 * C * fpad + f];
            for (int t = 1; t < used; t++) s += acc[t][16 * C * fpad + f];
            dbias[f] = s;
        }
}

/* dkernel (and dbias) directly: images are split between threads, each thread accumulates
 * MR rows x NB filters at a time with the wgrad microkernel into its own gradient, and the
 * gradients are summed in thread order. */
static void DN(dkernel_direct)(const DN(mc_backward) *b, DR *dkernel, DR *dbias)
{
    const mc_conv_geom *g = b->g;
    const DN(mc_isa) *isa = b->isa;
    const DN(mc_conv_plan) *plan = b->w->plan;
    const DN(mc_conv_dims) *d = &b->d;
    const int64_t E = (int64_t)sizeof(DR), fpad = b->fpad, K = d->K, fv = b->fv;
    const int vlen = isa->vlen, nb = isa->nvmax * vlen, C = g->c, F = g->f;
    const int used = plan->threads < g->n ? plan->threads : g->n;
    const int threads = plan->threads;
    DR *acc[MC_MAX_PARTS], *stage[MC_MAX_PARTS];
    DN(thread_parts)(b->w, plan->dw_acc, (K * fpad + fpad) * E, acc);
    if (plan->staged) DN(thread_parts)(b->w, plan->dw_stage, d->oh * d->ow * fpad * E, stage);
    const int nbw = (F + nb - 1) / nb;
    (void)threads;
    /* zeroed here: a team smaller than asked for still sums zeros from the rest */
    for (int t = 0; t < used; t++) memset(acc[t], 0, (size_t)(K * fpad + fpad) * sizeof(DR));
#ifdef _OPENMP
#pragma omp parallel num_threads(used) if (used > 1)
#endif
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num();
#else
        const int tid = 0;
#endif
        DR *mine = acc[tid];
        DR *mine_bias = mine + K * fpad;
        ptrdiff_t offs[MK_MRMAX];
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int n = 0; n < g->n; n++) {
            const DR *xi = b->xpad + n * b->img_pad;
            const DR *di = b->src + n * b->src_img;
            ptrdiff_t drow = b->src_row, dcol = b->src_col;
            if (plan->staged) {
                DR *st = stage[tid];
                for (int64_t px = 0; px < d->oh * d->ow; px++) {
                    const size_t at = n * b->img_dy + (size_t)(px * F);
                    if (b->relu_y)
                        isa->relu_mask(st + px * fv, b->dy + at, b->relu_y + at, F);
                    else
                        memcpy(st + px * fv, b->dy + at, (size_t)F * sizeof(DR));
                    for (int64_t f = F; f < fv; f++) st[px * fv + f] = 0;
                }
                di = st;
                drow = (ptrdiff_t)(d->ow * fv);
                dcol = (ptrdiff_t)fv;
            }
            for (int blk = 0; blk < nbw; blk++) {
                const int nv = DN(block_vectors)(F, blk, nb, vlen);
                const int mr_max = isa->mr[nv];
                for (int64_t m0 = 0; m0 < K; m0 += mr_max) {
                    const int mr = (int)(K - m0 < mr_max ? K - m0 : mr_max);
                    for (int t = 0; t < mr_max; t++) {
                        const int64_t m = m0 + (t < mr ? t : mr - 1);
                        const int64_t c = m % C, j = (m / C) % g->kw, i = m / C / g->kw;
                        offs[t] = (ptrdiff_t)((i * d->wp + j) * C + c);
                    }
                    (mr <= isa->mr_half[nv] ? isa->wgrad_half[nv] : isa->wgrad[nv])(
                        xi, (ptrdiff_t)g->stride_h * d->wp * C, (ptrdiff_t)g->stride_w * C,
                        (int)d->oh, (int)d->ow, offs, di + blk * nb, drow, dcol,
                        mine + m0 * fpad + blk * nb, (ptrdiff_t)fpad, mr);
                }
            }
            if (dbias) {
                for (int64_t p = 0; p < d->oh; p++)
                    for (int64_t q = 0; q < d->ow; q++) {
                        const DR *row = di + p * drow + q * dcol;
                        for (int f = 0; f < F; f++) mine_bias[f] += row[f];
                    }
            }
        }
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && K > 64)
#endif
    for (int64_t k = 0; k < K; k++) {
        for (int f = 0; f < F; f++) {
            DR s = acc[0][k * fpad + f];
            for (int t = 1; t < used; t++) s += acc[t][k * fpad + f];
            dkernel[k * F + f] = s;
        }
    }
    if (dbias) {
        for (int f = 0; f < F; f++) {
            DR s = acc[0][K * fpad + f];
            for (int t = 1; t < used; t++) s += acc[t][K * fpad + f];
            dbias[f] = s;
        }
    }
}

/* dx by Winograd: the valid 3x3 correlation of the frame (dy zero-padded by 2 - pad on each
 * side) with the flipped, channel-swapped kernel. */
static void DN(dx_winograd)(const DN(mc_backward) *b, const DR *kernel, DR *dx)
{
    const mc_conv_geom *g = b->g;
    const DN(mc_conv_plan) *plan = b->w->plan;
    const int64_t E = (int64_t)sizeof(DR), P = (int64_t)sizeof(ptrdiff_t), cpad = b->cpad;
    const int C = g->c, F = g->f;
    DR *U = DN(region)(b->w, plan->U, 16 * F * cpad * E);
    ptrdiff_t *ident = DN(region)(b->w, plan->ident, F * P);
    DR *vbuf[MC_MAX_PARTS], *mbuf[MC_MAX_PARTS];
    DN(thread_parts)(b->w, plan->wdx_v, 16 * DN_WINO_TILES * F * E, vbuf);
    DN(thread_parts)(b->w, plan->wdx_m, 16 * DN_WINO_TILES * cpad * E, mbuf);
    for (int f = 0; f < F; f++) ident[f] = f;
    const ptrdiff_t cf = (ptrdiff_t)C * F;
    DN(wino_pack)(b->isa, kernel + 8 * cf, -3 * cf, -cf, 1, F, F, C, U, F * cpad, plan->threads);
    const DN(mc_view) in = {b->frame, (ptrdiff_t)(b->hd * b->wd * b->fv), (ptrdiff_t)(b->wd * b->fv),
                            (ptrdiff_t)b->fv, (int)b->hd, (int)b->wd, F};
    DN(wino_conv)(b->isa, &in, g->n, g->h, g->w, dx, C, U, F * cpad, NULL, 0, ident, b->zeros,
                  vbuf, mbuf, plan->threads);
}

/* dx directly: one dense transposed convolution per phase (row mod sh, column mod sw), each
 * with its own subset of kernel taps, so no zeros are multiplied. */
static void DN(dx_direct)(const DN(mc_backward) *b, const DR *kernel, DR *dx)
{
    const mc_conv_geom *g = b->g;
    const DN(mc_isa) *isa = b->isa;
    const DN(mc_conv_plan) *plan = b->w->plan;
    const int64_t E = (int64_t)sizeof(DR), P = (int64_t)sizeof(ptrdiff_t);
    const int64_t taps = (int64_t)g->kh * g->kw * g->f, cpad = b->cpad, fv = b->fv;
    const int64_t wd = b->wd, hd = b->hd;
    const int vlen = isa->vlen, nb = isa->nvmax * vlen, C = g->c, F = g->f;
    DR *wpacked = DN(region)(b->w, plan->wpacked, taps * cpad * E);
    ptrdiff_t *toff = DN(region)(b->w, plan->toff, taps * P);
    const int sh = g->stride_h, sw = g->stride_w;
    ptrdiff_t tap_base = 0;
    for (int ph = 0; ph < sh; ph++) {
        for (int pw = 0; pw < sw; pw++) {
            const int nu = ph < g->kh ? (g->kh - 1 - ph) / sh + 1 : 0;
            const int nvt = pw < g->kw ? (g->kw - 1 - pw) / sw + 1 : 0;
            const int64_t kph = (int64_t)nu * nvt * F;
            /* the dx pixels of this phase: h = h0 + hh * sh with (h + top) % sh == ph */
            const int h0 = ((ph - g->pad_top) % sh + sh) % sh;
            const int w0 = ((pw - g->pad_left) % sw + sw) % sw;
            const int hph = h0 < g->h ? (g->h - 1 - h0) / sh + 1 : 0;
            const int wph = w0 < g->w ? (g->w - 1 - w0) / sw + 1 : 0;
            if (hph == 0 || wph == 0) continue;
            DR *bp = wpacked + tap_base * cpad;
            ptrdiff_t *aoff = toff + tap_base;
            /* taps (u, v, f): kernel[ph + sh*u, pw + sw*v, :, f], read at dy row -u, column -v */
            for (int blk = 0; blk * nb < C; blk++) {
                const int width = DN(block_vectors)(C, blk, nb, vlen) * vlen;
                DR *dst = bp + (ptrdiff_t)blk * nb * kph;
                int64_t k = 0;
                for (int u = 0; u < nu; u++)
                    for (int v = 0; v < nvt; v++)
                        for (int f = 0; f < F; f++, k++) {
                            const DR *wk = kernel + ((ptrdiff_t)((ph + sh * u) * g->kw + pw + sw * v) * C) * F + f;
                            for (int j = 0; j < width; j++)
                                dst[k * width + j] = blk * nb + j < C ? wk[(ptrdiff_t)(blk * nb + j) * F] : (DR)0;
                        }
            }
            {
                int64_t k = 0;
                for (int u = 0; u < nu; u++)
                    for (int v = 0; v < nvt; v++)
                        for (int f = 0; f < F; f++, k++) aoff[k] = (ptrdiff_t)((-u * wd - v) * fv + f);
            }
            const int hp0 = h0 + g->pad_top, wp0 = w0 + g->pad_left;
            DN(mc_tiling) tl = {
                .count = (int64_t)g->n * hph * wph, .rows = hph, .cols = wph,
                .a_base = b->frame + ((hp0 / sh + b->mt) * wd + wp0 / sw + b->ml) * fv,
                .a_img = (ptrdiff_t)(hd * wd * fv), .a_row = (ptrdiff_t)(wd * fv), .a_col = (ptrdiff_t)fv,
                .c_base = dx + ((ptrdiff_t)h0 * g->w + w0) * C,
                .c_img = (ptrdiff_t)g->h * g->w * C, .c_row = (ptrdiff_t)sh * g->w * C,
                .c_col = (ptrdiff_t)sw * C,
            };
            DN(run_igemm)(isa, &tl, kph, aoff, bp, NULL, C, 0, plan->threads);
            tap_base += kph;
        }
    }
}

static int DN(conv_backward)(const mc_conv_geom *g, const DR *xpad, const DR *kernel,
                              const DR *dy, const DR *relu_y, DR *dx, DR *dkernel, DR *dbias,
                              const DN(mc_work) *w)
{
    const DN(mc_conv_plan) *plan = w->plan;
    const int64_t E = (int64_t)sizeof(DR);
    DN(mc_backward) b;
    memset(&b, 0, sizeof b);
    b.g = g;
    b.isa = &DN(mc_isa_tables)[mc_level];
    b.w = w;
    DN(conv_dims)(g, &b.d);
    b.fpad = DN(round_up)(g->f, DN_VLEN_MAX);
    b.cpad = DN(round_up)(g->c, DN_VLEN_MAX);
    b.fv = DN(round_up)(g->f, b.isa->vlen);
    b.mt = dx ? b.d.mt : 0;
    b.ml = dx ? b.d.ml : 0;
    b.hd = dx ? b.d.hd : b.d.oh;
    b.wd = dx ? b.d.wd : b.d.ow;
    b.img_dy = (size_t)(b.d.oh * b.d.ow * g->f);
    b.img_pad = (size_t)(b.d.hp * b.d.wp * g->c);
    b.dy = dy;
    b.relu_y = relu_y;
    b.xpad = xpad;
    b.src = dy;
    b.src_img = (ptrdiff_t)b.img_dy;
    b.src_row = (ptrdiff_t)b.d.ow * g->f;
    b.src_col = g->f;
    if (plan->wino_dw || plan->wino_dx) {
        const int64_t zlen = DN(zeros_len)(g);
        b.zeros = DN(region)(w, plan->zeros, zlen * E);
        memset(b.zeros, 0, (size_t)zlen * sizeof(DR));
    }
    if (plan->need_frame) {
        b.frame = DN(region)(w, plan->frame, (int64_t)g->n * b.hd * b.wd * b.fpad * E);
        DN(frame_dy)(&b);
    }
    if (plan->wino_dw)
        DN(dkernel_winograd)(&b, dkernel, dbias);
    else
        DN(dkernel_direct)(&b, dkernel, dbias);
    if (!dx) return MC_OK;
    if (plan->wino_dx)
        DN(dx_winograd)(&b, kernel, dx);
    else
        DN(dx_direct)(&b, kernel, dx);
    return MC_OK;
}

/* Workspace bytes of one call: the plan the call itself will lay out. */
static int64_t DN(conv_forward_bytes)(const mc_conv_geom *g, int threads)
{
    DN(mc_conv_plan) plan;
    DN(forward_plan)(g, threads, &plan);
    return plan.bytes;
}

static int64_t DN(conv_backward_bytes)(const mc_conv_geom *g, int need_dx, int relu, int threads)
{
    DN(mc_conv_plan) plan;
    DN(backward_plan)(g, need_dx, relu, threads, &plan);
    return plan.bytes;
}

/* ---- dense (fully connected): y = act(x @ W + b), x (N, K), W (K, F) ----
 *
 * All three products run on the convolution microkernels, so a training step uses one thread
 * pool (OpenBLAS's would spin against OpenMP's on the same cores; see docs/architecture.md):
 *   y      wgrad with the batch rows as tile rows and K as the reduction, in chunks of
 *          DN_DENSE_KC rows of W so that each chunk stays in L2 while every row tile uses it;
 *   dW     wgrad with K as tile rows and the batch as the reduction (no partial sums: threads
 *          own disjoint rows of dW);
 *   dx     igemm computing dx^T = W dy^T (W's rows as tile rows, dy^T packed), transposed.
 * Rows whose width is not a whole number of vectors are staged through padded copies, so no
 * kernel ever reads or writes past a row.
 */
#define DN_DENSE_KC 256
/* dense workspace: regions taken one after another, 64 bytes of alignment slack each */
#define DN_ELEMS(count) ((int64_t)(count) * (int64_t)sizeof(DR) + 64)
#define DN_OFFSETS(count) ((int64_t)(count) * (int64_t)sizeof(ptrdiff_t) + 64)

static int DN(dense_threads)(int64_t n, int64_t k, int64_t f, int threads)
{
    return 2 * n * k * f < ((int64_t)1 << 20) ? 1 : threads;   /* too small to split */
}

static int64_t DN(dense_forward_bytes)(int64_t n, int64_t k, int64_t f)
{
    const int64_t fpad = DN(round_up)(f, DN_VLEN_MAX);
    return DN_ELEMS(k * fpad) + DN_ELEMS(n * fpad) + DN_OFFSETS(MK_MRMAX);
}

static int64_t DN(dense_backward_bytes)(int64_t n, int64_t k, int64_t f)
{
    const int64_t fpad = DN(round_up)(f, DN_VLEN_MAX), npad = DN(round_up)(n, DN_VLEN_MAX);
    return DN_ELEMS(n * fpad) + DN_ELEMS(k * fpad) + DN_ELEMS(f * npad) + DN_ELEMS(k * npad) +
           DN_OFFSETS(f);
}

static void DN(dense_forward)(int N, int K, int F, const DR *x, const DR *W, const DR *bias,
                              int relu, DR *y, DN(mc_arena) *arena, int threads)
{
    const DN(mc_isa) *isa = &DN(mc_isa_tables)[mc_level];
    const int vlen = isa->vlen, nb = isa->nvmax * vlen;
    const int fv = (int)DN(round_up)(F, vlen), padded = F % vlen != 0;
    const int fblocks = (F + nb - 1) / nb;
    const DR *w = W;
    DR *out = y;
    int ld = F;
    threads = DN(dense_threads)(N, K, F, threads);
    if (padded) {   /* W and y with rows of whole vectors */
        DR *wp = DN(arena_take)(arena, (int64_t)K * fv * (int64_t)sizeof(DR));
        for (int64_t k = 0; k < K; k++)
            for (int j = 0; j < fv; j++) wp[k * fv + j] = j < F ? W[k * F + j] : (DR)0;
        w = wp;
        out = DN(arena_take)(arena, (int64_t)N * fv * (int64_t)sizeof(DR));
        ld = fv;
    }
    for (int64_t n = 0; n < N; n++)
        for (int j = 0; j < ld; j++) out[n * ld + j] = bias && j < F ? bias[j] : (DR)0;
    /* work units: column blocks, each split into row groups when there are fewer blocks than
     * threads; a unit walks K in chunks and, per chunk, every row tile of its group */
    const int groups = fblocks >= threads ? 1 : (threads + fblocks - 1) / fblocks;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
#endif
    for (int unit = 0; unit < fblocks * groups; unit++) {
        const int b = unit % fblocks, group = unit / fblocks;
        const int nv = DN(block_vectors)(F, b, nb, vlen), mr_max = isa->mr[nv];
        const int tiles = (N + mr_max - 1) / mr_max;
        const int first = (int)((int64_t)tiles * group / groups), last = (int)((int64_t)tiles * (group + 1) / groups);
        ptrdiff_t offs[MK_MRMAX];
        for (int k0 = 0; k0 < K; k0 += DN_DENSE_KC) {
            const int kc = K - k0 < DN_DENSE_KC ? K - k0 : DN_DENSE_KC;
            for (int tile = first; tile < last; tile++) {
                const int n0 = tile * mr_max, mr = N - n0 < mr_max ? N - n0 : mr_max;
                for (int t = 0; t < mr_max; t++) offs[t] = (ptrdiff_t)(n0 + (t < mr ? t : mr - 1)) * K;
                (mr <= isa->mr_half[nv] ? isa->wgrad_half[nv] : isa->wgrad[nv])(
                    x + k0, 0, 1, 1, kc, offs, w + (ptrdiff_t)k0 * ld + b * nb, 0, ld,
                    out + (ptrdiff_t)n0 * ld + b * nb, ld, mr);
            }
        }
    }
    for (int64_t n = 0; n < N; n++)
        for (int j = 0; j < F; j++) {
            const DR v = out[n * ld + j];
            y[n * F + j] = relu && v < 0 ? (DR)0 : v;
        }
}

static void DN(dense_backward)(int N, int K, int F, const DR *x, const DR *W, const DR *dy,
                               const DR *relu_y, DR *dx, DR *dW, DR *db, DN(mc_arena) *arena,
                               int threads)
{
    const DN(mc_isa) *isa = &DN(mc_isa_tables)[mc_level];
    const int vlen = isa->vlen, nb = isa->nvmax * vlen;
    const int fv = (int)DN(round_up)(F, vlen), nv_cols = (int)DN(round_up)(N, vlen);
    const int padded = F % vlen != 0;
    threads = DN(dense_threads)(N, K, F, threads);

    /* the gradient to use: masked by the fused ReLU, rows padded to whole vectors if needed */
    const DR *g = dy;
    int gld = F;
    if (relu_y || padded) {
        DR *gp = DN(arena_take)(arena, (int64_t)N * fv * (int64_t)sizeof(DR));
        for (int64_t n = 0; n < N; n++) {
            if (relu_y)
                isa->relu_mask(gp + n * fv, dy + n * F, relu_y + n * F, F);
            else
                memcpy(gp + n * fv, dy + n * F, (size_t)F * sizeof(DR));
            for (int j = F; j < fv; j++) gp[n * fv + j] = 0;
        }
        g = gp;
        gld = fv;
    }
    if (db) {
        for (int j = 0; j < F; j++) db[j] = 0;
        for (int64_t n = 0; n < N; n++)
            for (int j = 0; j < F; j++) db[j] += g[n * gld + j];
    }

    /* dW[k, :] = sum_n x[n, k] g[n, :]: tiles of K rows, each thread its own rows */
    DR *dst = dW;
    int dld = F;
    if (padded) {
        dst = DN(arena_take)(arena, (int64_t)K * fv * (int64_t)sizeof(DR));
        dld = fv;
    }
    {
        const int fblocks = (F + nb - 1) / nb;
        const int nv_full = DN(block_vectors)(F, 0, nb, vlen);
        const int mr_rows = isa->mr[nv_full];
        const int tiles = (K + mr_rows - 1) / mr_rows;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
#endif
        for (int tile = 0; tile < tiles; tile++) {
            const int m0 = tile * mr_rows, rows = K - m0 < mr_rows ? K - m0 : mr_rows;
            ptrdiff_t offs[MK_MRMAX];
            memset(dst + (ptrdiff_t)m0 * dld, 0, (size_t)rows * dld * sizeof(DR));
            for (int b = 0; b < fblocks; b++) {
                const int nv = DN(block_vectors)(F, b, nb, vlen), mr_max = isa->mr[nv];
                for (int r0 = 0; r0 < rows; r0 += mr_max) {
                    const int mr = rows - r0 < mr_max ? rows - r0 : mr_max;
                    for (int t = 0; t < mr_max; t++) offs[t] = m0 + r0 + (t < mr ? t : mr - 1);
                    (mr <= isa->mr_half[nv] ? isa->wgrad_half[nv] : isa->wgrad[nv])(
                        x, 0, K, 1, N, offs, g + b * nb, 0, gld,
                        dst + (ptrdiff_t)(m0 + r0) * dld + b * nb, dld, mr);
                }
            }
        }
    }
    if (padded)
        for (int64_t k = 0; k < K; k++) memcpy(dW + k * F, dst + k * dld, (size_t)F * sizeof(DR));
    if (!dx) return;

    /* dx^T (K x N) = W (K x F) g^T (F x N): W's rows are the tile rows, g^T is packed */
    DR *gt = DN(arena_take)(arena, (int64_t)F * nv_cols * (int64_t)sizeof(DR));
    DR *dxt = DN(arena_take)(arena, (int64_t)K * nv_cols * (int64_t)sizeof(DR));
    ptrdiff_t *ident = DN(arena_take)(arena, (int64_t)F * (int64_t)sizeof(ptrdiff_t));
    for (int b = 0; b * nb < N; b++) {
        const int width = DN(block_vectors)(N, b, nb, vlen) * vlen;
        DR *blk = gt + (ptrdiff_t)b * nb * F;
        for (int f = 0; f < F; f++)
            for (int j = 0; j < width; j++)
                blk[f * width + j] = b * nb + j < N ? g[(ptrdiff_t)(b * nb + j) * gld + f] : (DR)0;
    }
    for (int f = 0; f < F; f++) ident[f] = f;
    DN(mc_tiling) tl = {
        .count = K, .rows = 1, .cols = K, .a_base = W, .a_img = 0, .a_row = 0, .a_col = F,
        .c_base = dxt, .c_img = 0, .c_row = 0, .c_col = nv_cols,
    };
    DN(run_igemm)(isa, &tl, F, ident, gt, NULL, N, 0, threads);
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
#endif
    for (int n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) dx[(int64_t)n * K + k] = dxt[k * nv_cols + n];
}

/* ---- max pooling ---- */

static void DN(maxpool_forward)(const mc_pool_geom *g, const DR *x, DR *y, int32_t *argmax,
                                int64_t oh, int64_t ow, int threads)
{
    const DN(mc_isa) *isa = &DN(mc_isa_tables)[mc_level];
    const int C = g->c;
    const int64_t rows = (int64_t)g->n * oh;
    threads = DN(threads_for)(rows * ow * C * g->pool_h * g->pool_w, threads);
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows > 1)
#endif
    for (int64_t r = 0; r < rows; r++) {
        const int64_t n = r / oh, p = r % oh;
        const DR *xi = x + n * (int64_t)g->h * g->w * C;
        for (int64_t q = 0; q < ow; q++) {
            DR *yo = y + (r * ow + q) * C;
            int32_t *ao = argmax + (r * ow + q) * C;
            for (int i = 0; i < g->pool_h; i++) {
                for (int j = 0; j < g->pool_w; j++) {
                    const int64_t hh = p * g->stride_h + i - g->pad_top;
                    const int64_t ww = q * g->stride_w + j - g->pad_left;
                    const int first = i == 0 && j == 0;
                    if (hh < 0 || hh >= g->h || ww < 0 || ww >= g->w) {
                        /* a padding cell is -inf: it wins only as the first of its window */
                        if (first)
                            for (int c = 0; c < C; c++) { yo[c] = -(DR)INFINITY; ao[c] = -1; }
                        continue;
                    }
                    const int32_t base = (int32_t)((hh * g->w + ww) * C);
                    const DR *xr = xi + base;
                    if (first) {
                        for (int c = 0; c < C; c++) { yo[c] = xr[c]; ao[c] = base + c; }
                        continue;
                    }
                    isa->pool_max(yo, ao, xr, base, C);
                }
            }
        }
    }
}

static void DN(maxpool_backward)(const mc_pool_geom *g, const DR *dy, const int32_t *argmax,
                                 DR *dx, int64_t oh, int64_t ow, int threads)
{
    const int64_t img_in = (int64_t)g->h * g->w * g->c, img_out = oh * ow * g->c;
    threads = DN(threads_for)((int64_t)g->n * (img_in + img_out), threads);
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && g->n > 1)
#endif
    for (int n = 0; n < g->n; n++) {
        DR *dxi = dx + n * img_in;
        const DR *dyi = dy + n * img_out;
        const int32_t *ai = argmax + n * img_out;
        memset(dxi, 0, (size_t)img_in * sizeof(DR));
        for (int64_t k = 0; k < img_out; k++)
            if (ai[k] >= 0) dxi[ai[k]] += dyi[k];
    }
}

/* ---- public entry points: check everything, then run ---- */

int DN(mc_conv2d_forward)(const mc_conv_geom *g, const DR *x, int64_t x_len, const DR *kernel,
                          int64_t kernel_len, const DR *bias, int64_t bias_len, int relu,
                          DR *xpad, int64_t xpad_len, DR *y, int64_t y_len, DR *work,
                          int64_t work_len)
{
    mc_conv_sizes s;
    int err = mc_check_conv(g, &s);
    if (err) return err;
    mc_init();
    if (!x || !kernel || !xpad || !y || !work) return MC_ERR_NULL;
    if (x_len != s.x || kernel_len != s.kernel || xpad_len != s.xpad || y_len != s.y ||
        (bias ? bias_len != g->f : bias_len != 0))
        return MC_ERR_SIZE;
    DN(mc_conv_plan) plan;
    DN(forward_plan)(g, mc_threads_now(), &plan);
    if (work_len < 0 || work_len > INT64_MAX / (int64_t)sizeof(DR) ||
        work_len * (int64_t)sizeof(DR) < plan.bytes)
        return MC_ERR_SIZE;
    const DN(mc_work) w = DN(bind)(&plan, work, work_len);
    return DN(conv_forward)(g, x, kernel, bias, relu, xpad, y, &w);
}

int DN(mc_conv2d_backward)(const mc_conv_geom *g, const DR *xpad, int64_t xpad_len,
                           const DR *kernel, int64_t kernel_len, const DR *dy, int64_t dy_len,
                           const DR *relu_y, int64_t relu_y_len, DR *dx, int64_t dx_len,
                           DR *dkernel, int64_t dkernel_len, DR *dbias, int64_t dbias_len,
                           DR *work, int64_t work_len)
{
    mc_conv_sizes s;
    int err = mc_check_conv(g, &s);
    if (err) return err;
    mc_init();
    if (!xpad || !kernel || !dy || !dkernel || !work) return MC_ERR_NULL;
    if (xpad_len != s.xpad || kernel_len != s.kernel || dy_len != s.y ||
        dkernel_len != s.kernel || (relu_y ? relu_y_len != s.y : relu_y_len != 0) ||
        (dx ? dx_len != s.x : dx_len != 0) || (dbias ? dbias_len != g->f : dbias_len != 0))
        return MC_ERR_SIZE;
    DN(mc_conv_plan) plan;
    DN(backward_plan)(g, dx != NULL, relu_y != NULL, mc_threads_now(), &plan);
    if (work_len < 0 || work_len > INT64_MAX / (int64_t)sizeof(DR) ||
        work_len * (int64_t)sizeof(DR) < plan.bytes)
        return MC_ERR_SIZE;
    const DN(mc_work) w = DN(bind)(&plan, work, work_len);
    return DN(conv_backward)(g, xpad, kernel, dy, relu_y, dx, dkernel, dbias, &w);
}

int DN(mc_maxpool2d_forward)(const mc_pool_geom *g, const DR *x, int64_t x_len, DR *y,
                             int64_t y_len, int32_t *argmax, int64_t argmax_len)
{
    int64_t oh, ow;
    int err = mc_check_pool(g, &oh, &ow);
    if (err) return err;
    mc_init();
    if (!x || !y || !argmax) return MC_ERR_NULL;
    const int64_t out = (int64_t)g->n * oh * ow * g->c;
    if (x_len != (int64_t)g->n * g->h * g->w * g->c || y_len != out || argmax_len != out)
        return MC_ERR_SIZE;
    DN(maxpool_forward)(g, x, y, argmax, oh, ow, mc_threads_now());
    return MC_OK;
}

int DN(mc_maxpool2d_backward)(const mc_pool_geom *g, const DR *dy, int64_t dy_len,
                              const int32_t *argmax, int64_t argmax_len, DR *dx, int64_t dx_len)
{
    int64_t oh, ow;
    int err = mc_check_pool(g, &oh, &ow);
    if (err) return err;
    mc_init();
    if (!dy || !argmax || !dx) return MC_ERR_NULL;
    const int64_t out = (int64_t)g->n * oh * ow * g->c;
    if (dx_len != (int64_t)g->n * g->h * g->w * g->c || dy_len != out || argmax_len != out)
        return MC_ERR_SIZE;
    DN(maxpool_backward)(g, dy, argmax, dx, oh, ow, mc_threads_now());
    return MC_OK;
}

int DN(mc_dense_forward)(int n, int k, int f, const DR *x, int64_t x_len, const DR *kernel,
                        int64_t kernel_len, const DR *bias, int64_t bias_len, int relu, DR *y,
                        int64_t y_len, DR *work, int64_t work_len)
{
    int64_t sx, sk, sy;
    int err = mc_check_dense(n, k, f, &sx, &sk, &sy);
    if (err) return err;
    mc_init();
    if (!x || !kernel || !y || !work) return MC_ERR_NULL;
    if (x_len != sx || kernel_len != sk || y_len != sy || (bias ? bias_len != f : bias_len != 0))
        return MC_ERR_SIZE;
    if (work_len < 0 || work_len > INT64_MAX / (int64_t)sizeof(DR) ||
        work_len * (int64_t)sizeof(DR) < DN(dense_forward_bytes)(n, k, f))
        return MC_ERR_SIZE;
    DN(mc_arena) arena = {(char *)work, (char *)work + work_len * (int64_t)sizeof(DR)};
    DN(dense_forward)(n, k, f, x, kernel, bias, relu, y, &arena, mc_threads_now());
    return MC_OK;
}

int DN(mc_dense_backward)(int n, int k, int f, const DR *x, int64_t x_len, const DR *kernel,
                         int64_t kernel_len, const DR *dy, int64_t dy_len, const DR *relu_y,
                         int64_t relu_y_len, DR *dx, int64_t dx_len, DR *dkernel,
                         int64_t dkernel_len, DR *dbias, int64_t dbias_len, DR *work,
                         int64_t work_len)
{
    int64_t sx, sk, sy;
    int err = mc_check_dense(n, k, f, &sx, &sk, &sy);
    if (err) return err;
    mc_init();
    if (!x || !kernel || !dy || !dkernel || !work) return MC_ERR_NULL;
    if (x_len != sx || kernel_len != sk || dy_len != sy || dkernel_len != sk ||
        (relu_y ? relu_y_len != sy : relu_y_len != 0) || (dx ? dx_len != sx : dx_len != 0) ||
        (dbias ? dbias_len != f : dbias_len != 0))
        return MC_ERR_SIZE;
    if (work_len < 0 || work_len > INT64_MAX / (int64_t)sizeof(DR) ||
        work_len * (int64_t)sizeof(DR) < DN(dense_backward_bytes)(n, k, f))
        return MC_ERR_SIZE;
    DN(mc_arena) arena = {(char *)work, (char *)work + work_len * (int64_t)sizeof(DR)};
    DN(dense_backward)(n, k, f, x, kernel, dy, relu_y, dx, dkernel, dbias, &arena, mc_threads_now());
    return MC_OK;
}

/* ---- optimizer updates: elementwise, in place; chunks of whole vectors per thread ----
 * Memory-bound and fast on one core (Adam over the seed model's 421k parameters: 0.19 ms,
 * NumPy's ufuncs 0.53 ms), so a second thread is woken only for parameters over 2^21
 * elements: with the other core busy, waking it cost 4-8 ms instead of saving 0.1. */
#define DN_OPT_CHUNK 4096
#define DN_OPT_PARALLEL_MIN ((int64_t)1 << 21)

static int DN(opt_check)(int64_t n, const void *a, int64_t a_len, const void *b, int64_t b_len)
{
    if (n < 1 || n > MC_LEN_MAX) return MC_ERR_GEOMETRY;
    if (!a || !b) return MC_ERR_NULL;
    if (a_len != n || b_len != n) return MC_ERR_SIZE;
    return MC_OK;
}

int DN(mc_adam_update)(int64_t n, DR *param, int64_t param_len, const DR *grad, int64_t grad_len,
                       DR *m, int64_t m_len, DR *v, int64_t v_len, double lr_t, double beta_1,
                       double beta_2, double epsilon)
{
    int err = DN(opt_check)(n, param, param_len, grad, grad_len);
    if (err) return err;
    if (!m || !v) return MC_ERR_NULL;
    if (m_len != n || v_len != n) return MC_ERR_SIZE;
    mc_init();
    const DN(mc_isa) *isa = &DN(mc_isa_tables)[mc_level];
    /* each coefficient rounded once to the dtype, as NumPy does with a Python float */
    const DR c[6] = {(DR)beta_1, (DR)(1.0 - beta_1), (DR)beta_2, (DR)(1.0 - beta_2), (DR)epsilon, (DR)lr_t};
    const int64_t chunks = (n + DN_OPT_CHUNK - 1) / DN_OPT_CHUNK;
    const int threads = n < DN_OPT_PARALLEL_MIN ? 1 : mc_threads_now();
    (void)threads;   /* read by the OpenMP pragma only */
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && chunks > 1)
#endif
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t start = k * DN_OPT_CHUNK;
        const int64_t len = n - start < DN_OPT_CHUNK ? n - start : DN_OPT_CHUNK;
        isa->adam(param + start, grad + start, m + start, v + start, len, c);
    }
    return MC_OK;
}

int DN(mc_sgd_update)(int64_t n, DR *param, int64_t param_len, const DR *grad, int64_t grad_len,
                      DR *velocity, int64_t velocity_len, double learning_rate, double momentum,
                      int nesterov)
{
    int err = DN(opt_check)(n, param, param_len, grad, grad_len);
    if (err) return err;
    if (velocity ? velocity_len != n : velocity_len != 0) return MC_ERR_SIZE;
    mc_init();
    const DN(mc_isa) *isa = &DN(mc_isa_tables)[mc_level];
    const DR lr = (DR)learning_rate, mom = (DR)momentum;
    const int64_t chunks = (n + DN_OPT_CHUNK - 1) / DN_OPT_CHUNK;
    const int threads = n < DN_OPT_PARALLEL_MIN ? 1 : mc_threads_now();
    (void)threads;   /* read by the OpenMP pragma only */
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && chunks > 1)
#endif
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t start = k * DN_OPT_CHUNK;
        const int64_t len = n - start < DN_OPT_CHUNK ? n - start : DN_OPT_CHUNK;
        isa->sgd(param + start, grad + start, velocity ? velocity + start : NULL, len, lr, mom,
                 nesterov != 0);
    }
    return MC_OK;
}
#undef DN_OPT_CHUNK
#undef DN_OPT_PARALLEL_MIN

#undef DN_VLEN_MAX
#undef DN_ELEMS
#undef DN_OFFSETS
#undef DN
#undef DCAT
#undef DCAT2
