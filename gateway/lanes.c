/*
 * lanes.c — llmq_queue_lag{model_name, lane}: the requests waiting in each
 * priority lane of each served model (see lanes.h).
 *
 * Every GW_LANES_READ_S the timer sends one XINFO GROUPS per model and lane
 * on the command connection; each reply sets its series.  A stream that
 * does not exist yet waits for nothing (0).  A lag Redis cannot compute
 * (nil, after deletions inside the unread range) leaves the last value.
 * One gateway per process, so the reader's state is this file's.
 */
#include "gateway/lanes.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"

typedef struct gw_lanes {
    gw *g;
    ev_timer w;                  /* every GW_LANES_READ_S, unref'd: it does not hold the loop */
    metric_family *lag;          /* llmq_queue_lag{model_name, lane} */
} gw_lanes;

static gw_lanes lanes_state;

/* The reply of XINFO GROUPS of one lane; priv: the series it sets. */
static void on_groups(redisAsyncContext *ac, void *reply, void *priv) {
    metric *m = priv;
    const redisReply *r = reply;
    if (!r) return; /* connection lost: the next read sets it */
    if (r->type == REDIS_REPLY_ERROR) {
        if (strstr(r->str, "no such key")) metric_set(m, 0);
        return;
    }
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const redisReply *g = r->element[i];
        int ours = 0;
        const redisReply *lag = NULL;
        for (size_t k = 0; g->type == REDIS_REPLY_ARRAY && k + 1 < g->elements; k += 2) {
            const redisReply *key = g->element[k], *val = g->element[k + 1];
            if (key->type != REDIS_REPLY_STRING) continue;
            if (!strcmp(key->str, "name")) ours = val->type == REDIS_REPLY_STRING && !strcmp(val->str, PROTO_GROUP);
            else if (!strcmp(key->str, "lag")) lag = val;
        }
        if (ours && lag && lag->type == REDIS_REPLY_INTEGER) metric_set(m, (double)lag->integer);
    }
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents) {
    gw_lanes *l = &lanes_state;
    gw *g = l->g;
    if (g->shutting_down) return;
    for (size_t i = 0; i < g->n_models; i++)
        for (int lane = 0; lane < KEYS_LANES && g->inst[g->models[i].inst].redis.cmd_ready; lane++) {
            metric *m = metric_get(l->lag, g->models[i].name, keys_lane_name(lane));
            if (!m) continue; /* out of memory: this series is not shown */
            char key[KEYS_MAX];
            keys_req_lane(&g->keys, g->models[i].name, lane, key, sizeof key);
            rcmd c;
            rcmd_init(&c);
            rcmd_str(&c, "XINFO");
            rcmd_str(&c, "GROUPS");
            rcmd_str(&c, key);
            if (gw_redis_send(&g->inst[g->models[i].inst].redis, &c, on_groups, m)) break; /* down: the next tick */
        }
}

void gw_lanes_start(gw *g) {
    gw_lanes *l = &lanes_state;
    l->g = g;
    l->lag = metrics_gauge(g->reg, "llmq_queue_lag",
                           "Requests waiting in a model's priority lane that no worker has read yet "
                           "(the consumer group's lag on the lane's stream).",
                           "model_name,lane");
    ev_timer_init(&l->w, on_timer, 0.2, GW_LANES_READ_S);
    ev_timer_start(g->loop, &l->w);
    ev_unref(g->loop); /* the gateway stops when its other watchers do */
}
