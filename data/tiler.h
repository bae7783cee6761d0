// Cutting a whole slide into packed tile shards (the library side of tools/dinotile).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "data/tissue.h"

typedef struct {
    int tile_size;           // output tile side in pixels (224)
    double mpp;              // output microns per pixel (0.5)
    double min_tissue;       // keep tiles with at least this tissue fraction (0.5)
    int jpeg_quality;        // 1..100 (90)
    int64_t tiles_per_shard; // records per shard file (10000)
    double assume_mpp;       // level-0 mpp for slides without metadata (0 = refuse them)
    HsvFilter hsv;           // per-tile HSV filter (Midnight; off by default: min_fraction 0)
} TileOptions;

void tile_options_default(TileOptions *o);

typedef struct {
    int64_t grid_tiles;     // tiles in the full grid over the slide
    int64_t kept_tiles;     // tiles written (tissue fraction >= min_tissue, HSV filter passed)
    int64_t hsv_rejected;   // tiles with enough tissue that the HSV filter dropped
    double tissue_fraction; // fraction of the slide area detected as tissue
    double slide_mpp;       // level-0 mpp used
    int mpp_assumed;        // 1 when it came from assume_mpp
    int level;              // pyramid level read
    int shards;             // shard files written
    double seconds;
} TileSummary;

// Called now and then with the grid cells done so far and the total; may be NULL. Thread-safe use is
// the caller's business (it is called from the thread running tile_slide).
typedef void (*TileProgressFn)(void *user, int64_t done, int64_t total);

// The name tiles of this slide go by in out_dir: the file name without folder and extension.
void tile_slide_stem(const char *slide_path, char *stem, size_t n);
// True when out_dir holds the done marker of this slide (written last, after all its shards).
int tile_slide_is_done(const char *out_dir, const char *slide_path);
// Cuts one slide into out_dir/<stem>-NNNNN.dtshard and writes out_dir/<stem>.done last.
int tile_slide(const char *slide_path, const char *out_dir, const TileOptions *o, TileProgressFn progress,
               void *user, TileSummary *sum, char *err);
