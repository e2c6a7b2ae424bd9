/*
 * comm_single.c — the communicator of a group of one (see comm.h).
 *
 * Lets the engine call its collectives unconditionally: with world 1 the sum
 * of one buffer is the buffer and the root of a broadcast is everyone, so
 * nothing is copied except all_gather's send -> recv when the caller did not
 * gather in place.  Argument checks and the abort/poison rule are the same as
 * the shm communicator's, so code tested at TP 1 behaves the same at TP N.
 *
 * Invariant: once c->err is set (or abort was called) every op fails with it.
 */
#include <stdlib.h>
#include <string.h>

#include "common/comm.h"
#include "worker/comm/comm_util.h"

typedef struct single_impl {
    comm_abort_rec ab;    /* written by abort from any thread (comm_util.h) */
} single_impl;

/* Fail when aborted or already failed; keeps c->err written by the op
 * thread only (abort may run on another thread). */
static llmq_status single_enter(llmq_comm *c, const char *op) {
    single_impl *s = c->impl;
    if (c->err.code) return c->err.code;
    if (comm_abort_rec_claimed(&s->ab)) return comm_fail_from_abort(&c->err, &s->ab, 0, op);
    return LLMQ_OK;
}

static llmq_status single_all_reduce_sum(llmq_comm *c, void *buf, size_t count, comm_dtype dt) {
    llmq_status st = single_enter(c, "all_reduce_sum");
    if (st) return st;
    if (dt != COMM_F32 && dt != COMM_I32)
        return llmq_err_set(&c->err, LLMQ_ERR_UNSUPPORTED, "comm: all_reduce_sum of %s",
                            comm_dtype_name(dt));
    if (count && !buf) return llmq_err_set(&c->err, LLMQ_ERR_INVALID, "comm: all_reduce_sum: NULL buffer");
    return LLMQ_OK;
}

static llmq_status single_all_gather(llmq_comm *c, void *recv, const void *send, size_t count,
                                     comm_dtype dt) {
    llmq_status st = single_enter(c, "all_gather");
    if (st) return st;
    size_t es = comm_dtype_size(dt);
    if (!es) return llmq_err_set(&c->err, LLMQ_ERR_INVALID, "comm: all_gather: unknown dtype %d", (int)dt);
    if (count && (!recv || !send))
        return llmq_err_set(&c->err, LLMQ_ERR_INVALID, "comm: all_gather: NULL buffer");
    if (count && recv != send) memmove(recv, send, count * es);
    return LLMQ_OK;
}

static llmq_status single_broadcast(llmq_comm *c, void *buf, size_t bytes, int root) {
    llmq_status st = single_enter(c, "broadcast");
    if (st) return st;
    if (root != 0) return llmq_err_set(&c->err, LLMQ_ERR_INVALID, "comm: broadcast: root %d of world 1", root);
    if (bytes && !buf) return llmq_err_set(&c->err, LLMQ_ERR_INVALID, "comm: broadcast: NULL buffer");
    return LLMQ_OK;
}

static llmq_status single_barrier(llmq_comm *c) { return single_enter(c, "barrier"); }

/* The first caller wins; no reader sees a half-written reason. */
static void single_abort(llmq_comm *c, const char *reason) {
    single_impl *s = c->impl;
    comm_abort_rec_set(&s->ab, 0, LLMQ_ERR_IO, reason);
}

static void single_destroy(llmq_comm *c) {
    if (!c) return;
    free(c->impl);
    free(c);
}

static const comm_ops single_ops = {
    .name = "single",
    .all_reduce_sum = single_all_reduce_sum,
    .all_gather = single_all_gather,
    .broadcast = single_broadcast,
    .barrier = single_barrier,
    .abort = single_abort,
    .destroy = single_destroy,
};

llmq_comm *comm_single_create(llmq_err *err) {
    llmq_comm *c = calloc(1, sizeof *c);
    single_impl *s = calloc(1, sizeof *s);
    if (!c || !s) {
        free(c);
        free(s);
        llmq_err_set(err, LLMQ_ERR_NOMEM, "comm: out of memory");
        return NULL;
    }
    c->ops = &single_ops;
    c->rank = 0;
    c->world = 1;
    c->impl = s;
    return c;
}
