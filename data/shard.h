// Packed tile shards (*.dtshard): many JPEG tiles with their provenance in one file, read through mmap.
// The byte layout is specified in docs/shard-format.md.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define SHARD_MAGIC "DTSHARD1"
#define SHARD_VERSION 1
#define SHARD_HEADER_SIZE 64
#define SHARD_INDEX_ENTRY_SIZE 16
#define SHARD_RECORD_FIXED_SIZE 48

// Where a tile came from. `slide` need not be NUL-terminated when read back: use slide_len.
typedef struct {
    const char *slide; // source slide id or name (UTF-8), may be empty
    uint32_t slide_len;
    int64_t x, y;      // top-left corner in level-0 pixels of the source slide
    int32_t level;     // pyramid level the pixels were read from
    float mpp;         // microns per pixel of the stored tile (0 = unknown)
    uint32_t w, h;     // tile size in pixels
} ShardTileMeta;

// ---- writing: records are appended, then the index and header; the file appears atomically ----------
typedef struct ShardWriter ShardWriter;
// Writes to "<path>.tmp.<pid>" and renames it to `path` at shard_writer_finish.
ShardWriter *shard_writer_open(const char *path, char *err);
int shard_writer_add(ShardWriter *w, const ShardTileMeta *meta, const uint8_t *payload, size_t size, char *err);
int64_t shard_writer_count(const ShardWriter *w);
// Writes index and header, fsyncs, renames into place and frees w. Returns 0 or -1 (tmp removed).
int shard_writer_finish(ShardWriter *w, char *err);
// Drops the unfinished shard (removes the tmp file) and frees w.
void shard_writer_abort(ShardWriter *w);

// ---- reading ----------------------------------------------------------------------------------------
typedef struct Shard Shard;
// Maps the file and validates the header against the file size. err names the file and the problem.
Shard *shard_open(const char *path, char *err);
int64_t shard_count(const Shard *s);
const char *shard_path(const Shard *s);
// Record i: checks its bounds and CRC32, then points *payload into the mapping (valid until
// shard_close). Returns -1 with err naming the shard and the record index when the record is corrupt.
int shard_record(const Shard *s, int64_t i, ShardTileMeta *meta, const uint8_t **payload, size_t *size,
                 char *err);
void shard_close(Shard *s);
// True when the file starts with the shard magic.
int shard_file_looks_like_shard(const char *path);
