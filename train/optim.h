// The optimizer side of DINOv2: the reference's parameter groups (dinov2/utils/param_groups.py), AdamW
// with per-tensor multipliers, per-submodule gradient clipping and the EMA teacher, as loops over the
// ParamTable (parameters, gradients, moments and teacher share its offsets).
#pragma once
#include "model/backend.h"
#include "model/params.h"

// Fills lr_mult, wd_mult and is_last_layer of every tensor as the reference:
//  backbone: lr_mult = layerwise_decay^(L + 1 - layer_id) (layer ids from vit_build: 0 embeddings and
//            tokens, i+1 block i, L+1 the rest; L = number of blocks), times patch_embed_lr_mult for
//            names containing "patch_embed"; heads: lr_mult 1;
//  wd_mult = 0 for names ending ".bias" or containing "norm" or "gamma", else 1;
//  is_last_layer for names containing "last_layer".
void optim_assign_param_groups(ParamTable *tab, float layerwise_decay, float patch_embed_lr_mult);

// Every loop below can be restricted to floats [begin, end) of the ParamTable layout: the part of the
// model one process owns under ZeRO-1 (a range may cut tensors; each element keeps its tensor's
// multipliers). The whole-model calls are the range [0, tab->total), so there is one implementation.

typedef struct {
    float beta1, beta2, eps; // 0.9, 0.999, 1e-8
    float *m, *v;            // fp32 moments, backend memory: floats [base, base + n) of the ParamTable layout
    size_t base, n;          // the part of the layout the moments cover (0, total for a single process)
    long step;               // steps taken (bias corrections use step + 1 on the next call)
} AdamW;

// Moments (zeros) for floats [begin, end) of the layout: [0, total) for the whole model, a ZeRO-1 shard.
void adamw_init(AdamW *opt, Backend *be, size_t begin, size_t end, float beta1, float beta2, float eps);
void adamw_free(AdamW *opt, Backend *be);
// One step on the parts of the tensors inside [begin, end) (which must lie within the moments' range):
// lr_t = (is_last_layer ? last_layer_lr : lr) * lr_mult, wd_t = wd * wd_mult. Advances opt->step: call it
// once per step (each process on its own range).
void adamw_step_range(AdamW *opt, Backend *be, const ParamTable *tab, float *params, const float *grads, double lr,
                      double last_layer_lr, double wd, size_t begin, size_t end);
// One step on every tensor (the range [0, tab->total)).
void adamw_step(AdamW *opt, Backend *be, const ParamTable *tab, float *params, const float *grads, double lr,
                double last_layer_lr, double wd);

// Gradient clipping as torch.nn.utils.clip_grad_norm_ over the tensors of one group: total = ||g||_2; if
// max_norm / (total + 1e-6) < 1 the gradients are scaled by it. Sharded, the total is the square root of
// the sum over processes of grad_sum_squares_range over each one's range.
double grad_sum_squares_range(Backend *be, const ParamTable *tab, const float *grads, ParamGroup group, size_t begin,
                              size_t end);
// The factor clip_grad_norm_ scales by for a total norm (1 when no clipping is needed).
double clip_coef(double total_norm, double max_norm);
void grad_scale_range(Backend *be, const ParamTable *tab, float *grads, ParamGroup group, double coef, size_t begin,
                      size_t end);
// The whole-model call: returns the total norm before clipping.
double clip_grad_norm_group(Backend *be, const ParamTable *tab, float *grads, ParamGroup group, double max_norm);

// EMA teacher: teacher = m teacher + (1 - m) student, on the parts of the tensors inside [begin, end).
void ema_update_range(Backend *be, const ParamTable *tab, float *teacher, const float *student, double momentum,
                      size_t begin, size_t end);
// ... on every tensor.
void ema_update(Backend *be, const ParamTable *tab, float *teacher, const float *student, double momentum);

// ---- the same update with the step's values in backend memory (model/step_scalars.h) ---------------------
// Nothing here waits for the device or bakes a per-step value into an op's arguments: the schedule values,
// clip coefficients and bias corrections come from the scalar block `ss` (backend memory), whose `in`
// part the host fills with adamw_fill_scalars and uploads at the start of the step. Bit-identical to the
// calls above on the cpu backend.

// The AdamW part of the host's copy of ss->in for the next step (lr, last_layer_lr, wd and the bias
// corrections of the steps opt->step + 1 back to opt->step + 2 - DINO_SS_BIAS_WINDOW).
void adamw_fill_scalars(const AdamW *opt, DinoStepScalars *host, double lr, double last_layer_lr, double wd);
// ss->out.grad_ss[slot] += the sum of squares of the group's gradients in [begin, end) (device-side).
void grad_sum_squares_ss(Backend *be, const ParamTable *tab, const float *grads, ParamGroup group, size_t begin,
                         size_t end, int slot, DinoStepScalars *ss);
// grads of the group in [begin, end) *= ss->out.clip_coef[slot] when it is < 1.
void grad_clip_ss(Backend *be, const ParamTable *tab, float *grads, ParamGroup group, size_t begin, size_t end, int slot,
                  const DinoStepScalars *ss);
// One AdamW step on [begin, end) (no-op on the device when ss->out.nonfinite); run after update_prepare_ss.
// Advances opt->step on the host as if it were applied (the caller takes it back when it reads a NaN flag).
void adamw_step_ss(AdamW *opt, Backend *be, const ParamTable *tab, float *params, const float *grads, size_t begin,
                   size_t end, const DinoStepScalars *ss);
// The EMA teacher on [begin, end) with ss->in.momentum (no-op when ss->out.nonfinite).
void ema_update_ss(Backend *be, const ParamTable *tab, float *teacher, const float *student, size_t begin, size_t end,
                   const DinoStepScalars *ss);
