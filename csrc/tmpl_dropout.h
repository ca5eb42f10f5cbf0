/* Dropout's passes and their entry points: elementwise over chunks on the engine's threads.
 * Element i of a call is kept when the top 24 bits of mc_dropout_bits(key, i) reach
 * `threshold` (rate * 2^24, rounded): one 64-bit key per call, drawn by the layer from its
 * generator, gives every engine and every thread split the same mask, and the draws cost a
 * few integer operations an element instead of NumPy's 53-bit uniform floats (the recipe's
 * dropout took 2.2 ms a step that way). Kept elements are multiplied by scale (1 / (1 - rate)
 * rounded to the dtype), the others by 0: x * 0 keeps NumPy's signed zeros and NaN. The mask
 * (one byte an element) is what the backward reads. The multiplier comes from a two-entry
 * table: a branch on random bits is mispredicted at every rate, and an int-to-float
 * conversion serialises on its register (either was 3x slower).
 * No include guard: a template, included once per dtype by csrc/tmpl_driver.h.
 */
#define DN_DROP_CHUNK 8192

typedef struct {
    const DR *in;            /* x forward, dy backward */
    DR *out;                 /* y forward, dx backward */
    uint8_t *mask;           /* written forward */
    const uint8_t *kept;     /* read backward */
    uint64_t key;
    int64_t threshold;
    DR multiplier[2];        /* {0, scale} */
} DN(dropout_args);

static void DN(dropout_forward_chunk)(int64_t start, int64_t len, const void *args)
{
    const DN(dropout_args) *a = args;
    for (int64_t i = start; i < start + len; i++) {
        const uint8_t keep = (int64_t)(mc_dropout_bits(a->key, (uint64_t)i) >> 40) >= a->threshold;
        a->mask[i] = keep;
        a->out[i] = a->in[i] * a->multiplier[keep];
    }
}

static void DN(dropout_backward_chunk)(int64_t start, int64_t len, const void *args)
{
    const DN(dropout_args) *a = args;
    for (int64_t i = start; i < start + len; i++) a->out[i] = a->in[i] * a->multiplier[a->kept[i] != 0];
}

int DN(mc_dropout_forward)(int64_t n, const DR *x, int64_t x_len, uint64_t key, int64_t threshold,
                           double scale, DR *y, int64_t y_len, uint8_t *mask, int64_t mask_len)
{
    if (n < 1 || n > MC_LEN_MAX || threshold < 0 || threshold > MC_DROPOUT_ONE) return MC_ERR_GEOMETRY;
    if (!x || !y || !mask) return MC_ERR_NULL;
    if (x_len != n || y_len != n || mask_len != n) return MC_ERR_SIZE;
    mc_init();
    const DN(dropout_args) args = {x, y, mask, NULL, key, threshold, {(DR)0, (DR)scale}};
    /* the hash makes each element a few times an elementwise pass's work */
    DN(for_chunks)(n, DN_DROP_CHUNK, DN(threads_for)(n * 4, mc_team_now()), DN(dropout_forward_chunk), &args);
    return MC_OK;
}

int DN(mc_dropout_backward)(int64_t n, const DR *dy, int64_t dy_len, const uint8_t *mask,
                            int64_t mask_len, double scale, DR *dx, int64_t dx_len)
{
    if (n < 1 || n > MC_LEN_MAX) return MC_ERR_GEOMETRY;
    if (!dy || !mask || !dx) return MC_ERR_NULL;
    if (dy_len != n || mask_len != n || dx_len != n) return MC_ERR_SIZE;
    mc_init();
    const DN(dropout_args) args = {dy, dx, NULL, mask, 0, 0, {(DR)0, (DR)scale}};
    DN(for_chunks)(n, DN_DROP_CHUNK, DN(threads_for)(n, mc_team_now()), DN(dropout_backward_chunk), &args);
    return MC_OK;
}
#undef DN_DROP_CHUNK
