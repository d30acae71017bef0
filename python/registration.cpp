// Operator schemas (one place) and their CPU / CUDA implementations.
// Autograd and fake (meta) kernels are registered from Python: embrag_ext/ops.py.
#include <torch/library.h>

#include "../csrc/ops.h"

TORCH_LIBRARY(embrag, m) {
  m.def(
      "window_embed(Tensor tokens, Tensor pos_ids, Tensor af, Tensor type_ids, Tensor tok_table, "
      "Tensor pos_table, Tensor af_proj, Tensor type_table) -> Tensor");
  m.def(
      "window_embed_backward(Tensor grad_out, Tensor tokens, Tensor pos_ids, Tensor af, "
      "Tensor type_ids, int n_tokens, int n_pos, int n_features, int n_types) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "rag_fusion(Tensor q, Tensor topk, Tensor ref_tokens, Tensor tok_k, Tensor tok_v, "
      "Tensor site_k, Tensor site_v, Tensor dist, Tensor beta, Tensor q_tokens, "
      "Tensor observed, Tensor alpha, int n_heads, int half_width) -> Tensor");
  m.def(
      "rag_fusion_backward(Tensor grad_out, Tensor q, Tensor topk, Tensor ref_tokens, "
      "Tensor tok_k, Tensor tok_v, Tensor dist, Tensor beta, Tensor q_tokens, Tensor observed, "
      "Tensor alpha, int n_heads, int half_width) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "copy_posterior(Tensor query, Tensor templates, Tensor ref_sites, Tensor switch_cm, "
      "Tensor log_rho, Tensor logit_theta) -> Tensor");
  m.def(
      "copy_posterior_backward(Tensor grad_post, Tensor query, Tensor templates, "
      "Tensor ref_sites, Tensor switch_cm, Tensor log_rho, Tensor logit_theta) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(embrag, CPU, m) {
  m.impl("window_embed", &embrag::window_embed_cpu);
  m.impl("window_embed_backward", &embrag::window_embed_backward_cpu);
  m.impl("rag_fusion", &embrag::rag_fusion_cpu);
  m.impl("rag_fusion_backward", &embrag::rag_fusion_backward_cpu);
  m.impl("copy_posterior", &embrag::copy_posterior_cpu);
  m.impl("copy_posterior_backward", &embrag::copy_posterior_backward_cpu);
}

#ifdef EMBRAG_WITH_CUDA
TORCH_LIBRARY_IMPL(embrag, CUDA, m) {
  m.impl("window_embed", &embrag::window_embed_cuda);
  m.impl("window_embed_backward", &embrag::window_embed_backward_cuda);
  m.impl("rag_fusion", &embrag::rag_fusion_cuda);
  m.impl("rag_fusion_backward", &embrag::rag_fusion_backward_cuda);
  m.impl("copy_posterior", &embrag::copy_posterior_cuda);
  m.impl("copy_posterior_backward", &embrag::copy_posterior_backward_cuda);
}
#endif
