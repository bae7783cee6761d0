// The CUDA backend (model/cuda/*.cu), callable from C. Present only in builds where nvcc was found
// (DINO_HAVE_CUDA). Precision contract (docs/cuda-backend.md): tensors are fp32 in device memory;
// GEMMs run on tensor cores with bf16 inputs and fp32 accumulation (cuBLAS compute type
// CUBLAS_COMPUTE_32F_FAST_16BF); LayerNorm, softmax, activations and every reduction run in fp32 and
// are deterministic (fixed-order block trees, no float atomics).
#pragma once
#include <stddef.h>

#include "model/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

// A backend on CUDA device `device` with its own stream and cuBLAS handle. Returns NULL with a message
// in err (DINO_ERRLEN bytes; may be NULL) when there is no such device or it cannot be initialised.
Backend *backend_cuda_new(int device, char *err);
// Same as backend_free() (kept for existing callers): releases the stream, handles and scratch memory,
// then the Backend itself.
void backend_cuda_free(Backend *be);

// How the GEMMs (linear layers, attention, be->gemm) compute:
//   CUDA_GEMM_BF16 (default): bf16 tensor-core math on fp32 data, fp32 accumulation;
//   CUDA_GEMM_FP32: true fp32 (CUBLAS_COMPUTE_32F_PEDANTIC, no TF32): slow, for tests that must isolate
//                   the non-GEMM kernels from bf16 rounding.
typedef enum { CUDA_GEMM_BF16 = 0, CUDA_GEMM_FP32 = 1 } CudaGemmPrecision;
void backend_cuda_set_gemm_precision(Backend *be, CudaGemmPrecision p);

// Which attention path runs: CUDA_ATTENTION_FLASH (default): the fused kernel (model/cuda/attention_flash.cu)
// wherever it applies (bf16 GEMM precision and head dim 16, 32, 64, 80, 96 or 128), the batched-GEMM path
// elsewhere; CUDA_ATTENTION_GEMM: always the batched-GEMM path (cuBLAS, T x T probabilities saved in bf16).
// DINO_ATTENTION=flash|gemm in the environment sets it at creation (another value: backend_cuda_new fails
// with a message). The saved state's size and layout depend on it (attention_saved_floats): change it
// only between steps, never between a forward and its backward.
typedef enum { CUDA_ATTENTION_FLASH = 0, CUDA_ATTENTION_GEMM = 1 } CudaAttention;
void backend_cuda_set_attention(Backend *be, CudaAttention a);
// Whether attention with head dim Dh runs the flash path on this backend now.
int backend_cuda_attention_is_flash(Backend *be, int Dh);

// Linear layers with a bias through cuBLASLt with the bias as the GEMM's epilogue (on by default when
// cuBLASLt accepts the shape; DINO_CUDA_LT=0 in the environment turns it off at creation). Off: the
// cublasGemmEx path (bias broadcast, then the GEMM with beta = 1). Returns whether it is on now.
int backend_cuda_set_lt(Backend *be, int on);
// How many linear shapes cuBLASLt has accepted so far (0: every linear ran the cublasGemmEx path).
int backend_cuda_lt_shapes(Backend *be);

// The GEMMs' bf16 weight copy (docs/cuda-backend.md, "bf16 weight copy"). On (the default with bf16 GEMMs;
// DINO_CUDA_WEIGHT_COPY=0 in the environment turns it off at creation), be->param_copy_register keeps a bf16
// copy of the buffer that the linear layers read as W; off, it keeps none and every bf16 GEMM converts its
// W into scratch (the A/B). Affects later registrations only. Returns whether it is on now.
int backend_cuda_set_weight_copy(Backend *be, int on);
// How many parameter buffers have a copy now.
int backend_cuda_weight_copies(Backend *be);
// The elements of all registered buffers whose copy is not the bf16 rounding of the fp32 master (the host
// waits): 0 unless something wrote a buffer without the backend and without be->param_copy_changed.
size_t backend_cuda_weight_copy_stale(Backend *be);
// Check mode (DINO_CUDA_WEIGHT_COPY_CHECK=1 at creation): every GEMM verifies the part of the copy it is
// about to read and exits with a message when it is stale. Slow (a wait per GEMM): for tests.
void backend_cuda_set_weight_copy_check(Backend *be, int on);
// Fused epilogues (docs/cuda-backend.md): linear_gelu_fwd (the MLP's fc1 + GELU) and linear_swiglu_fwd (w12 +
// SwiGLU) with the bias and the activation in one epilogue kernel after the GEMM (on by default;
// DINO_CUDA_FUSE_EPILOGUES=0 in the environment turns it off at creation, 1 keeps it on, another value makes
// backend_cuda_new fail). Off: linear_fwd then gelu_fwd / swiglu_fwd, the same bits in one more pass: the
// A/B of a GPU run. on < 0 only asks. Returns whether it is on now.
int backend_cuda_set_fuse_epilogues(Backend *be, int on);
// residual_layernorm_fwd (LayerScale + drop-path scale + residual + the next LayerNorm) as one kernel (on
// by default; DINO_CUDA_FUSE_RESLN=0 in the environment turns it off at creation) or as the four ops it
// fuses (copy, residual_fwd, gather_rows, layernorm_fwd): the same bits either way. Returns whether it
// is on now.
int backend_cuda_set_fuse_resln(Backend *be, int on);

// Free and total device memory in bytes (for benchmarks choosing batch sizes).
void backend_cuda_mem_info(Backend *be, size_t *free_bytes, size_t *total_bytes);

// The card's measured dense bf16 matmul rate (bf16 in, fp32 accumulate, cublasGemmEx) in TFLOP/s on an
// n x n x n GEMM, median of `iters` timed runs: the denominator of MFU. Returns -1 on failure.
double backend_cuda_measure_bf16_tflops(Backend *be, int n, int iters);

// CUDA graphs (docs/cuda-backend.md, "CUDA graphs"; compute_precision.cuda_graphs). Modes:
//   CUDA_GRAPHS_OFF (0): every op is launched on the stream as it comes;
//   CUDA_GRAPHS_RECORD (1): the stream records the ops between the points where the host must wait (a
//     read-back, an allocation, a free, an upload on the copy stream), also cut every
//     DINO_CUDA_GRAPH_CHUNK linear ops, and launches each such segment as one graph, updating a cached
//     exec of the same topology with the new arguments (every segment recorded every time);
//   CUDA_GRAPHS_REPLAY (2): the ops are not issued when called but noted with their arguments (the
//     segment's signature); at the segment's end, a segment seen before with the same signature is
//     launched from its cached exec without recording anything; otherwise it is recorded, then launched
//     through an exec of the same topology updated in place, or a new one. Host inputs (to_device) go
//     through a page-locked staging at the offsets the signature holds;
//   CUDA_GRAPHS_VERIFY (3): as REPLAY, but a cached segment is recorded again and checked against its exec
//     (same node count, cudaGraphExecUpdate accepts it: same topology and kernels); a difference dies.
// Same kernels, same arguments: the same bits in every mode. Call from the thread that runs the ops.
// Returns the mode now.
typedef enum { CUDA_GRAPHS_OFF = 0, CUDA_GRAPHS_RECORD = 1, CUDA_GRAPHS_REPLAY = 2, CUDA_GRAPHS_VERIFY = 3 } CudaGraphMode;
int backend_cuda_set_graphs(Backend *be, int mode);
// The mode "graphs on" means for this process: DINO_CUDA_GRAPH_MODE=record|replay|verify (default replay).
// Returns -1 with a message in err (DINO_ERRLEN bytes) for another value.
int backend_cuda_graph_mode_on(char *err);
typedef struct {
    long long launches;        // graph launches (segments)
    long long nodes;           // nodes in them (kernels, copies, memsets, cuBLAS calls)
    long long instantiations;  // segments with a topology not seen before (or evicted): cudaGraphInstantiate
    long long updates;         // segments recorded and launched through an existing exec (cudaGraphExecUpdate)
    long long replays;         // segments launched from the exec cached under their signature, not recorded
    long long verified;        // replays that CUDA_GRAPHS_VERIFY recorded again and found identical
    long long host_waits;      // times the host waited for the compute stream (read-backs, sync, frees...;
                               // counted with graphs on or off)
} CudaGraphStats;
CudaGraphStats backend_cuda_graph_stats(Backend *be);
// One recording of the ops issued between begin and end (graph mode off): nothing runs; end returns the
// recording instantiated (a cudaGraphExec_t), launched on the backend's stream by record_launch as often
// as wanted (the kernels read their per-step values from memory: model/step_scalars.h). An op that waits
// for the host or allocates meanwhile is an error of CUDA's (the execution layer reports it).
void backend_cuda_record_begin(Backend *be);
void *backend_cuda_record_end(Backend *be);
void backend_cuda_record_launch(Backend *be, void *exec);
void backend_cuda_record_free(Backend *be, void *exec);

// Name of the backend's device (e.g. "NVIDIA H100 80GB HBM3").
const char *backend_cuda_device_name(Backend *be);

// The backend's stream (a cudaStream_t as void *): every op is enqueued on it. For the NCCL layer
// (dist_nccl_set_compute_stream, dist_nccl_allreduce's `after`, dist_nccl_gate).
void *backend_cuda_stream(Backend *be);

#ifdef __cplusplus
}
#endif
