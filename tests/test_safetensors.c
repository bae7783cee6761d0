// safetensors reader/writer: round trip, rejection of damaged files with a message, and interop with
// an independent Python reader/writer (tests/st_oracle.py).
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/check.h"
#include "common/safetensors.h"
#include "tests/harness.h"

// ---- the interop pattern (identical to st_oracle.py's) ------------------------------------------------
static float pa[15];
static int32_t pb[4] = {-2, 0, 7, 2147483647};
static uint8_t pc[6];
static double pd[2] = {1.0 / 3.0, -1e300};
static int64_t pe[3] = {-(INT64_C(1) << 40), 5, INT64_C(1) << 62};
static float pscalar = 2.5f;
static const char *meta_k2 = "quote\"back\\slash", *meta_v2 = "line\nnext \xc3\xa9\xe2\x82\xac";

static StWriter *pattern_writer(void) {
    for (int i = 0; i < 15; i++) pa[i] = i * 0.5f - 3.0f;
    for (int i = 0; i < 6; i++) pc[i] = (uint8_t)(i * 40);
    StWriter *w = st_writer_new();
    // added in an order different from the file's layout on purpose
    st_writer_add(w, "c.u8", ST_U8, 2, (int64_t[]){2, 3}, pc);
    st_writer_add(w, "a.f32", ST_F32, 2, (int64_t[]){3, 5}, pa);
    st_writer_add(w, "b.i32", ST_I32, 1, (int64_t[]){4}, pb);
    st_writer_add(w, "d.f64", ST_F64, 1, (int64_t[]){2}, pd);
    st_writer_add(w, "e.i64", ST_I64, 1, (int64_t[]){3}, pe);
    st_writer_add(w, "scalar", ST_F32, 0, NULL, &pscalar);
    st_writer_meta(w, "dim", "32");
    st_writer_meta(w, meta_k2, meta_v2);
    return w;
}

static void check_tensor(const StFile *f, const char *name, StDtype dt, int ndim, const int64_t *shape,
                         const void *data, size_t nbytes) {
    const StTensor *t = st_get(f, name);
    CHECK(t != NULL, "tensor %s missing", name);
    if (!t) return;
    CHECK(t->dtype == dt, "%s: dtype %d, expected %d", name, (int)t->dtype, (int)dt);
    CHECK(t->ndim == ndim, "%s: ndim %d, expected %d", name, t->ndim, ndim);
    for (int d = 0; d < ndim && d < t->ndim; d++) CHECK(t->shape[d] == shape[d], "%s: shape[%d]", name, d);
    CHECK(t->nbytes == nbytes, "%s: nbytes %zu, expected %zu", name, t->nbytes, nbytes);
    CHECK(t->nbytes == nbytes && memcmp(t->data, data, nbytes) == 0, "%s: data differs", name);
    CHECK((uintptr_t)t->data % st_dtype_size(dt) == 0, "%s: data not aligned to its element size", name);
}

static void check_pattern(const StFile *f) {
    CHECK(f->n == 6, "expected 6 tensors, got %d", f->n);
    check_tensor(f, "a.f32", ST_F32, 2, (int64_t[]){3, 5}, pa, sizeof pa);
    check_tensor(f, "b.i32", ST_I32, 1, (int64_t[]){4}, pb, sizeof pb);
    check_tensor(f, "c.u8", ST_U8, 2, (int64_t[]){2, 3}, pc, sizeof pc);
    check_tensor(f, "d.f64", ST_F64, 1, (int64_t[]){2}, pd, sizeof pd);
    check_tensor(f, "e.i64", ST_I64, 1, (int64_t[]){3}, pe, sizeof pe);
    check_tensor(f, "scalar", ST_F32, 0, NULL, &pscalar, sizeof pscalar);
    CHECK(f->n_meta == 2, "expected 2 metadata entries, got %d", f->n_meta);
    CHECK(st_meta(f, "dim") && strcmp(st_meta(f, "dim"), "32") == 0, "metadata dim");
    CHECK(st_meta(f, meta_k2) && strcmp(st_meta(f, meta_k2), meta_v2) == 0, "escaped metadata: got '%s'",
          st_meta(f, meta_k2) ? st_meta(f, meta_k2) : "(null)");
    CHECK(st_get(f, "nope") == NULL && st_meta(f, "nope") == NULL, "absent names must give NULL");
}

static const char *path_in(const char *dir, const char *name) {
    static char buf[4][4096];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, 4096, "%s/%s", dir, name);
    return p;
}

TEST(round_trip_all_dtypes_and_metadata) {
    const char *dir = test_tmpdir();
    const char *path = path_in(dir, "rt.safetensors");
    StWriter *w = pattern_writer();
    char err[DINO_ERRLEN] = "";
    CHECK(st_writer_write(w, path, err) == 0, "write failed: %s", err);
    st_writer_free(w);
    CHECK(access(path_in(dir, "rt.safetensors.tmp"), F_OK) != 0, "temporary file left behind");
    StFile f;
    CHECK(st_open(&f, path, err) == 0, "open failed: %s", err);
    uint64_t hlen;
    memcpy(&hlen, f.map, 8);
    CHECK(hlen % 8 == 0, "header length %llu not padded to 8", (unsigned long long)hlen);
    check_pattern(&f);
    st_close(&f);
}

TEST(writer_replaces_existing_file_and_reports_bad_directory) {
    const char *dir = test_tmpdir();
    const char *path = path_in(dir, "x.safetensors");
    char err[DINO_ERRLEN] = "";
    float one = 1, two = 2;
    StWriter *w = st_writer_new();
    st_writer_add(w, "v", ST_F32, 1, (int64_t[]){1}, &one);
    CHECK(st_writer_write(w, path, err) == 0, "%s", err);
    st_writer_free(w);
    w = st_writer_new();
    st_writer_add(w, "v", ST_F32, 1, (int64_t[]){1}, &two);
    CHECK(st_writer_write(w, path, err) == 0, "%s", err);
    StFile f;
    CHECK(st_open(&f, path, err) == 0, "%s", err);
    CHECK(*(const float *)st_get(&f, "v")->data == 2.0f, "second write did not replace the first");
    st_close(&f);
    err[0] = 0;
    CHECK(st_writer_write(w, "/nonexistent_dir_dino/x.safetensors", err) != 0, "write into a missing dir");
    CHECK(strstr(err, "/nonexistent_dir_dino/x.safetensors") != NULL, "error must name the file: %s", err);
    st_writer_free(w);
}

// Writes 8-byte length + header text + n data bytes (the length field may lie when hlen_override >= 0).
static void write_raw(const char *path, const char *header, long long hlen_override, size_t ndata) {
    FILE *fp = fopen(path, "wb");
    CHECK(fp != NULL, "cannot create %s", path);
    if (!fp) return;
    uint64_t n = hlen_override >= 0 ? (uint64_t)hlen_override : strlen(header);
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(n >> (8 * i));
    fwrite(len, 1, 8, fp);
    fwrite(header, 1, strlen(header), fp);
    for (size_t i = 0; i < ndata; i++) fputc((int)(i & 0xff), fp);
    fclose(fp);
}

// st_open must fail and the message must name the file and contain `want`.
static void expect_reject(const char *path, const char *want) {
    StFile f;
    char err[DINO_ERRLEN] = "";
    int rc = st_open(&f, path, err);
    CHECK(rc != 0, "%s: accepted a bad file (expected: %s)", path, want);
    if (rc == 0) { st_close(&f); return; }
    CHECK(strstr(err, path) != NULL, "message does not name the file: %s", err);
    CHECK(strstr(err, want) != NULL, "message '%s' does not mention '%s'", err, want);
    CHECK(f.map == NULL && f.t == NULL, "st_open left state behind on failure");
}

TEST(rejects_truncated_file) {
    const char *dir = test_tmpdir();
    const char *path = path_in(dir, "t.safetensors");
    StWriter *w = pattern_writer();
    char err[DINO_ERRLEN];
    CHECK(st_writer_write(w, path, err) == 0, "%s", err);
    st_writer_free(w);
    struct stat st;
    CHECK(stat(path, &st) == 0, "stat");
    CHECK(truncate(path, st.st_size - 3) == 0, "truncate");
    expect_reject(path, "outside the data section");
    CHECK(truncate(path, 40) == 0, "truncate");
    expect_reject(path, "does not fit");
    CHECK(truncate(path, 5) == 0, "truncate");
    expect_reject(path, "not a safetensors file");
    expect_reject(path_in(dir, "missing.safetensors"), "cannot open");
}

TEST(rejects_bad_headers) {
    const char *dir = test_tmpdir();
    const char *p = path_in(dir, "bad.safetensors");
    struct { const char *header; size_t ndata; const char *want; } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "ends early"},
        {"[1,2]", 0, "must start with '{'"},
        {"{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unsupported dtype 'F33'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "needs 12"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "outside the data section"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "outside the data section"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "non-negative integer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "lacks data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "overlap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "belong to no tensor"},
        {"{\"__metadata__\":{\"k\":3}}", 0, "not a string"},
        // the layout rules of the format: the tensors tile the data section from 0 to the end of the file
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "[0, 4) belong to no tensor"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 6, "2 data bytes after the last"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, "[4, 8) belong to no tensor"},
        // JSON the format does not allow: numbers that are not integers, non-strict JSON, bad UTF-8
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4, "not a non-negative integer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,-1]}}", 4, "not two non-negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],}}", 4, "bad JSON at byte"},
        {"{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "bad JSON at byte"},
        {"{\"a\":7}", 0, "is an integer, not an object"},
        {"{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unsupported dtype '7'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4, "bad JSON at byte"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.5]}}", 4, "not two non-negative integers"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "more than 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999,99999999999,99999999999],\"data_offsets\":[0,4]}}",
         4, "too large"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]", 4, "ends early"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":\"unterminated}}", 4,
         "ends early"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_raw(p, cases[i].header, -1, cases[i].ndata);
        expect_reject(p, cases[i].want);
    }
    // a header length that claims more bytes than the file has
    write_raw(p, "{}", 1000, 0);
    expect_reject(p, "does not fit");
    // the format's header size limit (100,000,000 bytes): a sparse file long enough to hold the header
    write_raw(p, "{}", 100000001, 0);
    CHECK(truncate(p, 8 + 100000001 + 8) == 0, "truncate");
    expect_reject(p, "more than the format allows (100000000)");
    // a name given twice for the same bytes leaves nothing unowned: read as one tensor, the last entry
    // (the reference reader, serde_json, does the same)
    write_raw(p, "{\"a\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4);
    StFile d;
    char derr[DINO_ERRLEN] = "";
    CHECK(st_open(&d, p, derr) == 0 && d.n == 1 && d.t[0].dtype == ST_F32, "same-bytes duplicate: %s", derr);
    if (d.map) st_close(&d);
    // unknown keys are skipped, escapes decoded, empty and zero-size tensors allowed
    write_raw(p, "{\"__metadata__\":{\"k\\u00e9\\ud83d\\ude00\":\"v\\t\"},\"z\":{\"dtype\":\"U8\",\"shape\":[0],"
              "\"data_offsets\":[0,0],\"extra\":[1,{\"q\":null},true,-1.5e3]},"
              "\"a\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[0,1]}}   ", -1, 1);
    StFile f;
    char err[DINO_ERRLEN] = "";
    CHECK(st_open(&f, p, err) == 0, "valid file refused: %s", err);
    if (f.map) {
        CHECK(f.n == 2 && st_get(&f, "z")->nbytes == 0 && st_get(&f, "a")->nbytes == 1, "tensors");
        const char *v = st_meta(&f, "k\xc3\xa9\xf0\x9f\x98\x80");
        CHECK(v && strcmp(v, "v\t") == 0, "unicode escapes in metadata key not decoded");
        st_close(&f);
    }
}

// data_offsets that is not a list: an error naming it. Before: json-c's assertion in
// json_object_array_get_idx aborted the process (found by fuzz.checkpoint in a checkpoint's tensor file;
// tests/fuzz/regressions/safetensors/data_offsets_not_a_list.safetensors).
TEST(data_offsets_of_another_kind_is_an_error_not_an_abort) {
    const char *dir = test_tmpdir();
    const char *p = path_in(dir, "off.safetensors");
    static const char *kinds[] = {"5", "\"0,4\"", "{\"0\":4}", "null", "true", "[[0,4]]", "[0]"};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        char header[256];
        snprintf(header, sizeof header, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":%s}}", kinds[i]);
        write_raw(p, header, -1, 4);
        expect_reject(p, "data_offsets");
    }
}

// Runs the Python oracle; skips when /usr/bin/python3 or numpy is missing.
static int run_oracle(const char *mode, const char *path) {
    if (access("/usr/bin/python3", X_OK) != 0) test_skip("/usr/bin/python3 not found");
    if (system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0) test_skip("numpy not importable");
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' %s '%s'", test_src_path("tests/st_oracle.py"), mode, path);
    return system(cmd);
}

TEST(python_reads_c_written_file) {
    const char *path = path_in(test_tmpdir(), "c.safetensors");
    StWriter *w = pattern_writer();
    char err[DINO_ERRLEN];
    CHECK(st_writer_write(w, path, err) == 0, "%s", err);
    st_writer_free(w);
    CHECK(run_oracle("check", path) == 0, "the Python oracle rejected the C-written file");
}

TEST(c_reads_python_written_file) {
    const char *path = path_in(test_tmpdir(), "py.safetensors");
    st_writer_free(pattern_writer()); // fills the expected arrays
    CHECK(run_oracle("write", path) == 0, "the Python oracle failed to write");
    StFile f;
    char err[DINO_ERRLEN] = "";
    CHECK(st_open(&f, path, err) == 0, "open failed: %s", err);
    if (f.map) {
        check_pattern(&f);
        st_close(&f);
    }
}
