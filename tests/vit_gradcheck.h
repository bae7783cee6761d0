// Finite differences of a whole ViT (test_vit_grad, test_dinov3_vit): two crop groups whose outputs are
// weighted by fixed random tensors, the loss sum_g <x_norm_g, wout_g>; gradients of every parameter.
#pragma once
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "model/backend.h"
#include "model/params.h"
#include "model/vit.h"
#include "tests/gradcheck.h"

typedef struct {
    Backend *be;
    Vit vit;
    float *P;
    int n_groups;
    int B[2], crop[2];
    VitActs *acts[2];
    float *img[2], *wout[2];
    uint8_t *mask[2];
    int *subsets[2];
} VitCtx;

static inline double vit_loss(void *vctx) {
    VitCtx *c = vctx;
    double s = 0;
    for (int g = 0; g < c->n_groups; g++) {
        const float *xn = vit_forward(c->be, &c->vit, c->P, c->acts[g], c->img[g], c->mask[g], c->subsets[g]);
        s += gc_dot(xn, c->wout[g], (size_t)c->B[g] * vit_acts_tokens(c->acts[g]) * c->vit.cfg.dim);
    }
    return s;
}

// Random weights of realistic scale into P (not the init: LayerScale 1e-5 would hide the blocks' gradients).
static inline void vit_random_weights(const ParamTable *tab, float *P, Rng *r) {
    for (int i = 0; i < tab->n; i++) {
        const TensorSpec *t = &tab->t[i];
        const int is_norm_w = strstr(t->name, "norm") && strstr(t->name, "weight");
        for (size_t j = 0; j < t->numel; j++)
            P[t->offset + j] = is_norm_w ? 1.0f + 0.2f * (float)rng_normal(r)
                               : strstr(t->name, ".ls") ? 0.5f + 0.2f * (float)rng_normal(r)
                                                        : 0.3f * (float)rng_normal(r);
    }
}

// The analytic gradients (both groups accumulate into G) against finite differences for every tensor of
// tab; then frees the groups, c->P, G, the ViT, tab and the backend.
static inline void vit_gradcheck_and_free(VitCtx *c, ParamTable *tab, float *G, Rng *r) {
    Backend *be = c->be;
    for (int g = 0; g < c->n_groups; g++) {
        vit_forward(be, &c->vit, c->P, c->acts[g], c->img[g], c->mask[g], c->subsets[g]);
        vit_backward(be, &c->vit, c->P, G, c->acts[g], c->wout[g]);
    }
    for (int i = 0; i < tab->n; i++) {
        const TensorSpec *t = &tab->t[i];
        gradcheck(t->name, vit_loss, c, c->P + t->offset, G + t->offset, t->numel, 12, 1e-2f, 2e-3, 2e-2, r);
    }
    for (int g = 0; g < c->n_groups; g++) {
        vit_acts_free(be, c->acts[g]);
        free(c->img[g]), free(c->wout[g]), free(c->mask[g]), free(c->subsets[g]);
    }
    free(c->P), free(G);
    vit_free(&c->vit);
    param_table_free(tab);
    backend_free(be);
}
