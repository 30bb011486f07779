/* The native inference engine: one call runs a whole forward step of a Lite or vanilla model
 * (embedding, every block, attention over the KV caches, final norm, head) for a batch of
 * independent sequences, each with its own position and any number of new bytes (a prompt
 * prefill, one decode byte, or a mix in one call).
 *
 * Weights stay as they are stored: ternary layers as 2-bit codes (2 bits per weight, decoded
 * in registers, never expanded in memory), FP32 layers as float32 or bfloat16. Activations,
 * caches and accumulation are float32 with IEEE arithmetic (no -ffast-math), so results match
 * the PyTorch path up to the order of floating-point sums.
 *
 * 2-bit layout (see tilelli/infer/weights.py, which writes it): a row of `cols` weights is
 * cut into blocks of 64; a block is 8 little-endian uint16 words, word l holding the codes of
 * weights s * 8 + l for s = 0..7 in bits 2s..2s+1, code = trit + 1 (0 -> -1, 1 -> 0, 2 -> +1).
 * With AVX2 the 8 words widen to 8 int32 lanes, and each shift by 2s gives in every lane an
 * index that vpermilps turns into the float trit of 8 consecutive weights: three instructions
 * (shift, permute, FMA) per 8 weights. The padding of a last partial block holds code 1 (0).
 *
 * Threads: the caller's thread count; one OpenMP parallel region per call, matrix rows and
 * attention heads split across threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TL_AVX2 1
#endif

enum { W_F32 = 0, W_BF16 = 1, W_T2 = 2 };
enum { ARCH_LITE = 0, ARCH_VANILLA = 1 };
#define BLOCK 64     /* weights per 2-bit block */
#define ROWS 4       /* output rows computed together */
#ifndef MAX_TOP_K /* the most keys a query keeps: tilelli/kernels/build.py passes -DMAX_TOP_K */
#error "MAX_TOP_K is set by tilelli/kernels/build.py"
#endif

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
} tl_model;

typedef struct {
    float *k;        /* (n_layers, n_heads, key_stride(max_len) / KEY_BLOCK, d_head, KEY_BLOCK): keys,
                      * transposed in blocks of KEY_BLOCK positions */
    float *v;        /* (n_layers, n_heads, max_len, d_head) */
    float *conv;     /* (n_layers, kernel - 1, d): the last kernel-1 normalised inputs (lite) */
    int64_t max_len, pos;
} tl_seq;

static inline int64_t nblocks(int64_t cols) { return (cols + BLOCK - 1) / BLOCK; }

/* --- decoding one weight row to floats --------------------------------------------------- */

static inline float row_scale(const tl_weight *w, int64_t r) { return w->scale[w->per_row ? r : 0]; }

/* The 2-bit code (trit + 1) of weight i (0..BLOCK-1) of a block's 8 words: the scalar decode
 * every vector path has as its tail and its fallback. */
static inline int t2_code(const uint16_t *block, int64_t i) { return (block[i % 8] >> (2 * (i / 8))) & 3; }

/* out[0..cols) = row r of w, as floats (trit * scale for T2). */
static void decode_row(const tl_weight *w, int64_t r, float *restrict out) {
    const int64_t cols = w->cols;
    int64_t c = 0;
    if (w->kind == W_F32) {
        memcpy(out, (const float *)w->data + r * cols, (size_t)cols * sizeof(float));
        return;
    }
    if (w->kind == W_BF16) {
        const uint16_t *src = (const uint16_t *)w->data + r * cols;
#ifdef TL_AVX2
        for (; c + 8 <= cols; c += 8) {
            const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + c)));
            _mm256_storeu_ps(out + c, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)));
        }
#endif
        for (; c < cols; ++c) {
            const uint32_t bits = (uint32_t)src[c] << 16;
            memcpy(out + c, &bits, 4);
        }
        return;
    }
    static const float trit[4] = {-1.0f, 0.0f, 1.0f, 0.0f};
    const float s = row_scale(w, r);
    const uint16_t *words = (const uint16_t *)w->data + r * nblocks(cols) * 8;
#ifdef TL_AVX2
    const __m256 tab = _mm256_setr_ps(-1.0f, 0.0f, 1.0f, 0.0f, -1.0f, 0.0f, 1.0f, 0.0f);
    const __m256 sc = _mm256_set1_ps(s);
    for (; c + BLOCK <= cols; c += BLOCK) {
        const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(words + c / BLOCK * 8)));
        for (int k = 0; k < 8; ++k)
            _mm256_storeu_ps(out + c + k * 8, _mm256_mul_ps(_mm256_permutevar_ps(tab, _mm256_srli_epi32(v, 2 * k)), sc));
    }
#endif
    for (; c < cols; ++c) {
        const int64_t b = c / BLOCK, i = c % BLOCK;
        out[c] = s * trit[t2_code(words + b * 8, i)];
    }
}

static inline float dot(const float *restrict a, const float *restrict b, int64_t n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < n; ++c) s += a[c] * b[c];
    return s;
}

/* --- matrix products ------------------------------------------------------------------- */

static inline float hsum(const float *v, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; ++i) s += v[i];
    return s;
}

#ifdef TL_AVX2
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
#endif

/* y[r] = sum_c codes[r][c] * x[c] for ROWS consecutive T2 rows (no scale), one input vector:
 * the batch-1 decode product, decoded in registers. */
static void t2_rows_vec(const tl_weight *w, int64_t r0, const float *restrict x, float y[ROWS]) {
    const int64_t nb = nblocks(w->cols), full = w->cols / BLOCK;
    const uint16_t *base = (const uint16_t *)w->data + r0 * nb * 8;
#ifdef __AVX512F__
    /* 16 lanes: lanes 0-7 take step 2j, lanes 8-15 step 2j + 1 (their 16 inputs are contiguous) */
    const __m512 tab = _mm512_setr_ps(-1, 0, 1, 0, -1, 0, 1, 0, -1, 0, 1, 0, -1, 0, 1, 0);
    __m512 acc[ROWS];
    for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < full; ++b) {
        __m512i v[ROWS];
        for (int r = 0; r < ROWS; ++r) {
            const __m256i lo = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(base + (r * nb + b) * 8)));
            v[r] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), _mm256_srli_epi32(lo, 2), 1);
        }
        const float *xb = x + b * BLOCK;
        for (int j = 0; j < 4; ++j) {
            const __m512 xs = _mm512_loadu_ps(xb + j * 16);
            for (int r = 0; r < ROWS; ++r) {
                const __m512 t = _mm512_permutevar_ps(tab, _mm512_srli_epi32(v[r], 4 * j));
                acc[r] = _mm512_fmadd_ps(t, xs, acc[r]);
            }
        }
    }
    for (int r = 0; r < ROWS; ++r) y[r] = _mm512_reduce_add_ps(acc[r]);
#elif defined(TL_AVX2)
    const __m256 tab = _mm256_setr_ps(-1.0f, 0.0f, 1.0f, 0.0f, -1.0f, 0.0f, 1.0f, 0.0f);
    __m256 acc[ROWS];
    for (int r = 0; r < ROWS; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < full; ++b) {
        __m256i v[ROWS];
        for (int r = 0; r < ROWS; ++r)
            v[r] = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(base + (r * nb + b) * 8)));
        const float *xb = x + b * BLOCK;
        for (int s = 0; s < 8; ++s) {
            const __m256 xs = _mm256_loadu_ps(xb + s * 8);
            for (int r = 0; r < ROWS; ++r) {
                const __m256 t = _mm256_permutevar_ps(tab, _mm256_srli_epi32(v[r], 2 * s));
                acc[r] = _mm256_fmadd_ps(t, xs, acc[r]);
            }
        }
    }
    for (int r = 0; r < ROWS; ++r) y[r] = hsum8(acc[r]);
#else
    for (int r = 0; r < ROWS; ++r) y[r] = 0.0f;
    for (int64_t b = 0; b < full; ++b)
        for (int r = 0; r < ROWS; ++r) {
            const uint16_t *wd = base + (r * nb + b) * 8;
            float s = 0.0f;
            for (int i = 0; i < BLOCK; ++i) {
                const int code = t2_code(wd, i);
                s += code == 2 ? x[b * BLOCK + i] : code == 0 ? -x[b * BLOCK + i] : 0.0f;
            }
            y[r] += s;
        }
#endif
    if (full < nb) {  /* the last partial block: trits beyond cols are 0, x beyond cols unread */
        for (int r = 0; r < ROWS; ++r) {
            const uint16_t *wd = base + (r * nb + full) * 8;
            float s = 0.0f;
            for (int64_t c = full * BLOCK; c < w->cols; ++c) {
                const int64_t i = c - full * BLOCK;
                const int code = t2_code(wd, i);
                s += code == 2 ? x[c] : code == 0 ? -x[c] : 0.0f;
            }
            y[r] += s;
        }
    }
}

/* y[r] = W[r] . x for ROWS bf16 rows and one input vector (widened in registers). */
static void bf16_rows_vec(const tl_weight *w, int64_t r0, const float *restrict x, float y[ROWS]) {
    const int64_t cols = w->cols;
    const uint16_t *base = (const uint16_t *)w->data + r0 * cols;
    int64_t c = 0;
#ifdef TL_AVX2
    __m256 acc[ROWS];
    for (int r = 0; r < ROWS; ++r) acc[r] = _mm256_setzero_ps();
    for (; c + 8 <= cols; c += 8) {
        const __m256 xs = _mm256_loadu_ps(x + c);
        for (int r = 0; r < ROWS; ++r) {
            const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(base + r * cols + c)));
            acc[r] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(h, 16)), xs, acc[r]);
        }
    }
    for (int r = 0; r < ROWS; ++r) y[r] = hsum8(acc[r]);
#else
    for (int r = 0; r < ROWS; ++r) y[r] = 0.0f;
#endif
    for (; c < cols; ++c)
        for (int r = 0; r < ROWS; ++r) {
            uint32_t bits = (uint32_t)base[r * cols + c] << 16;
            float wv;
            memcpy(&wv, &bits, 4);
            y[r] += wv * x[c];
        }
}

/* y[t][r] = W[r] . x[t] for ROWS float rows w[0..ROWS) (decoded or F32) and n input vectors:
 * two inputs at a time against the ROWS rows, eight independent accumulators. */
static void f32_rows_mat(const float *const w[ROWS], int64_t cols, const float *x, int64_t ldx, int64_t n,
                         float *y, int64_t ldy, int64_t r0) {
    int64_t t = 0;
#ifdef __AVX512F__
    for (; t + 2 <= n; t += 2) {
        const float *x0 = x + t * ldx, *x1 = x0 + ldx;
        __m512 a0[ROWS], a1[ROWS];
        for (int r = 0; r < ROWS; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
        int64_t c = 0;
        for (; c + 16 <= cols; c += 16) {
            const __m512 u = _mm512_loadu_ps(x0 + c), v = _mm512_loadu_ps(x1 + c);
            for (int r = 0; r < ROWS; ++r) {
                const __m512 wr = _mm512_loadu_ps(w[r] + c);
                a0[r] = _mm512_fmadd_ps(wr, u, a0[r]);
                a1[r] = _mm512_fmadd_ps(wr, v, a1[r]);
            }
        }
        for (int r = 0; r < ROWS; ++r) {
            float s0 = _mm512_reduce_add_ps(a0[r]), s1 = _mm512_reduce_add_ps(a1[r]);
            for (int64_t cc = c; cc < cols; ++cc) {
                s0 += w[r][cc] * x0[cc];
                s1 += w[r][cc] * x1[cc];
            }
            y[t * ldy + r0 + r] = s0;
            y[(t + 1) * ldy + r0 + r] = s1;
        }
    }
#elif defined(TL_AVX2)
    for (; t + 2 <= n; t += 2) {
        const float *x0 = x + t * ldx, *x1 = x0 + ldx;
        __m256 a0[ROWS], a1[ROWS];
        for (int r = 0; r < ROWS; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
        int64_t c = 0;
        for (; c + 8 <= cols; c += 8) {
            const __m256 u = _mm256_loadu_ps(x0 + c), v = _mm256_loadu_ps(x1 + c);
            for (int r = 0; r < ROWS; ++r) {
                const __m256 wr = _mm256_loadu_ps(w[r] + c);
                a0[r] = _mm256_fmadd_ps(wr, u, a0[r]);
                a1[r] = _mm256_fmadd_ps(wr, v, a1[r]);
            }
        }
        for (int r = 0; r < ROWS; ++r) {
            float s0 = hsum8(a0[r]), s1 = hsum8(a1[r]);
            for (int64_t cc = c; cc < cols; ++cc) {
                s0 += w[r][cc] * x0[cc];
                s1 += w[r][cc] * x1[cc];
            }
            y[t * ldy + r0 + r] = s0;
            y[(t + 1) * ldy + r0 + r] = s1;
        }
    }
#endif
    for (; t < n; ++t) {
        const float *xt = x + t * ldx;
        for (int r = 0; r < ROWS; ++r) {
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int64_t c = 0; c < cols; ++c) s += w[r][c] * xt[c];
            y[t * ldy + r0 + r] = s;
        }
    }
}

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
    const float e = 1.0f - poly * fast_exp_neg(-a * a);
    return copysignf(e, x);
}

static void gelu_inplace(float *y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * y[i] * (1.0f + fast_erf(y[i] * 0.70710678118654752440f));
}

#define PANEL 32        /* rows decoded together for a many-token product: the panel stays in L2 */
#define CHUNK 32        /* rows per work item of a one-input product (a multiple of ROWS) */
#define SMALL_BATCH 16  /* up to this many inputs, ROWS rows at a time (decoded rows stay in L1) */

#define NT 8  /* inputs per pass of the small-batch kernels */

/* y[t][r0 + r] = W[r0 + r] . x[t] for the rows r < nr (nr <= 2) and NT inputs (xs[t]; a short
 * batch repeats an input, the caller ignores those rows): each weight vector is decoded once
 * in registers and used by all NT inputs. The batched-decode product (T2 and BF16). */
static void rows_small_batch(const tl_weight *w, int64_t r0, int64_t nr, const float *const xs[NT],
                             float out[NT][2]) {
    const int64_t cols = w->cols, nb = nblocks(cols);
    int64_t c = 0;
    for (int t = 0; t < NT; ++t) out[t][0] = out[t][1] = 0.0f;
#ifdef __AVX512F__
    __m512 acc[NT][2];
    for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
    if (w->kind == W_T2) {
        const __m512 tab = _mm512_setr_ps(-1, 0, 1, 0, -1, 0, 1, 0, -1, 0, 1, 0, -1, 0, 1, 0);
        const uint16_t *base = (const uint16_t *)w->data + r0 * nb * 8;
        for (; c + BLOCK <= cols; c += BLOCK) {
            __m512i v[2];
            for (int r = 0; r < 2; ++r) {
                const int64_t rr = r < nr ? r : 0;
                const __m256i lo = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(base + (rr * nb + c / BLOCK) * 8)));
                v[r] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), _mm256_srli_epi32(lo, 2), 1);
            }
            for (int j = 0; j < 4; ++j) {
                const __m512 w0 = _mm512_permutevar_ps(tab, _mm512_srli_epi32(v[0], 4 * j));
                const __m512 w1 = _mm512_permutevar_ps(tab, _mm512_srli_epi32(v[1], 4 * j));
                for (int t = 0; t < NT; ++t) {
                    const __m512 xv = _mm512_loadu_ps(xs[t] + c + 16 * j);
                    acc[t][0] = _mm512_fmadd_ps(w0, xv, acc[t][0]);
                    acc[t][1] = _mm512_fmadd_ps(w1, xv, acc[t][1]);
                }
            }
        }
        for (int t = 0; t < NT; ++t)
            for (int r = 0; r < 2; ++r) out[t][r] = _mm512_reduce_add_ps(acc[t][r]) * row_scale(w, r0 + (r < nr ? r : 0));
    } else if (w->kind == W_BF16) {
        const uint16_t *base = (const uint16_t *)w->data + r0 * cols;
        const uint16_t *row1 = base + (nr > 1 ? cols : 0);
        for (; c + 16 <= cols; c += 16) {
            const __m512 w0 = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(base + c))), 16));
            const __m512 w1 = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row1 + c))), 16));
            for (int t = 0; t < NT; ++t) {
                const __m512 xv = _mm512_loadu_ps(xs[t] + c);
                acc[t][0] = _mm512_fmadd_ps(w0, xv, acc[t][0]);
                acc[t][1] = _mm512_fmadd_ps(w1, xv, acc[t][1]);
            }
        }
        for (int t = 0; t < NT; ++t)
            for (int r = 0; r < 2; ++r) out[t][r] = _mm512_reduce_add_ps(acc[t][r]);
    }
#endif
    if (c < cols) {  /* the tail (and everything without AVX-512): decoded rows, plain dot products */
        for (int r = 0; r < nr; ++r)
            for (int64_t cc = c; cc < cols; ++cc) {
                float wv;
                if (w->kind == W_BF16) {
                    const uint32_t bits = (uint32_t)((const uint16_t *)w->data)[(r0 + r) * cols + cc] << 16;
                    memcpy(&wv, &bits, 4);
                } else {
                    const uint16_t *words = (const uint16_t *)w->data + (r0 + r) * nb * 8;
                    const int64_t b = cc / BLOCK, i = cc % BLOCK;
                    const int code = t2_code(words + b * 8, i);
                    wv = (float)(code - 1) * row_scale(w, r0 + r);
                }
                for (int t = 0; t < NT; ++t) out[t][r] += wv * xs[t][cc];
            }
    }
}

/* y (n, rows) [ldy] = x (n, cols) [ldx] @ W^T. Must be called by every thread of the parallel
 * region: it is an `omp for` over row groups. One input (batch-1 decode) uses the fused
 * kernels on groups of ROWS rows; several inputs decode a panel of rows (ROWS for a small
 * batch, PANEL for a prompt) into this thread's `scratch` once and stream the inputs past it
 * two at a time.
 * `gelu` applies the exact GELU to the result. */
static void matmul(const tl_weight *w, const float *x, int64_t ldx, int64_t n, float *y, int64_t ldy,
                   float *scratch, int gelu) {
    if (n == 1) {  /* chunks of CHUNK rows per thread, so GELU runs vectorised over a whole chunk */
        const int64_t chunks = (w->rows + CHUNK - 1) / CHUNK;
#pragma omp for schedule(static)
        for (int64_t ch = 0; ch < chunks; ++ch) {
            const int64_t c0 = ch * CHUNK, c1 = c0 + CHUNK < w->rows ? c0 + CHUNK : w->rows;
            for (int64_t r0 = c0; r0 < c1; r0 += ROWS) {
                const int64_t nr = c1 - r0 < ROWS ? c1 - r0 : ROWS;
                float out[ROWS];
                if (nr == ROWS && w->kind == W_T2) {
                    t2_rows_vec(w, r0, x, out);
                    for (int r = 0; r < ROWS; ++r) out[r] *= row_scale(w, r0 + r);
                } else if (nr == ROWS && w->kind == W_BF16) {
                    bf16_rows_vec(w, r0, x, out);
                } else {
                    for (int64_t r = 0; r < nr; ++r) {
                        const float *row = scratch;
                        if (w->kind == W_F32) row = (const float *)w->data + (r0 + r) * w->cols;
                        else decode_row(w, r0 + r, scratch);
                        out[r] = dot(row, x, w->cols);
                    }
                }
                for (int64_t r = 0; r < nr; ++r) y[r0 + r] = out[r];
            }
            if (gelu) gelu_inplace(y + c0, c1 - c0);
        }
        return;
    }
#ifdef __AVX512F__
    if (n <= SMALL_BATCH && w->kind != W_F32) {  /* batched decode: weights decoded in registers, NT inputs each */
        const int64_t pairs = (w->rows + 1) / 2;
#pragma omp for schedule(static)
        for (int64_t pr = 0; pr < pairs; ++pr) {
            const int64_t r0 = 2 * pr, nr = w->rows - r0 < 2 ? w->rows - r0 : 2;
            for (int64_t t0 = 0; t0 < n; t0 += NT) {
                const float *xs[NT];
                for (int t = 0; t < NT; ++t) xs[t] = x + (t0 + t < n ? t0 + t : t0) * ldx;
                float out[NT][2];
                rows_small_batch(w, r0, nr, xs, out);
                for (int64_t t = 0; t < NT && t0 + t < n; ++t)
                    for (int64_t r = 0; r < nr; ++r) y[(t0 + t) * ldy + r0 + r] = out[t][r];
            }
        }
        if (gelu) {
#pragma omp for schedule(static)
            for (int64_t t = 0; t < n; ++t) gelu_inplace(y + t * ldy, w->rows);
        }
        return;
    }
#endif
    /* a few inputs (batched decode): panels of ROWS rows, decoded into L1; many (prefill): PANEL rows in L2 */
    const int64_t panel = n <= SMALL_BATCH ? ROWS : PANEL;
    const int64_t panels = (w->rows + panel - 1) / panel;
#pragma omp for schedule(dynamic, 1)
    for (int64_t pnl = 0; pnl < panels; ++pnl) {
        const int64_t p0 = pnl * panel, np = w->rows - p0 < panel ? w->rows - p0 : panel;
        for (int64_t r = 0; r < np; ++r) decode_row(w, p0 + r, scratch + r * w->cols);
        for (int64_t g = 0; g < np; g += ROWS) {
            const int64_t nr = np - g < ROWS ? np - g : ROWS;
            const float *rows[ROWS];
            for (int r = 0; r < ROWS; ++r) rows[r] = scratch + (g + (r < nr ? r : 0)) * w->cols;
            if (nr == ROWS) {
                f32_rows_mat(rows, w->cols, x, ldx, n, y, ldy, p0 + g);
            } else {
                for (int64_t t = 0; t < n; ++t)
                    for (int64_t r = 0; r < nr; ++r) y[t * ldy + p0 + g + r] = dot(rows[r], x + t * ldx, w->cols);
            }
        }
        if (gelu)
            for (int64_t t = 0; t < n; ++t) gelu_inplace(y + t * ldy + p0, np);
    }
}

/* --- small per-token pieces ------------------------------------------------------------ */

static void layer_norm(const float *x, const float *g, const float *b, int64_t d, float *out) {
    float mean = 0.0f, var = 0.0f;
    for (int64_t c = 0; c < d; ++c) mean += x[c];
    mean /= (float)d;
    for (int64_t c = 0; c < d; ++c) var += (x[c] - mean) * (x[c] - mean);
    const float inv = 1.0f / sqrtf(var / (float)d + 1e-5f);
    for (int64_t c = 0; c < d; ++c) out[c] = (x[c] - mean) * inv * g[c] + b[c];
}

#define KEY_BLOCK 64  /* keys scored together (several independent FMA chains); the key cache's
                       * time axis is padded to a multiple */

static inline int64_t key_stride(int64_t max_len) { return (max_len + KEY_BLOCK - 1) / KEY_BLOCK * KEY_BLOCK; }

/* The time axis of a sequence's key cache (callers allocate it; one definition, here). */
int64_t tl_key_stride(int64_t max_len) { return key_stride(max_len); }

/* A binary min-heap of key indices ordered by their scores s[]: the root is the smallest kept. */
static void heap_push(int64_t *h, int64_t size, int64_t j, const float *s) {
    int64_t i = size;
    while (i > 0 && s[h[(i - 1) / 2]] > s[j]) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = j;
}

static void heap_replace_root(int64_t *h, int64_t size, int64_t j, const float *s) {
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= size) break;
        if (c + 1 < size && s[h[c + 1]] < s[h[c]]) ++c;
        if (s[h[c]] >= s[j]) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = j;
}

/* Attention of one query (one head of a sequence at absolute position p) over keys 0..p: the
 * top_k highest raw scores (all of them when top_k is 0 or >= p + 1), then softmax(scale *
 * score) over those weights the value rows. Keys are stored transposed in blocks of
 * KEY_BLOCK positions, kt (blocks, dh, KEY_BLOCK): the scores of a block are dh vector FMAs (no
 * horizontal sums) over one contiguous 10 KB tile (a plain (dh, max_len) layout touched dh
 * pages per block, and its TLB misses dominated batched decoding); values are rows (.., dh).
 * `s`: key_stride(p + 1) floats of scratch. */
static void attend(const float *q, const float *kt, const float *vc, int64_t p, int64_t dh,
                   int64_t top_k, float *s, float *out) {
    const int64_t n = p + 1, padded = key_stride(n);
    const float scale = 1.0f / sqrtf((float)dh);
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
    int64_t keep[MAX_TOP_K];
    int64_t m = 0;
    if (top_k > 0 && top_k < n) {  /* the top_k largest: a min-heap of indices; blocks below its root skip */
        for (m = 0; m < top_k; ++m) heap_push(keep, m, m, s);
        for (int64_t j0 = top_k; j0 < padded; j0 += 8) {
            float best = -INFINITY;
            for (int64_t j = j0; j < j0 + 8; ++j) best = s[j] > best ? s[j] : best;
            if (!(best > s[keep[0]])) continue;
            for (int64_t j = j0; j < j0 + 8; ++j)
                if (s[j] > s[keep[0]]) heap_replace_root(keep, m, j, s);
        }
    }
    float mx = -INFINITY;
    const int64_t kept = m ? m : n;
    for (int64_t i = 0; i < kept; ++i) mx = fmaxf(mx, s[m ? keep[i] : i]);
    float total = 0.0f;
    for (int64_t c = 0; c < dh; ++c) out[c] = 0.0f;
    for (int64_t i = 0; i < kept; ++i) {
        const int64_t j = m ? keep[i] : i;
        const float e = fast_exp_neg((s[j] - mx) * scale);
        total += e;
        const float *vj = vc + j * dh;
#pragma omp simd
        for (int64_t c = 0; c < dh; ++c) out[c] += e * vj[c];
    }
    const float inv = 1.0f / total;
    for (int64_t c = 0; c < dh; ++c) out[c] *= inv;
}

/* --- the forward step ------------------------------------------------------------------ */

/* Each thread's scratch: a decoded weight panel, then attention scores (or an embedding row). */
static int64_t per_thread_floats(const tl_model *m) {
    const int64_t d = m->d, widest = m->hidden > m->vocab ? m->hidden : m->vocab;
    return PANEL * widest + (key_stride(m->max_seq) > d ? key_stride(m->max_seq) : d) + 3 * d;
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

/* Floats of workspace a call with n tokens (over all sequences) needs, for `threads` threads. */
int64_t tl_workspace_floats(const tl_model *m, int64_t n, int64_t threads) {
    const int64_t d = m->d, widest = m->hidden > m->vocab ? m->hidden : m->vocab;
    return n * (4 * d + 3 * d + widest) + threads * per_thread_floats(m);
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
    const int64_t d = m->d, H = m->n_heads, dh = m->d_head, K = m->kernel, L = m->n_layers;
    const int64_t widest = m->hidden > m->vocab ? m->hidden : m->vocab;
    int64_t n = 0;
    for (int64_t i = 0; i < n_seq; ++i) {
        const tl_seq *sq = seqs[i];
        if (counts[i] < 1 || sq->pos < 0 || sq->max_len > m->max_seq || counts[i] > sq->max_len - sq->pos) return 3;
        n += counts[i];
    }
    for (int64_t t = 0; t < n; ++t)
        if (tokens[t] < 0 || tokens[t] >= m->vocab) return 2;
    int64_t *seq_of = malloc((size_t)n * sizeof(int64_t)), *pos_of = malloc((size_t)n * sizeof(int64_t));
    int64_t *first_of = malloc((size_t)n * sizeof(int64_t)), *out_rows = malloc((size_t)n * sizeof(int64_t));
    float *gate = malloc((size_t)n * sizeof(float));  /* lite: each token's dense-pathway weight */
    if (!seq_of || !pos_of || !first_of || !out_rows || !gate) {
        free(seq_of);
        free(pos_of);
        free(first_of);
        free(out_rows);
        free(gate);
        return 1;
    }
    int64_t n_out = 0;
    for (int64_t i = 0, t = 0; i < n_seq; ++i)
        for (int64_t j = 0; j < counts[i]; ++j, ++t) {
            seq_of[t] = i;
            pos_of[t] = seqs[i]->pos + j;
            first_of[t] = t - j;  /* index of the sequence's first new token in this call */
            if (all_logits || j == counts[i] - 1) out_rows[n_out++] = t;
        }
    float *x = work, *h = x + n * d, *att = h + n * d, *y1 = att + n * d;
    float *qkv = y1 + n * d, *wide = qkv + n * 3 * d, *scratch = wide + n * widest;
    const int64_t per_thread = per_thread_floats(m);

#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        float *mine = scratch + omp_get_thread_num() * per_thread;
#else
        float *mine = scratch;
#endif
        float *rowbuf = mine + PANEL * widest;  /* attention scores or an embedding row */

#pragma omp for schedule(static)
        for (int64_t t = 0; t < n; ++t) {
            decode_row(&m->tok, tokens[t], x + t * d);
            const float *pe = m->pos + pos_of[t] * d;
            for (int64_t c = 0; c < d; ++c) x[t * d + c] += pe[c];
        }
        for (int64_t l = 0; l < L; ++l) {
            const tl_layer *ly = &m->layers[l];
#pragma omp for schedule(static)
            for (int64_t t = 0; t < n; ++t) layer_norm(x + t * d, ly->norm1_w, ly->norm1_b, d, h + t * d);
            matmul(&ly->qkv, h, d, n, qkv, 3 * d, mine, 0);
#pragma omp for schedule(static)
            for (int64_t t = 0; t < n; ++t) {  /* store this call's keys (transposed) and values */
                const tl_seq *sq = seqs[seq_of[t]];
                const int64_t ld = key_stride(sq->max_len), p = pos_of[t];
                for (int64_t hh = 0; hh < H; ++hh) {
                    const float *kn = qkv + t * 3 * d + H * dh + hh * dh;
                    float *kt = sq->k + (l * H + hh) * dh * ld + (p / KEY_BLOCK) * dh * KEY_BLOCK + p % KEY_BLOCK;
                    for (int64_t c = 0; c < dh; ++c) kt[c * KEY_BLOCK] = kn[c];
                    memcpy(sq->v + ((l * H + hh) * sq->max_len + pos_of[t]) * dh,
                           qkv + t * 3 * d + 2 * H * dh + hh * dh, (size_t)dh * sizeof(float));
                }
            }
#pragma omp for schedule(dynamic, 1)
            for (int64_t th = 0; th < n * H; ++th) {
                const int64_t t = th / H, hh = th % H;
                const tl_seq *sq = seqs[seq_of[t]];
                const int64_t ld = key_stride(sq->max_len);
                attend(qkv + t * 3 * d + hh * dh, sq->k + (l * H + hh) * dh * ld,
                       sq->v + (l * H + hh) * sq->max_len * dh, pos_of[t], dh, m->top_k, rowbuf, att + t * d + hh * dh);
            }
            matmul(&ly->proj, att, d, n, y1, d, mine, 0);
            if (m->arch == ARCH_LITE) {
#pragma omp for schedule(static)
                for (int64_t t = 0; t < n; ++t) {  /* router and local conv, mixed into x with attention */
                    const float *ht = h + t * d;
                    float r[3], mx = -INFINITY, tot = 0.0f;
                    for (int i = 0; i < 3; ++i) {
                        r[i] = dot(m->layers[l].router_w + i * d, ht, d) + ly->router_b[i];
                        mx = fmaxf(mx, r[i]);
                    }
                    for (int i = 0; i < 3; ++i) tot += (r[i] = expf(r[i] - mx));
                    for (int i = 0; i < 3; ++i) r[i] /= tot;
                    const tl_seq *sq = seqs[seq_of[t]];
                    const float *buf = sq->conv + l * (K - 1) * d;
                    const int64_t j = t - first_of[t];  /* index among the sequence's new tokens */
                    float *xt = x + t * d;
                    for (int64_t c = 0; c < d; ++c) {
                        float conv = 0.0f;
                        for (int64_t i = 0; i < K; ++i) {  /* input at new-token index j - (K-1) + i */
                            const int64_t src = j - (K - 1) + i;
                            const float in = src >= 0 ? h[(first_of[t] + src) * d + c] : buf[(K - 1 + src) * d + c];
                            conv += ly->conv_w[c * K + i] * in;
                        }
                        xt[c] += r[0] * conv + r[1] * y1[t * d + c];
                    }
                    gate[t] = r[2];  /* the dense pathway's weight, applied below */
                }
#pragma omp for schedule(static)
                for (int64_t i = 0; i < n_seq; ++i) {  /* the conv buffers: the last K-1 inputs */
                    float *buf = seqs[i]->conv + l * (K - 1) * d;
                    int64_t first = 0;
                    for (int64_t q = 0; q < i; ++q) first += counts[q];
                    const int64_t cnt = counts[i];
                    if (cnt >= K - 1) {
                        memcpy(buf, h + (first + cnt - (K - 1)) * d, (size_t)((K - 1) * d) * sizeof(float));
                    } else {  /* shift the old inputs left by cnt and append the new ones */
                        memmove(buf, buf + cnt * d, (size_t)((K - 1 - cnt) * d) * sizeof(float));
                        memcpy(buf + (K - 1 - cnt) * d, h + first * d, (size_t)(cnt * d) * sizeof(float));
                    }
                }
                matmul(&ly->up, h, d, n, wide, m->hidden, mine, 1);
                matmul(&ly->down, wide, m->hidden, n, y1, d, mine, 0);
#pragma omp for schedule(static)
                for (int64_t t = 0; t < n; ++t) {
                    const float r2 = gate[t];
                    for (int64_t c = 0; c < d; ++c) x[t * d + c] += r2 * y1[t * d + c];
                }
            } else {
#pragma omp for schedule(static)
                for (int64_t t = 0; t < n; ++t) {
                    for (int64_t c = 0; c < d; ++c) x[t * d + c] += y1[t * d + c];
                    layer_norm(x + t * d, ly->norm2_w, ly->norm2_b, d, h + t * d);
                }
                matmul(&ly->up, h, d, n, wide, m->hidden, mine, 1);
                matmul(&ly->down, wide, m->hidden, n, y1, d, mine, 0);
#pragma omp for schedule(static)
                for (int64_t t = 0; t < n; ++t)
                    for (int64_t c = 0; c < d; ++c) x[t * d + c] += y1[t * d + c];
            }
        }
#pragma omp for schedule(static)
        for (int64_t o = 0; o < n_out; ++o) layer_norm(x + out_rows[o] * d, m->normf_w, m->normf_b, d, h + o * d);
        matmul(&m->head, h, d, n_out, logits, m->vocab, mine, 0);
    }
    for (int64_t i = 0; i < n_seq; ++i) seqs[i]->pos += counts[i];
    free(gate);
    free(seq_of);
    free(pos_of);
    free(first_of);
    free(out_rows);
    return 0;
}
