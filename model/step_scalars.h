// The per-step scalar block (docs/cuda-backend.md, "CUDA graphs"): every value of a training step that
// changes from one step to the next lives here, in backend memory (device memory on a GPU, ordinary memory
// on the cpu backend), so that the kernels of a step take only pointers and per-model constants as
// arguments and a step captured once as a CUDA graph can be replayed with new values.
//
// Who writes what:
//  - `in`: the host, once per step: one to_device of the host's copy of `in` at the start of the step
//    (ssl_step.c: ssl_scalars_upload). Nothing else writes it.
//  - `out`: the device during the step (zeroed by the same upload's be->zero at the start of the step):
//    the sums of squares of the gradients, the clip coefficients, the bias corrections, the NaN flag.
//    The host reads it back when it reads the step's statistics (ssl_read_step_stats), never in between.
//  - `state`: the device across steps (AdamW's step count: it must not advance on a skipped step, which
//    the host learns of late). The host sets it only through in.adam_step_set.
// The ops that read or write the block end in `_ss` and take it as their last argument (model/backend.h).
#pragma once
#include <stdint.h>

#define DINO_SS_GROUPS 4      // clipping groups (ParamGroup: backbone, DINO head, iBOT head; one spare)
#define DINO_SS_BIAS_WINDOW 4 // AdamW bias corrections the host precomputes (see in.bias1)

typedef struct {
    struct {
        double lr, last_layer_lr, wd; // AdamW: the schedule's values (lr_t = (float)(lr * lr_mult), as torch)
        double momentum;              // EMA teacher momentum (used as (float))
        double teacher_temp;          // teacher temperature of softmax centering (used as (float))
        double gram_weight;           // DINOv3 Gram loss weight (gram_loss_ss reads it)
        double dino_local_weight;     // DINO local-crop loss weight (softmax_ce_ss reads it)
        // AdamW bias corrections 1 - beta^s for s = bias_step - k, k < DINO_SS_BIAS_WINDOW, computed on the
        // host with the C library's pow as today: the device's step s (state.adam_step + 1) picks its
        // entry (any other s, only after more skipped steps than the window: pow on the device).
        double bias_step;
        double bias1[DINO_SS_BIAS_WINDOW], bias2[DINO_SS_BIAS_WINDOW];
        double adam_step_set; // >= 0: state.adam_step takes this value before the step (a checkpoint); else -1
    } in;
    struct {
        double grad_ss[DINO_SS_GROUPS];   // per clipping group: sum of squares of the gradients (before clipping)
        double clip_coef[DINO_SS_GROUPS]; // clip_grad_norm_'s factor per group (1: no clipping)
        double bias1, bias2;              // this step's 1 - beta1^s, 1 - beta2^s
        int32_t nonfinite;                // the step's loss is not finite: the update ops are no-ops
        int32_t pad_;
    } out;
    struct {
        double adam_step; // AdamW steps applied so far (an integer)
    } state;
} DinoStepScalars;

// The arithmetic both backends share (host code, and device code under nvcc), in double as the host
// computed it before the block existed, so the cpu backend's bits are unchanged and the cuda backend's
// follow the same formulas (no multiply-add in them that a compiler could fuse).
#ifdef __CUDACC__
#define DINO_SS_FN static inline __host__ __device__
#else
#define DINO_SS_FN static inline
#endif
#include <math.h>

// torch.nn.utils.clip_grad_norm_'s factor from a sum of squares (train/optim.c's clip_coef).
DINO_SS_FN double dino_ss_clip_coef(double sum_squares, double max_norm) {
    if (!(max_norm > 0)) return 1.0;
    const double coef = max_norm / (sqrt(sum_squares) + 1e-6);
    return coef < 1.0 ? coef : 1.0;
}

// After the clip coefficients: a count the host set (a resumed checkpoint) is taken, on a skipped step too
// (the host counts it as delivered); unless the step is not finite, AdamW's step count then advances and
// this step's bias corrections are set (update_prepare_ss).
DINO_SS_FN void dino_ss_prepare(DinoStepScalars *ss, int groups, double max_norm, float beta1, float beta2) {
    for (int g = 0; g < groups && g < DINO_SS_GROUPS; g++)
        ss->out.clip_coef[g] = dino_ss_clip_coef(ss->out.grad_ss[g], max_norm);
    if (ss->in.adam_step_set >= 0) ss->state.adam_step = ss->in.adam_step_set;
    if (ss->out.nonfinite) return;
    const double s = ss->state.adam_step + 1.0;
    ss->state.adam_step = s;
    const double k = ss->in.bias_step - s;
    if (k >= 0 && k < DINO_SS_BIAS_WINDOW) {
        ss->out.bias1 = ss->in.bias1[(int)k];
        ss->out.bias2 = ss->in.bias2[(int)k];
    } else {
        ss->out.bias1 = 1.0 - pow((double)beta1, s);
        ss->out.bias2 = 1.0 - pow((double)beta2, s);
    }
}
