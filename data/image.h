// An 8-bit RGB image in host memory, interleaved (h rows of w*3 bytes).
#pragma once
#include <stdint.h>

typedef struct {
    int w, h;
    uint8_t *px; // w*h*3 bytes, owned
} Image;

void image_alloc(Image *im, int w, int h);
void image_free(Image *im);
