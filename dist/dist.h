// The distributed layer: who am I (rank bootstrap), collectives over host buffers (MPI on the CPU
// backend), the bucketed gradient all-reduce the trainer overlaps with the backward pass, ZeRO-1 shard
// arithmetic, and a watchdog that turns a hung collective into a job abort naming the rank that did not
// arrive.
// dist/ moves buffers and counts; it knows nothing of what is in them.
//
// Launchers: `mpirun -n N prog` (Open MPI), `srun --mpi=pmix prog` (Slurm + PMIx) or PMI2, or no launcher
// at all (then MPI is never initialised and the world is one process). Builds without MPI
// (DINO_HAVE_MPI undefined) always run as world 1 and refuse to start under a multi-process launcher.
//
// Determinism: every sum (allreduce, reduce-scatter, gradient buckets) is computed as
//   x_0 + x_1 + ... + x_{world-1}  (left to right, in rank order, in the element type)
// for every element, whatever MPI's algorithm choice, the timing or the bucket boundaries: the data move
// with MPI_Alltoallv (each rank receives every rank's copy of the part it owns), the owner sums them in
// rank order, and MPI_Allgatherv sends the result back. Bytes moved per rank are 2(n-1)/n of the buffer,
// as in a ring all-reduce. All ranks get bitwise identical results, a bucketed all-reduce equals a
// single one bit for bit, and a ZeRO-1 reduce-scatter equals the owner's part of the all-reduce.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "model/collective.h"

typedef enum { DIST_F32 = 0, DIST_F64 = 1, DIST_I64 = 2 } DistType;

typedef struct DistImpl DistImpl;
typedef struct {
    int rank, world;             // in the job
    int local_rank, local_world; // on this node: picks the GPU (local_rank % device count)
    char launcher[64];           // "none", "mpirun (Open MPI)", "PMIx (srun --mpi=pmix)", ...
    int using_mpi;               // 1 when dist_init called MPI_Init_thread (and dist_finalize ends it)
    double timeout_s;            // a collective that takes longer aborts the whole job (dist.collective_timeout_s)
    DistImpl *impl;              // MPI communicators, scratch, watchdog (NULL for a single process)
} Dist;

#define DIST_DEFAULT_TIMEOUT_S 600.0 // the default of the config key dist.collective_timeout_s

// Starts the distributed layer. timeout_s: the collective timeout (dinotrain passes the config key
// dist.collective_timeout_s); <= 0 takes $DINO_DIST_TIMEOUT_S, else 600 s.
// $DINO_DIST=none forces a single process, $DINO_DIST=mpi forces MPI_Init without a known launcher.
// Returns 0, or -1 with err set (e.g. launched by mpirun in a build without MPI).
// d must stay at its address until dist_finalize (the watchdog thread reads it). After a failure,
// dist_finalize still releases what was started (MPI included).
int dist_init(Dist *d, double timeout_s, char *err);
// The ranks of d that pass the same color form a group of their own (e.g. the ranks that train one
// student in a multi-student distillation run): sub gets its rank and world within the group (members
// ordered by their rank in d), its own communicators and watchdog; local_rank, launcher and timeout are
// d's. Every rank of d must call it (a collective). A single process gets a copy (rank 0, world 1).
// Release with dist_finalize(sub) before dist_finalize(d).
int dist_split(Dist *d, int color, Dist *sub, char *err);
// Ends MPI when dist_init started it. Safe on a single process.
void dist_finalize(Dist *d);
// Prints "dinotrain: rank R: <message>" and ends every rank of the job (MPI_Abort), or exits.
_Noreturn void dist_abort(const Dist *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// One line describing the run, e.g. "rank 1/4 (local 1/2) launched by mpirun (Open MPI)".
void dist_describe(const Dist *d, char *buf, size_t len);

// ---- blocking collectives over host buffers; every rank must call them in the same order ----------
// All return 0, or -1 with err naming the rank and the failing MPI call. On a single process they do
// nothing (allgather copies). A collective that hangs longer than d->timeout_s aborts the job. Before
// that, the waiting rank asks the others on a side communicator where they are (each rank counts the
// collectives it enters; a watchdog thread per rank answers, within min(5 s, timeout) or never), and the
// message names each rank that has not entered the collective, its host and the collective's name and
// number, and says what that rank is doing: stalled (no answer: stopped, frozen, unreachable), outside any
// collective (computing, or it skipped this one), or inside another collective (orders differ), e.g.
//   dinotrain: rank 0/3 (host n01, local rank 0): collective 'allreduce_sum_f32(n=3)' (#1) has not finished
//   after 600.0 s (timeout 600.0 s, dist.collective_timeout_s). rank 2/3 (host n07) has not entered
//   collective 'allreduce_sum_f32(n=3)' #1: it is stalled (no answer within 5.0 s: ...). Aborting the job.
// So a stalled job ends after at most timeout + min(5 s, timeout).

// In-place sum over ranks (deterministic rank order, see above). n may be any size.
int dist_allreduce_sum(Dist *d, void *buf, size_t n, DistType type, char *err);
int dist_allreduce_sum_f32(Dist *d, float *buf, size_t n, char *err);
int dist_allreduce_sum_f64(Dist *d, double *buf, size_t n, char *err);
int dist_allreduce_sum_i64(Dist *d, int64_t *buf, size_t n, char *err);
// Copies root's `bytes` bytes to every rank.
int dist_bcast(Dist *d, void *buf, size_t bytes, int root, char *err);
// recv (world * bytes_per_rank bytes) = concatenation of every rank's send, in rank order.
int dist_allgather(Dist *d, const void *send, void *recv, size_t bytes_per_rank, char *err);
// ZeRO-1 building blocks on a padded flat buffer of n_padded floats (a multiple of world, see dist_shard):
// rank r owns [r*n_padded/world, (r+1)*n_padded/world). At most 2^31-1 floats (MPI int counts; the
// all-reduce and the gradient buckets have no such limit).
// Reduce-scatter: the owned shard of buf becomes the sum over ranks (other parts are left as they were).
int dist_reduce_scatter_sum_f32(Dist *d, float *buf, size_t n_padded, char *err);
// All-gather: every rank's shard of buf is copied to all ranks (in place).
int dist_allgather_shards_f32(Dist *d, float *buf, size_t n_padded, char *err);
int dist_barrier(Dist *d, char *err);

// The objective's cross-rank reductions (model/collective.h) on host buffers. An MPI failure aborts the
// job with a message naming the rank. The table points at d: keep d alive while it is used.
Collective dist_collective(Dist *d);

// ---- ZeRO-1 shard arithmetic ----------------------------------------------------------------------
// The flat buffer of `total` floats is padded to a multiple of world*align (align in floats, e.g.
// PARAM_ALIGN, so every shard starts aligned), then cut into world equal shards.
typedef struct {
    size_t total;      // floats in use
    size_t padded;     // allocate params/grads/moments with this many floats (zeros beyond total)
    size_t shard;      // padded / world
    size_t begin, end; // this rank's shard [begin, end) of the padded buffer
    size_t valid_end;  // min(end, total): the part of the shard that holds real parameters
} DistShard;
DistShard dist_shard(size_t total, int world, int rank, size_t align);

// ---- bucketed gradient all-reduce (overlaps with the backward pass) -------------------------------
// The flat gradient buffer is cut into buckets at tensor boundaries (`cuts`: ascending offsets in floats,
// e.g. every TensorSpec offset; each bucket holds whole tensors and at least bucket_floats floats unless
// it is the first one). Protocol per step, identical on every rank:
//   dist_grads_ready_from(g, offset)  after the backward pass has finished every gradient at or after
//                                     `offset` (the layers are laid out in forward order, so backward
//                                     finishes them from the end of the buffer towards the start):
//                                     issues every bucket that lies entirely in [offset, n);
//   or dist_grads_begin_bucket(g, k)  to issue bucket k explicitly (same order on every rank);
//   dist_grads_progress(g)            optional, between layers: lets MPI move data meanwhile;
//   dist_grads_wait(g)                issues what is left, waits, and leaves the average over ranks
//                                     (sum in rank order, then / world) in the buffer.
// zero = 0: all-reduce; every rank gets the whole averaged buffer.
// zero = 1: ZeRO-1 reduce-scatter; n must be a multiple of world (dist_shard().padded) and only this
//           rank's shard [rank*n/world, (rank+1)*n/world) is averaged (the rest is left undefined).
// With a DistNccl (dist/nccl.h, CUDA builds) the buffer is in GPU memory and buckets go through NCCL on
// the communication stream after the compute stream's work so far; pass nccl = NULL for host buffers.
typedef struct DistGrads DistGrads;
struct DistNccl;
DistGrads *dist_grads_new(Dist *d, struct DistNccl *nccl, float *grads, size_t n, const size_t *cuts,
                          int n_cuts, size_t bucket_floats, int zero, char *err);
void dist_grads_free(DistGrads *g);
// NCCL buckets wait for the work enqueued so far on this compute stream (a cudaStream_t; default NULL,
// the legacy default stream). Unused for host buffers.
void dist_grads_set_stream(DistGrads *g, void *compute_stream);
int dist_grads_nbuckets(const DistGrads *g);
// Buckets issued so far in this step (before dist_grads_wait: those the backward pass started early).
int dist_grads_issued(const DistGrads *g);
void dist_grads_bucket_range(const DistGrads *g, int k, size_t *begin, size_t *end);
int dist_grads_begin_bucket(DistGrads *g, int k, char *err);
int dist_grads_ready_from(DistGrads *g, size_t offset, char *err);
int dist_grads_progress(DistGrads *g, char *err);
int dist_grads_wait(DistGrads *g, char *err);
