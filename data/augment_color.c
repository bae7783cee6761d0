// Colour ops of the augmentation on 8-bit interleaved RGB, with the exact arithmetic of Pillow 9
// (ImageEnhance = Image.blend with a float alpha and truncation, "L" = ITU-R 601-2 in 16-bit fixed
// point, HSV conversions in mixed float/double) as torchvision 0.14 calls them on PIL images.
// Contraction into FMA would change Pillow's rounding on some values: keep it off in this file.
#pragma GCC optimize("fp-contract=off")

#include <math.h>
#include <string.h>

#include "data/augment.h"

static inline int luma(const uint8_t *p) { // Pillow's L24: rounded 16-bit fixed point of 0.299 0.587 0.114
    return (p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16;
}

// ImagingBlend(in1, in2, alpha) for one value: interpolation truncates, extrapolation clips.
static inline uint8_t pil_blend(int a, int b, float alpha) {
    float t = (float)a + alpha * (float)(b - a);
    if (alpha >= 0.0f && alpha <= 1.0f) return (uint8_t)t;
    if (t <= 0.0f) return 0;
    if (t >= 255.0f) return 255;
    return (uint8_t)t;
}

static void apply_lut(uint8_t *px, int n, const uint8_t lut[256]) {
    for (size_t i = 0; i < (size_t)n * 3; i++) px[i] = lut[px[i]];
}

void adjust_brightness_u8(uint8_t *px, int n, float factor) { // blend(black, img, factor)
    uint8_t lut[256];
    for (int v = 0; v < 256; v++) lut[v] = pil_blend(0, v, factor);
    apply_lut(px, n, lut);
}

void adjust_contrast_u8(uint8_t *px, int n, float factor) { // blend(grey mean of L, img, factor)
    uint64_t sum = 0;
    for (int i = 0; i < n; i++) sum += (uint64_t)luma(px + 3 * i);
    int mean = (int)((double)sum / n + 0.5);
    uint8_t lut[256];
    for (int v = 0; v < 256; v++) lut[v] = pil_blend(mean, v, factor);
    apply_lut(px, n, lut);
}

void adjust_saturation_u8(uint8_t *px, int n, float factor) { // blend(L replicated, img, factor)
    for (int i = 0; i < n; i++) {
        uint8_t *p = px + 3 * i;
        int l = luma(p);
        p[0] = pil_blend(l, p[0], factor);
        p[1] = pil_blend(l, p[1], factor);
        p[2] = pil_blend(l, p[2], factor);
    }
}

void grayscale_u8(uint8_t *px, int n) {
    for (int i = 0; i < n; i++) {
        uint8_t *p = px + 3 * i;
        p[0] = p[1] = p[2] = (uint8_t)luma(p);
    }
}

void solarize_u8(uint8_t *px, int n, int threshold) {
    for (size_t i = 0; i < (size_t)n * 3; i++)
        if (px[i] >= threshold) px[i] = (uint8_t)(255 - px[i]);
}

static inline int clip8i(int v) { return v < 0 ? 0 : v > 255 ? 255 : v; }

// torchvision F_pil.adjust_hue: img.convert("HSV"), h += uint8(hue_factor * 255) (wrapping), back to RGB.
void adjust_hue_u8(uint8_t *px, int n, float hue_factor) {
    uint8_t shift = (uint8_t)(int)((double)hue_factor * 255.0); // np.uint8 of a truncated float
    // hsv2rgb terms that depend on h or s only
    int hi[256];
    float hf[256], fs[256];
    for (int v = 0; v < 256; v++) {
        hi[v] = (int)floor((float)v * 6.0 / 255.0);
        hf[v] = (float)((float)v * 6.0 / 255.0 - (float)hi[v]);
        fs[v] = (float)((float)v / 255.0);
    }
    for (int i = 0; i < n; i++) {
        uint8_t *p = px + 3 * i;
        int r = p[0], g = p[1], b = p[2];
        int maxc = r > g ? (r > b ? r : b) : (g > b ? g : b);
        int minc = r < g ? (r < b ? r : b) : (g < b ? g : b);
        if (maxc == minc) continue; // s = 0: grey stays grey (h = 0 + shift is irrelevant)
        // rgb2hsv_row
        float cr = (float)(maxc - minc);
        float s = cr / (float)maxc;
        float rc = (float)(maxc - r) / cr, gc = (float)(maxc - g) / cr, bc = (float)(maxc - b) / cr;
        float h;
        if (r == maxc) h = bc - gc;
        else if (g == maxc) h = (float)(2.0 + rc - bc);
        else h = (float)(4.0 + gc - rc);
        double hd = (double)h / 6.0 + 1.0; // in [5/6, 2): fmod(hd, 1) is exact subtraction
        h = (float)(hd >= 1.0 ? hd - 1.0 : hd);
        int uh = clip8i((int)(h * 255.0)), us = clip8i((int)(s * 255.0)), v = maxc;
        uh = (uint8_t)(uh + shift);
        if (us == 0) {
            p[0] = p[1] = p[2] = (uint8_t)v;
            continue;
        }
        // hsv2rgb
        int ii = hi[uh];
        float f = hf[uh], fsv = fs[us];
        int pp = clip8i((int)round((float)v * (1.0 - fsv)));
        int qq = clip8i((int)round((float)v * (1.0 - fsv * f)));
        int tt = clip8i((int)round((float)v * (1.0 - fsv * (1.0 - f))));
        switch (ii % 6) {
        case 0: p[0] = v; p[1] = tt; p[2] = pp; break;
        case 1: p[0] = qq; p[1] = v; p[2] = pp; break;
        case 2: p[0] = pp; p[1] = v; p[2] = tt; break;
        case 3: p[0] = pp; p[1] = qq; p[2] = v; break;
        case 4: p[0] = tt; p[1] = pp; p[2] = v; break;
        default: p[0] = v; p[1] = pp; p[2] = qq; break;
        }
    }
}

// HED stain jitter: colour deconvolution with the Ruifrok-Johnston stain vectors (as skimage's
// rgb2hed / hed2rgb), stain_c * alpha_c + beta_c, back to RGB.
static const double RGB_FROM_HED[3][3] = {{0.65, 0.70, 0.29}, {0.07, 0.99, 0.11}, {0.27, 0.57, 0.78}};

static void inv3(const double m[3][3], double out[3][3]) {
    double det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
                 m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            int a = (j + 1) % 3, b = (j + 2) % 3, c = (i + 1) % 3, d = (i + 2) % 3;
            out[i][j] = (m[a][c] * m[b][d] - m[a][d] * m[b][c]) / det;
        }
}

void hed_jitter_u8(uint8_t *px, int n, const float alpha[3], const float beta[3]) {
    // skimage rgb2hed/hed2rgb: rows of RGB_FROM_HED are the H, E, D stain vectors (used as given).
    double rgb_from_hed[3][3], hed_from_rgb[3][3];
    memcpy(rgb_from_hed, RGB_FROM_HED, sizeof rgb_from_hed);
    inv3(rgb_from_hed, hed_from_rgb);
    const double log_adjust = log(1e-6);
    float od[256]; // log(max(v/255, 1e-6)) / log(1e-6): optical density in skimage's units
    for (int v = 0; v < 256; v++) od[v] = (float)(log(fmax(v / 255.0, 1e-6)) / log_adjust);
    float fw[3][3], bw[3][3];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            fw[i][j] = (float)hed_from_rgb[i][j];
            bw[i][j] = (float)(rgb_from_hed[i][j] * log_adjust); // -(stain * -log_adjust) @ rgb_from_hed
        }
    for (int i = 0; i < n; i++) {
        uint8_t *p = px + 3 * i;
        float o[3] = {od[p[0]], od[p[1]], od[p[2]]}, st[3];
        for (int c = 0; c < 3; c++) {
            // no clip of negative concentrations (skimage clips): identity jitter stays the identity
            float v = o[0] * fw[0][c] + o[1] * fw[1][c] + o[2] * fw[2][c];
            st[c] = v * alpha[c] + beta[c];
        }
        for (int c = 0; c < 3; c++) {
            float lg = st[0] * bw[0][c] + st[1] * bw[1][c] + st[2] * bw[2][c];
            float rgb = expf(lg);
            rgb = rgb < 0 ? 0 : rgb > 1 ? 1 : rgb;
            p[c] = (uint8_t)(rgb * 255.0f + 0.5f);
        }
    }
}
