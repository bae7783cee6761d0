// Checkpoints: named float tensors (safetensors) plus named scalars and strings (a small JSON), written
// atomically into <output_dir>/checkpoints/ckpt_<iteration>/, the last K kept. Resume picks the newest
// checkpoint that verifies (sizes, CRC32 of every tensor); a damaged newer one is reported and skipped.
// The format is documented in docs/checkpoint-format.md.
//
// The trainer decides the names (the parameter table's, with prefixes such as "student.", "teacher.",
// "adamw_m.", "adamw_v.", "dino_center") and what "iteration" means (by convention: iterations
// completed, i.e. the index the resumed run starts at).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/safetensors.h"
#include "model/params.h"

#define CKPT_FORMAT_VERSION 1
#define CKPT_DIR "checkpoints"

// ---- writing ----------------------------------------------------------------------------------------
typedef struct CkptWriter CkptWriter;
CkptWriter *ckpt_writer_new(void);
// Adds a float32 tensor; data is not copied and must stay valid until ckpt_save returns.
void ckpt_writer_tensor(CkptWriter *w, const char *name, int ndim, const int64_t *shape, const float *data);
// Adds every tensor of a parameter table as prefix + name (e.g. "teacher." + "backbone.norm.weight"),
// with data at flat + offset. flat is host memory in the table's layout (params, AdamW m or v, ...).
void ckpt_writer_param_table(CkptWriter *w, const char *prefix, const ParamTable *tab, const float *flat);
// Named values (copied). Keys are free-form ("loader.position", "rng.step", "config", ...). A uint64
// (an Rng state) round-trips exactly through ckpt_writer_int/ckpt_get_int by casting.
void ckpt_writer_int(CkptWriter *w, const char *key, int64_t v);
void ckpt_writer_float(CkptWriter *w, const char *key, double v);
void ckpt_writer_str(CkptWriter *w, const char *key, const char *v);
// Writes <output_dir>/checkpoints/ckpt_<iteration> (tmp dir, fsync, rename), then keeps it and the
// newest keep_last - 1 other checkpoints, deleting the rest and any leftover temporary ones. path_out
// (PATH_MAX, may be NULL) receives the checkpoint directory. Returns 0, or -1 with err set (nothing
// valid is replaced).
int ckpt_save(CkptWriter *w, const char *output_dir, int64_t iteration, int keep_last, char *path_out, char *err);
void ckpt_writer_free(CkptWriter *w);

// ---- reading ----------------------------------------------------------------------------------------
typedef enum { CKPT_INT, CKPT_FLOAT, CKPT_STR } CkptValueType;
typedef struct {
    char *key;
    CkptValueType type;
    int64_t i;
    double f;
    char *s;
} CkptValue;

typedef struct {
    char dir[4096];
    int64_t iteration;
    StFile st; // tensors, mapped
    CkptValue *values;
    int n_values;
} Ckpt;

// Opens and verifies one checkpoint directory (state.json readable and of a known version, tensor file
// size and header, every tensor F32 with a matching CRC32). Returns 0, or -1 with err naming the file
// and the problem.
int ckpt_open(Ckpt *c, const char *ckpt_dir, char *err);
void ckpt_close(Ckpt *c);
// Opens the newest valid checkpoint in output_dir. Each newer one that fails verification is reported
// on log (if not NULL) with its path and reason. Returns 1 when one was opened, 0 when the directory
// holds no checkpoint, -1 (err set) when there are checkpoints but none is valid.
int ckpt_open_latest(Ckpt *c, const char *output_dir, FILE *log, char *err);
// Iterations of the complete checkpoints in output_dir, ascending (malloc'd; caller frees). Returns count.
int ckpt_list(const char *output_dir, int64_t **iterations);

const StTensor *ckpt_tensor(const Ckpt *c, const char *name);
// Copies tensor `name` into dst after checking it exists with exactly this shape. Returns 0, or -1 with
// err naming the checkpoint, the tensor and the mismatch.
int ckpt_read_tensor(const Ckpt *c, const char *name, int ndim, const int64_t *shape, float *dst, char *err);
// Reads every tensor of tab (prefix + name) into flat + offset, checking each shape. Returns 0, or -1
// with err naming the first missing or mismatched tensor.
int ckpt_read_param_table(const Ckpt *c, const char *prefix, const ParamTable *tab, float *flat, char *err);
// Named values: 0 when present with that type, else -1 with err set.
int ckpt_get_int(const Ckpt *c, const char *key, int64_t *out, char *err);
int ckpt_get_float(const Ckpt *c, const char *key, double *out, char *err);
const char *ckpt_get_str(const Ckpt *c, const char *key); // NULL when absent

// CRC-32 (IEEE 802.3, as zlib's crc32) of n bytes, continuing from crc (start with 0).
uint32_t ckpt_crc32(uint32_t crc, const void *data, size_t n);
