// dinoexport: a checkpoint's teacher (or student) backbone -> a standalone feature-extractor directory.
//
//   dinoexport INPUT OUTDIR [--format hf|timm|dinov2] [--teacher|--student] [--heads N]
//
// INPUT: a training output_dir (its newest valid checkpoint, train/checkpoint.h), one checkpoint
// directory, an export directory, or any safetensors file that holds a ViT backbone in one of the three
// namings, with or without a prefix ("teacher.backbone.", "student.backbone.", "backbone.", ...).
// Hyper-parameters come from the tensor shapes; the head count from --heads, the checkpoint's resolved
// config, the file's metadata or the reference arch of that width.
// Output (export-formats.md): OUTDIR/model.safetensors (F32, __metadata__ format=pt) and
//   hf:     config.json (Dinov2Model / Dinov2WithRegistersModel) + preprocessor_config.json
//   timm:   config.json (timm hub format: architecture, model_args, pretrained_cfg)
//   dinov2: the original names; config.json with our hyper-parameters (dinotrain's own keys)
// A DINOv3 ViT (no pos_embed; official dinov3 names) is seen in the file and exported by
// train/export_dir.h: hf = transformers DINOv3ViTModel (model_type dinov3_vit), dinov2 = the official
// dinov3 names with the model's buffers; timm is refused. Its RoPE, LayerNorm eps, k-bias mask and image
// size come from the run's config, the input export's config.json or the file's metadata.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fs.h"
#include "common/check.h"
#include "common/json.h"
#include "common/safetensors.h"
#include "model/export_dinov3.h"
#include "model/export_names.h"
#include "model/params.h"
#include "model/vit.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/export_dir.h"
#include "train/pretrained.h"

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

// The head count and the model's config from a checkpoint's resolved config (state.json "config"):
// *heads 0 and vc->rope 0 when it has none (a DINOv3 run's config gives what the tensor shapes do not
// show: its RoPE, LayerNorm eps, k-bias mask, image size).
static void config_from_checkpoint(const Ckpt *c, int *heads, VitConfig *vc) {
    const char *yaml = ckpt_get_str(c, "config");
    if (!yaml) return;
    int dim, depth;
    Config cfg;
    char name[4200], err[DINO_ERRLEN];
    snprintf(name, sizeof name, "%s/state.json (config)", c->dir);
    if (config_load_string(&cfg, yaml, name, 0, NULL, err) == 0) {
        config_arch_dims(&cfg, &dim, &depth, heads);
        if (config_to_vit(&cfg, vc, err)) memset(vc, 0, sizeof *vc);
    } else {
        fprintf(stderr, "dinoexport: note: the checkpoint's config does not load (%s); heads from the weights\n", err);
    }
}

// The safetensors file behind the input: a file as given; a checkpoint directory (verified: sizes and
// CRC32 of every tensor); a run's output_dir (its newest valid checkpoint); or an export directory.
// An export directory's config.json goes to cfg_json (empty otherwise); a checkpoint's model config to
// ckpt_vit (rope 0 when none).
static int resolve_input(const char *in, char *path, size_t n, int *heads, char *cfg_json, VitConfig *ckpt_vit,
                         char *err) {
    cfg_json[0] = 0;
    memset(ckpt_vit, 0, sizeof *ckpt_vit);
    if (!is_dir(in)) {
        snprintf(path, n, "%s", in);
        return 0;
    }
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors", in);
    if (access(p, R_OK) == 0) {
        snprintf(path, n, "%s", p);
        snprintf(p, sizeof p, "%s/config.json", in);
        if (access(p, R_OK) == 0) snprintf(cfg_json, 4200, "%s", p);
        return 0;
    }
    Ckpt c;
    snprintf(p, sizeof p, "%s/state.json", in);
    int rc;
    if (access(p, R_OK) == 0) rc = ckpt_open(&c, in, err) == 0 ? 1 : -1;
    else rc = ckpt_open_latest(&c, in, stderr, err);
    if (rc == 0) dino_seterr(err, "%s: no checkpoint, model.safetensors or checkpoints/ in this folder", in);
    if (rc <= 0) return -1;
    snprintf(path, n, "%s/tensors.safetensors", c.dir);
    int ck_heads = 0;
    config_from_checkpoint(&c, &ck_heads, ckpt_vit);
    if (*heads <= 0) *heads = ck_heads;
    fprintf(stderr, "dinoexport: checkpoint %s (iteration %lld)\n", c.dir, (long long)c.iteration);
    ckpt_close(&c);
    return 0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: dinoexport INPUT OUTDIR [options]   (or: dinoexport --out OUTDIR INPUT)\n"
            "  INPUT: a training output_dir (its newest valid checkpoint), a checkpoint directory, a safetensors\n"
            "         file holding a backbone (any naming, any prefix) or an export directory\n"
            "  --format hf|timm|dinov2   naming of the written weights (default hf: transformers Dinov2Model, or\n"
            "                            DINOv3ViTModel for a DINOv3 ViT; dinov2 = the original/official names)\n"
            "  --teacher | --student     which backbone of a training checkpoint (default --teacher)\n"
            "  --prefix P                the backbone's name prefix in the file (overrides --teacher/--student)\n"
            "  --heads N                 attention heads (when neither metadata nor the width tells)\n");
}

// mlp_ratio such that int(D * ratio) == want (what transformers and timm compute).
static double ratio_for(int D, int want) { return want % D == 0 ? (double)(want / D) : (want + 0.5) / D; }

static const char *size_name(int D) {
    return D == 384 ? "small" : D == 768 ? "base" : D == 1024 ? "large" : D == 1536 ? "giant" : NULL;
}

static void hf_config(char *out, size_t n, const VitConfig *c, char *err, int *bad) {
    const int swiglu = c->ffn == VIT_FFN_SWIGLU, L = c->depth;
    double ratio;
    if (swiglu) {
        // transformers: hidden = int(D*mlp_ratio); each half (int(hidden*2/3)+7)//8*8
        ratio = 4;
        int h = (int)(c->dim * ratio);
        if ((h * 2 / 3 + 7) / 8 * 8 != c->ffn_hidden) {
            dino_seterr(err, "SwiGLU width %d is not what transformers derives from mlp_ratio 4 (%d)", c->ffn_hidden,
                        (h * 2 / 3 + 7) / 8 * 8);
            *bad = 1;
        }
    } else {
        ratio = ratio_for(c->dim, c->ffn_hidden);
    }
    const int reg = c->n_registers > 0;
    char stages[4096] = "\"stem\"";
    for (int l = 1; l <= L; l++) {
        size_t k = strlen(stages);
        snprintf(stages + k, sizeof stages - k, ", \"stage%d\"", l);
    }
    snprintf(out, n,
             "{\n"
             "  \"architectures\": [\"%s\"],\n"
             "  \"model_type\": \"%s\",\n"
             "  \"hidden_size\": %d,\n"
             "  \"num_hidden_layers\": %d,\n"
             "  \"num_attention_heads\": %d,\n"
             "  \"mlp_ratio\": %.17g,\n"
             "  \"hidden_act\": \"gelu\",\n"
             "  \"hidden_dropout_prob\": 0.0,\n"
             "  \"attention_probs_dropout_prob\": 0.0,\n"
             "  \"initializer_range\": 0.02,\n"
             "  \"layer_norm_eps\": 1e-06,\n"
             "  \"image_size\": %d,\n"
             "  \"patch_size\": %d,\n"
             "  \"num_channels\": 3,\n"
             "  \"qkv_bias\": true,\n"
             "  \"layerscale_value\": 1.0,\n"
             "  \"drop_path_rate\": 0.0,\n"
             "  \"use_swiglu_ffn\": %s,\n"
             "  \"apply_layernorm\": true,\n"
             "  \"reshape_hidden_states\": true,\n"
             "  \"stage_names\": [%s],\n"
             "  \"out_features\": [\"stage%d\"],\n"
             "  \"out_indices\": [%d],\n"
             "  \"torch_dtype\": \"float32\"\n"
             "}\n",
             reg ? "Dinov2WithRegistersModel" : "Dinov2Model", reg ? "dinov2_with_registers" : "dinov2", c->dim, L,
             c->heads, ratio, c->img_size, c->patch, swiglu ? "true" : "false", stages, L, L);
    if (reg) { // registers: count and the interpolation the released register models use
        char tail[256];
        snprintf(tail, sizeof tail, "  \"num_register_tokens\": %d,\n  \"interpolate_antialias\": true,\n  \"interpolate_offset\": 0.0,\n",
                 c->n_registers);
        char *at = strstr(out, "  \"apply_layernorm\"");
        size_t rest = strlen(at);
        memmove(at + strlen(tail), at, rest + 1);
        memcpy(at, tail, strlen(tail));
    }
}

static void timm_config(char *out, size_t n, const VitConfig *c) {
    const int swiglu = c->ffn == VIT_FFN_SWIGLU, R = c->n_registers;
    const char *sz = size_name(c->dim);
    char arch[128];
    // The dinov2 family in timm: vit_{small,base,large,giant}_patch14[_reg4]_dinov2; model_args set
    // every size explicitly, so other widths/patches/register counts build from the same family.
    snprintf(arch, sizeof arch, "vit_%s_patch14%s_dinov2", swiglu ? "giant" : (sz && strcmp(sz, "giant") ? sz : "small"),
             R ? "_reg4" : "");
    double ratio = swiglu ? ratio_for(c->dim, 2 * c->ffn_hidden) : ratio_for(c->dim, c->ffn_hidden);
    snprintf(out, n,
             "{\n"
             "  \"architecture\": \"%s\",\n"
             "  \"num_classes\": 0,\n"
             "  \"num_features\": %d,\n"
             "  \"global_pool\": \"token\",\n"
             "  \"model_args\": {\"img_size\": %d, \"patch_size\": %d, \"embed_dim\": %d, \"depth\": %d, \"num_heads\": %d, "
             "\"mlp_ratio\": %.17g, \"init_values\": 1e-05, \"reg_tokens\": %d, \"no_embed_class\": %s},\n"
             "  \"pretrained_cfg\": {\"input_size\": [3, %d, %d], \"interpolation\": \"bicubic\", \"crop_pct\": %.6g,\n"
             "    \"mean\": [0.485, 0.456, 0.406], \"std\": [0.229, 0.224, 0.225], \"num_classes\": 0,\n"
             "    \"first_conv\": \"patch_embed.proj\", \"classifier\": \"head\", \"license\": \"apache-2.0\"}\n"
             "}\n",
             arch, c->dim, c->img_size, c->patch, c->dim, c->depth, c->heads, ratio, R, R ? "true" : "false",
             c->img_size, c->img_size, 224.0 / 256.0);
}

static void own_config(char *out, size_t n, const VitConfig *c) {
    snprintf(out, n,
             "{\n  \"format\": \"dinov2\",\n  \"arch\": \"%s\",\n  \"embed_dim\": %d,\n  \"depth\": %d,\n  \"num_heads\": %d,\n"
             "  \"patch_size\": %d,\n  \"img_size\": %d,\n  \"num_register_tokens\": %d,\n  \"ffn_layer\": \"%s\",\n"
             "  \"ffn_hidden\": %d,\n  \"layerscale\": %s,\n  \"layer_norm_eps\": 1e-06\n}\n",
             c->arch, c->dim, c->depth, c->heads, c->patch, c->img_size, c->n_registers,
             c->ffn == VIT_FFN_SWIGLU ? "swiglufused" : "mlp", c->ffn_hidden, c->layerscale > 0 ? "true" : "false");
}

// A DINOv3 backbone's config: the shapes, then (for what shapes do not show) the input export's
// config.json, the file's metadata, or the training run's config (ckpt_vit, when it is a DINOv3 ViT of
// these shapes). Returns 0 or -1 with err.
static int infer_dinov3(const StFile *f, const char *in, ExportNaming naming, const char *fp, int heads,
                        const char *cfg_json, const VitConfig *ckpt_vit, VitConfig *cfg, char *err) {
    json_object *jc = NULL;
    if (cfg_json[0] && !(jc = json_parse_file(cfg_json, 16u << 20, err))) return -1;
    Dinov3Arch a;
    int bad = export_infer_dinov3(f, in, naming, fp, heads, jc, cfg_json, &a, err);
    json_object_put(jc);
    if (bad) return -1;
    if (ckpt_vit->rope) {
        Dinov3Arch r;
        dinov3_arch_from_vit(ckpt_vit, &r);
        if (r.dim != a.dim || r.depth != a.depth || r.n_storage != a.n_storage || r.swiglu != a.swiglu ||
            r.ffn_hidden != a.ffn_hidden || r.patch != a.patch) {
            dino_seterr(err, "%s: the run's config describes another model (width %d, depth %d, %d storage tokens, "
                        "feed-forward %d, patch %d) than the tensors (width %d, depth %d, %d, %d, %d)", in, r.dim,
                        r.depth, r.n_storage, r.ffn_hidden, r.patch, a.dim, a.depth, a.n_storage, a.ffn_hidden, a.patch);
            return -1;
        }
        if (heads <= 0) a.heads = r.heads;
        a.rope = r.rope;
        a.ln_eps = r.ln_eps;
        a.mask_k_bias = r.mask_k_bias && a.qkv_bias;
        a.img_size = r.img_size;
        a.untie_cls_norm = r.untie_cls_norm;
        a.local_cls_norm = r.local_cls_norm;
    }
    return dinov3_arch_to_vit(&a, cfg, err);
}

int main(int argc, char **argv) {
    const char *in = NULL, *outdir = NULL, *prefix = "teacher.backbone.";
    ExportNaming naming = NAMING_HF;
    int heads = 0, explicit_prefix = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--format") && i + 1 < argc) {
            if (export_naming_parse(argv[++i], &naming)) {
                fprintf(stderr, "dinoexport: unknown --format '%s' (hf, timm or dinov2)\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--teacher")) {
            if (!explicit_prefix) prefix = "teacher.backbone.";
        } else if (!strcmp(a, "--student")) {
            if (!explicit_prefix) prefix = "student.backbone.";
        } else if (!strcmp(a, "--prefix") && i + 1 < argc) {
            prefix = argv[++i];
            explicit_prefix = 1;
        } else if ((!strcmp(a, "--out") || !strcmp(a, "-o")) && i + 1 < argc) {
            outdir = argv[++i];
        } else if (!strcmp(a, "--heads") && i + 1 < argc) {
            heads = atoi(argv[++i]);
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        } else if (a[0] == '-') {
            fprintf(stderr, "dinoexport: unknown option '%s'\n", a);
            usage();
            return 2;
        } else if (!in) {
            in = a;
        } else if (!outdir) {
            outdir = a;
        } else {
            usage();
            return 2;
        }
    }
    if (!in || !outdir) {
        usage();
        return 2;
    }
    char err[DINO_ERRLEN], in_path[4200], cfg_json[4200];
    VitConfig ckpt_vit;
    if (resolve_input(in, in_path, sizeof in_path, &heads, cfg_json, &ckpt_vit, err)) {
        fprintf(stderr, "dinoexport: %s\n", err);
        return 1;
    }
    in = in_path;
    StFile f;
    if (st_open(&f, in, err)) {
        fprintf(stderr, "dinoexport: %s\n", err);
        return 1;
    }
    ExportNaming in_naming;
    char fp[256];
    VitConfig cfg;
    if (export_detect(&f, in, prefix, &in_naming, fp, sizeof fp, err)) {
        fprintf(stderr, "dinoexport: %s\n", err);
        st_close(&f);
        return 1;
    }
    const int v3 = export_is_dinov3(&f, fp, in_naming);
    int ibad = v3 ? infer_dinov3(&f, in, in_naming, fp, heads, cfg_json, &ckpt_vit, &cfg, err)
                 : export_infer_config(&f, in, in_naming, fp, heads, &cfg, err);
    st_close(&f);
    if (!ibad && v3 && naming == NAMING_TIMM) {
        dino_seterr(err, "%s holds a DINOv3 ViT: it exports as --format hf (transformers DINOv3ViTModel) or "
                    "--format dinov2 (the official dinov3 names), not timm", in);
        ibad = 1;
    }
    if (ibad) {
        fprintf(stderr, "dinoexport: %s\n", err);
        return 1;
    }
    ParamTable tab;
    param_table_init(&tab);
    Vit vit;
    vit_build(&vit, &cfg, &tab, "");
    float *P = dino_calloc(tab.total, sizeof(float));
    PretrainedOptions opt = {.file_prefix = fp};
    if (pretrained_load(&vit, &tab, "", P, in, &opt, NULL, err)) {
        fprintf(stderr, "dinoexport: %s\n", err);
        return 1;
    }
    // missing parent folders too (dinoexport --out runs/a/b/export)
    if (dino_mkdir_p(outdir, err)) {
        fprintf(stderr, "dinoexport: %s: cannot create directory (%s)\n", outdir, err);
        return 1;
    }
    if (v3) { // the DINOv3 ViT: train/export_dir.h writes all of it
        Dinov3Arch a;
        dinov3_arch_from_vit(&vit.cfg, &a);
        int n_tensors = 0;
        if (export_write_dinov3(outdir, &a, &tab, "", P, naming, in, &n_tensors, err)) {
            fprintf(stderr, "dinoexport: %s\n", err);
            return 1;
        }
        printf("dinoexport: DINOv3 backbone '%s' of %s (%s naming: %d blocks, width %d, %d heads, patch %d, image %d, "
               "%d storage tokens, %s, RoPE %s %g) -> %s/ (%s naming, %d tensors)\n",
               fp, in, export_naming_name(in_naming), cfg.depth, cfg.dim, cfg.heads, cfg.patch, cfg.img_size,
               cfg.n_registers, cfg.ffn == VIT_FFN_MLP ? "MLP" : "SwiGLU", a.rope.base > 0 ? "base" : "max period",
               a.rope.base > 0 ? a.rope.base : a.rope.max_period, outdir, export_naming_name(naming), n_tensors);
        vit_free(&vit);
        param_table_free(&tab);
        free(P);
        return 0;
    }
    ExportMap map;
    export_map_build(&map, &vit, &tab, "", naming);
    StWriter *w = st_writer_new();
    float **bufs = dino_calloc((size_t)map.n, sizeof(float *));
    for (int i = 0; i < map.n; i++) {
        const ExportEntry *e = &map.e[i];
        bufs[i] = dino_malloc(sizeof(float) * e->numel);
        export_entry_gather(e, P, bufs[i]);
        st_writer_add(w, e->name, ST_F32, e->ndim, e->shape, bufs[i]);
    }
    // transformers requires format=pt; the rest makes the file self-describing for our own tools
    char num[64];
    st_writer_meta(w, "format", "pt");
    st_writer_meta(w, "naming", export_naming_name(naming));
    snprintf(num, sizeof num, "%d", cfg.heads);
    st_writer_meta(w, "num_attention_heads", num);
    snprintf(num, sizeof num, "%d", cfg.img_size);
    st_writer_meta(w, "image_size", num);
    st_writer_meta(w, "source", in);
    st_writer_meta(w, "source_prefix", fp);
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", outdir);
    int bad = st_writer_write(w, path, err);
    st_writer_free(w);
    for (int i = 0; i < map.n; i++) free(bufs[i]);
    free(bufs);
    if (bad) {
        fprintf(stderr, "dinoexport: %s\n", err);
        return 1;
    }
    static char text[16384];
    int cbad = 0;
    if (naming == NAMING_HF) hf_config(text, sizeof text, &cfg, err, &cbad);
    else if (naming == NAMING_TIMM) timm_config(text, sizeof text, &cfg);
    else own_config(text, sizeof text, &cfg);
    if (cbad) {
        fprintf(stderr, "dinoexport: %s\n", err);
        return 1;
    }
    snprintf(path, sizeof path, "%s/config.json", outdir);
    if (export_write_text(path, text, err)) {
        fprintf(stderr, "dinoexport: %s\n", err);
        return 1;
    }
    if (naming == NAMING_HF) {
        export_preprocessor_json(text, sizeof text, cfg.img_size); // the reference's inference transform
        snprintf(path, sizeof path, "%s/preprocessor_config.json", outdir);
        if (export_write_text(path, text, err)) {
            fprintf(stderr, "dinoexport: %s\n", err);
            return 1;
        }
    }
    printf("dinoexport: backbone '%s' of %s (%s naming: %d blocks, width %d, %d heads, patch %d, image %d, "
           "%d registers, %s) -> %s/ (%s naming, %d tensors)\n",
           fp, in, export_naming_name(in_naming), cfg.depth, cfg.dim, cfg.heads, cfg.patch,
           cfg.img_size, cfg.n_registers, cfg.ffn == VIT_FFN_MLP ? "MLP" : "SwiGLU", outdir, export_naming_name(naming),
           map.n);
    export_map_free(&map);
    vit_free(&vit);
    param_table_free(&tab);
    free(P);
    return 0;
}
