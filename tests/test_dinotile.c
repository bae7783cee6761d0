#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/check.h"
#include "data/decode.h"
#include "data/shard.h"
#include "data/tiler.h"
#include "data/tissue.h"
#include "data/wsi.h"
#include "tests/harness.h"

static const char *slide_path(const char *name) {
    static char buf[4][4096];
    static int k;
    char *out = buf[k++ % 4];
    const char *candidates[3] = {test_src_path("data/demo/"), test_src_path("../shared/data/wsi/"), "/work/shared/data/wsi/"};
    for (int i = 0; i < 3; i++) {
        snprintf(out, 4096, "%s%s", candidates[i], name);
        if (access(out, R_OK) == 0) return out;
    }
    test_skip("test slide not found in data/demo, ../shared/data/wsi or /work/shared/data/wsi");
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

// Checks every record of out_dir/<stem>-00000.dtshard: decodable, right size, tissue-coloured, and
// returns the number of records (and, via *meta0, the first record's metadata).
static int64_t check_shard_tiles(const char *out_dir, const char *stem, int size, double min_sat, ShardTileMeta *meta0) {
    char path[4300], err[DINO_ERRLEN];
    snprintf(path, sizeof path, "%s/%s-00000.dtshard", out_dir, stem);
    Shard *s = shard_open(path, err);
    CHECK(s != NULL, "%s", err);
    if (!s) return -1;
    double sat = 0;
    int64_t n = shard_count(s);
    for (int64_t i = 0; i < n; i++) {
        ShardTileMeta m;
        const uint8_t *p;
        size_t len;
        Image im;
        CHECK(shard_record(s, i, &m, &p, &len, err) == 0, "%s", err);
        CHECK(decode_image_mem(p, len, 0, &im, err) == 0, "record %lld: %s", (long long)i, err);
        CHECK(im.w == size && im.h == size && (int)m.w == size, "record %lld size %dx%d", (long long)i, im.w, im.h);
        CHECK(m.slide_len == strlen(stem) && !memcmp(m.slide, stem, m.slide_len), "record %lld slide name", (long long)i);
        double si = mean_saturation(&im);
        CHECK(si > min_sat * 0.5, "record %lld at (%lld, %lld) looks like background: saturation %.3f", (long long)i,
              (long long)m.x, (long long)m.y, si);
        sat += si;
        if (i == 0 && meta0) *meta0 = m;
        image_free(&im);
    }
    if (n) CHECK(sat / n > min_sat, "mean saturation of the kept tiles %.3f <= %.3f", sat / n, min_sat);
    shard_close(s);
    return n;
}

TEST(demo_slide_tiles_are_tissue_and_background_is_skipped) {
    const char *slide = slide_path("CMU-1-Small-Region.svs");
    const char *out = test_tmpdir();
    TileOptions o;
    tile_options_default(&o);
    o.tile_size = 128;
    TileSummary sum;
    char err[DINO_ERRLEN];
    CHECK(!tile_slide_is_done(out, slide), "done before starting");
    CHECK(tile_slide(slide, out, &o, NULL, NULL, &sum, err) == 0, "%s", err);
    // grid: 2220 x 2967 px at 0.499 um/px in 128 px tiles at 0.5 um/px
    CHECK(sum.grid_tiles == 17 * 23, "grid %lld", (long long)sum.grid_tiles);
    CHECK(sum.kept_tiles > 0.15 * sum.grid_tiles && sum.kept_tiles < 0.6 * sum.grid_tiles, "kept %lld of %lld",
          (long long)sum.kept_tiles, (long long)sum.grid_tiles);
    CHECK(sum.level == 0 && !sum.mpp_assumed && sum.shards == 1, "level %d assumed %d shards %d", sum.level,
          sum.mpp_assumed, sum.shards);
    CHECK(check_shard_tiles(out, "CMU-1-Small-Region", 128, 0.2, NULL) == sum.kept_tiles, "shard count differs");
    CHECK(tile_slide_is_done(out, slide), "no done marker");
    // The skipped cells are background: read them back from the slide and compare.
    Wsi *w = wsi_open(slide, 0, err);
    double L = 128 * 0.5 / wsi_mpp(w), skipped_sat = 0;
    int skipped = 0, kept_seen = 0;
    char path[4300];
    snprintf(path, sizeof path, "%s/CMU-1-Small-Region-00000.dtshard", out);
    Shard *s = shard_open(path, err);
    uint8_t *is_kept = dino_calloc(17 * 23, 1);
    for (int64_t i = 0; i < shard_count(s); i++) {
        ShardTileMeta m;
        const uint8_t *p;
        size_t len;
        shard_record(s, i, &m, &p, &len, err);
        int gx = (int)lround(m.x / L), gy = (int)lround(m.y / L);
        CHECK(gx >= 0 && gx < 17 && gy >= 0 && gy < 23, "record %lld off the grid", (long long)i);
        if (gx >= 0 && gx < 17 && gy >= 0 && gy < 23) is_kept[gy * 17 + gx] = 1, kept_seen++;
    }
    shard_close(s);
    CHECK(kept_seen == sum.kept_tiles, "kept cells %d", kept_seen);
    for (int c = 0; c < 17 * 23; c += 3) {
        if (is_kept[c]) continue;
        Image im;
        CHECK(wsi_read_tile(w, llround((c % 17) * L), llround((c / 17) * L), 0.5, 32, &im, NULL, err) == 0, "%s", err);
        skipped_sat += mean_saturation(&im);
        skipped++;
        image_free(&im);
    }
    CHECK(skipped > 0 && skipped_sat / skipped < 0.12, "skipped cells have mean saturation %.3f", skipped_sat / skipped);
    free(is_kept);
    wsi_close(w);
}

TEST(tcga_slide_without_mpp_needs_assume_mpp) {
    const char *slide = slide_path("TCGA-CR-7395-01A-01-TS1.svs");
    const char *out = test_tmpdir();
    TileOptions o;
    tile_options_default(&o);
    o.tile_size = 96;
    o.mpp = 1.0;
    TileSummary sum;
    char err[DINO_ERRLEN];
    CHECK(tile_slide(slide, out, &o, NULL, NULL, &sum, err) == -1, "slide without mpp was tiled");
    CHECK(strstr(err, "TCGA-CR-7395-01A-01-TS1.svs") && strstr(err, "--assume-mpp"), "message: %s", err);
    CHECK(!tile_slide_is_done(out, slide), "marker written for a refused slide");
    o.assume_mpp = 0.25;
    CHECK(tile_slide(slide, out, &o, NULL, NULL, &sum, err) == 0, "%s", err);
    // 1.0 um/px from 0.25 um/px level 0: downsample 4, read from level 1 (downsample 2) and halved
    CHECK(sum.level == 1 && sum.mpp_assumed, "level %d", sum.level);
    CHECK(sum.grid_tiles == (4443 / 384) * (3567 / 384), "grid %lld", (long long)sum.grid_tiles);
    CHECK(sum.kept_tiles > 0.3 * sum.grid_tiles && sum.kept_tiles < 0.95 * sum.grid_tiles, "kept %lld of %lld",
          (long long)sum.kept_tiles, (long long)sum.grid_tiles);
    ShardTileMeta m0;
    CHECK(check_shard_tiles(out, "TCGA-CR-7395-01A-01-TS1", 96, 0.2, &m0) == sum.kept_tiles, "shard count differs");
    CHECK(m0.level == 1 && fabsf(m0.mpp - 1.0f) < 1e-6f, "metadata level %d mpp %g", m0.level, m0.mpp);
}

TEST(boxes_pyramid_level_in_tile_metadata) {
    const char *slide = slide_path("boxes.tiff");
    const char *out = test_tmpdir();
    TileOptions o;
    tile_options_default(&o);
    o.tile_size = 16;
    o.mpp = 4.0;
    o.assume_mpp = 1.0;
    o.min_tissue = 0.3;
    o.tiles_per_shard = 3;
    TileSummary sum;
    char err[DINO_ERRLEN], path[4300];
    CHECK(tile_slide(slide, out, &o, NULL, NULL, &sum, err) == 0, "%s", err);
    CHECK(sum.level == 2, "4 um/px from 1 um/px must read level 2 (downsample 4.016), got %d", sum.level);
    CHECK(sum.grid_tiles == (300 / 64) * (250 / 64), "grid %lld", (long long)sum.grid_tiles);
    CHECK(sum.kept_tiles > 0 && sum.shards == (int)((sum.kept_tiles + 2) / 3), "kept %lld in %d shards",
          (long long)sum.kept_tiles, sum.shards);
    int64_t total = 0;
    for (int k = 0; k < sum.shards; k++) {
        snprintf(path, sizeof path, "%s/boxes-%05d.dtshard", out, k);
        Shard *s = shard_open(path, err);
        CHECK(s != NULL, "%s", err);
        if (!s) continue;
        for (int64_t i = 0; i < shard_count(s); i++) {
            ShardTileMeta m;
            const uint8_t *p;
            size_t len;
            CHECK(shard_record(s, i, &m, &p, &len, err) == 0 && m.level == 2 && m.w == 16, "record level %d", m.level);
        }
        total += shard_count(s);
        shard_close(s);
    }
    CHECK(total == sum.kept_tiles, "records %lld, kept %lld", (long long)total, (long long)sum.kept_tiles);
}

// Runs a command, captures stdout+stderr, returns its exit status.
static int run(const char *cmd, char *output, size_t cap) {
    FILE *p = popen(cmd, "r");
    CHECK(p != NULL, "cannot run %s", cmd);
    size_t n = fread(output, 1, cap - 1, p);
    output[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST(dinotile_program_refuses_then_tiles_then_skips_done) {
    if (access("./dinotile", X_OK) != 0) test_skip("./dinotile not built next to the tests");
    const char *tcga = slide_path("TCGA-CR-7395-01A-01-TS1.svs");
    const char *boxes = slide_path("boxes.tiff");
    const char *out = test_tmpdir();
    static char cmd[16384], output[65536];
    snprintf(cmd, sizeof cmd, "./dinotile -o %s/tiles -s 64 -m 2 -j 2 %s %s 2>&1", out, tcga, boxes);
    CHECK(run(cmd, output, sizeof output) == 1, "exit status should be 1 when a slide fails:\n%s", output);
    CHECK(strstr(output, "TCGA-CR-7395-01A-01-TS1.svs") && strstr(output, "--assume-mpp"), "output:\n%s", output);
    CHECK(strstr(output, "2 failed"), "summary line missing:\n%s", output);
    snprintf(cmd, sizeof cmd, "./dinotile -o %s/tiles -s 64 -m 2 -j 2 --assume-mpp 0.5 %s %s 2>&1", out, tcga, boxes);
    CHECK(run(cmd, output, sizeof output) == 0, "with --assume-mpp:\n%s", output);
    CHECK(strstr(output, "tiles kept of") && strstr(output, "2 tiled"), "output:\n%s", output);
    CHECK(run(cmd, output, sizeof output) == 0, "re-run:\n%s", output);
    CHECK(strstr(output, "already done") && strstr(output, "2 skipped"), "re-run did not skip:\n%s", output);
    snprintf(cmd, sizeof cmd, "./dinotile -o %s/tiles --quality 0 %s 2>&1", out, tcga);
    CHECK(run(cmd, output, sizeof output) == 2 && strstr(output, "--quality"), "bad option:\n%s", output);
}

// dinotile --hsv-filter (Midnight's per-tile filter): with min_tissue 0 every grid cell is a candidate;
// the filter drops the glass, every kept tile passes it, the counts add up and the marker records them.
TEST(hsv_filter_drops_tiles_and_counts_them) {
    const char *slide = slide_path("CMU-1-Small-Region.svs");
    const char *out = test_tmpdir();
    TileOptions o;
    tile_options_default(&o);
    o.tile_size = 64;
    o.mpp = 2.0;
    o.min_tissue = 0;
    o.hsv.min_fraction = 0.6;
    TileSummary sum;
    char err[DINO_ERRLEN];
    CHECK(tile_slide(slide, out, &o, NULL, NULL, &sum, err) == 0, "%s", err);
    CHECK(sum.kept_tiles + sum.hsv_rejected == sum.grid_tiles, "kept %lld + rejected %lld != grid %lld",
          (long long)sum.kept_tiles, (long long)sum.hsv_rejected, (long long)sum.grid_tiles);
    CHECK(sum.hsv_rejected > 0.3 * sum.grid_tiles && sum.kept_tiles > 0.15 * sum.grid_tiles, "kept %lld rejected %lld",
          (long long)sum.kept_tiles, (long long)sum.hsv_rejected);
    char path[4300];
    snprintf(path, sizeof path, "%s/CMU-1-Small-Region-00000.dtshard", out);
    Shard *s = shard_open(path, err);
    CHECK(s != NULL, "%s", err);
    if (!s) return;
    int low = 0;
    for (int64_t i = 0; i < shard_count(s); i++) {
        const uint8_t *p;
        size_t len;
        Image im;
        CHECK(shard_record(s, i, NULL, &p, &len, err) == 0 && decode_image_mem(p, len, 0, &im, err) == 0, "%s", err);
        low += tissue_hsv_fraction(&im, &o.hsv) < 0.55; // JPEG may move a tile at the threshold a little
        image_free(&im);
    }
    CHECK(low == 0, "%d kept tiles fail the filter", low);
    shard_close(s);
    snprintf(path, sizeof path, "%s/CMU-1-Small-Region.done", out);
    FILE *f = fopen(path, "r");
    char text[2048] = "";
    CHECK(f && fread(text, 1, sizeof text - 1, f) > 0, "no marker");
    if (f) fclose(f);
    char want[64];
    snprintf(want, sizeof want, "hsv_rejected=%lld\n", (long long)sum.hsv_rejected);
    CHECK(strstr(text, "hsv_min_fraction=0.600") && strstr(text, want), "marker:\n%s", text);
    if (access("./dinotile", X_OK) == 0) {
        static char cmd[8192], output[8192];
        snprintf(cmd, sizeof cmd, "./dinotile -o %s/t2 --hsv-filter 1.5 %s 2>&1", out, slide);
        CHECK(run(cmd, output, sizeof output) == 2 && strstr(output, "--hsv-filter"), "bad value:\n%s", output);
    }
}
