/* The optimizer updates and their entry points: elementwise, in place; chunks of whole
 * vectors per thread. No include guard: a template, included once per dtype.
 *
 * Memory-bound and fast on one core, so a second thread is woken only for parameters of 2^21
 * elements or more: with the other core busy, waking it costs more than it saves
 * (docs/performance.md). */
#define DN_OPT_CHUNK 4096
#define DN_OPT_PARALLEL_MIN ((int64_t)1 << 21)

static int DN(opt_check)(int64_t n, const void *a, int64_t a_len, const void *b, int64_t b_len)
{
    if (n < 1 || n > MC_LEN_MAX) return MC_ERR_GEOMETRY;
    if (!a || !b) return MC_ERR_NULL;
    if (a_len != n || b_len != n) return MC_ERR_SIZE;
    return MC_OK;
}

int DN(mc_adam_update)(int64_t n, DR *param, int64_t param_len, const DR *grad, int64_t grad_len,
                       DR *m, int64_t m_len, DR *v, int64_t v_len, double lr_t, double beta_1,
                       double beta_2, double epsilon)
{
    int err = DN(opt_check)(n, param, param_len, grad, grad_len);
    if (err) return err;
    if (!m || !v) return MC_ERR_NULL;
    if (m_len != n || v_len != n) return MC_ERR_SIZE;
    mc_init();
    const DN(mc_isa) *isa = &DN(mc_isa_tables)[mc_level];
    /* each coefficient rounded once to the dtype, as NumPy does with a Python float */
    const DR c[6] = {(DR)beta_1, (DR)(1.0 - beta_1), (DR)beta_2, (DR)(1.0 - beta_2), (DR)epsilon, (DR)lr_t};
    const int64_t chunks = (n + DN_OPT_CHUNK - 1) / DN_OPT_CHUNK;
    const int threads = n < DN_OPT_PARALLEL_MIN ? 1 : mc_threads_now();
    (void)threads;   /* read by the OpenMP pragma only */
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && chunks > 1)
#endif
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t start = k * DN_OPT_CHUNK;
        const int64_t len = n - start < DN_OPT_CHUNK ? n - start : DN_OPT_CHUNK;
        isa->adam(param + start, grad + start, m + start, v + start, len, c);
    }
    return MC_OK;
}

int DN(mc_sgd_update)(int64_t n, DR *param, int64_t param_len, const DR *grad, int64_t grad_len,
                      DR *velocity, int64_t velocity_len, double learning_rate, double momentum,
                      int nesterov)
{
    int err = DN(opt_check)(n, param, param_len, grad, grad_len);
    if (err) return err;
    if (velocity ? velocity_len != n : velocity_len != 0) return MC_ERR_SIZE;
    mc_init();
    const DN(mc_isa) *isa = &DN(mc_isa_tables)[mc_level];
    const DR lr = (DR)learning_rate, mom = (DR)momentum;
    const int64_t chunks = (n + DN_OPT_CHUNK - 1) / DN_OPT_CHUNK;
    const int threads = n < DN_OPT_PARALLEL_MIN ? 1 : mc_threads_now();
    (void)threads;   /* read by the OpenMP pragma only */
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && chunks > 1)
#endif
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t start = k * DN_OPT_CHUNK;
        const int64_t len = n - start < DN_OPT_CHUNK ? n - start : DN_OPT_CHUNK;
        isa->sgd(param + start, grad + start, velocity ? velocity + start : NULL, len, lr, mom,
                 nesterov != 0);
    }
    return MC_OK;
}
#undef DN_OPT_CHUNK
#undef DN_OPT_PARALLEL_MIN
