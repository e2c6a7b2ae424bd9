/*
 * gw.h — the gateway as one object: configuration, the loop, the HTTP
 * server, the Redis connections, the job watchers and the metrics, plus the
 * per-request "call" that routes use to survive asynchronous Redis replies.
 *
 * A gw_call is the state of one HTTP request that waits on Redis.  It holds a
 * reference on its connection, and is itself reference counted: one
 * reference for being active, one per Redis command in flight.  When the
 * client goes away the call is marked done and its watcher stopped at once;
 * replies that arrive later see `done` and only drop their reference.  The
 * route-specific state follows the gw_call header in the same allocation.
 */
#ifndef LLMQ_GW_GW_H
#define LLMQ_GW_GW_H

#include <ev.h>
#include <jansson.h>
#include <stdint.h>

#include "common/keys.h"
#include "common/metrics.h"
#include "common/protocol.h"
#include "common/url.h"
#include "gateway/auth.h"
#include "gateway/http.h"
#include "gateway/jobwatch.h"
#include "gateway/redis.h"

typedef struct gw_config {
    const char *redis_url;       /* --redis: the default instance */
    const char *listen_host;     /* from --listen HOST:PORT */
    int listen_port;
    const char *api_key_file;    /* --api-key-file (else $LLMQ_API_KEY_FILE / $LLMQ_API_KEYS), see auth.h */
    const char *redis_password_file; /* --redis-password-file (else the environment), see common/url.h */
    int allow_root;              /* --allow-root or LLMQ_ALLOW_ROOT=1: run with euid 0 anyway */
    long long max_queue;         /* --max-queue: waiting jobs per model before 429; 0 = unbounded */
    size_t max_body;             /* --max-body-bytes */
    int max_tokens_limit;        /* --max-tokens-limit: largest max_tokens accepted; 0 = none */
    const char *models;          /* --models a,b: served even with no live worker (scale from zero) */
    const char *prefix;          /* --prefix */
    int64_t result_ttl_s;        /* --result-ttl: TTL set when the gateway ends a job (cancel of a queued one) */
    double drain_timeout;        /* --drain-timeout: s to let open streams finish on SIGTERM */
    double request_timeout;      /* --request-timeout: s from a request's first byte to its end */
    double queue_timeout;        /* --queue-timeout: s an OpenAI request's job may wait for a worker to
                                  * admit it before it is cancelled and answered 503; 0 = no limit */
    long long max_connections;   /* --max-connections: open HTTP connections; 0 = no cap,
                                  * -1 = from the descriptor limit (main.c) */
} gw_config;

typedef struct gw_metrics {
    metric_family *requests;     /* llmq_gateway_http_requests_total{route,code} */
    metric_family *duration;     /* llmq_gateway_http_request_duration_seconds{route} */
    metric_family *submitted;    /* llmq_gateway_jobs_submitted_total{model} */
    metric_family *rejected;     /* llmq_gateway_queue_full_total{model} */
    metric *streams;             /* llmq_gateway_open_streams */
    metric *redis_up;            /* llmq_gateway_redis_up */
    metric *connections;         /* llmq_gateway_http_connections */
} gw_metrics;

/* One served model: named by --models, or by the heartbeat of a live
 * worker (common/heartbeat.h). */
typedef struct gw_model {
    char name[PROTO_MAX_MODEL_LEN + 1];
    int inst;                    /* the Redis instance that carries it (gw_inst_for_model) */
    int configured;              /* --models: served with no live worker too */
    int workers;                 /* live heartbeats naming it at the last read */
    int max_model_len;           /* smallest context its live workers report (a configured
                                  * model keeps the last one known); 0 = unknown */
    int group_ok;                /* its consumer group was created on the current connection */
} gw_model;

typedef struct gw_call gw_call;
struct gw_miss;
typedef struct gw gw;

/*
 * One Redis instance the gateway talks to (gateway/instances.c).  Instance 0
 * is --redis; --redis-for MODELS=URL adds one per distinct URL and routes
 * those models to it.  Each has its own connections, job watchers and
 * "full" state, so that one instance lost fails only its models.  The jobs
 * of instance k > 0 have ids "<tag>.<32 hex>" (docs/protocol.md "Job ids").
 */
#define GW_TAG_LEN 7                 /* "r" + 6 hex digits of the instance's address */
typedef struct gw_inst {
    gw *g;
    int idx;                         /* in g->inst */
    char tag[GW_TAG_LEN + 1];        /* "" for instance 0: its ids carry no tag */
    char name[GW_TAG_LEN + 1];       /* tag, or "default" for instance 0: metrics and /readyz */
    redis_url url;
    gw_redis redis;
    jobwatch_registry watches;
    int64_t redis_full_ms;           /* when it last refused a write for its maxmemory (0 = never),
                                      * see gw_redis_error_status */
    int hb_read_ok;                  /* its last read of the heartbeats succeeded */
    int hb_left_out, hb_misrouted;   /* heartbeats of that read left out (logged when it changes) */
    metric *up;                      /* llmq_gateway_redis_instance_up{instance} */
} gw_inst;

/* --redis-for: a model and its instance. */
typedef struct gw_route_ent {
    char model[PROTO_MAX_MODEL_LEN + 1];
    int inst;
} gw_route_ent;

struct gw {
    struct ev_loop *loop;
    gw_config cfg;
    llmq_keys keys;
    gw_inst *inst;               /* the Redis instances (owned), [0] = --redis */
    size_t n_inst;
    gw_route_ent *routes;        /* --redis-for (owned) */
    size_t n_routes;
    http_server *http;
    metrics *reg;
    gw_metrics m;
    gw_auth auth;                /* bearer keys; none → no auth; reloaded on SIGHUP */
    gw_model *models;            /* the served models (owned; GW_MAX_MODELS at most), see "models" below */
    size_t n_models;
    ev_timer models_w;           /* every GW_MODELS_READ_S: read the heartbeats */
    int models_reading;          /* instances whose read of the heartbeats is in flight */
    int models_changed;          /* the table changed during this round of reads (logged at its end) */
    int models_answered;         /* an instance answered during this round */
    int models_read_once;        /* a read completed (the served set was logged) */
    struct gw_miss *miss_sent;   /* requests for an unknown model waiting for the read in flight */
    struct gw_miss *miss_next;   /* ... and those that came after it was sent (the next read's) */
    http_conn *dispatching;      /* while gw_route hands a request to a submit route: its connection */
    http_request *dispatching_req; /* ... and the request (what a miss is re-dispatched with) */
    int redispatch;              /* gw_route runs again after a read: a miss is final (404) */
    int64_t started_s;           /* Unix time of start ("created" of /v1/models) */
    int shutting_down;
    ev_signal sigterm_w, sigint_w;
    ev_signal sighup_w;          /* reload the API keys */
    ev_timer drain_w;            /* shutdown: wait for streams, then stop */
};

/* ---------------------------------------------------------------- calls */

struct gw_call {
    gw *g;
    http_conn *conn;             /* a reference is held */
    http_request *req;           /* valid while !done */
    int refs;                    /* 1 while active + 1 per Redis command in flight */
    int inst;                    /* the Redis instance its commands go to (0 unless set:
                                  * gw_submit sets the model's, job routes the id's) */
    int done;                    /* response ended or client gone */
    jobwatch *watch;             /* when following output; stopped when done */
    ev_timer heartbeat;          /* SSE comment every 15 s while streaming */
    int streaming;               /* an SSE response has begun */
    void (*cleanup)(gw_call *);  /* frees the route's own members (may be NULL) */

    /* submission (gateway/submit.c) */
    char id[PROTO_MAX_ID_LEN + 1];  /* the job's id */
    char model[PROTO_MAX_MODEL_LEN + 1]; /* the job's model */
    int32_t priority;            /* the job's priority: which lane of the model it joins */
    proto_buf payload;           /* msgpack request until it is sent */
    char idem[PROTO_MAX_ID_LEN + 1]; /* Idempotency-Key ("" = none) */
    char body_hash[17];          /* hex FNV-1a 64 of the HTTP body, with idem */
    int replayed;                /* the key named an earlier job: call->id is that job */
    const char *refused_code;    /* a 429's error code: queue_full, key_limit (gw_reply_refused) */
    int retry_after_s;           /* a 429's Retry-After, seconds */
    void (*submitted)(gw_call *, int status, const char *msg); /* 0 = queued, else an HTTP status */
};

/* Allocate a call of `size` bytes (>= sizeof(gw_call), zeroed). */
gw_call *gw_call_new(gw *g, http_conn *c, http_request *req, size_t size, void (*cleanup)(gw_call *));
void gw_call_ref(gw_call *call);
void gw_call_unref(gw_call *call);
/* The response is complete (or abandoned): stop watching, drop the active ref. */
void gw_call_finish(gw_call *call);
/* Send c to the call's instance; the callback gets the call as privdata and
 * must gw_call_unref it.  -1 when Redis is down (nothing was sent, no ref taken). */
int gw_call_send(gw_call *call, const rcmd *c, redisCallbackFn *cb);
/* The same to instance inst (/readyz probes every instance). */
int gw_call_send_to(gw_call *call, int inst, const rcmd *c, redisCallbackFn *cb);

/* ---------------------------------------------------------------- instances */

/* Add the instance of url (resolved; a URL already added is found again, by
 * its address) and return its index, -1 with err set when it cannot be
 * parsed or two addresses share a tag.  The first one added is instance 0. */
int gw_inst_add(gw *g, const char *url, llmq_err *err);
/* --redis-for MODELS=URL: route each model of the comma-separated list to
 * the instance of URL.  -1 with err set on a bad entry or a model routed twice. */
int gw_route_add(gw *g, const char *spec, llmq_err *err);
/* The instance a model's jobs go to: its --redis-for entry, else 0. */
int gw_inst_for_model(const gw *g, const char *model);
/* The instance that holds job id: the one whose tag is the id's prefix up to
 * its first '.', else 0 (untagged ids, and ids made by other clients). */
int gw_inst_for_id(const gw *g, const char *id);
/* A new job id for model: 32 random hex characters, after "<tag>." when the
 * model's instance has a tag.  buf holds PROTO_MAX_ID_LEN + 1 bytes. */
llmq_status gw_new_job_id(const gw *g, const char *model, char *buf, llmq_err *err);
/* Both of the instance's connections are up. */
int gw_inst_ready(const gw *g, int inst);
/* llmq_gateway_redis_instance_up of each instance, llmq_gateway_redis_up = all up. */
void gw_inst_metrics(gw *g);
/* The instance of a redisAsyncContext callback (ac->data is its gw_redis). */
gw_inst *gw_inst_of(redisAsyncContext *ac);
/* The job watchers of the call's instance. */
jobwatch_registry *gw_call_watches(gw_call *call);
/* Answer 503 redis_unavailable naming instance inst (and what needed it). */
void gw_reply_inst_down(gw *g, http_conn *c, int inst, const char *what);
/* A description for messages: "r1a2b3c (redis://host:6380/0)". */
const char *gw_inst_describe(const gw *g, int inst, char *buf, size_t cap);

/* ---------------------------------------------------------------- replies */

/* OpenAI error shape {"error":{"message","type","param","code"}}. */
void gw_reply_error(http_conn *c, int status, const char *type, const char *param, const char *code,
                    const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* As gw_reply_error, with Retry-After: retry_after_s (a 429 or 503 has 1 s otherwise). */
void gw_reply_error_after(http_conn *c, int status, int retry_after_s, const char *type, const char *param,
                          const char *code, const char *fmt, ...) __attribute__((format(printf, 7, 8)));
/* Reply with a JSON value (stolen: it is decref'd). */
void gw_reply_json(http_conn *c, int status, json_t *v, const char *extra_headers);
/* The usual 503 while Redis is unreachable. */
void gw_reply_redis_down(http_conn *c);

/* Start an SSE response on the call (headers + heartbeat timer). */
void gw_sse_begin(gw_call *call);
/* One event: optional id (< 0: none), optional event name, data. -1 if the client is gone. */
int gw_sse_send(gw_call *call, int64_t id, const char *event, const char *data, size_t len);
/* data: a JSON value, compact (stolen). */
int gw_sse_send_json(gw_call *call, int64_t id, const char *event, json_t *v);
void gw_sse_end(gw_call *call);
/* A jobwatch_gap_fn for an SSE call (ud: the gw_call, or a struct that
 * begins with one): chunks from .. to-1 were trimmed from the job's output
 * stream, so the client is told (an `event: error` without an id, code
 * `output_trimmed`, the missing seqs) before the stream goes on. */
void gw_sse_gap(void *ud, int64_t from, int64_t to);

/* ---------------------------------------------------------------- models */

/*
 * The served models are those of --models (they scale from zero: accepted and
 * queued with no live worker) and those named by a live worker heartbeat in
 * <prefix>workers, read every GW_MODELS_READ_S and again when a request names
 * a model not in the table, before it is answered 404 (so a worker that just
 * came up is served at once).  Nothing a client sends adds to the table: a
 * refused name creates no stream, group or entry.  At most one read is in
 * flight; requests that miss wait for the first read sent after they came.
 */
#define GW_MAX_MODELS 1024       /* entries of the table; heartbeats past it are ignored (logged) */
#define GW_MODELS_READ_S 1.0     /* s between two reads of the heartbeats */

#ifndef LLMQ_VERSION
#define LLMQ_VERSION "0.1.0"     /* GET /version (the chart's appVersion); -DLLMQ_VERSION=... overrides */
#endif

/* Index of model in g->models when it is served, else -1. */
int gw_model_lookup(gw *g, const char *model);
/* Add model to the table (configured: from --models).  Its index, or -1 when
 * the name is invalid, the table full or memory out. */
int gw_model_add(gw *g, const char *model, int configured);
/* Start reading the heartbeats (after gw_redis_start) / stop (shutdown). */
void gw_models_start(gw *g);
void gw_models_stop(gw *g);
/* Read the heartbeats now, unless a read is in flight. */
void gw_models_read(gw *g);
/* A submit route found no model: when the request is the one gw_route is
 * dispatching, hold it until a fresh read of the heartbeats and route it again
 * (the answer is then final).  1 when it took the request (it answers it),
 * 0 when the caller must answer the 404 itself. */
int gw_models_retry(gw *g, http_conn *c);
/* Create the consumer group of every known model whose group is not known to
 * exist on the current connection (fire and forget; BUSYGROUP is fine). */
void gw_ensure_groups(gw *g);

/* A JSON string of n bytes of text; invalid UTF-8 sequences become U+FFFD
 * (jansson refuses them, and a client must never get invalid JSON). */
json_t *gw_json_text(const char *s, size_t n);

/* ---------------------------------------------------------------- time */
int64_t gw_now_ms(void);

/* ---------------------------------------------------------------- Redis full */
/* The HTTP status for a Redis error reply to a write the client asked for
 * (on instance inst):
 * 503 (answered with Retry-After) when Redis refused it for want of memory
 * ("OOM command not allowed ...", also inside a script, or "EXECABORT" of a
 * MULTI whose commands were refused so), which also makes /readyz report
 * that instance not ready for GW_REDIS_FULL_MS; 500 for anything else (err may be NULL). */
int gw_redis_error_status(gw *g, int inst, const char *err);
#define GW_REDIS_FULL_MS 2000

/* ---------------------------------------------------------------- routes */
void gw_route(void *ud, http_conn *c, http_request *req);   /* the HTTP handler */
void gw_route_openai(gw *g, http_conn *c, http_request *req, int chat);
void gw_route_models(gw *g, http_conn *c, http_request *req);
void gw_route_jobs_submit(gw *g, http_conn *c, http_request *req);
void gw_route_jobs_get(gw *g, http_conn *c, http_request *req, const char *id);
void gw_route_jobs_events(gw *g, http_conn *c, http_request *req, const char *id);
void gw_route_jobs_cancel(gw *g, http_conn *c, http_request *req, const char *id);
void gw_route_readyz(gw *g, http_conn *c, http_request *req);
void gw_route_health(gw *g, http_conn *c, http_request *req);
void gw_route_metrics(gw *g, http_conn *c, http_request *req);
void gw_route_tok(gw *g, http_conn *c, http_request *req, int detok); /* POST /tokenize, /detokenize (routes_tok.c) */

#endif
