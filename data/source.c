// Tile sources. A spec is one or more parts joined by '+'; each part is one of
//   DIR                 every *.dtshard file in DIR (sorted by name)
//   FILE.dtshard        one shard (any file that starts with the shard magic)
//   'PATTERN*'          a glob of shards
//   shards:LIST         a text file naming shards, one per line
//   folder:DIR          every .jpg/.jpeg/.png/.tif/.tiff under DIR, recursively (sorted by path)
//   list:FILE           a text file naming images, one per line
//   wsi:SLIDE_OR_LIST[,mpp=0.5][,size=224][,mags=0.25/0.5/1.0][,mpp_range=0.25/2.0][,mpp_sampling=log]
//       [,min_tissue=0.5][,assume_mpp=M]
//                       random tissue tiles sampled online from whole slides
// In list files, blank lines and lines starting with '#' are ignored and relative paths are relative
// to the list file's folder. Labelled sets (source_open_labelled) take the folder and list forms, with
// a class per image: the first sub-folder of DIR, or a `path,label` list. docs/data-sources.md is the
// user-facing description.
#include "data/source.h"

#include <ctype.h>
#include <dirent.h>
#include <glob.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/check.h"
#include "common/rng.h"
#include "data/decode.h"
#include "data/shard.h"
#include "data/tissue.h"
#include "data/wsi.h"

#define WSI_MAX_MAGS 8
#define WSI_SAMPLE_TRIES 16
#define WSI_HSV_TRIES 8    // tiles read per sample at most while the HSV filter rejects them
#define RNG_TAG_WSI 0x575349ULL // "WSI": stream of the online slide sampler

typedef struct {
    Wsi *wsi;
    TissueMask tissue;
} OnlineSlide;

typedef enum { PART_SHARDS, PART_FILES, PART_WSI } PartKind;

typedef struct {
    PartKind kind;
    int64_t count;
    char *spec;
    // PART_SHARDS
    Shard **shards;
    int nshards;
    int64_t *shard_start; // nshards + 1 cumulative record counts
    // PART_FILES
    char **files;
    int *labels; // labelled sources: the class of each file (-1: none)
    // PART_WSI
    OnlineSlide *slides;
    int nslides;
    int64_t *slide_start; // nslides + 1 cumulative tissue-tile counts (an "epoch" of the slide set)
    double mags[WSI_MAX_MAGS]; // microns per pixel to choose from
    int nmags, size;
    double mpp_range[2]; // continuous resolutions (mpp_range[0] > 0): sampled in this range instead of mags
    int mpp_log;         // 1: log-uniform (each octave equally likely), 0: uniform in microns per pixel
    double min_tissue;
    double context;      // extended-context factor (>= 1): the region read is size * context pixels
    HsvFilter hsv;       // per-tile HSV filter (off unless set)
} Part;

// ---- small string-list helpers --------------------------------------------------------------------
typedef struct { char **v; int64_t n, cap; } StrList;

struct TileSource {
    Part *parts;
    int nparts;
    int64_t *part_start;
    int min_side;
    int64_t max_pixels;           // decode budget (0: the default)
    int labelled, require_labels; // source_open_labelled: lists are `path[,label]`, tiles carry classes
    StrList classes;              // class names, sorted once every part is open
};
static void strlist_push(StrList *l, const char *s) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = dino_realloc(l->v, sizeof(char *) * (size_t)l->cap);
    }
    l->v[l->n++] = strdup(s);
}
static void strlist_free(StrList *l) {
    for (int64_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static void strlist_sort(StrList *l) { if (l->n) qsort(l->v, (size_t)l->n, sizeof(char *), cmp_str); }

static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = dino_malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = 0;
    return s;
}

// Reads a list file: one path per line, '#' comments, relative paths resolved against its folder.
// With `labels` (a labelled set) a line is `path` or `path,label` (label pushed to labels, "" for none;
// a first line "path,label" is a header), and `require` makes a missing label an error.
static int read_list_file(const char *path, StrList *out, StrList *labels, int require, char *err) {
    FILE *f = fopen(path, "r");
    if (!f) {
        dino_seterr(err, "%s: cannot open list: %s", path, strerror(errno));
        return -1;
    }
    char *copy = strdup(path);
    const char *dir = dirname(copy);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = 0;
    for (int lineno = 1; rc == 0 && (len = getline(&line, &cap, f)) >= 0; lineno++) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' ')) line[--len] = 0;
        char *s = line, *label = NULL;
        while (*s == ' ' || *s == '\t') s++;
        if (!*s || *s == '#') continue;
        if (labels) {
            char *comma = strchr(s, ',');
            if (comma) {
                *comma = 0;
                label = trim(comma + 1);
                s = trim(s);
            }
            if (lineno == 1 && label && !strcasecmp(s, "path")) continue; // header
            if (require && (!label || !*label)) {
                dino_seterr(err, "%s:%d: no label (expected `path,label`)", path, lineno);
                rc = -1;
                break;
            }
            strlist_push(labels, label ? label : "");
        }
        if (s[0] == '/') strlist_push(out, s);
        else {
            char *p = join_path(dir, s);
            strlist_push(out, p);
            free(p);
        }
    }
    free(line);
    free(copy);
    fclose(f);
    return rc;
}

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int list_dir_shards(const char *dir, StrList *out, char *err) {
    DIR *d = opendir(dir);
    if (!d) {
        dino_seterr(err, "%s: cannot open folder: %s", dir, strerror(errno));
        return -1;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!has_suffix(e->d_name, ".dtshard")) continue;
        char *p = join_path(dir, e->d_name);
        strlist_push(out, p);
        free(p);
    }
    closedir(d);
    strlist_sort(out);
    return 0;
}

static int walk_images(const char *dir, StrList *out, int depth, char *err) {
    if (depth > 64) {
        dino_seterr(err, "%s: folders nested too deep (a symlink loop?)", dir);
        return -1;
    }
    DIR *d = opendir(dir);
    if (!d) {
        dino_seterr(err, "%s: cannot open folder: %s", dir, strerror(errno));
        return -1;
    }
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue; // ., .., hidden files
        char *p = join_path(dir, e->d_name);
        struct stat st;
        if (stat(p, &st) == 0) {
            if (S_ISDIR(st.st_mode)) rc = walk_images(p, out, depth + 1, err);
            else if (S_ISREG(st.st_mode) && image_path_is_supported(p)) strlist_push(out, p);
        }
        free(p);
    }
    closedir(d);
    return rc;
}

// ---- parts ----------------------------------------------------------------------------------------
static void part_free(Part *p) {
    for (int i = 0; i < p->nshards; i++) shard_close(p->shards[i]);
    free(p->shards);
    free(p->shard_start);
    if (p->files)
        for (int64_t i = 0; i < p->count; i++) free(p->files[i]);
    free(p->files);
    free(p->labels);
    for (int i = 0; i < p->nslides; i++) {
        wsi_close(p->slides[i].wsi);
        tissue_mask_free(&p->slides[i].tissue);
    }
    free(p->slides);
    free(p->slide_start);
    free(p->spec);
}

static int open_shards(Part *p, StrList *paths, const char *what, char *err) {
    if (paths->n == 0) {
        dino_seterr(err, "%s: no shards found (*.dtshard); for a folder of images use folder:%s", what, what);
        return -1;
    }
    p->kind = PART_SHARDS;
    p->shards = dino_calloc((size_t)paths->n, sizeof(Shard *));
    p->shard_start = dino_calloc((size_t)paths->n + 1, sizeof(int64_t));
    for (int64_t i = 0; i < paths->n; i++) {
        Shard *s = shard_open(paths->v[i], err);
        if (!s) return -1;
        p->shards[p->nshards++] = s;
        p->shard_start[i + 1] = p->shard_start[i] + shard_count(s);
    }
    p->count = p->shard_start[p->nshards];
    return 0;
}

static int open_files(Part *p, StrList *paths, const char *what, char *err) {
    if (paths->n == 0) {
        dino_seterr(err, "%s: no images found (.jpg .jpeg .png .tif .tiff)", what);
        return -1;
    }
    // Fail at startup, not an hour into training, when a listed file is missing or unreadable.
    for (int64_t i = 0; i < paths->n; i++)
        if (access(paths->v[i], R_OK) != 0) {
            dino_seterr(err, "%s: listed image %s: %s", what, paths->v[i], strerror(errno));
            return -1;
        }
    p->kind = PART_FILES;
    p->files = paths->v; // take ownership
    p->count = paths->n;
    paths->v = NULL;
    paths->n = paths->cap = 0;
    return 0;
}

// Parses "a/b/c" into doubles.
static int parse_mags(const char *s, double *mags, int *n) {
    *n = 0;
    while (*s) {
        char *end;
        double v = strtod(s, &end);
        if (end == s || !(v > 0) || *n == WSI_MAX_MAGS) return -1;
        mags[(*n)++] = v;
        s = end;
        if (*s == '/') s++;
        else if (*s) return -1;
    }
    return *n > 0 ? 0 : -1;
}

// The options of a wsi: spec into p (no file is touched). Returns the slide-or-list path (malloc'd) or
// NULL with err naming the option.
static char *parse_wsi_options(Part *p, const char *args, double *assume_mpp, char *err) {
    char *copy = strdup(args);
    char *save = NULL, *path = strtok_r(copy, ",", &save);
    double mpp = 0.5;
    int rc = -1;
    *assume_mpp = 0;
    p->kind = PART_WSI;
    p->size = 224;
    p->min_tissue = 0.5;
    p->nmags = 0;
    p->mpp_log = 1;
    p->context = 1;
    hsv_filter_default(&p->hsv);
    if (!path || !*path) {
        dino_seterr(err, "wsi: source needs a slide or a list of slides: wsi:FILE[,mpp=0.5][,size=224]...");
        goto done;
    }
    for (char *kv; (kv = strtok_r(NULL, ",", &save));) {
        char *eq = strchr(kv, '=');
        if (!eq) { dino_seterr(err, "wsi:%s: option '%s' is not key=value", path, kv); goto done; }
        *eq = 0;
        const char *key = kv, *val = eq + 1;
        char *end = NULL;
        int ok = 1;
        if (!strcmp(key, "mpp")) { mpp = strtod(val, &end); ok = *end == 0 && mpp > 0; }
        else if (!strcmp(key, "size")) { long v = strtol(val, &end, 10); ok = *end == 0 && v >= 8 && v <= 8192; p->size = (int)v; }
        else if (!strcmp(key, "mags")) ok = parse_mags(val, p->mags, &p->nmags) == 0;
        else if (!strcmp(key, "mpp_range")) {
            double v[WSI_MAX_MAGS];
            int n = 0;
            ok = parse_mags(val, v, &n) == 0 && n == 2 && v[0] < v[1];
            if (ok) p->mpp_range[0] = v[0], p->mpp_range[1] = v[1];
            if (!ok) { dino_seterr(err, "wsi:%s: mpp_range=%s must be LO/HI microns per pixel with 0 < LO < HI", path, val); goto done; }
        }
        else if (!strcmp(key, "mpp_sampling")) {
            ok = !strcmp(val, "log") || !strcmp(val, "uniform");
            p->mpp_log = !strcmp(val, "log");
            if (!ok) { dino_seterr(err, "wsi:%s: mpp_sampling=%s must be log or uniform", path, val); goto done; }
        }
        else if (!strcmp(key, "min_tissue")) { p->min_tissue = strtod(val, &end); ok = *end == 0 && p->min_tissue >= 0 && p->min_tissue <= 1; }
        else if (!strcmp(key, "assume_mpp")) { *assume_mpp = strtod(val, &end); ok = *end == 0 && *assume_mpp > 0; }
        else { dino_seterr(err, "wsi:%s: unknown option '%s' (known: mpp, size, mags, mpp_range, mpp_sampling, min_tissue, assume_mpp)", path, key); goto done; }
        if (!ok) { dino_seterr(err, "wsi:%s: bad value '%s' for %s", path, val, key); goto done; }
    }
    if (p->mpp_range[0] > 0 && p->nmags > 0) {
        dino_seterr(err, "wsi:%s: mags and mpp_range exclude each other (a list of resolutions or a range)", path);
        goto done;
    }
    if (p->mpp_range[0] > 0) { // the grid count and the mask use the range's geometric middle / low end
        p->mags[0] = sqrt(p->mpp_range[0] * p->mpp_range[1]);
        p->nmags = 1;
    }
    if (p->nmags == 0) { p->mags[0] = mpp; p->nmags = 1; }
    rc = 0;
done:
    if (rc != 0) {
        free(copy);
        return NULL;
    }
    char *out = strdup(path);
    free(copy);
    return out;
}

int source_check_spec(const char *spec, char *err) {
    char *copy = strdup(spec), *save = NULL;
    int rc = 0;
    for (char *piece; rc == 0 && (piece = strtok_r(save ? NULL : copy, "+", &save));) {
        if (strncmp(piece, "wsi:", 4) != 0) continue;
        Part p;
        memset(&p, 0, sizeof p);
        double assume;
        char *path = parse_wsi_options(&p, piece + 4, &assume, err);
        if (!path) rc = -1;
        free(path);
    }
    free(copy);
    return rc;
}

static int open_wsi(Part *p, const char *args, char *err) {
    double assume_mpp = 0;
    int rc = -1;
    StrList slides = {0};
    char *path = parse_wsi_options(p, args, &assume_mpp, err);
    if (!path) return -1;
    if (wsi_is_slide(path)) strlist_push(&slides, path);
    else if (access(path, R_OK) != 0) { dino_seterr(err, "%s: cannot open: %s", path, strerror(errno)); goto done; }
    else if (read_list_file(path, &slides, NULL, 0, err) != 0) goto done;
    if (slides.n == 0) { dino_seterr(err, "%s: the slide list is empty", path); goto done; }
    p->slides = dino_calloc((size_t)slides.n, sizeof(OnlineSlide));
    p->slide_start = dino_calloc((size_t)slides.n + 1, sizeof(int64_t));
    double min_mag = p->mpp_range[0] > 0 ? p->mpp_range[0] : p->mags[0];
    for (int i = 1; i < p->nmags; i++) min_mag = fmin(min_mag, p->mags[i]);
    for (int64_t i = 0; i < slides.n; i++) {
        OnlineSlide *sl = &p->slides[p->nslides];
        sl->wsi = wsi_open(slides.v[i], assume_mpp, err);
        if (!sl->wsi) {
            if (strcmp(slides.v[i], path) != 0 && err) { // name the list too
                char why[DINO_ERRLEN];
                snprintf(why, sizeof why, "%s", err);
                dino_seterr(err, "%s (slide %lld listed in %s)", why, (long long)i + 1, path);
            }
            goto done;
        }
        p->nslides++;
        double side0 = p->size * min_mag / wsi_mpp(sl->wsi); // smallest tile, level-0 pixels
        if (tissue_mask_for_slide(sl->wsi, tissue_mask_downsample(sl->wsi, side0), &sl->tissue, err) != 0) goto done;
        // The slide's weight (and its share of the count) is the number of grid tiles at the first
        // magnification that pass min_tissue: bigger tissue areas are sampled proportionally more.
        double L = p->size * p->mags[0] / wsi_mpp(sl->wsi);
        int64_t nx = (int64_t)(wsi_width(sl->wsi) / L), ny = (int64_t)(wsi_height(sl->wsi) / L), n = 0;
        for (int64_t y = 0; y < ny; y++)
            for (int64_t x = 0; x < nx; x++) n += tissue_fraction(&sl->tissue, x * L, y * L, L, L) >= p->min_tissue;
        if (n == 0 && sl->tissue.tissue_px > 0) n = 1;
        if (n == 0) fprintf(stderr, "dinotrain: warning: %s: no tissue found, slide not sampled\n", slides.v[i]);
        p->slide_start[i + 1] = p->slide_start[i] + n;
    }
    p->count = p->slide_start[p->nslides];
    if (p->count == 0) { dino_seterr(err, "%s: no tissue found on any slide", path); goto done; }
    rc = 0;
done:
    strlist_free(&slides);
    free(path);
    return rc;
}

static int open_part(Part *p, const char *spec, char *err) {
    memset(p, 0, sizeof *p);
    p->spec = strdup(spec);
    StrList paths = {0};
    int rc = -1;
    struct stat st;
    if (!strncmp(spec, "wsi:", 4)) {
        rc = open_wsi(p, spec + 4, err);
    } else if (!strncmp(spec, "folder:", 7)) {
        const char *dir = spec + 7;
        if (stat(dir, &st) != 0) dino_seterr(err, "%s: cannot open folder: %s", dir, strerror(errno));
        else if (!S_ISDIR(st.st_mode)) dino_seterr(err, "%s: folder: expects a folder", dir);
        else if (walk_images(dir, &paths, 0, err) == 0) {
            strlist_sort(&paths);
            rc = open_files(p, &paths, dir, err);
        }
    } else if (!strncmp(spec, "list:", 5)) {
        if (read_list_file(spec + 5, &paths, NULL, 0, err) == 0) rc = open_files(p, &paths, spec + 5, err);
    } else if (!strncmp(spec, "shards:", 7)) {
        if (read_list_file(spec + 7, &paths, NULL, 0, err) == 0) rc = open_shards(p, &paths, spec + 7, err);
    } else if (strpbrk(spec, "*?[")) {
        glob_t g;
        int grc = glob(spec, 0, NULL, &g);
        if (grc == 0) {
            for (size_t i = 0; i < g.gl_pathc; i++) strlist_push(&paths, g.gl_pathv[i]);
            globfree(&g);
            strlist_sort(&paths);
            rc = open_shards(p, &paths, spec, err);
        } else {
            dino_seterr(err, "%s: the pattern matches no file", spec);
            if (grc != GLOB_NOMATCH) globfree(&g);
        }
    } else if (stat(spec, &st) != 0) {
        dino_seterr(err, "%s: cannot open: %s", spec, strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
        if (list_dir_shards(spec, &paths, err) == 0) rc = open_shards(p, &paths, spec, err);
    } else {
        strlist_push(&paths, spec);
        rc = open_shards(p, &paths, spec, err);
        if (rc != 0 && !shard_file_looks_like_shard(spec)) { // say what the user probably meant
            char why[DINO_ERRLEN];
            snprintf(why, sizeof why, "%s", err ? err : "");
            if (wsi_is_slide(spec))
                dino_seterr(err, "%s (a whole-slide image: sample it online with wsi:%s or cut it with dinotile)", why, spec);
            else if (image_path_is_supported(spec))
                dino_seterr(err, "%s (an image file: for plain images use list:FILE or folder:DIR)", why);
        }
    }
    strlist_free(&paths);
    return rc;
}

// ---- labelled image sets -------------------------------------------------------------------------
static int class_id(TileSource *s, const char *name) {
    for (int64_t c = 0; c < s->classes.n; c++)
        if (!strcmp(s->classes.v[c], name)) return (int)c;
    strlist_push(&s->classes, name);
    return (int)s->classes.n - 1;
}

// An image folder (the class of an image: the sub-folder of DIR it lies in) or a `path[,label]` list.
static int open_labelled_part(TileSource *s, Part *p, const char *spec, char *err) {
    memset(p, 0, sizeof *p);
    p->spec = strdup(spec);
    StrList paths = {0}, names = {0}; // names.v[i]: the class of paths.v[i], "" for none
    const char *dir = !strncmp(spec, "folder:", 7) ? spec + 7 : NULL, *list = !strncmp(spec, "list:", 5) ? spec + 5 : NULL;
    struct stat st;
    int rc = -1;
    if (!dir && !list) {
        if (strpbrk(spec, "*?[") || !strncmp(spec, "shards:", 7) || !strncmp(spec, "wsi:", 4)) {
            dino_seterr(err, "%s: a labelled set is an image folder or a list (DIR, folder:DIR, FILE, list:FILE)", spec);
            goto done;
        }
        if (stat(spec, &st) == 0 && S_ISDIR(st.st_mode)) dir = spec;
        else list = spec;
    }
    if (dir) {
        if (stat(dir, &st) != 0) dino_seterr(err, "%s: cannot open folder: %s", dir, strerror(errno));
        else if (!S_ISDIR(st.st_mode)) dino_seterr(err, "%s: folder: expects a folder", dir);
        else if (walk_images(dir, &paths, 0, err) == 0) {
            strlist_sort(&paths);
            size_t k = strlen(dir);
            rc = 0;
            for (int64_t i = 0; i < paths.n && rc == 0; i++) {
                const char *rel = paths.v[i] + k + 1, *slash = strchr(rel, '/');
                char name[1024];
                snprintf(name, sizeof name, "%.*s", slash ? (int)(slash - rel) : 0, rel);
                if (!slash && s->require_labels) {
                    dino_seterr(err, "%s: images directly in the folder have no class (put each class in its own "
                                "sub-folder): %s", dir, paths.v[i]);
                    rc = -1;
                }
                strlist_push(&names, name);
            }
        }
    } else {
        rc = read_list_file(list, &paths, &names, s->require_labels, err);
    }
    if (rc == 0) rc = open_files(p, &paths, dir ? dir : list, err); // takes the paths
    if (rc == 0) {
        p->labels = dino_malloc(sizeof(int) * (size_t)(p->count ? p->count : 1));
        for (int64_t i = 0; i < p->count; i++) p->labels[i] = names.v[i][0] ? class_id(s, names.v[i]) : -1;
    }
done:
    strlist_free(&paths);
    strlist_free(&names);
    return rc;
}

// Class ids in the order of the sorted names.
static void sort_classes(TileSource *s) {
    int64_t C = s->classes.n;
    if (C < 2) return;
    char **old = dino_malloc(sizeof(char *) * (size_t)C);
    memcpy(old, s->classes.v, sizeof(char *) * (size_t)C);
    strlist_sort(&s->classes);
    int *remap = dino_malloc(sizeof(int) * (size_t)C);
    for (int64_t c = 0; c < C; c++)
        for (int64_t k = 0; k < C; k++)
            if (s->classes.v[k] == old[c]) remap[c] = (int)k;
    for (int i = 0; i < s->nparts; i++)
        for (int64_t j = 0; s->parts[i].labels && j < s->parts[i].count; j++)
            if (s->parts[i].labels[j] >= 0) s->parts[i].labels[j] = remap[s->parts[i].labels[j]];
    free(old);
    free(remap);
}

// ---- the interface --------------------------------------------------------------------------------
static TileSource *open_source(const char *spec, int labelled, int require_labels, char *err) {
    if (!spec || !*spec) {
        dino_seterr(err, "empty data source");
        return NULL;
    }
    TileSource *s = dino_calloc(1, sizeof *s);
    s->labelled = labelled;
    s->require_labels = require_labels;
    char *copy = strdup(spec), *save = NULL;
    int nparts = 1;
    for (const char *c = spec; *c; c++) nparts += *c == '+';
    s->parts = dino_calloc((size_t)nparts, sizeof(Part));
    s->part_start = dino_calloc((size_t)nparts + 1, sizeof(int64_t));
    for (char *piece; (piece = strtok_r(s->nparts ? NULL : copy, "+", &save));) {
        Part *p = &s->parts[s->nparts];
        if ((labelled ? open_labelled_part(s, p, piece, err) : open_part(p, piece, err)) != 0) {
            part_free(p);
            free(copy);
            source_close(s);
            return NULL;
        }
        s->nparts++;
        s->part_start[s->nparts] = s->part_start[s->nparts - 1] + s->parts[s->nparts - 1].count;
    }
    free(copy);
    if (s->nparts == 0 || s->part_start[s->nparts] == 0) {
        dino_seterr(err, "%s: the source holds no tiles", spec);
        source_close(s);
        return NULL;
    }
    sort_classes(s);
    return s;
}

TileSource *source_open(const char *spec, char *err) { return open_source(spec, 0, 0, err); }
TileSource *source_open_labelled(const char *spec, int require_labels, char *err) {
    return open_source(spec, 1, require_labels, err);
}

int64_t source_count(const TileSource *s) { return s->part_start[s->nparts]; }
void source_set_min_side(TileSource *s, int min_side) { s->min_side = min_side > 0 ? min_side : 0; }
void source_set_max_pixels(TileSource *s, int64_t max_pixels) { s->max_pixels = max_pixels > 0 ? max_pixels : 0; }
void source_set_context(TileSource *s, double factor) {
    for (int i = 0; i < s->nparts; i++) s->parts[i].context = factor > 1 ? factor : 1;
}
void source_set_hsv_filter(TileSource *s, const HsvFilter *f) {
    for (int i = 0; i < s->nparts; i++) s->parts[i].hsv = *f;
}

// Largest k in [0, n) with start[k] <= i (start is ascending, start[0] = 0).
static int64_t find_bucket(const int64_t *start, int64_t n, int64_t i) {
    int64_t lo = 0, hi = n;
    while (hi - lo > 1) {
        int64_t mid = (lo + hi) / 2;
        if (start[mid] <= i) lo = mid; else hi = mid;
    }
    return lo;
}

// The part holding tile i and the index inside it (i in range).
static const Part *tile_part(const TileSource *s, int64_t i, int64_t *j) {
    int64_t k = find_bucket(s->part_start, s->nparts, i);
    while (k + 1 < s->nparts && s->part_start[k + 1] <= i) k++;
    *j = i - s->part_start[k];
    return &s->parts[k];
}

static int read_shard_tile(const TileSource *s, const Part *p, int64_t i, Image *out, char *err) {
    int64_t k = find_bucket(p->shard_start, p->nshards, i);
    while (k + 1 < p->nshards && p->shard_start[k + 1] <= i) k++; // skip empty shards
    const Shard *sh = p->shards[k];
    int64_t rec = i - p->shard_start[k];
    const uint8_t *payload;
    size_t size;
    if (shard_record(sh, rec, NULL, &payload, &size, err) != 0) return -1;
    char why[DINO_ERRLEN];
    if (decode_image_mem_budget(payload, size, s->min_side, s->max_pixels, out, why) != 0) {
        dino_seterr(err, "%s: record %lld: %s", shard_path(sh), (long long)rec, why);
        return -1;
    }
    return 0;
}

// The resolution of one tile: from the list (one fixed draw order) or the continuous range.
static double draw_mpp(const Part *p, Rng *r) {
    if (p->mpp_range[0] > 0) {
        double u = rng_uniform(r), lo = p->mpp_range[0], hi = p->mpp_range[1];
        return p->mpp_log ? exp(log(lo) + u * (log(hi) - log(lo))) : lo + u * (hi - lo);
    }
    return p->mags[p->nmags > 1 ? rng_below(r, (uint32_t)p->nmags) : 0];
}

// One candidate tile: a resolution, a tissue point as the centre (redrawn while the tissue fraction
// is below min_tissue), then the pixels. Plain tiles (one resolution from the list, no extended
// context) keep the original reader (area/bilinear); sampled resolutions and extended regions are
// resampled over their exact fractional box (wsi_read_region_resampled).
static int read_wsi_candidate(const Part *p, const OnlineSlide *sl, Rng *r, Image *out, TileOrigin *o, char *err) {
    double mpp = draw_mpp(p, r);
    int side = (int)lround(p->size * p->context); // output pixels of the region
    double L = side * mpp / wsi_mpp(sl->wsi);     // its side in level-0 pixels
    double W = (double)wsi_width(sl->wsi), H = (double)wsi_height(sl->wsi);
    double best_x = 0, best_y = 0, best_frac = -1;
    // Uniform over tissue: a tissue point becomes the tile centre; retry while too little tissue.
    for (int t = 0; t < WSI_SAMPLE_TRIES && best_frac < p->min_tissue; t++) {
        double cx, cy;
        if (tissue_sample_point(&sl->tissue, r, &cx, &cy) != 0) break;
        double x0 = fmax(0, fmin(cx - L / 2, W - L)), y0 = fmax(0, fmin(cy - L / 2, H - L));
        double frac = tissue_fraction(&sl->tissue, x0, y0, L, L);
        if (frac > best_frac) { best_frac = frac; best_x = x0; best_y = y0; }
    }
    *o = (TileOrigin){wsi_path(sl->wsi), mpp, best_x, best_y, L};
    if (p->mpp_range[0] > 0 || side != p->size)
        return wsi_read_region_resampled(sl->wsi, best_x, best_y, mpp, side, side, out, NULL, err);
    return wsi_read_tile(sl->wsi, llround(best_x), llround(best_y), mpp, p->size, out, NULL, err);
}

static int read_wsi_tile(const Part *p, int64_t i, uint64_t rng_seed, Image *out, TileOrigin *origin, char *err) {
    int64_t k = find_bucket(p->slide_start, p->nslides, i);
    while (k + 1 < p->nslides && p->slide_start[k + 1] <= i) k++;
    const OnlineSlide *sl = &p->slides[k];
    Rng r = rng_make(rng_seed, RNG_TAG_WSI, (uint64_t)i, 0);
    if (p->hsv.min_fraction <= 0) return read_wsi_candidate(p, sl, &r, out, origin, err);
    // HSV filter: candidates from the same keyed stream until one passes; after WSI_HSV_TRIES the
    // candidate with the largest in-range fraction is kept (a slide with little H&E still yields tiles).
    Image best = {0};
    double best_frac = -1;
    for (int t = 0; t < WSI_HSV_TRIES; t++) {
        Image im;
        TileOrigin o;
        if (read_wsi_candidate(p, sl, &r, &im, &o, err) != 0) {
            image_free(&best);
            return -1;
        }
        double frac = tissue_hsv_fraction(&im, &p->hsv);
        if (frac > best_frac) {
            image_free(&best);
            best = im;
            best_frac = frac;
            *origin = o;
        } else {
            image_free(&im);
        }
        if (best_frac >= p->hsv.min_fraction) break;
    }
    *out = best;
    return 0;
}

int source_read_rgb(TileSource *s, int64_t i, uint64_t rng_seed, Image *out, char *err) {
    return source_read_rgb_origin(s, i, rng_seed, out, NULL, err);
}

int source_read_rgb_origin(TileSource *s, int64_t i, uint64_t rng_seed, Image *out, TileOrigin *origin, char *err) {
    TileOrigin unused;
    if (!origin) origin = &unused;
    *origin = (TileOrigin){0};
    out->px = NULL;
    out->w = out->h = 0;
    if (i < 0 || i >= source_count(s)) {
        dino_seterr(err, "tile index %lld out of range (source has %lld)", (long long)i, (long long)source_count(s));
        return -1;
    }
    int64_t j;
    const Part *p = tile_part(s, i, &j);
    switch (p->kind) {
    case PART_SHARDS: return read_shard_tile(s, p, j, out, err);
    case PART_FILES: return decode_image_file_budget(p->files[j], s->min_side, s->max_pixels, out, err);
    case PART_WSI: return read_wsi_tile(p, j, rng_seed, out, origin, err);
    }
    return -1;
}

void source_close(TileSource *s) {
    if (!s) return;
    for (int i = 0; i < s->nparts; i++) part_free(&s->parts[i]);
    free(s->parts);
    free(s->part_start);
    strlist_free(&s->classes);
    free(s);
}

const char *source_tile_path(const TileSource *s, int64_t i) {
    if (i < 0 || i >= source_count(s)) return NULL;
    int64_t j;
    const Part *p = tile_part(s, i, &j);
    return p->kind == PART_FILES ? p->files[j] : NULL;
}

int source_tile_label(const TileSource *s, int64_t i) {
    if (i < 0 || i >= source_count(s)) return -1;
    int64_t j;
    const Part *p = tile_part(s, i, &j);
    return p->labels ? p->labels[j] : -1;
}

int source_n_classes(const TileSource *s) { return (int)s->classes.n; }
const char *source_class_name(const TileSource *s, int c) {
    return c >= 0 && c < s->classes.n ? s->classes.v[c] : NULL;
}
