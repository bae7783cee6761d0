#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cuda/cuda_device.h"

extern "C" int dino_cuda_device_count(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaSuccess && n > 0) return n;
    // DINO_REQUIRE_GPU=1 (GPU machines, tools/gpu_check.sh): no device is an error, else a driver that
    // cannot run this runtime would turn every GPU test into a skip that looks green.
    const char *req = getenv("DINO_REQUIRE_GPU");
    if (req && strcmp(req, "1") == 0) {
        if (e != cudaSuccess)
            fprintf(stderr,
                    "cuda_device: DINO_REQUIRE_GPU=1 but cudaGetDeviceCount failed: %s: %s\n"
                    "  hint: nvidia-smi should list the GPU, the driver must support the CUDA runtime this was "
                    "built with (nvcc --version), and CUDA_VISIBLE_DEVICES, if set, must name a device\n",
                    cudaGetErrorName(e), cudaGetErrorString(e));
        else
            fprintf(stderr, "cuda_device: DINO_REQUIRE_GPU=1 but cudaGetDeviceCount found no device\n"
                            "  hint: check nvidia-smi and CUDA_VISIBLE_DEVICES\n");
        exit(1);
    }
    // No driver / no GPU is a normal state on build machines: report 0, clear the sticky error.
    if (e != cudaSuccess) cudaGetLastError();
    return 0;
}

extern "C" int dino_cuda_device_name(int dev, char *buf, int len) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, dev) != cudaSuccess) return -1;
    snprintf(buf, (size_t)len, "%s", p.name);
    return 0;
}
