/* The generation loop without Python: tilelli/infer/generate.py's `Batch.step` for one
 * sequence, with the same choices, so a greedy run gives the bytes `tilelli generate
 * --temperature 0` gives.
 *
 * Each step feeds the prompt (first) or the last byte, bans the bytes the constraints forbid
 * (tilelli/infer/constraints.py: valid UTF-8, no quoting of avoided texts), and picks: the first
 * largest logit at temperature 0, else a draw from the softmax of logits / temperature after
 * top-k and top-p. Stops are single bytes (the chat's END and USER) and are not output. The
 * random stream is this file's own (splitmix64), not numpy's: seeded runs repeat here, and
 * sampled text differs from Python's. A unity-build part: included after engine.c.
 */

/* One model and a workspace sized for the largest call so far. */
typedef struct {
    const tl_model *m;
    int threads;
    float *work;
    int64_t work_floats;
} tl_ctx;

static void seq_free(tl_seq *s) {
    free(s->k);
    free(s->v);
    free(s->conv);
    memset(s, 0, sizeof *s);
}

/* Zeroed caches for up to max_len positions (layout in engine.c). Returns 0, or 1 out of memory. */
static int seq_alloc(const tl_model *m, int64_t max_len, tl_seq *s) {
    const int64_t heads = m->n_layers * m->n_heads * m->d_head, convs = m->kernel > 1 ? m->kernel - 1 : 1;
    s->k = calloc((size_t)(heads * tl_key_stride(max_len)), sizeof(float));
    s->v = calloc((size_t)(heads * max_len), sizeof(float));
    s->conv = calloc((size_t)(m->n_layers * convs * m->d), sizeof(float));
    s->max_len = max_len;
    s->pos = 0;
    if (s->k && s->v && s->conv) return 0;
    seq_free(s);
    return 1;
}

/* Feed n bytes to s; logits of the last (or, with `all`, of every) byte. Returns tl_forward's code. */
static int ctx_forward(tl_ctx *c, tl_seq *s, const uint8_t *bytes, int64_t n, int all, float *logits) {
    const int64_t need = tl_workspace_floats(c->m, n, c->threads);
    if (need > c->work_floats) {
        float *w = realloc(c->work, (size_t)need * sizeof(float));
        if (!w) return 1;
        c->work = w;
        c->work_floats = need;
    }
    int32_t *tokens = malloc((size_t)n * sizeof(int32_t));
    if (!tokens) return 1;
    for (int64_t i = 0; i < n; ++i) tokens[i] = bytes[i];
    tl_seq *seqs[1] = {s};
    const int failed = tl_forward(c->m, 1, seqs, tokens, &n, logits, all, c->work, c->threads);
    free(tokens);
    return failed;
}

/* Softmax of 256 logits in double (as generate.py's `softmax`); -inf entries get 0. */
static void softmax256(const float *logits, double *p) {
    double mx = -INFINITY, total = 0.0;
    for (int b = 0; b < 256; ++b) mx = logits[b] > mx ? logits[b] : mx;
    for (int b = 0; b < 256; ++b) total += (p[b] = exp((double)logits[b] - mx));
    for (int b = 0; b < 256; ++b) p[b] /= total;
}

/* --- constraints (tilelli/infer/constraints.py) ------------------------------------------ */

#define QUOTE_MIN 12
#define QUOTE_START_MIN 6

static int char_length(int lead) {
    return lead < 0x80 ? 1 : lead >= 0xC2 && lead <= 0xDF ? 2 : lead >= 0xE0 && lead <= 0xEF ? 3
         : lead >= 0xF0 && lead <= 0xF4 ? 4 : 0;
}

/* Ban (banned[b] = 1) the bytes that make out + b invalid UTF-8 or start a character the `left`
 * bytes cannot finish; bytes in `stops` are allowed at a character boundary. */
static void utf8_ban(const uint8_t *out, int64_t n, int64_t left, const uint8_t *stops, int n_stops,
                     uint8_t banned[256]) {
    for (int64_t back = 1; back <= n && back <= 4; ++back) {
        const int b = out[n - back];
        if (b >= 0x80 && b <= 0xBF) continue;
        if (char_length(b) > back) {  /* inside a character: only the continuations UTF-8 allows here */
            int lo = 0x80, hi = 0xBF;
            if (back == 1 && b == 0xE0) lo = 0xA0;
            if (back == 1 && b == 0xED) hi = 0x9F;
            if (back == 1 && b == 0xF0) lo = 0x90;
            if (back == 1 && b == 0xF4) hi = 0x8F;
            for (int c = 0; c < 256; ++c) banned[c] |= c < lo || c > hi;
            return;
        }
        break;
    }
    for (int c = 0; c < 256; ++c) {
        int stop = 0;
        for (int i = 0; i < n_stops; ++i) stop |= stops[i] == c;
        const int len = char_length(c);
        banned[c] |= !stop && !(len >= 1 && len <= left);
    }
}

/* Ban the bytes that would complete QUOTE_MIN bytes of an avoided text at the end of `out`, or
 * QUOTE_START_MIN bytes of a text's opening at its start. */
static void quote_ban(const uint8_t *out, int64_t n, const char *const *texts, int n_texts, uint8_t banned[256]) {
    const int64_t k = QUOTE_MIN - 1;
    for (int t = 0; t < n_texts; ++t) {
        const uint8_t *text = (const uint8_t *)texts[t];
        const int64_t len = (int64_t)strlen(texts[t]);
        if (n >= k)
            for (int64_t at = 0; at + k < len; ++at)
                if (memcmp(text + at, out + n - k, (size_t)k) == 0) banned[text[at + k]] = 1;
        if (n >= QUOTE_START_MIN - 1 && n < len && memcmp(text, out, (size_t)n) == 0) banned[text[n]] = 1;
    }
}

/* --- choosing a byte (generate.py's `choose` and `filter_logits`) ------------------------ */

static double next_uniform(uint64_t *state) {  /* splitmix64, 53 bits in [0, 1) */
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0;
}

static int argmax256(const float *x) {
    int best = 0;
    for (int b = 1; b < 256; ++b) best = x[b] > x[best] ? b : best;
    return best;
}

typedef struct {
    int64_t max_new_tokens, top_k;
    double temperature, top_p;
    uint64_t seed;
    int valid_utf8;
    const uint8_t *stops;  /* single bytes that end generation (not output) */
    int n_stops;
    const char *const *avoid;  /* texts an output may not quote */
    int n_avoid;
} tl_sampling;

static int choose(const float *logits, const tl_sampling *cfg, uint64_t *rng) {
    if (cfg->temperature <= 0) return argmax256(logits);
    double z[256];
    int order[256];
    double mx = -INFINITY;
    for (int b = 0; b < 256; ++b) {
        z[b] = (double)(logits[b] / (float)cfg->temperature);
        mx = z[b] > mx ? z[b] : mx;
    }
    if (!isfinite(mx)) return argmax256(logits);  /* a temperature so small the logits overflow: greedy */
    for (int b = 0; b < 256; ++b) order[b] = b;
    for (int i = 1; i < 256; ++i) {  /* stable insertion sort, largest first */
        const int b = order[i];
        int j = i;
        for (; j > 0 && z[order[j - 1]] < z[b]; --j) order[j] = order[j - 1];
        order[j] = b;
    }
    if (cfg->top_k > 0 && cfg->top_k < 256)
        for (int i = (int)cfg->top_k; i < 256; ++i)
            if (z[order[i]] < z[order[cfg->top_k - 1]]) z[order[i]] = -INFINITY;
    double p[256], total = 0.0, cum = 0.0;
    for (int b = 0; b < 256; ++b) total += (p[b] = exp(z[b] - mx));
    if (cfg->top_p < 1.0)
        for (int i = 0; i < 256; ++i) {  /* keep the smallest prefix reaching top_p */
            const double q = p[order[i]] / total;
            if (cum >= cfg->top_p) z[order[i]] = -INFINITY;
            cum += q;
        }
    total = 0.0;
    for (int b = 0; b < 256; ++b) total += (p[b] = z[b] == -INFINITY ? 0.0 : exp(z[b] - mx));
    const double r = next_uniform(rng) * total;
    double acc = 0.0;
    for (int b = 0; b < 256; ++b)
        if (p[b] > 0 && (acc += p[b]) > r) return b;
    return argmax256(logits);
}

/* --- one generated sequence ------------------------------------------------------------- */

enum { RUNNING = 0, STOP_MAX_NEW = 1, STOP_STOP = 2, STOP_CONTEXT = 3 };

typedef struct {
    tl_ctx *ctx;
    tl_sampling cfg;
    tl_seq seq;
    uint64_t rng;
    uint8_t *prompt, *out;  /* out: the bytes produced so far (stops excluded) */
    int64_t prompt_len, n_out, generated;
    int next_byte;  /* the byte to feed next; -1 before the prompt is fed */
    int stop_reason;
    double prob;  /* the model's probability of the last byte produced (confidence) */
} tl_gen;

static void gen_free(tl_gen *g) {
    seq_free(&g->seq);
    free(g->prompt);
    free(g->out);
    memset(g, 0, sizeof *g);
}

/* Start generating after `prompt` (1 .. max_seq bytes). Returns 0, 1 out of memory, 3 too long. */
static int gen_start(tl_gen *g, tl_ctx *ctx, const uint8_t *prompt, int64_t n, const tl_sampling *cfg) {
    memset(g, 0, sizeof *g);
    if (n < 1 || n > ctx->m->max_seq) return 3;
    g->ctx = ctx;
    g->cfg = *cfg;
    g->rng = cfg->seed;
    g->prompt_len = n;
    g->next_byte = -1;
    const int64_t room = n + cfg->max_new_tokens;
    g->prompt = malloc((size_t)n);
    g->out = malloc((size_t)cfg->max_new_tokens + 1);
    if (!g->prompt || !g->out || seq_alloc(ctx->m, room < ctx->m->max_seq ? room : ctx->m->max_seq, &g->seq)) {
        gen_free(g);
        return 1;
    }
    memcpy(g->prompt, prompt, (size_t)n);
    if (cfg->max_new_tokens == 0) g->stop_reason = STOP_MAX_NEW;
    return 0;
}

/* One step: the next byte produced (>= 0), -1 when the sequence has ended (g->stop_reason says
 * why; a stop byte ends it without being produced), or -2 - code when the engine failed. */
static int gen_next(tl_gen *g) {
    while (!g->stop_reason) {
        float logits[256];
        const int fed = g->next_byte < 0;
        const uint8_t one = (uint8_t)g->next_byte;
        const int failed = ctx_forward(g->ctx, &g->seq, fed ? g->prompt : &one, fed ? g->prompt_len : 1, 0, logits);
        if (failed) return -2 - failed;
        double p[256];
        softmax256(logits, p);  /* confidences: the model's own, before any ban */
        uint8_t banned[256] = {0};
        if (g->cfg.valid_utf8) {
            const int64_t window = g->ctx->m->max_seq + 1 - g->prompt_len;
            const int64_t left = (g->cfg.max_new_tokens < window ? g->cfg.max_new_tokens : window) - g->generated;
            utf8_ban(g->out, g->n_out, left, g->cfg.stops, g->cfg.n_stops, banned);
        }
        quote_ban(g->out, g->n_out, g->cfg.avoid, g->cfg.n_avoid, banned);
        int n_banned = 0;
        for (int b = 0; b < 256; ++b) n_banned += banned[b];
        if (n_banned < 256)
            for (int b = 0; b < 256; ++b)
                if (banned[b]) logits[b] = -INFINITY;
        const int byte = choose(logits, &g->cfg, &g->rng);
        g->next_byte = byte;
        g->generated += 1;
        g->prob = p[byte];
        int stop = 0;
        for (int i = 0; i < g->cfg.n_stops; ++i) stop |= g->cfg.stops[i] == byte;
        if (stop) g->stop_reason = STOP_STOP;
        else if (g->generated >= g->cfg.max_new_tokens) g->stop_reason = STOP_MAX_NEW;
        else if (g->prompt_len + g->generated > g->ctx->m->max_seq) g->stop_reason = STOP_CONTEXT;
        if (!stop) {
            g->out[g->n_out++] = (uint8_t)byte;
            return byte;
        }
    }
    return -1;
}
