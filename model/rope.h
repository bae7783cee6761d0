// DINOv3's axial rotary position embedding (dinov3/layers/rope_position_encoding.py,
// RopePositionEmbedding): no learned table; each head's q and k of patch token (y, x) are rotated by
// angles 2*pi*coord/period, the first Dh/4 frequencies on the row coordinate, the next Dh/4 on the
// column coordinate, and the Dh/2 angles tiled twice over the head dim (the rotate-half layout of
// rope_apply). Coordinates are patch centres normalised to [-1, 1]. In training the official model may
// shift, jitter and rescale them (a fresh draw in every block: the official ViT calls the embedding
// once per block). Tables are computed here on the host (double, stored as float) and applied on the
// device by the backend's rope_fwd / rope_bwd.
#pragma once
#include "common/rng.h"

typedef enum { ROPE_NORMALIZE_SEPARATE = 0, ROPE_NORMALIZE_MIN = 1, ROPE_NORMALIZE_MAX = 2 } RopeNormalize;

typedef struct {
    double base;                   // periods base^(2i/(Dh/2)), i < Dh/4; 0 when min/max period are used
    double min_period, max_period; // periods log-spaced over [min, max] (both set, base 0)
    RopeNormalize normalize;       // coordinates divided per axis by H, W (separate) or by min/max(H, W)
    double shift;                  // training: coords += U(-shift, shift) per axis; 0 = off
    double jitter;                 // training: coords *= exp(U(-log j, log j)) per axis; 0 = off
    double rescale;                // training: coords *= exp(U(-log r, log r)), one for both axes; 0 = off
} RopeConfig;

// One draw of the coordinate augmentation; rope_aug_identity() is none (the teacher, evaluation).
typedef struct {
    double shift[2], jitter[2], rescale; // per axis (rows, columns): coords = ((c + shift) * jitter) * rescale
} RopeAug;

RopeAug rope_aug_identity(void);
// Checks the parameters for a head of dim Dh (a multiple of 4). Returns 0, or -1 with err set.
int rope_config_check(const RopeConfig *c, int Dh, char *err);
// periods[Dh/4] (the official buffer rope_embed.periods)
void rope_periods(const RopeConfig *c, int Dh, double *periods);
// sin, cos [gh*gw, Dh] for a gh x gw patch grid (row-major, as the patch tokens), coordinates
// augmented by aug (NULL: none).
void rope_tables(const RopeConfig *c, int Dh, int gh, int gw, const RopeAug *aug, float *sin, float *cos);
// Draws the augmentation the configuration asks for (identity parts where it asks for none), in the
// official order of draws: shift (2), jitter (2), rescale (1).
RopeAug rope_draw_aug(const RopeConfig *c, Rng *r);
