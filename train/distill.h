// Multi-student distillation (dinov3 MultiDistillationMetaArch + train.py's multidistillation path): one
// frozen teacher and several students of different sizes, each on its own group of ranks, trained at once.
//
// Every iteration the whole world loads one global batch of multidistillation.global_batch_size images
// (each rank a share of global_batch_size / world) and the teacher runs once on it (each rank its share,
// up to the normalised bottleneck of its heads). Crops, masks and those features are all-gathered; each
// student rank takes its part of the batch (global_batch_size / the student's ranks images), applies the
// teacher's last layers and centres the targets (Sinkhorn-Knopp or softmax centre) over its student's
// ranks, which together hold the batch once. Each student trains on it as the official distillation step
// does (global crops unmasked; DINO, KoLeo and iBOT losses against the teacher's targets) with its own
// optimizer, EMA, schedules, metrics and checkpoints in <train.output_dir>/<name>. dinotrain selects this
// when multidistillation.enabled is true. docs/distillation.md.
#pragma once
#include <stddef.h>
#include <stdint.h>

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

// The batch of a student's rank from the world's gathered shares (rank r's share of Bt images holds the
// global images r*Bt ... r*Bt+Bt-1): the student's images are first ... first+Bs-1.
// Per-image items (crops, masks, DINO target rows), `crops` per image, crop-major in every share:
// dst[c][i] = all[r][c][j] for image g = first + i, r = g / Bt, j = g % Bt (items of `item` bytes).
void distill_take_part(void *dst, const void *all, size_t item, int crops, int Bt, int Bs, int first);
// The iBOT target rows: rank r's rows (K floats each) start at rows_all + r * share_rows * K in the order of
// its masks (crop, image, token; masks_all: every rank's [2*Bt*Ng] masks). Writes the student's rows in its
// own mask order (crop, image, token) and returns their number.
int distill_take_ibot_rows(float *dst, const float *rows_all, const uint8_t *masks_all, int Bt, int Ng, int share_rows,
                           int K, int first, int Bs);
