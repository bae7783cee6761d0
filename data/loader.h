// The batch loader: worker threads read tiles through a callback, run the multi-crop augmentation
// and the iBOT masks, into a ring of preallocated batches.
//
// Sample order: one infinite order shared by all ranks, epoch e = a pseudo-random permutation of the
// dataset keyed by (seed, e); global position g holds tile perm_{g / n}(g % n). Rank r of `world`
// takes positions r, r + world, ...: batch b of rank r, slot s is global sample
// g = (b * B + s) * world + r. Every random draw is keyed by (seed, g) (crops) or (seed, b) (masks),
// so a batch is bit-identical whatever the number of threads, and setting the position (the next
// batch index) resumes exactly.
// A tile whose read fails is replaced by the next positions in the order (g + 1, g + 2, ...; the
// crops stay keyed by g), counted; the run fails when the failed fraction passes a limit.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "data/augment.h"
#include "data/image.h"
#include "data/masking.h"

// Reads tile `index` (0 <= index < count) into *out (allocated by the call, freed by the loader).
// Returns 0, or -1 with err naming the tile and the problem. Called from many threads at once.
// Same signature as source_read_rgb (data/source.h) with the source as ctx.
typedef int (*LoaderReadFn)(void *ctx, int64_t index, uint64_t seed, Image *out, char *err);

// Optional scaled decoding (both or neither): the tile's full size from its header, and a decode
// reduced by 1/scale (scale 2, 4 or 8; out->w = ceil(w / scale), like turbojpeg's scaling factors).
// With them the loader plans the crops first and decodes at the largest reduction that keeps every
// crop at least its output size (augment_decode_scale), e.g. 1/2 for 1024 px tiles.
typedef int (*LoaderSizeFn)(void *ctx, int64_t index, uint64_t seed, int *w, int *h, char *err);
typedef int (*LoaderReadScaledFn)(void *ctx, int64_t index, uint64_t seed, int scale, Image *out, char *err);

#define LOADER_MAX_PAIRS 8

typedef struct {
    int batch_size;              // B, images per rank per step
    int rank, world;             // this rank and the number of ranks (0, 1 for one process)
    uint64_t seed;
    int n_threads;               // worker threads; 0 = build each batch on the caller's thread
    int prefetch;                // ring of batches built ahead (>= 1)
    int patch_size;              // iBOT grid = global crop size / patch size
    double mask_probability;     // 0.5: fraction of the 2B global crops that get a mask
    double mask_ratio[2];        // 0.1, 0.5
    double max_corrupt_fraction; // fail when failed reads / reads exceeds this ...
    int64_t corrupt_min_reads;   // ... once at least this many reads were made (a few bad tiles
                                 // early on must not end a run)
    AugmentConfig aug;           // aug.global_size / local_size: size pair 0
    // High-resolution phase: batch b is made at pair loader_pair_at(seed, b, ...) of n_pairs (global, local)
    // size pairs drawn with weights pair_ratio (0 or 1 pair: aug's sizes only). The draw is keyed by the
    // batch index alone: every rank makes batch b at the same pair.
    int n_pairs;
    int pair_global[LOADER_MAX_PAIRS], pair_local[LOADER_MAX_PAIRS];
    double pair_ratio[LOADER_MAX_PAIRS];
    // Optional allocator of the batches' crop buffers (NULL: malloc), e.g. the backend's page-locked
    // host memory, so that a GPU uploads a batch straight from the loader's buffer.
    void *(*crops_alloc)(void *ctx, size_t bytes);
    void (*crops_free)(void *ctx, void *p);
    void *crops_ctx;
} LoaderConfig;

void loader_config_default(LoaderConfig *c);

typedef struct {
    int64_t index;         // batch index on this rank
    int B, n_local, G, L;  // images, local crops per image, global / local crop sizes
    int pair;              // the size pair (LoaderConfig.n_pairs) these crops were made at
    float *global_crops;   // [2][B][3][G][G], normalized, crop-major like the reference collate
    float *local_crops;    // [n_local][B][3][L][L]
    int Gg;                // Gram teacher crop size (0: no Gram crops, aug.gram_size unset)
    float *gram_crops;     // [2][B][3][Gg][Gg]: the global crops' geometry for the Gram teacher, or NULL
    int64_t *sample;       // [B] global sample index g of each image
    int64_t *tile;         // [B] tile actually read (differs from the order when one was skipped)
    MaskBatch masks;       // for the 2B global crops, crop-major
    int64_t reads, corrupt; // tile reads made for this batch and how many failed
    int64_t scaled;         // images of this batch decoded at a reduced scale
} Batch;

typedef struct {
    int64_t batches, reads, corrupt; // over the batches delivered by this Loader
    int64_t scaled;                  // images decoded at a reduced scale
} LoaderStats;

typedef struct Loader Loader;

// Returns NULL with err on a bad config. The loader starts at position 0; workers start at once.
Loader *loader_create(const LoaderConfig *c, int64_t n_tiles, LoaderReadFn read, void *ctx, char *err);
// Same, with the optional scaled decoding (max_decode_scale: 1, 2, 4 or 8).
Loader *loader_create_scaled(const LoaderConfig *c, int64_t n_tiles, LoaderReadFn read, LoaderSizeFn size,
                             LoaderReadScaledFn read_scaled, int max_decode_scale, void *ctx, char *err);
// The next batch (valid until the next loader_next / loader_set_position / loader_destroy), or NULL
// with err when the corrupt-tile limit is passed or no readable tile follows a sample.
const Batch *loader_next(Loader *l, char *err);
int64_t loader_position(const Loader *l); // index of the batch the next loader_next returns
void loader_set_position(Loader *l, int64_t next_batch);
LoaderStats loader_stats(const Loader *l);
void loader_destroy(Loader *l);

// The size pair of batch `batch_index`: one uniform draw keyed by (seed, batch_index) against the
// cumulative normalized ratios (0 for one pair).
int loader_pair_at(uint64_t seed, int64_t batch_index, int n_pairs, const double *ratios);
// The shared sample order: tile at global position g (a keyed Feistel permutation per epoch).
int64_t loader_tile_at(uint64_t seed, int64_t n_tiles, int64_t g);
