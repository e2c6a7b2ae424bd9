/* runtime.c — see runtime.h. */
#include "worker/engine/runtime.h"
#include "worker/engine/synth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Name the piece that failed at the head of err's message (unless the
 * message already starts with it, as the engine's do); the code stays. */
static llmq_status failed(llmq_status st, llmq_err *err, const char *what) {
    const size_t n = strlen(what);
    if (err && !(strncmp(err->msg, what, n) == 0 && err->msg[n] == ':')) llmq_err_prefix(err, "%s: ", what);
    return st ? st : err && err->code ? err->code : LLMQ_ERR_INTERNAL;
}

llmq_status runtime_create(runtime **out, const runtime_opts *o, llmq_err *err) {
    *out = NULL;
    runtime *rt = calloc(1, sizeof *rt);
    if (!rt) return llmq_err_set(err, LLMQ_ERR_NOMEM, "runtime: out of memory");
    llmq_status st = LLMQ_OK;
    const int rank = o->comm ? o->comm->rank : 0, world = o->comm ? o->comm->world : 1;
    eng_opts eo = o->eng;
    eo.comm = o->comm;
    /* the synthetic engine (synth.h): its own backend, a model of the
     * config alone, one rank */
    double rate = 0;
    const int synthetic = synth_backend_parse(o->backend, &rate, err);
    if (synthetic < 0) {
        st = failed(LLMQ_OK, err, "backend");
    } else if (synthetic && world > 1) {
        st = llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "backend: the synthetic engine runs on one rank (no --tp)");
    } else if (synthetic ? !(rt->be = synth_backend_create(rate, err)) : !(rt->be = llmq_backend_create(o->backend, err))) {
        st = failed(LLMQ_OK, err, "backend");
    } else if ((st = synthetic ? synth_model_load(&rt->m, o->model_dir, rt->be, err)
                               : model_load_shard(&rt->m, o->model_dir, rt->be, &o->load, rank, world, err))) {
        st = failed(st, err, "model");
    } else if ((st = eng_create(&rt->eng, rt->m, &eo, err))) {
        st = failed(st, err, "engine");
    } else if (o->with_sched && (st = sched_create(&rt->sch, rt->eng, &o->sched, &o->cb, err))) {
        st = failed(st, err, "scheduler");
    } else if (o->tok == RUNTIME_TOK_IF_PRESENT) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizer.json", o->model_dir);
        if (access(path, R_OK) == 0 && !(rt->tok = tok_load(o->model_dir, err))) st = failed(LLMQ_OK, err, "tokenizer");
    }
    if (!st && synthetic) { /* the ids it emits follow the directory's tokenizer, whoever asks */
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizer.json", o->model_dir);
        llmq_err te = {0};
        tokenizer *t = rt->tok ? rt->tok : access(path, R_OK) == 0 ? tok_load(o->model_dir, &te) : NULL;
        if (!t && te.code) {
            if (err) *err = te;
            st = failed(te.code, err, "tokenizer");
        } else {
            st = synth_backend_set_vocab(rt->be, &rt->m->cfg, t, err);
        }
        if (t != rt->tok) tok_destroy(t);
    }
    if (st) {
        runtime_destroy(rt);
        return st;
    }
    *out = rt;
    return LLMQ_OK;
}

void runtime_destroy(runtime *rt) {
    if (!rt) return;
    sched_destroy(rt->sch);
    eng_destroy(rt->eng);
    model_destroy(rt->m);
    tok_destroy(rt->tok);
    llmq_backend_destroy(rt->be);
    free(rt);
}
