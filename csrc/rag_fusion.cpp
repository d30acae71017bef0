// rag_fusion, device-independent: validation (shapes, dtypes, devices; no
// tensor data is read here, so there is no host synchronisation: the kernels
// check topk and the reference tokens as they read them), the kernel
// parameters, the outputs, and the two entry points (forward, backward;
// schemas in python/registration.cpp), registered at the end (CPU, CUDA),
// which call the launcher of the inputs' device (csrc/launch.h).
#include <c10/core/DeviceGuard.h>

#include "checks.h"
#include <torch/library.h>

#include "launch.h"

namespace embrag {
namespace {

constexpr int64_t kMaxNeighbours = 4096, kMaxSites = 4096, kMaxWidth = 1024;

// The op's inputs, validated and made contiguous (ref_tokens keeps its row stride).
struct RagFusionTensors {
  at::Tensor q, topk, ref_tokens, tok_k, tok_v, site_v, dist, beta, q_tokens, observed, alpha;
  at::Tensor copy_bias, gamma;  // undefined without a copy bias
  int64_t n_heads, half_width;
};

void check_table(const at::Tensor& t, const char* name, int64_t rows, const char* what,
                 const at::Tensor& q) {
  check_dims(t, name, 2);
  check_dtype(t, name, q.scalar_type());
  check_size(t, name, 0, rows, what);
  check_size(t, name, 1, q.size(2), "embedding width D = q.size(2)");
}

void check_per_query(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t cols,
                     const char* what, const at::Tensor& q) {
  check_dims(t, name, 2);
  check_dtype(t, name, dtype);
  check_size(t, name, 0, q.size(0), "one row per query, B = q.size(0)");
  check_size(t, name, 1, cols, what);
}

void check_per_head(const at::Tensor& t, const char* name, const at::Tensor& q, int64_t n_heads) {
  check_dims(t, name, 1);
  check_dtype(t, name, q.scalar_type());
  check_size(t, name, 0, n_heads, "one per head");
}

void check_sizes(const at::Tensor& q, const at::Tensor& topk, int64_t n_heads, int64_t half_width) {
  check_dims(q, "q", 3);
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16,
              "q must be float32, float64 or bfloat16, got ", dtype);
  const int64_t L = q.size(1), D = q.size(2);
  TORCH_CHECK(L >= 1 && L <= kMaxSites, "q must have 1 to ", kMaxSites, " sites (L = q.size(1)), got ", L);
  TORCH_CHECK(D >= 1 && D <= kMaxWidth, "q must have width 1 to ", kMaxWidth, " (D = q.size(2)), got ", D);
  TORCH_CHECK(n_heads >= 1 && D % n_heads == 0, "n_heads must divide D = ", D, ", got ", n_heads);
  TORCH_CHECK(half_width >= 0, "half_width must be >= 0, got ", half_width);
  check_per_query(topk, "topk", at::kLong, topk.dim() == 2 ? topk.size(1) : 0, "K neighbours", q);
  TORCH_CHECK(topk.size(1) >= 1 && topk.size(1) <= kMaxNeighbours, "topk must have 1 to ",
              kMaxNeighbours, " neighbours per query (K = topk.size(1)), got ", topk.size(1));
}

void check_ref_tokens(const at::Tensor& ref_tokens, int64_t L) {
  check_dims(ref_tokens, "ref_tokens", 2);
  check_dtype(ref_tokens, "ref_tokens", at::kByte);
  check_size(ref_tokens, "ref_tokens", 1, L, "one column per site, L = q.size(1)");
  TORCH_CHECK(ref_tokens.stride(1) == 1,
              "ref_tokens must have unit stride along sites (a slice [:, start:end] of a "
              "contiguous [H, sites] array), got strides ", ref_tokens.strides());
}

void check_copy_bias(const at::Tensor& copy_bias, const at::Tensor& gamma, const at::Tensor& q,
                     int64_t K, int64_t n_heads) {
  TORCH_CHECK(copy_bias.defined() == gamma.defined(),
              "copy_bias and gamma go together: give both or neither");
  if (!copy_bias.defined()) return;
  check_dims(copy_bias, "copy_bias", 3);
  check_dtype(copy_bias, "copy_bias", q.scalar_type());
  check_size(copy_bias, "copy_bias", 0, q.size(0), "one per query, B = q.size(0)");
  check_size(copy_bias, "copy_bias", 1, q.size(1), "one per site, L = q.size(1)");
  check_size(copy_bias, "copy_bias", 2, K, "one per neighbour, K = topk.size(1)");
  check_per_head(gamma, "gamma", q, n_heads);
}

RagFusionTensors prepare(const at::Tensor& q, const at::Tensor& topk, const at::Tensor& ref_tokens,
                         const at::Tensor& tok_k, const at::Tensor& tok_v,
                         const at::Tensor& site_v, const at::Tensor& dist, const at::Tensor& beta,
                         const at::Tensor& q_tokens, const at::Tensor& observed,
                         const at::Tensor& alpha, int64_t n_heads, int64_t half_width,
                         const at::Tensor& copy_bias, const at::Tensor& gamma) {
  check_sizes(q, topk, n_heads, half_width);
  const int64_t L = q.size(1), K = topk.size(1);
  check_dims(tok_k, "tok_k", 2);
  const int64_t V = tok_k.size(0);
  TORCH_CHECK(V >= 1 && V <= kMaxTokens, "tok_k must have 1 to ", kMaxTokens,
              " rows (one per token), got ", V);
  check_table(tok_k, "tok_k", V, "one row per token", q);
  check_table(tok_v, "tok_v", V, "one row per token, V = tok_k.size(0)", q);
  check_table(site_v, "site_v", L, "one row per site, L = q.size(1)", q);
  check_per_query(dist, "dist", q.scalar_type(), K, "one per neighbour, K = topk.size(1)", q);
  check_per_query(q_tokens, "q_tokens", at::kLong, L, "one per site, L = q.size(1)", q);
  check_per_query(observed, "observed", at::kBool, L, "one per site, L = q.size(1)", q);
  check_per_head(beta, "beta", q, n_heads);
  check_per_head(alpha, "alpha", q, n_heads);
  check_ref_tokens(ref_tokens, L);
  check_copy_bias(copy_bias, gamma, q, K, n_heads);
  check_same_device({{"q", &q}, {"topk", &topk}, {"ref_tokens", &ref_tokens}, {"tok_k", &tok_k},
                     {"tok_v", &tok_v}, {"site_v", &site_v}, {"dist", &dist}, {"beta", &beta},
                     {"q_tokens", &q_tokens}, {"observed", &observed}, {"alpha", &alpha}});
  if (copy_bias.defined()) check_same_device({{"q", &q}, {"copy_bias", &copy_bias}, {"gamma", &gamma}});
  const auto contiguous = [](const at::Tensor& t) { return t.defined() ? t.contiguous() : t; };
  return {q.contiguous(),        topk.contiguous(),     ref_tokens,         tok_k.contiguous(),
          tok_v.contiguous(),    site_v.contiguous(),   dist.contiguous(),  beta.contiguous(),
          q_tokens.contiguous(), observed.contiguous(), alpha.contiguous(), contiguous(copy_bias),
          contiguous(gamma),     n_heads,               half_width};
}

// The dtype of the lse and of the backward's accumulators.
at::ScalarType accumulate_dtype(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

DType kernel_dtype(at::ScalarType t) {
  return t == at::kDouble ? DType::kFloat64 : t == at::kBFloat16 ? DType::kBFloat16 : DType::kFloat32;
}

const void* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// out and lse: written by the forward, read by the backward.
RagFusionParams make_params(const RagFusionTensors& t, const at::Tensor& out, const at::Tensor& lse) {
  RagFusionParams p{};
  p.dtype = kernel_dtype(t.q.scalar_type());
  p.q = t.q.data_ptr(), p.tok_k = t.tok_k.data_ptr(), p.tok_v = t.tok_v.data_ptr();
  p.site_v = t.site_v.data_ptr(), p.dist = t.dist.data_ptr();
  p.beta = t.beta.data_ptr(), p.alpha = t.alpha.data_ptr();
  p.copy_bias = data_or_null(t.copy_bias), p.gamma = data_or_null(t.gamma);
  p.topk = t.topk.data_ptr<int64_t>(), p.ref_tokens = t.ref_tokens.data_ptr<uint8_t>();
  p.q_tokens = t.q_tokens.data_ptr<int64_t>(), p.observed = t.observed.data_ptr<bool>();
  p.out = out.data_ptr(), p.lse = lse.data_ptr();
  p.ref_stride = t.ref_tokens.stride(0), p.n_ref_rows = t.ref_tokens.size(0);
  p.B = int32_t(t.q.size(0)), p.L = int32_t(t.q.size(1)), p.D = int32_t(t.q.size(2));
  p.K = int32_t(t.topk.size(1)), p.V = int32_t(t.tok_k.size(0)), p.n_heads = int32_t(t.n_heads);
  p.half_width = int32_t(std::min<int64_t>(t.half_width, p.L));  // wider windows are all of [0, L)
  p.site_tile = kSiteTile;
  return p;
}

// grad_out and the saved out have q's shape and dtype; lse is [B, L, n_heads].
void check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& lse,
                           const at::Tensor& q, int64_t n_heads) {
  for (const auto& [name, t] : {std::pair{"grad_out", &grad_out}, {"out", &out}}) {
    TORCH_CHECK(t->sizes() == q.sizes(), name, " must have the shape of q ", q.sizes(), ", got ",
                t->sizes());
    check_dtype(*t, name, q.scalar_type());
  }
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) &&
                  lse.size(2) == n_heads,
              "lse must be [B, L, n_heads] = [", q.size(0), ", ", q.size(1), ", ", n_heads,
              "], got ", lse.sizes());
  check_dtype(lse, "lse", accumulate_dtype(q));
  check_same_device({{"q", &q}, {"grad_out", &grad_out}, {"out", &out}, {"lse", &lse}});
}

// out [B, L, D] and the log-sum-exp of the scores [B, L, n_heads] (float32,
// float64 for float64 inputs), which the backward reuses.
std::tuple<at::Tensor, at::Tensor> rag_fusion(
    const at::Tensor& q, const at::Tensor& topk, const at::Tensor& ref_tokens,
    const at::Tensor& tok_k, const at::Tensor& tok_v, const at::Tensor& site_v,
    const at::Tensor& dist, const at::Tensor& beta, const at::Tensor& q_tokens,
    const at::Tensor& observed, const at::Tensor& alpha, int64_t n_heads, int64_t half_width,
    const std::optional<at::Tensor>& copy_bias, const std::optional<at::Tensor>& gamma) {
  const RagFusionTensors t =
      prepare(q, topk, ref_tokens, tok_k, tok_v, site_v, dist, beta, q_tokens, observed, alpha,
              n_heads, half_width, copy_bias.value_or(at::Tensor()), gamma.value_or(at::Tensor()));
  const c10::DeviceGuard guard(q.device());
  auto out = at::empty_like(t.q);
  auto lse = at::empty({q.size(0), q.size(1), n_heads}, q.options().dtype(accumulate_dtype(q)));
  device_launchers(q).rag_fusion_forward(make_params(t, out, lse));
  return {out, lse};
}

// Gradients of q, tok_k, tok_v, site_v, dist, beta, alpha, copy_bias and
// gamma; the last two are empty tensors without copy_bias, and grad_copy_bias
// also when copy_bias_grad is false.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
rag_fusion_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& topk,
    const at::Tensor& ref_tokens, const at::Tensor& tok_k, const at::Tensor& tok_v,
    const at::Tensor& site_v, const at::Tensor& dist, const at::Tensor& beta,
    const at::Tensor& q_tokens, const at::Tensor& observed, const at::Tensor& alpha,
    int64_t n_heads, int64_t half_width, const std::optional<at::Tensor>& copy_bias,
    const std::optional<at::Tensor>& gamma, const at::Tensor& out, const at::Tensor& lse,
    bool copy_bias_grad) {
  const RagFusionTensors t =
      prepare(q, topk, ref_tokens, tok_k, tok_v, site_v, dist, beta, q_tokens, observed, alpha,
              n_heads, half_width, copy_bias.value_or(at::Tensor()), gamma.value_or(at::Tensor()));
  check_backward_inputs(grad_out, out, lse, q, n_heads);
  const c10::DeviceGuard guard(q.device());
  const auto grad_c = grad_out.contiguous(), out_c = out.contiguous(), lse_c = lse.contiguous();
  const RagFusionParams p = make_params(t, out_c, lse_c);
  const bool has_copy_bias = t.copy_bias.defined();
  auto grad_q = at::empty_like(t.q);
  auto grad_copy_bias = has_copy_bias && copy_bias_grad ? at::empty_like(t.copy_bias)
                                                        : at::empty({0}, q.options());
  // Accumulators (float32; float64 for float64), added to once per block.
  const auto acc = q.options().dtype(accumulate_dtype(q));
  const int64_t V = p.V, D = p.D, L = p.L, K = p.K;
  auto tok_k_acc = at::zeros({V, D}, acc), tok_v_acc = at::zeros({V, D}, acc);
  auto site_v_acc = at::zeros({L, D}, acc), dist_acc = at::zeros({q.size(0), K}, acc);
  auto beta_acc = at::zeros({n_heads}, acc), alpha_acc = at::zeros({n_heads}, acc);
  auto gamma_acc = at::zeros({has_copy_bias ? n_heads : 0}, acc);
  const bool write_grad_copy_bias = grad_copy_bias.numel() > 0;
  const RagFusionGradParams g{grad_c.data_ptr(),
                              grad_q.data_ptr(),
                              write_grad_copy_bias ? grad_copy_bias.data_ptr() : nullptr,
                              tok_k_acc.data_ptr(),
                              tok_v_acc.data_ptr(),
                              site_v_acc.data_ptr(),
                              dist_acc.data_ptr(),
                              beta_acc.data_ptr(),
                              alpha_acc.data_ptr(),
                              has_copy_bias ? gamma_acc.data_ptr() : nullptr,
                              /*delta_from_out=*/true};  // each device's launcher decides
  device_launchers(q).rag_fusion_backward(p, g);
  const auto dtype = q.scalar_type();
  return {grad_q,           tok_k_acc.to(dtype), tok_v_acc.to(dtype), site_v_acc.to(dtype),
          dist_acc.to(dtype), beta_acc.to(dtype), alpha_acc.to(dtype), grad_copy_bias,
          gamma_acc.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(embrag, m) {
  for (const auto key : device_dispatch_keys()) {
    m.impl("rag_fusion", torch::dispatch(key, &rag_fusion));
    m.impl("rag_fusion_backward", torch::dispatch(key, &rag_fusion_backward));
  }
}

}  // namespace embrag
