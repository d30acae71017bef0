// Torch-free launchers of the CUDA kernels (csrc/cuda/*.cu, compiled by nvcc
// without torch headers); csrc/cuda/cuda_launch.cpp calls them on the current
// stream and checks what they return.
#pragma once

#include <cuda_runtime_api.h>

#include "../kernels/copy_posterior.h"
#include "../kernels/rag_fusion.h"
#include "../kernels/window_embed.h"

namespace embrag {

// rag_fusion (float32 and bfloat16; float32 accumulation): one block of
// kRagFusionThreads threads per (site tile, query).
cudaError_t launch_rag_fusion_forward(const RagFusionParams& p, cudaStream_t stream);
cudaError_t launch_rag_fusion_backward(const RagFusionParams& p, const RagFusionGradParams& g,
                                       cudaStream_t stream);
// The largest site tile (<= kSiteTile) whose block fits in kMaxSharedBytes, or 0.
int32_t rag_fusion_cuda_site_tile(const RagFusionParams& p, bool backward);

// window_embed (float32).
cudaError_t launch_window_embed_forward(const WindowEmbedArgs<float>& args, cudaStream_t stream);
// Adds into grad_site [L, D] and grad_tok [V, D] (zeroed by the caller).
cudaError_t launch_window_embed_backward(const WindowEmbedBackwardArgs<float>& args,
                                         cudaStream_t stream);
// Shared memory of one backward block: its [V, D] token accumulator.
inline size_t window_embed_backward_smem_bytes(int64_t V, int64_t D) {
  return size_t(V * D) * sizeof(float);
}

// copy_posterior (float32), one block per query: post [N, M, K]; carry [N, K] scratch.
cudaError_t launch_copy_posterior_forward(const CopyPosteriorArgs<float>& args, float* post,
                                          float* carry, cudaStream_t stream);
// grad.grads [N, 2]: per query dL/dlog_rho, dL/dlogit_theta; grad.alpha and
// grad.alpha_g [N, M, K], grad.u and grad.v [N, K] scratch.
cudaError_t launch_copy_posterior_backward(const CopyPosteriorArgs<float>& args,
                                           const CopyPosteriorGrad<float, float>& grad,
                                           cudaStream_t stream);

}  // namespace embrag
