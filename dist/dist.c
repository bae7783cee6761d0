#include "common/clock.h"
#include "dist/dist.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/check.h"
#ifdef DINO_HAVE_MPI
#include <mpi.h>
#endif
#ifdef DINO_HAVE_NCCL
#include "dist/nccl.h"
#endif

__attribute__((unused)) static size_t type_size(DistType t) { return t == DIST_F32 ? 4 : 8; }
__attribute__((unused)) static const char *type_name(DistType t) { return t == DIST_F32 ? "f32" : t == DIST_F64 ? "f64" : "i64"; }

// out[i] = parts[0][i] + parts[1][i] + ... + parts[w-1][i], left to right (the determinism contract),
// then / w when averaging (floating types only). parts are w consecutive rows of m elements.
__attribute__((unused)) static void sum_rows(void *out, const void *parts, size_t m, int w, DistType t, int average) {
    if (t == DIST_F32) {
        const float *p = parts;
        float *o = out;
        for (size_t i = 0; i < m; i++) {
            float acc = p[i];
            for (int r = 1; r < w; r++) acc += p[(size_t)r * m + i];
            o[i] = average ? acc / (float)w : acc;
        }
    } else if (t == DIST_F64) {
        const double *p = parts;
        double *o = out;
        for (size_t i = 0; i < m; i++) {
            double acc = p[i];
            for (int r = 1; r < w; r++) acc += p[(size_t)r * m + i];
            o[i] = average ? acc / (double)w : acc;
        }
    } else {
        const int64_t *p = parts;
        int64_t *o = out;
        for (size_t i = 0; i < m; i++) {
            int64_t acc = p[i];
            for (int r = 1; r < w; r++) acc += p[(size_t)r * m + i];
            o[i] = acc;
        }
    }
}

// Who owns which elements of a range [b0, b1) of a buffer: rank r owns [b0+displ[r], b0+displ[r]+count[r]).
// EQUAL splits the range into world near-equal parts (all-reduce); SHARDS intersects it with the global
// ZeRO shards [r*S, (r+1)*S) (reduce-scatter).
__attribute__((unused)) static void partition_equal(size_t m, int w, int *count, int *displ) {
    size_t part = (m + (size_t)w - 1) / (size_t)w;
    for (int r = 0; r < w; r++) {
        size_t lo = (size_t)r * part < m ? (size_t)r * part : m;
        size_t hi = lo + part < m ? lo + part : m;
        count[r] = (int)(hi - lo);
        displ[r] = (int)lo;
    }
}
__attribute__((unused)) static void partition_shards(size_t b0, size_t b1, size_t shard, int w, int *count, int *displ) {
    for (int r = 0; r < w; r++) {
        size_t lo = (size_t)r * shard, hi = lo + shard;
        if (lo < b0) lo = b0;
        if (hi > b1) hi = b1;
        count[r] = hi > lo ? (int)(hi - lo) : 0;
        displ[r] = hi > lo ? (int)(lo - b0) : 0;
    }
}

// ---------------------------------------------------------------------------------------------------
#ifdef DINO_HAVE_MPI

#define HOST_LEN 64

struct DistImpl {
    MPI_Comm comm;          // blocking collectives (a duplicate of MPI_COMM_WORLD, errors return)
    MPI_Comm side;          // progress queries after a timeout (another duplicate: never mixed with comm)
    char (*hosts)[HOST_LEN]; // every rank's host name, gathered at start (a stalled rank cannot tell its own)
    void *scratch;          // receive rows of the blocking reductions
    size_t scratch_bytes;
    int *count, *displ, *rcount, *rdispl; // world-sized work arrays
    // watchdog: a thread that aborts the job when the armed collective has run longer than the timeout
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int running, stop, armed;
    int thread_multiple;    // MPI may be called from the watchdog while the main thread is inside MPI
    double armed_at;
    char op[96];
    unsigned long long seq; // collectives entered by this rank (the current one included), in call order
};

// ---- naming the rank that did not arrive -----------------------------------------------------------
// Every rank counts the collectives it enters (seq, op, armed: in memory, under im->mu). When a rank's
// collective passes the timeout, its watchdog asks every other rank for its counters on the side
// communicator (non-blocking point-to-point, a deadline of its own: QUERY_S, at most the timeout). Every
// rank's watchdog answers such questions whenever it ticks (every 100 ms), whether or not its main thread
// is blocked inside MPI or computing. So a rank that does not answer in time is stalled as a whole
// process (SIGSTOP, frozen, its node gone); one that answers with a lower count has not arrived (it is
// computing, or waits in an earlier collective); one at the same count in another collective means the
// ranks' call orders differ. Needs MPI_THREAD_MULTIPLE (the watchdog calls MPI beside the main thread);
// without it the message names only the rank that waited.
#define QUERY_S 5.0
#define TAG_QUERY 1
#define TAG_REPLY 2
#define MAX_NAMED 8 // ranks named in one message; the rest are counted

typedef struct {
    unsigned long long seq; // collectives entered so far
    int armed;              // 1 while inside collective #seq
    int pad;
    double for_s;           // how long it has been inside it
    char op[96];            // the current (armed) or last collective
} Progress;

static Progress progress_now(DistImpl *im) {
    Progress p;
    memset(&p, 0, sizeof p);
    pthread_mutex_lock(&im->mu);
    p.seq = im->seq;
    p.armed = im->armed;
    p.for_s = im->armed ? dino_wall_s() - im->armed_at : 0;
    memcpy(p.op, im->op, sizeof p.op);
    pthread_mutex_unlock(&im->mu);
    return p;
}

// Answers every question waiting on the side communicator with this rank's counters. Only the watchdog
// thread receives on it, so probe-then-receive cannot race. The asker posted its receive before asking.
static void answer_queries(Dist *d) {
    DistImpl *im = d->impl;
    for (;;) {
        int flag = 0;
        MPI_Status st;
        if (MPI_Iprobe(MPI_ANY_SOURCE, TAG_QUERY, im->side, &flag, &st) != MPI_SUCCESS || !flag) return;
        unsigned long long q = 0;
        if (MPI_Recv(&q, 1, MPI_UNSIGNED_LONG_LONG, st.MPI_SOURCE, TAG_QUERY, im->side, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return;
        Progress p = progress_now(im);
        MPI_Send(&p, (int)sizeof p, MPI_BYTE, st.MPI_SOURCE, TAG_REPLY, im->side);
    }
}

static void appendf(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void appendf(char *buf, size_t len, const char *fmt, ...) {
    size_t used = strlen(buf);
    if (used + 1 >= len) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, len - used, fmt, ap);
    va_end(ap);
}

// Asks every other rank where it is (answering their questions meanwhile: they time out at about the same
// moment) and writes, into out, one sentence per rank that has not entered this rank's collective `me`.
static void find_missing_ranks(Dist *d, const Progress *me, char *out, size_t len) {
    DistImpl *im = d->impl;
    int w = d->world;
    Progress *p = dino_calloc((size_t)w, sizeof *p);
    MPI_Request *rq = dino_calloc((size_t)w, sizeof *rq), *sq = dino_calloc((size_t)w, sizeof *sq);
    int *got = dino_calloc((size_t)w, sizeof *got);
    unsigned long long *q = dino_calloc(1, sizeof *q);
    *q = me->seq;
    int pending = 0;
    for (int r = 0; r < w; r++) {
        rq[r] = sq[r] = MPI_REQUEST_NULL;
        if (r == d->rank) continue;
        if (MPI_Irecv(&p[r], (int)sizeof *p, MPI_BYTE, r, TAG_REPLY, im->side, &rq[r]) != MPI_SUCCESS) continue;
        MPI_Isend(q, 1, MPI_UNSIGNED_LONG_LONG, r, TAG_QUERY, im->side, &sq[r]); // a stalled rank never takes it
        pending++;
    }
    const double limit = d->timeout_s < QUERY_S ? d->timeout_s : QUERY_S, t0 = dino_wall_s();
    while (pending > 0 && dino_wall_s() - t0 < limit) {
        answer_queries(d);
        for (int r = 0; r < w; r++) {
            int flag = 0;
            if (rq[r] == MPI_REQUEST_NULL || got[r]) continue;
            if (MPI_Test(&rq[r], &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS && flag) got[r] = 1, pending--;
        }
        usleep(2000);
    }
    // The requests still open are left to MPI_Abort, their buffers with them (not freed: a late answer may
    // still land in p until the job ends).
    out[0] = 0;
    int named = 0, missing = 0, waiting = 0;
    for (int pass = 0; pass < 2; pass++) // pass 0: ranks that have not arrived; 1 (if none): ranks past it
        for (int r = 0; r < w && !(pass == 1 && missing); r++) {
            if (r == d->rank) continue;
            const Progress *o = &p[r];
            char what[256];
            int same = got[r] && o->seq == me->seq && o->armed && strcmp(o->op, me->op) == 0;
            int past = got[r] && (o->seq > me->seq || (o->seq == me->seq && !o->armed));
            if (pass == 0 && same) waiting++;
            if (same || (pass == 0) == past) continue;
            if (!got[r])
                snprintf(what, sizeof what, "it is stalled (no answer within %.1f s: the process is stopped, frozen or "
                                            "unreachable)", limit);
            else if (o->armed)
                snprintf(what, sizeof what, "it is in collective '%s' #%llu (for %.1f s)%s", o->op, o->seq, o->for_s,
                         o->seq == me->seq ? ": the ranks called collectives in different orders" : "");
            else if (o->seq == 0)
                snprintf(what, sizeof what, "it is outside any collective (it has entered none yet)");
            else
                snprintf(what, sizeof what, "it is outside any collective (the last one it entered: '%s' #%llu)", o->op,
                         o->seq);
            if (pass == 0) missing++;
            if (named++ >= MAX_NAMED) continue;
            appendf(out, len, " rank %d/%d (host %s) %s collective '%s' #%llu: %s.", r, w, im->hosts[r],
                    pass == 0 ? "has not entered" : "has gone past", me->op, me->seq, what);
        }
    if (named > MAX_NAMED) appendf(out, len, " ... and %d more ranks.", named - MAX_NAMED);
    if (!named)
        appendf(out, len, " Every rank answered and is inside this collective: MPI itself does not progress "
                          "(network, transport).");
    else if (waiting)
        appendf(out, len, " %d other rank%s wait%s in it too.", waiting, waiting > 1 ? "s" : "", waiting > 1 ? "" : "s");
}

// The armed collective has passed the timeout: say who did not arrive, then end every rank of the job.
_Noreturn static void timeout_abort(Dist *d) {
    DistImpl *im = d->impl;
    Progress me = progress_now(im);
    char host[HOST_LEN] = "?";
    gethostname(host, sizeof host - 1);
    char why[4096] = "";
    if (im->thread_multiple) find_missing_ranks(d, &me, why, sizeof why);
    else snprintf(why, sizeof why, " Another rank died, hangs or skipped it (which one is not known: MPI without "
                                   "MPI_THREAD_MULTIPLE cannot be asked from the watchdog).");
    fprintf(stderr,
            "dinotrain: rank %d/%d (host %s, local rank %d): collective '%s' (#%llu) has not finished after %.1f s "
            "(timeout %.1f s, dist.collective_timeout_s).%s Aborting the job.\n",
            d->rank, d->world, host, d->local_rank, me.op, me.seq, me.for_s, d->timeout_s, why);
    fflush(stderr);
    // Without MPI_THREAD_MULTIPLE, calling MPI here is not allowed: exiting makes mpirun/srun end the other
    // ranks just the same (a rank that exits without MPI_Finalize ends the job).
    if (im->thread_multiple) MPI_Abort(MPI_COMM_WORLD, 14);
    _exit(14);
}

static MPI_Datatype mpi_type(DistType t) {
    return t == DIST_F32 ? MPI_FLOAT : t == DIST_F64 ? MPI_DOUBLE : MPI_INT64_T;
}

static int mpi_ok(const Dist *d, int rc, const char *call, const char *what, char *err) {
    if (rc == MPI_SUCCESS) return 0;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "MPI error %d", rc);
    dino_seterr(err, "rank %d/%d: %s in %s failed: %s", d->rank, d->world, call, what, msg);
    return -1;
}

static void *watchdog_main(void *arg) {
    Dist *d = arg;
    DistImpl *im = d->impl;
    for (;;) {
        pthread_mutex_lock(&im->mu);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        if (!im->stop) pthread_cond_timedwait(&im->cv, &im->mu, &ts);
        int stop = im->stop, expired = im->armed && dino_wall_s() - im->armed_at > d->timeout_s;
        pthread_mutex_unlock(&im->mu);
        if (stop) break;
        if (im->thread_multiple) answer_queries(d);
        if (expired) timeout_abort(d);
    }
    return NULL;
}

static void watch_arm(Dist *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void watch_arm(Dist *d, const char *fmt, ...) {
    DistImpl *im = d->impl;
    pthread_mutex_lock(&im->mu);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(im->op, sizeof im->op, fmt, ap);
    va_end(ap);
    im->seq++;
    im->armed = 1;
    im->armed_at = dino_wall_s();
    pthread_mutex_unlock(&im->mu);
}
static void watch_disarm(Dist *d) {
    DistImpl *im = d->impl;
    pthread_mutex_lock(&im->mu);
    im->armed = 0;
    pthread_mutex_unlock(&im->mu);
}

static void *scratch_get(DistImpl *im, size_t bytes) {
    if (bytes > im->scratch_bytes) {
        free(im->scratch);
        im->scratch = dino_malloc(bytes);
        im->scratch_bytes = bytes;
    }
    return im->scratch;
}

// Blocking reduce of [base, base+m) under a given ownership (count/displ): every owner receives every
// rank's copy of its part into rows, sums them in rank order into place; then optionally all-gathers.
static int reduce_owned(Dist *d, MPI_Comm comm, void *base, size_t m, DistType t, const int *count,
                        const int *displ, int average, int gather, const char *what, char *err) {
    DistImpl *im = d->impl;
    int w = d->world, me = d->rank;
    size_t es = type_size(t);
    size_t mine = (size_t)count[me];
    char *rows = scratch_get(im, mine * (size_t)w * es);
    for (int r = 0; r < w; r++) {
        im->rcount[r] = (int)mine;
        im->rdispl[r] = (int)((size_t)r * mine);
    }
    MPI_Datatype mt = mpi_type(t);
    if (mpi_ok(d, MPI_Alltoallv(base, count, displ, mt, rows, im->rcount, im->rdispl, mt, comm),
               "MPI_Alltoallv", what, err))
        return -1;
    sum_rows((char *)base + (size_t)displ[me] * es, rows, mine, w, t, average);
    if (gather &&
        mpi_ok(d, MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, base, count, displ, mt, comm),
               "MPI_Allgatherv", what, err))
        return -1;
    (void)m;
    return 0;
}

#endif // DINO_HAVE_MPI

// ---------------------------------------------------------------------------------------------------
// Launchers set these in each process's environment; without any of them this is a lone process and
// MPI is not touched (MPI_Init outside a launcher may try to start a daemon or wait on a network).
static const char *detect_launcher(int *expected_world) {
    *expected_world = 0;
    const char *s;
    if ((s = getenv("OMPI_COMM_WORLD_SIZE"))) { *expected_world = atoi(s); return "mpirun (Open MPI)"; }
    if ((s = getenv("PMIX_RANK"))) {
        if ((s = getenv("SLURM_STEP_NUM_TASKS"))) *expected_world = atoi(s);
        return "PMIx (srun --mpi=pmix or prterun)";
    }
    if ((s = getenv("PMI_SIZE"))) { *expected_world = atoi(s); return "PMI (srun --mpi=pmi2 or hydra)"; }
    if (getenv("PMI_RANK")) return "PMI";
    if ((s = getenv("SLURM_STEP_NUM_TASKS")) && getenv("SLURM_PROCID")) {
        *expected_world = atoi(s);
        return "srun (no PMI plugin named)";
    }
    return NULL;
}

#ifdef DINO_HAVE_MPI
// The communicators and bookkeeping of a Dist over the processes of `base` (MPI_COMM_WORLD, or a group
// of it from dist_split): rank and world within it, two duplicates (collectives, progress queries),
// every member's host name.
static int start_impl(Dist *d, MPI_Comm base, const char *what, char *err) {
    DistImpl *im = dino_calloc(1, sizeof *im);
    d->impl = im;
    pthread_mutex_init(&im->mu, NULL);
    pthread_cond_init(&im->cv, NULL);
    int level = 0;
    MPI_Query_thread(&level);
    im->thread_multiple = level >= MPI_THREAD_MULTIPLE;
    MPI_Comm_rank(base, &d->rank);
    MPI_Comm_size(base, &d->world);
    if (mpi_ok(d, MPI_Comm_dup(base, &im->comm), "MPI_Comm_dup", what, err) ||
        mpi_ok(d, MPI_Comm_dup(base, &im->side), "MPI_Comm_dup", what, err))
        return -1;
    im->hosts = dino_calloc((size_t)d->world, HOST_LEN);
    gethostname(im->hosts[d->rank], HOST_LEN - 1);
    if (mpi_ok(d, MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, im->hosts, HOST_LEN, MPI_CHAR, im->comm),
               "MPI_Allgather", what, err))
        return -1;
    return 0;
}

// Work arrays sized by the world, and the watchdog thread (world > 1).
static int start_watchdog(Dist *d, char *err) {
    DistImpl *im = d->impl;
    int w = d->world;
    im->count = dino_calloc((size_t)w, sizeof(int));
    im->displ = dino_calloc((size_t)w, sizeof(int));
    im->rcount = dino_calloc((size_t)w, sizeof(int));
    im->rdispl = dino_calloc((size_t)w, sizeof(int));
    if (w > 1) {
        if (pthread_create(&im->thread, NULL, watchdog_main, d) != 0) {
            dino_seterr(err, "rank %d: cannot start the collective watchdog thread", d->rank);
            return -1;
        }
        im->running = 1;
    }
    return 0;
}
#endif

int dist_init(Dist *d, double timeout_s, char *err) {
    memset(d, 0, sizeof *d);
    d->world = d->local_world = 1;
    const char *t = getenv("DINO_DIST_TIMEOUT_S");
    d->timeout_s = timeout_s > 0 ? timeout_s : t && atof(t) > 0 ? atof(t) : DIST_DEFAULT_TIMEOUT_S;
    int expected = 0;
    const char *launcher = detect_launcher(&expected);
    const char *force = getenv("DINO_DIST");
    if (force && strcmp(force, "none") == 0) launcher = NULL, expected = 0;
    else if (force && strcmp(force, "mpi") == 0 && !launcher) launcher = "forced (DINO_DIST=mpi)";
    else if (force && strcmp(force, "mpi") != 0 && strcmp(force, "none") != 0) {
        dino_seterr(err, "DINO_DIST=%s: expected 'mpi' or 'none'", force);
        return -1;
    }
    snprintf(d->launcher, sizeof d->launcher, "%s", launcher ? launcher : "none");
    if (!launcher) return 0;
#ifndef DINO_HAVE_MPI
    if (expected > 1) {
        dino_seterr(err, "started by %s with %d processes, but this build has no MPI (install Open MPI and "
                         "rebuild); each process would train alone", launcher, expected);
        return -1;
    }
    return 0;
#else
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided = 0;
        // The watchdog thread calls MPI_Abort while the main thread may be blocked inside MPI.
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
            dino_seterr(err, "MPI_Init_thread failed (launcher: %s)", launcher);
            return -1;
        }
        d->using_mpi = 1;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    if (start_impl(d, MPI_COMM_WORLD, "dist_init", err)) return -1;
    MPI_Comm node;
    if (mpi_ok(d, MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &node),
               "MPI_Comm_split_type", "dist_init (local rank)", err))
        return -1;
    MPI_Comm_rank(node, &d->local_rank);
    MPI_Comm_size(node, &d->local_world);
    MPI_Comm_free(&node);
    if (expected > 1 && d->world != expected) {
        dino_seterr(err, "rank %d: %s started %d processes but MPI sees a world of %d (for Slurm use "
                         "srun --mpi=pmix)", d->rank, launcher, expected, d->world);
        return -1;
    }
    return start_watchdog(d, err);
#endif
}

int dist_split(Dist *d, int color, Dist *sub, char *err) {
    memcpy(sub, d, sizeof *sub);
    sub->impl = NULL;
    sub->using_mpi = 0; // MPI belongs to d: finalizing sub frees only the group's communicators
    if (!d->impl) {
        sub->rank = 0, sub->world = 1;
        return 0;
    }
#ifdef DINO_HAVE_MPI
    MPI_Comm group;
    if (mpi_ok(d, MPI_Comm_split(d->impl->comm, color, d->rank, &group), "MPI_Comm_split", "dist_split", err))
        return -1;
    int rc = start_impl(sub, group, "dist_split", err);
    MPI_Comm_free(&group);
    if (!rc) rc = start_watchdog(sub, err);
    return rc;
#else
    (void)color, (void)err;
    return 0;
#endif
}

void dist_finalize(Dist *d) {
#ifdef DINO_HAVE_MPI
    DistImpl *im = d->impl;
    if (im) {
        if (im->running) {
            pthread_mutex_lock(&im->mu);
            im->stop = 1;
            pthread_cond_signal(&im->cv);
            pthread_mutex_unlock(&im->mu);
            pthread_join(im->thread, NULL);
        }
        pthread_mutex_destroy(&im->mu);
        pthread_cond_destroy(&im->cv);
        if (im->comm != MPI_COMM_NULL && im->comm) MPI_Comm_free(&im->comm);
        if (im->side != MPI_COMM_NULL && im->side) MPI_Comm_free(&im->side);
        free(im->hosts);
        free(im->scratch);
        free(im->count);
        free(im->displ);
        free(im->rcount);
        free(im->rdispl);
        free(im);
    }
    if (d->using_mpi) MPI_Finalize();
#endif
    d->impl = NULL;
    d->using_mpi = 0;
}

void dist_abort(const Dist *d, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "dinotrain: rank %d/%d: ", d ? d->rank : 0, d ? d->world : 1);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    fflush(stderr);
    va_end(ap);
#ifdef DINO_HAVE_MPI
    if (d && d->impl) MPI_Abort(MPI_COMM_WORLD, 1);
#endif
    exit(1);
}

void dist_describe(const Dist *d, char *buf, size_t len) {
    snprintf(buf, len, "rank %d/%d (local %d/%d) launched by %s%s, collective timeout %g s", d->rank,
             d->world, d->local_rank, d->local_world, d->launcher,
             d->using_mpi ? " (MPI)" : d->impl ? " (MPI initialised by the caller)" : "", d->timeout_s);
}

// ---- blocking collectives -------------------------------------------------------------------------
#define SEGMENT_ELEMS ((size_t)1 << 24) // bounds the scratch and keeps MPI's int counts safe

int dist_allreduce_sum(Dist *d, void *buf, size_t n, DistType t, char *err) {
    if (d->world == 1 || n == 0) return 0;
#ifdef DINO_HAVE_MPI
    DistImpl *im = d->impl;
    size_t es = type_size(t);
    char what[96];
    snprintf(what, sizeof what, "allreduce_sum_%s(n=%zu)", type_name(t), n);
    for (size_t s = 0; s < n; s += SEGMENT_ELEMS) {
        size_t m = n - s < SEGMENT_ELEMS ? n - s : SEGMENT_ELEMS;
        partition_equal(m, d->world, im->count, im->displ);
        watch_arm(d, "%s", what);
        int rc = reduce_owned(d, im->comm, (char *)buf + s * es, m, t, im->count, im->displ, 0, 1, what, err);
        watch_disarm(d);
        if (rc) return -1;
    }
    return 0;
#else
    (void)buf, (void)t;
    dino_seterr(err, "world %d without MPI", d->world);
    return -1;
#endif
}
int dist_allreduce_sum_f32(Dist *d, float *buf, size_t n, char *err) { return dist_allreduce_sum(d, buf, n, DIST_F32, err); }
int dist_allreduce_sum_f64(Dist *d, double *buf, size_t n, char *err) { return dist_allreduce_sum(d, buf, n, DIST_F64, err); }
int dist_allreduce_sum_i64(Dist *d, int64_t *buf, size_t n, char *err) { return dist_allreduce_sum(d, buf, n, DIST_I64, err); }

int dist_bcast(Dist *d, void *buf, size_t bytes, int root, char *err) {
    if (d->world == 1) {
        if (root != 0) { dino_seterr(err, "rank 0/1: broadcast from root %d in a world of 1", root); return -1; }
        return 0;
    }
#ifdef DINO_HAVE_MPI
    const size_t seg = (size_t)1 << 30;
    for (size_t s = 0; s < bytes || s == 0; s += seg) {
        size_t m = bytes - s < seg ? bytes - s : seg;
        watch_arm(d, "bcast(%zu bytes, root %d)", bytes, root);
        int rc = MPI_Bcast((char *)buf + s, (int)m, MPI_BYTE, root, d->impl->comm);
        watch_disarm(d);
        if (mpi_ok(d, rc, "MPI_Bcast", "dist_bcast", err)) return -1;
        if (bytes == 0) break;
    }
    return 0;
#else
    return -1;
#endif
}

int dist_allgather(Dist *d, const void *send, void *recv, size_t bytes_per_rank, char *err) {
    if (d->world == 1) {
        if (recv != send) memmove(recv, send, bytes_per_rank);
        return 0;
    }
#ifdef DINO_HAVE_MPI
    if (bytes_per_rank > (size_t)2147483647) {
        dino_seterr(err, "rank %d: allgather of %zu bytes per rank exceeds MPI's int count", d->rank, bytes_per_rank);
        return -1;
    }
    const void *sb = (const char *)recv + (size_t)d->rank * bytes_per_rank == send ? MPI_IN_PLACE : send;
    watch_arm(d, "allgather(%zu bytes per rank)", bytes_per_rank);
    int rc = MPI_Allgather(sb, (int)bytes_per_rank, MPI_BYTE, recv, (int)bytes_per_rank, MPI_BYTE, d->impl->comm);
    watch_disarm(d);
    return mpi_ok(d, rc, "MPI_Allgather", "dist_allgather", err);
#else
    return -1;
#endif
}

static int check_padded(const Dist *d, size_t n_padded, const char *what, char *err) {
    if (n_padded % (size_t)d->world) {
        dino_seterr(err, "rank %d: %s: buffer of %zu floats is not padded to a multiple of world %d (use dist_shard)",
                    d->rank, what, n_padded, d->world);
        return -1;
    }
    if (n_padded > (size_t)2147483647) {
        dino_seterr(err, "rank %d: %s: %zu floats exceed MPI's int counts", d->rank, what, n_padded);
        return -1;
    }
    return 0;
}

int dist_reduce_scatter_sum_f32(Dist *d, float *buf, size_t n_padded, char *err) {
    if (d->world == 1) return 0;
    if (check_padded(d, n_padded, "reduce_scatter", err)) return -1;
#ifdef DINO_HAVE_MPI
    DistImpl *im = d->impl;
    partition_shards(0, n_padded, n_padded / (size_t)d->world, d->world, im->count, im->displ);
    watch_arm(d, "reduce_scatter_sum_f32(n=%zu)", n_padded);
    int rc = reduce_owned(d, im->comm, buf, n_padded, DIST_F32, im->count, im->displ, 0, 0, "reduce_scatter", err);
    watch_disarm(d);
    return rc;
#else
    return -1;
#endif
}

int dist_allgather_shards_f32(Dist *d, float *buf, size_t n_padded, char *err) {
    if (d->world == 1) return 0;
    if (check_padded(d, n_padded, "allgather_shards", err)) return -1;
#ifdef DINO_HAVE_MPI
    int shard = (int)(n_padded / (size_t)d->world);
    watch_arm(d, "allgather_shards_f32(n=%zu)", n_padded);
    int rc = MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, shard, MPI_FLOAT, d->impl->comm);
    watch_disarm(d);
    return mpi_ok(d, rc, "MPI_Allgather", "allgather_shards", err);
#else
    return -1;
#endif
}

int dist_barrier(Dist *d, char *err) {
    if (d->world == 1) return 0;
#ifdef DINO_HAVE_MPI
    watch_arm(d, "barrier");
    int rc = MPI_Barrier(d->impl->comm);
    watch_disarm(d);
    return mpi_ok(d, rc, "MPI_Barrier", "dist_barrier", err);
#else
    return -1;
#endif
}

static void collective_host_sum(Collective *c, float *buf, size_t n) {
    char err[DINO_ERRLEN];
    if (dist_allreduce_sum_f32(c->ctx, buf, n, err)) dist_abort(c->ctx, "%s", err);
}
Collective dist_collective(Dist *d) {
    Collective c = {.ctx = d, .rank = d->rank, .world = d->world, .allreduce_sum_f32 = collective_host_sum};
    return c;
}

DistShard dist_shard(size_t total, int world, int rank, size_t align) {
    DistShard s;
    size_t unit = (size_t)world * (align ? align : 1);
    s.total = total;
    s.padded = (total + unit - 1) / unit * unit;
    if (s.padded == 0) s.padded = unit; // every rank owns at least an aligned, empty-of-data shard
    s.shard = s.padded / (size_t)world;
    s.begin = (size_t)rank * s.shard;
    s.end = s.begin + s.shard;
    s.valid_end = s.end < total ? s.end : total;
    if (s.valid_end < s.begin) s.valid_end = s.begin;
    return s;
}

// ---- bucketed gradient all-reduce -----------------------------------------------------------------
typedef struct {
    size_t begin, end;
    int issued, reduced;
    int *count, *displ, *rcount, *rdispl; // ownership of this bucket (world entries each)
    float *rows;                          // world copies of this rank's part
#ifdef DINO_HAVE_MPI
    MPI_Request req1, req2;               // alltoallv, allgatherv
#endif
} Bucket;

struct DistGrads {
    Dist *d;
    struct DistNccl *nccl;
    void *stream; // compute stream the NCCL buckets are ordered after
    float *buf;
    size_t n;
    int zero;
    int nb;
    Bucket *b;
    int *order, n_issued, n_reduced; // issue order of this step, and how far phase 2 has got in it
#ifdef DINO_HAVE_MPI
    MPI_Comm comm1, comm2; // one communicator per phase: each phase is issued in the same order everywhere
#endif
};

#define BUCKET_MAX_ELEMS ((size_t)1 << 28)

DistGrads *dist_grads_new(Dist *d, struct DistNccl *nccl, float *grads, size_t n, const size_t *cuts,
                          int n_cuts, size_t bucket_floats, int zero, char *err) {
    if (zero && n % (size_t)d->world) {
        dino_seterr(err, "rank %d: ZeRO-1 gradient buffer of %zu floats is not padded to a multiple of world %d "
                         "(allocate dist_shard().padded floats)", d->rank, n, d->world);
        return NULL;
    }
#ifndef DINO_HAVE_NCCL
    if (nccl) { dino_seterr(err, "rank %d: NCCL gradient buckets in a build without NCCL", d->rank); return NULL; }
#endif
    for (int i = 1; i < n_cuts; i++)
        if (cuts[i] < cuts[i - 1] || cuts[i] > n) {
            dino_seterr(err, "rank %d: gradient bucket cuts must be ascending offsets within [0, %zu]", d->rank, n);
            return NULL;
        }
    DistGrads *g = dino_calloc(1, sizeof *g);
    g->d = d, g->nccl = nccl, g->buf = grads, g->n = n, g->zero = zero;
    // Walk the tensors from the end of the buffer (where backward finishes first) towards the start,
    // closing a bucket once it holds bucket_floats; bucket 0 is the one at the start of the buffer.
    size_t *ends = dino_malloc(sizeof(size_t) * ((size_t)n_cuts + 2));
    int ne = 0;
    size_t hi = n;
    for (int i = n_cuts - 1; i >= -1; i--) {
        size_t c = i >= 0 ? cuts[i] : 0;
        if (c >= hi) continue;
        if (hi - c >= bucket_floats || i < 0) {
            ends[ne++] = hi;
            hi = c;
        }
    }
    if (n == 0) ends[ne++] = 0;
    // A single tensor larger than BUCKET_MAX_ELEMS gets split inside; count those splits first.
    int nb = 0;
    size_t lo = 0;
    for (int k = ne - 1; k >= 0; k--) {
        nb += ends[k] > lo ? (int)((ends[k] - lo + BUCKET_MAX_ELEMS - 1) / BUCKET_MAX_ELEMS) : 1;
        lo = ends[k];
    }
    g->b = dino_calloc((size_t)nb, sizeof(Bucket));
    g->order = dino_calloc((size_t)nb, sizeof(int));
    int k = 0;
    lo = 0;
    for (int e = ne - 1; e >= 0; e--) {
        size_t end = ends[e];
        do {
            size_t len = end - lo < BUCKET_MAX_ELEMS ? end - lo : BUCKET_MAX_ELEMS;
            g->b[k].begin = lo;
            g->b[k].end = lo + len;
            lo += len;
            k++;
        } while (lo < end);
    }
    g->nb = k;
    free(ends);
#ifdef DINO_HAVE_MPI
    if (d->world > 1 && !nccl) {
        int w = d->world;
        size_t shard = n / (size_t)w;
        for (int i = 0; i < g->nb; i++) {
            Bucket *bk = &g->b[i];
            bk->count = dino_calloc((size_t)w, sizeof(int));
            bk->displ = dino_calloc((size_t)w, sizeof(int));
            bk->rcount = dino_calloc((size_t)w, sizeof(int));
            bk->rdispl = dino_calloc((size_t)w, sizeof(int));
            if (zero) partition_shards(bk->begin, bk->end, shard, w, bk->count, bk->displ);
            else partition_equal(bk->end - bk->begin, w, bk->count, bk->displ);
            size_t mine = (size_t)bk->count[d->rank];
            for (int r = 0; r < w; r++) bk->rcount[r] = (int)mine, bk->rdispl[r] = (int)((size_t)r * mine);
            bk->rows = dino_malloc(sizeof(float) * mine * (size_t)w);
        }
        if (mpi_ok(d, MPI_Comm_dup(d->impl->comm, &g->comm1), "MPI_Comm_dup", "dist_grads_new", err) ||
            mpi_ok(d, MPI_Comm_dup(d->impl->comm, &g->comm2), "MPI_Comm_dup", "dist_grads_new", err)) {
            dist_grads_free(g);
            return NULL;
        }
    }
#endif
    return g;
}

void dist_grads_free(DistGrads *g) {
    if (!g) return;
    for (int i = 0; i < g->nb; i++) {
        free(g->b[i].count);
        free(g->b[i].displ);
        free(g->b[i].rcount);
        free(g->b[i].rdispl);
        free(g->b[i].rows);
    }
#ifdef DINO_HAVE_MPI
    if (g->comm1) MPI_Comm_free(&g->comm1);
    if (g->comm2) MPI_Comm_free(&g->comm2);
#endif
    free(g->b);
    free(g->order);
    free(g);
}

void dist_grads_set_stream(DistGrads *g, void *compute_stream) { g->stream = compute_stream; }

int dist_grads_nbuckets(const DistGrads *g) { return g->nb; }
int dist_grads_issued(const DistGrads *g) { return g->n_issued; }
void dist_grads_bucket_range(const DistGrads *g, int k, size_t *begin, size_t *end) {
    *begin = g->b[k].begin;
    *end = g->b[k].end;
}

int dist_grads_begin_bucket(DistGrads *g, int k, char *err) {
    Dist *d = g->d;
    if (k < 0 || k >= g->nb) { dino_seterr(err, "rank %d: no gradient bucket %d (of %d)", d->rank, k, g->nb); return -1; }
    Bucket *bk = &g->b[k];
    if (bk->issued) { dino_seterr(err, "rank %d: gradient bucket %d issued twice in one step", d->rank, k); return -1; }
    bk->issued = 1;
    g->order[g->n_issued++] = k;
    if (d->world == 1) { bk->reduced = 1; g->n_reduced++; return 0; }
    float *base = g->buf + bk->begin;
    size_t m = bk->end - bk->begin;
    (void)m; // used by the NCCL path only
#ifdef DINO_HAVE_NCCL
    if (g->nccl) {
        // Ordered on the communication stream after all compute enqueued so far on g->stream.
        if (!g->zero) return dist_nccl_allreduce(g->nccl, base, m, 1, g->stream, err);
        size_t shard = g->n / (size_t)d->world;
        if (dist_nccl_group_start(g->nccl, err)) return -1;
        int rc = 0;
        for (size_t lo = bk->begin; !rc && lo < bk->end;) {
            int owner = (int)(lo / shard);
            size_t hi = (size_t)(owner + 1) * shard < bk->end ? (size_t)(owner + 1) * shard : bk->end;
            rc = dist_nccl_reduce(g->nccl, g->buf + lo, hi - lo, owner, 1, g->stream, err);
            lo = hi;
        }
        // The group is ended even after an error (a group left open swallows every later NCCL call);
        // the first error is the one reported.
        char end_err[DINO_ERRLEN];
        if (dist_nccl_group_end(g->nccl, rc ? end_err : err)) rc = -1;
        return rc;
    }
#endif
#ifdef DINO_HAVE_MPI
    char what[64];
    snprintf(what, sizeof what, "gradient bucket %d", k);
    return mpi_ok(d, MPI_Ialltoallv(base, bk->count, bk->displ, MPI_FLOAT, bk->rows, bk->rcount, bk->rdispl,
                                    MPI_FLOAT, g->comm1, &bk->req1),
                  "MPI_Ialltoallv", what, err);
#else
    (void)base, (void)m;
    return -1;
#endif
}

int dist_grads_ready_from(DistGrads *g, size_t offset, char *err) {
    for (int k = g->nb - 1; k >= 0 && g->b[k].begin >= offset; k--)
        if (!g->b[k].issued && dist_grads_begin_bucket(g, k, err)) return -1;
    return dist_grads_progress(g, err);
}

#ifdef DINO_HAVE_MPI
// Phase 2 of the bucket at position i of the issue order, once its alltoallv has completed.
static int grads_reduce(DistGrads *g, Bucket *bk, int k, char *err) {
    Dist *d = g->d;
    size_t mine = (size_t)bk->count[d->rank];
    sum_rows(g->buf + bk->begin + bk->displ[d->rank], bk->rows, mine, d->world, DIST_F32, 1);
    bk->reduced = 1;
    if (g->zero) return 0;
    char what[64];
    snprintf(what, sizeof what, "gradient bucket %d", k);
    return mpi_ok(d, MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, g->buf + bk->begin, bk->count, bk->displ,
                                     MPI_FLOAT, g->comm2, &bk->req2),
                  "MPI_Iallgatherv", what, err);
}
#endif

int dist_grads_progress(DistGrads *g, char *err) {
#ifdef DINO_HAVE_MPI
    if (g->d->world == 1 || g->nccl) return 0;
    // Phase 2 starts strictly in issue order, so every rank issues the allgathers in the same order.
    while (g->n_reduced < g->n_issued) {
        int k = g->order[g->n_reduced];
        Bucket *bk = &g->b[k];
        int flag = 0;
        char what[64];
        snprintf(what, sizeof what, "gradient bucket %d", k);
        if (mpi_ok(g->d, MPI_Test(&bk->req1, &flag, MPI_STATUS_IGNORE), "MPI_Test", what, err)) return -1;
        if (!flag) break;
        if (grads_reduce(g, bk, k, err)) return -1;
        g->n_reduced++;
    }
#endif
    (void)err;
    return 0;
}

int dist_grads_wait(DistGrads *g, char *err) {
    Dist *d = g->d;
    for (int k = g->nb - 1; k >= 0; k--)
        if (!g->b[k].issued && dist_grads_begin_bucket(g, k, err)) return -1;
    int rc = 0;
    if (d->world > 1) {
#ifdef DINO_HAVE_NCCL
        if (g->nccl) rc = dist_nccl_sync(g->nccl, g->zero ? "gradient reduce (ZeRO-1)" : "gradient all-reduce", err);
#endif
#ifdef DINO_HAVE_MPI
        if (!g->nccl) {
            watch_arm(d, "gradient %s (%d buckets, %zu floats)", g->zero ? "reduce-scatter" : "all-reduce", g->nb, g->n);
            while (!rc && g->n_reduced < g->n_issued) {
                int k = g->order[g->n_reduced];
                Bucket *bk = &g->b[k];
                char what[64];
                snprintf(what, sizeof what, "gradient bucket %d", k);
                rc = mpi_ok(d, MPI_Wait(&bk->req1, MPI_STATUS_IGNORE), "MPI_Wait", what, err);
                if (!rc) rc = grads_reduce(g, bk, k, err);
                g->n_reduced++;
            }
            for (int i = 0; !rc && !g->zero && i < g->n_issued; i++) {
                Bucket *bk = &g->b[g->order[i]];
                rc = mpi_ok(d, MPI_Wait(&bk->req2, MPI_STATUS_IGNORE), "MPI_Wait", "gradient allgather", err);
            }
            watch_disarm(d);
        }
#endif
    }
    // Ready for the next step.
    for (int k = 0; k < g->nb; k++) g->b[k].issued = g->b[k].reduced = 0;
    g->n_issued = g->n_reduced = 0;
    return rc;
}
