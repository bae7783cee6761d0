// Stand-in for the CUDA toolkit's cublasLt.h (tests/cudaemu/): the cuBLASLt matmul API the project calls
// (model/cuda/matmul.cu), with the names, values and signatures of CUDA 13's header. Implemented by
// tests/cudaemu/cublas.cpp. Only what the project uses is here.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cublas_api.h>

typedef struct cublasLtContext *cublasLtHandle_t;
// Descriptors: opaque heap objects (cublas.cpp) holding the attributes set on them.
typedef struct cublasLtMatmulDescOpaque_st *cublasLtMatmulDesc_t;
typedef struct cublasLtMatrixLayoutOpaque_st *cublasLtMatrixLayout_t;
typedef struct cublasLtMatmulPreferenceOpaque_st *cublasLtMatmulPreference_t;

// An algorithm as the heuristic returns it: opaque, copied by value (the shape of the real header).
// The layer records in it what the algorithm was chosen for (the alignments among others).
typedef struct {
    uint64_t data[8];
} cublasLtMatmulAlgo_t;

typedef struct {
    cublasLtMatmulAlgo_t algo;
    size_t workspaceSize; // the workspace the algorithm needs (cublasLtMatmul must get at least this)
    cublasStatus_t state; // the other fields are valid only when this is CUBLAS_STATUS_SUCCESS
    float wavesCount;
    int reserved[4];
} cublasLtMatmulHeuristicResult_t;

// Matmul descriptor attributes (the type each takes; SetAttribute checks sizeInBytes against it).
typedef enum {
    CUBLASLT_MATMUL_DESC_COMPUTE_TYPE = 0, // int32_t cublasComputeType_t
    CUBLASLT_MATMUL_DESC_SCALE_TYPE = 1,   // int32_t cudaDataType: the type of alpha and beta
    CUBLASLT_MATMUL_DESC_POINTER_MODE = 2, // int32_t cublasLtPointerMode_t (host only here)
    CUBLASLT_MATMUL_DESC_TRANSA = 3,       // int32_t cublasOperation_t, default CUBLAS_OP_N
    CUBLASLT_MATMUL_DESC_TRANSB = 4,       // int32_t cublasOperation_t, default CUBLAS_OP_N
    CUBLASLT_MATMUL_DESC_EPILOGUE = 7,     // uint32_t cublasLtEpilogue_t, default CUBLASLT_EPILOGUE_DEFAULT
    // const void *, default NULL. The heuristic does not read it but takes the alignment it needs from it.
    CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,
    CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26, // int32_t cudaDataType, default -1 (the type of D)
} cublasLtMatmulDescAttributes_t;

typedef enum {
    CUBLASLT_POINTER_MODE_HOST = CUBLAS_POINTER_MODE_HOST,
    CUBLASLT_POINTER_MODE_DEVICE = CUBLAS_POINTER_MODE_DEVICE,
} cublasLtPointerMode_t;

// Split-K reductions an algorithm may use (a mask in the preference).
typedef enum {
    CUBLASLT_REDUCTION_SCHEME_NONE = 0,
    CUBLASLT_REDUCTION_SCHEME_INPLACE = 1, // through the output, with atomics: not reproducible
    CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE = 2,
    CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE = 4,
    CUBLASLT_REDUCTION_SCHEME_MASK = 0x7,
} cublasLtReductionScheme_t;

typedef enum {
    CUBLASLT_EPILOGUE_DEFAULT = 1,
    CUBLASLT_EPILOGUE_BIAS = 4, // D[i, j] += bias[i]: a vector of D's rows, broadcast over the columns
} cublasLtEpilogue_t;

// Heuristic preferences (the type each takes).
typedef enum {
    CUBLASLT_MATMUL_PREF_SEARCH_MODE = 0,          // uint32_t, default 0 (best fit)
    CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,  // uint64_t, default 0: no workspace
    CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK = 3, // uint32_t, default CUBLASLT_REDUCTION_SCHEME_MASK
    // uint32_t each, default 256: the algorithm may assume the operand's address is a multiple of this
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
} cublasLtMatmulPreferenceAttributes_t;

cublasStatus_t cublasLtCreate(cublasLtHandle_t *lightHandle);
cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle);

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *matmulDesc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType);
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc);
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t sizeInBytes);

// A column-major rows x cols matrix of `type` with leading dimension ld (in elements).
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *matLayout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld);
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout);

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref);
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref);
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t sizeInBytes);

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int *returnAlgoCount);

// D = alpha op(A) op(B) + beta C (+ the epilogue), enqueued on `stream`. algo NULL: chosen for these
// very pointers.
cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t Adesc, const void *B,
                              cublasLtMatrixLayout_t Bdesc, const void *beta, const void *C,
                              cublasLtMatrixLayout_t Cdesc, void *D, cublasLtMatrixLayout_t Ddesc,
                              const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspaceSizeInBytes,
                              cudaStream_t stream);
