// Axial rotary position embedding on the q and k parts of qkv (the official rope_apply), one thread per
// rotated pair (x[j], x[j + Dh/2]); the backward applies the transpose. See model/cpu/rope.c.
#include "model/cuda/cuda_ops.cuh"

// transpose 0: x <- x cos + rotate_half(x) sin; 1: g <- g cos + rotate_half^T(g sin)
__global__ void rope_kernel(ActRef qkv, const float *sin, const float *cos, int B, int T, int N, int H, int Dh,
                            int transpose) {
    const int D = H * Dh, half = Dh / 2;
    const size_t n_pairs = (size_t)B * N * 2 * H * half;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n_pairs; e += (size_t)gridDim.x * blockDim.x) {
        const int j = (int)(e % half);
        size_t r = e / half;
        const int h = (int)(r % H);
        r /= H;
        const int part = (int)(r % 2); // q or k
        r /= 2;
        const int n = (int)(r % N), b = (int)(r / N);
        const size_t x = ((size_t)b * T + (T - N + n)) * 3 * D + (size_t)part * D + (size_t)h * Dh; // element of qkv
        const float *s = sin + (size_t)n * Dh, *c = cos + (size_t)n * Dh;
        const float x1 = act_ld(qkv, x + j), x2 = act_ld(qkv, x + j + half);
        if (!transpose) {
            act_st(qkv, x + j, x1 * c[j] - x2 * s[j]);
            act_st(qkv, x + j + half, x2 * c[j + half] + x1 * s[j + half]);
        } else {
            act_st(qkv, x + j, x1 * c[j] + x2 * s[j + half]);
            act_st(qkv, x + j + half, x2 * c[j + half] - x1 * s[j]);
        }
    }
}

static void rope_launch(Backend *be, float *qkv, const float *sin, const float *cos, int B, int T, int N, int H,
                        int Dh, int transpose) {
    const size_t n = (size_t)B * N * 2 * H * (Dh / 2);
    if (!n) return;
    DINO_LAUNCH(rope_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(cuda_act(be, qkv), sin, cos, B, T, N, H, Dh,
                                                                             transpose);
    cudaCheckLaunch();
}

void cuda_rope_fwd(Backend *be, float *qkv, const float *sin, const float *cos, int B, int T, int N, int H, int Dh) {
    CUDA_OP_RANGE("rope_fwd");
    rope_launch(be, qkv, sin, cos, B, T, N, H, Dh, 0);
}

void cuda_rope_bwd(Backend *be, float *dqkv, const float *sin, const float *cos, int B, int T, int N, int H, int Dh) {
    CUDA_OP_RANGE("rope_bwd");
    rope_launch(be, dqkv, sin, cos, B, T, N, H, Dh, 1);
}
