// window_embed on the torch side: the op's tensors, validated and made
// contiguous once, and the kernel argument structs (csrc/kernels/window_embed.h)
// built from them. Shared by the CPU and CUDA entry points.
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
    return {tokens.data_ptr<int64_t>(), pos_ids.data_ptr<int64_t>(), af.data_ptr<scalar_t>(),
            type_ids.data_ptr<int64_t>(), tok_table.data_ptr<scalar_t>(),
            pos_table.data_ptr<scalar_t>(), af_proj.data_ptr<scalar_t>(),
            type_table.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B(), L(),
            tok_table.size(1), af_proj.size(0)};
  }

  template <typename scalar_t>
  WindowEmbedBackwardArgs<scalar_t> backward_args(const at::Tensor& grad_out, at::Tensor& grad_site,
                                                  at::Tensor& grad_tok) const {
    return {grad_out.data_ptr<scalar_t>(), tokens.data_ptr<int64_t>(), grad_site.data_ptr<scalar_t>(),
            grad_tok.data_ptr<scalar_t>(), B(), L(), grad_out.size(2), grad_tok.size(0)};
  }
};

// Validates the forward inputs (every device); returns them contiguous.
WindowEmbedTensors prepare_window_embed(const at::Tensor& tokens, const at::Tensor& pos_ids,
                                        const at::Tensor& af, const at::Tensor& type_ids,
                                        const at::Tensor& tok_table, const at::Tensor& pos_table,
                                        const at::Tensor& af_proj, const at::Tensor& type_table);

// Validates grad_out against the ids; returns the ids contiguous (tables undefined).
WindowEmbedTensors prepare_window_embed_backward(const at::Tensor& grad_out, const at::Tensor& tokens,
                                                 const at::Tensor& pos_ids, const at::Tensor& af,
                                                 const at::Tensor& type_ids);

}  // namespace embrag
