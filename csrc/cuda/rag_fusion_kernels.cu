// rag_fusion CUDA kernels: thin __global__ wrappers around the block bodies of
// csrc/kernels/rag_fusion.h (the bodies the CPU kernels and the SIMT shim run),
// one instantiation per (element type, token rows kV, head width). No
// __launch_bounds__: with it ptxas trades registers for occupancy and spills.
#include <cuda_bf16.h>

#include "kernels.h"

namespace embrag {
namespace {

template <typename scalar_t, int kV, int kHeadDim>
__global__ void rag_fusion_forward_kernel(const RagFusionParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const CudaCtx ctx{};
  RagFusionBlock<scalar_t, kV, kHeadDim, CudaCtx>(ctx, p, false, smem).forward();
}

template <typename scalar_t, int kV, int kHeadDim>
__global__ void rag_fusion_backward_kernel(const RagFusionParams p, const RagFusionGradParams g) {
  extern __shared__ __align__(16) unsigned char smem[];
  const CudaCtx ctx{};
  RagFusionBlock<scalar_t, kV, kHeadDim, CudaCtx>(ctx, p, true, smem).backward(g);
}

// Launches kernel on the (site tiles, queries) grid with smem_bytes of
// dynamic shared memory, opting in above the 48 KiB default, then the report
// of a bad input (csrc/kernels/device.h).
template <typename Kernel, typename... Args>
cudaError_t launch(Kernel kernel, const RagFusionParams& p, size_t smem_bytes, cudaStream_t stream,
                   const Args&... args) {
  if (smem_bytes > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes));
    if (err != cudaSuccess) return err;
  }
  kernel<<<dim3(unsigned(p.site_tiles()), unsigned(p.B)), kRagFusionThreads, smem_bytes, stream>>>(args...);
  report_bad_input_kernel<<<1, 1, 0, stream>>>();
  return cudaGetLastError();
}

// Calls f(scalar_t{}, kV, kHeadDim) with the kernel's compile-time types.
template <typename F>
cudaError_t dispatch(const RagFusionParams& p, const F& f) {
  cudaError_t err = cudaErrorInvalidValue;  // float64 does not run on CUDA
  dispatch_rag_fusion_sizes(p.V, p.head_dim(), [&](auto v, auto head_dim) {
    if (p.dtype == DType::kFloat32) err = f(float{}, v, head_dim);
    if (p.dtype == DType::kBFloat16) err = f(__nv_bfloat16{}, v, head_dim);
  });
  return err;
}

}  // namespace

int32_t rag_fusion_cuda_site_tile(const RagFusionParams& p, bool backward) {
  RagFusionParams trial = p;
  for (trial.site_tile = kSiteTile; trial.site_tile > 0; trial.site_tile /= 2) {
    size_t bytes = 0;
    dispatch_rag_fusion_sizes(p.V, p.head_dim(), [&](auto v, auto) {
      bytes = rag_fusion_smem_bytes<float, v()>(trial, kRagFusionThreads, backward);
    });
    if (bytes <= size_t(kMaxSharedBytes)) return trial.site_tile;
  }
  return 0;
}

cudaError_t launch_rag_fusion_forward(const RagFusionParams& p, cudaStream_t stream) {
  if (p.B == 0) return cudaSuccess;
  return dispatch(p, [&](auto zero, auto v, auto head_dim) {
    using scalar_t = decltype(zero);
    return launch(rag_fusion_forward_kernel<scalar_t, v(), head_dim()>, p,
                  rag_fusion_smem_bytes<float, v()>(p, kRagFusionThreads, false), stream, p);
  });
}

cudaError_t launch_rag_fusion_backward(const RagFusionParams& p, const RagFusionGradParams& g,
                                       cudaStream_t stream) {
  if (p.B == 0) return cudaSuccess;
  return dispatch(p, [&](auto zero, auto v, auto head_dim) {
    using scalar_t = decltype(zero);
    return launch(rag_fusion_backward_kernel<scalar_t, v(), head_dim()>, p,
                  rag_fusion_smem_bytes<float, v()>(p, kRagFusionThreads, true), stream, p, g);
  });
}

}  // namespace embrag
