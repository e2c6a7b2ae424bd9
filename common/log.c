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

void log_write(log_level lv, const char *fmt, ...) {
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    if (!log_enabled(lv)) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %-5s %s: %s\n", when, ts.tv_nsec / 1000000L, names[lv], g_name, msg);
}
