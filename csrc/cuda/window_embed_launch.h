// Torch-free launchers of the window_embed CUDA kernels (float32). The kernels
// live in window_embed_kernels.cu, compiled by nvcc without torch headers; the
// torch glue in window_embed_cuda.cpp validates inputs and calls these.
#pragma once

#include <cuda_runtime_api.h>

#include "../kernels/window_embed.h"

namespace embrag {

cudaError_t launch_window_embed_forward(const WindowEmbedArgs<float>& args, cudaStream_t stream);
// Writes grad_site [L, D] and accumulates into grad_tok [V, D] (zeroed by the caller).
cudaError_t launch_window_embed_backward(const WindowEmbedBackwardArgs<float>& args,
                                         cudaStream_t stream);
cudaError_t launch_af_features(const float* af, int64_t L, int64_t F, float* feats,
                               cudaStream_t stream);

// Shared memory one backward block needs for its token accumulator.
inline size_t window_embed_backward_smem_bytes(int64_t V, int64_t D) {
  return size_t(V * D) * sizeof(float);
}
constexpr size_t kMaxSharedBytes = 48 * 1024;

}  // namespace embrag
