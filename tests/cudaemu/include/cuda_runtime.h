// Stand-in for cuda_runtime.h (tests/cudaemu/): the CUDA runtime API the project calls and the device
// language its kernels use, so that model/cuda/*.cu and dist/nccl.cu compile unchanged with the host
// C++ compiler and run on the CPU. Kernels run as one fiber per CUDA thread (kernel.cpp); streams,
// events and memory are modelled by runtime.cpp. Only what the project uses is here: a call outside
// this set does not compile, which is the signal to model it.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <library_types.h>

// The API is plain C (extern "C", as the real header), so C tests and tools call it too; default
// arguments and the device language exist only for C++ (the .cu sources).
#ifdef __cplusplus
#define CUDAEMU_DEFAULT(v) = v
extern "C" {
#else
#define CUDAEMU_DEFAULT(v)
#endif

// ---- types --------------------------------------------------------------------------------------------
typedef struct uint3 {
    unsigned x, y, z;
} uint3;
typedef struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
} float4;
static inline float4 make_float4(float x, float y, float z, float w) {
    float4 v = {x, y, z, w};
    return v;
}
typedef struct dim3 {
    unsigned x, y, z;
#ifdef __cplusplus
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
#endif
} dim3;

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoKernelImageForDevice = 209,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorLaunchFailure = 719,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureMerge = 902,
    cudaErrorStreamCaptureUnmatched = 903,
    cudaErrorStreamCaptureUnjoined = 904,
    cudaErrorStreamCaptureIsolation = 905,
    cudaErrorStreamCaptureImplicit = 906,
    cudaErrorStreamCaptureWrongThread = 908,
    cudaErrorGraphExecUpdateFailure = 910,
    cudaErrorUnknown = 999,
} cudaError_t;

typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;
// CUDA graphs (stream capture): a graph is what a capture recorded, an exec its launchable instance.
typedef struct CUgraph_st *cudaGraph_t;
typedef struct CUgraphExec_st *cudaGraphExec_t;
typedef struct CUgraphNode_st *cudaGraphNode_t;
typedef enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,      // unsafe calls (cudaMalloc, ...) refused on every thread
    cudaStreamCaptureModeThreadLocal = 1, // refused on the capturing thread only
    cudaStreamCaptureModeRelaxed = 2,     // not refused
} cudaStreamCaptureMode;
typedef enum cudaStreamCaptureStatus {
    cudaStreamCaptureStatusNone = 0,
    cudaStreamCaptureStatusActive = 1,
    cudaStreamCaptureStatusInvalidated = 2,
} cudaStreamCaptureStatus;
typedef enum cudaGraphExecUpdateResult {
    cudaGraphExecUpdateSuccess = 0,
    cudaGraphExecUpdateError = 1,
    cudaGraphExecUpdateErrorTopologyChanged = 2,
    cudaGraphExecUpdateErrorNodeTypeChanged = 3,
    cudaGraphExecUpdateErrorFunctionChanged = 4,
} cudaGraphExecUpdateResult;
typedef struct cudaGraphExecUpdateResultInfo_st {
    enum cudaGraphExecUpdateResult result;
    cudaGraphNode_t errorNode;
    cudaGraphNode_t errorFromNode;
} cudaGraphExecUpdateResultInfo;

typedef enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
} cudaMemcpyKind;

#define cudaStreamDefault 0x0u
#define cudaStreamNonBlocking 0x1u
#define cudaEventDefault 0x0u
#define cudaEventBlockingSync 0x1u
#define cudaEventDisableTiming 0x2u
#define cudaHostAllocDefault 0x0u
#define cudaHostAllocPortable 0x1u
#define cudaHostAllocMapped 0x2u
#define cudaHostAllocWriteCombined 0x4u

typedef struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    size_t sharedMemPerBlockOptin;
    int regsPerBlock;
    int warpSize;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    int major, minor;
    int multiProcessorCount;
    int clockRate;
    int memoryClockRate;
    int memoryBusWidth;
} cudaDeviceProp;

// ---- runtime API (runtime.cpp) ----------------------------------------------------------------------
cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);

cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned flags);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s CUDAEMU_DEFAULT(0));
cudaError_t cudaMemset(void *p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t s CUDAEMU_DEFAULT(0));

cudaError_t cudaStreamCreate(cudaStream_t *s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags CUDAEMU_DEFAULT(0));
cudaError_t cudaStreamQuery(cudaStream_t s);

cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s CUDAEMU_DEFAULT(0));
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);

// Stream capture and graphs (runtime.cpp, "graphs"): work enqueued on a capturing stream (and on the
// streams that join it through events) is recorded, not run; a launched exec runs it as one unit.
cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *graph);
cudaError_t cudaStreamIsCapturing(cudaStream_t s, enum cudaStreamCaptureStatus *status);
cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t *nodes, size_t *num_nodes);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags CUDAEMU_DEFAULT(0));
cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph, cudaGraphExecUpdateResultInfo *info);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);

#ifdef __cplusplus
} // extern "C"

#include <cmath>
#include <cstring>
#include <tuple>
#include <utility>

template <typename T> static inline cudaError_t cudaMalloc(T **p, size_t bytes) { return cudaMalloc((void **)p, bytes); }

// ---- qualifiers -------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
// Shared memory: one copy per block. A block's fibers all run on one worker thread and a worker runs one
// block at a time, so a thread-local static is exactly that. (Static shared memory over the 48 KB limit
// is refused by nvcc's own build of the same sources, which CI also runs.) GNU __thread rather than C++
// thread_local throughout: no TLS wrapper functions (gcc 12's UBSan null check of a thread_local
// accessed through its wrapper tests the wrong flags and reports a null pointer that is not there).
#define __shared__ static __thread

// ---- the device side (kernel.cpp) -------------------------------------------------------------------
namespace cudaemu {
struct ThreadState; // one CUDA thread (a fiber)
struct BlockState;  // the block it belongs to
struct ThreadView {
    uint3 idx; // threadIdx
};
struct BlockView {
    uint3 idx;      // blockIdx
    dim3 dim, grid; // blockDim, gridDim
};
extern __thread ThreadView *cur_thread; // the fiber running now on this worker thread
extern __thread BlockView *cur_block;

void syncthreads(const char *file, int line);
// One warp-synchronous exchange: every lane of `mask` must arrive at the same call with the same kind;
// each lane gets the value of lane src (shuffles) or the vote's result. Values travel as 64 bits.
enum WarpOp { WARP_SHFL_IDX, WARP_SHFL_XOR, WARP_SHFL_UP, WARP_SHFL_DOWN, WARP_BALLOT, WARP_ANY, WARP_ALL,
              WARP_SYNC, WARP_COLLECTIVE };
uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char *file, int line);
// A warp-collective operation on opaque per-lane state (the wmma stand-in, <mma.h>): all 32 lanes of the
// warp must arrive at the same call (a block whose size is not a multiple of 32, or lanes that skip it,
// is a finding as for a full-mask shuffle); then fn runs once with every lane's `arg`, in lane order
// (fn may be NULL: a rendezvous only).
typedef void (*WarpCollectiveFn)(void *const *lane_args, int lanes);
void warp_collective(WarpCollectiveFn fn, void *arg, const char *file, int line);

// A launch: the configuration is checked against the device limits when it is enqueued (a bad one sets
// the error that cudaGetLastError returns, as a real launch does), the kernel runs when its stream is
// scheduled: every block, every thread a fiber.
typedef void (*KernelTrampoline)(void *closure);
void launch(const char *name, const char *file, int line, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            KernelTrampoline fn, void *closure, void (*destroy)(void *), const void *arg_bytes, size_t arg_size);

template <typename F, typename... A> struct Closure {
    F f;
    std::tuple<A...> args;
    static void run(void *c) {
        Closure *k = (Closure *)c;
        std::apply(k->f, k->args);
    }
    static void destroy(void *c) { delete (Closure *)c; }
};

struct Launcher {
    const char *name, *file;
    int line;
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
};
template <typename F> struct BoundLauncher {
    Launcher l;
    F f;
    template <typename... A> void operator()(A... args) {
        // the arguments are copied now, as a launch copies them into the kernel's parameter space
        auto *c = new Closure<F, A...>{f, std::tuple<A...>(args...)};
        launch(l.name, l.file, l.line, l.grid, l.block, l.smem, l.stream, &Closure<F, A...>::run, c,
               &Closure<F, A...>::destroy, &c->args, sizeof c->args);
    }
};
template <typename F> BoundLauncher<F> operator%(Launcher l, F f) { return BoundLauncher<F>{l, f}; }
} // namespace cudaemu

// kernel<<<grid, block, smem, stream>>>(args) as written by the project (model/cuda/cuda_ops.cuh)
#define DINO_LAUNCH(kernel, grid, block, smem, stream)                                              \
    (::cudaemu::Launcher{#kernel, __FILE__, __LINE__, dim3(grid), dim3(block), (size_t)(smem), (stream)} %       \
     [](auto... a_) { kernel(a_...); })

#define threadIdx (::cudaemu::cur_thread->idx)
#define blockIdx (::cudaemu::cur_block->idx)
#define blockDim (::cudaemu::cur_block->dim)
#define gridDim (::cudaemu::cur_block->grid)
static constexpr int warpSize = 32;

static inline void __syncthreads(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    ::cudaemu::syncthreads(file, line);
}

template <typename T> static inline uint64_t cudaemu_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 64 bits");
    uint64_t u = 0;
    std::memcpy(&u, &v, sizeof v);
    return u;
}
template <typename T> static inline T cudaemu_from_bits(uint64_t u) {
    T v;
    std::memcpy(&v, &u, sizeof v);
    return v;
}
#define CUDAEMU_SHFL(fname, op)                                                                        \
    template <typename T>                                                                              \
    static inline T fname(unsigned mask, T var, int arg, int width = 32, const char *file = __builtin_FILE(),      \
                          int line = __builtin_LINE()) {                                               \
        return cudaemu_from_bits<T>(::cudaemu::warp_op(op, mask, cudaemu_bits(var), arg, width, file, line)); \
    }
CUDAEMU_SHFL(__shfl_sync, ::cudaemu::WARP_SHFL_IDX)
CUDAEMU_SHFL(__shfl_xor_sync, ::cudaemu::WARP_SHFL_XOR)
CUDAEMU_SHFL(__shfl_up_sync, ::cudaemu::WARP_SHFL_UP)
CUDAEMU_SHFL(__shfl_down_sync, ::cudaemu::WARP_SHFL_DOWN)
#undef CUDAEMU_SHFL
// __syncwarp: the lanes of the mask meet (and the shared-memory writes before it are seen after it)
static inline void __syncwarp(unsigned mask = 0xffffffffu, const char *file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    (void)::cudaemu::warp_op(::cudaemu::WARP_SYNC, mask, 0, 0, 32, file, line);
}
static inline unsigned __ballot_sync(unsigned mask, int pred, const char *file = __builtin_FILE(),
                                     int line = __builtin_LINE()) {
    return (unsigned)::cudaemu::warp_op(::cudaemu::WARP_BALLOT, mask, pred != 0, 0, 32, file, line);
}
static inline int __any_sync(unsigned mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)::cudaemu::warp_op(::cudaemu::WARP_ANY, mask, pred != 0, 0, 32, file, line);
}
static inline int __all_sync(unsigned mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)::cudaemu::warp_op(::cudaemu::WARP_ALL, mask, pred != 0, 0, 32, file, line);
}

// ---- device math: the IEEE operations the sources name (this build uses -ffp-contract=off, so a * b is
// rounded as __fmul_rn is, and nothing is fused unless the source says fmaf) -----------------------------
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
// CUDA's min/max overloads for device code
#define CUDAEMU_MINMAX(T)                                                                              \
    static inline T min(T a, T b) { return a < b ? a : b; }                                           \
    static inline T max(T a, T b) { return a > b ? a : b; }
CUDAEMU_MINMAX(int)
CUDAEMU_MINMAX(unsigned)
CUDAEMU_MINMAX(long)
CUDAEMU_MINMAX(unsigned long)
CUDAEMU_MINMAX(long long)
CUDAEMU_MINMAX(unsigned long long)
#undef CUDAEMU_MINMAX
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

#endif // __cplusplus
