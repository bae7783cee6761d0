// The backend interface: every numeric op the model needs, with one signature for every backend.
// The ViT, heads and losses (model/*.c) are written once against this table; `cpu` (model/cpu/,
// fp32 OpenBLAS + OpenMP) is the numerical reference, `cuda` (model/cuda/) the fast path.
//
// Conventions
//  - Tensors are plain pointers into memory that the backend owns (be->alloc). Row-major, C order.
//    The model never dereferences them; only the backend does.
//  - Dimension names: B images, T tokens per image, N patch tokens, D width, H heads, Dh head dim,
//    K prototypes, rows = B*T for token-wise ops.
//  - Backward ops ACCUMULATE into parameter gradients (dW, db, dgamma ...: +=) so that several crop
//    groups and micro-batches add up in one gradient buffer. Input gradients are OVERWRITTEN unless the
//    argument is named `dx_acc` (then +=).
//  - `idx` arrays (row subsets for stochastic depth, masked tokens) live in backend memory too.
//  - Activation dtypes (docs/cuda-backend.md, "Activation dtypes"): buffers from alloc_act carry an
//    element type that the backend records per allocation. The model asks for DINO_BF16 by purpose
//    (the ViT's branch intermediates and their gradients); the cpu backend stores fp32 regardless (the
//    reference; backend_cpu_emulate_bf16 rounds them as a GPU would store them), the cuda backend stores
//    bf16 (with its default bf16 GEMMs). The patch embedding's columns, output and gradient and the
//    heads' hidden layers are bf16 too; from the bottleneck on fp32. Such a pointer is a handle to the whole buffer: the model
//    passes it to ops as is, never offset into it (the cuda backend refuses an interior pointer) nor
//    copies it with byte counts of its own. Every other buffer, and every op argument not listed as
//    accepting one, is fp32. The ops that accept bf16 activations: linear_fwd (out, in),
//    linear_gelu_fwd / linear_swiglu_fwd (pre, act, in), linear_bwd (din, dout, in), layernorm_fwd
//    (out), layernorm_bwd (dout), gelu/swiglu (all), attention_fwd/bwd (out, qkv, dout, dqkv),
//    rope_fwd/bwd (qkv, dqkv), residual_fwd (br), residual_bwd (dbr, br),
//    residual_layernorm_fwd (br, out), layernorm_residual_bwd (dout, dbr, br),
//    im2col (cols), tokens_fwd (patch), tokens_bwd (dpatch);
//    to_host/to_device/zero with the buffer's byte count as fp32 (4 per element) convert.
//  - Per-step scalars (model/step_scalars.h, docs/cuda-backend.md "CUDA graphs"): the ops named `*_ss`
//    read the values that change from step to step (lr, weight decay, momentum, temperature, clip
//    coefficients, AdamW's bias corrections, the NaN flag) from a DinoStepScalars block in backend memory,
//    passed as their LAST argument `ss`, never as by-value arguments: their kernels' arguments are then the
//    same at every step. The update ops among them (adamw_ss, ema_ss, revert_if_nonfinite_ss and what
//    they guard) do nothing / restore when ss->out.nonfinite is set.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "model/collective.h"
#include "model/step_scalars.h"

typedef struct Backend Backend;

// Element type of an activation buffer (alloc_act).
typedef enum { DINO_F32 = 0, DINO_BF16 = 1 } DinoDtype;

struct Backend {
    const char *name;
    void *impl; // backend private state

    // ---- memory -------------------------------------------------------------------------------
    void *(*alloc)(Backend *be, size_t bytes); // zero-filled, 64-byte aligned
    void (*release)(Backend *be, void *p);
    // An activation buffer of n elements that the model wants stored as `dt` (zero-filled, released with
    // release). The backend records the type it stores (fp32 on cpu, bf16 on cuda with bf16 GEMMs) and
    // sets *bytes (may be NULL) to the memory it holds.
    float *(*alloc_act)(Backend *be, size_t n, DinoDtype dt, size_t *bytes);
    void (*to_device)(Backend *be, void *dst, const void *src_host, size_t bytes);
    void (*to_host)(Backend *be, void *dst_host, const void *src, size_t bytes);
    void (*copy)(Backend *be, void *dst, const void *src, size_t bytes);
    void (*zero)(Backend *be, void *p, size_t bytes);
    void (*sync)(Backend *be); // returns when every op and upload issued so far is done
    // ---- the GEMMs' bf16 weight copy (docs/cuda-backend.md, "bf16 weight copy") -------------------
    // P[n] (a buffer from alloc) holds parameters that linear layers read as weights. A backend whose GEMMs
    // read bf16 keeps a bf16 copy of it that they read instead of converting W per call; every write into
    // P through the backend (to_device, copy, zero, axpy, scale, adamw, ema) keeps the copy current (adamw
    // and ema write it in the same kernel); no other op may write into P. Returns the bytes the copy holds
    // (0: none kept, as on cpu); it is released with P.
    size_t (*param_copy_register)(Backend *be, float *P, size_t n);
    // p[n] (anywhere in device memory) was written by something other than the backend's ops (NCCL or an
    // all-gather into device memory): the copy of whatever part of a registered buffer it covers is
    // refreshed. Every such write must be followed by this call before the next op reads the weights.
    void (*param_copy_changed)(Backend *be, const float *p, size_t n);
    void (*destroy)(Backend *be); // releases what the backend holds (streams, handles); NULL: nothing

    // ---- asynchronous uploads (the next batch travels while this one computes) ------------------
    // Host memory for upload sources: page-locked on GPUs (a copy from it can overlap compute), zero-filled.
    void *(*host_alloc)(Backend *be, size_t bytes);
    void (*host_free)(Backend *be, void *p);
    // Starts dst <- src_host (from host_alloc) on a copy queue and returns at once with a ticket. Ops on
    // the compute queue do not see dst until upload_wait(ticket); src_host must stay unchanged and dst
    // unused until then (tickets are reused after 16 uploads).
    int (*upload_async)(Backend *be, void *dst, const void *src_host, size_t bytes);
    // Every op issued after this call runs after the upload `ticket` (the host does not wait).
    void (*upload_wait)(Backend *be, int ticket);

    // ---- asynchronous read-backs (a step's statistics come back without the host waiting) --------------
    // dst_host[0..bytes) <- src (fp32 backend memory) after every op issued so far; returns at once. dst_host
    // must come from host_alloc (a GPU writes it by DMA, from inside a graph too) and holds the bytes only
    // after download_wait.
    void (*download_async)(Backend *be, void *dst_host, const void *src, size_t bytes);
    // Returns when every download_async issued so far has landed (and the ops before them have run).
    void (*download_wait)(Backend *be);

    // ---- dense algebra ------------------------------------------------------------------------
    // C[M,N] = alpha * op(A) op(B) + beta * C; op(A) is [M,K], op(B) is [K,N]; row-major with leading
    // dimensions lda, ldb, ldc.
    void (*gemm)(Backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A,
                 int lda, const float *B, int ldb, float beta, float *C, int ldc);
    // out[rows,n_out] = in[rows,n_in] W[n_out,n_in]^T + b[n_out] (b may be NULL)
    void (*linear_fwd)(Backend *be, float *out, const float *in, const float *W, const float *b, int rows,
                       int n_in, int n_out);
    // din[rows,n_in] = dout W (overwritten; skipped when din is NULL); dW[n_out,n_in] += dout^T in;
    // db[n_out] += sum_rows dout (skipped when db is NULL)
    void (*linear_bwd)(Backend *be, float *din, float *dW, float *db, const float *dout, const float *in,
                       const float *W, int rows, int n_in, int n_out);
    // The MLP's fc1 and its GELU in one call: pre[rows,n_out] = in W^T + b (b may be NULL), then
    // act = GELU(pre) (exact erf) of pre AS STORED (bf16 on cuda: the backward reads pre). Exactly
    // linear_fwd(pre) then gelu_fwd(act, pre) (the cpu backend's reference is that composition); the
    // cuda backend writes pre and act from one epilogue kernel after the GEMM (docs/cuda-backend.md,
    // "Fused epilogues"). pre and act accept bf16 activations, as linear_fwd's out and gelu's.
    void (*linear_gelu_fwd)(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b,
                            int rows, int n_in, int n_out);
    // The SwiGLU FFN's w12 and its gate in one call: pre[rows, 2*Hd] = in W^T + b (W [2*Hd, n_in], b [2*Hd] or
    // NULL), then act[rows, Hd] = swiglu of pre AS STORED (as swiglu_fwd). Exactly linear_fwd(pre) then
    // swiglu_fwd(act, pre) (the cpu reference); on cuda one epilogue kernel writes pre and act.
    void (*linear_swiglu_fwd)(Backend *be, float *pre, float *act, const float *in, const float *W, const float *b,
                              int rows, int n_in, int Hd);

    // ---- normalization and activations --------------------------------------------------------
    // out = (x - mean) * rstd * w + b per row of length D; saves mean[rows], rstd[rows]
    void (*layernorm_fwd)(Backend *be, float *out, float *mean, float *rstd, const float *x, const float *w,
                          const float *b, int rows, int D, float eps);
    // dx_acc += d/dx; dw += ; db +=
    void (*layernorm_bwd)(Backend *be, float *dx_acc, float *dw, float *db, const float *dout, const float *x,
                          const float *mean, const float *rstd, const float *w, int rows, int D);
    void (*gelu_fwd)(Backend *be, float *out, const float *x, size_t n); // exact erf GELU
    void (*gelu_bwd)(Backend *be, float *dx, const float *dout, const float *x, size_t n);
    // in[rows, 2*Hd] = [x1 | x2] per row; out[rows, Hd] = silu(x1) * x2
    void (*swiglu_fwd)(Backend *be, float *out, const float *in, int rows, int Hd);
    void (*swiglu_bwd)(Backend *be, float *din, const float *dout, const float *in, int rows, int Hd);

    // ---- attention ----------------------------------------------------------------------------
    // Non-causal multi-head self-attention of each image over its own T tokens.
    // qkv[B,T,3*D] laid out [q heads | k heads | v heads] (as torch's qkv Linear then
    // reshape(B,T,3,H,Dh)); out[B,T,D] (heads concatenated). `saved` holds what backward needs; its
    // size in floats is attention_saved_floats(B,T,H,Dh) (backend-private layout: the cpu the
    // probabilities, the cuda backend's flash path the log-sum-exp and O).
    size_t (*attention_saved_floats)(Backend *be, int B, int T, int H, int Dh);
    void (*attention_fwd)(Backend *be, float *out, float *saved, const float *qkv, int B, int T, int H, int Dh);
    void (*attention_bwd)(Backend *be, float *dqkv, const float *dout, const float *qkv, const float *saved,
                          int B, int T, int H, int Dh);

    // ---- rotary position embedding (DINOv3's axial RoPE, model/rope.h) ------------------------
    // In place on the q and k parts of qkv[B,T,3*D] (layout as attention) for the last N tokens of
    // each image (the patches; CLS and storage tokens untouched), every head h, with x the Dh values
    // of q (or k) of token T-N+n:   x <- x * cos[n] + rotate_half(x) * sin[n],
    // rotate_half([x1 | x2]) = [-x2 | x1] (halves of Dh/2), as the official rope_apply.
    // sin, cos: [N, Dh] tables, the same for every image and head.
    void (*rope_fwd)(Backend *be, float *qkv, const float *sin, const float *cos, int B, int T, int N, int H, int Dh);
    // Its transpose, in place on the q and k parts of dqkv[B,T,3*D] (the v part and the first T-N
    // tokens untouched): g <- g * cos + rotate_half^T(g * sin), rotate_half^T([y1 | y2]) = [y2 | -y1].
    void (*rope_bwd)(Backend *be, float *dqkv, const float *sin, const float *cos, int B, int T, int N, int H, int Dh);

    // ---- ViT plumbing -------------------------------------------------------------------------
    // cols[B*N, C*p*p] from img[B,C,Hi,Wi] (N = (Hi/p)*(Wi/p), patch-major, column order c,ky,kx as
    // a torch Conv2d weight [D,C,p,p] flattened)
    void (*im2col)(Backend *be, float *cols, const float *img, int B, int C, int Hi, int Wi, int p);
    // x[B,T,D], T = 1+R+N: x[b,0] = cls + pos[0]; x[b,1..R] = reg; x[b,1+R+n] = patch'[b,n] + pos[1+n]
    // where patch' = mask_token at masked positions (mask[b*N+n] != 0), else patch.
    // mask may be NULL; reg may be NULL when R = 0.
    void (*tokens_fwd)(Backend *be, float *x, const float *patch, const float *cls, const float *reg,
                       const float *pos, const float *mask_token, const uint8_t *mask, int B, int N, int R, int D);
    // dpatch[B,N,D] overwritten (0 at masked positions); dcls, dreg, dpos, dmask_token accumulated.
    void (*tokens_bwd)(Backend *be, float *dpatch, float *dcls, float *dreg, float *dpos, float *dmask_token,
                       const float *dx, const uint8_t *mask, int B, int N, int R, int D);
    // out[i,:] = in[idx[i],:] for i < n (rows of length len)
    void (*gather_rows)(Backend *be, float *out, const float *in, const int *idx, int n, size_t len);
    // Stochastic-depth residual with LayerScale: for i < n, x[idx[i]] += scale * gamma (.) br[i]
    // (rows of T*D; gamma[D] broadcast over tokens; gamma NULL means 1). idx NULL means idx[i] = i.
    void (*residual_fwd)(Backend *be, float *x, const float *br, const float *gamma, const int *idx, int n,
                         int T, int D, float scale);
    // dbr[i] = scale * gamma (.) dx[idx[i]]; dgamma += scale * sum br[i] (.) dx[idx[i]]
    void (*residual_bwd)(Backend *be, float *dbr, float *dgamma, const float *dx, const float *br,
                         const float *gamma, const int *idx, int n, int T, int D, float scale);
    // LayerScale + drop-path scale + residual add + the next LayerNorm in one pass (docs/cuda-backend.md,
    // "Residual + LayerNorm"), over a stream of B images of T rows of D:
    //   x_out = x_in, then x_out[idx[i]] += scale * gamma (.) br[i] for i < n     (copy + residual_fwd;
    //           x_out may be x_in; idx NULL means all n = B images in order);
    //   the LayerNorm reads x_out's rows of the images ln_idx[j], j < ln_n (ln_idx NULL: all ln_n = B), copies
    //   them to xs (the gathered branch input; required with ln_idx, else may be NULL) and writes
    //   out[ln_n*T, D] = LayerNorm(those rows) with w, b, eps, saving mean and rstd per row.
    // Bit for bit copy + residual_fwd + gather_rows (ln_idx) + layernorm_fwd: the LayerNorm reads the fp32
    // stream values the residual add produced. br and out may be bf16 activations.
    void (*residual_layernorm_fwd)(Backend *be, float *x_out, float *out, float *mean, float *rstd, float *xs,
                                   const float *x_in, const float *br, const float *gamma, const int *idx, int n,
                                   float scale, const float *w, const float *b, const int *ln_idx, int ln_n, int B,
                                   int T, int D, float eps);
    // Its backward counterpart at the same junction: LayerNorm backward accumulating into the stream
    // gradient, then the residual_bwd of the sublayer before it (docs/cuda-backend.md, "Residual +
    // LayerNorm"). Over B images of T rows of D:
    //   dx[ln_idx[j]] += d LayerNorm(x_ln[j]) / dx given dout[j] (j < ln_n; ln_idx NULL: all ln_n = B
    //   images, in place; else through a zeroed scratch and scatter_add_rows); dw += ; db +=
    //   (layernorm_bwd; x_ln: the LayerNorm's input rows, mean and rstd its statistics)
    //   then dbr[i] = scale * gamma (.) dx[idx[i]]; dgamma += scale * sum br[i] (.) dx[idx[i]] (residual_bwd;
    //   dgamma may be NULL).
    // Bit for bit those ops in that order. dout, dbr and br may be bf16 activations.
    void (*layernorm_residual_bwd)(Backend *be, float *dx, float *dw, float *db, float *dbr, float *dgamma,
                                   const float *dout, const float *x_ln, const float *mean, const float *rstd,
                                   const float *w, const int *ln_idx, int ln_n, const float *br, const float *gamma,
                                   const int *idx, int n, float scale, int B, int T, int D);
    // x[idx[i],:] += in[i,:] (rows of length len); idx NULL means identity
    void (*scatter_add_rows)(Backend *be, float *x, const float *in, const int *idx, int n, size_t len);

    // ---- elementwise and reductions ---------------------------------------------------------------
    void (*axpy)(Backend *be, float *y, float alpha, const float *x, size_t n); // y += alpha x
    void (*scale)(Backend *be, float *x, float alpha, size_t n);               // x *= alpha
    double (*sum_squares)(Backend *be, const float *x, size_t n);              // deterministic

    // ==== DINOv2 objective: heads, losses, optimizer (model/cpu/head_ops.c, loss_ops.c) ============
    // Row L2 normalization as torch F.normalize: out = x / max(||x||, eps) per row of n floats;
    // saves norm[rows] = ||x||.
    void (*l2norm_fwd)(Backend *be, float *out, float *norm, const float *x, int rows, int n, float eps);
    // dx (overwritten) = (dout - x^ (x^ . dout)) / ||x|| where ||x|| > eps, else dout / eps.
    void (*l2norm_bwd)(Backend *be, float *dx, const float *dout, const float *x, const float *norm, int rows, int n,
                       float eps);
    // Weight normalization (torch weight_norm, dim 0): W[K,n] = g[k] * v[k,:] / ||v[k,:]||; saves vnorm[K].
    void (*weightnorm_fwd)(Backend *be, float *W, float *vnorm, const float *g, const float *v, int K, int n);
    // From dW[K,n]: dg[k] += dW[k].v[k] / ||v[k]||; dv[k] += g[k]/||v[k]|| (dW[k] - (dW[k].v^[k]) v^[k]).
    void (*weightnorm_bwd)(Backend *be, float *dg, float *dv, const float *dW, const float *g, const float *v,
                           const float *vnorm, int K, int n);
    // Teacher targets by softmax centering: P[rows,K] = softmax((z - center) / temp) per row;
    // center[K] may be NULL (0).
    void (*softmax_center)(Backend *be, float *P, const float *z, const float *center, int rows, int K, float temp);
    // sum[K] = sum over rows of z[rows,K] (overwritten; fixed order, deterministic).
    void (*col_sum)(Backend *be, float *sum, const float *z, int rows, int K);
    // Running centre: center = center * momentum + (sum * scale) * (1 - momentum)   (the reference's order).
    void (*center_update)(Backend *be, float *center, const float *sum, int K, float scale, float momentum);
    // Sinkhorn-Knopp teacher targets (the reference's sinkhorn_knopp_teacher, n_iter iterations):
    // Q = exp(z/temp)^T (K x rows), Q /= sum(Q); n_iter x { Q /= row sums (over all ranks); Q /= K;
    // Q /= column sums (this rank); Q /= n_global }; P = n_global Q^T, P[rows,K] (rows sum to 1).
    // n_global: samples over all ranks. Cross-rank sums go through `coll` (NULL = single process).
    // Overflow safety: each prototype k is shifted by the same s_k on every rank (the mean over ranks of
    // the local max of z[:,k]/temp), which the first prototype normalization cancels exactly. (Subtracting
    // a per-sample max is not equivalent: the prototype sums would weight samples differently.)
    void (*sinkhorn)(Backend *be, Collective *coll, float *P, const float *z, int rows, int K, float temp,
                     int n_iter, float n_global);
    // Fused softmax cross-entropy against soft targets, with its gradient (ds may be s: in place). For
    // r < rows, with t_r = t[r % t_rows] and q = softmax(s[r] / temp):
    //   loss[r] = -sum_k t_r[k] log q[k]                                  (loss[rows], may be NULL)
    //   ds[r]   = alpha * w[r] * (q * sum_k t_r[k] - t_r) / temp          (overwritten; NULL = skip)
    // w[rows] may be NULL (1).
    void (*softmax_ce)(Backend *be, float *loss, float *ds, const float *s, const float *t, const float *w, int rows,
                       int t_rows, int K, float temp, float alpha);
    // Mean entropy of probability rows: out[0] = mean_r -sum_k P log P (collapse guard).
    void (*entropy_mean)(Backend *be, float *out, const float *P, int rows, int K);
    // KoLeo (the reference's KoLeoLoss) on x[B,D], fused forward and backward: x^ = x / max(||x||, 1e-8),
    // nn(i) = argmax_{j != i} x^_i . x^_j, d_i = ||x^_i - x^_nn(i) + 1e-8||, loss[0] = -mean_i log(d_i + 1e-8);
    // dx_acc += alpha * dloss/dx (skipped when dx_acc is NULL). Needs B >= 2.
    void (*koleo)(Backend *be, float *loss, float *dx_acc, const float *x, int B, int D, float alpha);
    // KDE regularizer (von Mises-Fisher kernel) on x[B,D], fused forward and backward:
    // x^ = x / max(||x||, 1e-8), S = x^ x^^T, loss[0] = mean_i log( (1/B) sum_j exp(kappa (S_ij - 1)) )
    // (self term included; <= 0, 0 at full collapse: minimizing it lowers the density, spreading x^);
    // dx_acc += alpha * dloss/dx (skipped when NULL).
    void (*kde)(Backend *be, float *loss, float *dx_acc, const float *x, int B, int D, float kappa, float alpha);
    // Gram anchoring loss (DINOv3's GramLoss, img_level, all tokens), fused forward and backward, on the
    // student's patch tokens s[B,N,D] against the Gram teacher's t[B,N,D]: per image, with rows
    // x^ = x / max(||x||, 1e-12) when `normalize` (else x), S = s^ s^^T and T = t^ t^^T [N,N];
    // neg_mode 1 (remove_neg): S and T clamped at 0; 2 (remove_only_teacher_neg): T clamped at 0 (the
    // reference then zeroes S where S < 0 and T < 0, which the clamped T never is); 0: neither.
    // loss[0] = mean over B*N*N of (S - T)^2; ds_acc += alpha * dloss/ds (skipped when NULL); t gets none.
    void (*gram_loss)(Backend *be, float *loss, float *ds_acc, const float *s, const float *t, int B, int N, int D,
                      int normalize, int neg_mode, float alpha);
    // AdamW step on n floats (torch.optim.AdamW order): p *= 1 - lr*wd; m = b1 m + (1-b1) g;
    // v = b2 v + (1-b2) g^2; p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps). step >= 1.
    void (*adamw)(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float wd, float beta1,
                  float beta2, float eps, long step);
    // EMA teacher: t = t * momentum + s * (1 - momentum)
    void (*ema)(Backend *be, float *t, const float *s, size_t n, float momentum);

    // ==== the step's scalars in backend memory (model/step_scalars.h; optim_ops.c / optim_ops.cu) ======
    // ss->out.grad_ss[group] += sum_squares(x, n) (the same deterministic sum as sum_squares, no read-back).
    void (*sum_squares_ss)(Backend *be, const float *x, size_t n, int group, DinoStepScalars *ss);
    // Before the update: for g < groups, out.clip_coef[g] = clip_coef(sqrt(out.grad_ss[g]), max_norm) in
    // double as train/optim.c's clip_coef (1 when max_norm <= 0); state.adam_step = in.adam_step_set when
    // that is >= 0 (also on a skipped step); then, unless out.nonfinite: state.adam_step += 1, out.bias1/2 =
    // 1 - beta1/2^state.adam_step (from in.bias1/2, see there).
    void (*update_prepare_ss)(Backend *be, int groups, double max_norm, float beta1, float beta2, DinoStepScalars *ss);
    // x *= (float)out.clip_coef[group] when that is < 1 (else untouched).
    void (*clip_scale_ss)(Backend *be, float *x, size_t n, int group, const DinoStepScalars *ss);
    // adamw with lr = (float)((last_layer ? in.last_layer_lr : in.lr) * lr_mult), wd = (float)(in.wd * wd_mult)
    // and out.bias1/2 as the bias corrections; nothing when out.nonfinite.
    void (*adamw_ss)(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr_mult, float wd_mult,
                     int last_layer, float beta1, float beta2, float eps, const DinoStepScalars *ss);
    // ema with momentum (float)in.momentum; nothing when out.nonfinite.
    void (*ema_ss)(Backend *be, float *t, const float *s, size_t n, const DinoStepScalars *ss);
    // softmax_center with temp (float)in.teacher_temp.
    void (*softmax_center_ss)(Backend *be, float *P, const float *z, const float *center, int rows, int K,
                              const DinoStepScalars *ss);
    // softmax_ce with alpha = (float)(weight * in.dino_local_weight) / div, in float as the host computes it
    // (the weight moves with dino.local_loss_weight_schedule: read from the block, not an argument).
    void (*softmax_ce_ss)(Backend *be, float *loss, float *ds, const float *s, const float *t, const float *w, int rows,
                          int t_rows, int K, float temp, float weight, float div, const DinoStepScalars *ss);
    // gram_loss with alpha (float)(alpha * in.gram_weight) (gram.loss_weight_schedule).
    void (*gram_loss_ss)(Backend *be, float *loss, float *ds_acc, const float *s, const float *t, int B, int N, int D,
                         int normalize, int neg_mode, float alpha, const DinoStepScalars *ss);
    // out.nonfinite = 1 when any of x[n] is NaN or infinite (else unchanged).
    void (*nonfinite_check_ss)(Backend *be, const float *x, size_t n, DinoStepScalars *ss);
    // dst[n] = saved[n] when out.nonfinite (else untouched): undoes what the step changed before its loss
    // was known (the teacher centres).
    void (*revert_if_nonfinite_ss)(Backend *be, float *dst, const float *saved, size_t n, const DinoStepScalars *ss);
};

#ifdef __cplusplus
extern "C" {
#endif
Backend *backend_cpu_new(void);
// The bf16-emulating switch of a cpu backend (model/cpu/bf16_emulation.c): from now on its DINO_BF16
// activation buffers hold values rounded to bf16 (to nearest even) after every op that writes them,
// exactly where the cuda backend stores bf16, so the CPU predicts the GPU's numerics. Wraps the ops
// the table holds at the call (a test may have replaced some first). Returns be.
Backend *backend_cpu_emulate_bf16(Backend *be);
// The bf16 value nearest x (ties to even; NaN stays NaN, as __float2bfloat16), as a float.
float dino_bf16_round(float x);
// x[0] + ... + x[n-1] summed in the order of a CUDA warp's reduction (each of 32 lanes over a stride-32
// slice, then an xor butterfly): what the emulation computes where a cuda kernel reduces in one warp.
float dino_warp_order_sum(const float *x, int n);
// Frees any backend (calls its destroy hook first).
void backend_free(Backend *be);
#ifdef __cplusplus
}
#endif
