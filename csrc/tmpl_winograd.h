/* Winograd F(2x2, 3x3) and F(2x2, 5x5) convolution: per 2x2 outputs, 16 multiplications
 * instead of 36 (3x3) and 36 instead of 100 (5x5).
 * No include guard: a template, included once per dtype by csrc/tmpl_driver.h.
 *
 * For stride-1 k x k convolutions (k = 3 or 5) with at most k - 1 rows/columns of padding per
 * side; DN(mc_wino_shape) (csrc/tmpl_conv_plan.h) holds the sizes per k. Tiles of 2x2 outputs
 * are processed in blocks: every tile's alpha x alpha input patch (alpha = k + 1) is transformed
 * (V = B^T d B, alpha^2 "cells" per channel), then for each cell xi one small GEMM
 * M[xi] = V[xi] (tiles x C) @ U[xi] (C x F) runs on the igemm microkernel (U = G g G^T, the
 * transformed kernel), and A^T M A gives the outputs. The kernel gradient is the adjoint:
 * dU[xi] = V[xi]^T @ Z[xi] with Z = A dY A^T, reduced over tiles by the wgrad microkernel,
 * then dkernel = G^T dU G. The input gradient is the forward algorithm run on the zero-framed
 * dy with the kernel flipped and its channel axes swapped.
 *
 * The matrices: scripts/winograd_matrices.py derives them in exact rationals (points 0, +-1,
 * infinity for 3x3; 0, +-1, +-1/2, infinity for 5x5) and checks them; B^T and A^T live in the
 * microkernels (MK_WINO_*, MK_WINO5_*), G below.
 * Numerics: the per-tile transforms multiply only by small integers and powers of two, so the
 * result differs from the direct sum by roundings that grow with the transforms' size:
 * float32 ~1e-7 of the output's scale for 3x3 (tests allow 1e-5), up to ~1e-5 for 5x5 (the
 * kernel gradient; tests allow 3e-5); G's 1/6 and 1/12 are rounded once, in the kernel
 * transform.
 */

static const DR DN(wino_g3)[4 * 3] = {1, 0, 0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0, 0, 1};
static const DR DN(wino_g5)[6 * 5] = {
    1,            0,           0,            0,           0,
    -1.0 / 6,     -1.0 / 6,    -1.0 / 6,     -1.0 / 6,    -1.0 / 6,
    1.0 / 6,      -1.0 / 6,    1.0 / 6,      -1.0 / 6,    1.0 / 6,
    4.0 / 3,      2.0 / 3,     1.0 / 3,      1.0 / 6,     1.0 / 12,
    -4.0 / 3,     2.0 / 3,     -1.0 / 3,     1.0 / 6,     -1.0 / 12,
    0,            0,           0,            0,           0.25};

/* One kernel size's Winograd: its sizes, G (alpha x k, row-major) and transforms. */
typedef struct {
    const DN(mc_wino_shape) *s;
    const DR *G;
    void (*in)(const DR *const *, int, DR *, ptrdiff_t);
    void (*out)(const DR *, ptrdiff_t, int, const DR *, int, DR *const *);
    void (*dy)(const DR *const *, int, int, DR *, ptrdiff_t);
} DN(wino_ops);

static DN(wino_ops) DN(wino_ops_for)(const DN(mc_isa) *isa, const mc_conv_geom *g)
{
    DN(wino_ops) op;
    op.s = DN(wino_shape)(g);
    if (op.s->k == 5) {
        op.G = DN(wino_g5);
        op.in = isa->wino5_in;
        op.out = isa->wino5_out;
        op.dy = isa->wino5_dy;
    } else {
        op.G = DN(wino_g3);
        op.in = isa->wino_in;
        op.out = isa->wino_out;
        op.dy = isa->wino_dy;
    }
    return op;
}

/* The largest alpha, k and cells: the stack arrays below hold any kernel size's. */
#define DN_WINO_ALPHA 6
#define DN_WINO_K 5
#define DN_WINO_CELLS 36

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
static void DN(wino_pack)(const DN(mc_isa) *isa, const DN(wino_ops) *op, const DR *g0, ptrdiff_t si,
                          ptrdiff_t sj, ptrdiff_t sci, ptrdiff_t sco, int cin, int cout, DR *U,
                          int64_t u_stride, int threads)
{
    const int vlen = isa->vlen, nb = isa->nvmax * vlen;
    const int coutv = (int)DN(round_up)(cout, vlen);
    const int k = op->s->k, al = op->s->alpha, cells = op->s->cells;
    const DR *G = op->G;
    (void)threads;   /* read by the OpenMP pragma only */
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && cin > 8)
#endif
    for (int ci = 0; ci < cin; ci++) {
        /* 64 output channels at a time, gathered channel-innermost for the vectorised transform */
        for (int co0 = 0; co0 < coutv; co0 += 64) {
            const int width = coutv - co0 < 64 ? coutv - co0 : 64;
            DR gl[DN_WINO_K * DN_WINO_K][64], u[DN_WINO_CELLS][64];
            for (int ij = 0; ij < k * k; ij++)
                for (int q = 0; q < width; q++)
                    gl[ij][q] = co0 + q < cout ? g0[(ij / k) * si + (ij % k) * sj + ci * sci + (co0 + q) * sco] : (DR)0;
            isa->wino_sandwich(gl[0], k, G, al, u[0], 64, width);   /* width: whole vectors */
            ptrdiff_t at[64];
            for (int q = 0; q < width; q++) {
                const int co = co0 + q, blk = co / nb, bw = DN(block_vectors)(cout, blk, nb, vlen) * vlen;
                at[q] = (ptrdiff_t)blk * nb * cin + (ptrdiff_t)ci * bw + co % nb;
            }
            for (int xi = 0; xi < cells; xi++)
                for (int q = 0; q < width; q++) U[xi * u_stride + at[q]] = u[xi][q];
        }
    }
}

/* The alpha x alpha cell pointers of tile (img, ti, tj), zeros outside the image. */
static void DN(wino_cells)(const DN(mc_view) *in, int alpha, int64_t img, int ti, int tj,
                           const DR *zeros, const DR **d)
{
    for (int r = 0; r < alpha; r++) {
        const int row = 2 * ti + r;
        for (int s = 0; s < alpha; s++) {
            const int col = 2 * tj + s;
            d[alpha * r + s] = row < in->h && col < in->w
                                   ? in->base + img * in->img + row * in->row + col * in->col
                                   : zeros;
        }
    }
}

/* out[n, p, q, :] = act(bias + sum_{i,j,c} in[n, p+i, q+j, c] * g[i, j, c, :]) for p < oh,
 * q < ow, out contiguous (n, oh, ow, cout). vbuf/mbuf: per-thread blocks. */
static void DN(wino_conv)(const DN(mc_isa) *isa, const DN(wino_ops) *op, const DN(mc_view) *in,
                          int n, int oh, int ow, DR *out, int cout, const DR *U, int64_t u_stride,
                          const DR *bias, int relu, const ptrdiff_t *ident, const DR *zeros,
                          DR *const *vbuf, DR *const *mbuf, int parts)
{
    const int vlen = isa->vlen, nb = isa->nvmax * vlen, cin = in->channels;
    const int alpha = op->s->alpha, cells = op->s->cells, block = op->s->tiles;
    const int th = (oh + 1) / 2, tw = (ow + 1) / 2;
    const int64_t per_img = (int64_t)th * tw, tiles = n * per_img;
    /* Tiles per block: at most `block` (the per-thread buffers' size), and as even
     * between the threads as whole rounds allow: one 14x14 image's 49 tiles were blocks of 36
     * and 13, so one thread did three quarters of a single-image prediction's layer. Rows of
     * the GEMMs are independent, so the split never changes a result. */
    const int64_t rounds = (tiles + (int64_t)parts * block - 1) / ((int64_t)parts * block);
    const int64_t per_block = (tiles + parts * rounds - 1) / (parts * rounds);
    const int64_t blocks = (tiles + per_block - 1) / per_block;
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
        const ptrdiff_t vs = (ptrdiff_t)block * cin, ms = (ptrdiff_t)block * fv;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t blk = 0; blk < blocks; blk++) {
            const int64_t t0 = blk * per_block;
            const int count = (int)(tiles - t0 < per_block ? tiles - t0 : per_block);
            for (int t = 0; t < count; t++) {
                const int64_t tile = t0 + t, img = tile / per_img, r = tile % per_img;
                const DR *d[DN_WINO_CELLS];
                DN(wino_cells)(in, alpha, img, (int)(r / tw), (int)(r % tw), zeros, d);
                op->in(d, cin, V + (ptrdiff_t)t * cin, vs);
            }
            for (int xi = 0; xi < cells; xi++) {
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
                op->out(M + (ptrdiff_t)t * fv, ms, cout, bias, relu, y);
            }
        }
    }
}

/* acc[tid] (cells x C x fpad, then fpad for the bias) += the transformed kernel gradient of the
 * blocks this thread takes, over every image: dU[xi] += V[xi]^T Z[xi]. */
static void DN(wino_wgrad)(const DN(mc_isa) *isa, const DN(wino_ops) *op, const DN(mc_view) *in,
                           const DN(mc_view) *dy, int n, int F, int64_t fpad, const DR *zeros,
                           DR *const *acc, DR *const *vbuf, DR *const *zbuf, int with_bias,
                           int parts, int team)
{
    const int vlen = isa->vlen, nb = isa->nvmax * vlen, C = in->channels;
    const int alpha = op->s->alpha, cells = op->s->cells, block = op->s->tiles_w;
    const int oh = dy->h, ow = dy->w, th = (oh + 1) / 2, tw = (ow + 1) / 2;
    const int64_t per_img = (int64_t)th * tw, tiles = n * per_img;
    const int64_t blocks = (tiles + block - 1) / block;
    const int fv = (int)DN(round_up)(F, vlen);
    /* zeroed here rather than by their threads: a team smaller than asked for (a thread
     * limit) still sums only zeros from the accumulators it never touched */
    for (int t = 0; t < parts; t++) memset(acc[t], 0, (size_t)(cells * C * fpad + fpad) * sizeof(DR));
    /* one part of the blocks per accumulator, dealt as OpenMP's static schedule would; a team
     * smaller than the parts (the load caps it) takes several, and the sums do not change */
    if (team > parts) team = parts;
#ifdef _OPENMP
#pragma omp parallel num_threads(team) if (team > 1)
#endif
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num(), members = omp_get_num_threads();
#else
        const int tid = 0, members = 1;
#endif
        DR *V = vbuf[tid], *Z = zbuf[tid];
        const ptrdiff_t vs = (ptrdiff_t)block * C, zs = (ptrdiff_t)block * fv;
        ptrdiff_t offs[MK_MRMAX];
        for (int part = tid; part < parts; part += members) {
            DR *dU = acc[part], *db = acc[part] + cells * C * fpad;
            int64_t first, share;
            DN(static_share)(blocks, parts, part, &first, &share);
            for (int64_t blk = first; blk < first + share; blk++) {
                const int64_t t0 = blk * block;
                const int count = (int)(tiles - t0 < block ? tiles - t0 : block);
                for (int t = 0; t < count; t++) {
                    const int64_t tile = t0 + t, img = tile / per_img, r = tile % per_img;
                    const int ti = (int)(r / tw), tj = (int)(r % tw);
                    const DR *d[DN_WINO_CELLS], *gcell[4];
                    DN(wino_cells)(in, alpha, img, ti, tj, zeros, d);
                    op->in(d, C, V + (ptrdiff_t)t * C, vs);
                    for (int k = 0; k < 4; k++) {
                        const int p = 2 * ti + k / 2, q = 2 * tj + k % 2;
                        gcell[k] = p < oh && q < ow ? dy->base + img * dy->img + p * dy->row + q * dy->col : NULL;
                    }
                    op->dy(gcell, F, fv, Z + (ptrdiff_t)t * fv, zs);
                }
                if (with_bias) {
                    /* (A dY A^T)[1][1] is the sum of the tile's four gradient cells: column 1
                     * of A^T (the point 1) is (1, 1) for both kernel sizes */
                    for (int t = 0; t < count; t++) {
                        const DR *z11 = Z + (alpha + 1) * zs + (ptrdiff_t)t * fv;
                        for (int f = 0; f < F; f++) db[f] += z11[f];
                    }
                }
                for (int xi = 0; xi < cells; xi++) {
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
}

/* dkernel[i, j, c, f] = (G^T dU[:, :, c, f] G)[i, j], dU summed over the threads' parts. */
static void DN(wino_unpack_dw)(const DN(mc_isa) *isa, const DN(wino_ops) *op, DR *const *acc,
                               int parts, int C, int F, int64_t fpad, DR *dkernel, int threads)
{
    const int k = op->s->k, al = op->s->alpha, cells = op->s->cells, vlen = isa->vlen;
    DR Gt[DN_WINO_K * DN_WINO_ALPHA];   /* G^T, k x alpha */
    for (int a = 0; a < al; a++)
        for (int i = 0; i < k; i++) Gt[i * al + a] = op->G[a * k + i];
    (void)threads;   /* read by the OpenMP pragma only */
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && C > 8)
#endif
    for (int c = 0; c < C; c++) {
        for (int f0 = 0; f0 < F; f0 += 64) {
            /* whole vectors: the accumulators are fpad wide, zeros past F */
            const int width = F - f0 < 64 ? F - f0 : 64, widthv = (int)DN(round_up)(width, vlen);
            DR u[DN_WINO_CELLS][64], dk[DN_WINO_K * DN_WINO_K][64];
            for (int xi = 0; xi < cells; xi++) {
                const DR *first = acc[0] + (xi * C + c) * fpad + f0;
                for (int q = 0; q < widthv; q++) u[xi][q] = first[q];
                for (int p = 1; p < parts; p++) {
                    const DR *more = acc[p] + (xi * C + c) * fpad + f0;
                    for (int q = 0; q < widthv; q++) u[xi][q] += more[q];
                }
            }
            isa->wino_sandwich(u[0], al, Gt, k, dk[0], 64, widthv);
            for (int ij = 0; ij < k * k; ij++)
                memcpy(dkernel + (ij * C + c) * F + f0, dk[ij], (size_t)width * sizeof(DR));
        }
    }
}

/* The forward pass by Winograd, on the padded input. */
static void DN(forward_winograd)(const mc_conv_geom *g, const DR *xpad, const DR *kernel,
                                 const DR *packed_bias, int relu, DR *y, const DN(mc_work) *w,
                                 int kernel_ready)
{
    const DN(mc_isa) *isa = &DN(mc_isa_tables)[w->plan->level];
    const DN(mc_conv_plan) *plan = w->plan;
    const int64_t E = (int64_t)sizeof(DR), P = (int64_t)sizeof(ptrdiff_t);
    DN(mc_conv_dims) d;
    DN(conv_dims)(g, &d);
    const int F = g->f, C = g->c;
    const int64_t fpad = DN(round_up)(F, DN_VLEN_MAX);
    const size_t img_pad = (size_t)(d.hp * d.wp * C);
    const DN(wino_ops) op = DN(wino_ops_for)(isa, g);
    const int cells = op.s->cells, k = op.s->k;
    DR *U = DN(region)(w, plan->U, cells * C * fpad * E);
    ptrdiff_t *ident = DN(region)(w, plan->ident, C * P);
    const int64_t zlen = DN(zeros_len)(g);
    DR *zeros = DN(region)(w, plan->zeros, zlen * E);
    DR *vbuf[MC_MAX_PARTS], *mbuf[MC_MAX_PARTS];
    DN(thread_parts)(w, plan->fwd_v, (int64_t)cells * op.s->tiles * C * E, vbuf);
    DN(thread_parts)(w, plan->fwd_m, (int64_t)cells * op.s->tiles * fpad * E, mbuf);
    memset(zeros, 0, (size_t)zlen * sizeof(DR));
    for (int c = 0; c < C; c++) ident[c] = c;
    if (!kernel_ready)
        DN(wino_pack)(isa, &op, kernel, (ptrdiff_t)k * C * F, (ptrdiff_t)C * F, F, 1, C, F, U,
                      C * fpad, plan->team);
    const DN(mc_view) in = {xpad, (ptrdiff_t)img_pad, (ptrdiff_t)d.wp * C, C, (int)d.hp, (int)d.wp, C};
    DN(wino_conv)(isa, &op, &in, g->n, (int)d.oh, (int)d.ow, y, F, U, C * fpad, packed_bias, relu,
                  ident, zeros, vbuf, mbuf, plan->team);
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
    const DN(wino_ops) op = DN(wino_ops_for)(b->isa, g);
    const int cells = op.s->cells, block = op.s->tiles_w;
    DR *acc[MC_MAX_PARTS], *vbuf[MC_MAX_PARTS], *zbuf[MC_MAX_PARTS];
    DN(thread_parts)(b->w, plan->wdw_acc, (cells * C * fpad + fpad) * E, acc);
    DN(thread_parts)(b->w, plan->wdw_v, (int64_t)cells * block * C * E, vbuf);
    DN(thread_parts)(b->w, plan->wdw_z, (int64_t)cells * block * fpad * E, zbuf);
    const DN(mc_view) in = {b->xpad, (ptrdiff_t)b->img_pad, (ptrdiff_t)b->d.wp * C, C,
                            (int)b->d.hp, (int)b->d.wp, C};
    const DN(mc_view) dyv = {b->src, b->src_img, b->src_row, b->src_col, (int)b->d.oh, (int)b->d.ow, F};
    /* as many accumulators as threads that get a block of tiles: each one is zeroed by its
     * thread and all of them are summed below */
    const int64_t tile_blocks = ((int64_t)g->n * ((b->d.oh + 1) / 2) * ((b->d.ow + 1) / 2) +
                                 block - 1) / block;
    const int used = plan->threads < tile_blocks ? plan->threads : (int)tile_blocks;
    DN(wino_wgrad)(b->isa, &op, &in, &dyv, g->n, F, fpad, b->zeros, acc, vbuf, zbuf, dbias != NULL,
                   used, plan->team);
    DN(wino_unpack_dw)(b->isa, &op, acc, used, C, F, fpad, dkernel, plan->team);
    if (dbias)
        for (int f = 0; f < F; f++) {
            DR s = acc[0][cells * C * fpad + f];
            for (int t = 1; t < used; t++) s += acc[t][cells * C * fpad + f];
            dbias[f] = s;
        }
}

/* dx by Winograd: the valid k x k correlation of the frame (dy zero-padded by k - 1 - pad on
 * each side) with the flipped, channel-swapped kernel. */
static void DN(dx_winograd)(const DN(mc_backward) *b, const DR *kernel, DR *dx)
{
    const mc_conv_geom *g = b->g;
    const DN(mc_conv_plan) *plan = b->w->plan;
    const int64_t E = (int64_t)sizeof(DR), P = (int64_t)sizeof(ptrdiff_t), cpad = b->cpad;
    const int C = g->c, F = g->f;
    const DN(wino_ops) op = DN(wino_ops_for)(b->isa, g);
    const int cells = op.s->cells, k = op.s->k;
    DR *U = DN(region)(b->w, plan->U, cells * F * cpad * E);
    ptrdiff_t *ident = DN(region)(b->w, plan->ident, F * P);
    DR *vbuf[MC_MAX_PARTS], *mbuf[MC_MAX_PARTS];
    DN(thread_parts)(b->w, plan->wdx_v, (int64_t)cells * op.s->tiles * F * E, vbuf);
    DN(thread_parts)(b->w, plan->wdx_m, (int64_t)cells * op.s->tiles * cpad * E, mbuf);
    for (int f = 0; f < F; f++) ident[f] = f;
    const ptrdiff_t cf = (ptrdiff_t)C * F;
    DN(wino_pack)(b->isa, &op, kernel + (k * k - 1) * cf, -k * cf, -cf, 1, F, F, C, U, F * cpad,
                  plan->team);
    const DN(mc_view) in = {b->frame, (ptrdiff_t)(b->hd * b->wd * b->fv), (ptrdiff_t)(b->wd * b->fv),
                            (ptrdiff_t)b->fv, (int)b->hd, (int)b->wd, F};
    DN(wino_conv)(b->isa, &op, &in, g->n, g->h, g->w, dx, C, U, F * cpad, NULL, 0, ident, b->zeros,
                  vbuf, mbuf, plan->team);
}

#undef DN_WINO_ALPHA
#undef DN_WINO_K
#undef DN_WINO_CELLS
