#include "data/shard.h"

#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "common/check.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shard.c reads and writes little-endian fields by memcpy: port it for big-endian hosts"
#endif

// Header byte offsets (docs/shard-format.md).
enum {
    H_MAGIC = 0, H_VERSION = 8, H_HEADER_SIZE = 12, H_COUNT = 16, H_INDEX_OFFSET = 24, H_FILE_SIZE = 32,
    H_INDEX_CRC = 40, H_HEADER_CRC = 60
};
// Record byte offsets.
enum {
    R_CRC = 0, R_PAYLOAD_SIZE = 4, R_X = 8, R_Y = 16, R_LEVEL = 24, R_MPP = 28, R_W = 32, R_H = 36,
    R_SLIDE_LEN = 40
};

static uint32_t get_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

// zlib's crc32 takes a uInt length: feed large buffers in pieces.
static uint32_t crc32_of(const uint8_t *p, size_t n) {
    uLong c = crc32(0L, Z_NULL, 0);
    while (n > 0) {
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = crc32(c, p, k);
        p += k;
        n -= k;
    }
    return (uint32_t)c;
}

// ---- writer ---------------------------------------------------------------------------------------
struct ShardWriter {
    char *path, *tmp;
    FILE *f;
    uint64_t pos;
    uint8_t *index; // 16 bytes per record
    int64_t count, cap;
};

ShardWriter *shard_writer_open(const char *path, char *err) {
    ShardWriter *w = dino_calloc(1, sizeof *w);
    w->path = strdup(path);
    size_t n = strlen(path) + 32;
    w->tmp = dino_malloc(n);
    snprintf(w->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    w->f = fopen(w->tmp, "wb");
    if (!w->f) {
        dino_seterr(err, "%s: cannot create: %s", w->tmp, strerror(errno));
        free(w->path); free(w->tmp); free(w);
        return NULL;
    }
    uint8_t zero[SHARD_HEADER_SIZE] = {0}; // placeholder until the counts are known
    if (fwrite(zero, 1, sizeof zero, w->f) != sizeof zero) {
        dino_seterr(err, "%s: write failed: %s", w->tmp, strerror(errno));
        shard_writer_abort(w);
        return NULL;
    }
    w->pos = SHARD_HEADER_SIZE;
    return w;
}

int64_t shard_writer_count(const ShardWriter *w) { return w->count; }

int shard_writer_add(ShardWriter *w, const ShardTileMeta *m, const uint8_t *payload, size_t size, char *err) {
    if (size > UINT32_MAX || m->slide_len > 65535) {
        dino_seterr(err, "%s: record too large (payload %zu bytes, slide name %u bytes)", w->path, size,
                    m->slide_len);
        return -1;
    }
    size_t rec_size = SHARD_RECORD_FIXED_SIZE + m->slide_len + size;
    uint8_t *rec = dino_malloc(rec_size);
    memset(rec, 0, SHARD_RECORD_FIXED_SIZE);
    put_u32(rec + R_PAYLOAD_SIZE, (uint32_t)size);
    put_u64(rec + R_X, (uint64_t)m->x);
    put_u64(rec + R_Y, (uint64_t)m->y);
    put_u32(rec + R_LEVEL, (uint32_t)m->level);
    memcpy(rec + R_MPP, &m->mpp, 4);
    put_u32(rec + R_W, m->w);
    put_u32(rec + R_H, m->h);
    put_u32(rec + R_SLIDE_LEN, m->slide_len);
    if (m->slide_len) memcpy(rec + SHARD_RECORD_FIXED_SIZE, m->slide, m->slide_len);
    memcpy(rec + SHARD_RECORD_FIXED_SIZE + m->slide_len, payload, size);
    put_u32(rec + R_CRC, crc32_of(rec + 4, rec_size - 4));
    size_t wrote = fwrite(rec, 1, rec_size, w->f);
    free(rec);
    if (wrote != rec_size) {
        dino_seterr(err, "%s: write failed: %s", w->tmp, strerror(errno));
        return -1;
    }
    if (w->count == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 256;
        w->index = dino_realloc(w->index, (size_t)w->cap * SHARD_INDEX_ENTRY_SIZE);
    }
    put_u64(w->index + w->count * SHARD_INDEX_ENTRY_SIZE, w->pos);
    put_u64(w->index + w->count * SHARD_INDEX_ENTRY_SIZE + 8, rec_size);
    w->count++;
    w->pos += rec_size;
    return 0;
}

static void writer_free(ShardWriter *w) {
    free(w->index);
    free(w->path);
    free(w->tmp);
    free(w);
}

void shard_writer_abort(ShardWriter *w) {
    if (!w) return;
    if (w->f) fclose(w->f);
    unlink(w->tmp);
    writer_free(w);
}

// fsync the directory so that the rename itself survives a crash.
static void fsync_parent_dir(const char *path) {
    char *copy = strdup(path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

int shard_writer_finish(ShardWriter *w, char *err) {
    size_t index_bytes = (size_t)w->count * SHARD_INDEX_ENTRY_SIZE;
    uint8_t h[SHARD_HEADER_SIZE] = {0};
    memcpy(h + H_MAGIC, SHARD_MAGIC, 8);
    put_u32(h + H_VERSION, SHARD_VERSION);
    put_u32(h + H_HEADER_SIZE, SHARD_HEADER_SIZE);
    put_u64(h + H_COUNT, (uint64_t)w->count);
    put_u64(h + H_INDEX_OFFSET, w->pos);
    put_u64(h + H_FILE_SIZE, w->pos + index_bytes);
    put_u32(h + H_INDEX_CRC, crc32_of(w->index, index_bytes));
    put_u32(h + H_HEADER_CRC, crc32_of(h, H_HEADER_CRC));
    int ok = (index_bytes == 0 || fwrite(w->index, 1, index_bytes, w->f) == index_bytes) &&
             fseeko(w->f, 0, SEEK_SET) == 0 && fwrite(h, 1, sizeof h, w->f) == sizeof h &&
             fflush(w->f) == 0 && fsync(fileno(w->f)) == 0;
    int saved = errno;
    ok = (fclose(w->f) == 0) && ok;
    w->f = NULL;
    if (!ok) {
        dino_seterr(err, "%s: write failed: %s", w->tmp, strerror(saved ? saved : errno));
        shard_writer_abort(w);
        return -1;
    }
    if (rename(w->tmp, w->path) != 0) {
        dino_seterr(err, "%s: cannot rename %s into place: %s", w->path, w->tmp, strerror(errno));
        shard_writer_abort(w);
        return -1;
    }
    fsync_parent_dir(w->path);
    writer_free(w);
    return 0;
}

// ---- reader ---------------------------------------------------------------------------------------
struct Shard {
    char *path;
    const uint8_t *map;
    size_t size;
    int64_t count;
    const uint8_t *index;
    uint64_t index_offset;
};

int shard_file_looks_like_shard(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char magic[8];
    int ok = fread(magic, 1, 8, f) == 8 && memcmp(magic, SHARD_MAGIC, 8) == 0;
    fclose(f);
    return ok;
}

Shard *shard_open(const char *path, char *err) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        dino_seterr(err, "%s: cannot open shard: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        dino_seterr(err, "%s: cannot stat shard: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    if (size < SHARD_HEADER_SIZE) {
        dino_seterr(err, "%s: bad shard header: the file is %zu bytes, shorter than the %d-byte header", path,
                    size, SHARD_HEADER_SIZE);
        close(fd);
        return NULL;
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        dino_seterr(err, "%s: cannot mmap shard: %s", path, strerror(errno));
        return NULL;
    }
    const uint8_t *h = map;
    const char *why = NULL;
    char whybuf[256];
    uint64_t count = get_u64(h + H_COUNT), index_offset = get_u64(h + H_INDEX_OFFSET);
    if (memcmp(h + H_MAGIC, SHARD_MAGIC, 8) != 0)
        why = "bad magic (not a dinotrain tile shard)";
    else if (get_u32(h + H_HEADER_CRC) != crc32_of(h, H_HEADER_CRC))
        why = "header checksum mismatch (corrupt header)";
    else if (get_u32(h + H_VERSION) != SHARD_VERSION) {
        snprintf(whybuf, sizeof whybuf, "unsupported version %u (this build reads version %d)",
                 get_u32(h + H_VERSION), SHARD_VERSION);
        why = whybuf;
    } else if (get_u32(h + H_HEADER_SIZE) != SHARD_HEADER_SIZE)
        why = "bad header size";
    else if (get_u64(h + H_FILE_SIZE) != size) {
        snprintf(whybuf, sizeof whybuf, "header says %llu bytes but the file has %zu (truncated or appended to)",
                 (unsigned long long)get_u64(h + H_FILE_SIZE), size);
        why = whybuf;
    } else if (index_offset < SHARD_HEADER_SIZE || count > (size - index_offset) / SHARD_INDEX_ENTRY_SIZE ||
               index_offset + count * SHARD_INDEX_ENTRY_SIZE != size)
        why = "index offset/record count do not match the file size";
    else if (get_u32(h + H_INDEX_CRC) != crc32_of(h + index_offset, count * SHARD_INDEX_ENTRY_SIZE))
        why = "index checksum mismatch (corrupt index)";
    if (why) {
        dino_seterr(err, "%s: bad shard header: %s", path, why);
        munmap(map, size);
        return NULL;
    }
    madvise(map, size, MADV_RANDOM); // tiles are read in shuffled order: readahead would be wasted IO
    Shard *s = dino_calloc(1, sizeof *s);
    s->path = strdup(path);
    s->map = map;
    s->size = size;
    s->count = (int64_t)count;
    s->index_offset = index_offset;
    s->index = h + index_offset;
    return s;
}

int64_t shard_count(const Shard *s) { return s->count; }
const char *shard_path(const Shard *s) { return s->path; }

int shard_record(const Shard *s, int64_t i, ShardTileMeta *meta, const uint8_t **payload, size_t *size,
                 char *err) {
    if (i < 0 || i >= s->count) {
        dino_seterr(err, "%s: record %lld out of range (shard has %lld)", s->path, (long long)i,
                    (long long)s->count);
        return -1;
    }
    uint64_t off = get_u64(s->index + i * SHARD_INDEX_ENTRY_SIZE);
    uint64_t rsize = get_u64(s->index + i * SHARD_INDEX_ENTRY_SIZE + 8);
    if (off < SHARD_HEADER_SIZE || rsize < SHARD_RECORD_FIXED_SIZE || off > s->index_offset ||
        rsize > s->index_offset - off) {
        dino_seterr(err, "%s: record %lld: index entry points outside the data area", s->path, (long long)i);
        return -1;
    }
    const uint8_t *r = s->map + off;
    if (get_u32(r + R_CRC) != crc32_of(r + 4, rsize - 4)) {
        dino_seterr(err, "%s: record %lld: CRC32 mismatch (corrupt data)", s->path, (long long)i);
        return -1;
    }
    uint32_t psize = get_u32(r + R_PAYLOAD_SIZE), slen = get_u32(r + R_SLIDE_LEN);
    if ((uint64_t)SHARD_RECORD_FIXED_SIZE + slen + psize != rsize) {
        dino_seterr(err, "%s: record %lld: sizes inside the record do not add up", s->path, (long long)i);
        return -1;
    }
    if (meta) {
        meta->x = (int64_t)get_u64(r + R_X);
        meta->y = (int64_t)get_u64(r + R_Y);
        meta->level = (int32_t)get_u32(r + R_LEVEL);
        memcpy(&meta->mpp, r + R_MPP, 4);
        meta->w = get_u32(r + R_W);
        meta->h = get_u32(r + R_H);
        meta->slide_len = slen;
        meta->slide = (const char *)r + SHARD_RECORD_FIXED_SIZE;
    }
    *payload = r + SHARD_RECORD_FIXED_SIZE + slen;
    *size = psize;
    return 0;
}

void shard_close(Shard *s) {
    if (!s) return;
    munmap((void *)s->map, s->size);
    free(s->path);
    free(s);
}
