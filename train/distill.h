// Multi-student distillation (dinov3 MultiDistillationMetaArch + train.py's multidistillation path): one
// frozen teacher and several students of different sizes, each on its own group of ranks, trained at once.
//
// Every iteration the whole world loads one global batch of multidistillation.global_batch_size images
// (each rank a share of global_batch_size / world), the teacher runs once on it (each rank on its share)
// and produces the centred DINO and iBOT targets (Sinkhorn-Knopp or softmax centering over the whole
// batch); crops, masks and targets are then gathered so that every student group holds the whole batch,
// split over its ranks (global_batch_size / ranks of the student each). Each student trains on it as in
// the official distillation step (global crops unmasked; DINO, KoLeo and iBOT losses against the
// teacher's targets) with its own optimizer, EMA, schedules, metrics and checkpoints in
// <train.output_dir>/<name>. dinotrain selects this when multidistillation.enabled is true.
// docs/distillation.md.
#pragma once
#include "dist/dist.h"
#include "train/config.h"
#include "train/train.h"

// Runs (or resumes) the distillation run of `cfg` (the main config). res describes this rank's student;
// student_name_out (may be NULL, CFG_NAME bytes) receives its name. Returns 0, or -1 with err set.
int distill_run(const Config *cfg, Dist *world, const TrainOptions *opt, TrainResult *res, char *student_name_out,
                char *err);

// The resolved config of student `index` of the main config cfg: its own file, then the keys the main
// file sets (dinov3's merge), then what the whole run shares (data, crops, augmentation, masking, seed, run
// length, teacher temperatures and centering, checkpoint and log periods, backend) from the main config;
// output_dir <main output_dir>/<name>, batch global_batch_size / its ranks. Returns 0, or -1 with err set.
int distill_student_config(const Config *cfg, int index, Config *out, char *err);
