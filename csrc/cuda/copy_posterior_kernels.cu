// copy_posterior CUDA kernels: thin __global__ wrappers around the block bodies
// in csrc/kernels/copy_posterior.h (the same bodies the SIMT shim tests), one
// block per query, each launch followed by the report of a bad input
// (csrc/kernels/device.h).
#include "kernels.h"

namespace embrag {
namespace {

constexpr int kMaxThreads = 256;

// The shared memory of the largest block: far below the limit, so no opt-in.
static_assert(copy_posterior_smem_elems(kMaxThreads) * int64_t(sizeof(float)) <= kMaxSharedBytes,
              "copy_posterior: the reduction buffer must fit in kMaxSharedBytes");

// Threads per block: a multiple of a warp covering K (idle threads only when K < 256).
int threads_for(int64_t K) {
  const int64_t warps = ceil_div(K < 1 ? 1 : K, 32);
  return int(warps * 32 < kMaxThreads ? warps * 32 : kMaxThreads);
}

size_t smem_bytes(int threads) { return size_t(copy_posterior_smem_elems(threads)) * sizeof(float); }

__global__ void __launch_bounds__(kMaxThreads)
    copy_posterior_forward_kernel(CopyPosteriorArgs<float> args, float* post, float* carry) {
  extern __shared__ float smem[];
  copy_posterior_forward_block<float, float>(CudaCtx{}, args, post, carry, smem);
}

__global__ void __launch_bounds__(kMaxThreads)
    copy_posterior_backward_kernel(CopyPosteriorArgs<float> args,
                                   CopyPosteriorGrad<float, float> grad) {
  extern __shared__ float smem[];
  copy_posterior_backward_block<float, float>(CudaCtx{}, args, grad, smem);
}

}  // namespace

cudaError_t launch_copy_posterior_forward(const CopyPosteriorArgs<float>& args, float* post,
                                          float* carry, cudaStream_t stream) {
  if (args.N == 0 || args.M == 0 || args.K == 0) return cudaSuccess;
  const int threads = threads_for(args.K);
  copy_posterior_forward_kernel<<<unsigned(args.N), threads, smem_bytes(threads), stream>>>(
      args, post, carry);
  report_bad_input_kernel<<<1, 1, 0, stream>>>();
  return cudaGetLastError();
}

cudaError_t launch_copy_posterior_backward(const CopyPosteriorArgs<float>& args,
                                           const CopyPosteriorGrad<float, float>& grad,
                                           cudaStream_t stream) {
  if (args.N == 0) return cudaSuccess;
  const int threads = threads_for(args.K);
  copy_posterior_backward_kernel<<<unsigned(args.N), threads, smem_bytes(threads), stream>>>(
      args, grad);
  report_bad_input_kernel<<<1, 1, 0, stream>>>();
  return cudaGetLastError();
}

}  // namespace embrag
