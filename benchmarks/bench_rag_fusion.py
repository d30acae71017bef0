"""rag_fusion on the CPU: the fused op against two plain-PyTorch compositions,
its bandwidth model, and today's ops against the old ones, at

    A      B=64 K=16   L=512 D=128 4 heads, no copy bias
    K256   B=64 K=256  L=128 D=64  4 heads, copy bias
    K2048  B=64 K=2048 L=128 D=64  4 heads, copy bias

    pytest benchmarks/bench_rag_fusion.py --benchmark-only [--quick]

(--quick divides B by 8 and skips the old ops.) Recorded for the summary (bench_kernels.py, printed
at the end of the run):
  - the median time of the forward and forward+backward passes (pytest-benchmark)
    of the fused op and of two compositions: "algebra" (the kernels' algebra in
    plain PyTorch: [B, L, heads, V] dot products, [B, L, heads, K] scores, no
    [B, K, L, D]; what fusion buys beyond the algebra) and "naive" (keys and
    values materialised as [B, K, L, D]; size A only);
  - bytes per pass: what it must move (inputs read once, outputs written
    once), what the kernels' design moves (_C.rag_fusion_traffic, from
    csrc/kernels/rag_fusion.h; goal: at most 1.3x), and the CPU allocator's
    bytes beyond the pass's outputs (torch.profiler);
  - peak memory of size A, every implementation and pass: the rise of the
    resident set while one call runs, in a fresh subprocess (peak_memory.py);
  - the forward and backward ops against those of commit
    old_rag_fusion.OLD_COMMIT (two stages, [B, L, heads, K] coefficient
    tensors), built into a module of their own and timed in the same run
    (size A: that op took K <= 64).
Speed is reported, never asserted.
"""
import sys

import pytest
import torch

from conftest import PASSES, allocated_bytes, nbytes, pass_bytes, record
from old_rag_fusion import OLD_COMMIT, load_old_rag_fusion
from peak_memory import measure_pass, pass_peak_bytes
from embrag_ext import _C, ops
from embrag_ext.reference import rag_fusion_algebra, rag_fusion_reference, random_rag_fusion_inputs

# name: (B, L, D, K, n_heads, half_width, copy_bias)
SIZES = {"A": (64, 512, 128, 16, 4, 8, False),
         "K256": (64, 128, 64, 256, 4, 16, True),
         "K2048": (64, 128, 64, 2048, 4, 16, True)}
N_HAPS = 3000
IMPLS = {"fused": ops.rag_fusion, "algebra": rag_fusion_algebra, "naive": rag_fusion_reference}


def batch(size, quick):
    return SIZES[size][0] // 8 if quick else SIZES[size][0]


def make_inputs(size, quick):
    _, L, D, K, heads, half_width, copy_bias = SIZES[size]
    return random_rag_fusion_inputs(batch(size, quick), L, D, K, heads, half_width,
                                    copy_bias=copy_bias, n_haps=N_HAPS)


def run_pass(which, impl, inputs):
    """PASSES[which] (conftest) of IMPLS[impl] on the keyword inputs."""
    return PASSES[which](lambda: IMPLS[impl](**inputs), ())


def impls(size):
    return [impl for impl in IMPLS if impl != "naive" or size == "A"]


def describe(size, quick):
    _, L, D, K, heads, _, copy_bias = SIZES[size]
    return (f"{size}: B={batch(size, quick)} K={K} L={L} D={D} heads={heads}"
            f"{', copy bias' if copy_bias else ''}")


def backward_op(inputs):
    """A call of the backward op alone, on the saved tensors of a forward."""
    with torch.no_grad():
        out, lse = torch.ops.embrag.rag_fusion(**inputs)
    grad_out = torch.ones_like(out)
    optional = {name: inputs.get(name) for name in ("copy_bias", "gamma")}
    return lambda: torch.ops.embrag.rag_fusion_backward(
        grad_out, **dict(inputs, **optional), out=out, lse=lse, copy_bias_grad="copy_bias" in inputs)


def traffic(size, quick):
    """The bandwidth model of both passes (_C.rag_fusion_traffic): bytes each must move and moves."""
    _, L, D, K, heads, half_width, copy_bias = SIZES[size]
    return _C.rag_fusion_traffic(B=batch(size, quick), L=L, K=K, D=D, V=3, n_heads=heads,
                                 half_width=half_width, elem_bytes=4, copy_bias=copy_bias,
                                 copy_bias_grad=copy_bias)


def bandwidth(inputs, model):
    """Per op pass: bytes it must move, bytes the design moves, and the CPU allocator's bytes beyond its outputs."""
    with torch.no_grad():
        forward_outputs = torch.ops.embrag.rag_fusion(**inputs)
        forward_extra = allocated_bytes(lambda: torch.ops.embrag.rag_fusion(**inputs)) - nbytes(forward_outputs)
        backward = backward_op(inputs)
        backward_extra = allocated_bytes(backward) - nbytes(backward())
    delta = "out" if model["delta_from_out"] else "a first pass over K"
    return {"forward": dict(model["forward"], cpu_extra_allocated=forward_extra),
            "backward": dict(model["backward"], cpu_extra_allocated=backward_extra,
                             note=f"on CUDA delta from {delta}; the CPU reads out")}


def _measure_peak(size, which, impl, quick):  # in the subprocess of pass_peak_bytes
    inputs = make_inputs(size, quick)
    measure_pass(lambda: run_pass(which, impl, inputs), inputs.values())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", PASSES)
@pytest.mark.parametrize("size", SIZES)
def bench_rag_fusion(benchmark, quick, size, which, impl):
    if impl not in impls(size):
        pytest.skip("the naive composition materialises [B, K, L, D]: size A only")
    benchmark.group = f"rag_fusion {size} {which}"
    inputs = make_inputs(size, quick)
    benchmark(run_pass, which, impl, inputs)
    model = traffic(size, quick)
    figures = {"must_bytes": pass_bytes(model, which, "must")}
    if impl == "fused":
        figures["moved_bytes"] = pass_bytes(model, which, "moved")
        if which == "forward":
            figures["bandwidth"] = bandwidth(inputs, model)
    if size == "A":
        figures["peak_bytes"] = pass_peak_bytes(__file__, size, which, impl, str(int(quick)))
    record(benchmark, "compare", "rag_fusion", describe(size, quick), which, impl, **figures)


def old_op_call(which, old, inputs):
    """OLD_COMMIT's forward or backward op on the same inputs (site_k = 0, no copy bias)."""
    args = [inputs[name] for name in ("q", "topk", "ref_tokens", "tok_k", "tok_v")]
    args += [torch.zeros_like(inputs["site_v"])]
    args += [inputs[name] for name in ("site_v", "dist", "beta", "q_tokens", "observed", "alpha",
                                       "n_heads", "half_width")]
    if which == "forward":
        return lambda: old.rag_fusion(*args)
    grad_out = torch.ones_like(inputs["q"])
    del args[5:7]  # the old backward takes neither site_k nor site_v
    return lambda: old.rag_fusion_backward(grad_out, *args)


def new_op_call(which, inputs):
    if which == "forward":
        return lambda: torch.ops.embrag.rag_fusion(**inputs)
    return backward_op(inputs)


@pytest.mark.parametrize("version", ["new", "old"])
@pytest.mark.parametrize("which", ["forward", "backward"])
def bench_rag_fusion_old_vs_new(benchmark, quick, which, version):
    """Size A, the op of each pass alone (no autograd), today's against OLD_COMMIT's."""
    if quick:
        pytest.skip("--quick: building the old op takes a minute")
    inputs = {name: t.detach() if torch.is_tensor(t) else t for name, t in make_inputs("A", quick).items()}
    benchmark.group = f"rag_fusion A {which} op, old vs new"
    call = new_op_call(which, inputs) if version == "new" else old_op_call(which, load_old_rag_fusion(), inputs)
    with torch.no_grad():
        benchmark(call)
    record(benchmark, "old vs new", "rag_fusion", describe("A", quick), f"{which} op", version,
           old=f"commit {OLD_COMMIT}")


if __name__ == "__main__":  # pass_peak_bytes' subprocess: <size> <pass> <impl> <quick>
    _measure_peak(sys.argv[1], sys.argv[2], sys.argv[3], bool(int(sys.argv[4])))
