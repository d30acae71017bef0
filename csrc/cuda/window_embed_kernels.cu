// window_embed CUDA kernels: thin __global__ wrappers around the block bodies
// in csrc/kernels/window_embed.h (the same bodies the SIMT shim tests).
#include "window_embed_launch.h"

namespace embrag {
namespace {

constexpr int kThreads = 128;

__global__ void window_embed_forward_kernel(WindowEmbedArgs<float> args) {
  extern __shared__ float smem[];
  window_embed_forward_block(CudaCtx{}, args, smem);
}

__global__ void window_embed_backward_kernel(WindowEmbedBackwardArgs<float> args) {
  extern __shared__ float smem[];
  window_embed_backward_block(CudaCtx{}, args, smem);
}

__global__ void af_features_kernel(const float* af, int64_t L, int64_t F, float* feats) {
  af_features_block(CudaCtx{}, af, L, F, feats);
}

}  // namespace

cudaError_t launch_window_embed_forward(const WindowEmbedArgs<float>& args, cudaStream_t stream) {
  if (args.B == 0 || args.L == 0) return cudaSuccess;
  const dim3 grid(unsigned(args.L), unsigned(ceil_div(args.B, kForwardBatchTile)));
  const size_t smem = size_t(args.F + args.D) * sizeof(float);
  window_embed_forward_kernel<<<grid, kThreads, smem, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t launch_window_embed_backward(const WindowEmbedBackwardArgs<float>& args,
                                         cudaStream_t stream) {
  if (args.L == 0) return cudaSuccess;
  const unsigned grid = unsigned(ceil_div(args.L, kBackwardSiteTile));
  const size_t smem = window_embed_backward_smem_bytes(args.V, args.D);
  window_embed_backward_kernel<<<grid, kThreads, smem, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t launch_af_features(const float* af, int64_t L, int64_t F, float* feats,
                               cudaStream_t stream) {
  if (L * F == 0) return cudaSuccess;
  af_features_kernel<<<unsigned(ceil_div(L * F, kThreads)), kThreads, 0, stream>>>(af, L, F, feats);
  return cudaGetLastError();
}

}  // namespace embrag
