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

// Skips the test where the multi-process tests cannot run.
static inline void need_mpirun(void) {
#ifndef DINO_HAVE_MPI
    test_skip("built without MPI");
#else
    if (system("mpirun --version > /dev/null 2>&1") != 0) test_skip("mpirun not found");
#endif
}
