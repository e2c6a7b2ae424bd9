/*
 * cmd_queue.c — the queue verbs of `llmq`, thin fronts over libllmq:
 *
 *   llmq submit --redis URL --model NAME --prompt T [--max-tokens N] [--temperature T]
 *               [--seed S] [--priority P] [--prefix P] [--force] [--wait | --stream] [--timeout S]
 *   llmq get    --redis URL [--prefix P] ID       JSON of the job (state, text, usage)
 *   llmq stream --redis URL [--prefix P] [--from SEQ] [--timeout MS] ID
 *   llmq cancel --redis URL [--prefix P] ID
 *
 * --redis defaults to $LLMQ_REDIS, then redis://127.0.0.1:6379; a password
 * not in the URL comes from --redis-password-file F, $LLMQ_REDIS_PASSWORD_FILE
 * or $LLMQ_REDIS_PASSWORD (common/url.h).  submit
 * prints the job id (plain), or with --wait the final JSON as `get` prints
 * it, or with --stream the text as it is generated.  Exit status: 0 ok, 1
 * runtime error or failed job, 2 usage.
 *
 * submit refuses a model that no live worker heartbeat names (a typo would
 * otherwise wait in a stream nobody reads, forever), and a --max-tokens past
 * the context its workers report; --force submits anyway (a model that
 * scales from zero has no worker until its first job is queued).  With
 * --wait or --stream, --timeout S gives up after S seconds, says so and
 * exits 1; the job stays queued (`llmq cancel ID` drops it).  --priority P
 * (a 32-bit integer, default 0) picks the job's lane: > 0 high, < 0 low
 * (common/keys.h).  The gateway's --priority-range does not apply here: the
 * CLI writes to Redis directly, as an operator.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/cli/cli.h"
#include "client/libllmq.h"
#include "common/url.h"

typedef struct queue_opts {
    const char *redis;           /* URL */
    const char *prefix;          /* key prefix or NULL */
    const char *model, *prompt;  /* submit */
    int max_tokens;              /* submit; PROTO_UNSET = default */
    double temperature;          /* submit; NAN = default */
    int has_seed;
    unsigned long long seed;
    int32_t priority;            /* submit: its lane (common/keys.h); 0 = default */
    int wait, stream;            /* submit: --wait / --stream */
    int force;                   /* submit: even when no live worker serves the model */
    double timeout_s;            /* submit --wait/--stream: give up after this long (0 = never) */
    long long from;              /* stream: first seq */
    int timeout_ms;              /* stream: give up after this much silence (0 = never) */
    const char *id;              /* get / stream / cancel */
} queue_opts;

static void usage(FILE *f, const char *verb) {
    if (!strcmp(verb, "submit"))
        fprintf(f, "usage: llmq submit --redis URL --model NAME --prompt TEXT [--max-tokens N] [--temperature T]\n"
                   "                   [--seed S] [--priority P] [--prefix P] [--force] [--wait | --stream]\n"
                   "                   [--timeout S]\n"
                   "  --priority P higher runs first: > 0 the high lane, < 0 the low one (default 0;\n"
                   "               %d..%d)\n"
                   "  --force      submit even when no live worker serves the model (it scales from zero)\n"
                   "  --timeout S  with --wait or --stream: give up after S seconds (exit 1; the job stays)\n",
                INT32_MIN, INT32_MAX);
    else if (!strcmp(verb, "stream"))
        fprintf(f, "usage: llmq stream --redis URL [--prefix P] [--from SEQ] [--timeout MS] ID\n");
    else
        fprintf(f, "usage: llmq %s --redis URL [--prefix P] ID\n", verb);
    fprintf(f, "a Redis password not in the URL: --redis-password-file F, $LLMQ_REDIS_PASSWORD_FILE or "
               "$LLMQ_REDIS_PASSWORD\n");
}

/* A whole decimal integer in [lo, hi]; 0 ok, -1 otherwise. */
static int parse_int(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* Parse argv; 0 ok, 2 usage error (printed), 1 = --help printed. */
static int parse(int argc, char **argv, queue_opts *o) {
    const char *verb = argv[0];
    memset(o, 0, sizeof *o);
    o->redis = getenv("LLMQ_REDIS") ? getenv("LLMQ_REDIS") : "redis://127.0.0.1:6379";
    o->max_tokens = PROTO_UNSET;
    o->temperature = NAN;
    enum { O_REDIS = 1, O_PREFIX, O_MODEL, O_PROMPT, O_MAXT, O_TEMP, O_SEED, O_WAIT, O_STREAM, O_FROM, O_TIMEOUT, O_PWFILE,
           O_FORCE, O_PRIORITY, O_HELP };
    static const struct option opts[] = {
        {"redis", required_argument, 0, O_REDIS},   {"prefix", required_argument, 0, O_PREFIX},
        {"model", required_argument, 0, O_MODEL},   {"prompt", required_argument, 0, O_PROMPT},
        {"max-tokens", required_argument, 0, O_MAXT}, {"temperature", required_argument, 0, O_TEMP},
        {"seed", required_argument, 0, O_SEED},     {"wait", no_argument, 0, O_WAIT},
        {"stream", no_argument, 0, O_STREAM},       {"from", required_argument, 0, O_FROM},
        {"timeout", required_argument, 0, O_TIMEOUT}, {"help", no_argument, 0, O_HELP},
        {"redis-password-file", required_argument, 0, O_PWFILE}, {"force", no_argument, 0, O_FORCE},
        {"priority", required_argument, 0, O_PRIORITY},
        {0, 0, 0, 0},
    };
    int c, li = -1; /* li: the option getopt_long matched, to name it in a message */
    char *end;
    long long v;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, &li)) != -1) {
        switch (c) {
        case O_REDIS: o->redis = optarg; break;
        case O_PREFIX: o->prefix = optarg; break;
        case O_PWFILE: redis_url_set_password_file(optarg); break;
        case O_MODEL: o->model = optarg; break;
        case O_PROMPT: o->prompt = optarg; break;
        case O_MAXT:
            if (parse_int(optarg, 1, INT32_MAX, &v)) goto bad;
            o->max_tokens = (int)v;
            break;
        case O_PRIORITY:
            if (parse_int(optarg, INT32_MIN, INT32_MAX, &v)) {
                fprintf(stderr, "llmq %s: --priority wants an integer in %d..%d, got '%s'\n", verb, INT32_MIN,
                        INT32_MAX, optarg);
                return 2;
            }
            o->priority = (int32_t)v;
            break;
        case O_TEMP:
            o->temperature = strtod(optarg, &end);
            if (*end) goto bad;
            break;
        case O_SEED:
            o->seed = strtoull(optarg, &end, 10);
            if (*end) goto bad;
            o->has_seed = 1;
            break;
        case O_WAIT: o->wait = 1; break;
        case O_STREAM: o->stream = 1; break;
        case O_FROM:
            o->from = strtoll(optarg, &end, 10);
            if (*end || o->from < 0) goto bad;
            break;
        case O_TIMEOUT: /* submit: seconds in all; stream: ms of silence */
            if (!strcmp(verb, "submit")) {
                o->timeout_s = strtod(optarg, &end);
                if (*end || end == optarg || !(o->timeout_s > 0 && o->timeout_s <= 86400 * 365)) goto bad;
                break;
            }
            o->timeout_ms = (int)strtol(optarg, &end, 10);
            if (*end || o->timeout_ms < 0) goto bad;
            break;
        case O_FORCE: o->force = 1; break;
        case O_HELP:
        case 'h': usage(stdout, verb); return 1;
        default: usage(stderr, verb); return 2;
        }
    }
    if (!strcmp(verb, "submit")) {
        if (optind != argc || !o->model || !o->prompt || (o->wait && o->stream) ||
            (o->timeout_s > 0 && !o->wait && !o->stream)) {
            usage(stderr, verb);
            return 2;
        }
    } else {
        if (optind != argc - 1) {
            usage(stderr, verb);
            return 2;
        }
        o->id = argv[optind];
    }
    return 0;
bad: /* argv[optind - 1] is the value itself when it came as a separate word */
    fprintf(stderr, "llmq %s: bad value '%s' for --%s\n", verb, optarg, li >= 0 ? opts[li].name : "?");
    return 2;
}

static llmq_client *connect_or_say(const queue_opts *o, const char *verb) {
    llmq_err err;
    llmq_err_clear(&err);
    llmq_client *c = llmq_connect(o->redis, o->prefix, &err);
    if (!c) fprintf(stderr, "llmq %s: %s\n", verb, err.msg);
    return c;
}

/* Print the job as JSON; returns 0 when it is not failed. */
static int print_job(const char *id, const llmq_job *j) {
    json_t *o = json_pack("{s:s, s:s, s:s, s:s?}", "id", id, "status", j->state_name, "model", j->model,
                          "finish_reason", j->finish_reason[0] ? j->finish_reason : NULL);
    json_object_set_new(o, "text", json_stringn_nocheck(j->text, j->text_len));
    if (j->has_usage)
        json_object_set_new(o, "usage", json_pack("{s:I, s:I}", "prompt_tokens", (json_int_t)j->usage.prompt_tokens,
                                                  "completion_tokens", (json_int_t)j->usage.completion_tokens));
    json_object_set_new(o, "chunks", json_integer(j->n_chunks));
    json_object_set_new(o, "attempts", json_integer(j->attempts));
    if (j->error) json_object_set_new(o, "error", json_string(j->error));
    char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    if (s) puts(s);
    free(s);
    return j->state == PROTO_STATE_FAILED || j->state == PROTO_STATE_EXPIRED;
}

typedef struct print_state {
    int failed;                  /* the final chunk reported an error */
    int64_t deadline_ms;         /* submit --timeout: stop reading past it (0 = never) */
    int expired;                 /* the deadline passed before the final chunk */
    long long next;              /* seq of the next chunk to read */
} print_state;

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* After each chunk: past the deadline (and not at the final chunk), stop reading. */
static int past_deadline(print_state *ps, const proto_chunk *ch) {
    ps->next = ch->seq + 1;
    if (!ps->deadline_ms || ch->finish || wall_ms() < ps->deadline_ms) return 0;
    ps->expired = 1;
    return 1;
}

static int print_chunk(void *user, const proto_chunk *ch) {
    print_state *ps = user;
    if (ch->text_len) {
        fwrite(ch->text, 1, ch->text_len, stdout);
        fflush(stdout);
    }
    if (ch->finish) {
        if (!strcmp(ch->finish, "error")) {
            fprintf(stderr, "\nllmq: job failed: %s\n", ch->error ? ch->error : "(no message)");
            ps->failed = 1;
        } else {
            putchar('\n');
        }
    }
    return past_deadline(ps, ch);
}

/* --wait: read through to the final chunk without printing. */
static int wait_chunk(void *user, const proto_chunk *ch) { return past_deadline(user, ch); }

/* Read job id's chunks from ps->next into fn until the final one, or until
 * the deadline in ps (then ps->expired): fn stops a job whose chunks keep
 * coming, llmq_stream's silence timeout (the time left) one that sends
 * nothing, after which reading resumes at the next seq while time is left. */
static llmq_status follow(llmq_client *c, const char *id, int timeout_ms, llmq_chunk_fn fn, print_state *ps,
                          llmq_err *err) {
    for (;;) {
        if (ps->deadline_ms) {
            int64_t left = ps->deadline_ms - wall_ms();
            if (left <= 0) {
                ps->expired = 1;
                return LLMQ_OK;
            }
            timeout_ms = left > INT32_MAX ? INT32_MAX : (int)left;
        }
        llmq_status st = llmq_stream(c, id, ps->next, timeout_ms, fn, ps, err);
        if (st != LLMQ_ERR_TIMEOUT || !ps->deadline_ms) return st;
    }
}

/* submit --timeout expired: say where the job stands. */
static int say_expired(llmq_client *c, const char *id, double timeout_s) {
    llmq_job j;
    llmq_err err;
    const int got = llmq_get(c, id, &j, &err) == LLMQ_OK;
    fprintf(stderr, "llmq submit: job %s did not finish within %g s (status: %s); it stays in the queue: "
                    "'llmq cancel %s' drops it\n", id, timeout_s, got ? j.state_name : "unknown", id);
    if (got) llmq_job_free(&j);
    return 1;
}

static int do_stream(llmq_client *c, const char *verb, const char *id, long long from, int timeout_ms,
                     int64_t deadline_ms) {
    llmq_err err;
    print_state ps = {.deadline_ms = deadline_ms, .next = from};
    if (follow(c, id, timeout_ms, print_chunk, &ps, &err) != LLMQ_OK) {
        fprintf(stderr, "llmq %s: %s\n", verb, err.msg);
        return 1;
    }
    if (ps.expired) {
        putchar('\n');
        return -1;
    }
    return ps.failed;
}

int cmd_submit(int argc, char **argv) {
    queue_opts o;
    int rc = parse(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    llmq_client *c = connect_or_say(&o, "submit");
    if (!c) return 1;
    proto_request r;
    proto_request_init(&r);
    r.model = (char *)o.model;
    r.kind = PROTO_PROMPT_TEXT;
    r.prompt = (char *)o.prompt;
    r.max_tokens = o.max_tokens;
    r.temperature = o.temperature;
    r.has_seed = o.has_seed;
    r.seed = o.seed;
    r.priority = o.priority;
    char id[LLMQ_ID_MAX];
    llmq_err err;
    if (proto_request_validate(&r, &err) != LLMQ_OK) { /* a bad request first, whatever the model */
        fprintf(stderr, "llmq submit: %s\n", err.msg);
        llmq_close(c);
        return 1;
    }
    if (!o.force) { /* a model nobody serves would wait in its stream forever */
        int workers = 0, ctx = 0;
        if (llmq_model_workers(c, o.model, &workers, &ctx, &err) != LLMQ_OK) {
            fprintf(stderr, "llmq submit: %s\n", err.msg);
            llmq_close(c);
            return 1;
        }
        if (!workers) {
            fprintf(stderr, "llmq submit: no live worker serves model '%s' (no heartbeat names it); check the "
                            "name, or pass --force to queue the job anyway (a model that scales from zero)\n",
                    o.model);
            llmq_close(c);
            return 1;
        }
        if (ctx > 0 && o.max_tokens != PROTO_UNSET && o.max_tokens > ctx) {
            fprintf(stderr, "llmq submit: --max-tokens %d is past the context of model '%s' (%d tokens, prompt "
                            "and completion together)\n", o.max_tokens, o.model, ctx);
            llmq_close(c);
            return 1;
        }
    }
    const int64_t deadline_ms = o.timeout_s > 0 ? wall_ms() + (int64_t)(o.timeout_s * 1000) : 0;
    if (llmq_submit(c, &r, id, sizeof id, &err) != LLMQ_OK) {
        fprintf(stderr, "llmq submit: %s\n", err.msg);
        llmq_close(c);
        return 1;
    }
    if (o.stream) {
        fprintf(stderr, "job %s\n", id);
        rc = do_stream(c, "submit", id, 0, 0, deadline_ms);
        if (rc < 0) rc = say_expired(c, id, o.timeout_s);
    } else if (o.wait) {
        print_state ps = {.deadline_ms = deadline_ms};
        llmq_job j;
        if (follow(c, id, 0, wait_chunk, &ps, &err) != LLMQ_OK) {
            fprintf(stderr, "llmq submit: %s\n", err.msg);
            rc = 1;
        } else if (ps.expired) {
            rc = say_expired(c, id, o.timeout_s);
        } else if (llmq_get(c, id, &j, &err) != LLMQ_OK) {
            fprintf(stderr, "llmq submit: %s\n", err.msg);
            rc = 1;
        } else {
            rc = print_job(id, &j);
            llmq_job_free(&j);
        }
    } else {
        puts(id);
    }
    llmq_close(c);
    return rc;
}

int cmd_get(int argc, char **argv) {
    queue_opts o;
    int rc = parse(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    llmq_client *c = connect_or_say(&o, "get");
    if (!c) return 1;
    llmq_job j;
    llmq_err err;
    if (llmq_get(c, o.id, &j, &err) != LLMQ_OK) {
        fprintf(stderr, "llmq get: %s\n", err.msg);
        rc = 1;
    } else {
        rc = print_job(o.id, &j);
        llmq_job_free(&j);
    }
    llmq_close(c);
    return rc;
}

int cmd_stream(int argc, char **argv) {
    queue_opts o;
    int rc = parse(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    llmq_client *c = connect_or_say(&o, "stream");
    if (!c) return 1;
    rc = do_stream(c, "stream", o.id, o.from, o.timeout_ms, 0);
    llmq_close(c);
    return rc;
}

int cmd_cancel(int argc, char **argv) {
    queue_opts o;
    int rc = parse(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    llmq_client *c = connect_or_say(&o, "cancel");
    if (!c) return 1;
    llmq_cancel_result res;
    llmq_err err;
    if (llmq_cancel(c, o.id, &res, &err) != LLMQ_OK) {
        fprintf(stderr, "llmq cancel: %s\n", err.msg);
        rc = 1;
    } else {
        static const char *what[] = {"not found", "cancelling", "cancelled", "already finished"};
        printf("%s %s\n", o.id, what[res <= LLMQ_CANCEL_TOO_LATE ? res : 0]);
        rc = res == LLMQ_CANCEL_NOT_FOUND;
    }
    llmq_close(c);
    return rc;
}
