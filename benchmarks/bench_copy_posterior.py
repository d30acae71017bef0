"""copy_posterior: the fused op against two plain-PyTorch compositions, forward
and forward+backward on the CPU; the op alone at the issue's size; its cost
curves over K and over M.

    pytest benchmarks/bench_copy_posterior.py --benchmark-only [--quick]

Recorded for the summary (bench_kernels.py, printed at the end of the run):
  * at N=64, M=200, K=512, the median time (pytest-benchmark) and the peak
    memory (the rise of the resident set while one call runs, in a fresh
    subprocess after a warm-up; peak_memory.py) of the fused op, of "naive"
    (reference.copy_posterior_reference: the textbook log-space forward-backward
    in float64, one site at a time, autograd through it) and of "algebra"
    (reference.copy_posterior_scaled: the kernels' scaled forward-backward with
    rank-one transitions in plain PyTorch, float32); the bytes each pass must
    move (its inputs read once, the [N, M, K] posterior written once; the
    backward reads them and the posterior's gradient once more; no traffic
    model of the kernels' own bytes yet);
  * the op's forward and forward+backward at N=200, M=400, K=2000 (the target:
    forward well under 1 s on 2 cores, backward within about 4x the forward),
    wall and CPU time (all threads);
  * time per (query * site * template) over K = 8 .. 2048 at N=64, M=256 and over
    M = 50 .. 800 at N=64, K=512: flat means linear in K and in M. The output grows
    with K and M (0.5 to 128 MiB over K), so past the caches each element also
    pays its memory traffic (about 12 bytes) and first-touch page faults; at small
    K a fixed cost per (query, site) (about 90 ns: reductions, a division, short
    loops) shows. rag_fusion's curve over K is measured by its own benchmark
    (bench_rag_fusion.py).
``--quick`` runs the comparison at N=8 and skips the issue's size and the curves.
Every side runs with denormals flushed to zero: the log-space reference's exp()
underflows to denormal float64s (about exp(-700)), which x86 computes many times
slower, and that would measure the CPU's slow path rather than the algorithm.
Speed is reported, never asserted.
"""
import sys
import time

import pytest
import torch

from conftest import PASSES, record
from peak_memory import measure_pass, pass_peak_bytes
from embrag_ext import ops
from embrag_ext.reference import copy_posterior_reference, copy_posterior_scaled, random_copy_posterior_inputs

COMPARE = dict(N=64, M=200, K=512)
TARGET = dict(N=200, M=400, K=2000)
CURVE_K = dict(N=64, M=256, sizes=(8, 32, 128, 512, 2048))
CURVE_M = dict(N=64, K=512, sizes=(50, 100, 200, 400, 800))
N_HAPS = 5000


def make_inputs(N, M, K):
    """Rows of a site-major panel of N_HAPS haplotypes, queries with 10% MASK, K
    templates per query (every one valid), about 0.02 cM apart."""
    return random_copy_posterior_inputs(N, M, K, N_HAPS, mask=0.1, pad=0.0, empty_query=False,
                                        rho=4.0, theta=1e-3, cm_scale=0.04)


IMPLS = {"fused": ops.copy_posterior, "naive": copy_posterior_reference, "algebra": copy_posterior_scaled}


def compare_size(quick):
    return dict(COMPARE, N=8) if quick else COMPARE


def run_pass(which, fn, inputs):
    """PASSES[which] (conftest) of fn on the keyword inputs."""
    return PASSES[which](lambda: fn(**inputs), ())


def must_bytes(inputs, which):
    """Bytes a pass must move: its inputs read once (of the templates' alleles, one
    byte per site and distinct template) and the posterior [N, M, K] float32 written
    once; the backward reads the inputs and the posterior's gradient once more."""
    query, templates = inputs["query"], inputs["templates"]
    (N, M), K = query.shape, templates.shape[1]
    read = query.numel() + templates.numel() * 8 + M * len(torch.unique(templates[templates >= 0])) + M * 4
    posterior = N * M * K * 4
    return read + posterior if which == "forward" else 2 * (read + posterior)


@pytest.fixture(autouse=True)
def flush_denormals():
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)  # torch's default


def _sizes(d):
    return " ".join(f"{k}={v}" for k, v in d.items())


def _measure_peak(which, impl, quick):  # in the subprocess of pass_peak_bytes
    torch.set_flush_denormal(True)
    inputs = make_inputs(**compare_size(quick))
    measure_pass(lambda: run_pass(which, IMPLS[impl], inputs), inputs.values())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", PASSES)
def bench_copy_posterior(benchmark, quick, which, impl):
    benchmark.group = f"copy_posterior {which}"
    inputs = make_inputs(**compare_size(quick))
    benchmark(run_pass, which, IMPLS[impl], inputs)
    record(benchmark, "compare", "copy_posterior", _sizes(compare_size(quick)), which, impl,
           must_bytes=must_bytes(inputs, which), peak_bytes=pass_peak_bytes(__file__, which, impl, str(int(quick))))


@pytest.mark.parametrize("which", PASSES)
def bench_copy_posterior_target(benchmark, quick, which):
    if quick:
        pytest.skip("--quick: the comparison only")
    benchmark.group = "copy_posterior at the issue's size"
    inputs = make_inputs(**TARGET)
    benchmark.pedantic(run_pass, (which, ops.copy_posterior, inputs), rounds=3, warmup_rounds=1)
    # CPU time of the process (all threads) for one more call: wall time alone
    # depends on what else runs on the cores.
    start = time.process_time()
    run_pass(which, ops.copy_posterior, inputs)
    record(benchmark, "at size", "copy_posterior", _sizes(TARGET), which, "fused",
           cpu_seconds=time.process_time() - start, threads=torch.get_num_threads())


def _curve(benchmark, quick, axis, which, size, shape):
    if quick:
        pytest.skip("--quick: the comparison only")
    benchmark.group = f"copy_posterior cost over {axis} ({which})"
    inputs = make_inputs(**shape)
    benchmark(run_pass, which, ops.copy_posterior, inputs)
    fixed = {name: value for name, value in shape.items() if name != axis}
    record(benchmark, "curve", "copy_posterior", f"over {axis}, {_sizes(fixed)}", which, "fused",
           axis=axis, size=size, elements=shape["N"] * shape["M"] * shape["K"])


@pytest.mark.parametrize("K", CURVE_K["sizes"])
@pytest.mark.parametrize("which", PASSES)
def bench_copy_posterior_cost_over_k(benchmark, quick, which, K):
    _curve(benchmark, quick, "K", which, K, dict(N=CURVE_K["N"], M=CURVE_K["M"], K=K))


@pytest.mark.parametrize("M", CURVE_M["sizes"])
@pytest.mark.parametrize("which", PASSES)
def bench_copy_posterior_cost_over_m(benchmark, quick, which, M):
    _curve(benchmark, quick, "M", which, M, dict(N=CURVE_M["N"], M=M, K=CURVE_M["K"]))


if __name__ == "__main__":  # pass_peak_bytes' subprocess: <pass> <impl> <quick>
    _measure_peak(sys.argv[1], sys.argv[2], bool(int(sys.argv[3])))
