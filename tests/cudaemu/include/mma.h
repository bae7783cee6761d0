// Stand-in for mma.h (tests/cudaemu/): nvcuda::wmma's bf16 16x16x16 fragments with fp32 accumulators,
// the shapes model/cuda/attention_flash.cu uses. load_matrix_sync, store_matrix_sync and mma_sync are
// warp-collective, as in CUDA: all 32 lanes of the warp must call them (the layer checks that like a
// full-mask shuffle: a lane that skips one or a block whose size is not a multiple of 32 is a finding);
// fill_fragment writes the lane's own registers.
//
// The element layout of a fragment is unspecified in CUDA, so this one picks its own: lane l holds the
// elements l*8 .. l*8+7 of the 16x16 tile in row-major order (row l/2, columns (l%2)*8 ..). A kernel may
// therefore touch x[] only uniformly (the same operation on every element, e.g. a scale of an
// accumulator); anything that depends on which row or column x[i] is works here by accident or not at
// all, and differently on a GPU.
//
// Loads and stores act per lane when the lane calls them (then the lanes meet): a load that runs before
// another thread's write to the same shared memory reaches it (a missing __syncthreads / __syncwarp)
// reads stale data here, as it may on a GPU. mma_sync runs once all lanes are there: D = A B + C with the
// bf16 inputs exact in fp32 and the products summed over k in order in fp32, starting from C (tensor
// cores sum in their own order and may truncate: the numerics a GPU must confirm). Pointers must be
// 256-bit aligned and ldm a multiple of 16 bytes, as CUDA requires (a finding otherwise).
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace cudaemu {
[[noreturn]] void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2))); // runtime.cpp
}

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the wmma stand-in models the 16x16x16 shape only");
    static constexpr int num_elements = 8;
    typedef T element_type;
    T x[8];
};

namespace detail {
[[noreturn]] inline void misuse(const char *what, const char *file, int line) {
    ::cudaemu::fatal("%s at %s:%d", what, file, line);
}
inline void check_ptr(const void *p, unsigned ldm, size_t elem, const char *file, int line) {
    if ((uintptr_t)p % 32) misuse("wmma load/store of a pointer that is not 256-bit aligned", file, line);
    if ((ldm * elem) % 16) misuse("wmma load/store with ldm not a multiple of 16 bytes", file, line);
}
inline float to_f(float v) { return v; }
inline float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> inline T from_f(float v);
template <> inline float from_f<float>(float v) { return v; }
template <> inline __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
// (row, col) of element i of this lane
inline int row_of(int lane, int i) { return (lane * 8 + i) / 16; }
inline int col_of(int lane, int i) { return (lane * 8 + i) % 16; }
inline int lane_id() {
    const uint3 t = ::cudaemu::cur_thread->idx;
    const dim3 d = ::cudaemu::cur_block->dim;
    return (int)((t.x + d.x * (t.y + d.y * t.z)) & 31);
}
struct MmaArgs {
    const float *c;
    float *d;
    const __nv_bfloat16 *a, *b;
};
inline void mma_all_lanes(void *const *args, int lanes) {
    float A[16][16], B[16][16], C[16][16];
    for (int l = 0; l < lanes; l++) {
        const MmaArgs *m = (const MmaArgs *)args[l];
        for (int i = 0; i < 8; i++) {
            A[row_of(l, i)][col_of(l, i)] = __bfloat162float(m->a[i]);
            B[row_of(l, i)][col_of(l, i)] = __bfloat162float(m->b[i]);
            C[row_of(l, i)][col_of(l, i)] = m->c[i];
        }
    }
    for (int l = 0; l < lanes; l++) { // all inputs are read before any output is written (d may be c)
        const MmaArgs *m = (const MmaArgs *)args[l];
        float out[8];
        for (int i = 0; i < 8; i++) {
            const int r = row_of(l, i), c = col_of(l, i);
            float acc = C[r][c];
            for (int k = 0; k < 16; k++) acc += A[r][k] * B[k][c];
            out[i] = acc;
        }
        for (int i = 0; i < 8; i++) m->d[i] = out[i];
    }
}
inline void meet(const char *file, int line) { ::cudaemu::warp_collective(nullptr, nullptr, file, line); }
} // namespace detail

// Register writes of the lane alone, as on a GPU (no meeting: a kernel's shared-memory writes before it and
// its next wmma load are then one stretch of a fiber, so a missing barrier between them shows).
template <typename Use, typename T, typename Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout> &f, T v) {
    for (int i = 0; i < 8; i++) f.x[i] = v;
}

// matrix_a / matrix_b: the logical 16x16 tile, element (r, c) at p[r*ldm + c] (row_major) or p[c*ldm + r]
template <typename Use, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout> &f, const T *p, unsigned ldm,
                             const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    static_assert(!std::is_same<Layout, void>::value, "matrix_a/matrix_b fragments carry their layout");
    detail::check_ptr(p, ldm, sizeof(T), file, line);
    const int lane = detail::lane_id();
    for (int i = 0; i < 8; i++) {
        const int r = detail::row_of(lane, i), c = detail::col_of(lane, i);
        f.x[i] = std::is_same<Layout, row_major>::value ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
    }
    detail::meet(file, line);
}
// accumulator: the layout is an argument
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p, unsigned ldm, layout_t lay,
                             const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    detail::check_ptr(p, ldm, sizeof(float), file, line);
    const int lane = detail::lane_id();
    for (int i = 0; i < 8; i++) {
        const int r = detail::row_of(lane, i), c = detail::col_of(lane, i);
        f.x[i] = lay == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
    }
    detail::meet(file, line);
}
inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm, layout_t lay,
                              const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    detail::check_ptr(p, ldm, sizeof(float), file, line);
    const int lane = detail::lane_id();
    for (int i = 0; i < 8; i++) {
        const int r = detail::row_of(lane, i), c = detail::col_of(lane, i);
        (lay == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r]) = f.x[i];
    }
    detail::meet(file, line);
}

// D = A B + C (d may be c)
template <typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA> &a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB> &b,
                     const fragment<accumulator, 16, 16, 16, float> &c, const char *file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
    detail::MmaArgs args{c.x, d.x, a.x, b.x};
    ::cudaemu::warp_collective(detail::mma_all_lanes, &args, file, line);
}

} // namespace wmma
} // namespace nvcuda
