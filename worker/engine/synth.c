/* synth.c — the synthetic engine (see synth.h): prefix hashes in place of
 * the forward pass, a sleep in place of its time. */
#include "worker/engine/synth.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/utf8.h"

/* The synthetic backend's state (be->impl). */
typedef struct synth_vocab {
    double rate;        /* tokens per second per sequence: a step lasts 1/rate s */
    int32_t *ids;       /* [n_ids] the ids emitted, increasing (synth.h); NULL until set_vocab */
    int n_ids;
} synth_vocab;

struct synth {
    const model_config *cfg;
    const synth_vocab *voc; /* the backend's (not owned) */
    eng_opts opts;      /* n_blocks, max_tokens, max_seqs */
    int max_bt;         /* blocks per sequence at most (the context / 16, at most n_blocks) */
    uint64_t *hash;     /* [n_blocks * ENG_BLOCK_SIZE] prefix hash of the position each slot holds */
    struct timespec nap;/* one step's sleep: 1 / synthetic_rate s */
};

/* ---------------------------------------------------------------- names */

int synth_backend_parse(const char *name, double *rate, llmq_err *err) {
    const size_t n = strlen(SYNTH_BACKEND);
    if (!name || strncmp(name, SYNTH_BACKEND, n) || (name[n] && name[n] != ':')) return 0;
    *rate = SYNTH_DEFAULT_RATE;
    if (!name[n]) return 1;
    char *end;
    errno = 0;
    const double r = strtod(name + n + 1, &end);
    if (errno || end == name + n + 1 || *end || !(r > 0) || !isfinite(r) || r > 1e9) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "backend \"%s\": the synthetic rate wants tokens per second per "
                     "sequence, a number > 0 (synthetic:50)", name);
        return -1;
    }
    *rate = r;
    return 1;
}

/* ---------------------------------------------------------------- backend */

/* Host memory only: the engine never runs an op on it, but the model and the
 * service ask a runtime's backend for its name, activation type and free. */
static void *sb_alloc(llmq_backend *be, size_t bytes) { return calloc(1, bytes ? bytes : 1); }
static void sb_free(llmq_backend *be, void *p) { free(p); }
static void sb_upload(llmq_backend *be, void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static void sb_download_f32(llmq_backend *be, float *dst, const void *src, size_t n) { memcpy(dst, src, n * 4); }
static void sb_upload_f32(llmq_backend *be, void *dst, const float *src, size_t n) { memcpy(dst, src, n * 4); }
static llmq_status sb_sync(llmq_backend *be, llmq_err *err) { return LLMQ_OK; }
static void sb_destroy(llmq_backend *be) {
    synth_vocab *v = be->impl;
    free(v->ids);
    free(v);
    free(be);
}

static const be_ops synth_ops = {
    .name = SYNTH_BACKEND,
    .alloc = sb_alloc,
    .free = sb_free,
    .upload = sb_upload,
    .download_f32 = sb_download_f32,
    .upload_f32 = sb_upload_f32,
    .sync = sb_sync,
    .destroy = sb_destroy,
};

llmq_backend *synth_backend_create(double rate, llmq_err *err) {
    llmq_backend *be = calloc(1, sizeof *be);
    synth_vocab *v = calloc(1, sizeof *v);
    if (!be || !v) {
        free(be);
        free(v);
        llmq_err_set(err, LLMQ_ERR_NOMEM, "synthetic backend: out of memory");
        return NULL;
    }
    v->rate = rate;
    be->ops = &synth_ops;
    be->act_dt = LLMQ_F32;
    be->impl = v;
    return be;
}

double synth_backend_rate(const llmq_backend *be) {
    return be && be->ops == &synth_ops ? ((const synth_vocab *)be->impl)->rate : 0;
}

/* Whether id is text of its own (synth.h): not special, its bytes
 * non-empty valid UTF-8 without control characters. */
static int whole_text(const tokenizer *tok, int32_t id, tok_text *buf) {
    if (tok_is_special(tok, id)) return 0;
    buf->len = 0;
    if (tok_id_bytes(tok, id, buf) || buf->len == 0 || llmq_utf8_valid_prefix(buf->data, buf->len) != buf->len)
        return 0;
    for (size_t i = 0; i < buf->len; i++)
        if ((unsigned char)buf->data[i] < 0x20 || buf->data[i] == 0x7f) return 0;
    return 1;
}

llmq_status synth_backend_set_vocab(llmq_backend *be, const model_config *cfg, const tokenizer *tok, llmq_err *err) {
    synth_vocab *v = be->impl;
    int32_t *ids = malloc((size_t)cfg->vocab_size * sizeof *ids);
    if (!ids) return llmq_err_set(err, LLMQ_ERR_NOMEM, "synthetic backend: out of memory");
    tok_text buf = {0};
    int n = 0;
    for (int32_t id = 0; id < cfg->vocab_size; id++)
        if (!model_config_is_eos(cfg, id) && (!tok || whole_text(tok, id, &buf))) ids[n++] = id;
    tok_text_deinit(&buf);
    free(v->ids);
    v->ids = ids;
    v->n_ids = n;
    return LLMQ_OK;
}

llmq_status synth_model_load(model **out, const char *dir, llmq_backend *be, llmq_err *err) {
    *out = NULL;
    model *m = calloc(1, sizeof *m);
    if (!m) return llmq_err_set(err, LLMQ_ERR_NOMEM, "synthetic model: out of memory");
    llmq_status st = model_config_load(&m->cfg, dir, err);
    if (!st) st = model_shard_plan(&m->shard, &m->cfg, 0, 1, err);
    if (st) {
        free(m);
        return st;
    }
    m->be = be;
    *out = m;
    return LLMQ_OK;
}

/* ---------------------------------------------------------------- engine */

llmq_status synth_create(synth **out, const model *m, const eng_opts *o, llmq_err *err) {
    *out = NULL;
    const model_config *cfg = &m->cfg;
    const double rate = synth_backend_rate(m->be);
    if (o->n_blocks <= 0 || !(rate > 0))
        return llmq_err_set(err, LLMQ_ERR_INVALID, "synthetic engine: needs a number of KV blocks (got %d; "
                            "--memory-utilization does not apply) and a rate > 0", o->n_blocks);
    synth *y = calloc(1, sizeof *y);
    if (!y) return llmq_err_set(err, LLMQ_ERR_NOMEM, "synthetic engine: out of memory");
    y->cfg = cfg;
    y->voc = m->be->impl;
    y->opts = *o;
    y->max_bt = (cfg->max_position_embeddings + ENG_BLOCK_SIZE - 1) / ENG_BLOCK_SIZE;
    if (y->max_bt > o->n_blocks) y->max_bt = o->n_blocks;
    y->hash = calloc((size_t)o->n_blocks * ENG_BLOCK_SIZE, sizeof *y->hash);
    if (!y->hash) {
        free(y);
        return llmq_err_set(err, LLMQ_ERR_NOMEM, "synthetic engine: cannot allocate %d KV blocks of hashes",
                            o->n_blocks);
    }
    const double s = 1.0 / rate;
    y->nap.tv_sec = (time_t)s;
    y->nap.tv_nsec = (long)((s - (double)y->nap.tv_sec) * 1e9);
    *out = y;
    return LLMQ_OK;
}

void synth_destroy(synth *y) {
    if (!y) return;
    free(y->hash);
    free(y);
}

static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The cache slot of position p in a block table. */
static size_t slot_of(const eng_seq *q, int p) {
    return (size_t)q->block_table[p / ENG_BLOCK_SIZE] * ENG_BLOCK_SIZE + (size_t)(p % ENG_BLOCK_SIZE);
}

/* The limits of eng_step (engine.c plan_step), with its messages. */
llmq_status synth_step(synth *y, const eng_seq *seqs, int n_seqs, float *logits, llmq_err *err) {
    int total, mb;
    llmq_status st = eng_step_check(y->cfg, &y->opts, y->max_bt, seqs, n_seqs, &total, &mb, err);
    if (st) return st;
    const int V = y->cfg->vocab_size;
    int row = 0;
    for (int s = 0; s < n_seqs; s++) {
        const eng_seq *q = &seqs[s];
        /* the step's positions, in order: each hash extends the one before,
         * cached by an earlier step or written just now */
        for (int t = 0; t < q->n_tokens; t++) {
            const int p = q->start_pos + t;
            const uint64_t prev = p > 0 ? y->hash[slot_of(q, p - 1)] : 0;
            const uint64_t key = (uint64_t)(uint32_t)q->tokens[t] << 32 | (uint32_t)p;
            y->hash[slot_of(q, p)] = mix((prev ^ key) + 0x9e3779b97f4a7c15ULL);
        }
        if (!q->want_logits) continue;
        const uint64_t h = y->hash[slot_of(q, q->start_pos + q->n_tokens - 1)];
        int32_t next = (int32_t)(h % (uint64_t)V); /* no ids chosen (none qualified): any but EOS */
        if (y->voc->n_ids > 0) next = y->voc->ids[h % (uint64_t)y->voc->n_ids];
        for (int k = 0; k < V && model_config_is_eos(y->cfg, next); k++) next = (next + 1) % V;
        if (logits) {
            float *lg = logits + (size_t)row * V;
            for (int v = 0; v < V; v++) lg[v] = -1e9f;
            lg[next] = 0;
        }
        row++;
    }
    /* the step's time, all of it asleep (a signal's wake-up sleeps the rest) */
    struct timespec left = y->nap;
    while (nanosleep(&left, &left) && errno == EINTR) {
    }
    return LLMQ_OK;
}
