// GEMMs and linear layers on cuBLAS. Row-major throughout: a row-major C = op(A) op(B) is the
// column-major C^T = op(B)^T op(A)^T, so every call swaps the operands and M/N.
// Step 1 precision: fp32 data, bf16 tensor-core math with fp32 accumulation
// (CUBLAS_COMPUTE_32F_FAST_16BF); CUDA_GEMM_FP32 selects pedantic fp32 for tests.
#include <algorithm>
#include <vector>

#include <cuda_bf16.h>

#include "model/cuda/cuda_ops.cuh"

static cublasComputeType_t compute_type(Backend *be) {
    return cuda_impl(be)->gemm_precision == CUDA_GEMM_FP32 ? CUBLAS_COMPUTE_32F_PEDANTIC
                                                           : CUBLAS_COMPUTE_32F_FAST_16BF;
}

void cuda_gemm_batched(Backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A,
                       int lda, long long strideA, const float *B, int ldb, long long strideB, float beta, float *C,
                       int ldc, long long strideC, int batch) {
    if (M <= 0 || N <= 0 || batch <= 0) return;
    cublasHandle_t h = cuda_impl(be)->cublas;
    cublasOperation_t opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N, opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (batch == 1)
        cublasCheck(cublasGemmEx(h, opB, opA, N, M, K, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda, &beta, C,
                                 CUDA_R_32F, ldc, compute_type(be), CUBLAS_GEMM_DEFAULT));
    else
        cublasCheck(cublasGemmStridedBatchedEx(h, opB, opA, N, M, K, &alpha, B, CUDA_R_32F, ldb, strideB, A,
                                               CUDA_R_32F, lda, strideA, &beta, C, CUDA_R_32F, ldc, strideC, batch,
                                               compute_type(be), CUBLAS_GEMM_DEFAULT));
}

void cuda_gemm(Backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc) {
    CUDA_OP_RANGE("gemm");
    cuda_gemm_batched(be, transA, transB, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

// out[r, j] = b[j]: the GEMM then adds in W^T with beta = 1 (step 2: cuBLASLt BIAS epilogue).
__global__ void broadcast_rows_kernel(float *out, const float *b, size_t rows, int n) {
    size_t total = rows * (size_t)n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        out[i] = b[i % n];
}

void cuda_linear_fwd(Backend *be, float *out, const float *in, const float *W, const float *b, int rows, int n_in,
                     int n_out) {
    CUDA_OP_RANGE("linear_fwd");
    if (b) {
        size_t n = (size_t)rows * n_out;
        broadcast_rows_kernel<<<grid_1d(n, 256), 256, 0, cuda_stream(be)>>>(out, b, (size_t)rows, n_out);
        cudaCheckLaunch();
    }
    cuda_gemm_batched(be, 0, 1, rows, n_out, n_in, 1.0f, in, n_in, 0, W, n_in, 0, b ? 1.0f : 0.0f, out, n_out, 0, 1);
}

struct ReadMatrix {
    const float *a;
    int ld;
    __device__ float operator()(int r, int c) const { return a[(size_t)r * ld + c]; }
};

void cuda_linear_bwd(Backend *be, float *din, float *dW, float *db, const float *dout, const float *in,
                     const float *W, int rows, int n_in, int n_out) {
    CUDA_OP_RANGE("linear_bwd");
    // din = dout W ; dW += dout^T in ; db += column sums of dout
    if (din) cuda_gemm_batched(be, 0, 0, rows, n_in, n_out, 1.0f, dout, n_out, 0, W, n_in, 0, 0.0f, din, n_in, 0, 1);
    cuda_gemm_batched(be, 1, 0, n_out, n_in, rows, 1.0f, dout, n_out, 0, in, n_in, 0, 1.0f, dW, n_in, 0, 1);
    if (db) colsum_add(be, db, rows, n_out, 1.0f, ReadMatrix{dout, n_out});
}

// ---- the MFU denominator: the card's dense bf16 rate ------------------------------------------------

__global__ void fill_bf16_kernel(__nv_bfloat16 *x, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        x[i] = __float2bfloat16(((float)(h & 0xffff) / 65536.0f - 0.5f) * 0.1f);
    }
}

extern "C" double backend_cuda_measure_bf16_tflops(Backend *be, int n, int iters) {
    CudaImpl *c = cuda_impl(be);
    size_t nn = (size_t)n * n;
    __nv_bfloat16 *A, *B, *C;
    if (cudaMalloc(&A, nn * 2) != cudaSuccess || cudaMalloc(&B, nn * 2) != cudaSuccess ||
        cudaMalloc(&C, nn * 2) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    fill_bf16_kernel<<<grid_1d(nn, 256), 256, 0, c->stream>>>(A, nn, 1u);
    fill_bf16_kernel<<<grid_1d(nn, 256), 256, 0, c->stream>>>(B, nn, 2u);
    cudaCheckLaunch();
    const float alpha = 1.0f, beta = 0.0f;
    cudaEvent_t t0, t1;
    cudaCheck(cudaEventCreate(&t0));
    cudaCheck(cudaEventCreate(&t1));
    std::vector<float> ms;
    for (int it = -3; it < iters; it++) { // 3 warm-up runs
        cudaCheck(cudaEventRecord(t0, c->stream));
        cublasCheck(cublasGemmEx(c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, A, CUDA_R_16BF, n, B,
                                 CUDA_R_16BF, n, &beta, C, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        cudaCheck(cudaEventRecord(t1, c->stream));
        cudaCheck(cudaEventSynchronize(t1));
        float t = 0;
        cudaCheck(cudaEventElapsedTime(&t, t0, t1));
        if (it >= 0) ms.push_back(t);
    }
    cudaCheck(cudaEventDestroy(t0));
    cudaCheck(cudaEventDestroy(t1));
    cudaCheck(cudaFree(A));
    cudaCheck(cudaFree(B));
    cudaCheck(cudaFree(C));
    if (ms.empty()) return -1;
    std::sort(ms.begin(), ms.end());
    double med = ms[ms.size() / 2];
    return 2.0 * (double)n * n * n / (med * 1e-3) / 1e12;
}
