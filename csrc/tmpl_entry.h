/* The public entry points of the convolution, pooling and dense operators: check the
 * geometry and every buffer length first (MC_ERR_* and nothing written on a mismatch), then
 * run. The optimizer updates' entry points are in csrc/tmpl_optim.h.
 * No include guard: a template, included once per dtype by csrc/tmpl_driver.h.
 */

int DN(mc_conv2d_forward)(const mc_conv_geom *g, const DR *x, int64_t x_len, const DR *kernel,
                          int64_t kernel_len, const DR *bias, int64_t bias_len, int relu,
                          DR *xpad, int64_t xpad_len, DR *y, int64_t y_len, DR *work,
                          int64_t work_len)
{
    mc_conv_sizes s;
    int err = mc_check_conv(g, &s);
    if (err) return err;
    mc_init();
    if (!x || !kernel || !y || !work) return MC_ERR_NULL;
    if (x_len != s.x || kernel_len != s.kernel || (xpad ? xpad_len != s.xpad : xpad_len != 0) ||
        y_len != s.y || (bias ? bias_len != g->f : bias_len != 0))
        return MC_ERR_SIZE;
    DN(mc_conv_plan) plan;
    DN(forward_plan)(g, xpad != NULL, mc_threads_now(), &plan);
    if (work_len < 0 || work_len > INT64_MAX / (int64_t)sizeof(DR) ||
        work_len * (int64_t)sizeof(DR) < plan.bytes)
        return MC_ERR_SIZE;
    DN(poison_workspace)(work, work_len);
    const DN(mc_work) w = DN(bind)(&plan, work, work_len);
    return DN(conv_forward)(g, x, kernel, bias, relu, xpad, y, &w, 0);
}

int DN(mc_conv2d_backward)(const mc_conv_geom *g, const DR *xpad, int64_t xpad_len,
                           const DR *kernel, int64_t kernel_len, const DR *dy, int64_t dy_len,
                           const DR *relu_y, int64_t relu_y_len, DR *dx, int64_t dx_len,
                           DR *dkernel, int64_t dkernel_len, DR *dbias, int64_t dbias_len,
                           DR *work, int64_t work_len)
{
    mc_conv_sizes s;
    int err = mc_check_conv(g, &s);
    if (err) return err;
    mc_init();
    if (!xpad || !kernel || !dy || !dkernel || !work) return MC_ERR_NULL;
    if (xpad_len != s.xpad || kernel_len != s.kernel || dy_len != s.y ||
        dkernel_len != s.kernel || (relu_y ? relu_y_len != s.y : relu_y_len != 0) ||
        (dx ? dx_len != s.x : dx_len != 0) || (dbias ? dbias_len != g->f : dbias_len != 0))
        return MC_ERR_SIZE;
    DN(mc_conv_plan) plan;
    DN(backward_plan)(g, dx != NULL, relu_y != NULL, mc_threads_now(), &plan);
    if (work_len < 0 || work_len > INT64_MAX / (int64_t)sizeof(DR) ||
        work_len * (int64_t)sizeof(DR) < plan.bytes)
        return MC_ERR_SIZE;
    DN(poison_workspace)(work, work_len);
    const DN(mc_work) w = DN(bind)(&plan, work, work_len);
    return DN(conv_backward)(g, xpad, kernel, dy, relu_y, NULL, NULL, dx, dkernel, dbias, &w);
}

int DN(mc_conv2d_backward_from_maxpool)(const mc_conv_geom *g, const mc_pool_geom *pg,
                                        const DR *xpad, int64_t xpad_len, const DR *kernel,
                                        int64_t kernel_len, const DR *pool_dy, int64_t pool_dy_len,
                                        const DR *pooled, int64_t pooled_len,
                                        const int32_t *argmax, int64_t argmax_len, DR *dx,
                                        int64_t dx_len, DR *dkernel, int64_t dkernel_len, DR *dbias,
                                        int64_t dbias_len, DR *work, int64_t work_len)
{
    mc_conv_sizes s;
    int64_t ph, pw;
    int err = mc_check_conv(g, &s);
    if (err) return err;
    if ((err = mc_check_conv_pool(g, pg, &ph, &pw))) return err;
    mc_init();
    if (!xpad || !kernel || !pool_dy || !argmax || !dkernel || !work) return MC_ERR_NULL;
    const int64_t pooled_size = (int64_t)g->n * ph * pw * g->f;
    if (xpad_len != s.xpad || kernel_len != s.kernel || pool_dy_len != pooled_size ||
        argmax_len != pooled_size || dkernel_len != s.kernel ||
        (pooled ? pooled_len != pooled_size : pooled_len != 0) ||
        (dx ? dx_len != s.x : dx_len != 0) || (dbias ? dbias_len != g->f : dbias_len != 0))
        return MC_ERR_SIZE;
    DN(mc_conv_plan) plan;
    /* laid out as a backward whose dy must be masked: staged or framed, never read in place */
    DN(backward_plan)(g, dx != NULL, 1, mc_threads_now(), &plan);
    if (work_len < 0 || work_len > INT64_MAX / (int64_t)sizeof(DR) ||
        work_len * (int64_t)sizeof(DR) < plan.bytes)
        return MC_ERR_SIZE;
    DN(poison_workspace)(work, work_len);
    const DN(mc_work) w = DN(bind)(&plan, work, work_len);
    return DN(conv_backward)(g, xpad, kernel, pool_dy, pooled, pg, argmax, dx, dkernel, dbias, &w);
}

int DN(mc_conv2d_forward_maxpool)(const mc_conv_geom *g, const mc_pool_geom *pg, const DR *x,
                                  int64_t x_len, const DR *kernel, int64_t kernel_len,
                                  const DR *bias, int64_t bias_len, int relu, DR *xpad,
                                  int64_t xpad_len, DR *pooled, int64_t pooled_len,
                                  int32_t *argmax, int64_t argmax_len, DR *work, int64_t work_len)
{
    mc_conv_sizes s;
    int64_t ph, pw;
    int err = mc_check_conv(g, &s);
    if (err) return err;
    if ((err = mc_check_conv_pool(g, pg, &ph, &pw))) return err;
    mc_init();
    if (!x || !kernel || !pooled || !argmax || !work) return MC_ERR_NULL;
    const int64_t pooled_size = (int64_t)g->n * ph * pw * g->f;
    if (x_len != s.x || kernel_len != s.kernel || (xpad ? xpad_len != s.xpad : xpad_len != 0) ||
        pooled_len != pooled_size ||
        argmax_len != pooled_size || (bias ? bias_len != g->f : bias_len != 0))
        return MC_ERR_SIZE;
    const int threads = mc_threads_now();
    if (work_len < 0 || work_len > INT64_MAX / (int64_t)sizeof(DR) ||
        work_len * (int64_t)sizeof(DR) < DN(conv_pool_forward_bytes)(g, xpad != NULL, threads))
        return MC_ERR_SIZE;
    DN(poison_workspace)(work, work_len);
    DN(conv_pool_forward)(g, pg, x, kernel, bias, relu, xpad, pooled, argmax, work, work_len, threads);
    return MC_OK;
}

int DN(mc_maxpool2d_forward)(const mc_pool_geom *g, const DR *x, int64_t x_len, DR *y,
                             int64_t y_len, int32_t *argmax, int64_t argmax_len)
{
    int64_t oh, ow;
    int err = mc_check_pool(g, &oh, &ow);
    if (err) return err;
    mc_init();
    if (!x || !y || !argmax) return MC_ERR_NULL;
    const int64_t out = (int64_t)g->n * oh * ow * g->c;
    if (x_len != (int64_t)g->n * g->h * g->w * g->c || y_len != out || argmax_len != out)
        return MC_ERR_SIZE;
    DN(maxpool_forward)(g, x, y, argmax, oh, ow, mc_team_now());
    return MC_OK;
}

int DN(mc_maxpool2d_backward)(const mc_pool_geom *g, const DR *dy, int64_t dy_len,
                              const int32_t *argmax, int64_t argmax_len, DR *dx, int64_t dx_len)
{
    int64_t oh, ow;
    int err = mc_check_pool(g, &oh, &ow);
    if (err) return err;
    mc_init();
    if (!dy || !argmax || !dx) return MC_ERR_NULL;
    const int64_t out = (int64_t)g->n * oh * ow * g->c;
    if (dx_len != (int64_t)g->n * g->h * g->w * g->c || dy_len != out || argmax_len != out)
        return MC_ERR_SIZE;
    return DN(maxpool_backward)(g, dy, argmax, dx, oh, ow, mc_team_now()) ? MC_ERR_INDEX : MC_OK;
}

int DN(mc_dense_forward)(int n, int k, int f, const DR *x, int64_t x_len, const DR *kernel,
                        int64_t kernel_len, const DR *bias, int64_t bias_len, int relu, DR *y,
                        int64_t y_len, DR *work, int64_t work_len)
{
    int64_t sx, sk, sy;
    int err = mc_check_dense(n, k, f, &sx, &sk, &sy);
    if (err) return err;
    mc_init();
    if (!x || !kernel || !y || !work) return MC_ERR_NULL;
    if (x_len != sx || kernel_len != sk || y_len != sy || (bias ? bias_len != f : bias_len != 0))
        return MC_ERR_SIZE;
    if (work_len < 0 || work_len > INT64_MAX / (int64_t)sizeof(DR) ||
        work_len * (int64_t)sizeof(DR) < DN(dense_forward_bytes)(n, k, f))
        return MC_ERR_SIZE;
    DN(poison_workspace)(work, work_len);
    DN(mc_arena) arena = {(char *)work, (char *)work + work_len * (int64_t)sizeof(DR)};
    DN(dense_forward)(n, k, f, x, kernel, bias, relu, y, &arena, mc_team_now());
    return MC_OK;
}

int DN(mc_dense_backward)(int n, int k, int f, const DR *x, int64_t x_len, const DR *kernel,
                         int64_t kernel_len, const DR *dy, int64_t dy_len, const DR *relu_y,
                         int64_t relu_y_len, DR *dx, int64_t dx_len, DR *dkernel,
                         int64_t dkernel_len, DR *dbias, int64_t dbias_len, DR *work,
                         int64_t work_len)
{
    int64_t sx, sk, sy;
    int err = mc_check_dense(n, k, f, &sx, &sk, &sy);
    if (err) return err;
    mc_init();
    if (!x || !kernel || !dy || !dkernel || !work) return MC_ERR_NULL;
    if (x_len != sx || kernel_len != sk || dy_len != sy || dkernel_len != sk ||
        (relu_y ? relu_y_len != sy : relu_y_len != 0) || (dx ? dx_len != sx : dx_len != 0) ||
        (dbias ? dbias_len != f : dbias_len != 0))
        return MC_ERR_SIZE;
    if (work_len < 0 || work_len > INT64_MAX / (int64_t)sizeof(DR) ||
        work_len * (int64_t)sizeof(DR) < DN(dense_backward_bytes)(n, k, f))
        return MC_ERR_SIZE;
    DN(poison_workspace)(work, work_len);
    DN(mc_arena) arena = {(char *)work, (char *)work + work_len * (int64_t)sizeof(DR)};
    DN(dense_backward)(n, k, f, x, kernel, dy, relu_y, dx, dkernel, dbias, &arena, mc_team_now());
    return MC_OK;
}
