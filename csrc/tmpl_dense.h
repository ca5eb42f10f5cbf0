/* Dense (fully connected): y = act(x @ W + b), x (N, K), W (K, F).
 * No include guard: a template, included once per dtype by csrc/tmpl_driver.h.
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
#define DN_DENSE_ROW_SPLIT 128
/* dense workspace: regions taken one after another, 64 bytes of alignment slack each */
#define DN_ELEMS(count) ((int64_t)(count) * (int64_t)sizeof(DR) + 64)
#define DN_OFFSETS(count) ((int64_t)(count) * (int64_t)sizeof(ptrdiff_t) + 64)

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

/* Too little work to split: a parallel region costs a few microseconds. A large weight matrix
 * is split even for one row (a single-image prediction): that product only streams the weights,
 * and two threads stream two halves from two cores' caches (3136x128 at batch 1: 48 -> 32 us). */
static int DN(dense_threads)(int64_t n, int64_t k, int64_t f, int threads)
{
    const int small = 2 * n * k * f < ((int64_t)1 << 20) && k * f < ((int64_t)1 << 16);
    return small ? 1 : threads;
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
    /* work units: column blocks, each split into row groups (one per thread for batches of
     * DN_DENSE_ROW_SPLIT rows or more, else only when there are fewer blocks than threads); a
     * unit walks K in chunks and, per chunk, every row tile of its group. OpenMP's static
     * schedule hands thread t the units of row group t, every column block: it reads its rows
     * of x once, where splitting by columns made every thread read all of x (3136 -> 128 at
     * 128-1000 rows: 1.02-1.36x faster in in-process A/B runs, docs/performance.md). */
    const int groups = N >= DN_DENSE_ROW_SPLIT ? threads
                     : fblocks >= threads ? 1 : (threads + fblocks - 1) / fblocks;
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
