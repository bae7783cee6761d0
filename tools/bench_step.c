// The whole DINOv2 training step on a backend: teacher forward on the global crops, student forward
// on global (iBOT-masked) and local crops, the shared DINO/iBOT head, softmax centering, the DINO,
// iBOT and KoLeo losses, backward, per-submodule clipping, AdamW and the EMA teacher, with the next
// batch staged and uploaded while the step runs (as the trainer does). The same step as
// tests/torch_ref/bench_step_torch.py. Prints images/s, the step split (forward + backward, update,
// staging of the next batch), the model FLOPs utilisation against the card's measured dense bf16 rate,
// the device memory, and one machine-readable RESULT line; then the per-op-family roofline table
// (model/roofline.h): for each family of ops the calls, GFLOP, GB and the predicted time on a card
// (--card, default H100) in the session-3, the current and the GPU issue's target layouts, next to the time
// measured with a synchronisation around every op (--op-steps more steps through model/backend_timed.h;
// on the CPU backend the measured column is the CPU's). --roofline-only counts one step of any model
// on the allocate-only plan backend (nothing computed, no GPU, seconds) and prints the prediction alone;
// --config takes the model, batch, crops and heads from a recipe (key=value overrides after it):
//
//   bench_step --roofline-only --config configs/vitl14.yaml [train.batch_size_per_gpu=64] [--per-op]
//
//   bench_step --backend cuda --arch vit_large --batch 32 [--recompute]
//   bench_step --backend cpu --arch vit_small --batch 2 --K 8192 --iters 2     (the CPU reference)
//   cudaemu_bench_step --backend cuda --depth 1 --global-size 56 --local-size 28 --K 512 --peak-size 256
//                      (the same program under the CUDA execution layer: tools/gpu_check.sh --dry)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/clock.h"
#include "common/rng.h"
#include "common/threads.h"
#include "data/masking.h"
#include "model/backend.h"
#include "model/backend_plan.h"
#include "model/backend_timed.h"
#include "model/roofline.h"
#include "model/vit.h"
#include "train/config.h"
#include "train/ssl_step.h"
#include "train/train.h"
#include "tools/bench_backend.h"
#ifdef DINO_HAVE_CUDA
#include "model/cuda/backend_cuda.h"
#endif

static void usage(void) {
    fprintf(stderr,
            "usage: bench_step [--backend cuda|cpu] [--arch vit_small|vit_base|vit_large|vit_giant2] [--batch B]\n"
            "                  [--local 8] [--global-size 224] [--local-size 98] [--patch 14] [--registers 0]\n"
            "                  [--ffn mlp|swiglu] [--depth L] [--K 65536] [--drop-path 0] [--recompute]\n"
            "                  [--iters 10] [--warmup 3] [--no-peak] [--peak-size 8192]\n"
            "                  [--card h100|h200] [--op-steps 2] [--per-op] [--roofline-only]\n"
            "                  [--config recipe.yaml [key=value ...]]   (the recipe's model, batch, crops, heads)\n");
    exit(2);
}

// Head FLOPs per row, forward: the MLP (in -> hidden -> ... -> bottleneck) and the last layer to K.
static double head_flops_per_row(const HeadConfig *h) {
    double f = 0;
    if (h->nlayers == 1) f = (double)h->in_dim * h->bottleneck;
    else f = (double)h->in_dim * h->hidden + (double)(h->nlayers - 2) * h->hidden * h->hidden + (double)h->hidden * h->bottleneck;
    return 2.0 * (f + (double)h->bottleneck * h->K);
}

// ---- the per-op-family roofline table ----------------------------------------------------------------

static double gb(double b) { return b / 1e9; }
static double ms(double s) { return s * 1e3; }

// One row: calls, then per layout GFLOP, GB and predicted ms (session 3, current, target); the measured ms
// and measured / predicted (current layout) after the current layout's columns when measured.
static void roof_row(const char *name, const RoofTally *t, double per, int measured) {
    printf("| %s | %.0f |", name, t->calls * per);
    for (int l = 0; l < ROOF_NLAYOUTS; l++) {
        printf(" %.2f | %.3f | %.3f |", t->flops[l] * per / 1e9, gb(t->bytes[l] * per), ms(t->pred_s[l] * per));
        if (l != ROOF_CURRENT || !measured) continue;
        if (t->pred_s[ROOF_CURRENT] > 0) printf(" %.3f | %.2f |", ms(t->meas_s * per), t->meas_s / t->pred_s[ROOF_CURRENT]);
        else printf(" %.3f | - |", ms(t->meas_s * per));
    }
    printf("\n");
}

static void roof_header(const char *first, int measured) {
    printf("\n| %s | calls |", first);
    for (int l = 0; l < ROOF_NLAYOUTS; l++) {
        const char *n = roof_layout_name((RoofLayout)l);
        printf(" GFLOP %s | GB %s | pred ms %s |", n, n, n);
        if (l == ROOF_CURRENT && measured) printf(" measured ms | measured / pred |");
    }
    printf("\n| --- | --- |");
    for (int l = 0; l < ROOF_NLAYOUTS; l++) printf(" --- | --- | --- |%s", l == ROOF_CURRENT && measured ? " --- | --- |" : "");
    printf("\n");
}

// The table for `steps` counted steps (figures per step). measured: a label for the measured column
// (NULL: none). model_flops: the step's model FLOPs (the MFU numerator, as the benchmark's).
static void print_roofline(const RoofTally *ops, int steps, const RoofCard *card, const char *measured,
                           double model_flops, int per_op) {
    RoofTally fam[RF_COUNT], all;
    roof_family_totals(ops, fam);
    memset(&all, 0, sizeof all);
    for (int f = 0; f < RF_COUNT; f++) {
        if (f == RF_UPLOAD) continue; // overlapped with the step
        all.calls += fam[f].calls, all.meas_s += fam[f].meas_s;
        for (int l = 0; l < ROOF_NLAYOUTS; l++) {
            all.flops[l] += fam[f].flops[l], all.bytes[l] += fam[f].bytes[l], all.pred_s[l] += fam[f].pred_s[l];
        }
    }
    const double per = 1.0 / steps;
    const int m = measured != NULL;
    printf("\nroofline per op family, one step (mean of %d): predicted on %s = max(FLOP / %.0f TFLOP/s, bytes / %.2f "
           "TB/s, FP64 / %.1f T inst/s, kernels x %.0f us eager | %.0f us graph); host copies at %.0f GB/s; layouts: "
           "session-3 (fp32 activations, materialised attention), current (the backend's stored types, flash "
           "attention), target (issue #12)%s%s\n",
           steps, card->name, card->peak_tflops, card->bw_tbs, card->fp64_tips, card->launch_us[ROOF_CURRENT],
           card->launch_us[ROOF_TARGET], card->host_gbs, m ? "; measured: " : "", m ? measured : "");
    roof_header("family", m);
    for (int f = 0; f < RF_COUNT; f++)
        if (fam[f].calls) roof_row(roof_family_name((RoofFamily)f), &fam[f], per, m);
    roof_row("**step** (without the overlapped upload)", &all, per, m);
    if (per_op) {
        roof_header("op", m);
        for (int i = 0; i < ROP_COUNT; i++)
            if (ops[i].calls) roof_row(roof_op_name((RoofOp)i), &ops[i], per, m);
    }
    double t[ROOF_NLAYOUTS];
    for (int l = 0; l < ROOF_NLAYOUTS; l++) t[l] = all.pred_s[l] * per;
    const double s3 = t[ROOF_SESSION3], cur = t[ROOF_CURRENT], tgt = t[ROOF_TARGET];
    const double peak = card->peak_tflops * 1e12, spec = card->peak_spec_tflops * 1e12;
    printf("\npredicted step: session-3 %.2f ms, current %.2f ms (%.2fx), target %.2f ms (%.2fx over current); model "
           "FLOPs %.2f TFLOP per step; predicted MFU session-3 %.1f%% / current %.1f%% / target %.1f%% of %.0f TFLOP/s "
           "(%.1f%% / %.1f%% / %.1f%% of the %.0f TFLOP/s spec; model FLOPs as the benchmark's MFU counts them: no "
           "stochastic depth)\n",
           ms(s3), ms(cur), s3 / cur, ms(tgt), cur / tgt, model_flops / 1e12, 100 * model_flops / s3 / peak,
           100 * model_flops / cur / peak, 100 * model_flops / tgt / peak, card->peak_tflops, 100 * model_flops / s3 / spec,
           100 * model_flops / cur / spec, 100 * model_flops / tgt / spec, card->peak_spec_tflops);
    // the matrix-product FLOPs the ops really do (stochastic depth skips blocks; flash backward recomputes)
    printf("hardware FLOPs (counted matrix products): session-3 %.2f / current %.2f / target %.2f TFLOP per step, "
           "utilisation %.1f%% / %.1f%% / %.1f%% of %.0f TFLOP/s\n",
           all.flops[ROOF_SESSION3] * per / 1e12, all.flops[ROOF_CURRENT] * per / 1e12, all.flops[ROOF_TARGET] * per / 1e12,
           100 * all.flops[ROOF_SESSION3] * per / s3 / peak, 100 * all.flops[ROOF_CURRENT] * per / cur / peak,
           100 * all.flops[ROOF_TARGET] * per / tgt / peak, card->peak_tflops);
    if (m) printf("measured (synchronised per op): %.2f ms per step, %.2fx the current prediction\n", ms(all.meas_s * per),
                  all.meas_s / all.pred_s[ROOF_CURRENT]);
    printf("ROOFLINE card=%s pred_current_ms=%.3f pred_target_ms=%.3f pred_session3_ms=%.3f measured_ms=%.3f "
           "model_tflop=%.4f\n",
           strncmp(card->name, "H200", 4) == 0 ? "h200" : "h100", ms(cur), ms(tgt), ms(s3), m ? ms(all.meas_s * per) : -1.0,
           model_flops / 1e12);
}

int main(int argc, char **argv) {
    dino_prefer_passive_openmp(argv);
    const char *backend = "cuda", *arch = "vit_small", *ffn = "mlp", *card_name = "h100", *config = NULL;
    int batch = 8, n_local = 8, gsize = 224, lsize = 98, patch = 14, registers = 0, depth = 0, K = 65536;
    int iters = 10, warmup = 3, no_peak = 0, recompute = 0, peak_size = 8192, op_steps = 2, per_op = 0, only = 0;
    double drop_path = 0;
    char *overrides[64];
    int n_overrides = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG_S(flag, var) else if (strcmp(a, flag) == 0 && v) { var = v; i++; }
#define ARG_I(flag, var) else if (strcmp(a, flag) == 0 && v) { var = atoi(v); i++; }
        if (0) {}
        ARG_S("--backend", backend) ARG_S("--arch", arch) ARG_S("--ffn", ffn) ARG_I("--batch", batch)
        ARG_I("--local", n_local) ARG_I("--global-size", gsize) ARG_I("--local-size", lsize) ARG_I("--patch", patch)
        ARG_I("--registers", registers) ARG_I("--depth", depth) ARG_I("--K", K) ARG_I("--iters", iters)
        ARG_I("--warmup", warmup) ARG_I("--peak-size", peak_size) ARG_S("--card", card_name) ARG_S("--config", config)
        ARG_I("--op-steps", op_steps)
        else if (strcmp(a, "--drop-path") == 0 && v) drop_path = atof(argv[++i]);
        else if (strcmp(a, "--recompute") == 0) recompute = 1;
        else if (strcmp(a, "--no-peak") == 0) no_peak = 1;
        else if (strcmp(a, "--per-op") == 0) per_op = 1;
        else if (strcmp(a, "--roofline-only") == 0) only = 1;
        else if (a[0] != '-' && strchr(a, '=') && n_overrides < 64) overrides[n_overrides++] = argv[i];
        else usage();
#undef ARG_S
#undef ARG_I
    }
    if (batch < 2 || iters <= 0 || warmup < 0 || n_local < 0 || K <= 0 || peak_size < 64 || op_steps < 0) usage(); // KoLeo needs 2 images
    if (n_overrides && !config) {
        fprintf(stderr, "bench_step: key=value overrides need --config\n");
        return 2;
    }
    if (only && op_steps == 0) op_steps = 1;
    RoofCard card;
    if (roof_card(card_name, &card)) {
        fprintf(stderr, "bench_step: unknown --card '%s' (known: h100, h200)\n", card_name);
        return 2;
    }

    char err[DINO_ERRLEN];
    // The model: from the flags, or from a recipe (--config)
    SslConfig sc;
    VitConfig vc;
    double mask_p = 0.5, mask_lo = 0.1, mask_hi = 0.5; // the reference's iBOT masking
    if (config) {
        Config cfg;
        if (config_load(&cfg, config, n_overrides, overrides, err) || train_ssl_config(&cfg, 1, 0, &sc, err)) {
            fprintf(stderr, "bench_step: %s\n", err);
            return 2;
        }
        vc = sc.vit;
        static char arch_name[64];
        snprintf(arch_name, sizeof arch_name, "%s", cfg.student.arch);
        arch = arch_name;
        batch = sc.batch, n_local = sc.n_local, gsize = sc.global_crop, lsize = sc.local_crop, patch = vc.patch;
        K = sc.dino_head.K;
        recompute = recompute || sc.recompute_activations;
        mask_p = cfg.ibot.mask_sample_probability;
        mask_lo = cfg.ibot.mask_ratio_min_max[0], mask_hi = cfg.ibot.mask_ratio_min_max[1];
    } else {
        if (vit_config_from_arch(&vc, arch, patch, gsize, registers, ffn, err)) {
            fprintf(stderr, "bench_step: %s\n", err);
            return 2;
        }
        if (depth > 0) vc.depth = depth;
        vc.drop_path_rate = drop_path;
        ssl_config_default(&sc, &vc);
        sc.dino_head.K = K;
        sc.batch = batch, sc.n_local = n_local, sc.global_crop = gsize, sc.local_crop = lsize;
    }
    const int g = gsize / patch, Ng = g * g;
    if (!config) sc.max_masked = mask_batch_upperbound(2 * batch, Ng, mask_p, mask_lo, mask_hi);
    sc.staged_upload = 1;
    sc.recompute_activations = recompute;

    const char *device;
    double peak = -1;
    Backend *dev = only ? backend_plan_new(1) : bench_open_backend(backend, 0, &device, &peak, err);
    if (only) device = "nothing (the allocate-only plan backend: counts only)";
    if (!dev) {
        printf("RESULT impl=c-step backend=%s arch=%s batch=%d status=no-backend\n", backend, arch, batch);
        fprintf(stderr, "bench_step: %s\n", err);
        return 3;
    }
    // every op goes through the timing wrapper (off until the per-op steps: plain forwarding)
    Backend *be = backend_timed_new(dev, &card, !only);
    const int is_cuda = strcmp(dev->name, "cuda") == 0;
#ifdef DINO_HAVE_CUDA
    // the MFU denominator: a dense bf16 n^3 cublasGemmEx (--peak-size: small under the CUDA execution layer)
    if (!no_peak && is_cuda) peak = backend_cuda_measure_bf16_tflops(dev, peak_size, 20);
#else
    (void)no_peak; // no GPU peak to measure in a build without CUDA
#endif

    // What dinotrain --plan-memory would say for this model (the allocate-only backend), to set against
    // what the device really lost to it (a check of the planner on real hardware)
    size_t plan_bytes = 0;
    if (!only) {
        Backend *pb = backend_plan_new(is_cuda);
        SslModel pm;
        if (ssl_model_init(&pm, pb, &sc, 1, err) == 0) {
            plan_bytes = backend_plan_live_bytes(pb);
            ssl_model_free(&pm, pb);
        }
        backend_free(pb);
    }
    size_t free_before = 0, free_after = 0;
#ifdef DINO_HAVE_CUDA
    size_t total_mem = 0;
    if (is_cuda) backend_cuda_mem_info(dev, &free_before, &total_mem);
#endif
    SslModel m;
    if (ssl_model_init(&m, be, &sc, 1, err)) {
        fprintf(stderr, "bench_step: %s\n", err);
        return 2;
    }
    SslMemory mem = ssl_memory(&m);
#ifdef DINO_HAVE_CUDA
    if (is_cuda) {
        be->sync(be);
        backend_cuda_mem_info(dev, &free_after, &total_mem);
    }
#endif
    const double model_gib = is_cuda ? (double)(free_before - free_after) / 1073741824.0 : -1;

    // Inputs: random crops; the reference's block masks (half the global crops, ratios in [0.1, 0.5]).
    const size_t ng = (size_t)2 * batch * 3 * gsize * gsize, nl = (size_t)n_local * batch * 3 * lsize * lsize;
    float *gimg = dino_malloc(sizeof(float) * ng), *limg = dino_malloc(sizeof(float) * (nl ? nl : 1));
    Rng r = rng_make(3, 0, 0, 0);
    for (size_t i = 0; i < ng; i++) gimg[i] = (float)rng_normal(&r);
    for (size_t i = 0; i < nl; i++) limg[i] = (float)rng_normal(&r);
    MaskGenerator mg;
    mask_generator_init(&mg, gsize, patch);
    MaskBatch mb;
    mask_batch_alloc(&mb, 2 * batch, Ng);

    size_t nparams = m.tab.total;
    printf("%s on %s: %s/%d depth %d, %.1fM parameters with the head%s (K = %d), batch %d x (2 x %d px + %d x %d "
           "px), activations %s%s%s\n",
           only ? "roofline" : backend, device, arch, patch, vc.depth, nparams / 1e6, sc.ibot_separate_head ? "s" : "", K,
           batch, gsize, n_local, lsize, recompute ? "recomputed" : "stored", config ? ", recipe " : "", config ? config : "");
    if (peak > 0) printf("measured dense bf16 matmul: %.1f TFLOP/s\n", peak);

    // the teacher sees the global crops only (as tests/torch_ref/bench_step_torch.py counts)
    const double bb_fwd = vit_flops(&vc, 2 * batch, gsize, 0);
    const double bb_train = vit_flops(&vc, 2 * batch, gsize, 1) + (n_local ? vit_flops(&vc, n_local * batch, lsize, 1) : 0);
    const double head_row = head_flops_per_row(&m.cfg.dino_head);
    const double ibot_row = sc.ibot_separate_head ? head_flops_per_row(&m.cfg.ibot_head) : head_row;
    // student: backbone fwd+bwd, head fwd+bwd on every student row; teacher: forward of both
    const double rows_cls_s = (double)n_local * batch + 2 * batch, rows_cls_t = 2 * batch;
#define STEP_FLOPS(n_masked)                                                                        \
    (bb_train + bb_fwd + 3 * (head_row * rows_cls_s + ibot_row * (n_masked)) + head_row * rows_cls_t + ibot_row * (n_masked))
    double t_fb = 0, t_up = 0, t_stage = 0, t_step = 0, flops = 0, masked = 0;
    int64_t batch_index = 0;
    mask_batch_make(&mg, mask_p, mask_lo, mask_hi, 7, batch_index++, &mb);
    ssl_stage_batch(&m, be, gimg, limg, mb.masks, 0);
    const ScheduleValues sv = {.lr = 1e-4, .wd = 0.04, .momentum = 0.994, .teacher_temp = 0.04, .last_layer_lr = 1e-4};
    for (int it = 0; !only && it < warmup + iters; it++) {
        be->sync(be);
        double t0 = dino_wall_s();
        // the next batch travels while this step computes (what the trainer does)
        mask_batch_make(&mg, mask_p, mask_lo, mask_hi, 7, batch_index++, &mb);
        ssl_stage_batch(&m, be, gimg, limg, mb.masks, 0);
        double t1 = dino_wall_s();
        SslBatch b = {.staged = 1, .drop_key = rng_make(9, (uint64_t)it, 0, 0)};
        SslStepStats st;
        if (ssl_forward_backward(&m, be, NULL, &b, &sv, &st, err)) {
            fprintf(stderr, "bench_step: %s\n", err);
            return 1;
        }
        be->sync(be);
        double t2 = dino_wall_s();
        ssl_update(&m, be, &sv, &st);
        be->sync(be);
        double t3 = dino_wall_s();
        if (it >= warmup) {
            t_stage += t1 - t0, t_fb += t2 - t1, t_up += t3 - t2, t_step += t3 - t0;
            flops += STEP_FLOPS(st.n_masked);
            masked += st.n_masked;
        }
        if (it == 0) printf("first step: loss %.4f (dino local %.4f, global %.4f, ibot %.4f, koleo %.4f)\n",
                            st.total_loss, st.dino_local_crops_loss, st.dino_global_crops_loss, st.ibot_loss,
                            st.koleo_loss);
    }
    if (!only) {
        t_stage /= iters, t_fb /= iters, t_up /= iters, t_step /= iters, flops /= iters, masked /= iters;
        // the split of forward+backward: two more steps with a synchronisation between the phases
        double ph[3] = {0, 0, 0};
        m.profile_phases = 1;
        for (int it = 0; it < 2; it++) {
            mask_batch_make(&mg, mask_p, mask_lo, mask_hi, 7, batch_index++, &mb);
            ssl_stage_batch(&m, be, gimg, limg, mb.masks, 0);
            SslBatch b = {.staged = 1, .drop_key = rng_make(9, (uint64_t)(warmup + iters + it), 0, 0)};
            SslStepStats st;
            if (ssl_forward_backward(&m, be, NULL, &b, &sv, &st, err)) {
                fprintf(stderr, "bench_step: %s\n", err);
                return 1;
            }
            ssl_update(&m, be, &sv, &st);
            for (int k = 0; k < 3; k++) ph[k] += st.phase_s[k] / 2;
        }
        m.profile_phases = 0;
        double ips = batch / t_step, tflops = flops / t_step / 1e12, mfu = peak > 0 ? tflops / peak : -1;
        double mem_gib = -1;
#ifdef DINO_HAVE_CUDA
        if (is_cuda) {
            size_t fr = 0, tot = 0;
            backend_cuda_mem_info(dev, &fr, &tot);
            mem_gib = (double)(tot - fr) / 1073741824.0;
        }
#endif
        const double gib = 1073741824.0;
        printf("step %.2f ms: forward+backward %.2f ms, update (clip, AdamW, EMA) %.2f ms, staging the next batch "
               "%.2f ms; %.2f images/s; %.2f TFLOP/s model (%.0f masked tokens per step)%s\n",
               1e3 * t_step, 1e3 * t_fb, 1e3 * t_up, 1e3 * t_stage, ips, tflops, masked,
               peak > 0 ? "" : "; MFU n/a (no measured peak)");
        if (peak > 0) printf("MFU %.1f%% of the measured bf16 matmul rate\n", 100 * mfu);
        printf("phases (synchronised, 2 steps): teacher %.2f ms, student forward + losses %.2f ms, backward %.2f ms\n",
               1e3 * ph[0], 1e3 * ph[1], 1e3 * ph[2]);
        printf("memory: weights+grads %.2f GiB, moments %.2f GiB, student activations %.2f GiB, teacher %.2f GiB\n",
               (mem.weights + mem.grads) / gib, mem.optimizer / gib, mem.student_acts / gib, mem.teacher_acts / gib);
        if (mem_gib >= 0) printf("device memory in use (all processes): %.2f GiB\n", mem_gib);
        printf("planned (dinotrain --plan-memory's count) %.2f GiB%s", plan_bytes / gib, model_gib >= 0 ? "" : "\n");
        if (model_gib >= 0) printf(", taken from the device by the model %.2f GiB\n", model_gib);
        printf("RESULT impl=c-step backend=%s arch=%s batch=%d img_per_s=%.2f step_ms=%.2f fwd_bwd_ms=%.2f update_ms=%.2f "
               "stage_ms=%.2f teacher_ms=%.2f student_fwd_ms=%.2f bwd_ms=%.2f model_tflops=%.3f peak_tflops=%.4g "
               "mfu=%.4f recompute=%d device_gib=%.2f plan_gib=%.2f model_gib=%.2f status=ok\n",
               backend, arch, batch, ips, 1e3 * t_step, 1e3 * t_fb, 1e3 * t_up, 1e3 * t_stage, 1e3 * ph[0], 1e3 * ph[1],
               1e3 * ph[2], tflops, peak, mfu, recompute, mem_gib, plan_bytes / gib, model_gib);
    }

    // ---- per op: op_steps more steps through the timing wrapper, synchronised around every op (on the
    // plan backend: counted, not run)
    if (op_steps > 0) {
        backend_timed_reset(be);
        double step_flops = 0;
        for (int it = 0; it < op_steps; it++) {
            be->sync(be);
            backend_timed_set(be, 1, !only);
            mask_batch_make(&mg, mask_p, mask_lo, mask_hi, 7, batch_index++, &mb);
            ssl_stage_batch(&m, be, gimg, limg, mb.masks, 0);
            SslBatch b = {.staged = 1, .drop_key = rng_make(9, (uint64_t)(1000 + it), 0, 0)};
            SslStepStats st;
            if (ssl_forward_backward(&m, be, NULL, &b, &sv, &st, err)) {
                fprintf(stderr, "bench_step: %s\n", err);
                return 1;
            }
            ssl_update(&m, be, &sv, &st);
            backend_timed_set(be, 0, 0);
            step_flops += STEP_FLOPS(st.n_masked) / op_steps;
        }
        char label[256];
        if (is_cuda) snprintf(label, sizeof label, "the cuda backend on %s, a sync around every op", device);
        else snprintf(label, sizeof label, "the %s backend on this machine's CPU (not the card), a sync around every op",
                      dev->name);
        print_roofline(backend_timed_tally(be), op_steps, &card, only ? NULL : label, step_flops, per_op);
    }
#undef STEP_FLOPS
    mask_batch_free(&mb);
    free(gimg), free(limg);
    ssl_model_free(&m, be);
    backend_free(be);
    return 0;
}
