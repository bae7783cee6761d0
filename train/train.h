// The training loop: the only place that knows the whole run. It wires the config, the tile sources and
// loader, the model and objective (train/ssl_step.h), the distributed layer, the metrics log and the
// checkpoints together. train/dinotrain.c is a thin program around train_run.
#pragma once
#include <stdint.h>

#include "dist/dist.h"
#include "train/config.h"
#include "train/ssl_step.h"

typedef struct {
    int64_t max_iterations; // stop after this many iterations in this call (0: run to the end) - tests
    int no_resume;          // ignore checkpoints in output_dir (start from scratch)
    int quiet;              // no console lines (tests)
} TrainOptions;

typedef struct {
    int64_t start_iteration, end_iteration; // [start, end) run by this call
    int64_t skipped_steps;                  // non-finite losses: update not applied
    double last_total_loss;
    char last_checkpoint[4096];
    // the collapse diagnostics at the last log line (train/collapse.h), rank 0
    const char *collapse;                  // NULL, or what collapsed
    double margin, usage, rankme_cls, rankme_init;
    int prototypes;
    int64_t cuda_graph_launches;           // compute_precision.cuda_graphs: graphs launched by this call
} TrainResult;

// The model and objective settings of a config for rank `rank` of `world` (ZeRO-1 shard, iBOT head
// capacity). Returns 0, or -1 with err set.
int train_ssl_config(const Config *cfg, int world, int rank, SslConfig *sc, char *err);

// Runs (or resumes) the training described by cfg. Returns 0, or -1 with err set (bad data source, too
// many corrupt tiles, repeated NaN losses, I/O failure ...); the last good checkpoint stays intact.
int train_run(const Config *cfg, Dist *d, const TrainOptions *opt, TrainResult *res, char *err);
