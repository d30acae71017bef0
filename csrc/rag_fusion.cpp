// Device-independent parts of rag_fusion: input validation, the tensors the
// kernels share, and the parameter gradients reduced from the per-(b, l, h)
// coefficients the backward kernels write.
#include "checks.h"
#include "rag_fusion_tensors.h"

namespace embrag {
namespace {

constexpr int64_t kMaxNeighbours = 64, kMaxSites = 4096, kMaxWidth = 1024;

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

void check_sizes(const at::Tensor& q, const at::Tensor& topk, int64_t n_heads,
                 int64_t half_width) {
  check_dims(q, "q", 3);
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16,
              "q must be float32, float64 (CPU) or bfloat16 (CUDA), got ", dtype);
  const int64_t L = q.size(1), D = q.size(2);
  TORCH_CHECK(L >= 1 && L <= kMaxSites, "q must have 1 to ", kMaxSites, " sites (L = q.size(1)), got ", L);
  TORCH_CHECK(D >= 1 && D <= kMaxWidth, "q must have width 1 to ", kMaxWidth, " (D = q.size(2)), got ", D);
  TORCH_CHECK(n_heads >= 1 && D % n_heads == 0, "n_heads must divide D = ", D, ", got ", n_heads);
  TORCH_CHECK(half_width >= 0, "half_width must be >= 0, got ", half_width);
  check_per_query(topk, "topk", at::kLong, topk.dim() == 2 ? topk.size(1) : 0, "K neighbours", q);
  TORCH_CHECK(topk.size(1) >= 1 && topk.size(1) <= kMaxNeighbours, "topk must have 1 to ",
              kMaxNeighbours, " neighbours per query (K = topk.size(1)), got ", topk.size(1));
}

void check_ref_tokens(const at::Tensor& ref_tokens, const at::Tensor& topk, int64_t L, int64_t V) {
  check_dims(ref_tokens, "ref_tokens", 2);
  check_dtype(ref_tokens, "ref_tokens", at::kByte);
  check_size(ref_tokens, "ref_tokens", 1, L, "one column per site, L = q.size(1)");
  TORCH_CHECK(ref_tokens.stride(1) == 1,
              "ref_tokens must have unit stride along sites (a slice [:, start:end] of a "
              "contiguous [H, sites] array), got strides ", ref_tokens.strides());
  check_index_range(topk, "topk", -1, ref_tokens.size(0));
  const auto rows = topk.masked_select(topk >= 0);
  check_index_range(ref_tokens.index_select(0, rows), "ref_tokens (at the rows topk selects)", 0, V);
}

}  // namespace

RagFusionTensors prepare_rag_fusion(const at::Tensor& q, const at::Tensor& topk,
                                    const at::Tensor& ref_tokens, const at::Tensor& tok_k,
                                    const at::Tensor& tok_v, const at::Tensor& site_k,
                                    const at::Tensor& site_v, const at::Tensor& dist,
                                    const at::Tensor& beta, const at::Tensor& q_tokens,
                                    const at::Tensor& observed, const at::Tensor& alpha,
                                    int64_t n_heads, int64_t half_width) {
  check_sizes(q, topk, n_heads, half_width);
  const int64_t L = q.size(1), K = topk.size(1);
  check_dims(tok_k, "tok_k", 2);
  const int64_t V = tok_k.size(0);
  TORCH_CHECK(V >= 1 && V <= kMaxTokens, "tok_k must have 1 to ", kMaxTokens,
              " rows (one per token), got ", V);
  check_table(tok_k, "tok_k", V, "one row per token", q);
  check_table(tok_v, "tok_v", V, "one row per token, V = tok_k.size(0)", q);
  if (site_k.defined()) check_table(site_k, "site_k", L, "one row per site, L = q.size(1)", q);
  if (site_v.defined()) check_table(site_v, "site_v", L, "one row per site, L = q.size(1)", q);
  check_per_query(dist, "dist", q.scalar_type(), K, "one per neighbour, K = topk.size(1)", q);
  check_per_query(q_tokens, "q_tokens", at::kLong, L, "one per site, L = q.size(1)", q);
  check_per_query(observed, "observed", at::kBool, L, "one per site, L = q.size(1)", q);
  for (const auto& [name, t] : {std::pair{"beta", &beta}, {"alpha", &alpha}}) {
    check_dims(*t, name, 1);
    check_dtype(*t, name, q.scalar_type());
    check_size(*t, name, 0, n_heads, "one per head");
  }
  check_same_device({{"q", &q}, {"topk", &topk}, {"ref_tokens", &ref_tokens}, {"tok_k", &tok_k},
                     {"tok_v", &tok_v}, {"dist", &dist}, {"beta", &beta},
                     {"q_tokens", &q_tokens}, {"observed", &observed}, {"alpha", &alpha}});
  for (const auto& [name, t] : {std::pair{"site_k", &site_k}, {"site_v", &site_v}})
    if (t->defined()) check_same_device({{"q", &q}, {name, t}});
  check_ref_tokens(ref_tokens, topk, L, V);

  const int64_t B = q.size(0);
  const auto ints = q.options().dtype(at::kInt);
  return {q.contiguous(), tok_k.contiguous(), tok_v.contiguous(),
          site_v.defined() ? site_v.contiguous() : at::Tensor(), dist.contiguous(),
          beta.contiguous(), alpha.contiguous(), topk.contiguous(), ref_tokens,
          q_tokens.contiguous(), observed.contiguous(),
          at::empty({B, L, K}, q.options().dtype(at::kByte)), at::empty({B, L, K}, ints),
          at::empty({B, L}, ints), n_heads, half_width};
}

void check_rag_fusion_grad_out(const at::Tensor& grad_out, const at::Tensor& q) {
  TORCH_CHECK(grad_out.sizes() == q.sizes(), "grad_out must have the shape of q ", q.sizes(),
              ", got ", grad_out.sizes());
  check_dtype(grad_out, "grad_out", q.scalar_type());
  check_same_device({{"q", &q}, {"grad_out", &grad_out}});
}

RagFusionCoefficients empty_rag_fusion_coefficients(const RagFusionTensors& t,
                                                    at::ScalarType acc_dtype) {
  const int64_t B = t.q.size(0), L = t.q.size(1), V = t.tok_k.size(0), K = t.topk.size(1);
  const auto opts = t.q.options().dtype(acc_dtype);
  return {at::empty({B, L, t.n_heads, V + 1}, opts), at::empty({B, L, t.n_heads, V}, opts),
          at::empty({B, L, t.n_heads, K}, opts)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
rag_fusion_param_grads(const RagFusionTensors& t, const at::Tensor& grad_out,
                       const RagFusionCoefficients& c) {
  const int64_t B = t.q.size(0), L = t.q.size(1), D = t.q.size(2), V = t.tok_k.size(0);
  const auto acc = c.weight.scalar_type(), out = t.q.scalar_type();
  const auto q = t.q.to(acc).view({B, L, t.n_heads, D / t.n_heads});        // [B, L, nh, dh]
  const auto g = grad_out.to(acc).reshape({B, L, t.n_heads, D / t.n_heads});
  const auto agree = t.matches.to(acc) / t.n_observed.clamp_min(1).unsqueeze(-1).to(acc);
  auto grad_tok_k = at::einsum("blht,blhd->thd", {c.grad_tok_score, q}).reshape({V, D});
  auto grad_tok_v = at::einsum("blht,blhd->thd", {c.weight.narrow(3, 0, V), g}).reshape({V, D});
  auto grad_site_v = at::einsum("blh,blhd->lhd", {c.weight.select(3, V), g}).reshape({L, D});
  auto grad_dist = at::einsum("blhk,h->bk", {c.grad_score, t.beta.to(acc)});
  auto grad_beta = at::einsum("blhk,bk->h", {c.grad_score, t.dist.to(acc)});
  auto grad_alpha = at::einsum("blhk,blk->h", {c.grad_score, agree});
  // site_k shifts every neighbour's score equally: it cancels in the softmax.
  return {grad_tok_k.to(out), grad_tok_v.to(out), at::zeros({L, D}, t.q.options()),
          grad_site_v.to(out), grad_dist.to(out), grad_beta.to(out), grad_alpha.to(out)};
}

}  // namespace embrag
