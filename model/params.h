// One table describes every parameter tensor of a model: its name (the reference's), shape and
// offset into one contiguous buffer. Parameters, gradients, AdamW moments and the EMA teacher all use
// the same offsets, so optimizer, EMA, all-reduce, checkpoint and export are loops over this table.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define PARAM_NAME_MAX 96
#define PARAM_ALIGN 16 // floats (64 bytes): every tensor starts on a cache line / vector boundary

typedef enum { PARAM_BACKBONE = 0, PARAM_DINO_HEAD = 1, PARAM_IBOT_HEAD = 2 } ParamGroup;

typedef struct {
    char name[PARAM_NAME_MAX]; // e.g. "backbone.blocks.0.attn.qkv.weight"
    int ndim;
    int64_t shape[4];
    size_t offset; // in floats, into the model's flat buffer
    size_t numel;
    ParamGroup group;   // submodule (gradient clipping is per submodule, as the reference)
    int layer_id;       // for layer-wise lr decay: 0 embeddings, i+1 block i, depth+1 the rest
    float lr_mult;      // filled by the optimizer setup from layer_id / names
    float wd_mult;      // 0 for biases, norms, LayerScale gammas
    int is_last_layer;  // DINO/iBOT head last layer (frozen during the first epoch)
} TensorSpec;

typedef struct {
    TensorSpec *t;
    int n, cap;
    size_t total; // floats in the flat buffer, including alignment padding
} ParamTable;

void param_table_init(ParamTable *tab);
void param_table_free(ParamTable *tab);
// Adds a tensor and returns its offset. shape has ndim entries (1..4).
size_t param_add(ParamTable *tab, const char *name, ParamGroup group, int layer_id, int ndim, const int64_t *shape);
// Finds a tensor by name; NULL when absent.
const TensorSpec *param_find(const ParamTable *tab, const char *name);
