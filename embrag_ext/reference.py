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
