// window_embed on the CPU: at::parallel_for over rows, inner loops over the
// embedding width D that the compiler vectorises, ids checked as they are read.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../launch.h"

namespace embrag {
namespace {

template <typename scalar_t>
void window_embed_forward_cpu_kernel(const WindowEmbedArgs<scalar_t>& a) {
  // 1. The site rows [L, D]: position + type + AF part, once per site.
  std::vector<scalar_t> site_rows(a.L * a.D);
  at::parallel_for(0, a.L, 16, [&](int64_t l0, int64_t l1) {
    std::vector<scalar_t> feats(a.F);
    for (int64_t l = l0; l < l1; ++l) {
      check_index(a.pos_ids[l], 0, a.P, "pos_ids");
      check_index(a.type_ids[l], 0, a.T, "type_ids");
      for (int64_t j = 0; j < a.F; ++j) feats[j] = af_fourier_feature(j, a.af[l]);
      for (int64_t d = 0; d < a.D; ++d)
        site_rows[l * a.D + d] = site_row_value(a, a.pos_ids[l], a.type_ids[l], d, feats.data());
    }
  });
  // 2. Every (b, l) row: token row + site row.
  at::parallel_for(0, a.B * a.L, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      check_index(a.tokens[r], 0, a.V, "tokens");
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
        for (int64_t b = 0; b < a.B; ++b) {
          check_index(a.tokens[b * a.L + l], 0, a.V, "tokens");
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

}  // namespace

void launch_window_embed_forward_cpu(const WindowEmbedTensors& t, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "window_embed_cpu", [&] {
    window_embed_forward_cpu_kernel(t.forward_args<scalar_t>(out));
  });
}

void launch_window_embed_backward_cpu(const WindowEmbedTensors& t, const at::Tensor& grad_out,
                                      at::Tensor& grad_site, at::Tensor& grad_tok) {
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "window_embed_backward_cpu", [&] {
    window_embed_backward_cpu_kernel(t.backward_args<scalar_t>(grad_out, grad_site, grad_tok));
  });
}

}  // namespace embrag
