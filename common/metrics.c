/*
 * metrics.c — the Prometheus registry (see metrics.h).
 *
 * Families live in a singly linked list in registration order (that is the
 * order of the exposition), series in a list per family: a handful each, so
 * lookups are linear and callers cache the series pointer anyway.
 */
#include "common/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/protocol.h"

typedef enum { MT_COUNTER, MT_GAUGE, MT_HISTOGRAM } metric_type;

struct metric {
    metric_family *fam;                    /* owner */
    char *values[METRICS_MAX_LABELS];      /* label values, fam->n_labels of them */
    double value;                          /* counter / gauge */
    double sum;                            /* histogram: sum of observations */
    unsigned long long count;              /* histogram: observations */
    unsigned long long *buckets;           /* histogram: per bucket (not cumulative), n_bounds + 1 */
    metric *next;
};

struct metric_family {
    metrics *reg;                          /* owner */
    char *name, *help;
    metric_type type;
    int n_labels;
    char *labels[METRICS_MAX_LABELS];      /* label names */
    double bounds[METRICS_MAX_BUCKETS];    /* histogram upper bounds, increasing */
    size_t n_bounds;
    metric *series;                        /* list, creation order reversed */
    metric_family *next;
};

struct metrics {
    pthread_mutex_t lock;                  /* guards everything below and all series */
    metric_family *head, *tail;
};

const double metrics_latency_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                          0.5,   1,      2.5,   5,    10,    30,    60};
const size_t metrics_latency_nbuckets = sizeof metrics_latency_buckets / sizeof metrics_latency_buckets[0];

metrics *metrics_create(void) {
    metrics *m = calloc(1, sizeof *m);
    if (m) pthread_mutex_init(&m->lock, NULL);
    return m;
}

static void series_free(metric *s) {
    for (int i = 0; i < METRICS_MAX_LABELS; i++) free(s->values[i]);
    free(s->buckets);
    free(s);
}

void metrics_destroy(metrics *m) {
    if (!m) return;
    metric_family *f = m->head;
    while (f) {
        metric_family *fn = f->next;
        metric *s = f->series;
        while (s) {
            metric *sn = s->next;
            series_free(s);
            s = sn;
        }
        for (int i = 0; i < METRICS_MAX_LABELS; i++) free(f->labels[i]);
        free(f->name);
        free(f->help);
        free(f);
        f = fn;
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}

static int name_ok(const char *s, int allow_colon) {
    if (!s || !*s) return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':');
        if (!alpha && !(p != s && c >= '0' && c <= '9')) return 0;
    }
    return 1;
}

static metric_family *family_add(metrics *m, const char *name, const char *help, const char *labels, metric_type t,
                                 const double *bounds, size_t nb) {
    if (!m || !name_ok(name, 1) || nb > METRICS_MAX_BUCKETS) return NULL;
    for (size_t i = 1; i < nb; i++)
        if (!(bounds[i] > bounds[i - 1])) return NULL;
    metric_family *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->reg = m;
    f->type = t;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    if (nb) memcpy(f->bounds, bounds, nb * sizeof *bounds);
    f->n_bounds = nb;
    int bad = !f->name || !f->help;
    if (labels && *labels) {
        const char *p = labels;
        while (!bad) {
            size_t n = strcspn(p, ",");
            if (f->n_labels == METRICS_MAX_LABELS) {
                bad = 1;
                break;
            }
            f->labels[f->n_labels] = strndup(p, n);
            if (!f->labels[f->n_labels] || !name_ok(f->labels[f->n_labels], 0) ||
                !strcmp(f->labels[f->n_labels], "le"))
                bad = 1;
            f->n_labels++;
            if (!p[n]) break;
            p += n + 1;
        }
    }
    pthread_mutex_lock(&m->lock);
    for (metric_family *g = m->head; g && !bad; g = g->next)
        if (!strcmp(g->name, name)) bad = 1;
    if (!bad) {
        if (m->tail) m->tail->next = f;
        else m->head = f;
        m->tail = f;
    }
    pthread_mutex_unlock(&m->lock);
    if (bad) {
        for (int i = 0; i < METRICS_MAX_LABELS; i++) free(f->labels[i]);
        free(f->name);
        free(f->help);
        free(f);
        return NULL;
    }
    return f;
}

metric_family *metrics_counter(metrics *m, const char *name, const char *help, const char *labels) {
    return family_add(m, name, help, labels, MT_COUNTER, NULL, 0);
}
metric_family *metrics_gauge(metrics *m, const char *name, const char *help, const char *labels) {
    return family_add(m, name, help, labels, MT_GAUGE, NULL, 0);
}
metric_family *metrics_histogram(metrics *m, const char *name, const char *help, const char *labels,
                                 const double *bounds, size_t n) {
    return family_add(m, name, help, labels, MT_HISTOGRAM, bounds, n);
}

metric *metric_get(metric_family *f, ...) {
    if (!f) return NULL;
    const char *vals[METRICS_MAX_LABELS] = {0};
    va_list ap;
    va_start(ap, f);
    for (int i = 0; i < f->n_labels; i++) {
        vals[i] = va_arg(ap, const char *);
        if (!vals[i]) vals[i] = "";
    }
    va_end(ap);
    pthread_mutex_lock(&f->reg->lock);
    metric *s;
    for (s = f->series; s; s = s->next) {
        int same = 1;
        for (int i = 0; i < f->n_labels && same; i++) same = !strcmp(s->values[i], vals[i]);
        if (same) break;
    }
    if (!s && (s = calloc(1, sizeof *s))) {
        int bad = 0;
        s->fam = f;
        for (int i = 0; i < f->n_labels; i++)
            if (!(s->values[i] = strdup(vals[i]))) bad = 1;
        if (f->type == MT_HISTOGRAM && !(s->buckets = calloc(f->n_bounds + 1, sizeof *s->buckets))) bad = 1;
        if (bad) {
            series_free(s);
            s = NULL;
        } else {
            s->next = f->series;
            f->series = s;
        }
    }
    pthread_mutex_unlock(&f->reg->lock);
    return s;
}

void metric_inc(metric *s, double v) {
    if (!s || s->fam->type == MT_HISTOGRAM || (s->fam->type == MT_COUNTER && v < 0)) return;
    pthread_mutex_lock(&s->fam->reg->lock);
    s->value += v;
    pthread_mutex_unlock(&s->fam->reg->lock);
}

void metric_set(metric *s, double v) {
    if (!s || s->fam->type != MT_GAUGE) return;
    pthread_mutex_lock(&s->fam->reg->lock);
    s->value = v;
    pthread_mutex_unlock(&s->fam->reg->lock);
}

void metric_observe(metric *s, double v) {
    if (!s || s->fam->type != MT_HISTOGRAM || isnan(v)) return;
    metric_family *f = s->fam;
    size_t b = 0;
    while (b < f->n_bounds && v > f->bounds[b]) b++;
    pthread_mutex_lock(&f->reg->lock);
    s->buckets[b]++;
    s->count++;
    s->sum += v;
    pthread_mutex_unlock(&f->reg->lock);
}

double metric_value(metric *s) {
    if (!s) return 0;
    pthread_mutex_lock(&s->fam->reg->lock);
    double v = s->fam->type == MT_HISTOGRAM ? (double)s->count : s->value;
    pthread_mutex_unlock(&s->fam->reg->lock);
    return v;
}

/* ---------------------------------------------------------------- rendering */

static int put(proto_buf *b, const char *s) { return proto_buf_append(b, s, strlen(s)) == LLMQ_OK ? 0 : -1; }

static int putf(proto_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int putf(proto_buf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    return proto_buf_append(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1) == LLMQ_OK ? 0 : -1;
}

/* v as the shortest of %.15g, %.16g, %.17g that strtod reads back as v
 * exactly (%.17g always does): 0.1 prints "0.1", not
 * "0.10000000000000001", so a query that matches le="0.1" finds the bucket,
 * as with Prometheus' own clients.  buf: at least 32 bytes. */
static void num_shortest(char *buf, size_t cap, double v) {
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

static int put_num(proto_buf *b, double v) {
    if (isnan(v)) return put(b, "NaN");
    if (isinf(v)) return put(b, v > 0 ? "+Inf" : "-Inf");
    char num[32];
    num_shortest(num, sizeof num, v);
    return put(b, num);
}

/* Escape a label value: backslash, double quote and newline. */
static int put_escaped(proto_buf *b, const char *s, int is_help) {
    for (; *s; s++) {
        int e = 0;
        if (*s == '\\') e = put(b, "\\\\");
        else if (*s == '\n') e = put(b, "\\n");
        else if (*s == '"' && !is_help) e = put(b, "\\\"");
        else e = proto_buf_append(b, s, 1) == LLMQ_OK ? 0 : -1;
        if (e) return -1;
    }
    return 0;
}

/* name{l1="v1",...,extra} — extra is an extra label pair already formatted. */
static int put_series_name(proto_buf *b, const metric *s, const char *suffix, const char *extra) {
    const metric_family *f = s->fam;
    int e = put(b, f->name) || put(b, suffix);
    if (f->n_labels || extra) {
        e = e || put(b, "{");
        for (int i = 0; i < f->n_labels && !e; i++)
            e = (i && put(b, ",")) || put(b, f->labels[i]) || put(b, "=\"") || put_escaped(b, s->values[i], 0) ||
                put(b, "\"");
        if (extra) e = e || (f->n_labels && put(b, ",")) || put(b, extra);
        e = e || put(b, "}");
    }
    return e || put(b, " ");
}

char *metrics_render(metrics *m, size_t *len) {
    proto_buf b;
    proto_buf_init(&b);
    int e = 0;
    static const char *type_names[] = {"counter", "gauge", "histogram"};
    pthread_mutex_lock(&m->lock);
    for (metric_family *f = m->head; f && !e; f = f->next) {
        e = put(&b, "# HELP ") || put(&b, f->name) || put(&b, " ") || put_escaped(&b, f->help, 1) ||
            put(&b, "\n# TYPE ") || put(&b, f->name) || put(&b, " ") || put(&b, type_names[f->type]) || put(&b, "\n");
        for (metric *s = f->series; s && !e; s = s->next) {
            if (f->type != MT_HISTOGRAM) {
                e = put_series_name(&b, s, "", NULL) || put_num(&b, s->value) || put(&b, "\n");
                continue;
            }
            unsigned long long cum = 0;
            for (size_t i = 0; i <= f->n_bounds && !e; i++) {
                char le[64], num[32] = "+Inf";
                cum += s->buckets[i];
                if (i < f->n_bounds) num_shortest(num, sizeof num, f->bounds[i]);
                snprintf(le, sizeof le, "le=\"%s\"", num);
                e = put_series_name(&b, s, "_bucket", le) || putf(&b, "%llu\n", cum);
            }
            e = e || put_series_name(&b, s, "_sum", NULL) || put_num(&b, s->sum) || put(&b, "\n") ||
                put_series_name(&b, s, "_count", NULL) || putf(&b, "%llu\n", s->count);
        }
    }
    pthread_mutex_unlock(&m->lock);
    e = e || proto_buf_append(&b, "", 1) != LLMQ_OK; /* NUL */
    if (e) {
        proto_buf_deinit(&b);
        return NULL;
    }
    if (len) *len = b.len - 1;
    return b.data;
}
