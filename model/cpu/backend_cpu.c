// The CPU backend: host memory and the table of fp32 ops.
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "model/cpu/cpu_ops.h"

static void *cpu_alloc(Backend *be, size_t bytes) {
    size_t n = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, n ? n : 64);
    if (!p) DINO_DIE("cpu backend: out of memory allocating %zu bytes", bytes);
    memset(p, 0, n);
    return p;
}
static void cpu_release(Backend *be, void *p) { free(p); }
// fp32 storage whatever the model asks: the reference (backend_cpu_emulate_bf16 rounds on top)
static float *cpu_alloc_act(Backend *be, size_t n, DinoDtype dt, size_t *bytes) {
    if (bytes) *bytes = sizeof(float) * n;
    return be->alloc(be, sizeof(float) * n);
}
static void cpu_memcpy(Backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes);
}
static void cpu_zero(Backend *be, void *p, size_t bytes) {
    if (bytes) memset(p, 0, bytes);
}
static void cpu_sync(Backend *be) {}
static void cpu_host_free(Backend *be, void *p) { free(p); }
static int cpu_upload_async(Backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes); // one queue: done when it returns
    return 0;
}
static void cpu_upload_wait(Backend *be, int ticket) {}
// The cpu GEMMs read fp32 weights (the bf16 emulation rounds them per GEMM, as the copy would hold them).
static size_t cpu_param_copy_register(Backend *be, float *P, size_t n) { return 0; }
static void cpu_param_copy_changed(Backend *be, const float *p, size_t n) {}
// Synchronous CPU: the read-back is a copy, done when it returns.
static void cpu_download_async(Backend *be, void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static void cpu_download_wait(Backend *be) {}

Backend *backend_cpu_new(void) {
    Backend *be = dino_calloc(1, sizeof *be);
    be->name = "cpu";
    be->alloc = cpu_alloc;
    be->release = cpu_release;
    be->alloc_act = cpu_alloc_act;
    be->to_device = cpu_memcpy;
    be->to_host = cpu_memcpy;
    be->copy = cpu_memcpy;
    be->zero = cpu_zero;
    be->sync = cpu_sync;
    be->host_alloc = cpu_alloc;
    be->host_free = cpu_host_free;
    be->upload_async = cpu_upload_async;
    be->upload_wait = cpu_upload_wait;
    be->param_copy_register = cpu_param_copy_register;
    be->param_copy_changed = cpu_param_copy_changed;
    be->download_async = cpu_download_async;
    be->download_wait = cpu_download_wait;
    be->gemm = cpu_gemm;
    be->linear_fwd = cpu_linear_fwd;
    be->linear_bwd = cpu_linear_bwd;
    be->linear_gelu_fwd = cpu_linear_gelu_fwd;
    be->linear_swiglu_fwd = cpu_linear_swiglu_fwd;
    be->layernorm_fwd = cpu_layernorm_fwd;
    be->layernorm_bwd = cpu_layernorm_bwd;
    be->gelu_fwd = cpu_gelu_fwd;
    be->gelu_bwd = cpu_gelu_bwd;
    be->swiglu_fwd = cpu_swiglu_fwd;
    be->swiglu_bwd = cpu_swiglu_bwd;
    be->attention_saved_floats = cpu_attention_saved_floats;
    be->attention_fwd = cpu_attention_fwd;
    be->attention_bwd = cpu_attention_bwd;
    be->rope_fwd = cpu_rope_fwd;
    be->rope_bwd = cpu_rope_bwd;
    be->im2col = cpu_im2col;
    be->tokens_fwd = cpu_tokens_fwd;
    be->tokens_bwd = cpu_tokens_bwd;
    be->gather_rows = cpu_gather_rows;
    be->residual_fwd = cpu_residual_fwd;
    be->residual_bwd = cpu_residual_bwd;
    be->residual_layernorm_fwd = cpu_residual_layernorm_fwd;
    be->layernorm_residual_bwd = cpu_layernorm_residual_bwd;
    be->scatter_add_rows = cpu_scatter_add_rows;
    be->axpy = cpu_axpy;
    be->scale = cpu_scale;
    be->sum_squares = cpu_sum_squares;
    // DINOv2 objective
    be->l2norm_fwd = cpu_l2norm_fwd;
    be->l2norm_bwd = cpu_l2norm_bwd;
    be->weightnorm_fwd = cpu_weightnorm_fwd;
    be->weightnorm_bwd = cpu_weightnorm_bwd;
    be->softmax_center = cpu_softmax_center;
    be->col_sum = cpu_col_sum;
    be->center_update = cpu_center_update;
    be->sinkhorn = cpu_sinkhorn;
    be->softmax_ce = cpu_softmax_ce;
    be->entropy_mean = cpu_entropy_mean;
    be->koleo = cpu_koleo;
    be->kde = cpu_kde;
    be->gram_loss = cpu_gram_loss;
    be->adamw = cpu_adamw;
    be->ema = cpu_ema;
    be->sum_squares_ss = cpu_sum_squares_ss;
    be->update_prepare_ss = cpu_update_prepare_ss;
    be->clip_scale_ss = cpu_clip_scale_ss;
    be->adamw_ss = cpu_adamw_ss;
    be->ema_ss = cpu_ema_ss;
    be->softmax_center_ss = cpu_softmax_center_ss;
    be->softmax_ce_ss = cpu_softmax_ce_ss;
    be->gram_loss_ss = cpu_gram_loss_ss;
    be->nonfinite_check_ss = cpu_nonfinite_check_ss;
    be->revert_if_nonfinite_ss = cpu_revert_if_nonfinite_ss;
    return be;
}

void backend_free(Backend *be) {
    if (!be) return;
    if (be->destroy) be->destroy(be);
    free(be);
}
