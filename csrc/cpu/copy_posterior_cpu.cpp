// copy_posterior on the CPU: at::parallel_for over queries, one query per thread at
// a time with thread-private scratch; per site, the template alleles of the site's
// row are gathered once, then every pass over K is a plain loop with 8 partial sums
// per reduction (so the compiler vectorises it). The recursions are those of
// csrc/kernels/copy_posterior.h (the same rate, switch and emission helpers); values
// are checked inline as they are read, so nothing syncs and a bad value raises one
// clear error.
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../launch.h"

namespace embrag {
namespace {

constexpr int kLanes = 8;

// sums[i] = sum over k in [0, K) of what f(k, lanes, j) adds to lanes[i][j], with
// kLanes partial sums per value (j = k % kLanes in the main loop, 0 in the tail): the
// loop over j vectorises, and the order is fixed (the result does not depend on threads).
template <int kVals, typename T, typename F>
inline void lane_sums(int64_t K, T* sums, const F& f) {
  T lanes[kVals][kLanes] = {};
  int64_t k0 = 0;
  for (; k0 + kLanes <= K; k0 += kLanes)
    for (int j = 0; j < kLanes; ++j) f(k0 + j, lanes, j);
  for (int64_t k = k0; k < K; ++k) f(k, lanes, 0);
  for (int i = 0; i < kVals; ++i) {
    T s = 0;
    for (int j = 0; j < kLanes; ++j) s += lanes[i][j];
    sums[i] = s;
  }
}

// One query's templates, and per site their emissions: thread-private scratch. The
// forward sweep gathers each site's alleles from ref_sites once and keeps them
// ([M, K] bytes), so the backward sweep reads them in order.
template <typename scalar_t>
struct QueryTemplates {
  QueryTemplates(int64_t M, int64_t K)
      : col(K), keep(K), alleles(M * K), valid(K), e(K), score(K) {}

  std::vector<int64_t> col;      // ref_sites column, 0 where there is no template
  std::vector<uint8_t> keep;     // 0xff / 0: valid template
  std::vector<uint8_t> alleles;  // [M, K] template alleles, 0 where there is no template
  std::vector<scalar_t> valid;   // 1 / 0
  std::vector<scalar_t> e;       // emission at the current site, 0 for no template
  std::vector<scalar_t> score;   // d log e / d logit_theta at the current site

  // Loads query n's templates and checks them and its alleles; returns K_n.
  int64_t load(const CopyPosteriorArgs<scalar_t>& a, int64_t n) {
    int64_t n_valid = 0;
    for (int64_t k = 0; k < a.K; ++k) {
      const int64_t c = a.templates[n * a.K + k];
      TORCH_CHECK(c >= -1 && c < a.H, "templates values must lie in [-1, ", a.H,
                  ") (-1 = none, else a column of ref_sites), found ", c, " at [", n, ", ", k, "]");
      col[k] = c < 0 ? 0 : c;
      keep[k] = c < 0 ? 0 : 0xff;
      valid[k] = c < 0 ? scalar_t(0) : scalar_t(1);
      n_valid += c >= 0;
    }
    for (int64_t m = 0; m < a.M; ++m)
      TORCH_CHECK(a.query[n * a.M + m] <= kQueryMask,
                  "query values must be 0 (REF), 1 (ALT) or 2 (MASK), found ",
                  int(a.query[n * a.M + m]), " at [", n, ", ", m, "]");
    return n_valid;
  }

  // Gathers the templates' alleles at site t from ref_sites (and checks them).
  void gather(const CopyPosteriorArgs<scalar_t>& a, int64_t t) {
    const uint8_t* __restrict row = a.ref_sites + t * a.ref_stride;
    const int64_t* __restrict cols = col.data();
    const uint8_t* __restrict keeps = keep.data();
    uint8_t* __restrict out = alleles.data() + t * a.K;
    uint8_t bad = 0;
    for (int64_t k = 0; k < a.K; ++k) {
      const uint8_t x = row[cols[k]] & keeps[k];
      out[k] = x;
      bad |= x;
    }
    if (bad > 1)
      for (int64_t k = 0; k < a.K; ++k)
        TORCH_CHECK(out[k] <= 1, "ref_sites values must be 0 or 1 (at the columns templates "
                    "select), found ", int(out[k]), " at [", t, ", ", cols[k], "]");
  }

  // e (and score) of every template at site t, from the gathered alleles.
  void emissions(const Emission<scalar_t>& em, int64_t t, bool with_score) {
    const int64_t K = int64_t(e.size());
    const uint8_t* __restrict x = alleles.data() + t * K;
    const scalar_t* __restrict v = valid.data();
    scalar_t* __restrict ep = e.data();
    for (int64_t k = 0; k < K; ++k) ep[k] = v[k] * (x[k] ? em.e1 : em.e0);
    if (with_score) {
      scalar_t* __restrict sp = score.data();
      for (int64_t k = 0; k < K; ++k) sp[k] = v[k] * (x[k] ? em.s1 : em.s0);
    }
  }
};

// The query-independent part of each site's transition (switch_cm checked as read).
template <typename scalar_t>
std::vector<SiteRates<scalar_t>> site_rates_of(const CopyPosteriorArgs<scalar_t>& a,
                                               const CopyRates<scalar_t>& p) {
  std::vector<SiteRates<scalar_t>> rates(a.M);
  for (int64_t m = 1; m < a.M; ++m) {  // entry 0 is not used
    TORCH_CHECK(a.switch_cm[m] >= scalar_t(0), "switch_cm values must be >= 0 (cM from the "
                "previous typed site), found ", a.switch_cm[m], " at [", m, "]");
    rates[m] = site_rates(p.rho, a.switch_cm[m]);
  }
  return rates;
}

// Forward-backward of query n into out [M, K]; u: [K] scratch.
template <typename scalar_t>
void posterior_of_query(const CopyPosteriorArgs<scalar_t>& a, const CopyRates<scalar_t>& p,
                        const SiteRates<scalar_t>* rates, int64_t n, QueryTemplates<scalar_t>& q,
                        scalar_t* u, scalar_t* out) {
  const int64_t M = a.M, K = a.K, n_valid = q.load(a, n);
  if (n_valid == 0) {
    std::fill(out, out + M * K, scalar_t(0));
    return;
  }
  const scalar_t inv_k = scalar_t(1) / scalar_t(n_valid);
  const scalar_t* e = q.e.data();
  const scalar_t* valid = q.valid.data();

  // Forward sweep: unnormalised alpha_t into out[t].
  scalar_t inv_c = 0;
  for (int64_t t = 0; t < M; ++t) {
    q.gather(a, t);
    q.emissions(emission_at(a.query[n * M + t], p), t, false);
    scalar_t* cur = out + t * K;
    scalar_t sum;
    if (t == 0) {
      lane_sums<1>(K, &sum, [&](int64_t k, auto& acc, int j) { acc[0][j] += cur[k] = e[k] * inv_k; });
    } else {
      const auto sw = switch_step(rates[t], inv_k);
      const scalar_t stay = sw.stay * inv_c, jump = sw.jump;
      const scalar_t* prev = cur - K;
      lane_sums<1>(K, &sum, [&](int64_t k, auto& acc, int j) {
        acc[0][j] += cur[k] = e[k] * (stay * prev[k] + jump);
      });
    }
    inv_c = scalar_t(1) / sum;
  }

  // Backward sweep: beta_t = stay u / sum u + jump from the carry u = e_{t+1} beta_{t+1}.
  std::fill(u, u + K, scalar_t(0));
  scalar_t stay = 0, jump = 1;  // t = M - 1: beta = 1
  for (int64_t t = M - 1; t >= 0; --t) {
    q.emissions(emission_at(a.query[n * M + t], p), t, false);
    scalar_t* cur = out + t * K;
    scalar_t sums[2];
    lane_sums<2>(K, sums, [&](int64_t k, auto& acc, int j) {
      const scalar_t beta = valid[k] * (stay * u[k] + jump);
      acc[0][j] += cur[k] = cur[k] * beta;
      acc[1][j] += u[k] = e[k] * beta;
    });
    const scalar_t inv_z = sums[0] > 0 ? scalar_t(1) / sums[0] : scalar_t(0);
    for (int64_t k = 0; k < K; ++k) cur[k] *= inv_z;
    if (t > 0) {
      const auto sw = switch_step(rates[t], inv_k);
      stay = sw.stay / sums[1];
      jump = sw.jump;
    }
  }
}

// Per query scratch of the backward: alpha and alpha * A for every site, and the carries.
template <typename scalar_t>
struct BackwardScratch {
  BackwardScratch(int64_t M, int64_t K) : alpha(M * K), alpha_g(M * K), u(K), v(K), g(K) {}
  std::vector<scalar_t> alpha, alpha_g, u, v, g;
};

// dL/dlog_rho and dL/dlogit_theta of query n (see csrc/kernels/copy_posterior.h).
template <typename scalar_t>
std::pair<scalar_t, scalar_t> grads_of_query(const CopyPosteriorArgs<scalar_t>& a,
                                             const CopyRates<scalar_t>& p,
                                             const SiteRates<scalar_t>* rates, int64_t n,
                                             const scalar_t* grad_post, QueryTemplates<scalar_t>& q,
                                             BackwardScratch<scalar_t>& w) {
  const int64_t M = a.M, K = a.K, n_valid = q.load(a, n);
  if (n_valid == 0) return {0, 0};
  const scalar_t inv_k = scalar_t(1) / scalar_t(n_valid);
  const scalar_t* e = q.e.data();
  const scalar_t* score = q.score.data();
  const scalar_t* valid = q.valid.data();
  scalar_t* g = w.g.data();
  scalar_t* u = w.u.data();
  scalar_t* v = w.v.data();
  auto load_grad = [&](int64_t t) {  // grad_post[n, t], 0 for no template (any value there)
    const scalar_t* src = grad_post + (n * M + t) * K;
    for (int64_t k = 0; k < K; ++k) g[k] = q.keep[k] ? src[k] : scalar_t(0);
  };

  // Forward sweep: normalised alpha_t and Ag_t = alpha_t A_t.
  scalar_t sum_ag = 0;
  for (int64_t t = 0; t < M; ++t) {
    q.gather(a, t);
    q.emissions(emission_at(a.query[n * M + t], p), t, false);
    load_grad(t);
    scalar_t* al = w.alpha.data() + t * K;
    scalar_t* ag = w.alpha_g.data() + t * K;
    scalar_t sums[2];
    if (t == 0) {
      lane_sums<2>(K, sums, [&](int64_t k, auto& acc, int j) {
        acc[0][j] += al[k] = e[k] * inv_k;
        acc[1][j] += ag[k] = al[k] * g[k];
      });
    } else {
      const auto sw = switch_step(rates[t], inv_k);
      const scalar_t stay = sw.stay, jump = sw.jump, jump_g = sw.jump * sum_ag;
      const scalar_t* pa = al - K;
      const scalar_t* pg = ag - K;
      lane_sums<2>(K, sums, [&](int64_t k, auto& acc, int j) {
        acc[0][j] += al[k] = e[k] * (stay * pa[k] + jump);
        acc[1][j] += ag[k] = al[k] * g[k] + e[k] * (stay * pg[k] + jump_g);
      });
    }
    const scalar_t inv_c = scalar_t(1) / sums[0];
    sum_ag = sums[1] * inv_c;
    for (int64_t k = 0; k < K; ++k) {
      al[k] *= inv_c;
      ag[k] *= inv_c;
    }
  }
  const scalar_t expected_g = sum_ag;

  // Backward sweep (the same sums as copy_posterior_backward_block).
  scalar_t grad_rho = 0, grad_theta = 0;
  std::fill(u, u + K, scalar_t(0));
  std::fill(v, v + K, scalar_t(0));
  scalar_t stay = 0, jump = 1, jump_v = 0;  // t = M - 1: beta = 1, B = g
  for (int64_t t = M - 1; t >= 0; --t) {
    q.emissions(emission_at(a.query[n * M + t], p), t, true);
    load_grad(t);
    const scalar_t* al = w.alpha.data() + t * K;
    const scalar_t* ag = w.alpha_g.data() + t * K;
    scalar_t s[kBackwardSums] = {};
    // The sums of copy_posterior_backward_block, kHasPrev: t > 0 (the log_rho term's).
    auto step = [&](auto has_prev) {
      constexpr bool kHasPrev = decltype(has_prev)::value;
      const scalar_t* pa = kHasPrev ? al - K : al;
      const scalar_t* pg = kHasPrev ? ag - K : ag;
      lane_sums<kHasPrev ? kBackwardSums : 5>(K, s, [&](int64_t k, auto& acc, int j) {
        const scalar_t beta = valid[k] * (stay * u[k] + jump);
        const scalar_t beta_g = beta * g[k] + valid[k] * (stay * v[k] + jump_v);
        const scalar_t ab = al[k] * beta, uk = e[k] * beta, vk = e[k] * beta_g;
        acc[0][j] += ab;
        acc[1][j] += score[k] * (ag[k] * beta + al[k] * beta_g - ab * g[k]);
        acc[2][j] += score[k] * ab;
        acc[3][j] += uk;
        acc[4][j] += vk;
        if constexpr (kHasPrev) {
          acc[5][j] += pa[k] * uk;
          acc[6][j] += pg[k] * uk + pa[k] * vk;
          acc[7][j] += pg[k];
          acc[8][j] += pa[k];
        }
        u[k] = uk;
        v[k] = vk;
      });
    };
    if (t > 0)
      step(std::true_type{});
    else
      step(std::false_type{});
    if (s[0] > 0) grad_theta += (s[1] - expected_g * s[2]) / s[0];
    if (t > 0) {
      const auto sw = switch_step(rates[t], inv_k);
      const scalar_t z = sw.stay * s[5] + sw.jump * s[8] * s[3];
      const scalar_t off = s[7] * s[3] + s[8] * s[4] - expected_g * s[8] * s[3] -
                           (s[6] - expected_g * s[5]);
      if (z > 0) grad_rho += sw.grad_coef * off / z;
      stay = sw.stay / s[3];
      jump = sw.jump;
      jump_v = sw.jump * s[4] / s[3];
    }
  }
  return {grad_rho, grad_theta};
}

}  // namespace

void launch_copy_posterior_forward_cpu(const CopyPosteriorTensors& t, at::Tensor& post) {
  AT_DISPATCH_FLOATING_TYPES(post.scalar_type(), "copy_posterior_cpu", [&] {
    const auto a = t.args<scalar_t>();
    const auto p = copy_rates<scalar_t>(a.log_rho, a.logit_theta);
    const auto rates = site_rates_of(a, p);
    scalar_t* out = post.data_ptr<scalar_t>();
    at::parallel_for(0, t.N, 1, [&](int64_t n0, int64_t n1) {
      QueryTemplates<scalar_t> q(t.M, t.K);
      std::vector<scalar_t> u(t.K);
      for (int64_t n = n0; n < n1; ++n)
        posterior_of_query(a, p, rates.data(), n, q, u.data(), out + n * t.M * t.K);
    });
  });
}

void launch_copy_posterior_backward_cpu(const CopyPosteriorTensors& t, const at::Tensor& grad_post,
                                        at::Tensor& grad_log_rho, at::Tensor& grad_logit_theta) {
  AT_DISPATCH_FLOATING_TYPES(grad_post.scalar_type(), "copy_posterior_backward_cpu", [&] {
    const auto a = t.args<scalar_t>();
    const auto p = copy_rates<scalar_t>(a.log_rho, a.logit_theta);
    const auto rates = site_rates_of(a, p);
    const scalar_t* g = grad_post.data_ptr<scalar_t>();
    std::vector<scalar_t> per_query(2 * t.N);
    at::parallel_for(0, t.N, 1, [&](int64_t n0, int64_t n1) {
      QueryTemplates<scalar_t> q(t.M, t.K);
      BackwardScratch<scalar_t> w(t.M, t.K);
      for (int64_t n = n0; n < n1; ++n)
        std::tie(per_query[2 * n], per_query[2 * n + 1]) = grads_of_query(a, p, rates.data(), n, g, q, w);
    });
    // Per-query partials summed in a fixed order: the same result for any thread count.
    scalar_t rho = 0, theta = 0;
    for (int64_t n = 0; n < t.N; ++n) rho += per_query[2 * n], theta += per_query[2 * n + 1];
    grad_log_rho.fill_(rho);
    grad_logit_theta.fill_(theta);
  });
}

}  // namespace embrag
