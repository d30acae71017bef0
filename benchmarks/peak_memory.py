"""Peak resident memory of a piece of work, for the benchmarks.

The work runs in a fresh subprocess (so earlier work does not hide it) with
glibc's mmap threshold fixed, so freed buffers go back to the OS. The child
measures the rise of its peak RSS (VmHWM, reset by writing "5" to
/proc/self/clear_refs) above its RSS before the work, and prints it as the
last line of its output, as JSON.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
METHOD = "rise of peak RSS (VmHWM after /proc/self/clear_refs) above VmRSS before the work"


def child_peak_bytes(argv, cwd=None):
    """Run ``python argv...`` with CHILD_ENV; the peak bytes it printed with print_peak()."""
    result = subprocess.run([sys.executable, *map(str, argv)], env=dict(os.environ, **CHILD_ENV),
                            check=True, capture_output=True, text=True, cwd=cwd)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]


def pass_peak_bytes(script, *spec):
    """The peak of one pass measured by ``python script *spec`` in a fresh process
    (the script's ``__main__`` builds the pass from ``spec`` and calls measure_pass)."""
    return child_peak_bytes([script, *spec], cwd=Path(script).parent)


def measure_pass(run, tensors):
    """In the child: ``run()`` once (warm-up: thread pools, lazy initialisation), the
    tensors' gradients cleared, then print the peak of a second ``run()``."""
    run()
    for tensor in tensors:
        if getattr(tensor, "grad", None) is not None:
            tensor.grad = None
    print_peak(rss_rise_bytes(run))


def print_peak(peak_bytes):
    """In the child: report the measured peak to child_peak_bytes()."""
    print(json.dumps({"peak_bytes": peak_bytes}))


def status_kib(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak():
    """Reset the peak resident set (VmHWM) to the current one; return the current one, in bytes."""
    before = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return before * 1024


def peak_bytes():
    """The peak resident set since the last reset_peak() (or since the start), in bytes."""
    return status_kib("VmHWM") * 1024


def rss_rise_bytes(work):
    """Bytes by which the resident set peaks above its level before ``work()``."""
    before = reset_peak()
    work()
    return peak_bytes() - before
