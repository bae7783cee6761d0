// A trained backbone as a feature extractor: an exported directory (dinoexport: model.safetensors in any
// naming + config.json [+ preprocessor_config.json]) or a bare safetensors file opened on a backend, or a
// model that lives elsewhere (the trainer's teacher); features of preprocessed images (the CLS token
// after the final norm and the mean of the patch tokens) and of whole tile sets. Used by dinoembed,
// dinoeval and the trainer's periodic k-NN (train/eval.h).
#pragma once
#include <stdint.h>

#include "data/image.h"
#include "data/preprocess.h"
#include "data/tileset.h"
#include "model/backend.h"
#include "model/params.h"
#include "model/vit.h"

typedef struct {
    Vit vit;
    ParamTable tab;
    float *params;   // backend memory
    Backend *be;
    int owns;        // 1 when embed_model_open allocated everything (freed by embed_model_close)
    Preprocess pre;
    char source[1024];
    void *acts;      // VitActs of the last batch size (private)
    int acts_B;
    float *dev_images; // backend buffer for acts_B images (private)
} EmbedModel;

// Opens an exported directory or a bare safetensors file on `backend` ("cpu", "cuda", "auto":
// model/backend_open.h). The head count: heads > 0, else config.json (num_attention_heads: HF;
// model_args.num_heads: timm; num_heads: ours), else the file's metadata or the width. The
// preprocessing: preprocessor_config.json (HF), else config.json's pretrained_cfg (timm: resize
// floor(size / crop_pct)), else the reference's for the model's img_size (preprocess_default). Values
// of both files are range-checked: an error names the file and the key. Returns 0 or -1 with err set.
int embed_model_open(EmbedModel *m, const char *path, int heads, const char *backend, char *err);
// Wraps a model that lives elsewhere (the trainer's teacher): nothing is copied or owned; vit and
// params (backend memory of be) must outlive m. Preprocessing: the reference's for img_size.
void embed_model_wrap(EmbedModel *m, Backend *be, const Vit *vit, const float *params);
void embed_model_close(EmbedModel *m);

typedef enum { FEAT_CLS = 0, FEAT_MEAN_PATCH = 1, FEAT_CLS_MEAN = 2 } FeatureKind;
int feature_kind_parse(const char *s, FeatureKind *k);
int feature_dim(const EmbedModel *m, FeatureKind k);

// Features of B preprocessed images (host, [B,3,crop,crop]): cls[B,D] (CLS after the final norm) and
// mean_patch[B,D] (mean of the patch tokens after the final norm, registers excluded); either may be NULL.
void embed_batch(EmbedModel *m, const float *images, int B, float *cls, float *mean_patch);

// Reads image i (0 <= i < n) into *out; 0, or -1 with err naming it. Called from several threads.
typedef int (*EmbedReadFn)(void *ctx, int64_t i, Image *out, char *err);
// Features of n images read by `read`, decoded in parallel and run in batches of `batch`:
// out[n, feature_dim]. An unreadable image is an error. Returns 0 or -1.
int embed_images(EmbedModel *m, int64_t n, EmbedReadFn read, void *ctx, FeatureKind kind, int batch, float *out,
                 char *err);
// embed_images of every tile of s (decoded by data/decode.h).
int embed_tileset(EmbedModel *m, const TileSet *s, FeatureKind kind, int batch, float *out, char *err);
