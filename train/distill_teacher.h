// The frozen teacher of a distillation run (dinov3 SSLMetaArch._setup_distillation): a backbone with its
// DINO and iBOT heads, built from the teacher's own config, its weights from a training run's checkpoint
// (the EMA teacher: backbone and heads) or from a weights file (backbone only; heads then fresh). It runs
// forward only and turns a batch's global crops into the centred DINO and iBOT targets the students learn
// from, as the teacher half of the SSL step computes them (train/ssl_step.c).
#pragma once
#include <stdint.h>

#include "model/backend.h"
#include "model/collective.h"
#include "model/head.h"
#include "model/loss.h"
#include "model/params.h"
#include "model/vit.h"
#include "train/config.h"

typedef struct {
    VitConfig vit_cfg;
    Vit vit;
    Head dino_head, ibot_head;
    int separate_ibot;             // the teacher's ibot.separate_head
    ParamTable tab;                // backbone.*, dino_head.*, ibot_head.* as in a training checkpoint
    float *params;                 // backend memory
    TeacherCenter dino_center, ibot_center; // softmax centering: world-wide, saved in every student's checkpoint
    Centering centering;
    int B, crop, Ng, Tg, max_masked;
    VitActs *acts;
    HeadActs *h_dino, *h_ibot;
    float *img, *t_in, *P_dino, *P_ibot;
    int *idx_cls, *idx_mask;
    int *idx_host;
} DistillTeacher;

// Builds the teacher of `tcfg` (its config file) for batches of B images of global crops `crop` with at
// most max_masked masked tokens, and loads its weights from `weights` (distillation.checkpoint_path).
// verbose: print what was loaded. Returns 0, or -1 with err naming the file and the problem.
int distill_teacher_init(DistillTeacher *t, Backend *be, const Config *tcfg, Centering centering,
                         float center_momentum, int B, int crop, int max_masked, const char *weights, int verbose,
                         char *err);
void distill_teacher_free(DistillTeacher *t, Backend *be);

// Targets of one batch (host in, host out): global_crops [2B,3,crop,crop] crop-major, masks [2B*Ng] or NULL.
// P_dino [2B,K] (row c*B+i: the teacher on the other crop of image i), P_ibot [n_masked,Ki] in mask order.
// coll sums over every rank that holds a part of the global batch (Sinkhorn-Knopp, centres). Returns the
// number of masked tokens.
int distill_teacher_targets(DistillTeacher *t, Backend *be, Collective *coll, const float *global_crops,
                            const uint8_t *masks, float teacher_temp, float *P_dino, float *P_ibot);
