// A backend by name, for the programs: "cpu", "cuda" (device 0), or "auto" (cuda when this build has it
// and a device is visible, else cpu).
#include "model/backend_open.h"

#include <string.h>

#include "common/check.h"
#ifdef DINO_HAVE_CUDA
#include "model/cuda/backend_cuda.h"
#include "model/cuda/cuda_device.h"
#endif

Backend *backend_open(const char *name, char *err) {
    if (strcmp(name, "cpu") == 0) return backend_cpu_new();
    if (strcmp(name, "auto") == 0) {
#ifdef DINO_HAVE_CUDA
        if (dino_cuda_device_count() > 0) return backend_open("cuda", err);
#endif
        return backend_cpu_new();
    }
    if (strcmp(name, "cuda") != 0) {
        dino_seterr(err, "unknown backend '%s' (cpu, cuda or auto)", name);
        return NULL;
    }
#ifdef DINO_HAVE_CUDA
    if (dino_cuda_device_count() == 0) {
        dino_seterr(err, "backend 'cuda': no CUDA device is visible (no GPU, no driver, or CUDA_VISIBLE_DEVICES is "
                         "empty); use the cpu backend");
        return NULL;
    }
    char e2[DINO_ERRLEN];
    Backend *be = backend_cuda_new(0, e2);
    if (!be) dino_seterr(err, "backend 'cuda': %s", e2);
    return be;
#else
    dino_seterr(err, "backend 'cuda': this build has no CUDA support (nvcc was not found when it was configured)");
    return NULL;
#endif
}
