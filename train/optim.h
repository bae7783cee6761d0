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

typedef struct {
    float beta1, beta2, eps; // 0.9, 0.999, 1e-8
    float *m, *v;            // fp32 moments, backend memory, ParamTable layout
    long step;               // steps taken (bias corrections use step + 1 on the next call)
} AdamW;

void adamw_init(AdamW *opt, Backend *be, size_t total, float beta1, float beta2, float eps);
void adamw_free(AdamW *opt, Backend *be);
// One step on every tensor: lr_t = (is_last_layer ? last_layer_lr : lr) * lr_mult, wd_t = wd * wd_mult.
void adamw_step(AdamW *opt, Backend *be, const ParamTable *tab, float *params, const float *grads, double lr,
                double last_layer_lr, double wd);

// torch.nn.utils.clip_grad_norm_ over the tensors of one group: total = ||g||_2; if max_norm / (total +
// 1e-6) < 1 the gradients are scaled by it. Returns the total norm before clipping.
double clip_grad_norm_group(Backend *be, const ParamTable *tab, float *grads, ParamGroup group, double max_norm);

// EMA teacher over every tensor: teacher = m teacher + (1 - m) student.
void ema_update(Backend *be, const ParamTable *tab, float *teacher, const float *student, double momentum);
