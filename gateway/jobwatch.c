/*
 * jobwatch.c — following job output over pub/sub + stream catch-up (see
 * jobwatch.h).
 *
 * Topics (one per job id with watchers) carry the subscription state:
 *
 *   NONE ──subscribe──▶ PENDING ──ack──▶ ON ──unsubscribe──▶ OFF_PENDING ──ack──▶ NONE
 *
 * A topic is never subscribed again while its UNSUBSCRIBE is in flight (the
 * ack of the old one would otherwise drop hiredis' callback for the new
 * one); a watcher that arrives meanwhile waits for the ack.  Losing the
 * pub/sub connection puts every topic back to NONE; sub_up subscribes again
 * those that still have watchers.
 *
 * A watcher is "synced" once a catch-up read found nothing newer than what
 * it delivered.  Live messages are delivered only to synced watchers that
 * expect exactly that seq; a live message that arrives while a catch-up is in
 * flight marks the watcher dirty, and a dirty watcher reads the stream once
 * more when its catch-up returns.  That converges: each read returns
 * everything published before it ran, because the worker XADDs a chunk before
 * it PUBLISHes it.
 */
#include "gateway/jobwatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

#define CATCHUP_PAGE 256   /* entries per XRANGE */

enum { SUB_NONE, SUB_PENDING, SUB_ON, SUB_OFF_PENDING };

struct jobwatch_topic {
    jobwatch_registry *reg;
    char *id;                        /* job id (owned) */
    char channel[KEYS_MAX];          /* <P>out:{id} */
    int sub;                         /* SUB_* */
    jobwatch *watchers;              /* started, not stopped */
    jobwatch_topic *next;            /* bucket chain */
};

struct jobwatch {
    jobwatch_registry *reg;
    jobwatch_topic *topic;           /* NULL once stopped */
    jobwatch *next;                  /* in topic->watchers */
    jobwatch_fn fn;                  /* delivery callback */
    jobwatch_gap_fn gap;             /* told of chunks that were trimmed away (may be NULL) */
    void *ud;
    int refs;                        /* 1 until stopped + 1 per XRANGE in flight + dispatch */
    int stopped;                     /* jobwatch_stop called: never call fn again */
    int finished;                    /* the final chunk (or the NULL end) was delivered */
    int synced;                      /* a catch-up completed with nothing left behind */
    int catching;                    /* an XRANGE is in flight */
    int dirty;                       /* something happened during the catch-up: read again */
    int retry;                       /* a catch-up failed for want of Redis: redo on cmd_up */
    int64_t next_seq;                /* seq expected next */
    char last_sid[48];               /* last output stream entry id read ("" = none) */
    char out_key[KEYS_MAX];          /* <P>job:{id}:out */
};

static void catchup(jobwatch *w);

/* ---------------------------------------------------------------- helpers */

static size_t hash_id(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return (size_t)(h % JOBWATCH_BUCKETS);
}

static jobwatch_topic *topic_find(jobwatch_registry *reg, const char *id, size_t n) {
    for (jobwatch_topic *t = reg->buckets[hash_id(id, n)]; t; t = t->next)
        if (strlen(t->id) == n && memcmp(t->id, id, n) == 0) return t;
    return NULL;
}

static void topic_free(jobwatch_topic *t) {
    jobwatch_registry *reg = t->reg;
    jobwatch_topic **pp = &reg->buckets[hash_id(t->id, strlen(t->id))];
    while (*pp && *pp != t) pp = &(*pp)->next;
    if (*pp) *pp = t->next;
    reg->n_topics--;
    free(t->id);
    free(t);
}

static void watch_unref(jobwatch *w) {
    if (--w->refs == 0) free(w);
}

/* Subscribe when it is wanted and allowed (see the state diagram). */
static void topic_want(jobwatch_topic *t) {
    if (t->sub != SUB_NONE || !t->watchers) return;
    if (gw_redis_subscribe(t->reg->redis, t->channel) == 0) t->sub = SUB_PENDING;
    /* else: sub is down; sub_up will subscribe */
}

/* The last watcher left. */
static void topic_release(jobwatch_topic *t) {
    if (t->watchers) return;
    if (t->sub == SUB_ON) {
        if (gw_redis_unsubscribe(t->reg->redis, t->channel) == 0) t->sub = SUB_OFF_PENDING;
        else topic_free(t); /* sub is down: the subscription is gone anyway */
    } else if (t->sub == SUB_NONE) {
        topic_free(t);
    } /* PENDING / OFF_PENDING: decided when the ack arrives */
}

static void deliver(jobwatch *w, const proto_chunk *c) {
    w->next_seq = c->seq < INT64_MAX ? c->seq + 1 : INT64_MAX; /* the decoder allows any int64 >= 0 */
    if (c->finish) w->finished = 1;
    w->fn(w->ud, c);
}

/* ---------------------------------------------------------------- catch-up */

static void on_xrange(redisAsyncContext *ac, void *reply, void *priv) {
    jobwatch *w = priv;
    redisReply *r = reply;
    w->catching = 0;
    if (w->stopped || w->finished) goto out;
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        if (r && r->type == REDIS_REPLY_ERROR) log_warn("jobwatch: XRANGE %s: %s", w->out_key, r->str);
        w->retry = 1;
        goto out;
    }
    for (size_t i = 0; i < r->elements && !w->stopped && !w->finished; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 || e->element[0]->type != REDIS_REPLY_STRING) continue;
        snprintf(w->last_sid, sizeof w->last_sid, "%.*s", (int)e->element[0]->len, e->element[0]->str);
        const redisReply *f = e->element[1];
        if (f->type != REDIS_REPLY_ARRAY) continue;
        for (size_t j = 0; j + 1 < f->elements; j += 2) {
            const redisReply *k = f->element[j], *v = f->element[j + 1];
            if (k->type != REDIS_REPLY_STRING || k->len != 1 || k->str[0] != PROTO_FIELD_CHUNK[0] ||
                v->type != REDIS_REPLY_STRING)
                continue;
            proto_chunk c;
            llmq_err err;
            if (proto_chunk_decode(&c, v->str, v->len, &err) != LLMQ_OK) {
                log_warn("jobwatch: %s entry %s: %s (skipped)", w->out_key, w->last_sid, err.msg);
                continue;
            }
            if (c.seq < w->next_seq) {
                if (c.finish) { /* ended before what the reader asked for */
                    w->finished = 1;
                    w->fn(w->ud, NULL);
                }
            } else {
                if (c.seq > w->next_seq) { /* every chunk is XADDed before it is published: this is a trim */
                    log_warn("jobwatch: %s: seq jumps from %lld to %lld", w->out_key, (long long)w->next_seq,
                             (long long)c.seq);
                    if (w->gap) w->gap(w->ud, w->next_seq, c.seq);
                }
                if (!w->stopped) deliver(w, &c);
            }
            proto_chunk_deinit(&c);
        }
    }
    if (w->stopped || w->finished) goto out;
    if (r->elements >= CATCHUP_PAGE || w->dirty) {
        w->dirty = 0;
        catchup(w);
    } else {
        w->synced = 1;
    }
out:
    watch_unref(w);
}

static void catchup(jobwatch *w) {
    if (w->stopped || w->finished) return;
    if (w->catching) {
        w->dirty = 1;
        return;
    }
    char start[64];
    if (w->last_sid[0]) snprintf(start, sizeof start, "(%s", w->last_sid);
    else snprintf(start, sizeof start, "-");
    rcmd c;
    rcmd_init(&c);
    rcmd_str(&c, "XRANGE");
    rcmd_str(&c, w->out_key);
    rcmd_str(&c, start);
    rcmd_str(&c, "+");
    rcmd_str(&c, "COUNT");
    rcmd_fmt(&c, "%d", CATCHUP_PAGE);
    w->refs++;
    if (gw_redis_send(w->reg->redis, &c, on_xrange, w) != 0) {
        w->refs--;
        w->retry = 1;
        return;
    }
    w->catching = 1;
    w->retry = 0;
    w->synced = 0;
}

/* A live chunk for one watcher. */
static void feed(jobwatch *w, const proto_chunk *c) {
    if (w->stopped || w->finished) return;
    if (w->catching) {
        w->dirty = 1;
        return;
    }
    if (!w->synced) return; /* its first catch-up has not started yet and will see this */
    if (c->seq < w->next_seq) {
        if (c->finish) { /* ended before what the reader asked for (as in on_xrange) */
            w->finished = 1;
            w->fn(w->ud, NULL);
        }
        return;
    }
    if (c->seq > w->next_seq) { /* a chunk was missed live: the stream has it */
        catchup(w);
        return;
    }
    deliver(w, c);
}

/* ---------------------------------------------------------------- events */

void jobwatch_registry_init(jobwatch_registry *reg, gw_redis *redis, const llmq_keys *keys) {
    memset(reg, 0, sizeof *reg);
    reg->redis = redis;
    reg->keys = keys;
}

void jobwatch_registry_deinit(jobwatch_registry *reg) {
    for (size_t b = 0; b < JOBWATCH_BUCKETS; b++) {
        while (reg->buckets[b]) {
            jobwatch_topic *t = reg->buckets[b];
            for (jobwatch *w = t->watchers; w; w = w->next) w->topic = NULL;
            t->watchers = NULL;
            topic_free(t);
        }
    }
}

/* Call fn for every topic; fn may free the topic it is given. */
static void each_topic(jobwatch_registry *reg, void (*fn)(jobwatch_topic *)) {
    for (size_t b = 0; b < JOBWATCH_BUCKETS; b++) {
        jobwatch_topic *t = reg->buckets[b];
        while (t) {
            jobwatch_topic *next = t->next;
            fn(t);
            t = next;
        }
    }
}

static void topic_cmd_up(jobwatch_topic *t) {
    for (jobwatch *w = t->watchers; w; w = w->next)
        if (w->retry && t->sub == SUB_ON) catchup(w);
}
void jobwatch_on_cmd_up(jobwatch_registry *reg) { each_topic(reg, topic_cmd_up); }

static void topic_sub_up(jobwatch_topic *t) { topic_want(t); }
void jobwatch_on_sub_up(jobwatch_registry *reg) { each_topic(reg, topic_sub_up); }

static void topic_sub_down(jobwatch_topic *t) {
    t->sub = SUB_NONE;
    for (jobwatch *w = t->watchers; w; w = w->next) w->synced = 0;
    if (!t->watchers) topic_free(t);
}
void jobwatch_on_sub_down(jobwatch_registry *reg) { each_topic(reg, topic_sub_down); }

static void dispatch_message(jobwatch_topic *t, const char *payload, size_t len) {
    proto_chunk c;
    llmq_err err;
    if (proto_chunk_decode(&c, payload, len, &err) != LLMQ_OK) {
        log_warn("jobwatch: %s: %s (ignored; the stream is the truth)", t->channel, err.msg);
        return;
    }
    /* Snapshot the watchers: a callback may stop itself or others. */
    jobwatch *small[16], **all = small;
    size_t n = 0, cap = 16;
    for (jobwatch *w = t->watchers; w; w = w->next) n++;
    if (n > cap && !(all = malloc(n * sizeof *all))) {
        proto_chunk_deinit(&c);
        return;
    }
    n = 0;
    for (jobwatch *w = t->watchers; w; w = w->next) {
        w->refs++;
        all[n++] = w;
    }
    for (size_t i = 0; i < n; i++) feed(all[i], &c);
    for (size_t i = 0; i < n; i++) watch_unref(all[i]);
    if (all != small) free(all);
    proto_chunk_deinit(&c);
}

void jobwatch_on_sub_reply(jobwatch_registry *reg, redisReply *r) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3) return;
    const redisReply *kind = r->element[0], *ch = r->element[1];
    if (kind->type != REDIS_REPLY_STRING || ch->type != REDIS_REPLY_STRING) return;
    size_t idlen;
    const char *id = keys_channel_job_id(reg->keys, ch->str, ch->len, &idlen);
    jobwatch_topic *t = id ? topic_find(reg, id, idlen) : NULL;
    if (!t) return;
    if (kind->len == 7 && !strncmp(kind->str, "message", 7)) {
        if (r->element[2]->type == REDIS_REPLY_STRING) dispatch_message(t, r->element[2]->str, r->element[2]->len);
    } else if (kind->len == 9 && !strncmp(kind->str, "subscribe", 9)) {
        if (t->sub != SUB_PENDING) return;
        t->sub = SUB_ON;
        if (!t->watchers) {
            topic_release(t);
            return;
        }
        for (jobwatch *w = t->watchers; w; w = w->next) catchup(w);
    } else if (kind->len == 11 && !strncmp(kind->str, "unsubscribe", 11)) {
        if (t->sub != SUB_OFF_PENDING) return;
        t->sub = SUB_NONE;
        if (t->watchers) topic_want(t);
        else topic_free(t);
    }
}

/* ---------------------------------------------------------------- API */

jobwatch *jobwatch_start(jobwatch_registry *reg, const char *id, int64_t from_seq, jobwatch_fn fn, void *ud) {
    size_t n = strlen(id);
    jobwatch_topic *t = topic_find(reg, id, n);
    if (!t) {
        t = calloc(1, sizeof *t);
        if (!t || !(t->id = strdup(id))) {
            free(t);
            return NULL;
        }
        t->reg = reg;
        keys_out_channel(reg->keys, id, t->channel, sizeof t->channel);
        size_t b = hash_id(id, n);
        t->next = reg->buckets[b];
        reg->buckets[b] = t;
        reg->n_topics++;
    }
    jobwatch *w = calloc(1, sizeof *w);
    if (!w) {
        topic_release(t);
        return NULL;
    }
    w->reg = reg;
    w->topic = t;
    w->fn = fn;
    w->ud = ud;
    w->refs = 1;
    w->next_seq = from_seq < 0 ? 0 : from_seq;
    keys_job_out(reg->keys, id, w->out_key, sizeof w->out_key);
    w->next = t->watchers;
    t->watchers = w;
    reg->n_watchers++;
    if (t->sub == SUB_ON) catchup(w);
    else topic_want(t);
    return w;
}

void jobwatch_on_gap(jobwatch *w, jobwatch_gap_fn gap) {
    if (w) w->gap = gap;
}

void jobwatch_stop(jobwatch *w) {
    if (!w || w->stopped) return;
    w->stopped = 1;
    jobwatch_topic *t = w->topic;
    if (t) {
        jobwatch **pp = &t->watchers;
        while (*pp && *pp != w) pp = &(*pp)->next;
        if (*pp) *pp = w->next;
        w->topic = NULL;
        w->next = NULL;
        w->reg->n_watchers--;
        topic_release(t);
    }
    watch_unref(w);
}
