// The inference transform: see preprocess.h.
#include "data/preprocess.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "data/augment.h"

void preprocess_default(Preprocess *p, int img_size) {
    p->crop = img_size;
    p->resize = (int)lround(img_size * 256.0 / 224.0);
    const float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    memcpy(p->mean, mean, sizeof mean);
    memcpy(p->std, std, sizeof std);
}

int preprocess_check(const Preprocess *p, const char *what, char *err) {
    if (p->resize < 0 || p->resize > PREPROCESS_MAX_SIDE) {
        dino_seterr(err, "%s: resize %d is outside [0, %d] (0: none)", what, p->resize, PREPROCESS_MAX_SIDE);
        return -1;
    }
    if (p->crop < 1 || p->crop > PREPROCESS_MAX_SIDE) {
        dino_seterr(err, "%s: crop %d is outside [1, %d]", what, p->crop, PREPROCESS_MAX_SIDE);
        return -1;
    }
    for (int c = 0; c < 3; c++)
        if (!(p->mean[c] >= 0 && p->mean[c] <= 1) || !(p->std[c] >= 0.001f && p->std[c] <= 1)) {
            dino_seterr(err, "%s: mean %g / std %g of channel %d: the mean must be in [0, 1], the std in [0.001, 1]",
                        what, p->mean[c], p->std[c], c);
            return -1;
        }
    return 0;
}

void preprocess_image(const Preprocess *p, const Image *in, float *out) {
    Image tmp = {0};
    const Image *src = in;
    if (p->resize > 0) {
        // torchvision Resize(int): the shorter side becomes `resize`, the longer int(resize*long/short)
        int w, h;
        if (in->w <= in->h) {
            w = p->resize;
            h = (int)((int64_t)p->resize * in->h / in->w);
        } else {
            h = p->resize;
            w = (int)((int64_t)p->resize * in->w / in->h);
        }
        if (w != in->w || h != in->h) {
            image_alloc(&tmp, w, h);
            AugmentScratch *s = augment_scratch_new(NULL);
            aug_resize_bicubic_u8(in->px, in->w, in->h, in->w * 3, 0, 0, in->w, in->h, tmp.px, w, h, 0, s);
            augment_scratch_free(s);
            src = &tmp;
        }
    }
    const int C = p->crop;
    // torchvision CenterCrop: offsets int(round((size - crop) / 2)) (round half to even); a smaller
    // image is padded with zeros first, centred the same way.
    const int top = (int)nearbyint((src->h - C) / 2.0), left = (int)nearbyint((src->w - C) / 2.0);
    uint8_t *crop = dino_calloc((size_t)C * C, 3);
    for (int y = 0; y < C; y++) {
        int sy = y + top, x0 = left < 0 ? -left : 0, x1 = src->w - left < C ? src->w - left : C;
        if (sy < 0 || sy >= src->h || x1 <= x0) continue;
        memcpy(crop + ((size_t)y * C + x0) * 3, src->px + ((size_t)sy * src->w + x0 + left) * 3, (size_t)(x1 - x0) * 3);
    }
    aug_normalize_u8(crop, C, C, p->mean, p->std, out);
    free(crop);
    if (src == &tmp) image_free(&tmp);
}
