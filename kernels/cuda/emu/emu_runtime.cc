/*
 * emu_runtime.cc — the cudart subset of the emulated device (`make cuda-emu`): the device profile,
 * device memory, streams, events, errors, stream capture and graphs, and launch validation.
 *
 * It behaves as a GPU does where host code can get it wrong, so that the emulator exposes what a
 * GPU would:
 *  - device memory is one reserved address range; every allocation is made accessible page by
 *    page, ends at a page end and is followed by an inaccessible page, so an overrun faults; a
 *    freed allocation is made inaccessible again and its addresses are not reused until the range
 *    runs out (a use after free faults); new allocations hold 0xff bytes (NaN in every float type);
 *  - each stream, and the legacy stream 0, runs its ops in order on its own worker thread,
 *    asynchronously to the host: a missing synchronisation shows as a wrong or racy result;
 *  - launch configuration errors are returned by the next cudaGetLastError and are not sticky;
 *    an error raised while an op runs (async_error) is sticky: every later call returns it;
 *  - stream capture records ops instead of running them and refuses what CUDA refuses.
 *
 * Invariants.  Locks are taken in the order rt.mu, then a stream's mu, then an event's mu; no lock
 * is held while an op runs.  The runtime's state is allocated once and never destroyed, so stream
 * workers still blocked at process exit touch nothing that static destructors have torn down.
 * One heap serves every device ordinal (a process drives one device in this project).
 */
#include "kernels/cuda/emu/emu_internal.hh"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

/* emu.h's entry point, defined here (emu.h itself is for kernel sources). */
void emu_launch(const void *func, const char *name, dim3 grid, dim3 block, size_t dyn_smem, cudaStream_t s,
                std::function<void()> body);

namespace emu {

/* ------------------------------------------------------------ device profile */

namespace {

/* What cudaDeviceGetAttribute reports beyond struct profile. */
struct profile_extra {
    int mem_clock_khz;       /* x2 (DDR) x bus bytes = the nominal bandwidth */
    int bus_bits;
    int l2_bytes;
    int threads_per_sm;
    size_t smem_per_sm;
    int regs_per_sm;
    int core_clock_khz;
};

struct profile_row {
    const char *key, *gpu;
    int major, minor, n_sms;
    size_t mem_mib;          /* what the real card reports as total (nvidia-smi) */
    size_t smem_optin;
    double bw_gbs;
    profile_extra x;
};

const profile_row k_profiles[] = {
    {"t4", "Tesla T4", 7, 5, 40, 15360, 64 << 10, 320.0, {5001000, 256, 4 << 20, 1024, 64 << 10, 65536, 1590000}},
    {"a10g", "NVIDIA A10G", 8, 6, 80, 23028, 99 << 10, 600.0, {6251000, 384, 6 << 20, 1536, 100 << 10, 65536, 1710000}},
    {"h100", "NVIDIA H100 80GB HBM3", 9, 0, 132, 81559, 227 << 10, 3350.0,
     {2619000, 5120, 50 << 20, 2048, 228 << 10, 65536, 1980000}},
};

struct chosen_profile {
    profile p;
    profile_extra x;
    int n_devices;
};

const chosen_profile &chosen() {
    static const chosen_profile *cp = [] {
        chosen_profile *c = new chosen_profile();
        const char *want = getenv("LLMQ_EMU_DEVICE");
        const profile_row *row = &k_profiles[0];
        if (want && *want) {
            row = nullptr;
            for (const profile_row &r : k_profiles)
                if (!strcmp(r.key, want)) row = &r;
            if (!row) {
                fprintf(stderr, "llmq-emu: LLMQ_EMU_DEVICE=%s is not one of t4, a10g, h100; using t4\n", want);
                row = &k_profiles[0];
            }
        }
        profile &p = c->p;
        p.key = row->key;
        snprintf(p.name, sizeof p.name, "Emulated %s (llmq-emu, CPU)", row->gpu);
        p.major = row->major;
        p.minor = row->minor;
        p.n_sms = row->n_sms;
        p.mem_bytes = row->mem_mib << 20;
        const char *mb = getenv("LLMQ_EMU_MEM_MB");
        if (mb && atol(mb) > 0) p.mem_bytes = (size_t)atol(mb) << 20;
        p.smem_per_block = 48 << 10;
        p.smem_per_block_optin = row->smem_optin;
        p.max_threads_per_block = 1024;
        p.warp_size = 32;
        p.bw_gbs = row->bw_gbs;
        c->x = row->x;
        const char *nd = getenv("LLMQ_EMU_DEVICES");
        c->n_devices = nd && *nd && atoi(nd) >= 0 ? atoi(nd) : 8;
        return c;
    }();
    return *cp;
}

} // namespace

const profile &device_profile() { return chosen().p; }

/* ------------------------------------------------------------ errors */

namespace {

std::atomic<int> g_sticky{0};        /* the first asynchronous error: the context is dead */
std::atomic<bool> g_exiting{false};  /* set at exit: workers stop, blocked ops give up */
thread_local cudaError_t tls_last = cudaSuccess;

cudaError_t sticky_error() { return (cudaError_t)g_sticky.load(std::memory_order_acquire); }

/* Every failing call leaves its error for cudaGetLastError (cudaErrorNotReady is a status). */
cudaError_t fail(cudaError_t e) {
    if (e != cudaSuccess && e != cudaErrorNotReady) tls_last = e;
    return e;
}

} // namespace

#define EMU_STICKY_RETURN()                                                                                   \
    do {                                                                                                       \
        const cudaError_t sticky_e_ = sticky_error();                                                          \
        if (sticky_e_ != cudaSuccess) return fail(sticky_e_);                                                  \
    } while (0)

void async_error(cudaError_t e, const char *fmt, ...) {
    if (e == cudaSuccess) e = cudaErrorUnknown;
    int expected = 0;
    if (!g_sticky.compare_exchange_strong(expected, (int)e)) return; /* printed once: the first is the cause */
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "llmq-emu: %s: %s (sticky: every later CUDA call returns it)\n", cudaGetErrorName(e), msg);
}

/* ------------------------------------------------------------ device memory */

namespace {

/* One allocation, live or freed.  Records are never reused, so a reader that found one through the
 * page table may read it at any time. */
struct alloc_rec {
    uintptr_t base;  /* what cudaMalloc returned */
    size_t size;     /* bytes asked for */
    uintptr_t lo;    /* first page of its span */
    size_t pages;    /* accessible pages; the span is pages + 1 (the gap) */
    int live;        /* __atomic */
};

const size_t k_max_recs = (size_t)1 << 22;

struct heap_t {
    std::mutex mu;
    uintptr_t lo = 0;               /* the reserved range [lo, lo + len) */
    size_t len = 0;
    size_t page = 4096;
    unsigned page_shift = 12;
    unsigned char *shadow = nullptr; /* [len]: 1 = written since allocation */
    uint32_t *page_rec = nullptr;    /* [len / page]: the record of the span holding the page, 0 none */
    alloc_rec *recs = nullptr;       /* [k_max_recs]; 0 unused */
    uint32_t n_recs = 1;
    size_t used = 0;                 /* accessible bytes of live allocations: cudaMemGetInfo */
    size_t poison_max = 0;           /* allocations up to this size are filled with 0xff */
    std::map<uintptr_t, size_t> free_ranges;             /* start -> bytes, reusable */
    std::deque<std::pair<uintptr_t, size_t>> quarantine; /* freed spans, oldest first */
};

void *reserve(size_t bytes, int prot) {
    void *p = mmap(nullptr, bytes, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
}

heap_t &heap() {
    static heap_t *h = [] {
        heap_t *hp = new heap_t();
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        hp->page = page;
        hp->page_shift = (unsigned)__builtin_ctzl(page);
        /* Twice the memory plus slack: freed spans wait in quarantine while new ones are carved. */
        size_t len = 2 * device_profile().mem_bytes + ((size_t)1 << 30);
        len = (len + page - 1) & ~(page - 1);
        void *range = reserve(len, PROT_NONE);
        void *shadow = reserve(len, PROT_READ | PROT_WRITE);
        void *tab = reserve(len / page * sizeof(uint32_t), PROT_READ | PROT_WRITE);
        void *recs = reserve(k_max_recs * sizeof(alloc_rec), PROT_READ | PROT_WRITE);
        if (!range || !shadow || !tab || !recs) {
            fprintf(stderr, "llmq-emu: cannot reserve %zu MiB of address space for device memory: %s\n", len >> 20,
                    strerror(errno));
            abort();
        }
        hp->lo = (uintptr_t)range;
        hp->len = len;
        hp->shadow = (unsigned char *)shadow;
        hp->page_rec = (uint32_t *)tab;
        hp->recs = (alloc_rec *)recs;
        hp->free_ranges[hp->lo] = len;
        const char *pz = getenv("LLMQ_EMU_POISON");
        hp->poison_max = (size_t)256 << 20; /* larger ones (a KV pool of GBs) stay zero: poisoning commits memory */
        if (pz && !strcmp(pz, "0")) hp->poison_max = 0;
        if (pz && !strcmp(pz, "all")) hp->poison_max = SIZE_MAX;
        return hp;
    }();
    return *h;
}

/* The heap once created: the pointer queries (called on every instrumented access) read it without
 * creating it, in one load. */
std::atomic<heap_t *> g_heap{nullptr};
heap_t &heap_init() {
    heap_t &h = heap();
    g_heap.store(&h, std::memory_order_release);
    return h;
}

/* Return the quarantined spans to the free ranges, oldest first, merging neighbours. */
void heap_reclaim(heap_t &h) {
    while (!h.quarantine.empty()) {
        auto [start, bytes] = h.quarantine.front();
        h.quarantine.pop_front();
        auto next = h.free_ranges.lower_bound(start);
        if (next != h.free_ranges.end() && start + bytes == next->first) {
            bytes += next->second;
            next = h.free_ranges.erase(next);
        }
        if (next != h.free_ranges.begin()) {
            auto prev = std::prev(next);
            if (prev->first + prev->second == start) {
                prev->second += bytes;
                continue;
            }
        }
        h.free_ranges[start] = bytes;
    }
}

bool heap_carve(heap_t &h, size_t span, uintptr_t *out) {
    for (auto it = h.free_ranges.begin(); it != h.free_ranges.end(); ++it) {
        if (it->second < span) continue;
        *out = it->first;
        const size_t rest = it->second - span;
        h.free_ranges.erase(it);
        if (rest) h.free_ranges[*out + span] = rest;
        return true;
    }
    return false;
}

cudaError_t heap_alloc(size_t size, void **out) {
    heap_t &h = heap_init();
    std::lock_guard<std::mutex> lk(h.mu);
    const size_t rounded = (size + 255) & ~(size_t)255;
    const size_t pages = (rounded + h.page - 1) >> h.page_shift;
    const size_t span = (pages + 1) << h.page_shift;
    if (h.used + (pages << h.page_shift) > device_profile().mem_bytes || h.n_recs >= k_max_recs)
        return cudaErrorMemoryAllocation;
    uintptr_t lo;
    if (!heap_carve(h, span, &lo)) {
        heap_reclaim(h);
        if (!heap_carve(h, span, &lo)) return cudaErrorMemoryAllocation;
    }
    if (mprotect((void *)lo, pages << h.page_shift, PROT_READ | PROT_WRITE)) {
        h.free_ranges[lo] = span; /* give it back unmerged: rare */
        return cudaErrorMemoryAllocation;
    }
    /* Right-aligned: the first byte past the (256-rounded) end is the gap page. */
    const uintptr_t base = lo + (pages << h.page_shift) - rounded;
    if (size <= h.poison_max) memset((void *)base, 0xff, rounded);
    const uint32_t idx = h.n_recs++;
    alloc_rec *r = &h.recs[idx];
    r->base = base;
    r->size = size;
    r->lo = lo;
    r->pages = pages;
    __atomic_store_n(&r->live, 1, __ATOMIC_RELEASE);
    const size_t first = (lo - h.lo) >> h.page_shift;
    for (size_t i = 0; i <= pages; i++) __atomic_store_n(&h.page_rec[first + i], idx, __ATOMIC_RELEASE);
    h.used += pages << h.page_shift;
    *out = (void *)base;
    return cudaSuccess;
}

alloc_rec *rec_of(const heap_t &h, uintptr_t a) {
    const uint32_t idx = __atomic_load_n(&h.page_rec[(a - h.lo) >> h.page_shift], __ATOMIC_ACQUIRE);
    return idx ? &h.recs[idx] : nullptr;
}

cudaError_t heap_free(void *p) {
    heap_t *hp = g_heap.load(std::memory_order_acquire);
    const uintptr_t a = (uintptr_t)p;
    if (!hp || a - hp->lo >= hp->len) return cudaErrorInvalidValue;
    heap_t &h = *hp;
    std::lock_guard<std::mutex> lk(h.mu);
    alloc_rec *r = rec_of(h, a);
    if (!r || r->base != a || !__atomic_load_n(&r->live, __ATOMIC_ACQUIRE)) return cudaErrorInvalidValue;
    __atomic_store_n(&r->live, 0, __ATOMIC_RELEASE);
    const size_t bytes = r->pages << h.page_shift;
    madvise((void *)r->lo, bytes, MADV_DONTNEED);
    mprotect((void *)r->lo, bytes, PROT_NONE);
    madvise(h.shadow + (r->lo - h.lo), bytes, MADV_DONTNEED); /* "written" starts over at 0 */
    h.used -= bytes;
    h.quarantine.emplace_back(r->lo, bytes + h.page);
    return cudaSuccess;
}

thread_local char tls_why[256];

} // namespace

bool is_device(const void *p) {
    const heap_t *h = g_heap.load(std::memory_order_acquire);
    return h && (uintptr_t)p - h->lo < h->len;
}

bool device_range_ok(const void *p, size_t n, const char **why) {
    const heap_t *h = g_heap.load(std::memory_order_acquire);
    const uintptr_t a = (uintptr_t)p;
    if (!h || a - h->lo >= h->len) {
        if (why) *why = "host memory, not device memory";
        return false;
    }
    const alloc_rec *r = rec_of(*h, a);
    if (r && __atomic_load_n(&r->live, __ATOMIC_ACQUIRE) && a >= r->base && a <= r->base + r->size &&
        n <= r->base + r->size - a)
        return true;
    if (!why) return false;
    if (!r) snprintf(tls_why, sizeof tls_why, "device memory never allocated");
    else if (!__atomic_load_n(&r->live, __ATOMIC_ACQUIRE))
        snprintf(tls_why, sizeof tls_why, "freed allocation of %zu B at %p", r->size, (void *)r->base);
    else if (a < r->base)
        snprintf(tls_why, sizeof tls_why, "%zu B before the %zu B allocation at %p", (size_t)(r->base - a), r->size,
                 (void *)r->base);
    else
        snprintf(tls_why, sizeof tls_why, "%zu B past the end of the %zu B allocation at %p",
                 (size_t)(a + n - (r->base + r->size)), r->size, (void *)r->base);
    *why = tls_why;
    return false;
}

void device_mark_written(const void *p, size_t n) {
    const heap_t *h = g_heap.load(std::memory_order_acquire);
    const uintptr_t off = (uintptr_t)p - (h ? h->lo : 0);
    if (!h || off >= h->len || n > h->len - off) return;
    memset(h->shadow + off, 1, n);
}

bool device_written(const void *p, size_t n) {
    const heap_t *h = g_heap.load(std::memory_order_acquire);
    const uintptr_t off = (uintptr_t)p - (h ? h->lo : 0);
    if (!h || off >= h->len || n > h->len - off) return true; /* not device memory: not tracked */
    const unsigned char *s = h->shadow + off;
    if (n <= 16) {
        for (size_t i = 0; i < n; i++)
            if (!s[i]) return false;
        return true;
    }
    return !memchr(s, 0, n);
}

/* ------------------------------------------------------------ streams, events, capture */

namespace {

struct stream_t;
using stream_ref = std::shared_ptr<stream_t>;
using shared_fn = std::shared_ptr<std::function<void()>>;

struct dep_t {
    stream_ref s;
    uint64_t ticket; /* wait until s has completed this many ops */
};

struct op_t {
    const char *name;
    shared_fn fn;
    bool always;  /* runs after a sticky error too (an event record: its waiters must wake) */
    std::vector<dep_t> deps;
};

struct graph_op {
    const char *name;
    shared_fn fn;
    bool always;
};

/* A capture sequence (guarded by rt.mu). */
struct capture_t {
    cudaStreamCaptureMode mode;
    std::thread::id owner;  /* the thread that began it */
    bool blocking;          /* the captured stream syncs with the legacy stream */
    bool invalid = false;
    std::vector<graph_op> ops;
};

struct stream_t {
    bool legacy = false;
    bool blocking = true;
    std::mutex mu;
    std::condition_variable cv;  /* work arrived, an op completed, or the stream is dying */
    std::deque<op_t> q;          /* q.front() is the op running or about to */
    uint64_t enq = 0, done = 0;  /* ops enqueued, ops completed */
    bool dying = false;          /* cudaStreamDestroy: drain, then the worker ends */
    std::shared_ptr<capture_t> cap; /* guarded by rt.mu */
};

struct event_t {
    unsigned flags;
    std::mutex mu;
    std::condition_variable cv;
    uint64_t rec = 0, done = 0; /* records made, records completed */
    int64_t t_ns = 0;           /* host clock when the latest completed record ran */
    std::weak_ptr<capture_t> cap; /* the capture it was last recorded into */
};

struct graph_t {
    std::vector<graph_op> ops;
};

struct runtime_t {
    std::mutex mu;
    stream_ref legacy;
    std::unordered_map<void *, stream_ref> streams; /* created streams by handle */
    std::vector<std::weak_ptr<stream_t>> draining;  /* destroyed ones whose worker still runs their ops */
    std::unordered_map<void *, std::shared_ptr<event_t>> events;
    std::unordered_map<void *, graph_t *> graphs, execs;
    std::vector<std::shared_ptr<capture_t>> captures; /* active ones */
    std::unordered_map<const void *, int> max_dyn_smem; /* cudaFuncSetAttribute, by kernel address */
    std::condition_variable exit_cv;
    int busy = 0; /* workers running an op, for the exit handler */
};

thread_local stream_t *tls_stream = nullptr;       /* the worker's own stream */
thread_local cudaStream_t tls_stream_handle = nullptr;
thread_local int tls_device = 0;

int64_t now_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void on_exit_handler();
std::vector<stream_ref> streams_all(runtime_t &r);

runtime_t &rt() {
    static runtime_t *r = [] {
        runtime_t *x = new runtime_t();
        atexit(on_exit_handler);
        return x;
    }();
    return *r;
}

/* At exit: workers take no new op and leave; ops running now get a moment to finish (an op in a
 * collective sees op_should_stop), so that none runs while static destructors tear the process down. */
void on_exit_handler() {
    runtime_t &r = rt();
    std::unique_lock<std::mutex> lk(r.mu);
    g_exiting.store(true);
    for (const stream_ref &t : streams_all(r)) {
        std::lock_guard<std::mutex> sl(t->mu);
        t->cv.notify_all();
    }
    if (r.legacy) {
        std::lock_guard<std::mutex> sl(r.legacy->mu);
        r.legacy->cv.notify_all();
    }
    r.exit_cv.wait_for(lk, std::chrono::seconds(2), [&] { return r.busy == 0; });
}

void wait_ticket(stream_t &s, uint64_t ticket) {
    std::unique_lock<std::mutex> lk(s.mu);
    s.cv.wait(lk, [&] { return s.done >= ticket || g_exiting.load(); });
}

void worker_main(stream_ref s, cudaStream_t handle) {
    pthread_setname_np(pthread_self(), s->legacy ? "emu-stream0" : "emu-stream");
    tls_stream = s.get();
    tls_stream_handle = handle;
    runtime_t &r = rt();
    for (;;) {
        op_t *op;
        {
            std::unique_lock<std::mutex> lk(s->mu);
            s->cv.wait(lk, [&] { return !s->q.empty() || s->dying || g_exiting.load(); });
            if (g_exiting.load() || s->q.empty()) break;
            op = &s->q.front(); /* stays in place until popped below: deque front is stable */
        }
        for (dep_t &d : op->deps) wait_ticket(*d.s, d.ticket);
        op->deps.clear();
        {
            std::lock_guard<std::mutex> lk(r.mu);
            if (g_exiting.load()) break;
            r.busy++;
        }
        if (op->always || sticky_error() == cudaSuccess) (*op->fn)(); /* a dead context runs nothing more */
        {
            std::lock_guard<std::mutex> lk(r.mu);
            r.busy--;
            r.exit_cv.notify_all();
        }
        std::lock_guard<std::mutex> lk(s->mu);
        s->q.pop_front();
        s->done++;
        s->cv.notify_all();
    }
    tls_stream = nullptr;
}

stream_ref stream_new(bool legacy, bool blocking, cudaStream_t *handle) {
    stream_ref s = std::make_shared<stream_t>();
    s->legacy = legacy;
    s->blocking = blocking;
    const cudaStream_t h = legacy ? cudaStreamLegacy : (cudaStream_t)s.get();
    std::thread(worker_main, s, h).detach();
    if (handle) *handle = h;
    return s;
}

/* The stream of handle h (rt.mu held), or null when h names none.  0, cudaStreamLegacy and
 * cudaStreamPerThread are all the legacy stream (nothing here is compiled with per-thread default
 * streams). */
stream_ref stream_of(runtime_t &r, cudaStream_t h) {
    if (h == nullptr || h == cudaStreamLegacy || h == cudaStreamPerThread) {
        if (!r.legacy) r.legacy = stream_new(true, true, nullptr);
        return r.legacy;
    }
    auto it = r.streams.find((void *)h);
    return it == r.streams.end() ? nullptr : it->second;
}

/* Every stream with work that may still run: the created ones and the destroyed ones still draining
 * (rt.mu held; the legacy stream is not included). */
std::vector<stream_ref> streams_all(runtime_t &r) {
    std::vector<stream_ref> out;
    for (auto &kv : r.streams) out.push_back(kv.second);
    for (size_t i = 0; i < r.draining.size();) {
        if (stream_ref d = r.draining[i].lock()) {
            out.push_back(d);
            i++;
        } else {
            r.draining.erase(r.draining.begin() + (long)i);
        }
    }
    return out;
}

void capture_invalidate(capture_t *c) {
    c->invalid = true;
    c->ops.clear();
}

/* A call CUDA deems unsafe during capture (cudaMalloc, synchronous copies, ...), under rt.mu: refused,
 * invalidating the captures that forbid it, when the calling thread began a capture that is not
 * relaxed, or any thread began a global one. */
cudaError_t unsafe_call(runtime_t &r) {
    cudaError_t e = cudaSuccess;
    const std::thread::id me = std::this_thread::get_id();
    for (auto &c : r.captures) {
        if (c->mode == cudaStreamCaptureModeRelaxed) continue;
        if (c->mode == cudaStreamCaptureModeGlobal || c->owner == me) {
            capture_invalidate(c.get());
            e = cudaErrorStreamCaptureUnsupported;
        }
    }
    return e;
}

/* Work on the legacy stream while a blocking stream captures would make the capture depend on it. */
cudaError_t legacy_use(runtime_t &r) {
    cudaError_t e = cudaSuccess;
    for (auto &c : r.captures)
        if (c->blocking) {
            capture_invalidate(c.get());
            e = cudaErrorStreamCaptureImplicit;
        }
    return e;
}

/* Enqueue (rt.mu held).  ticket: the op's place on its stream, for a caller that waits for it (0 when
 * the op was captured). */
cudaError_t enqueue_locked(runtime_t &r, const stream_ref &s, const char *name, shared_fn fn, uint64_t *ticket,
                           bool always = false) {
    if (ticket) *ticket = 0;
    if (s->cap) {
        if (s->cap->invalid) return cudaErrorStreamCaptureInvalidated;
        s->cap->ops.push_back(graph_op{name, std::move(fn), always});
        return cudaSuccess;
    }
    if (s->legacy) {
        const cudaError_t e = legacy_use(r);
        if (e != cudaSuccess) return e;
    }
    op_t op{name, std::move(fn), always, {}};
    /* Legacy default stream semantics: stream 0 waits for the blocking streams' earlier work, and a
     * blocking stream's op waits for stream 0's earlier work. */
    auto depend_on = [&op](const stream_ref &t) {
        std::lock_guard<std::mutex> lk(t->mu);
        if (t->done < t->enq) op.deps.push_back(dep_t{t, t->enq});
    };
    if (s->legacy) {
        for (const stream_ref &t : streams_all(r))
            if (t->blocking) depend_on(t);
    } else if (s->blocking && r.legacy) {
        depend_on(r.legacy);
    }
    std::lock_guard<std::mutex> lk(s->mu);
    if (s->dying) return cudaErrorInvalidResourceHandle;
    s->q.push_back(std::move(op));
    s->enq++;
    if (ticket) *ticket = s->enq;
    s->cv.notify_all();
    return cudaSuccess;
}

bool capturing(const stream_ref &s) { return s->cap != nullptr; }

/* Wait for every op enqueued so far on s; for the legacy stream also the blocking streams' (rt.mu
 * not held). */
void stream_wait_all(runtime_t &r, const stream_ref &s) {
    std::vector<dep_t> targets;
    {
        std::lock_guard<std::mutex> lk(r.mu);
        auto add = [&targets](const stream_ref &t) {
            std::lock_guard<std::mutex> sl(t->mu);
            targets.push_back(dep_t{t, t->enq});
        };
        add(s);
        if (s->legacy)
            for (const stream_ref &t : streams_all(r))
                if (t->blocking) add(t);
    }
    for (dep_t &d : targets) wait_ticket(*d.s, d.ticket);
}

void device_wait_all(runtime_t &r) {
    std::vector<dep_t> targets;
    {
        std::lock_guard<std::mutex> lk(r.mu);
        auto add = [&targets](const stream_ref &t) {
            std::lock_guard<std::mutex> sl(t->mu);
            targets.push_back(dep_t{t, t->enq});
        };
        if (r.legacy) add(r.legacy);
        for (const stream_ref &t : streams_all(r)) add(t);
    }
    for (dep_t &d : targets) wait_ticket(*d.s, d.ticket);
}

cudaError_t after_wait() {
    if (g_exiting.load()) return cudaErrorCudartUnloading;
    return sticky_error();
}

} // namespace

cudaError_t enqueue(cudaStream_t h, const char *name, std::function<void()> op) {
    EMU_STICKY_RETURN();
    runtime_t &r = rt();
    std::lock_guard<std::mutex> lk(r.mu);
    stream_ref s = stream_of(r, h);
    if (!s) return cudaErrorInvalidResourceHandle;
    return enqueue_locked(r, s, name, std::make_shared<std::function<void()>>(std::move(op)), nullptr);
}

cudaStream_t current_stream() { return tls_stream ? tls_stream_handle : nullptr; }

bool op_should_stop() {
    if (g_exiting.load()) return true;
    stream_t *s = tls_stream;
    if (!s) return false;
    std::lock_guard<std::mutex> lk(s->mu);
    return s->dying;
}

} // namespace emu

using namespace emu;

/* ------------------------------------------------------------ errors (cudart) */

namespace {

struct err_name {
    cudaError_t e;
    const char *name, *text;
};

#define E(code, text) {code, #code, text}
/* Our own wording (the names are CUDA's). */
const err_name k_errors[] = {
    E(cudaSuccess, "no error"),
    E(cudaErrorInvalidValue, "invalid argument"),
    E(cudaErrorMemoryAllocation, "out of memory"),
    E(cudaErrorInitializationError, "the runtime could not initialise"),
    E(cudaErrorCudartUnloading, "the runtime is shutting down"),
    E(cudaErrorInvalidConfiguration, "bad launch configuration (grid, block or shared memory)"),
    E(cudaErrorInvalidPitchValue, "bad pitch"),
    E(cudaErrorInvalidSymbol, "bad device symbol"),
    E(cudaErrorInvalidHostPointer, "bad host pointer"),
    E(cudaErrorInvalidDevicePointer, "bad device pointer"),
    E(cudaErrorInvalidMemcpyDirection, "bad copy direction"),
    E(cudaErrorInsufficientDriver, "the driver is older than the runtime"),
    E(cudaErrorMissingConfiguration, "kernel called without a launch configuration"),
    E(cudaErrorInvalidDeviceFunction, "not a kernel of this device"),
    E(cudaErrorNoDevice, "no device"),
    E(cudaErrorInvalidDevice, "no such device ordinal"),
    E(cudaErrorStartupFailure, "the device failed to start"),
    E(cudaErrorNoKernelImageForDevice, "no code for this device's architecture"),
    E(cudaErrorInvalidResourceHandle, "bad handle (stream, event or graph)"),
    E(cudaErrorIllegalState, "not allowed in the present state"),
    E(cudaErrorNotReady, "not finished yet"),
    E(cudaErrorIllegalAddress, "a kernel or copy touched memory outside any allocation"),
    E(cudaErrorLaunchOutOfResources, "the launch needs more resources than the device has"),
    E(cudaErrorLaunchTimeout, "a kernel ran too long and was stopped"),
    E(cudaErrorContextIsDestroyed, "the context is gone"),
    E(cudaErrorAssert, "a kernel's assert failed"),
    E(cudaErrorHardwareStackError, "a kernel's stack overflowed"),
    E(cudaErrorIllegalInstruction, "a kernel executed an illegal instruction"),
    E(cudaErrorMisalignedAddress, "a kernel made a misaligned access"),
    E(cudaErrorInvalidAddressSpace, "an access to the wrong address space"),
    E(cudaErrorInvalidPc, "a kernel jumped to a bad address"),
    E(cudaErrorLaunchFailure, "a kernel failed"),
    E(cudaErrorNotPermitted, "not permitted"),
    E(cudaErrorNotSupported, "not supported"),
    E(cudaErrorSystemNotReady, "the system is not ready"),
    E(cudaErrorStreamCaptureUnsupported, "not allowed while a stream is being captured"),
    E(cudaErrorStreamCaptureInvalidated, "the capture was invalidated by an earlier refused call"),
    E(cudaErrorStreamCaptureMerge, "would merge two captures"),
    E(cudaErrorStreamCaptureUnmatched, "capture ended on another stream than it began"),
    E(cudaErrorStreamCaptureUnjoined, "the capture has work not joined back to its stream"),
    E(cudaErrorStreamCaptureIsolation, "the capture would depend on work outside it"),
    E(cudaErrorStreamCaptureImplicit, "the legacy stream would wait on a capturing stream"),
    E(cudaErrorCapturedEvent, "not allowed on an event recorded in a capture"),
    E(cudaErrorStreamCaptureWrongThread, "the capture belongs to another thread"),
    E(cudaErrorTimeout, "timed out"),
    E(cudaErrorGraphExecUpdateFailure, "the graph update was refused"),
    E(cudaErrorUnknown, "unknown error"),
};
#undef E

const err_name *err_find(cudaError_t e) {
    for (const err_name &x : k_errors)
        if (x.e == e) return &x;
    return nullptr;
}

} // namespace

extern "C" {

const char *cudaGetErrorName(cudaError_t error) {
    const err_name *x = err_find(error);
    return x ? x->name : "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t error) {
    const err_name *x = err_find(error);
    return x ? x->text : "unrecognized error code";
}

cudaError_t cudaGetLastError(void) {
    const cudaError_t s = sticky_error();
    if (s != cudaSuccess) return s;
    const cudaError_t e = tls_last;
    tls_last = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) {
    const cudaError_t s = sticky_error();
    return s != cudaSuccess ? s : tls_last;
}

/* ------------------------------------------------------------ devices */

cudaError_t cudaGetDeviceCount(int *count) {
    if (!count) return fail(cudaErrorInvalidValue);
    *count = chosen().n_devices;
    return *count ? cudaSuccess : fail(cudaErrorNoDevice);
}

cudaError_t cudaSetDevice(int device) {
    EMU_STICKY_RETURN();
    if (device < 0 || device >= chosen().n_devices) return fail(cudaErrorInvalidDevice);
    tls_device = device;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
    if (!device) return fail(cudaErrorInvalidValue);
    *device = tls_device;
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *runtimeVersion) {
    if (!runtimeVersion) return fail(cudaErrorInvalidValue);
    *runtimeVersion = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *driverVersion) {
    if (!driverVersion) return fail(cudaErrorInvalidValue);
    *driverVersion = CUDART_VERSION; /* driver 580 serves CUDA 13.0 */
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device) {
    if (!prop) return fail(cudaErrorInvalidValue);
    if (device < 0 || device >= chosen().n_devices) return fail(cudaErrorInvalidDevice);
    const profile &p = device_profile();
    const profile_extra &x = chosen().x;
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "%s", p.name);
    for (int i = 0; i < 16; i++) prop->uuid.bytes[i] = (char)(0x10 * device + i);
    prop->totalGlobalMem = p.mem_bytes;
    prop->sharedMemPerBlock = p.smem_per_block;
    prop->regsPerBlock = 65536;
    prop->warpSize = p.warp_size;
    prop->memPitch = SIZE_MAX / 2;
    prop->maxThreadsPerBlock = p.max_threads_per_block;
    prop->maxThreadsDim[0] = 1024;
    prop->maxThreadsDim[1] = 1024;
    prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = 2147483647;
    prop->maxGridSize[1] = 65535;
    prop->maxGridSize[2] = 65535;
    prop->totalConstMem = 65536;
    prop->major = p.major;
    prop->minor = p.minor;
    prop->textureAlignment = 512;
    prop->texturePitchAlignment = 32;
    prop->multiProcessorCount = p.n_sms;
    prop->concurrentKernels = 1;
    prop->pciBusID = device + 1;
    prop->asyncEngineCount = 2;
    prop->unifiedAddressing = 1;
    prop->memoryBusWidth = x.bus_bits;
    prop->l2CacheSize = x.l2_bytes;
    prop->maxThreadsPerMultiProcessor = x.threads_per_sm;
    prop->streamPrioritiesSupported = 1;
    prop->globalL1CacheSupported = 1;
    prop->localL1CacheSupported = 1;
    prop->sharedMemPerMultiprocessor = x.smem_per_sm;
    prop->regsPerMultiprocessor = x.regs_per_sm;
    prop->managedMemory = 1;
    prop->computePreemptionSupported = 1;
    prop->cooperativeLaunch = 1;
    prop->sharedMemPerBlockOptin = p.smem_per_block_optin;
    prop->maxBlocksPerMultiProcessor = p.major == 7 ? 16 : p.major == 8 ? 16 : 32;
    prop->reservedSharedMemPerBlock = p.major >= 8 ? 1024 : 0;
    prop->memoryPoolsSupported = 1;
    prop->clusterLaunch = p.major >= 9;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device) {
    if (!value) return fail(cudaErrorInvalidValue);
    if (device < 0 || device >= chosen().n_devices) return fail(cudaErrorInvalidDevice);
    const profile &p = device_profile();
    const profile_extra &x = chosen().x;
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = p.max_threads_per_block; break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxBlockDimY: *value = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *value = 64; break;
    case cudaDevAttrMaxGridDimX: *value = 2147483647; break;
    case cudaDevAttrMaxGridDimY: *value = 65535; break;
    case cudaDevAttrMaxGridDimZ: *value = 65535; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)p.smem_per_block; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)p.smem_per_block_optin; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = (int)x.smem_per_sm; break;
    case cudaDevAttrTotalConstantMemory: *value = 65536; break;
    case cudaDevAttrWarpSize: *value = p.warp_size; break;
    case cudaDevAttrMaxRegistersPerBlock: *value = 65536; break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: *value = x.regs_per_sm; break;
    case cudaDevAttrClockRate: *value = x.core_clock_khz; break;
    case cudaDevAttrMultiProcessorCount: *value = p.n_sms; break;
    case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
    case cudaDevAttrMemoryClockRate: *value = x.mem_clock_khz; break;
    case cudaDevAttrGlobalMemoryBusWidth: *value = x.bus_bits; break;
    case cudaDevAttrL2CacheSize: *value = x.l2_bytes; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = x.threads_per_sm; break;
    case cudaDevAttrUnifiedAddressing: *value = 1; break;
    case cudaDevAttrConcurrentKernels: *value = 1; break;
    case cudaDevAttrAsyncEngineCount: *value = 2; break;
    case cudaDevAttrIntegrated: *value = 0; break;
    case cudaDevAttrCooperativeLaunch: *value = 1; break;
    case cudaDevAttrPciBusId: *value = device + 1; break;
    default: return fail(cudaErrorInvalidValue); /* not emulated: say so rather than invent a value */
    }
    return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr, int value) {
    EMU_STICKY_RETURN();
    if (!func) return fail(cudaErrorInvalidDeviceFunction);
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || (size_t)value > device_profile().smem_per_block_optin) return fail(cudaErrorInvalidValue);
        runtime_t &r = rt();
        std::lock_guard<std::mutex> lk(r.mu);
        r.max_dyn_smem[func] = value;
        return cudaSuccess;
    }
    if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) {
        if (value < -1 || value > 100) return fail(cudaErrorInvalidValue);
        return cudaSuccess;
    }
    return fail(cudaErrorInvalidValue);
}

/* ------------------------------------------------------------ memory */

cudaError_t cudaMalloc(void **devPtr, size_t size) {
    EMU_STICKY_RETURN();
    if (!devPtr) return fail(cudaErrorInvalidValue);
    {
        runtime_t &r = rt();
        std::lock_guard<std::mutex> lk(r.mu);
        const cudaError_t e = unsafe_call(r);
        if (e != cudaSuccess) return fail(e);
    }
    *devPtr = nullptr;
    if (!size) return cudaSuccess;
    return fail(heap_alloc(size, devPtr)); /* an out-of-memory is not sticky: the next call may succeed */
}

cudaError_t cudaFree(void *devPtr) {
    EMU_STICKY_RETURN();
    runtime_t &r = rt();
    {
        std::lock_guard<std::mutex> lk(r.mu);
        const cudaError_t e = unsafe_call(r);
        if (e != cudaSuccess) return fail(e);
    }
    if (!devPtr) return cudaSuccess;
    device_wait_all(r); /* cudaFree synchronizes the device: no op may still use the memory */
    const cudaError_t e = after_wait();
    if (e != cudaSuccess) return fail(e);
    return fail(heap_free(devPtr));
}

cudaError_t cudaMemGetInfo(size_t *free, size_t *total) {
    EMU_STICKY_RETURN();
    if (!free || !total) return fail(cudaErrorInvalidValue);
    heap_t &h = heap_init();
    std::lock_guard<std::mutex> lk(h.mu);
    *total = device_profile().mem_bytes;
    *free = *total - h.used;
    return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *attributes, const void *ptr) {
    EMU_STICKY_RETURN();
    if (!attributes) return fail(cudaErrorInvalidValue);
    memset(attributes, 0, sizeof *attributes);
    if (device_range_ok(ptr, 0, nullptr)) {
        attributes->type = cudaMemoryTypeDevice;
        attributes->device = tls_device;
        attributes->devicePointer = (void *)ptr;
    } else {
        attributes->type = cudaMemoryTypeUnregistered; /* pageable host memory (or a freed device pointer) */
        attributes->device = -2;
        attributes->hostPointer = (void *)ptr;
    }
    return cudaSuccess;
}

} // extern "C"

namespace {

/* A copy's two sides, checked at the call: a device side must lie in one live allocation, a host
 * side must not be device memory (the copy kind is checked against the pointers, as with UVA). */
struct copy_plan {
    bool dst_dev, src_dev;
};

cudaError_t check_side(const char *api, const char *side, const void *p, size_t span, bool want_dev) {
    if (!span) return cudaSuccess;
    if (want_dev) {
        const char *why = nullptr;
        if (!device_range_ok(p, span, &why)) {
            report("out-of-bounds", "%s: %s [%p, +%zu B) is %s", api, side, p, span, why);
            return cudaErrorInvalidValue;
        }
    } else if (is_device(p)) {
        report("out-of-bounds", "%s: %s %p is device memory but the copy kind says host", api, side, p);
        return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

cudaError_t plan_copy(const char *api, void *dst, size_t dspan, const void *src, size_t sspan, cudaMemcpyKind kind,
                      copy_plan *pl) {
    switch (kind) {
    case cudaMemcpyHostToHost: pl->dst_dev = pl->src_dev = false; break;
    case cudaMemcpyHostToDevice: pl->dst_dev = true, pl->src_dev = false; break;
    case cudaMemcpyDeviceToHost: pl->dst_dev = false, pl->src_dev = true; break;
    case cudaMemcpyDeviceToDevice: pl->dst_dev = pl->src_dev = true; break;
    case cudaMemcpyDefault:
        pl->dst_dev = is_device(dst);
        pl->src_dev = is_device(src);
        break;
    default: return cudaErrorInvalidMemcpyDirection;
    }
    cudaError_t e = check_side(api, "destination", dst, dspan, pl->dst_dev);
    if (e == cudaSuccess) e = check_side(api, "source", src, sspan, pl->src_dev);
    return e;
}

/* An op's device range, checked again when it runs (a replayed graph may outlive a buffer). */
bool op_range_ok(const char *op, const void *p, size_t n) {
    const char *why = nullptr;
    if (!n || device_range_ok(p, n, &why)) return true;
    async_error(cudaErrorIllegalAddress, "%s: [%p, +%zu B) is %s", op, p, n, why);
    return false;
}

/* Rows of a (possibly 2D) copy: height rows of width bytes, at pitches dp and sp. */
struct copy_shape {
    size_t width, height, dp, sp;
    size_t dspan() const { return height ? dp * (height - 1) + width : 0; }
    size_t sspan() const { return height ? sp * (height - 1) + width : 0; }
};

/* The device side's "written" shadow follows the data: a device source copies its state, a host
 * source writes every byte. */
void copy_rows(unsigned char *d, const unsigned char *s, const copy_shape &c, bool dst_dev, bool src_dev) {
    const heap_t *h = g_heap.load(std::memory_order_acquire);
    for (size_t y = 0; y < c.height; y++) {
        unsigned char *dr = d + y * c.dp;
        const unsigned char *sr = s + y * c.sp;
        memmove(dr, sr, c.width);
        if (!dst_dev) continue;
        if (src_dev && h)
            memmove(h->shadow + ((uintptr_t)dr - h->lo), h->shadow + ((uintptr_t)sr - h->lo), c.width);
        else
            device_mark_written(dr, c.width);
    }
}

/* cudaMemcpyAsync and cudaMemcpy2DAsync (sync = cudaMemcpy: the legacy stream, waited for). */
cudaError_t copy_async(const char *api, void *dst, const void *src, const copy_shape &c, cudaMemcpyKind kind,
                       cudaStream_t stream, bool sync) {
    EMU_STICKY_RETURN();
    if (c.width > c.dp || c.width > c.sp) return fail(cudaErrorInvalidPitchValue);
    if (!c.width || !c.height) return cudaSuccess;
    copy_plan pl = {false, false};
    cudaError_t e = plan_copy(api, dst, c.dspan(), src, c.sspan(), kind, &pl);
    if (e != cudaSuccess) return fail(e);
    runtime_t &r = rt();
    stream_ref s;
    uint64_t ticket = 0;
    bool wait = sync;
    {
        std::lock_guard<std::mutex> lk(r.mu);
        s = stream_of(r, sync ? nullptr : stream);
        if (!s) return fail(cudaErrorInvalidResourceHandle);
        if (sync && (e = unsafe_call(r)) != cudaSuccess) return fail(e);
        const bool cap = capturing(s);
        std::function<void()> fn;
        unsigned char *d = (unsigned char *)dst;
        const bool dd = pl.dst_dev, sd = pl.src_dev;
        if (!sd && !sync && !cap) {
            /* Pageable source: taken at the call, so the caller may reuse its buffer at once. */
            auto staged = std::make_shared<std::vector<unsigned char>>(c.width * c.height);
            for (size_t y = 0; y < c.height; y++)
                memcpy(staged->data() + y * c.width, (const unsigned char *)src + y * c.sp, c.width);
            fn = [api, d, staged, c, dd] {
                if (dd && !op_range_ok(api, d, c.dspan())) return;
                copy_shape cs = c;
                cs.sp = c.width;
                copy_rows(d, staged->data(), cs, dd, false);
            };
        } else {
            /* Captured copies read and write their host pointers at each replay, as memcpy nodes do. */
            const unsigned char *sp = (const unsigned char *)src;
            fn = [api, d, sp, c, dd, sd] {
                if (dd && !op_range_ok(api, d, c.dspan())) return;
                if (sd && !op_range_ok(api, sp, c.sspan())) return;
                copy_rows(d, sp, c, dd, sd);
            };
        }
        e = enqueue_locked(r, s, api, std::make_shared<std::function<void()>>(std::move(fn)), &ticket);
        if (e != cudaSuccess) return fail(e);
        /* To pageable host memory a copy returns only once done (CUDA documents it); not when captured. */
        if (!cap && !pl.dst_dev) wait = true;
    }
    if (wait && ticket) {
        wait_ticket(*s, ticket);
        return fail(after_wait());
    }
    return cudaSuccess;
}

cudaError_t set_async(const char *api, void *dst, int value, size_t count, cudaStream_t stream, bool sync) {
    EMU_STICKY_RETURN();
    if (!count) return cudaSuccess;
    cudaError_t e = check_side(api, "destination", dst, count, true);
    if (e != cudaSuccess) return fail(e);
    runtime_t &r = rt();
    stream_ref s;
    uint64_t ticket = 0;
    {
        std::lock_guard<std::mutex> lk(r.mu);
        s = stream_of(r, sync ? nullptr : stream);
        if (!s) return fail(cudaErrorInvalidResourceHandle);
        if (sync && (e = unsafe_call(r)) != cudaSuccess) return fail(e);
        unsigned char *d = (unsigned char *)dst;
        auto fn = std::make_shared<std::function<void()>>([api, d, value, count] {
            if (!op_range_ok(api, d, count)) return;
            memset(d, value, count);
            device_mark_written(d, count);
        });
        e = enqueue_locked(r, s, api, std::move(fn), &ticket);
        if (e != cudaSuccess) return fail(e);
    }
    if (sync && ticket) {
        wait_ticket(*s, ticket);
        return fail(after_wait());
    }
    return cudaSuccess;
}

} // namespace

extern "C" {

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind) {
    return copy_async("cudaMemcpy", dst, src, copy_shape{count, 1, count, count}, kind, nullptr, true);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind, cudaStream_t stream) {
    return copy_async("cudaMemcpyAsync", dst, src, copy_shape{count, 1, count, count}, kind, stream, false);
}

cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                              enum cudaMemcpyKind kind, cudaStream_t stream) {
    return copy_async("cudaMemcpy2DAsync", dst, src, copy_shape{width, height, dpitch, spitch}, kind, stream, false);
}

cudaError_t cudaMemset(void *devPtr, int value, size_t count) {
    return set_async("cudaMemset", devPtr, value, count, nullptr, true);
}

cudaError_t cudaMemsetAsync(void *devPtr, int value, size_t count, cudaStream_t stream) {
    return set_async("cudaMemsetAsync", devPtr, value, count, stream, false);
}

/* ------------------------------------------------------------ streams */

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *pStream, unsigned int flags) {
    EMU_STICKY_RETURN();
    if (!pStream || (flags & ~(unsigned)cudaStreamNonBlocking)) return fail(cudaErrorInvalidValue);
    runtime_t &r = rt();
    std::lock_guard<std::mutex> lk(r.mu);
    cudaStream_t h;
    stream_ref s = stream_new(false, !(flags & cudaStreamNonBlocking), &h);
    r.streams[(void *)h] = s;
    *pStream = h;
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *pStream) { return cudaStreamCreateWithFlags(pStream, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    EMU_STICKY_RETURN();
    runtime_t &r = rt();
    std::lock_guard<std::mutex> lk(r.mu);
    auto it = r.streams.find((void *)stream);
    if (it == r.streams.end()) return fail(cudaErrorInvalidResourceHandle);
    stream_ref s = it->second;
    r.streams.erase(it);
    if (s->cap) { /* destroying a capturing stream ends its capture */
        capture_invalidate(s->cap.get());
        for (size_t i = 0; i < r.captures.size(); i++)
            if (r.captures[i] == s->cap) r.captures.erase(r.captures.begin() + (long)i);
        s->cap.reset();
    }
    /* As CUDA: returns at once; the work already enqueued completes, then the worker ends. */
    r.draining.push_back(s);
    std::lock_guard<std::mutex> sl(s->mu);
    s->dying = true;
    s->cv.notify_all();
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    EMU_STICKY_RETURN();
    runtime_t &r = rt();
    stream_ref s;
    {
        std::lock_guard<std::mutex> lk(r.mu);
        s = stream_of(r, stream);
        if (!s) return fail(cudaErrorInvalidResourceHandle);
        if (s->cap) {
            capture_invalidate(s->cap.get());
            return fail(cudaErrorStreamCaptureUnsupported);
        }
        if (s->legacy) {
            const cudaError_t e = legacy_use(r);
            if (e != cudaSuccess) return fail(e);
        }
    }
    stream_wait_all(r, s);
    return fail(after_wait());
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
    EMU_STICKY_RETURN();
    runtime_t &r = rt();
    std::lock_guard<std::mutex> lk(r.mu);
    stream_ref s = stream_of(r, stream);
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    if (s->cap) {
        capture_invalidate(s->cap.get());
        return fail(cudaErrorStreamCaptureUnsupported);
    }
    std::lock_guard<std::mutex> sl(s->mu);
    return s->done < s->enq ? cudaErrorNotReady : cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
    EMU_STICKY_RETURN();
    runtime_t &r = rt();
    {
        std::lock_guard<std::mutex> lk(r.mu);
        if (!r.captures.empty()) { /* it would wait for capturing streams */
            for (auto &c : r.captures) capture_invalidate(c.get());
            return fail(cudaErrorStreamCaptureUnsupported);
        }
    }
    device_wait_all(r);
    return fail(after_wait());
}

/* ------------------------------------------------------------ events */

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
    EMU_STICKY_RETURN();
    const unsigned known = cudaEventBlockingSync | cudaEventDisableTiming | cudaEventInterprocess;
    if (!event || (flags & ~known)) return fail(cudaErrorInvalidValue);
    runtime_t &r = rt();
    auto ev = std::make_shared<event_t>();
    ev->flags = flags;
    std::lock_guard<std::mutex> lk(r.mu);
    r.events[ev.get()] = ev;
    *event = (cudaEvent_t)ev.get();
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    EMU_STICKY_RETURN();
    runtime_t &r = rt();
    std::lock_guard<std::mutex> lk(r.mu);
    /* A record still pending keeps the event alive through its op. */
    return r.events.erase((void *)event) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    EMU_STICKY_RETURN();
    runtime_t &r = rt();
    std::lock_guard<std::mutex> lk(r.mu);
    auto it = r.events.find((void *)event);
    if (it == r.events.end()) return fail(cudaErrorInvalidResourceHandle);
    std::shared_ptr<event_t> ev = it->second;
    stream_ref s = stream_of(r, stream);
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    shared_fn fn;
    if (s->cap) {
        ev->cap = s->cap;
        /* Each replay completes the event anew. */
        fn = std::make_shared<std::function<void()>>([ev] {
            std::lock_guard<std::mutex> el(ev->mu);
            ev->t_ns = now_ns();
            ev->done = ev->rec;
            ev->cv.notify_all();
        });
    } else {
        uint64_t gen;
        {
            std::lock_guard<std::mutex> el(ev->mu);
            gen = ++ev->rec;
            ev->cap.reset();
        }
        fn = std::make_shared<std::function<void()>>([ev, gen] {
            std::lock_guard<std::mutex> el(ev->mu);
            ev->t_ns = now_ns();
            if (ev->done < gen) ev->done = gen;
            ev->cv.notify_all();
        });
    }
    const cudaError_t e = enqueue_locked(r, s, "cudaEventRecord", std::move(fn), nullptr, true);
    return e == cudaSuccess ? e : fail(e);
}

} // extern "C"

namespace {

/* The event of handle h, refusing one recorded into a capture still active (a sync on it would wait
 * for the capturing stream). */
cudaError_t event_for_wait(cudaEvent_t h, std::shared_ptr<event_t> *out) {
    runtime_t &r = rt();
    std::lock_guard<std::mutex> lk(r.mu);
    auto it = r.events.find((void *)h);
    if (it == r.events.end()) return cudaErrorInvalidResourceHandle;
    std::shared_ptr<capture_t> c = it->second->cap.lock();
    if (c && !c->invalid) {
        for (auto &a : r.captures)
            if (a == c) {
                capture_invalidate(c.get());
                return cudaErrorStreamCaptureUnsupported;
            }
    }
    *out = it->second;
    return cudaSuccess;
}

} // namespace

extern "C" {

cudaError_t cudaEventQuery(cudaEvent_t event) {
    EMU_STICKY_RETURN();
    std::shared_ptr<event_t> ev;
    const cudaError_t e = event_for_wait(event, &ev);
    if (e != cudaSuccess) return fail(e);
    std::lock_guard<std::mutex> el(ev->mu);
    return ev->done >= ev->rec ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    EMU_STICKY_RETURN();
    std::shared_ptr<event_t> ev;
    const cudaError_t e = event_for_wait(event, &ev);
    if (e != cudaSuccess) return fail(e);
    {
        std::unique_lock<std::mutex> el(ev->mu);
        const uint64_t want = ev->rec;
        ev->cv.wait(el, [&] { return ev->done >= want || g_exiting.load() || sticky_error() != cudaSuccess; });
    }
    return fail(after_wait());
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    EMU_STICKY_RETURN();
    if (!ms) return fail(cudaErrorInvalidValue);
    std::shared_ptr<event_t> a, b;
    {
        runtime_t &r = rt();
        std::lock_guard<std::mutex> lk(r.mu);
        auto ia = r.events.find((void *)start), ib = r.events.find((void *)end);
        if (ia == r.events.end() || ib == r.events.end()) return fail(cudaErrorInvalidResourceHandle);
        a = ia->second;
        b = ib->second;
    }
    if ((a->flags | b->flags) & cudaEventDisableTiming) return fail(cudaErrorInvalidResourceHandle);
    int64_t ta, tb;
    {
        std::lock_guard<std::mutex> el(a->mu);
        if (!a->rec && !a->t_ns) return fail(cudaErrorInvalidResourceHandle);
        if (a->done < a->rec) return cudaErrorNotReady;
        ta = a->t_ns;
    }
    {
        std::lock_guard<std::mutex> el(b->mu);
        if (!b->rec && !b->t_ns) return fail(cudaErrorInvalidResourceHandle);
        if (b->done < b->rec) return cudaErrorNotReady;
        tb = b->t_ns;
    }
    *ms = (float)((double)(tb - ta) / 1e6);
    return cudaSuccess;
}

/* ------------------------------------------------------------ capture and graphs */

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode) {
    EMU_STICKY_RETURN();
    if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
        mode != cudaStreamCaptureModeRelaxed)
        return fail(cudaErrorInvalidValue);
    runtime_t &r = rt();
    std::lock_guard<std::mutex> lk(r.mu);
    stream_ref s = stream_of(r, stream);
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    if (s->legacy) return fail(cudaErrorStreamCaptureUnsupported);
    if (s->cap) return fail(cudaErrorIllegalState);
    auto c = std::make_shared<capture_t>();
    c->mode = mode;
    c->owner = std::this_thread::get_id();
    c->blocking = s->blocking;
    s->cap = c;
    r.captures.push_back(c);
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *pGraph) {
    EMU_STICKY_RETURN();
    if (!pGraph) return fail(cudaErrorInvalidValue);
    *pGraph = nullptr;
    runtime_t &r = rt();
    std::lock_guard<std::mutex> lk(r.mu);
    stream_ref s = stream_of(r, stream);
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    std::shared_ptr<capture_t> c = s->cap;
    if (!c) return fail(cudaErrorIllegalState);
    if (c->mode != cudaStreamCaptureModeRelaxed && c->owner != std::this_thread::get_id())
        return fail(cudaErrorStreamCaptureWrongThread);
    s->cap.reset();
    for (size_t i = 0; i < r.captures.size(); i++)
        if (r.captures[i] == c) r.captures.erase(r.captures.begin() + (long)i);
    if (c->invalid) return fail(cudaErrorStreamCaptureInvalidated);
    graph_t *g = new graph_t();
    g->ops = std::move(c->ops);
    r.graphs[g] = g;
    *pGraph = (cudaGraph_t)g;
    return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, enum cudaStreamCaptureStatus *pCaptureStatus) {
    EMU_STICKY_RETURN();
    if (!pCaptureStatus) return fail(cudaErrorInvalidValue);
    runtime_t &r = rt();
    std::lock_guard<std::mutex> lk(r.mu);
    stream_ref s = stream_of(r, stream);
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    if (s->legacy && !r.captures.empty()) {
        for (auto &c : r.captures)
            if (c->blocking) return fail(cudaErrorStreamCaptureImplicit);
    }
    *pCaptureStatus = !s->cap                ? cudaStreamCaptureStatusNone
                      : s->cap->invalid      ? cudaStreamCaptureStatusInvalidated
                                             : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *pGraphExec, cudaGraph_t graph, unsigned long long flags) {
    EMU_STICKY_RETURN();
    if (!pGraphExec) return fail(cudaErrorInvalidValue);
    runtime_t &r = rt();
    std::lock_guard<std::mutex> lk(r.mu);
    auto it = r.graphs.find((void *)graph);
    if (it == r.graphs.end()) return fail(cudaErrorInvalidResourceHandle);
    graph_t *x = new graph_t(*it->second); /* shares the recorded ops, which are immutable */
    r.execs[x] = x;
    *pGraphExec = (cudaGraphExec_t)x;
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream) {
    EMU_STICKY_RETURN();
    runtime_t &r = rt();
    std::lock_guard<std::mutex> lk(r.mu);
    auto it = r.execs.find((void *)graphExec);
    if (it == r.execs.end()) return fail(cudaErrorInvalidResourceHandle);
    stream_ref s = stream_of(r, stream);
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    for (const graph_op &op : it->second->ops) {
        const cudaError_t e = enqueue_locked(r, s, op.name, op.fn, nullptr, op.always);
        if (e != cudaSuccess) return fail(e);
    }
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    runtime_t &r = rt();
    std::lock_guard<std::mutex> lk(r.mu);
    auto it = r.graphs.find((void *)graph);
    if (it == r.graphs.end()) return fail(cudaErrorInvalidResourceHandle);
    delete it->second;
    r.graphs.erase(it);
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t graphExec) {
    runtime_t &r = rt();
    std::lock_guard<std::mutex> lk(r.mu);
    auto it = r.execs.find((void *)graphExec);
    if (it == r.execs.end()) return fail(cudaErrorInvalidResourceHandle);
    delete it->second; /* launches already enqueued hold their ops */
    r.execs.erase(it);
    return cudaSuccess;
}

} // extern "C"

/* ------------------------------------------------------------ kernel launch */

void emu_launch(const void *func, const char *name, dim3 grid, dim3 block, size_t dyn_smem, cudaStream_t s,
                std::function<void()> body) {
    const cudaError_t sticky = sticky_error();
    if (sticky != cudaSuccess) {
        fail(sticky);
        return;
    }
    const profile &p = device_profile();
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (!block.x || !block.y || !block.z || block.x > 1024 || block.y > 1024 || block.z > 64 ||
        threads > (unsigned long long)p.max_threads_per_block) {
        report("launch", "%s: block (%u, %u, %u) = %llu threads; %s allows %d per block, (1024, 1024, 64) per dim",
               name, block.x, block.y, block.z, threads, p.key, p.max_threads_per_block);
        fail(cudaErrorInvalidConfiguration);
        return;
    }
    if (!grid.x || !grid.y || !grid.z || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
        report("launch", "%s: grid (%u, %u, %u) is empty or beyond (2^31-1, 65535, 65535)", name, grid.x, grid.y,
               grid.z);
        fail(cudaErrorInvalidConfiguration);
        return;
    }
    runtime_t &r = rt();
    std::lock_guard<std::mutex> lk(r.mu);
    size_t limit = p.smem_per_block;
    auto it = r.max_dyn_smem.find(func);
    if (it != r.max_dyn_smem.end()) limit = (size_t)it->second;
    if (dyn_smem > limit) {
        report("launch", "%s: %zu B of dynamic shared memory; the limit is %zu B%s", name, dyn_smem, limit,
               it == r.max_dyn_smem.end() ? " (raise it with cudaFuncAttributeMaxDynamicSharedMemorySize)" : "");
        fail(cudaErrorInvalidValue);
        return;
    }
    stream_ref st = stream_of(r, s);
    if (!st) {
        fail(cudaErrorInvalidResourceHandle);
        return;
    }
    auto fn = std::make_shared<std::function<void()>>(
        [name, grid, block, dyn_smem, body = std::move(body)] { run_grid(name, grid, block, dyn_smem, body); });
    const cudaError_t e = enqueue_locked(r, st, name, std::move(fn), nullptr);
    if (e != cudaSuccess) fail(e);
}
