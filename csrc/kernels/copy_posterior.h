// copy_posterior: the torch-free math of the Li-Stephens copying posterior.
//
// Query haplotype n copies one of its valid templates (templates[n, k] >= 0,
// K_n of them) at each of the M typed sites; z_m is the template copied at m.
//   initial      P(z_0 = k) = 1 / K_n
//   transition   T_m(j, k) = stay_m [j == k] + jump_m,   stay_m = 1 - r_m,
//                jump_m = r_m / K_n,   r_m = 1 - exp(-rho * switch_cm[m]),  rho = exp(log_rho)
//   emission     e_m(k) = 1 - theta if ref_sites[m, templates[n, k]] == query[n, m],
//                theta if they differ, 1 if query[n, m] == 2 (MASK); theta = sigmoid(logit_theta)
//   output       post[n, m, k] = P(z_m = k | the query's alleles), 0 for invalid k.
//
// Forward (per query, O(M K) time, no memory beyond the output and a [K] carry):
//   alpha_0(k) = e_0(k) / K_n,  alpha_m(k) = e_m(k) (stay_m alpha_{m-1}(k) / c_{m-1} + jump_m),
//   c_m = sum_k alpha_m(k), written into `post`; the transition is a rank-one update of
//   the identity, so each step is O(K). Then, from m = M - 1 down, with the scaled
//   backward variable beta_{M-1} = 1,
//   beta_{m-1}(j) = stay_m u_m(j) / sum u_m + jump_m,   u_m(k) = e_m(k) beta_m(k),
//   post[m] = alpha_m beta_m / sum_k alpha_m beta_m, overwriting alpha_m in place.
//   Each step is one pass over K and one sum over K (a block reduction on CUDA).
//
// Gradient (exact, O(M K) time). The posterior's derivative with respect to a
// parameter lambda is a posterior covariance, d post_m(k) / d lambda =
// Cov(1[z_m = k], S | x) with S = d log p(x, z) / d lambda = sum_t s_t(z_{t-1}, z_t), so for
// L = sum_{m,k} grad_post[m, k] post[m, k] = E[G | x] with G = sum_m grad_post[m, z_m]:
//   dL/dlambda = Cov(G, S | x) = sum_t sum_{j,k} xi_t(j, k) s_t(j, k) (A_{t-1}(j) + B_t(k) - EG)
// with xi_t the pairwise posterior, EG = E[G | x], A_t(k) = E[sum_{m <= t} g_m | z_t = k, x_{<=t}]
// and B_t(k) = E[sum_{m >= t} g_m | z_t = k, x_{>=t}] (g_m = grad_post[m, z_m]). A and B have
// forward / backward recursions of the same rank-one shape as alpha and beta; the kernels
// carry Ag = alpha A and Bg = beta B (no division by alpha or beta). Per parameter:
//  * logit_theta: s_t = d log e_t(z_t) / d logit_theta = -theta (match), 1 - theta
//    (mismatch), 0 (MASK), so its term is sum_k s_t(k) post_t(k) (A_t + B_t - g_t - EG)(k).
//  * log_rho: s_t(j, k) = d log T_t(j, k) / d log_rho takes one value on the diagonal and
//    one off it; since sum_{j,k} xi_t (A + B - EG) = 0, the term is
//    (s_off - s_diag) jump_t / Z_t * sum_{j != k} alpha_{t-1}(j) u_t(k) (A_{t-1}(j) + B_t(k) - EG),
//    and that sum factorises into sums over K (all pairs minus the diagonal).
// The backward kernel runs the forward sweep again, storing alpha and Ag ([M, K] per
// query: thread-private on the CPU, [N, M, K] scratch on CUDA), then the backward sweep
// carrying beta and Bg in a [K] carry and adding each site's two terms. No gradient for
// the integer inputs nor for switch_cm (data).
//
// The CPU kernel (csrc/cpu) writes these recursions as loops over K; the CUDA block
// bodies below (one block per query, threads over K, one block reduction per step) run
// on CUDA (csrc/cuda) and under the SIMT shim (tests/simt).
//
// Values are checked where they are read, so that nothing syncs with the host: the
// CPU kernel raises the op's one-line error; the block bodies report a template id out
// of range, a query value > 2, a ref_sites value > 1 and a negative or NaN switch_cm
// through their Ctx (csrc/kernels/device.h: on CUDA, the report kernel after the
// launch) and go on with a safe value. The helpers in between (site_rates,
// emission_at) take values already checked.
#pragma once

#include <cmath>
#include <cstdint>

#include "device.h"

namespace embrag {

constexpr uint8_t kQueryMask = 2;  // query allele: missing (emission 1 for every template)

template <typename scalar_t>
struct CopyPosteriorArgs {
  const uint8_t* query;          // [N, M] 0 REF, 1 ALT, 2 MASK
  const int64_t* templates;      // [N, K] columns of ref_sites, -1 = no template
  const uint8_t* ref_sites;      // [M, H] alleles 0/1, row stride ref_stride, unit column stride
  const scalar_t* switch_cm;     // [M] cM from typed site m - 1 to m (entry 0 unused)
  const scalar_t* log_rho;       // [] switch rate per cM, log
  const scalar_t* logit_theta;   // [] mismatch probability, logit
  int64_t N, M, K, H, ref_stride;
};

// The backward's inputs and scratch (acc_t: float on CUDA).
template <typename scalar_t, typename acc_t>
struct CopyPosteriorGrad {
  const scalar_t* grad_post;  // [N, M, K]
  acc_t* alpha;               // [N, M, K] scratch: normalised forward variable
  acc_t* alpha_g;             // [N, M, K] scratch: alpha * A
  acc_t* u;                   // [N, K] carry: e_{t+1} beta_{t+1}
  acc_t* v;                   // [N, K] carry: e_{t+1} beta_{t+1} B_{t+1}
  acc_t* grads;               // [N, 2] out: per query dL/dlog_rho, dL/dlogit_theta
};

// rho, theta and 1 - theta (each computed directly, no cancellation).
template <typename acc_t>
struct CopyRates {
  acc_t rho, theta, one_minus_theta;
};

template <typename acc_t, typename scalar_t>
EMBRAG_HD CopyRates<acc_t> copy_rates(const scalar_t* log_rho, const scalar_t* logit_theta) {
  using std::exp;
  const acc_t x = element_cast<acc_t>(*logit_theta);
  return {exp(element_cast<acc_t>(*log_rho)), acc_t(1) / (acc_t(1) + exp(-x)),
          acc_t(1) / (acc_t(1) + exp(x))};
}

// The transition into a site at `cm` cM from the previous one: T(j, k) = stay [j == k] + jump,
// and grad_coef = (s_off - s_diag) * jump, the log_rho term's factor (see the top), written
// without dividing by r so that cm = 0 gives 0:
//   s_off = r'/r, s_diag = -r' (1 - 1/K) / (stay + jump), r' = dr/dlog_rho = x exp(-x).
// SiteRates is the part that does not depend on the query (the CPU computes it once per site).
template <typename acc_t>
struct SiteRates {
  acc_t stay, r, dr;  // exp(-x), 1 - exp(-x), x exp(-x); x = rho * cm
};

template <typename acc_t>
EMBRAG_HD SiteRates<acc_t> site_rates(acc_t rho, acc_t cm) {
  using std::exp;
  using std::expm1;
  const acc_t x = rho * cm, stay = exp(-x);
  return {stay, -expm1(-x), x * stay};
}

template <typename acc_t>
struct SwitchStep {
  acc_t stay, jump, grad_coef;
};

template <typename acc_t>
EMBRAG_HD SwitchStep<acc_t> switch_step(const SiteRates<acc_t>& s, acc_t inv_k) {
  const acc_t jump = s.r * inv_k;
  return {s.stay, jump, s.dr * inv_k + s.dr * (acc_t(1) - inv_k) * jump / (s.stay + jump)};
}

template <typename acc_t>
EMBRAG_HD SwitchStep<acc_t> switch_step(acc_t rho, acc_t cm, acc_t inv_k) {
  return switch_step(site_rates(rho, cm), inv_k);
}

// Emission and score s = d log e / d logit_theta of a template carrying allele 0 / 1,
// given the query's allele at the site (0, 1 or kQueryMask).
template <typename acc_t>
struct Emission {
  acc_t e0, e1, s0, s1;
};

template <typename acc_t>
EMBRAG_HD Emission<acc_t> emission_at(uint8_t q, const CopyRates<acc_t>& p) {
  if (q == kQueryMask) return {acc_t(1), acc_t(1), acc_t(0), acc_t(0)};
  if (q == 0) return {p.one_minus_theta, p.theta, -p.theta, p.one_minus_theta};
  return {p.theta, p.one_minus_theta, p.one_minus_theta, -p.theta};
}

// ---- CUDA block bodies (run by csrc/cuda and by the SIMT shim) --------------
// One block per query n = block_x. Thread t owns the templates k = t, t + block_dim, ...:
// it alone reads and writes their entries of post and of the scratch, so the only
// shared state is the reduction buffer, and the only barriers are the reductions'.

// Template id checked against [-1, H): a bad one is reported (Ctx) and read as -1 (none).
template <typename scalar_t, typename Ctx>
EMBRAG_HD int64_t template_column(const Ctx& ctx, const CopyPosteriorArgs<scalar_t>& a, int64_t id) {
  if (id >= -1 && id < a.H) return id;
  ctx.bad_index("templates", id, -1, a.H);
  return -1;
}

// Allele of template `col` (>= 0) at site t, checked: a bad one is reported and read as ALT.
template <typename scalar_t, typename Ctx>
EMBRAG_HD uint8_t template_allele(const Ctx& ctx, const CopyPosteriorArgs<scalar_t>& a,
                                  int64_t col, int64_t t) {
  const uint8_t x = a.ref_sites[t * a.ref_stride + col];
  if (x <= 1) return x;
  ctx.bad_index("ref_sites", x, 0, 2);
  return 1;
}

// The query's allele at site t, checked: a bad one is reported and read as MASK.
template <typename Ctx>
EMBRAG_HD uint8_t query_allele(const Ctx& ctx, const uint8_t* query, int64_t t) {
  if (query[t] <= kQueryMask) return query[t];
  ctx.bad_index("query", query[t], 0, kQueryMask + 1);
  return kQueryMask;
}

// switch_cm[t], checked: a negative or NaN one is reported and read as 0.
template <typename acc_t, typename scalar_t, typename Ctx>
EMBRAG_HD acc_t switch_cm_at(const Ctx& ctx, const CopyPosteriorArgs<scalar_t>& a, int64_t t) {
  const acc_t cm = element_cast<acc_t>(a.switch_cm[t]);
  if (cm >= acc_t(0)) return cm;
  ctx.bad_value("switch_cm", double(cm), ">= 0 (cM from the previous typed site)");
  return acc_t(0);
}

constexpr int kReduceGroups = 16;  // first-stage partial sums of a block reduction
constexpr int kForwardSums = 2, kBackwardSums = 9;

constexpr int kMaxSums = kBackwardSums;  // the most values one block_sum reduces

// Shared acc_t elements of either copy_posterior block body (block_sum's buffer).
EMBRAG_HD constexpr int64_t copy_posterior_smem_elems(int block) {
  return int64_t(kMaxSums) * (kReduceGroups + block);
}

// vals[i] <- its sum over the block's threads, in a fixed order (deterministic):
// thread g < 16 sums partial[g], partial[g + 16], ...; every thread then sums the 16.
// Shared memory: mid [kMaxSums, 16] at a fixed place, then partial [kVals, block].
// Two barriers; another call (any kVals) may follow at once: its writes to `partial`
// come after this call's second barrier (all reads of `partial` done), its writes to
// `mid` after its own first barrier, by which time every thread has read this call's
// `mid`. (With `mid` placed after `partial`, calls of different kVals overlapped: the
// shim under TSan caught that race.)
template <int kVals, typename acc_t, typename Ctx>
EMBRAG_HD void block_sum(const Ctx& ctx, acc_t (&vals)[kVals], acc_t* smem) {
  static_assert(kVals <= kMaxSums, "block_sum: raise kMaxSums");
  const int bd = ctx.block_dim(), tid = ctx.thread();
  const int groups = bd < kReduceGroups ? bd : kReduceGroups;
  acc_t* mid = smem;                                  // [kVals, groups]
  acc_t* partial = smem + kMaxSums * kReduceGroups;  // [kVals, bd]
  for (int i = 0; i < kVals; ++i) partial[i * bd + tid] = vals[i];
  ctx.sync();
  if (tid < groups)
    for (int i = 0; i < kVals; ++i) {
      acc_t s = acc_t(0);
      for (int j = tid; j < bd; j += groups) s += partial[i * bd + j];
      mid[i * groups + tid] = s;
    }
  ctx.sync();
  for (int i = 0; i < kVals; ++i) {
    acc_t s = acc_t(0);
    for (int j = 0; j < groups; ++j) s += mid[i * groups + j];
    vals[i] = s;
  }
}

// K_n, the number of valid templates of the block's query (checks the ids).
template <typename scalar_t, typename acc_t, typename Ctx>
EMBRAG_HD acc_t count_templates(const Ctx& ctx, const CopyPosteriorArgs<scalar_t>& a,
                                const int64_t* tpl, acc_t* smem) {
  acc_t count[1] = {acc_t(0)};
  for (int64_t k = ctx.thread(); k < a.K; k += ctx.block_dim()) {
    count[0] += template_column(ctx, a, tpl[k]) >= 0 ? acc_t(1) : acc_t(0);
  }
  block_sum(ctx, count, smem);
  return count[0];
}

// Emission of template k (0 if it is not valid) at site t.
template <typename scalar_t, typename acc_t, typename Ctx>
EMBRAG_HD acc_t template_emission(const Ctx& ctx, const CopyPosteriorArgs<scalar_t>& a,
                                  const Emission<acc_t>& em, int64_t col, int64_t t) {
  return col < 0 ? acc_t(0) : (template_allele(ctx, a, col, t) ? em.e1 : em.e0);
}

// Forward: post [N, M, K]; carry [N, K] scratch. Shared memory: copy_posterior_smem_elems.
template <typename scalar_t, typename acc_t, typename Ctx>
EMBRAG_HD void copy_posterior_forward_block(const Ctx& ctx, const CopyPosteriorArgs<scalar_t>& a,
                                            scalar_t* post, acc_t* carry, acc_t* smem) {
  const int64_t n = ctx.block_x(), M = a.M, K = a.K, first = ctx.thread(), step = ctx.block_dim();
  const int64_t* tpl = a.templates + n * K;
  const uint8_t* query = a.query + n * M;
  scalar_t* out = post + n * M * K;
  acc_t* u = carry + n * K;
  const acc_t n_valid = count_templates(ctx, a, tpl, smem);
  if (n_valid == acc_t(0)) {  // no template: all zeros
    for (int64_t t = 0; t < M; ++t)
      for (int64_t k = first; k < K; k += step) out[t * K + k] = element_cast<scalar_t>(acc_t(0));
    return;
  }
  const acc_t inv_k = acc_t(1) / n_valid;
  const CopyRates<acc_t> p = copy_rates<acc_t>(a.log_rho, a.logit_theta);

  // Forward sweep: unnormalised alpha_t into out[t], its sum c_t.
  acc_t inv_c = acc_t(0);
  for (int64_t t = 0; t < M; ++t) {
    const Emission<acc_t> em = emission_at(query_allele(ctx, query, t), p);
    SwitchStep<acc_t> sw{acc_t(0), inv_k, acc_t(0)};  // t = 0: the uniform start
    if (t > 0) sw = switch_step(p.rho, switch_cm_at<acc_t>(ctx, a, t), inv_k);
    const acc_t stay = sw.stay * inv_c;
    acc_t sum[1] = {acc_t(0)};
    for (int64_t k = first; k < K; k += step) {
      const acc_t prev = t > 0 ? element_cast<acc_t>(out[(t - 1) * K + k]) : acc_t(0);
      const int64_t col = template_column(ctx, a, tpl[k]);
      const acc_t alpha = template_emission(ctx, a, em, col, t) * (stay * prev + sw.jump);
      out[t * K + k] = element_cast<scalar_t>(alpha);
      sum[0] += alpha;
    }
    block_sum(ctx, sum, smem);
    inv_c = acc_t(1) / sum[0];
  }

  // Backward sweep: beta_t from the carry u = e_{t+1} beta_{t+1}; post = alpha beta / sum.
  acc_t inv_su = acc_t(0);
  SwitchStep<acc_t> next{acc_t(0), acc_t(1), acc_t(0)};  // t = M - 1: beta = 1
  for (int64_t k = first; k < K; k += step) u[k] = acc_t(0);
  for (int64_t t = M - 1; t >= 0; --t) {
    const Emission<acc_t> em = emission_at(query_allele(ctx, query, t), p);
    const acc_t stay = next.stay * inv_su;
    acc_t sums[kForwardSums] = {acc_t(0), acc_t(0)};
    for (int64_t k = first; k < K; k += step) {
      const int64_t col = template_column(ctx, a, tpl[k]);
      const acc_t beta = col >= 0 ? stay * u[k] + next.jump : acc_t(0);
      const acc_t joint = element_cast<acc_t>(out[t * K + k]) * beta;
      const acc_t e_beta = template_emission(ctx, a, em, col, t) * beta;
      out[t * K + k] = element_cast<scalar_t>(joint);
      u[k] = e_beta;
      sums[0] += joint;
      sums[1] += e_beta;
    }
    block_sum(ctx, sums, smem);
    const acc_t inv_z = sums[0] > acc_t(0) ? acc_t(1) / sums[0] : acc_t(0);
    for (int64_t k = first; k < K; k += step)
      out[t * K + k] = element_cast<scalar_t>(element_cast<acc_t>(out[t * K + k]) * inv_z);
    inv_su = acc_t(1) / sums[1];
    if (t > 0) next = switch_step(p.rho, switch_cm_at<acc_t>(ctx, a, t), inv_k);
  }
}

// Backward: per query dL/dlog_rho and dL/dlogit_theta into g.grads[n] (see the top).
// Shared memory: copy_posterior_smem_elems.
template <typename scalar_t, typename acc_t, typename Ctx>
EMBRAG_HD void copy_posterior_backward_block(const Ctx& ctx, const CopyPosteriorArgs<scalar_t>& a,
                                             const CopyPosteriorGrad<scalar_t, acc_t>& g,
                                             acc_t* smem) {
  const int64_t n = ctx.block_x(), M = a.M, K = a.K, first = ctx.thread(), step = ctx.block_dim();
  const int64_t* tpl = a.templates + n * K;
  const uint8_t* query = a.query + n * M;
  const scalar_t* grad_post = g.grad_post + n * M * K;
  acc_t* alpha = g.alpha + n * M * K;
  acc_t* alpha_g = g.alpha_g + n * M * K;
  acc_t* u = g.u + n * K;
  acc_t* v = g.v + n * K;
  const acc_t n_valid = count_templates(ctx, a, tpl, smem);
  if (n_valid == acc_t(0)) {
    if (ctx.thread() == 0) g.grads[2 * n] = g.grads[2 * n + 1] = acc_t(0);
    return;
  }
  const acc_t inv_k = acc_t(1) / n_valid;
  const CopyRates<acc_t> p = copy_rates<acc_t>(a.log_rho, a.logit_theta);
  auto grad_at = [&](int64_t i, int64_t col) {  // grad_post, 0 for no template (any value there)
    return col >= 0 ? element_cast<acc_t>(grad_post[i]) : acc_t(0);
  };

  // Forward sweep: normalised alpha_t and Ag_t = alpha_t A_t; sum_Ag = sum_k Ag_{t-1}(k).
  acc_t sum_ag = acc_t(0);
  for (int64_t t = 0; t < M; ++t) {
    const Emission<acc_t> em = emission_at(query_allele(ctx, query, t), p);
    SwitchStep<acc_t> sw{acc_t(0), inv_k, acc_t(0)};
    if (t > 0) sw = switch_step(p.rho, switch_cm_at<acc_t>(ctx, a, t), inv_k);
    acc_t sums[2] = {acc_t(0), acc_t(0)};
    for (int64_t k = first; k < K; k += step) {
      const int64_t i = t * K + k;
      const int64_t col = template_column(ctx, a, tpl[k]);
      const acc_t e = template_emission(ctx, a, em, col, t);
      const acc_t prev = t > 0 ? alpha[i - K] : acc_t(0);
      const acc_t prev_g = t > 0 ? alpha_g[i - K] : acc_t(0);
      const acc_t al = e * (sw.stay * prev + sw.jump);
      const acc_t ag = al * grad_at(i, col) + e * (sw.stay * prev_g + sw.jump * sum_ag);
      alpha[i] = al;
      alpha_g[i] = ag;
      sums[0] += al;
      sums[1] += ag;
    }
    block_sum(ctx, sums, smem);
    const acc_t inv_c = acc_t(1) / sums[0];
    sum_ag = sums[1] * inv_c;
    for (int64_t k = first; k < K; k += step) {
      alpha[t * K + k] *= inv_c;
      alpha_g[t * K + k] *= inv_c;
    }
  }
  const acc_t expected_g = sum_ag;  // E[G | x] = sum_k alpha_{M-1} A_{M-1}

  // Backward sweep: beta_t, Bg_t = beta_t B_t from the carries u, v of site t + 1.
  acc_t grad_rho = acc_t(0), grad_theta = acc_t(0), inv_su = acc_t(0), sum_v = acc_t(0);
  SwitchStep<acc_t> next{acc_t(0), acc_t(1), acc_t(0)};  // t = M - 1: beta = 1, B = g
  for (int64_t k = first; k < K; k += step) u[k] = v[k] = acc_t(0);
  for (int64_t t = M - 1; t >= 0; --t) {
    const Emission<acc_t> em = emission_at(query_allele(ctx, query, t), p);
    const acc_t stay = next.stay * inv_su, jump_v = next.jump * sum_v * inv_su;
    // 0 Z = sum alpha beta; 1, 2: the theta term's sums; 3 sum u; 4 sum v;
    // 5 sum alpha_{t-1} u; 6 sum Ag_{t-1} u + alpha_{t-1} v; 7 sum Ag_{t-1}; 8 sum alpha_{t-1}.
    acc_t s[kBackwardSums] = {};
    for (int64_t k = first; k < K; k += step) {
      const int64_t i = t * K + k, col = template_column(ctx, a, tpl[k]);
      const acc_t valid = col >= 0 ? acc_t(1) : acc_t(0), gk = grad_at(i, col);
      const acc_t beta = valid * (stay * u[k] + next.jump);
      const acc_t beta_g = beta * gk + valid * (stay * v[k] + jump_v);
      const acc_t al = alpha[i], ag = alpha_g[i], ab = al * beta;
      const uint8_t allele = col >= 0 ? template_allele(ctx, a, col, t) : 0;
      const acc_t e = col >= 0 ? (allele ? em.e1 : em.e0) : acc_t(0);
      const acc_t score = col >= 0 ? (allele ? em.s1 : em.s0) : acc_t(0);
      const acc_t uk = e * beta, vk = e * beta_g;
      s[0] += ab;
      s[1] += score * (ag * beta + al * beta_g - ab * gk);
      s[2] += score * ab;
      s[3] += uk;
      s[4] += vk;
      if (t > 0) {
        const acc_t pa = alpha[i - K], pg = alpha_g[i - K];
        s[5] += pa * uk;
        s[6] += pg * uk + pa * vk;
        s[7] += pg;
        s[8] += pa;
      }
      u[k] = uk;
      v[k] = vk;
    }
    block_sum(ctx, s, smem);
    if (s[0] > acc_t(0)) grad_theta += (s[1] - expected_g * s[2]) / s[0];
    if (t > 0) {
      const SwitchStep<acc_t> sw = switch_step(p.rho, switch_cm_at<acc_t>(ctx, a, t), inv_k);
      const acc_t z = sw.stay * s[5] + sw.jump * s[8] * s[3];  // sum of xi_t over (j, k)
      const acc_t off = s[7] * s[3] + s[8] * s[4] - expected_g * s[8] * s[3] -
                        (s[6] - expected_g * s[5]);  // all pairs minus the diagonal
      if (z > acc_t(0)) grad_rho += sw.grad_coef * off / z;
      next = sw;
    }
    inv_su = acc_t(1) / s[3];
    sum_v = s[4];
  }
  if (ctx.thread() == 0) {
    g.grads[2 * n] = grad_rho;
    g.grads[2 * n + 1] = grad_theta;
  }
}

}  // namespace embrag
