#include "data/image.h"

#include "common/check.h"

void image_alloc(Image *im, int w, int h) {
    DINO_ASSERT(w > 0 && h > 0, "image_alloc: bad size %dx%d", w, h);
    im->w = w;
    im->h = h;
    im->px = dino_malloc((size_t)w * (size_t)h * 3);
}

void image_free(Image *im) {
    free(im->px);
    im->px = NULL;
    im->w = im->h = 0;
}
