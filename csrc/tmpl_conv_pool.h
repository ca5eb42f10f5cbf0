/* A convolution and the max pool that reads its output, forward as one call: the images go
 * through in chunks whose convolution output (about MC_FUSE_CHUNK_BYTES) is still in the caches
 * when the pool reads it, and that output is scratch: the backward (conv2d_backward_from_maxpool,
 * csrc/tmpl_conv.h's image_dy) takes the pool's gradient and the pooled values, never the
 * convolution's output. Each chunk runs the unfused passes themselves (conv_forward, then
 * maxpool_forward), and neither depends on which other images share its call, so every output
 * is the unfused one to the bit (Winograd's transformed kernel, the same bits for every chunk,
 * is computed by the first chunk only).
 * No include guard: a template, included once per dtype by csrc/tmpl_driver.h.
 */

static int64_t DN(pool_chunk_images)(const mc_conv_geom *g)
{
    DN(mc_conv_dims) d;
    DN(conv_dims)(g, &d);
    const int64_t image = d.oh * d.ow * g->f * (int64_t)sizeof(DR);
    const int64_t k = MC_FUSE_CHUNK_BYTES / image;
    return k < 1 ? 1 : k > g->n ? g->n : k;
}

/* The workspace: one chunk's convolution output, then the larger plan of a whole chunk and
 * of the last, shorter one. keep_xpad as for conv_forward_bytes. */
static int64_t DN(conv_pool_forward_bytes)(const mc_conv_geom *g, int keep_xpad, int threads)
{
    DN(mc_conv_dims) d;
    DN(conv_dims)(g, &d);
    const int64_t k = DN(pool_chunk_images)(g);
    mc_conv_geom part = *g;
    part.n = (int)k;
    int64_t plan = DN(conv_forward_bytes)(&part, keep_xpad, threads);
    if (g->n % k) {
        part.n = (int)(g->n % k);
        const int64_t last = DN(conv_forward_bytes)(&part, keep_xpad, threads);
        if (last > plan) plan = last;
    }
    return 64 + DN(round_up)(k * d.oh * d.ow * g->f * (int64_t)sizeof(DR), 64) + plan;
}

static void DN(conv_pool_forward)(const mc_conv_geom *g, const mc_pool_geom *pg, const DR *x,
                                  const DR *kernel, const DR *bias, int relu, DR *xpad, DR *pooled,
                                  int32_t *argmax, DR *work, int64_t work_len, int threads)
{
    DN(mc_conv_dims) d;
    DN(conv_dims)(g, &d);
    const int64_t k = DN(pool_chunk_images)(g);
    const int64_t ph = (d.oh - pg->pool_h) / pg->stride_h + 1, pw = (d.ow - pg->pool_w) / pg->stride_w + 1;
    const int64_t img_in = (int64_t)g->h * g->w * g->c, img_pad = d.hp * d.wp * g->c;
    const int64_t img_pool = ph * pw * g->f;
    /* the chunk's output first, 64-byte aligned; the plans' workspace after it */
    DR *y = (DR *)(((uintptr_t)work + 63u) & ~(uintptr_t)63u);
    const int64_t taken = (int64_t)(y - work) +
                          DN(round_up)(k * d.oh * d.ow * g->f * (int64_t)sizeof(DR), 64) / (int64_t)sizeof(DR);
    MC_ASSERT(taken <= work_len);
    /* the kernel is packed (direct) or transformed (Winograd) once: every chunk's plan puts it
     * at the same offset (the kernel's regions do not depend on the batch or the threads) */
    int64_t packed_at = -1;
    int packed_level = -1, packed_wino = -1;
    for (int64_t n0 = 0; n0 < g->n; n0 += k) {
        mc_conv_geom part = *g;
        part.n = (int)(g->n - n0 < k ? g->n - n0 : k);
        DN(mc_conv_plan) plan;
        DN(forward_plan)(&part, xpad != NULL, threads, &plan);
        const DN(mc_work) w = DN(bind)(&plan, work + taken, work_len - taken);
        const int64_t kernel_at = plan.wino_fwd ? plan.U : plan.packed;
        const int kernel_ready = kernel_at == packed_at && plan.level == packed_level &&
                                 plan.wino_fwd == packed_wino;
        DN(conv_forward)(&part, x + n0 * img_in, kernel, bias, relu,
                         xpad ? xpad + n0 * img_pad : NULL, y, &w, kernel_ready);
        packed_at = kernel_at;
        packed_level = plan.level;
        packed_wino = plan.wino_fwd;
        mc_pool_geom pool = *pg;
        pool.n = part.n;
        DN(maxpool_forward)(&pool, y, pooled + n0 * img_pool, argmax + n0 * img_pool, ph, pw, plan.team);
    }
}
