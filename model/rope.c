#include "model/rope.h"

#include <math.h>
#include <stdlib.h>

#include "common/check.h"

RopeAug rope_aug_identity(void) { return (RopeAug){{0.0, 0.0}, {1.0, 1.0}, 1.0}; }

int rope_config_check(const RopeConfig *c, int Dh, char *err) {
    if (Dh <= 0 || Dh % 4) {
        dino_seterr(err, "rope: the head dim %d (embed_dim / num_heads) must be a multiple of 4", Dh);
        return -1;
    }
    const int both = c->min_period > 0 && c->max_period > 0;
    if ((c->base > 0) == both) {
        dino_seterr(err, "rope: give either pos_embed_rope_base (> 0) or both pos_embed_rope_min_period and "
                         "pos_embed_rope_max_period, not both and not neither");
        return -1;
    }
    if (both && c->min_period > c->max_period) {
        dino_seterr(err, "rope: pos_embed_rope_min_period %g > pos_embed_rope_max_period %g", c->min_period,
                    c->max_period);
        return -1;
    }
    if (c->normalize != ROPE_NORMALIZE_SEPARATE && c->normalize != ROPE_NORMALIZE_MIN &&
        c->normalize != ROPE_NORMALIZE_MAX) {
        dino_seterr(err, "rope: unknown coordinate normalisation %d", (int)c->normalize);
        return -1;
    }
    if (c->shift < 0 || (c->jitter != 0 && c->jitter < 1) || (c->rescale != 0 && c->rescale < 1)) {
        dino_seterr(err, "rope: shift %g must be >= 0, jitter %g and rescale %g must be >= 1 (or 0/null: off)",
                    c->shift, c->jitter, c->rescale);
        return -1;
    }
    return 0;
}

void rope_periods(const RopeConfig *c, int Dh, double *periods) {
    const int F = Dh / 4;
    for (int i = 0; i < F; i++) {
        if (c->base > 0) {
            periods[i] = pow(c->base, 2.0 * i / (Dh / 2));
        } else { // torch.linspace(0, 1, F): exponents i/(F-1), a single 0 when F = 1
            const double ratio = c->max_period / c->min_period, e = F > 1 ? (double)i / (F - 1) : 0.0;
            periods[i] = pow(ratio, e) / ratio * c->max_period;
        }
    }
}

void rope_tables(const RopeConfig *c, int Dh, int gh, int gw, const RopeAug *aug, float *sin_t, float *cos_t) {
    const int F = Dh / 4, half = Dh / 2, n_ax[2] = {gh, gw};
    const RopeAug id = rope_aug_identity();
    if (!aug) aug = &id;
    double *periods = dino_malloc(sizeof(double) * (size_t)F);
    rope_periods(c, Dh, periods);
    double div[2] = {gh, gw};
    if (c->normalize == ROPE_NORMALIZE_MIN) div[0] = div[1] = gh < gw ? gh : gw;
    if (c->normalize == ROPE_NORMALIZE_MAX) div[0] = div[1] = gh > gw ? gh : gw;
    // an angle depends on one axis' coordinate and one period only: (gh + gw) * Dh/4 sines and cosines
    double *s_ax[2], *c_ax[2];
    for (int a = 0; a < 2; a++) {
        s_ax[a] = dino_malloc(sizeof(double) * (size_t)n_ax[a] * F);
        c_ax[a] = dino_malloc(sizeof(double) * (size_t)n_ax[a] * F);
        for (int i = 0; i < n_ax[a]; i++) {
            const double coord = ((2.0 * ((i + 0.5) / div[a]) - 1.0) + aug->shift[a]) * aug->jitter[a] * aug->rescale;
            for (int f = 0; f < F; f++) {
                const double angle = 2.0 * M_PI * coord / periods[f];
                s_ax[a][(size_t)i * F + f] = sin(angle);
                c_ax[a][(size_t)i * F + f] = cos(angle);
            }
        }
    }
    for (int y = 0; y < gh; y++)
        for (int x = 0; x < gw; x++) {
            const size_t n = (size_t)y * gw + x;
            const int idx[2] = {y, x};
            for (int j = 0; j < Dh; j++) {
                const int k = j % half, a = k / F, f = k % F; // [rows' F | columns' F], tiled twice
                sin_t[n * Dh + j] = (float)s_ax[a][(size_t)idx[a] * F + f];
                cos_t[n * Dh + j] = (float)c_ax[a][(size_t)idx[a] * F + f];
            }
        }
    for (int a = 0; a < 2; a++) free(s_ax[a]), free(c_ax[a]);
    free(periods);
}

RopeAug rope_draw_aug(const RopeConfig *c, Rng *r) {
    RopeAug a = rope_aug_identity();
    if (c->shift > 0)
        for (int i = 0; i < 2; i++) a.shift[i] = rng_uniform_range(r, -c->shift, c->shift);
    if (c->jitter > 0)
        for (int i = 0; i < 2; i++) a.jitter[i] = exp(rng_uniform_range(r, -log(c->jitter), log(c->jitter)));
    if (c->rescale > 0) a.rescale = exp(rng_uniform_range(r, -log(c->rescale), log(c->rescale)));
    return a;
}
