"""The fused operators, as torch.ops.embrag.*, with autograd and fake kernels.

The C++/CUDA kernels are registered when ``embrag_ext._C`` loads; this module
adds what torch needs around them: fake (meta) kernels for tracing and
torch.compile, and the backward formulas. ``embrag_ext.reference`` holds the
plain PyTorch versions the tests compare against.
"""
import torch

from . import _C  # noqa: F401  (loading the extension registers torch.ops.embrag)

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
