// Labelled tile sets for evaluation (k-NN, linear probe: dinoeval, the trainer's periodic k-NN) and
// embedding (dinoembed): the image paths of a labelled source (data/source.h, source_open_labelled)
// with their classes, split into train and test, aligned to another set's classes.
#pragma once
#include <stdint.h>

typedef struct {
    char **paths;   // n image paths
    int *labels;    // n class ids (-1 when unlabelled)
    int n;
    char **classes; // n_classes class names (sorted; ids index this)
    int n_classes;
} TileSet;

// Opens a set of tiles (the spec forms of source_open_labelled: a folder with one sub-folder per
// class, a `path[,label]` list, folder:DIR, list:FILE). need_labels: every tile must have a class.
// Returns 0, or -1 with err naming the file.
int tileset_open(TileSet *s, const char *spec, int need_labels, char *err);
// Uses `classes` (from the training set) as the class list of s (labels remapped; a class unknown
// to `classes` is an error).
int tileset_align_classes(TileSet *s, char **classes, int n_classes, char *err);
// Splits s into train and test: in every class, a fraction `test_fraction` of its tiles (at least one
// when the class has two or more) go to test, chosen by a permutation keyed by (seed, class).
void tileset_split(const TileSet *s, double test_fraction, uint64_t seed, TileSet *train, TileSet *test);
void tileset_free(TileSet *s);
