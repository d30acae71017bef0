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
