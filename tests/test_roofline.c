// The roofline model (model/roofline.h) and the timing backend that counts it (model/backend_timed.h):
// the wrapper changes no result; its counted matrix-product FLOPs are vit_flops()'s analytic total; the
// calls per op are what the ViT's structure implies; the target layout's fusions are found.
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "model/backend.h"
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
    cfg.dim = 16, cfg.heads = 2, cfg.depth = depth, cfg.ffn_hidden = 24;
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

// Forward (and backward) of one crop group on the wrapped CPU backend, counting; returns the wrapper
// (its tallies) for the caller to inspect and free.
static Backend *count_vit(const VitConfig *cfg, int B, int crop, int backward, int use_drop, Vit *vit_out) {
    const RoofCard card = h100();
    Backend *be = backend_timed_new(backend_cpu_new(), &card, 1);
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

static double matmul_flops(const RoofTally *t, RoofLayout l) {
    return t[ROP_LINEAR_FWD].flops[l] + t[ROP_LINEAR_BWD].flops[l] + t[ROP_GEMM].flops[l];
}

// The counted GEMM + attention FLOPs of the current layout are vit_flops(), the analytic count the
// benchmarks' MFU uses, exactly (integers in doubles); attention alone is 4 L D T^2 per image forward,
// three times that with backward.
TEST(counted_flops_equal_vit_flops) {
    const char *ffns[2] = {"mlp", "swiglu"};
    for (int k = 0; k < 2; k++)
        for (int backward = 0; backward < 2; backward++) {
            VitConfig cfg = small_vit(ffns[k], k, 0.0, 3);
            const int B = 3, crop = 16, T = 1 + k + 16;
            Vit vit;
            Backend *be = count_vit(&cfg, B, crop, backward, 0, &vit);
            const RoofTally *t = backend_timed_tally(be);
            const double att = 4.0 * (backward ? 3 : 1) * cfg.depth * cfg.dim * (double)T * T * B;
            const double want = vit_flops(&cfg, B, crop, backward);
            const double got = matmul_flops(t, ROOF_CURRENT) + t[ROP_ATTENTION_FWD].flops[ROOF_CURRENT] +
                               t[ROP_ATTENTION_BWD].flops[ROOF_CURRENT];
            CHECK(got == want, "%s backward=%d: counted %.0f FLOPs, vit_flops %.0f", ffns[k], backward, got, want);
            const double got_att = t[ROP_ATTENTION_FWD].flops[ROOF_CURRENT] + t[ROP_ATTENTION_BWD].flops[ROOF_CURRENT];
            CHECK(got_att == att, "attention %.0f FLOPs, expected %.0f", got_att, att);
            // the target does the same GEMMs; flash backward recomputes (14 instead of 8 B T^2 D)
            CHECK(matmul_flops(t, ROOF_TARGET) == matmul_flops(t, ROOF_CURRENT), "target GEMM FLOPs differ");
            vit_free(&vit);
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
        {ROP_LINEAR_FWD, 4 * L + 1}, {ROP_LINEAR_BWD, 4 * L + 1}, {ROP_ATTENTION_FWD, L}, {ROP_ATTENTION_BWD, L},
        // forward: block 0's LN1 alone, every other LayerNorm (the final norm too) fused with the residual
        // before it; backward re-derives both of each block's, and fuses LN2's backward with the attention
        // branch's residual backward, the final norm's with the last block's FFN residual backward
        {ROP_LAYERNORM_FWD, 2 * L + 1}, {ROP_RESIDUAL_LAYERNORM_FWD, 2 * L}, {ROP_LAYERNORM_BWD, L},
        {ROP_LAYERNORM_RESIDUAL_BWD, L + 1}, {ROP_GELU_FWD, 2 * L}, {ROP_GELU_BWD, L}, {ROP_RESIDUAL_FWD, 0},
        {ROP_RESIDUAL_BWD, L - 1},
        {ROP_COPY, 0}, {ROP_IM2COL, 1}, {ROP_TOKENS_FWD, 1}, {ROP_TOKENS_BWD, 1}, {ROP_GATHER_ROWS, 0},
        {ROP_ADAMW, 0}, {ROP_SOFTMAX_CE, 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK(t[want[i].op].calls == want[i].calls, "%s: %ld calls, expected %ld", roof_op_name(want[i].op),
              t[want[i].op].calls, want[i].calls);
    // current: the four ops it replaces (the stream copy 8, the residual 12, the LayerNorm 8 bytes per
    // element, stats and parameters; 3 kernels); target: one kernel reading x and the bf16 branch, writing x
    // and the bf16 LayerNorm output (12 bytes per element)
    const double e = (double)B * T * D, calls = 2.0 * L, small = 8.0 * B * T + 8.0 * D;
    const RoofTally *f = &t[ROP_RESIDUAL_LAYERNORM_FWD];
    CHECK(f->bytes[ROOF_CURRENT] == calls * (28 * e + small) && f->kernels[ROOF_CURRENT] == 3 * calls,
          "residual + LayerNorm current: %.0f bytes, %.0f kernels", f->bytes[ROOF_CURRENT], f->kernels[ROOF_CURRENT]);
    CHECK(f->bytes[ROOF_TARGET] == calls * (12 * e + small) && f->kernels[ROOF_TARGET] == calls,
          "residual + LayerNorm target: %.0f bytes, %.0f kernels", f->bytes[ROOF_TARGET], f->kernels[ROOF_TARGET]);
    // backward: current as layernorm_bwd + residual_bwd; target one pass (14 B per element for the LayerNorm
    // rows, 2 for dbr) plus the five column-sum kernels of dw, db, dgamma (dout and x, dout, dx and br)
    const RoofTally *bw = &t[ROP_LAYERNORM_RESIDUAL_BWD];
    const RoofCost lnb = roof_layernorm_bwd(ROOF_CURRENT, B * T, D), rb = roof_residual_bwd(ROOF_CURRENT, B, T, D, 1);
    CHECK(bw->bytes[ROOF_CURRENT] == (L + 1) * (lnb.bytes + rb.bytes) && bw->kernels[ROOF_CURRENT] == (L + 1) * 8.0,
          "LayerNorm + residual backward current: %.0f bytes, %.0f kernels", bw->bytes[ROOF_CURRENT],
          bw->kernels[ROOF_CURRENT]);
    CHECK(bw->bytes[ROOF_TARGET] == (L + 1) * (16 * e + 8.0 * B * T + 8 * e + 6 * e + 16.0 * D) &&
              bw->kernels[ROOF_TARGET] == 7.0 * (L + 1),
          "LayerNorm + residual backward target: %.0f bytes, %.0f kernels", bw->bytes[ROOF_TARGET], bw->kernels[ROOF_TARGET]);
    // GELU: the L forward ones in fc1's epilogue (no launch), the L re-derived ones launch
    CHECK(t[ROP_GELU_FWD].kernels[ROOF_TARGET] == L, "GELU target kernels %.0f", t[ROP_GELU_FWD].kernels[ROOF_TARGET]);
    CHECK(t[ROP_LAYERNORM_FWD].kernels[ROOF_TARGET] == 1 + 2 * L, "LayerNorm target kernels %.0f",
          t[ROP_LAYERNORM_FWD].kernels[ROOF_TARGET]);
    CHECK(t[ROP_LAYERNORM_FWD].kernels[ROOF_CURRENT] == 2 * L + 1, "LayerNorm current kernels");
    RoofTally fam[RF_COUNT];
    roof_family_totals(t, fam);
    CHECK(fam[RF_GEMM].calls == 8 * L + 2, "GEMM family %ld calls", fam[RF_GEMM].calls);
    CHECK(fam[RF_LAYERNORM].calls == 6 * L + 2, "LayerNorm family %ld calls", fam[RF_LAYERNORM].calls);
    CHECK(fam[RF_ATTENTION].calls == 2 * L && fam[RF_ACTIVATION].calls == 3 * L, "attention/activation family calls");
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
    RoofCost big_gemm = roof_linear_fwd(ROOF_CURRENT, 8192, 8192, 8192, 1);
    CHECK(roof_time_s(&c, ROOF_CURRENT, RF_GEMM, big_gemm) == big_gemm.flops / (c.peak_tflops * 1e12), "compute-bound");
    RoofCost ln = roof_layernorm_fwd(ROOF_CURRENT, 1 << 20, 1024, 0);
    CHECK(roof_time_s(&c, ROOF_CURRENT, RF_LAYERNORM, ln) == ln.bytes / (c.bw_tbs * 1e12), "memory-bound");
    CHECK(ln.bytes == 8.0 * (1 << 20) * 1024 + 8.0 * (1 << 20) + 8 * 1024, "LayerNorm bytes %.0f", ln.bytes);
    RoofCost tiny = roof_center_update(ROOF_CURRENT, 16);
    CHECK(roof_time_s(&c, ROOF_CURRENT, RF_HEAD_LOSS, tiny) == c.launch_us[ROOF_CURRENT] * 1e-6, "launch floor");
    // flash attention: nothing T x T in memory, the same forward FLOPs
    RoofCost cur = roof_attention_fwd(ROOF_CURRENT, 32, 257, 16, 64), tgt = roof_attention_fwd(ROOF_TARGET, 32, 257, 16, 64);
    CHECK(cur.flops == tgt.flops && tgt.bytes < cur.bytes / 3, "flash attention bytes %.3g vs %.3g", tgt.bytes, cur.bytes);
    RoofCard x;
    CHECK(roof_card("a100x", &x) == -1, "an unknown card accepted");
}
