#include "data/decode.h"

#include <ctype.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <turbojpeg.h>

#include "common/check.h"

#ifdef DINO_HAVE_PNG
#include <png.h>
#endif
#ifdef DINO_HAVE_TIFF
#include <tiffio.h>
#endif

ImageFormat image_format_sniff(const uint8_t *buf, size_t n) {
    if (n >= 3 && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF) return IMAGE_FORMAT_JPEG;
    if (n >= 8 && memcmp(buf, "\x89PNG\r\n\x1a\n", 8) == 0) return IMAGE_FORMAT_PNG;
    if (n >= 4 && (memcmp(buf, "II*\0", 4) == 0 || memcmp(buf, "MM\0*", 4) == 0 ||
                   memcmp(buf, "II+\0", 4) == 0 || memcmp(buf, "MM\0+", 4) == 0))
        return IMAGE_FORMAT_TIFF;
    return IMAGE_FORMAT_UNKNOWN;
}

int image_path_is_supported(const char *path) {
    const char *dot = strrchr(path, '.');
    if (!dot || strchr(dot, '/')) return 0;
    char ext[8] = {0};
    size_t n = strlen(dot + 1);
    if (n == 0 || n >= sizeof ext) return 0;
    for (size_t i = 0; i < n; i++) ext[i] = (char)tolower((unsigned char)dot[1 + i]);
    return !strcmp(ext, "jpg") || !strcmp(ext, "jpeg") || !strcmp(ext, "png") || !strcmp(ext, "tif") ||
           !strcmp(ext, "tiff");
}

// ---- the pixel budget -------------------------------------------------------------------------------
// Sides beyond this are refused whatever the budget (PNG and TIFF row strides stay far inside an int).
#define DECODE_MAX_SIDE (1u << 24)

static int64_t budget_or_default(int64_t max_pixels) {
    return max_pixels > 0 ? max_pixels : DECODE_DEFAULT_MAX_PIXELS;
}

// "3.6 Gpx", "67.1 Mpx", "4.1 kpx", "640 px"
static void fmt_px(char *buf, size_t cap, uint64_t px) {
    if (px >= 1000000000u) snprintf(buf, cap, "%.3g Gpx", (double)px / 1e9);
    else if (px >= 1000000u) snprintf(buf, cap, "%.3g Mpx", (double)px / 1e6);
    else if (px >= 1000u) snprintf(buf, cap, "%.3g kpx", (double)px / 1e3);
    else snprintf(buf, cap, "%" PRIu64 " px", px);
}

// 0 when a w x h image (sizes from a header: anything up to 2^32 - 1) fits the budget, else -1 with err.
static int check_budget(const char *what, uint64_t w, uint64_t h, int64_t max_pixels, char *err) {
    if (w * h <= (uint64_t)max_pixels) return 0;
    char a[32], b[32];
    fmt_px(a, sizeof a, w * h);
    fmt_px(b, sizeof b, (uint64_t)max_pixels);
    dino_seterr(err, "%s declares %" PRIu64 " x %" PRIu64 " = %s, over the %s budget (data.max_image_pixels = %" PRId64 ")",
                what, w, h, a, b, max_pixels);
    return -1;
}

static void image_clear(Image *im) {
    im->px = NULL;
    im->w = im->h = 0;
}

// ---- JPEG (TurboJPEG 2.x) -------------------------------------------------------------------------
// One decompressor and one compressor per thread, destroyed when the thread exits: creating a handle
// per tile would cost more than decoding a small tile.
static pthread_key_t tj_dec_key, tj_enc_key;
static pthread_once_t tj_once = PTHREAD_ONCE_INIT;
static void tj_destroy(void *h) { if (h) tjDestroy(h); }
static void tj_make_keys(void) {
    DINO_ASSERT(pthread_key_create(&tj_dec_key, tj_destroy) == 0, "pthread_key_create failed");
    DINO_ASSERT(pthread_key_create(&tj_enc_key, tj_destroy) == 0, "pthread_key_create failed");
}
static tjhandle tj_handle(int encoder) {
    pthread_once(&tj_once, tj_make_keys);
    pthread_key_t key = encoder ? tj_enc_key : tj_dec_key;
    tjhandle h = pthread_getspecific(key);
    if (!h) {
        h = encoder ? tjInitCompress() : tjInitDecompress();
        DINO_ASSERT(h != NULL, "TurboJPEG: cannot create a handle: %s", tjGetErrorStr2(NULL));
        pthread_setspecific(key, h);
    }
    return h;
}
// TurboJPEG 2.x does not reset a decompressor whose header call failed: the next call on the same handle
// may then return success for a stream cut before its frame header without setting the size, and a stream
// cut inside a Huffman table leaves a state in which every later stream fails ("Bogus Huffman table
// definition"). A handle that failed is therefore dropped; the thread's next call creates a fresh one.
static void tj_drop_decoder(void) {
    tjhandle h = pthread_getspecific(tj_dec_key);
    if (h) {
        tjDestroy(h);
        pthread_setspecific(tj_dec_key, NULL);
    }
}

void jpeg_scaled_size(int w, int h, int min_side, int *sw, int *sh) {
    *sw = w;
    *sh = h;
    if (min_side <= 0) return;
    int nsf = 0;
    tjscalingfactor *sf = tjGetScalingFactors(&nsf);
    int64_t best_area = (int64_t)w * h; // start from 1/1
    for (int i = 0; sf && i < nsf; i++) {
        if (sf[i].num > sf[i].denom) continue; // never upscale in the decoder
        int tw = TJSCALED(w, sf[i]), th = TJSCALED(h, sf[i]);
        if ((tw < th ? tw : th) < min_side) continue;
        if ((int64_t)tw * th < best_area) { best_area = (int64_t)tw * th; *sw = tw; *sh = th; }
    }
}

int jpeg_read_size(const uint8_t *buf, size_t n, int *w, int *h, char *err) {
    *w = *h = 0;
    int subsamp = -1, cs = -1;
    tjhandle tj = tj_handle(0);
    if (tjDecompressHeader3(tj, buf, (unsigned long)n, w, h, &subsamp, &cs) != 0) {
        dino_seterr(err, "bad JPEG header: %s", tjGetErrorStr2(tj));
        tj_drop_decoder();
        *w = *h = 0;
        return -1;
    }
    // Success without a size: a "tables-only" stream, which is what a file cut before its frame header
    // looks like (TurboJPEG returns 0 and leaves w and h as they were).
    if (*w <= 0 || *h <= 0) {
        dino_seterr(err, "truncated JPEG: the stream (%zu bytes) ends before its frame header", n);
        tj_drop_decoder();
        *w = *h = 0;
        return -1;
    }
    return 0;
}

static int decode_jpeg(const uint8_t *buf, size_t n, int min_side, int64_t max_pixels, Image *out, char *err) {
    image_clear(out);
    int w, h;
    if (jpeg_read_size(buf, n, &w, &h, err) != 0) return -1;
    // the budget is on the full size, whatever the scale: a progressive JPEG's coefficients are full size
    if (check_budget("JPEG header", (uint64_t)w, (uint64_t)h, budget_or_default(max_pixels), err) != 0) return -1;
    int sw, sh;
    jpeg_scaled_size(w, h, min_side, &sw, &sh);
    image_alloc(out, sw, sh);
    tjhandle tj = tj_handle(0);
    // STOPONWARNING: a truncated or damaged stream is an error, not a half-grey tile.
    if (tjDecompress2(tj, buf, (unsigned long)n, out->px, sw, sw * 3, sh, TJPF_RGB, TJFLAG_STOPONWARNING) != 0) {
        dino_seterr(err, "corrupt or truncated JPEG: %s", tjGetErrorStr2(tj));
        tj_drop_decoder();
        image_free(out);
        return -1;
    }
    return 0;
}

int decode_jpeg_mem(const uint8_t *buf, size_t n, int min_side, Image *out, char *err) {
    return decode_jpeg(buf, n, min_side, 0, out, err);
}

int encode_jpeg(const Image *im, int quality, uint8_t **out, size_t *out_size, char *err) {
    *out = NULL;
    *out_size = 0;
    if (quality < 1 || quality > 100) {
        dino_seterr(err, "JPEG quality %d is outside 1..100", quality);
        return -1;
    }
    tjhandle tj = tj_handle(1);
    unsigned char *jbuf = NULL;
    unsigned long jsize = 0;
    if (tjCompress2(tj, im->px, im->w, im->w * 3, im->h, TJPF_RGB, &jbuf, &jsize, TJSAMP_420, quality,
                    0) != 0) {
        dino_seterr(err, "JPEG encoding failed: %s", tjGetErrorStr2(tj));
        if (jbuf) tjFree(jbuf);
        return -1;
    }
    // Hand back a malloc'd copy so that callers free() it like everything else.
    *out = dino_malloc(jsize);
    memcpy(*out, jbuf, jsize);
    *out_size = jsize;
    tjFree(jbuf);
    return 0;
}

// ---- PNG (libpng simplified API) ------------------------------------------------------------------
static int decode_png(const uint8_t *buf, size_t n, int64_t max_pixels, Image *out, char *err) {
    image_clear(out);
#ifdef DINO_HAVE_PNG
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    // libpng's simplified API: both calls return non-zero on success and free the png_image on failure
    if (!png_image_begin_read_from_memory(&pi, buf, n)) {
        dino_seterr(err, "bad PNG: %s", pi.message);
        png_image_free(&pi);
        return -1;
    }
    if (check_budget("PNG header", pi.width, pi.height, budget_or_default(max_pixels), err) != 0) {
        png_image_free(&pi);
        return -1;
    }
    if (pi.width == 0 || pi.height == 0 || pi.width > DECODE_MAX_SIDE || pi.height > DECODE_MAX_SIDE) {
        dino_seterr(err, "PNG size %u x %u is not supported", pi.width, pi.height);
        png_image_free(&pi);
        return -1;
    }
    pi.format = PNG_FORMAT_RGB;
    image_alloc(out, (int)pi.width, (int)pi.height);
    png_color white = {255, 255, 255}; // transparent pixels become white, like slide background
    if (!png_image_finish_read(&pi, &white, out->px, (png_int_32)(pi.width * 3), NULL)) {
        dino_seterr(err, "corrupt or truncated PNG: %s", pi.message);
        png_image_free(&pi);
        image_free(out);
        return -1;
    }
    return 0;
#else
    dino_seterr(err, "PNG support was not built (libpng missing)");
    return -1;
#endif
}

int decode_png_mem(const uint8_t *buf, size_t n, Image *out, char *err) { return decode_png(buf, n, 0, out, err); }

// ---- TIFF (libtiff, read from memory through client procs) ----------------------------------------
#ifdef DINO_HAVE_TIFF
typedef struct { const uint8_t *buf; size_t n, pos; } MemFile;
static tmsize_t mem_read(thandle_t h, void *dst, tmsize_t size) {
    MemFile *m = h;
    size_t left = m->pos < m->n ? m->n - m->pos : 0;
    size_t k = (size_t)size < left ? (size_t)size : left;
    memcpy(dst, m->buf + m->pos, k);
    m->pos += k;
    return (tmsize_t)k;
}
static tmsize_t mem_write(thandle_t h, void *src, tmsize_t size) { return -1; }
static toff_t mem_seek(thandle_t h, toff_t off, int whence) {
    MemFile *m = h;
    uint64_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? m->pos : m->n;
    m->pos = (size_t)(base + off);
    return m->pos;
}
static int mem_close(thandle_t h) { return 0; }
static toff_t mem_size(thandle_t h) { return ((MemFile *)h)->n; }
// The buffer is already in memory: "mapping" it lets libtiff read strips and tiles in place (no copy),
// bounds-checked against its size. (It also avoids libtiff 4.5's unmapped path for tiled images with
// separate planes, whose RGBA reader fails them: "Invalid tile byte count ... Expected 512, got 1024".)
// libtiff never writes through a read-only map.
static int mem_map(thandle_t h, void **base, toff_t *size) {
    MemFile *m = h;
    *base = (void *)m->buf;
    *size = m->n;
    return 1;
}
static void mem_unmap(thandle_t h, void *base, toff_t size) {}

typedef struct { char msg[256]; } TiffErr;
static int tiff_on_error(TIFF *t, void *user, const char *module, const char *fmt, va_list ap) {
    TiffErr *e = user;
    if (e && !e->msg[0]) vsnprintf(e->msg, sizeof e->msg, fmt, ap); // keep the first, root cause
    return 1;
}
static int tiff_on_warning(TIFF *t, void *user, const char *module, const char *fmt, va_list ap) {
    return 1; // unknown tags and the like: not our business
}
#endif

// Decoded through libtiff's RGBA interface one band at a time (a strip, or a row of tiles) into the
// budget-checked output: besides the output (3 bytes a pixel) only one band of RGBA (4 bytes a pixel) and
// libtiff's buffer for one strip or tile are ever allocated, whatever the header claims.
static int decode_tiff(const uint8_t *buf, size_t n, int64_t max_pixels, Image *out, char *err) {
    image_clear(out);
#ifdef DINO_HAVE_TIFF
    const int64_t budget = budget_or_default(max_pixels);
    MemFile mf = {buf, n, 0};
    TiffErr te = {{0}};
    TIFFOpenOptions *opts = TIFFOpenOptionsAlloc();
    TIFFOpenOptionsSetErrorHandlerExtR(opts, tiff_on_error, &te);
    TIFFOpenOptionsSetWarningHandlerExtR(opts, tiff_on_warning, NULL);
    // and a cap on any single allocation inside libtiff (directory arrays, strip and tile buffers): what an
    // image within the budget can need (16 bytes a pixel: 16-bit RGBA), plus room for small images
    TIFFOpenOptionsSetMaxSingleMemAlloc(opts, (tmsize_t)(budget * 16 + (64 << 20)));
    TIFF *t = TIFFClientOpenExt("memory", "r", &mf, mem_read, mem_write, mem_seek, mem_close, mem_size,
                                mem_map, mem_unmap, opts);
    TIFFOpenOptionsFree(opts);
    if (!t) {
        dino_seterr(err, "bad TIFF: %s", te.msg[0] ? te.msg : "cannot open");
        return -1;
    }
    uint32_t *raster = NULL;
    TIFFRGBAImage img;
    int have_img = 0, rc = -1;
    uint32_t w = 0, h = 0;
    if (!TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &w) || !TIFFGetField(t, TIFFTAG_IMAGELENGTH, &h) || !w || !h) {
        dino_seterr(err, "bad TIFF: no image size (%u x %u)", w, h);
        goto done;
    }
    if (check_budget("TIFF header", w, h, budget, err) != 0) goto done;
    if (w > DECODE_MAX_SIDE || h > DECODE_MAX_SIDE) {
        dino_seterr(err, "TIFF size %u x %u is not supported", w, h);
        goto done;
    }
    uint32_t band = 0, tw = 0;
    if (TIFFIsTiled(t)) {
        if (!TIFFGetField(t, TIFFTAG_TILEWIDTH, &tw) || !TIFFGetField(t, TIFFTAG_TILELENGTH, &band) || !tw || !band) {
            dino_seterr(err, "bad TIFF: tiled without a tile size");
            goto done;
        }
        if (check_budget("TIFF tile size", tw, band, budget, err) != 0) goto done;
    } else {
        TIFFGetFieldDefaulted(t, TIFFTAG_ROWSPERSTRIP, &band);
    }
    if (band == 0 || band > h) band = h;
    char emsg[1024] = "";
    if (!TIFFRGBAImageOK(t, emsg) || !TIFFRGBAImageBegin(&img, t, 1, emsg)) {
        dino_seterr(err, "unsupported TIFF: %s", emsg[0] ? emsg : te.msg[0] ? te.msg : "?");
        goto done;
    }
    have_img = 1;
    // top-left origin whatever the file says; a bottom-up file's band y0 is read from the rows that
    // land there after the flip
    img.req_orientation = ORIENTATION_TOPLEFT;
    int bottom_up = img.orientation == ORIENTATION_BOTRIGHT || img.orientation == ORIENTATION_BOTLEFT ||
                    img.orientation == ORIENTATION_RIGHTBOT || img.orientation == ORIENTATION_LEFTBOT;
    raster = malloc((size_t)w * band * sizeof(uint32_t));
    if (!raster) {
        dino_seterr(err, "TIFF %u x %u: out of memory for a band of %u rows", w, h, band);
        goto done;
    }
    image_alloc(out, (int)w, (int)h);
    for (uint32_t y0 = 0; y0 < h; y0 += band) {
        uint32_t bh = h - y0 < band ? h - y0 : band;
        img.row_offset = (int)(bottom_up ? h - y0 - bh : y0);
        img.col_offset = 0;
        if (!TIFFRGBAImageGet(&img, raster, w, bh) || te.msg[0]) {
            dino_seterr(err, "corrupt or truncated TIFF: %s (rows %u..%u)", te.msg[0] ? te.msg : "read failed", y0,
                        y0 + bh - 1);
            image_free(out);
            goto done;
        }
        uint8_t *dst = out->px + (size_t)y0 * w * 3;
        for (size_t i = 0; i < (size_t)w * bh; i++) {
            uint32_t p = raster[i];
            unsigned a = TIFFGetA(p);
            // libtiff gives associated (premultiplied) alpha: composite on white
            dst[3 * i + 0] = (uint8_t)(TIFFGetR(p) + (255 - a));
            dst[3 * i + 1] = (uint8_t)(TIFFGetG(p) + (255 - a));
            dst[3 * i + 2] = (uint8_t)(TIFFGetB(p) + (255 - a));
        }
    }
    rc = 0;
done:
    if (have_img) TIFFRGBAImageEnd(&img);
    TIFFClose(t);
    free(raster);
    return rc;
#else
    dino_seterr(err, "TIFF support was not built (libtiff missing)");
    return -1;
#endif
}

int decode_tiff_mem(const uint8_t *buf, size_t n, Image *out, char *err) { return decode_tiff(buf, n, 0, out, err); }

int decode_image_mem_budget(const uint8_t *buf, size_t n, int min_side, int64_t max_pixels, Image *out, char *err) {
    switch (image_format_sniff(buf, n)) {
    case IMAGE_FORMAT_JPEG: return decode_jpeg(buf, n, min_side, max_pixels, out, err);
    case IMAGE_FORMAT_PNG: return decode_png(buf, n, max_pixels, out, err);
    case IMAGE_FORMAT_TIFF: return decode_tiff(buf, n, max_pixels, out, err);
    default:
        image_clear(out);
        dino_seterr(err, "not a JPEG, PNG or TIFF image (%zu bytes, unknown signature)", n);
        return -1;
    }
}

int decode_image_mem(const uint8_t *buf, size_t n, int min_side, Image *out, char *err) {
    return decode_image_mem_budget(buf, n, min_side, 0, out, err);
}

// Reads a whole file of at most max_bytes (0: any size).
static int read_file_max(const char *path, uint64_t max_bytes, uint8_t **buf, size_t *n, char *err) {
    *buf = NULL;
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        dino_seterr(err, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (fseeko(f, 0, SEEK_END) != 0) goto fail;
    off_t size = ftello(f);
    if (size < 0 || fseeko(f, 0, SEEK_SET) != 0) goto fail;
    if (max_bytes && (uint64_t)size > max_bytes) {
        dino_seterr(err, "%s: the file has %lld bytes, more than any image within the pixel budget can take "
                         "(%" PRIu64 " bytes; data.max_image_pixels)", path, (long long)size, max_bytes);
        fclose(f);
        return -1;
    }
    *buf = dino_malloc((size_t)size);
    if (fread(*buf, 1, (size_t)size, f) != (size_t)size) goto fail;
    *n = (size_t)size;
    fclose(f);
    return 0;
fail:
    dino_seterr(err, "%s: read failed: %s", path, ferror(f) ? strerror(errno) : "short read");
    free(*buf);
    *buf = NULL;
    fclose(f);
    return -1;
}

int read_file_bytes(const char *path, uint8_t **buf, size_t *n, char *err) { return read_file_max(path, 0, buf, n, err); }

int decode_image_file_budget(const char *path, int min_side, int64_t max_pixels, Image *out, char *err) {
    uint8_t *buf;
    size_t n;
    image_clear(out);
    // 16 bytes a pixel (uncompressed 16-bit RGBA) and 1 MiB of metadata: no image within the budget is larger
    uint64_t max_bytes = (uint64_t)budget_or_default(max_pixels) * 16 + (1u << 20);
    if (read_file_max(path, max_bytes, &buf, &n, err) != 0) return -1;
    char why[DINO_ERRLEN];
    int rc = decode_image_mem_budget(buf, n, min_side, max_pixels, out, why);
    free(buf);
    if (rc != 0) dino_seterr(err, "%s: %s", path, why);
    return rc;
}

int decode_image_file(const char *path, int min_side, Image *out, char *err) {
    return decode_image_file_budget(path, min_side, 0, out, err);
}
