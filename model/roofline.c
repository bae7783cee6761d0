// The roofline model's byte and FLOP counts, op by op (model/roofline.h). Each count names the passes of
// the kernels it models: for ROOF_CURRENT the kernels of model/cuda/*.cu as they are (cited per op), for
// ROOF_TARGET the kernels of the GPU-layout issue. A tensor counts once per kernel pass that streams it;
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
    [ROP_COPY] = {"copy", RF_COPY},
    [ROP_ZERO] = {"zero", RF_COPY},
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
const char *roof_layout_name(RoofLayout l) { return l == ROOF_CURRENT ? "current" : "target"; }

int roof_card(const char *name, RoofCard *out) {
    // H100 SXM5: 989 TFLOP/s dense bf16 (datasheet), ~790 measured with cuBLAS (the figure),
    // 3.35 TB/s HBM3. H200: the same GH100 compute, 4.8 TB/s HBM3e. Host: pinned PCIe copies at ~25
    // GB/s (pageable copies are slower). Launch gaps: ~4 us per kernel issued eagerly from the host
    // (cuBLAS calls cost more), ~1 us between the kernel nodes of a replayed graph.
    if (strcmp(name, "h100") == 0) {
        *out = (RoofCard){"H100 SXM (989 TFLOP/s bf16 spec, 790 measured, 3.35 TB/s)", 989.4, 790, 3.35, 25, {4.0, 1.0}};
        return 0;
    }
    if (strcmp(name, "h200") == 0) {
        *out = (RoofCard){"H200 (989 TFLOP/s bf16 spec, 790 assumed measured, 4.8 TB/s)", 989.4, 790, 4.8, 25, {4.0, 1.0}};
        return 0;
    }
    return -1;
}

double roof_time_s(const RoofCard *c, RoofLayout l, RoofFamily f, RoofCost k) {
    const double bw = (f == RF_HOST || f == RF_UPLOAD) ? c->host_gbs * 1e9 : c->bw_tbs * 1e12;
    double t = k.flops / (c->peak_tflops * 1e12);
    if (k.bytes / bw > t) t = k.bytes / bw;
    if (k.kernels * c->launch_us[l] * 1e-6 > t) t = k.kernels * c->launch_us[l] * 1e-6;
    return t;
}

static RoofCost cost(double flops, double bytes, double kernels) { return (RoofCost){flops, bytes, kernels}; }
#define CUR (l == ROOF_CURRENT)

// ---- dense algebra: cuBLAS / cuBLASLt on fp32 operands today (matmul.cu) --------------------------------
RoofCost roof_gemm(RoofLayout l, double M, double N, double K, int beta_nonzero) {
    (void)l; // the position-embedding resampling: fp32 parameters in both layouts
    return cost(2 * M * N * K, 4 * (M * K + K * N + M * N * (beta_nonzero ? 2 : 1)), 1);
}

// A linear layer without a bias is the heads' prototype layer (every other linear has one): its
// input (the normalized bottleneck) and its output (the logits) are fp32 roles in the target.
RoofCost roof_linear_fwd(RoofLayout l, double rows, double n_in, double n_out, int has_bias) {
    const double f = 2 * rows * n_in * n_out, bias = has_bias ? 4 * n_out : 0;
    if (CUR) return cost(f, 4 * (rows * n_in + n_in * n_out + rows * n_out) + bias, 1); // cuBLASLt bias epilogue
    if (!has_bias) return cost(f, 4 * rows * n_in + 2 * n_in * n_out + 4 * rows * n_out, 1);
    return cost(f, 2 * (rows * n_in + n_in * n_out + rows * n_out) + bias, 1);
}

RoofCost roof_linear_bwd(RoofLayout l, double rows, double n_in, double n_out, int has_din, int has_db) {
    const double ri = rows * n_in, ro = rows * n_out, io = n_in * n_out;
    const double f = 2 * rows * n_in * n_out * (has_din ? 2 : 1);
    if (CUR) { // din = dout W (beta 0); dW += dout^T in (beta 1: read and write dW); db: colsum_add (2 kernels)
        double b = 4 * (ro + ri + 2 * io) + (has_din ? 4 * (ro + io + ri) : 0) + (has_db ? 4 * ro + 8 * n_out : 0);
        return cost(f, b, 1 + has_din + (has_db ? 2 : 0));
    }
    if (!has_db && has_din) // the prototype layer: fp32 dlogits and input, bf16 W, fp32 dW and din
        return cost(f, (4 * ro + 2 * io + 4 * ri) + (4 * ro + 4 * ri + 8 * io), 2);
    // bf16 dout, in, W and din; fp32 dW read and written; db in the dW GEMM's epilogue (cuBLASLt BGRADB)
    double b = (2 * ro + 2 * ri + 8 * io) + (has_din ? 2 * (ro + io + ri) : 0) + (has_db ? 8 * n_out : 0);
    return cost(f, b, 1 + has_din);
}

// ---- LayerNorm (norm.cu): one warp per row ---------------------------------------------------------------
RoofCost roof_layernorm_fwd(RoofLayout l, double rows, double D, int after_residual) {
    const double stats = 8 * rows, params = 8 * D;
    if (CUR) return cost(0, 8 * rows * D + stats + params, 1); // read x, write out
    if (after_residual) return cost(0, 2 * rows * D + stats + params, 0); // in the residual's kernel: write bf16
    return cost(0, 6 * rows * D + stats + params, 1);                     // read the fp32 stream, write bf16
}

RoofCost roof_layernorm_bwd(RoofLayout l, double rows, double D) {
    // dx kernel: dout, x, dx read and written; dw colsum: dout, x; db colsum: dout (2 kernels each)
    const double e = CUR ? 4 : 2; // dout: an activation gradient
    return cost(0, rows * D * ((e + 4 + 8) + (e + 4) + e) + 16 * rows + 16 * D, 5);
}

// ---- activations (activation.cu) ---------------------------------------------------------------------------
RoofCost roof_gelu_fwd(RoofLayout l, double n, int epilogue) {
    if (CUR) return cost(0, 8 * n, 1);
    return epilogue ? cost(0, 2 * n, 0) : cost(0, 4 * n, 1);
}
RoofCost roof_gelu_bwd(RoofLayout l, double n) { return cost(0, (CUR ? 12 : 6) * n, 1); }
RoofCost roof_swiglu_fwd(RoofLayout l, double rows, double Hd, int epilogue) {
    const double n = rows * Hd;
    if (CUR) return cost(0, 12 * n, 1);
    return epilogue ? cost(0, 2 * n, 0) : cost(0, 6 * n, 1);
}
RoofCost roof_swiglu_bwd(RoofLayout l, double rows, double Hd) { return cost(0, (CUR ? 20 : 10) * rows * Hd, 1); }

// ---- attention (attention.cu, bf16-probability path) ---------------------------------------------------------
// Today, forward: S = QK^T (fp32 q, k read; fp32 S written), softmax (S read, exponentials written back,
// bf16 P written), V to bf16, P V (bf16 P, V read; fp32 out written); 2 pointer-array kernels.
// Target: flash forward (FA2): qkv read once in bf16, O in bf16 and the LSE in fp32 written.
RoofCost roof_attention_fwd(RoofLayout l, double B, double T, double H, double Dh) {
    const double D = H * Dh, btd = B * T * D, f = 4 * B * T * T * D;
    if (CUR) return cost(f, 20 * btd + 16 * B * H * T * T, 6);
    return cost(f, 8 * btd + 4 * B * H * T, 1);
}
// Today, backward: dO to bf16; dV = P^T dO; dP = dO V^T (fp32 dS written); softmax backward in place;
// dQ = dS K; dK = dS^T Q (fp32 q, k, v, dqkv); 4 pointer-array kernels.
// Target: D = rowsum(dO O); a dK/dV kernel per KV tile recomputing P from the LSE (S, dV, dP, dK); a
// separate dQ kernel per query tile (S, dP, dQ again: deterministic without atomics): 14 B T^2 D FLOPs.
RoofCost roof_attention_bwd(RoofLayout l, double B, double T, double H, double Dh) {
    const double D = H * Dh, btd = B * T * D;
    if (CUR) return cost(8 * B * T * T * D, 36 * btd + 24 * B * H * T * T, 10);
    return cost(14 * B * T * T * D, 26 * btd + 20 * B * H * T, 3);
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
}// Today (model/cuda/rope.cu): q and k of the N patch tokens read and written in fp32, the sin/cos tables
// [N, Dh] read. Target: the rotation applied where the flash kernel loads its Q and K tiles: no pass.
RoofCost roof_rope(RoofLayout l, double B, double N, double H, double Dh) {
    if (CUR) return cost(0, 16 * B * N * H * Dh + 8 * N * Dh, 1);
    return cost(0, 0, 0);
}
// Both layouts (model/cuda/gram_ops.cu keeps fp32 on purpose: the loss is a small difference of two
// Gram matrices): normalised copies of s and t, S and T [N,N] per image by fp32 GEMMs, the difference
// and its gradient dS, then ds = dS s^ by a third GEMM and the normalisation's backward: 6 B N^2 D FLOPs.
RoofCost roof_gram_loss(RoofLayout l, double B, double N, double D) {
    (void)l;
    const double bnd = B * N * D, bnn = B * N * N;
    return cost(6 * B * N * N * D, 4 * (6 * bnd + 5 * bnn), 7);
}
RoofCost roof_residual_fwd(RoofLayout l, double n, double T, double D) {
    return cost(0, n * T * D * (CUR ? 12 : 10), 1); // x read and written (fp32), the branch read
}
RoofCost roof_residual_bwd(RoofLayout l, double n, double T, double D, int has_dgamma) {
    const double e = n * T * D, a = CUR ? 4 : 2;
    return cost(0, e * (4 + a) + (has_dgamma ? e * (4 + a) : 0), 1 + (has_dgamma ? 2 : 0));
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
// z read twice (max, exponentials), P written, then read and written (the normalization)
RoofCost roof_softmax_center(RoofLayout l, double rows, double K) {
    (void)l;
    return cost(0, 20 * rows * K, 1);
}
RoofCost roof_col_sum(RoofLayout l, double rows, double K) {
    (void)l;
    return cost(0, 4 * rows * K + 4 * K, 1);
}
RoofCost roof_center_update(RoofLayout l, double K) {
    (void)l;
    return cost(0, 12 * K, 1);
}
// column max (z), exponentials (z read, P written), the total (P), its division (P read and written),
// per iteration a column sum (P) and the row kernel (P read and written twice), the final scale
RoofCost roof_sinkhorn(RoofLayout l, double rows, double K, int n_iter) {
    (void)l;
    return cost(0, rows * K * (32 + 20.0 * n_iter), 6 + 2 * n_iter);
}
// Today two passes over s and t (online softmax, then the gradient); the target one pass.
RoofCost roof_softmax_ce(RoofLayout l, double rows, double K, int has_loss, int has_ds) {
    (void)has_loss;
    const double n = rows * K;
    if (CUR) return cost(0, n * (8 + (has_ds ? 12 : 0)), 1);
    return cost(0, n * (8 + (has_ds ? 4 : 0)), 1);
}
RoofCost roof_entropy_mean(RoofLayout l, double rows, double K) {
    (void)l;
    return cost(0, 4 * rows * K, 2);
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
// p, g, m, v read, p, m, v written; the target also writes the bf16 copy of p
RoofCost roof_adamw(RoofLayout l, double n) { return cost(0, n * (CUR ? 28 : 30), 1); }
// t, s read, t written; the target also writes the teacher's bf16 copy
RoofCost roof_ema(RoofLayout l, double n) { return cost(0, n * (CUR ? 12 : 14), 1); }

// ---- memory ---------------------------------------------------------------------------------------------------------
RoofCost roof_copy(RoofLayout l, double bytes, int into_next) {
    if (!CUR && into_next) return cost(0, 0, 0);
    return cost(0, 2 * bytes, 1);
}
RoofCost roof_zero(RoofLayout l, double bytes) {
    (void)l;
    return cost(0, bytes, 1);
}
RoofCost roof_host(RoofLayout l, double bytes) {
    (void)l;
    return cost(0, bytes, 1);
}

// ---- tallies ----------------------------------------------------------------------------------------------------------
void roof_tally_add(RoofTally *t, const RoofCard *c, RoofFamily f, RoofLayout l, RoofCost k) {
    t->flops[l] += k.flops;
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
