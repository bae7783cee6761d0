// A roofline model of the backend's ops: the FLOPs and the device-memory bytes of one call, computed
// from the call's own arguments, for two layouts of the CUDA backend:
//   ROOF_CURRENT  what model/cuda does today: fp32 activations, gradients and weights in memory, GEMMs
//                 on fp32 operands with bf16 tensor-core math (cuBLAS converts inside the kernel), the
//                 bias in the GEMM epilogue (cuBLASLt), attention with the (B,H,T,T) scores in fp32 and
//                 the probabilities in bf16, every op its own kernels, launched one by one;
//   ROOF_TARGET   the layout of the GPU-performance issue: bf16 activations (the residual stream, its
//                 gradient, parameter gradients, logits, targets and losses stay fp32; fp32 master
//                 weights and a bf16 copy written by AdamW), flash attention (nothing T x T in memory,
//                 backward recomputes from the LSE), fused epilogues (bias + activation writing bf16;
//                 LayerScale + drop-path + residual + the next LayerNorm in one kernel; the student's
//                 softmax + cross-entropy + gradient in one pass over the logits), the step as one CUDA
//                 graph (no launch gaps beyond a graph's).
// The predicted time of a call is max(FLOPs / peak, bytes / bandwidth, kernels x launch gap): the
// larger of the compute and memory roofs, and a floor for the small ops that only launch. docs/performance.md
// states every assumption behind the byte counts (each tensor read or written once from device memory
// per pass of a kernel; rows that a kernel re-reads sit in L1/L2).
// The counts are made per call by the timing backend (model/backend_timed.h), so the prediction and the
// measurement cover the very same calls.
#pragma once
#include <stddef.h>

typedef enum { ROOF_CURRENT = 0, ROOF_TARGET = 1, ROOF_NLAYOUTS = 2 } RoofLayout;

// Op families: the rows of bench_step's per-op table.
typedef enum {
    RF_GEMM,        // linear layers (ViT, heads), plain GEMMs
    RF_ATTENTION,   // attention forward and backward (its inner GEMMs included)
    RF_LAYERNORM,
    RF_ACTIVATION,  // GELU, SwiGLU
    RF_ELEMENTWISE, // residual / stochastic depth, gathers and scatters, tokens, im2col, axpy
    RF_HEAD_LOSS,   // L2 / weight norm, teacher targets, softmax cross-entropy, entropy, KoLeo / KDE
    RF_OPTIMIZER,   // clipping (sum of squares, scale), AdamW, EMA
    RF_COPY,        // device-to-device copies and fills
    RF_HOST,        // host <-> device copies that the step waits for (PCIe)
    RF_UPLOAD,      // asynchronous uploads of the next batch (overlapped: not in the step's total)
    RF_COUNT
} RoofFamily;

// Every op of model/backend.h that does work (memory management and sync are not counted).
typedef enum {
    ROP_GEMM, ROP_LINEAR_FWD, ROP_LINEAR_BWD,
    ROP_LAYERNORM_FWD, ROP_LAYERNORM_BWD,
    ROP_GELU_FWD, ROP_GELU_BWD, ROP_SWIGLU_FWD, ROP_SWIGLU_BWD,
    ROP_ATTENTION_FWD, ROP_ATTENTION_BWD, ROP_ROPE_FWD, ROP_ROPE_BWD,
    ROP_IM2COL, ROP_TOKENS_FWD, ROP_TOKENS_BWD, ROP_GATHER_ROWS, ROP_RESIDUAL_FWD, ROP_RESIDUAL_BWD,
    ROP_SCATTER_ADD_ROWS, ROP_AXPY,
    ROP_L2NORM_FWD, ROP_L2NORM_BWD, ROP_WEIGHTNORM_FWD, ROP_WEIGHTNORM_BWD, ROP_SOFTMAX_CENTER, ROP_COL_SUM,
    ROP_CENTER_UPDATE, ROP_SINKHORN, ROP_SOFTMAX_CE, ROP_ENTROPY_MEAN, ROP_KOLEO, ROP_KDE, ROP_GRAM_LOSS,
    ROP_SUM_SQUARES, ROP_SCALE, ROP_ADAMW, ROP_EMA,
    ROP_COPY, ROP_ZERO,
    ROP_TO_DEVICE, ROP_TO_HOST, ROP_UPLOAD_ASYNC, ROP_DOWNLOAD_ASYNC,
    ROP_COUNT
} RoofOp;

const char *roof_op_name(RoofOp op);
RoofFamily roof_op_family(RoofOp op);
const char *roof_family_name(RoofFamily f);
const char *roof_layout_name(RoofLayout l);

// One call's work. flops: matrix-product FLOPs (2 M N K per GEMM, the attention products), the
// tensor-core work that MFU counts; elementwise and reduction arithmetic is left out (bandwidth-bound).
// bytes: device-memory traffic (host traffic for RF_HOST / RF_UPLOAD). kernels: launches.
typedef struct {
    double flops, bytes, kernels;
} RoofCost;

// A card's roofs. peak_tflops: the dense bf16 rate the prediction uses (the measured cuBLAS rate);
// peak_spec_tflops: the datasheet's, for the MFU against the spec.
typedef struct {
    const char *name;
    double peak_spec_tflops, peak_tflops, bw_tbs, host_gbs;
    double launch_us[ROOF_NLAYOUTS]; // per kernel: eager stream launches today, graph replay in the target
} RoofCard;

// "h100" (H100 SXM5 80 GB) or "h200"; 0, or -1 for an unknown name.
int roof_card(const char *name, RoofCard *out);
// max(flops / peak, bytes / bandwidth, kernels x launch gap) in seconds (host bandwidth for RF_HOST/RF_UPLOAD).
double roof_time_s(const RoofCard *c, RoofLayout l, RoofFamily f, RoofCost k);

// ---- the cost of one call, per op (arguments as in model/backend.h) ---------------------------------
// Fusion flags (target layout only; the timing backend sets them from the order of the calls):
//  epilogue: an activation whose input the linear layer just before wrote: computed in that GEMM's
//            epilogue, only its bf16 output is written;
//  after_residual: a LayerNorm of the stream that the residual op just before updated (directly or
//            through one gather of the kept rows): the fused kernel has the row in registers;
//  into_next: a copy / gather that the next op absorbs (copy into the residual's output, gather into
//            the fused LayerNorm): nothing of its own.
RoofCost roof_gemm(RoofLayout l, double M, double N, double K, int beta_nonzero);
RoofCost roof_linear_fwd(RoofLayout l, double rows, double n_in, double n_out, int has_bias);
RoofCost roof_linear_bwd(RoofLayout l, double rows, double n_in, double n_out, int has_din, int has_db);
RoofCost roof_layernorm_fwd(RoofLayout l, double rows, double D, int after_residual);
RoofCost roof_layernorm_bwd(RoofLayout l, double rows, double D);
RoofCost roof_gelu_fwd(RoofLayout l, double n, int epilogue);
RoofCost roof_gelu_bwd(RoofLayout l, double n);
RoofCost roof_swiglu_fwd(RoofLayout l, double rows, double Hd, int epilogue);
RoofCost roof_swiglu_bwd(RoofLayout l, double rows, double Hd);
RoofCost roof_attention_fwd(RoofLayout l, double B, double T, double H, double Dh);
RoofCost roof_attention_bwd(RoofLayout l, double B, double T, double H, double Dh);
// DINOv3's RoPE on the q and k of N patch tokens (in place; the forward and the backward alike)
RoofCost roof_rope(RoofLayout l, double B, double N, double H, double Dh);
// DINOv3's Gram anchoring loss on B images of N patch tokens of width D (forward and backward)
RoofCost roof_gram_loss(RoofLayout l, double B, double N, double D);
RoofCost roof_im2col(RoofLayout l, double B, double C, double Hi, double Wi, double p);
RoofCost roof_tokens_fwd(RoofLayout l, double B, double N, double R, double D);
RoofCost roof_tokens_bwd(RoofLayout l, double B, double N, double R, double D, int has_mask);
RoofCost roof_gather_rows(RoofLayout l, double n, double len, int into_next);
RoofCost roof_residual_fwd(RoofLayout l, double n, double T, double D);
RoofCost roof_residual_bwd(RoofLayout l, double n, double T, double D, int has_dgamma);
RoofCost roof_scatter_add_rows(RoofLayout l, double n, double len);
RoofCost roof_axpy(RoofLayout l, double n);
RoofCost roof_l2norm_fwd(RoofLayout l, double rows, double n);
RoofCost roof_l2norm_bwd(RoofLayout l, double rows, double n);
RoofCost roof_weightnorm_fwd(RoofLayout l, double K, double n);
RoofCost roof_weightnorm_bwd(RoofLayout l, double K, double n);
RoofCost roof_softmax_center(RoofLayout l, double rows, double K);
RoofCost roof_col_sum(RoofLayout l, double rows, double K);
RoofCost roof_center_update(RoofLayout l, double K);
RoofCost roof_sinkhorn(RoofLayout l, double rows, double K, int n_iter);
RoofCost roof_softmax_ce(RoofLayout l, double rows, double K, int has_loss, int has_ds);
RoofCost roof_entropy_mean(RoofLayout l, double rows, double K);
RoofCost roof_koleo(RoofLayout l, double B, double D);
RoofCost roof_kde(RoofLayout l, double B, double D);
RoofCost roof_sum_squares(RoofLayout l, double n);
RoofCost roof_scale(RoofLayout l, double n);
RoofCost roof_adamw(RoofLayout l, double n);
RoofCost roof_ema(RoofLayout l, double n);
RoofCost roof_copy(RoofLayout l, double bytes, int into_next);
RoofCost roof_zero(RoofLayout l, double bytes);
RoofCost roof_host(RoofLayout l, double bytes); // to_device, to_host, upload_async, download_async

// ---- tallies ------------------------------------------------------------------------------------------
typedef struct {
    long calls;
    double flops[ROOF_NLAYOUTS], bytes[ROOF_NLAYOUTS], kernels[ROOF_NLAYOUTS];
    double pred_s[ROOF_NLAYOUTS]; // sum over calls of roof_time_s
    double meas_s;                // measured (the timing backend with timing on)
} RoofTally;

void roof_tally_add(RoofTally *t, const RoofCard *c, RoofFamily f, RoofLayout l, RoofCost k);
// fam[RF_COUNT] = the op tallies op[ROP_COUNT] summed by family (calls, flops, bytes, times).
void roof_family_totals(const RoofTally *op, RoofTally *fam);
// The step's predicted seconds in layout l: every family but RF_UPLOAD (which overlaps the compute).
double roof_step_s(const RoofTally *fam, RoofLayout l);
