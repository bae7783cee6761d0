// dinotrain: DINOv2 pretraining. `dinotrain CONFIG.yaml [section.key=value ...]`, alone or under
// mpirun / srun. Starting again with the same output_dir resumes from the newest valid checkpoint.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/threads.h"
#include "dist/dist.h"
#include "train/config.h"
#include "train/distill.h"
#include "train/memory_plan.h"
#include "train/train.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: dinotrain [--no-resume] [--iterations N] [--check] [--plan-memory [--world N] [--fit GIB]]\n"
            "                 CONFIG.yaml [section.key=value ...]\n"
            "  --no-resume     start from scratch even if output_dir holds checkpoints\n"
            "  --iterations N  stop after N iterations of this run (the schedules still span the whole run)\n"
            "  --check         load and validate the config, print the resolved YAML, and exit\n"
            "  --plan-memory   print the device memory per GPU this config needs (no GPU needed), and exit;\n"
            "                  --world N: as one of N ranks (ZeRO-1 shards the optimizer over them);\n"
            "                  --fit GIB: also the largest batch per GPU that fits a card of GIB GiB (79 for an\n"
            "                  80 GB H100; 2 GiB are kept for the CUDA context and libraries)\n"
            "Configs: configs/*.yaml; keys: docs/configuration.md.\n");
}

int main(int argc, char **argv) {
    dino_prefer_passive_openmp(argv);
    TrainOptions opt = {0};
    int check_only = 0, plan = 0, world = 1, i = 1;
    double fit_gib = 0;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        if (strcmp(argv[i], "--no-resume") == 0) opt.no_resume = 1;
        else if (strcmp(argv[i], "--check") == 0) check_only = 1;
        else if (strcmp(argv[i], "--plan-memory") == 0) plan = 1;
        else if (strcmp(argv[i], "--world") == 0 && i + 1 < argc) world = atoi(argv[++i]);
        else if (strcmp(argv[i], "--fit") == 0 && i + 1 < argc) fit_gib = atof(argv[++i]);
        else if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) opt.max_iterations = atoll(argv[++i]);
        else if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "dinotrain: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *path = argv[i++];
    char err[DINO_ERRLEN];
    Config cfg;
    // The config is refused before anything else starts (no MPI, no threads, no files written).
    if (config_load(&cfg, path, argc - i, argv + i, err)) {
        fprintf(stderr, "dinotrain: %s\n", err);
        return 2;
    }
    // a distillation run: every student's config and the teacher's are read and validated here too
    if (cfg.multidistillation.enabled) {
        Config other;
        for (int k = 0; k < cfg.multidistillation.n_students; k++)
            if (distill_student_config(&cfg, k, &other, err)) {
                fprintf(stderr, "dinotrain: %s\n", err);
                return 2;
            }
        if (config_load(&other, cfg.distillation.full_cfg_path, 0, NULL, err)) {
            fprintf(stderr, "dinotrain: distillation.full_cfg_path: %s\n", err);
            return 2;
        }
    }
    if (check_only) {
        char *yaml = config_to_yaml(&cfg);
        fputs(yaml, stdout);
        free(yaml);
        return 0;
    }
    if (plan && cfg.multidistillation.enabled) { // one plan per student, on its ranks (the frozen teacher not counted)
        for (int k = 0; k < cfg.multidistillation.n_students; k++) {
            const CfgStudentRef *st = &cfg.multidistillation.students[k];
            Config sc;
            MemoryPlan mp;
            const int ranks = st->ranks_range[1] - st->ranks_range[0];
            if (distill_student_config(&cfg, k, &sc, err) || memory_plan(&sc, ranks, &mp, err)) {
                fprintf(stderr, "dinotrain: %s\n", err);
                return 2;
            }
            printf("student '%s' (%s) on %d ranks, without the frozen teacher:\n", st->name, st->config_path, ranks);
            memory_plan_print(stdout, &sc, &mp);
        }
        return 0;
    }
    if (plan) {
        MemoryPlan mp;
        if (world < 1 || memory_plan(&cfg, world, &mp, err)) {
            fprintf(stderr, "dinotrain: %s\n", world < 1 ? "--world must be at least 1" : err);
            return 2;
        }
        memory_plan_print(stdout, &cfg, &mp);
        if (fit_gib > 0) {
            const double usable = fit_gib - 2.0; // the CUDA context, cuBLAS and NCCL workspaces
            int b = usable > 0 ? memory_plan_max_batch(&cfg, world, (size_t)(usable * 1073741824.0), err) : 0;
            if (b < 0) {
                fprintf(stderr, "dinotrain: %s\n", err);
                return 2;
            }
            if (b == 0) printf("  does not fit %.1f GiB even at 2 images per GPU\n", fit_gib);
            else
                printf("  fits %.1f GiB (%.1f for dinotrain) up to train.batch_size_per_gpu=%d\n", fit_gib, usable, b);
        }
        return 0;
    }
    Dist d;
    if (dist_init(&d, cfg.collective_timeout_s, err)) { // also NCCL's (train.c passes d.timeout_s on)
        fprintf(stderr, "dinotrain: %s\n", err);
        return 1;
    }
    TrainResult res;
    // multidistillation.enabled: students of a frozen teacher on groups of ranks (train/distill.c)
    char student[CFG_NAME] = "";
    int rc = cfg.multidistillation.enabled ? distill_run(&cfg, &d, &opt, &res, student, err)
                                           : train_run(&cfg, &d, &opt, &res, err);
    if (rc) {
        if (d.world > 1) dist_abort(&d, "%s", err);
        fprintf(stderr, "dinotrain: %s\n", err);
        dist_finalize(&d);
        return 1;
    }
    if (student[0] && res.last_checkpoint[0]) // each student's first rank
        printf("dinotrain: student '%s': checkpoint %s\n", student, res.last_checkpoint);
    if (d.rank == 0) {
        printf("dinotrain: done, iterations %lld..%lld", (long long)res.start_iteration, (long long)res.end_iteration);
        if (res.skipped_steps) printf(" (%lld skipped: non-finite loss)", (long long)res.skipped_steps);
        printf("\n  output:     %s\n", cfg.train.output_dir);
        if (res.last_checkpoint[0] && !student[0]) printf("  checkpoint: %s\n", res.last_checkpoint);
    }
    dist_finalize(&d);
    return 0;
}
