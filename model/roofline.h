// A roofline model of the backend's ops: the FLOPs and the device-memory bytes of one call, computed
// from the call's own arguments, for three layouts of the CUDA backend:
//   ROOF_SESSION3 the layout of session 3 (before issue #12 item 1): every activation, gradient and
//                 weight fp32 in memory, GEMMs on fp32 operands with bf16 tensor-core math (cuBLAS
//                 converts inside the kernel), the bias in the GEMM epilogue (cuBLASLt), attention with
//                 the (B,H,T,T) scores in fp32 and the probabilities in bf16, every op its own kernels,
//                 launched one by one. Counted as the current layout's kernels with every argument fp32
//                 and the batched-GEMM attention;
//   ROOF_CURRENT  what model/cuda does now, argument by argument: the element type of each activation
//                 buffer as the backend stores it (bf16 ViT branch activations and head hidden layers,
//                 docs/cuda-backend.md "Activation dtypes"; the timing backend learns it from alloc_act),
//                 the bf16-operand GEMM path (weights read from the bf16 copy that AdamW and EMA write,
//                 model/cuda/weight_copy.cu; a bias on a bf16 output through an fp32 accumulator), the
//                 flash attention where the backend runs it (nothing T x T in memory), otherwise the same kernels as session 3, launched eagerly;
//   ROOF_TARGET   the layout of the GPU-performance issue: bf16 activations (the residual stream, its
//                 gradient, parameter gradients, logits, targets and losses stay fp32; fp32 master
//                 weights and a bf16 copy written by AdamW), flash attention (nothing T x T in memory,
//                 backward recomputes from the LSE), fused epilogues (bias + activation writing bf16;
//                 LayerScale + drop-path + residual + the next LayerNorm in one kernel; the student's
//                 softmax + cross-entropy + gradient in one pass over the logits), the step as one CUDA
//                 graph (no launch gaps beyond a graph's).
// The predicted time of a call is max(FLOPs / peak, bytes / bandwidth, FP64 instructions / FP64 rate,
// kernels x launch gap): the larger of the compute and memory roofs, and a floor for the small ops that
// only launch. docs/performance.md states every assumption behind the byte counts (each tensor read or
// written once from device memory per pass of a kernel; rows that a kernel re-reads sit in L1/L2).
// The counts are made per call by the timing backend (model/backend_timed.h), so the prediction and the
// measurement cover the very same calls.
//
// Adding an op (a fused kernel, a new backend entry): a ROP_ value and its row in OPS (model/roofline.c),
// a roof_<op>(l, ..., e_...) function below with its three counts, and its wrapper in
// model/backend_timed.c (COSTS(roof_<op>, ..., E(ptr)...)). An op that session 3 did not have counts, in
// ROOF_SESSION3, as the session-3 ops it replaces (roof_add of their counts: a fused linear + GELU is
// roof_linear_fwd + roof_gelu_fwd there), so the session-3 column stays the session-3 step; ROOF_CURRENT
// counts the new kernel's passes with the element sizes it is given; ROOF_TARGET the design.
#pragma once
#include <stddef.h>

typedef enum { ROOF_SESSION3 = 0, ROOF_CURRENT = 1, ROOF_TARGET = 2, ROOF_NLAYOUTS = 3 } RoofLayout;

// Op families: the rows of bench_step's per-op table.
typedef enum {
    RF_GEMM,        // linear layers (ViT, heads; fc1 + GELU, w12 + SwiGLU fused), plain GEMMs
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
    ROP_GEMM, ROP_LINEAR_FWD, ROP_LINEAR_BWD, ROP_LINEAR_GELU_FWD, ROP_LINEAR_SWIGLU_FWD,
    ROP_LAYERNORM_FWD, ROP_LAYERNORM_BWD,
    ROP_GELU_FWD, ROP_GELU_BWD, ROP_SWIGLU_FWD, ROP_SWIGLU_BWD,
    ROP_ATTENTION_FWD, ROP_ATTENTION_BWD, ROP_ROPE_FWD, ROP_ROPE_BWD,
    ROP_IM2COL, ROP_TOKENS_FWD, ROP_TOKENS_BWD, ROP_GATHER_ROWS, ROP_RESIDUAL_FWD, ROP_RESIDUAL_BWD,
    ROP_RESIDUAL_LAYERNORM_FWD, ROP_LAYERNORM_RESIDUAL_BWD,
    ROP_SCATTER_ADD_ROWS, ROP_AXPY,
    ROP_L2NORM_FWD, ROP_L2NORM_BWD, ROP_WEIGHTNORM_FWD, ROP_WEIGHTNORM_BWD, ROP_SOFTMAX_CENTER, ROP_COL_SUM,
    ROP_CENTER_UPDATE, ROP_SINKHORN, ROP_SOFTMAX_CE, ROP_ENTROPY_MEAN, ROP_KOLEO, ROP_KDE, ROP_GRAM_LOSS,
    ROP_SUM_SQUARES, ROP_SCALE, ROP_ADAMW, ROP_EMA, ROP_STEP_SCALARS,
    ROP_COPY, ROP_ZERO, ROP_PARAM_COPY_CHANGED,
    ROP_TO_DEVICE, ROP_TO_HOST, ROP_UPLOAD_ASYNC, ROP_DOWNLOAD_ASYNC,
    ROP_COUNT
} RoofOp;

const char *roof_op_name(RoofOp op);
RoofFamily roof_op_family(RoofOp op);
const char *roof_family_name(RoofFamily f);
const char *roof_layout_name(RoofLayout l);

// One call's work. flops: matrix-product FLOPs (2 M N K per GEMM, the attention products), the
// tensor-core work that MFU counts; elementwise and reduction arithmetic is left out (bandwidth-bound).
// bytes: device-memory traffic (host traffic for RF_HOST / RF_UPLOAD). kernels: launches. fp64:
// double-precision instructions on the CUDA cores (an FMA is one; exp or log in double ~20 each), the
// roof of the loss kernels that sum and exponentiate in double as the CPU reference does.
typedef struct {
    double flops, bytes, kernels, fp64;
} RoofCost;

// A card's roofs. peak_tflops: the dense bf16 rate the prediction uses (the measured cuBLAS rate);
// peak_spec_tflops: the datasheet's, for the MFU against the spec. fp64_tips: tera double-precision
// instructions per second on the CUDA cores (FMA = one instruction; not the FP64 tensor-core rate).
typedef struct {
    const char *name;
    double peak_spec_tflops, peak_tflops, bw_tbs, host_gbs, fp64_tips;
    double launch_us[ROOF_NLAYOUTS]; // per kernel: eager stream launches (session 3, now), graph replay (target)
} RoofCard;

// "h100" (H100 SXM5 80 GB) or "h200"; 0, or -1 for an unknown name.
int roof_card(const char *name, RoofCard *out);
// max(flops / peak, bytes / bandwidth, fp64 / fp64 rate, kernels x launch gap) in seconds (host bandwidth
// for RF_HOST/RF_UPLOAD).
double roof_time_s(const RoofCard *c, RoofLayout l, RoofFamily f, RoofCost k);
RoofCost roof_add(RoofCost a, RoofCost b); // two kernels' counts as one op's (a fused op's session-3 count)

// ---- the cost of one call, per op (arguments as in model/backend.h) ---------------------------------
// Element sizes e_<arg>: the bytes per element (4 fp32, 2 bf16) of that activation argument as the backend
// stores it (the timing backend knows them from alloc_act). Only ROOF_CURRENT reads them: session 3 was
// fp32 throughout, the target assigns its own types by role. flash: the backend runs the fused attention
// (model/cuda/attention_flash.cu) for this call; ROOF_CURRENT only (session 3 had the batched GEMMs).
// Fusion flags (target layout only; the timing backend sets them from the order of the calls):
//  epilogue: an activation whose input the linear layer just before wrote: computed in that GEMM's
//            epilogue, only its bf16 output is written;
//  after_residual: a LayerNorm of the stream that the residual op just before updated (directly or
//            through one gather of the kept rows): the fused kernel has the row in registers;
//  into_next: a copy / gather that the next op absorbs (copy into the residual's output, gather into
//            the fused LayerNorm): nothing of its own.
RoofCost roof_gemm(RoofLayout l, double M, double N, double K, int beta_nonzero);
RoofCost roof_linear_fwd(RoofLayout l, double rows, double n_in, double n_out, int has_bias, int e_out, int e_in);
RoofCost roof_linear_bwd(RoofLayout l, double rows, double n_in, double n_out, int has_din, int has_db, int e_din,
                         int e_dout, int e_in);
// linear_fwd + GELU in one op (the MLP's fc1): the GEMM (part 0) and one epilogue pass writing pre and act
// (part 1). Two kernels, one after the other, a compute-bound and a bandwidth-bound one: each part has its
// own roofline time and the op's is their sum (the timing backend tallies both parts).
RoofCost roof_linear_gelu_fwd(RoofLayout l, double rows, double n_in, double n_out, int has_bias, int part, int e_pre,
                              int e_act, int e_in);
// w12 + SwiGLU in one op: the GEMM to 2*Hd outputs (part 0) and one epilogue pass writing pre and act (part 1).
RoofCost roof_linear_swiglu_fwd(RoofLayout l, double rows, double n_in, double Hd, int has_bias, int part, int e_pre,
                                int e_act, int e_in);
RoofCost roof_layernorm_fwd(RoofLayout l, double rows, double D, int after_residual, int e_out);
RoofCost roof_layernorm_bwd(RoofLayout l, double rows, double D, int e_dout);
RoofCost roof_gelu_fwd(RoofLayout l, double n, int epilogue, int e_out, int e_x);
RoofCost roof_gelu_bwd(RoofLayout l, double n, int e_dx, int e_dout, int e_x);
RoofCost roof_swiglu_fwd(RoofLayout l, double rows, double Hd, int epilogue, int e_out, int e_in);
RoofCost roof_swiglu_bwd(RoofLayout l, double rows, double Hd, int e_din, int e_dout, int e_in);
RoofCost roof_attention_fwd(RoofLayout l, double B, double T, double H, double Dh, int flash, int e_out, int e_qkv);
RoofCost roof_attention_bwd(RoofLayout l, double B, double T, double H, double Dh, int flash, int e_dqkv, int e_dout,
                            int e_qkv);
// DINOv3's RoPE on the q and k of N patch tokens (in place; the forward and the backward alike)
RoofCost roof_rope(RoofLayout l, double B, double N, double H, double Dh, int e_qkv);
// DINOv3's Gram anchoring loss on B images of N patch tokens of width D (forward and backward)
RoofCost roof_gram_loss(RoofLayout l, double B, double N, double D);
RoofCost roof_im2col(RoofLayout l, double B, double C, double Hi, double Wi, double p);
RoofCost roof_tokens_fwd(RoofLayout l, double B, double N, double R, double D);
RoofCost roof_tokens_bwd(RoofLayout l, double B, double N, double R, double D, int has_mask);
RoofCost roof_gather_rows(RoofLayout l, double n, double len, int into_next);
RoofCost roof_residual_fwd(RoofLayout l, double n, double T, double D, int e_br);
RoofCost roof_residual_bwd(RoofLayout l, double n, double T, double D, int has_dgamma, int e_dbr, int e_br);
// residual_layernorm_fwd over B images of T rows of D: the residual on n of them, the LayerNorm on ln_n;
// copies: x_out is not x_in (the untouched rows are copied); gathered: the LayerNorm rows go to xs too.
// Session 3: the four ops it replaces (copy, residual_fwd, gather_rows, layernorm_fwd); now and target: one kernel.
RoofCost roof_residual_layernorm_fwd(RoofLayout l, double B, double n, double ln_n, double T, double D, int copies,
                                     int gathered, int e_br, int e_out);
// layernorm_residual_bwd: the LayerNorm backward on ln_n images (scattered: a row subset, through a
// scratch), the residual backward on n. Session 3: the ops it replaces; now and target: one kernel + the colsums.
RoofCost roof_layernorm_residual_bwd(RoofLayout l, double n, double ln_n, double T, double D, int scattered,
                                     int has_dgamma, int e_dout, int e_dbr, int e_br);
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
// The per-step scalar block's small ops (update_prepare_ss, nonfinite_check_ss, revert_if_nonfinite_ss):
// n floats read (and written, for a revert) in one launch.
RoofCost roof_step_scalars(RoofLayout l, double n);
// bytes: as the model passes them (4 per element); e: the buffer's element size (the backend converts)
RoofCost roof_copy(RoofLayout l, double bytes, int e, int into_next);
RoofCost roof_zero(RoofLayout l, double bytes, int e);
// the bf16 weight copy of n parameters written outside the backend, converted again (fp32 read, bf16 written)
RoofCost roof_param_copy_changed(RoofLayout l, double n);
RoofCost roof_host(RoofLayout l, double bytes); // to_device, to_host, upload_async, download_async

// ---- tallies ------------------------------------------------------------------------------------------
typedef struct {
    long calls;
    double flops[ROOF_NLAYOUTS], bytes[ROOF_NLAYOUTS], kernels[ROOF_NLAYOUTS], fp64[ROOF_NLAYOUTS];
    double pred_s[ROOF_NLAYOUTS]; // sum over calls of roof_time_s
    double meas_s;                // measured (the timing backend with timing on)
} RoofTally;

void roof_tally_add(RoofTally *t, const RoofCard *c, RoofFamily f, RoofLayout l, RoofCost k);
// fam[RF_COUNT] = the op tallies op[ROP_COUNT] summed by family (calls, flops, bytes, times).
void roof_family_totals(const RoofTally *op, RoofTally *fam);
// The step's predicted seconds in layout l: every family but RF_UPLOAD (which overlaps the compute).
double roof_step_s(const RoofTally *fam, RoofLayout l);
