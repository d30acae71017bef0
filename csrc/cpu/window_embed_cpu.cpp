// window_embed on the CPU: at::parallel_for over rows, inner loops over the
// embedding width D that the compiler vectorises.
#include <ATen/Parallel.h>

#include <algorithm>

#include "../ops.h"
#include "../window_embed_tensors.h"

namespace embrag {
namespace {

template <typename scalar_t>
void window_embed_forward_cpu_kernel(const WindowEmbedArgs<scalar_t>& a) {
  // 1. The site rows [L, D]: position + type + AF part, once per site.
  std::vector<scalar_t> site_rows(a.L * a.D);
  at::parallel_for(0, a.L, 16, [&](int64_t l0, int64_t l1) {
    std::vector<scalar_t> feats(a.F);
    for (int64_t l = l0; l < l1; ++l) {
      for (int64_t j = 0; j < a.F; ++j) feats[j] = af_fourier_feature(j, a.af[l]);
      for (int64_t d = 0; d < a.D; ++d) site_rows[l * a.D + d] = site_row_value(a, l, d, feats.data());
    }
  });
  // 2. Every (b, l) row: token row + site row.
  at::parallel_for(0, a.B * a.L, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* tok_row = a.tok_table + a.tokens[r] * a.D;
      const scalar_t* site_row = site_rows.data() + (r % a.L) * a.D;
      scalar_t* out_row = a.out + r * a.D;
      for (int64_t d = 0; d < a.D; ++d) out_row[d] = tok_row[d] + site_row[d];
    }
  });
}

// grad_site[l] = sum_b grad_out[b, l]; grad_tok[t] = sum over (b, l) with
// tokens[b, l] == t of grad_out[b, l]. Chunks of sites run in parallel, each
// with a private [V, D] token accumulator, summed at the end.
template <typename scalar_t>
void window_embed_backward_cpu_kernel(const WindowEmbedBackwardArgs<scalar_t>& a) {
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), a.L));
  const int64_t chunk_len = ceil_div(a.L, n_chunks);
  std::vector<scalar_t> tok_partial(n_chunks * a.V * a.D, scalar_t(0));
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      scalar_t* tok_acc = tok_partial.data() + c * a.V * a.D;
      const int64_t l_end = std::min(a.L, (c + 1) * chunk_len);
      for (int64_t l = c * chunk_len; l < l_end; ++l) {
        scalar_t* site = a.grad_site + l * a.D;
        std::fill(site, site + a.D, scalar_t(0));
        for (int64_t b = 0; b < a.B; ++b) {
          const scalar_t* g = a.grad_out + (b * a.L + l) * a.D;
          scalar_t* acc = tok_acc + a.tokens[b * a.L + l] * a.D;
          for (int64_t d = 0; d < a.D; ++d) {
            site[d] += g[d];
            acc[d] += g[d];
          }
        }
      }
    }
  });
  for (int64_t c = 0; c < n_chunks; ++c)
    for (int64_t i = 0; i < a.V * a.D; ++i) a.grad_tok[i] += tok_partial[c * a.V * a.D + i];
}

// Table gradients from grad_site [L, D]: rows pos_ids[l] / type_ids[l] get
// grad_site[l]; af_proj row j gets sum_l fourier_j(af[l]) * grad_site[l].
// Plain loops: O(L * D * F), far below the batch reduction above.
template <typename scalar_t>
void site_table_grads_cpu_kernel(const scalar_t* grad_site, const int64_t* pos_ids,
                                 const scalar_t* af, const int64_t* type_ids, int64_t L, int64_t D,
                                 int64_t F, scalar_t* grad_pos, scalar_t* grad_af_proj,
                                 scalar_t* grad_type) {
  for (int64_t l = 0; l < L; ++l) {
    const scalar_t* g = grad_site + l * D;
    scalar_t* pos_row = grad_pos + pos_ids[l] * D;
    scalar_t* type_row = grad_type + type_ids[l] * D;
    for (int64_t d = 0; d < D; ++d) {
      pos_row[d] += g[d];
      type_row[d] += g[d];
    }
    for (int64_t j = 0; j < F; ++j) {
      const scalar_t feat = af_fourier_feature(j, af[l]);
      scalar_t* proj_row = grad_af_proj + j * D;
      for (int64_t d = 0; d < D; ++d) proj_row[d] += feat * g[d];
    }
  }
}

}  // namespace

at::Tensor window_embed_cpu(const at::Tensor& tokens, const at::Tensor& pos_ids,
                            const at::Tensor& af, const at::Tensor& type_ids,
                            const at::Tensor& tok_table, const at::Tensor& pos_table,
                            const at::Tensor& af_proj, const at::Tensor& type_table) {
  const auto t = prepare_window_embed(tokens, pos_ids, af, type_ids, tok_table, pos_table, af_proj,
                                      type_table);
  auto out = at::empty({t.B(), t.L(), tok_table.size(1)}, tok_table.options());
  AT_DISPATCH_FLOATING_TYPES(tok_table.scalar_type(), "window_embed_cpu", [&] {
    window_embed_forward_cpu_kernel(t.forward_args<scalar_t>(out));
  });
  return out;
}

WindowEmbedGradients window_embed_backward_cpu(const at::Tensor& grad_out, const at::Tensor& tokens,
                                               const at::Tensor& pos_ids, const at::Tensor& af,
                                               const at::Tensor& type_ids, int64_t n_tokens,
                                               int64_t n_pos, int64_t n_features, int64_t n_types) {
  const auto t = prepare_window_embed_backward(grad_out, tokens, pos_ids, af, type_ids);
  const auto grad_c = grad_out.contiguous();
  const int64_t D = grad_out.size(2);
  const auto options = grad_out.options();
  auto grad_site = at::empty({t.L(), D}, options);
  auto grad_tok = at::zeros({n_tokens, D}, options), grad_pos = at::zeros({n_pos, D}, options),
       grad_af_proj = at::zeros({n_features, D}, options), grad_type = at::zeros({n_types, D}, options);
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "window_embed_backward_cpu", [&] {
    window_embed_backward_cpu_kernel(t.backward_args<scalar_t>(grad_c, grad_site, grad_tok));
    site_table_grads_cpu_kernel<scalar_t>(
        grad_site.data_ptr<scalar_t>(), t.pos_ids.data_ptr<int64_t>(), t.af.data_ptr<scalar_t>(),
        t.type_ids.data_ptr<int64_t>(), t.L(), D, n_features, grad_pos.data_ptr<scalar_t>(),
        grad_af_proj.data_ptr<scalar_t>(), grad_type.data_ptr<scalar_t>());
  });
  return {grad_tok, grad_pos, grad_af_proj, grad_type};
}

}  // namespace embrag
