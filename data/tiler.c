#include "common/clock.h"
#include "data/tiler.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/check.h"
#include "data/decode.h"
#include "data/shard.h"
#include "data/tissue.h"
#include "data/wsi.h"

void tile_options_default(TileOptions *o) {
    o->tile_size = 224;
    o->mpp = 0.5;
    o->min_tissue = 0.5;
    o->jpeg_quality = 90;
    o->tiles_per_shard = 10000;
    o->assume_mpp = 0;
    hsv_filter_default(&o->hsv);
}

void tile_slide_stem(const char *slide_path, char *stem, size_t n) {
    const char *base = strrchr(slide_path, '/');
    base = base ? base + 1 : slide_path;
    snprintf(stem, n, "%s", base);
    char *dot = strrchr(stem, '.');
    if (dot && dot != stem) *dot = 0;
}

static void marker_path(const char *out_dir, const char *slide_path, char *buf, size_t n) {
    char stem[1024];
    tile_slide_stem(slide_path, stem, sizeof stem);
    snprintf(buf, n, "%s/%s.done", out_dir, stem);
}

int tile_slide_is_done(const char *out_dir, const char *slide_path) {
    char p[4096];
    marker_path(out_dir, slide_path, p, sizeof p);
    return access(p, F_OK) == 0;
}

int tile_slide(const char *slide_path, const char *out_dir, const TileOptions *o, TileProgressFn progress,
               void *user, TileSummary *sum, char *err) {
    double t0 = dino_wall_s();
    memset(sum, 0, sizeof *sum);
    Wsi *w = wsi_open(slide_path, o->assume_mpp, err);
    if (!w) return -1;
    char stem[1024], path[4096];
    tile_slide_stem(slide_path, stem, sizeof stem);
    double L = o->tile_size * o->mpp / wsi_mpp(w); // tile side in level-0 pixels
    TissueMask tm;
    if (tissue_mask_for_slide(w, tissue_mask_downsample(w, L), &tm, err) != 0) {
        wsi_close(w);
        return -1;
    }
    int64_t nx = (int64_t)(wsi_width(w) / L), ny = (int64_t)(wsi_height(w) / L);
    sum->grid_tiles = nx * ny;
    sum->tissue_fraction = (double)tm.tissue_px / ((double)tm.w * tm.h);
    sum->slide_mpp = wsi_mpp(w);
    sum->mpp_assumed = wsi_mpp_assumed(w);
    sum->level = wsi_best_level(w, o->mpp / wsi_mpp(w));
    ShardWriter *sw = NULL;
    int rc = 0;
    Image tile = {0};
    for (int64_t cell = 0; cell < nx * ny && rc == 0; cell++) {
        if (progress && cell % 16 == 0) progress(user, cell, nx * ny);
        int64_t gx = cell % nx, gy = cell / nx;
        double x0 = gx * L, y0 = gy * L;
        if (tissue_fraction(&tm, x0, y0, L, L) < o->min_tissue) continue;
        int level;
        if (wsi_read_tile(w, llround(x0), llround(y0), o->mpp, o->tile_size, &tile, &level, err) != 0) { rc = -1; break; }
        if (!tissue_hsv_accept(&tile, &o->hsv)) {
            sum->hsv_rejected++;
            image_free(&tile);
            continue;
        }
        uint8_t *jpg;
        size_t jn;
        if (encode_jpeg(&tile, o->jpeg_quality, &jpg, &jn, err) != 0) { rc = -1; break; }
        image_free(&tile);
        if (!sw) {
            snprintf(path, sizeof path, "%s/%s-%05d.dtshard", out_dir, stem, sum->shards);
            if (!(sw = shard_writer_open(path, err))) { free(jpg); rc = -1; break; }
        }
        ShardTileMeta m = {.slide = stem, .slide_len = (uint32_t)strlen(stem), .x = llround(x0), .y = llround(y0),
                           .level = level, .mpp = (float)o->mpp, .w = (uint32_t)o->tile_size, .h = (uint32_t)o->tile_size};
        rc = shard_writer_add(sw, &m, jpg, jn, err);
        free(jpg);
        sum->kept_tiles++;
        if (rc == 0 && shard_writer_count(sw) >= o->tiles_per_shard) {
            rc = shard_writer_finish(sw, err);
            sw = NULL;
            sum->shards++;
        }
    }
    image_free(&tile);
    if (sw) {
        if (rc == 0) {
            rc = shard_writer_finish(sw, err);
            sum->shards++;
        } else shard_writer_abort(sw);
    }
    if (progress && rc == 0) progress(user, nx * ny, nx * ny);
    tissue_mask_free(&tm);
    wsi_close(w);
    sum->seconds = dino_wall_s() - t0;
    if (rc != 0) return -1;
    // The marker goes last (atomically): a slide without it is redone from scratch on the next run.
    char marker[4096], tmp[4200];
    marker_path(out_dir, slide_path, marker, sizeof marker);
    snprintf(tmp, sizeof tmp, "%s.tmp", marker);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        dino_seterr(err, "%s: cannot write: %s", tmp, strerror(errno));
        return -1;
    }
    fprintf(f, "slide=%s\ntiles=%lld\ngrid=%lld\nshards=%d\ntissue_fraction=%.4f\nslide_mpp=%.4f%s\n"
               "tile_size=%d\nmpp=%.4f\nmin_tissue=%.3f\nlevel=%d\nhsv_min_fraction=%.3f\nhsv_rejected=%lld\n",
            slide_path, (long long)sum->kept_tiles, (long long)sum->grid_tiles, sum->shards, sum->tissue_fraction,
            sum->slide_mpp, sum->mpp_assumed ? " (assumed)" : "", o->tile_size, o->mpp, o->min_tissue, sum->level,
            o->hsv.min_fraction, (long long)sum->hsv_rejected);
    int ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, marker) != 0) {
        dino_seterr(err, "%s: cannot write: %s", marker, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}
