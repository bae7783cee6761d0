// NCCL communicator and collectives on GPU buffers (see dist/nccl.h).
#include "dist/nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef DINO_HAVE_MPI
#define OMPI_SKIP_MPICXX 1
#include <mpi.h>
#endif

struct DistNccl {
    int rank, world, device;
    double timeout_s;
    ncclComm_t comm;
    cudaStream_t stream; // communication stream
    cudaEvent_t ready;   // recorded on the caller's stream; the comm stream waits on it
    cudaEvent_t done;    // recorded on the comm stream after each launch (a collective, or a group's end)
    cudaStream_t compute; // the objective's reductions wait for this stream's work
    int group_depth;     // open dist_nccl_group_start calls: NCCL launches a group's work at its end only
};

static void seterr(char *err, const char *fmt, ...) {
    if (!err) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, 512, fmt, ap); // DINO_ERRLEN
    va_end(ap);
}

#define CUDA_OK(nc, call, err)                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            seterr(err, "rank %d: %s failed (%s:%d): %s", (nc)->rank, #call, __FILE__, __LINE__,    \
                   cudaGetErrorString(e_));                                                        \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)
#define NCCL_OK(nc, call, err)                                                                      \
    do {                                                                                           \
        ncclResult_t r_ = (call);                                                                  \
        if (r_ != ncclSuccess && r_ != ncclInProgress) {                                           \
            seterr(err, "rank %d: %s failed (%s:%d): %s (%s)", (nc)->rank, #call, __FILE__, __LINE__, \
                   ncclGetErrorString(r_), ncclGetLastError((nc)->comm));                          \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

[[noreturn]] static void abort_job(DistNccl *nc, const char *msg) {
    char host[128] = "?";
    gethostname(host, sizeof host - 1);
    fprintf(stderr, "dinotrain: rank %d/%d (host %s, GPU %d): %s. Aborting the job.\n", nc->rank, nc->world, host,
            nc->device, msg);
    fflush(stderr);
    if (nc->comm) ncclCommAbort(nc->comm); // frees NCCL's kernels so the process can exit
#ifdef DINO_HAVE_MPI
    int inited = 0;
    MPI_Initialized(&inited);
    if (inited) MPI_Abort(MPI_COMM_WORLD, 15);
#endif
    exit(15);
}

extern "C" DistNccl *dist_nccl_new(int rank, int world, int local_rank, double timeout_s, char *err) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        seterr(err, "rank %d: no CUDA device for NCCL", rank);
        return NULL;
    }
    DistNccl *nc = (DistNccl *)calloc(1, sizeof *nc);
    if (!nc) { seterr(err, "rank %d: out of memory", rank); return NULL; }
    nc->rank = rank, nc->world = world, nc->device = local_rank % ndev;
    nc->timeout_s = timeout_s > 0 ? timeout_s : 600.0; // dist.collective_timeout_s (the trainer passes Dist's)
    ncclUniqueId id;
    int ok = cudaSetDevice(nc->device) == cudaSuccess;
    if (ok && rank == 0) ok = ncclGetUniqueId(&id) == ncclSuccess;
    if (world > 1) {
#ifdef DINO_HAVE_MPI
        // Every rank takes part in the broadcast even when rank 0 failed, then all learn of it.
        int ok_all = ok;
        MPI_Allreduce(&ok, &ok_all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        if (!ok_all) {
            seterr(err, "rank %d: cudaSetDevice(%d) or ncclGetUniqueId failed on some rank", rank, nc->device);
            free(nc);
            return NULL;
        }
        if (MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS) {
            seterr(err, "rank %d: MPI_Bcast of the NCCL id failed", rank);
            free(nc);
            return NULL;
        }
#else
        seterr(err, "rank %d: world %d needs MPI to share the NCCL id; this build has none", rank, world);
        free(nc);
        return NULL;
#endif
    } else if (!ok) {
        seterr(err, "rank 0: cudaSetDevice(%d) or ncclGetUniqueId failed", nc->device);
        free(nc);
        return NULL;
    }
    ncclResult_t r = ncclCommInitRank(&nc->comm, world, id, rank);
    if (r != ncclSuccess) {
        seterr(err, "rank %d: ncclCommInitRank(world %d, GPU %d) failed: %s", rank, world, nc->device,
               ncclGetErrorString(r));
        free(nc);
        return NULL;
    }
    if (cudaStreamCreateWithFlags(&nc->stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&nc->ready, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&nc->done, cudaEventDisableTiming) != cudaSuccess) {
        seterr(err, "rank %d: cannot create the NCCL stream and events on GPU %d", rank, nc->device);
        ncclCommDestroy(nc->comm);
        free(nc);
        return NULL;
    }
    return nc;
}

extern "C" void dist_nccl_free(DistNccl *nc) {
    if (!nc) return;
    cudaStreamSynchronize(nc->stream);
    ncclCommDestroy(nc->comm);
    cudaEventDestroy(nc->ready);
    cudaEventDestroy(nc->done);
    cudaStreamDestroy(nc->stream);
    free(nc);
}

extern "C" int dist_nccl_device(const DistNccl *nc) { return nc->device; }
extern "C" int dist_nccl_rank(const DistNccl *nc) { return nc->rank; }
extern "C" int dist_nccl_world(const DistNccl *nc) { return nc->world; }
extern "C" void *dist_nccl_stream(DistNccl *nc) { return (void *)nc->stream; }

// The comm stream waits for everything enqueued so far on the caller's stream.
static int after_stream(DistNccl *nc, void *after, char *err) {
    CUDA_OK(nc, cudaEventRecord(nc->ready, (cudaStream_t)after), err);
    CUDA_OK(nc, cudaStreamWaitEvent(nc->stream, nc->ready, 0), err);
    return 0;
}

// `done` follows the work launched so far. Inside a group a collective is only recorded (NCCL launches it
// at ncclGroupEnd), so an event recorded now would come before it: dist_nccl_group_end records instead.
static int record_done(DistNccl *nc, char *err) {
    if (nc->group_depth == 0) CUDA_OK(nc, cudaEventRecord(nc->done, nc->stream), err);
    return 0;
}

extern "C" int dist_nccl_allreduce(DistNccl *nc, float *buf, size_t n, int average, void *after, char *err) {
    if (after_stream(nc, after, err)) return -1;
    NCCL_OK(nc, ncclAllReduce(buf, buf, n, ncclFloat32, average ? ncclAvg : ncclSum, nc->comm, nc->stream), err);
    return record_done(nc, err);
}

extern "C" int dist_nccl_reduce_scatter(DistNccl *nc, const float *send, float *recv, size_t recv_n, int average,
                                        void *after, char *err) {
    if (after_stream(nc, after, err)) return -1;
    NCCL_OK(nc, ncclReduceScatter(send, recv, recv_n, ncclFloat32, average ? ncclAvg : ncclSum, nc->comm, nc->stream),
            err);
    return record_done(nc, err);
}

extern "C" int dist_nccl_allgather(DistNccl *nc, const float *send, float *recv, size_t send_n, void *after,
                                   char *err) {
    if (after_stream(nc, after, err)) return -1;
    NCCL_OK(nc, ncclAllGather(send, recv, send_n, ncclFloat32, nc->comm, nc->stream), err);
    return record_done(nc, err);
}

extern "C" int dist_nccl_reduce(DistNccl *nc, float *buf, size_t n, int root, int average, void *after, char *err) {
    if (after_stream(nc, after, err)) return -1;
    NCCL_OK(nc, ncclReduce(buf, buf, n, ncclFloat32, average ? ncclAvg : ncclSum, root, nc->comm, nc->stream), err);
    return record_done(nc, err);
}

extern "C" int dist_nccl_group_start(DistNccl *nc, char *err) {
    NCCL_OK(nc, ncclGroupStart(), err);
    nc->group_depth++;
    return 0;
}
// Always pair with dist_nccl_group_start, also after an error inside the group (NCCL then drops the group's
// work and returns the error here too).
extern "C" int dist_nccl_group_end(DistNccl *nc, char *err) {
    if (nc->group_depth > 0) nc->group_depth--; // the group is closed whatever ncclGroupEnd returns
    NCCL_OK(nc, ncclGroupEnd(), err);
    return record_done(nc, err);
}

extern "C" int dist_nccl_gate(DistNccl *nc, void *stream, char *err) {
    CUDA_OK(nc, cudaEventRecord(nc->done, nc->stream), err);
    CUDA_OK(nc, cudaStreamWaitEvent((cudaStream_t)stream, nc->done, 0), err);
    return 0;
}

extern "C" int dist_nccl_sync(DistNccl *nc, const char *what, char *err) {
    CUDA_OK(nc, cudaEventRecord(nc->done, nc->stream), err);
    double t0 = now_s();
    for (;;) {
        cudaError_t q = cudaEventQuery(nc->done);
        if (q == cudaSuccess) return 0;
        if (q != cudaErrorNotReady) {
            seterr(err, "rank %d: %s: CUDA error while waiting: %s", nc->rank, what, cudaGetErrorString(q));
            return -1;
        }
        ncclResult_t async = ncclSuccess;
        if (ncclCommGetAsyncError(nc->comm, &async) != ncclSuccess || (async != ncclSuccess && async != ncclInProgress)) {
            char msg[512];
            snprintf(msg, sizeof msg, "NCCL error during %s: %s (%s)", what, ncclGetErrorString(async),
                     ncclGetLastError(nc->comm));
            abort_job(nc, msg); // a peer failed: the communicator is unusable, so is this job
        }
        if (now_s() - t0 > nc->timeout_s) {
            char msg[512];
            snprintf(msg, sizeof msg, "NCCL %s has not finished after %.1f s (timeout %.1f s, dist.collective_timeout_s): "
                     "another rank died, hangs or skipped it", what, now_s() - t0, nc->timeout_s);
            abort_job(nc, msg);
        }
        usleep(100);
    }
}

extern "C" void dist_nccl_set_compute_stream(DistNccl *nc, void *stream) { nc->compute = (cudaStream_t)stream; }

static void nccl_collective_sum(Collective *c, float *buf, size_t n) {
    DistNccl *nc = (DistNccl *)c->ctx;
    char err[512];
    // Ordered after the compute stream's work; the host wait makes later work see the result.
    if (dist_nccl_allreduce(nc, buf, n, 0, nc->compute, err) || dist_nccl_sync(nc, "objective all-reduce", err))
        abort_job(nc, err);
}

extern "C" Collective dist_nccl_collective(DistNccl *nc) {
    Collective c;
    c.ctx = nc;
    c.rank = nc->rank;
    c.world = nc->world;
    c.allreduce_sum_f32 = nccl_collective_sum;
    return c;
}
