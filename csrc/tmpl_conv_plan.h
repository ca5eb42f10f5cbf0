/* The convolution's workspace plan: which algorithm each pass uses, the layout of one call's
 * scratch memory (fixed regions, then one region per thread), the plan bound to the caller's
 * workspace, and the backward pass's shared state.
 * No include guard: a template, included once per dtype by csrc/tmpl_driver.h.
 */

/* Winograd F(2x2, k x k) for k = 3 and 5: the sizes the plan and the passes share. Tiles of
 * 2x2 outputs go through in blocks; the plan sizes every thread's tile buffers (cells x tiles x
 * channels) for them, so V and M of a block stay in L2. */
typedef struct {
    int k;          /* kernel side */
    int alpha;      /* input patch side, k + 1 */
    int cells;      /* alpha^2 transformed positions: one GEMM each per block */
    int tiles;      /* tiles per block, forward and dx */
    int tiles_w;    /* tiles per block, kernel gradient */
} DN(mc_wino_shape);

static const DN(mc_wino_shape) DN(wino_shape3) = {3, 4, 16, 36, 64};
static const DN(mc_wino_shape) DN(wino_shape5) = {5, 6, 36, 24, 32};

static const DN(mc_wino_shape) *DN(wino_shape)(const mc_conv_geom *g)
{
    return g->kh == 5 ? &DN(wino_shape5) : &DN(wino_shape3);
}

/* Stride-1 square 3x3 or 5x5 kernels with at most k - 1 rows/columns of padding per side. */
static int DN(wino_eligible)(const mc_conv_geom *g)
{
    const int k = g->kh;
    return (k == 3 || k == 5) && g->kw == k && g->stride_h == 1 && g->stride_w == 1 &&
           g->pad_top <= k - 1 && g->pad_bottom <= k - 1 && g->pad_left <= k - 1 &&
           g->pad_right <= k - 1;
}

/* Whether one pass (MC_PASS_*) runs Winograd. Automatically when the channel counts that
 * feed its GEMMs reach the thresholds of csrc/kernels.c: below them the GEMMs per tile block
 * are too thin to beat the direct kernels (docs/performance.md has the measurements). */
static int DN(use_wino)(const mc_conv_geom *g, int pass)
{
    if (!DN(wino_eligible)(g) || mc_algorithm == MC_ALGO_DIRECT) return 0;
    if (mc_algorithm == MC_ALGO_WINOGRAD) return 1;
    if (g->kh == 5) {
        switch (pass) {
        case MC_PASS_FORWARD: return g->c >= MC_WINO5_FWD_CHANNELS && g->f >= MC_WINO5_FWD_CHANNELS;
        case MC_PASS_DKERNEL: return g->c >= MC_WINO5_DK_CHANNELS && g->f >= MC_WINO5_DK_CHANNELS;
        default: return g->f >= MC_WINO5_DX_CHANNELS;
        }
    }
    switch (pass) {
    case MC_PASS_FORWARD: return g->c >= MC_WINO_MIN_CHANNELS;      /* reduces over C */
    case MC_PASS_DKERNEL:   /* its GEMMs are C_in x F: thin when neither side is wide */
        return g->c >= MC_WINO_MIN_CHANNELS && g->f >= MC_WINO_MIN_CHANNELS &&
               (g->c >= MC_WINO_DK_WIDE_CHANNELS || g->f >= MC_WINO_DK_WIDE_CHANNELS);
    default: return g->f >= MC_WINO_MIN_CHANNELS;                   /* dx reduces over F */
    }
}

/* ---- the workspace plan ----
 *
 * One call's scratch memory, laid out once from the geometry, the algorithm of every pass and
 * the thread count: the fixed regions, then exactly `threads` per-thread regions, each as large
 * as the largest per-thread use of any step. Every step takes its per-thread pointers from the
 * plan, never from another step's leftovers, and the workspace queries size the very same plan,
 * so no thread can find its region missing whichever branches a call takes. Offsets are bytes
 * from the workspace's first 64-byte boundary; the total includes the 64 bytes of that rounding.
 */

typedef struct {
    int level;                         /* the SIMD level (MC_SIMD_*) every step of the call runs */
    int threads;                       /* per-thread regions laid out: the kernel gradient's parts */
    int team;                          /* threads that run (<= threads: the load may cap them) */
    int wino_fwd, wino_dw, wino_dx;    /* the algorithm of each pass */
    int need_frame;                    /* dy copied into a whole-batch frame (backward) */
    int staged;                        /* direct dkernel masks / pads dy one image at a time */
    /* fixed regions (offsets; meaningful only when the step that uses them runs) */
    int64_t packed, packed_bias, aoff; /* direct forward: kernel blocks, bias, tap offsets */
    int64_t wpacked, toff;             /* direct dx: kernel blocks per phase, tap offsets */
    int64_t frame;                     /* dy with zero margins, rows of fpad */
    int64_t U, ident, zeros;           /* Winograd: transformed kernel, identity taps, zeros */
    int64_t frames;                    /* forward without xpad: one group's padded images */
    int64_t group;                     /* ... and the images in a group (0: xpad is kept) */
    /* thread t's region starts at first_thread + t * per_thread; inside it, per step: */
    int64_t first_thread, per_thread;
    int64_t fwd_v, fwd_m;              /* Winograd forward: transformed tiles and products */
    int64_t dw_acc, dw_stage;          /* direct dkernel: accumulator (+ bias), staged dy image */
    int64_t wdw_acc, wdw_v, wdw_z;     /* Winograd dkernel: accumulator (+ bias), tiles */
    int64_t wdx_v, wdx_m;              /* Winograd dx: transformed tiles and products */
    int64_t bytes;                     /* the whole workspace */
} DN(mc_conv_plan);

/* The offset of a new region of `bytes` at the cursor, 64-byte aligned; moves the cursor. */
static int64_t DN(place)(int64_t *cursor, int64_t bytes)
{
    const int64_t at = DN(round_up)(*cursor, 64);
    *cursor = at + bytes;
    return at;
}

static int64_t DN(zeros_len)(const mc_conv_geom *g)
{
    return DN(round_up)(g->c > g->f ? g->c : g->f, DN_VLEN_MAX);
}

/* Threads for a convolution: the work decides whether a second one is worth waking. */
static int DN(conv_threads)(const mc_conv_geom *g, const DN(mc_conv_dims) *d, int threads)
{
    threads = DN(threads_for)((int64_t)g->n * d->oh * d->ow * d->K * g->f, threads);
    return threads < 1 ? 1 : threads > MC_MAX_PARTS ? MC_MAX_PARTS : threads;
}

/* The team for a layout of `threads`: no more than the load leaves (mc_team_now). */
static int DN(plan_team)(int threads)
{
    const int team = mc_team_now();
    return team < threads ? team : threads;
}

/* Part p of `parts` consecutive shares of `count` items, as OpenMP's static schedule deals
 * them to p's thread: the first count % parts shares one item longer. */
static void DN(static_share)(int64_t count, int parts, int p, int64_t *first, int64_t *len)
{
    const int64_t q = count / parts, r = count % parts;
    *len = q + (p < r);
    *first = q * p + (p < r ? p : r);
}

static void DN(plan_threads)(DN(mc_conv_plan) *p, int64_t fixed_end, int64_t per_thread)
{
    p->per_thread = DN(round_up)(per_thread, 64);
    p->first_thread = DN(round_up)(fixed_end, 64);
    p->bytes = p->first_thread + (int64_t)p->threads * p->per_thread + 64;
}

/* Images per group of a forward that keeps no padded input: their frames fill about
 * MC_FORWARD_GROUP_BYTES (at least one image, at most the batch). */
static int64_t DN(forward_group_images)(const mc_conv_geom *g, const DN(mc_conv_dims) *d)
{
    const int64_t frame = d->hp * d->wp * g->c * (int64_t)sizeof(DR);
    const int64_t k = MC_FORWARD_GROUP_BYTES / frame;
    return k < 1 ? 1 : k > g->n ? g->n : k;
}

/* Whether the convolution pads its input at all ("valid" ones do not). */
static int DN(has_padding)(const mc_conv_geom *g)
{
    return g->pad_top || g->pad_bottom || g->pad_left || g->pad_right;
}

/* keep_xpad = 0: the caller keeps no padded input (inference); the frames of one group of
 * images are then a fixed region (none without padding: the algorithm reads x itself),
 * placed after the kernel's regions so that those stay at the same offsets for every batch
 * size (csrc/tmpl_conv_pool.h packs the kernel once per call). */
static void DN(forward_plan)(const mc_conv_geom *g, int keep_xpad, int threads, DN(mc_conv_plan) *p)
{
    const int64_t E = (int64_t)sizeof(DR), P = (int64_t)sizeof(ptrdiff_t);
    DN(mc_conv_dims) d;
    DN(conv_dims)(g, &d);
    const int64_t fpad = DN(round_up)(g->f, DN_VLEN_MAX);
    int64_t at = 0, sub = 0;
    memset(p, 0, sizeof *p);
    p->level = mc_level;
    p->threads = DN(conv_threads)(g, &d, threads);
    p->team = DN(plan_team)(p->threads);
    p->wino_fwd = DN(use_wino)(g, MC_PASS_FORWARD);
    p->packed_bias = DN(place)(&at, fpad * E);
    if (p->wino_fwd) {
        const DN(mc_wino_shape) *ws = DN(wino_shape)(g);
        p->U = DN(place)(&at, ws->cells * g->c * fpad * E);
        p->ident = DN(place)(&at, g->c * P);
        p->zeros = DN(place)(&at, DN(zeros_len)(g) * E);
        p->fwd_v = DN(place)(&sub, (int64_t)ws->cells * ws->tiles * g->c * E);
        p->fwd_m = DN(place)(&sub, (int64_t)ws->cells * ws->tiles * fpad * E);
    } else {
        p->packed = DN(place)(&at, d.K * fpad * E);
        p->aoff = DN(place)(&at, d.K * P);
    }
    if (!keep_xpad && DN(has_padding)(g)) {
        p->group = DN(forward_group_images)(g, &d);
        p->frames = DN(place)(&at, p->group * d.hp * d.wp * g->c * E);
    }
    DN(plan_threads)(p, at, sub);
}

static void DN(backward_plan)(const mc_conv_geom *g, int need_dx, int relu, int threads,
                              DN(mc_conv_plan) *p)
{
    const int level = mc_level;   /* read once: every step runs the level the plan was made for */
    const DN(mc_isa) *isa = &DN(mc_isa_tables)[level];
    const int64_t E = (int64_t)sizeof(DR), P = (int64_t)sizeof(ptrdiff_t);
    DN(mc_conv_dims) d;
    DN(conv_dims)(g, &d);
    const int64_t fpad = DN(round_up)(g->f, DN_VLEN_MAX), cpad = DN(round_up)(g->c, DN_VLEN_MAX);
    const int64_t taps = (int64_t)g->kh * g->kw * g->f;
    const int ragged = relu || g->f % isa->vlen != 0;   /* dy must be masked or padded */
    const DN(mc_wino_shape) *ws = DN(wino_shape)(g);
    int64_t at = 0;
    memset(p, 0, sizeof *p);
    p->level = level;
    p->threads = DN(conv_threads)(g, &d, threads);
    p->team = DN(plan_team)(p->threads);
    p->wino_dw = DN(use_wino)(g, MC_PASS_DKERNEL);
    /* Winograd dx reads the frame as dy zero-padded by exactly k - 1 - pad on each side */
    p->wino_dx = need_dx && DN(use_wino)(g, MC_PASS_DX) && d.mt == g->kh - 1 - g->pad_top &&
                 d.ml == g->kw - 1 - g->pad_left;
    /* dy goes into a whole-batch frame for dx (zero margins) and for the Winograd kernel
     * gradient when it must be masked or padded; the direct one stages one image at a time */
    p->need_frame = need_dx || (ragged && p->wino_dw);
    p->staged = !p->need_frame && ragged;
    if (p->need_frame)
        p->frame = DN(place)(&at, (int64_t)g->n * (need_dx ? d.hd * d.wd : d.oh * d.ow) * fpad * E);
    if (need_dx && !p->wino_dx) {
        p->wpacked = DN(place)(&at, taps * cpad * E);
        p->toff = DN(place)(&at, taps * P);
    }
    if (p->wino_dw || p->wino_dx) p->zeros = DN(place)(&at, DN(zeros_len)(g) * E);
    if (p->wino_dx) {
        p->U = DN(place)(&at, ws->cells * g->f * cpad * E);
        p->ident = DN(place)(&at, g->f * P);
    }
    /* the kernel gradient's and the input gradient's per-thread uses share each region: the
     * accumulators are summed before dx starts */
    int64_t dw = 0, dx = 0;
    if (p->wino_dw) {
        p->wdw_acc = DN(place)(&dw, (ws->cells * g->c * fpad + fpad) * E);
        p->wdw_v = DN(place)(&dw, (int64_t)ws->cells * ws->tiles_w * g->c * E);
        p->wdw_z = DN(place)(&dw, (int64_t)ws->cells * ws->tiles_w * fpad * E);
    } else {
        p->dw_acc = DN(place)(&dw, (d.K * fpad + fpad) * E);
        if (p->staged) p->dw_stage = DN(place)(&dw, d.oh * d.ow * fpad * E);
    }
    if (p->wino_dx) {
        p->wdx_v = DN(place)(&dx, (int64_t)ws->cells * ws->tiles * g->f * E);
        p->wdx_m = DN(place)(&dx, (int64_t)ws->cells * ws->tiles * cpad * E);
    }
    DN(plan_threads)(p, at, dw > dx ? dw : dx);
}

/* A plan bound to the caller's workspace. */
typedef struct {
    char *base;                  /* the first 64-byte boundary of the workspace */
    int64_t bytes;               /* usable bytes from base */
    const DN(mc_conv_plan) *plan;
} DN(mc_work);

/* MC_DEBUG builds (the sanitizer runs) fill an entry point's whole workspace with all-ones
 * bytes, NaN in either dtype, before the call uses it: a step that reads scratch no step of the
 * call wrote (a margin left unzeroed, a region read before it is filled) then shows as NaN in
 * the results the tests and the fuzz compare, instead of passing on a buffer's leftovers. */
static void DN(poison_workspace)(DR *work, int64_t work_len)
{
#ifdef MC_DEBUG
    memset(work, 0xFF, (size_t)work_len * sizeof(DR));
#else
    (void)work;
    (void)work_len;
#endif
}

static DN(mc_work) DN(bind)(const DN(mc_conv_plan) *plan, DR *work, int64_t work_len)
{
    char *start = (char *)work;
    char *base = (char *)(((uintptr_t)start + 63u) & ~(uintptr_t)63u);
    DN(mc_work) w = {base, work_len * (int64_t)sizeof(DR) - (int64_t)(base - start), plan};
    MC_ASSERT(w.bytes >= plan->bytes - 64);
    return w;
}

/* A fixed region: `bytes` at offset `at`, inside the workspace. */
static void *DN(region)(const DN(mc_work) *w, int64_t at, int64_t bytes)
{
    MC_ASSERT(at >= 0 && bytes >= 0 && at + bytes <= w->bytes && at + bytes <= w->plan->first_thread);
    return w->base + at;
}

/* Thread t's part of a per-thread region: `bytes` at offset `at` inside thread t's region. */
static void *DN(thread_region)(const DN(mc_work) *w, int t, int64_t at, int64_t bytes)
{
    const DN(mc_conv_plan) *p = w->plan;
    MC_ASSERT(t >= 0 && t < p->threads && at >= 0 && bytes >= 0 && at + bytes <= p->per_thread);
    const int64_t start = p->first_thread + (int64_t)t * p->per_thread + at;
    MC_ASSERT(start + bytes <= w->bytes);
    return w->base + start;
}

/* ptrs[t] = thread t's part at `at` for every thread of the plan. */
static void DN(thread_parts)(const DN(mc_work) *w, int64_t at, int64_t bytes, DR **ptrs)
{
    for (int t = 0; t < w->plan->threads; t++) ptrs[t] = DN(thread_region)(w, t, at, bytes);
}

/* The backward pass's state, shared by its steps (csrc/tmpl_conv.h runs them in order). */
typedef struct {
    const mc_conv_geom *g;
    const DN(mc_isa) *isa;
    const DN(mc_work) *w;
    DN(mc_conv_dims) d;
    int64_t fpad, cpad, fv;        /* fv: the frame's row length, F in whole vectors */
    int64_t mt, ml, hd, wd;        /* the frame: margins and size (dy's size without dx) */
    size_t img_dy, img_pad;
    const DR *dy, *relu_y, *xpad;
    DR *frame, *zeros;
    /* dy as the kernel gradient reads it: the frame's interior, or dy itself */
    const DR *src;
    ptrdiff_t src_img, src_row, src_col;
    /* or, from conv2d_backward_from_maxpool, the gradient of the max pool that followed:
     * dy is then that pool's (pool_oh x pool_ow windows over this layer's output) */
    const mc_pool_geom *pool;
    const int32_t *argmax;         /* the pool's winners; relu_y is then the pooled output */
    int64_t pool_oh, pool_ow;
} DN(mc_backward);

/* Workspace bytes of one call: the plan the call itself will lay out. */
static int64_t DN(conv_forward_bytes)(const mc_conv_geom *g, int keep_xpad, int threads)
{
    DN(mc_conv_plan) plan;
    DN(forward_plan)(g, keep_xpad, threads, &plan);
    return plan.bytes;
}

static int64_t DN(conv_backward_bytes)(const mc_conv_geom *g, int need_dx, int relu, int threads)
{
    DN(mc_conv_plan) plan;
    DN(backward_plan)(g, need_dx, relu, threads, &plan);
    return plan.bytes;
}
