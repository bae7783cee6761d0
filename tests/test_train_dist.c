// Data-parallel training on the CPU with Open MPI: 2 ranks x 4 images give the same losses and
// parameters as 1 rank x 8 images (up to reduction-order rounding), with both centerings; a run resumes
// on another number of ranks.
//
// What is per rank in the reference and therefore left out here: KoLeo (nearest neighbours within a
// rank's batch), iBOT masks (drawn per rank batch by the collate policy) and stochastic-depth subsets
// (drawn within a rank's batch). With those, 2x4 and 1x8 are different algorithms, not a rounding apart.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/check.h"
#include "data/decode.h"
#include "data/synth.h"
#include "train/checkpoint.h"
#include "tests/harness.h"
#include "tests/synth_files.h"
#include "tests/test_util.h"

// Runs dinotrain on `ranks` processes (0 = no launcher) with `batch` images per rank; `extra`: more
// config overrides ("" for none).
static int train_with(const char *tmp, const char *out, int ranks, int batch, const char *centering, int iterations,
                      const char *extra) {
    char cmd[16384], its[64] = "";
    if (iterations > 0) snprintf(its, sizeof its, "--iterations %d", iterations);
    char launcher[1024] = "";
    if (ranks > 0)
        snprintf(launcher, sizeof launcher, TEST_MPIRUN " -n %d", ranks);
    snprintf(cmd, sizeof cmd,
             "OMP_NUM_THREADS=1 %s ./dinotrain %s %s data.sources=[folder:%s/tiles] train.output_dir=%s/%s "
             "student.arch=vit_test student.embed_dim=24 student.depth=2 student.num_heads=2 student.patch_size=8 "
             "student.drop_path_rate=0 student.num_register_tokens=1 crops.global_crops_size=32 "
             "crops.local_crops_size=16 crops.local_crops_number=2 dino.head_n_prototypes=64 "
             "dino.head_hidden_dim=32 dino.head_bottleneck_dim=16 dino.koleo_loss_weight=0 ibot.loss_weight=0 "
             "train.batch_size_per_gpu=%d train.OFFICIAL_EPOCH_LENGTH=4 train.num_workers=1 train.centering=%s "
             "optim.epochs=2 optim.warmup_epochs=1 optim.base_lr=0.02 teacher.warmup_teacher_temp_epochs=1 "
             "checkpoint.every_n_iterations=4 checkpoint.keep_last=3 dist.grad_bucket_mb=0.01 "
             // the recipe these tolerances were set with (configs/demo.yaml before issue #14)
             "optim.scaling_rule=sqrt_wrt_1024 student.layerscale=1.0e-05 teacher.teacher_temp=0.07 "
             "%s > %s/%s.log 2>&1",
             launcher, its, test_src_path("configs/demo.yaml"), tmp, tmp, out, batch, centering, extra, tmp, out);
    return system(cmd);
}

static int train(const char *tmp, const char *out, int ranks, int batch, const char *centering, int iterations) {
    return train_with(tmp, out, ranks, batch, centering, iterations, "");
}

static void show_log(const char *tmp, const char *out) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s.log", tmp, out);
    show_file(path);
}

// Every tensor within |a-b| <= atol + rtol * max|b| of its tensor.
static void compare(const char *tmp, const char *a, const char *b, double rtol) {
    char da[4200], db[4200], err[DINO_ERRLEN];
    snprintf(da, sizeof da, "%s/%s", tmp, a);
    snprintf(db, sizeof db, "%s/%s", tmp, b);
    Ckpt ca, cb;
    CHECK(ckpt_open_latest(&ca, da, NULL, err) == 1, "%s: %s", da, err);
    CHECK(ckpt_open_latest(&cb, db, NULL, err) == 1, "%s: %s", db, err);
    CHECK(ca.iteration == cb.iteration && ca.iteration == 8, "iterations %lld vs %lld", (long long)ca.iteration,
          (long long)cb.iteration);
    double worst = 0;
    const char *worst_name = "";
    int identical = 1;
    for (int i = 0; i < ca.st.n; i++) {
        const StTensor *ta = &ca.st.t[i], *tb = st_get(&cb.st, ta->name);
        CHECK(tb && tb->nbytes == ta->nbytes, "%s missing", ta->name);
        if (!tb || tb->nbytes != ta->nbytes) continue;
        const float *x = ta->data, *y = tb->data;
        size_t n = ta->nbytes / 4;
        double mx = 0, md = 0;
        for (size_t j = 0; j < n; j++) {
            mx = fmax(mx, fabs(y[j]));
            md = fmax(md, fabs((double)x[j] - y[j]));
        }
        if (md > 0) identical = 0;
        double rel = md / (mx > 0 ? mx : 1);
        if (rel > worst) worst = rel, worst_name = ta->name;
    }
    printf("%s vs %s: worst relative difference %.3g (%s)\n", a, b, worst, worst_name);
    CHECK(worst <= rtol, "%s vs %s: %s differs by %.3g of its scale (tolerance %.3g)", a, b, worst_name, worst, rtol);
    // the comparison must be able to see a difference: the runs are not trivially identical files
    (void)identical;
    ckpt_close(&ca);
    ckpt_close(&cb);
}

// Rounding differs between a 4+4 and an 8-row reduction; over 8 AdamW steps (whose update is about
// lr * sign(g) for small gradients) that stays far below a real difference, which is of the order of
// the lr relative to the weights (1e-2 here).
#define TOL 2e-4

static void equivalence(const char *centering) {
    need_mpirun();
    const char *tmp = test_tmpdir();
    char tiles[4200];
    snprintf(tiles, sizeof tiles, "%s/tiles", tmp);
    write_tile_folder(tiles, 5, 40);
    int rc1 = train(tmp, "one", 0, 8, centering, 0);
    if (rc1) show_log(tmp, "one");
    CHECK(rc1 == 0, "1 rank x 8 failed (%d)", rc1);
    int rc2 = train(tmp, "two", 2, 4, centering, 0);
    if (rc2) show_log(tmp, "two");
    CHECK(rc2 == 0, "2 ranks x 4 failed (%d)", rc2);
    if (rc1 || rc2) return;
    compare(tmp, "two", "one", TOL);
    // gradient buckets were averaged while the backward pass was still running
    char mpath[4200], buf[1 << 16];
    snprintf(mpath, sizeof mpath, "%s/two/training_metrics.jsonl", tmp);
    FILE *f = fopen(mpath, "r");
    CHECK(f != NULL, "no metrics %s", mpath);
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
        const char *ke = "\"grad_buckets_overlapped\": ", *kt = "\"grad_buckets\": ";
        const char *p = strstr(buf, ke), *q = strstr(buf, kt);
        int early = p ? atoi(p + strlen(ke)) : -1, total = q ? atoi(q + strlen(kt)) : -1;
        printf("gradient buckets: %d, issued during the backward pass: %d\n", total, early);
        CHECK(total > 2 && early > 0 && early < total, "buckets %d, early %d: no overlap", total, early);
    }
    // a different data order must be seen as different (the comparison can fail)
    int rc3 = train(tmp, "half", 0, 4, centering, 0);
    CHECK(rc3 == 0, "1 rank x 4 failed");
    char da[4200], db[4200], err[DINO_ERRLEN];
    snprintf(da, sizeof da, "%s/half", tmp);
    snprintf(db, sizeof db, "%s/one", tmp);
    Ckpt ca, cb;
    if (ckpt_open_latest(&ca, da, NULL, err) == 1 && ckpt_open_latest(&cb, db, NULL, err) == 1) {
        const StTensor *x = st_get(&ca.st, "student.backbone.blocks.0.attn.qkv.weight");
        const StTensor *y = st_get(&cb.st, "student.backbone.blocks.0.attn.qkv.weight");
        double md = 0;
        for (size_t j = 0; x && y && j < x->nbytes / 4; j++)
            md = fmax(md, fabs((double)((const float *)x->data)[j] - ((const float *)y->data)[j]));
        CHECK(md > 10 * TOL * 0.02, "a run on other data is indistinguishable (%.3g)", md);
        ckpt_close(&ca);
        ckpt_close(&cb);
    }
}

TEST(two_ranks_equal_one_rank_centering) { equivalence("centering"); }

TEST(two_ranks_equal_one_rank_sinkhorn) { equivalence("sinkhorn_knopp"); }

TEST(resume_across_rank_counts) {
    need_mpirun();
    const char *tmp = test_tmpdir();
    char tiles[4200];
    snprintf(tiles, sizeof tiles, "%s/tiles", tmp);
    write_tile_folder(tiles, 5, 40);
    CHECK(train(tmp, "ref", 0, 8, "centering", 0) == 0, "reference run failed");
    // 2 ranks for 4 iterations (checkpoint at 4), then 1 rank to the end
    int rc = train(tmp, "a", 2, 4, "centering", 4);
    if (rc == 0) rc = train(tmp, "a", 0, 8, "centering", 0);
    if (rc) show_log(tmp, "a");
    CHECK(rc == 0, "2 -> 1 ranks failed");
    // and the reverse
    rc = train(tmp, "b", 0, 8, "centering", 4);
    if (rc == 0) rc = train(tmp, "b", 2, 4, "centering", 0);
    if (rc) show_log(tmp, "b");
    CHECK(rc == 0, "1 -> 2 ranks failed");
    if (!rc) {
        compare(tmp, "a", "ref", TOL);
        compare(tmp, "b", "ref", TOL);
    }
}

// ---- ZeRO-1: the optimizer sharded over the ranks (dist.zero1) -------------------------------------

static int log_contains(const char *tmp, const char *out, const char *needle) {
    char path[4200], buf[16384];
    snprintf(path, sizeof path, "%s/%s.log", tmp, out);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return strstr(buf, needle) != NULL;
}

#define ZERO1 "dist.zero1=true"
// Sharded, the only rounding that changes is the clipping norms' sum (per shard, then over ranks): the
// reduce-scatter equals the all-reduce's part bit for bit and AdamW and EMA work element by element.
#define TOL_ZERO1_VS_OFF 1e-6

static int train_zero1(const char *tmp, const char *out, int ranks, int batch, const char *centering, int iterations,
                       const char *extra) {
    char ov[1024];
    snprintf(ov, sizeof ov, "%s %s", ZERO1, extra);
    int rc = train_with(tmp, out, ranks, batch, centering, iterations, ov);
    if (rc) show_log(tmp, out);
    else if (ranks > 1) CHECK(log_contains(tmp, out, "ZeRO-1"), "%s: the run did not shard its optimizer", out);
    return rc;
}

// 2 ranks x 4 sharded == 1 rank x 8; with on_vs_off also == 2 ranks x 4 unsharded (much tighter). The
// clipping threshold is lowered so that clipping (and its cross-rank norm) acts at every step.
static void zero1_equivalence(const char *centering, int on_vs_off) {
    need_mpirun();
    const char *tmp = test_tmpdir();
    char tiles[4200];
    snprintf(tiles, sizeof tiles, "%s/tiles", tmp);
    write_tile_folder(tiles, 5, 40);
    const char *clip = "optim.clip_grad=0.05";
    int rc1 = train_with(tmp, "one", 0, 8, centering, 0, clip);
    if (rc1) show_log(tmp, "one");
    CHECK(rc1 == 0, "1 rank x 8 failed (%d)", rc1);
    int rcz = train_zero1(tmp, "zero", 2, 4, centering, 0, clip);
    CHECK(rcz == 0, "2 ranks x 4 with ZeRO-1 failed (%d)", rcz);
    if (rc1 || rcz) return;
    compare(tmp, "zero", "one", TOL);
    if (!on_vs_off) return;
    int rc2 = train_with(tmp, "two", 2, 4, centering, 0, clip);
    if (rc2) show_log(tmp, "two");
    CHECK(rc2 == 0, "2 ranks x 4 failed (%d)", rc2);
    if (!rc2) compare(tmp, "zero", "two", TOL_ZERO1_VS_OFF);
}

TEST(two_ranks_zero1_equal_one_rank_centering) { zero1_equivalence("centering", 1); }

TEST(two_ranks_zero1_equal_one_rank_sinkhorn) { zero1_equivalence("sinkhorn_knopp", 0); }

// Checkpoints stay unsharded: a sharded run resumes sharded, on one rank, and a one-rank run resumes sharded.
TEST(zero1_resume_across_rank_counts) {
    need_mpirun();
    const char *tmp = test_tmpdir();
    char tiles[4200];
    snprintf(tiles, sizeof tiles, "%s/tiles", tmp);
    write_tile_folder(tiles, 5, 40);
    CHECK(train(tmp, "ref", 0, 8, "centering", 0) == 0, "reference run failed");
    int rc = train_zero1(tmp, "a", 2, 4, "centering", 4, ""); // 2 sharded -> 2 sharded
    if (rc == 0) rc = train_zero1(tmp, "a", 2, 4, "centering", 0, "");
    CHECK(rc == 0, "ZeRO-1 resume on 2 ranks failed");
    int rcb = train_zero1(tmp, "b", 2, 4, "centering", 4, ""); // 2 sharded -> 1
    if (rcb == 0) rcb = train(tmp, "b", 0, 8, "centering", 0);
    if (rcb) show_log(tmp, "b");
    CHECK(rcb == 0, "ZeRO-1 on 2 ranks -> 1 rank failed");
    int rcc = train(tmp, "c", 0, 8, "centering", 4); // 1 -> 2 sharded
    if (rcc == 0) rcc = train_zero1(tmp, "c", 2, 4, "centering", 0, "");
    CHECK(rcc == 0, "1 rank -> ZeRO-1 on 2 ranks failed");
    if (!rc) compare(tmp, "a", "ref", TOL);
    if (!rcb) compare(tmp, "b", "ref", TOL);
    if (!rcc) compare(tmp, "c", "ref", TOL);
}

// dist.collective_timeout_s reaches the distributed layer (the MPI watchdog; on cuda, NCCL's wait too).
TEST(collective_timeout_from_config) {
    need_mpirun();
    const char *tmp = test_tmpdir();
    char tiles[4200];
    snprintf(tiles, sizeof tiles, "%s/tiles", tmp);
    write_tile_folder(tiles, 5, 16);
    int rc = train_with(tmp, "t", 2, 4, "centering", 1, "dist.collective_timeout_s=77.5");
    int found = log_contains(tmp, "t", "collective timeout 77.5 s");
    if (rc || !found) show_log(tmp, "t");
    CHECK(rc == 0, "2 ranks with dist.collective_timeout_s=77.5 failed");
    CHECK(found, "the run does not report the collective timeout of 77.5 s");
}
