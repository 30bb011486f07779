/* The native inference engine: one call runs a whole forward step of a Lite or vanilla model
 * for a batch of independent sequences, each with its own position and any number of new bytes
 * (a prompt prefill, one decode byte, or a mix in one call). Read it like llama2.c's run.c:
 * `tl_forward` at the bottom calls one function per op, in order; above it are the ops, the
 * matrix product, the weight decodes, and at the top a thin layer of vector helpers, defined
 * once per instruction set (AVX-512, AVX2, and portable C vectors for everything else).
 *
 * Weights stay as they are stored: ternary layers as 2-bit codes (decoded in registers, never
 * expanded in memory, except a panel of rows for a long prompt), FP32 layers as float32 or
 * bfloat16. Activations, caches and sums are float32 with IEEE arithmetic (no -ffast-math), so
 * results match the PyTorch path up to the order of floating-point sums; top-k attention keeps
 * exactly top_k keys and, on equal scores, the earlier key (as PyTorch and the training kernel do).
 *
 * 2-bit layout (tilelli/infer/weights.py writes it): a row of `cols` weights is cut into
 * blocks of 64; a block is 8 little-endian uint16 words, word l holding the codes of weights
 * s * 8 + l for s = 0..7 in bits 2s..2s+1, code = trit + 1 (0 -> -1, 1 -> 0, 2 -> +1). Widened
 * to int32 lanes, each shift by 2s gives in every lane an index that a permute turns into the
 * float trits of 8 consecutive weights. The padding of a last partial block holds code 1 (0).
 *
 * The integer path (`tl_model.int8`, an option): a ternary layer's inputs are quantized per token
 * to int8 (absmax, q = rint(x * 127 / max|x|)) and multiplied with the codes in int32, exactly;
 * y = (float)(sum of trit * q) * (max|x| / 127 * scale). tilelli/model/ternary.py's
 * `int8_product` is the same arithmetic, so both paths give the same numbers. For it a block's
 * 16 bytes are read as bytes: shifting them by 2k (k = 0..3) and keeping 2 bits gives 16 codes
 * of weights (k + 4h) * 8 + l at byte 2l + h, so the inputs are stored in that order
 * (`code_order`) and the codes are used as unsigned bytes (sum of code * q, less sum of q).
 *
 * Threads: the caller's thread count; one OpenMP parallel region per call; every op below is
 * called by every thread and shares its work out with `omp for` (rows of a matrix, tokens,
 * attention heads).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { W_F32 = 0, W_BF16 = 1, W_T2 = 2 };
enum { T2_INT8 = 3 };  /* not a storage kind: the product of T2 codes with int8 inputs */
enum { ARCH_LITE = 0, ARCH_VANILLA = 1 };
#define BLOCK 64      /* weights per 2-bit block; also the columns a matrix product takes at a time */
#define KEY_BLOCK 64  /* keys scored together; the key cache's time axis is padded to a multiple */
#ifndef MAX_TOP_K     /* the most keys a query keeps: tilelli/kernels/build.py passes -DMAX_TOP_K */
#error "MAX_TOP_K is set by tilelli/kernels/build.py"
#endif

/* --- the structs tilelli/infer/engine.py fills (keep both in step) ------------------------ */

typedef struct {
    int64_t kind, rows, cols;
    const void *data;     /* F32: float[rows][cols]; BF16: uint16[rows][cols]; T2: uint16[rows][nblocks][8] */
    const float *scale;   /* T2: 1 scale, or one per row */
    int64_t per_row;
} tl_weight;

typedef struct {
    const float *norm1_w, *norm1_b;   /* lite: the block norm; vanilla: ln1 */
    const float *norm2_w, *norm2_b;   /* vanilla: ln2 */
    const float *router_w, *router_b; /* lite: (3, d), (3,) */
    const float *conv_w;              /* lite: (d, kernel) effective weights */
    tl_weight qkv, proj, up, down;
} tl_layer;

typedef struct {
    int64_t arch, d, n_layers, vocab, max_seq, n_heads, d_head, top_k, kernel, hidden;
    tl_weight tok, head;
    const float *pos, *normf_w, *normf_b;
    const tl_layer *layers;
    int64_t int8;  /* 1: ternary layers take int8 inputs (the integer path) */
} tl_model;

typedef struct {
    float *k;        /* (n_layers, n_heads, key_stride(max_len) / KEY_BLOCK, d_head, KEY_BLOCK): keys,
                      * transposed in blocks of KEY_BLOCK positions */
    float *v;        /* (n_layers, n_heads, max_len, d_head) */
    float *conv;     /* (n_layers, kernel - 1, d): the last kernel-1 normalised inputs (lite) */
    int64_t max_len, pos;
} tl_seq;

/* --- the instruction-set layer: a float vector `vf` of VL lanes, and the 2-bit decode -----
 * Per instruction set: vf_sum (the lanes' sum), vf_max (lanewise), vf_min_lane (the least
 * lane), vf_bf16 (VL bfloat16 widened to floats), t2_load (one block's 8 code words widened
 * into a register) and t2_trits(c, j) (the trits of the block's weights j * VL .. j * VL +
 * VL - 1); NT, the inputs a batched product streams past 2 weight rows (its accumulators must
 * fit in 32 vector registers with AVX-512, 16 otherwise); t2_bytes (a block's 64 codes as
 * bytes, `code_order`), vi_dot (int32 lanes += codes x int8 inputs) and vi_sum, the integer
 * path's; R1, the ternary weight rows one input's product takes at a time (2 where a vf is a
 * pair of 128-bit registers, as in the browser's SIMD128: with 4, codes and accumulators spill,
 * 1.6x slower); vi_dot4 (int32 lanes += 4 codes x the same 4 int8 inputs) and GT, the inputs
 * the integer path's prompt kernel takes at a time (2 x GT accumulators and 2 code vectors in
 * the registers; more spill: 5,100 -> 3,500 bytes/s of prefill with 8 on Zen 4); GF, the same
 * for a prompt on the float path. Float and bf16 rows go one at a time: 4 bf16 rows at
 * once decoded the bf16 models at 0.44x the speed (Zen 4, one thread). AVX-512 here means F and
 * BW (every AVX-512 CPU but Xeon Phi), VNNI when present.
 * vf_zero/vf_load/vf_store/vf_fma follow, common to all. */
#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define VL 16
#define NT 8
#define R1 4
typedef __m512 vf;
typedef __m512i codes;
static inline float vf_sum(vf v) { return _mm512_reduce_add_ps(v); }
static inline vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline float vf_min_lane(vf v) { return _mm512_reduce_min_ps(v); }
static inline vf vf_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
/* lanes 0-7 hold the words, lanes 8-15 the words >> 2: one shift by 4j gives steps 2j and 2j+1,
 * the 16 consecutive weights 16j..16j+15 */
static inline codes t2_load(const uint16_t *block) {
    const __m256i lo = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)block));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), _mm256_srli_epi32(lo, 2), 1);
}
static inline vf t2_trits(codes c, int j) {
    const __m512 trit = _mm512_setr_ps(-1, 0, 1, 0, -1, 0, 1, 0, -1, 0, 1, 0, -1, 0, 1, 0);
    return _mm512_permutevar_ps(trit, _mm512_srli_epi32(c, 4 * j));
}
typedef __m512i vi;
typedef __m512i codes8;
static inline codes8 t2_bytes(const uint16_t *block) {  /* the 16 bytes in each 128-bit lane k, >> 2k */
    const __m512i w = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)block));
    const __m512i by = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
    return _mm512_and_si512(_mm512_srlv_epi32(w, by), _mm512_set1_epi8(3));
}
static inline vi vi_dot(vi acc, codes8 c, const int8_t *q) {
#ifdef __AVX512VNNI__
    return _mm512_dpbusd_epi32(acc, c, _mm512_loadu_si512(q));
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(c, _mm512_loadu_si512(q)), _mm512_set1_epi16(1)));
#endif
}
static inline int32_t vi_sum(vi v) { return _mm512_reduce_add_epi32(v); }
#define GT 6
#define GF 6
static inline vi vi_dot4(vi acc, vi codes4, int32_t q4) {
#ifdef __AVX512VNNI__
    return _mm512_dpbusd_epi32(acc, codes4, _mm512_set1_epi32(q4));
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(codes4, _mm512_set1_epi32(q4)), _mm512_set1_epi16(1)));
#endif
}
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VL 8
#define NT 4
#define R1 4
typedef __m256 vf;
typedef __m256i codes;
static inline float vf_sum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}
static inline vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline float vf_min_lane(vf v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_min_ss(m, _mm_shuffle_ps(m, m, 1)));
}
static inline vf vf_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline codes t2_load(const uint16_t *block) { return _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)block)); }
static inline vf t2_trits(codes c, int j) {
    const __m256 trit = _mm256_setr_ps(-1, 0, 1, 0, -1, 0, 1, 0);
    return _mm256_permutevar_ps(trit, _mm256_srli_epi32(c, 2 * j));
}
typedef __m256i vi;
typedef struct { __m256i lo, hi; } codes8;  /* lanes k = 0, 1 and k = 2, 3 */
static inline codes8 t2_bytes(const uint16_t *block) {
    const __m256i w = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)block)), three = _mm256_set1_epi8(3);
    return (codes8){_mm256_and_si256(_mm256_srlv_epi32(w, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)), three),
                    _mm256_and_si256(_mm256_srlv_epi32(w, _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6)), three)};
}
static inline vi vi_dot(vi acc, codes8 c, const int8_t *q) {  /* pair sums <= 4 * 2 * 127: no saturation */
    const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(c.lo, _mm256_loadu_si256((const __m256i *)q)),
                                       _mm256_maddubs_epi16(c.hi, _mm256_loadu_si256((const __m256i *)(q + 32))));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}
static inline int32_t vi_sum(vi v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1)));
}
#define GT 5
#define GF 4
static inline vi vi_dot4(vi acc, vi codes4, int32_t q4) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(codes4, _mm256_set1_epi32(q4)), _mm256_set1_epi16(1)));
}
#else /* portable: GCC/Clang vector extensions (SSE pairs on x86, NEON on Arm, SIMD128 in the browser), the AVX2 layout */
#define VL 8
#define NT 4
#define R1 2
typedef float vf __attribute__((vector_size(32)));
typedef int32_t codes __attribute__((vector_size(32)));
static inline float vf_sum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < VL; ++i) s += v[i];
    return s;
}
static inline vf vf_max(vf a, vf b) {
    for (int i = 0; i < VL; ++i) a[i] = b[i] > a[i] ? b[i] : a[i];
    return a;
}
static inline float vf_min_lane(vf v) {
    float m = v[0];
    for (int i = 1; i < VL; ++i) m = v[i] < m ? v[i] : m;
    return m;
}
typedef uint16_t words8 __attribute__((vector_size(16)));
static inline vf vf_bf16(const uint16_t *p) {
    words8 h;
    memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, codes) << 16);
}
static inline codes t2_load(const uint16_t *block) {
    words8 h;
    memcpy(&h, block, sizeof h);
    return __builtin_convertvector(h, codes);
}
/* trit = code - 1 (pack_2bit writes codes 0, 1, 2 only) */
static inline vf t2_trits(codes c, int j) { return __builtin_convertvector((c >> (2 * j)) & 3, vf) - 1.0f; }
typedef int32_t vi __attribute__((vector_size(32)));
typedef uint8_t bytes16 __attribute__((vector_size(16)));
typedef int8_t sbytes16 __attribute__((vector_size(16)));
typedef int16_t shorts16 __attribute__((vector_size(32)));
typedef int16_t shorts8 __attribute__((vector_size(16)));
typedef struct { bytes16 k[4]; } codes8;
#ifdef __wasm_simd128__
#include <wasm_simd128.h>
typedef int32_t ints4 __attribute__((vector_size(16)));
#endif
static inline codes8 t2_bytes(const uint16_t *block) {
    bytes16 w;
    memcpy(&w, block, sizeof w);
    return (codes8){{w & 3, (w >> 2) & 3, (w >> 4) & 3, (w >> 6) & 3}};
}
static inline vi vi_dot(vi acc, codes8 c, const int8_t *q) {  /* 16-bit sums <= 4 * 2 * 127 */
#if defined(__wasm_relaxed_simd__) /* the browser with relaxed SIMD: one dot product per 16 bytes */
    v128_t s = wasm_i32x4_splat(0);
    for (int k = 0; k < 4; ++k) s = wasm_i32x4_relaxed_dot_i8x16_i7x16_add(wasm_v128_load(q + 16 * k), (v128_t)c.k[k], s);
    return acc + __builtin_shufflevector((ints4)s, (ints4){0}, 0, 1, 2, 3, 4, 5, 6, 7);
#elif defined(__wasm_simd128__) /* the browser: SIMD128's widening multiply, 3x the generic code's speed */
    v128_t lo = wasm_i16x8_splat(0), hi = lo;
    for (int k = 0; k < 4; ++k) {
        const v128_t ck = (v128_t)c.k[k], qk = wasm_v128_load(q + 16 * k);
        lo = wasm_i16x8_add(lo, wasm_i16x8_extmul_low_i8x16(ck, qk));
        hi = wasm_i16x8_add(hi, wasm_i16x8_extmul_high_i8x16(ck, qk));
    }
    return acc + __builtin_shufflevector((ints4)wasm_i32x4_extadd_pairwise_i16x8(lo),
                                         (ints4)wasm_i32x4_extadd_pairwise_i16x8(hi), 0, 1, 2, 3, 4, 5, 6, 7);
#else
    shorts16 s = {0};
    for (int k = 0; k < 4; ++k) {
        sbytes16 qk;
        memcpy(&qk, q + 16 * k, sizeof qk);
        s += __builtin_convertvector(c.k[k], shorts16) * __builtin_convertvector(qk, shorts16);
    }
    const shorts8 lo = __builtin_shufflevector(s, s, 0, 1, 2, 3, 4, 5, 6, 7);
    const shorts8 hi = __builtin_shufflevector(s, s, 8, 9, 10, 11, 12, 13, 14, 15);
    return acc + __builtin_convertvector(lo, vi) + __builtin_convertvector(hi, vi);
#endif
}
static inline int32_t vi_sum(vi v) {
    int32_t s = 0;
    for (int i = 0; i < 8; ++i) s += v[i];
    return s;
}
#define GT 3
#define GF 3
static inline vi vi_dot4(vi acc, vi codes4, int32_t q4) {
#if defined(__wasm_relaxed_simd__)
    const v128_t q = wasm_i32x4_splat(q4);
    const ints4 lo = (ints4)wasm_i32x4_relaxed_dot_i8x16_i7x16_add(q, (v128_t)__builtin_shufflevector(codes4, codes4, 0, 1, 2, 3),
                                                                    wasm_i32x4_splat(0));
    const ints4 hi = (ints4)wasm_i32x4_relaxed_dot_i8x16_i7x16_add(q, (v128_t)__builtin_shufflevector(codes4, codes4, 4, 5, 6, 7),
                                                                    wasm_i32x4_splat(0));
    return acc + __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
#else
    const int32_t q0 = (int8_t)q4, q1 = (int8_t)(q4 >> 8), q2 = (int8_t)(q4 >> 16), q3 = (int8_t)(q4 >> 24);
    const vi c = codes4 & 255, c1 = (codes4 >> 8) & 255, c2 = (codes4 >> 16) & 255, c3 = (codes4 >> 24) & 255;
    return acc + c * q0 + c1 * q1 + c2 * q2 + c3 * q3;
#endif
}
#endif
/* vf is a GCC/Clang vector type in every case (__m512 and __m256 are too), so these are common */
static inline vf vf_zero(void) { return (vf){0}; }
static inline vf vf_load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vf_store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vf_fma(vf a, vf b, vf c) { return a * b + c; }  /* one FMA: built with -ffp-contract=fast */

/* --- reading weights -------------------------------------------------------------------- */

static inline int64_t nblocks(int64_t cols) { return (cols + BLOCK - 1) / BLOCK; }

/* What multiplies row r's stored values: its T2 scale, else 1. */
static inline float row_scale(const tl_weight *w, int64_t r) {
    return w->kind == W_T2 ? w->scale[w->per_row ? r : 0] : 1.0f;
}

static inline const void *row_data(const tl_weight *w, int64_t r) {
    if (w->kind == W_T2) return (const uint16_t *)w->data + r * nblocks(w->cols) * 8;
    if (w->kind == W_BF16) return (const uint16_t *)w->data + r * w->cols;
    return (const float *)w->data + r * w->cols;
}

/* Weights j * VL .. of block b of a row (`c`: the block's codes, loaded by the caller for T2).
 * `kind` is a constant wherever speed matters, so this is one instruction sequence. */
static inline __attribute__((always_inline)) vf weight_vec(int kind, const void *row, int64_t b, int j, codes c) {
    if (kind == W_T2) return t2_trits(c, j);
    if (kind == W_BF16) return vf_bf16((const uint16_t *)row + b * BLOCK + j * VL);
    return vf_load((const float *)row + b * BLOCK + j * VL);
}

static inline codes block_codes(int kind, const void *row, int64_t b) {
    return kind == W_T2 ? t2_load((const uint16_t *)row + b * 8) : (codes){0};
}

/* Columns c0.. of row r after its last whole block (c0 = cols / BLOCK * BLOCK < cols), as
 * floats without the scale. */
static void row_tail(const tl_weight *w, int64_t r, int64_t c0, float *out) {
    const void *row = row_data(w, r);
    const int64_t n = w->cols - c0;
    if (w->kind == W_T2) {  /* the whole (padded) block, decoded as everywhere else */
        float block[BLOCK];
        const codes c = t2_load((const uint16_t *)row + c0 / BLOCK * 8);
        for (int j = 0; j < BLOCK / VL; ++j) vf_store(block + j * VL, t2_trits(c, j));
        memcpy(out, block, (size_t)n * sizeof(float));
    } else if (w->kind == W_BF16) {
        for (int64_t i = 0; i < n; ++i) {
            const uint32_t bits = (uint32_t)((const uint16_t *)row)[c0 + i] << 16;
            memcpy(out + i, &bits, sizeof(float));
        }
    } else {
        memcpy(out, (const float *)row + c0, (size_t)n * sizeof(float));
    }
}

/* out[0..cols) = row r of w as floats, scale included. */
static void decode_row(const tl_weight *w, int64_t r, float *restrict out) {
    const void *row = row_data(w, r);
    const int64_t full = w->cols / BLOCK;
    const float s = row_scale(w, r);
    for (int64_t b = 0; b < full; ++b) {
        const codes c = block_codes((int)w->kind, row, b);
        for (int j = 0; j < BLOCK / VL; ++j) vf_store(out + b * BLOCK + j * VL, weight_vec((int)w->kind, row, b, j, c) * s);
    }
    if (full * BLOCK < w->cols) {
        row_tail(w, r, full * BLOCK, out + full * BLOCK);
        for (int64_t c = full * BLOCK; c < w->cols; ++c) out[c] *= s;
    }
}

static inline float dot(const float *restrict a, const float *restrict b, int64_t n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < n; ++c) s += a[c] * b[c];
    return s;
}

/* --- GELU ---------------------------------------------------------------------------------- */

/* erf(x) for float32 within ~2e-7, branch-free so that `omp simd` vectorises it (glibc's erff
 * is a scalar call, and GELU runs on 4 * d values per token per layer): Abramowitz & Stegun
 * 7.1.26 with exp(-x^2) from a degree-6 polynomial on the reduced argument. */
static inline float fast_exp_neg(float y) {  /* e^y for y <= 0 */
    y = y < -87.0f ? -87.0f : y;
    const float k = rintf(y * 1.44269504088896341f);
    const float r = y - k * 0.693145751953125f - k * 1.428606765330187e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

static inline float fast_erf(float x) {
    const float a = fabsf(x);
    const float t = 1.0f / (1.0f + 0.3275911f * a);
    const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    return copysignf(1.0f - poly * fast_exp_neg(-a * a), x);
}

static void gelu(float *y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * y[i] * (1.0f + fast_erf(y[i] * 0.70710678118654752440f));
}

/* --- the matrix product ----------------------------------------------------------------- */

#define MAX_R 4         /* weight rows per tile */
#define MAX_T 8         /* inputs per tile (>= NT) */
#define ITEM 32         /* rows per work item of a product (a multiple of MAX_R) */
#define SMALL_BATCH 16  /* up to this many inputs, weights are decoded in registers per tile */

/* out[t][r] = W[rows[r]] . xs[t] for r < R, t < T: R weight rows decoded block by block in
 * registers, each weight vector used by all T inputs, R * T accumulators. The kernel of every
 * product but a prompt's: R x T is R1 x 1 for one input, 2 x NT for a few. Called with constant
 * kind, R and T, so each use is specialised. */
static inline __attribute__((always_inline)) void tile(const tl_weight *w, int kind, const int64_t rows[MAX_R],
                                                       int R, const float *const xs[MAX_T], int T,
                                                       float out[MAX_T][MAX_R]) {
    const int64_t full = w->cols / BLOCK;
    const void *row[MAX_R];
    vf acc[MAX_T][MAX_R];
    for (int r = 0; r < R; ++r) row[r] = row_data(w, rows[r]);
    for (int t = 0; t < T; ++t)
        for (int r = 0; r < R; ++r) acc[t][r] = vf_zero();
    for (int64_t b = 0; b < full; ++b) {
        codes c[MAX_R];
        for (int r = 0; r < R; ++r) c[r] = block_codes(kind, row[r], b);
        for (int j = 0; j < BLOCK / VL; ++j) {  /* the inputs in registers, then one weight vector at a time */
            vf xv[MAX_T];
            for (int t = 0; t < T; ++t) xv[t] = vf_load(xs[t] + b * BLOCK + j * VL);
            for (int r = 0; r < R; ++r) {
                const vf wv = weight_vec(kind, row[r], b, j, c[r]);
                for (int t = 0; t < T; ++t) acc[t][r] = vf_fma(wv, xv[t], acc[t][r]);
            }
        }
    }
    for (int t = 0; t < T; ++t)
        for (int r = 0; r < R; ++r) out[t][r] = vf_sum(acc[t][r]);
    if (full * BLOCK < w->cols) {  /* the columns after the last whole block */
        float tail[BLOCK];
        for (int r = 0; r < R; ++r) {
            row_tail(w, rows[r], full * BLOCK, tail);
            for (int t = 0; t < T; ++t) out[t][r] += dot(tail, xs[t] + full * BLOCK, w->cols - full * BLOCK);
        }
    }
    for (int r = 0; r < R; ++r) {
        const float s = row_scale(w, rows[r]);
        for (int t = 0; t < T; ++t) out[t][r] *= s;
    }
}

/* The integer path's inputs: n rows of int8 in code order (`stride` bytes each, whole blocks,
 * zero after the last column), with each row's scale max|x| / 127 and sum of q. */
typedef struct {
    int8_t *q;
    float *scale;
    int32_t *sum;
    int64_t stride;
} tl_int8_in;

/* Where column c goes in a row of code-ordered inputs (see the integer path, top of file). */
static inline int64_t code_order(int64_t c) {
    const int64_t p = c % BLOCK, s = p / 8, l = p % 8;
    return c - p + (s % 4) * 16 + 2 * l + s / 4;
}

/* in = x (n, cols) [row stride ldx] quantized per row: q = rint(x * (127 / m)), m = max|x| (at
 * least 1e-30, so that a zero row gives zeros), as tilelli.model.ternary.quantize_int8 does. */
static void quantize_int8(const float *x, int64_t ldx, int64_t n, int64_t cols, const tl_int8_in *in) {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
        const float *xt = x + t * ldx;
        int8_t *q = in->q + t * in->stride;
        float m = 1e-30f;
#pragma omp simd reduction(max : m)
        for (int64_t c = 0; c < cols; ++c) m = fabsf(xt[c]) > m ? fabsf(xt[c]) : m;  /* not fmaxf: a libm call */
        const float inv = 127.0f / m;
        int32_t sum = 0;
        memset(q, 0, (size_t)in->stride);
        for (int64_t c0 = 0; c0 < cols; c0 += BLOCK) {  /* a block in column order (vectorised), then in code order */
            const int64_t nc = cols - c0 < BLOCK ? cols - c0 : BLOCK;
            int8_t block[BLOCK];
#pragma omp simd reduction(+ : sum)
            for (int64_t i = 0; i < nc; ++i) {
                float v = rintf(xt[c0 + i] * inv);
                v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
                block[i] = (int8_t)v;
                sum += (int32_t)v;
            }
            for (int64_t i = 0; i < nc; ++i) q[c0 + code_order(i)] = block[i];
        }
        in->scale[t] = m / 127.0f;
        in->sum[t] = sum;
    }
}

/* The integer path's tile: out[t][r] = (float)(trits of W[rows[r]] . q[ts[t]]) * (scale of
 * input ts[t] * the row's scale), the sum exact in int32: codes (trit + 1) times q, less the
 * sum of q. Every block, the partial last too (its padding codes meet zero inputs). */
static inline __attribute__((always_inline)) void tile_int8(const tl_weight *w, const int64_t rows[MAX_R], int R,
                                                            const tl_int8_in *in, const int64_t ts[MAX_T], int T,
                                                            float out[MAX_T][MAX_R]) {
    const int64_t nb = nblocks(w->cols);
    const uint16_t *row[MAX_R];
    vi acc[MAX_T][MAX_R];
    for (int r = 0; r < R; ++r) row[r] = row_data(w, rows[r]);
    for (int t = 0; t < T; ++t)
        for (int r = 0; r < R; ++r) acc[t][r] = (vi){0};
    for (int64_t b = 0; b < nb; ++b) {
        codes8 c[MAX_R];
        for (int r = 0; r < R; ++r) c[r] = t2_bytes(row[r] + b * 8);
        for (int t = 0; t < T; ++t) {
            const int8_t *q = in->q + ts[t] * in->stride + b * BLOCK;
            for (int r = 0; r < R; ++r) acc[t][r] = vi_dot(acc[t][r], c[r], q);
        }
    }
    for (int t = 0; t < T; ++t)
        for (int r = 0; r < R; ++r)
            out[t][r] = (float)(vi_sum(acc[t][r]) - in->sum[ts[t]]) * (in->scale[ts[t]] * row_scale(w, rows[r]));
}

/* y[t][r0 + r] = W[r0 + r] . x[t] for r < nr, t < n, in R x T tiles (a short tile repeats a
 * row or an input and drops those results). */
static inline __attribute__((always_inline)) void tiles(const tl_weight *w, int kind, int64_t r0, int64_t nr,
                                                        const float *x, int64_t ldx, const tl_int8_in *in,
                                                        int64_t n, float *y, int64_t ldy, int R, int T) {
    for (int64_t g = 0; g < nr; g += R)
        for (int64_t t0 = 0; t0 < n; t0 += T) {
            int64_t rows[MAX_R], ts[MAX_T];
            const float *xs[MAX_T];
            float out[MAX_T][MAX_R];
            for (int r = 0; r < R; ++r) rows[r] = r0 + g + (g + r < nr ? r : 0);
            for (int t = 0; t < T; ++t) xs[t] = x + (ts[t] = t0 + t < n ? t0 + t : t0) * ldx;
            if (kind == T2_INT8) tile_int8(w, rows, R, in, ts, T, out);
            else tile(w, kind, rows, R, xs, T, out);
            for (int t = 0; t < T && t0 + t < n; ++t)
                for (int r = 0; r < R && g + r < nr; ++r) y[(t0 + t) * ldy + g + r] = out[t][r];
        }
}

/* tiles() specialised for w's kind (T2 with int8 inputs when there are some: `in`, which
 * matmul leaves NULL for other kinds): R x T tiles of ternary rows, F x T of float and bf16 rows. */
static inline __attribute__((always_inline)) void tiles_of_kind(const tl_weight *w, int64_t r0, int64_t nr,
                                                                const float *x, int64_t ldx,
                                                                const tl_int8_in *in, int64_t n, float *y,
                                                                int64_t ldy, int R, int F, int T) {
    if (in) tiles(w, T2_INT8, r0, nr, x, ldx, in, n, y, ldy, R, T);
    else if (w->kind == W_T2) tiles(w, W_T2, r0, nr, x, ldx, in, n, y, ldy, R, T);
    else if (w->kind == W_BF16) tiles(w, W_BF16, r0, nr, x, ldx, in, n, y, ldy, F, T);
    else tiles(w, W_F32, r0, nr, x, ldx, in, n, y, ldy, F, T);
}

/* The rows of a prompt kernel's panel for an item of np rows: whole tiles of 2 VL. */
static inline int64_t panel_rows(int64_t np) { return (np + 2 * VL - 1) / (2 * VL) * (2 * VL); }

/* The integer path for a prompt: the codes of an item's rows (at most ITEM, padded to a multiple
 * of 2 VL by repeating the first) packed once into `panel`: for each group g of 4 consecutive
 * inputs (in code order), one uint32 of 4 codes per row, rows across the vector lanes. */
static void pack_int8_panel(const tl_weight *w, int64_t p0, int64_t np, int64_t rows, uint32_t *panel) {
    const int64_t nb = nblocks(w->cols);
    for (int64_t r = 0; r < rows; ++r) {
        const uint16_t *row = row_data(w, p0 + (r < np ? r : 0));
        for (int64_t b = 0; b < nb; ++b) {
            const codes8 c = t2_bytes(row + b * 8);  /* 64 codes, in code order */
            uint32_t groups[BLOCK / 4];
            memcpy(groups, &c, sizeof groups);
            for (int g = 0; g < BLOCK / 4; ++g) panel[(b * (BLOCK / 4) + g) * rows + r] = groups[g];
        }
    }
}

/* y[t][p0 + r] for the item's np rows and n inputs, from its packed panel: 2 VL rows x GT inputs
 * at a time, one vi_dot4 per group of 4 inputs, each product exact in int32 (as tile_int8's, so
 * both give the same numbers), no horizontal sums. */
static void matmul_int8_panel(const tl_weight *w, int64_t p0, int64_t np, const tl_int8_in *in, int64_t n,
                              float *y, int64_t ldy, uint32_t *panel) {
    typedef int32_t lanes __attribute__((vector_size(sizeof(vf))));  /* a vi's int32 lanes */
    const int64_t rows = panel_rows(np), groups = nblocks(w->cols) * (BLOCK / 4);
    pack_int8_panel(w, p0, np, rows, panel);
    for (int64_t r0 = 0; r0 < rows; r0 += 2 * VL) {
        float rs[2 * VL];
        for (int r = 0; r < 2 * VL; ++r) rs[r] = row_scale(w, p0 + (r0 + r < np ? r0 + r : 0));
        for (int64_t t0 = 0; t0 < n; t0 += GT) {
            const int8_t *q[GT];
            vi acc[GT][2];
#pragma GCC unroll 16
            for (int t = 0; t < GT; ++t) {
                q[t] = in->q + (t0 + t < n ? t0 + t : t0) * in->stride;  /* a short tile repeats an input */
                acc[t][0] = acc[t][1] = (vi){0};
            }
            for (int64_t g = 0; g < groups; ++g) {
                vi c0, c1;
                memcpy(&c0, panel + g * rows + r0, sizeof c0);
                memcpy(&c1, panel + g * rows + r0 + VL, sizeof c1);
#pragma GCC unroll 16
                for (int t = 0; t < GT; ++t) {
                    int32_t q4;
                    memcpy(&q4, q[t] + 4 * g, sizeof q4);
                    acc[t][0] = vi_dot4(acc[t][0], c0, q4);
                    acc[t][1] = vi_dot4(acc[t][1], c1, q4);
                }
            }
            for (int t = 0; t < GT && t0 + t < n; ++t) {
                float out[2 * VL];
                for (int h = 0; h < 2; ++h) {
                    lanes dots;
                    memcpy(&dots, &acc[t][h], sizeof dots);
                    vf_store(out + h * VL, __builtin_convertvector(dots - in->sum[t0 + t], vf) *
                                               (in->scale[t0 + t] * vf_load(rs + h * VL)));
                }
                memcpy(y + (t0 + t) * ldy + r0, out, (size_t)(np - r0 < 2 * VL ? np - r0 : 2 * VL) * sizeof(float));
            }
        }
    }
}

/* A prompt's product on the float path (every weight kind): the item's np rows decoded (scale
 * included) and transposed once into `panel` (cols, rows: rows padded to a multiple of 2 VL by
 * repeating the last), then 2 VL rows x GF inputs at a time: each weight vector times each
 * input's broadcast value, rows across the lanes, no horizontal sums. `row`: w->cols floats of
 * scratch. */
static void matmul_float_panel(const tl_weight *w, int64_t p0, int64_t np, const float *x, int64_t ldx, int64_t n,
                               float *y, int64_t ldy, float *panel, float *row) {
    const int64_t rows = panel_rows(np), cols = w->cols;
    for (int64_t r = 0; r < rows; ++r) {
        if (r < np) decode_row(w, p0 + r, row);
        for (int64_t c = 0; c < cols; ++c) panel[c * rows + r] = row[c];
    }
    for (int64_t r0 = 0; r0 < rows; r0 += 2 * VL)
        for (int64_t t0 = 0; t0 < n; t0 += GF) {
            const float *xt[GF];
            vf sum[GF][2];
            for (int t = 0; t < GF; ++t) {
                xt[t] = x + (t0 + t < n ? t0 + t : t0) * ldx;  /* a short tile repeats an input */
                sum[t][0] = sum[t][1] = vf_zero();
            }
            for (int64_t c0 = 0; c0 < cols; c0 += BLOCK) {  /* summed block by block: over a 1,024-wide row,
                                                          * one running sum strayed 1.4e-4 from PyTorch */
                const int64_t c1 = cols - c0 < BLOCK ? cols : c0 + BLOCK;
                vf acc[GF][2];
#pragma GCC unroll 16
                for (int t = 0; t < GF; ++t) acc[t][0] = acc[t][1] = vf_zero();
                for (int64_t c = c0; c < c1; ++c) {
                    const vf w0 = vf_load(panel + c * rows + r0), w1 = vf_load(panel + c * rows + r0 + VL);
#pragma GCC unroll 16
                    for (int t = 0; t < GF; ++t) {
                        const vf xv = vf_zero() + xt[t][c];
                        acc[t][0] = vf_fma(w0, xv, acc[t][0]);
                        acc[t][1] = vf_fma(w1, xv, acc[t][1]);
                    }
                }
#pragma GCC unroll 16
                for (int t = 0; t < GF; ++t) {
                    sum[t][0] += acc[t][0];
                    sum[t][1] += acc[t][1];
                }
            }
            for (int t = 0; t < GF && t0 + t < n; ++t) {
                float out[2 * VL];
                vf_store(out, sum[t][0]);
                vf_store(out + VL, sum[t][1]);
                memcpy(y + (t0 + t) * ldy + r0, out, (size_t)(np - r0 < 2 * VL ? np - r0 : 2 * VL) * sizeof(float));
            }
        }
}

/* Work item i of a product: rows i * ITEM .. of w times the n inputs (`in`: their int8 form,
 * for the integer path). Many inputs (a prompt) first decode the item's rows into this thread's
 * `scratch` (a panel that stays in L2: floats, or the integer path's packed codes) and stream
 * every input past it; fewer decode the weights in registers for each tile. A prompt's sums are
 * so in another order than decoding's (within float rounding: tests/test_engine.py holds both to
 * the PyTorch path at every position); bf16 prompts through `tile`, in decoding's order, ran at
 * 0.76x the speed (Zen 4, one thread). */
static void matmul_item(const tl_weight *w, int64_t i, const float *x, int64_t ldx, const tl_int8_in *in, int64_t n,
                        float *y, int64_t ldy, float *scratch, int apply_gelu) {
    const int64_t p0 = i * ITEM, np = w->rows - p0 < ITEM ? w->rows - p0 : ITEM;
    if (n == 1) {
        tiles_of_kind(w, p0, np, x, ldx, in, n, y + p0, ldy, R1, 1, 1);  /* float rows: one at a time */
    } else if (n <= SMALL_BATCH) {
        tiles_of_kind(w, p0, np, x, ldx, in, n, y + p0, ldy, 2, 2, NT);
    } else if (in) {
        matmul_int8_panel(w, p0, np, in, n, y + p0, ldy, (uint32_t *)scratch);
    } else {
        matmul_float_panel(w, p0, np, x, ldx, n, y + p0, ldy, scratch, scratch + ITEM * w->cols);
    }
    if (apply_gelu)
        for (int64_t t = 0; t < n; ++t) gelu(y + t * ldy + p0, np);
}

/* y (n, rows) [row stride ldy] = x (n, cols) [ldx] @ W^T, GELU applied when `apply_gelu`; with
 * `in` (the integer path) a T2 weight's inputs are quantized into it first.
 * Shares ITEM-row work items among the threads: statically for a few inputs (short items, no
 * atomics), dynamically for a prompt (long items: a thread the OS holds back holds no one up). */
static void matmul(const tl_weight *w, const float *x, int64_t ldx, int64_t n, float *y, int64_t ldy,
                   const tl_int8_in *in, float *scratch, int apply_gelu) {
    const int64_t items = (w->rows + ITEM - 1) / ITEM;
    if (w->kind != W_T2) in = NULL;
    if (in) quantize_int8(x, ldx, n, w->cols, in);  /* an omp for: every thread waits for the inputs */
    if (n <= SMALL_BATCH) {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < items; ++i) matmul_item(w, i, x, ldx, in, n, y, ldy, scratch, apply_gelu);
    } else {
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < items; ++i) matmul_item(w, i, x, ldx, in, n, y, ldy, scratch, apply_gelu);
    }
}

/* --- the ops ---------------------------------------------------------------------------- */

/* One call's tokens: which sequence each belongs to, and where. */
typedef struct {
    int64_t n, n_seq;
    tl_seq *const *seqs;
    const int64_t *counts;
    int64_t *seq, *pos, *first;  /* per token: its sequence, absolute position, and the index in
                                  * this call of its sequence's first new token */
} tl_batch;

/* x[t] = token embedding + position embedding. */
static void embed(const tl_model *m, const tl_batch *bt, const int32_t *tokens, float *x) {
    const int64_t d = m->d;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < bt->n; ++t) {
        decode_row(&m->tok, tokens[t], x + t * d);
        const float *pe = m->pos + bt->pos[t] * d;
        for (int64_t c = 0; c < d; ++c) x[t * d + c] += pe[c];
    }
}

/* out[i] = LayerNorm(x[rows[i]]) (rows NULL: x[i]) for i < n, eps 1e-5. The mean and variance
 * are summed in double: their rounding would scale a whole row (17 norms per token). */
static void layer_norm(const float *x, const int64_t *rows, int64_t n, const float *g, const float *b, int64_t d,
                       float *out) {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        const float *xi = x + (rows ? rows[i] : i) * d;
        double sum = 0.0, sq = 0.0;
        for (int64_t c = 0; c < d; ++c) sum += xi[c];
        const float mean = (float)(sum / (double)d);
        for (int64_t c = 0; c < d; ++c) sq += (double)(xi[c] - mean) * (xi[c] - mean);
        const float inv = (float)(1.0 / sqrt(sq / (double)d + 1e-5));
        for (int64_t c = 0; c < d; ++c) out[i * d + c] = (xi[c] - mean) * inv * g[c] + b[c];
    }
}

/* Lite: gates[t] = softmax(router(h[t])), the weights of the (local, sparse, dense) pathways. */
static void router(const tl_layer *ly, const float *h, int64_t n, int64_t d, float *gates) {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
        float *r = gates + 3 * t, mx = -INFINITY, total = 0.0f;
        for (int i = 0; i < 3; ++i) {
            r[i] = dot(ly->router_w + i * d, h + t * d, d) + ly->router_b[i];
            mx = fmaxf(mx, r[i]);
        }
        for (int i = 0; i < 3; ++i) total += (r[i] = expf(r[i] - mx));
        for (int i = 0; i < 3; ++i) r[i] /= total;
    }
}

/* Lite's local pathway: out[t] = depthwise causal conv (kernel K) over each sequence's inputs h,
 * the K-1 before this call's coming from the sequence's conv buffer of layer l. */
static void causal_conv(const tl_model *m, const tl_layer *ly, const tl_batch *bt, int64_t l, const float *h,
                        float *out) {
    const int64_t d = m->d, K = m->kernel;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < bt->n; ++t) {
        const float *buf = bt->seqs[bt->seq[t]]->conv + l * (K - 1) * d;
        const int64_t j = t - bt->first[t];  /* index among the sequence's new tokens */
        for (int64_t c = 0; c < d; ++c) {
            float s = 0.0f;
            for (int64_t i = 0; i < K; ++i) {  /* tap i reads new-token index j - (K-1) + i */
                const int64_t src = j - (K - 1) + i;
                s += ly->conv_w[c * K + i] * (src >= 0 ? h[(bt->first[t] + src) * d + c] : buf[(K - 1 + src) * d + c]);
            }
            out[t * d + c] = s;
        }
    }
}

/* Lite: each sequence's conv buffer of layer l becomes the last K-1 of its inputs so far. */
static void save_conv_inputs(const tl_model *m, const tl_batch *bt, int64_t l, const float *h) {
    const int64_t d = m->d, K = m->kernel;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < bt->n_seq; ++i) {
        float *buf = bt->seqs[i]->conv + l * (K - 1) * d;
        int64_t first = 0;
        for (int64_t q = 0; q < i; ++q) first += bt->counts[q];
        const int64_t cnt = bt->counts[i];
        if (cnt >= K - 1) {
            memcpy(buf, h + (first + cnt - (K - 1)) * d, (size_t)((K - 1) * d) * sizeof(float));
        } else {  /* shift the old inputs left by cnt and append the new ones */
            memmove(buf, buf + cnt * d, (size_t)((K - 1 - cnt) * d) * sizeof(float));
            memcpy(buf + (K - 1 - cnt) * d, h + first * d, (size_t)(cnt * d) * sizeof(float));
        }
    }
}

static inline int64_t key_stride(int64_t max_len) { return (max_len + KEY_BLOCK - 1) / KEY_BLOCK * KEY_BLOCK; }

/* The time axis of a sequence's key cache (callers allocate it; one definition, here). */
int64_t tl_key_stride(int64_t max_len) { return key_stride(max_len); }

/* This call's keys and values of layer l into each token's sequence cache (keys transposed). */
static void store_kv(const tl_model *m, const tl_batch *bt, int64_t l, const float *qkv) {
    const int64_t d = m->d, H = m->n_heads, dh = m->d_head;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < bt->n; ++t) {
        const tl_seq *sq = bt->seqs[bt->seq[t]];
        const int64_t ld = key_stride(sq->max_len), p = bt->pos[t];
        for (int64_t hh = 0; hh < H; ++hh) {
            const float *kn = qkv + t * 3 * d + H * dh + hh * dh;
            float *kt = sq->k + (l * H + hh) * dh * ld + (p / KEY_BLOCK) * dh * KEY_BLOCK + p % KEY_BLOCK;
            for (int64_t c = 0; c < dh; ++c) kt[c * KEY_BLOCK] = kn[c];
            memcpy(sq->v + ((l * H + hh) * sq->max_len + p) * dh, qkv + t * 3 * d + 2 * H * dh + hh * dh,
                   (size_t)dh * sizeof(float));
        }
    }
}

/* A score's bits made orderable as an unsigned integer (+0 for -0; nan somewhere, but in one
 * total order): with the earlier key higher on equal ranks, the selection rule. */
static inline uint32_t score_rank(float score) {
    const float nonneg_zero = score + 0.0f;
    uint32_t b;
    memcpy(&b, &nonneg_zero, sizeof b);
    return b & 0x80000000u ? ~b : b | 0x80000000u;
}

/* A floor under the top_k-th best of the scores s[0..n) (n a multiple of VL, padded with
 * -INFINITY): cut the scores into G >= top_k groups by position mod G; the groups' maxima are G
 * distinct scores, so the least of them is at most the top_k-th best. One vector max per VL. */
static float top_k_floor(const float *s, int64_t n, int64_t top_k) {
    vf most[MAX_TOP_K / VL + 1];
    const int64_t groups = (top_k + VL - 1) / VL;  /* G = groups * VL */
    for (int64_t g = 0; g < groups; ++g) most[g] = vf_zero() - INFINITY;
    for (int64_t j = 0, g = 0; j < n; j += VL, g = g + 1 == groups ? 0 : g + 1)
        most[g] = vf_max(most[g], vf_load(s + j));
    float floor = INFINITY;
    for (int64_t g = 0; g < groups; ++g) {
        const float m = vf_min_lane(most[g]);
        floor = m < floor ? m : floor;
    }
    return floor;
}

/* keep[0..top_k) = the top_k best of the scores s[0..n) (padded to key_stride(n)), ascending:
 * the highest, the earlier on equal scores. The keys at or above top_k_floor are candidates
 * (`cand`, their scores `sc`), gathered without a branch, and the floor is taken again over the
 * candidates while that leaves fewer (a sixth of a prompt's keys, then about 2 top_k); each
 * candidate is then kept when fewer than top_k candidates outrank it (a higher score_rank, or an
 * equal one and an earlier key: a total order, so exactly top_k are kept), counted a vector at a
 * time. No branch depends on a score: a heap over the candidates spent most of its time in
 * mispredicted branches (Zen 4, 512-byte prefill on the integer path: 4,850 -> 5,610 bytes/s
 * without it). `cand`: 3 n + 2 VL ints of scratch (keys, their scores, their ranks). */
static void select_top_k(const float *s, int64_t n, int64_t top_k, int32_t *cand, int64_t *keep) {
    typedef uint32_t ranks __attribute__((vector_size(sizeof(vf))));
    typedef int32_t ints __attribute__((vector_size(sizeof(vf))));
    float *sc = (float *)(cand + n);
    uint32_t *u = (uint32_t *)(sc + n + VL);
    float floor = top_k_floor(s, key_stride(n), top_k);
    int64_t m = 0;
    for (int64_t j = 0; j < n; ++j) {
        cand[m] = (int32_t)j;
        m += s[j] >= floor;
    }
    int64_t before = n;
    if (m < top_k)  /* only with nan scores (a broken model file): every key, counted as they are */
        for (m = before = 0; m < n; ++m) cand[m] = (int32_t)m;
    for (int64_t i = 0; i < m; ++i) sc[i] = s[cand[i]];
    while (m < before && m > top_k + VL) {
        for (int64_t i = m; i % VL; ++i) sc[i] = -INFINITY;
        floor = top_k_floor(sc, (m + VL - 1) / VL * VL, top_k);
        before = m;
        m = 0;
        for (int64_t i = 0; i < before; ++i) {
            cand[m] = cand[i];
            sc[m] = sc[i];
            m += sc[i] >= floor;
        }
    }
    const int64_t mv = (m + VL - 1) / VL * VL;
    for (int64_t i = 0; i < m; ++i) u[i] = score_rank(sc[i]);
    for (int64_t i = m; i < mv; ++i) u[i] = 0;  /* below every score's rank */
    int64_t kept = 0;
    for (int64_t i = 0; i < m; ++i) {
        const ranks ui = (ranks){0} + u[i];
        ints at = {0}, above = {0};
        for (int l = 0; l < VL; ++l) at[l] = l;
        for (int64_t j = 0; j < mv; j += VL, at += VL) {  /* at: the candidates' positions j.. */
            ranks uj;
            memcpy(&uj, u + j, sizeof uj);
            above += (uj > ui) | ((uj == ui) & (at < (int32_t)i));  /* -1 per candidate above */
        }
        int32_t n_above = 0;
        for (int l = 0; l < VL; ++l) n_above -= above[l];
        keep[kept] = cand[i];
        kept += n_above < top_k;
    }
}

/* One query (a head of a sequence at position p) over keys 0..p: the top_k highest raw scores
 * (all when top_k is 0 or >= p + 1), then softmax(scale * score) over those weights the value
 * rows. Keys are transposed in blocks of KEY_BLOCK positions, kt (blocks, dh, KEY_BLOCK): a
 * block's scores are dh vector FMAs over one contiguous tile (no horizontal sums, no TLB walk
 * per feature); values are rows (.., dh). `s`: key_stride(p + 1) floats of scratch, `cand` p + 1 ints. */
static void attend(const float *q, const float *kt, const float *vc, int64_t p, int64_t dh, int64_t top_k,
                   float *s, int32_t *cand, float *out) {
    const int64_t n = p + 1, padded = key_stride(n);
    for (int64_t j0 = 0; j0 < n; j0 += KEY_BLOCK) {
        float acc[KEY_BLOCK] = {0};
        for (int64_t c = 0; c < dh; ++c) {
            const float qc = q[c];
            const float *restrict kc = kt + (j0 * dh + c * KEY_BLOCK);
#pragma omp simd
            for (int l = 0; l < KEY_BLOCK; ++l) acc[l] += qc * kc[l];
        }
        memcpy(s + j0, acc, sizeof acc);
    }
    for (int64_t j = n; j < padded; ++j) s[j] = -INFINITY;  /* keys not (yet) visible */
    int64_t keep[MAX_TOP_K + 1];  /* select_top_k writes one past its last */
    const int64_t kept = top_k > 0 && top_k < n ? top_k : n;
    if (kept < n) select_top_k(s, n, top_k, cand, keep);
    const float scale = 1.0f / sqrtf((float)dh);
    float mx = -INFINITY;  /* not fmaxf: a libm call */
    for (int64_t i = 0; i < kept; ++i) {
        const float v = s[kept < n ? keep[i] : i];
        mx = v > mx ? v : mx;
    }
    float *e = s;  /* the kept keys' weights in place of the scores (keep ascends: keep[i] >= i is read
                    * before e[i] is written); all keys' in one vector loop */
    if (kept < n)
        for (int64_t i = 0; i < kept; ++i) e[i] = fast_exp_neg((s[keep[i]] - mx) * scale);
    else
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) e[i] = fast_exp_neg((s[i] - mx) * scale);
    double total = 0.0;  /* up to max_seq terms: rounding would scale the whole output */
    for (int64_t i = 0; i < kept; ++i) total += e[i];
    for (int64_t c = 0; c < dh; ++c) out[c] = 0.0f;
    for (int64_t i = 0; i < kept; ++i) {
        const float *vj = vc + (kept < n ? keep[i] : i) * dh;
#pragma omp simd
        for (int64_t c = 0; c < dh; ++c) out[c] += e[i] * vj[c];
    }
    const float inv = (float)(1.0 / total);
    for (int64_t c = 0; c < dh; ++c) out[c] *= inv;
}

/* att[t] = every head's attention of token t over its sequence's cache of layer l. */
static void attention(const tl_model *m, const tl_batch *bt, int64_t l, const float *qkv, float *scores,
                      int32_t *cand, float *att) {
    const int64_t d = m->d, H = m->n_heads, dh = m->d_head;
#pragma omp for schedule(dynamic, 1)
    for (int64_t th = 0; th < bt->n * H; ++th) {
        const int64_t t = th / H, hh = th % H;
        const tl_seq *sq = bt->seqs[bt->seq[t]];
        attend(qkv + t * 3 * d + hh * dh, sq->k + (l * H + hh) * dh * key_stride(sq->max_len),
               sq->v + (l * H + hh) * sq->max_len * dh, bt->pos[t], dh, m->top_k, scores, cand,
               att + t * d + hh * dh);
    }
}

/* Lite's mix of its local and sparse pathways into the residual: x[t] += g0 * conv[t] + g1 * att[t]
 * (g = gates[3t..]). */
static void mix(float *x, const float *conv, const float *att, const float *gates, int64_t n, int64_t d) {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t)
        for (int64_t c = 0; c < d; ++c) x[t * d + c] += gates[3 * t] * conv[t * d + c] + gates[3 * t + 1] * att[t * d + c];
}

/* The residual: x[t] += g * y[t], g = gates[3t + 2] (Lite: the dense pathway's router weight),
 * or 1 when gates is NULL. */
static void residual(float *x, const float *y, const float *gates, int64_t n, int64_t d) {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
        const float g = gates ? gates[3 * t + 2] : 1.0f;
        for (int64_t c = 0; c < d; ++c) x[t * d + c] += g * y[t * d + c];
    }
}

/* --- the forward step ------------------------------------------------------------------- */

#define ALIGN 16  /* floats: 64 bytes, a cache line and an AVX-512 vector (a load split across
                   * two lines costs ~20 % of a prompt's product) */

static inline int64_t aligned(int64_t floats) { return (floats + ALIGN - 1) / ALIGN * ALIGN; }

/* The next `floats` of the workspace at *at, which then moves on to the next aligned float. */
static float *carve(float **at, int64_t floats) {
    float *p = *at;
    *at += aligned(floats);
    return p;
}

static int64_t max_cols(const tl_model *m) { return m->hidden > m->d ? m->hidden : m->d; }

/* Each thread's scratch: a decoded panel of ITEM rows and one decoded row, then one query's
 * attention scores and select_top_k's scratch (candidate keys, scores and ranks, one float's room
 * each). */
static int64_t per_thread_floats(const tl_model *m) {
    return aligned((ITEM + 1) * max_cols(m)) + 4 * key_stride(m->max_seq) + 2 * VL;
}

/* A weight's shape is what the model needs: rows x cols, a known kind, data and scales present. */
static int weight_ok(const tl_weight *w, int64_t rows, int64_t cols) {
    return w->rows == rows && w->cols == cols && w->data && (w->kind == W_F32 || w->kind == W_BF16 ||
                                                             (w->kind == W_T2 && w->scale));
}

/* 0 when every dimension of `m` is consistent with every weight it points to, else the number of
 * the first check that fails. The Python side checks each tensor against the config before it
 * fills these structs (tilelli/infer/weights.py); this is the engine refusing to trust even that. */
int tl_check_model(const tl_model *m) {
    const int64_t d = m->d;
    if (d < 1 || m->n_layers < 1 || m->vocab < 1 || m->max_seq < 1 || m->n_heads < 1 || m->d_head < 1) return 1;
    if (m->n_heads * m->d_head != d || m->top_k < 0 || m->top_k > MAX_TOP_K || m->hidden < 1) return 2;
    if (m->arch != ARCH_LITE && m->arch != ARCH_VANILLA) return 3;
    if (m->arch == ARCH_LITE && m->kernel < 1) return 4;
    if (!weight_ok(&m->tok, m->vocab, d) || !weight_ok(&m->head, m->vocab, d)) return 5;
    if (!m->pos || !m->normf_w || !m->normf_b || !m->layers) return 6;
    for (int64_t l = 0; l < m->n_layers; ++l) {
        const tl_layer *ly = &m->layers[l];
        if (!weight_ok(&ly->qkv, 3 * d, d) || !weight_ok(&ly->proj, d, d)) return 7;
        if (!weight_ok(&ly->up, m->hidden, d) || !weight_ok(&ly->down, d, m->hidden)) return 8;
        if (!ly->norm1_w || !ly->norm1_b) return 9;
        if (m->arch == ARCH_LITE && (!ly->router_w || !ly->router_b || !ly->conv_w)) return 10;
        if (m->arch == ARCH_VANILLA && (!ly->norm2_w || !ly->norm2_b)) return 11;
    }
    return 0;
}

/* Bytes of one row of int8 inputs: the widest product's columns in whole blocks. */
static int64_t int8_stride(const tl_model *m) { return nblocks(max_cols(m)) * BLOCK; }

/* Floats of workspace a call with n tokens (over all sequences) needs, for `threads` threads. */
int64_t tl_workspace_floats(const tl_model *m, int64_t n, int64_t threads) {
    const int64_t d = m->d, widest = m->hidden > m->vocab ? m->hidden : m->vocab;
    const int64_t int8_in = m->int8 ? aligned(n * int8_stride(m) / 4) + 2 * aligned(n) : 0;
    return ALIGN + 4 * aligned(n * d) + aligned(n * 3 * d) + aligned(n * widest) + aligned(n * 3) + int8_in +
           threads * aligned(per_thread_floats(m));
}

/* Run `counts[i]` new bytes of every sequence seqs[i] (tokens concatenated in `tokens`) through
 * the model, advance each sequence's position, and write logits: with `all_logits` one row
 * per token (vocab floats each, in order), else one row per sequence (its last new byte).
 * The caller checks the model once with tl_check_model and sizes `work` with
 * tl_workspace_floats. Returns 0, or without touching anything: 1 when memory runs out,
 * 2 for a token outside the vocabulary, 3 for a sequence that would pass its cache's length
 * (or a cache longer than the position table). */
int tl_forward(const tl_model *m, int64_t n_seq, tl_seq *const *seqs, const int32_t *tokens,
               const int64_t *counts, float *logits, int all_logits, float *work, int threads) {
    const int64_t d = m->d, widest = m->hidden > m->vocab ? m->hidden : m->vocab;
    int64_t n = 0;
    for (int64_t i = 0; i < n_seq; ++i) {
        const tl_seq *sq = seqs[i];
        if (counts[i] < 1 || sq->pos < 0 || sq->max_len > m->max_seq || counts[i] > sq->max_len - sq->pos) return 3;
        n += counts[i];
    }
    for (int64_t t = 0; t < n; ++t)
        if (tokens[t] < 0 || tokens[t] >= m->vocab) return 2;
    int64_t *index = malloc((size_t)(4 * n) * sizeof(int64_t));  /* the only allocation */
    if (!index) return 1;
    tl_batch bt = {n, n_seq, seqs, counts, index, index + n, index + 2 * n};
    int64_t *out_rows = index + 3 * n, n_out = 0;  /* the tokens whose logits are returned */
    for (int64_t i = 0, t = 0; i < n_seq; ++i)
        for (int64_t j = 0; j < counts[i]; ++j, ++t) {
            bt.seq[t] = i;
            bt.pos[t] = seqs[i]->pos + j;
            bt.first[t] = t - j;
            if (all_logits || j == counts[i] - 1) out_rows[n_out++] = t;
        }
    /* activations (n tokens each): the residual stream x, a block's normalised input h, an
     * attention (then conv) output a, a projection's output y, q|k|v, the FFN's hidden layer,
     * Lite's router weights; then each thread's scratch */
    const uintptr_t line = ALIGN * sizeof(float);
    float *at = (float *)(((uintptr_t)work + line - 1) / line * line);
    float *x = carve(&at, n * d), *h = carve(&at, n * d), *a = carve(&at, n * d), *y = carve(&at, n * d);
    float *qkv = carve(&at, n * 3 * d), *wide = carve(&at, n * widest), *gates = carve(&at, n * 3);
    tl_int8_in int8_in = {0}, *in = NULL;  /* the integer path's quantized inputs */
    if (m->int8) {
        int8_in.q = (int8_t *)carve(&at, n * int8_stride(m) / 4);
        int8_in.scale = carve(&at, n);
        int8_in.sum = (int32_t *)carve(&at, n);
        int8_in.stride = int8_stride(m);
        in = &int8_in;
    }
    float *scratch = at;

#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        float *mine = scratch + omp_get_thread_num() * aligned(per_thread_floats(m));
#else
        float *mine = scratch;
#endif
        float *scores = mine + aligned((ITEM + 1) * max_cols(m));
        int32_t *cand = (int32_t *)(scores + key_stride(m->max_seq));
        embed(m, &bt, tokens, x);
        for (int64_t l = 0; l < m->n_layers; ++l) {
            const tl_layer *ly = &m->layers[l];
            layer_norm(x, NULL, n, ly->norm1_w, ly->norm1_b, d, h);
            matmul(&ly->qkv, h, d, n, qkv, 3 * d, in, mine, 0);
            store_kv(m, &bt, l, qkv);
            attention(m, &bt, l, qkv, scores, cand, a);
            matmul(&ly->proj, a, d, n, y, d, in, mine, 0);
            if (m->arch == ARCH_LITE) {  /* x + r_local * conv(h) + r_sparse * attn(h) + r_dense * ffn(h) */
                router(ly, h, n, d, gates);
                causal_conv(m, ly, &bt, l, h, a);
                save_conv_inputs(m, &bt, l, h);
                mix(x, a, y, gates, n, d);
            } else {  /* x + attn(ln1(x)), then + ffn(ln2(x)) */
                residual(x, y, NULL, n, d);
                layer_norm(x, NULL, n, ly->norm2_w, ly->norm2_b, d, h);
            }
            matmul(&ly->up, h, d, n, wide, m->hidden, in, mine, 1);
            matmul(&ly->down, wide, m->hidden, n, y, d, in, mine, 0);
            residual(x, y, m->arch == ARCH_LITE ? gates : NULL, n, d);
        }
        layer_norm(x, out_rows, n_out, m->normf_w, m->normf_b, d, h);
        matmul(&m->head, h, d, n_out, logits, m->vocab, in, mine, 0);
    }
    for (int64_t i = 0; i < n_seq; ++i) seqs[i]->pos += counts[i];
    free(index);
    return 0;
}
