#include <dirent.h>
#include <math.h>
#include <sys/stat.h>
#include <string.h>

#include "common/check.h"
#include "tests/harness.h"
#include "train/config.h"

static const char *write_file(const char *dir, const char *name, const char *text) {
    static char paths[8][4096];
    static int k;
    char *p = paths[k++ % 8];
    snprintf(p, 4096, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (!f) { perror(p); exit(2); }
    fputs(text, f);
    fclose(f);
    return p;
}

static Config cfg, cfg2; // large: keep off the stack

static int load(const char *path, int n, char *const *ov, char *err) { return config_load(&cfg, path, n, ov, err); }

// The load must fail with a message containing every one of the given fragments.
#define CHECK_REFUSED(path, n, ov, ...)                                                            \
    do {                                                                                           \
        char err_[DINO_ERRLEN] = "";                                                               \
        const char *frags_[] = {__VA_ARGS__};                                                      \
        int rc_ = load(path, n, ov, err_);                                                         \
        CHECK(rc_ == -1, "expected a refusal, load succeeded");                                    \
        for (size_t i_ = 0; i_ < sizeof frags_ / sizeof frags_[0]; i_++)                           \
            CHECK(strstr(err_, frags_[i_]), "message '%s' lacks '%s'", err_, frags_[i_]);          \
    } while (0)

TEST(defaults_are_the_reference) {
    config_defaults(&cfg);
    CHECK(strcmp(cfg.student.arch, "vit_large") == 0, "arch %s", cfg.student.arch);
    CHECK(cfg.student.patch_size == 16 && cfg.student.drop_path_rate == 0.3 && cfg.student.layerscale == 1e-5, "student");
    CHECK(cfg.dino.head_n_prototypes == 65536 && cfg.dino.head_bottleneck_dim == 256 && cfg.dino.koleo_loss_weight == 0.1,
          "dino");
    CHECK(cfg.ibot.mask_ratio_min_max[0] == 0.1 && cfg.ibot.mask_ratio_min_max[1] == 0.5 && !cfg.ibot.separate_head, "ibot");
    CHECK(cfg.optim.base_lr == 0.004 && cfg.optim.weight_decay_end == 0.4 && cfg.optim.layerwise_decay == 0.9 &&
              cfg.optim.epochs == 100 && cfg.optim.warmup_epochs == 10 && cfg.optim.clip_grad == 3.0,
          "optim");
    CHECK(cfg.teacher.momentum_teacher == 0.992 && cfg.teacher.teacher_temp == 0.07 &&
              cfg.teacher.warmup_teacher_temp_epochs == 30,
          "teacher");
    CHECK(cfg.crops.global_crops_scale[0] == 0.32 && cfg.crops.local_crops_size.n == 1 && cfg.crops.local_crops_size.v[0] == 96 && cfg.crops.local_crops_number == 8,
          "crops");
    CHECK(cfg.train.OFFICIAL_EPOCH_LENGTH == 1250 && cfg.train.batch_size_per_gpu == 64 &&
              strcmp(cfg.train.centering, "centering") == 0,
          "train");
    CHECK(cfg.augment.blur_p_global1 == 0.0 && cfg.augment.blur_p_global2 == 0.9 && cfg.augment.mean[2] == 0.406, "augment");
    CHECK(config_total_iterations(&cfg) == 125000, "total iterations %lld", (long long)config_total_iterations(&cfg));
    char err[DINO_ERRLEN];
    CHECK(config_validate(&cfg, err) == 0, "defaults must validate: %s", err);
}

TEST(every_shipped_config_loads_and_validates) {
    DIR *d = opendir(test_src_path("configs"));
    CHECK(d != NULL, "no configs/ directory");
    if (!d) return;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".yaml") != 0) continue;
        char rel[512], err[DINO_ERRLEN] = "";
        snprintf(rel, sizeof rel, "configs/%s", e->d_name);
        CHECK(load(test_src_path(rel), 0, NULL, err) == 0, "%s: %s", rel, err);
        n++;
    }
    closedir(d);
    CHECK(n >= 10, "expected at least the 10 shipped configs, found %d", n);
}

// The pathology recipes' keys: ECT and the HSV filter reach the loader and the source filter, their
// ranges are checked, and a wsi: source's options are checked at load (dinotrain --check) before any
// slide is opened.
TEST(pathology_recipe_keys_map_and_are_checked) {
    char err[DINO_ERRLEN] = "";
    char *ov[] = {"crops.extended_context=true", "crops.ect_scale=[0.8, 1.2]", "crops.ect_ratio=[0.9, 1.1]",
                  "data.hsv_min_fraction=0.6", "data.hsv_value=[100, 250]"};
    CHECK(load(test_src_path("configs/vits14.yaml"), 5, ov, err) == 0, "%s", err);
    LoaderConfig lc;
    config_to_loader(&cfg, 0, 1, &lc);
    CHECK(lc.aug.ect && lc.aug.ect_scale[0] == 0.8 && lc.aug.ect_scale[1] == 1.2 && lc.aug.ect_ratio[1] == 1.1 &&
              !lc.aug.no_resize,
          "ECT mapping");
    CHECK(augment_config_check(&lc.aug, err) == 0, "%s", err);
    HsvFilter f;
    config_to_hsv_filter(&cfg, &f);
    CHECK(f.min_fraction == 0.6 && f.hue[0] == 90 && f.hue[1] == 180 && f.saturation[0] == 8 && f.value[0] == 100 &&
              f.value[1] == 250,
          "HSV mapping");
    CHECK(hsv_filter_check(&f, "data.hsv", err) == 0, "%s", err);
    CHECK(load(test_src_path("configs/vits14.yaml"), 0, NULL, err) == 0, "%s", err);
    config_to_loader(&cfg, 0, 1, &lc);
    config_to_hsv_filter(&cfg, &f);
    CHECK(!lc.aug.ect && f.min_fraction == 0, "ECT and the HSV filter are off by default");
    char *both[] = {"crops.extended_context=true", "augment.crop_without_resize=true"};
    CHECK_REFUSED(test_src_path("configs/vits14.yaml"), 2, both, "crops.extended_context", "crop_without_resize");
    char *factor[] = {"crops.context_factor=0.5"};
    CHECK_REFUSED(test_src_path("configs/vits14.yaml"), 1, factor, "crops.context_factor", "[1, 8]");
    char *hue[] = {"data.hsv_hue=[90, 200]"};
    CHECK_REFUSED(test_src_path("configs/vits14.yaml"), 1, hue, "data.hsv_hue", "180");
    char *frac[] = {"data.hsv_min_fraction=1.5"};
    CHECK_REFUSED(test_src_path("configs/vits14.yaml"), 1, frac, "data.hsv_min_fraction");
    char *range[] = {"data.sources=[\"wsi:slides.txt,mpp_range=2/0.25\"]"};
    CHECK_REFUSED(test_src_path("configs/vits14.yaml"), 1, range, "data.sources", "mpp_range=2/0.25", "0 < LO < HI");
    char *opt[] = {"data.sources=[\"tiles/+wsi:s.txt,mpp_sampling=cubic\"]"};
    CHECK_REFUSED(test_src_path("configs/vits14.yaml"), 1, opt, "data.sources", "mpp_sampling=cubic");
}

TEST(shipped_recipes_hold_their_published_values) {
    char err[DINO_ERRLEN] = "";
    CHECK(load(test_src_path("configs/vitl14.yaml"), 0, NULL, err) == 0, "%s", err);
    CHECK(strcmp(cfg.student.arch, "vit_large") == 0 && cfg.student.patch_size == 14 &&
              strcmp(cfg.student.ffn_layer, "swiglufused") == 0 && cfg.student.drop_path_rate == 0.4,
          "vitl14 student");
    CHECK(cfg.dino.head_n_prototypes == 131072 && cfg.dino.head_bottleneck_dim == 384 && cfg.ibot.separate_head &&
              cfg.ibot.head_bottleneck_dim == 256,
          "vitl14 heads");
    CHECK(cfg.train.batch_size_per_gpu == 32 && strcmp(cfg.train.centering, "sinkhorn_knopp") == 0, "vitl14 train");
    CHECK(cfg.optim.base_lr == 2e-4 && cfg.optim.epochs == 500 && cfg.optim.warmup_epochs == 80 &&
              cfg.optim.layerwise_decay == 1.0 && cfg.optim.weight_decay_end == 0.2,
          "vitl14 optim");
    CHECK(cfg.teacher.momentum_teacher == 0.994 && cfg.crops.local_crops_size.v[0] == 98, "vitl14 teacher/crops");
    // vitl.yaml is vitl14.yaml under the name users type
    CHECK(load(test_src_path("configs/vitl.yaml"), 0, NULL, err) == 0, "%s", err);
    const char *diff = NULL;
    CHECK(config_load(&cfg2, test_src_path("configs/vitl14.yaml"), 0, NULL, err) == 0, "%s", err);
    CHECK(config_equal(&cfg, &cfg2, &diff), "vitl.yaml differs from vitl14.yaml at %s", diff ? diff : "?");

    CHECK(load(test_src_path("configs/phikon-v2.yaml"), 0, NULL, err) == 0, "%s", err);
    CHECK(strcmp(cfg.student.arch, "vit_large") == 0 && cfg.student.patch_size == 16 &&
              cfg.student.num_register_tokens == 0 && cfg.crops.global_crops_size.v[0] == 224,
          "phikon-v2 model");
    CHECK(cfg.train.batch_size_per_gpu * 128 == 4096, "phikon-v2 global batch on 128 ranks: %d",
          cfg.train.batch_size_per_gpu * 128);
    CHECK(config_total_iterations(&cfg) == 250000, "phikon-v2 iterations %lld", (long long)config_total_iterations(&cfg));
    CHECK(cfg.data.n_sources == 1 && strstr(cfg.data.sources[0], "mpp=0.5"), "phikon-v2 source at 0.5 um/px");

    // the GPU recipes run on the cuda backend with the optimizer sharded; the demo on the CPU
    const char *gpu[] = {"vits14", "vitb14", "vitl14", "vitg14", "phikon-v2", "dino-vits16-path", "vitl", "midnight-like",
                         "dinov3-vitl16-path"};
    for (size_t i = 0; i < sizeof gpu / sizeof gpu[0]; i++) {
        char rel[64];
        snprintf(rel, sizeof rel, "configs/%s.yaml", gpu[i]);
        CHECK(load(test_src_path(rel), 0, NULL, err) == 0, "%s", err);
        CHECK(strcmp(cfg.backend, "cuda") == 0 && cfg.zero1 && strcmp(cfg.param_dtype, "bf16") == 0,
              "%s: backend %s, zero1 %d, param_dtype %s", rel, cfg.backend, (int)cfg.zero1, cfg.param_dtype);
    }
    CHECK(load(test_src_path("configs/demo.yaml"), 0, NULL, err) == 0 && strcmp(cfg.backend, "cpu") == 0,
          "the demo runs on the CPU");
    // Midnight (Karasikov et al. 2025): ViT-g/14, KDE, HED, online patching with the HSV filter, 1M
    // iterations at global batch 768 (32 x 24)
    CHECK(load(test_src_path("configs/midnight-like.yaml"), 0, NULL, err) == 0, "%s", err);
    CHECK(strcmp(cfg.student.arch, "vit_giant2") == 0 && cfg.student.patch_size == 14 &&
              strcmp(cfg.dino.regularizer, "kde") == 0 && cfg.augment.hed_p > 0 && cfg.augment.mean[0] == 0.5 &&
              cfg.augment.std[2] == 0.5,
          "midnight model and augmentation");
    CHECK(cfg.train.batch_size_per_gpu * 32 == 768 && config_total_iterations(&cfg) == 1000000, "midnight batch/length");
    CHECK(cfg.data.hsv_min_fraction == 0.6 && cfg.data.hsv_hue[0] == 90 && cfg.data.hsv_saturation[0] == 8 &&
              cfg.data.hsv_value[0] == 103,
          "midnight HSV filter");
    CHECK(cfg.data.n_sources == 1 && strstr(cfg.data.sources[0], "wsi:") && strstr(cfg.data.sources[0], "size=256") &&
              strstr(cfg.data.sources[0], "mpp_range=0.25/2.0") && strstr(cfg.data.sources[0], "min_tissue=0.4"),
          "midnight online patching: %s", cfg.data.sources[0]);
    // DINOv3-style ViT-L/16 for pathology: the DINOv3 ViT, heads, schedules and Gram anchoring
    CHECK(load(test_src_path("configs/dinov3-vitl16-path.yaml"), 0, NULL, err) == 0, "%s", err);
    CHECK(strcmp(cfg.student.arch, "vit_large") == 0 && cfg.student.patch_size == 16 &&
              strcmp(cfg.student.pos_embed_type, "rope") == 0 && cfg.student.n_storage_tokens == 4 &&
              cfg.student.mask_k_bias,
          "dinov3 ViT-L/16");
    CHECK(cfg.dino.head_n_prototypes == 262144 && cfg.ibot.head_n_prototypes == 98304 && cfg.ibot.separate_head &&
              strcmp(cfg.train.centering, "sinkhorn_knopp") == 0,
          "dinov3 heads");
    CHECK(cfg.schedules.enabled && cfg.gram.use_loss && cfg.gram.img_level && cfg.gram.it_load_ema_teacher == 500000 &&
              config_total_iterations(&cfg) == 625000,
          "dinov3 schedules and Gram anchoring");
    CHECK(config_gram_weight_at(&cfg, 499999) == 0 && fabs(config_gram_weight_at(&cfg, 625000 - 1) - 2.0) < 1e-9 &&
              fabs(config_dino_local_weight_at(&cfg, 625000 - 1) - 0.5) < 1e-9,
          "Gram weight 0 before iteration 500k, 2 after the ramp; local DINO weight 0.5");
    CHECK(cfg.crops.global_crops_size.v[0] == 256 && cfg.crops.local_crops_size.v[0] == 112 &&
              cfg.data.hsv_min_fraction == 0.6 && strstr(cfg.data.sources[0], "mpp_range="),
          "dinov3-path crops and data");
    CHECK(load(test_src_path("configs/dino-vits16-path.yaml"), 0, NULL, err) == 0, "%s", err);
    CHECK(cfg.ibot.loss_weight == 0 && cfg.dino.koleo_loss_weight == 0 && cfg.dino.loss_weight > 0, "DINO only");
    CHECK(strcmp(cfg.student.arch, "vit_small") == 0 && cfg.student.patch_size == 16, "ViT-S/16");

    CHECK(load(test_src_path("configs/demo.yaml"), 0, NULL, err) == 0, "%s", err);
    int dim, depth, heads;
    config_arch_dims(&cfg, &dim, &depth, &heads);
    CHECK(dim >= 64 && dim <= 96 && depth >= 2 && depth <= 4 && dim % heads == 0, "demo model %dx%d/%d", dim, depth, heads);
    CHECK(config_total_iterations(&cfg) <= 1000 && cfg.dino.head_n_prototypes <= 4096, "demo must stay tiny");
    CHECK(cfg.data.n_sources == 1 && strstr(cfg.data.sources[0], "demo"), "demo data source");
}

TEST(overrides_apply_after_the_file) {
    char err[DINO_ERRLEN] = "";
    char *ov[] = {"optim.base_lr=0.001", "crops.global_crops_scale=[0.4, 0.9]", "student.arch=vit_small",
                  "train.output_dir=runs/a b:c", "ibot.separate_head=true", "data.sources=[shards:/x, \"wsi:s.txt,mpp=0.5\"]",
                  "train.seed=12345678901", "augment.rot90=yes"};
    CHECK(load(test_src_path("configs/vitl14.yaml"), 8, ov, err) == 0, "%s", err);
    CHECK(cfg.optim.base_lr == 0.001, "base_lr %g", cfg.optim.base_lr);
    CHECK(cfg.crops.global_crops_scale[0] == 0.4 && cfg.crops.global_crops_scale[1] == 0.9, "list override");
    CHECK(strcmp(cfg.student.arch, "vit_small") == 0, "arch %s", cfg.student.arch);
    CHECK(strcmp(cfg.train.output_dir, "runs/a b:c") == 0, "string taken verbatim: '%s'", cfg.train.output_dir);
    CHECK(cfg.ibot.separate_head && cfg.augment.rot90, "bools");
    CHECK(cfg.data.n_sources == 2 && strcmp(cfg.data.sources[0], "shards:/x") == 0 &&
              strcmp(cfg.data.sources[1], "wsi:s.txt,mpp=0.5") == 0,
          "sources %d", cfg.data.n_sources);
    CHECK(cfg.train.seed == 12345678901LL, "64-bit seed");
    CHECK(cfg.student.patch_size == 14, "untouched keys keep the file's value");
    // a single source without brackets is a one-entry list (specs may contain commas)
    char *one[] = {"data.sources=wsi:slides.txt,mpp=0.5"};
    CHECK(load(test_src_path("configs/vitl14.yaml"), 1, one, err) == 0, "%s", err);
    CHECK(cfg.data.n_sources == 1 && strcmp(cfg.data.sources[0], "wsi:slides.txt,mpp=0.5") == 0, "one source");

    char *typo[] = {"optim.base_lrr=0.1"};
    CHECK_REFUSED(test_src_path("configs/vitl14.yaml"), 1, typo, "unknown key 'optim.base_lrr' in the command line",
                  "did you mean 'optim.base_lr'?");
    char *wrong[] = {"student.patch_size=fourteen"};
    CHECK_REFUSED(test_src_path("configs/vitl14.yaml"), 1, wrong, "wrong type for student.patch_size", "the command line",
                  "expected an integer");
    char *base[] = {"base=vitg14.yaml"};
    CHECK_REFUSED(test_src_path("configs/vitl14.yaml"), 1, base, "base can only be named inside a config file");
    char *noeq[] = {"optim.base_lr"};
    CHECK_REFUSED(test_src_path("configs/vitl14.yaml"), 1, noeq, "expected key.sub=value");
    // an override's impossible value names the command line as its origin
    char *neg[] = {"optim.base_lr=-0.1"};
    CHECK_REFUSED(test_src_path("configs/vitl14.yaml"), 1, neg, "optim.base_lr", "the command line", "must be > 0");
}

TEST(unknown_keys_are_refused_with_the_nearest_key) {
    const char *dir = test_tmpdir();
    const char *p = write_file(dir, "x.yaml", "optim:\n  base_lrr: 0.1\n");
    char want[4200];
    snprintf(want, sizeof want, "unknown key 'optim.base_lrr' in %s (line 2); did you mean 'optim.base_lr'?", p);
    CHECK_REFUSED(p, 0, NULL, want);
    p = write_file(dir, "y.yaml", "train:\n  base_lr: 0.1\n");
    CHECK_REFUSED(p, 0, NULL, "unknown key 'train.base_lr'", "did you mean 'optim.base_lr'?");
    p = write_file(dir, "z.yaml", "studnet:\n  arch: vit_small\n");
    CHECK_REFUSED(p, 0, NULL, "unknown key 'studnet.arch'", "did you mean 'student.arch'?");
    p = write_file(dir, "w.yaml", "frobnicate: 3\n");
    CHECK_REFUSED(p, 0, NULL, "unknown key 'frobnicate'", "w.yaml");
    p = write_file(dir, "d.yaml", "optim:\n  base_lr: 0.1\n  base_lr: 0.2\n");
    CHECK_REFUSED(p, 0, NULL, "duplicate key 'optim.base_lr'");
    CHECK(config_edit_distance("kitten", "sitting") == 3, "edit distance");
    CHECK(config_edit_distance("", "abc") == 3 && config_edit_distance("abc", "abc") == 0, "edit distance edges");
}

TEST(wrong_types_are_refused) {
    const char *dir = test_tmpdir();
    CHECK_REFUSED(write_file(dir, "a.yaml", "student:\n  patch_size: 14.5\n"), 0, NULL, "wrong type for student.patch_size",
                  "a.yaml", "expected an integer", "'14.5'");
    CHECK_REFUSED(write_file(dir, "b.yaml", "optim:\n  base_lr: [1, 2]\n"), 0, NULL, "wrong type for optim.base_lr",
                  "expected a number");
    CHECK_REFUSED(write_file(dir, "c.yaml", "crops:\n  global_crops_scale: 0.3\n"), 0, NULL,
                  "wrong type for crops.global_crops_scale", "a list of 2 numbers");
    CHECK_REFUSED(write_file(dir, "d.yaml", "crops:\n  global_crops_scale: [0.3, 0.5, 0.9]\n"), 0, NULL,
                  "crops.global_crops_scale");
    CHECK_REFUSED(write_file(dir, "e.yaml", "student:\n  drop_path_uniform: maybe\n"), 0, NULL,
                  "wrong type for student.drop_path_uniform", "boolean");
    CHECK_REFUSED(write_file(dir, "f.yaml", "student: 5\n"), 0, NULL, "'student'", "is a section");
    CHECK_REFUSED(write_file(dir, "g.yaml", "student:\n  arch:\n    name: vit_small\n"), 0, NULL,
                  "wrong type for student.arch", "got a mapping");
    CHECK_REFUSED(write_file(dir, "h.yaml", "optim:\n  base_lr: .inf\n"), 0, NULL, "wrong type for optim.base_lr");
    CHECK_REFUSED(write_file(dir, "i.yaml", "- a\n- b\n"), 0, NULL, "i.yaml", "mapping");
    CHECK_REFUSED(write_file(dir, "j.yaml", "optim: {base_lr: 0.1\n"), 0, NULL, "j.yaml", "YAML error");
}

TEST(impossible_values_are_refused) {
    const char *dir = test_tmpdir();
    CHECK_REFUSED(write_file(dir, "lr.yaml", "optim:\n  base_lr: -0.001\n"), 0, NULL, "optim.base_lr", "lr.yaml",
                  "must be > 0");
    CHECK_REFUSED(write_file(dir, "sc.yaml", "crops:\n  local_crops_scale: [0.4, 0.2]\n"), 0, NULL,
                  "crops.local_crops_scale", "sc.yaml", "min > max");
    CHECK_REFUSED(write_file(dir, "mr.yaml", "ibot:\n  mask_ratio_min_max: [0.6, 0.5]\n"), 0, NULL,
                  "ibot.mask_ratio_min_max", "min > max");
    // patch 14 with the default 224/96 crops: 96 is not a multiple of 14
    CHECK_REFUSED(write_file(dir, "p.yaml", "student:\n  patch_size: 14\n"), 0, NULL, "crops.local_crops_size",
                  "not a multiple of student.patch_size = 14", "p.yaml");
    CHECK_REFUSED(write_file(dir, "k.yaml", "train:\n  batch_size_per_gpu: 1\n"), 0, NULL, "train.batch_size_per_gpu",
                  "KoLeo", "k.yaml");
    char err[DINO_ERRLEN] = "";
    CHECK(load(write_file(dir, "k0.yaml", "train:\n  batch_size_per_gpu: 1\ndino:\n  koleo_loss_weight: 0\n"), 0, NULL,
               err) == 0,
          "batch 1 without KoLeo is fine: %s", err);
    CHECK(load(write_file(dir, "kde.yaml", "train:\n  batch_size_per_gpu: 1\ndino:\n  regularizer: kde\n"), 0, NULL,
               err) == 0,
          "batch 1 with KDE is fine: %s", err);
    CHECK_REFUSED(write_file(dir, "ar.yaml", "student:\n  arch: vit_lage\n"), 0, NULL, "student.arch = 'vit_lage'",
                  "ar.yaml", "must be one of", "did you mean 'vit_large'?");
    CHECK_REFUSED(write_file(dir, "ce.yaml", "train:\n  centering: sinkhorn\n"), 0, NULL, "train.centering",
                  "did you mean 'sinkhorn_knopp'?");
    CHECK_REFUSED(write_file(dir, "ff.yaml", "student:\n  ffn_layer: identity\n"), 0, NULL, "student.ffn_layer",
                  "mlp|swiglu|swiglufused");
    CHECK_REFUSED(write_file(dir, "bf.yaml", "compute_precision:\n  param_dtype: bf16\n"), 0, NULL,
                  "compute_precision.param_dtype", "cpu backend");
    CHECK_REFUSED(write_file(dir, "dp.yaml", "student:\n  drop_path_rate: 1.0\n"), 0, NULL, "student.drop_path_rate");
    CHECK_REFUSED(write_file(dir, "hd.yaml", "student:\n  embed_dim: 100\n  num_heads: 3\n"), 0, NULL,
                  "student.num_heads", "not divisible");
    CHECK_REFUSED(write_file(dir, "off.yaml", "dino:\n  loss_weight: 0\nibot:\n  loss_weight: 0\n"), 0, NULL,
                  "nothing to train");
    CHECK_REFUSED(write_file(dir, "wu.yaml", "optim:\n  epochs: 5\n"), 0, NULL, "optim.warmup_epochs");
    CHECK_REFUSED(write_file(dir, "du.yaml", "student:\n  drop_path_uniform: false\n"), 0, NULL,
                  "student.drop_path_uniform", "uniform");
    CHECK_REFUSED(write_file(dir, "kl.yaml", "checkpoint:\n  keep_last: 0\n"), 0, NULL, "checkpoint.keep_last");
    CHECK_REFUSED(write_file(dir, "pb.yaml", "augment:\n  solarize_p: 1.5\n"), 0, NULL, "augment.solarize_p");
    // cuda resolves auto to bf16; cuda with fp32 (true fp32 GEMMs) is accepted
    CHECK(load(write_file(dir, "cu.yaml", "backend: cuda\n"), 0, NULL, err) == 0, "%s", err);
    CHECK(strcmp(cfg.param_dtype, "bf16") == 0, "auto on cuda -> %s", cfg.param_dtype);
    CHECK(load(write_file(dir, "cf.yaml", "backend: cuda\ncompute_precision:\n  param_dtype: fp32\n"), 0, NULL, err) == 0,
          "%s", err);
    CHECK(strcmp(cfg.param_dtype, "fp32") == 0, "fp32 on cuda -> %s", cfg.param_dtype);
}

// The collective timeout (a hung or stalled rank ends the job after it) is a config key, > 0, default 600 s.
TEST(collective_timeout_is_a_key) {
    const char *dir = test_tmpdir();
    const char *demo = test_src_path("configs/demo.yaml");
    char err[DINO_ERRLEN] = "";
    char *const ok[] = {"dist.collective_timeout_s=2.5"};
    CHECK(load(demo, 1, ok, err) == 0, "dist.collective_timeout_s=2.5 refused: %s", err);
    char *yaml = config_to_yaml(&cfg);
    CHECK(strstr(yaml, "collective_timeout_s: 2.5"), "the resolved config lacks collective_timeout_s: 2.5:\n%s", yaml);
    free(yaml);
    CHECK(load(demo, 0, NULL, err) == 0, "%s", err);
    yaml = config_to_yaml(&cfg);
    CHECK(strstr(yaml, "collective_timeout_s: 600"), "the default is not 600 s:\n%s", yaml);
    free(yaml);
    char *const zero[] = {"dist.collective_timeout_s=0"}, *const neg[] = {"dist.collective_timeout_s=-5"};
    CHECK_REFUSED(demo, 1, zero, "dist.collective_timeout_s", "must be > 0");
    CHECK_REFUSED(demo, 1, neg, "dist.collective_timeout_s", "must be > 0");
    CHECK_REFUSED(write_file(dir, "to.yaml", "dist:\n  collective_timeout_s: 0\n"), 0, NULL, "dist.collective_timeout_s",
                  "to.yaml", "must be > 0");
}

TEST(base_configs_are_inherited_and_cycles_refused) {
    const char *dir = test_tmpdir();
    char sub[4200];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    CHECK(mkdir(sub, 0755) == 0, "mkdir");
    write_file(dir, "root.yaml", "student:\n  arch: vit_small\n  patch_size: 14\ncrops:\n  local_crops_size: 98\n"
                                 "optim:\n  base_lr: 0.002\n");
    write_file(sub, "mid.yaml", "base: ../root.yaml\noptim:\n  epochs: 50\n");
    const char *leafp = write_file(sub, "leaf.yaml", "optim:\n  base_lr: 0.001\nbase: mid.yaml\n");
    char err[DINO_ERRLEN] = "";
    CHECK(load(leafp, 0, NULL, err) == 0, "%s", err);
    CHECK(strcmp(cfg.student.arch, "vit_small") == 0 && cfg.student.patch_size == 14, "from the root");
    CHECK(cfg.optim.epochs == 50, "from the middle");
    CHECK(cfg.optim.base_lr == 0.001, "the leaf wins wherever its base key is written");
    CHECK(cfg.optim.warmup_epochs == 10, "defaults below everything");

    // an impossible value inherited from a base names the base file
    write_file(dir, "badbase.yaml", "optim:\n  min_lr: -1\n");
    const char *child = write_file(dir, "child.yaml", "base: badbase.yaml\n");
    CHECK_REFUSED(child, 0, NULL, "optim.min_lr", "badbase.yaml");

    write_file(dir, "a.yaml", "base: b.yaml\n");
    write_file(dir, "b.yaml", "base: a.yaml\n");
    char a[4200];
    snprintf(a, sizeof a, "%s/a.yaml", dir);
    CHECK_REFUSED(a, 0, NULL, "cycle");
    CHECK_REFUSED(write_file(dir, "self.yaml", "base: self.yaml\n"), 0, NULL, "cycle");
    CHECK_REFUSED(write_file(dir, "miss.yaml", "base: nowhere.yaml\n"), 0, NULL, "miss.yaml", "nowhere.yaml");
    CHECK_REFUSED(write_file(dir, "nb.yaml", "base: [a.yaml]\n"), 0, NULL, "base must name a config file");
}

TEST(resolved_config_reads_back_identical) {
    const char *dir = test_tmpdir();
    char err[DINO_ERRLEN] = "";
    char *ov[] = {"train.output_dir=/tmp/with \"quotes\" and \\back: slash", "data.sources=[folder:/a, \"wsi:b.txt,mpp=0.25\"]",
                  "optim.min_lr=1.2345678901234567e-07", "student.layerscale=0.1", "augment.mean=[0.1, 0.2, 0.30000000000000004]",
                  "train.seed=7"};
    CHECK(load(test_src_path("configs/demo.yaml"), 6, ov, err) == 0, "%s", err);
    config_apply_lr_scaling(&cfg, 3);
    char path[4200];
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    CHECK(config_write(&cfg, path, err) == 0, "%s", err);
    CHECK(config_load(&cfg2, path, 0, NULL, err) == 0, "resolved config must load: %s", err);
    const char *diff = NULL;
    CHECK(config_equal(&cfg, &cfg2, &diff), "round trip differs at %s", diff ? diff : "?");
    CHECK(cfg2.optim.lr == cfg.optim.lr && cfg.optim.lr > 0, "computed lr kept");
    char *y1 = config_to_yaml(&cfg), *y2 = config_to_yaml(&cfg2);
    CHECK(strcmp(y1, y2) == 0, "text differs after a second round trip");
    free(y1);
    free(y2);
    // config_equal does see a change
    cfg2.augment.std[1] += 1e-12;
    CHECK(!config_equal(&cfg, &cfg2, &diff) && strcmp(diff, "augment.std") == 0, "equal missed augment.std");
    // the default config also round-trips (every key, every type)
    config_defaults(&cfg);
    CHECK(config_write(&cfg, path, err) == 0, "%s", err);
    CHECK(config_load(&cfg2, path, 0, NULL, err) == 0, "%s", err);
    CHECK(strcmp(cfg2.param_dtype, "fp32") == 0, "auto resolved for cpu");
    snprintf(cfg.param_dtype, CFG_NAME, "fp32");
    CHECK(config_equal(&cfg, &cfg2, &diff), "defaults round trip differs at %s", diff ? diff : "?");
}

// DINOv3 Gram anchoring keys: the official vit7b16_gram_anchor values read as written, the weight schedules,
// YAML nulls (values and the `loss_weight_schedule: null` sub-section), the round trip, and the refusals.
TEST(gram_anchoring_keys) {
    const char *dir = test_tmpdir();
    char err[DINO_ERRLEN] = "";
    char full[8192];
    snprintf(full, sizeof full,
             "base: %s\n"
             "student:\n  patch_size: 16\n"
             "optim:\n  epochs: 1200\n"
             "train:\n  OFFICIAL_EPOCH_LENGTH: 1000\n"
             "dino:\n  global_ignore_diagonal: true\n  reweight_dino_local_loss: true\n"
             "  local_loss_weight_schedule:\n    start: 1\n    peak: 1\n    end: 0.5\n"
             "    warmup_epochs: 1000\n    cosine_epochs: 1\n"
             "gram:\n  use_loss: true\n  loss_weight: 1.0\n  ckpt: /runs/a/checkpoints/ckpt_1000000\n"
             "  it_load_ema_teacher: -1\n  rep_update: true\n  update_frequency: 10000\n"
             "  it_first_update: 1010000\n  max_updates: 3\n  normalized: true\n  img_level: true\n"
             "  remove_neg: false\n  remove_only_teacher_neg: false\n  tokens_used: all\n"
             "  global_teacher_resize_method: bicubic\n  global_teacher_resize_antialias: false\n"
             "  loss_weight_schedule:\n    start: 0\n    peak: 0\n    end: 2.0\n    warmup_epochs: 1000\n"
             "    cosine_epochs: 1\n"
             "crops:\n  global_crops_size: 256\n  local_crops_size: 112\n  gram_teacher_crops_size: 512\n"
             "  gram_teacher_no_distortions: true\n",
             test_src_path("configs/demo.yaml"));
    const char *base = write_file(dir, "gram.yaml", full);
    CHECK(load(base, 0, NULL, err) == 0, "%s", err);
    CHECK(cfg.gram.use_loss && cfg.gram.update_frequency == 10000 && cfg.gram.it_first_update == 1010000 &&
              cfg.gram.max_updates == 3 && cfg.gram.img_level && cfg.crops.gram_teacher_crops_size == 512 &&
              cfg.crops.gram_teacher_no_distortions && strcmp(cfg.gram.ckpt, "/runs/a/checkpoints/ckpt_1000000") == 0,
          "gram keys not read");
    // the schedules: 0 for 1000 epochs, then a one-epoch cosine to 2.0 (the local weight to 0.5), then held
    CHECK(config_gram_weight_at(&cfg, 999999) == 0 && config_gram_weight_at(&cfg, 1000000) == 0, "Gram weight before");
    CHECK_CLOSE(config_gram_weight_at(&cfg, 1000499), 1.0 - cos(M_PI * 499 / 999), 1e-12, 0);
    CHECK_CLOSE(config_gram_weight_at(&cfg, 1000999), 2.0, 1e-12, 0);
    CHECK_CLOSE(config_gram_weight_at(&cfg, 1100000), 2.0, 1e-12, 0);
    CHECK_CLOSE(config_dino_local_weight_at(&cfg, 5), 1.0, 1e-12, 0);
    CHECK_CLOSE(config_dino_local_weight_at(&cfg, 1000999), 0.5, 1e-12, 0);
    SslConfig sc;
    CHECK(config_to_ssl(&cfg, &sc, err) == 0, "%s", err);
    CHECK(sc.gram && sc.gram_crop == 512 && sc.gram_img_level && sc.gram_normalize && sc.gram_neg_mode == 0 &&
              sc.reweight_dino_local, "ssl config");
    LoaderConfig lc;
    config_to_loader(&cfg, 0, 1, &lc);
    CHECK(lc.aug.gram_size == 512 && lc.aug.gram_no_distortions, "loader: Gram crops %d", lc.aug.gram_size);
    // round trip, nulls included
    char path[4200];
    snprintf(path, sizeof path, "%s/resolved.yaml", dir);
    char *ov[] = {"gram.max_updates=null", "crops.gram_teacher_crops_size=null"};
    CHECK(load(base, 2, ov, err) == 0, "%s", err);
    CHECK(cfg.gram.max_updates == -1 && cfg.crops.gram_teacher_crops_size == -1, "nulls");
    config_to_loader(&cfg, 0, 1, &lc);
    CHECK(lc.aug.gram_size == 256, "null Gram crop size = the global one, got %d", lc.aug.gram_size);
    CHECK(config_write(&cfg, path, err) == 0, "%s", err);
    CHECK(config_load(&cfg2, path, 0, NULL, err) == 0, "%s", err);
    const char *diff = NULL;
    CHECK(config_equal(&cfg, &cfg2, &diff), "round trip differs at %s", diff ? diff : "?");
    // `loss_weight_schedule: null` (the official default) over a base that has one: no schedule, loss_weight
    char over[8192];
    snprintf(over, sizeof over, "base: %s\ngram:\n  loss_weight: 0.7\n  loss_weight_schedule: null\n", base);
    const char *p = write_file(dir, "null_sched.yaml", over);
    CHECK(load(p, 0, NULL, err) == 0, "%s", err);
    CHECK(isnan(cfg.gram.loss_weight_schedule.start) && isnan(cfg.gram.loss_weight_schedule.end), "schedule not reset");
    CHECK_CLOSE(config_gram_weight_at(&cfg, 1100000), 0.7, 1e-12, 0);
    // off: weight 0, no Gram crops
    char *off[] = {"gram.use_loss=false"};
    CHECK(load(base, 1, off, err) == 0, "%s", err);
    config_to_loader(&cfg, 0, 1, &lc);
    CHECK(config_gram_weight_at(&cfg, 1100000) == 0 && lc.aug.gram_size == 0, "Gram off");
    // refusals, each naming its key
    const struct {
        const char *ov, *key;
    } bad[] = {{"gram.ckpt=", "gram.it_load_ema_teacher"},
               {"gram.tokens_used=masked", "gram.tokens_used"},
               {"gram.remove_neg=true", "gram.remove_neg"}, // with remove_only_teacher_neg below
               {"gram.loss_weight_schedule.end=null", "gram.loss_weight_schedule.start"},
               {"crops.gram_teacher_crops_size=200", "crops.gram_teacher_crops_size"},
               {"crops.gram_teacher_crops_size=520", "crops.gram_teacher_crops_size"},
               {"dino.global_ignore_diagonal=false", "dino.global_ignore_diagonal"},
               {"gram.ema_teacher=true", "gram.ema_teacher"},
               {"gram.max_updates=-2", "gram.max_updates"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *o[2] = {(char *)bad[i].ov, "gram.remove_only_teacher_neg=true"};
        int n_o = strcmp(bad[i].key, "gram.remove_neg") == 0 ? 2 : 1;
        CHECK(load(base, n_o, o, err) != 0 && strstr(err, bad[i].key), "%s accepted or misnamed: %s", bad[i].ov, err);
    }
    // several crop size pairs (the high-resolution phase's lists): not with Gram anchoring
    char *pairs[] = {"crops.global_crops_size=[256, 512]", "crops.local_crops_size=[112, 224]",
                     "crops.global_local_crop_pairs_ratios=[0.5, 0.5]"};
    CHECK(load(base, 3, pairs, err) != 0 && strstr(err, "gram.use_loss") && strstr(err, "pairs"), "accepted: %s", err);
}

TEST(lr_scaling_rule) {
    char err[DINO_ERRLEN] = "";
    CHECK(load(test_src_path("configs/vitl14.yaml"), 0, NULL, err) == 0, "%s", err);
    // the reference run: 96 GPUs x 32 = 3072 -> 2e-4 * sqrt(3) = 3.464e-4
    CHECK_CLOSE(config_scaled_lr(&cfg, 96), 3.4641016e-4, 1e-10, 1e-6);
    CHECK_CLOSE(config_scaled_lr(&cfg, 1), 2e-4 * sqrt(32.0 / 1024.0), 0, 1e-12);
    CHECK_CLOSE(config_scaled_lr(&cfg, 32), 2e-4, 0, 1e-12); // 32 x 32 = 1024
    config_apply_lr_scaling(&cfg, 96);
    CHECK_CLOSE(cfg.optim.lr, 3.4641016e-4, 1e-10, 1e-6);
    char *lin[] = {"optim.scaling_rule=linear_wrt_256", "optim.base_lr=0.0005"};
    CHECK(load(test_src_path("configs/vitl14.yaml"), 2, lin, err) == 0, "%s", err);
    CHECK_CLOSE(config_scaled_lr(&cfg, 8), 0.0005 * 256 / 256.0, 0, 1e-12); // 8 x 32 = 256
    CHECK_CLOSE(config_scaled_lr(&cfg, 16), 0.001, 0, 1e-12);
    char *none[] = {"optim.scaling_rule=none"};
    CHECK(load(test_src_path("configs/vitl14.yaml"), 1, none, err) == 0, "%s", err);
    CHECK(config_scaled_lr(&cfg, 64) == 2e-4, "none keeps base_lr");
}

TEST(configuration_doc_lists_every_key) {
    FILE *f = fopen(test_src_path("docs/configuration.md"), "rb");
    CHECK(f != NULL, "docs/configuration.md missing");
    if (!f) return;
    static char doc[1 << 17];
    size_t n = fread(doc, 1, sizeof doc - 1, f);
    doc[n] = 0;
    fclose(f);
    for (int i = 0; i < config_n_keys(); i++) {
        char want[128];
        snprintf(want, sizeof want, "| `%s` |", config_key_name(i));
        CHECK(strstr(doc, want), "docs/configuration.md does not describe %s", config_key_name(i));
    }
}

TEST(backbone_from_config) {
    char err[DINO_ERRLEN] = "";
    VitConfig v;
    CHECK(load(test_src_path("configs/demo.yaml"), 0, NULL, err) == 0, "%s", err);
    CHECK(config_to_vit(&cfg, &v, err) == 0, "%s", err);
    CHECK(v.dim == 96 && v.depth == 3 && v.heads == 3 && v.ffn == VIT_FFN_MLP && v.ffn_hidden == 4 * 96, "demo vit %dx%d/%d ffn %d",
          v.dim, v.depth, v.heads, v.ffn_hidden);
    CHECK(v.patch == 16 && v.img_size == 112 && v.n_registers == 0, "demo geometry");
    CHECK(v.drop_path_rate == 0.1 && v.layerscale == 1.0f && v.interpolate_offset == 0.1f, "demo scalars");
    CHECK(load(test_src_path("configs/vitl14.yaml"), 0, NULL, err) == 0, "%s", err);
    VitConfig ref;
    CHECK(vit_config_from_arch(&ref, "vit_large", 14, 224, 0, "swiglufused", err) == 0, "%s", err);
    CHECK(config_to_vit(&cfg, &v, err) == 0, "%s", err);
    CHECK(v.dim == ref.dim && v.depth == ref.depth && v.heads == ref.heads && v.ffn == VIT_FFN_SWIGLU &&
              v.ffn_hidden == ref.ffn_hidden,
          "vitl14: %d %d %d %d vs %d", v.dim, v.depth, v.heads, v.ffn_hidden, ref.ffn_hidden);
    CHECK(v.drop_path_rate == 0.4, "vitl14 drop path (kept double, not narrowed to float)");
    // a width override keeps the SwiGLU rounding of the reference: vit_base is 768 wide
    char *ov[] = {"student.arch=vit_small", "student.embed_dim=768", "student.num_heads=12"};
    CHECK(load(test_src_path("configs/vitl14.yaml"), 3, ov, err) == 0, "%s", err);
    CHECK(vit_config_from_arch(&ref, "vit_base", 14, 224, 0, "swiglufused", err) == 0, "%s", err);
    CHECK(config_to_vit(&cfg, &v, err) == 0 && v.dim == 768 && v.depth == 12 && v.ffn_hidden == ref.ffn_hidden,
          "override hidden %d vs %d", v.ffn_hidden, ref.ffn_hidden);
    char *reg[] = {"student.num_register_tokens=4", "student.interpolate_antialias=true", "student.interpolate_offset=0.0"};
    CHECK(load(test_src_path("configs/vits14.yaml"), 3, reg, err) == 0, "%s", err);
    CHECK(config_to_vit(&cfg, &v, err) == 0 && v.n_registers == 4 && v.interpolate_antialias && v.interpolate_offset == 0,
          "registers");
}

TEST(resolved_config_saved_in_output_dir) {
    char err[DINO_ERRLEN] = "", ov[4300], path[4400];
    snprintf(ov, sizeof ov, "train.output_dir=%s/runs/a/b", test_tmpdir());
    char *ovs[] = {ov};
    CHECK(load(test_src_path("configs/dino-vits16-path.yaml"), 1, ovs, err) == 0, "%s", err);
    config_apply_lr_scaling(&cfg, 4);
    CHECK_CLOSE(cfg.optim.lr, 0.0005, 0, 1e-12); // 64 x 4 = 256 images, linear rule
    CHECK(config_save_resolved(&cfg, err) == 0, "%s", err);
    config_output_path(&cfg, "config.yaml", path, sizeof path);
    CHECK(config_load(&cfg2, path, 0, NULL, err) == 0, "%s", err);
    const char *diff = NULL;
    CHECK(config_equal(&cfg, &cfg2, &diff), "differs at %s", diff ? diff : "?");
    config_output_path(&cfg, "/abs/m.jsonl", path, sizeof path);
    CHECK(strcmp(path, "/abs/m.jsonl") == 0, "absolute paths stay");
}

// Our defaults must be the modules' defaults: the keys and the module structs describe the same recipe.
TEST(module_settings_match_module_defaults) {
    char err[DINO_ERRLEN] = "";
    config_defaults(&cfg);
    snprintf(cfg.param_dtype, CFG_NAME, "fp32");
    CHECK(config_validate(&cfg, err) == 0, "%s", err);

    SslConfig s, ref;
    CHECK(config_to_ssl(&cfg, &s, err) == 0, "%s", err);
    ssl_config_default(&ref, &s.vit);
    CHECK(s.dino_head.in_dim == ref.dino_head.in_dim && s.dino_head.hidden == ref.dino_head.hidden &&
              s.dino_head.bottleneck == ref.dino_head.bottleneck && s.dino_head.K == ref.dino_head.K &&
              s.dino_head.nlayers == ref.dino_head.nlayers,
          "dino head");
    CHECK(memcmp(&s.ibot_head, &ref.ibot_head, sizeof s.ibot_head) == 0 && s.ibot_separate_head == ref.ibot_separate_head,
          "ibot head");
    CHECK(s.batch == ref.batch && s.n_local == ref.n_local && s.global_crop == ref.global_crop &&
              s.local_crop == ref.local_crop && s.centering == ref.centering,
          "batch/crops/centering");
    CHECK(s.student_temp == ref.student_temp && s.center_momentum == ref.center_momentum &&
              s.dino_loss_weight == ref.dino_loss_weight && s.ibot_loss_weight == ref.ibot_loss_weight &&
              s.koleo_loss_weight == ref.koleo_loss_weight && s.use_kde == ref.use_kde &&
              s.kde_loss_weight == ref.kde_loss_weight && s.kde_kappa == ref.kde_kappa,
          "losses");
    CHECK(s.clip_grad == ref.clip_grad && s.adamw_beta1 == ref.adamw_beta1 && s.adamw_beta2 == ref.adamw_beta2 &&
              s.adamw_eps == ref.adamw_eps && s.layerwise_decay == ref.layerwise_decay &&
              s.patch_embed_lr_mult == ref.patch_embed_lr_mult,
          "optimizer");

    ScheduleConfig sc = config_to_schedule(&cfg, 16), sref = schedule_config_default(0.004, 64 * 16);
    CHECK(sc.lr == sref.lr && sc.min_lr == sref.min_lr && sc.weight_decay == sref.weight_decay &&
              sc.weight_decay_end == sref.weight_decay_end && sc.momentum_teacher == sref.momentum_teacher &&
              sc.final_momentum_teacher == sref.final_momentum_teacher &&
              sc.warmup_teacher_temp == sref.warmup_teacher_temp && sc.teacher_temp == sref.teacher_temp &&
              sc.epochs == sref.epochs && sc.warmup_epochs == sref.warmup_epochs &&
              sc.warmup_teacher_temp_epochs == sref.warmup_teacher_temp_epochs &&
              sc.freeze_last_layer_epochs == sref.freeze_last_layer_epochs && sc.epoch_length == sref.epoch_length,
          "schedule");

    LoaderConfig lc, lref;
    config_to_loader(&cfg, 2, 8, &lc);
    loader_config_default(&lref);
    CHECK(lc.rank == 2 && lc.world == 8 && lc.batch_size == 64 && lc.patch_size == 16 && lc.n_threads == 10, "loader");
    CHECK(lc.prefetch == lref.prefetch && lc.mask_probability == lref.mask_probability &&
              lc.mask_ratio[0] == lref.mask_ratio[0] && lc.mask_ratio[1] == lref.mask_ratio[1] &&
              lc.max_corrupt_fraction == lref.max_corrupt_fraction && lc.corrupt_min_reads == lref.corrupt_min_reads,
          "loader defaults");
    // augmentation: everything but the local crop side (the reference default 96 vs the /14 presets' 98)
    AugmentConfig a = lc.aug, b = lref.aug;
    CHECK(a.local_size == 96 && b.local_size == 98, "local sizes %d %d", a.local_size, b.local_size);
    a.local_size = b.local_size;
    CHECK(memcmp(&a, &b, sizeof a) == 0, "augmentation defaults differ from augment_config_default");

    // and the mappings follow the keys
    char *ov[] = {"dino.regularizer=kde", "ibot.separate_head=true", "ibot.head_n_prototypes=4096",
                  "train.centering=sinkhorn_knopp", "augment.hed_p=0.5", "augment.vflip_p=0.5",
                  "augment.crop_without_resize=true", "ibot.loss_weight=0", "optim.scaling_rule=none"};
    CHECK(load(test_src_path("configs/vits14.yaml"), 9, ov, err) == 0, "%s", err);
    CHECK(config_to_ssl(&cfg, &s, err) == 0, "%s", err);
    CHECK(s.use_kde && s.koleo_loss_weight == 0 && s.ibot_separate_head && s.ibot_head.K == 4096 &&
              s.dino_head.K == 65536 && s.centering == CENTERING_SINKHORN && s.ibot_loss_weight == 0 &&
              s.vit.patch == 14 && s.local_crop == 98,
          "ssl mapping");
    config_to_loader(&cfg, 0, 1, &lc);
    CHECK(lc.aug.hed_p == 0.5 && lc.aug.vflip_p == 0.5 && lc.aug.no_resize && lc.aug.local_size == 98, "aug mapping");
    CHECK(lc.mask_probability == 0, "no iBOT, no masks");
    CHECK(config_to_schedule(&cfg, 64).lr == cfg.optim.base_lr, "scaling rule none");
}

// config_load_string: the resolved YAML a checkpoint keeps reads back to the same config without a file;
// its messages name the text, a base in it is relative to the current directory.
TEST(load_from_a_string) {
    char err[DINO_ERRLEN];
    CHECK(config_load(&cfg, test_src_path("configs/demo.yaml"), 0, NULL, err) == 0, "%s", err);
    char *yaml = config_to_yaml(&cfg);
    CHECK(config_load_string(&cfg2, yaml, "ckpt/state.json (config)", 0, NULL, err) == 0, "%s", err);
    const char *diff = NULL;
    CHECK(config_equal(&cfg, &cfg2, &diff), "differs at %s", diff ? diff : "?");
    free(yaml);
    char *ov[] = {"optim.base_lr=0.5"};
    CHECK(config_load_string(&cfg2, "student:\n  arch: vit_base\n", "text", 1, ov, err) == 0 &&
              !strcmp(cfg2.student.arch, "vit_base") && cfg2.optim.base_lr == 0.5,
          "keys and overrides: %s", err);
    CHECK(config_load_string(&cfg2, "optim:\n  base_lrr: 0.1\n", "ckpt/state.json (config)", 0, NULL, err) != 0 &&
              strstr(err, "ckpt/state.json (config)") && strstr(err, "base_lr"),
          "message: %s", err);
    CHECK(config_load_string(&cfg2, "student: [\n", "text", 0, NULL, err) != 0 && strstr(err, "config text: YAML error"),
          "YAML error: %s", err);
    const char *dir = test_tmpdir();
    char base[4300], text[4400];
    snprintf(base, sizeof base, "%s", write_file(dir, "b.yaml", "optim:\n  base_lr: 0.25\n"));
    snprintf(text, sizeof text, "base: %s\nstudent:\n  arch: vit_large\n", base);
    CHECK(config_load_string(&cfg2, text, "text", 0, NULL, err) == 0 && cfg2.optim.base_lr == 0.25 &&
              !strcmp(cfg2.student.arch, "vit_large"),
          "base from a string: %s", err);
}

// crops.global_crops_size / local_crops_size take one size or a list of size pairs (high-resolution phase),
// with one ratio per pair; the resolved config reads back equal, and a single size is written as before.
TEST(crop_size_pairs_as_lists) {
    char err[DINO_ERRLEN] = "";
    const char *dir = test_tmpdir();
    const char *hr = write_file(dir, "hr.yaml",
                                "crops:\n  global_crops_size: [224, 448]\n  local_crops_size: [96, 192]\n"
                                "  global_local_crop_pairs_ratios: [0.7, 0.3]\nstudent:\n  patch_size: 16\n  img_size: 224\n");
    CHECK(load(hr, 0, NULL, err) == 0, "%s", err);
    CHECK(config_n_pairs(&cfg) == 2 && cfg.crops.global_crops_size.v[1] == 448 && cfg.crops.local_crops_size.v[1] == 192 &&
              cfg.crops.global_local_crop_pairs_ratios.v[0] == 0.7,
          "lists not read");
    CHECK(config_max_global_crop(&cfg) == 448 && config_img_size(&cfg) == 224, "max %d img %d",
          config_max_global_crop(&cfg), config_img_size(&cfg));
    Config back;
    char *y = config_to_yaml(&cfg);
    CHECK(strstr(y, "global_crops_size: [224, 448]"), "lists not written as lists");
    CHECK(config_load_string(&back, y, "resolved", 0, NULL, err) == 0, "%s", err);
    free(y);
    const char *diff = NULL;
    CHECK(config_equal(&cfg, &back, &diff), "read back differs at %s", diff ? diff : "?");
    SslConfig sc;
    LoaderConfig lc;
    CHECK(config_to_ssl(&cfg, &sc, err) == 0, "%s", err);
    config_to_loader(&cfg, 0, 1, &lc);
    CHECK(sc.n_pairs == 2 && sc.pair_global[1] == 448 && sc.pair_local[1] == 192 && sc.vit.img_size == 224, "ssl pairs");
    CHECK(lc.n_pairs == 2 && lc.pair_global[1] == 448 && lc.pair_ratio[1] == 0.3, "loader pairs");
    // without student.img_size the pos-embed grid is the largest global crop (the official's max)
    char *no_img[] = {"student.img_size=0"};
    CHECK(load(hr, 1, no_img, err) == 0 && config_img_size(&cfg) == 448, "img_size %d", config_img_size(&cfg));
    // one size: written as a scalar, as before lists
    CHECK(load(test_src_path("configs/demo.yaml"), 0, NULL, err) == 0, "%s", err);
    y = config_to_yaml(&cfg);
    CHECK(strstr(y, "global_crops_size: 112\n") && strstr(y, "global_local_crop_pairs_ratios: 1.0\n"), "scalar form lost");
    free(y);
    // mismatched lists are refused, naming the key
    CHECK_REFUSED(write_file(dir, "m.yaml", "crops:\n  global_crops_size: [224, 448]\n  local_crops_size: 96\n"), 0, NULL,
                  "crops.local_crops_size", "one local size per (global, local) pair");
    CHECK_REFUSED(write_file(dir, "r.yaml", "crops:\n  global_crops_size: [224, 448]\n  local_crops_size: [96, 96]\n"), 0,
                  NULL, "crops.global_local_crop_pairs_ratios", "1 ratios for 2 size pairs");
    CHECK_REFUSED(write_file(dir, "p.yaml", "crops:\n  global_crops_size: [224, 440]\n  local_crops_size: [96, 96]\n"
                                           "  global_local_crop_pairs_ratios: [1, 1]\n"),
                  0, NULL, "crops.global_crops_size", "440 is not a multiple of student.patch_size");
}
