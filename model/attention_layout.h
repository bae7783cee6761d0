// Where the CUDA backend keeps the attention probabilities it saves for backward (model/cuda/attention.cu):
// one T x T block per (image, head), blocks rounded up to 16 bytes (4 fp32 or 8 bf16 elements) so that
// each block's base suits the batched GEMMs' pointer arrays; bf16 elements with bf16 GEMMs. Shared with
// the memory plan (model/backend_plan.c), which counts the CUDA backend's bytes on any machine.
#pragma once
#include <stddef.h>

static inline long long attention_block_elems(int T, int bf16) {
    const long long a = bf16 ? 8 : 4;
    return ((long long)T * T + a - 1) / a * a;
}
// The size of `saved` in floats (bf16 elements are half a float each).
static inline size_t attention_saved_floats_cuda(int B, int T, int H, int bf16) {
    const size_t n = (size_t)B * H * (size_t)attention_block_elems(T, bf16);
    return bf16 ? (n + 1) / 2 : n;
}
