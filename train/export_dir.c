// Writing an export directory: see export_dir.h.
#include "train/export_dir.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/fs.h"
#include "common/safetensors.h"

int export_write_text(const char *path, const char *text, char *err) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        dino_seterr(err, "%s: cannot create (%s)", tmp, strerror(errno));
        return -1;
    }
    int bad = fputs(text, f) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path)) {
        dino_seterr(err, "%s: write failed (%s)", path, strerror(errno));
        return -1;
    }
    return 0;
}

void export_preprocessor_json(char *out, size_t n, int crop) {
    const int resize = (int)(crop * 256.0 / 224.0 + 0.5);
    snprintf(out, n,
             "{\n  \"image_processor_type\": \"BitImageProcessor\",\n  \"do_resize\": true,\n"
             "  \"size\": {\"shortest_edge\": %d},\n  \"resample\": 3,\n  \"do_center_crop\": true,\n"
             "  \"crop_size\": {\"height\": %d, \"width\": %d},\n  \"do_rescale\": true,\n"
             "  \"rescale_factor\": 0.00392156862745098,\n  \"do_normalize\": true,\n"
             "  \"image_mean\": [0.485, 0.456, 0.406],\n  \"image_std\": [0.229, 0.224, 0.225],\n"
             "  \"do_convert_rgb\": true\n}\n",
             resize, crop, crop);
}

int export_write_dinov3(const char *outdir, const Dinov3Arch *a, const ParamTable *tab, const char *prefix,
                        const float *P, ExportNaming naming, const char *source, int *n_tensors, char *err) {
    static char text[16384];
    if (naming != NAMING_HF && naming != NAMING_DINOV2) {
        dino_seterr(err, "a DINOv3 backbone exports as hf or dinov2 (the official names), not %s",
                    export_naming_name(naming));
        return -1;
    }
    // the config first: a model HF cannot express is refused before anything is written
    if (naming == NAMING_HF) {
        if (dinov3_hf_config(text, sizeof text, a, err)) return -1;
    } else {
        if (dinov3_arch_check(a, err)) return -1;
        dinov3_own_config(text, sizeof text, a);
    }
    if (dino_mkdir_p(outdir, err)) {
        char e2[DINO_ERRLEN];
        snprintf(e2, sizeof e2, "%s", err);
        dino_seterr(err, "%s: cannot create directory (%s)", outdir, e2);
        return -1;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", outdir);
    if (export_write_text(path, text, err)) return -1;
    ExportMap map;
    export_map_build_dinov3(&map, a, tab, prefix, naming);
    StWriter *w = st_writer_new();
    float **bufs = dino_calloc((size_t)map.n, sizeof(float *));
    for (int i = 0; i < map.n; i++) {
        const ExportEntry *e = &map.e[i];
        bufs[i] = dino_malloc(sizeof(float) * (e->numel ? e->numel : 1));
        export_entry_gather(e, P, bufs[i]);
        st_writer_add(w, e->name, ST_F32, e->ndim, e->shape, bufs[i]);
    }
    char num[64];
    st_writer_meta(w, "format", "pt"); // transformers requires it; the rest is for our own tools
    st_writer_meta(w, "naming", export_naming_name(naming));
    st_writer_meta(w, "architecture", "dinov3");
    snprintf(num, sizeof num, "%d", a->heads);
    st_writer_meta(w, "num_attention_heads", num);
    snprintf(num, sizeof num, "%d", a->img_size);
    st_writer_meta(w, "image_size", num);
    if (a->rope.base > 0) { // (min/max periods are in config.json only)
        snprintf(num, sizeof num, "%.17g", a->rope.base);
        st_writer_meta(w, "rope_theta", num);
    }
    snprintf(num, sizeof num, "%.17g", a->ln_eps);
    st_writer_meta(w, "layer_norm_eps", num);
    st_writer_meta(w, "mask_k_bias", a->mask_k_bias ? "true" : "false");
    if (source) st_writer_meta(w, "source", source);
    snprintf(path, sizeof path, "%s/model.safetensors", outdir);
    int bad = st_writer_write(w, path, err);
    st_writer_free(w);
    for (int i = 0; i < map.n; i++) free(bufs[i]);
    free(bufs);
    if (n_tensors) *n_tensors = map.n;
    export_map_free(&map);
    if (bad) return -1;
    if (naming == NAMING_HF) {
        export_preprocessor_json(text, sizeof text, a->img_size);
        snprintf(path, sizeof path, "%s/preprocessor_config.json", outdir);
        if (export_write_text(path, text, err)) return -1;
    }
    return 0;
}
