// bench_data: images per second per core of the full DINOv2 2 + n multi-crop pipeline from JPEG tiles
// (turbojpeg decode, random resized crops, colour jitter, grayscale, blur, solarize, normalize, iBOT
// masks), on the caller's thread through the Loader (n_threads = 0), so one core.
//
//   bench_data --make DIR [--count 64] [--size 256] [--quality 90]   write synthetic H&E-like tiles
//   bench_data DIR [--seconds 10] [--batch 32] [--threads 0] [--max-scale 8]  benchmark the tiles in DIR
// Tiles are decoded by data/decode.c (libjpeg-turbo), at 1/2, 1/4 or 1/8 (DCT scaling) when every
// planned crop of the tile still spans at least its output size at that reduction (never for 256 px tiles).
// tools/bench_data.sh runs this and the PyTorch reference (tests/torch_ref/bench_data_torch.py) on the
// same tiles and prints both and the ratio.
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/clock.h"
#include "common/check.h"
#include "common/rng.h"
#include "data/decode.h"
#include "data/loader.h"
#include "data/source.h"

// ---- synthetic tiles: pink stroma, purple nuclei, white gaps, fine texture (JPEG must work) --------

static void make_tile(Image *im, int size, uint64_t seed) {
    image_alloc(im, size, size);
    Rng r = rng_make(seed, 0x54494c45, 0, 0);
    float *acc = dino_malloc(sizeof(float) * 3 * size * size);
    float base[3] = {225 - 20 * (float)rng_uniform(&r), 170 + 30 * (float)rng_uniform(&r),
                     205 + 20 * (float)rng_uniform(&r)};
    for (int i = 0; i < size * size; i++)
        for (int c = 0; c < 3; c++) acc[3 * i + c] = base[c];
    // fibres: sinusoidal stroma texture
    float fx = 0.05f + 0.1f * (float)rng_uniform(&r), fy = 0.03f + 0.1f * (float)rng_uniform(&r);
    for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++) {
            float t = 18 * sinf(fx * x + fy * y + 3 * sinf(0.02f * y));
            for (int c = 0; c < 3; c++) acc[3 * (y * size + x) + c] += t * (c == 1 ? 1.2f : 0.8f);
        }
    // white gaps and nuclei
    int n_gaps = 2 + (int)rng_below(&r, 3), n_nuc = 40 + (int)rng_below(&r, 80);
    for (int k = 0; k < n_gaps + n_nuc; k++) {
        int gap = k < n_gaps;
        float cx = size * (float)rng_uniform(&r), cy = size * (float)rng_uniform(&r);
        float ra = gap ? 10 + 25 * (float)rng_uniform(&r) : 2 + 5 * (float)rng_uniform(&r);
        float rb = ra * (0.5f + 0.5f * (float)rng_uniform(&r));
        float col[3] = {gap ? 245 : 90 + 40 * (float)rng_uniform(&r), gap ? 240 : 50 + 30 * (float)rng_uniform(&r),
                        gap ? 245 : 140 + 40 * (float)rng_uniform(&r)};
        for (int y = (int)(cy - ra) - 1; y <= (int)(cy + ra) + 1; y++)
            for (int x = (int)(cx - ra) - 1; x <= (int)(cx + ra) + 1; x++) {
                if (x < 0 || y < 0 || x >= size || y >= size) continue;
                float dx = (x - cx) / ra, dy = (y - cy) / rb;
                if (dx * dx + dy * dy <= 1)
                    for (int c = 0; c < 3; c++) acc[3 * (y * size + x) + c] = col[c];
            }
    }
    for (int i = 0; i < 3 * size * size; i++) {
        float v = acc[i] + 10 * (float)rng_normal(&r);
        im->px[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
    free(acc);
}

static int make_tiles(const char *dir, int count, int size, int quality) {
    if (mkdir(dir, 0755) && errno != EEXIST) {
        fprintf(stderr, "bench_data: cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char err[DINO_ERRLEN];
    for (int i = 0; i < count; i++) {
        Image im;
        make_tile(&im, size, (uint64_t)i);
        uint8_t *jpg = NULL;
        size_t len = 0;
        if (encode_jpeg(&im, quality, &jpg, &len, err)) {
            fprintf(stderr, "bench_data: %s\n", err);
            return 1;
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/tile_%05d.jpg", dir, i);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(jpg, 1, len, f) != len || fclose(f)) {
            fprintf(stderr, "bench_data: cannot write %s\n", path);
            return 1;
        }
        free(jpg);
        image_free(&im);
    }
    printf("wrote %d tiles of %dx%d to %s\n", count, size, size, dir);
    return 0;
}

// ---- the tiles in memory and a decoding read callback (data/decode.h) -----------------------------

typedef struct {
    uint8_t **data;
    size_t *len;
    int n;
    double decode_s; // summed over threads: meaningful with --threads 0
} Tiles;

// The images of DIR (data/source.h's folder: source), read into memory.
static int load_tiles(const char *dir, Tiles *t) {
    char spec[4200], err[DINO_ERRLEN];
    snprintf(spec, sizeof spec, "folder:%s", dir);
    TileSource *src = source_open(spec, err);
    if (!src) {
        fprintf(stderr, "bench_data: %s\n", err);
        return -1;
    }
    t->n = (int)source_count(src);
    t->data = dino_calloc((size_t)t->n, sizeof(uint8_t *));
    t->len = dino_calloc((size_t)t->n, sizeof(size_t));
    int rc = 0;
    for (int i = 0; i < t->n && rc == 0; i++)
        if ((rc = read_file_bytes(source_tile_path(src, i), &t->data[i], &t->len[i], err))) fprintf(stderr, "bench_data: %s\n", err);
    source_close(src);
    return rc;
}

static int jpeg_size(void *ctx, int64_t index, uint64_t seed, int *w, int *h, char *err) {
    Tiles *t = ctx;
    return jpeg_read_size(t->data[index], t->len[index], w, h, err);
}

// Decodes at 1/scale with libjpeg-turbo's DCT-domain scaling (scale 1 = full size): decode_jpeg_mem
// with the shorter side that scale gives.
static int read_jpeg_scaled(void *ctx, int64_t index, uint64_t seed, int scale, Image *out, char *err) {
    Tiles *t = ctx;
    double t0 = dino_wall_s();
    int w, h;
    if (jpeg_size(ctx, index, seed, &w, &h, err)) return -1;
    int sw = (w + scale - 1) / scale, sh = (h + scale - 1) / scale;
    if (decode_jpeg_mem(t->data[index], t->len[index], scale > 1 ? (sw < sh ? sw : sh) : 0, out, err)) return -1;
    if (out->w != sw || out->h != sh) {
        dino_seterr(err, "tile %lld: decoded %dx%d at 1/%d, expected %dx%d", (long long)index, out->w, out->h, scale, sw, sh);
        image_free(out);
        return -1;
    }
    t->decode_s += dino_wall_s() - t0;
    return 0;
}

static int read_jpeg(void *ctx, int64_t index, uint64_t seed, Image *out, char *err) {
    return read_jpeg_scaled(ctx, index, seed, 1, out, err);
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "--make")) {
        int count = 64, size = 256, quality = 90;
        for (int i = 3; i + 1 < argc; i += 2) {
            if (!strcmp(argv[i], "--count")) count = atoi(argv[i + 1]);
            else if (!strcmp(argv[i], "--size")) size = atoi(argv[i + 1]);
            else if (!strcmp(argv[i], "--quality")) quality = atoi(argv[i + 1]);
            else {
                fprintf(stderr, "bench_data: unknown option %s\n", argv[i]);
                return 2;
            }
        }
        return make_tiles(argv[2], count, size, quality);
    }
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: bench_data --make DIR [--count N] [--size PX] [--quality Q]\n"
                        "       bench_data DIR [--seconds S] [--batch B] [--threads T] [--max-scale 1|2|4|8]\n");
        return 2;
    }
    double seconds = 10;
    int max_scale = 8;
    LoaderConfig c;
    loader_config_default(&c);
    c.n_threads = 0; // one core: the caller's thread builds every batch
    c.prefetch = 1;
    c.batch_size = 32;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch")) c.batch_size = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) c.n_threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--max-scale")) max_scale = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "bench_data: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (c.n_threads > 0) fprintf(stderr, "bench_data: decode timing is only meaningful with --threads 0\n");
    Tiles tiles = {0};
    if (load_tiles(argv[1], &tiles)) return 1;
    char err[DINO_ERRLEN];
    // scaled decoding when a tile is large enough that every crop stays >= its output size at 1/2, 1/4...
    Loader *l = loader_create_scaled(&c, tiles.n, read_jpeg, jpeg_size, read_jpeg_scaled, max_scale, &tiles, err);
    if (!l) {
        fprintf(stderr, "bench_data: %s\n", err);
        return 1;
    }
    if (!loader_next(l, err)) { // warm-up batch
        fprintf(stderr, "bench_data: %s\n", err);
        return 1;
    }
    tiles.decode_s = 0;
    double t0 = dino_wall_s(), c0 = dino_cpu_s();
    int64_t images = 0;
    while (dino_cpu_s() - c0 < seconds) {
        const Batch *b = loader_next(l, err);
        if (!b) {
            fprintf(stderr, "bench_data: %s\n", err);
            return 1;
        }
        images += b->B;
    }
    double dt = dino_wall_s() - t0, cpu = dino_cpu_s() - c0;
    printf("C pipeline: %d tiles, batch %d, 2x%d + %dx%d crops, %lld images, %.1f s wall, %.1f s CPU: "
           "%.1f images/s per core (per CPU second; decode %.0f%% of wall time; %lld of %lld decoded scaled)\n",
           tiles.n, c.batch_size, c.aug.global_size, c.aug.n_local, c.aug.local_size, (long long)images, dt, cpu,
           images / cpu, 100 * tiles.decode_s / dt, (long long)loader_stats(l).scaled,
           (long long)(loader_stats(l).batches * c.batch_size));
    loader_destroy(l);
    return 0;
}
