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
    for (int i = 0; i < tab->n; i++) {
        const TensorSpec *t = &tab->t[i];
        size_t lo, hi;
        if (!clamp_to_range(t, begin, end, &lo, &hi)) continue;
        // torch computes group lr and weight decay in Python doubles
        double lr_t = (t->is_last_layer ? last_layer_lr : lr) * t->lr_mult;
        double wd_t = wd * t->wd_mult;
        be->adamw(be, P + lo, G + lo, opt->m + (lo - opt->base), opt->v + (lo - opt->base), hi - lo, (float)lr_t,
                  (float)wd_t, opt->beta1, opt->beta2, opt->eps, opt->step);
    }
}

void adamw_step(AdamW *opt, Backend *be, const ParamTable *tab, float *P, const float *G, double lr,
                double last_layer_lr, double wd) {
    adamw_step_range(opt, be, tab, P, G, lr, last_layer_lr, wd, 0, tab->total);
}

double grad_sum_squares_range(Backend *be, const ParamTable *tab, const float *G, ParamGroup group, size_t begin,
                              size_t end) {
    double ss = 0;
    for (int i = 0; i < tab->n; i++) {
        size_t lo, hi;
        if (tab->t[i].group == group && clamp_to_range(&tab->t[i], begin, end, &lo, &hi))
            ss += be->sum_squares(be, G + lo, hi - lo);
    }
    return ss;
}

double clip_coef(double total_norm, double max_norm) {
    double coef = max_norm / (total_norm + 1e-6);
    return coef < 1.0 ? coef : 1.0;
}

void grad_scale_range(Backend *be, const ParamTable *tab, float *G, ParamGroup group, double coef, size_t begin,
                      size_t end) {
    if (coef >= 1.0) return;
    for (int i = 0; i < tab->n; i++) {
        size_t lo, hi;
        if (tab->t[i].group == group && clamp_to_range(&tab->t[i], begin, end, &lo, &hi))
            be->scale(be, G + lo, (float)coef, hi - lo);
    }
}

double clip_grad_norm_group(Backend *be, const ParamTable *tab, float *G, ParamGroup group, double max_norm) {
    double total = sqrt(grad_sum_squares_range(be, tab, G, group, 0, tab->total));
    grad_scale_range(be, tab, G, group, clip_coef(total, max_norm), 0, tab->total);
    return total;
}

void ema_update_range(Backend *be, const ParamTable *tab, float *teacher, const float *student, double momentum,
                      size_t begin, size_t end) {
    for (int i = 0; i < tab->n; i++) {
        size_t lo, hi;
        if (clamp_to_range(&tab->t[i], begin, end, &lo, &hi))
            be->ema(be, teacher + lo, student + lo, hi - lo, (float)momentum);
    }
}

void ema_update(Backend *be, const ParamTable *tab, float *teacher, const float *student, double momentum) {
    ema_update_range(be, tab, teacher, student, momentum, 0, tab->total);
}
