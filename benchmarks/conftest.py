"""Shared benchmark plumbing: timings by name, and ratio lines printed in the
terminal summary (pytest captures a benchmark's own prints)."""
import embrag_ext  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads, as the CLIs run)
import pytest
import torch

_REPORT_LINES = []


def report_line(text):
    """Queue a line for the terminal summary ("embrag_ext benchmark ratios")."""
    _REPORT_LINES.append(text)


@pytest.fixture
def ratio_report():
    return report_line


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
