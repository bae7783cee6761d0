// The residual add with LayerScale and drop-path scale, followed by the next LayerNorm (model/backend.h,
// residual_layernorm_fwd), and its backward (layernorm_residual_bwd). On the CPU the reference is the
// composition of the ops each fuses, in the order the ViT issued them before the fusion: copy,
// residual_fwd, gather_rows, layernorm_fwd; layernorm_bwd (through a zeroed scratch and scatter_add_rows
// for a row subset), residual_bwd.
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "model/cpu/cpu_ops.h"

void cpu_residual_layernorm_fwd(Backend *be, float *x_out, float *out, float *mean, float *rstd, float *xs,
                                const float *x_in, const float *br, const float *gamma, const int *idx, int n,
                                float scale, const float *w, const float *b, const int *ln_idx, int ln_n, int B,
                                int T, int D, float eps) {
    DINO_ASSERT(!ln_idx || xs, "residual_layernorm_fwd: a LayerNorm row subset needs xs for the gathered rows");
    const size_t row = (size_t)T * D;
    if (x_out != x_in) memcpy(x_out, x_in, sizeof(float) * (size_t)B * row);
    cpu_residual_fwd(be, x_out, br, gamma, idx, n, T, D, scale);
    const float *in = x_out;
    if (ln_idx) {
        cpu_gather_rows(be, xs, x_out, ln_idx, ln_n, row);
        in = xs;
    } else if (xs) {
        memcpy(xs, x_out, sizeof(float) * (size_t)ln_n * row);
    }
    cpu_layernorm_fwd(be, out, mean, rstd, in, w, b, ln_n * T, D, eps);
}

void cpu_layernorm_residual_bwd(Backend *be, float *dx, float *dw, float *db, float *dbr, float *dgamma,
                                const float *dout, const float *x_ln, const float *mean, const float *rstd,
                                const float *w, const int *ln_idx, int ln_n, const float *br, const float *gamma,
                                const int *idx, int n, float scale, int B, int T, int D) {
    (void)B;
    const size_t row = (size_t)T * D;
    if (!ln_idx) {
        cpu_layernorm_bwd(be, dx, dw, db, dout, x_ln, mean, rstd, w, ln_n * T, D);
    } else {
        float *scratch = dino_calloc((size_t)ln_n * row, sizeof(float));
        cpu_layernorm_bwd(be, scratch, dw, db, dout, x_ln, mean, rstd, w, ln_n * T, D);
        cpu_scatter_add_rows(be, dx, scratch, ln_idx, ln_n, row);
        free(scratch);
    }
    cpu_residual_bwd(be, dbr, dgamma, dx, br, gamma, idx, n, T, D, scale);
}
