// rag_fusion on the torch side: the op's tensors, made contiguous once, and
// the kernel argument structs (csrc/kernels/rag_fusion.h) built from them.
// Shared by the CPU and CUDA entry points.
#pragma once

#include <ATen/ATen.h>

#include "kernels/rag_fusion.h"

namespace embrag {

struct RagFusionTensors {
  at::Tensor q, tok_k, tok_v, site_v, dist, beta, alpha;  // contiguous; site_v undefined in backward
  at::Tensor topk, ref_tokens, q_tokens, observed;        // ref_tokens: a row-strided slice
  at::Tensor tokens, matches, n_observed;                 // stage 1 outputs, [B, L, K] / [B, L]
  int64_t n_heads, half_width;

  NeighbourSitesArgs neighbour_sites_args() const {
    return {topk.data_ptr<int64_t>(), ref_tokens.data_ptr<uint8_t>(),
            q_tokens.data_ptr<int64_t>(), observed.data_ptr<bool>(),
            tokens.data_ptr<uint8_t>(), matches.data_ptr<int32_t>(),
            n_observed.data_ptr<int32_t>(), topk.size(0), topk.size(1), q.size(1),
            ref_tokens.stride(0), half_width};
  }

  // scalar_t: the kernel's element type, the same size as q's dtype.
  template <typename scalar_t>
  RagFusionArgs<scalar_t> fusion_args() const {
    auto ptr = [](const at::Tensor& t) { return static_cast<const scalar_t*>(t.data_ptr()); };
    return {ptr(q), ptr(tok_k), ptr(tok_v), site_v.defined() ? ptr(site_v) : nullptr,
            ptr(dist), ptr(beta), ptr(alpha), tokens.data_ptr<uint8_t>(),
            matches.data_ptr<int32_t>(), n_observed.data_ptr<int32_t>(), q.size(0), q.size(1),
            topk.size(1), q.size(2), tok_k.size(0), n_heads};
  }
};

// Validates the inputs (every device) and allocates the stage-1 outputs;
// site_k and site_v are undefined in the backward, which needs neither.
RagFusionTensors prepare_rag_fusion(const at::Tensor& q, const at::Tensor& topk,
                                    const at::Tensor& ref_tokens, const at::Tensor& tok_k,
                                    const at::Tensor& tok_v, const at::Tensor& site_k,
                                    const at::Tensor& site_v,
                                    const at::Tensor& dist, const at::Tensor& beta,
                                    const at::Tensor& q_tokens, const at::Tensor& observed,
                                    const at::Tensor& alpha, int64_t n_heads, int64_t half_width);

// grad_out has q's shape and dtype.
void check_rag_fusion_grad_out(const at::Tensor& grad_out, const at::Tensor& q);

// The backward coefficients every device's kernel writes, [B, L, n_heads, *]
// in the accumulation dtype.
struct RagFusionCoefficients {
  at::Tensor weight, grad_tok_score, grad_score;
};
RagFusionCoefficients empty_rag_fusion_coefficients(const RagFusionTensors& t,
                                                    at::ScalarType acc_dtype);

// Gradients of tok_k, tok_v, site_k, site_v, dist, beta, alpha: reductions
// of the coefficients over the batch and sites (ATen ops, any device).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
rag_fusion_param_grads(const RagFusionTensors& t, const at::Tensor& grad_out,
                       const RagFusionCoefficients& c);

}  // namespace embrag
