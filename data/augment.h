// DINOv2 multi-crop augmentation (dinov2/data/augmentations.py on PIL images, torchvision 0.14), in C.
//
// Per source image: 2 global crops + n_local local crops. Per crop, in this order:
//   RandomResizedCrop (bicubic, PIL-exact) -> hflip -> [pathology: vflip, rot90, HED jitter]
//   -> ColorJitter (p 0.8, the 4 ops in random order) -> RandomGrayscale -> GaussianBlur 9x9
//   -> Solarize (global crop 2 only) -> ToTensor + Normalize (planar float [3][S][S]).
// All random draws of a crop are made first, into a CropPlan, from an Rng keyed by
// (seed, global sample index, crop index): the same key gives the same crop whatever thread runs it.
// The pixel ops on 8-bit interleaved RGB follow Pillow 9 / torchvision 0.14 semantics exactly (same
// fixed-point resampling, same truncations), see docs/augmentation.md and tests/test_augment.c.
#pragma once
#include <stdint.h>

#include "common/rng.h"
#include "data/image.h"

typedef struct {
    int global_size;          // 224
    double global_scale[2];   // RandomResizedCrop area range, global crops: 0.32 .. 1.0
    int local_size;           // 98
    double local_scale[2];    // 0.05 .. 0.32
    int n_local;              // 8
    double ratio[2];          // aspect range 3/4 .. 4/3 (drawn log-uniform)
    double hflip_p;           // 0.5
    double jitter_p;          // 0.8: ColorJitter applied with this probability
    double brightness, contrast, saturation, hue; // 0.4 0.4 0.2 0.1
    double gray_p;            // 0.2
    // Blur apply probabilities for global crop 1, global crop 2, local crops. The reference code
    // inverts its arguments, so its released models used 0.0 / 0.9 / 0.5 (the defaults here); the
    // intended DINO values are 1.0 / 0.1 / 0.5 (see docs/augmentation.md).
    double blur_p[3];
    double blur_sigma[2];     // 0.1 .. 2.0
    int blur_kernel;          // 9 (odd)
    double solarize_p;        // 0.2, global crop 2 only
    int solarize_threshold;   // 128: pixels >= threshold become 255 - v
    float mean[3], std[3];    // ImageNet mean / std
    // Pathology options, all off by default.
    double vflip_p;           // vertical flip probability
    int rot90;                // 1: rotate by a random multiple of 90 degrees
    double hed_p;             // HED stain jitter probability
    double hed_scale;         // per-channel stain factor ~ U[1 - s, 1 + s]
    double hed_shift;         // per-channel stain offset ~ U[-s, s] (optical-density units)
    int no_resize;            // 1: random crop of the target size, no resize (exact copies)
    // Extended-context translation (Virchow2, Zimmermann et al. 2024): every crop (global and local)
    // is a box of about its output size (area out_size^2 * U[ect_scale], aspect log-uniform in
    // ect_ratio), at a uniform position inside a tile that is larger than the crops (the source reads
    // the extended region), resized to out_size: translations with a slight scale/aspect jitter, no
    // zoom. A box larger than the tile is clamped to the tile's sides. Off by default.
    int ect;
    double ect_scale[2];      // 0.9 .. 1.1: box area / out_size^2
    double ect_ratio[2];      // 0.95 .. 1.05: box width / height
    // DINOv3 Gram anchoring (crops.gram_teacher_crops_size / gram_teacher_no_distortions): 0 = off, else
    // the side of the Gram teacher's copy of each global crop (same box and flips, resized to this size).
    int gram_size;
    int gram_no_distortions;  // 1: that copy gets no colour distortion (jitter, grayscale, blur, solarize, HED)
} AugmentConfig;

void augment_config_default(AugmentConfig *c);
// 0, or -1 with err naming the bad field.
int augment_config_check(const AugmentConfig *c, char *err);

typedef struct { int top, left, h, w; } CropBox;

// Every random decision of one crop.
typedef struct {
    CropBox box;
    int out_size;
    int hflip, vflip, rot90;  // rot90 = number of counter-clockwise quarter turns (0..3)
    int jitter;               // colour jitter applied?
    int order[4];             // 0 brightness, 1 contrast, 2 saturation, 3 hue (torch.randperm(4))
    float brightness, contrast, saturation, hue; // factors (float32 like torch.empty(1).uniform_)
    int gray;
    int blur;
    float sigma;
    int solarize;
    int hed;
    float hed_alpha[3], hed_beta[3];
} CropPlan;

// torchvision RandomResizedCrop.get_params with uniforms drawn from `uniform(ctx)` in [0,1) (torch's
// three uniform_/randint draws per try become uniform() calls; randint(0, n) = floor(u * n)).
void rrc_params(int w, int h, const double scale[2], const double ratio[2],
                double (*uniform)(void *ctx), void *ctx, CropBox *out);
double rrc_uniform_from_rng(void *rng); // adapter: ctx is an Rng *

// The ECT box of a crop of side `size` in a w x h tile (4 draws from rng, always).
void ect_params(const AugmentConfig *c, int size, int w, int h, Rng *rng, CropBox *out);
// Plans crop `crop` (0, 1 = globals, 2.. = locals) of a w x h image.
void augment_plan_crop(const AugmentConfig *c, int crop, int w, int h, Rng *rng, CropPlan *p);
// The Gram teacher's crop of global crop `global` (0 or 1): the same geometry (box, flips, rotation) at
// c->gram_size, with the global crop's colour distortions unless c->gram_no_distortions.
void augment_plan_gram(const AugmentConfig *c, const CropPlan *global, CropPlan *out);
// Plans all 2 + n_local crops of global sample `sample`: crop k uses rng_make(seed, AUG, sample, k).
void augment_plan_sample(const AugmentConfig *c, uint64_t seed, int64_t sample, int w, int h,
                         CropPlan *plans);

typedef struct AugmentScratch AugmentScratch;
// Buffers one thread reuses for every crop; c may be NULL for a scratch that only serves the single ops
// below (aug_resize_bicubic_u8, aug_gaussian_blur_u8).
AugmentScratch *augment_scratch_new(const AugmentConfig *c);
void augment_scratch_free(AugmentScratch *s);

// Runs one planned crop on `src` and writes the normalized planar crop out[3][S][S].
void augment_apply(const AugmentConfig *c, const CropPlan *p, const Image *src, float *out,
                   AugmentScratch *s);

// Scaled decoding (e.g. turbojpeg 1/2, 1/4, 1/8): the largest power-of-two reduction, up to
// max_scale, of the source such that every planned crop still spans at least its output size in
// reduced pixels (the resize still downsamples, so little is lost). 1 when no reduction is safe.
int augment_decode_scale(const CropPlan *plans, int n, int max_scale);
// augment_apply on the source decoded at 1/scale: the crop box becomes the float box
// [left/scale, (left+w)/scale) of the reduced image (Pillow's resize(box=...) semantics), so the
// crops approximate the full-resolution ones.
void augment_apply_scaled(const AugmentConfig *c, const CropPlan *p, const Image *src, int scale, float *out,
                          AugmentScratch *s);

// ---- the individual ops (8-bit interleaved RGB, Pillow semantics), exposed for tests -------------

// PIL Image.resize(BICUBIC) of the region [x0,x1) x [y0,y1) of a sw x sh image (row stride in bytes)
// to dw x dh; with the region equal to a cropped image this is img.crop(box).resize(size, BICUBIC).
// hflip mirrors the output horizontally (free inside the horizontal pass).
void aug_resize_bicubic_u8(const uint8_t *src, int sw, int sh, int stride, double x0, double y0, double x1,
                       double y1, uint8_t *dst, int dw, int dh, int hflip, AugmentScratch *s);
void aug_flip_h_u8(uint8_t *px, int w, int h);
void aug_flip_v_u8(uint8_t *px, int w, int h);
void aug_rot90_u8(const uint8_t *src, uint8_t *dst, int size, int quarter_turns); // square images
void aug_adjust_brightness_u8(uint8_t *px, int n, float factor);           // n = pixel count
void aug_adjust_contrast_u8(uint8_t *px, int n, float factor);
void aug_adjust_saturation_u8(uint8_t *px, int n, float factor);
void aug_adjust_hue_u8(uint8_t *px, int n, float hue_factor);              // hue_factor in [-0.5, 0.5]
void aug_grayscale_u8(uint8_t *px, int n);                                 // PIL "L", replicated x3
void aug_gaussian_blur_u8(uint8_t *px, int w, int h, int ksize, float sigma, AugmentScratch *s);
void aug_solarize_u8(uint8_t *px, int n, int threshold);
void aug_hed_jitter_u8(uint8_t *px, int n, const float alpha[3], const float beta[3]);
// ToTensor + Normalize: interleaved u8 [h][w][3] -> planar float [3][h][w].
void aug_normalize_u8(const uint8_t *px, int w, int h, const float mean[3], const float std[3], float *out);
