// Distributed layer tests. Multi-rank cases re-launch this binary under
//   mpirun --allow-run-as-root --oversubscribe -n N <this binary> worker_<name>
// on the CPU; each rank runs the worker, which checks its own results (a failure makes mpirun fail).
// Workers are registered with WORKER(...) so that ctest does not list them as cases of their own.
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/check.h"
#include "common/rng.h"
#include "dist/dist.h"
#include "tests/harness.h"
#ifdef DINO_HAVE_MPI
#include <mpi.h>
#endif
#ifdef DINO_HAVE_NCCL
#include <cuda_runtime.h>

#include "dist/nccl.h"
#include "model/cuda/cuda_device.h"
#endif

#define WORKER(name)                                                                               \
    static void worker_##name(void);                                                               \
    __attribute__((constructor)) static void worker_reg_##name(void) {                             \
        test_register("worker_" #name, worker_##name);                                             \
    }                                                                                              \
    static void worker_##name(void)

// ---- launching ------------------------------------------------------------------------------------
static void need_mpirun(void) {
#ifndef DINO_HAVE_MPI
    test_skip("built without MPI");
#else
    if (system("mpirun --version > /dev/null 2>&1") != 0) test_skip("mpirun not found");
#endif
}

// Runs `worker` on n ranks; returns the exit status, the combined output in out (NUL-terminated).
static int run_mpi(int n, const char *worker, const char *env, char *out, size_t outlen, double *seconds) {
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) { perror("readlink"); exit(2); }
    self[len] = 0;
    char cmd[8192];
    // vader (shared memory) without CMA single copy: works in containers without ptrace rights.
    snprintf(cmd, sizeof cmd,
             "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 %s "
             "timeout -k 5 120 mpirun --allow-run-as-root --oversubscribe --bind-to none "
             "--mca btl self,vader --mca btl_vader_single_copy_mechanism none --mca pml ob1 "
             "-x OMP_NUM_THREADS -x DINO_DIST_TIMEOUT_S -x DINO_TEST_FAULT -n %d %s %s 2>&1",
             env ? env : "", n, self, worker);
    double t0 = dino_wall_s();
    FILE *p = popen(cmd, "r");
    if (!p) { perror("popen"); exit(2); }
    size_t used = 0;
    out[0] = 0;
    char line[4096];
    while (fgets(line, sizeof line, p)) {
        size_t l = strlen(line);
        if (used + l + 1 < outlen) { memcpy(out + used, line, l + 1); used += l; }
    }
    int st = pclose(p);
    if (seconds) *seconds = dino_wall_s() - t0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int count_substr(const char *s, const char *needle) {
    int c = 0;
    for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle)) c++;
    return c;
}

static void run_worker_ok(int n, const char *worker, char *out, size_t outlen) {
    double sec = 0;
    int rc = run_mpi(n, worker, NULL, out, outlen, &sec);
    char want[128];
    snprintf(want, sizeof want, "ok %s", worker);
    int oks = count_substr(out, want);
    if (rc != 0 || oks != n) fprintf(stderr, "---- output of %d ranks ----\n%s----\n", n, out);
    CHECK(rc == 0, "mpirun -n %d %s exited with %d", n, worker, rc);
    CHECK(oks == n, "%d of %d ranks reported ok", oks, n);
    for (int r = 0; r < n; r++) { // each rank saw the whole world (not n lone processes)
        snprintf(want, sizeof want, "rank %d/%d (local %d/%d) launched by mpirun", r, n, r, n);
        CHECK(strstr(out, want), "no rank reported '%s'", want);
    }
    printf("mpirun -n %d %s: %.2f s\n", n, worker, sec);
}

// ---- shared inputs ---------------------------------------------------------------------------------
// What rank r contributes at element i: values over six decades, so the summation order shows in the bits.
static void fill_f32(float *x, size_t n, int rank, uint64_t key) {
    Rng r = rng_make(0xd15757, key, (uint64_t)rank, 0);
    for (size_t i = 0; i < n; i++) x[i] = (float)(rng_normal(&r) * pow(10.0, rng_uniform_range(&r, -3, 3)));
}
static void fill_f64(double *x, size_t n, int rank, uint64_t key) {
    Rng r = rng_make(0xd15758, key, (uint64_t)rank, 0);
    for (size_t i = 0; i < n; i++) x[i] = rng_normal(&r) * pow(10.0, rng_uniform_range(&r, -6, 6));
}
static void fill_i64(int64_t *x, size_t n, int rank, uint64_t key) {
    Rng r = rng_make(0xd15759, key, (uint64_t)rank, 0);
    for (size_t i = 0; i < n; i++) x[i] = (int64_t)(rng_u64(&r) >> 4) - ((int64_t)1 << 59);
}
// The contract: x_0 + x_1 + ... + x_{w-1}, left to right, in the element type.
static void expected_f32(float *out, size_t n, int world, uint64_t key) {
    float *t = dino_malloc(sizeof(float) * (n ? n : 1));
    for (int r = 0; r < world; r++) {
        fill_f32(t, n, r, key);
        for (size_t i = 0; i < n; i++) out[i] = r == 0 ? t[i] : out[i] + t[i];
    }
    free(t);
}

static uint64_t hash_bytes(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static void init_or_die(Dist *d, double timeout) {
    char err[DINO_ERRLEN];
    if (dist_init(d, timeout, err)) { fprintf(stderr, "dist_init: %s\n", err); exit(1); }
    dist_describe(d, err, sizeof err);
    printf("%s\n", err);
}

// ---- workers ---------------------------------------------------------------------------------------
// dist_split: ranks {0} and {1, 2} (multi-student distillation's student groups): each group's rank,
// world and collectives are its own, and the world's still work beside them.
WORKER(split) {
    Dist d, g;
    init_or_die(&d, 60);
    char err[DINO_ERRLEN];
    const int color = d.rank == 0 ? 0 : 1;
    CHECK(dist_split(&d, color, &g, err) == 0, "%s", err);
    const int want_world = color == 0 ? 1 : d.world - 1, want_rank = color == 0 ? 0 : d.rank - 1;
    CHECK(g.world == want_world && g.rank == want_rank, "rank %d: group rank %d/%d, want %d/%d", d.rank, g.rank,
          g.world, want_rank, want_world);
    int64_t v = d.rank + 1;
    CHECK(dist_allreduce_sum_i64(&g, &v, 1, err) == 0, "%s", err);
    int64_t want = color == 0 ? 1 : (int64_t)d.world * (d.world + 1) / 2 - 1;
    CHECK(v == want, "rank %d: group sum %lld, want %lld", d.rank, (long long)v, (long long)want);
    int64_t mine = d.rank, *all = dino_malloc(sizeof(int64_t) * (size_t)g.world);
    CHECK(dist_allgather(&g, &mine, all, sizeof mine, err) == 0, "%s", err);
    for (int r = 0; r < g.world; r++) CHECK(all[r] == (color == 0 ? 0 : r + 1), "group allgather [%d] = %lld", r, (long long)all[r]);
    free(all);
    int64_t w = 1;
    CHECK(dist_allreduce_sum_i64(&d, &w, 1, err) == 0, "%s", err);
    CHECK(w == d.world, "world sum after the split %lld", (long long)w);
    dist_finalize(&g);
    CHECK(dist_barrier(&d, err) == 0, "%s", err);
    dist_finalize(&d);
}

WORKER(collectives) {
    Dist d;
    init_or_die(&d, 60);
    char err[DINO_ERRLEN];
    int me = d.rank, w = d.world;
    const size_t sizes[] = {1, 2, 3, 5, 17, 1001, 100003};
    uint64_t h = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        size_t n = sizes[si];
        // f32: bitwise equal to the rank-order sum
        float *x = dino_malloc(n * 4), *want = dino_malloc(n * 4);
        fill_f32(x, n, me, si);
        expected_f32(want, n, w, si);
        CHECK(dist_allreduce_sum_f32(&d, x, n, err) == 0, "%s", err);
        CHECK(memcmp(x, want, n * 4) == 0, "allreduce f32 n=%zu differs from the rank-order sum", n);
        h ^= hash_bytes(x, n * 4) + si;
        // f64 and i64
        double *y = dino_malloc(n * 8), *ywant = dino_calloc(n, 8), *yt = dino_malloc(n * 8);
        int64_t *z = dino_malloc(n * 8), *zwant = dino_calloc(n, 8), *zt = dino_malloc(n * 8);
        fill_f64(y, n, me, si);
        fill_i64(z, n, me, si);
        for (int r = 0; r < w; r++) {
            fill_f64(yt, n, r, si);
            fill_i64(zt, n, r, si);
            for (size_t i = 0; i < n; i++) {
                ywant[i] = r == 0 ? yt[i] : ywant[i] + yt[i];
                zwant[i] += zt[i];
            }
        }
        CHECK(dist_allreduce_sum_f64(&d, y, n, err) == 0, "%s", err);
        CHECK(dist_allreduce_sum_i64(&d, z, n, err) == 0, "%s", err);
        CHECK(memcmp(y, ywant, n * 8) == 0, "allreduce f64 n=%zu differs from the rank-order sum", n);
        CHECK(memcmp(z, zwant, n * 8) == 0, "allreduce i64 n=%zu wrong", n);
        // the objective's Collective table is the same reduction
        Collective c = dist_collective(&d);
        CHECK(collective_world(&c) == w, "Collective world %d != %d", collective_world(&c), w);
        fill_f32(x, n, me, si);
        collective_sum_f32(&c, x, n);
        CHECK(memcmp(x, want, n * 4) == 0, "Collective sum n=%zu differs", n);
        free(x), free(want), free(y), free(ywant), free(yt), free(z), free(zwant), free(zt);
    }
    printf("HASH rank %d %016llx\n", me, (unsigned long long)h);

    // broadcast from the last rank, odd byte counts
    for (size_t bytes = 1; bytes < 200000; bytes = bytes * 37 + 3) {
        unsigned char *b = dino_malloc(bytes);
        for (size_t i = 0; i < bytes; i++) b[i] = me == w - 1 ? (unsigned char)(i * 7 + 3) : 0xEE;
        CHECK(dist_bcast(&d, b, bytes, w - 1, err) == 0, "%s", err);
        size_t bad = 0;
        for (size_t i = 0; i < bytes; i++) bad += b[i] != (unsigned char)(i * 7 + 3);
        CHECK(bad == 0, "bcast of %zu bytes: %zu wrong", bytes, bad);
        free(b);
    }
    // allgather of 7 bytes per rank, out of place and in place
    unsigned char send[7], recv[7 * 16], inplace[7 * 16];
    for (int i = 0; i < 7; i++) send[i] = (unsigned char)(me * 10 + i);
    memcpy(inplace + 7 * me, send, 7);
    CHECK(dist_allgather(&d, send, recv, 7, err) == 0, "%s", err);
    CHECK(dist_allgather(&d, inplace + 7 * me, inplace, 7, err) == 0, "%s", err);
    for (int r = 0; r < w; r++)
        for (int i = 0; i < 7; i++) {
            CHECK(recv[7 * r + i] == (unsigned char)(r * 10 + i), "allgather rank %d byte %d", r, i);
            CHECK(inplace[7 * r + i] == (unsigned char)(r * 10 + i), "in-place allgather rank %d byte %d", r, i);
        }
    // ZeRO-1: reduce-scatter of a padded buffer = the owned part of the all-reduce; all-gather of shards
    const size_t totals[] = {1, 5, 1001, 30011};
    for (size_t ti = 0; ti < 4; ti++) {
        DistShard s = dist_shard(totals[ti], w, me, 16);
        float *g = dino_calloc(s.padded, 4), *want = dino_calloc(s.padded, 4), *orig = dino_calloc(s.padded, 4);
        fill_f32(g, s.total, me, 100 + ti);
        memcpy(orig, g, s.padded * 4);
        expected_f32(want, s.total, w, 100 + ti);
        CHECK(dist_reduce_scatter_sum_f32(&d, g, s.padded, err) == 0, "%s", err);
        CHECK(memcmp(g + s.begin, want + s.begin, s.shard * 4) == 0, "reduce-scatter total=%zu: shard differs", s.total);
        CHECK(memcmp(g, orig, s.begin * 4) == 0 && memcmp(g + s.end, orig + s.end, (s.padded - s.end) * 4) == 0,
              "reduce-scatter touched memory outside the shard");
        for (size_t i = 0; i < s.padded; i++) g[i] = i >= s.begin && i < s.end ? (float)i * 0.5f : -1.0f;
        CHECK(dist_allgather_shards_f32(&d, g, s.padded, err) == 0, "%s", err);
        size_t bad = 0;
        for (size_t i = 0; i < s.padded; i++) bad += g[i] != (float)i * 0.5f;
        CHECK(bad == 0, "allgather of shards total=%zu: %zu wrong", s.total, bad);
        free(g), free(want), free(orig);
    }
    CHECK(dist_barrier(&d, err) == 0, "%s", err);
    dist_finalize(&d);
}

// Tensor boundaries of a fake model of n floats (the same on every rank).
static int fake_cuts(size_t n, size_t *cuts, int max) {
    Rng r = rng_make(42, 1, 2, 3);
    int k = 0;
    for (size_t off = 0; off < n && k < max; off += 1 + rng_below(&r, 3000)) cuts[k++] = off;
    return k;
}

// Backward pass order: finishes tensors from the end of the buffer; progress between "layers".
static void run_bucketed(DistGrads *g, const size_t *cuts, int nc, char *err) {
    for (int t = nc - 1; t >= 0; t--) {
        CHECK(dist_grads_ready_from(g, cuts[t], err) == 0, "%s", err);
        if (t % 5 == 0) CHECK(dist_grads_progress(g, err) == 0, "%s", err);
    }
    CHECK(dist_grads_wait(g, err) == 0, "%s", err);
}

WORKER(grad_buckets) {
    Dist d;
    init_or_die(&d, 60);
    char err[DINO_ERRLEN];
    int me = d.rank, w = d.world;
    const size_t n = 100003;
    size_t cuts[512];
    int nc = fake_cuts(n, cuts, 512);
    DistShard s = dist_shard(n, w, me, 16);
    float *g = dino_calloc(s.padded, 4), *ref = dino_calloc(s.padded, 4);
    for (int zero = 0; zero <= 1; zero++) {
        size_t len = zero ? s.padded : n;
        DistGrads *dg = dist_grads_new(&d, NULL, g, len, cuts, nc, 4096, zero, err);
        CHECK(dg != NULL, "%s", err);
        if (!dg) break;
        int nb = dist_grads_nbuckets(dg);
        CHECK(nb > 5, "only %d buckets", nb);
        size_t prev = 0;
        for (int k = 0; k < nb; k++) {
            size_t b, e;
            dist_grads_bucket_range(dg, k, &b, &e);
            CHECK(b == prev && e > b, "bucket %d [%zu,%zu) does not follow %zu", k, b, e, prev);
            int at_cut = b == 0;
            for (int c = 0; c < nc; c++) at_cut |= cuts[c] == b;
            CHECK(at_cut, "bucket %d starts at %zu, not at a tensor boundary", k, b);
            CHECK(k == 0 || e - b >= 4096, "bucket %d holds %zu < 4096 floats", k, e - b);
            prev = e;
        }
        CHECK(prev == len, "buckets end at %zu, not %zu", prev, len);
        for (int step = 0; step < 3; step++) {
            memset(g, 0, s.padded * 4);
            fill_f32(g, n, me, 1000 + step);
            memcpy(ref, g, s.padded * 4);
            // reference: one all-reduce of the whole buffer, then / world
            CHECK(dist_allreduce_sum_f32(&d, ref, len, err) == 0, "%s", err);
            for (size_t i = 0; i < len; i++) ref[i] /= (float)w;
            if (step == 2) { // explicit issue order instead of ready_from
                for (int k = nb - 1; k >= 0; k -= 2) CHECK(dist_grads_begin_bucket(dg, k, err) == 0, "%s", err);
                CHECK(dist_grads_wait(dg, err) == 0, "%s", err);
            } else {
                run_bucketed(dg, cuts, nc, err);
            }
            size_t b = zero ? s.begin : 0, e = zero ? s.end : n;
            CHECK(memcmp(g + b, ref + b, (e - b) * 4) == 0, "zero=%d step %d: bucketed result differs from one all-reduce",
                  zero, step);
        }
        dist_grads_free(dg);
    }
    free(g), free(ref);
    dist_finalize(&d);
}

// The last rank misbehaves ($DINO_TEST_FAULT: "skip" sleeps instead of joining the all-reduce,
// "skip_grads" the same in the bucketed gradient all-reduce, "die" exits at once, "stop" stops itself
// with SIGSTOP as a hung process would, "other" enters a barrier where the others enter the all-reduce);
// the others must not hang.
WORKER(fault) {
    Dist d;
    init_or_die(&d, 0); // timeout from DINO_DIST_TIMEOUT_S
    char err[DINO_ERRLEN];
    const char *fault = getenv("DINO_TEST_FAULT");
    fault = fault ? fault : "skip";
    float x[3] = {1, 2, 3};
    size_t cuts[] = {0, 1000, 2000};
    float *g = dino_calloc(3000, 4);
    DistGrads *dg = dist_grads_new(&d, NULL, g, 3000, cuts, 3, 500, 0, err);
    CHECK(dg != NULL, "%s", err);
    if (d.world > 1 && d.rank == d.world - 1) {
        if (strcmp(fault, "die") == 0) _exit(3);
        if (strcmp(fault, "stop") == 0) raise(SIGSTOP); // answers nothing until the job ends it
        if (strcmp(fault, "other") == 0) dist_barrier(&d, err);
        sleep(60); // skips the collective the others wait in
    } else if (strcmp(fault, "skip_grads") == 0) {
        CHECK(dist_grads_ready_from(dg, 1000, err) == 0 && dist_grads_wait(dg, err) == 0, "%s", err);
    } else {
        CHECK(dist_allreduce_sum_f32(&d, x, 3, err) == 0, "%s", err);
    }
    dist_grads_free(dg);
    free(g);
    dist_finalize(&d);
}

WORKER(mpi_error) {
    Dist d;
    init_or_die(&d, 60);
    char err[DINO_ERRLEN] = "";
    char b[4] = {0};
    if (d.world > 1) {
        int rc = dist_bcast(&d, b, sizeof b, d.world + 3, err); // no such root
        CHECK(rc == -1, "bcast from a missing root returned %d", rc);
        char want[32];
        snprintf(want, sizeof want, "rank %d/%d", d.rank, d.world);
        CHECK(strstr(err, want) && strstr(err, "MPI_Bcast"), "error message does not name the rank and call: %s", err);
        printf("rank %d error: %s\n", d.rank, err);
    }
    CHECK(dist_barrier(&d, err) == 0, "%s", err); // still usable afterwards
    dist_finalize(&d);
}

// ---- cases -----------------------------------------------------------------------------------------
static char out_buf[1 << 20], out_buf2[1 << 20];

TEST(collectives_np2) {
    need_mpirun();
    run_worker_ok(2, "worker_collectives", out_buf, sizeof out_buf);
}

TEST(split_into_groups_np3) {
    need_mpirun();
    run_worker_ok(3, "worker_split", out_buf, sizeof out_buf);
}

TEST(collectives_np3) {
    need_mpirun();
    run_worker_ok(3, "worker_collectives", out_buf, sizeof out_buf);
}

// The same inputs give the same bits, run after run (no dependence on timing or MPI's algorithm choice).
TEST(allreduce_bitwise_repeatable) {
    need_mpirun();
    for (int n = 2; n <= 3; n++) {
        run_worker_ok(n, "worker_collectives", out_buf, sizeof out_buf);
        run_worker_ok(n, "worker_collectives", out_buf2, sizeof out_buf2);
        int found = 0;
        for (int r = 0; r < n; r++) {
            char key[64];
            snprintf(key, sizeof key, "HASH rank %d ", r);
            const char *a = strstr(out_buf, key), *b = strstr(out_buf2, key);
            CHECK(a && b, "no hash from rank %d", r);
            if (!a || !b) continue;
            found++;
            CHECK(strncmp(a, b, strlen(key) + 16) == 0, "run 1 and run 2 differ on rank %d (n=%d)", r, n);
            const char *r0 = strstr(out_buf, "HASH rank 0 ");
            CHECK(strncmp(a + strlen(key), r0 + 12, 16) == 0, "rank %d has other bits than rank 0", r);
        }
        CHECK(found == n, "hashes from %d of %d ranks", found, n);
    }
}

TEST(grad_buckets_equal_one_allreduce_np2) {
    need_mpirun();
    run_worker_ok(2, "worker_grad_buckets", out_buf, sizeof out_buf);
}

TEST(grad_buckets_equal_one_allreduce_np3) {
    need_mpirun();
    run_worker_ok(3, "worker_grad_buckets", out_buf, sizeof out_buf);
}

TEST(mpi_error_names_rank) {
    need_mpirun();
    run_worker_ok(2, "worker_mpi_error", out_buf, sizeof out_buf);
}

// A rank that skips a collective: the others' watchdog ends the whole job within the timeout, naming
// the rank and the collective, instead of hanging.
static void expect_abort(const char *fault, const char *collective) {
    need_mpirun();
    char env[128];
    snprintf(env, sizeof env, "DINO_DIST_TIMEOUT_S=1.5 DINO_TEST_FAULT=%s", fault);
    double sec = 0;
    int rc = run_mpi(2, "worker_fault", env, out_buf, sizeof out_buf, &sec);
    printf("fault '%s': job ended after %.2f s with status %d\n", fault, sec, rc);
    int named = strstr(out_buf, "rank 0/2") && strstr(out_buf, collective) && strstr(out_buf, "timeout");
    if (!named || rc == 0) fprintf(stderr, "---- output ----\n%s----\n", out_buf);
    CHECK(rc != 0 && rc != 124 && rc != 137, "job status %d: expected an abort, not success or the outer timeout", rc);
    CHECK(named, "abort message does not name rank 0 and '%s'", collective);
    CHECK(sec < 30, "the job took %.1f s to end (rank 1 sleeps 60 s)", sec);
}

TEST(hang_watchdog_aborts_job) { expect_abort("skip", "allreduce_sum_f32"); }

// The message of a collective timeout names the rank that did not arrive (not only the one that waited),
// its host and the collective, and says what that rank is doing: stopped (SIGSTOP: no answer on the side
// channel), outside any collective (it skipped it), or in another collective.
// `how`: what the message says of the last rank; `alt` (or NULL): also accepted, what rank n-1 says of rank 0.
static void expect_culprit(int n, const char *fault, const char *timeout, const char *how, const char *alt) {
    need_mpirun();
    char env[128], host[128] = "?", want[512];
    gethostname(host, sizeof host - 1);
    snprintf(env, sizeof env, "DINO_DIST_TIMEOUT_S=%s DINO_TEST_FAULT=%s", timeout, fault);
    double sec = 0;
    int rc = run_mpi(n, "worker_fault", env, out_buf, sizeof out_buf, &sec);
    printf("fault '%s' on rank %d of %d: job ended after %.2f s with status %d\n", fault, n - 1, n, sec, rc);
    snprintf(want, sizeof want, "rank %d/%d (host %s) has not entered collective 'allreduce_sum_f32(n=3)' #1: %s", n - 1,
             n, host, how);
    int named = strstr(out_buf, want) != NULL;
    if (!named && alt) {
        char want2[512];
        snprintf(want2, sizeof want2, "rank 0/%d (host %s) has not entered collective %s", n, host, alt);
        named = strstr(out_buf, want2) != NULL;
    }
    fprintf(named && rc != 0 && sec < 20 ? stdout : stderr, "---- output ----\n%s----\n", out_buf);
    CHECK(rc != 0 && rc != 124 && rc != 137, "job status %d: expected an abort, not success or the outer timeout", rc);
    CHECK(named, "no surviving rank said '%s'", want);
    CHECK(sec < 20, "the job took %.1f s to end (timeout %s s)", sec, timeout);
}

TEST(stalled_rank_is_named) { expect_culprit(3, "stop", "3", "it is stalled (no answer within", NULL); }

TEST(skipping_rank_is_named) { expect_culprit(2, "skip", "1.5", "it is outside any collective", NULL); }

// Both ranks wait, each in its own collective: whichever reports first names the other.
TEST(rank_in_other_collective_is_named) {
    expect_culprit(2, "other", "1.5", "it is in collective 'barrier' #1",
                   "'barrier' #1: it is in collective 'allreduce_sum_f32(n=3)' #1");
}

TEST(hang_in_gradient_buckets_aborts_job) { expect_abort("skip_grads", "gradient all-reduce"); }

// A rank that dies: the launcher ends the others at once (the watchdog timeout is set far beyond the
// 30 s allowed, so only the launcher can end the job in time).
TEST(dead_rank_ends_job) {
    need_mpirun();
    double sec = 0;
    int rc = run_mpi(2, "worker_fault", "DINO_DIST_TIMEOUT_S=100 DINO_TEST_FAULT=die", out_buf,
                     sizeof out_buf, &sec);
    printf("dead rank: job ended after %.2f s with status %d\n", sec, rc);
    if (rc == 0 || sec >= 30) fprintf(stderr, "---- output ----\n%s----\n", out_buf);
    CHECK(rc != 0 && rc != 124 && rc != 137, "job status %d", rc);
    CHECK(sec < 30, "the job took %.1f s to end after a rank died", sec);
}

TEST(zero_shards_cover_buffer) {
    const size_t totals[] = {0, 1, 2, 3, 15, 16, 17, 1000, 100003};
    const size_t aligns[] = {1, 16};
    for (int world = 1; world <= 5; world++)
        for (size_t ti = 0; ti < sizeof totals / sizeof *totals; ti++)
            for (int ai = 0; ai < 2; ai++) {
                size_t total = totals[ti], align = aligns[ai], next = 0, valid = 0;
                for (int r = 0; r < world; r++) {
                    DistShard s = dist_shard(total, world, r, align);
                    CHECK(s.padded >= total && s.padded % ((size_t)world * align) == 0 &&
                              s.padded - total <= (size_t)world * align,
                          "padded %zu for total %zu world %d align %zu", s.padded, total, world, align);
                    CHECK(s.begin == next && s.end - s.begin == s.shard && s.shard * (size_t)world == s.padded,
                          "rank %d shard [%zu,%zu) does not follow %zu", r, s.begin, s.end, next);
                    CHECK(s.begin % align == 0, "shard start %zu not aligned to %zu", s.begin, align);
                    CHECK(s.valid_end >= s.begin && s.valid_end <= s.end && s.valid_end <= (total > s.begin ? total : s.begin),
                          "valid_end %zu", s.valid_end);
                    valid += s.valid_end - s.begin;
                    next = s.end;
                    if (r == world - 1) CHECK(s.end == s.padded, "last shard ends at %zu != %zu", s.end, s.padded);
                }
                CHECK(valid == total, "shards hold %zu of %zu real floats (world %d)", valid, total, world);
            }
}

TEST(single_process_without_launcher) {
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "PMI_SIZE",
                          "SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "DINO_DIST"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) unsetenv(vars[i]);
    Dist d;
    char err[DINO_ERRLEN];
    CHECK(dist_init(&d, 0, err) == 0, "%s", err);
    CHECK(d.rank == 0 && d.world == 1 && d.local_rank == 0 && !d.using_mpi, "rank %d world %d", d.rank, d.world);
    CHECK(strcmp(d.launcher, "none") == 0, "launcher %s", d.launcher);
#ifdef DINO_HAVE_MPI
    int inited = 1;
    MPI_Initialized(&inited);
    CHECK(!inited, "MPI was initialised without a launcher");
#endif
    float x[5] = {1, 2, 3, 4, 5};
    CHECK(dist_allreduce_sum_f32(&d, x, 5, err) == 0 && x[4] == 5, "allreduce changed a world of 1");
    int64_t c = 7;
    CHECK(dist_allreduce_sum_i64(&d, &c, 1, err) == 0 && c == 7, "i64");
    float y[5];
    CHECK(dist_allgather(&d, x, y, sizeof x, err) == 0 && memcmp(x, y, sizeof x) == 0, "allgather copy");
    CHECK(dist_bcast(&d, x, sizeof x, 0, err) == 0 && dist_barrier(&d, err) == 0, "%s", err);
    CHECK(dist_bcast(&d, x, sizeof x, 1, err) == -1, "broadcast from rank 1 of 1 accepted");
    Collective col = dist_collective(&d);
    collective_sum_f32(&col, x, 5);
    CHECK(x[0] == 1 && collective_world(&col) == 1, "Collective on one process");
    // gradient buckets are a no-op that still follows the protocol
    size_t cuts[] = {0, 3, 40, 41, 90};
    float *g = dino_calloc(112, 4);
    for (int i = 0; i < 100; i++) g[i] = (float)i;
    DistGrads *dg = dist_grads_new(&d, NULL, g, 100, cuts, 5, 30, 0, err);
    // from the end: [41,100) holds >= 30 floats, then [3,41), then what is left, [0,3)
    CHECK(dg && dist_grads_nbuckets(dg) == 3, "expected buckets [0,3) [3,41) [41,100)");
    size_t b, e;
    dist_grads_bucket_range(dg, 1, &b, &e);
    CHECK(b == 3 && e == 41, "bucket 1 is [%zu,%zu)", b, e);
    CHECK(dist_grads_ready_from(dg, 90, err) == 0 && dist_grads_wait(dg, err) == 0, "%s", err);
    CHECK(dist_grads_begin_bucket(dg, 2, err) == 0 && dist_grads_begin_bucket(dg, 2, err) == -1,
          "a bucket issued twice in one step must be refused");
    CHECK(dist_grads_wait(dg, err) == 0 && g[99] == 99.0f, "wait changed a world of 1");
    dist_grads_free(dg);
    free(g);
    dist_finalize(&d);
}

// srun without a PMI plugin starts N singletons that each see a world of 1: refused, not N lone trainings.
TEST(srun_without_pmi_is_refused) {
#ifndef DINO_HAVE_MPI
    test_skip("built without MPI");
#else
    unsetenv("OMPI_COMM_WORLD_SIZE"), unsetenv("PMIX_RANK"), unsetenv("PMI_SIZE"), unsetenv("PMI_RANK");
    unsetenv("DINO_DIST");
    setenv("SLURM_STEP_NUM_TASKS", "2", 1);
    setenv("SLURM_PROCID", "0", 1);
    Dist d;
    char err[DINO_ERRLEN] = "";
    int rc = dist_init(&d, 0, err);
    CHECK(rc == -1 && strstr(err, "MPI sees a world of 1") && strstr(err, "rank 0"), "rc %d: %s", rc, err);
    dist_finalize(&d);
#endif
}

// DINO_DIST=mpi without a launcher: an MPI singleton, world 1.
TEST(forced_mpi_singleton) {
#ifndef DINO_HAVE_MPI
    test_skip("built without MPI");
#else
    setenv("DINO_DIST", "mpi", 1);
    Dist d;
    char err[DINO_ERRLEN] = "";
    CHECK(dist_init(&d, 5, err) == 0, "%s", err);
    int inited = 0;
    MPI_Initialized(&inited);
    CHECK(inited && d.using_mpi && d.world == 1 && d.rank == 0 && d.timeout_s == 5, "world %d", d.world);
    float x[2] = {1, 2};
    CHECK(dist_allreduce_sum_f32(&d, x, 2, err) == 0 && x[1] == 2, "%s", err);
    dist_finalize(&d);
    setenv("DINO_DIST", "bogus", 1);
    CHECK(dist_init(&d, 0, err) == -1 && strstr(err, "DINO_DIST"), "DINO_DIST=bogus accepted");
#endif
}

TEST(launch_detection_refuses_mismatch) {
#ifdef DINO_HAVE_MPI
    test_skip("needs a build without MPI (a launcher then cannot be honoured)");
#else
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    Dist d;
    char err[DINO_ERRLEN] = "";
    CHECK(dist_init(&d, 0, err) == -1 && strstr(err, "no MPI"), "launched with 2 processes without MPI: %s", err);
    unsetenv("OMPI_COMM_WORLD_SIZE");
#endif
}

// ---- NCCL (GPU) ------------------------------------------------------------------------------------
#ifdef DINO_HAVE_NCCL
// The NCCL cases' collective timeout (dist_init's watchdog and dist_nccl_new's wait): DINO_DIST_TIMEOUT_S
// when set (tools/gpu_check.sh sets 30 s: a hung collective fails its case well inside a lease call; the
// ranks get it through run_mpi's -x), else 60 s.
static double nccl_timeout_s(void) {
    const char *t = getenv("DINO_DIST_TIMEOUT_S");
    return t && atof(t) > 0 ? atof(t) : 60;
}

static void nccl_check(DistNccl *nc, int rank, int world) {
    char err[DINO_ERRLEN];
    const size_t n = 1000003; // odd
    size_t shard = (n + (size_t)world - 1) / (size_t)world, padded = shard * (size_t)world;
    float *h = dino_calloc(padded, 4), *want = dino_calloc(padded, 4), *got = dino_calloc(padded, 4);
    fill_f32(h, n, rank, 7);
    for (int r = 0; r < world; r++) {
        float *t = dino_calloc(padded, 4);
        fill_f32(t, n, r, 7);
        for (size_t i = 0; i < n; i++) want[i] += t[i];
        free(t);
    }
    float *dbuf = NULL, *dshard = NULL;
    CHECK(cudaMalloc((void **)&dbuf, padded * 4) == cudaSuccess && cudaMalloc((void **)&dshard, shard * 4) == cudaSuccess,
          "cudaMalloc");
    // all-reduce (sum): NCCL's order is its own, so compare with a tolerance of the sum's magnitude
    cudaMemcpy(dbuf, h, padded * 4, cudaMemcpyHostToDevice);
    CHECK(dist_nccl_allreduce(nc, dbuf, padded, 0, NULL, err) == 0 && dist_nccl_sync(nc, "test", err) == 0, "%s", err);
    cudaMemcpy(got, dbuf, padded * 4, cudaMemcpyDeviceToHost);
    size_t bad = 0;
    for (size_t i = 0; i < padded; i++) bad += !(fabsf(got[i] - want[i]) <= 1e-5f * (fabsf(want[i]) + 1000.0f * world));
    CHECK(bad == 0, "NCCL all-reduce: %zu of %zu wrong", bad, padded);
    // reduce-scatter (average)
    cudaMemcpy(dbuf, h, padded * 4, cudaMemcpyHostToDevice);
    CHECK(dist_nccl_reduce_scatter(nc, dbuf, dshard, shard, 1, NULL, err) == 0 && dist_nccl_sync(nc, "test", err) == 0,
          "%s", err);
    cudaMemcpy(got, dshard, shard * 4, cudaMemcpyDeviceToHost);
    bad = 0;
    for (size_t i = 0; i < shard; i++) {
        float wv = want[(size_t)rank * shard + i] / (float)world;
        bad += !(fabsf(got[i] - wv) <= 1e-5f * (fabsf(wv) + 1000.0f));
    }
    CHECK(bad == 0, "NCCL reduce-scatter: %zu of %zu wrong", bad, shard);
    // all-gather in place of the shards
    for (size_t i = 0; i < shard; i++) got[i] = (float)((size_t)rank * shard + i);
    cudaMemcpy(dbuf + (size_t)rank * shard, got, shard * 4, cudaMemcpyHostToDevice);
    CHECK(dist_nccl_allgather(nc, dbuf + (size_t)rank * shard, dbuf, shard, NULL, err) == 0 &&
              dist_nccl_sync(nc, "test", err) == 0, "%s", err);
    cudaMemcpy(got, dbuf, padded * 4, cudaMemcpyDeviceToHost);
    bad = 0;
    for (size_t i = 0; i < padded; i++) bad += got[i] != (float)i;
    CHECK(bad == 0, "NCCL all-gather: %zu wrong", bad);
    cudaFree(dbuf), cudaFree(dshard);
    free(h), free(want), free(got);
}

WORKER(nccl) {
    Dist d;
    init_or_die(&d, nccl_timeout_s());
    char err[DINO_ERRLEN];
    DistNccl *nc = dist_nccl_new(d.rank, d.world, d.local_rank, nccl_timeout_s(), err);
    CHECK(nc != NULL, "%s", err);
    if (nc) {
        nccl_check(nc, d.rank, d.world);
        // bucketed gradient all-reduce / ZeRO-1 reduce through NCCL = the average over ranks
        const size_t n = 100003;
        size_t cuts[512];
        int ncut = fake_cuts(n, cuts, 512);
        DistShard s = dist_shard(n, d.world, d.rank, 16);
        float *h = dino_calloc(s.padded, 4), *want = dino_calloc(s.padded, 4), *t = dino_calloc(s.padded, 4), *dev = NULL;
        for (int r = 0; r < d.world; r++) {
            fill_f32(t, n, r, 11);
            for (size_t i = 0; i < n; i++) want[i] += t[i] / (float)d.world;
        }
        CHECK(cudaMalloc((void **)&dev, s.padded * 4) == cudaSuccess, "cudaMalloc");
        for (int zero = 0; zero <= 1 && dev; zero++) {
            fill_f32(h, n, d.rank, 11);
            cudaMemcpy(dev, h, s.padded * 4, cudaMemcpyHostToDevice);
            DistGrads *g = dist_grads_new(&d, nc, dev, zero ? s.padded : n, cuts, ncut, 8192, zero, err);
            CHECK(g != NULL, "%s", err);
            if (!g) break;
            run_bucketed(g, cuts, ncut, err);
            dist_grads_free(g);
            cudaMemcpy(h, dev, s.padded * 4, cudaMemcpyDeviceToHost);
            size_t b = zero ? s.begin : 0, e = zero ? s.valid_end : n, bad = 0;
            for (size_t i = b; i < e; i++) bad += !(fabsf(h[i] - want[i]) <= 1e-5f * (fabsf(want[i]) + 1000.0f));
            CHECK(bad == 0, "NCCL gradient buckets (zero=%d): %zu of %zu wrong", zero, bad, e - b);
        }
        cudaFree(dev);
        free(h), free(want), free(t);
        // the objective's Collective on device memory
        Collective col = dist_nccl_collective(nc);
        float v[5], *dv = NULL;
        for (int i = 0; i < 5; i++) v[i] = (float)(d.rank + 1) * (float)(i + 1);
        CHECK(cudaMalloc((void **)&dv, sizeof v) == cudaSuccess, "cudaMalloc");
        cudaMemcpy(dv, v, sizeof v, cudaMemcpyHostToDevice);
        collective_sum_f32(&col, dv, 5);
        cudaMemcpy(v, dv, sizeof v, cudaMemcpyDeviceToHost);
        for (int i = 0; i < 5; i++)
            CHECK(v[i] == (float)(d.world * (d.world + 1) / 2) * (float)(i + 1), "NCCL Collective sum [%d] = %g", i, v[i]);
        cudaFree(dv);
        dist_nccl_free(nc);
    }
    dist_finalize(&d);
}

// Defined by the CUDA execution layer's NCCL stand-in (tests/cudaemu/nccl.cpp); NULL with real NCCL.
extern const int cudaemu_nccl_standin __attribute__((weak));
static int nccl_standin(void) { return &cudaemu_nccl_standin != NULL; }

// One ZeRO-1 bucket over every shard (a group of world ncclReduce calls), its input written on the
// compute stream just before; returns dist_grads_begin_bucket's result.
static int group_bucket(DistGrads *g, float *dev, const float *src, size_t n, cudaStream_t compute, char *err) {
    CHECK(cudaMemcpyAsync(dev, src, n * 4, cudaMemcpyDeviceToDevice, compute) == cudaSuccess, "cudaMemcpyAsync");
    return dist_grads_begin_bucket(g, 0, err);
}

// This rank's shard of `got` against the average over ranks.
static size_t bad_shard(const float *got, const float *want, DistShard s) {
    size_t bad = 0;
    for (size_t i = s.begin; i < s.valid_end; i++) bad += !(fabsf(got[i] - want[i]) <= 1e-5f * (fabsf(want[i]) + 1000.0f));
    return bad;
}

// NCCL groups in the ZeRO-1 bucket path (run with CUDAEMU_STREAMS=delay under the execution layer):
// 1. after a grouped reduce, dist_nccl_gate orders a copy on a third stream after the reduce: the copy
//    sees the averaged shard (under the delay scheduler an unordered copy would see the input);
// 2. (stand-in only: CUDAEMU_NCCL_FAIL) an error inside the group is returned and the group is still
//    ended: the next bucket is reduced, and no NCCL call lands inside a group left open;
// 3. DINO_TEST_FAULT=mismatch|open_group (stand-in only): a finding the stand-in must report.
WORKER(nccl_group) {
    Dist d;
    init_or_die(&d, nccl_timeout_s());
    char err[DINO_ERRLEN] = "";
    DistNccl *nc = dist_nccl_new(d.rank, d.world, d.local_rank, nccl_timeout_s(), err);
    CHECK(nc != NULL, "%s", err);
    if (!nc) exit(1);
    const char *fault = getenv("DINO_TEST_FAULT");
    fault = fault ? fault : "";
    const size_t n = 40009; // odd: the last shard is padded
    DistShard s = dist_shard(n, d.world, d.rank, 16);
    float *h = dino_calloc(s.padded, 4), *want = dino_calloc(s.padded, 4), *t = dino_calloc(s.padded, 4);
    for (int r = 0; r < d.world; r++) {
        fill_f32(t, n, r, 31);
        for (size_t i = 0; i < n; i++) want[i] += t[i] / (float)d.world;
    }
    fill_f32(h, n, d.rank, 31);
    float *src = NULL, *dev = NULL, *copy = NULL;
    cudaStream_t compute = NULL, other = NULL;
    CHECK(cudaMalloc((void **)&src, s.padded * 4) == cudaSuccess && cudaMalloc((void **)&dev, s.padded * 4) == cudaSuccess &&
              cudaMalloc((void **)&copy, s.padded * 4) == cudaSuccess, "cudaMalloc");
    CHECK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking) == cudaSuccess &&
              cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking) == cudaSuccess, "cudaStreamCreate");
    CHECK(cudaMemcpy(src, h, s.padded * 4, cudaMemcpyHostToDevice) == cudaSuccess, "cudaMemcpy");
    size_t cuts[] = {0};
    DistGrads *g = dist_grads_new(&d, nc, dev, s.padded, cuts, 1, s.padded, 1, err);
    CHECK(g != NULL && dist_grads_nbuckets(g) == 1, "%s", err);
    if (!g) exit(1);
    dist_grads_set_stream(g, compute);

    if (strcmp(fault, "mismatch") == 0 && nccl_standin()) {
        // rank 1 reduces one float less than the others: the stand-in names both ranks and both calls
        if (d.rank == 1) dist_nccl_allreduce(nc, dev, 1000, 0, compute, err);
        else dist_nccl_allreduce(nc, dev, 1001, 0, compute, err);
        printf("rank %d: the mismatch went unreported\n", d.rank);
        exit(1);
    }
    if (strcmp(fault, "open_group") == 0 && nccl_standin()) {
        CHECK(dist_nccl_group_start(nc, err) == 0, "%s", err);
        CHECK(dist_nccl_allreduce(nc, dev, 1000, 0, compute, err) == 0, "%s", err);
        dist_nccl_sync(nc, "left open", err); // a group never ended: the layer reports it (here or at exit)
        dist_nccl_free(nc);
        printf("rank %d: the open group went unreported\n", d.rank);
        exit(1);
    }

    // 1. grouped reduce, gate, copy on a third stream
    CHECK(group_bucket(g, dev, src, s.padded, compute, err) == 0, "%s", err);
    CHECK(dist_nccl_gate(nc, other, err) == 0, "%s", err);
    CHECK(cudaMemcpyAsync(copy, dev, s.padded * 4, cudaMemcpyDeviceToDevice, other) == cudaSuccess, "cudaMemcpyAsync");
    CHECK(cudaStreamSynchronize(other) == cudaSuccess, "cudaStreamSynchronize");
    CHECK(cudaMemcpy(t, copy, s.padded * 4, cudaMemcpyDeviceToHost) == cudaSuccess, "cudaMemcpy");
    size_t bad = bad_shard(t, want, s);
    CHECK(bad == 0, "rank %d: after the grouped reduce and the gate, %zu of %zu shard values are not the average", d.rank,
          bad, s.valid_end - s.begin);
    CHECK(dist_grads_wait(g, err) == 0, "%s", err);

    // 2. an error inside the group (the second ncclReduce of the bucket fails on every rank)
    if (nccl_standin() && d.world > 1) {
        setenv("CUDAEMU_NCCL_FAIL", "2", 1);
        int rc = group_bucket(g, dev, src, s.padded, compute, err);
        unsetenv("CUDAEMU_NCCL_FAIL");
        char want_rank[32];
        snprintf(want_rank, sizeof want_rank, "rank %d", d.rank);
        CHECK(rc == -1 && strstr(err, "ncclReduce") && strstr(err, want_rank),
              "a failing ncclReduce inside the group: rc %d, error '%s'", rc, err);
        CHECK(dist_grads_wait(g, err) == 0, "%s", err);
        // the group was ended: the next bucket goes through
        CHECK(group_bucket(g, dev, src, s.padded, compute, err) == 0, "%s", err);
        CHECK(dist_grads_wait(g, err) == 0, "%s", err);
        CHECK(cudaMemcpy(t, dev, s.padded * 4, cudaMemcpyDeviceToHost) == cudaSuccess, "cudaMemcpy");
        bad = bad_shard(t, want, s);
        CHECK(bad == 0, "rank %d: the bucket after a failed group: %zu of %zu shard values are not the average", d.rank,
              bad, s.valid_end - s.begin);
    }
    dist_grads_free(g);
    cudaStreamDestroy(compute), cudaStreamDestroy(other);
    cudaFree(src), cudaFree(dev), cudaFree(copy);
    free(h), free(want), free(t);
    dist_nccl_free(nc);
    dist_finalize(&d);
}
#endif

TEST(nccl_allreduce_reduce_scatter_gpu) {
#ifndef DINO_HAVE_NCCL
    test_skip("built without CUDA/NCCL");
#else
    int ndev = 0;
    if ((ndev = dino_cuda_device_count()) == 0) test_skip("no CUDA device"); // exits 1 under DINO_REQUIRE_GPU=1
    char err[DINO_ERRLEN];
    DistNccl *nc = dist_nccl_new(0, 1, 0, nccl_timeout_s(), err);
    CHECK(nc != NULL, "%s", err);
    if (!nc) return;
    nccl_check(nc, 0, 1);
    dist_nccl_free(nc);
    // (the execution layer's stand-in runs any number of ranks, whatever device count it reports)
    if ((ndev >= 2 || nccl_standin()) && system("mpirun --version > /dev/null 2>&1") == 0)
        run_worker_ok(ndev < 2 ? 2 : ndev < 4 ? ndev : 4, "worker_nccl", out_buf, sizeof out_buf);
    else
        printf("one GPU or no mpirun: multi-rank NCCL part not run\n");
#endif
}

// The ZeRO-1 bucket path's NCCL groups on 2 ranks (worker_nccl_group): gate after a grouped reduce, an
// error inside a group; under the execution layer with the delay scheduler, and the stand-in's findings.
TEST(nccl_group_gate_and_error_np2) {
#ifndef DINO_HAVE_NCCL
    test_skip("built without CUDA/NCCL");
#else
    need_mpirun();
    int ndev = 0;
    if ((ndev = dino_cuda_device_count()) == 0) test_skip("no CUDA device"); // exits 1 under DINO_REQUIRE_GPU=1
    if (ndev < 2 && !nccl_standin()) test_skip("one GPU: NCCL needs a GPU per rank");
    setenv("CUDAEMU_STREAMS", "delay", 1); // for the ranks (the execution layer's scheduler; CUDA ignores it)
    run_worker_ok(2, "worker_nccl_group", out_buf, sizeof out_buf);
    if (!nccl_standin()) return;
    const char *faults[][2] = {{"mismatch", "ranks issue different NCCL collectives"},
                               {"open_group", "ncclGroupStart without ncclGroupEnd"}};
    for (int i = 0; i < 2; i++) {
        char env[64];
        snprintf(env, sizeof env, "DINO_TEST_FAULT=%s", faults[i][0]);
        int rc = run_mpi(2, "worker_nccl_group", env, out_buf, sizeof out_buf, NULL);
        int found = strstr(out_buf, faults[i][1]) != NULL;
        if (rc == 0 || !found) fprintf(stderr, "---- output ----\n%s----\n", out_buf);
        CHECK(rc != 0 && rc != 124 && rc != 137, "%s: job status %d, expected the layer's finding", faults[i][0], rc);
        CHECK(found, "%s: no '%s' in the output", faults[i][0], faults[i][1]);
    }
#endif
}
