/*
 * log.h — one-line logging to stderr: "2026-11-28T04:35:46.123Z INFO worker: msg".
 *
 * The level comes from LLMQ_LOG (debug|info|warn|error, default info) on first
 * use, or from log_set_level().  Thread-safe: each line is one fprintf.
 *
 * Every message is made safe to read here, whatever its fields hold (they
 * often come from clients: job ids, paths, model names): control bytes
 * (0x00-0x1f, 0x7f: newline, carriage return, escape...) are written as \xHH,
 * so no field can forge a line; a message is cut after LOG_LINE_MAX bytes
 * (never inside a UTF-8 sequence) and ends with " ...[cut: N more bytes]".
 * Callers still bound a client's field where they format it (LOG_FIELD_MAX
 * with "%.*s"), so that one long field does not hide the rest of its line.
 */
#ifndef LLMQ_LOG_H
#define LLMQ_LOG_H

#include <stddef.h>

#define LOG_LINE_MAX 2048  /* bytes of one message after escaping, then cut */
#define LOG_FIELD_MAX 256  /* bytes of one client-given field in a message */

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

void log_set_level(log_level lv);
void log_set_name(const char *name); /* process tag, e.g. "worker[1]"; copied */
int log_enabled(log_level lv);
void log_write(log_level lv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Escape msg[0, len) into out (cap bytes, NUL terminated) as log_write does:
 * control bytes as \xHH, stopping before out would overflow and never inside
 * a UTF-8 sequence.  Returns how many bytes of msg were written. */
size_t log_escape(char *out, size_t cap, const char *msg, size_t len);

#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_write(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...)  log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif
