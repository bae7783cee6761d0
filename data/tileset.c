// Labelled tile sets: see tileset.h. Listing is data/source.c's; this file keeps the set's arithmetic.
#include "data/tileset.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/rng.h"
#include "data/source.h"

static char **copy_classes(char *const *classes, int n) {
    char **out = dino_malloc(sizeof(char *) * (size_t)(n ? n : 1));
    for (int c = 0; c < n; c++) out[c] = strdup(classes[c]);
    return out;
}

int tileset_open(TileSet *s, const char *spec, int need_labels, char *err) {
    memset(s, 0, sizeof *s);
    TileSource *src = source_open_labelled(spec, need_labels, err);
    if (!src) return -1;
    int64_t n = source_count(src);
    if (n > INT32_MAX) {
        dino_seterr(err, "%s: %lld tiles, more than a tile set holds", spec, (long long)n);
        source_close(src);
        return -1;
    }
    s->n = (int)n;
    s->paths = dino_malloc(sizeof(char *) * (size_t)n);
    s->labels = dino_malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < s->n; i++) {
        s->paths[i] = strdup(source_tile_path(src, i));
        s->labels[i] = source_tile_label(src, i);
    }
    s->n_classes = source_n_classes(src);
    s->classes = dino_malloc(sizeof(char *) * (size_t)(s->n_classes ? s->n_classes : 1));
    for (int c = 0; c < s->n_classes; c++) s->classes[c] = strdup(source_class_name(src, c));
    source_close(src);
    return 0;
}

int tileset_align_classes(TileSet *s, char **classes, int n_classes, char *err) {
    for (int i = 0; i < s->n; i++) {
        if (s->labels[i] < 0) continue;
        const char *name = s->classes[s->labels[i]];
        int k = -1;
        for (int c = 0; c < n_classes; c++)
            if (!strcmp(classes[c], name)) k = c;
        if (k < 0) {
            dino_seterr(err, "%s: class '%s' does not occur in the training set", s->paths[i], name);
            return -1;
        }
        s->labels[i] = k;
    }
    for (int c = 0; c < s->n_classes; c++) free(s->classes[c]);
    free(s->classes);
    s->classes = copy_classes(classes, n_classes);
    s->n_classes = n_classes;
    return 0;
}

static void add(TileSet *s, const char *path, int label, int *cap) {
    if (s->n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        s->paths = dino_realloc(s->paths, sizeof(char *) * (size_t)*cap);
        s->labels = dino_realloc(s->labels, sizeof(int) * (size_t)*cap);
    }
    s->paths[s->n] = strdup(path);
    s->labels[s->n++] = label;
}

void tileset_split(const TileSet *s, double test_fraction, uint64_t seed, TileSet *train, TileSet *test) {
    memset(train, 0, sizeof *train);
    memset(test, 0, sizeof *test);
    int cap_tr = 0, cap_te = 0;
    int *members = dino_malloc(sizeof(int) * (size_t)s->n), *perm = dino_malloc(sizeof(int) * (size_t)s->n);
    char *to_test = dino_calloc((size_t)s->n, 1);
    for (int c = -1; c < s->n_classes; c++) {
        int m = 0;
        for (int i = 0; i < s->n; i++)
            if (s->labels[i] == c) members[m++] = i;
        if (!m) continue;
        int k = (int)floor(test_fraction * m + 0.5);
        if (k == 0 && m >= 2 && test_fraction > 0) k = 1;
        if (k >= m && m >= 2) k = m - 1;
        Rng r = rng_make(seed, 0x73706c6974ULL, (uint64_t)(c + 1), 0); // "split", per class
        rng_permutation(&r, perm, m);
        for (int j = 0; j < k; j++) to_test[members[perm[j]]] = 1;
    }
    for (int i = 0; i < s->n; i++) {
        if (to_test[i]) add(test, s->paths[i], s->labels[i], &cap_te);
        else add(train, s->paths[i], s->labels[i], &cap_tr);
    }
    train->n_classes = test->n_classes = s->n_classes;
    train->classes = copy_classes(s->classes, s->n_classes);
    test->classes = copy_classes(s->classes, s->n_classes);
    free(members);
    free(perm);
    free(to_test);
}

void tileset_free(TileSet *s) {
    for (int i = 0; i < s->n; i++) free(s->paths[i]);
    for (int c = 0; c < s->n_classes; c++) free(s->classes[c]);
    free(s->paths);
    free(s->labels);
    free(s->classes);
    memset(s, 0, sizeof *s);
}
