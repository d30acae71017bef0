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


def print_peak(peak_bytes):
    """In the child: report the measured peak to child_peak_bytes()."""
    print(json.dumps({"peak_bytes": peak_bytes}))


def status_kib(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_rise_bytes(work):
    """Bytes by which the resident set peaks above its level before ``work()``."""
    before = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    work()
    return (status_kib("VmHWM") - before) * 1024
