// GPU tests: run when a CUDA device is present, skip cleanly (exit 77) otherwise. With DINO_REQUIRE_GPU=1
// (GPU machines) a missing device or a CUDA build fails instead of skipping.
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/harness.h"
#ifdef DINO_HAVE_CUDA
#include "model/cuda/cuda_device.h"
#endif

static int require_gpu(void) {
    const char *v = getenv("DINO_REQUIRE_GPU");
    return v && strcmp(v, "1") == 0;
}

TEST(cuda_device_visible) {
#ifndef DINO_HAVE_CUDA
    if (require_gpu()) {
        CHECK(0, "DINO_REQUIRE_GPU=1 but this build has no CUDA (nvcc was not found when it was configured)");
        return;
    }
    test_skip("built without CUDA (no nvcc found)");
#else
    int n = dino_cuda_device_count(); // exits 1 with the CUDA error under DINO_REQUIRE_GPU=1
    if (n == 0 && require_gpu()) {
        CHECK(0, "DINO_REQUIRE_GPU=1 but dino_cuda_device_count() returned 0 instead of exiting");
        return;
    }
    if (n == 0) test_skip("no CUDA device on this machine");
    char name[256];
    CHECK(dino_cuda_device_name(0, name, sizeof name) == 0, "cannot read device 0 properties");
    printf("device 0: %s\n", name);
#endif
}

#ifdef DINO_CUDAEMU
// dino_cuda_device_count() in a child with DINO_REQUIRE_GPU=1 and the layer's CUDAEMU_* variable `var`
// set to `val`; returns the child's exit status (a returned count exits 100 + count), its stderr in buf.
typedef struct {
    const char *var, *val;
} EnvSetting;
static void count_with(void *arg) {
    const EnvSetting *e = arg;
    setenv("DINO_REQUIRE_GPU", "1", 1);
    setenv(e->var, e->val, 1);
    int n = dino_cuda_device_count();
    _exit(100 + n);
}
static int count_in_child(const char *var, const char *val, char *buf, size_t cap) {
    EnvSetting e = {var, val};
    return test_run_child(count_with, &e, buf, cap);
}
#endif

// A driver that cannot run this runtime (cudaErrorInsufficientDriver, 35) must fail a run that requires
// a GPU, with the CUDA error text, and stay "no device" (0) for a run that does not.
TEST(require_gpu_fails_on_device_error) {
#ifndef DINO_CUDAEMU
    test_skip("needs the CUDA execution layer (CUDAEMU_DEVICE_ERROR); the real runtime ignores it");
#else
    char out[4096];
    int st = count_in_child("CUDAEMU_DEVICE_ERROR", "35", out, sizeof out);
    CHECK(st == 1, "device error under DINO_REQUIRE_GPU=1: exit status %d, expected 1", st);
    CHECK(strstr(out, "cudaErrorInsufficientDriver") && strstr(out, "CUDA driver version is insufficient") &&
              strstr(out, "DINO_REQUIRE_GPU=1"),
          "stderr lacks the CUDA error name/text: '%s'", out);
    printf("child stderr:\n%s", out);

    st = count_in_child("CUDAEMU_DEVICES", "0", out, sizeof out); // no error, no device
    CHECK(st == 1 && strstr(out, "found no device"), "zero devices under DINO_REQUIRE_GPU=1: exit status %d, stderr '%s'",
          st, out);
    st = count_in_child("CUDAEMU_DEVICES", "1", out, sizeof out); // a device: the count, nothing printed
    CHECK(st == 101 && out[0] == 0, "one device under DINO_REQUIRE_GPU=1: exit status %d, stderr '%s'", st, out);

    // without DINO_REQUIRE_GPU the same error is "no GPU": 0, and the process goes on
    const char *req = getenv("DINO_REQUIRE_GPU");
    char saved[64];
    snprintf(saved, sizeof saved, "%s", req ? req : "");
    unsetenv("DINO_REQUIRE_GPU");
    setenv("CUDAEMU_DEVICE_ERROR", "35", 1);
    int n = dino_cuda_device_count();
    unsetenv("CUDAEMU_DEVICE_ERROR");
    if (req) setenv("DINO_REQUIRE_GPU", saved, 1);
    CHECK(n == 0, "device error without DINO_REQUIRE_GPU: count %d, expected 0", n);
    CHECK(dino_cuda_device_count() > 0, "the layer's device is gone after the error");
#endif
}
