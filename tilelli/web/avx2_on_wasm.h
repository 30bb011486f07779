/* The AVX2 intrinsics engine.c's TL_AVX2 paths use, written with WebAssembly SIMD128, so the
 * browser runs the engine's vector kernels (2-bit decode in registers, bf16 widening, the
 * two-input float product) instead of its scalar fallback: 20x faster decoding, measured,
 * without a WebAssembly copy of any kernel. An __m256 is a pair of 128-bit vectors; a fused
 * multiply-add is a multiply and an add (SIMD128 has no FMA), so sums round as the portable
 * code rounds, not as AVX2 does. Covers what engine.c uses; a new intrinsic there fails the
 * WebAssembly build at compile time, not silently.
 */
#include <wasm_simd128.h>

typedef v128_t __m128;
typedef v128_t __m128i;
typedef struct { v128_t lo, hi; } __m256;
typedef __m256 __m256i;

static inline __m128i _mm_loadu_si128(const __m128i *p) { return wasm_v128_load(p); }
static inline __m256i _mm256_loadu_si256(const __m256i *p) {
    return (__m256i){wasm_v128_load(p), wasm_v128_load((const char *)p + 16)};
}
static inline __m256i _mm256_cvtepu16_epi32(__m128i a) {
    return (__m256i){wasm_u32x4_extend_low_u16x8(a), wasm_u32x4_extend_high_u16x8(a)};
}
static inline __m256i _mm256_srli_epi32(__m256i a, int n) { return (__m256i){wasm_u32x4_shr(a.lo, n), wasm_u32x4_shr(a.hi, n)}; }
static inline __m256i _mm256_slli_epi32(__m256i a, int n) { return (__m256i){wasm_i32x4_shl(a.lo, n), wasm_i32x4_shl(a.hi, n)}; }
static inline __m256 _mm256_castsi256_ps(__m256i a) { return a; }

/* tab[idx & 3] in each 128-bit half, as vpermilps: byte indices 4 * (idx & 3) + 0..3, swizzled. */
static inline v128_t permute4(v128_t tab, v128_t idx) {
    const v128_t bytes = wasm_i32x4_add(wasm_i32x4_mul(wasm_v128_and(idx, wasm_i32x4_splat(3)),
                                                       wasm_i32x4_splat(0x04040404)), wasm_i32x4_splat(0x03020100));
    return wasm_i8x16_swizzle(tab, bytes);
}
static inline __m256 _mm256_permutevar_ps(__m256 tab, __m256i idx) {
    return (__m256){permute4(tab.lo, idx.lo), permute4(tab.hi, idx.hi)};
}

static inline __m256 _mm256_setr_ps(float a, float b, float c, float d, float e, float f, float g, float h) {
    return (__m256){wasm_f32x4_make(a, b, c, d), wasm_f32x4_make(e, f, g, h)};
}
static inline __m256 _mm256_setzero_ps(void) { return (__m256){wasm_f32x4_splat(0.0f), wasm_f32x4_splat(0.0f)}; }
static inline __m256 _mm256_set1_ps(float a) { return (__m256){wasm_f32x4_splat(a), wasm_f32x4_splat(a)}; }
static inline __m256 _mm256_loadu_ps(const float *p) { return (__m256){wasm_v128_load(p), wasm_v128_load(p + 4)}; }
static inline void _mm256_storeu_ps(float *p, __m256 a) {
    wasm_v128_store(p, a.lo);
    wasm_v128_store(p + 4, a.hi);
}
static inline __m256 _mm256_mul_ps(__m256 a, __m256 b) { return (__m256){wasm_f32x4_mul(a.lo, b.lo), wasm_f32x4_mul(a.hi, b.hi)}; }
static inline __m256 _mm256_fmadd_ps(__m256 a, __m256 b, __m256 c) {
    return (__m256){wasm_f32x4_add(wasm_f32x4_mul(a.lo, b.lo), c.lo), wasm_f32x4_add(wasm_f32x4_mul(a.hi, b.hi), c.hi)};
}

/* the pieces of a horizontal sum */
static inline __m128 _mm256_castps256_ps128(__m256 a) { return a.lo; }
#define _mm256_extractf128_ps(a, i) ((i) ? (a).hi : (a).lo)
static inline __m128 _mm_add_ps(__m128 a, __m128 b) { return wasm_f32x4_add(a, b); }
static inline __m128 _mm_movehl_ps(__m128 a, __m128 b) { return wasm_i32x4_shuffle(a, b, 6, 7, 2, 3); }
static inline __m128 _mm_add_ss(__m128 a, __m128 b) {
    return wasm_f32x4_replace_lane(a, 0, wasm_f32x4_extract_lane(a, 0) + wasm_f32x4_extract_lane(b, 0));
}
#define _mm_shuffle_ps(a, b, imm) \
    wasm_i32x4_shuffle((a), (b), (imm) & 3, ((imm) >> 2) & 3, 4 + (((imm) >> 4) & 3), 4 + (((imm) >> 6) & 3))
static inline float _mm_cvtss_f32(__m128 a) { return wasm_f32x4_extract_lane(a, 0); }

#define TL_AVX2 1
