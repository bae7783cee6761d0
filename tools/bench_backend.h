// The benchmarks' shared opening: a backend by name (cpu, or cuda on device 0) and, on cuda, the
// card's measured dense bf16 matmul rate (the MFU denominator). Header-only: each tool is one program.
#pragma once
#include <string.h>

#include "common/check.h"
#include "model/backend.h"
#ifdef DINO_HAVE_CUDA
#include "model/cuda/backend_cuda.h"
#endif

// Returns the backend, or NULL with err set (unknown name, no CUDA in this build, no device).
// *device: the device's name ("cpu" on the CPU); *peak: TFLOP/s when measure_peak on cuda, else -1.
static inline Backend *bench_open_backend(const char *name, int measure_peak, const char **device, double *peak,
                                          char *err) {
    *device = "cpu";
    *peak = -1;
    if (strcmp(name, "cpu") == 0) return backend_cpu_new();
    if (strcmp(name, "cuda") != 0) {
        dino_seterr(err, "unknown backend '%s' (cpu or cuda)", name);
        return NULL;
    }
#ifdef DINO_HAVE_CUDA
    Backend *be = backend_cuda_new(0, err);
    if (!be) return NULL;
    *device = backend_cuda_device_name(be);
    if (measure_peak) *peak = backend_cuda_measure_bf16_tflops(be, 8192, 20);
    return be;
#else
    (void)measure_peak;
    dino_seterr(err, "this build has no CUDA (nvcc was not found at configure time)");
    return NULL;
#endif
}
