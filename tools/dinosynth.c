// dinosynth: writes synthetic textured tiles (data/synth.h) as shards or as a folder of JPEGs, for
// benchmarks and tests at sizes and counts beyond the demo slide.
//   dinosynth -o OUT_DIR [--count N] [--size N] [--classes K] [--format shards|jpeg] ...
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common/check.h"
#include "data/decode.h"
#include "data/shard.h"
#include "data/synth.h"

static void usage(FILE *f) {
    fprintf(f, "usage: dinosynth -o OUT_DIR [options]\n"
               "  -o, --out DIR            output folder (created if missing)\n"
               "  -c, --count N            number of tiles (1000)\n"
               "  -s, --size N             tile side in pixels (256)\n"
               "  -k, --classes K          texture classes; tile i has class i %% K (4)\n"
               "  -f, --format F           shards (synth-NNNNN.dtshard) or jpeg (class folders) (shards)\n"
               "  -n, --tiles-per-shard N  records per shard (1000)\n"
               "  -q, --quality Q          JPEG quality (90)\n"
               "  -r, --seed S             generator seed (0)\n");
}

int main(int argc, char **argv) {
    const char *out = NULL, *format = "shards";
    long count = 1000, size = 256, classes = 4, per_shard = 1000, quality = 90;
    unsigned long long seed = 0;
    static const struct option longopts[] = {
        {"out", required_argument, 0, 'o'},     {"count", required_argument, 0, 'c'},
        {"size", required_argument, 0, 's'},    {"classes", required_argument, 0, 'k'},
        {"format", required_argument, 0, 'f'},  {"tiles-per-shard", required_argument, 0, 'n'},
        {"quality", required_argument, 0, 'q'}, {"seed", required_argument, 0, 'r'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "o:c:s:k:f:n:q:r:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'c': count = strtol(optarg, NULL, 10); break;
        case 's': size = strtol(optarg, NULL, 10); break;
        case 'k': classes = strtol(optarg, NULL, 10); break;
        case 'f': format = optarg; break;
        case 'n': per_shard = strtol(optarg, NULL, 10); break;
        case 'q': quality = strtol(optarg, NULL, 10); break;
        case 'r': seed = strtoull(optarg, NULL, 10); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    int as_jpeg = !strcmp(format, "jpeg");
    if (!out || count < 1 || size < 8 || size > 8192 || classes < 1 || per_shard < 1 || quality < 1 ||
        quality > 100 || (!as_jpeg && strcmp(format, "shards"))) {
        fprintf(stderr, "dinosynth: missing or bad arguments\n");
        usage(stderr);
        return 2;
    }
    if (mkdir(out, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "dinosynth: %s: cannot create: %s\n", out, strerror(errno));
        return 1;
    }
    char err[DINO_ERRLEN], path[4096];
    ShardWriter *w = NULL;
    int nshard = 0;
    for (long i = 0; i < count; i++) {
        Image im;
        synth_tile(seed, i, (int)classes, (int)size, &im);
        uint8_t *jpg;
        size_t n;
        if (encode_jpeg(&im, (int)quality, &jpg, &n, err) != 0) DINO_DIE("dinosynth: %s", err);
        image_free(&im);
        int cls = (int)(i % classes);
        if (as_jpeg) {
            snprintf(path, sizeof path, "%s/class%d", out, cls);
            if (mkdir(path, 0777) != 0 && errno != EEXIST) DINO_DIE("dinosynth: %s: %s", path, strerror(errno));
            snprintf(path, sizeof path, "%s/class%d/tile%07ld.jpg", out, cls, i);
            FILE *f = fopen(path, "wb");
            if (!f || fwrite(jpg, 1, n, f) != n || fclose(f) != 0) DINO_DIE("dinosynth: %s: write failed", path);
        } else {
            if (!w) {
                snprintf(path, sizeof path, "%s/synth-%05d.dtshard", out, nshard);
                if (!(w = shard_writer_open(path, err))) DINO_DIE("dinosynth: %s", err);
            }
            char name[32];
            snprintf(name, sizeof name, "synth-class%d", cls);
            ShardTileMeta m = {.slide = name, .slide_len = (uint32_t)strlen(name), .x = i, .y = 0, .level = 0,
                               .mpp = 0.5f, .w = (uint32_t)size, .h = (uint32_t)size};
            if (shard_writer_add(w, &m, jpg, n, err) != 0) DINO_DIE("dinosynth: %s", err);
            if (shard_writer_count(w) == per_shard || i == count - 1) {
                if (shard_writer_finish(w, err) != 0) DINO_DIE("dinosynth: %s", err);
                w = NULL;
                nshard++;
            }
        }
        free(jpg);
    }
    if (as_jpeg) printf("dinosynth: %ld tiles of %ldx%ld in %ld class folders under %s\n", count, size, size, classes, out);
    else printf("dinosynth: %ld tiles of %ldx%ld, %ld classes, in %d shard(s) under %s\n", count, size, size, classes, nshard, out);
    return 0;
}
