// copy_posterior on CUDA: validation and launch (host compiler; only c10/cuda
// headers, not ATen/cuda, which would pull in cuSPARSE). Values (template ids,
// alleles, switch_cm >= 0) are checked by the kernels with device-side asserts, so
// nothing here syncs with the host.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "../copy_posterior_tensors.h"
#include "../ops.h"
#include "copy_posterior_launch.h"

namespace embrag {
namespace {

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

void check_cuda_inputs(const CopyPosteriorTensors& t) {
  TORCH_CHECK(t.switch_cm.scalar_type() == at::kFloat,
              "switch_cm must be float32 on CUDA (float64 runs on the CPU), got ",
              t.switch_cm.scalar_type());
  TORCH_CHECK(t.N <= std::numeric_limits<int>::max(),
              "copy_posterior on CUDA supports at most 2^31 - 1 queries (N), got ", t.N);
}

}  // namespace

at::Tensor copy_posterior_cuda(const at::Tensor& query, const at::Tensor& templates,
                               const at::Tensor& ref_sites, const at::Tensor& switch_cm,
                               const at::Tensor& log_rho, const at::Tensor& logit_theta) {
  const auto t = prepare_copy_posterior(query, templates, ref_sites, switch_cm, log_rho, logit_theta);
  check_cuda_inputs(t);
  const c10::cuda::CUDAGuard guard(query.device());
  auto post = at::empty(t.post_shape(), switch_cm.options());
  auto carry = at::empty({t.N, t.K}, switch_cm.options());
  check_launch(launch_copy_posterior_forward(t.args<float>(), post.data_ptr<float>(),
                                             carry.data_ptr<float>(),
                                             c10::cuda::getCurrentCUDAStream()),
               "copy_posterior forward kernel");
  return post;
}

std::tuple<at::Tensor, at::Tensor> copy_posterior_backward_cuda(
    const at::Tensor& grad_post, const at::Tensor& query, const at::Tensor& templates,
    const at::Tensor& ref_sites, const at::Tensor& switch_cm, const at::Tensor& log_rho,
    const at::Tensor& logit_theta) {
  const auto t = prepare_copy_posterior(query, templates, ref_sites, switch_cm, log_rho, logit_theta);
  check_cuda_inputs(t);
  check_copy_posterior_grad(grad_post, t);
  const c10::cuda::CUDAGuard guard(query.device());
  const auto grad_c = grad_post.contiguous();
  const auto opts = switch_cm.options();
  auto alpha = at::empty(t.post_shape(), opts), alpha_g = at::empty(t.post_shape(), opts);
  auto u = at::empty({t.N, t.K}, opts), v = at::empty({t.N, t.K}, opts);
  auto per_query = at::zeros({t.N, 2}, opts);
  const CopyPosteriorGrad<float, float> grad{grad_c.data_ptr<float>(), alpha.data_ptr<float>(),
                                             alpha_g.data_ptr<float>(), u.data_ptr<float>(),
                                             v.data_ptr<float>(), per_query.data_ptr<float>()};
  check_launch(launch_copy_posterior_backward(t.args<float>(), grad,
                                              c10::cuda::getCurrentCUDAStream()),
               "copy_posterior backward kernel");
  // Per-query partials, summed by two reductions (no float atomics).
  return {per_query.select(1, 0).sum(), per_query.select(1, 1).sum()};
}

}  // namespace embrag
