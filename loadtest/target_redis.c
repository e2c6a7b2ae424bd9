/*
 * target_redis.c — the Redis target: jobs go straight into the llmq
 * protocol (docs/protocol.md), with no gateway in between, through hiredis'
 * async API on the run's libev loop.
 *
 * Two connections, like the gateway's:
 *   cmd  setup (AUTH, SELECT, XGROUP CREATE), then each submission as
 *        MULTI / HSET job / XADD request / EXEC (common/jobops), and cancels
 *   sub  pub/sub: one subscription per job on its output channel
 *        <P>out:{<id>}, plus an anchor channel nobody publishes to (hiredis
 *        0.14 leaves subscribed mode when the count drops to zero, and a
 *        SUBSCRIBE in flight at that moment would trip its assertions)
 *
 * A request subscribes to its job's channel FIRST and submits only once the
 * subscription is confirmed, so the worker cannot publish a chunk before we
 * listen, and the stream never has to be read back (no XRANGE catch-up).
 * The clock of the request starts before the SUBSCRIBE: the round trip it
 * costs is part of what a client of the protocol pays.  Chunks carry token
 * ids, so the token counts are exact; duplicates (seq already seen) are
 * dropped, as every reader of the protocol must.
 *
 * Lifetimes: hiredis keeps a per-request state pointer as the private data
 * of the channel's callback (until the UNSUBSCRIBE confirmation, or a NULL
 * reply when the connection goes) and of the pending EXEC.  So the state is
 * reference counted, and it forgets its lt_req as soon as the request is
 * finished or cancelled: late callbacks then only drop references.
 */
#include <hiredis/adapters/libev.h>
#include <hiredis/async.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common/jobops.h"
#include "common/keys.h"
#include "common/protocol.h"
#include "common/rconn.h"
#include "common/url.h"
#include "loadtest/lt.h"

#define CANCEL_TTL_S 3600  /* TTL the cancel script gives a job it cancels */

typedef struct redis_target {
    lt_target base;
    const lt_config *cfg;
    redis_url url;
    llmq_keys keys;
    redisAsyncContext *cmd;      /* NULL once lost or freed */
    redisAsyncContext *sub;
    int cmd_ready;               /* AUTH/SELECT/XGROUP done */
    int sub_ready;               /* anchor subscription confirmed */
    int closing;                 /* destroy in progress: losses are expected */
    char anchor[KEYS_MAX];       /* the anchor channel */
    proto_buf scratch;           /* request encoding */
    proto_buf cancel_chunk;      /* msgpack of the chunk a cancel of a queued job appends */
    unsigned long chunks;        /* chunks received */
    unsigned long duplicates;    /* chunks whose seq was already seen */
    unsigned long gaps;          /* chunks that skipped a seq */
    unsigned long bad_chunks;    /* chunks that did not decode */
} redis_target;

typedef struct redis_req {
    redis_target *t;
    lt_req *r;                   /* NULL once finished or cancelled */
    int refs;                    /* hiredis callbacks that may still come */
    int confirmed;               /* SUBSCRIBE confirmed */
    int unsubscribed;            /* UNSUBSCRIBE sent */
    int submitted;               /* MULTI ... EXEC sent */
    int64_t next_seq;            /* the seq expected next */
    char id[33];                 /* job id */
    char chan[KEYS_MAX];         /* <P>out:{id} */
    char *payload;               /* msgpack request (owned) until submitted */
    size_t payload_len;
} redis_req;

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void unref(redis_req *q) {
    if (--q->refs > 0) return;
    free(q->payload);
    free(q);
}

static int reply_is(const redisReply *e, const char *s) {
    return e && e->type == REDIS_REPLY_STRING && e->len == strlen(s) && !strncasecmp(e->str, s, e->len);
}

/* ---------------------------------------------------------------- per request */

static void unsubscribe(redis_req *q) {
    redis_target *t = q->t;
    if (q->unsubscribed || !q->confirmed || !t->sub || t->closing) return;
    const char *argv[2] = {"UNSUBSCRIBE", q->chan};
    if (redisAsyncCommandArgv(t->sub, NULL, NULL, 2, argv, NULL) == REDIS_OK) q->unsubscribed = 1;
}

/* Forget the lt_req: the run is done with it. */
static void detach(redis_req *q) {
    if (q->r) q->r->tstate = NULL;
    q->r = NULL;
    unsubscribe(q);
}

static void on_exec(redisAsyncContext *ac, void *reply, void *priv) {
    redis_req *q = priv;
    redisReply *rep = reply;
    if (q->r) {
        const char *msg = NULL;
        if (!rep) msg = "connection lost before EXEC was answered";
        else if (rep->type == REDIS_REPLY_ERROR) msg = rep->str;
        else if (rep->type != REDIS_REPLY_ARRAY) msg = "EXEC answered with no array (transaction aborted)";
        else
            for (size_t i = 0; i < rep->elements && !msg; i++)
                if (rep->element[i]->type == REDIS_REPLY_ERROR) msg = rep->element[i]->str;
        if (msg) {
            lt_req *r = q->r;
            detach(q);
            lt_req_finish(r, lt_now(), rep ? "submit_error" : "redis_disconnected", "submitting: %s", msg);
        }
    }
    unref(q);
}

static void submit(redis_req *q) {
    redis_target *t = q->t;
    if (!t->cmd) {
        lt_req *r = q->r;
        detach(q);
        lt_req_finish(r, lt_now(), "redis_disconnected", "no Redis command connection");
        return;
    }
    rcmd hset, xadd;
    jobops_keys kb;
    jobops_submit(&hset, &xadd, &kb, &t->keys, q->id, t->cfg->model, 0, q->payload, q->payload_len, wall_ms());
    static const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
    redisAsyncCommandArgv(t->cmd, NULL, NULL, 1, multi, NULL);
    redisAsyncCommandArgv(t->cmd, NULL, NULL, hset.argc, hset.argv, hset.argvlen);
    redisAsyncCommandArgv(t->cmd, NULL, NULL, xadd.argc, xadd.argv, xadd.argvlen);
    if (redisAsyncCommandArgv(t->cmd, on_exec, q, 1, exec, NULL) == REDIS_OK) q->refs++;
    q->submitted = 1;
    free(q->payload);
    q->payload = NULL;
}

/* A message on the job's channel: one protocol chunk. */
static void on_chunk(redis_req *q, const char *data, size_t len) {
    redis_target *t = q->t;
    double now = lt_now();
    proto_chunk c;
    proto_chunk_init(&c);
    llmq_err err;
    t->chunks++;
    if (proto_chunk_decode(&c, data, len, &err) != LLMQ_OK) {
        t->bad_chunks++;
        lt_req *r = q->r;
        detach(q);
        lt_req_finish(r, now, "bad_chunk", "undecodable chunk: %s", err.msg);
        return;
    }
    if (c.seq < q->next_seq) {
        t->duplicates++;
        proto_chunk_deinit(&c);
        return;
    }
    if (c.seq > q->next_seq) t->gaps++;
    q->next_seq = c.seq + 1;
    lt_req *r = q->r;
    if (c.n_ids) lt_req_tokens(r, now, (uint32_t)c.n_ids);
    if (c.has_usage) lt_req_usage(r, c.usage.prompt_tokens, c.usage.completion_tokens);
    if (c.finish) {
        detach(q);
        if (!strcmp(c.finish, "stop") || !strcmp(c.finish, "length")) {
            lt_req_finish(r, now, NULL, NULL);
        } else if (!strcmp(c.finish, "error")) {
            lt_req_finish(r, now, "job_error", "job failed (%d): %s", c.error_status ? c.error_status : 500,
                          c.error ? c.error : "no message");
        } else {
            char kind[LT_ERR_KIND_MAX];
            snprintf(kind, sizeof kind, "job_%s", c.finish);
            lt_req_finish(r, now, kind, "the job ended with finish '%s'", c.finish);
        }
    }
    proto_chunk_deinit(&c);
}

/* Every reply about a job's channel: subscribe, message, unsubscribe, or
 * NULL when the connection goes (then the channel callback is dropped). */
static void on_job_channel(redisAsyncContext *ac, void *reply, void *priv) {
    redis_req *q = priv;
    redisReply *rep = reply;
    if (!rep) {
        if (q->r) {
            lt_req *r = q->r;
            detach(q);
            lt_req_finish(r, lt_now(), "redis_disconnected", "the pub/sub connection was lost");
        }
        unref(q);
        return;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3) return;
    const redisReply *kind = rep->element[0];
    if (reply_is(kind, "message")) {
        if (q->r && rep->element[2]->type == REDIS_REPLY_STRING) on_chunk(q, rep->element[2]->str, rep->element[2]->len);
    } else if (reply_is(kind, "subscribe")) {
        q->confirmed = 1;
        if (q->r) submit(q);
        else unsubscribe(q); /* cancelled while the SUBSCRIBE was in flight */
    } else if (reply_is(kind, "unsubscribe")) {
        unref(q); /* hiredis drops the callback after this call */
    }
}

static void redis_send(lt_target *base, lt_req *r, const int32_t *ids, const char *text) {
    redis_target *t = (redis_target *)base;
    const lt_config *cfg = t->cfg;
    if (!t->cmd || !t->sub) {
        lt_req_finish(r, lt_now(), "redis_disconnected", "not connected to Redis");
        return;
    }
    redis_req *q = calloc(1, sizeof *q);
    llmq_err err;
    if (!q || keys_new_id(q->id, &err) != LLMQ_OK) {
        free(q);
        lt_req_finish(r, lt_now(), "nomem", "cannot make a job id");
        return;
    }
    q->t = t;
    q->r = r;
    keys_out_channel(&t->keys, q->id, q->chan, sizeof q->chan);

    proto_request req;
    proto_request_init(&req);
    req.id = q->id;
    req.model = (char *)cfg->model;
    if (text) { /* a dataset's prompt: the worker tokenizes it */
        req.kind = PROTO_PROMPT_TEXT;
        req.prompt = (char *)text;
    } else {
        req.kind = PROTO_PROMPT_IDS;
        req.prompt_ids = (int32_t *)ids;
        req.n_prompt_ids = (size_t)r->prompt_tokens;
    }
    req.max_tokens = r->max_tokens;
    req.temperature = 0.0;
    req.ignore_eos = true;
    proto_buf_reset(&t->scratch);
    if (proto_request_encode(&req, &t->scratch, &err) != LLMQ_OK || !(q->payload = malloc(t->scratch.len))) {
        free(q);
        lt_req_finish(r, lt_now(), "nomem", "cannot encode the request");
        return;
    }
    memcpy(q->payload, t->scratch.data, t->scratch.len);
    q->payload_len = t->scratch.len;

    const char *argv[2] = {"SUBSCRIBE", q->chan};
    if (redisAsyncCommandArgv(t->sub, on_job_channel, q, 2, argv, NULL) != REDIS_OK) {
        free(q->payload);
        free(q);
        lt_req_finish(r, lt_now(), "redis_disconnected", "cannot subscribe");
        return;
    }
    q->refs = 1;
    r->tstate = q;
}

static void redis_cancel(lt_target *base, lt_req *r) {
    redis_target *t = (redis_target *)base;
    redis_req *q = r->tstate;
    if (!q) return;
    if (q->submitted && t->cmd) { /* free the worker's slot: the run no longer waits for this job */
        rcmd c;
        jobops_keys kb;
        jobops_cancel(&c, &kb, &t->keys, q->id, wall_ms(), CANCEL_TTL_S, t->cancel_chunk.data, t->cancel_chunk.len);
        redisAsyncCommandArgv(t->cmd, NULL, NULL, c.argc, c.argv, c.argvlen);
    }
    detach(q);
}

/* ---------------------------------------------------------------- connections */

static void on_connect(const redisAsyncContext *ac, int status) {
    redis_target *t = ac->data;
    if (status == REDIS_OK) return;
    if (ac == t->cmd) t->cmd = NULL; /* hiredis frees it after this call */
    if (ac == t->sub) t->sub = NULL;
    if (!t->closing) lt_run_abort(t->base.run, "redis_connect", "cannot connect to Redis: %s", ac->errstr);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
    redis_target *t = ac->data;
    if (ac == t->cmd) t->cmd = NULL;
    if (ac == t->sub) t->sub = NULL;
    if (!t->closing)
        lt_run_abort(t->base.run, "redis_disconnected", "lost the Redis connection: %s",
                     ac->errstr[0] ? ac->errstr : "closed");
}

static void maybe_ready(redis_target *t) {
    if (t->cmd_ready && t->sub_ready) lt_run_ready(t->base.run);
}

static void on_setup(redisAsyncContext *ac, void *reply, void *priv) {
    redis_target *t = ac->data;
    redisReply *rep = reply;
    if (rep && rep->type == REDIS_REPLY_ERROR && !t->closing)
        lt_run_abort(t->base.run, "redis_setup", "%s: %s", (const char *)priv, rep->str);
}

static void on_group(redisAsyncContext *ac, void *reply, void *priv) {
    redis_target *t = ac->data;
    redisReply *rep = reply;
    if (!rep || t->closing) return;
    if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "BUSYGROUP", 9) != 0) {
        lt_run_abort(t->base.run, "redis_setup", "XGROUP CREATE: %s", rep->str);
        return;
    }
    t->cmd_ready = 1;
    maybe_ready(t);
}

static void on_anchor(redisAsyncContext *ac, void *reply, void *priv) {
    redis_target *t = ac->data;
    redisReply *rep = reply;
    if (!rep || t->closing) return;
    if (rep->type == REDIS_REPLY_ERROR) {
        lt_run_abort(t->base.run, "redis_setup", "SUBSCRIBE: %s", rep->str);
        return;
    }
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 && reply_is(rep->element[0], "subscribe") &&
        !t->sub_ready) {
        t->sub_ready = 1;
        maybe_ready(t);
    }
}

static redisAsyncContext *open_ctx(redis_target *t, int select_db, llmq_err *err) {
    const redis_url *u = &t->url;
    redisAsyncContext *ac = u->is_unix ? redisAsyncConnectUnix(u->path) : redisAsyncConnect(u->host, u->port);
    if (!ac || ac->err) {
        char d[600];
        llmq_err_set(err, LLMQ_ERR_IO, "cannot connect to %s: %s", redis_url_describe(u, d, sizeof d),
                     ac ? ac->errstr : "out of memory");
        if (ac) redisAsyncFree(ac);
        return NULL;
    }
    ac->data = t;
    redisLibevAttach(t->base.run->loop, ac);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    rcmd c;
    if (rconn_auth_cmd(u, &c)) redisAsyncCommandArgv(ac, on_setup, (void *)"AUTH", c.argc, c.argv, c.argvlen);
    if (select_db && u->db) {
        rcmd_init(&c);
        rcmd_str(&c, "SELECT");
        rcmd_fmt(&c, "%d", u->db);
        redisAsyncCommandArgv(ac, on_setup, (void *)"SELECT", c.argc, c.argv, c.argvlen);
    }
    return ac;
}

static int redis_start(lt_target *base, llmq_err *err) {
    redis_target *t = (redis_target *)base;
    t->cmd = open_ctx(t, 1, err);
    if (!t->cmd) return -1;
    t->sub = open_ctx(t, 0, err);
    if (!t->sub) return -1;
    rcmd c;
    jobops_keys kb;
    jobops_group_create(&c, &kb, &t->keys, t->cfg->model);
    redisAsyncCommandArgv(t->cmd, on_group, NULL, c.argc, c.argv, c.argvlen);
    const char *argv[2] = {"SUBSCRIBE", t->anchor};
    redisAsyncCommandArgv(t->sub, on_anchor, NULL, 2, argv, NULL);
    return 0;
}

static void redis_stats(lt_target *base, json_t *out) {
    redis_target *t = (redis_target *)base;
    json_object_set_new(out, "chunks", json_integer((json_int_t)t->chunks));
    json_object_set_new(out, "duplicate_chunks", json_integer((json_int_t)t->duplicates));
    json_object_set_new(out, "seq_gaps", json_integer((json_int_t)t->gaps));
    json_object_set_new(out, "bad_chunks", json_integer((json_int_t)t->bad_chunks));
}

static void redis_destroy(lt_target *base) {
    redis_target *t = (redis_target *)base;
    if (!t) return;
    t->closing = 1;
    /* pending callbacks run with NULL replies and drop their references */
    if (t->cmd) redisAsyncFree(t->cmd);
    t->cmd = NULL;
    if (t->sub) redisAsyncFree(t->sub);
    t->sub = NULL;
    proto_buf_deinit(&t->scratch);
    proto_buf_deinit(&t->cancel_chunk);
    free(t);
}

static const lt_target_ops redis_ops = {
    .name = "redis",
    .start = redis_start,
    .send = redis_send,
    .cancel = redis_cancel,
    .stats = redis_stats,
    .destroy = redis_destroy,
};

lt_target *lt_target_redis_create(lt_run *run, const lt_config *cfg, llmq_err *err) {
    redis_target *t = calloc(1, sizeof *t);
    if (!t) {
        llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
        return NULL;
    }
    t->base.ops = &redis_ops;
    t->base.run = run;
    t->cfg = cfg;
    proto_buf_init(&t->scratch);
    proto_buf_init(&t->cancel_chunk);
    if (redis_url_resolve(&t->url, cfg->target, err) != LLMQ_OK || keys_init(&t->keys, cfg->prefix, err) != LLMQ_OK ||
        jobops_cancel_chunk(&t->cancel_chunk, err) != LLMQ_OK) {
        proto_buf_deinit(&t->cancel_chunk);
        free(t);
        return NULL;
    }
    snprintf(t->anchor, sizeof t->anchor, "%sloadtest:anchor:%ld", t->keys.prefix, (long)getpid());
    return &t->base;
}
