// Test helpers: synthetic tissue-like tiles (data/synth.h) written as JPEG files; crafted bad files (a huge
// image's header in a few bytes) and peak-memory readings for the decoder hardening tests.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <zlib.h>

#include "common/check.h"
#include "data/decode.h"
#include "data/synth.h"
#include "tests/harness.h"

// Writes tile `index` of generator `seed` (class index % n_classes) as a size x size JPEG at path.
static inline void write_synth_jpeg(const char *path, uint64_t seed, int64_t index, int n_classes, int size) {
    Image im;
    synth_tile(seed, index, n_classes, size, &im);
    uint8_t *jpg;
    size_t len;
    char err[DINO_ERRLEN];
    CHECK(encode_jpeg(&im, 90, &jpg, &len, err) == 0, "%s", err);
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(jpg, 1, len, f) == len, "cannot write %s", path);
    if (f) fclose(f);
    free(jpg);
    image_free(&im);
}

// ---- crafted bad files (decoder hardening, docs/status.md) --------------------------------------------

static inline void put_le16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }
static inline void put_le32(uint8_t *p, uint32_t v) { put_le16(p, v & 0xFFFF), put_le16(p + 2, v >> 16); }

// A TIFF written byte by byte whose header declares w x h (8-bit grey, PackBits, one strip: the rest of
// the file from offset 122) in `total` (>= 122) bytes: a huge image's header in a few hundred bytes. The
// decoder before the pixel budget allocated w x h x 4 bytes for it and filled them (483 bytes declaring
// 8204 x 65288: 2.7 GB and 14 s). Returns the size written into buf (total).
static inline size_t craft_tiff_header(uint8_t *buf, size_t total, uint32_t w, uint32_t h) {
    memset(buf, 0, total);
    memcpy(buf, "II*\0", 4);
    put_le32(buf + 4, 8); // the first directory
    const uint16_t n = 9;
    put_le16(buf + 8, n);
    const struct { uint16_t tag, type; uint32_t value; } e[9] = {
        {256, 4, w}, {257, 4, h}, {258, 3, 8}, {259, 3, 32773}, {262, 3, 1}, // size, 8 bits, PackBits, grey
        {273, 4, 122}, {277, 3, 1}, {278, 4, h}, {279, 4, (uint32_t)total - 122}}; // one strip of h rows
    for (int i = 0; i < n; i++) {
        uint8_t *p = buf + 10 + 12 * i;
        put_le16(p, e[i].tag);
        put_le16(p + 2, e[i].type);
        put_le32(p + 4, 1);
        if (e[i].type == 3) put_le16(p + 8, e[i].value);
        else put_le32(p + 8, e[i].value);
    }
    put_le32(buf + 10 + 12 * n, 0); // no next directory; the strip's bytes (a ramp) from 122 on
    for (size_t i = 122; i < total; i++) buf[i] = (uint8_t)i;
    return total;
}

// A real w x h JPEG (synthetic tile) whose frame header is patched to declare fake_w x fake_h.
static inline uint8_t *craft_jpeg_declaring(uint32_t fake_w, uint32_t fake_h, size_t *n) {
    Image im;
    synth_tile(5, 0, 4, 64, &im);
    uint8_t *jpg;
    char err[DINO_ERRLEN];
    CHECK(encode_jpeg(&im, 90, &jpg, n, err) == 0, "%s", err);
    image_free(&im);
    for (size_t i = 2; i + 9 < *n; i++)
        if (jpg[i] == 0xFF && jpg[i + 1] == 0xC0) { // SOF0: FF C0 len(2) precision(1) height(2) width(2)
            jpg[i + 5] = (uint8_t)(fake_h >> 8), jpg[i + 6] = (uint8_t)fake_h;
            jpg[i + 7] = (uint8_t)(fake_w >> 8), jpg[i + 8] = (uint8_t)fake_w;
            return jpg;
        }
    CHECK(0, "no SOF0 marker in the encoded JPEG");
    return jpg;
}

// A PNG signature and an IHDR chunk declaring w x h (8-bit RGB), then a small IDAT and IEND: 65 bytes.
static inline size_t craft_png_header(uint8_t *buf, uint32_t w, uint32_t h) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    size_t k = 0;
    memcpy(buf, sig, 8), k = 8;
    uint8_t ihdr[13] = {0};
    for (int i = 0; i < 4; i++) ihdr[i] = (uint8_t)(w >> (24 - 8 * i)), ihdr[4 + i] = (uint8_t)(h >> (24 - 8 * i));
    ihdr[8] = 8, ihdr[9] = 2; // 8-bit RGB, deflate, no filter, no interlace
    const uint8_t idat[8] = {0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x01}; // a few deflated zeros
    const struct { const char *type; const uint8_t *data; uint32_t len; } chunks[3] = {
        {"IHDR", ihdr, 13}, {"IDAT", idat, 8}, {"IEND", NULL, 0}};
    for (int c = 0; c < 3; c++) {
        for (int i = 0; i < 4; i++) buf[k + i] = (uint8_t)(chunks[c].len >> (24 - 8 * i));
        memcpy(buf + k + 4, chunks[c].type, 4);
        if (chunks[c].len) memcpy(buf + k + 8, chunks[c].data, chunks[c].len);
        uint32_t crc = (uint32_t)crc32(0, buf + k + 4, 4 + chunks[c].len);
        k += 8 + chunks[c].len;
        for (int i = 0; i < 4; i++) buf[k + i] = (uint8_t)(crc >> (24 - 8 * i));
        k += 4;
    }
    return k;
}

// Peak resident memory of this process in bytes (VmHWM), and a reset of that peak to the current
// resident size where the kernel allows it (/proc/self/clear_refs, 5); returns the resident size then.
static inline int64_t proc_status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    int64_t v = -1;
    size_t k = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, k) && line[k] == ':') v = strtoll(line + k + 1, NULL, 10);
    fclose(f);
    return v;
}
static inline int64_t peak_rss_bytes(void) { return proc_status_kb("VmHWM") * 1024; }
static inline int64_t reset_peak_rss(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
    return proc_status_kb("VmRSS") * 1024;
}

// Peak-memory bounds are meaningless under AddressSanitizer (redzones, quarantine, shadow memory): the
// sanitized variants of the tests (san.*) decode the same inputs but skip those checks.
#if defined(__SANITIZE_ADDRESS__)
#define MEMORY_BOUNDS_CHECKED 0
#else
#define MEMORY_BOUNDS_CHECKED 1
#endif

// Caps this process's address space at its present size + extra_bytes, so that a regression allocating a
// huge image fails that allocation (dino_malloc aborts: the case fails) instead of filling the machine's
// memory. Not under AddressSanitizer, whose shadow memory needs the address space. Returns the limit to
// restore with memory_guard_end.
static inline struct rlimit memory_guard_begin(int64_t extra_bytes) {
    struct rlimit old;
    getrlimit(RLIMIT_AS, &old);
#if !defined(__SANITIZE_ADDRESS__)
    struct rlimit lim = old;
    rlim_t want = (rlim_t)(proc_status_kb("VmSize") * 1024 + extra_bytes);
    if (old.rlim_cur == RLIM_INFINITY || want < old.rlim_cur) lim.rlim_cur = want;
    setrlimit(RLIMIT_AS, &lim);
#endif
    return old;
}
static inline void memory_guard_end(struct rlimit old) { setrlimit(RLIMIT_AS, &old); }
