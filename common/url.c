/*
 * url.c — Redis URL parsing (see url.h).  A small hand-written scanner: the
 * grammar is four optional parts, and every failure names the part.
 */
#include "common/url.h"

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
static llmq_status parse_query(redis_url *u, const char *q, const char *url, llmq_err *err) {
    if (!*q) return LLMQ_OK;
    if (strncmp(q, "db=", 3) != 0 || parse_num(q + 3, strlen(q + 3), 0, 1 << 20, &u->db) != 0)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': the only query understood is ?db=N", url);
    return LLMQ_OK;
}

llmq_status redis_url_parse(redis_url *u, const char *url, llmq_err *err) {
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
                                url);
        if (n >= sizeof u->path)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': socket path too long", url);
        memcpy(u->path, p, n);
        u->path[n] = '\0';
        u->is_unix = 1;
        return q ? parse_query(u, q + 1, url, err) : LLMQ_OK;
    }
    if (strncmp(url, "rediss://", 9) == 0)
        return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "redis URL '%s': TLS (rediss://) is not supported", url);
    if (strncmp(url, "redis://", 8) != 0)
        return llmq_err_set(err, LLMQ_ERR_INVALID,
                            "redis URL '%s': expected redis://[user:password@]host:port/db or unix:///path", url);

    const char *p = url + 8;
    const char *end = p + strcspn(p, "/?#");
    if (*end == '#') return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': fragments are not allowed", url);

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

    /* host[:port], with [v6] literals. */
    const char *hend, *port = NULL;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb) return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': unclosed '[' in host", url);
        hend = rb;
        p++;
        if (rb + 1 < end) {
            if (rb[1] != ':')
                return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': expected ':port' after ']'", url);
            port = rb + 2;
        }
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        hend = colon ? colon : end;
        if (colon) port = colon + 1;
    }
    size_t hlen = (size_t)(hend - p);
    if (hlen >= sizeof u->host) return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': host too long", url);
    if (hlen) {
        memcpy(u->host, p, hlen);
        u->host[hlen] = '\0';
    }
    if (port && parse_num(port, (size_t)(end - port), 1, 65535, &u->port) != 0)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': port must be a number in 1..65535", url);

    /* /db and ?db=N */
    p = end;
    if (*p == '/') {
        p++;
        size_t dlen = strcspn(p, "?");
        if (dlen && parse_num(p, dlen, 0, 1 << 20, &u->db) != 0)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "redis URL '%s': database must be a non-negative number", url);
        p += dlen;
    }
    if (*p == '?') return parse_query(u, p + 1, url, err);
    return LLMQ_OK;
}

const char *redis_url_describe(const redis_url *u, char *buf, size_t cap) {
    if (u->is_unix) {
        if (u->db) snprintf(buf, cap, "unix://%s?db=%d", u->path, u->db);
        else snprintf(buf, cap, "unix://%s", u->path);
    } else if (strchr(u->host, ':')) {
        snprintf(buf, cap, "redis://%s%s[%s]:%d/%d", u->user, u->user[0] ? "@" : "", u->host, u->port, u->db);
    } else {
        snprintf(buf, cap, "redis://%s%s%s:%d/%d", u->user, u->user[0] ? "@" : "", u->host, u->port, u->db);
    }
    return buf;
}
