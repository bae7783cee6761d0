// Parity of the C training step with the PyTorch reference step (tests/make_objective_fixtures.py):
// three complete steps of a tiny student/teacher pair from the same start, crops, masks, drop-path
// subsets and schedule values; the logged losses of every step and every parameter of student and
// teacher after the last step (and the softmax-centering centres) must agree within 1e-4 relative.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/safetensors.h"
#include "tests/harness.h"
#include "train/ssl_step.h"

static const char *meta(const StFile *f, const char *key) {
    const char *v = st_meta(f, key);
    if (!v) test_fail_at(__FILE__, __LINE__, "fixture metadata lacks '%s'", key);
    return v ? v : "0";
}
static int meta_i(const StFile *f, const char *key) { return atoi(meta(f, key)); }
static float meta_f(const StFile *f, const char *key) { return (float)atof(meta(f, key)); }
static double meta_d(const StFile *f, const char *key) { return atof(meta(f, key)); }

static const void *tensor(const StFile *f, const char *name, StDtype dt, size_t nbytes) {
    const StTensor *t = st_get(f, name);
    if (!t) {
        test_fail_at(__FILE__, __LINE__, "fixture lacks tensor '%s'", name);
        return NULL;
    }
    if (t->dtype != dt || t->nbytes != nbytes) {
        test_fail_at(__FILE__, __LINE__, "fixture tensor '%s': dtype %d, %zu bytes; expected %d, %zu", name,
                     (int)t->dtype, t->nbytes, (int)dt, nbytes);
        return NULL;
    }
    return t->data;
}
static double scalar(const StFile *f, const char *fmt, int step) {
    char name[96];
    snprintf(name, sizeof name, fmt, step);
    const double *v = tensor(f, name, ST_F64, sizeof(double));
    return v ? v[0] : NAN;
}

// max |a - b| / max |b| over a tensor (relative to the tensor's scale)
static double rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return den > 0 ? num / den : num;
}

#define TOL 1e-4

static void parity(const char *variant) {
    char path[256], err[DINO_ERRLEN];
    snprintf(path, sizeof path, "tests/fixtures/objective_%s.safetensors", variant);
    StFile f;
    CHECK(st_open(&f, test_src_path(path), err) == 0, "%s", err);
    VitConfig vc;
    CHECK(vit_config_from_arch(&vc, "vit_test", meta_i(&f, "patch"), meta_i(&f, "img_size"), meta_i(&f, "n_registers"),
                               meta(&f, "ffn"), err) == 0, "%s", err);
    vc.dim = meta_i(&f, "dim"), vc.depth = meta_i(&f, "depth"), vc.heads = meta_i(&f, "heads");
    vc.ffn_hidden = meta_i(&f, "ffn_hidden"), vc.layerscale = meta_f(&f, "layerscale");
    vc.drop_path_rate = meta_d(&f, "drop_path_rate");
    if (st_meta(&f, "rope")) { // the DINOv3 ViT (docs/dinov3-vit.md)
        vc.rope = 1;
        vc.rope_cfg = (RopeConfig){.base = meta_d(&f, "rope_base"), .normalize = ROPE_NORMALIZE_SEPARATE};
        vc.mask_k_bias = meta_i(&f, "mask_k_bias");
        vc.untie_cls_and_patch_norms = meta_i(&f, "untie_cls_and_patch_norms");
        vc.untie_global_and_local_cls_norm = meta_i(&f, "untie_global_and_local_cls_norm");
        CHECK(vit_ffn_width(meta(&f, "ffn_layer"), vc.dim, meta_d(&f, "ffn_ratio"), &vc.ffn, &vc.ffn_hidden, err) == 0,
              "%s", err);
    }
    SslConfig cfg;
    ssl_config_default(&cfg, &vc);
    cfg.dino_head = (HeadConfig){vc.dim, meta_i(&f, "head_hidden"), meta_i(&f, "head_bottleneck"), meta_i(&f, "head_K"),
                                 meta_i(&f, "head_nlayers")};
    cfg.ibot_separate_head = meta_i(&f, "ibot_separate_head");
    cfg.ibot_head = (HeadConfig){vc.dim, meta_i(&f, "ibot_hidden"), meta_i(&f, "ibot_bottleneck"), meta_i(&f, "ibot_K"),
                                 meta_i(&f, "ibot_nlayers")};
    cfg.batch = meta_i(&f, "batch"), cfg.n_local = meta_i(&f, "n_local");
    cfg.global_crop = meta_i(&f, "global_crop"), cfg.local_crop = meta_i(&f, "local_crop");
    cfg.centering = strcmp(meta(&f, "centering"), "sinkhorn_knopp") == 0 ? CENTERING_SINKHORN : CENTERING_SOFTMAX;
    cfg.student_temp = meta_f(&f, "student_temp"), cfg.center_momentum = meta_f(&f, "center_momentum");
    cfg.koleo_loss_weight = meta_f(&f, "koleo_loss_weight"), cfg.clip_grad = meta_f(&f, "clip_grad");
    cfg.layerwise_decay = meta_f(&f, "layerwise_decay"), cfg.patch_embed_lr_mult = meta_f(&f, "patch_embed_lr_mult");
    const int gram = st_meta(&f, "gram_crop") != NULL; // the DINOv3 step with Gram anchoring
    if (gram) {
        cfg.gram = 1;
        cfg.gram_crop = meta_i(&f, "gram_crop");
        cfg.gram_normalize = meta_i(&f, "gram_normalized");
        cfg.gram_img_level = meta_i(&f, "gram_img_level");
        cfg.gram_neg_mode = meta_i(&f, "gram_remove_neg") ? 1 : meta_i(&f, "gram_remove_only_teacher_neg") ? 2 : 0;
        cfg.gram_resize_antialias = meta_i(&f, "gram_antialias");
        cfg.reweight_dino_local = meta_i(&f, "reweight_dino_local");
    }

    Backend *be = backend_cpu_new();
    SslModel m;
    CHECK(ssl_model_init(&m, be, &cfg, 0, err) == 0, "%s", err);
    // start: every tensor of the table from the fixture, and nothing in the fixture left over
    const size_t total = m.tab.total;
    float *host = calloc(total, sizeof(float));
    int n_init = 0;
    for (int i = 0; i < f.n; i++) n_init += strncmp(f.t[i].name, "init.student.", 13) == 0;
    CHECK(n_init == m.tab.n, "fixture has %d initial tensors, the model %d", n_init, m.tab.n);
    for (int i = 0; i < m.tab.n; i++) {
        const TensorSpec *t = &m.tab.t[i];
        char name[160];
        snprintf(name, sizeof name, "init.student.%s", t->name);
        const float *src = tensor(&f, name, ST_F32, sizeof(float) * t->numel);
        if (src) memcpy(host + t->offset, src, sizeof(float) * t->numel);
    }
    be->to_device(be, m.student, host, sizeof(float) * total);
    be->to_device(be, m.teacher, host, sizeof(float) * total);
    if (gram) { // the given Gram teacher (as from gram.ckpt): every backbone tensor
        int n_gram = 0;
        for (int i = 0; i < f.n; i++) n_gram += strncmp(f.t[i].name, "init.gram_teacher.", 18) == 0;
        memset(host, 0, sizeof(float) * total);
        int n_backbone = 0;
        for (int i = 0; i < m.tab.n; i++) {
            const TensorSpec *t = &m.tab.t[i];
            if (t->group != PARAM_BACKBONE) continue;
            n_backbone++;
            char name[160];
            snprintf(name, sizeof name, "init.gram_teacher.%s", t->name);
            const float *src = tensor(&f, name, ST_F32, sizeof(float) * t->numel);
            if (src) memcpy(host + t->offset, src, sizeof(float) * t->numel);
        }
        CHECK(n_gram == n_backbone, "fixture has %d Gram teacher tensors, the backbone %d", n_gram, n_backbone);
        be->to_device(be, m.gram_teacher, host, sizeof(float) * m.backbone_floats);
        m.gram_ready = 1;
    }

    const int B = cfg.batch, nL = cfg.n_local, G = cfg.global_crop, L = cfg.local_crop, p = vc.patch;
    const int N = (G / p) * (G / p), depth = vc.depth;
    const int Sg = vit_drop_subset_size(&m.vit, 2 * B), Sl = vit_drop_subset_size(&m.vit, nL * B);
    const int n_steps = meta_i(&f, "n_steps");
    for (int s = 0; s < n_steps; s++) {
        char name[96];
        SslBatch b = {0};
#define IN(field, key, dt, bytes)                                                                   \
    snprintf(name, sizeof name, "step%d." key, s);                                                 \
    b.field = tensor(&f, name, dt, bytes)
        IN(global_crops, "global_crops", ST_F32, sizeof(float) * 2 * B * 3 * G * G);
        IN(local_crops, "local_crops", ST_F32, sizeof(float) * nL * B * 3 * L * L);
        IN(masks, "masks", ST_U8, (size_t)2 * B * N);
        IN(drop_global, "drop_global", ST_I32, sizeof(int) * depth * 2 * Sg);
        IN(drop_local, "drop_local", ST_I32, sizeof(int) * depth * 2 * Sl);
        if (gram) {
            const int Gg = cfg.gram_crop;
            IN(gram_crops, "gram_crops", ST_F32, sizeof(float) * 2 * B * 3 * Gg * Gg);
            b.gram_weight = scalar(&f, "step%d.gram_weight", s);
            b.dino_local_weight = scalar(&f, "step%d.dino_local_weight", s);
        }
#undef IN
        ScheduleValues sv = {scalar(&f, "step%d.lr", s), scalar(&f, "step%d.wd", s), scalar(&f, "step%d.momentum", s),
                             scalar(&f, "step%d.teacher_temp", s), scalar(&f, "step%d.last_layer_lr", s)};
        SslStepStats st;
        CHECK(ssl_step(&m, be, NULL, &b, &sv, &st, err) == 0, "%s", err);
        const struct {
            const char *key;
            double got;
        } L_[] = {{"step%d.dino_local_crops_loss", st.dino_local_crops_loss},
                  {"step%d.dino_global_crops_loss", st.dino_global_crops_loss},
                  {"step%d.koleo_loss", st.koleo_loss},
                  {"step%d.ibot_loss", st.ibot_loss},
                  {"step%d.total_loss", st.total_loss},
                  {"step%d.gram_loss", st.gram_loss},          // the DINOv3 fixture only
                  {"step%d.backprop_loss", st.backprop_loss}}; // its loss_accumulator
        const size_t n_checked = gram ? sizeof L_ / sizeof L_[0] : 5;
        for (size_t i = 0; i < n_checked; i++) {
            double want = scalar(&f, L_[i].key, s);
            // KoLeo's value is small and a difference of logs: compare it on the scale of the total
            double scale = strstr(L_[i].key, "koleo") ? fabs(scalar(&f, "step%d.total_loss", s)) : fabs(want);
            if (!(fabs(L_[i].got - want) <= TOL * scale)) {
                snprintf(name, sizeof name, L_[i].key, s);
                test_fail_at(__FILE__, __LINE__, "%s: %s = %.9g, reference %.9g", variant, name, L_[i].got, want);
            }
        }
        if (gram) printf("%s step %d: gram %.6f (weight %g), local weight %g, accumulator %.6f\n", variant, s, st.gram_loss,
                         b.gram_weight, st.dino_local_weight, st.backprop_loss);
        printf("%s step %d: local %.6f global %.6f koleo %.6f ibot %.6f total %.6f | teacher entropy %.4f, "
               "student CLS std %.4f, masked %d, grad norms %.3f %.3f %.3f\n",
               variant, s, st.dino_local_crops_loss, st.dino_global_crops_loss, st.koleo_loss, st.ibot_loss,
               st.total_loss, st.teacher_entropy, st.student_cls_std, st.n_masked, st.grad_norm[0], st.grad_norm[1],
               st.grad_norm[2]);
    }
    // every parameter of student and teacher after the last step
    double worst = 0;
    const char *worst_name = "";
    for (int who = 0; who < 2; who++) {
        be->to_host(be, host, who ? m.teacher : m.student, sizeof(float) * total);
        for (int i = 0; i < m.tab.n; i++) {
            const TensorSpec *t = &m.tab.t[i];
            char name[160];
            snprintf(name, sizeof name, "%s.%s", who ? "teacher" : "student", t->name);
            const float *want = tensor(&f, name, ST_F32, sizeof(float) * t->numel);
            if (!want) continue;
            const float *got = host + t->offset;
            double e;
            if (strstr(t->name, "attn.qkv.bias")) {
                // The key bias has a mathematically zero gradient (softmax ignores a constant added to every
                // score of a query): in float64 it stays put, in fp32 AdamW turns rounding noise into steps of
                // up to ~lr. Query and value biases are compared as every tensor; the key bias only within
                // the distance AdamW can move it.
                const int D = vc.dim;
                double scale = 0, num = 0;
                for (int j = 0; j < 3 * D; j++) scale = fmax(scale, fabs(want[j]));
                for (int j = 0; j < 3 * D; j++)
                    if (j < D || j >= 2 * D) num = fmax(num, fabs(got[j] - want[j]));
                e = num / scale;
                double reach = 0;
                for (int s = 0; s < n_steps; s++) reach += 2.0 * scalar(&f, "step%d.lr", s) * t->lr_mult;
                for (int j = D; j < 2 * D; j++)
                    CHECK(fabs(got[j] - want[j]) <= reach, "%s %s[%d] (key bias) moved %.3g, more than AdamW can (%.3g)",
                          variant, name, j, fabs(got[j] - want[j]), reach);
            } else {
                e = rel_err(got, want, t->numel);
            }
            if (e > worst) worst = e, worst_name = t->name;
            CHECK(e <= TOL, "%s %s: relative error %.3g", variant, name, e);
        }
    }
    printf("%s: worst parameter relative error %.3g (%s)\n", variant, worst, worst_name);
    if (cfg.centering == CENTERING_SOFTMAX) {
        const float *c = tensor(&f, "dino_loss.pending_center", ST_F32, sizeof(float) * cfg.dino_head.K);
        if (c) CHECK(rel_err(m.dino_center.center, c, (size_t)cfg.dino_head.K) <= TOL, "DINO centre differs");
        c = tensor(&f, "ibot_patch_loss.pending_center", ST_F32, sizeof(float) * cfg.dino_head.K);
        if (c) CHECK(rel_err(m.ibot_center.center, c, (size_t)cfg.dino_head.K) <= TOL, "iBOT centre differs");
    }
    ssl_model_free(&m, be);
    free(host);
    backend_free(be);
    st_close(&f);
}

TEST(step_parity_softmax_centering_shared_head) { parity("centering"); }
TEST(step_parity_sinkhorn_separate_head) { parity("sinkhorn"); }
// DINOv3 step with Gram anchoring active on the DINOv3 ViT (RoPE, a storage token, untied local CLS norm,
// masked k bias): a given Gram teacher at 42 px (features resampled 6x6 -> 4x4), Gram weights 0.5 / 1 / 2
// and local-crop DINO weights 1 / 1 / 0.5 from the official schedule function
TEST(step_parity_dinov3_gram_anchoring) { parity("gram"); }
