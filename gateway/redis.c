/*
 * redis.c — the gateway's Redis connections (see redis.h for invariants).
 *
 * Both connections follow the same cycle: connect → AUTH/SELECT queued right
 * away (hiredis buffers them until the socket is up) → a final probe whose
 * reply marks the connection ready → ... → lost (EOF, error, failed connect)
 * → reconnect after a backoff that doubles from 0.1 s to 5 s and resets once
 * a connection is ready again.  The probe is PING on cmd and the anchor
 * SUBSCRIBE on sub.  A watchdog closes connections that stop answering
 * (redis.h).
 */
#include "gateway/redis.h"

#include <hiredis/adapters/libev.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/rconn.h"
#include "common/sentinel.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))
#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 5.0
#define BACKOFF_MAX_SENTINEL 0.5 /* a failover is expected to end within ~1 s: follow it fast */
#define SENTINEL_TIMEOUT_MS 200  /* per sentinel, blocking the loop: only at a (re)connect */

static void connect_cmd(gw_redis *r);
static void connect_sub(gw_redis *r);

static void schedule(gw_redis *r, ev_timer *t, double *backoff) {
    if (r->stopping) return;
    ev_timer_stop(r->loop, t);
    ev_timer_set(t, *backoff, 0.);
    ev_timer_start(r->loop, t);
    const double max = r->url.n_sentinels ? BACKOFF_MAX_SENTINEL : BACKOFF_MAX;
    *backoff = *backoff * 2 > max ? max : *backoff * 2;
}

/* Forget a lost context (hiredis frees it) and plan the reconnect.  Safe to
 * call twice for the same context: only the first call acts. */
static void lost(gw_redis *r, const redisAsyncContext *ac, const char *why) {
    if (ac == r->cmd) {
        int was = r->cmd_ready;
        r->cmd = NULL;
        r->cmd_ready = 0;
        if (was) log_warn("%s: command connection lost (%s)%s", r->label, why, r->stopping ? "" : "; reconnecting");
        else log_debug("%s: command connection failed (%s)", r->label, why);
        schedule(r, &r->cmd_retry, &r->cmd_backoff);
        if (r->ev.cmd_down) r->ev.cmd_down(r->ev.ud);
    } else if (ac == r->sub) {
        int was = r->sub_ready;
        r->sub = NULL;
        r->sub_ready = 0;
        if (was) log_warn("%s: pub/sub connection lost (%s)%s", r->label, why, r->stopping ? "" : "; reconnecting");
        schedule(r, &r->sub_retry, &r->sub_backoff);
        if (r->ev.sub_down) r->ev.sub_down(r->ev.ud);
    }
}

static void on_connect(const redisAsyncContext *ac, int status) {
    gw_redis *r = ac->data;
    if (status != REDIS_OK) lost(r, ac, ac->errstr[0] ? ac->errstr : "connect failed");
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
    gw_redis *r = ac->data;
    lost(r, ac, status == REDIS_OK ? "closed" : (ac->errstr[0] ? ac->errstr : "error"));
}

/* Errors of AUTH/SELECT: log them; the probe that follows fails too. */
static void on_setup_reply(redisAsyncContext *ac, void *reply, void *priv) {
    redisReply *rep = reply;
    if (rep && rep->type == REDIS_REPLY_ERROR)
        log_error("%s: %s: %s", ((gw_redis *)ac->data)->label, (const char *)priv, rep->str);
}

/* ROLE of a sentinel-found primary, the first reply on either connection:
 * one that is no longer master (sentinels lag a failover) is dropped. */
static void on_role(redisAsyncContext *ac, void *reply, void *priv) {
    if (!reply || (ac->c.flags & REDIS_DISCONNECTING)) return;
    if (!sentinel_role_is_master(reply)) {
        log_warn("%s: %s:%d is not the primary (ROLE); asking the sentinels again", ((gw_redis *)ac->data)->label,
                 ac->c.tcp.host, ac->c.tcp.port);
        redisAsyncDisconnect(ac);
    }
}

static redisAsyncContext *open_ctx(gw_redis *r, int select_db) {
    redis_url u = r->url;
    if (u.n_sentinels) {
        /* blocking, but only at a (re)connect, a few hundred ms at most per
         * sentinel; hiredis has no async Sentinel client */
        llmq_err err = {0};
        if (sentinel_locate(&u, SENTINEL_TIMEOUT_MS, &err) != LLMQ_OK) {
            log_warn("%s: %s", r->label, err.msg);
            return NULL;
        }
    }
    redisAsyncContext *ac = u.is_unix ? redisAsyncConnectUnix(u.path) : redisAsyncConnect(u.host, u.port);
    if (!ac) return NULL;
    if (ac->err) {
        log_debug("%s: connect: %s", r->label, ac->errstr);
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = r;
    redisLibevAttach(r->loop, ac);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    rcmd c;
    if (rconn_auth_cmd(&r->url, &c))
        redisAsyncCommandArgv(ac, on_setup_reply, (void *)"AUTH", c.argc, c.argv, c.argvlen);
    if (select_db && r->url.db) {
        rcmd_init(&c);
        rcmd_str(&c, "SELECT");
        rcmd_fmt(&c, "%d", r->url.db);
        redisAsyncCommandArgv(ac, on_setup_reply, (void *)"SELECT", c.argc, c.argv, c.argvlen);
    }
    if (u.n_sentinels) {
        static const char *role[] = {"ROLE"};
        redisAsyncCommandArgv(ac, on_role, NULL, 1, role, NULL);
    }
    return ac;
}

/* ---------------------------------------------------------------- cmd */

static void on_ping(redisAsyncContext *ac, void *reply, void *priv) {
    gw_redis *r = ac->data;
    redisReply *rep = reply;
    if (!rep || ac != r->cmd || (ac->c.flags & REDIS_DISCONNECTING)) return;
    if (rep->type == REDIS_REPLY_ERROR) {
        log_error("%s: not usable: %s", r->label, rep->str);
        redisAsyncDisconnect(ac);
        return;
    }
    r->cmd_ready = 1;
    r->cmd_backoff = BACKOFF_MIN;
    log_info("%s: command connection ready", r->label);
    if (r->ev.cmd_up) r->ev.cmd_up(r->ev.ud);
}

static void connect_cmd(gw_redis *r) {
    if (r->stopping || r->cmd) return;
    r->cmd_since = ev_now(r->loop);
    r->ping_sent = 0;
    r->cmd = open_ctx(r, 1);
    if (!r->cmd) {
        schedule(r, &r->cmd_retry, &r->cmd_backoff);
        return;
    }
    static const char *ping[] = {"PING"};
    redisAsyncCommandArgv(r->cmd, on_ping, NULL, 1, ping, NULL);
}

static void on_cmd_retry(struct ev_loop *loop, ev_timer *w, int revents) {
    gw_redis *r = container_of(w, gw_redis, cmd_retry);
    r->reconnects++;
    connect_cmd(r);
}

/* ---------------------------------------------------------------- sub */

/* The one callback of every subscription on sub (hiredis keys them by
 * channel; they all land here and are told apart by the caller). */
static void on_sub(redisAsyncContext *ac, void *reply, void *priv) {
    gw_redis *r = ac->data;
    redisReply *rep = reply;
    if (!rep || ac != r->sub || (ac->c.flags & REDIS_DISCONNECTING)) return;
    if (rep->type == REDIS_REPLY_ERROR) {
        log_error("%s: pub/sub: %s", r->label, rep->str);
        redisAsyncDisconnect(ac);
        return;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 || rep->element[1]->type != REDIS_REPLY_STRING) return;
    const redisReply *kind = rep->element[0], *ch = rep->element[1];
    if (ch->len == strlen(r->anchor) && memcmp(ch->str, r->anchor, ch->len) == 0) {
        if (kind->len == 9 && !strncasecmp(kind->str, "subscribe", 9) && !r->sub_ready) {
            r->sub_ready = 1;
            r->sub_backoff = BACKOFF_MIN;
            log_info("%s: pub/sub connection ready", r->label);
            if (r->ev.sub_up) r->ev.sub_up(r->ev.ud);
        }
        return;
    }
    if (r->ev.sub_reply) r->ev.sub_reply(r->ev.ud, rep);
}

static void connect_sub(gw_redis *r) {
    if (r->stopping || r->sub) return;
    r->sub_since = ev_now(r->loop);
    r->sub = open_ctx(r, 0);
    if (!r->sub) {
        schedule(r, &r->sub_retry, &r->sub_backoff);
        return;
    }
    const char *argv[2] = {"SUBSCRIBE", r->anchor};
    redisAsyncCommandArgv(r->sub, on_sub, NULL, 2, argv, NULL);
}

static void on_sub_retry(struct ev_loop *loop, ev_timer *w, int revents) {
    gw_redis *r = container_of(w, gw_redis, sub_retry);
    connect_sub(r);
}

/* ---------------------------------------------------------------- watchdog */

static void on_watch_pong(redisAsyncContext *ac, void *reply, void *priv) {
    gw_redis *r = ac->data;
    if (!reply || ac != r->cmd) return;
    r->ping_sent = 0;
    /* with Sentinel the watchdog asks ROLE: a primary demoted while we stay
     * connected (a partition healed) answers "slave"; the next tick drops
     * both connections (not here: never free a context in its callback) */
    if (r->url.n_sentinels && !sentinel_role_is_master(reply)) r->demoted = 1;
}

/* Close ac now, from outside its callbacks: lost() first (it forgets the
 * pointer and plans the reconnect, also for a context that never connected
 * and so gets no disconnect callback), then redisAsyncFree, which calls
 * every pending callback with NULL (and the disconnect callback, a no-op
 * now). */
static void kill_ctx(gw_redis *r, redisAsyncContext *ac, const char *why) {
    if (!ac) return;
    lost(r, ac, why);
    redisAsyncFree(ac);
}

static void on_watchdog(struct ev_loop *loop, ev_timer *w, int revents) {
    gw_redis *r = container_of(w, gw_redis, watchdog);
    const double now = ev_now(loop);
    if (r->stopping) { /* a Redis that hangs must not hold the shutdown */
        if (now - r->stop_at > GW_REDIS_TIMEOUT) {
            kill_ctx(r, r->cmd, "closing: no answer");
            kill_ctx(r, r->sub, "closing: no answer");
        }
        return;
    }
    if (r->demoted) {
        r->demoted = 0;
        log_warn("%s: the primary was demoted (ROLE); dropping both connections, asking the sentinels", r->label);
        kill_ctx(r, r->cmd, "demoted");
        kill_ctx(r, r->sub, "demoted");
        return;
    }
    if (r->cmd && r->cmd_ready && r->ping_sent > 0 && now - r->ping_sent > GW_REDIS_TIMEOUT) {
        log_warn("%s: no answer for %.0f s; dropping both connections and reconnecting", r->label, now - r->ping_sent);
        kill_ctx(r, r->cmd, "no answer");
        kill_ctx(r, r->sub, "no answer");
        return;
    }
    if (r->cmd && !r->cmd_ready && now - r->cmd_since > GW_REDIS_TIMEOUT)
        kill_ctx(r, r->cmd, "connect timed out");
    if (r->sub && !r->sub_ready && now - r->sub_since > GW_REDIS_TIMEOUT)
        kill_ctx(r, r->sub, "connect timed out");
    if (r->cmd && r->cmd_ready && r->ping_sent == 0) {
        static const char *ping[] = {"PING"}, *role[] = {"ROLE"};
        if (redisAsyncCommandArgv(r->cmd, on_watch_pong, NULL, 1, r->url.n_sentinels ? role : ping, NULL) == REDIS_OK)
            r->ping_sent = now;
    }
}

/* ---------------------------------------------------------------- API */

void gw_redis_init(gw_redis *r, struct ev_loop *loop, const redis_url *url, const char *anchor,
                   const gw_redis_events *ev) {
    memset(r, 0, sizeof *r);
    r->loop = loop;
    r->url = *url;
    snprintf(r->anchor, sizeof r->anchor, "%s", anchor);
    snprintf(r->label, sizeof r->label, "redis");
    r->ev = *ev;
    r->cmd_backoff = r->sub_backoff = BACKOFF_MIN;
    ev_init(&r->cmd_retry, on_cmd_retry);
    ev_init(&r->sub_retry, on_sub_retry);
    ev_timer_init(&r->watchdog, on_watchdog, 1., 1.);
}

void gw_redis_start(gw_redis *r) {
    connect_cmd(r);
    connect_sub(r);
    ev_timer_start(r->loop, &r->watchdog);
}

void gw_redis_stop(gw_redis *r) {
    r->stopping = 1;
    r->stop_at = ev_now(r->loop);
    ev_timer_stop(r->loop, &r->cmd_retry);
    ev_timer_stop(r->loop, &r->sub_retry);
    /* the watchdog goes on ticking, but no longer keeps the loop running:
     * ev_run returns as soon as both connections are closed */
    if (ev_is_active(&r->watchdog)) ev_unref(r->loop);
    if (r->cmd) redisAsyncDisconnect(r->cmd); /* replies still pending are delivered first */
    if (r->sub) redisAsyncDisconnect(r->sub);
}

int gw_redis_send(gw_redis *r, const rcmd *c, redisCallbackFn *cb, void *priv) {
    if (!r->cmd || !r->cmd_ready || !rcmd_ok(c)) return -1;
    if (redisAsyncCommandArgv(r->cmd, cb, priv, c->argc, (const char **)c->argv, c->argvlen) != REDIS_OK) return -1;
    return 0;
}

int gw_redis_subscribe(gw_redis *r, const char *channel) {
    if (!r->sub || !r->sub_ready) return -1;
    const char *argv[2] = {"SUBSCRIBE", channel};
    return redisAsyncCommandArgv(r->sub, on_sub, NULL, 2, argv, NULL) == REDIS_OK ? 0 : -1;
}

int gw_redis_unsubscribe(gw_redis *r, const char *channel) {
    if (!r->sub || !r->sub_ready) return -1;
    const char *argv[2] = {"UNSUBSCRIBE", channel};
    return redisAsyncCommandArgv(r->sub, on_sub, NULL, 2, argv, NULL) == REDIS_OK ? 0 : -1;
}
