/*
 * url.c — Redis URL parsing and credentials (see url.h).  A small
 * hand-written scanner: the grammar is four optional parts, and every
 * failure names the part.  Error messages quote the URL as the user wrote
 * it, but always through redis_url_redact(): a password never reaches a
 * message, so no caller can log one by accident.
 */
#include "common/url.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decode s[0..n) into out (cap bytes incl. NUL).  -1 on a bad
 * escape, an encoded NUL, or when it does not fit. */
static int pct_decode(const char *s, size_t n, char *out, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= n) return -1;
            int h = hexval(s[i + 1]), l = hexval(s[i + 2]);
            if (h < 0 || l < 0 || (h == 0 && l == 0)) return -1;
            c = (char)(h * 16 + l);
            i += 2;
        }
        if (o + 1 >= cap) return -1;
        out[o++] = c;
    }
    out[o] = '\0';
    return 0;
}

/* Sentinel host names (and IPv6 literals) and master names: nothing that
 * would need escaping in a URL, a log line or a redis command. */
#define NAME_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"

/* Parse a decimal in [lo, hi] from s[0..n). */
static int parse_num(const char *s, size_t n, long lo, long hi, int *out) {
    if (n == 0 || n > 9) return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

/* "db=N" query (the only one understood). */
static llmq_status parse_query(redis_url *u, const char *q, const char *shown, llmq_err *err) {
    if (!*q) return LLMQ_OK;
    if (strncmp(q, "db=", 3) != 0 || parse_num(q + 3, strlen(q + 3), 0, 1 << 20, &u->db) != 0)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': the only query understood is ?db=N", shown);
    return LLMQ_OK;
}

/* host[:port] in s[0..end), with [v6] literals; an empty host leaves
 * host as it is, no port leaves *port. */
static llmq_status parse_hostport(const char *p, const char *end, char *host, size_t cap, int *port_out,
                                  const char *shown, llmq_err *err) {
    const char *hend, *port = NULL;
    if (p < end && *p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb) return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': unclosed '[' in host", shown);
        hend = rb;
        p++;
        if (rb + 1 < end) {
            if (rb[1] != ':')
                return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': expected ':port' after ']'", shown);
            port = rb + 2;
        }
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        hend = colon ? colon : end;
        if (colon) port = colon + 1;
    }
    size_t hlen = (size_t)(hend - p);
    if (hlen >= cap) return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': host too long", shown);
    if (hlen) {
        memcpy(host, p, hlen);
        host[hlen] = '\0';
    }
    if (port && parse_num(port, (size_t)(end - port), 1, 65535, port_out) != 0)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': port must be a number in 1..65535", shown);
    return LLMQ_OK;
}

/* The parser proper; `shown` is the redacted URL for messages. */
static llmq_status parse_url(redis_url *u, const char *url, const char *shown, llmq_err *err) {
    memset(u, 0, sizeof *u);
    u->port = 6379;
    snprintf(u->host, sizeof u->host, "127.0.0.1");
    if (!url || !*url) return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL is empty");

    if (strncmp(url, "unix://", 7) == 0) {
        const char *p = url + 7;
        const char *q = strchr(p, '?');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n == 0 || p[0] != '/')
            return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': unix:// needs an absolute path (unix:///path)",
                                shown);
        if (n >= sizeof u->path)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': socket path too long", shown);
        memcpy(u->path, p, n);
        u->path[n] = '\0';
        u->is_unix = 1;
        return q ? parse_query(u, q + 1, shown, err) : LLMQ_OK;
    }
    if (strncmp(url, "rediss://", 9) == 0)
        return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED,
                            "redis URL '%s': TLS (rediss://) is not supported (Debian's hiredis has no TLS): "
                            "reach a TLS Redis through a local TLS proxy, see docs/operations.md (Security)",
                            shown);
    int sentinel = strncmp(url, "redis-sentinel://", 17) == 0;
    if (!sentinel && strncmp(url, "redis://", 8) != 0)
        return llmq_err_set(err, LLMQ_ERR_INVALID,
                            "redis URL '%s': expected redis://[user:password@]host:port/db, "
                            "redis-sentinel://host:port,host:port/master-name or unix:///path",
                            shown);

    const char *p = url + (sentinel ? 17 : 8);
    const char *end = p + strcspn(p, "/?#");
    if (*end == '#') return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': fragments are not allowed", shown);

    /* userinfo: everything up to the LAST '@' before the path. */
    const char *at = NULL;
    for (const char *s = p; s < end; s++)
        if (*s == '@') at = s;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t ulen = colon ? (size_t)(colon - p) : (size_t)(at - p);
        if (pct_decode(p, ulen, u->user, sizeof u->user) != 0)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL: bad user name (too long or bad %%-escape)");
        if (colon && pct_decode(colon + 1, (size_t)(at - colon - 1), u->password, sizeof u->password) != 0)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL: bad password (too long or bad %%-escape)");
        p = at + 1;
    }

    if (sentinel) {
        /* no address until sentinel_locate(): a client that ignores
         * n_sentinels fails to connect rather than reach 127.0.0.1 */
        u->host[0] = '\0';
        /* h:p,h:p,... up to the path, which names the primary */
        while (p < end) {
            const char *e = memchr(p, ',', (size_t)(end - p));
            if (!e) e = end;
            if (u->n_sentinels == REDIS_URL_MAX_SENTINELS)
                return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': at most %d sentinels", shown,
                                    REDIS_URL_MAX_SENTINELS);
            redis_url_node *n = &u->sentinel[u->n_sentinels++];
            n->port = 26379;
            llmq_status st = parse_hostport(p, e, n->host, sizeof n->host, &n->port, shown, err);
            if (st) return st;
            if (!n->host[0])
                return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': empty sentinel address", shown);
            if (strspn(n->host, NAME_CHARS) < strlen(n->host))
                return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': bad sentinel host '%s'", shown, n->host);
            p = e < end ? e + 1 : end;
            if (e < end && p == end)
                return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': empty sentinel address", shown);
        }
        if (!u->n_sentinels)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': no sentinel address", shown);
        /* /master-name[/db] */
        if (*p != '/' || p[1] == '/' || p[1] == '?' || !p[1])
            return llmq_err_set(err, LLMQ_ERR_INVALID,
                                "redis URL '%s': expected redis-sentinel://host:port,host:port/master-name[/db]", shown);
        p++;
        size_t mlen = strcspn(p, "/?");
        if (mlen >= sizeof u->master || strspn(p, NAME_CHARS) < mlen)
            return llmq_err_set(err, LLMQ_ERR_INVALID,
                                "redis URL '%s': the master name must be 1 to %zu of A-Z a-z 0-9 . _ : -", shown,
                                sizeof u->master - 1);
        memcpy(u->master, p, mlen);
        u->master[mlen] = '\0';
        p += mlen;
        if (*p == '/') {
            p++;
            size_t dlen = strcspn(p, "?");
            if (dlen && parse_num(p, dlen, 0, 1 << 20, &u->db) != 0)
                return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': database must be a non-negative number",
                                    shown);
            p += dlen;
        }
        if (*p == '?') return parse_query(u, p + 1, shown, err);
        return LLMQ_OK;
    }

    llmq_status st = parse_hostport(p, end, u->host, sizeof u->host, &u->port, shown, err);
    if (st) return st;

    /* /db and ?db=N */
    p = end;
    if (*p == '/') {
        p++;
        size_t dlen = strcspn(p, "?");
        if (dlen && parse_num(p, dlen, 0, 1 << 20, &u->db) != 0)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': database must be a non-negative number", shown);
        p += dlen;
    }
    if (*p == '?') return parse_query(u, p + 1, shown, err);
    return LLMQ_OK;
}

llmq_status redis_url_parse(redis_url *u, const char *url, llmq_err *err) {
    char shown[512];
    return parse_url(u, url, redis_url_redact(url, shown, sizeof shown), err);
}

/* ================================================================ credentials */

static char g_password_file[4096]; /* --redis-password-file; "" = none */

void redis_url_set_password_file(const char *path) {
    snprintf(g_password_file, sizeof g_password_file, "%s", path ? path : "");
}

/* The password in file `path` into out[cap]: the whole file less trailing
 * CR/LF.  An unreadable, empty or oversized file, or one with a NUL byte, is
 * an error (never a silent "no password"); `what` names the source. */
static llmq_status read_password_file(const char *path, const char *what, char *out, size_t cap, llmq_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return llmq_err_set(err, LLMQ_ERR_IO, "%s %s: %s", what, path, strerror(errno));
    size_t n = fread(out, 1, cap, f);
    int more = n == cap && fgetc(f) != EOF;
    int bad = ferror(f);
    fclose(f);
    if (bad) return llmq_err_set(err, LLMQ_ERR_IO, "%s %s: read error", what, path);
    while (n && (out[n - 1] == '\n' || out[n - 1] == '\r')) n--;
    if (more || n >= cap) {
        out[0] = '\0';
        return llmq_err_set(err, LLMQ_ERR_INVALID, "%s %s: password longer than %zu bytes", what, path, cap - 1);
    }
    out[n] = '\0';
    if (n == 0) return llmq_err_set(err, LLMQ_ERR_INVALID, "%s %s: the file is empty", what, path);
    if (strlen(out) != n || strpbrk(out, "\r\n")) {
        out[0] = '\0';
        return llmq_err_set(err, LLMQ_ERR_INVALID, "%s %s: the password must be one line without NUL bytes", what,
                            path);
    }
    return LLMQ_OK;
}

llmq_status redis_url_credentials(redis_url *u, llmq_err *err) {
    if (u->password[0]) return LLMQ_OK; /* the URL's own password wins */
    const char *env_file = getenv("LLMQ_REDIS_PASSWORD_FILE");
    const char *env_pw = getenv("LLMQ_REDIS_PASSWORD");
    if (g_password_file[0])
        return read_password_file(g_password_file, "--redis-password-file", u->password, sizeof u->password, err);
    if (env_file && *env_file)
        return read_password_file(env_file, "LLMQ_REDIS_PASSWORD_FILE", u->password, sizeof u->password, err);
    if (env_pw && *env_pw) {
        if (strlen(env_pw) >= sizeof u->password)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "LLMQ_REDIS_PASSWORD: longer than %zu bytes",
                                sizeof u->password - 1);
        memcpy(u->password, env_pw, strlen(env_pw) + 1);
    }
    return LLMQ_OK;
}

llmq_status redis_url_resolve(redis_url *u, const char *url, llmq_err *err) {
    llmq_status st = redis_url_parse(u, url, err);
    return st ? st : redis_url_credentials(u, err);
}

/* ================================================================ for logs */

const char *redis_url_redact(const char *url, char *buf, size_t cap) {
    if (!cap) return buf;
    if (!url) url = "";
    /* userinfo runs from after "scheme://" to the LAST '@' of the string:
     * further right than the parser looks, so that a password holding a raw
     * '/', '?' or '#' (which the parser refuses) is still hidden */
    const char *scheme = strstr(url, "://");
    const char *start = scheme ? scheme + 3 : url;
    const char *at = strrchr(start, '@');
    const char *colon = at ? memchr(start, ':', (size_t)(at - start)) : NULL;
    if (!colon) {
        snprintf(buf, cap, "%s", url);
        return buf;
    }
    snprintf(buf, cap, "%.*s***%s", (int)(colon + 1 - url), url, at);
    return buf;
}

const char *redis_url_describe(const redis_url *u, char *buf, size_t cap) {
    const char *pw = u->password[0] ? ":***" : "";
    int creds = u->user[0] || u->password[0];
    if (u->n_sentinels) {
        size_t o = (size_t)snprintf(buf, cap, "redis-sentinel://%s%s%s", u->user, pw, creds ? "@" : "");
        for (int i = 0; i < u->n_sentinels && o < cap; i++) {
            int v6 = strchr(u->sentinel[i].host, ':') != NULL;
            o += (size_t)snprintf(buf + o, cap - o, "%s%s%s%s:%d", i ? "," : "", v6 ? "[" : "", u->sentinel[i].host,
                                  v6 ? "]" : "", u->sentinel[i].port);
        }
        if (o < cap) snprintf(buf + o, cap - o, "/%s/%d", u->master, u->db);
        return buf;
    }
    if (u->is_unix) {
        char db[24] = "";
        if (u->db) snprintf(db, sizeof db, "?db=%d", u->db);
        if (creds) snprintf(buf, cap, "unix://%s%s (AUTH %s%s)", u->path, db, u->user, pw);
        else snprintf(buf, cap, "unix://%s%s", u->path, db);
    } else {
        int v6 = strchr(u->host, ':') != NULL;
        snprintf(buf, cap, "redis://%s%s%s%s%s%s:%d/%d", u->user, pw, creds ? "@" : "", v6 ? "[" : "", u->host,
                 v6 ? "]" : "", u->port, u->db);
    }
    return buf;
}
