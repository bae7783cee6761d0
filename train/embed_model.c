// An exported backbone as a feature extractor: see embed_model.h.
#include "train/embed_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/check.h"
#include "common/json.h"
#include "common/safetensors.h"
#include "data/decode.h"
#include "model/backend_open.h"
#include "model/export_dinov3.h"
#include "model/export_names.h"
#include "train/pretrained.h"

#define CONFIG_MAX_BYTES (16u << 20) // an export's JSON config larger than this is not one

// ---- an export's JSON configs ------------------------------------------------------------------------

// Parses dir/name when it exists: *root (NULL when absent). Returns 0, or -1 with err.
static int read_config(const char *dir, const char *name, char *path, size_t cap, json_object **root, char *err) {
    snprintf(path, cap, "%s/%s", dir, name);
    *root = NULL;
    if (access(path, F_OK) != 0) return 0;
    *root = json_parse_file(path, CONFIG_MAX_BYTES, err);
    if (*root && !json_object_is_type(*root, json_type_object)) {
        dino_seterr(err, "%s: expected a JSON object, got %s", path, json_kind(*root));
        json_object_put(*root);
        *root = NULL;
    }
    return *root ? 0 : -1;
}

// The head count of config.json: HF num_attention_heads, timm model_args.num_heads, ours num_heads
// (0 when it names none).
static int config_heads(json_object *cfg, const char *file, int *heads, char *err) {
    static const char *keys[] = {"num_attention_heads", "model_args.num_heads", "num_heads"};
    for (int k = 0; k < 3; k++) {
        int64_t h;
        int r = json_get_int(cfg, keys[k], 1, 4096, &h, file, err);
        if (r < 0) return -1;
        if (r == 0) {
            *heads = (int)h;
            return 0;
        }
    }
    *heads = 0;
    return 0;
}

static int mean_std(json_object *obj, const char *mean_key, const char *std_key, Preprocess *p, const char *file,
                    char *err) {
    double m[3], s[3];
    int rm = json_get_numbers(obj, mean_key, 3, 0, 1, m, file, err);
    if (rm < 0) return -1;
    int rs = json_get_numbers(obj, std_key, 3, 0.001, 1, s, file, err);
    if (rs < 0) return -1;
    for (int c = 0; c < 3; c++) {
        if (rm == 0) p->mean[c] = (float)m[c];
        if (rs == 0) p->std[c] = (float)s[c];
    }
    return 0;
}

// preprocessor_config.json (a transformers image processor: BitImageProcessor, ...) on top of p: what
// this transform can reproduce exactly, refused with the key otherwise.
static int hf_preprocessor(json_object *pc, const char *file, Preprocess *p, char *err) {
    int do_resize = 1, do_crop = 1, do_rescale = 1, do_normalize = 1;
    if (json_get_bool(pc, "do_resize", &do_resize, file, err) < 0 ||
        json_get_bool(pc, "do_center_crop", &do_crop, file, err) < 0 ||
        json_get_bool(pc, "do_rescale", &do_rescale, file, err) < 0 ||
        json_get_bool(pc, "do_normalize", &do_normalize, file, err) < 0)
        return -1;
    int64_t v, h = p->crop, w = p->crop;
    if (!do_resize) p->resize = 0;
    else if (json_find(pc, "size")) {
        int r = json_get_int(pc, "size.shortest_edge", 1, PREPROCESS_MAX_SIDE, &v, file, err);
        if (r < 0) return -1;
        if (r == 1) {
            dino_seterr(err, "%s: size must give shortest_edge (a fixed height x width resize is not supported)", file);
            return -1;
        }
        p->resize = (int)v;
    }
    int r = json_get_int(pc, "resample", 0, 5, &v, file, err);
    if (r < 0) return -1;
    if (r == 0 && v != 3) {
        dino_seterr(err, "%s: resample must be 3 (bicubic, the one resize implemented), got %lld", file, (long long)v);
        return -1;
    }
    if (!do_crop) {
        dino_seterr(err, "%s: do_center_crop false is not supported (the model takes a square center crop)", file);
        return -1;
    }
    if (json_get_int(pc, "crop_size.height", 1, PREPROCESS_MAX_SIDE, &h, file, err) < 0 ||
        json_get_int(pc, "crop_size.width", 1, PREPROCESS_MAX_SIDE, &w, file, err) < 0)
        return -1;
    if (h != w) {
        dino_seterr(err, "%s: crop_size.height %lld and crop_size.width %lld differ (the model takes a square crop)",
                    file, (long long)h, (long long)w);
        return -1;
    }
    p->crop = (int)h;
    double f = 1.0 / 255;
    if (!do_rescale || json_get_number(pc, "rescale_factor", 0, 1, &f, file, err) < 0) {
        if (!do_rescale) dino_seterr(err, "%s: do_rescale false is not supported (pixels are scaled to [0, 1])", file);
        return -1;
    }
    if (fabs(f * 255 - 1) > 1e-6) {
        dino_seterr(err, "%s: rescale_factor must be 1/255, got %g", file, f);
        return -1;
    }
    if (!do_normalize) {
        for (int c = 0; c < 3; c++) p->mean[c] = 0, p->std[c] = 1;
        return 0;
    }
    return mean_std(pc, "image_mean", "image_std", p, file, err);
}

// timm's pretrained_cfg (a timm config.json) on top of p: input_size [3, S, S] is the crop, the resize
// floor(S / crop_pct) as timm's eval transform, bicubic center crops only.
static int timm_pretrained_cfg(json_object *cfg, const char *file, Preprocess *p, char *err) {
    json_object *size = json_find(cfg, "pretrained_cfg.input_size");
    if (size) {
        int64_t d[3] = {0, 0, 0};
        int ok = json_object_is_type(size, json_type_array) && json_object_array_length(size) == 3;
        for (int i = 0; ok && i < 3; i++) ok = json_as_int64(json_object_array_get_idx(size, (size_t)i), &d[i]) == 0;
        if (!ok || d[0] != 3 || d[1] != d[2] || d[1] < 1 || d[1] > PREPROCESS_MAX_SIDE) {
            dino_seterr(err, "%s: pretrained_cfg.input_size must be [3, S, S] with S in [1, %d], got %s", file,
                        PREPROCESS_MAX_SIDE, json_object_to_json_string_ext(size, JSON_C_TO_STRING_PLAIN));
            return -1;
        }
        p->crop = (int)d[1];
    }
    const char *s;
    int r = json_get_string(cfg, "pretrained_cfg.interpolation", &s, file, err);
    if (r < 0) return -1;
    if (r == 0 && strcmp(s, "bicubic") != 0) {
        dino_seterr(err, "%s: pretrained_cfg.interpolation must be \"bicubic\" (the one resize implemented), got \"%s\"",
                    file, s);
        return -1;
    }
    r = json_get_string(cfg, "pretrained_cfg.crop_mode", &s, file, err);
    if (r < 0) return -1;
    if (r == 0 && strcmp(s, "center") != 0) {
        dino_seterr(err, "%s: pretrained_cfg.crop_mode must be \"center\", got \"%s\"", file, s);
        return -1;
    }
    double crop_pct = 0.875; // timm's DEFAULT_CROP_PCT
    if (json_get_number(cfg, "pretrained_cfg.crop_pct", 0.01, 1, &crop_pct, file, err) < 0) return -1;
    p->resize = (int)floor(p->crop / crop_pct);
    return mean_std(cfg, "pretrained_cfg.mean", "pretrained_cfg.std", p, file, err);
}

// ---- opening ---------------------------------------------------------------------------------------------

int embed_model_open(EmbedModel *m, const char *path, int heads, const char *backend, char *err) {
    memset(m, 0, sizeof *m);
    char weights[4096], cfg_path[4200], pre_path[4200];
    json_object *cfg = NULL, *pre = NULL;
    struct stat st;
    const int is_dir = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
    if (is_dir) {
        snprintf(weights, sizeof weights, "%s/model.safetensors", path);
        if (read_config(path, "config.json", cfg_path, sizeof cfg_path, &cfg, err) ||
            read_config(path, "preprocessor_config.json", pre_path, sizeof pre_path, &pre, err))
            goto fail;
    } else {
        snprintf(weights, sizeof weights, "%s", path);
    }
    int cfg_heads = 0;
    if (cfg && config_heads(cfg, cfg_path, &cfg_heads, err)) goto fail;
    if (heads <= 0) heads = cfg_heads;
    StFile f;
    if (st_open(&f, weights, err)) goto fail;
    ExportNaming naming;
    char fp[256];
    VitConfig vc;
    int bad = export_detect(&f, weights, NULL, &naming, fp, sizeof fp, err);
    if (!bad && export_is_dinov3(&f, fp, naming)) {
        // the DINOv3 ViT: shapes, then config.json / metadata for RoPE, eps, k-bias mask, image size
        Dinov3Arch a;
        bad = export_infer_dinov3(&f, weights, naming, fp, heads, cfg, cfg_path, &a, err) ||
              dinov3_arch_to_vit(&a, &vc, err);
    } else if (!bad) {
        bad = export_infer_config(&f, weights, naming, fp, heads, &vc, err);
    }
    st_close(&f);
    if (bad) goto fail;
    preprocess_default(&m->pre, vc.img_size);
    if (pre ? hf_preprocessor(pre, pre_path, &m->pre, err) : cfg ? timm_pretrained_cfg(cfg, cfg_path, &m->pre, err) : 0)
        goto fail;
    if ((pre || cfg) && preprocess_check(&m->pre, pre ? pre_path : cfg_path, err)) goto fail;
    param_table_init(&m->tab);
    vit_build(&m->vit, &vc, &m->tab, "");
    float *host = dino_calloc(m->tab.total, sizeof(float));
    PretrainedOptions opt = {0};
    if (pretrained_load(&m->vit, &m->tab, "", host, weights, &opt, NULL, err) || !(m->be = backend_open(backend, err))) {
        free(host);
        vit_free(&m->vit);
        param_table_free(&m->tab);
        goto fail;
    }
    m->params = m->be->alloc(m->be, sizeof(float) * m->tab.total);
    m->be->param_copy_register(m->be, m->params, m->tab.total); // the GEMMs' bf16 copy (cuda)
    m->be->to_device(m->be, m->params, host, sizeof(float) * m->tab.total);
    free(host);
    m->owns = 1;
    snprintf(m->source, sizeof m->source, "%s", path);
    json_object_put(cfg);
    json_object_put(pre);
    return 0;
fail:
    json_object_put(cfg);
    json_object_put(pre);
    return -1;
}

void embed_model_wrap(EmbedModel *m, Backend *be, const Vit *vit, const float *params) {
    memset(m, 0, sizeof *m);
    m->vit = *vit; // shallow: shares the block offsets, never freed here
    m->be = be;
    m->params = (float *)params;
    preprocess_default(&m->pre, vit->cfg.img_size);
    snprintf(m->source, sizeof m->source, "(in memory)");
}

void embed_model_close(EmbedModel *m) {
    if (m->acts) vit_acts_free(m->be, m->acts);
    if (m->dev_images) m->be->release(m->be, m->dev_images);
    if (m->owns) {
        m->be->release(m->be, m->params);
        vit_free(&m->vit);
        param_table_free(&m->tab);
        backend_free(m->be);
    }
    memset(m, 0, sizeof *m);
}

// ---- features ----------------------------------------------------------------------------------------------

int feature_kind_parse(const char *s, FeatureKind *k) {
    if (!strcmp(s, "cls")) *k = FEAT_CLS;
    else if (!strcmp(s, "mean") || !strcmp(s, "mean_patch")) *k = FEAT_MEAN_PATCH;
    else if (!strcmp(s, "cls+mean") || !strcmp(s, "cls_mean")) *k = FEAT_CLS_MEAN;
    else return -1;
    return 0;
}

int feature_dim(const EmbedModel *m, FeatureKind k) { return k == FEAT_CLS_MEAN ? 2 * m->vit.cfg.dim : m->vit.cfg.dim; }

void embed_batch(EmbedModel *m, const float *images, int B, float *cls, float *mean_patch) {
    Backend *be = m->be;
    const int crop = m->pre.crop, D = m->vit.cfg.dim, R = m->vit.cfg.n_registers;
    if (!m->acts || m->acts_B != B || vit_acts_tokens(m->acts) != 1 + R + (crop / m->vit.cfg.patch) * (crop / m->vit.cfg.patch)) {
        if (m->acts) vit_acts_free(be, m->acts);
        if (m->dev_images) be->release(be, m->dev_images);
        m->acts = vit_acts_new(be, &m->vit, B, crop, VIT_ACTS_FORWARD_ONLY);
        m->dev_images = be->alloc(be, sizeof(float) * (size_t)B * 3 * crop * crop);
        m->acts_B = B;
    }
    be->to_device(be, m->dev_images, images, sizeof(float) * (size_t)B * 3 * crop * crop);
    const float *xn = vit_forward(be, &m->vit, m->params, m->acts, m->dev_images, NULL, NULL);
    const int T = vit_acts_tokens(m->acts), N = T - 1 - R;
    float *host = dino_malloc(sizeof(float) * (size_t)B * T * D);
    be->to_host(be, host, xn, sizeof(float) * (size_t)B * T * D);
    for (int b = 0; b < B; b++) {
        const float *x = host + (size_t)b * T * D;
        if (cls) memcpy(cls + (size_t)b * D, x, sizeof(float) * D);
        if (mean_patch) {
            for (int c = 0; c < D; c++) {
                double s = 0;
                for (int t = 1 + R; t < T; t++) s += x[(size_t)t * D + c];
                mean_patch[(size_t)b * D + c] = (float)(s / N);
            }
        }
    }
    free(host);
}

int embed_images(EmbedModel *m, int64_t n, EmbedReadFn read, void *ctx, FeatureKind kind, int batch, float *out,
                 char *err) {
    const int C = m->pre.crop, D = m->vit.cfg.dim, FD = feature_dim(m, kind);
    if (batch < 1) batch = 1;
    if (batch > n) batch = n > 0 ? (int)n : 1;
    if (vit_check_crop(&m->vit.cfg, C, err)) return -1;
    const size_t per = (size_t)3 * C * C;
    float *imgs = dino_calloc((size_t)batch * per, sizeof(float));
    float *cls = dino_malloc(sizeof(float) * (size_t)batch * D), *mp = dino_malloc(sizeof(float) * (size_t)batch * D);
    int rc = 0;
    for (int64_t i0 = 0; i0 < n && !rc; i0 += batch) {
        int nb = n - i0 < batch ? (int)(n - i0) : batch;
        int failed = 0;
#pragma omp parallel for schedule(dynamic)
        for (int j = 0; j < nb; j++) {
            Image im;
            char e1[DINO_ERRLEN];
            if (read(ctx, i0 + j, &im, e1)) {
#pragma omp critical
                {
                    if (!failed) dino_seterr(err, "%s", e1);
                    failed = 1;
                }
                continue;
            }
            preprocess_image(&m->pre, &im, imgs + (size_t)j * per);
            image_free(&im);
        }
        if (failed) {
            rc = -1;
            break;
        }
        // a short last batch is padded (zeros) to keep one activation set
        if (nb < batch) memset(imgs + (size_t)nb * per, 0, sizeof(float) * (size_t)(batch - nb) * per);
        embed_batch(m, imgs, batch, cls, mp);
        for (int j = 0; j < nb; j++) {
            float *o = out + (size_t)(i0 + j) * FD;
            if (kind != FEAT_MEAN_PATCH) memcpy(o, cls + (size_t)j * D, sizeof(float) * D);
            if (kind == FEAT_MEAN_PATCH) memcpy(o, mp + (size_t)j * D, sizeof(float) * D);
            if (kind == FEAT_CLS_MEAN) memcpy(o + D, mp + (size_t)j * D, sizeof(float) * D);
        }
    }
    free(imgs);
    free(cls);
    free(mp);
    return rc;
}

static int read_tile(void *ctx, int64_t i, Image *out, char *err) {
    return decode_image_file(((const TileSet *)ctx)->paths[i], 0, out, err);
}

int embed_tileset(EmbedModel *m, const TileSet *s, FeatureKind kind, int batch, float *out, char *err) {
    return embed_images(m, s->n, read_tile, (void *)s, kind, batch, out, err);
}
