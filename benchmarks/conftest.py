"""Shared benchmark plumbing for the kernel benchmarks (bench_rag_fusion.py,
bench_window_embed.py, bench_copy_posterior.py): the passes timed, bytes
allocated, and what each benchmark records. ``--quick`` runs smaller sizes.

A benchmark measures and records; it computes no ratio. It puts what the
summary needs in ``benchmark.extra_info`` (:func:`record`), which
pytest-benchmark keeps with the timings (and writes with ``--benchmark-json``).
The summary, the tables of ratios, is bench_kernels.py's: printed at the end of
a pytest run ("embrag_ext kernel summary") and written by ``python
benchmarks/bench_kernels.py --markdown PATH`` into RESULTS.md.
"""
import embrag_ext  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads, as the CLIs run)
import pytest
import torch
from torch.profiler import ProfilerActivity, profile


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


def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


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


def pass_bytes(model, which, kind):
    """Bytes of ``kind`` ("must" or "moved") of a timed pass in a bandwidth model
    ({"forward": {...}, "backward": {...}}): the forward, or the forward and the backward."""
    passes = ("forward",) if which == "forward" else ("forward", "backward")
    return sum(model[name][kind] for name in passes)


def record(benchmark, kind, op, case, which, impl, **figures):
    """What the summary reads beside a benchmark's timings (bench_kernels.py):
    kind ("compare": the fused op and the compositions, "old vs new", "at size",
    "curve"), the op, the case (its sizes, in words), the pass, the
    implementation, and any figures (bytes a pass must move, peak bytes, ...)."""
    benchmark.extra_info.update(kind=kind, op=op, case=case, which=which, impl=impl, **figures)


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    from bench_kernels import summary_tables
    lines = summary_tables([bench.as_dict(include_data=False) for bench in session.benchmarks])
    if lines:
        terminalreporter.section("embrag_ext kernel summary")
        for line in lines:
            terminalreporter.write_line(line)
