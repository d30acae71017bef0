// Device-independent parts of copy_posterior: input validation (shapes, dtypes,
// strides, devices; no host sync).
#include "checks.h"
#include "copy_posterior_tensors.h"

namespace embrag {

CopyPosteriorTensors prepare_copy_posterior(const at::Tensor& query, const at::Tensor& templates,
                                            const at::Tensor& ref_sites,
                                            const at::Tensor& switch_cm,
                                            const at::Tensor& log_rho,
                                            const at::Tensor& logit_theta) {
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

void check_copy_posterior_grad(const at::Tensor& grad_post, const CopyPosteriorTensors& t) {
  TORCH_CHECK(grad_post.sizes() == at::IntArrayRef(t.post_shape()),
              "grad_post must have the output's shape [N, M, K] = ", t.post_shape(), ", got ",
              grad_post.sizes());
  check_dtype(grad_post, "grad_post", t.switch_cm.scalar_type());
  check_same_device({{"query", &t.query}, {"grad_post", &grad_post}});
}

}  // namespace embrag
