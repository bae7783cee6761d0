// The roofline model's byte and FLOP counts, op by op (model/roofline.h). Each count names the passes of
// the kernels it models: for ROOF_CURRENT the kernels of model/cuda/*.cu as they are (cited per op), with
// the element sizes of the call's arguments; ROOF_SESSION3 the same count with every argument fp32 and the
// batched-GEMM attention (what session 3's kernels were); ROOF_TARGET the kernels of the GPU-layout issue. A tensor counts once per kernel pass that streams it;
// re-reads of a row a warp or block already holds (LayerNorm's three loops over x, the softmax's over S)
// are taken as L1/L2 hits.
#include "model/roofline.h"

#include <string.h>

static const struct {
    const char *name;
    RoofFamily family;
} OPS[ROP_COUNT] = {
    [ROP_GEMM] = {"gemm", RF_GEMM},
    [ROP_LINEAR_FWD] = {"linear_fwd", RF_GEMM},
    [ROP_LINEAR_BWD] = {"linear_bwd", RF_GEMM},
    [ROP_LINEAR_GELU_FWD] = {"linear_gelu_fwd", RF_GEMM},
    [ROP_LINEAR_SWIGLU_FWD] = {"linear_swiglu_fwd", RF_GEMM},
    [ROP_LAYERNORM_FWD] = {"layernorm_fwd", RF_LAYERNORM},
    [ROP_LAYERNORM_BWD] = {"layernorm_bwd", RF_LAYERNORM},
    [ROP_GELU_FWD] = {"gelu_fwd", RF_ACTIVATION},
    [ROP_GELU_BWD] = {"gelu_bwd", RF_ACTIVATION},
    [ROP_SWIGLU_FWD] = {"swiglu_fwd", RF_ACTIVATION},
    [ROP_SWIGLU_BWD] = {"swiglu_bwd", RF_ACTIVATION},
    [ROP_ATTENTION_FWD] = {"attention_fwd", RF_ATTENTION},
    [ROP_ATTENTION_BWD] = {"attention_bwd", RF_ATTENTION},
    [ROP_ROPE_FWD] = {"rope_fwd", RF_ATTENTION},
    [ROP_ROPE_BWD] = {"rope_bwd", RF_ATTENTION},
    [ROP_IM2COL] = {"im2col", RF_ELEMENTWISE},
    [ROP_TOKENS_FWD] = {"tokens_fwd", RF_ELEMENTWISE},
    [ROP_TOKENS_BWD] = {"tokens_bwd", RF_ELEMENTWISE},
    [ROP_GATHER_ROWS] = {"gather_rows", RF_ELEMENTWISE},
    [ROP_RESIDUAL_FWD] = {"residual_fwd", RF_ELEMENTWISE},
    [ROP_RESIDUAL_BWD] = {"residual_bwd", RF_ELEMENTWISE},
    [ROP_RESIDUAL_LAYERNORM_FWD] = {"residual_layernorm_fwd", RF_LAYERNORM},
    [ROP_LAYERNORM_RESIDUAL_BWD] = {"layernorm_residual_bwd", RF_LAYERNORM},
    [ROP_SCATTER_ADD_ROWS] = {"scatter_add_rows", RF_ELEMENTWISE},
    [ROP_AXPY] = {"axpy", RF_ELEMENTWISE},
    [ROP_L2NORM_FWD] = {"l2norm_fwd", RF_HEAD_LOSS},
    [ROP_L2NORM_BWD] = {"l2norm_bwd", RF_HEAD_LOSS},
    [ROP_WEIGHTNORM_FWD] = {"weightnorm_fwd", RF_HEAD_LOSS},
    [ROP_WEIGHTNORM_BWD] = {"weightnorm_bwd", RF_HEAD_LOSS},
    [ROP_SOFTMAX_CENTER] = {"softmax_center", RF_HEAD_LOSS},
    [ROP_COL_SUM] = {"col_sum", RF_HEAD_LOSS},
    [ROP_CENTER_UPDATE] = {"center_update", RF_HEAD_LOSS},
    [ROP_SINKHORN] = {"sinkhorn", RF_HEAD_LOSS},
    [ROP_SOFTMAX_CE] = {"softmax_ce", RF_HEAD_LOSS},
    [ROP_ENTROPY_MEAN] = {"entropy_mean", RF_HEAD_LOSS},
    [ROP_KOLEO] = {"koleo", RF_HEAD_LOSS},
    [ROP_KDE] = {"kde", RF_HEAD_LOSS},
    [ROP_GRAM_LOSS] = {"gram_loss", RF_HEAD_LOSS},
    [ROP_SUM_SQUARES] = {"sum_squares", RF_OPTIMIZER},
    [ROP_SCALE] = {"scale", RF_OPTIMIZER},
    [ROP_ADAMW] = {"adamw", RF_OPTIMIZER},
    [ROP_EMA] = {"ema", RF_OPTIMIZER},
    [ROP_STEP_SCALARS] = {"step_scalars", RF_OPTIMIZER},
    [ROP_COPY] = {"copy", RF_COPY},
    [ROP_ZERO] = {"zero", RF_COPY},
    [ROP_PARAM_COPY_CHANGED] = {"param_copy_changed", RF_COPY},
    [ROP_TO_DEVICE] = {"to_device", RF_HOST},
    [ROP_TO_HOST] = {"to_host", RF_HOST},
    [ROP_UPLOAD_ASYNC] = {"upload_async", RF_UPLOAD},
    [ROP_DOWNLOAD_ASYNC] = {"download_async", RF_HOST},
};

static const char *FAMILIES[RF_COUNT] = {
    [RF_GEMM] = "GEMM / linear",
    [RF_ATTENTION] = "attention",
    [RF_LAYERNORM] = "LayerNorm",
    [RF_ACTIVATION] = "activations (GELU/SwiGLU)",
    [RF_ELEMENTWISE] = "elementwise / residual / tokens",
    [RF_HEAD_LOSS] = "head norms + targets + losses",
    [RF_OPTIMIZER] = "optimizer (clip, AdamW, EMA)",
    [RF_COPY] = "device copies and fills",
    [RF_HOST] = "host <-> device (waited for)",
    [RF_UPLOAD] = "next-batch upload (overlapped)",
};

const char *roof_op_name(RoofOp op) { return op < ROP_COUNT ? OPS[op].name : "?"; }
RoofFamily roof_op_family(RoofOp op) { return OPS[op].family; }
const char *roof_family_name(RoofFamily f) { return f < RF_COUNT ? FAMILIES[f] : "?"; }
const char *roof_layout_name(RoofLayout l) {
    return l == ROOF_SESSION3 ? "session-3" : l == ROOF_CURRENT ? "current" : "target";
}

int roof_card(const char *name, RoofCard *out) {
    // H100 SXM5: 989 TFLOP/s dense bf16 (datasheet), ~790 measured with cuBLAS (the figure),
    // 3.35 TB/s HBM3. H200: the same GH100 compute, 4.8 TB/s HBM3e. Host: pinned PCIe copies at ~25
    // GB/s (pageable copies are slower). Launch gaps: ~4 us per kernel issued eagerly from the host
    // (cuBLAS calls cost more), ~1 us between the kernel nodes of a replayed graph. FP64 on the CUDA
    // cores: 132 SMs x 64 lanes x 1.98 GHz = 16.7 T instructions/s (the datasheet's 33.5 TFLOP/s counts
    // an FMA as 2; its 67 TFLOP/s is the FP64 tensor cores, which exp and log do not use).
    if (strcmp(name, "h100") == 0) {
        *out = (RoofCard){"H100 SXM (989 TFLOP/s bf16 spec, 790 measured, 3.35 TB/s)", 989.4, 790, 3.35, 25, 16.7,
                          {4.0, 4.0, 1.0}};
        return 0;
    }
    if (strcmp(name, "h200") == 0) {
        *out = (RoofCard){"H200 (989 TFLOP/s bf16 spec, 790 assumed measured, 4.8 TB/s)", 989.4, 790, 4.8, 25, 16.7,
                          {4.0, 4.0, 1.0}};
        return 0;
    }
    return -1;
}

double roof_time_s(const RoofCard *c, RoofLayout l, RoofFamily f, RoofCost k) {
    const double bw = (f == RF_HOST || f == RF_UPLOAD) ? c->host_gbs * 1e9 : c->bw_tbs * 1e12;
    double t = k.flops / (c->peak_tflops * 1e12);
    if (k.bytes / bw > t) t = k.bytes / bw;
    if (k.fp64 / (c->fp64_tips * 1e12) > t) t = k.fp64 / (c->fp64_tips * 1e12);
    if (k.kernels * c->launch_us[l] * 1e-6 > t) t = k.kernels * c->launch_us[l] * 1e-6;
    return t;
}

static RoofCost cost(double flops, double bytes, double kernels) { return (RoofCost){flops, bytes, kernels, 0}; }
RoofCost roof_add(RoofCost a, RoofCost b) {
    return (RoofCost){a.flops + b.flops, a.bytes + b.bytes, a.kernels + b.kernels, a.fp64 + b.fp64};
}
// The element sizes the current layout's formulas read: fp32 for session 3, as given now. Every
// dtype-aware count below is written once for ROOF_CURRENT; session 3 is that count with 4-byte elements.
#define FP32_IN_SESSION3(...)                                                                       \
    do {                                                                                            \
        if (l == ROOF_SESSION3) {                                                                   \
            int *e_[] = {__VA_ARGS__};                                                              \
            for (size_t i_ = 0; i_ < sizeof e_ / sizeof e_[0]; i_++) *e_[i_] = 4;                    \
        }                                                                                           \
    } while (0)
#define CUR (l != ROOF_TARGET) // session 3 and now: the same kernels (where a count takes no element size)

// ---- dense algebra: cuBLAS / cuBLASLt on fp32 operands today (matmul.cu) --------------------------------
RoofCost roof_gemm(RoofLayout l, double M, double N, double K, int beta_nonzero) {
    (void)l; // the position-embedding resampling: fp32 parameters in both layouts
    return cost(2 * M * N * K, 4 * (M * K + K * N + M * N * (beta_nonzero ? 2 : 1)), 1);
}

// A linear layer without a bias is the heads' prototype layer (every other linear has one): its
// input (the normalized bottleneck) and its output (the logits) are fp32 roles in the target.
// Now (matmul.cu): all-fp32 arguments take session 3's path (cuBLASLt, the bias in the epilogue, fp32
// operands converted inside cuBLAS). A bf16 argument takes linear_fwd_bf16: W read from the bf16 weight
// copy (weight_copy.cu; before it, converted into scratch per call), an fp32 input converted into scratch,
// the GEMM on bf16 operands; a bias on a bf16 output through an fp32 accumulator (written, read by
// bias_to_act_kernel, bf16 written); a bias on an fp32 output broadcast first, the GEMM adding (beta 1).
RoofCost roof_linear_fwd(RoofLayout l, double rows, double n_in, double n_out, int has_bias, int e_out, int e_in) {
    const double f = 2 * rows * n_in * n_out, bias = has_bias ? 4 * n_out : 0;
    const double ri = rows * n_in, io = n_in * n_out, ro = rows * n_out;
    if (l == ROOF_TARGET) {
        if (!has_bias) return cost(f, 4 * ri + 2 * io + 4 * ro, 1);
        return cost(f, 2 * (ri + io + ro) + bias, 1);
    }
    FP32_IN_SESSION3(&e_out, &e_in);
    if (e_out == 4 && e_in == 4) return cost(f, 4 * (ri + io + ro) + bias, 1); // cuBLASLt bias epilogue
    // W from the bf16 weight copy (model/cuda/weight_copy.cu: no conversion), an fp32 input converted into scratch
    double b = 2 * (ri + io) + (e_in == 4 ? 6 * ri : 0), k = 1 + (e_in == 4);
    if (has_bias) b += (e_out == 2 ? 10 : 12) * ro + bias, k += 1;
    else b += e_out * ro;
    return cost(f, b, k);
}

// fc1 + GELU (matmul.cu cuda_linear_gelu_fwd), parts: the GEMM (0) and the pass after it (1). Session 3,
// and now with fp32 buffers or without a bias: the two ops as they are (linear_fwd, then gelu_fwd). Now with
// bf16 buffers and a bias: the bf16 GEMM accumulates into an fp32 buffer, then ONE epilogue pass
// (bias_gelu_kernel) reads it and the bias and writes pre and act in bf16 (2 kernels); without a bias the
// GEMM stores pre in bf16 itself, the GELU pass reads it and writes act. The target (the design):
// the bias and the GELU in the GEMM's own epilogue, pre and act written in bf16 from the accumulator
// registers (no fp32 round trip, one kernel): exactly the unfused pair's target (linear_fwd, then a GELU
// found in its epilogue), so the target column does not depend on which of the two the model calls.
RoofCost roof_linear_gelu_fwd(RoofLayout l, double rows, double n_in, double n_out, int has_bias, int part, int e_pre,
                              int e_act, int e_in) {
    const double ro = rows * n_out;
    if (l == ROOF_TARGET)
        return part == 0 ? cost(2 * rows * n_in * n_out, 2 * (rows * n_in + n_in * n_out + ro) + (has_bias ? 4 * n_out : 0), 1)
                         : roof_gelu_fwd(l, ro, 1, 2, 2);
    FP32_IN_SESSION3(&e_pre, &e_act, &e_in);
    if (e_pre == 4 || !has_bias)
        return part == 0 ? roof_linear_fwd(l, rows, n_in, n_out, has_bias, e_pre, e_in) : roof_gelu_fwd(l, ro, 0, e_act, e_pre);
    if (part == 0) // bf16 W (the weight copy), the input as stored; the fp32 accumulator written
        return cost(2 * rows * n_in * n_out, e_in * rows * n_in + 2 * n_in * n_out + 4 * ro, 1);
    return cost(0, 4 * ro + 4 * n_out + 2 * ro + 2 * ro, 1);
}

// w12 + SwiGLU (matmul.cu cuda_linear_swiglu_fwd), the same passes over pre[rows, 2 Hd]; act is [rows, Hd].
// The target likewise: the bias and SwiGLU in the GEMM's epilogue (the unfused pair's target).
RoofCost roof_linear_swiglu_fwd(RoofLayout l, double rows, double n_in, double Hd, int has_bias, int part, int e_pre,
                                int e_act, int e_in) {
    const double rp = 2 * rows * Hd, ra = rows * Hd;
    if (l == ROOF_TARGET)
        return part == 0 ? cost(2 * rows * n_in * 2 * Hd, 2 * (rows * n_in + n_in * 2 * Hd + rp) + (has_bias ? 8 * Hd : 0), 1)
                         : roof_swiglu_fwd(l, rows, Hd, 1, 2, 2);
    FP32_IN_SESSION3(&e_pre, &e_act, &e_in);
    if (e_pre == 4 || !has_bias)
        return part == 0 ? roof_linear_fwd(l, rows, n_in, 2 * Hd, has_bias, e_pre, e_in)
                         : roof_swiglu_fwd(l, rows, Hd, 0, e_act, e_pre);
    if (part == 0)
        return cost(2 * rows * n_in * 2 * Hd, e_in * rows * n_in + 2 * n_in * 2 * Hd + 4 * rp, 1);
    return cost(0, 4 * rp + 8 * Hd + 2 * rp + 2 * ra, 1);
}

// Now: all fp32: din = dout W (beta 0); dW += dout^T in (beta 1: read and written); db: colsum_add (2
// kernels). A bf16 argument: db from dout as stored; fp32 dout / in converted into scratch; W from the
// bf16 weight copy (for din); the two GEMMs on bf16 operands, din written as stored, dW fp32 read and written.
RoofCost roof_linear_bwd(RoofLayout l, double rows, double n_in, double n_out, int has_din, int has_db, int e_din,
                         int e_dout, int e_in) {
    const double ri = rows * n_in, ro = rows * n_out, io = n_in * n_out;
    const double f = 2 * rows * n_in * n_out * (has_din ? 2 : 1);
    if (l == ROOF_TARGET) {
        if (!has_db && has_din) // the prototype layer: fp32 dlogits and input, bf16 W, fp32 dW and din
            return cost(f, (4 * ro + 2 * io + 4 * ri) + (4 * ro + 4 * ri + 8 * io), 2);
        // bf16 dout, in, W and din; fp32 dW read and written; db in the dW GEMM's epilogue (cuBLASLt BGRADB)
        double b = (2 * ro + 2 * ri + 8 * io) + (has_din ? 2 * (ro + io + ri) : 0) + (has_db ? 8 * n_out : 0);
        return cost(f, b, 1 + has_din);
    }
    FP32_IN_SESSION3(&e_din, &e_dout, &e_in);
    if (e_din == 4 && e_dout == 4 && e_in == 4) {
        double b = 4 * (ro + ri + 2 * io) + (has_din ? 4 * (ro + io + ri) : 0) + (has_db ? 4 * ro + 8 * n_out : 0);
        return cost(f, b, 1 + has_din + (has_db ? 2 : 0));
    }
    double b = (has_db ? e_dout * ro + 8 * n_out : 0) + (e_dout == 4 ? 6 * ro : 0) + (e_in == 4 ? 6 * ri : 0);
    b += 2 * (ro + ri) + 8 * io;                                 // dW GEMM
    if (has_din) b += 2 * (ro + io) + e_din * ri;                // din GEMM, W from the bf16 weight copy
    return cost(f, b, (has_db ? 2 : 0) + (e_dout == 4) + (e_in == 4) + 1 + has_din);
}

// ---- LayerNorm (norm.cu): one warp per row ---------------------------------------------------------------
// x (the fp32 stream or gathered rows) read, out written as stored
RoofCost roof_layernorm_fwd(RoofLayout l, double rows, double D, int after_residual, int e_out) {
    const double stats = 8 * rows, params = 8 * D;
    if (l == ROOF_TARGET) {
        if (after_residual) return cost(0, 2 * rows * D + stats + params, 0); // in the residual's kernel: write bf16
        return cost(0, 6 * rows * D + stats + params, 1);                     // read the fp32 stream, write bf16
    }
    FP32_IN_SESSION3(&e_out);
    return cost(0, (4 + e_out) * rows * D + stats + params, 1);
}

RoofCost roof_layernorm_bwd(RoofLayout l, double rows, double D, int e_dout) {
    // dx kernel: dout, x, dx read and written; dw colsum: dout, x; db colsum: dout (2 kernels each)
    if (l == ROOF_TARGET) e_dout = 2; // an activation gradient
    FP32_IN_SESSION3(&e_dout);
    const double e = e_dout;
    return cost(0, rows * D * ((e + 4 + 8) + (e + 4) + e) + 16 * rows + 16 * D, 5);
}

// ---- activations (activation.cu): one elementwise kernel, each tensor once as stored --------------------------
RoofCost roof_gelu_fwd(RoofLayout l, double n, int epilogue, int e_out, int e_x) {
    if (l == ROOF_TARGET) return epilogue ? cost(0, 2 * n, 0) : cost(0, 4 * n, 1);
    FP32_IN_SESSION3(&e_out, &e_x);
    return cost(0, (e_out + e_x) * n, 1);
}
RoofCost roof_gelu_bwd(RoofLayout l, double n, int e_dx, int e_dout, int e_x) {
    if (l == ROOF_TARGET) return cost(0, 6 * n, 1);
    FP32_IN_SESSION3(&e_dx, &e_dout, &e_x);
    return cost(0, (e_dx + e_dout + e_x) * n, 1);
}
RoofCost roof_swiglu_fwd(RoofLayout l, double rows, double Hd, int epilogue, int e_out, int e_in) {
    const double n = rows * Hd;
    if (l == ROOF_TARGET) return epilogue ? cost(0, 2 * n, 0) : cost(0, 6 * n, 1);
    FP32_IN_SESSION3(&e_out, &e_in);
    return cost(0, (2 * e_in + e_out) * n, 1);
}
RoofCost roof_swiglu_bwd(RoofLayout l, double rows, double Hd, int e_din, int e_dout, int e_in) {
    if (l == ROOF_TARGET) return cost(0, 10 * rows * Hd, 1);
    FP32_IN_SESSION3(&e_din, &e_dout, &e_in);
    return cost(0, (2 * e_din + e_dout + 2 * e_in) * rows * Hd, 1);
}

// ---- attention (attention.cu: batched GEMMs; attention_flash.cu: fused) ----------------------------------------
// Batched GEMMs, forward: S = QK^T (q, k read; fp32 S written), softmax (S read, exponentials written
// back, bf16 P written), V to bf16 when qkv is fp32 (read, written), P V (bf16 P, V read; out written); 2
// pointer-array kernels. Flash forward (now): one kernel, q, k, v read once (a head's K/V tiles re-read
// per query tile from L2), out written, the saved LSE (fp32) and O (bf16).
// Target: flash forward (FA2): qkv read once in bf16, O in bf16 and the LSE in fp32 written.
RoofCost roof_attention_fwd(RoofLayout l, double B, double T, double H, double Dh, int flash, int e_out, int e_qkv) {
    const double D = H * Dh, btd = B * T * D, bht = B * H * T, f = 4 * B * T * T * D;
    if (l == ROOF_TARGET) return cost(f, 8 * btd + 4 * bht, 1);
    FP32_IN_SESSION3(&e_out, &e_qkv);
    if (l == ROOF_SESSION3) flash = 0;
    if (flash) return cost(f, (3 * e_qkv + e_out + 2) * btd + 4 * bht, 1);
    return cost(f, (2 * e_qkv + (e_qkv == 4 ? 6 : 0) + 2 + e_out) * btd + 16 * bht * T, e_qkv == 4 ? 6 : 5);
}
// Batched GEMMs, backward: dO to bf16 (when fp32); dV = P^T dO; dP = dO V^T (fp32 dS written); softmax
// backward in place (dS, P read, dS written); with bf16 qkv dS converted to bf16; dQ = dS K; dK = dS^T Q;
// 4 pointer-array kernels. Flash backward (now): D = rowsum(dO O) (dO, the saved bf16 O read); a dK/dV
// kernel per KV tile (q, k, v, dO, LSE, D read; dK, dV written) and a dQ kernel per query tile (q, k, v,
// dO, LSE, D read; dQ written), both recomputing P: 7 tile products, 14 B T^2 D FLOPs.
// Target: the same flash backward with bf16 operands (26 BTD + 20 BHT bytes).
RoofCost roof_attention_bwd(RoofLayout l, double B, double T, double H, double Dh, int flash, int e_dqkv, int e_dout,
                            int e_qkv) {
    const double D = H * Dh, btd = B * T * D, bht = B * H * T;
    if (l == ROOF_TARGET) return cost(14 * B * T * T * D, 26 * btd + 20 * bht, 3);
    FP32_IN_SESSION3(&e_dqkv, &e_dout, &e_qkv);
    if (l == ROOF_SESSION3) flash = 0;
    if (flash) {
        const double e = (e_dout + 2) + (3 * e_qkv + e_dout + 2 * e_dqkv) + (3 * e_qkv + e_dout + e_dqkv);
        return cost(14 * B * T * T * D, e * btd + 20 * bht, 3);
    }
    const double e = (e_dout == 4 ? 6 : 0) + (2 + e_dqkv) + ((e_qkv == 2 ? 2 : 4) + e_qkv) + 2 * (e_qkv + e_dqkv);
    const double s = 2 + 4 + 10 + (e_qkv == 2 ? 6 + 2 + 2 : 4 + 4);
    return cost(8 * B * T * T * D, e * btd + s * bht * T, 10);
}

// ---- tokens and rows (tokens.cu) ---------------------------------------------------------------------------------
RoofCost roof_im2col(RoofLayout l, double B, double C, double Hi, double Wi, double p) {
    (void)p; // cols hold as many values as the image (the crop is a multiple of the patch)
    return cost(0, B * C * Hi * Wi * (CUR ? 8 : 6), 1);
}
RoofCost roof_tokens_fwd(RoofLayout l, double B, double N, double R, double D) {
    return cost(0, (CUR ? 4 : 2) * B * N * D + 4 * (1 + R + N) * D + 4 * B * (1 + R + N) * D, 1);
}
RoofCost roof_tokens_bwd(RoofLayout l, double B, double N, double R, double D, int has_mask) {
    // patches: dx read, dpatch written; parameters: dx read over the batch; mask token: a colsum of dx
    double b = 4 * B * N * D + (CUR ? 4 : 2) * B * N * D + 4 * B * (1 + R + N) * D + (has_mask ? 4 * B * N * D : 0);
    return cost(0, b, 2 + (has_mask ? 2 : 0));
}
RoofCost roof_gather_rows(RoofLayout l, double n, double len, int into_next) {
    if (!CUR && into_next) return cost(0, 0, 0);
    return cost(0, 8 * n * len, 1);
}
// Now (model/cuda/rope.cu): q and k of the N patch tokens read and written as stored, the sin/cos tables
// [N, Dh] read. Target: the rotation applied where the flash kernel loads its Q and K tiles: no pass.
RoofCost roof_rope(RoofLayout l, double B, double N, double H, double Dh, int e_qkv) {
    if (l == ROOF_TARGET) return cost(0, 0, 0);
    FP32_IN_SESSION3(&e_qkv);
    return cost(0, 4 * e_qkv * B * N * H * Dh + 8 * N * Dh, 1);
}
// Both layouts (model/cuda/gram_ops.cu keeps fp32 on purpose: the loss is a small difference of two
// Gram matrices): normalised copies of s and t, S and T [N,N] per image by fp32 GEMMs, the difference
// and its gradient dS, then ds = dS s^ by a third GEMM and the normalisation's backward: 6 B N^2 D FLOPs.
RoofCost roof_gram_loss(RoofLayout l, double B, double N, double D) {
    (void)l;
    const double bnd = B * N * D, bnn = B * N * N;
    return cost(6 * B * N * N * D, 4 * (6 * bnd + 5 * bnn), 7);
}
RoofCost roof_residual_fwd(RoofLayout l, double n, double T, double D, int e_br) {
    if (l == ROOF_TARGET) e_br = 2;
    FP32_IN_SESSION3(&e_br);
    return cost(0, n * T * D * (8 + e_br), 1); // x read and written (fp32), the branch read
}
// dx read, dbr written; dgamma: dx and br read (a colsum_add, 2 kernels)
RoofCost roof_residual_bwd(RoofLayout l, double n, double T, double D, int has_dgamma, int e_dbr, int e_br) {
    if (l == ROOF_TARGET) e_dbr = e_br = 2;
    FP32_IN_SESSION3(&e_dbr, &e_br);
    const double e = n * T * D;
    return cost(0, e * (4 + e_dbr) + (has_dgamma ? e * (4 + e_br) : 0), 1 + (has_dgamma ? 2 : 0));
}
// Session 3: what copy + residual_fwd + gather_rows + layernorm_fwd cost one by one (all fp32). Now and in
// the target (residual_layernorm_fwd_kernel, norm.cu): one warp per stream row, one pass: the residual
// rows read x and the branch and write x (8 B + the branch's element), the other rows are copied (8 B;
// nothing in place), the LayerNorm rows write the fp32 gathered copy (when gathered) and the output (bf16
// in the target) from the row in registers, plus their statistics and the LayerNorm parameters.
RoofCost roof_residual_layernorm_fwd(RoofLayout l, double B, double n, double ln_n, double T, double D, int copies,
                                     int gathered, int e_br, int e_out) {
    const double row = T * D;
    if (l == ROOF_SESSION3) {
        RoofCost c = roof_residual_fwd(l, n, T, D, 4), k = roof_layernorm_fwd(l, ln_n * T, D, 0, 4);
        c.bytes += k.bytes, c.kernels += k.kernels;
        if (copies) k = roof_copy(l, 4 * B * row, 4, 0), c.bytes += k.bytes, c.kernels += k.kernels;
        if (gathered) k = roof_gather_rows(l, ln_n, row, 0), c.bytes += k.bytes, c.kernels += k.kernels;
        return c;
    }
    if (l == ROOF_TARGET) e_br = e_out = 2;
    const double stream = (8 + e_br) * n * row + (copies ? 8 * (B - n) * row : 0);
    return cost(0, stream + (gathered ? 4 : 0) * ln_n * row + e_out * ln_n * row + 8 * ln_n * T + 8 * D, 1);
}
// Session 3: layernorm_bwd (with a subset: zero a scratch, layernorm_bwd into it, scatter_add_rows) then
// residual_bwd, one by one. Now and in the target (layernorm_residual_bwd_kernel, norm.cu): one warp per
// stream row: the LayerNorm rows read dout and x and read and write dx (12 B + dout's element, statistics
// 8 B per row), the residual rows write dbr from the dx row the warp holds (read, 4 B, when the LayerNorm
// covered only a subset); then the column sums as before (dw, db, dgamma: 2 kernels each).
RoofCost roof_layernorm_residual_bwd(RoofLayout l, double n, double ln_n, double T, double D, int scattered,
                                     int has_dgamma, int e_dout, int e_dbr, int e_br) {
    const double row = T * D;
    if (l == ROOF_SESSION3) {
        RoofCost c = roof_layernorm_bwd(l, ln_n * T, D, 4), k = roof_residual_bwd(l, n, T, D, has_dgamma, 4, 4);
        c.bytes += k.bytes, c.kernels += k.kernels;
        if (scattered) {
            k = roof_zero(l, 4 * ln_n * row, 4), c.bytes += k.bytes, c.kernels += k.kernels;
            k = roof_scatter_add_rows(l, ln_n, row), c.bytes += k.bytes, c.kernels += k.kernels;
        }
        return c;
    }
    if (l == ROOF_TARGET) e_dout = e_dbr = e_br = 2;
    const double e = ln_n * row, r = n * row;
    const double pass = (12 + e_dout) * e + 8 * ln_n * T + e_dbr * r + (scattered ? 4 * r : 0);
    const double sums = (e_dout + 4) * e + e_dout * e + (has_dgamma ? (4 + e_br) * r : 0) + 16 * D;
    return cost(0, pass + sums, 1 + 4 + (has_dgamma ? 2 : 0));
}
RoofCost roof_scatter_add_rows(RoofLayout l, double n, double len) {
    (void)l; // the fp32 stream gradient in both
    return cost(0, 12 * n * len, 1);
}
RoofCost roof_axpy(RoofLayout l, double n) {
    (void)l;
    return cost(0, 12 * n, 1);
}

// ---- heads and losses (head_ops.cu, loss_ops.cu): fp32 roles in both layouts -------------------------------------
RoofCost roof_l2norm_fwd(RoofLayout l, double rows, double n) {
    (void)l;
    return cost(0, 8 * rows * n, 1);
}
RoofCost roof_l2norm_bwd(RoofLayout l, double rows, double n) {
    (void)l;
    return cost(0, 12 * rows * n, 1);
}
RoofCost roof_weightnorm_fwd(RoofLayout l, double K, double n) {
    return cost(0, K * n * (CUR ? 8 : 6), 1); // target: writes the bf16 W the prototype GEMM reads
}
RoofCost roof_weightnorm_bwd(RoofLayout l, double K, double n) {
    (void)l;
    return cost(0, 16 * K * n, 1);
}
// The loss kernels (loss_ops.cu) make the sums the CPU makes in double in double too: their FP64 work
// (RoofCost.fp64, CUDA-core instructions) is counted where it nears the memory roof. An exp or log in
// double (libdevice: range reduction, a degree-11 polynomial, the scaling) is ~20 instructions; a
// float-to-double conversion, an add or an FMA one each.
#define FP64_EXP 20.0
static RoofCost with_fp64(RoofCost k, double fp64) {
    k.fp64 = fp64;
    return k;
}

// Session 3: z read twice (max, exponentials), P written, then read and written (the normalization).
// Now (softmax_center_recompute_kernel, the same bits): z read three times (max, sum, P = exponential
// recomputed times 1 / sum), P written once; the target keeps it. The sum of the fp32 exponentials in
// double: a conversion and an add per logit.
RoofCost roof_softmax_center(RoofLayout l, double rows, double K) {
    return with_fp64(cost(0, (l == ROOF_SESSION3 ? 20 : 16) * rows * K, 1), 2 * rows * K);
}
RoofCost roof_col_sum(RoofLayout l, double rows, double K) {
    (void)l;
    return with_fp64(cost(0, 4 * rows * K + 4 * K, 1), 2 * rows * K);
}
RoofCost roof_center_update(RoofLayout l, double K) {
    (void)l;
    return cost(0, 12 * K, 1);
}
// Session 3: column max (z), exponentials (z read, P written), the total (P), its division (P read and
// written), per iteration a column sum (P) and the row kernel (P read and written twice), the final scale.
// Now (the same bits): the division by the total applied as the first iteration reads P, the row kernel
// reading P twice and writing it once (the quotient recomputed), the final scale in the last one: 16 + 16
// n_iter bytes per logit; the target keeps it. Sums in double (the total, per iteration the column and
// the row sums).
RoofCost roof_sinkhorn(RoofLayout l, double rows, double K, int n_iter) {
    const double fp64 = rows * K * (2 + 4.0 * n_iter);
    if (l == ROOF_SESSION3 || n_iter == 0) return with_fp64(cost(0, rows * K * (32 + 20.0 * n_iter), 6 + 2 * n_iter), fp64);
    return with_fp64(cost(0, rows * K * (16 + 16.0 * n_iter), 4 + 2 * n_iter), fp64);
}
// Session 3 and now (softmax_ce_kernel): two passes over s and t, one block per row: the online softmax
// (an exp in double per logit, sums of t and t*y in double: ~25 FP64 instructions), then the gradient
// (q = exp in double of y - lse: ~23). The target: one pass over the logits (the row held on chip), the
// same FP64 work.
RoofCost roof_softmax_ce(RoofLayout l, double rows, double K, int has_loss, int has_ds) {
    (void)has_loss;
    const double n = rows * K, fp64 = n * (FP64_EXP + 5 + (has_ds ? FP64_EXP + 3 : 0));
    if (CUR) return with_fp64(cost(0, n * (8 + (has_ds ? 12 : 0)), 1), fp64);
    return with_fp64(cost(0, n * (8 + (has_ds ? 4 : 0)), 1), fp64);
}
// P read once; -p log p in double per element (a log, a conversion, an FMA)
RoofCost roof_entropy_mean(RoofLayout l, double rows, double K) {
    (void)l;
    return with_fp64(cost(0, 4 * rows * K, 2), rows * K * (FP64_EXP + 3));
}
RoofCost roof_koleo(RoofLayout l, double B, double D) {
    (void)l; // fp64 CUDA-core math on a B x B Gram matrix: no tensor-core work
    return cost(0, 8 * B * D + 24 * B * B, 6);
}
RoofCost roof_kde(RoofLayout l, double B, double D) {
    (void)l;
    return cost(0, 8 * B * D + 24 * B * B, 5);
}

// ---- optimizer (elementwise.cu, optim_ops.cu) -----------------------------------------------------------------------
// sum_squares: 2 kernels, a copy of the result to the host and a wait (no graph can hold that wait);
// the target keeps the norm on the device.
RoofCost roof_sum_squares(RoofLayout l, double n) { return cost(0, 4 * n, CUR ? 4 : 2); }
RoofCost roof_scale(RoofLayout l, double n) {
    (void)l;
    return cost(0, 8 * n, 1);
}
// p, g, m, v read, p, m, v written, and (now and in the target) the bf16 copy of p, model/cuda/weight_copy.cu
RoofCost roof_adamw(RoofLayout l, double n) { return cost(0, n * (l == ROOF_SESSION3 ? 28 : 30), 1); }
// t, s read, t written, and (now and in the target) the teacher's bf16 copy
RoofCost roof_ema(RoofLayout l, double n) { return cost(0, n * (l == ROOF_SESSION3 ? 12 : 14), 1); }
// the scalar block's ops (optim_ops.cu): a clip / bias kernel, a NaN scan, a guarded copy
RoofCost roof_step_scalars(RoofLayout l, double n) {
    (void)l;
    return cost(0, 8 * n, 1);
}

// ---- memory ---------------------------------------------------------------------------------------------------------
// A bf16 buffer copied or zeroed with its fp32 byte count: the backend moves half (the target stores at
// least the buffers that are bf16 now in bf16).
RoofCost roof_copy(RoofLayout l, double bytes, int e, int into_next) {
    if (!CUR && into_next) return cost(0, 0, 0);
    FP32_IN_SESSION3(&e);
    return cost(0, 2 * bytes * e / 4, 1);
}
RoofCost roof_zero(RoofLayout l, double bytes, int e) {
    FP32_IN_SESSION3(&e);
    return cost(0, bytes * e / 4, 1);
}
RoofCost roof_param_copy_changed(RoofLayout l, double n) {
    if (l == ROOF_SESSION3) return cost(0, 0, 0); // no copy then
    return cost(0, 6 * n, 1); // one conversion pass (ZeRO-1's all-gathered weights)
}
RoofCost roof_host(RoofLayout l, double bytes) {
    (void)l;
    return cost(0, bytes, 1);
}

// ---- tallies ----------------------------------------------------------------------------------------------------------
void roof_tally_add(RoofTally *t, const RoofCard *c, RoofFamily f, RoofLayout l, RoofCost k) {
    t->flops[l] += k.flops;
    t->fp64[l] += k.fp64;
    t->bytes[l] += k.bytes;
    t->kernels[l] += k.kernels;
    t->pred_s[l] += roof_time_s(c, l, f, k);
}

void roof_family_totals(const RoofTally *op, RoofTally *fam) {
    memset(fam, 0, sizeof(RoofTally) * RF_COUNT);
    for (int i = 0; i < ROP_COUNT; i++) {
        RoofTally *d = &fam[roof_op_family((RoofOp)i)];
        d->calls += op[i].calls;
        d->meas_s += op[i].meas_s;
        for (int l = 0; l < ROOF_NLAYOUTS; l++) {
            d->flops[l] += op[i].flops[l];
            d->bytes[l] += op[i].bytes[l];
            d->kernels[l] += op[i].kernels[l];
            d->fp64[l] += op[i].fp64[l];
            d->pred_s[l] += op[i].pred_s[l];
        }
    }
}

double roof_step_s(const RoofTally *fam, RoofLayout l) {
    double s = 0;
    for (int f = 0; f < RF_COUNT; f++)
        if (f != RF_UPLOAD) s += fam[f].pred_s[l];
    return s;
}
