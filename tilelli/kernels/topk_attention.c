/* Causal top-k attention on the CPU: forward and backward without any (T, T) tensor.
 *
 * Query i of a (b, h) plane sits at absolute position offset + i and sees keys
 * 0..offset+i. Its scores s_j = q_i . k_j (register-blocked over 4 queries, against a
 * per-thread transposed copy of K) go to a small per-thread buffer; a bisection between a
 * cheap lower bound of the k-th largest score and the largest finds a threshold that
 * exactly top_k scores reach (counting is vectorised, about 6 steps). softmax(scale * s)
 * over the kept keys weights the value rows. Where keys tie at the k-th
 * score the earliest are kept, exactly min(top_k, visible) in all (the rule of the PyTorch
 * path and of the inference engine too). idx/p (top_k per query, in no particular order, unused slots idx 0 /
 * p 0) are saved for the backward, which only touches those keys: O(T * top_k * d)
 * instead of O(T^2 * d).
 *
 * Plain C11 + OpenMP, IEEE arithmetic (no -ffast-math; `omp simd` allows the reordered
 * sums of the dot products). Tensors are float32 with a contiguous last dimension and
 * arbitrary (batch, head, time) strides in elements, so transposed (B, T, H, d) views and
 * KV-cache slices need no copy. Build: cc -O3 -march=native -fopenmp -fPIC -shared.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct { int64_t b, h, t; } strides;  /* element strides; the feature stride is 1 */

static inline float dot(const float *restrict a, const float *restrict b, int64_t n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < n; ++c) s += a[c] * b[c];
    return s;
}

static inline void axpy(float *restrict y, float a, const float *restrict x, int64_t n) {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) y[c] += a * x[c];
}

#ifndef MAX_TOP_K /* the most keys a query keeps: tilelli/kernels/build.py passes -DMAX_TOP_K */
#error "MAX_TOP_K is set by tilelli/kernels/build.py"
#endif
#define KEY_BLOCK 16 /* scores are computed in register blocks of ROWS queries x KEY_BLOCK keys */
#define ROWS 4

static inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/* s[r * ls + j] = q_r . k_j for ROWS query rows and j < round_up(n, KEY_BLOCK), from
 * kt = K^T (d x ld, zero-padded columns). Vectorised across keys (no horizontal sums), and
 * register-blocked: each K^T vector loaded serves ROWS queries, 2 * ROWS independent FMA chains. */
static void scores(const float *const q[ROWS], const float *restrict kt, int64_t ld, int64_t d,
                   int64_t n, float *restrict s, int64_t ls) {
    for (int64_t j0 = 0; j0 < n; j0 += KEY_BLOCK) {
        float acc[ROWS][KEY_BLOCK] = {{0}};
        for (int64_t c = 0; c < d; ++c) {
            const float *restrict kc = kt + c * ld + j0;
            for (int64_t r = 0; r < ROWS; ++r) {
                const float qc = q[r][c];
#pragma omp simd
                for (int64_t l = 0; l < KEY_BLOCK; ++l) acc[r][l] += qc * kc[l];
            }
        }
        for (int64_t r = 0; r < ROWS; ++r) memcpy(s + r * ls + j0, acc[r], sizeof acc[r]);
    }
}

/* The smallest of top_k strided group maxima of x[0..n): each group holds a score at least
 * that large, so it bounds the k-th largest from below. Pads x with -inf up to
 * round_up(n, top_k); gmax: top_k floats of scratch. */
static float lower_bound(float *restrict x, int64_t n, int64_t top_k, float *restrict gmax) {
    for (int64_t j = n; j < round_up(n, top_k); ++j) x[j] = -INFINITY;
    memcpy(gmax, x, (size_t)top_k * sizeof(float));
    for (int64_t r = top_k; r < n; r += top_k)
#pragma omp simd
        for (int64_t g = 0; g < top_k; ++g) gmax[g] = x[r + g] > gmax[g] ? x[r + g] : gmax[g];
    float lo = gmax[0];
    for (int64_t g = 1; g < top_k; ++g) lo = gmax[g] < lo ? gmax[g] : lo;
    return lo;
}

/* How many of x[0..n8) are >= t (n8 a multiple of 8; padding -inf never counts). */
static int64_t count_at_least(const float *restrict x, int64_t n8, float t) {
    int32_t c8[8] = {0};
    for (int64_t l0 = 0; l0 < n8; l0 += 8)
        for (int64_t u = 0; u < 8; ++u) c8[u] += x[l0 + u] >= t;
    int64_t c = 0;
    for (int64_t u = 0; u < 8; ++u) c += c8[u];
    return c;
}

/* Indices of the top_k largest of s[0..n) (n > top_k) into arg, their scores into best, in
 * no particular order; s is writable up to n + top_k + 8, gmax: top_k floats of scratch.
 * Bisects for a threshold t with exactly top_k scores >= t (vectorised counting), starting
 * from a cheap lower bound. Ties at the k-th score (or NaN) leave no such t: then an
 * insertion into a sorted list keeps the earliest of the tied keys, exactly top_k in all. */
static void select_top_k(float *restrict s, int64_t n, int64_t top_k, float *restrict gmax,
                         float *restrict best, int32_t *restrict arg) {
    float lo = lower_bound(s, n, top_k, gmax), hi = gmax[0];
    for (int64_t g = 1; g < top_k; ++g) hi = gmax[g] > hi ? gmax[g] : hi;  /* the maximum */
    const int64_t n8 = round_up(n, 8);
    for (int64_t j = n; j < n8; ++j) s[j] = -INFINITY;
    /* count(>= lo) >= top_k >= count(>= hi), barring NaN */
    int64_t c = count_at_least(s, n8, lo);
    if (c > top_k && count_at_least(s, n8, hi) < top_k) {
        for (int step = 0; step < 64 && c != top_k; ++step) {
            const float mid = lo + 0.5f * (hi - lo);
            if (!(mid > lo && mid < hi)) break;  /* adjacent floats: a tie */
            c = count_at_least(s, n8, mid);
            if (c >= top_k) lo = mid;
            if (c <= top_k) hi = mid;
        }
    }
    if (c == top_k) {  /* exactly the scores >= lo */
        int64_t m = 0;
        for (int64_t j = 0; j < n; ++j) {
            best[m] = s[j];  /* best/arg have room for top_k + 1 */
            arg[m] = (int32_t)j;
            m += s[j] >= lo;
        }
        return;
    }
    int64_t m = 0;
    for (int64_t j = 0; j < n; ++j) {
        const float xj = s[j];
        int64_t pos;
        if (m < top_k) {
            pos = m++;
        } else if (xj > best[top_k - 1]) {
            pos = top_k - 1;
        } else {
            continue;
        }
        for (; pos > 0 && best[pos - 1] < xj; --pos) {
            best[pos] = best[pos - 1];
            arg[pos] = arg[pos - 1];
        }
        best[pos] = xj;
        arg[pos] = (int32_t)j;
    }
}

/* One query row from its scores s[0..n): yi = sum_j p_j v[arg_j] over its top_k keys. */
static void forward_row(float *restrict s, const float *restrict vp, int64_t sv_t,
                        float *restrict yi, int32_t *restrict idx, float *restrict p, int64_t n,
                        int64_t dv, int64_t top_k, float scale) {
    float best[MAX_TOP_K + 1], wt[MAX_TOP_K];
    int32_t arg[MAX_TOP_K + 1];
    const int64_t m = n < top_k ? n : top_k;
    if (n <= top_k) {
        for (int64_t j = 0; j < n; ++j) {
            best[j] = s[j];
            arg[j] = (int32_t)j;
        }
    } else {
        select_top_k(s, n, top_k, wt, best, arg);
    }
    float hi = -INFINITY, total = 0.0f;
    for (int64_t j = 0; j < m; ++j) hi = best[j] > hi ? best[j] : hi;
    for (int64_t j = 0; j < m; ++j) total += wt[j] = expf((best[j] - hi) * scale);
    memset(yi, 0, (size_t)dv * sizeof(float));
    for (int64_t j = 0; j < m; ++j) {
        wt[j] /= total;
        axpy(yi, wt[j], vp + arg[j] * sv_t, dv);
    }
    if (idx) {
        for (int64_t j = 0; j < top_k; ++j) {
            idx[j] = j < m ? arg[j] : 0;
            p[j] = j < m ? wt[j] : 0.0f;
        }
    }
}

/* y (B, H, Tq, dv) = top-k attention; idx/p (B*H, Tq, top_k) may be NULL (no backward). */
void topk_attention_forward(const float *q, const float *k, const float *v, float *y,
                            int32_t *idx, float *p, int64_t B, int64_t H, int64_t Tq,
                            int64_t dk, int64_t dv, int64_t top_k, int64_t offset,
                            strides sq, strides sk, strides sv, strides sy, int n_threads) {
    const float scale = 1.0f / sqrtf((float)dk);
    const int64_t Tk = offset + Tq, ld = round_up(Tk, KEY_BLOCK) + KEY_BLOCK, ls = ld + top_k + 8;
    /* work in chunks of query rows of one (b, h) plane, handed out dynamically: a thread the
     * OS holds back (shared machine) does not hold the others up */
    const int64_t planes = B * H, split = 4 * n_threads > planes ? (4 * n_threads + planes - 1) / planes : 1;
    const int64_t chunk = (Tq + split - 1) / split, chunks_per_plane = (Tq + chunk - 1) / chunk;
    const int transpose = chunk >= 2 * ROWS;  /* else K^T would cost more than it saves */
#pragma omp parallel num_threads(n_threads) if (planes * Tq * Tk * dk > 65536)
    {
        /* per thread: K^T of the (b, h) plane in use (dk x ld, zero-padded columns), a compact
         * copy of its V, and the scores of ROWS queries (row stride ls) */
        float *kt = transpose ? calloc((size_t)(dk * ld), sizeof(float)) : NULL;
        float *vc = transpose ? malloc((size_t)(Tk * dv) * sizeof(float)) : NULL;
        float *sc = malloc((size_t)(ROWS * ls) * sizeof(float));
        int64_t kt_plane = -1;
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = 0; c < planes * chunks_per_plane; ++c) {
            const int64_t plane = c / chunks_per_plane, b = plane / H, h = plane % H;
            const int64_t i0 = c % chunks_per_plane * chunk, i1 = i0 + chunk < Tq ? i0 + chunk : Tq;
            const float *kp = k + b * sk.b + h * sk.h;
            const float *vp = v + b * sv.b + h * sv.h;
            int64_t vt = sv.t;
            if (transpose) {
                if (kt_plane != plane) {
                    kt_plane = plane;
                    for (int64_t j = 0; j < Tk; ++j) {
                        for (int64_t d = 0; d < dk; ++d) kt[d * ld + j] = kp[j * sk.t + d];
                        memcpy(vc + j * dv, vp + j * sv.t, (size_t)dv * sizeof(float));
                    }
                }
                vp = vc;
                vt = dv;
            }
            for (int64_t g = i0; g < i1; g += ROWS) {  /* ROWS queries share the score pass */
                const int64_t rows = i1 - g < ROWS ? i1 - g : ROWS;
                const float *qr[ROWS];
                for (int64_t r = 0; r < ROWS; ++r) qr[r] = q + b * sq.b + h * sq.h + (g + (r < rows ? r : 0)) * sq.t;
                if (transpose) {
                    scores(qr, kt, ld, dk, offset + g + rows, sc, ls);
                } else {  /* a few rows (decoding): dot products straight from K */
                    for (int64_t r = 0; r < rows; ++r)
                        for (int64_t j = 0; j < offset + g + r + 1; ++j) sc[r * ls + j] = dot(qr[r], kp + j * sk.t, dk);
                }
                for (int64_t r = 0; r < rows; ++r) {
                    const int64_t i = g + r, row = (plane * Tq + i) * top_k;
                    forward_row(sc + r * ls, vp, vt, y + b * sy.b + h * sy.h + i * sy.t,
                                idx ? idx + row : NULL, p ? p + row : NULL, offset + i + 1, dv, top_k, scale);
                }
            }
        }
        free(kt);
        free(vc);
        free(sc);
    }
}

/* n rows of d floats (row stride st) as a compact array: `rows` itself when already
 * compact, else gathered into `buf` (far-apart rows in the main loop would wait on memory). */
static const float *compact(const float *rows, int64_t st, float *restrict buf, int64_t n, int64_t d) {
    if (st == d) return rows;
    for (int64_t j = 0; j < n; ++j) memcpy(buf + j * d, rows + j * st, (size_t)d * sizeof(float));
    return buf;
}

/* Copies compact rows back to rows of stride st (nothing to do when they are the same). */
static void scatter(float *rows, int64_t st, const float *restrict src, int64_t n, int64_t d) {
    if (src == rows) return;
    for (int64_t j = 0; j < n; ++j) memcpy(rows + j * st, src + j * d, (size_t)d * sizeof(float));
}

/* Gradients of the forward above from its idx/p, written into dq (B, H, Tq, dk),
 * dk_ (B, H, Tk, dk) and dv_ (B, H, Tk, dv). One thread owns a (b, h) plane, so the
 * scatter-adds never race. A plane whose rows are not compact (transposed (B, T, H, d)
 * views) is gathered into per-thread buffers first, its gradients scattered back last. */
void topk_attention_backward(const float *q, const float *k, const float *v, const float *dy,
                             const int32_t *idx, const float *p, float *dq, float *dk_,
                             float *dv_, int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t dk,
                             int64_t dv, int64_t top_k, strides sq, strides sk, strides sv,
                             strides sdy, strides sdq, strides sdk, strides sdv, int n_threads) {
    const float scale = 1.0f / sqrtf((float)dk);
#pragma omp parallel num_threads(n_threads) if (B * H * Tq * top_k * (dk + dv) > 65536)
    {
        float *buf = malloc((size_t)(2 * Tq * (dk + dv) + 2 * Tk * (dk + dv)) * sizeof(float));
        float *qb = buf, *dyb = qb + Tq * dk, *dqb = dyb + Tq * dv, *kb = dqb + Tq * dk;
        float *vb = kb + Tk * dk, *dkb = vb + Tk * dv, *dvb = dkb + Tk * dk;
#pragma omp for schedule(dynamic, 1)
        for (int64_t plane = 0; plane < B * H; ++plane) {
            const int64_t b = plane / H, h = plane % H;
            const float *qc = compact(q + b * sq.b + h * sq.h, sq.t, qb, Tq, dk);
            const float *dyc = compact(dy + b * sdy.b + h * sdy.h, sdy.t, dyb, Tq, dv);
            const float *kc = compact(k + b * sk.b + h * sk.h, sk.t, kb, Tk, dk);
            const float *vc = compact(v + b * sv.b + h * sv.h, sv.t, vb, Tk, dv);
            float *dqp = dq + b * sdq.b + h * sdq.h, *dkp = dk_ + b * sdk.b + h * sdk.h;
            float *dvp = dv_ + b * sdv.b + h * sdv.h;
            float *dqc = sdq.t == dk ? dqp : dqb, *dkc = sdk.t == dk ? dkp : dkb, *dvc = sdv.t == dv ? dvp : dvb;
            memset(dkc, 0, (size_t)(Tk * dk) * sizeof(float));
            memset(dvc, 0, (size_t)(Tk * dv) * sizeof(float));
            for (int64_t i = 0; i < Tq; ++i) {
                const float *qi = qc + i * dk, *dyi = dyc + i * dv;
                float *dqi = dqc + i * dk;
                const int32_t *ai = idx + (plane * Tq + i) * top_k;
                const float *pi = p + (plane * Tq + i) * top_k;
                float dp[MAX_TOP_K], mean = 0.0f;  /* dP_j = dy_i . v_j; mean = sum_j p_j dP_j */
                for (int64_t j = 0; j < top_k; ++j) {
                    dp[j] = dot(dyi, vc + ai[j] * dv, dv);
                    mean += pi[j] * dp[j];
                }
                memset(dqi, 0, (size_t)dk * sizeof(float));
                for (int64_t j = 0; j < top_k; ++j) {
                    if (pi[j] == 0.0f) continue;  /* unused slot (or underflowed weight) */
                    const float ds = pi[j] * (dp[j] - mean) * scale;  /* d score_j */
                    axpy(dqi, ds, kc + ai[j] * dk, dk);
                    axpy(dkc + ai[j] * dk, ds, qi, dk);
                    axpy(dvc + ai[j] * dv, pi[j], dyi, dv);
                }
            }
            scatter(dqp, sdq.t, dqc, Tq, dk);
            scatter(dkp, sdk.t, dkc, Tk, dk);
            scatter(dvp, sdv.t, dvc, Tk, dv);
        }
        free(buf);
    }
}
