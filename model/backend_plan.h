// A backend that allocates nothing real: for planning how much device memory a configuration needs
// (dinotrain --plan-memory). Allocations reserve address space and are counted; to_device, copy and
// zero do nothing; compute ops must not be called (the numbers would be meaningless).
#pragma once
#include <stddef.h>

#include "model/backend.h"

#ifdef __cplusplus
extern "C" {
#endif
// cuda_layout: the buffers the CUDA backend sizes itself (saved attention probabilities: bf16) as it
// does; 0: as the CPU backend. Free with backend_free.
Backend *backend_plan_new(int cuda_layout);
size_t backend_plan_live_bytes(const Backend *be); // bytes allocated and not released
#ifdef __cplusplus
}
#endif
