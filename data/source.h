// A source of tiles: packed shards, an image folder or list, or whole slides sampled online.
// The loader sees only this interface: a count and "decode tile i", thread-safe.
#pragma once
#include <stdint.h>

#include "data/image.h"
#include "data/tissue.h"

typedef struct TileSource TileSource;

// Opens the source described by `spec` (see data/source.c for the accepted forms). Returns NULL with
// err naming the file and the problem.
TileSource *source_open(const char *spec, char *err);
// Checks the options of the wsi: parts of a spec without opening anything (config validation).
// 0, or -1 with err naming the option.
int source_check_spec(const char *spec, char *err);
int64_t source_count(const TileSource *s);
// Decodes tile i (0 <= i < count) into *out (allocated by the call). Returns 0, or -1 for a corrupt or
// unreadable tile with err naming the file/record and the reason. Safe to call from many threads.
// `rng_seed` drives sources that sample (the online WSI source): the same seed gives the same tile.
int source_read_rgb(TileSource *s, int64_t i, uint64_t rng_seed, Image *out, char *err);
void source_close(TileSource *s);
// Where a slide tile came from (online slide parts): the slide, its resolution (microns per pixel, the
// sampled one for mpp_range), and the level-0 rectangle read (top-left, side).
typedef struct {
    const char *slide; // NULL for image and shard tiles
    double mpp, x0, y0, side0;
} TileOrigin;
// source_read_rgb that also fills *origin (may be NULL).
int source_read_rgb_origin(TileSource *s, int64_t i, uint64_t rng_seed, Image *out, TileOrigin *origin, char *err);
// Labelled image sets (k-NN and linear-probe evaluation): the image folder and list forms, with a
// class per image:
//   DIR, folder:DIR   every image under DIR, recursively, sorted by path; the class of an image is the
//                     sub-folder of DIR it lies in (images directly in DIR have none)
//   FILE, list:FILE   `path` or `path,label` per line (a first line "path,label" is a header); '#'
//                     comments, relative paths relative to the list's folder
// and '+' joins several. Class ids follow the sorted class names. require_labels: an image without a
// class is an error naming it. Returns NULL with err as source_open.
TileSource *source_open_labelled(const char *spec, int require_labels, char *err);
// The image file of tile i of a folder or list source (NULL for shard and slide tiles).
const char *source_tile_path(const TileSource *s, int64_t i);
// The class of tile i of a labelled source (-1: none), the number of classes and their names.
int source_tile_label(const TileSource *s, int64_t i);
int source_n_classes(const TileSource *s);
const char *source_class_name(const TileSource *s, int c);
// Optional decode hint: JPEG tiles may be decoded at a reduced scale (TurboJPEG DCT scaling) as long as
// the shorter side stays >= min_side (0, the default, decodes at full size). Set before reading.
void source_set_min_side(TileSource *s, int min_side);
// Pixel budget for image files and shard records (data/decode.h): a tile whose header declares more than
// max_pixels pixels is refused before it is decoded (a corrupt tile). <= 0: DECODE_DEFAULT_MAX_PIXELS
// (8192 x 8192), the default. Set before reading.
void source_set_max_pixels(TileSource *s, int64_t max_pixels);
// Extended context (Virchow2's ECT, crops.extended_context): online slide parts read a region of
// round(size * factor) pixels at the tile's resolution instead of size, so that the crops can be
// translated inside it. Image and shard parts are unchanged (their stored tile is the region).
// factor <= 1: off (the default). Set before reading.
void source_set_context(TileSource *s, double factor);
// Per-tile HSV filter (data/tissue.h; Midnight) for online slide parts: a drawn tile that fails it is
// redrawn (same keyed stream, up to 8 tiles). Image and shard parts are filtered when they are cut
// (dinotile --hsv-filter). Off by default. Set before reading.
void source_set_hsv_filter(TileSource *s, const HsvFilter *f);
