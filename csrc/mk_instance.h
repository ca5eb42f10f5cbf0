/* The parameters of one microkernel instance, derived from MK_ISA (MK_BASELINE, MK_AVX2 or
 * MK_AVX512) and MK_BITS (32 or 64). Included by csrc/tmpl_microkernel.h, which undefines
 * every parameter at its end, so csrc/kernels.c instantiates an instance with two defines.
 *
 *   MK_REAL, MK_INT   float / int32_t or double / int64_t (the mask type as wide as MK_REAL)
 *   MK_SQRT           the scalar square root; MK_VSQRT the vector one where the ISA has it
 *   MK_VBYTES         bytes per vector register: 64 (AVX-512), 32 (AVX2), 16 (baseline)
 *   MK_NVMAX          2 or 4: the widest tile in vectors
 *   MK_MR1 .. MK_MR4  tile heights for 1..4 vectors of width
 *   MK_ATTR           function attributes selecting the instruction set (empty for baseline)
 *   MK_SFX            the suffix naming the instance, e.g. avx512_f32
 */
#if MK_BITS == 32
#define MK_REAL float
#define MK_INT int32_t
#define MK_SQRT sqrtf
#define MK_DT f32
#else
#define MK_REAL double
#define MK_INT int64_t
#define MK_SQRT sqrt
#define MK_DT f64
#endif

#if MK_ISA == MK_AVX512
#define MK_ISA_NAME avx512
#define MK_VBYTES 64
#define MK_NVMAX 4
#define MK_MR1 12
#define MK_MR2 12
#define MK_MR3 8
#define MK_MR4 6
#define MK_ATTR __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#if MK_BITS == 32
#define MK_VSQRT(x) ((MK_V)_mm512_sqrt_ps((__m512)(x)))
#else
#define MK_VSQRT(x) ((MK_V)_mm512_sqrt_pd((__m512d)(x)))
#endif
#elif MK_ISA == MK_AVX2
#define MK_ISA_NAME avx2
#define MK_VBYTES 32
#define MK_NVMAX 2
#define MK_MR1 12
#define MK_MR2 6
#define MK_ATTR __attribute__((target("avx2,fma")))
#if MK_BITS == 32
#define MK_VSQRT(x) ((MK_V)_mm256_sqrt_ps((__m256)(x)))
#else
#define MK_VSQRT(x) ((MK_V)_mm256_sqrt_pd((__m256d)(x)))
#endif
#else
#define MK_ISA_NAME base
#define MK_VBYTES 16
#define MK_NVMAX 2
#define MK_MR1 12
#define MK_MR2 6
#define MK_ATTR
#if MC_X86
#if MK_BITS == 32
#define MK_VSQRT(x) ((MK_V)_mm_sqrt_ps((__m128)(x)))
#else
#define MK_VSQRT(x) ((MK_V)_mm_sqrt_pd((__m128d)(x)))
#endif
#endif
#endif

#define MK_SFX MK_CAT(MK_ISA_NAME, MK_DT)
