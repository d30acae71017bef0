// rag_fusion: the torch-free math of the fused retrieval-attention op.
//
// For query b, site l, head h and each retrieved neighbour k carrying token
// t_k = ref_tokens[topk[b, k], l] at l:
//   score_k = q[b, l, h] . (tok_k[t_k] + site_k[l])[h] / sqrt(d_head)
//           + beta[h] * dist[b, k] + alpha[h] * agree(b, k, l)
//   out[b, l, h] = sum_k softmax(score)_k * (tok_v[t_k] + site_v[l])[h]
//
// Two facts make it cheap:
//  * a neighbour's key/value depend on it only through its token t_k, and
//    there are V (3) tokens: q . tok_k[t] is computed once per token, and the
//    output is sum_t weight[t] * tok_v[t] + (sum_k p_k) * site_v[l], where
//    weight[t] sums p_k over the neighbours carrying t;
//  * q . site_k[l] adds the same to every neighbour's score, so it cancels in
//    the softmax: site_k changes nothing and its gradient is zero.
// Stage 1 (neighbour_sites_block) gathers every neighbour's token per site and
// the agreement counts from prefix sums, O(B*K*L). Stage 2 (per (b, l, h)) is
// the softmax over K and the V-row mix. The CPU kernel (csrc/cpu) and the CUDA
// kernels (csrc/cuda) call the functions here; tests/simt runs the CUDA block
// bodies on the CPU.
#pragma once

#include <cmath>
#include <cstdint>

#include "device.h"

namespace embrag {

constexpr uint8_t kNoNeighbour = 255;  // token of a missing neighbour (topk == -1)
constexpr int kMaxTokens = 16;         // rows of tok_k / tok_v (REF, ALT, MASK, ...)

EMBRAG_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
EMBRAG_HD int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// ---- Stage 1: neighbour tokens and local agreement counts -------------------

struct NeighbourSitesArgs {
  const int64_t* topk;        // [B, K] rows of ref_tokens, -1 = no neighbour
  const uint8_t* ref_tokens;  // [H, L], row stride ref_stride (a window slice)
  const int64_t* q_tokens;    // [B, L]
  const bool* observed;       // [B, L]
  uint8_t* tokens;            // [B, L, K] out: token of neighbour k at l, or kNoNeighbour
  int32_t* matches;           // [B, L, K] out: observed sites j in the window of l
                              //            with q_tokens[b, j] == neighbour's token
  int32_t* n_observed;        // [B, L]    out: observed sites in the window of l
  int64_t B, K, L, ref_stride, half_width;
};

// Sites in the window [l - w, l + w] ∩ [0, L) counted by prefix[L + 1]
// (prefix[j] = count over sites < j).
EMBRAG_HD int32_t window_count(const int32_t* prefix, int64_t l, int64_t w, int64_t L) {
  return prefix[min64(L, l + w + 1)] - prefix[max64(0, l - w)];
}

// In-place inclusive prefix sum of x[0, n) by the whole block: each thread
// scans a contiguous chunk, thread 0 scans the chunk totals (partial[block_dim]).
template <typename Ctx>
EMBRAG_HD void block_prefix_sum(const Ctx& ctx, int32_t* x, int64_t n, int32_t* partial) {
  const int64_t chunk = ceil_div(n, ctx.block_dim());
  const int64_t begin = min64(n, ctx.thread() * chunk), end = min64(n, begin + chunk);
  int32_t running = 0;
  for (int64_t i = begin; i < end; ++i) x[i] = running += x[i];
  partial[ctx.thread()] = running;
  ctx.sync();
  if (ctx.thread() == 0)
    for (int t = 1; t < ctx.block_dim(); ++t) partial[t] += partial[t - 1];
  ctx.sync();
  if (ctx.thread() > 0)
    for (int64_t i = begin; i < end; ++i) x[i] += partial[ctx.thread() - 1];
  ctx.sync();
}

// Shared int32 elements one stage-1 block needs.
EMBRAG_HD int64_t neighbour_sites_smem_ints(int64_t L, int block) { return 2 * (L + 1) + block; }

// One block per (neighbour k = block_x, query b = block_y). Shared memory:
// match_prefix[L + 1], obs_prefix[L + 1], partial[block_dim]. The CPU runs it
// with one thread per block.
template <typename Ctx>
EMBRAG_HD void neighbour_sites_block(const Ctx& ctx, const NeighbourSitesArgs& a, int32_t* smem) {
  const int64_t k = ctx.block_x(), b = ctx.block_y(), L = a.L;
  const int64_t row = a.topk[b * a.K + k];
  const uint8_t* ref = a.ref_tokens + (row < 0 ? 0 : row) * a.ref_stride;
  int32_t* match_prefix = smem;
  int32_t* obs_prefix = smem + L + 1;
  for (int64_t l = ctx.thread(); l < L; l += ctx.block_dim()) {
    const bool obs = a.observed[b * L + l];
    match_prefix[l + 1] = row >= 0 && obs && a.q_tokens[b * L + l] == int64_t(ref[l]);
    obs_prefix[l + 1] = obs;
  }
  if (ctx.thread() == 0) match_prefix[0] = obs_prefix[0] = 0;
  ctx.sync();
  block_prefix_sum(ctx, match_prefix + 1, L, smem + 2 * (L + 1));
  block_prefix_sum(ctx, obs_prefix + 1, L, smem + 2 * (L + 1));
  for (int64_t l = ctx.thread(); l < L; l += ctx.block_dim()) {
    const int64_t out = (b * L + l) * a.K + k;
    a.tokens[out] = row < 0 ? kNoNeighbour : ref[l];
    a.matches[out] = window_count(match_prefix, l, a.half_width, L);
    if (k == 0) a.n_observed[b * L + l] = window_count(obs_prefix, l, a.half_width, L);
  }
}

// ---- Stage 2: softmax over the neighbours, per (b, l, h) --------------------

template <typename scalar_t>
struct RagFusionArgs {
  const scalar_t* q;          // [B, L, D] queries, n_heads slices of d_head
  const scalar_t* tok_k;      // [V, D]
  const scalar_t* tok_v;      // [V, D]
  const scalar_t* site_v;     // [L, D]
  const scalar_t* dist;       // [B, K]
  const scalar_t* beta;       // [n_heads]
  const scalar_t* alpha;      // [n_heads]
  const uint8_t* tokens;      // [B, L, K] from stage 1
  const int32_t* matches;     // [B, L, K] from stage 1
  const int32_t* n_observed;  // [B, L]    from stage 1
  int64_t B, L, K, D, V, n_heads;

  EMBRAG_HD int64_t d_head() const { return D / n_heads; }
};

template <typename acc_t>
struct SoftmaxStats {
  acc_t max, inv_sum;  // inv_sum = 0 when there is no neighbour
};

// Score of neighbour k at row = b * L + l, head h; qk[t] = q . tok_k[t] / sqrt(d_head).
template <typename acc_t, typename scalar_t>
EMBRAG_HD acc_t neighbour_score(const RagFusionArgs<scalar_t>& a, int64_t row, int64_t k,
                                int64_t h, const acc_t* qk) {
  const int64_t b = row / a.L, i = row * a.K + k;
  const acc_t agree = acc_t(a.matches[i]) / acc_t(max64(1, a.n_observed[row]));
  return qk[a.tokens[i]] + convert<acc_t>(a.beta[h]) * convert<acc_t>(a.dist[b * a.K + k]) +
         convert<acc_t>(a.alpha[h]) * agree;
}

// Softmax over the neighbours of (row = b * L + l, head h), given qk[V].
// Writes weight[t] = sum of p_k over neighbours with token t (t < V) and
// weight[V] = sum of all p_k (1, or 0 with no neighbour).
template <typename acc_t, typename scalar_t>
EMBRAG_HD SoftmaxStats<acc_t> neighbour_weights(const RagFusionArgs<scalar_t>& a, int64_t row,
                                                int64_t h, const acc_t* qk, acc_t* weight) {
  using std::exp;
  const uint8_t* tok = a.tokens + row * a.K;
  SoftmaxStats<acc_t> s{acc_t(0), acc_t(0)};
  bool any = false;
  for (int64_t k = 0; k < a.K; ++k) {
    if (tok[k] == kNoNeighbour) continue;
    const acc_t score = neighbour_score(a, row, k, h, qk);
    s.max = (!any || score > s.max) ? score : s.max;
    any = true;
  }
  for (int64_t t = 0; t <= a.V; ++t) weight[t] = acc_t(0);
  if (!any) return s;
  acc_t sum = acc_t(0);
  for (int64_t k = 0; k < a.K; ++k) {
    if (tok[k] == kNoNeighbour) continue;
    const acc_t e = exp(neighbour_score(a, row, k, h, qk) - s.max);
    weight[tok[k]] += e;
    sum += e;
  }
  s.inv_sum = acc_t(1) / sum;
  for (int64_t t = 0; t < a.V; ++t) weight[t] *= s.inv_sum;
  weight[a.V] = acc_t(1);
  return s;
}

// Backward of one (row, h), given gv[t] = grad_out . tok_v[t] (head slice)
// and the forward's weights and stats. With p the softmax and
// gbar = sum_t weight[t] * gv[t]:
//   grad_score[k] = p_k * (gv[t_k] - gbar)                  (0 for no neighbour)
//   grad_tok_score[t] = weight[t] * (gv[t] - gbar) / sqrt(d_head)
// (the sum of grad_score over the neighbours with token t, times the key
// scale), so grad_q = sum_t grad_tok_score[t] * tok_k[t].
template <typename acc_t, typename scalar_t>
EMBRAG_HD void neighbour_score_grads(const RagFusionArgs<scalar_t>& a, int64_t row, int64_t h,
                                     const acc_t* qk, const acc_t* gv, const acc_t* weight,
                                     SoftmaxStats<acc_t> s, acc_t* grad_tok_score,
                                     acc_t* grad_score) {
  using std::exp;
  using std::sqrt;
  acc_t gbar = acc_t(0);
  for (int64_t t = 0; t < a.V; ++t) gbar += weight[t] * gv[t];
  const acc_t key_scale = acc_t(1) / sqrt(acc_t(a.d_head()));
  for (int64_t t = 0; t < a.V; ++t) grad_tok_score[t] = weight[t] * (gv[t] - gbar) * key_scale;
  const uint8_t* tok = a.tokens + row * a.K;
  for (int64_t k = 0; k < a.K; ++k) {
    grad_score[k] = tok[k] == kNoNeighbour
                        ? acc_t(0)
                        : exp(neighbour_score(a, row, k, h, qk) - s.max) * s.inv_sum *
                              (gv[tok[k]] - gbar);
  }
}

// ---- CUDA block bodies (run by csrc/cuda and by the SIMT shim) --------------
// One block per (tile of site_tile sites = block_x, query b = block_y); float
// accumulation for float and bfloat16 inputs.

// Backward outputs (acc_t: float on CUDA, scalar_t on the CPU).
template <typename scalar_t, typename acc_t = float>
struct RagFusionGrads {
  const scalar_t* grad_out;  // [B, L, D]
  scalar_t* grad_q;          // [B, L, D]
  acc_t* weight;             // [B, L, n_heads, V + 1] softmax weight per token, and their sum
  acc_t* grad_tok_score;     // [B, L, n_heads, V]
  acc_t* grad_score;         // [B, L, n_heads, K]
};

// Shared floats per block: the two tables [V, D] plus, per site, the q (and
// grad_out) rows and the per-(site, head) scratch.
EMBRAG_HD int64_t rag_fusion_forward_smem_floats(int64_t tile, int64_t V, int64_t D, int64_t nh) {
  return 2 * V * D + tile * (D + nh * V + nh * (V + 1));
}
EMBRAG_HD int64_t rag_fusion_backward_smem_floats(int64_t tile, int64_t V, int64_t D, int64_t nh) {
  return 2 * V * D + tile * (2 * D + 2 * nh * V);
}

// 16 bytes of scalar_t, for coalesced vector loads and stores.
template <typename scalar_t>
struct alignas(16) Vec16 {
  static constexpr int kSize = 16 / sizeof(scalar_t);
  scalar_t v[kSize];
};

template <typename T>
EMBRAG_HD bool aligned16(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// dst[0, n) = float(src[0, n)) by the whole block, 16-byte loads when src is aligned.
template <typename scalar_t, typename Ctx>
EMBRAG_HD void load_to_shared(const Ctx& ctx, const scalar_t* src, int64_t n, float* dst) {
  constexpr int kVec = Vec16<scalar_t>::kSize;
  const int64_t n_vec = aligned16(src) ? n / kVec : 0;
  for (int64_t i = ctx.thread(); i < n_vec; i += ctx.block_dim()) {
    const Vec16<scalar_t> v = reinterpret_cast<const Vec16<scalar_t>*>(src)[i];
    for (int j = 0; j < kVec; ++j) dst[i * kVec + j] = convert<float>(v.v[j]);
  }
  for (int64_t i = n_vec * kVec + ctx.thread(); i < n; i += ctx.block_dim()) dst[i] = convert<float>(src[i]);
}

// dst[e] = value(e) for e in [0, n) by the whole block, 16-byte stores when dst is aligned.
template <typename scalar_t, typename Ctx, typename Value>
EMBRAG_HD void store_from(const Ctx& ctx, scalar_t* dst, int64_t n, const Value& value) {
  constexpr int kVec = Vec16<scalar_t>::kSize;
  const int64_t n_vec = aligned16(dst) ? n / kVec : 0;
  for (int64_t i = ctx.thread(); i < n_vec; i += ctx.block_dim()) {
    Vec16<scalar_t> v;
    for (int j = 0; j < kVec; ++j) v.v[j] = convert<scalar_t>(value(i * kVec + j));
    reinterpret_cast<Vec16<scalar_t>*>(dst)[i] = v;
  }
  for (int64_t i = n_vec * kVec + ctx.thread(); i < n; i += ctx.block_dim())
    dst[i] = convert<scalar_t>(value(i));
}

// dots[t] = scale * x . table[t] over one head (d_head columns; table rows of
// width D, both in shared memory). Each thread starts at its own column
// `first` and wraps around, so the threads of a warp hit different banks.
EMBRAG_HD void head_dots(const float* x, const float* table, int64_t D, int64_t d_head,
                         int64_t V, int64_t first, float scale, float* dots) {
  for (int64_t t = 0; t < V; ++t) {
    float acc = 0.f;
    for (int64_t n = 0, j = first % d_head; n < d_head; ++n, j = (j + 1 == d_head ? 0 : j + 1))
      acc += x[j] * table[t * D + j];
    dots[t] = acc * scale;
  }
}

// What every stage-2 block starts with: its sites [l0, l0 + n_sites) of
// query b, and the two tables and its q rows loaded (not yet synced) at the
// start of its shared memory.
struct TileInShared {
  int64_t l0, n_sites, first_row;  // first_row = b * L + l0
  float *tok_k, *tok_v, *q;           // [V, D], [V, D], [tile, D]
  float* rest;                        // the rest of the block's shared memory
};

template <typename scalar_t, typename Ctx>
EMBRAG_HD TileInShared load_tile(const Ctx& ctx, const RagFusionArgs<scalar_t>& a, int64_t tile,
                                 float* smem) {
  const int64_t b = ctx.block_y(), l0 = int64_t(ctx.block_x()) * tile, VD = a.V * a.D;
  const TileInShared s{l0, min64(tile, a.L - l0), b * a.L + l0,
                       smem, smem + VD, smem + 2 * VD, smem + 2 * VD + tile * a.D};
  load_to_shared(ctx, a.tok_k, VD, s.tok_k);
  load_to_shared(ctx, a.tok_v, VD, s.tok_v);
  load_to_shared(ctx, a.q + s.first_row * a.D, s.n_sites * a.D, s.q);
  return s;
}

// Forward. Shared memory (rag_fusion_forward_smem_floats): tok_k[V, D],
// tok_v[V, D], q rows [tile, D], qk [tile, nh, V], weight [tile, nh, V + 1].
template <typename scalar_t, typename Ctx>
EMBRAG_HD void rag_fusion_forward_block(const Ctx& ctx, const RagFusionArgs<scalar_t>& a,
                                        scalar_t* out, int64_t tile, float* smem) {
  const int64_t D = a.D, V = a.V, nh = a.n_heads, dh = a.d_head();
  const TileInShared s = load_tile(ctx, a, tile, smem);
  float* qk = s.rest;
  float* weight = qk + tile * nh * V;
  ctx.sync();
  // i = site * nh + h, so q + i * dh is the head slice of that site's row.
  for (int64_t i = ctx.thread(); i < s.n_sites * nh; i += ctx.block_dim()) {
    head_dots(s.q + i * dh, s.tok_k + (i % nh) * dh, D, dh, V, i, 1.f / sqrtf(float(dh)), qk + i * V);
    neighbour_weights(a, s.first_row + i / nh, i % nh, qk + i * V, weight + i * (V + 1));
  }
  ctx.sync();
  const scalar_t* site_v = a.site_v + s.l0 * D;
  store_from(ctx, out + s.first_row * D, s.n_sites * D, [&](int64_t e) {
    const int64_t d = e % D;
    const float* w = weight + ((e / D) * nh + d / dh) * (V + 1);
    float v = w[V] * convert<float>(site_v[e]);
    for (int64_t t = 0; t < V; ++t) v += w[t] * s.tok_v[t * D + d];
    return v;
  });
}

// Backward: grad_q, and the per-(b, l, h) coefficients the table gradients
// are reduced from (csrc/rag_fusion.cpp). Shared memory
// (rag_fusion_backward_smem_floats): tok_k[V, D], tok_v[V, D], q rows and
// grad_out rows [tile, D] each, qk and gv [tile, nh, V] each.
template <typename scalar_t, typename Ctx>
EMBRAG_HD void rag_fusion_backward_block(const Ctx& ctx, const RagFusionArgs<scalar_t>& a,
                                         RagFusionGrads<scalar_t> g, int64_t tile, float* smem) {
  const int64_t D = a.D, V = a.V, K = a.K, nh = a.n_heads, dh = a.d_head();
  const TileInShared s = load_tile(ctx, a, tile, smem);
  float* grad_out = s.rest;
  float* qk = grad_out + tile * D;
  float* gv = qk + tile * nh * V;
  load_to_shared(ctx, g.grad_out + s.first_row * D, s.n_sites * D, grad_out);
  ctx.sync();
  float* grad_tok_score = g.grad_tok_score + s.first_row * nh * V;
  for (int64_t i = ctx.thread(); i < s.n_sites * nh; i += ctx.block_dim()) {
    const int64_t row = s.first_row + i / nh, h = i % nh, head = row * nh + h;
    head_dots(s.q + i * dh, s.tok_k + h * dh, D, dh, V, i, 1.f / sqrtf(float(dh)), qk + i * V);
    head_dots(grad_out + i * dh, s.tok_v + h * dh, D, dh, V, i, 1.f, gv + i * V);
    float* weight = g.weight + head * (V + 1);
    const SoftmaxStats<float> stats = neighbour_weights(a, row, h, qk + i * V, weight);
    neighbour_score_grads(a, row, h, qk + i * V, gv + i * V, weight, stats, grad_tok_score + i * V,
                          g.grad_score + head * K);
  }
  ctx.sync();
  store_from(ctx, g.grad_q + s.first_row * D, s.n_sites * D, [&](int64_t e) {
    const int64_t d = e % D;
    const float* c = grad_tok_score + ((e / D) * nh + d / dh) * V;
    float v = 0.f;
    for (int64_t t = 0; t < V; ++t) v += c[t] * s.tok_k[t * D + d];
    return v;
  });
}

}  // namespace embrag
