/*
 * url.h — Redis URLs as every llmq binary takes them (--redis URL):
 *
 *   redis://[[user]:password@]host[:port][/db]     TCP, port 6379 and db 0 by default
 *   redis://[user:password@][::1]:6379/2           IPv6 literal in brackets
 *   unix:///path/to/redis.sock[?db=N]              Unix socket
 *   redis-sentinel://[[user]:password@]host[:port],host[:port].../master[/db]
 *                                                  Redis Sentinel: the primary
 *       of the set named `master` is asked of these sentinels (port 26379 by
 *       default) at every connect (common/sentinel.h); the password is the
 *       data nodes' and is also sent to sentinels that require one.
 *
 * user and password may be percent-encoded ("p%40ss" for "p@ss").  An empty
 * host means 127.0.0.1.  rediss:// (TLS) is refused as unsupported (Debian's
 * hiredis is built without TLS; see docs/operations.md#security).  The
 * parser allocates nothing: the result is plain data, copy it freely.
 *
 * The password need not be in the URL, where `ps` and logs would show it:
 * redis_url_resolve() takes it, when the URL has none, from the first of
 *
 *   1. the file named with redis_url_set_password_file() (--redis-password-file),
 *   2. the file named by $LLMQ_REDIS_PASSWORD_FILE,
 *   3. $LLMQ_REDIS_PASSWORD.
 *
 * A file holds the password alone; trailing CR/LF are dropped.  An ACL user
 * name still comes from the URL (redis://user@host).  Nothing here ever
 * prints a password: describe() and every error message show "***".
 */
#ifndef LLMQ_URL_H
#define LLMQ_URL_H

#include "common/status.h"

#define REDIS_URL_MAX_SENTINELS 8

typedef struct redis_url_node {
    char host[256];
    int port;
} redis_url_node;

typedef struct redis_url {
    int is_unix;          /* 1: path is a Unix socket; 0: host:port */
    char host[256];       /* TCP host name or address (no brackets) */
    int port;             /* TCP port, 1..65535 */
    char path[256];       /* Unix socket path */
    char user[128];       /* ACL user name; "" = default user */
    char password[256];   /* "" = no AUTH */
    int db;               /* SELECT index, >= 0 */
    int n_sentinels;      /* > 0: redis-sentinel://, host/port come from sentinel_locate() */
    redis_url_node sentinel[REDIS_URL_MAX_SENTINELS];
    char master[128];     /* the Sentinel master name */
} redis_url;

/* Parse url into u.  LLMQ_ERR_INVALID with a message naming the bad part,
 * LLMQ_ERR_UNSUPPORTED for rediss://.  u is fully written either way. */
llmq_status redis_url_parse(redis_url *u, const char *url, llmq_err *err);

/* The password file of this process (copied; NULL = none), consulted by
 * redis_url_resolve before the environment.  Set it before forking peers:
 * they inherit it. */
void redis_url_set_password_file(const char *path);

/* Fill u->password from the file or the environment (see above) when the
 * URL gave none.  A file that cannot be read, is empty or too long is an
 * error (LLMQ_ERR_IO / LLMQ_ERR_INVALID), never a silent "no password". */
llmq_status redis_url_credentials(redis_url *u, llmq_err *err);

/* redis_url_parse followed by redis_url_credentials: what a binary that
 * connects calls on its --redis URL. */
llmq_status redis_url_resolve(redis_url *u, const char *url, llmq_err *err);

/* For logs: "redis://user:***@host:port/db" (":***" only when a password is
 * set, from whichever source), "unix:///path" (+ " (AUTH user:***)").
 * Returns buf. */
const char *redis_url_describe(const redis_url *u, char *buf, size_t cap);

/* A raw URL string as given on a command line, with the password of its
 * userinfo replaced by "***" (everything else as is; strings that are not
 * URLs are copied).  For messages about URLs that may not parse.  Returns buf. */
const char *redis_url_redact(const char *url, char *buf, size_t cap);

#endif
