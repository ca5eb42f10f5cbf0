/* Max pooling, vectorised over channels, with the NumPy engine's rules (first maximum wins,
 * NaN wins and stays, -inf padding).
 * No include guard: a template, included once per dtype by csrc/tmpl_driver.h.
 */

/* One window over fewer channels than a vector (LeNet's 6), inline: cell by cell, without
 * branches (as branches on random data they were mispredicted half the time, 3x slower than
 * 16 channels); through the window kernel's scalar lanes, LeNet's inference ran 25% slower. */
static void DN(pool_window_narrow)(const mc_pool_geom *g, const DR *xi, int64_t p, int64_t q,
                                   DR *yo, int32_t *ao)
{
    const int C = g->c;
    for (int i = 0; i < g->pool_h; i++)
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
            for (int c = 0; c < C; c++) {
                const DR v = xr[c], b = yo[c];
                const int better = (v > b) | ((v != v) & (b == b));
                yo[c] = better ? v : b;
                ao[c] = better ? base + c : ao[c];
            }
        }
}

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
            if (C < isa->vlen) {
                DN(pool_window_narrow)(g, xi, p, q, yo, ao);
                continue;
            }
            /* the window's cells inside the image, in row order, MC_POOL_WINDOW_CELLS per
             * kernel call; a padding cell (-inf) counts only as the first of its window */
            const DR *cells[MC_POOL_WINDOW_CELLS];
            int32_t base[MC_POOL_WINDOW_CELLS];
            int start = MK_POOL_FROM_FIRST, count = 0;
            for (int i = 0; i < g->pool_h; i++)
                for (int j = 0; j < g->pool_w; j++) {
                    const int64_t hh = p * g->stride_h + i - g->pad_top;
                    const int64_t ww = q * g->stride_w + j - g->pad_left;
                    if (hh < 0 || hh >= g->h || ww < 0 || ww >= g->w) {
                        if (i == 0 && j == 0) start = MK_POOL_FROM_PADDING;
                        continue;
                    }
                    base[count] = (int32_t)((hh * g->w + ww) * C);
                    cells[count] = xi + base[count];
                    if (++count == MC_POOL_WINDOW_CELLS) {
                        isa->pool_window(yo, ao, cells, base, count, start, C);
                        start = MK_POOL_CONTINUE;
                        count = 0;
                    }
                }
            if (count > 0 || start == MK_POOL_FROM_PADDING)
                isa->pool_window(yo, ao, cells, base, count, start, C);
        }
    }
}

/* Returns the count of winners outside their image (0 for any argmax maxpool_forward wrote):
 * the winners come back from the caller, so each is checked before dx is written through it
 * (-1, a window with no cell inside the image, adds nothing). */
static int64_t DN(maxpool_backward)(const mc_pool_geom *g, const DR *dy, const int32_t *argmax,
                                    DR *dx, int64_t oh, int64_t ow, int threads)
{
    const int64_t img_in = (int64_t)g->h * g->w * g->c, img_out = oh * ow * g->c;
    int64_t outside = 0;
    threads = DN(threads_for)((int64_t)g->n * (img_in + img_out), threads);
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && g->n > 1) reduction(+ : outside)
#endif
    for (int n = 0; n < g->n; n++) {
        DR *dxi = dx + n * img_in;
        const DR *dyi = dy + n * img_out;
        const int32_t *ai = argmax + n * img_out;
        memset(dxi, 0, (size_t)img_in * sizeof(DR));
        for (int64_t k = 0; k < img_out; k++) {
            if (ai[k] >= 0 && ai[k] < img_in)
                dxi[ai[k]] += dyi[k];
            else if (ai[k] != -1)
                outside++;
        }
    }
    return outside;
}
