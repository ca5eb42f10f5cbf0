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

typedef struct { const DR *x; DR *y; } DN(relu_forward_args);

static void DN(relu_forward_chunk)(int64_t start, int64_t len, const void *args)
{
    const DN(relu_forward_args) *a = args;
    const DR *x = a->x + start;
    DR *y = a->y + start;
    for (int64_t i = 0; i < len; i++) {
        const DR v = x[i];
        y[i] = (v > 0) | (v != v) ? v : (DR)0;
    }
}

/* dx = dy * (y > 0) over a range: also the fused batch-norm ReLU's first step (tmpl_batchnorm.h) */
typedef struct { const DR *dy, *y; DR *dx; } DN(relu_mask_args);

static void DN(relu_mask_chunk)(int64_t start, int64_t len, const void *args)
{
    const DN(relu_mask_args) *a = args;
    DN(mc_isa_tables)[mc_level].relu_mask(a->dx + start, a->dy + start, a->y + start, (int)len);
}

static void DN(relu_mask)(int64_t n, const DR *dy, const DR *y, DR *dx, int threads)
{
    const DN(relu_mask_args) args = {dy, y, dx};
    DN(for_chunks)(n, DN_RELU_CHUNK, DN(threads_for)(n, threads), DN(relu_mask_chunk), &args);
}

int DN(mc_relu_forward)(int64_t n, const DR *x, int64_t x_len, DR *y, int64_t y_len)
{
    int err = DN(relu_check)(n, x, x_len, y, y_len);
    if (err) return err;
    mc_init();
    const DN(relu_forward_args) args = {x, y};
    DN(for_chunks)(n, DN_RELU_CHUNK, DN(threads_for)(n, mc_team_now()), DN(relu_forward_chunk), &args);
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
    DN(relu_mask)(n, dy, y, dx, mc_team_now());
    return MC_OK;
}
#undef DN_RELU_CHUNK
