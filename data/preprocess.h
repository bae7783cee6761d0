// The reference's inference transform (torchvision Resize(bicubic) -> CenterCrop -> ToTensor ->
// Normalize on PIL images), for embedding and evaluation: an 8-bit RGB image in, the model's input
// [3, crop, crop] out. The resize is the augmentation's PIL-exact bicubic (data/augment_resample.c).
#pragma once
#include "data/image.h"

#define PREPROCESS_MAX_SIDE 8192 // resize and crop sizes above this are refused

typedef struct {
    int resize;       // shorter side before the center crop (0: no resize)
    int crop;         // center crop (the model's input size)
    float mean[3], std[3];
} Preprocess;

// For a model trained at img_size: resize to img_size*256/224 (rounded), center crop img_size,
// ImageNet mean/std.
void preprocess_default(Preprocess *p, int img_size);
// resize in [0, PREPROCESS_MAX_SIDE], crop in [1, PREPROCESS_MAX_SIDE], mean in [0, 1], std in
// [0.001, 1] (statistics of pixels scaled to [0, 1]), all finite. Returns 0, or -1 with err
// "<what>: <field> ...".
int preprocess_check(const Preprocess *p, const char *what, char *err);
// Resize (the shorter side becomes `resize`, the longer int(resize * long / short), PIL bicubic) ->
// center crop (offsets rounded half to even; an image smaller than the crop is padded with zeros,
// centred the same way) -> to [0, 1] -> normalize, into out[3][crop][crop] (CHW). Thread-safe.
void preprocess_image(const Preprocess *p, const Image *in, float *out);
