// copy_posterior, device-independent: validation (shapes, dtypes, strides,
// devices; the kernels check the values as they read them, so no host
// synchronisation), the outputs and the two entry points (forward, backward;
// schemas in python/registration.cpp), registered at the end (CPU, CUDA),
// which call the launcher of the inputs' device (csrc/launch.h).
#include <c10/core/DeviceGuard.h>

#include "checks.h"
#include <torch/library.h>

#include "launch.h"

namespace embrag {
namespace {

CopyPosteriorTensors prepare(const at::Tensor& query, const at::Tensor& templates,
                             const at::Tensor& ref_sites, const at::Tensor& switch_cm,
                             const at::Tensor& log_rho, const at::Tensor& logit_theta) {
  check_dims(query, "query", 2);
  check_dtype(query, "query", at::kByte);
  const int64_t N = query.size(0), M = query.size(1);
  check_dims(templates, "templates", 2);
  check_dtype(templates, "templates", at::kLong);
  check_size(templates, "templates", 0, N, "one row per query, N = query.size(0)");
  check_dims(ref_sites, "ref_sites", 2);
  check_dtype(ref_sites, "ref_sites", at::kByte);
  check_size(ref_sites, "ref_sites", 0, M, "one row per typed site, M = query.size(1)");
  const int64_t H = ref_sites.size(1);
  TORCH_CHECK((H <= 1 || ref_sites.stride(1) == 1) && (M <= 1 || ref_sites.stride(0) >= H),
              "ref_sites must have unit stride along haplotypes and a row stride >= H (rows of "
              "a contiguous [sites, H] array), got strides ", ref_sites.strides());
  check_dims(switch_cm, "switch_cm", 1);
  const auto dtype = switch_cm.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "switch_cm must be float32 or float64, got ", dtype);
  check_size(switch_cm, "switch_cm", 0, M, "one per typed site, M = query.size(1)");
  for (const auto& [name, t] : {std::pair{"log_rho", &log_rho}, {"logit_theta", &logit_theta}}) {
    TORCH_CHECK(t->dim() == 0, name, " must be a 0-d tensor (a scalar), got shape ", t->sizes());
    TORCH_CHECK(t->scalar_type() == dtype, name, " must have switch_cm's dtype ", dtype, ", got ",
                t->scalar_type());
  }
  check_same_device({{"query", &query}, {"templates", &templates}, {"ref_sites", &ref_sites},
                     {"switch_cm", &switch_cm}, {"log_rho", &log_rho},
                     {"logit_theta", &logit_theta}});
  return {query.contiguous(), templates.contiguous(), switch_cm.contiguous(), log_rho.contiguous(),
          logit_theta.contiguous(), ref_sites, N, M, templates.size(1), H};
}

// grad_post has the output's shape, dtype and device.
void check_grad_post(const at::Tensor& grad_post, const CopyPosteriorTensors& t) {
  TORCH_CHECK(grad_post.sizes() == at::IntArrayRef(t.post_shape()),
              "grad_post must have the output's shape [N, M, K] = ", t.post_shape(), ", got ",
              grad_post.sizes());
  check_dtype(grad_post, "grad_post", t.switch_cm.scalar_type());
  check_same_device({{"query", &t.query}, {"grad_post", &grad_post}});
}

// [N, M, K]: P(z_m = k | query n's alleles), in switch_cm's dtype.
at::Tensor copy_posterior(const at::Tensor& query, const at::Tensor& templates,
                          const at::Tensor& ref_sites, const at::Tensor& switch_cm,
                          const at::Tensor& log_rho, const at::Tensor& logit_theta) {
  const auto t = prepare(query, templates, ref_sites, switch_cm, log_rho, logit_theta);
  const c10::DeviceGuard guard(query.device());
  auto post = at::empty(t.post_shape(), switch_cm.options());
  device_launchers(query).copy_posterior_forward(t, post);
  return post;
}

// Gradients of log_rho and logit_theta (0-d); none for the integer inputs nor
// for switch_cm (data).
std::tuple<at::Tensor, at::Tensor> copy_posterior_backward(
    const at::Tensor& grad_post, const at::Tensor& query, const at::Tensor& templates,
    const at::Tensor& ref_sites, const at::Tensor& switch_cm, const at::Tensor& log_rho,
    const at::Tensor& logit_theta) {
  const auto t = prepare(query, templates, ref_sites, switch_cm, log_rho, logit_theta);
  check_grad_post(grad_post, t);
  const c10::DeviceGuard guard(query.device());
  const auto grad_c = grad_post.contiguous();
  auto grad_log_rho = at::zeros({}, switch_cm.options());
  auto grad_logit_theta = at::zeros({}, switch_cm.options());
  device_launchers(query).copy_posterior_backward(t, grad_c, grad_log_rho, grad_logit_theta);
  return {grad_log_rho, grad_logit_theta};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(embrag, m) {
  for (const auto key : device_dispatch_keys()) {
    m.impl("copy_posterior", torch::dispatch(key, &copy_posterior));
    m.impl("copy_posterior_backward", torch::dispatch(key, &copy_posterior_backward));
  }
}

}  // namespace embrag
