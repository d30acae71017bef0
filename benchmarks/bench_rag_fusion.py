"""rag_fusion: fused op vs the reference composition (neighbour keys and
values materialised as [B, K, L, D]), forward and forward+backward, at B=32,
K=16, L=512, D=128, 4 heads on the CPU.

    pytest benchmarks/ --benchmark-only -k rag_fusion

Prints the reference/fused ratios of median time (pytest-benchmark) and of
peak memory. Peak memory: the rise of the resident set (VmHWM - VmRSS) while
one call runs, measured in a fresh subprocess after a warm-up call, with the
peak reset through /proc/self/clear_refs and glibc's mmap threshold fixed so
freed buffers go back to the OS. Speed is reported, never asserted.
"""
import sys
from pathlib import Path

import pytest
import torch

from conftest import PASSES, time_pass
from peak_memory import child_peak_bytes, print_peak, rss_rise_bytes
from embrag_ext import ops
from embrag_ext.reference import rag_fusion_reference

B, K, L, D, N_HEADS, HALF_WIDTH, N_HAPS, SITES = 32, 16, 512, 128, 4, 8, 2000, 2048
TIMES = {}  # (pass, impl) -> median seconds


def make_inputs():
    gen = torch.Generator().manual_seed(0)
    panel_T = torch.randint(0, 3, (N_HAPS, SITES), generator=gen, dtype=torch.uint8)
    topk = torch.randint(0, N_HAPS, (B, K), generator=gen)
    floats = [torch.randn(*shape, generator=gen).requires_grad_()
              for shape in ((B, L, D), (3, D), (3, D), (L, D), (L, D), (B, K), (N_HEADS,),
                            (N_HEADS,))]
    q, tok_k, tok_v, site_k, site_v, dist, beta, alpha = floats
    q_tokens = torch.randint(0, 3, (B, L), generator=gen)
    observed = torch.rand(B, L, generator=gen) < 0.3
    return [q, topk, panel_T[:, 700:700 + L], tok_k, tok_v, site_k, site_v, dist, beta, q_tokens,
            observed, alpha, N_HEADS, HALF_WIDTH]


IMPLS = {"fused": ops.rag_fusion, "reference": rag_fusion_reference}


def peak_bytes(which, impl):
    """Peak resident-memory rise of one call, in a fresh subprocess."""
    return child_peak_bytes([__file__, which, impl], cwd=Path(__file__).parent)


def _measure_peak(which, impl):
    inputs = make_inputs()
    PASSES[which](IMPLS[impl], inputs)  # warm-up: thread pools, lazy initialisation
    for t in inputs:
        if isinstance(t, torch.Tensor):
            t.grad = None
    print_peak(rss_rise_bytes(lambda: PASSES[which](IMPLS[impl], inputs)))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", PASSES)
def bench_rag_fusion(benchmark, ratio_report, which, impl):
    benchmark.group = f"rag_fusion {which}"
    pair = time_pass(benchmark, TIMES, which, impl, IMPLS[impl], make_inputs(), baseline="reference")
    if pair:
        fused, ref = pair
        peak_fused, peak_ref = peak_bytes(which, "fused"), peak_bytes(which, "reference")
        ratio_report(
            f"rag_fusion {which:>16} B={B} K={K} L={L} D={D} heads={N_HEADS}: reference/fused "
            f"time = {ref / fused:6.1f}x ({ref * 1e3:.1f} / {fused * 1e3:.2f} ms), peak memory = "
            f"{peak_ref / max(peak_fused, 1):5.1f}x ({peak_ref / 2**20:.0f} / "
            f"{peak_fused / 2**20:.1f} MiB, RSS rise)")


if __name__ == "__main__":  # peak_bytes' subprocess: <pass> <impl>
    _measure_peak(sys.argv[1], sys.argv[2])
