#include "data/wsi.h"

#include <math.h>
#include <openslide.h>
#include <stdio.h>
#include <string.h>

#include "common/check.h"
#include "data/augment.h"

struct Wsi {
    char *path;
    openslide_t *osr;
    double mpp;
    int mpp_assumed;
    int levels;
    int64_t w, h;
};

int wsi_is_slide(const char *path) { return openslide_detect_vendor(path) != NULL; }

static double property_double(openslide_t *osr, const char *name) {
    const char *v = openslide_get_property_value(osr, name);
    if (!v || !*v) return 0;
    char *end;
    double d = strtod(v, &end);
    return (end != v && isfinite(d) && d > 0) ? d : 0;
}

Wsi *wsi_open(const char *path, double assume_mpp, char *err) {
    if (!openslide_detect_vendor(path)) {
        FILE *f = fopen(path, "rb");
        if (!f) dino_seterr(err, "%s: cannot open slide: %s", path, strerror(errno));
        else dino_seterr(err, "%s: not a whole-slide image OpenSlide can read", path);
        if (f) fclose(f);
        return NULL;
    }
    openslide_t *osr = openslide_open(path);
    if (!osr) {
        dino_seterr(err, "%s: OpenSlide cannot open this slide", path);
        return NULL;
    }
    const char *oerr = openslide_get_error(osr);
    if (oerr) {
        dino_seterr(err, "%s: OpenSlide: %s", path, oerr);
        openslide_close(osr);
        return NULL;
    }
    double mx = property_double(osr, OPENSLIDE_PROPERTY_NAME_MPP_X);
    double my = property_double(osr, OPENSLIDE_PROPERTY_NAME_MPP_Y);
    double mpp = mx > 0 && my > 0 ? 0.5 * (mx + my) : mx > 0 ? mx : my;
    int assumed = 0;
    if (mpp <= 0) {
        if (assume_mpp <= 0) {
            dino_seterr(err,
                        "%s: the slide has no microns-per-pixel metadata (openslide.mpp-x is missing), so tiles "
                        "at a chosen mpp cannot be cut; if you know its resolution, say it explicitly: "
                        "dinotile --assume-mpp 0.5, or assume_mpp=0.5 in a wsi: source spec",
                        path);
            openslide_close(osr);
            return NULL;
        }
        mpp = assume_mpp;
        assumed = 1;
    }
    Wsi *w = dino_calloc(1, sizeof *w);
    w->path = strdup(path);
    w->osr = osr;
    w->mpp = mpp;
    w->mpp_assumed = assumed;
    w->levels = openslide_get_level_count(osr);
    openslide_get_level0_dimensions(osr, &w->w, &w->h);
    if (w->levels < 1 || w->w <= 0 || w->h <= 0) {
        dino_seterr(err, "%s: slide has no readable levels", path);
        wsi_close(w);
        return NULL;
    }
    return w;
}

void wsi_close(Wsi *w) {
    if (!w) return;
    openslide_close(w->osr);
    free(w->path);
    free(w);
}

const char *wsi_path(const Wsi *w) { return w->path; }
double wsi_mpp(const Wsi *w) { return w->mpp; }
int wsi_mpp_assumed(const Wsi *w) { return w->mpp_assumed; }
int64_t wsi_width(const Wsi *w) { return w->w; }
int64_t wsi_height(const Wsi *w) { return w->h; }
int wsi_level_count(const Wsi *w) { return w->levels; }
double wsi_level_downsample(const Wsi *w, int level) { return openslide_get_level_downsample(w->osr, level); }
void wsi_level_size(const Wsi *w, int level, int64_t *lw, int64_t *lh) {
    openslide_get_level_dimensions(w->osr, level, lw, lh);
}

// The coarsest level whose downsample is at most downsample * slack.
static int best_level_with_slack(const Wsi *w, double downsample, double slack) {
    int best = 0;
    double best_ds = 1;
    for (int l = 0; l < w->levels; l++) {
        double ds = wsi_level_downsample(w, l);
        if (ds <= downsample * slack && ds > best_ds) {
            best = l;
            best_ds = ds;
        }
    }
    return best;
}

int wsi_best_level(const Wsi *w, double downsample) { return best_level_with_slack(w, downsample, 1.02); }

int wsi_read_region_rgb(Wsi *w, int level, int64_t x0, int64_t y0, int rw, int rh, uint8_t *rgb, char *err) {
    uint32_t *argb = dino_malloc((size_t)rw * rh * 4);
    openslide_read_region(w->osr, argb, x0, y0, level, rw, rh);
    const char *oerr = openslide_get_error(w->osr);
    if (oerr) {
        dino_seterr(err, "%s: OpenSlide read failed at (%lld, %lld) level %d: %s", w->path, (long long)x0,
                    (long long)y0, level, oerr);
        free(argb);
        return -1;
    }
    // Premultiplied ARGB over white: un-premultiplying c = c_pm * 255 / a and compositing
    // a*c/255 + (255 - a) simplifies to c_pm + 255 - a (and transparent, a = 0, gives white).
    for (size_t i = 0; i < (size_t)rw * rh; i++) {
        uint32_t p = argb[i];
        unsigned a = p >> 24, r = (p >> 16) & 255, g = (p >> 8) & 255, b = p & 255;
        unsigned bg = 255 - a;
        rgb[3 * i + 0] = (uint8_t)(r + bg > 255 ? 255 : r + bg);
        rgb[3 * i + 1] = (uint8_t)(g + bg > 255 ? 255 : g + bg);
        rgb[3 * i + 2] = (uint8_t)(b + bg > 255 ? 255 : b + bg);
    }
    free(argb);
    return 0;
}

// ---- resizing -------------------------------------------------------------------------------------
// For one axis: output o takes taps [start[o], start[o] + ntaps) of the source with the given weights.
typedef struct { int ntaps; int *start; float *wt; } Taps;

static Taps make_taps(int src, int dst) {
    Taps t;
    double s = (double)src / dst;
    t.ntaps = src > dst ? (int)ceil(s) + 1 : 2;
    t.start = dino_malloc(sizeof(int) * dst);
    t.wt = dino_calloc((size_t)dst * t.ntaps, sizeof(float));
    for (int o = 0; o < dst; o++) {
        float *w = t.wt + (size_t)o * t.ntaps;
        if (src > dst) { // area: overlap of [o*s, (o+1)*s) with each source pixel
            double lo = o * s, hi = (o + 1) * s;
            int i0 = (int)floor(lo);
            t.start[o] = i0;
            for (int k = 0; k < t.ntaps; k++) {
                int i = i0 + k;
                if (i >= src) break;
                double ov = fmin(hi, i + 1.0) - fmax(lo, (double)i);
                w[k] = ov > 0 ? (float)(ov / s) : 0;
            }
        } else { // bilinear with half-pixel centres, clamped at the borders
            double x = (o + 0.5) * s - 0.5;
            if (x < 0) x = 0;
            if (x > src - 1) x = src - 1;
            int i0 = (int)floor(x);
            double f = x - i0; // 0 at the last pixel, so the missing right tap has no weight
            t.start[o] = i0;
            w[0] = (float)(1 - f);
            w[1] = (float)f;
        }
    }
    return t;
}

void resize_rgb(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh) {
    if (sw == dw && sh == dh) {
        memcpy(dst, src, (size_t)sw * sh * 3);
        return;
    }
    Taps tx = make_taps(sw, dw), ty = make_taps(sh, dh);
    float *rows = dino_malloc(sizeof(float) * (size_t)sh * dw * 3); // horizontal pass
    for (int y = 0; y < sh; y++) {
        const uint8_t *s = src + (size_t)y * sw * 3;
        float *r = rows + (size_t)y * dw * 3;
        for (int o = 0; o < dw; o++) {
            float acc[3] = {0, 0, 0};
            const float *w = tx.wt + (size_t)o * tx.ntaps;
            for (int k = 0; k < tx.ntaps; k++) {
                int i = tx.start[o] + k;
                if (i >= sw || w[k] == 0) continue;
                for (int c = 0; c < 3; c++) acc[c] += w[k] * s[3 * i + c];
            }
            for (int c = 0; c < 3; c++) r[3 * o + c] = acc[c];
        }
    }
    for (int o = 0; o < dh; o++) { // vertical pass
        const float *w = ty.wt + (size_t)o * ty.ntaps;
        uint8_t *d = dst + (size_t)o * dw * 3;
        for (int x = 0; x < dw * 3; x++) {
            float acc = 0;
            for (int k = 0; k < ty.ntaps; k++) {
                int i = ty.start[o] + k;
                if (i >= sh || w[k] == 0) continue;
                acc += w[k] * rows[(size_t)i * dw * 3 + x];
            }
            int v = (int)lrintf(acc);
            d[x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
    free(rows);
    free(tx.start); free(tx.wt); free(ty.start); free(ty.wt);
}

int wsi_read_tile(Wsi *w, int64_t x0, int64_t y0, double out_mpp, int size, Image *out, int *level_used,
                  char *err) {
    out->px = NULL;
    out->w = out->h = 0;
    double ds = out_mpp / w->mpp; // level-0 pixels per output pixel
    int level = wsi_best_level(w, ds);
    double ds_l = wsi_level_downsample(w, level);
    int rs = (int)lround(size * ds / ds_l); // region side in pixels of that level
    if (rs < 1) rs = 1;
    if (level_used) *level_used = level;
    uint8_t *region = dino_malloc((size_t)rs * rs * 3);
    if (wsi_read_region_rgb(w, level, x0, y0, rs, rs, region, err) != 0) {
        free(region);
        return -1;
    }
    image_alloc(out, size, size);
    resize_rgb(region, rs, rs, out->px, size, size);
    free(region);
    return 0;
}

int wsi_read_region_resampled(Wsi *w, double x0, double y0, double out_mpp, int out_w, int out_h, Image *out,
                              int *level_used, char *err) {
    out->px = NULL;
    out->w = out->h = 0;
    double ds = out_mpp / w->mpp; // level-0 pixels per output pixel
    int level = wsi_best_level(w, ds);
    double ds_l = wsi_level_downsample(w, level), f = ds / ds_l; // level pixels per output pixel
    if (level_used) *level_used = level;
    // The box in level pixels, and an integer window around it with room for the bicubic taps
    // (support 2 output pixels = 2 max(f, 1) level pixels each side).
    double lx0 = x0 / ds_l, ly0 = y0 / ds_l, lw = out_w * f, lh = out_h * f;
    int pad = (int)ceil(2 * fmax(f, 1.0)) + 1;
    int64_t ix0 = (int64_t)floor(lx0) - pad, iy0 = (int64_t)floor(ly0) - pad;
    int64_t ix1 = (int64_t)ceil(lx0 + lw) + pad, iy1 = (int64_t)ceil(ly0 + lh) + pad;
    int rw = (int)(ix1 - ix0), rh = (int)(iy1 - iy0);
    uint8_t *region = dino_malloc((size_t)rw * rh * 3);
    // OpenSlide takes the corner in level-0 pixels; the level window then starts at ix0 (to within the
    // rounding of ix0 * ds_l, a fraction of a level pixel)
    if (wsi_read_region_rgb(w, level, llround(ix0 * ds_l), llround(iy0 * ds_l), rw, rh, region, err) != 0) {
        free(region);
        return -1;
    }
    image_alloc(out, out_w, out_h);
    AugmentScratch *s = augment_scratch_new(NULL);
    double bx0 = lx0 - (double)ix0, by0 = ly0 - (double)iy0;
    aug_resize_bicubic_u8(region, rw, rh, rw * 3, bx0, by0, bx0 + lw, by0 + lh, out->px, out_w, out_h, 0, s);
    augment_scratch_free(s);
    free(region);
    return 0;
}

// Writes accumulated thumbnail row `ty` (sums and counts per pixel) and clears the accumulator.
static void flush_thumb_row(Image *out, int ty, uint32_t *acc) {
    uint8_t *d = out->px + (size_t)ty * out->w * 3;
    for (int x = 0; x < out->w; x++) {
        uint32_t n = acc[4 * x + 3];
        for (int c = 0; c < 3; c++) d[3 * x + c] = n ? (uint8_t)((acc[4 * x + c] + n / 2) / n) : 255;
    }
    memset(acc, 0, sizeof(uint32_t) * 4 * (size_t)out->w);
}

int wsi_thumbnail(Wsi *w, double downsample, Image *out, char *err) {
    out->px = NULL;
    out->w = out->h = 0;
    if (downsample < 1) downsample = 1;
    int tw = (int)ceil(w->w / downsample), th = (int)ceil(w->h / downsample);
    // No slack here: with f < 1 some thumbnail pixels would receive no level pixel.
    int level = best_level_with_slack(w, downsample, 1.0);
    double ds_l = wsi_level_downsample(w, level);
    double f = downsample / ds_l; // level pixels per thumbnail pixel, >= 1
    int64_t lw, lh;
    wsi_level_size(w, level, &lw, &lh);
    image_alloc(out, tw, th);
    // One strip of level rows at a time, accumulated into the current thumbnail row: memory stays
    // O(level width), whatever the slide height. Level pixel (lx, ly) feeds thumbnail pixel (lx/f, ly/f).
    const int strip_rows = 64, chunk_cols = 4096;
    uint32_t *acc = dino_calloc(4 * (size_t)tw, sizeof(uint32_t));
    uint8_t *chunk = dino_malloc((size_t)strip_rows * chunk_cols * 3);
    uint8_t *strip = dino_malloc((size_t)strip_rows * lw * 3);
    int cur_ty = 0;
    for (int64_t ly0 = 0; ly0 < lh; ly0 += strip_rows) {
        int rh = (int)(lh - ly0 < strip_rows ? lh - ly0 : strip_rows);
        for (int64_t lx0 = 0; lx0 < lw; lx0 += chunk_cols) {
            int rw = (int)(lw - lx0 < chunk_cols ? lw - lx0 : chunk_cols);
            if (wsi_read_region_rgb(w, level, llround(lx0 * ds_l), llround(ly0 * ds_l), rw, rh, chunk, err) != 0) {
                free(strip); free(chunk); free(acc); image_free(out);
                return -1;
            }
            for (int r = 0; r < rh; r++)
                memcpy(strip + ((size_t)r * lw + lx0) * 3, chunk + (size_t)r * rw * 3, (size_t)rw * 3);
        }
        for (int r = 0; r < rh; r++) {
            int ty = (int)floor((ly0 + r) / f);
            if (ty > th - 1) ty = th - 1;
            for (; cur_ty < ty; cur_ty++) flush_thumb_row(out, cur_ty, acc);
            const uint8_t *s = strip + (size_t)r * lw * 3;
            for (int64_t lx = 0; lx < lw; lx++) {
                int tx = (int)floor(lx / f);
                if (tx > tw - 1) tx = tw - 1;
                uint32_t *a = acc + 4 * tx;
                a[0] += s[3 * lx]; a[1] += s[3 * lx + 1]; a[2] += s[3 * lx + 2]; a[3]++;
            }
        }
    }
    for (; cur_ty < th; cur_ty++) flush_thumb_row(out, cur_ty, acc);
    free(strip);
    free(chunk);
    free(acc);
    return 0;
}
