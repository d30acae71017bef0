"""copy_posterior: the fused op vs its reference composition (a log-space
forward-backward in float64, one site at a time, autograd through it), forward
and forward+backward on the CPU; the op alone at the issue's size; and its cost
curves over K and over M.

    pytest benchmarks/bench_copy_posterior.py --benchmark-only

Prints, in the summary:
  * reference/fused ratios of median time (pytest-benchmark) and of peak memory
    (the rise of the resident set while one call runs, in a fresh subprocess after
    a warm-up; see benchmarks/peak_memory.py), at N=64, M=200, K=512;
  * the op's forward and forward+backward at N=200, M=400, K=2000 (the target:
    forward well under 1 s on 2 cores, backward within about 4x the forward);
  * time per (query * site * template) over K = 8 .. 2048 at N=64, M=256 and over
    M = 50 .. 800 at N=64, K=512: flat means linear in K and in M. The output grows
    with K and M (0.5 to 128 MiB over K), so past the caches each element also
    pays its memory traffic (about 12 bytes) and first-touch page faults; at small
    K a fixed cost per (query, site) (about 90 ns: reductions, a division, short
    loops) shows. rag_fusion's curve over K is measured by its own benchmark
    (bench_rag_fusion.py).
Both sides run with denormals flushed to zero: the log-space reference's exp()
underflows to denormal float64s (about exp(-700)), which x86 computes many times
slower, and that would measure the CPU's slow path rather than the algorithm.
Speed is reported, never asserted.
"""
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import PASSES, median_seconds, time_pass
from peak_memory import child_peak_bytes, print_peak, rss_rise_bytes
from embrag_ext import ops
from embrag_ext.reference import copy_posterior_reference, random_copy_posterior_inputs

COMPARE = dict(N=64, M=200, K=512)
TARGET = dict(N=200, M=400, K=2000)
CURVE_K = dict(N=64, M=256, sizes=(8, 32, 128, 512, 2048))
CURVE_M = dict(N=64, K=512, sizes=(50, 100, 200, 400, 800))
N_HAPS = 5000
TIMES = {}   # (pass, impl) -> median seconds, op vs reference
CURVES = {}  # (axis, pass) -> {size: ns per query * site * template}


def make_inputs(N, M, K):
    """Rows of a site-major panel of N_HAPS haplotypes, queries with 10% MASK, K
    templates per query (every one valid), about 0.02 cM apart."""
    return random_copy_posterior_inputs(N, M, K, N_HAPS, mask=0.1, pad=0.0, empty_query=False,
                                        rho=4.0, theta=1e-3, cm_scale=0.04)


IMPLS = {"fused": ops.copy_posterior, "reference": copy_posterior_reference}


def run_pass(which, fn, inputs):
    """PASSES[which] (conftest) of fn on the keyword inputs."""
    return PASSES[which](lambda: fn(**inputs), ())


@pytest.fixture(autouse=True)
def flush_denormals():
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)  # torch's default


def _sizes(d):
    return " ".join(f"{k}={v}" for k, v in d.items())


def _measure_peak(which, impl):  # in the subprocess
    torch.set_flush_denormal(True)
    inputs = make_inputs(**COMPARE)
    run_pass(which, IMPLS[impl], inputs)  # warm-up: thread pools, lazy initialisation
    for t in inputs.values():
        t.grad = None
    print_peak(rss_rise_bytes(lambda: run_pass(which, IMPLS[impl], inputs)))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", PASSES)
def bench_copy_posterior(benchmark, ratio_report, which, impl):
    benchmark.group = f"copy_posterior {which}"
    inputs = make_inputs(**COMPARE)
    pair = time_pass(benchmark, TIMES, which, impl, lambda: IMPLS[impl](**inputs), (),
                     baseline="reference")
    if pair:
        fused, ref = pair
        peak = {name: child_peak_bytes([__file__, which, name], cwd=Path(__file__).parent)
                for name in IMPLS}
        ratio_report(
            f"copy_posterior {which:>16} {_sizes(COMPARE)}: reference/fused time = "
            f"{ref / fused:6.1f}x ({ref * 1e3:.0f} / {fused * 1e3:.1f} ms), peak memory = "
            f"{peak['reference'] / max(peak['fused'], 1):5.1f}x "
            f"({peak['reference'] / 2**20:.0f} / {peak['fused'] / 2**20:.0f} MiB, RSS rise)")


@pytest.mark.parametrize("which", PASSES)
def bench_copy_posterior_target(benchmark, ratio_report, which):
    benchmark.group = "copy_posterior at the issue's size"
    inputs = make_inputs(**TARGET)
    benchmark.pedantic(run_pass, (which, ops.copy_posterior, inputs), rounds=3, warmup_rounds=1)
    TIMES[which, "target"] = median_seconds(benchmark)
    # CPU time of the process (all threads) for one more call: wall time alone
    # depends on what else runs on the cores.
    start = time.process_time()
    run_pass(which, ops.copy_posterior, inputs)
    TIMES[which, "target cpu"] = time.process_time() - start
    fwd, both = TIMES.get(("forward", "target")), TIMES.get(("forward+backward", "target"))
    if fwd and both:
        fwd_cpu, both_cpu = TIMES["forward", "target cpu"], TIMES["forward+backward", "target cpu"]
        ratio_report(
            f"copy_posterior {_sizes(TARGET)} on {torch.get_num_threads()} threads: forward "
            f"{fwd:.2f} s wall ({fwd_cpu:.2f} s CPU), forward+backward {both:.2f} s wall "
            f"({both_cpu:.2f} s CPU); backward = {(both - fwd) / fwd:.1f}x forward "
            f"({(both_cpu - fwd_cpu) / fwd_cpu:.1f}x in CPU time)")


def _curve(benchmark, ratio_report, axis, which, size, shape):
    benchmark.group = f"copy_posterior cost over {axis} ({which})"
    inputs = make_inputs(**shape)
    benchmark(run_pass, which, ops.copy_posterior, inputs)
    seconds = median_seconds(benchmark)
    if seconds is None:
        return
    curve = CURVES.setdefault((axis, which), {})
    curve[size] = seconds / (shape["N"] * shape["M"] * shape["K"]) * 1e9
    spec = CURVE_K if axis == "K" else CURVE_M
    if len(curve) == len(spec["sizes"]):
        fixed = {k: v for k, v in spec.items() if k != "sizes"}
        points = "  ".join(f"{axis}={s}: {curve[s]:.2f}" for s in spec["sizes"])
        big = [curve[s] for s in spec["sizes"][2:]]
        n_elems = [fixed["N"] * (fixed.get("M") or s) * (fixed.get("K") or s) for s in spec["sizes"]]
        ratio_report(
            f"copy_posterior {which:>16} ns per query*site*template over {axis} "
            f"({_sizes(fixed)}, output {n_elems[0] * 4 / 2**20:.1f} to "
            f"{n_elems[-1] * 4 / 2**20:.0f} MiB): {points}  (max/min from "
            f"{axis}={spec['sizes'][2]} on: {max(big) / min(big):.2f})")


@pytest.mark.parametrize("K", CURVE_K["sizes"])
@pytest.mark.parametrize("which", PASSES)
def bench_copy_posterior_cost_over_k(benchmark, ratio_report, which, K):
    _curve(benchmark, ratio_report, "K", which, K, dict(N=CURVE_K["N"], M=CURVE_K["M"], K=K))


@pytest.mark.parametrize("M", CURVE_M["sizes"])
@pytest.mark.parametrize("which", PASSES)
def bench_copy_posterior_cost_over_m(benchmark, ratio_report, which, M):
    _curve(benchmark, ratio_report, "M", which, M, dict(N=CURVE_M["N"], M=M, K=CURVE_M["K"]))


if __name__ == "__main__":  # the peak-memory subprocess: <pass> <impl>
    _measure_peak(sys.argv[1], sys.argv[2])
