// rag_fusion: the torch-free math and block bodies of the fused
// retrieval-attention op, run by the CUDA kernels (csrc/cuda), by the CPU
// kernels with one thread per block (csrc/cpu) and by the SIMT shim (tests/simt).
//
// For query b, site l, head h and each retrieved neighbour k carrying token
// t_k = ref_tokens[topk[b, k], l] at l (k with topk = -1 take no part):
//   score_k = q[b, l, h] . tok_k[t_k, h] / sqrt(d_head) + beta[h] dist[b, k]
//           + alpha[h] agree(b, k, l) + gamma[h] copy_bias[b, l, k]
//   p = softmax_k(score)
//   out[b, l, h] = sum_k p_k (tok_v[t_k] + site_v[l])[h]   (0 with no neighbour)
// agree(b, k, l): the fraction of the query's observed sites j in
// [l - half_width, l + half_width] where q_tokens[b, j] == ref_tokens[topk[b, k], j].
//
// What makes it cheap:
//  * a neighbour's key and value depend on it only through its token, and
//    there are V (3) tokens: q . tok_k[t] is computed once per token, and
//    out = sum_t weight[t] tok_v[t] + (sum_t weight[t]) site_v[l] with
//    weight[t] = sum of p_k over the neighbours carrying t;
//  * a block owns site_tile sites of one query and streams the K neighbours
//    through shared memory kNeighbourTile at a time, keeping per (site, head,
//    lane) an online softmax (forward) or gradient sums (backward): time and
//    memory are linear in K, and no [B, L, heads, K] tensor exists anywhere;
//  * the agreement windows come from 32-site match bit words and popcounts.
//
// Forward writes out and the per-(site, head) log-sum-exp of the scores (lse).
// Backward (FlashAttention's pattern) recomputes p_k = exp(score_k - lse) and
//   dscore_k = p_k (grad_out . (tok_v[t_k] + site_v[l]) - delta),
//   delta = sum_k p_k grad_out . value_k = grad_out . out   (per head)
// taking delta from the saved output or from a first pass over the
// neighbours (the launchers choose: RagFusionGradParams.delta_from_out), and
// correcting the rounding of the first (correct_delta); the per-neighbour
// gradients are written per tile, the table and scale gradients accumulate
// per block and are added once per block.
//
// At the end: the bandwidth model (bytes a pass must move and moves).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "device.h"

namespace embrag {

constexpr uint8_t kNoNeighbour = 255;  // token of a missing neighbour (topk == -1)
constexpr int kMaxTokens = 16;         // rows of tok_k / tok_v (REF, ALT, MASK, ...)
constexpr int kNeighbourTile = 32;     // neighbours staged in shared memory at a time
constexpr int kSiteTile = 32;          // sites per block (CUDA shrinks it if D is large)
constexpr int kRagFusionThreads = 128; // CUDA threads per block

// The op's tensors as the torch side passes them (floating-point ones as
// void*, elements of `dtype`; the lse of the accumulation type).
struct RagFusionParams {
  DType dtype;
  const void* q;               // [B, L, D] projected queries, n_heads slices of d_head
  const void* tok_k;           // [V, D] projected token keys
  const void* tok_v;           // [V, D] projected token values
  const void* site_v;          // [L, D] projected site values
  const void* dist;            // [B, K] retrieval distances
  const void* beta;            // [n_heads] distance weight
  const void* alpha;           // [n_heads] agreement weight
  const void* copy_bias;       // [B, L, K] score bias, or null
  const void* gamma;           // [n_heads] copy-bias weight (null with copy_bias)
  const int64_t* topk;         // [B, K] rows of ref_tokens, -1 = no neighbour
  const uint8_t* ref_tokens;   // [n_ref_rows, *]: site l of row r at r * ref_stride + l
  const int64_t* q_tokens;     // [B, L]
  const bool* observed;        // [B, L]
  void* out;                   // [B, L, D] written by the forward, read by the backward
  void* lse;                   // [B, L, n_heads] written by the forward, read by the backward
  int64_t ref_stride, n_ref_rows;
  int32_t B, L, K, D, V, n_heads;
  int32_t half_width;          // clamped to L
  int32_t site_tile;           // sites per block, 1..kSiteTile

  EMBRAG_HD int32_t head_dim() const { return D / n_heads; }
  EMBRAG_HD int32_t site_tiles() const { return int32_t(ceil_div(L, site_tile)); }
  // Sites a block reads around its tile for the agreement windows, at most.
  EMBRAG_HD int32_t halo() const { return min32(L, site_tile + 2 * half_width); }
  EMBRAG_HD int32_t halo_words() const { return int32_t(ceil_div(halo(), 32)); }
};

// What the backward writes. Accumulators are of the accumulation type (float,
// double for float64), zeroed by the caller, and added to once per block.
struct RagFusionGradParams {
  const void* grad_out;     // [B, L, D]
  void* grad_q;             // [B, L, D] written
  void* grad_copy_bias;     // [B, L, K] written, or null when not needed
  void* grad_tok_k;         // [V, D] accumulated
  void* grad_tok_v;         // [V, D] accumulated
  void* grad_site_v;        // [L, D] accumulated
  void* grad_dist;          // [B, K] accumulated
  void* grad_beta;          // [n_heads] accumulated
  void* grad_alpha;         // [n_heads] accumulated
  void* grad_gamma;         // [n_heads] accumulated (with copy_bias)
  // delta from the saved output, else from a first pass over K: the launchers
  // decide (CUDA: whichever moves fewer bytes, rag_fusion_delta_from_out; the
  // CPU, compute-bound: always the output, a dot product per row rather than
  // K exponentials).
  bool delta_from_out;
};

// Typed views of the pointers (scalar_t: float, double or a bfloat16 type).
template <typename scalar_t>
struct RagFusionInputs {
  const scalar_t *q, *tok_k, *tok_v, *site_v, *dist, *beta, *alpha, *copy_bias, *gamma, *out;
  EMBRAG_HD explicit RagFusionInputs(const RagFusionParams& p)
      : q(static_cast<const scalar_t*>(p.q)), tok_k(static_cast<const scalar_t*>(p.tok_k)),
        tok_v(static_cast<const scalar_t*>(p.tok_v)), site_v(static_cast<const scalar_t*>(p.site_v)),
        dist(static_cast<const scalar_t*>(p.dist)), beta(static_cast<const scalar_t*>(p.beta)),
        alpha(static_cast<const scalar_t*>(p.alpha)),
        copy_bias(static_cast<const scalar_t*>(p.copy_bias)),
        gamma(static_cast<const scalar_t*>(p.gamma)), out(static_cast<const scalar_t*>(p.out)) {}
};

template <typename scalar_t>
struct RagFusionGrads {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* grad_out;
  scalar_t *grad_q, *grad_copy_bias;
  acc_t *grad_tok_k, *grad_tok_v, *grad_site_v, *grad_dist, *grad_beta, *grad_alpha, *grad_gamma;
  EMBRAG_HD explicit RagFusionGrads(const RagFusionGradParams& g)
      : grad_out(static_cast<const scalar_t*>(g.grad_out)),
        grad_q(static_cast<scalar_t*>(g.grad_q)),
        grad_copy_bias(static_cast<scalar_t*>(g.grad_copy_bias)),
        grad_tok_k(static_cast<acc_t*>(g.grad_tok_k)), grad_tok_v(static_cast<acc_t*>(g.grad_tok_v)),
        grad_site_v(static_cast<acc_t*>(g.grad_site_v)), grad_dist(static_cast<acc_t*>(g.grad_dist)),
        grad_beta(static_cast<acc_t*>(g.grad_beta)), grad_alpha(static_cast<acc_t*>(g.grad_alpha)),
        grad_gamma(static_cast<acc_t*>(g.grad_gamma)) {}
};

// ---- Shared memory ---------------------------------------------------------

// One (site, head) of a block's tile (5 kV + 4 words: odd, see LaneState).
template <typename acc_t, int kV>
struct PairState {
  acc_t qk[kV];      // q . tok_k[t] / sqrt(d_head)
  acc_t gv[kV];      // backward: grad_out . tok_v[t]
  acc_t g_site;      // backward: grad_out . site_v[l]
  acc_t delta;       // backward: grad_out . out
  acc_t lse;         // log-sum-exp of the scores; +inf when no neighbour has weight
  acc_t weight[kV];  // sum of p_k over the neighbours carrying token t
  acc_t coef[kV];    // backward: weight[t] (gv[t] + g_site - delta) / sqrt(d_head)
  acc_t valid;       // 1 when some neighbour has weight (sum_t weight[t] = 1), else 0
};

// One (site, head, lane) of the neighbour loop; a lane takes every
// lanes-th neighbour of a tile. Kept in shared memory between tiles; weight
// has kV + kV % 2 entries so that the struct has an odd number of words (the
// threads of a warp, on consecutive structs, then hit different banks).
template <typename acc_t, int kV>
struct LaneState {
  acc_t weight[kV + kV % 2];                 // forward: sum of exp(score - max); backward: of p_k
  acc_t max, sum;                            // forward: running max score, sum of exp(score - max)
  acc_t grad_beta, grad_alpha, grad_gamma;   // backward: this lane's share
  acc_t dscore_sum;                          // backward: sum of dscore_k (0 with an exact delta)
  acc_t p_dist, p_agree, p_copy_bias;        // backward: sums of p_k dist_k, p_k agree_k, p_k copy_bias_k
};

// The block's shared memory, carved from one buffer. Row arrays have a
// stride of D + 1 and [neighbour, site] arrays of site_tile + 1 floats, odd
// strides that keep the threads of a warp on different banks.
template <typename acc_t, int kV>
struct RagFusionSmem {
  acc_t* tok_k;                   // [kV, D], rows >= V zero
  acc_t* tok_v;                   // [kV, D]
  acc_t* scales;                  // [3, n_heads]: beta, alpha, gamma (0 without copy_bias)
  PairState<acc_t, kV>* pairs;    // [n_heads, site_tile]
  LaneState<acc_t, kV>* lanes;    // [n_heads, lanes * site_tile]
  acc_t* inv_observed;            // [site_tile] 1 / max(1, observed sites in the window)
  uint32_t* observed_bits;        // [halo_words] observed query sites of the halo
  uint8_t* query_match;           // [halo] query token at an observed site, else kNoNeighbour
  acc_t* q_rows;                  // [site_tile, D + 1] (forward: overlaps the neighbour tile)
  acc_t* g_rows;                  // [site_tile, D + 1] backward: grad_out rows
  acc_t* out_rows;                // [site_tile, D + 1] backward: out rows (overlaps the tile)
  // The neighbour tile:
  int64_t* row;                   // [kNeighbourTile] their rows of ref_tokens, -1: none
  acc_t* dist;                    // [kNeighbourTile]
  uint8_t* token;                 // [kNeighbourTile, site_tile]
  uint32_t* match_bits;           // [kNeighbourTile, halo_words]
  acc_t* agree;                   // [kNeighbourTile, site_tile + 1]
  acc_t* copy_bias;               // [kNeighbourTile, site_tile + 1]
  acc_t* grad_copy_bias;          // [kNeighbourTile, site_tile + 1] backward
  acc_t* grad_dist;               // [kNeighbourTile, site_tile + 1] backward
  size_t bytes;                   // total

  // Carves the regions from base (nullptr: sizes only, in .bytes).
  EMBRAG_HD static RagFusionSmem carve(const RagFusionParams& p, int32_t lanes, bool backward,
                                       unsigned char* base) {
    RagFusionSmem s{};
    size_t offset = 0;
    auto take = [&](auto*& region, size_t count) {
      using T = std::remove_reference_t<decltype(*region)>;
      offset = (offset + 15) / 16 * 16;
      region = reinterpret_cast<T*>(base + offset);
      offset += count * sizeof(T);
    };
    const size_t T = size_t(p.site_tile), D = size_t(p.D), H = size_t(p.n_heads);
    const size_t rows = T * (D + 1), tile_cells = size_t(kNeighbourTile) * (T + 1);
    take(s.tok_k, kV * D);
    take(s.tok_v, kV * D);
    take(s.scales, 3 * H);
    take(s.pairs, T * H);
    take(s.lanes, size_t(lanes) * T * H);
    take(s.inv_observed, T);
    take(s.observed_bits, size_t(p.halo_words()));
    take(s.query_match, size_t(p.halo()));
    if (backward) take(s.g_rows, rows);
    if (backward) take(s.q_rows, rows);
    const size_t tile_start = offset;
    take(s.row, kNeighbourTile);
    take(s.dist, kNeighbourTile);
    take(s.token, kNeighbourTile * T);
    take(s.match_bits, kNeighbourTile * size_t(p.halo_words()));
    take(s.agree, tile_cells);
    take(s.copy_bias, tile_cells);
    if (backward) take(s.grad_copy_bias, tile_cells);
    if (backward) take(s.grad_dist, tile_cells);
    const size_t tile_end = offset;
    offset = tile_start;  // the rows used only before the first tile share its space
    take(backward ? s.out_rows : s.q_rows, rows);
    s.bytes = offset > tile_end ? offset : tile_end;
    return s;
  }
};

// Set bits of words (bit x of word x / 32 = halo position x) in [x0, x1).
EMBRAG_HD int32_t count_bits(const uint32_t* words, int32_t x0, int32_t x1) {
  int32_t n = 0;
  for (int32_t w = x0 >> 5; x0 < x1 && w <= (x1 - 1) >> 5; ++w) {
    uint32_t word = words[w];
    const int32_t first = w * 32;
    if (x0 > first) word &= ~0u << (x0 - first);
    if (x1 < first + 32) word &= (1u << (x1 - first)) - 1u;
    n += popcount32(word);
  }
  return n;
}

// v[t] += x, v[u] unchanged for u != t (u < kV), with no dynamic register indexing.
template <int kV, typename acc_t, int N>
EMBRAG_HD void add_at(acc_t (&v)[N], int t, acc_t x) {
  for (int u = 0; u < kV; ++u) v[u] += u == t ? x : acc_t(0);
}

// ---- The block body ----------------------------------------------------------
// One block per (site tile = block_x, query b = block_y). kV: rows of the
// token tables rounded up (3 or kMaxTokens); kHeadDim: d_head, or 0 when it is
// only known at run time.
template <typename scalar_t, int kV, int kHeadDim, typename Ctx>
class RagFusionBlock {
 public:
  using acc_t = acc_type<scalar_t>;

  EMBRAG_HD RagFusionBlock(const Ctx& ctx, const RagFusionParams& p, bool backward,
                           unsigned char* smem)
      : ctx_(ctx), p_(p), in_(p), lanes_(max32(1, ctx.block_dim() / p.site_tile)),
        s_(RagFusionSmem<acc_t, kV>::carve(p, lanes_, backward, smem)) {
    b_ = ctx.block_y();
    l0_ = ctx.block_x() * p.site_tile;
    n_sites_ = min32(p.site_tile, p.L - l0_);
    halo_lo_ = max32(0, l0_ - p.half_width);
    n_halo_ = min32(p.L, l0_ + n_sites_ + p.half_width) - halo_lo_;
  }

  // Writes out and lse of the tile's sites.
  EMBRAG_HD void forward() {
    setup(nullptr, false);
    for (int32_t k0 = 0; k0 < p_.K; k0 += kNeighbourTile) {
      stage_neighbour_tile(k0);
      neighbour_pass<Pass::kForward>(k0);
      ctx_.sync();
    }
    merge_lanes<Pass::kForward>();
    ctx_.sync();
    store_out();
  }

  // Writes grad_q and grad_copy_bias of the tile's sites; adds the block's
  // share of the table, distance and scale gradients.
  EMBRAG_HD void backward(const RagFusionGradParams& gp) {
    const RagFusionGrads<scalar_t> g(gp);
    setup(g.grad_out, gp.delta_from_out);
    if (!gp.delta_from_out) {
      for (int32_t k0 = 0; k0 < p_.K; k0 += kNeighbourTile) {
        stage_neighbour_tile(k0);
        neighbour_pass<Pass::kWeights>(k0);
        ctx_.sync();
      }
      merge_lanes<Pass::kWeights>();  // sets delta; read after the next sync
    }
    for (int32_t k0 = 0; k0 < p_.K; k0 += kNeighbourTile) {
      stage_neighbour_tile(k0);
      neighbour_pass<Pass::kGrads>(k0);
      ctx_.sync();
      store_neighbour_grads(g, k0);
    }
    merge_lanes<Pass::kGrads>();
    ctx_.sync();
    store_row_grads(g);
  }

 private:
  enum class Pass { kForward, kWeights, kGrads };

  EMBRAG_HD int32_t head_dim() const { return kHeadDim > 0 ? kHeadDim : p_.head_dim(); }
  EMBRAG_HD int32_t row_stride() const { return p_.D + 1; }
  EMBRAG_HD int32_t tile_stride() const { return p_.site_tile + 1; }
  EMBRAG_HD int32_t n_units() const { return lanes_ * p_.site_tile; }  // unit = lane * site_tile + i
  EMBRAG_HD PairState<acc_t, kV>& pair(int32_t i, int32_t h) const { return s_.pairs[h * p_.site_tile + i]; }
  EMBRAG_HD LaneState<acc_t, kV>& lane_state(int32_t unit, int32_t h) const {
    return s_.lanes[h * n_units() + unit];
  }
  EMBRAG_HD int64_t row(int32_t i) const { return int64_t(b_) * p_.L + l0_ + i; }  // (b, l0 + i)
  EMBRAG_HD acc_t key_scale() const {
    using std::sqrt;
    return acc_t(1) / sqrt(acc_t(head_dim()));
  }

  // x . y over one head (d_head elements), in kLanes partial sums: the CPU
  // vectorises it (a float sum in one order does not).
  template <typename Y>
  EMBRAG_HD acc_t head_dot(const acc_t* x, const Y* y) const {
    constexpr int kLanes = 8;
    acc_t lanes[kLanes] = {};
    int32_t n = 0;
    for (; n + kLanes <= head_dim(); n += kLanes)
      for (int j = 0; j < kLanes; ++j) lanes[j] += x[n + j] * element_cast<acc_t>(y[n + j]);
    acc_t sum = 0;
    for (; n < head_dim(); ++n) sum += x[n] * element_cast<acc_t>(y[n]);
    for (int j = 0; j < kLanes; ++j) sum += lanes[j];
    return sum;
  }

  // sum_t factor[t] table[t, col + n] for the columns n of a head slice, the
  // factors and row pointers held apart from the table (the CPU's loop over
  // n then vectorises).
  struct HeadMix {
    acc_t factor[kV];
    const acc_t* row[kV];
    EMBRAG_HD acc_t operator()(int32_t n) const {
      acc_t v = 0;
      for (int t = 0; t < kV; ++t) v += factor[t] * row[t][n];
      return v;
    }
  };
  EMBRAG_HD HeadMix head_mix(const acc_t (&factor)[kV], const acc_t* table, int32_t col) const {
    HeadMix mix;
    for (int t = 0; t < kV; ++t) mix.factor[t] = factor[t], mix.row[t] = table + t * p_.D + col;
    return mix;
  }

  // f(i, h, n0, n1) for the columns h * d_head + [n0, n1) of every row i of
  // the tile: one element per call, consecutive threads on consecutive
  // elements (coalesced); run serially (the CPU), one head slice per call, so
  // that f hoists what depends on (i, h) and its loop over n vectorises.
  template <typename F>
  EMBRAG_HD void for_each_head_slice(const F& f) const {
    const int32_t D = p_.D, dh = head_dim();
    if (ctx_.block_dim() == 1) {
      for (int32_t i = 0; i < n_sites_; ++i)
        for (int32_t h = 0; h < p_.n_heads; ++h) f(i, h, 0, dh);
      return;
    }
    for (int32_t e = ctx_.thread(); e < n_sites_ * D; e += ctx_.block_dim()) {
      const int32_t i = e / D, d = e - i * D, h = d / dh, n = d - h * dh;
      f(i, h, n, n + 1);
    }
  }

  // The tile's [n_sites, D] rows of src into smem rows of stride D + 1.
  EMBRAG_HD void load_rows(const scalar_t* src, acc_t* dst) const {
    for_each_head_slice([&](int32_t i, int32_t h, int32_t n0, int32_t n1) {
      const scalar_t* in = src + int64_t(i) * p_.D + h * head_dim();
      acc_t* out = dst + i * row_stride() + h * head_dim();
      for (int32_t n = n0; n < n1; ++n) out[n] = element_cast<acc_t>(in[n]);
    });
  }

  // Window [l - w, l + w] of site l0 + i, as halo positions [x0, x1).
  EMBRAG_HD void window(int32_t i, int32_t& x0, int32_t& x1) const {
    const int32_t l = l0_ + i;
    x0 = max32(0, l - p_.half_width) - halo_lo_;
    x1 = min32(p_.L, l + p_.half_width + 1) - halo_lo_;
  }

  // Tables, scales, the query side of the agreement, the rows, and per
  // (site, head) the dot products with the tables.
  EMBRAG_HD void setup(const scalar_t* grad_out, bool delta_from_out) {
    const int32_t D = p_.D, H = p_.n_heads, VD = p_.V * D;
    for (int32_t e = ctx_.thread(); e < kV * D; e += ctx_.block_dim()) {
      s_.tok_k[e] = e < VD ? element_cast<acc_t>(in_.tok_k[e]) : acc_t(0);
      s_.tok_v[e] = e < VD ? element_cast<acc_t>(in_.tok_v[e]) : acc_t(0);
    }
    for (int32_t h = ctx_.thread(); h < H; h += ctx_.block_dim()) {
      s_.scales[h] = element_cast<acc_t>(in_.beta[h]);
      s_.scales[H + h] = element_cast<acc_t>(in_.alpha[h]);
      s_.scales[2 * H + h] = in_.gamma ? element_cast<acc_t>(in_.gamma[h]) : acc_t(0);
    }
    const int64_t query = int64_t(b_) * p_.L + halo_lo_;
    for (int32_t word = ctx_.thread(); word * 32 < n_halo_; word += ctx_.block_dim()) {
      uint32_t bits = 0;
      for (int32_t x = word * 32; x < min32(n_halo_, word * 32 + 32); ++x) {
        const bool obs = p_.observed[query + x];
        const int64_t t = p_.q_tokens[query + x];
        s_.query_match[x] = obs && t >= 0 && t < p_.V ? uint8_t(t) : kNoNeighbour;
        bits |= uint32_t(obs) << (x - word * 32);
      }
      s_.observed_bits[word] = bits;
    }
    load_rows(in_.q + row(0) * D, s_.q_rows);
    if (grad_out) load_rows(grad_out + row(0) * D, s_.g_rows);
    if (delta_from_out) load_rows(in_.out + row(0) * D, s_.out_rows);
    ctx_.sync();
    for (int32_t i = ctx_.thread(); i < n_sites_; i += ctx_.block_dim()) {
      int32_t x0, x1;
      window(i, x0, x1);
      s_.inv_observed[i] = acc_t(1) / acc_t(max32(1, count_bits(s_.observed_bits, x0, x1)));
    }
    for (int32_t p = ctx_.thread(); p < p_.site_tile * H; p += ctx_.block_dim())
      if (p % p_.site_tile < n_sites_) setup_pair(p % p_.site_tile, p / p_.site_tile, grad_out, delta_from_out);
    ctx_.sync();
  }

  EMBRAG_HD void setup_pair(int32_t i, int32_t h, const scalar_t* grad_out, bool delta_from_out) {
    const int32_t col = h * head_dim();
    PairState<acc_t, kV>& ps = pair(i, h);
    const acc_t* q = s_.q_rows + i * row_stride() + col;
    for (int t = 0; t < kV; ++t) ps.qk[t] = head_dot(q, s_.tok_k + t * p_.D + col) * key_scale();
    if (!grad_out) return;
    const acc_t* g = s_.g_rows + i * row_stride() + col;
    for (int t = 0; t < kV; ++t) ps.gv[t] = head_dot(g, s_.tok_v + t * p_.D + col);
    ps.g_site = head_dot(g, in_.site_v + int64_t(l0_ + i) * p_.D + col);
    ps.delta = delta_from_out ? head_dot(g, s_.out_rows + i * row_stride() + col) : acc_t(0);
    ps.lse = static_cast<const acc_t*>(p_.lse)[row(i) * p_.n_heads + h];
  }

  // Neighbours k0 .. k0 + kNeighbourTile: tokens at the tile's sites, match
  // bits over the halo, distances and copy bias. Reads each selected row
  // over the halo once (this is where bad indices are reported: Ctx).
  EMBRAG_HD void stage_neighbour_tile(int32_t k0) {
    const int32_t nw = int32_t(ceil_div(n_halo_, 32)), T = p_.site_tile, K = p_.K;
    const int32_t n_tile = tile_neighbours(k0);
    for (int32_t item = ctx_.thread(); item < n_tile * nw; item += ctx_.block_dim()) {
      const int32_t kk = item / nw, word = item - kk * nw, k = k0 + kk;
      int64_t r = p_.topk[int64_t(b_) * K + k];
      if (r < -1 || r >= p_.n_ref_rows) {  // reported; the neighbour is left out
        ctx_.bad_index("topk", r, -1, p_.n_ref_rows);
        r = -1;
      }
      if (word == 0) s_.dist[kk] = r >= 0 ? element_cast<acc_t>(in_.dist[int64_t(b_) * K + k]) : acc_t(0);
      const uint8_t* ref = p_.ref_tokens + (r < 0 ? 0 : r) * p_.ref_stride + halo_lo_;
      uint32_t bits = 0;
      for (int32_t x = word * 32; r >= 0 && x < min32(n_halo_, word * 32 + 32); ++x) {
        if (ref[x] >= p_.V)  // reported; the neighbour is left out at this site
          ctx_.bad_index("ref_tokens (at the rows topk selects)", ref[x], 0, p_.V);
        bits |= uint32_t(ref[x] < p_.V && ref[x] == s_.query_match[x]) << (x - word * 32);
      }
      s_.match_bits[kk * nw + word] = bits;
      if (word == 0) s_.row[kk] = r;
    }
    ctx_.sync();
    // Tokens at the tile's sites (consecutive threads on consecutive sites)
    // and the copy bias [B, L, K] (consecutive threads on consecutive neighbours).
    for (int32_t item = ctx_.thread(); item < n_tile * T; item += ctx_.block_dim()) {
      const int32_t kk = item / T, i = item - kk * T;
      const int64_t r = s_.row[kk];
      const uint8_t t = r < 0 || i >= n_sites_ ? kNoNeighbour : p_.ref_tokens[r * p_.ref_stride + l0_ + i];
      s_.token[kk * T + i] = t < p_.V ? t : kNoNeighbour;
    }
    const auto* cb = in_.copy_bias;
    for (int32_t item = ctx_.thread(); cb && item < n_sites_ * kNeighbourTile; item += ctx_.block_dim()) {
      const int32_t i = item / kNeighbourTile, kk = item % kNeighbourTile;
      if (kk < n_tile) s_.copy_bias[kk * tile_stride() + i] = element_cast<acc_t>(cb[row(i) * K + k0 + kk]);
    }
    ctx_.sync();
  }

  // Neighbours in the tile from k0.
  EMBRAG_HD int32_t tile_neighbours(int32_t k0) const { return min32(kNeighbourTile, p_.K - k0); }

  struct HeadScales {
    acc_t beta, alpha, gamma;
  };

  // Score of the tile's neighbour kk at site i for the head of ps and sc;
  // -inf when it has no token there (no neighbour, or a bad token).
  EMBRAG_HD acc_t score(int32_t kk, int32_t i, const PairState<acc_t, kV>& ps,
                        const HeadScales& sc) const {
    const int t = s_.token[kk * p_.site_tile + i];
    if (t == kNoNeighbour) return -INFINITY;
    const int32_t cell = kk * tile_stride() + i;
    const acc_t cb = in_.copy_bias ? s_.copy_bias[cell] : acc_t(0);
    return ps.qk[t] + sc.beta * s_.dist[kk] + sc.alpha * s_.agree[cell] + sc.gamma * cb;
  }

  // The neighbour loop over one staged tile, per unit (site i, lane): the
  // lane's agreements first, then per head its share of the softmax (forward)
  // or of the gradients (backward).
  template <Pass kPass>
  EMBRAG_HD void neighbour_pass(int32_t k0) {
    const int32_t T = p_.site_tile, H = p_.n_heads, n_tile = tile_neighbours(k0);
    for (int32_t unit = ctx_.thread(); unit < n_units(); unit += ctx_.block_dim()) {
      const int32_t i = unit % T, lane = unit / T;
      if (i >= n_sites_) continue;
      lane_agreements(i, lane, n_tile, kPass == Pass::kGrads);
      for (int32_t h = 0; h < H; ++h) {
        LaneState<acc_t, kV>& slot = lane_state(unit, h);
        LaneState<acc_t, kV> st{};
        if (k0 == 0)
          st.max = -INFINITY;
        else
          st = slot;
        const HeadScales sc{s_.scales[h], s_.scales[H + h], s_.scales[2 * H + h]};
        if (kPass == Pass::kForward)
          lane_softmax(st, i, lane, n_tile, pair(i, h), sc);
        else
          lane_gradients<kPass>(st, i, lane, n_tile, pair(i, h), sc);
        slot = st;
      }
    }
  }

  // agree of the lane's neighbours at site i (and, for the gradient pass,
  // their cells of the per-neighbour gradients zeroed).
  EMBRAG_HD void lane_agreements(int32_t i, int32_t lane, int32_t n_tile, bool zero_grads) const {
    const int32_t nw = int32_t(ceil_div(n_halo_, 32)), TS = tile_stride();
    int32_t x0, x1;
    window(i, x0, x1);
    for (int32_t kk = lane; kk < n_tile; kk += lanes_) {
      const bool present = s_.token[kk * p_.site_tile + i] != kNoNeighbour;
      s_.agree[kk * TS + i] =
          present ? acc_t(count_bits(s_.match_bits + kk * nw, x0, x1)) * s_.inv_observed[i] : acc_t(0);
      if (zero_grads) s_.grad_copy_bias[kk * TS + i] = s_.grad_dist[kk * TS + i] = 0;
    }
  }

  // Online softmax, one tile at a time: the tile's max score first, so the
  // running sums are rescaled at most once per tile.
  EMBRAG_HD void lane_softmax(LaneState<acc_t, kV>& st, int32_t i, int32_t lane, int32_t n_tile,
                              const PairState<acc_t, kV>& ps, const HeadScales& sc) const {
    using std::exp;
    acc_t tile_max = -INFINITY;
    for (int32_t kk = lane; kk < n_tile; kk += lanes_) {
      const acc_t s = score(kk, i, ps, sc);
      tile_max = s > tile_max ? s : tile_max;
    }
    if (tile_max == -INFINITY) return;  // no neighbour of weight here (-inf: excluded)
    if (tile_max > st.max) {
      const acc_t r = exp(st.max - tile_max);
      st.sum *= r;
      for (int u = 0; u < kV; ++u) st.weight[u] *= r;
      st.max = tile_max;
    }
    for (int32_t kk = lane; kk < n_tile; kk += lanes_) {
      const acc_t s = score(kk, i, ps, sc);
      if (s == -INFINITY) continue;
      const acc_t e = exp(s - st.max);
      st.sum += e;
      add_at<kV>(st.weight, s_.token[kk * p_.site_tile + i], e);
    }
  }

  // p_k = exp(score_k - lse) summed per token; for kGrads also
  // dscore_k = p_k (gv[t_k] + g_site - delta) into the scale sums and the
  // per-neighbour cells (copy bias: sum over heads of gamma dscore; distance:
  // of beta dscore), and the sums merge_lanes corrects delta's rounding with.
  template <Pass kPass>
  EMBRAG_HD void lane_gradients(LaneState<acc_t, kV>& st, int32_t i, int32_t lane, int32_t n_tile,
                                const PairState<acc_t, kV>& ps, const HeadScales& sc) const {
    using std::exp;
    const int32_t TS = tile_stride();
    for (int32_t kk = lane; kk < n_tile; kk += lanes_) {
      const acc_t prob = exp(score(kk, i, ps, sc) - ps.lse);
      if (prob == acc_t(0)) continue;  // no weight, no gradient (and no 0 * inf)
      const int t = s_.token[kk * p_.site_tile + i];
      add_at<kV>(st.weight, t, prob);
      if (kPass == Pass::kWeights) continue;
      const int32_t cell = kk * TS + i;
      const acc_t dscore = prob * (ps.gv[t] + ps.g_site - ps.delta);
      const acc_t cb = in_.copy_bias ? s_.copy_bias[cell] : acc_t(0);
      st.grad_beta += dscore * s_.dist[kk];
      st.grad_alpha += dscore * s_.agree[cell];
      st.grad_gamma += dscore * cb;
      st.dscore_sum += dscore;
      st.p_dist += prob * s_.dist[kk];
      st.p_agree += prob * s_.agree[cell];
      st.p_copy_bias += prob * cb;
      s_.grad_copy_bias[cell] += sc.gamma * dscore;
      s_.grad_dist[cell] += sc.beta * dscore;
    }
  }

  // After a full pass over K: per (site, head), the lanes' sums into the
  // pair's weights (forward: normalised, with lse; backward: delta or coef).
  template <Pass kPass>
  EMBRAG_HD void merge_lanes() {
    using std::exp;
    using std::log;
    const int32_t T = p_.site_tile, H = p_.n_heads;
    for (int32_t p = ctx_.thread(); p < T * H; p += ctx_.block_dim()) {
      const int32_t i = p % T, h = p / T;
      if (i >= n_sites_) continue;
      PairState<acc_t, kV>& ps = pair(i, h);
      acc_t weight[kV] = {}, max = -INFINITY, sum = 0;
      for (int32_t lane = 0; lane < lanes_; ++lane) {
        const LaneState<acc_t, kV>& st = lane_state(lane * T + i, h);
        acc_t r = 1;  // forward: from this lane's max to the common max
        if (kPass == Pass::kForward) {
          if (st.sum == acc_t(0)) continue;
          if (st.max > max) {
            const acc_t down = exp(max - st.max);
            sum *= down;
            for (int u = 0; u < kV; ++u) weight[u] *= down;
            max = st.max;
          }
          r = exp(st.max - max);
          sum += st.sum * r;
        }
        for (int u = 0; u < kV; ++u) weight[u] += st.weight[u] * r;
      }
      if (kPass == Pass::kForward) {
        ps.lse = sum > acc_t(0) ? max + log(sum) : acc_t(INFINITY);
        static_cast<acc_t*>(p_.lse)[row(i) * H + h] = ps.lse;
        for (int u = 0; u < kV; ++u) weight[u] = sum > acc_t(0) ? weight[u] / sum : acc_t(0);
      }
      ps.valid = ps.lse < acc_t(INFINITY) ? acc_t(1) : acc_t(0);
      for (int u = 0; u < kV; ++u) ps.weight[u] = weight[u];
      if (kPass == Pass::kWeights) {  // delta = sum_k p_k grad_out . value_k
        ps.delta = 0;
        for (int u = 0; u < kV; ++u) ps.delta += weight[u] * (ps.gv[u] + ps.g_site);
      }
      if (kPass == Pass::kGrads) correct_delta(i, h, ps, weight);
    }
  }

  // The backward's delta = sum_k p_k dp_k (dp_k = gv[t_k] + g_site) is exact
  // only up to its rounding (the saved output is rounded to its dtype), and
  // sum_k dscore_k = sum_k p_k (dp_k - delta) = (exact delta - delta) * sum_k p_k
  // measures the error. Corrected here: coef from the exact delta, and the
  // scale sums sum_k dscore_k x_k less the error times sum_k p_k x_k (into the
  // site's lane 0), so a large common offset in x (a copy bias of -1e4 on
  // every template) cannot amplify it. What remains is p_k times the error
  // in each per-neighbour cell: the rounding of the output, no more.
  EMBRAG_HD void correct_delta(int32_t i, int32_t h, PairState<acc_t, kV>& ps, const acc_t (&weight)[kV]) {
    acc_t p_sum = 0, dscore_sum = 0, p_dist = 0, p_agree = 0, p_copy_bias = 0;
    for (int u = 0; u < kV; ++u) p_sum += weight[u];
    for (int32_t lane = 0; lane < lanes_; ++lane) {
      const LaneState<acc_t, kV>& st = lane_state(lane * p_.site_tile + i, h);
      dscore_sum += st.dscore_sum, p_dist += st.p_dist, p_agree += st.p_agree, p_copy_bias += st.p_copy_bias;
    }
    const acc_t error = p_sum > acc_t(0) ? dscore_sum / p_sum : acc_t(0);  // exact delta - delta
    LaneState<acc_t, kV>& first = lane_state(i, h);
    first.grad_beta -= error * p_dist;
    first.grad_alpha -= error * p_agree;
    first.grad_gamma -= error * p_copy_bias;
    for (int u = 0; u < kV; ++u)
      ps.coef[u] = weight[u] * (ps.gv[u] + ps.g_site - ps.delta - error) * key_scale();
  }

  // out[b, l0 + i, head h] = valid site_v[l0 + i, h] + sum_t weight[t] tok_v[t, h].
  EMBRAG_HD void store_out() {
    for_each_head_slice([&](int32_t i, int32_t h, int32_t n0, int32_t n1) {
      const int32_t col = h * head_dim();
      const HeadMix values = head_mix(pair(i, h).weight, s_.tok_v, col);
      const acc_t valid = pair(i, h).valid;
      const scalar_t* site_v = in_.site_v + int64_t(l0_ + i) * p_.D + col;
      scalar_t* out = static_cast<scalar_t*>(p_.out) + row(i) * p_.D + col;
      for (int32_t n = n0; n < n1; ++n)
        out[n] = element_cast<scalar_t>(valid * element_cast<acc_t>(site_v[n]) + values(n));
    });
  }

  // After a tile of the gradient pass: grad_copy_bias of its neighbours, and
  // grad_dist summed over the tile's sites.
  EMBRAG_HD void store_neighbour_grads(const RagFusionGrads<scalar_t>& g, int32_t k0) {
    const int32_t K = p_.K, TS = tile_stride();
    if (g.grad_copy_bias)
      for (int32_t item = ctx_.thread(); item < n_sites_ * kNeighbourTile; item += ctx_.block_dim()) {
        const int32_t i = item / kNeighbourTile, kk = item % kNeighbourTile;
        if (k0 + kk < K)
          g.grad_copy_bias[row(i) * K + k0 + kk] = element_cast<scalar_t>(s_.grad_copy_bias[kk * TS + i]);
      }
    for (int32_t kk = ctx_.thread(); kk < kNeighbourTile; kk += ctx_.block_dim()) {
      acc_t sum = 0;
      for (int32_t i = 0; i < n_sites_; ++i) sum += s_.grad_dist[kk * TS + i];
      if (k0 + kk < K && sum != acc_t(0)) ctx_.atomic_add(g.grad_dist + int64_t(b_) * K + k0 + kk, sum);
    }
  }

  // grad_table[t, d] += sum_i pair(i, h(d)).*factor[t] * rows[i, d], t < V:
  // per (t, d) a sum over the sites and one atomic add (CUDA); serially, row
  // by row into the thread's own accumulator (the loop over n vectorises).
  EMBRAG_HD void add_table_grad(acc_t* grad_table, acc_t (PairState<acc_t, kV>::*factor)[kV],
                                const acc_t* rows) const {
    const int32_t D = p_.D, RS = row_stride(), dh = head_dim();
    if (ctx_.block_dim() == 1) {
      for (int32_t i = 0; i < n_sites_; ++i)
        for (int32_t h = 0; h < p_.n_heads; ++h)
          for (int t = 0; t < p_.V; ++t) {
            const acc_t f = (pair(i, h).*factor)[t];
            acc_t* out = grad_table + t * D + h * dh;
            const acc_t* row = rows + i * RS + h * dh;
            for (int32_t n = 0; n < dh; ++n) ctx_.atomic_add(out + n, f * row[n]);
          }
      return;
    }
    for (int32_t e = ctx_.thread(); e < p_.V * D; e += ctx_.block_dim()) {
      const int32_t t = e / D, d = e - t * D, h = d / dh;
      acc_t sum = 0;
      for (int32_t i = 0; i < n_sites_; ++i) sum += (pair(i, h).*factor)[t] * rows[i * RS + d];
      ctx_.atomic_add(grad_table + e, sum);
    }
  }

  // grad_q of the tile's rows; the block's share of the table and scale gradients.
  EMBRAG_HD void store_row_grads(const RagFusionGrads<scalar_t>& g) {
    const int32_t D = p_.D, H = p_.n_heads, RS = row_stride();
    for_each_head_slice([&](int32_t i, int32_t h, int32_t n0, int32_t n1) {
      const int32_t col = h * head_dim();
      const HeadMix keys = head_mix(pair(i, h).coef, s_.tok_k, col);
      const bool valid = pair(i, h).valid != acc_t(0);
      scalar_t* grad_q = g.grad_q + row(i) * D + col;
      acc_t* grad_site_v = g.grad_site_v + int64_t(l0_ + i) * D + col;
      const acc_t* g_row = s_.g_rows + i * RS + col;
      for (int32_t n = n0; n < n1; ++n) {
        grad_q[n] = element_cast<scalar_t>(keys(n));
        if (valid) ctx_.atomic_add(grad_site_v + n, g_row[n]);
      }
    });
    add_table_grad(g.grad_tok_k, &PairState<acc_t, kV>::coef, s_.q_rows);
    add_table_grad(g.grad_tok_v, &PairState<acc_t, kV>::weight, s_.g_rows);
    for (int32_t h = ctx_.thread(); h < H; h += ctx_.block_dim()) {
      acc_t beta = 0, alpha = 0, gamma = 0;
      for (int32_t unit = 0; unit < n_units(); ++unit) {
        if (unit % p_.site_tile >= n_sites_) continue;
        beta += lane_state(unit, h).grad_beta;
        alpha += lane_state(unit, h).grad_alpha;
        gamma += lane_state(unit, h).grad_gamma;
      }
      ctx_.atomic_add(g.grad_beta + h, beta);
      ctx_.atomic_add(g.grad_alpha + h, alpha);
      if (g.grad_gamma) ctx_.atomic_add(g.grad_gamma + h, gamma);
    }
  }

  const Ctx& ctx_;
  const RagFusionParams& p_;
  const RagFusionInputs<scalar_t> in_;
  const int32_t lanes_;
  const RagFusionSmem<acc_t, kV> s_;
  int32_t b_, l0_, n_sites_, halo_lo_, n_halo_;
};

// Shared-memory bytes of one block (lanes: block threads / site_tile, at least 1).
template <typename acc_t, int kV>
size_t rag_fusion_smem_bytes(const RagFusionParams& p, int32_t block_threads, bool backward) {
  const int32_t lanes = max32(1, block_threads / p.site_tile);
  return RagFusionSmem<acc_t, kV>::carve(p, lanes, backward, nullptr).bytes;
}

// Calls f(kV, kHeadDim) (std::integral_constant) with the compile-time sizes
// for V token rows and d_head: kV 3 or kMaxTokens; kHeadDim 16, 32 or 0 (any).
template <typename F>
void dispatch_rag_fusion_sizes(int32_t V, int32_t head_dim, const F& f) {
  const auto with_v = [&](auto v) {
    if (head_dim == 16)
      f(v, std::integral_constant<int, 16>{});
    else if (head_dim == 32)
      f(v, std::integral_constant<int, 32>{});
    else
      f(v, std::integral_constant<int, 0>{});
  };
  if (V <= 3)
    with_v(std::integral_constant<int, 3>{});
  else
    with_v(std::integral_constant<int, kMaxTokens>{});
}

// ---- The bandwidth model (csrc/kernels/device.h: Traffic) ------------------

struct RagFusionShape {
  int64_t B, L, K, D, V, n_heads, half_width, site_tile;
  int64_t elem_bytes, acc_bytes;  // of q's dtype; of the accumulation type
  bool copy_bias, copy_bias_grad;
};

inline RagFusionShape traffic_shape(const RagFusionParams& p, bool copy_bias_grad) {
  const int64_t elem = p.dtype == DType::kFloat64 ? 8 : p.dtype == DType::kBFloat16 ? 2 : 4;
  return {p.B, p.L, p.K, p.D, p.V, p.n_heads, p.half_width, p.site_tile,
          elem, p.dtype == DType::kFloat64 ? 8 : 4, p.copy_bias != nullptr, copy_bias_grad};
}

// Sites the blocks of one query read for the agreement windows: the halos of
// all its site tiles (neighbouring halos overlap).
inline double rag_fusion_halo_sites(const RagFusionShape& s) {
  double sites = 0;
  for (int64_t l0 = 0; l0 < s.L; l0 += s.site_tile) {
    const int64_t lo = l0 - s.half_width < 0 ? 0 : l0 - s.half_width;
    const int64_t end = l0 + s.site_tile + s.half_width;
    sites += double((end < s.L ? end : s.L) - lo);
  }
  return sites;
}

// One pass over the neighbours by all blocks: the neighbours' tokens over the
// halos, topk and dist (per block, shared), and the copy bias.
inline double rag_fusion_neighbour_pass_bytes(const RagFusionShape& s) {
  const double per_query = double(s.K) * double(8 + s.elem_bytes);
  const double tiles = double(ceil_div(s.L, s.site_tile));
  return shared_read_bytes(s.B * per_query, s.B * tiles * per_query) +
         double(s.B) * s.K * rag_fusion_halo_sites(s) +
         (s.copy_bias ? double(s.B) * s.L * s.K * s.elem_bytes : 0.0);
}

// Parts both passes share: a [B, L, D] array; the tables, site rows and
// scales; the query tokens and mask as needed (must) and as read (halos).
struct RagFusionCommonBytes {
  double rows, tables, query_must, query_moved, lse;
};
inline RagFusionCommonBytes rag_fusion_common_bytes(const RagFusionShape& s) {
  const double e = double(s.elem_bytes), BL = double(s.B) * s.L;
  return {BL * s.D * e, (2.0 * s.V * s.D + double(s.L) * s.D + 3.0 * s.n_heads) * e, BL * 9,
          double(s.B) * rag_fusion_halo_sites(s) * 9, BL * s.n_heads * s.acc_bytes};
}

// What must move for the neighbours: their tokens, topk, dist and the copy bias.
inline double rag_fusion_neighbour_must_bytes(const RagFusionShape& s) {
  return double(s.B) * s.K * (s.L + 8 + s.elem_bytes) +
         (s.copy_bias ? double(s.B) * s.L * s.K * s.elem_bytes : 0.0);
}

// Forward: reads q, writes out and lse.
inline Traffic rag_fusion_forward_traffic(const RagFusionShape& s) {
  const RagFusionCommonBytes c = rag_fusion_common_bytes(s);
  return {2 * c.rows + c.tables + c.query_must + rag_fusion_neighbour_must_bytes(s),
          2 * c.rows + c.tables + c.query_moved + rag_fusion_neighbour_pass_bytes(s) + c.lse};
}

// Whether the backward takes delta from the saved output ([B, L, D] read)
// rather than from a first pass over the neighbours: whichever moves less.
inline bool rag_fusion_delta_from_out(const RagFusionShape& s) {
  return rag_fusion_common_bytes(s).rows <= rag_fusion_neighbour_pass_bytes(s);
}

// Backward: reads grad_out, q (and out or a first neighbour pass) and lse;
// writes grad_q, grad_copy_bias and the gradients of the tables, distances and
// scales (accumulated, zeroed first, converted when q is not float32/float64).
inline Traffic rag_fusion_backward_traffic(const RagFusionShape& s) {
  const RagFusionCommonBytes c = rag_fusion_common_bytes(s);
  const bool from_out = rag_fusion_delta_from_out(s);
  const double grad_copy_bias = s.copy_bias_grad ? double(s.B) * s.L * s.K * s.elem_bytes : 0.0;
  const double small_grads = c.tables + double(s.B) * s.K * s.elem_bytes;  // same sizes as inputs
  const double accumulate = small_grads / s.elem_bytes *
                            (2.0 * s.acc_bytes + (s.elem_bytes != s.acc_bytes ? s.acc_bytes + s.elem_bytes : 0));
  const double must = 3 * c.rows + c.tables + c.query_must + rag_fusion_neighbour_must_bytes(s) +
                      grad_copy_bias + small_grads;
  const double moved = 3 * c.rows + (from_out ? c.rows : rag_fusion_neighbour_pass_bytes(s)) +
                       c.tables + c.query_moved + c.lse + rag_fusion_neighbour_pass_bytes(s) +
                       grad_copy_bias + accumulate;
  return {must, moved};
}

}  // namespace embrag
