// axpy, scale and the deterministic sum of squares (fp64 accumulation: a fixed grid of partial sums,
// each a block tree in a fixed order, then one block sums the partials in order).
#include "model/cuda/cuda_ops.cuh"

#define GRID_STRIDE(i, n)                                                                          \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

__global__ void axpy_kernel(float *y, float alpha, const float *x, size_t n) {
    GRID_STRIDE(i, n) y[i] += alpha * x[i];
}
__global__ void scale_kernel(float *x, float alpha, size_t n) {
    GRID_STRIDE(i, n) x[i] *= alpha;
}

void cuda_axpy(Backend *be, float *y, float alpha, const float *x, size_t n) {
    CUDA_OP_RANGE("axpy");
    if (!n) return;
    DINO_LAUNCH(axpy_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(y, alpha, x, n);
    cudaCheckLaunch();
    cuda_param_written(be, y, sizeof(float) * n); // weights changed: their bf16 copy (nothing for other buffers)
}

void cuda_scale(Backend *be, float *x, float alpha, size_t n) {
    CUDA_OP_RANGE("scale");
    if (!n) return;
    DINO_LAUNCH(scale_kernel, grid_1d(n, 256), 256, 0, cuda_stream(be))(x, alpha, n);
    cudaCheckLaunch();
    cuda_param_written(be, x, sizeof(float) * n);
}

#define SS_BLOCKS 512 // fixed: the partition (hence the rounding) never depends on the device
#define SS_THREADS 256

// Block tree in shared memory: the same pairing on every run.
__device__ double block_sum_double(double v, double *sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    return sh[0];
}

__global__ void sum_squares_partial_kernel(double *partial, const float *x, size_t n) {
    __shared__ double sh[SS_THREADS];
    double s = 0.0;
    GRID_STRIDE(i, n) s += (double)x[i] * x[i];
    double t = block_sum_double(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = t;
}

__global__ void sum_partials_kernel(double *out, const double *partial, int n) {
    __shared__ double sh[SS_THREADS];
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    double t = block_sum_double(s, sh);
    if (threadIdx.x == 0) *out = t;
}

double cuda_sum_squares(Backend *be, const float *x, size_t n) {
    CUDA_OP_RANGE("sum_squares");
    if (!n) return 0.0;
    CudaImpl *c = cuda_impl(be);
    double *partial = (double *)cuda_scratch(be, sizeof(double) * (SS_BLOCKS + 1));
    DINO_LAUNCH(sum_squares_partial_kernel, SS_BLOCKS, SS_THREADS, 0, c->stream)(partial, x, n);
    cudaCheckLaunch();
    DINO_LAUNCH(sum_partials_kernel, 1, SS_THREADS, 0, c->stream)(partial + SS_BLOCKS, partial, SS_BLOCKS);
    cudaCheckLaunch();
    cudaCheck(cudaMemcpyAsync(c->host_result, partial + SS_BLOCKS, sizeof(double), cudaMemcpyDeviceToHost, c->stream));
    cuda_host_wait(be); // with graphs on: launches the segment that ends with this copy
    cuda_graph_resume(be);
    return *c->host_result;
}

// The same sum, added into the step's scalar block on the device (no read-back): *acc += sum, in the
// order the host added the read-back sums (one op per run of tensors, in the caller's order).
__global__ void sum_partials_acc_kernel(double *acc, const double *partial, int n) {
    __shared__ double sh[SS_THREADS];
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    double t = block_sum_double(s, sh);
    if (threadIdx.x == 0) *acc += t;
}

void cuda_sum_squares_ss(Backend *be, const float *x, size_t n, int group, DinoStepScalars *ss) {
    CUDA_OP_RANGE("sum_squares_ss");
    if (!n) return;
    CudaImpl *c = cuda_impl(be);
    double *partial = (double *)cuda_scratch(be, sizeof(double) * SS_BLOCKS);
    DINO_LAUNCH(sum_squares_partial_kernel, SS_BLOCKS, SS_THREADS, 0, c->stream)(partial, x, n);
    cudaCheckLaunch();
    DINO_LAUNCH(sum_partials_acc_kernel, 1, SS_THREADS, 0, c->stream)(&ss->out.grad_ss[group], partial, SS_BLOCKS);
    cudaCheckLaunch();
}
