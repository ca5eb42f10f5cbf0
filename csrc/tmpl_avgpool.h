/* Average pooling and its entry points, vectorised over channels (NHWC: the inner loops run
 * over C contiguous values). Each window averages only its cells inside the image (padding is
 * neither summed nor counted: TensorFlow's "same", PyTorch's count_include_pad=False), with the
 * NumPy engine's order of operations: the inside cells summed in row-major window order, then
 * divided by their count.
 * No include guard: a template, included once per dtype by csrc/tmpl_driver.h.
 */

/* The window's inside range along one axis: [*lo, *hi) of input indices. */
static void DN(avgpool_span)(int64_t out_index, int stride, int pad, int window, int size,
                             int64_t *lo, int64_t *hi)
{
    const int64_t start = out_index * stride - pad;
    *lo = start < 0 ? 0 : start;
    *hi = start + window > size ? size : start + window;
}

static void DN(avgpool_forward)(const mc_pool_geom *g, const DR *x, DR *y, int64_t oh, int64_t ow,
                                int threads)
{
    const int C = g->c;
    const int64_t rows = (int64_t)g->n * oh;
    threads = DN(threads_for)(rows * ow * C * g->pool_h * g->pool_w, threads);
    (void)threads;   /* read by the OpenMP pragma only */
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows > 1)
#endif
    for (int64_t r = 0; r < rows; r++) {
        const int64_t n = r / oh, p = r % oh;
        const DR *xi = x + n * (int64_t)g->h * g->w * C;
        int64_t h0, h1;
        DN(avgpool_span)(p, g->stride_h, g->pad_top, g->pool_h, g->h, &h0, &h1);
        for (int64_t q = 0; q < ow; q++) {
            int64_t w0, w1;
            DN(avgpool_span)(q, g->stride_w, g->pad_left, g->pool_w, g->w, &w0, &w1);
            DR *yo = y + (r * ow + q) * C;
            for (int c = 0; c < C; c++) yo[c] = 0;
            for (int64_t hh = h0; hh < h1; hh++)
                for (int64_t ww = w0; ww < w1; ww++) {
                    const DR *xr = xi + (hh * g->w + ww) * C;
                    for (int c = 0; c < C; c++) yo[c] += xr[c];
                }
            const DR count = (DR)((h1 - h0) * (w1 - w0));
            for (int c = 0; c < C; c++) yo[c] /= count;
        }
    }
}

/* Parallel over images: each thread writes its own images' dx only. */
static void DN(avgpool_backward)(const mc_pool_geom *g, const DR *dy, DR *dx, int64_t oh, int64_t ow,
                                 int threads)
{
    const int C = g->c;
    const int64_t img_in = (int64_t)g->h * g->w * C, img_out = oh * ow * C;
    threads = DN(threads_for)((int64_t)g->n * img_out * g->pool_h * g->pool_w, threads);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && g->n > 1)
#endif
    for (int n = 0; n < g->n; n++) {
        DR *dxi = dx + n * img_in;
        memset(dxi, 0, (size_t)img_in * sizeof(DR));
        for (int64_t p = 0; p < oh; p++) {
            int64_t h0, h1;
            DN(avgpool_span)(p, g->stride_h, g->pad_top, g->pool_h, g->h, &h0, &h1);
            for (int64_t q = 0; q < ow; q++) {
                int64_t w0, w1;
                DN(avgpool_span)(q, g->stride_w, g->pad_left, g->pool_w, g->w, &w0, &w1);
                const DR *dyo = dy + n * img_out + (p * ow + q) * C;
                const DR count = (DR)((h1 - h0) * (w1 - w0));
                for (int64_t hh = h0; hh < h1; hh++)
                    for (int64_t ww = w0; ww < w1; ww++) {
                        DR *dxr = dxi + (hh * g->w + ww) * C;
                        for (int c = 0; c < C; c++) dxr[c] += dyo[c] / count;
                    }
            }
        }
    }
}

/* A pad as large as the window would make windows of padding alone, with nothing to average. */
static int DN(avgpool_check)(const mc_pool_geom *g, int64_t *oh, int64_t *ow)
{
    int err = mc_check_pool(g, oh, ow);
    if (err) return err;
    if (g->pad_top >= g->pool_h || g->pad_bottom >= g->pool_h || g->pad_left >= g->pool_w ||
        g->pad_right >= g->pool_w)
        return MC_ERR_GEOMETRY;
    return MC_OK;
}

int DN(mc_avgpool2d_forward)(const mc_pool_geom *g, const DR *x, int64_t x_len, DR *y, int64_t y_len)
{
    int64_t oh, ow;
    int err = DN(avgpool_check)(g, &oh, &ow);
    if (err) return err;
    mc_init();
    if (!x || !y) return MC_ERR_NULL;
    if (x_len != (int64_t)g->n * g->h * g->w * g->c || y_len != (int64_t)g->n * oh * ow * g->c)
        return MC_ERR_SIZE;
    DN(avgpool_forward)(g, x, y, oh, ow, mc_team_now());
    return MC_OK;
}

int DN(mc_avgpool2d_backward)(const mc_pool_geom *g, const DR *dy, int64_t dy_len, DR *dx, int64_t dx_len)
{
    int64_t oh, ow;
    int err = DN(avgpool_check)(g, &oh, &ow);
    if (err) return err;
    mc_init();
    if (!dy || !dx) return MC_ERR_NULL;
    if (dx_len != (int64_t)g->n * g->h * g->w * g->c || dy_len != (int64_t)g->n * oh * ow * g->c)
        return MC_ERR_SIZE;
    DN(avgpool_backward)(g, dy, dx, oh, ow, mc_team_now());
    return MC_OK;
}
