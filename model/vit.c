// DINOv2's ViT backbone on the backend interface: forward, backward, init, pos-embed interpolation;
// with cfg.rope the DINOv3 ViT (RoPE, storage tokens, untied CLS norms, masked k bias, official names).
#include "model/vit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"

#define LN_EPS ln_eps(c)

static float ln_eps(const VitConfig *c) { return c->ln_eps > 0 ? c->ln_eps : 1e-6f; }

// ---- configuration --------------------------------------------------------------------------------

static const struct {
    const char *name;
    int dim, depth, heads;
} ARCHS[] = {
    {"vit_test", 32, 2, 2},     // unit tests
    {"vit_tiny", 192, 12, 3},   // small CPU runs
    {"vit_small", 384, 12, 6},
    {"vit_base", 768, 12, 12},
    {"vit_large", 1024, 24, 16},
    {"vit_giant2", 1536, 40, 24},
};

int vit_config_from_arch(VitConfig *cfg, const char *arch, int patch, int img_size, int n_registers,
                         const char *ffn_layer, char *err) {
    memset(cfg, 0, sizeof *cfg);
    int k = -1;
    for (size_t i = 0; i < sizeof ARCHS / sizeof ARCHS[0]; i++)
        if (strcmp(arch, ARCHS[i].name) == 0) k = (int)i;
    if (k < 0) {
        dino_seterr(err, "unknown arch '%s' (known: vit_test, vit_tiny, vit_small, vit_base, vit_large, vit_giant2)",
                    arch);
        return -1;
    }
    snprintf(cfg->arch, sizeof cfg->arch, "%s", arch);
    cfg->dim = ARCHS[k].dim;
    cfg->depth = ARCHS[k].depth;
    cfg->heads = ARCHS[k].heads;
    cfg->patch = patch;
    cfg->img_size = img_size;
    cfg->n_registers = n_registers;
    if (vit_ffn_width(ffn_layer ? ffn_layer : "mlp", cfg->dim, 4.0, &cfg->ffn, &cfg->ffn_hidden, err)) return -1;
    cfg->layerscale = 1e-5f;
    cfg->ln_eps = 1e-6f;
    cfg->drop_path_rate = 0.0;
    cfg->interpolate_offset = 0.1f;
    cfg->interpolate_antialias = 0;
    cfg->qkv_bias = cfg->proj_bias = cfg->ffn_bias = 1;
    return vit_config_check(cfg, err);
}

int vit_ffn_width(const char *ffn_layer, int dim, double ffn_ratio, VitFfn *ffn, int *hidden, char *err) {
    static const struct { const char *name; int align; } SWIGLU[] = {
        {"swiglu", 8}, {"swiglufused", 8}, {"swiglu32", 32}, {"swiglu64", 64}, {"swiglu128", 128}};
    if (!(ffn_ratio > 0) || dim * ffn_ratio > 1e8) {
        dino_seterr(err, "model: ffn_ratio %g must be positive (and reasonable)", ffn_ratio);
        return -1;
    }
    const int mlp_hidden = (int)(dim * ffn_ratio); // int(dim * ffn_ratio), as the block does
    if (strcmp(ffn_layer, "mlp") == 0) {
        *ffn = VIT_FFN_MLP;
        *hidden = mlp_hidden;
        return 0;
    }
    for (size_t i = 0; i < sizeof SWIGLU / sizeof SWIGLU[0]; i++)
        if (strcmp(ffn_layer, SWIGLU[i].name) == 0) {
            // SwiGLUFFN: d = int(hidden * 2 / 3), then d + (-d % align_to) (DINOv2's fused one: (d+7)//8*8)
            const int d = mlp_hidden * 2 / 3, a = SWIGLU[i].align;
            *ffn = VIT_FFN_SWIGLU;
            *hidden = (d + a - 1) / a * a;
            return 0;
        }
    dino_seterr(err, "unknown ffn_layer '%s' (known: mlp, swiglu, swiglufused, swiglu32, swiglu64, swiglu128)",
                ffn_layer);
    return -1;
}

int vit_config_check(const VitConfig *c, char *err) {
    if (c->dim <= 0 || c->depth <= 0 || c->heads <= 0) {
        dino_seterr(err, "model: dim (%d), depth (%d) and heads (%d) must be positive", c->dim, c->depth, c->heads);
        return -1;
    }
    if (c->dim % c->heads) {
        dino_seterr(err, "model: dim %d is not divisible by the number of heads %d", c->dim, c->heads);
        return -1;
    }
    if (c->patch <= 0) {
        dino_seterr(err, "model: patch size must be positive (got %d)", c->patch);
        return -1;
    }
    if (c->img_size <= 0 || c->img_size % c->patch) {
        dino_seterr(err, "model: image size %d (global crop size) is not a positive multiple of the patch size %d",
                    c->img_size, c->patch);
        return -1;
    }
    if (c->n_registers < 0) {
        dino_seterr(err, "model: negative number of register tokens (%d)", c->n_registers);
        return -1;
    }
    if (c->ffn_hidden <= 0 || (c->ffn != VIT_FFN_MLP && c->ffn != VIT_FFN_SWIGLU)) {
        dino_seterr(err, "model: bad feed-forward layer (kind %d, hidden %d)", (int)c->ffn, c->ffn_hidden);
        return -1;
    }
    if (!(c->drop_path_rate >= 0.0 && c->drop_path_rate < 1.0)) {
        dino_seterr(err, "model: drop_path_rate %g outside [0, 1)", c->drop_path_rate);
        return -1;
    }
    if (!(c->interpolate_offset >= 0.0f && c->interpolate_offset < 1.0f)) {
        dino_seterr(err, "model: interpolate_offset %g outside [0, 1)", c->interpolate_offset);
        return -1;
    }
    if (!(c->ln_eps >= 0.0f && c->ln_eps < 1.0f)) {
        dino_seterr(err, "model: LayerNorm eps %g outside [0, 1)", c->ln_eps);
        return -1;
    }
    if (!c->rope) {
        if (c->untie_cls_and_patch_norms || c->untie_global_and_local_cls_norm || c->mask_k_bias) {
            dino_seterr(err, "model: untie_cls_and_patch_norms, untie_global_and_local_cls_norm and mask_k_bias "
                             "belong to the DINOv3 ViT (student.pos_embed_type: rope)");
            return -1;
        }
        return 0;
    }
    if (rope_config_check(&c->rope_cfg, c->dim / c->heads, err)) return -1;
    // SwiGLU's w1 and w2 are registered one after the other and run as one [2*Hf, D] Linear: their
    // weights and biases must be adjacent in the parameter buffer (every tensor starts on PARAM_ALIGN).
    if (c->ffn == VIT_FFN_SWIGLU && (((size_t)c->ffn_hidden * c->dim) % PARAM_ALIGN ||
                                     (c->ffn_bias && c->ffn_hidden % PARAM_ALIGN))) {
        dino_seterr(err, "model: the DINOv3 SwiGLU hidden width %d is not a multiple of %d (w1 and w2 run as one "
                         "Linear); use ffn_layer swiglu32, swiglu64 or swiglu128, or another ffn_ratio",
                    c->ffn_hidden, PARAM_ALIGN);
        return -1;
    }
    return 0;
}

int vit_check_crop(const VitConfig *c, int crop, char *err) {
    if (crop <= 0 || crop % c->patch) {
        dino_seterr(err, "crop size %d is not a positive multiple of the patch size %d", crop, c->patch);
        return -1;
    }
    return 0;
}

// ---- parameters -----------------------------------------------------------------------------------

static size_t add(ParamTable *tab, const char *prefix, const char *name, int layer_id, int ndim, int64_t a,
                  int64_t b, int64_t c, int64_t d) {
    char full[PARAM_NAME_MAX];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    int64_t shape[4] = {a, b, c, d};
    return param_add(tab, full, PARAM_BACKBONE, layer_id, ndim, shape);
}

// The DINOv3 ViT's tensors under the official dinov3 state_dict names (dinov3/models/vision_transformer.py
// and dinov3/layers): no pos_embed; storage_tokens; biases only where the configuration has them;
// SwiGLU's w1, w2 (adjacent: one [2*Hf, D] Linear), w3; cls_norm / local_cls_norm when untied. The
// official buffers (rope_embed.periods, attn.qkv.bias_mask) are not parameters: computed here.
static void vit_build_dinov3(Vit *vit, const VitConfig *cfg, ParamTable *tab, const char *prefix) {
    const int D = cfg->dim, L = cfg->depth, p = cfg->patch, Hf = cfg->ffn_hidden;
    vit->cls = add(tab, prefix, "cls_token", 0, 3, 1, 1, D, 0);
    if (cfg->n_registers) vit->reg = add(tab, prefix, "storage_tokens", 0, 3, 1, cfg->n_registers, D, 0);
    vit->mask_token = add(tab, prefix, "mask_token", 0, 2, 1, D, 0, 0);
    vit->patch_w = add(tab, prefix, "patch_embed.proj.weight", 0, 4, D, 3, p, p);
    vit->patch_b = add(tab, prefix, "patch_embed.proj.bias", 0, 1, D, 0, 0, 0);
    vit->blocks = dino_calloc((size_t)L, sizeof(VitBlockOffsets));
    for (int l = 0; l < L; l++) {
        VitBlockOffsets *o = &vit->blocks[l];
        char n[PARAM_NAME_MAX];
#define BLK(field, suffix, ndim, a, b)                                                              \
    do {                                                                                           \
        snprintf(n, sizeof n, "blocks.%d.%s", l, suffix);                                          \
        o->field = add(tab, prefix, n, l + 1, ndim, a, b, 0, 0);                                   \
    } while (0)
        o->qkv_b = o->proj_b = o->fc1_b = o->fc2_b = o->ls1 = o->ls2 = VIT_NO_TENSOR;
        BLK(norm1_w, "norm1.weight", 1, D, 0);
        BLK(norm1_b, "norm1.bias", 1, D, 0);
        BLK(qkv_w, "attn.qkv.weight", 2, 3 * D, D);
        if (cfg->qkv_bias) BLK(qkv_b, "attn.qkv.bias", 1, 3 * D, 0);
        BLK(proj_w, "attn.proj.weight", 2, D, D);
        if (cfg->proj_bias) BLK(proj_b, "attn.proj.bias", 1, D, 0);
        if (cfg->layerscale > 0) BLK(ls1, "ls1.gamma", 1, D, 0);
        BLK(norm2_w, "norm2.weight", 1, D, 0);
        BLK(norm2_b, "norm2.bias", 1, D, 0);
        if (cfg->ffn == VIT_FFN_MLP) {
            BLK(fc1_w, "mlp.fc1.weight", 2, Hf, D);
            if (cfg->ffn_bias) BLK(fc1_b, "mlp.fc1.bias", 1, Hf, 0);
            BLK(fc2_w, "mlp.fc2.weight", 2, D, Hf);
            if (cfg->ffn_bias) BLK(fc2_b, "mlp.fc2.bias", 1, D, 0);
        } else {
            size_t w2, b2 = 0;
            BLK(fc1_w, "mlp.w1.weight", 2, Hf, D);
            snprintf(n, sizeof n, "blocks.%d.mlp.w2.weight", l);
            w2 = add(tab, prefix, n, l + 1, 2, Hf, D, 0, 0);
            if (cfg->ffn_bias) {
                BLK(fc1_b, "mlp.w1.bias", 1, Hf, 0);
                snprintf(n, sizeof n, "blocks.%d.mlp.w2.bias", l);
                b2 = add(tab, prefix, n, l + 1, 1, Hf, 0, 0, 0);
            }
            DINO_ASSERT(w2 == o->fc1_w + (size_t)Hf * D && (!cfg->ffn_bias || b2 == o->fc1_b + (size_t)Hf),
                        "SwiGLU w1 and w2 are not adjacent (vit_config_check lets only aligned widths through)");
            BLK(fc2_w, "mlp.w3.weight", 2, D, Hf);
            if (cfg->ffn_bias) BLK(fc2_b, "mlp.w3.bias", 1, D, 0);
        }
        if (cfg->layerscale > 0) BLK(ls2, "ls2.gamma", 1, D, 0);
#undef BLK
    }
    vit->norm_w = add(tab, prefix, "norm.weight", L + 1, 1, D, 0, 0, 0);
    vit->norm_b = add(tab, prefix, "norm.bias", L + 1, 1, D, 0, 0, 0);
    if (cfg->untie_cls_and_patch_norms) {
        vit->cls_norm_w = add(tab, prefix, "cls_norm.weight", L + 1, 1, D, 0, 0, 0);
        vit->cls_norm_b = add(tab, prefix, "cls_norm.bias", L + 1, 1, D, 0, 0, 0);
    }
    if (cfg->untie_global_and_local_cls_norm) {
        vit->local_cls_norm_w = add(tab, prefix, "local_cls_norm.weight", L + 1, 1, D, 0, 0, 0);
        vit->local_cls_norm_b = add(tab, prefix, "local_cls_norm.bias", L + 1, 1, D, 0, 0, 0);
    }
}

void vit_build(Vit *vit, const VitConfig *cfg, ParamTable *tab, const char *prefix) {
    char err[DINO_ERRLEN];
    if (vit_config_check(cfg, err)) DINO_DIE("%s", err);
    memset(vit, 0, sizeof *vit);
    vit->cfg = *cfg;
    const int D = cfg->dim, L = cfg->depth, M = cfg->img_size / cfg->patch, p = cfg->patch;
    const int Hf = cfg->ffn_hidden;
    vit->grid = M;
    vit->pos = vit->reg = VIT_NO_TENSOR;
    vit->cls_norm_w = vit->cls_norm_b = vit->local_cls_norm_w = vit->local_cls_norm_b = VIT_NO_TENSOR;
    if (cfg->rope) {
        vit_build_dinov3(vit, cfg, tab, prefix);
        return;
    }
    // The reference's registration order (state_dict order), layer ids for layer-wise lr decay:
    // embeddings 0, block i -> i+1, final norm L+1.
    vit->cls = add(tab, prefix, "cls_token", 0, 3, 1, 1, D, 0);
    vit->pos = add(tab, prefix, "pos_embed", 0, 3, 1, 1 + M * M, D, 0);
    if (cfg->n_registers) vit->reg = add(tab, prefix, "register_tokens", 0, 3, 1, cfg->n_registers, D, 0);
    vit->mask_token = add(tab, prefix, "mask_token", 0, 2, 1, D, 0, 0);
    vit->patch_w = add(tab, prefix, "patch_embed.proj.weight", 0, 4, D, 3, p, p);
    vit->patch_b = add(tab, prefix, "patch_embed.proj.bias", 0, 1, D, 0, 0, 0);
    vit->blocks = dino_calloc((size_t)L, sizeof(VitBlockOffsets));
    for (int l = 0; l < L; l++) {
        VitBlockOffsets *o = &vit->blocks[l];
        char n[PARAM_NAME_MAX];
#define BLK(field, suffix, ndim, a, b)                                                              \
    do {                                                                                           \
        snprintf(n, sizeof n, "blocks.%d.%s", l, suffix);                                          \
        o->field = add(tab, prefix, n, l + 1, ndim, a, b, 0, 0);                                   \
    } while (0)
        BLK(norm1_w, "norm1.weight", 1, D, 0);
        BLK(norm1_b, "norm1.bias", 1, D, 0);
        BLK(qkv_w, "attn.qkv.weight", 2, 3 * D, D);
        BLK(qkv_b, "attn.qkv.bias", 1, 3 * D, 0);
        BLK(proj_w, "attn.proj.weight", 2, D, D);
        BLK(proj_b, "attn.proj.bias", 1, D, 0);
        if (cfg->layerscale > 0) BLK(ls1, "ls1.gamma", 1, D, 0);
        BLK(norm2_w, "norm2.weight", 1, D, 0);
        BLK(norm2_b, "norm2.bias", 1, D, 0);
        if (cfg->ffn == VIT_FFN_MLP) {
            BLK(fc1_w, "mlp.fc1.weight", 2, Hf, D);
            BLK(fc1_b, "mlp.fc1.bias", 1, Hf, 0);
            BLK(fc2_w, "mlp.fc2.weight", 2, D, Hf);
            BLK(fc2_b, "mlp.fc2.bias", 1, D, 0);
        } else {
            BLK(fc1_w, "mlp.w12.weight", 2, 2 * Hf, D);
            BLK(fc1_b, "mlp.w12.bias", 1, 2 * Hf, 0);
            BLK(fc2_w, "mlp.w3.weight", 2, D, Hf);
            BLK(fc2_b, "mlp.w3.bias", 1, D, 0);
        }
        if (cfg->layerscale > 0) BLK(ls2, "ls2.gamma", 1, D, 0);
#undef BLK
    }
    vit->norm_w = add(tab, prefix, "norm.weight", L + 1, 1, D, 0, 0, 0);
    vit->norm_b = add(tab, prefix, "norm.bias", L + 1, 1, D, 0, 0, 0);
}

void vit_free(Vit *vit) {
    free(vit->blocks);
    vit->blocks = NULL;
}

static void fill_normal(float *x, size_t n, float std, Rng *r) {
    for (size_t i = 0; i < n; i++) x[i] = std * (float)rng_normal(r);
}
static void fill_uniform(float *x, size_t n, float bound, Rng *r) {
    for (size_t i = 0; i < n; i++) x[i] = (float)rng_uniform_range(r, -bound, bound);
}
static void fill_const(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++) x[i] = v;
}

void vit_init_weights(const Vit *vit, float *P, uint64_t seed) {
    const VitConfig *c = &vit->cfg;
    const int D = c->dim, M = vit->grid, Hf = c->ffn_hidden, p = c->patch;
    Rng r = rng_make(seed, 0x76697400, 0, 0);
    // trunc_normal(std=0.02) with bounds +-2 (absolute, i.e. 100 sigma): a plain normal.
    // DINOv3 (init_weights): no pos_embed; cls_token and storage_tokens normal(std 0.02).
    const float token_std = c->rope ? 0.02f : 1e-6f;
    if (!c->rope) fill_normal(P + vit->pos, (size_t)(1 + M * M) * D, 0.02f, &r);
    fill_normal(P + vit->cls, D, token_std, &r);
    if (c->n_registers) fill_normal(P + vit->reg, (size_t)c->n_registers * D, token_std, &r);
    fill_const(P + vit->mask_token, D, 0.0f);
    // Conv2d default: kaiming_uniform(a=sqrt(5)) -> U(+-1/sqrt(fan_in)), bias likewise.
    float bound = 1.0f / sqrtf((float)(3 * p * p));
    fill_uniform(P + vit->patch_w, (size_t)D * 3 * p * p, bound, &r);
    fill_uniform(P + vit->patch_b, D, bound, &r);
    int ffn_out = c->ffn == VIT_FFN_MLP ? Hf : 2 * Hf;
    for (int l = 0; l < c->depth; l++) {
        const VitBlockOffsets *o = &vit->blocks[l];
        fill_const(P + o->norm1_w, D, 1.0f);
        fill_const(P + o->norm1_b, D, 0.0f);
        fill_normal(P + o->qkv_w, (size_t)3 * D * D, 0.02f, &r);
        if (o->qkv_b != VIT_NO_TENSOR) fill_const(P + o->qkv_b, 3 * D, 0.0f);
        fill_normal(P + o->proj_w, (size_t)D * D, 0.02f, &r);
        if (o->proj_b != VIT_NO_TENSOR) fill_const(P + o->proj_b, D, 0.0f);
        fill_const(P + o->norm2_w, D, 1.0f);
        fill_const(P + o->norm2_b, D, 0.0f);
        fill_normal(P + o->fc1_w, (size_t)ffn_out * D, 0.02f, &r);
        if (o->fc1_b != VIT_NO_TENSOR) fill_const(P + o->fc1_b, ffn_out, 0.0f);
        fill_normal(P + o->fc2_w, (size_t)D * Hf, 0.02f, &r);
        if (o->fc2_b != VIT_NO_TENSOR) fill_const(P + o->fc2_b, D, 0.0f);
        if (c->layerscale > 0) {
            fill_const(P + o->ls1, D, c->layerscale);
            fill_const(P + o->ls2, D, c->layerscale);
        }
    }
    const size_t norms[3][2] = {{vit->norm_w, vit->norm_b}, {vit->cls_norm_w, vit->cls_norm_b},
                                {vit->local_cls_norm_w, vit->local_cls_norm_b}};
    for (int i = 0; i < 3; i++)
        if (norms[i][0] != VIT_NO_TENSOR) fill_const(P + norms[i][0], D, 1.0f), fill_const(P + norms[i][1], D, 0.0f);
}

double vit_flops(const VitConfig *c, int n, int crop, int with_backward) {
    const double D = c->dim, L = c->depth, p = c->patch;
    const double N = (double)(crop / c->patch) * (crop / c->patch), T = 1 + c->n_registers + N;
    const double ffn_out = c->ffn == VIT_FFN_MLP ? c->ffn_hidden : 2.0 * c->ffn_hidden;
    const double block_w = 3 * D * D + D * D + D * ffn_out + c->ffn_hidden * D;
    const double k = with_backward ? 3.0 : 1.0;
    double f = 2.0 * k * block_w * L * T;            // linear layers, per image
    f += 4.0 * k * L * D * T * T;                    // attention QK^T and PV
    f += (with_backward ? 4.0 : 2.0) * N * 3 * p * p * D; // patch embedding
    return f * n;
}

// ---- position-embedding interpolation -------------------------------------------------------------

// Keys' cubic convolution kernel with parameter A.
static double cubic(double x, double A) {
    x = fabs(x);
    if (x <= 1) return ((A + 2) * x - (A + 3)) * x * x + 1;
    if (x < 2) return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
    return 0;
}

// 1-D weights w[out][in] of torch's bicubic resampling from n_in to n_out samples.
// `scale` is the source step per output sample: 1/scale_factor when a scale factor is given, else
// n_in/n_out (torch's area_pixel_compute_scale with align_corners=False).
static void interp_weights_1d(double *w, int n_in, int n_out, double scale, int antialias) {
    memset(w, 0, sizeof(double) * (size_t)n_in * n_out);
    for (int o = 0; o < n_out; o++) {
        double *row = w + (size_t)o * n_in;
        if (!antialias) {
            // upsample_bicubic2d: A = -0.75, taps at floor(src)-1..+2, indices clamped to the border
            double src = scale * (o + 0.5) - 0.5;
            int i0 = (int)floor(src);
            double t = src - i0;
            for (int k = -1; k <= 2; k++) {
                int idx = i0 + k;
                idx = idx < 0 ? 0 : idx >= n_in ? n_in - 1 : idx;
                row[idx] += cubic(t - k, -0.75);
            }
        } else {
            // _upsample_bicubic2d_aa: the PIL-style separable filter (A = -0.5) stretched by the
            // downscale factor, taps inside the image only, normalized to sum 1.
            double support = 2.0 * (scale >= 1.0 ? scale : 1.0);
            double inv = scale >= 1.0 ? 1.0 / scale : 1.0;
            double center = scale * (o + 0.5);
            int lo = (int)(center - support + 0.5);
            if (lo < 0) lo = 0;
            int hi = (int)(center + support + 0.5);
            if (hi > n_in) hi = n_in;
            double total = 0;
            for (int i = lo; i < hi; i++) total += cubic((i - center + 0.5) * inv, -0.5);
            for (int i = lo; i < hi; i++) row[i] = total != 0 ? cubic((i - center + 0.5) * inv, -0.5) / total : 0;
        }
    }
}

void vit_pos_interp_matrix(float *W, int M, int g, float offset, int antialias) {
    // torch: scale = 1 / scale_factor when a scale factor is given, else in/out
    double scale = offset > 0 ? 1.0 / (((double)g + (double)offset) / M) : (double)M / g;
    double *w = dino_malloc(sizeof(double) * (size_t)g * M);
    interp_weights_1d(w, M, g, scale, antialias);
    for (int oy = 0; oy < g; oy++)
        for (int ox = 0; ox < g; ox++)
            for (int iy = 0; iy < M; iy++)
                for (int ix = 0; ix < M; ix++)
                    W[((size_t)oy * g + ox) * M * M + (size_t)iy * M + ix] =
                        (float)(w[(size_t)oy * M + iy] * w[(size_t)ox * M + ix]);
    free(w);
}

// ---- activations ----------------------------------------------------------------------------------

typedef struct {
    float *x_in, *x_mid;                 // [B,T,D] residual stream at block input / after attention
    float *xs1, *ln1, *mean1, *rstd1;    // attention branch on the kept subset [S,T,D]
    float *qkv, *att_saved, *att, *proj; // [S,T,3D], saved, [S,T,D], [S,T,D]
    float *xs2, *ln2, *mean2, *rstd2;    // FFN branch
    float *fc1, *act, *fc2;              // [S,T,Hf or 2Hf], [S,T,Hf], [S,T,D]
    int *idx1, *idx2;                    // [S] subset rows (backend memory)
} BlockActs;

struct VitActs {
    VitActsMode mode;
    int depth;
    int B, crop, g, N, T, S, subset; // subset: branches run on S < B rows in the last forward
    float *cols;       // [B*N, 3p^2] patches
    float *patch;      // [B*N, D] patch embeddings
    float *pos_used;   // [1+N, D] pos-embed at this grid (NULL when the grid is the training one)
    float *interp;     // [N, M*M] interpolation matrix (backend memory)
    const uint8_t *mask;
    // Per block. STORE_ALL: every buffer the block's own. RECOMPUTE: x_in and idx own, the
    // intermediates alias `work`. FORWARD_ONLY: everything aliases `work` and two alternating streams.
    BlockActs *blk;
    BlockActs work;
    int work_block;    // the block whose intermediates `work` holds now (-1: none)
    float *x_final, *x_norm, *mean_f, *rstd_f; // [B,T,D]
    VitGradHook grad_hook;
    void *grad_hook_ctx;
    // backward scratch (not in FORWARD_ONLY); dx .. dact and the shared re-derive buffers may be another
    // VitActs' (vit_acts_new_sharing)
    float *dx, *dS_a, *dS_b, *dqkv, *dfc1, *dact, *dpatch, *dpos_used;
    float *shared_xs, *shared_ln, *shared_act;
    // DINOv3: per-block RoPE tables [depth][N*Dh] (identity augmentation unless set), the qkv biases
    // with their k third zeroed [depth][3D] (mask_k_bias), local crops (local_cls_norm)
    float *rope_sin, *rope_cos, *qkv_bias_masked;
    int local;
    void **owned;      // every buffer allocated for these activations, released by vit_acts_free
    int n_owned, cap_owned;
    size_t bytes;
};

int vit_acts_tokens(const VitActs *a) { return a->T; }

void vit_acts_set_local_crops(VitActs *a, int local) { a->local = local; }

void vit_acts_set_rope_aug(Backend *be, const Vit *vit, VitActs *a, const RopeAug *aug) {
    const VitConfig *c = &vit->cfg;
    DINO_ASSERT(c->rope && a->rope_sin, "vit_acts_set_rope_aug on a ViT without RoPE");
    const size_t per = (size_t)a->N * (c->dim / c->heads), n = (size_t)c->depth * per;
    float *s = dino_malloc(sizeof(float) * n), *co = dino_malloc(sizeof(float) * n);
    for (int l = 0; l < c->depth; l++)
        if (l == 0 || aug) rope_tables(&c->rope_cfg, c->dim / c->heads, a->g, a->g, aug ? &aug[l] : NULL, s + l * per,
                                       co + l * per);
        else memcpy(s + l * per, s, sizeof(float) * per), memcpy(co + l * per, co, sizeof(float) * per);
    be->to_device(be, a->rope_sin, s, sizeof(float) * n);
    be->to_device(be, a->rope_cos, co, sizeof(float) * n);
    free(s), free(co);
}

void vit_draw_rope_aug(const Vit *vit, Rng key, RopeAug *aug) {
    for (int l = 0; l < vit->cfg.depth; l++) {
        Rng r = rng_make(rng_u64(&key), (uint64_t)l, 0x726f7065, 0);
        aug[l] = rope_draw_aug(&vit->cfg.rope_cfg, &r);
    }
}
size_t vit_acts_bytes(const VitActs *a) { return a->bytes; }

void vit_acts_set_grad_hook(VitActs *a, VitGradHook fn, void *ctx) {
    a->grad_hook = fn;
    a->grad_hook_ctx = ctx;
}

static void *own(Backend *be, VitActs *a, size_t bytes) {
    if (a->n_owned == a->cap_owned) {
        a->cap_owned = a->cap_owned ? 2 * a->cap_owned : 64;
        a->owned = dino_realloc(a->owned, sizeof(void *) * (size_t)a->cap_owned);
    }
    void *p = be->alloc(be, bytes);
    a->owned[a->n_owned++] = p;
    a->bytes += bytes;
    return p;
}
static float *fown(Backend *be, VitActs *a, size_t n) { return own(be, a, sizeof(float) * n); }
// A branch activation (or its gradient) that the backend may store in bf16 (model/backend.h, "Activation
// dtypes"): the LayerNorm outputs, qkv, attention output, projections, FFN activations and their
// gradients. The residual stream, its gradient, the gathered branch inputs and the LayerNorm statistics
// stay fp32 (LayerScale starts at 1e-5: a bf16 stream would drop the blocks' contributions).
static float *bown(Backend *be, VitActs *a, size_t n) {
    if (a->n_owned == a->cap_owned) {
        a->cap_owned = a->cap_owned ? 2 * a->cap_owned : 64;
        a->owned = dino_realloc(a->owned, sizeof(void *) * (size_t)a->cap_owned);
    }
    size_t bytes = 0;
    float *p = be->alloc_act(be, n, DINO_BF16, &bytes);
    a->owned[a->n_owned++] = p;
    a->bytes += bytes;
    return p;
}

// The intermediates of one block (everything but x_in and the subset indices), sized for all B rows:
// the subset size may change between calls. With `cheap_shared` (stored activations) the five that
// backward re-derives in one elementwise or row-wise pass are not allocated: the branch inputs gathered
// for stochastic depth (xs1, xs2: gathered again from x_in / x_mid), the LayerNorm outputs (ln1, ln2:
// normalized again from those inputs) and the FFN activation (act: GELU / SwiGLU of fc1 again); the
// caller points them at buffers shared by all blocks. 8 of the 21 D-wide floats a token would keep per
// block (PyTorch's autograd keeps all of them).
static void alloc_intermediates(Backend *be, VitActs *a, BlockActs *k, const VitConfig *c, int cheap_shared) {
    const size_t rows = (size_t)a->B * a->T, D = (size_t)c->dim, Hf = (size_t)c->ffn_hidden;
    const size_t ffn_out = c->ffn == VIT_FFN_MLP ? Hf : 2 * Hf;
    k->x_mid = fown(be, a, rows * D);
    if (!cheap_shared) k->xs1 = fown(be, a, rows * D);
    if (!cheap_shared) k->ln1 = bown(be, a, rows * D);
    k->mean1 = fown(be, a, rows);
    k->rstd1 = fown(be, a, rows);
    k->qkv = bown(be, a, rows * 3 * D);
    k->att_saved = fown(be, a, be->attention_saved_floats(be, a->B, a->T, c->heads, c->dim / c->heads));
    k->att = bown(be, a, rows * D);
    k->proj = bown(be, a, rows * D);
    if (!cheap_shared) k->xs2 = fown(be, a, rows * D);
    if (!cheap_shared) k->ln2 = bown(be, a, rows * D);
    k->mean2 = fown(be, a, rows);
    k->rstd2 = fown(be, a, rows);
    k->fc1 = bown(be, a, rows * ffn_out);
    if (!cheap_shared) k->act = bown(be, a, rows * Hf);
    k->fc2 = bown(be, a, rows * D);
}

VitActs *vit_acts_new(Backend *be, const Vit *vit, int B, int crop, VitActsMode mode) {
    return vit_acts_new_sharing(be, vit, B, crop, mode, NULL);
}

VitActs *vit_acts_new_sharing(Backend *be, const Vit *vit, int B, int crop, VitActsMode mode, const VitActs *share) {
    const VitConfig *c = &vit->cfg;
    char err[DINO_ERRLEN];
    if (vit_check_crop(c, crop, err)) DINO_DIE("%s", err);
    DINO_ASSERT(mode == VIT_ACTS_STORE_ALL || mode == VIT_ACTS_RECOMPUTE || mode == VIT_ACTS_FORWARD_ONLY,
                "bad activation mode %d", (int)mode);
    VitActs *a = dino_calloc(1, sizeof *a);
    const int D = c->dim, p = c->patch, M = vit->grid, Hf = c->ffn_hidden;
    const int ffn_out = c->ffn == VIT_FFN_MLP ? Hf : 2 * Hf;
    a->mode = mode;
    a->depth = c->depth;
    a->B = B;
    a->crop = crop;
    a->g = crop / p;
    a->N = a->g * a->g;
    a->T = 1 + c->n_registers + a->N;
    a->work_block = -1;
    const size_t rows = (size_t)B * a->T, BN = (size_t)B * a->N;
    // the patch embedding's input columns and output (and below its gradient) may be bf16: the GEMM rounds
    // cols and dpatch to bf16 anyway, the output joins the fp32 stream in tokens_fwd
    a->cols = bown(be, a, BN * 3 * p * p);
    a->patch = bown(be, a, BN * D);
    if (c->rope) {
        // no position table: tokens_fwd adds rows of zeros (exact), its position gradient goes to scratch
        a->pos_used = fown(be, a, (size_t)(1 + a->N) * D);
        if (mode != VIT_ACTS_FORWARD_ONLY) a->dpos_used = fown(be, a, (size_t)(1 + a->N) * D);
        const size_t tab = (size_t)c->depth * a->N * (D / c->heads);
        a->rope_sin = fown(be, a, tab);
        a->rope_cos = fown(be, a, tab);
        vit_acts_set_rope_aug(be, vit, a, NULL);
        if (c->mask_k_bias && c->qkv_bias) a->qkv_bias_masked = fown(be, a, (size_t)c->depth * 3 * D);
    } else if (a->g != M) {
        float *W = dino_malloc(sizeof(float) * (size_t)a->N * M * M);
        vit_pos_interp_matrix(W, M, a->g, c->interpolate_offset, c->interpolate_antialias);
        a->interp = fown(be, a, (size_t)a->N * M * M);
        be->to_device(be, a->interp, W, sizeof(float) * (size_t)a->N * M * M);
        free(W);
        a->pos_used = fown(be, a, (size_t)(1 + a->N) * D);
        if (mode != VIT_ACTS_FORWARD_ONLY) a->dpos_used = fown(be, a, (size_t)(1 + a->N) * D);
    }
    a->blk = dino_calloc((size_t)c->depth, sizeof(BlockActs));
    if (mode != VIT_ACTS_STORE_ALL) alloc_intermediates(be, a, &a->work, c, 0);
    // share: backward scratch and re-derive buffers from another VitActs of this ViT with as many rows
    // or more (only ever used within one group's forward or backward, never across them)
    if (share && ((size_t)share->B * share->T < rows || share->mode == VIT_ACTS_FORWARD_ONLY)) share = NULL;
    float *shared_xs = NULL, *shared_ln = NULL, *shared_act = NULL; // STORE_ALL: re-derived in backward
    if (mode == VIT_ACTS_STORE_ALL) {
        if (share && share->shared_xs) {
            shared_xs = share->shared_xs, shared_ln = share->shared_ln, shared_act = share->shared_act;
        } else {
            shared_xs = fown(be, a, rows * D);
            shared_ln = bown(be, a, rows * D);
            shared_act = bown(be, a, rows * Hf);
        }
        a->shared_xs = shared_xs, a->shared_ln = shared_ln, a->shared_act = shared_act;
    }
    float *stream[2] = {NULL, NULL};
    if (mode == VIT_ACTS_FORWARD_ONLY) {
        stream[0] = fown(be, a, rows * D);
        stream[1] = fown(be, a, rows * D);
        a->work.idx1 = own(be, a, sizeof(int) * (size_t)B);
        a->work.idx2 = own(be, a, sizeof(int) * (size_t)B);
    }
    for (int l = 0; l < c->depth; l++) {
        BlockActs *k = &a->blk[l];
        if (mode == VIT_ACTS_STORE_ALL) {
            alloc_intermediates(be, a, k, c, 1);
            k->xs1 = k->xs2 = shared_xs; // used one after the other, forward and backward
            k->ln1 = k->ln2 = shared_ln;
            k->act = shared_act;
        } else {
            *k = a->work;
        }
        if (mode == VIT_ACTS_FORWARD_ONLY) {
            k->x_in = stream[l & 1];
        } else {
            k->x_in = fown(be, a, rows * D);
            k->idx1 = own(be, a, sizeof(int) * (size_t)B);
            k->idx2 = own(be, a, sizeof(int) * (size_t)B);
        }
    }
    a->x_final = fown(be, a, rows * D);
    a->x_norm = fown(be, a, rows * D);
    a->mean_f = fown(be, a, rows);
    a->rstd_f = fown(be, a, rows);
    if (mode != VIT_ACTS_FORWARD_ONLY) {
        if (share) {
            a->dx = share->dx, a->dS_a = share->dS_a, a->dS_b = share->dS_b;
            a->dqkv = share->dqkv, a->dfc1 = share->dfc1, a->dact = share->dact;
        } else {
            a->dx = fown(be, a, rows * D);
            a->dS_a = fown(be, a, rows * D);
            a->dS_b = bown(be, a, rows * D);
            a->dqkv = bown(be, a, rows * 3 * D);
            a->dfc1 = bown(be, a, rows * ffn_out);
            a->dact = bown(be, a, rows * Hf);
        }
        a->dpatch = bown(be, a, BN * D);
    }
    return a;
}

void vit_acts_free(Backend *be, VitActs *a) {
    if (!a) return;
    for (int i = 0; i < a->n_owned; i++) be->release(be, a->owned[i]);
    free(a->owned);
    free(a->blk);
    free(a);
}

// ---- stochastic depth -----------------------------------------------------------------------------

int vit_drop_subset_size(const Vit *vit, int B) {
    // The reference, max(int(b * (1 - sample_drop_ratio)), 1), in double as Python: with the rate
    // narrowed to float, B = 10 at 0.3 would keep 6 images instead of 7.
    const double r = vit->cfg.drop_path_rate;
    if (r <= 0) return B;
    int s = (int)(B * (1.0 - r)); // int() truncates toward zero, as the cast
    return s < 1 ? 1 : s;
}

void vit_draw_drop_subsets(const Vit *vit, int B, Rng key, int *subsets) {
    int S = vit_drop_subset_size(vit, B);
    for (int l = 0; l < vit->cfg.depth; l++)
        for (int br = 0; br < 2; br++) {
            Rng r = rng_make(rng_u64(&key), (uint64_t)l, (uint64_t)br, 0);
            rng_subset_sorted(&r, subsets + ((size_t)l * 2 + br) * S, S, B);
        }
}

// ---- forward --------------------------------------------------------------------------------------

#define PTR(base, off) ((base) + (off))

// One residual branch input: the kept rows of x (gathered) or x itself.
static const float *branch_input(Backend *be, const VitActs *a, float *dst, const float *x, const int *idx, int D) {
    if (!a->subset) return x;
    be->gather_rows(be, dst, x, idx, a->S, (size_t)a->T * D);
    return dst;
}

// The LayerNorm that follows a residual update: block l's LN2, block l+1's LN1 or the final norm. idx:
// the images whose rows it normalizes (their copies go to xs), NULL for all.
typedef struct {
    float *out, *mean, *rstd, *xs;
    const float *w, *b;
    const int *idx;
} NextNorm;

// x_out = x_in + scale * LayerScale(br) at the kept rows (idx), then the next LayerNorm of x_out: one
// fused op, the same bits as copy + residual_fwd + gather_rows + layernorm_fwd (docs/cuda-backend.md,
// "Residual + LayerNorm").
static void residual_then_norm(Backend *be, const VitConfig *c, const VitActs *a, float *x_out, const float *x_in,
                               const float *br, const float *gamma, const int *idx, const NextNorm *nx) {
    const int D = c->dim;
    const float scale = (float)a->B / (float)a->S;
    be->residual_layernorm_fwd(be, x_out, nx->out, nx->mean, nx->rstd, nx->idx ? nx->xs : NULL, x_in, br, gamma, idx,
                               a->S, scale, nx->w, nx->b, nx->idx, nx->idx ? a->S : a->B, a->B, a->T, D, LN_EPS);
}

// Block l on k->x_in: fills the block's intermediates and, unless x_out is NULL (recomputation in
// backward), writes the block's output to x_out together with the LayerNorm that reads it next (block
// l+1's LN1, or the final norm after the last block). ln1_ready: the block before computed this block's
// LN1 that way. next_idx1: block l+1's LN1 image subset (host), uploaded once this block's own idx1 is
// used (forward-only activations share one idx1 buffer between blocks).
static void block_forward(Backend *be, const Vit *vit, const float *P, VitActs *a, int l, float *x_out, int ln1_ready,
                          const int *next_idx1) {
    const VitConfig *c = &vit->cfg;
    const int T = a->T, D = c->dim, H = c->heads, Dh = D / H;
    const int Hf = c->ffn_hidden;
    const int S = a->S, rows_s = S * T;
    const VitBlockOffsets *o = &vit->blocks[l];
    BlockActs *k = &a->blk[l];
    const int *idx1 = a->subset ? k->idx1 : NULL, *idx2 = a->subset ? k->idx2 : NULL;
    const float *ls1 = c->layerscale > 0 ? PTR(P, o->ls1) : NULL;
    const float *ls2 = c->layerscale > 0 ? PTR(P, o->ls2) : NULL;

    // x_mid = x_in + LS1(attn(LN1(x_in)))
    if (!ln1_ready) {
        const float *in1 = branch_input(be, a, k->xs1, k->x_in, idx1, D);
        be->layernorm_fwd(be, k->ln1, k->mean1, k->rstd1, in1, PTR(P, o->norm1_w), PTR(P, o->norm1_b), rows_s, D,
                          LN_EPS);
    }
    const float *qkv_b = !c->qkv_bias ? NULL : a->qkv_bias_masked ? a->qkv_bias_masked + (size_t)l * 3 * D : PTR(P, o->qkv_b);
    be->linear_fwd(be, k->qkv, k->ln1, PTR(P, o->qkv_w), qkv_b, rows_s, D, 3 * D);
    if (c->rope) { // rotated in place: attention saves (and its backward uses) the rotated q and k
        const size_t tab = (size_t)l * a->N * Dh;
        be->rope_fwd(be, k->qkv, a->rope_sin + tab, a->rope_cos + tab, S, T, a->N, H, Dh);
    }
    be->attention_fwd(be, k->att, k->att_saved, k->qkv, S, T, H, Dh);
    be->linear_fwd(be, k->proj, k->att, PTR(P, o->proj_w), c->proj_bias ? PTR(P, o->proj_b) : NULL, rows_s, D, D);
    // ... and LN2 of x_mid's kept rows in the same pass
    const NextNorm ln2 = {k->ln2, k->mean2, k->rstd2, k->xs2, PTR(P, o->norm2_w), PTR(P, o->norm2_b), idx2};
    residual_then_norm(be, c, a, k->x_mid, k->x_in, k->proj, ls1, idx1, &ln2);

    // x_out = x_mid + LS2(ffn(LN2(x_mid)))
    const float *fc1_b = c->ffn_bias ? PTR(P, o->fc1_b) : NULL;
    // fc1 (w12) and its activation in one op: one epilogue pass on cuda, the same bits as the two ops
    if (c->ffn == VIT_FFN_MLP) be->linear_gelu_fwd(be, k->fc1, k->act, k->ln2, PTR(P, o->fc1_w), fc1_b, rows_s, D, Hf);
    else be->linear_swiglu_fwd(be, k->fc1, k->act, k->ln2, PTR(P, o->fc1_w), fc1_b, rows_s, D, Hf);
    be->linear_fwd(be, k->fc2, k->act, PTR(P, o->fc2_w), c->ffn_bias ? PTR(P, o->fc2_b) : NULL, rows_s, Hf, D);
    a->work_block = l;
    if (!x_out) return;
    NextNorm next = {a->x_norm, a->mean_f, a->rstd_f, NULL, PTR(P, vit->norm_w), PTR(P, vit->norm_b), NULL};
    if (l + 1 < c->depth) { // block l+1's LN1 (with forward-only or recomputed activations: the `work` buffers)
        BlockActs *kn = &a->blk[l + 1];
        const VitBlockOffsets *on = &vit->blocks[l + 1];
        if (a->subset) be->to_device(be, kn->idx1, next_idx1, sizeof(int) * S);
        next = (NextNorm){kn->ln1, kn->mean1, kn->rstd1, kn->xs1, PTR(P, on->norm1_w), PTR(P, on->norm1_b),
                          a->subset ? kn->idx1 : NULL};
    }
    residual_then_norm(be, c, a, x_out, k->x_mid, k->fc2, ls2, idx2, &next);
}

// The final norm of the CLS and storage tokens when it is not `norm` (the DINOv3 ViT's
// forward_features_list): local_cls_norm for local crops in training when untied, else cls_norm when
// untied from the patches. Returns 1 and their offsets then, else 0.
static int prefix_norm(const Vit *vit, const VitActs *a, size_t *w, size_t *b) {
    const VitConfig *c = &vit->cfg;
    if (c->untie_global_and_local_cls_norm && a->local) *w = vit->local_cls_norm_w, *b = vit->local_cls_norm_b;
    else if (c->untie_cls_and_patch_norms) *w = vit->cls_norm_w, *b = vit->cls_norm_b;
    else return 0;
    return 1;
}

const float *vit_forward(Backend *be, const Vit *vit, const float *P, VitActs *a, const float *images,
                         const uint8_t *masks, const int *drop_subsets) {
    const VitConfig *c = &vit->cfg;
    const int B = a->B, N = a->N, D = c->dim, p = c->patch, R = c->n_registers, M = vit->grid, BN = B * N;

    a->S = drop_subsets ? vit_drop_subset_size(vit, B) : B;
    a->subset = a->S < B;
    a->mask = masks;
    a->work_block = -1;
    const int S = a->S;

    // patch embedding: a strided conv as im2col + GEMM
    be->im2col(be, a->cols, images, B, 3, a->crop, a->crop, p);
    be->linear_fwd(be, a->patch, a->cols, PTR(P, vit->patch_w), PTR(P, vit->patch_b), BN, 3 * p * p, D);

    // DINOv3: the qkv biases with their k third held at zero (LinearKMaskedBias), once per forward
    if (a->qkv_bias_masked)
        for (int l = 0; l < c->depth; l++) {
            float *bm = a->qkv_bias_masked + (size_t)l * 3 * D;
            be->copy(be, bm, PTR(P, vit->blocks[l].qkv_b), sizeof(float) * 3 * D);
            be->zero(be, bm + D, sizeof(float) * D);
        }
    // position embedding at this crop's grid: row 0 (CLS) as is, the patch grid interpolated (RoPE: zeros)
    const float *pos = c->rope ? a->pos_used : PTR(P, vit->pos);
    if (a->pos_used && !c->rope) {
        be->copy(be, a->pos_used, pos, sizeof(float) * D);
        be->gemm(be, 0, 0, N, D, M * M, 1.0f, a->interp, M * M, pos + D, D, 0.0f, a->pos_used + D, D);
        pos = a->pos_used;
    }
    float *x = a->blk[0].x_in;
    be->tokens_fwd(be, x, a->patch, PTR(P, vit->cls), R ? PTR(P, vit->reg) : NULL, pos, PTR(P, vit->mask_token),
                   masks, B, N, R, D);

    // each block's idx1 is uploaded by the block before it (block_forward), with the LN1 it fuses
    if (a->subset) be->to_device(be, a->blk[0].idx1, drop_subsets, sizeof(int) * S);
    for (int l = 0; l < c->depth; l++) {
        const int last = l + 1 == c->depth;
        if (a->subset) be->to_device(be, a->blk[l].idx2, drop_subsets + ((size_t)l * 2 + 1) * S, sizeof(int) * S);
        const int *next_idx1 = a->subset && !last ? drop_subsets + ((size_t)(l + 1) * 2 + 0) * S : NULL;
        // the final norm of all rows comes with the last block's residual
        block_forward(be, vit, P, a, l, last ? a->x_final : a->blk[l + 1].x_in, l > 0, next_idx1);
    }
    size_t pw, pb;
    if (prefix_norm(vit, a, &pw, &pb)) // DINOv3 untied: the CLS and storage rows again with their own norm
        for (int b = 0; b < B; b++) {
            const size_t r0 = (size_t)b * a->T;
            be->layernorm_fwd(be, a->x_norm + r0 * D, a->mean_f + r0, a->rstd_f + r0, a->x_final + r0 * D, PTR(P, pw),
                              PTR(P, pb), 1 + R, D, LN_EPS);
        }
    return a->x_norm;
}

// ---- backward -------------------------------------------------------------------------------------

// Gradient of a branch's LayerNorm input, added into dx at the kept rows.
static void branch_input_grad(Backend *be, VitActs *a, float *dx, float *scratch, const float *dln,
                              const float *ln_in, const float *mean, const float *rstd, const float *w, float *dw,
                              float *db, const int *idx, int D) {
    const int rows_s = a->S * a->T;
    if (!a->subset) {
        be->layernorm_bwd(be, dx, dw, db, dln, ln_in, mean, rstd, w, rows_s, D);
        return;
    }
    be->zero(be, scratch, sizeof(float) * (size_t)rows_s * D);
    be->layernorm_bwd(be, scratch, dw, db, dln, ln_in, mean, rstd, w, rows_s, D);
    be->scatter_add_rows(be, dx, scratch, idx, a->S, (size_t)a->T * D);
}

void vit_backward(Backend *be, const Vit *vit, const float *P, float *G, VitActs *a, const float *d_xnorm) {
    const VitConfig *c = &vit->cfg;
    const int B = a->B, T = a->T, N = a->N, D = c->dim, H = c->heads, Dh = D / H, p = c->patch, R = c->n_registers;
    const int M = vit->grid, Hf = c->ffn_hidden, ffn_out = c->ffn == VIT_FFN_MLP ? Hf : 2 * Hf;
    const int S = a->S, rows_s = S * T;
    const float scale = (float)B / (float)S;
    DINO_ASSERT(a->mode != VIT_ACTS_FORWARD_ONLY, "vit_backward on forward-only activations");
    float *dx = a->dx; // gradient w.r.t. the residual stream, walking down the blocks

    be->zero(be, dx, sizeof(float) * (size_t)B * T * D);
    size_t pw, pb;
    // one final norm over all rows: its backward comes with the last block's FFN residual backward (below)
    const int final_norm_fused = !prefix_norm(vit, a, &pw, &pb);
    if (!final_norm_fused) { // `norm` sees the patch rows only (the CLS and storage rows' gradient zeroed), theirs the rest
        float *dpatch_only = a->dS_a;
        be->copy(be, dpatch_only, d_xnorm, sizeof(float) * (size_t)B * T * D);
        for (int b = 0; b < B; b++) be->zero(be, dpatch_only + (size_t)b * T * D, sizeof(float) * (size_t)(1 + R) * D);
        be->layernorm_bwd(be, dx, PTR(G, vit->norm_w), PTR(G, vit->norm_b), dpatch_only, a->x_final, a->mean_f,
                          a->rstd_f, PTR(P, vit->norm_w), B * T, D);
        for (int b = 0; b < B; b++) {
            const size_t r0 = (size_t)b * T;
            be->layernorm_bwd(be, dx + r0 * D, PTR(G, pw), PTR(G, pb), d_xnorm + r0 * D, a->x_final + r0 * D,
                              a->mean_f + r0, a->rstd_f + r0, PTR(P, pw), 1 + R, D);
        }
    }

    for (int l = c->depth - 1; l >= 0; l--) {
        const VitBlockOffsets *o = &vit->blocks[l];
        BlockActs *k = &a->blk[l];
        // The same ops on the same inputs: bit-identical intermediates on a deterministic backend.
        if (a->mode == VIT_ACTS_RECOMPUTE && a->work_block != l) block_forward(be, vit, P, a, l, NULL, 0, NULL);
        const int *idx1 = a->subset ? k->idx1 : NULL, *idx2 = a->subset ? k->idx2 : NULL;
        const float *ls1 = c->layerscale > 0 ? PTR(P, o->ls1) : NULL;
        const float *ls2 = c->layerscale > 0 ? PTR(P, o->ls2) : NULL;

        // Stored activations keep neither the FFN activation, the LayerNorm outputs nor the gathered
        // branch inputs (shared buffers, see alloc_intermediates): derived again here, the same ops on
        // the same inputs, so the same bits (act: gelu_fwd / swiglu_fwd of the stored fc1 is what the forward's
        // fused linear_gelu_fwd / linear_swiglu_fwd computed from fc1 as stored; RECOMPUTE runs the fused op
        // again in block_forward).
        const int rederive = a->mode == VIT_ACTS_STORE_ALL;
        if (rederive) {
            if (c->ffn == VIT_FFN_MLP) be->gelu_fwd(be, k->act, k->fc1, (size_t)rows_s * Hf);
            else be->swiglu_fwd(be, k->act, k->fc1, rows_s, Hf);
            const float *in2 = branch_input(be, a, k->xs2, k->x_mid, idx2, D);
            be->layernorm_fwd(be, k->ln2, k->mean2, k->rstd2, in2, PTR(P, o->norm2_w), PTR(P, o->norm2_b), rows_s,
                              D, LN_EPS);
        }
        // FFN branch: dx holds d x_out; the identity path keeps it as d x_mid, the branch adds to it
        float *dbr = a->dS_a;
        if (l == c->depth - 1 && final_norm_fused) // the final norm's input gradient into dx, then the branch's
            be->layernorm_residual_bwd(be, dx, PTR(G, vit->norm_w), PTR(G, vit->norm_b), dbr, ls2 ? PTR(G, o->ls2) : NULL,
                                       d_xnorm, a->x_final, a->mean_f, a->rstd_f, PTR(P, vit->norm_w), NULL, B, k->fc2,
                                       ls2, idx2, S, scale, B, T, D);
        else
            be->residual_bwd(be, dbr, ls2 ? PTR(G, o->ls2) : NULL, dx, k->fc2, ls2, idx2, S, T, D, scale);
        be->linear_bwd(be, a->dact, PTR(G, o->fc2_w), c->ffn_bias ? PTR(G, o->fc2_b) : NULL, dbr, k->act,
                       PTR(P, o->fc2_w), rows_s, Hf, D);
        if (c->ffn == VIT_FFN_MLP) be->gelu_bwd(be, a->dfc1, a->dact, k->fc1, (size_t)rows_s * Hf);
        else be->swiglu_bwd(be, a->dfc1, a->dact, k->fc1, rows_s, Hf);
        float *dln = a->dS_b;
        be->linear_bwd(be, dln, PTR(G, o->fc1_w), c->ffn_bias ? PTR(G, o->fc1_b) : NULL, a->dfc1, k->ln2,
                       PTR(P, o->fc1_w), rows_s, D, ffn_out);
        // LN2's input gradient into dx (which then holds d x_mid) and the attention branch's residual
        // backward from it, in one op (the same bits as layernorm_bwd [+ scatter_add_rows] + residual_bwd)
        be->layernorm_residual_bwd(be, dx, PTR(G, o->norm2_w), PTR(G, o->norm2_b), dbr, ls1 ? PTR(G, o->ls1) : NULL, dln,
                                   a->subset ? k->xs2 : k->x_mid, k->mean2, k->rstd2, PTR(P, o->norm2_w), idx2, S,
                                   k->proj, ls1, idx1, S, scale, B, T, D);
        if (rederive) { // after: xs1 and xs2 share a buffer
            const float *in1 = branch_input(be, a, k->xs1, k->x_in, idx1, D);
            be->layernorm_fwd(be, k->ln1, k->mean1, k->rstd1, in1, PTR(P, o->norm1_w), PTR(P, o->norm1_b), rows_s,
                              D, LN_EPS);
        }
        float *datt = a->dS_b;
        be->linear_bwd(be, datt, PTR(G, o->proj_w), c->proj_bias ? PTR(G, o->proj_b) : NULL, dbr, k->att,
                       PTR(P, o->proj_w), rows_s, D, D);
        be->attention_bwd(be, a->dqkv, datt, k->qkv, k->att_saved, S, T, H, Dh);
        if (c->rope) {
            const size_t tab = (size_t)l * N * Dh;
            be->rope_bwd(be, a->dqkv, a->rope_sin + tab, a->rope_cos + tab, S, T, N, H, Dh);
        }
        be->linear_bwd(be, dln, PTR(G, o->qkv_w), c->qkv_bias ? PTR(G, o->qkv_b) : NULL, a->dqkv, k->ln1,
                       PTR(P, o->qkv_w), rows_s, D, 3 * D);
        // the masked k bias gets no gradient (the official bias * bias_mask); the gradient buffer's k third
        // only ever holds such gradients, so zeroing it keeps other crop groups' (zero) share exact
        if (a->qkv_bias_masked) be->zero(be, PTR(G, o->qkv_b) + D, sizeof(float) * D);
        branch_input_grad(be, a, dx, a->dS_a, dln, a->subset ? k->xs1 : k->x_in, k->mean1, k->rstd1,
                          PTR(P, o->norm1_w), PTR(G, o->norm1_w), PTR(G, o->norm1_b), idx1, D);
        if (a->grad_hook) a->grad_hook(a->grad_hook_ctx, o->norm1_w); // block l and above are final
    }

    // tokens: CLS, registers, mask token, position embedding (through the interpolation), patches
    float *dpos = a->dpos_used ? a->dpos_used : PTR(G, vit->pos);
    if (a->dpos_used) be->zero(be, a->dpos_used, sizeof(float) * (size_t)(1 + N) * D);
    be->tokens_bwd(be, a->dpatch, PTR(G, vit->cls), R ? PTR(G, vit->reg) : NULL, dpos, PTR(G, vit->mask_token), dx,
                   a->mask, B, N, R, D);
    if (a->dpos_used && !c->rope) { // RoPE: no position table, the scratch is dropped
        be->axpy(be, PTR(G, vit->pos), 1.0f, a->dpos_used, D);
        be->gemm(be, 1, 0, M * M, D, N, 1.0f, a->interp, M * M, a->dpos_used + D, D, 1.0f, PTR(G, vit->pos) + D, D);
    }
    be->linear_bwd(be, NULL, PTR(G, vit->patch_w), PTR(G, vit->patch_b), a->dpatch, a->cols, PTR(P, vit->patch_w),
                   B * N, 3 * p * p, D);
}
