// The window_embed CUDA block bodies, run on the CPU by the SIMT shim and
// compared with plain loops written here (independent of the kernel code).
// Exit 0 and "PASS" on success.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../../csrc/kernels/window_embed.h"
#include "simt_shim.h"

namespace {

struct Problem {
  int64_t B, L, D, F, V, P, T;
  int block;  // CUDA threads per block
};

int failures = 0;

void expect_close(const std::vector<float>& got, const std::vector<double>& want, const char* what,
                  const Problem& p) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
  const bool ok = worst <= 1e-4;
  std::printf("%-12s B=%lld L=%lld D=%lld block=%d max|err|=%.2e %s\n", what, (long long)p.B,
              (long long)p.L, (long long)p.D, p.block, worst, ok ? "ok" : "FAIL");
  failures += !ok;
}

void run(const Problem& p, std::mt19937& rng) {
  std::uniform_real_distribution<float> uni(-1.f, 1.f), unit(0.f, 1.f);
  auto randv = [&](int64_t n) { std::vector<float> v(n); for (auto& x : v) x = uni(rng); return v; };
  auto randi = [&](int64_t n, int64_t hi) {
    std::vector<int64_t> v(n);
    for (auto& x : v) x = std::uniform_int_distribution<int64_t>(0, hi - 1)(rng);
    return v;
  };
  const auto tokens = randi(p.B * p.L, p.V), pos_ids = randi(p.L, p.P), type_ids = randi(p.L, p.T);
  std::vector<float> af(p.L);
  for (auto& x : af) x = unit(rng);
  const auto tok = randv(p.V * p.D), pos = randv(p.P * p.D), proj = randv(p.F * p.D),
             type = randv(p.T * p.D), grad_out = randv(p.B * p.L * p.D);

  // Reference, in double, straight from the definition.
  std::vector<double> want(p.B * p.L * p.D), want_site(p.L * p.D, 0), want_tok(p.V * p.D, 0);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t l = 0; l < p.L; ++l)
      for (int64_t d = 0; d < p.D; ++d) {
        double v = tok[tokens[b * p.L + l] * p.D + d] + pos[pos_ids[l] * p.D + d] +
                   type[type_ids[l] * p.D + d];
        for (int64_t i = 0; i < p.F / 2; ++i) {
          const double angle = M_PI * std::pow(2.0, double(i)) * af[l];
          v += std::sin(angle) * proj[(2 * i) * p.D + d] + std::cos(angle) * proj[(2 * i + 1) * p.D + d];
        }
        want[(b * p.L + l) * p.D + d] = v;
        const double g = grad_out[(b * p.L + l) * p.D + d];
        want_site[l * p.D + d] += g;
        want_tok[tokens[b * p.L + l] * p.D + d] += g;
      }

  std::vector<float> out(p.B * p.L * p.D, NAN);
  const embrag::WindowEmbedArgs<float> fwd{tokens.data(), pos_ids.data(), af.data(),
                                           type_ids.data(), tok.data(), pos.data(), proj.data(),
                                           type.data(), out.data(), p.B, p.L, p.D, p.F,
                                           p.V, p.P, p.T};
  simt::launch<float>(int(p.L), int(embrag::ceil_div(p.B, embrag::kForwardBatchTile)), p.block,
                      p.F + p.D, [&](const simt::ShimCtx& ctx, float* smem) {
                        embrag::window_embed_forward_block(ctx, fwd, smem);
                      });
  expect_close(out, want, "forward", p);

  std::vector<float> grad_site(p.L * p.D, 0.f), grad_tok(p.V * p.D, 0.f);
  const embrag::WindowEmbedBackwardArgs<float> bwd{grad_out.data(), tokens.data(), grad_site.data(),
                                                   grad_tok.data(), p.B, p.L, p.D, p.V};
  simt::launch<float>(int(embrag::ceil_div(p.L, embrag::kBackwardSiteTile)),
                      int(embrag::ceil_div(p.B, embrag::kBackwardBatchTile)), p.block, p.V * p.D,
                      [&](const simt::ShimCtx& ctx, float* smem) {
                        embrag::window_embed_backward_block(ctx, bwd, smem);
                      });
  expect_close(grad_site, want_site, "grad_site", p);
  expect_close(grad_tok, want_tok, "grad_tok", p);
}

// Out-of-range tokens, pos_ids and type_ids are reported (CudaCtx records
// them for its device-side assert) and read as row 0, not out of bounds.
void bad_ids_are_reported() {
  const int64_t B = 2, L = 3, D = 4, F = 2, V = 3;
  std::vector<int64_t> tokens = {0, 1, 2, 1, 7, 0}, pos_ids = {0, 1, 2}, type_ids = {0, 9, 1};
  std::vector<float> af(L, 0.5f), tables(4 * D, 1.f), out(B * L * D), grad_site(L * D, 0.f),
      grad_tok(V * D, 0.f), grad_out(B * L * D, 1.f);
  const embrag::WindowEmbedArgs<float> fwd{tokens.data(), pos_ids.data(), af.data(), type_ids.data(),
                                           tables.data(), tables.data(), tables.data(), tables.data(),
                                           out.data(), B, L, D, F, V, /*P=*/3, /*T=*/2};
  simt::bad_inputs = 0;
  simt::launch<float>(int(L), 1, 32, F + D, [&](const simt::ShimCtx& ctx, float* smem) {
    embrag::window_embed_forward_block(ctx, fwd, smem);
  });
  const int forward_reports = simt::bad_inputs;
  const embrag::WindowEmbedBackwardArgs<float> bwd{grad_out.data(), tokens.data(), grad_site.data(),
                                                   grad_tok.data(), B, L, D, V};
  simt::bad_inputs = 0;
  simt::launch<float>(1, 1, 32, V * D, [&](const simt::ShimCtx& ctx, float* smem) {
    embrag::window_embed_backward_block(ctx, bwd, smem);
  });
  const bool ok = forward_reports > 0 && simt::bad_inputs > 0;
  std::printf("bad ids reported: %s\n", ok ? "ok" : "FAIL");
  failures += !ok;
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  // Odd sizes, a single row / site, D not a multiple of the block, D > block,
  // several batch tiles, the production block of 128 threads.
  const Problem problems[] = {
      {1, 1, 5, 2, 3, 4, 2, 32},
      {3, 17, 37, 8, 3, 40, 4, 32},
      {18, 9, 70, 4, 4, 9, 3, 64},
      {2, 3, 130, 6, 3, 5, 2, 128},
      {40, 20, 64, 8, 3, 20, 4, 128},
  };
  for (const auto& p : problems) run(p, rng);
  bad_ids_are_reported();
  std::printf(failures ? "FAIL (%d)\n" : "PASS\n", failures);
  return failures ? 1 : 0;
}
