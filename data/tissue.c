#include "data/tissue.h"

#include <math.h>
#include <string.h>

#include "common/check.h"

// Saturation threshold bounds (0..255): glass and background sit well below 20, stained tissue well
// above 50; Otsu picks the valley between, the clamp keeps a one-class image from being split.
#define SAT_MIN_THRESHOLD 20
#define SAT_MAX_THRESHOLD 50
#define DARK_VALUE 40       // max(R,G,B) below this: black pen, dust, slide edge
#define PEN_SATURATION 60   // and hue in PEN_HUE range with at least this saturation: marker ink
#define PEN_HUE_LO 70.0     // degrees: yellow-green ...
#define PEN_HUE_HI 250.0    // ... to blue; eosin and haematoxylin are pink to violet (> 260 or < 30)

static int otsu_threshold(const uint64_t hist[256]) {
    uint64_t total = 0;
    double sum_all = 0;
    for (int i = 0; i < 256; i++) { total += hist[i]; sum_all += (double)i * hist[i]; }
    if (total == 0) return SAT_MIN_THRESHOLD;
    double best = -1, sum_b = 0;
    uint64_t w_b = 0;
    int thr = 0;
    for (int t = 0; t < 256; t++) {
        w_b += hist[t];
        if (w_b == 0) continue;
        uint64_t w_f = total - w_b;
        if (w_f == 0) break;
        sum_b += (double)t * hist[t];
        double m_b = sum_b / w_b, m_f = (sum_all - sum_b) / w_f;
        double between = (double)w_b * w_f * (m_b - m_f) * (m_b - m_f);
        if (between > best) { best = between; thr = t; }
    }
    return thr; // class "tissue" is s > thr
}

// Square max (dilate) or min (erode) filter of radius r, separable.
static void morph(uint8_t *m, int w, int h, int r, int dilate) {
    uint8_t *tmp = dino_malloc((size_t)w * h);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int v = dilate ? 0 : 1;
            for (int k = -r; k <= r; k++) {
                int xx = x + k;
                if (xx < 0 || xx >= w) continue;
                v = dilate ? (v | m[(size_t)y * w + xx]) : (v & m[(size_t)y * w + xx]);
            }
            tmp[(size_t)y * w + x] = (uint8_t)v;
        }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int v = dilate ? 0 : 1;
            for (int k = -r; k <= r; k++) {
                int yy = y + k;
                if (yy < 0 || yy >= h) continue;
                v = dilate ? (v | tmp[(size_t)yy * w + x]) : (v & tmp[(size_t)yy * w + x]);
            }
            m[(size_t)y * w + x] = (uint8_t)v;
        }
    free(tmp);
}

// Flips 4-connected components of value `val` to !val when they are smaller than max_area and, if
// skip_border, do not touch the image border (for holes: background connected to the border is glass).
static void flip_small_components(uint8_t *m, int w, int h, uint8_t val, int64_t max_area, int skip_border) {
    size_t n = (size_t)w * h;
    uint8_t *seen = dino_calloc(n, 1);
    int32_t *queue = dino_malloc(sizeof(int32_t) * n);
    for (size_t s = 0; s < n; s++) {
        if (m[s] != val || seen[s]) continue;
        size_t head = 0, tail = 0;
        int touches_border = 0;
        queue[tail++] = (int32_t)s;
        seen[s] = 1;
        while (head < tail) {
            int32_t p = queue[head++];
            int x = p % w, y = p / w;
            if (x == 0 || y == 0 || x == w - 1 || y == h - 1) touches_border = 1;
            const int dx[4] = {1, -1, 0, 0}, dy[4] = {0, 0, 1, -1};
            for (int k = 0; k < 4; k++) {
                int xx = x + dx[k], yy = y + dy[k];
                if (xx < 0 || yy < 0 || xx >= w || yy >= h) continue;
                size_t q = (size_t)yy * w + xx;
                if (m[q] == val && !seen[q]) { seen[q] = 1; queue[tail++] = (int32_t)q; }
            }
        }
        if ((int64_t)tail < max_area && !(skip_border && touches_border))
            for (size_t i = 0; i < tail; i++) m[queue[i]] = (uint8_t)!val;
    }
    free(queue);
    free(seen);
}

int tissue_detect_rgb(const Image *im, uint8_t *mask) {
    size_t n = (size_t)im->w * im->h;
    uint8_t *sat = dino_malloc(n), *excluded = dino_malloc(n);
    uint64_t hist[256] = {0};
    for (size_t i = 0; i < n; i++) {
        int r = im->px[3 * i], g = im->px[3 * i + 1], b = im->px[3 * i + 2];
        int mx = r > g ? (r > b ? r : b) : (g > b ? g : b);
        int mn = r < g ? (r < b ? r : b) : (g < b ? g : b);
        int s = mx ? (255 * (mx - mn) + mx / 2) / mx : 0;
        double hue = 0; // degrees
        if (mx > mn) {
            double d = mx - mn;
            if (mx == r) hue = 60.0 * fmod((g - b) / d + 6.0, 6.0);
            else if (mx == g) hue = 60.0 * ((b - r) / d + 2.0);
            else hue = 60.0 * ((r - g) / d + 4.0);
        }
        sat[i] = (uint8_t)s;
        excluded[i] = mx < DARK_VALUE || (s >= PEN_SATURATION && hue >= PEN_HUE_LO && hue <= PEN_HUE_HI);
        if (!excluded[i]) hist[s]++;
    }
    int thr = otsu_threshold(hist);
    if (thr < SAT_MIN_THRESHOLD) thr = SAT_MIN_THRESHOLD;
    if (thr > SAT_MAX_THRESHOLD) thr = SAT_MAX_THRESHOLD;
    for (size_t i = 0; i < n; i++) mask[i] = sat[i] > thr && !excluded[i];
    // Close small gaps (pale cytoplasm, nuclei edges), then fill holes smaller than 0.5% of the
    // image (lumens, fat cells; larger openings stay out), then drop specks (dust, debris).
    morph(mask, im->w, im->h, 2, 1);
    morph(mask, im->w, im->h, 2, 0);
    int64_t area = (int64_t)n;
    flip_small_components(mask, im->w, im->h, 0, area / 200 + 1, 1);
    for (size_t i = 0; i < n; i++) mask[i] &= !excluded[i]; // ink over or near tissue stays out
    flip_small_components(mask, im->w, im->h, 1, area / 5000 + 9, 0);
    free(sat);
    free(excluded);
    return thr;
}

void tissue_mask_from(TissueMask *tm, const uint8_t *mask, int w, int h, double downsample) {
    tm->w = w;
    tm->h = h;
    tm->downsample = downsample;
    tm->mask = dino_malloc((size_t)w * h);
    memcpy(tm->mask, mask, (size_t)w * h);
    tm->integral = dino_calloc((size_t)(w + 1) * (h + 1), sizeof(uint32_t));
    tm->row_cum = dino_calloc((size_t)h + 1, sizeof(int64_t));
    for (int y = 0; y < h; y++) {
        uint32_t run = 0;
        for (int x = 0; x < w; x++) {
            run += mask[(size_t)y * w + x];
            tm->integral[(size_t)(y + 1) * (w + 1) + x + 1] = tm->integral[(size_t)y * (w + 1) + x + 1] + run;
        }
        tm->row_cum[y + 1] = tm->row_cum[y] + run;
    }
    tm->tissue_px = tm->row_cum[h];
    tm->saturation_threshold = 0;
}

void tissue_mask_free(TissueMask *tm) {
    free(tm->mask);
    free(tm->integral);
    free(tm->row_cum);
    memset(tm, 0, sizeof *tm);
}

double tissue_mask_downsample(const Wsi *w, double tile_level0) {
    double ds = 8.0 / wsi_mpp(w);
    if (ds > tile_level0 / 16) ds = tile_level0 / 16;
    double longest = (double)(wsi_width(w) > wsi_height(w) ? wsi_width(w) : wsi_height(w));
    if (longest / ds > 4096) ds = longest / 4096;
    return ds < 1 ? 1 : ds;
}

int tissue_mask_for_slide(Wsi *w, double downsample, TissueMask *tm, char *err) {
    memset(tm, 0, sizeof *tm);
    Image thumb;
    if (wsi_thumbnail(w, downsample, &thumb, err) != 0) return -1;
    uint8_t *mask = dino_malloc((size_t)thumb.w * thumb.h);
    int thr = tissue_detect_rgb(&thumb, mask);
    tissue_mask_from(tm, mask, thumb.w, thumb.h, downsample);
    tm->saturation_threshold = thr;
    free(mask);
    image_free(&thumb);
    return 0;
}

double tissue_fraction(const TissueMask *tm, double x0, double y0, double side_w, double side_h) {
    // Mask pixels whose centre lies inside the rectangle.
    int mx0 = (int)ceil(x0 / tm->downsample - 0.5), my0 = (int)ceil(y0 / tm->downsample - 0.5);
    int mx1 = (int)ceil((x0 + side_w) / tm->downsample - 0.5), my1 = (int)ceil((y0 + side_h) / tm->downsample - 0.5);
    if (mx1 <= mx0) mx1 = mx0 + 1; // a rectangle smaller than a mask pixel samples the pixel it is in
    if (my1 <= my0) my1 = my0 + 1;
    double total = (double)(mx1 - mx0) * (my1 - my0);
    if (mx0 < 0) mx0 = 0;
    if (my0 < 0) my0 = 0;
    if (mx1 > tm->w) mx1 = tm->w;
    if (my1 > tm->h) my1 = tm->h;
    if (mx1 <= mx0 || my1 <= my0) return 0;
    size_t W = (size_t)tm->w + 1;
    int64_t s = (int64_t)tm->integral[my1 * W + mx1] - tm->integral[my0 * W + mx1] - tm->integral[my1 * W + mx0] +
                tm->integral[my0 * W + mx0];
    return s / total;
}

int tissue_sample_point(const TissueMask *tm, Rng *r, double *x, double *y) {
    if (tm->tissue_px <= 0) return -1;
    int64_t k = (int64_t)(rng_uniform(r) * (double)tm->tissue_px);
    if (k >= tm->tissue_px) k = tm->tissue_px - 1;
    // the row holding the k-th tissue pixel: largest row with row_cum[row] <= k
    int lo = 0, hi = tm->h; // row_cum[lo] <= k < row_cum[hi]
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (tm->row_cum[mid] <= k) lo = mid; else hi = mid;
    }
    int64_t left = k - tm->row_cum[lo];
    const uint8_t *row = tm->mask + (size_t)lo * tm->w;
    int mx = 0;
    for (; mx < tm->w; mx++)
        if (row[mx] && left-- == 0) break;
    *x = (mx + rng_uniform(r)) * tm->downsample;
    *y = (lo + rng_uniform(r)) * tm->downsample;
    return 0;
}

// ---- per-tile HSV filter ------------------------------------------------------------------------

void hsv_filter_default(HsvFilter *f) {
    *f = (HsvFilter){.min_fraction = 0, .hue = {90, 180}, .saturation = {8, 255}, .value = {103, 255}};
}

int hsv_filter_check(const HsvFilter *f, const char *what, char *err) {
    if (!(f->min_fraction >= 0 && f->min_fraction <= 1)) {
        dino_seterr(err, "%s: HSV filter minimum fraction %g must be in [0, 1]", what, f->min_fraction);
        return -1;
    }
    const int *r[3] = {f->hue, f->saturation, f->value};
    const char *name[3] = {"hue", "saturation", "value"};
    const int top[3] = {180, 255, 255};
    for (int k = 0; k < 3; k++)
        if (!(r[k][0] >= 0 && r[k][0] <= r[k][1] && r[k][1] <= top[k])) {
            dino_seterr(err, "%s: HSV filter %s range [%d, %d] must satisfy 0 <= min <= max <= %d (OpenCV units)",
                        what, name[k], r[k][0], r[k][1], top[k]);
            return -1;
        }
    return 0;
}

void rgb_to_hsv_cv(int r, int g, int b, int *h, int *s, int *v) {
    int mx = r > g ? (r > b ? r : b) : (g > b ? g : b);
    int mn = r < g ? (r < b ? r : b) : (g < b ? g : b);
    *v = mx;
    *s = mx ? (255 * (mx - mn) + mx / 2) / mx : 0;
    double hue = 0; // degrees
    if (mx > mn) {
        double d = mx - mn;
        if (mx == r) hue = 60.0 * (g - b) / d;
        else if (mx == g) hue = 120.0 + 60.0 * (b - r) / d;
        else hue = 240.0 + 60.0 * (r - g) / d;
        if (hue < 0) hue += 360.0;
    }
    int hh = (int)lround(hue / 2);
    *h = hh >= 180 ? hh - 180 : hh;
}

double tissue_hsv_fraction(const Image *im, const HsvFilter *f) {
    size_t n = (size_t)im->w * im->h, in = 0;
    for (size_t i = 0; i < n; i++) {
        int h, s, v;
        rgb_to_hsv_cv(im->px[3 * i], im->px[3 * i + 1], im->px[3 * i + 2], &h, &s, &v);
        in += h >= f->hue[0] && h <= f->hue[1] && s >= f->saturation[0] && s <= f->saturation[1] &&
              v >= f->value[0] && v <= f->value[1];
    }
    return n ? (double)in / (double)n : 0;
}

int tissue_hsv_accept(const Image *im, const HsvFilter *f) {
    return f->min_fraction <= 0 || tissue_hsv_fraction(im, f) >= f->min_fraction;
}
