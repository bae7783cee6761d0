// The CUDA runtime stand-in of the execution layer: device memory, page-locked host memory, streams as
// queues, events, and a scheduler that runs queued work in an order of its choosing among the orders
// the recorded dependencies allow.
//
// CUDAEMU_STREAMS picks that order (default: delay):
//   eager   every operation runs when it is enqueued (one legal order; what a lightly loaded GPU does)
//   random  when the host must wait for something, the scheduler runs ready work of ANY stream, picked
//           at random (CUDAEMU_SEED), until what the host waits for is done
//   delay   each stream is held back as long as it may: only what the host waits for and what that
//           depends on runs. A missing cudaStreamWaitEvent then shows as stale data.
//   rush    the opposite: before the stream the host waits for makes a step, every other stream runs all
//           it can. A missing wait of the kind "this copy must not start before that zero-fill" shows
//           here (delay cannot see it: the waited-for stream always runs first there).
// Device memory comes from malloc with the exact size (AddressSanitizer sees every overrun) and starts
// as NaN bytes (0xff) as a reminder that cudaMalloc does not clear. A free while queued work still
// refers to the buffer is a finding, as is a copy between the wrong kinds of memory.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "emu.h"

namespace cudaemu {

// ---- diagnostics ------------------------------------------------------------------------------------

void fatal(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cudaemu: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    fflush(stdout);
    _exit(3); // no atexit handlers: the state is broken, and a test must fail here
}

void note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cudaemu note: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

float bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) u |= 0x00400000u; // NaN: stays quiet
    else u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

// One lock for the whole runtime: host threads (the trainer, loader threads allocating page-locked
// buffers) call in concurrently; queued work runs under it.
static std::recursive_mutex big_lock;
void lock() { big_lock.lock(); }
void unlock() { big_lock.unlock(); }

// ---- memory -----------------------------------------------------------------------------------------

struct Alloc {
    size_t size;
    MemKind kind;
};
static std::map<uintptr_t, Alloc> allocs; // by base address
static size_t device_bytes_in_use;

static size_t total_device_bytes() {
    const char *e = getenv("CUDAEMU_DEVICE_MEM_GB");
    double gb = e ? atof(e) : 16.0;
    return (size_t)(gb * (1u << 30));
}

bool mem_find(const void *p, const void **base, size_t *size, MemKind *kind) {
    Guard g;
    uintptr_t a = (uintptr_t)p;
    auto it = allocs.upper_bound(a);
    if (it == allocs.begin()) return false;
    --it;
    if (a >= it->first + (it->second.size ? it->second.size : 1)) return false;
    if (base) *base = (const void *)it->first;
    if (size) *size = it->second.size;
    if (kind) *kind = it->second.kind;
    return true;
}

MemKind mem_kind(const void *p, size_t bytes) {
    const void *b;
    size_t n;
    MemKind k;
    if (!mem_find(p, &b, &n, &k)) return MEM_NONE;
    if ((uintptr_t)p + bytes > (uintptr_t)b + n) return MEM_NONE;
    return k;
}

// ---- streams and the scheduler ----------------------------------------------------------------------

struct Op {
    uint64_t seq;                      // global enqueue order
    std::string what;
    std::function<void()> run;         // empty for markers (event records) and waits
    std::vector<const void *> touches; // allocations it uses (checked by frees)
    struct Op *wait_for;               // a cudaStreamWaitEvent: done only after this op is done
    bool done;
    double t_done;                     // when it ran (event timing)
};

// A node of a graph: what a captured enqueue would have run (re-runnable: every launch of the exec runs
// it again), after the nodes `deps` (indices into the same graph).
struct GNode {
    std::string what;
    std::function<void()> run;
    std::vector<const void *> touches;
    std::vector<int> deps;
    const void *host_src = nullptr; // a copy from page-locked host memory: what it reads when it runs
    size_t host_bytes = 0;
};
// A stream capture in progress: begun on `origin`, joined by the streams in `members` (origin first)
// through cudaStreamWaitEvent on events recorded inside it.
struct Capture {
    std::vector<GNode> nodes;
    struct ::CUstream_st *origin;
    cudaStreamCaptureMode mode;
    std::thread::id thread;
    std::vector<struct ::CUstream_st *> members;
    bool ended;
};

} // namespace cudaemu

struct CUstream_st {
    std::deque<cudaemu::Op *> q; // pending ops, in order
    cudaemu::Op *last;           // the last op enqueued (done or not), for waits and syncs
    bool destroyed;
    cudaemu::Capture *cap;       // the capture this stream takes part in (NULL: none)
    std::vector<int> tail;       // while capturing: the nodes the next captured work depends on
};
struct CUevent_st {
    cudaemu::Op *marker; // the record this event stands for now (NULL: never recorded)
    unsigned flags;
    cudaemu::Capture *cap;  // recorded inside this capture (then marker is NULL) ...
    std::vector<int> nodes; // ... after these nodes
};
struct CUgraph_st {
    std::vector<cudaemu::GNode> nodes;
};
struct CUgraphExec_st {
    std::vector<cudaemu::GNode> nodes;
};

namespace cudaemu {

enum Policy { EAGER, RANDOM, DELAY, RUSH };
static Policy policy() { // read at every use: a test may switch it (e.g. in a forked child)
    const char *e = getenv("CUDAEMU_STREAMS");
    if (!e || !*e || !strcmp(e, "delay")) return DELAY;
    if (!strcmp(e, "eager")) return EAGER;
    if (!strcmp(e, "random")) return RANDOM;
    if (!strcmp(e, "rush")) return RUSH;
    fatal("CUDAEMU_STREAMS=%s: use eager, random, delay or rush", e);
}
static std::mt19937_64 &sched_rng() {
    static std::mt19937_64 r(getenv("CUDAEMU_SEED") ? strtoull(getenv("CUDAEMU_SEED"), NULL, 10) : 1);
    return r;
}

static CUstream_st legacy_stream; // stream 0 (NULL): the project's streams are non-blocking, so it is
                                  // modelled as one more independent stream
static std::vector<CUstream_st *> streams{&legacy_stream};
static uint64_t next_seq = 1;
static std::vector<Op *> finished; // kept so that events and waits may point at them (freed at exit)
static thread_local const char *running_op;
static thread_local int depth_in_op;

static CUstream_st *S(cudaStream_t s) { return s ? s : &legacy_stream; }
const char *current_op() { return running_op; }

static bool ready(const Op *op) { return !op->wait_for || op->wait_for->done; }

static double now_ms() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static void run_head(CUstream_st *st) {
    Op *op = st->q.front();
    st->q.pop_front();
    if (op->run) {
        const char *prev = running_op;
        running_op = op->what.c_str();
        depth_in_op++;
        op->run();
        depth_in_op--;
        running_op = prev;
        op->run = nullptr; // release captured state (closures may hold copies of host data)
    }
    op->done = true;
    op->t_done = now_ms();
    op->touches.clear();
    finished.push_back(op);
}

// Runs ops until `target` is done: in delay order only what it needs, in random order anything ready, in
// rush order everything else that is ready before each step of the target's stream.
static void complete(Op *target) {
    while (!target->done) {
        if (policy() == RANDOM) {
            std::vector<CUstream_st *> cand;
            for (CUstream_st *st : streams)
                if (!st->q.empty() && ready(st->q.front())) cand.push_back(st);
            if (cand.empty()) fatal("scheduler: no stream can make progress (a wait on an event that never completes)");
            run_head(cand[sched_rng()() % cand.size()]);
            continue;
        }
        if (policy() == RUSH) { // the other streams first, as far as they can go
            bool ran = true;
            while (ran) {
                ran = false;
                for (CUstream_st *st : streams)
                    if (!st->q.empty() && ready(st->q.front()) &&
                        std::find(st->q.begin(), st->q.end(), target) == st->q.end()) {
                        run_head(st);
                        ran = true;
                    }
            }
        }
        // delay (and rush, for the target's own stream): run its head, first completing what it waits for
        CUstream_st *owner = nullptr;
        for (CUstream_st *st : streams)
            for (Op *o : st->q)
                if (o == target) owner = st;
        if (!owner) fatal("scheduler: an op is neither done nor queued (internal error)");
        Op *h = owner->q.front();
        if (!ready(h)) complete(h->wait_for);
        else run_head(owner);
    }
}

static void complete_all() {
    for (CUstream_st *st : streams)
        if (st->last) complete(st->last);
}

// ---- capture: what CUDA refuses while a stream capture is in progress ----------------------------------

static std::vector<Capture *> active_captures;
static const char *mode_name(cudaStreamCaptureMode m) {
    return m == cudaStreamCaptureModeGlobal ? "global" : m == cudaStreamCaptureModeThreadLocal ? "thread-local" : "relaxed";
}
// A "potentially unsafe" call (one that may synchronise implicitly: cudaMalloc, cudaFree, the synchronous
// copies...): CUDA refuses it (cudaErrorStreamCaptureUnsupported, and invalidates the capture) on any thread
// during a global-mode capture, on the capturing thread during a thread-local one.
static void unsafe_call(const char *api) {
    for (Capture *c : active_captures)
        if (c->mode == cudaStreamCaptureModeGlobal ||
            (c->mode == cudaStreamCaptureModeThreadLocal && c->thread == std::this_thread::get_id()))
            fatal("%s while a stream capture (%s mode) is in progress: CUDA refuses it "
                  "(cudaErrorStreamCaptureUnsupported) and invalidates the capture; do it before "
                  "cudaStreamBeginCapture or after cudaStreamEndCapture",
                  api, mode_name(c->mode));
}
bool capturing(cudaStream_t s) {
    Guard g;
    return s && s->cap;
}

static Op *push(CUstream_st *st, const char *what, std::function<void()> run, std::vector<const void *> touches,
                Op *wait_for) {
    if (st->destroyed) fatal("%s enqueued on a destroyed stream", what);
    if (st->cap) { // recorded into the capture's graph, after the stream's current tail
        Capture *c = st->cap;
        c->nodes.push_back(GNode{what, std::move(run), std::move(touches), st->tail});
        st->tail = {(int)c->nodes.size() - 1};
        return nullptr;
    }
    if (st == &legacy_stream)
        for (Capture *c : active_captures)
            if (c->mode != cudaStreamCaptureModeRelaxed)
                fatal("%s on the legacy (NULL) stream while a stream capture is in progress: CUDA refuses it "
                      "(cudaErrorStreamCaptureImplicit); use the captured stream",
                      what);
    Op *op = new Op{next_seq++, what, std::move(run), std::move(touches), wait_for, false, 0};
    st->q.push_back(op);
    st->last = op;
    if (policy() == EAGER && depth_in_op == 0) complete(op);
    return op;
}

void enqueue(cudaStream_t s, const char *what, std::function<void()> run, std::vector<const void *> touches) {
    Guard g;
    // only the touches that are live allocations matter to frees
    std::vector<const void *> t;
    for (const void *p : touches)
        if (p && mem_find(p, nullptr, nullptr, nullptr)) t.push_back(p);
    push(S(s), what, std::move(run), std::move(t), nullptr);
}

void complete_stream(cudaStream_t s) {
    Guard g;
    CUstream_st *st = S(s);
    if (st->last) complete(st->last);
}

// A free of [base, base+size) while queued work refers into it.
static void check_no_pending_use(const void *base, size_t size, const char *api) {
    for (CUstream_st *st : streams)
        for (Op *o : st->q)
            for (const void *p : o->touches)
                if ((uintptr_t)p >= (uintptr_t)base && (uintptr_t)p < (uintptr_t)base + (size ? size : 1))
                    fatal("%s(%p) while queued work still uses the buffer: \"%s\" (enqueued #%llu) has not run; "
                          "synchronize the stream (or record an event and wait for it) before freeing",
                          api, base, o->what.c_str(), (unsigned long long)o->seq);
}

// Pointers found in a kernel's argument bytes (a conservative scan: any aligned word that points into a
// live allocation, also inside functor structs).
std::vector<const void *> pointers_in(const void *bytes, size_t n) {
    std::vector<const void *> out;
    Guard g;
    for (size_t i = 0; i + sizeof(void *) <= n; i += sizeof(void *)) {
        const void *p;
        memcpy(&p, (const char *)bytes + i, sizeof p);
        if (p && mem_find(p, nullptr, nullptr, nullptr)) out.push_back(p);
    }
    return out;
}

// ---- errors -----------------------------------------------------------------------------------------

static thread_local cudaError_t last_error = cudaSuccess;
void set_last_error(cudaError_t e) { last_error = e; }
static cudaError_t ret(cudaError_t e) {
    if (e != cudaSuccess) last_error = e;
    return e;
}

// ---- device -----------------------------------------------------------------------------------------

static int device_count() {
    const char *e = getenv("CUDAEMU_DEVICES");
    return e ? atoi(e) : 1;
}

static void write_coverage();
static void at_exit() {
    write_coverage();
    for (Op *o : finished) delete o;
    finished.clear();
}
static void init_once() {
    static bool done;
    if (done) return;
    done = true;
    atexit(at_exit);
}

} // namespace cudaemu

using namespace cudaemu;

cudaError_t cudaGetDeviceCount(int *count) {
    Guard g;
    init_once();
    // CUDAEMU_DEVICE_ERROR=<code> makes the call fail as a driver/runtime mismatch would (tests of
    // DINO_REQUIRE_GPU); the count is then 0
    const char *e = getenv("CUDAEMU_DEVICE_ERROR");
    if (e && *e) {
        *count = 0;
        return ret((cudaError_t)atoi(e));
    }
    *count = device_count();
    return cudaSuccess;
}

static int current_device;
cudaError_t cudaSetDevice(int device) {
    if (device < 0 || device >= device_count()) return ret(cudaErrorInvalidDevice);
    current_device = device;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *device) {
    *device = current_device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device) {
    if (device < 0 || device >= device_count()) return ret(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "cudaemu (CPU execution layer)");
    p->totalGlobalMem = total_device_bytes();
    p->sharedMemPerBlock = 48 << 10;
    p->sharedMemPerBlockOptin = 227 << 10;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = 1024, p->maxThreadsDim[1] = 1024, p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 2147483647, p->maxGridSize[1] = 65535, p->maxGridSize[2] = 65535;
    p->major = 9, p->minor = 0; // limits of sm_90
    p->multiProcessorCount = 2;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
    Guard g;
    if (!active_captures.empty())
        fatal("cudaDeviceSynchronize while a stream capture is in progress: CUDA refuses it "
              "(cudaErrorStreamCaptureUnsupported); end the capture first");
    complete_all();
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return last_error; }

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoKernelImageForDevice: return "cudaErrorNoKernelImageForDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "cudaErrorUnknown";
    }
}
const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    default: return cudaGetErrorName(e);
    }
}

// ---- memory API -------------------------------------------------------------------------------------

static void *alloc_kind(size_t bytes, MemKind kind, int fill) {
    void *p = nullptr;
    // exact size (AddressSanitizer poisons from the end); 256-byte aligned as cudaMalloc is
    if (posix_memalign(&p, 256, bytes ? bytes : 1)) return nullptr;
    memset(p, fill, bytes);
    allocs[(uintptr_t)p] = Alloc{bytes, kind};
    return p;
}

cudaError_t cudaMalloc(void **p, size_t bytes) {
    Guard g;
    init_once();
    unsafe_call("cudaMalloc");
    *p = nullptr;
    if (device_bytes_in_use + bytes > total_device_bytes()) return ret(cudaErrorMemoryAllocation);
    *p = alloc_kind(bytes, MEM_DEVICE, 0xff); // NaN floats: uninitialised memory must not look like data
    if (!*p) return ret(cudaErrorMemoryAllocation);
    device_bytes_in_use += bytes;
    return cudaSuccess;
}

static cudaError_t free_kind(void *p, MemKind kind, const char *api) {
    Guard g;
    if (!p) return cudaSuccess;
    auto it = allocs.find((uintptr_t)p);
    if (it == allocs.end() || it->second.kind != kind)
        fatal("%s(%p): not the start of a live %s allocation (double free, or the wrong free function)", api, p,
              kind == MEM_DEVICE ? "device" : "page-locked host");
    check_no_pending_use(p, it->second.size, api);
    if (kind == MEM_DEVICE) device_bytes_in_use -= it->second.size;
    allocs.erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaFree(void *p) {
    Guard g;
    unsafe_call("cudaFree");
    return free_kind(p, MEM_DEVICE, "cudaFree");
}

cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned flags) {
    Guard g;
    init_once();
    unsafe_call("cudaHostAlloc");
    *p = alloc_kind(bytes, MEM_PINNED, 0xff);
    return *p ? cudaSuccess : ret(cudaErrorMemoryAllocation);
}
cudaError_t cudaMallocHost(void **p, size_t bytes) { return cudaHostAlloc(p, bytes, 0); }
cudaError_t cudaFreeHost(void *p) {
    Guard g;
    unsafe_call("cudaFreeHost");
    return free_kind(p, MEM_PINNED, "cudaFreeHost");
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    Guard g;
    *total_bytes = total_device_bytes();
    *free_bytes = *total_bytes - device_bytes_in_use;
    return cudaSuccess;
}

// Where a copy's end points are, checked against `kind` and the allocation extents.
static void check_copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, const char *api) {
    MemKind kd = mem_kind(dst, bytes), ks = mem_kind(src, bytes);
    bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind == cudaMemcpyDefault) return;
    if (dst_dev && kd != MEM_DEVICE)
        fatal("%s: destination %p (%zu bytes) is not inside one device allocation (%s)", api, dst, bytes,
              mem_find(dst, nullptr, nullptr, nullptr) ? "runs past the end of its allocation" : "not device memory");
    if (src_dev && ks != MEM_DEVICE)
        fatal("%s: source %p (%zu bytes) is not inside one device allocation (%s)", api, src, bytes,
              mem_find(src, nullptr, nullptr, nullptr) ? "runs past the end of its allocation" : "not device memory");
    if (!dst_dev && kd == MEM_DEVICE) fatal("%s: destination %p is device memory but the kind says host", api, dst);
    if (!src_dev && ks == MEM_DEVICE) fatal("%s: source %p is device memory but the kind says host", api, src);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
    Guard g;
    if (!bytes) return cudaSuccess;
    check_copy(dst, src, bytes, kind, "cudaMemcpyAsync");
    const bool pinned_src = mem_kind(src, bytes) == MEM_PINNED, pinned_dst = mem_kind(dst, bytes) == MEM_PINNED;
    if (S(s)->cap && ((kind == cudaMemcpyHostToDevice && !pinned_src) || (kind == cudaMemcpyDeviceToHost && !pinned_dst)))
        fatal("cudaMemcpyAsync %s pageable host memory %p (%zu bytes) on a capturing stream: CUDA refuses it "
              "(cudaErrorStreamCaptureUnsupported: a pageable copy is synchronous); copy through page-locked "
              "memory (cudaHostAlloc), which the graph then reads or writes each time it runs",
              kind == cudaMemcpyHostToDevice ? "from" : "to", kind == cudaMemcpyHostToDevice ? src : (const void *)dst,
              bytes);
    if (kind == cudaMemcpyHostToDevice && !pinned_src) {
        // pageable source: CUDA stages it before returning, so the caller may reuse it at once
        std::vector<char> staged((const char *)src, (const char *)src + bytes);
        push(S(s), "cudaMemcpyAsync (pageable host to device)",
             [dst, staged]() { memcpy(dst, staged.data(), staged.size()); }, {dst}, nullptr);
        return cudaSuccess;
    }
    // page-locked or device memory is read when the copy runs (DMA): a host write before then races
    push(S(s), "cudaMemcpyAsync", [dst, src, bytes]() { memmove(dst, src, bytes); }, {dst, src}, nullptr);
    if (S(s)->cap && kind == cudaMemcpyHostToDevice) // a graph's node: each launch reads the host memory again
        S(s)->cap->nodes.back().host_src = src, S(s)->cap->nodes.back().host_bytes = bytes;
    if (kind == cudaMemcpyDeviceToHost && !pinned_dst) complete(S(s)->last); // pageable: returns when done
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    Guard g;
    unsafe_call("cudaMemcpy (synchronous)");
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, 0);
    if (e == cudaSuccess) complete_all(); // the legacy stream's copy waits for all earlier work here
    return e;
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t s) {
    Guard g;
    if (!bytes) return cudaSuccess;
    if (mem_kind(p, bytes) != MEM_DEVICE)
        fatal("cudaMemsetAsync: %p (%zu bytes) is not inside one device allocation", p, bytes);
    push(S(s), "cudaMemsetAsync", [p, value, bytes]() { memset(p, value, bytes); }, {p}, nullptr);
    return cudaSuccess;
}
cudaError_t cudaMemset(void *p, int value, size_t bytes) {
    Guard g;
    unsafe_call("cudaMemset (synchronous)");
    cudaError_t e = cudaMemsetAsync(p, value, bytes, 0);
    if (e == cudaSuccess) complete_all();
    return e;
}

// ---- streams and events API -------------------------------------------------------------------------

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    Guard g;
    init_once();
    CUstream_st *st = new CUstream_st();
    streams.push_back(st);
    *s = st;
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t s) {
    Guard g;
    if (!s) return ret(cudaErrorInvalidResourceHandle);
    if (s->cap) fatal("cudaStreamDestroy of a stream that is capturing: end the capture first");
    // CUDA lets queued work finish after the call returns: run it now
    if (s->last) complete(s->last);
    for (size_t i = 0; i < streams.size(); i++)
        if (streams[i] == s) streams.erase(streams.begin() + (long)i);
    s->destroyed = true; // kept allocated: events may still point at its ops
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    Guard g;
    CUstream_st *st = S(s);
    if (st->cap)
        fatal("cudaStreamSynchronize on a stream that is capturing: CUDA refuses it "
              "(cudaErrorStreamCaptureUnsupported) and invalidates the capture; the host cannot wait for work "
              "that has only been recorded: end the capture, launch the graph, then synchronise");
    if (st->last) complete(st->last);
    return cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t s) {
    Guard g;
    CUstream_st *st = S(s);
    if (st->cap) fatal("cudaStreamQuery on a stream that is capturing: CUDA refuses it (cudaErrorStreamCaptureUnsupported)");
    if (st->last && !st->last->done) {
        complete(st->last); // the host polls: let the device make progress
    }
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) {
    *e = new CUevent_st{nullptr, flags, nullptr, {}};
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    Guard g;
    if (!e) return ret(cudaErrorInvalidResourceHandle);
    CUstream_st *st = S(s);
    if (st->cap) { // an event inside the capture: waits on it become edges of the graph
        e->cap = st->cap;
        e->nodes = st->tail;
        e->marker = nullptr;
        return cudaSuccess;
    }
    e->cap = nullptr;
    e->nodes.clear();
    e->marker = push(st, "cudaEventRecord", nullptr, {}, nullptr);
    return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags) {
    Guard g;
    if (!e) return ret(cudaErrorInvalidResourceHandle);
    CUstream_st *st = S(s);
    if (e->cap) { // recorded inside a capture: the waiting stream joins it (CUDA follows event edges)
        Capture *c = e->cap;
        if (c->ended)
            fatal("cudaStreamWaitEvent on an event last recorded inside a capture that has ended: it stands "
                  "for graph nodes, not for work on a stream; record it again outside the capture");
        if (!st->cap) {
            if (st == &legacy_stream) fatal("cudaStreamWaitEvent: the legacy stream cannot join a capture");
            st->cap = c;
            c->members.push_back(st);
            st->tail = e->nodes;
        } else if (st->cap == c) {
            for (int n : e->nodes)
                if (std::find(st->tail.begin(), st->tail.end(), n) == st->tail.end()) st->tail.push_back(n);
        } else {
            fatal("cudaStreamWaitEvent would merge two separate stream captures (cudaErrorStreamCaptureMerge)");
        }
        return cudaSuccess;
    }
    if (st->cap && e->marker)
        fatal("cudaStreamWaitEvent: a capturing stream waits on an event recorded outside the capture: CUDA "
              "refuses it (cudaErrorStreamCaptureIsolation: a dependency across the capture boundary); wait "
              "before cudaStreamBeginCapture");
    // waits for the record made most recently before this call; never recorded: nothing to wait for
    if (e->marker) push(S(s), "cudaStreamWaitEvent", nullptr, {}, e->marker);
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    Guard g;
    if (e && e->cap && !e->cap->ended)
        fatal("cudaEventSynchronize on an event recorded inside a capture in progress: CUDA refuses it "
              "(cudaErrorStreamCaptureUnsupported)");
    if (e && e->marker) complete(e->marker);
    return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t e) {
    Guard g;
    if (e && e->cap && !e->cap->ended)
        fatal("cudaEventQuery on an event recorded inside a capture in progress: CUDA refuses it "
              "(cudaErrorStreamCaptureUnsupported)");
    if (e && e->marker && !e->marker->done) complete(e->marker); // polled by the host: progress
    return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    Guard g;
    if (!a || !b || !a->marker || !b->marker || !a->marker->done || !b->marker->done ||
        (a->flags & cudaEventDisableTiming) || (b->flags & cudaEventDisableTiming))
        return ret(cudaErrorInvalidResourceHandle);
    *ms = (float)(b->marker->t_done - a->marker->t_done);
    return cudaSuccess;
}

// ---- graphs -----------------------------------------------------------------------------------------
// Capture records each enqueue on a capturing stream as a node (a kernel with its arguments as they were
// at the launch, a copy, a memset, a cuBLAS call) after the stream's tail; events recorded inside the
// capture carry node sets, and a stream that waits on one joins the capture. cudaStreamEndCapture on the
// origin requires every joined stream to have been joined back (its last nodes must precede the origin's).
// A launched exec is ONE op on its stream; inside it the nodes run in an order the dependencies allow,
// picked by CUDAEMU_STREAMS: eager = capture order, random = a random ready node, delay and rush = the
// most recently captured ready node first (so a missing event edge between captured streams shows).

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
    Guard g;
    if (!s) fatal("cudaStreamBeginCapture on the legacy (NULL) stream: CUDA refuses it (cudaErrorStreamCaptureUnsupported)");
    if (s->cap) fatal("cudaStreamBeginCapture on a stream that is already capturing");
    if (s->destroyed) fatal("cudaStreamBeginCapture on a destroyed stream");
    Capture *c = new Capture{{}, s, mode, std::this_thread::get_id(), {s}, false};
    s->cap = c;
    s->tail.clear();
    active_captures.push_back(c);
    return cudaSuccess;
}

static void ancestors(const std::vector<GNode> &nodes, int n, std::vector<char> &seen) {
    if (seen[n]) return;
    seen[n] = 1;
    for (int d : nodes[n].deps) ancestors(nodes, d, seen);
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *graph) {
    Guard g;
    if (!s || !s->cap) fatal("cudaStreamEndCapture on a stream that is not capturing");
    Capture *c = s->cap;
    if (c->origin != s)
        fatal("cudaStreamEndCapture on a stream that joined the capture, not the one that began it "
              "(cudaErrorStreamCaptureUnmatched)");
    std::vector<char> seen(c->nodes.size(), 0);
    for (int n : s->tail) ancestors(c->nodes, n, seen);
    for (CUstream_st *m : c->members)
        if (m != s)
            for (int n : m->tail)
                if (!seen[n])
                    fatal("cudaStreamEndCapture: a stream that joined the capture was not joined back: its last "
                          "captured work (\"%s\") does not precede the end of the origin stream "
                          "(cudaErrorStreamCaptureUnjoined); record an event on it and make the origin wait",
                          c->nodes[n].what.c_str());
    for (CUstream_st *m : c->members) {
        m->cap = nullptr;
        m->tail.clear();
    }
    c->ended = true; // kept: events recorded inside it still point at it
    active_captures.erase(std::find(active_captures.begin(), active_captures.end(), c));
    *graph = new CUgraph_st{std::move(c->nodes)};
    return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus *status) {
    Guard g;
    *status = S(s)->cap ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
    return cudaSuccess;
}

cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t *nodes, size_t *num_nodes) {
    Guard g;
    if (!graph || !num_nodes) return ret(cudaErrorInvalidValue);
    if (nodes) fatal("cudaGraphGetNodes: node handles are not modelled (pass NULL to get the count)");
    *num_nodes = graph->nodes.size();
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags) {
    Guard g;
    if (!graph) return ret(cudaErrorInvalidValue);
    *exec = new CUgraphExec_st{graph->nodes};
    return cudaSuccess;
}

// The new graph must have the exec's topology (same nodes, same kinds, same edges); its parameters
// (kernel arguments, copy and memset operands) replace the exec's. Different: cudaErrorGraphExecUpdateFailure
// and the exec is unchanged.
cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph, cudaGraphExecUpdateResultInfo *info) {
    Guard g;
    if (!exec || !graph) return ret(cudaErrorInvalidValue);
    cudaGraphExecUpdateResult r = cudaGraphExecUpdateSuccess;
    if (exec->nodes.size() != graph->nodes.size()) r = cudaGraphExecUpdateErrorTopologyChanged;
    for (size_t i = 0; r == cudaGraphExecUpdateSuccess && i < graph->nodes.size(); i++) {
        if (exec->nodes[i].deps != graph->nodes[i].deps) r = cudaGraphExecUpdateErrorTopologyChanged;
        else if (exec->nodes[i].what != graph->nodes[i].what) r = cudaGraphExecUpdateErrorFunctionChanged;
    }
    if (info) *info = cudaGraphExecUpdateResultInfo{r, nullptr, nullptr};
    if (r != cudaGraphExecUpdateSuccess) return ret(cudaErrorGraphExecUpdateFailure);
    exec->nodes = graph->nodes;
    return cudaSuccess;
}

static void run_graph(const std::vector<GNode> &nodes) {
    const size_t n = nodes.size();
    std::vector<int> waiting(n);
    std::vector<std::vector<int>> children(n);
    for (size_t i = 0; i < n; i++) {
        waiting[i] = (int)nodes[i].deps.size();
        for (int d : nodes[i].deps) children[d].push_back((int)i);
    }
    std::vector<int> ready;
    for (size_t i = 0; i < n; i++)
        if (!waiting[i]) ready.push_back((int)i);
    const Policy p = policy();
    while (!ready.empty()) {
        size_t pick = 0;
        if (p == RANDOM) pick = sched_rng()() % ready.size();
        else
            for (size_t k = 1; k < ready.size(); k++)
                if (p == EAGER ? ready[k] < ready[pick] : ready[k] > ready[pick]) pick = k;
        const int i = ready[pick];
        ready.erase(ready.begin() + (long)pick);
        if (nodes[i].run) {
            const char *prev = running_op;
            running_op = nodes[i].what.c_str();
            std::function<void()> f = nodes[i].run; // the exec keeps its own copy for the next launch
            f();
            running_op = prev;
        }
        for (int ch : children[i])
            if (--waiting[ch] == 0) ready.push_back(ch);
    }
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    Guard g;
    if (!exec) return ret(cudaErrorInvalidValue);
    if (S(s)->cap) fatal("cudaGraphLaunch on a capturing stream (a graph inside a graph) is not modelled");
    std::vector<const void *> touches;
    for (size_t i = 0; i < exec->nodes.size(); i++)
        for (const void *p : exec->nodes[i].touches) {
            if (!mem_find(p, nullptr, nullptr, nullptr))
                fatal("cudaGraphLaunch: node %zu (\"%s\") uses %p, which was freed after the capture: the graph "
                      "would read or write freed memory; capture again (or update the exec) after reallocating",
                      i, exec->nodes[i].what.c_str(), p);
            if (std::find(touches.begin(), touches.end(), p) == touches.end()) touches.push_back(p);
        }
    char what[64];
    snprintf(what, sizeof what, "cudaGraphLaunch (%zu nodes)", exec->nodes.size());
    std::vector<GNode> nodes = exec->nodes; // as they are now: a later update affects later launches only
    // The host memory its copies read, as it is at the launch: the graph reads it when it runs, so a host
    // write in between (a staging buffer reused before the launch has run) races the copy on a GPU.
    std::vector<std::vector<char>> at_launch(nodes.size());
    for (size_t i = 0; i < nodes.size(); i++)
        if (nodes[i].host_src)
            at_launch[i].assign((const char *)nodes[i].host_src, (const char *)nodes[i].host_src + nodes[i].host_bytes);
    push(S(s), what, [nodes, at_launch]() {
        for (size_t i = 0; i < nodes.size(); i++)
            if (nodes[i].host_src && memcmp(nodes[i].host_src, at_launch[i].data(), nodes[i].host_bytes) != 0)
                fatal("cudaGraphLaunch: node %zu (\"%s\") copies %zu bytes of page-locked host memory at %p to the "
                      "device, and the host rewrote them after the launch, before the graph ran: on a GPU the copy "
                      "races the write; reuse such memory only after the launch has run (an event or a stream "
                      "synchronisation)", i, nodes[i].what.c_str(), nodes[i].host_bytes, nodes[i].host_src);
        run_graph(nodes);
    }, touches, nullptr);
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    Guard g;
    delete exec; // a pending launch holds its own copy of the nodes
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    Guard g;
    delete graph;
    return cudaSuccess;
}

// ---- coverage ---------------------------------------------------------------------------------------

namespace cudaemu {
static std::map<std::string, long> launched;
void record_kernel(const char *name) {
    Guard g;
    std::string n(name);
    size_t lt = n.find('<');
    if (lt != std::string::npos) n = n.substr(0, lt);
    launched[n]++;
}
static void write_coverage() {
    const char *path = getenv("CUDAEMU_COVERAGE");
    if (!path || !*path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    for (auto &kv : launched) fprintf(f, "%s\n", kv.first.c_str());
    fclose(f);
}
} // namespace cudaemu
