#include <limits.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/check.h"
#include "tests/harness.h"
#include "train/metrics.h"

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    size_t r = fread(s, 1, (size_t)n, f);
    s[r] = 0;
    fclose(f);
    return s;
}

static void log_iteration(MetricsLog *m, int64_t it) {
    char err[DINO_ERRLEN];
    metrics_begin(m, it);
    metrics_add(m, "loss", 10.0 - 0.01 * (double)it);
    metrics_add(m, "lr", 1e-4 * (double)it);
    metrics_add_int(m, "images", it * 32);
    CHECK(metrics_end(m, err) == 0, "%s", err);
}

TEST(records_are_json_lines_flushed_per_line) {
    char path[PATH_MAX], err[DINO_ERRLEN] = "";
    snprintf(path, sizeof path, "%s/metrics.jsonl", test_tmpdir());
    MetricsLog *m = metrics_open(path, 0, err);
    CHECK(m != NULL, "%s", err);
    if (!m) return;
    metrics_begin(m, 10);
    metrics_add(m, "loss", 11.25);
    metrics_add(m, "lr", 0.1);
    metrics_add(m, "dino_local", NAN);
    metrics_add_int(m, "images", 320);
    metrics_add_str(m, "note", "a \"quoted\"\tword");
    CHECK(metrics_end(m, err) == 0, "%s", err);
    // visible before close: a person tails the file while the run goes on
    char *s = slurp(path);
    const char *want = "{\"iteration\": 10, \"loss\": 11.25, \"lr\": 0.1, \"dino_local\": null, \"images\": 320, "
                       "\"note\": \"a \\\"quoted\\\"\\u0009word\"}\n";
    CHECK(s && strcmp(s, want) == 0, "got  %s\nwant %s", s ? s : "(none)", want);
    free(s);
    log_iteration(m, 20);
    metrics_close(m);
    s = slurp(path);
    int lines = 0;
    for (char *p = s; p && *p; p++) lines += *p == '\n';
    CHECK(lines == 2, "two records, got %d", lines);
    free(s);
}

TEST(resume_drops_records_of_the_lost_iterations) {
    char path[PATH_MAX], err[DINO_ERRLEN] = "";
    snprintf(path, sizeof path, "%s/metrics.jsonl", test_tmpdir());
    MetricsLog *m = metrics_open(path, 0, err);
    for (int64_t it = 10; it <= 50; it += 10) log_iteration(m, it);
    metrics_close(m);
    FILE *f = fopen(path, "ab"); // the run was killed while writing a record
    fputs("{\"iteration\": 60, \"loss\": 9.", f);
    fclose(f);
    // checkpoint at 30: the resumed run starts at iteration 30 and logs 30, 40, ... again
    m = metrics_open(path, 30, err);
    CHECK(m != NULL, "%s", err);
    log_iteration(m, 30);
    metrics_close(m);
    char *s = slurp(path);
    CHECK(strstr(s, "\"iteration\": 10,") && strstr(s, "\"iteration\": 20,"), "kept the earlier records: %s", s);
    CHECK(!strstr(s, "\"iteration\": 40,") && !strstr(s, "\"iteration\": 50,") && !strstr(s, "\"iteration\": 60"),
          "dropped the lost ones: %s", s);
    const char *first30 = strstr(s, "\"iteration\": 30,");
    CHECK(first30 && !strstr(first30 + 1, "\"iteration\": 30,"), "iteration 30 exactly once: %s", s);
    char last[256];
    snprintf(last, sizeof last, "{\"iteration\": 30, \"loss\": 9.7, \"lr\": 0.003, \"images\": 960}\n");
    CHECK(strlen(s) >= strlen(last) && strcmp(s + strlen(s) - strlen(last), last) == 0, "ends with the new record: %s", s);
    free(s);
    // a fresh start (iteration 0) in the same directory starts the file afresh
    m = metrics_open(path, 0, err);
    log_iteration(m, 0);
    metrics_close(m);
    s = slurp(path);
    CHECK(strcmp(s, "{\"iteration\": 0, \"loss\": 10, \"lr\": 0, \"images\": 0}\n") == 0, "fresh file: %s", s);
    free(s);
    // opening in a directory that does not exist is a clear error
    CHECK(metrics_open("/nonexistent-dir/m.jsonl", 0, err) == NULL && strstr(err, "/nonexistent-dir/m.jsonl"), "%s", err);
}

TEST(console_line_and_durations) {
    char d[32];
    metrics_format_duration(d, sizeof d, 45.2);
    CHECK(strcmp(d, "45s") == 0, "%s", d);
    metrics_format_duration(d, sizeof d, 754);
    CHECK(strcmp(d, "12:34") == 0, "%s", d);
    metrics_format_duration(d, sizeof d, 3 * 3600 + 4 * 60 + 5);
    CHECK(strcmp(d, "3:04:05") == 0, "%s", d);
    metrics_format_duration(d, sizeof d, 2 * 86400 + 3 * 3600 + 4 * 60 + 5);
    CHECK(strcmp(d, "2d 03:04:05") == 0, "%s", d);
    metrics_format_duration(d, sizeof d, -1);
    CHECK(strcmp(d, "?") == 0, "%s", d);
    CHECK_CLOSE(metrics_eta_seconds(100, 50.0, 900), 450.0, 1e-9, 0);
    CHECK(metrics_eta_seconds(0, 1.0, 10) < 0, "unknown pace");

    ProgressInfo p = {.iteration = 250, .total = 1000, .loss = 9.87654, .dino_local = 4.5, .dino_global = 4.25,
                      .ibot = 1.125, .koleo = -0.0625, .lr = 1.5e-4, .wd = 0.0412, .momentum = 0.99213,
                      .teacher_temp = 0.0425, .images_per_s = 123.45, .data_wait_share = 0.034, .eta_s = 3725};
    char line[512];
    metrics_format_line(line, sizeof line, &p, 0);
    const char *want = " 250/1000 (25.0%) loss 9.8765 dino_l 4.5000 dino_g 4.2500 ibot 1.1250 koleo -0.0625 | lr 1.500e-04 "
                       "wd 0.0412 mom 0.99213 temp 0.0425 | 123.5 img/s data 3% | ETA 1:02:05";
    CHECK(strcmp(line, want) == 0, "\ngot  '%s'\nwant '%s'", line, want);
    // corrupt tiles skipped by the loader: shown once there are any (the same count as the metrics file's
    // corrupt_tiles), between the throughput and the ETA
    p.corrupt_tiles = 7;
    metrics_format_line(line, sizeof line, &p, 0);
    CHECK(strstr(line, "| 123.5 img/s data 3% | corrupt 7 | ETA 1:02:05"), "corrupt tiles not shown: '%s'", line);
    p.corrupt_tiles = 0;
    // collapse diagnostics (train/collapse.h): shown once known, and a warning naming what collapsed
    p.margin = 0.002, p.usage = 0.014, p.agreement = 0.01, p.collapse = "head uniform";
    metrics_format_line(line, sizeof line, &p, 0);
    CHECK(strstr(line, "| margin 0.002 use 0.014 agree 0.01 | WARNING collapse: head uniform | ETA 1:02:05"),
          "collapse diagnostics not shown: '%s'", line);
    p.margin = 0, p.usage = 0, p.agreement = 0, p.collapse = NULL;
    // disabled terms disappear; the regularizer is labelled; the bar fills with the progress
    p.ibot = NAN;
    p.regularizer = "kde";
    metrics_format_line(line, sizeof line, &p, 8);
    CHECK(strncmp(line, "[##......]  250/1000", 20) == 0, "bar: '%s'", line);
    CHECK(!strstr(line, "ibot") && strstr(line, " kde -0.0625"), "terms: '%s'", line);
    // a short buffer truncates without overflow
    char small[16];
    metrics_format_line(small, sizeof small, &p, 8);
    CHECK(strlen(small) == 15, "truncated to the buffer: '%s'", small);
}

TEST(plot_tool_renders_png) {
    if (access("/usr/bin/python3", X_OK) != 0) test_skip("no /usr/bin/python3");
    if (system("/usr/bin/python3 -c 'import matplotlib' 2>/dev/null") != 0)
        test_skip("matplotlib is not installed (tools/setup.sh installs python3-matplotlib)");
    const char *dir = test_tmpdir();
    char path[PATH_MAX], png[PATH_MAX + 16], cmd[3 * PATH_MAX], err[DINO_ERRLEN] = "";
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    MetricsLog *m = metrics_open(path, 0, err);
    for (int64_t it = 0; it < 30; it++) {
        metrics_begin(m, it);
        metrics_add(m, "loss", 11.0 - 0.1 * (double)it);
        metrics_add(m, "dino_local", 5.0 - 0.05 * (double)it);
        metrics_add(m, "ibot", NAN);
        metrics_add(m, "lr", 1e-4 * (double)it);
        metrics_add(m, "momentum", 0.992 + 0.0001 * (double)it);
        metrics_add(m, "images_per_s", 100 + (double)it);
        metrics_add(m, "data_wait_share", 0.05);
        if (it % 5 == 4) { // the collapse diagnostics of a log line (the extra panels)
            metrics_add(m, "dino_margin", 0.5 - 0.015 * (double)it);
            metrics_add(m, "prototype_usage", 0.3);
            metrics_add(m, "agreement", 0.2);
            metrics_add(m, "rankme_cls", 3 + 0.1 * (double)it);
            metrics_add(m, "feature_std_cls", 0.05);
            if (it == 4) metrics_add(m, "rankme_cls_init", 1.2);
            if (it > 25) metrics_add_str(m, "collapse", "head uniform");
        }
        metrics_end(m, err);
    }
    metrics_close(m);
    snprintf(png, sizeof png, "%s/curves.png", dir);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s -o %s", test_src_path("tools/plot_metrics.py"), path, png);
    int rc = system(cmd);
    CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "plot_metrics.py failed (%d)", rc);
    FILE *f = fopen(png, "rb");
    unsigned char sig[8] = {0};
    CHECK(f && fread(sig, 1, 8, f) == 8 && memcmp(sig, "\x89PNG\r\n\x1a\n", 8) == 0, "not a PNG: %s", png);
    if (f) fclose(f);
}
