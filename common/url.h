/*
 * url.h — Redis URLs as every llmq binary takes them (--redis URL):
 *
 *   redis://[[user]:password@]host[:port][/db]     TCP, port 6379 and db 0 by default
 *   redis://[user:password@][::1]:6379/2           IPv6 literal in brackets
 *   unix:///path/to/redis.sock[?db=N]              Unix socket
 *
 * user and password may be percent-encoded ("p%40ss" for "p@ss").  An empty
 * host means 127.0.0.1.  rediss:// (TLS) is refused as unsupported.  The
 * parser allocates nothing: the result is plain data, copy it freely.
 */
#ifndef LLMQ_URL_H
#define LLMQ_URL_H

#include "common/status.h"

typedef struct redis_url {
    int is_unix;          /* 1: path is a Unix socket; 0: host:port */
    char host[256];       /* TCP host name or address (no brackets) */
    int port;             /* TCP port, 1..65535 */
    char path[256];       /* Unix socket path */
    char user[128];       /* ACL user name; "" = default user */
    char password[256];   /* "" = no AUTH */
    int db;               /* SELECT index, >= 0 */
} redis_url;

/* Parse url into u.  LLMQ_ERR_INVALID with a message naming the bad part,
 * LLMQ_ERR_UNSUPPORTED for rediss://.  u is fully written either way. */
llmq_status redis_url_parse(redis_url *u, const char *url, llmq_err *err);

/* "redis://host:port/db" or "unix:///path" with the password left out, for
 * logs.  Returns buf. */
const char *redis_url_describe(const redis_url *u, char *buf, size_t cap);

#endif
