// Entry points of the fused operators, per device. Schemas are registered in
// python/registration.cpp; the Python side is embrag_ext/ops.py.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace embrag {

// ---- window_embed -----------------------------------------------------------
// Token + position + AF-Fourier + variant-type embedding in one pass
// (csrc/kernels/window_embed.h).

// Gradients of tok_table, pos_table, af_proj, type_table.
using WindowEmbedGradients = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

#define EMBRAG_WINDOW_EMBED_DECLARE(device)                                                      \
  at::Tensor window_embed_##device(                                                            \
      const at::Tensor& tokens, const at::Tensor& pos_ids, const at::Tensor& af,               \
      const at::Tensor& type_ids, const at::Tensor& tok_table, const at::Tensor& pos_table,    \
      const at::Tensor& af_proj, const at::Tensor& type_table);                                \
  WindowEmbedGradients window_embed_backward_##device(                                         \
      const at::Tensor& grad_out, const at::Tensor& tokens, const at::Tensor& pos_ids,         \
      const at::Tensor& af, const at::Tensor& type_ids, int64_t n_tokens, int64_t n_pos,       \
      int64_t n_features, int64_t n_types);

EMBRAG_WINDOW_EMBED_DECLARE(cpu)
#ifdef EMBRAG_WITH_CUDA
EMBRAG_WINDOW_EMBED_DECLARE(cuda)
#endif
#undef EMBRAG_WINDOW_EMBED_DECLARE

// ---- rag_fusion -------------------------------------------------------------
// Attention of every query site over its K retrieved neighbours, keys and
// values rebuilt from the neighbours' tokens (csrc/kernels/rag_fusion.h).

// Gradients of q, tok_k, tok_v, site_k, site_v, dist, beta, alpha.
using RagFusionGradients = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                      at::Tensor, at::Tensor, at::Tensor>;

#define EMBRAG_RAG_FUSION_DECLARE(device)                                                        \
  at::Tensor rag_fusion_##device(                                                              \
      const at::Tensor& q, const at::Tensor& topk, const at::Tensor& ref_tokens,               \
      const at::Tensor& tok_k, const at::Tensor& tok_v, const at::Tensor& site_k,              \
      const at::Tensor& site_v, const at::Tensor& dist, const at::Tensor& beta,                \
      const at::Tensor& q_tokens, const at::Tensor& observed, const at::Tensor& alpha,         \
      int64_t n_heads, int64_t half_width);                                                    \
  RagFusionGradients rag_fusion_backward_##device(                                             \
      const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& topk,                 \
      const at::Tensor& ref_tokens, const at::Tensor& tok_k, const at::Tensor& tok_v,          \
      const at::Tensor& dist, const at::Tensor& beta, const at::Tensor& q_tokens,              \
      const at::Tensor& observed, const at::Tensor& alpha, int64_t n_heads, int64_t half_width);

EMBRAG_RAG_FUSION_DECLARE(cpu)
#ifdef EMBRAG_WITH_CUDA
EMBRAG_RAG_FUSION_DECLARE(cuda)
#endif
#undef EMBRAG_RAG_FUSION_DECLARE

// ---- copy_posterior ---------------------------------------------------------
// Li-Stephens copying posterior of each query over its K templates
// (csrc/kernels/copy_posterior.h). The backward returns the gradients of log_rho
// and logit_theta.

at::Tensor copy_posterior_cpu(const at::Tensor& query, const at::Tensor& templates,
                              const at::Tensor& ref_sites, const at::Tensor& switch_cm,
                              const at::Tensor& log_rho, const at::Tensor& logit_theta);
std::tuple<at::Tensor, at::Tensor> copy_posterior_backward_cpu(
    const at::Tensor& grad_post, const at::Tensor& query, const at::Tensor& templates,
    const at::Tensor& ref_sites, const at::Tensor& switch_cm, const at::Tensor& log_rho,
    const at::Tensor& logit_theta);
#ifdef EMBRAG_WITH_CUDA
at::Tensor copy_posterior_cuda(const at::Tensor& query, const at::Tensor& templates,
                               const at::Tensor& ref_sites, const at::Tensor& switch_cm,
                               const at::Tensor& log_rho, const at::Tensor& logit_theta);
std::tuple<at::Tensor, at::Tensor> copy_posterior_backward_cuda(
    const at::Tensor& grad_post, const at::Tensor& query, const at::Tensor& templates,
    const at::Tensor& ref_sites, const at::Tensor& switch_cm, const at::Tensor& log_rho,
    const at::Tensor& logit_theta);
#endif

}  // namespace embrag
