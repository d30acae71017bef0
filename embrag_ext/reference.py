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


def rag_fusion_reference(q, topk, ref_tokens, tok_k, tok_v, site_k, site_v, dist, beta,
                         q_tokens, observed, alpha, n_heads, half_width):
    """[B, L, D]: attention of every query site over its K retrieved neighbours,
    with the neighbours' keys and values materialised ([B, K, L, D]).

    score[b, l, h, k] = q[b, l, h] . key[b, k, l, h] / sqrt(d_head)
                      + beta[h] * dist[b, k] + alpha[h] * agree[b, k, l]
    key = tok_k[t] + site_k[l], value = tok_v[t] + site_v[l] with
    t = ref_tokens[topk[b, k], l]; softmax over the valid k (topk >= 0); a row
    with no valid neighbour gives 0.
    """
    B, L, D = q.shape
    K = topk.shape[1]
    d_head = D // n_heads
    neighbours = ref_tokens[topk.clamp(min=0)].long()                       # [B, K, L]
    keys = (tok_k[neighbours] + site_k).view(B, K, L, n_heads, d_head)
    values = (tok_v[neighbours] + site_v).view(B, K, L, n_heads, d_head)
    qh = q.view(B, L, n_heads, d_head)
    scores = torch.einsum("blhd,bklhd->blhk", qh, keys) / math.sqrt(d_head)
    agree = rag_fusion_agreement(topk, ref_tokens, q_tokens, observed, half_width, q.dtype)
    scores = (scores + beta[None, None, :, None] * dist[:, None, None, :]
              + alpha[None, None, :, None] * agree.permute(0, 2, 1)[:, :, None, :])
    valid = (topk >= 0)[:, None, None, :]                                   # [B, 1, 1, K]
    # A finite fill keeps an all-invalid row free of NaN (in its gradient too).
    p = torch.softmax(scores.masked_fill(~valid, torch.finfo(q.dtype).min), dim=-1) * valid
    return torch.einsum("blhk,bklhd->blhd", p, values).reshape(B, L, D)


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
