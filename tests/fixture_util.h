// Reading the PyTorch-transcription fixtures (tests/make_*_fixtures.py -> tests/fixtures/*.safetensors):
// metadata, typed tensors, the relative error metric, and a ViT's weights and gradients by name
// (test_vit_parity, test_dinov3_vit).
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/safetensors.h"
#include "model/backend.h"
#include "model/params.h"
#include "model/vit.h"
#include "tests/harness.h"

// The fixture's metadata value for key; the test stops when it is missing.
static inline const char *meta_req(const StFile *f, const char *key) {
    const char *v = st_meta(f, key);
    if (!v) {
        test_fail_at(__FILE__, __LINE__, "fixture metadata lacks '%s'", key);
        exit(1);
    }
    return v;
}
static inline int meta_int(const StFile *f, const char *key) { return atoi(meta_req(f, key)); }
static inline float meta_float(const StFile *f, const char *key) { return strtof(meta_req(f, key), NULL); }
static inline double meta_double(const StFile *f, const char *key) { return strtod(meta_req(f, key), NULL); }

// The fixture tensor `name` of dtype dt and `bytes` bytes; NULL (and a failed check) when absent or otherwise.
static inline const StTensor *fixture_tensor(const StFile *f, const char *name, StDtype dt, size_t bytes) {
    const StTensor *t = st_get(f, name);
    CHECK(t != NULL, "fixture lacks tensor %s", name);
    if (!t) return NULL;
    CHECK(t->dtype == dt && t->nbytes == bytes, "%s: expected %zu bytes of dtype %d, got %zu of %d", name, bytes,
          (int)dt, t->nbytes, (int)t->dtype);
    return t->dtype == dt && t->nbytes == bytes ? t : NULL;
}
static inline const StTensor *fixture_f32(const StFile *f, const char *name, size_t numel) {
    return fixture_tensor(f, name, ST_F32, numel * sizeof(float));
}

// max|c - ref| / max|ref|; where ref is all zeros, max|c| itself. NaN in c propagates.
static inline double rel_err(const float *c, const float *ref, size_t n, double *maxabs_out) {
    double maxdiff = 0, maxabs = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)c[i] - (double)ref[i]);
        if (!(d <= maxdiff)) maxdiff = d;
        if (fabs(ref[i]) > maxabs) maxabs = fabs(ref[i]);
    }
    if (maxabs_out) *maxabs_out = maxabs;
    return maxabs > 0 ? maxdiff / maxabs : maxdiff;
}

// Shapes agree up to leading 1s (e.g. mask_token (1,D) vs (D)).
static inline int same_shape_squeezed(const int64_t *a, int na, const int64_t *b, int nb) {
    while (na > 0 && a[0] == 1) a++, na--;
    while (nb > 0 && b[0] == 1) b++, nb--;
    if (na != nb) return 0;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

// The fixture's weights laid out as tab (host, dino_calloc'd), by name both ways: every C tensor is in
// the fixture under the same (reference) name, and every fixture weight (all but in.*, out.*, grad.*)
// is in the table.
static inline float *fixture_weights(const StFile *f, const ParamTable *tab) {
    float *P = dino_calloc(tab->total, sizeof(float));
    for (int i = 0; i < tab->n; i++) {
        const TensorSpec *s = &tab->t[i];
        const StTensor *t = fixture_f32(f, s->name, s->numel);
        if (!t) continue;
        CHECK(same_shape_squeezed(s->shape, s->ndim, t->shape, t->ndim), "%s: shape differs from the reference's",
              s->name);
        memcpy(P + s->offset, t->data, t->nbytes);
    }
    int n_weights = 0;
    for (int i = 0; i < f->n; i++) {
        const char *n = f->t[i].name;
        if (strncmp(n, "in.", 3) == 0 || strncmp(n, "out.", 4) == 0 || strncmp(n, "grad.", 5) == 0) continue;
        n_weights++;
        CHECK(param_find(tab, n) != NULL, "reference tensor %s has no counterpart in the C model", n);
    }
    CHECK(n_weights == tab->n, "the reference has %d tensors, the C model %d", n_weights, tab->n);
    return P;
}

// The gradients G (host, laid out as tab) against the fixture's grad.<name>, each within tol of the
// tensor's largest reference magnitude (which must not be 0). Returns the worst error, its tensor in *worst.
static inline double fixture_check_grads(const StFile *f, const ParamTable *tab, const float *G, const char *what,
                                         double tol, const char **worst) {
    double worst_g = 0;
    *worst = "";
    for (int i = 0; i < tab->n; i++) {
        const TensorSpec *s = &tab->t[i];
        char gname[PARAM_NAME_MAX + 8];
        snprintf(gname, sizeof gname, "grad.%s", s->name);
        const StTensor *t = fixture_f32(f, gname, s->numel);
        if (!t) continue;
        double maxabs, e = rel_err(G + s->offset, t->data, s->numel, &maxabs);
        CHECK(maxabs > 0, "%s: reference gradient is all zeros: the fixture cannot test it", gname);
        CHECK(e <= tol, "%s %s: rel err %.3e > %.0e (max|ref| %.3g)", what, gname, e, tol, maxabs);
        if (!(e <= worst_g)) worst_g = e, *worst = s->name;
    }
    return worst_g;
}

// Opens the ViT fixture at `path` (under the source tree): its config (config_from reads the metadata),
// checked; the ViT built into tab with no prefix; a CPU backend, returned. NULL (the test failed) when the
// file cannot be read. Close with vit_fixture_close.
static inline Backend *vit_fixture_open(const char *path, void (*config_from)(const StFile *, VitConfig *), StFile *f,
                                        VitConfig *cfg, ParamTable *tab, Vit *vit) {
    char err[DINO_ERRLEN] = "";
    if (st_open(f, test_src_path(path), err) != 0) {
        CHECK(0, "%s", err);
        return NULL;
    }
    config_from(f, cfg);
    CHECK(vit_config_check(cfg, err) == 0, "fixture config refused: %s", err);
    param_table_init(tab);
    vit_build(vit, cfg, tab, "");
    return backend_cpu_new();
}
static inline void vit_fixture_close(Backend *be, StFile *f, ParamTable *tab, Vit *vit) {
    vit_free(vit);
    param_table_free(tab);
    backend_free(be);
    st_close(f);
}
