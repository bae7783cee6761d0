// NCCL collectives on GPU buffers (CUDA builds with NCCL: DINO_HAVE_NCCL), callable from C.
// One communicator per job, created from an id that rank 0 makes and broadcasts over MPI; one GPU per
// local rank (cudaSetDevice(local_rank % device count)). Every collective runs on a dedicated
// communication stream, after an event recorded on the caller's compute stream, so it overlaps with
// compute that is enqueued later. Waiting polls ncclCommGetAsyncError with a timeout: a peer that died
// or never joins ends the whole job (ncclCommAbort + MPI_Abort) with a message naming the rank.
// Streams are passed as void * (a cudaStream_t; NULL = the legacy default stream) so C code need not
// include CUDA headers. Counts are in floats; buffers are fp32 device memory.
#pragma once
#include <stddef.h>

#include "model/collective.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct DistNccl DistNccl;

// Creates the communicator (collective over all ranks). With world == 1 no MPI is needed. timeout_s: the
// host wait's deadline (the trainer passes Dist.timeout_s, i.e. dist.collective_timeout_s); <= 0: 600 s.
// Returns NULL with err set (no GPU, NCCL failure, ...), naming the rank.
DistNccl *dist_nccl_new(int rank, int world, int local_rank, double timeout_s, char *err);
void dist_nccl_free(DistNccl *nc);
int dist_nccl_device(const DistNccl *nc);
int dist_nccl_rank(const DistNccl *nc);
int dist_nccl_world(const DistNccl *nc);
void *dist_nccl_stream(DistNccl *nc); // the communication stream

// Enqueue on the communication stream after all work enqueued so far on `after`. average != 0 divides
// the sum by world (ncclAvg). Return 0, or -1 with err naming the rank and the NCCL/CUDA call.
int dist_nccl_allreduce(DistNccl *nc, float *buf, size_t n, int average, void *after, char *err);
// recv (recv_n floats) = this rank's slice [rank*recv_n, (rank+1)*recv_n) of the sum of send (world*recv_n).
int dist_nccl_reduce_scatter(DistNccl *nc, const float *send, float *recv, size_t recv_n, int average,
                             void *after, char *err);
// recv (world*send_n) = every rank's send, in rank order. In place when send == recv + rank*send_n.
int dist_nccl_allgather(DistNccl *nc, const float *send, float *recv, size_t send_n, void *after, char *err);
// In-place sum (or average) of buf onto rank `root` only (ZeRO-1 buckets that lie in one shard).
int dist_nccl_reduce(DistNccl *nc, float *buf, size_t n, int root, int average, void *after, char *err);
// Group several calls into one NCCL launch (ncclGroupStart/End).
int dist_nccl_group_start(DistNccl *nc, char *err);
int dist_nccl_group_end(DistNccl *nc, char *err);
// Makes `stream` wait for everything enqueued so far on the communication stream (no host wait).
int dist_nccl_gate(DistNccl *nc, void *stream, char *err);
// Host waits for the communication stream, polling for NCCL async errors; past the timeout the job is
// aborted with a message naming the rank and `what`. Returns 0, or -1 with err on an NCCL error.
int dist_nccl_sync(DistNccl *nc, const char *what, char *err);

// The objective's reductions (model/collective.h) on device buffers: all-reduce after the work enqueued
// on the compute stream set here (default NULL, the legacy default stream), then a host wait.
void dist_nccl_set_compute_stream(DistNccl *nc, void *stream);
Collective dist_nccl_collective(DistNccl *nc);

#ifdef __cplusplus
}
#endif
