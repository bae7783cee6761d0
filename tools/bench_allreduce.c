// All-reduce bandwidth of the project's own dist layer, reported as nccl-tests do:
//   algbw = bytes / time,  busbw = algbw * 2(n-1)/n  (what each rank's link must carry in a ring),
// so the figures can be set against the link bandwidths in docs/scaling.md.
//
//   mpirun -n 2 build/bench_allreduce                 CPU: dist (deterministic) and plain MPI_Allreduce
//   mpirun -n 8 build/bench_allreduce --gpu           GPU: NCCL through dist/nccl (CUDA builds)
// Options: --min-bytes B, --max-bytes B (powers of 2 in between, fp32), --gpu, --no-mpi-native.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/check.h"
#include "dist/dist.h"
#ifdef DINO_HAVE_MPI
#include <mpi.h>
#endif
#ifdef DINO_HAVE_NCCL
#include <cuda_runtime.h>

#include "dist/nccl.h"
#endif

// Iterations for a size: the same on every rank, about 256 MiB moved per measurement, 3..200.
static int iters_for(size_t bytes) {
    size_t it = ((size_t)256 << 20) / (bytes ? bytes : 1);
    return it < 3 ? 3 : it > 200 ? 200 : (int)it;
}

typedef enum { BENCH_DIST, BENCH_MPI_NATIVE, BENCH_NCCL } BenchKind;

// Mean seconds per all-reduce over ranks (as nccl-tests average the per-rank times).
static double time_allreduce(Dist *d, BenchKind kind, float *buf, size_t n, int iters, void *nccl) {
    char err[DINO_ERRLEN];
    double t0 = 0;
    for (int i = -2; i < iters; i++) { // two warm-up calls
        if (i == 0) {
            if (dist_barrier(d, err)) dist_abort(d, "%s", err);
            t0 = dino_wall_s();
        }
        if (kind == BENCH_DIST) {
            if (dist_allreduce_sum_f32(d, buf, n, err)) dist_abort(d, "%s", err);
        }
#ifdef DINO_HAVE_MPI
        if (kind == BENCH_MPI_NATIVE && MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD))
            dist_abort(d, "MPI_Allreduce failed");
#endif
#ifdef DINO_HAVE_NCCL
        if (kind == BENCH_NCCL && dist_nccl_allreduce(nccl, buf, n, 0, NULL, err)) dist_abort(d, "%s", err);
#endif
    }
#ifdef DINO_HAVE_NCCL
    if (kind == BENCH_NCCL && dist_nccl_sync(nccl, "bench all-reduce", err)) dist_abort(d, "%s", err);
#endif
    (void)nccl;
    double t = (dino_wall_s() - t0) / iters;
    if (dist_allreduce_sum_f64(d, &t, 1, err)) dist_abort(d, "%s", err);
    return t / d->world;
}

int main(int argc, char **argv) {
    size_t min_bytes = 4096, max_bytes = (size_t)64 << 20;
    int gpu = 0, native = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--min-bytes") == 0 && i + 1 < argc) min_bytes = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--max-bytes") == 0 && i + 1 < argc) max_bytes = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--gpu") == 0) gpu = 1;
        else if (strcmp(argv[i], "--no-mpi-native") == 0) native = 0;
        else {
            fprintf(stderr, "usage: mpirun -n N %s [--min-bytes B] [--max-bytes B] [--gpu] [--no-mpi-native]\n", argv[0]);
            return 2;
        }
    }
    if (min_bytes < 4) min_bytes = 4;
    Dist d;
    char err[DINO_ERRLEN];
    if (dist_init(&d, 0, err)) { fprintf(stderr, "bench_allreduce: %s\n", err); return 1; }
    char desc[256];
    dist_describe(&d, desc, sizeof desc);
    if (d.rank == 0) printf("# bench_allreduce: %s\n", desc);
    if (d.world == 1 && d.rank == 0)
        printf("# world of 1: an all-reduce moves nothing (start with mpirun -n N for meaningful figures)\n");

    void *nccl = NULL;
    float *buf = NULL;
    if (gpu) {
#ifdef DINO_HAVE_NCCL
        nccl = dist_nccl_new(d.rank, d.world, d.local_rank, d.timeout_s, err);
        if (!nccl) dist_abort(&d, "%s", err);
        if (cudaMalloc((void **)&buf, max_bytes) != cudaSuccess) dist_abort(&d, "cudaMalloc(%zu) failed", max_bytes);
        cudaMemset(buf, 0, max_bytes);
        if (d.rank == 0) printf("# NCCL on GPU %d of each rank's node (local rank %% device count)\n", dist_nccl_device(nccl));
#else
        dist_abort(&d, "--gpu needs a build with CUDA and NCCL");
#endif
    } else {
        buf = dino_calloc(max_bytes / 4 + 1, 4);
    }
#ifndef DINO_HAVE_MPI
    native = 0;
#endif
    if (gpu || !d.impl) native = 0; // plain MPI only when MPI is running
    double ring = d.world > 1 ? 2.0 * (d.world - 1) / d.world : 0.0;
    if (d.rank == 0) {
        printf("# busbw = algbw * 2(n-1)/n with n = %d ranks; GB/s = 1e9 bytes/s; times are the mean over ranks\n", d.world);
        printf("%12s %8s %6s %12s %10s %10s", "bytes", "floats", "iters", gpu ? "nccl_us" : "dist_us", "algbw", "busbw");
        if (native) printf(" %12s %10s", "mpi_us", "mpi_busbw");
        printf("\n");
    }
    for (size_t bytes = min_bytes; bytes <= max_bytes; bytes *= 2) {
        size_t n = bytes / 4;
        int iters = iters_for(bytes);
        double t = time_allreduce(&d, gpu ? BENCH_NCCL : BENCH_DIST, buf, n, iters, nccl);
        double alg = (double)(n * 4) / t / 1e9;
        double tn = native ? time_allreduce(&d, BENCH_MPI_NATIVE, buf, n, iters, NULL) : 0;
        if (d.rank == 0) {
            printf("%12zu %8zu %6d %12.1f %10.3f %10.3f", n * 4, n, iters, t * 1e6, alg, alg * ring);
            if (native) printf(" %12.1f %10.3f", tn * 1e6, (double)(n * 4) / tn / 1e9 * ring);
            printf("\n");
            fflush(stdout);
        }
    }
#ifdef DINO_HAVE_NCCL
    if (gpu) {
        cudaFree(buf);
        dist_nccl_free(nccl);
    }
#endif
    if (!gpu) free(buf);
    dist_finalize(&d);
    return 0;
}
