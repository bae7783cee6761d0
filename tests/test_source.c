#include <png.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/check.h"
#include "data/decode.h"
#include "data/loader.h"
#include "data/shard.h"
#include "data/source.h"
#include "data/synth.h"
#include "tests/harness.h"
#include "tests/synth_files.h"

static const char *slide_path(const char *name) {
    static char buf[4096];
    const char *candidates[3] = {test_src_path("data/demo/"), test_src_path("../shared/data/wsi/"), "/work/shared/data/wsi/"};
    for (int i = 0; i < 3; i++) {
        snprintf(buf, sizeof buf, "%s%s", candidates[i], name);
        if (access(buf, R_OK) == 0) return buf;
    }
    test_skip("test slide not found in data/demo, ../shared/data/wsi or /work/shared/data/wsi");
}

static void write_bytes(const char *path, const uint8_t *p, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(p, 1, n, f) == n, "cannot write %s", path);
    if (f) fclose(f);
}

static void write_jpeg(const char *path, int64_t index, int size) {
    Image im;
    synth_tile(7, index, 3, size, &im);
    uint8_t *jpg;
    size_t n;
    char err[DINO_ERRLEN];
    CHECK(encode_jpeg(&im, 90, &jpg, &n, err) == 0, "%s", err);
    write_bytes(path, jpg, n);
    free(jpg);
    image_free(&im);
}

static void write_png(const char *path, int w, int h) {
    Image im;
    synth_tile(7, 0, 3, w, &im);
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    pi.width = (png_uint_32)w;
    pi.height = (png_uint_32)h;
    pi.format = PNG_FORMAT_RGB;
    CHECK(png_image_write_to_file(&pi, path, 0, im.px, 0, NULL), "cannot write %s", path);
    image_free(&im);
}

// A shard of `count` synthetic JPEG tiles whose size encodes their global index: 64 + (first + i) % 16.
static void write_synth_shard(const char *path, int64_t first, int count) {
    char err[DINO_ERRLEN];
    ShardWriter *w = shard_writer_open(path, err);
    CHECK(w != NULL, "%s", err);
    for (int i = 0; i < count; i++) {
        int size = 64 + (int)((first + i) % 16);
        Image im;
        synth_tile(3, first + i, 4, size, &im);
        uint8_t *jpg;
        size_t n;
        CHECK(encode_jpeg(&im, 90, &jpg, &n, err) == 0, "%s", err);
        ShardTileMeta m = {.slide = "synth", .slide_len = 5, .x = first + i, .w = (uint32_t)size, .h = (uint32_t)size};
        CHECK(shard_writer_add(w, &m, jpg, n, err) == 0, "%s", err);
        free(jpg);
        image_free(&im);
    }
    CHECK(shard_writer_finish(w, err) == 0, "%s", err);
}

static int tile_side(TileSource *s, int64_t i) {
    Image im;
    char err[DINO_ERRLEN];
    if (source_read_rgb(s, i, 0, &im, err) != 0) {
        CHECK(0, "tile %lld: %s", (long long)i, err);
        return -1;
    }
    int side = im.w == im.h ? im.w : -1;
    image_free(&im);
    return side;
}

TEST(folder_source_recursive_mixed_formats) {
    const char *dir = test_tmpdir();
    char p[4300], spec[4400], err[DINO_ERRLEN];
    snprintf(p, sizeof p, "%s/sub", dir); mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/sub/deeper", dir); mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/a.jpg", dir); write_jpeg(p, 0, 40);
    snprintf(p, sizeof p, "%s/sub/b.png", dir); write_png(p, 50, 50);
    snprintf(p, sizeof p, "%s/sub/deeper/c.JPEG", dir); write_jpeg(p, 1, 60);
    snprintf(p, sizeof p, "%s/notes.txt", dir); write_bytes(p, (const uint8_t *)"hi", 2);
    snprintf(spec, sizeof spec, "folder:%s", dir);
    TileSource *s = source_open(spec, err);
    CHECK(s != NULL, "%s", err);
    if (!s) return;
    CHECK(source_count(s) == 3, "count %lld", (long long)source_count(s));
    // sorted by path: a.jpg, sub/b.png, sub/deeper/c.JPEG
    CHECK(tile_side(s, 0) == 40 && tile_side(s, 1) == 50 && tile_side(s, 2) == 60, "tiles out of order");
    source_close(s);
    snprintf(p, sizeof p, "%s/sub/deeper", dir);
    snprintf(spec, sizeof spec, "folder:%s/nothing_here", dir);
    CHECK(source_open(spec, err) == NULL && strstr(err, "nothing_here"), "missing folder: %s", err);
    snprintf(p, sizeof p, "%s/empty", dir); mkdir(p, 0777);
    snprintf(spec, sizeof spec, "folder:%s", p);
    CHECK(source_open(spec, err) == NULL && strstr(err, p) && strstr(err, "no images"), "empty folder: %s", err);
}

TEST(list_source_relative_paths_and_missing_entry) {
    const char *dir = test_tmpdir();
    char p[4300], spec[4400], err[DINO_ERRLEN];
    snprintf(p, sizeof p, "%s/x.jpg", dir); write_jpeg(p, 0, 48);
    snprintf(p, sizeof p, "%s/y.jpg", dir); write_jpeg(p, 1, 56);
    snprintf(p, sizeof p, "%s/list.txt", dir);
    FILE *f = fopen(p, "w");
    fprintf(f, "# tiles\ny.jpg\n\n%s/x.jpg\n", dir);
    fclose(f);
    snprintf(spec, sizeof spec, "list:%s", p);
    TileSource *s = source_open(spec, err);
    CHECK(s != NULL, "%s", err);
    if (!s) return;
    CHECK(source_count(s) == 2 && tile_side(s, 0) == 56 && tile_side(s, 1) == 48, "list order/count wrong");
    // a tile that went bad after opening: -1 naming the file
    snprintf(p, sizeof p, "%s/y.jpg", dir);
    write_bytes(p, (const uint8_t *)"\xFF\xD8\xFF garbage", 12);
    Image im;
    CHECK(source_read_rgb(s, 0, 0, &im, err) == -1 && strstr(err, p), "corrupt file: %s", err);
    source_close(s);
    snprintf(p, sizeof p, "%s/list2.txt", dir);
    f = fopen(p, "w");
    fprintf(f, "x.jpg\ngone.jpg\n");
    fclose(f);
    snprintf(spec, sizeof spec, "list:%s", p);
    CHECK(source_open(spec, err) == NULL && strstr(err, "gone.jpg") && strstr(err, "list2.txt"), "missing entry: %s", err);
    snprintf(spec, sizeof spec, "list:%s/nolist.txt", dir);
    CHECK(source_open(spec, err) == NULL && strstr(err, "nolist.txt"), "missing list: %s", err);
}

// Labelled sets: a folder's classes are its sub-folders (images below them at any depth), a list's the
// label column; classes sorted; images without a class refused when labels are required.
TEST(labelled_folder_and_list_sources) {
    const char *dir = test_tmpdir();
    char p[4300], err[DINO_ERRLEN];
    const char *names[] = {"zebra/a.jpg", "zebra/deep/b.jpg", "apple/c.png", "apple/d.jpg"};
    snprintf(p, sizeof p, "%s/zebra", dir), mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/zebra/deep", dir), mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/apple", dir), mkdir(p, 0755);
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        if (strstr(p, ".png")) write_png(p, 40, 40);
        else write_jpeg(p, i, 48);
    }
    TileSource *s = source_open_labelled(dir, 1, err);
    CHECK(s && source_count(s) == 4 && source_n_classes(s) == 2, "folder: %s", s ? "counts" : err);
    if (s) {
        CHECK(!strcmp(source_class_name(s, 0), "apple") && !strcmp(source_class_name(s, 1), "zebra"), "classes sorted");
        const int want[4] = {0, 0, 1, 1}; // apple/c.png, apple/d.jpg, zebra/a.jpg, zebra/deep/b.jpg
        for (int64_t i = 0; i < 4; i++)
            CHECK(source_tile_label(s, i) == want[i] && strstr(source_tile_path(s, i), i < 2 ? "/apple/" : "/zebra/"),
                  "tile %lld: %s label %d", (long long)i, source_tile_path(s, i), source_tile_label(s, i));
        Image im;
        CHECK(source_read_rgb(s, 0, 0, &im, err) == 0 && im.w == 40, "read: %s", err);
        image_free(&im);
        source_close(s);
    }
    // an image directly in the folder has no class
    snprintf(p, sizeof p, "%s/loose.jpg", dir);
    write_jpeg(p, 9, 32);
    CHECK(!source_open_labelled(dir, 1, err) && strstr(err, "no class") && strstr(err, "loose.jpg"), "loose: %s", err);
    s = source_open_labelled(dir, 0, err);
    CHECK(s && source_count(s) == 5 && source_tile_label(s, 2) == -1, "unlabelled allowed: %s", s ? "" : err);
    source_close(s);
    // a list: header, labels, a line without one
    snprintf(p, sizeof p, "%s/set.csv", dir);
    FILE *f = fopen(p, "w");
    fprintf(f, "path,label\n# a comment\nzebra/a.jpg, stripes \n%s/apple/c.png,round\nloose.jpg\n", dir);
    fclose(f);
    s = source_open_labelled(p, 0, err);
    CHECK(s && source_count(s) == 3 && source_n_classes(s) == 2, "list: %s", s ? "counts" : err);
    if (s) {
        CHECK(source_tile_label(s, 0) == 1 && source_tile_label(s, 1) == 0 && source_tile_label(s, 2) == -1 &&
                  !strcmp(source_class_name(s, 1), "stripes"),
              "list labels");
        source_close(s);
    }
    CHECK(!source_open_labelled(p, 1, err) && strstr(err, "set.csv:5: no label"), "required: %s", err);
    // the unlabelled list form reads the whole line as the path, commas included
    CHECK(!source_open(p, err), "a csv is no shard");
    char list[4400];
    snprintf(list, sizeof list, "list:%s", p);
    CHECK(!source_open(list, err) && strstr(err, "path,label"), "unlabelled list takes whole lines: %s", err);
    // sources that are no image folder or list
    CHECK(!source_open_labelled("shards:x.txt", 0, err) && strstr(err, "labelled set"), "shards: %s", err);
}

TEST(shard_sources_dir_file_glob_list_and_plus) {
    const char *dir = test_tmpdir();
    char p[4300], spec[9000], err[DINO_ERRLEN];
    snprintf(p, sizeof p, "%s/d", dir); mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/d/s0.dtshard", dir); write_synth_shard(p, 0, 5);
    snprintf(p, sizeof p, "%s/d/s1.dtshard", dir); write_synth_shard(p, 5, 0); // empty shard
    snprintf(p, sizeof p, "%s/d/s2.dtshard", dir); write_synth_shard(p, 5, 7);
    snprintf(p, sizeof p, "%s/d/readme.txt", dir); write_bytes(p, (const uint8_t *)"x", 1);
    snprintf(p, sizeof p, "%s/d", dir);
    TileSource *s = source_open(p, err);
    CHECK(s != NULL, "dir: %s", err);
    if (!s) return;
    CHECK(source_count(s) == 12, "dir count %lld", (long long)source_count(s));
    for (int i = 0; i < 12; i++) CHECK(tile_side(s, i) == 64 + i % 16, "dir tile %d has the wrong size", i);
    source_close(s);
    // one shard, a glob, a list file, and all of them joined with '+'
    snprintf(p, sizeof p, "%s/d/s2.dtshard", dir);
    s = source_open(p, err);
    CHECK(s && source_count(s) == 7 && tile_side(s, 0) == 64 + 5, "single shard: %s", s ? "" : err);
    source_close(s);
    snprintf(p, sizeof p, "%s/d/s[02].dtshard", dir);
    s = source_open(p, err);
    CHECK(s && source_count(s) == 12, "glob: %s", s ? "" : err);
    source_close(s);
    char list[4300];
    snprintf(list, sizeof list, "%s/shards.txt", dir);
    FILE *f = fopen(list, "w");
    fprintf(f, "d/s2.dtshard\nd/s0.dtshard\n");
    fclose(f);
    snprintf(spec, sizeof spec, "shards:%s", list);
    s = source_open(spec, err);
    CHECK(s && source_count(s) == 12 && tile_side(s, 0) == 64 + 5 && tile_side(s, 7) == 64, "list: %s", s ? "" : err);
    source_close(s);
    snprintf(p, sizeof p, "%s/img", dir); mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/img/t.jpg", dir); write_jpeg(p, 0, 99);
    snprintf(spec, sizeof spec, "%s/d/s0.dtshard+folder:%s/img+shards:%s", dir, dir, list);
    s = source_open(spec, err);
    CHECK(s && source_count(s) == 5 + 1 + 12, "plus: %s", s ? "" : err);
    if (s) {
        CHECK(tile_side(s, 4) == 68 && tile_side(s, 5) == 99 && tile_side(s, 6) == 69 && tile_side(s, 17) == 68,
              "'+' parts mapped to the wrong tiles");
        Image im;
        CHECK(source_read_rgb(s, 18, 0, &im, err) == -1, "index past the end read");
    }
    source_close(s);
    // errors name what is missing
    snprintf(spec, sizeof spec, "%s/d/s0.dtshard+%s/nope.dtshard", dir, dir);
    CHECK(source_open(spec, err) == NULL && strstr(err, "nope.dtshard"), "missing part: %s", err);
    snprintf(spec, sizeof spec, "%s/img", dir);
    CHECK(source_open(spec, err) == NULL && strstr(err, "folder:"), "image folder as shard dir: %s", err);
    snprintf(spec, sizeof spec, "%s/d/zz*.dtshard", dir);
    CHECK(source_open(spec, err) == NULL && strstr(err, "matches no file"), "empty glob: %s", err);
    snprintf(spec, sizeof spec, "%s/d/readme.txt", dir);
    CHECK(source_open(spec, err) == NULL && strstr(err, "readme.txt") && strstr(err, "bad shard header"), "non-shard: %s", err);
}

TEST(corrupt_shard_record_reported_with_shard_and_index) {
    const char *dir = test_tmpdir();
    char p[4300], err[DINO_ERRLEN];
    snprintf(p, sizeof p, "%s/a.dtshard", dir); write_synth_shard(p, 0, 4);
    snprintf(p, sizeof p, "%s/b.dtshard", dir);
    // b: record 0 fine, record 1 passes its CRC but is not a decodable JPEG, record 2 damaged on disk
    ShardWriter *w = shard_writer_open(p, err);
    Image im;
    synth_tile(1, 0, 2, 64, &im);
    uint8_t *jpg;
    size_t n;
    encode_jpeg(&im, 90, &jpg, &n, err);
    ShardTileMeta m = {.slide = "", .slide_len = 0};
    shard_writer_add(w, &m, jpg, n, err);
    shard_writer_add(w, &m, jpg, n / 2, err);
    shard_writer_add(w, &m, jpg, n, err);
    CHECK(shard_writer_finish(w, err) == 0, "%s", err);
    long off2 = SHARD_HEADER_SIZE + 2 * SHARD_RECORD_FIXED_SIZE + (long)(n + n / 2) + SHARD_RECORD_FIXED_SIZE + 100;
    FILE *f = fopen(p, "r+b");
    fseek(f, off2, SEEK_SET);
    fputc(jpg[100] ^ 1, f);
    fclose(f);
    free(jpg);
    image_free(&im);
    TileSource *s = source_open(dir, err);
    CHECK(s && source_count(s) == 7, "open: %s", s ? "" : err);
    if (!s) return;
    CHECK(source_read_rgb(s, 4, 0, &im, err) == 0, "good record: %s", err);
    image_free(&im);
    CHECK(source_read_rgb(s, 5, 0, &im, err) == -1, "truncated JPEG record decoded");
    CHECK(strstr(err, "b.dtshard") && strstr(err, "record 1") && strstr(err, "JPEG"), "message: %s", err);
    CHECK(source_read_rgb(s, 6, 0, &im, err) == -1, "damaged record read");
    CHECK(strstr(err, "b.dtshard") && strstr(err, "record 2") && strstr(err, "CRC"), "message: %s", err);
    source_close(s);
}

TEST(scaled_decode_hint) {
    const char *dir = test_tmpdir();
    char p[4300], err[DINO_ERRLEN];
    snprintf(p, sizeof p, "%s/big.jpg", dir); write_jpeg(p, 0, 512);
    char spec[4400];
    snprintf(spec, sizeof spec, "folder:%s", dir);
    TileSource *s = source_open(spec, err);
    CHECK(s != NULL, "%s", err);
    if (!s) return;
    CHECK(tile_side(s, 0) == 512, "full decode");
    source_set_min_side(s, 200); // 512 * 1/2 = 256 >= 200 > 512 * 3/8 = 192
    CHECK(tile_side(s, 0) == 256, "min_side 200 decoded to %d", tile_side(s, 0));
    source_close(s);
}

static double mean_saturation(const Image *im) {
    double s = 0;
    for (int i = 0; i < im->w * im->h; i++) {
        const uint8_t *p = im->px + 3 * i;
        int mx = p[0] > p[1] ? (p[0] > p[2] ? p[0] : p[2]) : (p[1] > p[2] ? p[1] : p[2]);
        int mn = p[0] < p[1] ? (p[0] < p[2] ? p[0] : p[2]) : (p[1] < p[2] ? p[1] : p[2]);
        s += mx ? (double)(mx - mn) / mx : 0;
    }
    return s / (im->w * im->h);
}

TEST(online_wsi_source_deterministic_tissue_tiles) {
    char spec[4400], err[DINO_ERRLEN];
    snprintf(spec, sizeof spec, "wsi:%s,size=64,mags=0.5/1.0,min_tissue=0.6", slide_path("CMU-1-Small-Region.svs"));
    TileSource *s = source_open(spec, err);
    CHECK(s != NULL, "%s", err);
    if (!s) return;
    int64_t n = source_count(s);
    // count = tissue tiles of the 64 px grid at 0.5 um/px (34 x 46 cells over the 2220 x 2967 region at
    // 0.499 um/px), of which about a third is tissue
    CHECK(n > 0.2 * 34 * 46 && n < 0.6 * 34 * 46, "count %lld", (long long)n);
    Image a, b, c;
    int differ = 0;
    double sat = 0;
    for (int64_t i = 0; i < 12; i++) {
        CHECK(source_read_rgb(s, i, 42, &a, err) == 0, "%s", err);
        CHECK(source_read_rgb(s, i, 42, &b, err) == 0, "%s", err);
        CHECK(source_read_rgb(s, i, 43, &c, err) == 0, "%s", err);
        CHECK(a.w == 64 && a.h == 64, "tile size %dx%d", a.w, a.h);
        CHECK(memcmp(a.px, b.px, 64 * 64 * 3) == 0, "same seed and index gave different tiles");
        differ += memcmp(a.px, c.px, 64 * 64 * 3) != 0;
        sat += mean_saturation(&a);
        image_free(&a); image_free(&b); image_free(&c);
    }
    CHECK(differ >= 11, "another seed gave the same tile %d times out of 12", 12 - differ);
    // glass here has saturation ~0.03; H&E tissue ~0.3
    CHECK(sat / 12 > 0.15, "sampled tiles are not tissue: mean saturation %.3f", sat / 12);
    source_close(s);
    snprintf(spec, sizeof spec, "wsi:%s,size=64,colour=red", slide_path("CMU-1-Small-Region.svs"));
    CHECK(source_open(spec, err) == NULL && strstr(err, "colour"), "unknown option: %s", err);
}

TEST(online_wsi_source_missing_mpp) {
    char spec[4400], err[DINO_ERRLEN];
    const char *tcga = slide_path("TCGA-CR-7395-01A-01-TS1.svs");
    snprintf(spec, sizeof spec, "wsi:%s,size=64", tcga);
    CHECK(source_open(spec, err) == NULL, "slide without mpp opened");
    CHECK(strstr(err, "TCGA-CR-7395") && strstr(err, "assume_mpp="), "message: %s", err);
    snprintf(spec, sizeof spec, "wsi:%s,size=64,mpp=2,assume_mpp=0.25", tcga);
    TileSource *s = source_open(spec, err);
    CHECK(s != NULL, "%s", err);
    if (!s) return;
    Image a;
    CHECK(source_read_rgb(s, 0, 1, &a, err) == 0 && mean_saturation(&a) > 0.15, "tile: %s", err);
    image_free(&a);
    source_close(s);
}

// Many threads reading the same source get exactly what one thread gets.
typedef struct { TileSource *s; int64_t first, n; uint64_t *sums; } ReadJob;
static uint64_t image_hash(const Image *im) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < (size_t)im->w * im->h * 3; i++) h = (h ^ im->px[i]) * 1099511628211ULL;
    return h;
}
static void *read_range(void *arg) {
    ReadJob *j = arg;
    char err[DINO_ERRLEN];
    for (int64_t i = j->first; i < j->first + j->n; i++) {
        Image im;
        if (source_read_rgb(j->s, i % source_count(j->s), (uint64_t)i, &im, err) != 0) { j->sums[i] = 0; continue; }
        j->sums[i] = image_hash(&im);
        image_free(&im);
    }
    return NULL;
}

TEST(concurrent_reads_match_sequential) {
    const char *dir = test_tmpdir();
    char p[4300], spec[9000], err[DINO_ERRLEN];
    snprintf(p, sizeof p, "%s/s.dtshard", dir);
    write_synth_shard(p, 0, 16);
    snprintf(spec, sizeof spec, "%s+wsi:%s,size=48,mpp=1", p, slide_path("CMU-1-Small-Region.svs"));
    TileSource *s = source_open(spec, err);
    CHECK(s != NULL, "%s", err);
    if (!s) return;
    enum { N = 64, T = 4 };
    uint64_t seq[N], par[N];
    ReadJob one = {s, 0, N, seq};
    read_range(&one);
    pthread_t tid[T];
    ReadJob jobs[T];
    for (int t = 0; t < T; t++) {
        jobs[t] = (ReadJob){s, t * (N / T), N / T, par};
        pthread_create(&tid[t], NULL, read_range, &jobs[t]);
    }
    for (int t = 0; t < T; t++) pthread_join(tid[t], NULL);
    for (int i = 0; i < N; i++) {
        CHECK(seq[i] != 0, "tile %d failed", i);
        CHECK(seq[i] == par[i], "tile %d differs between 1 and %d threads", i, T);
    }
    source_close(s);
}

TEST(online_wsi_source_from_a_slide_list) {
    const char *dir = test_tmpdir();
    char list[4300], spec[9000], err[DINO_ERRLEN];
    char cmu[4096], boxes[4096];
    snprintf(cmu, sizeof cmu, "%s", slide_path("CMU-1-Small-Region.svs"));
    snprintf(boxes, sizeof boxes, "%s", slide_path("boxes.tiff"));
    snprintf(list, sizeof list, "%s/slides.txt", dir);
    FILE *f = fopen(list, "w");
    fprintf(f, "# two slides\n%s\n%s\n", cmu, boxes);
    fclose(f);
    int64_t counts[3];
    const char *targets[3] = {cmu, boxes, list};
    for (int k = 0; k < 3; k++) {
        snprintf(spec, sizeof spec, "wsi:%s,size=32,mpp=2,assume_mpp=1", targets[k]);
        TileSource *s = source_open(spec, err);
        CHECK(s != NULL, "%s", err);
        counts[k] = s ? source_count(s) : -1;
        source_close(s);
    }
    CHECK(counts[0] > 0 && counts[1] > 0 && counts[2] == counts[0] + counts[1], "counts %lld + %lld != %lld",
          (long long)counts[0], (long long)counts[1], (long long)counts[2]);
    f = fopen(list, "a");
    fprintf(f, "%s/missing.svs\n", dir);
    fclose(f);
    snprintf(spec, sizeof spec, "wsi:%s,assume_mpp=0.25", list);
    CHECK(source_open(spec, err) == NULL && strstr(err, "missing.svs") && strstr(err, "slides.txt"), "message: %s", err);
}

// ---- hardening: a folder with files that used to crash or balloon the loader -------------------------

static int read_source_tile(void *ctx, int64_t i, uint64_t seed, Image *out, char *err) {
    return source_read_rgb(ctx, i, seed, out, err);
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

// Truncated JPEGs (FF D8 FF; cut at 200 bytes; cut inside a Huffman table, which used to leave the
// thread's decoder failing every later tile) and headers declaring huge images (TIFF 60000 x 60000 and the
// 483-byte 8204 x 65288, PNG and JPEG 60000 x 60000) among good tiles in a folder source, read by the
// loader on 0, 1 and 3 threads: every batch arrives, no bad file is used, each bad read is counted, the
// batches are identical for every thread count, and the process's peak memory stays far below one huge
// image (before: an abort allocating ~3.6e16 bytes, or 2.1 to 14.4 GB per thread for the TIFFs).
TEST(bad_files_in_a_folder_are_skipped_and_counted_with_bounded_memory) {
    struct rlimit guard = memory_guard_begin((int64_t)4 << 30);
    const char *dir = test_tmpdir();
    char p[4300], spec[4400], err[DINO_ERRLEN];
    enum { NGOOD = 32, NBAD = 7, N = NGOOD + NBAD };
    const char *bad_names[NBAD] = {"t04_cut3.jpg", "t09_cut200.jpg", "t13_cut_dht.jpg", "t18_huge.tif",
                                   "t22_huge.tif", "t27_huge.png", "t31_huge.jpg"};
    char *names[N];
    for (int i = 0; i < NGOOD; i++) {
        char name[32];
        snprintf(name, sizeof name, "t%02d.jpg", i);
        names[i] = strdup(name);
        snprintf(p, sizeof p, "%s/%s", dir, name);
        write_jpeg(p, i, 64);
    }
    Image im;
    synth_tile(7, 99, 3, 64, &im);
    uint8_t *jpg, buf[512];
    size_t n;
    CHECK(encode_jpeg(&im, 90, &jpg, &n, err) == 0, "%s", err);
    image_free(&im);
    size_t dht = 0;
    for (size_t i = 2; i + 1 < n && !dht; i++) dht = jpg[i] == 0xFF && jpg[i + 1] == 0xC4 ? i : 0;
    CHECK(dht > 0, "no DHT marker");
    for (int b = 0; b < NBAD; b++) {
        names[NGOOD + b] = strdup(bad_names[b]);
        snprintf(p, sizeof p, "%s/%s", dir, bad_names[b]);
        switch (b) {
        case 0: write_bytes(p, (const uint8_t *)"\xFF\xD8\xFF", 3); break;
        case 1: write_bytes(p, jpg, 200); break;
        case 2: write_bytes(p, jpg, dht + 40); break;
        case 3: write_bytes(p, buf, craft_tiff_header(buf, 483, 60000, 60000)); break;
        case 4: write_bytes(p, buf, craft_tiff_header(buf, 483, 8204, 65288)); break;
        case 5: write_bytes(p, buf, craft_png_header(buf, 60000, 60000)); break;
        case 6: {
            size_t nh;
            uint8_t *huge = craft_jpeg_declaring(60000, 60000, &nh);
            write_bytes(p, huge, nh);
            free(huge);
        } break;
        }
    }
    free(jpg);
    qsort(names, N, sizeof names[0], cmp_names); // the folder source's order
    int is_bad[N];
    for (int i = 0; i < N; i++) is_bad[i] = strchr(names[i], '_') != NULL;
    snprintf(spec, sizeof spec, "folder:%s", dir);
    TileSource *s = source_open(spec, err);
    CHECK(s != NULL && source_count(s) == N, "%s", err);
    if (!s) return;

    int64_t rss0 = reset_peak_rss();
    enum { NB = 25 };
    const int threads[3] = {0, 1, 3};
    uint64_t ref[NB];
    int64_t ref_corrupt = -1;
    LoaderConfig c;
    for (int t = 0; t < 3; t++) {
        loader_config_default(&c);
        c.batch_size = 4;
        c.seed = 77;
        c.n_threads = threads[t];
        c.prefetch = 2;
        c.patch_size = 8;
        c.aug.global_size = 32;
        c.aug.local_size = 16;
        c.aug.n_local = 2;
        c.max_corrupt_fraction = 0.5;
        Loader *l = loader_create(&c, N, read_source_tile, s, err);
        CHECK(l != NULL, "%s", err);
        int64_t expect_corrupt = 0;
        for (int i = 0; i < NB; i++) {
            const Batch *b = loader_next(l, err);
            CHECK(b != NULL, "%d threads, batch %d: %s", threads[t], i, err);
            if (!b) break;
            for (int k = 0; k < b->B; k++) {
                CHECK(b->tile[k] >= 0 && !is_bad[b->tile[k]], "batch %d uses %s", i, b->tile[k] >= 0 ? names[b->tile[k]] : "nothing");
                int64_t a = 0;
                while (is_bad[loader_tile_at(c.seed, N, b->sample[k] + a)]) a++;
                expect_corrupt += a;
            }
            uint64_t h = fnv(0xcbf29ce484222325ULL, b->global_crops, sizeof(float) * 2 * b->B * 3 * b->G * b->G);
            h = fnv(h, b->local_crops, sizeof(float) * (size_t)b->n_local * b->B * 3 * b->L * b->L);
            h = fnv(h, b->tile, sizeof(int64_t) * b->B);
            if (t == 0) ref[i] = h;
            else CHECK(h == ref[i], "batch %d differs with %d threads", i, threads[t]);
        }
        LoaderStats st = loader_stats(l);
        CHECK(st.corrupt == expect_corrupt && st.corrupt >= 10, "%d threads: %lld corrupt reads counted, expected %lld",
              threads[t], (long long)st.corrupt, (long long)expect_corrupt);
        if (t == 0) ref_corrupt = st.corrupt;
        else CHECK(st.corrupt == ref_corrupt, "corrupt count %lld vs %lld", (long long)st.corrupt, (long long)ref_corrupt);
        loader_destroy(l);
    }
    int64_t grew = peak_rss_bytes() - rss0;
    memory_guard_end(guard);
    CHECK(grew < (128 << 20) || !MEMORY_BOUNDS_CHECKED, "the loader's peak memory grew by %.1f MB", grew / 1e6);

    // each bad file's error names it and says what is wrong
    const char *why[NBAD] = {"JPEG", "JPEG", "JPEG", "TIFF header declares 60000 x 60000 = 3.6 Gpx, over the 67.1 Mpx budget",
                             "TIFF header declares 8204 x 65288 = 536 Mpx", "PNG header declares 60000 x 60000",
                             "JPEG header declares 60000 x 60000"};
    for (int i = 0, b = 0; i < N; i++) {
        if (!is_bad[i]) continue;
        CHECK(source_read_rgb(s, i, 0, &im, err) == -1 && im.px == NULL, "%s decoded", names[i]);
        for (b = 0; b < NBAD && strcmp(bad_names[b], names[i]); b++) {}
        CHECK(strstr(err, names[i]) && strstr(err, why[b]), "%s: %s", names[i], err);
    }
    // the budget is the source's: 64 x 64 tiles over a 4000 px budget are refused, at 4096 read
    source_set_max_pixels(s, 4000);
    CHECK(source_read_rgb(s, 0, 0, &im, err) == -1 && strstr(err, "64 x 64 = 4.1 kpx, over the 4 kpx budget"), "%s", err);
    source_set_max_pixels(s, 4096);
    CHECK(source_read_rgb(s, 0, 0, &im, err) == 0, "%s", err);
    image_free(&im);
    source_close(s);
    for (int i = 0; i < N; i++) free(names[i]);
}

// ---- pathology recipes: continuous magnification, extended context, the HSV filter -----------------

static int read_source_tile_cb(void *ctx, int64_t i, uint64_t seed, Image *out, char *err) {
    return source_read_rgb(ctx, i, seed, out, err);
}

// mpp_range: each tile's resolution is drawn in the range (log-uniform by default: as many tiles below
// the geometric middle as above; `uniform`: below the arithmetic middle), the tile is the level-0 square
// of that many microns resampled to `size`, keyed by (index, seed), and the loader's batches over such a
// source are identical for 0 and 3 threads.
TEST(online_wsi_source_continuous_magnification) {
    char spec[4400], err[DINO_ERRLEN];
    const char *slide = slide_path("CMU-1-Small-Region.svs");
    const double lo = 0.5, hi = 2.0;
    for (int uniform = 0; uniform < 2; uniform++) {
        snprintf(spec, sizeof spec, "wsi:%s,size=32,mpp_range=%g/%g%s", slide, lo, hi, uniform ? ",mpp_sampling=uniform" : "");
        TileSource *s = source_open(spec, err);
        CHECK(s != NULL, "%s", err);
        if (!s) return;
        const int n = 300;
        int below = 0, distinct = 0;
        double prev = 0, sat = 0;
        for (int i = 0; i < n; i++) {
            Image a, b;
            TileOrigin o, o2;
            CHECK(source_read_rgb_origin(s, i % source_count(s), (uint64_t)i, &a, &o, err) == 0, "%s", err);
            CHECK(a.w == 32 && a.h == 32, "tile %dx%d", a.w, a.h);
            CHECK(o.slide && o.mpp >= lo && o.mpp <= hi, "tile %d at %g um/px, outside [%g, %g]", i, o.mpp, lo, hi);
            CHECK_CLOSE(o.side0, 32 * o.mpp / 0.499, 0.01 * o.side0, 0); // the slide's level 0 is 0.499 um/px
            below += o.mpp < (uniform ? (lo + hi) / 2 : sqrt(lo * hi));
            distinct += o.mpp != prev;
            prev = o.mpp;
            sat += mean_saturation(&a);
            if (i < 8) { // keyed: the same (index, seed) is the same tile
                CHECK(source_read_rgb_origin(s, i % source_count(s), (uint64_t)i, &b, &o2, err) == 0, "%s", err);
                CHECK(o2.mpp == o.mpp && o2.x0 == o.x0 && !memcmp(a.px, b.px, 32 * 32 * 3), "tile %d not keyed", i);
                image_free(&b);
            }
            image_free(&a);
        }
        CHECK(distinct == n, "resolutions repeat: %d distinct of %d", distinct, n);
        CHECK(fabs(below / (double)n - 0.5) < 0.09, "%s sampling: %d of %d below the middle", uniform ? "uniform" : "log",
              below, n);
        CHECK(sat / n > 0.15, "sampled tiles are not tissue: mean saturation %.3f", sat / n);
        source_close(s);
    }
    // the batches of a loader over the source do not depend on its thread count
    snprintf(spec, sizeof spec, "wsi:%s,size=48,mpp_range=0.5/2", slide);
    TileSource *s = source_open(spec, err);
    CHECK(s != NULL, "%s", err);
    if (!s) return;
    LoaderConfig lc;
    loader_config_default(&lc);
    lc.batch_size = 3;
    lc.seed = 5;
    lc.aug.global_size = 32, lc.aug.local_size = 16, lc.aug.n_local = 2, lc.aug.blur_kernel = 5;
    lc.patch_size = 16;
    size_t gbytes = sizeof(float) * 2 * 3 * 3 * 32 * 32;
    float *first[2] = {dino_malloc(2 * gbytes), dino_malloc(2 * gbytes)};
    const int threads[2] = {0, 3};
    // plain crops, then ECT crops translated inside regions 1.75 x the tile (84 px for size=48)
    for (int ect = 0; ect < 2; ect++) {
        lc.aug.ect = ect;
        source_set_context(s, ect ? 1.75 : 1);
        for (int t = 0; t < 2; t++) {
            lc.n_threads = threads[t];
            Loader *l = loader_create(&lc, source_count(s), read_source_tile_cb, s, err);
            CHECK(l != NULL, "%s", err);
            if (!l) break;
            for (int b = 0; b < 2; b++) {
                const Batch *bt = loader_next(l, err);
                CHECK(bt != NULL && bt->corrupt == 0, "%s", err);
                if (bt) memcpy((char *)first[t] + b * gbytes, bt->global_crops, gbytes);
            }
            loader_destroy(l);
        }
        CHECK(!memcmp(first[0], first[1], 2 * gbytes), "%s batches differ between 0 and 3 loader threads",
              ect ? "ECT" : "plain");
    }
    free(first[0]);
    free(first[1]);
    source_close(s);
    // bad ranges name the option
    const char *bad[] = {"mpp_range=2/0.5", "mpp_range=0.5", "mpp_range=0.25/0.5/1", "mpp_sampling=cubic",
                         "mags=0.5/1,mpp_range=0.25/1"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        snprintf(spec, sizeof spec, "wsi:%s,%s", slide, bad[k]);
        CHECK(source_open(spec, err) == NULL && (strstr(err, "mpp_range") || strstr(err, "mpp_sampling")),
              "%s: %s", bad[k], err);
    }
}

// Extended context: the slide source reads a region context times the tile size, at the same
// resolution (the same microns per pixel), keyed like plain tiles.
TEST(online_wsi_source_extended_context_region) {
    char spec[4400], err[DINO_ERRLEN];
    snprintf(spec, sizeof spec, "wsi:%s,size=64,mpp=1", slide_path("CMU-1-Small-Region.svs"));
    TileSource *s = source_open(spec, err);
    CHECK(s != NULL, "%s", err);
    if (!s) return;
    source_set_context(s, 1.75);
    Image a, b;
    TileOrigin o;
    CHECK(source_read_rgb_origin(s, 3, 11, &a, &o, err) == 0, "%s", err);
    CHECK(a.w == 112 && a.h == 112, "region %dx%d, expected 112 (64 x 1.75)", a.w, a.h);
    CHECK(o.mpp == 1 && fabs(o.side0 - 112 / 0.499) < 1, "region at %g um/px, %g level-0 px", o.mpp, o.side0);
    CHECK(source_read_rgb(s, 3, 11, &b, err) == 0 && !memcmp(a.px, b.px, 112 * 112 * 3), "not keyed");
    CHECK(mean_saturation(&a) > 0.1, "region is not tissue");
    image_free(&a);
    image_free(&b);
    source_set_context(s, 1);
    CHECK(source_read_rgb(s, 3, 11, &a, err) == 0 && a.w == 64, "context 1: plain %dx%d tile", a.w, a.h);
    image_free(&a);
    source_close(s);
}

// The HSV filter on a slide source: tiles that fail it are redrawn from the same keyed stream, so the
// tiles read pass it (or are the best of 8 draws) and stay a function of (index, seed).
TEST(online_wsi_source_hsv_filter) {
    char spec[4400], err[DINO_ERRLEN];
    snprintf(spec, sizeof spec, "wsi:%s,size=48,mpp=1,min_tissue=0", slide_path("CMU-1-Small-Region.svs"));
    TileSource *s = source_open(spec, err);
    CHECK(s != NULL, "%s", err);
    if (!s) return;
    HsvFilter f;
    hsv_filter_default(&f);
    f.min_fraction = 0.6;
    const int n = 40;
    int pass_off = 0, pass_on = 0;
    for (int on = 0; on < 2; on++) {
        HsvFilter use = f;
        if (!on) use.min_fraction = 0;
        source_set_hsv_filter(s, &use);
        for (int i = 0; i < n; i++) {
            Image a, b;
            CHECK(source_read_rgb(s, i % source_count(s), 100 + i, &a, err) == 0, "%s", err);
            int pass = tissue_hsv_fraction(&a, &f) >= 0.6;
            if (on) {
                CHECK(source_read_rgb(s, i % source_count(s), 100 + i, &b, err) == 0 && !memcmp(a.px, b.px, 48 * 48 * 3),
                      "filtered tile %d not keyed", i);
                image_free(&b);
                pass_on += pass;
            } else {
                pass_off += pass;
            }
            image_free(&a);
        }
    }
    // min_tissue 0 lets glass in without the filter; with it, (nearly) every tile is H&E
    CHECK(pass_on >= n - 1 && pass_on > pass_off, "tiles passing the filter: %d of %d with it, %d without", pass_on, n,
          pass_off);
    source_close(s);
}
