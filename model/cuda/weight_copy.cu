// The GEMMs' bf16 weight copy (docs/cuda-backend.md, "bf16 weight copy"). The model registers its flat
// parameter buffers (be->param_copy_register); for each the backend keeps a bf16 copy, element for element
// the rounding of the fp32 master, which the bf16 GEMMs read in place of converting W into scratch at every
// call. The copy is kept current eagerly, at the write: adamw and ema store it in the same kernel as the
// master (optim_ops.cu); every other write through the backend (to_device, copy, zero, axpy, scale)
// converts the range it wrote right after; writes from outside (NCCL, MPI all-gathers into device memory)
// must call be->param_copy_changed. So a GEMM never needs to ask whether a copy is current, and a forgotten
// refresh is a wrong weight, which the check mode (DINO_CUDA_WEIGHT_COPY_CHECK=1) turns into an exit
// naming the buffer.
#include <math.h>
#include <string.h>

extern "C" {
#include "common/check.h"
}
#include "model/cuda/cuda_ops.cuh"
#include "model/cuda/reduce.cuh"

// ---- the registry: a handful of buffers (student, teacher, Gram teacher, a distillation teacher) ---------

static const ParamCopy *copy_holding(const CudaImpl *c, const char *p) {
    for (int i = 0; i < c->n_pcopies; i++)
        if (p >= c->pcopies[i].base && p < c->pcopies[i].base + 4 * c->pcopies[i].n) return &c->pcopies[i];
    return NULL;
}

// The copy's elements [i0, i1) from the master.
static void refresh(Backend *be, const ParamCopy *pc, size_t i0, size_t i1) {
    if (i1 > i0) cuda_to_bf16(be, pc->copy + i0, (const float *)pc->base + i0, i1 - i0);
}

static void registry_changes(Backend *be) {
    cuda_host_wait(be);
    cuda_replay_forget(cuda_impl(be));
    cuda_graph_resume(be);
}

size_t cuda_param_copy_register(Backend *be, float *P, size_t n) {
    CudaImpl *c = cuda_impl(be);
    if (!c->weight_copy || c->gemm_precision != CUDA_GEMM_BF16 || !P || !n) return 0; // fp32 GEMMs read fp32
    for (int i = 0; i < c->n_pcopies; i++) {
        const ParamCopy *q = &c->pcopies[i];
        if ((const char *)P < q->base + 4 * q->n && q->base < (const char *)(P + n))
            DINO_DIE("cuda backend: param_copy_register of a buffer that overlaps one registered already");
    }
    // ops recorded (or deferred) before looked the registry up as it was: they run first, and no cached
    // segment is replayed with the old registry (registration happens at init today; this keeps it safe)
    registry_changes(be);
    if (c->n_pcopies == c->cap_pcopies) {
        c->cap_pcopies = c->cap_pcopies ? 2 * c->cap_pcopies : 8;
        c->pcopies = (ParamCopy *)dino_realloc(c->pcopies, sizeof(ParamCopy) * (size_t)c->cap_pcopies);
    }
    ParamCopy *pc = &c->pcopies[c->n_pcopies++];
    *pc = ParamCopy{(const char *)P, n, (__nv_bfloat16 *)be->alloc(be, 2 * n)};
    refresh(be, pc, 0, n); // P may hold weights already
    return 2 * n;
}

void cuda_param_copy_forget(Backend *be, const void *p) {
    CudaImpl *c = cuda_impl(be);
    for (int i = 0; i < c->n_pcopies; i++)
        if (c->pcopies[i].base == (const char *)p) {
            void *copy = c->pcopies[i].copy;
            c->pcopies[i] = c->pcopies[--c->n_pcopies];
            be->release(be, copy);
            return;
        }
}

void cuda_param_written(Backend *be, const void *p, size_t bytes) {
    const CudaImpl *c = cuda_impl(be);
    const char *lo = (const char *)p, *hi = lo + bytes;
    for (int i = 0; i < c->n_pcopies; i++) { // the covered part of every registered buffer, whole floats
        const ParamCopy *pc = &c->pcopies[i];
        const char *b0 = pc->base, *b1 = pc->base + 4 * pc->n;
        if (hi <= b0 || lo >= b1) continue;
        const size_t i0 = lo > b0 ? (size_t)(lo - b0) / 4 : 0, i1 = hi < b1 ? ((size_t)(hi - b0) + 3) / 4 : pc->n;
        refresh(be, pc, i0, i1);
    }
}

void cuda_param_copy_changed(Backend *be, const float *p, size_t n) {
    CUDA_OP_RANGE("param_copy_changed");
    cuda_param_written(be, p, 4 * n);
}

__nv_bfloat16 *cuda_param_copy_at(Backend *be, const float *p, size_t n) {
    const CudaImpl *c = cuda_impl(be);
    if (!c->n_pcopies || !n) return NULL;
    const ParamCopy *pc = copy_holding(c, (const char *)p);
    if (!pc) return NULL;
    const size_t i = (size_t)((const char *)p - pc->base) / 4;
    if (((size_t)((const char *)p - pc->base)) % 4 || i + n > pc->n) return NULL; // not all inside: the caller refreshes
    return pc->copy + i;
}

// ---- verification: the copy against the rounding of its master ----------------------------------------------

#define VERIFY_BLOCKS 64
#define VERIFY_THREADS 256

__global__ void copy_mismatch_kernel(double *partial, const float *master, const __nv_bfloat16 *copy, size_t n) {
    __shared__ double sh[32];
    double bad = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float want = __bfloat162float(__float2bfloat16(master[i])), got = __bfloat162float(copy[i]);
        if (!(want == got) && !(isnan(want) && isnan(got))) bad += 1;
    }
    const double t = block_sum(bad, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = t;
}

__global__ void copy_mismatch_total_kernel(double *out, const double *partial, int n) {
    __shared__ double sh[32];
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    const double t = block_sum(s, sh);
    if (threadIdx.x == 0) *out = t;
}

// Elements of master[0, n) whose copy differs from their bf16 rounding (the host waits).
static size_t mismatches(Backend *be, const float *master, const __nv_bfloat16 *copy, size_t n) {
    if (!n) return 0;
    CudaImpl *c = cuda_impl(be);
    double *partial = (double *)cuda_scratch(be, sizeof(double) * (VERIFY_BLOCKS + 1));
    DINO_LAUNCH(copy_mismatch_kernel, VERIFY_BLOCKS, VERIFY_THREADS, 0, c->stream)(partial, master, copy, n);
    cudaCheckLaunch();
    DINO_LAUNCH(copy_mismatch_total_kernel, 1, VERIFY_THREADS, 0, c->stream)(partial + VERIFY_BLOCKS, partial,
                                                                             VERIFY_BLOCKS);
    cudaCheckLaunch();
    cudaCheck(cudaMemcpyAsync(c->host_result, partial + VERIFY_BLOCKS, sizeof(double), cudaMemcpyDeviceToHost,
                              c->stream));
    cuda_host_wait(be);
    cuda_graph_resume(be);
    return (size_t)*c->host_result;
}

const __nv_bfloat16 *cuda_weight_bf16(Backend *be, const float *W, size_t n) {
    const __nv_bfloat16 *w16 = cuda_param_copy_at(be, W, n);
    if (w16 && cuda_impl(be)->weight_copy_check) {
        const size_t bad = mismatches(be, W, w16, n);
        if (bad) {
            const ParamCopy *pc = copy_holding(cuda_impl(be), (const char *)W);
            DINO_DIE("cuda backend: the bf16 weight copy of %zu of the %zu weights at float %zu of a parameter "
                     "buffer of %zu floats differs from its fp32 master: something wrote the buffer without the "
                     "backend and without be->param_copy_changed (docs/cuda-backend.md, \"bf16 weight copy\")",
                     bad, n, (size_t)((const char *)W - pc->base) / 4, pc->n);
        }
    }
    return w16;
}

// ---- the C interface (backend_cuda.h) --------------------------------------------------------------------------

extern "C" int backend_cuda_set_weight_copy(Backend *be, int on) {
    registry_changes(be);
    cuda_impl(be)->weight_copy = on != 0;
    return cuda_impl(be)->weight_copy;
}

extern "C" void backend_cuda_set_weight_copy_check(Backend *be, int on) {
    registry_changes(be);
    cuda_impl(be)->weight_copy_check = on != 0;
}

extern "C" size_t backend_cuda_weight_copy_stale(Backend *be) {
    const CudaImpl *c = cuda_impl(be);
    size_t bad = 0;
    for (int i = 0; i < c->n_pcopies; i++)
        bad += mismatches(be, (const float *)c->pcopies[i].base, c->pcopies[i].copy, c->pcopies[i].n);
    return bad;
}

extern "C" int backend_cuda_weight_copies(Backend *be) { return cuda_impl(be)->n_pcopies; }
