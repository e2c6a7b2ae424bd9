/*
 * emu_nccl.cc — the NCCL subset of the emulated device (`make cuda-emu`):
 * the calls comm_nccl.cu makes, with the signatures of CUDA's nccl.h, across
 * processes (one process per rank, each with its own emulated device memory).
 *
 * Transport.  ncclGetUniqueId names a POSIX shared-memory segment
 * ("/llmq-nccl-<pid>-<nonce>") and carries a random nonce.  Rank 0 creates
 * the segment at ncclCommInitRankConfig, the others open it (retrying until
 * it appears), and the last rank to join unlinks the name, so a group killed
 * after forming leaves nothing in /dev/shm.  The segment holds a header (the
 * ranks' pids and states, the group's abort record) and one byte ring per
 * ordered pair of ranks (src -> dst, a rank's ring to itself included).
 * Every message is a header describing the sender's call (collective, bytes,
 * root, op number) followed by the payload, so a receiver that called
 * something else reports both calls instead of reading garbage.
 *
 * Execution.  Every NCCL call is an op on its stream (emu::enqueue): it runs
 * on the stream's worker, asynchronously to the caller, as NCCL's kernels do.
 * Calls between ncclGroupStart and ncclGroupEnd become one op per (comm,
 * stream), issued at the outermost ncclGroupEnd; the op progresses all its
 * sends and receives together, so a group's sends never deadlock against its
 * receives.  A collective is a set of sends and receives (all-reduce receives
 * every rank's buffer and adds in rank order).  While an op cannot progress
 * its worker sleeps on a futex of its rank in the segment ("doorbell"), rung
 * by any peer that wrote to it or made room for it, and by aborts; it wakes
 * at least every 10 ms to check its peers and emu::op_should_stop().
 *
 * Failures (what a GPU's NCCL would not say, the emulator says, naming ranks):
 *  - ncclCommAbort (any thread of this process) makes a blocked op return at
 *    once, and publishes the abort, with this rank's NCCL error if it had one,
 *    in the segment: every peer's waiting op fails, and so does its next call,
 *    with ncclRemoteError, "rank R aborted the communicator after: ...".
 *  - a peer that died (even an unreaped zombie) or destroyed its communicator
 *    while an op waits for it: ncclRemoteError naming it.
 *  - ranks that called different collectives: ncclInvalidUsage naming both
 *    calls.  A rank that calls nothing is seen only by the caller's deadline.
 *  - a device buffer outside any live allocation: an "out-of-bounds" report
 *    and cudaErrorIllegalAddress, as the GPU would fault.
 * An op's failure is the communicator's (ncclCommGetAsyncError, ncclGetLastError)
 * and final: every later call returns it.
 * A failed op leaves its outputs undefined (but marked written, so that the
 * kernels that consume them before the host learns of the failure are not
 * reported as reading uninitialised memory).
 *
 * Limits: non-blocking init runs on a thread of its own; NCCL calls on a
 * stream being captured are not supported (the engine never captures TP
 * steps); ops of one communicator must be issued in one order on one stream,
 * as NCCL requires.  Reductions are computed on the host in rank order.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <nccl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "kernels/cuda/emu/emu_internal.hh"

namespace {

constexpr int MAX_RANKS = 64;
constexpr size_t RING_BYTES = (size_t)256 << 10; /* per ordered pair of ranks; pages touched only when used */
constexpr char ID_MAGIC[16] = "llmq-emu-nccl1";
constexpr char SEG_MAGIC[16] = "llmq-emu-seg-1";
constexpr uint32_t MSG_MAGIC = 0x4e43434cu; /* "NCCL" */
constexpr unsigned CONFIG_MAGIC = 0xcafebeef; /* NCCL_CONFIG_INITIALIZER's */

/* The 128-byte ncclUniqueId. */
struct id_layout {
    char magic[16];
    char shm_name[64];
    uint64_t nonce;
};
static_assert(sizeof(id_layout) <= NCCL_UNIQUE_ID_BYTES, "id_layout fits ncclUniqueId");

enum rank_state : uint32_t { ABSENT = 0, JOINED = 1, LEFT = 2 };

struct rank_slot {
    std::atomic<int32_t> pid;       /* 0 until joined */
    std::atomic<uint32_t> state;    /* rank_state */
    std::atomic<uint32_t> doorbell; /* futex word: bumped by whatever this rank may be waiting for */
    uint32_t pad;
};

struct seg_header {
    char magic[16];
    uint64_t nonce;                 /* the id's: a segment of another id is refused */
    int32_t nranks;
    std::atomic<uint32_t> ready;    /* 1 once the creator filled the header */
    std::atomic<int32_t> joined;    /* ranks joined so far */
    std::atomic<int32_t> abort_rank; /* -1, or the first rank that aborted (then abort_reason is set) */
    std::atomic<uint32_t> abort_published; /* 1 once abort_reason is complete */
    char abort_reason[256];
    rank_slot ranks[MAX_RANKS];
};

/* Bytes flow src -> dst; head is written by src only, tail by dst only. */
struct ring {
    alignas(64) std::atomic<uint64_t> head; /* bytes written so far */
    alignas(64) std::atomic<uint64_t> tail; /* bytes consumed so far */
    alignas(64) unsigned char data[RING_BYTES];
};

static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<uint32_t>::is_always_lock_free,
              "shared-memory atomics must be lock-free");

size_t seg_bytes(int nranks) {
    size_t h = (sizeof(seg_header) + 63) & ~(size_t)63;
    return h + (size_t)nranks * nranks * sizeof(ring);
}

/* What a message says about the call that sent it; the receiver compares it with its own call. */
enum call_kind : uint32_t { K_P2P = 1, K_ALLGATHER, K_BROADCAST, K_ALLREDUCE };

struct msg_hdr {
    uint32_t magic;
    uint32_t kind;     /* call_kind */
    uint64_t bytes;    /* payload bytes */
    int32_t root;      /* broadcast */
    uint32_t detail;   /* all-reduce: datatype << 8 | op */
    uint64_t op_no;    /* the sender's op number on this communicator (a group counts once), for messages */
};

const char *dtype_name(int dt) {
    static const char *names[] = {"int8", "uint8", "int32", "uint32", "int64", "uint64",
                                  "float16", "float32", "float64", "bfloat16", "fp8e4m3", "fp8e5m2"};
    return dt >= 0 && dt < (int)(sizeof names / sizeof *names) ? names[dt] : "?";
}

const char *redop_name(int op) {
    static const char *names[] = {"sum", "prod", "max", "min", "avg"};
    return op >= 0 && op < 5 ? names[op] : "?";
}

std::string describe(const msg_hdr &h) {
    char b[160];
    switch (h.kind) {
    case K_P2P: snprintf(b, sizeof b, "ncclSend/ncclRecv of %llu B", (unsigned long long)h.bytes); break;
    case K_ALLGATHER: snprintf(b, sizeof b, "ncclAllGather of %llu B per rank", (unsigned long long)h.bytes); break;
    case K_BROADCAST:
        snprintf(b, sizeof b, "ncclBroadcast of %llu B from root %d", (unsigned long long)h.bytes, h.root);
        break;
    case K_ALLREDUCE:
        snprintf(b, sizeof b, "ncclAllReduce %s of %llu B of %s", redop_name(h.detail & 0xff),
                 (unsigned long long)h.bytes, dtype_name((int)(h.detail >> 8)));
        break;
    default: snprintf(b, sizeof b, "an unknown call (kind %u)", h.kind);
    }
    return std::string(b) + " (op #" + std::to_string(h.op_no) + ")";
}

size_t dtype_size(ncclDataType_t dt) {
    switch (dt) {
    case ncclInt8: case ncclUint8: case ncclFloat8e4m3: case ncclFloat8e5m2: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0;
    }
}

double now_ms() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

void futex_wait(std::atomic<uint32_t> *w, uint32_t seen, int timeout_ms) {
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
    syscall(SYS_futex, reinterpret_cast<uint32_t *>(w), FUTEX_WAIT, seen, &ts, nullptr, 0);
}

void ring_bell(rank_slot &r) {
    r.doorbell.fetch_add(1, std::memory_order_release);
    syscall(SYS_futex, reinterpret_cast<uint32_t *>(&r.doorbell), FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
}

/* 1: the process is gone or a zombie (kill(pid, 0) still succeeds for a zombie). */
bool pid_dead(int pid) {
    if (pid <= 0) return false;
    if (kill(pid, 0) != 0 && errno == ESRCH) return true;
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return false;
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    return rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X');
}

/* The process-wide last error (ncclGetLastError(NULL)) and each thread's copy handed out. */
std::mutex g_last_mu;
std::string g_last;
thread_local std::string t_last_copy;

void set_global_last(const std::string &s) {
    std::lock_guard<std::mutex> lk(g_last_mu);
    g_last = s;
}

} // namespace

/* ------------------------------------------------------------ the communicator */

struct ncclComm {
    int rank = 0, nranks = 0;
    bool blocking = true;
    std::string shm_name;
    uint64_t nonce = 0;
    seg_header *seg = nullptr;       /* mapped segment (nullptr until joined) */
    size_t seg_len = 0;
    std::atomic<int> refs{1};        /* the user's handle + every op not yet run */
    std::atomic<int> pending{0};     /* ops enqueued and not finished (ncclCommFinalize waits for them) */
    std::atomic<int> running{0};     /* ops executing now (ncclCommAbort waits for them to leave) */
    std::atomic<bool> aborted{false};
    std::atomic<int> async{ncclInProgress}; /* ncclCommGetAsyncError's answer */
    std::atomic<bool> finalizing{false};
    uint64_t ops = 0;                /* ops issued on this communicator (a group is one); numbers messages */
    std::thread init_thread;
    std::mutex mu;                   /* last_error */
    std::string last_error;

    ring *chan(int src, int dst) const {
        size_t h = (sizeof(seg_header) + 63) & ~(size_t)63;
        return reinterpret_cast<ring *>(reinterpret_cast<unsigned char *>(seg) + h) + (size_t)src * nranks + dst;
    }
    rank_slot &slot(int r) const { return seg->ranks[r]; }

    /* Record the first error (message and code); later ones are dropped. */
    void fail(ncclResult_t code, const char *fmt, ...) __attribute__((format(printf, 3, 4))) {
        char b[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b, sizeof b, fmt, ap);
        va_end(ap);
        std::string msg = std::string("emulated NCCL rank ") + std::to_string(rank) + ": " + b;
        {
            /* the message is in place before the code shows: a poller that sees the code reads it */
            std::lock_guard<std::mutex> lk(mu);
            const int cur = async.load();
            if (cur != ncclSuccess && cur != ncclInProgress) return;
            last_error = msg;
            async.store(code);
        }
        set_global_last(msg);
    }
    std::string last() {
        std::lock_guard<std::mutex> lk(mu);
        return last_error;
    }

    /* The group's abort record, once a rank (this one included) published one. */
    bool group_aborted(std::string *why) const {
        if (!seg || seg->abort_published.load(std::memory_order_acquire) != 1) return false;
        if (why) {
            char r[sizeof seg->abort_reason + 1];
            memcpy(r, seg->abort_reason, sizeof seg->abort_reason);
            r[sizeof seg->abort_reason] = '\0';
            *why = "rank " + std::to_string(seg->abort_rank.load()) + " aborted the communicator" +
                   (r[0] ? std::string(" after: ") + r : std::string());
        }
        return true;
    }

    void publish_abort(const char *reason) {
        if (!seg) return;
        int expect = -1;
        if (seg->abort_rank.compare_exchange_strong(expect, rank)) {
            snprintf(seg->abort_reason, sizeof seg->abort_reason, "%s", reason);
            seg->abort_published.store(1, std::memory_order_release);
        }
        for (int r = 0; r < nranks; r++) ring_bell(slot(r));
    }
};

namespace {

void comm_release(ncclComm *c) {
    if (c->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    if (c->init_thread.joinable()) c->init_thread.join();
    if (c->seg) {
        if (!c->aborted.load()) {
            c->slot(c->rank).state.store(LEFT, std::memory_order_release);
            for (int r = 0; r < c->nranks; r++) ring_bell(c->slot(r));
        }
        munmap(c->seg, c->seg_len);
    }
    delete c;
}

/* ------------------------------------------------------------ joining the group */

/* Map the segment (creating it on rank 0) and wait for every rank.  Runs on the caller (blocking
 * communicators) or on c->init_thread; returns the result also stored in c->async. */
ncclResult_t join(ncclComm *c) {
    const size_t len = seg_bytes(c->nranks);
    int fd = -1;
    if (c->rank == 0) {
        fd = shm_open(c->shm_name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0) {
            c->fail(errno == EEXIST ? ncclInvalidUsage : ncclSystemError,
                    "shm_open(%s): %s (a unique id serves one communicator)", c->shm_name.c_str(), strerror(errno));
            return (ncclResult_t)c->async.load();
        }
        if (ftruncate(fd, (off_t)len) != 0) {
            c->fail(ncclSystemError, "ftruncate(%s, %zu): %s", c->shm_name.c_str(), len, strerror(errno));
            close(fd);
            shm_unlink(c->shm_name.c_str());
            return (ncclResult_t)c->async.load();
        }
    } else {
        /* wait for rank 0's segment, then for its header */
        for (;;) {
            if (c->aborted.load()) {
                c->fail(ncclInvalidUsage, "aborted while joining the group");
                return (ncclResult_t)c->async.load();
            }
            if (fd < 0) fd = shm_open(c->shm_name.c_str(), O_RDWR | O_CLOEXEC, 0600);
            if (fd < 0 && errno != ENOENT) {
                c->fail(ncclSystemError, "shm_open(%s): %s", c->shm_name.c_str(), strerror(errno));
                return (ncclResult_t)c->async.load();
            }
            struct stat st;
            if (fd >= 0 && fstat(fd, &st) == 0 && (size_t)st.st_size >= sizeof(seg_header)) {
                if ((size_t)st.st_size != len) {
                    c->fail(ncclInvalidUsage, "the group was created for another number of ranks than %d",
                            c->nranks);
                    close(fd);
                    return (ncclResult_t)c->async.load();
                }
                break;
            }
            usleep(1000);
        }
    }
    void *m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        c->fail(ncclSystemError, "mmap of %zu B: %s", len, strerror(errno));
        return (ncclResult_t)c->async.load();
    }
    seg_header *h = static_cast<seg_header *>(m);
    if (c->rank == 0) {
        memcpy(h->magic, SEG_MAGIC, sizeof SEG_MAGIC);
        h->nonce = c->nonce;
        h->nranks = c->nranks;
        h->abort_rank.store(-1);
        h->ready.store(1, std::memory_order_release);
    } else {
        while (h->ready.load(std::memory_order_acquire) != 1) {
            if (c->aborted.load()) {
                munmap(m, len);
                c->fail(ncclInvalidUsage, "aborted while joining the group");
                return (ncclResult_t)c->async.load();
            }
            usleep(1000);
        }
        if (memcmp(h->magic, SEG_MAGIC, sizeof SEG_MAGIC) || h->nonce != c->nonce || h->nranks != c->nranks) {
            munmap(m, len);
            c->fail(ncclInvalidUsage, "%s belongs to another group (nonce or number of ranks differ)",
                    c->shm_name.c_str());
            return (ncclResult_t)c->async.load();
        }
    }
    c->seg = h;
    c->seg_len = len;
    rank_slot &me = c->slot(c->rank);
    uint32_t absent = ABSENT;
    if (!me.state.compare_exchange_strong(absent, JOINED)) {
        c->fail(ncclInvalidUsage, "rank %d joined the group twice", c->rank);
        c->seg = nullptr;
        munmap(m, len);
        return (ncclResult_t)c->async.load();
    }
    me.pid.store((int32_t)getpid(), std::memory_order_release);
    if (h->joined.fetch_add(1) + 1 == c->nranks) shm_unlink(c->shm_name.c_str()); /* complete: nothing left behind */
    for (int r = 0; r < c->nranks; r++) ring_bell(c->slot(r));
    /* NCCL's init returns once every rank is there */
    while (h->joined.load(std::memory_order_acquire) < c->nranks) {
        uint32_t bell = me.doorbell.load(std::memory_order_acquire);
        std::string why;
        if (c->aborted.load()) {
            c->fail(ncclInvalidUsage, "aborted while waiting for the group to form");
            break;
        }
        /* a peer aborts only after the group formed (its init returned): then this init succeeded
         * too, and the abort shows at the first op */
        if (c->group_aborted(&why) && h->joined.load() < c->nranks) {
            c->fail(ncclRemoteError, "%s", why.c_str());
            break;
        }
        for (int r = 0; r < c->nranks; r++)
            if (c->slot(r).state.load() == JOINED && pid_dead(c->slot(r).pid.load()))
                c->fail(ncclRemoteError, "rank %d (pid %d) died while the group formed", r, (int)c->slot(r).pid.load());
        if (c->async.load() != ncclInProgress) break;
        futex_wait(&me.doorbell, bell, 10);
    }
    int expect = ncclInProgress;
    c->async.compare_exchange_strong(expect, ncclSuccess);
    return (ncclResult_t)c->async.load();
}

/* ------------------------------------------------------------ ops */

/* One send or receive of an op.  A send streams header + payload into ring (rank -> peer); a
 * receive reads the header, compares it with `want`, then streams the payload into dst. */
struct task {
    bool send = false;
    int peer = 0;
    const unsigned char *src = nullptr; /* send: payload */
    unsigned char *dst = nullptr;       /* receive: payload destination */
    bool dst_device = false;            /* dst is device memory (marked written) */
    msg_hdr hdr{};                      /* send: what goes out; receive: what is expected */
    size_t off = 0;                     /* bytes of header + payload done */
    bool done = false;
};

/* All-reduce: the receives land in host scratch, reduced into dst in rank order when all arrived. */
struct reduce_step {
    ncclDataType_t dt = ncclFloat32;
    ncclRedOp_t op = ncclSum;
    size_t count = 0;
    std::vector<unsigned char> parts; /* [nranks][count * size]; the receive tasks point into it, so a
                                       * reduce_step is moved, never copied (a move keeps the buffer) */
    void *dst = nullptr;

    reduce_step() = default;
    reduce_step(reduce_step &&) = default;
    reduce_step &operator=(reduce_step &&) = default;
    reduce_step(const reduce_step &) = delete;
};

struct op_desc {
    std::string name;               /* for messages: "ncclAllGather", "nccl group of 4 calls" */
    std::vector<task> tasks;
    std::vector<reduce_step> reduces;
    /* device ranges to check before running: pointer, bytes */
    std::vector<std::pair<const void *, size_t>> ranges;
    std::vector<std::pair<void *, void *>> local_copies_dst_src; /* broadcast root's sendbuff -> recvbuff */
    std::vector<size_t> local_copy_bytes;
};

constexpr size_t HDR = sizeof(msg_hdr);

/* Move what can be moved now; true when something moved. */
bool progress(ncclComm *c, task &t, const char *opname) {
    if (t.done) return false;
    const size_t total = HDR + t.hdr.bytes;
    if (t.send) {
        ring *q = c->chan(c->rank, t.peer);
        uint64_t head = q->head.load(std::memory_order_relaxed), tail = q->tail.load(std::memory_order_acquire);
        size_t space = RING_BYTES - (size_t)(head - tail), moved = 0;
        while (space && t.off < total) {
            const unsigned char *from = t.off < HDR ? reinterpret_cast<const unsigned char *>(&t.hdr) + t.off
                                                    : t.src + (t.off - HDR);
            size_t n = std::min(space, (t.off < HDR ? HDR : total) - t.off);
            size_t at = (size_t)((head + moved) % RING_BYTES), first = std::min(n, RING_BYTES - at);
            memcpy(q->data + at, from, first);
            memcpy(q->data, from + first, n - first);
            moved += n;
            space -= n;
            t.off += n;
        }
        if (!moved) return false;
        q->head.store(head + moved, std::memory_order_release);
        ring_bell(c->slot(t.peer));
        t.done = t.off == total;
        return true;
    }
    ring *q = c->chan(t.peer, c->rank);
    uint64_t tail = q->tail.load(std::memory_order_relaxed), head = q->head.load(std::memory_order_acquire);
    size_t avail = (size_t)(head - tail), moved = 0;
    if (t.off < HDR) {
        if (avail < HDR) return false; /* the header is consumed whole */
        msg_hdr got;
        size_t at = (size_t)(tail % RING_BYTES), first = std::min(HDR, RING_BYTES - at);
        memcpy(&got, q->data + at, first);
        memcpy(reinterpret_cast<unsigned char *>(&got) + first, q->data, HDR - first);
        if (got.magic != MSG_MAGIC || got.kind != t.hdr.kind || got.bytes != t.hdr.bytes ||
            (got.kind == K_BROADCAST && got.root != t.hdr.root) ||
            (got.kind == K_ALLREDUCE && got.detail != t.hdr.detail)) {
            c->fail(ncclInvalidUsage, "%s: different collectives: this rank's %s met rank %d's %s", opname,
                    describe(t.hdr).c_str(), t.peer, describe(got).c_str());
            return false;
        }
        moved = HDR;
        avail -= HDR;
        t.off = HDR;
    }
    while (avail && t.off < total) {
        size_t n = std::min(avail, total - t.off);
        size_t at = (size_t)((tail + moved) % RING_BYTES), first = std::min(n, RING_BYTES - at);
        unsigned char *to = t.dst + (t.off - HDR);
        memcpy(to, q->data + at, first);
        memcpy(to + first, q->data, n - first);
        moved += n;
        avail -= n;
        t.off += n;
    }
    if (!moved) return false;
    q->tail.store(tail + moved, std::memory_order_release);
    ring_bell(c->slot(t.peer)); /* room for its sends */
    t.done = t.off == total;
    return true;
}

template <typename T> T combine(T a, T b, ncclRedOp_t op) {
    if (op == ncclMax) return a > b ? a : b;
    if (op == ncclMin) return a < b ? a : b;
    if constexpr (std::is_integral<T>::value) {
        /* the GPU's integer arithmetic wraps: compute in the unsigned type (no UB) */
        using U = typename std::make_unsigned<T>::type;
        U x = (U)a, y = (U)b;
        return (T)(op == ncclProd ? (U)(x * y) : (U)(x + y));
    } else {
        return op == ncclProd ? a * b : a + b; /* sum, avg (divided at the end) */
    }
}
/* 16-bit floats: each step rounds to the type, as the GPU's half arithmetic does. */
template <> __half combine(__half a, __half b, ncclRedOp_t op) {
    return __float2half_rn(combine(__half2float(a), __half2float(b), op));
}
template <> __nv_bfloat16 combine(__nv_bfloat16 a, __nv_bfloat16 b, ncclRedOp_t op) {
    return __float2bfloat16_rn(combine(__bfloat162float(a), __bfloat162float(b), op));
}

template <typename T> void reduce_as(const reduce_step &s, int nranks) {
    const T *p = reinterpret_cast<const T *>(s.parts.data());
    T *out = static_cast<T *>(s.dst);
    for (size_t i = 0; i < s.count; i++) {
        T acc = p[i];
        for (int r = 1; r < nranks; r++) acc = combine(acc, p[(size_t)r * s.count + i], s.op);
        out[i] = acc;
    }
    if (s.op == ncclAvg) {
        for (size_t i = 0; i < s.count; i++) {
            if constexpr (std::is_same<T, __half>::value)
                out[i] = __float2half_rn(__half2float(out[i]) / nranks);
            else if constexpr (std::is_same<T, __nv_bfloat16>::value)
                out[i] = __float2bfloat16_rn(__bfloat162float(out[i]) / nranks);
            else
                out[i] = (T)(out[i] / (T)nranks);
        }
    }
}

void reduce(const reduce_step &s, int nranks) {
    switch (s.dt) {
    case ncclInt8: reduce_as<int8_t>(s, nranks); break;
    case ncclUint8: reduce_as<uint8_t>(s, nranks); break;
    case ncclInt32: reduce_as<int32_t>(s, nranks); break;
    case ncclUint32: reduce_as<uint32_t>(s, nranks); break;
    case ncclInt64: reduce_as<int64_t>(s, nranks); break;
    case ncclUint64: reduce_as<uint64_t>(s, nranks); break;
    case ncclFloat16: reduce_as<__half>(s, nranks); break;
    case ncclFloat32: reduce_as<float>(s, nranks); break;
    case ncclFloat64: reduce_as<double>(s, nranks); break;
    case ncclBfloat16: reduce_as<__nv_bfloat16>(s, nranks); break;
    default: break; /* refused at the call */
    }
}

/* Mark the peers of unfinished tasks that died (even as unreaped zombies) or destroyed their
 * communicator; *why (per peer) says which.  The caller then makes one more pass over the rings
 * (a peer may have written everything before exiting) and fails if still nothing moves. */
void find_gone(ncclComm *c, const op_desc &d, std::vector<std::string> &gone) {
    for (const task &t : d.tasks) {
        if (t.done || t.peer == c->rank || !gone[t.peer].empty()) continue;
        rank_slot &p = c->slot(t.peer);
        const int pid = p.pid.load();
        if (p.state.load() == LEFT)
            gone[t.peer] = "rank " + std::to_string(t.peer) + " destroyed its communicator while this rank waits in " +
                           d.name;
        else if (pid_dead(pid))
            gone[t.peer] = "rank " + std::to_string(t.peer) + " (pid " + std::to_string(pid) + ") died during " + d.name;
    }
}

/* After a pass that moved nothing: an unfinished task whose peer was already gone before the pass
 * will never finish. */
bool stuck_on_gone(ncclComm *c, const op_desc &d, const std::vector<std::string> &gone, std::string *why) {
    for (const task &t : d.tasks)
        if (!t.done && !gone[t.peer].empty()) {
            *why = gone[t.peer];
            return true;
        }
    (void)c;
    return false;
}

/* The op body, on the stream's worker. */
void run_op(ncclComm *c, op_desc &d) {
    c->running.fetch_add(1);
    bool ok = c->async.load() == ncclSuccess && !c->aborted.load();
    /* a GPU faults on a bad address: check every device range first */
    for (size_t i = 0; ok && i < d.ranges.size(); i++) {
        const char *why = nullptr;
        if (!emu::device_range_ok(d.ranges[i].first, d.ranges[i].second, &why)) {
            /* NCCL's error first: the host may see the sticky CUDA error at once and abort, and the
             * abort tells the peers this text */
            c->fail(ncclUnhandledCudaError, "%s: buffer of %zu B at %p: %s", d.name.c_str(), d.ranges[i].second,
                    d.ranges[i].first, why ? why : "not device memory");
            emu::report("out-of-bounds", "%s: %zu B at %p: %s", d.name.c_str(), d.ranges[i].second,
                        d.ranges[i].first, why ? why : "not device memory");
            emu::async_error(cudaErrorIllegalAddress, "%s: %zu B at %p: %s", d.name.c_str(), d.ranges[i].second,
                             d.ranges[i].first, why ? why : "not device memory");
            ok = false;
        }
    }
    if (ok)
        for (size_t i = 0; i < d.local_copies_dst_src.size(); i++) {
            memmove(d.local_copies_dst_src[i].first, d.local_copies_dst_src[i].second, d.local_copy_bytes[i]);
            emu::device_mark_written(d.local_copies_dst_src[i].first, d.local_copy_bytes[i]);
        }
    double next_check = now_ms() + 20;
    std::vector<char> sbusy(c->nranks), rbusy(c->nranks);
    std::vector<std::string> gone(c->nranks); /* why each peer is gone ("" = it is not) */
    rank_slot &me = c->slot(c->rank);
    while (ok) {
        uint32_t bell = me.doorbell.load(std::memory_order_acquire);
        bool moved = false, all = true;
        /* several tasks of a group may use one ring: each direction of a pair serves them in order */
        std::fill(sbusy.begin(), sbusy.end(), 0);
        std::fill(rbusy.begin(), rbusy.end(), 0);
        for (task &t : d.tasks) {
            if (t.done) continue;
            std::vector<char> &busy = t.send ? sbusy : rbusy;
            if (!busy[t.peer]) moved |= progress(c, t, d.name.c_str());
            if (!t.done) busy[t.peer] = 1, all = false;
        }
        if (c->async.load() != ncclSuccess) break; /* a mismatch */
        if (all) break;
        if (moved) continue;
        std::string why;
        if (c->aborted.load()) {
            c->fail(ncclInvalidUsage, "%s: aborted by ncclCommAbort", d.name.c_str());
            break;
        }
        if (c->group_aborted(&why)) {
            c->fail(ncclRemoteError, "%s: %s", d.name.c_str(), why.c_str());
            break;
        }
        if (emu::op_should_stop()) {
            c->fail(ncclSystemError, "%s: the stream was stopped (process exiting or stream destroyed)",
                    d.name.c_str());
            break;
        }
        if (stuck_on_gone(c, d, gone, &why)) {
            c->fail(ncclRemoteError, "%s", why.c_str());
            break;
        }
        if (now_ms() >= next_check) {
            next_check = now_ms() + 20;
            find_gone(c, d, gone);
            continue; /* one more pass before judging */
        }
        futex_wait(&me.doorbell, bell, 10);
    }
    ok = c->async.load() == ncclSuccess && !c->aborted.load();
    if (ok)
        for (reduce_step &s : d.reduces) {
            reduce(s, c->nranks);
            emu::device_mark_written(s.dst, s.count * dtype_size(s.dt));
        }
    for (task &t : d.tasks)
        if (!t.send && t.dst_device && (ok || emu::device_range_ok(t.dst, t.hdr.bytes, nullptr)))
            emu::device_mark_written(t.dst, t.hdr.bytes);
    if (!ok)
        for (reduce_step &s : d.reduces)
            if (emu::device_range_ok(s.dst, s.count * dtype_size(s.dt), nullptr))
                emu::device_mark_written(s.dst, s.count * dtype_size(s.dt));
    c->running.fetch_sub(1);
    c->pending.fetch_sub(1);
}

/* ------------------------------------------------------------ calls and groups */

/* One NCCL call, as recorded until it is issued. */
struct call {
    ncclComm *comm;
    cudaStream_t stream;
    op_desc desc;
};

thread_local int t_group_depth = 0;
thread_local std::vector<call> t_group;
thread_local ncclResult_t t_group_err = ncclSuccess;

ncclResult_t issue(ncclComm *c, cudaStream_t s, std::shared_ptr<op_desc> d) {
    c->ops++;
    c->refs.fetch_add(1);
    c->pending.fetch_add(1);
    cudaError_t e = emu::enqueue(s, d->name.c_str(), [c, d] {
        run_op(c, *d);
        comm_release(c);
    });
    if (e != cudaSuccess) {
        c->pending.fetch_sub(1);
        comm_release(c);
        c->fail(ncclUnhandledCudaError, "%s: the stream refused the op: %s", d->name.c_str(), cudaGetErrorString(e));
        return ncclUnhandledCudaError;
    }
    return ncclSuccess;
}

/* Check the communicator can take a call; the caller's message names the call. */
ncclResult_t usable(ncclComm *c, const char *what) {
    if (!c) {
        set_global_last(std::string(what) + ": NULL communicator");
        return ncclInvalidArgument;
    }
    std::string gone;
    if (c->async.load() == ncclSuccess && c->group_aborted(&gone)) c->fail(ncclRemoteError, "%s", gone.c_str());
    const int a = c->async.load();
    if (a != ncclSuccess && a != ncclInProgress) return (ncclResult_t)a; /* failure is final, as in NCCL */
    const char *why = a == ncclInProgress ? "before the communicator finished initialising"
                      : c->finalizing.load() ? "after ncclCommFinalize" : nullptr;
    if (!why) return ncclSuccess;
    std::string m = std::string("emulated NCCL rank ") + std::to_string(c->rank) + ": " + what + " " + why;
    set_global_last(m);
    std::lock_guard<std::mutex> lk(c->mu);
    c->last_error = m;
    return ncclInvalidUsage;
}

ncclResult_t bad_arg(ncclComm *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
ncclResult_t bad_arg(ncclComm *c, const char *fmt, ...) {
    char b[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    std::string m = std::string("emulated NCCL: ") + b;
    set_global_last(m);
    if (c) {
        std::lock_guard<std::mutex> lk(c->mu);
        c->last_error = m;
    }
    return ncclInvalidArgument;
}

/* Issue a call now, or keep it for the group's end. */
ncclResult_t submit(call &&k) {
    if (t_group_depth > 0) {
        t_group.push_back(std::move(k));
        return ncclSuccess;
    }
    return issue(k.comm, k.stream, std::make_shared<op_desc>(std::move(k.desc)));
}

msg_hdr hdr_of(call_kind kind, size_t bytes, int root, uint32_t detail, uint64_t op_no) {
    msg_hdr h{};
    h.magic = MSG_MAGIC;
    h.kind = kind;
    h.bytes = bytes;
    h.root = root;
    h.detail = detail;
    h.op_no = op_no;
    return h;
}

task send_task(int peer, const void *src, const msg_hdr &h) {
    task t;
    t.send = true;
    t.peer = peer;
    t.src = static_cast<const unsigned char *>(src);
    t.hdr = h;
    return t;
}

task recv_task(int peer, void *dst, bool device, const msg_hdr &h) {
    task t;
    t.peer = peer;
    t.dst = static_cast<unsigned char *>(dst);
    t.dst_device = device;
    t.hdr = h;
    return t;
}

} // namespace

/* ------------------------------------------------------------ the API (nccl.h) */

extern "C" {

ncclResult_t ncclGetVersion(int *version) {
    if (!version) return ncclInvalidArgument;
    *version = NCCL_VERSION_CODE;
    return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId) {
    if (!uniqueId) return bad_arg(nullptr, "ncclGetUniqueId: NULL");
    id_layout id;
    memset(&id, 0, sizeof id);
    memcpy(id.magic, ID_MAGIC, sizeof ID_MAGIC);
    if (getrandom(&id.nonce, sizeof id.nonce, 0) != (ssize_t)sizeof id.nonce) {
        set_global_last(std::string("emulated NCCL: getrandom: ") + strerror(errno));
        return ncclSystemError;
    }
    snprintf(id.shm_name, sizeof id.shm_name, "/llmq-nccl-%d-%016llx", (int)getpid(), (unsigned long long)id.nonce);
    memset(uniqueId, 0, sizeof *uniqueId);
    memcpy(uniqueId->internal, &id, sizeof id);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank,
                                    ncclConfig_t *config) {
    if (!comm) return bad_arg(nullptr, "ncclCommInitRankConfig: NULL comm");
    *comm = nullptr;
    if (nranks < 1 || nranks > MAX_RANKS || rank < 0 || rank >= nranks)
        return bad_arg(nullptr, "ncclCommInitRankConfig: rank %d of %d ranks (the emulator has at most %d)", rank,
                       nranks, MAX_RANKS);
    id_layout id;
    memcpy(&id, commId.internal, sizeof id);
    if (memcmp(id.magic, ID_MAGIC, sizeof ID_MAGIC) || !memchr(id.shm_name, '\0', sizeof id.shm_name) ||
        id.shm_name[0] != '/')
        return bad_arg(nullptr, "ncclCommInitRankConfig: not a unique id from ncclGetUniqueId");
    bool blocking = true;
    if (config) {
        if (config->magic != CONFIG_MAGIC || config->size < offsetof(ncclConfig_t, cgaClusterSize))
            return bad_arg(nullptr, "ncclCommInitRankConfig: config not set from NCCL_CONFIG_INITIALIZER");
        if (config->blocking != NCCL_CONFIG_UNDEF_INT) blocking = config->blocking != 0;
    }
    ncclComm *c = new ncclComm;
    c->rank = rank;
    c->nranks = nranks;
    c->blocking = blocking;
    c->shm_name = id.shm_name;
    c->nonce = id.nonce;
    *comm = c;
    if (blocking) return join(c);
    c->init_thread = std::thread([c] { join(c); });
    return ncclInProgress;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank) {
    return ncclCommInitRankConfig(comm, nranks, commId, rank, nullptr);
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *asyncError) {
    if (!comm || !asyncError) return bad_arg(comm, "ncclCommGetAsyncError: NULL argument");
    /* A peer's abort is not reported here but by the ops (the one waiting, or the next call): an
     * init that completed stays completed, as in NCCL, even when a peer aborts right after. */
    int a = comm->async.load();
    if (a == ncclSuccess && comm->finalizing.load() && comm->pending.load() > 0) a = ncclInProgress;
    *asyncError = (ncclResult_t)a;
    return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t result) {
    switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "a CUDA call failed (emulated NCCL)";
    case ncclSystemError: return "a system call failed (emulated NCCL)";
    case ncclInternalError: return "internal error of the emulated NCCL";
    case ncclInvalidArgument: return "invalid argument (ncclGetLastError says which)";
    case ncclInvalidUsage: return "invalid usage (ncclGetLastError says which)";
    case ncclRemoteError: return "a peer rank failed, aborted or exited";
    case ncclInProgress: return "operation in progress";
    default: return "unknown result code";
    }
}

const char *ncclGetLastError(ncclComm_t comm) {
    if (comm) {
        t_last_copy = comm->last();
    } else {
        std::lock_guard<std::mutex> lk(g_last_mu);
        t_last_copy = g_last;
    }
    return t_last_copy.c_str();
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int *count) {
    if (!comm || !count) return ncclInvalidArgument;
    *count = comm->nranks;
    return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank) {
    if (!comm || !rank) return ncclInvalidArgument;
    *rank = comm->rank;
    return ncclSuccess;
}

/* Abort: fail this rank's ops at once, tell the peers, wait for the running op to leave, free. */
ncclResult_t ncclCommAbort(ncclComm_t comm) {
    if (!comm) return ncclSuccess;
    comm->aborted.store(true);
    comm->fail(ncclInvalidUsage, "the communicator was aborted (ncclCommAbort)");
    if (comm->init_thread.joinable()) comm->init_thread.join();
    if (comm->seg) {
        /* the peers learn why, when this rank's NCCL knew (a mismatch, a dead peer) */
        std::string why = comm->last();
        const std::string tag = "emulated NCCL rank " + std::to_string(comm->rank) + ": ";
        if (why.compare(0, tag.size(), tag) == 0) why.erase(0, tag.size());
        comm->publish_abort(why.find("aborted (ncclCommAbort)") != std::string::npos ? "" : why.c_str());
    }
    shm_unlink(comm->shm_name.c_str()); /* the group may never have formed */
    while (comm->running.load() > 0) {
        if (comm->seg) ring_bell(comm->slot(comm->rank));
        usleep(200);
    }
    comm_release(comm);
    return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
    if (!comm) return ncclInvalidArgument;
    comm->finalizing.store(true);
    if (!comm->blocking) return comm->pending.load() > 0 ? ncclInProgress : ncclSuccess;
    while (comm->pending.load() > 0 && comm->async.load() == ncclSuccess) usleep(100);
    return (ncclResult_t)comm->async.load();
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (!comm) return ncclSuccess;
    if (comm->async.load() == ncclInProgress && !comm->finalizing.load()) return ncclCommAbort(comm); /* still joining */
    if (comm->init_thread.joinable()) comm->init_thread.join();
    comm_release(comm);
    return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
    if (t_group_depth++ == 0) t_group_err = ncclSuccess;
    return ncclSuccess;
}

/* Issue the group: one op per (communicator, stream), in the order of their first call.  A call
 * refused inside the group fails the whole group (nothing is issued), as NCCL does. */
ncclResult_t ncclGroupEnd() {
    if (t_group_depth <= 0) return bad_arg(nullptr, "ncclGroupEnd without ncclGroupStart");
    if (--t_group_depth > 0) return ncclSuccess;
    std::vector<call> calls;
    calls.swap(t_group);
    if (t_group_err != ncclSuccess) return t_group_err;
    bool nonblocking = false;
    ncclResult_t r = ncclSuccess;
    std::vector<bool> taken(calls.size(), false);
    for (size_t i = 0; i < calls.size(); i++) {
        if (taken[i]) continue;
        auto d = std::make_shared<op_desc>();
        size_t n = 0;
        for (size_t j = i; j < calls.size(); j++) {
            if (taken[j] || calls[j].comm != calls[i].comm || calls[j].stream != calls[i].stream) continue;
            taken[j] = true;
            op_desc &o = calls[j].desc;
            for (auto &t : o.tasks) d->tasks.push_back(std::move(t));
            for (auto &s : o.reduces) d->reduces.push_back(std::move(s));
            for (auto &g : o.ranges) d->ranges.push_back(g);
            for (size_t k = 0; k < o.local_copies_dst_src.size(); k++) {
                d->local_copies_dst_src.push_back(o.local_copies_dst_src[k]);
                d->local_copy_bytes.push_back(o.local_copy_bytes[k]);
            }
            n++;
            if (n == 1) d->name = o.name;
        }
        if (n > 1) d->name = "nccl group of " + std::to_string(n) + " calls";
        nonblocking |= !calls[i].comm->blocking;
        ncclResult_t e = issue(calls[i].comm, calls[i].stream, d);
        if (e != ncclSuccess && r == ncclSuccess) r = e;
    }
    /* a non-blocking communicator answers ncclInProgress; ncclCommGetAsyncError then says when done */
    return r == ncclSuccess && nonblocking ? ncclInProgress : r;
}

/* A refused call inside a group fails the group. */
static ncclResult_t refuse(ncclResult_t r) {
    if (t_group_depth > 0 && t_group_err == ncclSuccess) t_group_err = r;
    return r;
}

ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
    ncclResult_t r = usable(comm, "ncclSend");
    if (r != ncclSuccess) return refuse(r);
    const size_t es = dtype_size(datatype), bytes = count * es;
    if (!es || peer < 0 || peer >= comm->nranks || (bytes && !sendbuff))
        return refuse(bad_arg(comm, "ncclSend: count %zu of type %d to peer %d of %d, buffer %p", count, (int)datatype,
                              peer, comm->nranks, sendbuff));
    call k{comm, stream, {}};
    k.desc.name = "ncclSend";
    k.desc.tasks.push_back(send_task(peer, sendbuff, hdr_of(K_P2P, bytes, 0, 0, comm->ops)));
    if (bytes) k.desc.ranges.push_back({sendbuff, bytes});
    return refuse(submit(std::move(k)));
}

ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
    ncclResult_t r = usable(comm, "ncclRecv");
    if (r != ncclSuccess) return refuse(r);
    const size_t es = dtype_size(datatype), bytes = count * es;
    if (!es || peer < 0 || peer >= comm->nranks || (bytes && !recvbuff))
        return refuse(bad_arg(comm, "ncclRecv: count %zu of type %d from peer %d of %d, buffer %p", count,
                              (int)datatype, peer, comm->nranks, recvbuff));
    call k{comm, stream, {}};
    k.desc.name = "ncclRecv";
    k.desc.tasks.push_back(recv_task(peer, recvbuff, true, hdr_of(K_P2P, bytes, 0, 0, comm->ops)));
    if (bytes) k.desc.ranges.push_back({recvbuff, bytes});
    return refuse(submit(std::move(k)));
}

ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
    ncclResult_t r = usable(comm, "ncclAllGather");
    if (r != ncclSuccess) return refuse(r);
    const size_t es = dtype_size(datatype), bytes = sendcount * es;
    if (!es || (bytes && (!sendbuff || !recvbuff)))
        return refuse(bad_arg(comm, "ncclAllGather: count %zu of type %d, buffers %p %p", sendcount, (int)datatype,
                              sendbuff, recvbuff));
    call k{comm, stream, {}};
    k.desc.name = "ncclAllGather";
    const msg_hdr h = hdr_of(K_ALLGATHER, bytes, 0, 0, comm->ops);
    for (int p = 0; p < comm->nranks; p++) {
        k.desc.tasks.push_back(send_task(p, sendbuff, h));
        k.desc.tasks.push_back(recv_task(p, static_cast<unsigned char *>(recvbuff) + (size_t)p * bytes, true, h));
    }
    if (bytes) {
        k.desc.ranges.push_back({sendbuff, bytes});
        k.desc.ranges.push_back({recvbuff, bytes * comm->nranks});
    }
    return refuse(submit(std::move(k)));
}

ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream) {
    ncclResult_t r = usable(comm, "ncclBroadcast");
    if (r != ncclSuccess) return refuse(r);
    const size_t es = dtype_size(datatype), bytes = count * es;
    const bool is_root = root == comm->rank;
    if (!es || root < 0 || root >= comm->nranks || (bytes && (!recvbuff || (is_root && !sendbuff))))
        return refuse(bad_arg(comm, "ncclBroadcast: count %zu of type %d from root %d of %d, buffers %p %p", count,
                              (int)datatype, root, comm->nranks, sendbuff, recvbuff));
    call k{comm, stream, {}};
    k.desc.name = "ncclBroadcast";
    const msg_hdr h = hdr_of(K_BROADCAST, bytes, root, 0, comm->ops);
    if (is_root) {
        for (int p = 0; p < comm->nranks; p++)
            if (p != root) k.desc.tasks.push_back(send_task(p, sendbuff, h));
        if (bytes) k.desc.ranges.push_back({sendbuff, bytes});
        if (bytes && sendbuff != recvbuff) {
            k.desc.local_copies_dst_src.push_back({recvbuff, const_cast<void *>(sendbuff)});
            k.desc.local_copy_bytes.push_back(bytes);
        }
    } else {
        k.desc.tasks.push_back(recv_task(root, recvbuff, true, h));
    }
    if (bytes) k.desc.ranges.push_back({recvbuff, bytes});
    return refuse(submit(std::move(k)));
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    ncclResult_t r = usable(comm, "ncclAllReduce");
    if (r != ncclSuccess) return refuse(r);
    const size_t es = dtype_size(datatype), bytes = count * es;
    if (!es || datatype == ncclFloat8e4m3 || datatype == ncclFloat8e5m2 || (int)op < 0 || (int)op >= ncclNumOps ||
        (bytes && (!sendbuff || !recvbuff)))
        return refuse(bad_arg(comm, "ncclAllReduce: count %zu of type %s, op %d, buffers %p %p (the emulator "
                                    "reduces the built-in ops of the non-fp8 types)",
                              count, dtype_name((int)datatype), (int)op, sendbuff, recvbuff));
    call k{comm, stream, {}};
    k.desc.name = "ncclAllReduce";
    const msg_hdr h = hdr_of(K_ALLREDUCE, bytes, 0, (uint32_t)datatype << 8 | (uint32_t)op, comm->ops);
    reduce_step s;
    s.dt = datatype;
    s.op = op;
    s.count = count;
    s.parts.resize(bytes * comm->nranks);
    s.dst = recvbuff;
    k.desc.reduces.push_back(std::move(s));
    unsigned char *parts = k.desc.reduces.back().parts.data();
    for (int p = 0; p < comm->nranks; p++) {
        k.desc.tasks.push_back(send_task(p, sendbuff, h));
        k.desc.tasks.push_back(recv_task(p, parts + (size_t)p * bytes, false, h));
    }
    if (bytes) {
        k.desc.ranges.push_back({sendbuff, bytes});
        k.desc.ranges.push_back({recvbuff, bytes});
    }
    return refuse(submit(std::move(k)));
}

} // extern "C"
