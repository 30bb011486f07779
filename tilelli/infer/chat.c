/* A chat without Python: the template (tilelli/chat/template.py), history trimming
 * (tilelli/chat/session.py `conversation_prompt`) and the abstain decision
 * (tilelli/chat/abstain.py `measure`, `AbstainRule.decide`, `answer_sampling`; with a refusal
 * detector, tilelli/chat/detector.py `features` and `Detector.score`), so the runner and the
 * browser refuse and answer exactly where `tilelli chat` does.
 *
 * A reply is a stream either way: `chat_begin` decides, then `gen_next` gives the answer's bytes,
 * or the bytes of the refusal when the rule abstains. A unity-build part: included after
 * engine.c, model_file.c and decode.c.
 */

#define USER 0xFE
#define ASSISTANT 0xFD
#define END 0xFF
#define PEAK_WINDOW 32
#define DETECTOR_FLOOR 1e-6  /* tilelli/chat/detector.py FLOOR */

static const char *const REFUSALS[2] = {"I can't answer that. Facts like that are beyond a 10M model.",
                                        "I can't answer that. I only understand simple English."};
static const char OPENING[] = "I can't answer that. ";  /* what both refusals open with */
static const uint8_t CHAT_STOPS[2] = {END, USER};

typedef struct {
    uint8_t *bytes;  /* USER text ASSISTANT reply END */
    int64_t len;
} tl_turn;

typedef struct {
    tl_ctx *ctx;
    tl_settings rule;  /* has_rule, the thresholds, the refusal detector */
    tl_turn *turns;
    int64_t n_turns;
    tl_gen gen;
    const uint8_t *refusal;  /* the refusal being streamed, or NULL */
    int64_t refusal_at;
    int abstained;
    uint8_t *text;  /* the user text of the reply in progress */
    int64_t text_len;
} tl_chat;

/* Append USER text ASSISTANT (and, when reply is given, reply END) to buf at *n. */
static void put_turn(uint8_t *buf, int64_t *n, const uint8_t *text, int64_t len, const uint8_t *reply,
                     int64_t rlen) {
    buf[(*n)++] = USER;
    memcpy(buf + *n, text, (size_t)len);
    *n += len;
    buf[(*n)++] = ASSISTANT;
    if (!reply) return;
    memcpy(buf + *n, reply, (size_t)rlen);
    *n += rlen;
    buf[(*n)++] = END;
}

/* Remember a finished turn. Returns 0, or 1 out of memory. */
static int chat_remember(tl_chat *c, const uint8_t *text, int64_t len, const uint8_t *reply, int64_t rlen) {
    tl_turn *turns = realloc(c->turns, (size_t)(c->n_turns + 1) * sizeof(tl_turn));
    if (!turns) return 1;
    c->turns = turns;
    tl_turn *t = &turns[c->n_turns];
    t->bytes = malloc((size_t)(len + rlen + 3));
    if (!t->bytes) return 1;
    t->len = 0;
    put_turn(t->bytes, &t->len, text, len, reply, rlen);
    c->n_turns += 1;
    return 0;
}

static void chat_reset(tl_chat *c) {
    for (int64_t i = 0; i < c->n_turns; ++i) free(c->turns[i].bytes);
    free(c->turns);
    c->turns = NULL;
    c->n_turns = 0;
}

/* log(max(p, DETECTOR_FLOOR)) of 256 probabilities, added to (add) or written over out. */
static void floored_logs(const double *p, double *out, int add) {
    for (int b = 0; b < 256; ++b) {
        const double v = log(p[b] > DETECTOR_FLOOR ? p[b] : DETECTOR_FLOOR);
        out[b] = add ? out[b] + v : v;
    }
}

/* The refusal detector's log-odds (tilelli/chat/detector.py `features`, `Detector.score`): its
 * weights . (floored log probabilities of the reply's first byte, their mean over the user text's
 * predictions, log P(refusal), surprise) + its bias. */
static double detector_score(const tl_settings *rule, const double *first, const double *text_sum, int64_t n_rows,
                             double refusal, double surprise) {
    double x[2 * 256 + 2], score = 0.0;
    for (int b = 0; b < 256; ++b) {
        x[b] = first[b];
        x[256 + b] = text_sum[b] / (double)n_rows;
    }
    x[512] = log(refusal > 1e-30 ? refusal : 1e-30);
    x[513] = surprise;
    for (int64_t i = 0; i < rule->n_detector; ++i) score += read_f64(rule->detector + 8 * i) * x[i];
    return score + rule->detector_bias;
}

/* One reading of the user's turn (tilelli/chat/abstain.py `Signals`): the rule's refusal score
 * (its detector's log-odds, or without one P(the reply opens with OPENING)), the peak
 * PEAK_WINDOW-byte mean bits/byte of the text, and which refusal the model would go on with
 * (0 fact, 1 unreadable). NaN when the prompt and a refusal do not fit. */
typedef struct {
    double score, surprise;
    int likelier;
} tl_reading;

/* The reading of a prompt ending USER text ASSISTANT, the text starting at `start`. */
static int measure(tl_ctx *ctx, const tl_settings *rule, const uint8_t *prompt, int64_t n, int64_t start,
                   tl_reading *r) {
    const int64_t open = (int64_t)strlen(OPENING), longest = (int64_t)strlen(REFUSALS[0]) + 1;
    r->score = r->surprise = NAN;
    r->likelier = 0;
    if (n + longest - 1 > ctx->m->max_seq) return 0;
    const int64_t total = n + open, k = total - start, n_text = n - start - 1;
    const int64_t n_rows = n_text > 1 ? n_text : 1;  /* the rows the detector averages: rows[:max(n_text, 1)] */
    uint8_t *chunk = malloc((size_t)total);
    float *logits = malloc((size_t)total * 256 * sizeof(float));
    double *lp = malloc((size_t)k * sizeof(double));
    double first[256], text_sum[256];
    tl_seq seq;
    int failed = !chunk || !logits || !lp || seq_alloc(ctx->m, total, &seq);
    if (!failed) {
        memcpy(chunk, prompt, (size_t)n);
        memcpy(chunk + n, OPENING, (size_t)open);
        /* on the exact float path whatever path the replies take (tilelli/chat/abstain.py's
         * measure): the integer path changes no decision */
        tl_model exact = *ctx->m;
        exact.int8 = 0;
        tl_ctx on_float = *ctx;
        on_float.m = &exact;
        failed = ctx_forward(&on_float, &seq, chunk, total, 1, logits);
        ctx->work = on_float.work;  /* the workspace it may have grown */
        ctx->work_floats = on_float.work_floats;
        seq_free(&seq);
    }
    if (!failed) {
        double p[256], opening = 0.0;
        for (int64_t j = 0; j <= k; ++j) {  /* row start-1+j predicts chunk[start+j]; the last, what follows */
            softmax256(logits + (start - 1 + j) * 256, p);
            if (rule->n_detector && j < n_rows) floored_logs(p, text_sum, j > 0);
            if (rule->n_detector && j == n_text + 1) floored_logs(p, first, 0);
            if (j == k) r->likelier = p[(uint8_t)REFUSALS[1][open]] > p[(uint8_t)REFUSALS[0][open]];
            else lp[j] = log(p[chunk[start + j]] > 1e-300 ? p[chunk[start + j]] : 1e-300);
        }
        for (int64_t j = n_text + 1; j < k; ++j) opening += lp[j];
        const double refusal = exp(opening);
        const int64_t w = n_text < PEAK_WINDOW ? n_text : PEAK_WINDOW;
        for (int64_t j0 = 0; w > 0 && j0 + w <= n_text; ++j0) {
            double bits = 0.0;
            for (int64_t j = j0; j < j0 + w; ++j) bits -= lp[j] / log(2.0);
            r->surprise = isnan(r->surprise) || bits / (double)w > r->surprise ? bits / (double)w : r->surprise;
        }
        r->score = rule->n_detector ? detector_score(rule, first, text_sum, n_rows, refusal, r->surprise) : refusal;
    }
    free(chunk);
    free(logits);
    free(lp);
    return failed;
}

/* Decide on the reply to `text` after the history and start it: the refusal's bytes or the
 * answer's come from chat_next. Returns 0, 1 out of memory (or an engine failure), 4 when the
 * message and its reply room do not fit the context. */
static int chat_begin(tl_chat *c, const uint8_t *text, int64_t len, const tl_sampling *sampling) {
    const int64_t max_seq = c->ctx->m->max_seq;
    const int64_t room = sampling->max_new_tokens < max_seq / 2 ? sampling->max_new_tokens : max_seq / 2;
    gen_free(&c->gen);
    free(c->text);
    c->text = NULL;
    c->refusal = NULL;
    c->abstained = 0;
    if (len + 2 + room > max_seq) return 4;
    int64_t first = 0, past = 0;  /* drop the oldest turns until the prompt and the room fit */
    for (int64_t i = 0; i < c->n_turns; ++i) past += c->turns[i].len;
    while (past + len + 2 + room > max_seq) past -= c->turns[first++].len;
    uint8_t *prompt = malloc((size_t)(past + len + 2));
    c->text = malloc((size_t)len + 1);
    if (!prompt || !c->text) {
        free(prompt);
        return 1;
    }
    memcpy(c->text, text, (size_t)len);
    c->text_len = len;
    int64_t n = 0;
    for (int64_t i = first; i < c->n_turns; ++i) {
        memcpy(prompt + n, c->turns[i].bytes, (size_t)c->turns[i].len);
        n += c->turns[i].len;
    }
    put_turn(prompt, &n, text, len, NULL, 0);
    for (int64_t i = 0; i < first; ++i) free(c->turns[i].bytes);  /* the dropped turns are gone for good */
    memmove(c->turns, c->turns + first, (size_t)(c->n_turns - first) * sizeof(tl_turn));
    c->n_turns -= first;
    /* the turn in its conversation, then alone as a new conversation's first turn (`Signals.alone`);
     * the rule abstains when either reading's score calls for it, or the text alone surprises it
     * (`AbstainRule.decide`) */
    tl_reading r[2];
    const int n_readings = n > len + 2 ? 2 : 1;
    int failed = measure(c->ctx, &c->rule, prompt, n, n - len - 1, &r[0]);
    if (!failed && n_readings == 2) failed = measure(c->ctx, &c->rule, prompt + n - len - 2, len + 2, 1, &r[1]);
    const uint8_t *refusal = NULL;
    for (int i = 0; i < n_readings && !refusal; ++i)
        if (r[i].score > c->rule.refusal_threshold) refusal = (const uint8_t *)REFUSALS[r[i].likelier];
    if (!refusal && r[n_readings - 1].surprise > c->rule.surprise_threshold) refusal = (const uint8_t *)REFUSALS[1];
    if (!failed && c->rule.has_rule && refusal) {
        c->refusal = refusal;
        c->refusal_at = 0;
        c->abstained = 1;
    } else if (!failed) {
        tl_sampling s = *sampling;
        s.valid_utf8 = 1;
        s.stops = CHAT_STOPS;
        s.n_stops = 2;
        s.avoid = c->rule.has_rule ? REFUSALS : NULL;
        s.n_avoid = c->rule.has_rule ? 2 : 0;
        failed = gen_start(&c->gen, c->ctx, prompt, n, &s);
    }
    free(prompt);
    return failed ? 1 : 0;
}

/* The reply's next byte, or -1 at its end (when the turn joins the history), or < -1 on failure. */
static int chat_next(tl_chat *c) {
    int byte;
    if (c->refusal) byte = c->refusal[c->refusal_at] ? c->refusal[c->refusal_at++] : -1;
    else byte = c->gen.ctx ? gen_next(&c->gen) : -1;
    if (byte != -1 || !c->text) return byte;
    const uint8_t *reply = c->refusal ? c->refusal : c->gen.out;
    const int64_t rlen = c->refusal ? (int64_t)strlen((const char *)c->refusal) : c->gen.n_out;
    if (!c->refusal) {  /* without a rule, a reply the model wrote as a refusal is one (is_refusal) */
        int64_t i = 0;
        while (i < rlen && (reply[i] == ' ' || (reply[i] >= '\t' && reply[i] <= '\r'))) ++i;
        const int64_t head = (int64_t)strlen(OPENING) - 2;  /* "I can't answer that" */
        c->abstained = rlen - i >= head && memcmp(reply + i, OPENING, (size_t)head) == 0;
    }
    const int failed = chat_remember(c, c->text, c->text_len, reply, rlen);
    free(c->text);
    c->text = NULL;
    return failed ? -3 : -1;
}
