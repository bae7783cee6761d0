// Name maps DINOv2 <-> timm <-> Hugging Face, generated from the ViT's parameter table.
#include "model/export_names.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "model/export_dinov3.h"
#include "model/rope.h"

const char *export_naming_name(ExportNaming n) {
    switch (n) {
    case NAMING_DINOV2: return "dinov2";
    case NAMING_TIMM: return "timm";
    case NAMING_HF: return "hf";
    }
    return "?";
}

int export_naming_parse(const char *s, ExportNaming *n) {
    if (!strcmp(s, "dinov2") || !strcmp(s, "original")) *n = NAMING_DINOV2;
    else if (!strcmp(s, "timm")) *n = NAMING_TIMM;
    else if (!strcmp(s, "hf") || !strcmp(s, "huggingface") || !strcmp(s, "transformers")) *n = NAMING_HF;
    else return -1;
    return 0;
}

// ---- map generation -----------------------------------------------------------------------------------

ExportEntry *export_map_push(ExportMap *m, int *cap) {
    if (m->n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        m->e = dino_realloc(m->e, sizeof(ExportEntry) * (size_t)*cap);
    }
    ExportEntry *e = &m->e[m->n++];
    memset(e, 0, sizeof *e);
    return e;
}

void export_entry_set_shape(ExportEntry *e, int ndim, const int64_t *shape) {
    e->ndim = ndim;
    e->numel = 1;
    for (int i = 0; i < ndim; i++) {
        e->shape[i] = shape[i];
        e->numel *= (size_t)shape[i];
    }
}

// Our block-local name ("attn.proj.weight") -> the HF block-local name, for the pure renames.
static const char *hf_block_name(const char *s) {
    static const char *const MAP[][2] = {
        {"norm1.weight", "norm1.weight"},
        {"norm1.bias", "norm1.bias"},
        {"attn.proj.weight", "attention.output.dense.weight"},
        {"attn.proj.bias", "attention.output.dense.bias"},
        {"ls1.gamma", "layer_scale1.lambda1"},
        {"norm2.weight", "norm2.weight"},
        {"norm2.bias", "norm2.bias"},
        {"mlp.fc1.weight", "mlp.fc1.weight"},
        {"mlp.fc1.bias", "mlp.fc1.bias"},
        {"mlp.fc2.weight", "mlp.fc2.weight"},
        {"mlp.fc2.bias", "mlp.fc2.bias"},
        {"mlp.w12.weight", "mlp.weights_in.weight"},
        {"mlp.w12.bias", "mlp.weights_in.bias"},
        {"mlp.w3.weight", "mlp.weights_out.weight"},
        {"mlp.w3.bias", "mlp.weights_out.bias"},
        {"ls2.gamma", "layer_scale2.lambda1"},
    };
    for (size_t i = 0; i < sizeof MAP / sizeof MAP[0]; i++)
        if (!strcmp(s, MAP[i][0])) return MAP[i][1];
    return NULL;
}

static const char *timm_block_name(const char *s) {
    if (!strcmp(s, "mlp.w12.weight")) return "mlp.fc1.weight";
    if (!strcmp(s, "mlp.w12.bias")) return "mlp.fc1.bias";
    if (!strcmp(s, "mlp.w3.weight")) return "mlp.fc2.weight";
    if (!strcmp(s, "mlp.w3.bias")) return "mlp.fc2.bias";
    return s;
}

// Target name of block-local tensor `s` of block l.
static void block_target(char *out, size_t n, ExportNaming naming, int l, const char *s) {
    if (naming == NAMING_HF) {
        const char *h = hf_block_name(s);
        DINO_ASSERT(h, "export: no Hugging Face name for block tensor %s", s);
        snprintf(out, n, "encoder.layer.%d.%s", l, h);
    } else {
        snprintf(out, n, "blocks.%d.%s", l, naming == NAMING_TIMM ? timm_block_name(s) : s);
    }
}

static void add_ones(ExportMap *m, int *cap, ExportNaming naming, int l, const char *ls, int D) {
    ExportEntry *e = export_map_push(m, cap);
    block_target(e->name, sizeof e->name, naming, l, ls);
    int64_t shape[1] = {D};
    export_entry_set_shape(e, 1, shape);
    e->xf = XF_ONES;
    snprintf(e->our_name, sizeof e->our_name, "blocks.%d.%s (absent: no LayerScale)", l, ls);
}

void export_map_build(ExportMap *m, const Vit *vit, const ParamTable *tab, const char *prefix, ExportNaming naming) {
    if (vit->cfg.rope) { // the DINOv3 ViT: its own names (model/export_dinov3.h)
        Dinov3Arch a;
        dinov3_arch_from_vit(&vit->cfg, &a);
        export_map_build_dinov3(m, &a, tab, prefix, naming);
        return;
    }
    memset(m, 0, sizeof *m);
    m->naming = naming;
    int cap = 0;
    const size_t plen = strlen(prefix);
    const int D = vit->cfg.dim, R = vit->cfg.n_registers, no_ls = vit->cfg.layerscale <= 0;
    for (int i = 0; i < tab->n; i++) {
        const TensorSpec *t = &tab->t[i];
        if (strncmp(t->name, prefix, plen)) continue;
        const char *s = t->name + plen;
        if (naming == NAMING_TIMM && !strcmp(s, "mask_token")) continue; // timm drops it
        int l = -1, used = 0;
        if (sscanf(s, "blocks.%d.%n", &l, &used) == 1 && used > 0) {
            const char *b = s + used;
            if (naming == NAMING_HF && !strncmp(b, "attn.qkv.", 9)) {
                // HF keeps query, key and value as three Linear layers: rows [0,D), [D,2D), [2D,3D).
                static const char *const QKV[3] = {"query", "key", "value"};
                const int is_w = !strcmp(b + 9, "weight");
                for (int k = 0; k < 3; k++) {
                    ExportEntry *e = export_map_push(m, &cap);
                    snprintf(e->name, sizeof e->name, "encoder.layer.%d.attention.attention.%s.%s", l, QKV[k],
                             is_w ? "weight" : "bias");
                    int64_t shape[2] = {D, D};
                    export_entry_set_shape(e, is_w ? 2 : 1, shape);
                    e->xf = XF_ROWS;
                    e->src = t->offset;
                    e->row_len = is_w ? (size_t)D : 1;
                    e->row0 = (size_t)k * D;
                    snprintf(e->our_name, sizeof e->our_name, "%s", s);
                }
                continue;
            }
            ExportEntry *e = export_map_push(m, &cap);
            block_target(e->name, sizeof e->name, naming, l, b);
            export_entry_set_shape(e, t->ndim, t->shape);
            e->xf = XF_COPY;
            e->src = t->offset;
            snprintf(e->our_name, sizeof e->our_name, "%s", s);
            // Without LayerScale our table has no gammas; every target naming expects them: ones.
            if (no_ls && !strcmp(b, "attn.proj.bias")) add_ones(m, &cap, naming, l, "ls1.gamma", D);
            if (no_ls && (!strcmp(b, "mlp.fc2.bias") || !strcmp(b, "mlp.w3.bias")))
                add_ones(m, &cap, naming, l, "ls2.gamma", D);
            continue;
        }
        ExportEntry *e = export_map_push(m, &cap);
        export_entry_set_shape(e, t->ndim, t->shape);
        e->xf = XF_COPY;
        e->src = t->offset;
        snprintf(e->our_name, sizeof e->our_name, "%s", s);
        const char *name = s;
        if (naming == NAMING_HF) {
            if (!strcmp(s, "cls_token")) name = "embeddings.cls_token";
            else if (!strcmp(s, "pos_embed")) name = "embeddings.position_embeddings";
            else if (!strcmp(s, "register_tokens")) name = "embeddings.register_tokens";
            else if (!strcmp(s, "mask_token")) name = "embeddings.mask_token";
            else if (!strcmp(s, "patch_embed.proj.weight")) name = "embeddings.patch_embeddings.projection.weight";
            else if (!strcmp(s, "patch_embed.proj.bias")) name = "embeddings.patch_embeddings.projection.bias";
            else if (!strcmp(s, "norm.weight")) name = "layernorm.weight";
            else if (!strcmp(s, "norm.bias")) name = "layernorm.bias";
            else DINO_DIE("export: no Hugging Face name for %s", s);
        } else if (naming == NAMING_TIMM) {
            if (!strcmp(s, "register_tokens")) name = "reg_token";
            // timm's reg4 dinov2 models have no_embed_class=True: the class slot of pos_embed is
            // folded into cls_token and pos_embed keeps the patch rows only.
            if (R > 0 && !strcmp(s, "cls_token")) {
                e->xf = XF_CLS_POS0;
                e->src_aux = vit->pos;
            }
            if (R > 0 && !strcmp(s, "pos_embed")) {
                e->xf = XF_POS_NOCLS;
                int64_t shape[3] = {1, t->shape[1] - 1, D};
                export_entry_set_shape(e, 3, shape);
            }
        }
        if (!strcmp(s, "mask_token")) e->optional = 1;
        snprintf(e->name, sizeof e->name, "%s", name);
    }
}

void export_map_free(ExportMap *m) {
    free(m->e);
    memset(m, 0, sizeof *m);
}

const ExportEntry *export_map_find(const ExportMap *m, const char *name) {
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->e[i].name, name)) return &m->e[i];
    return NULL;
}

// ---- transforms -----------------------------------------------------------------------------------------

void export_entry_gather(const ExportEntry *e, const float *P, float *dst) {
    switch (e->xf) {
    case XF_COPY: memcpy(dst, P + e->src, e->numel * sizeof(float)); break;
    case XF_ROWS: memcpy(dst, P + e->src + e->row0 * e->row_len, e->numel * sizeof(float)); break;
    case XF_CLS_POS0:
        for (size_t c = 0; c < e->numel; c++) dst[c] = P[e->src + c] + P[e->src_aux + c];
        break;
    case XF_POS_NOCLS: {
        const size_t D = (size_t)e->shape[2];
        memcpy(dst, P + e->src + D, e->numel * sizeof(float));
        break;
    }
    case XF_ONES:
        for (size_t c = 0; c < e->numel; c++) dst[c] = 1.0f;
        break;
    case XF_PERIODS: { // the official RoPE periods (model/rope.h)
        RopeConfig rc = {.base = e->rope[0], .min_period = e->rope[1], .max_period = e->rope[2]};
        double *p = dino_malloc(sizeof(double) * (e->numel ? e->numel : 1));
        rope_periods(&rc, 4 * (int)e->numel, p);
        for (size_t i = 0; i < e->numel; i++) dst[i] = (float)p[i];
        free(p);
        break;
    }
    case XF_BIAS_MASK: // q and v biases used, the k bias masked
        for (size_t i = 0; i < e->numel; i++) dst[i] = (i >= e->numel / 3 && i < 2 * e->numel / 3) ? 0.0f : 1.0f;
        break;
    }
}

int export_entry_scatter(const ExportEntry *e, const float *src, float *P, char *err) {
    switch (e->xf) {
    case XF_COPY: memcpy(P + e->src, src, e->numel * sizeof(float)); break;
    case XF_ROWS: memcpy(P + e->src + e->row0 * e->row_len, src, e->numel * sizeof(float)); break;
    case XF_CLS_POS0: memcpy(P + e->src, src, e->numel * sizeof(float)); break; // pos[0] zeroed below
    case XF_POS_NOCLS: {
        const size_t D = (size_t)e->shape[2];
        memset(P + e->src, 0, D * sizeof(float));
        memcpy(P + e->src + D, src, e->numel * sizeof(float));
        break;
    }
    case XF_ONES:
        for (size_t c = 0; c < e->numel; c++)
            if (src[c] != 1.0f) {
                dino_seterr(err, "%s holds LayerScale values (e.g. %g) but the model has no LayerScale "
                            "(student.layerscale = 0)", e->name, (double)src[c]);
                return -1;
            }
        break;
    case XF_PERIODS: { // must be this model's RoPE (bf16 files round them: 1% relative)
        float *want = dino_malloc(sizeof(float) * (e->numel ? e->numel : 1));
        export_entry_gather(e, P, want);
        for (size_t i = 0; i < e->numel; i++)
            if (!(fabsf(src[i] - want[i]) <= 1e-2f * want[i])) {
                dino_seterr(err, "%s[%zu] is %g, but this model's RoPE (base %g, periods %g..%g, head width %zu) has "
                            "period %g: the file's model has other RoPE periods (rope_theta / pos_embed_rope_base)",
                            e->name, i, (double)src[i], e->rope[0], e->rope[1], e->rope[2], 4 * e->numel,
                            (double)want[i]);
                free(want);
                return -1;
            }
        free(want);
        break;
    }
    case XF_BIAS_MASK:
        for (size_t i = 0; i < e->numel; i++) {
            const float want = (i >= e->numel / 3 && i < 2 * e->numel / 3) ? 0.0f : 1.0f;
            if (src[i] != want) {
                dino_seterr(err, "%s[%zu] is %g, expected %g: only the k third of the qkv bias may be masked",
                            e->name, i, (double)src[i], (double)want);
                return -1;
            }
        }
        break;
    }
    return 0;
}

// ---- reading foreign files ------------------------------------------------------------------------------

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static float half_to_float(uint16_t h) {
    const int s = h >> 15, ex = (h >> 10) & 31, m = h & 1023;
    float v;
    if (ex == 0) v = ldexpf((float)m, -24);
    else if (ex == 31) v = m ? NAN : INFINITY;
    else v = ldexpf((float)(m | 1024), ex - 25);
    return s ? -v : v;
}

int export_read_f32(const StTensor *t, float *dst, char *err) {
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case ST_F32: memcpy(dst, p, n * 4); break;
    case ST_F64:
        for (size_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, p + 8 * i, 8);
            dst[i] = (float)v;
        }
        break;
    case ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)rd16(p + 2 * i) << 16;
            memcpy(&dst[i], &u, 4);
        }
        break;
    case ST_F16:
        for (size_t i = 0; i < n; i++) dst[i] = half_to_float(rd16(p + 2 * i));
        break;
    default: dino_seterr(err, "tensor %s: dtype is not a float type", t->name); return -1;
    }
    return 0;
}

const StTensor *export_get_prefixed(const StFile *f, const char *prefix, const char *name) {
    char full[512];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    return st_get(f, full);
}

static int ends_with(const char *s, const char *suffix, size_t *head) {
    size_t a = strlen(s), b = strlen(suffix);
    if (a < b || strcmp(s + a - b, suffix)) return 0;
    *head = a - b;
    return 1;
}

int export_detect(const StFile *f, const char *path, const char *want_prefix, ExportNaming *naming, char *prefix,
                  size_t prefix_len, char *err) {
    // DINOv2 HF names end in ...patch_embeddings.projection.weight, DINOv3 HF names in ...patch_embeddings.weight
    static const char *const ANCHOR[3] = {"patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight",
                                          "embeddings.patch_embeddings.weight"};
    enum { MAXC = 8 };
    char cand[MAXC][256];
    int cand_hf[MAXC], nc = 0;
    for (int i = 0; i < f->n; i++) {
        for (int a = 0; a < 3; a++) {
            size_t head;
            if (!ends_with(f->t[i].name, ANCHOR[a], &head) || head >= 256 || nc == MAXC) continue;
            if (head > 0 && f->t[i].name[head - 1] != '.') continue;
            memcpy(cand[nc], f->t[i].name, head);
            cand[nc][head] = 0;
            cand_hf[nc++] = a > 0;
        }
    }
    if (nc == 0) {
        dino_seterr(err, "%s: no ViT backbone found (no tensor named [prefix.]patch_embed.proj.weight, "
                    "[prefix.]embeddings.patch_embeddings.projection.weight or [prefix.]embeddings.patch_embeddings.weight)",
                    path);
        return -1;
    }
    int pick = -1;
    if (want_prefix && *want_prefix)
        for (int c = 0; c < nc; c++)
            if (!strcmp(cand[c], want_prefix)) pick = c;
    if (pick < 0) {
        if (nc > 1) {
            char list[600] = "";
            for (int c = 0; c < nc; c++) {
                size_t L = strlen(list);
                snprintf(list + L, sizeof list - L, "%s'%s'", c ? ", " : "", cand[c]);
            }
            dino_seterr(err, "%s holds %d backbones (name prefixes %s)%s%s: choose one", path, nc, list,
                        want_prefix && *want_prefix ? "; none is " : "", want_prefix ? want_prefix : "");
            return -1;
        }
        // One backbone: take it unless it is explicitly the other network of a checkpoint.
        if (want_prefix && *want_prefix && (strstr(cand[0], "teacher") || strstr(cand[0], "student"))) {
            dino_seterr(err, "%s: the backbone in this file is '%s', not the requested '%s'", path, cand[0],
                        want_prefix);
            return -1;
        }
        pick = 0;
    }
    if (strlen(cand[pick]) + 1 > prefix_len) {
        dino_seterr(err, "%s: name prefix too long", path);
        return -1;
    }
    strcpy(prefix, cand[pick]);
    // timm and the original names differ only in reg_token / register_tokens (and the pos-embed class
    // slot with registers), fc1/fc2 vs w12/w3 for SwiGLU, and the mask_token timm drops.
    if (cand_hf[pick]) *naming = NAMING_HF;
    else if (export_get_prefixed(f, prefix, "reg_token")) *naming = NAMING_TIMM;
    else if (export_get_prefixed(f, prefix, "mask_token") || export_get_prefixed(f, prefix, "register_tokens") || export_get_prefixed(f, prefix, "blocks.0.mlp.w12.weight") ||
             export_get_prefixed(f, prefix, "storage_tokens") || export_get_prefixed(f, prefix, "rope_embed.periods") || !export_get_prefixed(f, prefix, "pos_embed"))
        *naming = NAMING_DINOV2;
    else *naming = NAMING_TIMM;
    return 0;
}

static const StTensor *need(const StFile *f, const char *path, const char *prefix, const char *name, int ndim,
                            char *err) {
    const StTensor *t = export_get_prefixed(f, prefix, name);
    if (!t) {
        dino_seterr(err, "%s: tensor '%s%s' is missing", path, prefix, name);
        return NULL;
    }
    if (t->ndim != ndim) {
        dino_seterr(err, "%s: tensor '%s%s' has %d dimensions, expected %d", path, prefix, name, t->ndim, ndim);
        return NULL;
    }
    return t;
}

static int meta_int(const StFile *f, const char *key, int *v) {
    const char *s = st_meta(f, key);
    if (!s) return 0;
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (end == s || *end || errno || x <= 0 || x > INT_MAX) return 0;
    *v = (int)x;
    return 1;
}

void export_shape_text(char *out, size_t n, const StTensor *t) {
    size_t k = (size_t)snprintf(out, n, "[");
    for (int i = 0; i < t->ndim && k < n; i++) k += (size_t)snprintf(out + k, n - k, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (k < n) snprintf(out + k, n - k, "]");
}

// 0 when t has exactly the shape (a, b, c, d)[0, ndim), else -1 with err naming the tensor, its shape and
// what the others imply.
static int want_shape(const StTensor *t, const char *path, const char *what, int ndim, int64_t a, int64_t b,
                      int64_t c, int64_t d, char *err) {
    const int64_t want[4] = {a, b, c, d};
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == want[i];
    if (ok) return 0;
    char got[160], exp[160];
    export_shape_text(got, sizeof got, t);
    size_t k = (size_t)snprintf(exp, sizeof exp, "[");
    for (int i = 0; i < ndim && k < sizeof exp; i++)
        k += (size_t)snprintf(exp + k, sizeof exp - k, "%s%lld", i ? ", " : "", (long long)want[i]);
    if (k < sizeof exp) snprintf(exp + k, sizeof exp - k, "]");
    dino_seterr(err, "%s: tensor '%s' has shape %s, but %s implies %s", path, t->name, got, what, exp);
    return -1;
}

int export_infer_config(const StFile *f, const char *path, ExportNaming naming, const char *prefix, int heads,
                        VitConfig *cfg, char *err) {
    memset(cfg, 0, sizeof *cfg);
    const int hf = naming == NAMING_HF;
    const StTensor *cls = need(f, path, prefix, hf ? "embeddings.cls_token" : "cls_token", 3, err);
    const StTensor *pos = cls ? need(f, path, prefix, hf ? "embeddings.position_embeddings" : "pos_embed", 3, err) : NULL;
    const StTensor *pw =
        pos ? need(f, path, prefix, hf ? "embeddings.patch_embeddings.projection.weight" : "patch_embed.proj.weight", 4, err)
            : NULL;
    if (!pw) return -1;
    // Every size below is read from one tensor and checked against the others, so that the model these
    // shapes describe is backed by the file's bytes (a few hundred bytes of header cannot make the reader
    // allocate gigabytes: zero-size tensors would otherwise declare any width, grid or depth).
    if (cls->shape[0] != 1 || cls->shape[1] != 1 || cls->shape[2] <= 0 || cls->shape[2] > INT_MAX / 16) {
        char a[160];
        export_shape_text(a, sizeof a, cls);
        dino_seterr(err, "%s: class token '%s' has shape %s, expected [1, 1, width]", path, cls->name, a);
        return -1;
    }
    const int D = (int)cls->shape[2];
    cfg->dim = D;
    const int64_t p = pw->shape[2];
    if (p <= 0 || p > 4096 || want_shape(pw, path, "the class token's width and RGB input", 4, D, 3, p, p, err)) {
        if (p <= 0 || p > 4096)
            dino_seterr(err, "%s: patch embedding weight '%s' has patch size %lld", path, pw->name, (long long)p);
        return -1;
    }
    cfg->patch = (int)p;
    const StTensor *reg = export_get_prefixed(f, prefix, hf ? "embeddings.register_tokens" : naming == NAMING_TIMM ? "reg_token" : "register_tokens");
    if (reg && (reg->ndim != 3 || reg->shape[1] > 4096 ||
                want_shape(reg, path, "the class token's width", 3, 1, reg->shape[1], D, 0, err))) {
        if (reg->ndim != 3 || reg->shape[1] > 4096)
            dino_seterr(err, "%s: register tokens '%s' are not [1, n <= 4096, width]", path, reg->name);
        return -1;
    }
    cfg->n_registers = reg ? (int)reg->shape[1] : 0;
    if (want_shape(pos, path, "the class token's width", 3, 1, pos->shape[1], D, 0, err)) return -1;
    // timm's register models store the patch rows only (no_embed_class)
    int64_t rows = pos->shape[1] - ((naming == NAMING_TIMM && cfg->n_registers) ? 0 : 1);
    int64_t G = rows > 0 ? llround(sqrt((double)rows)) : 0;
    if (G <= 0 || G * G != rows || G * p > INT_MAX / 2) {
        dino_seterr(err, "%s: position embeddings have %lld patch rows, not a square grid%s", path, (long long)rows,
                    G > 0 && G * G == rows ? " of a supported size" : "");
        return -1;
    }
    cfg->img_size = (int)(G * p);
    char n[256];
    int L = 0;
    for (;; L++) {
        snprintf(n, sizeof n, hf ? "encoder.layer.%d.norm1.weight" : "blocks.%d.norm1.weight", L);
        if (!export_get_prefixed(f, prefix, n)) break;
    }
    if (L == 0) {
        dino_seterr(err, "%s: no transformer blocks found under prefix '%s'", path, prefix);
        return -1;
    }
    cfg->depth = L;
    // Feed-forward kind and width from block 0: SwiGLU's first layer has twice the rows of the
    // second layer's input width; an MLP's has the same.
    const char *in_name = hf ? (export_get_prefixed(f, prefix, "encoder.layer.0.mlp.weights_in.weight") ? "encoder.layer.0.mlp.weights_in.weight"
                                                                                         : "encoder.layer.0.mlp.fc1.weight")
                             : (export_get_prefixed(f, prefix, "blocks.0.mlp.w12.weight") ? "blocks.0.mlp.w12.weight" : "blocks.0.mlp.fc1.weight");
    const char *out_name = hf ? (strstr(in_name, "weights_in") ? "encoder.layer.0.mlp.weights_out.weight" : "encoder.layer.0.mlp.fc2.weight")
                              : (strstr(in_name, "w12") ? "blocks.0.mlp.w3.weight" : "blocks.0.mlp.fc2.weight");
    const StTensor *w1 = need(f, path, prefix, in_name, 2, err);
    const StTensor *w2 = w1 ? need(f, path, prefix, out_name, 2, err) : NULL;
    if (!w2) return -1;
    if (w1->shape[1] != D || w2->shape[0] != D || w2->shape[1] <= 0 || w2->shape[1] > INT_MAX / 8 ||
        w1->shape[0] > INT_MAX / 8) {
        dino_seterr(err, "%s: feed-forward weights %s [%lld,%lld] and %s [%lld,%lld] do not fit width %d", path, in_name,
                    (long long)w1->shape[0], (long long)w1->shape[1], out_name, (long long)w2->shape[0],
                    (long long)w2->shape[1], D);
        return -1;
    }
    if (w1->shape[0] == 2 * w2->shape[1]) {
        cfg->ffn = VIT_FFN_SWIGLU;
        cfg->ffn_hidden = (int)w2->shape[1];
    } else if (w1->shape[0] == w2->shape[1]) {
        cfg->ffn = VIT_FFN_MLP;
        cfg->ffn_hidden = (int)w1->shape[0];
    } else {
        dino_seterr(err, "%s: feed-forward shapes %s [%lld,%lld] and %s [%lld,%lld] are neither an MLP nor a SwiGLU",
                    path, in_name, (long long)w1->shape[0], (long long)w1->shape[1], out_name,
                    (long long)w2->shape[0], (long long)w2->shape[1]);
        return -1;
    }
    // Every block has the shapes of block 0 in its norm, attention output and feed-forward weights: the
    // depth counted from the names is backed by the bytes of at least those (most of a block's values).
    for (int l = 0; l < L; l++) {
        const char *suffix[4] = {"norm1.weight", hf ? "attention.output.dense.weight" : "attn.proj.weight",
                                 in_name + (hf ? 16 : 9), out_name + (hf ? 16 : 9)}; // after "<block 0>."
        const int64_t want[4][2] = {{D, 0}, {D, D}, {w1->shape[0], D}, {D, w2->shape[1]}};
        for (int k = 0; k < 4; k++) {
            snprintf(n, sizeof n, hf ? "encoder.layer.%d.%s" : "blocks.%d.%s", l, suffix[k]);
            const StTensor *t = need(f, path, prefix, n, k ? 2 : 1, err);
            if (!t || want_shape(t, path, "block 0", k ? 2 : 1, want[k][0], want[k][1], 0, 0, err)) return -1;
        }
    }
    cfg->layerscale = export_get_prefixed(f, prefix, hf ? "encoder.layer.0.layer_scale1.lambda1" : "blocks.0.ls1.gamma") ? 1e-5f : 0.0f;
    cfg->qkv_bias = cfg->proj_bias = cfg->ffn_bias = 1;
    // Interpolation at other crop sizes as each implementation does it (export-formats.md B.2).
    if (naming == NAMING_DINOV2 && cfg->n_registers == 0) cfg->interpolate_offset = 0.1f;
    cfg->interpolate_antialias = naming == NAMING_TIMM || cfg->n_registers > 0;

    if (heads <= 0 && !meta_int(f, "num_attention_heads", &heads) && !meta_int(f, "num_heads", &heads) &&
        !meta_int(f, "student.num_heads", &heads) && !meta_int(f, "heads", &heads)) {
        static const int KNOWN[][2] = {{384, 6}, {768, 12}, {1024, 16}, {1536, 24}, {192, 3}};
        for (size_t i = 0; i < sizeof KNOWN / sizeof KNOWN[0]; i++)
            if (KNOWN[i][0] == D) heads = KNOWN[i][1];
        if (heads <= 0) {
            dino_seterr(err, "%s: the number of attention heads cannot be read from the tensors (width %d) and the "
                        "file's metadata does not say it: give it explicitly (--heads)", path, D);
            return -1;
        }
        fprintf(stderr, "note: %s: %d attention heads assumed (the reference arch of width %d)\n", path, heads, D);
    }
    cfg->heads = heads;
    snprintf(cfg->arch, sizeof cfg->arch, "custom");
    static const struct { const char *name; int dim, depth; } ARCH[] = {
        {"vit_small", 384, 12}, {"vit_base", 768, 12}, {"vit_large", 1024, 24}, {"vit_giant2", 1536, 40}, {"vit_tiny", 192, 12}};
    for (size_t i = 0; i < sizeof ARCH / sizeof ARCH[0]; i++)
        if (ARCH[i].dim == D && ARCH[i].depth == L) snprintf(cfg->arch, sizeof cfg->arch, "%s", ARCH[i].name);
    return vit_config_check(cfg, err);
}
