// The CUDA backend: device memory on the backend's stream, checked calls, scratch, and the op table.
#include <string.h>

#include <stdarg.h>

extern "C" {
#include "common/check.h"
}
#include "model/cuda/cuda_ops.cuh"

// Like dino_seterr (common/), kept local so that libdino_cuda does not depend back on libdino.
static void set_err(char *err, const char *fmt, ...) {
    if (!err) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, DINO_ERRLEN, fmt, ap);
    va_end(ap);
}

// ---- checked calls --------------------------------------------------------------------------------

static const char *cuda_hint(cudaError_t e) {
    switch (e) {
    case cudaErrorMemoryAllocation: return "the device is out of memory: lower the batch size or free buffers";
    case cudaErrorNoDevice: return "no CUDA device is visible (CUDA_VISIBLE_DEVICES? driver loaded?)";
    case cudaErrorInsufficientDriver: return "the driver is older than the CUDA runtime this was built with";
    case cudaErrorNoKernelImageForDevice:
        return "no kernel for this GPU's architecture: rebuild with -DDINO_CUDA_ARCHS=<sm> (e.g. 80;90)";
    case cudaErrorIllegalAddress: return "a kernel read or wrote outside its buffers (run compute-sanitizer)";
    case cudaErrorInvalidValue: return "a bad argument (a host pointer passed as device memory? size 0?)";
    case cudaErrorInvalidConfiguration: return "bad launch configuration (grid or block too large for the shape)";
    default: return "see the CUDA runtime documentation for this error";
    }
}

void cuda_fail(cudaError_t e, const char *what, const char *file, int line) {
    fprintf(stderr, "dinotrain: CUDA error at %s:%d: %s\n  in %s\n  HINT: %s\n", file, line, cudaGetErrorString(e),
            what, cuda_hint(e));
    exit(1);
}

static const char *cublas_name(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "cuBLAS error";
    }
}

void cublas_fail(cublasStatus_t s, const char *what, const char *file, int line) {
    const char *hint = s == CUBLAS_STATUS_INVALID_VALUE
                           ? "a leading dimension smaller than the row length, or a negative size"
                       : s == CUBLAS_STATUS_NOT_SUPPORTED ? "this compute type / layout is not supported on this GPU"
                       : s == CUBLAS_STATUS_ALLOC_FAILED  ? "the device is out of memory"
                                                          : "check the shapes and that pointers are device memory";
    fprintf(stderr, "dinotrain: cuBLAS error at %s:%d: %s (%d)\n  in %s\n  HINT: %s\n", file, line, cublas_name(s),
            (int)s, what, hint);
    exit(1);
}

#define CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20) // cuBLAS's recommendation for Hopper

// ---- memory -----------------------------------------------------------------------------------------

static void *cu_alloc(Backend *be, size_t bytes) {
    cuda_graph_pause(be); // cudaMalloc is refused while capturing; so is the event below
    void *p = NULL;
    size_t n = (bytes + 255) / 256 * 256; // cudaMalloc is 256-byte aligned; keep sizes whole
    if (n == 0) n = 256;
    cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        DINO_DIE("cuda backend: cannot allocate %zu bytes on device %d (%s; %zu MiB free of %zu MiB)\n  HINT: set "
                 "compute_precision.recompute_activations: true, or lower the batch size; `dinotrain --plan-memory "
                 "CONFIG` shows where the memory goes",
                 bytes, cuda_impl(be)->device, cudaGetErrorString(e), fr >> 20, tot >> 20);
    }
    cudaCheck(cudaMemsetAsync(p, 0, n, cuda_stream(be)));
    // an upload on the copy stream into this buffer must not race its zero-fill on the compute stream
    cudaCheck(cudaEventRecord(cuda_impl(be)->alloc_done, cuda_stream(be)));
    cuda_graph_resume(be);
    return p;
}

// ---- bf16 activation buffers --------------------------------------------------------------------------
// Recorded sorted by base address; an op's argument is found by binary search (a few hundred buffers).

static int act_find(const CudaImpl *c, const char *p) { // index of the last buffer with base <= p, or -1
    int lo = 0, hi = c->n_acts - 1, r = -1;
    while (lo <= hi) {
        const int m = (lo + hi) / 2;
        if (c->acts[m].base <= p) r = m, lo = m + 1;
        else hi = m - 1;
    }
    return r;
}

// The bf16 buffer that holds byte p (NULL: none).
static const ActAlloc *act_holding(Backend *be, const void *p) {
    const CudaImpl *c = cuda_impl(be);
    if (!c->n_acts || !p) return NULL;
    const int i = act_find(c, (const char *)p);
    if (i < 0 || (const char *)p >= c->acts[i].base + c->acts[i].bytes) return NULL;
    return &c->acts[i];
}

ActRef cuda_act(Backend *be, const float *p) {
    const ActAlloc *a = act_holding(be, p);
    if (a && a->base != (const char *)p)
        DINO_DIE("cuda backend: a pointer %zu bytes into a bf16 activation buffer (the model must pass the whole "
                 "buffer: model/backend.h, activation dtypes)",
                 (size_t)((const char *)p - a->base));
    return ActRef{(void *)p, a != NULL};
}

void cuda_die(const char *what, const char *file, int line) {
    fprintf(stderr, "dinotrain: cuda backend, %s:%d: %s\n", file, line, what);
    exit(1);
}

void cuda_need_f32(Backend *be, const float *p, const char *op) {
    if (act_holding(be, p)) DINO_DIE("cuda backend: %s got a bf16 activation buffer where it takes fp32 only", op);
}

// bf16 storage with bf16 GEMMs; with fp32 GEMMs (tests isolating the kernels' logic) fp32, as the CPU
static float *cu_alloc_act(Backend *be, size_t n, DinoDtype dt, size_t *bytes) {
    CudaImpl *c = cuda_impl(be);
    const bool bf16 = dt == DINO_BF16 && c->gemm_precision == CUDA_GEMM_BF16;
    const size_t b = (bf16 ? 2 : sizeof(float)) * n;
    if (bytes) *bytes = b;
    float *p = (float *)be->alloc(be, b);
    if (!bf16) return p;
    if (c->n_acts == c->cap_acts) {
        c->cap_acts = c->cap_acts ? 2 * c->cap_acts : 64;
        c->acts = (ActAlloc *)dino_realloc(c->acts, sizeof(ActAlloc) * (size_t)c->cap_acts);
    }
    const int i = act_find(c, (const char *)p) + 1;
    memmove(c->acts + i + 1, c->acts + i, sizeof(ActAlloc) * (size_t)(c->n_acts - i));
    c->acts[i] = ActAlloc{(const char *)p, b};
    c->n_acts++;
    return p;
}

static void act_forget(CudaImpl *c, const void *p) {
    const int i = act_find(c, (const char *)p);
    if (i < 0 || c->acts[i].base != (const char *)p) return;
    memmove(c->acts + i, c->acts + i + 1, sizeof(ActAlloc) * (size_t)(c->n_acts - i - 1));
    c->n_acts--;
}

// The memory ops on a bf16 buffer take the byte count of its fp32 view (4 per element, as the model
// would pass for any activation) and convert on the host (to_host, to_device: tests and debugging).
static size_t act_elems(Backend *be, const void *p, size_t bytes, const char *what) {
    const ActAlloc *a = act_holding(be, p);
    if (!a) return 0;
    if (a->base != (const char *)p || bytes % 4 || bytes / 4 * 2 > a->bytes)
        DINO_DIE("cuda backend: %s of %zu bytes on a bf16 activation buffer of %zu elements (the whole buffer, "
                 "4 bytes per element, expected)", what, bytes, a->bytes / 2);
    return bytes / 4;
}

static void cu_release(Backend *be, void *p) {
    if (!p) return;
    cuda_host_wait(be); // no kernel still using it (and no deferred op: they ran with p's element type)
    act_forget(cuda_impl(be), p);
    cuda_param_copy_forget(be, p); // a parameter buffer's bf16 copy goes with it (its release resumes)
    cuda_host_wait(be);
    cudaCheck(cudaStreamSynchronize(cuda_impl(be)->copy_stream)); // nor an upload into it
    cuda_replay_forget(cuda_impl(be)); // no cached exec may use p again
    cudaCheck(cudaFree(p));
    cuda_graph_resume(be);
}

// Page-locked host memory: the DMA engine reads it while kernels run (a pageable source would make
// cudaMemcpyAsync stage through a driver buffer, synchronously).
static void *cu_host_alloc(Backend *be, size_t bytes) {
    void *p = NULL;
    const int paused = cuda_graph_host_call_begin(be); // the loader's workers call this too
    cudaCheck(cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable));
    if (paused) cuda_graph_resume(be);
    memset(p, 0, bytes);
    return p;
}
static void cu_host_free(Backend *be, void *p) {
    if (!p) return;
    const int paused = cuda_graph_host_call_begin(be);
    cudaCheck(cudaStreamSynchronize(cuda_impl(be)->copy_stream));
    cudaCheck(cudaFreeHost(p));
    if (paused) cuda_graph_resume(be);
}
// On the copy stream; the ticket's event marks its completion for upload_wait.
static int cu_upload_async(Backend *be, void *dst, const void *src, size_t bytes) {
    CudaImpl *c = cuda_impl(be);
    // its copy could only be refreshed after upload_wait, which the backend does not see coming
    if (bytes && cuda_param_copy_at(be, (const float *)dst, 1))
        DINO_DIE("cuda backend: upload_async into a parameter buffer with a bf16 copy (use to_device)");
    cuda_graph_pause(be); // the copy stream is not captured: what the compute stream recorded goes first
    int t = c->next_ticket;
    c->next_ticket = (t + 1) % (int)(sizeof c->upload_done / sizeof c->upload_done[0]);
    // after the zero-fill of every buffer allocated so far (long done in a training loop: no stall)
    cudaCheck(cudaStreamWaitEvent(c->copy_stream, c->alloc_done, 0));
    if (bytes) cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->copy_stream));
    cudaCheck(cudaEventRecord(c->upload_done[t], c->copy_stream));
    cuda_graph_resume(be);
    return t;
}
static void cu_upload_wait(Backend *be, int ticket) {
    CudaImpl *c = cuda_impl(be);
    cuda_graph_pause(be); // a wait on an event from outside a capture is refused inside it
    cudaCheck(cudaStreamWaitEvent(c->stream, c->upload_done[ticket], 0));
    cuda_graph_resume(be);
}

// Asynchronous on the backend's stream. A pageable source may be reused as soon as this returns (CUDA
// stages it); a pinned source must stay unchanged until be->sync.
// Capturing: through the page-locked staging (a captured copy may not read pageable memory).
static void cu_to_device(Backend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    if (const size_t n = act_elems(be, dst, bytes, "to_device")) { // tests and debugging: converted on the host
        __nv_bfloat16 *h = (__nv_bfloat16 *)malloc(2 * n);
        for (size_t i = 0; i < n; i++) h[i] = __float2bfloat16(((const float *)src)[i]);
        cuda_graph_pause(be);
        cudaCheck(cudaMemcpyAsync(dst, h, 2 * n, cudaMemcpyHostToDevice, cuda_stream(be)));
        cuda_host_wait(be); // h is pageable and freed now
        cuda_graph_resume(be);
        free(h);
        return;
    }
    if (cuda_impl(be)->capturing || cuda_replay_defers(be)) {
        const void *staged = cuda_graph_stage(be, src, bytes);
        if (staged && cuda_replay_defers(be)) { // replay: the copy from the staging, at its offset, is deferred
            struct { const char *tag; void *dst; const void *staged; size_t bytes; } sig = {"to_device", dst, staged, bytes};
            cudaStream_t s = cuda_impl(be)->stream; // (cuda_stream would flush the pending ops)
            cuda_replay_defer(be, &sig, sizeof sig, NULL, 0, [=]() {
                cudaCheck(cudaMemcpyAsync(dst, staged, bytes, cudaMemcpyHostToDevice, s));
            });
            // weights loaded (init, a checkpoint): their bf16 copy, after the copy (its kernel goes through
            // cuda_stream, which issues the pending ops first); nothing for other buffers
            cuda_param_written(be, dst, bytes);
            return;
        }
        if (staged) {
            cudaCheck(cudaMemcpyAsync(dst, staged, bytes, cudaMemcpyHostToDevice, cuda_stream(be)));
        } else {
            cuda_graph_pause(be);
            cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cuda_stream(be)));
            cuda_graph_resume(be);
        }
    } else {
        cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cuda_stream(be)));
    }
    cuda_param_written(be, dst, bytes); // weights loaded: their bf16 copy
}
// Synchronous: the host copy is complete when this returns.
static void cu_to_host(Backend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    if (const size_t n = act_elems(be, src, bytes, "to_host")) { // converted on the host
        __nv_bfloat16 *h = (__nv_bfloat16 *)malloc(2 * n);
        cuda_graph_pause(be);
        cudaCheck(cudaMemcpyAsync(h, src, 2 * n, cudaMemcpyDeviceToHost, cuda_stream(be)));
        cuda_host_wait(be);
        cuda_graph_resume(be);
        for (size_t i = 0; i < n; i++) ((float *)dst)[i] = __bfloat162float(h[i]);
        free(h);
        return;
    }
    cuda_graph_pause(be);
    cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cuda_stream(be)));
    cuda_host_wait(be);
    cuda_graph_resume(be);
}
// Asynchronous read-back on the compute stream (a deferred op in replay mode: a graph's node, writing the
// page-locked destination each time it runs).
static void cu_download_async(Backend *be, void *dst, const void *src, size_t bytes) {
    if (act_elems(be, src, bytes, "download_async")) DINO_DIE("cuda backend: download_async of a bf16 activation buffer");
    if (bytes) cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cuda_stream(be)));
}
static void cu_download_wait(Backend *be) {
    cuda_host_wait(be); // one wait for all the step's read-backs
    cuda_graph_resume(be);
}
static void cu_copy(Backend *be, void *dst, const void *src, size_t bytes) {
    const size_t nd = act_elems(be, dst, bytes, "copy"), ns = act_elems(be, src, bytes, "copy");
    if ((nd != 0) != (ns != 0)) DINO_DIE("cuda backend: copy between a bf16 activation buffer and an fp32 buffer");
    if (nd) bytes = 2 * nd;
    if (bytes && dst != src) cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda_stream(be)));
    if (!nd) cuda_param_written(be, dst, bytes); // e.g. the Gram teacher taken from the teacher
}
static void cu_zero(Backend *be, void *p, size_t bytes) {
    if (const size_t n = act_elems(be, p, bytes, "zero")) bytes = 2 * n;
    if (bytes) cudaCheck(cudaMemsetAsync(p, 0, bytes, cuda_stream(be)));
    if (bytes) cuda_param_written(be, p, bytes);
}
// Everything the backend was asked to do: the compute stream and the uploads.
static void cu_sync(Backend *be) {
    cuda_host_wait(be);
    cudaCheck(cudaStreamSynchronize(cuda_impl(be)->copy_stream));
    cuda_graph_resume(be);
}

void *cuda_scratch(Backend *be, size_t bytes) {
    CudaImpl *c = cuda_impl(be);
    if (bytes > c->scratch_bytes) {
        size_t n = bytes + bytes / 4 + (1 << 20);
        cuda_host_wait(be);
        cuda_replay_forget(c); // cached execs use the old scratch
        if (c->scratch) cudaCheck(cudaFree(c->scratch));
        cudaCheck(cudaMalloc(&c->scratch, n));
        c->scratch_bytes = n;
        cuda_graph_resume(be);
    }
    return c->scratch;
}

// ---- deterministic column-sum finish --------------------------------------------------------------

__global__ void colsum_finish_kernel(float *dst, const float *partial, int nblk, int cols, float alpha) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float s = 0.0f;
    for (int k = 0; k < nblk; k++) s += partial[(size_t)k * cols + c];
    dst[c] += alpha * s;
}

void colsum_finish(Backend *be, float *dst, const float *partial, int nblk, int cols, float alpha) {
    DINO_LAUNCH(colsum_finish_kernel, ceil_div(cols, 256), 256, 0, cuda_stream(be))(dst, partial, nblk, cols, alpha);
    cudaCheckLaunch();
}

// ---- construction -----------------------------------------------------------------------------------

// A setting that changes what an op enqueues without showing in its arguments: the deferred ops run first
// (under the old setting) and no cached segment is replayed after the change.
static void setting_changes(Backend *be) {
    cuda_host_wait(be);
    cuda_replay_forget(cuda_impl(be));
    cuda_graph_resume(be);
}
extern "C" void backend_cuda_set_gemm_precision(Backend *be, CudaGemmPrecision p) {
    setting_changes(be);
    cuda_impl(be)->gemm_precision = p;
}
extern "C" void backend_cuda_set_attention(Backend *be, CudaAttention a) {
    setting_changes(be);
    cuda_impl(be)->attention = a;
}
extern "C" int backend_cuda_set_fuse_epilogues(Backend *be, int on) {
    if (on >= 0) {
        setting_changes(be);
        cuda_impl(be)->fuse_epilogues = on != 0;
    }
    return cuda_impl(be)->fuse_epilogues;
}
extern "C" int backend_cuda_attention_is_flash(Backend *be, int Dh) {
    return cuda_impl(be)->attention == CUDA_ATTENTION_FLASH && cuda_attention_flash_supported(be, Dh);
}

extern "C" void backend_cuda_mem_info(Backend *be, size_t *free_bytes, size_t *total_bytes) {
    cuda_graph_pause(be); // outside any capture, to be safe
    cudaCheck(cudaSetDevice(cuda_impl(be)->device));
    cudaCheck(cudaMemGetInfo(free_bytes, total_bytes));
    cuda_graph_resume(be);
}

extern "C" const char *backend_cuda_device_name(Backend *be) { return cuda_impl(be)->device_name; }

// (through cuda_stream: work the caller enqueues on it comes after the ops replay mode has pending)
extern "C" void *backend_cuda_stream(Backend *be) { return (void *)cuda_stream(be); }

static void cuda_destroy(Backend *be) {
    CudaImpl *c = cuda_impl(be);
    cuda_host_wait(be);
    cudaCheck(cudaStreamSynchronize(c->copy_stream));
    cuda_graph_destroy(c);
    if (c->cublas_workspace) cudaCheck(cudaFree(c->cublas_workspace));
    for (size_t i = 0; i < sizeof c->upload_done / sizeof c->upload_done[0]; i++)
        cudaCheck(cudaEventDestroy(c->upload_done[i]));
    cudaCheck(cudaEventDestroy(c->alloc_done));
    cudaCheck(cudaStreamDestroy(c->copy_stream));
    cuda_lt_destroy(c);
    if (c->grid_ptrs) cudaCheck(cudaFree(c->grid_ptrs));
    if (c->scratch) cudaCheck(cudaFree(c->scratch));
    free(c->acts);
    for (int i = 0; i < c->n_pcopies; i++) cudaCheck(cudaFree(c->pcopies[i].copy));
    free(c->pcopies);
    cudaCheck(cudaFreeHost(c->host_result));
    cublasCheck(cublasDestroy(c->cublas));
    cudaCheck(cudaStreamDestroy(c->stream));
    free(c);
    be->impl = NULL;
}

extern "C" Backend *backend_cuda_new(int device, char *err) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        cudaGetLastError();
        set_err(err, "cuda backend: no CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return NULL;
    }
    if (device < 0 || device >= n) {
        set_err(err, "cuda backend: device %d does not exist (%d visible)", device, n);
        return NULL;
    }
    if ((e = cudaSetDevice(device)) != cudaSuccess) {
        set_err(err, "cuda backend: cannot use device %d: %s", device, cudaGetErrorString(e));
        return NULL;
    }
    const char *att = getenv("DINO_ATTENTION");
    if (att && *att && strcmp(att, "flash") != 0 && strcmp(att, "gemm") != 0) {
        set_err(err, "cuda backend: DINO_ATTENTION=%s: use flash (the fused kernel, default) or gemm (batched GEMMs)",
                att);
        return NULL;
    }
    const char *fuse = getenv("DINO_CUDA_FUSE_EPILOGUES");
    if (fuse && *fuse && strcmp(fuse, "0") != 0 && strcmp(fuse, "1") != 0) {
        set_err(err, "cuda backend: DINO_CUDA_FUSE_EPILOGUES=%s: use 1 (bias + GELU / SwiGLU in one epilogue kernel, "
                     "default) or 0 (the unfused kernels)", fuse);
        return NULL;
    }
    CudaImpl *c = (CudaImpl *)dino_calloc(1, sizeof *c);
    c->device = device;
    c->attention = att && strcmp(att, "gemm") == 0 ? CUDA_ATTENTION_GEMM : CUDA_ATTENTION_FLASH;
    c->fuse_epilogues = !(fuse && strcmp(fuse, "0") == 0);
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, device));
    snprintf(c->device_name, sizeof c->device_name, "%s", prop.name);
    cudaCheck(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    cudaCheck(cudaStreamCreateWithFlags(&c->copy_stream, cudaStreamNonBlocking));
    for (size_t i = 0; i < sizeof c->upload_done / sizeof c->upload_done[0]; i++)
        cudaCheck(cudaEventCreateWithFlags(&c->upload_done[i], cudaEventDisableTiming));
    cudaCheck(cudaEventCreateWithFlags(&c->alloc_done, cudaEventDisableTiming));
    cudaCheck(cudaEventRecord(c->alloc_done, c->stream)); // a recorded event before the first allocation
    cublasCheck(cublasCreate(&c->cublas));
    cublasCheck(cublasSetStream(c->cublas, c->stream));
    // Pointer mode host: alpha/beta are host scalars. cuBLAS may use its default workspace.
    cublasCheck(cublasSetPointerMode(c->cublas, CUBLAS_POINTER_MODE_HOST));
    // Our own workspace, in every mode: capturing cuBLAS calls into a graph needs one, and the same
    // workspace with graphs on and off keeps cuBLAS's choice of algorithm (and so the bits) the same.
    cudaCheck(cudaMalloc(&c->cublas_workspace, CUBLAS_WORKSPACE_BYTES));
    cublasCheck(cublasSetWorkspace(c->cublas, c->cublas_workspace, CUBLAS_WORKSPACE_BYTES));
    cudaCheck(cudaMallocHost((void **)&c->host_result, sizeof(double) * 4));
    cuda_lt_init(c, 0);
    const char *grid_env = getenv("DINO_CUDA_GEMM_GRID");
    c->gemm_grid_loop = grid_env && strcmp(grid_env, "0") == 0;
    c->gemm_precision = CUDA_GEMM_BF16;
    const char *wc_env = getenv("DINO_CUDA_WEIGHT_COPY"), *wcc_env = getenv("DINO_CUDA_WEIGHT_COPY_CHECK");
    c->weight_copy = !(wc_env && strcmp(wc_env, "0") == 0);
    c->weight_copy_check = wcc_env && strcmp(wcc_env, "1") == 0;
    const char *resln_env = getenv("DINO_CUDA_FUSE_RESLN"); // 0: residual + LayerNorm as four ops (the A/B)
    c->fuse_resln = !(resln_env && strcmp(resln_env, "0") == 0);

    Backend *be = (Backend *)dino_calloc(1, sizeof *be);
    be->name = "cuda";
    be->impl = c;
    be->alloc = cu_alloc;
    be->release = cu_release;
    be->alloc_act = cu_alloc_act;
    be->to_device = cu_to_device;
    be->to_host = cu_to_host;
    be->copy = CudaOp<cu_copy>::deferred;
    be->zero = CudaOp<cu_zero>::deferred;
    be->sync = cu_sync;
    be->host_alloc = cu_host_alloc;
    be->host_free = cu_host_free;
    be->upload_async = cu_upload_async;
    be->upload_wait = cu_upload_wait;
    be->download_async = CudaOp<cu_download_async>::deferred;
    be->download_wait = cu_download_wait;
    be->param_copy_register = cuda_param_copy_register;
    be->param_copy_changed = CudaOp<cuda_param_copy_changed>::deferred;
    be->gemm = CudaOp<cuda_gemm>::deferred;
    be->linear_fwd = CudaOp<cuda_linear_fwd>::deferred;
    be->linear_bwd = CudaOp<cuda_linear_bwd>::deferred;
    be->linear_gelu_fwd = CudaOp<cuda_linear_gelu_fwd>::deferred;
    be->linear_swiglu_fwd = CudaOp<cuda_linear_swiglu_fwd>::deferred;
    be->layernorm_fwd = CudaOp<cuda_layernorm_fwd>::deferred;
    be->layernorm_bwd = CudaOp<cuda_layernorm_bwd>::deferred;
    be->gelu_fwd = CudaOp<cuda_gelu_fwd>::deferred;
    be->gelu_bwd = CudaOp<cuda_gelu_bwd>::deferred;
    be->swiglu_fwd = CudaOp<cuda_swiglu_fwd>::deferred;
    be->swiglu_bwd = CudaOp<cuda_swiglu_bwd>::deferred;
    be->attention_saved_floats = cuda_attention_saved_floats;
    be->attention_fwd = CudaOp<cuda_attention_fwd>::deferred;
    be->attention_bwd = CudaOp<cuda_attention_bwd>::deferred;
    be->rope_fwd = CudaOp<cuda_rope_fwd>::deferred;
    be->rope_bwd = CudaOp<cuda_rope_bwd>::deferred;
    be->im2col = CudaOp<cuda_im2col>::deferred;
    be->tokens_fwd = CudaOp<cuda_tokens_fwd>::deferred;
    be->tokens_bwd = CudaOp<cuda_tokens_bwd>::deferred;
    be->gather_rows = CudaOp<cuda_gather_rows>::deferred;
    be->residual_fwd = CudaOp<cuda_residual_fwd>::deferred;
    be->residual_bwd = CudaOp<cuda_residual_bwd>::deferred;
    be->residual_layernorm_fwd = CudaOp<cuda_residual_layernorm_fwd>::deferred;
    be->layernorm_residual_bwd = CudaOp<cuda_layernorm_residual_bwd>::deferred;
    be->scatter_add_rows = CudaOp<cuda_scatter_add_rows>::deferred;
    be->axpy = CudaOp<cuda_axpy>::deferred;
    be->scale = CudaOp<cuda_scale>::deferred;
    be->sum_squares = CudaOp<cuda_sum_squares>::flushed;
    be->destroy = cuda_destroy;
    // the DINOv2 objective (head_ops.cu, loss_ops.cu, optim_ops.cu), all fp32
    be->l2norm_fwd = CudaOp<cuda_l2norm_fwd>::deferred;
    be->l2norm_bwd = CudaOp<cuda_l2norm_bwd>::deferred;
    be->weightnorm_fwd = CudaOp<cuda_weightnorm_fwd>::deferred;
    be->weightnorm_bwd = CudaOp<cuda_weightnorm_bwd>::deferred;
    be->softmax_center = CudaOp<cuda_softmax_center>::deferred;
    be->col_sum = CudaOp<cuda_col_sum>::deferred;
    be->center_update = CudaOp<cuda_center_update>::deferred;
    be->sinkhorn = CudaOp<cuda_sinkhorn>::deferred;
    be->softmax_ce = CudaOp<cuda_softmax_ce>::deferred;
    be->entropy_mean = CudaOp<cuda_entropy_mean>::deferred;
    be->koleo = CudaOp<cuda_koleo>::deferred;
    be->kde = CudaOp<cuda_kde>::deferred;
    be->gram_loss = CudaOp<cuda_gram_loss>::deferred;
    be->adamw = CudaOp<cuda_adamw>::deferred;
    be->ema = CudaOp<cuda_ema>::deferred;
    be->sum_squares_ss = CudaOp<cuda_sum_squares_ss>::deferred;
    be->update_prepare_ss = CudaOp<cuda_update_prepare_ss>::deferred;
    be->clip_scale_ss = CudaOp<cuda_clip_scale_ss>::deferred;
    be->adamw_ss = CudaOp<cuda_adamw_ss>::deferred;
    be->ema_ss = CudaOp<cuda_ema_ss>::deferred;
    be->softmax_center_ss = CudaOp<cuda_softmax_center_ss>::deferred;
    be->softmax_ce_ss = CudaOp<cuda_softmax_ce_ss>::deferred;
    be->gram_loss_ss = CudaOp<cuda_gram_loss_ss>::deferred;
    be->nonfinite_check_ss = CudaOp<cuda_nonfinite_check_ss>::deferred;
    be->revert_if_nonfinite_ss = CudaOp<cuda_revert_if_nonfinite_ss>::deferred;
    // DINO_CUDA_GRAPHS=1: graph mode in any program (an A/B of bench_step on a GPU); the trainer decides
    // again from compute_precision.cuda_graphs and its world size
    const char *graphs_env = getenv("DINO_CUDA_GRAPHS");
    if (graphs_env && strcmp(graphs_env, "1") == 0) {
        char e2[DINO_ERRLEN];
        const int mode = backend_cuda_graph_mode_on(e2);
        if (mode < 0) {
            set_err(err, "cuda backend: %s", e2);
            backend_free(be);
            return NULL;
        }
        backend_cuda_set_graphs(be, mode);
    }
    return be;
}

extern "C" void backend_cuda_free(Backend *be) { backend_free(be); }

extern "C" int backend_cuda_set_fuse_resln(Backend *be, int on) {
    setting_changes(be);
    cuda_impl(be)->fuse_resln = on != 0;
    return cuda_impl(be)->fuse_resln;
}
