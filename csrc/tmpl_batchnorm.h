/* Batch normalisation of an (m, c) matrix, one column per feature, and its entry points;
 * vectorised over the c features of a row (contiguous). The NumPy engine's order of
 * operations: column sums taken row after row, mean = sum / m, the biased variance as the
 * mean of the squared centred values, inv_std = 1 / sqrt(var + epsilon).
 * The column sums (mean, variance, and the backward's dbeta and dgamma) split the rows into
 * one part per laid-out thread, each summed row after row into its own partial sums on the
 * caller's stack, then the partials are added in part order: the bits depend on the laid-out
 * threads (as the convolutions' kernel gradients do), never on the team the load leaves to
 * run them, and one part is NumPy's order. One thread over the rows read ~13 GB/s; split by
 * columns instead, each thread pulled every line (the adjacent-line prefetcher) and ran 1.5-2x
 * slower (docs/performance.md). The elementwise passes run over row blocks on the engine's
 * threads, with no scratch memory.
 * No include guard: a template, included once per dtype by csrc/tmpl_driver.h.
 */
#define DN_BN_ROWS 64           /* rows per parallel block */
#define DN_BN_PARTIALS 2048     /* elements of partial sums on the stack (16 KB for float64) */
#define DN_BN_PART_ROWS 1024    /* at least this many rows per part */

enum { DN(BN_SUM), DN(BN_SQUARED_DEVIATION), DN(BN_SUM_AND_PRODUCT) };

/* Column sums over the rows of a (m x c): BN_SUM s1 = sum a; BN_SQUARED_DEVIATION
 * s1 = sum (a - mean)^2; BN_SUM_AND_PRODUCT s1 = sum a, s2 = sum a * b. Rows in `parts`
 * consecutive ranges (static_share), each summed in row order, the partials added in order. */
static void DN(bn_column_sums)(int64_t m, int c, int kind, const DR *a, const DR *b, const DR *mean,
                               DR *s1, DR *s2, int parts, int team)
{
    DR partial[DN_BN_PARTIALS];
    const int sums = kind == DN(BN_SUM_AND_PRODUCT) ? 2 : 1;
    const int64_t width = (int64_t)sums * c;
    if (parts < 1 || (int64_t)parts * width > DN_BN_PARTIALS || m < (int64_t)parts * DN_BN_PART_ROWS)
        parts = 1;
    if (team > parts) team = parts;
    (void)team;   /* read by the OpenMP pragma only, in builds without OpenMP */
    DR *const one = parts == 1 ? NULL : partial;   /* one part: straight into s1 and s2 */
#ifdef _OPENMP
#pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
#endif
    for (int p = 0; p < parts; p++) {
        int64_t first, count;
        DN(static_share)(m, parts, p, &first, &count);
        DR *t1 = one ? one + p * width : s1, *t2 = one ? t1 + c : s2;
        for (int j = 0; j < c; j++) t1[j] = 0;
        if (sums == 2)
            for (int j = 0; j < c; j++) t2[j] = 0;
        for (int64_t i = first; i < first + count; i++) {
            const DR *ar = a + i * c;
            if (kind == DN(BN_SUM))
                for (int j = 0; j < c; j++) t1[j] += ar[j];
            else if (kind == DN(BN_SQUARED_DEVIATION))
                for (int j = 0; j < c; j++) {
                    const DR centred = ar[j] - mean[j];
                    t1[j] += centred * centred;
                }
            else
                for (int j = 0; j < c; j++) {
                    t1[j] += ar[j];
                    t2[j] += ar[j] * b[i * c + j];
                }
        }
    }
    if (!one) return;
    for (int j = 0; j < c; j++) s1[j] = one[j];
    if (sums == 2)
        for (int j = 0; j < c; j++) s2[j] = one[c + j];
    for (int p = 1; p < parts; p++) {
        const DR *t1 = one + p * width, *t2 = t1 + c;
        for (int j = 0; j < c; j++) s1[j] += t1[j];
        if (sums == 2)
            for (int j = 0; j < c; j++) s2[j] += t2[j];
    }
}

static int DN(bn_check)(int64_t m, int c)
{
    int64_t total;
    if (m < 1 || m > MC_LEN_MAX || c < 1 || c > MC_DIM_MAX || !mc_product(&total, m, c, 1, 1))
        return MC_ERR_GEOMETRY;
    return MC_OK;
}

/* max(v, 0) as mc_relu_forward computes it (NaN stays, -0.0 becomes +0.0) */
static inline DR DN(bn_relu)(DR v) { return (v > 0) | (v != v) ? v : (DR)0; }

/* Statistics and x_hat; y = x_hat * gamma + beta (either may be NULL), then the fused ReLU. */
static void DN(bn_forward_training)(int64_t m, int c, const DR *x, const DR *gamma, const DR *beta,
                                    DR epsilon, int relu, DR *y, DR *mean, DR *var, DR *x_hat,
                                    DR *inv_std, int threads)
{
    const int parts = mc_threads_now();
    DN(bn_column_sums)(m, c, DN(BN_SUM), x, NULL, NULL, mean, NULL, parts, threads);
    for (int j = 0; j < c; j++) mean[j] /= (DR)m;
    DN(bn_column_sums)(m, c, DN(BN_SQUARED_DEVIATION), x, NULL, mean, var, NULL, parts, threads);
    for (int j = 0; j < c; j++) {
        var[j] /= (DR)m;
        inv_std[j] = (DR)1 / (DR)sqrt(var[j] + epsilon);
    }
    const int64_t blocks = (m + DN_BN_ROWS - 1) / DN_BN_ROWS;
    threads = DN(threads_for)(m * c * 4, threads);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && blocks > 1)
#endif
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t end = (b + 1) * DN_BN_ROWS < m ? (b + 1) * DN_BN_ROWS : m;
        for (int64_t i = b * DN_BN_ROWS; i < end; i++) {
            const DR *xr = x + i * c;
            DR *hr = x_hat + i * c, *yr = y + i * c;
            for (int j = 0; j < c; j++) {
                hr[j] = (xr[j] - mean[j]) * inv_std[j];
                yr[j] = gamma ? hr[j] * gamma[j] : hr[j];
            }
            if (beta)
                for (int j = 0; j < c; j++) yr[j] += beta[j];
            if (relu)
                for (int j = 0; j < c; j++) yr[j] = DN(bn_relu)(yr[j]);
        }
    }
}

/* y = (x - mean) * (inv_std * gamma) + beta with given statistics, then the fused ReLU. */
static void DN(bn_forward_inference)(int64_t m, int c, const DR *x, const DR *gamma, const DR *beta,
                                     const DR *mean, const DR *var, DR epsilon, int relu, DR *y,
                                     int threads)
{
    const int64_t blocks = (m + DN_BN_ROWS - 1) / DN_BN_ROWS;
    threads = DN(threads_for)(m * c * 3, threads);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && blocks > 1)
#endif
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t end = (b + 1) * DN_BN_ROWS < m ? (b + 1) * DN_BN_ROWS : m;
        for (int64_t i = b * DN_BN_ROWS; i < end; i++) {
            const DR *xr = x + i * c;
            DR *yr = y + i * c;
            for (int j = 0; j < c; j++) {
                const DR inv_std = (DR)1 / (DR)sqrt(var[j] + epsilon);
                yr[j] = (xr[j] - mean[j]) * (gamma ? inv_std * gamma[j] : inv_std);
            }
            if (beta)
                for (int j = 0; j < c; j++) yr[j] += beta[j];
            if (relu)
                for (int j = 0; j < c; j++) yr[j] = DN(bn_relu)(yr[j]);
        }
    }
}


/* dbeta = column sums of dy, dgamma = column sums of dy * x_hat, and (dx non-NULL)
 * dx = (dy - dbeta / m - x_hat * (dgamma / m)) * (gamma * inv_std). dgamma and dbeta are
 * always computed (dx needs both); the wrapper drops what the layer does not have. */
static void DN(bn_backward)(int64_t m, int c, const DR *dy, const DR *x_hat, const DR *inv_std,
                            const DR *gamma, const DR *relu_y, DR *dx, DR *dgamma, DR *dbeta,
                            int threads)
{
    if (relu_y) {
        /* the fused ReLU's backward first, into dx (the entry point requires it then), with
         * mc_relu_backward's own loop; the rest reads the masked dy from there and overwrites
         * each element only after reading it. With the mask inside the sums' loop instead,
         * that loop ran ten times slower. */
        DN(relu_mask)(m * c, dy, relu_y, dx, threads);
        dy = dx;
    }
    DN(bn_column_sums)(m, c, DN(BN_SUM_AND_PRODUCT), dy, x_hat, NULL, dbeta, dgamma, mc_threads_now(),
                       threads);
    if (!dx) return;
    const DR rows = (DR)m;
    const int64_t blocks = (m + DN_BN_ROWS - 1) / DN_BN_ROWS;
    threads = DN(threads_for)(m * c * 4, threads);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && blocks > 1)
#endif
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t end = (b + 1) * DN_BN_ROWS < m ? (b + 1) * DN_BN_ROWS : m;
        for (int64_t i = b * DN_BN_ROWS; i < end; i++)
            for (int j = 0; j < c; j++) {
                const DR scale = gamma ? gamma[j] * inv_std[j] : inv_std[j];
                dx[i * c + j] = (dy[i * c + j] - dbeta[j] / rows - x_hat[i * c + j] * (dgamma[j] / rows)) * scale;
            }
    }
}

int DN(mc_batchnorm_forward_training)(int64_t m, int c, const DR *x, int64_t x_len, const DR *gamma,
                                      int64_t gamma_len, const DR *beta, int64_t beta_len,
                                      double epsilon, int relu, DR *y, int64_t y_len, DR *mean,
                                      int64_t mean_len,
                                      DR *var, int64_t var_len, DR *x_hat, int64_t x_hat_len,
                                      DR *inv_std, int64_t inv_std_len)
{
    int err = DN(bn_check)(m, c);
    if (err) return err;
    if (!(epsilon > 0)) return MC_ERR_GEOMETRY;
    mc_init();
    if (!x || !y || !mean || !var || !x_hat || !inv_std) return MC_ERR_NULL;
    if (x_len != m * c || y_len != m * c || x_hat_len != m * c || mean_len != c || var_len != c ||
        inv_std_len != c || (gamma ? gamma_len != c : gamma_len != 0) ||
        (beta ? beta_len != c : beta_len != 0))
        return MC_ERR_SIZE;
    DN(bn_forward_training)(m, c, x, gamma, beta, (DR)epsilon, relu != 0, y, mean, var, x_hat,
                            inv_std, mc_team_now());
    return MC_OK;
}

int DN(mc_batchnorm_forward_inference)(int64_t m, int c, const DR *x, int64_t x_len, const DR *gamma,
                                       int64_t gamma_len, const DR *beta, int64_t beta_len,
                                       const DR *mean, int64_t mean_len, const DR *var, int64_t var_len,
                                       double epsilon, int relu, DR *y, int64_t y_len)
{
    int err = DN(bn_check)(m, c);
    if (err) return err;
    if (!(epsilon > 0)) return MC_ERR_GEOMETRY;
    mc_init();
    if (!x || !y || !mean || !var) return MC_ERR_NULL;
    if (x_len != m * c || y_len != m * c || mean_len != c || var_len != c ||
        (gamma ? gamma_len != c : gamma_len != 0) || (beta ? beta_len != c : beta_len != 0))
        return MC_ERR_SIZE;
    DN(bn_forward_inference)(m, c, x, gamma, beta, mean, var, (DR)epsilon, relu != 0, y,
                             mc_team_now());
    return MC_OK;
}

int DN(mc_batchnorm_backward)(int64_t m, int c, const DR *dy, int64_t dy_len, const DR *x_hat,
                              int64_t x_hat_len, const DR *inv_std, int64_t inv_std_len,
                              const DR *gamma, int64_t gamma_len, const DR *relu_y,
                              int64_t relu_y_len, DR *dx, int64_t dx_len,
                              DR *dgamma, int64_t dgamma_len, DR *dbeta, int64_t dbeta_len)
{
    int err = DN(bn_check)(m, c);
    if (err) return err;
    mc_init();
    if (!dy || !x_hat || !inv_std || !dgamma || !dbeta || (relu_y && !dx)) return MC_ERR_NULL;
    if (dy_len != m * c || x_hat_len != m * c || inv_std_len != c || dgamma_len != c ||
        dbeta_len != c || (gamma ? gamma_len != c : gamma_len != 0) ||
        (relu_y ? relu_y_len != m * c : relu_y_len != 0) || (dx ? dx_len != m * c : dx_len != 0))
        return MC_ERR_SIZE;
    DN(bn_backward)(m, c, dy, x_hat, inv_std, gamma, relu_y, dx, dgamma, dbeta, mc_team_now());
    return MC_OK;
}
#undef DN_BN_ROWS
#undef DN_BN_PARTIALS
#undef DN_BN_PART_ROWS
