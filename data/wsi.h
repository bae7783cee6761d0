// Whole-slide images through OpenSlide: resolution metadata, pyramid level choice, and RGB reads
// (OpenSlide's premultiplied ARGB composited onto white). An open Wsi may be read from many threads.
#pragma once
#include <stdint.h>

#include "data/image.h"

typedef struct Wsi Wsi;

// Opens a slide. Its level-0 resolution comes from openslide.mpp-x/mpp-y; a slide without it is
// refused with a message naming the slide and the option, unless assume_mpp > 0 is given (then used as
// the level-0 microns per pixel; metadata, when present, wins).
Wsi *wsi_open(const char *path, double assume_mpp, char *err);
void wsi_close(Wsi *w);
// True if OpenSlide recognises the file as a slide (cheap, does not open it fully).
int wsi_is_slide(const char *path);

const char *wsi_path(const Wsi *w);
double wsi_mpp(const Wsi *w);        // level-0 microns per pixel
int wsi_mpp_assumed(const Wsi *w);    // 1 when the value came from assume_mpp
int64_t wsi_width(const Wsi *w);      // level-0 size
int64_t wsi_height(const Wsi *w);
int wsi_level_count(const Wsi *w);
double wsi_level_downsample(const Wsi *w, int level);
void wsi_level_size(const Wsi *w, int level, int64_t *lw, int64_t *lh);

// The coarsest level whose downsample does not exceed `downsample` (within 2%: reading a level a hair
// coarser than asked loses nothing visible and saves reading 4x the pixels).
int wsi_best_level(const Wsi *w, double downsample);

// Reads a w x h region of `level` whose top-left corner is (x0, y0) in level-0 pixels into rgb
// (w*h*3 bytes). Returns -1 with err naming the slide on an OpenSlide error.
int wsi_read_region_rgb(Wsi *w, int level, int64_t x0, int64_t y0, int rw, int rh, uint8_t *rgb, char *err);

// A square tile of size x size pixels at `out_mpp` microns per pixel whose top-left corner is (x0, y0)
// in level-0 pixels: read from the best level, then resized (area averaging when shrinking, bilinear
// when enlarging). *level_used (may be NULL) receives the level read.
int wsi_read_tile(Wsi *w, int64_t x0, int64_t y0, double out_mpp, int size, Image *out, int *level_used,
                  char *err);

// An out_w x out_h image at `out_mpp` microns per pixel of the level-0 rectangle whose top-left corner is
// (x0, y0) (level-0 pixels, fractional): read from the best level (a margin for the filter included)
// and resampled with the augmentation's resizer (data/augment_resample.c: Pillow's antialiased bicubic
// over the exact fractional box), so any continuous resolution is read without snapping to a level or
// to whole pixels. Used by the online source for sampled resolutions and extended regions.
int wsi_read_region_resampled(Wsi *w, double x0, double y0, double out_mpp, int out_w, int out_h, Image *out,
                              int *level_used, char *err);

// The whole slide reduced by `downsample` (level-0 pixels per output pixel, >= 1) by box averaging,
// read strip by strip from the best level. Output is ceil(W/downsample) x ceil(H/downsample).
int wsi_thumbnail(Wsi *w, double downsample, Image *out, char *err);

// Resizes RGB8 src (sw x sh) to dst (dw x dh): per axis, exact area averaging when shrinking and
// bilinear (half-pixel centres) when enlarging; equal sizes copy.
void resize_rgb(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh);
