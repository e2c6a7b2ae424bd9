/*
 * instances.c — the Redis instances behind one gateway and the table that
 * routes models to them (--redis-for MODELS=URL), see gw.h "instances" and
 * docs/architecture.md "Past one Redis".
 *
 * Why a tag in the job id rather than a table of ids: GET, cancel and the
 * event stream of a job must find its instance with nothing but the id, on
 * any gateway replica, after restarts, and with the instance that should
 * hold a lookup table possibly down.  The tag is a hash of the instance's
 * address (not its place on the command line), so reordering or adding
 * --redis-for entries leaves the ids of existing jobs pointing where they were.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/gw.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* What names an instance: its data node, or for Sentinel the master name
 * (the sentinels' list may grow without the jobs moving), and the db. */
static void inst_address(const redis_url *u, char *buf, size_t cap) {
    if (u->n_sentinels) snprintf(buf, cap, "sentinel/%s/%d", u->master, u->db);
    else if (u->is_unix) snprintf(buf, cap, "unix:%s/%d", u->path, u->db);
    else snprintf(buf, cap, "tcp:%s:%d/%d", u->host, u->port, u->db);
}

static void inst_tag(const char *address, char tag[GW_TAG_LEN + 1]) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a 64 */
    for (const char *p = address; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    snprintf(tag, GW_TAG_LEN + 1, "r%06llx", (unsigned long long)(h & 0xffffff));
}

int gw_inst_add(gw *g, const char *url, llmq_err *err) {
    redis_url u;
    if (redis_url_resolve(&u, url, err) != LLMQ_OK) return -1;
    char addr[600], a2[600];
    inst_address(&u, addr, sizeof addr);
    char tag[GW_TAG_LEN + 1];
    inst_tag(addr, tag);
    for (size_t i = 0; i < g->n_inst; i++) {
        inst_address(&g->inst[i].url, a2, sizeof a2);
        if (!strcmp(addr, a2)) return (int)i;
        if (!strcmp(tag, g->inst[i].tag)) { /* 1 in 16M per pair: say so rather than mix their jobs */
            llmq_err_set(err, LLMQ_ERR_INVALID, "the Redis instances %s and %s hash to the same tag %s: use another "
                         "db number or address for one of them", addr, a2, tag);
            return -1;
        }
    }
    gw_inst *n = realloc(g->inst, (g->n_inst + 1) * sizeof *n);
    if (!n) {
        llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
        return -1;
    }
    g->inst = n;
    gw_inst *in = &g->inst[g->n_inst];
    memset(in, 0, sizeof *in);
    in->g = g;
    in->idx = (int)g->n_inst;
    in->url = u;
    if (in->idx) snprintf(in->tag, sizeof in->tag, "%s", tag);
    snprintf(in->name, sizeof in->name, "%s", in->idx ? tag : "default");
    return (int)g->n_inst++;
}

int gw_route_add(gw *g, const char *spec, llmq_err *err) {
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || !eq[1])
        return llmq_err_set(err, LLMQ_ERR_INVALID, "--redis-for wants MODEL[,MODEL...]=URL"), -1;
    int inst = gw_inst_add(g, eq + 1, err);
    if (inst < 0) return -1;
    for (const char *p = spec; p < eq;) {
        size_t n = strcspn(p, ",=");
        char name[PROTO_MAX_MODEL_LEN + 1];
        if (n == 0 || n > PROTO_MAX_MODEL_LEN)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "--redis-for: bad model list in '%.100s'", spec), -1;
        memcpy(name, p, n);
        name[n] = '\0';
        if (!keys_model_valid(name))
            return llmq_err_set(err, LLMQ_ERR_INVALID, "--redis-for: '%s' is not a valid model name", name), -1;
        for (size_t i = 0; i < g->n_routes; i++)
            if (!strcmp(g->routes[i].model, name))
                return llmq_err_set(err, LLMQ_ERR_INVALID, "--redis-for: model '%s' is routed twice", name), -1;
        gw_route_ent *r = realloc(g->routes, (g->n_routes + 1) * sizeof *r);
        if (!r) return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory"), -1;
        g->routes = r;
        snprintf(r[g->n_routes].model, sizeof r[g->n_routes].model, "%s", name);
        r[g->n_routes++].inst = inst;
        p += n;
        if (*p == ',') p++;
    }
    return 0;
}

int gw_inst_for_model(const gw *g, const char *model) {
    for (size_t i = 0; i < g->n_routes; i++)
        if (!strcmp(g->routes[i].model, model)) return g->routes[i].inst;
    return 0;
}

int gw_inst_for_id(const gw *g, const char *id) {
    const char *dot = strchr(id, '.');
    if (!dot || dot - id != GW_TAG_LEN) return 0;
    for (size_t i = 1; i < g->n_inst; i++)
        if (!strncmp(g->inst[i].tag, id, GW_TAG_LEN)) return (int)i;
    return 0;
}

llmq_status gw_new_job_id(const gw *g, const char *model, char *buf, llmq_err *err) {
    char hex[33];
    if (keys_new_id(hex, err) != LLMQ_OK) return LLMQ_ERR_IO;
    const gw_inst *in = &g->inst[gw_inst_for_model(g, model)];
    snprintf(buf, PROTO_MAX_ID_LEN + 1, "%s%s%s", in->tag, in->tag[0] ? "." : "", hex);
    return LLMQ_OK;
}

int gw_inst_ready(const gw *g, int inst) { return g->inst[inst].redis.cmd_ready && g->inst[inst].redis.sub_ready; }

gw_inst *gw_inst_of(redisAsyncContext *ac) { return container_of(ac->data, gw_inst, redis); }

jobwatch_registry *gw_call_watches(gw_call *call) { return &call->g->inst[call->inst].watches; }

const char *gw_inst_describe(const gw *g, int inst, char *buf, size_t cap) {
    char where[600];
    snprintf(buf, cap, "%s (%s)", g->inst[inst].name, redis_url_describe(&g->inst[inst].url, where, sizeof where));
    return buf;
}

void gw_reply_inst_down(gw *g, http_conn *c, int inst, const char *what) {
    if (g->n_inst == 1) return gw_reply_redis_down(c); /* one instance: the message as it always was */
    /* the tag only: the address is the operator's (the log and /readyz name it), not the client's */
    gw_reply_error(c, 503, "service_unavailable", NULL, "redis_unavailable",
                   "the Redis instance %s that holds %s is unreachable; retry shortly (models on other "
                   "instances are served)", g->inst[inst].name, what);
}

void gw_inst_metrics(gw *g) {
    int all = 1;
    for (size_t i = 0; i < g->n_inst; i++) {
        int up = gw_inst_ready(g, (int)i);
        metric_set(g->inst[i].up, up);
        all &= up;
    }
    metric_set(g->m.redis_up, all);
}
