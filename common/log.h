/*
 * log.h — one-line logging to stderr: "2026-11-28T04:35:46.123Z INFO worker: msg".
 *
 * The level comes from LLMQ_LOG (debug|info|warn|error, default info) on first
 * use, or from log_set_level().  Thread-safe: each line is one fprintf.
 */
#ifndef LLMQ_LOG_H
#define LLMQ_LOG_H

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

void log_set_level(log_level lv);
void log_set_name(const char *name); /* process tag, e.g. "worker[1]"; copied */
int log_enabled(log_level lv);
void log_write(log_level lv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_write(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...)  log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif
