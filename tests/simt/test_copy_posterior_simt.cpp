// The copy_posterior CUDA block bodies, run on the CPU by the SIMT shim and compared
// with a plain forward-backward written here from the model's definition (explicit
// K x K transition matrix, unscaled, double) and with central finite differences of
// sum(grad_post * post) for the two gradients. float and double accumulation, the
// production block of 128 threads (with K above and below it) and odd small blocks;
// then the report of bad inputs.
// Exit 0 and "PASS" on success.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../../csrc/kernels/copy_posterior.h"
#include "simt_shim.h"

namespace {

struct Problem {
  int64_t N, M, K, H;
  int block;
};

struct Inputs {
  std::vector<uint8_t> query, ref;  // ref: [M, ref_stride], the used columns start at 5
  std::vector<int64_t> templates;
  std::vector<double> switch_cm, grad_post;
  double log_rho, logit_theta;
  int64_t ref_stride;
};

Inputs make_inputs(const Problem& p, std::mt19937& rng) {
  auto randi = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  Inputs in;
  in.ref_stride = p.H + 9;
  for (int64_t i = 0; i < p.M * in.ref_stride; ++i) in.ref.push_back(uint8_t(randi(0, 1)));
  for (int64_t i = 0; i < p.N * p.M; ++i) {
    const int64_t r = randi(0, 9);
    in.query.push_back(uint8_t(r < 2 ? 2 : r % 2));  // 20% MASK
  }
  for (int64_t i = 0; i < p.N * p.K; ++i) in.templates.push_back(randi(0, 4) == 0 ? -1 : randi(0, p.H - 1));
  if (p.N > 1)
    for (int64_t k = 0; k < p.K; ++k) in.templates[k] = -1;  // query 0: no template at all
  for (int64_t i = 0; i < p.M; ++i) in.switch_cm.push_back(i == p.M / 2 ? 0.0 : 0.5 * uni(rng));
  for (int64_t i = 0; i < p.N * p.M * p.K; ++i) in.grad_post.push_back(2 * uni(rng) - 1);
  in.log_rho = std::log(1.7);
  in.logit_theta = std::log(0.08 / 0.92);
  return in;
}

// post[n, m, k] from the definition, O(M K^2), unscaled, in double.
std::vector<double> reference_posterior(const Problem& p, const Inputs& in, double log_rho,
                                        double logit_theta) {
  const double rho = std::exp(log_rho), theta = 1 / (1 + std::exp(-logit_theta));
  std::vector<double> post(p.N * p.M * p.K, 0.0);
  for (int64_t n = 0; n < p.N; ++n) {
    std::vector<int64_t> valid;
    for (int64_t k = 0; k < p.K; ++k)
      if (in.templates[n * p.K + k] >= 0) valid.push_back(k);
    const int64_t V = int64_t(valid.size());
    if (V == 0) continue;
    auto emit = [&](int64_t m, int64_t k) {
      const uint8_t q = in.query[n * p.M + m];
      if (q == 2) return 1.0;
      const uint8_t allele = in.ref[m * in.ref_stride + 5 + in.templates[n * p.K + k]];
      return allele == q ? 1 - theta : theta;
    };
    auto trans = [&](int64_t m, int64_t j, int64_t k) {
      const double r = 1 - std::exp(-rho * in.switch_cm[m]);
      return (j == k ? 1 - r : 0.0) + r / double(V);
    };
    std::vector<double> fwd(p.M * V), bwd(p.M * V, 1.0);
    for (int64_t i = 0; i < V; ++i) fwd[i] = emit(0, valid[i]) / double(V);
    for (int64_t m = 1; m < p.M; ++m)
      for (int64_t i = 0; i < V; ++i) {
        double s = 0;
        for (int64_t j = 0; j < V; ++j) s += fwd[(m - 1) * V + j] * trans(m, valid[j], valid[i]);
        fwd[m * V + i] = s * emit(m, valid[i]);
      }
    for (int64_t m = p.M - 2; m >= 0; --m)
      for (int64_t j = 0; j < V; ++j) {
        double s = 0;
        for (int64_t i = 0; i < V; ++i)
          s += trans(m + 1, valid[j], valid[i]) * emit(m + 1, valid[i]) * bwd[(m + 1) * V + i];
        bwd[m * V + j] = s;
      }
    for (int64_t m = 0; m < p.M; ++m) {
      double z = 0;
      for (int64_t i = 0; i < V; ++i) z += fwd[m * V + i] * bwd[m * V + i];
      for (int64_t i = 0; i < V; ++i)
        post[(n * p.M + m) * p.K + valid[i]] = fwd[m * V + i] * bwd[m * V + i] / z;
    }
  }
  return post;
}

// Per query d/dlog_rho and d/dlogit_theta of sum(grad_post * post), central differences.
std::vector<double> reference_grads(const Problem& p, const Inputs& in) {
  const double h = 1e-5;
  auto loss = [&](double lr, double lt) {
    const auto post = reference_posterior(p, in, lr, lt);
    std::vector<double> per_query(p.N, 0.0);
    for (int64_t i = 0; i < int64_t(post.size()); ++i) per_query[i / (p.M * p.K)] += in.grad_post[i] * post[i];
    return per_query;
  };
  const auto rp = loss(in.log_rho + h, in.logit_theta), rm = loss(in.log_rho - h, in.logit_theta);
  const auto tp = loss(in.log_rho, in.logit_theta + h), tm = loss(in.log_rho, in.logit_theta - h);
  std::vector<double> grads(2 * p.N);
  for (int64_t n = 0; n < p.N; ++n) {
    grads[2 * n] = (rp[n] - rm[n]) / (2 * h);
    grads[2 * n + 1] = (tp[n] - tm[n]) / (2 * h);
  }
  return grads;
}

int failures = 0;

template <typename T>
void expect_close(const std::vector<T>& got, const std::vector<double>& want, double tol,
                  const char* what, const Problem& p, const char* type) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(double(got[i]) - want[i]) / (1 + std::abs(want[i]));
    worst = std::isnan(err) ? INFINITY : std::max(worst, err);
  }
  const bool ok = worst <= tol;
  std::printf("%-9s %-6s N=%lld M=%lld K=%lld H=%lld block=%d max rel err=%.2e %s\n", what, type,
              (long long)p.N, (long long)p.M, (long long)p.K, (long long)p.H, p.block, worst,
              ok ? "ok" : "FAIL");
  failures += !ok;
}

template <typename T>
void run(const Problem& p, const Inputs& in, const std::vector<double>& want_post,
         const std::vector<double>& want_grads, double tol_post, double tol_grad, const char* type) {
  std::vector<T> switch_cm(in.switch_cm.begin(), in.switch_cm.end()),
      grad_post(in.grad_post.begin(), in.grad_post.end());
  const T log_rho = T(in.log_rho), logit_theta = T(in.logit_theta);
  const embrag::CopyPosteriorArgs<T> args{in.query.data(), in.templates.data(), in.ref.data() + 5,
                                          switch_cm.data(), &log_rho, &logit_theta,
                                          p.N, p.M, p.K, p.H, in.ref_stride};
  const size_t smem = size_t(embrag::copy_posterior_smem_elems(p.block));

  std::vector<T> post(p.N * p.M * p.K, T(NAN)), carry(p.N * p.K, T(NAN));
  simt::launch<T>(int(p.N), 1, p.block, smem, [&](const simt::ShimCtx& ctx, T* shared) {
    embrag::copy_posterior_forward_block(ctx, args, post.data(), carry.data(), shared);
  });
  expect_close(post, want_post, tol_post, "posterior", p, type);

  std::vector<T> alpha(p.N * p.M * p.K, T(NAN)), alpha_g(alpha), u(carry), v(carry),
      grads(2 * p.N, T(NAN));
  const embrag::CopyPosteriorGrad<T, T> g{grad_post.data(), alpha.data(), alpha_g.data(),
                                          u.data(), v.data(), grads.data()};
  simt::launch<T>(int(p.N), 1, p.block, smem, [&](const simt::ShimCtx& ctx, T* shared) {
    embrag::copy_posterior_backward_block(ctx, args, g, shared);
  });
  expect_close(grads, want_grads, tol_grad, "gradients", p, type);
}

// A template id out of [-1, H), a query value > 2, a ref_sites value > 1 (at a column a
// template selects) and a negative or NaN switch_cm are each reported by both block bodies
// (CudaCtx records them for its device-side assert), which go on with a safe value.
void bad_inputs_are_reported(std::mt19937& rng) {
  const Problem p{2, 5, 6, 8, 33};
  const char* kinds[] = {"template id H", "template id -2", "query value 3", "ref_sites value 7",
                         "switch_cm -0.5", "switch_cm NaN"};
  for (int which = 0; which < 6; ++which) {
    Inputs in = make_inputs(p, rng);
    const int64_t n = 1, k = 2, t = 3;  // query 1 (query 0 has no template)
    if (in.templates[n * p.K + k] < 0) in.templates[n * p.K + k] = 0;
    if (which == 0) in.templates[n * p.K + k] = p.H;
    if (which == 1) in.templates[n * p.K + k] = -2;
    if (which == 2) in.query[n * p.M + t] = 3;
    if (which == 3) in.ref[t * in.ref_stride + 5 + in.templates[n * p.K + k]] = 7;
    if (which == 4) in.switch_cm[t] = -0.5;
    if (which == 5) in.switch_cm[t] = NAN;
    const std::vector<float> switch_cm(in.switch_cm.begin(), in.switch_cm.end()),
        grad_post(in.grad_post.begin(), in.grad_post.end());
    const float log_rho = float(in.log_rho), logit_theta = float(in.logit_theta);
    const embrag::CopyPosteriorArgs<float> args{in.query.data(), in.templates.data(),
                                                in.ref.data() + 5, switch_cm.data(), &log_rho,
                                                &logit_theta, p.N, p.M, p.K, p.H, in.ref_stride};
    const size_t smem = size_t(embrag::copy_posterior_smem_elems(p.block));
    std::vector<float> post(p.N * p.M * p.K), carry(p.N * p.K), alpha(post), alpha_g(post),
        u(carry), v(carry), grads(2 * p.N);
    simt::bad_inputs = 0;
    simt::launch<float>(int(p.N), 1, p.block, smem, [&](const simt::ShimCtx& ctx, float* shared) {
      embrag::copy_posterior_forward_block(ctx, args, post.data(), carry.data(), shared);
    });
    const int forward_reports = simt::bad_inputs;
    const embrag::CopyPosteriorGrad<float, float> g{grad_post.data(), alpha.data(), alpha_g.data(),
                                                    u.data(), v.data(), grads.data()};
    simt::bad_inputs = 0;
    simt::launch<float>(int(p.N), 1, p.block, smem, [&](const simt::ShimCtx& ctx, float* shared) {
      embrag::copy_posterior_backward_block(ctx, args, g, shared);
    });
    const bool ok = forward_reports > 0 && simt::bad_inputs > 0;
    std::printf("bad %s reported: %s\n", kinds[which], ok ? "ok" : "FAIL");
    failures += !ok;
  }
}

}  // namespace

int main() {
  std::mt19937 rng(2024);
  // The production block (128) with K above it (several templates per thread) and below
  // it (idle threads); odd blocks (7, 1, 33); M = 1, 2 and odd M; query 0 with no template.
  const Problem problems[] = {
      {3, 13, 300, 40, 128}, {2, 9, 37, 50, 128}, {3, 11, 20, 12, 7},
      {2, 1, 5, 6, 7},       {2, 2, 6, 9, 33},    {2, 6, 3, 4, 1},
  };
  for (const auto& p : problems) {
    const Inputs in = make_inputs(p, rng);
    const auto post = reference_posterior(p, in, in.log_rho, in.logit_theta);
    const auto grads = reference_grads(p, in);
    run<double>(p, in, post, grads, 1e-12, 1e-7, "double");
    run<float>(p, in, post, grads, 2e-5, 2e-3, "float");
  }
  bad_inputs_are_reported(rng);
  std::printf(failures ? "FAIL (%d)\n" : "PASS\n", failures);
  return failures ? 1 : 0;
}
