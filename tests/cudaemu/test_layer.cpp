// Self-tests of the CUDA execution layer (tests/cudaemu/): kernels written here run under it and must
// give CUDA's results, and each kind of bug the layer claims to catch is shown caught: the faulty kernel
// or call runs in a child process, which must end with the layer's exit status (3) and message.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "tests/harness.h"

#define CK(call) CHECK((call) == cudaSuccess, "%s failed", #call)

// Runs fn in a child process (the layer's findings end the process) with stderr captured.
template <typename F> static int in_child(F fn, std::string *err) {
    static char buf[16384];
    int st = test_run_child(
        [](void *f) {
            (*(F *)f)();
            cudaDeviceSynchronize();
        },
        &fn, buf, sizeof buf);
    *err = buf;
    return st;
}

// The child must fail with `status` (3: the layer's findings) and say `needle`.
template <typename F> static void expect_finding(const char *what, const char *needle, F fn, int status = 3) {
    std::string err;
    int st = in_child(fn, &err);
    const char *nl = strchr(err.c_str(), '\n'), *hit = strstr(err.c_str(), needle);
    printf("  %-44s -> exit %d: %.*s\n", what, st, nl ? (int)(nl - err.c_str()) : (int)err.size(), err.c_str());
    CHECK(st == status && hit, "%s: expected \"%s\" and exit %d, got exit %d", what, needle, status, st);
}

// ---- kernels ------------------------------------------------------------------------------------------

__device__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// out[b] = sum of x over block b (any block size that is a multiple of 32): shuffles + shared memory
__global__ void block_sum_kernel(float *out, const float *x, int n) {
    __shared__ float part[32];
    const int i = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    float v = i < n ? x[i] : 0.0f;
    v = warp_sum(v);
    if (lane == 0) part[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) out[blockIdx.x] = v;
    }
}

// the same with the barrier left out: warp 0 may read part[] before the other warps wrote it
__global__ void block_sum_racy_kernel(float *out, const float *x, int n) {
    __shared__ float part[32];
    const int i = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    float v = i < n ? x[i] : 0.0f;
    v = warp_sum(v);
    if (lane == 0) part[w] = v;
    if (w == 0) {
        v = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) out[blockIdx.x] = v;
    }
}

__global__ void divergent_barrier_kernel(float *x) {
    if (threadIdx.x >= 40) return;
    __syncthreads();
    x[threadIdx.x] = 1.0f;
}

__global__ void two_barriers_kernel(float *x) {
    if (threadIdx.x & 1) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    x[threadIdx.x] = 1.0f;
}

__global__ void partial_warp_shuffle_kernel(float *x) { x[threadIdx.x] = warp_sum(x[threadIdx.x]); }

__global__ void exited_lane_shuffle_kernel(float *x) {
    if (threadIdx.x == 7) return;
    x[threadIdx.x] = warp_sum(x[threadIdx.x]);
}

__global__ void vote_kernel(unsigned *out, const float *x) {
    const unsigned b = __ballot_sync(0xffffffffu, x[threadIdx.x] > 0.0f);
    const int any = __any_sync(0xffffffffu, x[threadIdx.x] > 0.0f), all = __all_sync(0xffffffffu, x[threadIdx.x] > 0.0f);
    const float up = __shfl_up_sync(0xffffffffu, x[threadIdx.x], 1), down = __shfl_down_sync(0xffffffffu, x[threadIdx.x], 2);
    const float idx = __shfl_sync(0xffffffffu, x[threadIdx.x], 5);
    out[threadIdx.x * 6 + 0] = b, out[threadIdx.x * 6 + 1] = (unsigned)any, out[threadIdx.x * 6 + 2] = (unsigned)all;
    out[threadIdx.x * 6 + 3] = (unsigned)up, out[threadIdx.x * 6 + 4] = (unsigned)down, out[threadIdx.x * 6 + 5] = (unsigned)idx;
}

__global__ void index_kernel(int *out, int nx, int ny) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x < nx && y < ny) out[y * nx + x] = y * 1000 + x + (int)(gridDim.x * 0) + (int)(blockDim.z - 1);
}

__global__ void overrun_kernel(float *x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) x[i] = 1.0f; // <= : one past the end
}

__global__ void scale_kernel(float *x, float a, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= a;
}

// wmma (the <mma.h> stand-in): each warp w of the block computes D_w = A_w B_w + C_w on 16x16 tiles in
// global memory (A row-major, B column-major, C and D row-major, tile w at offset 256 w), then stores D
// once more column-major into Dt. Staged through shared memory with a __syncwarp, as kernels do.
__global__ void wmma_kernel(float *D, float *Dt, const __nv_bfloat16 *A, const __nv_bfloat16 *B, const float *C) {
    using namespace nvcuda;
    __shared__ __align__(32) float tile[4][256];
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    for (int i = lane; i < 256; i += 32) tile[w][i] = C[w * 256 + i];
    __syncwarp();
    wmma::load_matrix_sync(a, A + w * 256, 16);
    wmma::load_matrix_sync(b, B + w * 256, 16);
    wmma::load_matrix_sync(c, tile[w], 16, wmma::mem_row_major);
    wmma::mma_sync(c, a, b, c);
    wmma::store_matrix_sync(D + w * 256, c, 16, wmma::mem_row_major);
    wmma::store_matrix_sync(Dt + w * 256, c, 16, wmma::mem_col_major);
}

// a wmma load that only half of the warp reaches
__global__ void wmma_divergent_kernel(const __nv_bfloat16 *A) {
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
    if (threadIdx.x < 16) wmma::load_matrix_sync(a, A, 16);
}

// a wmma load by every thread (in a block whose size is not a multiple of 32, the last warp is partial)
__global__ void wmma_load_kernel(const __nv_bfloat16 *A) {
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
    wmma::load_matrix_sync(a, A, 16);
}

// a wmma load from a pointer 16 bytes past a 256-bit boundary
__global__ void wmma_misaligned_kernel(const __nv_bfloat16 *A) {
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
    wmma::load_matrix_sync(a, A + 8, 16);
}

// ---- results --------------------------------------------------------------------------------------------

static float *upload(const float *h, int n) {
    float *d;
    cudaMalloc(&d, sizeof(float) * n);
    cudaMemcpy(d, h, sizeof(float) * n, cudaMemcpyHostToDevice);
    return d;
}

TEST(block_reduction_shuffles_and_barrier) {
    const int n = 5000, bs = 256, nb = (n + bs - 1) / bs;
    float *h = (float *)malloc(sizeof(float) * n), out[32];
    for (int i = 0; i < n; i++) h[i] = (float)(i % 17) - 8.0f;
    float *x = upload(h, n), *o;
    CK(cudaMalloc(&o, sizeof(float) * nb));
    DINO_LAUNCH(block_sum_kernel, nb, bs, 0, 0)(o, x, n);
    CK(cudaGetLastError());
    CK(cudaMemcpy(out, o, sizeof(float) * nb, cudaMemcpyDeviceToHost));
    for (int b = 0; b < nb; b++) {
        float want = 0;
        for (int i = b * bs; i < n && i < (b + 1) * bs; i++) want += h[i];
        CHECK(out[b] == want, "block %d: sum %g, expected %g", b, out[b], want);
    }
    cudaFree(x), cudaFree(o), free(h);
}

TEST(indices_2d_grid_and_votes) {
    const int nx = 70, ny = 45;
    int *d, *h = (int *)malloc(sizeof(int) * nx * ny);
    CK(cudaMalloc(&d, sizeof(int) * nx * ny));
    DINO_LAUNCH(index_kernel, dim3(3, 6), dim3(32, 8), 0, 0)(d, nx, ny);
    CK(cudaMemcpy(h, d, sizeof(int) * nx * ny, cudaMemcpyDeviceToHost));
    for (int y = 0; y < ny; y++)
        for (int x = 0; x < nx; x++) CHECK(h[y * nx + x] == y * 1000 + x, "index (%d,%d): %d", x, y, h[y * nx + x]);
    cudaFree(d), free(h);
    float xv[32];
    for (int i = 0; i < 32; i++) xv[i] = (i % 3 == 0) ? (float)i : -1.0f;
    float *x = upload(xv, 32);
    unsigned *o, r[32 * 6];
    CK(cudaMalloc(&o, sizeof r));
    DINO_LAUNCH(vote_kernel, 1, 32, 0, 0)(o, x);
    CK(cudaMemcpy(r, o, sizeof r, cudaMemcpyDeviceToHost));
    unsigned ballot = 0;
    for (int i = 0; i < 32; i++) ballot |= (unsigned)(xv[i] > 0) << i;
    for (int i = 0; i < 32; i++) {
        CHECK(r[i * 6] == ballot && r[i * 6 + 1] == 1 && r[i * 6 + 2] == 0, "lane %d: ballot/any/all", i);
        CHECK(r[i * 6 + 3] == (unsigned)(i >= 1 ? xv[i - 1] : xv[i]), "lane %d: shfl_up", i);
        CHECK(r[i * 6 + 4] == (unsigned)(i + 2 < 32 ? xv[i + 2] : xv[i]), "lane %d: shfl_down", i);
        CHECK(r[i * 6 + 5] == (unsigned)xv[5], "lane %d: shfl", i);
    }
    cudaFree(x), cudaFree(o);
}

TEST(finds_missing_barrier) {
    // with the barrier the block sum is right in every thread order; without it warp 0 reads slots the
    // other warps have not written yet (their values, or the previous block's, or nothing)
    const int n = 4096, bs = 1024, nb = n / bs;
    float *h = (float *)malloc(sizeof(float) * n);
    for (int i = 0; i < n; i++) h[i] = 1.0f + (float)(i % 5);
    float *x = upload(h, n), *o, out[4];
    CK(cudaMalloc(&o, sizeof(float) * nb));
    DINO_LAUNCH(block_sum_racy_kernel, nb, bs, 0, 0)(o, x, n);
    CK(cudaMemcpy(out, o, sizeof out, cudaMemcpyDeviceToHost));
    int wrong = 0;
    for (int b = 0; b < nb; b++) {
        float want = 0;
        for (int i = b * bs; i < (b + 1) * bs; i++) want += h[i];
        wrong += out[b] != want;
    }
    printf("  racy block sum: %d of %d blocks wrong\n", wrong, nb);
    CHECK(wrong > 0, "the missing __syncthreads went unnoticed: every block sum came out right");
    cudaFree(x), cudaFree(o), free(h);
}

TEST(finds_divergent_barriers_and_bad_shuffles) {
    float *x;
    CK(cudaMalloc(&x, sizeof(float) * 1024));
    expect_finding("barrier after some threads returned", "divergent code",
                   [&] { DINO_LAUNCH(divergent_barrier_kernel, 1, 64, 0, 0)(x); });
    expect_finding("threads at two different barriers", "different barriers",
                   [&] { DINO_LAUNCH(two_barriers_kernel, 1, 64, 0, 0)(x); });
    expect_finding("full-mask shuffle in a 48-thread block", "does not exist",
                   [&] { DINO_LAUNCH(partial_warp_shuffle_kernel, 1, 48, 0, 0)(x); });
    expect_finding("shuffle naming a lane that returned", "already returned",
                   [&] { DINO_LAUNCH(exited_lane_shuffle_kernel, 1, 32, 0, 0)(x); });
    cudaFree(x);
}

TEST(launch_limits) {
    float *x;
    CK(cudaMalloc(&x, sizeof(float) * 16));
    struct {
        dim3 g, b;
        size_t smem;
    } bad[] = {{dim3(1), dim3(1025), 0},        {dim3(1, 65536), dim3(32), 0}, {dim3(1, 1, 65536), dim3(32), 0},
               {dim3(0), dim3(32), 0},          {dim3(1), dim3(32, 32, 2), 0}, {dim3(1), dim3(1, 1, 65), 0},
               {dim3(1), dim3(32), 49 << 10},   {dim3(1), dim3(32), 228 << 10}};
    for (auto &c : bad) {
        DINO_LAUNCH(scale_kernel, c.g, c.b, c.smem, 0)(x, 2.0f, 16);
        cudaError_t e = cudaGetLastError();
        CHECK(e == cudaErrorInvalidConfiguration, "grid (%u,%u,%u) block (%u,%u,%u) smem %zu: %s", c.g.x, c.g.y,
              c.g.z, c.b.x, c.b.y, c.b.z, c.smem, cudaGetErrorString(e));
    }
    // at the limits (each launch small enough to run quickly)
    DINO_LAUNCH(scale_kernel, dim3(1, 65535), dim3(1), 48 << 10, 0)(x, 2.0f, 16);
    CK(cudaGetLastError());
    DINO_LAUNCH(scale_kernel, dim3(1, 1, 65535), dim3(1), 0, 0)(x, 2.0f, 16);
    CK(cudaGetLastError());
    DINO_LAUNCH(scale_kernel, dim3(1), dim3(1024), 0, 0)(x, 2.0f, 16);
    CK(cudaGetLastError());
    DINO_LAUNCH(scale_kernel, dim3(1), dim3(16, 1, 64), 0, 0)(x, 2.0f, 16);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    cudaFree(x);
}

TEST(out_of_bounds_device_access_caught) {
#if defined(__SANITIZE_ADDRESS__)
    expect_finding("kernel writes one past its buffer", "heap-buffer-overflow", [] {
        float *x;
        cudaMalloc(&x, sizeof(float) * 100);
        DINO_LAUNCH(overrun_kernel, 1, 128, 0, 0)(x, 100);
        cudaDeviceSynchronize();
        _exit(0); // not reached: AddressSanitizer stops the child first (exit status 1)
    }, 1);
#else
    test_skip("the layer is built without AddressSanitizer");
#endif
}

// Streams: work on two streams ordered only by an event; in "delay" order the missing wait shows.
TEST(streams_events_and_missing_wait) {
    const int n = 1000;
    float *h, *d;
    CK(cudaHostAlloc((void **)&h, sizeof(float) * n, 0));
    CK(cudaMalloc(&d, sizeof(float) * n));
    for (int i = 0; i < n; i++) h[i] = (float)i;
    cudaStream_t copy, compute;
    cudaEvent_t up;
    CK(cudaStreamCreateWithFlags(&copy, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
    CK(cudaEventCreateWithFlags(&up, cudaEventDisableTiming));
    CK(cudaMemsetAsync(d, 0, sizeof(float) * n, compute));
    CK(cudaStreamSynchronize(compute));
    // correct: upload on `copy`, compute waits for it
    CK(cudaMemcpyAsync(d, h, sizeof(float) * n, cudaMemcpyHostToDevice, copy));
    CK(cudaEventRecord(up, copy));
    CK(cudaStreamWaitEvent(compute, up, 0));
    DINO_LAUNCH(scale_kernel, (n + 255) / 256, 256, 0, compute)(d, 2.0f, n);
    float back[4];
    CK(cudaMemcpyAsync(back, d + 10, sizeof back, cudaMemcpyDeviceToHost, compute));
    CK(cudaStreamSynchronize(compute));
    CHECK(back[0] == 20.0f && back[3] == 26.0f, "with the event wait: %g %g", back[0], back[3]);
    // without the wait: under CUDAEMU_STREAMS=delay the copy has not run when the kernel does
    const char *pol = getenv("CUDAEMU_STREAMS");
    if (!pol || !strcmp(pol, "delay")) {
        for (int i = 0; i < n; i++) h[i] = 1.0f;
        CK(cudaMemcpyAsync(d, h, sizeof(float) * n, cudaMemcpyHostToDevice, copy));
        DINO_LAUNCH(scale_kernel, (n + 255) / 256, 256, 0, compute)(d, 2.0f, n);
        CK(cudaMemcpyAsync(back, d + 10, sizeof back, cudaMemcpyDeviceToHost, compute));
        CK(cudaStreamSynchronize(compute));
        printf("  without the wait: d[10] = %g (2 when ordered)\n", back[0]);
        CHECK(back[0] != 2.0f, "a missing cudaStreamWaitEvent went unnoticed");
        CK(cudaStreamSynchronize(copy));
    }
    cudaStreamDestroy(copy), cudaStreamDestroy(compute), cudaEventDestroy(up);
    cudaFree(d), cudaFreeHost(h);
}

// The other kind of missing wait: a copy on one stream that must not start before a zero-fill queued
// earlier on another. Under delay the zero-fill's stream always runs first (what the host waits for), so
// it cannot show; under rush the copy runs first and the fill wipes it.
TEST(rush_order_finds_a_copy_that_overtakes_a_fill) {
    const char *pol = getenv("CUDAEMU_STREAMS");
    setenv("CUDAEMU_STREAMS", "rush", 1);
    const int n = 256;
    float *h, *d, back[4];
    CK(cudaHostAlloc((void **)&h, sizeof(float) * n, 0));
    CK(cudaMalloc(&d, sizeof(float) * n));
    for (int i = 0; i < n; i++) h[i] = 5.0f;
    cudaStream_t compute, copy;
    cudaEvent_t filled, up;
    CK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&copy, cudaStreamNonBlocking));
    CK(cudaEventCreateWithFlags(&filled, cudaEventDisableTiming));
    CK(cudaEventCreateWithFlags(&up, cudaEventDisableTiming));
    for (int with_wait = 1; with_wait >= 0; with_wait--) {
        CK(cudaMemsetAsync(d, 0, sizeof(float) * n, compute)); // a new buffer's zero-fill
        CK(cudaEventRecord(filled, compute));
        if (with_wait) CK(cudaStreamWaitEvent(copy, filled, 0));
        CK(cudaMemcpyAsync(d, h, sizeof(float) * n, cudaMemcpyHostToDevice, copy));
        CK(cudaEventRecord(up, copy));
        CK(cudaStreamWaitEvent(compute, up, 0));
        CK(cudaMemcpyAsync(back, d, sizeof back, cudaMemcpyDeviceToHost, compute));
        CK(cudaStreamSynchronize(compute));
        printf("  %s the copy's wait on the fill: d[0] = %g (5 when ordered)\n", with_wait ? "with" : "without", back[0]);
        if (with_wait) CHECK(back[0] == 5.0f, "ordered copy: %g", back[0]);
        else CHECK(back[0] != 5.0f, "a copy that overtook the zero-fill went unnoticed under rush order");
    }
    cudaStreamDestroy(compute), cudaStreamDestroy(copy), cudaEventDestroy(filled), cudaEventDestroy(up);
    cudaFree(d), cudaFreeHost(h);
    if (pol) setenv("CUDAEMU_STREAMS", pol, 1);
    else unsetenv("CUDAEMU_STREAMS");
}

TEST(free_with_pending_work_and_wrong_copies) {
    expect_finding("cudaFree while a kernel on it is queued", "still uses the buffer", [] {
        setenv("CUDAEMU_STREAMS", "delay", 1);
        float *x;
        cudaStream_t s;
        cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
        cudaMalloc(&x, sizeof(float) * 64);
        DINO_LAUNCH(scale_kernel, 1, 64, 0, s)(x, 2.0f, 64);
        cudaFree(x);
    });
    expect_finding("host pointer passed as the device side", "not inside one device allocation", [] {
        float h[4] = {0}, g[4];
        cudaMemcpy(g, h, sizeof h, cudaMemcpyHostToDevice);
    });
    expect_finding("copy past the end of a device buffer", "runs past the end", [] {
        float *x, h[8] = {0};
        cudaMalloc(&x, sizeof(float) * 4);
        cudaMemcpy(x, h, sizeof h, cudaMemcpyHostToDevice);
    });
}

// ---- stream capture and graphs -------------------------------------------------------------------------

__global__ void add_scalar_kernel(float *x, const float *a, int n) { // a: a scalar in device memory
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += *a;
}

// Captured work does not run at capture; each launch runs it again with the arguments it was captured
// with (a by-value 2.0) and the device memory as it is then (a scalar uploaded from page-locked memory by
// the graph's first node); work forked to a second stream through events is captured too; an exec
// updated from a graph of the same topology takes the new arguments; another topology is refused.
TEST(graph_capture_fork_join_replay_and_update) {
    const int n = 300;
    float *x, *a, *y, *hp, back[2];
    cudaStream_t s, s2;
    cudaEvent_t fork, join;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    CK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    CK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
    CK(cudaMalloc(&x, sizeof(float) * n));
    CK(cudaMalloc(&y, sizeof(float) * n));
    CK(cudaMalloc(&a, sizeof(float)));
    CK(cudaHostAlloc((void **)&hp, sizeof(float), 0));
    CK(cudaMemsetAsync(x, 0, sizeof(float) * n, s));
    CK(cudaMemsetAsync(y, 0, sizeof(float) * n, s));
    CK(cudaStreamSynchronize(s));
    *hp = 1.0f;
    auto capture = [&](float by_value, int extra) {
        cudaGraph_t g;
        cudaStreamCaptureStatus st;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        CK(cudaStreamIsCapturing(s, &st));
        CHECK(st == cudaStreamCaptureStatusActive, "not capturing");
        CK(cudaMemcpyAsync(a, hp, sizeof(float), cudaMemcpyHostToDevice, s)); // read at each launch
        DINO_LAUNCH(add_scalar_kernel, 2, 256, 0, s)(x, a, n);
        CK(cudaEventRecord(fork, s));
        CK(cudaStreamWaitEvent(s2, fork, 0)); // s2 joins the capture
        DINO_LAUNCH(add_scalar_kernel, 2, 256, 0, s2)(y, a, n);
        CK(cudaEventRecord(join, s2));
        CK(cudaStreamWaitEvent(s, join, 0)); // and is joined back
        DINO_LAUNCH(scale_kernel, 2, 256, 0, s)(x, by_value, n);
        for (int k = 0; k < extra; k++) DINO_LAUNCH(scale_kernel, 2, 256, 0, s)(y, 1.0f, n);
        CK(cudaStreamEndCapture(s, &g));
        CK(cudaStreamIsCapturing(s2, &st));
        CHECK(st == cudaStreamCaptureStatusNone, "s2 still capturing");
        return g;
    };
    cudaGraph_t g = capture(2.0f, 0);
    size_t nn = 0;
    CK(cudaGraphGetNodes(g, NULL, &nn));
    CHECK(nn == 4, "%zu nodes, expected 4 (copy, 2 kernels on s, 1 on s2)", nn);
    CK(cudaMemcpy(back, x, sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(back[0] == 0.0f, "captured work ran at capture: x[0] = %g", back[0]);
    cudaGraphExec_t ge;
    CK(cudaGraphInstantiate(&ge, g, 0));
    float want_x = 0, want_y = 0;
    for (int l = 0; l < 3; l++) {
        *hp = (float)(l + 1); // a new per-launch value in page-locked memory
        CK(cudaGraphLaunch(ge, s));
        CK(cudaMemcpyAsync(back, x + 7, sizeof(float), cudaMemcpyDeviceToHost, s));
        CK(cudaMemcpyAsync(back + 1, y + 7, sizeof(float), cudaMemcpyDeviceToHost, s));
        CK(cudaStreamSynchronize(s));
        want_x = (want_x + (float)(l + 1)) * 2.0f, want_y += (float)(l + 1);
        printf("  launch %d: x = %g (want %g), y = %g (want %g)\n", l, back[0], want_x, back[1], want_y);
        CHECK(back[0] == want_x && back[1] == want_y, "launch %d", l);
    }
    // same topology, another by-value argument: the update takes it
    cudaGraph_t g2 = capture(3.0f, 0);
    cudaGraphExecUpdateResultInfo info;
    CK(cudaGraphExecUpdate(ge, g2, &info));
    *hp = 1.0f;
    CK(cudaGraphLaunch(ge, s));
    CK(cudaMemcpyAsync(back, x + 7, sizeof(float), cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));
    CHECK(back[0] == (want_x + 1.0f) * 3.0f, "after the update: %g, want %g", back[0], (want_x + 1.0f) * 3.0f);
    // another topology: refused, the exec unchanged
    cudaGraph_t g3 = capture(2.0f, 1);
    CHECK(cudaGraphExecUpdate(ge, g3, &info) == cudaErrorGraphExecUpdateFailure &&
              info.result == cudaGraphExecUpdateErrorTopologyChanged,
          "an update to another topology was accepted");
    CHECK(cudaGetLastError() == cudaErrorGraphExecUpdateFailure, "the failed update's error");
    cudaGraphExecDestroy(ge), cudaGraphDestroy(g), cudaGraphDestroy(g2), cudaGraphDestroy(g3);
    cudaStreamDestroy(s), cudaStreamDestroy(s2), cudaEventDestroy(fork), cudaEventDestroy(join);
    cudaFree(x), cudaFree(y), cudaFree(a), cudaFreeHost(hp);
}

// What CUDA refuses while a stream captures, each reported.
TEST(capture_refusals_reported) {
    struct Cap {
        cudaStream_t s;
        float *d;
        Cap() {
            cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
            cudaMalloc(&d, sizeof(float) * 64);
            cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
            DINO_LAUNCH(scale_kernel, 1, 64, 0, s)(d, 2.0f, 64);
        }
    };
    expect_finding("synchronous cudaMemcpy inside a capture", "cudaMemcpy (synchronous) while a stream capture", [] {
        Cap c;
        float h[4];
        cudaMemcpy(h, c.d, sizeof h, cudaMemcpyDeviceToHost);
    });
    expect_finding("cudaStreamSynchronize of the capturing stream", "cudaStreamSynchronize on a stream that is capturing",
                   [] {
                       Cap c;
                       cudaStreamSynchronize(c.s);
                   });
    expect_finding("cudaDeviceSynchronize inside a capture", "cudaDeviceSynchronize while a stream capture", [] {
        Cap c;
        cudaDeviceSynchronize();
    });
    expect_finding("cudaMalloc inside a capture", "cudaMalloc while a stream capture", [] {
        Cap c;
        float *p;
        cudaMalloc(&p, 64);
    });
    expect_finding("cudaFree of the graph's memory inside a capture", "cudaFree while a stream capture", [] {
        Cap c;
        cudaFree(c.d);
    });
    expect_finding("pageable copy on the capturing stream", "pageable host memory", [] {
        Cap c;
        static float h[64];
        cudaMemcpyAsync(c.d, h, sizeof h, cudaMemcpyHostToDevice, c.s);
    });
    expect_finding("legacy-stream op during a capture", "legacy (NULL) stream while a stream capture", [] {
        Cap c;
        float *p = c.d;
        cudaMemsetAsync(p, 0, 16, 0);
    });
    expect_finding("wait on an event recorded outside the capture", "cudaErrorStreamCaptureIsolation", [] {
        cudaEvent_t e;
        cudaEventCreate(&e);
        cudaStream_t o;
        cudaStreamCreateWithFlags(&o, cudaStreamNonBlocking);
        cudaEventRecord(e, o);
        Cap c;
        cudaStreamWaitEvent(c.s, e, 0);
    });
    expect_finding("a forked stream not joined back", "cudaErrorStreamCaptureUnjoined", [] {
        Cap c;
        cudaStream_t o;
        cudaEvent_t e;
        cudaEventCreate(&e);
        cudaStreamCreateWithFlags(&o, cudaStreamNonBlocking);
        cudaEventRecord(e, c.s);
        cudaStreamWaitEvent(o, e, 0);
        DINO_LAUNCH(scale_kernel, 1, 64, 0, o)(c.d, 2.0f, 64);
        cudaGraph_t g;
        cudaStreamEndCapture(c.s, &g);
    });
    expect_finding("a graph launched after its memory was freed", "freed after the capture", [] {
        cudaStream_t s;
        float *d;
        cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
        cudaMalloc(&d, sizeof(float) * 64);
        cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
        DINO_LAUNCH(scale_kernel, 1, 64, 0, s)(d, 2.0f, 64);
        cudaGraph_t g;
        cudaGraphExec_t ge;
        cudaStreamEndCapture(s, &g);
        cudaGraphInstantiate(&ge, g, 0);
        cudaFree(d);
        cudaGraphLaunch(ge, s);
    });
}

// Inside a launched graph the nodes run in an order their edges allow; under delay (the default) the most
// recently captured ready node goes first, so a copy forked to another stream before the kernel it needs
// (a missing event edge) reads the old value, while the correct fork reads the kernel's result.
TEST(graph_missing_edge_shows_under_delay) {
    const char *pol = getenv("CUDAEMU_STREAMS");
    setenv("CUDAEMU_STREAMS", "delay", 1);
    const int n = 64;
    float *x, *y, back;
    cudaStream_t s, s2;
    cudaEvent_t fork, join;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    CK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    CK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
    CK(cudaMalloc(&x, sizeof(float) * n));
    CK(cudaMalloc(&y, sizeof(float) * n));
    float ones[64];
    for (int i = 0; i < n; i++) ones[i] = 1.0f;
    for (int fork_after_kernel = 1; fork_after_kernel >= 0; fork_after_kernel--) {
        CK(cudaMemcpy(x, ones, sizeof ones, cudaMemcpyHostToDevice));
        cudaGraph_t g;
        cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        if (!fork_after_kernel) CK(cudaEventRecord(fork, s)); // too early: the copy does not wait for the kernel
        DINO_LAUNCH(scale_kernel, 1, 64, 0, s)(x, 5.0f, n);
        if (fork_after_kernel) CK(cudaEventRecord(fork, s));
        CK(cudaStreamWaitEvent(s2, fork, 0));
        CK(cudaMemcpyAsync(y, x, sizeof(float) * n, cudaMemcpyDeviceToDevice, s2));
        CK(cudaEventRecord(join, s2));
        CK(cudaStreamWaitEvent(s, join, 0));
        CK(cudaStreamEndCapture(s, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        CK(cudaGraphLaunch(ge, s));
        CK(cudaMemcpyAsync(&back, y + 3, sizeof back, cudaMemcpyDeviceToHost, s));
        CK(cudaStreamSynchronize(s));
        printf("  fork %s the kernel: y = %g (5 when ordered)\n", fork_after_kernel ? "after" : "before", back);
        if (fork_after_kernel) CHECK(back == 5.0f, "ordered graph: %g", back);
        else CHECK(back != 5.0f, "a missing edge inside a graph went unnoticed under delay order");
        cudaGraphExecDestroy(ge), cudaGraphDestroy(g);
    }
    cudaStreamDestroy(s), cudaStreamDestroy(s2), cudaEventDestroy(fork), cudaEventDestroy(join);
    cudaFree(x), cudaFree(y);
    if (pol) setenv("CUDAEMU_STREAMS", pol, 1);
    else unsetenv("CUDAEMU_STREAMS");
}

// A graph's copy from page-locked host memory reads it when the graph runs, not when it is launched: the
// host may write the memory before the launch (each launch then copies the new bytes), but a write after
// the launch, before the graph has run, races the copy on a GPU, and the layer says so (under delay
// order the launch has not run at the host's write).
TEST(graph_pinned_source_rewritten_after_launch) {
    const char *pol = getenv("CUDAEMU_STREAMS");
    setenv("CUDAEMU_STREAMS", "delay", 1);
    const int n = 64;
    float *x, *h, back[2];
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CK(cudaMalloc(&x, sizeof(float) * n));
    CK(cudaHostAlloc((void **)&h, sizeof(float) * n, 0));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    CK(cudaMemcpyAsync(x, h, sizeof(float) * n, cudaMemcpyHostToDevice, s));
    DINO_LAUNCH(scale_kernel, 1, 64, 0, s)(x, 2.0f, n);
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    for (int k = 0; k < 2; k++) { // written before each launch, waited for after: the new bytes each time
        for (int i = 0; i < n; i++) h[i] = (float)(i + 10 * k);
        CK(cudaGraphLaunch(ge, s));
        CK(cudaMemcpyAsync(&back[k], x + 3, sizeof(float), cudaMemcpyDeviceToHost, s));
        CK(cudaStreamSynchronize(s));
    }
    printf("  launches with the host data written before each: %g, %g (6 and 26)\n", back[0], back[1]);
    CHECK(back[0] == 6.0f && back[1] == 26.0f, "graph copies from page-locked memory: %g, %g", back[0], back[1]);
    expect_finding("page-locked source rewritten before the graph ran", "the host rewrote them after the launch", [&] {
        CK(cudaGraphLaunch(ge, s));
        h[3] = -1.0f; // the launch is still queued
        CK(cudaStreamSynchronize(s));
    });
    cudaGraphExecDestroy(ge), cudaGraphDestroy(g);
    cudaStreamDestroy(s), cudaFree(x), cudaFreeHost(h);
    if (pol) setenv("CUDAEMU_STREAMS", pol, 1);
    else unsetenv("CUDAEMU_STREAMS");
}

TEST(wmma_fragments_mma_and_findings) {
    // index-coded small integers: every product and sum is exact, so D must match bit for bit, and a
    // wrong row/column mapping anywhere gives a different integer
    const int warps = 4, n = warps * 256;
    __nv_bfloat16 *Ah = (__nv_bfloat16 *)malloc(2 * n), *Bh = (__nv_bfloat16 *)malloc(2 * n);
    float *Ch = (float *)malloc(4 * n), *Dh = (float *)malloc(4 * n), *Dth = (float *)malloc(4 * n);
    for (int w = 0; w < warps; w++)
        for (int r = 0; r < 16; r++)
            for (int c = 0; c < 16; c++) {
                Ah[w * 256 + r * 16 + c] = __float2bfloat16((float)((r * 16 + c + w) % 7 - 3)); // A[r][c]
                Bh[w * 256 + c * 16 + r] = __float2bfloat16((float)((r * 3 + c * 5 + w) % 9 - 4)); // B[r][c], col-major
                Ch[w * 256 + r * 16 + c] = (float)(r - 2 * c + 100 * w);
            }
    __nv_bfloat16 *A, *B;
    float *C, *D, *Dt;
    CK(cudaMalloc(&A, 2 * n));
    CK(cudaMalloc(&B, 2 * n));
    CK(cudaMalloc(&C, 4 * n));
    CK(cudaMalloc(&D, 4 * n));
    CK(cudaMalloc(&Dt, 4 * n));
    CK(cudaMemcpy(A, Ah, 2 * n, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(B, Bh, 2 * n, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(C, Ch, 4 * n, cudaMemcpyHostToDevice));
    DINO_LAUNCH(wmma_kernel, 1, 32 * warps, 0, 0)(D, Dt, A, B, C);
    CK(cudaGetLastError());
    CK(cudaMemcpy(Dh, D, 4 * n, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(Dth, Dt, 4 * n, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (int w = 0; w < warps; w++)
        for (int r = 0; r < 16; r++)
            for (int c = 0; c < 16; c++) {
                float want = Ch[w * 256 + r * 16 + c];
                for (int k = 0; k < 16; k++)
                    want += __bfloat162float(Ah[w * 256 + r * 16 + k]) * __bfloat162float(Bh[w * 256 + c * 16 + k]);
                bad += Dh[w * 256 + r * 16 + c] != want || Dth[w * 256 + c * 16 + r] != want;
            }
    CHECK(bad == 0, "wmma: %d of %d elements of D = A B + C wrong", bad, 2 * n);
    expect_finding("wmma load reached by half a warp", "already returned",
                   [&] { DINO_LAUNCH(wmma_divergent_kernel, 1, 32, 0, 0)(A); });
    expect_finding("wmma in a 48-thread block", "does not exist",
                   [&] { DINO_LAUNCH(wmma_load_kernel, 1, 48, 0, 0)(A); });
    expect_finding("wmma load from a misaligned pointer", "not 256-bit aligned",
                   [&] { DINO_LAUNCH(wmma_misaligned_kernel, 1, 32, 0, 0)(A); });
    cudaFree(A), cudaFree(B), cudaFree(C), cudaFree(D), cudaFree(Dt);
    free(Ah), free(Bh), free(Ch), free(Dh), free(Dth);
}
