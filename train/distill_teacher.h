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
    int separate_ibot;             // the teacher's ibot.separate_head (else iBOT rows go through the DINO head)
    ParamTable tab;                // backbone.*, dino_head.*, ibot_head.* as in a training checkpoint
    float *params;                 // backend memory
    TeacherCenter dino_center, ibot_center; // softmax centering (state: saved in every student's checkpoint)
    Centering centering;
    int B, Bs, crop, Ng, Tg, max_masked, max_masked_s;
    int Kd, Ki, nbd, nbi;          // prototypes and bottleneck widths of the DINO and iBOT rows
    VitActs *acts;
    HeadActs *f_dino, *f_ibot;     // the MLP halves on this rank's share (B images)
    HeadActs *l_dino, *l_ibot;     // the last layers on a student's batch (Bs images)
    float *img, *t_in, *z_in, *zi_in, *P_dino, *P_ibot;
    int *idx_cls, *idx_mask;
    int *idx_host;
} DistillTeacher;

// Builds the teacher of `tcfg` (its config file) for shares of B images (global crops `crop`, at most
// max_masked masked tokens) and student batches of Bs images (at most max_masked_s masked tokens), and loads
// its weights from `weights` (distillation.checkpoint_path). verbose: print what was loaded. Returns 0, or -1
// with err naming the file and the problem.
int distill_teacher_init(DistillTeacher *t, Backend *be, const Config *tcfg, Centering centering,
                         float center_momentum, int B, int Bs, int crop, int max_masked, int max_masked_s,
                         const char *weights, int verbose, char *err);
void distill_teacher_free(DistillTeacher *t, Backend *be);

// Phase 1, on this rank's share (host in, host out): global_crops [2B,3,crop,crop] crop-major, masks [2B*Ng]
// or NULL. z_dino [2B, nbd]: the normalised bottleneck of the DINO head on the teacher's CLS, row c*B+i from
// the OTHER global crop of image i (the swap of the SSL step); z_ibot [n_masked, nbi] (NULL: no iBOT): on the
// masked tokens, in mask order. Returns the number of masked tokens.
int distill_teacher_features(DistillTeacher *t, Backend *be, const float *global_crops, const uint8_t *masks,
                             float *z_dino, float *z_ibot);
// Phase 2, on a student's batch of Bs images (its rows of every share's features): the heads' last layers and
// the centering (Sinkhorn-Knopp or softmax centre) summed over `coll`, the ranks that together hold the
// global batch once (a student's ranks, as dinov3). P_dino [2Bs, Kd], P_ibot [n_masked, Ki] (host).
void distill_teacher_targets_from_features(DistillTeacher *t, Backend *be, Collective *coll, const float *z_dino,
                                           const float *z_ibot, int n_masked, float teacher_temp, float *P_dino,
                                           float *P_ibot);
// Both phases on one batch (B == Bs): what the teacher half of the SSL step computes. Returns n_masked.
int distill_teacher_targets(DistillTeacher *t, Backend *be, Collective *coll, const float *global_crops,
                            const uint8_t *masks, float teacher_temp, float *P_dino, float *P_ibot);
