// Torch-free launchers of the copy_posterior CUDA kernels (float32). The kernels live
// in copy_posterior_kernels.cu, compiled by nvcc without torch headers;
// copy_posterior_cuda.cpp validates and calls these.
#pragma once

#include <cuda_runtime_api.h>

#include "../kernels/copy_posterior.h"

namespace embrag {

// One block per query: post [N, M, K]; carry [N, K] scratch.
cudaError_t launch_copy_posterior_forward(const CopyPosteriorArgs<float>& args, float* post,
                                          float* carry, cudaStream_t stream);

// One block per query: grad.grads [N, 2] per-query gradients; grad.alpha and
// grad.alpha_g [N, M, K] and grad.u, grad.v [N, K] scratch.
cudaError_t launch_copy_posterior_backward(const CopyPosteriorArgs<float>& args,
                                           const CopyPosteriorGrad<float, float>& grad,
                                           cudaStream_t stream);

}  // namespace embrag
