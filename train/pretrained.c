// Backbone initialisation from a safetensors file in any naming.
#include "train/pretrained.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/safetensors.h"

static void shape_str(char *out, size_t n, int ndim, const int64_t *shape) {
    size_t L = (size_t)snprintf(out, n, "[");
    for (int i = 0; i < ndim && L < n; i++) L += (size_t)snprintf(out + L, n - L, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (L < n) snprintf(out + L, n - L, "]");
}

static int same_shape(const StTensor *t, const ExportEntry *e) {
    if (t->ndim != e->ndim) return 0;
    for (int i = 0; i < e->ndim; i++)
        if (t->shape[i] != e->shape[i]) return 0;
    return 1;
}

// Tensors that belong to a classifier or a pretraining head, not to the backbone.
static int is_head_name(const char *s) {
    static const char *const HEADS[] = {"head", "fc_norm", "classifier", "pooler", "dino_head", "ibot_head"};
    for (size_t i = 0; i < sizeof HEADS / sizeof HEADS[0]; i++) {
        size_t n = strlen(HEADS[i]);
        if (!strncmp(s, HEADS[i], n) && (s[n] == '.' || s[n] == 0)) return 1;
    }
    return 0;
}

// The position-embedding tensor of the file on another grid: resample its patch rows to the model's
// grid. `has_cls` says whether row 0 is the class slot (kept as is). Returns a malloc'd buffer in the
// entry's shape, or NULL with err set when the file's rows are not a square grid.
static float *resample_pos(const StTensor *t, const ExportEntry *e, int has_cls, int M, const char *path, char *err) {
    const int D = (int)e->shape[2];
    int64_t rows = t->shape[1] - has_cls;
    int Mf = 0;
    while ((int64_t)(Mf + 1) * (Mf + 1) <= rows) Mf++;
    if ((int64_t)Mf * Mf != rows || t->shape[2] != D || t->shape[0] != 1) {
        char a[96];
        shape_str(a, sizeof a, t->ndim, t->shape);
        dino_seterr(err, "%s: position embeddings %s cannot be resampled: not 1 x (%sgrid^2) x %d", path, a,
                    has_cls ? "1 + " : "", D);
        return NULL;
    }
    float *src = dino_malloc(sizeof(float) * (size_t)t->shape[1] * D);
    if (export_read_f32(t, src, err)) {
        free(src);
        return NULL;
    }
    float *W = dino_malloc(sizeof(float) * (size_t)M * M * Mf * Mf);
    vit_pos_interp_matrix(W, Mf, M, 0.0f, 0);
    float *out = dino_calloc(e->numel, sizeof(float));
    if (has_cls) memcpy(out, src, sizeof(float) * D);
    const float *sp = src + (size_t)has_cls * D;
    float *op = out + (size_t)has_cls * D;
    for (int i = 0; i < M * M; i++)
        for (int j = 0; j < Mf * Mf; j++) {
            const float w = W[(size_t)i * Mf * Mf + j];
            if (w != 0.0f)
                for (int c = 0; c < D; c++) op[(size_t)i * D + c] += w * sp[(size_t)j * D + c];
        }
    fprintf(stderr, "note: %s: position embeddings resampled bicubically from a %dx%d to a %dx%d grid\n", path, Mf,
            Mf, M, M);
    free(W);
    free(src);
    return out;
}

int pretrained_load(const Vit *vit, const ParamTable *tab, const char *prefix, float *params, const char *path,
                    const PretrainedOptions *opt, ExportNaming *naming_out, char *err) {
    PretrainedOptions dflt = {0};
    if (!opt) opt = &dflt;
    StFile f;
    if (st_open(&f, path, err)) return -1;
    ExportNaming naming;
    char fp[256];
    if (export_detect(&f, path, opt->file_prefix, &naming, fp, sizeof fp, err)) {
        st_close(&f);
        return -1;
    }
    if (vit->cfg.rope && naming == NAMING_TIMM) {
        dino_seterr(err, "%s: timm names (reg_token, or no mask_token) cannot be loaded into the DINOv3 ViT: give the "
                    "official dinov3 names or the Hugging Face DINOv3ViTModel names", path);
        st_close(&f);
        return -1;
    }
    ExportMap map;
    export_map_build(&map, vit, tab, prefix, naming);
    const size_t fplen = strlen(fp);
    unsigned char *used = dino_calloc((size_t)f.n, 1);
    int rc = -1, loaded = 0;
    for (int i = 0; i < map.n; i++) {
        const ExportEntry *e = &map.e[i];
        char full[512];
        snprintf(full, sizeof full, "%s%s", fp, e->name);
        const StTensor *t = st_get(&f, full);
        if (!t) {
            if (e->optional || e->xf == XF_ONES) continue;
            dino_seterr(err, "%s: tensor '%s' (%s naming; the model's %s) is missing", path, full,
                        export_naming_name(naming), e->our_name);
            goto done;
        }
        used[t - f.t] = 1;
        float *buf = NULL;
        const int is_pos = e->src == vit->pos && (e->xf == XF_COPY || e->xf == XF_POS_NOCLS);
        if (!same_shape(t, e)) {
            char a[96], b[96];
            shape_str(a, sizeof a, t->ndim, t->shape);
            shape_str(b, sizeof b, e->ndim, e->shape);
            if (is_pos && opt->resample_pos_embed) {
                buf = resample_pos(t, e, e->xf == XF_COPY, vit->grid, path, err);
                if (!buf) goto done;
            } else {
                dino_seterr(err, "%s: tensor '%s' has shape %s in the file but the model expects %s%s", path, full, a, b,
                            is_pos ? " (a different position-embedding grid: pass the resample option, "
                                     "e.g. --resample-pos-embed, to interpolate it bicubically)"
                                   : "");
                goto done;
            }
        } else {
            buf = dino_malloc(sizeof(float) * e->numel);
            if (export_read_f32(t, buf, err)) {
                free(buf);
                goto done;
            }
        }
        int bad = export_entry_scatter(e, buf, params, err);
        free(buf);
        if (bad) goto done;
        loaded++;
    }
    // Anything else under the backbone's prefix is a tensor the model lacks: refuse it.
    for (int i = 0; i < f.n; i++) {
        const char *name = f.t[i].name;
        if (used[i] || strncmp(name, fp, fplen) || is_head_name(name + fplen)) continue;
        if (naming == NAMING_TIMM && !strcmp(name + fplen, "mask_token")) continue;
        // a file prefix of "" also holds other networks' tensors in a checkpoint: only backbone-like names count
        if (fplen == 0 && strncmp(name, "blocks.", 7) && strncmp(name, "encoder.", 8) && strncmp(name, "layer.", 6) && strncmp(name, "embeddings.", 11) &&
            strcmp(name, "cls_token") && strcmp(name, "pos_embed") && strcmp(name, "register_tokens") &&
            strcmp(name, "reg_token") && strcmp(name, "storage_tokens") && strncmp(name, "norm.", 5) && strncmp(name, "layernorm.", 10) &&
            strncmp(name, "patch_embed.", 12))
            continue;
        dino_seterr(err, "%s: tensor '%s' has no place in the model (%d blocks, width %d, %d registers, %s): the "
                    "file's backbone is a different architecture", path, name, vit->cfg.depth, vit->cfg.dim,
                    vit->cfg.n_registers, vit->cfg.ffn == VIT_FFN_MLP ? "MLP" : "SwiGLU");
        goto done;
    }
    if (opt->verbose)
        fprintf(stderr, "pretrained: %d tensors loaded from %s (%s naming, prefix '%s')\n", loaded, path,
                export_naming_name(naming), fp);
    if (naming_out) *naming_out = naming;
    rc = 0;
done:
    free(used);
    export_map_free(&map);
    st_close(&f);
    return rc;
}
