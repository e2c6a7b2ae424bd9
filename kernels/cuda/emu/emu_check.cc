/*
 * emu_check.cc — the emulated device's detectors: what a GPU would not
 * report, or would report without saying where.
 *
 *  - shared-memory races: a byte written by one thread of a block and read
 *    or written by another thread of that block in the same barrier
 *    interval (no __syncthreads between them);
 *  - reads of shared bytes never written in this block (a GPU would return
 *    stale data; the arena is NaN-poisoned at block start);
 *  - out-of-bounds device accesses (also raised as cudaErrorIllegalAddress,
 *    as a GPU would) and reads of device bytes never written;
 *  - emu::report, through which every part reports ("barrier", "launch" too).
 *
 * How accesses are seen: make cuda-emu compiles the kernel files with
 * -fsanitize=thread but never links libtsan; this file defines the
 * callbacks that instrumentation calls (__tsan_read4, __tsan_write8, the
 * atomics, ...).  They are also called by host code in those files, so
 * outside a block the callback is one thread-local load and a return.
 * Under SANITIZER=thread the real TSan runtime owns those names: the
 * callbacks are then not defined here (and emu.mk does not instrument).
 *
 * Shadow of shared memory: one 8-byte entry per byte of the running block's
 * arena (last write: epoch and thread; reads of the latest interval: epoch
 * and the reader, or "several"), per OS thread (a block runs wholly on one
 * OS thread).  Epochs are global per OS thread and only grow: a block's
 * epochs are base + (barriers completed since its first shared access), so
 * an entry whose write epoch is below the block's base was written by an
 * earlier block (= never written in this one) and the shadow is never
 * cleared between blocks.
 *
 * Cost: with the checks, the attention kernels run about 4x slower than
 * without the instrumentation (each shared access is a call and a shadow
 * update); LLMQ_EMU_CHECK=0 keeps only the calls (about 1.6x).
 *
 * Invariants: lanes of a warp are not assumed to run in lockstep, and
 * __syncwarp / shuffles do not order shared accesses here (the kernels do not
 * rely on it; a kernel that does would be reported).  Atomics never race with
 * atomics.  Each report is printed once per (kind, kernel, code location).
 */
#include "kernels/cuda/emu/emu_internal.hh"

#include <dlfcn.h>
#include <elf.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace emu {

/* ------------------------------------------------------------ reports */

static std::atomic<long> n_reports{0};

void report(const char *kind, const char *fmt, ...) {
    /* Reports come from fibers with small stacks: the text is built in thread-local buffers. */
    static thread_local char msg[2048], line[2200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int n = snprintf(line, sizeof line, "llmq-emu: %s: %s\n", kind, msg);
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof line) n = (int)sizeof line - 1, line[n - 1] = '\n';
    /* One write per report, so that reports of concurrent streams do not interleave. */
    ssize_t off = 0;
    while (off < n) {
        ssize_t w = write(2, line + off, (size_t)(n - off));
        if (w <= 0) break;
        off += w;
    }
    n_reports.fetch_add(1, std::memory_order_relaxed);
    const char *fatal = getenv("LLMQ_EMU_FATAL");
    if (fatal && fatal[0] == '1') abort();
}

long report_count() { return n_reports.load(std::memory_order_relaxed); }

/* ------------------------------------------------------------ code locations */

/* "func at file:line" (inlined frames innermost first) of a return address in
 * instrumented code, by addr2line on the binary that holds it; "binary+0xoff"
 * when that fails.  Cached: each location is asked for once. */
static std::string where(const void *ret) {
    static std::mutex mu;
    static std::unordered_map<uintptr_t, std::string> cache;
    static char buf[512], cmd[1024], fn[512], loc[512]; /* not on a fiber's small stack; under mu */
    std::lock_guard<std::mutex> g(mu);
    uintptr_t pc = (uintptr_t)ret - 1; /* inside the call instruction, not after it */
    auto it = cache.find(pc);
    if (it != cache.end()) return it->second;

    Dl_info info;
    if (!dladdr(ret, &info) || !info.dli_fname) {
        snprintf(buf, sizeof buf, "%p", ret);
        return cache[pc] = buf;
    }
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)info.dli_fbase;
    uintptr_t addr = eh->e_type == ET_DYN ? pc - (uintptr_t)info.dli_fbase : pc;
    const char *file = info.dli_fname;
    if (!file[0] || access(file, R_OK) != 0) file = "/proc/self/exe";
    std::string out;
    if (!strchr(file, '\'')) {
        snprintf(cmd, sizeof cmd, "addr2line -C -f -i -e '%s' 0x%lx 2>/dev/null", file, (unsigned long)addr);
        FILE *p = popen(cmd, "r");
        if (p) {
            static char cwd[512];
            if (!getcwd(cwd, sizeof cwd - 1)) cwd[0] = 0;
            strcat(cwd, "/");
            const size_t n_cwd = strlen(cwd);
            while (fgets(fn, sizeof fn, p) && fgets(loc, sizeof loc, p)) {
                fn[strcspn(fn, "\n")] = 0;
                loc[strcspn(loc, "\n")] = 0;
                char *disc = strstr(loc, " (discriminator");
                if (disc) *disc = 0;
                if (!strncmp(loc, "??", 2)) continue;
                out += out.empty() ? "" : ", inlined in ";
                out += fn;
                out += " at ";
                out += strncmp(loc, cwd, n_cwd) ? loc : loc + n_cwd; /* paths relative to the repository */
            }
            pclose(p);
        }
    }
    if (out.empty()) {
        snprintf(buf, sizeof buf, "%s+0x%lx%s%s", info.dli_fname, (unsigned long)addr,
                 info.dli_sname ? " in " : "", info.dli_sname ? info.dli_sname : "");
        out = buf;
    }
    return cache[pc] = out;
}

/* True the first time (kind, kernel, location) is seen in this process.  A defect in a loop hits
 * this on every access: a per-thread cache of recent keys answers the repeats without the lock. */
static bool first_time(const char *kind, const char *kernel, const void *pc) {
    static std::mutex mu;
    static std::unordered_set<std::string> seen;
    static thread_local uintptr_t recent[64];
    uintptr_t h = (uintptr_t)pc * 31u + (uintptr_t)kind * 17u + (uintptr_t)kernel;
    uintptr_t &slot = recent[(h >> 4) & 63];
    if (slot == h) return false;
    slot = h;
    char key[64];
    snprintf(key, sizeof key, "%p/%p/%p", (const void *)kind, (const void *)kernel, pc);
    std::lock_guard<std::mutex> g(mu);
    return seen.insert(key).second;
}

/* ------------------------------------------------------------ shadow state */

/* Shadow of one byte of shared memory, read on every shared access: 8 bytes, so that the shadow of
 * the bytes a kernel uses stays in cache (the code locations, needed only to report, are in a parallel
 * array).  Each word is (epoch << THR_BITS) | thread: epoch 0 = never, else a global epoch (see top);
 * comparing words compares epochs first. */
enum : uint32_t { THR_BITS = 11, THR_MASK = (1u << THR_BITS) - 1, MANY = THR_MASK, ATOMIC = THR_MASK - 1 };
static const uint32_t EP_LIMIT = 1u << (32 - THR_BITS); /* epochs must stay below */
struct shadow_byte {
    uint32_t w;          /* the last write: epoch, thread (ATOMIC: an atomic) */
    uint32_t r;          /* reads in the latest epoch with reads: epoch, the reader or MANY (two or more) */
};
struct shadow_pc {
    const void *w_pc;    /* code of the last write */
    const void *r_pc;    /* code of the first read of the interval recorded in r */
};

/* The block running on this OS thread. */
struct block_state {
    unsigned char *sh_base; /* shared arena [sh_base, sh_base + sh_size) */
    size_t sh_size;
    shadow_byte *sh;        /* [sh_size] */
    shadow_pc *pcs;         /* [sh_size] */
    uint32_t base;          /* global epoch of the block's first barrier interval */
    uint32_t last;          /* largest global epoch used so far in this block */
    uint64_t epoch0;        /* cur_epoch() at the block's first shared access */
    bool have_epoch0;
    bool oob_raised;        /* async_error already raised for this block */
    uintptr_t thr_page;     /* a page of the stack of the fiber whose cur_thread() is thr (0: none) */
    unsigned thr;
    std::vector<shadow_byte> shadow;
    std::vector<shadow_pc> shadow_pcs;
    uint32_t next_base;     /* where the next block's epochs start */
};

/* The fast path's only load: non-null exactly between check_block_begin and check_block_end. */
static thread_local block_state *tl_blk;
static thread_local std::unique_ptr<block_state> tl_state;

/* LLMQ_EMU_CHECK=0 turns the access checks off for a process (the instrumentation's calls remain, each
 * a thread-local load): for long numeric runs whose kernels another run has checked. */
static bool checks_on() {
    static const bool on = [] {
        const char *e = getenv("LLMQ_EMU_CHECK");
        return !(e && e[0] == '0');
    }();
    return on;
}

/* Set by __tsan_init: some file was built with the instrumentation (not under SANITIZER=address or
 * thread, nor with EMU_CHECK=0), so kernels' device stores are marked written. */
std::atomic<bool> g_instrumented{false};

bool writes_tracked() { return g_instrumented.load(std::memory_order_relaxed) && checks_on(); }

void check_block_begin(unsigned char *shared, size_t size, unsigned n_threads) {
    (void)n_threads;
    if (!checks_on()) return;
    if (!tl_state) {
        tl_state.reset(new block_state());
        tl_state->next_base = 1;
    }
    block_state *b = tl_state.get();
    if (b->shadow.size() < size) { /* new entries are zero: never written */
        b->shadow.resize(size);
        b->shadow_pcs.resize(size);
    }
    /* Epochs have 21 bits: well before they run out (a block may use up to EP_LIMIT / 2 barriers), start
     * over from a cleared shadow. */
    if (b->next_base > EP_LIMIT / 2) {
        memset((void *)b->shadow.data(), 0, b->shadow.size() * sizeof(shadow_byte));
        b->next_base = 1;
    }
    b->sh_base = shared;
    b->sh_size = size;
    b->sh = b->shadow.data();
    b->pcs = b->shadow_pcs.data();
    b->base = b->last = b->next_base;
    b->have_epoch0 = false;
    b->oob_raised = false;
    b->thr_page = 0;
    tl_blk = b;
}

void check_block_end() {
    block_state *b = tl_blk;
    if (!b) return;
    b->next_base = b->last + 1;
    tl_blk = nullptr;
}

/* The barrier detector (a thread leaving while others wait at a barrier) is emu_exec.cc's. */
void check_thread_exit(unsigned thread) { (void)thread; }

/* ------------------------------------------------------------ the checks */

/* Atomics never race with atomics; a plain access and an atomic of another thread in one interval do. */
enum access_kind { READ, WRITE, ATOMIC_LOAD, ATOMIC_STORE, ATOMIC_RMW };

static const char *kind_name(access_kind k) {
    static const char *const names[] = {"read", "write", "atomic load", "atomic store", "atomic read-modify-write"};
    return names[k];
}
static bool reads(access_kind k) { return k == READ || k == ATOMIC_LOAD || k == ATOMIC_RMW; }

static void __attribute__((noinline)) report_race(block_state *b, size_t off, access_kind k, const void *pc,
                                                  const char *other_kind, unsigned other_thr, const void *other_pc) {
    const char *kernel = cur_kernel_name();
    if (!first_time("race", kernel, pc)) return;
    char other[32];
    if (other_thr == MANY) snprintf(other, sizeof other, "several threads");
    else if (other_thr == ATOMIC) snprintf(other, sizeof other, "an atomic");
    else snprintf(other, sizeof other, "thread %u", other_thr);
    report("race",
           "kernel %s, block %u: shared memory offset %zu: %s by thread %u at %s, and %s by %s at %s, "
           "with no __syncthreads between them",
           kernel, cur_block(), off, kind_name(k), cur_thread(), where(pc).c_str(), other_kind, other,
           other_pc ? where(other_pc).c_str() : "?");
    (void)b;
}

static void __attribute__((noinline)) shared_past_end(block_state *b, size_t off, size_t n, access_kind k,
                                                      const void *pc) {
    const char *kernel = cur_kernel_name();
    if (first_time("out-of-bounds shared", kernel, pc))
        report("out-of-bounds", "kernel %s, block %u, thread %u: %s of %zu B at shared memory offset %zu, past the "
               "block's %zu B, at %s", kernel, cur_block(), cur_thread(), kind_name(k), n, off, b->sh_size,
               where(pc).c_str());
}

static void __attribute__((noinline)) shared_unwritten(block_state *b, size_t off, size_t n, access_kind k,
                                                       const void *pc) {
    const char *kernel = cur_kernel_name();
    if (first_time("uninitialized shared", kernel, pc))
        report("uninitialized", "kernel %s, block %u, thread %u: %s of %zu B at shared memory offset %zu, never "
               "written in this block, at %s", kernel, cur_block(), cur_thread(), kind_name(k), n, off,
               where(pc).c_str());
    (void)b;
}

/* An access of n bytes at offset off of the block's shared arena.  K is a constant in each callback,
 * so each gets its own loop without the other kinds' branches. */
template <access_kind K>
static inline __attribute__((always_inline)) void shared_access(block_state *b, size_t off, size_t n,
                                                                const void *pc) {
    if (__builtin_expect(n > b->sh_size - off, 0)) {
        shared_past_end(b, off, n, K, pc);
        n = b->sh_size - off;
    }
    const uint64_t ep = cur_epoch();
    if (__builtin_expect(!b->have_epoch0, 0)) b->epoch0 = ep, b->have_epoch0 = true;
    uint32_t e = b->base + (uint32_t)(ep - b->epoch0);
    if (__builtin_expect(e >= EP_LIMIT, 0)) e = EP_LIMIT - 1; /* over a million barriers in one block */
    if (e > b->last) b->last = e;
    /* cur_thread() is a call: remembered for the fiber whose stack we are on (each fiber has its own
     * stack mapping, so a stack page names one thread until the next block). */
    const uintptr_t page = (uintptr_t)__builtin_frame_address(0) >> 12;
    if (__builtin_expect(page != b->thr_page, 0)) b->thr = cur_thread(), b->thr_page = page;
    const uint32_t t = b->thr;
    const uint32_t now = e << THR_BITS, me = now | t, unwritten = b->base << THR_BITS;
    shadow_byte *s = b->sh + off;
    for (size_t i = 0; i < n; i++) {
        shadow_byte &x = s[i];
        if (K == READ || K == ATOMIC_LOAD || K == ATOMIC_RMW) {
            if (__builtin_expect(x.w < unwritten, 0)) shared_unwritten(b, off + i, n, K, pc);
        }
        if (K == ATOMIC_LOAD) continue;
        if (K == ATOMIC_STORE || K == ATOMIC_RMW) {
            x.w = now | ATOMIC, b->pcs[off + i].w_pc = pc;
            continue;
        }
        /* written in this interval (epochs are never above e) by another thread */
        if (__builtin_expect(x.w >= now && x.w != me, 0))
            report_race(b, off + i, K, pc, "write", x.w & THR_MASK, b->pcs[off + i].w_pc);
        if (K == WRITE) {
            if (__builtin_expect(x.r >= now && x.r != me, 0))
                report_race(b, off + i, K, pc, "read", x.r & THR_MASK, b->pcs[off + i].r_pc);
            x.w = me, b->pcs[off + i].w_pc = pc;
        } else if (x.r < now) {
            x.r = me, b->pcs[off + i].r_pc = pc;
        } else if (x.r != me && x.r != (now | MANY)) { /* no store when known: keeps the line clean */
            x.r = now | MANY;
        }
    }
}

/* An access of n bytes at a device address. */
static void device_access(block_state *b, const void *p, size_t n, access_kind k, const void *pc) {
    const char *why = nullptr;
    if (!device_range_ok(p, n, &why)) {
        const char *kernel = cur_kernel_name();
        if (first_time("out-of-bounds", kernel, pc))
            report("out-of-bounds", "kernel %s, block %u, thread %u: %s of %zu B at %p (%s), at %s", kernel,
                   cur_block(), cur_thread(), kind_name(k), n, p, why ? why : "not allocated", where(pc).c_str());
        if (!b->oob_raised) {
            b->oob_raised = true;
            async_error(cudaErrorIllegalAddress, "kernel %s: illegal %s of %zu B at %p (%s)", kernel,
                        kind_name(k), n, p, why ? why : "not allocated");
        }
        return;
    }
    if (reads(k) && !device_written(p, n)) {
        const char *kernel = cur_kernel_name();
        if (first_time("uninitialized", kernel, pc))
            report("uninitialized", "kernel %s, block %u, thread %u: %s of %zu B at %p: device memory never written, "
                   "at %s", kernel, cur_block(), cur_thread(), kind_name(k), n, p, where(pc).c_str());
    }
    if (k != READ && k != ATOMIC_LOAD) device_mark_written(p, n);
}

/* An access inside a block (out of line: the callbacks' fast path then saves no registers). */
template <access_kind K, size_t N>
static void __attribute__((noinline)) check_in_block(block_state *b, const void *p, size_t n, const void *pc) {
    if (N) n = N;
    size_t off = (uintptr_t)p - (uintptr_t)b->sh_base;
    if (off < b->sh_size) return shared_access<K>(b, off, n, pc);
    if (is_device(p)) device_access(b, p, n, K, pc);
}

/* Every instrumented access comes here (N: the size when it is a constant, else 0 and n).  Outside a
 * block: one thread-local load. */
template <access_kind K, size_t N = 0>
static inline __attribute__((always_inline)) void check(const volatile void *p, size_t n, const void *pc) {
    block_state *b = tl_blk;
    if (__builtin_expect(b == nullptr, 1)) return;
    check_in_block<K, N>(b, (const void *)p, n, pc);
}

} // namespace emu

/* ------------------------------------------------------------ the instrumentation's callbacks */

#ifndef __SANITIZE_THREAD__ /* under SANITIZER=thread these names are libtsan's */

#define RA __builtin_return_address(0)

extern "C" {

/* Called by the module constructor of every instrumented file: kernels' stores are then seen. */
void __tsan_init(void) { emu::g_instrumented.store(true, std::memory_order_relaxed); }
void __tsan_func_entry(void *caller) { (void)caller; }
void __tsan_func_exit(void *caller) { (void)caller; }
void __tsan_vptr_update(void *vptr, void *val) { (void)vptr, (void)val; }
void __tsan_vptr_read(void *vptr) { (void)vptr; }
void __tsan_read_range(void *p, long n) { emu::check<emu::READ>(p, (size_t)n, RA); }
void __tsan_write_range(void *p, long n) { emu::check<emu::WRITE>(p, (size_t)n, RA); }

#define EMU_TSAN_RW(N)                                                                                                 \
    void __tsan_read##N(void *p) { emu::check<emu::READ, N>(p, N, RA); }                                               \
    void __tsan_write##N(void *p) { emu::check<emu::WRITE, N>(p, N, RA); }                                             \
    void __tsan_unaligned_read##N(void *p) { emu::check<emu::READ, N>(p, N, RA); }                                     \
    void __tsan_unaligned_write##N(void *p) { emu::check<emu::WRITE, N>(p, N, RA); }                                   \
    void __tsan_volatile_read##N(void *p) { emu::check<emu::READ, N>(p, N, RA); }                                      \
    void __tsan_volatile_write##N(void *p) { emu::check<emu::WRITE, N>(p, N, RA); }                                    \
    void __tsan_read##N##_pc(void *p, void *pc) { emu::check<emu::READ, N>(p, N, pc); }                                \
    void __tsan_write##N##_pc(void *p, void *pc) { emu::check<emu::WRITE, N>(p, N, pc); }
EMU_TSAN_RW(1)
EMU_TSAN_RW(2)
EMU_TSAN_RW(4)
EMU_TSAN_RW(8)
EMU_TSAN_RW(16)

/* Atomics: the instrumentation replaces the operation by the call, so each callback performs it
 * (sequentially consistent whatever order was asked: stronger is always correct).  Parameter types
 * are those of GCC's declarations of these built-ins. */
#define SC __ATOMIC_SEQ_CST
#define EMU_TSAN_RMW(N, T, OP, EXPR)                                                                                   \
    T __tsan_atomic##N##_##OP(volatile void *p, T v, int mo) {                                                         \
        (void)mo;                                                                                                      \
        emu::check<emu::ATOMIC_RMW, sizeof(T)>(p, sizeof(T), RA);                                                      \
        return EXPR((volatile T *)p, v, SC);                                                                           \
    }
#define EMU_TSAN_ATOMIC(N, T)                                                                                          \
    T __tsan_atomic##N##_load(const volatile void *p, int mo) {                                                        \
        (void)mo;                                                                                                      \
        emu::check<emu::ATOMIC_LOAD, sizeof(T)>(p, sizeof(T), RA);                                                     \
        return __atomic_load_n((const volatile T *)p, SC);                                                             \
    }                                                                                                                  \
    void __tsan_atomic##N##_store(volatile void *p, T v, int mo) {                                                     \
        (void)mo;                                                                                                      \
        emu::check<emu::ATOMIC_STORE, sizeof(T)>(p, sizeof(T), RA);                                                    \
        __atomic_store_n((volatile T *)p, v, SC);                                                                      \
    }                                                                                                                  \
    EMU_TSAN_RMW(N, T, exchange, __atomic_exchange_n)                                                                  \
    EMU_TSAN_RMW(N, T, fetch_add, __atomic_fetch_add)                                                                  \
    EMU_TSAN_RMW(N, T, fetch_sub, __atomic_fetch_sub)                                                                  \
    EMU_TSAN_RMW(N, T, fetch_and, __atomic_fetch_and)                                                                  \
    EMU_TSAN_RMW(N, T, fetch_or, __atomic_fetch_or)                                                                    \
    EMU_TSAN_RMW(N, T, fetch_xor, __atomic_fetch_xor)                                                                  \
    EMU_TSAN_RMW(N, T, fetch_nand, __atomic_fetch_nand)                                                                \
    bool __tsan_atomic##N##_compare_exchange_strong(volatile void *p, void *c, T v, int mo, int fmo) {                 \
        (void)mo, (void)fmo;                                                                                           \
        emu::check<emu::ATOMIC_RMW, sizeof(T)>(p, sizeof(T), RA);                                                      \
        return __atomic_compare_exchange_n((volatile T *)p, (T *)c, v, false, SC, SC);                                 \
    }                                                                                                                  \
    bool __tsan_atomic##N##_compare_exchange_weak(volatile void *p, void *c, T v, int mo, int fmo) {                   \
        (void)mo, (void)fmo;                                                                                           \
        emu::check<emu::ATOMIC_RMW, sizeof(T)>(p, sizeof(T), RA);                                                      \
        return __atomic_compare_exchange_n((volatile T *)p, (T *)c, v, true, SC, SC);                                  \
    }                                                                                                                  \
    T __tsan_atomic##N##_compare_exchange_val(volatile void *p, T c, T v, int mo, int fmo) {                           \
        (void)mo, (void)fmo;                                                                                           \
        emu::check<emu::ATOMIC_RMW, sizeof(T)>(p, sizeof(T), RA);                                                      \
        __atomic_compare_exchange_n((volatile T *)p, &c, v, false, SC, SC);                                            \
        return c;                                                                                                      \
    }
EMU_TSAN_ATOMIC(8, unsigned char)
EMU_TSAN_ATOMIC(16, unsigned short)
EMU_TSAN_ATOMIC(32, unsigned int)
EMU_TSAN_ATOMIC(64, unsigned long)

void __tsan_atomic_thread_fence(int mo) {
    (void)mo;
    __atomic_thread_fence(SC);
}
void __tsan_atomic_signal_fence(int mo) {
    (void)mo;
    __atomic_signal_fence(SC);
}

} // extern "C"

#endif /* __SANITIZE_THREAD__ */

/* ------------------------------------------------------------ C API (emu.h) */

extern "C" long llmq_emu_report_count(void) { return emu::report_count(); }
