// The schedules as pure functions of the iteration, so a resumed run recomputes them exactly:
// DINOv2's (dinov2/train/train.py build_schedulers, dinov2/utils/utils.py CosineScheduler), the
// default, and DINOv3's "schedules v2" (dinov3/train/train.py build_schedulers_v2,
// dinov3/train/cosine_lr_scheduler.py linear_warmup_cosine_decay), used when a config has `schedules:`.
// See docs/schedules.md.
#pragma once
#include <stdbool.h>

// The reference's CosineScheduler: `freeze` zeros, then linspace(start_warmup, base, warmup) (endpoints
// included), then final + (base - final)/2 (1 + cos(pi k / (total - warmup - freeze))), k = 0..; any
// iteration >= total gives final. trunc_extra > 0 (DINOv3's optim.schedule_trunc_extra): the cosine is
// computed over (1 + trunc_extra) times its length, cut, and rescaled so that it still ends at final.
typedef struct {
    double base, final;
    long total, warmup, freeze;
    double start_warmup;
    double trunc_extra; // 0 = DINOv2's cosine
} CosineSchedule;

double cosine_schedule_at(const CosineSchedule *s, long it);

// DINOv3's linear_warmup_cosine_decay: linspace(start, peak, warmup) without its end point, then a cosine
// from peak to end over `cosine` iterations (both ends included), then end until `total`. cosine < 0 (the
// config has no cosine_epochs): all iterations after the warm-up. The official array ends at total; here
// any later iteration gives end. Also the form of dino.local_loss_weight_schedule and
// gram.loss_weight_schedule.
typedef struct {
    double start, peak, end;
    long warmup, cosine, total;
} WarmupCosineSchedule;

double warmup_cosine_at(const WarmupCosineSchedule *s, long it);

// One entry of the `schedules:` config section, in epochs of OFFICIAL_EPOCH_LENGTH iterations.
typedef struct {
    double start, peak, end;
    int warmup_epochs;
    int cosine_epochs; // -1 = absent: the rest of the run after the warm-up
} ScheduleSpec;

// The spec over a run of `epochs` epochs of `epoch_length` iterations.
WarmupCosineSchedule schedule_spec_iterations(const ScheduleSpec *s, long epochs, long epoch_length);

typedef struct {
    double lr;             // already scaled: base_lr * sqrt(global_batch / 1024) (see scaled_lr)
    double min_lr;         // 1e-6
    double weight_decay, weight_decay_end;        // 0.04 -> 0.4
    double momentum_teacher, final_momentum_teacher; // 0.992 -> 1
    double warmup_teacher_temp, teacher_temp;     // 0.04 -> 0.07
    long epochs, warmup_epochs, warmup_teacher_temp_epochs, freeze_last_layer_epochs;
    long epoch_length;     // OFFICIAL_EPOCH_LENGTH, 1250
    double trunc_extra;    // DINOv3 optim.schedule_trunc_extra (lr, wd, momentum); 0 = DINOv2
    // DINOv3's `schedules:` section; when `v3` is set these replace everything above but epochs and
    // epoch_length. lr3's peak and end are already scaled (see dinov3_lr_scale).
    bool v3;
    ScheduleSpec lr3, wd3, momentum3, teacher_temp3;
    long freeze_last_layer_epochs3;
} ScheduleConfig;

typedef struct {
    double lr, wd, momentum, teacher_temp, last_layer_lr;
} ScheduleValues;

// The reference's defaults (ssl_default_config.yaml) for a given base_lr and global batch.
ScheduleConfig schedule_config_default(double base_lr, long global_batch);
// The "sqrt_wrt_1024" scaling rule: base_lr * sqrt(global_batch / 1024).
double scaled_lr(double base_lr, long global_batch);
// DINOv3's factor on schedules.lr.peak and .end: sqrt_wrt_1024: 4 sqrt(global_batch / 1024) (the 4 is
// the official's); linear_wrt_256: global_batch / 256; anything else: 1.
double dinov3_lr_scale(const char *scaling_rule, long global_batch);
ScheduleValues schedule_at(const ScheduleConfig *c, long it);
