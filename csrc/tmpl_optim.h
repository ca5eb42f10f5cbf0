/* The optimizer updates and their entry points: elementwise, in place; chunks of whole
 * vectors per thread. No include guard: a template, included once per dtype.
 *
 * A second thread is woken from 2^15 elements: Adam over 32k float32 took 16.7 us on one
 * thread and 12.7 on two, over the seed dense layer's 401k 133 and 75 us, and inside training,
 * where param, m and v come from beyond the caches, two threads made the seed model's batch-32
 * step 5-10% faster. A busy machine is the load monitor's business (mc_team_now is then 1):
 * the earlier 2^21 rule dated from before it (docs/performance.md). */
#define DN_OPT_CHUNK 4096
#define DN_OPT_PARALLEL_MIN ((int64_t)1 << 15)

static int DN(opt_check)(int64_t n, const void *a, int64_t a_len, const void *b, int64_t b_len)
{
    if (n < 1 || n > MC_LEN_MAX) return MC_ERR_GEOMETRY;
    if (!a || !b) return MC_ERR_NULL;
    if (a_len != n || b_len != n) return MC_ERR_SIZE;
    return MC_OK;
}

typedef struct { const DN(mc_isa) *isa; DR *param; const DR *grad; DR *m, *v; DR c[6]; } DN(adam_args);

static void DN(adam_chunk)(int64_t start, int64_t len, const void *args)
{
    const DN(adam_args) *a = args;
    a->isa->adam(a->param + start, a->grad + start, a->m + start, a->v + start, len, a->c);
}

typedef struct {
    const DN(mc_isa) *isa;
    DR *param;
    const DR *grad;
    DR *velocity;
    DR lr, momentum;
    int nesterov;
} DN(sgd_args);

static void DN(sgd_chunk)(int64_t start, int64_t len, const void *args)
{
    const DN(sgd_args) *a = args;
    a->isa->sgd(a->param + start, a->grad + start, a->velocity ? a->velocity + start : NULL, len, a->lr,
                a->momentum, a->nesterov);
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
    const DN(adam_args) args = {isa, param, grad, m, v,
                                {(DR)beta_1, (DR)(1.0 - beta_1), (DR)beta_2, (DR)(1.0 - beta_2), (DR)epsilon, (DR)lr_t}};
    DN(for_chunks)(n, DN_OPT_CHUNK, n < DN_OPT_PARALLEL_MIN ? 1 : mc_team_now(), DN(adam_chunk), &args);
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
    const DN(sgd_args) args = {isa, param, grad, velocity, (DR)learning_rate, (DR)momentum, nesterov != 0};
    DN(for_chunks)(n, DN_OPT_CHUNK, n < DN_OPT_PARALLEL_MIN ? 1 : mc_team_now(), DN(sgd_chunk), &args);
    return MC_OK;
}
#undef DN_OPT_CHUNK
#undef DN_OPT_PARALLEL_MIN
