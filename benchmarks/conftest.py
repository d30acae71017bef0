"""Shared benchmark plumbing: timings by name, bytes allocated, the bandwidth
model's lines, and ratio lines printed in the terminal summary (pytest
captures a benchmark's own prints). ``--quick`` runs smaller sizes."""
import embrag_ext  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads, as the CLIs run)
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

_REPORT_LINES = []


def report_line(text):
    """Queue a line for the terminal summary ("embrag_ext benchmark ratios")."""
    _REPORT_LINES.append(text)


@pytest.fixture
def ratio_report():
    return report_line


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true",
                     help="embrag_ext benchmarks: smaller sizes (the batch divided by 8)")


@pytest.fixture
def quick(request):
    """True under --quick: benchmarks shrink their batch."""
    return request.config.getoption("--quick")


def allocated_bytes(work):
    """Bytes the allocator hands out while work() runs (torch.profiler's
    memory events: every allocation, frees not subtracted)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    return sum(max(0, event.self_cpu_memory_usage) for event in prof.events())


def traffic_line(what, traffic, extra_allocated=None):
    """One line of the bandwidth model: bytes a pass must move, bytes its
    kernels' design moves and their ratio, and on the CPU the allocator's
    bytes beyond the outputs."""
    line = (f"{what}: must move {traffic['must'] / 1e6:8.1f} MB, moves {traffic['moved'] / 1e6:8.1f} MB"
            f" = {traffic['moved'] / traffic['must']:4.2f}x")
    if extra_allocated is not None:
        line += f"; CPU allocations beyond the outputs {extra_allocated / 1e6:6.2f} MB"
    return line


def median_seconds(benchmark):
    """Median time of a finished pytest-benchmark run, or None (--benchmark-disable)."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else stats.stats.median


def forward(fn, inputs):
    """One forward call of fn(*inputs), without autograd."""
    with torch.no_grad():
        return fn(*inputs)


def forward_backward(fn, inputs):
    """fn(*inputs) and its backward with a gradient of ones."""
    out = fn(*inputs)
    out.backward(torch.ones_like(out))
    return out


PASSES = {"forward": forward, "forward+backward": forward_backward}


def time_pass(benchmark, times, which, impl, fn, inputs, baseline):
    """Time PASSES[which] of fn(*inputs) with pytest-benchmark and keep its
    median in times[which, impl]; once the "fused" and ``baseline`` impls have
    both run for ``which``, return (fused seconds, baseline seconds), else None."""
    benchmark(PASSES[which], fn, inputs)
    times[which, impl] = median_seconds(benchmark)
    fused, other = times.get((which, "fused")), times.get((which, baseline))
    return (fused, other) if fused and other else None


def pytest_terminal_summary(terminalreporter):
    if _REPORT_LINES:
        terminalreporter.section("embrag_ext benchmark ratios")
        for line in _REPORT_LINES:
            terminalreporter.write_line(line)
