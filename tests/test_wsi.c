#include <string.h>
#include <unistd.h>

#include "common/check.h"
#include "common/rng.h"
#include "data/tissue.h"
#include "data/wsi.h"
#include "tests/harness.h"

// The test slides live in ../shared (not bundled); the demo slide is in data/demo.
static const char *slide_path(const char *name) {
    static char buf[4096];
    const char *candidates[3] = {test_src_path("data/demo/"), test_src_path("../shared/data/wsi/"), "/work/shared/data/wsi/"};
    for (int i = 0; i < 3; i++) {
        snprintf(buf, sizeof buf, "%s%s", candidates[i], name);
        if (access(buf, R_OK) == 0) return buf;
    }
    char why[256];
    snprintf(why, sizeof why, "test slide %s not found in data/demo, ../shared/data/wsi or /work/shared/data/wsi", name);
    test_skip(why);
}

TEST(resize_area_and_bilinear) {
    // 4x2 -> 2x1: exact 2x2 box averages
    uint8_t src[4 * 2 * 3], dst[2 * 1 * 3];
    for (int i = 0; i < 24; i++) src[i] = (uint8_t)(i * 10);
    resize_rgb(src, 4, 2, dst, 2, 1);
    for (int x = 0; x < 2; x++)
        for (int c = 0; c < 3; c++) {
            int s = src[3 * (2 * x) + c] + src[3 * (2 * x + 1) + c] + src[3 * (4 + 2 * x) + c] + src[3 * (4 + 2 * x + 1) + c];
            CHECK(dst[3 * x + c] == (s + 2) / 4, "box average at %d,%d: %d vs %d", x, c, dst[3 * x + c], (s + 2) / 4);
        }
    // 3 -> 2 (non-integer factor): output 0 covers pixel 0 and half of pixel 1
    uint8_t row[9] = {0, 0, 0, 90, 90, 90, 180, 180, 180}, out2[6];
    resize_rgb(row, 3, 1, out2, 2, 1);
    CHECK(out2[0] == 30 && out2[3] == 150, "3->2 area: %d %d (expected 30 150)", out2[0], out2[3]);
    // 2 -> 4 bilinear with half-pixel centres: 0, 25, 75, 100 for a 0..100 edge
    uint8_t two[6] = {0, 0, 0, 100, 100, 100}, four[12];
    resize_rgb(two, 2, 1, four, 4, 1);
    CHECK(four[0] == 0 && four[3] == 25 && four[6] == 75 && four[9] == 100, "bilinear: %d %d %d %d", four[0],
          four[3], four[6], four[9]);
}

TEST(missing_mpp_refused_with_a_clear_message) {
    const char *p = slide_path("TCGA-CR-7395-01A-01-TS1.svs");
    char err[DINO_ERRLEN];
    Wsi *w = wsi_open(p, 0, err);
    CHECK(w == NULL, "a slide without mpp opened without --assume-mpp");
    CHECK(strstr(err, p) && strstr(err, "microns-per-pixel") && strstr(err, "--assume-mpp") && strstr(err, "assume_mpp="),
          "message: %s", err);
    w = wsi_open(p, 0.25, err);
    CHECK(w != NULL, "with assume_mpp: %s", err);
    CHECK(wsi_mpp(w) == 0.25 && wsi_mpp_assumed(w), "assumed mpp not used");
    wsi_close(w);
    CHECK(wsi_open("/nonexistent/slide.svs", 0, err) == NULL && strstr(err, "/nonexistent/slide.svs"), "missing: %s", err);
    // metadata wins over the assumption
    w = wsi_open(slide_path("CMU-1-Small-Region.svs"), 0.25, err);
    CHECK(w && fabs(wsi_mpp(w) - 0.499) < 1e-6 && !wsi_mpp_assumed(w), "CMU mpp %g", w ? wsi_mpp(w) : 0);
    wsi_close(w);
}

TEST(boxes_level_selection) {
    char err[DINO_ERRLEN];
    Wsi *w = wsi_open(slide_path("boxes.tiff"), 1.0, err);
    CHECK(w != NULL, "%s", err);
    if (!w) return;
    CHECK(wsi_level_count(w) == 4, "boxes.tiff has %d levels", wsi_level_count(w));
    // downsamples 1, 2, 4.016, 8.086: the coarsest level not coarser than asked (2% slack)
    const double want_ds[] = {1, 1.9, 2, 3, 4, 5, 8, 100};
    const int want_level[] = {0, 0, 1, 1, 2, 2, 3, 3};
    for (int i = 0; i < 8; i++)
        CHECK(wsi_best_level(w, want_ds[i]) == want_level[i], "downsample %g -> level %d, expected %d", want_ds[i],
              wsi_best_level(w, want_ds[i]), want_level[i]);
    // a tile at 4 um/px is read from level 2 and matches the area-averaged level-0 pixels
    Image t4, t1;
    int level;
    CHECK(wsi_read_tile(w, 40, 40, 4.0, 32, &t4, &level, err) == 0, "%s", err);
    CHECK(level == 2, "4 um/px tile read from level %d", level);
    CHECK(wsi_read_tile(w, 40, 40, 1.0, 128, &t1, &level, err) == 0 && level == 0, "level-0 read: %s", err);
    uint8_t *ref = dino_malloc(32 * 32 * 3);
    resize_rgb(t1.px, 128, 128, ref, 32, 32);
    double d = 0;
    for (int i = 0; i < 32 * 32 * 3; i++) d += abs((int)ref[i] - (int)t4.px[i]);
    d /= 32 * 32 * 3;
    CHECK(d < 12, "level-2 tile differs from the reduced level-0 tile by %.1f on average", d);
    free(ref);
    image_free(&t4);
    image_free(&t1);
    wsi_close(w);
}

TEST(outside_the_slide_is_white) {
    char err[DINO_ERRLEN];
    Wsi *w = wsi_open(slide_path("CMU-1-Small-Region.svs"), 0, err);
    CHECK(w != NULL, "%s", err);
    if (!w) return;
    uint8_t *rgb = dino_malloc(100 * 100 * 3);
    // OpenSlide returns transparent pixels outside the slide: they must become white, not black
    CHECK(wsi_read_region_rgb(w, 0, -50, -50, 100, 100, rgb, err) == 0, "%s", err);
    int white = 1;
    for (int y = 0; y < 50; y++)
        for (int x = 0; x < 50; x++)
            for (int c = 0; c < 3; c++) white &= rgb[3 * (y * 100 + x) + c] == 255;
    CHECK(white, "the transparent corner is not white");
    free(rgb);
    wsi_close(w);
}

// Draws a filled disc of colour c.
static void disc(Image *im, int cx, int cy, int r, const uint8_t c[3]) {
    for (int y = cy - r; y <= cy + r; y++)
        for (int x = cx - r; x <= cx + r; x++)
            if (x >= 0 && y >= 0 && x < im->w && y < im->h && (x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r)
                memcpy(im->px + 3 * ((size_t)y * im->w + x), c, 3);
}

TEST(tissue_detection_handles_pen_dark_marks_and_holes) {
    Image im;
    image_alloc(&im, 200, 160);
    Rng r = rng_make(5, 0, 0, 0);
    for (size_t i = 0; i < 200 * 160 * 3; i++) im.px[i] = (uint8_t)(236 + rng_below(&r, 10)); // glass
    const uint8_t pink[3] = {220, 140, 190}, glass[3] = {240, 240, 240}, blue[3] = {40, 60, 200}, green[3] = {40, 160, 60},
                  black[3] = {15, 15, 20};
    disc(&im, 60, 80, 45, pink);   // tissue
    disc(&im, 60, 80, 4, glass);   // a small hole (a lumen): filled
    disc(&im, 160, 40, 15, blue);  // blue pen mark on glass
    disc(&im, 160, 120, 15, green); // green pen
    disc(&im, 130, 80, 8, black);  // black ink
    uint8_t *m = dino_malloc(200 * 160);
    tissue_detect_rgb(&im, m);
    CHECK(m[80 * 200 + 60 + 30] == 1, "tissue disc not detected");
    CHECK(m[80 * 200 + 60] == 1, "small hole in tissue not filled");
    CHECK(m[40 * 200 + 160] == 0, "blue pen detected as tissue");
    CHECK(m[120 * 200 + 160] == 0, "green pen detected as tissue");
    CHECK(m[80 * 200 + 130] == 0, "black ink detected as tissue");
    CHECK(m[5 * 200 + 5] == 0, "glass detected as tissue");
    int64_t n = 0;
    for (int i = 0; i < 200 * 160; i++) n += m[i];
    double disc_area = M_PI * 45 * 45;
    CHECK(fabs(n - disc_area) < 0.05 * disc_area, "tissue area %lld, the disc is %.0f", (long long)n, disc_area);
    free(m);
    image_free(&im);
}

TEST(tissue_fraction_and_uniform_sampling) {
    // 20x10 mask at 4 level-0 px per mask px: two tissue blocks of equal area
    uint8_t mask[200] = {0};
    for (int y = 2; y < 6; y++)
        for (int x = 1; x < 4; x++) mask[y * 20 + x] = 1, mask[y * 20 + 12 + x] = 1;
    TissueMask tm;
    tissue_mask_from(&tm, mask, 20, 10, 4.0);
    CHECK(tm.tissue_px == 24, "tissue px %lld", (long long)tm.tissue_px);
    CHECK_CLOSE(tissue_fraction(&tm, 4, 8, 12, 16), 1.0, 1e-12, 0);     // exactly block 1
    CHECK_CLOSE(tissue_fraction(&tm, 0, 0, 24, 32), 12.0 / 48, 1e-12, 0);
    CHECK_CLOSE(tissue_fraction(&tm, -40, -40, 20, 20), 0.0, 1e-12, 0); // outside
    Rng r = rng_make(11, 0, 0, 0);
    int left = 0;
    for (int k = 0; k < 4000; k++) {
        double x, y;
        CHECK(tissue_sample_point(&tm, &r, &x, &y) == 0, "no sample");
        int mx = (int)(x / 4), my = (int)(y / 4);
        CHECK(mask[my * 20 + mx] == 1, "sample (%g, %g) outside tissue", x, y);
        left += mx < 10;
    }
    CHECK_CLOSE(left / 4000.0, 0.5, 0.04, 0);
    tissue_mask_free(&tm);
}

TEST(slide_tissue_mask_on_demo_slide) {
    char err[DINO_ERRLEN];
    Wsi *w = wsi_open(slide_path("CMU-1-Small-Region.svs"), 0, err);
    CHECK(w != NULL, "%s", err);
    if (!w) return;
    TissueMask tm;
    CHECK(tissue_mask_for_slide(w, 16, &tm, err) == 0, "%s", err);
    CHECK(tm.w == (2220 + 15) / 16 && tm.h == (2967 + 15) / 16, "mask %dx%d", tm.w, tm.h);
    double frac = (double)tm.tissue_px / (tm.w * tm.h);
    // the section covers roughly a third of this region (checked by eye on the thumbnail)
    CHECK(frac > 0.2 && frac < 0.6, "tissue fraction %.3f", frac);
    // the top-left and right edge are glass
    CHECK(tissue_fraction(&tm, 0, 0, 300, 300) < 0.05, "top-left corner has tissue");
    CHECK(tissue_fraction(&tm, 1900, 0, 300, 600) < 0.05, "top-right corner has tissue");
    tissue_mask_free(&tm);
    wsi_close(w);
}

TEST(thumbnail_is_a_box_average_of_level_0) {
    char err[DINO_ERRLEN];
    Wsi *w = wsi_open(slide_path("CMU-1-Small-Region.svs"), 0, err);
    CHECK(w != NULL, "%s", err);
    if (!w) return;
    Image th;
    CHECK(wsi_thumbnail(w, 4, &th, err) == 0, "%s", err);
    CHECK(th.w == 555 && th.h == 742, "thumbnail %dx%d", th.w, th.h);
    // 4x4 blocks of level 0, rounded like the thumbnail; a block in the tissue and one on glass
    uint8_t *rgb = dino_malloc(400 * 400 * 3);
    const int origins[2][2] = {{800, 1400}, {0, 0}};
    for (int k = 0; k < 2; k++) {
        CHECK(wsi_read_region_rgb(w, 0, origins[k][0], origins[k][1], 400, 400, rgb, err) == 0, "%s", err);
        int mismatches = 0;
        for (int y = 0; y < 100; y++)
            for (int x = 0; x < 100; x++)
                for (int c = 0; c < 3; c++) {
                    int s = 0;
                    for (int dy = 0; dy < 4; dy++)
                        for (int dx = 0; dx < 4; dx++) s += rgb[3 * ((4 * y + dy) * 400 + 4 * x + dx) + c];
                    int tx = origins[k][0] / 4 + x, ty = origins[k][1] / 4 + y;
                    mismatches += th.px[3 * ((size_t)ty * th.w + tx) + c] != (s + 8) / 16;
                }
        CHECK(mismatches == 0, "%d thumbnail values differ from the 4x4 averages at (%d, %d)", mismatches,
              origins[k][0], origins[k][1]);
    }
    free(rgb);
    image_free(&th);
    wsi_close(w);
}

// ---- Midnight's per-tile HSV filter ---------------------------------------------------------------

// OpenCV's 8-bit HSV convention (cv::cvtColor COLOR_RGB2HSV): H = degrees / 2, S and V in 0..255.
TEST(hsv_conversion_follows_opencv_8bit_convention) {
    const int rgb[][3] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 0, 255}, {128, 64, 192}, {200, 200, 200}, {0, 0, 0}};
    const int hsv[][3] = {{0, 255, 255}, {60, 255, 255}, {120, 255, 255}, {150, 255, 255}, {135, 170, 192}, {0, 0, 200}, {0, 0, 0}};
    for (int i = 0; i < 7; i++) {
        int h, s, v;
        rgb_to_hsv_cv(rgb[i][0], rgb[i][1], rgb[i][2], &h, &s, &v);
        CHECK(h == hsv[i][0] && s == hsv[i][1] && v == hsv[i][2], "rgb (%d %d %d) -> hsv (%d %d %d), expected (%d %d %d)",
              rgb[i][0], rgb[i][1], rgb[i][2], h, s, v, hsv[i][0], hsv[i][1], hsv[i][2]);
    }
    // a hue just below 360 degrees wraps to 0 (OpenCV's H < 180)
    int h, s, v;
    rgb_to_hsv_cv(255, 0, 1, &h, &s, &v);
    CHECK(h == 0 || h == 179, "hue of (255, 0, 1) is %d", h);
}

// A tile of colour `c` with +-3 levels of noise on a `frac` share of its pixels, `rest` on the others.
static void noisy_tile(Image *im, const uint8_t c[3], const uint8_t rest[3], double frac, uint64_t seed) {
    image_alloc(im, 64, 64);
    Rng r = rng_make(seed, 0, 0, 0);
    for (int i = 0; i < 64 * 64; i++) {
        const uint8_t *base = i < (int)(frac * 64 * 64) ? c : rest;
        for (int k = 0; k < 3; k++) {
            int v = base[k] + (int)rng_below(&r, 7) - 3;
            im->px[3 * i + k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
}

TEST(hsv_filter_keeps_tissue_and_rejects_glass_ink_and_pen) {
    HsvFilter f;
    hsv_filter_default(&f);
    char err[DINO_ERRLEN];
    CHECK(hsv_filter_check(&f, "test", err) == 0, "%s", err);
    CHECK(f.min_fraction == 0 && f.hue[0] == 90 && f.hue[1] == 180 && f.saturation[0] == 8 && f.value[0] == 103,
          "Midnight's ranges, off by default");
    const uint8_t eosin[3] = {235, 160, 205}, haem[3] = {120, 80, 165}, glass[3] = {242, 240, 244},
                  black[3] = {25, 22, 30}, green[3] = {60, 170, 80}, brown[3] = {150, 110, 60};
    Image im;
    noisy_tile(&im, eosin, eosin, 1, 1); // off: everything passes
    CHECK(tissue_hsv_accept(&im, &f), "the filter is off by default");
    image_free(&im);
    f.min_fraction = 0.6;
    const struct { const char *what; const uint8_t *a, *b; double frac; int keep; } cases[] = {
        {"eosin", eosin, eosin, 1, 1},
        {"haematoxylin and eosin", haem, eosin, 0.4, 1},
        {"70% tissue on glass", eosin, glass, 0.7, 1},
        {"50% tissue on glass", eosin, glass, 0.5, 0},
        {"glass", glass, glass, 1, 0},
        {"black ink", black, black, 1, 0},
        {"green pen", green, green, 1, 0},
        {"green pen over tissue", green, eosin, 0.6, 0},
        {"brown debris", brown, brown, 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        noisy_tile(&im, cases[i].a, cases[i].b, cases[i].frac, 10 + i);
        double fr = tissue_hsv_fraction(&im, &f);
        CHECK(tissue_hsv_accept(&im, &f) == cases[i].keep, "%s: in-range fraction %.3f, %s", cases[i].what, fr,
              cases[i].keep ? "should be kept" : "should be rejected");
        image_free(&im);
    }
    f.hue[0] = 100, f.hue[1] = 90;
    CHECK(hsv_filter_check(&f, "data.hsv_hue", err) == -1 && strstr(err, "data.hsv_hue") && strstr(err, "hue"),
          "a reversed range is refused: %s", err);
}

// The resampled reader at an exact level resolution matches the level's own pixels (bicubic over an
// integer box of the same size is a copy), and a resolution between levels is read from the finer one.
TEST(resampled_region_reader_matches_levels) {
    char err[DINO_ERRLEN];
    Wsi *w = wsi_open(slide_path("boxes.tiff"), 1.0, err);
    CHECK(w != NULL, "%s", err);
    if (!w) return;
    Image a;
    int level;
    CHECK(wsi_read_region_resampled(w, 64, 32, 2.0, 40, 24, &a, &level, err) == 0, "%s", err);
    CHECK(level == 1 && a.w == 40 && a.h == 24, "level %d size %dx%d", level, a.w, a.h);
    uint8_t *ref = dino_malloc(40 * 24 * 3);
    CHECK(wsi_read_region_rgb(w, 1, 64, 32, 40, 24, ref, err) == 0, "%s", err);
    CHECK(memcmp(ref, a.px, 40 * 24 * 3) == 0, "an exact-level read is not a copy of the level's pixels");
    free(ref);
    image_free(&a);
    // 1.5 um/px: from level 0 (1.0), shrunk by 1.5; compared with the area-averaged tile of the old reader
    Image b, c;
    CHECK(wsi_read_region_resampled(w, 40, 40, 1.5, 48, 48, &b, &level, err) == 0 && level == 0, "%s", err);
    CHECK(wsi_read_tile(w, 40, 40, 1.5, 48, &c, NULL, err) == 0, "%s", err);
    double d = 0;
    for (int i = 0; i < 48 * 48 * 3; i++) d += abs((int)b.px[i] - (int)c.px[i]);
    d /= 48 * 48 * 3;
    CHECK(d < 6, "bicubic and area-averaged tiles of the same region differ by %.2f on average", d);
    image_free(&b);
    image_free(&c);
    wsi_close(w);
}
