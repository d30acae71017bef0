"""The fused operators, as torch.ops.embrag.*, with autograd and fake kernels.

The C++/CUDA kernels are registered when ``embrag_ext._C`` loads; this module
adds what torch needs around them: fake (meta) kernels for tracing and
torch.compile, and the backward formulas. ``embrag_ext.reference`` holds the
plain PyTorch versions the tests compare against.
"""
import torch

from . import load_extension
from .errors import InputError

load_extension()  # registers the kernels as torch.ops.embrag.*

# ---- window_embed -----------------------------------------------------------


def window_embed(tokens, pos_ids, af, type_ids, tok_table, pos_table, af_proj, type_table):
    """Embed a window of haplotypes in one pass.

    tokens [B, L] int64 (0 REF, 1 ALT, 2 MASK); pos_ids [L] int64 rows of
    pos_table; af [L] allele frequencies; type_ids [L] int64 rows of
    type_table; tables [*, D]; af_proj [F, D] projects the F Fourier features
    of the AF (sin/cos of pi * 2^i * af). Returns [B, L, D]:
    tok_table[tokens] + pos_table[pos_ids] + fourier(af) @ af_proj + type_table[type_ids].
    """
    return torch.ops.embrag.window_embed(
        tokens, pos_ids, af, type_ids, tok_table, pos_table, af_proj, type_table)


@torch.library.register_fake("embrag::window_embed")
def _window_embed_fake(tokens, pos_ids, af, type_ids, tok_table, pos_table, af_proj, type_table):
    torch._check(tokens.dim() == 2, lambda: "tokens must be 2-D [B, L]")
    torch._check(tok_table.dim() == 2, lambda: "tok_table must be 2-D [V, D]")
    return tok_table.new_empty((tokens.shape[0], tokens.shape[1], tok_table.shape[1]))


@torch.library.register_fake("embrag::window_embed_backward")
def _window_embed_backward_fake(grad_out, tokens, pos_ids, af, type_ids, n_tokens, n_pos,
                                n_features, n_types):
    width = grad_out.shape[2]
    return tuple(grad_out.new_empty((rows, width))
                 for rows in (n_tokens, n_pos, n_features, n_types))


def _window_embed_setup_context(ctx, inputs, output):
    tokens, pos_ids, af, type_ids, tok_table, pos_table, af_proj, type_table = inputs
    ctx.save_for_backward(tokens, pos_ids, af, type_ids)
    ctx.table_rows = (tok_table.shape[0], pos_table.shape[0], af_proj.shape[0], type_table.shape[0])


def _window_embed_backward(ctx, grad_out):
    tokens, pos_ids, af, type_ids = ctx.saved_tensors
    grad_tok, grad_pos, grad_af_proj, grad_type = torch.ops.embrag.window_embed_backward(
        grad_out, tokens, pos_ids, af, type_ids, *ctx.table_rows)
    # No gradient for the integer ids nor for the allele frequencies (data).
    return None, None, None, None, grad_tok, grad_pos, grad_af_proj, grad_type


torch.library.register_autograd(
    "embrag::window_embed", _window_embed_backward, setup_context=_window_embed_setup_context)


# ---- rag_fusion -------------------------------------------------------------


def rag_fusion(q, topk, ref_tokens, tok_k, tok_v, site_v, dist, beta, q_tokens, observed, alpha,
               n_heads, half_width, copy_bias=None, gamma=None):
    """Fuse the K retrieved reference haplotypes into the queries by attention.

    q [B, L, D] projected queries (n_heads slices of D / n_heads); topk [B, K]
    int64 rows of ref_tokens, -1 = no neighbour; ref_tokens [H, L] uint8 (a
    slice [:, start:end] of a contiguous panel array is fine); tok_k, tok_v
    [V, D] projected token tables; site_v [L, D] projected site values; dist
    [B, K] retrieval distances; beta, alpha [n_heads] learnable scales;
    q_tokens [B, L] int64 and observed [B, L] bool for the local agreement
    over sites l - half_width .. l + half_width; optionally copy_bias [B, L, K]
    (e.g. a copying model's log-posterior of each template) with its per-head
    scale gamma [n_heads]. Per (b, l, head h), t_k = ref_tokens[topk[b, k], l]:
      score_k = q . tok_k[t_k] / sqrt(d_head) + beta[h] dist[b, k]
                + alpha[h] agree(b, k, l) + gamma[h] copy_bias[b, l, k]
      out = sum_k softmax(score)_k (tok_v[t_k] + site_v[l])   (0 with no neighbour)
    A key's site part would add q . site_k[l] to every score alike: it cancels
    in the softmax, so there is none. copy_bias may hold -inf (with gamma[h] > 0
    that template takes no part for head h); +inf and NaN are not allowed.
    Every floating input has q's dtype: float32, float64 or bfloat16 (float32
    accumulation inside); float64 runs on the CPU only. The kernels check topk
    and the selected reference tokens as they read them (on CUDA a device-side
    assert): the op never synchronises with the host. Returns [B, L, D].
    """
    out, _lse = torch.ops.embrag.rag_fusion(q, topk, ref_tokens, tok_k, tok_v, site_v, dist, beta,
                                            q_tokens, observed, alpha, n_heads, half_width,
                                            copy_bias, gamma)
    return out


def _lse_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32


@torch.library.register_fake("embrag::rag_fusion")
def _rag_fusion_fake(q, topk, ref_tokens, tok_k, tok_v, site_v, dist, beta, q_tokens, observed,
                     alpha, n_heads, half_width, copy_bias=None, gamma=None):
    torch._check(q.dim() == 3, lambda: "q must be 3-D [B, L, D]")
    B, L, _ = q.shape
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty((B, L, n_heads), dtype=_lse_dtype(q)))


@torch.library.register_fake("embrag::rag_fusion_backward")
def _rag_fusion_backward_fake(grad_out, q, topk, ref_tokens, tok_k, tok_v, site_v, dist, beta,
                              q_tokens, observed, alpha, n_heads, half_width, copy_bias, gamma, out,
                              lse, copy_bias_grad):
    grad_copy_bias = (torch.empty_like(copy_bias, memory_format=torch.contiguous_format)
                      if copy_bias is not None and copy_bias_grad else q.new_empty((0,)))
    grad_gamma = gamma.new_empty(gamma.shape) if gamma is not None else q.new_empty((0,))
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            tok_k.new_empty(tok_k.shape), tok_v.new_empty(tok_v.shape),
            site_v.new_empty(site_v.shape), dist.new_empty(dist.shape),
            beta.new_empty(beta.shape), alpha.new_empty(alpha.shape), grad_copy_bias, grad_gamma)


def _rag_fusion_setup_context(ctx, inputs, output):
    (q, topk, ref_tokens, tok_k, tok_v, site_v, dist, beta, q_tokens, observed, alpha, n_heads,
     half_width, copy_bias, gamma) = inputs
    out, lse = output
    # The backward recomputes the softmax from the log-sum-exp (FlashAttention):
    # it saves the inputs, the output and lse [B, L, heads], no [.., K] state.
    ctx.save_for_backward(q, topk, ref_tokens, tok_k, tok_v, site_v, dist, beta, q_tokens,
                          observed, alpha, copy_bias, gamma, out, lse)
    ctx.mark_non_differentiable(lse)
    ctx.n_heads, ctx.half_width = n_heads, half_width
    ctx.copy_bias_grad = copy_bias is not None and copy_bias.requires_grad


def _rag_fusion_backward(ctx, grad_out, _grad_lse):
    (q, topk, ref_tokens, tok_k, tok_v, site_v, dist, beta, q_tokens, observed, alpha, copy_bias,
     gamma, out, lse) = ctx.saved_tensors
    (grad_q, grad_tok_k, grad_tok_v, grad_site_v, grad_dist, grad_beta, grad_alpha,
     grad_copy_bias, grad_gamma) = torch.ops.embrag.rag_fusion_backward(
        grad_out, q, topk, ref_tokens, tok_k, tok_v, site_v, dist, beta, q_tokens, observed,
        alpha, ctx.n_heads, ctx.half_width, copy_bias, gamma, out, lse, ctx.copy_bias_grad)
    # No gradient for the indices, tokens, mask, n_heads and half_width.
    return (grad_q, None, None, grad_tok_k, grad_tok_v, grad_site_v, grad_dist, grad_beta, None,
            None, grad_alpha, None, None, grad_copy_bias if ctx.copy_bias_grad else None,
            grad_gamma if gamma is not None else None)


torch.library.register_autograd(
    "embrag::rag_fusion", _rag_fusion_backward, setup_context=_rag_fusion_setup_context)


def check_reference_tokens(ref_tokens, n_tokens):
    """Raise a one-line InputError unless every entry of ref_tokens lies in
    [0, n_tokens). One host synchronisation: for the panel's tokens, once when
    they are built (the kernels check again as they read, on CUDA with a
    device-side assert, which a clear message up front spares the user)."""
    if ref_tokens.numel() and int(ref_tokens.max()) >= n_tokens:
        raise InputError(f"ref_tokens values must lie in [0, {n_tokens}), "
                         f"found {int(ref_tokens.max())}")


# ---- copy_posterior ---------------------------------------------------------


def copy_posterior(query, templates, ref_sites, switch_cm, log_rho, logit_theta):
    """Li-Stephens copying posterior of each query haplotype over its templates.

    query [N, M] uint8 alleles at the M typed sites (0 REF, 1 ALT, 2 MASK = missing);
    templates [N, K] int64 columns of ref_sites (-1 = no template); ref_sites [M, H]
    uint8 0/1, site-major (unit stride along H; a row slice of a larger array is fine);
    switch_cm [M] float32/float64 cM from typed site m - 1 to m (entry 0 unused);
    log_rho, logit_theta 0-d tensors of switch_cm's dtype. With K_n valid templates,
    r_m = 1 - exp(-exp(log_rho) switch_cm[m]), theta = sigmoid(logit_theta):
      P(z_0 = k) = 1 / K_n,  P(z_m = k | z_{m-1} = j) = (1 - r_m) [k == j] + r_m / K_n,
      emission 1 - theta on a match, theta on a mismatch, 1 at MASK.
    Returns post [N, M, K] (switch_cm's dtype) = P(z_m = k | query n's alleles): rows
    sum to 1 over the valid templates, 0 for invalid ones and for a query with none.
    Gradients flow to log_rho and logit_theta (not to switch_cm, which is data).
    float32/float64 on the CPU, float32 on CUDA; O(N M K) time and memory. The
    kernels check the template ids, the alleles and switch_cm as they read them
    (on CUDA a device-side assert): the op never synchronises with the host.
    """
    return torch.ops.embrag.copy_posterior(query, templates, ref_sites, switch_cm, log_rho,
                                           logit_theta)


@torch.library.register_fake("embrag::copy_posterior")
def _copy_posterior_fake(query, templates, ref_sites, switch_cm, log_rho, logit_theta):
    torch._check(query.dim() == 2, lambda: "query must be 2-D [N, M]")
    torch._check(templates.dim() == 2, lambda: "templates must be 2-D [N, K]")
    return switch_cm.new_empty((query.shape[0], query.shape[1], templates.shape[1]))


@torch.library.register_fake("embrag::copy_posterior_backward")
def _copy_posterior_backward_fake(grad_post, query, templates, ref_sites, switch_cm, log_rho,
                                  logit_theta):
    return log_rho.new_empty(()), logit_theta.new_empty(())


def _copy_posterior_setup_context(ctx, inputs, output):
    # The backward reruns the forward sweep: it saves the inputs only, not the posterior.
    ctx.save_for_backward(*inputs)


def _copy_posterior_backward(ctx, grad_post):
    grad_log_rho, grad_logit_theta = torch.ops.embrag.copy_posterior_backward(
        grad_post, *ctx.saved_tensors)
    # No gradient for the alleles, the template ids, nor the genetic distances (data).
    return None, None, None, None, grad_log_rho, grad_logit_theta


torch.library.register_autograd(
    "embrag::copy_posterior", _copy_posterior_backward,
    setup_context=_copy_posterior_setup_context)
