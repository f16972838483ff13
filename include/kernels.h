/* kernels.h -- what the model's vector kernels are made of, shared by the
 * inference engine (model.c) and the trainer (train.c).
 *
 * The Makefile builds for baseline x86-64, whose vectors hold 4 floats, and
 * what a step does outside sgemm (attention over each user's cache, GELU,
 * LayerNorm) is a long run of small loops that would run 4 floats at a time
 * beside OpenBLAS's AVX-512 kernels. A function marked MODEL_KERNEL is
 * compiled three times, for AVX-512, for AVX2 with FMA and for the baseline,
 * and the loader picks the widest the CPU runs (GCC's function
 * multiversioning; valgrind, which emulates no AVX-512, gets the AVX2 one).
 * The clones fuse multiplies and adds where the CPU can, so results differ
 * between CPUs by float rounding, as sgemm's do between kernels.
 *
 * GCC vectorizes a loop at -O2 only when no scalar remainder is left and no
 * pointer may alias another (it adds no run-time checks), never reorders a
 * float sum, and gives up on a loop where a float compare guards more
 * arithmetic. So the loops below take restrict pointers, run over a multiple
 * of LANES floats and leave the rest to a scalar loop, keep sums in LANES
 * partial sums, and compare floats only to pick one of two. */
#ifndef COPYSTREAM_KERNELS_H
#define COPYSTREAM_KERNELS_H

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define MODEL_KERNEL __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MODEL_KERNEL
#endif

/* A helper of kernels, compiled into each clone that calls it (GCC would
 * otherwise call a single baseline copy of the larger ones). */
#define KERNEL_INLINE static inline __attribute__((always_inline))

#define LANES 16 /* floats in an AVX-512 vector */

/* e^x, within 1e-7 relative for |x| <= 87.4; past that x counts as +-87.4
 * (e^x is 1e-38 or 9e37), which is all GELU and softmax need. libm's expf is
 * a call per float, and GELU and softmax take a thousand per user and step.
 * Cephes's expf: x = n ln2 + r with |r| <= ln2 / 2, e^r by a polynomial, 2^n
 * written into a float's exponent. The clamp compares the bits as integers:
 * GCC makes a branch of a float compare whose result feeds more arithmetic. */
KERNEL_INLINE float exp_approx(float x) {
    int32_t xb, max_mag = 0x42aecccd; /* 87.4f: 2^n stays a normal float */
    memcpy(&xb, &x, sizeof xb);
    int32_t mag = xb & 0x7fffffff;
    mag = mag < max_mag ? mag : max_mag;
    xb = (int32_t)((uint32_t)xb & 0x80000000u) | mag;
    memcpy(&x, &xb, sizeof x);
    /* Adding 1.5 * 2^23 rounds to an integer, which lands in the low bits. */
    float z = x * 1.44269504088896341f + 12582912.0f, n = z - 12582912.0f;
    int32_t zb;
    memcpy(&zb, &z, sizeof zb);
    float r = x - n * 0.693359375f - n * -2.12194440e-4f; /* ln2 in two parts */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t pow2b = (zb - 0x4b400000 + 127) << 23; /* n + 127 is 1 to 253 */
    float pow2;
    memcpy(&pow2, &pow2b, sizeof pow2);
    return p * pow2;
}

#endif
