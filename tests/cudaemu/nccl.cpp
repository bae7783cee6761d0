// NCCL stand-in of the CUDA execution layer (tests/cudaemu/): the collectives dist/nccl.cu calls, run on
// the CPU. Ranks are MPI processes; a communicator of more than one rank is an MPI_Comm_dup of
// MPI_COMM_WORLD (NCCL rank r = MPI rank r), one rank needs no MPI at all.
//
// How a collective runs. Real NCCL enqueues a kernel that waits on the GPU for its peers; on the CPU a
// rank cannot wait inside a stream op for the other processes without risking host deadlocks, so the
// data moves when the collective is launched (at the call, or at the outermost ncclGroupEnd):
//   1. complete_stream(stream): the stream's earlier work and what it waits for run, so the inputs are
//      final, exactly as they are when the kernel starts on a GPU;
//   2. every rank's descriptor (sequence number, operation, count, type, reduction, root) is compared:
//      all ranks must issue the same collectives in the same order;
//   3. the inputs are exchanged over MPI and reduced on the host in a fixed rank order (fp32, so every
//      rank gets the same bits, run after run; ncclAvg scales each input by 1/world first, as NCCL does);
//   4. the result is written by an op enqueued on the stream, which runs when the scheduler reaches it:
//      work not ordered after the collective (no event wait on its stream) sees the old contents under
//      CUDAEMU_STREAMS=delay, as it may on a GPU. That op also checks that the inputs still hold what
//      was exchanged: a write by unordered work in between is a race with the collective.
// Findings (cudaemu::fatal): buffers that are not device memory covering the count, partial overlap of
// send and receive buffers other than NCCL's in-place forms, collectives of one group that overlap, ranks
// that issue different collectives, peers that do not arrive within CUDAEMU_NCCL_TIMEOUT_S (default 100 s),
// use of a destroyed communicator, and a group left open (another NCCL call or the exit inside it).
// Errors NCCL returns are returned alike (ncclInvalidArgument, ncclInvalidUsage); CUDAEMU_NCCL_FAIL=N
// makes the N-th collective call since the variable was set return ncclSystemError, to test error paths.
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <vector>

#include <nccl.h>

#include "emu.h"

#ifdef DINO_HAVE_MPI
#define OMPI_SKIP_MPICXX 1
#include <mpi.h>
#endif

// Tests look for this symbol (a weak reference) to know they run against the stand-in, e.g. before they
// use CUDAEMU_NCCL_FAIL.
extern "C" const int cudaemu_nccl_standin = 1;

struct ncclComm {
    int rank, world;
    uint64_t tag;     // of the id it was made from
    bool live;        // false once destroyed or aborted; the struct is kept to recognise later use
    bool aborted;
    uint64_t seq;     // collectives launched so far (the sequence number every rank must agree on)
    std::atomic<int> pending; // result write-backs enqueued, not run yet (any host thread that waits may run them)
    std::vector<cudaStream_t> streams; // streams it has enqueued on (ncclCommDestroy waits for them)
#ifdef DINO_HAVE_MPI
    MPI_Comm mpi;
#endif
};

namespace {

enum Kind { ALLREDUCE, REDUCESCATTER, ALLGATHER, REDUCE };
const char *const kind_name[] = {"ncclAllReduce", "ncclReduceScatter", "ncclAllGather", "ncclReduce"};

// One collective as called. count is the call's count argument: recvcount for ReduceScatter, sendcount
// for AllGather.
struct Op {
    Kind kind;
    const float *send;
    float *recv;
    size_t count;
    int dtype, redop, root;
    ncclComm_t comm;
    cudaStream_t stream;
};

// What a launched collective leaves for its write-back op.
struct Result {
    std::vector<float> in;  // this rank's send buffer as exchanged
    std::vector<float> out; // what goes into recv (empty: nothing is written on this rank)
};

const char ID_MAGIC[16] = "cudaemu nccl id";
struct IdBody {
    char magic[16];
    uint64_t tag;
};

// Group state. NCCL keeps it per thread; the project calls NCCL from one thread.
int group_depth;
ncclResult_t group_error; // the first error of a collective inside the open group
std::vector<Op> group_ops;
bool exit_check_armed, aborting;

char last_error[512];
std::vector<ncclComm *> comms; // every communicator made, live or not
int fail_calls;                // collective calls since CUDAEMU_NCCL_FAIL was set

ncclResult_t seterr(ncclResult_t r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
ncclResult_t seterr(ncclResult_t r, const char *fmt, ...) {
    int n = snprintf(last_error, sizeof last_error, "cudaemu NCCL stand-in: ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error + n, sizeof last_error - (size_t)n, fmt, ap);
    va_end(ap);
    return r;
}

double now_s() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void at_exit_check() {
    // A group left open launches nothing: its collectives were silently dropped.
    if (group_depth > 0 && !aborting)
        cudaemu::fatal("ncclGroupStart without ncclGroupEnd: the process exits inside an open NCCL group "
                       "(depth %d, %zu collectives recorded and never launched)", group_depth, group_ops.size());
}

// NCCL calls other than collectives and group calls must not come inside a group: the group's work would
// be launched later than the caller thinks, or never.
void no_open_group(const char *call) {
    if (group_depth > 0)
        cudaemu::fatal("ncclGroupStart without ncclGroupEnd: %s called inside an open NCCL group (depth %d, %zu "
                       "collectives recorded, not launched yet)", call, group_depth, group_ops.size());
}

bool known(ncclComm_t c) {
    for (ncclComm *k : comms)
        if (k == c) return true;
    return false;
}

// NULL is an argument error (NCCL returns one); a pointer that never was a communicator, or one already
// destroyed, is a use after free: a finding.
ncclResult_t check_comm(const char *call, ncclComm_t c) {
    if (!c) return seterr(ncclInvalidArgument, "%s: comm is NULL", call);
    if (!known(c)) cudaemu::fatal("%s: %p is not a communicator made by ncclCommInitRank", call, (void *)c);
    if (!c->live)
        cudaemu::fatal("%s: communicator of rank %d of %d used after ncclComm%s", call, c->rank, c->world,
                       c->aborted ? "Abort" : "Destroy");
    return ncclSuccess;
}

void describe(char *buf, size_t len, const Op &o, uint64_t seq) {
    int n = snprintf(buf, len, "%s #%llu (count %zu, %s", kind_name[o.kind], (unsigned long long)seq, o.count,
                     o.dtype == ncclFloat32 ? "ncclFloat32" : "?");
    if (o.kind != ALLGATHER) n += snprintf(buf + n, len - (size_t)n, ", %s", o.redop == ncclAvg ? "ncclAvg" : "ncclSum");
    if (o.kind == REDUCE) n += snprintf(buf + n, len - (size_t)n, ", root %d", o.root);
    snprintf(buf + n, len - (size_t)n, ")");
}

// The buffer must be one device allocation covering `count` floats.
void check_buf(const Op &o, const char *operand, const void *p, size_t count) {
    size_t bytes = count * sizeof(float);
    if (cudaemu::mem_kind(p, bytes) == cudaemu::MEM_DEVICE) return;
    const void *base = NULL;
    size_t size = 0;
    cudaemu::MemKind kind = cudaemu::MEM_NONE;
    char why[160];
    if (!p) snprintf(why, sizeof why, "NULL");
    else if (!cudaemu::mem_find(p, &base, &size, &kind))
        snprintf(why, sizeof why, "not device memory (pageable host memory or a freed buffer)");
    else if (kind == cudaemu::MEM_PINNED) snprintf(why, sizeof why, "pinned host memory, not device memory");
    else
        snprintf(why, sizeof why, "past the end of its device allocation (%zu bytes at %p, the buffer starts %zu bytes in)",
                 size, base, (size_t)((const char *)p - (const char *)base));
    cudaemu::fatal("%s (rank %d of %d): %s %p (%zu floats, %zu bytes) is %s", kind_name[o.kind], o.comm->rank,
                   o.comm->world, operand, p, count, bytes, why);
}

bool overlap(const void *a, size_t abytes, const void *b, size_t bbytes) {
    const char *pa = (const char *)a, *pb = (const char *)b;
    return abytes && bbytes && pa < pb + bbytes && pb < pa + abytes;
}

// The floats this rank's part of the collective reads (send) and writes (recv; 0 when nothing is written).
size_t send_count(const Op &o) { return o.kind == REDUCESCATTER ? o.count * (size_t)o.comm->world : o.count; }
size_t recv_count(const Op &o) {
    if (o.kind == ALLGATHER) return o.count * (size_t)o.comm->world;
    if (o.kind == REDUCE && o.comm->rank != o.root) return 0;
    return o.count;
}

// NCCL's in-place forms, the only overlap of send and receive buffers it allows.
bool in_place(const Op &o) {
    size_t off = (size_t)o.comm->rank * o.count;
    switch (o.kind) {
    case REDUCESCATTER: return o.recv == o.send + off;
    case ALLGATHER: return o.send == o.recv + off;
    default: return o.send == o.recv;
    }
}

// Argument checks at the call, as NCCL makes them before it records the collective.
ncclResult_t check_args(const Op &o) {
    const char *call = kind_name[o.kind];
    ncclResult_t r = check_comm(call, o.comm);
    if (r != ncclSuccess) return r;
    if (o.dtype != ncclFloat32)
        return seterr(ncclInvalidArgument, "%s: data type %d (the stand-in models ncclFloat32 only)", call, o.dtype);
    if (o.kind != ALLGATHER && o.redop != ncclSum && o.redop != ncclAvg)
        return seterr(ncclInvalidArgument, "%s: reduction %d (the stand-in models ncclSum and ncclAvg only)", call,
                      o.redop);
    if (o.kind == REDUCE && (o.root < 0 || o.root >= o.comm->world))
        return seterr(ncclInvalidArgument, "%s: root %d is not a rank of %d", call, o.root, o.comm->world);
    if (o.count == 0) return ncclSuccess; // NCCL drops empty collectives
    if (o.count > ((size_t)1 << 40) / (size_t)o.comm->world)
        return seterr(ncclInvalidArgument, "%s: count %zu is out of range", call, o.count);
    size_t ns = send_count(o), nr = recv_count(o);
    check_buf(o, "sendbuff", o.send, ns);
    if (nr) check_buf(o, "recvbuff", o.recv, nr);
    // In place is allowed in NCCL's forms only; any other overlap races inside the collective.
    if (nr && !in_place(o) && overlap(o.send, ns * sizeof(float), o.recv, nr * sizeof(float)))
        cudaemu::fatal("%s (rank %d of %d): sendbuff %p (%zu floats) and recvbuff %p (%zu floats) overlap but are not "
                       "the in-place form", call, o.comm->rank, o.comm->world, (const void *)o.send, ns, (void *)o.recv, nr);
    const char *f = getenv("CUDAEMU_NCCL_FAIL");
    if (!f || !*f) fail_calls = 0;
    else if (++fail_calls == atoi(f))
        return seterr(ncclSystemError, "%s: injected failure (CUDAEMU_NCCL_FAIL=%s)", call, f);
    return ncclSuccess;
}

#ifdef DINO_HAVE_MPI
double timeout_s() {
    const char *t = getenv("CUDAEMU_NCCL_TIMEOUT_S");
    double v = t ? atof(t) : 0;
    return v > 0 ? v : 100.0;
}

void mpi_check(int rc, const char *what, const Op &o) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    cudaemu::fatal("%s (rank %d of %d): %s failed: %s", kind_name[o.kind], o.comm->rank, o.comm->world, what, msg);
}

// Waits for a non-blocking exchange; peers that never arrive end the job with a message rather than a hang.
void wait_req(MPI_Request *req, const char *what, const Op &o, uint64_t seq) {
    double t0 = now_s(), limit = timeout_s();
    useconds_t nap = 10;
    for (;;) {
        int done = 0;
        mpi_check(MPI_Test(req, &done, MPI_STATUS_IGNORE), what, o);
        if (done) return;
        if (now_s() - t0 > limit) {
            char d[160];
            describe(d, sizeof d, o, seq);
            cudaemu::fatal("rank %d of %d: %s: the other ranks did not join %s within %.0f s (CUDAEMU_NCCL_TIMEOUT_S): "
                           "a rank skipped the collective, died, or waits in a host collective (MPI) that this rank "
                           "only reaches after it", o.comm->rank, o.comm->world, d, what, limit);
        }
        usleep(nap);
        if (nap < 2000) nap *= 2;
    }
}

// Every rank must be launching the same collective: compare descriptors before any data moves (with
// different counts the data exchange itself would be undefined).
void check_sequence(const Op &o, uint64_t seq) {
    const int W = 6;
    int64_t mine[W] = {(int64_t)seq, o.kind, (int64_t)o.count, o.dtype, o.kind == ALLGATHER ? 0 : o.redop,
                       o.kind == REDUCE ? o.root : -1};
    std::vector<int64_t> all((size_t)W * (size_t)o.comm->world);
    MPI_Request req;
    mpi_check(MPI_Iallgather(mine, W, MPI_INT64_T, all.data(), W, MPI_INT64_T, o.comm->mpi, &req),
              "MPI_Iallgather (descriptor)", o);
    wait_req(&req, "the descriptor exchange", o, seq);
    for (int r = 0; r < o.comm->world; r++) {
        const int64_t *d = &all[(size_t)r * W];
        if (memcmp(d, mine, sizeof mine) == 0) continue;
        Op other = o;
        other.kind = (Kind)(d[1] >= 0 && d[1] <= REDUCE ? d[1] : 0);
        other.count = (size_t)d[2], other.dtype = (int)d[3], other.redop = (int)d[4], other.root = (int)d[5];
        char a[160], b[160];
        describe(a, sizeof a, o, seq);
        describe(b, sizeof b, other, (uint64_t)d[0]);
        cudaemu::fatal("ranks issue different NCCL collectives: rank %d launches %s while rank %d launches %s "
                       "(every rank must issue the same collectives, with the same counts, types, reductions and "
                       "roots, in the same order)", o.comm->rank, a, r, b);
    }
}
#endif

// Rank order, fp32: x_0 + x_1 + ... For ncclAvg each input is first multiplied by float(1/world), as
// NCCL does for floating types (its PreMulSum), so an average is not the sum divided by world.
void reduce_rows(float *out, const float *rows, size_t n, size_t stride, int world, int redop) {
    float scale = (float)(1.0 / world);
    bool avg = redop == ncclAvg;
    for (size_t i = 0; i < n; i++) {
        float acc = avg ? rows[i] * scale : rows[i];
        for (int r = 1; r < world; r++) {
            float x = rows[(size_t)r * stride + i];
            acc += avg ? x * scale : x;
        }
        out[i] = acc;
    }
}

// Moves the data of a launched collective (all ranks are in the same collective: check_sequence).
void exchange(const Op &o, uint64_t seq, Result *res) {
    int world = o.comm->world, me = o.comm->rank;
    size_t n = o.count;
    const float *in = res->in.data();
    if (world == 1) {
        if (o.kind == ALLGATHER) res->out.assign(in, in + n);
        else {
            res->out.resize(n);
            reduce_rows(res->out.data(), in, n, n, 1, o.redop);
        }
        return;
    }
#ifdef DINO_HAVE_MPI
    // In chunks: MPI counts are int, and the gathered rows stay a bounded multiple of the chunk.
    const size_t CHUNK = (size_t)1 << 22;
    std::vector<float> rows;
    if (o.kind != REDUCE || me == o.root) res->out.resize(recv_count(o));
    for (size_t c0 = 0; c0 < n; c0 += CHUNK) {
        size_t m = n - c0 < CHUNK ? n - c0 : CHUNK;
        rows.resize(m * (size_t)world);
        MPI_Request req;
        int rc, cnt = (int)m;
        MPI_Comm mc = o.comm->mpi;
        if (o.kind == REDUCESCATTER) {
            // block j of the chunk goes to rank j; this rank receives every rank's copy of its own block
            std::vector<float> pack(m * (size_t)world);
            for (int j = 0; j < world; j++) memcpy(&pack[(size_t)j * m], in + (size_t)j * n + c0, m * sizeof(float));
            rc = MPI_Ialltoall(pack.data(), cnt, MPI_FLOAT, rows.data(), cnt, MPI_FLOAT, mc, &req);
            mpi_check(rc, "MPI_Ialltoall", o);
            wait_req(&req, "the data exchange", o, seq);
        } else if (o.kind == REDUCE) {
            rc = MPI_Igather(in + c0, cnt, MPI_FLOAT, rows.data(), cnt, MPI_FLOAT, o.root, mc, &req);
            mpi_check(rc, "MPI_Igather", o);
            wait_req(&req, "the data exchange", o, seq);
            if (me != o.root) continue;
        } else {
            rc = MPI_Iallgather(in + c0, cnt, MPI_FLOAT, rows.data(), cnt, MPI_FLOAT, mc, &req);
            mpi_check(rc, "MPI_Iallgather", o);
            wait_req(&req, "the data exchange", o, seq);
        }
        if (o.kind == ALLGATHER)
            for (int r = 0; r < world; r++)
                memcpy(&res->out[(size_t)r * n + c0], &rows[(size_t)r * m], m * sizeof(float));
        else reduce_rows(&res->out[c0], rows.data(), m, m, world, o.redop);
    }
#else
    (void)seq, (void)me;
    cudaemu::fatal("%s: a communicator of %d ranks in a stand-in built without MPI", kind_name[o.kind], world);
#endif
}

// Launches one collective (see the top of the file).
void launch(const Op &o) {
    cudaemu::complete_stream(o.stream);
    ncclComm *c = o.comm;
    uint64_t seq = ++c->seq;
#ifdef DINO_HAVE_MPI
    if (c->world > 1) check_sequence(o, seq);
#endif
    std::shared_ptr<Result> res = std::make_shared<Result>();
    res->in.assign(o.send, o.send + send_count(o));
    exchange(o, seq, res.get());
    c->pending++;
    bool seen = false;
    for (cudaStream_t s : c->streams) seen |= s == o.stream;
    if (!seen) c->streams.push_back(o.stream);
    Op op = o;
    std::vector<const void *> touches = {o.send};
    if (recv_count(o)) touches.push_back(o.recv);
    cudaemu::enqueue(o.stream, kind_name[o.kind], [op, seq, res]() {
        op.comm->pending--;
        if (op.comm->aborted) return; // ncclCommAbort kills the collective's kernel
        if (memcmp(op.send, res->in.data(), res->in.size() * sizeof(float)) != 0) {
            char d[160];
            describe(d, sizeof d, op, seq);
            cudaemu::fatal("%s on rank %d: its sendbuff %p changed between the launch and the collective's turn on its "
                           "stream: work not ordered with the collective wrote it (a race; order it with an event)",
                           d, op.comm->rank, (const void *)op.send);
        }
        if (!res->out.empty()) memcpy(op.recv, res->out.data(), res->out.size() * sizeof(float));
    }, touches);
}

// Collectives of one group may run concurrently on a GPU: none may write what another reads or writes.
void check_group_overlap(const std::vector<Op> &ops) {
    for (size_t i = 0; i < ops.size(); i++)
        for (size_t j = 0; j < ops.size(); j++) {
            if (i == j) continue;
            const Op &a = ops[i], &b = ops[j];
            size_t aw = recv_count(a) * sizeof(float);
            if (overlap(a.recv, aw, b.send, send_count(b) * sizeof(float)) ||
                (j > i && overlap(a.recv, aw, b.recv, recv_count(b) * sizeof(float))))
                cudaemu::fatal("rank %d: collectives %zu (%s) and %zu (%s) of one NCCL group overlap: %s's recvbuff %p "
                               "(%zu floats) meets the other's buffers; the group may run them concurrently",
                               a.comm->rank, i, kind_name[a.kind], j, kind_name[b.kind], kind_name[a.kind],
                               (void *)a.recv, recv_count(a));
        }
}

ncclResult_t collective(Kind kind, const void *send, void *recv, size_t count, ncclDataType_t dtype, int redop,
                        int root, ncclComm_t comm, cudaStream_t stream) {
    Op o = {kind, (const float *)send, (float *)recv, count, (int)dtype, redop, root, comm, stream};
    ncclResult_t r = check_args(o);
    if (r != ncclSuccess) {
        // NCCL remembers the group's first error: ncclGroupEnd returns it and launches nothing
        if (group_depth > 0 && group_error == ncclSuccess) group_error = r;
        return r;
    }
    if (count == 0) return ncclSuccess;
    if (group_depth > 0) group_ops.push_back(o);
    else launch(o);
    return ncclSuccess;
}

} // namespace

extern "C" {

const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
    }
}

// NCCL's is the last error of the thread, whatever the communicator; so is this one.
const char *ncclGetLastError(ncclComm_t) { return last_error; }

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    no_open_group("ncclGetUniqueId");
    if (!id) return seterr(ncclInvalidArgument, "ncclGetUniqueId: id is NULL");
    // A random tag: ncclCommInitRank refuses ranks that were given different ids.
    IdBody b;
    memcpy(b.magic, ID_MAGIC, sizeof b.magic);
    b.tag = 0;
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd < 0 || read(fd, &b.tag, sizeof b.tag) != (ssize_t)sizeof b.tag)
        b.tag = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull ^ (uint64_t)(now_s() * 1e9);
    if (fd >= 0) close(fd);
    memset(id, 0, sizeof *id);
    memcpy(id->internal, &b, sizeof b);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    no_open_group("ncclCommInitRank");
    if (!comm) return seterr(ncclInvalidArgument, "ncclCommInitRank: comm is NULL");
    *comm = NULL;
    IdBody b;
    memcpy(&b, id.internal, sizeof b);
    bool id_ok = memcmp(b.magic, ID_MAGIC, sizeof b.magic) == 0;
    bool args_ok = nranks >= 1 && rank >= 0 && rank < nranks;
    ncclComm *c = new ncclComm();
    c->rank = rank, c->world = nranks, c->tag = b.tag, c->live = true;
    if (nranks > 1) {
#ifdef DINO_HAVE_MPI
        int inited = 0, size = 0, me = 0;
        MPI_Initialized(&inited);
        if (!inited) {
            delete c;
            return seterr(ncclInvalidUsage, "ncclCommInitRank: %d ranks need MPI (the stand-in's ranks are MPI "
                          "processes) and MPI is not initialised", nranks);
        }
        MPI_Comm_size(MPI_COMM_WORLD, &size);
        MPI_Comm_rank(MPI_COMM_WORLD, &me);
        // Collective over MPI_COMM_WORLD; then every rank learns every rank's arguments, so that all
        // refuse together instead of some waiting forever.
        if (MPI_Comm_dup(MPI_COMM_WORLD, &c->mpi) != MPI_SUCCESS) {
            delete c;
            return seterr(ncclSystemError, "ncclCommInitRank: MPI_Comm_dup failed on rank %d", rank);
        }
        MPI_Comm_set_errhandler(c->mpi, MPI_ERRORS_RETURN);
        uint64_t mine[4] = {b.tag, (uint64_t)nranks, (uint64_t)rank, (uint64_t)(id_ok && args_ok)};
        std::vector<uint64_t> all(4 * (size_t)size);
        if (MPI_Allgather(mine, 4, MPI_UINT64_T, all.data(), 4, MPI_UINT64_T, c->mpi) != MPI_SUCCESS) {
            MPI_Comm_free(&c->mpi);
            delete c;
            return seterr(ncclSystemError, "ncclCommInitRank: MPI_Allgather failed on rank %d", rank);
        }
        ncclResult_t r = ncclSuccess;
        for (int p = 0; p < size && r == ncclSuccess; p++) {
            const uint64_t *a = &all[4 * (size_t)p];
            if (!a[3])
                r = seterr(ncclInvalidArgument, "ncclCommInitRank: MPI rank %d passed nranks %d, rank %d or an id not "
                           "made by ncclGetUniqueId", p, (int)a[1], (int)a[2]);
            else if ((int)a[1] != size || (int)a[2] != p)
                r = seterr(ncclInvalidUsage, "ncclCommInitRank: MPI rank %d of %d asks to be rank %d of %d (the stand-in "
                           "needs NCCL rank = MPI rank over all of MPI_COMM_WORLD)", p, size, (int)a[2], (int)a[1]);
            else if (a[0] != all[0])
                r = seterr(ncclInvalidArgument, "ncclCommInitRank: ranks 0 and %d were given different ids (tags %016llx "
                           "and %016llx): the id must come from one ncclGetUniqueId, shared with every rank", p,
                           (unsigned long long)all[0], (unsigned long long)a[0]);
        }
        if (r != ncclSuccess) {
            MPI_Comm_free(&c->mpi);
            delete c;
            return r;
        }
        (void)me;
#else
        delete c;
        return seterr(ncclInvalidUsage, "ncclCommInitRank: %d ranks in a stand-in built without MPI", nranks);
#endif
    } else if (!id_ok || !args_ok) {
        delete c;
        return seterr(ncclInvalidArgument, "ncclCommInitRank: rank %d of %d, or an id not made by ncclGetUniqueId",
                      rank, nranks);
    }
    comms.push_back(c);
    *comm = c;
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    no_open_group("ncclCommDestroy");
    ncclResult_t r = check_comm("ncclCommDestroy", comm);
    if (r != ncclSuccess) return r;
    // NCCL finishes the communicator's outstanding collectives before it frees it.
    for (size_t i = 0; comm->pending > 0 && i < comm->streams.size(); i++) cudaemu::complete_stream(comm->streams[i]);
    comm->live = false;
#ifdef DINO_HAVE_MPI
    int finalized = 0;
    MPI_Finalized(&finalized); // NCCL knows nothing of MPI: destroying after MPI_Finalize is allowed
    if (comm->world > 1 && !finalized) MPI_Comm_free(&comm->mpi);
#endif
    return ncclSuccess;
}

// The error path (a peer died): allowed anywhere, even inside a group, and the exit that follows is not
// a finding of its own.
ncclResult_t ncclCommAbort(ncclComm_t comm) {
    ncclResult_t r = check_comm("ncclCommAbort", comm);
    if (r != ncclSuccess) return r;
    aborting = true;
    comm->live = false;
    comm->aborted = true;
    return ncclSuccess; // the MPI communicator is left alone: its peers may be gone
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async) {
    no_open_group("ncclCommGetAsyncError");
    ncclResult_t r = check_comm("ncclCommGetAsyncError", comm);
    if (r != ncclSuccess) return r;
    if (!async) return seterr(ncclInvalidArgument, "ncclCommGetAsyncError: asyncError is NULL");
    *async = ncclSuccess; // collectives finish at their launch here: nothing is ever in progress or failed
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t dtype, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
    return collective(ALLREDUCE, send, recv, count, dtype, op, -1, comm, stream);
}

ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t recvcount, ncclDataType_t dtype, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t stream) {
    return collective(REDUCESCATTER, send, recv, recvcount, dtype, op, -1, comm, stream);
}

ncclResult_t ncclAllGather(const void *send, void *recv, size_t sendcount, ncclDataType_t dtype, ncclComm_t comm,
                           cudaStream_t stream) {
    return collective(ALLGATHER, send, recv, sendcount, dtype, ncclSum, -1, comm, stream);
}

ncclResult_t ncclReduce(const void *send, void *recv, size_t count, ncclDataType_t dtype, ncclRedOp_t op, int root,
                        ncclComm_t comm, cudaStream_t stream) {
    return collective(REDUCE, send, recv, count, dtype, op, root, comm, stream);
}

ncclResult_t ncclGroupStart(void) {
    if (!exit_check_armed) {
        atexit(at_exit_check);
        exit_check_armed = true;
    }
    if (group_depth++ == 0) {
        group_ops.clear();
        group_error = ncclSuccess;
    }
    return ncclSuccess;
}

// The outermost end launches the group's collectives in the order they were called. Work enqueued on
// their streams between the call and here (an event record, say) comes before them, as with NCCL.
ncclResult_t ncclGroupEnd(void) {
    if (group_depth == 0) return seterr(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
    if (--group_depth > 0) return ncclSuccess;
    std::vector<Op> ops;
    ops.swap(group_ops);
    if (group_error != ncclSuccess) { // NCCL drops the whole group and returns its first error
        ncclResult_t r = group_error;
        group_error = ncclSuccess;
        return r;
    }
    check_group_overlap(ops);
    for (const Op &o : ops)
        if (!o.comm->aborted) launch(o); // (an abort inside the group is the error path: the job is ending)
    return ncclSuccess;
}

} // extern "C"
