// Operator schemas, in one place. Each op's entries (one per pass) are
// registered for CPU and CUDA in its own file (csrc/<op>.cpp); autograd and
// fake (meta) kernels are registered from Python: embrag_ext/ops.py.
#include <torch/library.h>

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
      "Tensor site_v, Tensor dist, Tensor beta, Tensor q_tokens, Tensor observed, Tensor alpha, "
      "int n_heads, int half_width, Tensor? copy_bias=None, Tensor? gamma=None) "
      "-> (Tensor out, Tensor lse)");
  m.def(
      "rag_fusion_backward(Tensor grad_out, Tensor q, Tensor topk, Tensor ref_tokens, "
      "Tensor tok_k, Tensor tok_v, Tensor site_v, Tensor dist, Tensor beta, Tensor q_tokens, "
      "Tensor observed, Tensor alpha, int n_heads, int half_width, Tensor? copy_bias, "
      "Tensor? gamma, Tensor out, Tensor lse, bool copy_bias_grad) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "copy_posterior(Tensor query, Tensor templates, Tensor ref_sites, Tensor switch_cm, "
      "Tensor log_rho, Tensor logit_theta) -> Tensor");
  m.def(
      "copy_posterior_backward(Tensor grad_post, Tensor query, Tensor templates, "
      "Tensor ref_sites, Tensor switch_cm, Tensor log_rho, Tensor logit_theta) "
      "-> (Tensor, Tensor)");
}
