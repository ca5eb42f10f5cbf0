/* The ReLU layer's passes and their entry points: elementwise over chunks of whole vectors.
 * forward   y = x where x > 0 or x is NaN, else +0 (np.maximum(x, 0), -0.0 included)
 * backward  dx = dy * (y > 0), the fused convolution's mask (relu_mask), NumPy's roundings
 * A separate ReLU after batch normalisation is the common pattern; in NumPy it was two passes
 * and a bool mask each way on one thread (docs/performance.md, "The recipe").
 * No include guard: a template, included once per dtype by csrc/tmpl_driver.h.
 */
#define DN_RELU_CHUNK 8192

static int DN(relu_check)(int64_t n, const void *a, int64_t a_len, const void *b, int64_t b_len)
{
    if (n < 1 || n > MC_LEN_MAX) return MC_ERR_GEOMETRY;
    if (!a || !b) return MC_ERR_NULL;
    if (a_len != n || b_len != n) return MC_ERR_SIZE;
    return MC_OK;
}

int DN(mc_relu_forward)(int64_t n, const DR *x, int64_t x_len, DR *y, int64_t y_len)
{
    int err = DN(relu_check)(n, x, x_len, y, y_len);
    if (err) return err;
    mc_init();
    const int64_t chunks = (n + DN_RELU_CHUNK - 1) / DN_RELU_CHUNK;
    const int threads = DN(threads_for)(n, mc_threads_now());
    (void)threads;   /* read by the OpenMP pragma only */
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && chunks > 1)
#endif
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t end = (k + 1) * DN_RELU_CHUNK < n ? (k + 1) * DN_RELU_CHUNK : n;
        for (int64_t i = k * DN_RELU_CHUNK; i < end; i++) {
            const DR v = x[i];
            y[i] = (v > 0) | (v != v) ? v : (DR)0;
        }
    }
    return MC_OK;
}

int DN(mc_relu_backward)(int64_t n, const DR *dy, int64_t dy_len, const DR *y, int64_t y_len,
                         DR *dx, int64_t dx_len)
{
    int err = DN(relu_check)(n, dy, dy_len, y, y_len);
    if (err) return err;
    if (!dx) return MC_ERR_NULL;
    if (dx_len != n) return MC_ERR_SIZE;
    mc_init();
    const DN(mc_isa) *isa = &DN(mc_isa_tables)[mc_level];
    const int64_t chunks = (n + DN_RELU_CHUNK - 1) / DN_RELU_CHUNK;
    const int threads = DN(threads_for)(n, mc_threads_now());
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && chunks > 1)
#endif
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t start = k * DN_RELU_CHUNK;
        const int64_t len = n - start < DN_RELU_CHUNK ? n - start : DN_RELU_CHUNK;
        isa->relu_mask(dx + start, dy + start, y + start, (int)len);
    }
    return MC_OK;
}
#undef DN_RELU_CHUNK
