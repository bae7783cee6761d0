// CUDA graphs for the backend's compute stream (docs/cuda-backend.md, "CUDA graphs"). With graphs on, the
// stream is always capturing: every op's kernels, cuBLAS calls, device copies and memsets are recorded
// into the open "segment" instead of being launched one by one. An op that must leave the stream (the host
// waits: to_host, sum_squares, sync; memory is allocated or freed; the copy stream is involved) first
// ends the segment, which is then launched as one graph: its exec is the cached one of the same topology
// with the new parameters (cudaGraphExecUpdate), or a new instantiation. The kernels and their arguments
// are exactly the eager ones, so a step gives the same bits with graphs on or off.
#include <pthread.h>
#include <string.h>

#include "model/cuda/cuda_ops.cuh"

static const size_t STAGE_MAX = 16u << 20; // host-to-device copies above this leave the segment (eager copy)

static bool on_graph_thread(CudaImpl *c) {
    return __atomic_load_n(&c->capturing, __ATOMIC_ACQUIRE) &&
           pthread_equal(pthread_self(), (pthread_t)__atomic_load_n(&c->graph_thread, __ATOMIC_ACQUIRE));
}

void cuda_graph_resume(Backend *be) {
    CudaImpl *c = cuda_impl(be);
    if (!c->graphs || c->capturing) return;
    // thread-local: the loader threads may still allocate page-locked buffers while the main thread captures
    cudaCheck(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    __atomic_store_n(&c->capturing, 1, __ATOMIC_RELEASE);
    c->graph_ops = 0;
}

void cuda_graph_tick(Backend *be) {
    CudaImpl *c = cuda_impl(be);
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
    if (!c->capturing) return;
    cudaGraph_t g;
    cudaCheck(cudaStreamEndCapture(c->stream, &g));
    __atomic_store_n(&c->capturing, 0, __ATOMIC_RELEASE);
    size_t n = 0;
    cudaCheck(cudaGraphGetNodes(g, NULL, &n));
    if (n) {
        cudaCheck(cudaGraphLaunch(exec_for(c, g, n), c->stream));
        c->graph_stats.launches++;
        c->graph_stats.nodes += (long long)n;
    }
    cudaCheck(cudaGraphDestroy(g));
}

void cuda_host_wait(Backend *be) {
    CudaImpl *c = cuda_impl(be);
    c->graph_stats.host_waits++;
    cuda_graph_pause(be);
    cudaCheck(cudaStreamSynchronize(c->stream));
    c->stage_used = 0; // every graph that read the staging has run
}

const void *cuda_graph_stage(Backend *be, const void *src, size_t bytes) {
    CudaImpl *c = cuda_impl(be);
    if (!c->capturing || bytes > STAGE_MAX) return NULL;
    const size_t need = (bytes + 255) / 256 * 256;
    if (c->stage_used + need > c->stage_bytes) {
        cuda_host_wait(be); // the staging is free again once what read it has run
        if (need > c->stage_bytes) {
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

extern "C" int backend_cuda_set_graphs(Backend *be, int on) {
    CudaImpl *c = cuda_impl(be);
    if (on && !c->graphs) {
        const char *chunk = getenv("DINO_CUDA_GRAPH_CHUNK");
        c->graph_chunk_ops = chunk && *chunk ? atoi(chunk) : 32;
        __atomic_store_n(&c->graph_thread, (unsigned long)pthread_self(), __ATOMIC_RELEASE);
        c->graphs = 1;
        cuda_graph_resume(be);
    } else if (!on && c->graphs) {
        cuda_graph_pause(be);
        c->graphs = 0;
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
    if (c->stage) cudaCheck(cudaFreeHost(c->stage));
}
