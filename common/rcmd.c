/* rcmd.c — argv-vector Redis commands (see rcmd.h). */
#include "common/rcmd.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void rcmd_init(rcmd *c) {
    c->argc = 0;
    c->used = 0;
    c->overflow = 0;
}

void rcmd_arg(rcmd *c, const void *p, size_t n) {
    if (c->argc >= RCMD_MAX_ARGS) {
        c->overflow = 1;
        return;
    }
    c->argv[c->argc] = n ? p : "";
    c->argvlen[c->argc] = n;
    c->argc++;
}

void rcmd_str(rcmd *c, const char *s) { rcmd_arg(c, s, strlen(s)); }

void rcmd_fmt(rcmd *c, const char *fmt, ...) {
    size_t room = sizeof c->scratch - c->used;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->scratch + c->used, room, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= room) {
        c->overflow = 1;
        return;
    }
    rcmd_arg(c, c->scratch + c->used, (size_t)n);
    c->used += (size_t)n + 1;
}

/* ------------------------------------------------------------ EVALSHA */

const char *rcmd_shas_get(const rcmd_shas *t, const char *text, int *known) {
    for (int i = 0; i < t->n; i++)
        if (t->text[i] == text) {
            *known = 1;
            return t->sha[i][0] ? t->sha[i] : NULL;
        }
    *known = 0;
    return NULL;
}

void rcmd_shas_put(rcmd_shas *t, const char *text, const char *sha, size_t len) {
    int i = 0;
    while (i < t->n && t->text[i] != text) i++;
    if (i == RCMD_SHAS) return; /* full: that script goes on as EVAL */
    if (i == t->n) t->n++;
    t->text[i] = text;
    t->sha[i][0] = 0;
    if (sha && len == RCMD_SHA_LEN && strspn(sha, "0123456789abcdef") >= len) {
        memcpy(t->sha[i], sha, len);
        t->sha[i][len] = 0;
    }
}

int rcmd_is_eval(const rcmd *c) {
    return rcmd_ok(c) && c->argc >= 3 && c->argvlen[0] == 4 && !memcmp(c->argv[0], "EVAL", 4);
}

void rcmd_evalsha(rcmd *e, const rcmd *c, const char *sha) {
    rcmd_init(e);
    rcmd_str(e, "EVALSHA");
    rcmd_str(e, sha);
    for (int i = 2; i < c->argc; i++) rcmd_arg(e, c->argv[i], c->argvlen[i]);
    e->overflow |= c->overflow;
}

int rcmd_noscript(const char *msg) { return msg && strstr(msg, "NOSCRIPT") != NULL; }
