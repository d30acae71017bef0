// rag_fusion on the CPU: stage 1 runs the CUDA block body with one thread per
// block; stage 2 is at::parallel_for over rows (b, l), loops over D that the
// compiler vectorises, and the per-(b, l, h) softmax from the shared header.
#include <ATen/Parallel.h>

#include <vector>

#include "../kernels/rag_fusion.h"
#include "../ops.h"
#include "../rag_fusion_tensors.h"

namespace embrag {
namespace {

// A block of one thread: runs a block body serially.
struct SerialCtx {
  int bx, by;
  int thread() const { return 0; }
  int block_dim() const { return 1; }
  int block_x() const { return bx; }
  int block_y() const { return by; }
  void sync() const {}
};

void neighbour_sites_cpu(const RagFusionTensors& t) {
  const NeighbourSitesArgs a = t.neighbour_sites_args();
  at::parallel_for(0, a.B * a.K, 1, [&](int64_t i0, int64_t i1) {
    std::vector<int32_t> smem(neighbour_sites_smem_ints(a.L, 1));
    for (int64_t i = i0; i < i1; ++i)
      neighbour_sites_block(SerialCtx{int(i % a.K), int(i / a.K)}, a, smem.data());
  });
}

// x . y with kLanes independent partial sums, so the loop vectorises.
template <typename scalar_t>
scalar_t dot(const scalar_t* x, const scalar_t* y, int64_t n) {
  constexpr int kLanes = 8;
  scalar_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += x[i + j] * y[i + j];
  scalar_t sum = 0;
  for (; i < n; ++i) sum += x[i] * y[i];
  for (int j = 0; j < kLanes; ++j) sum += lanes[j];
  return sum;
}

// dots[t] = scale * x . table[t] (head slices of width dh, table rows of width D).
template <typename scalar_t>
void head_dots_cpu(const scalar_t* x, const scalar_t* table, int64_t D, int64_t dh, int64_t V,
                   scalar_t scale, scalar_t* dots) {
  for (int64_t t = 0; t < V; ++t) dots[t] = scale * dot(x, table + t * D, dh);
}

// out[0, dh) = site_weight * site + sum_t coef[t] * table[t] (head slices).
template <typename scalar_t>
void mix_rows(const scalar_t* coef, const scalar_t* table, int64_t D, int64_t dh, int64_t V,
              scalar_t site_weight, const scalar_t* site, scalar_t* out) {
  for (int64_t d = 0; d < dh; ++d) out[d] = site ? site_weight * site[d] : scalar_t(0);
  for (int64_t t = 0; t < V; ++t)
    for (int64_t d = 0; d < dh; ++d) out[d] += coef[t] * table[t * D + d];
}

template <typename scalar_t>
void rag_fusion_forward_cpu_kernel(const RagFusionArgs<scalar_t>& a, scalar_t* out) {
  const int64_t D = a.D, V = a.V, dh = a.d_head();
  const scalar_t key_scale = scalar_t(1) / std::sqrt(scalar_t(dh));
  at::parallel_for(0, a.B * a.L, 16, [&](int64_t r0, int64_t r1) {
    scalar_t qk[kMaxTokens], weight[kMaxTokens + 1];
    for (int64_t row = r0; row < r1; ++row)
      for (int64_t h = 0; h < a.n_heads; ++h) {
        const int64_t col = row * D + h * dh;  // head slice of this row
        head_dots_cpu(a.q + col, a.tok_k + h * dh, D, dh, V, key_scale, qk);
        neighbour_weights(a, row, h, qk, weight);
        mix_rows(weight, a.tok_v + h * dh, D, dh, V, weight[V], a.site_v + (row % a.L) * D + h * dh,
                 out + col);
      }
  });
}

template <typename scalar_t>
void rag_fusion_backward_cpu_kernel(const RagFusionArgs<scalar_t>& a,
                                    const RagFusionGrads<scalar_t, scalar_t>& g) {
  const int64_t D = a.D, V = a.V, K = a.K, nh = a.n_heads, dh = a.d_head();
  const scalar_t key_scale = scalar_t(1) / std::sqrt(scalar_t(dh));
  at::parallel_for(0, a.B * a.L, 16, [&](int64_t r0, int64_t r1) {
    scalar_t qk[kMaxTokens], gv[kMaxTokens];
    for (int64_t row = r0; row < r1; ++row)
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t col = row * D + h * dh, head = row * nh + h;
        head_dots_cpu(a.q + col, a.tok_k + h * dh, D, dh, V, key_scale, qk);
        head_dots_cpu(g.grad_out + col, a.tok_v + h * dh, D, dh, V, scalar_t(1), gv);
        scalar_t* weight = g.weight + head * (V + 1);
        scalar_t* grad_tok_score = g.grad_tok_score + head * V;
        const auto stats = neighbour_weights(a, row, h, qk, weight);
        neighbour_score_grads(a, row, h, qk, gv, weight, stats, grad_tok_score,
                              g.grad_score + head * K);
        mix_rows(grad_tok_score, a.tok_k + h * dh, D, dh, V, scalar_t(0),
                 static_cast<const scalar_t*>(nullptr), g.grad_q + col);
      }
  });
}

void check_cpu_dtype(const at::Tensor& q) {
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "q must be float32 or float64 on the CPU (bfloat16 runs on CUDA only), got ",
              q.scalar_type());
}

}  // namespace

at::Tensor rag_fusion_cpu(const at::Tensor& q, const at::Tensor& topk, const at::Tensor& ref_tokens,
                          const at::Tensor& tok_k, const at::Tensor& tok_v,
                          const at::Tensor& site_k, const at::Tensor& site_v,
                          const at::Tensor& dist, const at::Tensor& beta,
                          const at::Tensor& q_tokens, const at::Tensor& observed,
                          const at::Tensor& alpha, int64_t n_heads, int64_t half_width) {
  check_cpu_dtype(q);
  const auto t = prepare_rag_fusion(q, topk, ref_tokens, tok_k, tok_v, site_k, site_v, dist, beta,
                                    q_tokens, observed, alpha, n_heads, half_width);
  neighbour_sites_cpu(t);
  auto out = at::empty_like(t.q);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "rag_fusion_cpu", [&] {
    rag_fusion_forward_cpu_kernel(t.fusion_args<scalar_t>(), out.data_ptr<scalar_t>());
  });
  return out;
}

RagFusionGradients rag_fusion_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& topk,
    const at::Tensor& ref_tokens, const at::Tensor& tok_k, const at::Tensor& tok_v,
    const at::Tensor& dist, const at::Tensor& beta, const at::Tensor& q_tokens,
    const at::Tensor& observed, const at::Tensor& alpha, int64_t n_heads, int64_t half_width) {
  check_cpu_dtype(q);
  const auto t = prepare_rag_fusion(q, topk, ref_tokens, tok_k, tok_v, {}, {}, dist, beta,
                                    q_tokens, observed, alpha, n_heads, half_width);
  check_rag_fusion_grad_out(grad_out, q);
  neighbour_sites_cpu(t);
  const auto grad_c = grad_out.contiguous();
  auto grad_q = at::empty_like(t.q);
  const auto c = empty_rag_fusion_coefficients(t, q.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "rag_fusion_backward_cpu", [&] {
    rag_fusion_backward_cpu_kernel(
        t.fusion_args<scalar_t>(),
        RagFusionGrads<scalar_t, scalar_t>{grad_c.data_ptr<scalar_t>(), grad_q.data_ptr<scalar_t>(),
                                           c.weight.data_ptr<scalar_t>(),
                                           c.grad_tok_score.data_ptr<scalar_t>(),
                                           c.grad_score.data_ptr<scalar_t>()});
  });
  return std::tuple_cat(std::make_tuple(grad_q), rag_fusion_param_grads(t, grad_c, c));
}

}  // namespace embrag
