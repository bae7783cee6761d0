// Stand-in for cuda_bf16.h (tests/cudaemu/): bf16 as 16 stored bits, converted by round to nearest
// even as __float2bfloat16 does on the device.
#pragma once
#include <cstdint>
#include <cstring>

#include <cuda_runtime.h>

struct __nv_bfloat16 {
    uint16_t x;
};
static inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    __nv_bfloat16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) b.x = (uint16_t)((u >> 16) | 0x40u); // NaN stays a (quiet) NaN
    else b.x = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return b;
}
static inline float __bfloat162float(__nv_bfloat16 b) {
    uint32_t u = (uint32_t)b.x << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
