#include <png.h>
#include <unistd.h>
#include <string.h>
#include <tiffio.h>

#include "common/check.h"
#include "data/decode.h"
#include "data/synth.h"
#include "tests/harness.h"
#include "tests/synth_files.h"
#include "tests/tiff_layouts.h"

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

// ---- hardening: inputs that used to crash or balloon (docs/status.md, "Hardening") ------------------

static size_t find_marker(const uint8_t *p, size_t n, uint8_t m) {
    for (size_t i = 2; i + 1 < n; i++)
        if (p[i] == 0xFF && p[i + 1] == m) return i;
    return 0;
}

// TurboJPEG 2.x leaves a decompressor mid-header after a failed header call: the same stream read again
// on that handle "succeeds" without a size (the caller's uninitialised w x h was allocated: ~3.6e16
// bytes, abort), and a stream cut inside a Huffman table makes every later JPEG on that thread fail.
TEST(jpeg_cut_anywhere_before_its_data_fails_every_time_and_leaves_the_thread_usable) {
    Image im, out;
    synth_tile(2, 1, 4, 64, &im);
    uint8_t *jpg;
    size_t n;
    char err[DINO_ERRLEN];
    CHECK(encode_jpeg(&im, 90, &jpg, &n, err) == 0, "encode: %s", err);
    size_t sos = find_marker(jpg, n, 0xDA), dht = find_marker(jpg, n, 0xC4);
    CHECK(sos > 0 && dht > 0 && dht < sos, "markers: DHT at %zu, SOS at %zu", dht, sos);
    int tested = 0;
    for (size_t cut = 3; cut < sos + 2; cut++) { // FF D8 FF, ..., inside the tables, up to the scan header
        for (int rep = 0; rep < 2; rep++) {
            int w = 60000, h = 60000; // what an uninitialised size might hold
            int rc = jpeg_read_size(jpg, cut, &w, &h, err);
            CHECK(rc == -1 && w == 0 && h == 0, "cut at %zu, read %d: header rc %d, size %d x %d", cut, rep, rc, w, h);
            out.px = (uint8_t *)1;
            rc = decode_image_mem(jpg, cut, 0, &out, err);
            CHECK(rc == -1 && out.px == NULL && strstr(err, "JPEG"), "cut at %zu, read %d: rc %d, %s", cut, rep, rc, err);
        }
        // the thread's decoder still works
        CHECK(decode_image_mem(jpg, n, 0, &out, err) == 0 && out.w == 64, "cut at %zu poisoned the thread: %s", cut, err);
        image_free(&out);
        tested++;
    }
    CHECK(tested > 100, "only %d cuts", tested);
    const uint8_t three[3] = {0xFF, 0xD8, 0xFF};
    for (int rep = 0; rep < 3; rep++) {
        int w = 7, h = 7;
        CHECK(jpeg_read_size(three, 3, &w, &h, err) == -1 && w == 0 && h == 0, "FF D8 FF: size %d x %d", w, h);
        CHECK(strstr(err, "truncated JPEG") || strstr(err, "bad JPEG"), "message: %s", err);
    }
    free(jpg);
    image_free(&im);
}

// Each format's header declaring 60000 x 60000 (a few hundred bytes of file) is refused from the header,
// before anything is allocated for it. Before: JPEG and PNG allocated 10.8 GB and TIFF 14.4 GB (filled
// by TIFFReadRGBAImage). The address space is capped meanwhile, so a regression fails here, not the box.
TEST(huge_headers_refused_before_any_allocation) {
    struct rlimit guard = memory_guard_begin((int64_t)1 << 30);
    int64_t rss0 = reset_peak_rss();
    char err[DINO_ERRLEN];
    Image out;
    size_t n;
    uint8_t *jpg = craft_jpeg_declaring(60000, 60000, &n);
    CHECK(decode_image_mem(jpg, n, 0, &out, err) == -1 && out.px == NULL, "huge JPEG header decoded");
    CHECK(strstr(err, "JPEG header declares 60000 x 60000 = 3.6 Gpx") && strstr(err, "budget") &&
              strstr(err, "data.max_image_pixels"), "message: %s", err);
    free(jpg);
    uint8_t png[128];
    n = craft_png_header(png, 60000, 60000);
    CHECK(decode_image_mem(png, n, 0, &out, err) == -1 && out.px == NULL, "huge PNG header decoded");
    CHECK(strstr(err, "PNG header declares 60000 x 60000 = 3.6 Gpx"), "message: %s", err);
    uint8_t tif[483];
    const uint32_t sizes[2][2] = {{60000, 60000}, {8204, 65288}};
    for (int i = 0; i < 2; i++) {
        n = craft_tiff_header(tif, sizeof tif, sizes[i][0], sizes[i][1]);
        CHECK(decode_image_mem(tif, n, 0, &out, err) == -1 && out.px == NULL, "huge TIFF header decoded");
        char want[64];
        snprintf(want, sizeof want, "TIFF header declares %u x %u", sizes[i][0], sizes[i][1]);
        CHECK(strstr(err, want) && strstr(err, "budget"), "message: %s", err);
    }
    int64_t grew = peak_rss_bytes() - rss0;
    memory_guard_end(guard);
    CHECK(grew < (16 << 20) || !MEMORY_BOUNDS_CHECKED, "decoding the huge headers took %.1f MB of memory", grew / 1e6);
}

TEST(pixel_budget_is_configurable_per_call) {
    Image im, out;
    test_image(&im, 300, 200); // 60 kpx
    char err[DINO_ERRLEN], path[4200];
    uint8_t *jpg;
    size_t njpg;
    CHECK(encode_jpeg(&im, 90, &jpg, &njpg, err) == 0, "%s", err);
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    pi.width = 300;
    pi.height = 200;
    pi.format = PNG_FORMAT_RGB;
    png_alloc_size_t npng = 0;
    png_image_write_to_memory(&pi, NULL, &npng, 0, im.px, 0, NULL);
    uint8_t *png = dino_malloc(npng);
    CHECK(png_image_write_to_memory(&pi, png, &npng, 0, im.px, 0, NULL), "png write failed");
    uint8_t *tif;
    size_t ntif;
    snprintf(path, sizeof path, "%s/t.tif", test_tmpdir());
    write_tiff(path, &im, COMPRESSION_LZW);
    CHECK(read_file_bytes(path, &tif, &ntif, err) == 0, "%s", err);
    const struct { const char *name; const uint8_t *buf; size_t n; } f[3] = {
        {"JPEG", jpg, njpg}, {"PNG", png, npng}, {"TIFF", tif, ntif}};
    for (int i = 0; i < 3; i++) {
        CHECK(decode_image_mem_budget(f[i].buf, f[i].n, 0, 59999, &out, err) == -1 && out.px == NULL,
              "%s over a 59999 px budget decoded", f[i].name);
        char want[64];
        snprintf(want, sizeof want, "%s header declares 300 x 200 = 60 kpx, over the 60 kpx budget", f[i].name);
        CHECK(strstr(err, want) && strstr(err, "data.max_image_pixels = 59999"), "message: %s", err);
        CHECK(decode_image_mem_budget(f[i].buf, f[i].n, 0, 60000, &out, err) == 0 && out.w == 300 && out.h == 200,
              "%s at exactly the budget: %s", f[i].name, err);
        image_free(&out);
        CHECK(decode_image_mem_budget(f[i].buf, f[i].n, 0, 0, &out, err) == 0, "%s, default budget: %s", f[i].name, err);
        image_free(&out);
    }
    // the file form names the file, and refuses unread a file too large for any image within the budget
    CHECK(decode_image_file_budget(path, 0, 100, &out, err) == -1 && strstr(err, path) && strstr(err, "budget"),
          "file over the budget: %s", err);
    snprintf(path, sizeof path, "%s/big.jpg", test_tmpdir());
    FILE *big = fopen(path, "wb");
    CHECK(big && ftruncate(fileno(big), 3 << 20) == 0, "cannot make %s", path);
    fclose(big);
    CHECK(decode_image_file_budget(path, 0, 65536, &out, err) == -1 && strstr(err, path) &&
              strstr(err, "3145728 bytes, more than"), "%s", err);
    unlink(path);
    free(jpg);
    free(png);
    free(tif);
    image_free(&im);
}

// libtiff's own whole-image RGBA decode (what decode_tiff_mem did before it went by bands): the reference.
static void tiff_reference(const char *path, Image *ref) {
    TIFF *t = TIFFOpen(path, "r");
    CHECK(t != NULL, "cannot open %s", path);
    uint32_t w = 0, h = 0;
    TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &w);
    TIFFGetField(t, TIFFTAG_IMAGELENGTH, &h);
    uint32_t *r = dino_malloc((size_t)w * h * 4);
    CHECK(TIFFReadRGBAImageOriented(t, w, h, r, ORIENTATION_TOPLEFT, 1), "reference decode of %s failed", path);
    TIFFClose(t);
    image_alloc(ref, (int)w, (int)h);
    for (size_t i = 0; i < (size_t)w * h; i++) {
        unsigned a = TIFFGetA(r[i]);
        ref->px[3 * i] = (uint8_t)(TIFFGetR(r[i]) + 255 - a);
        ref->px[3 * i + 1] = (uint8_t)(TIFFGetG(r[i]) + 255 - a);
        ref->px[3 * i + 2] = (uint8_t)(TIFFGetB(r[i]) + 255 - a);
    }
    free(r);
}

typedef struct {
    const char *name;
    int tiled, spp, planar, orientation, compression;
} TiffKind;

static void write_tiff_kind(const char *path, const Image *im, const TiffKind *k) {
    write_tiff_layout(path, im, k->tiled, k->spp, k->planar, k->orientation, k->compression);
}

// Strips (last one partial), tiles (clipped at the right and bottom), separate planes, a bottom-up and a
// mirrored orientation, grey, and unassociated alpha: the band-by-band decode equals libtiff's whole-image
// decode bit for bit, and a file cut short fails cleanly.
TEST(tiff_bands_equal_libtiffs_whole_image_decode) {
    Image im, out, ref;
    test_image(&im, 90, 61);
    const TiffKind kinds[] = {
        {"strips", 0, 3, PLANARCONFIG_CONTIG, ORIENTATION_TOPLEFT, COMPRESSION_LZW},
        {"tiles", 1, 3, PLANARCONFIG_CONTIG, ORIENTATION_TOPLEFT, COMPRESSION_DEFLATE},
        {"planes", 0, 3, PLANARCONFIG_SEPARATE, ORIENTATION_TOPLEFT, COMPRESSION_NONE},
        {"tiled planes", 1, 3, PLANARCONFIG_SEPARATE, ORIENTATION_TOPLEFT, COMPRESSION_NONE},
        {"bottom-up", 0, 3, PLANARCONFIG_CONTIG, ORIENTATION_BOTLEFT, COMPRESSION_LZW},
        {"bottom-up tiles", 1, 3, PLANARCONFIG_CONTIG, ORIENTATION_BOTLEFT, COMPRESSION_LZW},
        {"mirrored", 0, 3, PLANARCONFIG_CONTIG, ORIENTATION_TOPRIGHT, COMPRESSION_NONE},
        {"grey", 0, 1, PLANARCONFIG_CONTIG, ORIENTATION_TOPLEFT, COMPRESSION_PACKBITS},
        {"alpha", 0, 4, PLANARCONFIG_CONTIG, ORIENTATION_TOPLEFT, COMPRESSION_LZW},
    };
    char path[4200], err[DINO_ERRLEN];
    const char *dir = test_tmpdir();
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        snprintf(path, sizeof path, "%s/k%zu.tif", dir, k);
        write_tiff_kind(path, &im, &kinds[k]);
        tiff_reference(path, &ref);
        CHECK(decode_image_file(path, 0, &out, err) == 0, "%s: %s", kinds[k].name, err);
        CHECK(out.w == ref.w && out.h == ref.h && !memcmp(out.px, ref.px, (size_t)ref.w * ref.h * 3),
              "%s: band decode differs from libtiff's whole-image decode", kinds[k].name);
        if (k == 0) // and that is the picture itself
            CHECK(!memcmp(out.px, im.px, (size_t)im.w * im.h * 3), "strips: not the written picture");
        if (k == 4) // bottom-up: the written first row is the picture's last
            CHECK(!memcmp(out.px + (size_t)60 * 90 * 3, im.px, 90 * 3), "bottom-up: not flipped");
        image_free(&out);
        image_free(&ref);
        // cut short (the strips or tiles are lost, the directory kept at the front by rewriting): an error
        uint8_t *buf;
        size_t n;
        CHECK(read_file_bytes(path, &buf, &n, err) == 0, "%s", err);
        CHECK(decode_image_mem(buf, n / 2, 0, &out, err) == -1 && out.px == NULL, "%s: half a file decoded", kinds[k].name);
        free(buf);
    }
    // a sample format the RGBA reader does not handle (32-bit float): an error naming it, nothing leaked
    snprintf(path, sizeof path, "%s/float.tif", dir);
    TIFF *t = TIFFOpen(path, "w");
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, 8);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, 4);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 1);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 32);
    TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, SAMPLEFORMAT_IEEEFP);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
    float row[8] = {0};
    for (int y = 0; y < 4; y++) TIFFWriteScanline(t, row, (uint32_t)y, 0);
    TIFFClose(t);
    CHECK(decode_image_file(path, 0, &out, err) == -1 && out.px == NULL && strstr(err, "unsupported TIFF") &&
              strstr(err, "32-bit"), "float TIFF: %s", err);
    image_free(&im);
}

// Band by band, a within-budget TIFF costs its output and one band, not also a whole RGBA copy
// (4 bytes a pixel) as TIFFReadRGBAImage did.
TEST(tiff_decode_memory_is_the_output_and_one_band) {
    const int W = 4096, H = 4096; // 16.8 Mpx: 50 MB of RGB output; the old RGBA raster was 67 MB more
    char path[4200], err[DINO_ERRLEN];
    snprintf(path, sizeof path, "%s/big.tif", test_tmpdir());
    TIFF *t = TIFFOpen(path, "w");
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, W);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, H);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 3);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 8);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_RGB);
    TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
    TIFFSetField(t, TIFFTAG_COMPRESSION, COMPRESSION_DEFLATE);
    TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, 32);
    uint8_t *row = dino_malloc((size_t)W * 3);
    for (int y = 0; y < H; y++) {
        for (int x = 0; x < W; x++) row[3 * x] = (uint8_t)x, row[3 * x + 1] = (uint8_t)y, row[3 * x + 2] = (uint8_t)(x ^ y);
        CHECK(TIFFWriteScanline(t, row, (uint32_t)y, 0) >= 0, "write failed");
    }
    free(row);
    TIFFClose(t);
    uint8_t *buf;
    size_t n;
    CHECK(read_file_bytes(path, &buf, &n, err) == 0, "%s", err);
    int64_t rss0 = reset_peak_rss();
    Image out;
    CHECK(decode_image_mem(buf, n, 0, &out, err) == 0, "%s", err);
    int64_t grew = peak_rss_bytes() - rss0;
    CHECK(out.px[3 * ((size_t)1000 * W + 77) + 2] == (uint8_t)(77 ^ 1000), "wrong pixel");
    image_free(&out);
    free(buf);
    const int64_t out_bytes = (int64_t)W * H * 3;
    unlink(path);
    CHECK(grew < out_bytes + (12 << 20) || !MEMORY_BOUNDS_CHECKED, "decoding took %.1f MB over the %.1f MB output", (grew - out_bytes) / 1e6,
          out_bytes / 1e6);
}
