// Torch-free launchers of the rag_fusion CUDA kernels (float32 and bfloat16,
// float32 accumulation). The kernels live in rag_fusion_kernels.cu, compiled
// by nvcc without torch headers; rag_fusion_cuda.cpp validates and calls these.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "../kernels/rag_fusion.h"

namespace embrag {

constexpr int64_t kRagFusionSmemBytes = 48 * 1024;

// Stage 1: neighbour tokens and agreement counts.
cudaError_t launch_neighbour_sites(const NeighbourSitesArgs& args, cudaStream_t stream);
// Sites per block of stage 2 so that its shared memory fits, or 0 if even
// one site does not (the tables are too large).
int64_t rag_fusion_site_tile(int64_t V, int64_t D, int64_t n_heads, bool backward);

// scalar_t: float or __nv_bfloat16.
template <typename scalar_t>
cudaError_t launch_rag_fusion_forward(const RagFusionArgs<scalar_t>& args, scalar_t* out,
                                      cudaStream_t stream);
template <typename scalar_t>
cudaError_t launch_rag_fusion_backward(const RagFusionArgs<scalar_t>& args,
                                       const RagFusionGrads<scalar_t>& grads, cudaStream_t stream);

}  // namespace embrag
