// Geometric and filtering ops of the augmentation on 8-bit interleaved RGB:
//  - bicubic resize with Pillow's exact algorithm (ImagingResample: separable, horizontal pass first,
//    filter support widened by the downscale factor = antialiasing, window clipped to the image and
//    renormalized, coefficients in 22-bit fixed point, 8-bit intermediate);
//  - flips and quarter turns;
//  - torchvision's gaussian_blur (float kernel, reflect padding, round half to even), separable;
//  - ToTensor + Normalize through a per-channel table (exactly torch's float32 (v/255 - m)/s).
// The project builds with -O2, where GCC 12 vectorizes only loops that need no epilogue; the row
// loops here are the hot spots of the data pipeline, so let the cost model decide.
#pragma GCC optimize("vect-cost-model=dynamic")

#include <math.h>
#include <string.h>

#include "common/check.h"
#include "data/augment.h"
#include "data/augment_internal.h"

void augment_scratch_grow(void **p, size_t *cap, size_t need) {
    if (need <= *cap) return;
    free(*p);
    *p = dino_malloc(need);
    *cap = need;
}

// ---- bicubic resize ---------------------------------------------------------------------------------

#define PRECISION_BITS 22 // Pillow: 32 - 8 (pixel) - 2 (headroom)

static double bicubic_filter(double x) { // Keys cubic with a = -0.5, support 2 (Pillow's BICUBIC)
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static int coeff_ksize(float in0, float in1, int out_size) {
    double scale = ((double)in1 - (double)in0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    return (int)ceil(2.0 * filterscale) * 2 + 1;
}

// One axis: for each output index, the first source index, the tap count and ksize fixed-point taps.
static void coeff_compute(int in_size, float in0, float in1, int out_size, int ksize, int32_t *kk,
                          int *bounds, double *w) {
    double scale = ((double)in1 - (double)in0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale, ss = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; x++) {
            w[x] = bicubic_filter((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = kk + (size_t)xx * ksize;
        for (int x = 0; x < ksize; x++) {
            double v = x < xmax ? (ww != 0.0 ? w[x] / ww : w[x]) : 0.0;
            k[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS)) : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        bounds[2 * xx] = xmin;
        bounds[2 * xx + 1] = xmax;
    }
}

static inline uint8_t clip8(int32_t v) {
    if (v >= (1 << PRECISION_BITS << 8)) return 255;
    if (v <= 0) return 0;
    return (uint8_t)(v >> PRECISION_BITS);
}

// Slides each output's tap window to a fixed length K inside [0, in_size): taps moved in get weight 0.
static void pad_windows(int32_t *kk, int *bounds, int out_size, int K, int in_size) {
    for (int x = 0; x < out_size; x++) {
        int xmin = bounds[2 * x], n = bounds[2 * x + 1];
        int32_t *k = kk + (size_t)x * K;
        int start = xmin + K > in_size ? in_size - K : xmin, shift = xmin - start;
        if (shift) {
            for (int t = n - 1; t >= 0; t--) k[t + shift] = k[t];
            for (int t = 0; t < shift; t++) k[t] = 0;
        }
        for (int t = shift + n; t < K; t++) k[t] = 0;
        bounds[2 * x] = start;
        bounds[2 * x + 1] = K;
    }
}

static inline __attribute__((always_inline)) void horizontal_row(const uint8_t *row, uint8_t *o, int dw,
                                                                  const int32_t *kx, const int *bxs, int K,
                                                                  int hflip, int fixed) {
    const int32_t half = 1 << (PRECISION_BITS - 1);
    for (int x = 0; x < dw; x++) {
        const int32_t *k = kx + (size_t)x * K;
        const uint8_t *p = row + (size_t)bxs[2 * x] * 3;
        int n = fixed ? K : bxs[2 * x + 1];
        int32_t s0 = half, s1 = half, s2 = half;
        for (int t = 0; t < n; t++) {
            s0 += p[3 * t] * k[t];
            s1 += p[3 * t + 1] * k[t];
            s2 += p[3 * t + 2] * k[t];
        }
        uint8_t *q = o + (size_t)(hflip ? dw - 1 - x : x) * 3;
        q[0] = clip8(s0);
        q[1] = clip8(s1);
        q[2] = clip8(s2);
    }
}

// The horizontal pass on 8 rows at once: the strip is transposed (as int32) so that the 8 rows of one
// byte position are contiguous; each (output pixel, channel) is then K multiply-adds of 8-lane
// vectors instead of 8 scalar dot products. Same integer sums as horizontal_row.
static inline __attribute__((always_inline)) void horizontal_strip8(const uint8_t *src, int stride, int sw,
                                                                     uint8_t *out, int ostride, int dw,
                                                                     const int32_t *kx, const int *bxs, int K,
                                                                     int hflip, int32_t *restrict T) {
    size_t rowlen = (size_t)sw * 3;
    for (int r = 0; r < 8; r++) {
        const uint8_t *in = src + (size_t)r * stride;
        for (size_t j = 0; j < rowlen; j++) T[j * 8 + r] = in[j];
    }
    const int32_t half = 1 << (PRECISION_BITS - 1);
    for (int x = 0; x < dw; x++) {
        const int32_t *k = kx + (size_t)x * K;
        size_t ox = (size_t)(hflip ? dw - 1 - x : x) * 3;
        for (int c = 0; c < 3; c++) {
            const int32_t *base = T + ((size_t)bxs[2 * x] * 3 + c) * 8;
            int32_t acc[8];
            for (int r = 0; r < 8; r++) acc[r] = half;
            for (int t = 0; t < K; t++) {
                int32_t kt = k[t];
                const int32_t *v = base + (size_t)t * 24;
                for (int r = 0; r < 8; r++) acc[r] += v[r] * kt;
            }
            for (int r = 0; r < 8; r++) out[(size_t)r * ostride + ox + c] = clip8(acc[r]);
        }
    }
}

static void copy_rows(const uint8_t *src, int stride, uint8_t *dst, int w, int h) {
    for (int y = 0; y < h; y++) memcpy(dst + (size_t)y * w * 3, src + (size_t)y * stride, (size_t)w * 3);
}

void aug_flip_h_u8(uint8_t *px, int w, int h) {
    for (int y = 0; y < h; y++) {
        uint8_t *r = px + (size_t)y * w * 3;
        for (int a = 0, b = w - 1; a < b; a++, b--)
            for (int c = 0; c < 3; c++) {
                uint8_t t = r[a * 3 + c];
                r[a * 3 + c] = r[b * 3 + c];
                r[b * 3 + c] = t;
            }
    }
}

void aug_flip_v_u8(uint8_t *px, int w, int h) {
    size_t row = (size_t)w * 3;
    for (int a = 0, b = h - 1; a < b; a++, b--) {
        uint8_t *ra = px + a * row, *rb = px + b * row;
        for (size_t i = 0; i < row; i++) {
            uint8_t t = ra[i];
            ra[i] = rb[i];
            rb[i] = t;
        }
    }
}

// Counter-clockwise quarter turns of a square image (torch.rot90 on (H, W) dims with k turns).
void aug_rot90_u8(const uint8_t *src, uint8_t *dst, int n, int k) {
    k &= 3;
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            int sy, sx; // dst(y, x) = src(sy, sx)
            switch (k) {
            case 0: sy = y; sx = x; break;
            case 1: sy = x; sx = n - 1 - y; break;
            case 2: sy = n - 1 - y; sx = n - 1 - x; break;
            default: sy = n - 1 - x; sx = y; break;
            }
            memcpy(dst + ((size_t)y * n + x) * 3, src + ((size_t)sy * n + sx) * 3, 3);
        }
}

void aug_resize_bicubic_u8(const uint8_t *src, int sw, int sh, int stride, double x0, double y0, double x1,
                       double y1, uint8_t *dst, int dw, int dh, int hflip, AugmentScratch *s) {
    float bx0 = (float)x0, by0 = (float)y0, bx1 = (float)x1, by1 = (float)y1; // Pillow's float box
    int need_h = dw != sw || bx0 != 0 || bx1 != sw;
    int need_v = dh != sh || by0 != 0 || by1 != sh;
    if (!need_h && !need_v) {
        copy_rows(src, stride, dst, dw, dh);
        if (hflip) aug_flip_h_u8(dst, dw, dh);
        return;
    }
    int ksx = coeff_ksize(bx0, bx1, dw), ksy = coeff_ksize(by0, by1, dh);
    int kmax = ksx > ksy ? ksx : ksy;
    size_t bytes = sizeof(int32_t) * ((size_t)dw * ksx + (size_t)dh * ksy) + sizeof(int) * 2 * ((size_t)dw + dh) +
                   sizeof(double) * (size_t)kmax;
    augment_scratch_grow(&s->coef, &s->coef_cap, bytes);
    double *w = s->coef;
    int32_t *kx = (int32_t *)(w + kmax), *ky = kx + (size_t)dw * ksx;
    int *bxs = (int *)(ky + (size_t)dh * ksy), *bys = bxs + 2 * dw;
    coeff_compute(sw, bx0, bx1, dw, ksx, kx, bxs, w);
    coeff_compute(sh, by0, by1, dh, ksy, ky, bys, w);
    int yfirst = bys[0], ylast = bys[2 * dh - 2] + bys[2 * dh - 1];

    const uint8_t *vsrc = src; // input of the vertical pass
    int vstride = stride;
    if (need_h) {
        int rows = need_v ? ylast - yfirst : sh;
        if (!need_v) yfirst = 0;
        uint8_t *out = dst;
        if (need_v) {
            augment_scratch_grow((void **)&s->tmp, &s->tmp_cap, (size_t)rows * dw * 3);
            out = s->tmp;
        }
        // every output pixel gets exactly ksx taps (zero weights past its window, window slid inside
        // the row), so the tap loop has a fixed length: same sums, fewer branches
        int y = 0;
        if (ksx <= sw) {
            pad_windows(kx, bxs, dw, ksx, sw);
            augment_scratch_grow((void **)&s->strip, &s->strip_cap, sizeof(int32_t) * 8 * (size_t)sw * 3);
            for (; y + 8 <= rows; y += 8) {
                const uint8_t *in = src + (size_t)(y + yfirst) * stride;
                uint8_t *o = out + (size_t)y * dw * 3;
                if (ksx == 5) horizontal_strip8(in, stride, sw, o, dw * 3, dw, kx, bxs, 5, hflip, s->strip);
                else if (ksx == 7) horizontal_strip8(in, stride, sw, o, dw * 3, dw, kx, bxs, 7, hflip, s->strip);
                else horizontal_strip8(in, stride, sw, o, dw * 3, dw, kx, bxs, ksx, hflip, s->strip);
            }
        }
        for (; y < rows; y++) {
            const uint8_t *row = src + (size_t)(y + yfirst) * stride;
            uint8_t *o = out + (size_t)y * dw * 3;
            if (ksx > sw) horizontal_row(row, o, dw, kx, bxs, ksx, hflip, 0);
            else if (ksx == 5) horizontal_row(row, o, dw, kx, bxs, 5, hflip, 1);
            else if (ksx == 7) horizontal_row(row, o, dw, kx, bxs, 7, hflip, 1);
            else horizontal_row(row, o, dw, kx, bxs, ksx, hflip, 1);
        }
        if (!need_v) return;
        vsrc = s->tmp;
        vstride = dw * 3;
        for (int y = 0; y < dh; y++) bys[2 * y] -= yfirst;
    }
    size_t rowlen = (size_t)dw * 3;
    augment_scratch_grow((void **)&s->acc, &s->acc_cap, rowlen * sizeof(int32_t));
    int32_t *acc = s->acc;
    for (int y = 0; y < dh; y++) {
        const int32_t *k = ky + (size_t)y * ksy;
        int ymin = bys[2 * y], n = bys[2 * y + 1];
        for (size_t i = 0; i < rowlen; i++) acc[i] = 1 << (PRECISION_BITS - 1);
        for (int t = 0; t < n; t++) {
            const uint8_t *r = vsrc + (size_t)(ymin + t) * vstride;
            int32_t kt = k[t];
            for (size_t i = 0; i < rowlen; i++) acc[i] += r[i] * kt;
        }
        uint8_t *o = dst + (size_t)y * rowlen;
        for (size_t i = 0; i < rowlen; i++) o[i] = clip8(acc[i]);
    }
    if (!need_h && hflip) aug_flip_h_u8(dst, dw, dh);
}

// ---- Gaussian blur ----------------------------------------------------------------------------------

static inline int reflect(int i, int n) { // torch 'reflect' padding (edge not repeated)
    if (i < 0) return -i;
    if (i >= n) return 2 * n - 2 - i;
    return i;
}

static inline float round_half_even(float v) { // exact for |v| < 2^22, and it vectorizes
    const float magic = 12582912.0f;               // 1.5 * 2^23
    return (v + magic) - magic;
}

// Both passes accumulate tap by tap over whole rows: simple loops that vectorize.
static void blur_passes(uint8_t *restrict px, int w, int h, int K, const float *k, float *restrict H,
                        float *restrict pad, float *restrict acc) {
    int r = K / 2;
    size_t row = (size_t)w * 3;
    for (int y = 0; y < h; y++) { // horizontal pass on a reflect-padded float row
        const uint8_t *in = px + (size_t)y * row;
        for (int x = 0; x < r; x++)
            for (int c = 0; c < 3; c++) {
                pad[(size_t)x * 3 + c] = in[(size_t)(r - x) * 3 + c];
                pad[(size_t)(w + r + x) * 3 + c] = in[(size_t)(w - 2 - x) * 3 + c];
            }
        float *padc = pad + (size_t)r * 3;
        for (size_t i = 0; i < row; i++) padc[i] = in[i];
        float *o = H + (size_t)y * row;
        for (size_t i = 0; i < row; i++) o[i] = k[0] * pad[i];
        for (int t = 1; t < K; t++) {
            const float *pt = pad + 3 * (size_t)t;
            float kt = k[t];
            for (size_t i = 0; i < row; i++) o[i] += kt * pt[i];
        }
    }
    for (int y = 0; y < h; y++) { // vertical pass, rounded half to even like torch.round
        const float *r0 = H + (size_t)reflect(y - r, h) * row;
        for (size_t i = 0; i < row; i++) acc[i] = k[0] * r0[i];
        for (int t = 1; t < K; t++) {
            const float *rt = H + (size_t)reflect(y - r + t, h) * row;
            float kt = k[t];
            for (size_t i = 0; i < row; i++) acc[i] += kt * rt[i];
        }
        uint8_t *o = px + (size_t)y * row;
        for (size_t i = 0; i < row; i++) {
            float v = round_half_even(acc[i]);
            v = v < 0.0f ? 0.0f : v;
            v = v > 255.0f ? 255.0f : v;
            o[i] = (uint8_t)(int)v;
        }
    }
}

void aug_gaussian_blur_u8(uint8_t *px, int w, int h, int ksize, float sigma, AugmentScratch *s) {
    DINO_ASSERT(ksize % 2 == 1 && ksize <= 63 && ksize / 2 < w && ksize / 2 < h, "gaussian_blur: kernel %d on %dx%d",
                ksize, w, h);
    // torchvision _get_gaussian_kernel1d in float32: x = linspace(-r, r), exp(-0.5 (x/sigma)^2), / sum
    int r = ksize / 2;
    float k[64];
    float sum = 0;
    for (int i = 0; i < ksize; i++) {
        float x = (float)(i - r) / sigma;
        k[i] = expf(-0.5f * (x * x));
        sum += k[i];
    }
    for (int i = 0; i < ksize; i++) k[i] /= sum;
    size_t row = (size_t)w * 3, prow = (size_t)(w + 2 * r) * 3;
    augment_scratch_grow((void **)&s->fbuf, &s->fbuf_cap, sizeof(float) * (row * (size_t)h + prow + row));
    float *H = s->fbuf, *pad = H + row * (size_t)h, *acc = pad + prow;
    blur_passes(px, w, h, ksize, k, H, pad, acc);
}

// ---- ToTensor + Normalize ---------------------------------------------------------------------------

void aug_normalize_u8(const uint8_t *px, int w, int h, const float mean[3], const float std[3], float *out) {
    float lut[3][256];
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) {
            volatile float x = (float)v / 255.0f; // torch: to(float32).div(255), then sub_(mean).div_(std)
            lut[c][v] = (x - mean[c]) / std[c];
        }
    size_t n = (size_t)w * h;
    float *o0 = out, *o1 = out + n, *o2 = out + 2 * n;
    for (size_t i = 0; i < n; i++) {
        o0[i] = lut[0][px[3 * i]];
        o1[i] = lut[1][px[3 * i + 1]];
        o2[i] = lut[2][px[3 * i + 2]];
    }
}
