// Using a trained backbone: feature extraction with the reference's inference preprocessing, and
// the evaluations of features on a labeled tile set (k-NN as the reference's knn.py, linear probe).
// Shared by tools/dinoembed, tools/dinoeval and (later) the trainer's periodic k-NN.
//
// NOTE: image decoding and preprocessing here are a minimal own implementation (JPEG via turbojpeg,
// PNG via libpng; PIL-style antialiased bicubic resize) until data/augment and data/source provide
// them; they are used only for inference.
#pragma once
#include <stdint.h>

#include "data/image.h"
#include "model/backend.h"
#include "model/params.h"
#include "model/vit.h"

// ---- images and tile sets ---------------------------------------------------------------------------
// Decodes a JPEG or PNG file to RGB. Returns 0, or -1 with err naming the file.
int image_load_file(const char *path, Image *out, char *err);
// Resizes (PIL-style antialiased bicubic, A = -0.5, rounded to 8 bits after each pass as PIL does).
void image_resize_bicubic(const Image *in, Image *out, int w, int h);

typedef struct {
    char **paths;   // n image paths
    int *labels;    // n class ids (-1 when unlabeled)
    int n;
    char **classes; // n_classes class names (sorted; ids index this)
    int n_classes;
} TileSet;

// Opens a set of tiles: a folder (images directly inside it: unlabeled; sub-folders with images:
// one class per sub-folder, sorted by name), a CSV/list file (`path` or `path,label` per line;
// relative paths are relative to the list's folder; a first line "path,label" is a header), or
// "folder:DIR" / "list:FILE". Images: .jpg .jpeg .png. Files are sorted by path. Returns 0 or -1.
int tileset_open(TileSet *s, const char *spec, int need_labels, char *err);
// Uses `classes` (from the training set) as the class list of s (labels remapped; a class unknown
// to `classes` is an error).
int tileset_align_classes(TileSet *s, char **classes, int n_classes, char *err);
// Splits s into train and test: in every class, a fraction `test_fraction` of its tiles (at least one
// when the class has two or more) go to test, chosen by a permutation keyed by (seed, class).
void tileset_split(const TileSet *s, double test_fraction, uint64_t seed, TileSet *train, TileSet *test);
void tileset_free(TileSet *s);

// ---- the backbone as a feature extractor ------------------------------------------------------------
typedef struct {
    int resize;       // shorter side before the center crop (0: no resize)
    int crop;         // center crop (the model's input size)
    float mean[3], std[3];
} Preprocess;

// The reference's inference transform for a model trained at img_size: resize to img_size*256/224
// (bicubic), center crop img_size, ImageNet mean/std.
void preprocess_default(Preprocess *p, int img_size);
// Resize -> center crop -> to [0,1] -> normalize, into out[3, crop, crop] (CHW).
void preprocess_image(const Preprocess *p, const Image *in, float *out);

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

// Opens an exported directory (model.safetensors in any naming + config.json [+ preprocessor_config.json]),
// or a bare safetensors file, on `backend` ("cpu", "cuda", "auto": model/backend_open.h). heads > 0
// overrides the head count. Returns 0 or -1 with err set.
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
// Features of every tile in s, in batches of `batch`: out[s->n, feature_dim]. Unreadable tiles are an
// error. Returns 0 or -1.
int embed_tileset(EmbedModel *m, const TileSet *s, FeatureKind kind, int batch, float *out, char *err);

// ---- evaluation ---------------------------------------------------------------------------------------
typedef struct {
    double accuracy;           // fraction of test items predicted right
    double balanced_accuracy;  // mean over classes present in the test set of per-class recall
} EvalScores;

// The trainer's periodic check (evaluation.eval_period_iterations): k-NN of m's CLS features, training
// set train_spec, test set test_spec (labeled tile sets as tileset_open), T = 0.07. scores[i] for k = ks[i].
int eval_knn_tilesets(EmbedModel *m, const char *train_spec, const char *test_spec, const int *ks, int n_k,
                      int batch, EvalScores *scores, char *err);

void eval_scores(const int *pred, const int *truth, int n, int n_classes, EvalScores *out);
void l2_normalize_rows(float *x, int n, int D);

// Weighted k-NN as the reference's knn.py: rows L2-normalized by the caller; similarity = cosine;
// the k most similar train rows vote with weight exp(sim / T); the class with the largest total wins
// (ties: the lower class id). pred[n_test].
void knn_predict(const float *train, const int *ytrain, int n_train, const float *test, int n_test, int D,
                 int n_classes, int k, float T, int *pred);

// Linear probe: multinomial logistic regression on features standardized with the training set's
// mean and std, loss = mean cross-entropy + lambda/2 |W|^2 (bias not decayed), minimised by full-batch
// L-BFGS (memory 10, backtracking Armijo line search). lambda is chosen among `lambdas` by accuracy on
// a held-out 20% of the training set (per class, keyed by seed), then the probe is refit on the whole
// training set. pred[n_test]; *chosen_lambda is set.
void linear_probe(const float *train, const int *ytrain, int n_train, const float *test, int n_test, int D,
                  int n_classes, const double *lambdas, int n_lambdas, uint64_t seed, int *pred,
                  double *chosen_lambda);
