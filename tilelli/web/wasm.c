/* The engine as a WebAssembly module for the browser (tilelli/web/worker.js drives it): the same
 * unity build as the native runner, with a handful of exported calls instead of a main.
 *
 * One model and one reply at a time, one thread. The worker copies the model file into memory
 * from tlw_alloc, calls tlw_load, then streams a reply: tlw_complete or tlw_chat starts it and
 * tlw_next gives its bytes one by one (-1 at the end). A chat's history lives here (tlw_turn
 * adds a finished turn, tlw_reset forgets them), trimmed as `tilelli chat` trims it.
 */
#include <stdio.h>
#include <stdlib.h>

#include "engine.c"
#include "model_file.c"
#include "decode.c"
#include "chat.c"

#define EXPORT(name) __attribute__((export_name(#name)))

static tl_loaded model;
static tl_ctx ctx = {.threads = 1};
static tl_chat conversation;
static tl_gen completion;
static int chatting;
static char error[256];

EXPORT(tlw_alloc) void *tlw_alloc(int64_t n) { return aligned_alloc(TLM_ALIGN, (size_t)(n + TLM_ALIGN - 1) / TLM_ALIGN * TLM_ALIGN); }

EXPORT(tlw_free) void tlw_free(void *p) { free(p); }

/* Load the model file at buf (from tlw_alloc; kept). 0, or 1 with tlw_error saying why. */
EXPORT(tlw_load) int tlw_load(const uint8_t *buf, int64_t size) {
    if (tl_load(buf, size, &model, error, sizeof error)) return 1;
    ctx.m = &model.model;
    conversation = (tl_chat){.ctx = &ctx, .rule = model.settings};
    return 0;
}

EXPORT(tlw_error) const char *tlw_error(void) { return error; }

/* The integer path on (1) or off (0): ternary layers take int8 inputs. */
EXPORT(tlw_int8) void tlw_int8(int on) { model.model.int8 = on; }

/* The model's settings for the page: chat, has_rule, max_new_tokens, temperature, top_p, max_seq. */
EXPORT(tlw_settings) void tlw_settings(double out[6]) {
    const tl_settings *s = &model.settings;
    const double v[6] = {(double)s->chat, (double)s->has_rule, (double)s->max_new_tokens, s->temperature, s->top_p,
                         (double)model.model.max_seq};
    memcpy(out, v, sizeof v);
}

/* Start the greedy continuation of n bytes, max_new bytes at most (as `tilelli generate
 * --temperature 0`). 0, or 1 (out of memory) or 3 (longer than the context). */
EXPORT(tlw_complete) int tlw_complete(const uint8_t *prompt, int64_t n, int64_t max_new) {
    gen_free(&completion);
    chatting = 0;
    const tl_sampling cfg = {.max_new_tokens = max_new, .temperature = 0.0, .top_p = 1.0};
    return gen_start(&completion, &ctx, prompt, n, &cfg);
}

EXPORT(tlw_reset) void tlw_reset(void) { chat_reset(&conversation); }

/* Add a finished turn (user text, reply) to the history. 0, or 1 out of memory. */
EXPORT(tlw_turn) int tlw_turn(const uint8_t *text, int64_t n, const uint8_t *reply, int64_t rn) {
    return chat_remember(&conversation, text, n, reply, rn);
}

/* Decide on and start the reply to a user message; seed drives sampling. 0, 1 (out of memory),
 * or 4 (the message and its reply room do not fit the context). */
EXPORT(tlw_chat) int tlw_chat(const uint8_t *text, int64_t n, int64_t max_new, double temperature, double top_p,
                              double seed) {
    chatting = 1;
    const tl_sampling cfg = {.max_new_tokens = max_new, .temperature = temperature, .top_p = top_p,
                             .seed = (uint64_t)seed};
    return chat_begin(&conversation, text, n, &cfg);
}

/* The reply's next byte, -1 at its end, < -1 when the engine failed. */
EXPORT(tlw_next) int tlw_next(void) { return chatting ? chat_next(&conversation) : gen_next(&completion); }

/* The model's probability of the byte tlw_next just gave (1 for a refusal's bytes). */
EXPORT(tlw_prob) double tlw_prob(void) {
    return chatting ? (conversation.refusal ? 1.0 : conversation.gen.prob) : completion.prob;
}

EXPORT(tlw_abstained) int tlw_abstained(void) { return conversation.abstained; }
