// window_embed: the torch-free math of the fused embedding op.
//
//   out[b, l, :] = tok_table[tokens[b, l]]            token (REF/ALT/MASK)
//                + pos_table[pos_ids[l]]              position in the panel
//                + fourier(af[l]) @ af_proj           allele frequency
//                + type_table[type_ids[l]]            variant type
//
// Everything but the token row is the same for every haplotype at site l: the
// "site row". Kernels build the site row once per site and add the token row.
// The CPU kernel (csrc/cpu) and the CUDA kernels (csrc/cuda) both call the
// functions here; tests/simt runs the CUDA block bodies on the CPU. The
// kernels check the ids as they read them (CUDA: a device-side assert).
#pragma once

#include <cmath>
#include <cstdint>

#include "device.h"

namespace embrag {

// Allele-frequency Fourier feature j of n_features (n_features even):
// feature 2i = sin(pi * 2^i * af), feature 2i+1 = cos(pi * 2^i * af).
template <typename scalar_t>
EMBRAG_HD scalar_t af_fourier_feature(int64_t j, scalar_t af) {
  using std::cos;
  using std::sin;
  const scalar_t omega = scalar_t(3.14159265358979323846) * scalar_t(int64_t(1) << (j / 2));
  return (j % 2 == 0) ? sin(omega * af) : cos(omega * af);
}

template <typename scalar_t>
struct WindowEmbedArgs {
  const int64_t* tokens;       // [B, L]
  const int64_t* pos_ids;      // [L]
  const scalar_t* af;          // [L]
  const int64_t* type_ids;     // [L]
  const scalar_t* tok_table;   // [V, D]
  const scalar_t* pos_table;   // [P, D]
  const scalar_t* af_proj;     // [F, D]
  const scalar_t* type_table;  // [T, D]
  scalar_t* out;               // [B, L, D]
  int64_t B, L, D, F;
  int64_t V, P, T;             // rows of tok_table, pos_table, type_table
};

// Site row at column d of a site with position row pos, type row type and
// Fourier features feats[F].
template <typename scalar_t>
EMBRAG_HD scalar_t site_row_value(const WindowEmbedArgs<scalar_t>& a, int64_t pos, int64_t type,
                                  int64_t d, const scalar_t* feats) {
  scalar_t v = a.pos_table[pos * a.D + d] + a.type_table[type * a.D + d];
  for (int64_t j = 0; j < a.F; ++j) v += feats[j] * a.af_proj[j * a.D + d];
  return v;
}

// ---- CUDA block bodies (run by csrc/cuda and by the SIMT shim) ------------

// Rows of the batch handled by one block of the forward kernel.
constexpr int kForwardBatchTile = 16;

// Index id checked against [0, rows): a bad one is reported (Ctx) and read as row 0.
template <typename Ctx>
EMBRAG_HD int64_t checked_row(const Ctx& ctx, int64_t id, int64_t rows, const char* name) {
  if (id >= 0 && id < rows) return id;
  ctx.bad_index(name, id, 0, rows);
  return 0;
}

// Forward, one block per (site l = block_x, batch tile = block_y).
// Shared memory: feats[F] then site_row[D] (scalar_t each).
template <typename scalar_t, typename Ctx>
EMBRAG_HD void window_embed_forward_block(const Ctx& ctx, const WindowEmbedArgs<scalar_t>& a,
                                          scalar_t* smem) {
  const int64_t l = ctx.block_x();
  scalar_t* feats = smem;
  scalar_t* site_row = smem + a.F;
  const int64_t pos = checked_row(ctx, a.pos_ids[l], a.P, "pos_ids");
  const int64_t type = checked_row(ctx, a.type_ids[l], a.T, "type_ids");
  for (int64_t j = ctx.thread(); j < a.F; j += ctx.block_dim())
    feats[j] = af_fourier_feature(j, a.af[l]);
  ctx.sync();  // feats are read by every thread below
  for (int64_t d = ctx.thread(); d < a.D; d += ctx.block_dim())
    site_row[d] = site_row_value(a, pos, type, d, feats);
  ctx.sync();  // site_row is read below, by whichever thread owns column d
  const int64_t b_begin = int64_t(ctx.block_y()) * kForwardBatchTile;
  const int64_t b_end = b_begin + kForwardBatchTile < a.B ? b_begin + kForwardBatchTile : a.B;
  for (int64_t b = b_begin; b < b_end; ++b) {
    const scalar_t* tok_row = a.tok_table + checked_row(ctx, a.tokens[b * a.L + l], a.V, "tokens") * a.D;
    scalar_t* out_row = a.out + (b * a.L + l) * a.D;
    // A different thread-to-column map than above, on purpose: the barrier
    // before this loop is what makes site_row safe to read.
    for (int64_t d = a.D - 1 - ctx.thread(); d >= 0; d -= ctx.block_dim())
      out_row[d] = tok_row[d] + site_row[d];
  }
}

template <typename scalar_t>
struct WindowEmbedBackwardArgs {
  const scalar_t* grad_out;  // [B, L, D]
  const int64_t* tokens;     // [B, L]
  scalar_t* grad_site;       // [L, D]  sum over the batch, accumulated (must start at zero)
  scalar_t* grad_tok;        // [V, D]  accumulated (must start at zero)
  int64_t B, L, D, V;
};

// Sites and queries handled by one block of the backward kernel.
constexpr int kBackwardSiteTile = 8;
constexpr int kBackwardBatchTile = 16;

// Backward, one block per (tile of kBackwardSiteTile sites = block_x, tile of
// kBackwardBatchTile queries = block_y): a grid of L/8 x B/16 blocks. Each
// thread owns columns d; it sums grad_out over the block's queries into one
// grad_site atomic per (site, column) and, per token, into a block-private
// tok_acc[V, D] in shared memory, added to grad_tok with one atomic per
// (token, column) per block.
template <typename scalar_t, typename Ctx>
EMBRAG_HD void window_embed_backward_block(const Ctx& ctx,
                                           const WindowEmbedBackwardArgs<scalar_t>& a,
                                           scalar_t* tok_acc) {
  for (int64_t i = ctx.thread(); i < a.V * a.D; i += ctx.block_dim()) tok_acc[i] = scalar_t(0);
  ctx.sync();
  const int64_t l_begin = int64_t(ctx.block_x()) * kBackwardSiteTile;
  const int64_t l_end = l_begin + kBackwardSiteTile < a.L ? l_begin + kBackwardSiteTile : a.L;
  const int64_t b_begin = int64_t(ctx.block_y()) * kBackwardBatchTile;
  const int64_t b_end = b_begin + kBackwardBatchTile < a.B ? b_begin + kBackwardBatchTile : a.B;
  for (int64_t d = ctx.thread(); d < a.D; d += ctx.block_dim()) {
    for (int64_t l = l_begin; l < l_end; ++l) {
      scalar_t site_sum = scalar_t(0);
      for (int64_t b = b_begin; b < b_end; ++b) {
        const int64_t token = checked_row(ctx, a.tokens[b * a.L + l], a.V, "tokens");
        const scalar_t g = a.grad_out[(b * a.L + l) * a.D + d];
        site_sum += g;
        tok_acc[token * a.D + d] += g;
      }
      ctx.atomic_add(&a.grad_site[l * a.D + d], site_sum);
    }
  }
  ctx.sync();
  // Flush in a transposed order (token-major across threads): needs the barrier.
  for (int64_t i = ctx.thread(); i < a.V * a.D; i += ctx.block_dim()) {
    const int64_t d = i / a.V, t = i % a.V;
    if (tok_acc[t * a.D + d] != scalar_t(0)) ctx.atomic_add(&a.grad_tok[t * a.D + d], tok_acc[t * a.D + d]);
  }
}

// ---- The bandwidth model (csrc/kernels/device.h: Traffic) ------------------
// V, P, F, T: rows of tok_table, pos_table, af_proj, type_table.

// Forward: reads the tokens, ids, AF and the table rows used; writes out.
inline Traffic window_embed_forward_traffic(int64_t B, int64_t L, int64_t D, int64_t F, int64_t V,
                                            int64_t elem_bytes) {
  const double e = double(elem_bytes);
  const double ids = L * (16 + e), tables = (V + 2.0 * L + F) * D * e;  // pos and type rows: L each
  const double bytes = B * L * 8.0 + ids + tables + B * L * D * e;
  return {bytes, bytes};  // every block's table rows are shared (read once)
}

// Backward: reads grad_out, the tokens and ids; writes the four table
// gradients (the zero fill of pos and type rows is that write). Moved on
// top: grad_site [L, D] and grad_tok [V, D] zeroed and accumulated (shared,
// once), then ATen: grad_site read by the two index_add calls, which
// read-modify-write L rows each, and by features^T @ grad_site, with the AF
// features [L, F] written and read.
inline Traffic window_embed_backward_traffic(int64_t B, int64_t L, int64_t D, int64_t F, int64_t V,
                                             int64_t P, int64_t T, int64_t elem_bytes) {
  const double e = double(elem_bytes), LD = double(L) * D * e;
  const double in = B * L * (8 + D * e) + L * (16 + e), out = (V + P + F + T) * D * e;
  const double accumulators = 2 * LD + V * D * e;  // zero fills; their accumulated writes: once
  const double site_grads = 2 * (LD + 2 * LD) + LD + 2 * L * F * e;
  return {in + out, in + out + accumulators + site_grads};
}

}  // namespace embrag
