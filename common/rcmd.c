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
