// CUDA runtime helpers callable from C. Only present in builds where nvcc was found
// (DINO_HAVE_CUDA); a build without it reports no device.
#pragma once
#ifdef __cplusplus
extern "C" {
#endif
// Number of usable CUDA devices (0 when there is no driver or no GPU). With DINO_REQUIRE_GPU=1 in the
// environment, no device (or a cudaGetDeviceCount error) prints the CUDA error to stderr and exits 1.
int dino_cuda_device_count(void);
// Name of device `dev` into buf; returns 0 or -1.
int dino_cuda_device_name(int dev, char *buf, int len);
#ifdef __cplusplus
}
#endif
