// How much device memory a training configuration needs per GPU, without a GPU: the whole training
// state (ssl_model_init: weights, gradients, AdamW moments, every activation and loss buffer) is built
// on the plan backend (model/backend_plan.h), which counts the bytes the same calls allocate on the
// CUDA backend. `dinotrain --plan-memory CONFIG [--world N]` prints it.
#pragma once
#include <stdio.h>

#include "train/config.h"
#include "train/ssl_step.h"

typedef struct {
    int world;        // ranks (the ZeRO-1 shard of the moments depends on it)
    int batch;        // images per GPU
    SslMemory model;  // by purpose
    size_t other;     // head/loss activations, logits, crops, masks: total - the categories
    size_t total;     // every byte the training state allocates on the backend (at the largest size pair)
    int pair;         // the size pair of that peak (crops.global_crops_size list index)
} MemoryPlan;

// Returns 0, or -1 with err set (a config the model refuses).
int memory_plan(const Config *cfg, int world, MemoryPlan *p, char *err);
// The largest train.batch_size_per_gpu (>= 2, KoLeo needs two images) whose plan fits in `bytes`, the
// others of cfg unchanged: 0 when even 2 does not fit, -1 with err set on a refused config. Memory grows
// linearly with the batch: two plans give the line, a few more pin the exact answer.
int memory_plan_max_batch(const Config *cfg, int world, size_t bytes, char *err);
void memory_plan_print(FILE *f, const Config *cfg, const MemoryPlan *p);
