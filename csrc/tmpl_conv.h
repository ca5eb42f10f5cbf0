/* The convolution drivers: the forward pass and the backward pass as named steps (frame dy,
 * kernel gradient, input gradient), each step on the algorithm and the workspace regions the
 * plan chose (csrc/tmpl_conv_plan.h).
 * No include guard: a template, included once per dtype by csrc/tmpl_driver.h.
 */

/* Forward: copy x into its zero-padded frames, then one algorithm. With xpad (kept for the
 * backward) the whole batch is padded first; without (inference: xpad NULL) a group of images
 * at a time (plan->group) into the plan's frames, so the algorithm reads frames the padding has
 * just left in the caches and the batch's padded copy is never written (a stride-2 layer's 335
 * images were 9.6 MB of frames), and without padding the algorithm reads x itself. Each output
 * pixel's sum does not depend on which other images share the call, so the groups give the
 * whole batch's bits.
 * kernel_ready: the plan's packed-kernel region (direct) or transformed-kernel region
 * (Winograd) already holds this kernel's, left by an earlier chunk of the same call
 * (csrc/tmpl_conv_pool.h); an earlier group counts the same. */
static int DN(conv_forward)(const mc_conv_geom *g, const DR *x, const DR *kernel,
                             const DR *bias, int relu, DR *xpad, DR *y, const DN(mc_work) *w,
                             int kernel_ready)
{
    const DN(mc_conv_plan) *plan = w->plan;
    DN(mc_conv_dims) d;
    DN(conv_dims)(g, &d);
    const int F = g->f, C = g->c, threads = plan->team;
    const int64_t E = (int64_t)sizeof(DR), fpad = DN(round_up)(F, DN_VLEN_MAX);
    DR *packed_bias = DN(region)(w, plan->packed_bias, fpad * E);
    const size_t img_in = (size_t)g->h * g->w * C, img_pad = (size_t)(d.hp * d.wp * C);
    const size_t img_out = (size_t)(d.oh * d.ow * F);
    /* the frames: the kept xpad (one group: the whole batch), the plan's frames for a group,
     * or none (no xpad and no padding: the algorithm reads x) */
    const int64_t group = plan->group ? plan->group : g->n;
    DR *frames = xpad;
    if (plan->group) frames = DN(region)(w, plan->frames, group * (int64_t)img_pad * E);
    (void)threads;   /* read by the OpenMP pragma only, in builds without OpenMP */
    MC_ASSERT(group >= 1 && !(xpad && plan->group));

    /* bias as whole vectors, zeros past F */
    for (int64_t j = 0; j < fpad; j++) packed_bias[j] = bias && j < F ? bias[j] : (DR)0;

    for (int64_t n0 = 0; n0 < g->n; n0 += group) {
        mc_conv_geom part = *g;
        part.n = (int)(g->n - n0 < group ? g->n - n0 : group);
        const DR *in = x + n0 * img_in;
        if (frames) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && part.n > 1)
#endif
            for (int n = 0; n < part.n; n++)
                DN(pad_image)(x + (n0 + n) * img_in, g->h, g->w, C, g->pad_top, g->pad_bottom,
                              g->pad_left, g->pad_right, frames + n * img_pad);
            in = frames;
        }
        if (plan->wino_fwd)
            DN(forward_winograd)(&part, in, kernel, bias ? packed_bias : NULL, relu,
                                 y + n0 * img_out, w, kernel_ready || n0 > 0);
        else
            DN(forward_direct)(&part, in, kernel, bias ? packed_bias : NULL, relu,
                               y + n0 * img_out, w, kernel_ready || n0 > 0);
    }
    return MC_OK;
}

/* Image n's dy as the kernel and input gradients read it, into out (rows `row` elements apart,
 * pixels fv apart): F values masked by the fused ReLU, then zeros up to fv. From the layer's
 * own dy, or rebuilt from the gradient of the max pool that followed (b->pool): each window's
 * gradient at its winner and zeros elsewhere, the numbers the pool's backward would have
 * handed over and this layer's mask would have made of them, without the whole-batch dy
 * array the two passes wrote and read in between (12.8 MB for the seed's first layer at
 * batch 128). The pool's windows do not overlap (checked at the entry point). */
static void DN(image_dy)(const DN(mc_backward) *b, int64_t n, DR *out, ptrdiff_t row)
{
    const int F = b->g->f;
    const int64_t oh = b->d.oh, ow = b->d.ow, fv = b->fv;
    if (!b->pool) {
        for (int64_t p = 0; p < oh; p++)
            for (int64_t q = 0; q < ow; q++) {
                const size_t at = n * b->img_dy + (size_t)((p * ow + q) * F);
                DR *o = out + p * row + q * fv;
                if (b->relu_y)
                    b->isa->relu_mask(o, b->dy + at, b->relu_y + at, F);
                else
                    memcpy(o, b->dy + at, (size_t)F * sizeof(DR));
                for (int64_t f = F; f < fv; f++) o[f] = 0;
            }
        return;
    }
    const mc_pool_geom *pg = b->pool;
    const int64_t ph = b->pool_oh, pw = b->pool_ow, pooled_img = ph * pw * F;
    /* cells outside every window, and the lanes past F, stay zero */
    if (ph * pg->stride_h != oh || pw * pg->stride_w != ow || pg->stride_h != pg->pool_h ||
        pg->stride_w != pg->pool_w || fv != F)
        for (int64_t p = 0; p < oh; p++) memset(out + p * row, 0, (size_t)(ow * fv) * sizeof(DR));
    DR *cells[MC_POOL_FUSE_CELLS];
    int32_t base[MC_POOL_FUSE_CELLS];
    const int ncells = pg->pool_h * pg->pool_w;
    for (int64_t i = 0; i < ph; i++)
        for (int64_t j = 0; j < pw; j++) {
            int k = 0;
            for (int r = 0; r < pg->pool_h; r++)
                for (int s = 0; s < pg->pool_w; s++, k++) {
                    const int64_t p = i * pg->stride_h + r, q = j * pg->stride_w + s;
                    cells[k] = out + p * row + q * fv;
                    base[k] = (int32_t)((p * ow + q) * F);
                }
            const int64_t at = n * pooled_img + (i * pw + j) * F;
            b->isa->pool_expand(cells, base, ncells, b->argmax + at, b->dy + at,
                                b->relu_y ? b->relu_y + at : NULL, F);
        }
}

/* dy (masked by the fused ReLU) into the zero-margined, whole-vector rows of the frame. */
static void DN(frame_dy)(DN(mc_backward) *b)
{
    const mc_conv_geom *g = b->g;
    const int threads = b->w->plan->team;
    const size_t frame_img = (size_t)(b->hd * b->wd * b->fv);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && g->n > 1)
#endif
    for (int n = 0; n < g->n; n++) {
        DR *fr = b->frame + n * frame_img;
        /* image_dy writes every element of the oh x ow interior (lanes past F and cells outside
         * the pool's windows included), so only the margins are zeroed here: zeroing whole
         * frames first was ~2% of the seed model's training step */
        const int64_t row = b->wd * b->fv, oh = b->d.oh, ow = b->d.ow;
        const int64_t left = b->ml * b->fv, right = (b->wd - b->ml - ow) * b->fv;
        memset(fr, 0, (size_t)(b->mt * row) * sizeof(DR));
        for (int64_t r = b->mt; r < b->mt + oh; r++) {
            memset(fr + r * row, 0, (size_t)left * sizeof(DR));
            memset(fr + r * row + left + ow * b->fv, 0, (size_t)right * sizeof(DR));
        }
        memset(fr + (b->mt + oh) * row, 0, (size_t)((b->hd - b->mt - oh) * row) * sizeof(DR));
        DN(image_dy)(b, n, fr + (b->mt * b->wd + b->ml) * b->fv, (ptrdiff_t)row);
    }
    b->src = b->frame + (b->mt * b->wd + b->ml) * b->fv;
    b->src_img = (ptrdiff_t)frame_img;
    b->src_row = (ptrdiff_t)(b->wd * b->fv);
    b->src_col = (ptrdiff_t)b->fv;
}

/* pool/argmax: NULL, or the max pool after this layer whose gradient dy then is */
static int DN(conv_backward)(const mc_conv_geom *g, const DR *xpad, const DR *kernel,
                              const DR *dy, const DR *relu_y, const mc_pool_geom *pool,
                              const int32_t *argmax, DR *dx, DR *dkernel, DR *dbias,
                              const DN(mc_work) *w)
{
    const DN(mc_conv_plan) *plan = w->plan;
    const int64_t E = (int64_t)sizeof(DR);
    DN(mc_backward) b;
    memset(&b, 0, sizeof b);
    b.g = g;
    b.isa = &DN(mc_isa_tables)[plan->level];
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
    b.pool = pool;
    b.argmax = argmax;
    if (pool) {
        b.pool_oh = (b.d.oh - pool->pool_h) / pool->stride_h + 1;
        b.pool_ow = (b.d.ow - pool->pool_w) / pool->stride_w + 1;
    }
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
