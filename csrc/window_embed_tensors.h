// window_embed on the torch side: the op's tensors, validated and made
// contiguous once, and the kernel argument structs (csrc/kernels/window_embed.h)
// built from them. Shared by the entry points and the launchers.
#pragma once

#include <ATen/ATen.h>

#include "kernels/window_embed.h"

namespace embrag {

struct WindowEmbedTensors {
  at::Tensor tokens, pos_ids, af, type_ids;                 // [B, L], [L], [L], [L]
  at::Tensor tok_table, pos_table, af_proj, type_table;     // [*, D]; undefined in backward

  int64_t B() const { return tokens.size(0); }
  int64_t L() const { return tokens.size(1); }

  template <typename scalar_t>
  WindowEmbedArgs<scalar_t> forward_args(at::Tensor& out) const {
    return {tokens.data_ptr<int64_t>(),     pos_ids.data_ptr<int64_t>(), af.data_ptr<scalar_t>(),
            type_ids.data_ptr<int64_t>(),   tok_table.data_ptr<scalar_t>(),
            pos_table.data_ptr<scalar_t>(), af_proj.data_ptr<scalar_t>(),
            type_table.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B(), L(),
            tok_table.size(1),              af_proj.size(0),             tok_table.size(0),
            pos_table.size(0),              type_table.size(0)};
  }

  template <typename scalar_t>
  WindowEmbedBackwardArgs<scalar_t> backward_args(const at::Tensor& grad_out, at::Tensor& grad_site,
                                                  at::Tensor& grad_tok) const {
    return {grad_out.data_ptr<scalar_t>(), tokens.data_ptr<int64_t>(), grad_site.data_ptr<scalar_t>(),
            grad_tok.data_ptr<scalar_t>(), B(), L(), grad_out.size(2), grad_tok.size(0)};
  }
};

}  // namespace embrag
