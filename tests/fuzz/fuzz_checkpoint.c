// Fuzz harness: checkpoint state (train/checkpoint.h, docs/checkpoint-format.md). Input: two files,
// separated by FUZZ_SEP (tests/fuzz/fuzz.h): state.json, then tensors.safetensors (absent when there is no
// separator).
//
// Both are written as <dir>/checkpoints/ckpt_000000007/ and read as the trainer does on resume:
// ckpt_open_latest, then every named value with its getter and every tensor with ckpt_read_tensor.
// Promises checked: an opened checkpoint says iteration 7 (its directory's), each value reads back through
// the getter of its type and through no other, and every tensor reads at its own shape.
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "common/check.h"
#include "tests/fuzz/fuzz.h"
#include "train/checkpoint.h"

static char root[1024], ckdir[1200], state_path[1300], tensors_path[1300];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_init_process();
    snprintf(root, sizeof root, "%s/run", fuzz_dir());
    snprintf(ckdir, sizeof ckdir, "%s/checkpoints/ckpt_000000007", root);
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s/checkpoints", root);
    FUZZ_SETUP(mkdir(root, 0755) == 0 && mkdir(tmp, 0755) == 0 && mkdir(ckdir, 0755) == 0, "mkdir");
    snprintf(state_path, sizeof state_path, "%s/state.json", ckdir);
    snprintf(tensors_path, sizeof tensors_path, "%s/tensors.safetensors", ckdir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FuzzPart part[2];
    int n = fuzz_split(data, size, part, 2);
    fuzz_write(state_path, part[0].p, part[0].n);
    if (n > 1) fuzz_write(tensors_path, part[1].p, part[1].n);
    else unlink(tensors_path);

    Ckpt c;
    char err[DINO_ERRLEN] = "";
    int rc = ckpt_open_latest(&c, root, NULL, err);
    FUZZ_CHECK(rc == 1 || rc == -1, "ckpt_open_latest returned %d with one checkpoint directory", rc);
    if (rc != 1) {
        FUZZ_NOTE("ckpt_open_latest: %s", err);
        FUZZ_CHECK(err[0] != 0, "error without a message");
        return 0;
    }
    FUZZ_NOTE("checkpoint: %d values, %d tensors", c.n_values, c.st.n);
    FUZZ_CHECK(c.iteration == 7, "iteration %lld", (long long)c.iteration);
    for (int i = 0; i < c.n_values; i++) {
        const CkptValue *v = &c.values[i];
        FUZZ_CHECK(v->key != NULL, "value %d has no key", i);
        int64_t x;
        double f;
        const char *s = ckpt_get_str(&c, v->key);
        int is_int = ckpt_get_int(&c, v->key, &x, err) == 0, is_float = ckpt_get_float(&c, v->key, &f, err) == 0;
        // the first value of a key is the one the getters find (a key may repeat across sections)
        const CkptValue *first = v;
        for (int k = 0; k < i; k++)
            if (!strcmp(c.values[k].key, v->key)) { first = &c.values[k]; break; }
        FUZZ_CHECK(is_int == (first->type == CKPT_INT) && is_float == (first->type == CKPT_FLOAT) &&
                       (s != NULL) == (first->type == CKPT_STR),
                   "value '%s' of type %d: int %d float %d str %d", v->key, (int)first->type, is_int, is_float, s != NULL);
        if (is_int) FUZZ_CHECK(x == first->i, "'%s'", v->key);
        if (s) FUZZ_CHECK(s == first->s, "'%s'", v->key);
    }
    for (int i = 0; i < c.st.n; i++) {
        const StTensor *t = &c.st.t[i];
        FUZZ_CHECK(t->dtype == ST_F32, "tensor '%s' is not F32", t->name);
        float *dst = dino_malloc(t->nbytes ? t->nbytes : 1);
        FUZZ_CHECK(ckpt_read_tensor(&c, t->name, t->ndim, t->shape, dst, err) == 0, "tensor '%s': %s", t->name, err);
        free(dst);
        FUZZ_CHECK(ckpt_tensor(&c, t->name) != NULL, "tensor '%s' not found", t->name);
    }
    ckpt_close(&c);
    return 0;
}
