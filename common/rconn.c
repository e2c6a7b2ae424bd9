/* rconn.c — blocking Redis connections from a URL (see rconn.h). */
#include "common/rconn.h"

#include <stdio.h>
#include <sys/time.h>

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
        llmq_err_set(err, LLMQ_ERR_REDIS, "redis %.*s: %s", (int)c->argvlen[0], c->argv[0], r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

redisContext *rconn_connect(const redis_url *u, int timeout_ms, llmq_err *err) {
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    if (timeout_ms <= 0) tv = (struct timeval){5, 0};
    redisContext *ctx = u->is_unix ? redisConnectUnixWithTimeout(u->path, tv)
                                   : redisConnectWithTimeout(u->host, u->port, tv);
    char where[600];
    redis_url_describe(u, where, sizeof where);
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
    return ctx;
fail:
    llmq_err_prefix(err, "%s: ", where);
    redisFree(ctx);
    return NULL;
}
