// The CPU backend's ops (fp32, OpenBLAS + OpenMP): the numerical reference for every other backend.
// Internal to model/cpu/: the model reaches them only through the Backend table (model/backend.h).
#pragma once
#include "model/backend.h"

// matmul.c
void cpu_gemm(Backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);
void cpu_linear_fwd(Backend *be, float *out, const float *in, const float *W, const float *b, int rows, int n_in, int n_out);
void cpu_linear_bwd(Backend *be, float *din, float *dW, float *db, const float *dout, const float *in,
                    const float *W, int rows, int n_in, int n_out);
// norm.c
void cpu_layernorm_fwd(Backend *be, float *out, float *mean, float *rstd, const float *x, const float *w,
                       const float *b, int rows, int D, float eps);
void cpu_layernorm_bwd(Backend *be, float *dx_acc, float *dw, float *db, const float *dout, const float *x,
                       const float *mean, const float *rstd, const float *w, int rows, int D);
// activation.c
void cpu_gelu_fwd(Backend *be, float *out, const float *x, size_t n);
void cpu_gelu_bwd(Backend *be, float *dx, const float *dout, const float *x, size_t n);
void cpu_swiglu_fwd(Backend *be, float *out, const float *in, int rows, int Hd);
void cpu_swiglu_bwd(Backend *be, float *din, const float *dout, const float *in, int rows, int Hd);
void cpu_linear_gelu_fwd(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b, int rows,
                         int n_in, int n_out);
void cpu_linear_swiglu_fwd(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b,
                           int rows, int n_in, int Hd);
// attention.c
size_t cpu_attention_saved_floats(Backend *be, int B, int T, int H, int Dh);
void cpu_attention_fwd(Backend *be, float *out, float *saved, const float *qkv, int B, int T, int H, int Dh);
void cpu_attention_bwd(Backend *be, float *dqkv, const float *dout, const float *qkv, const float *saved, int B,
                       int T, int H, int Dh);
// rope.c
void cpu_rope_fwd(Backend *be, float *qkv, const float *sin, const float *cos, int B, int T, int N, int H, int Dh);
void cpu_rope_bwd(Backend *be, float *dqkv, const float *sin, const float *cos, int B, int T, int N, int H, int Dh);
// tokens.c
void cpu_im2col(Backend *be, float *cols, const float *img, int B, int C, int Hi, int Wi, int p);
void cpu_tokens_fwd(Backend *be, float *x, const float *patch, const float *cls, const float *reg, const float *pos,
                    const float *mask_token, const uint8_t *mask, int B, int N, int R, int D);
void cpu_tokens_bwd(Backend *be, float *dpatch, float *dcls, float *dreg, float *dpos, float *dmask_token,
                    const float *dx, const uint8_t *mask, int B, int N, int R, int D);
void cpu_gather_rows(Backend *be, float *out, const float *in, const int *idx, int n, size_t len);
void cpu_residual_fwd(Backend *be, float *x, const float *br, const float *gamma, const int *idx, int n, int T,
                      int D, float scale);
void cpu_residual_bwd(Backend *be, float *dbr, float *dgamma, const float *dx, const float *br, const float *gamma,
                      const int *idx, int n, int T, int D, float scale);
void cpu_scatter_add_rows(Backend *be, float *x, const float *in, const int *idx, int n, size_t len);
// residual_norm.c
void cpu_residual_layernorm_fwd(Backend *be, float *x_out, float *out, float *mean, float *rstd, float *xs,
                                const float *x_in, const float *br, const float *gamma, const int *idx, int n,
                                float scale, const float *w, const float *b, const int *ln_idx, int ln_n, int B,
                                int T, int D, float eps);
void cpu_layernorm_residual_bwd(Backend *be, float *dx, float *dw, float *db, float *dbr, float *dgamma,
                                const float *dout, const float *x_ln, const float *mean, const float *rstd,
                                const float *w, const int *ln_idx, int ln_n, const float *br, const float *gamma,
                                const int *idx, int n, float scale, int B, int T, int D);
// elementwise.c
void cpu_axpy(Backend *be, float *y, float alpha, const float *x, size_t n);
void cpu_scale(Backend *be, float *x, float alpha, size_t n);
double cpu_sum_squares(Backend *be, const float *x, size_t n);
// head_ops.c
void cpu_l2norm_fwd(Backend *be, float *out, float *norm, const float *x, int rows, int n, float eps);
void cpu_l2norm_bwd(Backend *be, float *dx, const float *dout, const float *x, const float *norm, int rows, int n,
                    float eps);
void cpu_weightnorm_fwd(Backend *be, float *W, float *vnorm, const float *g, const float *v, int K, int n);
void cpu_weightnorm_bwd(Backend *be, float *dg, float *dv, const float *dW, const float *g, const float *v,
                        const float *vnorm, int K, int n);
// loss_ops.c
void cpu_softmax_center(Backend *be, float *P, const float *z, const float *center, int rows, int K, float temp);
void cpu_col_sum(Backend *be, float *sum, const float *z, int rows, int K);
void cpu_center_update(Backend *be, float *center, const float *sum, int K, float scale, float momentum);
void cpu_sinkhorn(Backend *be, Collective *coll, float *P, const float *z, int rows, int K, float temp, int n_iter,
                  float n_global);
void cpu_softmax_ce(Backend *be, float *loss, float *ds, const float *s, const float *t, const float *w, int rows,
                    int t_rows, int K, float temp, float alpha);
void cpu_entropy_mean(Backend *be, float *out, const float *P, int rows, int K);
void cpu_koleo(Backend *be, float *loss, float *dx_acc, const float *x, int B, int D, float alpha);
void cpu_kde(Backend *be, float *loss, float *dx_acc, const float *x, int B, int D, float kappa, float alpha);
// gram_ops.c
void cpu_gram_loss(Backend *be, float *loss, float *ds_acc, const float *s, const float *t, int B, int N, int D,
                   int normalize, int neg_mode, float alpha);
// optim_ops.c
void cpu_adamw(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float wd, float beta1,
               float beta2, float eps, long step);
void cpu_ema(Backend *be, float *t, const float *s, size_t n, float momentum);
void cpu_sum_squares_ss(Backend *be, const float *x, size_t n, int group, DinoStepScalars *ss);
void cpu_update_prepare_ss(Backend *be, int groups, double max_norm, float beta1, float beta2, DinoStepScalars *ss);
void cpu_clip_scale_ss(Backend *be, float *x, size_t n, int group, const DinoStepScalars *ss);
void cpu_adamw_ss(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr_mult, float wd_mult,
                  int last_layer, float beta1, float beta2, float eps, const DinoStepScalars *ss);
void cpu_ema_ss(Backend *be, float *t, const float *s, size_t n, const DinoStepScalars *ss);
void cpu_softmax_center_ss(Backend *be, float *P, const float *z, const float *center, int rows, int K,
                           const DinoStepScalars *ss);
void cpu_softmax_ce_ss(Backend *be, float *loss, float *ds, const float *s, const float *t, const float *w, int rows,
                       int t_rows, int K, float temp, float weight, float div, const DinoStepScalars *ss);
void cpu_gram_loss_ss(Backend *be, float *loss, float *ds_acc, const float *s, const float *t, int B, int N, int D,
                      int normalize, int neg_mode, float alpha, const DinoStepScalars *ss);
void cpu_nonfinite_check_ss(Backend *be, const float *x, size_t n, DinoStepScalars *ss);
void cpu_revert_if_nonfinite_ss(Backend *be, float *dst, const float *saved, size_t n, const DinoStepScalars *ss);

// Runs OpenBLAS single-threaded inside our own OpenMP parallel regions (many small GEMMs at once),
// multi-threaded otherwise.
void cpu_blas_threads_begin_parallel(void);
void cpu_blas_threads_end_parallel(void);
