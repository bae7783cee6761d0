// Deterministic block reductions for the objective's kernels (head_ops.cu, loss_ops.cu): a warp
// butterfly (every lane ends with the same bits) then the warps' results combined by the first warp in
// warp order. The pairing depends only on blockDim, never on timing, so results repeat bit for bit.
// Every thread of the block must call these (they synchronize) and gets the block's result.
#pragma once
#include <cuda_runtime.h>
#include <float.h>

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename T> __device__ __forceinline__ T warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) {
        T u = __shfl_xor_sync(0xffffffffu, v, o);
        v = u > v ? u : v;
    }
    return v;
}

// sh: 32 elements of shared memory owned by the caller (one buffer per concurrent reduction value).
template <typename T> __device__ T block_sum(T v, T *sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads(); // sh may still be read by a previous call
    if (lane == 0) sh[w] = v;
    __syncthreads();
    return warp_sum(lane < nw ? sh[lane] : (T)0);
}
template <typename T> __device__ T block_max(T v, T *sh, T lowest) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    return warp_max(lane < nw ? sh[lane] : lowest);
}
