// GPU tests: run when a CUDA device is present, skip cleanly (exit 77) otherwise.
#include "tests/harness.h"
#ifdef DINO_HAVE_CUDA
#include "model/cuda/cuda_device.h"
#endif

TEST(cuda_device_visible) {
#ifndef DINO_HAVE_CUDA
    test_skip("built without CUDA (no nvcc found)");
#else
    int n = dino_cuda_device_count();
    if (n == 0) test_skip("no CUDA device on this machine");
    char name[256];
    CHECK(dino_cuda_device_name(0, name, sizeof name) == 0, "cannot read device 0 properties");
    printf("device 0: %s\n", name);
#endif
}
