/*
 * libllmq.c — the synchronous client of the Redis protocol (see libllmq.h).
 * Every command it sends is built by common/jobops.c or here from
 * common/keys.c, so it writes exactly what the gateway writes.
 */
#include "client/libllmq.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/affinity.h"
#include "common/heartbeat.h"
#include "common/jobops.h"
#include "common/keys.h"
#include "common/rconn.h"
#include "common/url.h"

#define STREAM_BLOCK_MS 1000 /* one XREAD BLOCK; the timeout is checked between them */

struct llmq_client {
    redisContext *ctx;           /* blocking connection (owned) */
    llmq_keys keys;              /* key layout */
    redis_url url;
};

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

llmq_client *llmq_connect(const char *url, const char *prefix, llmq_err *err) {
    llmq_client *c = calloc(1, sizeof *c);
    if (!c) {
        llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
        return NULL;
    }
    if (redis_url_resolve(&c->url, url, err) != LLMQ_OK || keys_init(&c->keys, prefix, err) != LLMQ_OK ||
        !(c->ctx = rconn_connect(&c->url, STREAM_BLOCK_MS + 5000, err))) {
        free(c);
        return NULL;
    }
    return c;
}

void llmq_close(llmq_client *c) {
    if (!c) return;
    redisFree(c->ctx);
    free(c);
}

/* ---------------------------------------------------------------- submit */

llmq_status llmq_submit(llmq_client *c, const proto_request *req, char *id_out, size_t cap, llmq_err *err) {
    char id[LLMQ_ID_MAX];
    if (req->id) {
        if (!keys_id_valid(req->id))
            return llmq_err_set(err, LLMQ_ERR_INVALID, "job id '%s' must be 1-128 characters of [A-Za-z0-9._:-]",
                                req->id);
        snprintf(id, sizeof id, "%s", req->id);
    } else if (keys_new_id(id, err) != LLMQ_OK) {
        return err ? err->code : LLMQ_ERR_IO;
    }
    if (!req->model || !keys_model_valid(req->model))
        return llmq_err_set(err, LLMQ_ERR_INVALID, "model name missing or not of [A-Za-z0-9._:/@+-]");
    if (cap < strlen(id) + 1) return llmq_err_set(err, LLMQ_ERR_INVALID, "id buffer too small");
    llmq_status st = proto_request_validate(req, err);
    if (st != LLMQ_OK) return st;

    proto_request r = *req; /* borrowed fields; only the id differs */
    r.id = id;
    proto_buf payload;
    proto_buf_init(&payload);
    if ((st = proto_request_encode(&r, &payload, err)) != LLMQ_OK) {
        proto_buf_deinit(&payload);
        return st;
    }

    jobops_keys kb;
    rcmd group, multi, hset, xadd, exec;
    jobops_group_create(&group, &kb, &c->keys, req->model);
    llmq_err gerr;
    llmq_err_clear(&gerr);
    redisReply *rep = rconn_call(c->ctx, &group, &gerr);
    if (!rep && !(gerr.code == LLMQ_ERR_REDIS && strstr(gerr.msg, "BUSYGROUP"))) {
        if (err) *err = gerr;
        goto fail;
    }
    if (rep) freeReplyObject(rep);

    rcmd_init(&multi);
    rcmd_str(&multi, "MULTI");
    rcmd_init(&exec);
    rcmd_str(&exec, "EXEC");
    jobops_submit(&hset, &xadd, &kb, &c->keys, id, req->model, req->priority, payload.data, payload.len, now_ms());
    char aff[AFFINITY_FIELD_MAX]; /* the gateway's affinity keys (docs/protocol.md "Affinity") */
    affinity_keys(req, NULL, aff);
    jobops_submit_affinity(&xadd, aff);
    const rcmd *seq[4] = {&multi, &hset, &xadd, &exec};
    for (int i = 0; i < 4; i++)
        redisAppendCommandArgv(c->ctx, seq[i]->argc, (const char **)seq[i]->argv, seq[i]->argvlen);
    for (int i = 0; i < 4; i++) {
        void *v = NULL;
        if (redisGetReply(c->ctx, &v) != REDIS_OK) {
            llmq_err_set(err, LLMQ_ERR_IO, "redis: %s", c->ctx->errstr);
            goto fail;
        }
        rep = v;
        int bad = rep->type == REDIS_REPLY_ERROR || (i == 3 && rep->type != REDIS_REPLY_ARRAY);
        if (!bad && i == 3)
            for (size_t j = 0; j < rep->elements; j++) bad |= rep->element[j]->type == REDIS_REPLY_ERROR;
        if (bad) {
            llmq_err_set(err, LLMQ_ERR_REDIS, "submitting: %s",
                         rep->type == REDIS_REPLY_ERROR ? rep->str : "transaction failed");
            freeReplyObject(rep);
            for (int k = i + 1; k < 4; k++) /* drain the rest of the pipeline */
                if (redisGetReply(c->ctx, &v) == REDIS_OK) freeReplyObject(v);
            goto fail;
        }
        freeReplyObject(rep);
    }
    proto_buf_deinit(&payload);
    snprintf(id_out, cap, "%s", id);
    return LLMQ_OK;
fail:
    proto_buf_deinit(&payload);
    return err ? err->code : LLMQ_ERR_REDIS;
}

/* ---------------------------------------------------------------- served models */

llmq_status llmq_model_workers(llmq_client *c, const char *model, int *workers, int *max_model_len, llmq_err *err) {
    *workers = 0;
    if (max_model_len) *max_model_len = 0;
    char key[KEYS_MAX];
    keys_workers(&c->keys, key, sizeof key);
    rcmd h;
    rcmd_init(&h);
    rcmd_str(&h, "HGETALL");
    rcmd_str(&h, key);
    redisReply *r = rconn_call(c->ctx, &h, err);
    if (!r) return err ? err->code : LLMQ_ERR_REDIS;
    int64_t now = now_ms();
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
        const redisReply *v = r->element[i + 1];
        hb_info hb;
        if (v->type != REDIS_REPLY_STRING || hb_parse(&hb, v->str, v->len, NULL) != LLMQ_OK ||
            strcmp(hb.model, model) != 0 || !hb_live(hb.ts_ms, now))
            continue;
        (*workers)++;
        if (max_model_len && hb.max_model_len > 0 && (!*max_model_len || hb.max_model_len < *max_model_len))
            *max_model_len = hb.max_model_len;
    }
    freeReplyObject(r);
    return LLMQ_OK;
}

/* ---------------------------------------------------------------- get */

static int64_t to_i64(const redisReply *v) { return v && v->type == REDIS_REPLY_STRING ? strtoll(v->str, NULL, 10) : 0; }

void llmq_job_free(llmq_job *j) {
    if (!j) return;
    free(j->text);
    free(j->error);
    memset(j, 0, sizeof *j);
}

/* Decode each chunk of an XRANGE/XREAD entry list, in order; fn(chunk, entry id). */
typedef int (*entry_fn)(void *ud, const proto_chunk *ch, const char *sid);
static int each_chunk(const redisReply *entries, entry_fn fn, void *ud) {
    for (size_t i = 0; entries && entries->type == REDIS_REPLY_ARRAY && i < entries->elements; i++) {
        const redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 || e->element[1]->type != REDIS_REPLY_ARRAY) continue;
        const redisReply *f = e->element[1];
        for (size_t j = 0; j + 1 < f->elements; j += 2) {
            if (f->element[j]->type != REDIS_REPLY_STRING || strcmp(f->element[j]->str, PROTO_FIELD_CHUNK)) continue;
            proto_chunk ch;
            if (proto_chunk_decode(&ch, f->element[j + 1]->str, f->element[j + 1]->len, NULL) != LLMQ_OK) continue;
            int stop = fn(ud, &ch, e->element[0]->str);
            proto_chunk_deinit(&ch);
            if (stop) return stop;
        }
    }
    return 0;
}

typedef struct get_acc {
    llmq_job *job;
    proto_buf text;
    int64_t next;
    char finish[32];
    bool has_usage;
    proto_usage usage;
    char *error;
} get_acc;

static int get_chunk(void *ud, const proto_chunk *ch, const char *sid) {
    get_acc *a = ud;
    if (ch->seq < a->next) return 0;
    a->next = ch->seq + 1;
    if (ch->text_len) proto_buf_append(&a->text, ch->text, ch->text_len);
    if (ch->finish) snprintf(a->finish, sizeof a->finish, "%s", ch->finish);
    if (ch->has_usage) {
        a->has_usage = true;
        a->usage = ch->usage;
    }
    if (ch->error && !a->error) a->error = strdup(ch->error);
    return 0;
}

llmq_status llmq_get(llmq_client *c, const char *id, llmq_job *out, llmq_err *err) {
    memset(out, 0, sizeof *out);
    if (!keys_id_valid(id)) return llmq_err_set(err, LLMQ_ERR_INVALID, "no job with id '%s'", id);
    char job[KEYS_MAX], outk[KEYS_MAX];
    keys_job(&c->keys, id, job, sizeof job);
    keys_job_out(&c->keys, id, outk, sizeof outk);
    rcmd h;
    rcmd_init(&h);
    rcmd_str(&h, "HGETALL");
    rcmd_str(&h, job);
    redisReply *hr = rconn_call(c->ctx, &h, err);
    if (!hr) return err ? err->code : LLMQ_ERR_REDIS;
    if (hr->type != REDIS_REPLY_ARRAY || hr->elements == 0) {
        freeReplyObject(hr);
        return llmq_err_set(err, LLMQ_ERR_INVALID, "no job with id '%s'", id);
    }
    rcmd x;
    rcmd_init(&x);
    rcmd_str(&x, "XRANGE");
    rcmd_str(&x, outk);
    rcmd_str(&x, "-");
    rcmd_str(&x, "+");
    redisReply *xr = rconn_call(c->ctx, &x, err);
    if (!xr) {
        freeReplyObject(hr);
        return err ? err->code : LLMQ_ERR_REDIS;
    }
    get_acc a = {.job = out};
    proto_buf_init(&a.text);
    each_chunk(xr, get_chunk, &a);
    freeReplyObject(xr);

    for (size_t i = 0; i + 1 < hr->elements; i += 2) {
        const redisReply *k = hr->element[i], *v = hr->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
        if (!strcmp(k->str, "state")) {
            snprintf(out->state_name, sizeof out->state_name, "%s", v->str);
            out->state = proto_job_state_parse(v->str, v->len);
        } else if (!strcmp(k->str, "model")) snprintf(out->model, sizeof out->model, "%s", v->str);
        else if (!strcmp(k->str, "finish_reason")) snprintf(out->finish_reason, sizeof out->finish_reason, "%s", v->str);
        else if (!strcmp(k->str, "created")) out->created_ms = to_i64(v);
        else if (!strcmp(k->str, "started")) out->started_ms = to_i64(v);
        else if (!strcmp(k->str, "finished")) out->finished_ms = to_i64(v);
        else if (!strcmp(k->str, "attempts")) out->attempts = (int)to_i64(v);
        else if (!strcmp(k->str, "prompt_tokens")) { out->usage.prompt_tokens = to_i64(v); out->has_usage = true; }
        else if (!strcmp(k->str, "completion_tokens")) { out->usage.completion_tokens = to_i64(v); out->has_usage = true; }
        else if (!strcmp(k->str, "error") && !out->error) out->error = strdup(v->str);
        else if (!strcmp(k->str, "cancel")) out->cancel_requested = !strcmp(v->str, "1");
    }
    freeReplyObject(hr);
    if (!out->finish_reason[0] && a.finish[0]) snprintf(out->finish_reason, sizeof out->finish_reason, "%s", a.finish);
    if (!out->has_usage && a.has_usage) {
        out->has_usage = true;
        out->usage = a.usage;
    }
    if (!out->error) out->error = a.error;
    else free(a.error);
    out->n_chunks = a.next;
    proto_buf_append(&a.text, "", 1);
    out->text = a.text.data;
    out->text_len = a.text.len ? a.text.len - 1 : 0;
    if (!out->text) {
        llmq_job_free(out);
        return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
    }
    return LLMQ_OK;
}

/* ---------------------------------------------------------------- stream */

typedef struct stream_state {
    int64_t next;                /* next seq to deliver */
    char last_sid[48];           /* last entry id read */
    int finished;                /* final chunk seen */
    int stopped;                 /* the callback asked to stop */
    llmq_chunk_fn fn;
    void *user;
} stream_state;

static int stream_chunk(void *ud, const proto_chunk *ch, const char *sid) {
    stream_state *s = ud;
    snprintf(s->last_sid, sizeof s->last_sid, "%s", sid);
    if (ch->seq < s->next) {
        if (ch->finish) s->finished = 1; /* ended before from_seq */
        return s->finished;
    }
    s->next = ch->seq + 1;
    if (ch->finish) s->finished = 1;
    if (s->fn(s->user, ch)) s->stopped = 1;
    return s->finished || s->stopped;
}

llmq_status llmq_stream(llmq_client *c, const char *id, int64_t from_seq, int timeout_ms, llmq_chunk_fn fn,
                        void *user, llmq_err *err) {
    if (!keys_id_valid(id)) return llmq_err_set(err, LLMQ_ERR_INVALID, "no job with id '%s'", id);
    char job[KEYS_MAX], outk[KEYS_MAX];
    keys_job(&c->keys, id, job, sizeof job);
    keys_job_out(&c->keys, id, outk, sizeof outk);
    rcmd e;
    rcmd_init(&e);
    rcmd_str(&e, "EXISTS");
    rcmd_str(&e, job);
    rcmd_str(&e, outk);
    redisReply *r = rconn_call(c->ctx, &e, err);
    if (!r) return err ? err->code : LLMQ_ERR_REDIS;
    long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    freeReplyObject(r);
    if (n == 0) return llmq_err_set(err, LLMQ_ERR_INVALID, "no job with id '%s'", id);

    stream_state s = {.next = from_seq < 0 ? 0 : from_seq, .fn = fn, .user = user};
    snprintf(s.last_sid, sizeof s.last_sid, "0-0");
    int64_t idle_since = now_ms();
    while (!s.finished && !s.stopped) {
        rcmd x;
        rcmd_init(&x);
        rcmd_str(&x, "XREAD");
        rcmd_str(&x, "COUNT");
        rcmd_str(&x, "256");
        rcmd_str(&x, "BLOCK");
        rcmd_fmt(&x, "%d", STREAM_BLOCK_MS);
        rcmd_str(&x, "STREAMS");
        rcmd_str(&x, outk);
        rcmd_str(&x, s.last_sid);
        r = rconn_call(c->ctx, &x, err);
        if (!r) return err ? err->code : LLMQ_ERR_REDIS;
        /* nil on timeout; else [[key, [entries]]] */
        int got = 0;
        if (r->type == REDIS_REPLY_ARRAY && r->elements && r->element[0]->type == REDIS_REPLY_ARRAY &&
            r->element[0]->elements >= 2) {
            const redisReply *entries = r->element[0]->element[1];
            got = entries->type == REDIS_REPLY_ARRAY && entries->elements > 0;
            each_chunk(entries, stream_chunk, &s);
        }
        freeReplyObject(r);
        if (got) idle_since = now_ms();
        else if (timeout_ms > 0 && now_ms() - idle_since >= timeout_ms)
            return llmq_err_set(err, LLMQ_ERR_TIMEOUT, "job '%s': no output for %d ms", id, timeout_ms);
    }
    return LLMQ_OK;
}

/* ---------------------------------------------------------------- cancel */

llmq_status llmq_cancel(llmq_client *c, const char *id, llmq_cancel_result *result, llmq_err *err) {
    *result = LLMQ_CANCEL_NOT_FOUND;
    if (!keys_id_valid(id)) return LLMQ_OK;
    proto_buf chunk;
    proto_buf_init(&chunk);
    llmq_status st = jobops_cancel_chunk(&chunk, err);
    if (st != LLMQ_OK) return st;
    rcmd cmd;
    jobops_keys kb;
    jobops_cancel(&cmd, &kb, &c->keys, id, now_ms(), 86400, chunk.data, chunk.len);
    redisReply *r = rconn_call(c->ctx, &cmd, err);
    proto_buf_deinit(&chunk);
    if (!r) return err ? err->code : LLMQ_ERR_REDIS;
    if (r->type == REDIS_REPLY_INTEGER) *result = (llmq_cancel_result)r->integer;
    freeReplyObject(r);
    return LLMQ_OK;
}
