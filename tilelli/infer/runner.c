/* tilelli-run: generate from, or chat with, a model file (`tilelli export --native`) with no
 * Python: one binary built from the engine's own source (a unity build, as llama2.c's run.c),
 * so it computes what `tilelli generate` computes, byte for byte when greedy.
 *
 *   tilelli-run model.tlm -p "Once upon a time" -n 64 --temperature 0
 *   tilelli-run model.tlm            (a chat model: chat on the terminal)
 */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "engine.c"
#include "model_file.c"
#include "decode.c"
#include "chat.c"

static const char USAGE[] =
    "usage: tilelli-run MODEL.tlm [-p TEXT] [options]\n"
    "\n"
    "Generate a continuation of TEXT (-p), or chat (a chat model without -p: lines from stdin,\n"
    "/reset forgets the conversation, /quit or Ctrl-D leaves). Chat replies use the model's chat\n"
    "template and abstain rule, as `tilelli chat` does.\n"
    "\n"
    "options:\n"
    "  -p, --prompt TEXT         text to continue (with --chat: one message to answer)\n"
    "  -n, --max-new-tokens N    bytes to generate at most (default: the model's)\n"
    "  --temperature T           >= 0; 0 = greedy (default: the model's)\n"
    "  --top-p P                 nucleus mass in (0, 1] (default: the model's)\n"
    "  --top-k K                 sample among the K likeliest bytes (0 = off, the default)\n"
    "  --seed S                  random seed (default: from the clock)\n"
    "  -t, --threads N           threads (default: the CPUs not busy by the 1-minute load)\n"
    "  --chat                    chat even with -p (one reply)\n"
    "  --int8, --no-int8         the integer path: ternary layers take int8 inputs (the default for\n"
    "                            ternary models: faster, 0.02% bpb); --no-int8: the exact float path\n"
    "  -h, --help                this text\n";

static int fail(const char *what) {
    fprintf(stderr, "tilelli-run: error: %s (see --help)\n", what);
    return 2;
}

/* The value of option argv[*i] as a number in [lo, hi]; 0 when it is missing or not one. */
static int number(int argc, char **argv, int *i, double lo, double hi, double *out) {
    if (*i + 1 >= argc) return 0;
    char *end;
    errno = 0;
    *out = strtod(argv[++*i], &end);
    return *end == '\0' && end != argv[*i] && errno == 0 && *out >= lo && *out <= hi;
}

/* The whole file in a 64-byte aligned buffer (the model's tensors point into it), or NULL. */
static uint8_t *read_file(const char *path, int64_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (*size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = aligned_alloc(TLM_ALIGN, (size_t)(*size + TLM_ALIGN - 1) / TLM_ALIGN * TLM_ALIGN + TLM_ALIGN);
        if (buf && fread(buf, 1, (size_t)*size, f) != (size_t)*size) {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    return buf;
}

/* Whether n bytes are valid UTF-8 (the constraint that keeps replies valid, applied to input). */
static int is_utf8(const uint8_t *s, int64_t n) {
    for (int64_t i = 0; i <= n; ++i) {
        uint8_t banned[256] = {0};
        utf8_ban(s, i, 4, NULL, 0, banned);
        if (i == n ? banned['a'] : banned[s[i]]) return 0;  /* at the end: not inside a character */
    }
    return 1;
}

static int auto_threads(void) {
    double load[1] = {0.0};
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    const long free_cpus = cpus - (getloadavg(load, 1) == 1 ? (long)(load[0] + 0.5) : 0);
    return free_cpus > 1 ? (int)free_cpus : 1;
}

static int engine_failed(int code) {
    fprintf(stderr, "\ntilelli-run: error: the engine could not run this step (%s)\n",
            code == 1 ? "out of memory" : "a sequence past its context");
    return 1;
}

static int generate(tl_ctx *ctx, const char *prompt, const tl_sampling *cfg) {
    tl_gen g;
    const int64_t n = (int64_t)strlen(prompt);
    if (n > ctx->m->max_seq) return fail("the prompt is longer than the model's context");
    if (gen_start(&g, ctx, (const uint8_t *)prompt, n, cfg)) return engine_failed(1);
    fputs(prompt, stdout);
    fflush(stdout);
    int byte;
    while ((byte = gen_next(&g)) >= 0) {
        putchar(byte);
        fflush(stdout);
    }
    putchar('\n');
    if (g.stop_reason == STOP_CONTEXT)
        fprintf(stderr, "[stopped: the model's context of %lld bytes is full]\n", (long long)ctx->m->max_seq);
    gen_free(&g);
    return byte < -1 ? engine_failed(-2 - byte) : 0;
}

/* One reply, streamed to stdout. Returns 0, or the exit code of a failure. */
static int reply(tl_chat *c, const char *text, const tl_sampling *cfg) {
    const int64_t n = (int64_t)strlen(text);
    if (!is_utf8((const uint8_t *)text, n)) {
        fprintf(stderr, "(error: the message is not valid UTF-8)\n");
        return 0;
    }
    const int started = chat_begin(c, (const uint8_t *)text, n, cfg);
    if (started == 4) {
        fprintf(stderr, "(error: the message does not fit the model's context with room for a reply)\n");
        return 0;
    }
    if (started) return engine_failed(1);
    int byte;
    while ((byte = chat_next(c)) >= 0) {
        putchar(byte);
        fflush(stdout);
    }
    putchar('\n');
    fflush(stdout);
    return byte < -1 ? engine_failed(1) : 0;
}

static int chat(tl_ctx *ctx, const tl_settings *settings, const char *once, const tl_sampling *cfg) {
    tl_chat c = {.ctx = ctx, .rule = *settings};
    if (once) return reply(&c, once, cfg);
    const int tty = isatty(0);
    char line[1 << 14];
    for (;;) {
        if (tty) fputs("you> ", stderr);
        if (!fgets(line, sizeof line, stdin)) break;
        line[strcspn(line, "\n")] = '\0';
        if (!line[0]) continue;
        if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) break;
        if (!strcmp(line, "/reset")) {
            chat_reset(&c);
            fputs("(conversation forgotten)\n", stderr);
            continue;
        }
        if (tty) fputs("tilelli> ", stdout);
        const int failed = reply(&c, line, cfg);
        if (failed) return failed;
    }
    return 0;
}

/* Whether any layer is ternary (the integer path's default). */
static int is_ternary(const tl_model *m) {
    if (m->head.kind == W_T2) return 1;
    for (int64_t l = 0; l < m->n_layers; ++l) {
        const tl_layer *ly = &m->layers[l];
        if (ly->qkv.kind == W_T2 || ly->proj.kind == W_T2 || ly->up.kind == W_T2 || ly->down.kind == W_T2) return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *path = NULL, *prompt = NULL;
    double max_new = -1, temperature = -1, top_p = -1, top_k = 0, seed = -1, threads = 0;
    int force_chat = 0, int8 = -1;  /* -1: on for a ternary model */
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(USAGE, stdout);
            return 0;
        }
        int ok = 1;
        if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            ok = i + 1 < argc;
            if (ok) prompt = argv[++i];
        } else if (!strcmp(a, "-n") || !strcmp(a, "--max-new-tokens")) ok = number(argc, argv, &i, 0, 1 << 20, &max_new);
        else if (!strcmp(a, "--temperature")) ok = number(argc, argv, &i, 0, 1e30, &temperature);
        else if (!strcmp(a, "--top-p")) ok = number(argc, argv, &i, 1e-300, 1, &top_p);
        else if (!strcmp(a, "--top-k")) ok = number(argc, argv, &i, 0, 256, &top_k);
        else if (!strcmp(a, "--seed")) ok = number(argc, argv, &i, 0, 9007199254740991.0, &seed);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) ok = number(argc, argv, &i, 1, 1024, &threads);
        else if (!strcmp(a, "--chat")) force_chat = 1;
        else if (!strcmp(a, "--int8")) int8 = 1;
        else if (!strcmp(a, "--no-int8")) int8 = 0;
        else if (a[0] == '-' || path) {
            fprintf(stderr, "tilelli-run: error: unexpected argument '%s' (see --help)\n", a);
            return 2;
        } else path = a;
        if (!ok) {
            fprintf(stderr, "tilelli-run: error: %s needs a value in range (see --help)\n", a);
            return 2;
        }
        if ((max_new >= 0 && max_new != (int64_t)max_new) || (top_k != (int64_t)top_k) ||
            (seed >= 0 && seed != (int64_t)seed) || threads != (int64_t)threads)
            return fail("-n, --top-k, --seed and --threads take whole numbers");
    }
    if (!path) return fail("no model file given");
    int64_t size = 0;
    uint8_t *buf = read_file(path, &size);
    if (!buf) {
        fprintf(stderr, "tilelli-run: error: cannot read %s: %s\n", path, strerror(errno ? errno : EIO));
        return 2;
    }
    tl_loaded model;
    char err[256];
    if (tl_load(buf, size, &model, err, sizeof err)) {
        fprintf(stderr, "tilelli-run: error: %s: %s\n", path, err);
        return 2;
    }
    model.model.int8 = int8 >= 0 ? int8 : is_ternary(&model.model);
    const tl_settings *s = &model.settings;
    const int chatting = force_chat || (s->chat && !prompt);
    if (chatting && !s->chat) return fail("--chat needs a chat model (this one continues text)");
    tl_sampling cfg = {.max_new_tokens = max_new >= 0 ? (int64_t)max_new : s->max_new_tokens,
                       .top_k = (int64_t)top_k,
                       .temperature = temperature >= 0 ? temperature : s->temperature,
                       .top_p = top_p > 0 ? top_p : s->top_p,
                       .seed = seed >= 0 ? (uint64_t)seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32)};
    tl_ctx ctx = {.m = &model.model, .threads = threads > 0 ? (int)threads : auto_threads()};
    if (!chatting && !prompt) return fail("no prompt: pass -p TEXT (this model continues text)");
    if (!chatting && !*prompt) return fail("the prompt is empty; give at least one byte");
    return chatting ? chat(&ctx, s, prompt, &cfg) : generate(&ctx, prompt, &cfg);
}
