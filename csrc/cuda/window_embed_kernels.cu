// window_embed CUDA kernels: thin __global__ wrappers around the block bodies
// in csrc/kernels/window_embed.h (the same bodies the SIMT shim tests), each
// followed by the report of a bad input (csrc/kernels/device.h).
#include "kernels.h"

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

}  // namespace

cudaError_t launch_window_embed_forward(const WindowEmbedArgs<float>& args, cudaStream_t stream) {
  if (args.B == 0 || args.L == 0) return cudaSuccess;
  const dim3 grid(unsigned(args.L), unsigned(ceil_div(args.B, kForwardBatchTile)));
  const size_t smem = size_t(args.F + args.D) * sizeof(float);
  window_embed_forward_kernel<<<grid, kThreads, smem, stream>>>(args);
  report_bad_input_kernel<<<1, 1, 0, stream>>>();
  return cudaGetLastError();
}

cudaError_t launch_window_embed_backward(const WindowEmbedBackwardArgs<float>& args,
                                         cudaStream_t stream) {
  if (args.B == 0 || args.L == 0) return cudaSuccess;
  const dim3 grid(unsigned(ceil_div(args.L, kBackwardSiteTile)),
                  unsigned(ceil_div(args.B, kBackwardBatchTile)));
  const size_t smem = window_embed_backward_smem_bytes(args.V, args.D);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        window_embed_backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  window_embed_backward_kernel<<<grid, kThreads, smem, stream>>>(args);
  report_bad_input_kernel<<<1, 1, 0, stream>>>();
  return cudaGetLastError();
}

}  // namespace embrag
