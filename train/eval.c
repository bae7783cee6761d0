// Feature extraction and feature evaluation (k-NN, linear probe). See eval.h.
#include "train/eval.h"

#include <cblas.h>
#include <ctype.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#ifdef DINO_HAVE_PNG
#include <png.h>
#endif

#include "common/check.h"
#include "common/rng.h"
#include "common/safetensors.h"
#include "model/backend_open.h"
#include "model/export_names.h"
#include "train/pretrained.h"

// ---- image decoding (minimal, inference only) --------------------------------------------------------

static int read_whole(const char *path, unsigned char **buf, size_t *len, char *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        dino_seterr(err, "%s: cannot open (%s)", path, strerror(errno));
        return -1;
    }
    fseeko(f, 0, SEEK_END);
    off_t n = ftello(f);
    fseeko(f, 0, SEEK_SET);
    *buf = dino_malloc((size_t)n);
    *len = (size_t)n;
    if (n < 0 || fread(*buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(*buf);
        dino_seterr(err, "%s: read failed", path);
        return -1;
    }
    fclose(f);
    return 0;
}

static int ends_with_ci(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

static int is_image_name(const char *s) {
    return ends_with_ci(s, ".jpg") || ends_with_ci(s, ".jpeg") || ends_with_ci(s, ".png");
}

int image_load_file(const char *path, Image *out, char *err) {
    unsigned char *buf;
    size_t len;
    if (read_whole(path, &buf, &len, err)) return -1;
    int rc = -1;
    if (len >= 8 && buf[0] == 0x89 && buf[1] == 'P' && buf[2] == 'N' && buf[3] == 'G') {
#ifdef DINO_HAVE_PNG
        png_image img;
        memset(&img, 0, sizeof img);
        img.version = PNG_IMAGE_VERSION;
        if (png_image_begin_read_from_memory(&img, buf, len)) {
            img.format = PNG_FORMAT_RGB;
            image_alloc(out, (int)img.width, (int)img.height);
            if (png_image_finish_read(&img, NULL, out->px, 0, NULL)) rc = 0;
            else image_free(out);
        }
        if (rc) dino_seterr(err, "%s: PNG decode failed (%s)", path, img.message);
        png_image_free(&img);
#else
        dino_seterr(err, "%s: PNG support was not built (libpng missing)", path);
#endif
    } else {
        tjhandle tj = tjInitDecompress();
        int w, h, sub, cs;
        if (tj && tjDecompressHeader3(tj, buf, (unsigned long)len, &w, &h, &sub, &cs) == 0) {
            image_alloc(out, w, h);
            if (tjDecompress2(tj, buf, (unsigned long)len, out->px, w, 0, h, TJPF_RGB, TJFLAG_ACCURATEDCT) == 0) rc = 0;
            else image_free(out);
        }
        if (rc) dino_seterr(err, "%s: not a readable JPEG or PNG (%s)", path, tj ? tjGetErrorStr2(tj) : "turbojpeg");
        if (tj) tjDestroy(tj);
    }
    free(buf);
    return rc;
}

static double cubic_pil(double x) { // A = -0.5, PIL's bicubic
    const double a = -0.5;
    x = fabs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
}

// Weights of one output sample: taps [*lo, *lo + *n) of the input, normalized (PIL's precompute_coeffs).
static void coeffs(int in, int out, int o, int *lo, int *n, double *w) {
    double scale = (double)in / out, fs = scale > 1 ? scale : 1, support = 2.0 * fs;
    double center = (o + 0.5) * scale;
    int a = (int)(center - support + 0.5), b = (int)(center + support + 0.5);
    if (a < 0) a = 0;
    if (b > in) b = in;
    double total = 0;
    for (int i = a; i < b; i++) total += w[i - a] = cubic_pil((i - center + 0.5) / fs);
    for (int i = a; i < b; i++) w[i - a] = total != 0 ? w[i - a] / total : 0;
    *lo = a;
    *n = b - a;
}

static uint8_t clip8(double v) {
    long r = lround(v);
    return (uint8_t)(r < 0 ? 0 : r > 255 ? 255 : r);
}

void image_resize_bicubic(const Image *in, Image *out, int w, int h) {
    // horizontal pass then vertical, rounding to 8 bits in between, as PIL
    Image mid;
    image_alloc(&mid, w, in->h);
    int maxtaps = (int)(4.0 * ((double)in->w / w > 1 ? (double)in->w / w : 1)) + 3;
    double *wt = dino_malloc(sizeof(double) * (size_t)maxtaps);
    for (int x = 0; x < w; x++) {
        int lo, n;
        coeffs(in->w, w, x, &lo, &n, wt);
        for (int y = 0; y < in->h; y++)
            for (int c = 0; c < 3; c++) {
                double s = 0;
                for (int k = 0; k < n; k++) s += wt[k] * in->px[((size_t)y * in->w + lo + k) * 3 + c];
                mid.px[((size_t)y * w + x) * 3 + c] = clip8(s);
            }
    }
    free(wt);
    maxtaps = (int)(4.0 * ((double)in->h / h > 1 ? (double)in->h / h : 1)) + 3;
    wt = dino_malloc(sizeof(double) * (size_t)maxtaps);
    image_alloc(out, w, h);
    for (int y = 0; y < h; y++) {
        int lo, n;
        coeffs(in->h, h, y, &lo, &n, wt);
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                double s = 0;
                for (int k = 0; k < n; k++) s += wt[k] * mid.px[((size_t)(lo + k) * w + x) * 3 + c];
                out->px[((size_t)y * w + x) * 3 + c] = clip8(s);
            }
    }
    free(wt);
    image_free(&mid);
}

// ---- tile sets ----------------------------------------------------------------------------------------

typedef struct {
    char **v;
    int n, cap;
} StrList;

static void sl_push(StrList *l, const char *s) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = dino_realloc(l->v, sizeof(char *) * (size_t)l->cap);
    }
    l->v[l->n++] = strdup(s);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

// Image files directly in dir (full paths), and its sub-folders (names).
static int list_dir(const char *dir, StrList *files, StrList *subdirs, char *err) {
    DIR *d = opendir(dir);
    if (!d) {
        dino_seterr(err, "%s: cannot open folder (%s)", dir, strerror(errno));
        return -1;
    }
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (is_dir(p)) {
            if (subdirs) sl_push(subdirs, e->d_name);
        } else if (is_image_name(e->d_name)) {
            sl_push(files, p);
        }
    }
    closedir(d);
    if (files->n) qsort(files->v, (size_t)files->n, sizeof(char *), cmp_str);
    if (subdirs && subdirs->n) qsort(subdirs->v, (size_t)subdirs->n, sizeof(char *), cmp_str);
    return 0;
}

static int class_id(TileSet *s, const char *name) {
    for (int c = 0; c < s->n_classes; c++)
        if (!strcmp(s->classes[c], name)) return c;
    s->classes = dino_realloc(s->classes, sizeof(char *) * (size_t)(s->n_classes + 1));
    s->classes[s->n_classes] = strdup(name);
    return s->n_classes++;
}

static void ts_add(TileSet *s, const char *path, int label, int *cap) {
    if (s->n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        s->paths = dino_realloc(s->paths, sizeof(char *) * (size_t)*cap);
        s->labels = dino_realloc(s->labels, sizeof(int) * (size_t)*cap);
    }
    s->paths[s->n] = strdup(path);
    s->labels[s->n++] = label;
}

// Sorts class names and remaps labels so that ids follow the sorted order.
static void sort_classes(TileSet *s) {
    int C = s->n_classes;
    if (C < 2) return;
    char **sorted = dino_malloc(sizeof(char *) * (size_t)C);
    memcpy(sorted, s->classes, sizeof(char *) * (size_t)C);
    qsort(sorted, (size_t)C, sizeof(char *), cmp_str);
    int *remap = dino_malloc(sizeof(int) * (size_t)C);
    for (int c = 0; c < C; c++)
        for (int k = 0; k < C; k++)
            if (sorted[k] == s->classes[c]) remap[c] = k;
    for (int i = 0; i < s->n; i++)
        if (s->labels[i] >= 0) s->labels[i] = remap[s->labels[i]];
    free(s->classes);
    s->classes = sorted;
    free(remap);
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = 0;
    return s;
}

static int open_list(TileSet *s, const char *path, int need_labels, char *err) {
    FILE *f = fopen(path, "r");
    if (!f) {
        dino_seterr(err, "%s: cannot open list (%s)", path, strerror(errno));
        return -1;
    }
    char base[4096];
    snprintf(base, sizeof base, "%s", path);
    char *slash = strrchr(base, '/');
    if (slash) slash[1] = 0;
    else base[0] = 0;
    char line[8192];
    int cap = 0, lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *l = trim(line);
        if (!*l || *l == '#') continue;
        char *comma = strchr(l, ',');
        char *label = NULL;
        if (comma) {
            *comma = 0;
            label = trim(comma + 1);
            l = trim(l);
        }
        if (lineno == 1 && label && !strcasecmp(l, "path")) continue; // header
        if (need_labels && (!label || !*label)) {
            fclose(f);
            dino_seterr(err, "%s:%d: no label (expected `path,label`)", path, lineno);
            return -1;
        }
        char full[8192];
        if (l[0] == '/') snprintf(full, sizeof full, "%s", l);
        else snprintf(full, sizeof full, "%s%s", base, l);
        ts_add(s, full, label && *label ? class_id(s, label) : -1, &cap);
    }
    fclose(f);
    return 0;
}

int tileset_open(TileSet *s, const char *spec, int need_labels, char *err) {
    memset(s, 0, sizeof *s);
    if (!strncmp(spec, "folder:", 7)) spec += 7;
    else if (!strncmp(spec, "list:", 5)) {
        if (open_list(s, spec + 5, need_labels, err)) goto fail;
        goto done;
    }
    if (is_dir(spec)) {
        StrList files = {0}, subs = {0};
        if (list_dir(spec, &files, &subs, err)) goto fail;
        int cap = 0;
        for (int i = 0; i < files.n; i++) ts_add(s, files.v[i], -1, &cap);
        if (files.n && need_labels) {
            dino_seterr(err, "%s: images directly in the folder have no class (put each class in its own sub-folder)", spec);
            goto fail_lists;
        }
        for (int k = 0; k < subs.n; k++) {
            char sub[4096];
            snprintf(sub, sizeof sub, "%s/%s", spec, subs.v[k]);
            StrList sf = {0};
            if (list_dir(sub, &sf, NULL, err)) goto fail_lists;
            int c = sf.n ? class_id(s, subs.v[k]) : -1;
            for (int i = 0; i < sf.n; i++) {
                ts_add(s, sf.v[i], c, &cap);
                free(sf.v[i]);
            }
            free(sf.v);
        }
        for (int i = 0; i < files.n; i++) free(files.v[i]);
        for (int i = 0; i < subs.n; i++) free(subs.v[i]);
        free(files.v);
        free(subs.v);
        goto done;
    fail_lists:
        for (int i = 0; i < files.n; i++) free(files.v[i]);
        for (int i = 0; i < subs.n; i++) free(subs.v[i]);
        free(files.v);
        free(subs.v);
        goto fail;
    }
    if (open_list(s, spec, need_labels, err)) goto fail;
done:
    if (s->n == 0) {
        dino_seterr(err, "%s: no images (.jpg, .jpeg, .png) found", spec);
        goto fail;
    }
    sort_classes(s);
    return 0;
fail:
    tileset_free(s);
    return -1;
}

int tileset_align_classes(TileSet *s, char **classes, int n_classes, char *err) {
    for (int i = 0; i < s->n; i++) {
        if (s->labels[i] < 0) continue;
        const char *name = s->classes[s->labels[i]];
        int k = -1;
        for (int c = 0; c < n_classes; c++)
            if (!strcmp(classes[c], name)) k = c;
        if (k < 0) {
            dino_seterr(err, "%s: class '%s' does not occur in the training set", s->paths[i], name);
            return -1;
        }
        s->labels[i] = k;
    }
    for (int c = 0; c < s->n_classes; c++) free(s->classes[c]);
    free(s->classes);
    s->classes = dino_malloc(sizeof(char *) * (size_t)n_classes);
    for (int c = 0; c < n_classes; c++) s->classes[c] = strdup(classes[c]);
    s->n_classes = n_classes;
    return 0;
}

void tileset_split(const TileSet *s, double test_fraction, uint64_t seed, TileSet *train, TileSet *test) {
    memset(train, 0, sizeof *train);
    memset(test, 0, sizeof *test);
    int cap_tr = 0, cap_te = 0;
    int *members = dino_malloc(sizeof(int) * (size_t)s->n), *perm = dino_malloc(sizeof(int) * (size_t)s->n);
    char *to_test = dino_calloc((size_t)s->n, 1);
    for (int c = -1; c < s->n_classes; c++) {
        int m = 0;
        for (int i = 0; i < s->n; i++)
            if (s->labels[i] == c) members[m++] = i;
        if (!m) continue;
        int k = (int)floor(test_fraction * m + 0.5);
        if (k == 0 && m >= 2 && test_fraction > 0) k = 1;
        if (k >= m && m >= 2) k = m - 1;
        Rng r = rng_make(seed, 0x73706c6974ULL, (uint64_t)(c + 1), 0); // "split", per class
        rng_permutation(&r, perm, m);
        for (int j = 0; j < k; j++) to_test[members[perm[j]]] = 1;
    }
    for (int i = 0; i < s->n; i++) {
        if (to_test[i]) ts_add(test, s->paths[i], s->labels[i], &cap_te);
        else ts_add(train, s->paths[i], s->labels[i], &cap_tr);
    }
    for (TileSet *t = train; t; t = t == train ? test : NULL) {
        t->n_classes = s->n_classes;
        t->classes = dino_malloc(sizeof(char *) * (size_t)(s->n_classes ? s->n_classes : 1));
        for (int c = 0; c < s->n_classes; c++) t->classes[c] = strdup(s->classes[c]);
    }
    free(members);
    free(perm);
    free(to_test);
}

void tileset_free(TileSet *s) {
    for (int i = 0; i < s->n; i++) free(s->paths[i]);
    for (int c = 0; c < s->n_classes; c++) free(s->classes[c]);
    free(s->paths);
    free(s->labels);
    free(s->classes);
    memset(s, 0, sizeof *s);
}

// ---- preprocessing ----------------------------------------------------------------------------------

void preprocess_default(Preprocess *p, int img_size) {
    p->crop = img_size;
    p->resize = (int)lround(img_size * 256.0 / 224.0);
    const float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    memcpy(p->mean, mean, sizeof mean);
    memcpy(p->std, std, sizeof std);
}

void preprocess_image(const Preprocess *p, const Image *in, float *out) {
    Image tmp = {0};
    const Image *src = in;
    if (p->resize > 0) {
        // torchvision Resize(int): the shorter side becomes `resize`, the longer int(resize*long/short)
        int w, h;
        if (in->w <= in->h) {
            w = p->resize;
            h = (int)((int64_t)p->resize * in->h / in->w);
        } else {
            h = p->resize;
            w = (int)((int64_t)p->resize * in->w / in->h);
        }
        if (w != in->w || h != in->h) {
            image_resize_bicubic(in, &tmp, w, h);
            src = &tmp;
        }
    }
    const int C = p->crop;
    // torchvision CenterCrop: offsets int(round((size - crop) / 2)) (round half to even); a smaller
    // image is padded with zeros first, centred the same way.
    int top = (int)nearbyint((src->h - C) / 2.0), left = (int)nearbyint((src->w - C) / 2.0);
    for (int c = 0; c < 3; c++) {
        const float m = p->mean[c], s = p->std[c];
        for (int y = 0; y < C; y++)
            for (int x = 0; x < C; x++) {
                int sy = y + top, sx = x + left;
                float v = (sy >= 0 && sy < src->h && sx >= 0 && sx < src->w) ? src->px[((size_t)sy * src->w + sx) * 3 + c] / 255.0f : 0.0f;
                out[((size_t)c * C + y) * C + x] = (v - m) / s;
            }
    }
    if (src == &tmp) image_free(&tmp);
}

// ---- the model -------------------------------------------------------------------------------------------

// A tiny lookup in a JSON text: the first number after "key": (0 when absent).
static int json_number(const char *text, const char *key, double *v) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(text, pat);
    if (!p) return 0;
    p += strlen(pat);
    while (isspace((unsigned char)*p)) p++;
    if (*p != ':') return 0;
    p++;
    while (isspace((unsigned char)*p)) p++;
    char *end;
    double x = strtod(p, &end);
    if (end == p) return 0;
    *v = x;
    return 1;
}

static int json_array3(const char *text, const char *key, float *v) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(text, pat);
    if (!p) return 0;
    p = strchr(p + strlen(pat), '[');
    if (!p) return 0;
    p++;
    for (int i = 0; i < 3; i++) {
        char *end;
        double x = strtod(p, &end);
        if (end == p) return 0;
        v[i] = (float)x;
        p = end;
        while (isspace((unsigned char)*p) || *p == ',') p++;
    }
    return 1;
}

static char *read_text(const char *path) {
    unsigned char *buf;
    size_t len;
    if (read_whole(path, &buf, &len, NULL)) return NULL;
    char *s = dino_malloc(len + 1);
    memcpy(s, buf, len);
    s[len] = 0;
    free(buf);
    return s;
}

int embed_model_open(EmbedModel *m, const char *path, int heads, const char *backend, char *err) {
    memset(m, 0, sizeof *m);
    char weights[4096], cfgp[4096], prep[4096];
    char *cfg_text = NULL, *pre_text = NULL;
    if (is_dir(path)) {
        snprintf(weights, sizeof weights, "%s/model.safetensors", path);
        snprintf(cfgp, sizeof cfgp, "%s/config.json", path);
        snprintf(prep, sizeof prep, "%s/preprocessor_config.json", path);
        cfg_text = read_text(cfgp);
        pre_text = read_text(prep);
    } else {
        snprintf(weights, sizeof weights, "%s", path);
    }
    double v;
    if (heads <= 0 && cfg_text && (json_number(cfg_text, "num_attention_heads", &v) || json_number(cfg_text, "num_heads", &v)))
        heads = (int)v;
    StFile f;
    if (st_open(&f, weights, err)) goto fail;
    ExportNaming naming;
    char fp[256];
    VitConfig cfg;
    int bad = export_detect(&f, weights, NULL, &naming, fp, sizeof fp, err) ||
              export_infer_config(&f, weights, naming, fp, heads, &cfg, err);
    st_close(&f);
    if (bad) goto fail;
    param_table_init(&m->tab);
    vit_build(&m->vit, &cfg, &m->tab, "");
    float *host = dino_calloc(m->tab.total, sizeof(float));
    PretrainedOptions opt = {0};
    if (pretrained_load(&m->vit, &m->tab, "", host, weights, &opt, NULL, err)) {
        free(host);
        vit_free(&m->vit);
        param_table_free(&m->tab);
        goto fail;
    }
    m->be = backend_open(backend, err);
    if (!m->be) {
        free(host);
        vit_free(&m->vit);
        param_table_free(&m->tab);
        goto fail;
    }
    m->params = m->be->alloc(m->be, sizeof(float) * m->tab.total);
    m->be->to_device(m->be, m->params, host, sizeof(float) * m->tab.total);
    free(host);
    m->owns = 1;
    preprocess_default(&m->pre, cfg.img_size);
    if (pre_text) {
        if (json_number(pre_text, "shortest_edge", &v)) m->pre.resize = (int)v;
        const char *cs = strstr(pre_text, "\"crop_size\"");
        if (cs && json_number(cs, "height", &v)) m->pre.crop = (int)v;
        json_array3(pre_text, "image_mean", m->pre.mean);
        json_array3(pre_text, "image_std", m->pre.std);
    }
    snprintf(m->source, sizeof m->source, "%s", path);
    free(cfg_text);
    free(pre_text);
    return 0;
fail:
    free(cfg_text);
    free(pre_text);
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

int embed_tileset(EmbedModel *m, const TileSet *s, FeatureKind kind, int batch, float *out, char *err) {
    const int C = m->pre.crop, D = m->vit.cfg.dim, FD = feature_dim(m, kind);
    if (batch < 1) batch = 1;
    if (batch > s->n) batch = s->n;
    if (vit_check_crop(&m->vit.cfg, C, err)) return -1;
    const size_t per = (size_t)3 * C * C;
    float *imgs = dino_calloc((size_t)batch * per, sizeof(float));
    float *cls = dino_malloc(sizeof(float) * (size_t)batch * D), *mp = dino_malloc(sizeof(float) * (size_t)batch * D);
    int rc = 0;
    for (int i0 = 0; i0 < s->n && !rc; i0 += batch) {
        int nb = s->n - i0 < batch ? s->n - i0 : batch;
        int failed = -1;
        char e2[DINO_ERRLEN] = "";
#pragma omp parallel for schedule(dynamic)
        for (int j = 0; j < nb; j++) {
            Image im;
            char e1[DINO_ERRLEN];
            if (image_load_file(s->paths[i0 + j], &im, e1)) {
#pragma omp critical
                {
                    failed = i0 + j;
                    memcpy(e2, e1, sizeof e2);
                }
                continue;
            }
            preprocess_image(&m->pre, &im, imgs + (size_t)j * per);
            image_free(&im);
        }
        if (failed >= 0) {
            dino_seterr(err, "%s", e2);
            rc = -1;
            break;
        }
        // a short last batch is padded (zeros) to keep one activation set
        if (nb < batch) memset(imgs + (size_t)nb * per, 0, sizeof(float) * (size_t)(batch - nb) * per);
        embed_batch(m, imgs, batch, cls, mp);
        for (int j = 0; j < nb; j++) {
            float *o = out + (size_t)(i0 + j) * FD;
            if (kind == FEAT_CLS) memcpy(o, cls + (size_t)j * D, sizeof(float) * D);
            else if (kind == FEAT_MEAN_PATCH) memcpy(o, mp + (size_t)j * D, sizeof(float) * D);
            else {
                memcpy(o, cls + (size_t)j * D, sizeof(float) * D);
                memcpy(o + D, mp + (size_t)j * D, sizeof(float) * D);
            }
        }
    }
    free(imgs);
    free(cls);
    free(mp);
    return rc;
}

int eval_knn_tilesets(EmbedModel *m, const char *train_spec, const char *test_spec, const int *ks, int n_k, int batch,
                      EvalScores *scores, char *err) {
    TileSet tr, te;
    if (tileset_open(&tr, train_spec, 1, err)) return -1;
    if (tileset_open(&te, test_spec, 1, err)) {
        tileset_free(&tr);
        return -1;
    }
    if (tileset_align_classes(&te, tr.classes, tr.n_classes, err)) {
        tileset_free(&tr);
        tileset_free(&te);
        return -1;
    }
    const int D = m->vit.cfg.dim;
    float *ftr = dino_malloc(sizeof(float) * (size_t)tr.n * D), *fte = dino_malloc(sizeof(float) * (size_t)te.n * D);
    int *pred = dino_malloc(sizeof(int) * (size_t)te.n);
    int rc = -1;
    if (embed_tileset(m, &tr, FEAT_CLS, batch, ftr, err) == 0 && embed_tileset(m, &te, FEAT_CLS, batch, fte, err) == 0) {
        l2_normalize_rows(ftr, tr.n, D);
        l2_normalize_rows(fte, te.n, D);
        for (int i = 0; i < n_k; i++) {
            knn_predict(ftr, tr.labels, tr.n, fte, te.n, D, tr.n_classes, ks[i], 0.07f, pred);
            eval_scores(pred, te.labels, te.n, tr.n_classes, &scores[i]);
        }
        rc = 0;
    }
    free(ftr);
    free(fte);
    free(pred);
    tileset_free(&tr);
    tileset_free(&te);
    return rc;
}

// ---- evaluation ------------------------------------------------------------------------------------------

void eval_scores(const int *pred, const int *truth, int n, int n_classes, EvalScores *out) {
    int *tot = dino_calloc((size_t)n_classes, sizeof(int)), *hit = dino_calloc((size_t)n_classes, sizeof(int));
    int right = 0;
    for (int i = 0; i < n; i++) {
        right += pred[i] == truth[i];
        if (truth[i] >= 0 && truth[i] < n_classes) {
            tot[truth[i]]++;
            hit[truth[i]] += pred[i] == truth[i];
        }
    }
    double bal = 0;
    int present = 0;
    for (int c = 0; c < n_classes; c++)
        if (tot[c]) {
            bal += (double)hit[c] / tot[c];
            present++;
        }
    out->accuracy = n ? (double)right / n : 0;
    out->balanced_accuracy = present ? bal / present : 0;
    free(tot);
    free(hit);
}

void l2_normalize_rows(float *x, int n, int D) {
    for (int i = 0; i < n; i++) {
        float *r = x + (size_t)i * D;
        double s = 0;
        for (int c = 0; c < D; c++) s += (double)r[c] * r[c];
        float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
        for (int c = 0; c < D; c++) r[c] *= inv;
    }
}

void knn_predict(const float *train, const int *ytrain, int n_train, const float *test, int n_test, int D,
                 int n_classes, int k, float T, int *pred) {
    if (k > n_train) k = n_train;
    enum { CHUNK = 256 };
    float *sim = dino_malloc(sizeof(float) * (size_t)CHUNK * n_train);
    for (int i0 = 0; i0 < n_test; i0 += CHUNK) {
        int nb = n_test - i0 < CHUNK ? n_test - i0 : CHUNK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, n_train, D, 1.0f, test + (size_t)i0 * D, D, train, D,
                    0.0f, sim, n_train);
#pragma omp parallel
        {
            float *best = dino_malloc(sizeof(float) * (size_t)k);
            int *bidx = dino_malloc(sizeof(int) * (size_t)k);
            double *votes = dino_malloc(sizeof(double) * (size_t)n_classes);
#pragma omp for
            for (int j = 0; j < nb; j++) {
                const float *s = sim + (size_t)j * n_train;
                int m = 0; // top-k by insertion (descending; ties keep the lower train index first)
                for (int t = 0; t < n_train; t++) {
                    if (m == k && s[t] <= best[k - 1]) continue;
                    int p = m < k ? m++ : k - 1;
                    while (p > 0 && best[p - 1] < s[t]) {
                        best[p] = best[p - 1];
                        bidx[p] = bidx[p - 1];
                        p--;
                    }
                    best[p] = s[t];
                    bidx[p] = t;
                }
                for (int c = 0; c < n_classes; c++) votes[c] = 0;
                for (int q = 0; q < m; q++) votes[ytrain[bidx[q]]] += exp((double)best[q] / T);
                int arg = 0;
                for (int c = 1; c < n_classes; c++)
                    if (votes[c] > votes[arg]) arg = c;
                pred[i0 + j] = arg;
            }
            free(best);
            free(bidx);
            free(votes);
        }
    }
    free(sim);
}

// ---- linear probe -----------------------------------------------------------------------------------------

typedef struct {
    const float *X; // [n, D] standardized
    const int *y;
    int n, D, C;
    double lambda;
    float *W, *Z; // scratch: W [C, D] float copy, Z [n, C] logits / probabilities
} Probe;

// f(theta) and its gradient; theta = [W (C*D) | b (C)].
static double probe_fg(Probe *p, const double *th, double *g) {
    const int n = p->n, D = p->D, C = p->C;
    for (size_t i = 0; i < (size_t)C * D; i++) p->W[i] = (float)th[i];
    const double *b = th + (size_t)C * D;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, C, D, 1.0f, p->X, D, p->W, D, 0.0f, p->Z, C);
    double f = 0;
    for (int i = 0; i < n; i++) {
        float *z = p->Z + (size_t)i * C;
        double mx = -INFINITY;
        for (int c = 0; c < C; c++) mx = fmax(mx, z[c] + b[c]);
        double se = 0;
        for (int c = 0; c < C; c++) se += exp(z[c] + b[c] - mx);
        f += mx + log(se) - (z[p->y[i]] + b[p->y[i]]);
        for (int c = 0; c < C; c++) z[c] = (float)((exp(z[c] + b[c] - mx) / se - (c == p->y[i])) / n); // dlogits
    }
    f /= n;
    // dW = dZ^T X (into W as float scratch), db = column sums of dZ
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, D, n, 1.0f, p->Z, C, p->X, D, 0.0f, p->W, D);
    double reg = 0;
    for (size_t i = 0; i < (size_t)C * D; i++) {
        g[i] = p->W[i] + p->lambda * th[i];
        reg += th[i] * th[i];
    }
    for (int c = 0; c < C; c++) {
        double s = 0;
        for (int i = 0; i < n; i++) s += p->Z[(size_t)i * C + c];
        g[(size_t)C * D + c] = s;
    }
    return f + 0.5 * p->lambda * reg;
}

static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

// Full-batch L-BFGS (two-loop recursion) with a backtracking Armijo line search.
static void lbfgs(Probe *p, double *th) {
    enum { MEM = 10, MAXIT = 300 };
    const size_t n = (size_t)p->C * p->D + p->C;
    double *g = dino_malloc(sizeof(double) * n), *d = dino_malloc(sizeof(double) * n);
    double *th2 = dino_malloc(sizeof(double) * n), *g2 = dino_malloc(sizeof(double) * n);
    double *S = dino_malloc(sizeof(double) * n * MEM), *Y = dino_malloc(sizeof(double) * n * MEM);
    double rho[MEM], alpha[MEM];
    int m = 0, head = 0;
    double f = probe_fg(p, th, g);
    for (int it = 0; it < MAXIT; it++) {
        double gmax = 0;
        for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(g[i]));
        if (gmax < 1e-6) break;
        for (size_t i = 0; i < n; i++) d[i] = -g[i];
        for (int j = 0; j < m; j++) { // newest to oldest
            int k = (head - 1 - j + MEM) % MEM;
            alpha[k] = rho[k] * dot(S + (size_t)k * n, d, n);
            for (size_t i = 0; i < n; i++) d[i] -= alpha[k] * Y[(size_t)k * n + i];
        }
        if (m) {
            int k = (head - 1 + MEM) % MEM;
            double gamma = dot(S + (size_t)k * n, Y + (size_t)k * n, n) / dot(Y + (size_t)k * n, Y + (size_t)k * n, n);
            for (size_t i = 0; i < n; i++) d[i] *= gamma;
        } else {
            double gn = sqrt(dot(g, g, n));
            for (size_t i = 0; i < n; i++) d[i] /= gn > 1 ? gn : 1;
        }
        for (int j = m - 1; j >= 0; j--) { // oldest to newest
            int k = (head - 1 - j + MEM) % MEM;
            double beta = rho[k] * dot(Y + (size_t)k * n, d, n);
            for (size_t i = 0; i < n; i++) d[i] += (alpha[k] - beta) * S[(size_t)k * n + i];
        }
        double gd = dot(g, d, n);
        if (gd >= 0) { // not a descent direction: restart from steepest descent
            for (size_t i = 0; i < n; i++) d[i] = -g[i];
            gd = -dot(g, g, n);
            m = 0;
        }
        double step = 1, f2 = f;
        int ok = 0;
        for (int ls = 0; ls < 40; ls++, step *= 0.5) {
            for (size_t i = 0; i < n; i++) th2[i] = th[i] + step * d[i];
            f2 = probe_fg(p, th2, g2);
            if (f2 <= f + 1e-4 * step * gd) {
                ok = 1;
                break;
            }
        }
        if (!ok) break;
        double *s = S + (size_t)head * n, *yv = Y + (size_t)head * n;
        for (size_t i = 0; i < n; i++) {
            s[i] = th2[i] - th[i];
            yv[i] = g2[i] - g[i];
        }
        double sy = dot(s, yv, n);
        if (sy > 1e-12) {
            rho[head] = 1.0 / sy;
            head = (head + 1) % MEM;
            if (m < MEM) m++;
        }
        memcpy(th, th2, sizeof(double) * n);
        memcpy(g, g2, sizeof(double) * n);
        double df = f - f2;
        f = f2;
        if (df < 1e-10 * fmax(1.0, fabs(f))) break;
    }
    free(g);
    free(d);
    free(th2);
    free(g2);
    free(S);
    free(Y);
}

static void probe_fit(const float *X, const int *y, int n, int D, int C, double lambda, double *th) {
    Probe p = {X, y, n, D, C, lambda, dino_malloc(sizeof(float) * (size_t)C * D), dino_malloc(sizeof(float) * (size_t)n * C)};
    memset(th, 0, sizeof(double) * ((size_t)C * D + C));
    lbfgs(&p, th);
    free(p.W);
    free(p.Z);
}

static void probe_predict(const float *X, int n, int D, int C, const double *th, int *pred) {
    for (int i = 0; i < n; i++) {
        int arg = 0;
        double best = -INFINITY;
        for (int c = 0; c < C; c++) {
            double z = th[(size_t)C * D + c];
            for (int k = 0; k < D; k++) z += th[(size_t)c * D + k] * X[(size_t)i * D + k];
            if (z > best) {
                best = z;
                arg = c;
            }
        }
        pred[i] = arg;
    }
}

static void gather_rows(float *dst, const float *src, const int *idx, int n, int D) {
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)i * D, src + (size_t)idx[i] * D, sizeof(float) * D);
}

void linear_probe(const float *train, const int *ytrain, int n_train, const float *test, int n_test, int D,
                  int n_classes, const double *lambdas, int n_lambdas, uint64_t seed, int *pred, double *chosen_lambda) {
    const int C = n_classes;
    // standardize with the training set's statistics
    double *mu = dino_calloc((size_t)D, sizeof(double)), *sd = dino_calloc((size_t)D, sizeof(double));
    for (int i = 0; i < n_train; i++)
        for (int k = 0; k < D; k++) mu[k] += train[(size_t)i * D + k];
    for (int k = 0; k < D; k++) mu[k] /= n_train;
    for (int i = 0; i < n_train; i++)
        for (int k = 0; k < D; k++) {
            double v = train[(size_t)i * D + k] - mu[k];
            sd[k] += v * v;
        }
    for (int k = 0; k < D; k++) sd[k] = sqrt(sd[k] / n_train) + 1e-6;
    float *Xtr = dino_malloc(sizeof(float) * (size_t)n_train * D), *Xte = dino_malloc(sizeof(float) * (size_t)(n_test ? n_test : 1) * D);
    for (int i = 0; i < n_train; i++)
        for (int k = 0; k < D; k++) Xtr[(size_t)i * D + k] = (float)((train[(size_t)i * D + k] - mu[k]) / sd[k]);
    for (int i = 0; i < n_test; i++)
        for (int k = 0; k < D; k++) Xte[(size_t)i * D + k] = (float)((test[(size_t)i * D + k] - mu[k]) / sd[k]);
    double *th = dino_malloc(sizeof(double) * ((size_t)C * D + C));
    double best_lambda = lambdas[0];
    if (n_lambdas > 1) {
        // held-out 20% per class for choosing lambda
        int *fit = dino_malloc(sizeof(int) * (size_t)n_train), *val = dino_malloc(sizeof(int) * (size_t)n_train);
        int nf = 0, nv = 0;
        int *members = dino_malloc(sizeof(int) * (size_t)n_train), *perm = dino_malloc(sizeof(int) * (size_t)n_train);
        for (int c = 0; c < C; c++) {
            int m = 0;
            for (int i = 0; i < n_train; i++)
                if (ytrain[i] == c) members[m++] = i;
            Rng r = rng_make(seed, 0x70726f6265ULL, (uint64_t)c, 0); // "probe"
            rng_permutation(&r, perm, m);
            int k = m >= 5 ? m / 5 : (m >= 2 ? 1 : 0);
            for (int j = 0; j < m; j++) {
                if (j < k) val[nv++] = members[perm[j]];
                else fit[nf++] = members[perm[j]];
            }
        }
        if (nv > 0) {
            float *Xf = dino_malloc(sizeof(float) * (size_t)nf * D), *Xv = dino_malloc(sizeof(float) * (size_t)nv * D);
            int *yf = dino_malloc(sizeof(int) * (size_t)nf), *yv = dino_malloc(sizeof(int) * (size_t)nv),
                *pv = dino_malloc(sizeof(int) * (size_t)nv);
            gather_rows(Xf, Xtr, fit, nf, D);
            gather_rows(Xv, Xtr, val, nv, D);
            for (int i = 0; i < nf; i++) yf[i] = ytrain[fit[i]];
            for (int i = 0; i < nv; i++) yv[i] = ytrain[val[i]];
            double best_acc = -1;
            for (int l = 0; l < n_lambdas; l++) {
                probe_fit(Xf, yf, nf, D, C, lambdas[l], th);
                probe_predict(Xv, nv, D, C, th, pv);
                EvalScores s;
                eval_scores(pv, yv, nv, C, &s);
                if (s.balanced_accuracy > best_acc) { // ties: the smaller lambda listed first wins
                    best_acc = s.balanced_accuracy;
                    best_lambda = lambdas[l];
                }
            }
            free(Xf);
            free(Xv);
            free(yf);
            free(yv);
            free(pv);
        }
        free(fit);
        free(val);
        free(members);
        free(perm);
    }
    probe_fit(Xtr, ytrain, n_train, D, C, best_lambda, th);
    probe_predict(Xte, n_test, D, C, th, pred);
    if (chosen_lambda) *chosen_lambda = best_lambda;
    free(th);
    free(Xtr);
    free(Xte);
    free(mu);
    free(sd);
}
