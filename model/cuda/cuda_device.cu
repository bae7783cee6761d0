#include <cuda_runtime.h>
#include <stdio.h>

#include "model/cuda/cuda_device.h"

extern "C" int dino_cuda_device_count(void) {
    int n = 0;
    // No driver / no GPU is a normal state on build machines: report 0, clear the sticky error.
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" int dino_cuda_device_name(int dev, char *buf, int len) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, dev) != cudaSuccess) return -1;
    snprintf(buf, (size_t)len, "%s", p.name);
    return 0;
}
