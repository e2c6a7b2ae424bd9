/*
 * health.c — what the worker tells the outside about itself: the heartbeat
 * in <prefix>workers, the Prometheus metrics, and the /metrics, /healthz,
 * /readyz listener of --metrics-port.
 */
#include "worker/service/service_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ------------------------------------------------------------ metrics + heartbeat */

void svc_serve_metrics(service *sv) {
    if (sv->listen_fd < 0) return;
    for (;;) {
        int fd = accept4(sv->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) return;
        char req[1024];
        struct pollfd p = {fd, POLLIN, 0};
        ssize_t n = poll(&p, 1, 100) > 0 ? read(fd, req, sizeof req - 1) : 0;
        req[n > 0 ? n : 0] = '\0';
        char head[256];
        const char *body = "ok\n";
        char *text = NULL;
        size_t blen = 3;
        int code = 200;
        if (!strncmp(req, "GET /metrics", 12)) {
            metric_set(sv->m_running, sched_n_running(sv->sch));
            metric_set(sv->m_waiting, sched_n_waiting(sv->sch));
            metric_set(sv->m_kv_free, sched_free_blocks(sv->sch));
            metric_set(sv->m_kv_used, sched_total_blocks(sv->sch) - sched_free_blocks(sv->sch));
            text = metrics_render(sv->mx, &blen);
            body = text ? text : "";
        } else if (!strncmp(req, "GET /readyz", 11) || !strncmp(req, "GET /healthz", 12)) {
            if (!sv->rc || sv->rc->err) {
                code = 503;
                body = "redis unreachable\n";
                blen = strlen(body);
            }
        } else {
            code = 404;
            body = "not found\n";
            blen = strlen(body);
        }
        int hl = snprintf(head, sizeof head,
                          "HTTP/1.1 %d %s\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %zu\r\n"
                          "Connection: close\r\n\r\n",
                          code, code == 200 ? "OK" : code == 404 ? "Not Found" : "Service Unavailable", blen);
        if (write(fd, head, (size_t)hl) == hl && blen) {
            ssize_t w = write(fd, body, blen);
            (void)w;
        }
        free(text);
        close(fd);
    }
}

void svc_heartbeat(service *sv) {
    int64_t t = now_ms();
    if (t - sv->last_heartbeat_ms < 2000) return;
    sv->last_heartbeat_ms = t;
    char v[512];
    snprintf(v, sizeof v,
             "{\"model\":\"%s\",\"consumer\":\"%s\",\"capacity\":%d,\"running\":%d,\"waiting\":%d,"
             "\"kv_free\":%d,\"kv_total\":%d,\"ts\":%" PRId64 "}",
             sv->o.model_name, sv->o.consumer, sv->o.max_num_seqs, sched_n_running(sv->sch),
             sched_n_waiting(sv->sch), sched_free_blocks(sv->sch), sched_total_blocks(sv->sch), t);
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

int svc_listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 16)) {
        close(fd);
        return -1;
    }
    return fd;
}

