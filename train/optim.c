#include "train/optim.h"

#include <math.h>
#include <string.h>

#include "common/check.h"

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

void optim_assign_param_groups(ParamTable *tab, float layerwise_decay, float patch_embed_lr_mult) {
    int top = 0; // L + 1: the backbone's largest layer id (its final norm)
    for (int i = 0; i < tab->n; i++)
        if (tab->t[i].group == PARAM_BACKBONE && tab->t[i].layer_id > top) top = tab->t[i].layer_id;
    for (int i = 0; i < tab->n; i++) {
        TensorSpec *t = &tab->t[i];
        double lr_mult = 1.0;
        if (t->group == PARAM_BACKBONE) {
            lr_mult = pow(layerwise_decay, top - t->layer_id);
            if (strstr(t->name, "patch_embed")) lr_mult *= patch_embed_lr_mult;
        }
        t->lr_mult = (float)lr_mult;
        t->wd_mult = (ends_with(t->name, ".bias") || strstr(t->name, "norm") || strstr(t->name, "gamma")) ? 0.0f : 1.0f;
        t->is_last_layer = strstr(t->name, "last_layer") != NULL;
    }
}

void adamw_init(AdamW *opt, Backend *be, size_t begin, size_t end, float beta1, float beta2, float eps) {
    DINO_ASSERT(end >= begin, "adamw_init: reversed range [%zu, %zu)", begin, end);
    memset(opt, 0, sizeof *opt);
    opt->beta1 = beta1;
    opt->beta2 = beta2;
    opt->eps = eps;
    opt->base = begin;
    opt->n = end - begin;
    opt->m = be->alloc(be, sizeof(float) * (opt->n ? opt->n : 1));
    opt->v = be->alloc(be, sizeof(float) * (opt->n ? opt->n : 1));
}

void adamw_free(AdamW *opt, Backend *be) {
    if (opt->m) be->release(be, opt->m);
    if (opt->v) be->release(be, opt->v);
    opt->m = opt->v = NULL;
}

// The part [*lo, *hi) of tensor t inside [begin, end); returns 0 when they do not overlap.
static int clamp_to_range(const TensorSpec *t, size_t begin, size_t end, size_t *lo, size_t *hi) {
    *lo = t->offset > begin ? t->offset : begin;
    *hi = t->offset + t->numel < end ? t->offset + t->numel : end;
    return *lo < *hi;
}

void adamw_step_range(AdamW *opt, Backend *be, const ParamTable *tab, float *P, const float *G, double lr,
                      double last_layer_lr, double wd, size_t begin, size_t end) {
    DINO_ASSERT(begin >= opt->base && end <= opt->base + opt->n,
                "adamw_step_range: [%zu, %zu) outside the moments' range [%zu, %zu)", begin, end, opt->base,
                opt->base + opt->n);
    opt->step++;
    // one call per run of touching tensors with the same lr and weight decay (a block's norm weight and
    // bias, say): elementwise, so the bits are those of one call per tensor, in fewer GPU launches
    size_t run_lo = 0, run_hi = 0;
    float run_lr = 0, run_wd = 0;
    int open = 0;
    for (int i = 0; i <= tab->n; i++) {
        size_t lo = 0, hi = 0;
        float lr_f = 0, wd_f = 0;
        int have = 0;
        if (i < tab->n) {
            const TensorSpec *t = &tab->t[i];
            if (!clamp_to_range(t, begin, end, &lo, &hi)) continue;
            // torch computes group lr and weight decay in Python doubles
            lr_f = (float)((t->is_last_layer ? last_layer_lr : lr) * t->lr_mult);
            wd_f = (float)(wd * t->wd_mult);
            have = 1;
            if (open && lo == run_hi && lr_f == run_lr && wd_f == run_wd) {
                run_hi = hi;
                continue;
            }
        }
        if (open)
            be->adamw(be, P + run_lo, G + run_lo, opt->m + (run_lo - opt->base), opt->v + (run_lo - opt->base),
                      run_hi - run_lo, run_lr, run_wd, opt->beta1, opt->beta2, opt->eps, opt->step);
        open = have, run_lo = lo, run_hi = hi, run_lr = lr_f, run_wd = wd_f;
    }
}

void adamw_step(AdamW *opt, Backend *be, const ParamTable *tab, float *P, const float *G, double lr,
                double last_layer_lr, double wd) {
    adamw_step_range(opt, be, tab, P, G, lr, last_layer_lr, wd, 0, tab->total);
}

// Runs of tensors that touch in the flat buffer (no alignment gap between them), of one group (or any
// group when group < 0), clipped to [begin, end): one backend call per run instead of one per tensor. On a
// GPU that is a handful of launches (and of sum_squares read-backs) per step instead of hundreds; the
// reference widths (multiples of 16) make each group of a real model a single run. Calls
// fn(ctx, lo, hi) for each run; returns how many.
static int for_each_run(const ParamTable *tab, int group, size_t begin, size_t end,
                        void (*fn)(void *ctx, size_t lo, size_t hi), void *ctx) {
    int runs = 0;
    size_t run_lo = 0, run_hi = 0;
    int open = 0;
    for (int i = 0; i < tab->n; i++) {
        const TensorSpec *t = &tab->t[i];
        size_t lo, hi;
        if ((group >= 0 && (int)t->group != group) || !clamp_to_range(t, begin, end, &lo, &hi)) continue;
        if (open && lo == run_hi) {
            run_hi = hi; // touches the run: extend it
            continue;
        }
        if (open) fn(ctx, run_lo, run_hi), runs++;
        run_lo = lo, run_hi = hi, open = 1;
    }
    if (open) fn(ctx, run_lo, run_hi), runs++;
    return runs;
}

typedef struct {
    Backend *be;
    float *x;
    const float *y;
    double acc;
    float a;
} RunCtx;

static void run_sum_squares(void *c, size_t lo, size_t hi) {
    RunCtx *r = c;
    r->acc += r->be->sum_squares(r->be, r->y + lo, hi - lo);
}
static void run_scale(void *c, size_t lo, size_t hi) {
    RunCtx *r = c;
    r->be->scale(r->be, r->x + lo, r->a, hi - lo);
}
static void run_ema(void *c, size_t lo, size_t hi) {
    RunCtx *r = c;
    r->be->ema(r->be, r->x + lo, r->y + lo, hi - lo, r->a);
}

double grad_sum_squares_range(Backend *be, const ParamTable *tab, const float *G, ParamGroup group, size_t begin,
                              size_t end) {
    RunCtx r = {.be = be, .y = G};
    for_each_run(tab, (int)group, begin, end, run_sum_squares, &r);
    return r.acc;
}

double clip_coef(double total_norm, double max_norm) {
    double coef = max_norm / (total_norm + 1e-6);
    return coef < 1.0 ? coef : 1.0;
}

void grad_scale_range(Backend *be, const ParamTable *tab, float *G, ParamGroup group, double coef, size_t begin,
                      size_t end) {
    if (coef >= 1.0) return;
    RunCtx r = {.be = be, .x = G, .a = (float)coef};
    for_each_run(tab, (int)group, begin, end, run_scale, &r);
}

double clip_grad_norm_group(Backend *be, const ParamTable *tab, float *G, ParamGroup group, double max_norm) {
    double total = sqrt(grad_sum_squares_range(be, tab, G, group, 0, tab->total));
    grad_scale_range(be, tab, G, group, clip_coef(total, max_norm), 0, tab->total);
    return total;
}

void ema_update_range(Backend *be, const ParamTable *tab, float *teacher, const float *student, double momentum,
                      size_t begin, size_t end) {
    RunCtx r = {.be = be, .x = teacher, .y = student, .a = (float)momentum};
    for_each_run(tab, -1, begin, end, run_ema, &r);
}

void ema_update(Backend *be, const ParamTable *tab, float *teacher, const float *student, double momentum) {
    ema_update_range(be, tab, teacher, student, momentum, 0, tab->total);
}

// ---- the step's values in backend memory ---------------------------------------------------------------

void adamw_fill_scalars(const AdamW *opt, DinoStepScalars *h, double lr, double last_layer_lr, double wd) {
    h->in.lr = lr, h->in.last_layer_lr = last_layer_lr, h->in.wd = wd;
    // what adamw computed on the host (pow of the float betas); the device picks the entry of its step
    h->in.bias_step = (double)(opt->step + 1);
    for (int k = 0; k < DINO_SS_BIAS_WINDOW; k++) {
        const double s = (double)(opt->step + 1 - k);
        h->in.bias1[k] = 1.0 - pow(opt->beta1, s);
        h->in.bias2[k] = 1.0 - pow(opt->beta2, s);
    }
}

typedef struct {
    Backend *be;
    float *x;
    const float *y;
    int slot;
    DinoStepScalars *ss;
} RunSsCtx;

static void run_sum_squares_ss(void *c, size_t lo, size_t hi) {
    RunSsCtx *r = c;
    r->be->sum_squares_ss(r->be, r->y + lo, hi - lo, r->slot, r->ss);
}
static void run_clip_ss(void *c, size_t lo, size_t hi) {
    RunSsCtx *r = c;
    r->be->clip_scale_ss(r->be, r->x + lo, hi - lo, r->slot, r->ss);
}
static void run_ema_ss(void *c, size_t lo, size_t hi) {
    RunSsCtx *r = c;
    r->be->ema_ss(r->be, r->x + lo, r->y + lo, hi - lo, r->ss);
}

void grad_sum_squares_ss(Backend *be, const ParamTable *tab, const float *G, ParamGroup group, size_t begin,
                         size_t end, int slot, DinoStepScalars *ss) {
    RunSsCtx r = {.be = be, .y = G, .slot = slot, .ss = ss};
    for_each_run(tab, (int)group, begin, end, run_sum_squares_ss, &r);
}

void grad_clip_ss(Backend *be, const ParamTable *tab, float *G, ParamGroup group, size_t begin, size_t end, int slot,
                  const DinoStepScalars *ss) {
    RunSsCtx r = {.be = be, .x = G, .slot = slot, .ss = (DinoStepScalars *)ss};
    for_each_run(tab, (int)group, begin, end, run_clip_ss, &r);
}

void ema_update_ss(Backend *be, const ParamTable *tab, float *teacher, const float *student, size_t begin, size_t end,
                   const DinoStepScalars *ss) {
    RunSsCtx r = {.be = be, .x = teacher, .y = student, .ss = (DinoStepScalars *)ss};
    for_each_run(tab, -1, begin, end, run_ema_ss, &r);
}

void adamw_step_ss(AdamW *opt, Backend *be, const ParamTable *tab, float *P, const float *G, size_t begin, size_t end,
                   const DinoStepScalars *ss) {
    DINO_ASSERT(begin >= opt->base && end <= opt->base + opt->n,
                "adamw_step_ss: [%zu, %zu) outside the moments' range [%zu, %zu)", begin, end, opt->base,
                opt->base + opt->n);
    opt->step++;
    // runs of touching tensors with the same multipliers: the same calls at every step whatever the
    // schedule's values (adamw_step_range merges by value, e.g. everything at lr 0); elementwise, so the
    // bits are those of one call per tensor
    size_t run_lo = 0, run_hi = 0;
    float run_lm = 0, run_wm = 0;
    int run_last = 0, open = 0;
    for (int i = 0; i <= tab->n; i++) {
        size_t lo = 0, hi = 0;
        float lm = 0, wm = 0;
        int last = 0, have = 0;
        if (i < tab->n) {
            const TensorSpec *t = &tab->t[i];
            if (!clamp_to_range(t, begin, end, &lo, &hi)) continue;
            lm = t->lr_mult, wm = t->wd_mult, last = t->is_last_layer, have = 1;
            if (open && lo == run_hi && lm == run_lm && wm == run_wm && last == run_last) {
                run_hi = hi;
                continue;
            }
        }
        if (open)
            be->adamw_ss(be, P + run_lo, G + run_lo, opt->m + (run_lo - opt->base), opt->v + (run_lo - opt->base),
                         run_hi - run_lo, run_lm, run_wm, run_last, opt->beta1, opt->beta2, opt->eps, ss);
        open = have, run_lo = lo, run_hi = hi, run_lm = lm, run_wm = wm, run_last = last;
    }
}
