// The CUDA launchers of csrc/launch.h: the torch-side glue around the
// torch-free kernels of csrc/cuda/*.cu (host compiler; only c10/cuda headers,
// not ATen/cuda, which would pull in cuSPARSE). They run on the current
// stream of the current device (the entry points set it), check the limits
// only CUDA has, and check every launch.
#include <c10/cuda/CUDAStream.h>

#include "../launch.h"
#include "kernels.h"

namespace embrag {
namespace {

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

// The parameters with the site tile that fits in shared memory on CUDA.
RagFusionParams rag_fusion_cuda_params(const RagFusionParams& p, bool backward) {
  TORCH_CHECK(p.dtype != DType::kFloat64,
              "rag_fusion on CUDA takes float32 or bfloat16 (float64 runs on the CPU)");
  TORCH_CHECK(p.B <= 65535, "rag_fusion on CUDA supports at most 65535 queries (B), got ", p.B);
  RagFusionParams fitted = p;
  fitted.site_tile = rag_fusion_cuda_site_tile(p, backward);
  TORCH_CHECK(fitted.site_tile > 0, "rag_fusion on CUDA: D = ", p.D, " with ", p.n_heads,
              " heads does not fit in ", kMaxSharedBytes, " bytes of shared memory per block");
  return fitted;
}

void check_float32(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, name,
              " must be float32 on CUDA (float64 runs on the CPU), got ", t.scalar_type());
}

}  // namespace

void launch_rag_fusion_forward_cuda(const RagFusionParams& p) {
  check_launch(launch_rag_fusion_forward(rag_fusion_cuda_params(p, false), current_stream()),
               "rag_fusion forward kernel");
}

void launch_rag_fusion_backward_cuda(const RagFusionParams& p, const RagFusionGradParams& g) {
  const RagFusionParams fitted = rag_fusion_cuda_params(p, true);
  RagFusionGradParams grads = g;  // bandwidth-bound: delta the way that moves fewer bytes
  grads.delta_from_out = rag_fusion_delta_from_out(traffic_shape(fitted, g.grad_copy_bias != nullptr));
  check_launch(launch_rag_fusion_backward(fitted, grads, current_stream()), "rag_fusion backward kernel");
}

void launch_window_embed_forward_cuda(const WindowEmbedTensors& t, at::Tensor& out) {
  check_float32(out, "tok_table");
  check_launch(launch_window_embed_forward(t.forward_args<float>(out), current_stream()),
               "window_embed forward kernel");
}

void launch_window_embed_backward_cuda(const WindowEmbedTensors& t, const at::Tensor& grad_out,
                                       at::Tensor& grad_site, at::Tensor& grad_tok) {
  check_float32(grad_out, "grad_out");
  TORCH_CHECK(int64_t(window_embed_backward_smem_bytes(grad_tok.size(0), grad_out.size(2))) <=
                  kMaxSharedBytes,
              "window_embed on CUDA supports n_tokens * D <= ", kMaxSharedBytes / int64_t(sizeof(float)),
              ", got ", grad_tok.size(0), " * ", grad_out.size(2));
  check_launch(launch_window_embed_backward(t.backward_args<float>(grad_out, grad_site, grad_tok),
                                            current_stream()),
               "window_embed backward kernel");
}

}  // namespace embrag
