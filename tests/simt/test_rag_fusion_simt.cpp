// The rag_fusion block bodies (csrc/kernels/rag_fusion.h), run on the CPU by
// the SIMT shim and compared with plain loops written here straight from the
// op's definition (scores per neighbour, softmax, keys and values per
// neighbour), in double. float32 and a software bfloat16; the production
// geometry (128 threads, 32-site tiles, K of several neighbour tiles) and
// odd ones. Exit 0 and "PASS" on success.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../../csrc/kernels/rag_fusion.h"
#include "simt_shim.h"

namespace {

// bfloat16 in software (round to nearest even), enough for the kernel's loads and stores.
struct Bf16 {
  uint16_t bits;
  Bf16() = default;
  explicit Bf16(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    bits = uint16_t((u + 0x7fff + ((u >> 16) & 1)) >> 16);
  }
  operator float() const {
    const uint32_t u = uint32_t(bits) << 16;
    float x;
    std::memcpy(&x, &u, 4);
    return x;
  }
};

struct Problem {
  int B, K, L, D, nh, V, H, w;  // H: rows of the reference panel
  int site_tile, block;         // geometry
  bool copy_bias;
};

int failures = 0;

// max |got - want| / (1 + scale) <= tol; scale: |want|, or the given magnitude
// of the terms summed into want (where they cancel).
void expect_close(const std::vector<double>& got, const std::vector<double>& want, double tol,
                  const char* what, const Problem& p, const std::vector<double>* scale = nullptr) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double size = 1 + (scale ? (*scale)[i] : std::isinf(want[i]) ? 0 : std::abs(want[i]));
    const double err = std::isinf(want[i]) && got[i] == want[i] ? 0 : std::abs(got[i] - want[i]) / size;
    worst = std::max(worst, std::isnan(err) ? INFINITY : err);
  }
  const bool ok = worst <= tol;
  std::printf("%-15s B=%d K=%d L=%d D=%d nh=%d V=%d w=%d tile=%d block=%d cb=%d max|err|=%.2e %s\n",
              what, p.B, p.K, p.L, p.D, p.nh, p.V, p.w, p.site_tile, p.block, int(p.copy_bias), worst,
              ok ? "ok" : "FAIL");
  failures += !ok;
}

template <typename T>
std::vector<double> as_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// Inputs (rounded through scalar_t so both sides see the same values).
template <typename scalar_t>
struct Inputs {
  std::vector<int64_t> topk, q_tokens;
  std::vector<uint8_t> ref;  // [H, ref_stride]; the window is columns [3, 3 + L)
  std::vector<char> observed;
  std::vector<scalar_t> q, tok_k, tok_v, site_v, dist, beta, alpha, copy_bias, gamma, grad_out;
  int64_t ref_stride;
};

template <typename scalar_t>
Inputs<scalar_t> make_inputs(const Problem& p, std::mt19937& rng) {
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  auto randv = [&](int64_t n, float scale = 1.f) {
    std::vector<scalar_t> v(n);
    for (auto& x : v) x = scalar_t(scale * uni(rng));
    return v;
  };
  auto randi = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  Inputs<scalar_t> in;
  in.ref_stride = p.L + 7;
  for (int64_t i = 0; i < int64_t(p.B) * p.K; ++i) in.topk.push_back(randi(-1, p.H - 1));
  for (int k = 0; k < p.K; ++k) in.topk[k] = -1;  // query 0: no neighbour at all
  for (int64_t i = 0; i < p.H * in.ref_stride; ++i) in.ref.push_back(uint8_t(randi(0, p.V - 1)));
  for (int64_t i = 0; i < int64_t(p.B) * p.L; ++i) {
    in.q_tokens.push_back(randi(0, p.V));  // V never matches
    in.observed.push_back(char(randi(0, 2) > 0));
  }
  in.q = randv(int64_t(p.B) * p.L * p.D, 2.f), in.grad_out = randv(int64_t(p.B) * p.L * p.D);
  in.tok_k = randv(p.V * p.D), in.tok_v = randv(p.V * p.D), in.site_v = randv(p.L * p.D);
  in.dist = randv(p.B * p.K), in.beta = randv(p.nh), in.alpha = randv(p.nh, 3.f);
  if (p.copy_bias) {
    // Log-posterior-like: gamma > 0, and every 7th template with ~0 posterior.
    in.copy_bias = randv(int64_t(p.B) * p.L * p.K, 4.f), in.gamma = randv(p.nh);
    for (auto& g : in.gamma) g = scalar_t(0.1f + std::abs(float(g)));
    for (size_t i = 0; i < in.copy_bias.size(); i += 7) in.copy_bias[i] = scalar_t(-1e4f);
  }
  return in;
}

struct Expected {
  std::vector<double> out, lse, grad_q, grad_copy_bias, grad_tok_k, grad_tok_v, grad_site_v,
      grad_dist, grad_beta, grad_alpha, grad_gamma;
  std::vector<double> grad_gamma_terms;  // sum of p_k (|dp_k| + |delta|) |copy_bias|: they cancel
};

// The op from its definition, per (b, l, h), in double.
template <typename scalar_t>
Expected expected(const Problem& p, const Inputs<scalar_t>& in) {
  const int dh = p.D / p.nh;
  const int64_t BL = int64_t(p.B) * p.L;
  auto d = [](scalar_t x) { return double(x); };
  Expected e;
  e.out.assign(BL * p.D, 0), e.lse.assign(BL * p.nh, INFINITY), e.grad_q.assign(BL * p.D, 0);
  e.grad_copy_bias.assign(p.copy_bias ? BL * p.K : 0, 0);
  e.grad_tok_k.assign(p.V * p.D, 0), e.grad_tok_v.assign(p.V * p.D, 0), e.grad_site_v.assign(p.L * p.D, 0);
  e.grad_dist.assign(p.B * p.K, 0), e.grad_beta.assign(p.nh, 0), e.grad_alpha.assign(p.nh, 0);
  e.grad_gamma.assign(p.copy_bias ? p.nh : 0, 0), e.grad_gamma_terms = e.grad_gamma;
  auto ref_token = [&](int b, int k, int l) {
    return int(in.ref[in.topk[b * p.K + k] * in.ref_stride + 3 + l]);
  };
  for (int b = 0; b < p.B; ++b)
    for (int l = 0; l < p.L; ++l) {
      const int64_t r = int64_t(b) * p.L + l;
      std::vector<double> agree(p.K, 0);
      double n_obs = 0;
      for (int j = std::max(0, l - p.w); j <= std::min(p.L - 1, l + p.w); ++j) {
        if (!in.observed[b * p.L + j]) continue;
        n_obs += 1;
        for (int k = 0; k < p.K; ++k)
          if (in.topk[b * p.K + k] >= 0 && ref_token(b, k, j) == in.q_tokens[b * p.L + j]) agree[k] += 1;
      }
      for (int k = 0; k < p.K; ++k) agree[k] /= std::max(1.0, n_obs);
      for (int h = 0; h < p.nh; ++h) {
        std::vector<double> score(p.K, -INFINITY), dp(p.K, 0), prob(p.K, 0);
        double max = -INFINITY;
        for (int k = 0; k < p.K; ++k) {
          if (in.topk[b * p.K + k] < 0) continue;
          const int t = ref_token(b, k, l);
          double s = 0;
          for (int c = h * dh; c < (h + 1) * dh; ++c) {
            s += d(in.q[r * p.D + c]) * d(in.tok_k[t * p.D + c]);
            dp[k] += d(in.grad_out[r * p.D + c]) * (d(in.tok_v[t * p.D + c]) + d(in.site_v[l * p.D + c]));
          }
          score[k] = s / std::sqrt(double(dh)) + d(in.beta[h]) * d(in.dist[b * p.K + k]) +
                     d(in.alpha[h]) * agree[k] +
                     (p.copy_bias ? d(in.gamma[h]) * d(in.copy_bias[r * p.K + k]) : 0.0);
          max = std::max(max, score[k]);
        }
        if (max == -INFINITY) continue;
        double sum = 0, delta = 0;
        for (int k = 0; k < p.K; ++k) sum += in.topk[b * p.K + k] >= 0 ? std::exp(score[k] - max) : 0;
        e.lse[r * p.nh + h] = max + std::log(sum);
        for (int k = 0; k < p.K; ++k)
          if (in.topk[b * p.K + k] >= 0) prob[k] = std::exp(score[k] - max) / sum, delta += prob[k] * dp[k];
        for (int k = 0; k < p.K; ++k) {
          if (in.topk[b * p.K + k] < 0) continue;
          const int t = ref_token(b, k, l);
          const double ds = prob[k] * (dp[k] - delta);
          for (int c = h * dh; c < (h + 1) * dh; ++c) {
            const double g = d(in.grad_out[r * p.D + c]);
            e.out[r * p.D + c] += prob[k] * (d(in.tok_v[t * p.D + c]) + d(in.site_v[l * p.D + c]));
            e.grad_q[r * p.D + c] += ds / std::sqrt(double(dh)) * d(in.tok_k[t * p.D + c]);
            e.grad_tok_k[t * p.D + c] += ds / std::sqrt(double(dh)) * d(in.q[r * p.D + c]);
            e.grad_tok_v[t * p.D + c] += prob[k] * g;
            e.grad_site_v[l * p.D + c] += prob[k] * g;
          }
          e.grad_dist[b * p.K + k] += d(in.beta[h]) * ds;
          e.grad_beta[h] += ds * d(in.dist[b * p.K + k]);
          e.grad_alpha[h] += ds * agree[k];
          if (p.copy_bias) {
            e.grad_gamma[h] += ds * d(in.copy_bias[r * p.K + k]);
            e.grad_gamma_terms[h] += prob[k] * (std::abs(dp[k]) + std::abs(delta)) *
                                     std::abs(d(in.copy_bias[r * p.K + k]));
            e.grad_copy_bias[r * p.K + k] += d(in.gamma[h]) * ds;
          }
        }
      }
    }
  return e;
}

template <typename scalar_t>
embrag::RagFusionParams params(const Problem& p, const Inputs<scalar_t>& in, void* out, float* lse) {
  embrag::RagFusionParams a{};
  a.dtype = embrag::DType::kFloat32;  // not read by the block bodies
  a.q = in.q.data(), a.tok_k = in.tok_k.data(), a.tok_v = in.tok_v.data(), a.site_v = in.site_v.data();
  a.dist = in.dist.data(), a.beta = in.beta.data(), a.alpha = in.alpha.data();
  a.copy_bias = p.copy_bias ? in.copy_bias.data() : nullptr;
  a.gamma = p.copy_bias ? in.gamma.data() : nullptr;
  a.topk = in.topk.data(), a.ref_tokens = in.ref.data() + 3, a.ref_stride = in.ref_stride;
  a.n_ref_rows = p.H, a.q_tokens = in.q_tokens.data();
  a.observed = reinterpret_cast<const bool*>(in.observed.data());
  a.out = out, a.lse = lse;
  a.B = p.B, a.L = p.L, a.K = p.K, a.D = p.D, a.V = p.V, a.n_heads = p.nh;
  a.half_width = std::min(p.w, p.L), a.site_tile = p.site_tile;
  return a;
}

// Runs body(ctx, smem) for every block of the op's grid under the shim.
template <typename Body>
void launch_blocks(const Problem& p, const embrag::RagFusionParams& a, size_t smem_bytes, const Body& body) {
  simt::launch<double>(a.site_tiles(), p.B, p.block, (smem_bytes + 7) / 8,
                       [&](const simt::ShimCtx& ctx, double* smem) {
                         body(ctx, reinterpret_cast<unsigned char*>(smem));
                       });
}

template <typename scalar_t>
void run(const Problem& p, std::mt19937& rng, double tol) {
  const auto in = make_inputs<scalar_t>(p, rng);
  const Expected want = expected(p, in);
  const int64_t BL = int64_t(p.B) * p.L;
  std::vector<scalar_t> out(BL * p.D, scalar_t(NAN));
  std::vector<float> lse(BL * p.nh, NAN);
  const embrag::RagFusionParams a = params(p, in, out.data(), lse.data());
  embrag::dispatch_rag_fusion_sizes(p.V, a.head_dim(), [&](auto v, auto head_dim) {
    using Block = embrag::RagFusionBlock<scalar_t, v(), head_dim(), simt::ShimCtx>;
    launch_blocks(p, a, embrag::rag_fusion_smem_bytes<float, v()>(a, p.block, false),
                  [&](const simt::ShimCtx& ctx, unsigned char* smem) { Block(ctx, a, false, smem).forward(); });
    expect_close(as_double(out), want.out, tol, "forward", p);
    expect_close(as_double(lse), want.lse, tol, "lse", p);
    for (bool delta_from_out : {true, false}) {
      std::vector<scalar_t> grad_q(BL * p.D, scalar_t(NAN)), grad_cb(p.copy_bias ? BL * p.K : 0, scalar_t(NAN));
      std::vector<float> grad_tok_k(p.V * p.D, 0), grad_tok_v(p.V * p.D, 0), grad_site_v(p.L * p.D, 0),
          grad_dist(p.B * p.K, 0), grad_beta(p.nh, 0), grad_alpha(p.nh, 0), grad_gamma(p.nh, 0);
      const embrag::RagFusionGradParams g{in.grad_out.data(), grad_q.data(),
                                          p.copy_bias ? grad_cb.data() : nullptr, grad_tok_k.data(),
                                          grad_tok_v.data(), grad_site_v.data(), grad_dist.data(),
                                          grad_beta.data(), grad_alpha.data(),
                                          p.copy_bias ? grad_gamma.data() : nullptr, delta_from_out};
      launch_blocks(p, a, embrag::rag_fusion_smem_bytes<float, v()>(a, p.block, true),
                    [&](const simt::ShimCtx& ctx, unsigned char* smem) { Block(ctx, a, true, smem).backward(g); });
      std::printf(delta_from_out ? "  (delta from out)\n" : "  (delta from a first pass)\n");
      expect_close(as_double(grad_q), want.grad_q, tol, "grad_q", p);
      expect_close(as_double(grad_tok_k), want.grad_tok_k, tol * 4, "grad_tok_k", p);
      expect_close(as_double(grad_tok_v), want.grad_tok_v, tol * 4, "grad_tok_v", p);
      expect_close(as_double(grad_site_v), want.grad_site_v, tol * 4, "grad_site_v", p);
      expect_close(as_double(grad_dist), want.grad_dist, tol * 4, "grad_dist", p);
      expect_close(as_double(grad_beta), want.grad_beta, tol * 16, "grad_beta", p);
      expect_close(as_double(grad_alpha), want.grad_alpha, tol * 16, "grad_alpha", p);
      if (p.copy_bias) {
        expect_close(as_double(grad_cb), want.grad_copy_bias, tol, "grad_copy_bias", p);
        expect_close(as_double(grad_gamma), want.grad_gamma, tol * 16, "grad_gamma", p,
                     &want.grad_gamma_terms);
      }
    }
  });
}

// A topk row out of range and a reference token >= V are reported (CudaCtx traps there).
void bad_indices_are_reported(std::mt19937& rng) {
  const Problem p{2, 3, 9, 4, 1, 3, 5, 2, 32, 32, false};
  for (int which = 0; which < 2; ++which) {
    auto in = make_inputs<float>(p, rng);
    if (which == 0) in.topk[p.K + 1] = p.H;
    if (which == 1) in.ref[in.topk[p.K] * in.ref_stride + 3 + 4] = uint8_t(p.V);
    if (in.topk[p.K] < 0 && which == 1) in.topk[p.K] = 0, in.ref[3 + 4] = uint8_t(p.V);
    std::vector<float> out(p.B * p.L * p.D), lse(p.B * p.L);
    const embrag::RagFusionParams a = params(p, in, out.data(), lse.data());
    simt::bad_inputs = 0;
    using Block = embrag::RagFusionBlock<float, 3, 0, simt::ShimCtx>;
    launch_blocks(p, a, embrag::rag_fusion_smem_bytes<float, 3>(a, p.block, false),
                  [&](const simt::ShimCtx& ctx, unsigned char* smem) { Block(ctx, a, false, smem).forward(); });
    const bool ok = simt::bad_inputs > 0;
    std::printf("bad %s reported: %s\n", which == 0 ? "topk" : "ref token", ok ? "ok" : "FAIL");
    failures += !ok;
  }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  // {B, K, L, D, nh, V, H, w, site_tile, block, copy_bias}
  const Problem problems[] = {
      // The production geometry: 128 threads, 32-site tiles (a partial last
      // one), K over several neighbour tiles (a partial last one), d_head 16.
      {2, 75, 70, 64, 4, 3, 40, 16, 32, 128, true},
      // d_head 32, no copy bias, one neighbour tile.
      {2, 20, 33, 64, 2, 3, 25, 5, 32, 128, false},
      // Odd sizes: d_head 4 (run-time), w = 0, a 16-row token table (V = 5), K = 1.
      {3, 1, 13, 12, 3, 5, 7, 0, 32, 64, true},
      // Small tiles with many lanes, w > L, one head of width 5.
      {2, 40, 11, 5, 1, 3, 9, 50, 4, 32, true},
      // A block of fewer threads than sites (each thread several sites).
      {2, 34, 21, 8, 2, 3, 12, 3, 8, 3, false},
  };
  for (const auto& p : problems) run<float>(p, rng, 2e-5);
  std::printf("bfloat16:\n");
  run<Bf16>({2, 37, 40, 32, 2, 3, 11, 4, 32, 128, true}, rng, 4e-2);
  bad_indices_are_reported(rng);
  std::printf(failures ? "FAIL (%d)\n" : "PASS\n", failures);
  return failures ? 1 : 0;
}
