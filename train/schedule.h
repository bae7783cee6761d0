// DINOv2's schedules (dinov2/train/train.py build_schedulers, dinov2/utils/utils.py CosineScheduler) as
// pure functions of the iteration, so a resumed run recomputes them exactly.
#pragma once

// The reference's CosineScheduler: `freeze` zeros, then linspace(start_warmup, base, warmup) (endpoints
// included), then final + (base - final)/2 (1 + cos(pi k / (total - warmup - freeze))), k = 0..; any
// iteration >= total gives final.
typedef struct {
    double base, final;
    long total, warmup, freeze;
    double start_warmup;
} CosineSchedule;

double cosine_schedule_at(const CosineSchedule *s, long it);

typedef struct {
    double lr;             // already scaled: base_lr * sqrt(global_batch / 1024) (see scaled_lr)
    double min_lr;         // 1e-6
    double weight_decay, weight_decay_end;        // 0.04 -> 0.4
    double momentum_teacher, final_momentum_teacher; // 0.992 -> 1
    double warmup_teacher_temp, teacher_temp;     // 0.04 -> 0.07
    long epochs, warmup_epochs, warmup_teacher_temp_epochs, freeze_last_layer_epochs;
    long epoch_length;     // OFFICIAL_EPOCH_LENGTH, 1250
} ScheduleConfig;

typedef struct {
    double lr, wd, momentum, teacher_temp, last_layer_lr;
} ScheduleValues;

// The reference's defaults (ssl_default_config.yaml) for a given base_lr and global batch.
ScheduleConfig schedule_config_default(double base_lr, long global_batch);
// The "sqrt_wrt_1024" scaling rule: base_lr * sqrt(global_batch / 1024).
double scaled_lr(double base_lr, long global_batch);
ScheduleValues schedule_at(const ScheduleConfig *c, long it);
