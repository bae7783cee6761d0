#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/check.h"
#include "common/rng.h"
#include "data/shard.h"
#include "tests/harness.h"

// Record i: a payload of pseudo-random bytes whose length and content depend on i.
static size_t payload_for(int i, uint8_t *buf) {
    Rng r = rng_make(99, (uint64_t)i, 0, 0);
    size_t n = 1 + rng_below(&r, 3000);
    for (size_t k = 0; k < n; k++) buf[k] = (uint8_t)rng_u32(&r);
    return n;
}

static void write_shard(const char *path, int count) {
    char err[DINO_ERRLEN], name[32];
    unlink(path); // tests rewrite the same name
    ShardWriter *w = shard_writer_open(path, err);
    CHECK(w != NULL, "open writer: %s", err);
    uint8_t buf[4096];
    for (int i = 0; i < count; i++) {
        size_t n = payload_for(i, buf);
        snprintf(name, sizeof name, "slide-%d", i % 3);
        ShardTileMeta m = {.slide = name, .slide_len = (uint32_t)strlen(name), .x = 1000000000000LL + i, .y = -i,
                           .level = i % 4, .mpp = 0.25f * (1 + i % 3), .w = 224, .h = 200 + i};
        CHECK(shard_writer_add(w, &m, buf, n, err) == 0, "add: %s", err);
    }
    CHECK(shard_writer_count(w) == count, "writer count %lld", (long long)shard_writer_count(w));
    // nothing appears under the final name before finish
    CHECK(access(path, F_OK) != 0, "%s exists before the writer finished", path);
    CHECK(shard_writer_finish(w, err) == 0, "finish: %s", err);
}

static void flip_byte(const char *path, long offset) {
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL, "cannot open %s", path);
    fseek(f, offset, SEEK_SET);
    int c = fgetc(f);
    fseek(f, offset, SEEK_SET);
    fputc(c ^ 0x20, f);
    fclose(f);
}

TEST(shard_write_read_roundtrip) {
    const char *dir = test_tmpdir();
    char path[4200];
    snprintf(path, sizeof path, "%s/a.dtshard", dir);
    write_shard(path, 50);
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    CHECK(access(tmp, F_OK) != 0, "temporary file left behind");
    CHECK(shard_file_looks_like_shard(path), "magic not found");
    char err[DINO_ERRLEN];
    Shard *s = shard_open(path, err);
    CHECK(s != NULL, "open: %s", err);
    if (!s) return;
    CHECK(shard_count(s) == 50, "count %lld", (long long)shard_count(s));
    uint8_t buf[4096];
    for (int i = 0; i < 50; i++) {
        ShardTileMeta m;
        const uint8_t *p;
        size_t n;
        CHECK(shard_record(s, i, &m, &p, &n, err) == 0, "record %d: %s", i, err);
        size_t want = payload_for(i, buf);
        CHECK(n == want && memcmp(p, buf, n) == 0, "record %d payload differs", i);
        char name[32];
        snprintf(name, sizeof name, "slide-%d", i % 3);
        CHECK(m.slide_len == strlen(name) && memcmp(m.slide, name, m.slide_len) == 0, "record %d slide name", i);
        CHECK(m.x == 1000000000000LL + i && m.y == -i && m.level == i % 4, "record %d coordinates", i);
        CHECK(m.mpp == 0.25f * (1 + i % 3) && m.w == 224 && m.h == (uint32_t)(200 + i), "record %d mpp/size", i);
    }
    const uint8_t *p;
    size_t n;
    CHECK(shard_record(s, 50, NULL, &p, &n, err) == -1, "record past the end read");
    shard_close(s);
}

TEST(shard_empty_and_abort) {
    const char *dir = test_tmpdir();
    char path[4200], err[DINO_ERRLEN];
    snprintf(path, sizeof path, "%s/empty.dtshard", dir);
    write_shard(path, 0);
    Shard *s = shard_open(path, err);
    CHECK(s != NULL && shard_count(s) == 0, "empty shard: %s", s ? "" : err);
    shard_close(s);
    snprintf(path, sizeof path, "%s/aborted.dtshard", dir);
    ShardWriter *w = shard_writer_open(path, err);
    uint8_t x[10] = {0};
    ShardTileMeta m = {0};
    CHECK(shard_writer_add(w, &m, x, sizeof x, err) == 0, "add: %s", err);
    shard_writer_abort(w);
    CHECK(access(path, F_OK) != 0, "aborted shard exists");
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    CHECK(access(tmp, F_OK) != 0, "aborted shard left its temporary file");
}

TEST(shard_flipped_byte_detected_by_crc) {
    const char *dir = test_tmpdir();
    char path[4200], err[DINO_ERRLEN];
    snprintf(path, sizeof path, "%s/c.dtshard", dir);
    write_shard(path, 20);
    // find record 7's offset through a clean open, then damage one payload byte on disk
    Shard *s = shard_open(path, err);
    const uint8_t *p;
    size_t n;
    CHECK(shard_record(s, 7, NULL, &p, &n, err) == 0, "%s", err);
    shard_close(s);
    // record 7 starts after the header and records 0..6
    long off = SHARD_HEADER_SIZE;
    uint8_t buf[4096];
    for (int i = 0; i < 7; i++) off += SHARD_RECORD_FIXED_SIZE + (long)strlen("slide-0") + (long)payload_for(i, buf);
    flip_byte(path, off + SHARD_RECORD_FIXED_SIZE + 7 + (long)n / 2);
    s = shard_open(path, err);
    CHECK(s != NULL, "the header is intact, open must work: %s", err);
    for (int i = 0; i < 20; i++) {
        int rc = shard_record(s, i, NULL, &p, &n, err);
        if (i == 7) {
            CHECK(rc == -1, "flipped byte in record 7 not detected");
            CHECK(strstr(err, path) && strstr(err, "record 7") && strstr(err, "CRC"), "message: %s", err);
        } else CHECK(rc == 0, "record %d hurt by damage to record 7: %s", i, err);
    }
    shard_close(s);
    // metadata is covered too
    flip_byte(path, off + 9); // inside x
    s = shard_open(path, err);
    CHECK(shard_record(s, 7, NULL, &p, &n, err) == -1, "flipped metadata byte not detected");
    shard_close(s);
}

TEST(shard_bad_header_or_truncated_rejected_naming_the_file) {
    const char *dir = test_tmpdir();
    char path[4200], err[DINO_ERRLEN];
    snprintf(path, sizeof path, "%s/h.dtshard", dir);
    write_shard(path, 10);
    struct stat st;
    stat(path, &st);
    // truncated: the size check catches it
    CHECK(truncate(path, st.st_size - 5) == 0, "truncate failed");
    CHECK(shard_open(path, err) == NULL, "truncated shard opened");
    CHECK(strstr(err, path) && strstr(err, "truncated"), "message: %s", err);
    // magic
    write_shard(path, 10);
    flip_byte(path, 2);
    CHECK(shard_open(path, err) == NULL, "bad magic opened");
    CHECK(strstr(err, path) && strstr(err, "magic"), "message: %s", err);
    // a header field (record count): the header CRC catches it
    write_shard(path, 10);
    flip_byte(path, 16);
    CHECK(shard_open(path, err) == NULL, "bad count opened");
    CHECK(strstr(err, path) && strstr(err, "header"), "message: %s", err);
    // the index
    write_shard(path, 10);
    flip_byte(path, st.st_size - 3);
    CHECK(shard_open(path, err) == NULL, "bad index opened");
    CHECK(strstr(err, path) && strstr(err, "index"), "message: %s", err);
    // shorter than a header, and missing
    FILE *f = fopen(path, "wb");
    fputs("DTSHARD1", f);
    fclose(f);
    CHECK(shard_open(path, err) == NULL && strstr(err, path) && strstr(err, "header"), "short file: %s", err);
    snprintf(path, sizeof path, "%s/missing.dtshard", dir);
    CHECK(shard_open(path, err) == NULL && strstr(err, path), "missing file: %s", err);
}

TEST(shard_matches_the_documented_layout) {
    if (access("/usr/bin/python3", X_OK) != 0) test_skip("/usr/bin/python3 not found");
    const char *dir = test_tmpdir();
    char path[4200], cmd[9000], out[512] = "";
    snprintf(path, sizeof path, "%s/doc.dtshard", dir);
    write_shard(path, 5);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s 2>&1", test_src_path("tests/check_shard.py"), path);
    FILE *p = popen(cmd, "r");
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    int st = pclose(p);
    CHECK(st == 0, "the Python reader of docs/shard-format.md rejected the shard:\n%s", out);
    // record 0 of write_shard: slide-0, x = 1e12, y = 0, level 0, mpp 0.25, 224 x 200
    CHECK(strcmp(out, "5 slide-0 1000000000000 0 0 0.25 224 200\n") == 0, "python read: %s", out);
}
