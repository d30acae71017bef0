// The rag_fusion CUDA block bodies, run on the CPU by the SIMT shim and
// compared with plain loops written here straight from the op's definition
// (site_k included, keys and values materialised per neighbour), in double.
// float32 and a software bfloat16. Exit 0 and "PASS" on success.
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
  int64_t B, K, L, D, nh, V, H, w, tile;
  int block;
};

int failures = 0;

template <typename T>
void expect_close(const std::vector<T>& got, const std::vector<double>& want, double tol,
                  const char* what, const Problem& p) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(double(got[i]) - want[i]));
  const bool ok = worst <= tol;
  std::printf("%-16s B=%lld K=%lld L=%lld D=%lld nh=%lld w=%lld tile=%lld max|err|=%.2e %s\n",
              what, (long long)p.B, (long long)p.K, (long long)p.L, (long long)p.D,
              (long long)p.nh, (long long)p.w, (long long)p.tile, worst, ok ? "ok" : "FAIL");
  failures += !ok;
}

// Inputs, as doubles (rounded through scalar_t so both sides see the same values).
template <typename scalar_t>
struct Inputs {
  std::vector<int64_t> topk, q_tokens;
  std::vector<uint8_t> ref;  // [H, ref_stride], the window is columns [3, 3 + L)
  std::vector<char> observed;
  std::vector<scalar_t> q, tok_k, tok_v, site_k, site_v, dist, beta, alpha, grad_out;
  int64_t ref_stride;
};

template <typename scalar_t>
Inputs<scalar_t> make_inputs(const Problem& p, std::mt19937& rng) {
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  auto randv = [&](int64_t n) {
    std::vector<scalar_t> v(n);
    for (auto& x : v) x = scalar_t(uni(rng));
    return v;
  };
  auto randi = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  Inputs<scalar_t> in;
  in.ref_stride = p.L + 7;
  for (int64_t i = 0; i < p.B * p.K; ++i) in.topk.push_back(randi(-1, p.H - 1));
  for (int64_t k = 0; k < p.K; ++k) in.topk[k] = -1;  // query 0: no neighbour at all
  for (int64_t i = 0; i < p.H * in.ref_stride; ++i) in.ref.push_back(uint8_t(randi(0, p.V - 1)));
  for (int64_t i = 0; i < p.B * p.L; ++i) {
    in.q_tokens.push_back(randi(0, p.V - 1));
    in.observed.push_back(char(randi(0, 2) > 0));
  }
  in.q = randv(p.B * p.L * p.D), in.grad_out = randv(p.B * p.L * p.D);
  in.tok_k = randv(p.V * p.D), in.tok_v = randv(p.V * p.D);
  in.site_k = randv(p.L * p.D), in.site_v = randv(p.L * p.D);
  in.dist = randv(p.B * p.K), in.beta = randv(p.nh), in.alpha = randv(p.nh);
  return in;
}

// The op from its definition, per (b, l, h): p_k, the output, grad_q and
// grad_score (= dL/dscore_k).
template <typename scalar_t>
struct Expected {
  std::vector<double> matches, n_observed, out, grad_q, grad_score, weight;
};

template <typename scalar_t>
Expected<scalar_t> expected(const Problem& p, const Inputs<scalar_t>& in) {
  const int64_t dh = p.D / p.nh;
  Expected<scalar_t> e;
  e.matches.assign(p.B * p.L * p.K, 0), e.n_observed.assign(p.B * p.L, 0);
  e.out.assign(p.B * p.L * p.D, 0), e.grad_q.assign(p.B * p.L * p.D, 0);
  e.grad_score.assign(p.B * p.L * p.nh * p.K, 0), e.weight.assign(p.B * p.L * p.nh * (p.V + 1), 0);
  auto ref_token = [&](int64_t b, int64_t k, int64_t l) {
    return int64_t(in.ref[in.topk[b * p.K + k] * in.ref_stride + 3 + l]);
  };
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t l = 0; l < p.L; ++l) {
      for (int64_t j = std::max<int64_t>(0, l - p.w); j <= std::min(p.L - 1, l + p.w); ++j) {
        if (!in.observed[b * p.L + j]) continue;
        e.n_observed[b * p.L + l] += 1;
        for (int64_t k = 0; k < p.K; ++k)
          if (in.topk[b * p.K + k] >= 0 && ref_token(b, k, j) == in.q_tokens[b * p.L + j])
            e.matches[(b * p.L + l) * p.K + k] += 1;
      }
      for (int64_t h = 0; h < p.nh; ++h) {
        std::vector<double> score(p.K), dp(p.K);
        double max = -INFINITY;
        for (int64_t k = 0; k < p.K; ++k) {
          if (in.topk[b * p.K + k] < 0) continue;
          const int64_t t = ref_token(b, k, l);
          double s = 0, d = 0;
          for (int64_t c = h * dh; c < (h + 1) * dh; ++c) {
            s += double(in.q[(b * p.L + l) * p.D + c]) *
                 (double(in.tok_k[t * p.D + c]) + double(in.site_k[l * p.D + c]));
            d += double(in.grad_out[(b * p.L + l) * p.D + c]) *
                 (double(in.tok_v[t * p.D + c]) + double(in.site_v[l * p.D + c]));
          }
          const double agree = e.matches[(b * p.L + l) * p.K + k] /
                               std::max(1.0, e.n_observed[b * p.L + l]);
          score[k] = s / std::sqrt(double(dh)) + double(in.beta[h]) * double(in.dist[b * p.K + k]) +
                     double(in.alpha[h]) * agree;
          dp[k] = d;
          max = std::max(max, score[k]);
        }
        double sum = 0;
        for (int64_t k = 0; k < p.K; ++k)
          if (in.topk[b * p.K + k] >= 0) sum += std::exp(score[k] - max);
        double p_dp = 0;
        std::vector<double> prob(p.K, 0);
        for (int64_t k = 0; k < p.K; ++k)
          if (in.topk[b * p.K + k] >= 0) prob[k] = std::exp(score[k] - max) / sum, p_dp += prob[k] * dp[k];
        const int64_t head = (b * p.L + l) * p.nh + h;
        for (int64_t k = 0; k < p.K; ++k) {
          if (in.topk[b * p.K + k] < 0) continue;
          const int64_t t = ref_token(b, k, l);
          const double ds = prob[k] * (dp[k] - p_dp);
          e.grad_score[head * p.K + k] = ds;
          e.weight[head * (p.V + 1) + t] += prob[k];
          e.weight[head * (p.V + 1) + p.V] += prob[k];
          for (int64_t c = h * dh; c < (h + 1) * dh; ++c) {
            e.out[(b * p.L + l) * p.D + c] +=
                prob[k] * (double(in.tok_v[t * p.D + c]) + double(in.site_v[l * p.D + c]));
            e.grad_q[(b * p.L + l) * p.D + c] += ds / std::sqrt(double(dh)) *
                (double(in.tok_k[t * p.D + c]) + double(in.site_k[l * p.D + c]));
          }
        }
      }
    }
  return e;
}

template <typename scalar_t>
void run(const Problem& p, std::mt19937& rng, double tol) {
  const auto in = make_inputs<scalar_t>(p, rng);
  const auto want = expected(p, in);

  // Stage 1.
  std::vector<uint8_t> tokens(p.B * p.L * p.K);
  std::vector<int32_t> matches(p.B * p.L * p.K, -1), n_observed(p.B * p.L, -1);
  const embrag::NeighbourSitesArgs sites{
      in.topk.data(), in.ref.data() + 3, in.q_tokens.data(),
      reinterpret_cast<const bool*>(in.observed.data()), tokens.data(), matches.data(),
      n_observed.data(), p.B, p.K, p.L, in.ref_stride, p.w};
  simt::launch<int32_t>(int(p.K), int(p.B), p.block, embrag::neighbour_sites_smem_ints(p.L, p.block),
                        [&](const simt::ShimCtx& ctx, int32_t* smem) {
                          embrag::neighbour_sites_block(ctx, sites, smem);
                        });
  expect_close(matches, want.matches, 0, "matches", p);
  expect_close(n_observed, want.n_observed, 0, "n_observed", p);

  // Stage 2, forward.
  const embrag::RagFusionArgs<scalar_t> args{
      in.q.data(), in.tok_k.data(), in.tok_v.data(), in.site_v.data(), in.dist.data(),
      in.beta.data(), in.alpha.data(), tokens.data(), matches.data(), n_observed.data(),
      p.B, p.L, p.K, p.D, p.V, p.nh};
  const int grid_x = int(embrag::ceil_div(p.L, p.tile));
  std::vector<scalar_t> out(p.B * p.L * p.D, scalar_t(NAN));
  simt::launch<float>(grid_x, int(p.B), p.block,
                      embrag::rag_fusion_forward_smem_floats(p.tile, p.V, p.D, p.nh),
                      [&](const simt::ShimCtx& ctx, float* smem) {
                        embrag::rag_fusion_forward_block(ctx, args, out.data(), p.tile, smem);
                      });
  expect_close(out, want.out, tol, "forward", p);

  // Stage 2, backward.
  std::vector<scalar_t> grad_q(p.B * p.L * p.D, scalar_t(NAN));
  std::vector<float> weight(p.B * p.L * p.nh * (p.V + 1), NAN), grad_tok_score(p.B * p.L * p.nh * p.V, NAN),
      grad_score(p.B * p.L * p.nh * p.K, NAN);
  const embrag::RagFusionGrads<scalar_t> grads{in.grad_out.data(), grad_q.data(), weight.data(),
                                               grad_tok_score.data(), grad_score.data()};
  simt::launch<float>(grid_x, int(p.B), p.block,
                      embrag::rag_fusion_backward_smem_floats(p.tile, p.V, p.D, p.nh),
                      [&](const simt::ShimCtx& ctx, float* smem) {
                        embrag::rag_fusion_backward_block(ctx, args, grads, p.tile, smem);
                      });
  expect_close(weight, want.weight, tol, "softmax weight", p);
  expect_close(grad_score, want.grad_score, tol, "grad_score", p);
  expect_close(grad_q, want.grad_q, tol, "grad_q", p);
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  // Odd sizes, a partial last tile, w = 0 and w > L, one and several heads,
  // D both a multiple of the 16-byte vector and not, L longer than the block.
  const Problem problems[] = {
      {3, 5, 13, 12, 3, 3, 7, 2, 4, 32},
      {2, 1, 9, 5, 1, 3, 4, 0, 2, 32},
      {2, 16, 40, 8, 2, 3, 20, 50, 8, 32},
  };
  for (const auto& p : problems) run<float>(p, rng, 1e-5);
  std::printf("bfloat16:\n");
  run<Bf16>({2, 6, 11, 16, 2, 3, 9, 3, 4, 32}, rng, 3e-2);
  std::printf(failures ? "FAIL (%d)\n" : "PASS\n", failures);
  return failures ? 1 : 0;
}
