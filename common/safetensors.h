// safetensors files (the Hugging Face format): 8-byte little-endian header length, a JSON header
// {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the raw little-endian data. Used for fixtures, checkpoints and exports.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef enum { ST_F32 = 0, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_U8, ST_BOOL } StDtype;

typedef struct {
    char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[8];
    size_t nbytes;
    const void *data; // points into the mapped file (reader) or caller memory (writer)
} StTensor;

typedef struct {
    StTensor *t;
    int n;
    char **meta_keys, **meta_vals; // __metadata__ (string -> string)
    int n_meta;
    void *map;      // mmap of the whole file (reader)
    size_t map_len;
} StFile;

// Reads and validates a file (header JSON, offsets inside the file, sizes matching dtype*shape).
// Returns 0, or -1 with err naming the file and the problem.
int st_open(StFile *f, const char *path, char *err);
void st_close(StFile *f);
const StTensor *st_get(const StFile *f, const char *name);
const char *st_meta(const StFile *f, const char *key);
size_t st_dtype_size(StDtype d);

// Writing: collect tensors (data not copied; must live until st_write) and metadata, then write
// atomically (path.tmp, fsync, rename). Returns 0, or -1 with err set.
typedef struct StWriter StWriter;
StWriter *st_writer_new(void);
void st_writer_add(StWriter *w, const char *name, StDtype dtype, int ndim, const int64_t *shape, const void *data);
void st_writer_meta(StWriter *w, const char *key, const char *value);
int st_writer_write(StWriter *w, const char *path, char *err);
void st_writer_free(StWriter *w);
