/*
 * health.c — what the worker tells the outside about itself: the heartbeat
 * in <prefix>workers, the Prometheus metrics, and what the /metrics,
 * /readyz listener of --metrics-port (metrics_http.h, its own thread)
 * answers with: the loop renders the metrics text for it at most every
 * HEALTH_SNAPSHOT_MS, and at once when a job ends.
 *
 * The metrics carry vLLM's names after our `llmq:` prefix, with vLLM's
 * meanings, and a model_name label on every series (docs/operations.md,
 * "Metrics").  Request times start at arrival, the time in the job's
 * request-stream entry id (when it was submitted), so TTFT and E2E include
 * the time in the queue.  num_requests_waiting adds the model's Redis
 * backlog (the consumer-group lag of every lane's request stream, read
 * every HEALTH_BACKLOG_MS) to the sequences waiting here.
 */
#include "worker/service/service_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/heartbeat.h"
#include "common/log.h"
#include "worker/service/metrics_http.h"

enum {
    HEALTH_SNAPSHOT_MS = 100, /* the loop renders the metrics at most this often, unless forced */
    HEALTH_BACKLOG_MS = 2000, /* the request streams' lag is read this often (the heartbeat's period) */
};

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

llmq_status svc_health_start(service *sv, llmq_err *err) {
    const char *addr = sv->o.metrics_addr && *sv->o.metrics_addr ? sv->o.metrics_addr : SERVICE_METRICS_ADDR;
    sv->hs = metrics_http_create(addr, sv->o.metrics_port, err);
    if (!sv->hs) return err->code;
    metrics_http_set_ready(sv->hs, sv->rc && !sv->rc->err);
    svc_health_snapshot(sv, 1);
    log_info("metrics on http://%s%s%s:%d/metrics", strchr(addr, ':') ? "[" : "", addr, strchr(addr, ':') ? "]" : "",
             sv->o.metrics_port);
    return LLMQ_OK;
}

void svc_health_stop(service *sv) {
    metrics_http_destroy(sv->hs);
    sv->hs = NULL;
}

void svc_health_ready(service *sv, int ready) {
    if (sv->hs) metrics_http_set_ready(sv->hs, ready);
}

/* Ask for the lag of the model's request streams, pipelined: the replies
 * come back at the loop's next flush (svc_health_backlog_reply).  A round
 * whose replies were lost (a reconnect) is simply replaced by the next.
 * Only with a listener: nobody else reads the figure. */
static void backlog_ask(service *sv) {
    int64_t t = mono_ms();
    if (sv->last_backlog_ms && t - sv->last_backlog_ms < HEALTH_BACKLOG_MS) return;
    sv->last_backlog_ms = t;
    sv->backlog_sum = 0;
    sv->backlog_left = 0;
    sv->backlog_admitted_ask = metric_value(sv->m_queue); /* admissions so far (the queue-time count) */
    for (int lane = 0; lane < KEYS_LANES; lane++) { /* every priority lane's stream: the round sums them */
        rcmd c;
        rcmd_init(&c);
        rcmd_str(&c, "XINFO");
        rcmd_str(&c, "GROUPS");
        rcmd_str(&c, sv->lane_keys[lane]);
        if (!svc_pipe_add_tagged(sv, &c, TAG_BACKLOG, NULL)) sv->backlog_left++;
    }
}

/* XINFO GROUPS of one stream: the `lag` of the workers group (Redis 7:
 * entries the group has not been handed yet).  nil (Redis cannot tell,
 * after deletions inside the range) and errors count as 0. */
void svc_health_backlog_reply(service *sv, const redisReply *r) {
    if (sv->backlog_left <= 0) return; /* a round given up on */
    for (size_t g = 0; r->type == REDIS_REPLY_ARRAY && g < r->elements; g++) {
        const redisReply *e = r->element[g];
        int ours = 0;
        long long lag = 0;
        for (size_t k = 0; e->type == REDIS_REPLY_ARRAY && k + 1 < e->elements; k += 2) {
            const redisReply *key = e->element[k], *val = e->element[k + 1];
            if (key->type != REDIS_REPLY_STRING) continue;
            if (!strcmp(key->str, "name")) ours = val->type == REDIS_REPLY_STRING && !strcmp(val->str, PROTO_GROUP);
            else if (!strcmp(key->str, "lag") && val->type == REDIS_REPLY_INTEGER) lag = val->integer;
        }
        if (ours && lag > 0) sv->backlog_sum += lag;
    }
    if (--sv->backlog_left == 0) {
        sv->backlog = sv->backlog_sum;
        sv->backlog_admitted = sv->backlog_admitted_ask;
    }
}

void svc_health_snapshot(service *sv, int force) {
    if (!sv->hs || !sv->mx) return;
    if (sv->rc) backlog_ask(sv);
    int64_t t = mono_ms();
    if (!force && t - sv->last_snapshot_ms < HEALTH_SNAPSHOT_MS) return;
    sv->last_snapshot_ms = t;
    const int total = sched_total_blocks(sv->rt->sch), free_blocks = sched_free_blocks(sv->rt->sch);
    metric_set(sv->m_running, sched_n_running(sv->rt->sch));
    /* between two reads, the entries this worker took since the last ask
     * have left the backlog (other workers' are seen at the next read) */
    const double backlog = (double)sv->backlog - (metric_value(sv->m_queue) - sv->backlog_admitted);
    metric_set(sv->m_waiting, (double)sched_n_waiting(sv->rt->sch) + (backlog > 0 ? backlog : 0));
    metric_set(sv->m_kv_free, free_blocks);
    metric_set(sv->m_kv_used, total - free_blocks);
    metric_set(sv->m_kv_usage, total > 0 ? (double)(total - free_blocks) / total : 0);
    sched_cache_stats cs;
    sched_cache_stats_get(sv->rt->sch, &cs);
    const uint64_t dq = cs.queries - sv->pc_queries_seen, dh = cs.hits - sv->pc_hits_seen;
    metric_inc(sv->m_pc_queries, (double)dq);
    metric_inc(sv->m_pc_hits, (double)dh);
    metric_inc(sv->m_pt_cached, (double)dh);
    metric_inc(sv->m_pt_computed, (double)(dq - dh));
    metric_set(sv->m_kv_cached, cs.cached_blocks);
    sv->pc_queries_seen = cs.queries;
    sv->pc_hits_seen = cs.hits;
    metric_inc(sv->m_pc_pre_queries, (double)(cs.preempted_queries - sv->pc_pre_queries_seen));
    metric_inc(sv->m_pc_pre_hits, (double)(cs.preempted_hits - sv->pc_pre_hits_seen));
    sv->pc_pre_queries_seen = cs.preempted_queries;
    sv->pc_pre_hits_seen = cs.preempted_hits;
    size_t len = 0;
    char *text = metrics_render(sv->mx, &len);
    if (text) metrics_http_set_text(sv->hs, text, len); /* out of memory: the previous text stays */
}

/* ------------------------------------------------------------ heartbeat, metrics */

void svc_heartbeat(service *sv) {
    int64_t t = now_ms();
    if (t - sv->last_heartbeat_ms < HB_INTERVAL_MS) return;
    sv->last_heartbeat_ms = t;
    /* max_model_len: the context admission holds a sequence to (prompt +
     * completion), so the gateway can refuse a max_tokens past it with a 400 */
    hb_info hb = {.capacity = sv->o.max_num_seqs,
                  .running = sched_n_running(sv->rt->sch),
                  .waiting = sched_n_waiting(sv->rt->sch),
                  .kv_free = sched_free_blocks(sv->rt->sch),
                  .kv_total = sched_total_blocks(sv->rt->sch),
                  .max_model_len = sv->rt->m->cfg.max_position_embeddings,
                  .ts_ms = t};
    snprintf(hb.model, sizeof hb.model, "%s", sv->o.model_name);
    snprintf(hb.consumer, sizeof hb.consumer, "%s", sv->o.consumer);
    char v[1024];
    if (hb_format(&hb, v, sizeof v) < 0) {
        log_warn("heartbeat: cannot format it (consumer name not UTF-8?)");
        return;
    }
    rcmd c;
    rcmd_init(&c);
    rcmd_str(&c, "HSET");
    rcmd_str(&c, sv->workers_key);
    rcmd_str(&c, sv->o.consumer);
    rcmd_str(&c, v);
    svc_pipe_add(sv, &c);
}

/* Seconds from a to b (Unix ms); never below 0 (a may be Redis' clock). */
static double span_s(int64_t a, int64_t b) { return b > a ? (double)(b - a) / 1e3 : 0; }

void svc_metrics_job_end(service *sv, const job *j) {
    const int64_t t = now_ms(), arrival = svc_job_arrival_ms(j);
    const int n_gen = j->s.tokens ? seq_n_generated(&j->s) : 0;
    metric_observe(sv->m_e2e, span_s(arrival, t));
    metric_observe(sv->m_req_prompt, j->s.n_prompt);
    metric_observe(sv->m_req_gen, n_gen);
    if (!j->admitted_ms) return; /* never ran here: no inference phases */
    const int64_t last = j->last_token_ms ? j->last_token_ms : t;
    metric_observe(sv->m_inference, span_s(j->admitted_ms, last));
    if (!j->first_token_ms) return;
    metric_observe(sv->m_prefill, span_s(j->admitted_ms, j->first_token_ms));
    metric_observe(sv->m_decode, span_s(j->first_token_ms, last));
    /* tokens of this attempt after its first: a resumed job's earlier ones ran elsewhere */
    if (j->n_tokens_here > 1) metric_observe(sv->m_tpot, span_s(j->first_token_ms, last) / (j->n_tokens_here - 1));
}

/* Names: vLLM's (docs/usage/metrics of vLLM) after our prefix, with its
 * meanings; llmq's own (kv_blocks_*, step_seconds, batch_size) beside them.
 * Every series has model_name, so one dashboard serves every model. */
void svc_metrics_init(service *sv) {
    static const double step[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
    /* request times include the queue: up to half an hour */
    static const double req[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                 2.5,   5,     10,   30,    60,   120, 300,  600, 1800};
    static const double tok_lat[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15,
                                     0.2,   0.3,    0.4,   0.5,  0.75,  1,    2.5,   5,   10};
    static const double sizes[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048};
    static const double tokens[] = {1,    2,    5,    10,    20,    50,    100,   200,
                                    500,  1000, 2000, 5000,  10000, 20000, 50000, 100000};
#define N(a) (sizeof(a) / sizeof((a)[0]))
    metrics *m = sv->mx = metrics_create();
    if (!m) return;
    const char *mn = sv->o.model_name, *L = "model_name";
    sv->m_running = metric_get(metrics_gauge(m, "llmq:num_requests_running", "Sequences in the running batch.", L), mn);
    sv->m_waiting = metric_get(metrics_gauge(m, "llmq:num_requests_waiting",
                                             "Requests waiting: sequences admitted here and waiting for KV blocks, plus "
                                             "the model's requests still in Redis (request-stream lag, every 2 s).", L),
                               mn);
    sv->m_kv_usage = metric_get(metrics_gauge(m, "llmq:kv_cache_usage_perc", "KV cache usage: 1 means 100 percent.", L), mn);
    sv->m_kv_used = metric_get(metrics_gauge(m, "llmq:kv_blocks_used", "KV cache blocks in use.", L), mn);
    sv->m_kv_free = metric_get(metrics_gauge(m, "llmq:kv_blocks_free", "KV cache blocks free.", L), mn);
    sv->m_prompt_tok = metric_get(metrics_counter(m, "llmq:prompt_tokens_total", "Prompt tokens admitted.", L), mn);
    sv->m_gen_tok = metric_get(metrics_counter(m, "llmq:generation_tokens_total", "Tokens generated.", L), mn);
    sv->m_preempt = metric_get(metrics_counter(m, "llmq:num_preemptions_total", "Sequences preempted.", L), mn);
    /* prefix cache: hit rate = hits / queries; in prompt tokens of requests at their first start here */
    sv->m_pc_queries = metric_get(metrics_counter(m, "llmq:prefix_cache_queries_total",
                                                  "Prefix cache queries, in prompt tokens looked up.", L), mn);
    sv->m_pc_hits = metric_get(metrics_counter(m, "llmq:prefix_cache_hits_total",
                                               "Prefix cache hits, in prompt tokens found cached.", L), mn);
    sv->m_pt_cached = metric_get(metrics_counter(m, "llmq:prompt_tokens_cached_total",
                                                 "Prompt tokens whose KV came from the prefix cache.", L), mn);
    sv->m_pt_computed = metric_get(metrics_counter(m, "llmq:prompt_tokens_computed_total",
                                                   "Prompt tokens computed (not found in the prefix cache).", L), mn);
    /* vLLM keeps a preempted request's new lookup apart (PrefixCacheStats.preempted_*): so do we */
    sv->m_pc_pre_queries = metric_get(
        metrics_counter(m, "llmq:prefix_cache_preempted_queries_total",
                        "Prefix cache queries of sequences restarted after preemption, in tokens to recompute.", L),
        mn);
    sv->m_pc_pre_hits = metric_get(
        metrics_counter(m, "llmq:prefix_cache_preempted_hits_total",
                        "Prefix cache hits of sequences restarted after preemption, in tokens found cached.", L),
        mn);
    /* prefix affinity, in request entries (zero with --no-affinity) */
    sv->m_aff_parked = metric_get(
        metrics_counter(m, "llmq:affinity_parked_total",
                        "Request entries this group read and parked for the live group that holds their prefix.", L),
        mn);
    sv->m_aff_takeovers = metric_get(
        metrics_counter(m, "llmq:affinity_takeovers_total",
                        "Request entries parked for another group that this group took after --affinity-wait-ms.", L),
        mn);
    sv->m_aff_claimed = metric_get(metrics_counter(m, "llmq:affinity_claimed_total",
                                                   "Request entries other groups parked for this one, taken by it.", L),
                                   mn);
    sv->m_aff_hits = metric_get(
        metrics_counter(m, "llmq:affinity_hits_total", "New request entries whose affinity keys named this group.", L),
        mn);
    sv->m_kv_cached = metric_get(metrics_gauge(m, "llmq:kv_blocks_cached",
                                               "KV blocks findable in the prefix cache (in use or free).", L), mn);
    sv->f_success = metrics_counter(m, "llmq:request_success_total", "Finished requests by finish reason.",
                                    "finished_reason,model_name");
    sv->m_ttft = metric_get(metrics_histogram(m, "llmq:time_to_first_token_seconds",
                                              "Arrival (submission) to first token, queue included.", L, req, N(req)),
                            mn);
    sv->m_itl = metric_get(
        metrics_histogram(m, "llmq:inter_token_latency_seconds", "Time between two tokens of a request.", L, tok_lat,
                          N(tok_lat)),
        mn);
    sv->m_tpot = metric_get(metrics_histogram(m, "llmq:request_time_per_output_token_seconds",
                                              "Per request: decode time over its tokens after the first.", L, tok_lat,
                                              N(tok_lat)),
                            mn);
    sv->m_e2e = metric_get(metrics_histogram(m, "llmq:e2e_request_latency_seconds",
                                             "Arrival (submission) to the end of the request, queue included.", L, req,
                                             N(req)),
                           mn);
    sv->m_queue = metric_get(metrics_histogram(m, "llmq:request_queue_time_seconds",
                                               "Arrival (submission) to admission by a worker.", L, req, N(req)),
                             mn);
    sv->m_inference = metric_get(metrics_histogram(m, "llmq:request_inference_time_seconds",
                                                   "Admission to the last token.", L, req, N(req)),
                                 mn);
    sv->m_prefill = metric_get(
        metrics_histogram(m, "llmq:request_prefill_time_seconds", "Admission to the first token.", L, req, N(req)), mn);
    sv->m_decode = metric_get(
        metrics_histogram(m, "llmq:request_decode_time_seconds", "First token to the last token.", L, req, N(req)), mn);
    sv->m_req_prompt = metric_get(metrics_histogram(m, "llmq:request_prompt_tokens", "Prompt tokens per request.", L,
                                                    tokens, N(tokens)),
                                  mn);
    sv->m_req_gen = metric_get(metrics_histogram(m, "llmq:request_generation_tokens", "Tokens generated per request.",
                                                 L, tokens, N(tokens)),
                               mn);
    sv->m_step = metric_get(metrics_histogram(m, "llmq:step_seconds", "Time of one engine step.", L, step, N(step)), mn);
    sv->m_batch = metric_get(metrics_histogram(m, "llmq:batch_size", "Sequences per step.", L, sizes, N(sizes)), mn);
#undef N
}
