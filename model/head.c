// The DINO/iBOT projection head on the backend interface.
#include "model/head.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/rng.h"

int head_config_check(const HeadConfig *c, const char *what, char *err) {
    if (c->in_dim <= 0 || c->bottleneck <= 0 || c->K <= 0 || (c->nlayers > 1 && c->hidden <= 0)) {
        dino_seterr(err, "%s: in_dim (%d), hidden_dim (%d), bottleneck_dim (%d) and n_prototypes (%d) must be positive",
                    what, c->in_dim, c->hidden, c->bottleneck, c->K);
        return -1;
    }
    if (c->nlayers < 1 || c->nlayers > HEAD_MAX_LAYERS) {
        dino_seterr(err, "%s: nlayers %d outside [1, %d]", what, c->nlayers, HEAD_MAX_LAYERS);
        return -1;
    }
    return 0;
}

void head_build(Head *h, const HeadConfig *cfg, ParamTable *tab, const char *prefix, ParamGroup group) {
    char err[DINO_ERRLEN];
    if (head_config_check(cfg, prefix, err)) DINO_DIE("%s", err);
    memset(h, 0, sizeof *h);
    h->cfg = *cfg;
    h->n_lin = cfg->nlayers;
    char name[PARAM_NAME_MAX];
    for (int i = 0; i < h->n_lin; i++) {
        h->lin_in[i] = i == 0 ? cfg->in_dim : cfg->hidden;
        h->lin_out[i] = i == h->n_lin - 1 ? cfg->bottleneck : cfg->hidden;
        // nn.Sequential indices: Linear at 0, 2, 4, ... (GELU in between); a bare Linear when nlayers == 1
        char mod[32];
        if (h->n_lin == 1) snprintf(mod, sizeof mod, "mlp");
        else snprintf(mod, sizeof mod, "mlp.%d", 2 * i);
        snprintf(name, sizeof name, "%s%s.weight", prefix, mod);
        h->w[i] = param_add(tab, name, group, 0, 2, (int64_t[]){h->lin_out[i], h->lin_in[i]});
        snprintf(name, sizeof name, "%s%s.bias", prefix, mod);
        h->b[i] = param_add(tab, name, group, 0, 1, (int64_t[]){h->lin_out[i]});
    }
    snprintf(name, sizeof name, "%slast_layer.weight_g", prefix);
    h->g = param_add(tab, name, group, 0, 2, (int64_t[]){cfg->K, 1});
    tab->t[tab->n - 1].is_last_layer = 1;
    snprintf(name, sizeof name, "%slast_layer.weight_v", prefix);
    h->v = param_add(tab, name, group, 0, 2, (int64_t[]){cfg->K, cfg->bottleneck});
    tab->t[tab->n - 1].is_last_layer = 1;
}

void head_init_weights(const Head *h, float *P, uint64_t seed) {
    Rng r = rng_make(seed, 0x68656164, 0, 0);
    for (int i = 0; i < h->n_lin; i++) {
        size_t n = (size_t)h->lin_out[i] * h->lin_in[i];
        for (size_t j = 0; j < n; j++) P[h->w[i] + j] = 0.02f * (float)rng_normal(&r);
        for (int j = 0; j < h->lin_out[i]; j++) P[h->b[i] + j] = 0.0f;
    }
    const int K = h->cfg.K, nb = h->cfg.bottleneck;
    float bound = 1.0f / sqrtf((float)nb);
    for (size_t j = 0; j < (size_t)K * nb; j++) P[h->v + j] = (float)rng_uniform_range(&r, -bound, bound);
    for (int k = 0; k < K; k++) P[h->g + k] = 1.0f;
}

struct HeadActs {
    int max_rows, rows, with_grad;
    float *pre[HEAD_MAX_LAYERS]; // linear outputs (pre-GELU), [rows, lin_out]
    float *act[HEAD_MAX_LAYERS]; // GELU outputs (all but the last linear)
    const float *x;              // input of the last forward
    float *z, *znorm, *znrm;      // bottleneck [rows,nb] (= pre[last]), its L2 normalization, row norms
    float *W, *vnorm;            // last-layer weight [K,nb] and row norms of v [K]
    float *logits;               // [rows,K]
    // backward scratch
    float *dW, *dh_a, *dh_b;
};

static float *falloc(Backend *be, size_t n) { return be->alloc(be, sizeof(float) * n); }

HeadActs *head_acts_new(Backend *be, const Head *h, int max_rows, int with_grad) {
    HeadActs *a = dino_calloc(1, sizeof *a);
    const int K = h->cfg.K, nb = h->cfg.bottleneck;
    const size_t R = (size_t)(max_rows > 0 ? max_rows : 1);
    a->max_rows = (int)R;
    a->with_grad = with_grad;
    int widest = nb;
    // the hidden layers' outputs and GELUs may be bf16 (model/backend.h, "Activation dtypes"); from the
    // bottleneck on (z, its normalization, logits) and the backward scratch fp32: cosine logits at teacher
    // temperature 0.04 would turn bf16's 2e-3 into 5% in the targets
    for (int i = 0; i < h->n_lin; i++) {
        const size_t n = R * h->lin_out[i];
        a->pre[i] = i + 1 < h->n_lin ? be->alloc_act(be, n, DINO_BF16, NULL) : falloc(be, n);
        if (i + 1 < h->n_lin) a->act[i] = be->alloc_act(be, n, DINO_BF16, NULL);
        if (h->lin_out[i] > widest) widest = h->lin_out[i];
    }
    a->z = a->pre[h->n_lin - 1];
    a->znorm = falloc(be, R * nb);
    a->W = falloc(be, (size_t)K * nb);
    a->vnorm = falloc(be, (size_t)K);
    a->logits = falloc(be, R * K);
    a->znrm = falloc(be, R);
    if (with_grad) {
        a->dW = falloc(be, (size_t)K * nb);
        a->dh_a = falloc(be, R * widest);
        a->dh_b = falloc(be, R * widest);
    }
    return a;
}

void head_acts_free(Backend *be, HeadActs *a) {
    if (!a) return;
    for (int i = 0; i < HEAD_MAX_LAYERS; i++) {
        if (a->pre[i]) be->release(be, a->pre[i]);
        if (a->act[i]) be->release(be, a->act[i]);
    }
    void *bufs[] = {a->znorm, a->W, a->vnorm, a->logits, a->znrm, a->dW, a->dh_a, a->dh_b};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) be->release(be, bufs[i]);
    free(a);
}

// The MLP and the L2 normalisation of its output: a->znorm [rows, bottleneck].
static void forward_mlp(Backend *be, const Head *h, const float *P, HeadActs *a, const float *x, int rows) {
    const float *in = x;
    for (int i = 0; i < h->n_lin; i++) {
        if (i + 1 < h->n_lin) { // a hidden layer: the linear and its GELU in one op (one epilogue pass on cuda)
            be->linear_gelu_fwd(be, a->pre[i], a->act[i], in, P + h->w[i], P + h->b[i], rows, h->lin_in[i],
                                h->lin_out[i]);
            in = a->act[i];
        } else {
            be->linear_fwd(be, a->pre[i], in, P + h->w[i], P + h->b[i], rows, h->lin_in[i], h->lin_out[i]);
        }
    }
    be->l2norm_fwd(be, a->znorm, a->znrm, a->z, rows, h->cfg.bottleneck, HEAD_L2_EPS);
}

// The weight-normed last layer on znorm [rows, bottleneck]: a->logits [rows, K].
static void forward_last_layer(Backend *be, const Head *h, const float *P, HeadActs *a, const float *znorm, int rows) {
    const int K = h->cfg.K, nb = h->cfg.bottleneck;
    be->weightnorm_fwd(be, a->W, a->vnorm, P + h->g, P + h->v, K, nb);
    be->linear_fwd(be, a->logits, znorm, a->W, NULL, rows, nb, K);
}

const float *head_forward(Backend *be, const Head *h, const float *P, HeadActs *a, const float *x, int rows) {
    DINO_ASSERT(rows <= a->max_rows, "head_forward: %d rows, activations sized for %d", rows, a->max_rows);
    a->rows = rows;
    a->x = x;
    forward_mlp(be, h, P, a, x, rows);
    forward_last_layer(be, h, P, a, a->znorm, rows);
    return a->logits;
}

// The two halves of head_forward (forward only: a later head_backward needs a whole head_forward).
const float *head_forward_bottleneck(Backend *be, const Head *h, const float *P, HeadActs *a, const float *x, int rows) {
    DINO_ASSERT(rows <= a->max_rows, "head_forward_bottleneck: %d rows, activations sized for %d", rows, a->max_rows);
    forward_mlp(be, h, P, a, x, rows);
    a->rows = 0; // no head_backward after a half
    return a->znorm;
}

const float *head_forward_last_layer(Backend *be, const Head *h, const float *P, HeadActs *a, const float *znorm,
                                     int rows) {
    DINO_ASSERT(rows <= a->max_rows, "head_forward_last_layer: %d rows, activations sized for %d", rows, a->max_rows);
    forward_last_layer(be, h, P, a, znorm, rows);
    a->rows = 0;
    return a->logits;
}

float *head_acts_logits(HeadActs *a) { return a->logits; }

void head_backward(Backend *be, const Head *h, const float *P, float *G, HeadActs *a, const float *dlogits, float *dx) {
    DINO_ASSERT(a->with_grad, "head_backward on activations made without gradients");
    const int K = h->cfg.K, nb = h->cfg.bottleneck, rows = a->rows;
    // last layer: d znorm and dW, then through the weight norm into g and v
    be->zero(be, a->dW, sizeof(float) * (size_t)K * nb);
    float *dzn = a->dh_a, *dcur = a->dh_b;
    be->linear_bwd(be, dzn, a->dW, NULL, dlogits, a->znorm, a->W, rows, nb, K);
    be->weightnorm_bwd(be, G + h->g, G + h->v, a->dW, P + h->g, P + h->v, a->vnorm, K, nb);
    be->l2norm_bwd(be, dcur, dzn, a->z, a->znrm, rows, nb, HEAD_L2_EPS);
    // MLP, last linear first; dcur holds d(pre[i])
    for (int i = h->n_lin - 1; i >= 0; i--) {
        const float *in = i == 0 ? a->x : a->act[i - 1];
        float *din = i == 0 ? dx : dzn;
        be->linear_bwd(be, din, G + h->w[i], G + h->b[i], dcur, in, P + h->w[i], rows, h->lin_in[i], h->lin_out[i]);
        if (i > 0) {
            be->gelu_bwd(be, dcur, dzn, a->pre[i - 1], (size_t)rows * h->lin_out[i - 1]);
        }
    }
}
