// dinoembed: features of tiles or of a whole slide from an exported backbone (see docs/export.md).
//
//   dinoembed MODEL (--tiles SPEC | --slide SLIDE) -o OUT [options]
//
// MODEL: a dinoexport directory (model.safetensors + config.json [+ preprocessor_config.json]) or a
// bare safetensors file. Tiles: SPEC is a folder, a list/CSV file, "folder:DIR" or "list:FILE" (tile
// ids: the image paths), or anything data/source.h opens, e.g. "shards:LIST", a shard folder or glob
// (tile ids: the record index in the source's order).
// The features are the CLS token after the final LayerNorm (as HF pooler_output / timm token pool)
// and the mean of the patch tokens after the final LayerNorm (registers excluded).
//   OUT.npy          float32 [n, F] (--feature cls | mean | cls+mean), with OUT.ids.txt (one tile per line)
//   OUT.safetensors  "cls" [n, D] and "mean_patch" [n, D], with OUT.ids.txt
// Slide: the tissue tiles of SLIDE at --mpp um/px, --tile px, written to OUT.h5 as a CLAM / TRIDENT
// feature bag: "features" float32 [n, F], "coords" int64 [n, 2] (level-0 x, y of each tile's top-left
// corner) with the attributes those tools read (patch_size, patch_size_level0, patch_level, mpp, ...).
//
// Slide tiles follow dinotile's grid and tissue rule (data/tiler.c, data/wsi, data/tissue), so a bag's
// coords are the coords of the same tiles in dinotile's shards.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef DINO_HAVE_HDF5
#include <hdf5.h>
#endif

#include "common/threads.h"
#include "common/check.h"
#include "common/safetensors.h"
#include "data/source.h"
#include "data/tissue.h"
#include "data/wsi.h"
#include "data/tileset.h"
#include "train/embed_model.h"

static void usage(void) {
    fprintf(stderr,
            "usage: dinoembed [--model] MODEL (--tiles SPEC | --slide SLIDE) (-o | --out) OUT [options]\n"
            "  --feature cls|mean|cls+mean  feature of the .npy / .h5 output (default cls)\n"
            "  --batch N                    images per forward (default 16)\n"
            "  --resize N --crop N          shorter side before the center crop, crop size (default: the\n"
            "                               model's preprocessor_config, else img*256/224 and img)\n"
            "  --mean r,g,b --std r,g,b     normalization (default ImageNet)\n"
            "  --heads N                    attention heads if the model files do not say\n"
            "  --backend auto|cpu|cuda      where the model runs (default auto: the GPU when there is one)\n"
            "slide options:\n"
            "  --mpp X (0.5)  --tile N (224)  --min-tissue F (0.5: tissue fraction of a kept tile, as dinotile)\n"
            "  --slide-mpp X  level-0 um/px when the slide does not record it\n");
}

static int parse3(const char *s, float *v) {
    return sscanf(s, "%f,%f,%f", &v[0], &v[1], &v[2]) == 3 ? 0 : -1;
}

static int ends_with(const char *s, const char *x) {
    size_t a = strlen(s), b = strlen(x);
    return a >= b && !strcmp(s + a - b, x);
}

// OUT with its extension replaced by ".ids.txt"
static void ids_path(char *out, size_t n, const char *path) {
    snprintf(out, n, "%s", path);
    char *dot = strrchr(out, '.'), *slash = strrchr(out, '/');
    if (dot && (!slash || dot > slash)) *dot = 0;
    size_t k = strlen(out);
    snprintf(out + k, n - k, ".ids.txt");
}

static int write_npy(const char *path, const float *x, int n, int d, char *err) {
    char hdr[128];
    int len = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", n, d);
    int total = 10 + len + 1, pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f) {
        dino_seterr(err, "%s: cannot create (%s)", path, strerror(errno));
        return -1;
    }
    unsigned short hl = (unsigned short)(len + pad + 1);
    int bad = fwrite("\x93NUMPY\x01\x00", 1, 8, f) != 8;
    bad |= fwrite(&hl, 2, 1, f) != 1; // little-endian host (x86/arm64)
    bad |= fwrite(hdr, 1, (size_t)len, f) != (size_t)len;
    for (int i = 0; i < pad; i++) bad |= fputc(' ', f) == EOF;
    bad |= fputc('\n', f) == EOF;
    bad |= fwrite(x, sizeof(float), (size_t)n * d, f) != (size_t)n * d;
    bad |= fclose(f) != 0;
    if (bad) dino_seterr(err, "%s: write failed", path);
    return bad ? -1 : 0;
}

// Tile i of a data/source.h source (shards and anything else it opens).
static int read_source_tile(void *ctx, int64_t i, Image *out, char *err) { return source_read_rgb(ctx, i, 0, out, err); }

static int run_tiles(EmbedModel *m, const char *spec, const char *out, FeatureKind kind, int batch) {
    char err[DINO_ERRLEN], err2[DINO_ERRLEN];
    TileSet s;
    const int D = m->vit.cfg.dim;
    float *both = NULL;
    if (!strncmp(spec, "wsi:", 4)) {
        fprintf(stderr, "dinoembed: %s: a wsi: source samples tiles at random; embed a slide with --slide\n", spec);
        return 1;
    }
    if (tileset_open(&s, spec, 0, err) == 0) {
        both = dino_malloc(sizeof(float) * (size_t)s.n * 2 * D);
        if (embed_tileset(m, &s, FEAT_CLS_MEAN, batch, both, err)) {
            fprintf(stderr, "dinoembed: %s\n", err);
            return 1;
        }
    } else {
        // not a folder or list of images: shards (or anything else data/source.h opens)
        TileSource *src = source_open(spec, err2);
        if (!src) {
            fprintf(stderr, "dinoembed: %s\n  (as a tile source: %s)\n", err, err2);
            return 1;
        }
        memset(&s, 0, sizeof s);
        s.n = (int)source_count(src);
        s.paths = dino_malloc(sizeof(char *) * (size_t)(s.n ? s.n : 1));
        for (int i = 0; i < s.n; i++) {
            char id[64];
            snprintf(id, sizeof id, "%d", i);
            s.paths[i] = strdup(id); // tile ids: the source's record index
        }
        both = dino_malloc(sizeof(float) * (size_t)(s.n ? s.n : 1) * 2 * D);
        int bad = s.n == 0 || embed_images(m, s.n, read_source_tile, src, FEAT_CLS_MEAN, batch, both, err);
        source_close(src);
        if (bad) {
            fprintf(stderr, "dinoembed: %s\n", s.n ? err : "the source has no tiles");
            return 1;
        }
    }
    const int n = s.n;
    float *cls = dino_malloc(sizeof(float) * (size_t)n * D), *mp = dino_malloc(sizeof(float) * (size_t)n * D);
    for (int i = 0; i < n; i++) {
        memcpy(cls + (size_t)i * D, both + (size_t)i * 2 * D, sizeof(float) * D);
        memcpy(mp + (size_t)i * D, both + (size_t)i * 2 * D + D, sizeof(float) * D);
    }
    int rc;
    if (ends_with(out, ".safetensors")) {
        StWriter *w = st_writer_new();
        int64_t shape[2] = {n, D};
        st_writer_add(w, "cls", ST_F32, 2, shape, cls);
        st_writer_add(w, "mean_patch", ST_F32, 2, shape, mp);
        st_writer_meta(w, "model", m->source);
        st_writer_meta(w, "tiles", spec);
        rc = st_writer_write(w, out, err);
        st_writer_free(w);
    } else {
        const float *x = kind == FEAT_CLS ? cls : kind == FEAT_MEAN_PATCH ? mp : both;
        rc = write_npy(out, x, n, feature_dim(m, kind), err);
    }
    if (!rc) {
        char ip[4200];
        ids_path(ip, sizeof ip, out);
        FILE *f = fopen(ip, "w");
        if (!f) {
            dino_seterr(err, "%s: cannot create (%s)", ip, strerror(errno));
            rc = -1;
        } else {
            for (int i = 0; i < n; i++) fprintf(f, "%s\n", s.paths[i]);
            if (fclose(f)) rc = -1;
        }
        if (!rc) printf("dinoembed: %d tiles -> %s (+ %s), width %d\n", n, out, ip, D);
    }
    if (rc) fprintf(stderr, "dinoembed: %s\n", err);
    free(both);
    free(cls);
    free(mp);
    tileset_free(&s);
    return rc ? 1 : 0;
}

// ---- slides ------------------------------------------------------------------------------------------------

#ifdef DINO_HAVE_HDF5
typedef struct {
    Wsi *w;
    const int64_t *coords; // level-0 (x, y) of every kept tile
    double mpp;
    int tile, first;       // tile side; the tile that read index 0 stands for
} SlideTiles;

static int read_slide_tile(void *ctx, int64_t i, Image *out, char *err) {
    const SlideTiles *t = ctx;
    const int64_t *c = t->coords + 2 * (t->first + i);
    return wsi_read_tile(t->w, c[0], c[1], t->mpp, t->tile, out, NULL, err);
}
#endif

// The tiles of a slide, on the same grid as dinotile (data/tiler.c): side L = tile * mpp / slide mpp
// level-0 pixels, cells (gx, gy) at (llround(gx L), llround(gy L)), kept when the tissue mask
// (data/tissue) covers at least min_tissue of the cell; read with wsi_read_tile at `mpp`.
static int run_slide(EmbedModel *m, const char *path, const char *out, FeatureKind kind, int batch, double mpp,
                     int tile, double min_tissue, double slide_mpp) {
#ifndef DINO_HAVE_HDF5
    (void)m, (void)path, (void)out, (void)kind, (void)batch, (void)mpp, (void)tile, (void)min_tissue, (void)slide_mpp;
    fprintf(stderr, "dinoembed: --slide needs HDF5, which this build does not have\n");
    return 1;
#else
    char err[DINO_ERRLEN];
    Wsi *w = wsi_open(path, slide_mpp, err);
    if (!w) {
        fprintf(stderr, "dinoembed: %s\n", err);
        return 1;
    }
    const double mpp0 = wsi_mpp(w), L = tile * mpp / mpp0;
    const int64_t W0 = wsi_width(w), H0 = wsi_height(w);
    if (L > W0 || L > H0) {
        fprintf(stderr, "dinoembed: %s: a %d px tile at %g um/px covers %.0f level-0 px, more than the slide (%lldx%lld)\n",
                path, tile, mpp, L, (long long)W0, (long long)H0);
        wsi_close(w);
        return 1;
    }
    TissueMask tm;
    if (tissue_mask_for_slide(w, tissue_mask_downsample(w, L), &tm, err)) {
        fprintf(stderr, "dinoembed: %s\n", err);
        wsi_close(w);
        return 1;
    }
    const int64_t nx = (int64_t)(W0 / L), ny = (int64_t)(H0 / L);
    int n = 0;
    int64_t *coords = dino_malloc(sizeof(int64_t) * 2 * (size_t)(nx * ny > 0 ? nx * ny : 1));
    for (int64_t cell = 0; cell < nx * ny; cell++) {
        double x0 = (double)(cell % nx) * L, y0 = (double)(cell / nx) * L;
        if (tissue_fraction(&tm, x0, y0, L, L) < min_tissue) continue;
        coords[2 * n] = llround(x0);
        coords[2 * n + 1] = llround(y0);
        n++;
    }
    tissue_mask_free(&tm);
    const int FD = feature_dim(m, kind), level = wsi_best_level(w, mpp / mpp0);
    float *feats = dino_malloc(sizeof(float) * (size_t)(n ? n : 1) * FD);
    SlideTiles st = {w, coords, mpp, tile, 0};
    const int tty = isatty(2), chunk = 8 * (batch > 0 ? batch : 1);
    int failed = 0;
    for (int i0 = 0; i0 < n && !failed; i0 += chunk) { // in chunks, to show progress
        st.first = i0;
        int nb = n - i0 < chunk ? n - i0 : chunk;
        failed = embed_images(m, nb, read_slide_tile, &st, kind, batch, feats + (size_t)i0 * FD, err) != 0;
        if (tty) fprintf(stderr, "\rdinoembed: %d / %d tiles", i0 + nb, n);
    }
    if (tty && n) fprintf(stderr, "\n");
    if (failed) {
        fprintf(stderr, "dinoembed: %s\n", err);
        wsi_close(w);
        return 1;
    }

    // ---- the feature bag ----
    int rc = 1;
    hid_t f = H5Fcreate(out, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) {
        fprintf(stderr, "dinoembed: %s: cannot create the HDF5 file\n", out);
        return 1;
    }
    hsize_t fd[2] = {(hsize_t)n, (hsize_t)FD}, cd[2] = {(hsize_t)n, 2};
    hid_t fs = H5Screate_simple(2, fd, NULL), cs = H5Screate_simple(2, cd, NULL);
    hid_t dfe = H5Dcreate2(f, "features", H5T_IEEE_F32LE, fs, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t dco = H5Dcreate2(f, "coords", H5T_STD_I64LE, cs, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int bad = dfe < 0 || dco < 0;
    if (!bad && n) {
        bad |= H5Dwrite(dfe, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, feats) < 0;
        bad |= H5Dwrite(dco, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, coords) < 0;
    }
    // attributes as CLAM (patch_size, patch_level, downsample, level_dim, name) and TRIDENT
    // (patch_size_level0, level0_magnification, target_magnification, overlap, level0_width/height)
    hid_t sc = H5Screate(H5S_SCALAR);
#define ATTR_I(obj, name, v)                                                                                     \
    do {                                                                                                         \
        int64_t v_ = (v);                                                                                        \
        hid_t a_ = H5Acreate2(obj, name, H5T_STD_I64LE, sc, H5P_DEFAULT, H5P_DEFAULT);                          \
        bad |= a_ < 0 || H5Awrite(a_, H5T_NATIVE_INT64, &v_) < 0;                                                \
        if (a_ >= 0) H5Aclose(a_);                                                                               \
    } while (0)
#define ATTR_F(obj, name, v)                                                                                     \
    do {                                                                                                         \
        double v_ = (v);                                                                                         \
        hid_t a_ = H5Acreate2(obj, name, H5T_IEEE_F64LE, sc, H5P_DEFAULT, H5P_DEFAULT);                         \
        bad |= a_ < 0 || H5Awrite(a_, H5T_NATIVE_DOUBLE, &v_) < 0;                                               \
        if (a_ >= 0) H5Aclose(a_);                                                                               \
    } while (0)
#define ATTR_S(obj, name, v)                                                                                     \
    do {                                                                                                         \
        const char *v_ = (v);                                                                                    \
        hid_t t_ = H5Tcopy(H5T_C_S1); /* variable-length UTF-8, as h5py writes a str (TRIDENT) */               \
        H5Tset_size(t_, H5T_VARIABLE);                                                                           \
        H5Tset_cset(t_, H5T_CSET_UTF8);                                                                          \
        hid_t a_ = H5Acreate2(obj, name, t_, sc, H5P_DEFAULT, H5P_DEFAULT);                                      \
        bad |= a_ < 0 || H5Awrite(a_, t_, &v_) < 0;                                                              \
        if (a_ >= 0) H5Aclose(a_);                                                                               \
        H5Tclose(t_);                                                                                            \
    } while (0)
    if (!bad) {
        const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        char name[1024];
        snprintf(name, sizeof name, "%s", base);
        char *dot = strrchr(name, '.');
        if (dot) *dot = 0;
        const double mag0 = 10.0 / mpp0, magt = 10.0 / mpp; // 0.5 um/px ~ 20x, the usual convention
        ATTR_I(dco, "patch_size", tile);
        ATTR_I(dco, "patch_size_level0", llround(L));
        ATTR_I(dco, "patch_level", 0); // coords are level-0 pixels
        ATTR_I(dco, "read_level", level);
        ATTR_F(dco, "downsample", L / tile);
        ATTR_I(dco, "level0_width", W0);
        ATTR_I(dco, "level0_height", H0);
        ATTR_F(dco, "level0_magnification", round(mag0 * 100) / 100);
        ATTR_F(dco, "target_magnification", round(magt * 100) / 100);
        ATTR_F(dco, "level0_mpp", mpp0);
        ATTR_I(dco, "level0_mpp_assumed", wsi_mpp_assumed(w));
        ATTR_F(dco, "mpp", mpp);
        ATTR_I(dco, "overlap", 0);
        ATTR_S(dco, "name", name);
        ATTR_S(dco, "savetodir", out);
        ATTR_S(dfe, "encoder", m->source);
        ATTR_S(dfe, "feature", kind == FEAT_CLS ? "cls" : kind == FEAT_MEAN_PATCH ? "mean_patch" : "cls+mean_patch");
        ATTR_I(dfe, "patch_size", tile);
        ATTR_I(dfe, "patch_size_level0", llround(L));
        ATTR_F(dfe, "mpp", mpp);
        ATTR_S(f, "slide", path);
        ATTR_S(f, "encoder", m->source);
        ATTR_F(f, "min_tissue", min_tissue);
    }
    H5Sclose(sc);
    if (dfe >= 0) H5Dclose(dfe);
    if (dco >= 0) H5Dclose(dco);
    H5Sclose(fs);
    H5Sclose(cs);
    bad |= H5Fclose(f) < 0;
    if (bad) fprintf(stderr, "dinoembed: %s: writing the HDF5 file failed\n", out);
    else {
        printf("dinoembed: %s: %d tissue tiles of %d px at %g um/px (%.1f level-0 px, read at level %d) -> %s "
               "(features [%d, %d], coords [%d, 2])\n",
               path, n, tile, mpp, L, level, out, n, FD, n);
        rc = 0;
    }
    free(feats);
    free(coords);
    wsi_close(w);
    return rc;
#endif
}

int main(int argc, char **argv) {
    dino_prefer_passive_openmp(argv);
    const char *model = NULL, *tiles = NULL, *slide = NULL, *out = NULL, *backend = "auto";
    FeatureKind kind = FEAT_CLS;
    int batch = 16, resize = -1, crop = -1, heads = 0, tile = 224, have_mean = 0, have_std = 0;
    float mean[3], std[3];
    double mpp = 0.5, min_tissue = 0.5, slide_mpp = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (!strcmp(a, name) && v && (++i, 1))
        if (OPT("--tiles")) tiles = v;
        else if (OPT("--slide")) slide = v;
        else if (OPT("--model")) model = v;
        else if (OPT("-o") || (!strcmp(a, "--out") && v && (++i, 1))) out = v;
        else if (OPT("--feature")) {
            if (feature_kind_parse(v, &kind)) {
                fprintf(stderr, "dinoembed: unknown --feature '%s' (cls, mean, cls+mean)\n", v);
                return 2;
            }
        } else if (OPT("--batch")) batch = atoi(v);
        else if (OPT("--resize")) resize = atoi(v);
        else if (OPT("--crop")) crop = atoi(v);
        else if (OPT("--heads")) heads = atoi(v);
        else if (OPT("--backend")) backend = v;
        else if (OPT("--mean")) have_mean = parse3(v, mean) == 0 ? 1 : -1;
        else if (OPT("--std")) have_std = parse3(v, std) == 0 ? 1 : -1;
        else if (OPT("--mpp")) mpp = atof(v);
        else if (OPT("--tile")) tile = atoi(v);
        else if (OPT("--min-tissue")) min_tissue = atof(v);
        else if (OPT("--slide-mpp")) slide_mpp = atof(v);
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        } else if (a[0] != '-' && !model) model = a;
        else {
            fprintf(stderr, "dinoembed: unknown or incomplete option '%s'\n", a);
            usage();
            return 2;
        }
#undef OPT
    }
    if (!model || !out || (!tiles == !slide) || have_mean < 0 || have_std < 0 || batch < 1 || tile < 1 || !(mpp > 0)) {
        usage();
        return 2;
    }
    char err[DINO_ERRLEN];
    EmbedModel m;
    if (embed_model_open(&m, model, heads, backend, err)) {
        fprintf(stderr, "dinoembed: %s\n", err);
        return 1;
    }
    if (slide) { // slide tiles are already the model's input: no 256 -> 224 step unless asked
        m.pre.crop = tile;
        m.pre.resize = tile;
    }
    if (resize >= 0) m.pre.resize = resize;
    if (crop > 0) m.pre.crop = crop;
    if (have_mean) memcpy(m.pre.mean, mean, sizeof mean);
    if (have_std) memcpy(m.pre.std, std, sizeof std);
    if (preprocess_check(&m.pre, "dinoembed's preprocessing", err) || vit_check_crop(&m.vit.cfg, m.pre.crop, err)) {
        fprintf(stderr, "dinoembed: %s\n", err);
        return 1;
    }
    int rc = tiles ? run_tiles(&m, tiles, out, kind, batch)
                   : run_slide(&m, slide, out, kind, batch, mpp, tile, min_tissue, slide_mpp);
    embed_model_close(&m);
    return rc;
}
