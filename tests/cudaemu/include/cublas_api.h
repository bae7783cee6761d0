// Stand-in for the CUDA toolkit's cublas_api.h (tests/cudaemu/): the cuBLAS types and the GEMM entry
// points the project calls, with the names, values and signatures of CUDA 13's header. Implemented by
// tests/cudaemu/cublas.cpp on the CPU (column-major, as cuBLAS). Only what the project uses is here: a
// call outside this set does not compile, which is the signal to model it.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>
#include <library_types.h>

typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1, // a NULL (or destroyed) handle
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7, // a negative size, a leading dimension too small, ...
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15, // a type combination or configuration the library does not run
    CUBLAS_STATUS_LICENSE_ERROR = 16,
} cublasStatus_t;

typedef enum {
    CUBLAS_OP_N = 0,
    CUBLAS_OP_T = 1,
    CUBLAS_OP_C = 2, // conjugate transpose: the same as T on real types
} cublasOperation_t;

// Where alpha and beta live. The layer runs host mode only (device mode is refused, see cublas.cpp).
typedef enum { CUBLAS_POINTER_MODE_HOST = 0, CUBLAS_POINTER_MODE_DEVICE = 1 } cublasPointerMode_t;

// The precision of the products and the accumulator (cublasGemmEx's documented table in cublas.cpp).
typedef enum {
    CUBLAS_COMPUTE_16F = 64,
    CUBLAS_COMPUTE_16F_PEDANTIC = 65,
    CUBLAS_COMPUTE_32F = 68,           // fp32; bf16/fp16 inputs exact
    CUBLAS_COMPUTE_32F_PEDANTIC = 69,  // fp32, never down-converted
    CUBLAS_COMPUTE_32F_FAST_16F = 74,  // fp32 inputs rounded to fp16 by the tensor cores
    CUBLAS_COMPUTE_32F_FAST_16BF = 75, // fp32 inputs rounded to bf16 by the tensor cores
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77, // fp32 inputs rounded to tf32 (10-bit mantissa)
    CUBLAS_COMPUTE_64F = 70,
    CUBLAS_COMPUTE_64F_PEDANTIC = 71,
    CUBLAS_COMPUTE_32I = 72,
    CUBLAS_COMPUTE_32I_PEDANTIC = 73,
} cublasComputeType_t;

// The algorithm of a GemmEx call (a hint; every value gives the same result here).
typedef enum {
    CUBLAS_GEMM_DEFAULT = -1,
    CUBLAS_GEMM_DFALT = -1,
    CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99,
    CUBLAS_GEMM_DFALT_TENSOR_OP = 99,
} cublasGemmAlgo_t;

typedef struct cublasContext *cublasHandle_t;

cublasStatus_t cublasCreate(cublasHandle_t *handle);
cublasStatus_t cublasDestroy(cublasHandle_t handle);
// The stream later calls are enqueued on (NULL: the legacy default stream).
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream);
cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t *stream);
cublasStatus_t cublasSetPointerMode(cublasHandle_t handle, cublasPointerMode_t mode);
// The handle's workspace (device memory). Capturing cuBLAS calls into a CUDA graph needs one: without it
// cuBLAS allocates its own during the capture; the layer reports a captured call on a handle without it.
cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void *workspace, size_t bytes);
cublasStatus_t cublasGetPointerMode(cublasHandle_t handle, cublasPointerMode_t *mode);
const char *cublasGetStatusName(cublasStatus_t status);
const char *cublasGetStatusString(cublasStatus_t status);

// C = alpha op(A) op(B) + beta C, column-major; C is m x n, op(A) m x k, op(B) k x n.
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo);
// batchCount GEMMs on operands given by arrays of pointers in DEVICE memory (read when the call runs).
cublasStatus_t cublasGemmBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                                   int n, int k, const void *alpha, const void *const Aarray[], cudaDataType Atype,
                                   int lda, const void *const Barray[], cudaDataType Btype, int ldb, const void *beta,
                                   void *const Carray[], cudaDataType Ctype, int ldc, int batchCount,
                                   cublasComputeType_t computeType, cublasGemmAlgo_t algo);
// batchCount GEMMs, batch i on A + i * strideA, B + i * strideB, C + i * strideC (strides in elements).
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void *alpha, const void *A, cudaDataType Atype,
                                          int lda, long long int strideA, const void *B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void *beta, void *C, cudaDataType Ctype,
                                          int ldc, long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t algo);
