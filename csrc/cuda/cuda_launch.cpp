// The CUDA launchers of csrc/launch.h: the torch-side glue around the
// torch-free kernels of csrc/cuda/*.cu (host compiler; only c10/cuda headers,
// not ATen/cuda, which would pull in cuSPARSE). They run on the current
// stream of the current device (the entry points set it), check the limits
// only CUDA has, and check every launch.
#include <c10/cuda/CUDAStream.h>

#include <limits>

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

// copy_posterior runs one block per query.
void check_copy_posterior_cuda(const CopyPosteriorTensors& t) {
  check_float32(t.switch_cm, "switch_cm");
  TORCH_CHECK(t.N <= std::numeric_limits<int>::max(),
              "copy_posterior on CUDA supports at most 2^31 - 1 queries (N), got ", t.N);
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

void launch_copy_posterior_forward_cuda(const CopyPosteriorTensors& t, at::Tensor& post) {
  check_copy_posterior_cuda(t);
  auto carry = at::empty({t.N, t.K}, post.options());
  check_launch(launch_copy_posterior_forward(t.args<float>(), post.data_ptr<float>(),
                                             carry.data_ptr<float>(), current_stream()),
               "copy_posterior forward kernel");
}

void launch_copy_posterior_backward_cuda(const CopyPosteriorTensors& t, const at::Tensor& grad_post,
                                         at::Tensor& grad_log_rho, at::Tensor& grad_logit_theta) {
  check_copy_posterior_cuda(t);
  const auto options = grad_post.options();
  auto alpha = at::empty(t.post_shape(), options), alpha_g = at::empty(t.post_shape(), options);
  auto u = at::empty({t.N, t.K}, options), v = at::empty({t.N, t.K}, options);
  auto per_query = at::zeros({t.N, 2}, options);
  const CopyPosteriorGrad<float, float> grad{grad_post.data_ptr<float>(), alpha.data_ptr<float>(),
                                             alpha_g.data_ptr<float>(), u.data_ptr<float>(),
                                             v.data_ptr<float>(), per_query.data_ptr<float>()};
  check_launch(launch_copy_posterior_backward(t.args<float>(), grad, current_stream()),
               "copy_posterior backward kernel");
  // Per-query partials, summed by two reductions (no float atomics).
  at::sum_out(grad_log_rho, per_query.select(1, 0));
  at::sum_out(grad_logit_theta, per_query.select(1, 1));
}

}  // namespace embrag
