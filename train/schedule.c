#include "train/schedule.h"

#include <math.h>

double cosine_schedule_at(const CosineSchedule *s, long it) {
    if (it >= s->total) return s->final;
    if (it < s->freeze) return 0.0;
    long j = it - s->freeze;
    if (j < s->warmup) {
        // numpy.linspace(start, base, warmup): step (base - start)/(warmup - 1), last point exactly base
        if (s->warmup == 1) return s->start_warmup;
        if (j == s->warmup - 1) return s->base;
        return s->start_warmup + (double)j * ((s->base - s->start_warmup) / (double)(s->warmup - 1));
    }
    long k = j - s->warmup, n = s->total - s->warmup - s->freeze;
    return s->final + 0.5 * (s->base - s->final) * (1.0 + cos(M_PI * (double)k / (double)n));
}

double scaled_lr(double base_lr, long global_batch) { return base_lr * sqrt((double)global_batch / 1024.0); }

ScheduleConfig schedule_config_default(double base_lr, long global_batch) {
    return (ScheduleConfig){
        .lr = scaled_lr(base_lr, global_batch),
        .min_lr = 1e-6,
        .weight_decay = 0.04,
        .weight_decay_end = 0.4,
        .momentum_teacher = 0.992,
        .final_momentum_teacher = 1.0,
        .warmup_teacher_temp = 0.04,
        .teacher_temp = 0.07,
        .epochs = 100,
        .warmup_epochs = 10,
        .warmup_teacher_temp_epochs = 30,
        .freeze_last_layer_epochs = 1,
        .epoch_length = 1250,
    };
}

ScheduleValues schedule_at(const ScheduleConfig *c, long it) {
    const long E = c->epoch_length, total = c->epochs * E;
    CosineSchedule lr = {c->lr, c->min_lr, total, c->warmup_epochs * E, 0, 0.0};
    CosineSchedule wd = {c->weight_decay, c->weight_decay_end, total, 0, 0, 0.0};
    CosineSchedule mom = {c->momentum_teacher, c->final_momentum_teacher, total, 0, 0, 0.0};
    const long tt_len = c->warmup_teacher_temp_epochs * E;
    CosineSchedule tt = {c->teacher_temp, c->teacher_temp, tt_len, tt_len, 0, c->warmup_teacher_temp};
    ScheduleValues v;
    v.lr = cosine_schedule_at(&lr, it);
    v.wd = cosine_schedule_at(&wd, it);
    v.momentum = cosine_schedule_at(&mom, it);
    v.teacher_temp = cosine_schedule_at(&tt, it);
    // a copy of the lr schedule whose first freeze_last_layer_epochs * E entries are set to 0
    v.last_layer_lr = it < c->freeze_last_layer_epochs * E ? 0.0 : v.lr;
    return v;
}
