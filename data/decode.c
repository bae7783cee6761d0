#include "data/decode.h"

#include <ctype.h>
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
    int subsamp = 0, cs = 0;
    tjhandle tj = tj_handle(0);
    if (tjDecompressHeader3(tj, buf, (unsigned long)n, w, h, &subsamp, &cs) != 0) {
        dino_seterr(err, "bad JPEG header: %s", tjGetErrorStr2(tj));
        return -1;
    }
    if (*w <= 0 || *h <= 0) {
        dino_seterr(err, "bad JPEG size %dx%d", *w, *h);
        return -1;
    }
    return 0;
}

int decode_jpeg_mem(const uint8_t *buf, size_t n, int min_side, Image *out, char *err) {
    out->px = NULL;
    out->w = out->h = 0;
    int w, h;
    if (jpeg_read_size(buf, n, &w, &h, err) != 0) return -1;
    int sw, sh;
    jpeg_scaled_size(w, h, min_side, &sw, &sh);
    image_alloc(out, sw, sh);
    tjhandle tj = tj_handle(0);
    // STOPONWARNING: a truncated or damaged stream is an error, not a half-grey tile.
    if (tjDecompress2(tj, buf, (unsigned long)n, out->px, sw, sw * 3, sh, TJPF_RGB,
                      TJFLAG_STOPONWARNING) != 0) {
        dino_seterr(err, "corrupt or truncated JPEG: %s", tjGetErrorStr2(tj));
        image_free(out);
        return -1;
    }
    return 0;
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
int decode_png_mem(const uint8_t *buf, size_t n, Image *out, char *err) {
    out->px = NULL;
    out->w = out->h = 0;
#ifdef DINO_HAVE_PNG
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&pi, buf, n)) {
        dino_seterr(err, "bad PNG: %s", pi.message);
        png_image_free(&pi);
        return -1;
    }
    pi.format = PNG_FORMAT_RGB;
    if (pi.width == 0 || pi.height == 0 || pi.width > 1 << 16 || pi.height > 1 << 16) {
        dino_seterr(err, "PNG size %ux%u is not supported", pi.width, pi.height);
        png_image_free(&pi);
        return -1;
    }
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
static int mem_map(thandle_t h, void **base, toff_t *size) { return 0; }
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

int decode_tiff_mem(const uint8_t *buf, size_t n, Image *out, char *err) {
    out->px = NULL;
    out->w = out->h = 0;
#ifdef DINO_HAVE_TIFF
    MemFile mf = {buf, n, 0};
    TiffErr te = {{0}};
    TIFFOpenOptions *opts = TIFFOpenOptionsAlloc();
    TIFFOpenOptionsSetErrorHandlerExtR(opts, tiff_on_error, &te);
    TIFFOpenOptionsSetWarningHandlerExtR(opts, tiff_on_warning, NULL);
    TIFF *t = TIFFClientOpenExt("memory", "rm", &mf, mem_read, mem_write, mem_seek, mem_close, mem_size,
                                mem_map, mem_unmap, opts);
    TIFFOpenOptionsFree(opts);
    if (!t) {
        dino_seterr(err, "bad TIFF: %s", te.msg[0] ? te.msg : "cannot open");
        return -1;
    }
    uint32_t w = 0, h = 0;
    TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &w);
    TIFFGetField(t, TIFFTAG_IMAGELENGTH, &h);
    if (w == 0 || h == 0 || w > 1 << 16 || h > 1 << 16) {
        dino_seterr(err, "TIFF size %ux%u is not supported", w, h);
        TIFFClose(t);
        return -1;
    }
    uint32_t *raster = dino_malloc((size_t)w * h * sizeof(uint32_t));
    int ok = TIFFReadRGBAImageOriented(t, w, h, raster, ORIENTATION_TOPLEFT, 0);
    TIFFClose(t);
    if (!ok || te.msg[0]) {
        dino_seterr(err, "corrupt or truncated TIFF: %s", te.msg[0] ? te.msg : "read failed");
        free(raster);
        return -1;
    }
    image_alloc(out, (int)w, (int)h);
    for (size_t i = 0; i < (size_t)w * h; i++) {
        uint32_t p = raster[i];
        unsigned a = TIFFGetA(p);
        // libtiff gives associated (premultiplied) alpha: composite on white
        out->px[3 * i + 0] = (uint8_t)(TIFFGetR(p) + (255 - a));
        out->px[3 * i + 1] = (uint8_t)(TIFFGetG(p) + (255 - a));
        out->px[3 * i + 2] = (uint8_t)(TIFFGetB(p) + (255 - a));
    }
    free(raster);
    return 0;
#else
    dino_seterr(err, "TIFF support was not built (libtiff missing)");
    return -1;
#endif
}

int decode_image_mem(const uint8_t *buf, size_t n, int min_side, Image *out, char *err) {
    switch (image_format_sniff(buf, n)) {
    case IMAGE_FORMAT_JPEG: return decode_jpeg_mem(buf, n, min_side, out, err);
    case IMAGE_FORMAT_PNG: return decode_png_mem(buf, n, out, err);
    case IMAGE_FORMAT_TIFF: return decode_tiff_mem(buf, n, out, err);
    default:
        out->px = NULL;
        out->w = out->h = 0;
        dino_seterr(err, "not a JPEG, PNG or TIFF image (%zu bytes, unknown signature)", n);
        return -1;
    }
}

int read_file_bytes(const char *path, uint8_t **buf, size_t *n, char *err) {
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

int decode_image_file(const char *path, int min_side, Image *out, char *err) {
    uint8_t *buf;
    size_t n;
    out->px = NULL;
    out->w = out->h = 0;
    if (read_file_bytes(path, &buf, &n, err) != 0) return -1;
    char why[DINO_ERRLEN];
    int rc = decode_image_mem(buf, n, min_side, out, why);
    free(buf);
    if (rc != 0) dino_seterr(err, "%s: %s", path, why);
    return rc;
}
