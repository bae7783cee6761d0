// The DINOv3 ViT's export (model/export_dinov3.h, train/export_dir.h): the Hugging Face and official
// names checked against transformers' conversion rules and the DINOv3ViTModel transcription
// (tests/export_v3_check.py), the written config.json, and reading the files back (architecture
// inferred, weights scattered back bit for bit, refusals).
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "common/check.h"
#include "common/json.h"
#include "common/rng.h"
#include "common/safetensors.h"
#include "model/backend.h"
#include "model/export_dinov3.h"
#include "model/export_names.h"
#include "model/params.h"
#include "model/vit.h"
#include "tests/harness.h"
#include "tests/tool_util.h"
#include "train/export_dir.h"
#include "train/pretrained.h"

#pragma GCC diagnostic ignored "-Wformat-truncation"

// ---- helpers ------------------------------------------------------------------------------------------------

// A tiny DINOv3: width 32, 4 heads (head width 8), 2 blocks, patch 8.
static Dinov3Arch tiny(int R, int swiglu, int fused, int mask_k, int layerscale) {
    Dinov3Arch a = {.dim = 32, .depth = 2, .heads = 4, .patch = 8, .img_size = 32, .n_storage = R, .swiglu = swiglu,
                    .ffn_hidden = swiglu ? 24 : 64, .swiglu_fused = fused, .rope = {.base = 100.0}, .ln_eps = 1e-5,
                    .qkv_bias = 1, .mask_k_bias = mask_k, .proj_bias = 1, .ffn_bias = 1, .layerscale = layerscale,
                    .local_cls_norm = 1};
    return a;
}

// Our parameter table for a, under the official dinov3 state-dict names (what model/vit.c registers).
static void v3_table(ParamTable *tab, const Dinov3Arch *a, const char *prefix) {
    const int64_t D = a->dim, H = a->ffn_hidden, p = a->patch;
    char n[PARAM_NAME_MAX];
#define ADD(name, nd, ...)                                                                                       \
    (snprintf(n, sizeof n, "%s%s", prefix, name), param_add(tab, n, PARAM_BACKBONE, 0, nd, (int64_t[]){__VA_ARGS__}))
    ADD("cls_token", 3, 1, 1, D);
    if (a->n_storage) ADD("storage_tokens", 3, 1, a->n_storage, D);
    ADD("mask_token", 2, 1, D);
    ADD("patch_embed.proj.weight", 4, D, 3, p, p);
    ADD("patch_embed.proj.bias", 1, D);
    for (int l = 0; l < a->depth; l++) {
        char b[PARAM_NAME_MAX];
#define BLK(s, nd, ...) (snprintf(b, sizeof b, "blocks.%d.%s", l, s), ADD(b, nd, __VA_ARGS__))
        BLK("norm1.weight", 1, D);
        BLK("norm1.bias", 1, D);
        BLK("attn.qkv.weight", 2, 3 * D, D);
        BLK("attn.qkv.bias", 1, 3 * D);
        BLK("attn.proj.weight", 2, D, D);
        BLK("attn.proj.bias", 1, D);
        if (a->layerscale) BLK("ls1.gamma", 1, D);
        BLK("norm2.weight", 1, D);
        BLK("norm2.bias", 1, D);
        if (!a->swiglu) {
            BLK("mlp.fc1.weight", 2, H, D);
            BLK("mlp.fc1.bias", 1, H);
            BLK("mlp.fc2.weight", 2, D, H);
            BLK("mlp.fc2.bias", 1, D);
        } else {
            if (a->swiglu_fused) {
                BLK("mlp.w12.weight", 2, 2 * H, D);
                BLK("mlp.w12.bias", 1, 2 * H);
            } else {
                BLK("mlp.w1.weight", 2, H, D);
                BLK("mlp.w1.bias", 1, H);
                BLK("mlp.w2.weight", 2, H, D);
                BLK("mlp.w2.bias", 1, H);
            }
            BLK("mlp.w3.weight", 2, D, H);
            BLK("mlp.w3.bias", 1, D);
        }
        if (a->layerscale) BLK("ls2.gamma", 1, D);
#undef BLK
    }
    ADD("norm.weight", 1, D);
    ADD("norm.bias", 1, D);
    if (a->local_cls_norm) {
        ADD("local_cls_norm.weight", 1, D);
        ADD("local_cls_norm.bias", 1, D);
    }
#undef ADD
}

static float *random_values(const ParamTable *tab, uint64_t seed) {
    float *P = dino_calloc(tab->total, sizeof(float));
    for (int i = 0; i < tab->n; i++) {
        const TensorSpec *t = &tab->t[i];
        Rng r = rng_make(seed, 0x76337400ULL, (uint64_t)i, 0);
        for (size_t k = 0; k < t->numel; k++) P[t->offset + k] = (float)(0.3 * rng_normal(&r));
    }
    return P;
}

static void write_table(const char *path, const ParamTable *tab, const float *P) {
    StWriter *w = st_writer_new();
    for (int i = 0; i < tab->n; i++)
        st_writer_add(w, tab->t[i].name, ST_F32, tab->t[i].ndim, tab->t[i].shape, P + tab->t[i].offset);
    char err[DINO_ERRLEN];
    CHECK(st_writer_write(w, path, err) == 0, "%s", err);
    st_writer_free(w);
}

// The variants every test runs: MLP + 4 storage tokens + masked k bias; SwiGLU (w1/w2) without storage
// tokens and with a k bias in use; fused SwiGLU (w12) without LayerScale.
enum { NV = 3 };
static Dinov3Arch variant(int v) {
    if (v == 0) return tiny(4, 0, 0, 1, 1);
    if (v == 1) return tiny(0, 1, 0, 0, 1);
    return tiny(4, 1, 1, 1, 0);
}

static int same_arch(const Dinov3Arch *x, const Dinov3Arch *y, char *what, size_t n) {
#define F(f) if (x->f != y->f) { snprintf(what, n, #f ": %g vs %g", (double)x->f, (double)y->f); return 0; }
    F(dim) F(depth) F(heads) F(patch) F(img_size) F(n_storage) F(swiglu) F(ffn_hidden)
    F(rope.base) F(rope.min_period) F(rope.max_period) F(rope.normalize)
    F(rope.shift) F(rope.jitter) F(rope.rescale) F(ln_eps)
    F(qkv_bias) F(mask_k_bias) F(proj_bias) F(ffn_bias) F(layerscale) F(untie_cls_norm)
#undef F
    return 1;
}

// ---- names against transformers' rules --------------------------------------------------------------------

TEST(dinov3_names_match_transformers) {
    need_python_modules("torch, numpy");
    const char *dir = test_tmpdir();
    static char py[32768]; // every check in one Python process (torch imports once)
    snprintf(py, sizeof py, "%s %s", python(), test_src_path("tests/export_v3_check.py"));
    for (int v = 0; v < NV; v++) {
        Dinov3Arch a = variant(v);
        ParamTable tab;
        param_table_init(&tab);
        v3_table(&tab, &a, "");
        float *P = random_values(&tab, 11 + (uint64_t)v);
        char ours[4200], orig[4200], hf[4200], err[DINO_ERRLEN];
        snprintf(ours, sizeof ours, "%s/ours%d.safetensors", dir, v);
        snprintf(orig, sizeof orig, "%s/orig%d", dir, v);
        snprintf(hf, sizeof hf, "%s/hf%d/sub", dir, v); // parents are created
        write_table(ours, &tab, P);
        int n_orig = 0, n_hf = 0;
        CHECK(export_write_dinov3(orig, &a, &tab, "", P, NAMING_DINOV2, "test", &n_orig, err) == 0, "%s", err);
        CHECK(export_write_dinov3(hf, &a, &tab, "", P, NAMING_HF, "test", &n_hf, err) == 0, "%s", err);
        // official: every table tensor (w12 as two), periods, the bias masks, ones for absent LayerScale
        int want_orig = tab.n + 1 + (a.mask_k_bias ? a.depth : 0) + (a.swiglu_fused ? 2 * a.depth : 0) +
                        (a.layerscale ? 0 : 2 * a.depth);
        CHECK(n_orig == want_orig, "variant %d: %d official tensors, expected %d", v, n_orig, want_orig);
        size_t L = strlen(py);
        snprintf(py + L, sizeof py - L, " names %s %s %s +", ours, orig, hf);
        free(P);
        param_table_free(&tab);
    }
    // RoPE periods from min/max and coordinates normalised by max(H, W): official names only
    Dinov3Arch a = variant(0);
    a.rope = (RopeConfig){.min_period = 0.5, .max_period = 40.0, .normalize = ROPE_NORMALIZE_MAX, .rescale = 2.0};
    ParamTable tab;
    param_table_init(&tab);
    v3_table(&tab, &a, "");
    float *P = random_values(&tab, 17);
    char ours[4200], orig[4200], hf[4200], err[DINO_ERRLEN];
    snprintf(ours, sizeof ours, "%s/ours_mm.safetensors", dir);
    snprintf(orig, sizeof orig, "%s/orig_mm", dir);
    snprintf(hf, sizeof hf, "%s/hf_mm", dir);
    write_table(ours, &tab, P);
    CHECK(export_write_dinov3(orig, &a, &tab, "", P, NAMING_DINOV2, "test", NULL, err) == 0, "%s", err);
    CHECK(export_write_dinov3(hf, &a, &tab, "", P, NAMING_HF, "test", NULL, err) != 0 && strstr(err, "min/max periods") &&
              strstr(err, "--format dinov2"), "HF with min/max periods: %s", err);
    size_t L = strlen(py);
    snprintf(py + L, sizeof py - L, " names %s %s - 2>&1", ours, orig);
    const char *out = capture(py);
    printf("%s", out);
    int n_ok = 0;
    for (const char *q = out; (q = strstr(q, "names ok")); q++) n_ok++;
    CHECK(n_ok == NV + 1 && !strstr(out, "FAIL"), "%d of %d name checks passed:\n%s", n_ok, NV + 1, out);
    // read back with its config.json: the same RoPE
    char p[4300], cp[4300], what[128];
    snprintf(p, sizeof p, "%s/model.safetensors", orig);
    snprintf(cp, sizeof cp, "%s/config.json", orig);
    StFile f;
    CHECK(st_open(&f, p, err) == 0, "%s", err);
    json_object *cfg = json_parse_file(cp, 1 << 20, err);
    CHECK(cfg != NULL, "%s", err);
    Dinov3Arch b;
    CHECK(export_infer_dinov3(&f, p, NAMING_DINOV2, "", 0, cfg, cp, &b, err) == 0, "%s", err);
    b.local_cls_norm = a.local_cls_norm;
    CHECK(same_arch(&a, &b, what, sizeof what), "min/max periods read back: %s", what);
    json_object_put(cfg);
    st_close(&f);
    free(P);
    param_table_free(&tab);
}

// The transcription of transformers' DINOv3ViTModel and its conversion rules against the independent
// transcription of the official model (tests/torch_ref/dinov3_vit.py): the reference the other tests trust.
TEST(dinov3_transcription_self_check) {
    need_python_modules("torch, numpy");
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "%s %s --self-check 2>&1", python(), test_src_path("tests/torch_ref/hf_dinov3_vit.py"));
    const char *out = capture(cmd);
    printf("%s", out);
    int n_ok = 0;
    for (const char *q = out; (q = strstr(q, " ok\n")); q++) n_ok++;
    CHECK(n_ok == 2 && !strstr(out, "FAIL"), "self-check:\n%s", out);
}

// ---- config.json ------------------------------------------------------------------------------------------

static json_object *parse(const char *path) {
    char err[DINO_ERRLEN];
    json_object *j = json_parse_file(path, 1 << 20, err);
    CHECK(j != NULL, "%s", err);
    return j;
}

static void want_int(json_object *j, const char *key, int64_t v) {
    int64_t got = -12345;
    char err[DINO_ERRLEN];
    CHECK(json_get_int(j, key, INT64_MIN, INT64_MAX, &got, "config", err) == 0 && got == v, "%s: %lld, expected %lld",
          key, (long long)got, (long long)v);
}

static void want_bool(json_object *j, const char *key, int v) {
    int got = -1;
    char err[DINO_ERRLEN];
    CHECK(json_get_bool(j, key, &got, "config", err) == 0 && got == v, "%s: %d, expected %d", key, got, v);
}

static void want_str(json_object *j, const char *key, const char *v) {
    const char *got = NULL;
    char err[DINO_ERRLEN];
    CHECK(json_get_string(j, key, &got, "config", err) == 0 && !strcmp(got, v), "%s: %s, expected %s", key,
          got ? got : "(absent)", v);
}

static void want_num(json_object *j, const char *key, double v) {
    double got = NAN;
    char err[DINO_ERRLEN];
    CHECK(json_get_number(j, key, -1e300, 1e300, &got, "config", err) == 0 && got == v, "%s: %.17g, expected %.17g",
          key, got, v);
}

TEST(dinov3_hf_config_json) {
    const char *dir = test_tmpdir();
    char err[DINO_ERRLEN], d[4200], p[4300];
    for (int v = 0; v < NV; v++) {
        Dinov3Arch a = variant(v);
        a.rope.base = 250.5;
        a.rope.rescale = 2.0;
        a.rope.jitter = 1.5;
        a.ln_eps = 1e-6;
        a.img_size = 48;
        ParamTable tab;
        param_table_init(&tab);
        v3_table(&tab, &a, "backbone.");
        float *P = random_values(&tab, 3);
        snprintf(d, sizeof d, "%s/cfg%d", dir, v);
        CHECK(export_write_dinov3(d, &a, &tab, "backbone.", P, NAMING_HF, NULL, NULL, err) == 0, "%s", err);
        snprintf(p, sizeof p, "%s/config.json", d);
        json_object *j = parse(p);
        want_str(j, "model_type", "dinov3_vit");
        CHECK(json_object_array_length(json_find(j, "architectures")) == 1 &&
                  !strcmp(json_as_string(json_object_array_get_idx(json_find(j, "architectures"), 0)), "DINOv3ViTModel"),
              "architectures");
        want_int(j, "hidden_size", 32);
        want_int(j, "num_hidden_layers", 2);
        want_int(j, "num_attention_heads", 4);
        want_int(j, "intermediate_size", a.ffn_hidden);
        want_int(j, "patch_size", 8);
        want_int(j, "image_size", 48);
        want_int(j, "num_register_tokens", a.n_storage);
        want_int(j, "num_channels", 3);
        want_bool(j, "use_gated_mlp", a.swiglu);
        want_str(j, "hidden_act", a.swiglu ? "silu" : "gelu");
        want_bool(j, "query_bias", 1);
        want_bool(j, "key_bias", !a.mask_k_bias);
        want_bool(j, "value_bias", 1);
        want_bool(j, "proj_bias", 1);
        want_bool(j, "mlp_bias", 1);
        want_num(j, "rope_theta", 250.5);
        want_num(j, "layer_norm_eps", 1e-6);
        want_num(j, "layerscale_value", 1.0);
        want_num(j, "pos_embed_rescale", 2.0);
        want_num(j, "pos_embed_jitter", 1.5);
        CHECK(json_find(j, "pos_embed_shift") == NULL, "pos_embed_shift is not null");
        json_object_put(j);
        snprintf(p, sizeof p, "%s/preprocessor_config.json", d);
        j = parse(p);
        want_str(j, "image_processor_type", "BitImageProcessor");
        want_int(j, "size.shortest_edge", 55); // 48 * 256 / 224 = 54.9
        want_int(j, "crop_size.height", 48);
        want_int(j, "crop_size.width", 48);
        want_int(j, "resample", 3);
        json_object_put(j);
        free(P);
        param_table_free(&tab);
    }
    // what transformers cannot express is refused before anything is written
    Dinov3Arch a = variant(0);
    a.untie_cls_norm = 1;
    ParamTable tab;
    param_table_init(&tab);
    v3_table(&tab, &a, "");
    float *P = random_values(&tab, 3);
    snprintf(d, sizeof d, "%s/untied", dir);
    CHECK(export_write_dinov3(d, &a, &tab, "", P, NAMING_HF, NULL, NULL, err) != 0 && strstr(err, "cls_norm") &&
              strstr(err, "--format dinov2"), "untied cls norm: %s", err);
    struct stat st;
    CHECK(stat(d, &st) != 0, "%s was created", d);
    a = variant(0);
    a.heads = 3; // 32 / 3
    CHECK(export_write_dinov3(d, &a, &tab, "", P, NAMING_HF, NULL, NULL, err) != 0 && strstr(err, "heads"), "heads: %s",
          err);
    a = variant(0);
    CHECK(export_write_dinov3(d, &a, &tab, "", P, NAMING_TIMM, NULL, NULL, err) != 0 && strstr(err, "timm"), "timm: %s",
          err);
    free(P);
    param_table_free(&tab);
}

// ---- reading the exports back -----------------------------------------------------------------------------

TEST(dinov3_import_roundtrip) {
    const char *dir = test_tmpdir();
    char err[DINO_ERRLEN], d[4200], p[4300], cp[4300], what[128];
    for (int v = 0; v < NV; v++) {
        for (int hf = 0; hf < 2; hf++) {
            Dinov3Arch a = variant(v);
            a.rope.base = 1000.0; // not the default: must come back from the config, the metadata or the periods
            a.img_size = 64;
            ParamTable tab;
            param_table_init(&tab);
            v3_table(&tab, &a, "");
            float *P = random_values(&tab, 21 + (uint64_t)v);
            const ExportNaming naming = hf ? NAMING_HF : NAMING_DINOV2;
            snprintf(d, sizeof d, "%s/rt%d_%d", dir, v, hf);
            CHECK(export_write_dinov3(d, &a, &tab, "", P, naming, NULL, NULL, err) == 0, "%s", err);
            snprintf(p, sizeof p, "%s/model.safetensors", d);
            snprintf(cp, sizeof cp, "%s/config.json", d);
            StFile f;
            CHECK(st_open(&f, p, err) == 0, "%s", err);
            ExportNaming got;
            char fp[256];
            CHECK(export_detect(&f, p, NULL, &got, fp, sizeof fp, err) == 0 && got == naming && !strcmp(fp, ""),
                  "detect %d %d: %s", v, hf, err);
            CHECK(export_is_dinov3(&f, fp, got), "not seen as DINOv3");
            // with config.json, and from the file alone (metadata; official names: the periods too)
            json_object *cfg = parse(cp);
            for (int with_cfg = 0; with_cfg < 2; with_cfg++) {
                Dinov3Arch b;
                CHECK(export_infer_dinov3(&f, p, got, fp, 0, with_cfg ? cfg : NULL, cp, &b, err) == 0, "infer: %s", err);
                b.swiglu_fused = a.swiglu_fused; // the official names never hold w12: the target table decides
                b.local_cls_norm = a.local_cls_norm;
                Dinov3Arch want = a;
                want.layerscale = 1; // a model without LayerScale exports gammas of ones: read back as LayerScale
                CHECK(same_arch(&want, &b, what, sizeof what), "variant %d %s, config %d: %s", v, hf ? "hf" : "official",
                      with_cfg, what);
            }
            json_object_put(cfg);
            // the weights scatter back bit for bit (a masked k bias is not in HF files: it stays 0)
            ExportMap map;
            export_map_build_dinov3(&map, &a, &tab, "", naming);
            float *Q = dino_calloc(tab.total, sizeof(float));
            for (int i = 0; i < map.n; i++) {
                const StTensor *t = st_get(&f, map.e[i].name);
                CHECK(t && t->ndim == map.e[i].ndim, "%s missing", map.e[i].name);
                float *buf = dino_malloc(sizeof(float) * (map.e[i].numel + 1));
                CHECK(export_read_f32(t, buf, err) == 0, "%s", err);
                CHECK(export_entry_scatter(&map.e[i], buf, Q, err) == 0, "%s", err);
                free(buf);
            }
            for (int i = 0; i < tab.n; i++) {
                const TensorSpec *t = &tab.t[i];
                for (size_t k = 0; k < t->numel; k++) {
                    float want = P[t->offset + k];
                    const int k_row = k >= (size_t)a.dim && k < 2 * (size_t)a.dim;
                    if (hf && a.mask_k_bias && strstr(t->name, "attn.qkv.bias") && k_row)
                        want = 0;
                    if (hf && !strncmp(t->name, "local_cls_norm.", 15)) want = 0; // training only: not in HF files
                    CHECK(Q[t->offset + k] == want, "%s[%zu]: %g after the round trip, %g before", t->name, k,
                          (double)Q[t->offset + k], (double)want);
                    if (Q[t->offset + k] != want) break;
                }
            }
            // a model with another RoPE base refuses the official periods
            if (!hf) {
                Dinov3Arch c = a;
                c.rope.base = 100.0;
                ExportMap m2;
                export_map_build_dinov3(&m2, &c, &tab, "", naming);
                const ExportEntry *e = export_map_find(&m2, "rope_embed.periods");
                CHECK(e && e->xf == XF_PERIODS, "no periods entry");
                float buf[64];
                CHECK(export_read_f32(st_get(&f, "rope_embed.periods"), buf, err) == 0, "%s", err);
                CHECK(export_entry_scatter(e, buf, Q, err) != 0 && strstr(err, "rope_theta"), "periods: %s", err);
                export_map_free(&m2);
            }
            free(Q);
            export_map_free(&map);
            st_close(&f);
            free(P);
            param_table_free(&tab);
        }
    }
}

// A DINOv2 file is not DINOv3; broken DINOv3 files are refused with the tensor or the key named.
TEST(dinov3_refusals) {
    const char *dir = test_tmpdir();
    char err[DINO_ERRLEN], p[4300];
    // DINOv2 names (pos_embed) are not DINOv3
    snprintf(p, sizeof p, "%s/v2.safetensors", dir);
    {
        StWriter *w = st_writer_new();
        static float z[4 * 3 * 2 * 2 + 5 * 4];
        st_writer_add(w, "patch_embed.proj.weight", ST_F32, 4, (int64_t[]){4, 3, 2, 2}, z);
        st_writer_add(w, "pos_embed", ST_F32, 3, (int64_t[]){1, 5, 4}, z);
        CHECK(st_writer_write(w, p, err) == 0, "%s", err);
        st_writer_free(w);
        StFile f;
        CHECK(st_open(&f, p, err) == 0, "%s", err);
        CHECK(!export_is_dinov3(&f, "", NAMING_DINOV2), "a DINOv2 file seen as DINOv3");
        st_close(&f);
    }
    Dinov3Arch a = variant(0);
    ParamTable tab;
    param_table_init(&tab);
    v3_table(&tab, &a, "");
    float *P = random_values(&tab, 5);
    char d[4200], cp[4300];
    snprintf(d, sizeof d, "%s/good", dir);
    CHECK(export_write_dinov3(d, &a, &tab, "", P, NAMING_HF, NULL, NULL, err) == 0, "%s", err);
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    snprintf(cp, sizeof cp, "%s/config.json", d);
    StFile f;
    CHECK(st_open(&f, p, err) == 0, "%s", err);
    Dinov3Arch b;
    // key_bias true, but the file has no k_proj.bias
    const char *k1 = "{\"key_bias\": true, \"num_attention_heads\": 4}";
    json_object *cfg = json_parse(k1, strlen(k1), "cfg.json", err);
    CHECK(cfg != NULL, "%s", err);
    CHECK(export_infer_dinov3(&f, p, NAMING_HF, "", 0, cfg, "cfg.json", &b, err) != 0 && strstr(err, "key_bias") &&
              strstr(err, "cfg.json"), "key_bias: %s", err);
    json_object_put(cfg);
    // a bad value of a key names the file and the key
    const char *k2 = "{\"rope_theta\": -3}";
    cfg = json_parse(k2, strlen(k2), "cfg.json", err);
    CHECK(export_infer_dinov3(&f, p, NAMING_HF, "", 0, cfg, "cfg.json", &b, err) != 0 && strstr(err, "rope_theta") &&
              strstr(err, "cfg.json"), "rope_theta: %s", err);
    json_object_put(cfg);
    // timm names are not offered for DINOv3
    CHECK(export_infer_dinov3(&f, p, NAMING_TIMM, "", 0, NULL, NULL, &b, err) != 0 && strstr(err, "timm"), "timm: %s", err);
    st_close(&f);
    // a block whose feed-forward width differs from block 0's
    snprintf(p, sizeof p, "%s/bad.safetensors", dir);
    {
        StFile g;
        char gp[4300];
        snprintf(gp, sizeof gp, "%s/model.safetensors", d);
        CHECK(st_open(&g, gp, err) == 0, "%s", err);
        StWriter *w = st_writer_new();
        static float big[64 * 64];
        for (int i = 0; i < g.n; i++) {
            if (!strcmp(g.t[i].name, "layer.1.mlp.down_proj.weight"))
                st_writer_add(w, g.t[i].name, ST_F32, 2, (int64_t[]){32, 48}, big);
            else
                st_writer_add(w, g.t[i].name, g.t[i].dtype, g.t[i].ndim, g.t[i].shape, g.t[i].data);
        }
        CHECK(st_writer_write(w, p, err) == 0, "%s", err);
        st_writer_free(w);
        st_close(&g);
    }
    CHECK(st_open(&f, p, err) == 0, "%s", err);
    CHECK(export_infer_dinov3(&f, p, NAMING_HF, "", 4, NULL, NULL, &b, err) != 0 &&
              strstr(err, "layer.1.mlp.down_proj.weight") && strstr(err, "block 0"), "block shapes: %s", err);
    st_close(&f);
    free(P);
    param_table_free(&tab);
}

// ---- the real DINOv3 ViT: C forward and dinoembed against the transcription -----------------------------

// A tiny DINOv3 ViT config (model/vit.c): width 32, 4 heads, 2 blocks, patch 8, image 32.
static VitConfig v3_vit(int R, const char *ffn_layer, int mask_k, int layerscale, int untie_cls, double base) {
    VitConfig c;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&c, "vit_test", 8, 32, R, "mlp", err) == 0, "%s", err);
    c.dim = 32, c.heads = 4, c.depth = 2;
    CHECK(vit_ffn_width(ffn_layer, c.dim, 4.0, &c.ffn, &c.ffn_hidden, err) == 0, "%s", err);
    c.layerscale = layerscale ? 1e-5f : 0.0f;
    c.ln_eps = 1e-5f;
    c.rope = 1;
    c.rope_cfg = (RopeConfig){.base = base, .rescale = 2.0};
    c.mask_k_bias = mask_k;
    c.untie_cls_and_patch_norms = untie_cls;
    c.untie_global_and_local_cls_norm = 1;
    CHECK(vit_config_check(&c, err) == 0, "%s", err);
    return c;
}

static void write_jpeg(const char *path, const uint8_t *rgb, int w, int h) {
    tjhandle tj = tjInitCompress();
    unsigned char *buf = NULL;
    unsigned long len = 0;
    CHECK(tjCompress2(tj, rgb, w, 0, h, TJPF_RGB, &buf, &len, TJSAMP_444, 95, TJFLAG_ACCURATEDCT) == 0, "jpeg");
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(buf, 1, len, f) == len && fclose(f) == 0, "write %s", path);
    tjFree(buf);
    tjDestroy(tj);
}

// A checkpoint-like file: teacher.backbone.* (P) and student.backbone.* (other values), with the
// metadata dinoexport reads for what the shapes do not show.
static void write_v3_checkpoint(const char *path, const VitConfig *c, const ParamTable *tab, const float *P) {
    StWriter *w = st_writer_new();
    char n[PARAM_NAME_MAX + 32];
    float *S = dino_malloc(sizeof(float) * tab->total);
    for (size_t i = 0; i < tab->total; i++) S[i] = -P[i];
    static char names[2][512][PARAM_NAME_MAX + 32];
    CHECK(tab->n <= 512, "table too large");
    for (int i = 0; i < tab->n; i++) {
        snprintf(names[0][i], sizeof n, "teacher.backbone.%s", tab->t[i].name);
        snprintf(names[1][i], sizeof n, "student.backbone.%s", tab->t[i].name);
        st_writer_add(w, names[0][i], ST_F32, tab->t[i].ndim, tab->t[i].shape, P + tab->t[i].offset);
        st_writer_add(w, names[1][i], ST_F32, tab->t[i].ndim, tab->t[i].shape, S + tab->t[i].offset);
    }
    char v[64];
    snprintf(v, sizeof v, "%d", c->heads);
    st_writer_meta(w, "num_attention_heads", v);
    snprintf(v, sizeof v, "%.17g", c->rope_cfg.base);
    st_writer_meta(w, "rope_theta", v);
    snprintf(v, sizeof v, "%.9g", (double)c->ln_eps);
    st_writer_meta(w, "layer_norm_eps", v);
    snprintf(v, sizeof v, "%d", c->img_size);
    st_writer_meta(w, "image_size", v);
    st_writer_meta(w, "mask_k_bias", c->mask_k_bias ? "true" : "false");
    char err[DINO_ERRLEN];
    CHECK(st_writer_write(w, path, err) == 0, "%s", err);
    st_writer_free(w);
    free(S);
}

// The C forward's final-norm tokens of B random images of side S, with the images, for the checker.
static void write_forward_io(const char *path, const Vit *vit, const float *P, size_t total, int B, int S, uint64_t seed) {
    Backend *be = backend_cpu_new();
    const size_t ni = (size_t)B * 3 * S * S;
    float *img = dino_malloc(sizeof(float) * ni);
    Rng r = rng_make(seed, 0x696d67ULL, 0, 0);
    for (size_t i = 0; i < ni; i++) img[i] = (float)rng_normal(&r);
    float *dP = be->alloc(be, sizeof(float) * total), *dI = be->alloc(be, sizeof(float) * ni);
    be->to_device(be, dP, P, sizeof(float) * total);
    be->to_device(be, dI, img, sizeof(float) * ni);
    VitActs *a = vit_acts_new(be, vit, B, S, VIT_ACTS_FORWARD_ONLY);
    const int T = vit_acts_tokens(a), D = vit->cfg.dim;
    const float *xn = vit_forward(be, vit, dP, a, dI, NULL, NULL);
    float *x = dino_malloc(sizeof(float) * (size_t)B * T * D);
    be->to_host(be, x, xn, sizeof(float) * (size_t)B * T * D);
    StWriter *w = st_writer_new();
    st_writer_add(w, "images", ST_F32, 4, (int64_t[]){B, 3, S, S}, img);
    st_writer_add(w, "x_norm", ST_F32, 3, (int64_t[]){B, T, D}, x);
    char err[DINO_ERRLEN];
    CHECK(st_writer_write(w, path, err) == 0, "%s", err);
    st_writer_free(w);
    vit_acts_free(be, a);
    be->release(be, dP);
    be->release(be, dI);
    backend_free(be);
    free(img);
    free(x);
}

// dinoexport of a DINOv3 checkpoint-like file (both namings), the C forward vs the DINOv3ViTModel
// transcription on the HF export (last_hidden_state, pooler_output), and dinoembed on tiles from both
// exports vs the transcription; the two exports give dinoembed the same features.
TEST(dinov3_export_matches_transcription) {
    need_python_modules("torch, numpy");
    const char *dir = test_tmpdir();
    char tiles[4200], cmd[16384], py[16384], err[DINO_ERRLEN];
    snprintf(tiles, sizeof tiles, "%s/tiles", dir);
    mkdir(tiles, 0777);
    snprintf(cmd, sizeof cmd, "%s/labeled", dir);
    mkdir(cmd, 0777);
    for (int i = 0; i < 4; i++) { // 40x36 tiles, center-cropped to 32
        uint8_t px[40 * 36 * 3];
        Rng r = rng_make(99, (uint64_t)i, 0, 0);
        for (int k = 0; k < 40 * 36 * 3; k++) {
            double v = 128 + 60 * sin(0.3 * (k / 3 % 40) + i) + 30 * rng_normal(&r);
            px[k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
        char p[4300];
        snprintf(p, sizeof p, "%s/t%d.jpg", tiles, i);
        write_jpeg(p, px, 40, 36);
        snprintf(p, sizeof p, "%s/labeled/c%d", dir, i % 2); // the same tiles as a labelled set for dinoeval
        mkdir(p, 0777);
        snprintf(p + strlen(p), sizeof p - strlen(p), "/t%d.jpg", i);
        write_jpeg(p, px, 40, 36);
    }
    // MLP + 4 storage tokens + masked k bias; SwiGLU (swiglu32), no storage tokens, k bias in use, no LayerScale,
    // another RoPE base
    const VitConfig cfgs[2] = {v3_vit(4, "mlp", 1, 1, 0, 100.0), v3_vit(0, "swiglu32", 0, 0, 0, 37.5)};
    snprintf(py, sizeof py, "%s %s", python(), test_src_path("tests/export_v3_check.py"));
    for (int v = 0; v < 2; v++) {
        ParamTable tab;
        param_table_init(&tab);
        Vit vit;
        vit_build(&vit, &cfgs[v], &tab, "");
        float *P = random_values(&tab, 31 + (uint64_t)v);
        for (int i = 0; i < tab.n; i++) // norms and gammas around 1 (random ones would wash the signal out)
            if (strstr(tab.t[i].name, "norm") && strstr(tab.t[i].name, "weight"))
                for (size_t k = 0; k < tab.t[i].numel; k++) P[tab.t[i].offset + k] += 1.0f;
        char ck[4300], io[4300];
        snprintf(ck, sizeof ck, "%s/ck%d.safetensors", dir, v);
        snprintf(io, sizeof io, "%s/io%d.safetensors", dir, v);
        write_v3_checkpoint(ck, &cfgs[v], &tab, P);
        write_forward_io(io, &vit, P, tab.total, 2, 32, 5 + (uint64_t)v);
        for (int k = 0; k < 2; k++) {
            const char *fmt = k ? "dinov2" : "hf";
            snprintf(cmd, sizeof cmd,
                     "./dinoexport %s %s/v3_%d_%s --format %s > /dev/null && "
                     "./dinoembed --backend cpu %s/v3_%d_%s --tiles %s -o %s/f%d_%s.safetensors --resize 0 --crop 32 "
                     "--batch 3 > /dev/null",
                     ck, dir, v, fmt, fmt, dir, v, fmt, tiles, dir, v, fmt);
            CHECK(run(cmd) == 0, "failed: %s", cmd);
        }
        size_t L = strlen(py);
        snprintf(py + L, sizeof py - L,
                 "%s forward %s/v3_%d_hf %s + embed --crop 32 %s/v3_%d_hf %s/f%d_hf.safetensors %s/f%d_hf.ids.txt",
                 v ? " +" : "", dir, v, io, dir, v, dir, v, dir, v);
        // re-exported from the HF export directory (its config.json read back) into the official names
        snprintf(cmd, sizeof cmd,
                 "./dinoexport %s/v3_%d_hf %s/v3_%d_re --format dinov2 > /dev/null && "
                 "./dinoembed --backend cpu %s/v3_%d_re --tiles %s -o %s/f%d_re.safetensors --resize 0 --crop 32 "
                 "--batch 3 > /dev/null",
                 dir, v, dir, v, dir, v, tiles, dir, v);
        CHECK(run(cmd) == 0, "failed: %s", cmd);
        // the official-names exports give dinoembed the same features
        char fa[4300], fb[4300];
        snprintf(fa, sizeof fa, "%s/f%d_hf.safetensors", dir, v);
        snprintf(fb, sizeof fb, "%s/f%d_dinov2.safetensors", dir, v);
        StFile A, B;
        CHECK(st_open(&A, fa, err) == 0 && st_open(&B, fb, err) == 0, "%s", err);
        const StTensor *ca = st_get(&A, "cls"), *cb = st_get(&B, "cls");
        CHECK(ca && cb && ca->nbytes == cb->nbytes && !memcmp(ca->data, cb->data, ca->nbytes),
              "variant %d: dinoembed's CLS differs between the HF and the official-names export", v);
        st_close(&B);
        snprintf(fb, sizeof fb, "%s/f%d_re.safetensors", dir, v);
        CHECK(st_open(&B, fb, err) == 0, "%s", err);
        cb = st_get(&B, "cls");
        CHECK(cb && ca->nbytes == cb->nbytes && !memcmp(ca->data, cb->data, ca->nbytes),
              "variant %d: dinoembed's CLS differs after re-exporting the HF export", v);
        st_close(&A);
        st_close(&B);
        // dinoeval opens the export (k-NN on two labelled classes of tiles)
        snprintf(cmd, sizeof cmd, "./dinoeval --backend cpu %s/v3_%d_hf --train %s/labeled --test-fraction 0.5 --no-linear "
                 "--k 1 --resize 0 --crop 32 2>&1", dir, v, dir);
        const char *ev = capture(cmd);
        printf("%s", ev);
        CHECK(strstr(ev, "k-NN k=1") && strstr(ev, "balanced accuracy") && strstr(ev, "features of width 32"),
              "dinoeval on the DINOv3 export:\n%s", ev);
        // the HF config says what the model is (read from the metadata of the checkpoint-like file)
        char cp[4300];
        snprintf(cp, sizeof cp, "%s/v3_%d_hf/config.json", dir, v);
        json_object *j = parse(cp);
        want_bool(j, "key_bias", !cfgs[v].mask_k_bias);
        want_num(j, "rope_theta", cfgs[v].rope_cfg.base);
        want_int(j, "num_register_tokens", cfgs[v].n_registers);
        json_object_put(j);
        vit_free(&vit);
        free(P);
        param_table_free(&tab);
    }
    strcat(py, " 2>&1");
    const char *out = capture(py);
    printf("%s", out);
    CHECK(!strstr(out, "FAIL") && strstr(out, "C forward vs transcription") && strstr(out, "dinoembed vs transcription"),
          "transcription comparison failed:\n%s", out);
    // timm is refused for DINOv3, naming the choices
    snprintf(cmd, sizeof cmd, "./dinoexport %s/ck0.safetensors %s/v3_timm --format timm 2>&1", dir, dir);
    const char *o2 = capture(cmd);
    CHECK(strstr(o2, "DINOv3") && strstr(o2, "--format hf"), "timm: %s", o2);
}

// An untied CLS norm (cls_norm at inference) exports in the official names only; dinoembed reads that export
// back into the same model (features equal to the C forward's).
TEST(dinov3_untied_cls_norm_official_only) {
    const char *dir = test_tmpdir();
    char cmd[8192], err[DINO_ERRLEN];
    VitConfig c = v3_vit(4, "mlp", 1, 1, 1, 100.0);
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &c, &tab, "");
    float *P = random_values(&tab, 77);
    char ck[4300];
    snprintf(ck, sizeof ck, "%s/ck.safetensors", dir);
    write_v3_checkpoint(ck, &c, &tab, P);
    snprintf(cmd, sizeof cmd, "./dinoexport %s %s/hf 2>&1", ck, dir);
    const char *o = capture(cmd);
    CHECK(strstr(o, "cls_norm") && strstr(o, "--format dinov2"), "HF export of an untied CLS norm: %s", o);
    snprintf(cmd, sizeof cmd, "./dinoexport %s %s/orig --format dinov2 > /dev/null", ck, dir);
    CHECK(run(cmd) == 0, "failed: %s", cmd);
    // read back through pretrained_load: every tensor of the table bit for bit
    char p[4300];
    snprintf(p, sizeof p, "%s/orig/model.safetensors", dir);
    float *Q = dino_calloc(tab.total, sizeof(float));
    PretrainedOptions opt = {0};
    CHECK(pretrained_load(&vit, &tab, "", Q, p, &opt, NULL, err) == 0, "%s", err);
    for (int i = 0; i < tab.n; i++)
        CHECK(!memcmp(Q + tab.t[i].offset, P + tab.t[i].offset, sizeof(float) * tab.t[i].numel), "%s differs",
              tab.t[i].name);
    free(Q);
    vit_free(&vit);
    free(P);
    param_table_free(&tab);
}

// The proof for DINOv3: a tiny DINOv3 ViT trained by dinotrain (configs/demo.yaml with the DINOv3
// student keys) is exported from its output_dir with no other input: the run's config selects the DINOv3
// export and supplies what the shapes do not show (masked k bias, eps, RoPE and its augmentation); the HF
// export's dinoembed features match the DINOv3ViTModel transcription at the training size and at another.
TEST(dinov3_trained_run_exports) {
    need_python_modules("torch, numpy");
    if (access("./dinotrain", X_OK) != 0) test_skip("no dinotrain");
    const char *dir = test_tmpdir();
    char cmd[16384], tiles[4200];
    snprintf(tiles, sizeof tiles, "%s/tiles", dir);
    mkdir(tiles, 0777);
    for (int i = 0; i < 12; i++) {
        uint8_t px[64 * 64 * 3];
        Rng r = rng_make(7, (uint64_t)i, 0, 0);
        for (int k = 0; k < 64 * 64 * 3; k++) {
            double v = 128 + 70 * sin(0.2 * (k / 3 % 64) * (1 + i % 3) + 0.1 * (k / 192)) + 25 * rng_normal(&r);
            px[k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
        char p[4300];
        snprintf(p, sizeof p, "%s/t%02d.jpg", tiles, i);
        write_jpeg(p, px, 64, 64);
    }
    snprintf(cmd, sizeof cmd,
             "./dinotrain %s train.output_dir=%s/run 'data.sources=[folder:%s]' student.arch=vit_test "
             "student.embed_dim=32 student.depth=2 student.num_heads=2 student.patch_size=8 student.pos_embed_type=rope "
             "student.n_storage_tokens=2 student.pos_embed_rope_rescale_coords=2 student.mask_k_bias=true "
             "student.untie_global_and_local_cls_norm=true student.norm_layer=layernormbf16 student.ffn_layer=swiglu32 "
             "crops.global_crops_size=32 crops.local_crops_size=16 crops.local_crops_number=2 dino.head_n_prototypes=64 "
             "dino.head_hidden_dim=32 dino.head_bottleneck_dim=16 ibot.head_n_prototypes=64 ibot.head_hidden_dim=32 "
             "ibot.head_bottleneck_dim=16 train.batch_size_per_gpu=4 train.OFFICIAL_EPOCH_LENGTH=3 optim.epochs=1 "
             "optim.warmup_epochs=0 checkpoint.every_n_iterations=3 evaluation.eval_period_iterations=0 "
             "> %s/train.log 2>&1 && "
             "./dinoexport %s/run %s/export > %s/export.log 2>&1 && "
             "./dinoembed --backend cpu %s/export --tiles %s -o %s/f32.safetensors --resize 0 --crop 32 > /dev/null && "
             "./dinoembed --backend cpu %s/export --tiles %s -o %s/f48.safetensors --resize 0 --crop 48 > /dev/null",
             test_src_path("configs/demo.yaml"), dir, tiles, dir, dir, dir, dir, dir, tiles, dir, dir, tiles, dir);
    CHECK(run(cmd) == 0, "failed: %s (see %s/train.log, %s/export.log)", cmd, dir, dir);
    char cp[4300];
    snprintf(cp, sizeof cp, "%s/export/config.json", dir);
    json_object *j = parse(cp);
    want_str(j, "model_type", "dinov3_vit");
    want_bool(j, "key_bias", 0); // masked in the run's config: nothing in the tensors says it
    want_num(j, "layer_norm_eps", (double)1e-5f);
    want_num(j, "pos_embed_rescale", 2.0);
    want_int(j, "num_register_tokens", 2);
    want_int(j, "num_attention_heads", 2);
    want_bool(j, "use_gated_mlp", 1);
    want_int(j, "image_size", 32);
    json_object_put(j);
    snprintf(cmd, sizeof cmd,
             "%s %s embed --crop 32 %s/export %s/f32.safetensors %s/f32.ids.txt + embed --crop 48 %s/export "
             "%s/f48.safetensors %s/f48.ids.txt 2>&1",
             python(), test_src_path("tests/export_v3_check.py"), dir, dir, dir, dir, dir, dir);
    const char *out = capture(cmd);
    printf("%s", out);
    CHECK(!strstr(out, "FAIL") && strstr(out, "dinoembed vs transcription"), "trained DINOv3 export:\n%s", out);
}
