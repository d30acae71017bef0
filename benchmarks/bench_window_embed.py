"""window_embed on the CPU: fused op vs the eager PyTorch composition
(separate lookups and adds: already the best plain-PyTorch composition of the
same algebra, the site rows built once per site), forward and
forward+backward, at B=32, L=512, D=128, and its bandwidth model.

    pytest benchmarks/ --benchmark-only -k window_embed [--quick]

(--quick divides B by 8.) Prints the eager/fused time ratio, the fused op's
bytes moved per second, and per pass the bytes it must move, the bytes its
kernels' design moves (_C.window_embed_traffic, csrc/kernels/window_embed.h)
and their ratio (goal: at most 1.3x), with the CPU allocator's bytes beyond
the pass's outputs. Speed is reported, never asserted.
"""
import pytest
import torch

from conftest import PASSES, allocated_bytes, time_pass, traffic_line
from embrag_ext import _C, ops
from embrag_ext.reference import window_embed_reference

B, L, D, N_FEATURES, N_POS, N_TOKENS, N_TYPES = 32, 512, 128, 16, 4096, 3, 4
TIMES = {}  # (pass, impl) -> median seconds


def make_inputs(batch):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, N_TOKENS, (batch, L), generator=gen)
    pos_ids = torch.randint(0, N_POS, (L,), generator=gen)
    af = torch.rand(L, generator=gen)
    type_ids = torch.randint(0, N_TYPES, (L,), generator=gen)
    tables = [torch.randn(rows, D, generator=gen).requires_grad_()
              for rows in (N_TOKENS, N_POS, N_FEATURES, N_TYPES)]
    return [tokens, pos_ids, af, type_ids, *tables]


def bandwidth_lines(batch, inputs):
    traffic = _C.window_embed_traffic(B=batch, L=L, D=D, F=N_FEATURES, V=N_TOKENS, P=N_POS,
                                      T=N_TYPES, elem_bytes=4)
    with torch.no_grad():
        out = ops.window_embed(*inputs)
        forward_extra = allocated_bytes(lambda: ops.window_embed(*inputs)) - out.numel() * 4
        grad_out = torch.ones_like(out)
        rows = [t.shape[0] for t in inputs[4:]]
        backward = lambda: torch.ops.embrag.window_embed_backward(grad_out, *inputs[:4], *rows)  # noqa: E731
        backward_extra = allocated_bytes(backward) - sum(t.numel() * 4 for t in backward())
    what = f"window_embed B={batch} L={L} D={D}"
    return [traffic_line(f"{what}  forward", traffic["forward"], forward_extra),
            traffic_line(f"{what} backward", traffic["backward"], backward_extra)]


def bytes_moved(batch, which):
    """Least traffic of the op: tokens and output (and the gradient back)."""
    out_bytes, token_bytes = batch * L * D * 4, batch * L * 8
    return token_bytes + out_bytes if which == "forward" else 2 * (token_bytes + out_bytes)


IMPLS = {"fused": ops.window_embed, "eager": window_embed_reference}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", PASSES)
def bench_window_embed(benchmark, ratio_report, quick, which, impl):
    batch = B // 8 if quick else B
    benchmark.group = f"window_embed {which}"
    inputs = make_inputs(batch)
    pair = time_pass(benchmark, TIMES, which, impl, IMPLS[impl], inputs, baseline="eager")
    if impl == "fused" and which == "forward":
        for line in bandwidth_lines(batch, inputs):
            ratio_report(line)
    if pair:
        fused, eager = pair
        ratio_report(f"window_embed {which:>16} B={batch} L={L} D={D}: eager/fused time = "
                     f"{eager / fused:5.2f}x, fused moves {bytes_moved(batch, which) / fused / 1e9:5.2f} GB/s")
