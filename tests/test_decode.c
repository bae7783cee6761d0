#include <png.h>
#include <string.h>
#include <tiffio.h>

#include "common/check.h"
#include "data/decode.h"
#include "data/synth.h"
#include "tests/harness.h"

static double mean_abs_diff(const Image *a, const Image *b) {
    double s = 0;
    size_t n = (size_t)a->w * a->h * 3;
    for (size_t i = 0; i < n; i++) s += abs((int)a->px[i] - (int)b->px[i]);
    return s / n;
}

// A smooth gradient plus texture: JPEG keeps it well, so decode errors stand out.
static void test_image(Image *im, int w, int h) {
    image_alloc(im, w, h);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = im->px + 3 * ((size_t)y * w + x);
            p[0] = (uint8_t)(x * 255 / w);
            p[1] = (uint8_t)(y * 255 / h);
            p[2] = (uint8_t)(128 + 60 * sin(x * 0.05) * cos(y * 0.07));
        }
}

TEST(jpeg_encode_decode_roundtrip) {
    Image im, back;
    synth_tile(1, 3, 4, 256, &im);
    uint8_t *jpg;
    size_t n;
    char err[DINO_ERRLEN];
    CHECK(encode_jpeg(&im, 95, &jpg, &n, err) == 0, "encode: %s", err);
    CHECK(image_format_sniff(jpg, n) == IMAGE_FORMAT_JPEG, "not sniffed as JPEG");
    int w, h;
    CHECK(jpeg_read_size(jpg, n, &w, &h, err) == 0 && w == 256 && h == 256, "header size %dx%d", w, h);
    CHECK(decode_image_mem(jpg, n, 0, &back, err) == 0, "decode: %s", err);
    CHECK(back.w == 256 && back.h == 256, "decoded size %dx%d", back.w, back.h);
    double d = mean_abs_diff(&im, &back);
    CHECK(d < 4.0, "quality-95 JPEG differs by %.2f on average", d);
    // lower quality: smaller file, larger error, still the same picture
    uint8_t *jpg2;
    size_t n2;
    CHECK(encode_jpeg(&im, 30, &jpg2, &n2, err) == 0, "encode: %s", err);
    CHECK(n2 < n, "quality 30 (%zu bytes) not smaller than quality 95 (%zu)", n2, n);
    free(jpg2);
    CHECK(encode_jpeg(&im, 0, &jpg2, &n2, err) == -1 && jpg2 == NULL, "quality 0 accepted");
    free(jpg);
    image_free(&im);
    image_free(&back);
}

TEST(jpeg_scaled_decode_picks_smallest_scale_above_min_side) {
    Image im, full, small;
    test_image(&im, 512, 384);
    uint8_t *jpg;
    size_t n;
    char err[DINO_ERRLEN];
    CHECK(encode_jpeg(&im, 95, &jpg, &n, err) == 0, "encode: %s", err);
    // TurboJPEG scales by k/8: for a shorter side of 384 and min_side 100, 3/8 gives 144 (1/4 would give 96).
    CHECK(decode_jpeg_mem(jpg, n, 100, &small, err) == 0, "decode: %s", err);
    CHECK(small.w == 192 && small.h == 144, "scaled decode gave %dx%d, expected 192x144", small.w, small.h);
    image_free(&small);
    CHECK(decode_jpeg_mem(jpg, n, 48, &small, err) == 0, "decode: %s", err);
    CHECK(small.w == 64 && small.h == 48, "1/8 decode gave %dx%d", small.w, small.h);
    // the scaled pixels are the full picture, reduced
    Image ref;
    CHECK(decode_jpeg_mem(jpg, n, 0, &full, err) == 0, "decode: %s", err);
    CHECK(full.w == 512 && full.h == 384, "full decode %dx%d", full.w, full.h);
    image_alloc(&ref, 64, 48);
    for (int y = 0; y < 48; y++) // 8x8 box average
        for (int x = 0; x < 64; x++)
            for (int c = 0; c < 3; c++) {
                int s = 0;
                for (int dy = 0; dy < 8; dy++)
                    for (int dx = 0; dx < 8; dx++) s += full.px[3 * ((size_t)(8 * y + dy) * 512 + 8 * x + dx) + c];
                ref.px[3 * ((size_t)y * 64 + x) + c] = (uint8_t)((s + 32) / 64);
            }
    double d = mean_abs_diff(&small, &ref);
    CHECK(d < 3.0, "1/8-scale decode differs from the box-averaged full decode by %.2f", d);
    image_free(&small);
    CHECK(decode_jpeg_mem(jpg, n, 1000, &small, err) == 0 && small.w == 512, "min_side above the size must not upscale");
    free(jpg);
    image_free(&im);
    image_free(&full);
    image_free(&small);
    image_free(&ref);
}

TEST(jpeg_truncated_or_corrupt_is_an_error) {
    Image im, out;
    test_image(&im, 128, 128);
    uint8_t *jpg;
    size_t n;
    char err[DINO_ERRLEN] = "";
    CHECK(encode_jpeg(&im, 90, &jpg, &n, err) == 0, "encode: %s", err);
    CHECK(decode_image_mem(jpg, n / 2, 0, &out, err) == -1, "truncated JPEG decoded");
    CHECK(strstr(err, "JPEG") != NULL, "error does not say JPEG: %s", err);
    CHECK(out.px == NULL, "output left allocated after an error");
    CHECK(decode_image_mem(jpg, 40, 0, &out, err) == -1, "JPEG cut inside the header decoded");
    memset(jpg + n / 3, 0x00, 64); // garbage inside the entropy-coded data (a hole of zeros)
    jpg[n / 3 + 10] = 0xFF;
    jpg[n / 3 + 11] = 0xD9; // and a premature end-of-image marker
    CHECK(decode_image_mem(jpg, n, 0, &out, err) == -1, "corrupt JPEG decoded");
    uint8_t junk[64] = {1, 2, 3};
    CHECK(decode_image_mem(junk, sizeof junk, 0, &out, err) == -1, "junk decoded");
    CHECK(strstr(err, "not a JPEG, PNG or TIFF") != NULL, "unhelpful message: %s", err);
    free(jpg);
    image_free(&im);
}

TEST(png_decode_exact_and_truncated_rejected) {
    Image im, out;
    test_image(&im, 100, 70);
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    pi.width = 100;
    pi.height = 70;
    pi.format = PNG_FORMAT_RGB;
    png_alloc_size_t n = 0;
    CHECK(png_image_write_to_memory(&pi, NULL, &n, 0, im.px, 0, NULL), "png size query failed");
    uint8_t *buf = dino_malloc(n);
    CHECK(png_image_write_to_memory(&pi, buf, &n, 0, im.px, 0, NULL), "png write failed: %s", pi.message);
    char err[DINO_ERRLEN];
    CHECK(decode_image_mem(buf, n, 0, &out, err) == 0, "decode: %s", err);
    CHECK(out.w == 100 && out.h == 70 && memcmp(out.px, im.px, 100 * 70 * 3) == 0, "PNG not decoded exactly");
    image_free(&out);
    CHECK(decode_image_mem(buf, n - 30, 0, &out, err) == -1, "truncated PNG decoded");
    CHECK(strstr(err, "PNG") != NULL, "error does not say PNG: %s", err);
    free(buf);
    // grayscale + alpha: transparent becomes white, gray is replicated to RGB
    uint8_t ga[4 * 2] = {10, 255, 200, 255, 77, 0, 0, 128};
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    pi.width = 2;
    pi.height = 2;
    pi.format = PNG_FORMAT_GA;
    n = 0;
    png_image_write_to_memory(&pi, NULL, &n, 0, ga, 0, NULL);
    buf = dino_malloc(n);
    CHECK(png_image_write_to_memory(&pi, buf, &n, 0, ga, 0, NULL), "png write failed");
    CHECK(decode_png_mem(buf, n, &out, err) == 0, "decode: %s", err);
    CHECK(out.px[0] == 10 && out.px[1] == 10 && out.px[2] == 10, "gray not replicated: %d %d %d", out.px[0], out.px[1], out.px[2]);
    CHECK(out.px[3] == 200, "gray 200 became %d", out.px[3]);
    CHECK(out.px[6] == 255 && out.px[7] == 255 && out.px[8] == 255, "transparent pixel not white: %d", out.px[6]);
    free(buf);
    image_free(&out);
    image_free(&im);
}

static void write_tiff(const char *path, const Image *im, int compression) {
    TIFF *t = TIFFOpen(path, "w");
    CHECK(t != NULL, "cannot create %s", path);
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, im->w);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, im->h);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 3);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 8);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_RGB);
    TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
    TIFFSetField(t, TIFFTAG_COMPRESSION, compression);
    TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, 16);
    for (int y = 0; y < im->h; y++) TIFFWriteScanline(t, im->px + (size_t)y * im->w * 3, y, 0);
    TIFFClose(t);
}

TEST(tiff_decode_exact_and_truncated_rejected) {
    Image im, out;
    test_image(&im, 90, 60);
    const char *dir = test_tmpdir();
    char path[4200];
    snprintf(path, sizeof path, "%s/t.tif", dir);
    write_tiff(path, &im, COMPRESSION_LZW);
    char err[DINO_ERRLEN];
    CHECK(decode_image_file(path, 0, &out, err) == 0, "decode: %s", err);
    CHECK(out.w == 90 && out.h == 60 && memcmp(out.px, im.px, 90 * 60 * 3) == 0, "TIFF not decoded exactly");
    image_free(&out);
    uint8_t *buf;
    size_t n;
    CHECK(read_file_bytes(path, &buf, &n, err) == 0, "%s", err);
    CHECK(image_format_sniff(buf, n) == IMAGE_FORMAT_TIFF, "not sniffed as TIFF");
    // The strips come first and the directory last: cutting the file loses the directory.
    CHECK(decode_image_mem(buf, n * 2 / 3, 0, &out, err) == -1, "truncated TIFF decoded");
    CHECK(strstr(err, "TIFF") != NULL, "error does not say TIFF: %s", err);
    free(buf);
    image_free(&im);
}

TEST(decode_file_errors_name_the_file) {
    Image out;
    char err[DINO_ERRLEN];
    CHECK(decode_image_file("/nonexistent/tile.jpg", 0, &out, err) == -1, "missing file decoded");
    CHECK(strstr(err, "/nonexistent/tile.jpg") != NULL, "error does not name the file: %s", err);
    const char *dir = test_tmpdir();
    char path[4200];
    snprintf(path, sizeof path, "%s/bad.png", dir);
    FILE *f = fopen(path, "wb");
    fputs("\x89PNG\r\n\x1a\nnot really", f);
    fclose(f);
    CHECK(decode_image_file(path, 0, &out, err) == -1, "bad PNG decoded");
    CHECK(strstr(err, path) != NULL && strstr(err, "PNG") != NULL, "error: %s", err);
    CHECK(image_path_is_supported("a/b.JPG") && image_path_is_supported("x.tiff") && image_path_is_supported("x.png"),
          "extensions not recognised");
    CHECK(!image_path_is_supported("a.svs") && !image_path_is_supported("jpg") && !image_path_is_supported("a.jpg/b"),
          "wrong extension accepted");
}
