// Multi-student distillation (train/distill.c): a teacher made by a short training run of a tiny model,
// students of other sizes trained from it on one rank and on two MPI ranks (one student each), resumed
// after a stop, exported and embedded; and the student step checked against the normal SSL step when the
// student is the teacher.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "common/check.h"
#include "common/rng.h"
#include "data/synth.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/distill.h"
#include "train/distill_teacher.h"
#include "train/ssl_step.h"
#include "train/train.h"
#include "tests/harness.h"
#include "tests/synth_files.h"
#include "tests/test_util.h"

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

// The tiny model every config here shares (crops 32 / 16 px, patch 8, 64 prototypes, separate iBOT head).
#define TINY_HEADS                                                                                         \
    "dino: {head_n_prototypes: 64, head_hidden_dim: 32, head_bottleneck_dim: 16, koleo_loss_weight: 0.1}\n"  \
    "ibot: {separate_head: true, head_n_prototypes: 64, head_hidden_dim: 32, head_bottleneck_dim: 16}\n"

// tiles, a teacher trained for 3 iterations (<tmp>/teacher), two student configs of different sizes.
static void make_teacher_and_students(const char *tmp) {
    char dir[4200], path[4300], text[8192];
    snprintf(dir, sizeof dir, "%s/tiles", tmp);
    write_tile_folder(dir, 3, 16);
    snprintf(path, sizeof path, "%s/teacher.yaml", tmp);
    snprintf(text, sizeof text,
             "base: %s\n"
             "student: {arch: vit_test, embed_dim: 32, depth: 2, num_heads: 2, patch_size: 8, drop_path_rate: 0.1}\n"
             TINY_HEADS
             "crops: {global_crops_size: 32, local_crops_size: 16, local_crops_number: 2}\n"
             "train: {batch_size_per_gpu: 4, OFFICIAL_EPOCH_LENGTH: 3, num_workers: 1, output_dir: %s/teacher, "
             "centering: sinkhorn_knopp}\n"
             "optim: {epochs: 1, warmup_epochs: 0}\n"
             "teacher: {warmup_teacher_temp_epochs: 0}\n"
             "data: {sources: [\"folder:%s/tiles\"]}\n",
             test_src_path("configs/demo.yaml"), tmp, tmp);
    write_file(path, text);
    Config cfg;
    char err[DINO_ERRLEN];
    CHECK(config_load(&cfg, path, 0, NULL, err) == 0, "%s", err);
    Dist d;
    CHECK(dist_init(&d, 0, err) == 0, "%s", err);
    TrainOptions opt = {.quiet = 1};
    TrainResult res;
    CHECK(train_run(&cfg, &d, &opt, &res, err) == 0, "teacher run: %s", err);
    dist_finalize(&d);
    const char *sizes[2][2] = {{"small", "embed_dim: 16, depth: 1"}, {"big", "embed_dim: 48, depth: 3"}};
    for (int s = 0; s < 2; s++) {
        snprintf(path, sizeof path, "%s/%s.yaml", tmp, sizes[s][0]);
        snprintf(text, sizeof text,
                 "base: %s\n"
                 "student: {arch: vit_test, %s, num_heads: 2, patch_size: 8, drop_path_rate: 0.1}\n" TINY_HEADS
                 "optim: {base_lr: 0.01}\n",
                 test_src_path("configs/demo.yaml"), sizes[s][1]);
        write_file(path, text);
    }
}

// The main config: students as "name:first:end" entries, global batch G, output <tmp>/<out>.
// `own`: more keys of the main file (they override every student's, as dinov3's merge); "" for none.
static void write_main_with(const char *tmp, const char *file, const char *out, int G, int n,
                            const char *const *students, const char *own) {
    char path[4300], text[8192], list[4096] = "";
    for (int i = 0; i < n; i++) {
        char name[64];
        int a, b;
        CHECK(sscanf(students[i], "%63[^:]:%d:%d", name, &a, &b) == 3, "bad student spec %s", students[i]);
        size_t L = strlen(list);
        snprintf(list + L, sizeof list - L, "    - {name: %s, config_path: %s/%s.yaml, ranks_range: [%d, %d]}\n", name,
                 tmp, name, a, b);
    }
    snprintf(path, sizeof path, "%s/%s", tmp, file);
    snprintf(text, sizeof text,
             "base: %s\n"
             "%s"
             "crops: {global_crops_size: 32, local_crops_size: 16, local_crops_number: 2}\n"
             "train: {output_dir: %s/%s, OFFICIAL_EPOCH_LENGTH: 4, num_workers: 1, centering: sinkhorn_knopp}\n"
             "optim: {epochs: 1}\n"
             "teacher: {warmup_teacher_temp_epochs: 0}\n"
             "data: {sources: [\"folder:%s/tiles\"]}\n"
             "checkpoint: {every_n_iterations: 2, keep_last: 3}\n"
             "distillation: {enabled: true, full_cfg_path: %s/teacher/config.yaml, checkpoint_path: %s/teacher}\n"
             "multidistillation:\n  enabled: true\n  global_batch_size: %d\n  students:\n%s",
             test_src_path("configs/demo.yaml"), own[0] ? own : "student: {patch_size: 8}\n", tmp, out, tmp, tmp, tmp,
             G, list);
    write_file(path, text);
}

static void write_main(const char *tmp, const char *file, const char *out, int G, int n, const char *const *students) {
    write_main_with(tmp, file, out, G, n, students, "");
}

// The "loss" of the first n metrics lines of a student's run; returns how many were read.
static int losses(const char *dir, double *v, int n) {
    char path[4400], line[8192];
    snprintf(path, sizeof path, "%s/training_metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "no %s", path);
    int k = 0;
    while (f && k < n && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"loss\":");
        v[k++] = p ? atof(p + 7) : NAN;
    }
    if (f) fclose(f);
    return k;
}

static int run_distill(const char *main_path, int64_t max_it, TrainResult *res, char *err) {
    Config cfg;
    if (config_load(&cfg, main_path, 0, NULL, err)) return -1;
    Dist d;
    CHECK(dist_init(&d, 0, err) == 0, "%s", err);
    TrainOptions opt = {.max_iterations = max_it, .quiet = 1};
    int rc = distill_run(&cfg, &d, &opt, res, NULL, err);
    dist_finalize(&d);
    return rc;
}

// dinoexport on a student's output dir, then dinoembed of the tiles with the export.
static void export_and_embed(const char *tmp, const char *student_dir, const char *tag) {
    char cmd[16384], out[4300];
    snprintf(cmd, sizeof cmd,
             "./dinoexport %s %s/exp_%s > %s/exp_%s.log 2>&1 && ./dinoembed --backend cpu %s/exp_%s --tiles folder:%s/tiles "
             "-o %s/emb_%s.safetensors --resize 0 --crop 32 --batch 4 >> %s/exp_%s.log 2>&1",
             student_dir, tmp, tag, tmp, tag, tmp, tag, tmp, tmp, tag, tmp, tag);
    CHECK(system(cmd) == 0, "failed: %s", cmd);
    snprintf(out, sizeof out, "%s/emb_%s.safetensors", tmp, tag);
    StFile f;
    char err[DINO_ERRLEN];
    CHECK(st_open(&f, out, err) == 0, "%s", err);
    CHECK(f.n >= 1 && f.t[0].ndim == 2 && f.t[0].shape[0] == 16, "embedding %s: %d tensors, first [%lld, ...]", out, f.n,
          f.n ? (long long)f.t[0].shape[0] : -1LL);
    st_close(&f);
}

TEST(one_student_on_one_rank_resumes_bit_exact_exports_and_embeds) {
    const char *tmp = test_tmpdir();
    make_teacher_and_students(tmp);
    const char *one[] = {"small:0:1"};
    write_main(tmp, "a.yaml", "a", 4, 1, one);
    write_main(tmp, "b.yaml", "b", 4, 1, one);
    char pa[4300], pb[4300], err[DINO_ERRLEN];
    snprintf(pa, sizeof pa, "%s/a.yaml", tmp);
    snprintf(pb, sizeof pb, "%s/b.yaml", tmp);
    TrainResult res;
    CHECK(run_distill(pa, 0, &res, err) == 0, "%s", err);
    CHECK(res.start_iteration == 0 && res.end_iteration == 4 && res.skipped_steps == 0, "ran %lld..%lld",
          (long long)res.start_iteration, (long long)res.end_iteration);
    CHECK(isfinite(res.last_total_loss) && res.last_total_loss > 0, "loss %g", res.last_total_loss);
    char ca[4300];
    snprintf(ca, sizeof ca, "%s", res.last_checkpoint);
    CHECK(strstr(ca, "/a/small/checkpoints/"), "checkpoint %s not in the student's dir", ca);
    // stopped after 2 iterations, started again: the same bits as the run that went straight through
    CHECK(run_distill(pb, 2, &res, err) == 0, "%s", err);
    CHECK(res.end_iteration == 2, "first part ended at %lld", (long long)res.end_iteration);
    CHECK(run_distill(pb, 0, &res, err) == 0, "%s", err);
    CHECK(res.start_iteration == 2 && res.end_iteration == 4, "resumed %lld..%lld", (long long)res.start_iteration,
          (long long)res.end_iteration);
    check_same_checkpoint(ca, res.last_checkpoint);
    char dir[4300];
    snprintf(dir, sizeof dir, "%s/a/small", tmp);
    export_and_embed(tmp, dir, "small");
}

static int mpirun_dinotrain(const char *tmp, const char *main_file, const char *args, const char *log) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "OMP_NUM_THREADS=1 " TEST_MPIRUN " -n 2 ./dinotrain %s %s/%s > %s/%s 2>&1",
             args, tmp, main_file, tmp, log);
    return system(cmd);
}

TEST(two_students_of_different_sizes_on_two_ranks) {
    need_mpirun();
    const char *tmp = test_tmpdir();
    make_teacher_and_students(tmp);
    const char *two[] = {"small:0:1", "big:1:2"};
    write_main(tmp, "m.yaml", "m", 4, 2, two);
    char log[4300];
    snprintf(log, sizeof log, "%s/m1.log", tmp);
    // 2 iterations, stop; then on to the end (each student resumes from its own checkpoint)
    int rc = mpirun_dinotrain(tmp, "m.yaml", "--iterations 2", "m1.log");
    if (rc) show_file(log);
    CHECK(rc == 0, "mpirun dinotrain --iterations 2 failed");
    rc = mpirun_dinotrain(tmp, "m.yaml", "", "m2.log");
    snprintf(log, sizeof log, "%s/m2.log", tmp);
    if (rc) show_file(log);
    CHECK(rc == 0, "mpirun dinotrain (resumed) failed");
    const char *names[2] = {"small", "big"};
    const int dims[2] = {16, 48};
    for (int s = 0; s < 2; s++) {
        char dir[4300], err[DINO_ERRLEN];
        snprintf(dir, sizeof dir, "%s/m/%s", tmp, names[s]);
        int64_t *its = NULL;
        int n = ckpt_list(dir, &its);
        CHECK(n == 2 && its[0] == 2 && its[1] == 4, "student %s: %d checkpoints", names[s], n);
        free(its);
        Ckpt c;
        CHECK(ckpt_open_latest(&c, dir, NULL, err) == 1, "%s", err);
        const StTensor *cls = ckpt_tensor(&c, "teacher.backbone.cls_token");
        CHECK(cls && cls->shape[cls->ndim - 1] == dims[s], "student %s: cls_token width %lld, want %d", names[s],
              cls ? (long long)cls->shape[cls->ndim - 1] : -1LL, dims[s]);
        const char *who = ckpt_get_str(&c, "distillation.student");
        CHECK(who && strcmp(who, names[s]) == 0, "student name in the checkpoint: %s", who ? who : "(none)");
        ckpt_close(&c);
        char metrics[4400];
        snprintf(metrics, sizeof metrics, "%s/training_metrics.jsonl", dir);
        FILE *f = fopen(metrics, "r");
        CHECK(f != NULL, "no metrics for student %s", names[s]);
        int lines = 0, ch;
        while (f && (ch = fgetc(f)) != EOF) lines += ch == '\n';
        if (f) fclose(f);
        CHECK(lines == 4, "student %s: %d metrics lines, want 4", names[s], lines);
        export_and_embed(tmp, dir, names[s]);
    }

}

TEST(students_on_two_ranks_train_as_on_one) {
    need_mpirun();
    const char *tmp = test_tmpdir();
    make_teacher_and_students(tmp);
    char log[4300];
    int rc;
    // Each student's batch and targets are assembled from both ranks' shares: without iBOT masks, KoLeo
    // (within a rank's images) and stochastic depth (the main file sets them for every student) the 2-rank
    // job's students see the same images with the same targets as one student on one rank (in another
    // order), so their losses agree up to rounding; a wrong image, crop or target row would not. A student
    // on both ranks (a group of 2: gradients averaged over it) trains as the one on one rank.
    const char *own = "student: {patch_size: 8, drop_path_rate: 0}\nibot: {loss_weight: 0}\ndino: {koleo_loss_weight: 0}\n";
    const char *same[] = {"small:0:1", "small2:1:2"}, *wide[] = {"small:0:2"};
    char cmd[8800], path[4300];
    snprintf(cmd, sizeof cmd, "cp %s/small.yaml %s/small2.yaml", tmp, tmp);
    CHECK(system(cmd) == 0, "%s", cmd);
    write_main_with(tmp, "p.yaml", "p", 4, 2, same, own);
    write_main_with(tmp, "r.yaml", "r", 4, 1, wide, own);
    write_main_with(tmp, "q.yaml", "q", 4, 1, same, own);
    const char *jobs[2] = {"p", "r"};
    for (int j = 0; j < 2; j++) {
        char file[64], lg[64];
        snprintf(file, sizeof file, "%s.yaml", jobs[j]);
        snprintf(lg, sizeof lg, "%s.log", jobs[j]);
        rc = mpirun_dinotrain(tmp, file, "--iterations 3", lg);
        snprintf(log, sizeof log, "%s/%s", tmp, lg);
        if (rc) show_file(log);
        CHECK(rc == 0, "mpirun dinotrain %s failed", file);
    }
    snprintf(path, sizeof path, "%s/q.yaml", tmp);
    TrainResult res;
    char err[DINO_ERRLEN];
    CHECK(run_distill(path, 3, &res, err) == 0, "%s", err);
    double q[3], p0[3], p1[3], r2[3];
    snprintf(path, sizeof path, "%s/q/small", tmp);
    CHECK(losses(path, q, 3) == 3, "q: metrics");
    snprintf(path, sizeof path, "%s/p/small", tmp);
    CHECK(losses(path, p0, 3) == 3, "p: metrics");
    snprintf(path, sizeof path, "%s/p/small2", tmp);
    CHECK(losses(path, p1, 3) == 3, "p: metrics");
    snprintf(path, sizeof path, "%s/r/small", tmp);
    CHECK(losses(path, r2, 3) == 3, "r: metrics");
    for (int i = 0; i < 3; i++) {
        printf("iteration %d: 1 rank %.7f; 2 ranks, a student each %.7f / %.7f; one student on both %.7f\n", i, q[i],
               p0[i], p1[i], r2[i]);
        CHECK(p0[i] == p1[i], "the two identical students on 2 ranks differ: %.9g vs %.9g", p0[i], p1[i]);
        const double tol = i == 0 ? 1e-5 : 1e-4; // after an update, rounding has gone through AdamW
        CHECK(isfinite(q[i]) && fabs(p0[i] - q[i]) < tol * fabs(q[i]), "it %d: 2 ranks %.9g vs 1 rank %.9g", i, p0[i], q[i]);
        CHECK(fabs(r2[i] - q[i]) < tol * fabs(q[i]), "it %d: student on 2 ranks %.9g vs 1 rank %.9g", i, r2[i], q[i]);
    }
}

// The student step against the frozen teacher's targets is the SSL step's student half: with the student
// equal to the teacher (architecture and weights), the teacher's targets equal the SSL step's (entropies),
// the DINO losses equal the SSL step's where its student is not masked (all of them without masks; the
// local crops with masks), the gradients are equal without masks, and the iBOT loss (unmasked student)
// equals a reference computed here from the teacher's targets and the student's logits.
static void compare_steps(int with_masks, int separate_head) {
    const char *tmp = test_tmpdir();
    char err[DINO_ERRLEN], path[4300], text[4096];
    snprintf(path, sizeof path, "%s/t.yaml", tmp);
    snprintf(text, sizeof text,
             "base: %s\n"
             "student: {arch: vit_test, embed_dim: 32, depth: 2, num_heads: 2, patch_size: 8, drop_path_rate: 0, "
             "num_register_tokens: 1}\n" TINY_HEADS
             "crops: {global_crops_size: 32, local_crops_size: 16, local_crops_number: 2}\n"
             "train: {batch_size_per_gpu: 4, centering: sinkhorn_knopp, output_dir: %s/t}\n",
             test_src_path("configs/demo.yaml"), tmp);
    write_file(path, text);
    Config cfg;
    char *shared[] = {"ibot.separate_head=false"};
    CHECK(config_load(&cfg, path, separate_head ? 0 : 1, shared, err) == 0, "%s", err);
    CHECK(cfg.ibot.separate_head == (separate_head != 0), "separate_head");
    SslConfig sc;
    CHECK(train_ssl_config(&cfg, 1, 0, &sc, err) == 0, "%s", err);
    const int B = sc.batch, nL = sc.n_local, G = sc.global_crop, L = sc.local_crop, Ng = (G / 8) * (G / 8);
    Backend *be = backend_cpu_new();
    SslModel ssl, student;
    CHECK(ssl_model_init(&ssl, be, &sc, 5, err) == 0, "%s", err);
    CHECK(ssl_model_init(&student, be, &sc, 5, err) == 0, "%s", err);
    // the teacher: the SSL model's teacher weights, through a checkpoint as a distillation run reads them
    const size_t n = ssl.tab.total;
    float *host = malloc(sizeof(float) * n);
    be->to_host(be, host, ssl.teacher, sizeof(float) * n);
    CkptWriter *w = ckpt_writer_new();
    ckpt_writer_param_table(w, "teacher.", &ssl.tab, host);
    char tdir[4300];
    snprintf(tdir, sizeof tdir, "%s/tw", tmp);
    CHECK(ckpt_save(w, tdir, 1, 1, NULL, err) == 0, "%s", err);
    ckpt_writer_free(w);
    DistillTeacher teacher;
    CHECK(distill_teacher_init(&teacher, be, &cfg, CENTERING_SINKHORN, 0.9f, B, B, G, sc.max_masked, sc.max_masked, tdir, 0, err) == 0,
          "%s", err);

    float *glob = malloc(sizeof(float) * (size_t)2 * B * 3 * G * G), *loc = malloc(sizeof(float) * (size_t)nL * B * 3 * L * L);
    Rng r = rng_make(11, 0, 0, 0);
    for (size_t i = 0; i < (size_t)2 * B * 3 * G * G; i++) glob[i] = (float)rng_normal(&r);
    for (size_t i = 0; i < (size_t)nL * B * 3 * L * L; i++) loc[i] = (float)rng_normal(&r);
    uint8_t *masks = calloc((size_t)2 * B * Ng, 1);
    int n_masked = 0;
    if (with_masks)
        for (int i = 0; i < 2 * B; i += 2) // every other crop image: a few tokens
            for (int t = i % 5; t < Ng; t += 3) masks[(size_t)i * Ng + t] = 1, n_masked++;
    SslBatch b = {.global_crops = glob, .local_crops = loc, .masks = with_masks ? masks : NULL, .drop_key = rng_make(1, 2, 3, 4)};
    ScheduleValues sv = {.teacher_temp = 0.05, .lr = 0, .momentum = 1};
    SslStepStats ref, got;
    CHECK(ssl_forward_backward(&ssl, be, NULL, &b, &sv, &ref, err) == 0, "%s", err);

    const int Kd = teacher.Kd, Ki = teacher.Ki;
    float *P = malloc(sizeof(float) * (size_t)2 * B * Kd), *Pi = malloc(sizeof(float) * (size_t)(n_masked + 1) * Ki);
    int nm = distill_teacher_targets(&teacher, be, NULL, glob, with_masks ? masks : NULL, 0.05f, P, Pi);
    CHECK(nm == n_masked, "teacher saw %d masked tokens, %d drawn", nm, n_masked);
    SslTargets tg = {.dino = P, .ibot = Pi};
    CHECK(ssl_student_forward_backward(&student, be, &b, &tg, &got, err) == 0, "%s", err);

    printf("ssl step:     local %.7f global %.7f ibot %.7f koleo %.7f entropy %.6f/%.6f\n", ref.dino_local_crops_loss,
           ref.dino_global_crops_loss, ref.ibot_loss, ref.koleo_loss, ref.teacher_entropy, ref.ibot_teacher_entropy);
    printf("distillation: local %.7f global %.7f ibot %.7f koleo %.7f entropy %.6f/%.6f\n", got.dino_local_crops_loss,
           got.dino_global_crops_loss, got.ibot_loss, got.koleo_loss, got.teacher_entropy, got.ibot_teacher_entropy);
    const double tol = 1e-5;
    CHECK(fabs(got.teacher_entropy - ref.teacher_entropy) < tol, "DINO targets differ (entropy %g vs %g)",
          got.teacher_entropy, ref.teacher_entropy);
    CHECK(fabs(got.dino_local_crops_loss - ref.dino_local_crops_loss) < tol * fabs(ref.dino_local_crops_loss),
          "local loss %g vs %g", got.dino_local_crops_loss, ref.dino_local_crops_loss);
    if (!with_masks) {
        CHECK(fabs(got.dino_global_crops_loss - ref.dino_global_crops_loss) < tol * fabs(ref.dino_global_crops_loss),
              "global loss %g vs %g", got.dino_global_crops_loss, ref.dino_global_crops_loss);
        CHECK(fabs(got.koleo_loss - ref.koleo_loss) < tol * fabs(ref.koleo_loss) + 1e-7, "koleo %g vs %g", got.koleo_loss,
              ref.koleo_loss);
        float *ga = malloc(sizeof(float) * n), *gb = malloc(sizeof(float) * n);
        be->to_host(be, ga, ssl.grads, sizeof(float) * n);
        be->to_host(be, gb, student.grads, sizeof(float) * n);
        double md = 0, mx = 0;
        for (size_t i = 0; i < n; i++) md = fmax(md, fabs((double)ga[i] - gb[i])), mx = fmax(mx, fabs(ga[i]));
        printf("gradients: max difference %.3g of max %.3g\n", md, mx);
        CHECK(mx > 0 && md <= 1e-5 * mx, "gradients differ by %g (max %g)", md, mx);
        free(ga), free(gb);
    } else {
        CHECK(fabs(got.ibot_teacher_entropy - ref.ibot_teacher_entropy) < tol, "iBOT targets differ (entropy %g vs %g)",
              got.ibot_teacher_entropy, ref.ibot_teacher_entropy);
        // the reference iBOT loss: the unmasked student's iBOT-head logits on the masked tokens against Pi,
        // weighted 1 / (masked tokens of the image), over 2B images
        VitActs *a = vit_acts_new(be, &student.vit, 2 * B, G, VIT_ACTS_FORWARD_ONLY);
        float *img = be->alloc(be, sizeof(float) * (size_t)2 * B * 3 * G * G);
        be->to_device(be, img, glob, sizeof(float) * (size_t)2 * B * 3 * G * G);
        const float *x = vit_forward(be, &student.vit, student.student, a, img, NULL, NULL);
        const int T = vit_acts_tokens(a), D = sc.vit.dim;
        float *tok = malloc(sizeof(float) * (size_t)2 * B * T * D), *rows = malloc(sizeof(float) * (size_t)nm * D);
        be->to_host(be, tok, x, sizeof(float) * (size_t)2 * B * T * D);
        int k = 0;
        double *wt = malloc(sizeof(double) * (size_t)nm);
        for (int i = 0; i < 2 * B; i++) {
            int cnt = 0;
            for (int t = 0; t < Ng; t++) cnt += masks[(size_t)i * Ng + t];
            for (int t = 0; t < Ng; t++)
                if (masks[(size_t)i * Ng + t]) {
                    memcpy(rows + (size_t)k * D, tok + ((size_t)i * T + 1 + 1 + t) * D, sizeof(float) * D);
                    wt[k++] = 1.0 / cnt;
                }
        }
        const Head *ih = separate_head ? &student.ibot_head : &student.dino_head;
        HeadActs *ha = head_acts_new(be, ih, nm, 0);
        float *rin = be->alloc(be, sizeof(float) * (size_t)nm * D);
        be->to_device(be, rin, rows, sizeof(float) * (size_t)nm * D);
        const float *z = head_forward(be, ih, student.student, ha, rin, nm);
        float *zh = malloc(sizeof(float) * (size_t)nm * Ki);
        be->to_host(be, zh, z, sizeof(float) * (size_t)nm * Ki);
        double loss = 0;
        for (int i = 0; i < nm; i++) {
            const float *zi = zh + (size_t)i * Ki, *pi = Pi + (size_t)i * Ki;
            double mxz = -1e30, s = 0, ce = 0;
            for (int j = 0; j < Ki; j++) mxz = fmax(mxz, zi[j] / sc.student_temp);
            for (int j = 0; j < Ki; j++) s += exp(zi[j] / sc.student_temp - mxz);
            for (int j = 0; j < Ki; j++) ce -= pi[j] * (zi[j] / sc.student_temp - mxz - log(s));
            loss += wt[i] * ce;
        }
        loss /= 2 * B;
        printf("iBOT reference %.7f, distillation step %.7f\n", loss, 2 * got.ibot_loss);
        CHECK(loss > 0 && fabs(2 * got.ibot_loss - loss) < 1e-5 * loss, "iBOT loss %g, reference %g", 2 * got.ibot_loss,
              loss);
        head_acts_free(be, ha);
        be->release(be, rin);
        be->release(be, img);
        vit_acts_free(be, a);
        free(tok), free(rows), free(wt), free(zh);
    }
    free(P), free(Pi), free(glob), free(loc), free(masks), free(host);
    distill_teacher_free(&teacher, be);
    ssl_model_free(&ssl, be);
    ssl_model_free(&student, be);
    backend_free(be);
}

TEST(student_equal_to_teacher_matches_the_ssl_step) { compare_steps(0, 1); }
TEST(ibot_against_teacher_targets_with_unmasked_student) { compare_steps(1, 1); }
TEST(ibot_against_teacher_targets_one_shared_head) { compare_steps(1, 0); }

TEST(bad_distillation_configs_named) {
    const char *tmp = test_tmpdir();
    char path[4300], text[4096], err[DINO_ERRLEN];
    Config cfg;
    const char *cases[][2] = {
        {"multidistillation: {enabled: true, global_batch_size: 4, students: [{name: a, config_path: x.yaml, "
         "ranks_range: [0, 1]}, {name: b, config_path: y.yaml, ranks_range: [2, 3]}]}\n"
         "distillation: {enabled: true, full_cfg_path: t.yaml, checkpoint_path: t}\n",
         "must be non-empty and start at 1"},
        {"multidistillation: {enabled: true, global_batch_size: 3, students: [{name: a, config_path: x.yaml, "
         "ranks_range: [0, 2]}]}\ndistillation: {enabled: true, full_cfg_path: t.yaml, checkpoint_path: t}\n",
         "not divisible by the 2 ranks of student 'a'"},
        {"multidistillation: {enabled: true, global_batch_size: 4, students: [{name: a, config: x.yaml, "
         "ranks_range: [0, 1]}]}\n",
         "'config' is not name"},
        {"multidistillation: {enabled: true, global_batch_size: 4, students: [{name: a, config_path: x.yaml, "
         "ranks_range: [0, 1]}]}\n",
         "the students need a teacher"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(path, sizeof path, "%s/bad%zu.yaml", tmp, i);
        snprintf(text, sizeof text, "%s", cases[i][0]);
        write_file(path, text);
        CHECK(config_load(&cfg, path, 0, NULL, err) != 0, "case %zu accepted", i);
        CHECK(strstr(err, cases[i][1]) && strstr(err, "distillation"),
              "case %zu: message '%s' lacks '%s'", i, err, cases[i][1]);
    }
    // a student whose file is missing or invalid: named with its file, by dinotrain before any process starts
    snprintf(path, sizeof path, "%s/main.yaml", tmp);
    snprintf(text, sizeof text,
             "multidistillation: {enabled: true, global_batch_size: 4, students: [{name: a, config_path: %s/nope.yaml, "
             "ranks_range: [0, 1]}]}\ndistillation: {enabled: true, full_cfg_path: t.yaml, checkpoint_path: t}\n", tmp);
    write_file(path, text);
    CHECK(config_load(&cfg, path, 0, NULL, err) == 0, "%s", err);
    Config st;
    CHECK(distill_student_config(&cfg, 0, &st, err) != 0 && strstr(err, "nope.yaml") && strstr(err, "'a'"),
          "missing student file: %s", err);
    char cmd[9000], out[4400];
    snprintf(out, sizeof out, "%s/check.log", tmp);
    snprintf(cmd, sizeof cmd, "./dinotrain --check %s > %s 2>&1", path, out);
    int rc = system(cmd);
    FILE *f = fopen(out, "r");
    char line[2048] = "";
    if (f) {
        if (!fgets(line, sizeof line, f)) line[0] = 0;
        fclose(f);
    }
    CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 2 && strstr(line, "nope.yaml"), "dinotrain --check: status %d, '%s'", rc,
          line);
    // a student that does not validate once merged: batch 4 over 4 ranks leaves KoLeo one image per rank
    snprintf(path, sizeof path, "%s/koleo.yaml", tmp);
    write_file(path, "dino: {koleo_loss_weight: 0.1}\n");
    snprintf(path, sizeof path, "%s/main2.yaml", tmp);
    snprintf(text, sizeof text,
             "multidistillation: {enabled: true, global_batch_size: 4, students: [{name: k, config_path: %s/koleo.yaml, "
             "ranks_range: [0, 4]}]}\ndistillation: {enabled: true, full_cfg_path: t.yaml, checkpoint_path: t}\n", tmp);
    write_file(path, text);
    CHECK(config_load(&cfg, path, 0, NULL, err) == 0, "%s", err);
    CHECK(distill_student_config(&cfg, 0, &st, err) != 0 && strstr(err, "student 'k'") && strstr(err, "KoLeo"),
          "merged student: %s", err);

    // a valid list survives the resolved YAML (what checkpoints keep)
    snprintf(path, sizeof path, "%s/good.yaml", tmp);
    write_file(path, "multidistillation: {enabled: true, global_batch_size: 4, students: [{name: a, config_path: "
                     "x.yaml, ranks_range: [0, 1]}, {name: b, config_path: y.yaml, ranks_range: [1, 3]}]}\n"
                     "distillation: {enabled: true, full_cfg_path: t.yaml, checkpoint_path: t}\n");
    CHECK(config_load(&cfg, path, 0, NULL, err) == 0, "%s", err);
    char *yaml = config_to_yaml(&cfg);
    Config back;
    CHECK(config_load_string(&back, yaml, "resolved", 0, NULL, err) == 0, "%s", err);
    const char *diff = NULL;
    CHECK(config_equal(&cfg, &back, &diff), "resolved config differs at %s", diff ? diff : "?");
    CHECK(back.multidistillation.n_students == 2 && back.multidistillation.students[1].ranks_range[1] == 3 &&
              strcmp(back.multidistillation.students[1].config_path, "y.yaml") == 0,
          "students read back wrong");
    free(yaml);
}

// The student's batch from the gathered shares: each image with its own crops and its own target rows,
// the iBOT rows in the student's mask order. Every row is labelled with (rank, crop, image, token).
TEST(gathered_shares_give_each_image_its_own_rows) {
    const int W = 3, Bt = 2, Ng = 5, K = 2, share_rows = 2 * Bt * Ng;
    uint8_t masks[3 * 2 * 2 * 5];
    Rng r = rng_make(3, 0, 0, 0);
    for (size_t i = 0; i < sizeof masks; i++) masks[i] = rng_uniform(&r) < 0.4;
    float rows[3 * 20 * 2], item[3 * 2 * 2]; // ibot rows; one float per (rank, crop, image)
    for (int rk = 0; rk < W; rk++) {
        int n = 0;
        for (int c = 0; c < 2; c++)
            for (int j = 0; j < Bt; j++) {
                item[(rk * 2 + c) * Bt + j] = (float)(100 * rk + 10 * c + j);
                for (int t = 0; t < Ng; t++)
                    if (masks[((size_t)rk * 2 * Bt + c * Bt + j) * Ng + t]) {
                        rows[((size_t)rk * share_rows + n) * K] = (float)(1000 * rk + 100 * c + 10 * j + t);
                        rows[((size_t)rk * share_rows + n) * K + 1] = -1;
                        n++;
                    }
            }
    }
    // a student of 2 ranks (Bs = 3): its second rank holds global images 3, 4, 5 (ranks 1 and 2)
    const int Bs = 3, first = 3;
    float part[2 * 3], got[2 * 3 * 5 * 2];
    distill_take_part(part, item, sizeof(float), 2, Bt, Bs, first);
    int n = distill_take_ibot_rows(got, rows, masks, Bt, Ng, share_rows, K, first, Bs), k = 0;
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < Bs; i++) {
            const int g = first + i, rk = g / Bt, j = g % Bt;
            CHECK(part[c * Bs + i] == (float)(100 * rk + 10 * c + j), "crop %d image %d: item %g", c, i, part[c * Bs + i]);
            for (int t = 0; t < Ng; t++)
                if (masks[((size_t)rk * 2 * Bt + c * Bt + j) * Ng + t]) {
                    CHECK(k < n && got[k * K] == (float)(1000 * rk + 100 * c + 10 * j + t) && got[k * K + 1] == -1,
                          "row %d: %g, want %d", k, got[k * K], 1000 * rk + 100 * c + 10 * j + t);
                    k++;
                }
        }
    CHECK(k == n && n > 0, "%d rows taken, %d expected", n, k);
}
