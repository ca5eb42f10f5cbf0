/* Dropout's passes and their entry points: elementwise over chunks on the engine's threads.
 * Element i of a call is kept when the top 24 bits of mc_dropout_bits(key, i) reach
 * `threshold` (rate * 2^24, rounded): one 64-bit key per call, drawn by the layer from its
 * generator, gives every engine and every thread split the same mask, and the draws cost a
 * few integer operations an element instead of NumPy's 53-bit uniform floats (the recipe's
 * dropout took 2.2 ms a step that way). Kept elements are multiplied by scale (1 / (1 - rate)
 * rounded to the dtype), the others by 0: x * 0 keeps NumPy's signed zeros and NaN. The mask
 * (one byte an element) is what the backward reads.
 * No include guard: a template, included once per dtype by csrc/tmpl_driver.h.
 */
#define DN_DROP_CHUNK 8192

int DN(mc_dropout_forward)(int64_t n, const DR *x, int64_t x_len, uint64_t key, int64_t threshold,
                           double scale, DR *y, int64_t y_len, uint8_t *mask, int64_t mask_len)
{
    if (n < 1 || n > MC_LEN_MAX || threshold < 0 || threshold > MC_DROPOUT_ONE) return MC_ERR_GEOMETRY;
    if (!x || !y || !mask) return MC_ERR_NULL;
    if (x_len != n || y_len != n || mask_len != n) return MC_ERR_SIZE;
    mc_init();
    /* the multiplier by table lookup: a branch on random bits is mispredicted at every rate,
     * and an int-to-float conversion serialises on its register (3x slower either way) */
    const DR multiplier[2] = {(DR)0, (DR)scale};
    const int64_t chunks = (n + DN_DROP_CHUNK - 1) / DN_DROP_CHUNK;
    const int threads = DN(threads_for)(n * 4, mc_threads_now());
    (void)threads;   /* read by the OpenMP pragma only */
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && chunks > 1)
#endif
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t end = (k + 1) * DN_DROP_CHUNK < n ? (k + 1) * DN_DROP_CHUNK : n;
        for (int64_t i = k * DN_DROP_CHUNK; i < end; i++) {
            const uint8_t keep = (int64_t)(mc_dropout_bits(key, (uint64_t)i) >> 40) >= threshold;
            mask[i] = keep;
            y[i] = x[i] * multiplier[keep];
        }
    }
    return MC_OK;
}

int DN(mc_dropout_backward)(int64_t n, const DR *dy, int64_t dy_len, const uint8_t *mask,
                            int64_t mask_len, double scale, DR *dx, int64_t dx_len)
{
    if (n < 1 || n > MC_LEN_MAX) return MC_ERR_GEOMETRY;
    if (!dy || !mask || !dx) return MC_ERR_NULL;
    if (dy_len != n || mask_len != n || dx_len != n) return MC_ERR_SIZE;
    mc_init();
    const DR multiplier[2] = {(DR)0, (DR)scale};
    const int64_t chunks = (n + DN_DROP_CHUNK - 1) / DN_DROP_CHUNK;
    const int threads = DN(threads_for)(n, mc_threads_now());
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && chunks > 1)
#endif
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t end = (k + 1) * DN_DROP_CHUNK < n ? (k + 1) * DN_DROP_CHUNK : n;
        for (int64_t i = k * DN_DROP_CHUNK; i < end; i++) dx[i] = dy[i] * multiplier[mask[i] != 0];
    }
    return MC_OK;
}
#undef DN_DROP_CHUNK
