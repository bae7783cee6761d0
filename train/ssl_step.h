// One complete DINOv2 training step (the reference's SSLMetaArch.forward_backward plus the optimizer
// step and the EMA update of train.py's loop) on a backend:
//   teacher: ViT on the 2B global crops (unmasked, no stochastic depth) -> CLS swapped [g2; g1] and the
//            masked patch tokens -> head(s) -> targets (softmax centering or Sinkhorn-Knopp);
//   student: ViT on the global crops (iBOT-masked) and on the local crops (own drop-path subsets) ->
//            head input [local CLS; global CLS; masked patch tokens] (one shared head, or the DINO head
//            on the CLS rows and a separate iBOT head on the masked rows);
//   losses (model/loss.h) -> backward -> gradient clipping per submodule -> AdamW -> EMA teacher.
// The trainer owns the loop, data and schedules; this unit takes crops, masks and schedule values as
// plain arrays.
#pragma once
#include <stdint.h>

#include "common/rng.h"
#include "model/backend.h"
#include "model/collective.h"
#include "model/head.h"
#include "model/loss.h"
#include "model/params.h"
#include "model/vit.h"
#include "train/optim.h"
#include "train/schedule.h"

#define SSL_MAX_PAIRS 8

typedef struct {
    VitConfig vit;
    HeadConfig dino_head;        // in_dim is set from the ViT
    int ibot_separate_head;      // 0: iBOT uses the DINO head (reference default); 1: own ibot_head
    HeadConfig ibot_head;        // used when separate
    int batch;                   // B: images per rank
    int n_local;                 // local crops per image (8)
    int global_crop, local_crop; // crop sides in pixels (size pair 0)
    // High-resolution phase: n_pairs (global, local) size pairs, each step runs one of them (SslBatch.pair,
    // ssl_stage_batch_pair). 0 or 1: the one pair (global_crop, local_crop). Pair 0 must be that pair.
    // Activations exist for one pair at a time (created when a step needs another pair); the other
    // buffers are sized for the largest sides.
    int n_pairs;
    int pair_global[SSL_MAX_PAIRS], pair_local[SSL_MAX_PAIRS];
    int max_masked;              // capacity for masked tokens per rank per step (0: B * N, half the tokens)
    Centering centering;
    float student_temp;          // 0.1
    float center_momentum;       // 0.9
    float dino_loss_weight;      // 1.0
    float ibot_loss_weight;      // 1.0 (0 disables iBOT)
    float koleo_loss_weight;     // 0.1 (0 disables)
    int use_kde;                 // KDE regularizer in KoLeo's place
    float kde_loss_weight, kde_kappa;
    float clip_grad;             // 3.0 (0 disables)
    float adamw_beta1, adamw_beta2, adamw_eps;
    float layerwise_decay, patch_embed_lr_mult; // 0.9, 0.2
    // ZeRO-1 (0 or 1: off): the optimizer is sharded over zero_world processes and this is zero_rank: the
    // flat buffers are padded as dist_shard(total, zero_world, zero_rank, PARAM_ALIGN) and the AdamW moments
    // exist for this rank's shard only.
    int zero_world, zero_rank;
    // DINOv3 Gram anchoring (docs/gram-anchoring.md): a frozen Gram teacher backbone (m->gram_teacher) on
    // its own copies of the global crops (SslBatch.gram_crops, gram_crop / pair_gram px, unmasked); its final-norm patch
    // tokens, resampled bicubically to the student's grid when larger, anchor the Gram matrices of the
    // student's (masked) global-crop patch tokens (be->gram_loss, weight SslBatch.gram_weight).
    int gram;                    // 1: Gram anchoring possible (allocates the Gram teacher and its buffers)
    int gram_crop;               // the Gram teacher's crop side (>= global_crop; 0: global_crop)
    // per size pair (n_pairs > 1): the Gram teacher's crop side of pair k (0: that pair's global side;
    // pair 0: gram_crop). One pair's Gram activations exist at a time, like the student's.
    int pair_gram[SSL_MAX_PAIRS];
    int gram_normalize;          // gram.normalized
    int gram_neg_mode;           // 0, 1 gram.remove_neg, 2 gram.remove_only_teacher_neg
    int gram_img_level;          // 1: a Gram matrix per image; 0: one over all 2B crops' tokens
    int gram_resize_antialias;   // gram.global_teacher_resize_antialias
    int reweight_dino_local;     // dino.reweight_dino_local_loss: SslBatch.dino_local_weight weights the local loss
    int recompute_activations;   // student backbone: keep only block inputs, recompute in backward
    int staged_upload;           // allocate two staging slots for ssl_stage_batch (the trainer does)
    int student_only;            // distillation: the step runs only ssl_student_forward_backward (targets from a
                                 // frozen teacher): the EMA teacher's activations are not allocated
} SslConfig;

// The reference's defaults around a ViT config (heads 2048/256/65536, 3 layers; B, crops set by caller).
void ssl_config_default(SslConfig *c, const VitConfig *vit);
// Returns 0, or -1 with err naming the problem (e.g. KoLeo with one image per rank).
int ssl_config_check(const SslConfig *c, char *err);

typedef struct {
    SslConfig cfg;
    Vit vit;
    Head dino_head, ibot_head;
    ParamTable tab;                  // backbone.*, dino_head.*, ibot_head.* (when separate)
    // The step's scalar block (model/step_scalars.h), backend memory: the schedule values uploaded at the
    // start of each step, and after the update the gradient norms (out.grad_ss), the NaN flag
    // (out.nonfinite) and AdamW's count (state.adam_step) for the deferred read-back (ssl_read_step_stats).
    DinoStepScalars *scalars;
    float *student, *teacher, *grads; // backend memory, ParamTable layout, buffer_floats each (zeros past tab.total)
    size_t buffer_floats;            // tab.total, or padded for ZeRO-1
    size_t shard_begin, shard_end;   // the range this process updates: [0, tab.total), or its ZeRO-1 shard
    AdamW opt;                       // moments for [shard_begin, shard_end)
    TeacherCenter dino_center, ibot_center;
    // Gram anchoring (cfg.gram): the Gram teacher's backbone, backbone_floats floats in the ParamTable
    // layout (the backbone tensors come first); set by ssl_gram_from_teacher or by the caller (a
    // checkpoint), then gram_ready = 1
    float *gram_teacher;
    size_t backbone_floats;
    int gram_ready;
    // the backend's bf16 copies of student, teacher [and Gram teacher] (be->param_copy_register; 0 on cpu)
    size_t weight_copy_bytes;
    // Optional: called during ssl_forward_backward whenever every gradient from `offset` to the end of
    // the buffer is final (after the heads, then after each backbone block), so a data-parallel trainer
    // can start averaging those gradients while the backward pass goes on.
    void (*grad_ready)(void *ctx, size_t offset);
    void *grad_ready_ctx;
    int profile_phases;              // benchmarks: synchronise between the step's phases and time them
    void *work;                      // activations and scratch (ssl_step.c)
} SslModel;

// Builds the model, initialises the student as the reference (seeded) and copies it into the teacher.
int ssl_model_init(SslModel *m, Backend *be, const SslConfig *cfg, uint64_t seed, char *err);
void ssl_model_free(SslModel *m, Backend *be);

// Collapse diagnostics of one step (docs/training.md, "Reading the collapse diagnostics"), filled by the
// step when SslBatch.diag is set; the caller owns the arrays (2B rows: crop-major global crops). It costs a
// copy of the teacher's global-crop tokens and of the DINO targets and student global logits to the host,
// so the trainer asks for it on a few steps per log line only.
typedef struct {
    int *teacher_argmax;   // [2B] argmax prototype of the DINO teacher targets
    float *teacher_cls;    // [2B,D] teacher backbone CLS (after the final norm)
    float *teacher_patch;  // [2B,D] teacher backbone mean patch token
    double agreement;      // share of global crops whose student argmax = the teacher argmax of the other crop
} SslDiag;

typedef struct {
    const float *global_crops; // host [2B,3,G,G], crop-major ([crop][image])
    const float *local_crops;  // host [n_local*B,3,L,L], crop-major
    const uint8_t *masks;      // host [2B*N] nonzero = masked (iBOT), or NULL
    const int *drop_global;    // host drop-path subsets [depth][2][S] (vit_draw_drop_subsets), or NULL:
    const int *drop_local;     //   drawn from drop_key when the rate is > 0
    Rng drop_key;              // unique per step
    int staged;                // 1: crops and masks were given to ssl_stage_batch instead (the fields
                               //    above are then ignored, but for drop_* and drop_key)
    int pair;                  // the size pair of the crops (not staged; a staged batch carries its own)
    SslDiag *diag;             // collapse diagnostics of this step wanted (NULL: none)
    // DINOv3 additions (the schedules' values at this iteration)
    const float *gram_crops;   // host [2B,3,Gg,Gg] at the pair's Gram side Gg, crop-major (or staged: ssl_stage_gram_pair)
    double gram_weight;        // Gram loss weight: 0 = no Gram teacher pass, no Gram loss
    double dino_local_weight;  // with cfg.reweight_dino_local: the local-crop DINO loss weight
} SslBatch;

// Copies the EMA teacher's backbone into the Gram teacher (gram.it_load_ema_teacher, gram.rep_update:
// dinov3 SSLMetaArch.gram_load_ema_teacher / update_gram with m = 0); sets gram_ready.
void ssl_gram_from_teacher(SslModel *m, Backend *be);
// Staged upload of the next batch's Gram crops (cfg.gram and cfg.staged_upload): call before the
// ssl_stage_batch of the same batch; same rules as its crops.
void ssl_stage_gram(SslModel *m, Backend *be, const float *gram_crops, int crops_pinned);
// The same for a batch of size pair `pair` (its crops pair_gram[pair] px): call before its ssl_stage_batch_pair.
void ssl_stage_gram_pair(SslModel *m, Backend *be, int pair, const float *gram_crops, int crops_pinned);

// Overlapped upload of the next batch (needs cfg.staged_upload): starts the upload of the batch's crops
// to a spare device slot on the backend's copy queue and keeps a copy of its masks (NULL: none). The next
// ssl_forward_backward with batch->staged = 1 takes the oldest staged batch; at most two batches can be
// staged and not yet consumed (the current one and the next).
// crops_pinned = 1: the crops are in be->host_alloc memory and are uploaded from there, so they must stay
// unchanged until be->sync returns. 0: they are first copied into the model's page-locked staging and
// may be reused at once.
void ssl_stage_batch(SslModel *m, Backend *be, const float *global_crops, const float *local_crops,
                     const uint8_t *masks, int crops_pinned);
// The same for crops of size pair `pair` (SslConfig.n_pairs).
void ssl_stage_batch_pair(SslModel *m, Backend *be, int pair, const float *global_crops, const float *local_crops,
                          const uint8_t *masks, int crops_pinned);
// Makes the activations of size pair `pair` the current ones (freeing the others'): a step does it itself;
// the memory plan calls it to count every pair.
void ssl_use_pair(SslModel *m, Backend *be, int pair);

typedef struct {
    // the losses as the reference logs them (koleo_loss and ibot_loss halved; total = their sum)
    double dino_local_crops_loss, dino_global_crops_loss, koleo_loss, ibot_loss, total_loss;
    double backprop_loss;       // what was differentiated: local + global + koleo + ibot (+ gram) (with weights)
    double gram_loss;           // the Gram anchoring loss (0 when not computed: weight 0); gram_weight x this
                                // is in total_loss and backprop_loss
    double dino_local_weight;   // the local-crop DINO loss weight used (1 unless reweighted)
    // collapse guard
    double teacher_entropy;      // mean entropy of the DINO teacher targets (ln K = uniform, 0 = one-hot)
    double ibot_teacher_entropy; // the same for the iBOT targets
    double student_cls_std;      // mean over dims of the batch std of the L2-normalized student CLS (0 = collapse)
    double grad_norm[3];         // per submodule, before clipping
    int n_masked;
    double phase_s[3];           // with m->profile_phases: teacher; student forward + losses; backward (s)
} SslStepStats;

// One training step: ssl_step_issue, then ssl_step_finish. Returns 0, or -1 with err set (bad batch, or a
// NaN/Inf loss: then nothing is applied: model, moments, centres and AdamW's count stay as they were).
// A data-parallel trainer calls ssl_forward_backward and ssl_update itself and averages the gradients
// over ranks between them.
int ssl_step(SslModel *m, Backend *be, Collective *coll, const SslBatch *batch, const ScheduleValues *sv,
             SslStepStats *stats, char *err);
// The step issued without a host wait (but the diagnostics' with batch->diag, and a bad batch's): forward,
// backward, the losses' read-backs, ssl_update and the read-back of the scalar block's `out` part (grad
// norms, NaN flag), all into one page-locked block. On a GPU with graphs in replay mode this is one graph
// segment, launched by ssl_step_finish's wait (docs/cuda-backend.md, "CUDA graphs"). Whether the loss was
// finite is decided on the device (the step's NaN flag): a NaN step applies nothing. Returns -1 only for a
// bad batch (err set; the update is issued anyway and applies nothing). Stage the next batch
// (ssl_stage_batch) before this call or after ssl_step_finish, not in between: the step still reads its slot.
int ssl_step_issue(SslModel *m, Backend *be, Collective *coll, const SslBatch *batch, const ScheduleValues *sv,
                   SslStepStats *stats, char *err);
// Waits once for the issued step and sums its read-backs on the host: stats (losses, entropies, the CLS
// spread, grad norms: 0 on a step not applied). Returns 0, or -1 with err set when the step was not applied
// (a NaN/Inf loss, or a bad batch); the host's AdamW count then goes back as with ssl_read_step_stats.
int ssl_step_finish(SslModel *m, Backend *be, SslStepStats *stats, char *err);

// Teacher and student forward, the losses and the student's gradients (m->grads, overwritten), no update.
// It starts with the upload of the step's scalar block (sv, the batch's loss weights) and raises the
// block's NaN flag on the device when a loss is not finite, so a following ssl_update does nothing.
// Returns -1 with err set when the loss is NaN or Inf (or the batch is bad; the flag is raised then too):
// calling ssl_update after that is allowed and applies nothing.
int ssl_forward_backward(SslModel *m, Backend *be, Collective *coll, const SslBatch *batch, const ScheduleValues *sv,
                         SslStepStats *stats, char *err);
// Distillation (train/distill.c): the targets of a frozen teacher that ran elsewhere, for this batch.
typedef struct {
    const float *dino; // host [2B, Kd]: row c*B+i is the target of the student's global crop c of image i, i.e.
                       // the teacher's centred probabilities on the OTHER global crop of image i (the rows
                       // ssl_forward_backward computes from its swapped teacher CLS [g2; g1])
    const float *ibot; // host [n_masked, Ki]: the teacher's centred probabilities on the batch's masked tokens,
                       // in the order of the masks (crop-major: crop, image, token); NULL without iBOT
} SslTargets;

// The student half of ssl_forward_backward against given targets, as the official distillation step
// (dinov3 SSLMetaArch with distillation.enabled): the student sees its global crops UNMASKED (the masks only
// pick the tokens whose iBOT targets it must predict), local crops as usual; DINO local + global, KoLeo (or
// KDE) and iBOT losses; gradients into m->grads. The model's own EMA teacher and centres are not used.
// batch->staged must be 0 and batch->diag NULL. Returns -1 with err set when the loss is not finite.
int ssl_student_forward_backward(SslModel *m, Backend *be, const SslBatch *batch, const SslTargets *targets,
                                 SslStepStats *stats, char *err);

// Gradient clipping per submodule, AdamW, EMA teacher, on the whole model: device work only, every
// per-step value from m->scalars (no host wait, the same kernel arguments at every step), a no-op when
// the step's NaN flag is raised (the centres then go back to their values before the step). `sv` must
// be the forward's (a different one is uploaded again: the distillation path). The grad norms are in
// the block: ssl_read_step_stats.
void ssl_update(SslModel *m, Backend *be, const ScheduleValues *sv, SslStepStats *stats);
// After ssl_update: reads the block back (one host wait): stats->grad_norm (per submodule, before
// clipping) and the NaN flag; returns -1 when the step was not applied (then the host's AdamW count,
// advanced by ssl_update, is taken back). Call it once per update, as late as convenient.
int ssl_read_step_stats(SslModel *m, Backend *be, SslStepStats *stats);
// The same from a copy of the block taken right after an update (its `out` part; e.g. copied by the step's
// graph into page-locked memory and read steps later): once per update, in the order of the updates.
int ssl_step_stats_from_block(SslModel *m, const DinoStepScalars *copy, SslStepStats *stats);
// Raises the step's NaN flag (one small upload): the next ssl_update applies nothing (a trainer whose other
// ranks found a non-finite loss).
void ssl_mark_nonfinite(SslModel *m, Backend *be);

// The sharded update (ZeRO-1): the same on floats [m->shard_begin, m->shard_end) only, whose gradients
// must hold the average over ranks. The clipping norms are over the whole model: `sum_f64` sums the
// per-submodule sums of squares (n doubles, in place) over the ranks (NULL: one process; not NULL: the
// sums are read back, summed on the host and uploaded again: one host wait). Afterwards
// the caller all-gathers student and teacher.
typedef void (*SslSumF64)(void *ctx, double *v, int n);
void ssl_update_shard(SslModel *m, Backend *be, const ScheduleValues *sv, SslSumF64 sum_f64, void *ctx,
                      SslStepStats *stats);

// Backend memory the model holds, by purpose (bytes). Whatever else the step allocates (head and loss
// activations, logits, crops, masks) is the backend's total minus these.
typedef struct {
    size_t weights;        // student + teacher (fp32 master copies; the teacher is the EMA) [+ Gram teacher],
                           // and the backend's bf16 copies of them that its GEMMs read (cuda)
    size_t grads;          // the student's gradient buffer
    size_t optimizer;      // AdamW moments (this rank's ZeRO-1 shard)
    size_t student_acts;   // student backbone activations, global + local crops
    size_t teacher_acts;   // teacher backbone activations (forward only) [+ the Gram teacher's]
} SslMemory;
SslMemory ssl_memory(const SslModel *m);

// Teacher (or student) backbone CLS features of images [n,3,crop,crop] (host), into out[n,D] (host):
// for k-NN evaluation.
void ssl_embed(SslModel *m, Backend *be, int use_teacher, const float *images, int n, int crop, float *out);
