// The cpu backend's bf16-emulating switch (backend_cpu_emulate_bf16, model/backend.h): the ops keep
// computing in fp32; after every op that writes a DINO_BF16 activation buffer, the elements it wrote
// are rounded to bf16 (to nearest even), which is where the cuda backend stores bf16 (it computes each
// op in fp32 and rounds once at the store). The GEMMs' own input rounding (tensor cores) is not
// modelled here: tests/test_cuda_ops.c's DINO_CUDA_OPS_EMULATE adds it below this layer.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/check.h"
#include "model/backend.h"

// The elementwise ops below are the cuda kernels' own expressions (model/cuda/activation.cu: erff/expf,
// the same order of operations), not the reference's (erfc form, vectorised exp): a value that differs in
// its last fp32 bit may round to another bf16 value, and one such flip spreads through everything after
// it. Without multiply-add contraction, as the execution layer compiles the kernels (-ffp-contract=off).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT2PI 0.39894228040143268f

typedef struct {
    const char *base;
    size_t bytes;
} Bf16Range;

typedef struct {
    Backend inner; // the table as it was when the switch was turned on
    Bf16Range *r;
    int n, cap;
} Bf16Emu;

#define EMU(be) ((Bf16Emu *)(be)->impl)
#define IN(be) (&EMU(be)->inner)

float dino_bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return x; // NaN: the rounding add would carry into the sign
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

// Rounds p[0..n) when p lies in a bf16 buffer (the ops write whole buffers or rows of one).
static void round_if_bf16(Backend *be, float *p, size_t n) {
    const Bf16Emu *e = EMU(be);
    if (!p || !n) return;
    for (int i = 0; i < e->n; i++)
        if ((const char *)p >= e->r[i].base && (const char *)p < e->r[i].base + e->r[i].bytes) {
            DINO_ASSERT((const char *)(p + n) <= e->r[i].base + e->r[i].bytes, "an op wrote past a bf16 buffer");
            for (size_t j = 0; j < n; j++) p[j] = dino_bf16_round(p[j]);
            return;
        }
}

static float *e_alloc_act(Backend *be, size_t n, DinoDtype dt, size_t *bytes) {
    Bf16Emu *e = EMU(be);
    float *p = IN(be)->alloc_act(IN(be), n, dt, bytes);
    if (dt != DINO_BF16) return p;
    if (e->n == e->cap) {
        e->cap = e->cap ? 2 * e->cap : 64;
        e->r = dino_realloc(e->r, sizeof(Bf16Range) * (size_t)e->cap);
    }
    e->r[e->n++] = (Bf16Range){(const char *)p, sizeof(float) * n};
    if (bytes) *bytes = 2 * n; // what the cuda backend holds
    return p;
}
static void e_release(Backend *be, void *p) {
    Bf16Emu *e = EMU(be);
    for (int i = 0; i < e->n; i++)
        if (e->r[i].base == p) {
            e->r[i] = e->r[--e->n];
            break;
        }
    IN(be)->release(IN(be), p);
}
static void e_to_device(Backend *be, void *dst, const void *src, size_t bytes) {
    IN(be)->to_device(IN(be), dst, src, bytes);
    round_if_bf16(be, dst, bytes / sizeof(float));
}
static void e_copy(Backend *be, void *dst, const void *src, size_t bytes) {
    IN(be)->copy(IN(be), dst, src, bytes);
    round_if_bf16(be, dst, bytes / sizeof(float));
}
static void e_linear_fwd(Backend *be, float *out, const float *in, const float *W, const float *b, int rows, int n_in,
                         int n_out) {
    IN(be)->linear_fwd(IN(be), out, in, W, b, rows, n_in, n_out);
    round_if_bf16(be, out, (size_t)rows * n_out);
}
static void e_linear_bwd(Backend *be, float *din, float *dW, float *db, const float *dout, const float *in,
                         const float *W, int rows, int n_in, int n_out) {
    IN(be)->linear_bwd(IN(be), din, dW, db, dout, in, W, rows, n_in, n_out);
    round_if_bf16(be, din, (size_t)rows * n_in);
}
// pre rounded where the GPU stores it, then the GELU of the rounded pre (what the fused kernel computes):
// the composition of this wrapper's own ops, not the inner fused op (that would round pre too late)
static void e_linear_gelu_fwd(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b,
                              int rows, int n_in, int n_out) {
    be->linear_fwd(be, pre, in, W, b, rows, n_in, n_out);
    be->gelu_fwd(be, act, pre, (size_t)rows * n_out);
}
static void e_linear_swiglu_fwd(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b,
                                int rows, int n_in, int Hd) {
    be->linear_fwd(be, pre, in, W, b, rows, n_in, 2 * Hd);
    be->swiglu_fwd(be, act, pre, rows, Hd);
}

// sum_i x[i], i < n, in the order of a warp's reduction (model/cuda/reduce.cuh, warp_sum): lane l sums
// x[l], x[l + 32], ... in turn, then the lanes combine by xor butterfly (strides 16, 8, 4, 2, 1).
float dino_warp_order_sum(const float *x, int n) {
    float v[32];
    for (int l = 0; l < 32; l++) {
        v[l] = 0.0f;
        for (int i = l; i < n; i += 32) v[l] += x[i];
    }
    for (int o = 16; o > 0; o >>= 1) {
        float u[32];
        for (int l = 0; l < 32; l++) u[l] = v[l] + v[l ^ o];
        memcpy(v, u, sizeof v);
    }
    return v[0];
}

// One warp per row (model/cuda/norm.cu, layernorm_fwd_kernel): its sums in the warp's order.
static void e_layernorm_fwd(Backend *be, float *out, float *mean, float *rstd, const float *x, const float *w,
                            const float *b, int rows, int D, float eps) {
    float *d2 = dino_malloc(sizeof(float) * (size_t)D);
    for (size_t r = 0; r < (size_t)rows; r++) {
        const float *xr = x + r * D;
        float *o = out + r * D;
        const float m = dino_warp_order_sum(xr, D) / D;
        for (int i = 0; i < D; i++) {
            float d = xr[i] - m;
            d2[i] = d * d;
        }
        const float rs = 1.0f / sqrtf(dino_warp_order_sum(d2, D) / D + eps);
        for (int i = 0; i < D; i++) o[i] = (xr[i] - m) * rs * w[i] + b[i];
        mean[r] = m, rstd[r] = rs;
    }
    free(d2);
    round_if_bf16(be, out, (size_t)rows * D);
}
static void e_gelu_fwd(Backend *be, float *out, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        out[i] = 0.5f * v * (1.0f + erff(v * INV_SQRT2));
    }
    round_if_bf16(be, out, n);
}
static void e_gelu_bwd(Backend *be, float *dx, const float *dout, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + erff(v * INV_SQRT2));
        float pdf = INV_SQRT2PI * expf(-0.5f * v * v);
        dx[i] = dout[i] * (cdf + v * pdf);
    }
    round_if_bf16(be, dx, n);
}
static void e_swiglu_fwd(Backend *be, float *out, const float *in, int rows, int Hd) {
    for (size_t r = 0; r < (size_t)rows; r++)
        for (int j = 0; j < Hd; j++) {
            float a = in[r * 2 * Hd + j], g = in[r * 2 * Hd + Hd + j];
            out[r * Hd + j] = a / (1.0f + expf(-a)) * g;
        }
    round_if_bf16(be, out, (size_t)rows * Hd);
}
static void e_swiglu_bwd(Backend *be, float *din, const float *dout, const float *in, int rows, int Hd) {
    for (size_t r = 0; r < (size_t)rows; r++)
        for (int j = 0; j < Hd; j++) {
            float a = in[r * 2 * Hd + j], g = in[r * 2 * Hd + Hd + j], d = dout[r * Hd + j];
            float sig = 1.0f / (1.0f + expf(-a));
            din[r * 2 * Hd + Hd + j] = d * a * sig;
            din[r * 2 * Hd + j] = d * g * sig * (1.0f + a * (1.0f - sig));
        }
    round_if_bf16(be, din, (size_t)rows * 2 * Hd);
}
static void e_attention_fwd(Backend *be, float *out, float *saved, const float *qkv, int B, int T, int H, int Dh) {
    IN(be)->attention_fwd(IN(be), out, saved, qkv, B, T, H, Dh);
    round_if_bf16(be, out, (size_t)B * T * H * Dh);
}
static void e_attention_bwd(Backend *be, float *dqkv, const float *dout, const float *qkv, const float *saved, int B,
                            int T, int H, int Dh) {
    IN(be)->attention_bwd(IN(be), dqkv, dout, qkv, saved, B, T, H, Dh);
    round_if_bf16(be, dqkv, (size_t)B * T * 3 * H * Dh);
}
static void e_rope_fwd(Backend *be, float *qkv, const float *sin, const float *cos, int B, int T, int N, int H, int Dh) {
    IN(be)->rope_fwd(IN(be), qkv, sin, cos, B, T, N, H, Dh);
    round_if_bf16(be, qkv, (size_t)B * T * 3 * H * Dh);
}
static void e_rope_bwd(Backend *be, float *dqkv, const float *sin, const float *cos, int B, int T, int N, int H, int Dh) {
    IN(be)->rope_bwd(IN(be), dqkv, sin, cos, B, T, N, H, Dh);
    round_if_bf16(be, dqkv, (size_t)B * T * 3 * H * Dh);
}
static void e_residual_bwd(Backend *be, float *dbr, float *dgamma, const float *dx, const float *br,
                           const float *gamma, const int *idx, int n, int T, int D, float scale) {
    IN(be)->residual_bwd(IN(be), dbr, dgamma, dx, br, gamma, idx, n, T, D, scale);
    round_if_bf16(be, dbr, (size_t)n * T * D);
}
static void e_residual_layernorm_fwd(Backend *be, float *x_out, float *out, float *mean, float *rstd, float *xs,
                                     const float *x_in, const float *br, const float *gamma, const int *idx, int n,
                                     float scale, const float *w, const float *b, const int *ln_idx, int ln_n, int B,
                                     int T, int D, float eps) {
    IN(be)->residual_layernorm_fwd(IN(be), x_out, out, mean, rstd, xs, x_in, br, gamma, idx, n, scale, w, b, ln_idx,
                                   ln_n, B, T, D, eps);
    // the stream and xs are fp32 and exact; the LayerNorm again as this wrapper emulates it (the kernel's
    // own layernorm_row: the warp's summation order, the output rounded where the GPU stores it)
    be->layernorm_fwd(be, out, mean, rstd, xs ? xs : x_out, w, b, ln_n * T, D, eps);
}
static void e_layernorm_residual_bwd(Backend *be, float *dx, float *dw, float *db, float *dbr, float *dgamma,
                                     const float *dout, const float *x_ln, const float *mean, const float *rstd,
                                     const float *w, const int *ln_idx, int ln_n, const float *br, const float *gamma,
                                     const int *idx, int n, float scale, int B, int T, int D) {
    IN(be)->layernorm_residual_bwd(IN(be), dx, dw, db, dbr, dgamma, dout, x_ln, mean, rstd, w, ln_idx, ln_n, br, gamma,
                                   idx, n, scale, B, T, D);
    round_if_bf16(be, dbr, (size_t)n * T * D); // as residual_bwd: the branch gradient, nothing else
}
static void e_im2col(Backend *be, float *cols, const float *img, int B, int C, int Hi, int Wi, int p) {
    IN(be)->im2col(IN(be), cols, img, B, C, Hi, Wi, p);
    round_if_bf16(be, cols, (size_t)B * (Hi / p) * (Wi / p) * C * p * p);
}
static void e_tokens_bwd(Backend *be, float *dpatch, float *dcls, float *dreg, float *dpos, float *dmask_token,
                         const float *dx, const uint8_t *mask, int B, int N, int R, int D) {
    IN(be)->tokens_bwd(IN(be), dpatch, dcls, dreg, dpos, dmask_token, dx, mask, B, N, R, D);
    round_if_bf16(be, dpatch, (size_t)B * N * D);
}
static void e_destroy(Backend *be) {
    Bf16Emu *e = EMU(be);
    Backend inner = e->inner;
    free(e->r);
    free(e);
    be->impl = inner.impl;
    if (inner.destroy) inner.destroy(be);
}

Backend *backend_cpu_emulate_bf16(Backend *be) {
    DINO_ASSERT(be->impl == NULL && be->alloc_act, "backend_cpu_emulate_bf16 wants a plain cpu backend");
    Bf16Emu *e = dino_calloc(1, sizeof *e);
    e->inner = *be;
    be->impl = e;
    be->name = "cpu-bf16";
    be->alloc_act = e_alloc_act, be->release = e_release, be->to_device = e_to_device, be->copy = e_copy;
    be->linear_fwd = e_linear_fwd, be->linear_bwd = e_linear_bwd, be->layernorm_fwd = e_layernorm_fwd;
    be->linear_gelu_fwd = e_linear_gelu_fwd, be->linear_swiglu_fwd = e_linear_swiglu_fwd;
    be->gelu_fwd = e_gelu_fwd, be->gelu_bwd = e_gelu_bwd, be->swiglu_fwd = e_swiglu_fwd, be->swiglu_bwd = e_swiglu_bwd;
    be->attention_fwd = e_attention_fwd, be->attention_bwd = e_attention_bwd;
    be->rope_fwd = e_rope_fwd, be->rope_bwd = e_rope_bwd, be->residual_bwd = e_residual_bwd;
    be->residual_layernorm_fwd = e_residual_layernorm_fwd;
    be->layernorm_residual_bwd = e_layernorm_residual_bwd;
    be->im2col = e_im2col, be->tokens_bwd = e_tokens_bwd;
    be->destroy = e_destroy;
    return be;
}
