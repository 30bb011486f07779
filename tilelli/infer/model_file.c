/* The model file (`model.tlm`, written by tilelli/infer/model_file.py): a whole model in the
 * layouts engine.c reads, so loading it is checking it and pointing the structs into it.
 *
 *   header   "TLLM", uint32 version, int64 config[10] (arch, d, n_layers, vocab, max_seq,
 *            n_heads, d_head, top_k, kernel, hidden), int64 chat, has_rule, max_new_tokens,
 *            double refusal_threshold, surprise_threshold, temperature, top_p, int64 n_tensors,
 *            int64 detector_count (0: no detector, else 2 * vocab + 2), detector_offset,
 *            double detector_bias
 *   table    n_tensors entries of int64 (kind, rows, cols, per_row, data_offset, data_bytes,
 *            scale_offset, scale_count), in the order of the structs: tok, head, pos, normf_w,
 *            normf_b, then per layer norm1_w, norm1_b, norm2_w, norm2_b, router_w, router_b,
 *            conv_w, qkv, proj, up, down (a tensor the architecture lacks: all zeros)
 *   detector when it has one, detector_count float64 weights at a multiple of 64 bytes
 *   data     each tensor at a multiple of 64 bytes, little-endian
 *
 * The loader trusts nothing: the magic, the version, every config field's range, every entry's
 * kind and shape against the config, every offset and length against the file size, the
 * detector's length against the vocabulary and the file, its numbers finite, then tl_check_model. A unity-build part: included after engine.c (runner.c, tilelli/web/wasm.c).
 */
#include <stdio.h>

#define TLM_VERSION 2
#define TLM_ALIGN 64
#define TLM_HEADER 176
#define TLM_ENTRY 64
#define TLM_GLOBALS 5
#define TLM_PER_LAYER 11

/* What a model's maker chose for its use: the chat template, the abstain rule (with its refusal
 * detector, or none: n_detector 0), sampling defaults. */
typedef struct {
    int64_t chat, has_rule, max_new_tokens;
    double refusal_threshold, surprise_threshold, temperature, top_p;
    int64_t n_detector;          /* 2 * vocab + 2 weights, or 0 */
    const uint8_t *detector;     /* n_detector little-endian float64 in the file's buffer (read_f64) */
    double detector_bias;
} tl_settings;

typedef struct {
    tl_model model;
    tl_layer *layers;
    tl_settings settings;
} tl_loaded;

static int64_t read_i64(const uint8_t *p) {
    int64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static double read_f64(const uint8_t *p) {
    double v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The shape (rows, cols) slot i of the table must have (0 x 0: a tensor the architecture lacks),
 * and whether it is a matrix (any kind) rather than a float32 vector. */
static int slot_shape(const tl_model *m, int64_t i, int64_t shape[2]) {
    const int64_t d = m->d, lite = m->arch == ARCH_LITE, vanilla = !lite;
    const int64_t globals[TLM_GLOBALS][2] = {{m->vocab, d}, {m->vocab, d}, {m->max_seq, d}, {1, d}, {1, d}};
    const int64_t layer[TLM_PER_LAYER][2] = {
        {1, d}, {1, d}, {vanilla, vanilla * d}, {vanilla, vanilla * d},   /* norm1, norm2 (vanilla) */
        {3 * lite, lite * d}, {lite, 3 * lite}, {lite * d, lite * m->kernel},  /* router, conv (lite) */
        {3 * d, d}, {d, d}, {m->hidden, d}, {d, m->hidden}};              /* qkv, proj, up, down */
    const int64_t j = i < TLM_GLOBALS ? -1 : (i - TLM_GLOBALS) % TLM_PER_LAYER;
    memcpy(shape, j < 0 ? globals[i] : layer[j], 2 * sizeof(int64_t));
    return j < 0 ? i < 2 : j >= 7;
}

/* offset..offset+bytes lies inside a file of `size` bytes (no overflow), aligned to `align`. */
static int inside(int64_t offset, int64_t bytes, int64_t size, int64_t align) {
    return offset >= TLM_HEADER && bytes >= 0 && offset <= size && bytes <= size - offset && offset % align == 0;
}

static int in_range(int64_t v, int64_t lo, int64_t hi) { return v >= lo && v <= hi; }

/* Fill `out` from the file's bytes `buf` (64-byte aligned, kept alive by the caller while the
 * model is used). Returns 0, or 1 with a one-line reason in `err`; either way the caller frees
 * out->layers. */
static int tl_load(const uint8_t *buf, int64_t size, tl_loaded *out, char *err, size_t errlen) {
#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return 1; } while (0)
    memset(out, 0, sizeof *out);
    if (size < TLM_HEADER || memcmp(buf, "TLLM", 4) != 0) FAIL("not a tilelli model file (no TLLM header)");
    uint32_t version;
    memcpy(&version, buf + 4, 4);
    if (version != TLM_VERSION) FAIL("model file version %u, this build reads version %d", version, TLM_VERSION);
    int64_t c[10];
    for (int i = 0; i < 10; ++i) c[i] = read_i64(buf + 8 + 8 * i);
    tl_model *m = &out->model;
    *m = (tl_model){.arch = c[0], .d = c[1], .n_layers = c[2], .vocab = c[3], .max_seq = c[4], .n_heads = c[5],
                    .d_head = c[6], .top_k = c[7], .kernel = c[8], .hidden = c[9]};
    const int64_t big = 1 << 20;
    if (!in_range(m->arch, ARCH_LITE, ARCH_VANILLA) || !in_range(m->d, 1, big) || !in_range(m->n_layers, 1, 4096) ||
        m->vocab != 256 || !in_range(m->max_seq, 1, big) || !in_range(m->n_heads, 1, big) ||
        !in_range(m->d_head, 1, big) || !in_range(m->top_k, 0, MAX_TOP_K) || !in_range(m->kernel, 1, 1024) ||
        !in_range(m->hidden, 1, big))
        FAIL("the model file's config is out of range (damaged file?)");
    tl_settings *s = &out->settings;
    s->chat = read_i64(buf + 88);
    s->has_rule = read_i64(buf + 96);
    s->max_new_tokens = read_i64(buf + 104);
    s->refusal_threshold = read_f64(buf + 112);
    s->surprise_threshold = read_f64(buf + 120);
    s->temperature = read_f64(buf + 128);
    s->top_p = read_f64(buf + 136);
    s->n_detector = read_i64(buf + 152);
    const int64_t detector_at = read_i64(buf + 160);
    s->detector_bias = read_f64(buf + 168);
    /* with a detector the threshold is on its log-odds (any finite number), without one on P(refusal) */
    const int threshold_ok = s->n_detector ? isfinite(s->refusal_threshold)
                                           : s->refusal_threshold >= 0 && s->refusal_threshold <= 1;
    if (!in_range(s->chat, 0, 1) || !in_range(s->has_rule, 0, 1) || !in_range(s->max_new_tokens, 0, big) ||
        !threshold_ok || !(s->surprise_threshold > 0) ||
        !(s->temperature >= 0 && s->temperature < INFINITY) || !(s->top_p > 0 && s->top_p <= 1))
        FAIL("the model file's chat settings are out of range (damaged file?)");
    if (s->n_detector) {
        if (s->n_detector != 2 * m->vocab + 2 || !s->has_rule)
            FAIL("the model file's refusal detector has %lld weights, a rule for %lld bytes needs %lld",
                 (long long)s->n_detector, (long long)m->vocab, (long long)(2 * m->vocab + 2));
        if (!inside(detector_at, s->n_detector * 8, size, TLM_ALIGN))
            FAIL("the refusal detector lies outside the file (truncated?)");
        s->detector = buf + detector_at;
        for (int64_t i = 0; i < s->n_detector; ++i)
            if (!isfinite(read_f64(s->detector + 8 * i))) FAIL("the refusal detector's weight %lld is not a number",
                                                               (long long)i);
        if (!isfinite(s->detector_bias)) FAIL("the refusal detector's bias is not a number");
    } else if (detector_at != 0 || s->detector_bias != 0.0) {
        FAIL("the model file's detector fields are set without a detector (damaged file?)");
    }
    const int64_t n = read_i64(buf + 144), L = m->n_layers;
    if (n != TLM_GLOBALS + TLM_PER_LAYER * L) FAIL("the model file lists %lld tensors, %lld layers need %lld",
                                                   (long long)n, (long long)L, (long long)(TLM_GLOBALS + TLM_PER_LAYER * L));
    if (!inside(TLM_HEADER, n * TLM_ENTRY, size, 8)) FAIL("the model file is truncated (its tensor table is cut)");
    out->layers = calloc((size_t)L, sizeof(tl_layer));
    if (!out->layers) FAIL("out of memory");
    for (int64_t i = 0; i < n; ++i) {
        const uint8_t *e = buf + TLM_HEADER + i * TLM_ENTRY;
        const int64_t kind = read_i64(e), rows = read_i64(e + 8), cols = read_i64(e + 16), per_row = read_i64(e + 24);
        const int64_t off = read_i64(e + 32), bytes = read_i64(e + 40), soff = read_i64(e + 48),
                      scount = read_i64(e + 56);
        int64_t want[2];
        const int matrix = slot_shape(m, i, want);
        if (rows != want[0] || cols != want[1])
            FAIL("tensor %lld is %lld x %lld, the config needs %lld x %lld", (long long)i, (long long)rows,
                 (long long)cols, (long long)want[0], (long long)want[1]);
        if (!matrix ? kind != W_F32 : !in_range(kind, W_F32, W_T2)) FAIL("tensor %lld has unknown kind %lld",
                                                                          (long long)i, (long long)kind);
        const int64_t need = kind == W_T2 ? rows * nblocks(cols) * 16 : rows * cols * (kind == W_BF16 ? 2 : 4);
        if (bytes != need) FAIL("tensor %lld holds %lld bytes, its shape needs %lld", (long long)i,
                                (long long)bytes, (long long)need);
        if (!inside(off, bytes, size, TLM_ALIGN)) FAIL("tensor %lld lies outside the file (truncated?)", (long long)i);
        const void *data = rows ? buf + off : NULL;
        const float *scale = NULL;
        if (kind == W_T2) {
            if (!in_range(per_row, 0, 1) || scount != (per_row ? rows : 1))
                FAIL("tensor %lld has %lld scales for %lld rows", (long long)i, (long long)scount, (long long)rows);
            if (!inside(soff, scount * 4, size, TLM_ALIGN)) FAIL("the scales of tensor %lld lie outside the file",
                                                                 (long long)i);
            scale = (const float *)(buf + soff);
        }
        const tl_weight w = {kind, rows, cols, data, scale, per_row};
        if (i < TLM_GLOBALS) {
            const float *v = data;
            if (i == 0) m->tok = w;
            else if (i == 1) m->head = w;
            else if (i == 2) m->pos = v;
            else if (i == 3) m->normf_w = v;
            else m->normf_b = v;
            continue;
        }
        tl_layer *ly = &out->layers[(i - TLM_GLOBALS) / TLM_PER_LAYER];
        const float **vectors[7] = {&ly->norm1_w, &ly->norm1_b, &ly->norm2_w, &ly->norm2_b,
                                    &ly->router_w, &ly->router_b, &ly->conv_w};
        tl_weight *matrices[4] = {&ly->qkv, &ly->proj, &ly->up, &ly->down};
        const int64_t j = (i - TLM_GLOBALS) % TLM_PER_LAYER;
        if (j < 7) *vectors[j] = data;
        else *matrices[j - 7] = w;
    }
    m->layers = out->layers;
    const int failed = tl_check_model(m);
    if (failed) FAIL("the engine refused the model's shapes (check %d)", failed);
    return 0;
#undef FAIL
}
