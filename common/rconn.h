/*
 * rconn.h — a blocking hiredis connection made from a redis_url: connect
 * with a timeout, AUTH (ACL user or legacy password) and SELECT.  Used by
 * libllmq and the worker; the gateway uses hiredis' async API instead but
 * sends the same AUTH/SELECT (see rconn_auth_cmd).
 */
#ifndef LLMQ_RCONN_H
#define LLMQ_RCONN_H

#include <hiredis/hiredis.h>

#include "common/rcmd.h"
#include "common/status.h"
#include "common/url.h"

/*
 * Connect, authenticate and select the database.  timeout_ms bounds the
 * connect and then every command (0 = no command timeout).  Returns a
 * context the caller frees with redisFree, or NULL with err set
 * (LLMQ_ERR_IO: unreachable; LLMQ_ERR_REDIS: AUTH/SELECT refused).
 * A redis-sentinel:// URL is resolved here, at every call (sentinel.h), and
 * a server whose ROLE is not master is refused (LLMQ_ERR_IO).
 */
redisContext *rconn_connect(const redis_url *u, int timeout_ms, llmq_err *err);

/* The AUTH command for u (0 when u has no password): AUTH [user] password. */
int rconn_auth_cmd(const redis_url *u, rcmd *c);

/* Send c and return its reply (caller frees with freeReplyObject).  A
 * transport failure or an error reply returns NULL with err set
 * (LLMQ_ERR_IO / LLMQ_ERR_REDIS, the message from Redis).  A READONLY
 * error (a replica, e.g. a primary demoted by a failover) is LLMQ_ERR_IO:
 * the caller must reconnect. */
redisReply *rconn_call(redisContext *ctx, const rcmd *c, llmq_err *err);

#endif
