// CUDA graphs for the backend's compute stream (docs/cuda-backend.md, "CUDA graphs"; the modes:
// backend_cuda.h).
//
// Record mode: the stream is always capturing: every op's kernels, cuBLAS calls, device copies and
// memsets are recorded into the open "segment" instead of being launched one by one. An op that must leave
// the stream (the host waits: to_host, sum_squares, sync; memory is allocated or freed; the copy stream is
// involved) first ends the segment, which is then launched as one graph: its exec is the cached one of the
// same topology with the new parameters (cudaGraphExecUpdate), or a new instantiation.
//
// Replay mode: nothing is captured while the model calls the ops. Each table op that only enqueues device
// work is deferred (CudaOp<fn>::deferred): its function and arguments, bit for bit, extend the pending
// segment's signature and a closure keeps the call. Where record mode would end a segment (every
// cuda_graph_pause), the pending segment is flushed: the exec cached under the same signature is launched
// as it is (the kernels and their arguments are exactly those it holds), or else the closures run under
// capture and the graph is launched through an exec of the same topology updated in place, or a new one.
// Host data (to_device) is copied into the page-locked staging when the op is called, at an offset that is
// part of the signature, so a replayed exec reads this step's data. In every mode the kernels and their
// arguments are exactly the eager ones: a step gives the same bits with graphs on or off.
#include <pthread.h>
#include <string.h>

#include <string>
#include <vector>

#include "common/check.h"
#include "model/cuda/cuda_ops.cuh"

static const size_t STAGE_MAX = 16u << 20; // host-to-device copies above this leave the segment (eager copy)
static const size_t REPLAY_CACHE = 32;     // replayable segments kept (least recently used evicted)

// One cached segment of replay mode: the shape part of its ops' signature (its key), the values its exec
// holds now, and the exec.
struct ReplaySegment {
    std::string shape, values;
    cudaGraphExec_t exec;
    size_t nodes;
    unsigned long long used;
};
struct CudaReplay {
    std::string shape, values;               // the pending segment: its ops' signature ...
    std::vector<std::function<void()>> ops;  // ... and the deferred calls
    std::vector<ReplaySegment> cache;
};

static bool on_graph_thread(CudaImpl *c) {
    return __atomic_load_n(&c->capturing, __ATOMIC_ACQUIRE) &&
           pthread_equal(pthread_self(), (pthread_t)__atomic_load_n(&c->graph_thread, __ATOMIC_ACQUIRE));
}

static bool replaying(const CudaImpl *c) { return c->graphs >= CUDA_GRAPHS_REPLAY; }

static void begin_capture(CudaImpl *c) {
    // thread-local: the loader threads may still allocate page-locked buffers while the main thread captures
    cudaCheck(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    __atomic_store_n(&c->capturing, 1, __ATOMIC_RELEASE);
    c->graph_ops = 0;
}

// Ends the capture; returns the graph and its node count.
static cudaGraph_t end_capture(CudaImpl *c, size_t *nodes) {
    cudaGraph_t g;
    cudaCheck(cudaStreamEndCapture(c->stream, &g));
    __atomic_store_n(&c->capturing, 0, __ATOMIC_RELEASE);
    *nodes = 0;
    cudaCheck(cudaGraphGetNodes(g, NULL, nodes));
    return g;
}

static void launch(CudaImpl *c, cudaGraphExec_t exec, size_t nodes) {
    cudaCheck(cudaGraphLaunch(exec, c->stream));
    c->graph_stats.launches++;
    c->graph_stats.nodes += (long long)nodes;
}

void cuda_graph_resume(Backend *be) {
    CudaImpl *c = cuda_impl(be);
    if (!c->graphs || c->capturing) return;
    if (replaying(c) && !c->replay_running) return; // replay captures only while it records a segment
    begin_capture(c);
}

void cuda_graph_tick(Backend *be) {
    CudaImpl *c = cuda_impl(be);
    if (replaying(c)) return; // replay: one segment per host wait (a replayed segment costs the host nothing)
    if (!c->capturing || c->graph_chunk_ops <= 0 || ++c->graph_ops < c->graph_chunk_ops) return;
    cuda_graph_pause(be); // the GPU runs what is recorded so far while the host records the rest
    cuda_graph_resume(be);
}

// The exec of a cached segment with this graph's topology, updated to its parameters; or a new one.
static cudaGraphExec_t exec_for(CudaImpl *c, cudaGraph_t g, size_t nodes) {
    CudaGraphSlot *lru = NULL;
    for (int i = 0; i < CUDA_GRAPH_CACHE; i++) {
        CudaGraphSlot *s = &c->graph_cache[i];
        if (s->exec && s->nodes == nodes) {
            cudaGraphExecUpdateResultInfo info;
            if (cudaGraphExecUpdate(s->exec, g, &info) == cudaSuccess) {
                s->used = ++c->graph_tick;
                c->graph_stats.updates++;
                return s->exec;
            }
            cudaGetLastError(); // another topology with the same node count: not an error
        }
        if (!lru || !s->exec || (lru->exec && s->used < lru->used)) lru = s;
    }
    if (lru->exec) { // evicted: rare; wait for a launch of it that may still be queued
        cudaCheck(cudaStreamSynchronize(c->stream));
        cudaCheck(cudaGraphExecDestroy(lru->exec));
    }
    cudaCheck(cudaGraphInstantiate(&lru->exec, g, 0));
    lru->nodes = nodes;
    lru->used = ++c->graph_tick;
    c->graph_stats.instantiations++;
    return lru->exec;
}

void cuda_graph_pause(Backend *be) {
    CudaImpl *c = cuda_impl(be);
    if (replaying(c) && !c->replay_running) { // a host wait while ops are pending: they go first
        cuda_replay_flush(be);
        return;
    }
    if (!c->capturing) return;
    if (c->replay_running) c->replay_cut = 1; // a host wait inside a segment's ops: not a replayable unit
    size_t n;
    cudaGraph_t g = end_capture(c, &n);
    if (n) launch(c, exec_for(c, g, n), n);
    cudaCheck(cudaGraphDestroy(g));
}

void cuda_host_wait(Backend *be) {
    CudaImpl *c = cuda_impl(be);
    c->graph_stats.host_waits++;
    cuda_graph_pause(be);
    cudaCheck(cudaStreamSynchronize(c->stream));
    // every graph that read the staging has run; but while replay records a segment, the deferred copies
    // not yet issued still read theirs
    if (!c->replay_running) c->stage_used = 0;
}

const void *cuda_graph_stage(Backend *be, const void *src, size_t bytes) {
    CudaImpl *c = cuda_impl(be);
    if ((!c->capturing && !cuda_replay_defers(be)) || bytes > STAGE_MAX) return NULL;
    const size_t need = (bytes + 255) / 256 * 256;
    if (c->stage_used + need > c->stage_bytes) {
        cuda_host_wait(be); // the staging is free again once what read it has run
        if (need > c->stage_bytes) {
            cuda_replay_forget(c); // cached execs read the old staging
            if (c->stage) cudaCheck(cudaFreeHost(c->stage));
            c->stage_bytes = need > (1u << 20) ? 2 * need : (1u << 20);
            cudaCheck(cudaHostAlloc(&c->stage, c->stage_bytes, cudaHostAllocPortable));
        }
        cuda_graph_resume(be);
    }
    char *p = (char *)c->stage + c->stage_used;
    memcpy(p, src, bytes);
    c->stage_used += need;
    return p;
}

int cuda_graph_host_call_begin(Backend *be) {
    CudaImpl *c = cuda_impl(be);
    if (!on_graph_thread(c)) return 0;
    cuda_graph_pause(be);
    return 1;
}

// ---- replay ------------------------------------------------------------------------------------------

bool cuda_replay_defers(Backend *be) {
    const CudaImpl *c = cuda_impl(be);
    return replaying(c) && !c->replay_running &&
           pthread_equal(pthread_self(), (pthread_t)__atomic_load_n(&c->graph_thread, __ATOMIC_ACQUIRE));
}

void cuda_replay_defer(Backend *be, const void *shape, size_t n_shape, const void *values, size_t n_values,
                       std::function<void()> run) {
    CudaImpl *c = cuda_impl(be);
    CudaReplay *r = c->replay;
    c->replay_pending = 1;
    r->shape.append((const char *)shape, n_shape);
    if (n_values) r->values.append((const char *)values, n_values);
    r->ops.push_back(std::move(run));
}

static void evict_lru(CudaImpl *c) {
    std::vector<ReplaySegment> &cache = c->replay->cache;
    size_t lru = 0;
    for (size_t i = 1; i < cache.size(); i++)
        if (cache[i].used < cache[lru].used) lru = i;
    cudaCheck(cudaStreamSynchronize(c->stream)); // a launch of it may still be queued
    cudaCheck(cudaGraphExecDestroy(cache[lru].exec));
    cache.erase(cache.begin() + (long)lru);
}

// Runs the deferred calls under capture; returns the graph (NULL when a host wait inside them cut it:
// then what they recorded is launched already, as in record mode) and its node count.
static cudaGraph_t record(Backend *be, std::vector<std::function<void()>> &ops, size_t *n) {
    CudaImpl *c = cuda_impl(be);
    c->replay_running = 1, c->replay_cut = 0;
    begin_capture(c);
    for (std::function<void()> &op : ops) op();
    *n = 0;
    cudaGraph_t g = c->capturing ? end_capture(c, n) : NULL;
    c->replay_running = 0;
    if (c->replay_cut) {
        if (g && *n) launch(c, exec_for(c, g, *n), *n);
        if (g) cudaCheck(cudaGraphDestroy(g));
        return NULL;
    }
    if (g && !*n) { // nothing enqueued (e.g. a copy onto itself)
        cudaCheck(cudaGraphDestroy(g));
        return NULL;
    }
    return g;
}

void cuda_replay_flush(Backend *be) {
    CudaImpl *c = cuda_impl(be);
    if (!replaying(c) || c->replay_running) return;
    CudaReplay *r = c->replay;
    c->replay_pending = 0;
    if (r->ops.empty()) return;
    std::string shape = std::move(r->shape), values = std::move(r->values);
    std::vector<std::function<void()>> ops = std::move(r->ops);
    r->shape.clear(), r->values.clear(), r->ops.clear();
    ReplaySegment *seg = NULL;
    for (ReplaySegment &s : r->cache)
        if (s.shape == shape) seg = &s;
    const bool same = seg && seg->values == values;
    if (same && c->graphs == CUDA_GRAPHS_REPLAY) { // the same ops with the same arguments: launch as is
        seg->used = ++c->graph_tick;
        launch(c, seg->exec, seg->nodes);
        c->graph_stats.replays++;
        return;
    }
    size_t n;
    cudaGraph_t g = record(be, ops, &n);
    if (!g) return;
    cudaGraphExecUpdateResultInfo info;
    if (same) { // CUDA_GRAPHS_VERIFY: what was recorded must be what the cached exec holds
        if (n != seg->nodes || cudaGraphExecUpdate(seg->exec, g, &info) != cudaSuccess) {
            fprintf(stderr, "dinotrain: cuda graphs (verify): a segment with the signature of a cached one recorded "
                            "%zu nodes, the cached exec has %zu%s: an op's work depends on something its arguments "
                            "do not show (model/cuda/graphs.cu, replay)\n",
                    n, seg->nodes, n == seg->nodes ? " and another topology or other kernels" : "");
            exit(1);
        }
        c->graph_stats.verified++;
    } else if (seg && n == seg->nodes && cudaGraphExecUpdate(seg->exec, g, &info) == cudaSuccess) {
        seg->values = std::move(values); // same shapes, new values (a schedule moved): updated in place
        c->graph_stats.updates++;
    } else {
        cudaGetLastError(); // a failed update (a value changed the topology) is not an error
        if (seg) { // replaced
            cudaCheck(cudaStreamSynchronize(c->stream));
            cudaCheck(cudaGraphExecDestroy(seg->exec));
        } else {
            if (r->cache.size() >= REPLAY_CACHE) evict_lru(c);
            r->cache.push_back(ReplaySegment{std::move(shape), std::string(), NULL, 0, 0});
            seg = &r->cache.back();
        }
        seg->values = std::move(values);
        seg->nodes = n;
        cudaCheck(cudaGraphInstantiate(&seg->exec, g, 0));
        c->graph_stats.instantiations++;
    }
    seg->used = ++c->graph_tick;
    launch(c, seg->exec, seg->nodes);
    cudaCheck(cudaGraphDestroy(g));
}

void cuda_replay_forget(CudaImpl *c) {
    if (!c->replay) return;
    for (ReplaySegment &s : c->replay->cache) cudaCheck(cudaGraphExecDestroy(s.exec));
    c->replay->cache.clear();
}

extern "C" int backend_cuda_graph_mode_on(char *err) {
    const char *m = getenv("DINO_CUDA_GRAPH_MODE");
    if (!m || !*m || !strcmp(m, "replay")) return CUDA_GRAPHS_REPLAY;
    if (!strcmp(m, "record")) return CUDA_GRAPHS_RECORD;
    if (!strcmp(m, "verify")) return CUDA_GRAPHS_VERIFY;
    if (err) snprintf(err, DINO_ERRLEN, "DINO_CUDA_GRAPH_MODE=%s: use replay (default), record or verify", m);
    return -1;
}

extern "C" int backend_cuda_set_graphs(Backend *be, int mode) {
    CudaImpl *c = cuda_impl(be);
    if (mode < CUDA_GRAPHS_OFF || mode > CUDA_GRAPHS_VERIFY) DINO_DIE("backend_cuda_set_graphs: mode %d", mode);
    if (mode == c->graphs) return c->graphs;
    if (c->graphs) { // leave the current mode: what it holds is launched first
        cuda_graph_pause(be);
        c->graphs = CUDA_GRAPHS_OFF;
    }
    if (mode) {
        const char *chunk = getenv("DINO_CUDA_GRAPH_CHUNK");
        c->graph_chunk_ops = chunk && *chunk ? atoi(chunk) : 32;
        __atomic_store_n(&c->graph_thread, (unsigned long)pthread_self(), __ATOMIC_RELEASE);
        if (mode >= CUDA_GRAPHS_REPLAY && !c->replay) c->replay = new CudaReplay();
        c->graphs = mode;
        cuda_graph_resume(be);
    }
    return c->graphs;
}

extern "C" CudaGraphStats backend_cuda_graph_stats(Backend *be) { return cuda_impl(be)->graph_stats; }

// ---- one recording, launched on demand (tests: the update replayed with new scalars) ---------------------

extern "C" void backend_cuda_record_begin(Backend *be) {
    CudaImpl *c = cuda_impl(be);
    if (c->graphs) DINO_DIE_CUDA("backend_cuda_record_begin with graph mode on (the stream is capturing already)");
    cudaCheck(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
}

extern "C" void *backend_cuda_record_end(Backend *be) {
    CudaImpl *c = cuda_impl(be);
    cudaGraph_t g;
    cudaGraphExec_t e;
    cudaCheck(cudaStreamEndCapture(c->stream, &g));
    cudaCheck(cudaGraphInstantiate(&e, g, 0));
    cudaCheck(cudaGraphDestroy(g));
    return (void *)e;
}

extern "C" void backend_cuda_record_launch(Backend *be, void *exec) {
    cudaCheck(cudaGraphLaunch((cudaGraphExec_t)exec, cuda_impl(be)->stream));
}

extern "C" void backend_cuda_record_free(Backend *be, void *exec) {
    cuda_host_wait(be); // no launch of it still queued
    cudaCheck(cudaGraphExecDestroy((cudaGraphExec_t)exec));
}

void cuda_graph_destroy(CudaImpl *c) {
    for (int i = 0; i < CUDA_GRAPH_CACHE; i++)
        if (c->graph_cache[i].exec) cudaCheck(cudaGraphExecDestroy(c->graph_cache[i].exec));
    cuda_replay_forget(c);
    delete c->replay;
    c->replay = NULL;
    if (c->stage) cudaCheck(cudaFreeHost(c->stage));
}
