/*
 * health.c — what the worker tells the outside about itself: the heartbeat
 * in <prefix>workers, the Prometheus metrics, and what the /metrics,
 * /readyz listener of --metrics-port (metrics_http.h, its own thread)
 * answers with: the loop renders the metrics text for it at most every
 * HEALTH_SNAPSHOT_MS, and at once when a job ends.
 */
#include "worker/service/service_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "worker/service/metrics_http.h"

enum { HEALTH_SNAPSHOT_MS = 100 }; /* the loop renders the metrics at most this often, unless forced */

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

void svc_health_snapshot(service *sv, int force) {
    if (!sv->hs || !sv->mx) return;
    int64_t t = mono_ms();
    if (!force && t - sv->last_snapshot_ms < HEALTH_SNAPSHOT_MS) return;
    sv->last_snapshot_ms = t;
    metric_set(sv->m_running, sched_n_running(sv->rt->sch));
    metric_set(sv->m_waiting, sched_n_waiting(sv->rt->sch));
    metric_set(sv->m_kv_free, sched_free_blocks(sv->rt->sch));
    metric_set(sv->m_kv_used, sched_total_blocks(sv->rt->sch) - sched_free_blocks(sv->rt->sch));
    size_t len = 0;
    char *text = metrics_render(sv->mx, &len);
    if (text) metrics_http_set_text(sv->hs, text, len); /* out of memory: the previous text stays */
}

/* ------------------------------------------------------------ heartbeat, metrics */

void svc_heartbeat(service *sv) {
    int64_t t = now_ms();
    if (t - sv->last_heartbeat_ms < 2000) return;
    sv->last_heartbeat_ms = t;
    char v[512];
    snprintf(v, sizeof v,
             "{\"model\":\"%s\",\"consumer\":\"%s\",\"capacity\":%d,\"running\":%d,\"waiting\":%d,"
             "\"kv_free\":%d,\"kv_total\":%d,\"ts\":%" PRId64 "}",
             sv->o.model_name, sv->o.consumer, sv->o.max_num_seqs, sched_n_running(sv->rt->sch),
             sched_n_waiting(sv->rt->sch), sched_free_blocks(sv->rt->sch), sched_total_blocks(sv->rt->sch), t);
    rcmd c;
    rcmd_init(&c);
    rcmd_str(&c, "HSET");
    rcmd_str(&c, sv->workers_key);
    rcmd_str(&c, sv->o.consumer);
    rcmd_str(&c, v);
    svc_pipe_add(sv, &c);
}

void svc_metrics_init(service *sv) {
    static const double lat[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
    static const double sizes[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048};
    metrics *m = sv->mx = metrics_create();
    if (!m) return;
    sv->m_running = metric_get(metrics_gauge(m, "llmq:num_requests_running", "Sequences in the running batch", NULL));
    sv->m_waiting = metric_get(metrics_gauge(m, "llmq:num_requests_waiting", "Sequences admitted, waiting for KV blocks", NULL));
    sv->m_kv_used = metric_get(metrics_gauge(m, "llmq:kv_blocks_used", "KV cache blocks in use", NULL));
    sv->m_kv_free = metric_get(metrics_gauge(m, "llmq:kv_blocks_free", "KV cache blocks free", NULL));
    sv->m_prompt_tok = metric_get(metrics_counter(m, "llmq:prompt_tokens_total", "Prompt tokens admitted", NULL));
    sv->m_gen_tok = metric_get(metrics_counter(m, "llmq:generation_tokens_total", "Tokens generated", NULL));
    sv->m_preempt = metric_get(metrics_counter(m, "llmq:num_preemptions_total", "Sequences preempted", NULL));
    sv->f_success = metrics_counter(m, "llmq:request_success_total", "Finished jobs by finish reason", "finished_reason");
    sv->m_step = metric_get(metrics_histogram(m, "llmq:step_seconds", "Time of one engine step", NULL, lat, 14));
    sv->m_batch = metric_get(metrics_histogram(m, "llmq:batch_size", "Sequences per step", NULL, sizes, 12));
    sv->m_ttft = metric_get(metrics_histogram(m, "llmq:time_to_first_token_seconds", "Admission to first token", NULL, lat, 14));
    sv->m_itl = metric_get(metrics_histogram(m, "llmq:inter_token_latency_seconds", "Time between tokens", NULL, lat, 14));
    sv->m_queue = metric_get(metrics_histogram(m, "llmq:request_queue_time_seconds", "Submission to admission", NULL, lat, 14));
}

