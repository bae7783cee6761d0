// Where the CUDA backend keeps what attention saves for backward. The GEMM path (model/cuda/attention.cu): the probabilities,
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

// The fused (flash) path (model/cuda/attention_flash.cu), the default with bf16 GEMMs for the head dims it
// has kernels for: LSE [B,H,T] in fp32 (base 2), padded to 4 floats so that what follows starts 16-byte
// aligned, then the output O [B,T,H*Dh] in bf16 (backward's D = rowsum(dO * O)). Nothing T x T.
// Head dims with kernels: 64 (ViT-S/B/L/g), 80, 96, 128 (other families), 16 and 32 (the tests' tiny models).
static inline int attention_flash_head_dim(int Dh) {
    return Dh == 16 || Dh == 32 || Dh == 64 || Dh == 80 || Dh == 96 || Dh == 128;
}
static inline size_t attention_flash_lse_floats(int B, int T, int H) { return ((size_t)B * H * T + 3) / 4 * 4; }
static inline size_t attention_saved_floats_flash(int B, int T, int H, int Dh) {
    return attention_flash_lse_floats(B, T, H) + ((size_t)B * T * H * Dh + 1) / 2;
}
