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

// ---- per-tile HSV filter (Midnight, Karasikov et al. 2025, after Virchow) ------------------------
// A tile is kept when at least min_fraction of its pixels lie in an HSV box typical of H&E tissue.
// Units are OpenCV's 8-bit HSV: hue = degrees / 2 in [0, 180), saturation and value in [0, 255].
// Published values: hue [90, 180], saturation [8, 255], value [103, 255], min_fraction 0.6 (pink to
// violet; white glass fails the saturation bound, black ink and folds the value bound, yellow-green
// ink and brown debris the hue bound). docs/data-sources.md.
typedef struct {
    double min_fraction; // 0 = filter off
    int hue[2];          // inclusive range, 0..180
    int saturation[2];   // inclusive range, 0..255
    int value[2];        // inclusive range, 0..255
} HsvFilter;

// Midnight's ranges with the filter off (min_fraction 0); set min_fraction 0.6 for Midnight's rule.
void hsv_filter_default(HsvFilter *f);
// 0, or -1 with err naming the bad field (`what` prefixes the message: a config key or a flag).
int hsv_filter_check(const HsvFilter *f, const char *what, char *err);
// OpenCV 8-bit HSV of one RGB pixel (cv::cvtColor COLOR_RGB2HSV: V = max, S = 255 (V - min) / V,
// H = hue degrees / 2, each rounded).
void rgb_to_hsv_cv(int r, int g, int b, int *h, int *s, int *v);
// Fraction of the pixels of im inside the filter's HSV box.
double tissue_hsv_fraction(const Image *im, const HsvFilter *f);
// 1 when the tile passes (always, when the filter is off).
int tissue_hsv_accept(const Image *im, const HsvFilter *f);

// Fraction of tissue under the level-0 rectangle [x0, x0+side) x [y0, y0+side) (outside the mask counts
// as background).
double tissue_fraction(const TissueMask *tm, double x0, double y0, double side_w, double side_h);
// A level-0 point drawn uniformly over the tissue area (uniform inside a uniformly chosen tissue mask
// pixel). Returns -1 when the mask has no tissue.
int tissue_sample_point(const TissueMask *tm, Rng *r, double *x, double *y);
