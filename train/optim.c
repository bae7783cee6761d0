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

void adamw_init(AdamW *opt, Backend *be, size_t total, float beta1, float beta2, float eps) {
    memset(opt, 0, sizeof *opt);
    opt->beta1 = beta1;
    opt->beta2 = beta2;
    opt->eps = eps;
    opt->m = be->alloc(be, sizeof(float) * total);
    opt->v = be->alloc(be, sizeof(float) * total);
}

void adamw_free(AdamW *opt, Backend *be) {
    if (opt->m) be->release(be, opt->m);
    if (opt->v) be->release(be, opt->v);
    opt->m = opt->v = NULL;
}

void adamw_step(AdamW *opt, Backend *be, const ParamTable *tab, float *P, const float *G, double lr,
                double last_layer_lr, double wd) {
    opt->step++;
    for (int i = 0; i < tab->n; i++) {
        const TensorSpec *t = &tab->t[i];
        // torch computes group lr and weight decay in Python doubles
        double lr_t = (t->is_last_layer ? last_layer_lr : lr) * t->lr_mult;
        double wd_t = wd * t->wd_mult;
        be->adamw(be, P + t->offset, G + t->offset, opt->m + t->offset, opt->v + t->offset, t->numel, (float)lr_t,
                  (float)wd_t, opt->beta1, opt->beta2, opt->eps, opt->step);
    }
}

double clip_grad_norm_group(Backend *be, const ParamTable *tab, float *G, ParamGroup group, double max_norm) {
    double ss = 0;
    int any = 0;
    for (int i = 0; i < tab->n; i++)
        if (tab->t[i].group == group) ss += be->sum_squares(be, G + tab->t[i].offset, tab->t[i].numel), any = 1;
    if (!any) return 0;
    double total = sqrt(ss);
    double coef = max_norm / (total + 1e-6);
    if (coef < 1.0)
        for (int i = 0; i < tab->n; i++)
            if (tab->t[i].group == group) be->scale(be, G + tab->t[i].offset, (float)coef, tab->t[i].numel);
    return total;
}

void ema_update(Backend *be, const ParamTable *tab, float *teacher, const float *student, double momentum) {
    for (int i = 0; i < tab->n; i++)
        be->ema(be, teacher + tab->t[i].offset, student + tab->t[i].offset, tab->t[i].numel, (float)momentum);
}
