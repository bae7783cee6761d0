// Optimizer ops: AdamW (torch.optim.AdamW's update order) and the EMA teacher update.
#include <math.h>
#include <string.h>

#include "model/cpu/cpu_ops.h"
#include "model/step_scalars.h"

// The update with the bias corrections bc1 = 1 - beta1^step, bc2 = 1 - beta2^step given.
static void adamw_apply(float *p, const float *g, float *m, float *v, size_t n, float lr, float wd, float beta1,
                        float beta2, float eps, double bc1, double bc2) {
    // scalars in double as torch computes them in Python, then used as fp32
    const float decay = (float)(1.0 - (double)lr * wd);
    const float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    const float omb1 = 1.0f - beta1, omb2 = 1.0f - beta2;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float pi = p[i] * decay; // decoupled weight decay first
        float mi = m[i] * beta1 + g[i] * omb1;
        float vi = v[i] * beta2 + g[i] * g[i] * omb2;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi - step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

void cpu_adamw(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float wd, float beta1,
               float beta2, float eps, long step) {
    adamw_apply(p, g, m, v, n, lr, wd, beta1, beta2, eps, 1.0 - pow(beta1, (double)step), 1.0 - pow(beta2, (double)step));
}

void cpu_ema(Backend *be, float *t, const float *s, size_t n, float momentum) {
    const float a = 1.0f - momentum;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) t[i] = t[i] * momentum + a * s[i];
}

// ---- the same with the step's scalars from the block (model/step_scalars.h): ordinary memory here ----

void cpu_sum_squares_ss(Backend *be, const float *x, size_t n, int group, DinoStepScalars *ss) {
    ss->out.grad_ss[group] += cpu_sum_squares(be, x, n);
}

void cpu_update_prepare_ss(Backend *be, int groups, double max_norm, float beta1, float beta2, DinoStepScalars *ss) {
    dino_ss_prepare(ss, groups, max_norm, beta1, beta2);
}

void cpu_clip_scale_ss(Backend *be, float *x, size_t n, int group, const DinoStepScalars *ss) {
    const double coef = ss->out.clip_coef[group];
    if (coef < 1.0) cpu_scale(be, x, (float)coef, n);
}

void cpu_adamw_ss(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr_mult, float wd_mult,
                  int last_layer, float beta1, float beta2, float eps, const DinoStepScalars *ss) {
    if (ss->out.nonfinite) return;
    // torch computes group lr and weight decay in Python doubles
    const float lr = (float)((last_layer ? ss->in.last_layer_lr : ss->in.lr) * lr_mult);
    const float wd = (float)(ss->in.wd * wd_mult);
    adamw_apply(p, g, m, v, n, lr, wd, beta1, beta2, eps, ss->out.bias1, ss->out.bias2);
}

void cpu_ema_ss(Backend *be, float *t, const float *s, size_t n, const DinoStepScalars *ss) {
    if (!ss->out.nonfinite) cpu_ema(be, t, s, n, (float)ss->in.momentum);
}

void cpu_softmax_center_ss(Backend *be, float *P, const float *z, const float *center, int rows, int K,
                           const DinoStepScalars *ss) {
    cpu_softmax_center(be, P, z, center, rows, K, (float)ss->in.teacher_temp);
}

void cpu_softmax_ce_ss(Backend *be, float *loss, float *ds, const float *s, const float *t, const float *w, int rows,
                       int t_rows, int K, float temp, float weight, float div, const DinoStepScalars *ss) {
    const float weight_t = (float)((double)weight * ss->in.dino_local_weight);
    cpu_softmax_ce(be, loss, ds, s, t, w, rows, t_rows, K, temp, weight_t / div);
}

void cpu_gram_loss_ss(Backend *be, float *loss, float *ds_acc, const float *s, const float *t, int B, int N, int D,
                      int normalize, int neg_mode, float alpha, const DinoStepScalars *ss) {
    cpu_gram_loss(be, loss, ds_acc, s, t, B, N, D, normalize, neg_mode, (float)((double)alpha * ss->in.gram_weight));
}

void cpu_nonfinite_check_ss(Backend *be, const float *x, size_t n, DinoStepScalars *ss) {
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
    for (size_t i = 0; i < n; i++) bad |= !isfinite(x[i]);
    if (bad) ss->out.nonfinite = 1;
}

void cpu_revert_if_nonfinite_ss(Backend *be, float *dst, const float *saved, size_t n, const DinoStepScalars *ss) {
    if (ss->out.nonfinite) memcpy(dst, saved, sizeof(float) * n);
}
