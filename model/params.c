#include "model/params.h"

#include <stdio.h>
#include <string.h>

#include "common/check.h"

void param_table_init(ParamTable *tab) { memset(tab, 0, sizeof *tab); }

void param_table_free(ParamTable *tab) {
    free(tab->t);
    memset(tab, 0, sizeof *tab);
}

size_t param_add(ParamTable *tab, const char *name, ParamGroup group, int layer_id, int ndim, const int64_t *shape) {
    DINO_ASSERT(ndim >= 1 && ndim <= 4, "param_add %s: ndim %d", name, ndim);
    DINO_ASSERT(strlen(name) < PARAM_NAME_MAX, "param_add: name too long: %s", name);
    DINO_ASSERT(!param_find(tab, name), "param_add: duplicate tensor %s", name);
    if (tab->n == tab->cap) {
        tab->cap = tab->cap ? 2 * tab->cap : 64;
        tab->t = dino_realloc(tab->t, sizeof(TensorSpec) * (size_t)tab->cap);
    }
    TensorSpec *s = &tab->t[tab->n++];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->ndim = ndim;
    s->numel = 1;
    for (int i = 0; i < ndim; i++) {
        DINO_ASSERT(shape[i] > 0, "param_add %s: bad shape", name);
        s->shape[i] = shape[i];
        s->numel *= (size_t)shape[i];
    }
    s->offset = tab->total;
    s->group = group;
    s->layer_id = layer_id;
    s->lr_mult = 1.0f;
    s->wd_mult = 1.0f;
    tab->total += (s->numel + PARAM_ALIGN - 1) / PARAM_ALIGN * PARAM_ALIGN;
    return s->offset;
}

const TensorSpec *param_find(const ParamTable *tab, const char *name) {
    for (int i = 0; i < tab->n; i++)
        if (strcmp(tab->t[i].name, name) == 0) return &tab->t[i];
    return NULL;
}
