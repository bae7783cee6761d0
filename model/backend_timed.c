// The timing/counting wrapper (model/backend_timed.h). Every op: optionally synchronise and start the
// clock, forward to the wrapped backend, then tally the call with its roofline costs in the three layouts.
// The current layout counts each activation argument with the element type the wrapped backend stores:
// the wrapper records it from alloc_act, whose *bytes says what the backend holds (2 per element: bf16).
// Why here and not a backend query (an act_dtype entry in the op table): the stored type is decided at
// allocation, once per buffer, and every backend already reports it there (cuda: bf16 with its default bf16
// GEMMs, fp32 with CUDA_GEMM_FP32; the plan backend's cuda layout: bf16; cpu and its bf16 emulation: fp32,
// the emulation only rounds the values); the model passes bf16 buffers whole (docs/cuda-backend.md), so an
// exact lookup of the pointer finds them. No op-table entry to add in every backend, nothing to keep in
// sync. A buffer allocated before the wrapper was put around the backend counts as fp32.
// Which attention the backend runs (flash or the batched GEMMs) follows from the size of its saved state.
// The target layout's fusions are found from the order of the calls (the ViT issues them in a fixed
// order): an activation right after the linear layer that wrote its input (GEMM epilogue), a copy into
// the stream right before the residual op that updates it (one kernel). Host transfers between them (the
// ViT's per-block drop-path indices, which the target stages once per step) do not break the adjacency.
// The residual + LayerNorm fusion is an op of its own (residual_layernorm_fwd), counted as such.
#include "model/backend_timed.h"

#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/clock.h"
#include "model/attention_layout.h"

typedef struct {
    Backend *inner;
    RoofCard card;
    int execute, counting, timing;
    RoofTally tally[ROP_COUNT];
    // the last counted op, for the target's fusions
    int prev_op; // -1: none
    const void *prev_out;
    RoofCost prev_target;
    // the alloc_act buffers the wrapped backend stores in bf16, sorted by address
    const void **bf16;
    int n_bf16, cap_bf16;
} TimedState;

#define S(be) ((TimedState *)(be)->impl)
#define IN(s) ((s)->inner)
#define COSTS(fn, ...)                                                                                                 \
    ((const RoofCost[ROOF_NLAYOUTS]){fn(ROOF_SESSION3, __VA_ARGS__), fn(ROOF_CURRENT, __VA_ARGS__),                     \
                                     fn(ROOF_TARGET, __VA_ARGS__)})

// ---- element types of the arguments ----------------------------------------------------------------------------
// The index of the first recorded bf16 buffer at or above p (n_bf16 if none).
static int bf16_lower_bound(const TimedState *s, const void *p) {
    int lo = 0, hi = s->n_bf16;
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if ((const char *)s->bf16[mid] < (const char *)p) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}
// Bytes per element of an op argument as the wrapped backend stores it: 2 for a bf16 alloc_act buffer, else 4.
static int elem(const TimedState *s, const void *p) {
    const int i = bf16_lower_bound(s, p);
    return p && i < s->n_bf16 && s->bf16[i] == p ? 2 : 4;
}
#define E(p) elem(S(be), (p))
static void bf16_record(TimedState *s, const void *p) {
    if (s->n_bf16 == s->cap_bf16) {
        s->cap_bf16 = s->cap_bf16 ? 2 * s->cap_bf16 : 64;
        s->bf16 = dino_realloc(s->bf16, sizeof(*s->bf16) * (size_t)s->cap_bf16);
    }
    const int i = bf16_lower_bound(s, p);
    memmove(s->bf16 + i + 1, s->bf16 + i, sizeof(*s->bf16) * (size_t)(s->n_bf16 - i));
    s->bf16[i] = p;
    s->n_bf16++;
}
static void bf16_forget(TimedState *s, const void *p) {
    const int i = bf16_lower_bound(s, p);
    if (i == s->n_bf16 || s->bf16[i] != p) return;
    memmove(s->bf16 + i, s->bf16 + i + 1, sizeof(*s->bf16) * (size_t)(s->n_bf16 - i - 1));
    s->n_bf16--;
}
// The wrapped backend runs the fused attention for this shape: its saved state is the flash path's
// (LSE + bf16 O), not probabilities (T x T per head: the cpu's fp32, the cuda GEMM path's bf16).
static int runs_flash(TimedState *s, int B, int T, int H, int Dh) {
    return attention_flash_head_dim(Dh) &&
           s->inner->attention_saved_floats(s->inner, B, T, H, Dh) == attention_saved_floats_flash(B, T, H, Dh);
}

static double t_begin(TimedState *s) {
    if (!s->counting || !s->timing) return 0;
    s->inner->sync(s->inner);
    return dino_wall_s();
}

static void t_end(TimedState *s, RoofOp op, double t0, const RoofCost *c, const void *out) {
    if (!s->counting) return;
    RoofTally *t = &s->tally[op];
    if (s->timing) {
        s->inner->sync(s->inner);
        t->meas_s += dino_wall_s() - t0;
    }
    t->calls++;
    const RoofFamily f = roof_op_family(op);
    for (int l = 0; l < ROOF_NLAYOUTS; l++) roof_tally_add(t, &s->card, f, (RoofLayout)l, c[l]);
    if (f == RF_HOST || f == RF_UPLOAD) return; // transparent to the fusion adjacency
    s->prev_op = (int)op;
    s->prev_out = out;
    s->prev_target = c[ROOF_TARGET];
}

// An op of two kernels run one after the other (a fused GEMM + epilogue pass): each part tallied with its own
// roofline time, so the op's prediction is the sum of a compute-bound and a bandwidth-bound time.
static void t_end_parts(TimedState *s, RoofOp op, double t0, const RoofCost *gemm, const RoofCost *pass, const void *out) {
    RoofCost sum[ROOF_NLAYOUTS];
    for (int l = 0; l < ROOF_NLAYOUTS; l++)
        sum[l] = (RoofCost){gemm[l].flops + pass[l].flops, gemm[l].bytes + pass[l].bytes, gemm[l].kernels + pass[l].kernels,
                            gemm[l].fp64 + pass[l].fp64};
    t_end(s, op, t0, sum, out);
    if (!s->counting) return;
    RoofTally *t = &s->tally[op];
    for (int l = 0; l < ROOF_NLAYOUTS; l++) // t_end counted the sum's time: replace it with the parts'
        t->pred_s[l] += roof_time_s(&s->card, (RoofLayout)l, roof_op_family(op), gemm[l]) +
                        roof_time_s(&s->card, (RoofLayout)l, roof_op_family(op), pass[l]) -
                        roof_time_s(&s->card, (RoofLayout)l, roof_op_family(op), sum[l]);
}

// The previous call turns out to be absorbed by this one in the target layout: take its target cost back.
static void absorb_prev(TimedState *s) {
    RoofTally *t = &s->tally[s->prev_op];
    const RoofCost k = s->prev_target;
    t->flops[ROOF_TARGET] -= k.flops;
    t->bytes[ROOF_TARGET] -= k.bytes;
    t->kernels[ROOF_TARGET] -= k.kernels;
    t->fp64[ROOF_TARGET] -= k.fp64;
    t->pred_s[ROOF_TARGET] -= roof_time_s(&s->card, ROOF_TARGET, roof_op_family((RoofOp)s->prev_op), k);
    s->prev_target = (RoofCost){0, 0, 0, 0};
}

static int after(const TimedState *s, RoofOp op, const void *p) {
    return s->counting && s->prev_op == (int)op && s->prev_out == p;
}

// ---- memory (forwarded; copies and transfers counted) ----------------------------------------------------
static void *t_alloc(Backend *be, size_t bytes) { return IN(S(be))->alloc(IN(S(be)), bytes); }
static void t_release(Backend *be, void *p) {
    bf16_forget(S(be), p);
    IN(S(be))->release(IN(S(be)), p);
}
static float *t_alloc_act(Backend *be, size_t n, DinoDtype dt, size_t *bytes) {
    size_t held = 0;
    float *p = IN(S(be))->alloc_act(IN(S(be)), n, dt, &held);
    if (n && held == 2 * n) bf16_record(S(be), p);
    if (bytes) *bytes = held;
    return p;
}
static void *t_host_alloc(Backend *be, size_t bytes) { return IN(S(be))->host_alloc(IN(S(be)), bytes); }
static void t_host_free(Backend *be, void *p) { IN(S(be))->host_free(IN(S(be)), p); }
static void t_sync(Backend *be) { IN(S(be))->sync(IN(S(be))); }
static void t_upload_wait(Backend *be, int ticket) { IN(S(be))->upload_wait(IN(S(be)), ticket); }
static size_t t_param_copy_register(Backend *be, float *P, size_t n) {
    return IN(S(be))->param_copy_register(IN(S(be)), P, n);
}
static void t_download_wait(Backend *be) { IN(S(be))->download_wait(IN(S(be))); }

static void t_to_device(Backend *be, void *dst, const void *src, size_t bytes) {
    TimedState *s = S(be);
    double t0 = t_begin(s);
    s->inner->to_device(s->inner, dst, src, bytes);
    t_end(s, ROP_TO_DEVICE, t0, COSTS(roof_host, (double)bytes), dst);
}
static void t_to_host(Backend *be, void *dst, const void *src, size_t bytes) {
    TimedState *s = S(be);
    double t0 = t_begin(s);
    s->inner->to_host(s->inner, dst, src, bytes);
    t_end(s, ROP_TO_HOST, t0, COSTS(roof_host, (double)bytes), NULL);
}
static int t_upload_async(Backend *be, void *dst, const void *src, size_t bytes) {
    TimedState *s = S(be);
    double t0 = t_begin(s);
    int ticket = s->inner->upload_async(s->inner, dst, src, bytes);
    t_end(s, ROP_UPLOAD_ASYNC, t0, COSTS(roof_host, (double)bytes), dst);
    return ticket;
}
static void t_download_async(Backend *be, void *dst, const void *src, size_t bytes) {
    TimedState *s = S(be);
    double t0 = t_begin(s);
    s->inner->download_async(s->inner, dst, src, bytes);
    t_end(s, ROP_DOWNLOAD_ASYNC, t0, COSTS(roof_host, (double)bytes), NULL);
}
static void t_copy(Backend *be, void *dst, const void *src, size_t bytes) {
    TimedState *s = S(be);
    double t0 = t_begin(s);
    s->inner->copy(s->inner, dst, src, bytes);
    t_end(s, ROP_COPY, t0, COSTS(roof_copy, (double)bytes, elem(s, dst), 0), dst);
}
static void t_zero(Backend *be, void *p, size_t bytes) {
    TimedState *s = S(be);
    double t0 = t_begin(s);
    s->inner->zero(s->inner, p, bytes);
    t_end(s, ROP_ZERO, t0, COSTS(roof_zero, (double)bytes, elem(s, p)), p);
}

static void t_param_copy_changed(Backend *be, const float *p, size_t n) {
    TimedState *s = S(be);
    double t0 = t_begin(s);
    s->inner->param_copy_changed(s->inner, p, n);
    t_end(s, ROP_PARAM_COPY_CHANGED, t0, COSTS(roof_param_copy_changed, (double)n), p);
}

// ---- compute ops ---------------------------------------------------------------------------------------------------
// OP(name, out, costs, call args...): time, run (when executing), tally.
#define OP(rop, out, costs, method, ...)                                                           \
    do {                                                                                           \
        TimedState *s_ = S(be);                                                                    \
        const double t0_ = t_begin(s_);                                                            \
        if (s_->execute) s_->inner->method(s_->inner, __VA_ARGS__);                                \
        t_end(s_, rop, t0_, costs, out);                                                           \
    } while (0)

static void t_gemm(Backend *be, int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc) {
    OP(ROP_GEMM, C, COSTS(roof_gemm, M, N, K, beta != 0.0f), gemm, tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
static void t_linear_fwd(Backend *be, float *out, const float *in, const float *W, const float *b, int rows, int n_in,
                         int n_out) {
    OP(ROP_LINEAR_FWD, out, COSTS(roof_linear_fwd, rows, n_in, n_out, b != NULL, E(out), E(in)), linear_fwd, out, in, W, b, rows, n_in,
       n_out);
}
static void t_linear_bwd(Backend *be, float *din, float *dW, float *db, const float *dout, const float *in,
                         const float *W, int rows, int n_in, int n_out) {
    OP(ROP_LINEAR_BWD, din, COSTS(roof_linear_bwd, rows, n_in, n_out, din != NULL, db != NULL, E(din), E(dout), E(in)),
       linear_bwd, din, dW, db,
       dout, in, W, rows, n_in, n_out);
}
static void t_linear_gelu_fwd(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b,
                              int rows, int n_in, int n_out) {
    TimedState *s = S(be);
    const double t0 = t_begin(s);
    if (s->execute) s->inner->linear_gelu_fwd(s->inner, pre, act, in, W, b, rows, n_in, n_out);
    t_end_parts(s, ROP_LINEAR_GELU_FWD, t0, COSTS(roof_linear_gelu_fwd, rows, n_in, n_out, b != NULL, 0, E(pre), E(act), E(in)),
                COSTS(roof_linear_gelu_fwd, rows, n_in, n_out, b != NULL, 1, E(pre), E(act), E(in)), act);
}
static void t_linear_swiglu_fwd(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b,
                                int rows, int n_in, int Hd) {
    TimedState *s = S(be);
    const double t0 = t_begin(s);
    if (s->execute) s->inner->linear_swiglu_fwd(s->inner, pre, act, in, W, b, rows, n_in, Hd);
    t_end_parts(s, ROP_LINEAR_SWIGLU_FWD, t0, COSTS(roof_linear_swiglu_fwd, rows, n_in, Hd, b != NULL, 0, E(pre), E(act), E(in)),
                COSTS(roof_linear_swiglu_fwd, rows, n_in, Hd, b != NULL, 1, E(pre), E(act), E(in)), act);
}
static void t_layernorm_fwd(Backend *be, float *out, float *mean, float *rstd, const float *x, const float *w,
                            const float *b, int rows, int D, float eps) {
    OP(ROP_LAYERNORM_FWD, out, COSTS(roof_layernorm_fwd, rows, D, 0, E(out)), layernorm_fwd, out, mean, rstd, x, w, b, rows,
       D, eps);
}
static void t_layernorm_bwd(Backend *be, float *dx_acc, float *dw, float *db, const float *dout, const float *x,
                            const float *mean, const float *rstd, const float *w, int rows, int D) {
    OP(ROP_LAYERNORM_BWD, dx_acc, COSTS(roof_layernorm_bwd, rows, D, E(dout)), layernorm_bwd, dx_acc, dw, db, dout, x, mean, rstd,
       w, rows, D);
}
static void t_gelu_fwd(Backend *be, float *out, const float *x, size_t n) {
    const int epi = after(S(be), ROP_LINEAR_FWD, x);
    OP(ROP_GELU_FWD, out, COSTS(roof_gelu_fwd, (double)n, epi, E(out), E(x)), gelu_fwd, out, x, n);
}
static void t_gelu_bwd(Backend *be, float *dx, const float *dout, const float *x, size_t n) {
    OP(ROP_GELU_BWD, dx, COSTS(roof_gelu_bwd, (double)n, E(dx), E(dout), E(x)), gelu_bwd, dx, dout, x, n);
}
static void t_swiglu_fwd(Backend *be, float *out, const float *in, int rows, int Hd) {
    const int epi = after(S(be), ROP_LINEAR_FWD, in);
    OP(ROP_SWIGLU_FWD, out, COSTS(roof_swiglu_fwd, rows, Hd, epi, E(out), E(in)), swiglu_fwd, out, in, rows, Hd);
}
static void t_swiglu_bwd(Backend *be, float *din, const float *dout, const float *in, int rows, int Hd) {
    OP(ROP_SWIGLU_BWD, din, COSTS(roof_swiglu_bwd, rows, Hd, E(din), E(dout), E(in)), swiglu_bwd, din, dout, in, rows, Hd);
}
static size_t t_attention_saved_floats(Backend *be, int B, int T, int H, int Dh) {
    return IN(S(be))->attention_saved_floats(IN(S(be)), B, T, H, Dh);
}
static void t_attention_fwd(Backend *be, float *out, float *saved, const float *qkv, int B, int T, int H, int Dh) {
    const int flash = S(be)->counting && runs_flash(S(be), B, T, H, Dh);
    OP(ROP_ATTENTION_FWD, out, COSTS(roof_attention_fwd, B, T, H, Dh, flash, E(out), E(qkv)), attention_fwd, out, saved, qkv, B, T, H, Dh);
}
static void t_attention_bwd(Backend *be, float *dqkv, const float *dout, const float *qkv, const float *saved, int B,
                            int T, int H, int Dh) {
    const int flash = S(be)->counting && runs_flash(S(be), B, T, H, Dh);
    OP(ROP_ATTENTION_BWD, dqkv, COSTS(roof_attention_bwd, B, T, H, Dh, flash, E(dqkv), E(dout), E(qkv)), attention_bwd, dqkv, dout, qkv, saved, B, T, H,
       Dh);
}
static void t_im2col(Backend *be, float *cols, const float *img, int B, int C, int Hi, int Wi, int p) {
    OP(ROP_IM2COL, cols, COSTS(roof_im2col, B, C, Hi, Wi, p), im2col, cols, img, B, C, Hi, Wi, p);
}
static void t_tokens_fwd(Backend *be, float *x, const float *patch, const float *cls, const float *reg, const float *pos,
                         const float *mask_token, const uint8_t *mask, int B, int N, int R, int D) {
    OP(ROP_TOKENS_FWD, x, COSTS(roof_tokens_fwd, B, N, R, D), tokens_fwd, x, patch, cls, reg, pos, mask_token, mask, B, N,
       R, D);
}
static void t_tokens_bwd(Backend *be, float *dpatch, float *dcls, float *dreg, float *dpos, float *dmask_token,
                         const float *dx, const uint8_t *mask, int B, int N, int R, int D) {
    OP(ROP_TOKENS_BWD, dpatch, COSTS(roof_tokens_bwd, B, N, R, D, mask != NULL), tokens_bwd, dpatch, dcls, dreg, dpos,
       dmask_token, dx, mask, B, N, R, D);
}
static void t_gather_rows(Backend *be, float *out, const float *in, const int *idx, int n, size_t len) {
    OP(ROP_GATHER_ROWS, out, COSTS(roof_gather_rows, n, (double)len, 0), gather_rows, out, in, idx, n, len);
}
static void t_residual_fwd(Backend *be, float *x, const float *br, const float *gamma, const int *idx, int n, int T,
                           int D, float scale) {
    TimedState *s = S(be);
    if (after(s, ROP_COPY, x)) absorb_prev(s); // the copy of the stream into x happens in the residual kernel
    OP(ROP_RESIDUAL_FWD, x, COSTS(roof_residual_fwd, n, T, D, E(br)), residual_fwd, x, br, gamma, idx, n, T, D, scale);
}
static void t_residual_bwd(Backend *be, float *dbr, float *dgamma, const float *dx, const float *br, const float *gamma,
                           const int *idx, int n, int T, int D, float scale) {
    OP(ROP_RESIDUAL_BWD, dbr, COSTS(roof_residual_bwd, n, T, D, dgamma != NULL, E(dbr), E(br)), residual_bwd, dbr, dgamma, dx, br, gamma,
       idx, n, T, D, scale);
}
static void t_residual_layernorm_fwd(Backend *be, float *x_out, float *out, float *mean, float *rstd, float *xs,
                                     const float *x_in, const float *br, const float *gamma, const int *idx, int n,
                                     float scale, const float *w, const float *b, const int *ln_idx, int ln_n, int B,
                                     int T, int D, float eps) {
    OP(ROP_RESIDUAL_LAYERNORM_FWD, out,
       COSTS(roof_residual_layernorm_fwd, B, n, ln_n, T, D, x_out != x_in, ln_idx != NULL || xs != NULL, E(br), E(out)),
       residual_layernorm_fwd, x_out, out, mean, rstd, xs, x_in, br, gamma, idx, n, scale, w, b, ln_idx, ln_n, B, T, D,
       eps);
}
static void t_layernorm_residual_bwd(Backend *be, float *dx, float *dw, float *db, float *dbr, float *dgamma,
                                     const float *dout, const float *x_ln, const float *mean, const float *rstd,
                                     const float *w, const int *ln_idx, int ln_n, const float *br, const float *gamma,
                                     const int *idx, int n, float scale, int B, int T, int D) {
    OP(ROP_LAYERNORM_RESIDUAL_BWD, dbr,
       COSTS(roof_layernorm_residual_bwd, n, ln_n, T, D, ln_idx != NULL, dgamma != NULL, E(dout), E(dbr), E(br)),
       layernorm_residual_bwd, dx,
       dw, db, dbr, dgamma, dout, x_ln, mean, rstd, w, ln_idx, ln_n, br, gamma, idx, n, scale, B, T, D);
}
static void t_scatter_add_rows(Backend *be, float *x, const float *in, const int *idx, int n, size_t len) {
    OP(ROP_SCATTER_ADD_ROWS, x, COSTS(roof_scatter_add_rows, n, (double)len), scatter_add_rows, x, in, idx, n, len);
}
static void t_rope_fwd(Backend *be, float *qkv, const float *sin, const float *cos, int B, int T, int N, int H,
                       int Dh) {
    OP(ROP_ROPE_FWD, qkv, COSTS(roof_rope, B, N, H, Dh, E(qkv)), rope_fwd, qkv, sin, cos, B, T, N, H, Dh);
}
static void t_rope_bwd(Backend *be, float *dqkv, const float *sin, const float *cos, int B, int T, int N, int H,
                       int Dh) {
    OP(ROP_ROPE_BWD, dqkv, COSTS(roof_rope, B, N, H, Dh, E(dqkv)), rope_bwd, dqkv, sin, cos, B, T, N, H, Dh);
}
static void t_gram_loss(Backend *be, float *loss, float *ds_acc, const float *sf, const float *t, int B, int N, int D,
                        int normalize, int neg_mode, float alpha) {
    OP(ROP_GRAM_LOSS, loss, COSTS(roof_gram_loss, B, N, D), gram_loss, loss, ds_acc, sf, t, B, N, D, normalize, neg_mode,
       alpha);
}
static void t_axpy(Backend *be, float *y, float alpha, const float *x, size_t n) {
    OP(ROP_AXPY, y, COSTS(roof_axpy, (double)n), axpy, y, alpha, x, n);
}
static void t_scale(Backend *be, float *x, float alpha, size_t n) {
    OP(ROP_SCALE, x, COSTS(roof_scale, (double)n), scale, x, alpha, n);
}
static double t_sum_squares(Backend *be, const float *x, size_t n) {
    TimedState *s = S(be);
    const double t0 = t_begin(s);
    const double r = s->execute ? s->inner->sum_squares(s->inner, x, n) : 0.0;
    t_end(s, ROP_SUM_SQUARES, t0, COSTS(roof_sum_squares, (double)n), NULL);
    return r;
}
static void t_l2norm_fwd(Backend *be, float *out, float *norm, const float *x, int rows, int n, float eps) {
    OP(ROP_L2NORM_FWD, out, COSTS(roof_l2norm_fwd, rows, n), l2norm_fwd, out, norm, x, rows, n, eps);
}
static void t_l2norm_bwd(Backend *be, float *dx, const float *dout, const float *x, const float *norm, int rows, int n,
                         float eps) {
    OP(ROP_L2NORM_BWD, dx, COSTS(roof_l2norm_bwd, rows, n), l2norm_bwd, dx, dout, x, norm, rows, n, eps);
}
static void t_weightnorm_fwd(Backend *be, float *W, float *vnorm, const float *g, const float *v, int K, int n) {
    OP(ROP_WEIGHTNORM_FWD, W, COSTS(roof_weightnorm_fwd, K, n), weightnorm_fwd, W, vnorm, g, v, K, n);
}
static void t_weightnorm_bwd(Backend *be, float *dg, float *dv, const float *dW, const float *g, const float *v,
                             const float *vnorm, int K, int n) {
    OP(ROP_WEIGHTNORM_BWD, dv, COSTS(roof_weightnorm_bwd, K, n), weightnorm_bwd, dg, dv, dW, g, v, vnorm, K, n);
}
static void t_softmax_center(Backend *be, float *P, const float *z, const float *center, int rows, int K, float temp) {
    OP(ROP_SOFTMAX_CENTER, P, COSTS(roof_softmax_center, rows, K), softmax_center, P, z, center, rows, K, temp);
}
static void t_col_sum(Backend *be, float *sum, const float *z, int rows, int K) {
    OP(ROP_COL_SUM, sum, COSTS(roof_col_sum, rows, K), col_sum, sum, z, rows, K);
}
static void t_center_update(Backend *be, float *center, const float *sum, int K, float scale, float momentum) {
    OP(ROP_CENTER_UPDATE, center, COSTS(roof_center_update, K), center_update, center, sum, K, scale, momentum);
}
static void t_sinkhorn(Backend *be, Collective *coll, float *P, const float *z, int rows, int K, float temp, int n_iter,
                       float n_global) {
    OP(ROP_SINKHORN, P, COSTS(roof_sinkhorn, rows, K, n_iter), sinkhorn, coll, P, z, rows, K, temp, n_iter, n_global);
}
static void t_softmax_ce(Backend *be, float *loss, float *ds, const float *s, const float *t, const float *w, int rows,
                         int t_rows, int K, float temp, float alpha) {
    OP(ROP_SOFTMAX_CE, ds, COSTS(roof_softmax_ce, rows, K, loss != NULL, ds != NULL), softmax_ce, loss, ds, s, t, w, rows,
       t_rows, K, temp, alpha);
}
static void t_entropy_mean(Backend *be, float *out, const float *P, int rows, int K) {
    OP(ROP_ENTROPY_MEAN, out, COSTS(roof_entropy_mean, rows, K), entropy_mean, out, P, rows, K);
}
static void t_koleo(Backend *be, float *loss, float *dx_acc, const float *x, int B, int D, float alpha) {
    OP(ROP_KOLEO, dx_acc, COSTS(roof_koleo, B, D), koleo, loss, dx_acc, x, B, D, alpha);
}
static void t_kde(Backend *be, float *loss, float *dx_acc, const float *x, int B, int D, float kappa, float alpha) {
    OP(ROP_KDE, dx_acc, COSTS(roof_kde, B, D), kde, loss, dx_acc, x, B, D, kappa, alpha);
}
static void t_adamw(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float wd, float beta1,
                    float beta2, float eps, long step) {
    OP(ROP_ADAMW, p, COSTS(roof_adamw, (double)n), adamw, p, g, m, v, n, lr, wd, beta1, beta2, eps, step);
}
static void t_ema(Backend *be, float *t, const float *s, size_t n, float momentum) {
    OP(ROP_EMA, t, COSTS(roof_ema, (double)n), ema, t, s, n, momentum);
}
// the *_ss ops (the per-step scalar block) count as their by-value twins; the small ones as step_scalars
static void t_sum_squares_ss(Backend *be, const float *x, size_t n, int group, DinoStepScalars *ss) {
    OP(ROP_SUM_SQUARES, NULL, COSTS(roof_sum_squares, (double)n), sum_squares_ss, x, n, group, ss);
}
static void t_update_prepare_ss(Backend *be, int groups, double max_norm, float beta1, float beta2, DinoStepScalars *ss) {
    OP(ROP_STEP_SCALARS, NULL, COSTS(roof_step_scalars, 0), update_prepare_ss, groups, max_norm, beta1, beta2, ss);
}
// The clip runs every step and its kernel returns after reading the coefficient unless the norm is over the
// limit (optim_ops.cu clip_scale_kernel): counted as that no-clip case, one launch and no pass over x, as the
// by-value path (a scale call only when the host saw a norm over the limit) counted a step that clips nothing.
static void t_clip_scale_ss(Backend *be, float *x, size_t n, int group, const DinoStepScalars *ss) {
    OP(ROP_SCALE, x, COSTS(roof_scale, 0.0), clip_scale_ss, x, n, group, ss);
}
static void t_adamw_ss(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr_mult, float wd_mult,
                       int last_layer, float beta1, float beta2, float eps, const DinoStepScalars *ss) {
    OP(ROP_ADAMW, p, COSTS(roof_adamw, (double)n), adamw_ss, p, g, m, v, n, lr_mult, wd_mult, last_layer, beta1, beta2,
       eps, ss);
}
static void t_ema_ss(Backend *be, float *t, const float *s, size_t n, const DinoStepScalars *ss) {
    OP(ROP_EMA, t, COSTS(roof_ema, (double)n), ema_ss, t, s, n, ss);
}
static void t_softmax_ce_ss(Backend *be, float *loss, float *ds, const float *s, const float *t, const float *w, int rows,
                            int t_rows, int K, float temp, float weight, float div, const DinoStepScalars *ss) {
    OP(ROP_SOFTMAX_CE, ds, COSTS(roof_softmax_ce, rows, K, loss != NULL, ds != NULL), softmax_ce_ss, loss, ds, s, t, w,
       rows, t_rows, K, temp, weight, div, ss);
}
static void t_gram_loss_ss(Backend *be, float *loss, float *ds_acc, const float *sf, const float *t, int B, int N,
                           int D, int normalize, int neg_mode, float alpha, const DinoStepScalars *ss) {
    OP(ROP_GRAM_LOSS, loss, COSTS(roof_gram_loss, B, N, D), gram_loss_ss, loss, ds_acc, sf, t, B, N, D, normalize,
       neg_mode, alpha, ss);
}
static void t_softmax_center_ss(Backend *be, float *P, const float *z, const float *center, int rows, int K,
                                const DinoStepScalars *ss) {
    OP(ROP_SOFTMAX_CENTER, P, COSTS(roof_softmax_center, rows, K), softmax_center_ss, P, z, center, rows, K, ss);
}
static void t_nonfinite_check_ss(Backend *be, const float *x, size_t n, DinoStepScalars *ss) {
    OP(ROP_STEP_SCALARS, NULL, COSTS(roof_step_scalars, (double)n), nonfinite_check_ss, x, n, ss);
}
static void t_revert_if_nonfinite_ss(Backend *be, float *dst, const float *saved, size_t n, const DinoStepScalars *ss) {
    OP(ROP_STEP_SCALARS, dst, COSTS(roof_step_scalars, 2.0 * (double)n), revert_if_nonfinite_ss, dst, saved, n, ss);
}

static void t_destroy(Backend *be) {
    TimedState *s = S(be);
    backend_free(s->inner);
    free(s->bf16);
    free(s);
    be->impl = NULL;
}

// Every member of the op table must be wrapped below (an op left out would run the inner op on the wrapper's
// state): a new op in model/backend.h fails this until it is wrapped here and counted in model/roofline.c.
_Static_assert(sizeof(Backend) == 72 * sizeof(void *), "a new backend op: wrap it in backend_timed_new");

Backend *backend_timed_new(Backend *inner, const RoofCard *card, int execute) {
    Backend *be = dino_calloc(1, sizeof *be);
    TimedState *s = dino_calloc(1, sizeof *s);
    s->inner = inner, s->card = *card, s->execute = execute, s->prev_op = -1;
    be->name = inner->name;
    be->impl = s;
    be->alloc_act = t_alloc_act;
    be->alloc = t_alloc, be->release = t_release, be->to_device = t_to_device, be->to_host = t_to_host;
    be->copy = t_copy, be->zero = t_zero, be->sync = t_sync, be->destroy = t_destroy;
    be->host_alloc = inner->host_alloc ? t_host_alloc : NULL;
    be->host_free = inner->host_free ? t_host_free : NULL;
    be->upload_async = t_upload_async, be->upload_wait = t_upload_wait;
    be->param_copy_register = t_param_copy_register, be->param_copy_changed = t_param_copy_changed;
    be->download_async = t_download_async, be->download_wait = t_download_wait;
    be->gemm = t_gemm, be->linear_fwd = t_linear_fwd, be->linear_bwd = t_linear_bwd;
    be->linear_gelu_fwd = t_linear_gelu_fwd, be->linear_swiglu_fwd = t_linear_swiglu_fwd;
    be->layernorm_fwd = t_layernorm_fwd, be->layernorm_bwd = t_layernorm_bwd;
    be->gelu_fwd = t_gelu_fwd, be->gelu_bwd = t_gelu_bwd, be->swiglu_fwd = t_swiglu_fwd, be->swiglu_bwd = t_swiglu_bwd;
    be->attention_saved_floats = t_attention_saved_floats;
    be->attention_fwd = t_attention_fwd, be->attention_bwd = t_attention_bwd;
    be->rope_fwd = t_rope_fwd, be->rope_bwd = t_rope_bwd;
    be->im2col = t_im2col, be->tokens_fwd = t_tokens_fwd, be->tokens_bwd = t_tokens_bwd;
    be->gather_rows = t_gather_rows, be->residual_fwd = t_residual_fwd, be->residual_bwd = t_residual_bwd;
    be->residual_layernorm_fwd = t_residual_layernorm_fwd;
    be->layernorm_residual_bwd = t_layernorm_residual_bwd;
    be->scatter_add_rows = t_scatter_add_rows, be->axpy = t_axpy, be->scale = t_scale, be->sum_squares = t_sum_squares;
    be->l2norm_fwd = t_l2norm_fwd, be->l2norm_bwd = t_l2norm_bwd;
    be->weightnorm_fwd = t_weightnorm_fwd, be->weightnorm_bwd = t_weightnorm_bwd;
    be->softmax_center = t_softmax_center, be->col_sum = t_col_sum, be->center_update = t_center_update;
    be->sinkhorn = t_sinkhorn, be->softmax_ce = t_softmax_ce, be->entropy_mean = t_entropy_mean;
    be->koleo = t_koleo, be->kde = t_kde, be->gram_loss = t_gram_loss, be->adamw = t_adamw, be->ema = t_ema;
    be->sum_squares_ss = t_sum_squares_ss, be->update_prepare_ss = t_update_prepare_ss;
    be->clip_scale_ss = t_clip_scale_ss, be->adamw_ss = t_adamw_ss, be->ema_ss = t_ema_ss;
    be->softmax_center_ss = t_softmax_center_ss, be->nonfinite_check_ss = t_nonfinite_check_ss;
    be->softmax_ce_ss = t_softmax_ce_ss, be->gram_loss_ss = t_gram_loss_ss;
    be->revert_if_nonfinite_ss = t_revert_if_nonfinite_ss;
    return be;
}

Backend *backend_timed_inner(Backend *be) { return S(be)->inner; }

void backend_timed_set(Backend *be, int counting, int timing) {
    TimedState *s = S(be);
    s->counting = counting, s->timing = timing;
    s->prev_op = -1;
}

void backend_timed_reset(Backend *be) {
    TimedState *s = S(be);
    memset(s->tally, 0, sizeof s->tally);
    s->prev_op = -1;
}

const RoofTally *backend_timed_tally(const Backend *be) { return ((const TimedState *)be->impl)->tally; }
