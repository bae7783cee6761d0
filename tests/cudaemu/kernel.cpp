// The kernel executor of the execution layer: a launch runs every block of its grid, each CUDA thread as
// a fiber with its own stack. A fiber runs until it reaches __syncthreads, a warp shuffle or vote, or
// returns; when every fiber of the block has stopped, the scheduler resolves what can proceed:
//  - a warp op once all lanes of its mask wait at the same call (each lane gets its result), and
//  - the block barrier once every thread of the block waits at the same __syncthreads.
// Anything else is a finding (cudaemu::fatal): a barrier some threads skipped by returning (divergent
// barrier), threads waiting at different barriers, a shuffle whose mask names a lane that has exited or
// does not exist (the last warp of a block whose size is not a multiple of 32), a lane reading from a
// lane outside the mask, lanes of one warp at different warp ops.
// Launch configurations beyond sm_90's limits are refused at the launch as CUDA does (the error that
// cudaGetLastError returns) with a note saying which limit.
//
// CUDAEMU_ORDER=forward|reverse|random (default random, CUDAEMU_SEED) orders the blocks of a grid and the
// threads of every scheduling pass: a kernel whose result depends on it has a race.
// CUDAEMU_THREADS=N (default: the machine's cores) spreads blocks over N workers.
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "emu.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define CUDAEMU_ASAN 1
#else
#define CUDAEMU_ASAN 0
#endif

#if !defined(__x86_64__)
#error "tests/cudaemu: the fiber switch is written for x86-64 (System V); port cudaemu_switch"
#endif

namespace cudaemu {
std::vector<const void *> pointers_in(const void *bytes, size_t n); // runtime.cpp
void set_last_error(cudaError_t e);                                   // runtime.cpp

__thread ThreadView *cur_thread;
__thread BlockView *cur_block;
} // namespace cudaemu

// ---- the context switch -------------------------------------------------------------------------------
// cudaemu_switch(&save, to): saves the callee-saved registers, MXCSR and the x87 control word on the
// current stack, stores the stack pointer in *save, continues on stack `to` (made by this function or by
// fiber_stack_init). About ten instructions: fibers cost little more than a function call.
extern "C" void cudaemu_switch(void **save_sp, void *to_sp);
asm(R"(
    .text
    .globl cudaemu_switch
    .type cudaemu_switch, @function
cudaemu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cudaemu_switch, .-cudaemu_switch
)");

namespace cudaemu {

enum TState { T_READY, T_BAR, T_WARP, T_EXITED };
enum Order { FORWARD, REVERSE, RANDOM_ORDER };

struct ThreadState {
    ThreadView view;
    int linear, state;
    void *sp;      // saved stack pointer while suspended
    char *stack;   // its stack (from the worker's pool) once started, NULL before
    void *fake;    // AddressSanitizer's fake-stack handle across switches
    const char *file;
    int line;
    // the warp op it waits at
    WarpOp op;
    unsigned mask;
    uint64_t value, result;
    int arg, width;
    WarpCollectiveFn collective; // WARP_COLLECTIVE: what runs once all lanes are there
};

static const size_t STACK_BYTES = 128 << 10; // kernels need little; AddressSanitizer frames are larger

// One per OS thread that runs blocks: its fiber stacks, its thread states and the current block.
struct Worker {
    std::vector<ThreadState> th;
    std::vector<char *> free_stacks;
    std::vector<char *> all_stacks;
    BlockView block;
    ThreadState *running;
    void *sched_sp;
    const void *sched_stack_lo;
    size_t sched_stack_size;
    void *sched_fake;
    KernelTrampoline fn;
    void *closure;
    const char *kernel_name;
    Order order;
    std::mt19937_64 rng;
    Worker() : th(1024) {}
    ~Worker() {
        for (char *s : all_stacks) munmap(s - 4096, STACK_BYTES + 4096);
    }
    char *get_stack() {
        if (!free_stacks.empty()) {
            char *s = free_stacks.back();
            free_stacks.pop_back();
            return s;
        }
        // a guard page below each stack: an overflow faults instead of corrupting a neighbour
        char *m = (char *)mmap(nullptr, STACK_BYTES + 4096, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) fatal("cannot map a fiber stack");
        mprotect(m, 4096, PROT_NONE);
        all_stacks.push_back(m + 4096);
        return m + 4096;
    }
};
static thread_local Worker *worker;
static Worker *this_worker() {
    if (!worker) worker = new Worker(); // lives as long as its thread (pool threads never end)
    return worker;
}

// ---- the fiber side ----------------------------------------------------------------------------------

static inline void to_scheduler(Worker *w, ThreadState *t, bool exiting) {
#if CUDAEMU_ASAN
    __sanitizer_start_switch_fiber(exiting ? nullptr : &t->fake, w->sched_stack_lo, w->sched_stack_size);
#endif
    cudaemu_switch(&t->sp, w->sched_sp);
#if CUDAEMU_ASAN
    __sanitizer_finish_switch_fiber(t->fake, &w->sched_stack_lo, &w->sched_stack_size);
#endif
}

// First frame of every fiber; it never returns (the fiber ends by switching away for good), so it is
// left uninstrumented: nothing of it stays poisoned on a reused stack.
__attribute__((no_sanitize_address, noreturn)) static void fiber_entry() {
    Worker *w = worker;
    ThreadState *t = w->running;
#if CUDAEMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &w->sched_stack_lo, &w->sched_stack_size);
#endif
    w->fn(w->closure);
    t->state = T_EXITED;
    to_scheduler(w, t, true);
    __builtin_unreachable();
}

static void *fiber_stack_init(char *stack) {
    // what cudaemu_switch pops: MXCSR + x87 control word, r15..rbp, then the return address (the
    // entry); rsp at the entry is 8 mod 16, as after a call
    uintptr_t top = ((uintptr_t)stack + STACK_BYTES) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)(top - 72);
    uint32_t mx;
    uint16_t cw;
    asm volatile("stmxcsr %0" : "=m"(mx));
    asm volatile("fnstcw %0" : "=m"(cw));
    sp[0] = (uint64_t)mx | ((uint64_t)cw << 32);
    for (int i = 1; i <= 6; i++) sp[i] = 0;
    sp[7] = (uint64_t)(uintptr_t)&fiber_entry;
    sp[8] = 0;
    return sp;
}

// Called by a CUDA thread: waits for the block barrier.
void syncthreads(const char *file, int line) {
    Worker *w = worker;
    ThreadState *t = w->running;
    t->state = T_BAR, t->file = file, t->line = line;
    to_scheduler(w, t, false);
}

uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char *file, int line) {
    Worker *w = worker;
    ThreadState *t = w->running;
    t->state = T_WARP, t->file = file, t->line = line;
    t->op = op, t->mask = mask, t->value = value, t->arg = arg, t->width = width, t->collective = nullptr;
    to_scheduler(w, t, false);
    return t->result;
}

void warp_collective(WarpCollectiveFn fn, void *arg, const char *file, int line) {
    Worker *w = worker;
    ThreadState *t = w->running;
    t->state = T_WARP, t->file = file, t->line = line;
    t->op = WARP_COLLECTIVE, t->mask = 0xffffffffu, t->value = (uint64_t)(uintptr_t)arg, t->arg = 0, t->width = 32;
    t->collective = fn;
    to_scheduler(w, t, false);
}

// ---- the scheduler side -------------------------------------------------------------------------------

static const char *op_name(WarpOp op) {
    static const char *names[] = {"__shfl_sync", "__shfl_xor_sync", "__shfl_up_sync", "__shfl_down_sync",
                                  "__ballot_sync", "__any_sync", "__all_sync", "__syncwarp",
                                  "a warp-collective wmma operation"};
    return names[op];
}

static void run_fiber(Worker *w, ThreadState *t) {
    if (!t->stack) {
        t->stack = w->get_stack();
        t->sp = fiber_stack_init(t->stack);
    }
    w->running = t;
    cur_thread = &t->view;
#if CUDAEMU_ASAN
    __sanitizer_start_switch_fiber(&w->sched_fake, t->stack, STACK_BYTES);
#endif
    cudaemu_switch(&w->sched_sp, t->sp);
#if CUDAEMU_ASAN
    __sanitizer_finish_switch_fiber(w->sched_fake, nullptr, nullptr);
#endif
    if (t->state == T_EXITED) { // its stack is free for the next thread
        w->free_stacks.push_back(t->stack);
        t->stack = nullptr;
    }
}

static Order order() { // read at every launch: a test may switch it between runs
    const char *e = getenv("CUDAEMU_ORDER");
    if (!e || !*e || !strcmp(e, "random")) return RANDOM_ORDER;
    if (!strcmp(e, "forward")) return FORWARD;
    if (!strcmp(e, "reverse")) return REVERSE;
    fatal("CUDAEMU_ORDER=%s: use forward, reverse or random", e);
}
static uint64_t seed() {
    const char *e = getenv("CUDAEMU_SEED");
    return e ? strtoull(e, nullptr, 10) : 1;
}

static void where(char *buf, size_t n, Worker *w, const ThreadState *t) {
    const BlockView &b = w->block;
    snprintf(buf, n, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u)", w->kernel_name, b.idx.x, b.idx.y,
             b.idx.z, t->view.idx.x, t->view.idx.y, t->view.idx.z);
}

// Resolves the warps whose lanes all wait at one warp op; returns how many were released.
static int resolve_warps(Worker *w, int n) {
    int released = 0;
    char at[256];
    for (int base = 0; base < n; base += 32) {
        const int lanes = std::min(32, n - base);
        ThreadState *first = nullptr;
        for (int l = 0; l < lanes; l++)
            if (w->th[base + l].state == T_WARP) {
                first = &w->th[base + l];
                break;
            }
        if (!first) continue;
        // every lane named by the mask must be here, at the same call
        bool all_here = true;
        for (int l = 0; l < 32; l++) {
            if (!(first->mask >> l & 1u)) continue;
            if (l >= lanes) {
                where(at, sizeof at, w, first);
                fatal("%s: %s at %s:%d with mask 0x%08x names lane %d, which does not exist (the block has %d "
                      "threads: its last warp has %d lanes)", at, op_name(first->op), first->file, first->line,
                      first->mask, l, n, lanes);
            }
            ThreadState *o = &w->th[base + l];
            if (o->state == T_EXITED) {
                where(at, sizeof at, w, first);
                fatal("%s: %s at %s:%d with mask 0x%08x names lane %d, which has already returned", at,
                      op_name(first->op), first->file, first->line, first->mask, l);
            }
            if (o->state != T_WARP) {
                all_here = false;
                continue;
            }
            if (o->mask != first->mask || o->op != first->op || o->line != first->line ||
                strcmp(o->file, first->file) != 0) {
                where(at, sizeof at, w, o);
                fatal("%s: lanes of one warp at different warp ops: lane %d at %s (%s:%d, mask 0x%08x), lane %d at %s "
                      "(%s:%d, mask 0x%08x)", at, l, op_name(o->op), o->file, o->line, o->mask,
                      first->linear - base, op_name(first->op), first->file, first->line, first->mask);
            }
        }
        if (!all_here) continue; // some lanes are still running towards it, or wait at a barrier (below)
        for (int l = 0; l < lanes; l++) {
            ThreadState *t = &w->th[base + l];
            if (t->state != T_WARP) continue;
            if (!(first->mask >> l & 1u)) {
                where(at, sizeof at, w, t);
                fatal("%s: %s at %s:%d by lane %d, which is not in the mask 0x%08x of its warp", at,
                      op_name(t->op), t->file, t->line, l, first->mask);
            }
        }
        if (first->op == WARP_COLLECTIVE) { // every lane is here (the mask is full): run it once
            void *args[32];
            for (int l = 0; l < lanes; l++) args[l] = (void *)(uintptr_t)w->th[base + l].value;
            if (first->collective) first->collective(args, lanes);
            for (int l = 0; l < lanes; l++) w->th[base + l].state = T_READY;
            released++;
            continue;
        }
        unsigned ballot = 0;
        for (int l = 0; l < lanes; l++)
            if ((first->mask >> l & 1u) && w->th[base + l].value) ballot |= 1u << l;
        for (int l = 0; l < lanes; l++) {
            ThreadState *t = &w->th[base + l];
            if (!(first->mask >> l & 1u)) continue;
            const int width = t->width;
            if (t->op <= WARP_SHFL_DOWN && (width <= 0 || width > 32 || (width & (width - 1)))) {
                where(at, sizeof at, w, t);
                fatal("%s: %s at %s:%d with width %d (a power of two <= 32)", at, op_name(t->op), t->file, t->line,
                      width);
            }
            const int seg = l & ~(width - 1);
            int src = l;
            switch (t->op) {
            case WARP_SHFL_IDX: src = seg + (t->arg & (width - 1)); break;
            case WARP_SHFL_XOR: src = l ^ t->arg; break;
            case WARP_SHFL_UP: src = l - t->arg >= seg ? l - t->arg : l; break;
            case WARP_SHFL_DOWN: src = l + t->arg < seg + width ? l + t->arg : l; break;
            default: break;
            }
            switch (t->op) {
            case WARP_BALLOT: t->result = ballot; break;
            case WARP_ANY: t->result = ballot != 0; break;
            case WARP_ALL: t->result = ballot == (first->mask & (lanes == 32 ? ~0u : ((1u << lanes) - 1))); break;
            default:
                if (src < 0 || src >= 32 || !(first->mask >> src & 1u)) {
                    where(at, sizeof at, w, t);
                    fatal("%s: %s at %s:%d: lane %d reads lane %d, which is not in the mask 0x%08x (undefined value)",
                          at, op_name(t->op), t->file, t->line, l, src, first->mask);
                }
                t->result = w->th[base + src].value;
            }
        }
        for (int l = 0; l < lanes; l++)
            if (first->mask >> l & 1u) w->th[base + l].state = T_READY;
        released++;
    }
    return released;
}

// Every thread of the block waits at the barrier, or it is a finding.
static void resolve_barrier(Worker *w, int n) {
    int at_bar = 0, exited = 0, first = -1, first_exit = -1;
    char at[256];
    for (int i = 0; i < n; i++) {
        const ThreadState *t = &w->th[i];
        if (t->state == T_BAR) {
            at_bar++;
            if (first < 0) first = i;
        } else if (t->state == T_EXITED) {
            exited++;
            if (first_exit < 0) first_exit = i;
        } else if (t->state == T_WARP) {
            where(at, sizeof at, w, t);
            const ThreadState *b = first >= 0 ? &w->th[first] : nullptr;
            fatal("%s: waits at %s (%s:%d) while other lanes of its warp never arrive (divergent warp op%s%s%s)", at,
                  op_name(t->op), t->file, t->line, b ? "; thread " : "", b ? "waits at __syncthreads " : "",
                  b ? b->file : "");
        }
    }
    if (!at_bar) return;
    const ThreadState *f = &w->th[first];
    if (exited) {
        where(at, sizeof at, w, f);
        fatal("%s: __syncthreads at %s:%d is reached by %d threads of the block while %d returned without it "
              "(first: thread %d): a barrier in divergent code", at, f->file, f->line, at_bar, exited, first_exit);
    }
    for (int i = 0; i < n; i++) {
        const ThreadState *t = &w->th[i];
        if (t->line != f->line || strcmp(t->file, f->file) != 0) {
            where(at, sizeof at, w, t);
            fatal("%s: waits at __syncthreads %s:%d while thread %d waits at %s:%d: threads of one block at "
                  "different barriers", at, t->file, t->line, first, f->file, f->line);
        }
    }
    for (int i = 0; i < n; i++) w->th[i].state = T_READY;
}

static void run_block(Worker *w, uint3 bid, dim3 bdim, dim3 gdim) {
    const int n = (int)(bdim.x * bdim.y * bdim.z);
    w->block.idx = bid, w->block.dim = bdim, w->block.grid = gdim;
    cur_block = &w->block;
    for (int i = 0; i < n; i++) {
        ThreadState *t = &w->th[i];
        t->linear = i, t->state = T_READY, t->stack = nullptr, t->fake = nullptr;
        t->view.idx = uint3{i % bdim.x, (i / bdim.x) % bdim.y, i / (bdim.x * bdim.y)};
    }
    std::vector<int> perm(n);
    for (int i = 0; i < n; i++) perm[i] = w->order == REVERSE ? n - 1 - i : i;
    for (;;) {
        if (w->order == RANDOM_ORDER) std::shuffle(perm.begin(), perm.end(), w->rng);
        int live = 0;
        for (int i : perm) {
            ThreadState *t = &w->th[i];
            if (t->state == T_READY) run_fiber(w, t);
            live += t->state != T_EXITED;
        }
        if (!live) break;
        if (!resolve_warps(w, n)) resolve_barrier(w, n);
    }
    cur_thread = nullptr;
    cur_block = nullptr;
}

// ---- workers --------------------------------------------------------------------------------------------

struct Grid {
    const char *name;
    dim3 grid, block;
    KernelTrampoline fn;
    void *closure;
    std::vector<uint32_t> blocks; // linear block ids in execution order
    std::atomic<size_t> next;
    std::atomic<int> busy;
    uint64_t launch_no;
    Order order;
};

static void work_on(Grid *g) {
    Worker *w = this_worker();
    w->fn = g->fn, w->closure = g->closure, w->kernel_name = g->name, w->order = g->order;
    w->rng.seed(seed() * 0x9e3779b97f4a7c15ull + g->launch_no);
    for (;;) {
        size_t i = g->next.fetch_add(1);
        if (i >= g->blocks.size()) break;
        const uint32_t b = g->blocks[i];
        const uint3 bid{b % g->grid.x, (b / g->grid.x) % g->grid.y, b / (g->grid.x * g->grid.y)};
        run_block(w, bid, g->block, g->grid);
    }
}

// A fixed pool: the thread that runs the stream's work takes part; the others wait for grids.
// Never destroyed: pool threads wait on them until the process ends (a static condition variable would
// be destroyed at exit under its waiters, which blocks exit).
static std::mutex &pool_mu = *new std::mutex;
static std::condition_variable &pool_cv = *new std::condition_variable, &pool_done = *new std::condition_variable;
static Grid *pool_grid;
static uint64_t pool_gen;
static int pool_size = -1;

static void pool_main() {
    uint64_t seen = 0;
    for (;;) {
        Grid *g;
        {
            std::unique_lock<std::mutex> lk(pool_mu);
            pool_cv.wait(lk, [&] { return pool_gen != seen; });
            seen = pool_gen;
            g = pool_grid;
            if (!g) continue; // woke after that grid was done
            g->busy++;
        }
        work_on(g);
        {
            std::lock_guard<std::mutex> lk(pool_mu);
            if (--g->busy == 0) pool_done.notify_all();
        }
    }
}

static int workers() {
    if (pool_size < 0) {
        const char *e = getenv("CUDAEMU_THREADS");
        long n = e ? atol(e) : sysconf(_SC_NPROCESSORS_ONLN);
        pool_size = (int)std::max(1L, std::min(n, 64L));
        for (int i = 1; i < pool_size; i++) std::thread(pool_main).detach();
    }
    return pool_size;
}

static void run_grid(Grid *g) {
    const size_t nb = (size_t)g->grid.x * g->grid.y * g->grid.z;
    g->order = order();
    g->blocks.resize(nb);
    for (size_t i = 0; i < nb; i++) g->blocks[i] = (uint32_t)(g->order == REVERSE ? nb - 1 - i : i);
    if (g->order == RANDOM_ORDER) {
        std::mt19937_64 r(seed() + 7919 * g->launch_no);
        std::shuffle(g->blocks.begin(), g->blocks.end(), r);
    }
    g->next = 0;
    g->busy = 1;
    if (workers() > 1 && nb > 1) {
        std::lock_guard<std::mutex> lk(pool_mu);
        pool_grid = g;
        pool_gen++;
        pool_cv.notify_all();
    }
    work_on(g);
    std::unique_lock<std::mutex> lk(pool_mu);
    g->busy--;
    pool_done.wait(lk, [&] { return g->busy == 0; });
    pool_grid = nullptr;
}

// ---- launch -----------------------------------------------------------------------------------------------

static const char *config_error(dim3 grid, dim3 block, size_t smem) {
    const unsigned long long nt = (unsigned long long)block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z) return "an empty grid (a dimension of 0)";
    if (!nt) return "an empty block (a dimension of 0)";
    if (nt > 1024) return "more than 1024 threads in a block";
    if (block.x > 1024 || block.y > 1024 || block.z > 64) return "a block dimension over its limit (1024, 1024, 64)";
    if (grid.x > 2147483647u) return "grid x over 2^31 - 1";
    if (grid.y > 65535 || grid.z > 65535) return "grid y or z over 65535";
    if (smem > (227u << 10)) return "more than 227 KB of dynamic shared memory";
    if (smem > (48u << 10))
        return "more than 48 KB of dynamic shared memory without the cudaFuncSetAttribute opt-in (not modelled: no "
               "kernel of the project uses dynamic shared memory)";
    return nullptr;
}

void launch(const char *name, const char *file, int line, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            KernelTrampoline fn, void *closure, void (*destroy)(void *), const void *arg_bytes, size_t arg_size) {
    static std::atomic<uint64_t> launches{0};
    record_kernel(name);
    if (const char *why = config_error(grid, block, smem)) {
        note("launch of %s at %s:%d refused: grid (%u,%u,%u), block (%u,%u,%u), %zu bytes of shared memory: %s", name,
             file, line, grid.x, grid.y, grid.z, block.x, block.y, block.z, smem, why);
        set_last_error(cudaErrorInvalidConfiguration);
        destroy(closure);
        return;
    }
    // shared: a captured launch runs again at every launch of its graph; the arguments live as long as
    // the last graph (or queue) that holds the launch
    std::shared_ptr<Grid> g(new Grid(), [destroy](Grid *p) {
        destroy(p->closure);
        delete p;
    });
    g->name = name, g->grid = grid, g->block = block, g->fn = fn, g->closure = closure;
    g->launch_no = launches++;
    enqueue(stream, name, [g]() { run_grid(g.get()); }, pointers_in(arg_bytes, arg_size));
}

} // namespace cudaemu
