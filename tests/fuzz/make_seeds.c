// Writes the seed corpora of the fuzz harnesses: fuzz_seeds OUT_DIR DINOEXPORT_PROGRAM
//   OUT_DIR/<name>/<seed>  for name in decode shard safetensors checkpoint config export
// from the fixtures (tests/fixtures/, configs/), the test helpers' files (tests/synth_files.h: synthetic
// tiles, crafted headers of huge images) and the library's own writers (shards, safetensors, checkpoints,
// dinoexport's three formats). Multi-file inputs are joined with FUZZ_SEP as the harness expects
// (tests/fuzz/fuzz.h). The ctest case fuzz.seeds runs it before the fuzzers and the replays.
#include <dirent.h>
#include <math.h>
#include <png.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <tiffio.h>

#include "common/check.h"
#include "tests/tiff_layouts.h"
#include "common/fs.h"
#include "common/rng.h"
#include "common/text.h"
#include "common/safetensors.h"
#include "data/shard.h"
#include "model/params.h"
#include "model/vit.h"
#include "tests/fuzz/fuzz.h"
#include "tests/synth_files.h"
#include "train/checkpoint.h"
#include "train/config.h"

// paths here are short temporary ones, far from their buffers' sizes
#pragma GCC diagnostic ignored "-Wformat-truncation"

// tests/synth_files.h's helpers report through the test harness; here a failure ends the program.
const char *test_src_path(const char *rel) {
    static char buf[4][4096];
    static int k;
    const char *root = getenv("DINO_SOURCE_DIR");
    char *out = buf[k++ % 4];
    snprintf(out, 4096, "%s/%s", root ? root : DINO_SOURCE_DIR, rel);
    return out;
}
void test_fail_at(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz_seeds: %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static const char *out_root;
static int n_seeds;

static void mkdirs(const char *p) {
    char err[DINO_ERRLEN];
    if (dino_mkdir_p(p, err)) test_fail_at(__FILE__, __LINE__, "%s", err);
}

// Seed `name` of harness `h`: the concatenation of parts (NULL-terminated list of buffer, length pairs).
typedef struct { const void *p; size_t n; } Part;
static void seed_parts(const char *h, const char *name, const Part *parts, int n) {
    char dir[4096], path[4300];
    snprintf(dir, sizeof dir, "%s/%s", out_root, h);
    mkdirs(dir);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot create %s", path);
    for (int i = 0; i < n; i++) {
        if (i) fwrite(FUZZ_SEP, 1, FUZZ_SEP_LEN, f);
        if (parts[i].n) fwrite(parts[i].p, 1, parts[i].n, f);
    }
    CHECK(fclose(f) == 0, "cannot write %s", path);
    n_seeds++;
}
static void seed(const char *h, const char *name, const void *p, size_t n) { seed_parts(h, name, &(Part){p, n}, 1); }

static uint8_t *slurp(const char *path, size_t *n) {
    uint8_t *b;
    char err[DINO_ERRLEN];
    CHECK(read_file_bytes(path, &b, n, err) == 0, "%s", err);
    return b;
}
static void seed_file(const char *h, const char *name, const char *path) {
    size_t n;
    uint8_t *b = slurp(path, &n);
    seed(h, name, b, n);
    free(b);
}

// ---- images ------------------------------------------------------------------------------------------
static uint8_t *png_of(const Image *im, png_uint_32 format, size_t *n) {
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    pi.width = (png_uint_32)im->w;
    pi.height = (png_uint_32)im->h;
    pi.format = format;
    png_alloc_size_t len = 0;
    CHECK(png_image_write_to_memory(&pi, NULL, &len, 0, im->px, 0, NULL), "png size");
    uint8_t *b = dino_malloc(len);
    CHECK(png_image_write_to_memory(&pi, b, &len, 0, im->px, 0, NULL), "png write");
    *n = len;
    return b;
}

// A TIFF of im in one of the decoder's layouts (tests/tiff_layouts.h), as a seed.
static void tiff_seed(const char *name, const Image *im, int tiled, int planar, int spp, int compression,
                      int orientation, const char *tmp) {
    write_tiff_layout(tmp, im, tiled, spp, planar, orientation, compression);
    seed_file("decode", name, tmp);
}

static void decode_seeds(const char *tmpdir) {
    Image im;
    size_t n;
    uint8_t *b;
    char err[DINO_ERRLEN], tmp[4200];
    synth_tile(3, 1, 4, 24, &im);
    CHECK(encode_jpeg(&im, 90, &b, &n, err) == 0, "%s", err);
    seed("decode", "synth_24.jpg", b, n);
    free(b);
    CHECK(encode_jpeg(&im, 20, &b, &n, err) == 0, "%s", err);
    seed("decode", "synth_24_q20.jpg", b, n);
    free(b);
    b = png_of(&im, PNG_FORMAT_RGB, &n);
    seed("decode", "synth_24.png", b, n);
    free(b);
    image_free(&im);
    synth_tile(3, 2, 4, 8, &im);
    b = png_of(&im, PNG_FORMAT_GA, &n); // the RGB bytes read as grey + alpha pairs: some transparency
    seed("decode", "grey_alpha_8.png", b, n);
    free(b);
    snprintf(tmp, sizeof tmp, "%s/t.tif", tmpdir);
    tiff_seed("strips_lzw.tif", &im, 0, PLANARCONFIG_CONTIG, 3, COMPRESSION_LZW, ORIENTATION_TOPLEFT, tmp);
    tiff_seed("strips_bottom_up_grey.tif", &im, 0, PLANARCONFIG_CONTIG, 1, COMPRESSION_NONE, ORIENTATION_BOTLEFT, tmp);
    image_free(&im);
    synth_tile(3, 3, 4, 20, &im);
    tiff_seed("tiles_separate_alpha.tif", &im, 1, PLANARCONFIG_SEPARATE, 4, COMPRESSION_PACKBITS, ORIENTATION_TOPRIGHT,
              tmp);
    tiff_seed("tiles_deflate.tif", &im, 1, PLANARCONFIG_CONTIG, 3, COMPRESSION_ADOBE_DEFLATE, ORIENTATION_TOPLEFT, tmp);
    image_free(&im);
    // the crafted headers of the hardening tests (docs/status.md): small and huge declared sizes
    uint8_t buf[512];
    seed("decode", "crafted_8x8.tif", buf, craft_tiff_header(buf, 200, 8, 8));
    seed("decode", "crafted_huge.tif", buf, craft_tiff_header(buf, 483, 8204, 65288));
    seed("decode", "crafted_8x8.png", buf, craft_png_header(buf, 8, 8));
    seed("decode", "crafted_huge.png", buf, craft_png_header(buf, 60000, 60000));
    b = craft_jpeg_declaring(60000, 60000, &n);
    seed("decode", "crafted_huge.jpg", b, n);
    seed("decode", "cut_200.jpg", b, 200);
    free(b);
}

// ---- shards --------------------------------------------------------------------------------------------
static void shard_seed(const char *name, int count, const char *tmpdir) {
    char path[4200], err[DINO_ERRLEN];
    snprintf(path, sizeof path, "%s/s.dtshard", tmpdir);
    ShardWriter *w = shard_writer_open(path, err);
    CHECK(w != NULL, "%s", err);
    for (int i = 0; i < count; i++) {
        Image im;
        synth_tile(11, i, 4, 8, &im);
        uint8_t *jpg;
        size_t n;
        CHECK(encode_jpeg(&im, 80, &jpg, &n, err) == 0, "%s", err);
        image_free(&im);
        const char *slide = i == 1 ? "" : i == 2 ? "TCGA-\xc3\xa9/slide 2.svs" : "slide-1";
        ShardTileMeta m = {.slide = slide, .slide_len = (uint32_t)strlen(slide), .x = 224 * i, .y = -3 + i,
                           .level = i, .mpp = 0.5f * (float)i, .w = 8, .h = 8};
        CHECK(shard_writer_add(w, &m, jpg, i == 2 ? 0 : n, err) == 0, "%s", err); // record 2: empty payload
        free(jpg);
    }
    CHECK(shard_writer_finish(w, err) == 0, "%s", err);
    seed_file("shard", name, path);
}

// ---- safetensors -----------------------------------------------------------------------------------------
static void safetensors_seeds(const char *tmpdir) {
    static const char *fixtures[] = {"objective_centering", "objective_sinkhorn", "vit_aa_offset0",
                                     "vit_mlp_reg4_droppath", "vit_pos_interp", "vit_swiglu"};
    char name[256], path[4200], err[DINO_ERRLEN];
    for (size_t i = 0; i < sizeof fixtures / sizeof *fixtures; i++) {
        snprintf(name, sizeof name, "fixture_%s.safetensors", fixtures[i]);
        snprintf(path, sizeof path, "tests/fixtures/%s.safetensors", fixtures[i]);
        seed_file("safetensors", name, test_src_path(path));
    }
    // every dtype, a scalar, an empty tensor, metadata and names that need escapes
    static uint8_t bytes[256];
    for (int i = 0; i < 256; i++) bytes[i] = (uint8_t)(i * 37);
    StWriter *w = st_writer_new();
    st_writer_add(w, "f32", ST_F32, 2, (int64_t[]){2, 3}, bytes);
    st_writer_add(w, "f16", ST_F16, 1, (int64_t[]){5}, bytes);
    st_writer_add(w, "bf16", ST_BF16, 3, (int64_t[]){1, 2, 2}, bytes);
    st_writer_add(w, "f64", ST_F64, 1, (int64_t[]){3}, bytes);
    st_writer_add(w, "i64", ST_I64, 1, (int64_t[]){2}, bytes);
    st_writer_add(w, "i32", ST_I32, 0, NULL, bytes);
    st_writer_add(w, "u8", ST_U8, 2, (int64_t[]){4, 4}, bytes);
    st_writer_add(w, "bool", ST_BOOL, 1, (int64_t[]){3}, bytes);
    st_writer_add(w, "empty", ST_F32, 2, (int64_t[]){0, 7}, NULL);
    st_writer_add(w, "quote\"back\\slash\ttab \xc3\xa9", ST_F32, 1, (int64_t[]){1}, bytes);
    st_writer_meta(w, "format", "pt");
    st_writer_meta(w, "text", "line 1\nline \"2\"\x01");
    snprintf(path, sizeof path, "%s/t.safetensors", tmpdir);
    CHECK(st_writer_write(w, path, err) == 0, "%s", err);
    st_writer_free(w);
    seed_file("safetensors", "dtypes.safetensors", path);
    w = st_writer_new();
    snprintf(path, sizeof path, "%s/e.safetensors", tmpdir);
    CHECK(st_writer_write(w, path, err) == 0, "%s", err);
    st_writer_free(w);
    seed_file("safetensors", "no_tensors.safetensors", path);
}

// ---- checkpoints ---------------------------------------------------------------------------------------
static void checkpoint_seed(const char *name, int with_tensors, const char *tmpdir) {
    static float a[6] = {1, -2, 3.5f, 0, 1e-30f, 7}, b[1] = {42};
    char dir[4200], path[4400], err[DINO_ERRLEN];
    snprintf(dir, sizeof dir, "%s/run_%s", tmpdir, name);
    CkptWriter *w = ckpt_writer_new();
    if (with_tensors) {
        ckpt_writer_tensor(w, "student.backbone.cls_token", 3, (int64_t[]){1, 1, 6}, a);
        ckpt_writer_tensor(w, "dino_center", 1, (int64_t[]){1}, b);
        ckpt_writer_tensor(w, "scalar", 0, NULL, b);
        ckpt_writer_tensor(w, "empty", 2, (int64_t[]){0, 3}, NULL);
    }
    ckpt_writer_int(w, "iteration", 7);
    ckpt_writer_int(w, "adamw.step", 7);
    ckpt_writer_int(w, "loader.position", -9223372036854775807LL - 1);
    ckpt_writer_int(w, "rng.step", (int64_t)0xfedcba9876543210ULL);
    ckpt_writer_float(w, "loss", 0.1);
    ckpt_writer_float(w, "nan", NAN);
    ckpt_writer_float(w, "inf", -INFINITY);
    ckpt_writer_str(w, "config", "student:\n  arch: vit_test\n  patch_size: 4\ncrops:\n  global_crops_size: 16\n");
    ckpt_writer_str(w, "escapes", "tab\t quote\" backslash\\ \x01 \xc3\xa9");
    char final[4096];
    CHECK(ckpt_save(w, dir, 7, 1, final, err) == 0, "%s", err);
    ckpt_writer_free(w);
    size_t ns, nt;
    snprintf(path, sizeof path, "%s/state.json", final);
    uint8_t *s = slurp(path, &ns);
    snprintf(path, sizeof path, "%s/tensors.safetensors", final);
    uint8_t *t = slurp(path, &nt);
    seed_parts("checkpoint", name, (Part[]){{s, ns}, {t, nt}}, 2);
    free(s);
    free(t);
}

// ---- configs ---------------------------------------------------------------------------------------------
static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void config_seeds(void) {
    // every shipped config; one on a base (`base: x.yaml`) as config.yaml + base.yaml, the base renamed
    char dir[4200], path[4400];
    snprintf(dir, sizeof dir, "%s", test_src_path("configs"));
    DIR *d = opendir(dir);
    CHECK(d != NULL, "cannot list %s", dir);
    char *names[256];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256) {
        size_t len = strlen(e->d_name);
        if (len > 5 && !strcmp(e->d_name + len - 5, ".yaml")) names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_names);
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        size_t len;
        uint8_t *c = slurp(path, &len);
        char *text = dino_malloc(len + 1);
        memcpy(text, c, len);
        text[len] = 0;
        char *at = !strncmp(text, "base:", 5) ? text : strstr(text, "\nbase:");
        if (!at) {
            seed("config", names[i], text, len);
        } else {
            at += *at == '\n';
            char base[256] = "";
            sscanf(at, "base: %255s", base);
            snprintf(path, sizeof path, "%s/%s", dir, base);
            size_t nb;
            uint8_t *b = slurp(path, &nb);
            char *eol = strchr(at, '\n');
            Text t;
            text_init(&t, len + 64);
            text_printf(&t, "%.*sbase: base.yaml%s", (int)(at - text), text, eol ? eol : "");
            seed_parts("config", names[i], (Part[]){{t.s, t.n}, {b, nb}}, 2);
            text_free(&t);
            free(b);
        }
        free(text);
        free(c);
        free(names[i]);
    }
    // overrides
    const char *o1 = "train.batch_size_per_gpu=4", *o2 = "data.sources=[/tiles/a,list:/b.txt]", *o3 = "student.arch=vit_small",
               *o4 = "optim.base_lr=1e-3";
    size_t nd;
    uint8_t *dm = slurp(test_src_path("configs/demo.yaml"), &nd);
    seed_parts("config", "demo_with_overrides.yaml",
               (Part[]){{dm, nd}, {"", 0}, {o1, strlen(o1)}, {o2, strlen(o2)}, {o3, strlen(o3)}, {o4, strlen(o4)}}, 6);
    free(dm);
    // every key with its default, as the resolved config a run writes
    Config cfg;
    config_defaults(&cfg);
    char *y = config_to_yaml(&cfg);
    seed("config", "defaults_resolved.yaml", y, strlen(y));
    free(y);
}

// ---- exports ----------------------------------------------------------------------------------------------
// Small teacher backbones (DINOv2 and DINOv3 ViTs) in checkpoint-like files, exported by dinoexport in each
// format.
static void export_seeds(const char *dinoexport, const char *tmpdir) {
    char err[DINO_ERRLEN], path[4200], cmd[13000];
    static const char *fixtures[] = {"vit_aa_offset0", "vit_mlp_reg4_droppath", "vit_swiglu"};
    for (size_t i = 0; i < sizeof fixtures / sizeof *fixtures; i++) {
        // the reference ViT's weights of the fixture (its gradients, "grad.*", would be a second backbone)
        snprintf(path, sizeof path, "tests/fixtures/%s.safetensors", fixtures[i]);
        StFile f;
        CHECK(st_open(&f, test_src_path(path), err) == 0, "%s", err);
        StWriter *w = st_writer_new();
        for (int k = 0; k < f.n; k++)
            if (strncmp(f.t[k].name, "grad.", 5))
                st_writer_add(w, f.t[k].name, f.t[k].dtype, f.t[k].ndim, f.t[k].shape, f.t[k].data);
        for (int k = 0; k < f.n_meta; k++) st_writer_meta(w, f.meta_keys[k], f.meta_vals[k]);
        snprintf(path, sizeof path, "%s/fixture.safetensors", tmpdir);
        CHECK(st_writer_write(w, path, err) == 0, "%s", err);
        st_writer_free(w);
        st_close(&f);
        char name[256];
        snprintf(name, sizeof name, "fixture_%s", fixtures[i]);
        seed_file("export", name, path);
    }
    // DINOv2 ViTs, and DINOv3 ViTs (RoPE, storage tokens, masked k bias: hf and the official names only)
    static const struct { int R; const char *ffn; int rope; } models[] = {
        {4, "mlp", 0}, {0, "swiglu", 0}, {4, "mlp", 1}, {0, "swiglu32", 1}};
    for (int mi = 0; mi < 4; mi++) {
        VitConfig c;
        CHECK(vit_config_from_arch(&c, "vit_test", 4, 16, models[mi].R, models[mi].rope ? "mlp" : models[mi].ffn, err) == 0,
              "%s", err);
        if (models[mi].rope) {
            CHECK(vit_ffn_width(models[mi].ffn, c.dim, 4.0, &c.ffn, &c.ffn_hidden, err) == 0, "%s", err);
            c.rope = 1;
            c.rope_cfg = (RopeConfig){.base = 100.0};
            c.ln_eps = 1e-5f;
            c.mask_k_bias = 1;
            c.untie_global_and_local_cls_norm = models[mi].R > 0;
            CHECK(vit_config_check(&c, err) == 0, "%s", err);
        }
        ParamTable tab;
        param_table_init(&tab);
        Vit vit;
        vit_build(&vit, &c, &tab, "teacher.backbone.");
        float *P = dino_calloc(tab.total, sizeof(float));
        vit_init_weights(&vit, P, 5);
        StWriter *w = st_writer_new();
        for (int i = 0; i < tab.n; i++) st_writer_add(w, tab.t[i].name, ST_F32, tab.t[i].ndim, tab.t[i].shape, P + tab.t[i].offset);
        char heads[16];
        snprintf(heads, sizeof heads, "%d", c.heads);
        st_writer_meta(w, "student.num_heads", heads);
        if (models[mi].rope) { // what a DINOv3 file's shapes do not show (the image size: small, so the harness embeds)
            st_writer_meta(w, "mask_k_bias", "true");
            st_writer_meta(w, "image_size", "16");
        }
        char src[4200];
        snprintf(src, sizeof src, "%s/teacher_%d.safetensors", tmpdir, mi);
        CHECK(st_writer_write(w, src, err) == 0, "%s", err);
        st_writer_free(w);
        free(P);
        vit_free(&vit);
        param_table_free(&tab);
        static const char *formats[] = {"hf", "timm", "dinov2"};
        for (int f = 0; f < 3; f++) {
            if (models[mi].rope && f == 1) continue; // no timm names for DINOv3
            char out[4300];
            snprintf(out, sizeof out, "%s/export_%d_%s", tmpdir, mi, formats[f]);
            snprintf(cmd, sizeof cmd, "'%s' --format %s --out '%s' '%s' > '%s.log' 2>&1", dinoexport, formats[f], out, src,
                     out);
            CHECK(system(cmd) == 0, "failed: %s (see %s.log)", cmd, out);
            Part parts[3];
            int n = 0;
            static const char *names[] = {"model.safetensors", "config.json", "preprocessor_config.json"};
            uint8_t *bufs[3] = {0};
            for (int k = 0; k < 3; k++) {
                snprintf(path, sizeof path, "%s/%s", out, names[k]);
                if (access(path, R_OK) != 0) break;
                bufs[k] = slurp(path, &parts[k].n);
                parts[k].p = bufs[k];
                n++;
            }
            char name[256];
            snprintf(name, sizeof name, "%s%s_%s_reg%d", formats[f], models[mi].rope ? "_v3" : "", models[mi].ffn,
                     models[mi].R);
            seed_parts("export", name, parts, n);
            seed("safetensors", name, parts[0].p, parts[0].n); // the weights alone
            for (int k = 0; k < 3; k++) free(bufs[k]);
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: fuzz_seeds OUT_DIR DINOEXPORT_PROGRAM\n");
        return 2;
    }
    out_root = argv[1];
    mkdirs(out_root);
    static const char *harnesses[] = {"decode", "shard", "safetensors", "checkpoint", "config", "export"};
    for (size_t i = 0; i < sizeof harnesses / sizeof *harnesses; i++) { // no seeds left from an older tree
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/%s", out_root, harnesses[i]);
        fuzz_rm_tree(dir);
    }
    char tmpdir[4200];
    snprintf(tmpdir, sizeof tmpdir, "%s/.tmp", out_root);
    fuzz_rm_tree(tmpdir);
    mkdirs(tmpdir);
    decode_seeds(tmpdir);
    shard_seed("empty.dtshard", 0, tmpdir);
    shard_seed("one.dtshard", 1, tmpdir);
    shard_seed("three.dtshard", 3, tmpdir);
    safetensors_seeds(tmpdir);
    checkpoint_seed("with_tensors", 1, tmpdir);
    checkpoint_seed("values_only", 0, tmpdir);
    config_seeds();
    export_seeds(argv[2], tmpdir);
    fuzz_rm_tree(tmpdir);
    printf("fuzz_seeds: %d seeds in %s\n", n_seeds, out_root);
    return 0;
}
