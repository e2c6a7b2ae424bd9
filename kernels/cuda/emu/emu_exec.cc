/*
 * emu_exec.cc — kernel execution on the emulated device: emu::run_grid and
 * the device-side functions of emu_device.h (indices, barriers, warp ops,
 * shared memory).
 *
 * Model.  A grid's blocks are taken one at a time by a few OS threads (the
 * caller, a stream worker, plus up to LLMQ_EMU_THREADS - 1 helpers); each
 * OS thread has a `worker`: its fiber stacks, its shared-memory arena and the
 * state of the block it runs.  A block's threads are fibers (on x86-64 our
 * own switch, below; Boost.Context's fcontext elsewhere), on pooled 64 KiB
 * stacks with a guard page, made afresh for every block.  A thread
 * runs until it must wait (a barrier, a warp op whose lanes have not all
 * arrived) or exits, then hands the OS thread directly to the next ready
 * thread; the one whose arrival completes a barrier goes on without a switch
 * and makes the waiters ready.  When no thread is ready the worker's own
 * context resumes: either every thread has exited, or the block is stuck
 * (threads at different barriers, a lane missing from a warp op), which is
 * reported and released rather than hung.
 *
 * Lanes of a warp are never run in lockstep: each runs alone until it meets
 * the others at a warp op, so code that relies on implicit warp-synchronous
 * execution reads stale shared memory here and shows up.  __activemask is
 * the warp's lanes that have not exited (there is no convergence to track).
 *
 * Warp ops meet at a "rendezvous" of the warp, keyed by (kind, mask): every
 * lane publishes its value into the rendezvous and waits until all lanes of
 * the mask have; each then reads its partner's value.  A completed rendezvous
 * is freed only when all its lanes have read it, and a lane that arrives at
 * the next op with the same mask gets a new one, so no value is overwritten
 * before it is read.
 *
 * Shared memory.  The arena of a worker: the launch's dynamic bytes at offset
 * 0, static arrays (emu_shared_static, keyed by declaration site) after them
 * in the order a block first declares them; the layout is kept for the rest
 * of the grid on that worker, so every block sees the same addresses.  At
 * each block start the bytes the previous block could reach are poisoned
 * (0xff: NaN in every float type), so the whole arena is poisoned.  The
 * detectors are told the arena's whole capacity (the profile's opt-in limit).
 *
 * Faults (a barrier not reached by the whole block, too much shared memory)
 * are reported at once (emu::report) and raised as the launch's asynchronous
 * error by the calling thread when the grid ends; a stuck block is released
 * and its later barriers no longer wait, so a faulty kernel always ends.
 */
#include "kernels/cuda/emu/emu.h"
#include "kernels/cuda/emu/emu_internal.hh"

#include <boost/context/detail/fcontext.hpp>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef __SANITIZE_THREAD__
#include <sanitizer/tsan_interface.h>
#endif

namespace emu {

/* ------------------------------------------------------------ context switch */

/* A fiber's saved context and the switch: Boost.Context's fcontext (a register save and a jump).
 * A hand-written switch with a symmetric call/ret measured 17-29 ns per thread-barrier against
 * Boost's 55 ns (its indirect jump leaves the return-stack predictor one entry off), but the
 * switch is what Boost.Context maintains, for every ABI: we use it rather than our own.
 * The floating-point control words are not switched by us: kernels never change them. */
namespace bctx = boost::context::detail;
typedef bctx::fcontext_t ctx_t;
static void (*ctx_fn)(void);
static void ctx_entry(bctx::transfer_t t) {
    *(ctx_t *)t.data = t.fctx;
    ctx_fn();
}
static ctx_t ctx_make(unsigned char *top, void (*fn)(void)) {
    ctx_fn = fn; /* always the same function */
    return bctx::make_fcontext(top, 64 << 10, ctx_entry);
}
static inline void ctx_swap(ctx_t *save, ctx_t to) {
    bctx::transfer_t t = bctx::jump_fcontext(to, save);
    *(ctx_t *)t.data = t.fctx;
}

/* ------------------------------------------------------------ state */

enum { MAX_THREADS = 1024, MAX_WARPS = MAX_THREADS / 32, MAX_SITES = 64, RV_PER_WARP = 32 };
/* Fiber stacks: kernels need little, but leave room (ASan's redzones make frames larger). */
#ifdef __SANITIZE_ADDRESS__
static const size_t STACK_BYTES = 256 << 10;
#else
static const size_t STACK_BYTES = 64 << 10;
#endif
/* Each stack's top is moved down by a different multiple of 64 B below 32 KiB ("colouring"): with
 * every top at the same offset of a 64 KiB-aligned mapping, the few hot lines of all the fibers fall
 * into the same cache sets and evict each other at every switch (measured: 66 against 55 ns per thread-barrier). */
static const size_t STACK_COLOURS = 32 << 10;
static const size_t STACK_MAP = STACK_BYTES + STACK_COLOURS;
/* Room past the profile's limit, so that a kernel over it can finish its block (it is reported). */
static const size_t ARENA_SLACK = 1 << 20;

enum thread_state : uint8_t { T_READY, T_BARRIER, T_WARP, T_DONE };
enum rv_kind : uint8_t { RV_SYNC, RV_SHFL, RV_VOTE };

/* Lanes of one warp meeting at one warp op. */
struct rendezvous {
    uint32_t mask;               /* the lanes named by the op */
    uint32_t arrived;            /* lanes that have published */
    uint32_t unread;             /* after completion: lanes yet to read */
    uint32_t ballot;             /* RV_VOTE: lanes whose predicate was true */
    rv_kind kind;
    bool complete;
    unsigned long long val[32];  /* published values, by lane */
};

struct warp_state {
    uint32_t exists;             /* lanes that exist (the block's last warp may be partial) */
    uint32_t exited;             /* lanes that have left the kernel */
    uint32_t used;               /* rv slots in use */
    rendezvous rv[RV_PER_WARP];
};

/* One thread of the running block. */
struct fthread {
    ctx_t ctx;                   /* saved context while suspended */
    uint3 idx;                   /* threadIdx */
    unsigned lin;                /* linear index in the block */
    thread_state state;
    const char *bar_file;        /* the barrier waited at (T_BARRIER) or last passed */
    int bar_line;
    rendezvous *rv;              /* the warp op waited at (T_WARP) */
    unsigned char *stack;        /* the mapping's usable start, a guard page below */
    unsigned char *stack_top;    /* where the fiber's stack starts (>= STACK_BYTES above stack) */
#ifdef __SANITIZE_ADDRESS__
    void *fake_stack;
    unsigned char *exit_frame;   /* the lowest frame live when the fiber left for good */
#endif
#ifdef __SANITIZE_THREAD__
    void *tsan_fiber;
#endif
};

struct site {
    const void *key;             /* the declaration (emu_shared_static's site) */
    size_t off, bytes;           /* in the arena */
};

struct kernel_ctx {
    const char *name;
    dim3 grid, block;
    size_t dyn_smem;
    const std::function<void()> *body;
    unsigned n_blocks, n_threads;
    size_t smem_limit, smem_static_limit; /* the profile's opt-in and default limits */
    std::atomic<unsigned> next_block{0};
    std::atomic<bool> failed{false};      /* a fault that stops the grid (blocks not yet started are skipped) */
    std::atomic<bool> fault_set{false};
    std::mutex mu;
    cudaError_t fault = cudaSuccess;      /* the first fault, raised by run_grid's caller */
    char fault_msg[512] = "";
    int helpers = 0;                      /* helper threads inside run_blocks (pool's mutex) */
};

/* One per OS thread that runs blocks. */
struct worker {
    ctx_t main_ctx;              /* the OS thread's own context while a fiber runs */
    ctx_t dead_ctx;              /* where an exited fiber's context goes */
#ifdef __SANITIZE_ADDRESS__
    void *main_fake_stack = nullptr;
    const void *main_bottom = nullptr;
    size_t main_size = 0;
    bool from_main = false;
#endif
#ifdef __SANITIZE_THREAD__
    void *tsan_main = nullptr;
#endif
    fthread thr[MAX_THREADS];
    unsigned n_stacks = 0;       /* thr[0 .. n_stacks) have a stack */
    warp_state warps[MAX_WARPS];

    unsigned char *arena = nullptr; /* [arena, arena + arena_cap), a guard page after */
    size_t arena_cap = 0;
    size_t extent_prev = 0;      /* bytes the previous block could reach (poisoned at the next start) */
    size_t extent = 0;           /* bytes this block can reach */

    /* The grid and block being run. */
    kernel_ctx *k = nullptr;
    site sites[MAX_SITES];
    unsigned n_sites = 0;
    size_t static_end = 0;       /* end of the static arrays carved so far (dynamic bytes before them) */
    size_t static_bytes = 0;     /* their sum, padding included */
    uint3 bidx;
    unsigned block_lin = 0, n = 0;
    unsigned n_done = 0, n_barrier = 0;
    uint64_t epoch = 0;          /* completed barriers on this worker, all blocks */
    int bar_acc = 0, bar_result = 0, bar_op = 0;
    bool broken = false;         /* a fault: barriers and warp ops no longer wait */
    unsigned rq[MAX_THREADS];    /* ready threads, a ring */
    unsigned rq_head = 0, rq_tail = 0;

    ~worker();
};

/* The running fiber's thread (nullptr outside a block): read on every instrumented access. */
static thread_local fthread *tl_cur;
static thread_local worker *tl_w;
static thread_local std::unique_ptr<worker> tl_w_owner;

static void die(const char *what) {
    fprintf(stderr, "llmq-emu: fatal: %s\n", what);
    abort();
}

/* Mappings for stacks and arenas.  Under ASan their shadow is cleared both ways: fiber frames that
 * never returned leave poison behind, and munmap does not clear it, so a later mapping at the same
 * addresses (another thread's arena) would inherit it. */
static unsigned char *map_rw(size_t bytes, const char *what) {
    void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) die(what);
#ifdef __SANITIZE_ADDRESS__
    __asan_unpoison_memory_region(p, bytes);
#endif
    return (unsigned char *)p;
}
static void unmap(void *p, size_t bytes) {
#ifdef __SANITIZE_ADDRESS__
    __asan_unpoison_memory_region(p, bytes);
#endif
    munmap(p, bytes);
}

worker::~worker() {
    for (unsigned i = 0; i < n_stacks; i++) unmap(thr[i].stack - getpagesize(), STACK_MAP + getpagesize());
    if (arena) unmap(arena, arena_cap + ARENA_SLACK + getpagesize());
}

static worker *worker_get() {
    if (!tl_w) {
        tl_w_owner.reset(new worker());
        tl_w = tl_w_owner.get();
    }
    return tl_w;
}

/* Stacks for thr[0 .. n): each its own mapping with an inaccessible page below, so an overflow faults.
 * Thread i of every block always runs on stack i: the detectors (emu_check.cc) key their cache of
 * cur_thread() on the stack page, so two threads of a block must never share a stack.  (Handing an
 * exited thread's stack to the next one keeps it warm and saved ~20 ns per thread start, but broke
 * that.) */
static void stacks_ensure(worker *w, unsigned n) {
    const size_t page = (size_t)getpagesize();
    for (; w->n_stacks < n; w->n_stacks++) {
        unsigned char *p = map_rw(STACK_MAP + page, "cannot map a fiber stack");
        if (mprotect(p, page, PROT_NONE) != 0) die("cannot protect a fiber stack's guard page");
        fthread *t = &w->thr[w->n_stacks];
        t->stack = p + page;
        t->stack_top = t->stack + STACK_MAP - (size_t)w->n_stacks * 21 * 64 % STACK_COLOURS;
    }
}

/* The arena: cap bytes (the profile's opt-in limit) plus slack, a guard page after, all poisoned. */
static void arena_ensure(worker *w, size_t cap) {
    if (w->arena && w->arena_cap >= cap) return;
    const size_t page = (size_t)getpagesize();
    if (w->arena) unmap(w->arena, w->arena_cap + ARENA_SLACK + page);
    cap = (cap + page - 1) / page * page;
    unsigned char *p = map_rw(cap + ARENA_SLACK + page, "cannot map a shared-memory arena");
    if (mprotect(p + cap + ARENA_SLACK, page, PROT_NONE) != 0) die("cannot protect the arena's guard");
    w->arena = p;
    w->arena_cap = cap;
    memset(w->arena, 0xff, cap + ARENA_SLACK);
    w->extent_prev = w->extent = 0;
}

/* ------------------------------------------------------------ faults */

/* Record the grid's first fault (raised by run_grid's caller as the launch's asynchronous error). */
static void kernel_fault(kernel_ctx *k, cudaError_t e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void kernel_fault(kernel_ctx *k, cudaError_t e, const char *fmt, ...) {
    std::lock_guard<std::mutex> g(k->mu);
    if (k->fault != cudaSuccess) return;
    k->fault = e;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(k->fault_msg, sizeof k->fault_msg, fmt, ap);
    va_end(ap);
    k->fault_set.store(true);
}

/* ------------------------------------------------------------ switching */

static inline void rq_push(worker *w, unsigned i) { w->rq[w->rq_tail++ % MAX_THREADS] = i; }

/* Called on arrival in a fiber or in the worker's context. */
static inline void arrived(worker *w, fthread *me) {
#ifdef __SANITIZE_ADDRESS__
    const void *bottom;
    size_t size;
    __sanitizer_finish_switch_fiber(me ? me->fake_stack : w->main_fake_stack, &bottom, &size);
    /* The worker's own stack is known from the first switch that leaves it. */
    if (me && w->from_main) w->main_bottom = bottom, w->main_size = size;
#else
    (void)w, (void)me;
#endif
}

/* Leave `from` (nullptr: the worker's context; from_done: it has exited) for the next ready thread,
 * or for the worker's context when none is ready.  Returns when something switches back to from. */
static void fiber_main(void);

static void switch_away(worker *w, fthread *from, bool from_done) {
    fthread *to = nullptr;
    if (w->rq_head != w->rq_tail) {
        to = &w->thr[w->rq[w->rq_head++ % MAX_THREADS]];
        /* A thread's context is made when it first runs: its stack's top is written and read at once. */
        if (!to->ctx) to->ctx = ctx_make(to->stack_top, fiber_main);
    }
    if (w->rq_head != w->rq_tail) {
        /* The thread after `to` resumes next: fetch the top of its stack (its saved registers and the
         * frames it returns through) while `to` runs, instead of stalling on it then. */
        const fthread *next = &w->thr[w->rq[w->rq_head % MAX_THREADS]];
        const char *sp = next->ctx ? (const char *)next->ctx : (const char *)next->stack_top - 512;
        for (int i = 0; i < 512; i += 64) __builtin_prefetch(sp + i);
    }
    if (to == from && from) return; /* cannot happen: a waiting thread is not ready */
    ctx_t *save = from_done ? &w->dead_ctx : from ? &from->ctx : &w->main_ctx;
#ifdef __SANITIZE_ADDRESS__
    void **fake = from_done ? nullptr : from ? &from->fake_stack : &w->main_fake_stack;
    if (from_done) from->exit_frame = (unsigned char *)__builtin_frame_address(0);
    w->from_main = from == nullptr;
    if (to) __sanitizer_start_switch_fiber(fake, to->stack, (size_t)(to->stack_top - to->stack));
    else __sanitizer_start_switch_fiber(fake, w->main_bottom, w->main_size);
#endif
#ifdef __SANITIZE_THREAD__
    __tsan_switch_to_fiber(to ? to->tsan_fiber : w->tsan_main, 0);
#endif
    tl_cur = to;
    ctx_swap(save, to ? to->ctx : w->main_ctx);
    arrived(w, from);
}

static void thread_exit(worker *w, fthread *me);

static void fiber_main(void) {
    worker *w = tl_w;
    fthread *me = tl_cur;
#ifdef __SANITIZE_ADDRESS__
    me->fake_stack = nullptr;
#endif
    arrived(w, me);
    (*w->k->body)();
    thread_exit(w, me);
}

/* ------------------------------------------------------------ barriers */

/* A fault of the block's synchronisation: report it, fail the launch, release every waiter; from now
 * on the block's barriers and warp ops do not wait. */
static void block_break(worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void block_break(worker *w, const char *fmt, ...) {
    if (w->broken) return;
    w->broken = true;
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    report("barrier", "kernel %s, block %u: %s", w->k->name, w->block_lin, msg);
    kernel_fault(w->k, cudaErrorLaunchFailure, "kernel %s, block %u: %s", w->k->name, w->block_lin, msg);
    for (unsigned i = 0; i < w->n; i++) {
        fthread *t = &w->thr[i];
        if (t->state == T_BARRIER || t->state == T_WARP) t->state = T_READY, rq_push(w, i);
    }
    w->n_barrier = 0;
}

static bool same_site(const fthread *a, const char *file, int line) {
    return a->bar_line == line && (a->bar_file == file || !strcmp(a->bar_file, file));
}

/* __syncthreads and its count/and/or forms: op < 0 plain. */
static int barrier(int pred, int op, const char *file, int line) {
    worker *w = tl_w;
    fthread *me = tl_cur;
    if (!me) return 0; /* outside a kernel */
    if (w->broken) {
        w->epoch++;
        return 0;
    }
    if (w->n_done) {
        unsigned gone = 0;
        while (w->thr[gone].state != T_DONE) gone++;
        block_break(w, "__syncthreads at %s:%d is not reached by thread %u (and %u more): it has exited", file, line,
                    gone, w->n_done - 1);
        w->epoch++;
        return 0;
    }
    me->bar_file = file, me->bar_line = line;
    if (w->n_barrier == 0) w->bar_acc = op == 1;
    if (op == 0) w->bar_acc += pred != 0;
    else if (op == 1) w->bar_acc &= pred != 0;
    else if (op == 2) w->bar_acc |= pred != 0;
    if (++w->n_barrier < w->n) {
        me->state = T_BARRIER;
        switch_away(w, me, false);
        return w->broken ? 0 : w->bar_result;
    }
    /* The last arrival: the barrier completes, the waiters become ready and this thread goes on. */
    w->n_barrier = 0;
    w->epoch++;
    w->bar_result = w->bar_acc;
    w->bar_acc = 0;
    const fthread *other = nullptr;
    for (unsigned i = 0; i < w->n; i++) {
        fthread *t = &w->thr[i];
        if (t == me) continue;
        if (!other && !same_site(t, file, line)) other = t;
        t->state = T_READY;
        rq_push(w, i);
    }
    if (other)
        block_break(w, "threads wait at different barriers: thread %u at %s:%d, thread %u at %s:%d", me->lin, file,
                    line, other->lin, other->bar_file, other->bar_line);
    return w->bar_result;
}

/* ------------------------------------------------------------ warp ops */

static const char *rv_name(rv_kind k) { return k == RV_SYNC ? "__syncwarp" : k == RV_SHFL ? "a shuffle" : "a vote"; }

/* Lane me meets the lanes of mask at an op of kind; returns the rendezvous (complete), or nullptr when
 * the block is broken (the caller then uses its own value). */
static rendezvous *warp_meet(worker *w, fthread *me, rv_kind kind, uint32_t mask, unsigned long long val) {
    const unsigned lane = me->lin & 31;
    const uint32_t bit = 1u << lane;
    warp_state *ws = &w->warps[me->lin >> 5];
    if (w->broken) return nullptr;
    if (!(mask & bit)) {
        block_break(w, "lane %u of warp %u calls %s with mask 0x%08x, which does not name it", lane, me->lin >> 5,
                    rv_name(kind), mask);
        return nullptr;
    }
    if (mask & ~ws->exists) {
        block_break(w, "%s with mask 0x%08x in warp %u, whose lanes are 0x%08x (block of %u threads)", rv_name(kind),
                    mask, me->lin >> 5, ws->exists, w->n);
        return nullptr;
    }
    if (mask & ws->exited) {
        block_break(w, "%s with mask 0x%08x in warp %u (called by lane %u) names lanes 0x%08x that have exited",
                    rv_name(kind), mask, me->lin >> 5, lane, mask & ws->exited);
        return nullptr;
    }
    rendezvous *rv = nullptr;
    for (uint32_t u = ws->used; u; u &= u - 1) {
        rendezvous *r = &ws->rv[__builtin_ctz(u)];
        if (r->mask == mask && r->kind == kind && !r->complete && !(r->arrived & bit)) {
            rv = r;
            break;
        }
    }
    if (!rv) {
        uint32_t free_slots = ~ws->used;
        if (!free_slots) {
            block_break(w, "more than %d warp ops in flight in warp %u", RV_PER_WARP, me->lin >> 5);
            return nullptr;
        }
        unsigned s = (unsigned)__builtin_ctz(free_slots);
        ws->used |= 1u << s;
        rv = &ws->rv[s];
        rv->mask = mask, rv->kind = kind, rv->arrived = 0, rv->ballot = 0, rv->complete = false;
    }
    rv->val[lane] = val;
    rv->arrived |= bit;
    if (kind == RV_VOTE && val) rv->ballot |= bit;
    if (rv->arrived == mask) {
        rv->complete = true;
        rv->unread = mask;
        const unsigned base = me->lin & ~31u;
        for (uint32_t m = mask & ~bit; m; m &= m - 1) {
            fthread *t = &w->thr[base + (unsigned)__builtin_ctz(m)];
            t->state = T_READY;
            rq_push(w, t->lin);
        }
        return rv;
    }
    me->state = T_WARP;
    me->rv = rv;
    switch_away(w, me, false);
    return rv->complete ? rv : nullptr;
}

/* Lane is done with rv: the last reader frees it. */
static inline void rv_read(worker *w, fthread *me, rendezvous *rv) {
    rv->unread &= ~(1u << (me->lin & 31));
    if (!rv->unread) {
        warp_state *ws = &w->warps[me->lin >> 5];
        ws->used &= ~(1u << (unsigned)(rv - ws->rv));
    }
}

/* ------------------------------------------------------------ a block */

static void thread_exit(worker *w, fthread *me) {
    me->state = T_DONE;
    w->n_done++;
    check_thread_exit(me->lin);
    warp_state *ws = &w->warps[me->lin >> 5];
    const uint32_t bit = 1u << (me->lin & 31);
    ws->exited |= bit;
    if (!w->broken) {
        for (uint32_t u = ws->used; u; u &= u - 1) {
            rendezvous *r = &ws->rv[__builtin_ctz(u)];
            if (!r->complete && (r->mask & bit)) {
                block_break(w, "lane %u of warp %u exits while lanes 0x%08x wait for it at %s with mask 0x%08x",
                            me->lin & 31, me->lin >> 5, r->arrived, rv_name(r->kind), r->mask);
                break;
            }
        }
    }
    if (!w->broken && w->n_barrier) {
        unsigned waiting = 0;
        while (w->thr[waiting].state != T_BARRIER) waiting++;
        block_break(w, "thread %u exits while %u threads wait at __syncthreads (thread %u at %s:%d)", me->lin,
                    w->n_barrier, waiting, w->thr[waiting].bar_file, w->thr[waiting].bar_line);
    }
    switch_away(w, me, true);
    die("a finished fiber was resumed");
}

/* The block is stuck: nobody is ready and some threads have not exited. */
static void block_stuck(worker *w) {
    if (w->broken) { /* cannot happen (a broken block's threads never wait), but never hang */
        for (unsigned i = 0; i < w->n; i++)
            if (w->thr[i].state == T_BARRIER || w->thr[i].state == T_WARP) w->thr[i].state = T_READY, rq_push(w, i);
        return;
    }
    const fthread *bar = nullptr, *wrp = nullptr;
    unsigned n_bar = 0, n_wrp = 0;
    for (unsigned i = 0; i < w->n; i++) {
        const fthread *t = &w->thr[i];
        if (t->state == T_BARRIER) n_bar++, bar = bar ? bar : t;
        if (t->state == T_WARP) n_wrp++, wrp = wrp ? wrp : t;
    }
    if (bar && wrp)
        block_break(w, "deadlock: %u threads wait at __syncthreads (thread %u at %s:%d) while %u lanes wait at warp ops "
                    "(thread %u at %s with mask 0x%08x, lanes 0x%08x arrived)",
                    n_bar, bar->lin, bar->bar_file, bar->bar_line, n_wrp, wrp->lin, rv_name(wrp->rv->kind),
                    wrp->rv->mask, wrp->rv->arrived);
    else if (wrp)
        block_break(w, "deadlock: %u lanes wait at warp ops that cannot complete (thread %u at %s with mask 0x%08x, "
                    "lanes 0x%08x arrived; lanes at different ops or with different masks)",
                    n_wrp, wrp->lin, rv_name(wrp->rv->kind), wrp->rv->mask, wrp->rv->arrived);
    else
        block_break(w, "deadlock: %u threads wait at __syncthreads (thread %u at %s:%d)", n_bar, bar ? bar->lin : 0,
                    bar ? bar->bar_file : "?", bar ? bar->bar_line : 0);
}

static void run_block(worker *w, kernel_ctx *k, unsigned b) {
    const dim3 g = k->grid, bd = k->block;
    w->block_lin = b;
    w->bidx.x = b % g.x;
    w->bidx.y = b / g.x % g.y;
    w->bidx.z = b / (g.x * g.y);
    w->n = k->n_threads;
    w->n_done = w->n_barrier = 0;
    w->bar_acc = w->bar_result = 0;
    w->broken = false;
    w->rq_head = w->rq_tail = 0;

    /* Shared memory: poison what the previous block could reach; check what this one will use. */
    memset(w->arena, 0xff, w->extent_prev);
    w->extent = w->static_end;
    if (w->extent > k->smem_limit && !k->failed.load()) {
        k->failed.store(true);
        report("launch", "kernel %s: %zu B of shared memory per block (%zu dynamic + %zu static) exceed the device's "
               "%zu B", k->name, w->extent, k->dyn_smem, w->static_bytes, k->smem_limit);
        kernel_fault(k, cudaErrorInvalidValue, "kernel %s: too much shared memory (%zu B)", k->name, w->extent);
        return;
    }

    for (unsigned i = 0; i < w->n; i++) {
        fthread *t = &w->thr[i];
        t->idx.x = i % bd.x;
        t->idx.y = i / bd.x % bd.y;
        t->idx.z = i / (bd.x * bd.y);
        t->lin = i;
        t->state = T_READY;
        t->rv = nullptr;
        t->bar_file = "";
        t->bar_line = 0;
#ifdef __SANITIZE_ADDRESS__
        t->fake_stack = nullptr;
        /* A fiber leaves for good from inside fiber_main -> thread_exit -> switch_away: those frames
         * never return, so their redzones stay poisoned; the next fiber on this stack starts clean. */
        if (t->exit_frame) __asan_unpoison_memory_region(t->exit_frame - 256, (size_t)(t->stack_top - t->exit_frame) + 256);
        t->exit_frame = nullptr;
#endif
        t->ctx = nullptr; /* made when it first runs */
#ifdef __SANITIZE_THREAD__
        t->tsan_fiber = __tsan_create_fiber(0);
#endif
        rq_push(w, i);
    }
    for (unsigned i = 0; i < (w->n + 31) / 32; i++) {
        warp_state *ws = &w->warps[i];
        unsigned lanes = w->n - i * 32 < 32 ? w->n - i * 32 : 32;
        ws->exists = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
        ws->exited = ws->used = 0;
    }

    check_block_begin(w->arena, k->smem_limit, w->n);
    while (w->n_done < w->n) {
        if (w->rq_head == w->rq_tail) block_stuck(w);
        switch_away(w, nullptr, false);
    }
    check_block_end();
#ifdef __SANITIZE_THREAD__
    for (unsigned i = 0; i < w->n; i++) __tsan_destroy_fiber(w->thr[i].tsan_fiber);
#endif
    w->extent_prev = w->extent;
}

/* Blocks of k until none is left (or the grid failed). */
static void run_blocks(kernel_ctx *k) {
    worker *w = worker_get();
    arena_ensure(w, k->smem_limit);
    stacks_ensure(w, k->n_threads);
#ifdef __SANITIZE_THREAD__
    w->tsan_main = __tsan_get_current_fiber();
#endif
    w->k = k;
    w->n_sites = 0;
    w->static_bytes = 0;
    w->static_end = (k->dyn_smem + 15) & ~(size_t)15;
    for (;;) {
        if (k->failed.load(std::memory_order_relaxed)) break;
        unsigned b = k->next_block.fetch_add(1);
        if (b >= k->n_blocks) break;
        run_block(w, k, b);
    }
    w->k = nullptr;
}

/* ------------------------------------------------------------ helper threads */

/* Grids wanting help; helpers join the front one.  Never destroyed (threads may outlive main). */
struct pool {
    std::mutex mu;
    std::condition_variable cv, done_cv;
    std::deque<kernel_ctx *> jobs;
    int n_helpers = 0;
};

static pool *pool_get() {
    static pool *p = [] {
        pool *q = new pool();
        int n = 0;
        const char *e = getenv("LLMQ_EMU_THREADS");
        if (e && *e) n = atoi(e);
        else {
            long c = sysconf(_SC_NPROCESSORS_ONLN);
            n = c < 1 ? 1 : c > 4 ? 4 : (int)c;
        }
        if (n < 1) n = 1;
        if (n > 64) n = 64;
        q->n_helpers = n - 1;
        for (int i = 0; i < q->n_helpers; i++) {
            std::thread([q] {
                std::unique_lock<std::mutex> lk(q->mu);
                for (;;) {
                    q->cv.wait(lk, [q] { return !q->jobs.empty(); });
                    kernel_ctx *k = q->jobs.front();
                    if (k->next_block.load() >= k->n_blocks || k->failed.load()) {
                        q->jobs.pop_front();
                        continue;
                    }
                    k->helpers++;
                    lk.unlock();
                    run_blocks(k);
                    lk.lock();
                    if (--k->helpers == 0) q->done_cv.notify_all();
                }
            }).detach();
        }
        return q;
    }();
    return p;
}

/* ------------------------------------------------------------ run_grid */

void run_grid(const char *name, dim3 grid, dim3 block, size_t dyn_smem, const std::function<void()> &body) {
    if (tl_cur) die("a kernel launched a grid from inside a kernel");
    kernel_ctx k;
    k.name = name ? name : "?";
    k.grid = grid;
    k.block = block;
    k.dyn_smem = dyn_smem;
    k.body = &body;
    k.n_blocks = grid.x * grid.y * grid.z;
    k.n_threads = block.x * block.y * block.z;
    const profile &pr = device_profile();
    k.smem_limit = pr.smem_per_block_optin;
    k.smem_static_limit = pr.smem_per_block;
    if (k.n_blocks == 0 || k.n_threads == 0) return;
    if (k.n_threads > MAX_THREADS) {
        report("launch", "kernel %s: %u threads per block, more than %d", k.name, k.n_threads, MAX_THREADS);
        async_error(cudaErrorInvalidConfiguration, "kernel %s: %u threads per block", k.name, k.n_threads);
        return;
    }
    if (dyn_smem > k.smem_limit) {
        report("launch", "kernel %s: %zu B of dynamic shared memory per block exceed the device's %zu B", k.name,
               dyn_smem, k.smem_limit);
        async_error(cudaErrorInvalidValue, "kernel %s: too much dynamic shared memory (%zu B)", k.name, dyn_smem);
        return;
    }

    pool *p = k.n_blocks > 1 ? pool_get() : nullptr;
    bool shared_out = p && p->n_helpers > 0;
    if (shared_out) {
        std::lock_guard<std::mutex> g(p->mu);
        p->jobs.push_back(&k);
        if (k.n_blocks - 1 >= (unsigned)p->n_helpers) p->cv.notify_all();
        else
            for (unsigned i = 0; i + 1 < k.n_blocks; i++) p->cv.notify_one();
    }
    run_blocks(&k);
    if (shared_out) {
        std::unique_lock<std::mutex> lk(p->mu);
        for (auto it = p->jobs.begin(); it != p->jobs.end(); ++it)
            if (*it == &k) {
                p->jobs.erase(it);
                break;
            }
        p->done_cv.wait(lk, [&] { return k.helpers == 0; });
    }
    if (k.fault_set.load()) async_error(k.fault, "%s", k.fault_msg);
}

/* ------------------------------------------------------------ what the detectors ask */

kernel_ctx *current_kernel() { return tl_w ? tl_w->k : nullptr; }
unsigned cur_thread() { return tl_cur ? tl_cur->lin : 0; }
unsigned cur_block() { return tl_w ? tl_w->block_lin : 0; }
const char *cur_kernel_name() { return tl_w && tl_w->k ? tl_w->k->name : "?"; }
void cur_shared(unsigned char **base, size_t *size) {
    worker *w = tl_w;
    *base = w && w->k ? w->arena : nullptr;
    *size = w && w->k ? w->k->smem_limit : 0;
}
uint64_t cur_epoch() { return tl_w ? tl_w->epoch : 0; }

} // namespace emu

/* ------------------------------------------------------------ emu_device.h / emu.h */

using emu::tl_cur;
using emu::tl_w;

uint3 emu_thread_idx(void) {
    if (!tl_cur) return uint3{0, 0, 0};
    return tl_cur->idx;
}
uint3 emu_block_idx(void) {
    if (!tl_cur) return uint3{0, 0, 0};
    return tl_w->bidx;
}
dim3 emu_block_dim(void) {
    if (!tl_cur) return dim3(1, 1, 1);
    return tl_w->k->block;
}
dim3 emu_grid_dim(void) {
    if (!tl_cur) return dim3(1, 1, 1);
    return tl_w->k->grid;
}

void emu_syncthreads(const char *file, int line) { emu::barrier(0, -1, file, line); }
int emu_syncthreads_op(int pred, int op, const char *file, int line) { return emu::barrier(pred, op, file, line); }

void emu_syncwarp(unsigned mask) {
    emu::fthread *me = tl_cur;
    if (!me) return;
    emu::rendezvous *rv = emu::warp_meet(tl_w, me, emu::RV_SYNC, mask, 0);
    if (rv) emu::rv_read(tl_w, me, rv);
}

unsigned long long emu_shfl(unsigned mask, unsigned long long bits, int mode, int arg, int width) {
    emu::fthread *me = tl_cur;
    if (!me) return bits;
    emu::worker *w = tl_w;
    emu::rendezvous *rv = emu::warp_meet(w, me, emu::RV_SHFL, mask, bits);
    if (!rv) return bits;
    if (width <= 0 || width > 32 || (width & (width - 1))) width = 32;
    const int lane = (int)(me->lin & 31), lo = lane & ~(width - 1), hi = lo + width - 1;
    int src;
    bool ok;
    switch (mode) {
    case EMU_SHFL_IDX: src = lo + (arg & (width - 1)), ok = true; break;
    case EMU_SHFL_UP: src = lane - arg, ok = src >= lo; break;
    case EMU_SHFL_DOWN: src = lane + arg, ok = src <= hi; break;
    default: src = lane ^ arg, ok = src <= hi; break;
    }
    /* A source outside the segment gives the caller's own value (CUDA); one outside the mask too
     * (CUDA leaves it undefined). */
    unsigned long long r = ok && src >= 0 && src < 32 && (rv->mask >> src & 1) ? rv->val[src] : bits;
    emu::rv_read(w, me, rv);
    return r;
}

unsigned emu_vote(unsigned mask, int pred) {
    emu::fthread *me = tl_cur;
    if (!me) return pred ? mask : 0;
    emu::rendezvous *rv = emu::warp_meet(tl_w, me, emu::RV_VOTE, mask, pred != 0);
    if (!rv) return pred ? 1u << (me->lin & 31) : 0;
    unsigned r = rv->ballot;
    emu::rv_read(tl_w, me, rv);
    return r;
}

unsigned emu_activemask(void) {
    emu::fthread *me = tl_cur;
    if (!me) return 1;
    const emu::warp_state *ws = &tl_w->warps[me->lin >> 5];
    return ws->exists & ~ws->exited;
}

void *emu_shared_static(const void *key, size_t bytes, size_t align) {
    emu::worker *w = tl_w;
    if (!w || !w->k || !tl_cur) emu::die("shared memory declared outside a kernel");
    for (unsigned i = 0; i < w->n_sites; i++)
        if (w->sites[i].key == key) return w->arena + w->sites[i].off;
    /* First declaration of this array on this worker in this grid: carve it after the others. */
    if (w->n_sites == emu::MAX_SITES) emu::die("more than 64 shared arrays in one kernel");
    if (align < 16) align = 16;
    size_t off = (w->static_end + align - 1) & ~(align - 1);
    size_t end = off + bytes;
    emu::kernel_ctx *k = w->k;
    w->static_bytes += end - w->static_end;
    if ((end > k->smem_limit || w->static_bytes > k->smem_static_limit) && !k->failed.load()) {
        k->failed.store(true);
        emu::report("launch", "kernel %s: %zu B of static shared memory (limit %zu B) and %zu B dynamic exceed "
                    "the device's %zu B per block", k->name, w->static_bytes, k->smem_static_limit, k->dyn_smem,
                    k->smem_limit);
        emu::kernel_fault(k, cudaErrorInvalidValue, "kernel %s: too much shared memory (%zu B static, %zu B dynamic)",
                          k->name, w->static_bytes, k->dyn_smem);
    }
    if (end > w->arena_cap + emu::ARENA_SLACK) emu::die("a kernel's shared arrays exceed the arena by far");
    w->sites[w->n_sites++] = emu::site{key, off, bytes};
    w->static_end = end;
    if (end > w->extent) w->extent = end;
    return w->arena + off;
}

void *emu_shared_dynamic(void) {
    emu::worker *w = tl_w;
    if (!w || !w->k || !tl_cur) emu::die("shared memory declared outside a kernel");
    if (w->k->dyn_smem > w->extent) w->extent = w->k->dyn_smem;
    return w->arena;
}
