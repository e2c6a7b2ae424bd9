/*
 * comm_shm.c — the communicator of CPU ranks on one host: separate processes
 * sharing one POSIX shared-memory segment (see comm.h for the contract).
 *
 * Segment layout (created by rank 0, sized once):
 *
 *   shm_hdr                      magic, generation, geometry, abort record
 *   shm_rank[world]              per rank: round counter, pid, futex bell
 *   buffers[world][2]            per rank and parity: shm_desc + slot_bytes
 *
 * Rounds.  Every collective is a sequence of rounds; a round is "write my
 * buffer, publish my round number, wait until every peer has published it,
 * read the peers' buffers".  Round s uses buffer parity s % 2.  Because a
 * rank publishes round s+1 only after it finished reading the buffers of
 * round s, and writes buffer parity (s+1) % 2 only after waiting round s,
 * a buffer is never rewritten while a peer may still read it: one wait per
 * round is the only synchronisation.  Round counters are 64-bit and only
 * grow; round 1 is the join.
 *
 * Waiting.  A short spin (cpu_relax, then sched_yield so that ranks sharing
 * a CPU hand it over), then sleep on the rank's own futex
 * word `bell` in slices of at most SLICE_NS; a rank that publishes bumps and
 * wakes the bell of every peer whose `sleeping` flag is up.  The flag is set
 * before the bell is read and the round counters re-checked (all seq_cst),
 * so a wake-up is never lost; the slice bounds the damage if one were.
 * Between slices the waiter checks the peers it still waits for: gone
 * (destroy ran), no such pid, or a zombie (/proc/<pid>/stat state Z/X, since
 * kill(pid, 0) succeeds on an unreaped child) -> LLMQ_ERR_IO naming the rank;
 * past the timeout -> LLMQ_ERR_TIMEOUT naming every rank that did not arrive.
 *
 * Failure.  Any error on any rank (timeout, dead peer, bad argument, two
 * ranks in different collectives) aborts the group: the first writer of the
 * abort record in the header (comm_util.h) stores its rank, code and
 * cause, then bumps every bell.  Waiters check the record every iteration, so all ranks
 * fail within a slice with the same cause.  The communicator then stays
 * failed (c->err).
 *
 * Determinism.  all_reduce_sum adds element i as ((x_0 + x_1) + x_2) + ...
 * (comm_sum_rank_order) on exactly one path: one-shot (every rank sums all
 * inputs itself) or reduce-scatter (rank p sums part p of a chunk, the
 * others copy it).  Both give the same bits on every rank, whatever the
 * arrival order.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common/comm.h"
#include "worker/comm/comm_util.h"

#define SHM_MAGIC 0x4d43514cu /* "LQCM" */
#define SHM_VERSION 1u
#define SHM_ALIGN 64          /* data alignment inside a buffer */
#define SHM_PAGE 4096
#define SLICE_NS 10000000ull  /* longest futex sleep between checks: 10 ms */
#define CHECK_NS 2000000ull   /* liveness checks at most every 2 ms */
#define DEFAULT_SPIN_US 50
#define YIELD_AFTER_NS 3000ull /* pure spinning before the spin starts to yield */
#define DEFAULT_ONESHOT ((size_t)32 << 10)
#define MIN_SLOT ((size_t)4096)

/* ---------------------------------------------------------------- layout */

typedef struct shm_hdr {
    _Atomic uint32_t magic;      /* SHM_MAGIC, stored last (release) by rank 0 */
    uint32_t version;            /* SHM_VERSION */
    uint32_t world;              /* ranks in the group */
    uint32_t pad0;
    uint64_t generation;         /* group generation from the rendezvous */
    uint64_t slot_bytes;         /* data bytes of one buffer, multiple of SHM_ALIGN */
    uint64_t buf_stride;         /* bytes from one buffer to the next (page multiple) */
    uint64_t data_off;           /* offset of buffer (rank 0, parity 0) */
    uint64_t total_bytes;        /* size of the segment */
    uint64_t oneshot_max;        /* all_reduce bytes done in one round (same on all ranks) */
    comm_abort_rec abort;        /* the group's abort record (comm_util.h) */
} shm_hdr;

/* Version 1 of the segment: the record replaced four fields of this layout. */
_Static_assert(sizeof(comm_abort_rec) == 4 + 4 + 4 + 384, "abort record layout");

/* One rank's shared state.  The first line is written by its owner only,
 * the second by the others (bell); they are kept apart so that ringing a
 * bell does not steal the line the owner's peers poll. */
typedef struct shm_rank {
    _Alignas(128) _Atomic uint64_t seq; /* last round this rank published */
    _Atomic uint64_t op;                /* serial of the collective it last entered */
    _Atomic uint64_t beat_ns;           /* CLOCK_MONOTONIC: last entry or wake-up */
    _Atomic int32_t pid;                /* 0 until the rank joined */
    _Atomic uint32_t left;              /* 1 once the rank destroyed its communicator */
    _Alignas(128) _Atomic uint32_t bell;/* futex word; bumped to wake the owner */
    _Atomic uint32_t sleeping;          /* 1 while the owner may sleep on bell */
} shm_rank;

enum { OP_JOIN = 1, OP_BARRIER, OP_ALL_REDUCE, OP_ALL_GATHER, OP_BROADCAST };

static const char *op_name(uint32_t kind) {
    switch (kind) {
    case OP_JOIN: return "join";
    case OP_BARRIER: return "barrier";
    case OP_ALL_REDUCE: return "all_reduce_sum";
    case OP_ALL_GATHER: return "all_gather";
    case OP_BROADCAST: return "broadcast";
    }
    return "?";
}

/* What a rank is doing, stamped at the head of its buffer in the first round
 * of each collective and compared by every peer. */
typedef struct shm_desc {
    uint64_t op;     /* collective serial (1, 2, ...) */
    uint64_t count;  /* elements (all_reduce, all_gather) or bytes (broadcast) */
    uint32_t kind;   /* OP_* */
    uint32_t dt;     /* comm_dtype */
    int32_t root;    /* broadcast root, else 0 */
    uint32_t pad;
} shm_desc;

/* ------------------------------------------------------------ local state */

typedef struct shm_comm {
    llmq_comm c;          /* public part; c.impl points back here */
    char name[256];       /* segment name (for unlink) */
    unsigned char *base;  /* the mapping */
    size_t map_bytes;
    shm_hdr *hdr;
    shm_rank *ranks;      /* [world] */
    uint64_t seq;         /* last round this rank published */
    uint64_t op;          /* serial of the current/last collective */
    uint32_t kind;        /* OP_* of that collective (OP_JOIN while joining) */
    char what[64];        /* "all_reduce_sum #12": formatted on error paths only */
    uint64_t spin_ns;     /* busy-wait budget per wait */
    uint64_t last_check;  /* comm_now_ns() of the last liveness check */
    int unlinked;         /* rank 0: name already removed */
} shm_comm;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Name of the current collective for messages ("all_reduce_sum #12"). */
static const char *op_what(shm_comm *s) {
    if (s->kind == OP_JOIN) return "join";
    snprintf(s->what, sizeof s->what, "%s #%llu", op_name(s->kind), (unsigned long long)s->op);
    return s->what;
}

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* Buffer of rank q for round `round` (parity round % 2): descriptor, then data. */
static shm_desc *buf_desc(shm_comm *s, int q, uint64_t round) {
    size_t i = (size_t)q * 2 + (size_t)(round & 1);
    return (shm_desc *)(s->base + s->hdr->data_off + i * s->hdr->buf_stride);
}
static unsigned char *buf_data(shm_comm *s, int q, uint64_t round) {
    return (unsigned char *)buf_desc(s, q, round) + SHM_ALIGN;
}

/* Wait while *w == val, at most timeout_ns.  Shared (not private) futex:
 * the word lives in a mapping several processes share. */
static void futex_wait(_Atomic uint32_t *w, uint32_t val, uint64_t timeout_ns) {
    struct timespec ts = {(time_t)(timeout_ns / 1000000000ull), (long)(timeout_ns % 1000000000ull)};
    syscall(SYS_futex, (void *)w, FUTEX_WAIT, val, &ts, NULL, 0);
}
static void futex_wake(_Atomic uint32_t *w, int n) {
    syscall(SYS_futex, (void *)w, FUTEX_WAKE, n, NULL, NULL, 0);
}

static void ring(shm_rank *r, int all) {
    atomic_fetch_add(&r->bell, 1);
    futex_wake(&r->bell, all ? INT_MAX : 1);
}

/* ------------------------------------------------------------------ abort */

/* Write the group's abort record (first caller wins) and wake every rank.
 * Touches only the shared segment and immutable fields of s, so any thread
 * may call it while another runs a collective.  No allocation, no stdio. */
static void group_abort(shm_comm *s, llmq_status code, const char *cause) {
    comm_abort_rec_set(&s->hdr->abort, s->c.rank, code, cause);
    for (int q = 0; q < s->c.world; q++) ring(&s->ranks[q], 1);
}

/* Turn the group's abort record into this rank's error. */
static llmq_status fail_from_abort(shm_comm *s) {
    return comm_fail_from_abort(&s->c.err, &s->hdr->abort, s->c.rank, op_what(s));
}

/* Record a failure of this rank ("comm rank R: <what>: <cause>"), abort
 * the group with the cause "<cause> (<what>)" (the record keeps R) and
 * wake every rank. */
__attribute__((format(printf, 3, 4)))
static llmq_status fail(shm_comm *s, llmq_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    comm_fail_record(&s->c.err, &s->hdr->abort, s->c.rank, op_what(s), COMM_ABORT_MSG, code, fmt, ap);
    va_end(ap);
    for (int q = 0; q < s->c.world; q++) ring(&s->ranks[q], 1);
    return code;
}

/* ------------------------------------------------------------- liveness */

/* 1 when rank q's process is gone: it left the group, its pid no longer
 * exists, or it is a zombie waiting to be reaped.  *why says which. */
static int rank_gone(shm_comm *s, int q, const char **why) {
    shm_rank *r = &s->ranks[q];
    pid_t pid = atomic_load(&r->pid);
    if (atomic_load(&r->left)) {
        *why = "left the group";
        return 1;
    }
    if (pid <= 0) return 0;
    if (kill(pid, 0) != 0 && errno == ESRCH) {
        *why = "is gone (no such process)";
        return 1;
    }
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')'); /* the command name may hold ')' */
    if (paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X')) {
        *why = "is gone (exited, not yet reaped)";
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ rounds */

/* Publish round ++s->seq: the buffer of this round is complete.  Rings the
 * peers that may be asleep. */
static void publish(shm_comm *s) {
    shm_rank *me = &s->ranks[s->c.rank];
    atomic_store(&me->seq, ++s->seq); /* seq_cst: ordered before the loads of `sleeping` */
    for (int q = 0; q < s->c.world; q++)
        if (q != s->c.rank && atomic_load(&s->ranks[q].sleeping)) ring(&s->ranks[q], 0);
}

/* Index of the first peer that has not published round `want`, or -1. */
static int first_missing(shm_comm *s, uint64_t want, int from) {
    for (int q = from; q < s->c.world; q++)
        if (q != s->c.rank && atomic_load_explicit(&s->ranks[q].seq, memory_order_acquire) < want)
            return q;
    return -1;
}

/* LLMQ_ERR_TIMEOUT naming every rank that has not published round want. */
static llmq_status timeout_error(shm_comm *s, uint64_t want, uint64_t waited_ns,
                                 uint64_t now) {
    char list[256] = "", detail[256] = "";
    size_t ll = 0, dl = 0;
    int n = 0;
    for (int q = 0; q < s->c.world; q++) {
        if (q == s->c.rank || atomic_load(&s->ranks[q].seq) >= want) continue;
        shm_rank *r = &s->ranks[q];
        pid_t pid = atomic_load(&r->pid);
        if (ll < sizeof list) ll += (size_t)snprintf(list + ll, sizeof list - ll, "%s%d", n ? ", " : "", q);
        if (dl < sizeof detail) {
            if (pid <= 0) {
                dl += (size_t)snprintf(detail + dl, sizeof detail - dl, "; rank %d never joined", q);
            } else {
                uint64_t beat = atomic_load(&r->beat_ns), op = atomic_load(&r->op);
                char in[48] = "in no collective yet";
                if (op) snprintf(in, sizeof in, "last entered collective #%llu", (unsigned long long)op);
                dl += (size_t)snprintf(detail + dl, sizeof detail - dl, "; rank %d (pid %d) %s, active %llu ms ago",
                                       q, (int)pid, in,
                                       (unsigned long long)(now > beat ? (now - beat) / 1000000 : 0));
            }
        }
        n++;
    }
    return fail(s, LLMQ_ERR_TIMEOUT, "timed out after %llu ms waiting for rank%s %s%s",
                (unsigned long long)(waited_ns / 1000000), n > 1 ? "s" : "", list, detail);
}

/* Wait until every peer has published round s->seq.  Spins for spin_ns
 * (yielding after the first microseconds), then sleeps on this rank's bell; between sleeps checks the abort record,
 * the liveness of the missing peers and the deadline (timeout_ms, 0 none). */
static llmq_status wait_round(shm_comm *s, int timeout_ms) {
    shm_hdr *h = s->hdr;
    shm_rank *me = &s->ranks[s->c.rank];
    uint64_t want = s->seq;
    int miss = first_missing(s, want, 0);
    if (miss < 0) goto arrived;

    uint64_t t0 = comm_now_ns(), now = t0;
    uint64_t deadline = timeout_ms > 0 ? t0 + (uint64_t)timeout_ms * 1000000ull : UINT64_MAX;
    /* Spin: pause for the first YIELD_AFTER_NS, then yield between checks
     * so that a peer sharing this CPU (more ranks than free cores) runs
     * instead of us burning its time slice. */
    for (unsigned it = 1; now - t0 < s->spin_ns; it++) {
        if ((miss = first_missing(s, want, miss)) < 0) goto arrived;
        if (atomic_load_explicit(&h->abort.state, memory_order_relaxed)) return fail_from_abort(s);
        if (now - t0 < YIELD_AFTER_NS) cpu_relax();
        else sched_yield();
        if (!(it & 15)) now = comm_now_ns();
    }
    for (;;) {
        atomic_store(&me->sleeping, 1);
        atomic_thread_fence(memory_order_seq_cst); /* flag before the re-check (pairs with publish) */
        uint32_t bell = atomic_load(&me->bell);
        miss = first_missing(s, want, miss);
        if (miss < 0 || comm_abort_rec_claimed(&h->abort)) {
            atomic_store(&me->sleeping, 0);
            if (miss < 0) goto arrived;
            return fail_from_abort(s);
        }
        now = comm_now_ns();
        atomic_store_explicit(&me->beat_ns, now, memory_order_relaxed);
        if (now - s->last_check >= CHECK_NS) {
            s->last_check = now;
            for (int q = miss; q >= 0; q = first_missing(s, want, q + 1)) {
                const char *why;
                if (!rank_gone(s, q, &why)) continue;
                atomic_store(&me->sleeping, 0);
                /* A rank aborts before it leaves or dies of it: its reason
                 * is the better one. */
                if (comm_abort_rec_claimed(&h->abort)) return fail_from_abort(s);
                return fail(s, LLMQ_ERR_IO, "rank %d (pid %d) %s", q,
                            (int)atomic_load(&s->ranks[q].pid), why);
            }
        }
        if (now >= deadline) {
            atomic_store(&me->sleeping, 0);
            return timeout_error(s, want, now - t0, now);
        }
        uint64_t slice = deadline - now < SLICE_NS ? deadline - now : SLICE_NS;
        futex_wait(&me->bell, bell, slice);
        atomic_store(&me->sleeping, 0);
    }
arrived:
    /* A peer may publish its round and fail right after: once the group is
     * aborted its record wins over the data. */
    if (comm_abort_rec_claimed(&h->abort)) return fail_from_abort(s);
    return LLMQ_OK;
}

/* Start collective `kind`: refuse when failed or aborted, stamp the
 * descriptor of the first round into this rank's buffer. */
static llmq_status op_begin(shm_comm *s, uint32_t kind, size_t count, comm_dtype dt, int root) {
    shm_rank *me = &s->ranks[s->c.rank];
    s->op++;
    s->kind = kind;
    if (s->c.err.code) return s->c.err.code;
    if (comm_abort_rec_claimed(&s->hdr->abort)) return fail_from_abort(s);
    atomic_store_explicit(&me->op, s->op, memory_order_relaxed);
    atomic_store_explicit(&me->beat_ns, comm_now_ns(), memory_order_relaxed);
    shm_desc *d = buf_desc(s, s->c.rank, s->seq + 1);
    d->op = s->op;
    d->count = count;
    d->kind = kind;
    d->dt = (uint32_t)dt;
    d->root = root;
    return LLMQ_OK;
}

static void desc_str(char *out, size_t n, const shm_desc *d) {
    if (d->kind == OP_BROADCAST)
        snprintf(out, n, "%s #%llu (%llu bytes, root %d)", op_name(d->kind), (unsigned long long)d->op,
                 (unsigned long long)d->count, d->root);
    else if (d->kind == OP_BARRIER || d->kind == OP_JOIN)
        snprintf(out, n, "%s #%llu", op_name(d->kind), (unsigned long long)d->op);
    else
        snprintf(out, n, "%s #%llu (%llu %s)", op_name(d->kind), (unsigned long long)d->op,
                 (unsigned long long)d->count, comm_dtype_name((comm_dtype)d->dt));
}

/* After the first round: every peer must be in the same collective. */
static llmq_status check_descs(shm_comm *s) {
    const shm_desc *mine = buf_desc(s, s->c.rank, s->seq);
    for (int q = 0; q < s->c.world; q++) {
        const shm_desc *d = buf_desc(s, q, s->seq);
        if (q == s->c.rank || (d->op == mine->op && d->kind == mine->kind && d->count == mine->count &&
                               d->dt == mine->dt && d->root == mine->root))
            continue;
        char a[128], b[128];
        desc_str(a, sizeof a, mine);
        desc_str(b, sizeof b, d);
        return fail(s, LLMQ_ERR_INTERNAL, "collective mismatch: this rank is in %s, rank %d in %s", a,
                    q, b);
    }
    return LLMQ_OK;
}

/* One full round: publish, wait, and on the first round of a collective
 * check the peers' descriptors. */
static llmq_status round_trip(shm_comm *s, int first) {
    publish(s);
    llmq_status st = wait_round(s, s->c.timeout_ms);
    if (!st && first) st = check_descs(s);
    return st;
}

/* ------------------------------------------------------------- reductions */

/* Sum element range [off, off + n) of every rank's buffer of `round` (at
 * byte offset `boff` inside the buffer) into dst and dst2, in rank order. */
static void sum_range(shm_comm *s, comm_dtype dt, uint64_t round, size_t boff, size_t n, void *dst,
                      void *dst2) {
    const void *src[COMM_SHM_MAX_WORLD];
    for (int q = 0; q < s->c.world; q++) src[q] = buf_data(s, q, round) + boff;
    comm_sum_rank_order(dt, dst, dst2, src, s->c.world, n);
}

/* ------------------------------------------------------------- collectives */

/* Argument errors abort the group too: this rank will not take part in
 * the collective, so the peers must not wait for it. */
static llmq_status bad_arg(shm_comm *s, const char *why) {
    return fail(s, LLMQ_ERR_INVALID, "%s", why);
}

/* Small messages: one round, every rank stages its whole input and sums
 * all of them itself. */
static llmq_status all_reduce_oneshot(shm_comm *s, void *buf, size_t count,
                                      comm_dtype dt) {
    size_t bytes = count * comm_dtype_size(dt);
    memcpy(buf_data(s, s->c.rank, s->seq + 1), buf, bytes);
    llmq_status st = round_trip(s, 1);
    if (st) return st;
    sum_range(s, dt, s->seq, 0, count, buf, NULL);
    return LLMQ_OK;
}

/* Large messages: chunks of C = world * P elements, pipelined over K + 1
 * rounds.  In round t every rank has staged raw chunk t and its reduced
 * part of chunk t-1; after the wait it sums part `rank` of chunk t over all
 * ranks (into the user buffer and its next buffer's reduced area), copies
 * the peers' reduced parts of chunk t-1 and stages raw chunk t+1. */
static llmq_status all_reduce_rs_ag(shm_comm *s, void *buf, size_t count,
                                    comm_dtype dt) {
    const int world = s->c.world, me = s->c.rank;
    const size_t es = comm_dtype_size(dt);
    /* P: part of a full chunk, a multiple of 16 elements (64 bytes) with
     * world * P (raw) + P (reduced) fitting a slot. */
    size_t P = s->hdr->slot_bytes / ((size_t)(world + 1) * es) / 16 * 16;
    const size_t C = P * (size_t)world, red_off = C * es;
    const size_t K = (count + C - 1) / C;
    unsigned char *u = buf;

    memcpy(buf_data(s, me, s->seq + 1), u, (count < C ? count : C) * es);
    for (size_t t = 0; t <= K; t++) {
        llmq_status st = round_trip(s, t == 0);
        if (st) return st;
        uint64_t cur = s->seq, nxt = s->seq + 1;
        if (t < K) { /* reduce my part of chunk t */
            size_t off = t * C, L = count - off < C ? count - off : C;
            size_t PL = ((L + (size_t)world - 1) / (size_t)world + 15) / 16 * 16;
            size_t lo = PL * (size_t)me, hi = lo + PL < L ? lo + PL : L;
            if (lo < hi)
                sum_range(s, dt, cur, lo * es, hi - lo, buf_data(s, me, nxt) + red_off,
                          u + (off + lo) * es);
        }
        if (t >= 1) { /* gather the peers' parts of chunk t-1 */
            size_t off = (t - 1) * C, L = count - off < C ? count - off : C;
            size_t PL = ((L + (size_t)world - 1) / (size_t)world + 15) / 16 * 16;
            for (int q = 0; q < world; q++) {
                size_t lo = PL * (size_t)q, hi = lo + PL < L ? lo + PL : L;
                if (q != me && lo < hi)
                    memcpy(u + (off + lo) * es, buf_data(s, q, cur) + red_off, (hi - lo) * es);
            }
        }
        if (t + 1 < K) { /* stage raw chunk t+1 */
            size_t off = (t + 1) * C, L = count - off < C ? count - off : C;
            memcpy(buf_data(s, me, nxt), u + off * es, L * es);
        }
    }
    return LLMQ_OK;
}

static llmq_status shm_all_reduce_sum(llmq_comm *c, void *buf, size_t count, comm_dtype dt) {
    shm_comm *s = c->impl;
    llmq_status st = op_begin(s, OP_ALL_REDUCE, count, dt, 0);
    if (st) return st;
    if (dt != COMM_F32 && dt != COMM_I32)
        return fail(s, LLMQ_ERR_UNSUPPORTED, "sum of %s", comm_dtype_name(dt));
    if (count && !buf) return bad_arg(s, "NULL buffer");
    if (!count || c->world == 1) return LLMQ_OK;
    size_t bytes = count * comm_dtype_size(dt);
    if (bytes <= s->hdr->oneshot_max && bytes <= s->hdr->slot_bytes)
        return all_reduce_oneshot(s, buf, count, dt);
    return all_reduce_rs_ag(s, buf, count, dt);
}

/* Chunks of slot_bytes: in round t every rank stages bytes [t*D, ...) of
 * its contribution and copies the peers' after the wait. */
static llmq_status shm_all_gather(llmq_comm *c, void *recv, const void *send, size_t count,
                                  comm_dtype dt) {
    shm_comm *s = c->impl;
    llmq_status st = op_begin(s, OP_ALL_GATHER, count, dt, 0);
    if (st) return st;
    size_t es = comm_dtype_size(dt);
    if (!es) return bad_arg(s, "unknown dtype");
    if (count && (!recv || !send)) return bad_arg(s, "NULL buffer");
    if (!count) return LLMQ_OK;
    const size_t n = count * es, D = s->hdr->slot_bytes;
    unsigned char *r = recv;
    const unsigned char *mine = send;
    if (mine != r + (size_t)c->rank * n) memcpy(r + (size_t)c->rank * n, mine, n);
    if (c->world == 1) return LLMQ_OK;
    for (size_t off = 0; off < n; off += D) {
        size_t len = n - off < D ? n - off : D;
        memcpy(buf_data(s, c->rank, s->seq + 1), mine + off, len);
        if ((st = round_trip(s, off == 0))) return st;
        for (int q = 0; q < c->world; q++)
            if (q != c->rank) memcpy(r + (size_t)q * n + off, buf_data(s, q, s->seq), len);
    }
    return LLMQ_OK;
}

static llmq_status shm_broadcast(llmq_comm *c, void *buf, size_t bytes, int root) {
    shm_comm *s = c->impl;
    llmq_status st = op_begin(s, OP_BROADCAST, bytes, COMM_U8, root);
    if (st) return st;
    if (root < 0 || root >= c->world) return bad_arg(s, "root out of range");
    if (bytes && !buf) return bad_arg(s, "NULL buffer");
    if (!bytes || c->world == 1) return LLMQ_OK;
    const size_t D = s->hdr->slot_bytes;
    unsigned char *b = buf;
    for (size_t off = 0; off < bytes; off += D) {
        size_t len = bytes - off < D ? bytes - off : D;
        if (c->rank == root) memcpy(buf_data(s, root, s->seq + 1), b + off, len);
        if ((st = round_trip(s, off == 0))) return st;
        if (c->rank != root) memcpy(b + off, buf_data(s, root, s->seq), len);
    }
    return LLMQ_OK;
}

static llmq_status shm_barrier(llmq_comm *c) {
    shm_comm *s = c->impl;
    llmq_status st = op_begin(s, OP_BARRIER, 0, COMM_U8, 0);
    if (st || c->world == 1) return st;
    return round_trip(s, 1);
}

static void shm_abort(llmq_comm *c, const char *reason) {
    group_abort(c->impl, LLMQ_ERR_IO, reason && *reason ? reason : "abort");
}

static void shm_destroy(llmq_comm *c) {
    if (!c) return;
    shm_comm *s = c->impl;
    if (s->base) {
        atomic_store(&s->ranks[c->rank].left, 1);
        for (int q = 0; q < c->world; q++)
            if (q != c->rank) ring(&s->ranks[q], 1);
        munmap(s->base, s->map_bytes);
    }
    if (c->rank == 0 && !s->unlinked && s->name[0]) shm_unlink(s->name);
    free(s);
}

static const comm_ops shm_ops = {
    .name = "shm",
    .all_reduce_sum = shm_all_reduce_sum,
    .all_gather = shm_all_gather,
    .broadcast = shm_broadcast,
    .barrier = shm_barrier,
    .abort = shm_abort,
    .destroy = shm_destroy,
};

/* ----------------------------------------------------------------- create */

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Rank 0: a fresh segment of `total` bytes, header written, magic last. */
static llmq_status segment_create(shm_comm *s, const comm_shm_config *cfg, size_t slot,
                                  size_t stride, size_t data_off, size_t total, size_t oneshot,
                                  llmq_err *err) {
    shm_unlink(cfg->name); /* a crashed leader's leftover; ENOENT is the usual case */
    int fd = shm_open(cfg->name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0)
        return llmq_err_set(err, LLMQ_ERR_IO, "comm: shm_open(%s): %s", cfg->name, strerror(errno));
    /* Reserve the pages now: a full /dev/shm is an error here instead of a
     * SIGBUS in the middle of a collective. */
    int rc = posix_fallocate(fd, 0, (off_t)total);
    if (rc == EINVAL || rc == EOPNOTSUPP) rc = ftruncate(fd, (off_t)total) ? errno : 0;
    if (rc) {
        close(fd);
        shm_unlink(cfg->name);
        return llmq_err_set(err, LLMQ_ERR_IO, "comm: sizing %s to %zu bytes: %s", cfg->name, total,
                            strerror(rc));
    }
    void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        shm_unlink(cfg->name);
        return llmq_err_set(err, LLMQ_ERR_IO, "comm: mmap %s: %s", cfg->name, strerror(errno));
    }
    s->base = p;
    s->map_bytes = total;
    shm_hdr *h = p;
    h->version = SHM_VERSION;
    h->world = (uint32_t)cfg->world;
    h->generation = cfg->generation;
    h->slot_bytes = slot;
    h->buf_stride = stride;
    h->data_off = data_off;
    h->total_bytes = total;
    h->oneshot_max = oneshot;
    atomic_store(&h->magic, SHM_MAGIC);
    return LLMQ_OK;
}

/* Ranks > 0: open and map the segment of our generation, retrying until it
 * exists and is initialised or the deadline passes. */
static llmq_status segment_attach(shm_comm *s, const comm_shm_config *cfg, uint64_t deadline,
                                  llmq_err *err) {
    char seen[160] = "it does not exist";
    for (int backoff = 1;; backoff = backoff < 20 ? backoff * 2 : 20) {
        int fd = shm_open(cfg->name, O_RDWR | O_CLOEXEC, 0);
        struct stat sb;
        if (fd >= 0 && fstat(fd, &sb) == 0 && (size_t)sb.st_size >= sizeof(shm_hdr)) {
            size_t size = (size_t)sb.st_size;
            void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            close(fd);
            fd = -1;
            if (p == MAP_FAILED)
                return llmq_err_set(err, LLMQ_ERR_IO, "comm: mmap %s: %s", cfg->name, strerror(errno));
            shm_hdr *h = p;
            if (atomic_load(&h->magic) == SHM_MAGIC) {
                if (h->version != SHM_VERSION || h->total_bytes != size) {
                    munmap(p, size);
                    return llmq_err_set(err, LLMQ_ERR_FORMAT, "comm: %s: version %u / size %zu not understood",
                                        cfg->name, h->version, size);
                }
                if (h->generation > cfg->generation) {
                    uint64_t g = h->generation;
                    munmap(p, size);
                    return llmq_err_set(err, LLMQ_ERR_INVALID,
                                        "comm rank %d: stale generation %llu: %s belongs to generation %llu",
                                        cfg->rank, (unsigned long long)cfg->generation, cfg->name,
                                        (unsigned long long)g);
                }
                if (h->generation == cfg->generation) {
                    if ((int)h->world != cfg->world) {
                        int w = (int)h->world;
                        munmap(p, size);
                        return llmq_err_set(err, LLMQ_ERR_INVALID, "comm rank %d: world %d, but %s has world %d",
                                            cfg->rank, cfg->world, cfg->name, w);
                    }
                    s->base = p;
                    s->map_bytes = size;
                    return LLMQ_OK;
                }
                snprintf(seen, sizeof seen, "it still holds generation %llu",
                         (unsigned long long)h->generation);
            } else {
                snprintf(seen, sizeof seen, "it is not initialised");
            }
            munmap(p, size);
        }
        if (fd >= 0) close(fd);
        if (comm_now_ns() >= deadline)
            return llmq_err_set(err, LLMQ_ERR_TIMEOUT,
                                "comm rank %d: no segment %s of generation %llu within the join timeout (%s)",
                                cfg->rank, cfg->name, (unsigned long long)cfg->generation, seen);
        sleep_ms(backoff);
    }
}

llmq_comm *comm_shm_create(const comm_shm_config *cfg, llmq_err *err) {
    if (!cfg || !cfg->name || cfg->name[0] != '/' || strchr(cfg->name + 1, '/') ||
        strlen(cfg->name) >= 250 || !cfg->name[1]) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "comm: shm name must be '/name' (one leading '/', < 250 chars)");
        return NULL;
    }
    if (cfg->world < 1 || cfg->world > COMM_SHM_MAX_WORLD || cfg->rank < 0 || cfg->rank >= cfg->world) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "comm: rank %d of world %d (world must be 1..%d)", cfg->rank,
                     cfg->world, COMM_SHM_MAX_WORLD);
        return NULL;
    }
    if (cfg->timeout_ms < 0 || cfg->join_timeout_ms < 0) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "comm: negative timeout");
        return NULL;
    }
    shm_comm *s = calloc(1, sizeof *s);
    if (!s) {
        llmq_err_set(err, LLMQ_ERR_NOMEM, "comm: out of memory");
        return NULL;
    }
    s->c.ops = &shm_ops;
    s->c.rank = cfg->rank;
    s->c.world = cfg->world;
    s->c.timeout_ms = cfg->timeout_ms;
    s->c.impl = s;
    snprintf(s->name, sizeof s->name, "%s", cfg->name);
    s->spin_ns = (uint64_t)(cfg->spin_us >= 0 ? cfg->spin_us : DEFAULT_SPIN_US) * 1000ull;

    int join_ms = cfg->join_timeout_ms ? cfg->join_timeout_ms : cfg->timeout_ms;
    uint64_t deadline = join_ms > 0 ? comm_now_ns() + (uint64_t)join_ms * 1000000ull : UINT64_MAX;
    llmq_status st;
    if (cfg->rank == 0) {
        size_t slot = cfg->slot_bytes ? cfg->slot_bytes : COMM_SHM_DEFAULT_SLOT;
        size_t min_slot = (size_t)(cfg->world + 1) * 64;
        slot = align_up(slot > MIN_SLOT ? slot : MIN_SLOT, SHM_ALIGN);
        if (slot < min_slot) slot = align_up(min_slot, SHM_ALIGN);
        size_t stride = align_up(SHM_ALIGN + slot, SHM_PAGE);
        size_t ranks_off = align_up(sizeof(shm_hdr), 128);
        size_t data_off = align_up(ranks_off + (size_t)cfg->world * sizeof(shm_rank), SHM_PAGE);
        size_t total = data_off + (size_t)cfg->world * 2 * stride;
        size_t oneshot = cfg->oneshot_max ? cfg->oneshot_max : DEFAULT_ONESHOT;
        st = segment_create(s, cfg, slot, stride, data_off, total, oneshot, err);
    } else {
        st = segment_attach(s, cfg, deadline, err);
    }
    if (st) {
        s->unlinked = 1; /* never unlink a name we did not create */
        shm_destroy(&s->c);
        return NULL;
    }
    s->hdr = (shm_hdr *)s->base;
    s->ranks = (shm_rank *)(s->base + align_up(sizeof(shm_hdr), 128));

    /* Claim our rank, then round 1 is the join. */
    shm_rank *me = &s->ranks[cfg->rank];
    int32_t zero = 0;
    if (!atomic_compare_exchange_strong(&me->pid, &zero, (int32_t)getpid())) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "comm rank %d: rank already joined %s (pid %d)", cfg->rank,
                     cfg->name, (int)zero);
        s->unlinked = 1;
        munmap(s->base, s->map_bytes);
        s->base = NULL;
        shm_destroy(&s->c);
        return NULL;
    }
    atomic_store(&me->beat_ns, comm_now_ns());
    s->seq = atomic_load(&me->seq); /* 0 */
    s->kind = OP_JOIN;
    publish(s);
    int left_ms = 0; /* 0: no limit */
    if (deadline != UINT64_MAX) {
        uint64_t now = comm_now_ns();
        left_ms = now < deadline ? (int)((deadline - now) / 1000000) : 0;
        if (left_ms < 1) left_ms = 1;
    }
    st = wait_round(s, left_ms);
    if (st) {
        llmq_err_set(err, st, "%s", s->c.err.msg);
        shm_destroy(&s->c);
        return NULL;
    }
    if (cfg->rank == 0) {
        shm_unlink(cfg->name); /* everyone has it mapped: nothing to leak now */
        s->unlinked = 1;
    }
    return &s->c;
}
