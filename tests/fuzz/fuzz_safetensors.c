// Fuzz harness: safetensors files (common/safetensors.h). Input: one .safetensors file.
//
// st_open (through an in-memory file), then what the readers of its tensors call: st_get, st_meta,
// export_read_f32 on every float tensor, export_detect and export_infer_config (model/export_names.h).
// Promises checked: every tensor of an opened file has a name, at most 8 dimensions, nbytes = element size x
// its shape, and its bytes inside the file's data section; st_get finds each by its name; tensors do not
// overlap; every metadata key maps to its value.
#include <stdint.h>
#include <string.h>

#include "common/check.h"
#include "common/safetensors.h"
#include "model/export_names.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_init_process();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_memfile(data, size);
    StFile f;
    char err[DINO_ERRLEN] = "";
    if (st_open(&f, path, err) != 0) {
        FUZZ_NOTE("st_open: %s", err);
        FUZZ_CHECK(err[0] != 0, "error without a message");
        return 0;
    }
    FUZZ_CHECK(f.map_len == size, "mapped %zu of %zu bytes", f.map_len, size);
    const uint8_t *base = f.map, *end = base + f.map_len;
    uint64_t hlen;
    memcpy(&hlen, base, 8);
    const uint8_t *data_start = base + 8 + hlen;
    for (int i = 0; i < f.n; i++) {
        const StTensor *t = &f.t[i];
        FUZZ_CHECK(t->name != NULL && t->ndim >= 0 && t->ndim <= 8, "tensor %d", i);
        size_t want = st_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++) {
            FUZZ_CHECK(t->shape[d] >= 0, "tensor '%s': dimension %d is %lld", t->name, d, (long long)t->shape[d]);
            want *= (size_t)t->shape[d];
        }
        FUZZ_CHECK(t->nbytes == want, "tensor '%s': nbytes %zu, shape says %zu", t->name, t->nbytes, want);
        const uint8_t *p = t->data;
        FUZZ_CHECK(p != NULL && p >= data_start && p <= end && t->nbytes <= (size_t)(end - p),
                   "tensor '%s': its bytes lie outside the data section", t->name);
        const StTensor *g = st_get(&f, t->name);
        FUZZ_CHECK(g != NULL && !strcmp(g->name, t->name), "st_get('%s')", t->name);
        for (int k = 0; k < i; k++) {
            const StTensor *u = &f.t[k];
            FUZZ_CHECK(strcmp(u->name, t->name) != 0, "tensor '%s' twice", t->name);
            const uint8_t *q = u->data;
            FUZZ_CHECK(!t->nbytes || !u->nbytes || p + t->nbytes <= q || q + u->nbytes <= p,
                       "tensors '%s' and '%s' overlap", u->name, t->name);
        }
        if ((t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 || t->dtype == ST_F64) &&
            t->nbytes / st_dtype_size(t->dtype) <= ((size_t)64 << 20)) {
            size_t numel = t->nbytes / st_dtype_size(t->dtype);
            float *buf = dino_malloc(sizeof(float) * (numel ? numel : 1));
            FUZZ_CHECK(export_read_f32(t, buf, err) == 0, "export_read_f32('%s'): %s", t->name, err);
            free(buf);
        }
    }
    for (int i = 0; i < f.n_meta; i++) {
        const char *v = st_meta(&f, f.meta_keys[i]);
        FUZZ_CHECK(v != NULL, "st_meta('%s')", f.meta_keys[i]);
    }
    // what an export's reader does next: find the backbone and infer its shape
    ExportNaming naming;
    char prefix[256];
    if (export_detect(&f, path, NULL, &naming, prefix, sizeof prefix, err) == 0) {
        VitConfig cfg;
        if (export_infer_config(&f, path, naming, prefix, 0, &cfg, err) == 0) FUZZ_NOTE("a ViT: width %d, depth %d", cfg.dim, cfg.depth);
        else FUZZ_NOTE("export_infer_config: %s", err);
    } else {
        FUZZ_NOTE("%d tensors; export_detect: %s", f.n, err);
    }
    st_close(&f);
    return 0;
}
