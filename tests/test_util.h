// Test helpers shared by the trainer tests (test_train, test_dinov3_vit, test_distill, test_train_dist):
// synthetic tile folders, a run of the trainer in this process, bit-equal checkpoints, the MPI launcher.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/check.h"
#include "dist/dist.h"
#include "tests/harness.h"
#include "tests/synth_files.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/train.h"

// n synthetic 64 px JPEG tiles of generator `seed` (4 classes) as <dir>/t000.jpg, t001.jpg, ...
static inline void write_tile_folder(const char *dir, uint64_t seed, int n) {
    mkdir(dir, 0755);
    for (int i = 0; i < n; i++) {
        char path[4300];
        snprintf(path, sizeof path, "%s/t%03d.jpg", dir, i);
        write_synth_jpeg(path, seed, i, 4, 64);
    }
}

// n tiles of generator 11 in <tmp>/tiles; returns the source spec "folder:<tmp>/tiles" (static storage).
static inline const char *make_tiles(const char *tmp, int n) {
    static char spec[4300];
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/tiles", tmp);
    write_tile_folder(dir, 11, n);
    snprintf(spec, sizeof spec, "folder:%s", dir);
    return spec;
}

// train_run on one process (no launcher), up to max_it iterations of this run (0: to the end).
static inline int run_trainer(const Config *cfg, int64_t max_it, int quiet, TrainResult *res, char *err) {
    Dist d;
    CHECK(dist_init(&d, 0, err) == 0, "%s", err);
    TrainOptions opt = {.max_iterations = max_it, .quiet = quiet};
    int rc = train_run(cfg, &d, &opt, res, err);
    dist_finalize(&d);
    return rc;
}

// Every tensor of two checkpoints equal bit for bit (the same names and sizes; more than 10 of them).
static inline void check_same_checkpoint(const char *a, const char *b) {
    Ckpt ca, cb;
    char err[DINO_ERRLEN];
    CHECK(ckpt_open(&ca, a, err) == 0, "%s", err);
    CHECK(ckpt_open(&cb, b, err) == 0, "%s", err);
    CHECK(ca.st.n == cb.st.n && ca.st.n > 10, "tensor counts %d vs %d", ca.st.n, cb.st.n);
    int diff = 0;
    for (int i = 0; i < ca.st.n; i++) {
        const StTensor *ta = &ca.st.t[i], *tb = st_get(&cb.st, ta->name);
        if (!tb || tb->nbytes != ta->nbytes) {
            if (diff++ < 5) test_fail_at(__FILE__, __LINE__, "tensor %s missing or resized", ta->name);
        } else if (memcmp(ta->data, tb->data, ta->nbytes) != 0) {
            if (diff++ < 5) test_fail_at(__FILE__, __LINE__, "tensor %s differs", ta->name);
        }
    }
    CHECK(diff == 0, "%d tensors differ", diff);
    ckpt_close(&ca);
    ckpt_close(&cb);
}

// Runs cfg (a fresh output dir) for `stop` iterations, then again to its end: it must resume at `stop`
// and end at `end`, with a last checkpoint bit for bit `full`'s (the same run, uninterrupted).
static inline void check_resume_equals(const Config *cfg, int64_t stop, int64_t end, const char *full) {
    char err[DINO_ERRLEN];
    TrainResult res;
    CHECK(run_trainer(cfg, stop, 1, &res, err) == 0, "%s", err);
    CHECK(res.end_iteration == stop, "first part ended at %lld", (long long)res.end_iteration);
    CHECK(run_trainer(cfg, 0, 1, &res, err) == 0, "%s", err);
    CHECK(res.start_iteration == stop && res.end_iteration == end, "resumed %lld..%lld",
          (long long)res.start_iteration, (long long)res.end_iteration);
    check_same_checkpoint(full, res.last_checkpoint);
}

// Overrides (key=value, as on the command line) on a loaded config, then its validation.
static inline void override_config(Config *cfg, int n, char **ov) {
    char err[DINO_ERRLEN];
    for (int i = 0; i < n; i++) CHECK(config_override(cfg, ov[i], err) == 0, "%s", err);
    CHECK(config_validate(cfg, err) == 0, "%s", err);
}

// A local mpirun for the tests (root allowed, oversubscribed, shared-memory transport, 300 s at most,
// OMP_NUM_THREADS passed on); append " -n N program args".
#define TEST_MPIRUN                                                                                          \
    "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout -k 5 300 mpirun "                 \
    "--allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader "                                \
    "--mca btl_vader_single_copy_mechanism none --mca pml ob1 -x OMP_NUM_THREADS"

// The first 8 KiB of a file (a failed command's log) on stderr; nothing when it cannot be read.
static inline void show_file(const char *path) {
    char buf[8192];
    FILE *f = fopen(path, "r");
    if (!f) return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    fprintf(stderr, "---- %s ----\n%s\n", path, buf);
}

// Skips the test where the multi-process tests cannot run.
static inline void need_mpirun(void) {
#ifndef DINO_HAVE_MPI
    test_skip("built without MPI");
#else
    if (system("mpirun --version > /dev/null 2>&1") != 0) test_skip("mpirun not found");
#endif
}
