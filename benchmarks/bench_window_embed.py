"""window_embed: fused op vs the eager PyTorch composition (separate lookups
and adds), forward and forward+backward, at B=32, L=512, D=128 on the CPU.

    pytest benchmarks/ --benchmark-only -k window_embed

Prints the eager/fused time ratio and the fused op's bytes moved per second.
Speed is reported, never asserted.
"""
import pytest
import torch

from conftest import PASSES, time_pass
from embrag_ext import ops
from embrag_ext.reference import window_embed_reference

B, L, D, N_FEATURES, N_POS = 32, 512, 128, 16, 4096
TIMES = {}  # (pass, impl) -> median seconds


def make_inputs():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 3, (B, L), generator=gen)
    pos_ids = torch.randint(0, N_POS, (L,), generator=gen)
    af = torch.rand(L, generator=gen)
    type_ids = torch.randint(0, 4, (L,), generator=gen)
    tables = [torch.randn(rows, D, generator=gen).requires_grad_()
              for rows in (3, N_POS, N_FEATURES, 4)]
    return [tokens, pos_ids, af, type_ids, *tables]


def bytes_moved(which):
    """Least traffic of the op: tokens and output (and the gradient back)."""
    out_bytes, token_bytes = B * L * D * 4, B * L * 8
    return token_bytes + out_bytes if which == "forward" else 2 * (token_bytes + out_bytes)


IMPLS = {"fused": ops.window_embed, "eager": window_embed_reference}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", PASSES)
def bench_window_embed(benchmark, ratio_report, which, impl):
    benchmark.group = f"window_embed {which}"
    pair = time_pass(benchmark, TIMES, which, impl, IMPLS[impl], make_inputs(), baseline="eager")
    if pair:
        fused, eager = pair
        ratio_report(f"window_embed {which:>16} B={B} L={L} D={D}: eager/fused time = "
                     f"{eager / fused:5.2f}x, fused moves {bytes_moved(which) / fused / 1e9:5.2f} GB/s")
