// GEMM and linear layers on OpenBLAS sgemm (row-major, fp32 accumulation).
#include <cblas.h>
#include <omp.h>

#include "model/cpu/cpu_ops.h"

static int blas_threads_saved;

void cpu_blas_threads_begin_parallel(void) {
    blas_threads_saved = openblas_get_num_threads();
    openblas_set_num_threads(1);
}
void cpu_blas_threads_end_parallel(void) { openblas_set_num_threads(blas_threads_saved); }

void cpu_gemm(Backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, lda, B, ldb, beta, C, ldc);
}

void cpu_linear_fwd(Backend *be, float *out, const float *in, const float *W, const float *b, int rows, int n_in, int n_out) {
    if (b) {
        // out = broadcast(b), then out += in W^T (beta = 1): one pass fewer than adding the bias after.
#pragma omp parallel for schedule(static)
        for (int r = 0; r < rows; r++) {
            float *o = out + (size_t)r * n_out;
            for (int j = 0; j < n_out; j++) o[j] = b[j];
        }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n_out, n_in, 1.0f, in, n_in, W, n_in, b ? 1.0f : 0.0f, out, n_out);
}

void cpu_linear_bwd(Backend *be, float *din, float *dW, float *db, const float *dout, const float *in,
                    const float *W, int rows, int n_in, int n_out) {
    if (din) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, n_in, n_out, 1.0f, dout, n_out, W, n_in, 0.0f, din, n_in);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n_out, n_in, rows, 1.0f, dout, n_out, in, n_in, 1.0f, dW, n_in);
    if (db) {
        // Column sums in a fixed order per output column: deterministic for any thread count.
#pragma omp parallel for schedule(static)
        for (int j0 = 0; j0 < n_out; j0 += 64) {
            int j1 = j0 + 64 < n_out ? j0 + 64 : n_out;
            float acc[64] = {0};
            for (int r = 0; r < rows; r++) {
                const float *d = dout + (size_t)r * n_out;
                for (int j = j0; j < j1; j++) acc[j - j0] += d[j];
            }
            for (int j = j0; j < j1; j++) db[j] += acc[j - j0];
        }
    }
}
