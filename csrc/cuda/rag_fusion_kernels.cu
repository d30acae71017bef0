// rag_fusion CUDA kernels: thin __global__ wrappers around the block bodies in
// csrc/kernels/rag_fusion.h (the same bodies the SIMT shim tests).
#include "rag_fusion_launch.h"

namespace embrag {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kMaxSiteTile = 32;

__global__ void neighbour_sites_kernel(NeighbourSitesArgs args) {
  extern __shared__ int32_t int_smem[];
  neighbour_sites_block(CudaCtx{}, args, int_smem);
}

template <typename scalar_t>
__global__ void rag_fusion_forward_kernel(RagFusionArgs<scalar_t> args, scalar_t* out,
                                          int64_t tile) {
  extern __shared__ float float_smem[];
  rag_fusion_forward_block(CudaCtx{}, args, out, tile, float_smem);
}

template <typename scalar_t>
__global__ void rag_fusion_backward_kernel(RagFusionArgs<scalar_t> args,
                                           RagFusionGrads<scalar_t> grads, int64_t tile) {
  extern __shared__ float float_smem[];
  rag_fusion_backward_block(CudaCtx{}, args, grads, tile, float_smem);
}

int64_t smem_floats(int64_t tile, int64_t V, int64_t D, int64_t nh, bool backward) {
  return backward ? rag_fusion_backward_smem_floats(tile, V, D, nh)
                  : rag_fusion_forward_smem_floats(tile, V, D, nh);
}

// Grid of stage 2: (site tiles, queries).
dim3 fusion_grid(int64_t L, int64_t B, int64_t tile) {
  return dim3(unsigned(ceil_div(L, tile)), unsigned(B));
}

}  // namespace

cudaError_t launch_neighbour_sites(const NeighbourSitesArgs& args, cudaStream_t stream) {
  if (args.B == 0) return cudaSuccess;
  const size_t smem = size_t(neighbour_sites_smem_ints(args.L, kThreads)) * sizeof(int32_t);
  neighbour_sites_kernel<<<dim3(unsigned(args.K), unsigned(args.B)), kThreads, smem, stream>>>(args);
  return cudaGetLastError();
}

int64_t rag_fusion_site_tile(int64_t V, int64_t D, int64_t n_heads, bool backward) {
  int64_t tile = kMaxSiteTile;
  while (tile > 0 && smem_floats(tile, V, D, n_heads, backward) * int64_t(sizeof(float)) >
                         kRagFusionSmemBytes)
    --tile;
  return tile;
}

template <typename scalar_t>
cudaError_t launch_rag_fusion_forward(const RagFusionArgs<scalar_t>& args, scalar_t* out,
                                      cudaStream_t stream) {
  if (args.B == 0) return cudaSuccess;
  const int64_t tile = rag_fusion_site_tile(args.V, args.D, args.n_heads, false);
  const size_t smem = size_t(smem_floats(tile, args.V, args.D, args.n_heads, false)) * sizeof(float);
  rag_fusion_forward_kernel<scalar_t>
      <<<fusion_grid(args.L, args.B, tile), kThreads, smem, stream>>>(args, out, tile);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_rag_fusion_backward(const RagFusionArgs<scalar_t>& args,
                                       const RagFusionGrads<scalar_t>& grads, cudaStream_t stream) {
  if (args.B == 0) return cudaSuccess;
  const int64_t tile = rag_fusion_site_tile(args.V, args.D, args.n_heads, true);
  const size_t smem = size_t(smem_floats(tile, args.V, args.D, args.n_heads, true)) * sizeof(float);
  rag_fusion_backward_kernel<scalar_t>
      <<<fusion_grid(args.L, args.B, tile), kThreads, smem, stream>>>(args, grads, tile);
  return cudaGetLastError();
}

template cudaError_t launch_rag_fusion_forward<float>(const RagFusionArgs<float>&, float*,
                                                      cudaStream_t);
template cudaError_t launch_rag_fusion_forward<__nv_bfloat16>(const RagFusionArgs<__nv_bfloat16>&,
                                                              __nv_bfloat16*, cudaStream_t);
template cudaError_t launch_rag_fusion_backward<float>(const RagFusionArgs<float>&,
                                                       const RagFusionGrads<float>&, cudaStream_t);
template cudaError_t launch_rag_fusion_backward<__nv_bfloat16>(
    const RagFusionArgs<__nv_bfloat16>&, const RagFusionGrads<__nv_bfloat16>&, cudaStream_t);

}  // namespace embrag
