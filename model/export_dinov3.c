// The DINOv3 ViT's export: name maps and the transformers config (see export_dinov3.h).
#include "model/export_dinov3.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"

int dinov3_arch_check(const Dinov3Arch *a, char *err) {
    if (a->dim <= 0 || a->depth <= 0 || a->heads <= 0 || a->patch <= 0 || a->ffn_hidden <= 0 || a->n_storage < 0) {
        dino_seterr(err, "DINOv3 export: width %d, depth %d, heads %d, patch %d, ffn width %d, storage tokens %d: "
                    "every size must be positive", a->dim, a->depth, a->heads, a->patch, a->ffn_hidden, a->n_storage);
        return -1;
    }
    if (a->dim % a->heads || (a->dim / a->heads) % 4) {
        dino_seterr(err, "DINOv3 export: width %d over %d heads is not a head width divisible by 4 (axial RoPE)",
                    a->dim, a->heads);
        return -1;
    }
    if (!(a->ln_eps > 0) || !(a->ln_eps < 1)) {
        dino_seterr(err, "DINOv3 export: layer_norm_eps %g must be in (0, 1)", a->ln_eps);
        return -1;
    }
    return rope_config_check(&a->rope, a->dim / a->heads, err);
}

void dinov3_arch_from_vit(const VitConfig *c, Dinov3Arch *a) {
    memset(a, 0, sizeof *a);
    a->dim = c->dim;
    a->depth = c->depth;
    a->heads = c->heads;
    a->patch = c->patch;
    a->img_size = c->img_size;
    a->n_storage = c->n_registers;
    a->swiglu = c->ffn == VIT_FFN_SWIGLU;
    a->ffn_hidden = c->ffn_hidden;
    a->swiglu_fused = 0; // the DINOv3 ViT registers w1, w2, w3
    a->rope = c->rope_cfg;
    a->ln_eps = c->ln_eps;
    a->qkv_bias = c->qkv_bias;
    a->mask_k_bias = c->mask_k_bias;
    a->proj_bias = c->proj_bias;
    a->ffn_bias = c->ffn_bias;
    a->layerscale = c->layerscale > 0;
    a->untie_cls_norm = c->untie_cls_and_patch_norms;
    a->local_cls_norm = c->untie_global_and_local_cls_norm;
}

int dinov3_arch_to_vit(const Dinov3Arch *a, VitConfig *c, char *err) {
    if (a->swiglu_fused) {
        dino_seterr(err, "DINOv3 export: a fused SwiGLU w12 is not the DINOv3 ViT's layout (w1, w2, w3)");
        return -1;
    }
    memset(c, 0, sizeof *c);
    snprintf(c->arch, sizeof c->arch, "custom");
    static const struct { const char *name; int dim, depth; } ARCH[] = {
        {"vit_small", 384, 12}, {"vit_base", 768, 12}, {"vit_large", 1024, 24}, {"vit_huge2", 1280, 32}};
    for (size_t i = 0; i < sizeof ARCH / sizeof ARCH[0]; i++)
        if (ARCH[i].dim == a->dim && ARCH[i].depth == a->depth) snprintf(c->arch, sizeof c->arch, "%s", ARCH[i].name);
    c->dim = a->dim;
    c->depth = a->depth;
    c->heads = a->heads;
    c->patch = a->patch;
    c->img_size = a->img_size;
    c->n_registers = a->n_storage;
    c->ffn = a->swiglu ? VIT_FFN_SWIGLU : VIT_FFN_MLP;
    c->ffn_hidden = a->ffn_hidden;
    c->layerscale = a->layerscale ? 1e-5f : 0.0f;
    c->qkv_bias = a->qkv_bias;
    c->proj_bias = a->proj_bias;
    c->ffn_bias = a->ffn_bias;
    c->ln_eps = (float)a->ln_eps;
    c->rope = 1;
    c->rope_cfg = a->rope;
    c->mask_k_bias = a->mask_k_bias;
    c->untie_cls_and_patch_norms = a->untie_cls_norm;
    c->untie_global_and_local_cls_norm = a->local_cls_norm;
    return vit_config_check(c, err);
}

// ---- the name map ---------------------------------------------------------------------------------------

static const TensorSpec *need(const ParamTable *tab, const char *prefix, const char *name) {
    char full[PARAM_NAME_MAX + 64];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    const TensorSpec *t = param_find(tab, full);
    DINO_ASSERT(t, "export: the DINOv3 table has no tensor %s", full);
    return t;
}

static const TensorSpec *maybe(const ParamTable *tab, const char *prefix, const char *name) {
    char full[PARAM_NAME_MAX + 64];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    return param_find(tab, full);
}

// A renamed copy of our tensor `ours` (same data; the target shape may differ, e.g. mask_token).
static ExportEntry *add_copy(ExportMap *m, int *cap, const TensorSpec *t, const char *prefix, const char *target,
                             int ndim, const int64_t *shape) {
    ExportEntry *e = export_map_push(m, cap);
    snprintf(e->name, sizeof e->name, "%s", target);
    if (shape) export_entry_set_shape(e, ndim, shape);
    else export_entry_set_shape(e, t->ndim, t->shape);
    DINO_ASSERT(e->numel == t->numel, "export: %s -> %s changes the size", t->name, target);
    e->xf = XF_COPY;
    e->src = t->offset;
    snprintf(e->our_name, sizeof e->our_name, "%s", t->name + strlen(prefix));
    return e;
}

// Rows [row0, row0 + rows) of our 2-d (or 1-d: row_len 1) tensor t.
static void add_rows(ExportMap *m, int *cap, const TensorSpec *t, const char *prefix, const char *target, size_t row0,
                     int64_t rows) {
    ExportEntry *e = export_map_push(m, cap);
    snprintf(e->name, sizeof e->name, "%s", target);
    const int is_w = t->ndim == 2;
    int64_t shape[2] = {rows, is_w ? t->shape[1] : 1};
    export_entry_set_shape(e, is_w ? 2 : 1, shape);
    e->xf = XF_ROWS;
    e->src = t->offset;
    e->row_len = is_w ? (size_t)t->shape[1] : 1;
    e->row0 = row0;
    snprintf(e->our_name, sizeof e->our_name, "%s", t->name + strlen(prefix));
}

static void add_ones(ExportMap *m, int *cap, const char *target, int D, const char *why) {
    ExportEntry *e = export_map_push(m, cap);
    snprintf(e->name, sizeof e->name, "%s", target);
    int64_t shape[1] = {D};
    export_entry_set_shape(e, 1, shape);
    e->xf = XF_ONES;
    snprintf(e->our_name, sizeof e->our_name, "%s", why);
}

void export_map_build_dinov3(ExportMap *m, const Dinov3Arch *a, const ParamTable *tab, const char *prefix,
                             ExportNaming naming) {
    DINO_ASSERT(naming == NAMING_HF || naming == NAMING_DINOV2, "export: DINOv3 has no %s naming here",
                export_naming_name(naming));
    memset(m, 0, sizeof *m);
    m->naming = naming;
    int cap = 0;
    const int hf = naming == NAMING_HF, D = a->dim, R = a->n_storage, H = a->ffn_hidden;
    char n[EXPORT_NAME_MAX], o[PARAM_NAME_MAX];

    // embeddings
    add_copy(m, &cap, need(tab, prefix, "cls_token"), prefix, hf ? "embeddings.cls_token" : "cls_token", 0, NULL);
    if (R > 0) {
        add_copy(m, &cap, need(tab, prefix, "storage_tokens"), prefix, hf ? "embeddings.register_tokens" : "storage_tokens",
                 0, NULL);
    } else if (hf) { // DINOv3ViTModel always has the parameter: an empty one
        ExportEntry *e = export_map_push(m, &cap);
        snprintf(e->name, sizeof e->name, "embeddings.register_tokens");
        int64_t shape[3] = {1, 0, D};
        export_entry_set_shape(e, 3, shape);
        e->xf = XF_COPY;
        e->optional = 1;
        snprintf(e->our_name, sizeof e->our_name, "(no storage tokens)");
    }
    int64_t mshape[3] = {1, 1, D};
    ExportEntry *mk = add_copy(m, &cap, need(tab, prefix, "mask_token"), prefix, hf ? "embeddings.mask_token" : "mask_token",
                               hf ? 3 : 0, hf ? mshape : NULL);
    mk->optional = 1;
    add_copy(m, &cap, need(tab, prefix, "patch_embed.proj.weight"), prefix,
             hf ? "embeddings.patch_embeddings.weight" : "patch_embed.proj.weight", 0, NULL);
    const TensorSpec *pb = maybe(tab, prefix, "patch_embed.proj.bias");
    if (pb) add_copy(m, &cap, pb, prefix, hf ? "embeddings.patch_embeddings.bias" : "patch_embed.proj.bias", 0, NULL);
    if (!hf) { // the official model's RoPE periods buffer
        ExportEntry *e = export_map_push(m, &cap);
        snprintf(e->name, sizeof e->name, "rope_embed.periods");
        int64_t shape[1] = {D / a->heads / 4};
        export_entry_set_shape(e, 1, shape);
        e->xf = XF_PERIODS;
        e->optional = 1; // a buffer: our own checkpoints do not hold it (checked when present)
        e->rope[0] = a->rope.base;
        e->rope[1] = a->rope.min_period;
        e->rope[2] = a->rope.max_period;
        snprintf(e->our_name, sizeof e->our_name, "(the RoPE periods)");
    }

    static const char *const QKV[3] = {"q_proj", "k_proj", "v_proj"};
    for (int l = 0; l < a->depth; l++) {
        const char *hp = hf ? "layer" : "blocks";
#define OURS(s) (snprintf(o, sizeof o, "blocks.%d.%s", l, s), need(tab, prefix, o))
#define TARGET(hfname, orig) (snprintf(n, sizeof n, "%s.%d.%s", hp, l, hf ? (hfname) : (orig)), n)
        add_copy(m, &cap, OURS("norm1.weight"), prefix, TARGET("norm1.weight", "norm1.weight"), 0, NULL);
        add_copy(m, &cap, OURS("norm1.bias"), prefix, TARGET("norm1.bias", "norm1.bias"), 0, NULL);
        const TensorSpec *qkv_w = OURS("attn.qkv.weight");
        snprintf(o, sizeof o, "blocks.%d.attn.qkv.bias", l);
        const TensorSpec *qkv_b = maybe(tab, prefix, o);
        if (hf) {
            for (int k = 0; k < 3; k++) {
                snprintf(n, sizeof n, "layer.%d.attention.%s.weight", l, QKV[k]);
                add_rows(m, &cap, qkv_w, prefix, n, (size_t)k * D, D);
                if (qkv_b && !(k == 1 && a->mask_k_bias)) { // a masked k bias is zero: HF key_bias false
                    snprintf(n, sizeof n, "layer.%d.attention.%s.bias", l, QKV[k]);
                    add_rows(m, &cap, qkv_b, prefix, n, (size_t)k * D, D);
                }
            }
        } else {
            add_copy(m, &cap, qkv_w, prefix, TARGET("", "attn.qkv.weight"), 0, NULL);
            if (qkv_b) {
                add_copy(m, &cap, qkv_b, prefix, TARGET("", "attn.qkv.bias"), 0, NULL);
                if (a->mask_k_bias) {
                    ExportEntry *e = export_map_push(m, &cap);
                    snprintf(e->name, sizeof e->name, "blocks.%d.attn.qkv.bias_mask", l);
                    int64_t shape[1] = {3 * D};
                    export_entry_set_shape(e, 1, shape);
                    e->xf = XF_BIAS_MASK;
                    e->optional = 1;
                    snprintf(e->our_name, sizeof e->our_name, "(the k-bias mask of block %d)", l);
                }
            }
        }
        add_copy(m, &cap, OURS("attn.proj.weight"), prefix, TARGET("attention.o_proj.weight", "attn.proj.weight"), 0, NULL);
        snprintf(o, sizeof o, "blocks.%d.attn.proj.bias", l);
        const TensorSpec *t = maybe(tab, prefix, o);
        if (t) add_copy(m, &cap, t, prefix, TARGET("attention.o_proj.bias", "attn.proj.bias"), 0, NULL);
        if (a->layerscale) {
            add_copy(m, &cap, OURS("ls1.gamma"), prefix, TARGET("layer_scale1.lambda1", "ls1.gamma"), 0, NULL);
        } else {
            snprintf(o, sizeof o, "blocks.%d.ls1.gamma (absent: no LayerScale)", l);
            add_ones(m, &cap, TARGET("layer_scale1.lambda1", "ls1.gamma"), D, o);
        }
        add_copy(m, &cap, OURS("norm2.weight"), prefix, TARGET("norm2.weight", "norm2.weight"), 0, NULL);
        add_copy(m, &cap, OURS("norm2.bias"), prefix, TARGET("norm2.bias", "norm2.bias"), 0, NULL);
        static const char *const PB[2] = {"weight", "bias"};
        for (int k = 0; k < 2; k++) {
            if (k == 1 && !a->ffn_bias) break;
            char tn[64], on[64];
            if (!a->swiglu) {
                snprintf(on, sizeof on, "mlp.fc1.%s", PB[k]);
                snprintf(tn, sizeof tn, "mlp.up_proj.%s", PB[k]);
                add_copy(m, &cap, OURS(on), prefix, TARGET(tn, on), 0, NULL);
            } else if (a->swiglu_fused) { // w12 = [gate rows; up rows]: the official w1, w2
                snprintf(on, sizeof on, "mlp.w12.%s", PB[k]);
                const TensorSpec *w12 = OURS(on);
                char t1[64], t2[64];
                snprintf(t1, sizeof t1, hf ? "mlp.gate_proj.%s" : "mlp.w1.%s", PB[k]);
                snprintf(t2, sizeof t2, hf ? "mlp.up_proj.%s" : "mlp.w2.%s", PB[k]);
                snprintf(n, sizeof n, "%s.%d.%s", hp, l, t1);
                add_rows(m, &cap, w12, prefix, n, 0, H);
                snprintf(n, sizeof n, "%s.%d.%s", hp, l, t2);
                add_rows(m, &cap, w12, prefix, n, (size_t)H, H);
            } else {
                snprintf(on, sizeof on, "mlp.w1.%s", PB[k]);
                snprintf(tn, sizeof tn, "mlp.gate_proj.%s", PB[k]);
                add_copy(m, &cap, OURS(on), prefix, TARGET(tn, on), 0, NULL);
                snprintf(on, sizeof on, "mlp.w2.%s", PB[k]);
                snprintf(tn, sizeof tn, "mlp.up_proj.%s", PB[k]);
                add_copy(m, &cap, OURS(on), prefix, TARGET(tn, on), 0, NULL);
            }
            snprintf(on, sizeof on, a->swiglu ? "mlp.w3.%s" : "mlp.fc2.%s", PB[k]);
            snprintf(tn, sizeof tn, "mlp.down_proj.%s", PB[k]);
            add_copy(m, &cap, OURS(on), prefix, TARGET(tn, on), 0, NULL);
        }
        if (a->layerscale) {
            add_copy(m, &cap, OURS("ls2.gamma"), prefix, TARGET("layer_scale2.lambda1", "ls2.gamma"), 0, NULL);
        } else {
            snprintf(o, sizeof o, "blocks.%d.ls2.gamma (absent: no LayerScale)", l);
            add_ones(m, &cap, TARGET("layer_scale2.lambda1", "ls2.gamma"), D, o);
        }
#undef OURS
#undef TARGET
    }
    add_copy(m, &cap, need(tab, prefix, "norm.weight"), prefix, "norm.weight", 0, NULL);
    add_copy(m, &cap, need(tab, prefix, "norm.bias"), prefix, "norm.bias", 0, NULL);
    if (!hf && a->untie_cls_norm) {
        add_copy(m, &cap, need(tab, prefix, "cls_norm.weight"), prefix, "cls_norm.weight", 0, NULL);
        add_copy(m, &cap, need(tab, prefix, "cls_norm.bias"), prefix, "cls_norm.bias", 0, NULL);
    }
    // local_cls_norm (training only) has no place in HF; the official names keep it.
    if (!hf && a->local_cls_norm) {
        static const char *const LN[2] = {"local_cls_norm.weight", "local_cls_norm.bias"};
        for (int k = 0; k < 2; k++) add_copy(m, &cap, need(tab, prefix, LN[k]), prefix, LN[k], 0, NULL)->optional = 1;
    }
}

// ---- config.json ----------------------------------------------------------------------------------------

static const char *tf(int v) { return v ? "true" : "false"; }

// A training-only RoPE augmentation value: the number, or null when off (0).
static const char *num_or_null(char *buf, size_t n, double v) {
    if (v > 0) snprintf(buf, n, "%.17g", v);
    else snprintf(buf, n, "null");
    return buf;
}

static const char *normalize_name(RopeNormalize r) {
    return r == ROPE_NORMALIZE_MIN ? "min" : r == ROPE_NORMALIZE_MAX ? "max" : "separate";
}

int dinov3_hf_config(char *out, size_t n, const Dinov3Arch *a, char *err) {
    if (dinov3_arch_check(a, err)) return -1;
    if (a->untie_cls_norm) {
        dino_seterr(err, "DINOv3 export: the model normalizes CLS and storage tokens with their own cls_norm "
                    "(untie_cls_and_patch_norms), which transformers' DINOv3ViTModel does not have: export "
                    "with --format dinov2 (the official names)");
        return -1;
    }
    if (!(a->rope.base > 0) || a->rope.normalize != ROPE_NORMALIZE_SEPARATE) {
        dino_seterr(err, "DINOv3 export: transformers' DINOv3ViTModel computes RoPE periods from a base (rope_theta) "
                    "with coordinates normalised per axis; this model uses %s and %s coordinates: export with "
                    "--format dinov2 (the official names)", a->rope.base > 0 ? "a base" : "min/max periods",
                    normalize_name(a->rope.normalize));
        return -1;
    }
    char sh[40], ji[40], re[40];
    snprintf(out, n,
             "{\n"
             "  \"architectures\": [\"DINOv3ViTModel\"],\n"
             "  \"model_type\": \"dinov3_vit\",\n"
             "  \"hidden_size\": %d,\n"
             "  \"intermediate_size\": %d,\n"
             "  \"num_hidden_layers\": %d,\n"
             "  \"num_attention_heads\": %d,\n"
             "  \"hidden_act\": \"%s\",\n"
             "  \"use_gated_mlp\": %s,\n"
             "  \"attention_dropout\": 0.0,\n"
             "  \"drop_path_rate\": 0.0,\n"
             "  \"initializer_range\": 0.02,\n"
             "  \"layer_norm_eps\": %.17g,\n"
             "  \"rope_theta\": %.17g,\n"
             "  \"image_size\": %d,\n"
             "  \"patch_size\": %d,\n"
             "  \"num_channels\": 3,\n"
             "  \"num_register_tokens\": %d,\n"
             "  \"query_bias\": %s,\n"
             "  \"key_bias\": %s,\n"
             "  \"value_bias\": %s,\n"
             "  \"proj_bias\": %s,\n"
             "  \"mlp_bias\": %s,\n"
             "  \"layerscale_value\": 1.0,\n"
             "  \"pos_embed_shift\": %s,\n"
             "  \"pos_embed_jitter\": %s,\n"
             "  \"pos_embed_rescale\": %s,\n"
             "  \"torch_dtype\": \"float32\"\n"
             "}\n",
             a->dim, a->ffn_hidden, a->depth, a->heads, a->swiglu ? "silu" : "gelu", tf(a->swiglu), a->ln_eps,
             a->rope.base, a->img_size, a->patch, a->n_storage, tf(a->qkv_bias), tf(a->qkv_bias && !a->mask_k_bias),
             tf(a->qkv_bias), tf(a->proj_bias), tf(a->ffn_bias), num_or_null(sh, sizeof sh, a->rope.shift),
             num_or_null(ji, sizeof ji, a->rope.jitter), num_or_null(re, sizeof re, a->rope.rescale));
    return 0;
}

void dinov3_own_config(char *out, size_t n, const Dinov3Arch *a) {
    char base[40], lo[40], hi[40], sh[40], ji[40], re[40];
    snprintf(out, n,
             "{\n  \"format\": \"dinov3\",\n  \"embed_dim\": %d,\n  \"depth\": %d,\n  \"num_heads\": %d,\n"
             "  \"patch_size\": %d,\n  \"img_size\": %d,\n  \"n_storage_tokens\": %d,\n  \"ffn_layer\": \"%s\",\n"
             "  \"ffn_hidden\": %d,\n  \"layerscale\": %s,\n  \"qkv_bias\": %s,\n  \"mask_k_bias\": %s,\n"
             "  \"proj_bias\": %s,\n  \"ffn_bias\": %s,\n  \"pos_embed_rope_base\": %s,\n"
             "  \"pos_embed_rope_min_period\": %s,\n  \"pos_embed_rope_max_period\": %s,\n"
             "  \"pos_embed_rope_normalize_coords\": \"%s\",\n  \"pos_embed_rope_shift_coords\": %s,\n"
             "  \"pos_embed_rope_jitter_coords\": %s,\n  \"pos_embed_rope_rescale_coords\": %s,\n"
             "  \"layer_norm_eps\": %.17g,\n"
             "  \"untie_cls_and_patch_norms\": %s,\n  \"untie_global_and_local_cls_norm\": %s\n}\n",
             a->dim, a->depth, a->heads, a->patch, a->img_size, a->n_storage, a->swiglu ? "swiglu" : "mlp", a->ffn_hidden,
             tf(a->layerscale), tf(a->qkv_bias), tf(a->mask_k_bias), tf(a->proj_bias), tf(a->ffn_bias),
             num_or_null(base, sizeof base, a->rope.base), num_or_null(lo, sizeof lo, a->rope.min_period),
             num_or_null(hi, sizeof hi, a->rope.max_period), normalize_name(a->rope.normalize),
             num_or_null(sh, sizeof sh, a->rope.shift), num_or_null(ji, sizeof ji, a->rope.jitter),
             num_or_null(re, sizeof re, a->rope.rescale), a->ln_eps, tf(a->untie_cls_norm), tf(a->local_cls_norm));
}

// ---- reading DINOv3 backbone files ----------------------------------------------------------------------

int export_is_dinov3(const StFile *f, const char *prefix, ExportNaming naming) {
    if (naming == NAMING_HF) return export_get_prefixed(f, prefix, "embeddings.patch_embeddings.weight") != NULL;
    return export_get_prefixed(f, prefix, "patch_embed.proj.weight") && !export_get_prefixed(f, prefix, "pos_embed");
}

// t must have shape want[0, ndim); else -1 with err naming the tensor, both shapes and why.
static int check_shape(const StTensor *t, const char *path, int ndim, const int64_t *want, const char *why, char *err) {
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == want[i];
    if (ok) return 0;
    char got[160], exp[160] = "[";
    export_shape_text(got, sizeof got, t);
    for (int i = 0; i < ndim; i++) {
        size_t k = strlen(exp);
        snprintf(exp + k, sizeof exp - k, "%s%lld", i ? ", " : "", (long long)want[i]);
    }
    strcat(exp, "]");
    dino_seterr(err, "%s: tensor '%s' has shape %s, but %s implies %s", path, t->name, got, why, exp);
    return -1;
}

static const StTensor *need_t(const StFile *f, const char *path, const char *prefix, const char *name, char *err) {
    const StTensor *t = export_get_prefixed(f, prefix, name);
    if (!t) dino_seterr(err, "%s: tensor '%s%s' is missing", path, prefix, name);
    return t;
}

// A positive number from the metadata (0 when absent or not one).
static int meta_number(const StFile *f, const char *key, double *v) {
    const char *s = st_meta(f, key);
    if (!s) return 0;
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (end == s || *end || errno || !(x > 0) || !isfinite(x)) return 0;
    *v = x;
    return 1;
}

// cfg key (number in [lo, hi]) -> *v; 1 found, 0 absent, -1 bad (err set).
static int cfg_number(json_object *cfg, const char *key, double lo, double hi, double *v, const char *cfg_path, char *err) {
    if (!cfg) return 0;
    int r = json_get_number(cfg, key, lo, hi, v, cfg_path, err);
    return r < 0 ? -1 : r == 0;
}

static int cfg_bool(json_object *cfg, const char *key, int *v, const char *cfg_path, char *err) {
    if (!cfg) return 0;
    int r = json_get_bool(cfg, key, v, cfg_path, err);
    return r < 0 ? -1 : r == 0;
}

int export_infer_dinov3(const StFile *f, const char *path, ExportNaming naming, const char *prefix, int heads,
                        json_object *cfg, const char *cfg_path, Dinov3Arch *a, char *err) {
    memset(a, 0, sizeof *a);
    if (naming == NAMING_TIMM) {
        dino_seterr(err, "%s: a DINOv3 backbone in timm names is not supported (export it as hf or dinov2)", path);
        return -1;
    }
    const int hf = naming == NAMING_HF;
    const StTensor *cls = need_t(f, path, prefix, hf ? "embeddings.cls_token" : "cls_token", err);
    const char *pw_name = hf ? "embeddings.patch_embeddings.weight" : "patch_embed.proj.weight";
    const StTensor *pw = cls ? need_t(f, path, prefix, pw_name, err) : NULL;
    if (!pw) return -1;
    if (cls->ndim != 3 || cls->shape[0] != 1 || cls->shape[1] != 1 || cls->shape[2] <= 0 || cls->shape[2] > INT_MAX / 16) {
        char s[160];
        export_shape_text(s, sizeof s, cls);
        dino_seterr(err, "%s: class token '%s' has shape %s, expected [1, 1, width]", path, cls->name, s);
        return -1;
    }
    const int D = (int)cls->shape[2];
    a->dim = D;
    const int64_t p = pw->ndim == 4 ? pw->shape[2] : 0;
    if (p <= 0 || p > 4096 ||
        check_shape(pw, path, 4, (int64_t[]){D, 3, p, p}, "the class token's width and RGB input", err)) {
        if (p <= 0 || p > 4096) dino_seterr(err, "%s: patch embedding weight '%s' is not [width, 3, p, p]", path, pw->name);
        return -1;
    }
    a->patch = (int)p;
    const StTensor *st = export_get_prefixed(f, prefix, hf ? "embeddings.register_tokens" : "storage_tokens");
    if (st && (st->ndim != 3 || st->shape[1] > 4096 ||
               check_shape(st, path, 3, (int64_t[]){1, st->shape[1], D}, "the class token's width", err))) {
        if (st->ndim != 3 || st->shape[1] > 4096)
            dino_seterr(err, "%s: storage tokens '%s' are not [1, n <= 4096, width]", path, st->name);
        return -1;
    }
    a->n_storage = st ? (int)st->shape[1] : 0;
    const char *bp = hf ? "layer" : "blocks";
    char n[256];
    int L = 0;
    for (;; L++) {
        snprintf(n, sizeof n, "%s.%d.norm1.weight", bp, L);
        if (!export_get_prefixed(f, prefix, n)) break;
    }
    if (L == 0) {
        dino_seterr(err, "%s: no transformer blocks found under prefix '%s'", path, prefix);
        return -1;
    }
    a->depth = L;
    // feed-forward: HF gate/up/down or up/down; official w1/w2/w3, w12/w3 (fused) or fc1/fc2
    const char *in_name, *out_name;
    if (hf) {
        a->swiglu = export_get_prefixed(f, prefix, "layer.0.mlp.gate_proj.weight") != NULL;
        in_name = "mlp.up_proj";
        out_name = "mlp.down_proj";
    } else {
        a->swiglu_fused = export_get_prefixed(f, prefix, "blocks.0.mlp.w12.weight") != NULL;
        a->swiglu = a->swiglu_fused || export_get_prefixed(f, prefix, "blocks.0.mlp.w1.weight") != NULL;
        in_name = a->swiglu_fused ? "mlp.w12" : a->swiglu ? "mlp.w1" : "mlp.fc1";
        out_name = a->swiglu ? "mlp.w3" : "mlp.fc2";
    }
    snprintf(n, sizeof n, "%s.0.%s.weight", bp, in_name);
    const StTensor *w1 = need_t(f, path, prefix, n, err);
    snprintf(n, sizeof n, "%s.0.%s.weight", bp, out_name);
    const StTensor *w2 = w1 ? need_t(f, path, prefix, n, err) : NULL;
    if (!w2) return -1;
    if (w2->ndim != 2 || w2->shape[0] != D || w2->shape[1] <= 0 || w2->shape[1] > INT_MAX / 8) {
        char s[160];
        export_shape_text(s, sizeof s, w2);
        dino_seterr(err, "%s: feed-forward output weight '%s' has shape %s, expected [%d, hidden]", path, w2->name, s, D);
        return -1;
    }
    const int Hd = (int)w2->shape[1];
    a->ffn_hidden = Hd;
    if (check_shape(w1, path, 2, (int64_t[]){a->swiglu_fused ? 2 * Hd : Hd, D}, "the feed-forward output weight", err))
        return -1;
    // every block has block 0's shapes (the depth counted from names is backed by the file's bytes)
    for (int l = 0; l < L; l++) {
        const char *sfx[4] = {"norm1.weight", hf ? "attention.o_proj.weight" : "attn.proj.weight", in_name, out_name};
        const int64_t want[4][2] = {{D, 0}, {D, D}, {w1->shape[0], D}, {D, Hd}};
        for (int k = 0; k < 4; k++) {
            snprintf(n, sizeof n, "%s.%d.%s%s", bp, l, sfx[k], k >= 2 ? ".weight" : "");
            const StTensor *t = need_t(f, path, prefix, n, err);
            if (!t || check_shape(t, path, k ? 2 : 1, want[k], "block 0", err)) return -1;
        }
    }
    snprintf(n, sizeof n, "%s.0.%s.bias", bp, in_name);
    a->ffn_bias = export_get_prefixed(f, prefix, n) != NULL;
    a->proj_bias = export_get_prefixed(f, prefix, hf ? "layer.0.attention.o_proj.bias" : "blocks.0.attn.proj.bias") != NULL;
    a->qkv_bias = export_get_prefixed(f, prefix, hf ? "layer.0.attention.q_proj.bias" : "blocks.0.attn.qkv.bias") != NULL;
    a->layerscale = export_get_prefixed(f, prefix, hf ? "layer.0.layer_scale1.lambda1" : "blocks.0.ls1.gamma") != NULL;
    a->untie_cls_norm = !hf && export_get_prefixed(f, prefix, "cls_norm.weight") != NULL;
    a->local_cls_norm = !hf && export_get_prefixed(f, prefix, "local_cls_norm.weight") != NULL;
    // a masked k bias: HF drops it (key_bias false); the official model keeps a bias_mask buffer
    if (hf) a->mask_k_bias = a->qkv_bias && !export_get_prefixed(f, prefix, "layer.0.attention.k_proj.bias");
    else a->mask_k_bias = a->qkv_bias && export_get_prefixed(f, prefix, "blocks.0.attn.qkv.bias_mask") != NULL;

    // what shapes cannot tell: config.json (HF keys, then ours), the metadata, then the official defaults
    a->rope.base = 100.0;
    a->rope.normalize = ROPE_NORMALIZE_SEPARATE;
    a->ln_eps = 1e-5;
    a->img_size = 224;
    double v;
    int r, found_rope = 0;
    if ((r = cfg_number(cfg, "rope_theta", 1e-6, 1e12, &v, cfg_path, err)) < 0) return -1;
    if (!r && (r = cfg_number(cfg, "pos_embed_rope_base", 1e-6, 1e12, &v, cfg_path, err)) < 0) return -1;
    if (r || meta_number(f, "rope_theta", &v)) {
        a->rope.base = v;
        found_rope = 1;
    } else { // ours: periods from min/max
        double lo = 0, hi = 0;
        int r1 = cfg_number(cfg, "pos_embed_rope_min_period", 1e-12, 1e12, &lo, cfg_path, err);
        int r2 = r1 < 0 ? -1 : cfg_number(cfg, "pos_embed_rope_max_period", 1e-12, 1e12, &hi, cfg_path, err);
        if (r2 < 0) return -1;
        if (r1 && r2) {
            a->rope.base = 0;
            a->rope.min_period = lo;
            a->rope.max_period = hi;
            found_rope = 1;
        }
    }
    const char *norm;
    if (cfg && (r = json_get_string(cfg, "pos_embed_rope_normalize_coords", &norm, cfg_path, err)) <= 0) {
        if (r < 0) return -1;
        if (!strcmp(norm, "min")) a->rope.normalize = ROPE_NORMALIZE_MIN;
        else if (!strcmp(norm, "max")) a->rope.normalize = ROPE_NORMALIZE_MAX;
        else if (strcmp(norm, "separate")) {
            dino_seterr(err, "%s: pos_embed_rope_normalize_coords must be \"separate\", \"min\" or \"max\", got \"%s\"",
                        cfg_path, norm);
            return -1;
        }
    }
    // training-only augmentation: HF pos_embed_*, ours pos_embed_rope_*_coords (null: off)
    static const char *const AUG[3][2] = {{"pos_embed_shift", "pos_embed_rope_shift_coords"},
                                          {"pos_embed_jitter", "pos_embed_rope_jitter_coords"},
                                          {"pos_embed_rescale", "pos_embed_rope_rescale_coords"}};
    double *aug[3] = {&a->rope.shift, &a->rope.jitter, &a->rope.rescale};
    for (int k = 0; k < 3; k++)
        for (int h = 0; h < 2; h++)
            if ((r = cfg_number(cfg, AUG[k][h], 0, 1e6, &v, cfg_path, err)) < 0) return -1;
            else if (r) *aug[k] = v;
    const StTensor *per = hf ? NULL : export_get_prefixed(f, prefix, "rope_embed.periods");
    if ((r = cfg_number(cfg, "layer_norm_eps", 1e-12, 0.1, &v, cfg_path, err)) < 0) return -1;
    if (r || meta_number(f, "layer_norm_eps", &v)) a->ln_eps = v;
    if ((r = cfg_number(cfg, "image_size", 1, 8192, &v, cfg_path, err)) < 0) return -1;
    if (!r && (r = cfg_number(cfg, "img_size", 1, 8192, &v, cfg_path, err)) < 0) return -1;
    if (r || (meta_number(f, "image_size", &v) && v <= 8192)) a->img_size = (int)v; // (the default crop: bounded)
    int kb;
    if (hf && a->qkv_bias && (r = cfg_bool(cfg, "key_bias", &kb, cfg_path, err)) != 0) {
        if (r < 0) return -1;
        if (kb == a->mask_k_bias) { // key_bias true means a k_proj.bias tensor, false means none
            dino_seterr(err, "%s: key_bias is %s but %s has %s layer.0.attention.k_proj.bias", cfg_path,
                        kb ? "true" : "false", path, kb ? "no" : "a");
            return -1;
        }
    }
    if (!hf && a->qkv_bias && !a->mask_k_bias) {
        if ((r = cfg_bool(cfg, "mask_k_bias", &kb, cfg_path, err)) < 0) return -1;
        if (r) a->mask_k_bias = kb;
        else if (st_meta(f, "mask_k_bias")) a->mask_k_bias = !strcmp(st_meta(f, "mask_k_bias"), "true");
    }
    if (heads <= 0) {
        int64_t h;
        if (cfg && ((r = json_get_int(cfg, "num_attention_heads", 1, 4096, &h, cfg_path, err)) == 0 ||
                    (r == 1 && (r = json_get_int(cfg, "num_heads", 1, 4096, &h, cfg_path, err)) == 0)))
            heads = (int)h;
        else if (r < 0 && cfg) return -1;
    }
    static const char *const HEAD_KEYS[] = {"num_attention_heads", "num_heads", "student.num_heads", "heads"};
    for (size_t k = 0; heads <= 0 && k < sizeof HEAD_KEYS / sizeof *HEAD_KEYS; k++)
        if (meta_number(f, HEAD_KEYS[k], &v) && v <= 4096 && v == floor(v)) heads = (int)v;
    if (heads <= 0) { // the released DINOv3 ViTs: head width 64
        static const int KNOWN[][2] = {{384, 6}, {768, 12}, {1024, 16}, {1280, 20}, {4096, 32}};
        for (size_t i = 0; i < sizeof KNOWN / sizeof KNOWN[0]; i++)
            if (KNOWN[i][0] == D) heads = KNOWN[i][1];
        if (heads <= 0) {
            dino_seterr(err, "%s: the number of attention heads cannot be read from the tensors (width %d) and neither "
                        "config.json nor the file's metadata says it: give it explicitly (--heads)", path, D);
            return -1;
        }
        fprintf(stderr, "note: %s: %d attention heads assumed (the released DINOv3 of width %d)\n", path, heads, D);
    }
    a->heads = heads;
    if (dinov3_arch_check(a, err)) {
        char e2[DINO_ERRLEN];
        snprintf(e2, sizeof e2, "%s", err);
        dino_seterr(err, "%s: %s", cfg ? cfg_path : path, e2);
        return -1;
    }
    if (per) { // the official periods buffer: its length is Dh/4; it says the base when nothing else does
        const int q = D / heads / 4;
        if (check_shape(per, path, 1, (int64_t[]){q}, "the head width / 4", err)) return -1;
        if (!found_rope && q >= 2) {
            float last;
            if (per->dtype != ST_F32) {
                dino_seterr(err, "%s: rope_embed.periods is not float32: give rope_theta in config.json", path);
                return -1;
            }
            memcpy(&last, (const uint8_t *)per->data + 4 * (size_t)(q - 1), 4);
            // periods[q-1] = base^((2q-2)/(2q)) (a file of min/max periods needs its config.json)
            a->rope.base = pow((double)last, (double)(2 * q) / (double)(2 * q - 2));
            a->rope.base = round(a->rope.base * 1e4) / 1e4;
        }
    }
    return 0;
}
