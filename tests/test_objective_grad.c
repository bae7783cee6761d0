// Finite-difference checks of the DINOv2 objective: the head ops, the whole DINO head, every loss
// (DINO local/global, iBOT with masking, KoLeo, KDE) under both centerings, and a whole training step's
// gradient w.r.t. every student tensor; plus the teacher-target semantics (Sinkhorn against a direct
// double-precision transcription of the reference, the centre's one-step delay).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "model/backend.h"
#include "model/head.h"
#include "model/loss.h"
#include "tests/gradcheck.h"
#include "train/ssl_step.h"

static float *fnew(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

// ---- single ops -----------------------------------------------------------------------------------

typedef struct {
    Backend *be;
    int kind, rows, n, K, B, D;
    float *x, *g, *v, *out, *aux, *wout, *t, *w, kappa;
    float eps;
    int N, normalize, neg_mode;
} Ctx;

enum { K_L2, K_WN, K_CE, K_KOLEO, K_KDE, K_GRAM };

static double ctx_loss(void *vc) {
    Ctx *c = vc;
    Backend *be = c->be;
    switch (c->kind) {
    case K_L2:
        be->l2norm_fwd(be, c->out, c->aux, c->x, c->rows, c->n, c->eps);
        return gc_dot(c->out, c->wout, (size_t)c->rows * c->n);
    case K_WN:
        be->weightnorm_fwd(be, c->out, c->aux, c->g, c->v, c->K, c->n);
        return gc_dot(c->out, c->wout, (size_t)c->K * c->n);
    case K_CE: {
        be->softmax_ce(be, c->aux, NULL, c->x, c->t, NULL, c->rows, c->B, c->K, 0.1f, 1.0f);
        double s = 0;
        for (int r = 0; r < c->rows; r++) s += (double)c->aux[r] * c->w[r];
        return s;
    }
    case K_KOLEO: {
        float l;
        be->koleo(be, &l, NULL, c->x, c->B, c->D, 1.0f);
        return l;
    }
    case K_KDE: {
        float l;
        be->kde(be, &l, NULL, c->x, c->B, c->D, c->kappa, 1.0f);
        return l;
    }
    case K_GRAM: {
        float l;
        be->gram_loss(be, &l, NULL, c->x, c->t, c->B, c->N, c->D, c->normalize, c->neg_mode, 1.0f);
        return l;
    }
    }
    return 0;
}

TEST(grad_l2norm_weightnorm) {
    Backend *be = backend_cpu_new();
    Rng r = rng_make(11, 0, 0, 0);
    enum { R = 4, N = 7, K = 5 };
    float x[R * N], out[R * N], wout[R * N], nrm[R], dx[R * N];
    gc_fill_normal(x, R * N, 1.5f, &r);
    gc_fill_normal(wout, R * N, 1, &r);
    Ctx c = {.be = be, .kind = K_L2, .rows = R, .n = N, .x = x, .out = out, .aux = nrm, .wout = wout, .eps = 1e-12f};
    ctx_loss(&c);
    be->l2norm_bwd(be, dx, wout, x, nrm, R, N, 1e-12f);
    gradcheck("l2norm.x", ctx_loss, &c, x, dx, R * N, 100, 1e-2f, 1e-4, 1e-3, &r);
    // below eps the clamp holds: x / eps, gradient 1/eps
    float tiny[N] = {1e-3f, -2e-3f}, o2[N], n2[1], d2[N], w2[N] = {1, 1};
    be->l2norm_fwd(be, o2, n2, tiny, 1, N, 0.1f);
    CHECK_CLOSE(o2[0], 1e-2, 1e-7, 1e-5);
    be->l2norm_bwd(be, d2, w2, tiny, n2, 1, N, 0.1f);
    CHECK_CLOSE(d2[1], 10.0, 1e-5, 1e-5);

    float g[K], v[K * N], W[K * N], wW[K * N], vn[K], dg[K] = {0}, dv[K * N] = {0};
    gc_fill_normal(g, K, 1, &r);
    gc_fill_normal(v, K * N, 0.7f, &r);
    gc_fill_normal(wW, K * N, 1, &r);
    Ctx w = {.be = be, .kind = K_WN, .K = K, .n = N, .g = g, .v = v, .out = W, .aux = vn, .wout = wW};
    ctx_loss(&w);
    // W rows have norm |g|
    for (int k = 0; k < K; k++) CHECK_CLOSE(sqrt(gc_dot(W + k * N, W + k * N, N)), fabsf(g[k]), 1e-6, 1e-5);
    be->weightnorm_bwd(be, dg, dv, wW, g, v, vn, K, N);
    gradcheck("weightnorm.g", ctx_loss, &w, g, dg, K, 100, 1e-2f, 1e-4, 1e-3, &r);
    gradcheck("weightnorm.v", ctx_loss, &w, v, dv, K * N, 100, 1e-2f, 1e-4, 1e-3, &r);
    backend_free(be);
}

TEST(grad_softmax_ce) {
    Backend *be = backend_cpu_new();
    Rng r = rng_make(12, 0, 0, 0);
    enum { B = 3, ROWS = 6, K = 9 };
    float s[ROWS * K], t[B * K], loss[ROWS], ds[ROWS * K], w[ROWS];
    gc_fill_normal(s, ROWS * K, 0.5f, &r);
    be->softmax_center(be, t, s, NULL, B, K, 0.3f); // any probability rows
    t[0] *= 2; // and a target that does not sum to 1 (the fused local-crop target sums to 2)
    for (int i = 0; i < ROWS; i++) w[i] = 0.5f + (float)i;
    Ctx c = {.be = be, .kind = K_CE, .rows = ROWS, .B = B, .K = K, .x = s, .t = t, .aux = loss, .w = w};
    be->softmax_ce(be, loss, ds, s, t, w, ROWS, B, K, 0.1f, 1.0f);
    gradcheck("softmax_ce.s", ctx_loss, &c, s, ds, ROWS * K, 200, 1e-3f, 1e-3, 1e-3, &r);
    // value against log-softmax written out in double
    be->softmax_ce(be, loss, NULL, s, t, NULL, ROWS, B, K, 0.1f, 1.0f);
    for (int row = 0; row < ROWS; row++) {
        const float *sr = s + row * K, *tr = t + (row % B) * K;
        double mx = -1e30, se = 0, ref = 0;
        for (int k = 0; k < K; k++) mx = fmax(mx, sr[k] / 0.1);
        for (int k = 0; k < K; k++) se += exp(sr[k] / 0.1 - mx);
        for (int k = 0; k < K; k++) ref -= tr[k] * (sr[k] / 0.1 - mx - log(se));
        CHECK_CLOSE(loss[row], ref, 1e-5, 1e-5);
    }
    backend_free(be);
}

// Gram anchoring: the gradient for every option, and the value against a direct double-precision
// transcription of GramLoss (normalize rows, Gram per image, clamps, mean squared error).
static double gram_ref(const float *s, const float *t, int B, int N, int D, int normalize, int neg_mode) {
    double L = 0;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                const float *si = s + ((size_t)b * N + i) * D, *sj = s + ((size_t)b * N + j) * D;
                const float *ti = t + ((size_t)b * N + i) * D, *tj = t + ((size_t)b * N + j) * D;
                double ss = 0, tt = 0, nsi = 0, nsj = 0, nti = 0, ntj = 0;
                for (int d = 0; d < D; d++) {
                    ss += (double)si[d] * sj[d], tt += (double)ti[d] * tj[d];
                    nsi += (double)si[d] * si[d], nsj += (double)sj[d] * sj[d];
                    nti += (double)ti[d] * ti[d], ntj += (double)tj[d] * tj[d];
                }
                if (normalize) ss /= sqrt(nsi) * sqrt(nsj), tt /= sqrt(nti) * sqrt(ntj);
                if (neg_mode >= 1 && tt < 0) tt = 0;
                if (neg_mode == 1 && ss < 0) ss = 0;
                L += (ss - tt) * (ss - tt);
            }
    return L / ((double)B * N * N);
}

TEST(grad_gram_loss) {
    Backend *be = backend_cpu_new();
    Rng r = rng_make(17, 0, 0, 0);
    enum { B = 2, N = 5, D = 6 };
    float s[B * N * D], t[B * N * D], ds[B * N * D];
    gc_fill_normal(s, B * N * D, 1, &r);
    gc_fill_normal(t, B * N * D, 1, &r);
    for (int normalize = 0; normalize <= 1; normalize++)
        for (int neg = 0; neg <= 2; neg++) {
            Ctx c = {.be = be, .kind = K_GRAM, .B = B, .N = N, .D = D, .x = s, .t = t, .normalize = normalize,
                     .neg_mode = neg};
            float l;
            for (int i = 0; i < B * N * D; i++) ds[i] = 0.5f; // accumulates
            be->gram_loss(be, &l, ds, s, t, B, N, D, normalize, neg, 1.0f);
            for (int i = 0; i < B * N * D; i++) ds[i] -= 0.5f;
            printf(" normalize %d neg_mode %d loss %g\n", normalize, neg, l);
            gradcheck("gram.s", ctx_loss, &c, s, ds, B * N * D, 100, 1e-3f, 1e-3, 2e-3, &r);
            CHECK_CLOSE(l, gram_ref(s, t, B, N, D, normalize, neg), 1e-5, 1e-5);
        }
    // identical features: zero loss, zero gradient
    float l;
    memset(ds, 0, sizeof ds);
    be->gram_loss(be, &l, ds, s, s, B, N, D, 1, 0, 1.0f);
    CHECK_CLOSE(l, 0.0, 1e-7, 0);
    for (int i = 0; i < B * N * D; i++) CHECK_CLOSE(ds[i], 0.0, 1e-6, 0);
    backend_free(be);
}

TEST(grad_koleo_kde) {
    Backend *be = backend_cpu_new();
    Rng r = rng_make(13, 0, 0, 0);
    enum { B = 5, D = 6 };
    float x[B * D], dx[B * D];
    gc_fill_normal(x, B * D, 1, &r);
    Ctx c = {.be = be, .kind = K_KOLEO, .B = B, .D = D, .x = x, .kappa = 5.0f};
    float l;
    memset(dx, 0, sizeof dx);
    be->koleo(be, &l, dx, x, B, D, 1.0f);
    gradcheck("koleo.x", ctx_loss, &c, x, dx, B * D, 100, 1e-3f, 1e-3, 2e-3, &r);
    // reference value: -mean log(||x^_i - x^_nn + 1e-8|| + 1e-8), written out
    double ref = 0;
    for (int i = 0; i < B; i++) {
        double best = -2, bd = 0;
        for (int j = 0; j < B; j++) {
            if (j == i) continue;
            double dot = 0, ni = 0, nj = 0;
            for (int d = 0; d < D; d++) dot += x[i * D + d] * x[j * D + d], ni += x[i * D + d] * x[i * D + d],
                                         nj += x[j * D + d] * x[j * D + d];
            double cs = dot / sqrt(ni * nj);
            if (cs > best) {
                best = cs;
                bd = 0;
                for (int d = 0; d < D; d++) {
                    double v = x[i * D + d] / sqrt(ni) - x[j * D + d] / sqrt(nj) + 1e-8;
                    bd += v * v;
                }
            }
        }
        ref -= log(sqrt(bd) + 1e-8);
    }
    CHECK_CLOSE(l, ref / B, 1e-5, 1e-5);

    c.kind = K_KDE;
    memset(dx, 0, sizeof dx);
    be->kde(be, &l, dx, x, B, D, 5.0f, 1.0f);
    gradcheck("kde.x", ctx_loss, &c, x, dx, B * D, 100, 1e-3f, 1e-3, 2e-3, &r);
    CHECK(l < 0, "KDE of spread points must be below its collapse value 0, got %g", l);
    // penalizes density: collapsing all points onto one gives the maximum, 0
    float same[B * D];
    for (int i = 0; i < B * D; i++) same[i] = x[i % D];
    be->kde(be, &l, NULL, same, B, D, 5.0f, 1.0f);
    CHECK_CLOSE(l, 0.0, 1e-6, 0);
    backend_free(be);
}

// ---- the head -------------------------------------------------------------------------------------

typedef struct {
    Backend *be;
    Head h;
    HeadActs *a;
    float *P, *x, *wout;
    int rows;
} HeadCtx;

static double head_loss(void *vc) {
    HeadCtx *c = vc;
    const float *z = head_forward(c->be, &c->h, c->P, c->a, c->x, c->rows);
    return gc_dot(z, c->wout, (size_t)c->rows * c->h.cfg.K);
}

static void head_check(int nlayers) {
    Backend *be = backend_cpu_new();
    Rng r = rng_make(20 + nlayers, 0, 0, 0);
    HeadCtx c = {.be = be, .rows = 5};
    ParamTable tab;
    param_table_init(&tab);
    HeadConfig cfg = {.in_dim = 6, .hidden = 10, .bottleneck = 4, .K = 7, .nlayers = nlayers};
    head_build(&c.h, &cfg, &tab, "dino_head.", PARAM_DINO_HEAD);
    c.P = fnew(tab.total);
    float *G = fnew(tab.total);
    head_init_weights(&c.h, c.P, 3);
    const TensorSpec *g = param_find(&tab, "dino_head.last_layer.weight_g");
    CHECK(g && g->ndim == 2 && g->shape[0] == 7 && g->shape[1] == 1 && g->is_last_layer, "weight_g [K,1] missing");
    CHECK(c.P[g->offset] == 1.0f, "weight_g must start at 1");
    CHECK(param_find(&tab, nlayers == 1 ? "dino_head.mlp.weight" : "dino_head.mlp.4.bias") != NULL, "MLP names");
    // realistic non-init weights so that every path carries gradient
    for (int i = 0; i < tab.n; i++) gc_fill_normal(c.P + tab.t[i].offset, tab.t[i].numel, 0.5f, &r);
    c.a = head_acts_new(be, &c.h, c.rows, 1);
    c.x = fnew((size_t)c.rows * 6);
    c.wout = fnew((size_t)c.rows * 7);
    gc_fill_normal(c.x, (size_t)c.rows * 6, 1, &r);
    gc_fill_normal(c.wout, (size_t)c.rows * 7, 1, &r);
    float *dx = fnew((size_t)c.rows * 6);
    head_loss(&c);
    head_backward(be, &c.h, c.P, G, c.a, c.wout, dx);
    for (int i = 0; i < tab.n; i++)
        gradcheck(tab.t[i].name, head_loss, &c, c.P + tab.t[i].offset, G + tab.t[i].offset, tab.t[i].numel, 30, 1e-2f,
                  1e-3, 5e-3, &r);
    gradcheck("head.x", head_loss, &c, c.x, dx, (size_t)c.rows * 6, 30, 1e-2f, 1e-3, 5e-3, &r);
    head_acts_free(be, c.a);
    free(c.P), free(G), free(c.x), free(c.wout), free(dx);
    param_table_free(&tab);
    backend_free(be);
}

TEST(grad_dino_head_3_layers) { head_check(3); }
TEST(grad_dino_head_1_layer) { head_check(1); }

// ---- the losses on logits, both centerings --------------------------------------------------------

typedef struct {
    Backend *be;
    int B, nL, K, nm;
    float *s, *P, *Pi, *w, *tsum, *rl;
    int which; // 0 local, 1 global, 2 ibot
} LossCtx;

static double loss_value(void *vc) {
    LossCtx *c = vc;
    if (c->which == 0) return dino_loss_local(c->be, c->s, c->nL, c->B, c->P, c->K, 0.1f, c->tsum, c->rl, NULL, 1);
    if (c->which == 1) return dino_loss_global(c->be, c->s, c->nL, c->B, c->P, c->K, 0.1f, c->rl, NULL, 1);
    return ibot_loss(c->be, c->s, c->Pi, c->w, c->nm, 2 * c->B, c->K, 0.1f, c->rl, NULL, 1);
}

static void losses_check(Centering centering) {
    Backend *be = backend_cpu_new();
    Rng r = rng_make(30 + centering, 0, 0, 0);
    enum { B = 3, NL = 2, K = 8, NM = 5 };
    float zt[2 * B * K], zi[NM * K], P[2 * B * K], Pi[NM * K], tsum[B * K], rl[16], w[NM];
    gc_fill_normal(zt, 2 * B * K, 0.3f, &r);
    gc_fill_normal(zi, NM * K, 0.3f, &r);
    TeacherCenter tc, ic;
    teacher_center_init(be, &tc, K, 0.9f);
    teacher_center_init(be, &ic, K, 0.9f);
    dino_teacher_targets(be, NULL, centering, &tc, P, zt, 2 * B, 0.05f);
    ibot_teacher_targets(be, NULL, centering, &ic, Pi, zi, NM, 0.05f);
    for (int i = 0; i < 2 * B; i++) {
        double s = 0;
        for (int k = 0; k < K; k++) s += P[i * K + k];
        CHECK_CLOSE(s, 1.0, 1e-5, 0);
    }
    // masked tokens of 2 images: 3 in one (w 1/3), 2 in the other (w 1/2)
    for (int j = 0; j < NM; j++) w[j] = j < 3 ? 1.0f / 3 : 0.5f;
    float s_loc[NL * B * K], s_glob[2 * B * K], s_m[NM * K], d[NL * B * K];
    gc_fill_normal(s_loc, NL * B * K, 0.5f, &r);
    gc_fill_normal(s_glob, 2 * B * K, 0.5f, &r);
    gc_fill_normal(s_m, NM * K, 0.5f, &r);
    LossCtx c = {.be = be, .B = B, .nL = NL, .K = K, .nm = NM, .P = P, .Pi = Pi, .w = w, .tsum = tsum, .rl = rl};
    c.which = 0, c.s = s_loc;
    double lv = dino_loss_local(be, s_loc, NL, B, P, K, 0.1f, tsum, rl, d, 1.0f);
    gradcheck("dino_local.s", loss_value, &c, s_loc, d, NL * B * K, 60, 1e-3f, 1e-4, 2e-3, &r);
    // the reference's double loop: for each local crop l and teacher chunk g, mean_b CE, / n_terms (2+2*NL)
    double ref = 0;
    for (int l = 0; l < NL; l++)
        for (int g = 0; g < 2; g++)
            for (int b = 0; b < B; b++) {
                const float *sr = s_loc + (l * B + b) * K, *t = P + (g * B + b) * K;
                double mx = -1e30, se = 0;
                for (int k = 0; k < K; k++) mx = fmax(mx, sr[k] / 0.1);
                for (int k = 0; k < K; k++) se += exp(sr[k] / 0.1 - mx);
                for (int k = 0; k < K; k++) ref -= t[k] * (sr[k] / 0.1 - mx - log(se)) / B;
            }
    CHECK_CLOSE(lv, ref / (2 + 2 * NL), 1e-6, 1e-5);
    c.which = 1, c.s = s_glob;
    double gv = dino_loss_global(be, s_glob, NL, B, P, K, 0.1f, rl, d, 1.0f);
    gradcheck("dino_global.s", loss_value, &c, s_glob, d, 2 * B * K, 60, 1e-3f, 1e-4, 2e-3, &r);
    ref = 0; // 2 * mean over 2B rows of CE(P[r], s[r]) / n_terms
    for (int row = 0; row < 2 * B; row++) {
        const float *sr = s_glob + row * K, *t = P + row * K;
        double mx = -1e30, se = 0;
        for (int k = 0; k < K; k++) mx = fmax(mx, sr[k] / 0.1);
        for (int k = 0; k < K; k++) se += exp(sr[k] / 0.1 - mx);
        for (int k = 0; k < K; k++) ref -= t[k] * (sr[k] / 0.1 - mx - log(se));
    }
    CHECK_CLOSE(gv, 2 * ref / (2 * B) / (2 + 2 * NL), 1e-6, 1e-5);
    c.which = 2, c.s = s_m;
    double iv = ibot_loss(be, s_m, Pi, w, NM, 2 * B, K, 0.1f, rl, d, 1.0f);
    gradcheck("ibot.s", loss_value, &c, s_m, d, NM * K, 60, 1e-3f, 1e-4, 2e-3, &r);
    ref = 0;
    for (int j = 0; j < NM; j++) {
        const float *sr = s_m + j * K, *t = Pi + j * K;
        double mx = -1e30, se = 0;
        for (int k = 0; k < K; k++) mx = fmax(mx, sr[k] / 0.1);
        for (int k = 0; k < K; k++) se += exp(sr[k] / 0.1 - mx);
        for (int k = 0; k < K; k++) ref -= w[j] * t[k] * (sr[k] / 0.1 - mx - log(se));
    }
    CHECK_CLOSE(iv, ref / (2 * B), 1e-6, 1e-5);
    teacher_center_free(be, &tc);
    teacher_center_free(be, &ic);
    backend_free(be);
}

TEST(grad_losses_softmax_centering) { losses_check(CENTERING_SOFTMAX); }
TEST(grad_losses_sinkhorn) { losses_check(CENTERING_SINKHORN); }

// Sinkhorn-Knopp against the reference's formula in double (no shift), with logits large enough that
// exp(z / temp) overflows fp32 without the per-prototype shift.
TEST(sinkhorn_matches_reference_and_survives_overflow) {
    Backend *be = backend_cpu_new();
    Rng r = rng_make(40, 0, 0, 0);
    enum { N = 6, K = 10 };
    const float temp = 0.04f;
    for (int trial = 0; trial < 2; trial++) {
        float z[N * K], P[N * K];
        gc_fill_normal(z, N * K, trial ? 2.5f : 0.5f, &r); // trial 1: |z|/temp up to ~200 > 88
        be->sinkhorn(be, NULL, P, z, N, K, temp, 3, (float)N);
        double Q[K][N], tot = 0;
        for (int k = 0; k < K; k++)
            for (int n = 0; n < N; n++) Q[k][n] = exp((double)z[n * K + k] / temp), tot += Q[k][n];
        for (int k = 0; k < K; k++)
            for (int n = 0; n < N; n++) Q[k][n] /= tot;
        for (int it = 0; it < 3; it++) {
            for (int k = 0; k < K; k++) {
                double s = 0;
                for (int n = 0; n < N; n++) s += Q[k][n];
                for (int n = 0; n < N; n++) Q[k][n] /= s * K;
            }
            for (int n = 0; n < N; n++) {
                double s = 0;
                for (int k = 0; k < K; k++) s += Q[k][n];
                for (int k = 0; k < K; k++) Q[k][n] /= s * N;
            }
        }
        for (int k = 0; k < K; k++)
            for (int n = 0; n < N; n++) {
                CHECK(isfinite(P[n * K + k]), "sinkhorn produced a non-finite value (trial %d)", trial);
                CHECK_CLOSE(P[n * K + k], Q[k][n] * N, 1e-6, 1e-4);
            }
    }
    backend_free(be);
}

// A fake two-rank collective: both "ranks" hold the same rows, so every sum doubles. Softmax centering
// then gives the single-rank centre and Sinkhorn the single-rank targets of the doubled batch.
static void twice(Collective *c, float *buf, size_t n) {
    for (size_t i = 0; i < n; i++) buf[i] *= 2;
}

TEST(centering_delay_and_collective) {
    Backend *be = backend_cpu_new();
    Rng r = rng_make(41, 0, 0, 0);
    enum { N = 4, K = 6 };
    float z1[N * K], z2[N * K], P[N * K], P0[N * K];
    gc_fill_normal(z1, N * K, 1, &r);
    gc_fill_normal(z2, N * K, 1, &r);
    Collective two = {.world = 2, .allreduce_sum_f32 = twice};
    TeacherCenter tc;
    teacher_center_init(be, &tc, K, 0.9f);
    // step 1 uses centre 0
    dino_teacher_targets(be, &two, CENTERING_SOFTMAX, &tc, P, z1, N, 0.07f);
    be->softmax_center(be, P0, z1, NULL, N, K, 0.07f);
    CHECK(memcmp(P, P0, sizeof P) == 0, "the first step must use centre 0");
    // after step 1: c = 0.1 * mean(z1) (mean over 2 identical ranks = local mean)
    for (int k = 0; k < K; k++) {
        double mean = 0;
        for (int n = 0; n < N; n++) mean += z1[n * K + k] / N;
        CHECK_CLOSE(tc.center[k], 0.1 * mean, 1e-6, 1e-5);
    }
    float c1[K];
    memcpy(c1, tc.center, sizeof c1);
    dino_teacher_targets(be, &two, CENTERING_SOFTMAX, &tc, P, z2, N, 0.07f);
    be->softmax_center(be, P0, z2, c1, N, K, 0.07f);
    CHECK(memcmp(P, P0, sizeof P) == 0, "step 2 must use the centre updated after step 1");
    teacher_center_free(be, &tc);
    // Sinkhorn over 2 identical ranks = single rank on the rows duplicated
    float zz[2 * N * K], PP[2 * N * K];
    memcpy(zz, z1, sizeof z1);
    memcpy(zz + N * K, z1, sizeof z1);
    be->sinkhorn(be, &two, P, z1, N, K, 0.07f, 3, 2.0f * N);
    be->sinkhorn(be, NULL, PP, zz, 2 * N, K, 0.07f, 3, 2.0f * N);
    for (int i = 0; i < N * K; i++) CHECK_CLOSE(P[i], PP[i], 1e-7, 1e-5);
    // iBOT: Sinkhorn's sample count is the masked tokens of all ranks (summed through the collective),
    // the softmax centre the mean over this rank's masked tokens averaged over ranks
    TeacherCenter ic;
    teacher_center_init(be, &ic, K, 0.9f);
    ibot_teacher_targets(be, &two, CENTERING_SINKHORN, &ic, P, z1, N, 0.07f);
    for (int i = 0; i < N * K; i++) CHECK_CLOSE(P[i], PP[i], 1e-7, 1e-5);
    ibot_teacher_targets(be, &two, CENTERING_SOFTMAX, &ic, P, z1, N, 0.07f);
    for (int k = 0; k < K; k++) {
        double mean = 0;
        for (int n = 0; n < N; n++) mean += z1[n * K + k] / N;
        CHECK_CLOSE(ic.center[k], 0.1 * mean, 1e-6, 1e-5);
    }
    teacher_center_free(be, &ic);
    backend_free(be);
}

// ---- a whole training step ------------------------------------------------------------------------

typedef struct {
    Backend *be;
    SslModel m;
    SslBatch b;
    ScheduleValues sv;
    float *host;
} StepCtx;

// The step with lr 0, wd 0, momentum 1 and no clipping changes nothing but leaves the gradient of
// backprop_loss in m.grads; Sinkhorn / momentum-1 centres make the teacher targets stateless.
static double step_loss(void *vc) {
    StepCtx *c = vc;
    c->be->to_device(c->be, c->m.student, c->host, sizeof(float) * c->m.tab.total);
    SslStepStats st;
    char err[DINO_ERRLEN];
    if (ssl_step(&c->m, c->be, NULL, &c->b, &c->sv, &st, err)) test_fail_at(__FILE__, __LINE__, "%s", err);
    return st.backprop_loss;
}

static void step_check(Centering centering, int separate, int kde) {
    Backend *be = backend_cpu_new();
    VitConfig vc;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&vc, "vit_test", 4, 8, 1, "mlp", err) == 0, "%s", err);
    vc.dim = 8, vc.heads = 2, vc.depth = 1, vc.ffn_hidden = 12, vc.layerscale = 0.5f, vc.drop_path_rate = 0.4;
    SslConfig cfg;
    ssl_config_default(&cfg, &vc);
    cfg.dino_head = (HeadConfig){.in_dim = 8, .hidden = 10, .bottleneck = 5, .K = 12, .nlayers = 2};
    cfg.ibot_head = (HeadConfig){.in_dim = 8, .hidden = 9, .bottleneck = 4, .K = 7, .nlayers = 2};
    cfg.ibot_separate_head = separate;
    cfg.batch = 3, cfg.n_local = 2, cfg.global_crop = 8, cfg.local_crop = 4;
    cfg.centering = centering;
    cfg.center_momentum = 1.0f;
    cfg.clip_grad = 0;
    cfg.use_kde = kde;
    cfg.kde_loss_weight = 0.3f;
    StepCtx c = {.be = be, .sv = {.lr = 0, .wd = 0, .momentum = 1, .teacher_temp = 0.2, .last_layer_lr = 0}};
    CHECK(ssl_model_init(&c.m, be, &cfg, 5, err) == 0, "%s", err);
    Rng r = rng_make(50 + centering + 2 * separate, 0, 0, 0);
    const size_t total = c.m.tab.total;
    c.host = fnew(total);
    for (int i = 0; i < c.m.tab.n; i++) {
        const TensorSpec *t = &c.m.tab.t[i];
        int is_norm_w = strstr(t->name, "norm") && strstr(t->name, "weight");
        for (size_t j = 0; j < t->numel; j++)
            c.host[t->offset + j] = is_norm_w ? 1.0f + 0.2f * (float)rng_normal(&r) : 0.4f * (float)rng_normal(&r);
    }
    float *teacher = fnew(total); // a teacher different from the student
    for (size_t j = 0; j < total; j++) teacher[j] = c.host[j] + 0.05f * (float)rng_normal(&r);
    be->to_device(be, c.m.teacher, teacher, sizeof(float) * total);
    int B = 3, N = 4;
    float *gimg = fnew((size_t)2 * B * 3 * 64), *limg = fnew((size_t)2 * B * 3 * 16);
    gc_fill_normal(gimg, (size_t)2 * B * 3 * 64, 1, &r);
    gc_fill_normal(limg, (size_t)2 * B * 3 * 16, 1, &r);
    uint8_t masks[6 * 4] = {0};
    masks[0 * N + 1] = masks[0 * N + 2] = 1; // image 0 of crop 1: 2 tokens
    masks[4 * N + 0] = masks[4 * N + 1] = masks[4 * N + 3] = 1; // image 1 of crop 2: 3 tokens
    int S = vit_drop_subset_size(&c.m.vit, 2 * B);
    int Sl = vit_drop_subset_size(&c.m.vit, 2 * B);
    int *sg = malloc(sizeof(int) * 2 * S), *sl = malloc(sizeof(int) * 2 * Sl);
    vit_draw_drop_subsets(&c.m.vit, 2 * B, rng_make(1, 2, 3, 4), sg);
    vit_draw_drop_subsets(&c.m.vit, 2 * B, rng_make(1, 2, 3, 5), sl);
    c.b = (SslBatch){.global_crops = gimg, .local_crops = limg, .masks = masks, .drop_global = sg, .drop_local = sl};
    step_loss(&c);
    float *G = fnew(total);
    be->to_host(be, G, c.m.grads, sizeof(float) * total);
    for (int i = 0; i < c.m.tab.n; i++) {
        const TensorSpec *t = &c.m.tab.t[i];
        gradcheck(t->name, step_loss, &c, c.host + t->offset, G + t->offset, t->numel, 6, 1e-2f, 2e-3, 3e-2, &r);
    }
    ssl_model_free(&c.m, be);
    free(c.host), free(teacher), free(gimg), free(limg), free(G), free(sg), free(sl);
    backend_free(be);
}

TEST(grad_step_shared_head_centering_koleo) { step_check(CENTERING_SOFTMAX, 0, 0); }
TEST(grad_step_separate_head_sinkhorn_kde) { step_check(CENTERING_SINKHORN, 1, 1); }

TEST(koleo_refuses_batch_of_one) {
    VitConfig vc;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&vc, "vit_test", 4, 8, 0, "mlp", err) == 0, "%s", err);
    SslConfig cfg;
    ssl_config_default(&cfg, &vc);
    cfg.batch = 1, cfg.local_crop = 4;
    CHECK(ssl_config_check(&cfg, err) == -1, "a batch of 1 with KoLeo was accepted");
    CHECK(strstr(err, "KoLeo") && strstr(err, "batch_size_per_gpu"), "message does not explain: %s", err);
    cfg.koleo_loss_weight = 0;
    CHECK(ssl_config_check(&cfg, err) == 0, "%s", err);
    cfg.koleo_loss_weight = 0.1f, cfg.use_kde = 1;
    CHECK(ssl_config_check(&cfg, err) == 0, "KDE with a batch of 1 refused: %s", err);
}
