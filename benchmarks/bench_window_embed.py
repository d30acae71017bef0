"""window_embed on the CPU: the fused op against two plain-PyTorch compositions,
forward and forward+backward, at B=32, L=512, D=128, and its bandwidth model.

    pytest benchmarks/bench_window_embed.py --benchmark-only [--quick]

(--quick divides B by 8.) The compositions: "algebra" (the four lookups and
adds with the site rows built once per site, [L, D], and broadcast over the
haplotypes: the best plain-PyTorch composition of the same algebra,
reference.window_embed_reference) and "naive" (every lookup per haplotype and
site, [B, L, D] each). Recorded for the summary (bench_kernels.py): median
times (pytest-benchmark); per pass the bytes it must move, the bytes the
kernels' design moves (_C.window_embed_traffic, csrc/kernels/window_embed.h;
goal: at most 1.3x) and the CPU allocator's bytes beyond the pass's outputs;
the peak memory of every implementation and pass (a fresh subprocess each,
peak_memory.py). Speed is reported, never asserted.
"""
import sys

import pytest
import torch

from conftest import PASSES, allocated_bytes, nbytes, pass_bytes, record
from peak_memory import measure_pass, pass_peak_bytes
from embrag_ext import _C, ops
from embrag_ext.reference import window_embed_naive, window_embed_reference

B, L, D, N_FEATURES, N_POS, N_TOKENS, N_TYPES = 32, 512, 128, 16, 4096, 3, 4
IMPLS = {"fused": ops.window_embed, "algebra": window_embed_reference, "naive": window_embed_naive}


def batch(quick):
    return B // 8 if quick else B


def make_inputs(batch):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, N_TOKENS, (batch, L), generator=gen)
    pos_ids = torch.randint(0, N_POS, (L,), generator=gen)
    af = torch.rand(L, generator=gen)
    type_ids = torch.randint(0, N_TYPES, (L,), generator=gen)
    tables = [torch.randn(rows, D, generator=gen).requires_grad_()
              for rows in (N_TOKENS, N_POS, N_FEATURES, N_TYPES)]
    return [tokens, pos_ids, af, type_ids, *tables]


def traffic(batch):
    """The bandwidth model of both passes: bytes each must move and moves."""
    return _C.window_embed_traffic(B=batch, L=L, D=D, F=N_FEATURES, V=N_TOKENS, P=N_POS, T=N_TYPES, elem_bytes=4)


def bandwidth(inputs, model):
    """Per op pass: the model's bytes and the CPU allocator's bytes beyond its outputs."""
    with torch.no_grad():
        out = ops.window_embed(*inputs)
        forward_extra = allocated_bytes(lambda: ops.window_embed(*inputs)) - nbytes([out])
        grad_out = torch.ones_like(out)
        rows = [t.shape[0] for t in inputs[4:]]
        backward = lambda: torch.ops.embrag.window_embed_backward(grad_out, *inputs[:4], *rows)  # noqa: E731
        backward_extra = allocated_bytes(backward) - nbytes(backward())
    return {"forward": dict(model["forward"], cpu_extra_allocated=forward_extra),
            "backward": dict(model["backward"], cpu_extra_allocated=backward_extra)}


def run_pass(which, impl, inputs):
    return PASSES[which](IMPLS[impl], inputs)


def _measure_peak(which, impl, quick):  # in the subprocess of pass_peak_bytes
    inputs = make_inputs(batch(quick))
    measure_pass(lambda: run_pass(which, impl, inputs), inputs)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", PASSES)
def bench_window_embed(benchmark, quick, which, impl):
    benchmark.group = f"window_embed {which}"
    inputs = make_inputs(batch(quick))
    benchmark(run_pass, which, impl, inputs)
    model = traffic(batch(quick))
    figures = {"must_bytes": pass_bytes(model, which, "must"),
               "peak_bytes": pass_peak_bytes(__file__, which, impl, str(int(quick)))}
    if impl == "fused":
        figures["moved_bytes"] = pass_bytes(model, which, "moved")
        if which == "forward":
            figures["bandwidth"] = bandwidth(inputs, model)
    record(benchmark, "compare", "window_embed", f"B={batch(quick)} L={L} D={D}", which, impl, **figures)


if __name__ == "__main__":  # pass_peak_bytes' subprocess: <pass> <impl> <quick>
    _measure_peak(sys.argv[1], sys.argv[2], bool(int(sys.argv[3])))
