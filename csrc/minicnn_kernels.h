/* minicnn's C engine: convolution, max and average pooling, batch normalisation, dense layers
 * and the Adam / SGD updates, float32 and float64.
 *
 * Layout (as in Keras): images x (N, H, W, C) and kernels (KH, KW, C, F), all C-contiguous.
 * Output size: OH = 1 + (H + pad_top + pad_bottom - KH) / stride_h, OW likewise.
 *
 * Contract with the Python wrapper (minicnn/kernels/c_engine.py):
 *   - every buffer comes with its length in elements and every function checks those lengths
 *     against the geometry before touching memory; a mismatch returns MC_ERR_SIZE and writes
 *     nothing, so C never reads or writes past a buffer the caller handed over;
 *   - scratch memory ("workspace") is owned by the caller, sized by the *_workspace functions;
 *   - nothing here allocates memory, touches the Python API or keeps state between calls,
 *     apart from the chosen SIMD level and thread count.
 *
 * The text between the cdef markers is read verbatim by csrc/build_kernels.py as the cffi
 * declarations, so it must stay plain C declarations without preprocessor lines.
 */
#ifndef MINICNN_KERNELS_H
#define MINICNN_KERNELS_H

#include <stdint.h>

/* cdef-begin */
enum {
    MC_OK = 0,
    MC_ERR_GEOMETRY = 1,   /* impossible shape, stride or padding */
    MC_ERR_SIZE = 2,       /* a buffer length does not match the geometry */
    MC_ERR_NULL = 3,       /* a required pointer is NULL */
    MC_ERR_INDEX = 4       /* a max pool's winner points outside its image (dx undefined) */
};

enum { MC_SIMD_BASELINE = 0, MC_SIMD_AVX2 = 1, MC_SIMD_AVX512 = 2 };

/* Convolution algorithm: AUTO uses Winograd F(2x2, 3x3) for the passes of a stride-1 3x3
 * convolution (padding <= 2) whose GEMMs reduce over enough channels (forward: C_in >= 16;
 * kernel gradient: C_in and F >= 16, one of them >= 64; input gradient: F >= 16), Winograd
 * F(2x2, 5x5) for those of a stride-1 5x5 convolution (padding <= 4; forward: C_in and F >= 32;
 * kernel gradient: both >= 48; input gradient: F >= 32), and the direct kernels otherwise;
 * DIRECT never uses Winograd; WINOGRAD uses it for every pass of every such 3x3 and 5x5
 * convolution (tests). */
enum { MC_ALGO_AUTO = 0, MC_ALGO_DIRECT = 1, MC_ALGO_WINOGRAD = 2 };

/* Geometry of one convolution: input (n, h, w, c), kernel (kh, kw, c, f), strides and pads. */
typedef struct {
    int n, h, w, c;
    int kh, kw, f;
    int stride_h, stride_w;
    int pad_top, pad_bottom, pad_left, pad_right;
} mc_conv_geom;

/* Geometry of one max pooling: input (n, h, w, c), window, strides and pads. */
typedef struct {
    int n, h, w, c;
    int pool_h, pool_w;
    int stride_h, stride_w;
    int pad_top, pad_bottom, pad_left, pad_right;
} mc_pool_geom;

/* Engine facts for backend_info(). */
const char *mc_build_flags(void);
int mc_have_openmp(void);
int mc_simd_level(void);                  /* the level in use: MC_SIMD_* */
int mc_simd_best(void);                   /* the best level this CPU and build support */
int mc_set_simd_level(int level);         /* clamps to mc_simd_best(); returns the level set */
const char *mc_simd_name(int level);
int mc_max_threads(void);                 /* threads a call uses: capped at the CPUs and 64 */
int mc_set_algorithm(int algorithm);      /* returns the algorithm in force */
int mc_get_algorithm(void);
void mc_set_num_threads(int threads);     /* < 1 restores the OpenMP default; capped as above */
/* Tests and the fuzz: allow != 0 lifts the cap at the CPUs (not the one at 64), so that 3 and 4
 * threads run on a 2-core machine (taking turns) and every thread count is exercised. */
void mc_allow_threads_beyond_cpus(int allow);
/* The CPUs other processes leave free (minicnn/kernels/load.py measures them between training
 * steps): a call runs at most this many threads; < 1 removes the cap. The work stays laid out
 * for the uncapped count (the kernel gradients' parts), so the results do not change. Ignored
 * while mc_allow_threads_beyond_cpus is on, so tests run exactly the threads they ask for. */
void mc_set_load_cap(int threads);
/* glibc only: keep up to trim_bytes of freed memory and serve blocks up to 32 MiB from the heap,
 * so that arrays freed and reallocated every batch are not page-faulted in again.
 * Returns 1 when applied, 0 where the C library has no such knobs. */
int mc_keep_freed_memory(int64_t trim_bytes);

/* Workspace sizes in elements of the given size (4 or 8 bytes); -1 for an invalid geometry.
 * The size of the plan the call lays out for the current SIMD level, algorithm and threads:
 * query right before the call (changing those in between can make the call refuse it). */
int64_t mc_conv2d_forward_workspace(const mc_conv_geom *g, int elem_size, int keep_xpad);
int64_t mc_conv2d_backward_workspace(const mc_conv_geom *g, int elem_size, int need_dx, int relu);

/* Forward: y = act(conv(x, kernel) + bias). Writes the zero-padded input to xpad
 * (n, h + pad_top + pad_bottom, w + pad_left + pad_right, c): the backward pass reads it.
 * xpad may be NULL (xpad_len 0) when no backward follows (inference): the images are then
 * padded a group at a time into the workspace, which must come from the query with
 * keep_xpad = 0; y has the same bits either way.
 * bias may be NULL (bias_len 0). relu != 0 applies max(0, .) (NaN propagates). */
int mc_conv2d_forward_f32(const mc_conv_geom *g,
                          const float *x, int64_t x_len,
                          const float *kernel, int64_t kernel_len,
                          const float *bias, int64_t bias_len, int relu,
                          float *xpad, int64_t xpad_len,
                          float *y, int64_t y_len,
                          float *work, int64_t work_len);
int mc_conv2d_forward_f64(const mc_conv_geom *g,
                          const double *x, int64_t x_len,
                          const double *kernel, int64_t kernel_len,
                          const double *bias, int64_t bias_len, int relu,
                          double *xpad, int64_t xpad_len,
                          double *y, int64_t y_len,
                          double *work, int64_t work_len);

/* Backward from the forward's xpad. relu_y, when not NULL, is the forward output of a fused
 * ReLU: the gradient is masked by relu_y > 0 first. dx (NULL to skip) gets the input gradient,
 * dkernel the kernel gradient, dbias (NULL to skip) the bias gradient. */
int mc_conv2d_backward_f32(const mc_conv_geom *g,
                           const float *xpad, int64_t xpad_len,
                           const float *kernel, int64_t kernel_len,
                           const float *dy, int64_t dy_len,
                           const float *relu_y, int64_t relu_y_len,
                           float *dx, int64_t dx_len,
                           float *dkernel, int64_t dkernel_len,
                           float *dbias, int64_t dbias_len,
                           float *work, int64_t work_len);
int mc_conv2d_backward_f64(const mc_conv_geom *g,
                           const double *xpad, int64_t xpad_len,
                           const double *kernel, int64_t kernel_len,
                           const double *dy, int64_t dy_len,
                           const double *relu_y, int64_t relu_y_len,
                           double *dx, int64_t dx_len,
                           double *dkernel, int64_t dkernel_len,
                           double *dbias, int64_t dbias_len,
                           double *work, int64_t work_len);

/* A convolution and the max pool over its output as one forward: pooled and argmax are
 * mc_maxpool2d_forward's outputs on mc_conv2d_forward's y, to the bit, and xpad is the
 * convolution's as always (NULL, with the workspace query's keep_xpad = 0, for inference);
 * y itself is not kept (scratch in the workspace, a chunk of images
 * at a time), so the backward is mc_conv2d_backward_from_maxpool. The pool as there
 * (MC_ERR_GEOMETRY otherwise). */
int64_t mc_conv2d_forward_maxpool_workspace(const mc_conv_geom *g, const mc_pool_geom *pg, int elem_size,
                                            int keep_xpad);
int mc_conv2d_forward_maxpool_f32(const mc_conv_geom *g, const mc_pool_geom *pg,
                                  const float *x, int64_t x_len,
                                  const float *kernel, int64_t kernel_len,
                                  const float *bias, int64_t bias_len, int relu,
                                  float *xpad, int64_t xpad_len,
                                  float *pooled, int64_t pooled_len,
                                  int32_t *argmax, int64_t argmax_len,
                                  float *work, int64_t work_len);
int mc_conv2d_forward_maxpool_f64(const mc_conv_geom *g, const mc_pool_geom *pg,
                                  const double *x, int64_t x_len,
                                  const double *kernel, int64_t kernel_len,
                                  const double *bias, int64_t bias_len, int relu,
                                  double *xpad, int64_t xpad_len,
                                  double *pooled, int64_t pooled_len,
                                  int32_t *argmax, int64_t argmax_len,
                                  double *work, int64_t work_len);

/* Backward of a convolution followed by a max pool, from the pool's gradient: the same
 * dx/dkernel/dbias bits as mc_maxpool2d_backward then mc_conv2d_backward, without the
 * whole-batch gradient of the convolution's output in between. pg is the pool's geometry
 * over this layer's output (windows that neither overlap nor touch padding, at most 16 cells:
 * MC_ERR_GEOMETRY otherwise); pool_dy and argmax are the pool's gradient and winners; pooled
 * (NULL without a fused ReLU) is the pool's output, whose sign is the ReLU's mask at each
 * winner. Workspace: mc_conv2d_backward_workspace(g, elem_size, need_dx, 1). */
int mc_conv2d_backward_from_maxpool_f32(const mc_conv_geom *g, const mc_pool_geom *pg,
                                        const float *xpad, int64_t xpad_len,
                                        const float *kernel, int64_t kernel_len,
                                        const float *pool_dy, int64_t pool_dy_len,
                                        const float *pooled, int64_t pooled_len,
                                        const int32_t *argmax, int64_t argmax_len,
                                        float *dx, int64_t dx_len,
                                        float *dkernel, int64_t dkernel_len,
                                        float *dbias, int64_t dbias_len,
                                        float *work, int64_t work_len);
int mc_conv2d_backward_from_maxpool_f64(const mc_conv_geom *g, const mc_pool_geom *pg,
                                        const double *xpad, int64_t xpad_len,
                                        const double *kernel, int64_t kernel_len,
                                        const double *pool_dy, int64_t pool_dy_len,
                                        const double *pooled, int64_t pooled_len,
                                        const int32_t *argmax, int64_t argmax_len,
                                        double *dx, int64_t dx_len,
                                        double *dkernel, int64_t dkernel_len,
                                        double *dbias, int64_t dbias_len,
                                        double *work, int64_t work_len);

/* Dense: y (n, f) = act(x (n, k) @ kernel (k, f) + bias), Keras' layout. */
int64_t mc_dense_forward_workspace(int n, int k, int f, int elem_size);
int64_t mc_dense_backward_workspace(int n, int k, int f, int elem_size);
int mc_dense_forward_f32(int n, int k, int f, const float *x, int64_t x_len,
                         const float *kernel, int64_t kernel_len, const float *bias,
                         int64_t bias_len, int relu, float *y, int64_t y_len,
                         float *work, int64_t work_len);
int mc_dense_forward_f64(int n, int k, int f, const double *x, int64_t x_len,
                         const double *kernel, int64_t kernel_len, const double *bias,
                         int64_t bias_len, int relu, double *y, int64_t y_len,
                         double *work, int64_t work_len);
/* relu_y as for the convolution; dx and dbias may be NULL. */
int mc_dense_backward_f32(int n, int k, int f, const float *x, int64_t x_len,
                          const float *kernel, int64_t kernel_len, const float *dy, int64_t dy_len,
                          const float *relu_y, int64_t relu_y_len, float *dx, int64_t dx_len,
                          float *dkernel, int64_t dkernel_len, float *dbias, int64_t dbias_len,
                          float *work, int64_t work_len);
int mc_dense_backward_f64(int n, int k, int f, const double *x, int64_t x_len,
                          const double *kernel, int64_t kernel_len, const double *dy, int64_t dy_len,
                          const double *relu_y, int64_t relu_y_len, double *dx, int64_t dx_len,
                          double *dkernel, int64_t dkernel_len, double *dbias, int64_t dbias_len,
                          double *work, int64_t work_len);

/* Max pooling with -inf padding. argmax receives, for every output, the flat index of the
 * winner inside its own image (h * w * c space), or -1 when a padding cell won. Ties: first
 * maximum in row-major window order; a NaN wins and stays. */
int mc_maxpool2d_forward_f32(const mc_pool_geom *g, const float *x, int64_t x_len,
                             float *y, int64_t y_len, int32_t *argmax, int64_t argmax_len);
int mc_maxpool2d_forward_f64(const mc_pool_geom *g, const double *x, int64_t x_len,
                             double *y, int64_t y_len, int32_t *argmax, int64_t argmax_len);
/* dx = 0, then dx[winner] += dy for every output (overlapping windows add up). argmax comes
 * back from the caller: a winner outside its image is never written through (MC_ERR_INDEX). */
int mc_maxpool2d_backward_f32(const mc_pool_geom *g, const float *dy, int64_t dy_len,
                              const int32_t *argmax, int64_t argmax_len,
                              float *dx, int64_t dx_len);
int mc_maxpool2d_backward_f64(const mc_pool_geom *g, const double *dy, int64_t dy_len,
                              const int32_t *argmax, int64_t argmax_len,
                              double *dx, int64_t dx_len);
/* Average pooling: each window averages its cells inside the image (padding neither summed
 * nor counted); every pad must be smaller than the window. dx = 0, then every output's
 * dy / count is added to each cell its window averaged. */
int mc_avgpool2d_forward_f32(const mc_pool_geom *g, const float *x, int64_t x_len,
                             float *y, int64_t y_len);
int mc_avgpool2d_forward_f64(const mc_pool_geom *g, const double *x, int64_t x_len,
                             double *y, int64_t y_len);
int mc_avgpool2d_backward_f32(const mc_pool_geom *g, const float *dy, int64_t dy_len,
                              float *dx, int64_t dx_len);
int mc_avgpool2d_backward_f64(const mc_pool_geom *g, const double *dy, int64_t dy_len,
                              double *dx, int64_t dx_len);
/* Batch normalisation of x (m, c), one column per feature; gamma and beta may be NULL (length 0).
 * Training: mean and the biased var of each column, inv_std = 1 / sqrt(var + epsilon),
 * x_hat = (x - mean) * inv_std, y = x_hat * gamma + beta. Inference: the same with the given
 * mean and var. Backward: dbeta = sum dy, dgamma = sum dy * x_hat (both always written) and,
 * when dx is not NULL, dx = (dy - dbeta / m - x_hat * dgamma / m) * gamma * inv_std.
 * relu != 0 fuses the ReLU layer that follows: y = max(y, 0) with mc_relu_forward's rule, and
 * the backward's relu_y (that y; NULL, length 0, without the ReLU) masks dy as
 * mc_relu_backward does, so the results are the bits of the two layers run one after the other;
 * dx is then required (it holds the masked dy on the way). */
int mc_batchnorm_forward_training_f32(int64_t m, int c, const float *x, int64_t x_len,
                                      const float *gamma, int64_t gamma_len, const float *beta,
                                      int64_t beta_len, double epsilon, int relu, float *y, int64_t y_len,
                                      float *mean, int64_t mean_len, float *var, int64_t var_len,
                                      float *x_hat, int64_t x_hat_len, float *inv_std,
                                      int64_t inv_std_len);
int mc_batchnorm_forward_training_f64(int64_t m, int c, const double *x, int64_t x_len,
                                      const double *gamma, int64_t gamma_len, const double *beta,
                                      int64_t beta_len, double epsilon, int relu, double *y, int64_t y_len,
                                      double *mean, int64_t mean_len, double *var, int64_t var_len,
                                      double *x_hat, int64_t x_hat_len, double *inv_std,
                                      int64_t inv_std_len);
int mc_batchnorm_forward_inference_f32(int64_t m, int c, const float *x, int64_t x_len,
                                       const float *gamma, int64_t gamma_len, const float *beta,
                                       int64_t beta_len, const float *mean, int64_t mean_len,
                                       const float *var, int64_t var_len, double epsilon, int relu,
                                       float *y, int64_t y_len);
int mc_batchnorm_forward_inference_f64(int64_t m, int c, const double *x, int64_t x_len,
                                       const double *gamma, int64_t gamma_len, const double *beta,
                                       int64_t beta_len, const double *mean, int64_t mean_len,
                                       const double *var, int64_t var_len, double epsilon, int relu,
                                       double *y, int64_t y_len);
int mc_batchnorm_backward_f32(int64_t m, int c, const float *dy, int64_t dy_len,
                              const float *x_hat, int64_t x_hat_len, const float *inv_std,
                              int64_t inv_std_len, const float *gamma, int64_t gamma_len,
                              const float *relu_y, int64_t relu_y_len, float *dx, int64_t dx_len, float *dgamma, int64_t dgamma_len,
                              float *dbeta, int64_t dbeta_len);
int mc_batchnorm_backward_f64(int64_t m, int c, const double *dy, int64_t dy_len,
                              const double *x_hat, int64_t x_hat_len, const double *inv_std,
                              int64_t inv_std_len, const double *gamma, int64_t gamma_len,
                              const double *relu_y, int64_t relu_y_len, double *dx, int64_t dx_len, double *dgamma, int64_t dgamma_len,
                              double *dbeta, int64_t dbeta_len);
/* The ReLU layer on n elements: y = x where x > 0 or x is NaN, else +0 (np.maximum(x, 0));
 * dx = dy * (y > 0) (NumPy's product: a NaN dy where y <= 0 stays NaN). */
int mc_relu_forward_f32(int64_t n, const float *x, int64_t x_len, float *y, int64_t y_len);
int mc_relu_forward_f64(int64_t n, const double *x, int64_t x_len, double *y, int64_t y_len);
int mc_relu_backward_f32(int64_t n, const float *dy, int64_t dy_len, const float *y, int64_t y_len,
                         float *dx, int64_t dx_len);
int mc_relu_backward_f64(int64_t n, const double *dy, int64_t dy_len, const double *y, int64_t y_len,
                         double *dx, int64_t dx_len);
/* Dropout on n elements: element i is kept when the top 24 bits of SplitMix64's output for
 * key + (i + 1) * 0x9E3779B97F4A7C15 are >= threshold (0 .. 2^24: rate * 2^24); y = x * scale
 * where kept, x * 0 elsewhere, mask[i] = kept. Backward: dx = dy * (mask ? scale : 0). */
int mc_dropout_forward_f32(int64_t n, const float *x, int64_t x_len, uint64_t key, int64_t threshold,
                           double scale, float *y, int64_t y_len, uint8_t *mask, int64_t mask_len);
int mc_dropout_forward_f64(int64_t n, const double *x, int64_t x_len, uint64_t key, int64_t threshold,
                           double scale, double *y, int64_t y_len, uint8_t *mask, int64_t mask_len);
int mc_dropout_backward_f32(int64_t n, const float *dy, int64_t dy_len, const uint8_t *mask,
                            int64_t mask_len, double scale, float *dx, int64_t dx_len);
int mc_dropout_backward_f64(int64_t n, const double *dy, int64_t dy_len, const uint8_t *mask,
                            int64_t mask_len, double scale, double *dx, int64_t dx_len);
/* Optimizer updates, in place on n elements, Keras' rules with each coefficient rounded once to
 * the dtype and every operation rounded on its own in the NumPy optimizer's order (so the
 * results equal minicnn/training/optimizers.py's):
 *   Adam: m = m*b1 + g*(1-b1); v = v*b2 + (g*g)*(1-b2); param -= (m / (sqrt(v) + eps)) * lr_t
 *   SGD:  s = g*lr; velocity NULL: param -= s; else velocity = velocity*momentum - s and
 *         param += velocity, or with nesterov != 0: param = (param - s) + velocity*momentum. */
int mc_adam_update_f32(int64_t n, float *param, int64_t param_len, const float *grad, int64_t grad_len,
                       float *m, int64_t m_len, float *v, int64_t v_len, double lr_t, double beta_1,
                       double beta_2, double epsilon);
int mc_adam_update_f64(int64_t n, double *param, int64_t param_len, const double *grad, int64_t grad_len,
                       double *m, int64_t m_len, double *v, int64_t v_len, double lr_t, double beta_1,
                       double beta_2, double epsilon);
int mc_sgd_update_f32(int64_t n, float *param, int64_t param_len, const float *grad, int64_t grad_len,
                      float *velocity, int64_t velocity_len, double learning_rate, double momentum,
                      int nesterov);
int mc_sgd_update_f64(int64_t n, double *param, int64_t param_len, const double *grad, int64_t grad_len,
                      double *velocity, int64_t velocity_len, double learning_rate, double momentum,
                      int nesterov);
/* cdef-end */

#endif
