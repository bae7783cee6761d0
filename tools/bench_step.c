// The whole DINOv2 training step on a backend: teacher forward on the global crops, student forward
// on global (iBOT-masked) and local crops, the shared DINO/iBOT head, softmax centering, the DINO,
// iBOT and KoLeo losses, backward, per-submodule clipping, AdamW and the EMA teacher, with the next
// batch staged and uploaded while the step runs (as the trainer does). The same step as
// tests/torch_ref/bench_step_torch.py. Prints images/s, the step split (forward + backward, update,
// staging of the next batch), the model FLOPs utilisation against the card's measured dense bf16 rate,
// the device memory, and one machine-readable RESULT line.
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
#include "model/vit.h"
#include "train/ssl_step.h"
#include "tools/bench_backend.h"
#ifdef DINO_HAVE_CUDA
#include "model/cuda/backend_cuda.h"
#endif

static void usage(void) {
    fprintf(stderr,
            "usage: bench_step [--backend cuda|cpu] [--arch vit_small|vit_base|vit_large|vit_giant2] [--batch B]\n"
            "                  [--local 8] [--global-size 224] [--local-size 98] [--patch 14] [--registers 0]\n"
            "                  [--ffn mlp|swiglu] [--depth L] [--K 65536] [--drop-path 0] [--recompute]\n"
            "                  [--iters 10] [--warmup 3] [--no-peak] [--peak-size 8192]\n");
    exit(2);
}

// Head FLOPs per row, forward: the MLP (in -> hidden -> ... -> bottleneck) and the last layer to K.
static double head_flops_per_row(const HeadConfig *h) {
    double f = 0;
    if (h->nlayers == 1) f = (double)h->in_dim * h->bottleneck;
    else f = (double)h->in_dim * h->hidden + (double)(h->nlayers - 2) * h->hidden * h->hidden + (double)h->hidden * h->bottleneck;
    return 2.0 * (f + (double)h->bottleneck * h->K);
}

int main(int argc, char **argv) {
    dino_prefer_passive_openmp(argv);
    const char *backend = "cuda", *arch = "vit_small", *ffn = "mlp";
    int batch = 8, n_local = 8, gsize = 224, lsize = 98, patch = 14, registers = 0, depth = 0, K = 65536;
    int iters = 10, warmup = 3, no_peak = 0, recompute = 0, peak_size = 8192;
    double drop_path = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG_S(flag, var) else if (strcmp(a, flag) == 0 && v) { var = v; i++; }
#define ARG_I(flag, var) else if (strcmp(a, flag) == 0 && v) { var = atoi(v); i++; }
        if (0) {}
        ARG_S("--backend", backend) ARG_S("--arch", arch) ARG_S("--ffn", ffn) ARG_I("--batch", batch)
        ARG_I("--local", n_local) ARG_I("--global-size", gsize) ARG_I("--local-size", lsize) ARG_I("--patch", patch)
        ARG_I("--registers", registers) ARG_I("--depth", depth) ARG_I("--K", K) ARG_I("--iters", iters)
        ARG_I("--warmup", warmup) ARG_I("--peak-size", peak_size)
        else if (strcmp(a, "--drop-path") == 0 && v) drop_path = atof(argv[++i]);
        else if (strcmp(a, "--recompute") == 0) recompute = 1;
        else if (strcmp(a, "--no-peak") == 0) no_peak = 1;
        else usage();
#undef ARG_S
#undef ARG_I
    }
    if (batch < 2 || iters <= 0 || warmup < 0 || n_local < 0 || K <= 0 || peak_size < 64) usage(); // KoLeo needs 2 images

    char err[DINO_ERRLEN];
    const char *device;
    double peak;
    Backend *be = bench_open_backend(backend, 0, &device, &peak, err);
    if (!be) {
        printf("RESULT impl=c-step backend=%s arch=%s batch=%d status=no-backend\n", backend, arch, batch);
        fprintf(stderr, "bench_step: %s\n", err);
        return 3;
    }
#ifdef DINO_HAVE_CUDA
    // the MFU denominator: a dense bf16 n^3 cublasGemmEx (--peak-size: small under the CUDA execution layer)
    if (!no_peak && strcmp(be->name, "cuda") == 0) peak = backend_cuda_measure_bf16_tflops(be, peak_size, 20);
#else
    (void)no_peak; // no GPU peak to measure in a build without CUDA
#endif

    VitConfig vc;
    if (vit_config_from_arch(&vc, arch, patch, gsize, registers, ffn, err)) {
        fprintf(stderr, "bench_step: %s\n", err);
        return 2;
    }
    if (depth > 0) vc.depth = depth;
    vc.drop_path_rate = drop_path;
    SslConfig sc;
    ssl_config_default(&sc, &vc);
    sc.dino_head.K = K;
    sc.batch = batch, sc.n_local = n_local, sc.global_crop = gsize, sc.local_crop = lsize;
    const int g = gsize / patch, Ng = g * g;
    sc.max_masked = mask_batch_upperbound(2 * batch, Ng, 0.5, 0.1, 0.5);
    sc.staged_upload = 1;
    sc.recompute_activations = recompute;
    // What dinotrain --plan-memory would say for this model (the allocate-only backend), to set against
    // what the device really lost to it (a check of the planner on real hardware)
    const int is_cuda = strcmp(be->name, "cuda") == 0;
    size_t plan_bytes = 0;
    {
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
    if (is_cuda) backend_cuda_mem_info(be, &free_before, &total_mem);
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
        backend_cuda_mem_info(be, &free_after, &total_mem);
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
    printf("%s on %s: %s/%d depth %d, %.1fM parameters with the head (K = %d), batch %d x (2 x %d px + %d x %d "
           "px), activations %s\n",
           backend, device, arch, patch, vc.depth, nparams / 1e6, K, batch, gsize, n_local, lsize,
           recompute ? "recomputed" : "stored");
    if (peak > 0) printf("measured dense bf16 matmul: %.1f TFLOP/s\n", peak);

    const double bb_fwd = vit_flops(&vc, 2 * batch, gsize, 0) + (n_local ? vit_flops(&vc, n_local * batch, lsize, 0) : 0);
    const double bb_train = vit_flops(&vc, 2 * batch, gsize, 1) + (n_local ? vit_flops(&vc, n_local * batch, lsize, 1) : 0);
    const double head_row = head_flops_per_row(&m.cfg.dino_head);
    double t_fb = 0, t_up = 0, t_stage = 0, t_step = 0, flops = 0, masked = 0;
    int64_t batch_index = 0;
    mask_batch_make(&mg, 0.5, 0.1, 0.5, 7, batch_index++, &mb);
    ssl_stage_batch(&m, be, gimg, limg, mb.masks, 0);
    for (int it = 0; it < warmup + iters; it++) {
        be->sync(be);
        double t0 = dino_wall_s();
        // the next batch travels while this step computes (what the trainer does)
        mask_batch_make(&mg, 0.5, 0.1, 0.5, 7, batch_index++, &mb);
        ssl_stage_batch(&m, be, gimg, limg, mb.masks, 0);
        double t1 = dino_wall_s();
        SslBatch b = {.staged = 1, .drop_key = rng_make(9, (uint64_t)it, 0, 0)};
        ScheduleValues sv = {.lr = 1e-4, .wd = 0.04, .momentum = 0.994, .teacher_temp = 0.04, .last_layer_lr = 1e-4};
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
            // student: backbone fwd+bwd, head fwd+bwd on every student row; teacher: forward of both
            double rows_s = (double)n_local * batch + 2 * batch + st.n_masked, rows_t = 2 * batch + st.n_masked;
            flops += bb_train + bb_fwd + 3 * head_row * rows_s + head_row * rows_t;
            masked += st.n_masked;
        }
        if (it == 0) printf("first step: loss %.4f (dino local %.4f, global %.4f, ibot %.4f, koleo %.4f)\n",
                            st.total_loss, st.dino_local_crops_loss, st.dino_global_crops_loss, st.ibot_loss,
                            st.koleo_loss);
    }
    t_stage /= iters, t_fb /= iters, t_up /= iters, t_step /= iters, flops /= iters, masked /= iters;
    // the split of forward+backward: two more steps with a synchronisation between the phases
    double ph[3] = {0, 0, 0};
    m.profile_phases = 1;
    for (int it = 0; it < 2; it++) {
        mask_batch_make(&mg, 0.5, 0.1, 0.5, 7, batch_index++, &mb);
        ssl_stage_batch(&m, be, gimg, limg, mb.masks, 0);
        SslBatch b = {.staged = 1, .drop_key = rng_make(9, (uint64_t)(warmup + iters + it), 0, 0)};
        ScheduleValues sv = {.lr = 1e-4, .wd = 0.04, .momentum = 0.994, .teacher_temp = 0.04, .last_layer_lr = 1e-4};
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
    if (strcmp(backend, "cuda") == 0) {
        size_t fr = 0, tot = 0;
        backend_cuda_mem_info(be, &fr, &tot);
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
    mask_batch_free(&mb);
    free(gimg), free(limg);
    ssl_model_free(&m, be);
    backend_free(be);
    return 0;
}
