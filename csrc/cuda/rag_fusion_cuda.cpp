// rag_fusion on CUDA: validation and launch (host compiler; only c10/cuda
// headers, not ATen/cuda, which would pull in cuSPARSE).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops.h"
#include "../rag_fusion_tensors.h"
#include "rag_fusion_launch.h"

namespace embrag {
namespace {

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

void check_cuda_dtype(const at::Tensor& q) {
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16,
              "q must be float32 or bfloat16 on CUDA (float64 runs on the CPU), got ",
              q.scalar_type());
}

// Checks the sizes only CUDA limits and runs stage 1.
void check_and_run_stage1(const RagFusionTensors& t, bool backward, cudaStream_t stream) {
  TORCH_CHECK(t.q.size(0) <= 65535, "rag_fusion on CUDA supports at most 65535 queries (B), got ",
              t.q.size(0));
  const int64_t tile = rag_fusion_site_tile(t.tok_k.size(0), t.q.size(2), t.n_heads, backward);
  TORCH_CHECK(tile > 0, "rag_fusion on CUDA: tok_k/tok_v of ", t.tok_k.size(0), " x ",
              t.q.size(2), " do not fit in shared memory (", kRagFusionSmemBytes, " bytes)");
  check_launch(launch_neighbour_sites(t.neighbour_sites_args(), stream),
               "rag_fusion neighbour-sites kernel");
}

// Runs f with the kernel element type of q's dtype (float or __nv_bfloat16).
template <typename F>
void dispatch_cuda_dtype(const at::Tensor& q, const F& f) {
  if (q.scalar_type() == at::kBFloat16)
    f(__nv_bfloat16{});
  else
    f(float{});
}

}  // namespace

at::Tensor rag_fusion_cuda(const at::Tensor& q, const at::Tensor& topk,
                           const at::Tensor& ref_tokens, const at::Tensor& tok_k,
                           const at::Tensor& tok_v, const at::Tensor& site_k,
                           const at::Tensor& site_v, const at::Tensor& dist,
                           const at::Tensor& beta, const at::Tensor& q_tokens,
                           const at::Tensor& observed, const at::Tensor& alpha, int64_t n_heads,
                           int64_t half_width) {
  check_cuda_dtype(q);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto t = prepare_rag_fusion(q, topk, ref_tokens, tok_k, tok_v, site_k, site_v, dist, beta,
                                    q_tokens, observed, alpha, n_heads, half_width);
  check_and_run_stage1(t, false, stream);
  auto out = at::empty_like(t.q);
  dispatch_cuda_dtype(q, [&](auto zero) {
    using scalar_t = decltype(zero);
    check_launch(launch_rag_fusion_forward(t.fusion_args<scalar_t>(),
                                           static_cast<scalar_t*>(out.data_ptr()), stream),
                 "rag_fusion forward kernel");
  });
  return out;
}

RagFusionGradients rag_fusion_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& topk,
    const at::Tensor& ref_tokens, const at::Tensor& tok_k, const at::Tensor& tok_v,
    const at::Tensor& dist, const at::Tensor& beta, const at::Tensor& q_tokens,
    const at::Tensor& observed, const at::Tensor& alpha, int64_t n_heads, int64_t half_width) {
  check_cuda_dtype(q);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto t = prepare_rag_fusion(q, topk, ref_tokens, tok_k, tok_v, {}, {}, dist, beta,
                                    q_tokens, observed, alpha, n_heads, half_width);
  check_rag_fusion_grad_out(grad_out, q);
  check_and_run_stage1(t, true, stream);
  const auto grad_c = grad_out.contiguous();
  auto grad_q = at::empty_like(t.q);
  const auto c = empty_rag_fusion_coefficients(t, at::kFloat);
  dispatch_cuda_dtype(q, [&](auto zero) {
    using scalar_t = decltype(zero);
    const RagFusionGrads<scalar_t> grads{static_cast<const scalar_t*>(grad_c.data_ptr()),
                                         static_cast<scalar_t*>(grad_q.data_ptr()),
                                         c.weight.data_ptr<float>(),
                                         c.grad_tok_score.data_ptr<float>(),
                                         c.grad_score.data_ptr<float>()};
    check_launch(launch_rag_fusion_backward(t.fusion_args<scalar_t>(), grads, stream),
                 "rag_fusion backward kernel");
  });
  return std::tuple_cat(std::make_tuple(grad_q), rag_fusion_param_grads(t, grad_c, c));
}

}  // namespace embrag
