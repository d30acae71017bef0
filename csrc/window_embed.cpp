// Device-independent part of window_embed: input validation.
#include "checks.h"
#include "window_embed_tensors.h"

namespace embrag {

WindowEmbedTensors prepare_window_embed(const at::Tensor& tokens, const at::Tensor& pos_ids,
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
  check_index_range(tokens, "tokens", 0, tok_table.size(0));
  check_index_range(pos_ids, "pos_ids", 0, pos_table.size(0));
  check_index_range(type_ids, "type_ids", 0, type_table.size(0));
  return {tokens.contiguous(),    pos_ids.contiguous(),   af.contiguous(),
          type_ids.contiguous(),  tok_table.contiguous(), pos_table.contiguous(),
          af_proj.contiguous(),   type_table.contiguous()};
}

WindowEmbedTensors prepare_window_embed_backward(const at::Tensor& grad_out, const at::Tensor& tokens,
                                                 const at::Tensor& pos_ids, const at::Tensor& af,
                                                 const at::Tensor& type_ids) {
  check_dims(grad_out, "grad_out", 3);
  TORCH_CHECK(grad_out.size(0) == tokens.size(0) && grad_out.size(1) == tokens.size(1),
              "grad_out must be [B, L, D] with B, L of tokens ", tokens.sizes(), ", got ",
              grad_out.sizes());
  TORCH_CHECK(grad_out.device() == tokens.device(), "grad_out and tokens must be on one device");
  return {tokens.contiguous(), pos_ids.contiguous(), af.contiguous(), type_ids.contiguous()};
}

}  // namespace embrag
