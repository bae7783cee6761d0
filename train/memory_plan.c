// Device memory per GPU of a training configuration, counted on the plan backend.
#include "train/memory_plan.h"

#include <string.h>

#include "common/check.h"
#include "model/backend_plan.h"
#include "train/train.h"

int memory_plan(const Config *cfg, int world, MemoryPlan *p, char *err) {
    memset(p, 0, sizeof *p);
    p->world = world < 1 ? 1 : world;
    SslConfig sc;
    if (train_ssl_config(cfg, p->world, 0, &sc, err)) return -1;
    p->batch = sc.batch;
    // the CUDA backend's own buffer sizes when the config runs on it with bf16 GEMMs
    Backend *be = backend_plan_new(strcmp(cfg->backend, "cuda") == 0 && strcmp(cfg->param_dtype, "bf16") == 0);
    SslModel m;
    if (ssl_model_init(&m, be, &sc, 0, err)) {
        backend_free(be);
        return -1;
    }
    // one size pair's activations exist at a time (ssl_use_pair frees the last pair's first): the plan is
    // the largest pair's
    for (int k = 0; k < m.cfg.n_pairs; k++) {
        ssl_use_pair(&m, be, k);
        size_t live = backend_plan_live_bytes(be);
        if (live > p->total) p->total = live, p->model = ssl_memory(&m), p->pair = k;
    }
    size_t known = p->model.weights + p->model.grads + p->model.optimizer + p->model.student_acts +
                   p->model.teacher_acts;
    p->other = p->total > known ? p->total - known : 0;
    ssl_model_free(&m, be);
    backend_free(be);
    return 0;
}

static int plan_at(const Config *cfg, int world, int batch, size_t *total, char *err) {
    Config c = *cfg;
    c.train.batch_size_per_gpu = batch;
    MemoryPlan p;
    if (memory_plan(&c, world, &p, err)) return -1;
    *total = p.total;
    return 0;
}

int memory_plan_max_batch(const Config *cfg, int world, size_t bytes, char *err) {
    size_t m2, m4;
    if (plan_at(cfg, world, 2, &m2, err) || plan_at(cfg, world, 4, &m4, err)) return -1;
    if (m2 > bytes) return 0;
    const double per_image = (double)(m4 - m2) / 2, fixed = (double)m2 - 2 * per_image;
    int b = per_image > 0 ? (int)(((double)bytes - fixed) / per_image) : 1 << 20;
    if (b < 2) b = 2;
    if (b > 1 << 16) b = 1 << 16;
    // the line is close (the masked-token capacity moves in steps): settle it with exact plans
    size_t m;
    if (plan_at(cfg, world, b, &m, err)) return -1;
    while (m > bytes && b > 2) {
        if (plan_at(cfg, world, --b, &m, err)) return -1;
    }
    while (m <= bytes && b < 1 << 16) {
        size_t next;
        if (plan_at(cfg, world, b + 1, &next, err)) return -1;
        if (next > bytes) break;
        b++, m = next;
    }
    return m <= bytes ? b : 0;
}

static double gib(size_t b) { return (double)b / (1024.0 * 1024.0 * 1024.0); }

void memory_plan_print(FILE *f, const Config *cfg, const MemoryPlan *p) {
    fprintf(f, "device memory per GPU: %s, %d images per GPU, %d rank%s%s, activations %s\n", cfg->student.arch,
            p->batch, p->world, p->world > 1 ? "s" : "", cfg->zero1 && p->world > 1 ? " (ZeRO-1)" : "",
            cfg->recompute_activations ? "recomputed per block" : "stored");
    if (config_n_pairs(cfg) > 1)
        fprintf(f, "  the largest of %d crop size pairs: global %d px, local %d px\n", config_n_pairs(cfg),
                cfg->crops.global_crops_size.v[p->pair], cfg->crops.local_crops_size.v[p->pair]);
    const int cuda_bf16 = strcmp(cfg->backend, "cuda") == 0 && strcmp(cfg->param_dtype, "bf16") == 0;
    const char *weights = cfg->gram.use_loss ? (cuda_bf16 ? "weights (student, EMA, Gram; fp32 + bf16)"
                                                          : "weights (student + EMA + Gram teacher, fp32)")
                                             : (cuda_bf16 ? "weights (student + EMA teacher, fp32 + bf16)"
                                                          : "weights (student + EMA teacher, fp32)");
    const struct {
        const char *what;
        size_t bytes;
    } rows[] = {
        {weights, p->model.weights},
        {"gradients (fp32)", p->model.grads},
        {"AdamW moments (fp32, this rank's shard)", p->model.optimizer},
        {"student activations (global + local crops)", p->model.student_acts},
        {cfg->gram.use_loss ? "teacher + Gram teacher activations (forward)" : "teacher activations (forward only)",
         p->model.teacher_acts},
        {"heads, logits, losses, crops, masks", p->other},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        fprintf(f, "  %-46s %9.2f GiB\n", rows[i].what, gib(rows[i].bytes));
    fprintf(f, "  %-46s %9.2f GiB\n", "total allocated by dinotrain", gib(p->total));
    fprintf(f, "  not counted: the CUDA context, cuBLAS and NCCL workspaces (about 1-3 GiB)\n");
    fprintf(f, "  %s; an 80 GB H100 has about 79 GiB\n",
            cuda_bf16 ? "the ViT's branch and patch-embedding activations and their gradients in bf16, the residual "
                        "stream, LayerNorm "
                        "statistics and heads in fp32 (the cuda layout; attention saves the flash path's "
                        "log-sum-exp, or bf16 probabilities for head dims without flash kernels)"
                      : "activations stored in fp32 (the cpu layout)");
}
