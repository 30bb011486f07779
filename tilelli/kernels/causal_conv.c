/* Depthwise causal 1-D convolution over time in the (B, T, C) layout: forward and backward.
 *
 * With xe the input extended on the left by k-1 rows -- xe[b, e] = h[b, e] for e < k-1 (the
 * history: the previous inputs kept by a decode cache, or zeros without one) and
 * xe[b, e] = x[b, e - (k-1)] after --
 *
 *   y[b, t, c]   = sum_{j < k} w[c, j] * xe[b, t + j, c]
 *   dxe[b, e, c] = sum_{j < k, 0 <= e - j < T} w[c, j] * dy[b, e - j, c]
 *                  (dx = dxe[:, k-1:], dh = dxe[:, :k-1])
 *   dw[c, j]     = sum_{b, t} dy[b, t, c] * xe[b, t + j, c]
 *
 * Channels are contiguous, so every inner loop runs along c and vectorises; nothing is
 * transposed but the (C, k) weight. Work is split into (b, block of rows) units. dw is summed
 * over SUB_ROWS rows at a time, those sums into one partial (k, C) per backward unit, and the
 * partials in unit order: the result depends neither on the thread count nor on scheduling,
 * so training is reproducible bit for bit, and the short running sums keep it about as
 * accurate as oneDNN's convolution.
 *
 * Plain C11 + OpenMP, IEEE arithmetic (no -ffast-math). Tensors are float32 with contiguous
 * channels and arbitrary (batch, time) strides in elements; w and dw are contiguous (C, k).
 * The functions return 0, or -1 when scratch memory could not be allocated.
 * Build: cc -O3 -march=native -fopenmp -fPIC -shared.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct { int64_t b, t; } strides;  /* element strides; the channel stride is 1 */

#define FWD_ROWS 16   /* rows per forward unit */
#define BWD_ROWS 128  /* rows per backward unit, each with its own dw partial */
#define SUB_ROWS 16   /* dw is summed over SUB_ROWS rows, then sub-blocks, then units */
#define RED_COLS 64   /* channels per unit of the final dw sum */

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* y[c] += a[c] * x[c] */
static inline void axpy(float *restrict y, const float *restrict a, const float *restrict x, int64_t n) {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) y[c] += a[c] * x[c];
}

/* OpenMP threads for `units` work units: never more threads than units. */
static inline int team(int nthreads, int64_t units) {
    return (int)(units < nthreads ? (units > 0 ? units : 1) : (nthreads > 0 ? nthreads : 1));
}

/* wt[j * C + c] = w[c * k + j]: the taps along channels; NULL if out of memory. (The + 1 in
 * the allocations keeps malloc from returning NULL for an empty tensor.) */
static float *taps(const float *restrict w, int64_t C, int64_t k) {
    float *wt = malloc((size_t)(k * C) * sizeof(float) + 1);
    if (wt)
        for (int64_t c = 0; c < C; ++c)
            for (int64_t j = 0; j < k; ++j) wt[j * C + c] = w[c * k + j];
    return wt;
}

/* Row e of the extended input of batch b, or NULL where it is zero (no history). */
static inline const float *xe_row(const float *x, const float *h, strides sx, strides sh,
                                  int64_t b, int64_t e, int64_t k) {
    if (e >= k - 1) return x + b * sx.b + (e - (k - 1)) * sx.t;
    return h ? h + b * sh.b + e * sh.t : NULL;
}

/* out[c] = dxe[b, e, c] = sum_j wt[j, c] * dy[b, e - j, c] over 0 <= e - j < T. */
static void dxe_row(float *restrict out, const float *wt, const float *dy, strides sdy,
                    int64_t b, int64_t e, int64_t T, int64_t C, int64_t k) {
    memset(out, 0, (size_t)C * sizeof(float));
    for (int64_t j = 0; j < k; ++j) {
        const int64_t i = e - j;
        if (i >= 0 && i < T) axpy(out, wt + j * C, dy + b * sdy.b + i * sdy.t, C);
    }
}

int causal_conv_forward(const float *x, const float *h, const float *w, float *y,
                        int64_t B, int64_t T, int64_t C, int64_t k,
                        strides sx, strides sh, strides sy, int nthreads) {
    float *wt = taps(w, C, k);
    if (!wt) return -1;
    const int64_t blocks = (T + FWD_ROWS - 1) / FWD_ROWS, units = B * blocks;
#pragma omp parallel for schedule(static) num_threads(team(nthreads, units))
    for (int64_t u = 0; u < units; ++u) {
        const int64_t b = u / blocks, t0 = u % blocks * FWD_ROWS, t1 = min64(t0 + FWD_ROWS, T);
        for (int64_t t = t0; t < t1; ++t) {
            float *restrict yr = y + b * sy.b + t * sy.t;
            memset(yr, 0, (size_t)C * sizeof(float));
            for (int64_t j = 0; j < k; ++j) {
                const float *xr = xe_row(x, h, sx, sh, b, t + j, k);
                if (xr) axpy(yr, wt + j * C, xr, C);
            }
        }
    }
    free(wt);
    return 0;
}

/* Any of dx (B, T, C), dh (B, k-1, C), dw (C, k) may be NULL: that gradient is skipped. */
int causal_conv_backward(const float *x, const float *h, const float *w, const float *dy,
                         float *dx, float *dh, float *dw, int64_t B, int64_t T, int64_t C, int64_t k,
                         strides sx, strides sh, strides sdy, strides sdx, strides sdh, int nthreads) {
    const int64_t blocks = (T + BWD_ROWS - 1) / BWD_ROWS, units = B * blocks, plane = k * C;
    float *wt = taps(w, C, k);
    const int threads = team(nthreads, units);
    /* the units' partials of dw, then one scratch plane per thread */
    float *part = dw ? malloc((size_t)((units + threads) * plane) * sizeof(float) + 1) : NULL;
    if (!wt || (dw && !part)) {
        free(wt);
        free(part);
        return -1;
    }
#pragma omp parallel num_threads(threads)
    {
        float *restrict sub = part ? part + (units + omp_get_thread_num()) * plane : NULL;  /* scratch */
#pragma omp for schedule(static)
        for (int64_t u = 0; u < units; ++u) {
            const int64_t b = u / blocks, t0 = u % blocks * BWD_ROWS, t1 = min64(t0 + BWD_ROWS, T);
            if (dx)
                for (int64_t t = t0; t < t1; ++t)
                    dxe_row(dx + b * sdx.b + t * sdx.t, wt, dy, sdy, b, t + k - 1, T, C, k);
            if (dh && t0 == 0)
                for (int64_t e = 0; e < k - 1; ++e) dxe_row(dh + b * sdh.b + e * sdh.t, wt, dy, sdy, b, e, T, C, k);
            if (part) {
                float *restrict p = part + u * plane;  /* p[j * C + c]: this unit's share of dw[c, j] */
                memset(p, 0, (size_t)plane * sizeof(float));
                for (int64_t s0 = t0; s0 < t1; s0 += SUB_ROWS) {
                    memset(sub, 0, (size_t)plane * sizeof(float));
                    for (int64_t t = s0; t < min64(s0 + SUB_ROWS, t1); ++t) {
                        const float *dyr = dy + b * sdy.b + t * sdy.t;
                        for (int64_t j = 0; j < k; ++j) {
                            const float *xr = xe_row(x, h, sx, sh, b, t + j, k);
                            if (xr) axpy(sub + j * C, dyr, xr, C);
                        }
                    }
#pragma omp simd
                    for (int64_t i = 0; i < plane; ++i) p[i] += sub[i];
                }
            }
        }
        if (part) {  /* dw[c, j] = sum of the partials in unit order, whatever thread made them */
#pragma omp for schedule(static)
            for (int64_t c0 = 0; c0 < C; c0 += RED_COLS) {
                const int64_t n = min64(RED_COLS, C - c0);
                for (int64_t j = 0; j < k; ++j) {
                    float acc[RED_COLS] = {0};
                    for (int64_t u = 0; u < units; ++u) {
                        const float *restrict pr = part + u * plane + j * C + c0;
#pragma omp simd
                        for (int64_t c = 0; c < n; ++c) acc[c] += pr[c];
                    }
                    for (int64_t c = 0; c < n; ++c) dw[(c0 + c) * k + j] = acc[c];
                }
            }
        }
    }
    free(wt);
    free(part);
    return 0;
}
