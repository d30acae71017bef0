"""rag_fusion on the CPU: the fused op against two plain-PyTorch compositions,
its bandwidth model, and today's backward against the old one, at

    A      B=64 K=16   L=512 D=128 4 heads, no copy bias
    K256   B=64 K=256  L=128 D=64  4 heads, copy bias
    K2048  B=64 K=2048 L=128 D=64  4 heads, copy bias

    pytest benchmarks/ --benchmark-only -k rag_fusion [--quick]

(--quick divides B by 8.) Printed in the terminal summary:
  - time, composition / fused (medians, pytest-benchmark), forward and
    forward+backward, for "algebra" (the kernels' algebra in plain PyTorch:
    [B, L, heads, V] dot products, [B, L, heads, K] scores, no [B, K, L, D];
    what fusion buys beyond the algebra) and "reference" (keys and values
    materialised as [B, K, L, D]; size A only);
  - bytes per pass: what it must move (inputs read once, outputs written
    once), what the kernels' design moves (_C.rag_fusion_traffic, from
    csrc/kernels/rag_fusion.h), their ratio (goal: at most 1.3x), and the CPU
    allocator's bytes beyond the pass's outputs (torch.profiler);
  - the forward and backward ops against those of commit
    old_rag_fusion.OLD_COMMIT (two stages, [B, L, heads, K] coefficient
    tensors), built into a module of their own and timed in the same run
    (size A: that op took K <= 64);
  - peak memory of size A, fused and reference: the rise of the resident set
    while one call runs, in a fresh subprocess (benchmarks/peak_memory.py).
Speed is reported, never asserted.
"""
import sys
from pathlib import Path

import pytest
import torch

from conftest import PASSES, allocated_bytes, median_seconds, traffic_line
from old_rag_fusion import OLD_COMMIT, load_old_rag_fusion
from peak_memory import child_peak_bytes, print_peak, rss_rise_bytes
from embrag_ext import _C, ops
from embrag_ext.reference import rag_fusion_algebra, rag_fusion_reference, random_rag_fusion_inputs

# name: (B, L, D, K, n_heads, half_width, copy_bias)
SIZES = {"A": (64, 512, 128, 16, 4, 8, False),
         "K256": (64, 128, 64, 256, 4, 16, True),
         "K2048": (64, 128, 64, 2048, 4, 16, True)}
N_HAPS = 3000
IMPLS = {"fused": ops.rag_fusion, "algebra": rag_fusion_algebra, "reference": rag_fusion_reference}
TIMES = {}  # (size, pass, impl) -> median seconds


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
    return [impl for impl in IMPLS if impl != "reference" or size == "A"]


def describe(size, quick):
    _, L, D, K, heads, _, copy_bias = SIZES[size]
    return (f"rag_fusion {size:5} B={batch(size, quick)} K={K} L={L} D={D} heads={heads}"
            f"{' copy_bias' if copy_bias else ''}")


def backward_op(inputs):
    """A call of the backward op alone, on the saved tensors of a forward."""
    with torch.no_grad():
        out, lse = torch.ops.embrag.rag_fusion(**inputs)
    grad_out = torch.ones_like(out)
    optional = {name: inputs.get(name) for name in ("copy_bias", "gamma")}
    return lambda: torch.ops.embrag.rag_fusion_backward(
        grad_out, **dict(inputs, **optional), out=out, lse=lse, copy_bias_grad="copy_bias" in inputs)


def nbytes(outputs):
    return sum(t.numel() * t.element_size() for t in outputs)


def bandwidth_lines(size, inputs, quick):
    """The bandwidth model of both passes, with the CPU allocator's extra bytes."""
    _, L, D, K, heads, half_width, copy_bias = SIZES[size]
    traffic = _C.rag_fusion_traffic(B=batch(size, quick), L=L, K=K, D=D, V=3, n_heads=heads,
                                    half_width=half_width, elem_bytes=4, copy_bias=copy_bias,
                                    copy_bias_grad=copy_bias)
    with torch.no_grad():
        forward_outputs = torch.ops.embrag.rag_fusion(**inputs)
        forward_extra = allocated_bytes(lambda: torch.ops.embrag.rag_fusion(**inputs)) - nbytes(forward_outputs)
        backward = backward_op(inputs)
        backward_extra = allocated_bytes(backward) - nbytes(backward())
    delta = "out" if traffic["delta_from_out"] else "a first pass over K"
    return [traffic_line(f"{describe(size, quick)}  forward", traffic["forward"], forward_extra),
            traffic_line(f"{describe(size, quick)} backward", traffic["backward"], backward_extra)
            + f" (on CUDA delta from {delta}; the CPU reads out)"]


def peak_bytes(size, which, impl, quick):
    """Peak resident-memory rise of one call, in a fresh subprocess."""
    return child_peak_bytes([__file__, size, which, impl, str(int(quick))], cwd=Path(__file__).parent)


def _measure_peak(size, which, impl, quick):
    inputs = make_inputs(size, quick)
    run_pass(which, impl, inputs)  # warm-up: thread pools, lazy initialisation
    for t in inputs.values():
        if torch.is_tensor(t):
            t.grad = None
    print_peak(rss_rise_bytes(lambda: run_pass(which, impl, inputs)))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", PASSES)
@pytest.mark.parametrize("size", SIZES)
def bench_rag_fusion(benchmark, ratio_report, quick, size, which, impl):
    if impl not in impls(size):
        pytest.skip("the reference materialises [B, K, L, D]: size A only")
    benchmark.group = f"rag_fusion {size} {which}"
    inputs = make_inputs(size, quick)
    benchmark(run_pass, which, impl, inputs)
    TIMES[size, which, impl] = median_seconds(benchmark)
    if impl == "fused" and which == "forward":
        for line in bandwidth_lines(size, inputs, quick):
            ratio_report(line)
    times = {name: TIMES.get((size, which, name)) for name in impls(size)}
    if not all(times.values()):
        return
    fused = times.pop("fused")
    ratios = ", ".join(f"{name}/fused = {t / fused:5.1f}x ({t * 1e3:.1f} ms)" for name, t in times.items())
    line = f"{describe(size, quick)} {which:>16}: fused {fused * 1e3:.1f} ms, {ratios}"
    if size == "A":
        peak = {name: peak_bytes(size, which, name, quick) for name in ("fused", "reference")}
        line += (f"; peak memory reference/fused = {peak['reference'] / max(peak['fused'], 1):.1f}x "
                 f"({peak['reference'] / 2**20:.0f} / {peak['fused'] / 2**20:.1f} MiB)")
    ratio_report(line)


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
def bench_rag_fusion_old_vs_new(benchmark, ratio_report, quick, which, version):
    """Size A, the op of each pass alone (no autograd), today's against OLD_COMMIT's."""
    inputs = {name: t.detach() if torch.is_tensor(t) else t for name, t in make_inputs("A", quick).items()}
    benchmark.group = f"rag_fusion A {which} op, old vs new"
    call = new_op_call(which, inputs) if version == "new" else old_op_call(which, load_old_rag_fusion(), inputs)
    with torch.no_grad():
        benchmark(call)
    TIMES["A", f"{which} op", version] = median_seconds(benchmark)
    new, old = TIMES.get(("A", f"{which} op", "new")), TIMES.get(("A", f"{which} op", "old"))
    if new and old:
        ratio_report(f"{describe('A', quick)} {which + ' op':>16}: old/new = {old / new:5.2f}x "
                     f"({old * 1e3:.1f} / {new * 1e3:.1f} ms; old = commit {OLD_COMMIT})")


if __name__ == "__main__":  # peak_bytes' subprocess: <size> <pass> <impl> <quick>
    _measure_peak(sys.argv[1], sys.argv[2], sys.argv[3], bool(int(sys.argv[4])))
