/* model.c -- the sequential recommender's inference engine; see model.h and
 * docs/MODEL.md.
 *
 * Laid out like llama2.c's run.c: the config, the weights (pointers into the
 * mapped file), the run state (one allocation of activations), the vector
 * kernels the layers' loops run in, then one function per layer
 * (`op_forward`), then the passes built from them. There are three passes
 * and they share every layer but attention's source of keys: a step advances
 * B users by one position each, a prefill appends n positions of one user,
 * both attending through the users' KV states; the full recompute attends to
 * its own rows and keeps nothing. All three quantize keys and values to
 * 8 bits, the form states keep them in. A step's attention, one query
 * against a state, has a kernel of its own, written for AVX-512, AVX2 and in
 * portable C. The tests hold the first two passes to the third. */
#define _GNU_SOURCE
#include "model.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "buf.h"
#include "kernels.h"
#include "util.h"

/* Tensors and tables are used in place from the mapped file. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "model files are little-endian and mapped as they are"
#endif

#define MODEL_MAGIC "CSMODEL"          /* 8 bytes with its NUL */
#define MODEL_HEADER_BYTES 64
#define MODEL_CHECKSUM_OFFSET 16
#define MODEL_CHECKSUMMED_FROM 24      /* the checksum covers [24, end of file) */
#define MODEL_ALIGN 64                 /* every tensor and table starts at a multiple */

/* Hash -> row, open addressing over util_hash() values (already well mixed). */
typedef struct {
    uint64_t *keys;           /* (cap) */
    int32_t *rows;            /* (cap) -1: empty slot */
    size_t mask;              /* cap - 1, cap a power of two */
} rowtab;

struct model {
    model_config config;
    model_weights weights;    /* pointers into map */
    const uint8_t *map;       /* (map_len) the file, mapped read-only */
    size_t map_len;
    uint64_t checksum;
    const char **item_ids;    /* (n_items) NUL-terminated strings in map */
    uint64_t *item_hash;      /* (n_items) util_hash(item_ids[i]) */
    const int32_t *attr_off;  /* (n_items + 1) in map */
    const int32_t *attr_rows; /* (attr_off[n_items]) in map */
    rowtab items, attrs;
    float *rope_cos;          /* (window, head_dim / 2) */
    float *rope_sin;          /* (window, head_dim / 2) */
    char version[48];
};

static int model_threads_chosen;

void model_set_threads(int n) {
    openblas_set_num_threads(n > 0 ? n : 1);
    model_threads_chosen = 1;
}

/* The vector kernels' helpers (MODEL_KERNEL, LANES, exp_approx) are in kernels.h. */

/* ---------------------------------------------------------------------------
 * matmul: the one door to BLAS */

/* y (n) += a[0..4) @ x (4, n), rows ld apart: y is loaded and stored once per
 * four rows rather than once per row. */
KERNEL_INLINE void axpy4(float *restrict y, const float *restrict x, size_t ld, const float *a,
                         int n) {
    const float *x1 = x + ld, *x2 = x1 + ld, *x3 = x2 + ld;
    float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
    for (int i = 0; i < n; i++) y[i] += a0 * x[i] + a1 * x1[i] + a2 * x2[i] + a3 * x3[i];
}

/* out (n) = beta out + a (k) @ b (k, n), rows ldb apart, as axpys over b's
 * rows; each row goes as a multiple of LANES floats and the rest. */
static void MODEL_KERNEL matvec(float *restrict out, const float *restrict a,
                                const float *restrict b, int n, int k, size_t ldb, float beta) {
    if (beta == 0.0f) memset(out, 0, (size_t)n * sizeof *out);
    int nv = n & ~(LANES - 1), p = 0;
    for (; p + 4 <= k; p += 4) {
        const float *rows = b + (size_t)p * ldb;
        axpy4(out, rows, ldb, a + p, nv);
        axpy4(out + nv, rows + nv, ldb, a + p, n - nv);
    }
    for (; p < k; p++) {
        const float *row = b + (size_t)p * ldb;
        for (int i = 0; i < nv; i++) out[i] += a[p] * row[i];
        for (int i = nv; i < n; i++) out[i] += a[p] * row[i];
    }
}

void matmul(float *out, const float *a, const float *b, int m, int n, int k, int lda, int ldb,
            int ldo, int b_t, float beta) {
    if (m == 1 && !b_t) {
        /* One row times a matrix: a single user's projections, or one
         * position's attention in a prefill. Here OpenBLAS's call and
         * packing overhead outweigh the product. */
        matvec(out, a, b, n, k, (size_t)ldb, beta);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, b_t ? CblasTrans : CblasNoTrans, m, n, k, 1.0f, a,
                lda, b, ldb, beta, out, ldo);
}

void matmul_at(float *out, const float *a, const float *b, int m, int n, int k, int lda,
               int ldb, int ldo, float beta) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, n, k, 1.0f, a, lda, b, ldb, beta, out,
                ldo);
}

void matmul_at_naive(float *out, const float *a, const float *b, int m, int n, int k, int lda,
                     int ldb, int ldo, float beta) {
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int p = 0; p < k; p++)
                s += (double)a[(size_t)p * lda + i] * b[(size_t)p * ldb + j];
            float *o = &out[(size_t)i * ldo + j];
            *o = (float)s + (beta != 0.0f ? beta * *o : 0.0f);
        }
    }
}

void matmul_naive(float *out, const float *a, const float *b, int m, int n, int k, int lda,
                  int ldb, int ldo, int b_t, float beta) {
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int p = 0; p < k; p++)
                s += (double)a[(size_t)i * lda + p] *
                     (b_t ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j]);
            float *o = &out[(size_t)i * ldo + j];
            *o = (float)s + (beta != 0.0f ? beta * *o : 0.0f);
        }
    }
}

/* ---------------------------------------------------------------------------
 * layers */

/* out (R, C) = inp (R, C_in) @ w (C_in, C) + bias (C). */
static void MODEL_KERNEL bias_forward(float *restrict x, const float *restrict bias, int R,
                                      int C);

/* out (R, C) = inp (R, C_in) @ w (C_in, C) + bias (C), the bias added after
 * the product, as sgemm adds a beta term: sgemm then writes out without
 * reading it, and no pass copies the bias in first. */
static void matmul_forward(float *out, const float *inp, const float *w, const float *bias, int R,
                           int c_in, int c) {
    matmul(out, inp, w, R, c, c_in, c_in, c, c, 0, 0.0f);
    bias_forward(out, bias, R, c);
}

/* The sum of lane[0..LANES), pairwise so that it vectorizes; lane is spent. */
_Static_assert(LANES == 16, "lanes_sum() and lanes_max() halve 16 lanes");
KERNEL_INLINE float lanes_sum(float *restrict lane) {
    for (int k = 0; k < 8; k++) lane[k] += lane[k + 8];
    for (int k = 0; k < 4; k++) lane[k] += lane[k + 4];
    return (lane[0] + lane[2]) + (lane[1] + lane[3]);
}
/* The largest of lane[0..LANES), the same way. */
KERNEL_INLINE float lanes_max(float *restrict lane) {
    for (int k = 0; k < 8; k++) lane[k] = lane[k + 8] > lane[k] ? lane[k + 8] : lane[k];
    for (int k = 0; k < 4; k++) lane[k] = lane[k + 4] > lane[k] ? lane[k + 4] : lane[k];
    float a = lane[0] > lane[1] ? lane[0] : lane[1], b = lane[2] > lane[3] ? lane[2] : lane[3];
    return a > b ? a : b;
}

/* The sum of x (n), in LANES partial sums. */
KERNEL_INLINE float sum_forward(const float *restrict x, int n) {
    float lane[LANES] = {0}, tail = 0;
    int nv = n & ~(LANES - 1);
    for (int i = 0; i < nv; i += LANES)
        for (int k = 0; k < LANES; k++) lane[k] += x[i + k];
    for (int i = nv; i < n; i++) tail += x[i];
    return lanes_sum(lane) + tail;
}

/* a (n) . b (n), in LANES partial sums. */
KERNEL_INLINE float dot_forward(const float *restrict a, const float *restrict b, int n) {
    float lane[LANES] = {0}, tail = 0;
    int nv = n & ~(LANES - 1);
    for (int i = 0; i < nv; i += LANES)
        for (int k = 0; k < LANES; k++) lane[k] += a[i + k] * b[i + k];
    for (int i = nv; i < n; i++) tail += a[i] * b[i];
    return lanes_sum(lane) + tail;
}

/* out (R, C) = LayerNorm of each row of inp (R, C), gain w (C), bias b (C).
 * The variance takes a second pass over the row, which is in L1 by then: it
 * does not cancel as the mean of squares less the squared mean would. */
static void MODEL_KERNEL layernorm_forward(float *restrict out, const float *restrict inp,
                                           const float *restrict w, const float *restrict b,
                                           int R, int C) {
    int nv = C & ~(LANES - 1);
    for (int r = 0; r < R; r++) {
        const float *x = inp + (size_t)r * C;
        float *o = out + (size_t)r * C;
        float mean = sum_forward(x, C) / C;
        float lane[LANES] = {0}, tail = 0;
        for (int i = 0; i < nv; i += LANES)
            for (int k = 0; k < LANES; k++) lane[k] += (x[i + k] - mean) * (x[i + k] - mean);
        for (int i = nv; i < C; i++) tail += (x[i] - mean) * (x[i] - mean);
        float rstd = 1.0f / sqrtf((lanes_sum(lane) + tail) / C + MODEL_LN_EPS);
        for (int i = 0; i < nv; i += LANES)
            for (int k = 0; k < LANES; k++)
                o[i + k] = (x[i + k] - mean) * rstd * w[i + k] + b[i + k];
        for (int i = nv; i < C; i++) o[i] = (x[i] - mean) * rstd * w[i] + b[i];
    }
}

/* GELU's tanh approximation 0.5 v (1 + tanh(u)), computed as v sigmoid(2u),
 * the same function. */
KERNEL_INLINE float gelu(float v) {
    const float s = 2.0f * 0.7978845608028654f; /* 2 sqrt(2 / pi) */
    return v / (1.0f + exp_approx(-s * (v + 0.044715f * v * v * v)));
}

/* x (N) = GELU(x). */
static void MODEL_KERNEL gelu_forward(float *restrict x, size_t N) {
    size_t nv = N & ~(size_t)(LANES - 1);
    for (size_t i = 0; i < nv; i += LANES)
        for (int k = 0; k < LANES; k++) x[i + k] = gelu(x[i + k]);
    for (size_t i = nv; i < N; i++) x[i] = gelu(x[i]);
}

/* x (R, C) += bias (C) on every row. */
static void MODEL_KERNEL bias_forward(float *restrict x, const float *restrict bias, int R,
                                      int C) {
    int nv = C & ~(LANES - 1);
    for (float *row = x; row < x + (size_t)R * C; row += C) {
        for (int i = 0; i < nv; i += LANES)
            for (int k = 0; k < LANES; k++) row[i + k] += bias[i + k];
        for (int i = nv; i < C; i++) row[i] += bias[i];
    }
}

/* x (N) += y (N). */
static void MODEL_KERNEL residual_forward(float *restrict x, const float *restrict y, size_t N) {
    size_t nv = N & ~(size_t)(LANES - 1);
    for (size_t i = 0; i < nv; i += LANES)
        for (int k = 0; k < LANES; k++) x[i + k] += y[i + k];
    for (size_t i = nv; i < N; i++) x[i] += y[i];
}

/* Rotates each (even, odd) pair of the n vectors of hd floats at v by the
 * angles whose cosines and sines are cs and sn (hd / 2). */
static void MODEL_KERNEL rotate_forward(float *restrict v, const float *restrict cs,
                                        const float *restrict sn, int n, int hd) {
    int half = hd / 2, hv = half & ~(LANES - 1);
    for (float *p = v; p < v + (size_t)n * hd; p += hd) {
        for (int i = 0; i < hv; i += LANES)
            for (int k = i; k < i + LANES; k++) {
                float a = p[2 * k], b = p[2 * k + 1];
                p[2 * k] = a * cs[k] - b * sn[k];
                p[2 * k + 1] = a * sn[k] + b * cs[k];
            }
        for (int k = hv; k < half; k++) {
            float a = p[2 * k], b = p[2 * k + 1];
            p[2 * k] = a * cs[k] - b * sn[k];
            p[2 * k + 1] = a * sn[k] + b * cs[k];
        }
    }
}

/* Rotates each (even, odd) pair of every head of the query and the key of one
 * row of qkv (3*dim) by pos times its frequency. Rotations compose, so the
 * score of query position i and key position j depends on i - j only: keys
 * cached at their own positions stay right however many events follow. */
static void rope_forward(const model *m, float *qkv, int pos) {
    int hd = m->config.dim / m->config.n_heads, half = hd / 2;
    /* the queries, then the keys: 2 H vectors of hd */
    rotate_forward(qkv, m->rope_cos + (size_t)pos * half, m->rope_sin + (size_t)pos * half,
                   2 * m->config.n_heads, hd);
}

/* The largest of x[0..n), n >= 1. A last partial block of lanes is taken as
 * the LANES floats ending at x[n - 1], overlapping the block before. */
KERNEL_INLINE float max_forward(const float *restrict x, int n) {
    float max = x[0];
    if (n < LANES) {
        for (int j = 1; j < n; j++) max = x[j] > max ? x[j] : max;
        return max;
    }
    float lane[LANES];
    memcpy(lane, x, sizeof lane);
    for (int j = LANES; j < n; j += LANES) {
        const float *blk = x + (j + LANES <= n ? j : n - LANES);
        for (int k = 0; k < LANES; k++) lane[k] = blk[k] > lane[k] ? blk[k] : lane[k];
    }
    return lanes_max(lane);
}

/* x (n) = softmax(scale * x). */
KERNEL_INLINE void softmax(float *restrict x, int n, float scale) {
    float max = max_forward(x, n), lane[LANES] = {0}, tail = 0;
    int nv = n & ~(LANES - 1);
    for (int j = 0; j < nv; j += LANES)
        for (int k = 0; k < LANES; k++) lane[k] += x[j + k] = exp_approx(scale * (x[j + k] - max));
    for (int j = nv; j < n; j++) tail += x[j] = exp_approx(scale * (x[j] - max));
    float inv = 1.0f / (lanes_sum(lane) + tail);
    for (int j = 0; j < nv; j += LANES)
        for (int k = 0; k < LANES; k++) x[j + k] *= inv;
    for (int j = nv; j < n; j++) x[j] *= inv;
}

/* x (n) = softmax(scale * x), for scratch that runs on to S, a multiple of
 * LANES, past n: the lanes past n are computed, whatever they hold, and set
 * to 0, so that no scalar loop is left. */
KERNEL_INLINE void softmax_padded(float *restrict x, int n, int S, float scale) {
    float max = max_forward(x, n), lane[LANES] = {0};
    for (int j = 0; j < S; j += LANES)
        for (int k = 0; k < LANES; k++) {
            float e = exp_approx(scale * (x[j + k] - max));
            lane[k] += x[j + k] = j + k < n ? e : 0.0f;
        }
    float inv = 1.0f / lanes_sum(lane);
    for (int j = 0; j < S; j += LANES)
        for (int k = 0; k < LANES; k++) x[j + k] *= inv;
}

/* x (T) = softmax(scale * x[0..n)) with x[n..T) = 0: the causal mask. */
static void MODEL_KERNEL softmax_forward(float *restrict x, int n, int T, float scale) {
    softmax(x, n, scale);
    memset(x + n, 0, (size_t)(T - n) * sizeof *x);
}

/* ---------------------------------------------------------------------------
 * 8-bit keys and values
 *
 * A step reads every position of each user's state, and a batch's states do
 * not fit in the core's L2 cache: a step's attention waits on memory, not on
 * arithmetic. So states keep keys and values as 8-bit integers, a quarter of
 * the bytes of float, with one float scale per position and head (symmetric,
 * absmax: llama.cpp's q8_0 KV cache does the like with a scale per 32
 * numbers), widened to float as they are read, every sum in float. So that a
 * state holds exactly what a full recompute uses, every pass quantizes each
 * position's key and value (kv_round) before attending to them, and a state
 * stores them without further loss: the scale keeps 17 significant bits, so
 * that integer times scale is exactly a float and quantizing it again gives
 * the same integers and scale (model_kv_quantize()).
 *
 * The step's attention and the quantization are written three times --
 * AVX-512 and AVX2 as intrinsics, and portable C -- and the widest the CPU
 * runs is chosen when the first model is opened, as target_clones would
 * (valgrind, which emulates no AVX-512, gets AVX2): GCC finds neither the
 * attention's blocking nor good vectors for the quantization's clamps and
 * narrowing, and the same body left to it ran five times slower. The three
 * quantizations are made of the same operations (a maximum, a multiply, min
 * and max, a rounding, an exact product) and give the same bits; the
 * attention kernels' sums differ by float rounding, like the other kernels'. */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define MODEL_X86 1
#include <immintrin.h>
#define TARGET_V4 __attribute__((target("arch=x86-64-v4")))
#define TARGET_V3 __attribute__((target("arch=x86-64-v3")))
#else
#define MODEL_X86 0
#endif

#define KV_B MODEL_KV_BLOCK
#define KV_MAX 0x1p64f    /* larger magnitudes, and NaN, are taken as this */
#define KV_ROUND 0x1.8p23f /* added and taken away, rounds |v| < 2^22 to an integer */

enum { ISA_PORTABLE, ISA_AVX2, ISA_AVX512 };
static int kv_isa;            /* what the CPU runs, set once by kv_isa_init() */
static int kv_portable;       /* model_use_portable_kernels() */
static pthread_once_t kv_isa_once = PTHREAD_ONCE_INIT;

static void kv_isa_init(void) {
#if MODEL_X86
    __builtin_cpu_init();
    kv_isa = __builtin_cpu_supports("x86-64-v4")   ? ISA_AVX512
             : __builtin_cpu_supports("x86-64-v3") ? ISA_AVX2
                                                   : ISA_PORTABLE;
#endif
}

void model_use_portable_kernels(int on) { kv_portable = on; }

static int kv_level(void) { return kv_portable ? ISA_PORTABLE : kv_isa; }

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The scale for numbers whose largest magnitude (clamped to KV_MAX) is m:
 * see kv_scale(). Below FLT_MIN it would lose bits and its exactness: the
 * head, under 1.5e-36 in every number, is zeros. */
static inline float kv_scale_of(float m) {
    m /= 127.0f;
    return m < 0x1p-126f ? 0.0f : f32_from((f32_bits(m) + 127) & ~127u);
}

/* The scale of x (n): max |x| / 127, rounded up to 17 significant bits (the
 * low 7 bits of the mantissa cleared), so that an integer of 7 bits times it
 * is exact and 127 times it, over 127, gives it back. */
KERNEL_INLINE float kv_scale(const float *restrict x, int n) {
    float lane[LANES] = {0}, m = 0;
    int nv = n & ~(LANES - 1);
    for (int j = 0; j < nv; j += LANES)
        for (int k = 0; k < LANES; k++) {
            float a = fabsf(x[j + k]);
            a = a < KV_MAX ? a : KV_MAX;
            lane[k] = a > lane[k] ? a : lane[k];
        }
    for (int j = nv; j < n; j++) {
        float a = fabsf(x[j]);
        a = a < KV_MAX ? a : KV_MAX;
        m = a > m ? a : m;
    }
    float l = lanes_max(lane);
    return kv_scale_of(m > l ? m : l);
}

/* x times inv (1 / the scale) rounded to the nearest integer, ties to even,
 * within -127..127 (NaN: 127), as a float. The clamps are written as the
 * vector min and max behave, so that every build rounds alike. */
KERNEL_INLINE float kv_int(float x, float inv) {
    float v = x * inv;
    v = v < 127.0f ? v : 127.0f;
    v = v > -127.0f ? v : -127.0f;
    return (v + KV_ROUND) - KV_ROUND;
}

/* q (n) = kv_int() of x (n), LANES at a time. */
KERNEL_INLINE void kv_ints(int8_t *restrict q, const float *restrict x, float inv, int n) {
    int nv = n & ~(LANES - 1);
    for (int j = 0; j < nv; j += LANES)
        for (int k = 0; k < LANES; k++) q[j + k] = (int8_t)kv_int(x[j + k], inv);
    for (int j = nv; j < n; j++) q[j] = (int8_t)kv_int(x[j], inv);
}

/* 1 / s, and 0 for 0, which makes every integer 0. */
static inline float kv_inverse(float s) { return s > 0 ? 1.0f / s : 0.0f; }

float model_kv_quantize(const float *x, int n, int8_t *q) {
    float s = kv_scale(x, n);
    kv_ints(q, x, kv_inverse(s), n);
    return s;
}

/* x (heads, hd) = each head's hd numbers quantized (model_kv_quantize()) and
 * widened back to float, exactly what a state will hold; q (heads, hd) and
 * sc (heads) = the integers and scales, for kv_store(). */
static void MODEL_KERNEL kv_round_portable(float *restrict x, int heads, int hd,
                                           int8_t *restrict q, float *restrict sc) {
    int nv = hd & ~(LANES - 1);
    for (int h = 0; h < heads; h++) {
        float *p = x + (size_t)h * hd;
        int8_t *o = q + (size_t)h * hd;
        float s = sc[h] = kv_scale(p, hd), inv = kv_inverse(s);
        for (int j = 0; j < nv; j += LANES)
            for (int k = 0; k < LANES; k++) {
                float v = kv_int(p[j + k], inv);
                o[j + k] = (int8_t)(int32_t)v;
                p[j + k] = v * s;
            }
        for (int j = nv; j < hd; j++) {
            float v = kv_int(p[j], inv);
            o[j] = (int8_t)(int32_t)v;
            p[j] = v * s;
        }
    }
}

#if MODEL_X86
/* kv_round_portable() in intrinsics, which GCC does not find for its clamps
 * and narrowing. Every operation is the portable one's: min and max as its
 * clamps are written, a conversion that rounds to nearest even as adding and
 * taking away KV_ROUND does, so that both give the same bits. hd a multiple
 * of 16. */
static void TARGET_V4 kv_round_avx512(float *restrict x, int heads, int hd, int8_t *restrict q,
                                      float *restrict sc) {
    const __m512 top = _mm512_set1_ps(KV_MAX), hi = _mm512_set1_ps(127.0f),
                 lo = _mm512_set1_ps(-127.0f);
    for (int h = 0; h < heads; h++) {
        float *p = x + (size_t)h * hd;
        int8_t *o = q + (size_t)h * hd;
        __m512 m = _mm512_setzero_ps();
        for (int j = 0; j < hd; j += 16)
            m = _mm512_max_ps(_mm512_min_ps(_mm512_abs_ps(_mm512_loadu_ps(p + j)), top), m);
        float s = sc[h] = kv_scale_of(_mm512_reduce_max_ps(m));
        __m512 inv = _mm512_set1_ps(kv_inverse(s)), vs = _mm512_set1_ps(s);
        for (int j = 0; j < hd; j += 16) {
            __m512 v = _mm512_mul_ps(_mm512_loadu_ps(p + j), inv);
            __m512i i = _mm512_cvtps_epi32(_mm512_max_ps(_mm512_min_ps(v, hi), lo));
            _mm_storeu_si128((__m128i *)(o + j), _mm512_cvtepi32_epi8(i));
            _mm512_storeu_ps(p + j, _mm512_mul_ps(_mm512_cvtepi32_ps(i), vs));
        }
    }
}

/* The same for AVX2; hd a multiple of 8. */
static void TARGET_V3 kv_round_avx2(float *restrict x, int heads, int hd, int8_t *restrict q,
                                    float *restrict sc) {
    const __m256 top = _mm256_set1_ps(KV_MAX), hi = _mm256_set1_ps(127.0f),
                 lo = _mm256_set1_ps(-127.0f), sign = _mm256_set1_ps(-0.0f);
    for (int h = 0; h < heads; h++) {
        float *p = x + (size_t)h * hd;
        int8_t *o = q + (size_t)h * hd;
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < hd; j += 8)
            m = _mm256_max_ps(_mm256_min_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(p + j)), top),
                              m);
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float s = sc[h] = kv_scale_of(_mm_cvtss_f32(m4));
        __m256 inv = _mm256_set1_ps(kv_inverse(s)), vs = _mm256_set1_ps(s);
        for (int j = 0; j < hd; j += 8) {
            __m256 v = _mm256_mul_ps(_mm256_loadu_ps(p + j), inv);
            __m256i i = _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(v, hi), lo));
            __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
            _mm_storel_epi64((__m128i *)(o + j), _mm_packs_epi16(w, w));
            _mm256_storeu_ps(p + j, _mm256_mul_ps(_mm256_cvtepi32_ps(i), vs));
        }
    }
}
#endif

/* kv_round_portable() in the widest build the CPU runs for head size hd. */
static void kv_round(float *x, int heads, int hd, int8_t *q, float *sc) {
#if MODEL_X86
    int isa = kv_level();
    if (isa == ISA_AVX512 && hd % 16 == 0) return kv_round_avx512(x, heads, hd, q, sc);
    if (isa >= ISA_AVX2 && hd % 8 == 0) return kv_round_avx2(x, heads, hd, q, sc);
#endif
    kv_round_portable(x, heads, hd, q, sc);
}

/* A step's attention: out (d) = softmax(scale q_h . keys_h) @ values_h for
 * every head h of one new position -- qkv (3d): its query, and its key and
 * value as kv_round() leaves them -- that sees the n positions of one layer
 * of a state, keys (H, cap / B, hd, B) and values (cap, d) in 8 bits, their
 * scales ks and vs (H, cap), and itself. att is scratch of
 * H * round_up(n + 1, B) floats, head h's weights at h * round_up(n + 1, B).
 * The new key and value are left for the caller to store. Each head's keys
 * are one run of memory, read block by block, several blocks at once, and
 * the sums scaled per position after; the values are read row by row, whole
 * rows at once, with their scales folded into the weights first, so that
 * the hardware prefetcher streams both. The last block of keys may be
 * partial: its other lanes are zeros, scales too (kv_store()), whose scores
 * are computed and never used. */
typedef void attend_fn(float *restrict out, const float *restrict qkv,
                       const int8_t *restrict keys, const int8_t *restrict values,
                       const float *restrict ks, const float *restrict vs, int cap, int H, int hd,
                       int n, float scale, float *restrict att);

/* GCC's -O2 cost model leaves the portable kernel's loops scalar (they hold
 * a conversion per element); the dynamic one vectorizes them. */
#if defined(__GNUC__) && !defined(__clang__)
#define PORTABLE_KERNEL __attribute__((optimize("vect-cost-model=dynamic")))
#else
#define PORTABLE_KERNEL
#endif

static void PORTABLE_KERNEL attend_portable(float *restrict out, const float *restrict qkv,
                                            const int8_t *restrict keys,
                                            const int8_t *restrict values,
                                            const float *restrict ks, const float *restrict vs,
                                            int cap, int H, int hd, int n, float scale,
                                            float *restrict att) {
    int d = H * hd, S = (int)round_up((size_t)n + 1, KV_B);
    for (int h = 0; h < H; h++) {
        float *a = att + (size_t)h * S;
        const float *q = qkv + h * hd, *kh = ks + (size_t)h * cap, *vh = vs + (size_t)h * cap;
        const int8_t *k = keys + (size_t)h * cap * hd;
        for (int b = 0; b * KV_B < n; b++) {
            const int8_t *blk = k + (size_t)b * hd * KV_B;
            float s[KV_B] = {0};
            for (int j = 0; j < hd; j++)
                for (int t = 0; t < KV_B; t++) s[t] += q[j] * (float)blk[j * KV_B + t];
            for (int t = 0; t < KV_B; t++) a[b * KV_B + t] = s[t] * kh[b * KV_B + t];
        }
        a[n] = dot_forward(q, qkv + d + h * hd, hd);
        softmax_padded(a, n + 1, S, scale);
        for (int t = 0; t < n; t++) a[t] *= vh[t];
        float *o = out + h * hd;
        const float *last = qkv + 2 * d + h * hd;
        for (int i = 0; i < hd; i++) o[i] = a[n] * last[i];
        for (int t = 0; t < n; t++) {
            const int8_t *v = values + (size_t)t * d + h * hd;
            for (int i = 0; i < hd; i++) o[i] += a[t] * (float)v[i];
        }
    }
}

#if MODEL_X86
static inline __attribute__((always_inline)) TARGET_V4 __m512 i8x16_load(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

static inline __attribute__((always_inline)) TARGET_V3 __m256 i8x8_load(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* Needs hd a multiple of 16. */
static void TARGET_V4 attend_avx512(float *restrict out, const float *restrict qkv,
                                    const int8_t *restrict keys, const int8_t *restrict values,
                                    const float *restrict ks, const float *restrict vs, int cap,
                                    int H, int hd, int n, float scale, float *restrict att) {
    int d = H * hd, S = (int)round_up((size_t)n + 1, KV_B), nb = (n + KV_B - 1) / KV_B;
    size_t bs = (size_t)hd * KV_B; /* numbers in a block */
    for (int h = 0; h < H; h++) {
        float *a = att + (size_t)h * S;
        const float *q = qkv + h * hd, *kh = ks + (size_t)h * cap, *vh = vs + (size_t)h * cap;
        const int8_t *k = keys + (size_t)h * cap * hd;
        int b = 0;
        for (; b + 4 <= nb; b += 4) {
            __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
            for (int j = 0; j < hd; j++) {
                const int8_t *r = k + b * bs + (size_t)j * KV_B;
                __m512 qj = _mm512_set1_ps(q[j]);
                s0 = _mm512_fmadd_ps(qj, i8x16_load(r), s0);
                s1 = _mm512_fmadd_ps(qj, i8x16_load(r + bs), s1);
                s2 = _mm512_fmadd_ps(qj, i8x16_load(r + 2 * bs), s2);
                s3 = _mm512_fmadd_ps(qj, i8x16_load(r + 3 * bs), s3);
            }
            const float *c = kh + b * KV_B;
            _mm512_storeu_ps(a + b * KV_B, _mm512_mul_ps(s0, _mm512_loadu_ps(c)));
            _mm512_storeu_ps(a + (b + 1) * KV_B, _mm512_mul_ps(s1, _mm512_loadu_ps(c + 16)));
            _mm512_storeu_ps(a + (b + 2) * KV_B, _mm512_mul_ps(s2, _mm512_loadu_ps(c + 32)));
            _mm512_storeu_ps(a + (b + 3) * KV_B, _mm512_mul_ps(s3, _mm512_loadu_ps(c + 48)));
        }
        for (; b < nb; b++) { /* four chains of adds over rows j mod 4 */
            const int8_t *r = k + b * bs;
            __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
            for (int j = 0; j < hd; j += 4, r += 4 * KV_B) {
                s0 = _mm512_fmadd_ps(_mm512_set1_ps(q[j]), i8x16_load(r), s0);
                s1 = _mm512_fmadd_ps(_mm512_set1_ps(q[j + 1]), i8x16_load(r + KV_B), s1);
                s2 = _mm512_fmadd_ps(_mm512_set1_ps(q[j + 2]), i8x16_load(r + 2 * KV_B), s2);
                s3 = _mm512_fmadd_ps(_mm512_set1_ps(q[j + 3]), i8x16_load(r + 3 * KV_B), s3);
            }
            __m512 s = _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
            _mm512_storeu_ps(a + b * KV_B, _mm512_mul_ps(s, _mm512_loadu_ps(kh + b * KV_B)));
        }
        a[n] = dot_forward(q, qkv + d + h * hd, hd);
        softmax_padded(a, n + 1, S, scale);
        float self = a[n]; /* the lanes to n - 1 take the values' scales, n keeps its own */
        for (int t = 0; t < nb * KV_B; t += 16)
            _mm512_storeu_ps(a + t, _mm512_mul_ps(_mm512_loadu_ps(a + t), _mm512_loadu_ps(vh + t)));
        a[n] = self;
    }
    const float *last = qkv + 2 * d;
    int i = 0;
    for (; i + 64 <= d; i += 64) { /* 4 blocks of 16 columns, rows two at a time */
        const float *w0 = att + (size_t)(i / hd) * S, *w1 = att + (size_t)((i + 16) / hd) * S,
                    *w2 = att + (size_t)((i + 32) / hd) * S,
                    *w3 = att + (size_t)((i + 48) / hd) * S;
        __m512 e0 = _mm512_setzero_ps(), e1 = e0, e2 = e0, e3 = e0, o0 = e0, o1 = e0, o2 = e0,
               o3 = e0;
        int t = 0;
        for (; t + 2 <= n; t += 2) {
            const int8_t *r = values + (size_t)t * d + i, *u = r + d;
            e0 = _mm512_fmadd_ps(_mm512_set1_ps(w0[t]), i8x16_load(r), e0);
            e1 = _mm512_fmadd_ps(_mm512_set1_ps(w1[t]), i8x16_load(r + 16), e1);
            e2 = _mm512_fmadd_ps(_mm512_set1_ps(w2[t]), i8x16_load(r + 32), e2);
            e3 = _mm512_fmadd_ps(_mm512_set1_ps(w3[t]), i8x16_load(r + 48), e3);
            o0 = _mm512_fmadd_ps(_mm512_set1_ps(w0[t + 1]), i8x16_load(u), o0);
            o1 = _mm512_fmadd_ps(_mm512_set1_ps(w1[t + 1]), i8x16_load(u + 16), o1);
            o2 = _mm512_fmadd_ps(_mm512_set1_ps(w2[t + 1]), i8x16_load(u + 32), o2);
            o3 = _mm512_fmadd_ps(_mm512_set1_ps(w3[t + 1]), i8x16_load(u + 48), o3);
        }
        if (t < n) {
            const int8_t *r = values + (size_t)t * d + i;
            e0 = _mm512_fmadd_ps(_mm512_set1_ps(w0[t]), i8x16_load(r), e0);
            e1 = _mm512_fmadd_ps(_mm512_set1_ps(w1[t]), i8x16_load(r + 16), e1);
            e2 = _mm512_fmadd_ps(_mm512_set1_ps(w2[t]), i8x16_load(r + 32), e2);
            e3 = _mm512_fmadd_ps(_mm512_set1_ps(w3[t]), i8x16_load(r + 48), e3);
        }
        o0 = _mm512_fmadd_ps(_mm512_set1_ps(w0[n]), _mm512_loadu_ps(last + i), o0);
        o1 = _mm512_fmadd_ps(_mm512_set1_ps(w1[n]), _mm512_loadu_ps(last + i + 16), o1);
        o2 = _mm512_fmadd_ps(_mm512_set1_ps(w2[n]), _mm512_loadu_ps(last + i + 32), o2);
        o3 = _mm512_fmadd_ps(_mm512_set1_ps(w3[n]), _mm512_loadu_ps(last + i + 48), o3);
        _mm512_storeu_ps(out + i, _mm512_add_ps(e0, o0));
        _mm512_storeu_ps(out + i + 16, _mm512_add_ps(e1, o1));
        _mm512_storeu_ps(out + i + 32, _mm512_add_ps(e2, o2));
        _mm512_storeu_ps(out + i + 48, _mm512_add_ps(e3, o3));
    }
    for (; i < d; i += 16) {
        const float *w = att + (size_t)(i / hd) * S;
        __m512 e = _mm512_mul_ps(_mm512_set1_ps(w[n]), _mm512_loadu_ps(last + i)),
               o = _mm512_setzero_ps();
        int t = 0;
        for (; t + 2 <= n; t += 2) {
            const int8_t *r = values + (size_t)t * d + i;
            e = _mm512_fmadd_ps(_mm512_set1_ps(w[t]), i8x16_load(r), e);
            o = _mm512_fmadd_ps(_mm512_set1_ps(w[t + 1]), i8x16_load(r + d), o);
        }
        if (t < n)
            e = _mm512_fmadd_ps(_mm512_set1_ps(w[t]), i8x16_load(values + (size_t)t * d + i), e);
        _mm512_storeu_ps(out + i, _mm512_add_ps(e, o));
    }
}

/* Needs hd a multiple of 8. */
static void TARGET_V3 attend_avx2(float *restrict out, const float *restrict qkv,
                                  const int8_t *restrict keys, const int8_t *restrict values,
                                  const float *restrict ks, const float *restrict vs, int cap,
                                  int H, int hd, int n, float scale, float *restrict att) {
    int d = H * hd, S = (int)round_up((size_t)n + 1, KV_B), nb = (n + KV_B - 1) / KV_B;
    size_t bs = (size_t)hd * KV_B;
    for (int h = 0; h < H; h++) {
        float *a = att + (size_t)h * S;
        const float *q = qkv + h * hd, *kh = ks + (size_t)h * cap, *vh = vs + (size_t)h * cap;
        const int8_t *k = keys + (size_t)h * cap * hd;
        int b = 0;
        for (; b + 2 <= nb; b += 2) { /* two blocks, each two vectors of 8 */
            __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
            for (int j = 0; j < hd; j++) {
                const int8_t *r = k + b * bs + (size_t)j * KV_B;
                __m256 qj = _mm256_set1_ps(q[j]);
                s0 = _mm256_fmadd_ps(qj, i8x8_load(r), s0);
                s1 = _mm256_fmadd_ps(qj, i8x8_load(r + 8), s1);
                s2 = _mm256_fmadd_ps(qj, i8x8_load(r + bs), s2);
                s3 = _mm256_fmadd_ps(qj, i8x8_load(r + bs + 8), s3);
            }
            const float *c = kh + b * KV_B;
            _mm256_storeu_ps(a + b * KV_B, _mm256_mul_ps(s0, _mm256_loadu_ps(c)));
            _mm256_storeu_ps(a + b * KV_B + 8, _mm256_mul_ps(s1, _mm256_loadu_ps(c + 8)));
            _mm256_storeu_ps(a + (b + 1) * KV_B, _mm256_mul_ps(s2, _mm256_loadu_ps(c + 16)));
            _mm256_storeu_ps(a + (b + 1) * KV_B + 8, _mm256_mul_ps(s3, _mm256_loadu_ps(c + 24)));
        }
        if (b < nb) {
            const int8_t *r = k + b * bs;
            __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
            for (int j = 0; j < hd; j += 2) {
                const int8_t *r0 = r + j * KV_B, *r1 = r0 + KV_B;
                s0 = _mm256_fmadd_ps(_mm256_set1_ps(q[j]), i8x8_load(r0), s0);
                s1 = _mm256_fmadd_ps(_mm256_set1_ps(q[j]), i8x8_load(r0 + 8), s1);
                s2 = _mm256_fmadd_ps(_mm256_set1_ps(q[j + 1]), i8x8_load(r1), s2);
                s3 = _mm256_fmadd_ps(_mm256_set1_ps(q[j + 1]), i8x8_load(r1 + 8), s3);
            }
            const float *c = kh + b * KV_B;
            _mm256_storeu_ps(a + b * KV_B, _mm256_mul_ps(_mm256_add_ps(s0, s2), _mm256_loadu_ps(c)));
            _mm256_storeu_ps(a + b * KV_B + 8,
                             _mm256_mul_ps(_mm256_add_ps(s1, s3), _mm256_loadu_ps(c + 8)));
        }
        a[n] = dot_forward(q, qkv + d + h * hd, hd);
        softmax_padded(a, n + 1, S, scale);
        float self = a[n]; /* the lanes to n - 1 take the values' scales, n keeps its own */
        for (int t = 0; t < nb * KV_B; t += 8)
            _mm256_storeu_ps(a + t, _mm256_mul_ps(_mm256_loadu_ps(a + t), _mm256_loadu_ps(vh + t)));
        a[n] = self;
    }
    const float *last = qkv + 2 * d;
    int i = 0;
    for (; i + 32 <= d; i += 32) { /* 4 blocks of 8 columns, rows two at a time */
        const float *w0 = att + (size_t)(i / hd) * S, *w1 = att + (size_t)((i + 8) / hd) * S,
                    *w2 = att + (size_t)((i + 16) / hd) * S,
                    *w3 = att + (size_t)((i + 24) / hd) * S;
        __m256 e0 = _mm256_setzero_ps(), e1 = e0, e2 = e0, e3 = e0, o0 = e0, o1 = e0, o2 = e0,
               o3 = e0;
        int t = 0;
        for (; t + 2 <= n; t += 2) {
            const int8_t *r = values + (size_t)t * d + i, *u = r + d;
            e0 = _mm256_fmadd_ps(_mm256_set1_ps(w0[t]), i8x8_load(r), e0);
            e1 = _mm256_fmadd_ps(_mm256_set1_ps(w1[t]), i8x8_load(r + 8), e1);
            e2 = _mm256_fmadd_ps(_mm256_set1_ps(w2[t]), i8x8_load(r + 16), e2);
            e3 = _mm256_fmadd_ps(_mm256_set1_ps(w3[t]), i8x8_load(r + 24), e3);
            o0 = _mm256_fmadd_ps(_mm256_set1_ps(w0[t + 1]), i8x8_load(u), o0);
            o1 = _mm256_fmadd_ps(_mm256_set1_ps(w1[t + 1]), i8x8_load(u + 8), o1);
            o2 = _mm256_fmadd_ps(_mm256_set1_ps(w2[t + 1]), i8x8_load(u + 16), o2);
            o3 = _mm256_fmadd_ps(_mm256_set1_ps(w3[t + 1]), i8x8_load(u + 24), o3);
        }
        if (t < n) {
            const int8_t *r = values + (size_t)t * d + i;
            e0 = _mm256_fmadd_ps(_mm256_set1_ps(w0[t]), i8x8_load(r), e0);
            e1 = _mm256_fmadd_ps(_mm256_set1_ps(w1[t]), i8x8_load(r + 8), e1);
            e2 = _mm256_fmadd_ps(_mm256_set1_ps(w2[t]), i8x8_load(r + 16), e2);
            e3 = _mm256_fmadd_ps(_mm256_set1_ps(w3[t]), i8x8_load(r + 24), e3);
        }
        o0 = _mm256_fmadd_ps(_mm256_set1_ps(w0[n]), _mm256_loadu_ps(last + i), o0);
        o1 = _mm256_fmadd_ps(_mm256_set1_ps(w1[n]), _mm256_loadu_ps(last + i + 8), o1);
        o2 = _mm256_fmadd_ps(_mm256_set1_ps(w2[n]), _mm256_loadu_ps(last + i + 16), o2);
        o3 = _mm256_fmadd_ps(_mm256_set1_ps(w3[n]), _mm256_loadu_ps(last + i + 24), o3);
        _mm256_storeu_ps(out + i, _mm256_add_ps(e0, o0));
        _mm256_storeu_ps(out + i + 8, _mm256_add_ps(e1, o1));
        _mm256_storeu_ps(out + i + 16, _mm256_add_ps(e2, o2));
        _mm256_storeu_ps(out + i + 24, _mm256_add_ps(e3, o3));
    }
    for (; i < d; i += 8) {
        const float *w = att + (size_t)(i / hd) * S;
        __m256 e = _mm256_mul_ps(_mm256_set1_ps(w[n]), _mm256_loadu_ps(last + i)),
               o = _mm256_setzero_ps();
        int t = 0;
        for (; t + 2 <= n; t += 2) {
            const int8_t *r = values + (size_t)t * d + i;
            e = _mm256_fmadd_ps(_mm256_set1_ps(w[t]), i8x8_load(r), e);
            o = _mm256_fmadd_ps(_mm256_set1_ps(w[t + 1]), i8x8_load(r + d), o);
        }
        if (t < n)
            e = _mm256_fmadd_ps(_mm256_set1_ps(w[t]), i8x8_load(values + (size_t)t * d + i), e);
        _mm256_storeu_ps(out + i, _mm256_add_ps(e, o));
    }
}
#endif

/* The widest attention kernel the CPU runs for head size hd. */
static attend_fn *kv_attend_kernel(int hd) {
#if MODEL_X86
    int isa = kv_level();
    if (isa == ISA_AVX512 && hd % 16 == 0) return attend_avx512;
    if (isa >= ISA_AVX2 && hd % 8 == 0) return attend_avx2;
#endif
    (void)hd;
    return attend_portable;
}

/* out (dim) += mean of attr_emb over rows[0..n), computed apart so that every
 * caller adds the very same vector. */
static void attrmean_forward(const model *m, const int32_t *rows, int n, float *out) {
    if (n <= 0) return;
    int d = m->config.dim;
    const float *emb = m->weights.attr_emb;
    for (int i0 = 0; i0 < d; i0 += 64) { /* rows added in order, 64 columns at a time */
        int c = d - i0 < 64 ? d - i0 : 64;
        float s[64] = {0};
        for (int r = 0; r < n; r++) {
            const float *e = emb + (size_t)rows[r] * d + i0;
            for (int i = 0; i < c; i++) s[i] += e[i];
        }
        for (int i = 0; i < c; i++) out[i0 + i] += s[i] / n;
    }
}

/* out (dim) = the input vector of token t: item vector + attribute mean +
 * type. An unknown item's vector is its attribute mean (model_embed_unknown). */
static void embed_forward(const model *m, const model_token *t, float *out) {
    int d = m->config.dim;
    const model_weights *w = &m->weights;
    if (t->item >= 0) {
        memcpy(out, w->item_emb + (size_t)t->item * d, (size_t)d * sizeof *out);
        int32_t lo = m->attr_off[t->item], hi = m->attr_off[t->item + 1];
        attrmean_forward(m, m->attr_rows + lo, hi - lo, out);
    } else {
        memset(out, 0, (size_t)d * sizeof *out);
        attrmean_forward(m, t->attrs, t->n_attrs, out);
        for (int i = 0; i < d; i++) out[i] += out[i];
    }
    const float *ty = w->type_emb + (size_t)t->type * d;
    for (int i = 0; i < d; i++) out[i] += ty[i];
}

/* Asks for the embedding rows of n tokens before they are summed: a step's
 * users bring rows scattered over tables that the states' streaming has
 * pushed out of the caches, and summing token by token would wait for each
 * row in turn. Three rounds, as each finds where the next rows are. */
static void embed_prefetch(const model *m, const model_token *t, int n) {
    size_t d = (size_t)m->config.dim, row = d * sizeof(float);
    const char *items = (const char *)m->weights.item_emb;
    const char *attrs = (const char *)m->weights.attr_emb;
    for (int i = 0; i < n; i++)
        if (t[i].item >= 0) {
            for (size_t o = 0; o < row; o += 64) __builtin_prefetch(items + t[i].item * row + o);
            __builtin_prefetch(m->attr_off + t[i].item);
        }
    for (int i = 0; i < n; i++)
        if (t[i].item >= 0) __builtin_prefetch(m->attr_rows + m->attr_off[t[i].item]);
    for (int i = 0; i < n; i++) {
        const int32_t *rows = t[i].attrs;
        int k = t[i].n_attrs;
        if (t[i].item >= 0) {
            rows = m->attr_rows + m->attr_off[t[i].item];
            k = m->attr_off[t[i].item + 1] - m->attr_off[t[i].item];
        }
        for (int a = 0; a < k; a++)
            for (size_t o = 0; o < row; o += 64) __builtin_prefetch(attrs + rows[a] * row + o);
    }
}

/* Layer l's key scales, (H, cap), and its value scales. */
static float *kv_key_scales(const model_kv *kv, int l) {
    return kv->scale + (size_t)l * kv->n_heads * kv->cap;
}
static float *kv_value_scales(const model_kv *kv, int l) {
    return kv->scale + (size_t)(kv->n_layers + l) * kv->n_heads * kv->cap;
}

/* Stores position pos's key and value, as kv_round() quantized them -- q
 * (2 dim: the key's heads, then the value's) and sc (2 H) -- in layer l of kv,
 * whose capacity holds pos. A position that starts a block of keys clears the
 * block and its scales, keys' and values', first: the lanes of positions not
 * yet held are zeros, never garbage, when a step computes a whole block. */
static void kv_store(model_kv *kv, int l, int pos, const int8_t *q, const float *sc) {
    int d = kv->dim, H = kv->n_heads, hd = d / H;
    size_t head = (size_t)kv->cap * hd; /* numbers in one head's keys */
    int8_t *keys = kv->key + (size_t)l * H * head + (size_t)(pos / KV_B) * hd * KV_B;
    float *ks = kv_key_scales(kv, l) + pos, *vs = kv_value_scales(kv, l) + pos;
    if (pos % KV_B == 0)
        for (int h = 0; h < H; h++) {
            memset(keys + h * head, 0, (size_t)hd * KV_B);
            memset(ks + (size_t)h * kv->cap, 0, KV_B * sizeof *ks);
            memset(vs + (size_t)h * kv->cap, 0, KV_B * sizeof *vs);
        }
    keys += pos % KV_B;
    for (int h = 0; h < H; h++) {
        int8_t *k = keys + h * head;
        for (int j = 0; j < hd; j++) k[(size_t)j * KV_B] = q[h * hd + j];
        ks[(size_t)h * kv->cap] = sc[h];
        vs[(size_t)h * kv->cap] = sc[H + h];
    }
    memcpy(kv->value + ((size_t)l * kv->cap + pos) * d, q + d, (size_t)d);
}

/* Widens the first n positions of layer l of kv to float rows: keys (n, dim)
 * and values (n, dim), each integer times its scale, as kv_round() gave them. */
static void kv_widen_rows(const model_kv *kv, int l, int n, float *keys, float *values) {
    int d = kv->dim, H = kv->n_heads, hd = d / H;
    size_t head = (size_t)kv->cap * hd;
    const int8_t *k = kv->key + (size_t)l * H * head, *v = kv->value + (size_t)l * kv->cap * d;
    const float *ks = kv_key_scales(kv, l), *vs = kv_value_scales(kv, l);
    for (int h = 0; h < H; h++)
        for (int p = 0; p < n; p++) {
            const int8_t *blk = k + h * head + (size_t)(p / KV_B) * hd * KV_B + p % KV_B;
            float s = ks[(size_t)h * kv->cap + p], t = vs[(size_t)h * kv->cap + p];
            float *kr = keys + (size_t)p * d + h * hd, *vr = values + (size_t)p * d + h * hd;
            const int8_t *vq = v + (size_t)p * d + h * hd;
            for (int j = 0; j < hd; j++) kr[j] = (float)blk[j * KV_B] * s;
            for (int j = 0; j < hd; j++) vr[j] = (float)vq[j] * t;
        }
}

/* The capacity for `positions` positions: the first of B, 2 B, 4 B, ... that
 * holds them, at most the window rounded up to B; 0 for none. */
static int kv_cap_for(int window, int positions) {
    int max = (int)round_up((size_t)window, KV_B), cap = KV_B;
    if (positions <= 0) return 0;
    while (cap < positions && cap < max) cap *= 2;
    return cap < max ? cap : max;
}

/* The header, then the scales (float) and the keys and values (a byte each)
 * of cap positions. */
static size_t kv_bytes_for(int n_layers, int dim, int n_heads, int cap) {
    return 64 + 2 * (size_t)n_layers * cap * (dim + n_heads * sizeof(float));
}

/* Makes room in kv for `positions` positions, moving what it holds into
 * arrays of the next capacity when it has too little. Returns 0, or -1 when
 * memory runs out (kv unchanged). Geometric growth keeps the copying to a
 * constant per position; a state reset keeps its arrays. */
static int kv_reserve(model_kv *kv, int positions) {
    if (positions <= kv->cap) return 0;
    int cap = kv_cap_for(kv->window, positions), d = kv->dim, H = kv->n_heads, hd = d / H;
    int L = kv->n_layers;
    size_t per = (size_t)L * cap * d, scales = 2 * (size_t)L * H * cap;
    /* cap is a multiple of 16: every array starts 64-byte aligned */
    float *scale = aligned_alloc(64, scales * sizeof *scale + 2 * per);
    if (!scale) return -1;
    int8_t *key = (int8_t *)(scale + scales), *value = key + per;
    size_t held = round_up((size_t)kv->n, KV_B); /* positions of the blocks held */
    for (int lh = 0; kv->n && lh < L * H; lh++)
        memcpy(key + (size_t)lh * cap * hd, kv->key + (size_t)lh * kv->cap * hd, held * hd);
    for (int lh = 0; kv->n && lh < 2 * L * H; lh++) /* keys' scales, then values' */
        memcpy(scale + (size_t)lh * cap, kv->scale + (size_t)lh * kv->cap,
               held * sizeof *scale);
    for (int l = 0; kv->n && l < L; l++)
        memcpy(value + (size_t)l * cap * d, kv->value + (size_t)l * kv->cap * d,
               (size_t)kv->n * d);
    free(kv->scale);
    kv->scale = scale;
    kv->key = key;
    kv->value = value;
    kv->cap = cap;
    kv->bytes = kv_bytes_for(L, d, H, cap);
    return 0;
}

/* Causal self-attention of layer l for one user whose n new positions are
 * rows [row, row + n) of rs->qkv, written to the same rows of rs->atty.
 * Each new key (rotated) and value is first quantized (kv_round()), with or
 * without a state. With a KV state, they are stored in it (positions
 * kv->n..., within its capacity) and the queries attend to everything it
 * holds; without one, positions count from 0 and the queries attend to
 * these rows alone. kv->n itself is the caller's to advance. */
static void attention_forward(const model *m, model_runstate *rs, int l, model_kv *kv, int row,
                              int n) {
    const model_config *c = &m->config;
    int d = c->dim, H = c->n_heads, hd = d / H;
    int n0 = kv ? kv->n : 0, T = n0 + n;  /* T: the keys the last new position sees */
    float *qkv = rs->qkv + (size_t)row * 3 * d;
    for (int i = 0; i < n; i++) {
        float *r = qkv + (size_t)i * 3 * d;
        rope_forward(m, r, n0 + i);
        /* the key and the value, side by side */
        kv_round(r + d, 2 * H, hd, rs->kvq + (size_t)(row + i) * 2 * d,
                 rs->kvs + (size_t)(row + i) * 2 * H);
    }
    float scale = 1.0f / sqrtf((float)hd);
    float *atty = rs->atty + (size_t)row * d;

    if (kv && n == 1) {
        /* A step: one query against the state, a product too small for sgemm */
        size_t layer = (size_t)l * kv->cap * d;
        kv_attend_kernel(hd)(atty, qkv, kv->key + layer, kv->value + layer, kv_key_scales(kv, l),
                             kv_value_scales(kv, l), kv->cap, H, hd, n0, scale, rs->att);
        kv_store(kv, l, n0, rs->kvq + (size_t)row * 2 * d, rs->kvs + (size_t)row * 2 * H);
        return;
    }
    /* keys and values (T, d), rows ld apart: these rows' own, or the state's
     * positions widened to float followed by these rows' */
    const float *keys = qkv + d, *values = qkv + 2 * d;
    int ld = 3 * d;
    if (n0 > 0) {
        float *kf = rs->kvf, *vf = rs->kvf + (size_t)c->window * d;
        kv_widen_rows(kv, l, n0, kf, vf);
        for (int i = 0; i < n; i++) {
            memcpy(kf + (size_t)(n0 + i) * d, qkv + (size_t)i * 3 * d + d, (size_t)d * sizeof *kf);
            memcpy(vf + (size_t)(n0 + i) * d, qkv + (size_t)i * 3 * d + 2 * d,
                   (size_t)d * sizeof *vf);
        }
        keys = kf, values = vf, ld = d;
    }
    for (int h = 0; h < H; h++) {
        /* att (n, T) = q_h (n, hd) @ k_h^T, then the causal softmax per row */
        matmul(rs->att, qkv + h * hd, keys + h * hd, n, T, hd, 3 * d, ld, T, 1, 0.0f);
        for (int i = 0; i < n; i++) softmax_forward(rs->att + (size_t)i * T, n0 + i + 1, T, scale);
        /* atty_h (n, hd) = att (n, T) @ v_h (T, hd) */
        matmul(atty + h * hd, rs->att, values + h * hd, n, hd, T, T, ld, d, 0, 0.0f);
    }
    if (kv)
        for (int i = row; i < row + n; i++)
            kv_store(kv, l, n0 + i - row, rs->kvq + (size_t)i * 2 * d, rs->kvs + (size_t)i * 2 * H);
}

/* The L blocks over rows [0, R) of rs->x: n_users users of R / n_users new
 * positions each, user u's in consecutive rows from u * (R / n_users). User u
 * attends through kvs[u], which gains its positions; with kvs NULL (one
 * user) nothing is cached. The residual stream is left in rs->x. */
static void blocks_forward(const model *m, model_runstate *rs, int R, model_kv *const *kvs,
                           int n_users) {
    const model_config *c = &m->config;
    const model_weights *w = &m->weights;
    int d = c->dim, hid = c->hidden, per_user = R / n_users;
    for (int l = 0; l < c->n_layers; l++) {
        layernorm_forward(rs->xb, rs->x, w->ln1_w + l * d, w->ln1_b + l * d, R, d);
        matmul_forward(rs->qkv, rs->xb, w->wqkv + (size_t)l * d * 3 * d, w->bqkv + l * 3 * d, R,
                       d, 3 * d);
        for (int u = 0; u < n_users; u++)
            attention_forward(m, rs, l, kvs ? kvs[u] : NULL, u * per_user, per_user);
        matmul_forward(rs->xb2, rs->atty, w->wo + (size_t)l * d * d, w->bo + l * d, R, d, d);
        residual_forward(rs->x, rs->xb2, (size_t)R * d);

        layernorm_forward(rs->xb, rs->x, w->ln2_w + l * d, w->ln2_b + l * d, R, d);
        matmul_forward(rs->hb, rs->xb, w->w1 + (size_t)l * d * hid, w->b1 + (size_t)l * hid, R, d,
                       hid);
        gelu_forward(rs->hb, (size_t)R * hid);
        matmul_forward(rs->xb2, rs->hb, w->w2 + (size_t)l * hid * d, w->b2 + l * d, R, hid, d);
        residual_forward(rs->x, rs->xb2, (size_t)R * d);
    }
    if (kvs)
        for (int u = 0; u < n_users; u++) kvs[u]->n += per_user;
}

/* ---------------------------------------------------------------------------
 * passes */

static int token_check(const model *m, const model_token *t, char *errstr, size_t errlen) {
    const model_config *c = &m->config;
    if (t->type < 0 || t->type >= c->n_types)
        return util_err(errstr, errlen, "event type %d is not one of the model's %d", t->type,
                        c->n_types);
    if (t->item < -1 || t->item >= c->n_items)
        return util_err(errstr, errlen, "item row %d is out of range (%d items)", t->item,
                        c->n_items);
    if (t->item == -1) {
        if (t->n_attrs < 0 || (t->n_attrs > 0 && !t->attrs))
            return util_err(errstr, errlen, "unknown item with %d attributes and no rows",
                            t->n_attrs);
        for (int i = 0; i < t->n_attrs; i++)
            if (t->attrs[i] < 0 || t->attrs[i] >= c->n_attrs)
                return util_err(errstr, errlen, "attribute row %d is out of range (%d attributes)",
                                t->attrs[i], c->n_attrs);
    }
    return 0;
}

static int kv_check(const model *m, const model_kv *kv, int n, char *errstr, size_t errlen) {
    if (kv->model_tag != m->checksum)
        return util_err(errstr, errlen, "KV state was computed with another model: rebuild it");
    if (kv->n + n > m->config.window)
        return util_err(errstr, errlen,
                        "KV state holds %d of %d positions, no room for %d more: rebuild it "
                        "(model_window_positions)",
                        kv->n, m->config.window, n);
    return 0;
}

int model_step(const model *m, model_runstate *rs, model_kv *const *kvs,
               const model_token *tokens, int B, float *h_out, char *errstr, size_t errlen) {
    if (B < 1 || B > rs->max_batch)
        return util_err(errstr, errlen, "batch of %d users, the run state takes 1 to %d", B,
                        rs->max_batch);
    for (int b = 0; b < B; b++) {
        if (token_check(m, &tokens[b], errstr, errlen) < 0 ||
            kv_check(m, kvs[b], 1, errstr, errlen) < 0)
            return -1;
        for (int b2 = 0; b2 < b; b2++)
            if (kvs[b2] == kvs[b])
                return util_err(errstr, errlen, "the same KV state twice in one step");
    }
    for (int b = 0; b < B; b++)
        if (kv_reserve(kvs[b], kvs[b]->n + 1) < 0) return util_err(errstr, errlen, "out of memory");
    int d = m->config.dim;
    embed_prefetch(m, tokens, B);
    for (int b = 0; b < B; b++) embed_forward(m, &tokens[b], rs->x + (size_t)b * d);
    blocks_forward(m, rs, B, kvs, B);
    layernorm_forward(h_out, rs->x, m->weights.lnf_w, m->weights.lnf_b, B, d);
    return 0;
}

/* Embeds tokens[0..n) into rs->x after checking them and n. */
static int sequence_embed(const model *m, model_runstate *rs, const model_token *tokens, int n,
                          char *errstr, size_t errlen) {
    if (n < 1 || n > m->config.window) /* rs->rows >= window */
        return util_err(errstr, errlen, "%d positions at once, the model takes 1 to %d", n,
                        m->config.window);
    for (int i = 0; i < n; i++)
        if (token_check(m, &tokens[i], errstr, errlen) < 0) return -1;
    for (int i = 0; i < n; i++) embed_forward(m, &tokens[i], rs->x + (size_t)i * m->config.dim);
    return 0;
}

int model_prefill(const model *m, model_runstate *rs, model_kv *kv, const model_token *tokens,
                  int n, float *h_out, char *errstr, size_t errlen) {
    if (kv_check(m, kv, n, errstr, errlen) < 0 ||
        sequence_embed(m, rs, tokens, n, errstr, errlen) < 0)
        return -1;
    if (kv_reserve(kv, kv->n + n) < 0) return util_err(errstr, errlen, "out of memory");
    blocks_forward(m, rs, n, &kv, 1);
    int d = m->config.dim;
    if (h_out)
        layernorm_forward(h_out, rs->x + (size_t)(n - 1) * d, m->weights.lnf_w, m->weights.lnf_b,
                          1, d);
    return 0;
}

int model_forward_full(const model *m, model_runstate *rs, const model_token *tokens, int n,
                       float *h_out, char *errstr, size_t errlen) {
    if (sequence_embed(m, rs, tokens, n, errstr, errlen) < 0) return -1;
    blocks_forward(m, rs, n, NULL, 1);
    int d = m->config.dim;
    layernorm_forward(h_out, rs->x + (size_t)(n - 1) * d, m->weights.lnf_w, m->weights.lnf_b, 1,
                      d);
    return 0;
}

int model_window_positions(const model *m, uint64_t n_events) {
    uint64_t W = (uint64_t)m->config.window, half = W / 2;
    if (n_events <= W) return (int)n_events;
    /* A rebuild leaves half; steps refill to W; the next event rebuilds. */
    return (int)(half + (n_events - W - 1) % (W - half + 1));
}

int model_embed_unknown(const model *m, const int32_t *attr_rows, int n, float *out) {
    for (int i = 0; i < n; i++)
        if (attr_rows[i] < 0 || attr_rows[i] >= m->config.n_attrs) return -1;
    memset(out, 0, (size_t)m->config.dim * sizeof *out);
    attrmean_forward(m, attr_rows, n, out);
    return 0;
}

void model_score(const model *m, const float *h, int B, float *scores) {
    model_score_rows(m, h, B, m->weights.item_emb, m->config.n_items, scores);
}

void model_score_rows(const model *m, const float *h, int B, const float *rows, int n,
                      float *scores) {
    int d = m->config.dim;
    matmul(scores, h, rows, B, n, d, d, d, n, 1, 0.0f);
}

/* Heap order for the top k: is row a a worse pick than row b? */
static int topk_worse(const float *s, int32_t a, int32_t b) {
    return s[a] < s[b] || (s[a] == s[b] && a > b);
}

static void topk_sift_down(const float *s, int32_t *heap, int n, int i) {
    for (;;) {
        int worst = i, l = 2 * i + 1, r = l + 1;
        if (l < n && topk_worse(s, heap[l], heap[worst])) worst = l;
        if (r < n && topk_worse(s, heap[r], heap[worst])) worst = r;
        if (worst == i) return;
        int32_t t = heap[i];
        heap[i] = heap[worst];
        heap[worst] = t;
        i = worst;
    }
}

int model_topk(const float *scores, int n, int k, model_skip_fn skip, void *ctx,
               int32_t *rows_out, float *scores_out) {
    /* rows_out is a heap with the worst pick at the root; rows arrive in
     * ascending order, so an equal score never displaces a pick. */
    int count = 0;
    for (int32_t r = 0; r < n && k > 0; r++) {
        float s = scores[r];
        if (s != s) continue; /* NaN */
        if (count == k && !(s > scores[rows_out[0]])) continue;
        if (skip && skip(ctx, r)) continue;
        if (count < k) {
            int i = count++;
            rows_out[i] = r;
            while (i > 0 && topk_worse(scores, rows_out[i], rows_out[(i - 1) / 2])) {
                int32_t t = rows_out[i];
                rows_out[i] = rows_out[(i - 1) / 2];
                rows_out[(i - 1) / 2] = t;
                i = (i - 1) / 2;
            }
        } else {
            rows_out[0] = r;
            topk_sift_down(scores, rows_out, count, 0);
        }
    }
    /* Heap sort: moving the worst to the end each time leaves the best first. */
    for (int end = count - 1; end > 0; end--) {
        int32_t t = rows_out[0];
        rows_out[0] = rows_out[end];
        rows_out[end] = t;
        topk_sift_down(scores, rows_out, end, 0);
    }
    if (scores_out)
        for (int i = 0; i < count; i++) scores_out[i] = scores[rows_out[i]];
    return count;
}

/* ---------------------------------------------------------------------------
 * run and KV states */

model_runstate *model_runstate_new(const model *m, int max_batch) {
    const model_config *c = &m->config;
    if (max_batch < 1) return NULL;
    model_runstate *rs = calloc(1, sizeof *rs);
    if (!rs) return NULL;
    size_t R = (size_t)(max_batch > c->window ? max_batch : c->window), d = c->dim;
    size_t W = c->window, att = W * W, step_att = c->n_heads * round_up(W + 1, KV_B);
    if (step_att > att) att = step_att;
    size_t floats = R * (7 * d + c->hidden) + att + 2 * W * d + R * 2 * c->n_heads +
                    (R * 2 * d + sizeof(float) - 1) / sizeof(float);
    if (!(rs->act_mem = calloc(floats, sizeof(float)))) {
        free(rs);
        return NULL;
    }
    rs->rows = (int)R;
    rs->max_batch = max_batch;
    float *p = rs->act_mem;
    rs->x = p, p += R * d;
    rs->xb = p, p += R * d;
    rs->xb2 = p, p += R * d;
    rs->qkv = p, p += R * 3 * d;
    rs->atty = p, p += R * d;
    rs->hb = p, p += R * c->hidden;
    rs->att = p, p += att;
    rs->kvf = p, p += 2 * W * d;
    rs->kvs = p, p += R * 2 * c->n_heads;
    rs->kvq = (int8_t *)p;
    return rs;
}

void model_runstate_free(model_runstate *rs) {
    if (!rs) return;
    free(rs->act_mem);
    free(rs);
}

/* The header is an allocation of 64 bytes, as charged. */
_Static_assert(sizeof(model_kv) <= 64, "model_kv header must fit in 64 bytes");

size_t model_kv_bytes(const model_config *c) {
    return kv_bytes_for(c->n_layers, c->dim, c->n_heads, kv_cap_for(c->window, c->window));
}

size_t model_kv_bytes_at(const model_config *c, int positions) {
    return kv_bytes_for(c->n_layers, c->dim, c->n_heads, kv_cap_for(c->window, positions));
}

model_kv *model_kv_new(const model *m) {
    const model_config *c = &m->config;
    model_kv *kv = aligned_alloc(64, 64);
    if (!kv) return NULL;
    memset(kv, 0, 64);
    kv->bytes = kv_bytes_for(c->n_layers, c->dim, c->n_heads, 0);
    kv->window = c->window;
    kv->n_layers = c->n_layers;
    kv->dim = c->dim;
    kv->n_heads = c->n_heads;
    kv->model_tag = m->checksum;
    return kv;
}

void model_kv_free(model_kv *kv) {
    if (!kv) return;
    free(kv->scale); /* the keys and values share its allocation */
    free(kv);
}

int model_kv_reset(const model *m, model_kv *kv) {
    /* The same shape keeps every index in bounds. */
    const model_config *c = &m->config;
    if (kv->window != c->window || kv->n_layers != c->n_layers || kv->dim != c->dim ||
        kv->n_heads != c->n_heads)
        return -1;
    kv->model_tag = m->checksum;
    kv->n = 0;
    return 0;
}

int model_kv_position(const model_kv *kv, int l, int pos, float *key, float *value) {
    if (l < 0 || l >= kv->n_layers || pos < 0 || pos >= kv->n) return -1;
    int d = kv->dim, hd = d / kv->n_heads;
    size_t head = (size_t)kv->cap * hd;
    const float *ks = kv_key_scales(kv, l), *vs = kv_value_scales(kv, l);
    for (int i = 0; i < d; i++)
        key[i] = (float)kv->key[(size_t)l * kv->n_heads * head + (i / hd) * head +
                                (size_t)(pos / KV_B) * hd * KV_B + (size_t)(i % hd) * KV_B +
                                pos % KV_B] *
                 ks[(size_t)(i / hd) * kv->cap + pos];
    for (int i = 0; i < d; i++)
        value[i] = (float)kv->value[((size_t)l * kv->cap + pos) * d + i] *
                   vs[(size_t)(i / hd) * kv->cap + pos];
    return 0;
}

/* ---------------------------------------------------------------------------
 * the model file */

const model_config *model_get_config(const model *m) { return &m->config; }
const model_weights *model_get_weights(const model *m) { return &m->weights; }
const char *model_version(const model *m) { return m->version; }
uint64_t model_checksum(const model *m) { return m->checksum; }

static int rowtab_init(rowtab *t, const uint64_t *hashes, int n) {
    size_t cap = 2;
    while (cap < 2 * (size_t)n) cap *= 2;
    t->mask = cap - 1;
    t->keys = calloc(cap, sizeof *t->keys);
    t->rows = malloc(cap * sizeof *t->rows);
    if (!t->keys || !t->rows) return -1;
    memset(t->rows, 0xff, cap * sizeof *t->rows); /* all -1 */
    for (int r = 0; r < n; r++) {
        size_t i = hashes[r] & t->mask;
        while (t->rows[i] >= 0) {
            if (t->keys[i] == hashes[r]) return r + 1; /* a duplicate: 1 + its row */
            i = (i + 1) & t->mask;
        }
        t->keys[i] = hashes[r];
        t->rows[i] = r;
    }
    return 0;
}

static void rowtab_free(rowtab *t) {
    free(t->keys);
    free(t->rows);
}

static int32_t rowtab_get(const rowtab *t, uint64_t h) {
    for (size_t i = h & t->mask;; i = (i + 1) & t->mask)
        if (t->rows[i] < 0 || t->keys[i] == h) return t->rows[i];
}

int32_t model_item_row(const model *m, uint64_t item_hash) {
    return rowtab_get(&m->items, item_hash);
}

int32_t model_attr_row(const model *m, uint64_t attr_hash) {
    return rowtab_get(&m->attrs, attr_hash);
}

const char *model_item_id(const model *m, int32_t row) { return m->item_ids[row]; }
uint64_t model_item_hash(const model *m, int32_t row) { return m->item_hash[row]; }

const int32_t *model_item_attrs(const model *m, int32_t row, int *n) {
    *n = m->attr_off[row + 1] - m->attr_off[row];
    return m->attr_rows + m->attr_off[row];
}

static int config_check(const model_config *c, char *errstr, size_t errlen) {
    /* Bounds keep every size product far from overflowing 64 bits. */
    struct { const char *name; int v, lo, hi; } f[] = {
        {"dim", c->dim, 2, 1 << 16},          {"n_layers", c->n_layers, 1, 1 << 10},
        {"n_heads", c->n_heads, 1, 1 << 10},  {"window", c->window, 2, 1 << 16},
        {"hidden", c->hidden, 1, 1 << 20},    {"n_items", c->n_items, 1, 1 << 28},
        {"n_attrs", c->n_attrs, 0, 1 << 28},  {"n_types", c->n_types, 1, 1 << 16},
    };
    for (size_t i = 0; i < UTIL_ARRAY_LEN(f); i++)
        if (f[i].v < f[i].lo || f[i].v > f[i].hi)
            return util_err(errstr, errlen, "%s is %d, must be %d to %d", f[i].name, f[i].v,
                            f[i].lo, f[i].hi);
    if (c->dim % c->n_heads || (c->dim / c->n_heads) % 2)
        return util_err(errstr, errlen, "dim %d over %d heads must give an even head size",
                        c->dim, c->n_heads);
    return 0;
}

/* The tensors in file order: where each one's pointer goes and its floats. */
static int weights_list(model_weights *w, const model_config *c, float ***slot, size_t *count) {
    size_t d = c->dim, L = c->n_layers, hid = c->hidden;
    float **s[] = {&w->item_emb, &w->attr_emb, &w->type_emb, &w->ln1_w, &w->ln1_b, &w->wqkv,
                   &w->bqkv,     &w->wo,       &w->bo,       &w->ln2_w, &w->ln2_b, &w->w1,
                   &w->b1,       &w->w2,       &w->b2,       &w->lnf_w, &w->lnf_b};
    size_t n[] = {c->n_items * d, c->n_attrs * d, c->n_types * d, L * d,  L * d, L * d * 3 * d,
                  L * 3 * d,      L * d * d,      L * d,          L * d,  L * d, L * d * hid,
                  L * hid,        L * hid * d,    L * d,          d,      d};
    _Static_assert(sizeof s / sizeof s[0] == sizeof n / sizeof n[0], "one count per tensor");
    memcpy(slot, s, sizeof s);
    memcpy(count, n, sizeof n);
    return (int)UTIL_ARRAY_LEN(s);
}

#define MODEL_N_TENSORS 17

/* Points w's tensors into base (when not NULL), each starting at a multiple
 * of align floats; returns the floats the tensors span. */
static size_t weights_layout(model_weights *w, const model_config *c, float *base, size_t align) {
    model_weights scratch;
    float **slot[MODEL_N_TENSORS];
    size_t count[MODEL_N_TENSORS], at = 0;
    int n = weights_list(w ? w : &scratch, c, slot, count);
    for (int i = 0; i < n; i++) {
        at = (at + align - 1) / align * align;
        if (base) *slot[i] = base + at;
        at += count[i];
    }
    return at;
}

size_t model_weights_point(model_weights *w, const model_config *c, float *flat) {
    return weights_layout(w, c, flat, 1);
}

static size_t align_up(size_t n) { return (n + MODEL_ALIGN - 1) / MODEL_ALIGN * MODEL_ALIGN; }

/* Reads n strings (u32 length, bytes, NUL) from the map at *pos. */
static int read_ids(model *m, size_t *pos, int n, const char **ids, uint64_t *hashes) {
    for (int i = 0; i < n; i++) {
        uint32_t len;
        if (buf_get_u32le(m->map, m->map_len, pos, &len) < 0 || len >= m->map_len - *pos ||
            m->map[*pos + len] != '\0')
            return -1;
        const char *s = (const char *)m->map + *pos;
        if (ids) ids[i] = s;
        hashes[i] = util_hash_bytes(s, len);
        *pos += (size_t)len + 1;
    }
    return 0;
}

/* The tables after the tensors, from pos (a multiple of 64): item ids,
 * attribute ids, then at the next multiple of 64 the item -> attribute rows
 * index, which ends the file. */
static int tables_parse(model *m, size_t pos, char *errstr, size_t errlen) {
    const model_config *c = &m->config;
    uint64_t *attr_hash = NULL;
    int dup;
    m->item_ids = malloc((size_t)c->n_items * sizeof *m->item_ids);
    m->item_hash = malloc((size_t)c->n_items * sizeof *m->item_hash);
    attr_hash = malloc(((size_t)c->n_attrs + 1) * sizeof *attr_hash);
    if (!m->item_ids || !m->item_hash || !attr_hash) {
        util_err(errstr, errlen, "out of memory");
        goto err;
    }
    if (read_ids(m, &pos, c->n_items, m->item_ids, m->item_hash) < 0 ||
        read_ids(m, &pos, c->n_attrs, NULL, attr_hash) < 0) {
        util_err(errstr, errlen, "malformed id table near byte %zu", pos);
        goto err;
    }
    pos = align_up(pos);
    size_t n_off = (size_t)c->n_items + 1;
    if (pos > m->map_len || (m->map_len - pos) / 4 < n_off) {
        util_err(errstr, errlen, "item attribute index runs past the end");
        goto err;
    }
    m->attr_off = (const int32_t *)(m->map + pos);
    m->attr_rows = m->attr_off + n_off;
    size_t n_rows = (m->map_len - pos) / 4 - n_off;
    if (m->attr_off[0] != 0 || (size_t)m->attr_off[c->n_items] != n_rows ||
        pos + 4 * (n_off + n_rows) != m->map_len) {
        util_err(errstr, errlen, "item attribute index does not span the rest of the file");
        goto err;
    }
    for (int i = 0; i < c->n_items; i++)
        if (m->attr_off[i + 1] < m->attr_off[i] || (size_t)m->attr_off[i + 1] > n_rows) {
            util_err(errstr, errlen, "item attribute index is not ascending at item %d", i);
            goto err;
        }
    for (size_t i = 0; i < n_rows; i++)
        if (m->attr_rows[i] < 0 || m->attr_rows[i] >= c->n_attrs) {
            util_err(errstr, errlen, "attribute row %d is out of range", m->attr_rows[i]);
            goto err;
        }
    if ((dup = rowtab_init(&m->items, m->item_hash, c->n_items)) != 0) {
        if (dup > 0) util_err(errstr, errlen, "item id \"%s\" twice", m->item_ids[dup - 1]);
        else util_err(errstr, errlen, "out of memory");
        goto err;
    }
    if ((dup = rowtab_init(&m->attrs, attr_hash, c->n_attrs)) != 0) {
        util_err(errstr, errlen, dup > 0 ? "an attribute id twice" : "out of memory");
        goto err;
    }
    free(attr_hash);
    return 0;
err:
    free(attr_hash);
    return -1;
}

static int rope_init(model *m) {
    int W = m->config.window, half = m->config.dim / m->config.n_heads / 2;
    m->rope_cos = malloc((size_t)W * half * sizeof(float));
    m->rope_sin = malloc((size_t)W * half * sizeof(float));
    if (!m->rope_cos || !m->rope_sin) return -1;
    for (int p = 0; p < W; p++) {
        for (int i = 0; i < half; i++) {
            double angle = p * pow(MODEL_ROPE_THETA, -(double)i / half);
            m->rope_cos[(size_t)p * half + i] = (float)cos(angle);
            m->rope_sin[(size_t)p * half + i] = (float)sin(angle);
        }
    }
    return 0;
}

model *model_open(const char *path, char *errstr, size_t errlen) {
    model *m = calloc(1, sizeof *m);
    int fd = -1;
    if (!m) {
        util_err(errstr, errlen, "out of memory");
        return NULL;
    }
    char why[256];
    struct stat st;
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, &st) < 0) {
        util_err(errstr, errlen, "cannot read model file %s: %s", path, strerror(errno));
        goto err;
    }
    if (st.st_size < 8) {
        util_err(errstr, errlen,
                 "file %s is not a copystream model (bad magic): train one with "
                 "`copystream train`",
                 path);
        goto err;
    }
    m->map_len = (size_t)st.st_size;
    void *map = mmap(NULL, m->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        util_err(errstr, errlen, "cannot map model file %s: %s", path, strerror(errno));
        goto err;
    }
    m->map = map;
    close(fd);
    fd = -1;

    if (memcmp(m->map, MODEL_MAGIC, 8) != 0) {
        util_err(errstr, errlen,
                 "file %s is not a copystream model (bad magic): train one with "
                 "`copystream train`",
                 path);
        goto err;
    }
    if (m->map_len < MODEL_HEADER_BYTES) {
        util_err(errstr, errlen,
                 "file %s is truncated: %zu bytes, the header alone takes %d: copy it again",
                 path, m->map_len, MODEL_HEADER_BYTES);
        goto err;
    }
    size_t pos = 8;
    uint32_t version, hdr[8];
    buf_get_u32le(m->map, m->map_len, &pos, &version);
    if (version != MODEL_FORMAT_VERSION) {
        util_err(errstr, errlen,
                 "file %s: model format version %u, this build reads %d: use a matching "
                 "copystream",
                 path, version, MODEL_FORMAT_VERSION);
        goto err;
    }
    pos = MODEL_CHECKSUM_OFFSET;
    uint64_t checksum, trained_s;
    buf_get_u64le(m->map, m->map_len, &pos, &checksum);
    for (int i = 0; i < 8; i++) buf_get_u32le(m->map, m->map_len, &pos, &hdr[i]);
    buf_get_u64le(m->map, m->map_len, &pos, &trained_s);
    model_config *c = &m->config;
    *c = (model_config){(int)hdr[0], (int)hdr[1], (int)hdr[2], (int)hdr[3],
                        (int)hdr[4], (int)hdr[5], (int)hdr[6], (int)hdr[7]};
    if (config_check(c, why, sizeof why) < 0) {
        util_err(errstr, errlen, "file %s: invalid config (%s): the file is corrupt, copy it again",
                 path, why);
        goto err;
    }
    size_t tensor_end = MODEL_HEADER_BYTES + 4 * weights_layout(NULL, c, NULL, MODEL_ALIGN / 4);
    if (m->map_len < tensor_end) {
        util_err(errstr, errlen,
                 "file %s is truncated: %zu bytes, its tensors alone take %zu: copy it again",
                 path, m->map_len, tensor_end);
        goto err;
    }
    m->checksum = XXH3_64bits(m->map + MODEL_CHECKSUMMED_FROM,
                              m->map_len - MODEL_CHECKSUMMED_FROM);
    if (m->checksum != checksum) {
        util_err(errstr, errlen,
                 "file %s: checksum mismatch: the file is corrupt or truncated, copy it again",
                 path);
        goto err;
    }
    weights_layout(&m->weights, c, (float *)(m->map + MODEL_HEADER_BYTES), MODEL_ALIGN / 4);
    if (tables_parse(m, align_up(tensor_end), why, sizeof why) < 0) {
        util_err(errstr, errlen, "file %s: %s: the writer is broken, train the model again", path,
                 why);
        goto err;
    }
    pthread_once(&kv_isa_once, kv_isa_init);
    if (rope_init(m) < 0) {
        util_err(errstr, errlen, "out of memory");
        goto err;
    }
    int n = snprintf(m->version, sizeof m->version, "%016llx", (unsigned long long)checksum);
    time_t t = (time_t)trained_s;
    struct tm tm;
    if (trained_s && gmtime_r(&t, &tm))
        strftime(m->version + n, sizeof m->version - n, "-%Y%m%dT%H%M%SZ", &tm);
    if (!model_threads_chosen) openblas_set_num_threads(1);
    return m;
err:
    if (fd >= 0) close(fd);
    model_close(m);
    return NULL;
}

void model_close(model *m) {
    if (!m) return;
    if (m->map) munmap((void *)m->map, m->map_len);
    free(m->item_ids);
    free(m->item_hash);
    rowtab_free(&m->items);
    rowtab_free(&m->attrs);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m);
}

/* ---------------------------------------------------------------------------
 * writing */

/* A file being written, and the checksum of what follows the checksum field. */
typedef struct {
    FILE *f;
    size_t at;
    XXH3_state_t *hash;
} model_out;

static int out_write(model_out *o, const void *p, size_t n) {
    if (n == 0) return 0;
    if (fwrite(p, 1, n, o->f) != n) return -1;
    if (o->at + n > MODEL_CHECKSUMMED_FROM) {
        size_t skip = o->at < MODEL_CHECKSUMMED_FROM ? MODEL_CHECKSUMMED_FROM - o->at : 0;
        XXH3_64bits_update(o->hash, (const char *)p + skip, n - skip);
    }
    o->at += n;
    return 0;
}

static int out_pad(model_out *o) {
    static const char zeros[MODEL_ALIGN];
    return out_write(o, zeros, align_up(o->at) - o->at);
}

static int out_ids(model_out *o, const char *const *ids, int n) {
    for (int i = 0; i < n; i++) {
        uint8_t len[4];
        size_t l = strlen(ids[i]);
        for (int b = 0; b < 4; b++) len[b] = (uint8_t)(l >> (8 * b));
        if (out_write(o, len, 4) < 0 || out_write(o, ids[i], l + 1) < 0) return -1;
    }
    return 0;
}

static int tables_check(const model_config *c, const model_tables *t, char *errstr,
                        size_t errlen) {
    if (t->item_attr_off[0] != 0)
        return util_err(errstr, errlen, "item attribute offsets must start at 0");
    for (int i = 0; i < c->n_items; i++) {
        if (!t->item_ids[i]) return util_err(errstr, errlen, "item %d has no id", i);
        if (t->item_attr_off[i + 1] < t->item_attr_off[i])
            return util_err(errstr, errlen, "item attribute offsets descend at item %d", i);
    }
    if (t->item_attr_off[c->n_items] > INT32_MAX)
        return util_err(errstr, errlen, "too many item attributes");
    for (uint32_t i = 0; i < t->item_attr_off[c->n_items]; i++)
        if (t->item_attr_rows[i] >= (uint32_t)c->n_attrs)
            return util_err(errstr, errlen, "attribute row %u is out of range", t->item_attr_rows[i]);
    for (int i = 0; i < c->n_attrs; i++)
        if (!t->attr_ids[i]) return util_err(errstr, errlen, "attribute %d has no id", i);
    return 0;
}

/* Fails when two ids of a table are the same, as model_open() would. */
static int ids_distinct(const char *const *ids, int n, const char *what, char *errstr,
                        size_t errlen) {
    uint64_t *h = malloc(((size_t)n + 1) * sizeof *h);
    rowtab t = {0};
    if (!h) return util_err(errstr, errlen, "out of memory");
    for (int i = 0; i < n; i++) h[i] = util_hash(ids[i]);
    int dup = rowtab_init(&t, h, n);
    rowtab_free(&t);
    free(h);
    if (dup > 0) return util_err(errstr, errlen, "%s id \"%s\" twice", what, ids[dup - 1]);
    return dup < 0 ? util_err(errstr, errlen, "out of memory") : 0;
}

int model_write(const char *path, const model_config *c, const float *weights,
                const model_tables *t, char *errstr, size_t errlen) {
    char why[256];
    if (config_check(c, why, sizeof why) < 0)
        return util_err(errstr, errlen, "invalid model config: %s", why);
    if (tables_check(c, t, errstr, errlen) < 0 ||
        ids_distinct(t->item_ids, c->n_items, "item", errstr, errlen) < 0 ||
        ids_distinct(t->attr_ids, c->n_attrs, "attribute", errstr, errlen) < 0)
        return -1;

    buf tmp = BUF_INIT, hdr = BUF_INIT;
    model_out o = {0};
    int rc = -1;
    if (buf_printf(&tmp, "%s.tmp", path) < 0 || !(o.hash = XXH3_createState())) {
        util_err(errstr, errlen, "out of memory");
        goto err;
    }
    XXH3_64bits_reset(o.hash);
    if (!(o.f = fopen(tmp.p, "wb"))) {
        util_err(errstr, errlen, "cannot write %s: %s", tmp.p, strerror(errno));
        goto err;
    }
    const uint32_t cfg[8] = {c->dim,    c->n_layers, c->n_heads, c->window,
                             c->hidden, c->n_items,  c->n_attrs, c->n_types};
    if (buf_reserve(&hdr, MODEL_HEADER_BYTES) < 0) {
        util_err(errstr, errlen, "out of memory");
        goto err;
    }
    buf_append(&hdr, MODEL_MAGIC, 8);
    buf_put_u32le(&hdr, MODEL_FORMAT_VERSION);
    buf_put_u32le(&hdr, 0);                  /* reserved */
    buf_put_u64le(&hdr, 0);                  /* checksum, filled in last */
    for (int i = 0; i < 8; i++) buf_put_u32le(&hdr, cfg[i]);
    buf_put_u64le(&hdr, t->trained_s);
    if (out_write(&o, hdr.p, hdr.len) < 0) goto io;

    model_weights w;
    float **slot[MODEL_N_TENSORS];
    size_t count[MODEL_N_TENSORS];
    int n = weights_list(&w, c, slot, count);
    const float *src = weights;
    for (int i = 0; i < n; i++) {
        if (out_pad(&o) < 0 || out_write(&o, src, count[i] * sizeof *src) < 0) goto io;
        src += count[i];
    }
    if (out_pad(&o) < 0 || out_ids(&o, t->item_ids, c->n_items) < 0 ||
        out_ids(&o, t->attr_ids, c->n_attrs) < 0 || out_pad(&o) < 0 ||
        out_write(&o, t->item_attr_off, ((size_t)c->n_items + 1) * 4) < 0 ||
        out_write(&o, t->item_attr_rows, (size_t)t->item_attr_off[c->n_items] * 4) < 0)
        goto io;
    uint8_t sum[8];
    uint64_t h = XXH3_64bits_digest(o.hash);
    for (int b = 0; b < 8; b++) sum[b] = (uint8_t)(h >> (8 * b));
    if (fseek(o.f, MODEL_CHECKSUM_OFFSET, SEEK_SET) < 0 || fwrite(sum, 1, 8, o.f) != 8 ||
        fflush(o.f) != 0 || fsync(fileno(o.f)) < 0)
        goto io;
    int closed = fclose(o.f);
    o.f = NULL;
    if (closed != 0 || rename(tmp.p, path) < 0) goto io;
    rc = 0;
    goto err;
io:
    util_err(errstr, errlen, "cannot write %s: %s", tmp.p, strerror(errno));
err:
    if (o.f) fclose(o.f);
    if (rc < 0 && tmp.p) unlink(tmp.p);
    XXH3_freeState(o.hash);
    buf_free(&tmp);
    buf_free(&hdr);
    return rc;
}


/* Uniform in [-a, a), from 24 random bits: exact in float everywhere. */
static float rng_uniform(uint64_t *s, float a) {
    return a * ((float)(util_splitmix64(s) >> 40) * (2.0f / 16777216.0f) - 1.0f);
}

void model_fill_random(const model_config *c, uint64_t seed, float *weights) {
    model_weights w;
    size_t total = model_weights_point(&w, c, weights);
    uint64_t s = seed;
    for (size_t i = 0; i < total; i++) weights[i] = rng_uniform(&s, 0.1f); /* biases */
    size_t d = c->dim, L = c->n_layers, hid = c->hidden;
    struct { float *p; size_t n; float a; } f[] = {
        {w.item_emb, c->n_items * d, 1.0f},
        {w.attr_emb, c->n_attrs * d, 1.0f},
        {w.type_emb, c->n_types * d, 1.0f},
        {w.wqkv, L * d * 3 * d, 1.0f / sqrtf((float)d)},
        {w.wo, L * d * d, 1.0f / sqrtf((float)d)},
        {w.w1, L * d * hid, 1.0f / sqrtf((float)d)},
        {w.w2, L * hid * d, 1.0f / sqrtf((float)hid)},
    };
    for (size_t t = 0; t < UTIL_ARRAY_LEN(f); t++)
        for (size_t i = 0; i < f[t].n; i++) f[t].p[i] = rng_uniform(&s, f[t].a);
    float *gains[] = {w.ln1_w, w.ln2_w, w.lnf_w};
    size_t gain_n[] = {L * d, L * d, d};
    for (int g = 0; g < 3; g++)
        for (size_t i = 0; i < gain_n[g]; i++) gains[g][i] = 1.0f + rng_uniform(&s, 0.1f);
}

int model_write_random(const char *path, const model_config *c, uint64_t seed, char *errstr,
                       size_t errlen) {
    char why[256];
    if (config_check(c, why, sizeof why) < 0)
        return util_err(errstr, errlen, "invalid model config: %s", why);
    int rc = -1;
    size_t n_items = c->n_items, n_attrs = c->n_attrs;
    float *weights = malloc(model_weights_point(NULL, c, NULL) * sizeof *weights);
    char **item_ids = calloc(n_items, sizeof *item_ids);
    char **attr_ids = calloc(n_attrs + 1, sizeof *attr_ids);
    uint32_t *off = malloc((n_items + 1) * sizeof *off);
    uint32_t *rows = malloc((3 * n_items + 1) * sizeof *rows);
    if (!weights || !item_ids || !attr_ids || !off || !rows) goto oom;
    model_fill_random(c, seed, weights);
    uint64_t s = seed ^ 0x5eedULL;
    off[0] = 0;
    for (size_t i = 0; i < n_items; i++) {
        if (asprintf(&item_ids[i], "item%zu", i) < 0) {
            item_ids[i] = NULL;
            goto oom;
        }
        uint32_t k = n_attrs ? (uint32_t)(util_splitmix64(&s) % 4) : 0, first = 0;
        if (k > n_attrs) k = (uint32_t)n_attrs;
        if (n_attrs) first = (uint32_t)(util_splitmix64(&s) % n_attrs);
        for (uint32_t j = 0; j < k; j++) rows[off[i] + j] = (first + j) % (uint32_t)n_attrs;
        off[i + 1] = off[i] + k;
    }
    for (size_t j = 0; j < n_attrs; j++)
        if (asprintf(&attr_ids[j], "attr%zu", j) < 0) {
            attr_ids[j] = NULL;
            goto oom;
        }
    model_tables t = {(const char *const *)item_ids, (const char *const *)attr_ids, off, rows, 0};
    rc = model_write(path, c, weights, &t, errstr, errlen);
    goto done;
oom:
    util_err(errstr, errlen, "out of memory");
done:
    for (size_t i = 0; item_ids && i < n_items; i++) free(item_ids[i]);
    for (size_t j = 0; attr_ids && j < n_attrs; j++) free(attr_ids[j]);
    free(item_ids);
    free(attr_ids);
    free(off);
    free(rows);
    free(weights);
    return rc;
}
