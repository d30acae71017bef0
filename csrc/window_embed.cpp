// window_embed, device-independent: validation (shapes, dtypes, devices; the
// kernels check the ids as they read them, so no host synchronisation), the
// outputs, the site-table gradients (ATen ops on grad_site [L, D], any
// device) and the two entry points (forward, backward; schemas in
// python/registration.cpp), registered at the end (CPU, CUDA), which call
// the launcher of the inputs' device (csrc/launch.h).
#include <cmath>

#include <c10/core/DeviceGuard.h>

#include "checks.h"
#include <torch/library.h>

#include "launch.h"

namespace embrag {
namespace {

WindowEmbedTensors prepare_forward(const at::Tensor& tokens, const at::Tensor& pos_ids,
                                   const at::Tensor& af, const at::Tensor& type_ids,
                                   const at::Tensor& tok_table, const at::Tensor& pos_table,
                                   const at::Tensor& af_proj, const at::Tensor& type_table) {
  check_dims(tokens, "tokens", 2);
  check_dtype(tokens, "tokens", at::kLong);
  const int64_t L = tokens.size(1);
  for (const auto& [name, t] : {std::pair{"pos_ids", &pos_ids}, {"type_ids", &type_ids}}) {
    check_dims(*t, name, 1);
    check_dtype(*t, name, at::kLong);
    check_size(*t, name, 0, L, "one per site, L = tokens.size(1)");
  }
  check_dims(af, "af", 1);
  check_size(af, "af", 0, L, "one per site, L = tokens.size(1)");
  const auto dtype = tok_table.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "tok_table must be float32 or float64, got ", dtype);
  const int64_t D = tok_table.dim() == 2 ? tok_table.size(1) : -1;
  for (const auto& [name, t] : {std::pair{"tok_table", &tok_table}, {"pos_table", &pos_table},
                                {"af_proj", &af_proj}, {"type_table", &type_table}, {"af", &af}}) {
    check_dtype(*t, name, dtype);
    if (t != &af) {
      check_dims(*t, name, 2);
      check_size(*t, name, 1, D, "embedding width D = tok_table.size(1)");
      TORCH_CHECK(t->size(0) > 0, name, " must have at least one row");
    }
  }
  TORCH_CHECK(af_proj.size(0) % 2 == 0 && af_proj.size(0) <= 32,
              "af_proj must have an even number of rows (sin/cos pairs), at most 32, got ",
              af_proj.size(0));
  check_same_device({{"tokens", &tokens}, {"pos_ids", &pos_ids}, {"af", &af},
                     {"type_ids", &type_ids}, {"tok_table", &tok_table}, {"pos_table", &pos_table},
                     {"af_proj", &af_proj}, {"type_table", &type_table}});
  return {tokens.contiguous(),    pos_ids.contiguous(),   af.contiguous(),
          type_ids.contiguous(),  tok_table.contiguous(), pos_table.contiguous(),
          af_proj.contiguous(),   type_table.contiguous()};
}

WindowEmbedTensors prepare_backward(const at::Tensor& grad_out, const at::Tensor& tokens,
                                    const at::Tensor& pos_ids, const at::Tensor& af,
                                    const at::Tensor& type_ids) {
  check_dims(grad_out, "grad_out", 3);
  check_dims(tokens, "tokens", 2);
  TORCH_CHECK(grad_out.size(0) == tokens.size(0) && grad_out.size(1) == tokens.size(1),
              "grad_out must be [B, L, D] with B, L of tokens ", tokens.sizes(), ", got ",
              grad_out.sizes());
  check_dtype(af, "af", grad_out.scalar_type());
  check_same_device({{"grad_out", &grad_out}, {"tokens", &tokens}, {"pos_ids", &pos_ids},
                     {"af", &af}, {"type_ids", &type_ids}});
  return {tokens.contiguous(), pos_ids.contiguous(), af.contiguous(), type_ids.contiguous()};
}

// [L, F]: the Fourier features of the allele frequencies, as af_fourier_feature.
at::Tensor af_features(const at::Tensor& af, int64_t n_features) {
  const auto omegas = M_PI * at::exp2(at::arange(n_features / 2, af.options()));
  const auto angles = af.unsqueeze(1) * omegas.unsqueeze(0);  // [L, F / 2]
  return at::stack({angles.sin(), angles.cos()}, -1).reshape({af.size(0), n_features});
}

// [B, L, D]: tok_table[tokens] + pos_table[pos_ids] + fourier(af) @ af_proj + type_table[type_ids].
at::Tensor window_embed(const at::Tensor& tokens, const at::Tensor& pos_ids, const at::Tensor& af,
                        const at::Tensor& type_ids, const at::Tensor& tok_table,
                        const at::Tensor& pos_table, const at::Tensor& af_proj,
                        const at::Tensor& type_table) {
  const auto t = prepare_forward(tokens, pos_ids, af, type_ids, tok_table, pos_table, af_proj,
                                 type_table);
  const c10::DeviceGuard guard(tokens.device());
  auto out = at::empty({t.B(), t.L(), tok_table.size(1)}, tok_table.options());
  device_launchers(tokens).window_embed_forward(t, out);
  return out;
}

// Gradients of tok_table, pos_table, af_proj, type_table. grad_site [L, D]
// (grad_out summed over the batch) gives the site tables': rows pos_ids[l]
// and type_ids[l] get grad_site[l]; af_proj gets features^T @ grad_site.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_embed_backward(
    const at::Tensor& grad_out, const at::Tensor& tokens, const at::Tensor& pos_ids,
    const at::Tensor& af, const at::Tensor& type_ids, int64_t n_tokens, int64_t n_pos,
    int64_t n_features, int64_t n_types) {
  const auto t = prepare_backward(grad_out, tokens, pos_ids, af, type_ids);
  const c10::DeviceGuard guard(grad_out.device());
  const auto grad_c = grad_out.contiguous();
  const int64_t D = grad_out.size(2);
  const auto options = grad_out.options();
  auto grad_site = at::zeros({t.L(), D}, options), grad_tok = at::zeros({n_tokens, D}, options);
  device_launchers(grad_out).window_embed_backward(t, grad_c, grad_site, grad_tok);
  auto grad_pos = at::zeros({n_pos, D}, options).index_add_(0, t.pos_ids, grad_site);
  auto grad_type = at::zeros({n_types, D}, options).index_add_(0, t.type_ids, grad_site);
  return {grad_tok, grad_pos, af_features(t.af, n_features).t().mm(grad_site), grad_type};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(embrag, m) {
  for (const auto key : device_dispatch_keys()) {
    m.impl("window_embed", torch::dispatch(key, &window_embed));
    m.impl("window_embed_backward", torch::dispatch(key, &window_embed_backward));
  }
}

}  // namespace embrag
