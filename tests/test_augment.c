// Parity of the augmentation ops with torchvision 0.14 on PIL images (fixtures made by
// tests/make_augment_fixtures.py), and properties of the random plans.
// Tolerances: 8-bit ops must match to <= 1 level everywhere with mean |diff| < 0.05 (they are
// implemented with Pillow's own arithmetic and are expected bit-exact; the blur is separable float
// where torch uses a 2-D float kernel, so rare ties can round differently). Normalized floats: 1e-5.
// The oracles below transcribe Pillow's float arithmetic: no FMA contraction in this file.
#pragma GCC optimize("fp-contract=off")

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/check.h"
#include "data/augment.h"
#include "tests/harness.h"

typedef struct {
    char name[64], dtype[8];
    int ndim;
    int64_t dims[4], offset;
} FxEntry;

static FxEntry fx_entries[256];
static int fx_count;
static uint8_t *fx_data;

static void fx_load(void) {
    if (fx_data) return;
    FILE *f = fopen(test_src_path("tests/fixtures/augment_ops.txt"), "r");
    CHECK(f, "cannot open tests/fixtures/augment_ops.txt (run tests/make_augment_fixtures.py)");
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        FxEntry *e = &fx_entries[fx_count];
        int pos = 0;
        if (sscanf(line, "%63s %7s %d%n", e->name, e->dtype, &e->ndim, &pos) != 3) continue;
        char *p = line + pos;
        for (int i = 0; i < e->ndim; i++) e->dims[i] = strtoll(p, &p, 10);
        e->offset = strtoll(p, &p, 10);
        fx_count++;
    }
    fclose(f);
    FILE *b = fopen(test_src_path("tests/fixtures/augment_ops.bin"), "rb");
    CHECK(b, "cannot open tests/fixtures/augment_ops.bin");
    fseek(b, 0, SEEK_END);
    long n = ftell(b);
    fseek(b, 0, SEEK_SET);
    fx_data = dino_malloc((size_t)n);
    CHECK(fread(fx_data, 1, (size_t)n, b) == (size_t)n, "short read of augment_ops.bin");
    fclose(b);
}

static const FxEntry *fx(const char *name) {
    fx_load();
    for (int i = 0; i < fx_count; i++)
        if (!strcmp(fx_entries[i].name, name)) return &fx_entries[i];
    test_fail_at(__FILE__, __LINE__, "fixture %s missing", name);
    return NULL;
}
static const void *fx_ptr(const char *name) {
    const FxEntry *e = fx(name); // loads the fixture file first
    return fx_data + e->offset;
}
static double fx_f64(const char *name, int i) { return ((const double *)fx_ptr(name))[i]; }

// src as an Image copy (ops work in place)
static Image src_image(void) {
    const FxEntry *e = fx("src");
    Image im;
    image_alloc(&im, (int)e->dims[1], (int)e->dims[0]);
    memcpy(im.px, fx_ptr("src"), (size_t)im.w * im.h * 3);
    return im;
}

static void check_u8(const char *what, const uint8_t *got, const uint8_t *want, size_t n) {
    int maxd = 0;
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)got[i] - (int)want[i]);
        if (d > maxd) maxd = d;
        sum += d;
    }
    printf("  %-14s max |diff| %d  mean %.4f  (%zu values)\n", what, maxd, sum / n, n);
    CHECK(maxd <= 1 && sum / n < 0.05, "%s: max diff %d, mean %.4f", what, maxd, sum / n);
}

TEST(resized_crop_matches_pil_bicubic) {
    Image src = src_image();
    AugmentConfig cfg;
    augment_config_default(&cfg);
    AugmentScratch *s = augment_scratch_new(&cfg);
    for (int i = 0; i < 6; i++) {
        char name[32];
        snprintf(name, sizeof name, "crop%d_box", i);
        const int32_t *b = fx_ptr(name);
        int t = b[0], l = b[1], h = b[2], w = b[3], oh = b[4], ow = b[5];
        uint8_t *out = dino_malloc((size_t)ow * oh * 3);
        aug_resize_bicubic_u8(src.px + ((size_t)t * src.w + l) * 3, w, h, src.w * 3, 0, 0, w, h, out, ow, oh, 0, s);
        snprintf(name, sizeof name, "crop%d_out", i);
        check_u8(name, out, fx_ptr(name), (size_t)ow * oh * 3);
        // the flip folded into the horizontal pass equals a flip afterwards
        uint8_t *flipped = dino_malloc((size_t)ow * oh * 3);
        aug_resize_bicubic_u8(src.px + ((size_t)t * src.w + l) * 3, w, h, src.w * 3, 0, 0, w, h, flipped, ow, oh, 1,
                              s);
        aug_flip_h_u8(out, ow, oh);
        CHECK(!memcmp(out, flipped, (size_t)ow * oh * 3), "crop%d: folded flip differs", i);
        free(out);
        free(flipped);
    }
    augment_scratch_free(s);
    image_free(&src);
}

TEST(flips_match_torchvision) {
    Image a = src_image(), b = src_image();
    aug_flip_h_u8(a.px, a.w, a.h);
    check_u8("hflip", a.px, fx_ptr("hflip"), (size_t)a.w * a.h * 3);
    aug_flip_v_u8(b.px, b.w, b.h);
    check_u8("vflip", b.px, fx_ptr("vflip"), (size_t)b.w * b.h * 3);
    image_free(&a);
    image_free(&b);
}

typedef void (*ColorOp)(uint8_t *, int, float);

static void check_color_op(const char *op, int count, ColorOp fn) {
    for (int i = 0; i < count; i++) {
        char fname[32], oname[32];
        snprintf(fname, sizeof fname, "%s%d_f", op, i);
        snprintf(oname, sizeof oname, "%s%d_out", op, i);
        Image im = src_image();
        fn(im.px, im.w * im.h, (float)fx_f64(fname, 0));
        check_u8(oname, im.px, fx_ptr(oname), (size_t)im.w * im.h * 3);
        image_free(&im);
    }
}

TEST(color_jitter_ops_match_pil) {
    check_color_op("brightness", 4, aug_adjust_brightness_u8);
    check_color_op("contrast", 3, aug_adjust_contrast_u8);
    check_color_op("saturation", 3, aug_adjust_saturation_u8);
    check_color_op("hue", 5, aug_adjust_hue_u8);
}

TEST(grayscale_solarize_normalize_match) {
    Image im = src_image();
    size_t n = (size_t)im.w * im.h;
    aug_grayscale_u8(im.px, (int)n);
    check_u8("gray", im.px, fx_ptr("gray"), n * 3);
    image_free(&im);
    im = src_image();
    aug_solarize_u8(im.px, (int)n, 128);
    check_u8("solarize", im.px, fx_ptr("solarize"), n * 3);
    image_free(&im);
    im = src_image();
    AugmentConfig cfg;
    augment_config_default(&cfg);
    float *out = dino_malloc(sizeof(float) * n * 3);
    aug_normalize_u8(im.px, im.w, im.h, cfg.mean, cfg.std, out);
    const float *want = fx_ptr("normalize");
    double maxd = 0;
    for (size_t i = 0; i < n * 3; i++) maxd = fmax(maxd, fabs(out[i] - want[i]));
    printf("  normalize max |diff| %.3g\n", maxd);
    CHECK(maxd <= 1e-5, "normalize max diff %g", maxd);
    free(out);
    image_free(&im);
}

TEST(gaussian_blur_matches_torchvision) {
    AugmentConfig cfg;
    augment_config_default(&cfg);
    AugmentScratch *s = augment_scratch_new(&cfg);
    for (int i = 0; i < 4; i++) {
        char sname[32], oname[32];
        snprintf(sname, sizeof sname, "blur%d_sigma", i);
        snprintf(oname, sizeof oname, "blur%d_out", i);
        Image im = src_image();
        aug_gaussian_blur_u8(im.px, im.w, im.h, 9, (float)fx_f64(sname, 0), s);
        check_u8(oname, im.px, fx_ptr(oname), (size_t)im.w * im.h * 3);
        image_free(&im);
    }
    augment_scratch_free(s);
}

// The whole per-crop chain (augment_apply) against torchvision composed with the same decisions.
TEST(crop_pipeline_matches_torchvision) {
    AugmentConfig cfg;
    augment_config_default(&cfg);
    AugmentScratch *s = augment_scratch_new(&cfg);
    Image src = src_image();
    for (int i = 0; i < 2; i++) {
        char pname[32], oname[32];
        snprintf(pname, sizeof pname, "pipe%d_params", i);
        snprintf(oname, sizeof oname, "pipe%d_out", i);
        CropPlan p;
        memset(&p, 0, sizeof p);
        p.box = (CropBox){(int)fx_f64(pname, 0), (int)fx_f64(pname, 1), (int)fx_f64(pname, 2), (int)fx_f64(pname, 3)};
        p.out_size = (int)fx_f64(pname, 4);
        p.hflip = (int)fx_f64(pname, 5);
        p.jitter = 1;
        for (int k = 0; k < 4; k++) p.order[k] = (int)fx_f64(pname, 6 + k);
        p.brightness = (float)fx_f64(pname, 10);
        p.contrast = (float)fx_f64(pname, 11);
        p.saturation = (float)fx_f64(pname, 12);
        p.hue = (float)fx_f64(pname, 13);
        p.gray = (int)fx_f64(pname, 14);
        p.sigma = (float)fx_f64(pname, 15);
        p.blur = p.sigma > 0;
        p.solarize = (int)fx_f64(pname, 16);
        int S = p.out_size;
        float *out = dino_malloc(sizeof(float) * 3 * S * S);
        augment_apply(&cfg, &p, &src, out, s);
        const float *want = fx_ptr(oname);
        // one 8-bit level after normalisation is 1/(255*std) ~ 0.0175
        double maxd = 0, sum = 0;
        for (int j = 0; j < 3 * S * S; j++) {
            double d = fabs(out[j] - want[j]);
            maxd = fmax(maxd, d);
            sum += d;
        }
        printf("  %s max |diff| %.4g mean %.3g\n", oname, maxd, sum / (3 * S * S));
        CHECK(maxd <= 0.0176 && sum / (3 * S * S) < 1e-3, "%s: max %g mean %g", oname, maxd, sum / (3 * S * S));
        free(out);
    }
    image_free(&src);
    augment_scratch_free(s);
}

typedef struct { const double *u; int i, n; } FixedU;
static double fixed_next(void *ctx) {
    FixedU *f = ctx;
    DINO_ASSERT(f->i < f->n, "fixed uniforms exhausted");
    return f->u[f->i++];
}

TEST(random_resized_crop_params_match_torchvision) {
    const double ratio[2] = {3.0 / 4.0, 4.0 / 3.0};
    for (int i = 0; i < 8; i++) {
        char iname[32], uname[32], bname[32];
        snprintf(iname, sizeof iname, "rrc%d_in", i);
        snprintf(uname, sizeof uname, "rrc%d_u", i);
        snprintf(bname, sizeof bname, "rrc%d_box", i);
        double scale[2] = {fx_f64(iname, 2), fx_f64(iname, 3)};
        FixedU f = {fx_ptr(uname), 0, (int)fx(uname)->dims[0]};
        CropBox b;
        rrc_params((int)fx_f64(iname, 0), (int)fx_f64(iname, 1), scale, ratio, fixed_next, &f, &b);
        const int32_t *want = fx_ptr(bname);
        CHECK(b.top == want[0] && b.left == want[1] && b.h == want[2] && b.w == want[3],
              "rrc case %d: got (%d %d %d %d) want (%d %d %d %d)", i, b.top, b.left, b.h, b.w, want[0], want[1],
              want[2], want[3]);
    }
}

TEST(plans_are_keyed_and_follow_the_config) {
    AugmentConfig cfg;
    augment_config_default(&cfg);
    char err[DINO_ERRLEN];
    CHECK(augment_config_check(&cfg, err) == 0, "default config rejected: %s", err);
    CropPlan a[10], b[10];
    augment_plan_sample(&cfg, 42, 123456789, 256, 256, a);
    augment_plan_sample(&cfg, 42, 123456789, 256, 256, b);
    CHECK(!memcmp(a, b, sizeof a), "same key must give the same plans");
    augment_plan_sample(&cfg, 42, 123456790, 256, 256, b);
    CHECK(memcmp(a, b, sizeof a), "different samples must differ");
    // frequencies over many samples: blur 0 / 0.9 / 0.5, solarize only on global 2, jitter 0.8, gray 0.2
    int n = 4000, blur[3] = {0}, sol[3] = {0}, jit = 0, gray = 0, flip = 0;
    double area_g = 0, area_l = 0;
    for (int i = 0; i < n; i++) {
        augment_plan_sample(&cfg, 7, i, 256, 256, a);
        for (int k = 0; k < 10; k++) {
            int kind = k < 2 ? k : 2;
            blur[kind] += a[k].blur;
            sol[kind] += a[k].solarize;
            jit += a[k].jitter;
            gray += a[k].gray;
            flip += a[k].hflip;
            double area = (double)a[k].box.w * a[k].box.h / (256.0 * 256.0);
            if (k < 2) CHECK(area >= 0.31 && area <= 1.0, "global area %g", area);
            else CHECK(area >= 0.048 && area <= 0.33, "local area %g", area);
            CHECK(a[k].box.top >= 0 && a[k].box.left >= 0 && a[k].box.top + a[k].box.h <= 256 &&
                      a[k].box.left + a[k].box.w <= 256, "box outside image");
            if (k < 2) area_g += area; else area_l += area;
            if (a[k].jitter) {
                CHECK(a[k].brightness >= 0.6f && a[k].brightness <= 1.4f, "brightness %g", a[k].brightness);
                CHECK(a[k].hue >= -0.1f && a[k].hue <= 0.1f, "hue %g", a[k].hue);
            }
            if (a[k].blur) CHECK(a[k].sigma >= 0.1f && a[k].sigma <= 2.0f, "sigma %g", a[k].sigma);
            CHECK(a[k].out_size == (k < 2 ? 224 : 98), "out size");
        }
    }
    CHECK(blur[0] == 0, "global 1 must never be blurred by default");
    CHECK_CLOSE(blur[1] / (double)n, 0.9, 0.02, 0);
    CHECK_CLOSE(blur[2] / (8.0 * n), 0.5, 0.02, 0);
    CHECK(sol[0] == 0 && sol[2] == 0, "solarize only on global crop 2");
    CHECK_CLOSE(sol[1] / (double)n, 0.2, 0.02, 0);
    CHECK_CLOSE(jit / (10.0 * n), 0.8, 0.01, 0);
    CHECK_CLOSE(gray / (10.0 * n), 0.2, 0.01, 0);
    CHECK_CLOSE(flip / (10.0 * n), 0.5, 0.01, 0);
    // mean area of a scale-U[a,b] crop is (a+b)/2 before the tries that do not fit are rejected
    // (which favours small areas on a square image)
    CHECK(area_g / (2.0 * n) > 0.55 && area_g / (2.0 * n) < 0.66, "global mean area %g", area_g / (2.0 * n));
    CHECK(area_l / (8.0 * n) > 0.17 && area_l / (8.0 * n) < 0.195, "local mean area %g", area_l / (8.0 * n));
}

TEST(pathology_options) {
    AugmentConfig cfg;
    augment_config_default(&cfg);
    cfg.no_resize = 1;
    cfg.rot90 = 1;
    cfg.vflip_p = 0.5;
    cfg.hed_p = 1.0;
    CropPlan p[10];
    int rot[4] = {0}, vflip = 0;
    for (int i = 0; i < 400; i++) {
        augment_plan_sample(&cfg, 1, i, 300, 260, p);
        for (int k = 0; k < 10; k++) {
            int S = k < 2 ? 224 : 98;
            CHECK(p[k].box.w == S && p[k].box.h == S, "no_resize crop must be the target size");
            rot[p[k].rot90]++;
            vflip += p[k].vflip;
            CHECK(p[k].hed, "hed_p = 1 must always jitter");
        }
    }
    for (int k = 0; k < 4; k++) CHECK_CLOSE(rot[k] / 4000.0, 0.25, 0.03, 0);
    CHECK_CLOSE(vflip / 4000.0, 0.5, 0.03, 0);
    // a no_resize crop is a plain copy of the box
    Image src = src_image();
    AugmentScratch *s = augment_scratch_new(&cfg);
    uint8_t out[16 * 16 * 3];
    aug_resize_bicubic_u8(src.px + (3 * src.w + 5) * 3, 16, 16, src.w * 3, 0, 0, 16, 16, out, 16, 16, 0, s);
    for (int y = 0; y < 16; y++)
        CHECK(!memcmp(out + y * 48, src.px + ((3 + y) * src.w + 5) * 3, 48), "copy row %d", y);
    // quarter turns: 4 turns = identity, 1 turn moves the top-right corner to the top-left
    uint8_t r1[16 * 16 * 3], r4[16 * 16 * 3], tmp[16 * 16 * 3];
    aug_rot90_u8(out, r1, 16, 1);
    CHECK(!memcmp(r1, out + 15 * 3, 3), "rot90 corner");
    memcpy(r4, out, sizeof r4);
    for (int t = 0; t < 4; t++) {
        aug_rot90_u8(r4, tmp, 16, 1);
        memcpy(r4, tmp, sizeof tmp);
    }
    CHECK(!memcmp(r4, out, sizeof out), "four quarter turns must be the identity");
    // HED: identity jitter round-trips within 2 levels; more haematoxylin darkens and blues
    Image im = src_image();
    float one[3] = {1, 1, 1}, zero[3] = {0, 0, 0};
    aug_hed_jitter_u8(im.px, im.w * im.h, one, zero);
    int maxd = 0;
    for (int i = 0; i < im.w * im.h * 3; i++) maxd = fmax(maxd, abs(im.px[i] - src.px[i]));
    CHECK(maxd <= 2, "HED identity round trip max diff %d", maxd);
    image_free(&im);
    uint8_t pink[3] = {230, 150, 200}, base[3];
    memcpy(base, pink, 3);
    float more_h[3] = {1.5f, 1, 1}, shift_h[3] = {0.05f, 0, 0};
    aug_hed_jitter_u8(pink, 1, more_h, shift_h);
    CHECK(pink[0] < base[0] && pink[1] < base[1], "more haematoxylin must darken red and green: %d %d %d", pink[0],
          pink[1], pink[2]);
    augment_scratch_free(s);
    image_free(&src);
}

// A plain transcription of Pillow's ImagingResample (bicubic, 8 bpc) as the oracle for the optimized
// paths (fixed-length tap windows, 8-row transposed strips) over many sizes, tiny ones included.
static double ref_cubic(double x) {
    if (x < 0) x = -x;
    if (x < 1) return (1.5 * x - 2.5) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * -0.5;
    return 0;
}

static void ref_coeffs(int in, int out, int *lo, int *cnt, int32_t *kk, int ks) {
    double scale = (double)in / out, fs = scale < 1 ? 1 : scale, support = 2 * fs;
    for (int o = 0; o < out; o++) {
        double center = (o + 0.5) * scale, w[512], sum = 0;
        int a = (int)(center - support + 0.5), b = (int)(center + support + 0.5);
        if (a < 0) a = 0;
        if (b > in) b = in;
        for (int x = a; x < b; x++) sum += w[x - a] = ref_cubic((x - center + 0.5) / fs);
        for (int x = 0; x < ks; x++) {
            double v = x < b - a ? (sum != 0 ? w[x] / sum : w[x]) : 0;
            kk[o * ks + x] = (int32_t)(v < 0 ? -0.5 + v * (1 << 22) : 0.5 + v * (1 << 22));
        }
        lo[o] = a;
        cnt[o] = b - a;
    }
}

static uint8_t ref_clip(int64_t v) { return v <= 0 ? 0 : v >= (1 << 30) ? 255 : (uint8_t)(v >> 22); }

static void ref_resize(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh) {
    int ksx = (int)ceil(2 * fmax(1, (double)sw / dw)) * 2 + 1, ksy = (int)ceil(2 * fmax(1, (double)sh / dh)) * 2 + 1;
    int *lx = malloc(sizeof(int) * dw), *cx = malloc(sizeof(int) * dw), *ly = malloc(sizeof(int) * dh),
        *cy = malloc(sizeof(int) * dh);
    int32_t *kx = malloc(sizeof(int32_t) * dw * ksx), *ky = malloc(sizeof(int32_t) * dh * ksy);
    ref_coeffs(sw, dw, lx, cx, kx, ksx);
    ref_coeffs(sh, dh, ly, cy, ky, ksy);
    uint8_t *tmp = malloc((size_t)dw * sh * 3);
    for (int y = 0; y < sh; y++) // horizontal on every row (Pillow skips unused rows: same values)
        for (int x = 0; x < dw; x++)
            for (int c = 0; c < 3; c++) {
                int64_t acc = 1 << 21;
                for (int t = 0; t < cx[x]; t++) acc += (int64_t)src[(y * sw + lx[x] + t) * 3 + c] * kx[x * ksx + t];
                tmp[(y * dw + x) * 3 + c] = dw == sw ? src[(y * sw + x) * 3 + c] : ref_clip(acc);
            }
    for (int y = 0; y < dh; y++)
        for (int x = 0; x < dw; x++)
            for (int c = 0; c < 3; c++) {
                int64_t acc = 1 << 21;
                for (int t = 0; t < cy[y]; t++) acc += (int64_t)tmp[((ly[y] + t) * dw + x) * 3 + c] * ky[y * ksy + t];
                dst[(y * dw + x) * 3 + c] = dh == sh ? tmp[(y * dw + x) * 3 + c] : ref_clip(acc);
            }
    free(lx), free(cx), free(ly), free(cy), free(kx), free(ky), free(tmp);
}

TEST(resize_matches_plain_pillow_algorithm_on_many_sizes) {
    AugmentConfig cfg;
    augment_config_default(&cfg);
    AugmentScratch *s = augment_scratch_new(&cfg);
    Rng r = rng_make(3, 3, 3, 3);
    int cases = 0;
    for (int it = 0; it < 400; it++) {
        int sw = 1 + (int)rng_below(&r, it % 4 == 0 ? 8 : 120), sh = 1 + (int)rng_below(&r, it % 5 == 0 ? 8 : 120);
        int dw = 1 + (int)rng_below(&r, 130), dh = 1 + (int)rng_below(&r, 130), flip = it & 1;
        uint8_t *src = malloc((size_t)sw * sh * 3), *a = malloc((size_t)dw * dh * 3);
        uint8_t *b = malloc((size_t)dw * dh * 3);
        for (int i = 0; i < sw * sh * 3; i++) src[i] = (uint8_t)(rng_below(&r, 256) / 2 + (i % 97));
        ref_resize(src, sw, sh, a, dw, dh);
        if (flip) aug_flip_h_u8(a, dw, dh);
        aug_resize_bicubic_u8(src, sw, sh, sw * 3, 0, 0, sw, sh, b, dw, dh, flip, s);
        CHECK(!memcmp(a, b, (size_t)dw * dh * 3), "%dx%d -> %dx%d (flip %d) differs from the plain algorithm", sw, sh,
              dw, dh, flip);
        cases++;
        free(src), free(a), free(b);
    }
    CHECK(cases == 400, "cases");
    augment_scratch_free(s);
}

// Pillow's rgb2hsv_row / hsv2rgb transcribed plainly (float/double mix as in Convert.c): the oracle
// for the table-driven aug_adjust_hue_u8 over a grid of the RGB cube and several shifts.
static void ref_hue_pixel(uint8_t *p, uint8_t shift) {
    int r = p[0], g = p[1], b = p[2];
    int maxc = r > g ? (r > b ? r : b) : (g > b ? g : b), minc = r < g ? (r < b ? r : b) : (g < b ? g : b);
    int uh = 0, us = 0, v = maxc;
    if (maxc != minc) {
        float cr = (float)(maxc - minc), s = cr / (float)maxc;
        float rc = (float)(maxc - r) / cr, gc = (float)(maxc - g) / cr, bc = (float)(maxc - b) / cr, h;
        if (r == maxc) h = bc - gc;
        else if (g == maxc) h = (float)(2.0 + rc - bc);
        else h = (float)(4.0 + gc - rc);
        h = (float)fmod((h / 6.0 + 1.0), 1.0);
        uh = (int)(h * 255.0);
        us = (int)(s * 255.0);
        uh = uh < 0 ? 0 : uh > 255 ? 255 : uh;
        us = us < 0 ? 0 : us > 255 ? 255 : us;
    }
    uh = (uint8_t)(uh + shift);
    if (us == 0) {
        p[0] = p[1] = p[2] = (uint8_t)v;
        return;
    }
    int i = (int)floor((float)uh * 6.0 / 255.0);
    float f = (float)((float)uh * 6.0 / 255.0 - (float)i), fs = (float)((float)us / 255.0);
    int pp = (int)round((float)v * (1.0 - fs)), qq = (int)round((float)v * (1.0 - fs * f)),
        tt = (int)round((float)v * (1.0 - fs * (1.0 - f)));
    pp = pp < 0 ? 0 : pp > 255 ? 255 : pp;
    qq = qq < 0 ? 0 : qq > 255 ? 255 : qq;
    tt = tt < 0 ? 0 : tt > 255 ? 255 : tt;
    int out[6][3] = {{v, tt, pp}, {qq, v, pp}, {pp, v, tt}, {pp, qq, v}, {tt, pp, v}, {v, pp, qq}};
    for (int c = 0; c < 3; c++) p[c] = (uint8_t)out[i % 6][c];
}

TEST(hue_tables_match_plain_pillow_arithmetic) {
    float factors[4] = {0.1f, -0.1f, 0.0371f, -0.5f};
    int n = 0;
    uint8_t *img = malloc(86 * 86 * 86 * 3), *ref = malloc(86 * 86 * 86 * 3);
    for (int r = 0; r < 256; r += 3)
        for (int g = 0; g < 256; g += 3)
            for (int b = 0; b < 256; b += 3, n++) {
                img[3 * n] = (uint8_t)r;
                img[3 * n + 1] = (uint8_t)g;
                img[3 * n + 2] = (uint8_t)b;
            }
    for (int k = 0; k < 4; k++) {
        memcpy(ref, img, (size_t)n * 3);
        uint8_t shift = (uint8_t)(int)((double)factors[k] * 255.0);
        for (int i = 0; i < n; i++) ref_hue_pixel(ref + 3 * i, shift);
        uint8_t *got = malloc((size_t)n * 3);
        memcpy(got, img, (size_t)n * 3);
        aug_adjust_hue_u8(got, n, factors[k]);
        int bad = 0;
        for (int i = 0; i < n * 3; i++) bad += got[i] != ref[i];
        CHECK(bad == 0, "hue %g: %d of %d values differ from Pillow's arithmetic", factors[k], bad, n * 3);
        free(got);
    }
    free(img);
    free(ref);
}

// HED jitter against a float64 numpy transcription of skimage's rgb2hed / hed2rgb (C runs in float32).
TEST(hed_jitter_matches_numpy_reference) {
    for (int i = 0; i < 2; i++) {
        char pname[32], oname[32];
        snprintf(pname, sizeof pname, "hed%d_params", i);
        snprintf(oname, sizeof oname, "hed%d_out", i);
        float alpha[3], beta[3];
        for (int c = 0; c < 3; c++) {
            alpha[c] = (float)fx_f64(pname, c);
            beta[c] = (float)fx_f64(pname, 3 + c);
        }
        Image im = src_image();
        aug_hed_jitter_u8(im.px, im.w * im.h, alpha, beta);
        check_u8(oname, im.px, fx_ptr(oname), (size_t)im.w * im.h * 3);
        image_free(&im);
    }
}

// Virchow2's extended-context translation: every crop is a box of about its output size (area and
// aspect within the configured ranges, up to the rounding of the sides) lying inside the region, its
// position spread over the whole region (translation), and the plans are a function of the key only.
TEST(extended_context_crop_geometry) {
    AugmentConfig cfg;
    augment_config_default(&cfg);
    cfg.ect = 1;
    cfg.local_size = 98;
    char err[DINO_ERRLEN];
    CHECK(augment_config_check(&cfg, err) == 0, "%s", err);
    const int W = 392, H = 392, n = 300;
    CropPlan p[10], q[10];
    int min_left[2] = {W, W}, max_right[2] = {0, 0}, min_top[2] = {H, H}, max_bottom[2] = {0, 0};
    double area_lo = 1e9, area_hi = 0, ar_lo = 1e9, ar_hi = 0;
    for (int i = 0; i < n; i++) {
        augment_plan_sample(&cfg, 3, i, W, H, p);
        augment_plan_sample(&cfg, 3, i, W, H, q);
        CHECK(!memcmp(p, q, sizeof p), "sample %d: same key, different plans", i);
        for (int k = 0; k < 10; k++) {
            const CropBox *b = &p[k].box;
            int S = k < 2 ? 224 : 98, g = k < 2 ? 0 : 1;
            CHECK(p[k].out_size == S, "output size %d", p[k].out_size);
            CHECK(b->left >= 0 && b->top >= 0 && b->left + b->w <= W && b->top + b->h <= H,
                  "crop %d box (%d %d %d %d) outside the %dx%d region", k, b->left, b->top, b->w, b->h, W, H);
            // rounding each side moves area and aspect by at most half a pixel per side
            double a = (double)b->w * b->h / ((double)S * S), r = (double)b->w / b->h, tol = 1.0 / S;
            CHECK(a >= 0.9 * (1 - 2 * tol) - 1e-9 && a <= 1.1 * (1 + 2 * tol) + 1e-9, "crop %d area scale %.4f", k, a);
            CHECK(r >= 0.95 * (1 - 2 * tol) - 1e-9 && r <= 1.05 * (1 + 2 * tol) + 1e-9, "crop %d aspect %.4f", k, r);
            area_lo = fmin(area_lo, a), area_hi = fmax(area_hi, a), ar_lo = fmin(ar_lo, r), ar_hi = fmax(ar_hi, r);
            min_left[g] = b->left < min_left[g] ? b->left : min_left[g];
            min_top[g] = b->top < min_top[g] ? b->top : min_top[g];
            max_right[g] = b->left + b->w > max_right[g] ? b->left + b->w : max_right[g];
            max_bottom[g] = b->top + b->h > max_bottom[g] ? b->top + b->h : max_bottom[g];
        }
        augment_plan_sample(&cfg, 3, i + 1, W, H, q);
        CHECK(memcmp(&p[0].box, &q[0].box, sizeof(CropBox)) != 0 || memcmp(&p[2].box, &q[2].box, sizeof(CropBox)) != 0,
              "samples %d and %d got the same boxes", i, i + 1);
    }
    // the ranges are used, not just respected
    CHECK(area_lo < 0.92 && area_hi > 1.08 && ar_lo < 0.96 && ar_hi > 1.04, "area [%.3f %.3f] aspect [%.3f %.3f]",
          area_lo, area_hi, ar_lo, ar_hi);
    // translations over the whole region, for globals and locals
    for (int g = 0; g < 2; g++)
        CHECK(min_left[g] < 8 && min_top[g] < 8 && max_right[g] > W - 8 && max_bottom[g] > H - 8,
              "%s crops cover [%d, %d) x [%d, %d) of the region", g ? "local" : "global", min_left[g], max_right[g],
              min_top[g], max_bottom[g]);
    // a tile no larger than the global crop: boxes clamped to the tile, still inside
    augment_plan_sample(&cfg, 3, 7, 224, 224, p);
    for (int k = 0; k < 10; k++)
        CHECK(p[k].box.left >= 0 && p[k].box.top >= 0 && p[k].box.left + p[k].box.w <= 224 &&
                  p[k].box.top + p[k].box.h <= 224,
              "crop %d outside a 224 tile", k);
    // scale and aspect pinned to 1: ECT is an exact translated copy (the resize is the identity)
    cfg.ect_scale[0] = cfg.ect_scale[1] = 1;
    cfg.ect_ratio[0] = cfg.ect_ratio[1] = 1;
    cfg.global_size = 32, cfg.local_size = 16;
    cfg.hflip_p = cfg.jitter_p = cfg.gray_p = cfg.solarize_p = 0;
    cfg.blur_p[0] = cfg.blur_p[1] = cfg.blur_p[2] = 0;
    cfg.mean[0] = cfg.mean[1] = cfg.mean[2] = 0;
    cfg.std[0] = cfg.std[1] = cfg.std[2] = 1;
    Image src = src_image();
    augment_plan_sample(&cfg, 9, 1, src.w, src.h, p);
    AugmentScratch *s = augment_scratch_new(&cfg);
    float out[3 * 32 * 32];
    for (int k = 0; k < 10; k++) {
        const CropBox *b = &p[k].box;
        int S = p[k].out_size;
        CHECK(b->w == S && b->h == S, "pinned ECT box %dx%d for size %d", b->w, b->h, S);
        augment_apply(&cfg, &p[k], &src, out, s);
        int bad = 0;
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < S; y++)
                for (int x = 0; x < S; x++)
                    bad += fabsf(out[(c * S + y) * S + x] - src.px[((b->top + y) * src.w + b->left + x) * 3 + c] / 255.0f) > 1e-6f;
        CHECK(bad == 0, "crop %d: %d values differ from the translated copy", k, bad);
    }
    augment_scratch_free(s);
    image_free(&src);
    cfg.no_resize = 1;
    CHECK(augment_config_check(&cfg, err) == -1 && strstr(err, "exclude"), "ECT with no_resize: %s", err);
}
