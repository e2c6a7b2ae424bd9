/*
 * main.c — llmq-gateway: options, wiring, signals.
 *
 *   llmq-gateway --redis URL [--redis-for MODELS=URL ...] --listen HOST:PORT [--api-key-file F] [--max-queue N]
 *                [--max-body-bytes N] [--max-tokens-limit N] [--models a,b] [--prefix P]
 *                [--result-ttl S] [--drain-timeout S] [--request-timeout S] [--max-connections N]
 *                [--queue-timeout S] [--admin-key-file F] [--priority-range LO:HI] [--key-max-jobs N]
 *                [--key-tokens-per-minute N]
 *                [--redis-password-file F] [--allow-root]
 *
 * One thread, one libev loop.  Shutdown (SIGTERM/SIGINT): stop accepting,
 * answer new POSTs with 503, let open responses finish for --drain-timeout,
 * then close what is left, disconnect from Redis and return 0.  SIGHUP
 * reloads the API keys (gateway/auth.h); a failed reload keeps the old ones.
 *
 * The gateway parses untrusted input all day and needs no privilege, so it
 * refuses to start as root (euid 0) unless told otherwise (--allow-root or
 * LLMQ_ALLOW_ROOT=1): a mistake in deployment should fail loudly rather
 * than run a network service as root.
 *
 * Descriptors: every client connection is one, so at start the soft
 * RLIMIT_NOFILE is raised to the hard one, and unless --max-connections says
 * otherwise connections are capped FD_RESERVE below it (Redis, the loop and
 * the log keep theirs); a connection past the cap is answered 503 and closed.
 */
#include <errno.h>
#include <ev.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "gateway/gw.h"
#include "gateway/lanes.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))
#define FD_RESERVE 64 /* descriptors kept for other than client connections */
#define MAX_QUEUE_DEFAULT 10000 /* --max-queue: a flood is refused with 429 long before Redis fills */

static void usage(FILE *f) {
    fprintf(f,
            "usage: llmq-gateway --redis URL --listen HOST:PORT [options]\n"
            "  --redis URL            redis://[user:password@]host:port/db or unix:///path\n"
            "  --redis-for MODELS=URL the jobs of these models (a,b) on another Redis instance; repeatable;\n"
            "                         the models no entry names stay on --redis\n"
            "  --listen HOST:PORT     address to serve HTTP on (default 0.0.0.0:8000)\n"
            "  --api-key-file F       bearer keys, one per line (# comments); reloaded on SIGHUP. Also:\n"
            "                         $LLMQ_API_KEY_FILE, $LLMQ_API_KEYS (comma-separated); none = no auth\n"
            "  --redis-password-file F  Redis password (else $LLMQ_REDIS_PASSWORD_FILE, $LLMQ_REDIS_PASSWORD)\n"
            "                         when the URL has none\n"
            "  --allow-root           run even as root (refused otherwise; also LLMQ_ALLOW_ROOT=1)\n"
            "  --admin-key-file F     admin keys (see every job, no per-key limits), as --api-key-file;\n"
            "                         also $LLMQ_ADMIN_KEY_FILE, $LLMQ_ADMIN_API_KEYS\n"
            "  --max-queue N          waiting jobs per model before 429 (default %d; 0 = unbounded)\n"
            "  --key-max-jobs N       unfinished jobs per API key before 429 (default %d; 0 = none)\n"
            "  --key-tokens-per-minute N  tokens of an API key's jobs that ended over the last minute\n"
            "                         before 429 (default 0 = none)\n"
            "  --priority-range LO:HI the priorities a request may ask for (default %d:%d; admin keys: any)\n"
            "  --max-body-bytes N     largest request body (default 4194304)\n"
            "  --max-tokens-limit N   largest max_tokens accepted (default 32768; 0 = none)\n"
            "  --models a,b           models served even with no live worker (they scale from zero);\n"
            "                         the models of live worker heartbeats are served too, others are 404\n"
            "  --prefix P             Redis key prefix (default llmq:)\n"
            "  --result-ttl S         TTL of jobs the gateway ends itself (default 86400)\n"
            "  --drain-timeout S      on SIGTERM, s to let open responses finish (default 30)\n"
            "  --request-timeout S    s to receive a whole request, from its first byte (default 30); then 408\n"
            "  --queue-timeout S      s a completion may wait for a worker to take its job (default 300;\n"
            "                         0 = no limit); then the job is cancelled and the client gets 503\n"
            "  --max-connections N    open HTTP connections; more are answered 503 and closed\n"
            "                         (default: the descriptor limit less %d; 0 = no cap)\n",
            MAX_QUEUE_DEFAULT, GW_KEY_MAX_JOBS_DEFAULT, GW_PRIORITY_LO_DEFAULT, GW_PRIORITY_HI_DEFAULT, FD_RESERVE);
}

static int parse_ll(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* Seconds: a positive decimal up to a day. */
static int parse_seconds(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !(v > 0 && v <= 86400)) return -1;
    *out = v;
    return 0;
}

/* Raise the soft descriptor limit to the hard one (each client connection
 * takes a descriptor; the default soft limit is often 1024) and return the
 * limit in force. */
static rlim_t raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
    if (rl.rlim_cur == RLIM_INFINITY) return rl.rlim_cur;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t was = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
            log_info("descriptor limit raised from %llu to %llu", (unsigned long long)was,
                     (unsigned long long)rl.rlim_cur);
        else
            log_warn("could not raise the descriptor limit from %llu: %s", (unsigned long long)was, strerror(errno));
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl.rlim_cur;
}

/* HOST:PORT or [v6]:PORT into host (static storage) and port. */
static int parse_listen(const char *s, char *host, size_t cap, int *port) {
    const char *colon = strrchr(s, ':');
    if (!colon) return -1;
    size_t n = (size_t)(colon - s);
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        s++;
        n -= 2;
    }
    if (n >= cap) return -1;
    memcpy(host, s, n);
    host[n] = '\0';
    long long p;
    if (parse_ll(colon + 1, 0, 65535, &p)) return -1;
    *port = (int)p;
    return 0;
}

static int set_models(gw *g, const char *list) {
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        char name[PROTO_MAX_MODEL_LEN + 1];
        if (n == 0 || n > PROTO_MAX_MODEL_LEN) {
            log_error("--models: bad entry in '%s'", list);
            return -1;
        }
        memcpy(name, p, n);
        name[n] = '\0';
        if (!keys_model_valid(name)) {
            log_error("--models: '%s' is not a valid model name ([A-Za-z0-9._:/@+-])", name);
            return -1;
        }
        if (gw_model_add(g, name, 1) < 0) {
            log_error("--models: more than %d models", GW_MAX_MODELS);
            return -1;
        }
        p += n;
        if (*p == ',') p++;
    }
    return 0;
}

/* ---------------------------------------------------------------- events */

/* The connections of instance ud. */
static void ev_cmd_up(void *ud) {
    gw_inst *in = ud;
    gw *g = in->g;
    for (size_t i = 0; i < g->n_models; i++)
        if (g->models[i].inst == in->idx) g->models[i].group_ok = 0;
    gw_ensure_groups(g);
    gw_models_read(g);
    jobwatch_on_cmd_up(&in->watches);
    gw_inst_metrics(g);
}
static void ev_cmd_down(void *ud) {
    gw_inst *in = ud;
    gw *g = in->g;
    for (size_t i = 0; i < g->n_models; i++)
        if (g->models[i].inst == in->idx) g->models[i].group_ok = 0;
    gw_inst_metrics(g);
}
static void ev_sub_up(void *ud) {
    gw_inst *in = ud;
    jobwatch_on_sub_up(&in->watches);
    gw_inst_metrics(in->g);
}
static void ev_sub_down(void *ud) {
    gw_inst *in = ud;
    jobwatch_on_sub_down(&in->watches);
    gw_inst_metrics(in->g);
}
static void ev_sub_reply(void *ud, redisReply *r) { jobwatch_on_sub_reply(&((gw_inst *)ud)->watches, r); }

static void on_http_log(void *ud, const http_request *req, int status, double seconds) {
    gw *g = ud;
    char code[8];
    snprintf(code, sizeof code, "%d", status);
    const char *route = req->route ? req->route : "(none)";
    metric_inc(metric_get(g->m.requests, route, code), 1);
    metric_observe(metric_get(g->m.duration, route), seconds);
    /* the path is the client's: bounded here (a request target may be 8 KiB) */
    log_debug("%s %.*s%s → %d (%.1f ms)", req->method_name ? req->method_name : "-", LOG_FIELD_MAX,
              req->path ? req->path : "-", req->path && strlen(req->path) > LOG_FIELD_MAX ? "..." : "", status,
              seconds * 1e3);
}

/* ---------------------------------------------------------------- shutdown */

static void stop_everything(gw *g) {
    ev_timer_stop(g->loop, &g->drain_w);
    ev_signal_stop(g->loop, &g->sigterm_w);
    ev_signal_stop(g->loop, &g->sigint_w);
    ev_signal_stop(g->loop, &g->sighup_w);
    gw_models_stop(g);
    http_server_destroy(g->http); /* closes the rest; their calls stop their watchers */
    g->http = NULL;
    for (size_t i = 0; i < g->n_inst; i++) gw_redis_stop(&g->inst[i].redis);
}

static void on_drain(struct ev_loop *loop, ev_timer *w, int revents) {
    gw *g = container_of(w, gw, drain_w);
    static double deadline = 0;
    if (deadline == 0) deadline = ev_now(loop) + g->cfg.drain_timeout;
    if (http_server_conn_count(g->http) == 0 || ev_now(loop) >= deadline) {
        if (http_server_conn_count(g->http))
            log_warn("drain timeout: closing %zu connections", http_server_conn_count(g->http));
        stop_everything(g);
    }
}

/* SIGHUP: rotate the API keys without a restart. */
static void on_sighup(struct ev_loop *loop, ev_signal *w, int revents) {
    gw *g = container_of(w, gw, sighup_w);
    llmq_err err;
    llmq_err_clear(&err);
    if (gw_auth_reload(&g->auth, &err) != LLMQ_OK) {
        log_error("SIGHUP: API keys not reloaded, keeping the %zu current ones: %s", g->auth.n, err.msg);
        return;
    }
    log_info("SIGHUP: API keys reloaded: %zu keys", g->auth.n);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents) {
    gw *g = w->signum == SIGTERM ? container_of(w, gw, sigterm_w) : container_of(w, gw, sigint_w);
    if (g->shutting_down) {
        log_warn("second signal: stopping now");
        stop_everything(g);
        return;
    }
    g->shutting_down = 1;
    log_info("shutting down (%zu connections open, up to %.0f s to finish)", http_server_conn_count(g->http),
             g->cfg.drain_timeout);
    http_server_shutdown(g->http);
    ev_timer_init(&g->drain_w, on_drain, 0., 0.1);
    ev_timer_start(loop, &g->drain_w);
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv) {
    static gw g; /* zeroed */
    char host[256] = "0.0.0.0";
    int port = 8000;
    long long v;
    g.cfg.listen_host = host;
    g.cfg.listen_port = port;
    g.cfg.max_body = 4 << 20;
    g.cfg.max_tokens_limit = 32768;
    g.cfg.result_ttl_s = 86400;
    g.cfg.drain_timeout = 30;
    g.cfg.request_timeout = 30;
    g.cfg.queue_timeout = 300;
    g.cfg.max_connections = -1;
    g.cfg.max_queue = MAX_QUEUE_DEFAULT;
    const char *admin_key_file = NULL;
    long long prio_lo = GW_PRIORITY_LO_DEFAULT, prio_hi = GW_PRIORITY_HI_DEFAULT, key_max_jobs = GW_KEY_MAX_JOBS_DEFAULT;
    long long key_tpm = 0;
    log_set_name("gateway");

    enum { O_REDIS = 1, O_LISTEN, O_KEYS, O_MAXQ, O_BODY, O_TOKENS, O_MODELS, O_PREFIX, O_TTL, O_DRAIN, O_RPWFILE,
           O_ROOT, O_REQ_TIMEOUT, O_MAXCONN, O_QUEUE_TIMEOUT, O_ADMIN_KEYS, O_PRIO_RANGE, O_KEY_MAX_JOBS,
           O_KEY_TPM, O_REDIS_FOR, O_HELP };
    static const struct option opts[] = {
        {"redis", required_argument, 0, O_REDIS},          {"listen", required_argument, 0, O_LISTEN},
        {"api-key-file", required_argument, 0, O_KEYS},    {"max-queue", required_argument, 0, O_MAXQ},
        {"max-body-bytes", required_argument, 0, O_BODY},  {"max-tokens-limit", required_argument, 0, O_TOKENS},
        {"models", required_argument, 0, O_MODELS},        {"prefix", required_argument, 0, O_PREFIX},
        {"result-ttl", required_argument, 0, O_TTL},       {"drain-timeout", required_argument, 0, O_DRAIN},
        {"redis-password-file", required_argument, 0, O_RPWFILE}, {"allow-root", no_argument, 0, O_ROOT},
        {"request-timeout", required_argument, 0, O_REQ_TIMEOUT}, {"max-connections", required_argument, 0, O_MAXCONN},
        {"queue-timeout", required_argument, 0, O_QUEUE_TIMEOUT},
        {"admin-key-file", required_argument, 0, O_ADMIN_KEYS}, {"priority-range", required_argument, 0, O_PRIO_RANGE},
        {"key-max-jobs", required_argument, 0, O_KEY_MAX_JOBS}, {"key-tokens-per-minute", required_argument, 0, O_KEY_TPM},
        {"redis-for", required_argument, 0, O_REDIS_FOR},
        {"help", no_argument, 0, O_HELP},                  {0, 0, 0, 0},
    };
    const char *redis_for[64];
    int n_redis_for = 0;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case O_REDIS: g.cfg.redis_url = optarg; break;
        case O_REDIS_FOR:
            if (n_redis_for == (int)(sizeof redis_for / sizeof *redis_for)) {
                fprintf(stderr, "llmq-gateway: more than %d --redis-for\n", n_redis_for);
                return 2;
            }
            redis_for[n_redis_for++] = optarg;
            break;
        case O_LISTEN:
            if (parse_listen(optarg, host, sizeof host, &port)) {
                fprintf(stderr, "llmq-gateway: --listen wants HOST:PORT, got '%s'\n", optarg);
                return 2;
            }
            g.cfg.listen_port = port;
            break;
        case O_KEYS: g.cfg.api_key_file = optarg; break;
        case O_ADMIN_KEYS: admin_key_file = optarg; break;
        case O_PRIO_RANGE: { /* LO:HI, each a 32-bit integer, LO <= HI */
            char lo[32] = "";
            const char *colon = strchr(optarg, ':');
            size_t n = colon ? (size_t)(colon - optarg) : 0;
            if (n && n < sizeof lo) memcpy(lo, optarg, n);
            lo[n < sizeof lo ? n : 0] = '\0';
            if (!lo[0] || parse_ll(lo, INT32_MIN, INT32_MAX, &prio_lo) ||
                parse_ll(colon + 1, INT32_MIN, INT32_MAX, &prio_hi) || prio_lo > prio_hi) {
                fprintf(stderr, "llmq-gateway: --priority-range wants LO:HI (integers, LO <= HI), got '%s'\n", optarg);
                return 2;
            }
            break;
        }
        case O_KEY_MAX_JOBS:
        case O_KEY_TPM:
            if (parse_ll(optarg, 0, (long long)1 << 40, o == O_KEY_TPM ? &key_tpm : &key_max_jobs)) {
                fprintf(stderr, "llmq-gateway: %s wants a non-negative number, got '%s'\n", argv[optind - 1], optarg);
                return 2;
            }
            break;
        case O_RPWFILE: g.cfg.redis_password_file = optarg; break;
        case O_ROOT: g.cfg.allow_root = 1; break;
        case O_MAXQ:
        case O_BODY:
        case O_TOKENS:
        case O_TTL:
        case O_DRAIN:
            if (parse_ll(optarg, 0, o == O_TOKENS ? INT32_MAX : (long long)1 << 40, &v)) {
                fprintf(stderr, "llmq-gateway: %s wants a non-negative number, got '%s'\n", argv[optind - 1], optarg);
                return 2;
            }
            if (o == O_MAXQ) g.cfg.max_queue = v;
            else if (o == O_BODY) g.cfg.max_body = (size_t)v;
            else if (o == O_TOKENS) g.cfg.max_tokens_limit = (int)v;
            else if (o == O_TTL) g.cfg.result_ttl_s = v;
            else g.cfg.drain_timeout = (double)v;
            break;
        case O_REQ_TIMEOUT:
            if (parse_seconds(optarg, &g.cfg.request_timeout)) {
                fprintf(stderr, "llmq-gateway: --request-timeout wants seconds (0 < S <= 86400), got '%s'\n", optarg);
                return 2;
            }
            break;
        case O_QUEUE_TIMEOUT: /* 0 = no limit, else as --request-timeout */
            if (strcmp(optarg, "0") != 0 && parse_seconds(optarg, &g.cfg.queue_timeout)) {
                fprintf(stderr, "llmq-gateway: --queue-timeout wants seconds (0 = none, or 0 < S <= 86400), got '%s'\n",
                        optarg);
                return 2;
            }
            if (!strcmp(optarg, "0")) g.cfg.queue_timeout = 0;
            break;
        case O_MAXCONN:
            if (parse_ll(optarg, 0, INT32_MAX, &g.cfg.max_connections)) {
                fprintf(stderr, "llmq-gateway: --max-connections wants a non-negative number, got '%s'\n", optarg);
                return 2;
            }
            break;
        case O_MODELS: g.cfg.models = optarg; break;
        case O_PREFIX: g.cfg.prefix = optarg; break;
        case O_HELP:
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || !g.cfg.redis_url) {
        if (!g.cfg.redis_url) fprintf(stderr, "llmq-gateway: --redis URL is required\n");
        usage(stderr);
        return 2;
    }
    const char *allow_root_env = getenv("LLMQ_ALLOW_ROOT");
    if (allow_root_env && !strcmp(allow_root_env, "1")) g.cfg.allow_root = 1;
    if (geteuid() == 0) {
        if (!g.cfg.allow_root) {
            fprintf(stderr, "llmq-gateway: refusing to run as root (euid 0): run it as an unprivileged user (the "
                            "image uses UID 10001), or pass --allow-root (LLMQ_ALLOW_ROOT=1) if you must\n");
            return 2;
        }
        log_warn("running as root (--allow-root): a network service should run unprivileged");
    }
    llmq_err err;
    llmq_err_clear(&err);
    redis_url_set_password_file(g.cfg.redis_password_file);
    if (gw_inst_add(&g, g.cfg.redis_url, &err) != 0 || keys_init(&g.keys, g.cfg.prefix, &err) != LLMQ_OK) {
        fprintf(stderr, "llmq-gateway: %s\n", err.msg);
        return 2;
    }
    for (int i = 0; i < n_redis_for; i++)
        if (gw_route_add(&g, redis_for[i], &err) != 0) {
            fprintf(stderr, "llmq-gateway: %s\n", err.msg);
            return 2;
        }
    if (g.cfg.models && set_models(&g, g.cfg.models)) return 2;
    if (gw_auth_init_admin(&g.auth, g.cfg.api_key_file, admin_key_file, &err) != LLMQ_OK) {
        fprintf(stderr, "llmq-gateway: API keys: %s\n", err.msg);
        gw_auth_deinit(&g.auth);
        return 2;
    }
    g.auth.prio_lo = (int)prio_lo;
    g.auth.prio_hi = (int)prio_hi;
    g.auth.key_max_jobs = key_max_jobs;
    g.auth.key_tpm = key_tpm;
    if (!gw_auth_enabled(&g.auth))
        log_warn("!!! NO API KEYS: every client can submit jobs. Pass --api-key-file (or set LLMQ_API_KEY_FILE / "
                 "LLMQ_API_KEYS) to require 'Authorization: Bearer <key>'. !!!");
    else
        log_info("authentication on: %zu API keys", g.auth.n);
    if (g.n_models) {
        char list[1024] = "";
        size_t n = 0;
        for (size_t i = 0; i < g.n_models && n < sizeof list; i++)
            n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "", g.models[i].name);
        log_info("models served with or without a live worker (--models): %s; the models of live worker "
                 "heartbeats are served too, any other is 404", list);
    } else {
        log_info("no --models: serving the models that live workers name in their heartbeats, any other is 404");
    }
    signal(SIGPIPE, SIG_IGN);
    rlim_t nofile = raise_fd_limit();
    if (g.cfg.max_connections < 0) {
        rlim_t cap = nofile > 2 * FD_RESERVE ? nofile - FD_RESERVE : nofile / 2;
        g.cfg.max_connections = cap > INT32_MAX ? INT32_MAX : (long long)cap;
    } else if (g.cfg.max_connections == 0 || (rlim_t)g.cfg.max_connections + 16 > nofile) {
        log_warn("--max-connections %lld with a descriptor limit of %llu: past the limit new connections wait "
                 "in the listen backlog", g.cfg.max_connections, (unsigned long long)nofile);
    }

    g.loop = EV_DEFAULT;
    g.started_s = (int64_t)time(NULL);
    g.reg = metrics_create();
    g.m.requests = metrics_counter(g.reg, "llmq_gateway_http_requests_total", "HTTP requests by route and status.",
                                   "route,code");
    g.m.duration = metrics_histogram(g.reg, "llmq_gateway_http_request_duration_seconds",
                                     "Time from request headers to the end of the response.", "route",
                                     metrics_latency_buckets, metrics_latency_nbuckets);
    g.m.submitted = metrics_counter(g.reg, "llmq_gateway_jobs_submitted_total", "Jobs written to Redis.", "model_name");
    g.m.rejected = metrics_counter(g.reg, "llmq_gateway_queue_full_total", "Submissions refused with 429.", "model_name");
    g.m.streams = metric_get(metrics_gauge(g.reg, "llmq_gateway_open_streams", "SSE responses in progress.", NULL));
    g.m.redis_up = metric_get(metrics_gauge(g.reg, "llmq_gateway_redis_up",
                                            "1 when both connections to every Redis instance are up.", NULL));
    metric_family *inst_up = metrics_gauge(g.reg, "llmq_gateway_redis_instance_up",
                                           "1 when both connections to this Redis instance are up "
                                           "(default: --redis, else the tag of its jobs' ids).", "instance");
    g.m.connections = metric_get(metrics_gauge(g.reg, "llmq_gateway_http_connections", "Open HTTP connections.", NULL));

    char anchor[KEYS_MAX];
    snprintf(anchor, sizeof anchor, "%sgateway:anchor", g.keys.prefix);
    for (size_t i = 0; i < g.n_inst; i++) { /* g.inst does not move from here on */
        gw_inst *in = &g.inst[i];
        gw_redis_events evs = {in, ev_cmd_up, ev_cmd_down, ev_sub_up, ev_sub_down, ev_sub_reply};
        gw_redis_init(&in->redis, g.loop, &in->url, anchor, &evs);
        if (i) snprintf(in->redis.label, sizeof in->redis.label, "redis %s", in->name);
        jobwatch_registry_init(&in->watches, &in->redis, &g.keys);
        in->up = metric_get(inst_up, in->name);
    }

    http_limits lim = {.max_body = g.cfg.max_body,
                       .idle_timeout = 75,
                       .request_timeout = g.cfg.request_timeout,
                       .max_backlog = 8 << 20,
                       .max_conns = (size_t)g.cfg.max_connections};
    g.http = http_server_create(g.loop, host, port, &lim, gw_route, on_http_log, &g, &err);
    if (!g.http) {
        log_error("%s", err.msg);
        return 1;
    }
    char where[600];
    char cap[48] = "no connection cap";
    if (g.cfg.max_connections) snprintf(cap, sizeof cap, "at most %lld connections", g.cfg.max_connections);
    log_info("listening on %s:%d, redis %s, prefix '%s', %s", host, http_server_port(g.http),
             redis_url_describe(&g.inst[0].url, where, sizeof where), g.keys.prefix, cap);
    for (size_t i = 1; i < g.n_inst; i++) {
        char models[1024] = "";
        size_t n = 0;
        for (size_t k = 0; k < g.n_routes && n < sizeof models; k++)
            if (g.routes[k].inst == (int)i)
                n += (size_t)snprintf(models + n, sizeof models - n, "%s%s", n ? ", " : "", g.routes[k].model);
        log_info("redis instance %s: %s carries %s (job ids '%s.<hex>')", g.inst[i].name,
                 redis_url_describe(&g.inst[i].url, where, sizeof where), models, g.inst[i].tag);
    }
    for (size_t i = 0; i < g.n_inst; i++) gw_redis_start(&g.inst[i].redis);
    gw_models_start(&g);
    gw_lanes_start(&g); /* llmq_queue_lag per model and lane (gateway/lanes.c) */

    ev_signal_init(&g.sigterm_w, on_signal, SIGTERM);
    ev_signal_init(&g.sigint_w, on_signal, SIGINT);
    ev_signal_start(g.loop, &g.sigterm_w);
    ev_signal_start(g.loop, &g.sigint_w);
    ev_signal_init(&g.sighup_w, on_sighup, SIGHUP);
    ev_signal_start(g.loop, &g.sighup_w);

    ev_run(g.loop, 0);

    for (size_t i = 0; i < g.n_inst; i++) jobwatch_registry_deinit(&g.inst[i].watches);
    free(g.inst);
    free(g.routes);
    metrics_destroy(g.reg);
    gw_auth_deinit(&g.auth);
    free(g.models);
    log_info("stopped");
    return 0;
}
