/* sentinel.c — the primary's address from Redis Sentinel (see sentinel.h). */
#include "common/sentinel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "common/rconn.h"

int sentinel_role_is_master(const redisReply *r) {
    return r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 && r->element[0]->type == REDIS_REPLY_STRING &&
           strcmp(r->element[0]->str, "master") == 0;
}

/* Ask one sentinel; 0 and the address in u, or -1 with why[] said. */
static int ask(redis_url *u, const redis_url_node *n, struct timeval tv, char *why, size_t cap) {
    redisContext *c = redisConnectWithTimeout(n->host, n->port, tv);
    if (!c || c->err) {
        snprintf(why, cap, "%s", c ? c->errstr : "out of memory");
        redisFree(c);
        return -1;
    }
    redisSetTimeout(c, tv);
    int rc = -1;
    redisReply *r;
    rcmd a;
    if (rconn_auth_cmd(u, &a)) {
        /* the password is the data nodes'; a sentinel without one refuses
         * AUTH, and then asking it is fine */
        r = redisCommandArgv(c, a.argc, (const char **)a.argv, a.argvlen);
        if (!r) goto io;
        int refused = r->type == REDIS_REPLY_ERROR && !strstr(r->str, "without any password configured") &&
                      !strstr(r->str, "no password is set");
        if (refused) snprintf(why, cap, "AUTH: %s", r->str);
        freeReplyObject(r);
        if (refused) goto out;
    }
    r = redisCommand(c, "SENTINEL get-master-addr-by-name %s", u->master);
    if (!r) goto io;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
        r->element[1]->type == REDIS_REPLY_STRING && r->element[0]->len < sizeof u->host) {
        int port = atoi(r->element[1]->str);
        if (port > 0 && port < 65536) {
            snprintf(u->host, sizeof u->host, "%s", r->element[0]->str);
            u->port = port;
            rc = 0;
        } else {
            snprintf(why, cap, "bad port '%s'", r->element[1]->str);
        }
    } else if (r->type == REDIS_REPLY_ERROR) {
        snprintf(why, cap, "%s", r->str);
    } else {
        snprintf(why, cap, "does not know master '%s'", u->master);
    }
    freeReplyObject(r);
    goto out;
io:
    snprintf(why, cap, "%s", c->errstr[0] ? c->errstr : "connection lost");
out:
    redisFree(c);
    return rc;
}

llmq_status sentinel_locate(redis_url *u, int timeout_ms, llmq_err *err) {
    if (timeout_ms <= 0) timeout_ms = 500;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    char all[1024] = "", why[256];
    size_t o = 0;
    for (int i = 0; i < u->n_sentinels; i++) {
        why[0] = '\0';
        if (ask(u, &u->sentinel[i], tv, why, sizeof why) == 0) return LLMQ_OK;
        if (o < sizeof all)
            o += (size_t)snprintf(all + o, sizeof all - o, "%s%s:%d: %s", i ? "; " : "", u->sentinel[i].host,
                                  u->sentinel[i].port, why);
    }
    return llmq_err_set(err, LLMQ_ERR_IO, "no sentinel names the primary of '%s' (%s)", u->master, all);
}
