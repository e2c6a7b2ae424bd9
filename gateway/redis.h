/*
 * redis.h — the gateway's two Redis connections on the libev loop (hiredis
 * async API + adapters/libev.h), each reconnecting with exponential backoff:
 *
 *   cmd   every command (submissions, reads, XRANGE catch-ups, cancels)
 *   sub   pub/sub only: the output channels of the jobs being streamed
 *
 * Invariants
 *  - Every command sent with gw_redis_send gets its callback exactly once:
 *    with the reply, or with NULL when the connection is lost or closed.
 *    gw_redis_send returns -1 (and calls nothing) while cmd is not ready.
 *  - A context is never freed inside its own callback: hiredis frees it after
 *    the disconnect callback returns; we only forget the pointer there.
 *  - The sub connection always holds one "anchor" subscription nobody
 *    publishes to.  hiredis 0.14 leaves subscribed mode when the count of
 *    subscriptions drops to zero, and a SUBSCRIBE in flight at that moment
 *    would then trip its assertions; with the anchor the count never does.
 *  - Subscription bookkeeping per channel (not subscribing a channel whose
 *    UNSUBSCRIBE is still in flight) is the caller's job: see jobwatch.c.
 *  - A Redis that stops answering (paused, hung, a network path that drops
 *    packets without a reset) is treated as lost: a watchdog PINGs on cmd
 *    every second, and a PING unanswered, or a connection not ready, after
 *    GW_REDIS_TIMEOUT seconds closes both connections (callbacks get NULL)
 *    and reconnects.  hiredis' async API has no timeouts of its own, so
 *    without it requests would hang and /readyz would never answer.
 *  - redis-sentinel:// URLs: every connect asks the sentinels for the
 *    primary (common/sentinel.h, blocking for at most ~200 ms per sentinel)
 *    and checks ROLE first; the watchdog asks ROLE instead of PING, so a
 *    demoted primary is left within a second; reconnect backoff caps at
 *    0.5 s so that a failover is followed quickly.
 */
#ifndef LLMQ_GW_REDIS_H
#define LLMQ_GW_REDIS_H

#include <ev.h>
#include <hiredis/async.h>

#include "common/keys.h"
#include "common/rcmd.h"
#include "common/url.h"

#define GW_REDIS_TIMEOUT 5.0   /* s without an answer before a connection counts as lost */

typedef struct gw_redis_events {
    void *ud;
    void (*cmd_up)(void *ud);                      /* cmd is ready (after AUTH/SELECT) */
    void (*cmd_down)(void *ud);                    /* cmd was lost */
    void (*sub_up)(void *ud);                      /* sub is ready: (re)subscribe now */
    void (*sub_down)(void *ud);                    /* sub was lost: every subscription is gone */
    void (*sub_reply)(void *ud, redisReply *r);    /* subscribe / unsubscribe / message arrays */
} gw_redis_events;

typedef struct gw_redis {
    struct ev_loop *loop;
    redis_url url;
    char anchor[KEYS_MAX];          /* channel held subscribed on sub at all times */
    char label[24];                 /* what its log lines begin with: "redis", or "redis <tag>"
                                     * for one of several instances (gw.h "instances") */
    gw_redis_events ev;
    redisAsyncContext *cmd;         /* NULL while disconnected */
    redisAsyncContext *sub;         /* NULL while disconnected */
    int cmd_ready;                  /* AUTH/SELECT done, commands may be sent */
    int sub_ready;                  /* anchor subscription confirmed */
    ev_timer cmd_retry, sub_retry;  /* reconnect timers */
    ev_timer watchdog;              /* every 1 s: PING on cmd, time out silent connections */
    double cmd_since, sub_since;    /* ev_now when the current connection attempt began */
    double ping_sent;               /* ev_now of the watchdog PING in flight, 0 = none */
    double stop_at;                 /* ev_now of gw_redis_stop: closing waits at most GW_REDIS_TIMEOUT */
    double cmd_backoff, sub_backoff;/* next reconnect delay, s (0.1 .. 5) */
    int stopping;                   /* gw_redis_stop called: no reconnects */
    int demoted;                    /* the watchdog's ROLE said not master: drop both at the next tick */
    unsigned long reconnects;       /* connection attempts after the first */
} gw_redis;

void gw_redis_init(gw_redis *r, struct ev_loop *loop, const redis_url *url, const char *anchor,
                   const gw_redis_events *ev);
void gw_redis_start(gw_redis *r);
/* Close both connections (pending callbacks get NULL), no reconnect.
 * Replies still due are awaited for at most GW_REDIS_TIMEOUT seconds. */
void gw_redis_stop(gw_redis *r);

/* Send c on cmd.  0 when queued (cb will be called), -1 when cmd is down. */
int gw_redis_send(gw_redis *r, const rcmd *c, redisCallbackFn *cb, void *priv);
/* SUBSCRIBE / UNSUBSCRIBE one channel on sub; -1 when sub is down. */
int gw_redis_subscribe(gw_redis *r, const char *channel);
int gw_redis_unsubscribe(gw_redis *r, const char *channel);

#endif
