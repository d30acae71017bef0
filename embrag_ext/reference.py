"""Plain PyTorch versions of the fused operators, for tests and benchmarks only.

Each is written the obvious way (separate lookups, materialised gathers), so
it is an independent check on the kernels and the "eager" side of every
benchmark ratio.
"""
import math

import torch


def af_fourier_features(af, n_features):
    """[L] -> [L, F]: feature 2i = sin(pi 2^i af), 2i+1 = cos(pi 2^i af)."""
    omegas = math.pi * 2.0 ** torch.arange(n_features // 2, dtype=af.dtype, device=af.device)
    angles = af[:, None] * omegas[None, :]                       # [L, F/2]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).reshape(af.shape[0], n_features)


def window_embed_reference(tokens, pos_ids, af, type_ids, tok_table, pos_table, af_proj, type_table):
    """[B, L, D]: the four embeddings looked up separately and added."""
    site = pos_table[pos_ids] + af_fourier_features(af, af_proj.shape[0]) @ af_proj + type_table[type_ids]
    return tok_table[tokens] + site[None, :, :]


def window_embed_naive(tokens, pos_ids, af, type_ids, tok_table, pos_table, af_proj, type_table):
    """[B, L, D]: every embedding looked up per haplotype and site ([B, L, D] each: the
    site rows are not shared between haplotypes) and added; the benchmarks' naive baseline."""
    B, L = tokens.shape
    per_haplotype = lambda ids: ids[None, :].expand(B, L)  # noqa: E731
    features = af_fourier_features(per_haplotype(af).reshape(-1), af_proj.shape[0]).view(B, L, -1)
    return (tok_table[tokens] + pos_table[per_haplotype(pos_ids)] + features @ af_proj
            + type_table[per_haplotype(type_ids)])


def rag_fusion_agreement(topk, ref_tokens, q_tokens, observed, half_width, dtype):
    """[B, K, L] of dtype: for neighbour k of query b at site l, the fraction of observed
    query sites j in [l - w, l + w] (clipped to the window) where
    q_tokens[b, j] == ref_tokens[topk[b, k], j]; 0 where nothing is observed."""
    L = q_tokens.shape[1]
    neighbours = ref_tokens[topk.clamp(min=0)].long()                       # [B, K, L]
    match = (neighbours == q_tokens[:, None, :]) & observed[:, None, :]     # [B, K, L]
    obs = observed[:, None, :].expand_as(match)

    def window_sum(x):  # sums over [l - w, l + w] via prefix sums: [B, K, L]
        prefix = torch.nn.functional.pad(x.long().cumsum(-1), (1, 0))     # [B, K, L + 1]
        sites = torch.arange(L, device=x.device)
        hi = (sites + half_width + 1).clamp(max=L)
        lo = (sites - half_width).clamp(min=0)
        return prefix[..., hi] - prefix[..., lo]

    return window_sum(match).to(dtype) / window_sum(obs).clamp(min=1).to(dtype)


def rag_fusion_scores(qk_tokens, topk, ref_tokens, dist, beta, q_tokens, observed, alpha,
                      half_width, copy_bias, gamma):
    """[B, L, heads, K] scores from the query-key part qk_tokens [B, L, heads, K]:
    adds beta[h] dist[b, k] + alpha[h] agree[b, k, l] (+ gamma[h] copy_bias[b, l, k])."""
    agree = rag_fusion_agreement(topk, ref_tokens, q_tokens, observed, half_width, qk_tokens.dtype)
    scores = (qk_tokens + beta[None, None, :, None] * dist[:, None, None, :]
              + alpha[None, None, :, None] * agree.permute(0, 2, 1)[:, :, None, :])
    if copy_bias is not None:
        scores = scores + gamma[None, None, :, None] * copy_bias[:, :, None, :]
    return scores


def masked_softmax(scores, topk):
    """Softmax over the valid neighbours (topk >= 0) of scores [B, L, heads, K];
    a row with no valid neighbour gives 0."""
    valid = (topk >= 0)[:, None, None, :]                                   # [B, 1, 1, K]
    # A finite fill keeps an all-invalid row free of NaN (in its gradient too).
    return torch.softmax(scores.masked_fill(~valid, torch.finfo(scores.dtype).min), dim=-1) * valid


def rag_fusion_reference(q, topk, ref_tokens, tok_k, tok_v, site_v, dist, beta, q_tokens, observed,
                         alpha, n_heads, half_width, copy_bias=None, gamma=None):
    """[B, L, D]: attention of every query site over its K retrieved neighbours,
    with the neighbours' keys and values materialised ([B, K, L, D]).

    score[b, l, h, k] = q[b, l, h] . key[b, k, l, h] / sqrt(d_head)
                      + beta[h] dist[b, k] + alpha[h] agree[b, k, l] + gamma[h] copy_bias[b, l, k]
    key = tok_k[t], value = tok_v[t] + site_v[l] with t = ref_tokens[topk[b, k], l];
    softmax over the valid k (topk >= 0); a row with no valid neighbour gives 0.
    """
    B, L, D = q.shape
    K = topk.shape[1]
    d_head = D // n_heads
    neighbours = ref_tokens[topk.clamp(min=0)].long()                       # [B, K, L]
    keys = tok_k[neighbours].view(B, K, L, n_heads, d_head)
    values = (tok_v[neighbours] + site_v).view(B, K, L, n_heads, d_head)
    qh = q.view(B, L, n_heads, d_head)
    qk = torch.einsum("blhd,bklhd->blhk", qh, keys) / math.sqrt(d_head)
    p = masked_softmax(rag_fusion_scores(qk, topk, ref_tokens, dist, beta, q_tokens, observed,
                                         alpha, half_width, copy_bias, gamma), topk)
    return torch.einsum("blhk,bklhd->blhd", p, values).reshape(B, L, D)


def rag_fusion_algebra(q, topk, ref_tokens, tok_k, tok_v, site_v, dist, beta, q_tokens, observed,
                       alpha, n_heads, half_width, copy_bias=None, gamma=None):
    """[B, L, D]: the same op in plain PyTorch with the kernels' algebra, the
    best composition we know: q . tok_k[t] once per token ([B, L, heads, V]),
    scores gathered from it by the neighbours' tokens, the softmax weights
    summed per token, out = weights @ tok_v + (sum of weights) site_v. No
    [B, K, L, D] tensor; [B, L, heads, K] scores remain. The benchmarks compare
    the fused op with it to show what fusion buys beyond the algebra."""
    B, L, D = q.shape
    K, V = topk.shape[1], tok_k.shape[0]
    d_head = D // n_heads
    qh = q.view(B, L, n_heads, d_head)
    qk = torch.einsum("blhd,vhd->blhv", qh, tok_k.view(V, n_heads, d_head)) / math.sqrt(d_head)
    tokens = ref_tokens[topk.clamp(min=0)].long().transpose(1, 2)           # [B, L, K]
    token_index = tokens[:, :, None, :].expand(B, L, n_heads, K)
    p = masked_softmax(rag_fusion_scores(qk.gather(-1, token_index), topk, ref_tokens, dist, beta,
                                         q_tokens, observed, alpha, half_width, copy_bias, gamma),
                       topk)
    weight = p.new_zeros(B, L, n_heads, V).scatter_add(-1, token_index, p)  # [B, L, heads, V]
    out = (torch.einsum("blhv,vhd->blhd", weight, tok_v.view(V, n_heads, d_head))
           + weight.sum(-1, keepdim=True) * site_v.view(1, L, n_heads, d_head))
    return out.reshape(B, L, D)


# Names of rag_fusion's differentiable inputs, in the order of its arguments.
RAG_FUSION_GRAD_INPUTS = ("q", "tok_k", "tok_v", "site_v", "dist", "beta", "alpha", "copy_bias",
                          "gamma")


def random_rag_fusion_inputs(B, L, D, K, n_heads, half_width, *, copy_bias=True, n_haps=20,
                             n_tokens=3, dtype=torch.float32, device="cpu", seed=0,
                             requires_grad=True):
    """Keyword arguments of rag_fusion (ops.rag_fusion and the versions here),
    random, for tests and benchmarks. ref_tokens is a window slice of a wider
    panel (row stride > L); query 0 has no neighbour at all and the others
    about 20% -1; copy_bias is log-posterior-like (<= 0, one in 7 at -1e4)
    with gamma > 0. The floating inputs require grad."""
    gen = torch.Generator().manual_seed(seed)
    panel = torch.randint(0, n_tokens, (n_haps, L + 9), generator=gen, dtype=torch.uint8)
    topk = torch.randint(0, n_haps, (B, K), generator=gen)
    topk[torch.rand(B, K, generator=gen) < 0.2] = -1
    topk[0] = -1

    def floats(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    inputs = dict(q=floats(B, L, D), tok_k=floats(n_tokens, D), tok_v=floats(n_tokens, D),
                  site_v=floats(L, D), dist=floats(B, K), beta=floats(n_heads),
                  alpha=floats(n_heads) * 2)
    if copy_bias:
        log_posterior = -4 * torch.rand(B, L, K, generator=gen, dtype=torch.float64)
        log_posterior.view(-1)[::7] = -1e4
        inputs.update(copy_bias=log_posterior, gamma=0.1 + torch.rand(n_heads, generator=gen,
                                                                       dtype=torch.float64))
    inputs = {name: t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
              for name, t in inputs.items()}
    q_tokens = torch.randint(0, n_tokens, (B, L), generator=gen)
    observed = torch.rand(B, L, generator=gen) < 0.6
    return dict(inputs, topk=topk.to(device), ref_tokens=panel.to(device)[:, 4:4 + L],
                q_tokens=q_tokens.to(device), observed=observed.to(device), n_heads=n_heads,
                half_width=half_width)


def copy_posterior_reference(query, templates, ref_sites, switch_cm, log_rho, logit_theta):
    """[N, M, K] float64: the Li-Stephens copying posterior (see ops.copy_posterior),
    by the textbook log-space forward-backward, unscaled, one site at a time.

    An invalid template (id -1) gets a log-emission of -1e30 (finite, so no NaN
    reaches the gradient) and a posterior of 0; a query with none gets all zeros.
    Differentiable in log_rho and logit_theta.
    """
    f64 = torch.float64
    N, M = query.shape
    valid = templates >= 0                                                   # [N, K]
    n_valid = valid.sum(1, keepdim=True).clamp(min=1).to(f64)                # [N, 1]
    # alleles[n, m, k] = ref_sites[m, templates[n, k]]
    alleles = ref_sites.long()[:, templates.clamp(min=0)].permute(1, 0, 2)  # [N, M, K]
    x = logit_theta.to(f64)
    log_match, log_mismatch = torch.nn.functional.logsigmoid(-x), torch.nn.functional.logsigmoid(x)
    q = query.long()[:, :, None]
    log_e = torch.where(q == 2, torch.zeros((), dtype=f64),
                        torch.where(alleles == q, log_match, log_mismatch))
    log_e = torch.where(valid[:, None, :], log_e, torch.full((), -1e30, dtype=f64))
    # log(1 - r) = -rho d; log r, with a second where so that d = 0 gives no NaN gradient.
    dist = torch.exp(log_rho.to(f64)) * switch_cm.to(f64)                    # [M]
    positive = dist > 0
    log_r = torch.where(positive, torch.log(-torch.expm1(-torch.where(positive, dist, 1.0))),
                        -torch.inf)
    log_stay, log_jump = -dist, log_r[None, :] - n_valid.log()               # [M], [N, M]

    # Per-site views made once (indexing log_e[:, m] in the loops would make each
    # site's backward write a whole [N, M, K] gradient).
    log_e, log_stay, log_jump = log_e.unbind(1), log_stay.unbind(0), log_jump.unbind(1)
    log_alpha = [log_e[0] - n_valid.log()]
    for m in range(1, M):
        prev = log_alpha[-1]
        moved = torch.logsumexp(prev, dim=1, keepdim=True) + log_jump[m][:, None]
        log_alpha.append(log_e[m] + torch.logaddexp(prev + log_stay[m], moved))
    log_beta = [torch.zeros_like(log_alpha[0])]
    for m in range(M - 1, 0, -1):
        nxt = log_e[m] + log_beta[0]
        moved = torch.logsumexp(nxt, dim=1, keepdim=True) + log_jump[m][:, None]
        log_beta.insert(0, torch.logaddexp(nxt + log_stay[m], moved))
    log_joint = torch.stack(log_alpha, 1) + torch.stack(log_beta, 1)         # [N, M, K]
    has_template = valid.any(1)[:, None, None]
    return torch.softmax(log_joint, dim=-1) * (valid[:, None, :] & has_template)


def copy_posterior_scaled(query, templates, ref_sites, switch_cm, log_rho, logit_theta):
    """[N, M, K]: the same posterior by the kernels' algebra in plain PyTorch, the
    best composition we know: every emission in one vectorised pass ([M, N, K],
    the templates' alleles gathered as bytes), then the scaled forward-backward
    (probabilities normalised at every site, no logs) with the transition as a
    rank-one update (O(K) per site), in the inputs' dtype, autograd through the
    loop over sites. The benchmarks compare the fused op with it to show what
    fusion buys beyond the algebra."""
    valid = templates >= 0                                                   # [N, K]
    weight = valid.to(switch_cm.dtype)
    n_valid = weight.sum(1, keepdim=True).clamp(min=1)                       # [N, 1]
    theta = torch.sigmoid(logit_theta)
    alleles = ref_sites[:, templates.clamp(min=0)]                           # uint8 [M, N, K]
    q = query.t()[:, :, None]                                                # [M, N, 1]
    emissions = torch.where(alleles == q, 1 - theta, theta)
    emissions = torch.where(q == 2, torch.ones_like(emissions), emissions) * weight
    stay = torch.exp(-torch.exp(log_rho) * switch_cm)                        # [M] 1 - r_m
    jump = (1 - stay)[:, None, None] / n_valid                               # [M, N, 1] r_m / K_n

    def normalised(x):
        return x / x.sum(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)

    M = query.shape[1]
    alpha = [normalised(emissions[0] / n_valid)]
    for m in range(1, M):
        alpha.append(normalised(emissions[m] * (stay[m] * alpha[-1] + jump[m])))
    beta = [torch.ones_like(alpha[0])]
    for m in range(M - 1, 0, -1):
        beta.insert(0, (stay[m] * normalised(emissions[m] * beta[0]) + jump[m]) * weight)
    return normalised(torch.stack(alpha, 1) * torch.stack(beta, 1))          # [N, M, K]


# Names of copy_posterior's differentiable inputs, in the order of its arguments.
COPY_POSTERIOR_GRAD_INPUTS = ("log_rho", "logit_theta")


def random_copy_posterior_inputs(N, M, K, H, *, mask=0.2, pad=0.2, empty_query=True, rho=2.0,
                                 theta=0.05, cm_scale=0.3, dtype=torch.float32, device="cpu",
                                 seed=0, requires_grad=True):
    """Keyword arguments of copy_posterior (ops.copy_posterior and the reference
    here), random, for tests and benchmarks. ref_sites is a row and column slice
    of a wider site-major panel (row stride > H); a share `mask` of the query
    alleles is MASK, `pad` of the template ids are -1, query 0 has no template
    (empty_query), one inter-site distance is 0, the others uniform in
    [0, cm_scale). log_rho and logit_theta (of rho, theta) require grad."""
    gen = torch.Generator().manual_seed(seed)
    panel = torch.randint(0, 2, (M + 5, H + 11), generator=gen, dtype=torch.uint8)
    query = torch.randint(0, 2, (N, M), generator=gen, dtype=torch.uint8)
    query[torch.rand(N, M, generator=gen) < mask] = 2
    templates = torch.randint(0, H, (N, K), generator=gen)
    templates[torch.rand(N, K, generator=gen) < pad] = -1
    if empty_query and N > 1:
        templates[0] = -1
    switch_cm = torch.rand(M, generator=gen, dtype=torch.float64) * cm_scale
    switch_cm[M // 2:M // 2 + 1] = 0.0
    scalars = dict(log_rho=math.log(rho), logit_theta=math.log(theta / (1 - theta)))
    return dict(query=query.to(device), templates=templates.to(device),
                ref_sites=panel.to(device)[3:3 + M, 7:7 + H],
                switch_cm=switch_cm.to(device=device, dtype=dtype),
                **{name: torch.tensor(value, dtype=dtype, device=device, requires_grad=requires_grad)
                   for name, value in scalars.items()})
