// Fuzz harness: tile shards (data/shard.h, docs/shard-format.md). Input: one .dtshard file.
//
// Before reading, the harness recomputes the checksums the format carries (each record's CRC32 where its
// index entry points inside the file, then the index CRC, then the header CRC) so that the fuzzer gets past
// them to the fields behind: a random change otherwise only ever meets "checksum mismatch". Then
// shard_open and shard_record on every record. Promises checked: a record read without error lies inside the
// file where its index entry says, and its payload and slide name are those bytes.
#include <stdint.h>
#include <string.h>
#include <zlib.h>

#include "common/check.h"
#include "data/shard.h"
#include "tests/fuzz/fuzz.h"

static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static uint32_t crc(const uint8_t *p, size_t n) { return (uint32_t)crc32(crc32(0L, Z_NULL, 0), p, (uInt)n); }

// The CRCs recomputed in place (the offsets are docs/shard-format.md's).
static void fix_checksums(uint8_t *b, size_t n) {
    if (n < SHARD_HEADER_SIZE) return;
    uint64_t count = rd64(b + 16), index = rd64(b + 24);
    if (index >= SHARD_HEADER_SIZE && index <= n && count <= (n - index) / SHARD_INDEX_ENTRY_SIZE) {
        for (uint64_t i = 0; i < count; i++) {
            uint64_t off = rd64(b + index + 16 * i), len = rd64(b + index + 16 * i + 8);
            if (off >= SHARD_HEADER_SIZE && len >= SHARD_RECORD_FIXED_SIZE && off <= index && len <= index - off)
                wr32(b + off, crc(b + off + 4, len - 4));
        }
        wr32(b + 40, crc(b + index, count * SHARD_INDEX_ENTRY_SIZE));
    }
    wr32(b + 60, crc(b, 60));
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_init_process();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *b = dino_malloc(size);
    memcpy(b, data, size);
    fix_checksums(b, size);
    const char *path = fuzz_memfile(b, size);
    char err[DINO_ERRLEN] = "";
    FUZZ_CHECK(shard_file_looks_like_shard(path) == (size >= 8 && memcmp(b, SHARD_MAGIC, 8) == 0), "magic");
    Shard *s = shard_open(path, err);
    if (!s) {
        FUZZ_NOTE("shard_open: %s", err);
        FUZZ_CHECK(err[0] != 0, "error without a message");
        free(b);
        return 0;
    }
    const int64_t n = shard_count(s);
    const uint64_t index = rd64(b + 24);
    FUZZ_CHECK(n >= 0 && index + (uint64_t)n * SHARD_INDEX_ENTRY_SIZE == size, "count %lld index %llu size %zu",
               (long long)n, (unsigned long long)index, size);
    for (int64_t i = -1; i <= n; i++) { // one past each end too: an error, not a read
        ShardTileMeta m;
        const uint8_t *payload = NULL;
        size_t psize = 0;
        err[0] = 0;
        if (shard_record(s, i, &m, &payload, &psize, err) != 0) {
            FUZZ_CHECK(err[0] != 0, "record %lld: error without a message", (long long)i);
            FUZZ_NOTE("shard_record: %s", err);
            continue;
        }
        FUZZ_NOTE("shard_record %lld: %zu bytes", (long long)i, psize);
        FUZZ_CHECK(i >= 0 && i < n, "record %lld of %lld read", (long long)i, (long long)n);
        uint64_t off = rd64(b + index + 16 * (uint64_t)i), len = rd64(b + index + 16 * (uint64_t)i + 8);
        FUZZ_CHECK(off >= SHARD_HEADER_SIZE && off <= index && len <= index - off, "record %lld outside the data area",
                   (long long)i);
        FUZZ_CHECK((uint64_t)SHARD_RECORD_FIXED_SIZE + m.slide_len + psize == len, "record %lld sizes", (long long)i);
        FUZZ_CHECK(m.slide_len == rd32(b + off + 40) && psize == rd32(b + off + 4), "record %lld fields", (long long)i);
        FUZZ_CHECK(memcmp(m.slide, b + off + SHARD_RECORD_FIXED_SIZE, m.slide_len) == 0, "record %lld slide name",
                   (long long)i);
        FUZZ_CHECK(memcmp(payload, b + off + SHARD_RECORD_FIXED_SIZE + m.slide_len, psize) == 0,
                   "record %lld payload", (long long)i);
    }
    shard_close(s);
    free(b);
    return 0;
}
