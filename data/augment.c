// DINOv2 multi-crop augmentation: random draws (plans) and the per-crop pipeline.
// The pixel ops live in data/augment_resample.c and data/augment_color.c (Pillow-exact).
#include "data/augment.h"

#include <math.h>
#include <string.h>

#include "common/check.h"
#include "data/augment_internal.h"

// Stream id of augmentation draws in rng_make(seed, AUG_STREAM, sample, crop).
#define AUG_STREAM 0x41554721ULL

void augment_config_default(AugmentConfig *c) {
    memset(c, 0, sizeof *c);
    c->global_size = 224;
    c->global_scale[0] = 0.32;
    c->global_scale[1] = 1.0;
    c->local_size = 98;
    c->local_scale[0] = 0.05;
    c->local_scale[1] = 0.32;
    c->n_local = 8;
    c->ratio[0] = 3.0 / 4.0;
    c->ratio[1] = 4.0 / 3.0;
    c->hflip_p = 0.5;
    c->jitter_p = 0.8;
    c->brightness = 0.4;
    c->contrast = 0.4;
    c->saturation = 0.2;
    c->hue = 0.1;
    c->gray_p = 0.2;
    // The reference's effective values (its GaussianBlur wrapper passes 1 - p to RandomApply).
    // Intended DINO values: {1.0, 0.1, 0.5}.
    c->blur_p[0] = 0.0;
    c->blur_p[1] = 0.9;
    c->blur_p[2] = 0.5;
    c->blur_sigma[0] = 0.1;
    c->blur_sigma[1] = 2.0;
    c->blur_kernel = 9;
    c->solarize_p = 0.2;
    c->solarize_threshold = 128;
    const float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    memcpy(c->mean, mean, sizeof mean);
    memcpy(c->std, std, sizeof std);
    c->hed_scale = 0.05;
    c->hed_shift = 0.05;
    c->ect_scale[0] = 0.9;
    c->ect_scale[1] = 1.1;
    c->ect_ratio[0] = 0.95;
    c->ect_ratio[1] = 1.05;
}

static int prob_ok(double p) { return p >= 0.0 && p <= 1.0; }

int augment_config_check(const AugmentConfig *c, char *err) {
    if (c->global_size < 8 || c->global_size > 4096) {
        dino_seterr(err, "augment: global_crops_size %d out of range [8, 4096]", c->global_size);
        return -1;
    }
    if (c->local_size < 8 || c->local_size > 4096) {
        dino_seterr(err, "augment: local_crops_size %d out of range [8, 4096]", c->local_size);
        return -1;
    }
    if (c->n_local < 0 || c->n_local > 64) {
        dino_seterr(err, "augment: local_crops_number %d out of range [0, 64]", c->n_local);
        return -1;
    }
    const double *sc[2] = {c->global_scale, c->local_scale};
    for (int i = 0; i < 2; i++)
        if (!(sc[i][0] > 0 && sc[i][0] <= sc[i][1] && sc[i][1] <= 1.0)) {
            dino_seterr(err, "augment: %s crops scale [%g, %g] must satisfy 0 < min <= max <= 1",
                        i ? "local" : "global", sc[i][0], sc[i][1]);
            return -1;
        }
    if (!(c->ratio[0] > 0 && c->ratio[0] <= c->ratio[1])) {
        dino_seterr(err, "augment: ratio [%g, %g] must satisfy 0 < min <= max", c->ratio[0], c->ratio[1]);
        return -1;
    }
    if (c->ect && c->no_resize) {
        dino_seterr(err, "augment: extended-context crops and crops without resize exclude each other");
        return -1;
    }
    if (!(c->ect_scale[0] > 0 && c->ect_scale[0] <= c->ect_scale[1] && c->ect_scale[1] <= 16)) {
        dino_seterr(err, "augment: ECT scale [%g, %g] must satisfy 0 < min <= max <= 16", c->ect_scale[0],
                    c->ect_scale[1]);
        return -1;
    }
    if (!(c->ect_ratio[0] > 0 && c->ect_ratio[0] <= c->ect_ratio[1])) {
        dino_seterr(err, "augment: ECT ratio [%g, %g] must satisfy 0 < min <= max", c->ect_ratio[0], c->ect_ratio[1]);
        return -1;
    }
    double probs[] = {c->hflip_p, c->jitter_p, c->gray_p, c->blur_p[0], c->blur_p[1], c->blur_p[2],
                      c->solarize_p, c->vflip_p, c->hed_p};
    for (size_t i = 0; i < sizeof probs / sizeof probs[0]; i++)
        if (!prob_ok(probs[i])) {
            dino_seterr(err, "augment: probability %g (field %zu) not in [0, 1]", probs[i], i);
            return -1;
        }
    if (c->brightness < 0 || c->contrast < 0 || c->saturation < 0 || c->hue < 0 || c->hue > 0.5) {
        dino_seterr(err, "augment: colour jitter strengths must be >= 0 and hue <= 0.5");
        return -1;
    }
    if (c->gram_size != 0 && (c->gram_size < 8 || c->gram_size > 4096)) {
        dino_seterr(err, "augment: gram_teacher_crops_size %d out of range [8, 4096]", c->gram_size);
        return -1;
    }
    if (c->blur_kernel < 1 || c->blur_kernel % 2 == 0 || c->blur_kernel / 2 >= c->local_size) {
        dino_seterr(err, "augment: blur kernel size %d must be odd and smaller than the crops", c->blur_kernel);
        return -1;
    }
    if (!(c->blur_sigma[0] > 0 && c->blur_sigma[0] <= c->blur_sigma[1])) {
        dino_seterr(err, "augment: blur sigma [%g, %g] must satisfy 0 < min <= max", c->blur_sigma[0],
                    c->blur_sigma[1]);
        return -1;
    }
    for (int i = 0; i < 3; i++)
        if (!(c->std[i] > 0)) {
            dino_seterr(err, "augment: std[%d] = %g must be > 0", i, (double)c->std[i]);
            return -1;
        }
    return 0;
}

double rrc_uniform_from_rng(void *rng) { return rng_uniform((Rng *)rng); }

static int round_half_even(double x) { return (int)nearbyint(x); } // Python's round()

void rrc_params(int width, int height, const double scale[2], const double ratio[2],
                double (*uniform)(void *ctx), void *ctx, CropBox *out) {
    double area = (double)height * (double)width;
    // torch.log(torch.tensor(ratio)): float32 logs, used as the uniform_ bounds
    float log_r0 = logf((float)ratio[0]), log_r1 = logf((float)ratio[1]);
    for (int attempt = 0; attempt < 10; attempt++) {
        float s = (float)(scale[0] + (scale[1] - scale[0]) * uniform(ctx));
        double target_area = area * (double)s;
        float lr = (float)((double)log_r0 + ((double)log_r1 - (double)log_r0) * uniform(ctx));
        double aspect = (double)expf(lr);
        int w = round_half_even(sqrt(target_area * aspect));
        int h = round_half_even(sqrt(target_area / aspect));
        if (0 < w && w <= width && 0 < h && h <= height) {
            int i = (int)floor(uniform(ctx) * (double)(height - h + 1));
            int j = (int)floor(uniform(ctx) * (double)(width - w + 1));
            *out = (CropBox){i, j, h, w};
            return;
        }
    }
    // central fallback
    double in_ratio = (double)width / (double)height;
    int w, h;
    if (in_ratio < ratio[0]) {
        w = width;
        h = round_half_even(w / ratio[0]);
    } else if (in_ratio > ratio[1]) {
        h = height;
        w = round_half_even(h * ratio[1]);
    } else {
        w = width;
        h = height;
    }
    *out = (CropBox){(height - h) / 2, (width - w) / 2, h, w};
}

void ect_params(const AugmentConfig *c, int size, int w, int h, Rng *rng, CropBox *out) {
    // area scale uniform, aspect log-uniform (like RandomResizedCrop, but relative to the output size)
    double s = c->ect_scale[0] + (c->ect_scale[1] - c->ect_scale[0]) * rng_uniform(rng);
    double lr0 = log(c->ect_ratio[0]), lr1 = log(c->ect_ratio[1]);
    double aspect = exp(lr0 + (lr1 - lr0) * rng_uniform(rng));
    double area = (double)size * size * s;
    int bw = (int)lround(sqrt(area * aspect)), bh = (int)lround(sqrt(area / aspect));
    bw = bw < 1 ? 1 : bw > w ? w : bw; // a tile smaller than the box: the box spans that side
    bh = bh < 1 ? 1 : bh > h ? h : bh;
    int top = (int)rng_below(rng, (uint32_t)(h - bh + 1)), left = (int)rng_below(rng, (uint32_t)(w - bw + 1));
    *out = (CropBox){top, left, bh, bw};
}

static float uniform_f32(Rng *r, double lo, double hi) { return (float)(lo + (hi - lo) * rng_uniform(r)); }

void augment_plan_crop(const AugmentConfig *c, int crop, int w, int h, Rng *rng, CropPlan *p) {
    memset(p, 0, sizeof *p);
    int is_global = crop < 2;
    int size = is_global ? c->global_size : c->local_size;
    p->out_size = size;
    if (c->ect) {
        ect_params(c, size, w, h, rng, &p->box);
    } else if (c->no_resize && w >= size && h >= size) {
        p->box = (CropBox){(int)rng_below(rng, (uint32_t)(h - size + 1)),
                           (int)rng_below(rng, (uint32_t)(w - size + 1)), size, size};
    } else {
        rrc_params(w, h, is_global ? c->global_scale : c->local_scale, c->ratio, rrc_uniform_from_rng, rng, &p->box);
    }
    p->hflip = rng_uniform(rng) < c->hflip_p;
    if (c->vflip_p > 0) p->vflip = rng_uniform(rng) < c->vflip_p;
    if (c->rot90) p->rot90 = (int)rng_below(rng, 4);
    if (c->hed_p > 0 && rng_uniform(rng) < c->hed_p) {
        p->hed = 1;
        for (int k = 0; k < 3; k++) {
            p->hed_alpha[k] = uniform_f32(rng, 1.0 - c->hed_scale, 1.0 + c->hed_scale);
            p->hed_beta[k] = uniform_f32(rng, -c->hed_shift, c->hed_shift);
        }
    }
    if (rng_uniform(rng) < c->jitter_p) {
        p->jitter = 1;
        rng_permutation(rng, p->order, 4);
        p->brightness = uniform_f32(rng, fmax(0.0, 1.0 - c->brightness), 1.0 + c->brightness);
        p->contrast = uniform_f32(rng, fmax(0.0, 1.0 - c->contrast), 1.0 + c->contrast);
        p->saturation = uniform_f32(rng, fmax(0.0, 1.0 - c->saturation), 1.0 + c->saturation);
        p->hue = uniform_f32(rng, -c->hue, c->hue);
    }
    p->gray = rng_uniform(rng) < c->gray_p;
    double blur_p = c->blur_p[crop == 0 ? 0 : crop == 1 ? 1 : 2];
    if (rng_uniform(rng) < blur_p) {
        p->blur = 1;
        p->sigma = uniform_f32(rng, c->blur_sigma[0], c->blur_sigma[1]);
    }
    if (crop == 1) p->solarize = rng_uniform(rng) < c->solarize_p;
}

void augment_plan_sample(const AugmentConfig *c, uint64_t seed, int64_t sample, int w, int h,
                         CropPlan *plans) {
    for (int k = 0; k < 2 + c->n_local; k++) {
        Rng r = rng_make(seed, AUG_STREAM, (uint64_t)sample, (uint64_t)k);
        augment_plan_crop(c, k, w, h, &r, &plans[k]);
    }
}

void augment_plan_gram(const AugmentConfig *c, const CropPlan *global, CropPlan *out) {
    *out = *global;
    out->out_size = c->gram_size;
    if (c->gram_no_distortions) out->jitter = out->gray = out->blur = out->solarize = out->hed = 0;
}

AugmentScratch *augment_scratch_new(const AugmentConfig *c) {
    AugmentScratch *s = dino_calloc(1, sizeof *s);
    if (!c) return s; // for the single ops only: their buffers grow on use
    int S = c->global_size > c->local_size ? c->global_size : c->local_size;
    if (c->gram_size > S) S = c->gram_size;
    s->crop_cap = (size_t)S * S * 3;
    s->crop = dino_malloc(s->crop_cap);
    s->crop2 = dino_malloc(s->crop_cap);
    return s;
}

void augment_scratch_free(AugmentScratch *s) {
    if (!s) return;
    free(s->crop);
    free(s->crop2);
    free(s->tmp);
    free(s->coef);
    free(s->acc);
    free(s->fbuf);
    free(s->strip);
    free(s);
}

int augment_decode_scale(const CropPlan *plans, int n, int max_scale) {
    int scale = 1;
    while (scale * 2 <= max_scale) {
        int next = scale * 2, ok = 1;
        for (int k = 0; k < n && ok; k++)
            ok = plans[k].box.w / next >= plans[k].out_size && plans[k].box.h / next >= plans[k].out_size;
        if (!ok) break;
        scale = next;
    }
    return scale;
}

static void finish_crop(const AugmentConfig *c, const CropPlan *p, float *out, AugmentScratch *s);

void augment_apply(const AugmentConfig *c, const CropPlan *p, const Image *src, float *out,
                   AugmentScratch *s) {
    const CropBox *b = &p->box;
    DINO_ASSERT(b->top >= 0 && b->left >= 0 && b->top + b->h <= src->h && b->left + b->w <= src->w,
                "augment_apply: crop box outside the %dx%d image", src->w, src->h);
    int S = p->out_size;
    const uint8_t *region = src->px + ((size_t)b->top * src->w + b->left) * 3;
    // img.crop(box).resize((S, S), BICUBIC), then the flip folded into the horizontal pass
    aug_resize_bicubic_u8(region, b->w, b->h, src->w * 3, 0, 0, b->w, b->h, s->crop, S, S, p->hflip, s);
    finish_crop(c, p, out, s);
}

void augment_apply_scaled(const AugmentConfig *c, const CropPlan *p, const Image *src, int scale, float *out,
                          AugmentScratch *s) {
    if (scale == 1) {
        augment_apply(c, p, src, out, s);
        return;
    }
    const CropBox *b = &p->box;
    double x0 = (double)b->left / scale, y0 = (double)b->top / scale;
    double x1 = fmin((double)(b->left + b->w) / scale, src->w), y1 = fmin((double)(b->top + b->h) / scale, src->h);
    DINO_ASSERT(x0 < x1 && y0 < y1, "augment_apply_scaled: crop box outside the %dx%d image", src->w, src->h);
    int S = p->out_size;
    aug_resize_bicubic_u8(src->px, src->w, src->h, src->w * 3, x0, y0, x1, y1, s->crop, S, S, p->hflip, s);
    finish_crop(c, p, out, s);
}

// Everything after the resize, on s->crop.
static void finish_crop(const AugmentConfig *c, const CropPlan *p, float *out, AugmentScratch *s) {
    int S = p->out_size, n = S * S;
    uint8_t *px = s->crop;
    if (p->vflip) aug_flip_v_u8(px, S, S);
    if (p->rot90) {
        aug_rot90_u8(px, s->crop2, S, p->rot90);
        uint8_t *t = s->crop;
        s->crop = s->crop2;
        s->crop2 = t;
        px = s->crop;
    }
    if (p->hed) aug_hed_jitter_u8(px, n, p->hed_alpha, p->hed_beta);
    if (p->jitter) {
        for (int k = 0; k < 4; k++) {
            switch (p->order[k]) {
            case 0: if (c->brightness > 0) aug_adjust_brightness_u8(px, n, p->brightness); break;
            case 1: if (c->contrast > 0) aug_adjust_contrast_u8(px, n, p->contrast); break;
            case 2: if (c->saturation > 0) aug_adjust_saturation_u8(px, n, p->saturation); break;
            case 3: if (c->hue > 0) aug_adjust_hue_u8(px, n, p->hue); break;
            }
        }
    }
    if (p->gray) aug_grayscale_u8(px, n);
    if (p->blur) aug_gaussian_blur_u8(px, S, S, c->blur_kernel, p->sigma, s);
    if (p->solarize) aug_solarize_u8(px, n, c->solarize_threshold);
    aug_normalize_u8(px, S, S, c->mean, c->std, out);
}
