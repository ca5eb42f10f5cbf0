/* Direct convolution on the igemm / wgrad microkernels. No im2col buffer is ever built:
 *   forward   for every tile of MR output pixels x NB filters, igemm straight on the padded
 *             image; the kernel taps are a table of offsets.
 *   dkernel   per thread, a private gradient; every image adds MR rows x NB filters at a time
 *             with the wgrad microkernel (the reduction over the image's pixels stays in
 *             registers); then the private gradients are summed in a fixed order.
 *   dx        the transposed convolution of dy, again with igemm, on dy's zero-margined frame;
 *             for strides > 1 the output pixels are split by their phase (row mod stride_h,
 *             column mod stride_w) so that each phase is a dense convolution with its own
 *             subset of kernel taps: no zeros are ever multiplied.
 * No include guard: a template, included once per dtype by csrc/tmpl_driver.h.
 */

static void DN(image_dy)(const DN(mc_backward) *b, int64_t n, DR *out, ptrdiff_t row);   /* tmpl_conv.h */

/* The forward pass directly: every tile of MR output pixels x NB filters runs the igemm
 * microkernel straight on the padded image (the kernel taps are a table of offsets). */
static void DN(forward_direct)(const mc_conv_geom *g, const DR *xpad, const DR *kernel,
                               const DR *packed_bias, int relu, DR *y, const DN(mc_work) *w,
                               int kernel_ready)
{
    const DN(mc_isa) *isa = &DN(mc_isa_tables)[w->plan->level];
    const DN(mc_conv_plan) *plan = w->plan;
    const int64_t E = (int64_t)sizeof(DR), P = (int64_t)sizeof(ptrdiff_t);
    DN(mc_conv_dims) d;
    DN(conv_dims)(g, &d);
    const int vlen = isa->vlen, nb = isa->nvmax * vlen, F = g->f, C = g->c;
    const int64_t K = d.K, fpad = DN(round_up)(F, DN_VLEN_MAX);
    const size_t img_pad = (size_t)(d.hp * d.wp * C);
    DR *packed = DN(region)(w, plan->packed, K * fpad * E);
    ptrdiff_t *aoff = DN(region)(w, plan->aoff, K * P);
    /* kernel (K, F) -> column blocks of whole vectors (unless an earlier group or chunk of
     * the call left them); tap k reads offset aoff[k] */
    for (int b = 0; !kernel_ready && b * nb < F; b++) {
        const int width = DN(block_vectors)(F, b, nb, vlen) * vlen;
        DR *dst = packed + (ptrdiff_t)b * nb * K;
        for (int64_t k = 0; k < K; k++)
            for (int j = 0; j < width; j++)
                dst[k * width + j] = b * nb + j < F ? kernel[k * F + b * nb + j] : (DR)0;
    }
    for (int i = 0, k = 0; i < g->kh; i++)
        for (int j = 0; j < g->kw; j++)
            for (int c = 0; c < C; c++, k++) aoff[k] = ((ptrdiff_t)i * d.wp + j) * C + c;

    DN(mc_tiling) tl = {
        .count = (int64_t)g->n * d.oh * d.ow, .rows = (int)d.oh, .cols = (int)d.ow,
        .a_base = xpad, .a_img = (ptrdiff_t)img_pad,
        .a_row = (ptrdiff_t)g->stride_h * d.wp * C, .a_col = (ptrdiff_t)g->stride_w * C,
        .c_base = y, .c_img = (ptrdiff_t)(d.oh * d.ow * F), .c_row = (ptrdiff_t)d.ow * F,
        .c_col = F,
    };
    DN(run_igemm)(isa, &tl, K, aoff, packed, packed_bias, F, relu, plan->team);
}

/* dkernel (and dbias) directly: the images are split into one part per laid-out thread (as
 * OpenMP's static schedule would deal them), each part accumulates MR rows x NB filters at a
 * time with the wgrad microkernel into its own gradient, and the parts are summed in order.
 * The team that runs them may be smaller (the load caps it): a thread then takes several
 * parts, and the sums do not change. */
static void DN(dkernel_direct)(const DN(mc_backward) *b, DR *dkernel, DR *dbias)
{
    const mc_conv_geom *g = b->g;
    const DN(mc_isa) *isa = b->isa;
    const DN(mc_conv_plan) *plan = b->w->plan;
    const DN(mc_conv_dims) *d = &b->d;
    const int64_t E = (int64_t)sizeof(DR), fpad = b->fpad, K = d->K, fv = b->fv;
    const int vlen = isa->vlen, nb = isa->nvmax * vlen, C = g->c, F = g->f;
    const int used = plan->threads < g->n ? plan->threads : g->n;   /* parts */
    const int team = plan->team < used ? plan->team : used;
    const int threads = plan->team;
    (void)team;   /* read by the OpenMP pragma only, in builds without OpenMP */
    DR *acc[MC_MAX_PARTS], *stage[MC_MAX_PARTS];
    DN(thread_parts)(b->w, plan->dw_acc, (K * fpad + fpad) * E, acc);
    if (plan->staged) DN(thread_parts)(b->w, plan->dw_stage, d->oh * d->ow * fpad * E, stage);
    const int nbw = (F + nb - 1) / nb;
    (void)threads;
    /* zeroed here: a team smaller than asked for still sums zeros from the rest */
    for (int t = 0; t < used; t++) memset(acc[t], 0, (size_t)(K * fpad + fpad) * sizeof(DR));
#ifdef _OPENMP
#pragma omp parallel num_threads(team) if (team > 1)
#endif
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num(), members = omp_get_num_threads();
#else
        const int tid = 0, members = 1;
#endif
        ptrdiff_t offs[MK_MRMAX];
        for (int part = tid; part < used; part += members) {
            DR *mine = acc[part];
            DR *mine_bias = mine + K * fpad;
            int64_t first, count;
            DN(static_share)(g->n, used, part, &first, &count);
            for (int n = (int)first; n < (int)(first + count); n++) {
                const DR *xi = b->xpad + n * b->img_pad;
                const DR *di = b->src + n * b->src_img;
                ptrdiff_t drow = b->src_row, dcol = b->src_col;
                if (plan->staged) {
                    DR *st = stage[tid];
                    DN(image_dy)(b, n, st, (ptrdiff_t)(d->ow * fv));
                    di = st;
                    drow = (ptrdiff_t)(d->ow * fv);
                    dcol = (ptrdiff_t)fv;
                }
                for (int blk = 0; blk < nbw; blk++) {
                    const int nv = DN(block_vectors)(F, blk, nb, vlen);
                    const int mr_max = isa->mr[nv];
                    for (int64_t m0 = 0; m0 < K; m0 += mr_max) {
                        const int mr = (int)(K - m0 < mr_max ? K - m0 : mr_max);
                        for (int t = 0; t < mr_max; t++) {
                            const int64_t m = m0 + (t < mr ? t : mr - 1);
                            const int64_t c = m % C, j = (m / C) % g->kw, i = m / C / g->kw;
                            offs[t] = (ptrdiff_t)((i * d->wp + j) * C + c);
                        }
                        (mr <= isa->mr_half[nv] ? isa->wgrad_half[nv] : isa->wgrad[nv])(
                            xi, (ptrdiff_t)g->stride_h * d->wp * C, (ptrdiff_t)g->stride_w * C,
                            (int)d->oh, (int)d->ow, offs, di + blk * nb, drow, dcol,
                            mine + m0 * fpad + blk * nb, (ptrdiff_t)fpad, mr);
                    }
                }
                if (dbias) {
                    for (int64_t p = 0; p < d->oh; p++)
                        for (int64_t q = 0; q < d->ow; q++) {
                            const DR *row = di + p * drow + q * dcol;
                            for (int f = 0; f < F; f++) mine_bias[f] += row[f];
                        }
                }
            }
        }
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && K > 64)
#endif
    for (int64_t k = 0; k < K; k++) {
        for (int f = 0; f < F; f++) {
            DR s = acc[0][k * fpad + f];
            for (int t = 1; t < used; t++) s += acc[t][k * fpad + f];
            dkernel[k * F + f] = s;
        }
    }
    if (dbias) {
        for (int f = 0; f < F; f++) {
            DR s = acc[0][K * fpad + f];
            for (int t = 1; t < used; t++) s += acc[t][K * fpad + f];
            dbias[f] = s;
        }
    }
}

/* dx directly: one dense transposed convolution per phase (row mod sh, column mod sw), each
 * with its own subset of kernel taps, so no zeros are multiplied. */
static void DN(dx_direct)(const DN(mc_backward) *b, const DR *kernel, DR *dx)
{
    const mc_conv_geom *g = b->g;
    const DN(mc_isa) *isa = b->isa;
    const DN(mc_conv_plan) *plan = b->w->plan;
    const int64_t E = (int64_t)sizeof(DR), P = (int64_t)sizeof(ptrdiff_t);
    const int64_t taps = (int64_t)g->kh * g->kw * g->f, cpad = b->cpad, fv = b->fv;
    const int64_t wd = b->wd, hd = b->hd;
    const int vlen = isa->vlen, nb = isa->nvmax * vlen, C = g->c, F = g->f;
    DR *wpacked = DN(region)(b->w, plan->wpacked, taps * cpad * E);
    ptrdiff_t *toff = DN(region)(b->w, plan->toff, taps * P);
    const int sh = g->stride_h, sw = g->stride_w;
    ptrdiff_t tap_base = 0;
    for (int ph = 0; ph < sh; ph++) {
        for (int pw = 0; pw < sw; pw++) {
            const int nu = ph < g->kh ? (g->kh - 1 - ph) / sh + 1 : 0;
            const int nvt = pw < g->kw ? (g->kw - 1 - pw) / sw + 1 : 0;
            const int64_t kph = (int64_t)nu * nvt * F;
            /* the dx pixels of this phase: h = h0 + hh * sh with (h + top) % sh == ph */
            const int h0 = ((ph - g->pad_top) % sh + sh) % sh;
            const int w0 = ((pw - g->pad_left) % sw + sw) % sw;
            const int hph = h0 < g->h ? (g->h - 1 - h0) / sh + 1 : 0;
            const int wph = w0 < g->w ? (g->w - 1 - w0) / sw + 1 : 0;
            if (hph == 0 || wph == 0) continue;
            DR *bp = wpacked + tap_base * cpad;
            ptrdiff_t *aoff = toff + tap_base;
            /* taps (u, v, f): kernel[ph + sh*u, pw + sw*v, :, f], read at dy row -u, column -v */
            for (int blk = 0; blk * nb < C; blk++) {
                const int width = DN(block_vectors)(C, blk, nb, vlen) * vlen;
                DR *dst = bp + (ptrdiff_t)blk * nb * kph;
                int64_t k = 0;
                for (int u = 0; u < nu; u++)
                    for (int v = 0; v < nvt; v++)
                        for (int f = 0; f < F; f++, k++) {
                            const DR *wk = kernel + ((ptrdiff_t)((ph + sh * u) * g->kw + pw + sw * v) * C) * F + f;
                            for (int j = 0; j < width; j++)
                                dst[k * width + j] = blk * nb + j < C ? wk[(ptrdiff_t)(blk * nb + j) * F] : (DR)0;
                        }
            }
            {
                int64_t k = 0;
                for (int u = 0; u < nu; u++)
                    for (int v = 0; v < nvt; v++)
                        for (int f = 0; f < F; f++, k++) aoff[k] = (ptrdiff_t)((-u * wd - v) * fv + f);
            }
            const int hp0 = h0 + g->pad_top, wp0 = w0 + g->pad_left;
            DN(mc_tiling) tl = {
                .count = (int64_t)g->n * hph * wph, .rows = hph, .cols = wph,
                .a_base = b->frame + ((hp0 / sh + b->mt) * wd + wp0 / sw + b->ml) * fv,
                .a_img = (ptrdiff_t)(hd * wd * fv), .a_row = (ptrdiff_t)(wd * fv), .a_col = (ptrdiff_t)fv,
                .c_base = dx + ((ptrdiff_t)h0 * g->w + w0) * C,
                .c_img = (ptrdiff_t)g->h * g->w * C, .c_row = (ptrdiff_t)sh * g->w * C,
                .c_col = (ptrdiff_t)sw * C,
            };
            DN(run_igemm)(isa, &tl, kph, aoff, bp, NULL, C, 0, plan->team);
            tap_base += kph;
        }
    }
}
