// Stand-in for the CUDA toolkit's cublas_v2.h (tests/cudaemu/): the v2 API is everything in
// cublas_api.h (the real header renames cublasCreate to cublasCreate_v2 and so on for the linker; this
// layer needs no such renaming).
#pragma once
#include <cublas_api.h>
