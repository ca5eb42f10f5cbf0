/* What every operator's driver shares: image padding, column blocks of whole vectors, the
 * thread threshold, igemm over tiles of output pixels, and the convolution's geometry.
 * No include guard: a template, included once per dtype by csrc/tmpl_driver.h.
 */

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

/* The elementwise passes (ReLU, dropout, the optimizer updates, the fused ReLU's mask): `body`
 * runs on consecutive chunks of n elements, the chunks split between `threads` threads in
 * order. One call through the pointer per chunk of thousands of elements, so the loops inside
 * `body` stay plain and vectorised; the split never changes a result (no element depends on
 * another). */
typedef void (*DN(chunk_body))(int64_t start, int64_t len, const void *args);

static void DN(for_chunks)(int64_t n, int64_t chunk, int threads, DN(chunk_body) body, const void *args)
{
    const int64_t chunks = (n + chunk - 1) / chunk;
    (void)threads;   /* read by the OpenMP pragma only, in builds without OpenMP */
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && chunks > 1)
#endif
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t start = k * chunk;
        body(start, n - start < chunk ? n - start : chunk, args);
    }
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
            /* a whole tile (or half tile) of consecutive input elements, within one output
             * row: the single-pointer kernel, which reads exactly these rows (never the
             * repeated last pixel of a short tile) */
            const int half = mr <= isa->mr_half[nv];
            const int unit = tl->a_col == 1 &&
                             (mr == mr_max || mr == isa->mr_half[nv]) &&
                             (int)(r % tl->cols) + mr <= tl->cols;
            (unit ? (half ? isa->igemm_unit_half[nv] : isa->igemm_unit[nv])
                  : (half ? isa->igemm_half[nv] : isa->igemm[nv]))(K, a, aoff, bpack, c, mr, last_cols,
                                                                   bbias, relu);
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
