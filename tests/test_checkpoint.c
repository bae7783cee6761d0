#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/check.h"
#include "common/rng.h"
#include "tests/harness.h"
#include "train/checkpoint.h"

// A small "model state": two parameter tensors, their AdamW moments, a centre; filled from a seed so
// each iteration's checkpoint has distinct contents.
typedef struct {
    float w[6 * 5], b[5], m[6 * 5], v[6 * 5], center[7];
} State;

static void fill(State *s, uint64_t seed) {
    Rng r = rng_make(seed, 11, 0, 0);
    float *all = (float *)s;
    for (size_t i = 0; i < sizeof *s / sizeof(float); i++) all[i] = (float)rng_normal(&r);
}

static int save(const char *out, const State *s, int64_t it, int keep, char *err) {
    static const int64_t sw[2] = {6, 5}, sb[1] = {5}, sc[2] = {1, 7};
    CkptWriter *w = ckpt_writer_new();
    ckpt_writer_tensor(w, "student.backbone.blocks.0.mlp.fc1.weight", 2, sw, s->w);
    ckpt_writer_tensor(w, "student.backbone.blocks.0.mlp.fc1.bias", 1, sb, s->b);
    ckpt_writer_tensor(w, "adamw_m.backbone.blocks.0.mlp.fc1.weight", 2, sw, s->m);
    ckpt_writer_tensor(w, "adamw_v.backbone.blocks.0.mlp.fc1.weight", 2, sw, s->v);
    ckpt_writer_tensor(w, "dino_loss.center", 2, sc, s->center);
    ckpt_writer_int(w, "loader.position", it * 64);
    ckpt_writer_int(w, "rng.big", INT64_MAX - 3);
    ckpt_writer_int(w, "rng.low", INT64_MIN + 5);
    ckpt_writer_int(w, "loader.corrupt", -0);
    ckpt_writer_float(w, "loss.last", 0.1 + (double)it);
    ckpt_writer_float(w, "tiny", 4.9e-324);
    ckpt_writer_float(w, "not_a_number", NAN);
    ckpt_writer_float(w, "minus_inf", -INFINITY);
    ckpt_writer_float(w, "minus_zero", -0.0);
    ckpt_writer_float(w, "whole", 3.0);
    ckpt_writer_str(w, "config", "student:\n  arch: \"vit_small\"\n  note: tab\there \\ back\x01 \xc3\xa9t\xc3\xa9\n");
    int rc = ckpt_save(w, out, it, keep, NULL, err);
    ckpt_writer_free(w);
    return rc;
}

static void check_state(const Ckpt *c, const State *want, int64_t it) {
    State got;
    char err[DINO_ERRLEN];
    memset(&got, 0xAB, sizeof got);
    const int64_t sw[2] = {6, 5}, sb[1] = {5}, sc[2] = {1, 7};
    CHECK(ckpt_read_tensor(c, "student.backbone.blocks.0.mlp.fc1.weight", 2, sw, got.w, err) == 0, "%s", err);
    CHECK(ckpt_read_tensor(c, "student.backbone.blocks.0.mlp.fc1.bias", 1, sb, got.b, err) == 0, "%s", err);
    CHECK(ckpt_read_tensor(c, "adamw_m.backbone.blocks.0.mlp.fc1.weight", 2, sw, got.m, err) == 0, "%s", err);
    CHECK(ckpt_read_tensor(c, "adamw_v.backbone.blocks.0.mlp.fc1.weight", 2, sw, got.v, err) == 0, "%s", err);
    CHECK(ckpt_read_tensor(c, "dino_loss.center", 2, sc, got.center, err) == 0, "%s", err);
    CHECK(memcmp(&got, want, sizeof got) == 0, "tensors differ after the round trip (iteration %lld)", (long long)it);
    CHECK(c->iteration == it, "iteration %lld, want %lld", (long long)c->iteration, (long long)it);
    int64_t pos = -1, big = 0;
    CHECK(ckpt_get_int(c, "loader.position", &pos, err) == 0 && pos == it * 64, "loader.position %lld", (long long)pos);
    CHECK(ckpt_get_int(c, "rng.big", &big, err) == 0 && big == INT64_MAX - 3, "int64 exact");
    CHECK(ckpt_get_int(c, "rng.low", &big, err) == 0 && big == INT64_MIN + 5, "negative int64 exact");
    double f = 0;
    CHECK(ckpt_get_float(c, "loss.last", &f, err) == 0 && f == 0.1 + (double)it, "float exact: %.17g", f);
    CHECK(ckpt_get_float(c, "tiny", &f, err) == 0 && f == 4.9e-324, "denormal exact");
    CHECK(ckpt_get_float(c, "not_a_number", &f, err) == 0 && isnan(f), "NaN kept");
    CHECK(ckpt_get_float(c, "minus_inf", &f, err) == 0 && isinf(f) && f < 0, "-inf kept");
    CHECK(ckpt_get_float(c, "minus_zero", &f, err) == 0 && f == 0 && signbit(f), "-0.0 kept");
    CHECK(ckpt_get_float(c, "whole", &f, err) == 0 && f == 3.0, "a float written as 3 read back");
    const char *cfg = ckpt_get_str(c, "config");
    CHECK(cfg && strcmp(cfg, "student:\n  arch: \"vit_small\"\n  note: tab\there \\ back\x01 \xc3\xa9t\xc3\xa9\n") == 0,
          "config text differs: %s", cfg ? cfg : "(none)");
    CHECK(ckpt_get_int(c, "loss.last", &pos, err) == -1 && strstr(err, "loss.last"), "a float is not an int");
    CHECK(ckpt_get_str(c, "absent") == NULL, "absent string");
}

static void corrupt_byte(const char *path, long offset_from_end) {
    FILE *f = fopen(path, "r+b");
    if (!f) { perror(path); exit(2); }
    fseek(f, -offset_from_end, SEEK_END);
    int ch = fgetc(f);
    fseek(f, -offset_from_end, SEEK_END);
    fputc(ch ^ 0x40, f);
    fclose(f);
}

static char *read_log(FILE *f, char **buf) {
    fflush(f);
    return *buf;
}

TEST(crc32_matches_the_standard) {
    CHECK(ckpt_crc32(0, "123456789", 9) == 0xCBF43926u, "check value %08x", ckpt_crc32(0, "123456789", 9));
    CHECK(ckpt_crc32(0, "", 0) == 0, "empty");
    // slicing-by-8 and the byte loop agree at every length and alignment, and chaining works
    unsigned char buf[300];
    for (int i = 0; i < 300; i++) buf[i] = (unsigned char)(i * 37 + 11);
    for (int off = 0; off < 8; off++)
        for (int n = 0; n < 64; n++) {
            uint32_t whole = ckpt_crc32(0, buf + off, (size_t)n);
            uint32_t bytewise = 0;
            for (int k = 0; k < n; k++) bytewise = ckpt_crc32(bytewise, buf + off + k, 1);
            CHECK(whole == bytewise, "crc mismatch off %d n %d", off, n);
        }
}

TEST(round_trip_is_exact) {
    const char *out = test_tmpdir();
    State s;
    fill(&s, 5);
    char err[DINO_ERRLEN] = "", path[PATH_MAX];
    CkptWriter *w = ckpt_writer_new();
    const int64_t sw[2] = {6, 5};
    ckpt_writer_tensor(w, "x", 2, sw, s.w);
    CHECK(ckpt_save(w, out, 7, 3, path, err) == 0, "%s", err);
    ckpt_writer_free(w);
    CHECK(strstr(path, "/checkpoints/ckpt_000000007") != NULL, "path %s", path);
    CHECK(save(out, &s, 12, 3, err) == 0, "%s", err);
    Ckpt c;
    CHECK(ckpt_open_latest(&c, out, stderr, err) == 1, "open: %s", err);
    check_state(&c, &s, 12);
    // shape mismatch and absent tensor name the tensor
    float dst[30];
    const int64_t wrong[2] = {5, 6};
    CHECK(ckpt_read_tensor(&c, "student.backbone.blocks.0.mlp.fc1.weight", 2, wrong, dst, err) == -1 &&
              strstr(err, "'student.backbone.blocks.0.mlp.fc1.weight' has shape [6,5], expected [5,6]"),
          "shape message: %s", err);
    CHECK(ckpt_read_tensor(&c, "teacher.nothing", 2, wrong, dst, err) == -1 && strstr(err, "no tensor 'teacher.nothing'"),
          "absent message: %s", err);
    ckpt_close(&c);
    // an empty output_dir holds no checkpoint
    CHECK(ckpt_open_latest(&c, test_tmpdir(), stderr, err) == 0, "empty dir");
}

TEST(keeps_the_last_k) {
    const char *out = test_tmpdir();
    State s;
    char err[DINO_ERRLEN] = "";
    for (int64_t it = 100; it <= 500; it += 100) {
        fill(&s, (uint64_t)it);
        CHECK(save(out, &s, it, 3, err) == 0, "%s", err);
    }
    int64_t *its;
    int n = ckpt_list(out, &its);
    CHECK(n == 3 && its[0] == 300 && its[1] == 400 && its[2] == 500, "kept %d: %lld..", n, n ? (long long)its[0] : -1LL);
    free(its);
    // saving an existing iteration again (after a resume) replaces it
    fill(&s, 999);
    CHECK(save(out, &s, 500, 3, err) == 0, "%s", err);
    Ckpt c;
    CHECK(ckpt_open_latest(&c, out, stderr, err) == 1, "%s", err);
    check_state(&c, &s, 500);
    ckpt_close(&c);
    n = ckpt_list(out, &its);
    CHECK(n == 3, "still 3 after re-save, got %d", n);
    free(its);
}

TEST(corrupt_or_truncated_newest_falls_back) {
    const char *out = test_tmpdir();
    State s10, s20, s30;
    char err[DINO_ERRLEN] = "", p[PATH_MAX + 64];
    fill(&s10, 10), fill(&s20, 20), fill(&s30, 30);
    CHECK(save(out, &s10, 10, 5, err) == 0 && save(out, &s20, 20, 5, err) == 0 && save(out, &s30, 30, 5, err) == 0, "%s", err);
    char *logbuf = NULL;
    size_t loglen = 0;
    FILE *log = open_memstream(&logbuf, &loglen);
    Ckpt c;

    // truncated tensor file of the newest: reported with file and reason, the previous one used
    snprintf(p, sizeof p, "%s/checkpoints/ckpt_000000030/tensors.safetensors", out);
    struct stat sb;
    CHECK(stat(p, &sb) == 0 && truncate(p, sb.st_size - 9) == 0, "truncate");
    CHECK(ckpt_open_latest(&c, out, log, err) == 1, "%s", err);
    check_state(&c, &s20, 20);
    ckpt_close(&c);
    read_log(log, &logbuf);
    CHECK(strstr(logbuf, "ckpt_000000030") && strstr(logbuf, "tensors.safetensors") && strstr(logbuf, "truncated"),
          "log: %s", logbuf);

    // a flipped bit inside tensor data (size intact): caught by the CRC
    snprintf(p, sizeof p, "%s/checkpoints/ckpt_000000020/tensors.safetensors", out);
    corrupt_byte(p, 3);
    CHECK(ckpt_open_latest(&c, out, log, err) == 1, "%s", err);
    check_state(&c, &s10, 10);
    ckpt_close(&c);
    read_log(log, &logbuf);
    CHECK(strstr(logbuf, "ckpt_000000020") && strstr(logbuf, "fails its CRC32 check"), "log: %s",
          logbuf);

    // a truncated state.json
    snprintf(p, sizeof p, "%s/checkpoints/ckpt_000000010/state.json", out);
    CHECK(stat(p, &sb) == 0 && truncate(p, sb.st_size / 2) == 0, "truncate state");
    CHECK(ckpt_open_latest(&c, out, log, err) == -1, "nothing valid left must be an error");
    CHECK(strstr(err, "none is valid"), "err: %s", err);
    read_log(log, &logbuf);
    CHECK(strstr(logbuf, "state.json") && strstr(logbuf, "not a complete JSON object"), "log: %s", logbuf);
    fclose(log);
    free(logbuf);

    // a run resumed past a damaged newer checkpoint never prunes what it just wrote, even with keep 1
    snprintf(p, sizeof p, "%s/checkpoints/ckpt_000000030/state.json", out);
    CHECK(unlink(p) == 0, "unlink");
    CHECK(save(out, &s20, 25, 1, err) == 0, "%s", err);
    CHECK(ckpt_open_latest(&c, out, NULL, err) == 1, "%s", err);
    check_state(&c, &s20, 25);
    ckpt_close(&c);
    // a new save after all that works and becomes the newest
    CHECK(save(out, &s30, 40, 5, err) == 0, "%s", err);
    CHECK(ckpt_open_latest(&c, out, NULL, err) == 1, "%s", err);
    check_state(&c, &s30, 40);
    ckpt_close(&c);
}

TEST(leftover_tmp_is_ignored_and_cleaned) {
    const char *out = test_tmpdir();
    State s1, s2;
    char err[DINO_ERRLEN] = "", p[PATH_MAX + 64];
    fill(&s1, 1), fill(&s2, 2);
    CHECK(save(out, &s1, 1000, 3, err) == 0, "%s", err);
    // a writer that died after writing everything but before the rename: a complete-looking .tmp dir
    CHECK(save(out, &s2, 2000, 3, err) == 0, "%s", err);
    char a[PATH_MAX + 64], b[PATH_MAX + 64];
    snprintf(a, sizeof a, "%s/checkpoints/ckpt_000002000", out);
    snprintf(b, sizeof b, "%s/checkpoints/ckpt_000002000.tmp", out);
    CHECK(rename(a, b) == 0, "rename");
    // and a half-written one at a later iteration
    snprintf(p, sizeof p, "%s/checkpoints/ckpt_000003000.tmp", out);
    CHECK(mkdir(p, 0755) == 0, "mkdir");
    int64_t *its;
    int n = ckpt_list(out, &its);
    CHECK(n == 1 && its[0] == 1000, "only the committed checkpoint is listed (%d)", n);
    free(its);
    Ckpt c;
    CHECK(ckpt_open_latest(&c, out, stderr, err) == 1, "%s", err);
    check_state(&c, &s1, 1000);
    ckpt_close(&c);
    // the next save removes the leftovers
    CHECK(save(out, &s2, 1500, 3, err) == 0, "%s", err);
    struct stat sb;
    CHECK(stat(b, &sb) != 0 && stat(p, &sb) != 0, "leftover .tmp directories must be removed");
}

TEST(independent_python_reader_agrees) {
    if (access("/usr/bin/python3", X_OK) != 0) test_skip("no /usr/bin/python3");
    if (system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") != 0) test_skip("numpy is not installed");
    const char *out = test_tmpdir();
    float pos[12], ones[5];
    for (int i = 0; i < 12; i++) pos[i] = 0.25f * (float)i - 3;
    for (int i = 0; i < 5; i++) ones[i] = 1;
    const int64_t s2[2] = {3, 4}, s1[1] = {5};
    CkptWriter *w = ckpt_writer_new();
    ckpt_writer_tensor(w, "teacher.backbone.pos_embed", 2, s2, pos);
    ckpt_writer_tensor(w, "ibot_patch_loss.center", 1, s1, ones);
    ckpt_writer_int(w, "loader.position", (1LL << 40) + 3);
    ckpt_writer_float(w, "lr", 1e-4);
    ckpt_writer_str(w, "config", "a: \"b\"\n\tc\\");
    char err[DINO_ERRLEN] = "", dir[PATH_MAX], cmd[3 * PATH_MAX];
    CHECK(ckpt_save(w, out, 42, 1, dir, err) == 0, "%s", err);
    ckpt_writer_free(w);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s 42", test_src_path("tests/ckpt_oracle.py"), dir);
    int rc = system(cmd);
    CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "the Python reader disagrees (%d)", rc);
}

TEST(parameter_tables_round_trip) {
    ParamTable tab, other;
    param_table_init(&tab);
    param_table_init(&other);
    const int64_t s1[2] = {4, 3}, s2[1] = {3}, s3[4] = {2, 3, 2, 2};
    param_add(&tab, "backbone.patch_embed.proj.weight", PARAM_BACKBONE, 0, 4, s3);
    param_add(&tab, "backbone.blocks.0.attn.qkv.weight", PARAM_BACKBONE, 1, 2, s1);
    param_add(&tab, "backbone.blocks.0.attn.qkv.bias", PARAM_BACKBONE, 1, 1, s2);
    float *p = dino_calloc(tab.total, sizeof(float)), *m = dino_calloc(tab.total, sizeof(float));
    float *p2 = dino_calloc(tab.total, sizeof(float)), *m2 = dino_calloc(tab.total, sizeof(float));
    for (int i = 0; i < tab.n; i++)
        for (size_t k = 0; k < tab.t[i].numel; k++) {
            p[tab.t[i].offset + k] = (float)(i * 100 + (int)k);
            m[tab.t[i].offset + k] = -(float)(i * 100 + (int)k) / 7;
        }
    const char *out = test_tmpdir();
    char err[DINO_ERRLEN] = "";
    CkptWriter *w = ckpt_writer_new();
    ckpt_writer_param_table(w, "student.", &tab, p);
    ckpt_writer_param_table(w, "adamw_m.", &tab, m);
    CHECK(ckpt_save(w, out, 3, 2, NULL, err) == 0, "%s", err);
    ckpt_writer_free(w);
    Ckpt c;
    CHECK(ckpt_open_latest(&c, out, stderr, err) == 1, "%s", err);
    CHECK(ckpt_tensor(&c, "student.backbone.blocks.0.attn.qkv.bias") != NULL, "prefixed names");
    CHECK(ckpt_read_param_table(&c, "student.", &tab, p2, err) == 0, "%s", err);
    CHECK(ckpt_read_param_table(&c, "adamw_m.", &tab, m2, err) == 0, "%s", err);
    int same = 1;
    for (int i = 0; i < tab.n; i++)
        for (size_t k = 0; k < tab.t[i].numel; k++)
            same &= p2[tab.t[i].offset + k] == p[tab.t[i].offset + k] && m2[tab.t[i].offset + k] == m[tab.t[i].offset + k];
    CHECK(same, "parameters differ after the round trip");
    // a model of another shape is refused, naming the tensor
    const int64_t wide[2] = {4, 5};
    param_add(&other, "backbone.blocks.0.attn.qkv.weight", PARAM_BACKBONE, 1, 2, wide);
    float *o = dino_calloc(other.total, sizeof(float));
    CHECK(ckpt_read_param_table(&c, "student.", &other, o, err) == -1 &&
              strstr(err, "'student.backbone.blocks.0.attn.qkv.weight' has shape [4,3], expected [4,5]"),
          "%s", err);
    CHECK(ckpt_read_param_table(&c, "teacher.", &tab, p2, err) == -1 && strstr(err, "no tensor 'teacher.backbone"), "%s", err);
    ckpt_close(&c);
    free(p), free(m), free(p2), free(m2), free(o);
    param_table_free(&tab);
    param_table_free(&other);
}
