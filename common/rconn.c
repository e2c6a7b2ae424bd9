/* rconn.c — blocking Redis connections from a URL (see rconn.h). */
#include "common/rconn.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "common/sentinel.h"

#define SENTINEL_TIMEOUT_MS 300 /* per sentinel: a dead one must not hold a reconnect long */

int rconn_auth_cmd(const redis_url *u, rcmd *c) {
    if (!u->password[0]) return 0;
    rcmd_init(c);
    rcmd_str(c, "AUTH");
    if (u->user[0]) rcmd_str(c, u->user);
    rcmd_str(c, u->password);
    return 1;
}

redisReply *rconn_call(redisContext *ctx, const rcmd *c, llmq_err *err) {
    if (!rcmd_ok(c)) {
        llmq_err_set(err, LLMQ_ERR_INTERNAL, "redis command too large to build");
        return NULL;
    }
    redisReply *r = redisCommandArgv(ctx, c->argc, (const char **)c->argv, c->argvlen);
    if (!r) {
        llmq_err_set(err, LLMQ_ERR_IO, "redis: %s", ctx->errstr[0] ? ctx->errstr : "connection lost");
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        /* a replica (a primary demoted by a failover): the connection is
         * useless, so callers reconnect, through the sentinels */
        int readonly = strncmp(r->str, "READONLY", 8) == 0;
        llmq_err_set(err, readonly ? LLMQ_ERR_IO : LLMQ_ERR_REDIS, "redis %.*s: %s", (int)c->argvlen[0], c->argv[0], r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

redisContext *rconn_connect(const redis_url *url, int timeout_ms, llmq_err *err) {
    redis_url located = *url;
    const redis_url *u = &located;
    if (url->n_sentinels && sentinel_locate(&located, SENTINEL_TIMEOUT_MS, err) != LLMQ_OK) return NULL;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    if (timeout_ms <= 0) tv = (struct timeval){5, 0};
    redisContext *ctx = u->is_unix ? redisConnectUnixWithTimeout(u->path, tv)
                                   : redisConnectWithTimeout(u->host, u->port, tv);
    char where[600];
    redis_url_describe(u, where, sizeof where);
    if (u->n_sentinels) { /* name the primary found, not the sentinels */
        int v6 = strchr(u->host, ':') != NULL;
        snprintf(where, sizeof where, "the primary %s%.255s%s:%d of '%.127s'", v6 ? "[" : "", u->host, v6 ? "]" : "",
                 u->port, u->master);
    }
    if (!ctx || ctx->err) {
        llmq_err_set(err, LLMQ_ERR_IO, "cannot connect to %s: %s", where, ctx ? ctx->errstr : "out of memory");
        redisFree(ctx);
        return NULL;
    }
    if (timeout_ms > 0) redisSetTimeout(ctx, tv);
    rcmd c;
    redisReply *r;
    if (rconn_auth_cmd(u, &c)) {
        if (!(r = rconn_call(ctx, &c, err))) goto fail;
        freeReplyObject(r);
    }
    if (u->db) {
        rcmd_init(&c);
        rcmd_str(&c, "SELECT");
        rcmd_fmt(&c, "%d", u->db);
        if (!(r = rconn_call(ctx, &c, err))) goto fail;
        freeReplyObject(r);
    }
    if (u->n_sentinels) { /* the sentinels may lag: never write to a replica */
        rcmd_init(&c);
        rcmd_str(&c, "ROLE");
        if (!(r = rconn_call(ctx, &c, err))) goto fail;
        int master = sentinel_role_is_master(r);
        freeReplyObject(r);
        if (!master) {
            llmq_err_set(err, LLMQ_ERR_IO, "not the primary (ROLE is not master): the failover is under way");
            goto fail;
        }
    }
    return ctx;
fail:
    llmq_err_prefix(err, "%s: ", where);
    redisFree(ctx);
    return NULL;
}
