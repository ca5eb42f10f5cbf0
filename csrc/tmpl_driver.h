/* One dtype's drivers: csrc/kernels.c includes this file twice, once per dtype, and it includes
 * one file per operator and role. No include guard: this file is a template.
 *
 * Before including, define DR (float or double) and DSFX (f32 or f64); csrc/kernels.c has
 * already defined the microkernel table type DN(mc_isa) and the tables DN(mc_isa_tables).
 *
 *   tmpl_common.h       padding, column blocks, igemm over pixel tiles, convolution geometry
 *   tmpl_conv_plan.h    algorithm choice per pass and the workspace plan of one call
 *   tmpl_winograd.h     Winograd F(2x2, 3x3) and F(2x2, 5x5): forward, kernel gradient,
 *                       input gradient
 *   tmpl_conv_direct.h  direct convolution: forward, kernel gradient, input gradient
 *   tmpl_conv.h         the convolution drivers: forward, and backward as named steps (which
 *                       can take a following max pool's gradient: image_dy)
 *   tmpl_dense.h        dense products on the same microkernels
 *   tmpl_pool.h         max pooling
 *   tmpl_conv_pool.h    a convolution and the max pool after it, forward in chunks of images
 *   tmpl_avgpool.h      average pooling with its entry points
 *   tmpl_batchnorm.h    batch normalisation with its entry points
 *   tmpl_entry.h        the public entry points (checks, then run)
 *   tmpl_optim.h        the Adam and SGD updates with their entry points
 *
 * The internal functions trust their arguments: the entry points check the geometry and every
 * buffer length first. docs/architecture.md describes the algorithms; docs/performance.md has
 * the measurements that chose them.
 */
#define DCAT2(a, b) a##_##b
#define DCAT(a, b) DCAT2(a, b)
#define DN(base) DCAT(base, DSFX)

#include "tmpl_common.h"
#include "tmpl_conv_plan.h"
#include "tmpl_winograd.h"
#include "tmpl_conv_direct.h"
#include "tmpl_conv.h"
#include "tmpl_dense.h"
#include "tmpl_pool.h"
#include "tmpl_conv_pool.h"
#include "tmpl_avgpool.h"
#include "tmpl_relu.h"
#include "tmpl_batchnorm.h"
#include "tmpl_dropout.h"
#include "tmpl_entry.h"
#include "tmpl_optim.h"

#undef DN_DENSE_KC
#undef DN_VLEN_MAX
#undef DN_ELEMS
#undef DN_OFFSETS
#undef DN
#undef DCAT
#undef DCAT2
