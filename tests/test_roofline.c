// The roofline model (model/roofline.h) and the timing backend that counts it (model/backend_timed.h):
// the wrapper changes no result; its counted matrix-product FLOPs are vit_flops()'s analytic total; the
// calls per op are what the ViT's structure implies; the target layout's fusions are found; the current
// layout counts each argument with the element type the backend stores (bf16: 2 bytes).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "model/backend.h"
#include "model/backend_plan.h"
#include "model/backend_timed.h"
#include "model/roofline.h"
#include "model/vit.h"
#include "tests/gradcheck.h"
#include "train/ssl_step.h"

static RoofCard h100(void) {
    RoofCard c;
    CHECK(roof_card("h100", &c) == 0, "no h100 card");
    return c;
}

static VitConfig small_vit(const char *ffn, int registers, double drop, int depth) {
    VitConfig cfg;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&cfg, "vit_test", 4, 16, registers, ffn, err) == 0, "%s", err);
    cfg.dim = 16, cfg.heads = 1, cfg.depth = depth, cfg.ffn_hidden = 24; // head dim 16: one the flash path has
    cfg.drop_path_rate = drop;
    cfg.layerscale = 0.5f;
    return cfg;
}

// Two SSL steps (drop path, iBOT masks, registers, two crop sizes) on the CPU backend and on the same
// backend wrapped, counting and timing every op: students, teachers and losses equal bit for bit.
TEST(wrapper_bit_identical_ssl_step) {
    VitConfig vc = small_vit("mlp", 1, 0.3, 2);
    SslConfig cfg;
    ssl_config_default(&cfg, &vc);
    cfg.dino_head = (HeadConfig){.in_dim = vc.dim, .hidden = 20, .bottleneck = 8, .K = 32, .nlayers = 3};
    cfg.batch = 4, cfg.n_local = 2, cfg.global_crop = 16, cfg.local_crop = 8;
    const int B = 4, G = 16, L = 8, N = 16;
    Rng r = rng_make(31, 0, 0, 0);
    float *gimg = malloc(sizeof(float) * 2 * B * 3 * G * G), *limg = malloc(sizeof(float) * 2 * B * 3 * L * L);
    gc_fill_normal(gimg, (size_t)2 * B * 3 * G * G, 1, &r);
    gc_fill_normal(limg, (size_t)2 * B * 3 * L * L, 1, &r);
    uint8_t masks[2 * 4 * 16] = {0};
    for (int i = 0; i < 2 * B * N; i++) masks[i] = (i % 5) == 2 && i < B * N;
    float *params[2][2];
    double loss[2][2];
    const RoofCard card = h100();
    long counted = 0;
    for (int wrapped = 0; wrapped < 2; wrapped++) {
        Backend *be = backend_cpu_new();
        if (wrapped) {
            be = backend_timed_new(be, &card, 1);
            backend_timed_set(be, 1, 1);
        }
        SslModel m;
        char err[DINO_ERRLEN];
        CHECK(ssl_model_init(&m, be, &cfg, 3, err) == 0, "%s", err);
        for (int s = 0; s < 2; s++) {
            SslBatch b = {.global_crops = gimg, .local_crops = limg, .masks = s ? masks : NULL,
                          .drop_key = rng_make(5, (uint64_t)s, 0, 0)};
            ScheduleValues sv = {.lr = 1e-3, .wd = 0.04, .momentum = 0.99, .teacher_temp = 0.05, .last_layer_lr = 1e-3};
            SslStepStats st;
            CHECK(ssl_step(&m, be, NULL, &b, &sv, &st, err) == 0, "%s", err);
            loss[wrapped][s] = st.total_loss;
        }
        for (int k = 0; k < 2; k++) {
            params[wrapped][k] = malloc(sizeof(float) * m.tab.total);
            be->to_host(be, params[wrapped][k], k ? m.teacher : m.student, sizeof(float) * m.tab.total);
        }
        if (wrapped) {
            const RoofTally *t = backend_timed_tally(be);
            for (int i = 0; i < ROP_COUNT; i++) counted += t[i].calls;
            CHECK(t[ROP_ADAMW].calls > 0 && t[ROP_SOFTMAX_CE].calls > 0 && t[ROP_ATTENTION_BWD].calls > 0,
                  "the step's ops were not all counted");
            CHECK(t[ROP_LINEAR_BWD].meas_s > 0, "no time measured");
        }
        CHECK(memcmp(params[0][0], params[wrapped][0], sizeof(float) * m.tab.total) == 0, "student differs");
        CHECK(memcmp(params[0][1], params[wrapped][1], sizeof(float) * m.tab.total) == 0, "teacher differs");
        ssl_model_free(&m, be);
        backend_free(be);
    }
    CHECK(counted > 100, "only %ld calls counted", counted);
    for (int s = 0; s < 2; s++) CHECK(loss[0][s] == loss[1][s], "step %d loss %.9g vs %.9g", s, loss[1][s], loss[0][s]);
    CHECK(loss[0][0] != loss[0][1], "the two steps saw the same loss");
    for (int k = 0; k < 2; k++) free(params[0][k]), free(params[1][k]);
    free(gimg), free(limg);
}

// Forward (and backward) of one crop group on the wrapped CPU backend (plan = 0, executed) or on the
// allocate-only plan backend in the cuda layout (plan = 1: bf16 activations, flash attention; counted
// only), counting; returns the wrapper (its tallies) for the caller to inspect and free.
static Backend *count_vit_on(int plan, const VitConfig *cfg, int B, int crop, int backward, int use_drop, Vit *vit_out) {
    const RoofCard card = h100();
    Backend *be = plan ? backend_timed_new(backend_plan_new(1), &card, 0) : backend_timed_new(backend_cpu_new(), &card, 1);
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, cfg, &tab, "backbone.");
    float *Ph = calloc(tab.total, sizeof(float));
    vit_init_weights(&vit, Ph, 1);
    float *P = be->alloc(be, sizeof(float) * tab.total), *Gr = be->alloc(be, sizeof(float) * tab.total);
    be->to_device(be, P, Ph, sizeof(float) * tab.total);
    Rng r = rng_make(5, 0, 0, 0);
    const int N = (crop / cfg->patch) * (crop / cfg->patch), T = 1 + cfg->n_registers + N;
    float *img = be->alloc(be, sizeof(float) * B * 3 * crop * crop), *dout = be->alloc(be, sizeof(float) * B * T * cfg->dim);
    gc_fill_normal(img, (size_t)B * 3 * crop * crop, 1, &r);
    gc_fill_normal(dout, (size_t)B * T * cfg->dim, 1, &r);
    int *sub = use_drop ? malloc(sizeof(int) * 2 * cfg->depth * B) : NULL;
    if (sub) vit_draw_drop_subsets(&vit, B, rng_make(3, 0, 0, 0), sub);
    VitActs *a = vit_acts_new(be, &vit, B, crop, backward ? VIT_ACTS_STORE_ALL : VIT_ACTS_FORWARD_ONLY);
    backend_timed_set(be, 1, 0);
    vit_forward(be, &vit, P, a, img, NULL, sub);
    if (backward) vit_backward(be, &vit, P, Gr, a, dout);
    backend_timed_set(be, 0, 0);
    vit_acts_free(be, a);
    be->release(be, img), be->release(be, dout), be->release(be, P), be->release(be, Gr);
    free(Ph), free(sub);
    param_table_free(&tab);
    *vit_out = vit;
    return be;
}
static Backend *count_vit(const VitConfig *cfg, int B, int crop, int backward, int use_drop, Vit *vit_out) {
    return count_vit_on(0, cfg, B, crop, backward, use_drop, vit_out);
}

static double matmul_flops(const RoofTally *t, RoofLayout l) {
    return t[ROP_LINEAR_FWD].flops[l] + t[ROP_LINEAR_GELU_FWD].flops[l] + t[ROP_LINEAR_SWIGLU_FWD].flops[l] +
           t[ROP_LINEAR_BWD].flops[l] + t[ROP_GEMM].flops[l];
}

// The counted GEMM + attention FLOPs are vit_flops(), the analytic count the benchmarks' MFU uses,
// exactly (integers in doubles): in the session-3 layout on both backends, and in the current layout on
// the cpu backend (fp32, probabilities materialised); on the plan backend's cuda layout the current
// layout runs the flash backward, which recomputes S and dP (14 instead of 8 B T^2 D), and the same
// GEMMs. Attention alone is 4 L D T^2 per image forward, three times that with backward.
TEST(counted_flops_equal_vit_flops) {
    const char *ffns[2] = {"mlp", "swiglu"};
    for (int plan = 0; plan < 2; plan++)
        for (int k = 0; k < 2; k++)
            for (int backward = 0; backward < 2; backward++) {
                VitConfig cfg = small_vit(ffns[k], k, 0.0, 3);
                const int B = 3, crop = 16, T = 1 + k + 16;
                Vit vit;
                Backend *be = count_vit_on(plan, &cfg, B, crop, backward, 0, &vit);
                const RoofTally *t = backend_timed_tally(be);
                const double fwd_att = 4.0 * cfg.depth * cfg.dim * (double)T * T * B;
                const double want = vit_flops(&cfg, B, crop, backward);
                for (int l = 0; l < ROOF_TARGET; l++) {
                    const double att = t[ROP_ATTENTION_FWD].flops[l] + t[ROP_ATTENTION_BWD].flops[l];
                    const int flash = plan && l == ROOF_CURRENT;
                    const double want_att = fwd_att * (1 + (backward ? (flash ? 3.5 : 2) : 0));
                    CHECK(att == want_att, "plan %d %s %s backward=%d: attention %.0f FLOPs, expected %.0f", plan,
                          roof_layout_name((RoofLayout)l), ffns[k], backward, att, want_att);
                    CHECK(matmul_flops(t, (RoofLayout)l) + fwd_att * (backward ? 3 : 1) == want,
                          "plan %d %s %s backward=%d: counted %.0f FLOPs, vit_flops %.0f", plan,
                          roof_layout_name((RoofLayout)l), ffns[k], backward, matmul_flops(t, (RoofLayout)l) + att, want);
                }
                // every layout does the same GEMMs; flash backward recomputes (14 instead of 8 B T^2 D)
                CHECK(matmul_flops(t, ROOF_TARGET) == matmul_flops(t, ROOF_SESSION3) &&
                          matmul_flops(t, ROOF_CURRENT) == matmul_flops(t, ROOF_SESSION3),
                      "GEMM FLOPs differ between the layouts");
                // the plan backend's cuda layout: the MLP's GELU reads and writes bf16 (half the bytes), attention
                // is one flash kernel per call
                if (plan && k == 0)
                    CHECK(t[ROP_GELU_FWD].bytes[ROOF_CURRENT] * 2 == t[ROP_GELU_FWD].bytes[ROOF_SESSION3],
                          "GELU current %.0f bytes, session-3 %.0f", t[ROP_GELU_FWD].bytes[ROOF_CURRENT],
                          t[ROP_GELU_FWD].bytes[ROOF_SESSION3]);
                if (plan)
                    CHECK(t[ROP_ATTENTION_FWD].kernels[ROOF_CURRENT] == t[ROP_ATTENTION_FWD].calls, "flash kernels %.0f",
                          t[ROP_ATTENTION_FWD].kernels[ROOF_CURRENT]);
                // on the cpu (fp32 storage, probabilities saved) the current layout is session 3's, byte for byte,
                // but for the residual + LayerNorm fusion (one kernel on fp32 buffers too)
                if (!plan)
                    for (int i = 0; i < ROP_COUNT; i++)
                        if (i != ROP_RESIDUAL_LAYERNORM_FWD && i != ROP_LAYERNORM_RESIDUAL_BWD)
                            CHECK(t[i].bytes[ROOF_CURRENT] == t[i].bytes[ROOF_SESSION3],
                                  "%s: cpu current %.0f bytes, session-3 %.0f", roof_op_name((RoofOp)i),
                                  t[i].bytes[ROOF_CURRENT], t[i].bytes[ROOF_SESSION3]);
                vit_free(&vit);
                backend_free(be);
            }
}

// The element type of each argument as the backend stores it: a linear layer on bf16 buffers of the plan
// backend's cuda layout counts bf16 operands (and matmul.cu's passes: the weight converted into scratch,
// the GEMM on bf16 operands, the bias added to the fp32 accumulator and the bf16 output written); on fp32
// buffers, and on the cpu backend (which stores fp32 whatever is asked), the current layout is session 3's.
TEST(bf16_linear_counts_bf16_operands) {
    const RoofCard card = h100();
    const int rows = 48, n_in = 32, n_out = 64;
    const double ri = rows * n_in, io = n_in * n_out, ro = rows * n_out;
    for (int plan = 0; plan < 2; plan++) {
        Backend *be = plan ? backend_timed_new(backend_plan_new(1), &card, 0) : backend_timed_new(backend_cpu_new(), &card, 1);
        size_t held = 0;
        float *x = be->alloc_act(be, (size_t)rows * n_in, DINO_BF16, &held);
        CHECK(held == (plan ? 2u : 4u) * rows * n_in, "alloc_act through the wrapper reports %zu bytes", held);
        float *y = be->alloc_act(be, (size_t)rows * n_out, DINO_BF16, NULL), *dy = be->alloc_act(be, (size_t)rows * n_out, DINO_BF16, NULL);
        float *dx = be->alloc_act(be, (size_t)rows * n_in, DINO_BF16, NULL);
        float *xf = be->alloc(be, sizeof(float) * rows * n_in), *yf = be->alloc(be, sizeof(float) * rows * n_out);
        float *W = be->alloc(be, sizeof(float) * n_out * n_in), *b = be->alloc(be, sizeof(float) * n_out);
        float *dW = be->alloc(be, sizeof(float) * n_out * n_in), *db = be->alloc(be, sizeof(float) * n_out);
        backend_timed_set(be, 1, 0);
        be->linear_fwd(be, y, x, W, b, rows, n_in, n_out);
        be->linear_bwd(be, dx, dW, db, dy, x, W, rows, n_in, n_out);
        const RoofTally *t = backend_timed_tally(be);
        const double s3_fwd = 4 * (ri + io + ro) + 4 * n_out;
        const double s3_bwd = 4 * (ro + ri + 2 * io) + 4 * (ro + io + ri) + 4 * ro + 8 * n_out;
        CHECK(t[ROP_LINEAR_FWD].bytes[ROOF_SESSION3] == s3_fwd && t[ROP_LINEAR_BWD].bytes[ROOF_SESSION3] == s3_bwd,
              "session-3 bytes %.0f %.0f", t[ROP_LINEAR_FWD].bytes[ROOF_SESSION3], t[ROP_LINEAR_BWD].bytes[ROOF_SESSION3]);
        // forward: the GEMM reads bf16 x and W (the bf16 weight copy: the model registers every weight it
        // passes here), writes the fp32 accumulator; the bias kernel reads it and the bias, writes bf16 y.
        // Backward: db from bf16 dy; din = dy W (bf16 dy, W read, bf16 dx written); dW += dy^T x (bf16 dy,
        // x; fp32 dW read and written).
        const double cur_fwd = 2 * (ri + io) + 4 * ro + (4 * ro + 4 * n_out + 2 * ro);
        const double cur_bwd = (2 * ro + 8 * n_out) + (2 * ro + 2 * io + 2 * ri) + (2 * ro + 2 * ri + 8 * io);
        const double want_fwd = plan ? cur_fwd : s3_fwd, want_bwd = plan ? cur_bwd : s3_bwd;
        CHECK(t[ROP_LINEAR_FWD].bytes[ROOF_CURRENT] == want_fwd, "plan %d: linear_fwd %.0f bytes, expected %.0f", plan,
              t[ROP_LINEAR_FWD].bytes[ROOF_CURRENT], want_fwd);
        CHECK(t[ROP_LINEAR_BWD].bytes[ROOF_CURRENT] == want_bwd, "plan %d: linear_bwd %.0f bytes, expected %.0f", plan,
              t[ROP_LINEAR_BWD].bytes[ROOF_CURRENT], want_bwd);
        CHECK(t[ROP_LINEAR_FWD].kernels[ROOF_CURRENT] == (plan ? 2 : 1), "linear_fwd kernels %.0f",
              t[ROP_LINEAR_FWD].kernels[ROOF_CURRENT]);
        for (int l = 0; l < ROOF_NLAYOUTS; l++)
            CHECK(t[ROP_LINEAR_FWD].flops[l] == 2 * ri * n_out && t[ROP_LINEAR_BWD].flops[l] == 4 * ri * n_out, "FLOPs");
        // fp32 buffers: session 3's path, on both backends; a released bf16 buffer is forgotten
        backend_timed_reset(be);
        be->linear_fwd(be, yf, xf, W, b, rows, n_in, n_out);
        CHECK(t[ROP_LINEAR_FWD].bytes[ROOF_CURRENT] == s3_fwd, "fp32 linear_fwd %.0f bytes", t[ROP_LINEAR_FWD].bytes[ROOF_CURRENT]);
        backend_timed_reset(be);
        be->zero(be, y, sizeof(float) * rows * n_out);
        CHECK(t[ROP_ZERO].bytes[ROOF_CURRENT] == (plan ? 2 : 4) * ro, "zero of a bf16 buffer: %.0f bytes",
              t[ROP_ZERO].bytes[ROOF_CURRENT]);
        be->release(be, y);
        if (plan) { // the address, no longer a bf16 buffer (the plan backend's zero touches nothing)
            backend_timed_reset(be);
            be->zero(be, y, sizeof(float) * rows * n_out);
            CHECK(t[ROP_ZERO].bytes[ROOF_CURRENT] == 4 * ro, "a released buffer still counted as bf16");
        }
        backend_timed_set(be, 0, 0);
        float *bufs[] = {x, dy, dx, xf, yf, W, b, dW, db};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) be->release(be, bufs[i]);
        backend_free(be);
    }
}

// Calls per op for forward + backward with stored activations (L blocks, MLP, no drop path): what the
// ViT's structure gives, and the target's fusions (GELU in fc1's epilogue; the residual + LayerNorm op),
// by family too.
TEST(call_counts_and_fusions) {
    const int L = 3, B = 2, crop = 16, D = 16, T = 17;
    VitConfig cfg = small_vit("mlp", 0, 0.0, L);
    Vit vit;
    Backend *be = count_vit(&cfg, B, crop, 1, 0, &vit);
    const RoofTally *t = backend_timed_tally(be);
    struct {
        RoofOp op;
        long calls;
    } want[] = {
        // fc1 + GELU is one op (linear_gelu_fwd); backward re-derives the GELU alone from the stored fc1
        {ROP_LINEAR_FWD, 3 * L + 1}, {ROP_LINEAR_GELU_FWD, L}, {ROP_LINEAR_BWD, 4 * L + 1}, {ROP_ATTENTION_FWD, L},
        {ROP_ATTENTION_BWD, L},
        // forward: block 0's LN1 alone, every other LayerNorm (the final norm too) fused with the residual
        // before it; backward re-derives both of each block's, and fuses LN2's backward with the attention
        // branch's residual backward, the final norm's with the last block's FFN residual backward
        {ROP_LAYERNORM_FWD, 2 * L + 1}, {ROP_RESIDUAL_LAYERNORM_FWD, 2 * L}, {ROP_LAYERNORM_BWD, L},
        {ROP_LAYERNORM_RESIDUAL_BWD, L + 1}, {ROP_GELU_FWD, L}, {ROP_GELU_BWD, L}, {ROP_RESIDUAL_FWD, 0},
        {ROP_RESIDUAL_BWD, L - 1},
        {ROP_COPY, 0}, {ROP_IM2COL, 1}, {ROP_TOKENS_FWD, 1}, {ROP_TOKENS_BWD, 1}, {ROP_GATHER_ROWS, 0},
        {ROP_ADAMW, 0}, {ROP_SOFTMAX_CE, 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK(t[want[i].op].calls == want[i].calls, "%s: %ld calls, expected %ld", roof_op_name(want[i].op),
              t[want[i].op].calls, want[i].calls);
    // residual + LayerNorm: session 3 counts the four ops it replaces (the stream copy 8, the residual 12, the
    // LayerNorm 8 bytes per element, stats and parameters; 3 kernels); now (fp32 buffers here) one kernel
    // reading x and the branch, writing x and the LayerNorm output (16 bytes per element); the target the
    // same with a bf16 branch and output (12 bytes per element)
    const double e = (double)B * T * D, calls = 2.0 * L, small = 8.0 * B * T + 8.0 * D;
    const RoofTally *f = &t[ROP_RESIDUAL_LAYERNORM_FWD];
    CHECK(f->bytes[ROOF_SESSION3] == calls * (28 * e + small) && f->kernels[ROOF_SESSION3] == 3 * calls,
          "residual + LayerNorm session 3: %.0f bytes, %.0f kernels", f->bytes[ROOF_SESSION3], f->kernels[ROOF_SESSION3]);
    CHECK(f->bytes[ROOF_CURRENT] == calls * (16 * e + small) && f->kernels[ROOF_CURRENT] == calls,
          "residual + LayerNorm current: %.0f bytes, %.0f kernels", f->bytes[ROOF_CURRENT], f->kernels[ROOF_CURRENT]);
    CHECK(f->bytes[ROOF_TARGET] == calls * (12 * e + small) && f->kernels[ROOF_TARGET] == calls,
          "residual + LayerNorm target: %.0f bytes, %.0f kernels", f->bytes[ROOF_TARGET], f->kernels[ROOF_TARGET]);
    // backward: session 3 as layernorm_bwd + residual_bwd; now and target one pass (12 B + dout's element per
    // element of the LayerNorm rows, dbr's element) plus the five column-sum kernels of dw, db, dgamma (dout
    // and x, dout, dx and br)
    const RoofTally *bw = &t[ROP_LAYERNORM_RESIDUAL_BWD];
    const RoofCost lnb = roof_layernorm_bwd(ROOF_SESSION3, B * T, D, 4),
                   rb = roof_residual_bwd(ROOF_SESSION3, B, T, D, 1, 4, 4);
    CHECK(bw->bytes[ROOF_SESSION3] == (L + 1) * (lnb.bytes + rb.bytes) && bw->kernels[ROOF_SESSION3] == (L + 1) * 8.0,
          "LayerNorm + residual backward session 3: %.0f bytes, %.0f kernels", bw->bytes[ROOF_SESSION3],
          bw->kernels[ROOF_SESSION3]);
    CHECK(bw->bytes[ROOF_CURRENT] == (L + 1) * (20 * e + 8.0 * B * T + 20 * e + 16.0 * D) &&
              bw->kernels[ROOF_CURRENT] == 7.0 * (L + 1),
          "LayerNorm + residual backward current: %.0f bytes, %.0f kernels", bw->bytes[ROOF_CURRENT], bw->kernels[ROOF_CURRENT]);
    CHECK(bw->bytes[ROOF_TARGET] == (L + 1) * (16 * e + 8.0 * B * T + 8 * e + 6 * e + 16.0 * D) &&
              bw->kernels[ROOF_TARGET] == 7.0 * (L + 1),
          "LayerNorm + residual backward target: %.0f bytes, %.0f kernels", bw->bytes[ROOF_TARGET], bw->kernels[ROOF_TARGET]);
    // GELU: the L forward ones fused with fc1 (now: the GEMM and one epilogue pass, 2 kernels; the target: the
    // bias and GELU in the GEMM's epilogue, one kernel: bf16 operands, pre and act written in bf16 from the
    // accumulator, no fp32 round trip), the L re-derived ones launch alone
    CHECK(t[ROP_GELU_FWD].kernels[ROOF_TARGET] == L, "GELU target kernels %.0f", t[ROP_GELU_FWD].kernels[ROOF_TARGET]);
    const double Hf = cfg.ffn_hidden, rows = (double)B * T;
    CHECK(t[ROP_LINEAR_GELU_FWD].kernels[ROOF_TARGET] == L && t[ROP_LINEAR_GELU_FWD].kernels[ROOF_CURRENT] == 2 * L,
          "fc1 + GELU kernels %.0f / %.0f", t[ROP_LINEAR_GELU_FWD].kernels[ROOF_CURRENT],
          t[ROP_LINEAR_GELU_FWD].kernels[ROOF_TARGET]);
    const double fused_target = L * (2 * (rows * D + D * Hf) + 2 * rows * Hf + 4 * Hf + 2 * rows * Hf);
    CHECK(t[ROP_LINEAR_GELU_FWD].bytes[ROOF_TARGET] == fused_target, "fc1 + GELU target bytes %.0f, expected %.0f",
          t[ROP_LINEAR_GELU_FWD].bytes[ROOF_TARGET], fused_target);
    // the target does not depend on how the model spells fc1 + GELU: the fused op costs what the unfused pair
    // (linear_fwd, then a GELU found in its epilogue) costs there, bytes, kernels and time
    {
        const RoofCost lt = roof_linear_fwd(ROOF_TARGET, rows, D, Hf, 1, 2, 2), gt = roof_gelu_fwd(ROOF_TARGET, rows * Hf, 1, 2, 2);
        const RoofCard c = h100();
        const double want_s = L * (roof_time_s(&c, ROOF_TARGET, RF_GEMM, lt) + roof_time_s(&c, ROOF_TARGET, RF_ACTIVATION, gt));
        CHECK(t[ROP_LINEAR_GELU_FWD].bytes[ROOF_TARGET] == L * (lt.bytes + gt.bytes) &&
                  t[ROP_LINEAR_GELU_FWD].kernels[ROOF_TARGET] == L * (lt.kernels + gt.kernels) &&
                  fabs(t[ROP_LINEAR_GELU_FWD].pred_s[ROOF_TARGET] - want_s) <= 1e-12 * want_s,
              "fc1 + GELU target: %.0f bytes %.0f kernels %.9g s, the unfused pair %.0f bytes %.0f kernels %.9g s",
              t[ROP_LINEAR_GELU_FWD].bytes[ROOF_TARGET], t[ROP_LINEAR_GELU_FWD].kernels[ROOF_TARGET],
              t[ROP_LINEAR_GELU_FWD].pred_s[ROOF_TARGET], L * (lt.bytes + gt.bytes), L * (lt.kernels + gt.kernels), want_s);
        for (int bias = 0; bias < 2; bias++) { // w12 + SwiGLU, with and without a bias
            const double Hd = 24;
            const RoofCost a = roof_linear_swiglu_fwd(ROOF_TARGET, rows, D, Hd, bias, 0, 2, 2, 2),
                           p = roof_linear_swiglu_fwd(ROOF_TARGET, rows, D, Hd, bias, 1, 2, 2, 2),
                           ul = roof_linear_fwd(ROOF_TARGET, rows, D, 2 * Hd, 1, 2, 2),
                           us = roof_swiglu_fwd(ROOF_TARGET, rows, Hd, 1, 2, 2);
            CHECK(a.bytes + p.bytes == ul.bytes + us.bytes - (bias ? 0 : 8 * Hd) && a.kernels + p.kernels == 1 &&
                      a.flops == ul.flops,
                  "w12 + SwiGLU target (bias %d): %.0f bytes, the unfused pair %.0f", bias, a.bytes + p.bytes,
                  ul.bytes + us.bytes);
        }
    }
    // current: exactly the unfused pair's (the fp32 GEMM with its bias epilogue, then the GELU kernel)
    const RoofCost lin = roof_linear_fwd(ROOF_CURRENT, rows, D, Hf, 1, 4, 4),
                   gel = roof_gelu_fwd(ROOF_CURRENT, rows * Hf, 0, 4, 4);
    CHECK(t[ROP_LINEAR_GELU_FWD].bytes[ROOF_CURRENT] == L * (lin.bytes + gel.bytes),
          "fc1 + GELU current bytes %.0f, expected %.0f", t[ROP_LINEAR_GELU_FWD].bytes[ROOF_CURRENT],
          L * (lin.bytes + gel.bytes));
    // and its time: the GEMM's and the pass's rooflines added (sequential kernels), as the two ops' were
    const RoofCard card = h100();
    const double want_s = L * (roof_time_s(&card, ROOF_CURRENT, RF_GEMM, lin) + roof_time_s(&card, ROOF_CURRENT, RF_GEMM, gel));
    CHECK(fabs(t[ROP_LINEAR_GELU_FWD].pred_s[ROOF_CURRENT] - want_s) <= 1e-12 * want_s, "fc1 + GELU current time %.9g s, expected %.9g",
          t[ROP_LINEAR_GELU_FWD].pred_s[ROOF_CURRENT], want_s);
    // LayerNorm forward: all but block 0's first (after the tokens) fused after a residual; re-derived ones launch
    CHECK(t[ROP_LAYERNORM_FWD].kernels[ROOF_TARGET] == 1 + 2 * L, "LayerNorm target kernels %.0f",
          t[ROP_LAYERNORM_FWD].kernels[ROOF_TARGET]);
    CHECK(t[ROP_LAYERNORM_FWD].kernels[ROOF_CURRENT] == 2 * L + 1, "LayerNorm current kernels");
    RoofTally fam[RF_COUNT];
    roof_family_totals(t, fam);
    CHECK(fam[RF_GEMM].calls == 8 * L + 2, "GEMM family %ld calls", fam[RF_GEMM].calls);
    CHECK(fam[RF_LAYERNORM].calls == 6 * L + 2, "LayerNorm family %ld calls", fam[RF_LAYERNORM].calls);
    CHECK(fam[RF_ATTENTION].calls == 2 * L && fam[RF_ACTIVATION].calls == 2 * L, "attention/activation family calls");
    CHECK(fam[RF_OPTIMIZER].calls == 0 && fam[RF_HEAD_LOSS].calls == 0, "no optimizer or head ops in a ViT pass");
    double sum = 0;
    for (int k = 0; k < RF_COUNT; k++) sum += fam[k].pred_s[ROOF_CURRENT];
    CHECK(sum > 0 && roof_step_s(fam, ROOF_CURRENT) == sum - fam[RF_UPLOAD].pred_s[ROOF_CURRENT], "step time");
    CHECK(roof_step_s(fam, ROOF_TARGET) < roof_step_s(fam, ROOF_CURRENT), "the target is not faster");
    vit_free(&vit);
    backend_free(be);
}

// With stochastic depth the residual + LayerNorm op gathers the kept rows of the next sublayer itself: the
// only gather left in the forward is block 0's LN1 input. The dropped images' rows are copied by the
// fused kernel (8 bytes per element), the kept ones updated (10), the gathered copy written (4).
TEST(drop_path_gathers_fused) {
    const int L = 3, B = 4, crop = 16, D = 16, T = 17;
    VitConfig cfg = small_vit("mlp", 0, 0.5, L);
    Vit vit;
    Backend *be = count_vit(&cfg, B, crop, 0, 1, &vit);
    const RoofTally *t = backend_timed_tally(be);
    CHECK(t[ROP_GATHER_ROWS].calls == 1, "%ld gathers", t[ROP_GATHER_ROWS].calls);
    CHECK(t[ROP_LAYERNORM_FWD].calls == 1, "%ld LayerNorms", t[ROP_LAYERNORM_FWD].calls);
    const RoofTally *f = &t[ROP_RESIDUAL_LAYERNORM_FWD];
    CHECK(f->calls == 2 * L, "%ld residual + LayerNorm calls", f->calls);
    const int S = vit_drop_subset_size(&vit, B);
    const double row = (double)T * D, stream = 10.0 * S * row + 8.0 * (B - S) * row;
    // 2L - 1 calls normalize a subset (gathered), the last the final norm of all rows
    const double want = (2 * L - 1) * (stream + 6.0 * S * row + 8.0 * S * T + 8 * D) + stream + 2.0 * B * row +
                        8.0 * B * T + 8 * D;
    CHECK(S == 2 && f->bytes[ROOF_TARGET] == want, "residual + LayerNorm target %.0f bytes, expected %.0f (S=%d)",
          f->bytes[ROOF_TARGET], want, S);
    CHECK(f->kernels[ROOF_TARGET] == 2 * L, "target kernels %.0f", f->kernels[ROOF_TARGET]);
    vit_free(&vit);
    backend_free(be);
}

// The roofline of one call: the larger of the compute and memory roofs, or the launch floor.
TEST(time_is_the_max_of_the_roofs) {
    const RoofCard c = h100();
    RoofCost big_gemm = roof_linear_fwd(ROOF_CURRENT, 8192, 8192, 8192, 1, 4, 4);
    CHECK(roof_time_s(&c, ROOF_CURRENT, RF_GEMM, big_gemm) == big_gemm.flops / (c.peak_tflops * 1e12), "compute-bound");
    RoofCost ln = roof_layernorm_fwd(ROOF_CURRENT, 1 << 20, 1024, 0, 4);
    CHECK(roof_time_s(&c, ROOF_CURRENT, RF_LAYERNORM, ln) == ln.bytes / (c.bw_tbs * 1e12), "memory-bound");
    CHECK(ln.bytes == 8.0 * (1 << 20) * 1024 + 8.0 * (1 << 20) + 8 * 1024, "LayerNorm bytes %.0f", ln.bytes);
    RoofCost tiny = roof_center_update(ROOF_CURRENT, 16);
    CHECK(roof_time_s(&c, ROOF_CURRENT, RF_HEAD_LOSS, tiny) == c.launch_us[ROOF_CURRENT] * 1e-6, "launch floor");
    // flash attention: nothing T x T in memory, the same forward FLOPs
    RoofCost s3 = roof_attention_fwd(ROOF_SESSION3, 32, 257, 16, 64, 1, 2, 2);
    RoofCost tgt = roof_attention_fwd(ROOF_TARGET, 32, 257, 16, 64, 1, 2, 2);
    CHECK(s3.flops == tgt.flops && tgt.bytes < s3.bytes / 3, "flash attention bytes %.3g vs %.3g", tgt.bytes, s3.bytes);
    // session 3 ignores the element sizes and the flash flag: fp32 and materialised, as the fp32 call
    RoofCost s3_fp32 = roof_attention_fwd(ROOF_CURRENT, 32, 257, 16, 64, 0, 4, 4);
    CHECK(s3.bytes == s3_fp32.bytes && s3.kernels == s3_fp32.kernels, "session 3 is not the fp32 GEMM path");
    // the double-precision roof: the entropy's log in double per 4-byte element outlasts its memory traffic
    RoofCost ent = roof_entropy_mean(ROOF_CURRENT, 4096, 65536);
    CHECK(ent.fp64 > 0 && roof_time_s(&c, ROOF_CURRENT, RF_HEAD_LOSS, ent) == ent.fp64 / (c.fp64_tips * 1e12),
          "entropy_mean is not at the FP64 roof");
    RoofCost ce = roof_softmax_ce(ROOF_CURRENT, 4096, 65536, 1, 1);
    CHECK(roof_time_s(&c, ROOF_CURRENT, RF_HEAD_LOSS, ce) == ce.bytes / (c.bw_tbs * 1e12), "softmax_ce not memory-bound");
    RoofCard x;
    CHECK(roof_card("a100x", &x) == -1, "an unknown card accepted");
}

// A fused linear + activation is a compute-bound GEMM and then a bandwidth-bound pass: the counted time
// is the sum of the two kernels' rooflines, not the roofline of their summed work (which would overlap
// the pass with the GEMM and undercount, ViT-L/14's w12 + SwiGLU by ~5 ms a step).
TEST(fused_ops_time_their_kernels_in_turn) {
    const RoofCard c = h100();
    Backend *be = backend_timed_new(backend_cpu_new(), &c, 0); // counting only: nothing runs
    backend_timed_set(be, 1, 0);
    float dummy[1];
    const int rows = 32 * 257, n_in = 1024, n_out = 4096;
    be->linear_gelu_fwd(be, dummy, dummy, dummy, dummy, dummy, rows, n_in, n_out);
    be->linear_swiglu_fwd(be, dummy, dummy, dummy, dummy, dummy, rows, n_in, n_out / 2);
    const RoofTally *t = backend_timed_tally(be);
    for (int l = 0; l < ROOF_NLAYOUTS; l++)
        for (int sw = 0; sw < 2; sw++) {
            const RoofLayout L = (RoofLayout)l;
            const RoofCost g = sw ? roof_linear_swiglu_fwd(L, rows, n_in, n_out / 2, 1, 0, 4, 4, 4)
                                 : roof_linear_gelu_fwd(L, rows, n_in, n_out, 1, 0, 4, 4, 4);
            const RoofCost p = sw ? roof_linear_swiglu_fwd(L, rows, n_in, n_out / 2, 1, 1, 4, 4, 4)
                                 : roof_linear_gelu_fwd(L, rows, n_in, n_out, 1, 1, 4, 4, 4);
            const RoofCost sum = {g.flops + p.flops, g.bytes + p.bytes, g.kernels + p.kernels, g.fp64 + p.fp64};
            const double want = roof_time_s(&c, L, RF_GEMM, g) + roof_time_s(&c, L, RF_GEMM, p);
            const RoofTally *k = &t[sw ? ROP_LINEAR_SWIGLU_FWD : ROP_LINEAR_GELU_FWD];
            CHECK(k->calls == 1 && k->bytes[l] == sum.bytes && k->flops[l] == sum.flops &&
                      k->kernels[l] == (L == ROOF_TARGET ? 1 : 2), // the target: one GEMM with the epilogue in it
                  "%s: the counts are not the parts' sum", roof_op_name(sw ? ROP_LINEAR_SWIGLU_FWD : ROP_LINEAR_GELU_FWD));
            CHECK(fabs(k->pred_s[l] - want) <= 1e-12 * want, "%s %s: %.9g s, the kernels in turn %.9g s",
                  roof_op_name(sw ? ROP_LINEAR_SWIGLU_FWD : ROP_LINEAR_GELU_FWD), roof_layout_name(L), k->pred_s[l], want);
            CHECK(want > 1.05 * roof_time_s(&c, L, RF_GEMM, sum), "the shape does not tell the two apart");
        }
    backend_free(be);
}

// The device-side clip runs every step but streams the gradients only when the norm is over the limit: counted
// as the step that clips nothing (one launch, no bytes), as the by-value path's (no scale call) was; the
// by-value scale of a clipping step stays a full pass.
TEST(device_clip_counts_the_no_clip_step) {
    const RoofCard c = h100();
    Backend *be = backend_timed_new(backend_cpu_new(), &c, 0); // counting only: nothing runs
    backend_timed_set(be, 1, 0);
    float dummy[1];
    be->clip_scale_ss(be, dummy, 1000000, 0, NULL);
    const RoofTally *t = backend_timed_tally(be);
    for (int l = 0; l < ROOF_NLAYOUTS; l++)
        CHECK(t[ROP_SCALE].calls == 1 && t[ROP_SCALE].bytes[l] == 0 && t[ROP_SCALE].kernels[l] == 1,
              "clip_scale_ss %s: %.0f bytes, %.0f kernels", roof_layout_name((RoofLayout)l), t[ROP_SCALE].bytes[l],
              t[ROP_SCALE].kernels[l]);
    be->scale(be, dummy, 0.5f, 1000000);
    CHECK(t[ROP_SCALE].bytes[ROOF_CURRENT] == 8e6, "a by-value scale: %.0f bytes", t[ROP_SCALE].bytes[ROOF_CURRENT]);
    backend_free(be);
}
