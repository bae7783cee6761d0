// Axial rotary position embedding on the q and k parts of qkv (the official rope_apply): each pair
// (x[j], x[j + Dh/2]) of a head is rotated by the table's angle; the backward applies the transpose.
#include "model/cpu/cpu_ops.h"

// sign +1: x <- x cos + rotate_half(x) sin; sign -1: the transpose, g <- g cos + rotate_half^T(g sin).
static void rope_apply(float *qkv, const float *sin, const float *cos, int B, int T, int N, int H, int Dh, float sign) {
    const int D = H * Dh, half = Dh / 2;
#pragma omp parallel for schedule(static)
    for (int bn = 0; bn < B * N; bn++) {
        const int b = bn / N, n = bn % N;
        float *row = qkv + ((size_t)b * T + (T - N + n)) * 3 * D;
        const float *s = sin + (size_t)n * Dh, *c = cos + (size_t)n * Dh;
        for (int part = 0; part < 2; part++) // q, then k
            for (int h = 0; h < H; h++) {
                float *x = row + (size_t)part * D + (size_t)h * Dh;
                for (int j = 0; j < half; j++) {
                    const float x1 = x[j], x2 = x[j + half];
                    // forward:  y1 = x1 c1 - x2 s1,  y2 = x2 c2 + x1 s2
                    // backward: g1 = y1 c1 + y2 s2,  g2 = y2 c2 - y1 s1   (sign -1)
                    if (sign > 0) {
                        x[j] = x1 * c[j] - x2 * s[j];
                        x[j + half] = x2 * c[j + half] + x1 * s[j + half];
                    } else {
                        x[j] = x1 * c[j] + x2 * s[j + half];
                        x[j + half] = x2 * c[j + half] - x1 * s[j];
                    }
                }
            }
    }
}

void cpu_rope_fwd(Backend *be, float *qkv, const float *sin, const float *cos, int B, int T, int N, int H, int Dh) {
    rope_apply(qkv, sin, cos, B, T, N, H, Dh, 1.0f);
}

void cpu_rope_bwd(Backend *be, float *dqkv, const float *sin, const float *cos, int B, int T, int N, int H, int Dh) {
    rope_apply(dqkv, sin, cos, B, T, N, H, Dh, -1.0f);
}
