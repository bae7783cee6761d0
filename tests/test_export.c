// Export and use of a backbone: dinoexport's files rebuilt in PyTorch (reference ViT and, when
// installed, transformers) match dinoembed's features; import round trips in all three namings;
// shape-mismatch errors; the slide feature bag.
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>
#ifdef DINO_HAVE_HDF5
#include <hdf5.h>
#endif

#include "common/check.h"
#include "common/rng.h"
#include "common/safetensors.h"
#include "data/augment.h"
#include "data/decode.h"
#include "data/preprocess.h"
#include "data/wsi.h"
#include "model/export_names.h"
#include "model/vit.h"
#include "tests/harness.h"
#include "tests/synth_files.h"
#include "tests/tool_util.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/eval.h"
#include "train/pretrained.h"

// test command lines are built from temporary paths far shorter than their buffers
#pragma GCC diagnostic ignored "-Wformat-truncation"

// ---- helpers ------------------------------------------------------------------------------------------------

static void tiny_cfg(VitConfig *c, int R, int swiglu, int patch, int img, int depth) {
    char err[DINO_ERRLEN];
    int rc = vit_config_from_arch(c, "vit_test", patch, img, R, swiglu ? "swiglu" : "mlp", err);
    CHECK(rc == 0, "config: %s", err);
    c->depth = depth;
    c->interpolate_offset = 0.0f;
}

// Random values everywhere (not the init: LayerScale 1e-5 and zero biases would hide mistakes).
static float *random_params(const Vit *vit, const ParamTable *tab, uint64_t seed) {
    float *P = dino_calloc(tab->total, sizeof(float));
    vit_init_weights(vit, P, seed);
    for (int i = 0; i < tab->n; i++) {
        const TensorSpec *t = &tab->t[i];
        Rng r = rng_make(seed, 0x7465737400ULL, (uint64_t)i, 0);
        const int one = strstr(t->name, "norm") && strstr(t->name, "weight") ? 1 : strstr(t->name, "gamma") ? 1 : 0;
        for (size_t k = 0; k < t->numel; k++) P[t->offset + k] = (float)(one + 0.15 * rng_normal(&r));
    }
    return P;
}

// A checkpoint-like file: teacher.backbone.*, student.backbone.* (other values) and a head tensor.
static void write_checkpoint(const char *path, const VitConfig *c, uint64_t seed, float **teacher_out) {
    ParamTable tab;
    param_table_init(&tab);
    Vit t, s;
    vit_build(&t, c, &tab, "teacher.backbone.");
    vit_build(&s, c, &tab, "student.backbone.");
    float *P = random_params(&t, &tab, seed); // both backbones get random values (different tensors)
    StWriter *w = st_writer_new();
    for (int i = 0; i < tab.n; i++) st_writer_add(w, tab.t[i].name, ST_F32, tab.t[i].ndim, tab.t[i].shape, P + tab.t[i].offset);
    static float head[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    st_writer_add(w, "teacher.dino_head.last_layer.weight", ST_F32, 2, (int64_t[]){2, 4}, head);
    char heads[16];
    snprintf(heads, sizeof heads, "%d", c->heads);
    st_writer_meta(w, "student.num_heads", heads);
    char err[DINO_ERRLEN];
    CHECK(st_writer_write(w, path, err) == 0, "%s", err);
    st_writer_free(w);
    if (teacher_out) { // the teacher's values in a table of its own (prefix "")
        ParamTable t2;
        param_table_init(&t2);
        Vit v2;
        vit_build(&v2, c, &t2, "");
        float *Q = dino_calloc(t2.total, sizeof(float));
        for (int i = 0; i < t2.n; i++) {
            char n[PARAM_NAME_MAX + 32];
            snprintf(n, sizeof n, "teacher.backbone.%s", t2.t[i].name);
            const TensorSpec *src = param_find(&tab, n);
            memcpy(Q + t2.t[i].offset, P + src->offset, sizeof(float) * src->numel);
        }
        *teacher_out = Q;
        vit_free(&v2);
        param_table_free(&t2);
    }
    free(P);
    vit_free(&t);
    vit_free(&s);
    param_table_free(&tab);
}

static void write_jpeg(const char *path, const uint8_t *rgb, int w, int h) {
    tjhandle tj = tjInitCompress();
    unsigned char *buf = NULL;
    unsigned long len = 0;
    int rc = tjCompress2(tj, rgb, w, 0, h, TJPF_RGB, &buf, &len, TJSAMP_444, 95, TJFLAG_ACCURATEDCT);
    CHECK(rc == 0, "jpeg encode failed");
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(buf, 1, len, f) == len && fclose(f) == 0, "write %s", path);
    tjFree(buf);
    tjDestroy(tj);
}

// Tiles of class `cls` (0..2): a distinct texture per class plus noise.
static void texture(uint8_t *px, int w, int h, int cls, uint64_t seed) {
    Rng r = rng_make(seed, 0x74657874ULL, (uint64_t)cls, 0);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double v;
            if (cls == 0) v = ((x / 4) % 2) ? 200 : 60;                   // vertical stripes
            else if (cls == 1) v = (((x / 6) + (y / 6)) % 2) ? 220 : 40;   // checkers
            else v = 128 + 90 * sin(0.25 * (x + y)) ;                      // diagonal waves
            for (int c = 0; c < 3; c++) {
                double tint = cls == 0 ? (c == 0 ? 1.0 : 0.6) : cls == 1 ? (c == 1 ? 1.0 : 0.7) : (c == 2 ? 1.0 : 0.8);
                double val = v * tint + 25 * rng_normal(&r);
                px[((size_t)y * w + x) * 3 + c] = (uint8_t)(val < 0 ? 0 : val > 255 ? 255 : val);
            }
        }
}

// ---- parity with PyTorch -----------------------------------------------------------------------------------

TEST(export_matches_pytorch) {
    need_python_modules("torch, torchvision, PIL, numpy");
    const char *dir = test_tmpdir();
    char tiles[4200], cmd[8192], cases[8192] = "";
    snprintf(tiles, sizeof tiles, "%s/tiles", dir);
    mkdir(tiles, 0777);
    // non-square tiles larger than the crop: exercises the center crop (offsets 4 and 2)
    for (int i = 0; i < 5; i++) {
        uint8_t px[40 * 36 * 3];
        texture(px, 40, 36, i % 3, 100 + (uint64_t)i);
        char p[4300];
        snprintf(p, sizeof p, "%s/t%d.jpg", tiles, i);
        write_jpeg(p, px, 40, 36);
    }
    struct { int R, swiglu; const char *formats[3]; } CASES[] = {
        {0, 0, {"hf", "timm", "dinov2"}}, {4, 0, {"hf", "timm", "dinov2"}}, {0, 1, {"hf", NULL, NULL}}, {4, 1, {"hf", "timm", NULL}}};
    for (int c = 0; c < 4; c++) {
        VitConfig cfg;
        tiny_cfg(&cfg, CASES[c].R, CASES[c].swiglu, 8, 32, 2);
        char ck[4300];
        snprintf(ck, sizeof ck, "%s/ckpt%d.safetensors", dir, c);
        write_checkpoint(ck, &cfg, 7 + (uint64_t)c, NULL);
        for (int k = 0; k < 3 && CASES[c].formats[k]; k++) {
            const char *fmt = CASES[c].formats[k];
            snprintf(cmd, sizeof cmd,
                     "./dinoexport %s %s/exp%d_%s --format %s > /dev/null && "
                     "./dinoembed --backend cpu %s/exp%d_%s --tiles %s -o %s/f%d_%s.safetensors --resize 0 --crop 32 --batch 2 > /dev/null",
                     ck, dir, c, fmt, fmt, dir, c, fmt, tiles, dir, c, fmt);
            CHECK(run(cmd) == 0, "failed: %s", cmd);
            size_t L = strlen(cases);
            snprintf(cases + L, sizeof cases - L, " %s/exp%d_%s %s/f%d_%s.safetensors %s/f%d_%s.ids.txt", dir, c, fmt, dir,
                     c, fmt, dir, c, fmt);
        }
    }
    snprintf(cmd, sizeof cmd, "%s %s --resize 0 --crop 32%s", python(), test_src_path("tests/export_check.py"), cases);
    const char *out = capture(cmd);
    printf("%s", out);
    CHECK(strstr(out, "FAIL") == NULL && strstr(out, "transformers:") != NULL, "PyTorch comparison failed:\n%s", out);
}

// The inference preprocessing against PIL and torchvision themselves (the reference's inference transform
// runs on PIL images): the decode (data/decode.h) and the bicubic resize (the augmentation's, data/
// augment_resample.c) are PIL's exactly, and Resize -> CenterCrop -> ToTensor -> Normalize
// (data/preprocess.h) is torchvision's to the last bit.
TEST(resize_matches_pil) {
    need_python_modules("torch, torchvision, PIL, numpy");
    const char *dir = test_tmpdir();
    uint8_t px[50 * 40 * 3];
    texture(px, 50, 40, 2, 5);
    char jp[4200], raw[4200], cmd[9000];
    snprintf(jp, sizeof jp, "%s/a.jpg", dir);
    write_jpeg(jp, px, 50, 40);
    char err[DINO_ERRLEN];
    Image im;
    CHECK(decode_image_file(jp, 0, &im, err) == 0, "%s", err);
    AugmentScratch *sc = augment_scratch_new(NULL);
    const int sizes[3][2] = {{50, 40}, {37, 29}, {73, 61}}; // as decoded, down and up
    for (int k = 0; k < 3; k++) {
        Image out;
        image_alloc(&out, sizes[k][0], sizes[k][1]);
        aug_resize_bicubic_u8(im.px, im.w, im.h, im.w * 3, 0, 0, im.w, im.h, out.px, out.w, out.h, 0, sc);
        snprintf(raw, sizeof raw, "%s/r%d.raw", dir, k);
        FILE *f = fopen(raw, "wb");
        CHECK(f && fwrite(out.px, 1, (size_t)out.w * out.h * 3, f) == (size_t)out.w * out.h * 3 && fclose(f) == 0, "write");
        snprintf(cmd, sizeof cmd,
                 "%s -c \"import numpy as np; from PIL import Image; "
                 "a = np.asarray(Image.open('%s').convert('RGB').resize((%d, %d), Image.BICUBIC)).astype(int); "
                 "b = np.fromfile('%s', np.uint8).reshape(a.shape).astype(int); d = np.abs(a - b); "
                 "print('maxdiff', d.max(), 'mean', d.mean()); raise SystemExit(0 if d.max() == 0 else 1)\"",
                 python(), jp, sizes[k][0], sizes[k][1], raw);
        CHECK(run(cmd) == 0, "%dx%d differs from PIL's decode + resize", sizes[k][0], sizes[k][1]);
        image_free(&out);
    }
    augment_scratch_free(sc);
    // the whole transform, with a resize (shorter side 37) and a crop (32)
    Preprocess pre;
    preprocess_default(&pre, 32);
    CHECK(pre.resize == 37 && pre.crop == 32, "default preprocessing for 32 px: %d / %d", pre.resize, pre.crop);
    float *x = dino_malloc(sizeof(float) * 3 * 32 * 32);
    preprocess_image(&pre, &im, x);
    snprintf(raw, sizeof raw, "%s/x.f32", dir);
    FILE *f = fopen(raw, "wb");
    CHECK(f && fwrite(x, sizeof(float), 3 * 32 * 32, f) == 3 * 32 * 32 && fclose(f) == 0, "write");
    snprintf(cmd, sizeof cmd,
             "%s -c \"import numpy as np, torchvision.transforms as T; from PIL import Image; "
             "tf = T.Compose([T.Resize(37, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(), "
             "T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]); "
             "a = tf(Image.open('%s').convert('RGB')).numpy(); b = np.fromfile('%s', np.float32).reshape(a.shape); "
             "d = np.abs(a - b).max(); print('preprocess maxdiff', d); raise SystemExit(0 if d == 0 else 1)\"",
             python(), jp, raw);
    CHECK(run(cmd) == 0, "preprocess_image differs from torchvision's Resize/CenterCrop/ToTensor/Normalize");
    free(x);
    image_free(&im);
}

// ---- import round trip ---------------------------------------------------------------------------------------

static void write_named(const char *path, const Vit *vit, const ParamTable *tab, const char *prefix, const float *P,
                        ExportNaming n) {
    ExportMap map;
    export_map_build(&map, vit, tab, prefix, n);
    StWriter *w = st_writer_new();
    float **bufs = dino_calloc((size_t)map.n, sizeof(float *));
    for (int i = 0; i < map.n; i++) {
        bufs[i] = dino_malloc(sizeof(float) * map.e[i].numel);
        export_entry_gather(&map.e[i], P, bufs[i]);
        st_writer_add(w, map.e[i].name, ST_F32, map.e[i].ndim, map.e[i].shape, bufs[i]);
    }
    char err[DINO_ERRLEN];
    CHECK(st_writer_write(w, path, err) == 0, "%s", err);
    st_writer_free(w);
    for (int i = 0; i < map.n; i++) free(bufs[i]);
    free(bufs);
    export_map_free(&map);
}

TEST(import_roundtrip_all_namings) {
    const char *dir = test_tmpdir();
    for (int c = 0; c < 4; c++) {
        VitConfig cfg;
        tiny_cfg(&cfg, (c & 1) ? 4 : 0, (c & 2) ? 1 : 0, 8, 32, 2);
        ParamTable tab;
        param_table_init(&tab);
        Vit vit;
        vit_build(&vit, &cfg, &tab, "backbone.");
        // a head in the same table: loading a backbone must leave it alone
        const size_t head = param_add(&tab, "dino_head.mlp.0.weight", PARAM_DINO_HEAD, 0, 2, (int64_t[]){8, 32});
        float *P = random_params(&vit, &tab, 40 + (uint64_t)c);
        for (int n = 0; n < 3; n++) {
            char path[4200], err[DINO_ERRLEN];
            snprintf(path, sizeof path, "%s/m%d_%d.safetensors", dir, c, n);
            // the file is written from a table with prefix "backbone." (names carry no prefix)
            write_named(path, &vit, &tab, "backbone.", P, (ExportNaming)n);
            float *Q = random_params(&vit, &tab, 999);
            float head_before[8 * 32];
            memcpy(head_before, Q + head, sizeof head_before);
            ExportNaming found;
            PretrainedOptions opt = {0};
            int rc = pretrained_load(&vit, &tab, "backbone.", Q, path, &opt, &found, err);
            CHECK(rc == 0, "load %s: %s", path, err);
            CHECK(found == (ExportNaming)n, "naming detected as %s, written as %s", export_naming_name(found),
                  export_naming_name((ExportNaming)n));
            const int fold = n == NAMING_TIMM && cfg.n_registers > 0;
            for (int i = 0; i < tab.n; i++) {
                const TensorSpec *t = &tab.t[i];
                if (t->offset == head) {
                    CHECK(memcmp(Q + head, head_before, sizeof head_before) == 0, "the head was written");
                    continue;
                }
                const int is_mask = strstr(t->name, "mask_token") != NULL;
                for (size_t k = 0; k < t->numel; k++) {
                    float want = P[t->offset + k];
                    if (is_mask && n == NAMING_TIMM) want = Q[t->offset + k]; // timm has none: untouched
                    if (fold && t->offset == vit.cls) want = P[vit.cls + k] + P[vit.pos + k];
                    if (fold && t->offset == vit.pos && k < (size_t)cfg.dim) want = 0.0f;
                    if (Q[t->offset + k] != want) {
                        CHECK(0, "case %d %s: %s[%zu] = %g, expected %g", c, export_naming_name((ExportNaming)n), t->name,
                              k, (double)Q[t->offset + k], (double)want);
                        break;
                    }
                }
            }
            free(Q);
        }
        { // original names without mask_token (a stripped state dict) are still the original names
            char path[4200], err[DINO_ERRLEN];
            snprintf(path, sizeof path, "%s/m%d_nomask.safetensors", dir, c);
            ExportMap map;
            export_map_build(&map, &vit, &tab, "backbone.", NAMING_DINOV2);
            StWriter *w = st_writer_new();
            float *buf = dino_malloc(sizeof(float) * tab.total);
            size_t at = 0;
            for (int i = 0; i < map.n; i++) {
                if (!strcmp(map.e[i].name, "mask_token")) continue;
                export_entry_gather(&map.e[i], P, buf + at);
                st_writer_add(w, map.e[i].name, ST_F32, map.e[i].ndim, map.e[i].shape, buf + at);
                at += map.e[i].numel;
            }
            CHECK(st_writer_write(w, path, err) == 0, "%s", err);
            st_writer_free(w);
            float *Q = random_params(&vit, &tab, 998);
            ExportNaming found;
            CHECK(pretrained_load(&vit, &tab, "backbone.", Q, path, NULL, &found, err) == 0, "no mask_token: %s", err);
            const int orig = cfg.n_registers > 0 || cfg.ffn == VIT_FFN_SWIGLU; // else timm = original names
            CHECK(!orig || found == NAMING_DINOV2, "case %d: detected as %s", c, export_naming_name(found));
            CHECK(memcmp(Q + vit.blocks[1].fc1_w, P + vit.blocks[1].fc1_w, sizeof(float) * 4) == 0, "ffn not loaded");
            free(Q);
            free(buf);
            export_map_free(&map);
        }
        free(P);
        vit_free(&vit);
        param_table_free(&tab);
    }
}

// dinoexport picks the teacher by default and the student on request; the export loads back exactly.
TEST(dinoexport_teacher_student) {
    const char *dir = test_tmpdir();
    VitConfig cfg;
    tiny_cfg(&cfg, 4, 0, 8, 32, 2);
    char ck[4200], cmd[9000], err[DINO_ERRLEN];
    snprintf(ck, sizeof ck, "%s/ckpt.safetensors", dir);
    float *teacher;
    write_checkpoint(ck, &cfg, 3, &teacher);
    snprintf(cmd, sizeof cmd, "./dinoexport %s %s/t > /dev/null && ./dinoexport %s %s/s --student > /dev/null", ck, dir, ck, dir);
    CHECK(run(cmd) == 0, "failed: %s", cmd);
    // config.json names the registers model
    snprintf(cmd, sizeof cmd, "grep -q '\"model_type\": \"dinov2_with_registers\"' %s/t/config.json && "
             "grep -q '\"num_register_tokens\": 4' %s/t/config.json && grep -q '\"layer_norm_eps\": 1e-06' %s/t/config.json",
             dir, dir, dir);
    CHECK(run(cmd) == 0, "config.json lacks the registers model keys");
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &cfg, &tab, "");
    float *Q = dino_calloc(tab.total, sizeof(float));
    char path[4300];
    snprintf(path, sizeof path, "%s/t/model.safetensors", dir);
    CHECK(pretrained_load(&vit, &tab, "", Q, path, NULL, NULL, err) == 0, "%s", err);
    CHECK(memcmp(Q, teacher, sizeof(float) * tab.total) == 0, "teacher export does not load back to the teacher");
    snprintf(path, sizeof path, "%s/s/model.safetensors", dir);
    CHECK(pretrained_load(&vit, &tab, "", Q, path, NULL, NULL, err) == 0, "%s", err);
    CHECK(memcmp(Q, teacher, sizeof(float) * tab.total) != 0, "--student exported the teacher");
    // straight from the checkpoint: both backbones there, so the prefix must be chosen
    CHECK(pretrained_load(&vit, &tab, "", Q, ck, NULL, NULL, err) != 0 && strstr(err, "teacher.backbone.") &&
              strstr(err, "student.backbone."),
          "an ambiguous checkpoint was accepted or the message does not list the backbones: %s", err);
    PretrainedOptions opt = {.file_prefix = "teacher.backbone."};
    CHECK(pretrained_load(&vit, &tab, "", Q, ck, &opt, NULL, err) == 0, "%s", err);
    CHECK(memcmp(Q, teacher, sizeof(float) * tab.total) == 0, "teacher.backbone. prefix load differs");
    free(Q);
    free(teacher);
    vit_free(&vit);
    param_table_free(&tab);
}

// ---- refusals -------------------------------------------------------------------------------------------------

static int load_into(const VitConfig *cfg, const char *path, int resample, char *err, float **out, Vit *vit_out,
                     ParamTable *tab_out) {
    param_table_init(tab_out);
    vit_build(vit_out, cfg, tab_out, "backbone.");
    float *Q = random_params(vit_out, tab_out, 5);
    PretrainedOptions opt = {.resample_pos_embed = resample};
    int rc = pretrained_load(vit_out, tab_out, "backbone.", Q, path, &opt, NULL, err);
    *out = Q;
    return rc;
}

TEST(shape_mismatch_is_an_error) {
    const char *dir = test_tmpdir();
    VitConfig cfg;
    tiny_cfg(&cfg, 0, 0, 8, 32, 2);
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &cfg, &tab, "");
    float *P = random_params(&vit, &tab, 11);
    char path[4200], err[DINO_ERRLEN];
    snprintf(path, sizeof path, "%s/hf.safetensors", dir);
    write_named(path, &vit, &tab, "", P, NAMING_HF);

    VitConfig other;
    ParamTable t2;
    Vit v2;
    float *Q;
    // a wider MLP: names the tensor and both shapes
    other = cfg;
    other.ffn_hidden = 2 * cfg.ffn_hidden;
    CHECK(load_into(&other, path, 0, err, &Q, &v2, &t2) != 0, "a wider MLP was accepted");
    CHECK(strstr(err, "encoder.layer.0.mlp.fc1.weight") && strstr(err, "[128, 32]") && strstr(err, "[256, 32]"),
          "message does not name the tensor and both shapes: %s", err);
    free(Q), vit_free(&v2), param_table_free(&t2);
    // a shallower model: the file's extra block is refused
    other = cfg;
    other.depth = 1;
    CHECK(load_into(&other, path, 0, err, &Q, &v2, &t2) != 0 && strstr(err, "encoder.layer.1."),
          "a deeper file loaded into a shallower model: %s", err);
    free(Q), vit_free(&v2), param_table_free(&t2);
    // a deeper model: the missing block is named
    other = cfg;
    other.depth = 3;
    CHECK(load_into(&other, path, 0, err, &Q, &v2, &t2) != 0 && strstr(err, "encoder.layer.2.") && strstr(err, "missing"),
          "a missing block was not reported: %s", err);
    free(Q), vit_free(&v2), param_table_free(&t2);
    // another pos-embed grid (img 48 -> 6x6 instead of 4x4): an error unless resampling is asked for
    other = cfg;
    other.img_size = 48;
    CHECK(load_into(&other, path, 0, err, &Q, &v2, &t2) != 0 && strstr(err, "embeddings.position_embeddings") &&
              strstr(err, "[1, 17, 32]") && strstr(err, "[1, 37, 32]") && strstr(err, "resample"),
          "grid mismatch message: %s", err);
    free(Q), vit_free(&v2), param_table_free(&t2);
    CHECK(load_into(&other, path, 1, err, &Q, &v2, &t2) == 0, "resampling load failed: %s", err);
    {
        // class row kept, patch rows = bicubic W (36 x 16) times the file's rows
        float W[36 * 16];
        vit_pos_interp_matrix(W, 4, 6, 0.0f, 0);
        const float *src = P + vit.pos, *got = Q + v2.pos;
        double maxerr = 0;
        for (int c = 0; c < 32; c++) maxerr = fmax(maxerr, fabs(got[c] - src[c]));
        for (int i = 0; i < 36; i++)
            for (int c = 0; c < 32; c++) {
                double want = 0;
                for (int j = 0; j < 16; j++) want += (double)W[i * 16 + j] * src[(1 + j) * 32 + c];
                maxerr = fmax(maxerr, fabs(got[(1 + i) * 32 + c] - want));
            }
        CHECK(maxerr < 1e-5, "resampled pos_embed off by %g", maxerr);
        const TensorSpec *q = param_find(&t2, "backbone.blocks.1.attn.qkv.weight");
        const TensorSpec *p = param_find(&tab, "blocks.1.attn.qkv.weight");
        CHECK(memcmp(Q + q->offset, P + p->offset, sizeof(float) * p->numel) == 0, "qkv not loaded exactly");
    }
    free(Q), vit_free(&v2), param_table_free(&t2);
    // LayerScale values into a model without LayerScale
    other = cfg;
    other.layerscale = 0;
    CHECK(load_into(&other, path, 0, err, &Q, &v2, &t2) != 0 && strstr(err, "layer_scale1.lambda1"),
          "LayerScale values were dropped silently: %s", err);
    free(Q), vit_free(&v2), param_table_free(&t2);
    free(P);
    vit_free(&vit);
    param_table_free(&tab);
}

// The architecture read from a file's tensor shapes is backed by the file's bytes: zero-size tensors (or a
// few hundred bytes of header) cannot declare a width, a grid or a depth that the reader then allocates or
// computes with. Found while writing the fuzz harnesses, reproduced through them (tests/fuzz/regressions/
// safetensors/, export/). Before: a 267-byte file made export_infer_config overflow an int (UBSan: "46341 *
// 46341 cannot be represented in type 'int'"), and a 44 KB file made embed_model_open allocate 20 GB for a
// 400-block, width-1024 model.
TEST(inferred_architecture_is_backed_by_the_files_bytes) {
    const char *dir = test_tmpdir();
    char path[4200], err[DINO_ERRLEN];
    static uint16_t bf[4096 * 4]; // zeros, as bf16
    StFile f;
    ExportNaming naming;
    char prefix[256];
    VitConfig cfg;

    // a grid of 46341^2 patches of patch size 46341, all from zero-size tensors
    snprintf(path, sizeof path, "%s/grid.safetensors", dir);
    StWriter *w = st_writer_new();
    st_writer_add(w, "cls_token", ST_F32, 3, (int64_t[]){1, 1, 0}, NULL);
    st_writer_add(w, "pos_embed", ST_F32, 3, (int64_t[]){1, 46341LL * 46341 + 1, 0}, NULL);
    st_writer_add(w, "patch_embed.proj.weight", ST_F32, 4, (int64_t[]){0, 3, 46341, 46341}, NULL);
    CHECK(st_writer_write(w, path, err) == 0, "%s", err);
    st_writer_free(w);
    CHECK(st_open(&f, path, err) == 0, "%s", err);
    CHECK(export_detect(&f, path, NULL, &naming, prefix, sizeof prefix, err) == 0, "%s", err);
    CHECK(export_infer_config(&f, path, naming, prefix, 0, &cfg, err) == -1, "a zero-width model was inferred");
    CHECK(strstr(err, "cls_token") && strstr(err, "[1, 1, 0]"), "message: %s", err);
    st_close(&f);

    // width 1024 from real bytes, 400 blocks from zero-size norms: refused before anything is allocated
    struct rlimit guard = memory_guard_begin((int64_t)512 << 20);
    snprintf(path, sizeof path, "%s/deep", dir);
    CHECK(mkdir(path, 0755) == 0, "mkdir %s", path);
    snprintf(path, sizeof path, "%s/deep/model.safetensors", dir);
    w = st_writer_new();
    st_writer_add(w, "cls_token", ST_BF16, 3, (int64_t[]){1, 1, 1024}, bf);
    st_writer_add(w, "pos_embed", ST_BF16, 3, (int64_t[]){1, 2, 1024}, bf);
    st_writer_add(w, "patch_embed.proj.weight", ST_BF16, 4, (int64_t[]){1024, 3, 1, 1}, bf);
    st_writer_add(w, "blocks.0.mlp.fc1.weight", ST_BF16, 2, (int64_t[]){4, 1024}, bf);
    st_writer_add(w, "blocks.0.mlp.fc2.weight", ST_BF16, 2, (int64_t[]){1024, 4}, bf);
    char names[400][64];
    for (int l = 0; l < 400; l++) {
        snprintf(names[l], sizeof names[l], "blocks.%d.norm1.weight", l);
        st_writer_add(w, names[l], ST_BF16, 1, (int64_t[]){0}, NULL);
    }
    st_writer_meta(w, "num_heads", "16");
    CHECK(st_writer_write(w, path, err) == 0, "%s", err);
    st_writer_free(w);
    EmbedModel m;
    snprintf(path, sizeof path, "%s/deep", dir);
    CHECK(embed_model_open(&m, path, 0, "cpu", err) == -1, "a 400-block model opened from a 40 KB file");
    CHECK(strstr(err, "blocks.0.norm1.weight") && strstr(err, "[0]") && strstr(err, "[1024]"), "message: %s", err);
    memory_guard_end(guard);

    // every block has block 0's shapes: a narrower feed-forward layer in block 1 is named
    VitConfig c;
    tiny_cfg(&c, 0, 0, 8, 32, 2);
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &c, &tab, "");
    float *P = random_params(&vit, &tab, 3);
    snprintf(path, sizeof path, "%s/ok.safetensors", dir);
    write_named(path, &vit, &tab, "", P, NAMING_DINOV2);
    CHECK(st_open(&f, path, err) == 0, "%s", err);
    CHECK(export_detect(&f, path, NULL, &naming, prefix, sizeof prefix, err) == 0, "%s", err);
    CHECK(export_infer_config(&f, path, naming, prefix, c.heads, &cfg, err) == 0, "the real model: %s", err);
    CHECK(cfg.dim == 32 && cfg.depth == 2 && cfg.img_size == 32 && cfg.patch == 8, "inferred %d %d %d %d", cfg.dim,
          cfg.depth, cfg.img_size, cfg.patch);
    st_close(&f);
    const TensorSpec *fc1 = param_find(&tab, "blocks.1.mlp.fc1.weight");
    CHECK(fc1 != NULL, "no blocks.1.mlp.fc1.weight");
    ((TensorSpec *)fc1)->shape[0] /= 2; // the file's block 1 gets half the rows
    ((TensorSpec *)fc1)->numel /= 2;
    snprintf(path, sizeof path, "%s/narrow.safetensors", dir);
    write_named(path, &vit, &tab, "", P, NAMING_DINOV2);
    CHECK(st_open(&f, path, err) == 0, "%s", err);
    CHECK(export_detect(&f, path, NULL, &naming, prefix, sizeof prefix, err) == 0, "%s", err);
    CHECK(export_infer_config(&f, path, naming, prefix, c.heads, &cfg, err) == -1, "uneven blocks were accepted");
    CHECK(strstr(err, "blocks.1.mlp.fc1.weight") && strstr(err, "block 0"), "message: %s", err);
    st_close(&f);
    free(P);
    vit_free(&vit);
    param_table_free(&tab);
}

// ---- the slide feature bag ---------------------------------------------------------------------------------------

TEST(slide_feature_bag) {
#ifndef DINO_HAVE_HDF5
    test_skip("built without HDF5");
#else
    const char *cands[] = {"data/demo/CMU-1-Small-Region.svs", "../shared/data/wsi/CMU-1-Small-Region.svs",
                           "../../shared/data/wsi/CMU-1-Small-Region.svs", "../main/data/demo/CMU-1-Small-Region.svs"};
    const char *slide = NULL;
    for (size_t i = 0; i < sizeof cands / sizeof cands[0] && !slide; i++)
        if (access(test_src_path(cands[i]), R_OK) == 0) slide = test_src_path(cands[i]);
    if (!slide) test_skip("CMU-1-Small-Region.svs not found");
    const char *dir = test_tmpdir();
    VitConfig cfg;
    tiny_cfg(&cfg, 4, 0, 16, 224, 1);
    char ck[4200], cmd[9000], h5[4300];
    snprintf(ck, sizeof ck, "%s/ckpt.safetensors", dir);
    write_checkpoint(ck, &cfg, 21, NULL);
    snprintf(h5, sizeof h5, "%s/bag.h5", dir);
    // the export's parent folders do not exist yet: dinoexport creates them (issue #14)
    snprintf(cmd, sizeof cmd, "./dinoexport %s %s/nested/run/exp > /dev/null && ./dinoembed --backend cpu %s/nested/run/exp "
             "--slide %s --mpp 0.5 --tile 224 -o %s",
             ck, dir, dir, slide, h5);
    CHECK(run(cmd) == 0, "failed: %s", cmd);
    hid_t f = H5Fopen(h5, H5F_ACC_RDONLY, H5P_DEFAULT);
    CHECK(f >= 0, "cannot open %s", h5);
    if (f < 0) return;
    hid_t df = H5Dopen2(f, "features", H5P_DEFAULT), dc = H5Dopen2(f, "coords", H5P_DEFAULT);
    CHECK(df >= 0 && dc >= 0, "features/coords datasets missing");
    hsize_t fd[2], cd[2];
    hid_t sf = H5Dget_space(df), sc = H5Dget_space(dc);
    CHECK(H5Sget_simple_extent_ndims(sf) == 2 && H5Sget_simple_extent_ndims(sc) == 2, "ranks");
    H5Sget_simple_extent_dims(sf, fd, NULL);
    H5Sget_simple_extent_dims(sc, cd, NULL);
    CHECK(fd[0] == cd[0] && fd[0] > 10 && fd[1] == 32 && cd[1] == 2, "shapes features [%llu,%llu] coords [%llu,%llu]",
          (unsigned long long)fd[0], (unsigned long long)fd[1], (unsigned long long)cd[0], (unsigned long long)cd[1]);
    CHECK(H5Tget_class(H5Dget_type(df)) == H5T_FLOAT && H5Tget_size(H5Dget_type(df)) == 4, "features not float32");
    CHECK(H5Tget_class(H5Dget_type(dc)) == H5T_INTEGER, "coords not integers");
    int64_t *co = dino_malloc(sizeof(int64_t) * cd[0] * 2);
    float *fe = dino_malloc(sizeof(float) * fd[0] * fd[1]);
    H5Dread(dc, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, co);
    H5Dread(df, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, fe);
    int64_t ps = 0, ps0 = 0;
    hid_t a = H5Aopen(dc, "patch_size", H5P_DEFAULT);
    CHECK(a >= 0 && H5Aread(a, H5T_NATIVE_INT64, &ps) >= 0 && ps == 224, "patch_size attribute %lld", (long long)ps);
    H5Aclose(a);
    a = H5Aopen(dc, "patch_size_level0", H5P_DEFAULT);
    CHECK(a >= 0 && H5Aread(a, H5T_NATIVE_INT64, &ps0) >= 0 && ps0 == 224, "patch_size_level0 %lld (0.499 um/px slide)",
          (long long)ps0);
    H5Aclose(a);
    // the grid of dinotile: side L = 224 * 0.5 / level0_mpp, corners at llround(g * L)
    double mpp0 = 0;
    a = H5Aopen(dc, "level0_mpp", H5P_DEFAULT);
    CHECK(a >= 0 && H5Aread(a, H5T_NATIVE_DOUBLE, &mpp0) >= 0 && fabs(mpp0 - 0.499) < 1e-3, "level0_mpp %g", mpp0);
    H5Aclose(a);
    // string attributes are variable-length UTF-8 strings, as h5py (TRIDENT) writes a Python str
    const char *str_attrs[][2] = {{"coords", "name"}, {"features", "feature"}, {"/", "encoder"}};
    for (size_t k = 0; k < sizeof str_attrs / sizeof str_attrs[0]; k++) {
        hid_t o = H5Oopen(f, str_attrs[k][0], H5P_DEFAULT);
        hid_t sa = o >= 0 ? H5Aopen(o, str_attrs[k][1], H5P_DEFAULT) : -1;
        CHECK(sa >= 0, "attribute %s of %s missing", str_attrs[k][1], str_attrs[k][0]);
        if (sa < 0) continue;
        hid_t t = H5Aget_type(sa);
        CHECK(H5Tget_class(t) == H5T_STRING && H5Tis_variable_str(t) > 0 && H5Tget_cset(t) == H5T_CSET_UTF8,
              "attribute %s of %s: not a variable-length UTF-8 string", str_attrs[k][1], str_attrs[k][0]);
        char *v = NULL;
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5T_CSET_UTF8);
        CHECK(H5Aread(sa, mt, &v) >= 0 && v && v[0], "attribute %s of %s unreadable", str_attrs[k][1], str_attrs[k][0]);
        if (v) H5free_memory(v);
        H5Tclose(mt), H5Tclose(t), H5Aclose(sa), H5Oclose(o);
    }
    const double L = 224 * 0.5 / mpp0;
    for (hsize_t i = 0; i < cd[0]; i++) {
        const int64_t x = co[2 * i], y = co[2 * i + 1];
        CHECK(x == llround(llround(x / L) * L) && y == llround(llround(y / L) * L) && x + L <= 2220 + 0.5 && y + L <= 2967 + 0.5,
              "coords %lld,%lld off the grid or the slide", (long long)x, (long long)y);
        if (i) CHECK(x != co[2 * i - 2] || y != co[2 * i - 1], "duplicate coords");
    }
    // dinotile's shards of the same slide hold the same tiles (same grid and tissue rule): embedding
    // them through the shard source gives as many features, close to the bag's (JPEG q100 in between)
    snprintf(cmd, sizeof cmd, "./dinotile -o %s/shards -q 100 %s > /dev/null 2>&1 && "
             "./dinoembed --backend cpu %s/nested/run/exp --tiles %s/shards -o %s/sh.safetensors --resize 0 --crop 224 > /dev/null", dir, slide, dir,
             dir, dir);
    CHECK(run(cmd) == 0, "failed: %s", cmd);
    StFile sh;
    char shp[4300], err[DINO_ERRLEN];
    snprintf(shp, sizeof shp, "%s/sh.safetensors", dir);
    CHECK(st_open(&sh, shp, err) == 0, "%s", err);
    const StTensor *cls = st_get(&sh, "cls");
    CHECK(cls && cls->shape[0] == (int64_t)fd[0] && cls->shape[1] == 32, "shards gave %lld tiles, the bag %llu",
          cls ? (long long)cls->shape[0] : -1LL, (unsigned long long)fd[0]);
    if (cls && cls->shape[0] == (int64_t)fd[0]) {
        const float *g = cls->data;
        double num = 0, den = 0;
        for (hsize_t i = 0; i < fd[0] * fd[1]; i++) {
            num += (g[i] - fe[i]) * (double)(g[i] - fe[i]);
            den += (double)fe[i] * fe[i];
        }
        CHECK(sqrt(num / den) < 0.05, "shard features differ from the bag's: relative L2 %.3g", sqrt(num / den));
    }
    st_close(&sh);
    double spread = 0;
    for (hsize_t i = 0; i < fd[0] * fd[1]; i++) {
        CHECK(isfinite(fe[i]), "non-finite feature");
        spread += fabs(fe[i] - fe[i % fd[1]]);
    }
    CHECK(spread > 0, "every tile has the same features");
    free(co);
    free(fe);
    H5Sclose(sf), H5Sclose(sc), H5Dclose(df), H5Dclose(dc), H5Fclose(f);
#endif
}

// A run's output_dir with checkpoints (train/checkpoint.h): dinoexport takes the newest valid one,
// the teacher, and the head count from the resolved config stored in it.
TEST(dinoexport_from_training_checkpoint) {
    const char *dir = test_tmpdir();
    VitConfig cfg;
    tiny_cfg(&cfg, 0, 0, 8, 32, 2);
    cfg.heads = 4; // not the reference's count for any width: only the stored config can tell
    char run_dir[4200], cmd[9000], err[DINO_ERRLEN];
    snprintf(run_dir, sizeof run_dir, "%s/run", dir);
    mkdir(run_dir, 0777);
    Config conf;
    config_defaults(&conf);
    snprintf(conf.student.arch, sizeof conf.student.arch, "vit_small");
    conf.student.embed_dim = 32, conf.student.depth = 2, conf.student.num_heads = 4, conf.student.patch_size = 8;
    char *yaml = config_to_yaml(&conf);
    float *teacher[2];
    for (int it = 0; it < 2; it++) { // iterations 10 and 20, different weights
        char ck[4300];
        snprintf(ck, sizeof ck, "%s/tmp%d.safetensors", dir, it);
        write_checkpoint(ck, &cfg, 50 + (uint64_t)it, &teacher[it]);
        StFile f;
        CHECK(st_open(&f, ck, err) == 0, "%s", err);
        CkptWriter *w = ckpt_writer_new();
        float **copies = dino_calloc((size_t)f.n, sizeof(float *));
        for (int i = 0; i < f.n; i++) {
            copies[i] = dino_malloc(f.t[i].nbytes);
            memcpy(copies[i], f.t[i].data, f.t[i].nbytes);
            ckpt_writer_tensor(w, f.t[i].name, f.t[i].ndim, f.t[i].shape, copies[i]);
        }
        ckpt_writer_str(w, "config", yaml);
        CHECK(ckpt_save(w, run_dir, 10 * (it + 1), 3, NULL, err) == 0, "%s", err);
        ckpt_writer_free(w);
        for (int i = 0; i < f.n; i++) free(copies[i]);
        free(copies);
        st_close(&f);
    }
    free(yaml);
    snprintf(cmd, sizeof cmd, "./dinoexport %s %s/exp > /dev/null && grep -q '\"num_attention_heads\": 4' %s/exp/config.json",
             run_dir, dir, dir);
    CHECK(run(cmd) == 0, "failed: %s", cmd);
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &cfg, &tab, "");
    float *Q = dino_calloc(tab.total, sizeof(float));
    char path[4300];
    snprintf(path, sizeof path, "%s/exp/model.safetensors", dir);
    CHECK(pretrained_load(&vit, &tab, "", Q, path, NULL, NULL, err) == 0, "%s", err);
    CHECK(memcmp(Q, teacher[1], sizeof(float) * tab.total) == 0, "not the newest checkpoint's teacher");
    // damage the newest checkpoint: the previous one is exported (and the damage reported)
    snprintf(cmd, sizeof cmd, "printf 'XXXX' | dd of=%s/checkpoints/ckpt_000000020/tensors.safetensors bs=1 seek=2000 conv=notrunc 2>/dev/null && "
             "./dinoexport %s %s/exp2 > %s/log 2>&1 && grep -q 'not valid' %s/log", run_dir, run_dir, dir, dir, dir);
    CHECK(run(cmd) == 0, "damaged checkpoint not reported: %s", cmd);
    snprintf(path, sizeof path, "%s/exp2/model.safetensors", dir);
    CHECK(pretrained_load(&vit, &tab, "", Q, path, NULL, NULL, err) == 0, "%s", err);
    CHECK(memcmp(Q, teacher[0], sizeof(float) * tab.total) == 0, "fallback did not export the older teacher");
    free(Q), free(teacher[0]), free(teacher[1]);
    vit_free(&vit);
    param_table_free(&tab);
}

// The proof: a tiny model actually trained by dinotrain (configs/demo.yaml, shortened) on the
// bundled slide's tiles, exported, and rebuilt in PyTorch from the exported files, matches dinoembed's
// features (at 112 px, the training size, and at 224 px, where every implementation interpolates the
// position embeddings the same way).
TEST(trained_demo_model_matches_pytorch) {
    need_python_modules("torch, torchvision, PIL, numpy");
    const char *slide = test_src_path("data/demo/CMU-1-Small-Region.svs");
    if (access(slide, R_OK) != 0 || access("./dinotrain", X_OK) != 0) test_skip("no demo slide or no dinotrain");
    const char *dir = test_tmpdir();
    char cmd[16384], tiles[4200];
    snprintf(tiles, sizeof tiles, "%s/tiles", dir);
    mkdir(tiles, 0777);
    // a few real tiles as JPEG files for the Python side (tissue tiles of the slide, 224 px at 0.5 um/px)
    Wsi *w = NULL;
    {
        char err[DINO_ERRLEN];
        w = wsi_open(slide, 0, err);
        CHECK(w != NULL, "%s", err);
        if (!w) return;
        const int64_t xy[4][2] = {{900, 900}, {1122, 1347}, {1347, 1571}, {673, 2020}};
        for (int i = 0; i < 4; i++) {
            Image t;
            CHECK(wsi_read_tile(w, xy[i][0], xy[i][1], 0.5, 224, &t, NULL, err) == 0, "%s", err);
            char p[4300];
            snprintf(p, sizeof p, "%s/t%d.jpg", tiles, i);
            write_jpeg(p, t.px, t.w, t.h);
            image_free(&t);
        }
        wsi_close(w);
    }
    snprintf(cmd, sizeof cmd,
             "./dinotile -o %s/shards %s > /dev/null 2>&1 && "
             "./dinotrain %s train.output_dir=%s/run 'data.sources=[%s/shards]' optim.epochs=1 "
             "train.OFFICIAL_EPOCH_LENGTH=8 checkpoint.every_n_iterations=8 > %s/train.log 2>&1 && "
             "./dinoexport %s/run %s/export > /dev/null 2>&1 && "
             "./dinoembed --backend cpu %s/export --tiles %s -o %s/f112.safetensors --resize 0 --crop 112 > /dev/null && "
             "./dinoembed --backend cpu %s/export --tiles %s -o %s/f224.safetensors --resize 0 --crop 224 > /dev/null",
             dir, slide, test_src_path("configs/demo.yaml"), dir, dir, dir, dir, dir, dir, tiles, dir, dir, tiles, dir);
    CHECK(run(cmd) == 0, "failed: %s (see %s/train.log)", cmd, dir);
    snprintf(cmd, sizeof cmd, "%s %s --resize 0 --crop 112 %s/export %s/f112.safetensors %s/f112.ids.txt "
             "--crop 224 %s/export %s/f224.safetensors %s/f224.ids.txt",
             python(), test_src_path("tests/export_check.py"), dir, dir, dir, dir, dir, dir);
    const char *out = capture(cmd);
    printf("%s", out);
    CHECK(strstr(out, "FAIL") == NULL && strstr(out, "ok") != NULL && strstr(out, "timm:") != NULL,
          "PyTorch comparison of the trained model failed:\n%s", out);
}
