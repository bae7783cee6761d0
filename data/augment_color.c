// Colour ops of the augmentation on 8-bit interleaved RGB, with the exact arithmetic of Pillow 9
// (ImageEnhance = Image.blend with a float alpha and truncation, "L" = ITU-R 601-2 in 16-bit fixed
// point, HSV conversions in mixed float/double) as torchvision 0.14 calls them on PIL images.
// Contraction into FMA would change Pillow's rounding on some values: keep it off in this file.
#pragma GCC optimize("fp-contract=off", "vect-cost-model=dynamic")

#include <math.h>
#include <pthread.h>
#include <string.h>

#include "common/check.h"
#include "data/augment.h"

static inline int luma(const uint8_t *p) { // Pillow's L24: rounded 16-bit fixed point of 0.299 0.587 0.114
    return (p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16;
}

static inline int clip8i(int v) { return v < 0 ? 0 : v > 255 ? 255 : v; }

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

void aug_adjust_brightness_u8(uint8_t *px, int n, float factor) { // blend(black, img, factor)
    uint8_t lut[256];
    for (int v = 0; v < 256; v++) lut[v] = pil_blend(0, v, factor);
    apply_lut(px, n, lut);
}

void aug_adjust_contrast_u8(uint8_t *px, int n, float factor) { // blend(grey mean of L, img, factor)
    uint64_t sum = 0;
    for (int i = 0; i < n; i++) sum += (uint64_t)luma(px + 3 * i);
    int mean = (int)((double)sum / n + 0.5);
    uint8_t lut[256];
    for (int v = 0; v < 256; v++) lut[v] = pil_blend(mean, v, factor);
    apply_lut(px, n, lut);
}

void aug_adjust_saturation_u8(uint8_t *px, int n, float factor) { // blend(L replicated, img, factor)
    // In chunks: L replicated per channel, then one branch-free blend loop that vectorizes. Clamping
    // then truncating equals ImagingBlend in both of its branches.
    enum { CHUNK = 256 };
    float lrep[3 * CHUNK];
    for (int start = 0; start < n; start += CHUNK) {
        int m = n - start < CHUNK ? n - start : CHUNK;
        uint8_t *p = px + 3 * (size_t)start;
        for (int j = 0; j < m; j++) lrep[3 * j] = lrep[3 * j + 1] = lrep[3 * j + 2] = (float)luma(p + 3 * j);
        for (int i = 0; i < 3 * m; i++) {
            float t = lrep[i] + factor * ((float)p[i] - lrep[i]);
            t = t < 0.0f ? 0.0f : t;
            t = t > 255.0f ? 255.0f : t;
            p[i] = (uint8_t)(int)t;
        }
    }
}

void aug_grayscale_u8(uint8_t *px, int n) {
    for (int i = 0; i < n; i++) {
        uint8_t *p = px + 3 * i;
        p[0] = p[1] = p[2] = (uint8_t)luma(p);
    }
}

void aug_solarize_u8(uint8_t *px, int n, int threshold) {
    for (size_t i = 0; i < (size_t)n * 3; i++)
        if (px[i] >= threshold) px[i] = (uint8_t)(255 - px[i]);
}

// ---- hue: torchvision F_pil.adjust_hue = img.convert("HSV"), h += uint8(hue_factor * 255) (wrapping),
// back to RGB, with Pillow's rgb2hsv_row / hsv2rgb arithmetic. The divisions of rgb2hsv only ever see
// channel differences, so h and s come from tables built once with that exact arithmetic.

// Pillow's h (0..255) when `branch` (0: r, 1: g, 2: b is the max, chosen in that order) has the
// other two channels at maxc - da and maxc - db (da, db in [0, cr], cr = max - min > 0).
static int pil_hue_of(int branch, int da, int db, int cr_i) {
    float cr = (float)cr_i, ca = (float)da / cr, cb = (float)db / cr, h;
    if (branch == 0) h = cb - ca;                  // r max: bc - gc      (a = g, b = b)
    else if (branch == 1) h = (float)(2.0 + ca - cb); // g max: 2 + rc - bc (a = r, b = b)
    else h = (float)(4.0 + ca - cb);                // b max: 4 + gc - rc (a = g, b = r)
    h = (float)fmod((double)h / 6.0 + 1.0, 1.0);
    return clip8i((int)(h * 255.0));
}

static uint8_t *hue_h_table; // [branch * 2 + (second channel is the min)][cr][d of the other channel]
static uint8_t *hue_s_table; // [cr][maxc]: (int)((cr / (float)maxc) * 255.0)
static uint8_t *hue_p_table; // [s][v]: round(v * (1 - s / 255.0))
static pthread_once_t hue_once = PTHREAD_ONCE_INIT;

static inline int round_half_away(double x) { // C round() for x >= 0, branch-free (x - trunc(x) is exact)
    int64_t t = (int64_t)x;
    return (int)t + (x - (double)t >= 0.5);
}

// hsv2rgb's output order per hue sector: indices into {v, p, q, t}
static const uint8_t HSV_SECTOR[6][3] = {{0, 3, 1}, {2, 0, 1}, {1, 0, 3}, {1, 2, 0}, {3, 1, 0}, {0, 1, 2}};

static void hue_tables_init(void) {
    hue_h_table = dino_malloc(6 * 65536);
    hue_s_table = dino_malloc(65536);
    hue_p_table = dino_malloc(65536);
    for (int branch = 0; branch < 3; branch++)
        for (int cr = 1; cr < 256; cr++)
            for (int d = 0; d <= cr; d++) {
                hue_h_table[(branch * 2 + 0) * 65536 + cr * 256 + d] = (uint8_t)pil_hue_of(branch, cr, d, cr);
                hue_h_table[(branch * 2 + 1) * 65536 + cr * 256 + d] = (uint8_t)pil_hue_of(branch, d, cr, cr);
            }
    for (int cr = 0; cr < 256; cr++)
        for (int m = 0; m < 256; m++)
            hue_s_table[cr * 256 + m] = m ? (uint8_t)clip8i((int)((float)cr / (float)m * 255.0)) : 0;
    for (int sv = 0; sv < 256; sv++)
        for (int v = 0; v < 256; v++) {
            float fs = (float)((float)sv / 255.0);
            hue_p_table[sv * 256 + v] = (uint8_t)clip8i((int)round((float)v * (1.0 - fs)));
        }
}

void aug_adjust_hue_u8(uint8_t *px, int n, float hue_factor) {
    pthread_once(&hue_once, hue_tables_init);
    uint8_t shift = (uint8_t)(int)((double)hue_factor * 255.0); // np.uint8 of a truncated float
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
        if (maxc == minc) continue; // s = 0: grey stays grey
        int cr = maxc - minc;
        // Pillow's branch (r, then g, then b is the max) and the two other channels' distances to
        // the max, chosen without data-dependent jumps
        int rmax = r == maxc, gmax = !rmax & (g == maxc);
        int branch = rmax ? 0 : gmax ? 1 : 2;
        int da = maxc - (rmax ? g : gmax ? r : g);
        int db = maxc - (rmax ? b : gmax ? b : r);
        int second_is_min = da != cr;
        int uh = hue_h_table[(branch * 2 + second_is_min) * 65536 + cr * 256 + (second_is_min ? da : db)];
        int us = hue_s_table[cr * 256 + maxc], v = maxc;
        uh = (uint8_t)(uh + shift);
        if (us == 0) {
            p[0] = p[1] = p[2] = (uint8_t)v;
            continue;
        }
        // hsv2rgb
        float f = hf[uh], fsv = fs[us];
        int pp = hue_p_table[us * 256 + v];
        int qq = clip8i(round_half_away((float)v * (1.0 - fsv * f)));
        int tt = clip8i(round_half_away((float)v * (1.0 - fsv * (1.0 - f))));
        uint32_t vals = (uint32_t)v | (uint32_t)pp << 8 | (uint32_t)qq << 16 | (uint32_t)tt << 24;
        const uint8_t *order = HSV_SECTOR[hi[uh] % 6]; // no data-dependent branch
        p[0] = (uint8_t)(vals >> (8 * order[0]));
        p[1] = (uint8_t)(vals >> (8 * order[1]));
        p[2] = (uint8_t)(vals >> (8 * order[2]));
    }
}

// HED stain jitter: colour deconvolution with the Ruifrok-Johnston stain vectors (as skimage's
// rgb2hed / hed2rgb), stain_c * alpha_c + beta_c, back to RGB.
static const double RGB_FROM_HED[3][3] = {{0.65, 0.70, 0.29}, {0.07, 0.99, 0.11}, {0.27, 0.57, 0.78}};

static void inv3(const double m[3][3], double out[3][3]) {
    double det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) -
                 m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
                 m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            int a = (j + 1) % 3, b = (j + 2) % 3, c = (i + 1) % 3, d = (i + 2) % 3;
            out[i][j] = (m[a][c] * m[b][d] - m[a][d] * m[b][c]) / det;
        }
}

void aug_hed_jitter_u8(uint8_t *px, int n, const float alpha[3], const float beta[3]) {
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
