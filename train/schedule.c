#include "train/schedule.h"

#include <math.h>
#include <string.h>

// numpy.linspace(a, b, n)[k] = a + k * ((b - a) / div), with the last point exactly b when the end
// point is included (div = n - 1) and n > 1.
static double linspace_at(double a, double b, long n, long k, int endpoint) {
    long div = endpoint ? n - 1 : n;
    if (endpoint && n > 1 && k == n - 1) return b;
    if (div <= 0) return a;
    double step = (b - a) / (double)div;
    if (step == 0.0) return (double)k / (double)div * (b - a) + a;
    return (double)k * step + a;
}

double cosine_schedule_at(const CosineSchedule *s, long it) {
    if (it >= s->total) return s->final;
    if (it < s->freeze) return 0.0;
    long j = it - s->freeze;
    if (j < s->warmup) return linspace_at(s->start_warmup, s->base, s->warmup, j, 1);
    long k = j - s->warmup, n = s->total - s->warmup - s->freeze;
    if (s->trunc_extra == 0.0) return s->final + 0.5 * (s->base - s->final) * (1.0 + cos(M_PI * (double)k / (double)n));
    // linspace(0, pi, int((1 + trunc_extra) n))[:n], cos, (c + 1)/2, rescaled so its n-th value is 0
    long m = (long)((1.0 + s->trunc_extra) * (double)n);
    double c = (cos(linspace_at(0.0, M_PI, m, k, 1)) + 1.0) / 2.0;
    double last = (cos(linspace_at(0.0, M_PI, m, n - 1, 1)) + 1.0) / 2.0;
    c = (c - last) / (1.0 - last);
    return c * (s->base - s->final) + s->final;
}

double warmup_cosine_at(const WarmupCosineSchedule *s, long it) {
    if (it < s->warmup) return linspace_at(s->start, s->peak, s->warmup, it, 0);
    long cosine = s->cosine < 0 ? s->total - s->warmup : s->cosine;
    long k = it - s->warmup;
    if (k >= cosine || it >= s->total) return s->end;
    double c = (cos(linspace_at(0.0, M_PI, cosine, k, 1)) + 1.0) / 2.0;
    return (s->peak - s->end) * c + s->end;
}

WarmupCosineSchedule schedule_spec_iterations(const ScheduleSpec *s, long epochs, long epoch_length) {
    return (WarmupCosineSchedule){
        .start = s->start,
        .peak = s->peak,
        .end = s->end,
        .warmup = s->warmup_epochs * epoch_length,
        .cosine = s->cosine_epochs < 0 ? -1 : s->cosine_epochs * epoch_length,
        .total = epochs * epoch_length,
    };
}

double scaled_lr(double base_lr, long global_batch) { return base_lr * sqrt((double)global_batch / 1024.0); }

double dinov3_lr_scale(const char *rule, long global_batch) {
    if (strcmp(rule, "sqrt_wrt_1024") == 0) return 4 * sqrt((double)global_batch / 1024.0);
    if (strcmp(rule, "linear_wrt_256") == 0) return (double)global_batch / 256.0;
    return 1.0;
}

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

static ScheduleValues schedule_v3_at(const ScheduleConfig *c, long it) {
    const long E = c->epoch_length;
    WarmupCosineSchedule lr = schedule_spec_iterations(&c->lr3, c->epochs, E);
    WarmupCosineSchedule wd = schedule_spec_iterations(&c->wd3, c->epochs, E);
    WarmupCosineSchedule mom = schedule_spec_iterations(&c->momentum3, c->epochs, E);
    WarmupCosineSchedule tt = schedule_spec_iterations(&c->teacher_temp3, c->epochs, E);
    ScheduleValues v;
    v.lr = warmup_cosine_at(&lr, it);
    v.wd = warmup_cosine_at(&wd, it);
    v.momentum = warmup_cosine_at(&mom, it);
    v.teacher_temp = warmup_cosine_at(&tt, it);
    v.last_layer_lr = it < c->freeze_last_layer_epochs3 * E ? 0.0 : v.lr;
    return v;
}

ScheduleValues schedule_at(const ScheduleConfig *c, long it) {
    if (c->v3) return schedule_v3_at(c, it);
    const long E = c->epoch_length, total = c->epochs * E;
    // DINOv3's build_schedulers gives trunc_extra to lr, wd and momentum, not to the teacher temperature
    CosineSchedule lr = {c->lr, c->min_lr, total, c->warmup_epochs * E, 0, 0.0, c->trunc_extra};
    CosineSchedule wd = {c->weight_decay, c->weight_decay_end, total, 0, 0, 0.0, c->trunc_extra};
    CosineSchedule mom = {c->momentum_teacher, c->final_momentum_teacher, total, 0, 0, 0.0, c->trunc_extra};
    const long tt_len = c->warmup_teacher_temp_epochs * E;
    CosineSchedule tt = {c->teacher_temp, c->teacher_temp, tt_len, tt_len, 0, c->warmup_teacher_temp, 0.0};
    ScheduleValues v;
    v.lr = cosine_schedule_at(&lr, it);
    v.wd = cosine_schedule_at(&wd, it);
    v.momentum = cosine_schedule_at(&mom, it);
    v.teacher_temp = cosine_schedule_at(&tt, it);
    // a copy of the lr schedule whose first freeze_last_layer_epochs * E entries are set to 0
    v.last_layer_lr = it < c->freeze_last_layer_epochs * E ? 0.0 : v.lr;
    return v;
}
