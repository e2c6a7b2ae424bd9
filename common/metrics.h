/*
 * metrics.h — a small Prometheus registry shared by the gateway and the
 * worker: counters, gauges and histograms with fixed buckets, optional
 * labels, rendered in the text exposition format (version 0.0.4).
 *
 * Ownership: the registry owns its families and series; the pointers it
 * hands out stay valid until metrics_destroy, so a hot path looks a series
 * up once and keeps the pointer.  Thread-safe: one mutex per registry guards
 * updates, lookups and rendering (updates are a handful of instructions).
 * Names follow Prometheus rules ([a-zA-Z_:][a-zA-Z0-9_:]*); registering an
 * invalid or duplicate name returns NULL, and every update function accepts
 * NULL and then does nothing, so a failed registration never crashes.
 */
#ifndef LLMQ_METRICS_H
#define LLMQ_METRICS_H

#include <stddef.h>

typedef struct metrics metrics;               /* a registry */
typedef struct metric_family metric_family;   /* one metric name, its type, help, label names */
typedef struct metric metric;                 /* one series: a family + label values */

#define METRICS_MAX_LABELS 4
#define METRICS_MAX_BUCKETS 32

metrics *metrics_create(void);
void metrics_destroy(metrics *m);  /* m may be NULL */

/* labels: comma-separated label names ("model,code") or NULL for none. */
metric_family *metrics_counter(metrics *m, const char *name, const char *help, const char *labels);
metric_family *metrics_gauge(metrics *m, const char *name, const char *help, const char *labels);
/* bounds: n strictly increasing upper bounds (the +Inf bucket is implicit). */
metric_family *metrics_histogram(metrics *m, const char *name, const char *help, const char *labels,
                                 const double *bounds, size_t n);

/* The series of f with the given label values (exactly as many const char *
 * arguments as f has label names), created on first use.  NULL when f is
 * NULL or out of memory. */
metric *metric_get(metric_family *f, ...);

void metric_inc(metric *s, double v);      /* counter or gauge: += v (counters ignore v < 0) */
void metric_set(metric *s, double v);      /* gauge: = v */
void metric_observe(metric *s, double v);  /* histogram: one observation */
double metric_value(metric *s);            /* counter/gauge value; histogram count (for tests) */

/* The whole registry as exposition text; malloc'd, NUL terminated, *len
 * (may be NULL) gets its length.  NULL when out of memory. */
char *metrics_render(metrics *m, size_t *len);

/* Buckets for latencies in seconds (1 ms .. 60 s) and for token counts. */
extern const double metrics_latency_buckets[];
extern const size_t metrics_latency_nbuckets;

#endif
