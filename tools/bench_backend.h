// The benchmarks' shared opening: a backend by name (model/backend_open.h) and, on cuda, the card's
// measured dense bf16 matmul rate (the MFU denominator). Header-only: each tool is one program.
#pragma once
#include <string.h>

#include "model/backend.h"
#include "model/backend_open.h"
#ifdef DINO_HAVE_CUDA
#include "model/cuda/backend_cuda.h"
#endif

// Returns the backend, or NULL with err set (unknown name, no CUDA in this build, no device).
// *device: the device's name ("cpu" on the CPU); *peak: TFLOP/s when measure_peak on cuda, else -1.
static inline Backend *bench_open_backend(const char *name, int measure_peak, const char **device, double *peak,
                                          char *err) {
    *device = "cpu";
    *peak = -1;
    Backend *be = backend_open(name, err);
#ifdef DINO_HAVE_CUDA
    if (be && strcmp(be->name, "cuda") == 0) {
        *device = backend_cuda_device_name(be);
        if (measure_peak) *peak = backend_cuda_measure_bf16_tflops(be, 8192, 20);
    }
#else
    (void)measure_peak;
#endif
    return be;
}
