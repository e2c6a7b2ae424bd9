/*
 * comm_tcp.c — the communicator of ranks that do not share a host: one TCP
 * connection from every peer to the leader (see comm.h for the contract).
 *
 * Topology.  A star: rank 0 accepts world-1 connections, every collective
 * goes through it.  That is world-1 messages per direction and op at the
 * leader, which is what a group of a few hosts needs for its step plans
 * and, on CPU ranks, its activations; GPU ranks move activations over NCCL
 * (be_ops.group_comm, bootstrapped through this communicator).
 *
 * Join.  The leader listens first (comm_tcp_listen), publishes its address,
 * the generation and a random token in the rendezvous (worker/service/rdv.h), then
 * waits in comm_tcp_create until every rank has sent a hello with that
 * token, generation and world; it refuses the others (a stale generation,
 * a rank already joined, a wrong token or world) with a message, and
 * answers everyone once the group is complete.  Then it closes the
 * listening socket: nobody joins a running group.
 *
 * Frames.  Every collective is one frame each way per connection: the peer
 * sends a 32-byte header (op number, kind, count, dtype, root) and its
 * payload; the leader checks the header against its own call, and answers
 * with a header and the result.  An abort travels as a header of kind
 * ABORT followed by the origin rank, code and reason; it is sent only at a
 * frame boundary, and the connection is shut down after it (mid-frame: shut
 * down without it, so the other side sees the connection close).
 *
 * all_reduce_sum.  Peers stream their buffer; the leader takes CHUNK bytes
 * of each into a window, adds them to its own in rank order ((x0 + x1) +
 * x2 ...: comm_sum_rank_order, the same bits on every rank, whatever the
 * arrival order), and
 * streams the reduced prefix back while the next window fills.  Peers send
 * and receive in one poll loop, in place: the leader returns byte i only
 * after it has received byte i from everyone.
 *
 * Waiting.  poll() on the connections and an eventfd that comm_abort
 * writes, so an abort from another thread wakes the op at once.  A closed
 * connection is a rank that left (LLMQ_ERR_IO naming it: the kernel closes
 * a dead process's sockets at once, zombie or not); TCP keepalive finds a
 * host that vanished.  Timeouts: the leader waits c->timeout_ms for the
 * peers and names the ranks it waits for; a peer waits 25% longer (at most
 * 2 s more) for the leader, so that the leader's verdict (which rank
 * stalled) reaches it first.
 *
 * Wire format: host byte order, for little-endian hosts (x86-64, arm64).
 */

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/comm.h"
#include "worker/comm/comm_util.h"

#define TCP_MAGIC 0x4354514cu /* "LQTC" */
#define TCP_VERSION 1u
#define CHUNK ((size_t)256 << 10)
#define REASON_LEN 256

enum { K_ALL_REDUCE = 1, K_ALL_GATHER, K_BROADCAST, K_BARRIER, K_REPLY, K_ABORT };

typedef struct frame {
    uint32_t magic, kind;
    uint64_t op, count;
    uint32_t dt;
    int32_t root;
} frame;

typedef struct abort_body {
    int32_t rank, code;
    char msg[REASON_LEN];
} abort_body;

typedef struct hello {
    uint32_t magic, version;
    uint64_t generation;
    int32_t rank, world;
    char token[COMM_TCP_TOKEN_MAX + 1];
    char pad[7];
} hello;

typedef struct hello_reply {
    uint32_t magic;
    int32_t code;
    char msg[REASON_LEN];
} hello_reply;

_Static_assert(sizeof(frame) == 32, "frame layout");
_Static_assert(sizeof(abort_body) == 8 + REASON_LEN, "abort layout");

/* One connection: the leader has one per peer, a peer one to the leader. */
typedef struct conn {
    int fd;      /* -1 once closed */
    int rank;    /* the rank at the other end */
    /* receive side of the current op: header, then payload [0, rx_want),
     * byte k stored at rx_dst + (k - rx_off), read up to rx_lim */
    frame hin;
    size_t hin_got;
    abort_body ain;
    size_t ain_got;
    int rx_ready;  /* the payload expected this op is known (rx_* set) */
    int closed;    /* the other end closed after its part of an op: fails the next op */
    unsigned char *rx_dst;
    size_t rx_off, rx_got, rx_lim, rx_want;
    /* the leader only: the start of the next frame, read early */
    unsigned char pend[sizeof(frame) + sizeof(abort_body)];
    size_t pend_len;
    /* send side of the current op: header then payload, up to tx_lim bytes in all */
    frame hout;
    const unsigned char *tx_pay;
    size_t tx_pay_len, tx_off, tx_lim;
} conn;

typedef struct tcp_comm {
    llmq_comm c;
    conn *conns;  /* leader: world-1, conns[p-1] is rank p; peer: 1, the leader */
    int nconn;
    int efd;      /* eventfd, written by comm_abort */
    pthread_mutex_t op_lock; /* held by the op thread during a collective */
    comm_abort_rec ab;       /* the group's abort record (comm_util.h) */
    int spread;   /* the abort went out on the connections */
    uint64_t op;
    int kind;
    size_t count;
    comm_dtype dt;
    int root;
    unsigned char *scratch; /* leader: (world-1) * CHUNK, the reduce window */
} tcp_comm;

static const char *kind_name(uint32_t k) {
    switch (k) {
    case K_ALL_REDUCE: return "all_reduce_sum";
    case K_ALL_GATHER: return "all_gather";
    case K_BROADCAST: return "broadcast";
    case K_BARRIER: return "barrier";
    case K_REPLY: return "reply";
    case K_ABORT: return "abort";
    }
    return "?";
}

static void frame_str(char *out, size_t n, const frame *f) {
    if (f->kind == K_BROADCAST)
        snprintf(out, n, "%s #%llu (%llu bytes, root %d)", kind_name(f->kind), (unsigned long long)f->op,
                 (unsigned long long)f->count, f->root);
    else if (f->kind == K_BARRIER)
        snprintf(out, n, "%s #%llu", kind_name(f->kind), (unsigned long long)f->op);
    else
        snprintf(out, n, "%s #%llu (%llu %s)", kind_name(f->kind), (unsigned long long)f->op,
                 (unsigned long long)f->count, comm_dtype_name((comm_dtype)f->dt));
}

static void op_what(tcp_comm *t, char *out, size_t n) {
    snprintf(out, n, "%s #%llu", kind_name((uint32_t)t->kind), (unsigned long long)t->op);
}

/* ---------------------------------------------------------------- abort */

/* Wake the op thread from its poll. */
static void wake_op(tcp_comm *t) {
    uint64_t one = 1;
    if (write(t->efd, &one, sizeof one) < 0) {
        /* the counter cannot overflow with 1s; nothing else to do */
    }
}

/* Record the group's abort (first caller wins) and wake the op thread. */
static void record_abort(tcp_comm *t, int rank, llmq_status code, const char *msg) {
    comm_abort_rec_set(&t->ab, rank, code, msg);
    wake_op(t);
}

/* Write all of p[0..n) on a blocking-or-not socket within ~200 ms. */
static int send_all_brief(int fd, const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t until = comm_now_ns() + 200000000ull;
    while (n) {
        ssize_t w = send(fd, b, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            b += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && comm_now_ns() < until) {
            struct pollfd pf = {fd, POLLOUT, 0};
            poll(&pf, 1, 20);
            continue;
        }
        return -1;
    }
    return 0;
}

/* Tell the other ends (op thread only): an abort frame on every connection
 * that stands at a frame boundary, then shut every connection down. */
static void spread_abort(tcp_comm *t) {
    if (t->spread) return;
    t->spread = 1;
    frame f = {TCP_MAGIC, K_ABORT, t->op, 0, 0, 0};
    abort_body b;
    memset(&b, 0, sizeof b);
    b.rank = t->c.rank;
    b.code = LLMQ_ERR_IO;
    snprintf(b.msg, sizeof b.msg, "abort (no reason recorded)");
    if (comm_abort_rec_wait(&t->ab)) {
        b.rank = t->ab.rank;
        b.code = t->ab.code;
        snprintf(b.msg, sizeof b.msg, "%.*s", REASON_LEN - 1, t->ab.msg); /* the frame carries less */
    }
    for (int i = 0; i < t->nconn; i++) {
        conn *k = &t->conns[i];
        if (k->fd < 0) continue;
        size_t total = sizeof(frame) + k->tx_pay_len;
        if (k->tx_off == 0 || k->tx_off == total) {
            if (!send_all_brief(k->fd, &f, sizeof f)) send_all_brief(k->fd, &b, sizeof b);
        }
        shutdown(k->fd, SHUT_RDWR);
    }
}

/* This rank's error from the group's abort record. */
static llmq_status fail_from_abort(tcp_comm *t) {
    char what[64];
    op_what(t, what, sizeof what);
    llmq_status code = comm_fail_from_abort(&t->c.err, &t->ab, t->c.rank, what);
    spread_abort(t);
    return code;
}

/* A failure seen by this rank: "comm rank R: <what>: <cause>" here, and
 * the group aborted with "<cause> (<what>)", as much of it as an abort
 * frame carries. */
__attribute__((format(printf, 3, 4))) static llmq_status fail(tcp_comm *t, llmq_status code, const char *fmt, ...) {
    char what[64];
    op_what(t, what, sizeof what);
    va_list ap;
    va_start(ap, fmt);
    comm_fail_record(&t->c.err, &t->ab, t->c.rank, what, REASON_LEN, code, fmt, ap);
    va_end(ap);
    wake_op(t);
    spread_abort(t);
    return code;
}

/* -------------------------------------------------------------- the pump */

static int rx_done(const conn *k) {
    return k->hin_got == sizeof(frame) && k->hin.kind != K_ABORT && k->rx_got == k->rx_want;
}

/* The leader: start the op's header (and an abort's body) from the bytes
 * of the peer's next frame read early. */
static void absorb_pend(conn *k) {
    size_t m = k->pend_len < sizeof(frame) ? k->pend_len : sizeof(frame);
    memcpy(&k->hin, k->pend, m);
    k->hin_got = m;
    size_t b = 0;
    if (m == sizeof(frame) && k->hin.kind == K_ABORT) {
        b = k->pend_len - m;
        memcpy(&k->ain, k->pend + m, b);
        k->ain_got = b;
    }
    memmove(k->pend, k->pend + m + b, k->pend_len - m - b);
    k->pend_len -= m + b;
}
static int tx_total_done(const conn *k) { return k->tx_off == sizeof(frame) + k->tx_pay_len; }

/* Read what the socket has for this connection's current state.  Returns
 * 0, or -1 with *eof set (closed) or errno kept (error). */
static int conn_read(tcp_comm *t, conn *k, int *eof) {
    for (;;) {
        unsigned char *dst;
        size_t n;
        /* (bytes of this frame read early sit in pend only until op_begin
         * moves them into hin/ain: absorb_pend) */
        if (k->hin_got < sizeof(frame)) {
            dst = (unsigned char *)&k->hin + k->hin_got;
            n = sizeof(frame) - k->hin_got;
        } else if (k->hin.kind == K_ABORT) {
            if (k->ain_got == sizeof k->ain) return 0;
            dst = (unsigned char *)&k->ain + k->ain_got;
            n = sizeof k->ain - k->ain_got;
        } else if (!k->rx_ready) {
            return 0;
        } else if (k->rx_got < k->rx_lim) {
            dst = k->rx_dst + (k->rx_got - k->rx_off);
            n = k->rx_lim - k->rx_got;
        } else if (t->c.rank == 0 && k->rx_ready && k->rx_got == k->rx_want) {
            /* early bytes of the peer's next frame: its next header, or an abort */
            size_t cap = sizeof(frame);
            if (k->pend_len >= sizeof(frame)) {
                frame f;
                memcpy(&f, k->pend, sizeof f);
                if (f.kind == K_ABORT) cap = sizeof k->pend;
            }
            if (k->pend_len >= cap) return 0;
            dst = k->pend + k->pend_len;
            n = cap - k->pend_len;
        } else {
            return 0;
        }
        ssize_t r = recv(k->fd, dst, n, MSG_DONTWAIT);
        if (r == 0) {
            *eof = 1;
            return -1;
        }
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return -1;
        }
        if (k->hin_got < sizeof(frame)) k->hin_got += (size_t)r;
        else if (k->hin.kind == K_ABORT) k->ain_got += (size_t)r;
        else if (k->rx_got < k->rx_lim) k->rx_got += (size_t)r;
        else k->pend_len += (size_t)r;
        if ((size_t)r < n) return 0;
    }
}

static int conn_write(conn *k) {
    while (k->tx_off < k->tx_lim) {
        const unsigned char *src;
        size_t n;
        if (k->tx_off < sizeof(frame)) {
            src = (const unsigned char *)&k->hout + k->tx_off;
            n = sizeof(frame) - k->tx_off;
        } else {
            src = k->tx_pay + (k->tx_off - sizeof(frame));
            n = k->tx_lim - k->tx_off;
        }
        ssize_t w = send(k->fd, src, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return -1;
        }
        k->tx_off += (size_t)w;
    }
    return 0;
}

static int pend_has_abort(const conn *k) {
    if (k->pend_len < sizeof(frame) + sizeof(abort_body)) return 0;
    frame f;
    memcpy(&f, k->pend, sizeof f);
    return f.kind == K_ABORT;
}

/* 1 when conn_read would take bytes from the socket now (mirrors it). */
static int wants_read(const tcp_comm *t, const conn *k) {
    if (k->hin_got < sizeof(frame)) return 1;
    if (k->hin.kind == K_ABORT) return k->ain_got < sizeof k->ain;
    if (!k->rx_ready) return 0;
    if (k->rx_got < k->rx_lim) return 1;
    if (t->c.rank != 0 || k->rx_got != k->rx_want) return 0;
    if (k->pend_len < sizeof(frame)) return 1;
    frame f;
    memcpy(&f, k->pend, sizeof f);
    return f.kind == K_ABORT && k->pend_len < sizeof k->pend;
}

/* The name of the other end, for messages. */
static void peer_name(const tcp_comm *t, const conn *k, char *out, size_t n) {
    if (t->c.rank == 0) snprintf(out, n, "rank %d", k->rank);
    else snprintf(out, n, "rank 0 (the leader)");
}

/* Turn an abort frame that arrived on k into this rank's failure. */
static llmq_status abort_received(tcp_comm *t, const abort_body *b) {
    abort_body a = *b;
    a.msg[REASON_LEN - 1] = '\0';
    record_abort(t, a.rank, (llmq_status)a.code, a.msg);
    return fail_from_abort(t);
}

typedef int (*step_fn)(tcp_comm *t, void *arg); /* returns 1 when the op is complete */

/* Move bytes on every connection until step() says the op is complete,
 * or fail: a connection closed or broken, an abort (frame or comm_abort),
 * the deadline.  step() runs before every poll, to reduce and open windows. */
static llmq_status pump(tcp_comm *t, step_fn step, void *arg) {
    uint64_t t0 = comm_now_ns();
    uint64_t limit = (uint64_t)t->c.timeout_ms * 1000000ull;
    if (limit && t->c.rank > 0) {
        uint64_t grace = limit / 4 < 2000000000ull ? limit / 4 : 2000000000ull;
        limit += grace;
    }
    struct pollfd pf[COMM_TCP_MAX_WORLD + 1];
    int idx[COMM_TCP_MAX_WORLD + 1];
    for (;;) {
        if (comm_abort_rec_claimed(&t->ab)) return fail_from_abort(t);
        for (int i = 0; i < t->nconn; i++) {
            conn *k = &t->conns[i];
            if (k->hin_got == sizeof(frame) && k->hin.kind == K_ABORT && k->ain_got == sizeof k->ain)
                return abort_received(t, &k->ain);
            if (pend_has_abort(k)) {
                abort_body b;
                memcpy(&b, k->pend + sizeof(frame), sizeof b);
                return abort_received(t, &b);
            }
            if (k->hin_got == sizeof(frame) && k->hin.kind != K_ABORT &&
                (k->hin.magic != TCP_MAGIC ||
                 (t->c.rank > 0 && (k->hin.kind != K_REPLY || k->hin.op != t->op)))) {
                char nm[48];
                peer_name(t, k, nm, sizeof nm);
                return fail(t, LLMQ_ERR_FORMAT, "%s sent a frame this rank does not understand (kind %u)", nm,
                            k->hin.kind);
            }
        }
        int r = step(t, arg);
        if (r < 0) return t->c.err.code;
        if (r > 0) return LLMQ_OK;
        int n = 0;
        for (int i = 0; i < t->nconn; i++) {
            conn *k = &t->conns[i];
            short ev = 0;
            if (k->fd < 0) continue;
            if (wants_read(t, k)) ev |= POLLIN;
            if (k->tx_off < k->tx_lim) ev |= POLLOUT;
            if (!ev) continue;
            pf[n] = (struct pollfd){k->fd, ev, 0};
            idx[n++] = i;
        }
        pf[n] = (struct pollfd){t->efd, POLLIN, 0};
        idx[n] = -1;
        uint64_t el = comm_now_ns() - t0;
        int wait_ms = -1;
        if (limit) {
            if (el >= limit) break;
            wait_ms = (int)((limit - el) / 1000000ull) + 1;
        }
        int pr = poll(pf, (nfds_t)n + 1, wait_ms);
        if (pr < 0 && errno != EINTR) return fail(t, LLMQ_ERR_IO, "poll: %s", strerror(errno));
        if (pr <= 0) continue;
        for (int j = 0; j < n; j++) {
            if (!pf[j].revents) continue;
            conn *k = &t->conns[idx[j]];
            char nm[48];
            peer_name(t, k, nm, sizeof nm);
            if (pf[j].revents & (POLLIN | POLLHUP | POLLERR)) {
                int eof = 0;
                if (conn_read(t, k, &eof)) {
                    /* an abort frame may have come in just before the close */
                    if (k->hin_got == sizeof(frame) && k->hin.kind == K_ABORT && k->ain_got == sizeof k->ain)
                        return abort_received(t, &k->ain);
                    if (pend_has_abort(k)) {
                        abort_body b;
                        memcpy(&b, k->pend + sizeof(frame), sizeof b);
                        return abort_received(t, &b);
                    }
                    int e = errno;
                    close(k->fd);
                    k->fd = -1;
                    if (eof && rx_done(k) && tx_total_done(k)) { /* gone after its part: the next op fails */
                        k->closed = 1;
                        continue;
                    }
                    if (eof) return fail(t, LLMQ_ERR_IO, "%s left the group (connection closed)", nm);
                    return fail(t, LLMQ_ERR_IO, "%s left the group (%s)", nm, strerror(e));
                }
            }
            if (k->fd >= 0 && (pf[j].revents & POLLOUT) && conn_write(k)) {
                int e = errno;
                close(k->fd);
                k->fd = -1;
                return fail(t, LLMQ_ERR_IO, "%s left the group (%s)", nm, strerror(e));
            }
        }
    }
    /* the deadline */
    uint64_t waited = (comm_now_ns() - t0) / 1000000ull;
    if (t->c.rank > 0)
        return fail(t, LLMQ_ERR_TIMEOUT, "timed out after %llu ms waiting for rank 0 (the leader)",
                    (unsigned long long)waited);
    char list[256] = "";
    size_t ll = 0;
    int cnt = 0;
    for (int i = 0; i < t->nconn; i++) {
        conn *k = &t->conns[i];
        int rx_wait = k->hin_got < sizeof(frame) || k->rx_got < k->rx_lim;
        if (!rx_wait && k->tx_off >= k->tx_lim) continue;
        if (ll < sizeof list)
            ll += (size_t)snprintf(list + ll, sizeof list - ll, "%s%d%s", cnt ? ", " : "", k->rank,
                                   rx_wait ? "" : " (not reading)");
        cnt++;
    }
    return fail(t, LLMQ_ERR_TIMEOUT, "timed out after %llu ms waiting for rank%s %s", (unsigned long long)waited,
                cnt > 1 ? "s" : "", cnt ? list : "?");
}

/* ---------------------------------------------------------- collectives */

/* Start a collective: refuse when failed, take the op lock, reset every
 * connection for a new frame each way. */
static llmq_status op_begin(tcp_comm *t, int kind, size_t count, comm_dtype dt, int root) {
    t->op++;
    t->kind = kind;
    t->count = count;
    t->dt = dt;
    t->root = root;
    if (t->c.err.code) return t->c.err.code;
    if (comm_abort_rec_claimed(&t->ab)) return fail_from_abort(t);
    for (int i = 0; i < t->nconn; i++) {
        conn *k = &t->conns[i];
        if (k->closed) {
            char nm[48];
            peer_name(t, k, nm, sizeof nm);
            return fail(t, LLMQ_ERR_IO, "%s left the group (connection closed)", nm);
        }
        k->rx_ready = t->c.rank > 0;
        k->hin_got = 0;
        k->ain_got = 0;
        absorb_pend(k);
        k->rx_dst = NULL;
        k->rx_off = k->rx_got = k->rx_lim = k->rx_want = 0;
        k->hout = (frame){TCP_MAGIC, t->c.rank == 0 ? K_REPLY : (uint32_t)kind, t->op, count, (uint32_t)dt, root};
        k->tx_pay = NULL;
        k->tx_pay_len = k->tx_off = k->tx_lim = 0;
    }
    return LLMQ_OK;
}

/* Leader: 1 when every peer's header is in; fails on the first that is
 * not this collective. */
static int headers_in(tcp_comm *t) {
    frame mine = {TCP_MAGIC, (uint32_t)t->kind, t->op, t->count, (uint32_t)t->dt, t->root};
    int all = 1;
    for (int i = 0; i < t->nconn; i++) {
        conn *k = &t->conns[i];
        if (k->hin_got < sizeof(frame) || k->hin.kind == K_ABORT) { /* an abort: pump acts on it */
            all = 0;
            continue;
        }
        const frame *f = &k->hin;
        if (f->kind == mine.kind && f->op == mine.op && f->count == mine.count && f->dt == mine.dt &&
            f->root == mine.root)
            continue;
        char a[128], b[128];
        frame_str(a, sizeof a, &mine);
        frame_str(b, sizeof b, f);
        fail(t, LLMQ_ERR_INTERNAL, "collective mismatch: this rank is in %s, rank %d in %s", a, k->rank, b);
        return -1;
    }
    return all;
}

static int all_conns_done(tcp_comm *t) {
    for (int i = 0; i < t->nconn; i++)
        if (!rx_done(&t->conns[i]) || !tx_total_done(&t->conns[i])) return 0;
    return 1;
}

/* ---- peer side: send header + payload, receive reply header + payload */

static int peer_step(tcp_comm *t, void *arg) {
    (void)arg;
    return all_conns_done(t);
}

static llmq_status peer_run(tcp_comm *t, const void *send, size_t send_len, void *recv, size_t recv_len) {
    conn *k = &t->conns[0];
    k->tx_pay = send;
    k->tx_pay_len = send_len;
    k->tx_lim = sizeof(frame) + send_len;
    k->rx_dst = recv;
    k->rx_want = k->rx_lim = recv_len;
    return pump(t, peer_step, NULL);
}

/* ---- leader side */

typedef struct lead_ar {
    unsigned char *buf;
    size_t n, R, es;
    int started;
} lead_ar;

/* Reduce the window: the leader's own bytes [R, R + len) plus every peer's
 * in the scratch, in rank order, into the leader's buffer. */
static void sum_window(tcp_comm *t, lead_ar *a, size_t len) {
    const void *src[COMM_TCP_MAX_WORLD];
    src[0] = a->buf + a->R;
    for (int p = 1; p < t->c.world; p++) src[p] = t->scratch + (size_t)(p - 1) * CHUNK;
    comm_sum_rank_order(t->dt, a->buf + a->R, NULL, src, t->c.world, len / 4);
}

static int lead_ar_step(tcp_comm *t, void *arg) {
    lead_ar *a = arg;
    if (!a->started) {
        int h = headers_in(t);
        if (h <= 0) return h;
        a->started = 1;
        size_t lim = a->n < CHUNK ? a->n : CHUNK;
        for (int i = 0; i < t->nconn; i++) {
            conn *k = &t->conns[i];
            k->rx_ready = 1;
            k->rx_dst = t->scratch + (size_t)i * CHUNK;
            k->rx_off = 0;
            k->rx_want = a->n;
            k->rx_lim = lim;
            k->tx_pay = a->buf;
            k->tx_pay_len = a->n;
        }
    }
    for (;;) {
        if (a->R == a->n) break;
        size_t end = a->n - a->R < CHUNK ? a->n : a->R + CHUNK;
        for (int i = 0; i < t->nconn; i++)
            if (t->conns[i].rx_got < end) return all_conns_done(t);
        sum_window(t, a, end - a->R);
        a->R = end;
        size_t next = a->n - a->R < CHUNK ? a->n : a->R + CHUNK;
        for (int i = 0; i < t->nconn; i++) {
            conn *k = &t->conns[i];
            k->rx_off = a->R;
            k->rx_lim = next;
            k->tx_lim = sizeof(frame) + a->R;
        }
    }
    return all_conns_done(t);
}

/* The leader's step of the relay collectives (all_gather, broadcast,
 * barrier): the op has set each connection's payload in (rx_*) and out
 * (tx_pay*) before pumping.  Once every header matches, the payloads may
 * come in; once they all have, every answer goes out.  phase: 0 headers,
 * 1 payloads in, 2 answers out. */
static int lead_relay_step(tcp_comm *t, void *arg) {
    int *phase = arg;
    if (*phase == 0) {
        int h = headers_in(t);
        if (h <= 0) return h;
        for (int i = 0; i < t->nconn; i++) t->conns[i].rx_ready = 1;
        *phase = 1;
    }
    if (*phase == 1) {
        for (int i = 0; i < t->nconn; i++)
            if (!rx_done(&t->conns[i])) return 0;
        for (int i = 0; i < t->nconn; i++) t->conns[i].tx_lim = sizeof(frame) + t->conns[i].tx_pay_len;
        *phase = 2;
    }
    return all_conns_done(t);
}

static llmq_status lead_relay(tcp_comm *t) {
    int phase = 0;
    return pump(t, lead_relay_step, &phase);
}

static llmq_status bad_arg(tcp_comm *t, const char *why) { return fail(t, LLMQ_ERR_INVALID, "%s", why); }

static llmq_status tcp_all_reduce_sum(llmq_comm *c, void *buf, size_t count, comm_dtype dt) {
    tcp_comm *t = c->impl;
    pthread_mutex_lock(&t->op_lock);
    llmq_status st = op_begin(t, K_ALL_REDUCE, count, dt, 0);
    if (st) goto out;
    if (dt != COMM_F32 && dt != COMM_I32) {
        st = fail(t, LLMQ_ERR_UNSUPPORTED, "sum of %s", comm_dtype_name(dt));
        goto out;
    }
    if (count && !buf) {
        st = bad_arg(t, "NULL buffer");
        goto out;
    }
    if (!count || c->world == 1) goto out;
    size_t n = count * 4;
    if (c->rank > 0) {
        st = peer_run(t, buf, n, buf, n);
    } else {
        lead_ar a = {buf, n, 0, 4, 0};
        st = pump(t, lead_ar_step, &a);
    }
out:
    pthread_mutex_unlock(&t->op_lock);
    return st;
}

static llmq_status tcp_all_gather(llmq_comm *c, void *recv, const void *send, size_t count, comm_dtype dt) {
    tcp_comm *t = c->impl;
    pthread_mutex_lock(&t->op_lock);
    llmq_status st = op_begin(t, K_ALL_GATHER, count, dt, 0);
    if (st) goto out;
    size_t es = comm_dtype_size(dt);
    if (!es) {
        st = bad_arg(t, "unknown dtype");
        goto out;
    }
    if (count && (!recv || !send)) {
        st = bad_arg(t, "NULL buffer");
        goto out;
    }
    if (!count) goto out;
    size_t n = count * es;
    unsigned char *r = recv;
    if ((const unsigned char *)send != r + (size_t)c->rank * n) {
        if (c->rank == 0 || c->world == 1) memcpy(r + (size_t)c->rank * n, send, n);
    }
    if (c->world == 1) goto out;
    if (c->rank > 0) {
        st = peer_run(t, send, n, recv, n * (size_t)c->world);
    } else {
        for (int i = 0; i < t->nconn; i++) { /* each peer's part in place, everything back */
            conn *k = &t->conns[i];
            k->rx_dst = r + (size_t)k->rank * n;
            k->rx_want = k->rx_lim = n;
            k->tx_pay = r;
            k->tx_pay_len = n * (size_t)c->world;
        }
        st = lead_relay(t);
    }
out:
    pthread_mutex_unlock(&t->op_lock);
    return st;
}

static llmq_status tcp_broadcast(llmq_comm *c, void *buf, size_t bytes, int root) {
    tcp_comm *t = c->impl;
    pthread_mutex_lock(&t->op_lock);
    llmq_status st = op_begin(t, K_BROADCAST, bytes, COMM_U8, root);
    if (st) goto out;
    if (root < 0 || root >= c->world) {
        st = bad_arg(t, "root out of range");
        goto out;
    }
    if (bytes && !buf) {
        st = bad_arg(t, "NULL buffer");
        goto out;
    }
    if (!bytes || c->world == 1) goto out;
    if (c->rank > 0) {
        int mine = c->rank == root;
        st = peer_run(t, mine ? buf : NULL, mine ? bytes : 0, mine ? NULL : buf, mine ? 0 : bytes);
    } else {
        for (int i = 0; i < t->nconn; i++) { /* from the root (a peer, or this rank) to the others */
            conn *k = &t->conns[i];
            if (k->rank == root) {
                k->rx_dst = buf;
                k->rx_want = k->rx_lim = bytes;
            } else {
                k->tx_pay = buf;
                k->tx_pay_len = bytes;
            }
        }
        st = lead_relay(t);
    }
out:
    pthread_mutex_unlock(&t->op_lock);
    return st;
}

static llmq_status tcp_barrier(llmq_comm *c) {
    tcp_comm *t = c->impl;
    pthread_mutex_lock(&t->op_lock);
    llmq_status st = op_begin(t, K_BARRIER, 0, COMM_U8, 0);
    if (!st && c->world > 1) {
        if (c->rank > 0) {
            st = peer_run(t, NULL, 0, NULL, 0);
        } else {
            st = lead_relay(t);
        }
    }
    pthread_mutex_unlock(&t->op_lock);
    return st;
}

static void tcp_abort(llmq_comm *c, const char *reason) {
    tcp_comm *t = c->impl;
    record_abort(t, c->rank, LLMQ_ERR_IO, reason && *reason ? reason : "abort");
    /* No collective running: tell the others now (one running sees the
     * eventfd and does it itself). */
    if (!pthread_mutex_trylock(&t->op_lock)) {
        spread_abort(t);
        pthread_mutex_unlock(&t->op_lock);
    }
}

static void tcp_destroy(llmq_comm *c) {
    if (!c) return;
    tcp_comm *t = c->impl;
    for (int i = 0; i < t->nconn; i++)
        if (t->conns[i].fd >= 0) close(t->conns[i].fd);
    if (t->efd >= 0) close(t->efd);
    pthread_mutex_destroy(&t->op_lock);
    free(t->conns);
    free(t->scratch);
    free(t);
}

static const comm_ops tcp_ops = {
    .name = "tcp",
    .all_reduce_sum = tcp_all_reduce_sum,
    .all_gather = tcp_all_gather,
    .broadcast = tcp_broadcast,
    .barrier = tcp_barrier,
    .abort = tcp_abort,
    .destroy = tcp_destroy,
};

/* ------------------------------------------------------------------ join */

static void sock_tune(int fd) {
    int one = 1, idle = 5, intvl = 2, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* Read exactly n bytes before the deadline (ns, monotonic).  0, or -1 with
 * *why set. */
static int read_full(int fd, void *p, size_t n, uint64_t deadline, const char **why) {
    unsigned char *b = p;
    while (n) {
        ssize_t r = recv(fd, b, n, MSG_DONTWAIT);
        if (r > 0) {
            b += r;
            n -= (size_t)r;
            continue;
        }
        if (r == 0) {
            *why = "connection closed";
            return -1;
        }
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            *why = strerror(errno);
            return -1;
        }
        uint64_t now = comm_now_ns();
        if (now >= deadline) {
            *why = "timed out";
            return -1;
        }
        struct pollfd pf = {fd, POLLIN, 0};
        uint64_t left_ms = (deadline - now) / 1000000ull + 1;
        poll(&pf, 1, left_ms > 1000 ? 1000 : (int)left_ms);
    }
    return 0;
}

static int split_hostport(const char *s, char *host, size_t hn, char *port, size_t pn) {
    const char *colon;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':') return -1;
        snprintf(host, hn, "%.*s", (int)(end - s - 1), s + 1);
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || colon == s) return -1;
        snprintf(host, hn, "%.*s", (int)(colon - s), s);
    }
    snprintf(port, pn, "%s", colon + 1);
    char *e;
    long v = strtol(port, &e, 10);
    return *port && !*e && v > 0 && v < 65536 ? 0 : -1;
}

int comm_tcp_listen(const char *host, int port, int *bound_port, llmq_err *err) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int gr = getaddrinfo(host && *host ? host : NULL, ps, &hints, &res);
    if (gr) {
        llmq_err_set(err, LLMQ_ERR_IO, "comm: cannot listen on %s:%d: %s", host ? host : "*", port, gai_strerror(gr));
        return -1;
    }
    int fd = -1, e = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (!bind(fd, ai->ai_addr, ai->ai_addrlen) && !listen(fd, COMM_TCP_MAX_WORLD)) break;
        e = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        llmq_err_set(err, LLMQ_ERR_IO, "comm: cannot listen on %s:%d: %s", host ? host : "*", port, strerror(e));
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    if (bound_port)
        *bound_port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                               : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

static void send_reply(int fd, llmq_status code, const char *msg) {
    hello_reply r;
    memset(&r, 0, sizeof r);
    r.magic = TCP_MAGIC;
    r.code = (int32_t)code;
    snprintf(r.msg, sizeof r.msg, "%.250s", msg);
    send_all_brief(fd, &r, sizeof r);
}

/* Rank 0: accept until every rank has joined or the deadline. */
static llmq_status leader_join(tcp_comm *t, const comm_tcp_config *cfg, uint64_t deadline, llmq_err *err) {
    const int world = cfg->world;
    int cand[COMM_TCP_MAX_WORLD * 2];
    size_t cgot[COMM_TCP_MAX_WORLD * 2];
    hello ch[COMM_TCP_MAX_WORLD * 2];
    int ncand = 0, joined = 0;
    llmq_status st = LLMQ_OK;
    while (joined < world - 1) {
        uint64_t now = comm_now_ns();
        if (now >= deadline) {
            char list[256] = "";
            size_t ll = 0;
            int cnt = 0;
            for (int p = 1; p < world; p++) {
                if (t->conns[p - 1].fd >= 0) continue;
                if (ll < sizeof list) ll += (size_t)snprintf(list + ll, sizeof list - ll, "%s%d", cnt ? ", " : "", p);
                cnt++;
            }
            st = llmq_err_set(err, LLMQ_ERR_TIMEOUT, "comm rank 0: rank%s %s never joined (within %d ms)",
                              cnt > 1 ? "s" : "", list, cfg->join_timeout_ms);
            break;
        }
        struct pollfd pf[COMM_TCP_MAX_WORLD * 2 + 1];
        pf[0] = (struct pollfd){cfg->listen_fd, POLLIN, 0};
        for (int i = 0; i < ncand; i++) pf[i + 1] = (struct pollfd){cand[i], POLLIN, 0};
        uint64_t left_ms = (deadline - now) / 1000000ull + 1;
        int pr = poll(pf, (nfds_t)ncand + 1, left_ms > 1000 ? 1000 : (int)left_ms);
        if (pr <= 0) continue;
        /* hellos in progress */
        for (int i = ncand - 1; i >= 0; i--) {
            if (!pf[i + 1].revents) continue;
            ssize_t r = recv(cand[i], (unsigned char *)&ch[i] + cgot[i], sizeof(hello) - cgot[i], MSG_DONTWAIT);
            int drop = 0;
            if (r > 0) cgot[i] += (size_t)r;
            else if (r == 0 || (errno != EAGAIN && errno != EINTR && errno != EWOULDBLOCK)) drop = 1;
            if (!drop && cgot[i] == sizeof(hello)) {
                hello *h = &ch[i];
                char why[REASON_LEN] = "";
                h->token[COMM_TCP_TOKEN_MAX] = '\0';
                if (h->magic != TCP_MAGIC || h->version != TCP_VERSION)
                    snprintf(why, sizeof why, "not an llmq group of this version");
                else if (strcmp(h->token, cfg->token ? cfg->token : ""))
                    snprintf(why, sizeof why, "wrong group token (another group's rank?)");
                else if (h->generation < cfg->generation)
                    snprintf(why, sizeof why, "stale generation %llu: the group is at generation %llu",
                             (unsigned long long)h->generation, (unsigned long long)cfg->generation);
                else if (h->generation > cfg->generation)
                    snprintf(why, sizeof why, "generation %llu is newer than this leader's %llu (a stale leader)",
                             (unsigned long long)h->generation, (unsigned long long)cfg->generation);
                else if (h->world != world)
                    snprintf(why, sizeof why, "world %d, but the group has world %d", h->world, world);
                else if (h->rank < 1 || h->rank >= world)
                    snprintf(why, sizeof why, "rank %d is not a peer rank of a group of %d", h->rank, world);
                else if (t->conns[h->rank - 1].fd >= 0)
                    snprintf(why, sizeof why, "rank %d already joined", h->rank);
                if (why[0]) {
                    send_reply(cand[i], LLMQ_ERR_INVALID, why);
                    drop = 1;
                } else {
                    t->conns[h->rank - 1].fd = cand[i];
                    joined++;
                    cand[i] = -1;
                    drop = 1;
                }
            }
            if (drop) {
                if (cand[i] >= 0) close(cand[i]);
                cand[i] = cand[ncand - 1];
                cgot[i] = cgot[ncand - 1];
                ch[i] = ch[ncand - 1];
                ncand--;
            }
        }
        if ((pf[0].revents & POLLIN) && ncand < COMM_TCP_MAX_WORLD * 2) {
            int fd = accept4(cfg->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd >= 0) {
                cand[ncand] = fd;
                cgot[ncand] = 0;
                ncand++;
            }
        }
    }
    for (int i = 0; i < ncand; i++) {
        send_reply(cand[i], LLMQ_ERR_INVALID, st ? "the group did not form" : "the group is complete");
        close(cand[i]);
    }
    if (st) {
        for (int p = 1; p < world; p++)
            if (t->conns[p - 1].fd >= 0) send_reply(t->conns[p - 1].fd, st, err->msg);
        return st;
    }
    for (int p = 1; p < world; p++) {
        sock_tune(t->conns[p - 1].fd);
        send_reply(t->conns[p - 1].fd, LLMQ_OK, "joined");
    }
    return LLMQ_OK;
}

/* Rank > 0: connect (retrying while the leader is not there yet), hello,
 * wait for the leader's answer. */
static llmq_status peer_join(tcp_comm *t, const comm_tcp_config *cfg, uint64_t deadline, llmq_err *err) {
    char host[256], port[16];
    if (!cfg->leader || split_hostport(cfg->leader, host, sizeof host, port, sizeof port))
        return llmq_err_set(err, LLMQ_ERR_INVALID, "comm rank %d: leader address '%s' is not host:port", cfg->rank,
                            cfg->leader ? cfg->leader : "");
    const char *why = "no attempt";
    char whybuf[128];
    int fd = -1;
    while (comm_now_ns() < deadline) {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        int gr = getaddrinfo(host, port, &hints, &res);
        if (gr) {
            snprintf(whybuf, sizeof whybuf, "%s", gai_strerror(gr));
            why = whybuf;
        }
        for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
            fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
            if (fd < 0) continue;
            if (connect(fd, ai->ai_addr, ai->ai_addrlen)) {
                snprintf(whybuf, sizeof whybuf, "%s", strerror(errno));
                why = whybuf;
                close(fd);
                fd = -1;
            }
        }
        if (res) freeaddrinfo(res);
        if (fd >= 0) break;
        struct timespec ts = {0, 100000000L};
        nanosleep(&ts, NULL);
    }
    if (fd < 0)
        return llmq_err_set(err, LLMQ_ERR_TIMEOUT, "comm rank %d: cannot reach the leader at %s within %d ms: %s",
                            cfg->rank, cfg->leader, cfg->join_timeout_ms, why);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    hello h;
    memset(&h, 0, sizeof h);
    h.magic = TCP_MAGIC;
    h.version = TCP_VERSION;
    h.generation = cfg->generation;
    h.rank = cfg->rank;
    h.world = cfg->world;
    snprintf(h.token, sizeof h.token, "%s", cfg->token ? cfg->token : "");
    hello_reply r;
    int bad = send_all_brief(fd, &h, sizeof h);
    if (bad) why = "the connection broke";
    else bad = read_full(fd, &r, sizeof r, deadline, &why);
    if (bad) {
        close(fd);
        return llmq_err_set(err, LLMQ_ERR_TIMEOUT, "comm rank %d: the leader at %s did not complete the group: %s",
                            cfg->rank, cfg->leader, why);
    }
    r.msg[REASON_LEN - 1] = '\0';
    if (r.magic != TCP_MAGIC) {
        close(fd);
        return llmq_err_set(err, LLMQ_ERR_FORMAT, "comm rank %d: %s is not an llmq group leader", cfg->rank,
                            cfg->leader);
    }
    if (r.code) {
        close(fd);
        return llmq_err_set(err, (llmq_status)r.code, "comm rank %d: refused by the leader at %s: %s", cfg->rank,
                            cfg->leader, r.msg);
    }
    sock_tune(fd);
    t->conns[0].fd = fd;
    return LLMQ_OK;
}

llmq_comm *comm_tcp_create(const comm_tcp_config *cfg, llmq_err *err) {
    if (cfg->world < 1 || cfg->world > COMM_TCP_MAX_WORLD || cfg->rank < 0 || cfg->rank >= cfg->world) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "comm: rank %d of world %d (world must be 1..%d)", cfg->rank, cfg->world,
                     COMM_TCP_MAX_WORLD);
        return NULL;
    }
    if (cfg->timeout_ms < 0 || cfg->join_timeout_ms < 0) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "comm: negative timeout");
        return NULL;
    }
    if (cfg->token && strlen(cfg->token) > COMM_TCP_TOKEN_MAX) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "comm: token longer than %d", COMM_TCP_TOKEN_MAX);
        return NULL;
    }
    if (cfg->rank == 0 && cfg->world > 1 && cfg->listen_fd < 0) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "comm: rank 0 needs a listening socket (comm_tcp_listen)");
        return NULL;
    }
    tcp_comm *t = calloc(1, sizeof *t);
    if (!t) {
        llmq_err_set(err, LLMQ_ERR_NOMEM, "comm: out of memory");
        return NULL;
    }
    t->c.ops = &tcp_ops;
    t->c.rank = cfg->rank;
    t->c.world = cfg->world;
    t->c.timeout_ms = cfg->timeout_ms;
    t->c.impl = t;
    t->nconn = cfg->rank == 0 ? cfg->world - 1 : 1;
    t->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&t->op_lock, NULL);
    t->conns = calloc((size_t)(t->nconn ? t->nconn : 1), sizeof *t->conns);
    if (cfg->rank == 0 && t->nconn) t->scratch = malloc((size_t)t->nconn * CHUNK);
    if (t->efd < 0 || !t->conns || (cfg->rank == 0 && t->nconn && !t->scratch)) {
        llmq_err_set(err, LLMQ_ERR_NOMEM, "comm: out of memory or descriptors");
        if (cfg->rank == 0 && cfg->listen_fd >= 0) close(cfg->listen_fd);
        tcp_destroy(&t->c);
        return NULL;
    }
    for (int i = 0; i < t->nconn; i++) {
        t->conns[i].fd = -1;
        t->conns[i].rank = cfg->rank == 0 ? i + 1 : 0;
    }
    int jt = cfg->join_timeout_ms ? cfg->join_timeout_ms : cfg->timeout_ms;
    uint64_t deadline = jt ? comm_now_ns() + (uint64_t)jt * 1000000ull : UINT64_MAX;
    llmq_status st = LLMQ_OK;
    if (cfg->world > 1) st = cfg->rank == 0 ? leader_join(t, cfg, deadline, err) : peer_join(t, cfg, deadline, err);
    if (cfg->rank == 0 && cfg->listen_fd >= 0) close(cfg->listen_fd);
    if (st) {
        tcp_destroy(&t->c);
        return NULL;
    }
    return &t->c;
}
