/*
 * lanes.h — the queue lag of every served model and priority lane, as the
 * gauge llmq_queue_lag{model_name, lane} on the gateway's /metrics.
 *
 * The lag is the consumer group `workers`'s lag on the lane's stream
 * (XINFO GROUPS, Redis 7): requests no worker has read yet.  It is read
 * every GW_LANES_READ_S seconds, so a scrape sees a value at most that old,
 * and an HPA through prometheus-adapter can scale on it as KEDA does on the
 * streams themselves.
 */
#ifndef LLMQ_GW_LANES_H
#define LLMQ_GW_LANES_H

#include "gateway/gw.h"

#define GW_LANES_READ_S 2.0 /* s between two reads of the lags */

/* Register the gauge on g->reg and start reading (once, after the
 * registry exists).  The timer does not keep the loop alive: the gateway
 * stops when its other watchers do. */
void gw_lanes_start(gw *g);

#endif
