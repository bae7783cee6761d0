// Optimizer ops: AdamW (torch.optim.AdamW's update order) and the EMA teacher update.
#include <math.h>

#include "model/cpu/cpu_ops.h"

void cpu_adamw(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float wd, float beta1,
               float beta2, float eps, long step) {
    // scalars in double as torch computes them in Python, then used as fp32
    const float decay = (float)(1.0 - (double)lr * wd);
    const double bc1 = 1.0 - pow(beta1, (double)step), bc2 = 1.0 - pow(beta2, (double)step);
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

void cpu_ema(Backend *be, float *t, const float *s, size_t n, float momentum) {
    const float a = 1.0f - momentum;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) t[i] = t[i] * momentum + a * s[i];
}
