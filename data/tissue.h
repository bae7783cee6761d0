// Tissue detection on a low-resolution view of a slide, and queries on the resulting mask: the fraction
// of tissue under a rectangle, and uniform sampling of tissue coordinates.
#pragma once
#include <stdint.h>

#include "common/rng.h"
#include "data/image.h"
#include "data/wsi.h"

typedef struct {
    int w, h;
    double downsample;  // level-0 pixels per mask pixel
    uint8_t *mask;      // w*h, 1 = tissue
    uint32_t *integral; // (w+1)*(h+1) summed-area table of mask
    int64_t tissue_px;  // number of tissue pixels
    int64_t *row_cum;   // h+1 running counts of tissue pixels by row (for sampling)
    int saturation_threshold; // the Otsu threshold used (0..255), for logs
} TissueMask;

// Tissue on an RGB image: Otsu threshold on HSV saturation (clamped to a sane range so that an
// all-tissue or all-glass image is not split in two), pixels that are very dark (black pen, dust,
// folds) or strongly blue/green (pen marks: H&E is pink to purple) removed, a morphological close,
// small holes filled and specks removed. mask: w*h bytes, 1 = tissue. Returns the threshold used.
int tissue_detect_rgb(const Image *im, uint8_t *mask);

// Computes the mask of a slide from a thumbnail at `downsample` level-0 pixels per mask pixel.
int tissue_mask_for_slide(Wsi *w, double downsample, TissueMask *tm, char *err);
// Wraps an existing mask (copied) and builds its tables. Used by tests and by tissue_mask_for_slide.
void tissue_mask_from(TissueMask *tm, const uint8_t *mask, int w, int h, double downsample);
void tissue_mask_free(TissueMask *tm);

// A mask downsample for a slide: about 8 microns per mask pixel, but at least 16 mask pixels across a
// tile of `tile_level0` level-0 pixels, and at most 4096 mask pixels along the longer side.
double tissue_mask_downsample(const Wsi *w, double tile_level0);

// Fraction of tissue under the level-0 rectangle [x0, x0+side) x [y0, y0+side) (outside the mask counts
// as background).
double tissue_fraction(const TissueMask *tm, double x0, double y0, double side_w, double side_h);
// A level-0 point drawn uniformly over the tissue area (uniform inside a uniformly chosen tissue mask
// pixel). Returns -1 when the mask has no tissue.
int tissue_sample_point(const TissueMask *tm, Rng *r, double *x, double *y);
