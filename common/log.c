/* log.c — see log.h. */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static int g_level = -1;
static char g_name[32] = "llmq";

static int level_from_env(void) {
    const char *s = getenv("LLMQ_LOG");
    if (!s) return LOG_INFO;
    if (!strcasecmp(s, "debug")) return LOG_DEBUG;
    if (!strcasecmp(s, "warn")) return LOG_WARN;
    if (!strcasecmp(s, "error")) return LOG_ERROR;
    return LOG_INFO;
}

void log_set_level(log_level lv) { g_level = (int)lv; }

void log_set_name(const char *name) {
    snprintf(g_name, sizeof g_name, "%s", name ? name : "llmq");
}

int log_enabled(log_level lv) {
    if (g_level < 0) g_level = level_from_env();
    return (int)lv >= g_level;
}

size_t log_escape(char *out, size_t cap, const char *msg, size_t len) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i = 0;
    if (!cap) return 0;
    cap--; /* room for the NUL */
    while (i < len) {
        unsigned char ch = (unsigned char)msg[i];
        int ctl = ch < 0x20 || ch == 0x7f;
        size_t need = ctl ? 4 : 1;
        /* a cut never splits a UTF-8 sequence: a lead byte goes only with all of its sequence */
        if (!ctl && ch >= 0xc0) {
            size_t seq = ch >= 0xf0 ? 4 : ch >= 0xe0 ? 3 : 2;
            if (o + seq > cap) break;
        }
        if (o + need > cap) break;
        if (ctl) {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        } else {
            out[o++] = (char)ch;
        }
        i++;
    }
    out[o] = '\0';
    return i;
}

void log_write(log_level lv, const char *fmt, ...) {
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    if (!log_enabled(lv)) return;
    /* what the caller formatted, then its escaped and bounded form: a client's
     * bytes in a field (a job id, a path, a model name) can neither start a
     * line of their own nor make one without bound */
    char raw[LOG_LINE_MAX * 2];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    size_t have = (size_t)n < sizeof raw ? (size_t)n : sizeof raw - 1;
    char msg[LOG_LINE_MAX + 1];
    size_t used = log_escape(msg, sizeof msg, raw, have);
    char cut[48] = "";
    if (used < (size_t)n) snprintf(cut, sizeof cut, " ...[cut: %zu more bytes]", (size_t)n - used);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %-5s %s: %s%s\n", when, ts.tv_nsec / 1000000L, names[lv], g_name, msg, cut);
}
