// Fuzz harness: loading released or exported weights (train/pretrained.h, train/embed_model.h, docs/export.md).
// Input: parts separated by FUZZ_SEP (tests/fuzz/fuzz.h): model.safetensors, then config.json, then
// preprocessor_config.json (a part that is not there is a file that is not there).
//
// 1. pretrained_load of model.safetensors into a fixed small ViT (student.pretrained_weights), with and
//    without resampling the position embeddings (chosen by the input's length).
// 2. embed_model_open of the directory, as dinoembed and dinoeval open a model (naming detection, the
//    architecture inferred from the tensors, heads from config.json, preprocessing from
//    preprocessor_config.json or timm's pretrained_cfg), then what dinoembed does next with a crop it
//    accepts: one small tile preprocessed and embedded.
// Promises checked: a model that opens has a valid configuration and preprocessing (preprocess_check), and
// its features are computed without a sanitizer report.
#include <stdint.h>
#include <string.h>

#include "common/check.h"
#include "model/vit.h"
#include "tests/fuzz/fuzz.h"
#include "train/embed_model.h"
#include "train/pretrained.h"

static char dir[1024], weights_path[1100], config_path[1100], pre_path[1100];
static Vit vit;
static ParamTable tab;
static float *params;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_init_process();
    snprintf(dir, sizeof dir, "%s/export", fuzz_dir());
    FUZZ_SETUP(mkdir(dir, 0755) == 0, "mkdir");
    snprintf(weights_path, sizeof weights_path, "%s/model.safetensors", dir);
    snprintf(config_path, sizeof config_path, "%s/config.json", dir);
    snprintf(pre_path, sizeof pre_path, "%s/preprocessor_config.json", dir);
    // the model pretrained_load fills: width 32, 2 blocks, patch 4, 16 x 16 images, 4 registers
    VitConfig c;
    char err[DINO_ERRLEN];
    FUZZ_SETUP(vit_config_from_arch(&c, "vit_test", 4, 16, 4, "mlp", err) == 0, "vit_config_from_arch");
    param_table_init(&tab);
    vit_build(&vit, &c, &tab, "backbone.");
    params = dino_calloc(tab.total, sizeof(float));
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FuzzPart part[3];
    int n = fuzz_split(data, size, part, 3);
    const char *paths[3] = {weights_path, config_path, pre_path};
    for (int i = 0; i < 3; i++) {
        if (i < n) fuzz_write(paths[i], part[i].p, part[i].n);
        else unlink(paths[i]);
    }
    char err[DINO_ERRLEN] = "";

    // 1. a backbone initialised from the file
    PretrainedOptions opt = {.resample_pos_embed = (int)(size & 1)};
    ExportNaming naming;
    if (pretrained_load(&vit, &tab, "backbone.", params, weights_path, &opt, &naming, err) != 0) {
        FUZZ_CHECK(err[0] != 0, "pretrained_load: error without a message");
        FUZZ_NOTE("pretrained_load: %s", err);
    } else {
        FUZZ_NOTE("pretrained_load: %s naming", export_naming_name(naming));
    }

    // 2. the directory as an export
    EmbedModel m;
    err[0] = 0;
    if (embed_model_open(&m, dir, 0, "cpu", err) != 0) {
        FUZZ_CHECK(err[0] != 0, "embed_model_open: error without a message");
        FUZZ_NOTE("embed_model_open: %s", err);
        return 0;
    }
    FUZZ_CHECK(vit_config_check(&m.vit.cfg, err) == 0, "an opened model has a bad config: %s", err);
    FUZZ_CHECK(preprocess_check(&m.pre, "the opened model", err) == 0, "an opened model has bad preprocessing: %s", err);
    const int crop = m.pre.crop;
    FUZZ_NOTE("embed_model_open: width %d, depth %d, crop %d, resize %d", m.vit.cfg.dim, m.vit.cfg.depth, crop, m.pre.resize);
    // dinoembed refuses a crop that is not a multiple of the patch; sizes up to PREPROCESS_MAX_SIDE are
    // valid, but the large ones only cost time here
    const int small = crop <= 64 && m.pre.resize <= 96;
    if (vit_check_crop(&m.vit.cfg, crop, err) == 0 && small) {
        Image tile;
        image_alloc(&tile, 21, 13);
        for (int i = 0; i < 21 * 13 * 3; i++) tile.px[i] = (uint8_t)(i * 31);
        float *x = dino_malloc(sizeof(float) * 3 * (size_t)crop * crop);
        preprocess_image(&m.pre, &tile, x);
        float *cls = dino_malloc(sizeof(float) * (size_t)m.vit.cfg.dim), *mean = dino_malloc(sizeof(float) * (size_t)m.vit.cfg.dim);
        embed_batch(&m, x, 1, cls, mean);
        free(cls);
        free(mean);
        free(x);
        image_free(&tile);
    }
    embed_model_close(&m);
    return 0;
}
