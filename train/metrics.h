// What a person sees of a run: a JSON-lines metrics file (one object per logged iteration, flushed
// line by line, read by tools/plot_metrics.py) and the one-line console summary with an optional
// progress bar.
//
// Record keys tools/plot_metrics.py knows: loss, dino_local, dino_global, ibot, koleo|kde (losses; any
// key containing "loss" too), lr, last_layer_lr, wd, momentum, teacher_temp (schedules), images_per_s,
// data_wait_share (throughput). Others (iter_time, data_time, ...) are kept in the file but not drawn.
#pragma once
#include <stddef.h>
#include <stdint.h>

// ---- metrics file -----------------------------------------------------------------------------------
typedef struct MetricsLog MetricsLog;
// Opens path for appending records from start_iteration on (0 for a fresh run, the checkpoint's
// iteration for a resumed one). Records with iteration >= start_iteration left by an interrupted run
// (and a torn last line) are dropped first, so every iteration appears once. Returns NULL with err set.
MetricsLog *metrics_open(const char *path, int64_t start_iteration, char *err);
// One record: begin, add values by name (in the order they should appear), end writes and flushes.
void metrics_begin(MetricsLog *m, int64_t iteration);
void metrics_add(MetricsLog *m, const char *key, double v); // non-finite values are written as null
void metrics_add_int(MetricsLog *m, const char *key, int64_t v);
void metrics_add_str(MetricsLog *m, const char *key, const char *s);
int metrics_end(MetricsLog *m, char *err);
void metrics_close(MetricsLog *m);

// ---- console ----------------------------------------------------------------------------------------
typedef struct {
    int64_t iteration, total; // iterations completed / planned
    // losses; NaN = the term is off and not shown
    double loss, dino_local, dino_global, ibot, koleo;
    const char *regularizer; // label of the koleo field ("koleo" or "kde"); NULL = "koleo"
    double lr, wd, momentum, teacher_temp;
    double images_per_s;     // over the last logging window
    double data_wait_share;  // fraction of the window spent waiting for the loader, in [0, 1]
    double eta_s;            // < 0 = unknown
    int64_t corrupt_tiles;   // tiles the loader skipped so far (unreadable, corrupt, over the pixel budget);
                             // shown only when > 0
    double margin, usage, agreement; // collapse diagnostics (train/collapse.h); margin NaN (or 0 with usage 0) = not shown
    const char *collapse;            // NULL, or what collapsed: shown as a warning
} ProgressInfo;

// One console line, no newline. bar_width > 0 puts a progress bar in front (for terminals).
void metrics_format_line(char *buf, size_t cap, const ProgressInfo *p, int bar_width);
// "45s", "12:34", "3:04:05", "2d 03:04:05".
void metrics_format_duration(char *buf, size_t cap, double seconds);
// Remaining time from the pace so far: elapsed_s for `done` iterations, `remaining` to go (< 0 if unknown).
double metrics_eta_seconds(int64_t done, double elapsed_s, int64_t remaining);
// Whether stdout is a terminal (progress bar and carriage-return updates make sense).
int metrics_stdout_is_tty(void);
