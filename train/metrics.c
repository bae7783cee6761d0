// Metrics file and console line: see metrics.h.
#include "train/metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/check.h"
#include "common/text.h"

struct MetricsLog {
    FILE *f;
    char path[PATH_MAX];
    Text line;
    int open_record;
};


// Keeps the complete records of iterations before `start` (a resumed run rewrites the rest).
static int drop_records_from(const char *path, int64_t start, char *err) {
    FILE *in = fopen(path, "rb");
    if (!in) return errno == ENOENT ? 0 : (dino_seterr(err, "cannot read %s: %s", path, strerror(errno)), -1);
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *out = fopen(tmp, "wb");
    if (!out) {
        dino_seterr(err, "cannot write %s: %s", tmp, strerror(errno));
        fclose(in);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, in)) > 0) {
        if (line[len - 1] != '\n') break; // torn last line of a killed run
        long long it;
        if (sscanf(line, "{\"iteration\": %lld", &it) == 1 && it >= start) continue;
        fwrite(line, 1, (size_t)len, out);
    }
    free(line);
    fclose(in);
    int bad = fflush(out) != 0 || fsync(fileno(out)) != 0;
    bad |= fclose(out) != 0;
    if (bad || rename(tmp, path) != 0) {
        dino_seterr(err, "cannot rewrite %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

MetricsLog *metrics_open(const char *path, int64_t start_iteration, char *err) {
    if (drop_records_from(path, start_iteration, err)) return NULL;
    FILE *f = fopen(path, "ab");
    if (!f) {
        dino_seterr(err, "cannot open metrics file %s: %s", path, strerror(errno));
        return NULL;
    }
    MetricsLog *m = dino_calloc(1, sizeof *m);
    m->f = f;
    snprintf(m->path, sizeof m->path, "%s", path);
    text_init(&m->line, 512);
    return m;
}

void metrics_begin(MetricsLog *m, int64_t iteration) {
    text_clear(&m->line);
    m->open_record = 1;
    text_printf(&m->line, "{\"iteration\": %" PRId64, iteration); // first, always: the resume filter relies on it
}

static void put_key(MetricsLog *m, const char *key) {
    DINO_ASSERT(m->open_record, "metrics_add outside metrics_begin/metrics_end");
    text_printf(&m->line, ", ");
    text_json_string(&m->line, key);
    text_printf(&m->line, ": ");
}

void metrics_add(MetricsLog *m, const char *key, double v) {
    put_key(m, key);
    if (!isfinite(v)) { text_printf(&m->line, "null"); return; }
    char num[40];
    for (int prec = 6; prec <= 17; prec++) { // shortest exact text
        snprintf(num, sizeof num, "%.*g", prec, v);
        if (strtod(num, NULL) == v) break;
    }
    text_printf(&m->line, "%s", num);
}

void metrics_add_int(MetricsLog *m, const char *key, int64_t v) {
    put_key(m, key);
    text_printf(&m->line, "%" PRId64, v);
}

void metrics_add_str(MetricsLog *m, const char *key, const char *s) {
    put_key(m, key);
    text_json_string(&m->line, s);
}

int metrics_end(MetricsLog *m, char *err) {
    DINO_ASSERT(m->open_record, "metrics_end without metrics_begin");
    m->open_record = 0;
    text_printf(&m->line, "}\n");
    if (fwrite(m->line.s, 1, m->line.n, m->f) != m->line.n || fflush(m->f) != 0) {
        dino_seterr(err, "cannot write metrics file %s: %s", m->path, strerror(errno));
        return -1;
    }
    return 0;
}

void metrics_close(MetricsLog *m) {
    if (!m) return;
    fclose(m->f);
    text_free(&m->line);
    free(m);
}

// ---- console ----------------------------------------------------------------------------------------

void metrics_format_duration(char *buf, size_t cap, double s) {
    if (!(s >= 0) || !isfinite(s)) { snprintf(buf, cap, "?"); return; }
    long long t = (long long)(s + 0.5);
    long long d = t / 86400, h = t / 3600 % 24, mi = t / 60 % 60, se = t % 60;
    if (d) snprintf(buf, cap, "%lldd %02lld:%02lld:%02lld", d, h, mi, se);
    else if (h) snprintf(buf, cap, "%lld:%02lld:%02lld", h, mi, se);
    else if (mi) snprintf(buf, cap, "%lld:%02lld", mi, se);
    else snprintf(buf, cap, "%llds", se);
}

double metrics_eta_seconds(int64_t done, double elapsed_s, int64_t remaining) {
    if (done <= 0 || remaining < 0 || !(elapsed_s >= 0)) return -1;
    return elapsed_s / (double)done * (double)remaining;
}

int metrics_stdout_is_tty(void) { return isatty(STDOUT_FILENO); }

typedef struct {
    char *s;
    size_t n, cap;
} Out;

static void oprintf(Out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void oprintf(Out *o, const char *fmt, ...) {
    if (o->n >= o->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(o->s + o->n, o->cap - o->n, fmt, ap);
    va_end(ap);
    if (k > 0) o->n = o->n + (size_t)k < o->cap ? o->n + (size_t)k : o->cap - 1;
}

void metrics_format_line(char *buf, size_t cap, const ProgressInfo *p, int bar_width) {
    Out o = {buf, 0, cap};
    if (!cap) return;
    buf[0] = 0;
    double frac = p->total > 0 ? (double)p->iteration / (double)p->total : 0;
    if (frac > 1) frac = 1;
    if (bar_width > 0) {
        int full = (int)(frac * bar_width);
        oprintf(&o, "[");
        for (int i = 0; i < bar_width; i++) oprintf(&o, "%c", i < full ? '#' : '.');
        oprintf(&o, "] ");
    }
    int w = 1;
    for (int64_t t = p->total; t >= 10; t /= 10) w++;
    oprintf(&o, "%*" PRId64 "/%" PRId64 " (%.1f%%)", w, p->iteration, p->total, 100 * frac);
    oprintf(&o, " loss %.4f", p->loss);
    if (!isnan(p->dino_local)) oprintf(&o, " dino_l %.4f", p->dino_local);
    if (!isnan(p->dino_global)) oprintf(&o, " dino_g %.4f", p->dino_global);
    if (!isnan(p->ibot)) oprintf(&o, " ibot %.4f", p->ibot);
    if (!isnan(p->koleo)) oprintf(&o, " %s %.4f", p->regularizer ? p->regularizer : "koleo", p->koleo);
    oprintf(&o, " | lr %.3e wd %.4f mom %.5f temp %.4f", p->lr, p->wd, p->momentum, p->teacher_temp);
    oprintf(&o, " | %.1f img/s data %.0f%%", p->images_per_s, 100 * p->data_wait_share);
    if (p->corrupt_tiles > 0) oprintf(&o, " | corrupt %" PRId64, p->corrupt_tiles);
    if (!isnan(p->margin) && (p->margin != 0 || p->usage != 0))
        oprintf(&o, " | margin %.3f use %.3f agree %.2f", p->margin, p->usage, p->agreement);
    if (p->collapse) oprintf(&o, " | WARNING collapse: %s", p->collapse);
    char eta[32];
    metrics_format_duration(eta, sizeof eta, p->eta_s);
    oprintf(&o, " | ETA %s", eta);
}
