// dinotile: cuts whole-slide images into packed tile shards (docs/shard-format.md), slides in parallel.
//   dinotile -o OUT_DIR [options] SLIDE... | --list FILE
// A slide whose done marker exists in OUT_DIR is skipped, so an interrupted run resumes where it stopped.
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/check.h"
#include "common/fs.h"
#include "data/tiler.h"

typedef struct {
    char **slides;
    int n;
    const char *out_dir;
    TileOptions opt;
    atomic_int next;
    // progress, guarded by mu
    pthread_mutex_t mu;
    double *weight;    // per slide work units (file size)
    double *fraction;  // per slide fraction done
    double total_weight;
    int done, failed, skipped;
    int64_t tiles;
    int tty, finished;
    double t0;
} Job;

typedef struct { Job *job; int slide; } ProgressCtx;

static void on_progress(void *user, int64_t done, int64_t total) {
    ProgressCtx *c = user;
    pthread_mutex_lock(&c->job->mu);
    c->job->fraction[c->slide] = total > 0 ? (double)done / total : 1;
    pthread_mutex_unlock(&c->job->mu);
}

// Draws the bar (caller holds mu). The rate is measured on work done in this run only.
static void draw_bar(Job *j) {
    double w = 0;
    for (int i = 0; i < j->n; i++) w += j->weight[i] * j->fraction[i];
    double frac = j->total_weight > 0 ? w / j->total_weight : 1;
    double el = dino_wall_s() - j->t0;
    char eta[32] = "--";
    if (frac > 0.001 && frac < 1) {
        int s = (int)(el * (1 - frac) / frac);
        snprintf(eta, sizeof eta, "%dm%02ds", s / 60, s % 60);
    }
    char bar[31];
    int k = (int)(frac * 30);
    for (int i = 0; i < 30; i++) bar[i] = i < k ? '=' : i == k ? '>' : ' ';
    bar[30] = 0;
    fprintf(stderr, "\r[%s] %5.1f%%  %d/%d slides  %lld tiles  ETA %s   ", bar, 100 * frac, j->done, j->n,
            (long long)j->tiles, eta);
    fflush(stderr);
}

static void *progress_thread(void *arg) {
    Job *j = arg;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        int fin = j->finished;
        draw_bar(j);
        pthread_mutex_unlock(&j->mu);
        if (fin) break;
        usleep(250000);
    }
    fprintf(stderr, "\n");
    return NULL;
}

static void *worker(void *arg) {
    Job *j = arg;
    int i;
    while ((i = atomic_fetch_add(&j->next, 1)) < j->n) {
        const char *slide = j->slides[i];
        char line[DINO_ERRLEN + 512], err[DINO_ERRLEN];
        TileSummary s;
        int skipped = tile_slide_is_done(j->out_dir, slide);
        int rc = 0;
        if (skipped) snprintf(line, sizeof line, "%s: already done, skipped", slide);
        else {
            ProgressCtx ctx = {j, i};
            rc = tile_slide(slide, j->out_dir, &j->opt, on_progress, &ctx, &s, err);
            if (rc == 0)
                snprintf(line, sizeof line,
                         "%s: %lld tiles kept of %lld in the grid (tissue %.1f%% of the slide, level %d, "
                         "%.3f um/px%s), %lld dropped by the HSV filter, %d shard(s), %.1f s",
                         slide, (long long)s.kept_tiles, (long long)s.grid_tiles, 100 * s.tissue_fraction, s.level,
                         s.slide_mpp, s.mpp_assumed ? " assumed" : "", (long long)s.hsv_rejected, s.shards, s.seconds);
            else snprintf(line, sizeof line, "error: %s", err);
        }
        pthread_mutex_lock(&j->mu);
        j->fraction[i] = 1;
        j->done++;
        if (skipped) j->skipped++;
        else if (rc != 0) j->failed++;
        else j->tiles += s.kept_tiles;
        if (j->tty) fprintf(stderr, "\r\033[K");
        fprintf(rc ? stderr : stdout, "[%d/%d] %s\n", j->done, j->n, line);
        fflush(stdout);
        if (j->tty) draw_bar(j);
        pthread_mutex_unlock(&j->mu);
    }
    return NULL;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: dinotile -o OUT_DIR [options] SLIDE... (or --list FILE)\n"
            "Cuts whole-slide images into tile shards (*.dtshard) of tissue tiles.\n"
            "  -o, --out DIR            output folder (created if missing)\n"
            "  -l, --list FILE          text file of slide paths, one per line\n"
            "  -s, --tile-size N        tile side in pixels (224)\n"
            "  -m, --mpp X              tile resolution in microns per pixel (0.5)\n"
            "  -t, --min-tissue F       minimum tissue fraction of a kept tile (0.5)\n"
            "  -q, --quality Q          JPEG quality 1..100 (90)\n"
            "  -n, --tiles-per-shard N  records per shard file (10000)\n"
            "  -j, --threads N          slides processed in parallel (number of cores)\n"
            "  -a, --assume-mpp X       level-0 microns per pixel for slides without that metadata\n"
            "  -H, --hsv-filter F       keep a tile only when this fraction of its pixels is in the H&E HSV\n"
            "                           range (Midnight: 0.6; hue 90-180, sat 8-255, value 103-255 in\n"
            "                           OpenCV units); 0 = off (default)\n"
            "  -h, --help\n"
            "Re-running skips slides whose OUT_DIR/<name>.done marker exists.\n");
}

static int parse_double(const char *s, double lo, double hi, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= lo && v <= hi)) return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv) {
    Job j;
    memset(&j, 0, sizeof j);
    tile_options_default(&j.opt);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int threads = ncpu > 0 ? (int)ncpu : 1;
    const char *list = NULL;
    static const struct option longopts[] = {
        {"out", required_argument, 0, 'o'},        {"list", required_argument, 0, 'l'},
        {"tile-size", required_argument, 0, 's'},  {"mpp", required_argument, 0, 'm'},
        {"min-tissue", required_argument, 0, 't'}, {"quality", required_argument, 0, 'q'},
        {"tiles-per-shard", required_argument, 0, 'n'}, {"threads", required_argument, 0, 'j'},
        {"assume-mpp", required_argument, 0, 'a'}, {"hsv-filter", required_argument, 0, 'H'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int c;
    double v;
    while ((c = getopt_long(argc, argv, "o:l:s:m:t:q:n:j:a:H:h", longopts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'o': j.out_dir = optarg; break;
        case 'l': list = optarg; break;
        case 's': bad = parse_double(optarg, 8, 8192, &v); j.opt.tile_size = (int)v; break;
        case 'm': bad = parse_double(optarg, 1e-3, 1e3, &j.opt.mpp); break;
        case 't': bad = parse_double(optarg, 0, 1, &j.opt.min_tissue); break;
        case 'q': bad = parse_double(optarg, 1, 100, &v); j.opt.jpeg_quality = (int)v; break;
        case 'n': bad = parse_double(optarg, 1, 1e9, &v); j.opt.tiles_per_shard = (int64_t)v; break;
        case 'j': bad = parse_double(optarg, 1, 1024, &v); threads = (int)v; break;
        case 'a': bad = parse_double(optarg, 1e-3, 1e3, &j.opt.assume_mpp); break;
        case 'H': bad = parse_double(optarg, 0, 1, &j.opt.hsv.min_fraction); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            const char *name = "?";
            for (int k = 0; longopts[k].name; k++)
                if (longopts[k].val == c) name = longopts[k].name;
            fprintf(stderr, "dinotile: bad value '%s' for --%s\n", optarg, name);
            return 2;
        }
    }
    if (!j.out_dir) {
        fprintf(stderr, "dinotile: missing -o OUT_DIR\n");
        usage(stderr);
        return 2;
    }
    // Slides: the arguments, then the list file.
    int cap = argc + 16;
    j.slides = dino_malloc(sizeof(char *) * cap);
    for (int i = optind; i < argc; i++) j.slides[j.n++] = strdup(argv[i]);
    if (list) {
        FILE *f = fopen(list, "r");
        if (!f) {
            fprintf(stderr, "dinotile: %s: cannot open list: %s\n", list, strerror(errno));
            return 1;
        }
        char *line = NULL;
        size_t lcap = 0;
        ssize_t len;
        while ((len = getline(&line, &lcap, f)) >= 0) {
            while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' ')) line[--len] = 0;
            if (!len || line[0] == '#') continue;
            if (j.n == cap) j.slides = dino_realloc(j.slides, sizeof(char *) * (cap *= 2));
            j.slides[j.n++] = strdup(line);
        }
        free(line);
        fclose(f);
    }
    if (j.n == 0) {
        fprintf(stderr, "dinotile: no slides given\n");
        usage(stderr);
        return 2;
    }
    // Two slides with the same file name would write over each other's shards.
    for (int a = 0; a < j.n; a++)
        for (int b = a + 1; b < j.n; b++) {
            char sa[1024], sb[1024];
            tile_slide_stem(j.slides[a], sa, sizeof sa);
            tile_slide_stem(j.slides[b], sb, sizeof sb);
            if (!strcmp(sa, sb)) {
                fprintf(stderr, "dinotile: %s and %s have the same name '%s': their shards would collide\n",
                        j.slides[a], j.slides[b], sa);
                return 2;
            }
        }
    struct stat st;
    char merr[DINO_ERRLEN];
    if (dino_mkdir_p(j.out_dir, merr)) {
        fprintf(stderr, "dinotile: %s\n", merr);
        return 1;
    }
    j.weight = dino_calloc(j.n, sizeof(double));
    j.fraction = dino_calloc(j.n, sizeof(double));
    for (int i = 0; i < j.n; i++) { // file size stands in for the work a slide takes
        j.weight[i] = stat(j.slides[i], &st) == 0 && st.st_size > 0 ? (double)st.st_size : 1.0;
        j.total_weight += j.weight[i];
    }
    if (threads > j.n) threads = j.n;
    pthread_mutex_init(&j.mu, NULL);
    j.tty = isatty(fileno(stderr));
    j.t0 = dino_wall_s();
    pthread_t bar, *tid = dino_malloc(sizeof(pthread_t) * threads);
    if (j.tty) DINO_ASSERT(pthread_create(&bar, NULL, progress_thread, &j) == 0, "pthread_create failed");
    for (int t = 0; t < threads; t++)
        DINO_ASSERT(pthread_create(&tid[t], NULL, worker, &j) == 0, "pthread_create failed");
    for (int t = 0; t < threads; t++) pthread_join(tid[t], NULL);
    if (j.tty) {
        pthread_mutex_lock(&j.mu);
        j.finished = 1;
        pthread_mutex_unlock(&j.mu);
        pthread_join(bar, NULL);
    }
    printf("dinotile: %d slide(s): %d tiled, %d skipped (already done), %d failed; %lld tiles in %.1f s -> %s\n",
           j.n, j.n - j.skipped - j.failed, j.skipped, j.failed, (long long)j.tiles, dino_wall_s() - j.t0, j.out_dir);
    for (int i = 0; i < j.n; i++) free(j.slides[i]);
    free(j.slides);
    free(j.weight);
    free(j.fraction);
    free(tid);
    return j.failed ? 1 : 0;
}
